//! Test harness for the whole relay: a database with an outbox table, a configuration file for it, the real
//! `outbox-relay` binary as a child process (so tests can SIGKILL it), and a `read_committed` Kafka reader that
//! decodes values through the registry.
//!
//! Include after `services.rs`: `#[path = "common/relay.rs"] mod relay;`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::services::{RelayToml, Services, TestDb, unique_name};

/// The outbox table every harness database has (Debezium's column names), plus an unrelated table.
pub const SCHEMA: &str =
    concat!(include_str!("../../config/outbox-table.sql"), "CREATE TABLE other (id bigserial PRIMARY KEY, note text);");

/// One relay under test: its database, configuration and names.
pub struct Harness {
    pub services: Services,
    /// Port of the relay's `/metrics`, `/health`, `/ready` (0 when [`Options::metrics`] is off).
    pub metrics_port: u16,
    pub connector: String,
    pub topic_prefix: String,
    pub checkpoint_topic: String,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    // Last: dropped after the children are gone.
    pub db: TestDb,
}

/// Knobs for the generated configuration.
#[derive(Clone, Debug)]
pub struct Options {
    pub heartbeat_interval_ms: u64,
    pub max_batch_ms: u64,
    pub max_batch_events: u64,
    pub extra_postgres: String,
    /// Replaces the default `[[outbox.tables]]` block (public.outbox routed to `<prefix>.<aggregatetype>`); the text
    /// `{prefix}` in it becomes the harness's unique topic prefix.
    pub outbox_toml: Option<String>,
    /// Query parameters appended to the PostgreSQL URL (`options=...`).
    pub url_params: String,
    pub extra_toml: String,
    /// Serve `/metrics`, `/health` and `/ready` on a free port (with this `unhealthy_after_ms`).
    pub metrics: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            heartbeat_interval_ms: 10_000,
            max_batch_ms: 50,
            max_batch_events: 10_000,
            extra_postgres: String::new(),
            outbox_toml: None,
            url_params: String::new(),
            extra_toml: String::new(),
            metrics: None,
        }
    }
}

impl Harness {
    /// A fresh database with [`SCHEMA`] and a configuration for a uniquely named connector.
    pub async fn new(prefix: &str, options: Options) -> Harness {
        Harness::new_on(crate::services::services(), prefix, options).await
    }

    /// Like [`Harness::new`] on the PostgreSQL of `services.pg_url`.
    pub async fn new_on(services: Services, prefix: &str, options: Options) -> Harness {
        let db = TestDb::create(&services, prefix).await;
        db.execute(SCHEMA).await;
        let connector = unique_name(prefix);
        let topic_prefix = format!("t{}", connector.replace('_', "-"));
        let checkpoint_topic = format!("{topic_prefix}.checkpoints");
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("relay.toml");
        let metrics_port = if options.metrics.is_some() { crate::services::closed_port() } else { 0 };
        let h = Harness { services, metrics_port, connector, topic_prefix, checkpoint_topic, dir, config_path, db };
        std::fs::write(&h.config_path, h.config_toml(&options)).unwrap();
        h
    }

    /// The configuration file's text.
    pub fn config_toml(&self, o: &Options) -> String {
        let url =
            if o.url_params.is_empty() { self.db.url.clone() } else { format!("{}&{}", self.db.url, o.url_params) };
        let outbox = o.outbox_toml.as_ref().map(|t| t.replace("{prefix}", &self.topic_prefix)).unwrap_or_else(|| {
            format!(
                "[[outbox.tables]]\ntable = \"public.outbox\"\nroute_topic_replacement = \"{}.${{routedByValue}}\"\n",
                self.topic_prefix
            )
        });
        // An empty address turns the endpoint off (tests run side by side).
        let listen = if self.metrics_port == 0 { String::new() } else { format!("127.0.0.1:{}", self.metrics_port) };
        let mut metrics = format!("listen = \"{listen}\"\n");
        if let Some(ms) = o.metrics {
            metrics.push_str(&format!("unhealthy_after_ms = {ms}\n"));
        }
        RelayToml {
            connector: self.connector.clone(),
            pg_url: url,
            postgres: format!(
                "heartbeat_interval_ms = {}\nstatus_interval_ms = 1000\nreconnect_backoff_initial_ms = 100\n\
                 reconnect_backoff_max_ms = 1000\n{}",
                o.heartbeat_interval_ms, o.extra_postgres
            ),
            outbox,
            kafka_bootstrap: self.services.kafka_bootstrap.clone(),
            checkpoint_topic: self.checkpoint_topic.clone(),
            kafka: format!(
                "max_batch_ms = {}\nmax_batch_events = {}\ntransaction_timeout_ms = 60000\n",
                o.max_batch_ms, o.max_batch_events
            ),
            kafka_properties: Vec::new(),
            schema_registry_url: self.services.schema_registry_url.clone(),
            metrics,
            extra: o.extra_toml.clone(),
        }
        .render()
    }

    /// Rewrites the configuration file.
    pub fn rewrite_config(&self, f: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(&self.config_path).unwrap();
        std::fs::write(&self.config_path, f(text)).unwrap();
    }

    /// `GET path` on the relay's metrics endpoint: the status code, `None` when nothing answers.
    pub fn http_status(&self, path: &str) -> Option<u16> {
        self.http_get(path).map(|(status, _)| status)
    }

    /// `GET path` on the relay's metrics endpoint: status code and body.
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        assert!(self.metrics_port != 0, "Options::metrics is off");
        http_get(self.metrics_port, path)
    }

    /// The value of one series from `/metrics`: a metric without labels (`outbox_relay_ready`) or a series with
    /// its labels as the relay prints them (`outbox_relay_slot_wal_status{status="reserved"}`).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.http_get("/metrics")?;
        body.lines().find_map(|l| l.strip_prefix(&format!("{name} ")).and_then(|v| v.trim().parse().ok()))
    }

    /// The server's WAL insert position as a number (what the slot must reach to have relayed everything).
    pub async fn wal_insert_lsn(&self) -> u64 {
        let c = self.db.client().await;
        let row = c.query_one("SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint", &[]).await.unwrap();
        row.get::<_, i64>(0) as u64
    }

    /// Waits until the slot's confirmed position reaches `lsn`, or panics after `timeout` showing `relay`'s log.
    pub async fn wait_confirmed(&self, relay: &RelayProcess, lsn: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let confirmed = self.confirmed_flush().await;
            if confirmed >= lsn {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "slot at {confirmed:#x} did not reach {lsn:#x} within {timeout:?}; relay log:\n{}",
                relay.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The topic events of `aggregate_type` go to.
    pub fn topic(&self, aggregate_type: &str) -> String {
        format!("{}.{aggregate_type}", self.topic_prefix)
    }

    /// The relay binary with this harness's `--config` and nothing from the environment that would override it.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_outbox-relay"));
        cmd.arg("--config").arg(&self.config_path);
        // .infra/env exports the OUTBOX_RELAY_* overrides; they would point the relay at another database.
        for (k, _) in std::env::vars() {
            if k.starts_with("OUTBOX_RELAY_") {
                cmd.env_remove(k);
            }
        }
        cmd
    }

    /// Starts the relay binary with extra arguments after `run` and extra environment variables.
    pub fn spawn(&self, args: &[&str], env: &[(&str, &str)]) -> RelayProcess {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = self.dir.path().join(format!("relay-{n}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = self.command();
        cmd.arg("--log-format").arg("text").arg("run").args(args);
        cmd.env("RUST_LOG", "info,outbox_relay=debug");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::from(file));
        let child = cmd.spawn().expect("spawn outbox-relay");
        RelayProcess { child: Some(child), log }
    }

    /// Inserts `n` single-row transactions of `aggregate_type`; returns the ids.
    pub async fn insert_rows(&self, c: &mut tokio_postgres::Client, aggregate_type: &str, n: usize) -> Vec<String> {
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            ids.extend(self.insert_txn(c, &[(aggregate_type, "k", "T", format!(r#"{{"n": {i}}}"#))]).await);
        }
        ids
    }

    /// Starts the relay, relays `n` single-row transactions of `order` (waiting until Kafka has `expect_total`
    /// records of it), and stops it with SIGTERM, which must exit 0. Returns the new rows' ids.
    pub async fn deliver_then_stop(&self, n: usize, expect_total: usize) -> Vec<String> {
        let mut relay = self.spawn(&[], &[]);
        relay.wait_log("replication started", Duration::from_secs(60));
        let mut c = self.db.client().await;
        let ids = self.insert_rows(&mut c, "order", n).await;
        self.wait_for_records_of(Some(&relay), &[self.topic("order")], expect_total, Duration::from_secs(30));
        relay.stop();
        ids
    }

    /// Inserts one transaction of outbox rows `(aggregatetype, aggregateid, type, payload)`; returns their ids.
    pub async fn insert_txn(
        &self,
        client: &mut tokio_postgres::Client,
        rows: &[(&str, &str, &str, String)],
    ) -> Vec<String> {
        let tx = client.transaction().await.unwrap();
        let mut ids = Vec::with_capacity(rows.len());
        for (at, aid, ty, payload) in rows {
            let row = tx
                .query_one(
                    "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ($1, $2, $3, $4::text::jsonb) RETURNING id::text",
                    &[at, aid, ty, payload],
                )
                .await
                .unwrap();
            ids.push(row.get(0));
        }
        tx.commit().await.unwrap();
        ids
    }

    /// The slot's `confirmed_flush_lsn` as a number (0 when missing).
    pub async fn confirmed_flush(&self) -> u64 {
        let c = self.db.client().await;
        let row = c
            .query_opt(
                "SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot()],
            )
            .await
            .unwrap();
        row.and_then(|r| r.get::<_, Option<i64>>(0)).map_or(0, |v| v as u64)
    }

    /// The slot name the configuration derives from the connector name.
    pub fn slot(&self) -> String {
        outbox_relay::config::derive_pg_identifier(&self.connector)
    }

    /// Every committed record of `topics`, read with `read_committed` to the end.
    pub fn read_committed(&self, topics: &[String]) -> Vec<Record> {
        read_committed(&self.services.kafka_bootstrap, topics)
    }

    /// Decodes Avro values through the registry.
    pub async fn decode_values(&self, records: &[Record]) -> Vec<serde_json::Value> {
        let settings = outbox_relay::avro::RegistrySettings::new(&self.services.schema_registry_url);
        let decoder = outbox_relay::avro::RegistryDecoder::new(&settings).unwrap();
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            out.push(decoder.decode(&r.value).await.unwrap().json);
        }
        out
    }

    /// Reads `want` records of `topic` with Confluent's own Python client, as users run it: a `read_committed`
    /// consumer of confluent-kafka with its `AvroDeserializer` against the registry. One JSON object per record:
    /// `key` (UTF-8), `headers`, `value` (decoded; `null` for a tombstone; bytes as `{"$bytes": hex}`; decimals,
    /// timestamps and UUIDs as their Python `str`), `schema_id`.
    pub fn python_avro_read(&self, topic: &str, want: usize) -> Vec<serde_json::Value> {
        const SCRIPT: &str = r#"
import faulthandler, json, sys, time
# Bounded: after 60 s every thread's stack goes to stderr and the process exits.
faulthandler.dump_traceback_later(60, exit=True)
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import SerializationContext, MessageField
bootstrap, registry, topic, want = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
# TopicNameStrategy named explicitly, as against any registry that is not Confluent's: the default of confluent-kafka
# 2.16 first asks GET /associations, which Apicurio's ccompat API does not serve; about one run in five that request
# got no answer at all (the client hung reading the response headers). The deserializer takes the writer schema by
# the id in each value whatever the strategy; the strategy only matters for use.latest.version, not used here.
deserialize = AvroDeserializer(SchemaRegistryClient({"url": registry, "timeout": 10}),
                               conf={"subject.name.strategy.type": "TOPIC"})
consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "pyavro-" + topic, "isolation.level": "read_committed",
                     "enable.auto.commit": False, "auto.offset.reset": "earliest"})
partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
def plain(v):
    if isinstance(v, bytes):
        return {"$bytes": v.hex()}
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v
out, deadline = [], time.time() + 30
while len(out) < want and time.time() < deadline:
    m = consumer.poll(0.5)
    if m is None:
        continue
    if m.error():
        sys.exit("consumer: %s" % m.error())
    raw = m.value()
    value = None if raw is None else plain(deserialize(raw, SerializationContext(topic, MessageField.VALUE)))
    out.append({"key": m.key().decode(), "headers": {k: v.decode() for k, v in (m.headers() or [])},
                "value": value, "schema_id": None if raw is None else int.from_bytes(raw[1:5], "big")})
consumer.close()
print(json.dumps(out, default=str))
"#;
        let output = Command::new("python3")
            .args(["-c", SCRIPT, &self.services.kafka_bootstrap, &self.services.schema_registry_url, topic])
            .arg(want.to_string())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}\n(confluent-kafka missing? bash scripts/prerequisites.sh --tests installs it)",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// Waits until `read_committed(topics)` holds at least `n` records, or panics after `timeout`.
    pub fn wait_for_records(&self, topics: &[String], n: usize, timeout: Duration) -> Vec<Record> {
        self.wait_for_records_of(None, topics, n, timeout)
    }

    /// Like [`Harness::wait_for_records`], showing `relay`'s log on failure.
    pub fn wait_for_records_of(
        &self,
        relay: Option<&RelayProcess>,
        topics: &[String],
        n: usize,
        timeout: Duration,
    ) -> Vec<Record> {
        let deadline = Instant::now() + timeout;
        loop {
            let records = self.read_committed(topics);
            if records.len() >= n {
                return records;
            }
            if Instant::now() > deadline {
                let log = relay.map(RelayProcess::log_text).unwrap_or_default();
                panic!("waited {timeout:?} for {n} records in {topics:?}, have {}; relay log:\n{log}", records.len());
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// `GET path` on 127.0.0.1:`port`: the status code and body, `None` when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    // `write!` sends the request in several segments (one write per piece), as some clients do: the endpoint must
    // answer the whole head, not its first segment (it once did, and under load that read as "no answer").
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}

/// A Kafka record as read back.
#[derive(Clone, Debug)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub headers: BTreeMap<String, Vec<u8>>,
}

impl Record {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// Reads every committed record of `topics` (missing topics count as empty), each to its last stable offset.
pub fn read_committed(bootstrap: &str, topics: &[String]) -> Vec<Record> {
    let mut out = Vec::new();
    for topic in topics {
        // A topic the relay just auto-created may briefly have no leader: retry such metadata errors.
        let mut attempt = 0;
        loop {
            let mut part = Vec::new();
            match read_topic(bootstrap, topic, &mut part) {
                Ok(()) => {
                    out.extend(part);
                    break;
                }
                Err(e) if attempt < 20 => {
                    attempt += 1;
                    eprintln!("reading {topic}: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => panic!("reading {topic}: {e}"),
            }
        }
    }
    out.sort_by(|a, b| (&a.topic, a.partition, a.offset).cmp(&(&b.topic, b.partition, b.offset)));
    out
}

fn read_topic(bootstrap: &str, topic: &str, out: &mut Vec<Record>) -> Result<(), KafkaError> {
    // One consumer per topic: partition EOF events name only the partition.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_name("verify"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("allow.auto.create.topics", "false")
        .create()
        .unwrap();
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    let mut pending = std::collections::HashSet::new();
    for t in md.topics() {
        if t.error().is_some() {
            continue;
        }
        for p in t.partitions() {
            let (lo, hi) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
            if hi > lo {
                tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
                pending.insert(p.id());
            }
        }
    }
    if pending.is_empty() {
        return Ok(());
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pending.is_empty() {
        assert!(Instant::now() < deadline, "reading {topic} to the end took over 60 s");
        match consumer.poll(Duration::from_millis(500)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                pending.remove(&p);
            }
            Some(Err(e)) => return Err(e),
            Some(Ok(m)) => {
                let mut headers = BTreeMap::new();
                if let Some(h) = m.headers() {
                    for hd in h.iter() {
                        headers.insert(hd.key.to_owned(), hd.value.unwrap_or_default().to_vec());
                    }
                }
                out.push(Record {
                    topic: m.topic().to_owned(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().unwrap_or_default().to_vec(),
                    value: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
        }
    }
    Ok(())
}

/// The relay as a child process; killed on drop.
pub struct RelayProcess {
    child: Option<Child>,
    pub log: PathBuf,
}

impl RelayProcess {
    /// SIGKILL: no cleanup of any kind, like a crash or an OOM kill.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM.
    pub fn terminate(&self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        }
    }

    /// SIGTERM, then waits for a clean exit (status 0) within the 30 s drain; panics otherwise.
    pub fn stop(&mut self) {
        self.terminate();
        let status = self.wait_exit(Duration::from_secs(40)).expect("exits within the grace period");
        assert!(status.success(), "SIGTERM must exit 0: {status:?}\n{}", self.log_text());
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let c = self.child.as_mut()?;
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                self.child = None;
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident memory of the process in KiB (`VmRSS`), while it runs.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// `true` while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log_text().contains(needle) {
            if !self.is_running() {
                panic!("relay exited while waiting for {needle:?}; log:\n{}", self.log_text());
            }
            if Instant::now() > deadline {
                panic!("relay did not log {needle:?} within {timeout:?}; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
