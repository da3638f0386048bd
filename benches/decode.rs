//! pgoutput decode throughput on one core: `cargo bench --bench decode --features testing` (the feature brings the
//! test-only encoder that writes the input).
//!
//! The mix is the relay's steady state: transactions of Begin, one Insert of an outbox row (six text columns, a JSON
//! payload of about 150 bytes) and Commit, pre-encoded exactly as PostgreSQL sends them. Prints messages per second
//! (target: at least 2 million) and the input rate. Plain `std::time`, no harness: `BENCH_SECONDS` sets the
//! measuring time per round (default 2), `BENCH_ROUNDS` the number of rounds (default 5); the best round counts.

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use outbox_relay::pg::pgoutput::encode::{encode, outbox_relation, outbox_txn};
use outbox_relay::pg::pgoutput::{Decoder, DecoderOptions, LogicalMessage};

/// Distinct transactions in the input, so that the branch predictor does not see one message over and over.
const TXNS: u32 = 1024;
const TARGET_PER_SEC: f64 = 2_000_000.0;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> ExitCode {
    let options = match DecoderOptions::new(1) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let relation = encode(&LogicalMessage::Relation(outbox_relation(16_384)));
    let messages: Vec<Bytes> = (0..TXNS)
        .flat_map(|i| outbox_txn(16_384, 1000 + i, 0x16_0000_0000 + u64::from(i) * 0x400))
        .map(|m| encode(&m))
        .collect();
    let input_bytes: usize = messages.iter().map(Bytes::len).sum();
    let insert_len = messages.get(1).map_or(0, Bytes::len);

    // Check once that the input decodes, so that the timed loop measures success, not an early error.
    let mut decoder = Decoder::new(options);
    if let Err(e) = decoder.decode(&relation) {
        eprintln!("relation: {e}");
        return ExitCode::FAILURE;
    }
    for m in &messages {
        if let Err(e) = decoder.decode(m) {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    }

    let seconds = env_u64("BENCH_SECONDS", 2);
    let rounds = env_u64("BENCH_ROUNDS", 5).max(1);
    let mut best = 0.0_f64;
    for round in 1..=rounds {
        let mut decoded: u64 = 0;
        let mut failed: u64 = 0;
        let start = Instant::now();
        let budget = Duration::from_secs(seconds);
        while start.elapsed() < budget {
            for m in &messages {
                match decoder.decode(black_box(m)) {
                    Ok(msg) => {
                        black_box(&msg);
                    }
                    Err(_) => failed += 1,
                }
            }
            decoded += messages.len() as u64;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let per_sec = decoded as f64 / elapsed;
        let mib_per_sec = (decoded as f64 / messages.len() as f64) * input_bytes as f64 / elapsed / (1024.0 * 1024.0);
        println!(
            "round {round}: {decoded} messages in {elapsed:.2} s: {:.2} M messages/s, {mib_per_sec:.0} MiB/s{}",
            per_sec / 1e6,
            if failed > 0 { format!(" ({failed} failed)") } else { String::new() }
        );
        if failed > 0 {
            return ExitCode::FAILURE;
        }
        best = best.max(per_sec);
    }
    // Names are owned Strings (one allocation each); Relation messages are rare, but show what they cost.
    let start = Instant::now();
    let mut relations: u64 = 0;
    while start.elapsed() < Duration::from_millis(500) {
        for _ in 0..1000 {
            if let Ok(msg) = decoder.decode(black_box(&relation)) {
                black_box(&msg);
                relations += 1;
            }
        }
    }
    println!(
        "relation (6 columns, 8 names): {:.2} M messages/s",
        relations as f64 / start.elapsed().as_secs_f64() / 1e6
    );
    println!(
        "pgoutput decode (Begin + Insert of {insert_len} bytes + Commit): best {:.2} M messages/s on one core \
         (target {:.1} M): {}",
        best / 1e6,
        TARGET_PER_SEC / 1e6,
        if best >= TARGET_PER_SEC { "ok" } else { "BELOW TARGET" }
    );
    ExitCode::SUCCESS
}
