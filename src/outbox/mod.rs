//! Outbox rows and logical messages -> [`OutboxEvent`]s, and their routing (topic, key, headers, partition).
//!
//! Invariant: mapping is a pure function of the row (or message) and the configuration; it never drops a row. A row
//! that cannot be mapped (a required column missing or NULL, a routing value that makes an invalid topic name) is a
//! [`MapError`] naming the table, the event id when known, the column and the reason, and the pipeline stops on it
//! with the checkpoint untouched.
//!
//! Two sources produce the same [`OutboxEvent`]:
//!
//! ```text
//!  Relation (columns, once per table / ALTER) ──TableMapper::bind──> TableMapper (column indexes resolved)
//!  Insert (tuple, per row) ───────────────────────TableMapper::map_row──> OutboxEvent
//!  Message (prefix, content JSON) ───────────────MessageMapper::map_message──> Some(OutboxEvent) | None (other prefix)
//! ```
//!
//! Binding is where names are looked up; [`TableMapper::map_row`] touches cells by index only, because it runs once
//! per event on the hot path. The pipeline rebinds whenever pgoutput sends a new `Relation` for the table.
//!
//! Values arrive in PostgreSQL's text output format (pgoutput without `binary`). The replication connection must use
//! `DateStyle=ISO` (the server default) for [`parse_pg_timestamp`] to read `timestamptz` columns.

pub mod config;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::pg::lsn::{Lsn, PgTimestamp};
use crate::pg::pgoutput::{LogicalDecodingMessage, Relation, TupleColumn, TupleData};

/// One event ready to be encoded and produced.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    /// Event id (the `id` column, usually a uuid), as text. Becomes header `id`.
    pub id: String,
    /// Routing value (the `aggregatetype` column).
    pub aggregate_type: String,
    /// Aggregate id (the `aggregateid` column): the record key.
    pub aggregate_id: String,
    /// Event type (the `type` column). Becomes header `type`.
    pub event_type: String,
    /// Event timestamp: the configured timestamp column, or the commit time of its PostgreSQL transaction.
    pub timestamp: PgTimestamp,
    /// The payload column's value; `None` when the column is NULL.
    pub payload: Option<Payload>,
    /// Destination topic, already rendered from the route template.
    pub topic: String,
    /// Explicit partition from an additional field placed at `partition`.
    pub partition: Option<i32>,
    /// Extra Kafka headers (after `id` and `type`), from additional fields placed at `header`.
    pub headers: Vec<(String, Bytes)>,
    /// Extra envelope fields, from additional fields placed at `envelope`; `None` for NULL.
    pub envelope_fields: Vec<(String, Option<String>)>,
    /// Where the event came from, for error messages and metrics: `schema.table`, or `message:<prefix>`.
    pub source: String,
    /// Commit LSN of the PostgreSQL transaction the event belongs to (the checkpoint unit): the LSN of its commit
    /// record, as announced by the transaction's Begin (`final_lsn`), not the end LSN just past that record.
    pub commit_lsn: Lsn,
}

/// An event's payload: text (JSON for a `json`/`jsonb`/`text` column), or the bytes of a `bytea` column exactly as
/// stored (value mode `payload` passes them through; the other modes need them to be UTF-8 text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// From a text-like column (json, jsonb, text, varchar) or a message's JSON member.
    Text(String),
    /// From a `bytea` column.
    Bytes(Vec<u8>),
}

impl Payload {
    /// The payload as text: always for [`Payload::Text`], for [`Payload::Bytes`] when they are UTF-8.
    pub fn text(&self) -> Option<&str> {
        match self {
            Payload::Text(s) => Some(s),
            Payload::Bytes(b) => std::str::from_utf8(b).ok(),
        }
    }

    /// The payload's bytes (UTF-8 for text).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Payload::Text(s) => s.as_bytes(),
            Payload::Bytes(b) => b,
        }
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.as_bytes().is_empty()
    }
}

impl From<String> for Payload {
    fn from(s: String) -> Payload {
        Payload::Text(s)
    }
}

impl From<&str> for Payload {
    fn from(s: &str) -> Payload {
        Payload::Text(s.to_owned())
    }
}

pub use config::{AdditionalField, OutboxConfig, OutboxTableConfig, Placement, ROUTED_BY_VALUE};

/// PostgreSQL's type oid of `bytea`: such a payload arrives as `\x<hex>` and is decoded to its bytes.
pub const BYTEA_OID: u32 = 17;

/// The header or envelope field name of an additional field: its alias, or its column when the alias is empty.
pub fn output_name(field: &AdditionalField) -> &str {
    if field.alias.is_empty() { &field.column } else { &field.alias }
}

impl OutboxConfig {
    /// The mapping of the tableless outbox: its JSON members are named like the columns of the first configured
    /// table, or of the defaults when only messages are relayed.
    pub fn message_mapping(&self) -> OutboxTableConfig {
        self.tables.first().cloned().unwrap_or_default()
    }
}

impl OutboxTableConfig {
    /// Names of the envelope fields, in configuration order: the Avro envelope gets one field each.
    pub fn envelope_field_names(&self) -> impl Iterator<Item = &str> {
        self.additional_fields.iter().filter(|f| f.placement == Placement::Envelope).map(output_name)
    }
}

/// The envelope field names of several mappings (every table and the message outbox) in first-seen order, without
/// duplicates: the extra fields of the one envelope schema they share.
pub fn envelope_fields<'a>(mappings: impl IntoIterator<Item = &'a OutboxTableConfig>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for name in mappings.into_iter().flat_map(OutboxTableConfig::envelope_field_names) {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    names
}

/// Why an outbox row or message could not become an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct MapError {
    /// `schema.table`, `message:<prefix>`, or `configuration`.
    pub origin: String,
    /// The event id, when it was read before the failure.
    pub event_id: Option<String>,
    /// The column (or message field) at fault.
    pub column: Option<String>,
    /// What went wrong.
    pub kind: MapErrorKind,
}

/// The reason of a [`MapError`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MapErrorKind {
    /// Columns named in the configuration are not in the table: `(column, setting)` pairs.
    MissingColumns(Vec<(String, &'static str)>),
    /// A required column is NULL (or absent from a message).
    Null,
    /// An unchanged TOASTed value, which an INSERT cannot carry: the publication or the table is not what we expect.
    UnchangedToast,
    /// A value in binary format; the relay asks pgoutput for text.
    BinaryFormat,
    /// The row has fewer columns than its relation.
    ShortRow { index: usize, len: usize },
    /// Bytes that are not UTF-8 text.
    NotUtf8,
    /// A `bytea` value that is not `\x<hex>`.
    InvalidBytea,
    /// A timestamp that could not be parsed.
    InvalidTimestamp { value: String, reason: &'static str },
    /// A partition value that is not a non-negative 32-bit integer.
    InvalidPartition { value: String },
    /// The rendered topic is not a legal Kafka topic name.
    InvalidTopic { topic: String, reason: &'static str },
    /// A logical message whose content is not a JSON object.
    MalformedMessage { reason: String },
    /// A message field of the wrong JSON type.
    WrongType { expected: &'static str },
    /// A transactional outbox message emitted with `transactional = false`: it is not atomic with its transaction.
    NonTransactionalMessage,
    /// The mapping configuration itself is invalid.
    InvalidMapping(String),
}

impl MapError {
    fn new(origin: impl Into<String>, kind: MapErrorKind) -> MapError {
        MapError { origin: origin.into(), event_id: None, column: None, kind }
    }

    fn describe(&self) -> String {
        use fmt::Write as _;
        let mut s = format!("cannot map outbox event from {}", self.origin);
        if let Some(id) = &self.event_id {
            let _ = write!(s, " (event id {id})");
        }
        if let Some(c) = &self.column {
            let _ = write!(s, ", column {c:?}");
        }
        s.push_str(": ");
        let _ = match &self.kind {
            MapErrorKind::MissingColumns(cols) => {
                s.push_str("the table has no column ");
                for (i, (c, setting)) in cols.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    let _ = write!(s, "{sep}{c:?} (configured as {setting})");
                }
                Ok(())
            }
            MapErrorKind::Null => write!(s, "value is NULL or missing, and it is required"),
            MapErrorKind::UnchangedToast => {
                write!(s, "unchanged TOAST value, which an INSERT cannot carry (is the publication insert-only?)")
            }
            MapErrorKind::BinaryFormat => write!(s, "value in binary format; expected pgoutput text format"),
            MapErrorKind::ShortRow { index, len } => write!(s, "row has {len} columns, column index {index} expected"),
            MapErrorKind::NotUtf8 => write!(s, "value is not valid UTF-8 text"),
            MapErrorKind::InvalidBytea => write!(s, "bytea value is not in \\x<hex> form"),
            MapErrorKind::InvalidTimestamp { value, reason } => write!(s, "invalid timestamp {value:?}: {reason}"),
            MapErrorKind::InvalidPartition { value } => {
                write!(s, "partition value {value:?} is not a non-negative 32-bit integer")
            }
            MapErrorKind::InvalidTopic { topic, reason } => write!(s, "invalid Kafka topic name {topic:?}: {reason}"),
            MapErrorKind::MalformedMessage { reason } => write!(s, "message content is not a JSON object: {reason}"),
            MapErrorKind::WrongType { expected } => write!(s, "expected a JSON {expected}"),
            MapErrorKind::NonTransactionalMessage => write!(
                s,
                "message was emitted with transactional = false; use pg_logical_emit_message(true, ...) so the event \
                 commits or rolls back with its transaction"
            ),
            MapErrorKind::InvalidMapping(reason) => write!(s, "{reason}"),
        };
        s
    }

    fn at(mut self, event_id: Option<&str>, column: &str) -> MapError {
        self.event_id = event_id.map(str::to_owned);
        self.column = Some(column.to_owned());
        self
    }
}

/// A parsed topic template: literal pieces between occurrences of [`ROUTED_BY_VALUE`], all pre-validated, so that
/// rendering only has to check the routing value.
#[derive(Debug, Clone)]
struct RouteTemplate {
    pieces: Vec<String>,
    literal_len: usize,
    /// `route_topic_regex` with the template as its replacement, when configured.
    regex: Option<(regex::Regex, String)>,
}

impl RouteTemplate {
    fn parse(template: &str, regex: &str) -> Result<RouteTemplate, MapError> {
        let invalid = |reason: String| MapError::new("configuration", MapErrorKind::InvalidMapping(reason));
        crate::kafka::topic::validate_template(template)
            .map_err(|reason| invalid(format!("route_topic_replacement: {reason}")))?;
        let pieces: Vec<String> = template.split(ROUTED_BY_VALUE).map(str::to_owned).collect();
        let literal_len = pieces.iter().map(String::len).sum();
        let regex = match regex {
            "" => None,
            r => Some((
                regex::Regex::new(r).map_err(|e| invalid(format!("route_topic_regex: {e}")))?,
                template.to_owned(),
            )),
        };
        Ok(RouteTemplate { pieces, literal_len, regex })
    }

    fn render(&self, value: &str) -> Result<String, MapErrorKind> {
        let topic = match &self.regex {
            // Debezium's `routingValue.replaceFirst(regex, replacement)`; the regex crate reads `${name}` in the
            // replacement as Java does.
            Some((re, replacement)) => re.replacen(value, 1, replacement.as_str()).into_owned(),
            None => {
                let mut topic =
                    String::with_capacity(self.literal_len + value.len() * self.pieces.len().saturating_sub(1));
                for (i, p) in self.pieces.iter().enumerate() {
                    if i > 0 {
                        topic.push_str(value);
                    }
                    topic.push_str(p);
                }
                topic
            }
        };
        match crate::kafka::topic::check_name(&topic) {
            Ok(()) => Ok(topic),
            Err(reason) => Err(MapErrorKind::InvalidTopic { topic, reason }),
        }
    }
}

/// One column value of a row, in pgoutput's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell<'a> {
    /// SQL NULL.
    Null,
    /// An unchanged TOASTed value (only in UPDATEs).
    UnchangedToast,
    /// Text output format.
    Text(&'a [u8]),
    /// Binary format (only with pgoutput's `binary` option).
    Binary(&'a [u8]),
}

/// A row whose cells can be read by column index; implemented by the decoder's tuple type and by `[Cell]`.
pub trait Row {
    /// The cell at `index`, or `None` past the end of the row.
    fn cell(&self, index: usize) -> Option<Cell<'_>>;
    /// Number of cells.
    fn len(&self) -> usize;
    /// `true` for a row without cells.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Row for [Cell<'_>] {
    #[inline]
    fn cell(&self, index: usize) -> Option<Cell<'_>> {
        self.get(index).copied()
    }

    #[inline]
    fn len(&self) -> usize {
        <[Cell<'_>]>::len(self)
    }
}

impl Row for TupleData {
    #[inline]
    fn cell(&self, index: usize) -> Option<Cell<'_>> {
        self.columns.get(index).map(|c| match c {
            TupleColumn::Null => Cell::Null,
            TupleColumn::UnchangedToast => Cell::UnchangedToast,
            TupleColumn::Text(b) => Cell::Text(b),
            TupleColumn::Binary(b) => Cell::Binary(b),
        })
    }

    #[inline]
    fn len(&self) -> usize {
        self.columns.len()
    }
}

/// An additional field bound to its column index.
#[derive(Debug, Clone)]
struct BoundField {
    index: usize,
    name: String,
}

/// An [`OutboxTableConfig`] bound to one table's column list: every name resolved to an index.
#[derive(Debug, Clone)]
pub struct TableMapper {
    source: String,
    id: usize,
    key: usize,
    event_type: usize,
    route: usize,
    payload: usize,
    payload_is_bytea: bool,
    timestamp: Option<usize>,
    route_template: RouteTemplate,
    headers: Vec<BoundField>,
    envelope: Vec<BoundField>,
    partition: Option<BoundField>,
    // Column names by index, for error messages only.
    names: Vec<String>,
}

impl TableMapper {
    /// Binds `mapping` (validated with the configuration) to the table `namespace.table` whose columns (name, type
    /// oid) are given in relation order. Fails naming every configured column the table lacks.
    pub fn bind<'a>(
        mapping: &OutboxTableConfig,
        namespace: &str,
        table: &str,
        columns: impl IntoIterator<Item = (&'a str, u32)>,
    ) -> Result<TableMapper, MapError> {
        let source = format!("{namespace}.{table}");
        let cols: Vec<(&str, u32)> = columns.into_iter().collect();
        let mut missing = Vec::new();
        let mut find = |name: &str, setting: &'static str| -> usize {
            match cols.iter().position(|(n, _)| *n == name) {
                Some(i) => i,
                None => {
                    if !missing.iter().any(|(m, _): &(String, &str)| m == name) {
                        missing.push((name.to_owned(), setting));
                    }
                    usize::MAX
                }
            }
        };
        let id = find(&mapping.field_event_id, "field_event_id");
        let key = find(&mapping.field_event_key, "field_event_key");
        let event_type = find(&mapping.field_event_type, "field_event_type");
        let route = find(&mapping.route_by_field, "route_by_field");
        let payload = find(&mapping.field_event_payload, "field_event_payload");
        let timestamp = mapping.timestamp_column().map(|c| find(c, "field_event_timestamp"));
        let mut headers = Vec::new();
        let mut envelope = Vec::new();
        let mut partition = None;
        for f in &mapping.additional_fields {
            let bound =
                BoundField { index: find(&f.column, "additional_fields.column"), name: output_name(f).to_owned() };
            match f.placement {
                Placement::Header => headers.push(bound),
                Placement::Envelope => envelope.push(bound),
                Placement::Partition => partition = Some(bound),
            }
        }
        if !missing.is_empty() {
            return Err(MapError::new(source, MapErrorKind::MissingColumns(missing)));
        }
        let payload_is_bytea = cols.get(payload).is_some_and(|(_, oid)| *oid == BYTEA_OID);
        Ok(TableMapper {
            source,
            id,
            key,
            event_type,
            route,
            payload,
            payload_is_bytea,
            timestamp,
            route_template: RouteTemplate::parse(&mapping.route_topic_replacement, &mapping.route_topic_regex)?,
            headers,
            envelope,
            partition,
            names: cols.iter().map(|(n, _)| (*n).to_owned()).collect(),
        })
    }

    /// Binds `mapping` to a pgoutput [`Relation`].
    pub fn bind_relation(mapping: &OutboxTableConfig, relation: &Relation) -> Result<TableMapper, MapError> {
        let columns = relation.columns.iter().map(|c| (c.name.as_str(), c.type_oid.0));
        TableMapper::bind(mapping, relation.schema(), &relation.name, columns)
    }

    /// `schema.table` of the bound table.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Maps one inserted row of a transaction committed at `commit_lsn` / `commit_time`.
    pub fn map_row<R: Row + ?Sized>(
        &self,
        row: &R,
        commit_lsn: Lsn,
        commit_time: PgTimestamp,
    ) -> Result<OutboxEvent, MapError> {
        let id = self.required(row, self.id, None)?.to_owned();
        let eid = Some(id.as_str());
        let aggregate_id = self.required(row, self.key, eid)?.to_owned();
        let event_type = self.required(row, self.event_type, eid)?.to_owned();
        let aggregate_type = self.required(row, self.route, eid)?.to_owned();
        let payload = match self.cell(row, self.payload, eid)? {
            Cell::Null => None,
            Cell::Text(t) if self.payload_is_bytea => Some(Payload::Bytes(
                decode_bytea_hex(t).ok_or_else(|| self.err(MapErrorKind::InvalidBytea, self.payload, eid))?,
            )),
            Cell::Text(t) => Some(Payload::Text(self.text(t, self.payload, eid)?.to_owned())),
            c => return Err(self.bad_cell(c, self.payload, eid)),
        };
        let timestamp = match self.timestamp {
            None => commit_time,
            Some(i) => match self.optional(row, i, eid)? {
                None => commit_time,
                Some(t) => parse_pg_timestamp(t).map_err(|reason| {
                    self.err(MapErrorKind::InvalidTimestamp { value: t.to_owned(), reason }, i, eid)
                })?,
            },
        };
        let topic = self.route_template.render(&aggregate_type).map_err(|k| self.err(k, self.route, eid))?;
        let mut headers = Vec::with_capacity(self.headers.len());
        for h in &self.headers {
            if let Some(v) = self.optional(row, h.index, eid)? {
                headers.push((h.name.clone(), Bytes::copy_from_slice(v.as_bytes())));
            }
        }
        let mut envelope_fields = Vec::with_capacity(self.envelope.len());
        for f in &self.envelope {
            envelope_fields.push((f.name.clone(), self.optional(row, f.index, eid)?.map(str::to_owned)));
        }
        let partition =
            match &self.partition {
                None => None,
                Some(p) => match self.optional(row, p.index, eid)? {
                    None => None,
                    Some(v) => Some(parse_partition(v).ok_or_else(|| {
                        self.err(MapErrorKind::InvalidPartition { value: v.to_owned() }, p.index, eid)
                    })?),
                },
            };
        Ok(OutboxEvent {
            id,
            aggregate_type,
            aggregate_id,
            event_type,
            timestamp,
            payload,
            topic,
            partition,
            headers,
            envelope_fields,
            source: self.source.clone(),
            commit_lsn,
        })
    }

    fn err(&self, kind: MapErrorKind, index: usize, event_id: Option<&str>) -> MapError {
        let column = self.names.get(index).map_or("?", String::as_str);
        MapError::new(self.source.as_str(), kind).at(event_id, column)
    }

    #[inline]
    fn cell<'r, R: Row + ?Sized>(&self, row: &'r R, index: usize, eid: Option<&str>) -> Result<Cell<'r>, MapError> {
        row.cell(index).ok_or_else(|| self.err(MapErrorKind::ShortRow { index, len: row.len() }, index, eid))
    }

    #[inline]
    fn text<'r>(&self, bytes: &'r [u8], index: usize, eid: Option<&str>) -> Result<&'r str, MapError> {
        std::str::from_utf8(bytes).map_err(|_| self.err(MapErrorKind::NotUtf8, index, eid))
    }

    fn bad_cell(&self, cell: Cell<'_>, index: usize, eid: Option<&str>) -> MapError {
        let kind = match cell {
            Cell::Null => MapErrorKind::Null,
            Cell::UnchangedToast => MapErrorKind::UnchangedToast,
            Cell::Binary(_) | Cell::Text(_) => MapErrorKind::BinaryFormat,
        };
        self.err(kind, index, eid)
    }

    #[inline]
    fn optional<'r, R: Row + ?Sized>(
        &self,
        row: &'r R,
        index: usize,
        eid: Option<&str>,
    ) -> Result<Option<&'r str>, MapError> {
        match self.cell(row, index, eid)? {
            Cell::Null => Ok(None),
            Cell::Text(t) => self.text(t, index, eid).map(Some),
            c => Err(self.bad_cell(c, index, eid)),
        }
    }

    #[inline]
    fn required<'r, R: Row + ?Sized>(&self, row: &'r R, index: usize, eid: Option<&str>) -> Result<&'r str, MapError> {
        self.optional(row, index, eid)?.ok_or_else(|| self.err(MapErrorKind::Null, index, eid))
    }
}

/// Decodes PostgreSQL's `bytea_output = hex` form, `\x` followed by pairs of hex digits.
pub fn decode_bytea_hex(text: &[u8]) -> Option<Vec<u8>> {
    let hex = text.strip_prefix(b"\\x")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let nibble = |b: u8| -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    };
    hex.chunks_exact(2)
        .map(|pair| match pair {
            [h, l] => Some((nibble(*h)? << 4) | nibble(*l)?),
            _ => None,
        })
        .collect()
}

fn parse_partition(v: &str) -> Option<i32> {
    v.trim().parse::<i32>().ok().filter(|p| *p >= 0)
}

/// Maps transactional logical messages (`pg_logical_emit_message(true, prefix, content)`) with one prefix to events.
///
/// The content is a JSON object whose members are named like the table columns of the same mapping:
/// `{"id": "...", "aggregatetype": "...", "aggregateid": "...", "type": "...", "payload": <any JSON>,
/// "timestamp"?: ..., <additional fields>}`. The payload's JSON text is kept byte for byte. The timestamp member is
/// `field_event_timestamp` when configured, else `timestamp`; it is optional (commit time when absent or null) and
/// is either a string in PostgreSQL or ISO-8601 form or a number of milliseconds since the Unix epoch.
#[derive(Debug, Clone)]
pub struct MessageMapper {
    prefix: String,
    source: String,
    mapping: OutboxTableConfig,
    timestamp_field: String,
    route_template: RouteTemplate,
}

impl MessageMapper {
    /// A mapper for messages with `prefix`.
    pub fn new(prefix: impl Into<String>, mapping: &OutboxTableConfig) -> Result<MessageMapper, MapError> {
        let prefix = prefix.into();
        Ok(MessageMapper {
            source: format!("message:{prefix}"),
            prefix,
            timestamp_field: mapping.timestamp_column().unwrap_or("timestamp").to_owned(),
            route_template: RouteTemplate::parse(&mapping.route_topic_replacement, &mapping.route_topic_regex)?,
            mapping: mapping.clone(),
        })
    }

    /// The prefix this mapper takes.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Maps one logical message. `Ok(None)` for a message with another prefix (heartbeats, other applications).
    pub fn map_message(
        &self,
        prefix: &str,
        transactional: bool,
        content: &[u8],
        commit_lsn: Lsn,
        commit_time: PgTimestamp,
    ) -> Result<Option<OutboxEvent>, MapError> {
        if prefix != self.prefix {
            return Ok(None);
        }
        let malformed = |reason: String| MapError::new(self.source.as_str(), MapErrorKind::MalformedMessage { reason });
        if !transactional {
            return Err(MapError::new(self.source.as_str(), MapErrorKind::NonTransactionalMessage));
        }
        let text =
            std::str::from_utf8(content).map_err(|_| MapError::new(self.source.as_str(), MapErrorKind::NotUtf8))?;
        let members: HashMap<Cow<'_, str>, &RawValue> =
            serde_json::from_str(text).map_err(|e| malformed(e.to_string()))?;
        let m = &self.mapping;
        let id = self.required(&members, &m.field_event_id, None)?;
        let eid = Some(id.as_str());
        let aggregate_id = self.required(&members, &m.field_event_key, eid)?;
        let event_type = self.required(&members, &m.field_event_type, eid)?;
        let aggregate_type = self.required(&members, &m.route_by_field, eid)?;
        let payload = members
            .get(m.field_event_payload.as_str())
            .map(|raw| raw.get())
            .filter(|raw| *raw != "null")
            .map(|raw| Payload::Text(raw.to_owned()));
        let timestamp = match members.get(self.timestamp_field.as_str()) {
            None => commit_time,
            Some(raw) => self.timestamp(raw, eid)?.unwrap_or(commit_time),
        };
        let topic = self
            .route_template
            .render(&aggregate_type)
            .map_err(|k| MapError::new(self.source.as_str(), k).at(eid, &m.route_by_field))?;
        let mut headers = Vec::new();
        let mut envelope_fields = Vec::new();
        let mut partition = None;
        for f in &m.additional_fields {
            let value = self.optional(&members, &f.column, eid)?;
            match f.placement {
                Placement::Header => {
                    if let Some(v) = value {
                        headers.push((output_name(f).to_owned(), Bytes::from(v)));
                    }
                }
                Placement::Envelope => envelope_fields.push((output_name(f).to_owned(), value)),
                Placement::Partition => {
                    if let Some(v) = value {
                        partition = Some(parse_partition(&v).ok_or_else(|| {
                            MapError::new(self.source.as_str(), MapErrorKind::InvalidPartition { value: v.clone() })
                                .at(eid, &f.column)
                        })?);
                    }
                }
            }
        }
        Ok(Some(OutboxEvent {
            id: id.clone(),
            aggregate_type,
            aggregate_id,
            event_type,
            timestamp,
            payload,
            topic,
            partition,
            headers,
            envelope_fields,
            source: self.source.clone(),
            commit_lsn,
        }))
    }

    /// [`MessageMapper::map_message`] for a decoded pgoutput message.
    pub fn map_logical_message(
        &self,
        message: &LogicalDecodingMessage,
        commit_lsn: Lsn,
        commit_time: PgTimestamp,
    ) -> Result<Option<OutboxEvent>, MapError> {
        self.map_message(&message.prefix, message.transactional, &message.content, commit_lsn, commit_time)
    }

    /// A scalar member as text: strings unquoted, numbers and booleans as their JSON text; `None` for null/absent.
    fn optional(
        &self,
        members: &HashMap<Cow<'_, str>, &RawValue>,
        field: &str,
        eid: Option<&str>,
    ) -> Result<Option<String>, MapError> {
        let Some(raw) = members.get(field) else { return Ok(None) };
        let wrong = || {
            MapError::new(self.source.as_str(), MapErrorKind::WrongType { expected: "string, number or boolean" })
                .at(eid, field)
        };
        let text = raw.get();
        match text.as_bytes().first() {
            Some(b'"') => serde_json::from_str::<String>(text).map(Some).map_err(|_| wrong()),
            Some(b'{' | b'[') | None => Err(wrong()),
            Some(_) if text == "null" => Ok(None),
            Some(_) => Ok(Some(text.to_owned())),
        }
    }

    fn required(
        &self,
        members: &HashMap<Cow<'_, str>, &RawValue>,
        field: &str,
        eid: Option<&str>,
    ) -> Result<String, MapError> {
        self.optional(members, field, eid)?
            .ok_or_else(|| MapError::new(self.source.as_str(), MapErrorKind::Null).at(eid, field))
    }

    fn timestamp(&self, raw: &RawValue, eid: Option<&str>) -> Result<Option<PgTimestamp>, MapError> {
        let field = self.timestamp_field.as_str();
        let invalid = |value: &str, reason: &'static str| {
            MapError::new(self.source.as_str(), MapErrorKind::InvalidTimestamp { value: value.to_owned(), reason })
                .at(eid, field)
        };
        let text = raw.get();
        if text == "null" {
            return Ok(None);
        }
        if text.starts_with('"') {
            let s: String = serde_json::from_str(text).map_err(|_| invalid(text, "not a JSON string"))?;
            return parse_pg_timestamp(&s).map(Some).map_err(|r| invalid(&s, r));
        }
        let millis: i64 =
            text.parse().map_err(|_| invalid(text, "expected a string or an integer of epoch milliseconds"))?;
        millis
            .checked_mul(1000)
            .and_then(|us| us.checked_sub(PgTimestamp(0).unix_micros()))
            .map(|us| Some(PgTimestamp(us)))
            .ok_or_else(|| invalid(text, "out of range"))
    }
}

/// Microseconds per day.
const DAY_US: i64 = 86_400_000_000;
/// Days from 1970-01-01 to 2000-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;

/// Parses PostgreSQL's `timestamptz`/`timestamp` text output with `DateStyle=ISO`, e.g.
/// `2026-11-27 22:53:51.123456+00`, `2026-11-27 22:53:51+05:30`, `0044-03-15 12:00:00+00 BC`; also ISO-8601 with
/// `T` and `Z`. A value without an offset (`timestamp without time zone`) is taken as UTC. Fractions beyond
/// microseconds are truncated. Never panics.
pub fn parse_pg_timestamp(text: &str) -> Result<PgTimestamp, &'static str> {
    let mut p = Cursor { s: text.as_bytes(), pos: 0 };
    if text == "infinity" || text == "-infinity" {
        return Err("infinite timestamps cannot be encoded");
    }
    let year_digits = p.digits_len();
    if year_digits < 4 {
        return Err("expected a year of at least 4 digits");
    }
    let year = p.number(year_digits).ok_or("year out of range")?;
    p.expect(b'-')?;
    let month = p.number(2).ok_or("expected a 2-digit month")?;
    p.expect(b'-')?;
    let day = p.number(2).ok_or("expected a 2-digit day")?;
    if !matches!(p.next(), Some(b' ' | b'T')) {
        return Err("expected ' ' or 'T' between date and time");
    }
    let hour = p.number(2).ok_or("expected a 2-digit hour")?;
    p.expect(b':')?;
    let minute = p.number(2).ok_or("expected 2-digit minutes")?;
    p.expect(b':')?;
    let second = p.number(2).ok_or("expected 2-digit seconds")?;
    let mut micros = 0i64;
    if p.peek() == Some(b'.') {
        p.pos += 1;
        let n = p.digits_len();
        if n == 0 {
            return Err("expected digits after '.'");
        }
        for i in 0..6 {
            let d = if i < n { p.s.get(p.pos + i).map_or(0, |b| b - b'0') } else { 0 };
            micros = micros * 10 + i64::from(d);
        }
        p.pos += n;
    }
    let offset_secs = match p.peek() {
        Some(b'Z') => {
            p.pos += 1;
            0
        }
        Some(sign @ (b'+' | b'-')) => {
            p.pos += 1;
            let h = p.number(2).ok_or("expected a 2-digit offset hour")?;
            let mut secs = h * 3600;
            if p.peek() == Some(b':') {
                p.pos += 1;
            }
            if p.digits_len() >= 2 {
                secs += p.number(2).ok_or("bad offset minutes")? * 60;
                if p.peek() == Some(b':') {
                    p.pos += 1;
                    secs += p.number(2).ok_or("bad offset seconds")?;
                }
            }
            if sign == b'-' { -secs } else { secs }
        }
        _ => 0,
    };
    let year = if p.rest() == b" BC" {
        p.pos += 3;
        1 - year
    } else {
        year
    };
    if p.pos != p.s.len() {
        return Err("unexpected text after the timestamp");
    }
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err("no such date");
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err("no such time of day");
    }
    let days = days_from_civil(year, month, day) - PG_EPOCH_DAYS;
    let secs_of_day = hour * 3600 + minute * 60 + second - offset_secs;
    days.checked_mul(DAY_US)
        .and_then(|us| us.checked_add(secs_of_day * 1_000_000 + micros))
        .map(PgTimestamp)
        .ok_or("out of range")
}

struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek();
        self.pos += 1;
        b
    }

    fn rest(&self) -> &[u8] {
        self.s.get(self.pos..).unwrap_or_default()
    }

    fn digits_len(&self) -> usize {
        self.rest().iter().take_while(|b| b.is_ascii_digit()).count()
    }

    fn expect(&mut self, b: u8) -> Result<(), &'static str> {
        if self.next() == Some(b) { Ok(()) } else { Err("malformed timestamp") }
    }

    /// Exactly `n` digits (n <= 9) as a number.
    fn number(&mut self, n: usize) -> Option<i64> {
        if n > 9 || self.digits_len() < n {
            return None;
        }
        let digits = self.s.get(self.pos..self.pos + n)?;
        self.pos += n;
        Some(digits.iter().fold(0i64, |acc, b| acc * 10 + i64::from(b - b'0')))
    }
}

fn is_leap(year: i64) -> bool {
    year.rem_euclid(4) == 0 && (year.rem_euclid(100) != 0 || year.rem_euclid(400) == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (astronomical year numbering).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    // Count from March 1 so the leap day falls at the end of the computational year.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    const TEXT: u32 = 25;
    const UUID: u32 = 2950;
    const JSONB: u32 = 3802;
    const TIMESTAMPTZ: u32 = 1184;
    const LSN: Lsn = Lsn(0x16_B374_D848);
    const COMMIT: PgTimestamp = PgTimestamp(1_000_000);

    fn default_columns() -> Vec<(&'static str, u32)> {
        vec![("id", UUID), ("aggregatetype", TEXT), ("aggregateid", TEXT), ("type", TEXT), ("payload", JSONB)]
    }

    fn t(s: &str) -> Cell<'_> {
        Cell::Text(s.as_bytes())
    }

    fn default_row() -> Vec<Cell<'static>> {
        vec![t("0b9e5a6e-8f1c-4e0a-9a43-7f2b8c1d2e3f"), t("order"), t("o-42"), t("OrderCreated"), t(r#"{"total": 7}"#)]
    }

    fn bind(mapping: &OutboxTableConfig, cols: &[(&'static str, u32)]) -> TableMapper {
        TableMapper::bind(mapping, "public", "outbox", cols.iter().copied()).unwrap()
    }

    #[test]
    fn defaults_follow_debezium() {
        let m = bind(&OutboxTableConfig::default(), &default_columns());
        let ev = m.map_row(default_row().as_slice(), LSN, COMMIT).unwrap();
        assert_eq!(
            ev,
            OutboxEvent {
                id: "0b9e5a6e-8f1c-4e0a-9a43-7f2b8c1d2e3f".into(),
                aggregate_type: "order".into(),
                aggregate_id: "o-42".into(),
                event_type: "OrderCreated".into(),
                timestamp: COMMIT,
                payload: Some(r#"{"total": 7}"#.into()),
                topic: "outbox.event.order".into(),
                partition: None,
                headers: vec![],
                envelope_fields: vec![],
                source: "public.outbox".into(),
                commit_lsn: LSN,
            }
        );
    }

    #[test]
    fn custom_columns_any_order_and_timestamp_column() {
        let mapping = OutboxTableConfig {
            field_event_id: "event_id".into(),
            field_event_key: "key".into(),
            field_event_type: "kind".into(),
            field_event_payload: "body".into(),
            field_event_timestamp: "created_at".into(),
            route_by_field: "stream".into(),
            route_topic_replacement: "app.${routedByValue}.events".into(),
            additional_fields: vec![],
            ..OutboxTableConfig::default()
        };
        let cols = [
            ("body", JSONB),
            ("extra", TEXT),
            ("created_at", TIMESTAMPTZ),
            ("kind", TEXT),
            ("stream", TEXT),
            ("key", TEXT),
            ("event_id", UUID),
        ];
        let m = bind(&mapping, &cols);
        let row = [t("{}"), Cell::Null, t("2000-01-01 00:00:01.5+00"), t("K"), t("s1"), t("k1"), t("e1")];
        let ev = m.map_row(row.as_slice(), LSN, COMMIT).unwrap();
        assert_eq!((ev.id.as_str(), ev.aggregate_id.as_str(), ev.event_type.as_str()), ("e1", "k1", "K"));
        assert_eq!(ev.topic, "app.s1.events");
        assert_eq!(ev.timestamp, PgTimestamp(1_500_000));
        assert_eq!(ev.payload.as_ref().and_then(Payload::text), Some("{}"));
        // A NULL timestamp column falls back to the commit time.
        let row = [t("{}"), Cell::Null, Cell::Null, t("K"), t("s1"), t("k1"), t("e1")];
        assert_eq!(m.map_row(row.as_slice(), LSN, COMMIT).unwrap().timestamp, COMMIT);
        // An unparsable one is an error naming the column.
        let row = [t("{}"), Cell::Null, t("yesterday"), t("K"), t("s1"), t("k1"), t("e1")];
        let e = m.map_row(row.as_slice(), LSN, COMMIT).unwrap_err();
        assert_eq!(e.column.as_deref(), Some("created_at"));
        assert!(matches!(e.kind, MapErrorKind::InvalidTimestamp { .. }), "{e}");
    }

    #[test]
    fn additional_fields_go_to_header_envelope_and_partition() {
        let mapping = OutboxTableConfig {
            additional_fields: vec![
                AdditionalField { column: "tenant".into(), placement: Placement::Header, alias: String::new() },
                AdditionalField { column: "trace".into(), placement: Placement::Header, alias: "traceparent".into() },
                AdditionalField { column: "tenant".into(), placement: Placement::Envelope, alias: "tenant_id".into() },
                AdditionalField { column: "note".into(), placement: Placement::Envelope, alias: String::new() },
                AdditionalField { column: "shard".into(), placement: Placement::Partition, alias: String::new() },
            ],
            ..OutboxTableConfig::default()
        };
        assert_eq!(mapping.envelope_field_names().collect::<Vec<_>>(), ["tenant_id", "note"]);
        let mut cols = default_columns();
        cols.extend([("tenant", TEXT), ("trace", TEXT), ("note", TEXT), ("shard", 23)]);
        let m = bind(&mapping, &cols);
        let mut row = default_row();
        row.extend([t("acme"), Cell::Null, Cell::Null, t("3")]);
        let ev = m.map_row(row.as_slice(), LSN, COMMIT).unwrap();
        // NULL header omitted, NULL envelope field kept as None.
        assert_eq!(ev.headers, vec![("tenant".to_owned(), Bytes::from_static(b"acme"))]);
        assert_eq!(
            ev.envelope_fields,
            vec![("tenant_id".to_owned(), Some("acme".to_owned())), ("note".to_owned(), None)]
        );
        assert_eq!(ev.partition, Some(3));

        let len = row.len();
        row[len - 3] = t("00-abc-01");
        row[len - 1] = Cell::Null;
        let ev = m.map_row(row.as_slice(), LSN, COMMIT).unwrap();
        assert_eq!(ev.headers[1], ("traceparent".to_owned(), Bytes::from_static(b"00-abc-01")));
        assert_eq!(ev.partition, None);

        for bad in ["x", "-1", "2147483648", "1.5"] {
            row[len - 1] = t(bad);
            let e = m.map_row(row.as_slice(), LSN, COMMIT).unwrap_err();
            assert_eq!(e.kind, MapErrorKind::InvalidPartition { value: bad.into() });
            assert_eq!(e.column.as_deref(), Some("shard"));
            assert_eq!(e.event_id.as_deref(), Some("0b9e5a6e-8f1c-4e0a-9a43-7f2b8c1d2e3f"));
        }
    }

    #[test]
    fn pgoutput_relation_and_tuple() {
        use crate::pg::pgoutput::{Oid, RelationColumn};
        let relation = Relation {
            xid: None,
            oid: Oid(16_384),
            namespace: "app".into(),
            name: "outbox".into(),
            replica_identity: b'd',
            columns: default_columns()
                .into_iter()
                .map(|(name, oid)| RelationColumn {
                    flags: 0,
                    name: name.into(),
                    type_oid: Oid(oid),
                    type_modifier: -1,
                })
                .collect(),
        };
        let m = TableMapper::bind_relation(&OutboxTableConfig::default(), &relation).unwrap();
        assert_eq!(m.source(), "app.outbox");
        let tuple = TupleData {
            columns: ["e1", "order", "o1", "T", "{}"]
                .iter()
                .map(|v| TupleColumn::Text(Bytes::from_static(v.as_bytes())))
                .collect(),
        };
        let ev = m.map_row(&tuple, LSN, COMMIT).unwrap();
        assert_eq!((ev.id.as_str(), ev.topic.as_str(), ev.source.as_str()), ("e1", "outbox.event.order", "app.outbox"));
        let message = LogicalDecodingMessage {
            xid: None,
            transactional: true,
            lsn: LSN,
            prefix: "outbox".into(),
            content: Bytes::from_static(br#"{"id":"e","aggregatetype":"a","aggregateid":"k","type":"t"}"#),
        };
        let ev = messages().map_logical_message(&message, LSN, COMMIT).unwrap().unwrap();
        assert_eq!(ev.topic, "outbox.event.a");
    }

    #[test]
    fn mappings_from_config_and_shared_envelope_fields() {
        use crate::outbox::config::{OutboxConfig, OutboxTableConfig};
        let env =
            |c: &str, a: &str| AdditionalField { column: c.into(), placement: Placement::Envelope, alias: a.into() };
        let table = |name: &str, fields| OutboxTableConfig {
            table: crate::pg::slot::TableName::parse(name).unwrap(),
            field_event_timestamp: "created_at".into(),
            additional_fields: fields,
            ..OutboxTableConfig::default()
        };
        let config = OutboxConfig {
            tables: vec![
                table("public.a", vec![env("t", "tenant"), env("r", "")]),
                table("public.b", vec![env("x", "tenant")]),
            ],
            ..OutboxConfig::default()
        };
        let (a, b) = (&config.tables[0], &config.tables[1]);
        assert_eq!(envelope_fields([a, b]), ["tenant", "r"]);
        assert_eq!(&config.message_mapping(), a);
        let messages_only = OutboxConfig { tables: vec![], ..OutboxConfig::default() };
        assert_eq!(messages_only.message_mapping(), OutboxTableConfig::default());
    }

    #[test]
    fn null_payload_is_none() {
        let m = bind(&OutboxTableConfig::default(), &default_columns());
        let mut row = default_row();
        row[4] = Cell::Null;
        assert_eq!(m.map_row(row.as_slice(), LSN, COMMIT).unwrap().payload, None);
    }

    #[test]
    fn bytea_payload_is_decoded_to_its_bytes() {
        let mut cols = default_columns();
        cols[4].1 = BYTEA_OID;
        let m = bind(&OutboxTableConfig::default(), &cols);
        let mut row = default_row();
        row[4] = t("\\x7b2261223a317d");
        let payload = m.map_row(row.as_slice(), LSN, COMMIT).unwrap().payload.unwrap();
        assert_eq!((payload.text(), &payload), (Some(r#"{"a":1}"#), &Payload::Bytes(br#"{"a":1}"#.to_vec())));
        // Not UTF-8: kept as bytes (value mode `payload` passes them on; the others refuse them when encoding).
        row[4] = t("\\xff00");
        let payload = m.map_row(row.as_slice(), LSN, COMMIT).unwrap().payload.unwrap();
        assert_eq!((payload.text(), payload.as_bytes()), (None, &[0xff, 0][..]));
        row[4] = t("\\x7");
        assert_eq!(m.map_row(row.as_slice(), LSN, COMMIT).unwrap_err().kind, MapErrorKind::InvalidBytea);
        // A text payload that looks like bytea stays as it is.
        let m = bind(&OutboxTableConfig::default(), &default_columns());
        assert_eq!(
            m.map_row(row.as_slice(), LSN, COMMIT).unwrap().payload.as_ref().and_then(Payload::text),
            Some("\\x7")
        );
    }

    #[test]
    fn a_route_regex_routes_by_its_group_as_debezium_does() {
        let t = RouteTemplate::parse("events.${routedByValue}", r"(?<routedByValue>[a-z]+)_v\d+").unwrap();
        assert_eq!(t.render("order_v2").unwrap(), "events.order");
        // Java's replaceFirst: only the match is replaced, the rest of the value stays; no match, no change.
        assert_eq!(t.render("x-order_v2").unwrap(), "x-events.order");
        assert_eq!(t.render("Invoice").unwrap(), "Invoice");
        let plain = RouteTemplate::parse("events.${routedByValue}", "").unwrap();
        assert_eq!(plain.render("order_v2").unwrap(), "events.order_v2");
    }

    #[test]
    fn missing_columns_are_all_named_at_bind_time() {
        let mapping = OutboxTableConfig {
            additional_fields: vec![AdditionalField {
                column: "tenant".into(),
                placement: Placement::Header,
                alias: String::new(),
            }],
            ..OutboxTableConfig::default()
        };
        let cols = [("id", UUID), ("aggregatetype", TEXT), ("type", TEXT), ("payload", JSONB)];
        let e = TableMapper::bind(&mapping, "public", "outbox", cols.iter().copied()).unwrap_err();
        assert_eq!(
            e.kind,
            MapErrorKind::MissingColumns(vec![
                ("aggregateid".into(), "field_event_key"),
                ("tenant".into(), "additional_fields.column"),
            ])
        );
        let msg = e.to_string();
        assert!(
            msg.contains("public.outbox") && msg.contains("\"aggregateid\"") && msg.contains("\"tenant\""),
            "{msg}"
        );
    }

    #[test]
    fn null_required_column_names_event_and_column() {
        let m = bind(&OutboxTableConfig::default(), &default_columns());
        let mut row = default_row();
        row[2] = Cell::Null;
        let e = m.map_row(row.as_slice(), LSN, COMMIT).unwrap_err();
        assert_eq!(e.kind, MapErrorKind::Null);
        assert_eq!(e.column.as_deref(), Some("aggregateid"));
        assert_eq!(e.event_id.as_deref(), Some("0b9e5a6e-8f1c-4e0a-9a43-7f2b8c1d2e3f"));
        assert!(e.to_string().contains("0b9e5a6e-8f1c-4e0a-9a43-7f2b8c1d2e3f"), "{e}");
        // The id itself NULL: no id to name.
        let mut row = default_row();
        row[0] = Cell::Null;
        let e = m.map_row(row.as_slice(), LSN, COMMIT).unwrap_err();
        assert_eq!((e.event_id, e.column.as_deref()), (None, Some("id")));
    }

    #[test]
    fn toast_binary_short_rows_and_bad_utf8_are_named_errors() {
        let m = bind(&OutboxTableConfig::default(), &default_columns());
        let mut row = default_row();
        row[3] = Cell::UnchangedToast;
        assert_eq!(m.map_row(row.as_slice(), LSN, COMMIT).unwrap_err().kind, MapErrorKind::UnchangedToast);
        row[3] = Cell::Binary(b"\x00");
        assert_eq!(m.map_row(row.as_slice(), LSN, COMMIT).unwrap_err().kind, MapErrorKind::BinaryFormat);
        row[3] = Cell::Text(b"\xff");
        assert_eq!(m.map_row(row.as_slice(), LSN, COMMIT).unwrap_err().kind, MapErrorKind::NotUtf8);
        let e = m.map_row(&default_row()[..3], LSN, COMMIT).unwrap_err();
        assert_eq!(e.kind, MapErrorKind::ShortRow { index: 3, len: 3 });
    }

    #[test]
    fn routing_value_that_makes_a_bad_topic_is_an_error() {
        let m = bind(&OutboxTableConfig::default(), &default_columns());
        let long = "x".repeat(237);
        for bad in ["order/v2", "ord er", "ördér", long.as_str()] {
            let mut row = default_row();
            row[1] = t(bad);
            let e = m.map_row(row.as_slice(), LSN, COMMIT).unwrap_err();
            assert!(matches!(e.kind, MapErrorKind::InvalidTopic { .. }), "{bad}: {e}");
            assert_eq!(e.column.as_deref(), Some("aggregatetype"));
        }
        let ok = "x".repeat(236);
        let mut row = default_row();
        row[1] = t(&ok);
        assert_eq!(m.map_row(row.as_slice(), LSN, COMMIT).unwrap().topic.len(), 249);

        // A template routing to the value alone: "." and ".." are reserved.
        let mapping =
            OutboxTableConfig { route_topic_replacement: ROUTED_BY_VALUE.into(), ..OutboxTableConfig::default() };
        let m = bind(&mapping, &default_columns());
        for bad in [".", "..", ""] {
            let mut row = default_row();
            row[1] = t(bad);
            assert!(matches!(
                m.map_row(row.as_slice(), LSN, COMMIT).unwrap_err().kind,
                MapErrorKind::InvalidTopic { .. }
            ));
        }
    }

    fn ts(s: &str) -> i64 {
        parse_pg_timestamp(s).unwrap_or_else(|e| panic!("{s}: {e}")).unix_micros()
    }

    #[test]
    fn timestamps_parse_with_fractions_and_offsets() {
        assert_eq!(parse_pg_timestamp("2000-01-01 00:00:00+00"), Ok(PgTimestamp(0)));
        assert_eq!(ts("1970-01-01 00:00:00+00"), 0);
        assert_eq!(ts("2026-11-27 22:53:51.123456+00"), 1_795_820_031_123_456);
        assert_eq!(ts("2026-11-27 22:53:51.1+00"), 1_795_820_031_100_000);
        assert_eq!(ts("2026-11-27 22:53:51.1234567+00"), 1_795_820_031_123_456);
        assert_eq!(ts("2026-11-27T22:53:51.123Z"), 1_795_820_031_123_000);
        assert_eq!(ts("2026-11-27 22:53:51"), 1_795_820_031_000_000);
        // Offsets move the instant the other way.
        assert_eq!(ts("2026-11-28 04:23:51+05:30"), 1_795_820_031_000_000);
        assert_eq!(ts("2026-11-27 14:53:51-08"), 1_795_820_031_000_000);
        assert_eq!(ts("2026-11-27 22:53:51+0000"), 1_795_820_031_000_000);
        assert_eq!(ts("1900-01-01 00:00:00+00:09:21"), -2_208_989_361_000_000);
        // Leap day, pre-epoch, BC and five-digit years.
        assert_eq!(ts("2024-02-29 00:00:00+00"), 1_709_164_800_000_000);
        assert_eq!(ts("1969-12-31 23:59:59.999999+00"), -1);
        assert_eq!(ts("0001-01-01 00:00:00+00"), -62_135_596_800_000_000);
        assert_eq!(ts("0001-12-31 00:00:00+00 BC"), -62_135_683_200_000_000);
        assert_eq!(ts("10000-01-01 00:00:00+00"), 253_402_300_800_000_000);
    }

    #[test]
    fn bad_timestamps_are_errors() {
        for bad in [
            "",
            "infinity",
            "-infinity",
            "2026-11-27",
            "26-11-27 00:00:00",
            "2026-13-01 00:00:00",
            "2026-02-29 00:00:00",
            "2026-11-31 00:00:00",
            "2026-11-27 24:00:00",
            "2026-11-27 22:60:00",
            "2026-11-27 22:00:60",
            "2026-11-27 22:53:51.",
            "2026-11-27 22:53:51+",
            "2026-11-27 22:53:51 UTC",
            "2026-11-27 22:53:51+00 AD",
            "2026/11/27 22:53:51",
            "9999999999-01-01 00:00:00",
        ] {
            assert!(parse_pg_timestamp(bad).is_err(), "{bad:?} parsed");
        }
    }

    proptest::proptest! {
        #[test]
        fn timestamp_parser_never_panics(s in "\\PC{0,40}") {
            let _ = parse_pg_timestamp(&s);
        }

        #[test]
        fn timestamp_parser_agrees_with_days_arithmetic(days in -700_000i64..3_000_000, us in 0i64..86_400_000_000) {
            // Render through the inverse (civil from days) and parse back.
            let (y, m, d) = civil_from_days(days);
            let text = format!("{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}+00", y, m, d,
                us / 3_600_000_000, us / 60_000_000 % 60, us / 1_000_000 % 60, us % 1_000_000);
            proptest::prop_assume!(y >= 1);
            proptest::prop_assert_eq!(parse_pg_timestamp(&text), Ok(PgTimestamp((days - PG_EPOCH_DAYS) * DAY_US + us)));
        }
    }

    // Independent inverse for the property test: walk years and months, no shared formula with the parser.
    fn civil_from_days(mut days: i64) -> (i64, i64, i64) {
        let mut year = 1970;
        while days < 0 {
            year -= 1;
            days += if is_leap(year) { 366 } else { 365 };
        }
        loop {
            let len = if is_leap(year) { 366 } else { 365 };
            if days < len {
                break;
            }
            days -= len;
            year += 1;
        }
        let mut month = 1;
        while days >= days_in_month(year, month) {
            days -= days_in_month(year, month);
            month += 1;
        }
        (year, month, days + 1)
    }

    fn messages() -> MessageMapper {
        let mapping = OutboxTableConfig {
            additional_fields: vec![
                AdditionalField { column: "tenant".into(), placement: Placement::Header, alias: String::new() },
                AdditionalField { column: "note".into(), placement: Placement::Envelope, alias: String::new() },
                AdditionalField { column: "shard".into(), placement: Placement::Partition, alias: String::new() },
            ],
            ..OutboxTableConfig::default()
        };
        MessageMapper::new("outbox", &mapping).unwrap()
    }

    fn msg(m: &MessageMapper, content: &str) -> Result<Option<OutboxEvent>, MapError> {
        m.map_message("outbox", true, content.as_bytes(), LSN, COMMIT)
    }

    #[test]
    fn tableless_message_maps_like_a_row() {
        let m = messages();
        let ev = msg(
            &m,
            r#"{"id": "e-1", "aggregatetype": "order", "aggregateid": 42, "type": "OrderCreated",
                "payload": {"z": 1, "a": [1.50, "x"]}, "tenant": "acme", "note": null, "shard": 2}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(ev.id, "e-1");
        assert_eq!(ev.aggregate_id, "42");
        assert_eq!(ev.topic, "outbox.event.order");
        // The payload's JSON text is kept byte for byte (key order, number formatting).
        assert_eq!(ev.payload.as_ref().and_then(Payload::text), Some(r#"{"z": 1, "a": [1.50, "x"]}"#));
        assert_eq!(ev.headers, vec![("tenant".to_owned(), Bytes::from_static(b"acme"))]);
        assert_eq!(ev.envelope_fields, vec![("note".to_owned(), None)]);
        assert_eq!(ev.partition, Some(2));
        assert_eq!(ev.timestamp, COMMIT);
        assert_eq!(ev.source, "message:outbox");
        assert_eq!(ev.commit_lsn, LSN);

        let ev =
            msg(&m, r#"{"id":"e","aggregatetype":"a","aggregateid":"k","type":"t","payload":null,"timestamp":1000}"#)
                .unwrap()
                .unwrap();
        assert_eq!(ev.payload, None);
        assert_eq!(ev.timestamp.unix_micros(), 1_000_000);
        let ev = msg(
            &m,
            r#"{"id":"e","aggregatetype":"a","aggregateid":"k","type":"t","payload":"s",
                            "timestamp":"2000-01-01T00:00:02Z"}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (ev.timestamp, ev.payload.as_ref().and_then(Payload::text)),
            (PgTimestamp(2_000_000), Some("\"s\""))
        );
    }

    #[test]
    fn other_prefixes_are_ignored() {
        let m = messages();
        assert_eq!(m.prefix(), "outbox");
        for prefix in ["outbox-relay.heartbeat", "", "outbox2", "Outbox"] {
            assert_eq!(m.map_message(prefix, true, b"not json", LSN, COMMIT), Ok(None), "{prefix}");
        }
    }

    #[test]
    fn malformed_messages_are_named_errors() {
        let m = messages();
        for bad in ["", "not json", "[1,2]", r#"{"id": "x""#, "\"s\""] {
            let e = msg(&m, bad).unwrap_err();
            assert!(matches!(e.kind, MapErrorKind::MalformedMessage { .. }), "{bad}: {e}");
            assert_eq!(e.origin, "message:outbox");
        }
        let e = m.map_message("outbox", true, b"\xff", LSN, COMMIT).unwrap_err();
        assert_eq!(e.kind, MapErrorKind::NotUtf8);
        let e = msg(&m, r#"{"id":"e9","aggregatetype":"a","type":"t"}"#).unwrap_err();
        assert_eq!(
            (e.kind, e.event_id.as_deref(), e.column.as_deref()),
            (MapErrorKind::Null, Some("e9"), Some("aggregateid"))
        );
        let e = msg(&m, r#"{"id":"e9","aggregatetype":{"x":1},"aggregateid":"k","type":"t"}"#).unwrap_err();
        assert!(matches!(e.kind, MapErrorKind::WrongType { .. }), "{e}");
        let e = msg(&m, r#"{"id":"e9","aggregatetype":"a b","aggregateid":"k","type":"t"}"#).unwrap_err();
        assert!(matches!(e.kind, MapErrorKind::InvalidTopic { .. }), "{e}");
        let e =
            msg(&m, r#"{"id":"e9","aggregatetype":"a","aggregateid":"k","type":"t","timestamp":"soon"}"#).unwrap_err();
        assert!(matches!(e.kind, MapErrorKind::InvalidTimestamp { .. }), "{e}");
        let e = msg(&m, r#"{"id":"e9","aggregatetype":"a","aggregateid":"k","type":"t","shard":"x"}"#).unwrap_err();
        assert!(matches!(e.kind, MapErrorKind::InvalidPartition { .. }), "{e}");
        let e = m.map_message("outbox", false, br#"{"id":"e"}"#, LSN, COMMIT).unwrap_err();
        assert_eq!(e.kind, MapErrorKind::NonTransactionalMessage);
    }
}
