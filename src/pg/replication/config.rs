//! Connection parameters of a replication connection, parsed from a libpq-style URL.
//!
//! Invariant: the password never leaves this struct except on the wire during authentication: `Debug` redacts it and
//! no error message repeats it (errors name the bad *part* of the URL, and echo values only for harmless parameters).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Default port of PostgreSQL.
pub const DEFAULT_PORT: u16 = 5432;

/// Used when the URL has no `connect_timeout`; libpq waits forever, which a service must not.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether and how to use TLS (libpq's `sslmode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS if the server supports it, else plain; no certificate verification.
    #[default]
    Prefer,
    /// TLS or fail; no certificate verification (unless `sslrootcert` is given, then like `verify-ca`, as libpq).
    Require,
    /// TLS, and the server's certificate chain must verify against `sslrootcert`; the host name is not checked.
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

    /// `true` for the modes that check the certificate chain.
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
/// `channel_binding`).
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

/// Where the trusted root certificates for `verify-ca` / `verify-full` come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCerts {
    /// A PEM file holding one or more CA certificates; only these are trusted.
    File(PathBuf),
    /// OpenSSL's default trust store (`sslrootcert=system`, as libpq 16+).
    System,
}

/// A connection URL that could not be used. Each variant names the part of the URL to fix.
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
        "invalid connection URL: unsupported parameter {0:?}; supported: sslmode, sslrootcert, channel_binding, \
         application_name, connect_timeout, options, user, password, dbname"
    )]
    UnknownParameter(String),
    /// Something libpq accepts that this client deliberately does not.
    #[error("invalid connection URL: {0}")]
    Unsupported(&'static str),
}

/// Everything needed to open a replication connection (`replication=database`).
///
/// Build it with [`ReplicationConfig::from_url`]; the fields are public so a caller can adjust them afterwards (e.g.
/// [`add_guc`](Self::add_guc) for per-connection server settings).
#[derive(Clone, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// Host name or IP address (TCP only).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Role to log in as.
    pub user: String,
    /// Password, if the server asks for one. Never printed.
    pub password: Option<String>,
    /// Database whose changes are decoded.
    pub dbname: String,
    /// TLS policy.
    pub ssl_mode: SslMode,
    /// Trusted roots for `verify-ca` / `verify-full` (and `require`, as libpq does, when given).
    pub ssl_root_cert: Option<RootCerts>,
    /// SCRAM channel binding policy.
    pub channel_binding: ChannelBindingMode,
    /// Shown in `pg_stat_activity` / `pg_stat_replication`.
    pub application_name: Option<String>,
    /// Bound on TCP connect + TLS + authentication; `None` waits forever (`connect_timeout=0`).
    pub connect_timeout: Option<Duration>,
    /// Command-line options for the server backend, e.g. `-c wal_sender_timeout=2s`.
    pub options: Option<String>,
}

impl ReplicationConfig {
    /// Parses `postgres://user:pass@host:port/db?sslmode=...&sslrootcert=...&application_name=...&connect_timeout=...
    /// &options=...` (also `postgresql://`). Percent-escapes are decoded in every part; `+` is kept literally, as libpq
    /// does.
    pub fn from_url(url: &str) -> Result<ReplicationConfig, ConfigError> {
        let parsed = url::Url::parse(url).map_err(|e| ConfigError::Malformed(e.to_string()))?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(ConfigError::Scheme(parsed.scheme().to_owned()));
        }
        let mut user = Some(decode(parsed.username(), "user name")?).filter(|u| !u.is_empty());
        let mut password = parsed.password().map(|p| decode(p, "password")).transpose()?;
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) => decode(d, "host")?,
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => String::new(),
        };
        if host.is_empty() {
            return Err(ConfigError::Missing("host (unix-domain sockets are not supported; give a TCP host name)"));
        }
        if host.contains(',') {
            return Err(ConfigError::Unsupported("several hosts are not supported; give exactly one host"));
        }
        let port = parsed.port().unwrap_or(DEFAULT_PORT);
        let path = parsed.path().strip_prefix('/').unwrap_or(parsed.path());
        let mut dbname = Some(decode(path, "database name")?).filter(|d| !d.is_empty());

        let mut cfg = ReplicationConfig {
            host,
            port,
            user: String::new(),
            password: None,
            dbname: String::new(),
            ssl_mode: SslMode::default(),
            ssl_root_cert: None,
            channel_binding: ChannelBindingMode::default(),
            application_name: None,
            connect_timeout: Some(DEFAULT_CONNECT_TIMEOUT),
            options: None,
        };
        for pair in parsed.query().unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode(raw_key, "query parameter name")?;
            match key.as_str() {
                "sslmode" => cfg.ssl_mode = decode(raw_value, "sslmode")?.parse()?,
                "sslrootcert" => {
                    let v = decode(raw_value, "sslrootcert")?;
                    cfg.ssl_root_cert = match v.as_str() {
                        "" => None,
                        "system" => Some(RootCerts::System),
                        path => Some(RootCerts::File(PathBuf::from(path))),
                    };
                }
                "channel_binding" => cfg.channel_binding = decode(raw_value, "channel_binding")?.parse()?,
                "application_name" => {
                    cfg.application_name = Some(decode(raw_value, "application_name")?).filter(|a| !a.is_empty());
                }
                "connect_timeout" => {
                    let v = decode(raw_value, "connect_timeout")?;
                    let secs: i64 = v.trim().parse().map_err(|_| ConfigError::InvalidParameter {
                        name: "connect_timeout",
                        value: v.clone(),
                        expected: "a whole number of seconds (0 = no timeout)",
                    })?;
                    // As libpq: zero or negative waits forever.
                    cfg.connect_timeout = u64::try_from(secs).ok().filter(|s| *s > 0).map(Duration::from_secs);
                }
                "options" => cfg.options = Some(decode(raw_value, "options")?).filter(|o| !o.is_empty()),
                "user" => user = Some(decode(raw_value, "user name")?).filter(|u| !u.is_empty()),
                "password" => password = Some(decode(raw_value, "password")?),
                "dbname" => dbname = Some(decode(raw_value, "database name")?).filter(|d| !d.is_empty()),
                "replication" => {
                    let v = decode(raw_value, "replication")?;
                    if v != "database" {
                        return Err(ConfigError::InvalidParameter {
                            name: "replication",
                            value: v,
                            expected: "database (the only mode this client speaks; it is set automatically)",
                        });
                    }
                }
                _ => return Err(ConfigError::UnknownParameter(key)),
            }
        }
        cfg.user = user.ok_or(ConfigError::Missing("user name (postgres://USER@host/dbname)"))?;
        cfg.password = password;
        // libpq's default: a database named like the user.
        cfg.dbname = dbname.unwrap_or_else(|| cfg.user.clone());
        if cfg.ssl_mode.verifies_chain() && cfg.ssl_root_cert.is_none() {
            cfg.ssl_root_cert = default_root_cert();
            if cfg.ssl_root_cert.is_none() {
                return Err(ConfigError::Missing(
                    "sslrootcert for sslmode=verify-ca/verify-full (a PEM file of the server's CA, or \"system\"; \
                     ~/.postgresql/root.crt does not exist)",
                ));
            }
        }
        Ok(cfg)
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

    /// `host:port/dbname as user`, for logs (no secrets).
    pub fn describe(&self) -> String {
        format!("{}:{}/{} as {}", self.host, self.port, self.dbname, self.user)
    }
}

impl fmt::Debug for ReplicationConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("ssl_mode", &self.ssl_mode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .field("channel_binding", &self.channel_binding)
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("options", &self.options)
            .finish()
    }
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

    fn parse(url: &str) -> ReplicationConfig {
        match ReplicationConfig::from_url(url) {
            Ok(c) => c,
            Err(e) => unreachable!("{url}: {e}"),
        }
    }

    fn parse_err(url: &str) -> ConfigError {
        match ReplicationConfig::from_url(url) {
            Ok(c) => unreachable!("{url} parsed: {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn full_url() {
        let c = parse(
            "postgres://relay:s%40cret%2Bx@db.example.com:6543/outbox?sslmode=verify-full&sslrootcert=/etc/ca.pem\
             &application_name=outbox-relay&connect_timeout=7&options=-c%20wal_sender_timeout%3D2s",
        );
        assert_eq!(c.host, "db.example.com");
        assert_eq!(c.port, 6543);
        assert_eq!(c.user, "relay");
        assert_eq!(c.password.as_deref(), Some("s@cret+x"));
        assert_eq!(c.dbname, "outbox");
        assert_eq!(c.ssl_mode, SslMode::VerifyFull);
        assert_eq!(c.ssl_root_cert, Some(RootCerts::File("/etc/ca.pem".into())));
        assert_eq!(c.application_name.as_deref(), Some("outbox-relay"));
        assert_eq!(c.connect_timeout, Some(Duration::from_secs(7)));
        assert_eq!(c.options.as_deref(), Some("-c wal_sender_timeout=2s"));
    }

    #[test]
    fn defaults_and_ipv6() {
        let c = parse("postgresql://u@[::1]");
        assert_eq!(c.host, "::1");
        assert_eq!(c.port, DEFAULT_PORT);
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
            ("postgres://u@h/d?target_session_attrs=any", "unsupported parameter \"target_session_attrs\""),
            ("postgres://u@h/d?channel_binding=maybe", "channel_binding"),
            ("postgres://u@h/d?replication=true", "replication=\"true\""),
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
