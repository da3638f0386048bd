//! Record value encoding on one core, no I/O: `cargo bench --bench encode`.
//!
//! The event is the relay's steady state: an outbox row with a JSON payload of about 150 bytes (as PostgreSQL's jsonb
//! prints it: members ordered by length). Value mode `envelope` writes it into the fixed envelope record; value mode
//! `registered` parses the JSON and converts it against the event type's schema (a record of a uuid, a decimal, a
//! timestamp, an enum, an array of records and an optional string). Prints nanoseconds per event of each and their
//! ratio (target: `registered` within 20 % of `envelope` is the issue's wish; the figure states where it is). The
//! schema ids are fixed: the registry is not part of the steady state (ids are cached after the first event).
//! `BENCH_SECONDS` sets the measuring time per round (default 2), `BENCH_ROUNDS` the rounds (default 5); the best
//! round of each counts.

use std::hint::black_box;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outbox_relay::avro::registered::{encode_json_payload, parse_schema};
use outbox_relay::avro::{EnvelopeEncoder, RegistrySettings, SchemaId, SchemaRegistry};
use outbox_relay::outbox::{OutboxEvent, Payload};
use outbox_relay::pg::lsn::{Lsn, PgTimestamp};

const SCHEMA: &str = r#"{"type": "record", "name": "OrderCreated", "namespace": "bench", "fields": [
  {"name": "orderId", "type": {"type": "string", "logicalType": "uuid"}},
  {"name": "total", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
  {"name": "placedAt", "type": {"type": "long", "logicalType": "timestamp-micros"}},
  {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID"]}},
  {"name": "lines", "type": {"type": "array", "items": {"type": "record", "name": "Line", "fields": [
      {"name": "sku", "type": "string"}, {"name": "qty", "type": "int"}]}}},
  {"name": "note", "type": ["null", "string"], "default": null}]}"#;

/// 150 bytes, jsonb's member order.
const PAYLOAD: &str = r#"{"note": "gift", "lines": [{"qty": 2, "sku": "A-17"}], "total": 129.5, "status": "PAID", "orderId": "6f1c2a52-0c1e-4b8e-9a57-2d1f0e4c3b2a", "placedAt": 1796119200123456}"#;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn event() -> OutboxEvent {
    OutboxEvent {
        id: "0b6f1c2a-0c1e-4b8e-9a57-2d1f0e4c3b2a".into(),
        aggregate_type: "order".into(),
        aggregate_id: "o-1234567".into(),
        event_type: "OrderCreated".into(),
        timestamp: PgTimestamp(849_000_000_000_000),
        payload: Some(Payload::Text(PAYLOAD.to_owned())),
        topic: "outbox.event.order".into(),
        partition: None,
        headers: vec![],
        envelope_fields: vec![],
        source: "public.outbox".into(),
        commit_lsn: Lsn(1),
    }
}

/// Best events per second over the rounds.
fn measure(name: &str, mut encode: impl FnMut() -> usize) -> f64 {
    let seconds = env_u64("BENCH_SECONDS", 2);
    let rounds = env_u64("BENCH_ROUNDS", 5).max(1);
    let mut best = 0.0_f64;
    for round in 1..=rounds {
        let start = Instant::now();
        let mut n: u64 = 0;
        let mut bytes = 0usize;
        while start.elapsed() < Duration::from_secs(seconds) {
            for _ in 0..1000 {
                bytes += black_box(encode());
            }
            n += 1000;
        }
        let rate = n as f64 / start.elapsed().as_secs_f64();
        println!(
            "{name:<10} round {round}: {:>10.0} events/s ({:.0} ns/event, {} bytes/event)",
            rate,
            1e9 / rate,
            bytes / n as usize
        );
        best = best.max(rate);
    }
    best
}

fn main() -> ExitCode {
    let registry = match SchemaRegistry::new(&RegistrySettings::new("http://127.0.0.1:9")) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let envelope = match EnvelopeEncoder::new(registry, Vec::new()) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let plan = match parse_schema(SCHEMA) {
        Ok((_, plan)) => plan,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let ev = event();
    let Some(payload) = ev.payload.clone() else { return ExitCode::FAILURE };
    println!("payload: {} bytes", PAYLOAD.len());
    // Check once that both succeed, so that the timed loops measure success.
    if let Err(e) =
        envelope.encode_with_id(SchemaId(1), &ev).and(encode_json_payload(SchemaId(2), &plan, &ev, &payload))
    {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    let env_rate = measure("envelope", || envelope.encode_with_id(SchemaId(1), black_box(&ev)).map_or(0, |v| v.len()));
    let reg_rate = measure("registered", || {
        encode_json_payload(SchemaId(2), &plan, black_box(&ev), &payload).map_or(0, |v| v.len())
    });
    println!(
        "\nenvelope {:.0} ns/event, registered {:.0} ns/event: registered takes {:.2}x the envelope's time",
        1e9 / env_rate,
        1e9 / reg_rate,
        env_rate / reg_rate
    );
    ExitCode::SUCCESS
}
