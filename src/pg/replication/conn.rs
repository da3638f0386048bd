//! The replication connection before streaming: TCP + TLS, startup with `replication=database`, authentication,
//! and the simple-query protocol for replication commands.
//!
//! Framing: one read buffer of at least [`READ_BUFFER_SIZE`] bytes; each backend message is cut off it with
//! `split_to().freeze()`, so message bodies (and the XLogData payloads later) are views into the buffer, not copies.
//! Frontend messages are encoded into one write buffer and written in one go; the buffer keeps whatever a cancelled
//! write did not send, so the next flush continues the same byte stream.

use std::collections::HashMap;
use std::io;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use super::commands::{
    CreatedSlot, IdentifySystem, ReplicationOptions, SnapshotAction, create_slot_command, drop_slot_command,
    parse_server_version,
};
use super::config::{ChannelBindingMode, ReplicationConfig};
use super::error::{DbError, ReplicationError, sqlstate};
use super::stream::ReplicationStream;
use super::tls::{self, Socket};
use crate::pg::lsn::Lsn;

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
    io: ReadHalf<Socket>,
    buf: BytesMut,
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
    io: WriteHalf<Socket>,
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

/// What the server told us at startup.
#[derive(Clone, Debug, Default)]
pub struct ServerInfo {
    /// `ParameterStatus` values (server_version, server_encoding, ...), updated when the server reports changes.
    pub parameters: HashMap<String, String>,
    /// Process id of the walsender serving this connection (`pg_stat_replication.pid`).
    pub backend_pid: i32,
    /// `server_version_num` derived from the `server_version` parameter (e.g. 150004), 0 if unknown.
    pub server_version_num: u32,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// Whether SCRAM authentication was bound to the TLS channel.
    pub channel_bound: bool,
    /// A logical `START_REPLICATION` already ran on this connection (see [`ReplicationClient::start_replication`]).
    pub(crate) streamed: bool,
}

/// One result set of a simple query (all values in text form).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryResult {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows; `None` is SQL NULL.
    pub rows: Vec<Vec<Option<String>>>,
    /// The `CommandComplete` tag, e.g. `SELECT 1` or `CREATE_REPLICATION_SLOT`.
    pub command_tag: String,
}

impl QueryResult {
    /// The value of `column` in row `row`; `None` for NULL, a missing row or column.
    pub fn get(&self, row: usize, column: &str) -> Option<&str> {
        let idx = self.columns.iter().position(|c| c == column)?;
        self.rows.get(row)?.get(idx)?.as_deref()
    }
}

/// An authenticated replication connection (`replication=database`), idle and ready for commands.
///
/// ```no_run
/// # async fn f() -> Result<(), outbox_relay::pg::replication::ReplicationError> {
/// use outbox_relay::pg::replication::{ReplicationClient, ReplicationConfig, ReplicationOptions};
/// let config = ReplicationConfig::from_url("postgres://relay:secret@db:5432/app?sslmode=verify-full&sslrootcert=/ca.pem")?;
/// let mut client = ReplicationClient::connect(&config).await?;
/// let system = client.identify_system().await?;
/// let mut stream = client.start_replication(&ReplicationOptions::new("outbox_slot", ["outbox_pub"])).await?;
/// while let Some(msg) = stream.next().await? {
///     // decode, produce, commit to Kafka, then: stream.ack(commit_lsn);
/// }
/// # Ok(()) }
/// ```
pub struct ReplicationClient {
    pub(crate) reader: FrameReader,
    pub(crate) writer: FrameWriter,
    pub(crate) info: ServerInfo,
}

impl std::fmt::Debug for ReplicationClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationClient").field("info", &self.info).finish_non_exhaustive()
    }
}

impl ReplicationClient {
    /// A client over an already connected socket, past startup: for tests that play the server.
    #[cfg(test)]
    pub(crate) fn over(socket: Socket, info: ServerInfo) -> ReplicationClient {
        let (read_half, write_half) = tokio::io::split(socket);
        ReplicationClient {
            reader: FrameReader { io: read_half, buf: BytesMut::with_capacity(READ_BUFFER_SIZE) },
            writer: FrameWriter { io: write_half, buf: BytesMut::new() },
            info,
        }
    }

    /// Connects, negotiates TLS per `sslmode`, authenticates and waits for ReadyForQuery, all within
    /// `connect_timeout`.
    pub async fn connect(config: &ReplicationConfig) -> Result<ReplicationClient, ReplicationError> {
        let fut = Self::connect_inner(config);
        let client = match config.connect_timeout {
            Some(timeout) => tokio::time::timeout(timeout, fut).await.map_err(|_| {
                ReplicationError::ConnectTimeout { host: config.host.clone(), port: config.port, timeout }
            })??,
            None => fut.await?,
        };
        tracing::debug!(
            host = %config.host,
            port = config.port,
            user = %config.user,
            backend_pid = client.info.backend_pid,
            server_version_num = client.info.server_version_num,
            tls = client.info.tls,
            channel_bound = client.info.channel_bound,
            "replication connection ready"
        );
        Ok(client)
    }

    async fn connect_inner(config: &ReplicationConfig) -> Result<ReplicationClient, ReplicationError> {
        let tcp = connect_tcp(&config.host, config.port).await?;
        let tls::Negotiated { socket, end_point } = tls::negotiate(tcp, config).await?;
        let is_tls = matches!(socket, Socket::Tls(_));
        let (read_half, write_half) = tokio::io::split(socket);
        let mut client = ReplicationClient {
            reader: FrameReader { io: read_half, buf: BytesMut::with_capacity(READ_BUFFER_SIZE) },
            writer: FrameWriter { io: write_half, buf: BytesMut::with_capacity(4096) },
            info: ServerInfo { tls: is_tls, ..ServerInfo::default() },
        };
        client.startup(config, end_point).await?;
        Ok(client)
    }

    async fn startup(
        &mut self,
        config: &ReplicationConfig,
        end_point: Option<Vec<u8>>,
    ) -> Result<(), ReplicationError> {
        let mut params: Vec<(&str, &str)> = vec![
            ("user", &config.user),
            ("database", &config.dbname),
            ("replication", "database"),
            // pgoutput's text values are the types' output functions under these settings: pin the ones the
            // outbox mapper parses (UTF-8 text, ISO timestamps) whatever the role's or database's defaults are.
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO"),
        ];
        if let Some(app) = &config.application_name {
            params.push(("application_name", app));
        }
        if let Some(options) = &config.options {
            params.push(("options", options));
        }
        frontend::startup_message(params, &mut self.writer.buf).map_err(nul_in("startup parameter"))?;
        self.writer.flush().await?;
        self.info.channel_bound = self.authenticate(config, end_point).await?;

        loop {
            match self.reader.read_message().await? {
                Backend::Msg(Message::ParameterStatus(body)) => self.record_parameter(&body)?,
                Backend::Msg(Message::BackendKeyData(body)) => self.info.backend_pid = body.process_id(),
                Backend::Msg(Message::ReadyForQuery(_)) => break,
                Backend::Error(e) => return Err(ReplicationError::from_server(e)),
                Backend::Notice(n) => log_notice(&n),
                Backend::NegotiateProtocolVersion => {}
                other => return Err(unexpected(&other, "during startup")),
            }
        }
        let version = self.info.parameters.get("server_version").map(String::as_str).unwrap_or_default();
        self.info.server_version_num = parse_server_version(version).unwrap_or_else(|| {
            tracing::warn!(server_version = version, "could not parse server_version; assuming a pre-14 server");
            0
        });
        Ok(())
    }

    /// Runs the authentication exchange; returns whether SCRAM was channel-bound.
    async fn authenticate(
        &mut self,
        config: &ReplicationConfig,
        end_point: Option<Vec<u8>>,
    ) -> Result<bool, ReplicationError> {
        let password = || {
            config.password.as_deref().ok_or_else(|| ReplicationError::PasswordMissing { user: config.user.clone() })
        };
        let mut scram: Option<ScramSha256> = None;
        let mut bound = false;
        loop {
            let msg = match self.reader.read_message().await? {
                Backend::Msg(m) => m,
                Backend::NegotiateProtocolVersion => continue,
                Backend::Notice(n) => {
                    log_notice(&n);
                    continue;
                }
                Backend::Error(error) => {
                    return Err(match error.code.as_str() {
                        sqlstate::INVALID_PASSWORD | sqlstate::INVALID_AUTHORIZATION_SPECIFICATION => {
                            ReplicationError::AuthFailed { user: config.user.clone(), error: Box::new(error) }
                        }
                        _ => ReplicationError::from_server(error),
                    });
                }
                other => return Err(unexpected(&other, "during authentication")),
            };
            match msg {
                Message::AuthenticationOk => break,
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(password()?.as_bytes(), &mut self.writer.buf)
                        .map_err(nul_in("password"))?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let hash = md5_hash(config.user.as_bytes(), password()?.as_bytes(), body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.writer.buf).map_err(nul_in("password"))?;
                }
                Message::AuthenticationSasl(body) => {
                    let (mut plain, mut plus) = (false, false);
                    let mut mechanisms = body.mechanisms();
                    while let Some(m) = mechanisms.next().map_err(malformed("SASL mechanism list"))? {
                        plain |= m == SCRAM_SHA_256;
                        plus |= m == SCRAM_SHA_256_PLUS;
                    }
                    let (mechanism, binding) = match (&end_point, config.channel_binding) {
                        (Some(ep), ChannelBindingMode::Prefer | ChannelBindingMode::Require) if plus => {
                            bound = true;
                            (SCRAM_SHA_256_PLUS, ChannelBinding::tls_server_end_point(ep.clone()))
                        }
                        (None, ChannelBindingMode::Require) => {
                            return Err(ReplicationError::ChannelBindingRequired(
                                "the connection is not TLS (use sslmode=require or stricter)",
                            ));
                        }
                        (_, ChannelBindingMode::Require) => {
                            return Err(ReplicationError::ChannelBindingRequired(
                                "the server did not offer SCRAM-SHA-256-PLUS",
                            ));
                        }
                        // We could bind but the server cannot: say so ("y"), which lets the server detect a
                        // man-in-the-middle that stripped the PLUS mechanism.
                        (Some(_), ChannelBindingMode::Prefer) => (SCRAM_SHA_256, ChannelBinding::unrequested()),
                        _ => (SCRAM_SHA_256, ChannelBinding::unsupported()),
                    };
                    if mechanism == SCRAM_SHA_256 && !plain {
                        return Err(ReplicationError::UnsupportedAuth { method: "SASL without SCRAM-SHA-256".into() });
                    }
                    let s = ScramSha256::new(password()?.as_bytes(), binding);
                    frontend::sasl_initial_response(mechanism, s.message(), &mut self.writer.buf)
                        .map_err(nul_in("SASL mechanism"))?;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram.as_mut().ok_or_else(|| ReplicationError::protocol("SASL continue before start"))?;
                    s.update(body.data()).map_err(malformed("SCRAM server-first message"))?;
                    frontend::sasl_response(s.message(), &mut self.writer.buf).map_err(nul_in("SCRAM response"))?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let s = scram.as_mut().ok_or_else(|| ReplicationError::protocol("SASL final before start"))?;
                    s.finish(body.data()).map_err(|e| {
                        ReplicationError::protocol(format!(
                            "the server's SCRAM signature did not verify ({e}): it does not know the password, or \
                             the connection is intercepted"
                        ))
                    })?;
                }
                Message::AuthenticationGss | Message::AuthenticationGssContinue(_) => {
                    return Err(ReplicationError::UnsupportedAuth { method: "GSSAPI".into() });
                }
                Message::AuthenticationSspi => return Err(ReplicationError::UnsupportedAuth { method: "SSPI".into() }),
                Message::AuthenticationKerberosV5 => {
                    return Err(ReplicationError::UnsupportedAuth { method: "Kerberos V5".into() });
                }
                Message::AuthenticationScmCredential => {
                    return Err(ReplicationError::UnsupportedAuth { method: "SCM credential".into() });
                }
                other => return Err(unexpected(&Backend::Msg(other), "during authentication")),
            }
            self.writer.flush().await?;
        }
        if config.channel_binding == ChannelBindingMode::Require && !bound {
            return Err(ReplicationError::ChannelBindingRequired(
                "the server authenticated without SCRAM channel binding (check pg_hba.conf uses scram-sha-256)",
            ));
        }
        Ok(bound)
    }

    fn record_parameter(
        &mut self,
        body: &postgres_protocol::message::backend::ParameterStatusBody,
    ) -> Result<(), ReplicationError> {
        let name = body.name().map_err(malformed("ParameterStatus"))?;
        let value = body.value().map_err(malformed("ParameterStatus"))?;
        self.info.parameters.insert(name.to_owned(), value.to_owned());
        Ok(())
    }

    /// What the server reported at startup.
    pub fn server_info(&self) -> &ServerInfo {
        &self.info
    }

    /// `server_version_num` (e.g. 150004), derived from the `server_version` parameter.
    pub fn server_version_num(&self) -> u32 {
        self.info.server_version_num
    }

    /// Process id of the walsender serving this connection.
    pub fn backend_pid(&self) -> i32 {
        self.info.backend_pid
    }

    /// Runs one query with the simple-query protocol and returns its result sets. Works for replication commands
    /// and, on a `replication=database` connection, for SQL. Errors are returned after the server is ready again,
    /// so the connection stays usable (unless the error was FATAL).
    pub async fn simple_query(&mut self, query: &str) -> Result<Vec<QueryResult>, ReplicationError> {
        frontend::query(query, &mut self.writer.buf).map_err(nul_in("query"))?;
        self.writer.flush().await?;
        let mut results = Vec::new();
        let mut current = QueryResult::default();
        let mut error = None;
        loop {
            match self.reader.read_message().await? {
                Backend::Msg(Message::RowDescription(body)) => {
                    let mut fields = body.fields();
                    current.columns.clear();
                    while let Some(f) = fields.next().map_err(malformed("RowDescription"))? {
                        current.columns.push(f.name().to_owned());
                    }
                }
                Backend::Msg(Message::DataRow(body)) => {
                    let buf = body.buffer();
                    let mut ranges = body.ranges();
                    let mut row = Vec::with_capacity(current.columns.len());
                    while let Some(r) = ranges.next().map_err(malformed("DataRow"))? {
                        row.push(r.and_then(|r| buf.get(r)).map(|v| String::from_utf8_lossy(v).into_owned()));
                    }
                    current.rows.push(row);
                }
                Backend::Msg(Message::CommandComplete(body)) => {
                    current.command_tag = body.tag().map_err(malformed("CommandComplete"))?.to_owned();
                    results.push(std::mem::take(&mut current));
                }
                Backend::Msg(Message::EmptyQueryResponse) => {}
                Backend::Error(e) => {
                    if matches!(e.severity.as_str(), "FATAL" | "PANIC") {
                        return Err(ReplicationError::from_server(e));
                    }
                    error = Some(e);
                }
                Backend::Notice(n) => log_notice(&n),
                Backend::Msg(Message::ParameterStatus(body)) => self.record_parameter(&body)?,
                Backend::Msg(Message::ReadyForQuery(_)) => break,
                other => return Err(unexpected(&other, "in reply to a simple query (use start_replication for COPY)")),
            }
        }
        match error {
            Some(e) => Err(ReplicationError::from_server(e)),
            None => Ok(results),
        }
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<IdentifySystem, ReplicationError> {
        let results = self.simple_query("IDENTIFY_SYSTEM").await?;
        let r = single_row(&results, "IDENTIFY_SYSTEM")?;
        let field = |name: &'static str| {
            r.get(0, name).ok_or_else(|| ReplicationError::protocol(format!("IDENTIFY_SYSTEM returned no {name}")))
        };
        Ok(IdentifySystem {
            system_id: parse_field(field("systemid")?, "systemid")?,
            timeline: parse_field(field("timeline")?, "timeline")?,
            xlogpos: parse_field::<Lsn>(field("xlogpos")?, "xlogpos")?,
            dbname: r.get(0, "dbname").map(str::to_owned),
        })
    }

    /// `TIMELINE_HISTORY timeline`: the content of that timeline's history file (timeline 1 has none; the server
    /// refuses it). Parse it with [`crate::pg::identity::parse_timeline_history`].
    pub async fn timeline_history(&mut self, timeline: u32) -> Result<String, ReplicationError> {
        let results = self.simple_query(&format!("TIMELINE_HISTORY {timeline}")).await?;
        let r = single_row(&results, "TIMELINE_HISTORY")?;
        r.get(0, "content")
            .map(str::to_owned)
            .ok_or_else(|| ReplicationError::protocol("TIMELINE_HISTORY returned no content"))
    }

    /// `CREATE_REPLICATION_SLOT name [TEMPORARY] LOGICAL pgoutput` with the given snapshot action. A temporary slot
    /// is dropped by the server when this connection ends.
    pub async fn create_replication_slot(
        &mut self,
        name: &str,
        temporary: bool,
        snapshot: SnapshotAction,
    ) -> Result<CreatedSlot, ReplicationError> {
        let cmd = create_slot_command(name, temporary, snapshot, self.info.server_version_num)?;
        let results = self.simple_query(&cmd).await?;
        let r = single_row(&results, "CREATE_REPLICATION_SLOT")?;
        let point = r
            .get(0, "consistent_point")
            .ok_or_else(|| ReplicationError::protocol("CREATE_REPLICATION_SLOT returned no consistent_point"))?;
        Ok(CreatedSlot {
            slot_name: r.get(0, "slot_name").unwrap_or(name).to_owned(),
            consistent_point: parse_field::<Lsn>(point, "consistent_point")?,
            snapshot_name: r.get(0, "snapshot_name").map(str::to_owned),
            output_plugin: r.get(0, "output_plugin").map(str::to_owned),
        })
    }

    /// `DROP_REPLICATION_SLOT name [WAIT]` (with `wait`, waits for an active slot to be released instead of failing).
    pub async fn drop_replication_slot(&mut self, name: &str, wait: bool) -> Result<(), ReplicationError> {
        self.simple_query(&drop_slot_command(name, wait)?).await.map(drop)
    }

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

    /// Sends Terminate and closes the connection (temporary slots are dropped by the server).
    pub async fn close(mut self) -> Result<(), ReplicationError> {
        frontend::terminate(&mut self.writer.buf);
        self.writer.flush().await?;
        self.writer.io.shutdown().await.ok();
        Ok(())
    }
}

async fn connect_tcp(host: &str, port: u16) -> Result<TcpStream, ReplicationError> {
    let connect_err = |source| ReplicationError::Connect { host: host.to_owned(), port, source };
    let addrs = tokio::net::lookup_host((host, port)).await.map_err(connect_err)?;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the host name resolved to no address");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                // Status updates are tiny and latency-sensitive; never let Nagle hold them back.
                s.set_nodelay(true).map_err(connect_err)?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(connect_err(last))
}

fn single_row<'a>(results: &'a [QueryResult], command: &str) -> Result<&'a QueryResult, ReplicationError> {
    results
        .iter()
        .find(|r| !r.rows.is_empty())
        .ok_or_else(|| ReplicationError::protocol(format!("{command} returned no row")))
}

fn parse_field<T: std::str::FromStr>(value: &str, name: &str) -> Result<T, ReplicationError> {
    value.parse().map_err(|_| ReplicationError::protocol(format!("invalid {name} {value:?}")))
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

fn nul_in(what: &'static str) -> impl FnOnce(io::Error) -> ReplicationError {
    move |_| ReplicationError::InvalidArgument(format!("the {what} contains a NUL byte"))
}

fn malformed(what: &'static str) -> impl FnOnce(io::Error) -> ReplicationError {
    move |e| ReplicationError::protocol(format!("malformed {what}: {e}"))
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

    #[test]
    fn query_result_lookup() {
        let r = QueryResult {
            columns: vec!["a".into(), "b".into()],
            rows: vec![vec![Some("1".into()), None]],
            command_tag: "SELECT 1".into(),
        };
        assert_eq!(r.get(0, "a"), Some("1"));
        assert_eq!(r.get(0, "b"), None);
        assert_eq!(r.get(0, "c"), None);
        assert_eq!(r.get(1, "a"), None);
    }
}
