//! Faults around the relay, against the real services with the real binary: partitioned outbox tables and rows of
//! unmapped tables, killed, stalled and restarted PostgreSQL connections, checkpoints that belong to another server,
//! a checkpoint topic shared with another connector, long broker outages, transactions longer than the Kafka
//! transaction timeout, lost or invalidated slots, a deleted checkpoint topic and a full spill directory. Every test
//! checks the outcome the way a consumer would: `read_committed`, exactly once, and the slot never acknowledged past
//! what Kafka holds. The README's fault matrix points here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "common/services.rs"]
mod services;

#[path = "common/relay.rs"]
mod relay;

#[path = "common/proxy.rs"]
mod proxy;

#[path = "common/kafka_node.rs"]
mod kafka_node;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use proxy::FaultProxy;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use relay::{Harness, Options, RelayProcess};
use services::ThrowawayCluster;

const STARTED: &str = "replication started";

/// A throwaway cluster that can host the harness: logical decoding on, a short `wal_sender_timeout`.
fn logical_cluster(extra: &[&str]) -> ThrowawayCluster {
    let mut settings = vec![
        "wal_level=logical",
        "max_wal_senders=20",
        "max_replication_slots=20",
        "wal_sender_timeout=5s",
        "fsync=off",
        "synchronous_commit=off",
    ];
    settings.extend_from_slice(extra);
    ThrowawayCluster::start(&services::services(), &settings)
}

fn on_cluster(cluster: &ThrowawayCluster) -> services::Services {
    services::Services { pg_url: cluster.url(), ..services::services() }
}

fn ids_of(records: &[relay::Record]) -> Vec<String> {
    records.iter().map(|r| r.header("id").unwrap()).collect()
}

/// `records` hold exactly `expected`, each once.
fn assert_exactly(records: &[relay::Record], expected: &HashSet<String>, log: &str) {
    let ids = ids_of(records);
    let distinct: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), distinct.len(), "duplicates in Kafka; relay log:\n{log}");
    let missing: Vec<_> = expected.difference(&distinct).collect();
    let extra: Vec<_> = distinct.difference(expected).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}, unexpected {extra:?}; relay log:\n{log}");
}

async fn wait_exit_failed(relay: &mut RelayProcess, what: &str) -> String {
    let status = relay.wait_exit(Duration::from_secs(90)).unwrap_or_else(|| panic!("{what}: the relay must stop"));
    assert!(!status.success(), "{what}: must exit non-zero:\n{}", relay.log_text());
    relay.log_text()
}

// ---------------------------------------------------------------------------------------------------------------
// Partitioned outbox tables and unmapped relations
// ---------------------------------------------------------------------------------------------------------------

const PARTITIONED_OUTBOX: &str = "DROP TABLE outbox;
    CREATE TABLE outbox (
        id            uuid        NOT NULL DEFAULT gen_random_uuid(),
        aggregatetype text        NOT NULL,
        aggregateid   text        NOT NULL,
        type          text        NOT NULL,
        payload       jsonb,
        created_at    timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (id, created_at)
    ) PARTITION BY RANGE (created_at);
    CREATE TABLE outbox_2026_01 PARTITION OF outbox FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');
    CREATE TABLE outbox_2026_02 PARTITION OF outbox FOR VALUES FROM ('2026-02-01') TO ('2026-03-01');";

async fn insert_at(c: &impl tokio_postgres::GenericClient, table: &str, month: u32, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let row = c
            .query_one(
                &format!(
                    "INSERT INTO {table} (aggregatetype, aggregateid, type, payload, created_at) \
                     VALUES ('order', 'k{i}', 'T', '{{}}', '2026-{month:02}-15'::timestamptz) RETURNING id::text"
                ),
                &[],
            )
            .await
            .unwrap();
        ids.push(row.get(0));
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_outbox_delivers_every_row_while_partitions_come_and_go() {
    let h = Harness::new("partout", Options::default()).await;
    h.db.execute(PARTITIONED_OUTBOX).await;
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    let mut c = h.db.client().await;
    let mut expected = HashSet::new();
    // The report: 20 rows over two partitions.
    expected.extend(insert_at(&c, "outbox", 1, 10).await);
    expected.extend(insert_at(&c, "outbox", 2, 10).await);
    // A partition created while running.
    c.batch_execute("CREATE TABLE outbox_2026_03 PARTITION OF outbox FOR VALUES FROM ('2026-03-01') TO ('2026-04-01')")
        .await
        .unwrap();
    expected.extend(insert_at(&c, "outbox", 3, 5).await);
    // A table attached as a partition while running.
    c.batch_execute(
        "CREATE TABLE outbox_2026_04 (LIKE outbox INCLUDING DEFAULTS);
         ALTER TABLE outbox ATTACH PARTITION outbox_2026_04 FOR VALUES FROM ('2026-04-01') TO ('2026-05-01')",
    )
    .await
    .unwrap();
    expected.extend(insert_at(&c, "outbox", 4, 5).await);
    // A partition detached (housekeeping): rows written into it afterwards are no longer outbox rows.
    c.batch_execute("ALTER TABLE outbox DETACH PARTITION outbox_2026_01").await.unwrap();
    insert_at(&c, "outbox_2026_01", 1, 3).await;
    expected.extend(insert_at(&c, "outbox", 2, 3).await);
    // A partition dropped (housekeeping).
    c.batch_execute("DROP TABLE outbox_2026_01").await.unwrap();
    expected.extend(insert_at(&c, "outbox", 3, 3).await);
    // One transaction across three partitions.
    let tx = c.transaction().await.unwrap();
    for month in [2, 3, 4] {
        expected.extend(insert_at(&tx, "outbox", month, 1).await);
    }
    tx.commit().await.unwrap();

    let topics = [h.topic("order")];
    let records = h.wait_for_records_of(Some(&relay), &topics, expected.len(), Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_exactly(&h.read_committed(&topics), &expected, &relay.log_text());
    assert_eq!(records.len(), 39);
    assert!(relay.is_running(), "partition changes must not stop the relay:\n{}", relay.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_that_publishes_partitions_under_their_own_names_is_refused_by_name() {
    let h = Harness::new("partpub", Options::default()).await;
    h.db.execute(PARTITIONED_OUTBOX).await;
    // An operator's publication without publish_via_partition_root: pgoutput would name the leaf partitions.
    h.db.execute(&format!("CREATE PUBLICATION {} FOR TABLE outbox WITH (publish = 'insert')", h.slot())).await;
    let mut relay = h.spawn(&[], &[]);
    let log = wait_exit_failed(&mut relay, "publication without publish_via_partition_root").await;
    assert!(
        log.contains("publish_via_partition_root = true") && log.contains("ALTER PUBLICATION"),
        "the error says what to run:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_of_an_unmapped_published_table_stops_the_relay_unless_ignored() {
    let h = Harness::new("unmapped", Options { metrics: Some(300_000), ..Options::default() }).await;
    // An operator's publication covering more than the outbox.
    h.db.execute(&format!("CREATE PUBLICATION {} FOR TABLE outbox, other WITH (publish = 'insert')", h.slot())).await;
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    let mut c = h.db.client().await;
    let mut expected: HashSet<String> = h.insert_rows(&mut c, "order", 2).await.into_iter().collect();
    h.wait_for_records_of(Some(&relay), &[h.topic("order")], 2, Duration::from_secs(30));
    let before = h.confirmed_flush().await;
    c.batch_execute("INSERT INTO other (note) VALUES ('not an event')").await.unwrap();
    let log = wait_exit_failed(&mut relay, "a row of an unmapped table").await;
    assert!(log.contains("public.other") && log.contains("unmapped_relations"), "named, with the way out:\n{log}");
    assert_eq!(h.confirmed_flush().await, before, "the unmapped row was not acknowledged");

    // Explicitly ignored: skipped and counted, the outbox keeps flowing.
    h.rewrite_config(|t| {
        t.replace("[[outbox.tables]]", "[outbox]\nunmapped_relations = \"ignore\"\n[[outbox.tables]]")
    });
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    expected.extend(h.insert_rows(&mut c, "order", 2).await);
    let records = h.wait_for_records_of(Some(&relay), &[h.topic("order")], 4, Duration::from_secs(30));
    assert_exactly(&records, &expected, &relay.log_text());
    let counted = h.metric("outbox_relay_unmapped_rows_total");
    assert_eq!(counted, Some(1.0), "running: {}\n{}", relay.is_running(), relay.log_text());
}

// ---------------------------------------------------------------------------------------------------------------
// PostgreSQL connections
// ---------------------------------------------------------------------------------------------------------------

/// The relay's configuration pointed at `proxy` instead of the test PostgreSQL.
fn through(h: &Harness, proxy: &FaultProxy) {
    let pg = url::Url::parse(&h.services.pg_url).unwrap();
    let direct = format!("{}:{}", pg.host_str().unwrap(), pg.port().unwrap());
    h.rewrite_config(|t| t.replacen(&direct, &proxy.addr(), 1));
}

fn pg_addr() -> String {
    let pg = url::Url::parse(&services::services().pg_url).unwrap();
    format!("{}:{}", pg.host_str().unwrap(), pg.port().unwrap())
}

/// Writes WAL that is not an outbox row and returns the position the slot must reach for it.
async fn other_wal(h: &Harness, c: &tokio_postgres::Client) -> u64 {
    c.batch_execute("INSERT INTO other (note) SELECT 'x' FROM generate_series(1, 100)").await.unwrap();
    h.wal_insert_lsn().await
}

const RELAY_SQL_BACKEND: &str = "SELECT pid, client_port FROM pg_stat_activity WHERE datname = current_database() \
                                 AND backend_type = 'client backend' AND application_name = 'outbox-relay'";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_connection_is_replaced_after_its_backend_is_killed() {
    let h = Harness::new("hbkill", Options { heartbeat_interval_ms: 500, ..Options::default() }).await;
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    let c = h.db.client().await;
    // Idle outbox, busy database: heartbeats keep the slot moving.
    let target = other_wal(&h, &c).await;
    h.wait_confirmed(&relay, target, Duration::from_secs(20)).await;
    let killed: i64 = c
        .query_one(&format!("SELECT count(pg_terminate_backend(pid)) FROM ({RELAY_SQL_BACKEND}) b"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1, "the relay keeps one SQL connection");
    // The next heartbeat opens a new connection: the slot keeps following the WAL.
    for _ in 0..3 {
        let target = other_wal(&h, &c).await;
        h.wait_confirmed(&relay, target, Duration::from_secs(20)).await;
    }
    assert!(relay.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_connection_is_replaced_after_it_stalls() {
    let proxy = FaultProxy::start(&pg_addr()).await;
    let h = Harness::new(
        "hbstall",
        Options { heartbeat_interval_ms: 500, extra_postgres: "stall_timeout_ms = 3000".into(), ..Options::default() },
    )
    .await;
    through(&h, &proxy);
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    let c = h.db.client().await;
    let target = other_wal(&h, &c).await;
    h.wait_confirmed(&relay, target, Duration::from_secs(20)).await;
    // Stalled (no FIN): the heartbeat times out after stall_timeout_ms, the next one uses a new connection.
    let deadline = Instant::now() + Duration::from_secs(20);
    let port = loop {
        if let Some(row) = c.query_opt(RELAY_SQL_BACKEND, &[]).await.unwrap() {
            break row.get::<_, i32>(1);
        }
        assert!(Instant::now() < deadline, "no SQL connection of the relay");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(proxy.stall_connection(u16::try_from(port).unwrap()), "the SQL connection goes through the proxy");
    let target = other_wal(&h, &c).await;
    h.wait_confirmed(&relay, target, Duration::from_secs(30)).await;
    assert!(relay.log_text().contains("heartbeat got no answer"), "{}", relay.log_text());
    assert!(relay.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_cut_or_killed_replication_connection_is_noticed_and_replaced() {
    let proxy = FaultProxy::start(&pg_addr()).await;
    let h = Harness::new(
        "replstall",
        Options {
            extra_postgres: "stall_timeout_ms = 3000".into(),
            // The server side of a stalled connection ends soon too (it hears no status updates).
            url_params: "options=-c%20wal_sender_timeout%3D3s".into(),
            ..Options::default()
        },
    )
    .await;
    through(&h, &proxy);
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    let mut c = h.db.client().await;
    let mut expected: HashSet<String> = h.insert_rows(&mut c, "order", 3).await.into_iter().collect();
    h.wait_for_records_of(Some(&relay), &[h.topic("order")], 3, Duration::from_secs(30));

    let walsender = "SELECT r.client_port, r.pid FROM pg_stat_replication r JOIN pg_replication_slots s \
                     ON s.active_pid = r.pid WHERE s.slot_name = $1";
    let row = c.query_one(walsender, &[&h.slot()]).await.unwrap();
    assert!(proxy.stall_connection(u16::try_from(row.get::<_, i32>(0)).unwrap()));
    expected.extend(h.insert_rows(&mut c, "order", 3).await);
    h.wait_for_records_of(Some(&relay), &[h.topic("order")], 6, Duration::from_secs(60));
    assert!(relay.log_text().contains("replication connection silent"), "{}", relay.log_text());

    // Cut: every connection closed, new ones refused for a while.
    proxy.cut();
    expected.extend(h.insert_rows(&mut c, "order", 3).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();
    h.wait_for_records_of(Some(&relay), &[h.topic("order")], 9, Duration::from_secs(60));

    // Killed: pg_terminate_backend on the walsender.
    let row = c.query_one(walsender, &[&h.slot()]).await.unwrap();
    let killed: bool = c.query_one("SELECT pg_terminate_backend($1)", &[&row.get::<_, i32>(1)]).await.unwrap().get(0);
    assert!(killed);
    expected.extend(h.insert_rows(&mut c, "order", 3).await);
    h.wait_for_records_of(Some(&relay), &[h.topic("order")], 12, Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_exactly(&h.read_committed(&[h.topic("order")]), &expected, &relay.log_text());
    assert!(relay.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_is_survived_exactly_once() {
    let cluster = logical_cluster(&[]);
    let h = Harness::new_on(on_cluster(&cluster), "pgrestart", Options::default()).await;
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    let mut c = h.db.client().await;
    let mut expected: HashSet<String> = h.insert_rows(&mut c, "order", 5).await.into_iter().collect();
    h.wait_for_records_of(Some(&relay), &[h.topic("order")], 5, Duration::from_secs(30));
    cluster.restart();
    let mut c = h.db.client().await;
    expected.extend(h.insert_rows(&mut c, "order", 5).await);
    h.wait_for_records_of(Some(&relay), &[h.topic("order")], 10, Duration::from_secs(90));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_exactly(&h.read_committed(&[h.topic("order")]), &expected, &relay.log_text());
    assert!(relay.is_running(), "{}", relay.log_text());
}

// ---------------------------------------------------------------------------------------------------------------
// Slots and checkpoints that cannot be resumed
// ---------------------------------------------------------------------------------------------------------------

/// The connector's newest checkpoint record as JSON (read_committed).
fn checkpoint_json(h: &Harness) -> serde_json::Value {
    let records = h.read_committed(std::slice::from_ref(&h.checkpoint_topic));
    let last = records.iter().rev().find(|r| r.key == h.connector.as_bytes()).expect("a checkpoint");
    serde_json::from_slice(&last.value).unwrap()
}

fn produce_plain(bootstrap: &str, topic: &str, key: &str, value: &[u8]) {
    let p: BaseProducer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    p.send(BaseRecord::to(topic).key(key).payload(value).partition(0)).map_err(|(e, _)| e).unwrap();
    p.flush(Duration::from_secs(10)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_of_another_cluster_or_ahead_of_the_wal_is_refused() {
    let a = logical_cluster(&[]);
    let b = logical_cluster(&[]);
    let h = Harness::new_on(on_cluster(&a), "foreign", Options::default()).await;
    h.deliver_then_stop(2, 2).await;
    let cp = checkpoint_json(&h);
    assert!(cp["source"]["system_id"].as_str().is_some_and(|s| !s.is_empty()), "the checkpoint names its server: {cp}");

    // A checkpoint beyond the server's WAL (a restored snapshot, a failover to a standby that was behind).
    let mut ahead = cp.clone();
    ahead["end_lsn"] = "FF/0".into();
    ahead["commit_lsn"] = "FF/0".into();
    produce_plain(&h.services.kafka_bootstrap, &h.checkpoint_topic, &h.connector, &serde_json::to_vec(&ahead).unwrap());
    let mut relay = h.spawn(&[], &[]);
    let log = wait_exit_failed(&mut relay, "checkpoint ahead of the WAL").await;
    assert!(log.contains("does not belong to this PostgreSQL server") && log.contains("WAL ends at"), "{log}");
    produce_plain(&h.services.kafka_bootstrap, &h.checkpoint_topic, &h.connector, &serde_json::to_vec(&cp).unwrap());

    // The same connector pointed at another cluster.
    let other = services::TestDb::create(&on_cluster(&b), "foreign_b").await;
    other.execute(relay::SCHEMA).await;
    h.rewrite_config(|t| t.replace(&h.db.url, &other.url));
    let mut relay = h.spawn(&[], &[]);
    let log = wait_exit_failed(&mut relay, "checkpoint of another cluster").await;
    assert!(log.contains("another cluster") && log.contains("--accept-gap"), "{log}");

    // The operator accepts: the checkpoint is set aside, the new cluster's rows flow.
    let mut relay = h.spawn(&["--accept-gap"], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    let mut cb = other.client().await;
    let ids = h.insert_rows(&mut cb, "order", 2).await;
    let records = h.wait_for_records_of(Some(&relay), &[h.topic("order")], 4, Duration::from_secs(30));
    assert!(ids.iter().all(|id| ids_of(&records).contains(id)));
    drop(relay);
    drop(other);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_lsn_is_checked_against_the_checkpoint() {
    let h = Harness::new("startlsn", Options { heartbeat_interval_ms: 0, ..Options::default() }).await;
    h.deliver_then_stop(1, 1).await;
    let mut c = h.db.client().await;
    // Killed after the Kafka commit, before the acknowledgement: the checkpoint is ahead of the slot.
    let mut crashing = h.spawn(&[], &[("OUTBOX_RELAY_FAILPOINT", "after_commit_before_ack")]);
    crashing.wait_log(STARTED, Duration::from_secs(60));
    h.insert_rows(&mut c, "order", 1).await;
    crashing.wait_exit(Duration::from_secs(30)).expect("aborts at the failpoint");
    let slot: String = c
        .query_one("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&h.slot()])
        .await
        .unwrap()
        .get(0);
    let cp_end = checkpoint_json(&h)["end_lsn"].as_str().unwrap().to_owned();
    assert_ne!(slot, cp_end);

    let mut behind = h.spawn(&["--start-lsn", &slot], &[]);
    let log = wait_exit_failed(&mut behind, "--start-lsn before the checkpoint").await;
    assert!(log.contains("produced twice"), "{log}");
    // A position past the checkpoint that the server has flushed (the test server commits asynchronously).
    let target = other_wal(&h, &c).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let wal = loop {
        let row = c
            .query_one("SELECT pg_current_wal_flush_lsn()::text, (pg_current_wal_flush_lsn() - '0/0')::bigint", &[])
            .await
            .unwrap();
        if row.get::<_, i64>(1) as u64 >= target {
            break row.get::<_, String>(0);
        }
        assert!(Instant::now() < deadline, "WAL not flushed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut ahead = h.spawn(&["--start-lsn", &wal], &[]);
    let log = wait_exit_failed(&mut ahead, "--start-lsn past the checkpoint").await;
    assert!(log.contains("would be skipped") && log.contains("--accept-gap"), "{log}");

    // A normal start resumes from the checkpoint: the row committed before the crash is not produced again.
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    h.insert_rows(&mut c, "order", 1).await;
    let records = h.wait_for_records_of(Some(&relay), &[h.topic("order")], 3, Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = h.read_committed(&[h.topic("order")]);
    assert_eq!(again.len(), 3, "exactly once: {:?}", ids_of(&records));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_slot_is_named_and_recreated_only_when_accepted() {
    let h = Harness::new("slotlost", Options::default()).await;
    h.deliver_then_stop(1, 1).await;
    let mut c = h.db.client().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.execute("SELECT pg_drop_replication_slot($1)", &[&h.slot()]).await.unwrap();
    let mut relay = h.spawn(&[], &[]);
    let log = wait_exit_failed(&mut relay, "slot dropped").await;
    assert!(log.contains("does not exist but the checkpoint") && log.contains("--accept-gap"), "{log}");
    let mut relay = h.spawn(&["--accept-gap"], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    h.insert_rows(&mut c, "order", 1).await;
    h.wait_for_records_of(Some(&relay), &[h.topic("order")], 2, Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_slot_is_named() {
    let cluster = logical_cluster(&["max_slot_wal_keep_size=1MB", "max_wal_size=32MB", "min_wal_size=32MB"]);
    let h = Harness::new_on(on_cluster(&cluster), "slotinval", Options::default()).await;
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    relay.stop();
    // The relay is down; the database writes well past max_slot_wal_keep_size and checkpoints.
    let c = h.db.client().await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        c.batch_execute(
            "INSERT INTO other (note) SELECT repeat('w', 1000) FROM generate_series(1, 20000); \
             SELECT pg_switch_wal(); CHECKPOINT;",
        )
        .await
        .unwrap();
        let status: Option<String> = c
            .query_one("SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1", &[&h.slot()])
            .await
            .unwrap()
            .get(0);
        if status.as_deref() == Some("lost") {
            break;
        }
        assert!(Instant::now() < deadline, "the slot was not invalidated (wal_status {status:?})");
    }
    let mut relay = h.spawn(&[], &[]);
    let log = wait_exit_failed(&mut relay, "invalidated slot").await;
    assert!(log.contains("invalidated") && log.contains("--accept-gap"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_checkpoint_topic_is_a_named_gap() {
    let h = Harness::new("cpdeleted", Options::default()).await;
    h.deliver_then_stop(1, 1).await;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &h.services.kafka_bootstrap).create().unwrap();
    let deleted = admin.delete_topics(&[&h.checkpoint_topic], &AdminOptions::new()).await.unwrap();
    assert!(deleted.iter().all(Result::is_ok), "{deleted:?}");
    // Deletion completes asynchronously on the broker.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut relay = h.spawn(&[], &[]);
    let log = wait_exit_failed(&mut relay, "checkpoint topic deleted").await;
    assert!(log.contains("gap detected") && log.contains("no checkpoint for this connector"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_topic_that_deletes_by_time_is_refused() {
    let h = Harness::new("cppolicy", Options::default()).await;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &h.services.kafka_bootstrap).create().unwrap();
    let topic = NewTopic::new(&h.checkpoint_topic, 1, TopicReplication::Fixed(1)).set("cleanup.policy", "delete");
    admin.create_topics([&topic], &AdminOptions::new()).await.unwrap();
    let mut relay = h.spawn(&[], &[]);
    let log = wait_exit_failed(&mut relay, "checkpoint topic with deletion").await;
    assert!(log.contains("cleanup.policy=\"delete\"") && log.contains("cleanup.policy=compact"), "{log}");
}

// ---------------------------------------------------------------------------------------------------------------
// Kafka
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_transaction_of_another_connector_does_not_hide_the_checkpoint() {
    let h = Harness::new("sharedcp", Options { heartbeat_interval_ms: 0, ..Options::default() }).await;
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    let mut c = h.db.client().await;
    let mut expected: HashSet<String> = h.insert_rows(&mut c, "order", 3).await.into_iter().collect();
    h.wait_for_records_of(Some(&relay), &[h.topic("order")], 3, Duration::from_secs(30));

    // Another connector sharing the checkpoint topic opens a transaction there and keeps it open.
    let other: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &h.services.kafka_bootstrap)
        .set("transactional.id", format!("{}-other", h.connector))
        .set("transaction.timeout.ms", "60000")
        .create()
        .unwrap();
    other.init_transactions(Duration::from_secs(30)).unwrap();
    other.begin_transaction().unwrap();
    other.send(BaseRecord::to(&h.checkpoint_topic).key("other-connector").payload("{}").partition(0)).unwrap();
    other.flush(Duration::from_secs(10)).unwrap();

    // This connector commits newer checkpoints behind that open transaction, then dies.
    expected.extend(h.insert_rows(&mut c, "order", 3).await);
    h.wait_for_records_of(Some(&relay), &[h.topic("order")], 6, Duration::from_secs(30));
    relay.kill9();

    let mut relay = h.spawn(&[], &[]);
    relay.wait_log("waiting for another producer's open transaction", Duration::from_secs(60));
    tokio::time::sleep(Duration::from_secs(2)).await;
    other.commit_transaction(Duration::from_secs(30)).unwrap();
    relay.wait_log(STARTED, Duration::from_secs(60));
    expected.extend(h.insert_rows(&mut c, "order", 3).await);
    h.wait_for_records_of(Some(&relay), &[h.topic("order")], 9, Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_exactly(&h.read_committed(&[h.topic("order")]), &expected, &relay.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_stalled_longer_than_every_client_timeout_is_survived_without_a_restart_by_hand() {
    let proxy_port = services::closed_port();
    let broker = kafka_node::KafkaNode::start_behind(proxy_port);
    let proxy = FaultProxy::start_on(proxy_port, &broker.client_listener()).await;
    let h = Harness::new("longstall", Options { metrics: Some(20_000), ..Options::default() }).await;
    h.rewrite_config(|t| t.replace(&h.services.kafka_bootstrap, &proxy.addr()));
    let direct = broker.bootstrap();
    let read = |topics: &[String]| relay::read_committed(&direct, topics);
    let topics = vec![h.topic("order")];

    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(90));
    let mut c = h.db.client().await;
    let mut expected: HashSet<String> = h.insert_rows(&mut c, "order", 5).await.into_iter().collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while read(&topics).len() < 5 {
        assert!(Instant::now() < deadline, "{}", relay.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let acked_before = h.confirmed_flush().await;

    // Bytes stop flowing, nothing is closed: for longer than every client timeout (operation 30 s, socket 60 s,
    // transaction 60 s, message 60 s).
    proxy.stall();
    let stalled_at = Instant::now();
    expected.extend(h.insert_rows(&mut c, "order", 5).await);
    let mut saw_unready = false;
    let mut saw_unhealthy = false;
    while stalled_at.elapsed() < Duration::from_secs(130) {
        assert!(relay.is_running(), "an outage must not stop the relay:\n{}", relay.log_text());
        saw_unready |= h.http_status("/ready") == Some(503);
        saw_unhealthy |= h.http_status("/health") == Some(503);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert_eq!(h.confirmed_flush().await, acked_before, "nothing acknowledged while Kafka is unreachable");
    assert!(saw_unready, "/ready must turn 503 while nothing can be delivered");
    assert!(saw_unhealthy, "/health must turn 503 after metrics.unhealthy_after_ms without delivering");

    proxy.restore();
    expected.extend(h.insert_rows(&mut c, "order", 5).await);
    let deadline = Instant::now() + Duration::from_secs(180);
    while read(&topics).len() < 15 {
        assert!(Instant::now() < deadline, "not resumed after the outage; log:\n{}", relay.log_text());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_exactly(&read(&topics), &expected, &relay.log_text());
    let deadline = Instant::now() + Duration::from_secs(60);
    while h.http_status("/health") != Some(200) || h.http_status("/ready") != Some(200) {
        assert!(Instant::now() < deadline, "health did not come back:\n{}", relay.log_text());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(h.confirmed_flush().await > acked_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_longer_than_the_kafka_transaction_timeout_is_named_not_fenced() {
    let h = Harness::new("longtxn", Options::default()).await;
    h.rewrite_config(|t| t.replace("transaction_timeout_ms = 60000", "transaction_timeout_ms = 1000"));
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    let c = h.db.client().await;
    c.batch_execute(
        "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
         SELECT 'order', 'k' || i, 'T', jsonb_build_object('n', i, 'pad', repeat('p', 200)) FROM generate_series(1, 100000) i",
    )
    .await
    .unwrap();
    let log = wait_exit_failed(&mut relay, "transaction longer than the timeout").await;
    assert!(log.contains("could not be produced within kafka.transaction_timeout_ms"), "{log}");
    assert!(!log.contains("fenced:"), "not a misleading fencing error:\n{log}");
    assert!(h.read_committed(&[h.topic("order")]).is_empty(), "nothing of the transaction is visible");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spill_directory_is_retried_until_space_is_freed() {
    let spill = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(spill.path())
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a 1 MiB tmpfs needs root (CI runs as root)");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(spill.path().to_owned());
    let h = Harness::new(
        "spillfull",
        Options {
            extra_postgres: format!("spill_dir = \"{}\"\nspill_threshold_bytes = 65536", spill.path().display()),
            // PostgreSQL streams the transaction before it commits once it exceeds this.
            url_params: "options=-c%20logical_decoding_work_mem%3D64kB".into(),
            ..Options::default()
        },
    )
    .await;
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    let c = h.db.client().await;
    // A streamed transaction far larger than the 1 MiB directory.
    c.batch_execute(
        "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
         SELECT 'order', 'k' || i, 'T', jsonb_build_object('n', i, 'pad', repeat('p', 200)) FROM generate_series(1, 20000) i",
    )
    .await
    .unwrap();
    relay.wait_log("No space left on device", Duration::from_secs(60));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(relay.is_running(), "a full disk is retried, not fatal:\n{}", relay.log_text());
    assert!(h.read_committed(&[h.topic("order")]).is_empty());
    // The operator frees space.
    let grown =
        std::process::Command::new("mount").args(["-o", "remount,size=256m"]).arg(spill.path()).status().unwrap();
    assert!(grown.success());
    let records = h.wait_for_records_of(Some(&relay), &[h.topic("order")], 20_000, Duration::from_secs(120));
    assert_eq!(records.len(), 20_000);
    let distinct: HashSet<String> = ids_of(&records).into_iter().collect();
    assert_eq!(distinct.len(), 20_000, "exactly once");
}
