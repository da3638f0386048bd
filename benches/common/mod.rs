//! Helpers shared by the benchmark programs `benches/replication.rs` and `benches/e2e.rs` (`mod common;`). Not part
//! of the test suite; see `benches/README.md`. Where the services are comes from the test kit
//! (`tests/common/services.rs`), the one reader of `.infra/env`.
//!
//! Everything here talks to the local services of `tests/infra/up.sh` only (127.0.0.1), creates its own
//! `obbench_*` databases, slots and topics, and removes them again. Every wait is bounded.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use outbox_relay::pg::lsn::Lsn;
use tokio_postgres::NoTls;

/// Prefix of every database, slot, connector and topic the benchmarks create.
pub const PREFIX: &str = "obbench";

/// The outbox table (the same columns as the test harness, `tests/common/relay.rs`).
pub const SCHEMA: &str =
    concat!(include_str!("../../config/outbox-table.sql"), "CREATE TABLE other (id bigserial PRIMARY KEY, note text);");

/// Column list and values of one generated outbox row, as a function of the integer `i`. The JSON payload is
/// 150 bytes as jsonb prints it (e.g. `{"items": [{"qty": 2, "sku": "SKU-3480", "price": 617.28}], "status": ...}`).
pub const ROW_COLUMNS: &str = "aggregatetype, aggregateid, type, payload";
pub const ROW_VALUES: &str = "'order', 'order-' || i, 'OrderCreated', jsonb_build_object('orderId', i, \
     'customerId', 'customer-' || (i % 9973), 'status', 'CREATED', 'currency', 'EUR', 'items', \
     jsonb_build_array(jsonb_build_object('sku', 'SKU-' || (i % 4999), 'qty', 2, 'price', 617.28)))";

// ---------------------------------------------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------------------------------------------

/// Where the services are (environment, else `.infra/env`).
#[derive(Clone, Debug)]
pub struct Env {
    /// Superuser URL (`PG_URL`).
    pub pg_url: String,
    /// Directory with `pg_recvlogical`.
    pub pg_bin_dir: PathBuf,
    /// `KAFKA_BOOTSTRAP`.
    pub kafka_bootstrap: String,
    /// `SCHEMA_REGISTRY_URL`.
    pub schema_registry_url: String,
}

#[path = "../../tests/common/services.rs"]
pub mod services;

/// The repository root.
pub fn repo_root() -> PathBuf {
    services::repo_root()
}

impl Env {
    /// Reads the service addresses; fails with instructions when the services were never started.
    pub fn load() -> Result<Env> {
        let need = |k: &str| {
            services::infra_var(k)
                .ok_or_else(|| anyhow!("{k} is not set and .infra/env lacks it: run `bash tests/infra/up.sh` first"))
        };
        let env = Env {
            pg_url: need("PG_URL")?,
            pg_bin_dir: PathBuf::from(need("PG_BIN_DIR")?),
            kafka_bootstrap: need("KAFKA_BOOTSTRAP")?,
            schema_registry_url: need("SCHEMA_REGISTRY_URL")?,
        };
        for addr in [env.pg_url.as_str(), env.kafka_bootstrap.as_str(), env.schema_registry_url.as_str()] {
            if !(addr.contains("127.0.0.1") || addr.contains("localhost")) {
                bail!("benchmarks only talk to local services; {addr} is not on 127.0.0.1");
            }
        }
        Ok(env)
    }

    /// `pg_recvlogical` of the server's version.
    pub fn pg_recvlogical(&self) -> PathBuf {
        self.pg_bin_dir.join("pg_recvlogical")
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------------------------

/// `--name value` / `--flag` arguments (cargo's `--bench` is ignored).
#[derive(Debug, Default)]
pub struct Args {
    values: HashMap<String, Vec<String>>,
    flags: Vec<String>,
}

impl Args {
    /// Parses `std::env::args()`; `with_value` lists the options that take a value.
    pub fn parse(with_value: &[&str]) -> Result<Args> {
        let mut args = Args::default();
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            if a == "--bench" {
                continue;
            }
            let Some(name) = a.strip_prefix("--") else { bail!("unexpected argument {a:?}") };
            let (name, inline) = match name.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (name.to_owned(), None),
            };
            if with_value.contains(&name.as_str()) {
                let v = match inline {
                    Some(v) => v,
                    None => it.next().ok_or_else(|| anyhow!("--{name} needs a value"))?,
                };
                args.values.entry(name).or_default().push(v);
            } else {
                args.flags.push(name);
            }
        }
        Ok(args)
    }

    pub fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    pub fn value(&self, name: &str) -> Option<&str> {
        self.values.get(name).and_then(|v| v.last()).map(String::as_str)
    }

    pub fn all(&self, name: &str) -> Vec<String> {
        self.values.get(name).cloned().unwrap_or_default()
    }

    pub fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T> {
        match self.value(name) {
            None => Ok(default),
            Some(v) => v.replace('_', "").parse().map_err(|_| anyhow!("--{name}: not a number: {v:?}")),
        }
    }

    pub fn unknown_flags(&self, known: &[&str]) -> Result<()> {
        for f in &self.flags {
            if !known.contains(&f.as_str()) {
                bail!("unknown option --{f}");
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------------------------

/// Appends `section<TAB>metric<TAB>value<TAB>unit<TAB>note` to `$BENCH_RESULTS` (when set) and prints it.
pub fn record(section: &str, metric: &str, value: impl std::fmt::Display, unit: &str, note: &str) {
    println!("  {section:<22} {metric:<44} {value:>12} {unit:<8} {note}");
    if let Some(path) = std::env::var_os("BENCH_RESULTS") {
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{section}\t{metric}\t{value}\t{unit}\t{note}");
        }
    }
}

/// `value / target` as a verdict: `ok` or `MISSED`.
pub fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISSED" }
}

/// The `p`-th percentile (0..=100) of sorted values, nearest rank.
pub fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Unique, increasing suffixes within this process.
pub fn unique(kind: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{PREFIX}_{kind}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

pub fn unix_micros_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

// ---------------------------------------------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------------------------------------------

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// User + system CPU seconds of a process (`"self"` or a pid), from `/proc/<pid>/stat`.
pub fn proc_cpu_secs(pid: &str) -> Option<f64> {
    proc_cpu_user_sys(pid).map(|(u, s)| u + s)
}

/// (user, system) CPU seconds of a process, all threads, from `/proc/<pid>/stat` (clock-tick resolution).
pub fn proc_cpu_user_sys(pid: &str) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state(0) ppid(1) ... utime(11) stime(12).
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime / clock_ticks(), stime / clock_ticks()))
}

/// Nanoseconds on a CPU and nanoseconds runnable but waiting for one (the run-queue delay), summed over the live
/// threads of `pid` (`/proc/<pid>/task/*/schedstat`). A thread that exits between two readings drops out of the
/// difference, so this is for long-lived processes.
pub fn proc_sched_ns(pid: u32) -> Option<(u64, u64)> {
    let mut sum = (0u64, 0u64);
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else { continue };
        let mut f = text.split_whitespace().map(|v| v.parse::<u64>().unwrap_or(0));
        sum.0 += f.next().unwrap_or(0);
        sum.1 += f.next().unwrap_or(0);
    }
    Some(sum)
}

/// `pid` and its direct children (a postmaster and its backends, walsenders and auxiliary processes).
pub fn proc_with_children(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // After the command: state, then ppid.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// The machine's busy and total CPU time so far, in clock ticks (`/proc/stat`, all CPUs; busy is everything but
/// idle and iowait).
pub fn machine_cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = f.iter().take(8).sum();
    let idle = f.get(3)? + f.get(4)?;
    Some((total - idle, total))
}

/// Microseconds during which at least one runnable task waited for a CPU (`/proc/pressure/cpu`, "some").
pub fn cpu_pressure_us() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/pressure/cpu").ok()?;
    text.lines()
        .find(|l| l.starts_with("some"))?
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("total=")?.parse().ok())
}

/// A `/proc/<pid>/status` field in kB (`VmRSS`, `VmHWM`).
pub fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

// ---------------------------------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------------------------------

/// A plain SQL connection (driven on the runtime).
pub async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio::time::timeout(Duration::from_secs(10), tokio_postgres::connect(url, NoTls))
        .await
        .context("connecting to PostgreSQL timed out")?
        .with_context(|| format!("connecting to {}", redact(url)))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => "(url)".into(),
    }
}

/// A database of its own for one benchmark, with [`SCHEMA`]; [`BenchDb::drop_all`] removes it with its slots.
#[derive(Clone, Debug)]
pub struct BenchDb {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl BenchDb {
    pub async fn create(env: &Env, kind: &str) -> Result<BenchDb> {
        let name = unique(kind);
        let admin = connect(&env.pg_url).await?;
        admin.batch_execute(&format!("CREATE DATABASE {name}")).await.context("CREATE DATABASE")?;
        let mut u = url::Url::parse(&env.pg_url)?;
        u.set_path(&format!("/{name}"));
        let db = BenchDb { name, url: u.to_string(), admin_url: env.pg_url.clone() };
        db.client().await?.batch_execute(SCHEMA).await.context("creating the outbox table")?;
        Ok(db)
    }

    pub async fn client(&self) -> Result<tokio_postgres::Client> {
        connect(&self.url).await
    }

    /// URL parts for libpq tools: (conninfo without password, password).
    pub fn conninfo(&self) -> (String, String) {
        let u = url::Url::parse(&self.url).expect("valid url");
        let conninfo = format!(
            "host={} port={} user={} dbname={} sslmode=disable",
            u.host_str().unwrap_or("127.0.0.1"),
            u.port().unwrap_or(5432),
            u.username(),
            self.name
        );
        (conninfo, u.password().unwrap_or_default().to_owned())
    }

    /// Drops the slots of this database (waiting boundedly for active ones to be released) and the database.
    pub async fn drop_all(&self) -> Result<()> {
        let admin = connect(&self.admin_url).await?;
        drop_database(&admin, &self.name).await
    }
}

async fn drop_database(admin: &tokio_postgres::Client, name: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows =
            admin.query("SELECT slot_name, active FROM pg_replication_slots WHERE database = $1", &[&name]).await?;
        if rows.is_empty() {
            break;
        }
        for r in &rows {
            let slot: String = r.get(0);
            let active: bool = r.get(1);
            if !active {
                let _ = admin.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await;
            }
        }
        if Instant::now() > deadline {
            bail!("database {name}: slots still active after 30 s; not dropped");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await?;
    Ok(())
}

/// Removes `obbench_*` databases (and their inactive slots) left by benchmark processes that no longer run.
pub async fn cleanup_stale(env: &Env) -> Result<()> {
    let admin = connect(&env.pg_url).await?;
    let rows = admin.query("SELECT datname FROM pg_database WHERE datname LIKE 'obbench\\_%'", &[]).await?;
    for r in rows {
        let name: String = r.get(0);
        // obbench_<kind>_<pid>_<n>
        let pid = name.rsplit('_').nth(1).and_then(|p| p.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        match drop_database(&admin, &name).await {
            Ok(()) => eprintln!("removed stale benchmark database {name}"),
            Err(e) => eprintln!("stale benchmark database {name} not removed: {e:#}"),
        }
    }
    Ok(())
}

pub async fn lsn_query(client: &tokio_postgres::Client, sql: &str) -> Result<Lsn> {
    let s: String = client.query_one(sql, &[]).await?.get(0);
    s.parse().map_err(|e| anyhow!("{sql}: {s:?}: {e:?}"))
}

/// Creates a pgoutput slot by SQL; returns its consistent point.
pub async fn create_slot(client: &tokio_postgres::Client, slot: &str) -> Result<Lsn> {
    let s: String = client
        .query_one("SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot])
        .await
        .with_context(|| format!("creating slot {slot}"))?
        .get(0);
    s.parse().map_err(|e| anyhow!("{e:?}"))
}

/// The slot's `confirmed_flush_lsn` (0/0 when unset or missing).
pub async fn confirmed_flush(client: &tokio_postgres::Client, slot: &str) -> Result<Lsn> {
    let row = client
        .query_opt("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
        .await?;
    Ok(row.and_then(|r| r.get::<_, Option<String>>(0)).and_then(|s| s.parse().ok()).unwrap_or(Lsn::ZERO))
}

/// Generated WAL: `marker` lies inside the last transaction (before its commit record), `end` after it.
#[derive(Clone, Copy, Debug)]
pub struct Generated {
    pub rows: u64,
    pub start: Lsn,
    pub marker: Lsn,
    pub end: Lsn,
    pub seconds: f64,
}

impl Generated {
    pub fn wal_mib(&self) -> f64 {
        self.end.bytes_since(self.start) as f64 / (1024.0 * 1024.0)
    }
}

/// Writes `rows` outbox rows: one transaction per row (`single`) or all in one transaction, numbering from
/// `first`. The last transaction is written by this session directly so that a position inside it is known
/// (`marker`): a slot whose `confirmed_flush_lsn` is past `marker` has confirmed the last row.
pub async fn generate(db: &BenchDb, rows: u64, single: bool, first: u64) -> Result<Generated> {
    assert!(rows >= 1);
    let c = db.client().await?;
    c.batch_execute("SET synchronous_commit = off").await?;
    let start = lsn_query(&c, "SELECT pg_current_wal_insert_lsn()::text").await?;
    let t0 = Instant::now();
    let last = first + rows - 1;
    if single && rows > 1 {
        c.batch_execute(&format!(
            "DO $$ BEGIN FOR i IN {first}..{} LOOP INSERT INTO outbox ({ROW_COLUMNS}) VALUES ({ROW_VALUES}); COMMIT; \
             END LOOP; END $$",
            last - 1
        ))
        .await
        .context("generating single-row transactions")?;
    }
    let from = if single { last } else { first };
    c.batch_execute(&format!(
        "BEGIN; INSERT INTO outbox ({ROW_COLUMNS}) SELECT {ROW_VALUES} FROM generate_series({from}::bigint, {last}) i"
    ))
    .await
    .context("generating rows")?;
    let marker = lsn_query(&c, "SELECT pg_current_wal_insert_lsn()::text").await?;
    c.batch_execute("COMMIT").await?;
    let seconds = t0.elapsed().as_secs_f64();
    let end = lsn_query(&c, "SELECT pg_current_wal_insert_lsn()::text").await?;
    wait_wal_flushed(&c, end).await?;
    Ok(Generated { rows, start, marker, end, seconds })
}

/// Waits until the server flushed its WAL up to `lsn` (asynchronous commits), so no consumer waits for the WAL writer.
pub async fn wait_wal_flushed(c: &tokio_postgres::Client, lsn: Lsn) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while lsn_query(c, "SELECT pg_current_wal_flush_lsn()::text").await? < lsn {
        if Instant::now() > deadline {
            bail!("WAL not flushed to {lsn} within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// CPU seconds of the walsender serving `slot`, sampled from /proc until `until` turns true (approximate: the
/// first sample is taken when the slot shows active, at most a few ms after the start).
pub async fn sample_walsender_cpu(
    probe: &tokio_postgres::Client,
    slot: &str,
    until: impl Fn() -> bool,
    limit: Duration,
) -> Option<f64> {
    let deadline = Instant::now() + limit;
    let mut pid = None;
    while pid.is_none() && Instant::now() < deadline && !until() {
        let row = probe
            .query_opt("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND active", &[&slot])
            .await
            .ok()
            .flatten();
        pid = row.and_then(|r| r.get::<_, Option<i32>>(0));
        if pid.is_none() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let pid = pid?.to_string();
    let first = proc_cpu_secs(&pid)?;
    let mut last = first;
    while !until() && Instant::now() < deadline {
        match proc_cpu_secs(&pid) {
            Some(v) => last = v,
            None => break,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Some(last - first)
}

/// One `pg_recvlogical` run.
#[derive(Clone, Copy, Debug)]
pub struct RecvRun {
    pub wall: Duration,
    /// User + system CPU seconds of pg_recvlogical (from `/usr/bin/time`, if installed).
    pub cpu: Option<f64>,
    pub max_rss_kb: Option<u64>,
    /// CPU seconds of the walsender serving it (sampled).
    pub walsender_cpu: Option<f64>,
}

/// Runs `pg_recvlogical --start` on `slot` to `end` into /dev/null, pgoutput `proto_version` over `publication`.
// Each argument is one pg_recvlogical option; a struct for a single benchmark helper would add nothing.
#[allow(clippy::too_many_arguments)]
pub async fn run_pg_recvlogical(
    env: &Env,
    db: &BenchDb,
    slot: &str,
    publication: &str,
    proto: u32,
    extra_options: &[String],
    end: Lsn,
    timeout: Duration,
) -> Result<RecvRun> {
    let (conninfo, password) = db.conninfo();
    let dir = tempfile::tempdir()?;
    let time_out = dir.path().join("time");
    let gnu_time = Path::new("/usr/bin/time");
    let mut cmd = if gnu_time.exists() {
        let mut c = tokio::process::Command::new(gnu_time);
        c.arg("-f").arg("%e %U %S %M").arg("-o").arg(&time_out).arg(env.pg_recvlogical());
        c
    } else {
        tokio::process::Command::new(env.pg_recvlogical())
    };
    cmd.env("PGPASSWORD", password)
        .args(["-d", &conninfo, "-S", slot, "--start", "--no-loop", "-f", "/dev/null"])
        .arg(format!("--endpos={end}"))
        .args(["-o", &format!("proto_version={proto}"), "-o", &format!("publication_names={publication}")])
        .args(extra_options.iter().flat_map(|o| ["-o", o.as_str()]))
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    let probe = db.client().await?;
    let started = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("running {}", env.pg_recvlogical().display()))?;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&done);
    let sampler = async { sample_walsender_cpu(&probe, slot, || flag.load(Ordering::Relaxed), timeout).await };
    let waiter = async {
        let r = tokio::time::timeout(timeout, child.wait()).await;
        done.store(true, Ordering::Relaxed);
        r
    };
    let (walsender_cpu, status) = tokio::join!(sampler, waiter);
    let wall = started.elapsed();
    let status = match status {
        Ok(s) => s?,
        Err(_) => {
            let _ = child.kill().await;
            bail!("pg_recvlogical did not reach {end} within {timeout:?}");
        }
    };
    if !status.success() {
        bail!("pg_recvlogical failed: {status}");
    }
    let (mut cpu, mut max_rss_kb) = (None, None);
    if let Ok(t) = std::fs::read_to_string(&time_out) {
        let v: Vec<f64> = t.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        if v.len() >= 4 {
            cpu = Some(v[1] + v[2]);
            max_rss_kb = Some(v[3] as u64);
        }
    }
    Ok(RecvRun { wall, cpu, max_rss_kb, walsender_cpu })
}

/// Formats a number of rows per second as `123.4k`.
pub fn krate(v: f64) -> String {
    let mut s = String::new();
    let _ = write!(s, "{:.1}k", v / 1000.0);
    s
}
