//! Which PostgreSQL server a checkpoint belongs to, and whether the server the relay is connected to can resume it.
//!
//! Invariant (DESIGN.md 10): the relay resumes from a checkpoint only on the history it was taken on. A checkpoint
//! carries the [`SourceIdentity`] of the server it was committed from (system identifier, timeline, database); at
//! start [`check_resumable`] compares it with what `IDENTIFY_SYSTEM` reports and refuses, with a named
//! [`NotResumable`] reason, when:
//!
//! - the system identifier differs: another cluster (a new cluster, a logical copy, a restored dump);
//! - the database differs: the same cluster, another database;
//! - the checkpoint lies beyond the server's WAL: a restored base backup or snapshot, or a failover to a standby
//!   that had not received everything the relay already relayed;
//! - the timeline changed and the checkpoint does not lie on the new timeline's history: the old primary had
//!   written (and the relay relayed) WAL past the point where the new timeline branched off.
//!
//! A timeline change *with* the checkpoint at or before the branch point is a clean failover (a failover slot kept
//! in step by `synchronized_standby_slots`): the relay continues. Resuming in any refused case would skip the
//! server's transactions whose LSNs the checkpoint already covers, or relay a history that no longer exists.
//!
//! Everything here is pure: the caller reads `IDENTIFY_SYSTEM` and `TIMELINE_HISTORY`.

use std::fmt;

use crate::pg::lsn::Lsn;

/// The server a position belongs to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceIdentity {
    /// `IDENTIFY_SYSTEM`'s `systemid`, as text (a u64 does not survive every JSON reader).
    pub system_id: String,
    /// Timeline the server was on.
    pub timeline: u32,
    /// Database the slot decodes.
    pub database: String,
}

impl fmt::Display for SourceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "system {} timeline {} database {:?}", self.system_id, self.timeline, self.database)
    }
}

/// One line of a timeline history file: timeline `timeline` ended at `switchpoint` (the next one began there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// A timeline that is an ancestor of the current one.
    pub timeline: u32,
    /// Where it ended.
    pub switchpoint: Lsn,
}

/// Why a timeline history file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("timeline history line {line}: {reason}")]
pub struct HistoryError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: &'static str,
}

/// Parses the content of a timeline history file (`TIMELINE_HISTORY`'s `content`): lines
/// `<parent timeline>\t<switchpoint LSN>\t<reason>`, blank lines and `#` comments ignored, as PostgreSQL's
/// `readTimeLineHistory` reads them. Never panics on any input.
pub fn parse_timeline_history(text: &str) -> Result<Vec<HistoryEntry>, HistoryError> {
    let mut entries: Vec<HistoryEntry> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |reason| HistoryError { line: i + 1, reason };
        let mut fields = line.split(['\t', ' ']).filter(|f| !f.is_empty());
        let timeline: u32 =
            fields.next().ok_or_else(|| err("no timeline"))?.parse().map_err(|_| err("timeline is not a number"))?;
        let switchpoint: Lsn = fields
            .next()
            .ok_or_else(|| err("no switchpoint"))?
            .parse()
            .map_err(|_| err("switchpoint is not an LSN like 0/3000158"))?;
        if entries.last().is_some_and(|prev| prev.timeline >= timeline) {
            return Err(err("timelines are not in increasing order"));
        }
        entries.push(HistoryEntry { timeline, switchpoint });
    }
    Ok(entries)
}

/// Why a checkpoint cannot be resumed on this server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotResumable {
    /// Another cluster.
    #[error(
        "the checkpoint was taken on PostgreSQL system {checkpoint} but the server is system {server}: this is \
         another cluster (a new one, a copy, a restored dump), whose LSNs mean other transactions"
    )]
    OtherSystem {
        /// From the checkpoint.
        checkpoint: String,
        /// From the server.
        server: String,
    },
    /// Another database of the same cluster.
    #[error("the checkpoint was taken on database {checkpoint:?} but the relay is connected to {server:?}")]
    OtherDatabase {
        /// From the checkpoint.
        checkpoint: String,
        /// From the server.
        server: String,
    },
    /// The checkpoint is beyond the server's WAL.
    #[error(
        "the checkpoint is at {checkpoint} but the server's WAL ends at {server_wal}: the server lost WAL the relay \
         already relayed (a restored backup or snapshot, or a failover to a standby that was behind)"
    )]
    AheadOfServer {
        /// Checkpoint end LSN.
        checkpoint: Lsn,
        /// The server's current WAL position.
        server_wal: Lsn,
    },
    /// The checkpoint is not on the current timeline's history.
    #[error(
        "the checkpoint is at {checkpoint} on timeline {checkpoint_timeline}, but the server's timeline \
         {server_timeline} {detail}: the relayed transactions after the branch point are not in this server's history"
    )]
    OffTimeline {
        /// Checkpoint end LSN.
        checkpoint: Lsn,
        /// Its timeline.
        checkpoint_timeline: u32,
        /// The server's timeline.
        server_timeline: u32,
        /// How the histories diverge.
        detail: String,
    },
}

/// Decides whether a checkpoint at `checkpoint_lsn` taken on `checkpoint` can be resumed on `server`, whose WAL
/// ends at `server_wal`. `history` is the server's timeline history (needed only when the timelines differ: the
/// caller passes what `TIMELINE_HISTORY <server timeline>` returned, or an empty list on timeline 1).
pub fn check_resumable(
    checkpoint: &SourceIdentity,
    checkpoint_lsn: Lsn,
    server: &SourceIdentity,
    server_wal: Lsn,
    history: &[HistoryEntry],
) -> Result<(), NotResumable> {
    if checkpoint.system_id != server.system_id {
        return Err(NotResumable::OtherSystem {
            checkpoint: checkpoint.system_id.clone(),
            server: server.system_id.clone(),
        });
    }
    if checkpoint.database != server.database {
        return Err(NotResumable::OtherDatabase {
            checkpoint: checkpoint.database.clone(),
            server: server.database.clone(),
        });
    }
    if checkpoint_lsn > server_wal {
        return Err(NotResumable::AheadOfServer { checkpoint: checkpoint_lsn, server_wal });
    }
    if checkpoint.timeline == server.timeline {
        return Ok(());
    }
    let off = |detail: String| NotResumable::OffTimeline {
        checkpoint: checkpoint_lsn,
        checkpoint_timeline: checkpoint.timeline,
        server_timeline: server.timeline,
        detail,
    };
    if checkpoint.timeline > server.timeline {
        return Err(off("is older".to_owned()));
    }
    match history.iter().find(|e| e.timeline == checkpoint.timeline) {
        Some(entry) if checkpoint_lsn <= entry.switchpoint => Ok(()),
        Some(entry) => Err(off(format!("branched off at {}", entry.switchpoint))),
        None => Err(off(format!("does not descend from timeline {}", checkpoint.timeline))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn id(system: &str, timeline: u32, db: &str) -> SourceIdentity {
        SourceIdentity { system_id: system.into(), timeline, database: db.into() }
    }

    #[test]
    fn history_files_as_postgres_writes_them() {
        let text = "1\t0/3000158\tno recovery target specified\n\n# comment\n2\t0/5000000\tbefore 2026-01-01\n";
        assert_eq!(
            parse_timeline_history(text).unwrap(),
            vec![
                HistoryEntry { timeline: 1, switchpoint: Lsn(0x0300_0158) },
                HistoryEntry { timeline: 2, switchpoint: Lsn(0x0500_0000) }
            ]
        );
        assert_eq!(parse_timeline_history("").unwrap(), vec![]);
        for (bad, line) in [("x\t0/1\n", 1), ("1\n", 1), ("1\t0/1\n\n1\t0/2", 3), ("1\tzz\n", 1), ("2\t0/1\n1\t0/2", 2)]
        {
            assert_eq!(parse_timeline_history(bad).unwrap_err().line, line, "{bad:?}");
        }
    }

    #[test]
    fn resumable_only_on_the_same_history() {
        let cp = id("7300", 1, "app");
        let at = Lsn(0x100);
        assert_eq!(check_resumable(&cp, at, &id("7300", 1, "app"), Lsn(0x100), &[]), Ok(()));
        assert!(matches!(
            check_resumable(&cp, at, &id("9999", 1, "app"), Lsn(0x900), &[]),
            Err(NotResumable::OtherSystem { .. })
        ));
        assert!(matches!(
            check_resumable(&cp, at, &id("7300", 1, "other"), Lsn(0x900), &[]),
            Err(NotResumable::OtherDatabase { .. })
        ));
        assert!(matches!(
            check_resumable(&cp, at, &id("7300", 1, "app"), Lsn(0xff), &[]),
            Err(NotResumable::AheadOfServer { .. })
        ));
        // Failover: timeline 2 branched from 1 at 0x200, after the checkpoint: fine.
        let history = [HistoryEntry { timeline: 1, switchpoint: Lsn(0x200) }];
        assert_eq!(check_resumable(&cp, at, &id("7300", 2, "app"), Lsn(0x900), &history), Ok(()));
        // Branched at 0x80, before the checkpoint: the relayed 0x80..0x100 is not in this history.
        let early = [HistoryEntry { timeline: 1, switchpoint: Lsn(0x80) }];
        assert!(matches!(
            check_resumable(&cp, at, &id("7300", 2, "app"), Lsn(0x900), &early),
            Err(NotResumable::OffTimeline { .. })
        ));
        // A sibling timeline, or a server behind the checkpoint's timeline.
        let sibling = [HistoryEntry { timeline: 3, switchpoint: Lsn(0x500) }];
        assert!(check_resumable(&id("7300", 2, "app"), at, &id("7300", 4, "app"), Lsn(0x900), &sibling).is_err());
        assert!(check_resumable(&id("7300", 3, "app"), at, &id("7300", 2, "app"), Lsn(0x900), &[]).is_err());
    }
}
