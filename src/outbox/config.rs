//! The `[outbox]` section: the outbox tables, their column mapping and routing (Debezium Outbox Event Router
//! names and defaults), the tableless outbox of logical messages, and what to do with rows of unmapped tables.
//!
//! Invariant: after validation every table is schema-qualified, every mapping column is named, aliases are unique
//! per placement, at most one field chooses the partition, and every route template renders legal topic names.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::pg::slot::TableName;

pub use crate::kafka::topic::ROUTED_BY_VALUE;

fn default_tables() -> Vec<OutboxTableConfig> {
    vec![OutboxTableConfig::default()]
}
fn default_field_event_id() -> String {
    "id".to_owned()
}
fn default_field_event_key() -> String {
    "aggregateid".to_owned()
}
fn default_field_event_type() -> String {
    "type".to_owned()
}
fn default_field_event_payload() -> String {
    "payload".to_owned()
}
fn default_route_by_field() -> String {
    "aggregatetype".to_owned()
}
fn default_route_topic_replacement() -> String {
    format!("outbox.event.{ROUTED_BY_VALUE}")
}
fn default_messages_prefix() -> String {
    "outbox".to_owned()
}

/// Outbox mapping settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// Outbox tables. Default when the key is absent: one table `public.outbox` with the default columns. An
    /// explicit empty list (`tables = []`) relays logical messages only and requires `[outbox.messages]`.
    #[serde(default = "default_tables")]
    pub tables: Vec<OutboxTableConfig>,
    /// The tableless outbox: events written with `pg_logical_emit_message(true, prefix, json)`.
    #[serde(default)]
    pub messages: OutboxMessagesConfig,
    /// A row of a published table that no `[[outbox.tables]]` block maps (an operator's publication covering more
    /// tables, or one publishing a partitioned table's partitions under their own names): `error` stops the relay
    /// with the checkpoint untouched, naming the table; `ignore` skips such rows (counted in
    /// `outbox_relay_unmapped_rows_total`).
    #[serde(default)]
    pub unmapped_relations: UnmappedRelations,
    /// Kafka header `type` (the event type) besides `id`. Debezium 2 and later write only `id` unless `type` is
    /// placed as a header; `false` keeps that layout for consumers that expect it.
    #[serde(default = "crate::config::fields::default_true")]
    pub type_header: bool,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            tables: default_tables(),
            messages: OutboxMessagesConfig::default(),
            unmapped_relations: UnmappedRelations::default(),
            type_header: true,
        }
    }
}

/// What to do with rows of a published table that no mapping claims.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UnmappedRelations {
    /// Stop with a named error: a row the relay was sent but does not relay is never dropped silently.
    #[default]
    Error,
    /// Skip them, counting each.
    Ignore,
}

/// One outbox table and how its rows map to Kafka records (Debezium Outbox Event Router compatible).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OutboxTableConfig {
    /// The table, `schema.table` or `table` (schema `public`), read like SQL: unquoted parts fold to lower case,
    /// double-quoted ones keep case and dots.
    #[serde(default)]
    pub table: TableName,
    /// Column holding the event id (Debezium `table.field.event.id`); becomes header `id`.
    #[serde(default = "default_field_event_id")]
    pub field_event_id: String,
    /// Column holding the record key (`table.field.event.key`).
    #[serde(default = "default_field_event_key")]
    pub field_event_key: String,
    /// Column holding the event type (`table.field.event.type`); becomes header `type`.
    #[serde(default = "default_field_event_type")]
    pub field_event_type: String,
    /// Column holding the event body, jsonb or bytea (`table.field.event.payload`).
    #[serde(default = "default_field_event_payload")]
    pub field_event_payload: String,
    /// Optional column holding the event timestamp (`table.field.event.timestamp`); empty: the commit time.
    #[serde(default)]
    pub field_event_timestamp: String,
    /// Column whose value routes the event to a topic (`route.by.field`).
    #[serde(default = "default_route_by_field")]
    pub route_by_field: String,
    /// Topic name template (`route.topic.replacement`); `${routedByValue}` is replaced by the routing value.
    #[serde(default = "default_route_topic_replacement")]
    pub route_topic_replacement: String,
    /// Regular expression applied to the routing value (`route.topic.regex`), as Debezium does: the topic is the
    /// value with its first match replaced by `route_topic_replacement`, where `${routedByValue}` is the group of
    /// that name (a value that does not match is the topic as it is). Empty: the whole value is `routedByValue`.
    #[serde(default)]
    pub route_topic_regex: String,
    /// Further columns copied into headers, envelope fields or used as the partition
    /// (`table.fields.additional.placement`).
    #[serde(default)]
    pub additional_fields: Vec<AdditionalField>,
}

impl Default for OutboxTableConfig {
    fn default() -> Self {
        OutboxTableConfig {
            table: TableName::default(),
            field_event_id: default_field_event_id(),
            field_event_key: default_field_event_key(),
            field_event_type: default_field_event_type(),
            field_event_payload: default_field_event_payload(),
            field_event_timestamp: String::new(),
            route_by_field: default_route_by_field(),
            route_topic_replacement: default_route_topic_replacement(),
            route_topic_regex: String::new(),
            additional_fields: Vec::new(),
        }
    }
}

impl OutboxTableConfig {
    /// The timestamp column, or `None` when events carry their commit time.
    pub fn timestamp_column(&self) -> Option<&str> {
        (!self.field_event_timestamp.is_empty()).then_some(self.field_event_timestamp.as_str())
    }

    /// The topic an event whose routing column holds `routed_by_value` goes to.
    pub fn topic_for(&self, routed_by_value: &str) -> String {
        self.route_topic_replacement.replace(ROUTED_BY_VALUE, routed_by_value)
    }
}

/// An additional outbox column and where it goes.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AdditionalField {
    /// The outbox table column to copy.
    pub column: String,
    /// Where its value goes: `header`, `envelope` (a field of the Avro envelope) or `partition` (the Kafka
    /// partition number; at most one per table).
    pub placement: Placement,
    /// Header or envelope field name. Default: the column name.
    #[serde(default)]
    pub alias: String,
}

/// Where an [`AdditionalField`] goes.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// A Kafka record header.
    Header,
    /// A field of the Avro envelope.
    Envelope,
    /// The Kafka partition number.
    Partition,
}

/// The tableless outbox: transactional logical decoding messages.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OutboxMessagesConfig {
    /// Relay messages written with `pg_logical_emit_message(true, prefix, json)`.
    #[serde(default)]
    pub enabled: bool,
    /// The message prefix that marks outbox events.
    #[serde(default = "default_messages_prefix")]
    pub prefix: String,
}

impl Default for OutboxMessagesConfig {
    fn default() -> Self {
        OutboxMessagesConfig { enabled: false, prefix: default_messages_prefix() }
    }
}

impl OutboxConfig {
    pub(crate) fn validate(&self, report: &mut impl FnMut(&str, String)) {
        if self.tables.is_empty() && !self.messages.enabled {
            report(
                "outbox.tables",
                "no outbox table and [outbox.messages] disabled: there is nothing to relay; configure a table or set \
                 outbox.messages.enabled = true"
                    .to_owned(),
            );
        }
        let mut seen = BTreeSet::new();
        for (i, table) in self.tables.iter().enumerate() {
            let key = |k: &str| format!("outbox.tables[{i}].{k}");
            if !seen.insert(&table.table) {
                report(&key("table"), format!("`{}` is configured twice; list each table once", table.table));
            }
            for (name, value) in [
                ("field_event_id", &table.field_event_id),
                ("field_event_key", &table.field_event_key),
                ("field_event_type", &table.field_event_type),
                ("field_event_payload", &table.field_event_payload),
                ("route_by_field", &table.route_by_field),
            ] {
                if value.is_empty() {
                    report(&key(name), "must name a column".to_owned());
                }
            }
            if let Err(reason) = crate::kafka::topic::validate_template(&table.route_topic_replacement) {
                report(&key("route_topic_replacement"), reason);
            }
            if !table.route_topic_regex.is_empty() {
                match regex::Regex::new(&table.route_topic_regex) {
                    Err(e) => report(&key("route_topic_regex"), format!("is not a regular expression: {e}")),
                    Ok(re) if !re.capture_names().any(|n| n == Some("routedByValue")) => report(
                        &key("route_topic_regex"),
                        "must capture the part to route by as (?<routedByValue>...)".to_owned(),
                    ),
                    Ok(_) => {}
                }
            }
            let mut partitions = 0;
            let mut aliases = BTreeSet::new();
            for (j, field) in table.additional_fields.iter().enumerate() {
                let fkey = |k: &str| format!("outbox.tables[{i}].additional_fields[{j}].{k}");
                if field.column.is_empty() {
                    report(&fkey("column"), "must name a column".to_owned());
                }
                match field.placement {
                    Placement::Partition => partitions += 1,
                    placement => {
                        if !aliases.insert((placement, field.alias.as_str())) {
                            report(
                                &fkey("alias"),
                                format!(
                                    "`{}` is used twice for placement {placement:?}; give one an alias",
                                    field.alias
                                ),
                            );
                        }
                    }
                }
            }
            if partitions > 1 {
                report(
                    &key("additional_fields"),
                    format!("{partitions} fields have placement = \"partition\"; at most one may choose the partition"),
                );
            }
        }
        if self.messages.enabled && self.messages.prefix.is_empty() {
            report("outbox.messages.prefix", "must not be empty when outbox.messages.enabled = true".to_owned());
        }
    }
}
