//! Leadership among replicas of one connector: exactly one relay streams, the others wait as hot standbys.
//!
//! The lease is a session-level advisory lock in the source database itself, so no coordination service is needed:
//! `pg_try_advisory_lock(LOCK_CLASS, key(connector_name))`, held by a connection of its own (application name
//! `<application_name> lease`). Operators find the holder in `pg_locks` (`locktype = 'advisory'`, `classid` =
//! [`LOCK_CLASS`]) joined with `pg_stat_activity`, and a standby logs it.
//!
//! Invariants:
//! - The pipeline runs only while this process holds the lease. The leader checks its lease connection every
//!   `lease_timeout / 5`, each check bounded by `lease_timeout / 2`, and steps down on the first failed check: the
//!   pipeline stops as at shutdown (the open Kafka transaction is aborted or finished; nothing is acknowledged
//!   after it), and the relay waits as a standby again.
//! - The server frees the lease when the holder's session ends: at once when the leader process dies (its socket
//!   is closed by the kernel), and after `lease_timeout` of silence when the leader's host or network vanishes
//!   (`idle_session_timeout` on the lease session, PostgreSQL 14 and later). The leader's own check fails at most
//!   0.7 × `lease_timeout` after its last good check, so it has stopped before another relay can take over.
//! - Kafka fencing stays the second line: all replicas share one `transactional.id`, so a leader that stepped down
//!   too late can no longer commit, and nothing is duplicated even then.
//! - A standby is ready (`/ready`) and so healthy while it can reach PostgreSQL: it can take over. Kubernetes needs
//!   that: a PodDisruptionBudget or a rolling update that counted the standby as unavailable would never let the
//!   leader's pod go.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::metrics::Stats;
use crate::pipeline::{self, PipelineError, RunOptions};

/// First key of the advisory lock: marks the lock as an outbox-relay lease (`"obxr"`).
pub const LOCK_CLASS: i32 = 0x6f62_7872;

const fn default_enabled() -> bool {
    true
}
const fn default_lease_timeout_ms() -> u64 {
    10_000
}

/// Settings of the leadership lease (`[leader]`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LeaderConfig {
    /// Hold a lease in PostgreSQL before streaming, so that replicas with the same `connector_name` wait as hot
    /// standbys instead of fencing each other. Off: every started relay streams at once (Kafka fencing alone).
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// After this long without a word from the leader's lease connection, the server ends its session and a
    /// standby takes over; the leader steps down earlier (its checks run every fifth of it, each bounded by half
    /// of it). A standby tries to take the lease every tenth of it, at most every second.
    #[serde(default = "default_lease_timeout_ms")]
    pub lease_timeout_ms: u64,
}

impl Default for LeaderConfig {
    fn default() -> Self {
        LeaderConfig { enabled: default_enabled(), lease_timeout_ms: default_lease_timeout_ms() }
    }
}

impl LeaderConfig {
    pub(crate) fn validate(&self, report: &mut impl FnMut(&str, String)) {
        if self.lease_timeout_ms < 2_000 {
            report("leader.lease_timeout_ms", "must be at least 2000 (2 s)".to_owned());
        }
    }

    fn lease_timeout(&self) -> Duration {
        Duration::from_millis(self.lease_timeout_ms)
    }
    fn check_every(&self) -> Duration {
        self.lease_timeout() / 5
    }
    fn check_bound(&self) -> Duration {
        self.lease_timeout() / 2
    }
    fn poll_every(&self) -> Duration {
        (self.lease_timeout() / 10).min(Duration::from_secs(1))
    }
}

/// Second key of the advisory lock: FNV-1a of the connector name, kept positive so that `pg_locks.objid` shows it
/// as the same number.
pub fn lock_key(connector_name: &str) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in connector_name.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash & 0x7fff_ffff) as i32
}

/// Runs the relay as leader of its connector: waits as a standby until it holds the lease, then runs the pipeline
/// until shutdown, a definite error, or the loss of the lease (then it waits again). With `leader.enabled = false`
/// it runs the pipeline at once.
pub async fn run(
    cfg: Config,
    mut opts: RunOptions,
    stats: Arc<Stats>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), PipelineError> {
    if !cfg.leader.enabled {
        stats.leader.store(true, Ordering::Relaxed);
        return pipeline::run(cfg.clone(), pipeline::Preparing::start(&cfg), opts, stats, shutdown).await;
    }
    // As for the pipeline: a first start that cannot reach PostgreSQL fails at once, so a misconfigured deployment
    // fails fast and visibly; later, an unreachable server is waited for.
    let mut fail_fast = true;
    loop {
        // Built while the lease is sought and the start's first steps run (see `Preparing`).
        let preparing = pipeline::Preparing::start(&cfg);
        let Some(mut lease) = Lease::acquire(&cfg, &stats, &mut shutdown, fail_fast).await? else {
            return Ok(());
        };
        fail_fast = false;
        info!(connector = %cfg.connector_name, "leading: holding the lease; starting");
        lease.free_slot(&cfg.postgres.slot).await;
        stats.leader.store(true, Ordering::Relaxed);
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut lost = lease.watch(&cfg.leader);
        let pipeline = pipeline::run(cfg.clone(), preparing, opts.clone(), Arc::clone(&stats), stop_rx);
        tokio::pin!(pipeline);
        let mut stepped_down = false;
        let mut shutdown_seen = *shutdown.borrow();
        if shutdown_seen {
            let _ = stop_tx.send(true);
        }
        let result = loop {
            tokio::select! {
                r = &mut pipeline => break r,
                changed = shutdown.changed(), if !shutdown_seen => {
                    if changed.is_err() || *shutdown.borrow() {
                        shutdown_seen = true;
                        let _ = stop_tx.send(true);
                    }
                }
                reason = lost.changed(), if !stepped_down => {
                    // A checker that ended without a word (it panicked) cannot vouch for the lease either.
                    let why = match reason {
                        Ok(()) => lost.borrow().clone().unwrap_or_default(),
                        Err(_) => "the lease check stopped".to_owned(),
                    };
                    warn!(reason = %why, "lost the leadership lease; stepping down (stopping the pipeline)");
                    stepped_down = true;
                    let _ = stop_tx.send(true);
                }
            }
        };
        stats.leader.store(false, Ordering::Relaxed);
        // Closing the lease connection frees the lock for a standby.
        drop(lease);
        if stepped_down && !shutdown_seen {
            if let Err(e) = &result {
                // Expected when another replica took over first: its producer fenced this one.
                info!(error = %e, "the pipeline stopped with an error after stepping down");
            }
            // An operator's start position applied to the first leadership only.
            opts.start_lsn = None;
            info!("stepped down; waiting as a standby");
            continue;
        }
        return result;
    }
}

/// A held lease: the connection holding the advisory lock. Dropping it closes the connection, which frees the lock.
struct Lease {
    client: Arc<tokio_postgres::Client>,
    checker: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(checker) = self.checker.take() {
            checker.abort();
        }
    }
}

impl Lease {
    /// Waits until this relay holds the lease (`Some`) or shutdown is requested (`None`). Transient failures
    /// (PostgreSQL unreachable) are retried, each logged, except before the first connection when `fail_fast`; a
    /// definite one (refused login) is returned.
    async fn acquire(
        cfg: &Config,
        stats: &Stats,
        shutdown: &mut watch::Receiver<bool>,
        mut fail_fast: bool,
    ) -> Result<Option<Lease>, PipelineError> {
        let key = lock_key(&cfg.connector_name);
        let leader = &cfg.leader;
        let mut holder_logged: Option<String> = None;
        let mut first = true;
        loop {
            if *shutdown.borrow() {
                return Ok(None);
            }
            if !first {
                tokio::select! {
                    _ = tokio::time::sleep(leader.poll_every()) => {}
                    _ = shutdown.changed() => return Ok(None),
                }
            }
            first = false;
            let client = match tokio::time::timeout(
                leader.check_bound(),
                cfg.postgres.connect_sql_as(leader.check_bound(), "lease"),
            )
            .await
            {
                Ok(Ok(client)) => {
                    fail_fast = false;
                    client
                }
                Ok(Err(e)) if fail_fast || !e.is_transient() => return Err(e.into()),
                Ok(Err(e)) => {
                    warn!(error = %e, "cannot reach PostgreSQL for the leadership lease; retrying");
                    continue;
                }
                Err(_) if fail_fast => {
                    return Err(PipelineError::Stalled {
                        what: "lease connection",
                        secs: leader.check_bound().as_secs(),
                    });
                }
                Err(_) => {
                    warn!("PostgreSQL did not answer the lease connection in time; retrying");
                    continue;
                }
            };
            // Let the server free the lock of a leader that went silent (PostgreSQL 14+; older servers free it when
            // their TCP keepalive gives up).
            let set = format!("SET idle_session_timeout = {}", leader.lease_timeout_ms);
            if let Err(e) = client.batch_execute(&set).await {
                debug!(error = %e, "idle_session_timeout not available; a vanished leader is noticed by TCP only");
            }
            loop {
                let attempt = tokio::time::timeout(
                    leader.check_bound(),
                    client.query_one("SELECT pg_try_advisory_lock($1, $2)", &[&LOCK_CLASS, &key]),
                )
                .await;
                match attempt {
                    Ok(Ok(row)) if row.try_get::<_, bool>(0).unwrap_or(false) => {
                        return Ok(Some(Lease { client: Arc::new(client), checker: None }));
                    }
                    Ok(Ok(_)) => {
                        // A standby that can reach PostgreSQL can take over: ready in its role, and healthy.
                        stats.standby_contact_unix_ms.store(crate::metrics::now_unix_ms(), Ordering::Relaxed);
                        let holder = match holder(&client, &cfg.connector_name).await {
                            Ok(Some(h)) => h.to_string(),
                            Ok(None) => "unknown (the lease was just freed)".to_owned(),
                            Err(e) => format!("unknown ({e})"),
                        };
                        if holder_logged.as_ref() != Some(&holder) {
                            info!(connector = %cfg.connector_name, leader = %holder, "another relay leads this connector; waiting as a standby");
                            holder_logged = Some(holder);
                        }
                    }
                    Ok(Err(e)) => {
                        warn!(error = %e, "the lease connection failed; reconnecting");
                        break;
                    }
                    Err(_) => {
                        warn!("the lease connection did not answer in time; reconnecting");
                        break;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(leader.poll_every()) => {}
                    _ = shutdown.changed() => return Ok(None),
                }
                if *shutdown.borrow() {
                    return Ok(None);
                }
            }
        }
    }

    /// Ends the walsender still streaming the slot for a previous leader. Holding the lease proves that leader lost
    /// it (it has stopped or is stopping), and its walsender would otherwise keep the slot busy until the server's
    /// `wal_sender_timeout` (60 s by default) when its network vanished. Best effort: the pipeline waits for a busy
    /// slot anyway.
    async fn free_slot(&self, slot: &str) {
        let query = "SELECT active_pid, pg_terminate_backend(active_pid) FROM pg_replication_slots \
                     WHERE slot_name = $1 AND active_pid IS NOT NULL AND active_pid <> pg_backend_pid()";
        match self.client.query_opt(query, &[&slot]).await {
            Ok(Some(row)) => {
                let pid: i32 = row.try_get(0).unwrap_or_default();
                warn!(
                    slot,
                    pid, "the slot was still streaming to a previous leader's connection; ended it to take over"
                );
            }
            Ok(None) => {}
            Err(e) => debug!(error = %e, slot, "could not end the previous leader's walsender; waiting for the slot"),
        }
    }

    /// Starts checking the lease connection; the receiver turns `Some(reason)` when the lease is lost. The check
    /// stops when the lease is dropped.
    fn watch(&mut self, leader: &LeaderConfig) -> watch::Receiver<Option<String>> {
        let (tx, rx) = watch::channel(None);
        let client = Arc::clone(&self.client);
        let (every, bound) = (leader.check_every(), leader.check_bound());
        self.checker = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let started = Instant::now();
                let reason = match tokio::time::timeout(bound, client.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => format!("the lease connection failed: {e}"),
                    Err(_) => format!("the lease connection did not answer for {} ms", started.elapsed().as_millis()),
                };
                let _ = tx.send(Some(reason));
                return;
            }
        }));
        rx
    }
}

/// The backend holding a connector's lease, as `pg_stat_activity` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Holder {
    /// Backend pid.
    pub pid: i32,
    /// Client address, or `local socket`.
    pub client: String,
    /// Its `application_name` (`outbox-relay lease` unless configured otherwise).
    pub application_name: String,
    /// When its session started.
    pub since: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "backend pid {} ({}, {}, since {})", self.pid, self.client, self.application_name, self.since)
    }
}

/// Who holds the lease of `connector_name` now, if anyone.
pub async fn holder(
    client: &tokio_postgres::Client,
    connector_name: &str,
) -> Result<Option<Holder>, tokio_postgres::Error> {
    let query = "SELECT a.pid, coalesce(host(a.client_addr), 'local socket'), a.application_name, \
                 to_char(a.backend_start, 'YYYY-MM-DD\"T\"HH24:MI:SSOF') \
                 FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
                 WHERE l.locktype = 'advisory' AND l.classid = $1::int4::oid AND l.objid = $2::int4::oid \
                 AND l.objsubid = 2 AND l.granted";
    let row = client.query_opt(query, &[&LOCK_CLASS, &lock_key(connector_name)]).await?;
    Ok(row.map(|row| Holder {
        pid: row.try_get(0).unwrap_or_default(),
        client: row.try_get(1).unwrap_or_default(),
        application_name: row.try_get(2).unwrap_or_default(),
        since: row.try_get(3).unwrap_or_default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_key_is_stable_and_positive() {
        assert_eq!(lock_key("outbox-relay"), lock_key("outbox-relay"));
        assert_ne!(lock_key("a"), lock_key("b"));
        for name in ["", "x", "orders-relay", "a-very-long-connector-name-of-many-characters"] {
            assert!(lock_key(name) >= 0);
        }
    }

    #[test]
    fn timings_follow_the_lease_timeout() {
        let c = LeaderConfig { enabled: true, lease_timeout_ms: 10_000 };
        assert_eq!(c.check_every(), Duration::from_secs(2));
        assert_eq!(c.check_bound(), Duration::from_secs(5));
        assert_eq!(c.poll_every(), Duration::from_secs(1));
        // The leader gives up before the server can free its lock for another.
        assert!(c.check_every() + c.check_bound() < c.lease_timeout());
    }
}
