//! Dead-letter records (`errors.mode = "dead_letter"`): what an event that cannot be mapped, encoded or produced
//! becomes instead.
//!
//! Invariant: a dead letter takes the event's place in the same Kafka transaction as the rest of its PostgreSQL
//! transaction and the checkpoint, so it appears exactly once in a `read_committed` view, like the event would
//! have. It carries the original bytes where there are any and headers saying where it came from and why:
//!
//! | header | value |
//! | --- | --- |
//! | [`SOURCE`] | `schema.table`, or `message:<prefix>` for the tableless outbox |
//! | [`EVENT_ID`] | the event id, when it could be read |
//! | [`COMMIT_LSN`] | commit LSN of the PostgreSQL transaction (`16/B374D848`) |
//! | [`ORIGINAL_TOPIC`] | the topic the event was meant for, when it could be routed |
//! | [`ERROR_KIND`] | `mapping`, `encoding`, or `kafka:<refusal>` (`kafka:record_too_large`, ...) |
//! | [`ERROR_MESSAGE`] | the error, as the relay would have stopped with it |
//! | [`VALUE_FORMAT`] | what the value holds: `row-json`, `message`, `record`, or `none` |
//!
//! Value formats: `row-json` is the outbox row as a JSON object of its columns' text values (NULL as `null`), for
//! a row that could not be mapped or encoded; `message` is a logical message's content; `record` is the record
//! value as it was produced (Confluent wire format) for a record Kafka refused, with its key and headers; `none`
//! when the refused record itself was too large.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::pg::lsn::Lsn;
use crate::pg::pgoutput::{Relation, TupleColumn, TupleData};

/// What happens to an event that cannot be mapped, encoded or produced.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ErrorsConfig {
    /// `stop`: the relay stops with a named error and the checkpoint untouched (restarting it fails the same way
    /// until the cause is fixed). `dead_letter`: the event goes to `dead_letter_topic` instead, inside the same
    /// Kafka transaction as the rest of its PostgreSQL transaction and the checkpoint, so it too appears exactly
    /// once.
    #[serde(default)]
    pub mode: ErrorMode,
    /// Dead-letter topic. Default: `<connector_name>.dead-letter`.
    #[serde(default)]
    pub dead_letter_topic: String,
}

impl ErrorsConfig {
    pub(crate) fn validate(&self, kafka: &crate::kafka::config::KafkaConfig, report: &mut impl FnMut(&str, String)) {
        if let Err(reason) = crate::kafka::topic::validate_name(&self.dead_letter_topic) {
            report("errors.dead_letter_topic", reason);
        }
        if self.dead_letter_topic == kafka.checkpoint_topic {
            report("errors.dead_letter_topic", "must differ from kafka.checkpoint_topic".to_owned());
        }
    }
}

/// See [`ErrorsConfig::mode`].
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorMode {
    /// Stop the relay.
    #[default]
    Stop,
    /// Send the event to the dead-letter topic.
    DeadLetter,
}

/// Header: where the event came from.
pub const SOURCE: &str = "outbox.dlq.source";
/// Header: the event id.
pub const EVENT_ID: &str = "outbox.dlq.event.id";
/// Header: commit LSN of the PostgreSQL transaction.
pub const COMMIT_LSN: &str = "outbox.dlq.commit.lsn";
/// Header: the topic the event was meant for.
pub const ORIGINAL_TOPIC: &str = "outbox.dlq.original.topic";
/// Header: the kind of failure.
pub const ERROR_KIND: &str = "outbox.dlq.error.kind";
/// Header: the error message.
pub const ERROR_MESSAGE: &str = "outbox.dlq.error.message";
/// Header: what the value holds.
pub const VALUE_FORMAT: &str = "outbox.dlq.value.format";

/// Why and where an event failed.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    /// `schema.table` or `message:<prefix>`.
    pub source: &'a str,
    /// Event id, empty when unknown.
    pub event_id: &'a str,
    /// Commit LSN of its transaction.
    pub commit_lsn: Lsn,
    /// Intended topic, empty when unknown.
    pub original_topic: &'a str,
    /// `mapping`, `encoding`, `kafka:<refusal>`.
    pub kind: &'a str,
    /// The error.
    pub message: String,
    /// `row-json`, `message`, `record`, `none`.
    pub value_format: &'static str,
}

impl DeadLetter<'_> {
    /// The dead-letter headers, in the order of the module table (unknown values omitted).
    pub fn headers(&self) -> Vec<(String, Bytes)> {
        let mut h = Vec::with_capacity(7);
        let mut push = |k: &str, v: String| {
            if !v.is_empty() {
                h.push((k.to_owned(), Bytes::from(v)));
            }
        };
        push(SOURCE, self.source.to_owned());
        push(EVENT_ID, self.event_id.to_owned());
        push(COMMIT_LSN, self.commit_lsn.to_string());
        push(ORIGINAL_TOPIC, self.original_topic.to_owned());
        push(ERROR_KIND, self.kind.to_owned());
        push(ERROR_MESSAGE, self.message.clone());
        push(VALUE_FORMAT, self.value_format.to_owned());
        h
    }
}

/// An outbox row as a JSON object of its columns' text values, NULL as `null`, an unchanged TOAST value or a
/// binary value as `null` too (neither occurs for an INSERT in text mode). Columns beyond the relation's are
/// ignored; bytes that are not UTF-8 are replaced.
pub fn row_json(relation: &Relation, tuple: &TupleData) -> Vec<u8> {
    let mut map = serde_json::Map::with_capacity(relation.columns.len());
    for (column, cell) in relation.columns.iter().zip(tuple.columns.iter()) {
        let value = match cell {
            TupleColumn::Text(b) => serde_json::Value::String(String::from_utf8_lossy(b).into_owned()),
            TupleColumn::Null | TupleColumn::UnchangedToast | TupleColumn::Binary(_) => serde_json::Value::Null,
        };
        map.insert(column.name.clone(), value);
    }
    serde_json::to_vec(&serde_json::Value::Object(map)).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::pg::pgoutput::{Oid, RelationColumn};

    #[test]
    fn headers_and_row_json() {
        let dl = DeadLetter {
            source: "public.outbox",
            event_id: "",
            commit_lsn: Lsn(0x16_B374_D848),
            original_topic: "",
            kind: "mapping",
            message: "column type is NULL".into(),
            value_format: "row-json",
        };
        let names: Vec<String> = dl.headers().into_iter().map(|(k, _)| k).collect();
        assert_eq!(names, [SOURCE, COMMIT_LSN, ERROR_KIND, ERROR_MESSAGE, VALUE_FORMAT]);
        let col = |name: &str| RelationColumn { flags: 0, name: name.into(), type_oid: Oid(25), type_modifier: -1 };
        let relation = Relation {
            xid: None,
            oid: Oid(1),
            namespace: "public".into(),
            name: "outbox".into(),
            replica_identity: b'd',
            columns: vec![col("id"), col("type")],
        };
        let tuple = TupleData { columns: vec![TupleColumn::Text(Bytes::from_static(b"e-1")), TupleColumn::Null] };
        assert_eq!(row_json(&relation, &tuple), br#"{"id":"e-1","type":null}"#);
    }
}
