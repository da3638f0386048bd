//! Text of the replication commands and their option rules, kept free of I/O so every quoting and version rule is unit
//! tested.
//!
//! Invariant: no caller-supplied string reaches a command unquoted. Identifiers are double-quoted with inner `"`
//! doubled; string literals are single-quoted with inner `'` doubled (the replication grammar knows no backslash
//! escapes); NUL bytes, which cannot travel in a protocol C string, are rejected.

use std::fmt;
use std::time::Duration;

use super::error::ReplicationError;
use crate::pg::lsn::Lsn;

/// Highest pgoutput protocol version this client asks for.
pub const MAX_PROTO_VERSION: u32 = 4;

/// Default interval between standby status updates; well inside the server's default `wal_sender_timeout` (60 s).
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// Default bound on [`super::ReplicationStream::stop`].
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Quotes an identifier (slot, publication, plugin name) for a replication command.
pub fn quote_identifier(ident: &str) -> Result<String, ReplicationError> {
    if ident.contains('\0') {
        return Err(ReplicationError::InvalidArgument(format!("identifier {ident:?} contains a NUL byte")));
    }
    Ok(format!("\"{}\"", ident.replace('"', "\"\"")))
}

/// Quotes a string literal for a replication command option value.
pub fn quote_literal(value: &str) -> Result<String, ReplicationError> {
    if value.contains('\0') {
        return Err(ReplicationError::InvalidArgument(format!("value {value:?} contains a NUL byte")));
    }
    Ok(format!("'{}'", value.replace('\'', "''")))
}

/// The `publication_names` value: a literal holding a comma-separated list of quoted identifiers (the server splits
/// it with `SplitIdentifierString`, which honours double quotes and keeps the case of quoted names).
pub fn publication_names_literal(publications: &[String]) -> Result<String, ReplicationError> {
    if publications.is_empty() {
        return Err(ReplicationError::InvalidArgument("at least one publication name is required".into()));
    }
    let list = publications.iter().map(|p| quote_identifier(p)).collect::<Result<Vec<_>, _>>()?.join(",");
    quote_literal(&list)
}

/// `server_version_num` from the `server_version` parameter: `15.4 (Debian ...)` -> 150004, `9.6.24` -> 90624,
/// `17beta1` / `18devel` -> 170000 / 180000. `None` if it does not start with a number.
pub fn parse_server_version(version: &str) -> Option<u32> {
    let numeric: String = version.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    let mut parts = numeric.split('.').filter(|p| !p.is_empty()).map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    if major >= 10 {
        Some(major * 10_000 + minor)
    } else {
        let patch = parts.next().flatten().unwrap_or(0);
        Some(major * 10_000 + minor * 100 + patch)
    }
}

/// The highest pgoutput protocol version a server of this version supports: PG14 -> 2, PG15 -> 3, PG16+ -> 4,
/// older -> 1.
pub const fn max_proto_version_for(server_version_num: u32) -> u32 {
    match server_version_num {
        160_000.. => 4,
        150_000.. => 3,
        140_000.. => 2,
        _ => 1,
    }
}

/// pgoutput's `streaming` option: whether the server sends large in-progress transactions before they commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Streaming {
    /// Transactions arrive only once committed (spilled to disk on the server while large).
    #[default]
    Off,
    /// In-progress transactions are streamed (Stream Start/Stop/Commit/Abort); protocol version 2+.
    On,
    /// Like `On`, and Stream Abort carries the abort LSN and time; protocol version 4+ (PostgreSQL 16+).
    Parallel,
}

impl Streaming {
    const fn as_str(self) -> &'static str {
        match self {
            Streaming::Off => "off",
            Streaming::On => "on",
            Streaming::Parallel => "parallel",
        }
    }

    const fn min_proto_version(self) -> u32 {
        match self {
            Streaming::Off => 1,
            Streaming::On => 2,
            Streaming::Parallel => 4,
        }
    }
}

impl fmt::Display for Streaming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `CREATE_REPLICATION_SLOT` does with the snapshot of the slot's consistent point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SnapshotAction {
    /// Export it (name returned) until the next command on this connection: read the initial table state with
    /// `SET TRANSACTION SNAPSHOT` on another connection.
    #[default]
    Export,
    /// Do not create a snapshot.
    Nothing,
    /// Use it for the current transaction on this connection (must be inside `BEGIN ... ISOLATION LEVEL REPEATABLE
    /// READ`).
    Use,
}

/// Parameters of `START_REPLICATION SLOT ... LOGICAL ...` and of the resulting stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicationOptions {
    /// Logical replication slot (must use the `pgoutput` plugin).
    pub slot: String,
    /// Publications to decode (`publication_names`).
    pub publications: Vec<String>,
    /// Where to start; `0/0` (and anything at or below the slot's `confirmed_flush_lsn`) starts at the slot's
    /// confirmed position.
    pub start_lsn: Lsn,
    /// pgoutput `proto_version`; `None` asks for the highest the server supports (see [`max_proto_version_for`]).
    pub proto_version: Option<u32>,
    /// pgoutput `streaming`.
    pub streaming: Streaming,
    /// pgoutput `messages`: also send `pg_logical_emit_message` messages (PostgreSQL 14+).
    pub messages: bool,
    /// pgoutput `binary`: column values in binary send/recv format (PostgreSQL 14+).
    pub binary: bool,
    /// Interval between standby status updates sent while streaming, whatever the traffic. Must be well below the
    /// server's `wal_sender_timeout`.
    pub status_interval: Duration,
    /// Bound on [`super::ReplicationStream::stop`] (sending CopyDone and draining to ReadyForQuery).
    pub stop_timeout: Duration,
}

impl ReplicationOptions {
    /// Options with defaults: start at the slot's confirmed position, highest protocol version, streaming off,
    /// messages on, text values, status every [`DEFAULT_STATUS_INTERVAL`].
    pub fn new(slot: impl Into<String>, publications: impl IntoIterator<Item = impl Into<String>>) -> Self {
        ReplicationOptions {
            slot: slot.into(),
            publications: publications.into_iter().map(Into::into).collect(),
            start_lsn: Lsn::ZERO,
            proto_version: None,
            streaming: Streaming::Off,
            messages: true,
            binary: false,
            status_interval: DEFAULT_STATUS_INTERVAL,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
        }
    }

    /// The protocol version to use against a server of `server_version_num`.
    pub fn effective_proto_version(&self, server_version_num: u32) -> u32 {
        self.proto_version.unwrap_or_else(|| max_proto_version_for(server_version_num))
    }

    /// The command text, and the protocol version it asks for. Checks the options against the server version first,
    /// so an unsupported combination fails with a message naming the option instead of a server syntax error.
    pub fn command(&self, server_version_num: u32) -> Result<(String, u32), ReplicationError> {
        let proto = self.effective_proto_version(server_version_num);
        if proto == 0 {
            return Err(ReplicationError::InvalidArgument("proto_version must be 1 or higher".into()));
        }
        if proto < self.streaming.min_proto_version() {
            return Err(ReplicationError::Unsupported(format!(
                "streaming '{}' needs pgoutput proto_version {} or higher, but {proto} is used{}",
                self.streaming,
                self.streaming.min_proto_version(),
                if self.proto_version.is_some() { " (configured)" } else { " (the highest this server supports)" },
            )));
        }
        if self.status_interval.is_zero() {
            return Err(ReplicationError::InvalidArgument("status_interval must be greater than zero".into()));
        }
        let mut opts = vec![
            format!("proto_version '{proto}'"),
            format!("publication_names {}", publication_names_literal(&self.publications)?),
        ];
        if server_version_num >= 140_000 {
            opts.push(format!("messages '{}'", self.messages));
            opts.push(format!("binary '{}'", self.binary));
            opts.push(format!("streaming '{}'", self.streaming));
        } else if self.messages || self.binary {
            return Err(ReplicationError::Unsupported(format!(
                "pgoutput options messages/binary need PostgreSQL 14 or later (server_version_num {server_version_num}); \
                 set messages=false and binary=false"
            )));
        } else if self.streaming != Streaming::Off {
            return Err(ReplicationError::Unsupported("streaming needs PostgreSQL 14 or later".into()));
        }
        let cmd = format!(
            "START_REPLICATION SLOT {} LOGICAL {} ({})",
            quote_identifier(&self.slot)?,
            self.start_lsn,
            opts.join(", ")
        );
        Ok((cmd, proto))
    }
}

/// `CREATE_REPLICATION_SLOT` text for a pgoutput slot: the PostgreSQL 15+ option-list syntax, or the older keywords.
pub fn create_slot_command(
    name: &str,
    temporary: bool,
    snapshot: SnapshotAction,
    server_version_num: u32,
) -> Result<String, ReplicationError> {
    let temp = if temporary { " TEMPORARY" } else { "" };
    let snap = match (server_version_num >= 150_000, snapshot) {
        (true, SnapshotAction::Export) => " (SNAPSHOT 'export')",
        (true, SnapshotAction::Nothing) => " (SNAPSHOT 'nothing')",
        (true, SnapshotAction::Use) => " (SNAPSHOT 'use')",
        (false, SnapshotAction::Export) => " EXPORT_SNAPSHOT",
        (false, SnapshotAction::Nothing) => " NOEXPORT_SNAPSHOT",
        (false, SnapshotAction::Use) => " USE_SNAPSHOT",
    };
    Ok(format!("CREATE_REPLICATION_SLOT {}{temp} LOGICAL pgoutput{snap}", quote_identifier(name)?))
}

/// `DROP_REPLICATION_SLOT` text.
pub fn drop_slot_command(name: &str, wait: bool) -> Result<String, ReplicationError> {
    Ok(format!("DROP_REPLICATION_SLOT {}{}", quote_identifier(name)?, if wait { " WAIT" } else { "" }))
}

/// Result of `IDENTIFY_SYSTEM`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentifySystem {
    /// The cluster's unique system identifier.
    pub system_id: u64,
    /// Current timeline.
    pub timeline: u32,
    /// Current WAL flush position.
    pub xlogpos: Lsn,
    /// Database connected to (`None` on a physical replication connection).
    pub dbname: Option<String>,
}

/// Result of `CREATE_REPLICATION_SLOT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedSlot {
    /// Name of the slot.
    pub slot_name: String,
    /// The slot's consistent point: the first LSN whose transactions it will decode.
    pub consistent_point: Lsn,
    /// The exported snapshot, with [`SnapshotAction::Export`].
    pub snapshot_name: Option<String>,
    /// The output plugin (`pgoutput`).
    pub output_plugin: Option<String>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn ok<T>(r: Result<T, ReplicationError>) -> T {
        match r {
            Ok(v) => v,
            Err(e) => unreachable!("{e}"),
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(ok(quote_identifier("slot")), "\"slot\"");
        assert_eq!(ok(quote_identifier("we\"ird")), "\"we\"\"ird\"");
        assert_eq!(ok(quote_literal("o'brien")), "'o''brien'");
        assert_eq!(ok(quote_literal("back\\slash")), "'back\\slash'");
        assert!(quote_identifier("a\0b").is_err());
        assert!(quote_literal("a\0b").is_err());
        let pubs = vec!["p1".to_owned(), "My \"Pub\"".to_owned(), "it's".to_owned()];
        assert_eq!(ok(publication_names_literal(&pubs)), "'\"p1\",\"My \"\"Pub\"\"\",\"it''s\"'");
        assert!(publication_names_literal(&[]).is_err());
    }

    #[test]
    fn server_versions() {
        assert_eq!(parse_server_version("15.4 (Debian 15.4-1.pgdg120+1)"), Some(150_004));
        assert_eq!(parse_server_version("16.0"), Some(160_000));
        assert_eq!(parse_server_version("17beta1"), Some(170_000));
        assert_eq!(parse_server_version("18devel"), Some(180_000));
        assert_eq!(parse_server_version("9.6.24"), Some(90_624));
        assert_eq!(parse_server_version("14"), Some(140_000));
        assert_eq!(parse_server_version("x"), None);
        assert_eq!(max_proto_version_for(130_010), 1);
        assert_eq!(max_proto_version_for(140_000), 2);
        assert_eq!(max_proto_version_for(150_004), 3);
        assert_eq!(max_proto_version_for(160_000), 4);
        assert_eq!(max_proto_version_for(180_001), 4);
    }

    #[test]
    fn start_replication_text() {
        let mut o = ReplicationOptions::new("my\"slot", ["pub"]);
        o.start_lsn = Lsn(0x16_B374_D848);
        let (cmd, proto) = ok(o.command(150_004));
        assert_eq!(proto, 3);
        assert_eq!(
            cmd,
            "START_REPLICATION SLOT \"my\"\"slot\" LOGICAL 16/B374D848 (proto_version '3', publication_names \
             '\"pub\"', messages 'true', binary 'false', streaming 'off')"
        );
        o.streaming = Streaming::Parallel;
        assert!(matches!(o.command(150_004), Err(ReplicationError::Unsupported(_))));
        let (cmd, proto) = ok(o.command(170_000));
        assert_eq!(proto, 4);
        assert!(cmd.contains("streaming 'parallel'"), "{cmd}");
        o.proto_version = Some(2);
        o.streaming = Streaming::On;
        let (cmd, proto) = ok(o.command(170_000));
        assert_eq!(proto, 2);
        assert!(cmd.contains("proto_version '2'") && cmd.contains("streaming 'on'"), "{cmd}");
        o.proto_version = Some(1);
        let e = o.command(170_000).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("streaming 'on'") && e.contains("configured"), "{e}");
        let old = ReplicationOptions { messages: false, ..ReplicationOptions::new("s", ["p"]) };
        let (cmd, proto) = ok(old.command(130_000));
        assert_eq!(proto, 1);
        assert!(!cmd.contains("messages"), "{cmd}");
        assert!(ReplicationOptions::new("s", ["p"]).command(130_000).is_err());
        assert!(ReplicationOptions::new("s", Vec::<String>::new()).command(150_000).is_err());
    }

    #[test]
    fn slot_commands() {
        assert_eq!(
            ok(create_slot_command("s", true, SnapshotAction::Nothing, 150_000)),
            "CREATE_REPLICATION_SLOT \"s\" TEMPORARY LOGICAL pgoutput (SNAPSHOT 'nothing')"
        );
        assert_eq!(
            ok(create_slot_command("s", false, SnapshotAction::Export, 140_000)),
            "CREATE_REPLICATION_SLOT \"s\" LOGICAL pgoutput EXPORT_SNAPSHOT"
        );
        assert_eq!(ok(drop_slot_command("s", true)), "DROP_REPLICATION_SLOT \"s\" WAIT");
    }
}
