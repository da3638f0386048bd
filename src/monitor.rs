//! The replication slot as the server sees it, polled on a connection of its own, so that it is reported even while
//! replication is down (a standby, a restart loop, a stuck pipeline): WAL the slot retains, WAL written since its
//! confirmed position, `wal_status`, `safe_wal_size`, and whether (and by which backend) it is being streamed.
//!
//! Invariant: the monitor never slows or stops the relay: it runs in its own task, every poll is bounded, and a
//! failure only leaves `outbox_relay_slot_checked_timestamp_seconds` behind, which the alert rules watch (a relay
//! that cannot see its slot cannot say how much WAL piles up).

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};

use crate::metrics::{SlotStatus, Stats};
use crate::pg::config::PostgresConfig;
use crate::pg::lsn::Lsn;
use crate::pg::slot;

/// How often the slot is read.
pub const POLL_EVERY: Duration = Duration::from_secs(10);
/// Bound of one connection attempt or query.
const BOUND: Duration = Duration::from_secs(10);

/// Starts polling the slot `pg.slot` into `stats` until the process ends.
pub fn spawn(pg: PostgresConfig, stats: Arc<Stats>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut client: Option<tokio_postgres::Client> = None;
        let mut failing = false;
        loop {
            if client.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
                client = match tokio::time::timeout(BOUND, pg.connect_sql_as(BOUND, "monitor")).await {
                    Ok(Ok(c)) => Some(c),
                    Ok(Err(e)) => {
                        report(&mut failing, &format!("cannot connect: {}", crate::error_chain(&e)));
                        None
                    }
                    Err(_) => {
                        report(&mut failing, "the connection attempt timed out");
                        None
                    }
                };
            }
            if let Some(c) = &client {
                match tokio::time::timeout(BOUND, poll(c, &pg.slot)).await {
                    Ok(Ok(status)) => {
                        stats.set_slot(&status);
                        if failing {
                            debug!("slot monitor reading the slot again");
                        }
                        failing = false;
                    }
                    Ok(Err(e)) => {
                        report(&mut failing, &e);
                        client = None;
                    }
                    Err(_) => {
                        report(&mut failing, "the query timed out");
                        client = None;
                    }
                }
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    })
}

/// One warning per outage, then debug lines: the staleness metric carries the rest.
fn report(failing: &mut bool, what: &str) {
    if *failing {
        debug!(error = what, "slot monitor still cannot read the slot");
    } else {
        warn!(error = what, "slot monitor cannot read the slot; outbox_relay_slot_checked_timestamp_seconds stops");
        *failing = true;
    }
}

/// Reads the slot `slot_name` and the server's WAL position (also the `status` command's source).
pub async fn poll(client: &tokio_postgres::Client, slot_name: &str) -> Result<SlotStatus, String> {
    let info = slot::slot_info(client, slot_name).await.map_err(|e| crate::error_chain(&e))?;
    // On a server in recovery the slot cannot advance anyway; the replay position stands in for the insert position.
    let row = client
        .query_one(
            "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text",
            &[],
        )
        .await
        .map_err(|e| format!("reading the current WAL position: {e}"))?;
    let current: Option<Lsn> = row.try_get::<_, Option<String>>(0).ok().flatten().and_then(|s| s.parse().ok());
    let since = |lsn: Option<Lsn>| match (current, lsn) {
        (Some(now), Some(at)) => now.0.saturating_sub(at.0),
        _ => 0,
    };
    Ok(match info {
        None => SlotStatus { exists: false, ..SlotStatus::default() },
        Some(s) => SlotStatus {
            exists: true,
            retained_bytes: since(s.restart_lsn),
            pending_bytes: since(s.confirmed_flush_lsn),
            safe_wal_bytes: s.safe_wal_size,
            active: s.active,
            active_pid: s.active_pid.unwrap_or(0),
            wal_status: s.wal_status.unwrap_or_default(),
            confirmed_flush_lsn: s.confirmed_flush_lsn,
        },
    })
}
