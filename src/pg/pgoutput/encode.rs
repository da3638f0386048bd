//! Writes messages byte for byte as PostgreSQL's `proto.c` does. For tests and fuzz seeds only: the relay never
//! sends pgoutput, and this module is compiled only for unit tests and with the crate's `testing` feature (the
//! `decode` benchmark and the fuzz targets enable it).
//!
//! Invariant: the exact inverse of [`decode`](super::decode): for every message it accepts, `encode` writes the
//! bytes it came from, and what `encode` writes from a message that PostgreSQL could send decodes back to that
//! message in its context.
//!
//! The context is in the message itself: an `xid: Some(..)` on Relation, Type, Insert, Update, Delete, Truncate or
//! Message writes the in-stream xid, and a Stream Abort's `info: Some(..)` writes the parallel-streaming fields.
//! Strings must not contain NUL and counts must fit their wire types (PostgreSQL never produces others); the
//! encoder writes them as given, so the output would then not decode back to the same message.

use bytes::{BufMut, Bytes, BytesMut};

use super::decoder::{MESSAGE_TRANSACTIONAL, TRUNCATE_CASCADE, TRUNCATE_RESTART_SEQS};
use super::{
    Begin, Commit, DecoderOptions, Insert, LogicalDecodingMessage, LogicalMessage, Oid, OldTuple, Prepare, Relation,
    RelationColumn, StreamAbortInfo, TupleColumn, TupleData,
};
use crate::pg::lsn::{Lsn, PgTimestamp, Xid};

/// The message as a fresh buffer.
pub fn encode(msg: &LogicalMessage) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    encode_into(msg, &mut out);
    out.freeze()
}

/// Appends the message to `out`.
pub fn encode_into(msg: &LogicalMessage, out: &mut BytesMut) {
    out.put_u8(msg.kind().tag());
    match msg {
        LogicalMessage::Begin(m) => {
            lsn(out, m.final_lsn);
            ts(out, m.commit_timestamp);
            xid(out, m.xid);
        }
        LogicalMessage::Commit(m) => {
            out.put_u8(0);
            lsn(out, m.commit_lsn);
            lsn(out, m.end_lsn);
            ts(out, m.commit_timestamp);
        }
        LogicalMessage::Origin(m) => {
            lsn(out, m.origin_lsn);
            cstr(out, &m.name);
        }
        LogicalMessage::Relation(m) => {
            opt_xid(out, m.xid);
            oid(out, m.oid);
            cstr(out, &m.namespace);
            cstr(out, &m.name);
            out.put_u8(m.replica_identity);
            out.put_u16(u16::try_from(m.columns.len()).unwrap_or(u16::MAX));
            for c in &m.columns {
                out.put_u8(c.flags);
                cstr(out, &c.name);
                oid(out, c.type_oid);
                out.put_i32(c.type_modifier);
            }
        }
        LogicalMessage::Type(m) => {
            opt_xid(out, m.xid);
            oid(out, m.oid);
            cstr(out, &m.namespace);
            cstr(out, &m.name);
        }
        LogicalMessage::Insert(m) => {
            opt_xid(out, m.xid);
            oid(out, m.relation_oid);
            out.put_u8(b'N');
            tuple(out, &m.new_tuple);
        }
        LogicalMessage::Update(m) => {
            opt_xid(out, m.xid);
            oid(out, m.relation_oid);
            if let Some(old) = &m.old_tuple {
                old_tuple(out, old);
            }
            out.put_u8(b'N');
            tuple(out, &m.new_tuple);
        }
        LogicalMessage::Delete(m) => {
            opt_xid(out, m.xid);
            oid(out, m.relation_oid);
            old_tuple(out, &m.old_tuple);
        }
        LogicalMessage::Truncate(m) => {
            opt_xid(out, m.xid);
            out.put_i32(i32::try_from(m.relation_oids.len()).unwrap_or(i32::MAX));
            let mut flags = 0;
            if m.cascade {
                flags |= TRUNCATE_CASCADE;
            }
            if m.restart_identity {
                flags |= TRUNCATE_RESTART_SEQS;
            }
            out.put_u8(flags);
            for &r in &m.relation_oids {
                oid(out, r);
            }
        }
        LogicalMessage::Message(m) => {
            opt_xid(out, m.xid);
            out.put_u8(if m.transactional { MESSAGE_TRANSACTIONAL } else { 0 });
            lsn(out, m.lsn);
            cstr(out, &m.prefix);
            counted(out, &m.content);
        }
        LogicalMessage::StreamStart(m) => {
            xid(out, m.xid);
            out.put_u8(u8::from(m.first_segment));
        }
        LogicalMessage::StreamStop => {}
        LogicalMessage::StreamCommit(m) => {
            xid(out, m.xid);
            out.put_u8(0);
            lsn(out, m.commit_lsn);
            lsn(out, m.end_lsn);
            ts(out, m.commit_timestamp);
        }
        LogicalMessage::StreamAbort(m) => {
            xid(out, m.xid);
            xid(out, m.subxid);
            if let Some(StreamAbortInfo { abort_lsn, abort_timestamp }) = m.info {
                lsn(out, abort_lsn);
                ts(out, abort_timestamp);
            }
        }
        LogicalMessage::BeginPrepare(m) => {
            lsn(out, m.prepare_lsn);
            lsn(out, m.end_lsn);
            ts(out, m.prepare_timestamp);
            xid(out, m.xid);
            cstr(out, &m.gid);
        }
        LogicalMessage::Prepare(m) | LogicalMessage::StreamPrepare(m) => {
            out.put_u8(0);
            lsn(out, m.prepare_lsn);
            lsn(out, m.end_lsn);
            ts(out, m.prepare_timestamp);
            xid(out, m.xid);
            cstr(out, &m.gid);
        }
        LogicalMessage::CommitPrepared(m) => {
            out.put_u8(0);
            lsn(out, m.commit_lsn);
            lsn(out, m.end_lsn);
            ts(out, m.commit_timestamp);
            xid(out, m.xid);
            cstr(out, &m.gid);
        }
        LogicalMessage::RollbackPrepared(m) => {
            out.put_u8(0);
            lsn(out, m.prepare_end_lsn);
            lsn(out, m.rollback_end_lsn);
            ts(out, m.prepare_timestamp);
            ts(out, m.rollback_timestamp);
            xid(out, m.xid);
            cstr(out, &m.gid);
        }
    }
}

fn lsn(out: &mut BytesMut, v: Lsn) {
    out.put_u64(v.0);
}

fn ts(out: &mut BytesMut, v: PgTimestamp) {
    out.put_i64(v.0);
}

fn xid(out: &mut BytesMut, v: Xid) {
    out.put_u32(v.0);
}

fn opt_xid(out: &mut BytesMut, v: Option<Xid>) {
    if let Some(v) = v {
        xid(out, v);
    }
}

fn oid(out: &mut BytesMut, v: Oid) {
    out.put_u32(v.0);
}

fn cstr(out: &mut BytesMut, s: &str) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

fn counted(out: &mut BytesMut, b: &[u8]) {
    out.put_i32(i32::try_from(b.len()).unwrap_or(i32::MAX));
    out.put_slice(b);
}

fn old_tuple(out: &mut BytesMut, old: &OldTuple) {
    match old {
        OldTuple::Key(t) => {
            out.put_u8(b'K');
            tuple(out, t);
        }
        OldTuple::Full(t) => {
            out.put_u8(b'O');
            tuple(out, t);
        }
    }
}

fn tuple(out: &mut BytesMut, t: &TupleData) {
    out.put_u16(u16::try_from(t.columns.len()).unwrap_or(u16::MAX));
    for c in &t.columns {
        match c {
            TupleColumn::Null => out.put_u8(b'n'),
            TupleColumn::UnchangedToast => out.put_u8(b'u'),
            TupleColumn::Text(b) => {
                out.put_u8(b't');
                counted(out, b);
            }
            TupleColumn::Binary(b) => {
                out.put_u8(b'b');
                counted(out, b);
            }
        }
    }
}

/// A tuple of text values (`None` for NULL), the common shape of an outbox row.
pub fn text_tuple<'a>(values: impl IntoIterator<Item = Option<&'a str>>) -> TupleData {
    TupleData {
        columns: values
            .into_iter()
            .map(|v| match v {
                Some(s) => TupleColumn::Text(Bytes::copy_from_slice(s.as_bytes())),
                None => TupleColumn::Null,
            })
            .collect(),
    }
}

/// The Relation message of a Debezium-style outbox table `public.outbox`, OID `relation_oid`.
pub fn outbox_relation(relation_oid: u32) -> Relation {
    let col = |flags, name: &str, type_oid, type_modifier| RelationColumn {
        flags,
        name: name.to_owned(),
        type_oid: Oid(type_oid),
        type_modifier,
    };
    Relation {
        xid: None,
        oid: Oid(relation_oid),
        namespace: "public".to_owned(),
        name: "outbox".to_owned(),
        replica_identity: super::replica_identity::DEFAULT,
        columns: vec![
            col(RelationColumn::KEY, "id", 2950, -1),
            col(0, "aggregatetype", 1043, 259),
            col(0, "aggregateid", 1043, 259),
            col(0, "type", 1043, 259),
            col(0, "payload", 3802, -1),
            col(0, "created_at", 1184, -1),
        ],
    }
}

/// An Insert into the outbox table of [`outbox_relation`] with a JSON payload of about 150 bytes.
pub fn outbox_insert(relation_oid: u32, n: u64) -> Insert {
    let id = format!("6f1c2a3e-9b7d-4c1e-8f00-{n:012x}");
    let aggregate_id = format!("order-{n}");
    let payload = format!(
        r#"{{"orderId": "order-{n}", "customerId": "c-42", "status": "PLACED", "total": {{"amount": 1299, "currency": "EUR"}}, "lines": 3, "channel": "web"}}"#
    );
    Insert {
        xid: None,
        relation_oid: Oid(relation_oid),
        new_tuple: text_tuple([
            Some(id.as_str()),
            Some("order"),
            Some(aggregate_id.as_str()),
            Some("OrderPlaced"),
            Some(payload.as_str()),
            Some("2025-11-27 22:54:00.123456+00"),
        ]),
    }
}

/// A transaction of one outbox insert, as Begin, Insert, Commit, with LSNs from `lsn`.
pub fn outbox_txn(relation_oid: u32, xid: u32, lsn: u64) -> [LogicalMessage; 3] {
    [
        LogicalMessage::Begin(Begin {
            final_lsn: Lsn(lsn + 0x200),
            commit_timestamp: PgTimestamp(817_512_840_123_456),
            xid: Xid(xid),
        }),
        LogicalMessage::Insert(outbox_insert(relation_oid, u64::from(xid))),
        LogicalMessage::Commit(Commit {
            commit_lsn: Lsn(lsn + 0x200),
            end_lsn: Lsn(lsn + 0x230),
            commit_timestamp: PgTimestamp(817_512_840_123_456),
        }),
    ]
}

/// One or more messages of every kind, each with the context it decodes in: `(options, in_stream, message)`.
pub fn samples() -> Vec<(DecoderOptions, bool, LogicalMessage)> {
    use super::{
        BeginPrepare, CommitPrepared, Delete, Origin, RollbackPrepared, StreamAbort, StreamCommit, StreamStart,
        Truncate, Type, Update,
    };
    let v = |version| match version {
        1 => DecoderOptions::V1,
        2 => DecoderOptions::V2,
        3 => DecoderOptions::V3,
        _ => DecoderOptions::V4,
    };
    let v4p = DecoderOptions { parallel_streaming: true, ..DecoderOptions::V4 };
    let tuple = TupleData {
        columns: vec![
            TupleColumn::Text(Bytes::from_static(b"42")),
            TupleColumn::Null,
            TupleColumn::UnchangedToast,
            TupleColumn::Binary(Bytes::from_static(&[0, 1, 2, 0xFF])),
        ],
    };
    let key = TupleData { columns: vec![TupleColumn::Text(Bytes::from_static(b"42"))] };
    let mut streamed_relation = outbox_relation(16_384);
    streamed_relation.xid = Some(Xid(900));
    let mut streamed_insert = outbox_insert(16_384, 7);
    streamed_insert.xid = Some(Xid(900));
    let prepare = Prepare {
        prepare_lsn: Lsn(0x1_0000_0100),
        end_lsn: Lsn(0x1_0000_0180),
        prepare_timestamp: PgTimestamp(817_512_840_000_000),
        xid: Xid(901),
        gid: "pg_gid_16390_901".to_owned(),
    };
    let [begin, insert, commit] = outbox_txn(16_384, 743, 0x16_B374_D648);
    vec![
        (v(1), false, begin),
        (v(1), false, commit),
        (v(1), false, insert),
        (v(2), true, LogicalMessage::Insert(streamed_insert)),
        (v(1), false, LogicalMessage::Origin(Origin { origin_lsn: Lsn(0xABCD), name: "pg_16390".to_owned() })),
        (v(1), false, LogicalMessage::Relation(outbox_relation(16_384))),
        (v(2), true, LogicalMessage::Relation(streamed_relation)),
        (
            v(1),
            false,
            LogicalMessage::Type(Type {
                xid: None,
                oid: Oid(16_400),
                namespace: "public".to_owned(),
                name: "mood".to_owned(),
            }),
        ),
        (
            v(1),
            false,
            LogicalMessage::Update(Update {
                xid: None,
                relation_oid: Oid(16_384),
                old_tuple: None,
                new_tuple: tuple.clone(),
            }),
        ),
        (
            v(1),
            false,
            LogicalMessage::Update(Update {
                xid: None,
                relation_oid: Oid(16_384),
                old_tuple: Some(OldTuple::Key(key.clone())),
                new_tuple: tuple.clone(),
            }),
        ),
        (
            v(3),
            true,
            LogicalMessage::Update(Update {
                xid: Some(Xid(900)),
                relation_oid: Oid(16_384),
                old_tuple: Some(OldTuple::Full(tuple.clone())),
                new_tuple: tuple.clone(),
            }),
        ),
        (
            v(1),
            false,
            LogicalMessage::Delete(Delete {
                xid: None,
                relation_oid: Oid(16_384),
                old_tuple: OldTuple::Key(key.clone()),
            }),
        ),
        (
            v(4),
            true,
            LogicalMessage::Delete(Delete {
                xid: Some(Xid(900)),
                relation_oid: Oid(16_384),
                old_tuple: OldTuple::Full(tuple),
            }),
        ),
        (
            v(1),
            false,
            LogicalMessage::Truncate(Truncate {
                xid: None,
                cascade: true,
                restart_identity: true,
                relation_oids: vec![Oid(16_384), Oid(16_390)],
            }),
        ),
        (
            v(2),
            true,
            LogicalMessage::Truncate(Truncate {
                xid: Some(Xid(900)),
                cascade: false,
                restart_identity: false,
                relation_oids: vec![],
            }),
        ),
        (
            v(1),
            false,
            LogicalMessage::Message(LogicalDecodingMessage {
                xid: None,
                transactional: true,
                lsn: Lsn(0x16_B374_D700),
                prefix: "outbox-relay.heartbeat".to_owned(),
                content: Bytes::from_static(b"{\"ts\":1}"),
            }),
        ),
        (
            v(2),
            true,
            LogicalMessage::Message(LogicalDecodingMessage {
                xid: Some(Xid(900)),
                transactional: false,
                lsn: Lsn(0x16_B374_D700),
                prefix: String::new(),
                content: Bytes::new(),
            }),
        ),
        (v(2), false, LogicalMessage::StreamStart(StreamStart { xid: Xid(900), first_segment: true })),
        (v(2), true, LogicalMessage::StreamStop),
        (
            v(2),
            false,
            LogicalMessage::StreamCommit(StreamCommit {
                xid: Xid(900),
                commit_lsn: Lsn(0x1_0000_0200),
                end_lsn: Lsn(0x1_0000_0230),
                commit_timestamp: PgTimestamp(817_512_840_500_000),
            }),
        ),
        (v(2), false, LogicalMessage::StreamAbort(StreamAbort { xid: Xid(900), subxid: Xid(902), info: None })),
        (
            v4p,
            false,
            LogicalMessage::StreamAbort(StreamAbort {
                xid: Xid(900),
                subxid: Xid(900),
                info: Some(StreamAbortInfo {
                    abort_lsn: Lsn(0x1_0000_0300),
                    abort_timestamp: PgTimestamp(817_512_841_000_000),
                }),
            }),
        ),
        (
            v(3),
            false,
            LogicalMessage::BeginPrepare(BeginPrepare {
                prepare_lsn: prepare.prepare_lsn,
                end_lsn: prepare.end_lsn,
                prepare_timestamp: prepare.prepare_timestamp,
                xid: prepare.xid,
                gid: prepare.gid.clone(),
            }),
        ),
        (v(3), false, LogicalMessage::Prepare(prepare.clone())),
        (v(3), false, LogicalMessage::StreamPrepare(prepare)),
        (
            v(3),
            false,
            LogicalMessage::CommitPrepared(CommitPrepared {
                commit_lsn: Lsn(0x1_0000_0400),
                end_lsn: Lsn(0x1_0000_0430),
                commit_timestamp: PgTimestamp(817_512_842_000_000),
                xid: Xid(901),
                gid: "pg_gid_16390_901".to_owned(),
            }),
        ),
        (
            v(3),
            false,
            LogicalMessage::RollbackPrepared(RollbackPrepared {
                prepare_end_lsn: Lsn(0x1_0000_0180),
                rollback_end_lsn: Lsn(0x1_0000_0500),
                prepare_timestamp: PgTimestamp(817_512_840_000_000),
                rollback_timestamp: PgTimestamp(817_512_843_000_000),
                xid: Xid(901),
                gid: "tx-1".to_owned(),
            }),
        ),
    ]
}

/// Fuzz input layout shared by the fuzz target and its seeds: one selector byte (bits 0-1: protocol version - 1,
/// bit 2: parallel streaming, honoured in version 4; bit 3: in stream, honoured from version 2), then the message.
pub fn split_fuzz_input(data: &[u8]) -> Option<(DecoderOptions, bool, &[u8])> {
    let (&selector, message) = data.split_first()?;
    let version = u32::from(selector & 0b11) + 1;
    let options = DecoderOptions::new(version).ok()?;
    let options = options.with_parallel_streaming(selector & 0b100 != 0).unwrap_or(options);
    let in_stream = selector & 0b1000 != 0 && version >= super::STREAM_PROTOCOL_VERSION;
    Some((options, in_stream, message))
}

/// A fuzz input for `message` decoded with `options` and `in_stream`; inverse of [`split_fuzz_input`].
pub fn fuzz_input(options: DecoderOptions, in_stream: bool, message: &LogicalMessage) -> Vec<u8> {
    let version_bits = u8::try_from(options.protocol_version().saturating_sub(1) & 0b11).unwrap_or(0);
    let selector =
        version_bits | if options.parallel_streaming() { 0b100 } else { 0 } | if in_stream { 0b1000 } else { 0 };
    let mut out = vec![selector];
    out.extend_from_slice(&encode(message));
    out
}
