//! Replication throughput: our client (`ReplicationClient` + `ReplicationStream` + pgoutput `Decoder` + txn
//! `Assembler`) against `pg_recvlogical` (PostgreSQL's own client, output to /dev/null) on the very same WAL.
//!
//! `cargo bench --bench replication -- [--rows N] [--rounds R] [--shape single|bulk|both] [--proto V]
//!  [--streaming on] [--messages on] [--runtime multi|current] [--quick]`
//!
//! For each shape (N single-row transactions; one N-row transaction) it creates a fresh database with the outbox
//! table and a publication, creates 2R pgoutput slots *before* writing (so every consumer reads exactly the same
//! WAL), writes the rows, waits for the WAL flush, then reads each slot to the end position: R times with our
//! client, R times with `pg_recvlogical --endpos`, alternating which goes first. Reports the best round of each
//! (rows/s), the ratio, CPU microseconds per row of our process (/proc/self/stat), of pg_recvlogical
//! (/usr/bin/time) and of the walsender serving each (sampled /proc/<pid>/stat). Needs `bash tests/infra/up.sh`.
//! Acceptance: ours >= 80 % of pg_recvlogical for single-row transactions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::{Args, BenchDb, Env, Generated, record};
use outbox_relay::pg::conninfo::ConnInfo;
use outbox_relay::pg::lsn::Lsn;
use outbox_relay::pg::pgoutput::{Decoder, DecoderOptions};
use outbox_relay::pg::replication::{ReplicationClient, ReplicationMessage, ReplicationOptions, Streaming};
use outbox_relay::pg::txn::{Assembler, Output, SpillSettings, TxnEvent};

const PUBLICATION: &str = "obbench_pub";
const TARGET_SINGLE: f64 = 0.80;

#[derive(Clone, Copy, Debug)]
struct OursRun {
    wall: Duration,
    cpu: f64,
    walsender_cpu: Option<f64>,
    inserts: u64,
    commits: u64,
}

fn main() -> ExitCode {
    // `--runtime current` (default) is the relay binary's shape since 1d5aca1: its pipeline runs on a thread of its
    // own with a current-thread runtime. `--runtime multi` is the shape before (two workers, the pipeline in
    // `block_on` on the main thread).
    let multi = std::env::args().any(|a| a == "--runtime=multi")
        || std::env::args().collect::<Vec<_>>().windows(2).any(|w| w[0] == "--runtime" && w[1] == "multi");
    let rt = if !multi {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()
    }
    .expect("runtime");
    match rt.block_on(run()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(3),
        Err(e) => {
            eprintln!("replication benchmark failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<bool> {
    let args = Args::parse(&["rows", "rounds", "shape", "proto", "runtime", "streaming", "messages"])?;
    let runtime = args.value("runtime").unwrap_or("current");
    if !["multi", "current"].contains(&runtime) {
        bail!("--runtime multi|current");
    }
    args.unknown_flags(&["quick", "help"])?;
    if args.flag("help") {
        println!(
            "cargo bench --bench replication -- [--rows N] [--rounds R] [--shape single|bulk|both] [--proto 1..4] \
             [--streaming on] [--messages on] \
             [--runtime multi|current] [--quick]"
        );
        return Ok(true);
    }
    let quick = args.flag("quick");
    let rows: u64 = args.num("rows", if quick { 20_000 } else { 200_000 })?;
    let rounds: usize = args.num("rounds", if quick { 1 } else { 3 })?;
    let plugin = Plugin {
        proto: args.num("proto", 1)?,
        streaming: args.value("streaming") == Some("on"),
        messages: args.value("messages") == Some("on"),
    };
    let proto = plugin.proto;
    if (plugin.streaming || plugin.messages) && proto < 2 {
        bail!("--streaming on / --messages on need --proto 2 or higher");
    }
    let shapes: Vec<bool> = match args.value("shape").unwrap_or("both") {
        "single" => vec![true],
        "bulk" => vec![false],
        "both" => vec![true, false],
        s => bail!("--shape {s:?}: single, bulk or both"),
    };
    if !(1..=10).contains(&rounds) || !(1..=5_000_000).contains(&rows) {
        bail!("--rounds 1..=10 and --rows 1..=5000000");
    }
    let env = Env::load()?;
    common::cleanup_stale(&env).await?;
    println!(
        "replication throughput: {rows} rows, {rounds} round(s) per consumer, pgoutput proto_version {proto} streaming {} messages {}, \
         tokio runtime {runtime}",
        plugin.streaming, plugin.messages
    );
    let mut all_ok = true;
    for single in shapes {
        let db = BenchDb::create(&env, "r").await?;
        let result = shape(&env, &db, rows, rounds, plugin, single).await;
        if let Err(e) = db.drop_all().await {
            eprintln!("cleanup of {}: {e:#}", db.name);
        }
        all_ok &= result?;
    }
    Ok(all_ok)
}

/// pgoutput options, the same for both readers.
#[derive(Clone, Copy, Debug)]
struct Plugin {
    proto: u32,
    streaming: bool,
    messages: bool,
}

impl Plugin {
    fn recvlogical_options(self) -> Vec<String> {
        let mut v = Vec::new();
        if self.streaming {
            v.push("streaming=on".to_owned());
        }
        if self.messages {
            v.push("messages=true".to_owned());
        }
        v
    }
}

async fn shape(env: &Env, db: &BenchDb, rows: u64, rounds: usize, plugin: Plugin, single: bool) -> Result<bool> {
    let label = if single { "single-row txns" } else { "one bulk txn" };
    let section = if single { "replication.single" } else { "replication.bulk" };
    let sql = db.client().await?;
    sql.batch_execute(&format!("CREATE PUBLICATION {PUBLICATION} FOR TABLE outbox")).await?;
    let mut ours_slots = Vec::new();
    let mut theirs_slots = Vec::new();
    for i in 0..rounds {
        ours_slots.push(format!("{}_ours_{i}", db.name));
        theirs_slots.push(format!("{}_recv_{i}", db.name));
    }
    let mut points = Vec::new();
    for s in ours_slots.iter().chain(&theirs_slots) {
        points.push(common::create_slot(&sql, s).await?);
    }
    let wal = common::generate(db, rows, single, 1).await?;
    println!(
        "\n{label}: {rows} rows written in {:.1} s; WAL {} .. {} ({:.1} MiB, includes other databases' WAL); slots \
         created at {} .. {}",
        wal.seconds,
        wal.start,
        wal.end,
        wal.wal_mib(),
        points.iter().min().copied().unwrap_or_default(),
        points.iter().max().copied().unwrap_or_default()
    );
    let expected_commits = if single { rows } else { 1 };
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for i in 0..rounds {
        let ours_first = i % 2 == 0;
        for step in 0..2 {
            if (step == 0) == ours_first {
                let r = read_ours(db, &ours_slots[i], plugin, expected_commits, &wal).await?;
                if r.inserts != rows || r.commits != expected_commits {
                    bail!(
                        "our client read {} inserts in {} commits, expected {rows} in {expected_commits}",
                        r.inserts,
                        r.commits
                    );
                }
                println!(
                    "  round {}: ours           {:>8.0} rows/s  ({:.3} s, {:.2} us CPU/row, walsender {:.2} us/row)",
                    i + 1,
                    rows as f64 / r.wall.as_secs_f64(),
                    r.wall.as_secs_f64(),
                    r.cpu * 1e6 / rows as f64,
                    r.walsender_cpu.unwrap_or(f64::NAN) * 1e6 / rows as f64
                );
                ours.push(r);
            } else {
                let r = common::run_pg_recvlogical(
                    env,
                    db,
                    &theirs_slots[i],
                    PUBLICATION,
                    plugin.proto,
                    &plugin.recvlogical_options(),
                    wal.end,
                    Duration::from_secs(600),
                )
                .await?;
                println!(
                    "  round {}: pg_recvlogical {:>8.0} rows/s  ({:.3} s, {:.2} us CPU/row, walsender {:.2} us/row, max RSS {} kB)",
                    i + 1,
                    rows as f64 / r.wall.as_secs_f64(),
                    r.wall.as_secs_f64(),
                    r.cpu.unwrap_or(f64::NAN) * 1e6 / rows as f64,
                    r.walsender_cpu.unwrap_or(f64::NAN) * 1e6 / rows as f64,
                    r.max_rss_kb.unwrap_or(0)
                );
                theirs.push(r);
            }
        }
    }
    let best_ours = ours.iter().min_by_key(|r| r.wall).copied().expect("rounds >= 1");
    let best_theirs = theirs.iter().min_by_key(|r| r.wall).copied().expect("rounds >= 1");
    let rate_ours = rows as f64 / best_ours.wall.as_secs_f64();
    let rate_theirs = rows as f64 / best_theirs.wall.as_secs_f64();
    let ratio = rate_ours / rate_theirs;
    let per_row = |s: f64| format!("{:.2}", s * 1e6 / rows as f64);
    println!("  best of {rounds}:");
    record(section, "pg_recvlogical rows/s", format!("{rate_theirs:.0}"), "rows/s", &format!("{rows} rows, /dev/null"));
    record(section, "ours rows/s (client+decoder+assembler)", format!("{rate_ours:.0}"), "rows/s", "");
    let ok = !single || ratio >= TARGET_SINGLE;
    record(
        section,
        "ours / pg_recvlogical",
        format!("{:.0}", ratio * 100.0),
        "%",
        &if single { format!("target >= 80 %: {}", common::verdict(ok)) } else { "no target".into() },
    );
    record(section, "ours CPU per row", per_row(best_ours.cpu), "us", "our process, user+sys");
    if let Some(c) = best_theirs.cpu {
        record(section, "pg_recvlogical CPU per row", per_row(c), "us", "user+sys");
    }
    if let Some(c) = best_ours.walsender_cpu {
        record(section, "walsender CPU per row (ours)", per_row(c), "us", "server side");
    }
    if let Some(c) = best_theirs.walsender_cpu {
        record(section, "walsender CPU per row (pg_recvlogical)", per_row(c), "us", "server side, sampled");
    }
    Ok(ok)
}

/// Reads `slot` with our client until `expected_commits` transactions were assembled.
async fn read_ours(
    db: &BenchDb,
    slot: &str,
    plugin: Plugin,
    expected_commits: u64,
    wal: &Generated,
) -> Result<OursRun> {
    let proto = plugin.proto;
    let cfg = ConnInfo::from_url(&db.url).context("replication config")?;
    let mut options = ReplicationOptions::new(slot, [PUBLICATION]);
    options.proto_version = Some(proto);
    // The same plugin options as pg_recvlogical gets (its default: streaming off, messages off).
    options.streaming = if plugin.streaming { Streaming::On } else { Streaming::Off };
    options.messages = plugin.messages;
    let decoder_options = DecoderOptions::new(proto)?;
    let deadline = Instant::now() + Duration::from_secs(600);

    let cpu0 = common::proc_cpu_secs("self").unwrap_or(0.0);
    let started = Instant::now();
    let client = ReplicationClient::connect(&cfg).await?;
    let backend = client.backend_pid().to_string();
    let ws0 = common::proc_cpu_secs(&backend);
    let mut stream = client.start_replication(&options).await?;
    let mut decoder = Decoder::new(decoder_options);
    let mut assembler = Assembler::new(decoder_options, Lsn::ZERO, SpillSettings::default());
    let (mut inserts, mut commits) = (0u64, 0u64);
    let mut last_ack = Instant::now();
    while commits < expected_commits {
        if Instant::now() > deadline {
            bail!("our client did not finish within 600 s ({commits} commits)");
        }
        let Some(msg) = stream.next().await? else { bail!("server ended the stream after {commits} commits") };
        let ReplicationMessage::XLogData(x) = msg else { continue };
        let decoded = decoder.decode(&x.data)?;
        match assembler.push(decoded, &x.data, x.wal_start)? {
            Output::None => {}
            Output::Event(TxnEvent::Insert { tuple, .. }) => {
                std::hint::black_box(&tuple);
                inserts += 1;
            }
            Output::Event(TxnEvent::Commit { end_lsn, .. }) => {
                commits += 1;
                if end_lsn > wal.end {
                    bail!("commit at {end_lsn} beyond the generated end {}", wal.end);
                }
                // Acknowledge as the relay does after a Kafka commit: periodically, not per transaction.
                if last_ack.elapsed() >= Duration::from_millis(100) {
                    stream.ack(end_lsn);
                    last_ack = Instant::now();
                }
            }
            Output::Event(_) => {}
            Output::Replay(mut replay) => {
                while let Some(ev) = replay.next_event()? {
                    match ev {
                        TxnEvent::Insert { .. } => inserts += 1,
                        TxnEvent::Commit { .. } => commits += 1,
                        _ => {}
                    }
                }
            }
        }
    }
    let wall = started.elapsed();
    let cpu = common::proc_cpu_secs("self").unwrap_or(0.0) - cpu0;
    let walsender_cpu = match (ws0, common::proc_cpu_secs(&backend)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    match tokio::time::timeout(Duration::from_secs(30), stream.stop()).await {
        Ok(Ok(client)) => {
            let _ = client.close().await;
        }
        Ok(Err(e)) => eprintln!("stopping the stream: {e}"),
        Err(_) => eprintln!("stopping the stream timed out"),
    }
    Ok(OursRun { wall, cpu, walsender_cpu, inserts, commits })
}
