//! Prometheus metrics and the health endpoints, served over plain HTTP/1.1 on `metrics.listen`.
//!
//! Invariant: reading metrics never blocks or slows the relay: the pipeline only bumps atomics in [`Stats`]; this
//! module reads them when scraped. Metric names are constants, described once, `outbox_relay_<noun>_<unit>`.
//!
//! Health is derived from the same atomics ([`Stats::health`]):
//! - **ready** (`/ready`, `outbox_relay_ready`), in the replica's role: the leader while a replication session is
//!   streaming and nothing waits for a Kafka commit that does not come (records pending with no progress for
//!   [`STALL_BEFORE_NOT_READY`]); a standby while it reaches PostgreSQL and so can take over (within
//!   [`STANDBY_CONTACT`]). Kubernetes needs the standby ready: a budget or a rolling update that counted it as
//!   unavailable would never let the leader's pod go. Whether the connector delivers is `outbox_relay_leader`
//!   with `outbox_relay_ready`;
//! - **healthy** (`/health`): the relay was ready at some moment within `metrics.unhealthy_after_ms`. A stuck
//!   producer, a restart loop or a service that stays unreachable turns it 503, so a liveness probe restarts a
//!   relay that cannot deliver, while a short outage does not.
//!
//! Lag is the operational signal: `outbox_relay_lag_bytes` (WAL received but not yet committed to Kafka and
//! acknowledged) and `outbox_relay_source_lag_seconds` (age of the newest PostgreSQL commit that reached Kafka;
//! bounded by the heartbeat interval while idle). Alert on a sustained increase, see `config/prometheus-alerts.yml`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

fn default_metrics_listen() -> String {
    "127.0.0.1:9187".to_owned()
}
const fn default_unhealthy_after_ms() -> u64 {
    300_000
}

/// Metrics settings.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` of the HTTP endpoint serving Prometheus `/metrics` and `/health`; empty disables it.
    #[serde(default = "default_metrics_listen")]
    pub listen: String,
    /// `/health` answers 503 once the relay has been unable to deliver for this long, in milliseconds: no
    /// replication session streaming, or records waiting for a Kafka commit that does not come (a stuck producer,
    /// a restart loop, an unreachable service). `/ready` turns 503 as soon as that starts.
    #[serde(default = "default_unhealthy_after_ms")]
    pub unhealthy_after_ms: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { listen: default_metrics_listen(), unhealthy_after_ms: default_unhealthy_after_ms() }
    }
}

impl MetricsConfig {
    pub(crate) fn validate(&self, report: &mut impl FnMut(&str, String)) {
        if !self.listen.is_empty() && self.listen.parse::<SocketAddr>().is_err() {
            report(
                "metrics.listen",
                format!("`{}` is not an address like 127.0.0.1:9187 or [::]:9187 (empty disables)", self.listen),
            );
        }
        if self.unhealthy_after_ms == 0 {
            report("metrics.unhealthy_after_ms", "must be at least 1".to_owned());
        }
    }

    /// The listen address, or `None` when the endpoint is disabled.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        if self.listen.is_empty() { None } else { self.listen.parse().ok() }
    }
}

/// Events committed to Kafka.
pub const EVENTS: &str = "outbox_relay_events_total";
/// Kafka transactions committed.
pub const KAFKA_TXNS: &str = "outbox_relay_kafka_transactions_total";
/// PostgreSQL transactions relayed.
pub const PG_TXNS: &str = "outbox_relay_pg_transactions_total";
/// Sessions restarted after transient errors.
pub const RESTARTS: &str = "outbox_relay_restarts_total";
/// Heartbeats written while idle.
pub const HEARTBEATS: &str = "outbox_relay_heartbeats_total";
/// Highest WAL position received.
pub const RECEIVED_LSN: &str = "outbox_relay_received_lsn_bytes";
/// WAL position acknowledged to PostgreSQL (= last checkpoint).
pub const ACKED_LSN: &str = "outbox_relay_acknowledged_lsn_bytes";
/// Received minus acknowledged.
pub const LAG_BYTES: &str = "outbox_relay_lag_bytes";
/// Age of the newest PostgreSQL commit that reached Kafka.
pub const SOURCE_LAG: &str = "outbox_relay_source_lag_seconds";
/// Time of the last Kafka commit.
pub const LAST_COMMIT: &str = "outbox_relay_last_kafka_commit_timestamp_seconds";
/// Time spent committing Kafka transactions.
pub const COMMIT_SECONDS: &str = "outbox_relay_kafka_commit_seconds_total";
/// 1 while the pipeline runs.
pub const UP: &str = "outbox_relay_up";
/// 1 while the relay is delivering (see the module doc).
pub const READY: &str = "outbox_relay_ready";
/// 1 while this relay holds its connector's leadership lease (or leadership is off), 0 as a standby.
pub const LEADER: &str = "outbox_relay_leader";
/// Events sent to the dead-letter topic.
pub const DEAD_LETTERS: &str = "outbox_relay_dead_letters_total";
/// Rows of unmapped published tables skipped (`outbox.unmapped_relations = "ignore"`).
pub const UNMAPPED_ROWS: &str = "outbox_relay_unmapped_rows_total";
/// Heartbeats that failed (the SQL connection is then replaced).
pub const HEARTBEAT_FAILURES: &str = "outbox_relay_heartbeat_failures_total";
/// Kafka producers replaced after a transactional call with an unknown outcome.
pub const PRODUCER_RESTARTS: &str = "outbox_relay_kafka_producer_restarts_total";

/// WAL the replication slot retains on the server (current position minus `restart_lsn`).
pub const SLOT_RETAINED: &str = "outbox_relay_slot_retained_wal_bytes";
/// WAL written since the slot's confirmed position: what the relay still has to deliver, seen from the server.
pub const SLOT_PENDING: &str = "outbox_relay_slot_pending_wal_bytes";
/// `safe_wal_size` of the slot (only with `max_slot_wal_keep_size`).
pub const SLOT_SAFE: &str = "outbox_relay_slot_safe_wal_bytes";
/// 1 while a walsender streams the slot (this relay's or another's).
pub const SLOT_ACTIVE: &str = "outbox_relay_slot_active";
/// The slot's `wal_status`, one series per value.
pub const SLOT_WAL_STATUS: &str = "outbox_relay_slot_wal_status";
/// 1 while the slot exists.
pub const SLOT_EXISTS: &str = "outbox_relay_slot_exists";
/// Unix time of the last successful read of the slot (see [`crate::monitor`]).
pub const SLOT_CHECKED: &str = "outbox_relay_slot_checked_timestamp_seconds";

/// Records a consumer group has still to read on one of the relay's topics (last stable offset minus committed).
pub const CONSUMER_LAG: &str = "outbox_relay_consumer_lag_records";
/// Unix time of the last successful consumer-lag measurement (see [`crate::kafka::lag`]).
pub const CONSUMER_LAG_CHECKED: &str = "outbox_relay_consumer_lag_checked_timestamp_seconds";

/// The slot as last read from the server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotStatus {
    /// The slot exists.
    pub exists: bool,
    /// WAL retained for it, bytes.
    pub retained_bytes: u64,
    /// WAL written since its confirmed position, bytes.
    pub pending_bytes: u64,
    /// `safe_wal_size`, when the server limits slots.
    pub safe_wal_bytes: Option<i64>,
    /// Streamed now.
    pub active: bool,
    /// The streaming backend (0 when none).
    pub active_pid: i32,
    /// `reserved`, `extended`, `unreserved`, `lost`.
    pub wal_status: String,
    /// The position the consumer confirmed.
    pub confirmed_flush_lsn: Option<crate::pg::lsn::Lsn>,
}

/// A standby counts as ready while its last contact with PostgreSQL (a lease attempt) is this recent.
pub const STANDBY_CONTACT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long records may wait for the producer without any progress before the relay counts as not ready.
pub const STALL_BEFORE_NOT_READY: std::time::Duration = std::time::Duration::from_secs(30);

/// Counters the pipeline bumps and the metrics endpoint reads.
#[derive(Debug, Default)]
pub struct Stats {
    /// Events produced and committed.
    pub events_committed: AtomicU64,
    /// Kafka transactions committed.
    pub kafka_commits: AtomicU64,
    /// PostgreSQL transactions relayed (including those without events).
    pub pg_transactions: AtomicU64,
    /// Last LSN acknowledged to PostgreSQL.
    pub acked_lsn: AtomicU64,
    /// Highest WAL position received from the server.
    pub received_lsn: AtomicU64,
    /// Unix ms of the last Kafka commit.
    pub last_commit_unix_ms: AtomicU64,
    /// Commit time (Unix µs) of the last PostgreSQL transaction committed to Kafka.
    pub last_source_commit_unix_us: AtomicU64,
    /// Sessions restarted after transient errors.
    pub restarts: AtomicU64,
    /// Heartbeats written.
    pub heartbeats: AtomicU64,
    /// Time spent in `commit_transaction` (including the checkpoint record's delivery), microseconds.
    pub kafka_commit_micros_total: AtomicU64,
    /// Events sent to the dead-letter topic.
    pub dead_letters: AtomicU64,
    /// Rows of unmapped published tables skipped.
    pub unmapped_rows: AtomicU64,
    /// Heartbeats that failed.
    pub heartbeat_failures: AtomicU64,
    /// Kafka producers replaced.
    pub producer_restarts: AtomicU64,
    /// A replication session is streaming.
    pub streaming: AtomicBool,
    /// This relay holds its connector's leadership lease (see [`crate::leader`]).
    pub leader: AtomicBool,
    /// Unix ms of a standby's last successful lease attempt (it reached PostgreSQL and could take over).
    pub standby_contact_unix_ms: AtomicU64,
    /// The sink holds records not yet committed.
    pub pending: AtomicBool,
    /// Unix ms of the sink's last progress (a batch started, records acknowledged by the broker, a commit).
    pub last_progress_unix_ms: AtomicU64,
    /// Unix ms of the last moment the relay was observed ready (or, as a standby, reached PostgreSQL).
    pub last_ready_unix_ms: AtomicU64,
    /// The slot as the monitor last read it (written every few seconds by one task, read when scraped).
    pub slot: std::sync::Mutex<Option<SlotStatus>>,
    /// Unix ms of that read.
    pub slot_checked_unix_ms: AtomicU64,
    /// Consumer-group lag per (group, topic), as last measured.
    pub consumer_lag: std::sync::Mutex<crate::kafka::lag::Lags>,
    /// Unix ms of that measurement.
    pub consumer_lag_checked_unix_ms: AtomicU64,
    /// Records the broker acknowledged (shared with the producer's delivery callback).
    pub delivered: Arc<AtomicU64>,
    /// `delivered` when last looked at: a change is progress.
    delivered_seen: AtomicU64,
}

/// Whether the relay delivers, from [`Stats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health {
    /// Streaming, and nothing stuck before the producer.
    pub ready: bool,
    /// Ready at some moment within the unhealthy threshold.
    pub healthy: bool,
}

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Stats {
    /// Fresh counters; the relay counts as ready-at-start, so `/health` stays 200 while it starts.
    pub fn new() -> Stats {
        let stats = Stats::default();
        stats.last_ready_unix_ms.store(now_unix_ms(), Ordering::Relaxed);
        stats
    }

    /// The sink made progress (handed records to the producer, or committed).
    pub fn note_progress(&self) {
        self.last_progress_unix_ms.store(now_unix_ms(), Ordering::Relaxed);
    }

    /// Records a read of the slot.
    pub fn set_slot(&self, status: &SlotStatus) {
        if let Ok(mut slot) = self.slot.lock() {
            *slot = Some(status.clone());
        }
        self.slot_checked_unix_ms.store(now_unix_ms(), Ordering::Relaxed);
    }

    /// Records a consumer-lag measurement.
    pub fn set_consumer_lag(&self, lags: crate::kafka::lag::Lags) {
        if let Ok(mut current) = self.consumer_lag.lock() {
            *current = lags;
        }
        self.consumer_lag_checked_unix_ms.store(now_unix_ms(), Ordering::Relaxed);
    }

    /// Readiness now, remembering when the relay was last ready.
    pub fn health(&self, unhealthy_after_ms: u64) -> Health {
        let now = now_unix_ms();
        let delivered = self.delivered.load(Ordering::Relaxed);
        if self.delivered_seen.swap(delivered, Ordering::Relaxed) != delivered {
            self.last_progress_unix_ms.store(now, Ordering::Relaxed);
        }
        let stalled = self.pending.load(Ordering::Relaxed)
            && now.saturating_sub(self.last_progress_unix_ms.load(Ordering::Relaxed))
                > STALL_BEFORE_NOT_READY.as_millis() as u64;
        // A standby is ready in its role while it is in contact with PostgreSQL and can take over (see the module
        // doc); a leader while it streams and its producer makes progress.
        let ready = if self.leader.load(Ordering::Relaxed) {
            self.streaming.load(Ordering::Relaxed) && !stalled
        } else {
            now.saturating_sub(self.standby_contact_unix_ms.load(Ordering::Relaxed))
                < STANDBY_CONTACT.as_millis() as u64
        };
        if ready {
            self.last_ready_unix_ms.store(now, Ordering::Relaxed);
        }
        let healthy = now.saturating_sub(self.last_ready_unix_ms.load(Ordering::Relaxed)) < unhealthy_after_ms;
        Health { ready, healthy }
    }
}

/// Renders the Prometheus text exposition of `stats`.
pub fn render(stats: &Stats, up: bool, ready: bool) -> String {
    let mut out = String::with_capacity(2048);
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    };
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let received = get(&stats.received_lsn);
    let acked = get(&stats.acked_lsn);
    let now_us = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
    let source_commit = get(&stats.last_source_commit_unix_us);
    metric(EVENTS, "counter", "Outbox events committed to Kafka.", get(&stats.events_committed) as f64);
    metric(KAFKA_TXNS, "counter", "Kafka transactions committed.", get(&stats.kafka_commits) as f64);
    metric(PG_TXNS, "counter", "PostgreSQL transactions relayed.", get(&stats.pg_transactions) as f64);
    metric(RESTARTS, "counter", "Replication sessions restarted after transient errors.", get(&stats.restarts) as f64);
    metric(HEARTBEATS, "counter", "Transactional heartbeats written while idle.", get(&stats.heartbeats) as f64);
    metric(RECEIVED_LSN, "gauge", "Highest WAL position received from PostgreSQL.", received as f64);
    metric(ACKED_LSN, "gauge", "WAL position acknowledged to PostgreSQL after its Kafka commit.", acked as f64);
    metric(
        LAG_BYTES,
        "gauge",
        "WAL bytes received but not yet committed to Kafka.",
        received.saturating_sub(acked) as f64,
    );
    let lag = if source_commit == 0 { 0.0 } else { now_us.saturating_sub(source_commit) as f64 / 1e6 };
    metric(SOURCE_LAG, "gauge", "Age of the newest PostgreSQL commit that reached Kafka.", lag);
    metric(LAST_COMMIT, "gauge", "Unix time of the last Kafka commit.", get(&stats.last_commit_unix_ms) as f64 / 1e3);
    metric(
        COMMIT_SECONDS,
        "counter",
        "Time spent committing Kafka transactions (divide by the transactions counter for the mean).",
        get(&stats.kafka_commit_micros_total) as f64 / 1e6,
    );
    metric(UP, "gauge", "1 while the relay pipeline runs.", if up { 1.0 } else { 0.0 });
    metric(
        READY,
        "gauge",
        "1 while a replication session streams and the producer makes progress.",
        f64::from(u8::from(ready)),
    );
    metric(
        LEADER,
        "gauge",
        "1 while this relay leads its connector (holds the lease), 0 while it waits as a standby.",
        f64::from(u8::from(stats.leader.load(Ordering::Relaxed))),
    );
    metric(DEAD_LETTERS, "counter", "Events sent to the dead-letter topic.", get(&stats.dead_letters) as f64);
    metric(UNMAPPED_ROWS, "counter", "Rows of unmapped published tables skipped.", get(&stats.unmapped_rows) as f64);
    metric(HEARTBEAT_FAILURES, "counter", "Heartbeats that failed.", get(&stats.heartbeat_failures) as f64);
    metric(
        PRODUCER_RESTARTS,
        "counter",
        "Kafka producers replaced after a commit or abort with an unknown outcome.",
        get(&stats.producer_restarts) as f64,
    );
    let slot = stats.slot.lock().ok().and_then(|s| s.clone());
    if let Some(slot) = slot {
        metric(
            SLOT_EXISTS,
            "gauge",
            "1 while the replication slot exists (read from the server).",
            f64::from(u8::from(slot.exists)),
        );
        metric(
            SLOT_RETAINED,
            "gauge",
            "WAL the replication slot retains on the server, bytes.",
            slot.retained_bytes as f64,
        );
        metric(
            SLOT_PENDING,
            "gauge",
            "WAL written since the slot's confirmed position (not yet delivered), bytes, read from the server.",
            slot.pending_bytes as f64,
        );
        if let Some(safe) = slot.safe_wal_bytes {
            metric(SLOT_SAFE, "gauge", "WAL that may still be written before the slot is at risk, bytes.", safe as f64);
        }
        metric(SLOT_ACTIVE, "gauge", "1 while a walsender streams the slot.", f64::from(u8::from(slot.active)));
        let _ = writeln!(out, "# HELP {SLOT_WAL_STATUS} The slot's wal_status (PostgreSQL), 1 for the current value.");
        let _ = writeln!(out, "# TYPE {SLOT_WAL_STATUS} gauge");
        for status in ["reserved", "extended", "unreserved", "lost"] {
            let _ = writeln!(out, "{SLOT_WAL_STATUS}{{status=\"{status}\"}} {}", u8::from(slot.wal_status == status));
        }
    }
    let lags = stats.consumer_lag.lock().map(|l| l.clone()).unwrap_or_default();
    if !lags.is_empty() {
        let _ = writeln!(
            out,
            "# HELP {CONSUMER_LAG} Records a consumer group has still to read on a relay topic (last stable offset minus committed offset, summed over partitions).\n# TYPE {CONSUMER_LAG} gauge"
        );
        for ((group, topic), lag) in &lags {
            let _ = writeln!(out, "{CONSUMER_LAG}{{group=\"{}\",topic=\"{}\"}} {lag}", label(group), label(topic));
        }
    }
    let lag_checked = get(&stats.consumer_lag_checked_unix_ms) as f64 / 1e3;
    let _ = writeln!(
        out,
        "# HELP {CONSUMER_LAG_CHECKED} Unix time of the last consumer-lag measurement.\n# TYPE {CONSUMER_LAG_CHECKED} gauge\n{CONSUMER_LAG_CHECKED} {lag_checked}"
    );
    let checked = get(&stats.slot_checked_unix_ms) as f64 / 1e3;
    let _ = writeln!(
        out,
        "# HELP {SLOT_CHECKED} Unix time of the last successful read of the slot from the server.\n# TYPE {SLOT_CHECKED} gauge\n{SLOT_CHECKED} {checked}"
    );
    out
}

/// `GET path` on a running relay's endpoint at `addr` (an unspecified address such as `0.0.0.0` means this host):
/// the HTTP status code. For probes from inside a container image that has no shell tools (`outbox-relay health`).
pub async fn probe(addr: SocketAddr, path: &str, timeout: std::time::Duration) -> std::io::Result<u16> {
    let mut target = addr;
    if target.ip().is_unspecified() {
        target.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let exchange = async {
        let mut sock = tokio::net::TcpStream::connect(target).await?;
        sock.write_all(format!("GET {path} HTTP/1.0\r\nHost: {target}\r\n\r\n").as_bytes()).await?;
        let mut head = Vec::with_capacity(256);
        let mut buf = [0u8; 256];
        // The status line is all that is needed.
        while !head.contains(&b'\n') && head.len() < 4096 {
            let n = sock.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(buf.get(..n).unwrap_or_default());
        }
        let line = String::from_utf8_lossy(&head);
        line.split_whitespace().nth(1).and_then(|code| code.parse::<u16>().ok()).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not an HTTP response from {target}"))
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer from {target} in time")))?
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The most of a request head the endpoint reads; a scraper's or a probe's is far shorter.
const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Reads a request up to the blank line that ends its head (`None` if the peer closes or errs first, or sends more
/// than [`MAX_REQUEST_HEAD`] without one). A client may send its request line in several segments; answering the
/// first read alone would take the path from half a line and close on unread bytes, which resets the connection
/// before the client reads the answer.
async fn read_request_head(sock: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !(head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n")) {
        if head.len() >= MAX_REQUEST_HEAD {
            return None;
        }
        let n = sock.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(buf.get(..n)?);
    }
    Some(head)
}

/// Serves `/metrics`, `/health` and `/ready` until the process ends.
pub async fn serve(
    addr: SocketAddr,
    stats: Arc<Stats>,
    up: Arc<AtomicBool>,
    unhealthy_after_ms: u64,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    info!(%addr, "metrics endpoint listening");
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { continue };
            let stats = Arc::clone(&stats);
            let up = Arc::clone(&up);
            tokio::spawn(async move {
                let Ok(Some(head)) =
                    tokio::time::timeout(std::time::Duration::from_secs(5), read_request_head(&mut sock)).await
                else {
                    return;
                };
                let req = String::from_utf8_lossy(&head);
                let path = req.split_whitespace().nth(1).unwrap_or("/");
                let running = up.load(Ordering::Relaxed);
                let health = stats.health(unhealthy_after_ms);
                let (status, body) = match path {
                    "/metrics" => ("200 OK", render(&stats, running, health.ready)),
                    "/health" if running && health.healthy => ("200 OK", "ok\n".to_owned()),
                    "/health" if running => (
                        "503 Service Unavailable",
                        "not delivering for longer than metrics.unhealthy_after_ms\n".to_owned(),
                    ),
                    "/ready" if running && health.ready => ("200 OK", "ready\n".to_owned()),
                    "/health" | "/ready" => ("503 Service Unavailable", "not ready\n".to_owned()),
                    _ => ("404 Not Found", "try /metrics, /health or /ready\n".to_owned()),
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                if let Err(e) = sock.write_all(resp.as_bytes()).await {
                    debug!(error = %e, "metrics response failed");
                }
            });
        }
        #[allow(unreachable_code)]
        {
            warn!("metrics endpoint stopped");
        }
    });
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric_with_help_and_type() {
        let s = Stats::default();
        s.events_committed.store(42, Ordering::Relaxed);
        s.received_lsn.store(1000, Ordering::Relaxed);
        s.acked_lsn.store(400, Ordering::Relaxed);
        let text = render(&s, true, true);
        for name in [
            EVENTS,
            KAFKA_TXNS,
            PG_TXNS,
            RESTARTS,
            HEARTBEATS,
            RECEIVED_LSN,
            ACKED_LSN,
            LAG_BYTES,
            SOURCE_LAG,
            LAST_COMMIT,
            UP,
            READY,
            DEAD_LETTERS,
            UNMAPPED_ROWS,
            HEARTBEAT_FAILURES,
            PRODUCER_RESTARTS,
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
        assert!(text.contains("outbox_relay_events_total 42\n"));
        assert!(text.contains("outbox_relay_lag_bytes 600\n"));
        assert!(text.contains("outbox_relay_up 1\n"));
    }

    #[test]
    fn readiness_follows_streaming_and_progress_and_health_the_last_ready_moment() {
        let s = Stats::new();
        s.leader.store(true, Ordering::Relaxed);
        assert_eq!(s.health(1000), Health { ready: false, healthy: true }, "starting: healthy, not ready");
        s.streaming.store(true, Ordering::Relaxed);
        assert!(s.health(1000).ready);
        // Records pending with no progress for longer than the stall bound: not ready.
        s.pending.store(true, Ordering::Relaxed);
        s.last_progress_unix_ms
            .store(now_unix_ms() - STALL_BEFORE_NOT_READY.as_millis() as u64 - 1000, Ordering::Relaxed);
        assert!(!s.health(1000).ready);
        s.note_progress();
        assert!(s.health(1000).ready);
        // Not ready for longer than the threshold: unhealthy.
        s.streaming.store(false, Ordering::Relaxed);
        s.last_ready_unix_ms.store(now_unix_ms() - 5000, Ordering::Relaxed);
        assert_eq!(s.health(1000), Health { ready: false, healthy: false });
        assert!(s.health(10_000).healthy);
    }

    #[test]
    fn a_standby_is_ready_while_it_reaches_postgres() {
        let s = Stats::new();
        assert!(!s.health(1000).ready, "no contact yet");
        s.standby_contact_unix_ms.store(now_unix_ms(), Ordering::Relaxed);
        assert_eq!(s.health(1000), Health { ready: true, healthy: true });
        s.standby_contact_unix_ms.store(now_unix_ms() - STANDBY_CONTACT.as_millis() as u64 - 1, Ordering::Relaxed);
        assert!(!s.health(1000).ready, "lost contact: cannot take over");
    }

    /// A request that arrives in pieces is answered for its whole path, and the answer is read before the
    /// connection closes. (Answering the first segment alone gave 404 for half a path, or a reset under load: the
    /// standby and fault tests read "no answer" from their HTTP helper, which wrote its request in three pieces.)
    #[tokio::test]
    async fn a_request_sent_in_pieces_gets_the_answer_for_its_whole_path() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let stats = Arc::new(Stats::new());
        serve(addr, Arc::clone(&stats), Arc::new(AtomicBool::new(true)), 60_000).await.unwrap();
        for path in ["/health", "/metrics"] {
            let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
            sock.set_nodelay(true).unwrap();
            for piece in ["GET ", path, " HTTP/1.1\r\n", "Host: x\r\n", "\r\n"] {
                sock.write_all(piece.as_bytes()).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(30)).await;
            }
            let mut answer = String::new();
            tokio::time::timeout(std::time::Duration::from_secs(5), sock.read_to_string(&mut answer))
                .await
                .expect("answered in time")
                .expect("read without a reset");
            assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{path}: {answer}");
            let expected = if path == "/health" { "ok\n" } else { "# HELP outbox_relay_" };
            assert!(answer.split_once("\r\n\r\n").unwrap().1.starts_with(expected), "{path}: {answer}");
        }
        // A head without its blank line is not answered, and an over-long one is dropped, not buffered forever.
        let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        sock.write_all(&vec![b'a'; MAX_REQUEST_HEAD + 10]).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), sock.read_to_end(&mut answer)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed without an answer: {read:?} {answer:?}");
    }
}
