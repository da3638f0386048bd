//! # outbox-relay
//!
//! Turns rows of a transactional outbox table in PostgreSQL into Avro records on Kafka, exactly once.
//!
//! # Layout
//!
//! - [`config`]: TOML + environment configuration, connection strings, secret redaction.
//! - [`pg`]: everything PostgreSQL: [`pg::lsn`] positions, [`pg::pgoutput`] decoder (no I/O),
//!   [`pg::replication`] our replication-protocol client, [`pg::txn`] transaction assembly, [`pg::slot`] slot and
//!   publication management over ordinary SQL, [`pg::identity`] which server a checkpoint belongs to.
//! - [`outbox`]: row -> event mapping and routing (Debezium Outbox Event Router compatible).
//! - [`avro`]: event -> Avro value in the Confluent wire format, through the schema registry.
//! - [`kafka`]: transactional producer and checkpoint topic.
//! - [`pipeline`]: the loop that ties them together; acknowledges to PostgreSQL only after the Kafka commit.
//! - [`dead_letter`]: what an event that cannot be mapped, encoded or produced becomes in dead-letter mode.
//! - [`startup`]: the start-up decisions (resume position, gap, lost slot, a checkpoint of another server), shared by
//!   `run` and `check`.
//! - [`check`]: the `check` command's service probes.
//! - [`tail`]: the `tail` command: read a topic back decoded, as a consumer would.
//! - [`metrics`]: Prometheus `/metrics` and `/health`.
//! - `failpoint`: named crash points for the crash-consistency tests (inert unless armed by environment).

pub mod avro;
pub mod check;
pub mod config;
pub mod dead_letter;
#[doc(hidden)]
pub mod failpoint;
pub mod kafka;
pub mod metrics;
pub mod outbox;
pub mod pg;
pub mod pipeline;
pub mod startup;
pub mod tail;
