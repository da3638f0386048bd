//! Slot and publication management over an ordinary SQL connection (tokio-postgres).
//!
//! Invariant: the relay only ever creates what is missing and never alters or drops an operator's publication or
//! slot; an existing publication that does not cover the configured tables, a slot of another plugin or database,
//! or a slot PostgreSQL has invalidated is a [`SlotError`] that says what to fix. Every identifier reaches SQL through
//! [`quote_ident`] or a bind parameter, never by plain concatenation.

use std::fmt;

use tokio_postgres::Client;
use tracing::info;

use crate::pg::lsn::Lsn;

/// A schema-qualified table name, as the catalog stores it (unquoted parts folded to lower case, as PostgreSQL does).
/// The configuration's `outbox.tables[].table` is parsed into one at load, so every user of a table name (the
/// publication, the mapping of incoming relations, `check`) agrees on which table it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    /// Schema (namespace).
    pub schema: String,
    /// Table.
    pub name: String,
}

impl TableName {
    /// Parses `schema.table` or `table` (schema `public`). Double-quoted parts keep dots and case; each part is at
    /// most 63 bytes (NAMEDATALEN - 1).
    pub fn parse(s: &str) -> Option<TableName> {
        let parts = split_qualified(s)?;
        if parts.iter().any(|p| p.len() > crate::pg::config::MAX_PG_IDENTIFIER_LEN) {
            return None;
        }
        match parts.as_slice() {
            [t] => Some(TableName { schema: "public".into(), name: t.clone() }),
            [s, t] => Some(TableName { schema: s.clone(), name: t.clone() }),
            _ => None,
        }
    }

    /// The name quoted for SQL: `"schema"."table"`.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl TableName {
    /// The name as it is written in configuration: a part quoted only where PostgreSQL would not read it back
    /// unquoted (capitals, characters other than lower-case letters, digits, `_` and `$`, or a leading digit).
    pub fn to_config_text(&self) -> String {
        let part = |p: &str| {
            let plain = p.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
            if plain { p.to_owned() } else { quote_ident(p) }
        };
        format!("{}.{}", part(&self.schema), part(&self.name))
    }
}

impl Default for TableName {
    /// `public.outbox`, the Outbox Event Router's table.
    fn default() -> Self {
        TableName { schema: "public".into(), name: "outbox".into() }
    }
}

impl serde::Serialize for TableName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_config_text())
    }
}

impl<'de> serde::Deserialize<'de> for TableName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(deserializer)?;
        TableName::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{text}` is not a table name like `public.outbox` or `outbox` (schema public); unquoted names fold to \
                 lower case as in SQL, write `public.\"Outbox\"` for a mixed-case name; at most 63 bytes per part"
            ))
        })
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Splits `a.b` into parts; `"a.b".c` keeps the quoted dot; unquoted parts fold to lower case like PostgreSQL.
fn split_qualified(s: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = s.trim().chars().peekable();
    let mut quoted_part = false;
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted_part = true;
                loop {
                    match chars.next()? {
                        '"' if chars.peek() == Some(&'"') => {
                            chars.next();
                            cur.push('"');
                        }
                        '"' => break,
                        other => cur.push(other),
                    }
                }
            }
            '.' => {
                if cur.is_empty() {
                    return None;
                }
                parts.push(std::mem::take(&mut cur));
                quoted_part = false;
            }
            c if quoted_part => {
                // Text after a closing quote inside one part, like `"a"b`: not a valid identifier.
                let _ = c;
                return None;
            }
            c => cur.extend(c.to_lowercase()),
        }
    }
    if cur.is_empty() {
        return None;
    }
    parts.push(cur);
    Some(parts)
}

/// Quotes an identifier for SQL and replication commands: wraps in double quotes, doubling inner ones.
pub fn quote_ident(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Errors of slot and publication management.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// The SQL connection failed.
    #[error("postgresql query failed while {doing}: {source}")]
    Sql {
        /// What was being done.
        doing: &'static str,
        /// The error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The publication is missing and creating it is disabled.
    #[error(
        "publication {0:?} does not exist; create it with CREATE PUBLICATION ... WITH (publish = 'insert') or set \
         postgres.create_publication = true"
    )]
    PublicationMissing(String),
    /// A configured table is partitioned and the existing publication publishes its partitions under their own
    /// names, which no mapping claims.
    #[error(
        "publication {publication:?} publishes the partitions of the partitioned table {table} under their own names \
         (publish_via_partition_root = false), so their rows would not match the outbox mapping; run ALTER PUBLICATION \
         {publication} SET (publish_via_partition_root = true)"
    )]
    PublicationNotViaRoot {
        /// `postgres.publication`.
        publication: String,
        /// The partitioned table.
        table: String,
    },
    /// The publication exists but does not cover a configured table or does not publish inserts.
    #[error(
        "publication {publication:?} does not publish inserts of {table}; run ALTER PUBLICATION {publication} ADD \
         TABLE {table} (and make sure publish includes 'insert')"
    )]
    PublicationIncomplete {
        /// `postgres.publication`.
        publication: String,
        /// A table it misses.
        table: String,
    },
    /// The slot is missing and creating it is disabled.
    #[error("replication slot {0:?} does not exist; create it or set postgres.create_slot = true")]
    SlotMissing(String),
    /// The slot exists but is not a pgoutput logical slot of this database.
    #[error("replication slot {slot:?} is not usable: {reason}")]
    SlotUnusable {
        /// `postgres.slot`.
        slot: String,
        /// Why.
        reason: String,
    },
    /// PostgreSQL invalidated the slot (WAL removed): the data in between is gone.
    #[error(
        "replication slot {slot:?} was invalidated by PostgreSQL (wal_status = {wal_status}); the changes it \
         protected are lost. Drop and recreate the slot, then restart the relay with --accept-gap after reconciling"
    )]
    SlotInvalidated {
        /// `postgres.slot`.
        slot: String,
        /// `wal_status` as read.
        wal_status: String,
    },
}

impl SlotError {
    /// `true` when retrying later may help (connection trouble), `false` for what needs an operator.
    pub fn is_transient(&self) -> bool {
        match self {
            SlotError::Sql { source, .. } => crate::pg::is_transient_sql_error(source),
            _ => false,
        }
    }
}

fn sql(doing: &'static str) -> impl FnOnce(tokio_postgres::Error) -> SlotError {
    move |source| SlotError::Sql { doing, source }
}

/// What `pg_replication_slots` says about a slot.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotInfo {
    /// Slot name.
    pub name: String,
    /// Output plugin (`pgoutput`).
    pub plugin: Option<String>,
    /// `logical` or `physical`.
    pub slot_type: String,
    /// Database the slot belongs to.
    pub database: Option<String>,
    /// Whether a walsender is streaming from it now.
    pub active: bool,
    /// That walsender's pid.
    pub active_pid: Option<i32>,
    /// Oldest WAL the slot retains.
    pub restart_lsn: Option<Lsn>,
    /// Position the consumer confirmed.
    pub confirmed_flush_lsn: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved` or `lost` (PostgreSQL 13+).
    pub wal_status: Option<String>,
    /// Bytes of WAL that can still be written before the slot is in danger (PostgreSQL 13+ with
    /// `max_slot_wal_keep_size`).
    pub safe_wal_size: Option<i64>,
    /// Failover slot (PostgreSQL 17+).
    pub failover: Option<bool>,
    /// Two-phase decoding enabled.
    pub two_phase: Option<bool>,
}

impl SlotInfo {
    /// Checks that the slot can feed this relay: logical, pgoutput, this database, not invalidated.
    pub fn validate(&self, database: &str) -> Result<(), SlotError> {
        let unusable = |reason: String| SlotError::SlotUnusable { slot: self.name.clone(), reason };
        if self.slot_type != "logical" {
            return Err(unusable(format!("it is a {} slot; a logical slot is needed", self.slot_type)));
        }
        if self.plugin.as_deref() != Some("pgoutput") {
            return Err(unusable(format!(
                "it uses output plugin {:?}; outbox-relay needs pgoutput — use another slot name",
                self.plugin.as_deref().unwrap_or("?")
            )));
        }
        if self.database.as_deref() != Some(database) {
            return Err(unusable(format!(
                "it belongs to database {:?}, the relay is connected to {database:?}",
                self.database.as_deref().unwrap_or("?")
            )));
        }
        if self.wal_status.as_deref() == Some("lost") {
            return Err(SlotError::SlotInvalidated { slot: self.name.clone(), wal_status: "lost".into() });
        }
        Ok(())
    }
}

/// Reads a slot; `None` when it does not exist. Works across server versions by reading the row as JSON, so
/// columns added in later releases (`failover`, `safe_wal_size`) are simply absent on older ones.
pub async fn slot_info(client: &Client, slot: &str) -> Result<Option<SlotInfo>, SlotError> {
    let row = client
        .query_opt("SELECT to_jsonb(s)::text FROM pg_replication_slots s WHERE slot_name = $1", &[&slot])
        .await
        .map_err(sql("reading pg_replication_slots"))?;
    let Some(row) = row else { return Ok(None) };
    let text: String = row.try_get(0).map_err(sql("reading pg_replication_slots"))?;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    let lsn = |k: &str| v.get(k).and_then(|x| x.as_str()).and_then(|x| x.parse::<Lsn>().ok());
    Ok(Some(SlotInfo {
        name: slot.to_owned(),
        plugin: s("plugin"),
        slot_type: s("slot_type").unwrap_or_default(),
        database: s("database"),
        active: v.get("active").and_then(serde_json::Value::as_bool).unwrap_or(false),
        active_pid: v.get("active_pid").and_then(serde_json::Value::as_i64).and_then(|p| i32::try_from(p).ok()),
        restart_lsn: lsn("restart_lsn"),
        confirmed_flush_lsn: lsn("confirmed_flush_lsn"),
        wal_status: s("wal_status"),
        safe_wal_size: v.get("safe_wal_size").and_then(serde_json::Value::as_i64),
        failover: v.get("failover").and_then(serde_json::Value::as_bool),
        two_phase: v.get("two_phase").and_then(serde_json::Value::as_bool),
    }))
}

/// The server's `server_version_num` (e.g. 150018).
pub async fn server_version_num(client: &Client) -> Result<i32, SlotError> {
    let row = client.query_one("SHOW server_version_num", &[]).await.map_err(sql("reading server_version_num"))?;
    let v: String = row.try_get(0).map_err(sql("reading server_version_num"))?;
    Ok(v.trim().parse().unwrap_or(0))
}

/// Creates the logical slot `slot` with pgoutput and returns its state.
pub async fn create_slot(client: &Client, slot: &str, failover: bool) -> Result<SlotInfo, SlotError> {
    let version = server_version_num(client).await?;
    if failover && version < 170_000 {
        return Err(SlotError::SlotUnusable {
            slot: slot.to_owned(),
            reason: format!("postgres.failover_slot needs PostgreSQL 17 or later, the server is {version}"),
        });
    }
    let row = if version >= 170_000 {
        client
            .query_one(
                "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput', false, false, $2)",
                &[&slot, &failover],
            )
            .await
    } else {
        client
            .query_one(
                "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput', false, false)",
                &[&slot],
            )
            .await
    }
    .map_err(sql("creating the replication slot"))?;
    let lsn: String = row.try_get(0).map_err(sql("creating the replication slot"))?;
    info!(slot, consistent_point = %lsn, failover, "created logical replication slot");
    slot_info(client, slot).await?.ok_or_else(|| SlotError::SlotMissing(slot.to_owned()))
}

/// Creates the publication for `tables` with `publish = 'insert'` and `publish_via_partition_root = true` when
/// missing; verifies that an existing one publishes inserts of every table, and publishes a partitioned table's
/// rows under the table's own name. With no tables (tableless outbox only) an empty publication is enough: logical
/// messages do not depend on the publication's tables.
///
/// `publish_via_partition_root` is what makes a partitioned outbox work: without it pgoutput reports each row
/// under its leaf partition's name, and partitions come and go (created, attached, detached, dropped for
/// housekeeping) while the relay runs. With it every row arrives as a row of the configured table, whatever
/// partition holds it, and partitions added later are covered without touching the publication.
pub async fn ensure_publication(
    client: &Client,
    publication: &str,
    tables: &[TableName],
    create: bool,
) -> Result<bool, SlotError> {
    match inspect_publication(client, publication, tables).await? {
        PublicationState::Usable => Ok(false),
        PublicationState::Missing if !create => Err(SlotError::PublicationMissing(publication.to_owned())),
        PublicationState::Missing => {
            let list = tables.iter().map(TableName::quoted).collect::<Vec<_>>().join(", ");
            let stmt = if tables.is_empty() {
                format!("CREATE PUBLICATION {} WITH (publish = 'insert')", quote_ident(publication))
            } else {
                format!(
                    "CREATE PUBLICATION {} FOR TABLE {list} WITH (publish = 'insert', publish_via_partition_root = \
                     true)",
                    quote_ident(publication)
                )
            };
            client.batch_execute(&stmt).await.map_err(sql("creating the publication"))?;
            info!(publication, tables = %list, "created publication");
            Ok(true)
        }
    }
}

/// What an existing (or missing) publication means for the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicationState {
    /// It publishes inserts of every table, partitioned ones under their own name.
    Usable,
    /// It does not exist.
    Missing,
}

/// Reads the publication and checks it against `tables`, changing nothing: what [`ensure_publication`] relies on
/// and `check` reports. A publication that exists but cannot serve is a [`SlotError`] naming the fix.
pub async fn inspect_publication(
    client: &Client,
    publication: &str,
    tables: &[TableName],
) -> Result<PublicationState, SlotError> {
    let row = client
        .query_opt("SELECT pubinsert, puballtables, pubviaroot FROM pg_publication WHERE pubname = $1", &[&publication])
        .await
        .map_err(sql("reading pg_publication"))?;
    let Some(row) = row else { return Ok(PublicationState::Missing) };
    let pubinsert: bool = row.try_get(0).map_err(sql("reading pg_publication"))?;
    let all_tables: bool = row.try_get(1).map_err(sql("reading pg_publication"))?;
    let via_root: bool = row.try_get(2).map_err(sql("reading pg_publication"))?;
    if !via_root {
        for t in tables {
            if is_partitioned(client, t).await? {
                return Err(SlotError::PublicationNotViaRoot {
                    publication: publication.to_owned(),
                    table: t.quoted(),
                });
            }
        }
    }
    let rows = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(sql("reading pg_publication_tables"))?;
    let covered: Vec<TableName> =
        rows.iter().filter_map(|r| Some(TableName { schema: r.try_get(0).ok()?, name: r.try_get(1).ok()? })).collect();
    for t in tables {
        if !pubinsert || (!all_tables && !covered.contains(t)) {
            return Err(SlotError::PublicationIncomplete { publication: publication.to_owned(), table: t.quoted() });
        }
    }
    Ok(PublicationState::Usable)
}

/// Whether `table` is a partitioned table (`relkind = 'p'`); `false` when it does not exist.
pub async fn is_partitioned(client: &Client, table: &TableName) -> Result<bool, SlotError> {
    let row = client
        .query_opt(
            "SELECT c.relkind = 'p' FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(sql("reading pg_class"))?;
    Ok(row.map(|r| r.try_get::<_, bool>(0)).transpose().map_err(sql("reading pg_class"))?.unwrap_or(false))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("outbox"), "\"outbox\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_ident("a; DROP TABLE x"), "\"a; DROP TABLE x\"");
    }

    #[test]
    fn table_names() {
        let t = |s: &str| TableName::parse(s);
        assert_eq!(t("outbox"), Some(TableName { schema: "public".into(), name: "outbox".into() }));
        assert_eq!(t("App.Outbox"), Some(TableName { schema: "app".into(), name: "outbox".into() }));
        assert_eq!(
            t("\"My.Schema\".\"Out\"\"box\""),
            Some(TableName { schema: "My.Schema".into(), name: "Out\"box".into() })
        );
        for bad in ["", ".", "a.", ".a", "a.b.c", "\"unterminated", "\"a\"b"] {
            assert_eq!(t(bad), None, "{bad}");
        }
        assert_eq!(t("\"My.Schema\".t").map(|x| x.quoted()), Some("\"My.Schema\".\"t\"".to_owned()));
        assert_eq!(t(&"x".repeat(64)), None, "longer than NAMEDATALEN - 1");
        // Written back so that it parses to the same name.
        for text in ["public.outbox", "app.\"Outbox\"", "\"My.Schema\".\"Out\"\"box\"", "s.\"1st\""] {
            let name = t(text).unwrap();
            assert_eq!(name.to_config_text(), text);
            assert_eq!(t(&name.to_config_text()), Some(name));
        }
    }
}
