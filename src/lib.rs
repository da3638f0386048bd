//! # outbox-relay
//!
//! Turns rows of a transactional outbox table in PostgreSQL into Avro records on Kafka, exactly once.
//!
//! # Layout
//!
//! Each component owns its settings type next to it (`*/config.rs`); [`config`] only loads, layers and checks them.
//!
//! - [`config`]: the TOML + environment loader, the `Config` that gathers every component's settings, and secret
//!   redaction (`config::redact`).
//! - [`pg`]: everything PostgreSQL: [`pg::config`] its settings, [`pg::conninfo`] the one connection configuration
//!   (URL, hosts, TLS) both connections use, [`pg::lsn`] positions, [`pg::pgoutput`] the decoder (message types,
//!   decoder, and a test-only encoder behind the `testing` feature; no I/O), [`pg::replication`] our
//!   replication-protocol client (framing, commands, stream), [`pg::txn`] transaction assembly with spill,
//!   [`pg::slot`] slot and publication management over SQL, [`pg::identity`] which server a checkpoint belongs to.
//! - [`outbox`]: row -> event mapping and routing (Debezium Outbox Event Router compatible), with its settings.
//! - [`avro`]: event -> Avro value in the Confluent wire format, through the schema registry, with its settings:
//!   the value modes (envelope, Debezium's payload, `registered` via [`avro::json`]), the registry client, and
//!   [`avro::schemas`] / [`avro::compat`], the evolution checks of `schemas check` and of start-up.
//! - [`debezium`]: migration from Debezium: `import-debezium` and the hand-over from its committed offset.
//! - [`kafka`]: transactional producer, topics ([`kafka::topic`] name rules), the checkpoint topic, with its settings.
//! - [`preflight`]: what start-up verifies before it changes anything (server settings, outbox tables, spill
//!   directory, the replication connection), as typed findings.
//! - [`startup`]: the start-up decision (resume position, gap, lost slot, a checkpoint of another server).
//! - [`pipeline`]: the loop that ties them together; acknowledges to PostgreSQL only after the Kafka commit.
//! - [`leader`]: leadership among replicas of one connector (a lease held in PostgreSQL); runs the pipeline only
//!   while holding it, with its settings.
//! - [`dead_letter`]: what an event that cannot be mapped, encoded or produced becomes in dead-letter mode.
//! - [`check`]: the `check` command: [`preflight`] and [`startup`] run as a dry run that reports instead of failing.
//! - [`tail`]: the `tail` command: read a topic back decoded, as a consumer would.
//! - [`status`]: the `status` command: checkpoint, slot, leader and consumer lag, read from the services.
//! - [`metrics`]: Prometheus `/metrics`, `/health` and `/ready`, with its settings.
//! - [`monitor`]: the replication slot as the server sees it (retained and pending WAL, `wal_status`), polled on a
//!   connection of its own for the metrics.
//! - `failpoint`: named crash points for the crash-consistency tests (inert unless armed by environment).

pub mod avro;
pub mod check;
pub mod config;
pub mod dead_letter;
pub mod debezium;
#[doc(hidden)]
pub mod failpoint;
pub mod kafka;
pub mod leader;
pub mod metrics;
pub mod monitor;
pub mod outbox;
pub mod pg;
pub mod pipeline;
pub mod preflight;
pub mod startup;
pub mod status;
pub mod tail;

/// `error: source: source ...`: an error and its sources for a message, skipping a source whose text its parent
/// already ends with (many wrappers repeat their source).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}
