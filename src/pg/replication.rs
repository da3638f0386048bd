//! Our PostgreSQL logical replication client, on the `postgres-protocol` crate (tokio-postgres has no replication
//! mode): connection + TLS + authentication, replication commands, and the CopyBoth stream with standby status
//! updates.
//!
//! ```text
//!  ConnInfo::from_url ──▶ ReplicationClient::connect ──▶ identify_system / create_replication_slot / ...
//!                                          │ start_replication(ReplicationOptions)
//!                                          ▼
//!                                  ReplicationStream ── next() ──▶ XLogData { wal_start, wal_end, data } ──▶ pgoutput
//!                                          ▲
//!                                          └── ack(lsn) after the Kafka commit ──▶ flush LSN ──▶ confirmed_flush_lsn
//! ```
//!
//! Invariant: the flush position reported to the server is exactly the highest LSN the caller acknowledged, and
//! never goes backwards; everything else the client reports (write/apply) is liveness only. See [`stream`] for the
//! status-update rules and [`error`] for which failures are worth a reconnect ([`Backoff`]).
//!
//! # Server behaviour worth knowing (seen on PostgreSQL 15 and 18)
//!
//! - pgoutput sends Relation messages with `wal_start = 0/0`; only keep the maximum of positions.
//! - A logical `START_REPLICATION` can run once per connection: the walsender does not reset its end-of-streaming
//!   state, so a second one on the same connection ends at once ([`ReplicationClient::start_replication`] refuses).
//! - A walsender may send CopyData after its own CopyDone; [`ReplicationStream::stop`] discards it.
//! - A missing publication is an error (42704) when the first change is decoded up to PostgreSQL 17; PostgreSQL 18
//!   skips it with a WARNING (logged as a server notice) and streams nothing.
//! - `pg_terminate_backend` on the walsender arrives as `FATAL 57P01`, a transient error.
//!
//! # Layout
//!
//! - `framing`: whole backend messages off the socket and frontend messages onto it (`FrameReader`, `FrameWriter`),
//!   the parsing of the tags postgres-protocol does not know, server notices; shared by [`conn`] and [`stream`].
//! - [`conn`]: [`ReplicationClient`]: TCP, TLS (`tls`), startup, trust / password / md5 / SCRAM-SHA-256(-PLUS),
//!   simple queries and the replication commands.
//! - [`commands`]: command text, identifier quoting, protocol-version rules; no I/O.
//! - [`stream`]: `START_REPLICATION` ([`ReplicationClient::start_replication`]), [`ReplicationStream`], keepalives
//!   and standby status updates.
//! - [`error`]: [`ReplicationError`] with `is_transient()`.
//! - [`backoff`]: [`Backoff`] for reconnect loops.

pub mod backoff;
pub mod commands;
pub mod conn;
pub mod error;
mod framing;
pub mod stream;
mod tls;

pub use backoff::Backoff;
pub use commands::{
    CreatedSlot, DEFAULT_STATUS_INTERVAL, DEFAULT_STOP_TIMEOUT, IdentifySystem, MAX_PROTO_VERSION, ReplicationOptions,
    SnapshotAction, Streaming, max_proto_version_for, parse_server_version, quote_identifier, quote_literal,
};
pub use conn::{QueryResult, ReplicationClient, ServerInfo};
pub use error::{DbError, ReplicationError};
pub use stream::{AckHandle, PrimaryKeepalive, ReplicationMessage, ReplicationStream, XLogData};
