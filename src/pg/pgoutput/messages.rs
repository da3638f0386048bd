//! The pgoutput messages as the decoder returns them: [`LogicalMessage`] with one struct per message kind, the
//! [`MessageKind`] of each tag byte, and the values they carry ([`Oid`], [`TupleData`], ...).
//!
//! Invariant: plain data, no I/O and no parsing. Each struct holds every field of its message as sent, in wire
//! terms, and nothing derived from them, so one message has exactly one encoding: what the decoder reads, the
//! test-only encoder writes back byte for byte. The protocol rules that depend on no bytes (which version
//! introduced a kind, where a kind may stand relative to a streamed block) are stated here, per [`MessageKind`].

use std::fmt;

use bytes::Bytes;

use crate::pg::lsn::{Lsn, PgTimestamp, Xid};

/// Lowest pgoutput `proto_version` this decoder understands.
pub const MIN_PROTOCOL_VERSION: u32 = 1;
/// Highest pgoutput `proto_version` this decoder understands (PostgreSQL 16 to 18).
pub const MAX_PROTOCOL_VERSION: u32 = 4;
/// Protocol version that introduced streaming of in-progress transactions (PostgreSQL 14).
pub const STREAM_PROTOCOL_VERSION: u32 = 2;
/// Protocol version that introduced two-phase commit messages (PostgreSQL 15).
pub const TWO_PHASE_PROTOCOL_VERSION: u32 = 3;
/// Protocol version that introduced parallel streaming (PostgreSQL 16).
pub const PARALLEL_STREAM_PROTOCOL_VERSION: u32 = 4;

/// A PostgreSQL object id (relation, type).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Oid(pub u32);

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Oid({})", self.0)
    }
}

// ---------------------------------------------------------------------------------------------------------------------
// Message kinds
// ---------------------------------------------------------------------------------------------------------------------

/// The kind of a pgoutput message, one per tag byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MessageKind {
    /// `B`
    Begin,
    /// `C`
    Commit,
    /// `O`
    Origin,
    /// `R`
    Relation,
    /// `Y`
    Type,
    /// `I`
    Insert,
    /// `U`
    Update,
    /// `D`
    Delete,
    /// `T`
    Truncate,
    /// `M`
    Message,
    /// `S` (protocol 2+)
    StreamStart,
    /// `E` (protocol 2+)
    StreamStop,
    /// `c` (protocol 2+)
    StreamCommit,
    /// `A` (protocol 2+)
    StreamAbort,
    /// `b` (protocol 3+)
    BeginPrepare,
    /// `P` (protocol 3+)
    Prepare,
    /// `K` (protocol 3+)
    CommitPrepared,
    /// `r` (protocol 3+)
    RollbackPrepared,
    /// `p` (protocol 3+)
    StreamPrepare,
}

/// Where a message may appear relative to a Stream Start .. Stream Stop block.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Placement {
    /// Only outside a streamed block.
    Outside,
    /// Only inside (Stream Stop).
    Inside,
    /// Both; inside, the message leads with the streamed transaction's xid.
    EitherWithXid,
    /// Both, with the same layout (Origin).
    Either,
}

impl MessageKind {
    /// Every kind, in tag order of the documentation.
    pub const ALL: [MessageKind; 19] = [
        MessageKind::Begin,
        MessageKind::Commit,
        MessageKind::Origin,
        MessageKind::Relation,
        MessageKind::Type,
        MessageKind::Insert,
        MessageKind::Update,
        MessageKind::Delete,
        MessageKind::Truncate,
        MessageKind::Message,
        MessageKind::StreamStart,
        MessageKind::StreamStop,
        MessageKind::StreamCommit,
        MessageKind::StreamAbort,
        MessageKind::BeginPrepare,
        MessageKind::Prepare,
        MessageKind::CommitPrepared,
        MessageKind::RollbackPrepared,
        MessageKind::StreamPrepare,
    ];

    /// The tag byte on the wire.
    pub const fn tag(self) -> u8 {
        match self {
            MessageKind::Begin => b'B',
            MessageKind::Commit => b'C',
            MessageKind::Origin => b'O',
            MessageKind::Relation => b'R',
            MessageKind::Type => b'Y',
            MessageKind::Insert => b'I',
            MessageKind::Update => b'U',
            MessageKind::Delete => b'D',
            MessageKind::Truncate => b'T',
            MessageKind::Message => b'M',
            MessageKind::StreamStart => b'S',
            MessageKind::StreamStop => b'E',
            MessageKind::StreamCommit => b'c',
            MessageKind::StreamAbort => b'A',
            MessageKind::BeginPrepare => b'b',
            MessageKind::Prepare => b'P',
            MessageKind::CommitPrepared => b'K',
            MessageKind::RollbackPrepared => b'r',
            MessageKind::StreamPrepare => b'p',
        }
    }

    /// The kind for a tag byte, if it is one.
    pub const fn from_tag(tag: u8) -> Option<MessageKind> {
        Some(match tag {
            b'B' => MessageKind::Begin,
            b'C' => MessageKind::Commit,
            b'O' => MessageKind::Origin,
            b'R' => MessageKind::Relation,
            b'Y' => MessageKind::Type,
            b'I' => MessageKind::Insert,
            b'U' => MessageKind::Update,
            b'D' => MessageKind::Delete,
            b'T' => MessageKind::Truncate,
            b'M' => MessageKind::Message,
            b'S' => MessageKind::StreamStart,
            b'E' => MessageKind::StreamStop,
            b'c' => MessageKind::StreamCommit,
            b'A' => MessageKind::StreamAbort,
            b'b' => MessageKind::BeginPrepare,
            b'P' => MessageKind::Prepare,
            b'K' => MessageKind::CommitPrepared,
            b'r' => MessageKind::RollbackPrepared,
            b'p' => MessageKind::StreamPrepare,
            _ => return None,
        })
    }

    /// The lowest protocol version in which PostgreSQL sends this kind.
    pub const fn min_protocol_version(self) -> u32 {
        match self {
            MessageKind::Begin
            | MessageKind::Commit
            | MessageKind::Origin
            | MessageKind::Relation
            | MessageKind::Type
            | MessageKind::Insert
            | MessageKind::Update
            | MessageKind::Delete
            | MessageKind::Truncate
            | MessageKind::Message => MIN_PROTOCOL_VERSION,
            MessageKind::StreamStart
            | MessageKind::StreamStop
            | MessageKind::StreamCommit
            | MessageKind::StreamAbort => STREAM_PROTOCOL_VERSION,
            MessageKind::BeginPrepare
            | MessageKind::Prepare
            | MessageKind::CommitPrepared
            | MessageKind::RollbackPrepared
            | MessageKind::StreamPrepare => TWO_PHASE_PROTOCOL_VERSION,
        }
    }

    /// PostgreSQL's own name for the kind (`logicalrep_message_type`), as used in its log lines.
    pub const fn name(self) -> &'static str {
        match self {
            MessageKind::Begin => "BEGIN",
            MessageKind::Commit => "COMMIT",
            MessageKind::Origin => "ORIGIN",
            MessageKind::Relation => "RELATION",
            MessageKind::Type => "TYPE",
            MessageKind::Insert => "INSERT",
            MessageKind::Update => "UPDATE",
            MessageKind::Delete => "DELETE",
            MessageKind::Truncate => "TRUNCATE",
            MessageKind::Message => "MESSAGE",
            MessageKind::StreamStart => "STREAM START",
            MessageKind::StreamStop => "STREAM STOP",
            MessageKind::StreamCommit => "STREAM COMMIT",
            MessageKind::StreamAbort => "STREAM ABORT",
            MessageKind::BeginPrepare => "BEGIN PREPARE",
            MessageKind::Prepare => "PREPARE",
            MessageKind::CommitPrepared => "COMMIT PREPARED",
            MessageKind::RollbackPrepared => "ROLLBACK PREPARED",
            MessageKind::StreamPrepare => "STREAM PREPARE",
        }
    }

    /// pgoutput writes these only between Stream Start and Stream Stop, or only outside; the apply worker of
    /// PostgreSQL rejects the others ("STREAM COMMIT message without STREAM STOP" and the like).
    pub(super) const fn placement(self) -> Placement {
        match self {
            MessageKind::Relation
            | MessageKind::Type
            | MessageKind::Insert
            | MessageKind::Update
            | MessageKind::Delete
            | MessageKind::Truncate
            | MessageKind::Message => Placement::EitherWithXid,
            MessageKind::Origin => Placement::Either,
            MessageKind::StreamStop => Placement::Inside,
            MessageKind::Begin
            | MessageKind::Commit
            | MessageKind::StreamStart
            | MessageKind::StreamCommit
            | MessageKind::StreamAbort
            | MessageKind::BeginPrepare
            | MessageKind::Prepare
            | MessageKind::CommitPrepared
            | MessageKind::RollbackPrepared
            | MessageKind::StreamPrepare => Placement::Outside,
        }
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// ---------------------------------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------------------------------

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogicalMessage {
    /// `B`: a transaction starts.
    Begin(Begin),
    /// `C`: the transaction begun by the last [`Begin`] committed.
    Commit(Commit),
    /// `O`: the transaction (or streamed chunk) was replicated from another origin.
    Origin(Origin),
    /// `R`: describes a relation before the first change to it in the session (and after it changes).
    Relation(Relation),
    /// `Y`: describes a non-builtin type used by a following Relation.
    Type(Type),
    /// `I`: a row inserted.
    Insert(Insert),
    /// `U`: a row updated.
    Update(Update),
    /// `D`: a row deleted.
    Delete(Delete),
    /// `T`: relations truncated.
    Truncate(Truncate),
    /// `M`: a logical decoding message (`pg_logical_emit_message`).
    Message(LogicalDecodingMessage),
    /// `S`: a chunk of an in-progress transaction follows.
    StreamStart(StreamStart),
    /// `E`: the chunk ends.
    StreamStop,
    /// `c`: a streamed transaction committed.
    StreamCommit(StreamCommit),
    /// `A`: a streamed (sub)transaction aborted.
    StreamAbort(StreamAbort),
    /// `b`: a prepared transaction starts.
    BeginPrepare(BeginPrepare),
    /// `P`: the transaction begun by [`BeginPrepare`] was prepared.
    Prepare(Prepare),
    /// `K`: a prepared transaction committed.
    CommitPrepared(CommitPrepared),
    /// `r`: a prepared transaction rolled back.
    RollbackPrepared(RollbackPrepared),
    /// `p`: a streamed transaction was prepared.
    StreamPrepare(Prepare),
}

impl LogicalMessage {
    /// The kind of this message.
    pub const fn kind(&self) -> MessageKind {
        match self {
            LogicalMessage::Begin(_) => MessageKind::Begin,
            LogicalMessage::Commit(_) => MessageKind::Commit,
            LogicalMessage::Origin(_) => MessageKind::Origin,
            LogicalMessage::Relation(_) => MessageKind::Relation,
            LogicalMessage::Type(_) => MessageKind::Type,
            LogicalMessage::Insert(_) => MessageKind::Insert,
            LogicalMessage::Update(_) => MessageKind::Update,
            LogicalMessage::Delete(_) => MessageKind::Delete,
            LogicalMessage::Truncate(_) => MessageKind::Truncate,
            LogicalMessage::Message(_) => MessageKind::Message,
            LogicalMessage::StreamStart(_) => MessageKind::StreamStart,
            LogicalMessage::StreamStop => MessageKind::StreamStop,
            LogicalMessage::StreamCommit(_) => MessageKind::StreamCommit,
            LogicalMessage::StreamAbort(_) => MessageKind::StreamAbort,
            LogicalMessage::BeginPrepare(_) => MessageKind::BeginPrepare,
            LogicalMessage::Prepare(_) => MessageKind::Prepare,
            LogicalMessage::CommitPrepared(_) => MessageKind::CommitPrepared,
            LogicalMessage::RollbackPrepared(_) => MessageKind::RollbackPrepared,
            LogicalMessage::StreamPrepare(_) => MessageKind::StreamPrepare,
        }
    }
}

/// `B`: begin of a (non-streamed) transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the commit record; the matching [`Commit::commit_lsn`] equals it. Never `0/0`.
    pub final_lsn: Lsn,
    /// Commit time.
    pub commit_timestamp: PgTimestamp,
    /// Transaction id.
    pub xid: Xid,
}

/// `C`: commit of the transaction opened by the last [`Begin`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// LSN just past the commit record: where to resume after this transaction.
    pub end_lsn: Lsn,
    /// Commit time.
    pub commit_timestamp: PgTimestamp,
}

/// `O`: the changes come from another replication origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// LSN of the commit on the origin server.
    pub origin_lsn: Lsn,
    /// Origin name.
    pub name: String,
}

/// `relreplident` of a [`Relation`]: `d` default (primary key), `n` nothing, `f` full, `i` index.
pub mod replica_identity {
    /// Replica identity is the primary key.
    pub const DEFAULT: u8 = b'd';
    /// No replica identity.
    pub const NOTHING: u8 = b'n';
    /// All columns.
    pub const FULL: u8 = b'f';
    /// A chosen unique index.
    pub const INDEX: u8 = b'i';
}

/// `R`: a relation's shape. Sent before the first change to it in a session and whenever it may have changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Inside a Stream Start .. Stream Stop block, the (sub)transaction it belongs to; `None` outside.
    pub xid: Option<Xid>,
    /// Relation OID; changes refer to the relation by it.
    pub oid: Oid,
    /// Schema name as sent: the empty string stands for `pg_catalog` (see [`Relation::schema`]).
    pub namespace: String,
    /// Relation name.
    pub name: String,
    /// `relreplident`, one of [`replica_identity`].
    pub replica_identity: u8,
    /// Published columns, in tuple order.
    pub columns: Vec<RelationColumn>,
}

impl Relation {
    /// The schema name, with PostgreSQL's empty-means-`pg_catalog` shorthand expanded.
    pub fn schema(&self) -> &str {
        if self.namespace.is_empty() { "pg_catalog" } else { &self.namespace }
    }
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Flags; bit 0 ([`RelationColumn::KEY`]) marks a replica identity (key) column.
    pub flags: u8,
    /// Column name.
    pub name: String,
    /// OID of the column's type.
    pub type_oid: Oid,
    /// `atttypmod` (for example `varchar(n)` length + 4), or -1.
    pub type_modifier: i32,
}

impl RelationColumn {
    /// Flag bit: the column is part of the replica identity.
    pub const KEY: u8 = 1;

    /// Whether the column is part of the replica identity.
    pub const fn is_key(&self) -> bool {
        self.flags & Self::KEY != 0
    }
}

/// `Y`: a type's name, sent before a Relation that uses a non-builtin type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Type {
    /// Inside a streamed block, the (sub)transaction the change belongs to; `None` outside.
    pub xid: Option<Xid>,
    /// Type OID.
    pub oid: Oid,
    /// Schema name; empty for `pg_catalog`.
    pub namespace: String,
    /// Type name.
    pub name: String,
}

/// The column values of one row.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TupleData {
    /// One entry per column of the [`Relation`], in order.
    pub columns: Vec<TupleColumn>,
}

impl TupleData {
    /// Number of columns.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    /// Whether there are no columns.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// The value at `index`, if there is such a column.
    pub fn get(&self, index: usize) -> Option<&TupleColumn> {
        self.columns.get(index)
    }
}

/// One column value of a [`TupleData`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleColumn {
    /// `n`: SQL NULL.
    Null,
    /// `u`: an unchanged TOASTed value whose bytes were not sent (only in Update new tuples).
    UnchangedToast,
    /// `t`: the type's text output, in the connection's client encoding.
    Text(Bytes),
    /// `b`: the type's binary send format (subscription option `binary`).
    Binary(Bytes),
}

impl TupleColumn {
    /// The raw bytes of a text or binary value.
    pub fn bytes(&self) -> Option<&Bytes> {
        match self {
            TupleColumn::Text(b) | TupleColumn::Binary(b) => Some(b),
            TupleColumn::Null | TupleColumn::UnchangedToast => None,
        }
    }

    /// The value as `&str` when it is a text value in valid UTF-8.
    pub fn as_text(&self) -> Option<Result<&str, std::str::Utf8Error>> {
        match self {
            TupleColumn::Text(b) => Some(std::str::from_utf8(b)),
            _ => None,
        }
    }
}

/// The old row image of an Update or Delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `K`: only the replica identity columns are meaningful (the others are null).
    Key(TupleData),
    /// `O`: the whole old row (`REPLICA IDENTITY FULL`).
    Full(TupleData),
}

impl OldTuple {
    /// The tuple, whichever kind.
    pub fn tuple(&self) -> &TupleData {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// `I`: a row inserted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// Inside a streamed block, the (sub)transaction the change belongs to; `None` outside.
    pub xid: Option<Xid>,
    /// The relation, as described by an earlier [`Relation`].
    pub relation_oid: Oid,
    /// The new row.
    pub new_tuple: TupleData,
}

/// `U`: a row updated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// Inside a streamed block, the (sub)transaction the change belongs to; `None` outside.
    pub xid: Option<Xid>,
    /// The relation.
    pub relation_oid: Oid,
    /// The old key (when it changed) or old row (`REPLICA IDENTITY FULL`), if sent.
    pub old_tuple: Option<OldTuple>,
    /// The new row; unchanged TOASTed columns are [`TupleColumn::UnchangedToast`].
    pub new_tuple: TupleData,
}

/// `D`: a row deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// Inside a streamed block, the (sub)transaction the change belongs to; `None` outside.
    pub xid: Option<Xid>,
    /// The relation.
    pub relation_oid: Oid,
    /// The old key or row.
    pub old_tuple: OldTuple,
}

/// `T`: relations truncated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// Inside a streamed block, the (sub)transaction the change belongs to; `None` outside.
    pub xid: Option<Xid>,
    /// `TRUNCATE ... CASCADE`.
    pub cascade: bool,
    /// `TRUNCATE ... RESTART IDENTITY`.
    pub restart_identity: bool,
    /// The truncated relations.
    pub relation_oids: Vec<Oid>,
}

/// `M`: a message written by `pg_logical_emit_message(transactional, prefix, content)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalDecodingMessage {
    /// Inside a streamed block, the (sub)transaction the change belongs to; `None` outside.
    pub xid: Option<Xid>,
    /// Whether the message belongs to the enclosing transaction (else it was emitted immediately).
    pub transactional: bool,
    /// LSN of the message.
    pub lsn: Lsn,
    /// The prefix given to `pg_logical_emit_message`; consumers select messages by it.
    pub prefix: String,
    /// The content, as bytes.
    pub content: Bytes,
}

/// `S`: a chunk of an in-progress transaction follows, up to [`LogicalMessage::StreamStop`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStart {
    /// The streamed (top-level) transaction.
    pub xid: Xid,
    /// Whether this is the first chunk of that transaction.
    pub first_segment: bool,
}

/// `c`: a streamed transaction committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCommit {
    /// The streamed transaction.
    pub xid: Xid,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// LSN just past the commit record.
    pub end_lsn: Lsn,
    /// Commit time.
    pub commit_timestamp: PgTimestamp,
}

/// `A`: a streamed (sub)transaction aborted; discard what was streamed for `subxid` (all of `xid` when equal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAbort {
    /// The top-level transaction.
    pub xid: Xid,
    /// The aborted subtransaction, or `xid` itself.
    pub subxid: Xid,
    /// Present exactly when [`DecoderOptions::stream_abort_has_info`](super::DecoderOptions::stream_abort_has_info).
    pub info: Option<StreamAbortInfo>,
}

/// The fields that protocol 4 with `streaming = parallel` adds to Stream Abort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamAbortInfo {
    /// LSN of the abort record.
    pub abort_lsn: Lsn,
    /// Abort time.
    pub abort_timestamp: PgTimestamp,
}

/// `b`: a two-phase transaction starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeginPrepare {
    /// LSN of the prepare record. Never `0/0`.
    pub prepare_lsn: Lsn,
    /// LSN just past the prepare record. Never `0/0`.
    pub end_lsn: Lsn,
    /// Prepare time.
    pub prepare_timestamp: PgTimestamp,
    /// Transaction id.
    pub xid: Xid,
    /// The user's global transaction id (`PREPARE TRANSACTION 'gid'`).
    pub gid: String,
}

/// `P` and `p`: a (streamed) transaction was prepared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepare {
    /// LSN of the prepare record. Never `0/0`.
    pub prepare_lsn: Lsn,
    /// LSN just past the prepare record. Never `0/0`.
    pub end_lsn: Lsn,
    /// Prepare time.
    pub prepare_timestamp: PgTimestamp,
    /// Transaction id. Never 0.
    pub xid: Xid,
    /// Global transaction id.
    pub gid: String,
}

/// `K`: a prepared transaction committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPrepared {
    /// LSN of the commit-prepared record. Never `0/0`.
    pub commit_lsn: Lsn,
    /// LSN just past it. Never `0/0`.
    pub end_lsn: Lsn,
    /// Commit time.
    pub commit_timestamp: PgTimestamp,
    /// Transaction id.
    pub xid: Xid,
    /// Global transaction id.
    pub gid: String,
}

/// `r`: a prepared transaction rolled back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackPrepared {
    /// End LSN of the prepared transaction. Never `0/0`.
    pub prepare_end_lsn: Lsn,
    /// End LSN of the rollback-prepared record. Never `0/0`.
    pub rollback_end_lsn: Lsn,
    /// Prepare time.
    pub prepare_timestamp: PgTimestamp,
    /// Rollback time.
    pub rollback_timestamp: PgTimestamp,
    /// Transaction id.
    pub xid: Xid,
    /// Global transaction id.
    pub gid: String,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_and_are_distinct() {
        for kind in MessageKind::ALL {
            assert_eq!(MessageKind::from_tag(kind.tag()), Some(kind));
        }
        let tags: std::collections::HashSet<_> = MessageKind::ALL.iter().map(|k| k.tag()).collect();
        assert_eq!(tags.len(), MessageKind::ALL.len());
    }
}
