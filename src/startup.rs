//! Start-up decisions, made in one place for `run`, which acts on them, and `check`, which reports them: may the
//! stored checkpoint be resumed on this server, what about the slot, and where does replication start.
//!
//! Invariant (DESIGN.md 3, 4 and 10): the relay resumes exactly at its checkpoint, on the server and history it was
//! taken on, from a slot that has not moved past it; every other situation is a named [`StartupError`] that says
//! what happened and what the operator can do, and only `--accept-gap` (the operator's explicit choice) trades
//! completeness for a start. The functions here are pure: the caller gathers the [`Facts`] (slot, checkpoint,
//! `IDENTIFY_SYSTEM`, `TIMELINE_HISTORY`), so `check` can ask the same questions as `run` without changing anything.

use tracing::{info, warn};

use crate::kafka::Checkpoint;
use crate::pg::identity::{HistoryEntry, NotResumable, SourceIdentity, check_resumable};
use crate::pg::lsn::Lsn;
use crate::pg::slot::{SlotError, SlotInfo};

/// Operator choices for `run`.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Start even though the slot is ahead of the checkpoint, the slot is lost, or the checkpoint belongs to
    /// another server.
    pub accept_gap: bool,
    /// Start at this LSN instead of the checkpoint (validated against the slot and the checkpoint).
    pub start_lsn: Option<Lsn>,
    /// A first start that continues from a Debezium connector's offset on its slot (`[debezium]`): the slot's
    /// position stands in for the missing checkpoint, and the pipeline skips what Debezium delivered.
    pub debezium_handover: bool,
}

/// What the start-up decision is made from.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The configured slot's name.
    pub slot_name: &'a str,
    /// The slot, when it exists.
    pub slot: Option<&'a SlotInfo>,
    /// Whether the relay may create a missing slot (`postgres.create_slot`).
    pub create_slot: bool,
    /// This connector's newest checkpoint.
    pub checkpoint: Option<&'a Checkpoint>,
    /// Who the server is (`IDENTIFY_SYSTEM`).
    pub server: &'a SourceIdentity,
    /// The server's WAL position (`IDENTIFY_SYSTEM`'s `xlogpos`).
    pub server_wal: Lsn,
    /// The server's timeline history, when [`history_needed`] asked for it.
    pub history: &'a [HistoryEntry],
}

/// What start-up does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Stream from `from` on the existing slot.
    Resume {
        /// The resume position.
        from: Lsn,
    },
    /// Write a genesis checkpoint, create the slot, and stream from its consistent point.
    CreateSlot,
}

/// Why start-up refuses.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The slot's confirmed position is ahead of the stored checkpoint.
    #[error(
        "gap detected: slot {slot:?} has confirmed_flush_lsn {slot_lsn} but the last checkpoint in Kafka is {checkpoint}; \
         the changes in between were consumed by something else and are not in Kafka. Reconcile, then restart with \
         --accept-gap to continue from {slot_lsn}"
    )]
    Gap {
        /// The configured slot's name.
        slot: String,
        /// How far the slot's consumer has confirmed (`confirmed_flush_lsn`).
        slot_lsn: Lsn,
        /// Checkpoint end LSN, or why there is none.
        checkpoint: String,
    },
    /// The slot is gone but a checkpoint says data was relayed from it.
    #[error(
        "replication slot {slot:?} does not exist but the checkpoint in Kafka is at {checkpoint}: the slot was dropped \
         or lost, and recreating it would silently skip every change since. Reconcile, then restart with \
         --accept-gap to recreate it and continue from the current WAL position"
    )]
    SlotLost {
        /// The configured slot's name.
        slot: String,
        /// Where the checkpoint says relaying stopped.
        checkpoint: Lsn,
    },
    /// A hand-over from Debezium needs Debezium's slot, which does not exist.
    #[error(
        "hand-over from Debezium: slot {slot} does not exist; fix: set postgres.slot to the connector's slot.name \
         (import-debezium does), and do not drop it when stopping Debezium (slot.drop.on.stop = false)"
    )]
    HandoverSlotMissing {
        /// The configured slot's name.
        slot: String,
    },
    /// The checkpoint was taken on another server or history.
    #[error(
        "the checkpoint in Kafka (at {checkpoint}) does not belong to this PostgreSQL server: {reason}. Resuming from \
         it would skip or misplace transactions. Check postgres.url (and kafka.checkpoint_topic / connector_name); if \
         this server is meant to take over, reconcile what is in Kafka, then restart with --accept-gap to continue \
         from the slot's position"
    )]
    NotResumable {
        /// Checkpoint end LSN.
        checkpoint: Lsn,
        /// Why.
        #[source]
        reason: NotResumable,
    },
    /// `--start-lsn` cannot be honoured.
    #[error("--start-lsn {requested}: {reason}")]
    StartLsn {
        /// What was asked.
        requested: Lsn,
        /// Why not.
        reason: String,
    },
    /// The slot is missing (creation off), unusable or invalidated.
    #[error(transparent)]
    Slot(#[from] SlotError),
}

/// The timeline whose history [`plan`] needs: the server's, when the checkpoint was taken on another timeline
/// (timeline 1 has no history file).
pub fn history_needed(checkpoint: Option<&Checkpoint>, server: &SourceIdentity) -> Option<u32> {
    let source = checkpoint?.source.as_ref()?;
    (source.timeline != server.timeline && server.timeline > 1).then_some(server.timeline)
}

/// Decides what start-up does. Returns the plan and whether the checkpoint is still to be trusted (`false` when the
/// operator accepted setting aside one from another server).
pub fn plan(facts: &Facts<'_>, opts: &RunOptions) -> Result<(Plan, bool), StartupError> {
    let mut checkpoint = facts.checkpoint;
    if let Some(cp) = checkpoint {
        match cp.source.as_ref() {
            // Written by a relay that did not record its server yet: the next commit records it.
            None => info!(checkpoint = %cp.end_lsn, "checkpoint carries no server identity; not checked"),
            Some(source) => {
                if let Err(reason) = check_resumable(source, cp.end_lsn, facts.server, facts.server_wal, facts.history)
                {
                    if !opts.accept_gap {
                        return Err(StartupError::NotResumable { checkpoint: cp.end_lsn, reason });
                    }
                    warn!(checkpoint = %cp.end_lsn, %reason, "checkpoint of another server set aside as the operator accepted the gap");
                    checkpoint = None;
                }
            }
        }
    }
    let trusted = checkpoint.is_some() || facts.checkpoint.is_none();
    let Some(slot) = facts.slot else {
        if opts.debezium_handover {
            // A new slot would start after Debezium's position: the rows in between would never be relayed.
            return Err(StartupError::HandoverSlotMissing { slot: facts.slot_name.to_owned() });
        }
        if let Some(cp) = checkpoint.filter(|cp| !cp.end_lsn.is_zero()) {
            if !opts.accept_gap {
                // Recreating a lost slot would silently skip everything written since it was lost.
                return Err(StartupError::SlotLost { slot: facts.slot_name.to_owned(), checkpoint: cp.end_lsn });
            }
            warn!(slot = facts.slot_name, checkpoint = %cp.end_lsn, "slot lost; recreating it as the operator accepted the gap");
        }
        if !facts.create_slot {
            return Err(SlotError::SlotMissing(facts.slot_name.to_owned()).into());
        }
        return Ok((Plan::CreateSlot, trusted));
    };
    slot.validate(&facts.server.database)?;
    let from = start_position(opts, slot, checkpoint, facts.server_wal)?;
    Ok((Plan::Resume { from }, trusted))
}

/// Where replication starts on `slot` (invariants 3 and 4): the checkpoint, unless the operator gave a position
/// (checked against the slot, the server's WAL and the checkpoint) or accepted a gap.
pub fn start_position(
    opts: &RunOptions,
    slot: &SlotInfo,
    checkpoint: Option<&Checkpoint>,
    server_wal: Lsn,
) -> Result<Lsn, StartupError> {
    let slot_lsn = slot.confirmed_flush_lsn.unwrap_or(Lsn::ZERO);
    if let Some(requested) = opts.start_lsn {
        let refuse = |reason: String| Err(StartupError::StartLsn { requested, reason });
        if requested < slot_lsn {
            return refuse(format!(
                "the slot has already confirmed up to {slot_lsn}; PostgreSQL cannot replay before it"
            ));
        }
        if requested > server_wal {
            return refuse(format!("it is beyond the server's current WAL position {server_wal}"));
        }
        if let Some(cp) = checkpoint.filter(|cp| !cp.end_lsn.is_zero()) {
            if requested < cp.end_lsn {
                return refuse(format!(
                    "the checkpoint in Kafka is at {}: the transactions in between are already in Kafka and would be \
                     produced twice",
                    cp.end_lsn
                ));
            }
            if requested > cp.end_lsn && !opts.accept_gap {
                return refuse(format!(
                    "the checkpoint in Kafka is at {}: the transactions in between would be skipped; add \
                     --accept-gap to confirm",
                    cp.end_lsn
                ));
            }
        }
        warn!(start_lsn = %requested, "starting at an operator-given position");
        return Ok(requested);
    }
    match checkpoint {
        // The genesis checkpoint: this relay created the slot and has committed nothing since.
        Some(cp) if cp.end_lsn.is_zero() => Ok(slot_lsn),
        Some(cp) if slot_lsn > cp.end_lsn => {
            if opts.accept_gap {
                warn!(slot_lsn = %slot_lsn, checkpoint = %cp.end_lsn, "gap accepted by operator");
                Ok(slot_lsn)
            } else {
                Err(StartupError::Gap { slot: slot.name.clone(), slot_lsn, checkpoint: cp.end_lsn.to_string() })
            }
        }
        Some(cp) => Ok(cp.end_lsn),
        None if opts.accept_gap => Ok(slot_lsn),
        // Debezium's slot never confirms past what its committed offset covers; the pipeline skips that part.
        None if opts.debezium_handover => Ok(slot_lsn),
        None => Err(StartupError::Gap {
            slot: slot.name.clone(),
            slot_lsn,
            checkpoint: "none (no checkpoint for this connector in the checkpoint topic; if the slot was created by \
                         hand for a first start, --accept-gap starts from it)"
                .into(),
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn slot(confirmed: u64) -> SlotInfo {
        SlotInfo {
            name: "s".into(),
            plugin: Some("pgoutput".into()),
            slot_type: "logical".into(),
            database: Some("app".into()),
            active: false,
            active_pid: None,
            restart_lsn: Some(Lsn(confirmed)),
            confirmed_flush_lsn: Some(Lsn(confirmed)),
            wal_status: Some("reserved".into()),
            safe_wal_size: None,
            failover: None,
            two_phase: None,
        }
    }

    fn server() -> SourceIdentity {
        SourceIdentity { system_id: "7".into(), timeline: 1, database: "app".into() }
    }

    fn cp(end: u64, source: Option<SourceIdentity>) -> Checkpoint {
        Checkpoint::new("c", Lsn(end), Lsn(end), source)
    }

    fn facts<'a>(
        slot: Option<&'a SlotInfo>,
        checkpoint: Option<&'a Checkpoint>,
        server: &'a SourceIdentity,
    ) -> Facts<'a> {
        Facts { slot_name: "s", slot, create_slot: true, checkpoint, server, server_wal: Lsn(0x1000), history: &[] }
    }

    #[test]
    fn the_checkpoint_rules_and_everything_else_is_named() {
        let server = server();
        let accept = RunOptions { accept_gap: true, ..RunOptions::default() };
        let none = RunOptions::default();
        let (s100, s200) = (slot(0x100), slot(0x200));
        let at200 = cp(0x200, Some(server.clone()));
        assert_eq!(
            plan(&facts(Some(&s100), Some(&at200), &server), &none).unwrap(),
            (Plan::Resume { from: Lsn(0x200) }, true)
        );
        // Slot ahead: a gap, unless accepted.
        let at100 = cp(0x100, Some(server.clone()));
        assert!(matches!(plan(&facts(Some(&s200), Some(&at100), &server), &none), Err(StartupError::Gap { .. })));
        assert_eq!(
            plan(&facts(Some(&s200), Some(&at100), &server), &accept).unwrap().0,
            Plan::Resume { from: Lsn(0x200) }
        );
        // No slot: created on a first start, lost after one.
        assert_eq!(plan(&facts(None, None, &server), &none).unwrap().0, Plan::CreateSlot);
        assert!(matches!(plan(&facts(None, Some(&at200), &server), &none), Err(StartupError::SlotLost { .. })));
        let mut no_create = facts(None, None, &server);
        no_create.create_slot = false;
        assert!(matches!(plan(&no_create, &none), Err(StartupError::Slot(SlotError::SlotMissing(_)))));
        // Another cluster's checkpoint: refused; accepted, it is set aside.
        let foreign = cp(0x200, Some(SourceIdentity { system_id: "8".into(), ..server.clone() }));
        assert!(matches!(
            plan(&facts(Some(&s100), Some(&foreign), &server), &none),
            Err(StartupError::NotResumable { .. })
        ));
        assert_eq!(
            plan(&facts(Some(&s100), Some(&foreign), &server), &accept).unwrap(),
            (Plan::Resume { from: Lsn(0x100) }, false)
        );
        // --start-lsn between slot and checkpoint would duplicate.
        let start = RunOptions { start_lsn: Some(Lsn(0x150)), ..RunOptions::default() };
        assert!(matches!(plan(&facts(Some(&s100), Some(&at200), &server), &start), Err(StartupError::StartLsn { .. })));
        assert_eq!(history_needed(Some(&at200), &SourceIdentity { timeline: 2, ..server.clone() }), Some(2));
        assert_eq!(history_needed(Some(&at200), &server), None);
    }
}
