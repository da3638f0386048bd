//! One PostgreSQL connection configuration for both connections the relay opens: the ordinary SQL connection
//! (tokio-postgres: setup, heartbeats, `check`) and the replication connection (our client). Parsed once from the
//! libpq-style URL when the configuration loads.
//!
//! Invariant: a URL either works the same way for both connections or is refused at load with an error naming the
//! part to fix. Both connections get the same hosts (tried in order, like libpq, with `target_session_attrs`), the
//! same credentials, and TLS from one builder ([`ConnInfo::ssl_connector`]): the same trusted roots, the same client
//! certificate, the same verification. The password never leaves this type except on the wire during
//! authentication: `Debug` redacts it and no error repeats it.
//!
//! | sslmode | TLS | chain checked | host name checked |
//! |---|---|---|---|
//! | disable | never | - | - |
//! | prefer | if the server agrees | only if `sslrootcert` is given (libpq) | no |
//! | require | always | only if `sslrootcert` is given (libpq) | no |
//! | verify-ca | always | yes | no |
//! | verify-full | always | yes | yes |
//!
//! Trusted roots: the `sslrootcert` file only (so a public CA's certificate does not pass `verify-ca` against a
//! private root by accident), `sslrootcert=system` for OpenSSL's default store, or libpq's default file
//! `~/.postgresql/root.crt`; a verifying mode with none of these is refused at load. `sslcert` + `sslkey` give a
//! client certificate to both connections.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use openssl::ssl::{SslConnector, SslConnectorBuilder, SslFiletype, SslMethod, SslVerifyMode};
use openssl::x509::X509;
use openssl::x509::store::X509StoreBuilder;

/// Default port of PostgreSQL.
pub const DEFAULT_PORT: u16 = 5432;

/// Used when the URL has no `connect_timeout`; libpq waits forever, which a service must not.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// What the relay calls itself in `pg_stat_activity` unless the URL says otherwise.
pub const DEFAULT_APPLICATION_NAME: &str = "outbox-relay";

/// Whether and how to use TLS (libpq's `sslmode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS if the server supports it, else plain; no certificate verification (unless `sslrootcert` is given).
    #[default]
    Prefer,
    /// TLS or fail; no certificate verification (unless `sslrootcert` is given, then like `verify-ca`, as libpq).
    Require,
    /// TLS, and the server's certificate chain must verify against the trusted roots; the host name is not checked.
    VerifyCa,
    /// Like `verify-ca`, and the certificate must also match the host name.
    VerifyFull,
}

impl SslMode {
    /// The spelling used in URLs.
    pub const fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// `true` for the modes that require the certificate chain to verify.
    pub const fn verifies_chain(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(ConfigError::InvalidParameter {
                    name: "sslmode",
                    value: other.to_owned(),
                    expected: "one of disable, prefer, require, verify-ca, verify-full",
                });
            }
        })
    }
}

/// Whether to use SCRAM channel binding (`tls-server-end-point`) when the connection is TLS (libpq's
/// `channel_binding`). Applies to the replication connection; tokio-postgres binds when it can.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ChannelBindingMode {
    /// Never bind.
    Disable,
    /// Bind when TLS is on and the server offers SCRAM-SHA-256-PLUS.
    #[default]
    Prefer,
    /// Fail unless the authentication used channel binding.
    Require,
}

impl FromStr for ChannelBindingMode {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => ChannelBindingMode::Disable,
            "prefer" => ChannelBindingMode::Prefer,
            "require" => ChannelBindingMode::Require,
            other => {
                return Err(ConfigError::InvalidParameter {
                    name: "channel_binding",
                    value: other.to_owned(),
                    expected: "one of disable, prefer, require",
                });
            }
        })
    }
}

/// What both connections ask a server to learn whether it accepts writes (see [`ConnInfo::is_read_only`]).
pub const READ_ONLY_QUERY: &str = "SHOW transaction_read_only";

/// Which server of several hosts to use (libpq's `target_session_attrs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TargetSessionAttrs {
    /// The first host that accepts the connection.
    #[default]
    Any,
    /// The first host that is a primary (`transaction_read_only` is off): after a failover, the new primary.
    ReadWrite,
}

/// Where the trusted root certificates come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCerts {
    /// A PEM file holding one or more CA certificates; only these are trusted.
    File(PathBuf),
    /// OpenSSL's default trust store (`sslrootcert=system`, as libpq 16+).
    System,
}

/// One server of the URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    /// Host name or IP address (TCP only); a TLS certificate is checked against it.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// `hostaddr`: the IP address to connect to instead of resolving `host` (libpq).
    pub addr: Option<std::net::IpAddr>,
}

impl HostPort {
    /// What to open the TCP connection to.
    pub fn connect_to(&self) -> String {
        match self.addr {
            Some(std::net::IpAddr::V6(ip)) => format!("[{ip}]:{}", self.port),
            Some(ip) => format!("{ip}:{}", self.port),
            None => self.to_string(),
        }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A connection URL that cannot be used. Each variant names the part of the URL to fix; none repeats the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Not a URL at all.
    #[error("invalid connection URL: {0}; expected postgres://user:password@host:port/dbname?sslmode=...")]
    Malformed(String),
    /// Scheme other than `postgres` / `postgresql`.
    #[error("invalid connection URL: scheme {0:?} is not supported; use postgres:// or postgresql://")]
    Scheme(String),
    /// A required part is missing.
    #[error("invalid connection URL: no {0} given")]
    Missing(&'static str),
    /// A part of the URL is not valid percent-encoding / UTF-8 (the value is not repeated: it may be a password).
    #[error("invalid connection URL: the {0} is not valid percent-encoded UTF-8")]
    Encoding(&'static str),
    /// A query parameter with a bad value.
    #[error("invalid connection URL: {name}={value:?} is invalid: expected {expected}")]
    InvalidParameter {
        /// The parameter.
        name: &'static str,
        /// The value given.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// A query parameter this client does not know.
    #[error(
        "invalid connection URL: unsupported parameter {0:?}; supported: host, hostaddr, port, user, password, dbname, \
         sslmode, sslrootcert, sslcert, sslkey, channel_binding, target_session_attrs, application_name, \
         connect_timeout, options"
    )]
    UnknownParameter(String),
    /// Something libpq accepts that this client deliberately does not.
    #[error("invalid connection URL: {0}")]
    Unsupported(&'static str),
    /// A certificate or key file that cannot be used.
    #[error("invalid connection URL: {name} {path}: {reason}")]
    File {
        /// `sslrootcert`, `sslcert` or `sslkey`.
        name: &'static str,
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// Everything needed to connect to PostgreSQL, for the SQL and the replication connection alike.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// Servers, tried in order.
    pub hosts: Vec<HostPort>,
    /// Role to log in as.
    pub user: String,
    /// Password, if the server asks for one. Never printed.
    pub password: Option<String>,
    /// Database.
    pub dbname: String,
    /// TLS policy.
    pub ssl_mode: SslMode,
    /// Trusted roots (`sslrootcert`, or libpq's default file for the verifying modes).
    pub ssl_root_cert: Option<RootCerts>,
    /// Client certificate chain and key (`sslcert`, `sslkey`), PEM files.
    pub ssl_client_cert: Option<(PathBuf, PathBuf)>,
    /// SCRAM channel binding policy.
    pub channel_binding: ChannelBindingMode,
    /// Which of several hosts to use.
    pub target_session_attrs: TargetSessionAttrs,
    /// Shown in `pg_stat_activity` / `pg_stat_replication`.
    pub application_name: String,
    /// Bound on TCP connect + TLS + authentication per host; `None` waits forever (`connect_timeout=0`).
    pub connect_timeout: Option<Duration>,
    /// Command-line options for the server backend, e.g. `-c wal_sender_timeout=2s`.
    pub options: Option<String>,
    /// The TLS configuration last built, shared by the clones of this value (see [`ConnInfo::ssl_connector`]).
    pub tls_cache: TlsCache,
}

/// The TLS configuration last built, with what identified its files then and when it was built. OpenSSL 3 takes
/// tens of milliseconds of CPU to load the system's trust store, which building a connector always does: once per
/// connection, it was a third of a start. A cache, not a setting: every two of them compare equal.
#[derive(Clone, Default)]
pub struct TlsCache(std::sync::Arc<std::sync::Mutex<Option<BuiltTls>>>);

/// A connector, the identity of each of its files (see [`file_identity`]) and when it was built.
type BuiltTls = (Vec<Option<FileIdentity>>, std::time::Instant, SslConnector);

/// Device, inode, size, modification and change time: a file replaced, rewritten or re-linked shows in one of them
/// (a rotation through symlinks, as Kubernetes secrets are updated, gives a new inode).
type FileIdentity = (u64, u64, u64, i64, i64, i64, i64);

/// The longest a TLS configuration is reused: the system trust store (`sslrootcert=system`, and the store OpenSSL
/// loads anyway) has no single file to watch, so a CA update reaches new connections within this time.
const TLS_REUSE_LIMIT: Duration = Duration::from_secs(300);

fn file_identity(path: &std::path::Path) -> Option<FileIdentity> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()))
}

impl PartialEq for TlsCache {
    fn eq(&self, _: &TlsCache) -> bool {
        true
    }
}

impl Eq for TlsCache {}

impl fmt::Debug for TlsCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsCache")
    }
}

impl ConnInfo {
    /// Parses `postgres://user:pass@host1:port1,host2:port2/db?param=value&...` (also `postgresql://`).
    /// Percent-escapes are decoded in every part; `+` is kept literally, as libpq does. Certificate and key files
    /// are checked to be readable and parseable, so a URL that passes works for both connections.
    pub fn from_url(url: &str) -> Result<ConnInfo, ConfigError> {
        let rest = url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://")).ok_or_else(|| {
            match url.split_once("://") {
                Some((scheme, _)) => ConfigError::Scheme(scheme.to_owned()),
                None => ConfigError::Malformed("no scheme".to_owned()),
            }
        })?;
        let (authority_and_path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if authority_and_path.contains('#') || query.contains('#') {
            return Err(ConfigError::Malformed("a URL fragment (#...) is not allowed".to_owned()));
        }
        let (authority, path) = match authority_and_path.find('/') {
            Some(i) => authority_and_path.split_at(i),
            None => (authority_and_path, ""),
        };
        let (userinfo, hostlist) = match authority.rsplit_once('@') {
            Some((info, hosts)) => (Some(info), hosts),
            None => (None, authority),
        };
        let (mut user, mut password) = match userinfo {
            Some(info) => match info.split_once(':') {
                Some((u, p)) => (Some(decode(u, "user name")?), Some(decode(p, "password")?)),
                None => (Some(decode(info, "user name")?), None),
            },
            None => (None, None),
        };
        let mut hosts = parse_hosts(hostlist)?;
        let path = path.strip_prefix('/').unwrap_or(path);
        let mut dbname = Some(decode(path, "database name")?).filter(|d| !d.is_empty());

        let mut info = ConnInfo {
            hosts: Vec::new(),
            user: String::new(),
            password: None,
            dbname: String::new(),
            ssl_mode: SslMode::default(),
            ssl_root_cert: None,
            ssl_client_cert: None,
            channel_binding: ChannelBindingMode::default(),
            target_session_attrs: TargetSessionAttrs::default(),
            application_name: DEFAULT_APPLICATION_NAME.to_owned(),
            connect_timeout: Some(DEFAULT_CONNECT_TIMEOUT),
            options: None,
            tls_cache: TlsCache::default(),
        };
        let (mut cert, mut key, mut hostaddr) = (None, None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode(raw_key, "query parameter name")?;
            let value = |part: &'static str| decode(raw_value, part);
            match name.as_str() {
                "sslmode" => info.ssl_mode = value("sslmode")?.parse()?,
                "sslrootcert" => {
                    info.ssl_root_cert = match value("sslrootcert")?.as_str() {
                        "" => None,
                        "system" => Some(RootCerts::System),
                        path => Some(RootCerts::File(PathBuf::from(path))),
                    };
                }
                "sslcert" => cert = Some(PathBuf::from(value("sslcert")?)).filter(|p| !p.as_os_str().is_empty()),
                "sslkey" => key = Some(PathBuf::from(value("sslkey")?)).filter(|p| !p.as_os_str().is_empty()),
                "channel_binding" => info.channel_binding = value("channel_binding")?.parse()?,
                "target_session_attrs" => {
                    info.target_session_attrs = match value("target_session_attrs")?.as_str() {
                        "any" => TargetSessionAttrs::Any,
                        "read-write" | "primary" => TargetSessionAttrs::ReadWrite,
                        other => {
                            return Err(ConfigError::InvalidParameter {
                                name: "target_session_attrs",
                                value: other.to_owned(),
                                expected: "any or read-write (primary)",
                            });
                        }
                    };
                }
                "application_name" => {
                    if let Some(app) = Some(value("application_name")?).filter(|a| !a.is_empty()) {
                        info.application_name = app;
                    }
                }
                "connect_timeout" => {
                    let v = value("connect_timeout")?;
                    let secs: i64 = v.trim().parse().map_err(|_| ConfigError::InvalidParameter {
                        name: "connect_timeout",
                        value: v.clone(),
                        expected: "a whole number of seconds (0 = no timeout)",
                    })?;
                    // As libpq: zero or negative waits forever.
                    info.connect_timeout = u64::try_from(secs).ok().filter(|s| *s > 0).map(Duration::from_secs);
                }
                "options" => info.options = Some(value("options")?).filter(|o| !o.is_empty()),
                "user" => user = Some(value("user name")?),
                "password" => password = Some(value("password")?),
                "dbname" => dbname = Some(value("database name")?).filter(|d| !d.is_empty()),
                "host" => {
                    let v = value("host")?;
                    if v.starts_with('/') {
                        return Err(ConfigError::Unsupported(
                            "unix-domain sockets are not supported (the replication client speaks TCP); give a TCP \
                             host name",
                        ));
                    }
                    hosts = parse_hosts(&v)?;
                }
                "hostaddr" => hostaddr = Some(value("hostaddr")?),
                "port" => {
                    let v = value("port")?;
                    let port: u16 = v.parse().map_err(|_| ConfigError::InvalidParameter {
                        name: "port",
                        value: v.clone(),
                        expected: "a TCP port number",
                    })?;
                    for h in &mut hosts {
                        h.port = port;
                    }
                }
                "replication" => {
                    return Err(ConfigError::Unsupported(
                        "replication=... is set by the relay on its replication connection; remove it from the URL",
                    ));
                }
                _ => return Err(ConfigError::UnknownParameter(name)),
            }
        }
        if hosts.is_empty() {
            return Err(ConfigError::Missing("host (postgres://user@HOST:5432/dbname)"));
        }
        if let Some(list) = hostaddr {
            let addrs: Vec<&str> = list.split(',').collect();
            if addrs.len() != hosts.len() {
                return Err(ConfigError::InvalidParameter {
                    name: "hostaddr",
                    value: list.clone(),
                    expected: "one IP address per host, in the order of the hosts",
                });
            }
            for (h, a) in hosts.iter_mut().zip(addrs) {
                h.addr = Some(a.trim().parse().map_err(|_| ConfigError::InvalidParameter {
                    name: "hostaddr",
                    value: a.to_owned(),
                    expected: "an IPv4 or IPv6 address",
                })?);
            }
        }
        info.hosts = hosts;
        info.user =
            user.filter(|u| !u.is_empty()).ok_or(ConfigError::Missing("user name (postgres://USER@host/dbname)"))?;
        info.password = password;
        // libpq's default: a database named like the user.
        info.dbname = dbname.unwrap_or_else(|| info.user.clone());
        info.ssl_client_cert = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => return Err(ConfigError::Missing("sslcert and sslkey together (one of them is given)")),
        };
        if info.ssl_mode.verifies_chain() && info.ssl_root_cert.is_none() {
            info.ssl_root_cert = default_root_cert();
            if info.ssl_root_cert.is_none() {
                return Err(ConfigError::Missing(
                    "sslrootcert for sslmode=verify-ca/verify-full (a PEM file of the server's CA, or \"system\" for \
                     the system's trusted roots; ~/.postgresql/root.crt does not exist)",
                ));
            }
        }
        if info.ssl_mode == SslMode::Disable && info.ssl_client_cert.is_some() {
            return Err(ConfigError::Unsupported(
                "sslcert/sslkey with sslmode=disable: a client certificate needs TLS",
            ));
        }
        // Every file is read now: a URL that loads is one both connections can use. (Without TLS there is none.)
        if info.ssl_mode != SslMode::Disable {
            info.ssl_connector()?;
        }
        Ok(info)
    }

    /// The TLS configuration both connections use: trusted roots, client certificate, chain verification per
    /// `sslmode` (host names are checked per connection, see [`ConnInfo::verifies_host`]). Built again when one of
    /// its files changed since ([`file_identity`]), so a rotated certificate is picked up by the next connection,
    /// and at the latest after [`TLS_REUSE_LIMIT`]; otherwise the last one is reused ([`TlsCache`]).
    pub fn ssl_connector(&self) -> Result<SslConnector, ConfigError> {
        let mut files: Vec<&std::path::Path> = Vec::new();
        if let Some(RootCerts::File(path)) = &self.ssl_root_cert {
            files.push(path);
        }
        if let Some((cert, key)) = &self.ssl_client_cert {
            files.extend([cert.as_path(), key.as_path()]);
        }
        let stamps: Vec<_> = files.iter().map(|f| file_identity(f)).collect();
        let mut cache = self.tls_cache.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((built_from, built_at, connector)) = cache.as_ref() {
            if *built_from == stamps && stamps.iter().all(Option::is_some) && built_at.elapsed() < TLS_REUSE_LIMIT {
                return Ok(connector.clone());
            }
        }
        let connector = self.build_ssl_connector()?;
        *cache = Some((stamps, std::time::Instant::now(), connector.clone()));
        Ok(connector)
    }

    fn build_ssl_connector(&self) -> Result<SslConnector, ConfigError> {
        let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(|e| tls_err("TLS context", "", &e))?;
        if let Some(RootCerts::File(path)) = &self.ssl_root_cert {
            load_roots(&mut builder, path)?;
        }
        // With RootCerts::System, SslConnector::builder already loaded OpenSSL's default trust store.
        if let Some((cert, key)) = &self.ssl_client_cert {
            builder.set_certificate_chain_file(cert).map_err(|e| file_err("sslcert", cert, &e))?;
            builder.set_private_key_file(key, SslFiletype::PEM).map_err(|e| file_err("sslkey", key, &e))?;
            builder.check_private_key().map_err(|e| file_err("sslkey", key, &e))?;
        }
        builder.set_verify(if self.verifies_chain() { SslVerifyMode::PEER } else { SslVerifyMode::NONE });
        Ok(builder.build())
    }

    /// Whether the server's certificate chain is verified: the verifying modes, and any mode with `sslrootcert`
    /// (libpq).
    pub fn verifies_chain(&self) -> bool {
        self.ssl_mode.verifies_chain() || self.ssl_root_cert.is_some()
    }

    /// Whether the certificate must name the host (`verify-full`).
    pub fn verifies_host(&self) -> bool {
        self.ssl_mode == SslMode::VerifyFull
    }

    /// The ordinary SQL connection's configuration (tokio-postgres) for one host of the URL, with TLS from
    /// [`ConnInfo::ssl_connector`]. One host at a time: the caller walks [`ConnInfo::hosts`] and applies
    /// `target_session_attrs` itself ([`ConnInfo::is_read_only`]), as the replication connection does, so both give
    /// the same typed answer when no host is a primary.
    /// Without TLS (`sslmode=disable`) there is no connector.
    pub fn tokio_postgres(
        &self,
        target: &HostPort,
    ) -> Result<(tokio_postgres::Config, Option<postgres_openssl::MakeTlsConnector>), ConfigError> {
        let mut config = tokio_postgres::Config::new();
        config.host(&target.host).port(target.port);
        if let Some(addr) = target.addr {
            config.hostaddr(addr);
        }
        config.user(&self.user).dbname(&self.dbname).application_name(&self.application_name);
        if let Some(p) = &self.password {
            config.password(p);
        }
        if let Some(t) = self.connect_timeout {
            config.connect_timeout(t);
        }
        if let Some(o) = &self.options {
            config.options(o);
        }
        config.ssl_mode(match self.ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        });
        if self.ssl_mode == SslMode::Disable {
            return Ok((config, None));
        }
        let mut tls = postgres_openssl::MakeTlsConnector::new(self.ssl_connector()?);
        let (verify_chain, verify_host) = (self.verifies_chain(), self.verifies_host());
        tls.set_callback(move |connect, _host| {
            connect.set_verify_hostname(verify_host);
            if !verify_chain {
                connect.set_verify(SslVerifyMode::NONE);
            }
            Ok(())
        });
        Ok((config, Some(tls)))
    }

    /// Whether a server's answer to [`READ_ONLY_QUERY`] rules it out under `target_session_attrs=read-write` (libpq's
    /// test: a standby, or a server with `default_transaction_read_only`).
    pub fn is_read_only(answer: Option<&str>) -> bool {
        answer == Some("on")
    }

    /// Appends `-c name=value` to the backend options, escaping spaces and backslashes as the server expects.
    pub fn add_guc(&mut self, name: &str, value: &str) {
        let escape = |s: &str| s.replace('\\', "\\\\").replace(' ', "\\ ");
        let opt = format!("-c {}={}", escape(name), escape(value));
        self.options = Some(match self.options.take() {
            Some(existing) => format!("{existing} {opt}"),
            None => opt,
        });
    }

    /// `host:port[,host:port...]`, for messages.
    pub fn targets(&self) -> String {
        self.hosts.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
    }

    /// `host:port/dbname as user`, for logs (no secrets).
    pub fn describe(&self) -> String {
        format!("{}/{} as {}", self.targets(), self.dbname, self.user)
    }
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnInfo")
            .field("hosts", &self.targets())
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("ssl_mode", &self.ssl_mode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .field("ssl_client_cert", &self.ssl_client_cert)
            .field("channel_binding", &self.channel_binding)
            .field("target_session_attrs", &self.target_session_attrs)
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("options", &self.options)
            .finish()
    }
}

/// `h1:p1,h2:p2,[::1]:p3` (ports optional, default 5432).
fn parse_hosts(list: &str) -> Result<Vec<HostPort>, ConfigError> {
    let mut hosts = Vec::new();
    for item in list.split(',').filter(|h| !h.is_empty()) {
        let (host, port) = if let Some(rest) = item.strip_prefix('[') {
            let (h, after) = rest.split_once(']').ok_or(ConfigError::Malformed("an IPv6 host without ]".into()))?;
            (h.to_owned(), after.strip_prefix(':'))
        } else {
            match item.rsplit_once(':') {
                Some((h, p)) => (decode(h, "host")?, Some(p)),
                None => (decode(item, "host")?, None),
            }
        };
        let port = match port {
            Some(p) if !p.is_empty() => p.parse().map_err(|_| ConfigError::InvalidParameter {
                name: "port",
                value: p.to_owned(),
                expected: "a TCP port number",
            })?,
            _ => DEFAULT_PORT,
        };
        if host.is_empty() {
            return Err(ConfigError::Missing("host (postgres://user@HOST:5432/dbname)"));
        }
        if host.starts_with('/') {
            return Err(ConfigError::Unsupported(
                "unix-domain sockets are not supported (the replication client speaks TCP); give a TCP host name",
            ));
        }
        hosts.push(HostPort { host, port, addr: None });
    }
    Ok(hosts)
}

fn load_roots(builder: &mut SslConnectorBuilder, path: &PathBuf) -> Result<(), ConfigError> {
    let pem = std::fs::read(path).map_err(|e| file_err("sslrootcert", path, &e))?;
    let certs = X509::stack_from_pem(&pem).map_err(|e| file_err("sslrootcert", path, &e))?;
    if certs.is_empty() {
        return Err(ConfigError::File {
            name: "sslrootcert",
            path: path.display().to_string(),
            reason: "holds no PEM certificate".to_owned(),
        });
    }
    let mut store = X509StoreBuilder::new().map_err(|e| tls_err("certificate store", "", &e))?;
    for cert in certs {
        store.add_cert(cert).map_err(|e| file_err("sslrootcert", path, &e))?;
    }
    builder.set_cert_store(store.build());
    Ok(())
}

fn file_err(name: &'static str, path: &std::path::Path, e: &dyn std::error::Error) -> ConfigError {
    ConfigError::File { name, path: path.display().to_string(), reason: e.to_string() }
}

fn tls_err(what: &str, detail: &str, e: &dyn std::error::Error) -> ConfigError {
    ConfigError::Malformed(format!("cannot set up TLS ({what}{detail}): {e}"))
}

/// libpq's fallback root file, `~/.postgresql/root.crt`, when it exists.
fn default_root_cert() -> Option<RootCerts> {
    let home = std::env::var_os("HOME")?;
    let path = PathBuf::from(home).join(".postgresql").join("root.crt");
    path.is_file().then_some(RootCerts::File(path))
}

/// Decodes `%XX` escapes (only those: `+` stays `+`, as in libpq) and checks UTF-8.
fn decode(s: &str, part: &'static str) -> Result<String, ConfigError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(ConfigError::Encoding(part))?;
            let hex = std::str::from_utf8(hex).map_err(|_| ConfigError::Encoding(part))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| ConfigError::Encoding(part))?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ConfigError::Encoding(part))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn parse(url: &str) -> ConnInfo {
        match ConnInfo::from_url(url) {
            Ok(c) => c,
            Err(e) => unreachable!("{url}: {e}"),
        }
    }

    fn parse_err(url: &str) -> ConfigError {
        match ConnInfo::from_url(url) {
            Ok(c) => unreachable!("{url} parsed: {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn full_url() {
        let c = parse(
            "postgres://relay:s%40cret%2Bx@db.example.com:6543/outbox?sslmode=verify-full&sslrootcert=system\
             &application_name=outbox-relay&connect_timeout=7&options=-c%20wal_sender_timeout%3D2s",
        );
        assert_eq!(c.hosts, vec![HostPort { host: "db.example.com".into(), port: 6543, addr: None }]);
        assert_eq!(c.user, "relay");
        assert_eq!(c.password.as_deref(), Some("s@cret+x"));
        assert_eq!(c.dbname, "outbox");
        assert_eq!(c.ssl_mode, SslMode::VerifyFull);
        assert_eq!(c.ssl_root_cert, Some(RootCerts::System));
        assert_eq!(c.application_name, "outbox-relay");
        assert_eq!(c.connect_timeout, Some(Duration::from_secs(7)));
        assert_eq!(c.options.as_deref(), Some("-c wal_sender_timeout=2s"));
    }

    #[test]
    fn defaults_and_ipv6() {
        let c = parse("postgresql://u@[::1]");
        assert_eq!(c.hosts, vec![HostPort { host: "::1".into(), port: DEFAULT_PORT, addr: None }]);
        assert_eq!(c.dbname, "u");
        assert_eq!(c.password, None);
        assert_eq!(c.ssl_mode, SslMode::Prefer);
        assert_eq!(c.connect_timeout, Some(DEFAULT_CONNECT_TIMEOUT));
        assert_eq!(parse("postgres://u@h/d?connect_timeout=0").connect_timeout, None);
        assert_eq!(parse("postgres://u@h/d?sslmode=require&sslrootcert=system").ssl_root_cert, Some(RootCerts::System));
        let c = parse("postgres://h/d?user=x&password=p%20q&dbname=other");
        assert_eq!((c.user.as_str(), c.password.as_deref(), c.dbname.as_str()), ("x", Some("p q"), "other"));
    }

    #[test]
    fn debug_redacts_password() {
        let c = parse("postgres://relay:hunter2@h/d");
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(!c.describe().contains("hunter2"));
    }

    #[test]
    fn errors_name_the_bad_part() {
        let cases: &[(&str, &str)] = &[
            ("not a url", "invalid connection URL"),
            ("mysql://u@h/d", "scheme \"mysql\""),
            ("postgres:///d?user=u", "no host"),
            ("postgres://h/d", "no user name"),
            ("postgres://u@h/d?sslmode=bogus", "sslmode=\"bogus\""),
            ("postgres://u@h/d?sslmode=allow", "verify-full"),
            ("postgres://u@h/d?connect_timeout=soon", "connect_timeout"),
            ("postgres://u@h/d?keepalives=1", "unsupported parameter \"keepalives\""),
            ("postgres://u@h/d?target_session_attrs=standby", "target_session_attrs"),
            ("postgres://u@h/d?sslcert=/a.pem", "sslcert and sslkey together"),
            ("postgres://u@h/d?host=/var/run/postgresql", "unix-domain sockets"),
            ("postgres://u@h1,h2/d?hostaddr=127.0.0.1", "hostaddr"),
            ("postgres://u@h/d?channel_binding=maybe", "channel_binding"),
            ("postgres://u@h/d?replication=true", "set by the relay"),
            ("postgres://u@h/d%ZZ", "database name"),
            ("postgres://u@h/d?sslmode=verify-ca&sslrootcert=", "sslrootcert"),
        ];
        for (url, expect) in cases {
            let e = parse_err(url).to_string();
            assert!(e.contains(expect), "{url}: {e:?} does not mention {expect:?}");
        }
    }

    #[test]
    fn password_never_in_errors() {
        let e = parse_err("postgres://u:hunter2@h/d?bogus=1").to_string();
        assert!(!e.contains("hunter2"), "{e}");
        let e = parse_err("postgres://u:hunter2%ZZ@h/d").to_string();
        assert!(!e.contains("hunter2") && e.contains("password"), "{e}");
    }

    #[test]
    fn add_guc_escapes() {
        let mut c = parse("postgres://u@h/d?options=-c%20a%3D1");
        c.add_guc("application_name", "x y\\z");
        assert_eq!(c.options.as_deref(), Some("-c a=1 -c application_name=x\\ y\\\\z"));
    }
}

/// A certificate (PEM) named `cn` for `key`, signed by it: for the tests of TLS settings here and in `avro`.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn self_signed_pem_for(cn: &str, key: &openssl::pkey::PKey<openssl::pkey::Private>) -> Vec<u8> {
    use openssl::asn1::Asn1Time;
    use openssl::hash::MessageDigest;
    use openssl::x509::{X509Builder, X509NameBuilder};
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
    b.set_not_after(&Asn1Time::days_from_now(1).unwrap()).unwrap();
    b.sign(key, MessageDigest::sha256()).unwrap();
    b.build().to_pem().unwrap()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod more_tests {
    use super::*;

    /// A self-signed certificate (PEM) named `cn`, with a key of its own.
    fn self_signed_pem(cn: &str) -> Vec<u8> {
        use openssl::ec::{EcGroup, EcKey};
        use openssl::nid::Nid;
        use openssl::pkey::PKey;
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        self_signed_pem_for(cn, &PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap())
    }

    /// The TLS configuration is built once and shared by clones, and built again when a file changes (a rotated
    /// CA or client certificate reaches the next connection).
    #[test]
    fn tls_is_built_once_until_a_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, self_signed_pem("one")).unwrap();
        let c =
            ConnInfo::from_url(&format!("postgres://u@h/db?sslmode=verify-ca&sslrootcert={}", ca.display())).unwrap();
        // The OpenSSL context's address: the same context means nothing was built or read again.
        let built = |c: &ConnInfo| std::ptr::from_ref(c.ssl_connector().unwrap().context()) as usize;
        let first = built(&c);
        assert_eq!(built(&c), first, "reused");
        assert_eq!(built(&c.clone()), first, "shared by clones (the SQL, replication, lease and monitor connections)");
        std::fs::write(&ca, self_signed_pem("two")).unwrap();
        let later = std::time::SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options().write(true).open(&ca).unwrap().set_modified(later).unwrap();
        assert_ne!(built(&c), first, "a changed file is read again");
        let disabled = ConnInfo::from_url("postgres://u@h/db?sslmode=disable").unwrap();
        assert!(disabled.tokio_postgres(&disabled.hosts[0]).unwrap().1.is_none(), "no TLS set-up without TLS");
    }

    #[test]
    fn several_hosts_hostaddr_and_target_session_attrs() {
        let c = ConnInfo::from_url(
            "postgres://u:p@db1:5433,db2,[::1]:6000/app?target_session_attrs=read-write&hostaddr=10.0.0.1,10.0.0.2,::1",
        )
        .unwrap();
        let hosts: Vec<String> = c.hosts.iter().map(ToString::to_string).collect();
        assert_eq!(hosts, ["db1:5433", "db2:5432", "[::1]:6000"]);
        assert_eq!(c.hosts[0].connect_to(), "10.0.0.1:5433");
        assert_eq!(c.target_session_attrs, TargetSessionAttrs::ReadWrite);
        assert_eq!(c.targets(), "db1:5433,db2:5432,[::1]:6000");
        // The SQL connection is configured per host, with its own hostaddr; read-write is applied by the caller.
        let (config, _) = c.tokio_postgres(&c.hosts[2]).unwrap();
        assert_eq!(config.get_ports(), [6000]);
        assert_eq!(config.get_hostaddrs(), ["::1".parse::<std::net::IpAddr>().unwrap()]);
        assert_eq!(config.get_target_session_attrs(), tokio_postgres::config::TargetSessionAttrs::Any);
        assert!(ConnInfo::is_read_only(Some("on")) && !ConnInfo::is_read_only(Some("off")));
    }

    #[test]
    fn one_tls_configuration_for_both_connections() {
        let c = ConnInfo::from_url(
            "postgresql://u:p@h1:6432/app?sslmode=verify-full&sslrootcert=system&application_name=x&connect_timeout=3",
        )
        .unwrap();
        let (config, _) = c.tokio_postgres(&c.hosts[0]).unwrap();
        assert_eq!(config.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        assert_eq!(config.get_application_name(), Some("x"));
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert!(c.verifies_chain() && c.verifies_host());
        let c = ConnInfo::from_url("postgres://u@h/db").unwrap();
        assert_eq!((c.ssl_mode, c.verifies_chain()), (SslMode::Prefer, false));
        assert_eq!(c.tokio_postgres(&c.hosts[0]).unwrap().0.get_application_name(), Some(DEFAULT_APPLICATION_NAME));
        // Files are read at load: a URL naming a missing file does not load, for either connection.
        let e = ConnInfo::from_url("postgres://u@h/db?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem").unwrap_err();
        assert!(matches!(&e, ConfigError::File { name: "sslrootcert", .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        let e =
            ConnInfo::from_url("postgres://u@h/db?sslcert=/nonexistent/c.pem&sslkey=/nonexistent/k.pem").unwrap_err();
        assert!(matches!(&e, ConfigError::File { name: "sslcert", .. }), "{e}");
    }
}
