//! Errors of the replication client, split into transient (reconnect with [`super::Backoff`]) and definite (stop and
//! tell the operator what to fix).
//!
//! Server errors are classified by SQLSTATE once, where they are received ([`ReplicationError::from_server`]), so that
//! callers match on named variants instead of string codes.

use std::fmt;
use std::io;
use std::time::Duration;

use crate::pg::conninfo::{ConfigError, SslMode};

/// An `ErrorResponse` (or the fields of a `NoticeResponse`) as sent by the server.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct DbError {
    /// `ERROR`, `FATAL` or `PANIC` (non-localized `V` field when the server sends it, else `S`).
    pub severity: String,
    /// The five-character SQLSTATE code, e.g. `55006`.
    pub code: String,
    /// The primary human-readable message.
    pub message: String,
    /// Optional secondary message with more detail.
    pub detail: Option<String>,
    /// Optional suggestion what to do about it.
    pub hint: Option<String>,
    /// Optional context (`W` field): where the error happened, e.g. inside which output plugin callback.
    pub context: Option<String>,
}

impl DbError {
    /// Parses the fields of an `ErrorResponse` / `NoticeResponse` body (a sequence of `type byte, C string`, ended by
    /// a zero byte). Unknown field types are ignored; invalid UTF-8 is replaced rather than rejected, because an error
    /// we cannot print is worse than one with a replacement character.
    pub(crate) fn parse(body: &[u8]) -> Result<DbError, ReplicationError> {
        let mut e = DbError::default();
        let mut rest = body;
        loop {
            let Some((&ty, tail)) = rest.split_first() else {
                return Err(ReplicationError::protocol("error response is not terminated"));
            };
            if ty == 0 {
                break;
            }
            let end = tail
                .iter()
                .position(|&b| b == 0)
                .ok_or_else(|| ReplicationError::protocol("error response field is not terminated"))?;
            let (value, after) = tail.split_at(end);
            let value = String::from_utf8_lossy(value).into_owned();
            rest = after.get(1..).unwrap_or_default();
            match ty {
                b'V' => e.severity = value,
                b'S' if e.severity.is_empty() => e.severity = value,
                b'C' => e.code = value,
                b'M' => e.message = value,
                b'D' => e.detail = Some(value),
                b'H' => e.hint = Some(value),
                b'W' => e.context = Some(value),
                _ => {}
            }
        }
        Ok(e)
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " (detail: {d})")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

impl fmt::Debug for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbError")
            .field("severity", &self.severity)
            .field("code", &self.code)
            .field("message", &self.message)
            .field("detail", &self.detail)
            .field("hint", &self.hint)
            .field("context", &self.context)
            .finish()
    }
}

impl std::error::Error for DbError {}

/// SQLSTATE codes this module gives a name to.
pub mod sqlstate {
    /// `object_in_use`: the replication slot is active for another process.
    pub const OBJECT_IN_USE: &str = "55006";
    /// `undefined_object`: replication slot or publication does not exist.
    pub const UNDEFINED_OBJECT: &str = "42704";
    /// `object_not_in_prerequisite_state`: e.g. the slot was invalidated and can no longer get changes.
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
    /// `insufficient_privilege`.
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    /// `invalid_password`.
    pub const INVALID_PASSWORD: &str = "28P01";
    /// `invalid_authorization_specification` (e.g. no `pg_hba.conf` entry).
    pub const INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
    /// `admin_shutdown`: server shutting down, or the backend was ended by `pg_terminate_backend`.
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    /// `crash_shutdown`.
    pub const CRASH_SHUTDOWN: &str = "57P02";
    /// `cannot_connect_now`: server starting up or shutting down.
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    /// `invalid_catalog_name`: the database does not exist.
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    /// `duplicate_object`: e.g. a replication slot of that name already exists.
    pub const DUPLICATE_OBJECT: &str = "42710";
}

/// Everything that can go wrong on a replication connection.
///
/// [`is_transient`](Self::is_transient) tells whether reconnecting (after a [`super::Backoff`] delay) may help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicationError {
    /// The connection URL or options are invalid; nothing was sent.
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// A replication command was given an argument it cannot carry (checked before anything is sent).
    #[error("invalid replication command argument: {0}")]
    InvalidArgument(String),

    /// The server is too old for an option that was asked for.
    #[error("{0}")]
    Unsupported(String),

    /// TCP connect failed for every address of the host.
    #[error(
        "could not connect to {host}:{port}: {source}; check that PostgreSQL is running and accepts TCP connections"
    )]
    Connect {
        /// Host as configured.
        host: String,
        /// Port as configured.
        port: u16,
        /// The error of the last address tried.
        #[source]
        source: io::Error,
    },

    /// With `target_session_attrs=read-write`, the host is a standby (read-only); no host of the URL was a primary.
    #[error(
        "{host} is a read-only server (a standby) and target_session_attrs=read-write asks for the primary; list the \
         primary among the hosts of postgres.url"
    )]
    NotPrimary {
        /// The last host of the URL tried (all were standbys).
        host: String,
    },

    /// `connect_timeout` elapsed before the connection was ready.
    #[error("connecting to {host}:{port} timed out after {timeout:?} (connect_timeout)")]
    ConnectTimeout {
        /// Host as configured.
        host: String,
        /// Port as configured.
        port: u16,
        /// The configured timeout.
        timeout: Duration,
    },

    /// Reading or writing the socket failed (including connection resets).
    #[error("I/O error on the replication connection: {0}")]
    Io(#[source] io::Error),

    /// The server closed the connection without an error message.
    #[error("the server closed the replication connection unexpectedly")]
    ConnectionClosed,

    /// `sslmode` requires TLS but the server refused the SSLRequest.
    #[error(
        "the server does not support TLS but sslmode={mode} requires it; enable ssl on the server or use sslmode=prefer"
    )]
    TlsNotSupported {
        /// The configured mode.
        mode: SslMode,
    },

    /// Building the TLS context failed (e.g. unreadable `sslrootcert`).
    #[error("TLS setup failed: {message}: {source}")]
    TlsSetup {
        /// What was being done.
        message: String,
        /// OpenSSL's error stack.
        #[source]
        source: openssl::error::ErrorStack,
    },

    /// The TLS handshake failed; `verify` holds OpenSSL's certificate verification result when that was the cause.
    #[error("TLS handshake with {host} failed (sslmode={mode}): {verify}; {advice}")]
    TlsHandshake {
        /// Host as configured.
        host: String,
        /// The configured mode.
        mode: SslMode,
        /// OpenSSL's verification result, e.g. "self-signed certificate" or "hostname mismatch".
        verify: String,
        /// What to change.
        advice: &'static str,
        /// The handshake error.
        #[source]
        source: openssl::ssl::Error,
    },

    /// The server rejected the credentials (SQLSTATE 28P01 or 28000).
    #[error(
        "authentication failed for user {user:?}: {error}; check the user and password in the connection URL and the server's pg_hba.conf"
    )]
    AuthFailed {
        /// The user name used.
        user: String,
        /// The server's error.
        #[source]
        error: Box<DbError>,
    },

    /// The server asked for a password but the URL has none.
    #[error("the server requires a password for user {user:?} but the connection URL has none")]
    PasswordMissing {
        /// The user name used.
        user: String,
    },

    /// The server asked for an authentication method this client does not implement.
    #[error(
        "the server asked for {method} authentication, which this client does not support; use scram-sha-256, md5, password or trust in pg_hba.conf"
    )]
    UnsupportedAuth {
        /// The method's name.
        method: String,
    },

    /// `channel_binding=require` but the server did not offer SCRAM-SHA-256-PLUS over TLS.
    #[error("channel_binding=require but {0}")]
    ChannelBindingRequired(&'static str),

    /// The replication slot is active for another process (SQLSTATE 55006).
    #[error(
        "replication slot is in use by another connection: {0}; stop the other consumer (see pg_replication_slots.active_pid) or wait until it exits"
    )]
    SlotInUse(#[source] Box<DbError>),

    /// The replication slot does not exist (SQLSTATE 42704).
    #[error(
        "replication slot does not exist: {0}; create it (CREATE_REPLICATION_SLOT or pg_create_logical_replication_slot) or fix the slot name"
    )]
    SlotNotFound(#[source] Box<DbError>),

    /// The publication does not exist (SQLSTATE 42704 naming a publication).
    #[error(
        "publication does not exist: {0}; run CREATE PUBLICATION in the source database or fix the publication name"
    )]
    PublicationNotFound(#[source] Box<DbError>),

    /// The slot was invalidated (e.g. `max_slot_wal_keep_size` exceeded, SQLSTATE 55000): its data is gone.
    #[error(
        "replication slot can no longer be used: {0}; the changes it protected are lost: drop and recreate the slot and resynchronize"
    )]
    SlotInvalidated(#[source] Box<DbError>),

    /// The role lacks a privilege (SQLSTATE 42501), e.g. the REPLICATION attribute.
    #[error("permission denied: {0}; grant the role REPLICATION (ALTER ROLE ... REPLICATION) and access to the tables")]
    PermissionDenied(#[source] Box<DbError>),

    /// The server is shutting down, restarting, or ended this backend (`pg_terminate_backend`), SQLSTATE 57P0x.
    #[error("the server ended the connection: {0}")]
    ServerShutdown(#[source] Box<DbError>),

    /// Any other error the server reported.
    #[error("server error: {0}")]
    Db(#[source] Box<DbError>),

    /// The server sent something this client does not expect at this point, or malformed bytes.
    #[error("replication protocol error: {0}")]
    Protocol(String),

    /// `stop()` did not finish within its timeout.
    #[error("the server did not end the replication stream within {0:?} after CopyDone")]
    StopTimeout(Duration),

    /// The stream failed earlier (its error was already returned) and cannot be used any more.
    #[error("the replication stream failed earlier and must be reconnected")]
    StreamFailed,

    /// The server ended the stream (`next()` returned `None`); reconnect to continue.
    #[error("the server ended the replication stream; reconnect to continue")]
    StreamEnded,
}

impl ReplicationError {
    pub(crate) fn protocol(msg: impl Into<String>) -> ReplicationError {
        ReplicationError::Protocol(msg.into())
    }

    /// Names a server error by its SQLSTATE.
    pub fn from_server(error: DbError) -> ReplicationError {
        use sqlstate::*;
        let error = Box::new(error);
        match error.code.as_str() {
            OBJECT_IN_USE => ReplicationError::SlotInUse(error),
            UNDEFINED_OBJECT if error.message.contains("publication") => ReplicationError::PublicationNotFound(error),
            UNDEFINED_OBJECT if error.message.contains("replication slot") => ReplicationError::SlotNotFound(error),
            OBJECT_NOT_IN_PREREQUISITE_STATE
                if error.message.contains("can no longer get changes")
                    || error.message.contains("invalidated")
                    || error.detail.as_deref().is_some_and(|d| d.contains("invalidated")) =>
            {
                ReplicationError::SlotInvalidated(error)
            }
            INSUFFICIENT_PRIVILEGE => ReplicationError::PermissionDenied(error),
            ADMIN_SHUTDOWN | CRASH_SHUTDOWN | CANNOT_CONNECT_NOW => ReplicationError::ServerShutdown(error),
            _ => ReplicationError::Db(error),
        }
    }

    /// The server's error, when this error came from the server.
    pub fn db_error(&self) -> Option<&DbError> {
        match self {
            ReplicationError::AuthFailed { error, .. }
            | ReplicationError::SlotInUse(error)
            | ReplicationError::SlotNotFound(error)
            | ReplicationError::PublicationNotFound(error)
            | ReplicationError::SlotInvalidated(error)
            | ReplicationError::PermissionDenied(error)
            | ReplicationError::ServerShutdown(error)
            | ReplicationError::Db(error) => Some(error.as_ref()),
            _ => None,
        }
    }

    /// The SQLSTATE code, when this error came from the server.
    pub fn code(&self) -> Option<&str> {
        self.db_error().map(|e| e.code.as_str())
    }

    /// `true` when reconnecting later may succeed: network trouble, a server restart, a terminated walsender, a full
    /// connection table. `false` for everything that needs a change of configuration or of the database (a missing
    /// or busy slot, bad credentials, a missing publication, an invalidated slot).
    pub fn is_transient(&self) -> bool {
        match self {
            ReplicationError::Connect { .. }
            | ReplicationError::ConnectTimeout { .. }
            // A failover in progress: the standby becomes primary.
            | ReplicationError::NotPrimary { .. }
            | ReplicationError::Io(_)
            | ReplicationError::ConnectionClosed
            | ReplicationError::ServerShutdown(_)
            | ReplicationError::StopTimeout(_)
            | ReplicationError::StreamFailed
            | ReplicationError::StreamEnded => true,
            // A handshake that failed on I/O (reset mid-handshake) is worth a retry; a verification failure is not.
            ReplicationError::TlsHandshake { source, .. } => source.io_error().is_some(),
            ReplicationError::Db(e) => crate::pg::is_transient_sqlstate(&e.code),
            ReplicationError::Config(_)
            | ReplicationError::InvalidArgument(_)
            | ReplicationError::Unsupported(_)
            | ReplicationError::TlsNotSupported { .. }
            | ReplicationError::TlsSetup { .. }
            | ReplicationError::AuthFailed { .. }
            | ReplicationError::PasswordMissing { .. }
            | ReplicationError::UnsupportedAuth { .. }
            | ReplicationError::ChannelBindingRequired(_)
            | ReplicationError::SlotInUse(_)
            | ReplicationError::SlotNotFound(_)
            | ReplicationError::PublicationNotFound(_)
            | ReplicationError::SlotInvalidated(_)
            | ReplicationError::PermissionDenied(_)
            | ReplicationError::Protocol(_) => false,
        }
    }
}

impl From<io::Error> for ReplicationError {
    fn from(e: io::Error) -> Self {
        ReplicationError::Io(e)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn body(fields: &[(u8, &str)]) -> Vec<u8> {
        let mut v = Vec::new();
        for (t, s) in fields {
            v.push(*t);
            v.extend_from_slice(s.as_bytes());
            v.push(0);
        }
        v.push(0);
        v
    }

    fn err(code: &str, message: &str) -> DbError {
        DbError { severity: "ERROR".into(), code: code.into(), message: message.into(), ..DbError::default() }
    }

    #[test]
    fn parses_error_fields() {
        let b = body(&[
            (b'S', "ERROR"),
            (b'V', "ERROR"),
            (b'C', "55006"),
            (b'M', "replication slot \"s\" is active for PID 42"),
            (b'D', "some detail"),
            (b'H', "some hint"),
            (b'F', "slot.c"),
        ]);
        let e = DbError::parse(&b).unwrap_or_default();
        assert_eq!(e.code, "55006");
        assert_eq!(e.severity, "ERROR");
        assert_eq!(e.detail.as_deref(), Some("some detail"));
        assert_eq!(e.hint.as_deref(), Some("some hint"));
        let shown = ReplicationError::from_server(e).to_string();
        assert!(shown.contains("in use by another connection") && shown.contains("PID 42"), "{shown}");
    }

    #[test]
    fn rejects_truncated_error() {
        assert!(DbError::parse(b"Cabc").is_err());
        assert!(DbError::parse(b"").is_err());
        assert!(DbError::parse(b"\0").is_ok());
    }

    #[test]
    fn classifies_sqlstates() {
        let c = |code, msg| ReplicationError::from_server(err(code, msg));
        assert!(matches!(c("55006", "replication slot \"a\" is active for PID 1"), ReplicationError::SlotInUse(_)));
        assert!(matches!(c("42704", "replication slot \"a\" does not exist"), ReplicationError::SlotNotFound(_)));
        assert!(matches!(c("42704", "publication \"p\" does not exist"), ReplicationError::PublicationNotFound(_)));
        assert!(matches!(
            c("55000", "can no longer get changes from replication slot \"a\""),
            ReplicationError::SlotInvalidated(_)
        ));
        assert!(matches!(c("55000", "something else"), ReplicationError::Db(_)));
        assert!(matches!(c("42501", "permission denied"), ReplicationError::PermissionDenied(_)));
        assert!(matches!(c("57P01", "terminating connection"), ReplicationError::ServerShutdown(_)));

        assert!(c("57P01", "terminating connection due to administrator command").is_transient());
        assert!(c("53300", "too many connections").is_transient());
        assert!(c("08006", "connection failure").is_transient());
        for definite in [("55006", "slot"), ("42704", "replication slot"), ("42704", "publication"), ("42501", "x")] {
            assert!(!c(definite.0, definite.1).is_transient(), "{definite:?}");
        }
        assert!(!c("42601", "syntax error").is_transient());
        assert!(ReplicationError::ConnectionClosed.is_transient());
        assert!(ReplicationError::Io(io::Error::from(io::ErrorKind::ConnectionReset)).is_transient());
        let auth = ReplicationError::AuthFailed {
            user: "u".into(),
            error: Box::new(err("28P01", "password authentication failed")),
        };
        assert!(!auth.is_transient());
        assert_eq!(auth.code(), Some("28P01"));
    }
}
