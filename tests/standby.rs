//! Hot standby: two relays with one connector name, against the real services with the real binary. Exactly one
//! leads (holds the lease in PostgreSQL) and the other waits; killing the leader under load, or cutting or stalling
//! its PostgreSQL connections, hands over to the standby, and a read_committed consumer sees every row exactly
//! once. The README's "High availability" section describes these tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "common/services.rs"]
mod services;

#[path = "common/relay.rs"]
mod relay;

#[path = "common/proxy.rs"]
mod proxy;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proxy::FaultProxy;
use relay::{Harness, Options, Record};

const STARTED: &str = "replication started";
const STANDBY: &str = "waiting as a standby";
const STEPPED_DOWN: &str = "stepping down";

fn options() -> Options {
    Options {
        metrics: Some(60_000),
        // A short lease keeps the stalled-network case quick; the default is 10 s.
        extra_toml: "[leader]\nlease_timeout_ms = 4000\n".to_owned(),
        ..Options::default()
    }
}

fn assert_exactly_once(records: &[Record], expected: &HashSet<String>, log: &str) {
    let ids: Vec<String> = records.iter().filter_map(|r| r.header("id")).collect();
    let unique: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), unique.len(), "duplicates in Kafka; logs:\n{log}");
    let missing: Vec<&String> = expected.difference(&unique).collect();
    assert!(missing.is_empty(), "{} rows lost, e.g. {:?}; logs:\n{log}", missing.len(), missing.first());
    assert_eq!(unique.len(), expected.len(), "unexpected extra events; logs:\n{log}");
}

/// No ping-pong: the relay took the lease once, started its producer once, and never stepped down.
fn assert_leads_once(log: &str, logs: &str) {
    assert_eq!(log.matches("leading: holding the lease").count(), 1, "{logs}");
    assert_eq!(log.matches("kafka transactions initialised").count(), 1, "{logs}");
    assert!(!log.contains(STEPPED_DOWN), "{logs}");
}

/// Inserts `n` single-row transactions of `order`, one every `pause`; returns the ids.
async fn load(h: Arc<Harness>, n: usize, pause: Duration) -> Vec<String> {
    let mut c = h.db.client().await;
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.extend(h.insert_txn(&mut c, &[("order", "k", "T", format!(r#"{{"n": {i}}}"#))]).await);
        tokio::time::sleep(pause).await;
    }
    ids
}

/// The relay that does not serve the harness's metrics port gets one of its own.
fn own_metrics() -> String {
    format!("127.0.0.1:{}", services::closed_port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_when_the_leader_is_killed_under_load_exactly_once() {
    let h = Arc::new(Harness::new("standby", options()).await);
    let leader_metrics = own_metrics();
    let mut a = h.spawn(&[], &[("OUTBOX_RELAY_METRICS__LISTEN", leader_metrics.as_str())]);
    a.wait_log(STARTED, Duration::from_secs(60));
    // The second replica (serving the harness's metrics port) waits: alive, ready to take over, not the leader.
    let mut b = h.spawn(&[], &[]);
    b.wait_log(STANDBY, Duration::from_secs(30));
    assert!(b.log_text().contains("backend pid"), "the standby names the leader:\n{}", b.log_text());
    // Ready in its role (it can take over), so a Kubernetes budget or rolling update can let the leader's pod go.
    assert_eq!(h.http_status("/health"), Some(200), "a standby that reaches PostgreSQL is healthy:\n{}", b.log_text());
    assert_eq!(
        h.http_status("/ready"),
        Some(200),
        "a standby that reaches PostgreSQL is ready to take over:\n{}",
        b.log_text()
    );
    assert_eq!(h.metric("outbox_relay_leader"), Some(0.0));
    // The same through `outbox-relay health`, the probe a container image uses (no curl needed).
    let probe = |ready: bool| {
        let mut cmd = h.command();
        cmd.arg("health");
        if ready {
            cmd.arg("--ready");
        }
        cmd.output().unwrap().status.code()
    };
    assert_eq!(probe(false), Some(0), "health of a standby");
    assert_eq!(probe(true), Some(0), "readiness of a standby");

    let loader = tokio::spawn(load(Arc::clone(&h), 300, Duration::from_millis(20)));
    // Let the leader deliver part of the load, then kill it.
    h.wait_for_records_of(Some(&a), &[h.topic("order")], 50, Duration::from_secs(60));
    a.kill9();
    let killed = Instant::now();
    let mut c = h.db.client().await;
    let marker = h.insert_txn(&mut c, &[("marker", "m", "T", r#"{"after": "kill"}"#.into())]).await;
    h.wait_for_records_of(Some(&b), &[h.topic("marker")], 1, Duration::from_secs(60));
    let takeover = killed.elapsed();
    println!("takeover: first row inserted after the leader's SIGKILL visible to read_committed in {takeover:?}");
    assert!(b.log_text().contains("leading"), "{}", b.log_text());

    let mut expected: HashSet<String> = loader.await.unwrap().into_iter().collect();
    h.wait_for_records_of(Some(&b), &[h.topic("order")], expected.len(), Duration::from_secs(90));
    assert_eq!(h.metric("outbox_relay_leader"), Some(1.0));
    assert_eq!(h.http_status("/ready"), Some(200));
    assert_eq!(probe(true), Some(0), "readiness of the new leader");

    // The killed replica comes back (a restart policy): it waits instead of fencing the leader.
    let mut a2 = h.spawn(&[], &[("OUTBOX_RELAY_METRICS__LISTEN", leader_metrics.as_str())]);
    a2.wait_log(STANDBY, Duration::from_secs(30));
    let more = load(Arc::clone(&h), 20, Duration::ZERO).await;
    expected.extend(more);
    h.wait_for_records_of(Some(&b), &[h.topic("order")], expected.len(), Duration::from_secs(60));
    assert!(b.is_running() && a2.is_running());
    let logs = format!(
        "--- first leader:\n{}\n--- standby:\n{}\n--- restarted:\n{}",
        a.log_text(),
        b.log_text(),
        a2.log_text()
    );
    assert_leads_once(&b.log_text(), &logs);
    assert!(!a2.log_text().contains(STARTED), "the restarted replica must not stream: {logs}");
    // Quiet logs on the normal path: no ERROR line, and reaching a partition's end (how the checkpoint read ends)
    // is not reported as a client error.
    for log in [b.log_text(), a2.log_text()] {
        assert!(!log.contains(" ERROR ") && !log.contains("PartitionEOF"), "{logs}");
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_exactly_once(&h.read_committed(&[h.topic("order")]), &expected, &logs);
    let markers = h.read_committed(&[h.topic("marker")]);
    assert_exactly_once(&markers, &marker.into_iter().collect(), &logs);
    b.stop();
    a2.stop();
}

/// The leader reaches PostgreSQL through a proxy that then cuts (`stall = false`) or stalls (no FIN) every
/// connection: the leader notices through its lease, steps down, the standby takes over, and after the network
/// returns the old leader waits as a standby.
async fn leader_cut_off_from_postgres(prefix: &str, stall: bool) {
    let h = Arc::new(Harness::new(prefix, options()).await);
    let pg = url::Url::parse(&h.db.url).unwrap();
    let direct = format!("{}:{}", pg.host_str().unwrap(), pg.port().unwrap());
    let proxy = FaultProxy::start(&direct).await;
    let via_proxy = h.db.url.replacen(&direct, &proxy.addr(), 1);
    let leader_metrics = own_metrics();
    let mut a = h.spawn(
        &[],
        &[
            ("OUTBOX_RELAY_POSTGRES__URL", via_proxy.as_str()),
            ("OUTBOX_RELAY_METRICS__LISTEN", leader_metrics.as_str()),
        ],
    );
    a.wait_log(STARTED, Duration::from_secs(60));
    let mut b = h.spawn(&[], &[]);
    b.wait_log(STANDBY, Duration::from_secs(30));
    let mut expected: HashSet<String> = load(Arc::clone(&h), 20, Duration::ZERO).await.into_iter().collect();
    h.wait_for_records_of(Some(&a), &[h.topic("order")], expected.len(), Duration::from_secs(60));

    if stall {
        proxy.stall();
    } else {
        proxy.cut();
    }
    let cut = Instant::now();
    let during = load(Arc::clone(&h), 20, Duration::ZERO).await;
    expected.extend(during);
    a.wait_log(STEPPED_DOWN, Duration::from_secs(30));
    let stepped_down = cut.elapsed();
    h.wait_for_records_of(Some(&b), &[h.topic("order")], expected.len(), Duration::from_secs(90));
    println!(
        "{}: the leader stepped down after {stepped_down:?}; the standby delivered the rows written since within {:?}",
        if stall { "stall" } else { "cut" },
        cut.elapsed()
    );
    assert!(b.log_text().contains("leading"), "{}", b.log_text());

    proxy.restore();
    // Back on the network, the old leader waits: its log says so a second time.
    let deadline = Instant::now() + Duration::from_secs(60);
    while a.log_text().matches(STANDBY).count() < 1 {
        assert!(Instant::now() < deadline, "the old leader did not return as a standby:\n{}", a.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = load(Arc::clone(&h), 10, Duration::ZERO).await;
    expected.extend(after);
    h.wait_for_records_of(Some(&b), &[h.topic("order")], expected.len(), Duration::from_secs(60));
    let logs = format!("--- old leader:\n{}\n--- standby:\n{}", a.log_text(), b.log_text());
    assert!(a.is_running() && b.is_running(), "{logs}");
    assert_leads_once(&b.log_text(), &logs);
    std::thread::sleep(Duration::from_millis(500));
    assert_exactly_once(&h.read_committed(&[h.topic("order")]), &expected, &logs);
    b.stop();
    a.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_postgres_connections_are_cut_steps_down() {
    leader_cut_off_from_postgres("standbycut", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_postgres_network_stalls_steps_down() {
    leader_cut_off_from_postgres("standbystall", true).await;
}

/// Waits until `f` holds for the harness relay's metrics (the slot monitor reads the server every 10 s).
async fn wait_metrics(h: &Harness, what: &str, f: impl Fn(&Harness) -> bool, log: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(40);
    while !f(h) {
        assert!(Instant::now() < deadline, "{what}: not seen in the metrics within 40 s:\n{}", log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_health_is_reported_from_the_server_while_replication_is_down() {
    let h = Arc::new(Harness::new("slothealth", options()).await);
    // A first run creates the slot.
    let mut expected: HashSet<String> = h.deliver_then_stop(1, 1).await.into_iter().collect();
    // Someone else holds the connector's lease: the relay waits and does not replicate.
    let holder = h.db.client().await;
    let key = outbox_relay::leader::lock_key(&h.connector);
    holder.execute("SELECT pg_advisory_lock($1, $2)", &[&outbox_relay::leader::LOCK_CLASS, &key]).await.unwrap();
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STANDBY, Duration::from_secs(30));
    let log = || relay.log_text();
    let metric = |name: &str| h.metric(name).unwrap_or(-1.0);
    wait_metrics(
        &h,
        "a first read of the slot",
        |h| h.metric("outbox_relay_slot_checked_timestamp_seconds").unwrap_or(0.0) > 0.0,
        log,
    )
    .await;
    assert_eq!(metric("outbox_relay_slot_exists"), 1.0);
    assert_eq!(metric("outbox_relay_slot_active"), 0.0, "nobody streams the slot");
    assert_eq!(h.metric("outbox_relay_slot_wal_status{status=\"reserved\"}"), Some(1.0));
    let before = metric("outbox_relay_slot_pending_wal_bytes");
    let retained_before = metric("outbox_relay_slot_retained_wal_bytes");

    // WAL piles up while nothing replicates, and the relay says so.
    let mut c = h.db.client().await;
    expected.extend(h.insert_rows(&mut c, "order", 200).await);
    wait_metrics(
        &h,
        "pending WAL growing",
        |h| h.metric("outbox_relay_slot_pending_wal_bytes").unwrap_or(0.0) > before + 20_000.0,
        log,
    )
    .await;
    assert!(metric("outbox_relay_slot_retained_wal_bytes") > retained_before);
    let piled = metric("outbox_relay_slot_pending_wal_bytes");

    // The lease is freed: the relay leads, delivers, and the pending WAL drains.
    drop(holder);
    h.wait_for_records_of(Some(&relay), &[h.topic("order")], expected.len(), Duration::from_secs(60));
    wait_metrics(&h, "the slot streamed", |h| h.metric("outbox_relay_slot_active") == Some(1.0), log).await;
    wait_metrics(
        &h,
        "pending WAL drained",
        |h| h.metric("outbox_relay_slot_pending_wal_bytes").unwrap_or(f64::MAX) < piled / 2.0,
        log,
    )
    .await;
    relay.stop();
    std::thread::sleep(Duration::from_millis(300));
    assert_exactly_once(&h.read_committed(&[h.topic("order")]), &expected, &relay.log_text());
}
