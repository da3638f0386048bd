//! The `[postgres]` section: the connection URL, slot and publication, replication and reconnection settings, and
//! opening an ordinary SQL connection with them.
//!
//! Invariant: the password in the URL never appears in `Debug` output or in an error ([`crate::config::redact_url`]).
//!
//! PostgreSQL connection strings are URLs (`postgres://user:pass@host:port/db?param=value`) with libpq's
//! `sslmode` values `disable`, `prefer`, `require`, `verify-ca` and `verify-full` and the parameters `sslrootcert`,
//! `sslcert` and `sslkey`. tokio-postgres only knows the first three modes, so those four parameters are taken out
//! of the URL before it reaches [`tokio_postgres::Config`] and TLS is configured here with OpenSSL
//! ([`PostgresConfig::tls_connector`]): `verify-ca` checks the certificate chain, `verify-full` the chain and the
//! host name; `require` verifies the chain only when `sslrootcert` is given (as libpq does).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};
use openssl::x509::X509;
use openssl::x509::store::X509StoreBuilder;
use postgres_openssl::MakeTlsConnector;
use serde::{Deserialize, Serialize};

use crate::config::{default_true, redact_url};

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
    // 16 MiB keeps the relay well inside 128 MiB of memory through a transaction of any size (bench/README.md).
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
    /// `sslcert` and `sslkey` name PEM files. Env: `OUTBOX_RELAY_POSTGRES_URL`.
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
    /// The connection URL was rejected (only when the configuration was not loaded through this module).
    #[error("invalid postgres.url: {message}")]
    Url {
        /// What is wrong.
        message: String,
    },
    /// The TLS setup failed, e.g. an unreadable certificate file.
    #[error("cannot set up TLS for PostgreSQL: {what}")]
    Tls {
        /// What was being done.
        what: String,
        /// OpenSSL's error.
        #[source]
        source: openssl::error::ErrorStack,
    },
    /// A certificate file could not be read.
    #[error("cannot read {}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
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
            _ => false,
        }
    }
}

impl PostgresConfig {
    pub(crate) fn validate(&self, report: &mut impl FnMut(&str, String)) {
        if self.url.is_empty() {
            report(
                "postgres.url",
                "is required: set url in [postgres] or the environment variable OUTBOX_RELAY_POSTGRES_URL".to_owned(),
            );
        } else if let Err(message) = self.connection_parts() {
            report("postgres.url", message);
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

    /// The TLS settings of [`Self::url`].
    pub fn tls(&self) -> Result<PgTls, ConnectError> {
        self.connection_parts().map(|(_, tls)| tls).map_err(|message| ConnectError::Url { message })
    }

    /// The server(s) as `host:port` for messages, e.g. `127.0.0.1:5432`.
    pub fn target(&self) -> String {
        match self.connection_parts() {
            Ok((config, _)) => describe_target(&config),
            Err(_) => "<invalid postgres.url>".to_owned(),
        }
    }

    /// [`Self::url`] as a tokio-postgres configuration: `sslmode` mapped to tokio-postgres' `SslMode` (`verify-ca`
    /// and `verify-full` become `Require`; the verification itself is in [`Self::tls_connector`]), and
    /// `application_name` set to `outbox-relay` unless the URL sets it.
    pub fn tokio_postgres_config(&self) -> Result<tokio_postgres::Config, ConnectError> {
        let (mut config, _) = self.connection_parts().map_err(|message| ConnectError::Url { message })?;
        if config.get_application_name().is_none() {
            config.application_name("outbox-relay");
        }
        Ok(config)
    }

    /// An OpenSSL connector for tokio-postgres that verifies what `sslmode` asks for: nothing for `prefer` and
    /// `require` (unless `sslrootcert` is set), the chain for `verify-ca`, the chain and the host name for
    /// `verify-full`. With `sslrootcert` only that file's certificates are trusted; without it the system's.
    pub fn tls_connector(&self) -> Result<MakeTlsConnector, ConnectError> {
        self.tls()?.connector()
    }

    /// Opens an ordinary (non-replication) connection and spawns its connection task.
    pub async fn connect_sql(&self) -> Result<tokio_postgres::Client, ConnectError> {
        let config = self.tokio_postgres_config()?;
        connect_with(&config, self.tls_connector()?).await
    }

    /// Like [`Self::connect_sql`], with `connect_timeout` set to `timeout` unless the URL sets it.
    pub async fn connect_sql_timeout(&self, timeout: Duration) -> Result<tokio_postgres::Client, ConnectError> {
        let mut config = self.tokio_postgres_config()?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(timeout);
        }
        connect_with(&config, self.tls_connector()?).await
    }

    /// Splits the URL into a tokio-postgres configuration (without the TLS parameters) and the TLS settings.
    fn connection_parts(&self) -> Result<(tokio_postgres::Config, PgTls), String> {
        let url = self.url.as_str();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(format!(
                "`{}` is not a URL starting with postgres:// or postgresql://, e.g. \
                 postgres://user:password@host:5432/database?sslmode=verify-full",
                redact_url(url)
            ));
        }
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, query),
            None => (url, ""),
        };
        let mut tls = PgTls { mode: PgSslMode::Prefer, root_cert: None, client_cert: None, client_key: None };
        let mut kept = Vec::new();
        for (raw, (key, value)) in
            query.split('&').filter(|p| !p.is_empty()).zip(url::form_urlencoded::parse(query.as_bytes()))
        {
            match &*key {
                "sslmode" => {
                    tls.mode = value.parse().map_err(|()| {
                        format!("sslmode `{value}` is not one of disable, prefer, require, verify-ca, verify-full")
                    })?;
                }
                "sslrootcert" => tls.root_cert = Some(PathBuf::from(&*value)),
                "sslcert" => tls.client_cert = Some(PathBuf::from(&*value)),
                "sslkey" => tls.client_key = Some(PathBuf::from(&*value)),
                _ => kept.push(raw),
            }
        }
        let stripped = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
        let mut config = tokio_postgres::Config::from_str(&stripped)
            .map_err(|e| format!("`{}` is not a valid connection URL: {e}", redact_url(url)))?;
        if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
            return Err(format!("`{}` names no host; add one, e.g. postgres://user@host:5432/db", redact_url(url)));
        }
        if tls.client_cert.is_some() != tls.client_key.is_some() {
            return Err("sslcert and sslkey must be given together".to_owned());
        }
        for (name, path) in
            [("sslrootcert", &tls.root_cert), ("sslcert", &tls.client_cert), ("sslkey", &tls.client_key)]
        {
            if let Some(path) = path {
                if !path.is_file() {
                    return Err(format!("{name} file {} does not exist or is not a file", path.display()));
                }
            }
        }
        config.ssl_mode(match tls.mode {
            PgSslMode::Disable => tokio_postgres::config::SslMode::Disable,
            PgSslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
        Ok((config, tls))
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

async fn connect_with(
    config: &tokio_postgres::Config,
    tls: MakeTlsConnector,
) -> Result<tokio_postgres::Client, ConnectError> {
    let (client, connection) = config
        .connect(tls)
        .await
        .map_err(|source| ConnectError::Connect { target: describe_target(config), source })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "postgres sql connection closed with an error");
        }
    });
    Ok(client)
}

/// `host:port[,host:port...]` of a tokio-postgres configuration.
fn describe_target(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let port = |i: usize| ports.get(i).or_else(|| ports.first()).copied().unwrap_or(5432);
    let hosts: Vec<String> = if config.get_hosts().is_empty() {
        config.get_hostaddrs().iter().enumerate().map(|(i, a)| format!("{a}:{}", port(i))).collect()
    } else {
        config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| match host {
                tokio_postgres::config::Host::Tcp(h) => format!("{h}:{}", port(i)),
                tokio_postgres::config::Host::Unix(p) => {
                    format!("{}/.s.PGSQL.{}", p.display(), port(i))
                }
            })
            .collect()
    };
    hosts.join(",")
}

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PgSslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, unverified.
    Prefer,
    /// TLS, unverified unless `sslrootcert` is set.
    Require,
    /// TLS, certificate chain verified.
    VerifyCa,
    /// TLS, certificate chain and host name verified.
    VerifyFull,
}

impl FromStr for PgSslMode {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "disable" => PgSslMode::Disable,
            "prefer" => PgSslMode::Prefer,
            "require" => PgSslMode::Require,
            "verify-ca" => PgSslMode::VerifyCa,
            "verify-full" => PgSslMode::VerifyFull,
            _ => return Err(()),
        })
    }
}

/// TLS settings taken from a PostgreSQL URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgTls {
    /// `sslmode`.
    pub mode: PgSslMode,
    /// `sslrootcert`: PEM file of the trusted CA certificates.
    pub root_cert: Option<PathBuf>,
    /// `sslcert`: PEM client certificate (chain).
    pub client_cert: Option<PathBuf>,
    /// `sslkey`: PEM private key of the client certificate.
    pub client_key: Option<PathBuf>,
}

impl PgTls {
    /// Whether the server's certificate chain is verified.
    pub fn verifies_chain(&self) -> bool {
        match self.mode {
            PgSslMode::Disable | PgSslMode::Prefer => false,
            PgSslMode::Require => self.root_cert.is_some(),
            PgSslMode::VerifyCa | PgSslMode::VerifyFull => true,
        }
    }

    /// An OpenSSL connector for tokio-postgres implementing these settings (see
    /// [`PostgresConfig::tls_connector`]).
    pub fn connector(&self) -> Result<MakeTlsConnector, ConnectError> {
        let tls_err = |what: &str| {
            let what = what.to_owned();
            move |source| ConnectError::Tls { what, source }
        };
        let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(tls_err("create an SSL context"))?;
        if let Some(path) = &self.root_cert {
            let pem = std::fs::read(path).map_err(|source| ConnectError::ReadFile { path: path.clone(), source })?;
            let certs =
                X509::stack_from_pem(&pem).map_err(tls_err(&format!("parse sslrootcert {} as PEM", path.display())))?;
            let mut store = X509StoreBuilder::new().map_err(tls_err("create a certificate store"))?;
            for cert in certs {
                store.add_cert(cert).map_err(tls_err(&format!("add a certificate of {}", path.display())))?;
            }
            builder.set_cert_store(store.build());
        }
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            builder.set_certificate_chain_file(cert).map_err(tls_err(&format!("load sslcert {}", cert.display())))?;
            builder
                .set_private_key_file(key, SslFiletype::PEM)
                .map_err(tls_err(&format!("load sslkey {}", key.display())))?;
        }
        let verify_chain = self.verifies_chain();
        builder.set_verify(if verify_chain { SslVerifyMode::PEER } else { SslVerifyMode::NONE });
        let verify_host = self.mode == PgSslMode::VerifyFull;
        let mut connector = MakeTlsConnector::new(builder.build());
        connector.set_callback(move |connect, _domain| {
            connect.set_verify_hostname(verify_host);
            if !verify_chain {
                connect.set_verify(SslVerifyMode::NONE);
            }
            Ok(())
        });
        Ok(connector)
    }
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
