//! The `status` command: where a connector stands, read from the services themselves, so it works whether or not a
//! relay runs, and from any machine: the checkpoint in Kafka (position and age), the slot on the server
//! (confirmed position, retained and pending WAL, `wal_status`, which backend streams it), the replica holding the
//! leadership lease, and the lag of the consumer groups on the relay's topics.
//!
//! Invariant: read-only and bounded: it joins no consumer group, commits nothing, takes no lock; every part has its
//! own time limit and a part that cannot be read is reported as such without hiding the others.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use crate::kafka::lag::{self, TopicPattern};
use crate::kafka::{self as kafka_mod, KafkaSettings};
use crate::leader::{self, Holder};
use crate::metrics::{SlotStatus, now_unix_ms};

/// Where the connector stands. Each part is `Ok` or the reason it could not be read.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The connector.
    pub connector: String,
    /// Its latest checkpoint.
    pub checkpoint: Part<Option<CheckpointStatus>>,
    /// Its replication slot.
    pub slot: Part<SlotPart>,
    /// The replica leading (holding the lease), if any.
    pub leader: Part<Option<Holder>>,
    /// Lag per consumer group and topic.
    pub consumer_lag: Part<Vec<GroupLag>>,
}

/// A part of the status, or why it is unknown.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Part<T> {
    /// Read.
    Known(T),
    /// Not readable.
    Unknown {
        /// Why.
        error: String,
    },
}

impl<T> Part<T> {
    fn from(result: Result<T, String>) -> Part<T> {
        match result {
            Ok(v) => Part::Known(v),
            Err(error) => Part::Unknown { error },
        }
    }

    /// Whether this part was read.
    pub fn is_known(&self) -> bool {
        matches!(self, Part::Known(_))
    }
}

/// The checkpoint.
#[derive(Debug, Serialize)]
pub struct CheckpointStatus {
    /// Resume position (end of the last relayed transaction's commit record).
    pub end_lsn: String,
    /// Commit LSN of that transaction.
    pub commit_lsn: String,
    /// When it was written, Unix milliseconds.
    pub time_unix_ms: i64,
    /// How long ago, seconds.
    pub age_seconds: f64,
}

/// The slot.
#[derive(Debug, Serialize)]
pub struct SlotPart {
    /// Its name.
    pub name: String,
    /// As read from the server.
    #[serde(flatten)]
    pub status: SlotStatusOut,
}

/// [`SlotStatus`] for output.
#[derive(Debug, Serialize)]
pub struct SlotStatusOut {
    /// The slot exists.
    pub exists: bool,
    /// Streamed now.
    pub active: bool,
    /// The streaming backend.
    pub active_pid: Option<i32>,
    /// The position the relay confirmed (acknowledged after its Kafka commit).
    pub confirmed_flush_lsn: Option<String>,
    /// WAL the server retains for it, bytes.
    pub retained_wal_bytes: u64,
    /// WAL written since its confirmed position, bytes.
    pub pending_wal_bytes: u64,
    /// `wal_status`.
    pub wal_status: String,
    /// `safe_wal_size`, bytes, when limited.
    pub safe_wal_bytes: Option<i64>,
}

impl From<SlotStatus> for SlotStatusOut {
    fn from(s: SlotStatus) -> Self {
        SlotStatusOut {
            exists: s.exists,
            active: s.active,
            active_pid: (s.active_pid != 0).then_some(s.active_pid),
            confirmed_flush_lsn: s.confirmed_flush_lsn.map(|l| l.to_string()),
            retained_wal_bytes: s.retained_bytes,
            pending_wal_bytes: s.pending_bytes,
            wal_status: s.wal_status,
            safe_wal_bytes: s.safe_wal_bytes,
        }
    }
}

/// One consumer group's lag on one topic.
#[derive(Debug, Serialize)]
pub struct GroupLag {
    /// Group id.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Offsets behind the last stable offset, summed over partitions.
    pub lag: i64,
}

/// Reads the status, each part within `timeout`.
pub async fn read(config: &Config, timeout: Duration) -> Status {
    let settings = KafkaSettings::from_config(&config.kafka);
    let checkpoint = async {
        let read = kafka_mod::read_checkpoint(&settings, &config.connector_name, timeout);
        match tokio::time::timeout(timeout * 2, read).await {
            Ok(Ok(c)) => Ok(c.map(|c| CheckpointStatus {
                end_lsn: c.end_lsn.to_string(),
                commit_lsn: c.commit_lsn.to_string(),
                time_unix_ms: c.time_ms,
                age_seconds: (now_unix_ms() as i64 - c.time_ms).max(0) as f64 / 1e3,
            })),
            Ok(Err(e)) => Err(crate::error_chain(&e)),
            Err(_) => Err(format!("no answer from Kafka within {} s", (timeout * 2).as_secs())),
        }
    };
    let postgres = async {
        let client = tokio::time::timeout(timeout, config.postgres.connect_sql_as(timeout, "status"))
            .await
            .map_err(|_| format!("no answer from PostgreSQL within {} s", timeout.as_secs()))?
            .map_err(|e| crate::error_chain(&e))?;
        let slot = tokio::time::timeout(timeout, crate::monitor::poll(&client, &config.postgres.slot))
            .await
            .unwrap_or_else(|_| Err("the slot query timed out".to_owned()));
        let holder = tokio::time::timeout(timeout, leader::holder(&client, &config.connector_name))
            .await
            .map_err(|_| "the lease query timed out".to_owned())
            .and_then(|r| r.map_err(|e| e.to_string()));
        Ok::<_, String>((slot, holder))
    };
    let patterns: Vec<TopicPattern> =
        config.outbox.tables.iter().map(|t| TopicPattern::new(&t.route_topic_replacement)).collect();
    let (base, groups) = (settings.client_config(), config.consumer_lag.groups.clone());
    let lags = tokio::task::spawn_blocking(move || lag::measure(&base, &patterns, &groups, timeout));
    let (checkpoint, postgres, lags) = tokio::join!(checkpoint, postgres, lags);
    let (slot, holder) = match postgres {
        Ok((slot, holder)) => (slot, holder),
        Err(e) => (Err(e.clone()), Err(e)),
    };
    let lags = match lags {
        Ok(Ok(lags)) => Ok(lags.into_iter().map(|((group, topic), lag)| GroupLag { group, topic, lag }).collect()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    Status {
        connector: config.connector_name.clone(),
        checkpoint: Part::from(checkpoint),
        slot: Part::from(slot.map(|s| SlotPart { name: config.postgres.slot.clone(), status: SlotStatusOut::from(s) })),
        leader: Part::from(holder),
        consumer_lag: Part::from(lags),
    }
}

impl Status {
    /// Whether every part was read.
    pub fn complete(&self) -> bool {
        self.checkpoint.is_known() && self.slot.is_known() && self.leader.is_known() && self.consumer_lag.is_known()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "connector   {}", self.connector)?;
        match &self.checkpoint {
            Part::Known(Some(c)) => {
                writeln!(f, "checkpoint  {} (commit {}), written {:.1} s ago", c.end_lsn, c.commit_lsn, c.age_seconds)?
            }
            Part::Known(None) => writeln!(f, "checkpoint  none (the relay has not started yet)")?,
            Part::Unknown { error } => writeln!(f, "checkpoint  unknown: {error}")?,
        }
        match &self.slot {
            Part::Known(s) if !s.status.exists => writeln!(f, "slot        {} does not exist", s.name)?,
            Part::Known(s) => writeln!(
                f,
                "slot        {}: confirmed {}, {}, wal_status {}, {} bytes pending, {} bytes retained{}",
                s.name,
                s.status.confirmed_flush_lsn.as_deref().unwrap_or("-"),
                match s.status.active_pid {
                    Some(pid) => format!("streamed by backend pid {pid}"),
                    None => "not streamed".to_owned(),
                },
                if s.status.wal_status.is_empty() { "-" } else { &s.status.wal_status },
                s.status.pending_wal_bytes,
                s.status.retained_wal_bytes,
                s.status.safe_wal_bytes.map(|b| format!(", {b} bytes until at risk")).unwrap_or_default()
            )?,
            Part::Unknown { error } => writeln!(f, "slot        unknown: {error}")?,
        }
        match &self.leader {
            Part::Known(Some(h)) => writeln!(f, "leader      {h}")?,
            Part::Known(None) => writeln!(f, "leader      none (no replica holds the lease)")?,
            Part::Unknown { error } => writeln!(f, "leader      unknown: {error}")?,
        }
        match &self.consumer_lag {
            Part::Known(lags) if lags.is_empty() => {
                writeln!(f, "consumers   no group has offsets on the relay's topics")?
            }
            Part::Known(lags) => {
                for l in lags {
                    writeln!(f, "consumers   {} on {}: {} behind", l.group, l.topic, l.lag)?;
                }
            }
            Part::Unknown { error } => writeln!(f, "consumers   unknown: {error}")?,
        }
        Ok(())
    }
}
