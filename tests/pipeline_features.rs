//! End-to-end tests of the mapping features and of large / altered / bad input, through the real binary and the
//! real services: several outbox tables, additional fields (header, envelope, partition), the tableless outbox,
//! a streamed and spilled large transaction, a table altered while the relay runs, and a row that cannot be mapped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "common/services.rs"]
mod services;

#[path = "common/relay.rs"]
mod relay;

#[path = "common/proxy.rs"]
mod proxy;

use std::collections::HashSet;
use std::str::FromStr;
use std::time::{Duration, Instant};

use relay::{Harness, Options};

const STARTED: &str = "replication started";

fn payload_n(v: &serde_json::Value) -> i64 {
    serde_json::from_str::<serde_json::Value>(v["payload"].as_str().unwrap()).unwrap()["n"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_tables_additional_fields_and_the_tableless_outbox() {
    let outbox = r#"
[[outbox.tables]]
table = "public.outbox"
route_topic_replacement = "{prefix}.${routedByValue}"
additional_fields = [
  { column = "tenant", placement = "header" },
  { column = "region", placement = "envelope", alias = "origin" },
  { column = "part", placement = "partition" },
]
[[outbox.tables]]
table = "billing.events"
field_event_key = "account"
route_by_field = "kind"
route_topic_replacement = "{prefix}.billing.${routedByValue}"
[outbox.messages]
enabled = true
prefix = "outbox"
"#;
    let h = Harness::new("features", Options { outbox_toml: Some(outbox.into()), ..Options::default() }).await;
    h.db.execute(
        "ALTER TABLE outbox ADD COLUMN tenant text, ADD COLUMN region text, ADD COLUMN part int;
             CREATE SCHEMA billing;
             CREATE TABLE billing.events (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), kind text NOT NULL,
                 account text NOT NULL, type text NOT NULL, payload jsonb);",
    )
    .await;
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    let c = h.db.client().await;
    c.batch_execute(
        "BEGIN;
         INSERT INTO outbox (aggregatetype, aggregateid, type, payload, tenant, region, part)
             VALUES ('order', 'o-1', 'OrderPlaced', '{\"n\": 1}', 'acme', 'eu', 2);
         INSERT INTO billing.events (kind, account, type, payload) VALUES ('invoice', 'acc-7', 'InvoiceIssued', '{\"n\": 2}');
         SELECT pg_logical_emit_message(true, 'outbox',
             '{\"id\": \"m-1\", \"aggregatetype\": \"order\", \"aggregateid\": \"o-2\", \"type\": \"OrderShipped\", \"payload\": {\"n\": 3}}');
         SELECT pg_logical_emit_message(true, 'someone-else', 'not ours');
         COMMIT;",
    )
    .await
    .unwrap();
    let topics = vec![h.topic("order"), h.topic("billing.invoice")];
    h.wait_for_records_of(Some(&relay), &topics, 3, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    let records = h.read_committed(&topics);
    assert_eq!(records.len(), 3, "{records:?}");
    let values = h.decode_values(&records).await;
    let by_n = |n: i64| {
        let i = values.iter().position(|v| payload_n(v) == n).unwrap_or_else(|| panic!("event {n} missing"));
        (&records[i], &values[i])
    };
    let (r, v) = by_n(1);
    assert_eq!(r.topic, h.topic("order"));
    assert_eq!(r.partition, 2, "partition placement");
    assert_eq!(r.header("tenant").as_deref(), Some("acme"), "header placement");
    assert_eq!(v["origin"], serde_json::json!("eu"), "envelope placement with alias");
    let (r, v) = by_n(2);
    assert_eq!(r.topic, h.topic("billing.invoice"), "second table, own routing column");
    assert_eq!(String::from_utf8_lossy(&r.key), "acc-7", "second table, own key column");
    assert_eq!(v["type"], serde_json::json!("InvoiceIssued"));
    let (r, v) = by_n(3);
    assert_eq!(r.topic, h.topic("order"), "tableless outbox routed like a row");
    assert_eq!(r.header("id").as_deref(), Some("m-1"));
    assert_eq!(String::from_utf8_lossy(&r.key), "o-2");
    assert_eq!(v["type"], serde_json::json!("OrderShipped"));
    // All three came from one PostgreSQL transaction: one Kafka transaction, so one offset run per partition and
    // one checkpoint for them.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_streamed_transaction_spills_and_arrives_whole_and_a_rolled_back_one_never() {
    // A tiny logical_decoding_work_mem makes PostgreSQL stream the transaction before it commits; a tiny spill
    // threshold makes the relay write it to disk.
    let h = Harness::new(
        "stream",
        Options {
            url_params: "options=-c%20logical_decoding_work_mem%3D64kB".into(),
            extra_postgres: "streaming = true\nspill_threshold_bytes = 65536\n".into(),
            ..Options::default()
        },
    )
    .await;
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    let mut big = h.db.client().await;
    let mut small = h.db.client().await;
    let tx = big.transaction().await.unwrap();
    tx.batch_execute(
        "INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
         SELECT 'order', 'big-' || (g % 7), 'OrderPlaced', json_build_object('n', g, 'pad', repeat('x', 100))::jsonb
         FROM generate_series(1, 5000) g",
    )
    .await
    .unwrap();
    // A subtransaction rolled back inside the big one: its rows must not appear.
    tx.batch_execute(
        "SAVEPOINT s1;
         INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
         SELECT 'order', 'big-0', 'Nope', json_build_object('n', -g, 'pad', repeat('y', 100))::jsonb FROM generate_series(1, 2000) g;
         ROLLBACK TO SAVEPOINT s1;",
    )
    .await
    .unwrap();
    // Meanwhile a small transaction commits first.
    let ids = h.insert_txn(&mut small, &[("order", "small", "T", r#"{"n": 100000}"#.into())]).await;
    tx.commit().await.unwrap();
    // A large transaction that is rolled back after being streamed.
    let tx = big.transaction().await.unwrap();
    tx.batch_execute(
        "INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
         SELECT 'order', 'gone', 'Nope', json_build_object('n', -g, 'pad', repeat('z', 100))::jsonb FROM generate_series(1, 3000) g",
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    let topics = vec![h.topic("order")];
    h.wait_for_records_of(Some(&relay), &topics, 5001, Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(1));
    let records = h.read_committed(&topics);
    assert_eq!(records.len(), 5001);
    let values = h.decode_values(&records).await;
    let ns: HashSet<i64> = values.iter().map(payload_n).collect();
    assert_eq!(ns.len(), 5001, "no duplicates");
    assert!(ns.iter().all(|n| *n > 0), "rolled-back rows leaked");
    assert!(ns.contains(&100_000) && (1..=5000).all(|n| ns.contains(&n)));
    assert_eq!(records.iter().filter(|r| r.header("id").as_deref() == ids.first().map(String::as_str)).count(), 1);
    // The small transaction committed first, so on its partition it comes before the big one's rows there.
    let log = relay.log_text();
    assert!(log.contains("proto_version="), "{log}");
    assert!(
        log.contains("streamed transaction spilled to disk"),
        "the big transaction must have been streamed and spilled:\n{log}"
    );
    // Per key, insert order is kept.
    let mut last = std::collections::HashMap::new();
    for (r, v) in records.iter().zip(&values) {
        let n = payload_n(v);
        if let Some(prev) = last.insert(r.key.clone(), n) {
            assert!(
                n > prev || r.key == b"small",
                "order within key {:?}: {n} after {prev}",
                String::from_utf8_lossy(&r.key)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_altered_while_running_keeps_flowing() {
    let outbox = r#"
[[outbox.tables]]
table = "public.outbox"
route_topic_replacement = "{prefix}.${routedByValue}"
additional_fields = [{ column = "tenant", placement = "header" }]
"#;
    let h = Harness::new("alter", Options { outbox_toml: Some(outbox.into()), ..Options::default() }).await;
    h.db.execute("ALTER TABLE outbox ADD COLUMN tenant text").await;
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    let c = h.db.client().await;
    c.batch_execute("INSERT INTO outbox (aggregatetype, aggregateid, type, payload, tenant) VALUES ('order', 'a', 'T', '{\"n\": 1}', 't1')")
        .await
        .unwrap();
    // Columns added and dropped between transactions, and inside one.
    c.batch_execute(
        "ALTER TABLE outbox ADD COLUMN note text;
         INSERT INTO outbox (aggregatetype, aggregateid, type, payload, tenant, note) VALUES ('order', 'a', 'T', '{\"n\": 2}', 't2', 'x');
         BEGIN;
         INSERT INTO outbox (aggregatetype, aggregateid, type, payload, tenant) VALUES ('order', 'a', 'T', '{\"n\": 3}', 't3');
         ALTER TABLE outbox DROP COLUMN note;
         INSERT INTO outbox (aggregatetype, aggregateid, type, payload, tenant) VALUES ('order', 'a', 'T', '{\"n\": 4}', 't4');
         COMMIT;",
    )
    .await
    .unwrap();
    let topics = vec![h.topic("order")];
    let records = h.wait_for_records_of(Some(&relay), &topics, 4, Duration::from_secs(60));
    let values = h.decode_values(&records).await;
    let got: Vec<(i64, String)> =
        records.iter().zip(&values).map(|(r, v)| (payload_n(v), r.header("tenant").unwrap())).collect();
    assert_eq!(got, vec![(1, "t1".into()), (2, "t2".into()), (3, "t3".into()), (4, "t4".into())]);
    assert!(relay.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_cannot_be_mapped_stops_the_relay_with_the_checkpoint_untouched() {
    let h = Harness::new("badrow", Options::default()).await;
    h.db.execute("ALTER TABLE outbox ALTER COLUMN type DROP NOT NULL").await;
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    let mut c = h.db.client().await;
    h.insert_txn(&mut c, &[("order", "a", "T", r#"{"n": 1}"#.into())]).await;
    h.wait_for_records_of(Some(&relay), &[h.topic("order")], 1, Duration::from_secs(30));
    let before = h.confirmed_flush().await;
    let bad: String = c
        .query_one(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'a', NULL, '{\"n\": 2}') RETURNING id::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    h.insert_txn(&mut c, &[("order", "a", "T", r#"{"n": 3}"#.into())]).await;
    let status = relay.wait_exit(Duration::from_secs(60)).expect("the relay must stop on an unmappable row");
    assert!(!status.success());
    let log = relay.log_text();
    assert!(log.contains(&bad), "the error names the event id {bad}:\n{log}");
    assert!(log.contains("type"), "the error names the column:\n{log}");
    // Nothing after the good row reached Kafka and the slot did not move past it.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(h.read_committed(&[h.topic("order")]).len(), 1);
    assert_eq!(h.confirmed_flush().await, before, "checkpoint and slot untouched");
    // A restart meets the same row again: it is not skipped silently.
    let mut again = h.spawn(&[], &[]);
    assert!(!again.wait_exit(Duration::from_secs(60)).expect("stops again").success());
    assert!(again.log_text().contains(&bad));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_outage_is_retried_without_loss_or_early_acknowledgement() {
    let services = services::services();
    let registry = url::Url::parse(&services.schema_registry_url).unwrap();
    let target = format!("{}:{}", registry.host_str().unwrap(), registry.port_or_known_default().unwrap());
    let proxy = proxy::FaultProxy::start(&target).await;
    let proxied = format!("http://{}{}", proxy.addr(), registry.path());
    let h = Harness::new("regdown", Options::default()).await;
    // Point the relay at the proxy; registry calls give up after 2 s each.
    h.rewrite_config(|t| {
        t.replace(&services.schema_registry_url, &proxied)
            .replace("[schema_registry]\n", "[schema_registry]\nrequest_timeout_ms = 2000\n")
    });

    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    let mut c = h.db.client().await;
    let mut committed = HashSet::new();
    committed.extend(h.insert_txn(&mut c, &[("order", "a", "T", r#"{"n": 1}"#.into())]).await);
    h.wait_for_records_of(Some(&relay), &[h.topic("order")], 1, Duration::from_secs(30));

    // Cut (connections closed, new ones refused), then stalled (bytes stop, nothing closes): a new topic needs a
    // new schema registration, impossible either way.
    for (round, fault) in ["cut", "stall"].into_iter().enumerate() {
        // The acknowledgement of what arrived follows the Kafka commit within a status interval.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let acked_before = h.confirmed_flush().await;
        if fault == "cut" {
            proxy.cut()
        } else {
            proxy.stall()
        }
        let n = i64::try_from(round).unwrap() * 10;
        committed
            .extend(h.insert_txn(&mut c, &[(&format!("invoice{round}"), "i", "T", format!(r#"{{"n": {n}}}"#))]).await);
        committed.extend(h.insert_txn(&mut c, &[("order", "a", "T", format!(r#"{{"n": {}}}"#, n + 1))]).await);
        let restarts = relay.log_text().matches("restarting from the last checkpoint").count();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while relay.log_text().matches("restarting from the last checkpoint").count() == restarts {
            assert!(std::time::Instant::now() < deadline, "no retry logged ({fault}):\n{}", relay.log_text());
            assert!(relay.is_running(), "a registry outage must not stop the relay:\n{}", relay.log_text());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(relay.is_running());
        assert_eq!(h.confirmed_flush().await, acked_before, "nothing acknowledged while the registry is down");
        assert!(h.read_committed(&[h.topic(&format!("invoice{round}"))]).is_empty());
        proxy.restore();
        let topics = vec![h.topic("order"), h.topic(&format!("invoice{round}"))];
        h.wait_for_records_of(Some(&relay), &topics, round + 3, Duration::from_secs(90));
    }
    std::thread::sleep(Duration::from_millis(500));
    let topics = vec![h.topic("order"), h.topic("invoice0"), h.topic("invoice1")];
    let records = h.read_committed(&topics);
    let ids: Vec<String> = records.iter().map(|r| r.header("id").unwrap()).collect();
    assert_eq!(ids.len(), 5, "exactly once after the outages: {ids:?}");
    assert_eq!(ids.iter().cloned().collect::<HashSet<_>>(), committed);
}

#[path = "common/kafka_node.rs"]
mod kafka_node;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_is_retried_without_loss_duplicates_or_early_acknowledgement() {
    let mut broker = kafka_node::KafkaNode::start();
    let h = Harness::new("brokerdown", Options { max_batch_ms: 20, ..Options::default() }).await;
    let text = std::fs::read_to_string(&h.config_path)
        .unwrap()
        .replace(&h.services.kafka_bootstrap, &broker.bootstrap())
        .replace("[kafka]\n", "[kafka]\ntransaction_timeout_ms = 10000\n")
        .replace("transaction_timeout_ms = 60000\n", "");
    std::fs::write(&h.config_path, text).unwrap();
    let bootstrap = broker.bootstrap();
    let read = |topics: &[String]| relay::read_committed(&bootstrap, topics);

    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(90));
    let mut c = h.db.client().await;
    let mut committed = HashSet::new();
    for n in 1..=20 {
        committed.extend(h.insert_txn(&mut c, &[("order", "a", "T", format!(r#"{{"n": {n}}}"#))]).await);
    }
    let topics = vec![h.topic("order")];
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while read(&topics).len() < 20 {
        assert!(std::time::Instant::now() < deadline, "{}", relay.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let acked_before = h.confirmed_flush().await;

    broker.kill();
    for n in 21..=40 {
        committed.extend(h.insert_txn(&mut c, &[("order", "a", "T", format!(r#"{{"n": {n}}}"#))]).await);
    }
    // While the broker is gone nothing may be acknowledged, and the relay must keep trying, not exit.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(relay.is_running(), "a broker outage must not stop the relay:\n{}", relay.log_text());
    assert_eq!(h.confirmed_flush().await, acked_before, "acknowledged past what Kafka holds");

    broker.restart();
    for n in 41..=50 {
        committed.extend(h.insert_txn(&mut c, &[("order", "a", "T", format!(r#"{{"n": {n}}}"#))]).await);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let records = read(&topics);
        if records.len() >= 50 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "have {}; log:\n{}", records.len(), relay.log_text());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let records = read(&topics);
    let ids: Vec<String> = records.iter().map(|r| r.header("id").unwrap()).collect();
    assert_eq!(ids.len(), 50, "exactly once across the outage");
    assert_eq!(ids.into_iter().collect::<HashSet<_>>(), committed);
    assert!(h.confirmed_flush().await > acked_before);
}

/// Protocol version 4, streaming and a failover slot for real, on the newer PostgreSQL that
/// `tests/infra/up.sh --with-pg-latest` starts (`PG_LATEST_URL`). Without it the test says so and passes only when
/// `OUTBOX_RELAY_REQUIRE_PG_LATEST` is unset (CI sets it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newest_postgres_protocol_4_streaming_and_a_failover_slot() {
    let Some(latest) = services::infra_var("PG_LATEST_URL") else {
        assert!(
            std::env::var("OUTBOX_RELAY_REQUIRE_PG_LATEST").is_err(),
            "PG_LATEST_URL missing: run `bash tests/infra/up.sh --with-pg-latest`"
        );
        eprintln!("PG_LATEST_URL not set: newest-PostgreSQL test not run (start it with up.sh --with-pg-latest)");
        return;
    };
    let mut services = services::services();
    services.pg_url = latest;
    let h = Harness::new_on(
        services,
        "pg18",
        Options {
            url_params: "options=-c%20logical_decoding_work_mem%3D64kB".into(),
            extra_postgres: "streaming = true\nfailover_slot = true\nspill_threshold_bytes = 65536\n".into(),
            ..Options::default()
        },
    )
    .await;
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    assert!(relay.log_text().contains("proto_version=4"), "{}", relay.log_text());
    let c = h.db.client().await;
    let failover: bool = c
        .query_one("SELECT failover FROM pg_replication_slots WHERE slot_name = $1", &[&h.slot()])
        .await
        .unwrap()
        .get(0);
    assert!(failover, "postgres.failover_slot = true must create a failover slot");
    c.batch_execute(
        "INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
         SELECT 'order', 'k' || (g % 5), 'OrderPlaced', json_build_object('n', g, 'pad', repeat('x', 200))::jsonb
         FROM generate_series(1, 3000) g;
         INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'solo', 'T', '{\"n\": 9999}');",
    )
    .await
    .unwrap();
    let topics = vec![h.topic("order")];
    h.wait_for_records_of(Some(&relay), &topics, 3001, Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(500));
    let records = h.read_committed(&topics);
    assert_eq!(records.len(), 3001);
    let values = h.decode_values(&records).await;
    let ns: HashSet<i64> = values.iter().map(payload_n).collect();
    assert_eq!(ns.len(), 3001);
    assert!(relay.log_text().contains("streamed transaction spilled to disk"), "{}", relay.log_text());
}

/// `check` must pass (`what` names it in the failure); then the relay runs and relays `n` new rows, in order.
/// Returns the running relay and the client that wrote the rows.
async fn check_then_relay(h: &Harness, n: usize, what: &str) -> (relay::RelayProcess, tokio_postgres::Client) {
    let check = h.command().arg("check").output().unwrap();
    assert!(
        check.status.success(),
        "{what}:\n{}\n{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    let mut c = h.db.client().await;
    let ids = h.insert_rows(&mut c, "order", n).await;
    let records = h.wait_for_records_of(Some(&relay), &[h.topic("order")], n, Duration::from_secs(30));
    assert_eq!(records.iter().map(|r| r.header("id").unwrap()).collect::<Vec<_>>(), ids);
    (relay, c)
}

/// A client certificate in the URL (`sslcert`, `sslkey`) authenticates both connections, on a server that accepts
/// only certificate logins over TLS: `check` passes and `run` relays. (The two connections once parsed the URL
/// separately; the replication side refused `sslcert`, so a URL that passed `check` failed `run`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_authenticates_check_and_both_connections_of_run() {
    let pki = tempfile::tempdir().unwrap();
    let d = pki.path();
    services::test_pki(d, "postgres");
    // Certificate logins only, over TLS; the harness's own plain connections stay trusted.
    std::fs::write(
        d.join("pg_hba.conf"),
        "local all all trust\nhostssl all postgres 127.0.0.1/32 cert\nhostssl replication postgres 127.0.0.1/32 cert\n\
         host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n",
    )
    .unwrap();
    // The server runs as the postgres OS user and insists on a private key file of its own.
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg("chmod 0755 . && chmod 0600 server.key && (id postgres >/dev/null 2>&1 && chown postgres server.key || true)")
        .current_dir(d)
        .status()
        .unwrap();
    assert!(status.success());
    let file = |name: &str| d.join(name).display().to_string();
    let settings: Vec<String> = vec![
        "wal_level=logical".into(),
        "max_wal_senders=10".into(),
        "max_replication_slots=10".into(),
        "ssl=on".into(),
        format!("ssl_cert_file={}", file("server.crt")),
        format!("ssl_key_file={}", file("server.key")),
        format!("ssl_ca_file={}", file("ca.crt")),
        format!("hba_file={}", file("pg_hba.conf")),
    ];
    let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
    let cluster = services::ThrowawayCluster::start(&services::services(), &settings);
    let svc = services::Services { pg_url: cluster.url(), ..services::services() };
    let h = Harness::new_on(svc, "clientcert", Options::default()).await;
    let url = format!(
        "postgres://postgres@localhost:{}/{}?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        cluster.port,
        h.db.name,
        file("ca.crt"),
        file("client.crt"),
        file("client.key")
    );
    h.rewrite_config(|t| t.replace(&h.db.url, &url));

    let (relay, c) = check_then_relay(&h, 2, "check").await;
    // Both of the relay's connections really are certificate logins over TLS.
    let logins: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'outbox-relay' AND s.ssl AND s.client_dn = '/CN=postgres'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(logins, 2, "the SQL and the replication connection:\n{}", relay.log_text());
}

/// A multi-host URL with `target_session_attrs=read-write` whose first host is a hot standby: every connection of the
/// relay (SQL, replication, lease, monitor) skips the standby and lands on the primary, and it relays. With only the
/// standby in the URL, `check` refuses with the reason instead of trying to decode on a read-only server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_host_url_with_read_write_uses_the_primary_for_every_connection() {
    let settings = ["wal_level=logical", "max_wal_senders=10", "max_replication_slots=10"];
    let primary = services::ThrowawayCluster::start(&services::services(), &settings);
    let standby = services::ThrowawayCluster::standby_of(&primary);
    let svc = services::Services { pg_url: primary.url(), ..services::services() };
    let h = Harness::new_on(svc, "multihost", Options::default()).await;
    let on = |port: u16| h.db.url.replace(&format!(":{}/", primary.port), &format!(":{port}/"));
    let standby_url = on(standby.port);
    assert_ne!(standby_url, h.db.url);
    // The database reaches the standby by streaming replication; wait (bounded) until it can be opened there.
    let deadline = Instant::now() + Duration::from_secs(30);
    let standby_client = loop {
        match tokio_postgres::connect(&standby_url, tokio_postgres::NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                break client;
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("standby not there yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the database never reached the standby: {e}"),
        }
    };
    let read_only: String = standby_client.query_one("SHOW transaction_read_only", &[]).await.unwrap().get(0);
    assert_eq!(read_only, "on", "the second cluster must be a real standby");

    let standby_only = format!("{standby_url}&target_session_attrs=read-write");
    h.rewrite_config(|t| t.replace(&h.db.url, &standby_only));
    let check = h.command().arg("check").output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
    assert!(!check.status.success(), "check passed against a standby alone:\n{report}");
    assert!(report.contains("read-only server (a standby)"), "the refusal names the reason:\n{report}");

    let both = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{}?sslmode=disable&target_session_attrs=read-write",
        standby.port, primary.port, h.db.name
    );
    h.rewrite_config(|t| t.replace(&standby_only, &both));
    let (_relay, c) = check_then_relay(&h, 3, "check with the standby first").await;
    // Every connection of the relay is on the primary, none on the standby.
    let relay_sessions = |rows: Vec<tokio_postgres::Row>| -> Vec<String> { rows.iter().map(|r| r.get(0)).collect() };
    let sql = "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE 'outbox-relay%' ORDER BY 1";
    let on_primary = relay_sessions(c.query(sql, &[]).await.unwrap());
    let on_standby = relay_sessions(standby_client.query(sql, &[]).await.unwrap());
    assert!(on_standby.is_empty(), "relay sessions on the standby: {on_standby:?}");
    assert!(on_primary.len() >= 4, "SQL, replication, lease and monitor on the primary: {on_primary:?}");
}

/// Keys land on the partitions Kafka's own Java producer chooses (murmur2, librdkafka's `murmur2_random`): a topic
/// that Debezium on Kafka Connect (a Java producer) filled keeps each aggregate on one partition, so its order
/// survives the switch to the relay. Kafka's console producer writes the same keys to the same topic; each key's
/// records must share a partition. (librdkafka's own default, CRC32, puts most of these keys elsewhere.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_land_on_the_partitions_kafkas_java_producer_chooses() {
    let opts = Options { extra_toml: "[kafka.topic_creation]\npartitions = 6\n".into(), ..Options::default() };
    let h = Harness::new("murmur", opts).await;
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    let keys: Vec<String> = (0..40).map(|i| format!("order-{i}")).collect();
    let rows: Vec<(&str, &str, &str, String)> =
        keys.iter().map(|k| ("order", k.as_str(), "OrderCreated", r#"{"total": 1}"#.to_owned())).collect();
    let mut c = h.db.client().await;
    h.insert_txn(&mut c, &rows).await;
    let topic = h.topic("order");
    h.wait_for_records_of(Some(&relay), std::slice::from_ref(&topic), keys.len(), Duration::from_secs(30));

    let input: String = keys.iter().map(|k| format!("{k}\tfrom-java\n")).collect();
    services::kafka_tool_with_input(
        "org.apache.kafka.tools.ConsoleProducer",
        &h.services.kafka_bootstrap,
        &["--topic", &topic, "--property", "parse.key=true", "--property", "key.separator=\t"],
        &input,
    );
    let records =
        h.wait_for_records_of(Some(&relay), std::slice::from_ref(&topic), 2 * keys.len(), Duration::from_secs(30));
    let mut relay_partition = std::collections::HashMap::new();
    let mut java_partition = std::collections::HashMap::new();
    for r in &records {
        let key = String::from_utf8(r.key.clone()).unwrap();
        if r.value == b"from-java" {
            java_partition.insert(key, r.partition);
        } else {
            assert!(r.header("id").is_some(), "a relay record: {r:?}");
            relay_partition.insert(key, r.partition);
        }
    }
    assert_eq!(relay_partition.len(), keys.len());
    assert_eq!(java_partition.len(), keys.len());
    let differing: Vec<_> = keys.iter().filter(|k| relay_partition[*k] != java_partition[*k]).collect();
    assert!(differing.is_empty(), "keys on another partition than the Java producer's: {differing:?}");
    let used: HashSet<i32> = relay_partition.values().copied().collect();
    assert!(used.len() >= 4, "the keys spread over the 6 partitions: {used:?}");
}

/// Confluent's own Python client reads what the relay writes: a `read_committed` consumer of confluent-kafka with its
/// `AvroDeserializer` against the registry decodes every record's value (magic byte, schema id, Avro binary) to the
/// row it came from, including a NULL payload and an envelope field, and its key to the aggregate id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluents_python_avro_deserializer_reads_every_record() {
    let outbox = r#"
[[outbox.tables]]
table = "public.outbox"
route_topic_replacement = "{prefix}.${routedByValue}"
additional_fields = [{ column = "region", placement = "envelope", alias = "origin" }]
"#;
    let h = Harness::new("pyavro", Options { outbox_toml: Some(outbox.into()), ..Options::default() }).await;
    h.db.execute("ALTER TABLE outbox ADD COLUMN region text").await;
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    let c = h.db.client().await;
    c.batch_execute(
        r#"INSERT INTO outbox (aggregatetype, aggregateid, type, payload, region)
           SELECT 'order', 'o-' || i, 'OrderCreated', jsonb_build_object('n', i, 'note', 'ä €'), 'eu'
           FROM generate_series(1, 20) i;
           INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'o-null', 'OrderVoided', NULL);"#,
    )
    .await
    .unwrap();
    let topic = h.topic("order");
    let ours = h.wait_for_records_of(Some(&relay), std::slice::from_ref(&topic), 21, Duration::from_secs(30));

    let read = h.python_avro_read(&topic, 21);
    assert_eq!(read.len(), ours.len(), "{read:?}");
    for r in &read {
        let v = &r["value"];
        assert_eq!(v["id"], r["headers"]["id"], "{r}");
        assert_eq!(v["type"], r["headers"]["type"], "{r}");
        assert_eq!(v["aggregate_id"], r["key"], "{r}");
        assert_eq!(v["aggregate_type"], "order", "{r}");
        assert!(r["schema_id"].as_u64().is_some_and(|id| id > 0), "{r}");
        assert!(v["timestamp"].as_str().is_some_and(|t| t.starts_with("20")), "a timestamp-micros: {r}");
        if r["key"] == "o-null" {
            assert_eq!(v["payload"], serde_json::Value::Null, "{r}");
            assert_eq!(v["origin"], serde_json::Value::Null, "{r}");
        } else {
            let n: i64 = r["key"].as_str().unwrap().trim_start_matches("o-").parse().unwrap();
            let payload: serde_json::Value = serde_json::from_str(v["payload"].as_str().unwrap()).unwrap();
            assert_eq!(payload, serde_json::json!({"n": n, "note": "ä €"}), "{r}");
            assert_eq!(v["origin"], "eu", "{r}");
        }
    }
    let keys: HashSet<&str> = read.iter().filter_map(|r| r["key"].as_str()).collect();
    assert_eq!(keys.len(), 21, "every row once");
}

/// Kafka's own `kafka-consumer-groups` against the local broker; its standard output.
fn consumer_groups(args: &[&str]) -> String {
    services::kafka_tool(services::CONSUMER_GROUPS, &services::services().kafka_bootstrap, args)
}

/// The group's lag on `topic` as Kafka's tool reports it (the LAG column, summed over partitions).
fn tool_lag(group: &str, topic: &str) -> i64 {
    let out = consumer_groups(&["--describe", "--group", group]);
    out.lines()
        .filter(|l| l.split_whitespace().nth(1) == Some(topic))
        .filter_map(|l| l.split_whitespace().nth(5).and_then(|lag| lag.parse::<i64>().ok()))
        .sum()
}

fn relay_lag(h: &Harness, group: &str, topic: &str) -> Option<i64> {
    h.metric(&format!("outbox_relay_consumer_lag_records{{group=\"{group}\",topic=\"{topic}\"}}")).map(|v| v as i64)
}

/// Waits until the relay's metric equals Kafka's tool for the group (the relay measures every second here).
fn wait_lag_equal(h: &Harness, group: &str, topic: &str, log: &str) -> i64 {
    let expected = tool_lag(group, topic);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = relay_lag(h, group, topic);
        if got == Some(expected) {
            return expected;
        }
        assert!(Instant::now() < deadline, "relay reports {got:?}, kafka-consumer-groups {expected}:\n{log}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_group_lag_matches_kafkas_own_tool() {
    let h = Harness::new(
        "lag",
        Options {
            metrics: Some(60_000),
            extra_toml: "[consumer_lag]\ninterval_ms = 1000\n".to_owned(),
            ..Options::default()
        },
    )
    .await;
    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    let mut c = h.db.client().await;
    h.insert_rows(&mut c, "order", 30).await;
    let topic = h.topic("order");
    h.wait_for_records_of(Some(&relay), std::slice::from_ref(&topic), 30, Duration::from_secs(30));

    // A downstream group that has read nothing (its offsets at the start), discovered without configuration.
    let group = format!("{}-billing", h.connector);
    consumer_groups(&["--reset-offsets", "--group", &group, "--topic", &topic, "--to-earliest", "--execute"]);
    let behind = wait_lag_equal(&h, &group, &topic, &relay.log_text());
    assert!(behind >= 30, "30 records (and their transaction markers) to read, reported {behind}");

    // It catches up: lag 0. New events: the lag grows again by at least their number.
    consumer_groups(&["--reset-offsets", "--group", &group, "--topic", &topic, "--to-latest", "--execute"]);
    assert_eq!(wait_lag_equal(&h, &group, &topic, &relay.log_text()), 0);
    h.insert_rows(&mut c, "order", 10).await;
    h.wait_for_records_of(Some(&relay), std::slice::from_ref(&topic), 40, Duration::from_secs(30));
    let again = wait_lag_equal(&h, &group, &topic, &relay.log_text());
    assert!(again >= 10, "{again}");

    // `status` reads the same from the services: checkpoint, slot, leader, this group's lag.
    let out = h.command().args(["status", "--json"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let status: serde_json::Value = serde_json::from_str(&text).unwrap();
    let end_lsn = status["checkpoint"]["end_lsn"].as_str().unwrap_or_else(|| panic!("{text}"));
    assert!(status["checkpoint"]["age_seconds"].as_f64().unwrap() < 60.0, "{text}");
    assert_eq!(status["slot"]["exists"], true, "{text}");
    assert_eq!(status["slot"]["active"], true, "{text}");
    assert_eq!(status["slot"]["wal_status"], "reserved", "{text}");
    // Both positions parse (they are read at slightly different moments, so a heartbeat may move one in between).
    let confirmed = status["slot"]["confirmed_flush_lsn"].as_str().unwrap();
    for position in [confirmed, end_lsn] {
        assert!(outbox_relay::pg::lsn::Lsn::from_str(position).is_ok(), "{text}");
    }
    assert_eq!(status["leader"]["application_name"], "outbox-relay lease", "{text}");
    let lags = status["consumer_lag"].as_array().unwrap();
    let mine = lags.iter().find(|l| l["group"] == group.as_str()).unwrap_or_else(|| panic!("{text}"));
    assert_eq!(mine["topic"], topic.as_str());
    assert_eq!(mine["lag"].as_i64(), Some(again), "{text}");
    let human = h.command().arg("status").output().unwrap();
    assert!(
        String::from_utf8_lossy(&human.stdout).contains(&format!("consumers   {group} on {topic}: {again} behind"))
    );
    relay.stop();
}
