//! The CopyBoth phase: XLogData in, standby status updates out. It begins with
//! [`ReplicationClient::start_replication`] (defined here, beside the stream it creates) and ends with
//! [`ReplicationStream::stop`], which hands the idle client back.
//!
//! ```text
//!   server ──CopyData('w' XLogData | 'k' keepalive)──▶ FrameReader ──▶ next() ──▶ caller
//!                                                            │ wal_end
//!                                                            ▼
//!                                             Progress { received, flushed } ◀── ack(lsn) (caller, after Kafka commit)
//!                                                            │
//!   server ◀──CopyData('r' status update)── StatusWriter ◀───┴── status task: every status_interval, and on ack
//!                                                  ▲
//!                                                  └── next(): at once when a keepalive asks for a reply
//! ```
//!
//! Progress rules (the relay's invariant 1 depends on them):
//! - `write` and `apply` report the highest WAL position received, so the server sees us alive and keeps sending;
//!   they do not move the slot.
//! - `flush` reports only what the caller acknowledged with [`ReplicationStream::ack`]: that is what moves the slot's
//!   `confirmed_flush_lsn`. It never goes backwards (lower acks are ignored); until the first ack it is `0/0`, which
//!   the server ignores.
//! - An update is sent when the server asks for one, every `status_interval` whatever the traffic or the caller is
//!   doing (asking the server for a reply, so a caller that hears nothing for a few intervals knows the connection
//!   is dead) (a background task, so a caller busy in a long Kafka commit does not hit `wal_sender_timeout`), when the
//!   acknowledged position moved, when the caller forces one, and once more before CopyDone in [`stop`]. An
//!   ack that changes nothing sends nothing.
//!
//! [`stop`]: ReplicationStream::stop

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::sync::{Mutex, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::commands::ReplicationOptions;
use super::conn::{ReplicationClient, ServerInfo, nul_in};
use super::error::ReplicationError;
use super::framing::{Backend, FrameReader, FrameWriter, log_notice, unexpected};
use crate::pg::lsn::{Lsn, PgTimestamp};

/// Ack-triggered updates closer together than this are merged (an ack per event must not become a status update
/// per event). Periodic updates and replies to the server are not delayed.
const MIN_ACK_UPDATE_SPACING: Duration = Duration::from_millis(5);

/// One message of the replication stream.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplicationMessage {
    /// A chunk of decoded WAL: one pgoutput message.
    XLogData(XLogData),
    /// A primary keepalive, already answered if it asked for a reply. Informational: `wal_end` is how far the server
    /// has processed the WAL.
    Keepalive(PrimaryKeepalive),
}

/// `XLogData` ('w'): one pgoutput message and its WAL position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XLogData {
    /// WAL position of the start of this data (for pgoutput: the LSN of the decoded change or commit).
    pub wal_start: Lsn,
    /// Current end of WAL on the server (for logical replication the same as `wal_start`).
    pub wal_end: Lsn,
    /// Server clock at transmission.
    pub server_time: PgTimestamp,
    /// The pgoutput message (`B`, `I`, `C`, `S`, ...), a view into the read buffer.
    pub data: Bytes,
}

/// Primary keepalive ('k').
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrimaryKeepalive {
    /// Current end of WAL on the server.
    pub wal_end: Lsn,
    /// Server clock at transmission.
    pub server_time: PgTimestamp,
    /// The server asked for an immediate status update (sent before this message was returned).
    pub reply_requested: bool,
}

/// Parses the payload of one CopyData message of the replication stream.
pub(crate) fn parse_copy_data(mut b: Bytes) -> Result<ReplicationMessage, ReplicationError> {
    match b.first().copied() {
        Some(b'w') if b.len() >= 25 => {
            b.advance(1);
            let wal_start = Lsn(b.get_u64());
            let wal_end = Lsn(b.get_u64());
            let server_time = PgTimestamp(b.get_i64());
            Ok(ReplicationMessage::XLogData(XLogData { wal_start, wal_end, server_time, data: b }))
        }
        Some(b'k') if b.len() >= 18 => {
            b.advance(1);
            let wal_end = Lsn(b.get_u64());
            let server_time = PgTimestamp(b.get_i64());
            let reply_requested = b.get_u8() != 0;
            Ok(ReplicationMessage::Keepalive(PrimaryKeepalive { wal_end, server_time, reply_requested }))
        }
        Some(t @ (b'w' | b'k')) => Err(ReplicationError::protocol(format!(
            "truncated replication message {:?} of {} bytes",
            char::from(t),
            b.len()
        ))),
        Some(t) => Err(ReplicationError::protocol(format!("unknown replication message type {t:#04x}"))),
        None => Err(ReplicationError::protocol("empty CopyData message")),
    }
}

/// Encodes a standby status update ('r') as a CopyData message.
pub(crate) fn encode_status(
    out: &mut bytes::BytesMut,
    write: Lsn,
    flush: Lsn,
    apply: Lsn,
    now: PgTimestamp,
    reply_requested: bool,
) -> Result<(), ReplicationError> {
    let mut body = [0u8; 34];
    let mut w = &mut body[..];
    w.put_u8(b'r');
    w.put_u64(write.as_u64());
    w.put_u64(flush.as_u64());
    w.put_u64(apply.as_u64());
    w.put_i64(now.0);
    w.put_u8(u8::from(reply_requested));
    frontend::CopyData::new(&body[..])
        .map_err(|e| ReplicationError::protocol(format!("status update: {e}")))?
        .write(out);
    Ok(())
}

/// Positions shared between the stream, its status task and [`AckHandle`]s.
#[derive(Debug, Default)]
struct Progress {
    /// Highest WAL position received (write/apply of status updates).
    received: AtomicU64,
    /// Highest position acknowledged by the caller (flush of status updates).
    flushed: AtomicU64,
    /// Wakes the status task after an ack moved `flushed`.
    wake: Notify,
    /// The status task could not write; the connection is gone.
    writer_failed: AtomicBool,
}

impl Progress {
    fn ack(&self, lsn: Lsn) {
        let previous = self.flushed.fetch_max(lsn.as_u64(), Ordering::AcqRel);
        if lsn.as_u64() > previous {
            self.wake.notify_one();
        }
    }

    fn received(&self) -> Lsn {
        Lsn(self.received.load(Ordering::Acquire))
    }

    fn flushed(&self) -> Lsn {
        Lsn(self.flushed.load(Ordering::Acquire))
    }
}

/// A cloneable, `Send + Sync` handle to acknowledge positions from another task (e.g. the Kafka committer).
#[derive(Clone, Debug)]
pub struct AckHandle(Arc<Progress>);

impl AckHandle {
    /// Same as [`ReplicationStream::ack`].
    pub fn ack(&self, lsn: Lsn) {
        self.0.ack(lsn);
    }

    /// The highest acknowledged position.
    pub fn flushed(&self) -> Lsn {
        self.0.flushed()
    }
}

/// The write half of the connection, and what it last told the server.
struct StatusWriter {
    frames: FrameWriter,
    last_write: Lsn,
    last_flush: Lsn,
    last_sent_at: Instant,
}

impl StatusWriter {
    /// Sends a status update with the current positions; unless `force`, only if they changed since the last one.
    /// `ask_reply` asks the server to answer at once with a keepalive, which proves the connection alive.
    async fn send(&mut self, progress: &Progress, force: bool, ask_reply: bool) -> Result<(), ReplicationError> {
        let flush = progress.flushed();
        let write = progress.received().max(flush);
        if !force && write == self.last_write && flush == self.last_flush {
            // Nothing new to say; still push out bytes a cancelled send may have left.
            return self.frames.flush().await;
        }
        encode_status(&mut self.frames.buf, write, flush, write, PgTimestamp::now(), ask_reply)?;
        tracing::trace!(%write, %flush, force, "standby status update");
        self.frames.flush().await?;
        self.last_write = write;
        self.last_flush = flush;
        self.last_sent_at = Instant::now();
        Ok(())
    }
}

/// Aborts the status task when the stream is dropped without [`ReplicationStream::stop`].
struct AbortOnDrop(Option<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

impl AbortOnDrop {
    async fn abort_and_wait(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
            // Cancelled (or finished): either way the task no longer holds the writer.
            let _ = h.await;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Streaming,
    /// The server ended the COPY; `reusable` if it then became ready for a new command.
    Ended {
        reusable: bool,
    },
    Failed,
}

/// An active `START_REPLICATION` stream. Read it with [`next`](Self::next), acknowledge durable positions with
/// [`ack`](Self::ack), end it with [`stop`](Self::stop). Dropping it closes the connection abruptly (the server keeps
/// the slot at the last acknowledged position).
pub struct ReplicationStream {
    reader: FrameReader,
    writer: Arc<Mutex<StatusWriter>>,
    progress: Arc<Progress>,
    task: AbortOnDrop,
    info: ServerInfo,
    proto_version: u32,
    status_interval: Duration,
    stop_timeout: Duration,
    state: State,
    received: Lsn,
    /// A keepalive asked for a reply that a cancelled `next()` did not send yet.
    reply_pending: bool,
}

impl std::fmt::Debug for ReplicationStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationStream")
            .field("backend_pid", &self.info.backend_pid)
            .field("proto_version", &self.proto_version)
            .field("state", &self.state)
            .field("received", &self.progress.received())
            .field("flushed", &self.progress.flushed())
            .finish_non_exhaustive()
    }
}

impl ReplicationClient {
    /// Sends `START_REPLICATION SLOT ... LOGICAL ...` and turns the connection into a [`ReplicationStream`].
    ///
    /// Once per connection: PostgreSQL (up to 18 at least) does not reset its end-of-streaming state between two
    /// logical `START_REPLICATION`s on one walsender, so a second one would end at once. Reconnect instead.
    pub async fn start_replication(
        mut self,
        options: &ReplicationOptions,
    ) -> Result<ReplicationStream, ReplicationError> {
        if self.info.streamed {
            return Err(ReplicationError::Unsupported(
                "START_REPLICATION ... LOGICAL can run only once per connection (the server would end a second                  stream at once); open a new connection"
                    .into(),
            ));
        }
        let (cmd, proto_version) = options.command(self.info.server_version_num)?;
        tracing::debug!(command = %cmd, "starting replication");
        frontend::query(&cmd, &mut self.writer.buf).map_err(nul_in("START_REPLICATION"))?;
        self.writer.flush().await?;
        loop {
            match self.reader.read_message().await? {
                Backend::CopyBothResponse => {
                    self.info.streamed = true;
                    break;
                }
                Backend::Error(e) => return Err(ReplicationError::from_server(e)),
                Backend::Notice(n) => log_notice(&n),
                Backend::Msg(Message::ParameterStatus(body)) => self.record_parameter(&body)?,
                other => return Err(unexpected(&other, "in reply to START_REPLICATION")),
            }
        }
        Ok(ReplicationStream::new(self, options, proto_version))
    }
}

impl ReplicationStream {
    pub(crate) fn new(client: ReplicationClient, options: &ReplicationOptions, proto_version: u32) -> Self {
        let ReplicationClient { reader, writer, info } = client;
        let progress = Arc::new(Progress::default());
        let writer = Arc::new(Mutex::new(StatusWriter {
            frames: writer,
            last_write: Lsn::ZERO,
            last_flush: Lsn::ZERO,
            last_sent_at: Instant::now(),
        }));
        let task = tokio::spawn(status_task(Arc::clone(&writer), Arc::clone(&progress), options.status_interval));
        ReplicationStream {
            reader,
            writer,
            progress,
            task: AbortOnDrop(Some(task)),
            info,
            proto_version,
            status_interval: options.status_interval,
            stop_timeout: options.stop_timeout,
            state: State::Streaming,
            received: Lsn::ZERO,
            reply_pending: false,
        }
    }

    /// The next message; `Ok(None)` once the server has ended the stream cleanly (reconnect to continue).
    /// Keepalives that ask for a reply are answered before they are returned. Cancel-safe: a message is either
    /// returned or stays buffered, and an owed reply is sent on the next call.
    pub async fn next(&mut self) -> Result<Option<ReplicationMessage>, ReplicationError> {
        match self.state {
            State::Streaming => {}
            State::Ended { .. } => return Ok(None),
            State::Failed => return Err(ReplicationError::StreamFailed),
        }
        let result = self.next_inner().await;
        if result.is_err() {
            self.state = State::Failed;
            self.task.abort_and_wait().await;
        }
        result
    }

    async fn next_inner(&mut self) -> Result<Option<ReplicationMessage>, ReplicationError> {
        loop {
            if self.reply_pending {
                self.writer.lock().await.send(&self.progress, true, false).await?;
                self.reply_pending = false;
            }
            if self.progress.writer_failed.load(Ordering::Acquire) {
                return Err(ReplicationError::Io(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "sending a standby status update failed",
                )));
            }
            match self.reader.read_message().await? {
                Backend::Msg(Message::CopyData(body)) => {
                    let msg = parse_copy_data(body.into_bytes())?;
                    match &msg {
                        ReplicationMessage::XLogData(x) => self.note_received(x.wal_end),
                        ReplicationMessage::Keepalive(k) => {
                            self.note_received(k.wal_end);
                            if k.reply_requested {
                                self.reply_pending = true;
                                self.writer.lock().await.send(&self.progress, true, false).await?;
                                self.reply_pending = false;
                            }
                        }
                    }
                    return Ok(Some(msg));
                }
                Backend::Error(e) => return Err(ReplicationError::from_server(e)),
                Backend::Notice(n) => log_notice(&n),
                Backend::Msg(Message::ParameterStatus(_)) => {}
                Backend::Msg(Message::CopyDone) => {
                    // The server ended the COPY: answer with our CopyDone and wait until it is ready again. Failed
                    // until that completes, so a cancelled call leaves no half-closed stream behind.
                    self.state = State::Failed;
                    self.task.abort_and_wait().await;
                    let mut w = self.writer.lock().await;
                    frontend::copy_done(&mut w.frames.buf);
                    w.frames.flush().await?;
                    drop(w);
                    drain_to_ready(&mut self.reader).await?;
                    self.state = State::Ended { reusable: true };
                    return Ok(None);
                }
                Backend::Msg(Message::CommandComplete(_)) => {
                    // A walsender shutting down ends the COPY with CommandComplete and exits.
                    self.state = State::Ended { reusable: false };
                    self.task.abort_and_wait().await;
                    return Ok(None);
                }
                other => return Err(unexpected(&other, "while streaming")),
            }
        }
    }

    #[inline]
    fn note_received(&mut self, lsn: Lsn) {
        if lsn > self.received {
            self.received = lsn;
            self.progress.received.store(lsn.as_u64(), Ordering::Release);
        }
    }

    /// Acknowledges that everything up to `lsn` is durable downstream: the next status update reports it as the
    /// flush position, which moves the slot's `confirmed_flush_lsn`. Lower values than an earlier ack are ignored.
    /// Does not wait; an update is sent shortly by the background task (use [`send_status`](Self::send_status) to
    /// send one now).
    pub fn ack(&self, lsn: Lsn) {
        self.progress.ack(lsn);
    }

    /// A handle to [`ack`](Self::ack) from another task.
    pub fn ack_handle(&self) -> AckHandle {
        AckHandle(Arc::clone(&self.progress))
    }

    /// Sends a standby status update now, whether or not anything changed.
    pub async fn send_status(&mut self) -> Result<(), ReplicationError> {
        match self.state {
            State::Streaming => {}
            State::Ended { .. } => return Err(ReplicationError::StreamEnded),
            State::Failed => return Err(ReplicationError::StreamFailed),
        }
        let result = self.writer.lock().await.send(&self.progress, true, false).await;
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    /// The highest WAL position received (reported as write/apply position).
    pub fn last_received_lsn(&self) -> Lsn {
        self.progress.received()
    }

    /// The highest position acknowledged with [`ack`](Self::ack) (reported as flush position).
    pub fn last_flushed_lsn(&self) -> Lsn {
        self.progress.flushed()
    }

    /// The pgoutput protocol version in use.
    pub fn proto_version(&self) -> u32 {
        self.proto_version
    }

    /// What the server reported at startup.
    pub fn server_info(&self) -> &ServerInfo {
        &self.info
    }

    /// The configured status interval.
    pub fn status_interval(&self) -> Duration {
        self.status_interval
    }

    /// Ends streaming cleanly: sends a last status update (with the acknowledged flush position) and CopyDone,
    /// discards the XLogData the server still sends (it was not acknowledged, so it is sent again next time), and
    /// waits for ReadyForQuery, within the configured `stop_timeout`. Returns the idle connection for more commands
    /// (or [`ReplicationClient::close`]); not for another `START_REPLICATION`, which needs a new connection.
    pub async fn stop(mut self) -> Result<ReplicationClient, ReplicationError> {
        self.task.abort_and_wait().await;
        let state = self.state;
        // An owed keepalive reply is answered by the final (forced) update below.
        let ReplicationStream { mut reader, writer, progress, info, stop_timeout, .. } = self;
        let writer = Arc::try_unwrap(writer)
            .map_err(|_| ReplicationError::protocol("status writer still in use after its task ended"))?
            .into_inner();
        match state {
            State::Failed => return Err(ReplicationError::StreamFailed),
            State::Ended { reusable: false } => return Err(ReplicationError::ConnectionClosed),
            State::Ended { reusable: true } => return Ok(ReplicationClient { reader, writer: writer.frames, info }),
            State::Streaming => {}
        }
        let mut writer = writer;
        let finish = async {
            writer.send(&progress, true, false).await?;
            frontend::copy_done(&mut writer.frames.buf);
            writer.frames.flush().await?;
            drain_to_ready(&mut reader).await
        };
        tokio::time::timeout(stop_timeout, finish).await.map_err(|_| ReplicationError::StopTimeout(stop_timeout))??;
        tracing::debug!(flushed = %progress.flushed(), received = %progress.received(), "replication stopped");
        Ok(ReplicationClient { reader, writer: writer.frames, info })
    }
}

/// Reads until ReadyForQuery after CopyDone was sent, discarding the server's remaining CopyData.
async fn drain_to_ready(reader: &mut FrameReader) -> Result<(), ReplicationError> {
    loop {
        match reader.read_message().await? {
            // XLogData and keepalives the server sent before it saw our CopyDone (PostgreSQL may send a keepalive
            // even after its own CopyDone): not acknowledged, so sent again next time.
            Backend::Msg(Message::CopyData(_)) => {}
            Backend::Msg(Message::CopyDone) => {}
            Backend::Msg(Message::CommandComplete(_)) => {}
            Backend::Msg(Message::ReadyForQuery(_)) => return Ok(()),
            Backend::Msg(Message::ParameterStatus(_)) => {}
            Backend::Notice(n) => log_notice(&n),
            Backend::Error(e) => return Err(ReplicationError::from_server(e)),
            other => return Err(unexpected(&other, "while ending the replication stream")),
        }
    }
}

/// Sends periodic status updates, and prompt ones after acks, until aborted or a write fails.
async fn status_task(writer: Arc<Mutex<StatusWriter>>, progress: Arc<Progress>, interval: Duration) {
    loop {
        let due = writer.lock().await.last_sent_at + interval;
        let periodic = tokio::select! {
            () = tokio::time::sleep_until(due) => true,
            () = progress.wake.notified() => false,
        };
        let mut w = writer.lock().await;
        let result = if periodic {
            // Someone else (a reply, a forced update) may have sent one meanwhile; then the clock restarts.
            // Each periodic update asks for a reply: a silent server then means a dead connection, which the
            // caller detects by the time since the last message (a cut without FIN is otherwise invisible).
            if w.last_sent_at.elapsed() >= interval { w.send(&progress, true, true).await } else { Ok(()) }
        } else {
            let since = w.last_sent_at.elapsed();
            if since < MIN_ACK_UPDATE_SPACING {
                drop(w);
                tokio::time::sleep(MIN_ACK_UPDATE_SPACING - since).await;
                w = writer.lock().await;
            }
            w.send(&progress, false, false).await
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "standby status update failed");
            progress.writer_failed.store(true, Ordering::Release);
            return;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn xlog(start: u64, end: u64, time: i64, payload: &[u8]) -> Bytes {
        let mut b = bytes::BytesMut::new();
        b.put_u8(b'w');
        b.put_u64(start);
        b.put_u64(end);
        b.put_i64(time);
        b.put_slice(payload);
        b.freeze()
    }

    #[test]
    fn parses_xlogdata_without_copying() {
        let raw = xlog(0x10, 0x20, 7, b"Bxyz");
        let payload_ptr = raw.as_ptr().wrapping_add(25);
        match parse_copy_data(raw) {
            Ok(ReplicationMessage::XLogData(x)) => {
                assert_eq!((x.wal_start, x.wal_end, x.server_time), (Lsn(0x10), Lsn(0x20), PgTimestamp(7)));
                assert_eq!(&x.data[..], b"Bxyz");
                assert_eq!(x.data.as_ptr(), payload_ptr, "payload must be a view, not a copy");
            }
            other => unreachable!("{other:?}"),
        }
    }

    #[test]
    fn parses_keepalive() {
        let mut b = bytes::BytesMut::new();
        b.put_u8(b'k');
        b.put_u64(0x99);
        b.put_i64(-5);
        b.put_u8(1);
        let m = parse_copy_data(b.freeze());
        assert!(matches!(
            m,
            Ok(ReplicationMessage::Keepalive(PrimaryKeepalive {
                wal_end: Lsn(0x99),
                server_time: PgTimestamp(-5),
                reply_requested: true
            }))
        ));
    }

    #[test]
    fn rejects_malformed_copy_data() {
        let truncated = xlog(1, 2, 3, b"").slice(..24);
        for bad in [
            Bytes::new(),
            Bytes::from_static(b"w"),
            truncated,
            Bytes::from_static(b"k\0\0"),
            Bytes::from_static(b"z123"),
        ] {
            assert!(parse_copy_data(bad.clone()).is_err(), "{bad:?}");
        }
        // An XLogData with an empty payload is valid.
        assert!(parse_copy_data(xlog(1, 2, 3, b"")).is_ok());
    }

    #[test]
    fn encodes_status_update() {
        let mut out = bytes::BytesMut::new();
        assert!(encode_status(&mut out, Lsn(1), Lsn(2), Lsn(3), PgTimestamp(4), true).is_ok());
        let mut expect = vec![b'd', 0, 0, 0, 38, b'r'];
        for v in [1u64, 2, 3, 4] {
            expect.extend_from_slice(&v.to_be_bytes());
        }
        expect.push(1);
        assert_eq!(&out[..], &expect[..]);
    }

    /// The server's side of a CopyBoth session, over a real TCP socket.
    mod fake_server {
        use bytes::{Buf, BufMut, BytesMut};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::{TcpListener, TcpStream};

        use crate::pg::replication::conn::{ReplicationClient, ServerInfo};
        use crate::pg::replication::tls::Socket;

        /// What the client sent.
        #[derive(Debug, PartialEq, Eq)]
        pub enum FromClient {
            Status { write: u64, flush: u64, apply: u64, reply: bool },
            CopyDone,
            Other(u8),
        }

        pub struct Server {
            pub sock: TcpStream,
            buf: BytesMut,
        }

        pub async fn pair() -> (ReplicationClient, Server) {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
            let client = ReplicationClient::over(Socket::Plain(client.expect("connect")), ServerInfo::default());
            (client, Server { sock: server.expect("accept").0, buf: BytesMut::new() })
        }

        impl Server {
            pub async fn send(&mut self, tag: u8, body: &[u8]) {
                let mut out = BytesMut::new();
                out.put_u8(tag);
                out.put_u32(u32::try_from(body.len() + 4).expect("small"));
                out.put_slice(body);
                self.sock.write_all(&out).await.expect("write");
            }

            pub async fn xlog(&mut self, lsn: u64, payload: &[u8]) {
                let mut b = BytesMut::new();
                b.put_u8(b'w');
                b.put_u64(lsn);
                b.put_u64(lsn);
                b.put_i64(0);
                b.put_slice(payload);
                self.send(b'd', &b).await;
            }

            pub async fn keepalive(&mut self, wal_end: u64, reply: bool) {
                let mut b = BytesMut::new();
                b.put_u8(b'k');
                b.put_u64(wal_end);
                b.put_i64(0);
                b.put_u8(u8::from(reply));
                self.send(b'd', &b).await;
            }

            /// The next message from the client, or `None` if none arrives within `wait`.
            pub async fn recv(&mut self, wait: std::time::Duration) -> Option<FromClient> {
                tokio::time::timeout(wait, self.recv_inner()).await.ok()
            }

            async fn recv_inner(&mut self) -> FromClient {
                loop {
                    if self.buf.len() >= 5 {
                        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
                        if self.buf.len() > len {
                            let mut frame = self.buf.split_to(len + 1);
                            let tag = frame.get_u8();
                            frame.advance(4);
                            return match tag {
                                b'd' if frame.first() == Some(&b'r') => {
                                    frame.advance(1);
                                    let (write, flush, apply) = (frame.get_u64(), frame.get_u64(), frame.get_u64());
                                    let _clock = frame.get_i64();
                                    FromClient::Status { write, flush, apply, reply: frame.get_u8() != 0 }
                                }
                                b'c' => FromClient::CopyDone,
                                other => FromClient::Other(other),
                            };
                        }
                    }
                    if self.sock.read_buf(&mut self.buf).await.expect("read") == 0 {
                        return FromClient::Other(0);
                    }
                }
            }
        }
    }

    use fake_server::FromClient;

    fn status(write: u64, flush: u64) -> Option<FromClient> {
        Some(FromClient::Status { write, flush, apply: write, reply: false })
    }

    /// Long enough for a prompt update on a loaded machine, far below the status interval of the tests.
    const SHORT: Duration = Duration::from_millis(300);

    #[tokio::test]
    async fn status_updates_follow_the_rules() {
        let (client, mut server) = fake_server::pair().await;
        let mut options = ReplicationOptions::new("s", ["p"]);
        options.status_interval = Duration::from_millis(1500);
        let mut stream = ReplicationStream::new(client, &options, 3);

        server.xlog(100, b"B").await;
        assert!(matches!(stream.next().await, Ok(Some(ReplicationMessage::XLogData(x))) if x.wal_end == Lsn(100)));
        assert_eq!(server.recv(SHORT).await, None, "receiving data alone sends nothing before the interval");

        // A keepalive asking for a reply is answered before next() returns it: write = received, flush = 0.
        server.keepalive(150, true).await;
        assert!(matches!(stream.next().await, Ok(Some(ReplicationMessage::Keepalive(k))) if k.reply_requested));
        assert_eq!(server.recv(SHORT).await, status(150, 0));

        // An ack is reported promptly; lower and repeated acks are not.
        stream.ack(Lsn(120));
        assert_eq!(server.recv(SHORT).await, status(150, 120));
        stream.ack(Lsn(110));
        stream.ack_handle().ack(Lsn(120));
        assert_eq!(stream.last_flushed_lsn(), Lsn(120));
        assert_eq!(server.recv(SHORT).await, None, "an ack that changes nothing sends nothing");

        // The periodic update repeats the positions, flush still 120, with nobody calling next(), and asks the
        // server for a reply (the caller's proof that the connection is alive).
        assert_eq!(
            server.recv(Duration::from_secs(3)).await,
            Some(FromClient::Status { write: 150, flush: 120, apply: 150, reply: true })
        );

        // A forced update goes out even though nothing changed.
        stream.send_status().await.expect("send");
        assert_eq!(server.recv(SHORT).await, status(150, 120));

        // stop(): a last update, CopyDone, then the server's leftovers are drained up to ReadyForQuery.
        let stop = tokio::spawn(stream.stop());
        assert_eq!(server.recv(SHORT).await, status(150, 120));
        assert_eq!(server.recv(SHORT).await, Some(FromClient::CopyDone));
        server.xlog(200, b"I").await;
        server.keepalive(200, true).await;
        server.send(b'c', b"").await;
        server.send(b'C', b"COPY 0\0").await;
        server.send(b'Z', b"I").await;
        let client = stop.await.expect("join");
        assert!(client.is_ok(), "{client:?}");
        assert_eq!(server.recv(SHORT).await, None, "nothing is sent after CopyDone");
    }

    #[tokio::test]
    async fn server_errors_and_ends() {
        let (client, mut server) = fake_server::pair().await;
        let mut stream = ReplicationStream::new(client, &ReplicationOptions::new("s", ["p"]), 3);
        server.send(b'E', b"SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0\0").await;
        let err = stream.next().await.expect_err("an error");
        assert!(matches!(err, ReplicationError::ServerShutdown(_)) && err.is_transient(), "{err:?}");
        assert!(matches!(stream.next().await, Err(ReplicationError::StreamFailed)));

        // The server ends the COPY itself: we answer CopyDone and wait for ReadyForQuery.
        let (client, mut server) = fake_server::pair().await;
        let mut stream = ReplicationStream::new(client, &ReplicationOptions::new("s", ["p"]), 3);
        server.send(b'c', b"").await;
        let next = tokio::spawn(async move { (stream.next().await.map(|m| m.is_none()), stream) });
        assert_eq!(server.recv(SHORT).await, Some(FromClient::CopyDone));
        server.send(b'C', b"COPY 0\0").await;
        server.send(b'Z', b"I").await;
        let (ended, stream) = next.await.expect("join");
        assert!(matches!(ended, Ok(true)), "{ended:?}");
        assert!(stream.stop().await.is_ok(), "the connection is idle again");

        // Malformed replication data fails the stream with a protocol error.
        let (client, mut server) = fake_server::pair().await;
        let mut stream = ReplicationStream::new(client, &ReplicationOptions::new("s", ["p"]), 3);
        server.send(b'd', b"w\0\0").await;
        assert!(matches!(stream.next().await, Err(ReplicationError::Protocol(_))));
    }

    #[test]
    fn flush_never_goes_backwards() {
        let p = Progress::default();
        p.ack(Lsn(100));
        p.ack(Lsn(50));
        assert_eq!(p.flushed(), Lsn(100));
        p.ack(Lsn(150));
        assert_eq!(p.flushed(), Lsn(150));
    }
}
