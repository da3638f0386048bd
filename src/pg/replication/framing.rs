//! The framing layer of the replication connection, shared by the command phase ([`conn`](super::conn)) and the
//! CopyBoth phase ([`stream`](super::stream)): whole backend messages off the socket ([`FrameReader`], [`Backend`]),
//! frontend messages onto it ([`FrameWriter`]), and the two helpers both phases use for unexpected messages and for
//! server notices.
//!
//! One read buffer of at least [`READ_BUFFER_SIZE`] bytes; each backend message is cut off it with
//! `split_to().freeze()`, so message bodies (and the XLogData payloads later) are views into the buffer, not copies.
//! Frontend messages are encoded into one write buffer and written in one go; the buffer keeps whatever a cancelled
//! write did not send, so the next flush continues the same byte stream.
//!
//! Invariant: cancelling a read or a write never tears the byte streams: a backend message is returned whole or stays
//! in the read buffer, frontend bytes go out in order and each once, and a length that no PostgreSQL message can have
//! fails the read instead of allocating for it.

use std::io;

use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};

use super::error::{DbError, ReplicationError};
use super::tls::Socket;

/// Size of the read buffer, and the free space ensured before each read.
pub const READ_BUFFER_SIZE: usize = 128 * 1024;

/// Larger than any message PostgreSQL sends (`MaxAllocSize` is 1 GiB): a bigger length means a corrupt stream,
/// and must not make us allocate it.
const MAX_BACKEND_MESSAGE: usize = (1 << 30) + 1024;

const COPY_BOTH_RESPONSE_TAG: u8 = b'W';
const NEGOTIATE_PROTOCOL_VERSION_TAG: u8 = b'v';
const ERROR_RESPONSE_TAG: u8 = b'E';
const NOTICE_RESPONSE_TAG: u8 = b'N';

/// A backend message. postgres-protocol 0.6 does not know CopyBothResponse and NegotiateProtocolVersion, and its
/// error fields panic on non-UTF-8 text, so those four tags are parsed here.
pub(crate) enum Backend {
    Msg(Message),
    CopyBothResponse,
    NegotiateProtocolVersion,
    Error(DbError),
    Notice(DbError),
}

/// Cuts one message off the front of `buf`; `Ok(None)` means "need more bytes" (and has reserved room for them).
pub(crate) fn parse_backend(buf: &mut BytesMut) -> Result<Option<Backend>, ReplicationError> {
    let Some(header) = buf.get(..5) else { return Ok(None) };
    let (tag, len) = match header {
        [tag, a, b, c, d] => (*tag, u32::from_be_bytes([*a, *b, *c, *d]) as usize),
        _ => return Ok(None),
    };
    if !(4..=MAX_BACKEND_MESSAGE).contains(&len) {
        return Err(ReplicationError::protocol(format!("invalid length {len} of message {:?}", char::from(tag))));
    }
    let total = len + 1;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    match tag {
        COPY_BOTH_RESPONSE_TAG => {
            let _ = buf.split_to(total);
            Ok(Some(Backend::CopyBothResponse))
        }
        NEGOTIATE_PROTOCOL_VERSION_TAG => {
            let _ = buf.split_to(total);
            Ok(Some(Backend::NegotiateProtocolVersion))
        }
        ERROR_RESPONSE_TAG | NOTICE_RESPONSE_TAG => {
            let frame = buf.split_to(total);
            let fields = DbError::parse(frame.get(5..).unwrap_or_default())?;
            Ok(Some(if tag == ERROR_RESPONSE_TAG { Backend::Error(fields) } else { Backend::Notice(fields) }))
        }
        _ => Message::parse(buf)
            .map_err(|e| ReplicationError::protocol(format!("malformed message {:?}: {e}", char::from(tag))))?
            .map(Backend::Msg)
            .ok_or_else(|| ReplicationError::protocol("incomplete message after length check"))
            .map(Some),
    }
}

/// Reads whole backend messages off the socket.
pub(crate) struct FrameReader {
    pub(super) io: ReadHalf<Socket>,
    pub(super) buf: BytesMut,
}

impl FrameReader {
    /// The next message. Cancel-safe: bytes already read stay in the buffer.
    pub(crate) async fn read_message(&mut self) -> Result<Backend, ReplicationError> {
        loop {
            if let Some(m) = parse_backend(&mut self.buf)? {
                return Ok(m);
            }
            if self.buf.capacity() - self.buf.len() < READ_BUFFER_SIZE / 2 {
                self.buf.reserve(READ_BUFFER_SIZE);
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Err(ReplicationError::ConnectionClosed);
            }
        }
    }
}

/// Buffers frontend messages and writes them out.
pub(crate) struct FrameWriter {
    pub(super) io: WriteHalf<Socket>,
    pub(crate) buf: BytesMut,
}

impl FrameWriter {
    /// Writes everything buffered. Cancel-safe: what was not written stays buffered, in order.
    pub(crate) async fn flush(&mut self) -> Result<(), ReplicationError> {
        while !self.buf.is_empty() {
            if self.io.write_buf(&mut self.buf).await? == 0 {
                return Err(ReplicationError::Io(io::Error::from(io::ErrorKind::WriteZero)));
            }
        }
        self.io.flush().await?;
        Ok(())
    }
}

pub(crate) fn log_notice(notice: &DbError) {
    tracing::info!(
        severity = %notice.severity,
        code = %notice.code,
        message = %notice.message,
        detail = notice.detail.as_deref(),
        "server notice"
    );
}

pub(crate) fn unexpected(msg: &Backend, when: &str) -> ReplicationError {
    let name = match msg {
        Backend::CopyBothResponse => "CopyBothResponse",
        Backend::NegotiateProtocolVersion => "NegotiateProtocolVersion",
        Backend::Error(_) => "ErrorResponse",
        Backend::Notice(_) => "NoticeResponse",
        Backend::Msg(m) => match m {
            Message::CopyData(_) => "CopyData",
            Message::CopyDone => "CopyDone",
            Message::CopyInResponse(_) => "CopyInResponse",
            Message::CopyOutResponse(_) => "CopyOutResponse",
            Message::CommandComplete(_) => "CommandComplete",
            Message::DataRow(_) => "DataRow",
            Message::RowDescription(_) => "RowDescription",
            Message::ReadyForQuery(_) => "ReadyForQuery",
            Message::NotificationResponse(_) => "NotificationResponse",
            _ => "message",
        },
    };
    ReplicationError::protocol(format!("unexpected {name} {when}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&u32::try_from(body.len() + 4).unwrap_or(u32::MAX).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn parse(buf: &mut BytesMut) -> Option<Backend> {
        match parse_backend(buf) {
            Ok(m) => m,
            Err(e) => unreachable!("{e}"),
        }
    }

    #[test]
    fn frames_need_whole_messages() {
        let whole = frame(b'd', b"wxyz");
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(whole.get(..cut).unwrap_or_default());
            assert!(parse(&mut buf).is_none(), "cut at {cut}");
            assert_eq!(buf.len(), cut, "an incomplete message must stay in the buffer");
        }
        let mut buf = BytesMut::from(&whole[..]);
        assert!(matches!(parse(&mut buf), Some(Backend::Msg(Message::CopyData(_)))));
        assert!(buf.is_empty());
    }

    #[test]
    fn copy_data_is_a_view_into_the_read_buffer() {
        let mut buf = BytesMut::with_capacity(1024);
        buf.put_slice(&frame(b'd', b"payload"));
        let start = buf.as_ptr();
        match parse(&mut buf) {
            Some(Backend::Msg(Message::CopyData(body))) => {
                let bytes = body.into_bytes();
                assert_eq!(&bytes[..], b"payload");
                assert_eq!(bytes.as_ptr(), start.wrapping_add(5));
            }
            _ => unreachable!("CopyData expected"),
        }
    }

    #[test]
    fn own_tags_and_sequences() {
        let mut bytes = frame(b'W', &[0, 0, 0]);
        bytes.extend(frame(b'E', b"SFATAL\0C57P01\0Mterminating\0\0"));
        bytes.extend(frame(b'N', b"SWARNING\0C01000\0Mhm\0\0"));
        bytes.extend(frame(b'v', &[0, 0, 0, 0, 0, 0, 0, 0]));
        bytes.extend(frame(b'Z', b"I"));
        let mut buf = BytesMut::from(&bytes[..]);
        assert!(matches!(parse(&mut buf), Some(Backend::CopyBothResponse)));
        match parse(&mut buf) {
            Some(Backend::Error(e)) => assert_eq!((e.code.as_str(), e.severity.as_str()), ("57P01", "FATAL")),
            _ => unreachable!("ErrorResponse expected"),
        }
        assert!(matches!(parse(&mut buf), Some(Backend::Notice(n)) if n.message == "hm"));
        assert!(matches!(parse(&mut buf), Some(Backend::NegotiateProtocolVersion)));
        assert!(matches!(parse(&mut buf), Some(Backend::Msg(Message::ReadyForQuery(_)))));
        assert!(parse(&mut buf).is_none());
    }

    #[test]
    fn rejects_bad_lengths_without_allocating() {
        let mut buf = BytesMut::from(&[b'd', 0, 0, 0, 3][..]);
        assert!(parse_backend(&mut buf).is_err());
        let mut buf = BytesMut::from(&[b'd', 0xFF, 0xFF, 0xFF, 0xFF][..]);
        assert!(parse_backend(&mut buf).is_err());
        assert!(buf.capacity() < 1 << 20, "a corrupt length must not reserve memory");
        let mut buf = BytesMut::from(&frame(b'@', b"")[..]);
        assert!(parse_backend(&mut buf).is_err(), "unknown tag");
    }
}
