//! The `[postgres]` section: the connection URL, slot and publication, replication and reconnection settings, and
//! opening an ordinary SQL connection with them.
//!
//! Invariant: the password in the URL never appears in `Debug` output or in an error ([`crate::config::redact_url`]).
//!
//! The URL is parsed once, when the configuration loads, into a [`ConnInfo`] that both the SQL connection and the
//! replication connection use (see [`crate::pg::conninfo`]).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::pg::conninfo::{self, ConnInfo, TargetSessionAttrs};

use crate::config::fields::default_true;
use crate::config::redact::redact_url;

/// Longest PostgreSQL identifier (NAMEDATALEN - 1), which bounds slot and publication names.
pub(crate) const MAX_PG_IDENTIFIER_LEN: usize = 63;

const fn default_protocol_version() -> u32 {
    0
}
const fn default_status_interval_ms() -> u64 {
    10_000
}
const fn default_heartbeat_interval_ms() -> u64 {
    10_000
}
fn default_heartbeat_prefix() -> String {
    "outbox-relay.heartbeat".to_owned()
}
const fn default_spill_threshold_bytes() -> u64 {
    // 16 MiB keeps the relay well inside 128 MiB of memory through a transaction of any size (benches/README.md).
    16 << 20
}
const fn default_stall_timeout_ms() -> u64 {
    30_000
}
const fn default_reconnect_backoff_initial_ms() -> u64 {
    500
}
const fn default_reconnect_backoff_max_ms() -> u64 {
    30_000
}

/// PostgreSQL source settings.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection URL, `postgres://user:password@host:port/database?sslmode=verify-full&sslrootcert=/ca.pem`.
    /// Required. `sslmode` is one of disable, prefer (default), require, verify-ca, verify-full; `sslrootcert`,
    /// `sslcert` and `sslkey` name PEM files.
    #[serde(default)]
    pub url: String,
    /// Logical replication slot name (`[a-z0-9_]`, at most 63 characters). Default: the connector name lowercased,
    /// with every other character replaced by `_`.
    #[serde(default)]
    pub slot: String,
    /// Publication name (`[a-z0-9_]`, at most 63 characters). Default: derived like `slot`.
    #[serde(default)]
    pub publication: String,
    /// Create the replication slot when it does not exist.
    #[serde(default = "default_true")]
    pub create_slot: bool,
    /// Create the publication (`publish = 'insert'`, on the outbox tables) when it does not exist.
    #[serde(default = "default_true")]
    pub create_publication: bool,
    /// pgoutput protocol version: 0 picks the highest the server supports, or 1 to 4.
    #[serde(default = "default_protocol_version")]
    pub protocol_version: u32,
    /// Stream large in-progress transactions instead of waiting for their commit (needs protocol version >= 2).
    #[serde(default = "default_true")]
    pub streaming: bool,
    /// Interval between standby status updates sent to the server, in milliseconds. Keep it well below the
    /// server's `wal_sender_timeout`.
    #[serde(default = "default_status_interval_ms")]
    pub status_interval_ms: u64,
    /// While idle, write a transactional `pg_logical_emit_message` this often so the checkpoint and the slot keep
    /// advancing and the server can recycle WAL, in milliseconds; 0 disables heartbeats.
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// Logical message prefix of heartbeats.
    #[serde(default = "default_heartbeat_prefix")]
    pub heartbeat_prefix: String,
    /// Memory held by one streamed in-progress transaction before it spills to disk, in bytes.
    #[serde(default = "default_spill_threshold_bytes")]
    pub spill_threshold_bytes: u64,
    /// Directory for spilled transactions. Default (empty): the system temporary directory.
    #[serde(default)]
    pub spill_dir: PathBuf,
    /// Create the slot with `FAILOVER` so it is synchronized to standbys (PostgreSQL 17 and later).
    #[serde(default)]
    pub failover_slot: bool,
    /// How long a PostgreSQL connection may stay silent while the relay waits for it, in milliseconds: the
    /// replication connection asks the server for a reply with every status update and counts as dead after this
    /// long without any message; every SQL statement (setup, heartbeats) is abandoned after it. A connection cut
    /// without a FIN is noticed within this time.
    #[serde(default = "default_stall_timeout_ms")]
    pub stall_timeout_ms: u64,
    /// First delay before reconnecting after a lost connection, in milliseconds; doubles up to the maximum.
    #[serde(default = "default_reconnect_backoff_initial_ms")]
    pub reconnect_backoff_initial_ms: u64,
    /// Longest delay between reconnection attempts, in milliseconds.
    #[serde(default = "default_reconnect_backoff_max_ms")]
    pub reconnect_backoff_max_ms: u64,
    /// `url`, parsed when the configuration loaded.
    #[serde(skip)]
    connection: Option<ConnInfo>,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: String::new(),
            slot: String::new(),
            publication: String::new(),
            create_slot: true,
            create_publication: true,
            protocol_version: default_protocol_version(),
            streaming: true,
            status_interval_ms: default_status_interval_ms(),
            heartbeat_interval_ms: default_heartbeat_interval_ms(),
            heartbeat_prefix: default_heartbeat_prefix(),
            spill_threshold_bytes: default_spill_threshold_bytes(),
            spill_dir: PathBuf::new(),
            failover_slot: false,
            stall_timeout_ms: default_stall_timeout_ms(),
            reconnect_backoff_initial_ms: default_reconnect_backoff_initial_ms(),
            reconnect_backoff_max_ms: default_reconnect_backoff_max_ms(),
            connection: None,
        }
    }
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redact_url(&self.url))
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .field("create_slot", &self.create_slot)
            .field("create_publication", &self.create_publication)
            .field("protocol_version", &self.protocol_version)
            .field("streaming", &self.streaming)
            .field("status_interval_ms", &self.status_interval_ms)
            .field("heartbeat_interval_ms", &self.heartbeat_interval_ms)
            .field("heartbeat_prefix", &self.heartbeat_prefix)
            .field("spill_threshold_bytes", &self.spill_threshold_bytes)
            .field("spill_dir", &self.spill_dir)
            .field("failover_slot", &self.failover_slot)
            .field("stall_timeout_ms", &self.stall_timeout_ms)
            .field("reconnect_backoff_initial_ms", &self.reconnect_backoff_initial_ms)
            .field("reconnect_backoff_max_ms", &self.reconnect_backoff_max_ms)
            .finish()
    }
}

/// Why a PostgreSQL SQL connection could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The connection URL cannot be used (a configuration not loaded through [`crate::config::Config`], or a
    /// certificate file that became unreadable since).
    #[error("invalid postgres.url: {0}")]
    Url(#[from] conninfo::ConfigError),
    /// The configuration was built without loading it, so `postgres.url` was never parsed.
    #[error("postgres.url was not parsed: build the configuration with Config::load or Config::from_toml_str")]
    NotLoaded,
    /// `target_session_attrs=read-write` and every host of the URL answered as read-only (standbys). Transient: a
    /// failover may promote one of them.
    #[error(
        "{target}: every host is a read-only server (a standby) and target_session_attrs=read-write asks for the \
         primary; list the primary among the hosts of postgres.url"
    )]
    NotPrimary {
        /// `host:port` list, for the operator.
        target: String,
    },
    /// The server could not be reached or refused the login.
    #[error("cannot connect to PostgreSQL at {target}")]
    Connect {
        /// `host:port` list, for the operator.
        target: String,
        /// tokio-postgres' error.
        #[source]
        source: tokio_postgres::Error,
    },
}

impl ConnectError {
    /// Whether retrying later may help (the server may come up); setup errors and refused logins are definite.
    pub fn is_transient(&self) -> bool {
        match self {
            ConnectError::Connect { source, .. } => crate::pg::is_transient_sql_error(source),
            ConnectError::NotPrimary { .. } => true,
            _ => false,
        }
    }
}

impl PostgresConfig {
    /// Checks every setting and parses the URL into the [`ConnInfo`] both connections use.
    pub(crate) fn validate(&mut self, report: &mut impl FnMut(&str, String)) {
        self.connection = None;
        if self.url.is_empty() {
            report(
                "postgres.url",
                "is required: set url in [postgres] or the environment variable OUTBOX_RELAY_POSTGRES__URL".to_owned(),
            );
        } else {
            match ConnInfo::from_url(&self.url) {
                Ok(info) => self.connection = Some(info),
                Err(e) => report("postgres.url", e.to_string()),
            }
        }
        validate_pg_identifier(&self.slot, "postgres.slot", report);
        validate_pg_identifier(&self.publication, "postgres.publication", report);
        if self.protocol_version > 4 {
            report(
                "postgres.protocol_version",
                format!(
                    "{} is not a pgoutput protocol version; use 1 to 4, or 0 for the highest the server supports",
                    self.protocol_version
                ),
            );
        }
        if self.status_interval_ms == 0 {
            report("postgres.status_interval_ms", "must be at least 1".to_owned());
        }
        if self.heartbeat_interval_ms > 0 && self.heartbeat_prefix.is_empty() {
            report("postgres.heartbeat_prefix", "must not be empty while heartbeats are enabled".to_owned());
        }
        if self.spill_threshold_bytes == 0 {
            report("postgres.spill_threshold_bytes", "must be at least 1".to_owned());
        }
        if self.stall_timeout_ms < 2 * self.status_interval_ms {
            report(
                "postgres.stall_timeout_ms",
                format!(
                    "{} is below twice status_interval_ms ({}): the server's replies to the status updates must have \
                     time to arrive",
                    self.stall_timeout_ms, self.status_interval_ms
                ),
            );
        }
        if self.reconnect_backoff_initial_ms == 0 {
            report("postgres.reconnect_backoff_initial_ms", "must be at least 1".to_owned());
        }
        if self.reconnect_backoff_max_ms < self.reconnect_backoff_initial_ms {
            report(
                "postgres.reconnect_backoff_max_ms",
                format!(
                    "{} is below reconnect_backoff_initial_ms ({}); raise it or lower the initial backoff",
                    self.reconnect_backoff_max_ms, self.reconnect_backoff_initial_ms
                ),
            );
        }
    }

    /// The parsed connection settings (present in every loaded configuration).
    pub fn connection(&self) -> Result<&ConnInfo, ConnectError> {
        self.connection.as_ref().ok_or(ConnectError::NotLoaded)
    }

    /// The server(s) as `host:port` for messages, e.g. `127.0.0.1:5432`.
    pub fn target(&self) -> String {
        self.connection.as_ref().map_or_else(|| "<postgres.url not parsed>".to_owned(), ConnInfo::targets)
    }

    /// Opens an ordinary (non-replication) connection and spawns its connection task.
    pub async fn connect_sql(&self) -> Result<tokio_postgres::Client, ConnectError> {
        self.connect_sql_timeout(None).await
    }

    /// Like [`Self::connect_sql`], waiting at most `timeout` (or the URL's `connect_timeout` when that is shorter).
    pub async fn connect_sql_timeout(
        &self,
        timeout: impl Into<Option<Duration>>,
    ) -> Result<tokio_postgres::Client, ConnectError> {
        self.connect(timeout.into(), None).await
    }

    /// Like [`Self::connect_sql_timeout`], for a connection with a job of its own: its application name is the
    /// configured one plus ` <role>`, so `pg_stat_activity` tells it apart (e.g. `outbox-relay lease`).
    pub async fn connect_sql_as(&self, timeout: Duration, role: &str) -> Result<tokio_postgres::Client, ConnectError> {
        self.connect(Some(timeout), Some(role)).await
    }

    async fn connect(
        &self,
        timeout: Option<Duration>,
        role: Option<&str>,
    ) -> Result<tokio_postgres::Client, ConnectError> {
        let info = self.connection()?;
        // The URL's hosts in order, like libpq: the first that accepts (and, with read-write, is a primary) wins.
        // Otherwise the error is the last host's that failed to connect (the likelier fix: an unreachable primary
        // behind a reachable standby), or NotPrimary when every host answered as a standby.
        let mut last = ConnectError::Url(conninfo::ConfigError::Missing("host"));
        let mut read_only_hosts = 0;
        for target in &info.hosts {
            let (mut config, tls) = info.tokio_postgres(target)?;
            if let Some(role) = role {
                config.application_name(format!("{} {role}", info.application_name));
            }
            if let Some(t) = timeout {
                config.connect_timeout(info.connect_timeout.map_or(t, |c| c.min(t)));
            }
            let connected = match tls {
                Some(tls) => {
                    config.connect(tls).await.map(|(client, connection)| (client, spawn_connection(connection)))
                }
                None => config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map(|(client, connection)| (client, spawn_connection(connection))),
            };
            let (client, task) = match connected {
                Ok(pair) => pair,
                Err(source) => {
                    tracing::debug!(host = %target, error = %source, "sql connection attempt failed");
                    last = ConnectError::Connect { target: target.to_string(), source };
                    continue;
                }
            };
            if info.target_session_attrs == TargetSessionAttrs::ReadWrite {
                let answer = match client.query_one(conninfo::READ_ONLY_QUERY, &[]).await {
                    Ok(row) => row.try_get::<_, String>(0).ok(),
                    Err(source) => {
                        last = ConnectError::Connect { target: target.to_string(), source };
                        continue;
                    }
                };
                if ConnInfo::is_read_only(answer.as_deref()) {
                    drop(client);
                    let _ = task.await;
                    read_only_hosts += 1;
                    if read_only_hosts == info.hosts.len() {
                        last = ConnectError::NotPrimary { target: info.targets() };
                    }
                    continue;
                }
            }
            return Ok(client);
        }
        Err(last)
    }

    /// [`Self::status_interval_ms`] as a duration.
    pub const fn status_interval(&self) -> Duration {
        Duration::from_millis(self.status_interval_ms)
    }

    /// [`Self::heartbeat_interval_ms`] as a duration, or `None` when heartbeats are disabled.
    pub const fn heartbeat_interval(&self) -> Option<Duration> {
        if self.heartbeat_interval_ms == 0 { None } else { Some(Duration::from_millis(self.heartbeat_interval_ms)) }
    }

    /// [`Self::reconnect_backoff_initial_ms`] as a duration.
    pub const fn reconnect_backoff_initial(&self) -> Duration {
        Duration::from_millis(self.reconnect_backoff_initial_ms)
    }

    /// [`Self::reconnect_backoff_max_ms`] as a duration.
    pub const fn reconnect_backoff_max(&self) -> Duration {
        Duration::from_millis(self.reconnect_backoff_max_ms)
    }
}

/// Drives a SQL connection until it closes; a close with an error is logged.
fn spawn_connection<S, T>(connection: tokio_postgres::Connection<S, T>) -> tokio::task::JoinHandle<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "postgres sql connection closed with an error");
        }
    })
}

/// The default slot and publication name for a connector: lowercased, every character outside `[a-z0-9_]`
/// replaced by `_`, cut to 63 characters.
pub fn derive_pg_identifier(connector_name: &str) -> String {
    connector_name
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' { c } else { '_' })
        .take(MAX_PG_IDENTIFIER_LEN)
        .collect()
}

pub(crate) fn validate_pg_identifier(value: &str, key: &str, report: &mut impl FnMut(&str, String)) {
    if value.is_empty() {
        report(key, "must not be empty".to_owned());
    } else if value.len() > MAX_PG_IDENTIFIER_LEN {
        report(key, format!("`{value}` is longer than {MAX_PG_IDENTIFIER_LEN} characters"));
    } else if let Some(c) = value.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')) {
        report(key, format!("`{value}` contains {c:?}; use only lowercase letters, digits and '_'"));
    }
}
