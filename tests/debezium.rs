//! Migration from Debezium, against a real Debezium 3.6 PostgreSQL connector with the Outbox Event Router and
//! Confluent's AvroConverter on a Kafka Connect worker (`tests/infra/connect.sh`, exactly-once source support on):
//! the connector relays, is stopped mid-stream, `outbox-relay import-debezium` turns its configuration into the
//! relay's, and the relay continues on Debezium's slot from Debezium's committed offset. A `read_committed` reader
//! then sees every outbox row exactly once, each key on the partition Debezium used, every value readable by
//! Confluent's Python deserializer under the subject Debezium registered.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "common/services.rs"]
mod services;

#[path = "common/relay.rs"]
mod relay;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use relay::{Harness, Options};

const STARTED: &str = "replication started";

/// The Kafka Connect worker, stopped again on drop when this test started it (an idle JVM of half a GiB would
/// weigh on the tests after it).
struct Worker(services::ConnectWorker);

impl Drop for Worker {
    fn drop(&mut self) {
        if self.0.started_here {
            let _ = services::connect_sh("stop");
        }
    }
}

/// One call of Kafka Connect's REST API: (status, body).
fn rest(method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    services::http_call(method, url, body, "application/json")
}

/// Polls `f` every 300 ms until it is true, for at most `limit`.
fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debezium_connector_hands_over_mid_stream_and_every_row_arrives_exactly_once() {
    let worker = Worker(services::connect_worker().unwrap());
    let (connect, offsets_topic) = (worker.0.url.clone(), worker.0.offsets_topic.clone());
    let h = Harness::new("dbzho", Options::default()).await;
    let tag = services::unique_name("dbz").to_lowercase();
    let (slot, publication, connector) = (format!("{tag}_slot"), format!("{tag}_pub"), tag.replace('_', "-"));
    h.db.execute(&format!("CREATE PUBLICATION {publication} FOR TABLE public.outbox")).await;
    let mut settings = services::debezium_connector_config(
        &h.db.url,
        &tag,
        &slot,
        &publication,
        &format!("{}.${{routedByValue}}", h.topic_prefix),
        &h.services.schema_registry_url,
    );
    // Small batches: Connect commits an exactly-once transaction (and an offset) per batch, so the stop below lands
    // inside the large PostgreSQL transaction. Without extended headers Debezium writes only `id`, as the relay will.
    for (key, value) in [
        ("max.batch.size", "64"),
        ("extended.headers.enabled", "false"),
        ("topic.creation.default.partitions", "3"),
        ("topic.creation.default.replication.factor", "1"),
    ] {
        settings[key] = value.into();
    }
    let config = serde_json::json!({ "name": connector, "config": settings });
    let status_url = format!("{connect}/connectors/{connector}/status");
    let (code, body) =
        rest("PUT", &format!("{connect}/connectors/{connector}/config"), Some(&config["config"].to_string()));
    assert!(code == 201 || code == 200, "{code} {body}");
    let slot_active = || async {
        h.db.client()
            .await
            .query_opt("SELECT active FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
            .await
            .unwrap()
            .is_some_and(|r| r.get::<_, bool>(0))
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, status) = rest("GET", &status_url, None);
        if status.contains(r#""tasks":[{"id":0,"state":"RUNNING""#) && slot_active().await {
            break;
        }
        assert!(Instant::now() < deadline, "Debezium's task did not start streaming: {status}");
        std::thread::sleep(Duration::from_millis(500));
    }

    // A: single-row transactions, all delivered by Debezium. B: one 100,000-row transaction (some 1,500 Kafka transactions for Debezium), during which Debezium is
    // stopped (its exactly-once batches commit offsets inside a PostgreSQL transaction). C: written while stopped.
    let topic = h.topic("order");
    let c = h.db.client().await;
    let insert = |from: u32, to: u32| {
        format!(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) SELECT 'order', 'o-' || (i % 7), \
             'OrderCreated', jsonb_build_object('n', i) FROM generate_series({from}, {to}) i"
        )
    };
    for i in 1..=20 {
        c.batch_execute(&insert(i, i)).await.unwrap();
    }
    h.wait_for_records(std::slice::from_ref(&topic), 20, Duration::from_secs(60));
    c.batch_execute(&insert(21, 100_020)).await.unwrap();
    // Stop while Debezium works through B: Debezium's offset then points inside it. The topic's end offsets tell
    // progress at once (reading the records back would take longer than Debezium needs for all of B).
    let probe: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &h.services.kafka_bootstrap).create().unwrap();
    let written = |probe: &BaseConsumer| -> i64 {
        (0..3)
            .filter_map(|p| probe.fetch_watermarks(&topic, p, Duration::from_secs(5)).ok())
            .map(|(_, high)| high)
            .sum()
    };
    wait_until(Duration::from_secs(60), "Debezium to be well into the large transaction", || written(&probe) > 2_000);
    let (code, body) = rest("PUT", &format!("{connect}/connectors/{connector}/stop"), None);
    assert_eq!(code, 204, "{body}");
    wait_until(Duration::from_secs(60), "Debezium's task to stop", || {
        rest("GET", &status_url, None).1.contains(r#""tasks":[]"#)
    });
    for i in 100_021..=100_030 {
        c.batch_execute(&insert(i, i)).await.unwrap();
    }
    let by_debezium = h.read_committed(std::slice::from_ref(&topic)).len();

    // The migration as README "Migrating from Debezium" has it: import, fill in what the import asks for, run.
    let connector_file = h.dir.path().join("connector.json");
    std::fs::write(&connector_file, config.to_string()).unwrap();
    let imported = h.command().arg("import-debezium").arg(&connector_file).output().unwrap();
    assert!(imported.status.success(), "{}", String::from_utf8_lossy(&imported.stderr));
    let mut toml: toml::Table = toml::from_str(&String::from_utf8(imported.stdout).unwrap()).unwrap();
    let harness: toml::Table = toml::from_str(&std::fs::read_to_string(&h.config_path).unwrap()).unwrap();
    toml["postgres"]["url"] = toml::Value::String(h.db.url.clone()); // the password the import left out
    toml["kafka"] = harness["kafka"].clone(); // brokers and this test's checkpoint topic
    let no_metrics = toml::toml! { listen = "" };
    toml.insert("metrics".into(), harness.get("metrics").cloned().unwrap_or(toml::Value::Table(no_metrics)));
    toml["debezium"]["offsets_topic"] = toml::Value::String(offsets_topic);
    toml["connector_name"] = harness["connector_name"].clone();
    std::fs::write(&h.config_path, toml::to_string(&toml).unwrap()).unwrap();
    assert_eq!(toml["postgres"]["slot"].as_str(), Some(slot.as_str()), "the relay continues on Debezium's slot");

    let mut relay = h.spawn(&[], &[]);
    relay.wait_log(STARTED, Duration::from_secs(60));
    h.wait_for_records_of(Some(&relay), std::slice::from_ref(&topic), 100_030, Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(1));
    let records = h.read_committed(std::slice::from_ref(&topic));
    let log = relay.log_text();
    assert!(log.contains("continuing from Debezium's offset"), "{log}");

    // Exactly once: every row id once, whoever wrote it.
    let ids: Vec<String> =
        c.query("SELECT id::text FROM outbox", &[]).await.unwrap().iter().map(|r| r.get::<_, String>(0)).collect();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in &records {
        *seen.entry(r.header("id").expect("header id")).or_default() += 1;
    }
    let duplicates: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    let missing: Vec<_> = ids.iter().filter(|id| !seen.contains_key(*id)).collect();
    assert!(
        duplicates.is_empty() && missing.is_empty() && records.len() == 100_030,
        "{} records, Debezium wrote {by_debezium}; duplicates {duplicates:?}; missing {} (first {:?})\n{log}",
        records.len(),
        missing.len(),
        missing.first()
    );
    assert!(
        by_debezium > 20 && by_debezium < 100_020,
        "Debezium stopped inside the large transaction: it wrote {by_debezium} of its first 100,020 rows"
    );
    // The header layout Debezium's consumers know: only `id`.
    assert!(records.iter().all(|r| r.headers.keys().collect::<Vec<_>>() == ["id"]), "{:?}", records[0].headers);
    // Per-key order survives: each aggregate on one partition, whoever wrote it.
    let mut partitions: BTreeMap<Vec<u8>, HashSet<i32>> = BTreeMap::new();
    for r in &records {
        partitions.entry(r.key.clone()).or_default().insert(r.partition);
    }
    assert!(partitions.values().all(|p| p.len() == 1), "{partitions:?}");
    // Debezium's consumers read the relay's values as they read Debezium's: one schema id for all of them.
    let read = h.python_avro_read(&topic, 100_030);
    let schema_ids: HashSet<_> = read.iter().map(|r| r["schema_id"].clone()).collect();
    assert_eq!(schema_ids.len(), 1, "the relay wrote under Debezium's schema: {schema_ids:?}");
    let mut ns: Vec<i64> = read
        .iter()
        .map(|r| {
            serde_json::from_str::<serde_json::Value>(r["value"].as_str().unwrap()).unwrap()["n"].as_i64().unwrap()
        })
        .collect();
    ns.sort_unstable();
    assert_eq!(ns, (1..=100_030).collect::<Vec<_>>());

    relay.stop();
    let _ = rest("DELETE", &format!("{connect}/connectors/{connector}"), None);
}
