//! Preflight: what start-up verifies about PostgreSQL and the host before it changes anything, as steps that return
//! typed findings.
//!
//! Invariant: `run` and `check` ask these questions through the functions here only (and through
//! [`crate::startup::plan`], [`crate::pg::slot::inspect_publication`] and [`crate::kafka::verify_checkpoint_topic`]
//! for the slot, publication, checkpoint and its topic), so a `check` without problems means `run` passes the same
//! steps: `run` stops at the first [`Finding`], `check` reports every one. No step changes anything on a service.
//!
//! The replication connection is opened here too: `check` proves with it that the role may replicate, whichever way
//! the server grants that (the `REPLICATION` attribute, superuser, or a managed service's granted role such as
//! `rds_replication`), instead of guessing from `pg_roles`.

use std::path::{Path, PathBuf};

use tokio_postgres::Client;

use crate::kafka::Checkpoint;
use crate::outbox::config::OutboxTableConfig;
use crate::outbox::{MapError, TableMapper};
use crate::pg::config::PostgresConfig;
use crate::pg::conninfo::ConnInfo;
use crate::pg::identity::{HistoryEntry, SourceIdentity, parse_timeline_history};
use crate::pg::lsn::Lsn;
use crate::pg::replication::{ReplicationClient, ReplicationError};

/// The oldest PostgreSQL the relay supports (pgoutput `messages` and streaming need 14), as `server_version_num`.
pub const MIN_POSTGRES_VERSION_NUM: i32 = 140_000;

/// A precondition of start-up that does not hold; each message names what to change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Finding {
    /// The server is older than the relay supports.
    #[error("PostgreSQL {version} is too old: the relay needs PostgreSQL 14 or later")]
    PostgresTooOld {
        /// `server_version`.
        version: String,
    },
    /// A configured feature needs a newer server.
    #[error("{setting} needs PostgreSQL {needs} or later, the server runs {version}: {fix}")]
    PostgresFeature {
        /// The configuration key and value.
        setting: String,
        /// The major version needed.
        needs: u32,
        /// `server_version`.
        version: String,
        /// What to change.
        fix: &'static str,
    },
    /// `wal_level` is not `logical`.
    #[error(
        "wal_level is {actual} but logical decoding needs logical: set wal_level = logical in postgresql.conf (or \
         ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL"
    )]
    WalLevel {
        /// The server's `wal_level`.
        actual: String,
    },
    /// An outbox table does not exist.
    #[error(
        "outbox table {table} does not exist in database {database}: create it, or fix outbox.tables[{index}].table"
    )]
    OutboxTableMissing {
        /// Index in `outbox.tables`.
        index: usize,
        /// `schema.table`.
        table: String,
        /// The connected database.
        database: String,
    },
    /// An outbox table cannot be mapped as configured (missing columns): the same binding the relay makes when the
    /// table's first row arrives.
    #[error("{source}; add the column, or point outbox.tables[{index}] at existing columns")]
    OutboxMapping {
        /// Index in `outbox.tables`.
        index: usize,
        /// Why the table does not bind.
        #[source]
        source: Box<MapError>,
    },
    /// The spill directory cannot take a file.
    #[error(
        "postgres.spill_dir {}: cannot create a file there: {source}; create the directory, make it writable for \
         the relay's user, or point postgres.spill_dir elsewhere", dir.display()
    )]
    SpillDir {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Finding {
    /// Only a full disk may resolve itself; everything else needs the operator.
    pub fn is_transient(&self) -> bool {
        matches!(self, Finding::SpillDir { source, .. } if source.kind() == std::io::ErrorKind::StorageFull)
    }
}

/// What the SQL connection says about the server.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// `server_version`, first word (`16.4`).
    pub version: String,
    /// `server_version_num` (`160004`).
    pub version_num: i32,
    /// `wal_level`: only `logical` allows logical decoding.
    pub wal_level: String,
    /// `current_database()`.
    pub database: String,
}

/// Reads [`ServerSettings`].
pub async fn server_settings(client: &Client) -> Result<ServerSettings, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int, \
                    current_setting('wal_level'), current_database()::text",
            &[],
        )
        .await?;
    let full: String = row.try_get(0)?;
    Ok(ServerSettings {
        version: full.split_whitespace().next().unwrap_or(&full).to_owned(),
        version_num: row.try_get(1)?,
        wal_level: row.try_get(2)?,
        database: row.try_get(3)?,
    })
}

impl ServerSettings {
    /// The major version (`16`).
    pub fn major(&self) -> u32 {
        u32::try_from(self.version_num / 10_000).unwrap_or(0)
    }

    /// What stops the relay on this server with `pg`'s settings.
    pub fn findings(&self, pg: &PostgresConfig) -> Vec<Finding> {
        let mut findings = Vec::new();
        if self.version_num < MIN_POSTGRES_VERSION_NUM {
            findings.push(Finding::PostgresTooOld { version: self.version.clone() });
        }
        let protocol_needs = match pg.protocol_version {
            2 => 14,
            3 => 15,
            4 => 16,
            _ => 0,
        };
        if self.major() < protocol_needs {
            findings.push(Finding::PostgresFeature {
                setting: format!("postgres.protocol_version = {}", pg.protocol_version),
                needs: protocol_needs,
                version: self.version.clone(),
                fix: "lower it, or set 0 to use the highest the server supports",
            });
        }
        if pg.failover_slot && self.major() < 17 {
            findings.push(Finding::PostgresFeature {
                setting: "postgres.failover_slot = true".to_owned(),
                needs: 17,
                version: self.version.clone(),
                fix: "set failover_slot = false",
            });
        }
        if self.wal_level != "logical" {
            findings.push(Finding::WalLevel { actual: self.wal_level.clone() });
        }
        findings
    }
}

/// Binds every configured outbox table to its columns in the catalog, exactly as the relay binds the table's
/// relation when its first row arrives ([`TableMapper::bind`]). Partitioned tables bind by their root (the
/// publication publishes through it).
pub async fn outbox_tables(
    client: &Client,
    tables: &[OutboxTableConfig],
    database: &str,
) -> Result<Vec<Finding>, tokio_postgres::Error> {
    let mut findings = Vec::new();
    for (index, table) in tables.iter().enumerate() {
        let rows = client
            .query(
                "SELECT a.attname::text, a.atttypid FROM pg_attribute a \
                 JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p') \
                   AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                &[&table.table.schema, &table.table.name],
            )
            .await?;
        if rows.is_empty() {
            findings.push(Finding::OutboxTableMissing {
                index,
                table: table.table.to_string(),
                database: database.to_owned(),
            });
            continue;
        }
        let columns: Vec<(String, u32)> =
            rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect::<Result<_, tokio_postgres::Error>>()?;
        let columns = columns.iter().map(|(name, oid)| (name.as_str(), *oid));
        if let Err(source) = TableMapper::bind(table, &table.table.schema, &table.table.name, columns) {
            findings.push(Finding::OutboxMapping { index, source: Box::new(source) });
        }
    }
    Ok(findings)
}

/// Proves the spill directory takes a file (created and removed at once): a streamed transaction too large for
/// memory goes there, and discovering a read-only directory then would stop the relay in the middle of a stream.
pub fn spill_dir(dir: &Path) -> Result<(), Finding> {
    let fail = |source| Finding::SpillDir { dir: dir.to_owned(), source };
    std::fs::create_dir_all(dir).map_err(fail)?;
    tempfile::Builder::new().prefix("outbox-relay-preflight-").tempfile_in(dir).map_err(fail)?;
    Ok(())
}

/// An open replication connection and who the server is.
#[derive(Debug)]
pub struct Replication {
    /// The connection, ready for `START_REPLICATION`.
    pub client: ReplicationClient,
    /// `IDENTIFY_SYSTEM`: system id, timeline, database.
    pub server: SourceIdentity,
    /// `IDENTIFY_SYSTEM`: the server's current WAL position.
    pub wal: Lsn,
}

/// Opens a replication connection and asks the server who it is. Its success proves that the role may replicate.
pub async fn replication(conninfo: &ConnInfo) -> Result<Replication, ReplicationError> {
    let mut client = ReplicationClient::connect(conninfo).await?;
    let system = client.identify_system().await?;
    let server = SourceIdentity {
        system_id: system.system_id.to_string(),
        timeline: system.timeline,
        database: system.dbname.clone().unwrap_or_default(),
    };
    Ok(Replication { client, server, wal: system.xlogpos })
}

impl Replication {
    /// The timeline history [`crate::startup::plan`] needs to judge `checkpoint` (empty when it needs none).
    pub async fn history_for(
        &mut self,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<Vec<HistoryEntry>, ReplicationError> {
        let Some(timeline) = crate::startup::history_needed(checkpoint, &self.server) else { return Ok(Vec::new()) };
        let text = self.client.timeline_history(timeline).await?;
        parse_timeline_history(&text).map_err(|e| ReplicationError::protocol(format!("TIMELINE_HISTORY: {e}")))
    }
}
