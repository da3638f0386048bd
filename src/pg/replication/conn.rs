//! The replication connection before streaming: TCP + TLS, startup with `replication=database`, authentication,
//! and the simple-query protocol for replication commands. Whole protocol messages are read and written by the
//! `framing` layer (read buffer of [`READ_BUFFER_SIZE`] bytes); `START_REPLICATION`, which turns a client into a
//! [`ReplicationStream`](super::ReplicationStream), lives with the stream in [`stream`](super::stream).
//!
//! Invariant: outside a method call a [`ReplicationClient`] is idle, between commands: each command's replies are
//! read up to ReadyForQuery before it returns (a FATAL error ends the connection instead), so the next command
//! starts on a clean connection.

use std::collections::HashMap;
use std::io;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::commands::{
    CreatedSlot, IdentifySystem, SnapshotAction, create_slot_command, drop_slot_command, parse_server_version,
};
use super::error::{ReplicationError, sqlstate};
pub use super::framing::READ_BUFFER_SIZE;
use super::framing::{Backend, FrameReader, FrameWriter, log_notice, unexpected};
use super::tls::{self, Socket};
use crate::pg::conninfo::{ChannelBindingMode, ConnInfo, HostPort, TargetSessionAttrs};
use crate::pg::lsn::Lsn;

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
/// use outbox_relay::pg::conninfo::ConnInfo;
/// use outbox_relay::pg::replication::{ReplicationClient, ReplicationOptions};
/// let config = ConnInfo::from_url("postgres://relay:secret@db:5432/app?sslmode=verify-full&sslrootcert=/ca.pem")?;
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

    /// Connects to the first of the URL's hosts that accepts (and, with `target_session_attrs=read-write`, is a
    /// primary), like libpq: for each, TCP, TLS per `sslmode`, authentication and ReadyForQuery within
    /// `connect_timeout`. The error is the last host's.
    pub async fn connect(config: &ConnInfo) -> Result<ReplicationClient, ReplicationError> {
        let mut last = None;
        for target in &config.hosts {
            match Self::connect_to(config, target).await {
                Ok(client) => return Ok(client),
                Err(e) => {
                    tracing::debug!(host = %target, error = %e, "replication connection attempt failed");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(ReplicationError::Config(crate::pg::conninfo::ConfigError::Missing("host"))))
    }

    async fn connect_to(config: &ConnInfo, target: &HostPort) -> Result<ReplicationClient, ReplicationError> {
        let fut = Self::connect_inner(config, target);
        let mut client = match config.connect_timeout {
            Some(timeout) => tokio::time::timeout(timeout, fut).await.map_err(|_| {
                ReplicationError::ConnectTimeout { host: target.host.clone(), port: target.port, timeout }
            })??,
            None => fut.await?,
        };
        if config.target_session_attrs == TargetSessionAttrs::ReadWrite {
            let results = client.simple_query(crate::pg::conninfo::READ_ONLY_QUERY).await?;
            if ConnInfo::is_read_only(results.iter().find_map(|r| r.get(0, "transaction_read_only"))) {
                let _ = client.close().await;
                return Err(ReplicationError::NotPrimary { host: target.to_string() });
            }
        }
        tracing::debug!(
            host = %target.host,
            port = target.port,
            user = %config.user,
            backend_pid = client.info.backend_pid,
            server_version_num = client.info.server_version_num,
            tls = client.info.tls,
            channel_bound = client.info.channel_bound,
            "replication connection ready"
        );
        Ok(client)
    }

    async fn connect_inner(config: &ConnInfo, target: &HostPort) -> Result<ReplicationClient, ReplicationError> {
        let tcp = match target.addr {
            Some(ip) => connect_tcp(&ip.to_string(), target.port).await?,
            None => connect_tcp(&target.host, target.port).await?,
        };
        let tls::Negotiated { socket, end_point } = tls::negotiate(tcp, config, &target.host).await?;
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

    async fn startup(&mut self, config: &ConnInfo, end_point: Option<Vec<u8>>) -> Result<(), ReplicationError> {
        let mut params: Vec<(&str, &str)> = vec![
            ("user", &config.user),
            ("database", &config.dbname),
            ("replication", "database"),
            // pgoutput's text values are the types' output functions under these settings: pin the ones the
            // outbox mapper parses (UTF-8 text, ISO timestamps) whatever the role's or database's defaults are.
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO"),
        ];
        params.push(("application_name", &config.application_name));
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
    async fn authenticate(&mut self, config: &ConnInfo, end_point: Option<Vec<u8>>) -> Result<bool, ReplicationError> {
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

    pub(super) fn record_parameter(
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

pub(super) fn nul_in(what: &'static str) -> impl FnOnce(io::Error) -> ReplicationError {
    move |_| ReplicationError::InvalidArgument(format!("the {what} contains a NUL byte"))
}

fn malformed(what: &'static str) -> impl FnOnce(io::Error) -> ReplicationError {
    move |e| ReplicationError::protocol(format!("malformed {what}: {e}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

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
