//! Transaction assembly: decoded pgoutput messages -> whole, committed transactions, in commit order.
//!
//! Invariant: what leaves the [`Assembler`] is a sequence of `Begin, (Insert | Message)*, Commit` groups, one per
//! committed PostgreSQL transaction whose commit record lies at or after the resume position, in commit order, each
//! group's Commit checked against its Begin (`commit_lsn == final_lsn`). A transaction that ends at or before the
//! resume position (already in Kafka) is dropped whole; an aborted streamed (sub)transaction never leaves.
//!
//! # Streamed transactions (protocol 2+)
//!
//! With `streaming = on` PostgreSQL sends a large transaction in chunks *before* it commits, interleaved with other
//! transactions, and may abort it afterwards. Nothing of it may reach Kafka before its commit (a read_committed
//! consumer must never see rows PostgreSQL rolled back, and whole PostgreSQL transactions must map to one Kafka
//! transaction), so the chunks are kept until Stream Commit: the raw message bytes stay in memory up to
//! `spill_threshold_bytes` summed over all open streamed transactions; beyond that a transaction's bytes go to a
//! temporary file of its own (length-prefixed messages, deleted on drop). On Stream Commit the messages are decoded
//! again and handed on lazily, one at a time, by a [`StreamReplay`], so replaying a transaction of any size costs
//! the same bounded memory. Chunks are stored undecoded because the bytes are the most compact form we have and
//! re-decoding is cheap (the decoder does over 2 million messages per second).
//!
//! Spilling here instead of leaving the whole transaction to the server (`streaming = off`, where PostgreSQL spills
//! to its own disk and sends the transaction at commit) moves the disk traffic off the database host and lets the
//! relay read the transaction while it is still running, at the cost of holding what a rollback then discards.
//!
//! Two-phase commit messages are never requested (`two_phase` is not enabled); if they arrive anyway the assembler
//! refuses with [`TxnError::TwoPhase`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use crate::pg::lsn::{Lsn, PgTimestamp, Xid};
use crate::pg::pgoutput::{self, DecodeError, DecoderOptions, LogicalMessage, Oid, Relation, TupleData};

/// One step of an assembled transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum TxnEvent {
    /// A transaction starts.
    Begin {
        /// Transaction id.
        xid: Xid,
        /// LSN of its commit record.
        final_lsn: Lsn,
        /// When it committed on the server (the event time when no timestamp column is configured).
        commit_time: PgTimestamp,
    },
    /// A row inserted into a published table.
    Insert {
        /// The LSN of the change (the WAL record of the insert), as the server sent it with the message: what a
        /// hand-over from Debezium compares with the position of the last change Debezium delivered.
        lsn: Lsn,
        /// The relation's shape at the time of the insert.
        relation: Arc<Relation>,
        /// The row.
        tuple: TupleData,
    },
    /// A transactional logical decoding message.
    Message {
        /// Its LSN.
        lsn: Lsn,
        /// What `pg_logical_emit_message` was given as prefix; selects the message outbox or heartbeats.
        prefix: String,
        /// The message body, as emitted.
        content: Bytes,
    },
    /// The transaction committed.
    Commit {
        /// LSN of the commit record.
        commit_lsn: Lsn,
        /// LSN just past it: the resume position after this transaction.
        end_lsn: Lsn,
        /// When it committed on the server.
        commit_time: PgTimestamp,
    },
}

/// A violation of the protocol's transaction structure, or trouble with spill files. All definite.
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    /// Commit LSN differs from Begin's final LSN.
    #[error("commit LSN {commit_lsn} does not match the final LSN {final_lsn} announced by Begin of xid {xid}")]
    CommitMismatch {
        /// Transaction.
        xid: Xid,
        /// From Begin.
        final_lsn: Lsn,
        /// From Commit.
        commit_lsn: Lsn,
    },
    /// A message arrived where the protocol does not allow it.
    #[error("unexpected pgoutput {what} {context}")]
    Unexpected {
        /// The message.
        what: &'static str,
        /// The state it arrived in.
        context: &'static str,
    },
    /// A change refers to a relation no Relation message described.
    #[error("change for relation oid {0} arrived before any Relation message described it")]
    UnknownRelation(Oid),
    /// Two-phase messages arrived, which the relay does not request.
    #[error("two-phase transaction messages are not supported; do not enable two_phase on the slot")]
    TwoPhase,
    /// A spilled message failed to decode on replay.
    #[error("spilled message of xid {xid} failed to decode: {source}")]
    Replay {
        /// Transaction.
        xid: Xid,
        /// Decoder error.
        #[source]
        source: DecodeError,
    },
    /// Spill file I/O.
    #[error("spill file for streamed transaction {xid} in {dir}: {source}")]
    Spill {
        /// Transaction.
        xid: Xid,
        /// Spill directory.
        dir: String,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// What [`Assembler::push`] produced.
#[derive(Debug)]
pub enum Output {
    /// Nothing to hand on yet.
    None,
    /// One event.
    Event(TxnEvent),
    /// A streamed transaction committed: drain the replay for its events (Begin .. Commit).
    Replay(Box<StreamReplay>),
}

#[derive(Debug)]
struct OpenTxn {
    xid: Xid,
    final_lsn: Lsn,
    skip: bool,
}

/// Chunks of one streamed transaction.
#[derive(Debug)]
struct StreamBuf {
    /// Messages with the LSN each arrived with.
    mem: VecDeque<(Lsn, Bytes)>,
    mem_bytes: usize,
    file: Option<(tempfile::NamedTempFile, BufWriter<File>)>,
    spilled_messages: u64,
    aborted_subxids: HashSet<u32>,
}

impl StreamBuf {
    fn new() -> StreamBuf {
        StreamBuf {
            mem: VecDeque::new(),
            mem_bytes: 0,
            file: None,
            spilled_messages: 0,
            aborted_subxids: HashSet::new(),
        }
    }
}

/// Spill settings.
#[derive(Debug, Clone)]
pub struct SpillSettings {
    /// Bytes of streamed-transaction data kept in memory, summed over open streamed transactions.
    pub threshold_bytes: usize,
    /// Directory for spill files.
    pub dir: PathBuf,
}

impl Default for SpillSettings {
    fn default() -> Self {
        SpillSettings { threshold_bytes: 16 << 20, dir: std::env::temp_dir() }
    }
}

/// Assembles transactions from one replication session's messages. See the module doc.
#[derive(Debug)]
pub struct Assembler {
    options: DecoderOptions,
    relations: HashMap<Oid, Arc<Relation>>,
    resume_lsn: Lsn,
    open: Option<OpenTxn>,
    current_stream: Option<Xid>,
    streams: HashMap<u32, StreamBuf>,
    mem_bytes: usize,
    spill: SpillSettings,
    last_end_lsn: Lsn,
    skipped_txns: u64,
}

impl Assembler {
    /// An assembler that drops every transaction ending at or before `resume_lsn`.
    pub fn new(options: DecoderOptions, resume_lsn: Lsn, spill: SpillSettings) -> Assembler {
        Assembler {
            options,
            relations: HashMap::new(),
            resume_lsn,
            open: None,
            current_stream: None,
            streams: HashMap::new(),
            mem_bytes: 0,
            spill,
            last_end_lsn: Lsn::ZERO,
            skipped_txns: 0,
        }
    }

    /// Forgets per-session state for a new `START_REPLICATION` at `resume_lsn`; the relation cache is kept until
    /// Relation messages replace it (the server resends them in every session).
    pub fn restart(&mut self, resume_lsn: Lsn) {
        self.resume_lsn = resume_lsn;
        self.open = None;
        self.current_stream = None;
        self.streams.clear();
        self.mem_bytes = 0;
        self.relations.clear();
    }

    /// Transactions dropped because they were already delivered before the resume position.
    pub fn skipped_transactions(&self) -> u64 {
        self.skipped_txns
    }

    /// Bytes of streamed transactions held in memory.
    pub fn buffered_bytes(&self) -> usize {
        self.mem_bytes
    }

    /// `true` while a (non-streamed) transaction is open.
    pub fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    /// Takes one decoded message and its raw bytes (kept when it belongs to a streamed transaction).
    /// Takes the next decoded message, `raw` its bytes and `lsn` the WAL position the server sent it with.
    pub fn push(&mut self, msg: LogicalMessage, raw: &Bytes, lsn: Lsn) -> Result<Output, TxnError> {
        if let Some(xid) = self.current_stream {
            return self.push_streamed(xid, msg, raw, lsn);
        }
        match msg {
            LogicalMessage::Begin(b) => {
                if self.open.is_some() {
                    return Err(TxnError::Unexpected { what: "Begin", context: "inside an open transaction" });
                }
                // A commit record that starts before the resume position ends at or before it: already delivered.
                let skip = b.final_lsn < self.resume_lsn;
                self.open = Some(OpenTxn { xid: b.xid, final_lsn: b.final_lsn, skip });
                if skip {
                    return Ok(Output::None);
                }
                Ok(Output::Event(TxnEvent::Begin {
                    xid: b.xid,
                    final_lsn: b.final_lsn,
                    commit_time: b.commit_timestamp,
                }))
            }
            LogicalMessage::Commit(c) => {
                let Some(open) = self.open.take() else {
                    return Err(TxnError::Unexpected { what: "Commit", context: "outside a transaction" });
                };
                if c.commit_lsn != open.final_lsn {
                    return Err(TxnError::CommitMismatch {
                        xid: open.xid,
                        final_lsn: open.final_lsn,
                        commit_lsn: c.commit_lsn,
                    });
                }
                if open.skip || c.end_lsn <= self.resume_lsn {
                    self.skipped_txns += 1;
                    return Ok(Output::None);
                }
                self.last_end_lsn = c.end_lsn;
                Ok(Output::Event(TxnEvent::Commit {
                    commit_lsn: c.commit_lsn,
                    end_lsn: c.end_lsn,
                    commit_time: c.commit_timestamp,
                }))
            }
            LogicalMessage::Relation(r) => {
                self.relations.insert(r.oid, Arc::new(r));
                Ok(Output::None)
            }
            LogicalMessage::Insert(i) => {
                let Some(open) = &self.open else {
                    return Err(TxnError::Unexpected { what: "Insert", context: "outside a transaction" });
                };
                if open.skip {
                    return Ok(Output::None);
                }
                let relation =
                    self.relations.get(&i.relation_oid).cloned().ok_or(TxnError::UnknownRelation(i.relation_oid))?;
                Ok(Output::Event(TxnEvent::Insert { lsn, relation, tuple: i.new_tuple }))
            }
            LogicalMessage::Message(m) => {
                if !m.transactional {
                    // Non-transactional messages are not part of any commit and cannot be made exactly-once.
                    return Ok(Output::None);
                }
                match &self.open {
                    Some(open) if open.skip => Ok(Output::None),
                    Some(_) => {
                        Ok(Output::Event(TxnEvent::Message { lsn: m.lsn, prefix: m.prefix, content: m.content }))
                    }
                    None => {
                        Err(TxnError::Unexpected { what: "transactional Message", context: "outside a transaction" })
                    }
                }
            }
            LogicalMessage::StreamStart(s) => {
                if self.open.is_some() {
                    return Err(TxnError::Unexpected { what: "Stream Start", context: "inside an open transaction" });
                }
                self.current_stream = Some(s.xid);
                self.streams.entry(s.xid.0).or_insert_with(StreamBuf::new);
                Ok(Output::None)
            }
            LogicalMessage::StreamStop => {
                Err(TxnError::Unexpected { what: "Stream Stop", context: "outside a stream" })
            }
            LogicalMessage::StreamCommit(c) => {
                let buf = self.streams.remove(&c.xid.0);
                let Some(mut buf) = buf else {
                    // A transaction streamed entirely before the resume position and re-sent only as its commit
                    // would be a server bug; be explicit instead of emitting an empty transaction.
                    if c.end_lsn <= self.resume_lsn {
                        self.skipped_txns += 1;
                        return Ok(Output::None);
                    }
                    return Err(TxnError::Unexpected { what: "Stream Commit", context: "for an unknown transaction" });
                };
                self.mem_bytes = self.mem_bytes.saturating_sub(buf.mem_bytes);
                if c.end_lsn <= self.resume_lsn {
                    self.skipped_txns += 1;
                    return Ok(Output::None);
                }
                self.last_end_lsn = c.end_lsn;
                let file = match buf.file.take() {
                    Some((tmp, mut w)) => {
                        w.flush().map_err(|e| self.spill_err(c.xid, e))?;
                        drop(w);
                        let f = tmp.reopen().map_err(|e| self.spill_err(c.xid, e))?;
                        Some((tmp, BufReader::with_capacity(256 << 10, f)))
                    }
                    None => None,
                };
                Ok(Output::Replay(Box::new(StreamReplay {
                    xid: c.xid,
                    options: self.options,
                    relations: self.relations.clone(),
                    begin: Some(TxnEvent::Begin {
                        xid: c.xid,
                        final_lsn: c.commit_lsn,
                        commit_time: c.commit_timestamp,
                    }),
                    file,
                    mem: std::mem::take(&mut buf.mem),
                    aborted: std::mem::take(&mut buf.aborted_subxids),
                    commit: Some(TxnEvent::Commit {
                        commit_lsn: c.commit_lsn,
                        end_lsn: c.end_lsn,
                        commit_time: c.commit_timestamp,
                    }),
                })))
            }
            LogicalMessage::StreamAbort(a) => {
                if a.xid == a.subxid {
                    if let Some(buf) = self.streams.remove(&a.xid.0) {
                        self.mem_bytes = self.mem_bytes.saturating_sub(buf.mem_bytes);
                    }
                } else if let Some(buf) = self.streams.get_mut(&a.xid.0) {
                    buf.aborted_subxids.insert(a.subxid.0);
                }
                Ok(Output::None)
            }
            LogicalMessage::BeginPrepare(_)
            | LogicalMessage::Prepare(_)
            | LogicalMessage::CommitPrepared(_)
            | LogicalMessage::RollbackPrepared(_)
            | LogicalMessage::StreamPrepare(_) => Err(TxnError::TwoPhase),
            // Outbox rows are only ever inserted; updates, deletes (the usual outbox clean-up) and truncates are not
            // events. Origin and Type carry nothing the relay needs.
            _ => Ok(Output::None),
        }
    }

    fn spill_err(&self, xid: Xid, source: std::io::Error) -> TxnError {
        spill_error(xid, &self.spill.dir, source)
    }

    fn push_streamed(&mut self, xid: Xid, msg: LogicalMessage, raw: &Bytes, lsn: Lsn) -> Result<Output, TxnError> {
        match msg {
            LogicalMessage::StreamStop => {
                self.current_stream = None;
                Ok(Output::None)
            }
            LogicalMessage::Relation(r) => {
                // Relations described inside a stream apply to later changes of every transaction too.
                self.relations.insert(r.oid, Arc::new(r.clone()));
                self.store(xid, raw, lsn)
            }
            LogicalMessage::Insert(_) | LogicalMessage::Message(_) => self.store(xid, raw, lsn),
            LogicalMessage::StreamStart(_) => {
                Err(TxnError::Unexpected { what: "Stream Start", context: "inside a streamed block" })
            }
            LogicalMessage::Begin(_) | LogicalMessage::Commit(_) | LogicalMessage::StreamCommit(_) => {
                Err(TxnError::Unexpected { what: "transaction boundary", context: "inside a streamed block" })
            }
            LogicalMessage::BeginPrepare(_) | LogicalMessage::StreamPrepare(_) => Err(TxnError::TwoPhase),
            _ => Ok(Output::None),
        }
    }

    fn store(&mut self, xid: Xid, raw: &Bytes, lsn: Lsn) -> Result<Output, TxnError> {
        let over = self.mem_bytes + raw.len() > self.spill.threshold_bytes;
        let dir = self.spill.dir.clone();
        let Some(buf) = self.streams.get_mut(&xid.0) else {
            return Err(TxnError::Unexpected { what: "streamed change", context: "without Stream Start" });
        };
        let spill_err = |source| spill_error(xid, &dir, source);
        if buf.file.is_none() && over {
            let tmp = tempfile::Builder::new()
                .prefix(&format!("outbox-relay-xid{}-", xid.0))
                .tempfile_in(&dir)
                .map_err(spill_err)?;
            let f = tmp.reopen().map_err(spill_err)?;
            let mut w = BufWriter::with_capacity(256 << 10, f);
            for (at, m) in buf.mem.drain(..) {
                write_frame(&mut w, at, &m).map_err(spill_err)?;
                buf.spilled_messages += 1;
            }
            self.mem_bytes = self.mem_bytes.saturating_sub(buf.mem_bytes);
            buf.mem_bytes = 0;
            buf.file = Some((tmp, w));
            tracing::info!(xid = xid.0, dir = %dir.display(), "streamed transaction spilled to disk");
        }
        if let Some((_, w)) = &mut buf.file {
            write_frame(w, lsn, raw).map_err(spill_err)?;
            buf.spilled_messages += 1;
        } else {
            // Copy: the raw slice shares the socket's read buffer, which must not stay pinned for long.
            let owned = Bytes::copy_from_slice(raw);
            buf.mem_bytes += owned.len();
            self.mem_bytes += owned.len();
            buf.mem.push_back((lsn, owned));
        }
        Ok(Output::None)
    }
}

fn spill_error(xid: Xid, dir: &std::path::Path, source: std::io::Error) -> TxnError {
    TxnError::Spill { xid, dir: dir.display().to_string(), source }
}

/// One spilled message: its LSN (8 bytes), its length (4 bytes), its bytes.
fn write_frame(w: &mut impl Write, lsn: Lsn, m: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(m.len()).map_err(|_| std::io::Error::other("message over 4 GiB"))?;
    w.write_all(&lsn.as_u64().to_be_bytes())?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(m)
}

/// The events of one committed streamed transaction, read lazily: spilled part first, then what stayed in memory.
#[derive(Debug)]
pub struct StreamReplay {
    xid: Xid,
    options: DecoderOptions,
    relations: HashMap<Oid, Arc<Relation>>,
    begin: Option<TxnEvent>,
    file: Option<(tempfile::NamedTempFile, BufReader<File>)>,
    mem: VecDeque<(Lsn, Bytes)>,
    aborted: HashSet<u32>,
    commit: Option<TxnEvent>,
}

impl StreamReplay {
    fn next_raw(&mut self) -> Result<Option<(Lsn, Bytes)>, TxnError> {
        if let Some((_, r)) = &mut self.file {
            let mut lsn = [0u8; 8];
            match r.read_exact(&mut lsn) {
                Ok(()) => {
                    let spill = |source| TxnError::Spill { xid: self.xid, dir: String::new(), source };
                    let mut len = [0u8; 4];
                    r.read_exact(&mut len).map_err(spill)?;
                    let mut v = vec![0u8; u32::from_be_bytes(len) as usize];
                    r.read_exact(&mut v).map_err(spill)?;
                    return Ok(Some((Lsn(u64::from_be_bytes(lsn)), Bytes::from(v))));
                }
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => self.file = None,
                Err(source) => return Err(TxnError::Spill { xid: self.xid, dir: String::new(), source }),
            }
        }
        Ok(self.mem.pop_front())
    }

    /// The next event, `None` after the Commit.
    pub fn next_event(&mut self) -> Result<Option<TxnEvent>, TxnError> {
        if let Some(b) = self.begin.take() {
            return Ok(Some(b));
        }
        while let Some((lsn, raw)) = self.next_raw()? {
            let msg = pgoutput::decode(&raw, self.options, true)
                .map_err(|source| TxnError::Replay { xid: self.xid, source })?;
            match msg {
                LogicalMessage::Relation(r) => {
                    self.relations.insert(r.oid, Arc::new(r));
                }
                LogicalMessage::Insert(i) => {
                    if i.xid.is_some_and(|x| self.aborted.contains(&x.0)) {
                        continue;
                    }
                    let relation = self
                        .relations
                        .get(&i.relation_oid)
                        .cloned()
                        .ok_or(TxnError::UnknownRelation(i.relation_oid))?;
                    return Ok(Some(TxnEvent::Insert { lsn, relation, tuple: i.new_tuple }));
                }
                LogicalMessage::Message(m) => {
                    if !m.transactional || m.xid.is_some_and(|x| self.aborted.contains(&x.0)) {
                        continue;
                    }
                    return Ok(Some(TxnEvent::Message { lsn: m.lsn, prefix: m.prefix, content: m.content }));
                }
                _ => {}
            }
        }
        Ok(self.commit.take())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::pg::pgoutput::encode::{encode, outbox_insert, outbox_relation};
    use crate::pg::pgoutput::{Begin, Commit, StreamAbort, StreamCommit, StreamStart};

    fn opts() -> DecoderOptions {
        DecoderOptions::new(2).unwrap()
    }

    /// Feeds `msgs`, the i-th with LSN 0x10000 + i, as the server would stamp each change.
    fn feed(a: &mut Assembler, msgs: Vec<LogicalMessage>) -> Vec<TxnEvent> {
        let mut out = Vec::new();
        for (i, m) in msgs.into_iter().enumerate() {
            let raw = encode(&m);
            match a.push(m, &raw, Lsn(0x10000 + i as u64)).unwrap() {
                Output::None => {}
                Output::Event(e) => out.push(e),
                Output::Replay(mut r) => {
                    while let Some(e) = r.next_event().unwrap() {
                        out.push(e);
                    }
                }
            }
        }
        out
    }

    fn begin(xid: u32, lsn: u64) -> LogicalMessage {
        LogicalMessage::Begin(Begin { final_lsn: Lsn(lsn), commit_timestamp: PgTimestamp(1), xid: Xid(xid) })
    }

    fn commit(lsn: u64) -> LogicalMessage {
        LogicalMessage::Commit(Commit { commit_lsn: Lsn(lsn), end_lsn: Lsn(lsn + 8), commit_timestamp: PgTimestamp(1) })
    }

    fn ins(xid: Option<u32>, n: u64) -> LogicalMessage {
        let mut i = outbox_insert(16384, n);
        i.xid = xid.map(Xid);
        LogicalMessage::Insert(i)
    }

    fn rel(xid: Option<u32>) -> LogicalMessage {
        let mut r = outbox_relation(16384);
        r.xid = xid.map(Xid);
        LogicalMessage::Relation(r)
    }

    fn kinds(ev: &[TxnEvent]) -> String {
        ev.iter()
            .map(|e| match e {
                TxnEvent::Begin { .. } => 'B',
                TxnEvent::Insert { .. } => 'I',
                TxnEvent::Message { .. } => 'M',
                TxnEvent::Commit { .. } => 'C',
            })
            .collect()
    }

    #[test]
    fn plain_transactions_pass_and_old_ones_are_skipped() {
        let mut a = Assembler::new(opts(), Lsn(208), SpillSettings::default());
        let ev = feed(
            &mut a,
            vec![
                rel(None),
                begin(1, 100),
                ins(None, 1),
                commit(100),
                begin(2, 200),
                ins(None, 2),
                commit(200),
                begin(3, 300),
                ins(None, 3),
                ins(None, 4),
                commit(300),
            ],
        );
        // Txn 2 ends at 208 == resume: delivered already.
        assert_eq!(kinds(&ev), "BIIC");
        assert_eq!(a.skipped_transactions(), 2);
    }

    #[test]
    fn commit_must_match_begin() {
        let mut a = Assembler::new(opts(), Lsn::ZERO, SpillSettings::default());
        let m = begin(1, 100);
        a.push(m.clone(), &encode(&m), Lsn(1)).unwrap();
        let c = commit(101);
        assert!(matches!(a.push(c.clone(), &encode(&c), Lsn(2)), Err(TxnError::CommitMismatch { .. })));
    }

    #[test]
    fn insert_without_relation_is_an_error() {
        let mut a = Assembler::new(opts(), Lsn::ZERO, SpillSettings::default());
        let m = begin(1, 100);
        a.push(m.clone(), &encode(&m), Lsn(1)).unwrap();
        let i = ins(None, 1);
        assert!(matches!(a.push(i.clone(), &encode(&i), Lsn(2)), Err(TxnError::UnknownRelation(Oid(16384)))));
    }

    fn streamed_case(threshold: usize) {
        let dir = tempfile::tempdir().unwrap();
        let mut a =
            Assembler::new(opts(), Lsn::ZERO, SpillSettings { threshold_bytes: threshold, dir: dir.path().into() });
        let ss = |xid: u32, first| LogicalMessage::StreamStart(StreamStart { xid: Xid(xid), first_segment: first });
        let sc = |xid: u32, lsn: u64| {
            LogicalMessage::StreamCommit(StreamCommit {
                xid: Xid(xid),
                commit_lsn: Lsn(lsn),
                end_lsn: Lsn(lsn + 8),
                commit_timestamp: PgTimestamp(1),
            })
        };
        let abort = |xid: u32, sub: u32| {
            LogicalMessage::StreamAbort(StreamAbort { xid: Xid(xid), subxid: Xid(sub), info: None })
        };
        let mut msgs = vec![ss(10, true), rel(Some(10))];
        for n in 0..50 {
            msgs.push(ins(Some(10), n));
        }
        msgs.push(ins(Some(11), 1000)); // subtransaction 11, aborted below
        msgs.push(LogicalMessage::StreamStop);
        // An interleaved plain transaction commits first.
        msgs.extend([rel(None), begin(2, 100), ins(None, 7), commit(100)]);
        msgs.extend([ss(20, true), rel(Some(20)), ins(Some(20), 1), LogicalMessage::StreamStop, abort(20, 20)]);
        msgs.extend([ss(10, false), ins(Some(10), 50), LogicalMessage::StreamStop, abort(10, 11), sc(10, 500)]);
        let ev = feed(&mut a, msgs);
        assert_eq!(kinds(&ev), format!("BIC{}", format_args!("B{}C", "I".repeat(51))));
        assert_eq!(a.buffered_bytes(), 0);
        // The aborted subtransaction's row is gone, the rest keep insert order.
        let ids: Vec<String> = ev[4..55]
            .iter()
            .map(|e| match e {
                TxnEvent::Insert { tuple, .. } => tuple.get(0).unwrap().as_text().unwrap().unwrap().to_owned(),
                _ => panic!(),
            })
            .collect();
        let expect: Vec<String> = (0..=50)
            .map(|n| match outbox_insert(16384, n).new_tuple.get(0).unwrap().as_text() {
                Some(Ok(s)) => s.to_owned(),
                _ => panic!(),
            })
            .collect();
        assert_eq!(ids, expect);
        // Each change keeps the LSN it arrived with, also through a spill file: ascending, the interleaved plain
        // transaction's insert (message 56) first.
        let lsns: Vec<u64> = ev
            .iter()
            .filter_map(|e| match e {
                TxnEvent::Insert { lsn, .. } => Some(lsn.as_u64() - 0x10000),
                _ => None,
            })
            .collect();
        let mut expect_lsns = vec![56];
        expect_lsns.extend(2..52);
        expect_lsns.push(64);
        assert_eq!(lsns, expect_lsns);
    }

    #[test]
    fn streamed_transaction_in_memory() {
        streamed_case(usize::MAX);
    }

    #[test]
    fn streamed_transaction_spilled_to_disk() {
        streamed_case(1024);
    }

    #[test]
    fn two_phase_is_refused() {
        let mut a = Assembler::new(opts(), Lsn::ZERO, SpillSettings::default());
        let m = LogicalMessage::BeginPrepare(pgoutput::BeginPrepare {
            prepare_lsn: Lsn(1),
            end_lsn: Lsn(2),
            prepare_timestamp: PgTimestamp(0),
            xid: Xid(1),
            gid: "g".into(),
        });
        assert!(matches!(a.push(m.clone(), &encode(&m), Lsn(1)), Err(TxnError::TwoPhase)));
    }
}
