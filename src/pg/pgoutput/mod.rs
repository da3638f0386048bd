//! The pgoutput logical replication protocol: the payload of each `XLogData` message, decoded into a typed
//! [`LogicalMessage`]. No I/O.
//!
//! ```text
//!  XLogData payload (Bytes) ──► decode(&bytes, DecoderOptions, in_stream) ──► LogicalMessage
//!                                      ▲                                        │
//!                                      └────── Decoder: in_stream follows ◄─────┘
//!                                              STREAM START / STREAM STOP
//! ```
//!
//! # Invariants
//!
//! - **Never panics, never over-allocates.** Every read is bounds-checked; a count read from the wire (columns,
//!   relations) is checked against the bytes still present before anything is allocated for it, so a hostile
//!   `0xFFFF` column count costs nothing.
//! - **Zero-copy.** Column values and message contents are [`Bytes`](bytes::Bytes) slices of the input; the only heap
//!   allocations of the hot path (Begin, Insert, Commit) are the `Vec` of a tuple's columns. Names (relation, column,
//!   type, origin, prefix, GID) are owned `String`s: they only occur in rare messages.
//! - **Strict and canonical.** A message decodes only if every byte is consumed, every flag bit is known and every
//!   field the context requires is there. Hence `encode(decode(b)?) == b` for every accepted `b`: the property tests
//!   and the fuzz target check exactly that.
//! - **Context is explicit.** The layout depends on three things the bytes do not say: the negotiated
//!   `proto_version`, whether `streaming = parallel` was asked for (Stream Abort then carries the abort LSN and
//!   time, protocol 4, PostgreSQL 16+), and whether the message sits between Stream Start and Stream Stop (Relation,
//!   Type, Insert, Update, Delete, Truncate and Message then lead with the xid of the (sub)transaction). The
//!   caller states the first two in [`DecoderOptions`]; [`Decoder`] tracks the third from the Stream Start / Stream
//!   Stop messages it decodes, and the free function [`decode`] takes it as an argument.
//!
//! Byte layouts follow PostgreSQL's `src/backend/replication/logical/proto.c` and the documentation page "Logical
//! Replication Message Formats". All integers are big-endian.
//!
//! # Layout
//!
//! Everything public is re-exported here, so callers name `pgoutput::X` whichever file holds `X`.
//!
//! - `messages`: what the decoder returns: [`LogicalMessage`], one struct per message kind, [`MessageKind`],
//!   [`Oid`], [`TupleData`], and the protocol version constants. Plain data, no parsing.
//! - `decoder`: [`decode`], [`Decoder`], [`DecoderOptions`] and [`DecodeError`]: bytes to messages.
//! - `encode`: the test-only writer, messages back to bytes (the inverse of [`decode`]), plus sample messages and the
//!   fuzz input layout. Compiled only for unit tests and with the crate's `testing` feature (benchmarks, fuzz
//!   targets); the relay never sends pgoutput.

mod decoder;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod encode;
mod messages;

pub use decoder::{DecodeError, Decoder, DecoderOptions, OptionsError, decode};
pub use messages::{
    Begin, BeginPrepare, Commit, CommitPrepared, Delete, Insert, LogicalDecodingMessage, LogicalMessage,
    MAX_PROTOCOL_VERSION, MIN_PROTOCOL_VERSION, MessageKind, Oid, OldTuple, Origin, PARALLEL_STREAM_PROTOCOL_VERSION,
    Prepare, Relation, RelationColumn, RollbackPrepared, STREAM_PROTOCOL_VERSION, StreamAbort, StreamAbortInfo,
    StreamCommit, StreamStart, TWO_PHASE_PROTOCOL_VERSION, Truncate, TupleColumn, TupleData, Type, Update,
    replica_identity,
};
