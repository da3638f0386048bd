//! End to end: the release `outbox-relay` binary against the real PostgreSQL, Kafka broker and schema registry.
//!
//! `cargo bench --bench e2e -- [--only throughput,latency,bigtxn,startup] [--shape single|bulk|both] [--rows N]
//!  [--repeat R] [--rate R] [--seconds S] [--conns C] [--big-rows N] [--kafka key=value]...
//!  [--prop librdkafka.key=value]... [--pg key=value]... [--value-mode envelope|payload|registered] [--debezium]
//!  [--perf DIR] [--stages] [--keep-logs] [--quick]`
//!
//! - `throughput` (single-row and bulk shape): a fresh database and connector; the relay is started once (it
//!   creates publication, slot and genesis checkpoint) and stopped with SIGTERM; a second slot for
//!   `pg_recvlogical` is created at that point; N rows are written (N single-row transactions, or one N-row
//!   transaction); in alternating order `pg_recvlogical` reads its slot to the end position (its rate on the same
//!   WAL), and the relay is started and timed until a `read_committed` consumer has seen all N events and until the
//!   slot's `confirmed_flush_lsn` has passed the last transaction. Median of `--repeat` runs. Targets (issue 11),
//!   the relay from its process start against pg_recvlogical from its own: >= 85 % (single-row) and >= 90 % (bulk);
//!   and CPU per event <= pg_recvlogical's per row (median of each run's pair).
//! - `latency`: with the relay running, a paced generator (several connections, one row per transaction,
//!   `synchronous_commit = on`) offers R events/s for S seconds; a `read_committed` consumer computes receive time
//!   minus commit time per event from the envelope's `timestamp` (commit time, microseconds). p50/p99/max; target p99 <=
//!   25 ms (issue 11). The relay's VmRSS is sampled every 100 ms meanwhile (target <= 64 MiB steady). With
//!   `--stages` a second, `read_uncommitted` consumer splits each event's latency where the broker appended it.
//!
//! The latency and throughput parts also report who used the cores meanwhile (`BoxLoad`): each process group's share
//! of a core and how long its threads waited for one (`/proc/<pid>/task/*/schedstat`), the machine's busy share and
//! its CPU pressure (`/proc/pressure/cpu`): the measured form of "the box is saturated".
//! - `startup`: with warm services (connector, slot, topics and registry subject made by a first run), one row is
//!   written while no relay runs, then the relay process is started and timed until it logs "replication started"
//!   and until a `read_committed` consumer has the row; stopped with SIGTERM; `--repeat` runs (at least 5),
//!   medians. Target: process start to first delivered event <= 300 ms. This also bounds how fast a standby that
//!   takes over, or a relay restarted after a crash, delivers again.
//! - `bigtxn`: a fresh relay relays one transaction of `--big-rows` rows (default 1M) written while it runs; peak
//!   VmRSS / VmHWM (target <= 64 MiB, issue 11), max over `--repeat` runs.
//!
//! `--debezium` adds a third reader to `throughput`: Debezium 3.6 (PostgreSQL connector, Outbox Event Router,
//! Confluent's AvroConverter, `exactly.once.support = required`) on the warm Kafka Connect worker of
//! `tests/infra/connect.sh` (started if needed), on a slot of its own made before the rows were written, into a topic
//! of its own; timed from the connector's creation until a `read_committed` consumer has all N records, with the
//! worker's CPU (user + system of the JVM over that time) and its RSS. To `latency` it adds Debezium at the same
//! offered rate, after the relay's run: its own slot and topic, the connector warmed up first, and per event the
//! consumer's receive time minus the record timestamp, which the Outbox Event Router sets from a column added for
//! it, the insert's clock time as a UTC `timestamp` (`table.field.event.timestamp`, milliseconds; a `timestamptz`
//! reaches it as a string; the insert precedes the commit of its one-row transaction by the commit's own time).
//!
//! `--value-mode` sets `schema_registry.value_mode` (`registered` with `benches/schemas/`, the schema of the rows'
//! payload, subjects by record name); `latency` needs the envelope (it reads the commit time from it).
//!
//! `--kafka`, `--prop` and `--pg` add keys to the relay's `[kafka]`, `[kafka.properties]` and `[postgres]` tables
//! (`--kafka`/`--pg` values are TOML, `--prop` values strings). `--perf DIR` records `perf record` of the relay's
//! measured phase. Environment: `OUTBOX_RELAY_BIN` (relay binary, default `target/release/outbox-relay`: build it
//! first with `cargo build --release`), `BENCH_RELAY_LOG` (the relay's `RUST_LOG`), `BENCH_FETCH_WAIT_MS` (the
//! consumer's `fetch.wait.max.ms`, default 100), `BENCH_RESULTS` (append result rows to this TSV file). Needs
//! `bash tests/infra/up.sh`. Everything it creates is named `obbench_*` and removed. Exit status 3: a target missed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use common::{Args, BenchDb, Env, Generated, record, verdict};
use outbox_relay::pg::lsn::Lsn;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

const PARTITIONS: i32 = 3;

#[derive(Clone, Debug)]
struct Opts {
    rows: u64,
    big_rows: u64,
    rate: f64,
    seconds: f64,
    conns: usize,
    shapes: Vec<bool>,
    parts: Vec<String>,
    kafka: Vec<(String, String)>,
    props: Vec<(String, String)>,
    pg: Vec<(String, String)>,
    /// Lines added to `[schema_registry]`, from `--value-mode`.
    schema_registry: String,
    /// `--debezium`: Debezium on Kafka Connect reads the same WAL as a third reader of the throughput part, and
    /// runs at the relay's offered rate after the latency part.
    debezium: bool,
    bin: PathBuf,
    keep_logs: bool,
    repeat: usize,
    /// Record a `perf` profile of the relay's measured phase into this directory.
    perf: Option<PathBuf>,
    /// `--stages`: the latency part also reads `read_uncommitted`, to split each event's latency at the moment the
    /// broker appended it.
    stages: bool,
}

fn main() -> ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    match rt.block_on(run()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(3),
        Err(e) => {
            eprintln!("e2e benchmark failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn key_values(args: &Args, name: &str) -> Result<Vec<(String, String)>> {
    args.all(name)
        .into_iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| anyhow!("--{name} {kv:?}: expected key=value"))
        })
        .collect()
}

async fn run() -> Result<bool> {
    let args = Args::parse(&[
        "only",
        "rows",
        "big-rows",
        "rate",
        "seconds",
        "conns",
        "shape",
        "kafka",
        "prop",
        "pg",
        "perf",
        "repeat",
        "value-mode",
    ])?;
    args.unknown_flags(&["quick", "keep-logs", "help", "debezium", "stages"])?;
    if args.flag("help") {
        println!("see the top of benches/e2e.rs and benches/README.md");
        return Ok(true);
    }
    let quick = args.flag("quick");
    let bin = std::env::var_os("OUTBOX_RELAY_BIN").map(PathBuf::from).unwrap_or_else(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| common::repo_root().join("target"));
        target.join("release/outbox-relay")
    });
    if !bin.is_file() {
        bail!("{} not found: run `cargo build --release` first (or set OUTBOX_RELAY_BIN)", bin.display());
    }
    let opts = Opts {
        rows: args.num("rows", if quick { 20_000 } else { 200_000 })?,
        big_rows: args.num("big-rows", if quick { 200_000 } else { 1_000_000 })?,
        rate: args.num("rate", 5000.0)?,
        seconds: args.num("seconds", if quick { 10.0 } else { 40.0 })?,
        conns: args.num("conns", 4)?,
        shapes: match args.value("shape").unwrap_or("both") {
            "single" => vec![true],
            "bulk" => vec![false],
            "both" => vec![true, false],
            s => bail!("--shape {s:?}: single, bulk or both"),
        },
        parts: args
            .value("only")
            .unwrap_or("throughput,latency,bigtxn,startup")
            .split(',')
            .map(|s| s.trim().to_owned())
            .collect(),
        kafka: key_values(&args, "kafka")?,
        props: key_values(&args, "prop")?,
        pg: key_values(&args, "pg")?,
        schema_registry: match args.value("value-mode").unwrap_or("envelope") {
            "envelope" => String::new(),
            "payload" => "value_mode = \"payload\"\n".to_owned(),
            "registered" => format!(
                "value_mode = \"registered\"\nsubject_name_strategy = \"record\"\nschemas_dir = {:?}\n",
                common::repo_root().join("benches/schemas").display().to_string()
            ),
            m => bail!("--value-mode {m:?}: envelope, payload or registered"),
        },
        debezium: args.flag("debezium"),
        bin,
        keep_logs: args.flag("keep-logs"),
        perf: args.value("perf").map(PathBuf::from),
        stages: args.flag("stages"),
        repeat: args.num("repeat", 1)?,
    };
    if opts.rows == 0 || opts.rows > 10_000_000 || opts.big_rows == 0 || opts.big_rows > 10_000_000 {
        bail!("--rows and --big-rows: 1 ..= 10000000");
    }
    if !(1..=20).contains(&opts.repeat) {
        bail!("--repeat 1..=20");
    }
    if !(1.0..=50_000.0).contains(&opts.rate)
        || !(1.0..=600.0).contains(&opts.seconds)
        || !(1..=64).contains(&opts.conns)
    {
        bail!("--rate 1..=50000, --seconds 1..=600, --conns 1..=64");
    }
    if !opts.schema_registry.is_empty() && opts.parts.iter().any(|p| p == "latency" || p == "startup") {
        bail!("--value-mode other than envelope: --only throughput and/or bigtxn (latency reads the envelope)");
    }
    for p in &opts.parts {
        if !["throughput", "latency", "bigtxn", "startup"].contains(&p.as_str()) {
            bail!("--only: throughput, latency, bigtxn, startup (comma separated), not {p:?}");
        }
    }
    let env = Env::load()?;
    common::cleanup_stale(&env).await?;
    println!("relay binary: {}", opts.bin.display());
    println!("relay settings: {}", settings_summary(&opts));
    let mut ok = true;
    if opts.parts.iter().any(|p| p == "throughput") {
        for &single in &opts.shapes {
            ok &= throughput(&env, &opts, single).await?;
        }
    }
    if opts.parts.iter().any(|p| p == "latency") {
        ok &= latency(&env, &opts).await?;
    }
    if opts.parts.iter().any(|p| p == "bigtxn") {
        ok &= bigtxn(&env, &opts).await?;
    }
    if opts.parts.iter().any(|p| p == "startup") {
        // Medians of at least 5 starts: one start is a few hundred milliseconds, and single runs vary.
        ok &= startup(&env, &opts, opts.repeat.max(5)).await?;
    }
    Ok(ok)
}

fn settings_summary(o: &Opts) -> String {
    let mut parts: Vec<String> = Vec::new();
    for (k, v) in &o.pg {
        parts.push(format!("postgres.{k}={v}"));
    }
    for (k, v) in &o.kafka {
        parts.push(format!("kafka.{k}={v}"));
    }
    for (k, v) in &o.props {
        parts.push(format!("kafka.properties.{k}={v}"));
    }
    for line in o.schema_registry.lines() {
        parts.push(format!("schema_registry.{}", line.replace(' ', "")));
    }
    if parts.is_empty() { "defaults".into() } else { parts.join(", ") }
}

// ---------------------------------------------------------------------------------------------------------------
// One connector: database, configuration, topics
// ---------------------------------------------------------------------------------------------------------------

struct Connector {
    db: BenchDb,
    name: String,
    slot: String,
    topic: String,
    checkpoint_topic: String,
    dir: tempfile::TempDir,
    config: PathBuf,
    metrics_port: u16,
    spawned: u32,
}

impl Connector {
    async fn new(env: &Env, kind: &str, opts: &Opts, extra_kafka: &[(String, String)]) -> Result<Connector> {
        let db = BenchDb::create(env, kind).await?;
        let name = db.name.clone();
        let slot = outbox_relay::config::derive_pg_identifier(&name);
        let dir = tempfile::Builder::new().prefix("obbench-").tempdir()?;
        let config = dir.path().join("relay.toml");
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let c = Connector {
            topic: format!("{name}.order"),
            checkpoint_topic: format!("{name}.checkpoints"),
            db,
            name,
            slot,
            dir,
            config,
            metrics_port,
            spawned: 0,
        };
        let mut kafka = opts.kafka.clone();
        for (k, v) in extra_kafka {
            kafka.retain(|(kk, _)| kk != k);
            kafka.push((k.clone(), v.clone()));
        }
        std::fs::write(&c.config, c.config_toml(env, opts, &kafka))?;
        c.create_topic(env).await?;
        Ok(c)
    }

    fn config_toml(&self, env: &Env, o: &Opts, kafka: &[(String, String)]) -> String {
        let lines = |pairs: &[(String, String)]| pairs.iter().map(|(k, v)| format!("{k} = {v}\n")).collect::<String>();
        common::services::RelayToml {
            connector: self.name.clone(),
            pg_url: self.db.url.clone(),
            postgres: lines(&o.pg),
            outbox: format!(
                "[[outbox.tables]]\ntable = \"public.outbox\"\nroute_topic_replacement = \"{}.${{routedByValue}}\"\n",
                self.name
            ),
            kafka_bootstrap: env.kafka_bootstrap.clone(),
            checkpoint_topic: self.checkpoint_topic.clone(),
            kafka: lines(kafka),
            kafka_properties: o.props.clone(),
            schema_registry_url: env.schema_registry_url.clone(),
            metrics: format!("listen = \"127.0.0.1:{}\"\n", self.metrics_port),
            extra: String::new(),
        }
        .render()
        .replace("[schema_registry]\n", &format!("[schema_registry]\n{}", o.schema_registry))
    }

    /// The event topic with the broker's default partition count, so that the consumer can be assigned at once.
    async fn create_topic(&self, env: &Env) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &env.kafka_bootstrap).create()?;
        let t = NewTopic::new(&self.topic, PARTITIONS, TopicReplication::Fixed(1));
        let r =
            admin.create_topics([&t], &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)))).await?;
        for x in r {
            x.map_err(|(t, e)| anyhow!("creating topic {t}: {e}"))?;
        }
        Ok(())
    }

    fn spawn(&mut self, opts: &Opts) -> Result<Relay> {
        self.spawned += 1;
        let log = self.dir.path().join(format!("relay-{}.log", self.spawned));
        let file = std::fs::File::create(&log)?;
        let mut cmd = Command::new(&opts.bin);
        cmd.arg("--config").arg(&self.config).args(["--log-format", "text", "run"]);
        for (k, _) in std::env::vars() {
            if k.starts_with("OUTBOX_RELAY_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("RUST_LOG", std::env::var("BENCH_RELAY_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file));
        let child = cmd.spawn().with_context(|| format!("starting {}", opts.bin.display()))?;
        Ok(Relay { pid: child.id(), child: Some(child), log })
    }

    async fn metrics(&self) -> Option<(u64, u64)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await.ok()?;
        let mut body = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut body)).await.ok()?.ok()?;
        let get = |name: &str| {
            body.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.trim().parse::<f64>().ok())).map(|v| v as u64)
        };
        Some((get("outbox_relay_events_total ")?, get("outbox_relay_kafka_transactions_total ")?))
    }

    async fn cleanup(&self, env: &Env, keep_logs: bool) {
        if keep_logs {
            let keep = std::env::temp_dir().join(format!("{}-logs", self.name));
            let _ = std::fs::create_dir_all(&keep);
            for n in 1..=self.spawned {
                let _ =
                    std::fs::copy(self.dir.path().join(format!("relay-{n}.log")), keep.join(format!("relay-{n}.log")));
            }
            println!("  relay logs kept in {}", keep.display());
        }
        if let Err(e) = self.db.drop_all().await {
            eprintln!("cleanup of database {}: {e:#}", self.db.name);
        }
        if let Ok(admin) = ClientConfig::new()
            .set("bootstrap.servers", &env.kafka_bootstrap)
            .create::<AdminClient<DefaultClientContext>>()
        {
            let _ = admin
                .delete_topics(
                    &[&self.topic, &self.checkpoint_topic],
                    &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
                )
                .await;
        }
        // The registry subject of the event topic (best effort; the test registry keeps it in memory).
        if let Ok(http) = reqwest::Client::builder().timeout(Duration::from_secs(5)).build() {
            let subject = format!("{}/subjects/{}-value", env.schema_registry_url.trim_end_matches('/'), self.topic);
            let _ = http.delete(&subject).send().await;
            let _ = http.delete(format!("{subject}?permanent=true")).send().await;
        }
    }
}

/// The relay child process; SIGKILLed on drop if still running.
struct Relay {
    child: Option<Child>,
    pid: u32,
    log: PathBuf,
}

impl Relay {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Waits until the log contains `needle`; returns when it was seen (5 ms polling).
    async fn wait_log(&mut self, needle: &str, timeout: Duration) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_text().contains(needle) {
                return Ok(Instant::now());
            }
            if !self.running() {
                bail!("relay exited before logging {needle:?}:\n{}", tail(&self.log_text()));
            }
            if Instant::now() > deadline {
                bail!("relay did not log {needle:?} within {timeout:?}:\n{}", tail(&self.log_text()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// SIGTERM and a bounded wait for the exit.
    async fn terminate(&mut self, timeout: Duration) -> Result<()> {
        if !self.running() {
            return Ok(());
        }
        let _ = Command::new("kill").args(["-TERM", &self.pid.to_string()]).status();
        let deadline = Instant::now() + timeout;
        while self.running() {
            if Instant::now() > deadline {
                self.kill();
                bail!("relay did not stop within {timeout:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.child = None;
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn cpu(&self) -> f64 {
        common::proc_cpu_secs(&self.pid.to_string()).unwrap_or(f64::NAN)
    }

    fn cpu_split(&self) -> (f64, f64) {
        common::proc_cpu_user_sys(&self.pid.to_string()).unwrap_or((f64::NAN, f64::NAN))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill();
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// `perf record` attached to the relay (`--perf DIR`); stopped with SIGINT.
struct Perf(Option<Child>);

impl Perf {
    fn start(opts: &Opts, pid: u32, name: &str) -> Perf {
        let Some(dir) = &opts.perf else { return Perf(None) };
        let _ = std::fs::create_dir_all(dir);
        let out = dir.join(format!("{name}.perf.data"));
        let child = Command::new("perf")
            .args(["record", "-F", "499", "--call-graph", "dwarf,16384", "-p", &pid.to_string(), "-o"])
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match child {
            Ok(c) => {
                println!("  perf recording into {}", out.display());
                std::thread::sleep(Duration::from_millis(300));
                Perf(Some(c))
            }
            Err(e) => {
                eprintln!("perf not started: {e}");
                Perf(None)
            }
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = Command::new("kill").args(["-INT", &c.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(60);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Perf {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Samplers
// ---------------------------------------------------------------------------------------------------------------

/// VmRSS of a process every 100 ms.
struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<(Instant, u64)>>>,
    pid: u32,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut v = Vec::new();
            let limit = Instant::now() + Duration::from_secs(3 * 3600);
            while !flag.load(Ordering::Relaxed) && Instant::now() < limit {
                match common::proc_status_kb(pid, "VmRSS") {
                    Some(kb) => v.push((Instant::now(), kb)),
                    None => break,
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            v
        });
        RssSampler { stop, handle: Some(handle), pid }
    }

    fn hwm_kb(&self) -> Option<u64> {
        common::proc_status_kb(self.pid, "VmHWM")
    }

    fn finish(mut self) -> Vec<(Instant, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default()
    }
}

fn mib(kb: u64) -> String {
    format!("{:.1}", kb as f64 / 1024.0)
}

/// A `read_committed` consumer of the event topic in its own thread: counts records and, while `collect` is on,
/// records receive time - commit time (the envelope's `timestamp`, microseconds) per record.
struct ConsumerHandle {
    count: Arc<AtomicU64>,
    collect: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<ConsumerOut>>>,
}

#[derive(Debug, Default)]
struct ConsumerOut {
    latencies_us: Vec<i64>,
    /// (partition, offset) of each record in `latencies_us`, in the same order.
    positions: Vec<(i32, i64)>,
    /// Records whose Kafka timestamp (ms) differs from the envelope timestamp (us) by more than 1 ms.
    timestamp_mismatches: u64,
    undecodable: u64,
}

fn start_consumer(env: &Env, topic: &str) -> Result<ConsumerHandle> {
    start_consumer_timed(env, topic, Timing::Envelope, "read_committed")
}

/// Where a consumer reads when an event was committed.
#[derive(Clone, Copy)]
enum Timing {
    /// The relay's envelope `timestamp`: the PostgreSQL commit time, microseconds.
    Envelope,
    /// The Kafka record timestamp, milliseconds: Debezium's Outbox Event Router sets it from the outbox row's
    /// `inserted_at` (`table.field.event.timestamp`; the insert's clock time, the commit of one row before its
    /// commit).
    RecordTimestamp,
}

fn start_consumer_timed(env: &Env, topic: &str, timing: Timing, isolation: &str) -> Result<ConsumerHandle> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .set("group.id", common::unique("consumer"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .set("fetch.wait.max.ms", std::env::var("BENCH_FETCH_WAIT_MS").unwrap_or_else(|_| "100".into()))
        .set("allow.auto.create.topics", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let count = Arc::new(AtomicU64::new(0));
    let collect = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (c2, col2, s2) = (Arc::clone(&count), Arc::clone(&collect), Arc::clone(&stop));
    let handle = std::thread::spawn(move || -> Result<ConsumerOut> {
        let mut out = ConsumerOut::default();
        let limit = Instant::now() + Duration::from_secs(3 * 3600);
        while !s2.load(Ordering::Relaxed) && Instant::now() < limit {
            match consumer.poll(Duration::from_millis(50)) {
                None => {}
                Some(Err(e)) => return Err(anyhow!("consumer: {e}")),
                Some(Ok(m)) => {
                    let now = common::unix_micros_now();
                    c2.fetch_add(1, Ordering::Relaxed);
                    if col2.load(Ordering::Relaxed) {
                        let committed_us = match timing {
                            Timing::Envelope => envelope_timestamp_us(m.payload().unwrap_or_default()),
                            Timing::RecordTimestamp => m.timestamp().to_millis().map(|ms| ms * 1000),
                        };
                        match committed_us {
                            Some(ts) => {
                                out.latencies_us.push(now - ts);
                                out.positions.push((m.partition(), m.offset()));
                                // The envelope's commit time is also the record's timestamp (in ms).
                                let record_ms = m.timestamp().to_millis();
                                if matches!(timing, Timing::Envelope)
                                    && record_ms.is_some_and(|ms| (ms - ts.div_euclid(1000)).abs() > 1)
                                {
                                    out.timestamp_mismatches += 1;
                                }
                            }
                            None => out.undecodable += 1,
                        }
                    }
                }
            }
        }
        Ok(out)
    });
    Ok(ConsumerHandle { count, collect, stop, handle: Some(handle) })
}

impl ConsumerHandle {
    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn finish(mut self) -> Result<ConsumerOut> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().expect("once").join().map_err(|_| anyhow!("consumer thread panicked"))?
    }
}

impl Drop for ConsumerHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The envelope's `timestamp` field: Confluent framing (magic + 4-byte id), four Avro strings, then the long.
fn envelope_timestamp_us(v: &[u8]) -> Option<i64> {
    fn varint(b: &[u8], pos: &mut usize) -> Option<i64> {
        let (mut n, mut shift) = (0u64, 0u32);
        loop {
            let byte = *b.get(*pos)?;
            *pos += 1;
            n |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 63 {
                return None;
            }
        }
        Some(((n >> 1) as i64) ^ -((n & 1) as i64))
    }
    if v.first() != Some(&0) {
        return None;
    }
    let mut pos = 5;
    for _ in 0..4 {
        let len = usize::try_from(varint(v, &mut pos)?).ok()?;
        pos += len;
    }
    varint(v, &mut pos)
}

/// Waits until the consumer has `n` records and the slot confirmed past `marker`; returns when each happened.
async fn wait_done(
    probe: &tokio_postgres::Client,
    slot: &str,
    consumer: &ConsumerHandle,
    relay: &mut Relay,
    n: u64,
    marker: Lsn,
    timeout: Duration,
) -> Result<(Instant, Instant)> {
    let deadline = Instant::now() + timeout;
    let (mut visible, mut flushed) = (None, None);
    let mut i = 0u64;
    while visible.is_none() || flushed.is_none() {
        if visible.is_none() && consumer.count() >= n {
            visible = Some(Instant::now());
        }
        if flushed.is_none() && i % 4 == 0 && common::confirmed_flush(probe, slot).await? > marker {
            flushed = Some(Instant::now());
        }
        if !relay.running() {
            bail!("relay exited early:\n{}", tail(&relay.log_text()));
        }
        if Instant::now() > deadline {
            bail!(
                "not done within {timeout:?}: consumer has {} of {n}, slot at {} (need > {marker})\n{}",
                consumer.count(),
                common::confirmed_flush(probe, slot).await?,
                tail(&relay.log_text())
            );
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok((visible.expect("set"), flushed.expect("set")))
}

// ---------------------------------------------------------------------------------------------------------------
// Parts
// ---------------------------------------------------------------------------------------------------------------

/// The CPU seconds (user + system) the Kafka broker of `tests/infra` has used so far; `None` when it was not
/// started from this clone.
fn broker_cpu() -> Option<f64> {
    let pid = std::fs::read_to_string(common::repo_root().join(".infra/kafka/kafka.pid")).ok()?;
    common::proc_cpu_user_sys(pid.trim()).map(|(u, s)| u + s)
}

/// Who used the two cores during a measured phase, and how long their runnable threads waited for one: the
/// evidence for "the box is saturated" (issue 11, goal 5) rather than an inference from the load generator's lag.
struct BoxLoad {
    at: Instant,
    /// (name, CPU ns and run-queue wait ns of each process at the start).
    start: Vec<(&'static str, SchedTimes)>,
    /// Samples every 200 ms, so that a process that ends before the phase does (a generator's backend) keeps its
    /// last figures; returns each group's last figures per process.
    sampler: JoinHandle<Vec<SchedTimes>>,
    stop: Arc<AtomicBool>,
    machine: Option<(u64, u64)>,
    pressure_us: Option<u64>,
}

impl BoxLoad {
    /// `relay` and `walsender` are the relay's process and its slot's walsender (without them, a walsender counts
    /// with the rest of PostgreSQL); the other groups are found from the pid files of `tests/infra` (absent when the
    /// services were started from another clone).
    fn start(relay: Option<u32>, walsender: Option<u32>) -> BoxLoad {
        let infra = common::repo_root().join(".infra");
        let pid_file = |rel: &str| -> Option<u32> {
            std::fs::read_to_string(infra.join(rel)).ok()?.lines().next()?.trim().parse().ok()
        };
        let one = |pid: Option<u32>| pid.map(Procs::One);
        let named: [(&'static str, Option<Procs>); 7] = [
            ("relay", one(relay)),
            ("walsender (relay's slot)", one(walsender)),
            (
                if walsender.is_some() { "PostgreSQL, the rest (the generator's backends, ...)" } else { "PostgreSQL" },
                pid_file("pg/data/postmaster.pid").map(|p| Procs::WithChildren(p, walsender)),
            ),
            ("Kafka broker", one(pid_file("kafka/kafka.pid"))),
            ("registry", one(pid_file("apicurio/apicurio.pid"))),
            ("Connect worker", one(pid_file("connect/connect.pid"))),
            ("bench (generator, consumers)", Some(Procs::One(std::process::id()))),
        ];
        let (mut start, mut groups) = (Vec::new(), Vec::new());
        for (name, procs) in named {
            let Some(procs) = procs else { continue };
            let times = procs.times();
            if !times.is_empty() {
                start.push((name, times));
                groups.push(procs);
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let sampler = std::thread::spawn(move || {
            let mut last: Vec<SchedTimes> = groups.iter().map(|_| HashMap::new()).collect();
            let limit = Instant::now() + Duration::from_secs(3600);
            loop {
                let done = stop2.load(Ordering::Relaxed) || Instant::now() > limit;
                for (procs, seen) in groups.iter().zip(&mut last) {
                    seen.extend(procs.times());
                }
                if done {
                    return last;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        BoxLoad {
            at: Instant::now(),
            start,
            sampler,
            stop,
            machine: common::machine_cpu_ticks(),
            pressure_us: common::cpu_pressure_us(),
        }
    }

    fn finish(self) -> LoadFigures {
        let secs = self.at.elapsed().as_secs_f64();
        self.stop.store(true, Ordering::Relaxed);
        let last = self.sampler.join().unwrap_or_default();
        let groups = self
            .start
            .iter()
            .zip(last)
            .map(|((name, start), last)| {
                // A process that started meanwhile (a generator's backend) counts from zero.
                let (cpu, wait) = last.into_iter().fold((0u64, 0u64), |(c, w), (pid, (c1, w1))| {
                    let (c0, w0) = start.get(&pid).copied().unwrap_or_default();
                    (c + c1.saturating_sub(c0), w + w1.saturating_sub(w0))
                });
                (*name, cpu as f64 / 1e9 / secs * 100.0, wait as f64 / 1e6 / secs)
            })
            .collect();
        let machine_pct = self
            .machine
            .zip(common::machine_cpu_ticks())
            .map(|((busy0, total0), (busy1, total1))| (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64 * 100.0);
        let pressure_pct =
            self.pressure_us.zip(common::cpu_pressure_us()).map(|(p0, p1)| (p1 - p0) as f64 / 1e6 / secs * 100.0);
        LoadFigures { groups, machine_pct, pressure_pct }
    }
}

/// What `BoxLoad` measured.
struct LoadFigures {
    /// (group, % of one core, ms per second its threads waited for a CPU).
    groups: Vec<(&'static str, f64, f64)>,
    /// Busy share of all the machine's CPUs.
    machine_pct: Option<f64>,
    /// Share of the time at least one runnable task waited for a CPU (`/proc/pressure/cpu`, "some").
    pressure_pct: Option<f64>,
}

impl LoadFigures {
    fn record(&self, section: &str) {
        for (name, core, wait) in &self.groups {
            record(
                section,
                &format!("CPU: {name}"),
                format!("{core:.0}"),
                "% core",
                &format!("its threads waited {wait:.0} ms/s for a CPU"),
            );
        }
        if let Some(m) = self.machine_pct {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            record(section, "CPU: whole machine busy", format!("{m:.0}"), "%", &format!("of {cores} CPUs"));
        }
        if let Some(p) = self.pressure_pct {
            record(
                section,
                "CPU pressure (some)",
                format!("{p:.0}"),
                "%",
                "of the time at least one runnable task waited for a CPU",
            );
        }
    }

    /// One line: each group's share of a core, the machine's busy share and the CPU pressure.
    fn line(&self) -> String {
        let mut out: Vec<String> = self
            .groups
            .iter()
            .filter(|g| g.1 >= 1.0)
            .map(|(name, core, _)| format!("{} {core:.0} %", name.split([',', '(']).next().unwrap_or(name).trim()))
            .collect();
        if let Some(m) = self.machine_pct {
            out.push(format!("machine {m:.0} % busy"));
        }
        if let Some(p) = self.pressure_pct {
            out.push(format!("CPU pressure {p:.0} %"));
        }
        out.join(", ")
    }
}

/// CPU ns and run-queue wait ns by process.
type SchedTimes = HashMap<u32, (u64, u64)>;

/// The pid of the walsender serving `slot`, while a reader is connected to it.
async fn walsender_pid(client: &tokio_postgres::Client, slot: &str) -> Result<Option<u32>> {
    let row = client.query_opt("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", &[&slot]).await?;
    Ok(row.and_then(|r| r.get::<_, Option<i32>>(0)).and_then(|p| u32::try_from(p).ok()))
}

/// The processes of one `BoxLoad` group.
enum Procs {
    One(u32),
    /// A postmaster and its children, but for the walsender counted on its own.
    WithChildren(u32, Option<u32>),
}

impl Procs {
    /// CPU ns and run-queue wait ns of each live process of the group.
    fn times(&self) -> SchedTimes {
        let pids = match self {
            Procs::One(pid) => vec![*pid],
            Procs::WithChildren(pid, except) => {
                let mut all = common::proc_with_children(*pid);
                all.retain(|p| Some(*p) != *except);
                all
            }
        };
        pids.into_iter().filter_map(|p| Some((p, common::proc_sched_ns(p)?))).collect()
    }
}

/// Median, lowest and highest of `v`; `None` when empty.
fn median_range(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    v.sort_by(f64::total_cmp);
    Some((*v.get(v.len() / 2)?, *v.first()?, *v.last()?))
}

/// One throughput run's figures.
#[derive(Clone, Debug)]
struct Tp {
    recv_rate: f64,
    recv_cpu_us: Option<f64>,
    visible_rate: f64,
    flushed_rate: f64,
    spawn_rate: f64,
    user_us: f64,
    sys_us: f64,
    core_pct: f64,
    peak_kb: u64,
    kafka_txns: Option<u64>,
    /// The Kafka broker's CPU (user + system) per event while the relay ran (when `tests/infra` started it here).
    broker_us: Option<f64>,
    /// Debezium on Connect: events/s from connector creation, CPU µs per event of the worker, its RSS (kB).
    debezium: Option<(f64, f64, u64)>,
    /// Who used the cores while the relay ran and while pg_recvlogical ran (`LoadFigures::line`).
    load: String,
}

impl Tp {
    fn ratio(&self) -> f64 {
        self.visible_rate / self.recv_rate
    }
}

async fn throughput(env: &Env, opts: &Opts, single: bool) -> Result<bool> {
    let rows = opts.rows;
    // Issue 11's targets, both clocks from process start: the relay's rate from its spawn against pg_recvlogical's
    // from its own (a C program that starts in milliseconds).
    let (label, section, target) =
        if single { ("single-row txns", "e2e.single", 0.85) } else { ("one bulk txn", "e2e.bulk", 0.90) };
    println!("\ne2e throughput, {rows} rows as {label}, {} run(s):", opts.repeat);
    let mut runs = Vec::new();
    for i in 0..opts.repeat {
        let mut c = Connector::new(env, "e", opts, &[]).await?;
        let r = throughput_once(env, opts, &mut c, single, section, i % 2 == 0).await;
        c.cleanup(env, opts.keep_logs || r.is_err()).await;
        let r = r?;
        println!(
            "  run {}: pg_recvlogical {:>7.0} rows/s, relay {:>7.0} ev/s visible ({:>7.0} by confirmed_flush) = {:>3.0} %, \
             relay CPU {:.2} us/ev (user {:.2} sys {:.2}, {:.0} % of a core), peak RSS {} MiB, broker CPU {} us/ev",
            i + 1,
            r.recv_rate,
            r.visible_rate,
            r.flushed_rate,
            r.ratio() * 100.0,
            r.user_us + r.sys_us,
            r.user_us,
            r.sys_us,
            r.core_pct,
            mib(r.peak_kb),
            r.broker_us.map_or("?".into(), |b| format!("{b:.1}"))
        );
        println!("         CPU in the {}", r.load);
        if let Some((rate, cpu, rss)) = r.debezium {
            println!(
                "         Debezium on Connect {rate:>7.0} ev/s from connector creation, relay / Debezium = {:.1}x \
                 (incl. the relay's start-up), worker CPU {cpu:.1} us/ev, worker RSS {} MiB",
                r.spawn_rate / rate,
                mib(rss)
            );
        }
        runs.push(r);
    }
    let mut sorted = runs.clone();
    sorted.sort_by(|a, b| a.ratio().total_cmp(&b.ratio()));
    let med = sorted[sorted.len() / 2].clone();
    let (lo, hi) = (sorted[0].ratio(), sorted[sorted.len() - 1].ratio());
    // From process start: each run's own pair, the median of those.
    let (start_ratio, start_lo, start_hi) =
        median_range(runs.iter().map(|r| r.spawn_rate / r.recv_rate).collect()).unwrap_or_default();
    let cpu_ratios =
        median_range(runs.iter().filter_map(|r| r.recv_cpu_us.map(|pc| (r.user_us + r.sys_us) / pc)).collect());
    let ok = start_ratio >= target && cpu_ratios.is_none_or(|(c, _, _)| c <= 1.0);
    let n = runs.len();
    let which = if n > 1 { format!("median of {n} runs") } else { "1 run".into() };
    println!("  {which}:");
    record(
        section,
        "pg_recvlogical rows/s (same WAL)",
        format!("{:.0}", med.recv_rate),
        "rows/s",
        &format!("{rows} rows"),
    );
    record(
        section,
        "relay events/s (visible, read_committed)",
        format!("{:.0}", med.visible_rate),
        "ev/s",
        "from 'replication started'",
    );
    record(
        section,
        "relay events/s (slot confirmed_flush)",
        format!("{:.0}", med.flushed_rate),
        "ev/s",
        "from 'replication started'",
    );
    record(section, "relay events/s incl. process start-up", format!("{:.0}", med.spawn_rate), "ev/s", "from spawn");
    record(
        section,
        "relay / pg_recvlogical, from process start",
        format!("{:.0}", start_ratio * 100.0),
        "%",
        &format!(
            "{which} (range {:.0}-{:.0} %); issue 11's target >= {:.0} %: {}",
            start_lo * 100.0,
            start_hi * 100.0,
            target * 100.0,
            verdict(start_ratio >= target)
        ),
    );
    record(
        section,
        "relay / pg_recvlogical, from 'replication started'",
        format!("{:.0}", med.ratio() * 100.0),
        "%",
        &format!("{which} (range {:.0}-{:.0} %); visible events", lo * 100.0, hi * 100.0),
    );
    record(
        section,
        "relay CPU per event",
        format!("{:.2}", med.user_us + med.sys_us),
        "us",
        &format!("user {:.2} + sys {:.2}; {:.0} % of one core", med.user_us, med.sys_us, med.core_pct),
    );
    if let Some(pc) = med.recv_cpu_us {
        record(section, "pg_recvlogical CPU per row", format!("{pc:.2}"), "us", "");
    }
    if let Some((c, lo, hi)) = cpu_ratios {
        record(
            section,
            "relay CPU per event / pg_recvlogical's per row",
            format!("{:.0}", c * 100.0),
            "%",
            &format!(
                "median of each run's pair (range {:.0}-{:.0} %); issue 11's target <= 100 %: {}",
                lo * 100.0,
                hi * 100.0,
                verdict(c <= 1.0)
            ),
        );
    }
    let mut dbz: Vec<(f64, f64, u64, f64)> =
        runs.iter().filter_map(|r| r.debezium.map(|(rate, cpu, rss)| (rate, cpu, rss, r.spawn_rate / rate))).collect();
    if !dbz.is_empty() {
        dbz.sort_by(|a, b| a.3.total_cmp(&b.3));
        let (rate, cpu, rss, ratio) = dbz[dbz.len() / 2];
        record(section, "Debezium on Connect events/s", format!("{rate:.0}"), "ev/s", "from connector creation");
        record(
            section,
            "relay / Debezium (both from start)",
            format!("{ratio:.1}"),
            "x",
            &format!("median run; issue 11's target >= 5x: {}", verdict(ratio >= 5.0)),
        );
        record(section, "Debezium worker CPU per event", format!("{cpu:.1}"), "us", "user + sys of the JVM");
        record(section, "Debezium worker RSS", mib(rss), "MiB", "VmRSS at the end");
    }
    let peak = runs.iter().map(|r| r.peak_kb).max().unwrap_or(0);
    record(section, "relay peak RSS (VmHWM)", mib(peak), "MiB", "max over runs");
    if let Some(txns) = med.kafka_txns {
        record(
            section,
            "events per Kafka transaction",
            format!("{:.0}", rows as f64 / txns.max(1) as f64),
            "",
            &format!("{txns} Kafka txns"),
        );
    }
    Ok(ok)
}

async fn throughput_once(
    env: &Env,
    opts: &Opts,
    c: &mut Connector,
    single: bool,
    section: &str,
    recv_first: bool,
) -> Result<Tp> {
    let rows = opts.rows;
    // First start: publication, slot and genesis checkpoint. Then stop.
    let mut relay = c.spawn(opts)?;
    relay.wait_log("replication started", Duration::from_secs(120)).await?;
    relay.terminate(Duration::from_secs(40)).await?;
    let sql = c.db.client().await?;
    let recv_slot = format!("{}_recv", c.slot);
    common::create_slot(&sql, &recv_slot).await?;
    let dbz_slot = format!("{}_dbz", c.slot);
    if opts.debezium {
        common::create_slot(&sql, &dbz_slot).await?;
    }
    let wal: Generated = common::generate(&c.db, rows, single, 1).await?;
    let (db, publication) = (c.db.clone(), c.slot.clone());
    let recv_run = || async {
        let load = BoxLoad::start(None, None);
        let r =
            common::run_pg_recvlogical(env, &db, &recv_slot, &publication, 1, &[], wal.end, Duration::from_secs(900))
                .await;
        r.map(|r| (r, load.finish()))
    };
    // Alternate which reader goes first (page cache, other load), like the replication benchmark.
    let mut recv = if recv_first { Some(recv_run().await?) } else { None };

    let consumer = start_consumer(env, &c.topic)?;
    let spawned = Instant::now();
    let mut relay = c.spawn(opts)?;
    let rss = RssSampler::start(relay.pid);
    let started = relay.wait_log("replication started", Duration::from_secs(120)).await?;
    let cpu_start = relay.cpu_split();
    let broker_start = broker_cpu();
    let load = BoxLoad::start(Some(relay.pid), walsender_pid(&sql, &c.slot).await?);
    let mut perf = Perf::start(opts, relay.pid, section);
    let (visible, flushed) =
        wait_done(&sql, &c.slot, &consumer, &mut relay, rows, wal.marker, Duration::from_secs(1800)).await?;
    let relay_load = load.finish();
    let cpu_end = relay.cpu_split();
    let broker_used = broker_start.zip(broker_cpu()).map(|(a, b)| b - a);
    perf.stop();
    let (user, sys) = (cpu_end.0 - cpu_start.0, cpu_end.1 - cpu_start.1);
    let metrics = c.metrics().await;
    let hwm = rss.hwm_kb().unwrap_or(0);
    let samples = rss.finish();
    relay.terminate(Duration::from_secs(40)).await?;
    // Exactly once: nothing more may show up.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let seen = consumer.count();
    let _ = consumer.finish()?;
    if seen != rows {
        bail!("consumer saw {seen} events, expected exactly {rows}");
    }
    if recv.is_none() {
        recv = Some(recv_run().await?);
    }
    let (recv, recv_load) = recv.expect("ran");
    let recv_rate = rows as f64 / recv.wall.as_secs_f64();
    let debezium = if opts.debezium { Some(debezium_once(env, c, &dbz_slot, rows).await?) } else { None };
    let since = |t: Instant, from: Instant| t.duration_since(from).as_secs_f64();
    Ok(Tp {
        recv_rate,
        recv_cpu_us: recv.cpu.map(|c| c * 1e6 / rows as f64),
        visible_rate: rows as f64 / since(visible, started),
        flushed_rate: rows as f64 / since(flushed, started),
        spawn_rate: rows as f64 / since(visible, spawned),
        user_us: user * 1e6 / rows as f64,
        sys_us: sys * 1e6 / rows as f64,
        core_pct: (user + sys) / since(visible, started) * 100.0,
        peak_kb: samples.iter().map(|s| s.1).max().unwrap_or(0).max(hwm),
        kafka_txns: metrics.map(|m| m.1),
        broker_us: broker_used.map(|c| c * 1e6 / rows as f64),
        debezium,
        load: format!("relay's run: {}; pg_recvlogical's run: {}", relay_load.line(), recv_load.line()),
    })
}

/// Waits until the Connect worker (`pid`) is quiet, so the next reader measured does not share the cores with it:
/// below 5 % of a core over a second, at most 60 s. After a run its JVM keeps collecting garbage and compiling for
/// a while; relay runs right after one were up to half as fast. Returns what it saw, for the log.
async fn worker_quiet(pid: u32) -> String {
    let started = Instant::now();
    let cpu = || common::proc_cpu_user_sys(&pid.to_string()).map(|(u, s)| u + s).unwrap_or(0.0);
    let mut first = None;
    while started.elapsed() < Duration::from_secs(60) {
        let before = cpu();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let share = cpu() - before;
        first.get_or_insert(share);
        if share < 0.05 {
            return format!(
                "{:.0} % of a core in its first second, quiet after {:.0} s",
                first.unwrap_or(share) * 100.0,
                started.elapsed().as_secs_f64()
            );
        }
    }
    format!("still busy after 60 s ({:.0} % of a core at first)", first.unwrap_or(0.0) * 100.0)
}

/// What a bench part needs around a Debezium connector: the warm Connect worker (its REST API and pid), the
/// connector's name, and its topic, made with the bench's partition count so the consumer is assigned at once.
struct DebeziumSide {
    connect: String,
    pid: u32,
    name: String,
    topic: String,
    http: reqwest::Client,
    admin: AdminClient<DefaultClientContext>,
}

/// The [`DebeziumSide`] of `c` for the connector `<c>-<tag>` writing to `<c><tag>.order`.
async fn debezium_side(env: &Env, c: &Connector, tag: &str) -> Result<DebeziumSide> {
    let worker = common::services::connect_worker().map_err(|e| anyhow!(e))?;
    let name = format!("{}-{tag}", c.name).replace('_', "-");
    let topic = format!("{}{tag}.order", c.name);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &env.kafka_bootstrap).create()?;
    let t = NewTopic::new(&topic, PARTITIONS, TopicReplication::Fixed(1));
    for r in admin.create_topics([&t], &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)))).await? {
        r.map_err(|(t, e)| anyhow!("creating topic {t}: {e}"))?;
    }
    Ok(DebeziumSide { connect: worker.url, pid: worker.pid, name, topic, http, admin })
}

/// Debezium on the warm Connect worker reads `slot` (made before the rows were written) into a topic of its own:
/// (events/s from connector creation until all `rows` are visible `read_committed`, worker CPU µs per event, worker
/// RSS in kB at the end).
async fn debezium_once(env: &Env, c: &Connector, slot: &str, rows: u64) -> Result<(f64, f64, u64)> {
    let DebeziumSide { connect, pid, name, topic, http, admin } = debezium_side(env, c, "dbz").await?;
    let config = common::services::debezium_connector_config(
        &c.db.url,
        &name,
        slot,
        &c.slot,
        &format!("{}dbz.${{routedByValue}}", c.name),
        &env.schema_registry_url,
    );
    let consumer = start_consumer(env, &topic)?;
    let cpu0 = common::proc_cpu_user_sys(&pid.to_string()).unwrap_or((0.0, 0.0));
    let t0 = Instant::now();
    let created = http.put(format!("{connect}/connectors/{name}/config")).json(&config).send().await?;
    if !created.status().is_success() {
        bail!("creating the Debezium connector: {} {}", created.status(), created.text().await.unwrap_or_default());
    }
    let deadline = t0 + Duration::from_secs(1800);
    while consumer.count() < rows {
        if Instant::now() > deadline {
            bail!("Debezium delivered {} of {rows} in 30 min", consumer.count());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu1 = common::proc_cpu_user_sys(&pid.to_string()).unwrap_or(cpu0);
    let rss = common::proc_status_kb(pid, "VmRSS").unwrap_or(0);
    let _ = http.delete(format!("{connect}/connectors/{name}")).send().await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let seen = consumer.count();
    let busy = worker_quiet(pid).await;
    println!("         Debezium worker after the connector's deletion: {busy}");
    let _ = consumer.finish()?;
    let _ = admin.delete_topics(&[&topic], &AdminOptions::new()).await;
    if seen != rows {
        bail!("Debezium: the consumer saw {seen} events, expected exactly {rows}");
    }
    let cpu = (cpu1.0 - cpu0.0) + (cpu1.1 - cpu0.1);
    Ok((rows as f64 / wall, cpu * 1e6 / rows as f64, rss))
}

/// Inserts `n` rows in single-row transactions at `rate` per second over `conns` connections for `seconds`.
async fn paced_generator(db: &BenchDb, rate: f64, seconds: f64, conns: usize, first: i64) -> Result<(u64, f64, f64)> {
    let mut tasks = Vec::new();
    let t0 = tokio::time::Instant::now() + Duration::from_millis(200);
    let end = t0 + Duration::from_secs_f64(seconds);
    for k in 0..conns {
        let client = db.client().await?;
        // PostgreSQL's default. The test cluster runs with synchronous_commit = off, where a commit reaches the WAL
        // (and so the walsender) only when the WAL writer flushes, every wal_writer_delay (200 ms): that would be
        // measured as relay latency.
        client.batch_execute("SET synchronous_commit = on").await?;
        let stmt = client
            .prepare(&format!(
                "INSERT INTO outbox ({}) SELECT {} FROM (SELECT $1::bigint AS i) s",
                common::ROW_COLUMNS,
                common::ROW_VALUES
            ))
            .await?;
        tasks.push(tokio::spawn(async move {
            let (mut sent, mut worst_behind) = (0u64, 0f64);
            for j in 0u64.. {
                let idx = j * conns as u64 + k as u64;
                let due = t0 + Duration::from_secs_f64(idx as f64 / rate);
                if due >= end {
                    break;
                }
                tokio::time::sleep_until(due).await;
                worst_behind = worst_behind.max(tokio::time::Instant::now().duration_since(due).as_secs_f64());
                client.execute(&stmt, &[&(first + idx as i64)]).await?;
                sent += 1;
            }
            anyhow::Ok((sent, worst_behind))
        }));
    }
    let mut total = 0;
    let mut worst = 0f64;
    for t in tasks {
        let (s, w) = t.await??;
        total += s;
        worst = worst.max(w);
    }
    Ok((total, (tokio::time::Instant::now() - t0).as_secs_f64(), worst))
}

/// `--stages`: splits each event's commit → visible latency where a `read_uncommitted` consumer first saw the record
/// (the broker appended it): before that, the walsender, the relay and the producer's linger and produce request;
/// after it, the rest of the Kafka transaction (the checkpoint record, every acknowledgement, EndTxn, the markers) and
/// the `read_committed` consumer's fetch. Both consumers poll on their own threads, so each split is one more fetch
/// apart, and the two consumers' fetches compete for the broker too.
fn latency_stages(section: &str, committed: &ConsumerOut, uncommitted: &ConsumerOut) {
    let appended: HashMap<(i32, i64), i64> =
        uncommitted.positions.iter().copied().zip(uncommitted.latencies_us.iter().copied()).collect();
    let (mut before, mut after, mut slow_before, mut slow_after) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (pos, total) in committed.positions.iter().zip(&committed.latencies_us) {
        let Some(&a) = appended.get(pos) else { continue };
        let a = a.min(*total);
        before.push(a);
        after.push(total - a);
        if *total > 25_000 {
            slow_before.push(a);
            slow_after.push(total - a);
        }
    }
    for v in [&mut before, &mut after, &mut slow_before, &mut slow_after] {
        v.sort_unstable();
    }
    let ms = |v: &[i64], q: f64| format!("{:.1}", common::percentile(v, q) as f64 / 1000.0);
    record(
        section,
        "stage: commit -> appended p50/p99",
        format!("{}/{}", ms(&before, 50.0), ms(&before, 99.0)),
        "ms",
        &format!("{} events seen by both consumers", before.len()),
    );
    record(
        section,
        "stage: appended -> visible p50/p99",
        format!("{}/{}", ms(&after, 50.0), ms(&after, 99.0)),
        "ms",
        "",
    );
    if !slow_before.is_empty() {
        record(
            section,
            "stage, events over 25 ms: before / after append",
            format!("{}/{}", ms(&slow_before, 50.0), ms(&slow_after, 50.0)),
            "ms",
            &format!("medians of {} events", slow_before.len()),
        );
    }
}

async fn latency(env: &Env, opts: &Opts) -> Result<bool> {
    let mut c = Connector::new(env, "l", opts, &[]).await?;
    let r = latency_inner(env, opts, &mut c).await;
    c.cleanup(env, opts.keep_logs || r.is_err()).await;
    r
}

async fn latency_inner(env: &Env, opts: &Opts, c: &mut Connector) -> Result<bool> {
    println!(
        "\ne2e latency: {} events/s offered for {} s ({} connections, one row per transaction)",
        opts.rate, opts.seconds, opts.conns
    );
    let mut relay = c.spawn(opts)?;
    relay.wait_log("replication started", Duration::from_secs(120)).await?;
    let consumer = start_consumer(env, &c.topic)?;
    // Warm-up: the first event registers the schema; keep that out of the figures.
    let warm = 20u64;
    let warm_gen = common::generate(&c.db, warm, true, 1).await?;
    let probe = c.db.client().await?;
    wait_done(&probe, &c.slot, &consumer, &mut relay, warm, warm_gen.marker, Duration::from_secs(120)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let stages = if opts.stages {
        let c = start_consumer_timed(env, &c.topic, Timing::Envelope, "read_uncommitted")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.count() < warm && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        c.collect.store(true, Ordering::Relaxed);
        Some(c)
    } else {
        None
    };
    let rss = RssSampler::start(relay.pid);
    let mut perf = Perf::start(opts, relay.pid, "e2e.latency");
    let load = BoxLoad::start(Some(relay.pid), walsender_pid(&probe, &c.slot).await?);
    let cpu0 = relay.cpu();
    consumer.collect.store(true, Ordering::Relaxed);
    let gen_started = Instant::now();
    let (sent, elapsed, behind) = paced_generator(&c.db, opts.rate, opts.seconds, opts.conns, warm as i64 + 1).await?;
    let gen_ended = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    while consumer.count() < warm + sent {
        if Instant::now() > deadline || !relay.running() {
            bail!("only {} of {} events arrived:\n{}", consumer.count(), warm + sent, tail(&relay.log_text()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu = relay.cpu() - cpu0;
    perf.stop();
    let hwm = rss.hwm_kb().unwrap_or(0);
    let metrics = c.metrics().await;
    let samples = rss.finish();
    let section = "e2e.latency";
    load.finish().record(section);
    relay.terminate(Duration::from_secs(40)).await?;
    let out = consumer.finish()?;
    if let Some(uncommitted) = stages {
        latency_stages(section, &out, &uncommitted.finish()?);
    }
    let mut lat = out.latencies_us;
    lat.sort_unstable();
    if lat.len() as u64 != sent {
        bail!("consumer measured {} events, generator wrote {sent}", lat.len());
    }
    let ms = |us: i64| format!("{:.1}", us as f64 / 1000.0);
    let (p50, p99, p999, max) = (
        common::percentile(&lat, 50.0),
        common::percentile(&lat, 99.0),
        common::percentile(&lat, 99.9),
        *lat.last().unwrap_or(&0),
    );
    let achieved = sent as f64 / elapsed;
    let ok_lat = p99 <= 25_000;
    let steady: Vec<u64> = samples
        .iter()
        .filter(|(t, _)| *t >= gen_started + Duration::from_secs(2) && *t <= gen_ended)
        .map(|s| s.1)
        .collect();
    let steady_max = steady.iter().copied().max().unwrap_or(0);
    let steady_avg = if steady.is_empty() { 0 } else { steady.iter().sum::<u64>() / steady.len() as u64 };
    let ok_rss = steady_max <= 64 * 1024;
    record(
        section,
        "offered / achieved rate",
        format!("{:.0}/{achieved:.0}", opts.rate),
        "ev/s",
        &format!("{sent} events, generator max {:.1} ms behind", behind * 1e3),
    );
    record(section, "latency p50 (commit -> consumer)", ms(p50), "ms", "");
    record(section, "latency p99", ms(p99), "ms", &format!("target <= 25 ms: {}", verdict(ok_lat)));
    record(section, "latency p99.9", ms(p999), "ms", "");
    record(section, "latency max", ms(max), "ms", "");
    record(
        section,
        "relay CPU per event",
        format!("{:.2}", cpu * 1e6 / sent as f64),
        "us",
        &format!("{:.0} % of one core", cpu / elapsed * 100.0),
    );
    record(
        section,
        "relay RSS steady (max / mean)",
        format!("{}/{}", mib(steady_max), mib(steady_avg)),
        "MiB",
        &format!("target <= 64 MiB: {}", verdict(ok_rss)),
    );
    record(section, "relay VmHWM", mib(hwm), "MiB", "whole run incl. start-up");
    if let Some((events, txns)) = metrics {
        record(
            section,
            "events per Kafka transaction",
            format!("{:.1}", events as f64 / txns.max(1) as f64),
            "",
            &format!("{txns} Kafka txns"),
        );
    }
    if out.timestamp_mismatches > 0 || out.undecodable > 0 {
        record(
            section,
            "envelope/record timestamp mismatches",
            out.timestamp_mismatches + out.undecodable,
            "",
            "should be 0",
        );
    }
    if opts.debezium {
        let d = debezium_latency(env, c, opts).await?;
        let p = |q: f64| common::percentile(&d.latencies_us, q);
        record(
            section,
            "Debezium offered / achieved rate",
            format!("{:.0}/{:.0}", opts.rate, d.sent as f64 / d.elapsed),
            "ev/s",
            &format!("{} events, generator max {:.1} ms behind", d.sent, d.behind * 1e3),
        );
        record(section, "Debezium latency p50 (insert -> consumer)", ms(p(50.0)), "ms", "record timestamp, ms");
        record(
            section,
            "Debezium latency p99",
            ms(p(99.0)),
            "ms",
            &format!("relay p99 / Debezium p99 = {:.2}", p99 as f64 / p(99.0).max(1) as f64),
        );
        record(section, "Debezium latency p99.9", ms(p(99.9)), "ms", "");
        record(section, "Debezium latency max", ms(*d.latencies_us.last().unwrap_or(&0)), "ms", "");
        record(section, "Debezium worker CPU per event", format!("{:.1}", d.cpu_us), "us", "user + sys of the JVM");
    }
    Ok(ok_lat && ok_rss)
}

/// Debezium's side of the latency part.
struct DebeziumLatency {
    sent: u64,
    elapsed: f64,
    behind: f64,
    /// Sorted.
    latencies_us: Vec<i64>,
    cpu_us: f64,
}

/// Debezium on the warm Connect worker, streaming from a slot of its own into a topic of its own, at the rate the
/// relay was offered: per event the consumer's receive time minus the record timestamp (the row's insert time).
async fn debezium_latency(env: &Env, c: &Connector, opts: &Opts) -> Result<DebeziumLatency> {
    let DebeziumSide { connect, pid, name, topic, http, admin } = debezium_side(env, c, "dbzl").await?;
    // The Outbox Event Router takes a record timestamp only from a timestamp Debezium sends as a number (a
    // timestamptz arrives as a string, a plain bigint is refused): a `timestamp` holding the insert's clock time in
    // UTC, which Debezium reads as UTC. A column of this run's database only.
    let sql = c.db.client().await?;
    sql.batch_execute(
        "ALTER TABLE outbox ADD COLUMN IF NOT EXISTS inserted_at timestamp \
         DEFAULT (clock_timestamp() AT TIME ZONE 'UTC')",
    )
    .await?;
    // The slot exists before the first row, so the warm-up rows are in its stream.
    let slot = format!("{}_dbzl", c.slot);
    common::create_slot(&sql, &slot).await?;
    let mut config = common::services::debezium_connector_config(
        &c.db.url,
        &name,
        &slot,
        &c.slot,
        &format!("{}dbzl.${{routedByValue}}", c.name),
        &env.schema_registry_url,
    );
    config["transforms.outbox.table.field.event.timestamp"] = "inserted_at".into();
    let consumer = start_consumer_timed(env, &topic, Timing::RecordTimestamp, "read_committed")?;
    let created = http.put(format!("{connect}/connectors/{name}/config")).json(&config).send().await?;
    if !created.status().is_success() {
        bail!("creating the Debezium connector: {} {}", created.status(), created.text().await.unwrap_or_default());
    }
    let result = async {
        // Warm-up (the schema registration, the connector's first transactions) outside the figures.
        let warm = 20u64;
        common::generate(&c.db, warm, true, 1_000_000).await?;
        let deadline = Instant::now() + Duration::from_secs(180);
        while consumer.count() < warm {
            if Instant::now() > deadline {
                bail!("Debezium delivered {} of {warm} warm-up events in 180 s", consumer.count());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let cpu0 = common::proc_cpu_user_sys(&pid.to_string()).unwrap_or((0.0, 0.0));
        consumer.collect.store(true, Ordering::Relaxed);
        let (sent, elapsed, behind) = paced_generator(&c.db, opts.rate, opts.seconds, opts.conns, 1_000_100).await?;
        let deadline = Instant::now() + Duration::from_secs(300);
        while consumer.count() < warm + sent {
            if Instant::now() > deadline {
                bail!("Debezium delivered {} of {} in 300 s", consumer.count(), warm + sent);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let cpu1 = common::proc_cpu_user_sys(&pid.to_string()).unwrap_or(cpu0);
        let cpu = (cpu1.0 - cpu0.0) + (cpu1.1 - cpu0.1);
        Ok((sent, elapsed, behind, cpu * 1e6 / sent as f64))
    }
    .await;
    let _ = http.delete(format!("{connect}/connectors/{name}")).send().await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let out = consumer.finish()?;
    let _ = admin.delete_topics(&[&topic], &AdminOptions::new()).await;
    let (sent, elapsed, behind, cpu_us) = result?;
    let mut latencies_us = out.latencies_us;
    latencies_us.sort_unstable();
    if latencies_us.len() as u64 != sent {
        bail!("Debezium: the consumer measured {} events, the generator wrote {sent}", latencies_us.len());
    }
    Ok(DebeziumLatency { sent, elapsed, behind, latencies_us, cpu_us })
}

async fn startup(env: &Env, opts: &Opts, repeat: usize) -> Result<bool> {
    let mut c = Connector::new(env, "s", opts, &[]).await?;
    let r = startup_inner(env, opts, &mut c, repeat).await;
    c.cleanup(env, opts.keep_logs || r.is_err()).await;
    r
}

/// When the relay logged the first line containing `needle`, as an `Instant` on the clock of `spawned`: the line's
/// UTC time of day (`HH:MM:SS.ffffff` of its RFC 3339 stamp) against the wall clock read at `spawned`.
fn log_line_instant(log: &str, needle: &str, spawned: Instant, spawned_wall: std::time::SystemTime) -> Result<Instant> {
    let line = log.lines().find(|l| l.contains(needle)).ok_or_else(|| anyhow!("no {needle:?} line"))?;
    let stamp = line.get(11..26).ok_or_else(|| anyhow!("no time stamp in {line:?}"))?;
    let mut parts = stamp.split(':');
    let mut field =
        || -> Result<f64> { Ok(parts.next().ok_or_else(|| anyhow!("time stamp {stamp:?}"))?.parse::<f64>()?) };
    let (h, m, sec) = (field()?, field()?, field()?);
    let logged = h * 3600.0 + m * 60.0 + sec;
    let wall = spawned_wall.duration_since(std::time::UNIX_EPOCH)?.as_secs_f64() % 86_400.0;
    // Across midnight the difference wraps; a start never takes hours.
    let after = (logged - wall).rem_euclid(86_400.0);
    if after > 3600.0 {
        bail!("{needle:?} logged before the process started ({stamp} vs {wall:.6} s of the day)");
    }
    Ok(spawned + Duration::from_secs_f64(after))
}

/// Waits (1 ms polling, at most a minute) until the consumer has `n` events; when it had them.
async fn wait_count(consumer: &ConsumerHandle, n: u64, relay: &mut Relay) -> Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumer.count() < n {
        if !relay.running() {
            bail!("relay exited early:\n{}", tail(&relay.log_text()));
        }
        if Instant::now() > deadline {
            bail!("the consumer has {} of {n} events:\n{}", consumer.count(), tail(&relay.log_text()));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(Instant::now())
}

async fn startup_inner(env: &Env, opts: &Opts, c: &mut Connector, repeat: usize) -> Result<bool> {
    println!(
        "
e2e start-up: process start to \"replication started\" and to the first delivered event, warm services"
    );
    let consumer = start_consumer(env, &c.topic)?;
    // Warm-up run: publication, slot, genesis checkpoint, the registry subject of the first event.
    let mut relay = c.spawn(opts)?;
    relay.wait_log("replication started", Duration::from_secs(120)).await?;
    common::generate(&c.db, 1, true, 1).await?;
    wait_count(&consumer, 1, &mut relay).await?;
    relay.terminate(Duration::from_secs(40)).await?;
    let (mut to_started, mut to_first) = (Vec::new(), Vec::new());
    for run in 0..repeat as u64 {
        // Services settle between runs, as between a crash and its restart in practice.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        common::generate(&c.db, 1, true, run + 2).await?;
        let (spawned, spawned_wall) = (Instant::now(), std::time::SystemTime::now());
        let mut relay = c.spawn(opts)?;
        let first = wait_count(&consumer, run + 2, &mut relay).await?;
        // `wait_log` sees the line only now (the consumer was watched first): its time comes from the log line.
        relay.wait_log("replication started", Duration::from_secs(60)).await?;
        let started = log_line_instant(&relay.log_text(), "replication started", spawned, spawned_wall)?;
        relay.terminate(Duration::from_secs(40)).await?;
        to_started.push(started.duration_since(spawned).as_micros() as i64);
        to_first.push(first.duration_since(spawned).as_micros() as i64);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = consumer.count();
    let _ = consumer.finish()?;
    if seen != repeat as u64 + 1 {
        bail!("consumer saw {seen} events, expected exactly {}", repeat + 1);
    }
    let runs = |v: &[i64]| v.iter().map(|us| format!("{:.0}", *us as f64 / 1000.0)).collect::<Vec<_>>().join(" ");
    let detail = (runs(&to_started), runs(&to_first));
    to_started.sort_unstable();
    to_first.sort_unstable();
    let (started_ms, first_ms) =
        (common::percentile(&to_started, 50.0) as f64 / 1000.0, common::percentile(&to_first, 50.0) as f64 / 1000.0);
    let ok = first_ms <= 300.0;
    let section = "e2e.startup";
    record(
        section,
        "process start -> replication started (median)",
        format!("{started_ms:.0}"),
        "ms",
        &format!("runs: {}", detail.0),
    );
    record(
        section,
        "process start -> first event delivered (median)",
        format!("{first_ms:.0}"),
        "ms",
        &format!("target <= 300 ms: {}; runs: {}", verdict(ok), detail.1),
    );
    Ok(ok)
}

async fn bigtxn(env: &Env, opts: &Opts) -> Result<bool> {
    let rows = opts.big_rows;
    let mut runs = Vec::new();
    for i in 0..opts.repeat {
        println!("\ne2e memory: one transaction of {rows} rows written while the relay runs (run {})", i + 1);
        let mut c = Connector::new(env, "m", opts, &[]).await?;
        let r = bigtxn_once(env, opts, &mut c).await;
        c.cleanup(env, opts.keep_logs || r.is_err()).await;
        runs.push(r?);
    }
    let peak = runs.iter().map(|r| r.1).max().unwrap_or(0);
    let idle = runs.iter().map(|r| r.0).max().unwrap_or(0);
    let rate = runs.iter().map(|r| r.2).sum::<f64>() / runs.len() as f64;
    let ok = peak <= 64 * 1024;
    let section = "e2e.bigtxn";
    let all: Vec<String> = runs.iter().map(|r| mib(r.1)).collect();
    record(section, "relay RSS idle before", mib(idle), "MiB", "");
    record(
        section,
        &format!("relay peak RSS through a {rows}-row txn"),
        mib(peak),
        "MiB",
        &format!("VmHWM, max of {} run(s) [{}]; target <= 64 MiB: {}", runs.len(), all.join(", "), verdict(ok)),
    );
    record(section, "events/s (txn start -> all visible)", format!("{rate:.0}"), "ev/s", "includes writing it; mean");
    Ok(ok)
}

/// (idle RSS kB, peak RSS kB, events/s from the transaction's start to all visible).
async fn bigtxn_once(env: &Env, opts: &Opts, c: &mut Connector) -> Result<(u64, u64, f64)> {
    let rows = opts.big_rows;
    let mut relay = c.spawn(opts)?;
    relay.wait_log("replication started", Duration::from_secs(120)).await?;
    let consumer = start_consumer(env, &c.topic)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = common::proc_status_kb(relay.pid, "VmRSS").unwrap_or(0);
    let rss = RssSampler::start(relay.pid);
    let t0 = Instant::now();
    let wal = common::generate(&c.db, rows, false, 1).await?;
    let committed = Instant::now();
    let probe = c.db.client().await?;
    let (visible, flushed) =
        wait_done(&probe, &c.slot, &consumer, &mut relay, rows, wal.marker, Duration::from_secs(1800)).await?;
    let hwm = rss.hwm_kb().unwrap_or(0);
    let samples = rss.finish();
    relay.terminate(Duration::from_secs(40)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = consumer.count();
    let _ = consumer.finish()?;
    if seen != rows {
        bail!("consumer saw {seen} events, expected exactly {rows}");
    }
    let peak = samples.iter().map(|s| s.1).max().unwrap_or(0).max(hwm);
    // VmRSS once a second (max within the second), 'C' marks the second of the commit.
    let mut timeline = String::new();
    for (sec, chunk) in
        samples.chunk_by(|a, b| a.0.duration_since(t0).as_secs() == b.0.duration_since(t0).as_secs()).enumerate()
    {
        let m = chunk.iter().map(|s| s.1).max().unwrap_or(0);
        let mark = if chunk[0].0 <= committed && chunk[chunk.len() - 1].0 >= committed { "C" } else { "" };
        timeline.push_str(&format!("{}{mark}:{:.0} ", sec, m as f64 / 1024.0));
    }
    println!("  VmRSS MiB per second since the transaction started: {timeline}");
    println!(
        "  written in {:.1} s ({:.0} MiB WAL); all visible {:.1} s after the commit, slot confirmed after {:.1} s; \
         peak VmRSS {} MiB",
        wal.seconds,
        wal.wal_mib(),
        visible.duration_since(committed).as_secs_f64(),
        flushed.duration_since(committed).as_secs_f64(),
        mib(peak)
    );
    Ok((idle_rss, peak, rows as f64 / visible.duration_since(t0).as_secs_f64()))
}
