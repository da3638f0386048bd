//! Migration from Debezium: a Kafka Connect configuration of Debezium's PostgreSQL connector with the Outbox Event
//! Router becomes the relay's TOML (`outbox-relay import-debezium`), and the offset Debezium committed becomes the
//! relay's start position on Debezium's own slot (`[debezium]`, read on a first start only).
//!
//! Invariant of the import: every key of the Debezium configuration is either mapped to a setting with the same
//! effect, known to need nothing (Connect plumbing such as `tasks.max`, or behaviour the relay has anyway), or
//! reported in [`Import::unmapped`] with why: nothing is dropped silently. Secrets are never copied into the output
//! (the database and registry passwords are left for the environment, named in the notes). The produced TOML loads
//! as a [`crate::config::Config`] once `kafka.bootstrap_servers` and `debezium.offsets_topic` are known.
//!
//! Invariant of the hand-over: with Debezium stopped, the relay delivers exactly the outbox rows Debezium did not.
//! Debezium's committed offset (Kafka Connect's offsets topic, read `read_committed`, so exactly what its
//! exactly-once transactions made visible) names `lsn`, the WAL position of the last change it delivered, `txId`, the
//! transaction that change belongs to, and `lsn_commit`, the end of the commit record of the transaction before it.
//! Debezium's slot never confirms past that offset, so replaying from the slot re-sends only transactions Debezium
//! delivered in part or whole; [`DebeziumOffset::skip`] drops exactly those parts: every transaction committed before
//! `lsn_commit`, and in transaction `txId` the changes at or before `lsn`. (Debezium commits offsets per batch, so
//! `lsn` may lie inside a large transaction: a whole-transaction rule would duplicate or lose its rest.) LSNs are
//! compared only within `txId`: another transaction committed later may hold lower change LSNs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::avro::config::{KeyFormat, ValueMode};
use crate::kafka::KafkaSettings;
use crate::pg::lsn::Lsn;

/// The `[debezium]` section: where Debezium's offset is, for a hand-over on the relay's first start.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DebeziumConfig {
    /// Kafka Connect's offsets topic (the worker's `offset.storage.topic`); empty: no hand-over.
    #[serde(default)]
    pub offsets_topic: String,
    /// The Debezium connector's name.
    #[serde(default)]
    pub connector: String,
    /// Its `topic.prefix` (the `server` of its offset key).
    #[serde(default)]
    pub topic_prefix: String,
}

impl DebeziumConfig {
    /// Whether a hand-over is configured.
    pub fn enabled(&self) -> bool {
        !self.offsets_topic.is_empty()
    }

    pub(crate) fn validate(&self, report: &mut impl FnMut(&str, String)) {
        if self.enabled() {
            for (key, value) in [("debezium.connector", &self.connector), ("debezium.topic_prefix", &self.topic_prefix)]
            {
                if value.is_empty() {
                    report(key, "is required with debezium.offsets_topic (the key of Debezium's offset)".to_owned());
                }
            }
        }
    }
}

/// What Debezium committed last (its PostgreSQL source offset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebeziumOffset {
    /// WAL position of the last change delivered (`lsn`).
    pub lsn: Lsn,
    /// End of the commit record of the transaction before it (`lsn_commit`), once Debezium saw one.
    pub lsn_commit: Option<Lsn>,
    /// The transaction of the last change (`txId`).
    pub tx_id: u32,
}

/// What the hand-over does with a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Deliver it.
    Nothing,
    /// Debezium delivered it whole.
    Whole,
    /// Debezium delivered its changes at or before this LSN.
    UpTo(Lsn),
}

impl DebeziumOffset {
    /// What to skip of the transaction `xid` whose commit record starts at `final_lsn`.
    pub fn skip(&self, xid: u32, final_lsn: Lsn) -> Skip {
        if self.lsn_commit.is_some_and(|c| final_lsn < c) {
            Skip::Whole
        } else if xid == self.tx_id {
            Skip::UpTo(self.lsn)
        } else {
            Skip::Nothing
        }
    }

    /// Parses an offset value (`{"lsn": ..., "lsn_commit": ..., "txId": ...}`).
    pub fn parse(value: &Value) -> Result<DebeziumOffset, String> {
        let number = |k: &str| value.get(k).and_then(Value::as_u64);
        let lsn = number("lsn").or_else(|| number("lsn_proc")).ok_or("no lsn in the offset")?;
        let tx_id = number("txId").ok_or("no txId in the offset")?;
        Ok(DebeziumOffset {
            lsn: Lsn(lsn),
            lsn_commit: number("lsn_commit").map(Lsn),
            tx_id: u32::try_from(tx_id).map_err(|_| format!("txId {tx_id} is not a 32-bit transaction id"))?,
        })
    }
}

/// Why Debezium's offset could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// The offsets topic does not exist or cannot be read.
    #[error("debezium.offsets_topic {topic}: {reason}")]
    Topic {
        /// The topic.
        topic: String,
        /// Why.
        reason: String,
        /// Whether retrying may help (the broker unreachable, a timeout).
        transient: bool,
    },
    /// No offset for the connector: nothing to hand over from.
    #[error(
        "Kafka Connect's offsets topic {topic} holds no offset of connector {connector:?} (topic.prefix {prefix:?}); \
         fix: check debezium.connector and debezium.topic_prefix, or remove [debezium] to start without a hand-over"
    )]
    NoOffset {
        /// The topic.
        topic: String,
        /// The connector.
        connector: String,
        /// Its topic prefix.
        prefix: String,
    },
    /// An offset that is not Debezium's PostgreSQL offset.
    #[error("the offset of connector {connector:?} in {topic} is not a Debezium PostgreSQL offset: {reason}")]
    BadOffset {
        /// The topic.
        topic: String,
        /// The connector.
        connector: String,
        /// Why.
        reason: String,
    },
}

impl HandoverError {
    /// `true` when retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, HandoverError::Topic { transient: true, .. })
    }
}

/// Reads the newest offset of `cfg.connector` from Kafka Connect's offsets topic (`read_committed`, every partition
/// to its end), waiting at most `timeout`.
pub async fn read_offset(
    settings: &KafkaSettings,
    cfg: &DebeziumConfig,
    timeout: Duration,
) -> Result<DebeziumOffset, HandoverError> {
    let settings = settings.clone();
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || read_offset_blocking(&settings, &cfg, timeout))
        .await
        .map_err(|e| HandoverError::Topic { topic: String::new(), reason: e.to_string(), transient: true })?
}

fn read_offset_blocking(
    settings: &KafkaSettings,
    cfg: &DebeziumConfig,
    timeout: Duration,
) -> Result<DebeziumOffset, HandoverError> {
    let topic = cfg.offsets_topic.as_str();
    let fail = |reason: String, transient: bool| HandoverError::Topic { topic: topic.to_owned(), reason, transient };
    let mut c = settings.client_config();
    c.set("group.id", "outbox-relay-debezium-handover")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("allow.auto.create.topics", "false");
    let consumer: BaseConsumer =
        c.create().map_err(|e| fail(format!("consumer: {}", crate::error_chain(&e)), false))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| fail(format!("metadata: {}", crate::error_chain(&e)), true))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(fail("does not exist (it is the Connect worker's offset.storage.topic)".to_owned(), false));
    }
    let deadline = Instant::now() + timeout;
    let mut ends = BTreeMap::new();
    let mut list = TopicPartitionList::new();
    for p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, *p, timeout)
            .map_err(|e| fail(format!("partition {p}: {}", crate::error_chain(&e)), true))?;
        if high > low {
            ends.insert(*p, high);
            list.add_partition_offset(topic, *p, Offset::Beginning).map_err(|e| fail(crate::error_chain(&e), false))?;
        }
    }
    let wanted = serde_json::json!([cfg.connector, {"server": cfg.topic_prefix}]);
    let mut newest: Option<Option<Value>> = None;
    if !ends.is_empty() {
        consumer.assign(&list).map_err(|e| fail(crate::error_chain(&e), false))?;
        // The high watermark counts transaction markers and aborted records: a partition is done when the position
        // reached it, whatever was delivered.
        while !ends.is_empty() {
            if Instant::now() > deadline {
                return Err(fail(format!("not read to its end within {} ms", timeout.as_millis()), true));
            }
            if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                let m = m.map_err(|e| fail(crate::error_chain(&e), true))?;
                let key: Option<Value> = m.key().and_then(|k| serde_json::from_slice(k).ok());
                if key.as_ref() == Some(&wanted) {
                    newest = Some(m.payload().and_then(|v| serde_json::from_slice(v).ok()));
                }
            }
            let positions = consumer.position().map_err(|e| fail(crate::error_chain(&e), true))?;
            ends.retain(|p, end| {
                let at = positions.find_partition(topic, *p).and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
                at.is_none_or(|o| o < *end)
            });
        }
    }
    let no_offset = || HandoverError::NoOffset {
        topic: topic.to_owned(),
        connector: cfg.connector.clone(),
        prefix: cfg.topic_prefix.clone(),
    };
    // A tombstone (null value) is an offset reset: nothing to resume from.
    let value = newest.flatten().ok_or_else(no_offset)?;
    DebeziumOffset::parse(&value).map_err(|reason| HandoverError::BadOffset {
        topic: topic.to_owned(),
        connector: cfg.connector.clone(),
        reason,
    })
}

/// Debezium's Outbox Event Router class.
pub const EVENT_ROUTER: &str = "io.debezium.transforms.outbox.EventRouter";
/// Debezium's PostgreSQL connector class.
pub const POSTGRES_CONNECTOR: &str = "io.debezium.connector.postgresql.PostgresConnector";

/// The result of an import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    /// The relay's configuration, as TOML.
    pub toml: String,
    /// Keys that could not be mapped, with why and what to do.
    pub unmapped: Vec<(String, String)>,
    /// Things to do by hand (secrets, Kafka address), in order.
    pub notes: Vec<String>,
    /// The connector's name (the first element of its Kafka Connect offset key).
    pub connector: String,
    /// `topic.prefix` (the `server` of its offset key).
    pub topic_prefix: String,
}

/// Why a configuration cannot be imported at all.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Not JSON, or not an object of strings.
    #[error("not a Kafka Connect connector configuration: {0}")]
    NotAConfig(String),
    /// Another connector class.
    #[error("connector.class is {0:?}; outbox-relay replaces {POSTGRES_CONNECTOR} only")]
    NotPostgres(String),
    /// No Outbox Event Router among the transforms.
    #[error(
        "no transform of type {EVENT_ROUTER}: this connector does not relay an outbox table (outbox-relay maps the \
         Outbox Event Router's settings)"
    )]
    NoEventRouter,
}

/// Keys that need no setting: Connect plumbing, or behaviour the relay has by design.
const NOTHING_TO_MAP: &[(&str, &str)] = &[
    ("connector.class", "the relay is the connector"),
    ("tasks.max", "one PostgreSQL slot is read by one task anyway"),
    ("name", "becomes connector_name"),
    ("exactly.once.support", "the relay is always exactly once (Kafka transactions carrying its checkpoint)"),
    ("transaction.boundary", "the relay's Kafka transactions never split a PostgreSQL transaction"),
    ("snapshot.mode", "an outbox table needs no snapshot: its rows are deleted right after insert"),
    ("plugin.name", "pgoutput"),
    ("topic.prefix", "names the offset key; the Outbox Event Router's route decides the topics"),
    ("database.server.name", "legacy topic.prefix"),
    ("key.converter.schemas.enable", "not used with Avro or strings"),
    ("value.converter.schemas.enable", "not used with Avro or strings"),
    ("tombstones.on.delete", "the relay reads inserts only (the publication publishes inserts)"),
    ("publication.autocreate.mode", "mapped to create_publication and unmapped_relations"),
    ("transforms", "the Outbox Event Router is mapped"),
    ("value.converter.schema.registry.url", "becomes schema_registry.url"),
    ("key.converter.schema.registry.url", "keys use the same registry"),
    ("value.converter.basic.auth.credentials.source", "basic auth is mapped"),
    ("value.converter.basic.auth.user.info", "becomes schema_registry.username (the password goes to the environment)"),
    ("key.converter.basic.auth.credentials.source", "keys use the same registry"),
    ("key.converter.basic.auth.user.info", "keys use the same registry"),
];

/// Converts a connector configuration (`{"name": ..., "config": {...}}` as posted to Kafka Connect, or the flat
/// `config` object with `name` in it).
pub fn import(json: &str) -> Result<Import, ImportError> {
    let root: Value = serde_json::from_str(json).map_err(|e| ImportError::NotAConfig(e.to_string()))?;
    let (name, config) = match (root.get("name"), root.get("config")) {
        (Some(Value::String(n)), Some(Value::Object(c))) => (n.clone(), c.clone()),
        _ => match &root {
            Value::Object(c) => (c.get("name").and_then(Value::as_str).unwrap_or("").to_owned(), c.clone()),
            _ => return Err(ImportError::NotAConfig("expected a JSON object".into())),
        },
    };
    let mut cfg: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in config {
        let text = match v {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => return Err(ImportError::NotAConfig(format!("{k} is {other}, not a string"))),
        };
        cfg.insert(k, text);
    }
    let class = cfg.get("connector.class").cloned().unwrap_or_default();
    if class != POSTGRES_CONNECTOR && !class.is_empty() {
        return Err(ImportError::NotPostgres(class));
    }
    let transforms: Vec<String> =
        cfg.get("transforms").map(|t| t.split(',').map(|s| s.trim().to_owned()).collect()).unwrap_or_default();
    let router = transforms
        .iter()
        .find(|t| cfg.get(&format!("transforms.{t}.type")).map(String::as_str) == Some(EVENT_ROUTER))
        .cloned()
        .ok_or(ImportError::NoEventRouter)?;
    let mut b = Builder { cfg, used: Vec::new(), unmapped: Vec::new(), notes: Vec::new() };
    let toml = b.build(&name, &router, &transforms);
    let topic_prefix =
        b.cfg.get("topic.prefix").or_else(|| b.cfg.get("database.server.name")).cloned().unwrap_or_default();
    // Whatever no step claimed is reported.
    let leftover: Vec<String> = b
        .cfg
        .keys()
        .filter(|k| !b.used.contains(k) && !NOTHING_TO_MAP.iter().any(|(n, _)| n == k))
        .filter(|k| !b.unmapped.iter().any(|(u, _)| u == *k))
        .cloned()
        .collect();
    for k in leftover {
        b.unmapped.push((k, "no outbox-relay setting has this effect".to_owned()));
    }
    Ok(Import { toml, unmapped: b.unmapped, notes: b.notes, connector: name, topic_prefix })
}

struct Builder {
    cfg: BTreeMap<String, String>,
    used: Vec<String>,
    unmapped: Vec<(String, String)>,
    notes: Vec<String>,
}

impl Builder {
    fn get(&mut self, key: &str) -> Option<String> {
        let v = self.cfg.get(key).cloned();
        if v.is_some() {
            self.used.push(key.to_owned());
        }
        v
    }

    fn unmapped(&mut self, key: &str, why: &str) {
        self.used.push(key.to_owned());
        self.unmapped.push((key.to_owned(), why.to_owned()));
    }

    fn build(&mut self, name: &str, router: &str, transforms: &[String]) -> String {
        let mut t = toml::Table::new();
        if !name.is_empty() {
            t.insert("connector_name".into(), name.into());
        }
        t.insert("postgres".into(), toml::Value::Table(self.postgres()));
        let (mut outbox, type_header) = self.outbox(router);
        if !type_header {
            outbox.insert("type_header".into(), false.into());
        }
        t.insert("outbox".into(), toml::Value::Table(outbox));
        let mut kafka = toml::Table::new();
        kafka.insert("bootstrap_servers".into(), "REPLACE-ME:9092".into());
        // Debezium's Java producer placed keys with murmur2; the relay does too by default (no setting needed).
        t.insert("kafka".into(), toml::Value::Table(kafka));
        self.notes.push(
            "kafka.bootstrap_servers: set the brokers (the Connect worker's bootstrap.servers; connector configs do \
             not carry them), in the file or as OUTBOX_RELAY_KAFKA__BOOTSTRAP_SERVERS"
                .into(),
        );
        t.insert("schema_registry".into(), toml::Value::Table(self.registry()));
        let mut debezium = toml::Table::new();
        debezium.insert("offsets_topic".into(), "REPLACE-ME".into());
        debezium.insert("connector".into(), name.into());
        let prefix = self.cfg.get("topic.prefix").or_else(|| self.cfg.get("database.server.name")).cloned();
        debezium.insert("topic_prefix".into(), prefix.unwrap_or_default().into());
        t.insert("debezium".into(), toml::Value::Table(debezium));
        self.notes.push(
            "debezium.offsets_topic: the Connect worker's offset.storage.topic; on its first start the relay \
             continues from Debezium's offset there, on Debezium's slot (stop the connector first: \
             PUT /connectors/NAME/stop)"
                .into(),
        );
        for other in transforms.iter().filter(|x| *x != router) {
            let keys: Vec<String> =
                self.cfg.keys().filter(|k| k.starts_with(&format!("transforms.{other}."))).cloned().collect();
            for k in keys {
                self.unmapped(&k, "only the Outbox Event Router is mapped; apply this transform in a consumer");
            }
        }
        let mut text = String::from(
            "# outbox-relay configuration imported from a Debezium connector (outbox-relay import-debezium).\n",
        );
        text.push_str(&toml::to_string(&t).unwrap_or_default());
        text
    }

    fn postgres(&mut self) -> toml::Table {
        let mut p = toml::Table::new();
        let host = self.get("database.hostname").unwrap_or_else(|| "localhost".into());
        let port = self.get("database.port").unwrap_or_else(|| "5432".into());
        let user = self.get("database.user").unwrap_or_default();
        let db = self.get("database.dbname").unwrap_or_default();
        let mut url = match url::Url::parse(&format!("postgres://{host}:{port}/")) {
            Ok(u) => u,
            Err(e) => {
                self.unmapped("database.hostname", &format!("{host}:{port} is not a host and port: {e}"));
                return p;
            }
        };
        // Both setters fail only for URLs that cannot carry them; a postgres:// URL with a host can.
        let _ = url.set_username(&user);
        url.set_path(&db);
        {
            let mut q = url.query_pairs_mut();
            let mode = self.get("database.sslmode").unwrap_or_else(|| "prefer".into());
            q.append_pair("sslmode", &mode);
            for (key, param) in [
                ("database.sslrootcert", "sslrootcert"),
                ("database.sslcert", "sslcert"),
                ("database.sslkey", "sslkey"),
            ] {
                if let Some(v) = self.get(key) {
                    q.append_pair(param, &v);
                }
            }
        }
        if self.get("database.password").is_some() {
            self.notes.push(
                "the database password is not copied: give the full URL with it as OUTBOX_RELAY_POSTGRES__URL (or \
                 OUTBOX_RELAY_POSTGRES__URL_FILE naming a file that holds it)"
                    .into(),
            );
        }
        p.insert("url".into(), url.as_str().into());
        match self.get("plugin.name").as_deref() {
            None | Some("pgoutput") => {}
            Some(other) => self.unmapped(
                "plugin.name",
                &format!(
                    "{other}: the relay reads pgoutput only, so Debezium's slot cannot be reused; let the relay \
                     create its own slot and start it with --start-lsn at Debezium's offset"
                ),
            ),
        }
        p.insert("slot".into(), self.get("slot.name").unwrap_or_else(|| "debezium".into()).into());
        p.insert("publication".into(), self.get("publication.name").unwrap_or_else(|| "dbz_publication".into()).into());
        if self.cfg.get("publication.autocreate.mode").map(String::as_str) == Some("disabled") {
            p.insert("create_publication".into(), false.into());
        }
        if let Some(ms) = self.get("heartbeat.interval.ms").and_then(|v| v.parse::<i64>().ok()) {
            p.insert("heartbeat_interval_ms".into(), ms.into());
        }
        if self.cfg.contains_key("heartbeat.action.query") {
            self.unmapped(
                "heartbeat.action.query",
                "the relay's heartbeat is a transactional pg_logical_emit_message, which needs no table",
            );
        }
        if self.cfg.get("slot.drop.on.stop").map(String::as_str) == Some("true") {
            self.unmapped("slot.drop.on.stop", "the relay never drops its slot (that would lose the WAL it needs)");
        }
        p
    }

    /// The `[outbox]` table and whether the `type` header is wanted.
    fn outbox(&mut self, router: &str) -> (toml::Table, bool) {
        let r = |k: &str| format!("transforms.{router}.{k}");
        let mut table = toml::Table::new();
        let tables: Vec<String> = self
            .get("table.include.list")
            .map(|l| l.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        let mut mapping = toml::Table::new();
        for (dbz, ours) in [
            ("table.field.event.id", "field_event_id"),
            ("table.field.event.key", "field_event_key"),
            ("table.field.event.type", "field_event_type"),
            ("table.field.event.payload", "field_event_payload"),
            ("table.field.event.timestamp", "field_event_timestamp"),
            ("route.by.field", "route_by_field"),
            ("route.topic.replacement", "route_topic_replacement"),
        ] {
            if let Some(v) = self.get(&r(dbz)) {
                mapping.insert(ours.into(), v.into());
            }
        }
        if !mapping.contains_key("route_topic_replacement") {
            // Debezium's default, stated so that a change of the relay's default cannot move the topics.
            mapping.insert("route_topic_replacement".into(), "outbox.event.${routedByValue}".into());
        }
        // Debezium 2 and later put only `id` in the headers unless `type` is placed as a header explicitly.
        let mut type_header = false;
        let mut additional = Vec::new();
        if let Some(spec) = self.get(&r("table.fields.additional.placement")) {
            for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let parts: Vec<&str> = item.split(':').collect();
                let (column, placement, alias) = match parts.as_slice() {
                    [c, p] => (*c, *p, ""),
                    [c, p, a] => (*c, *p, *a),
                    _ => {
                        self.unmapped.push((
                            r("table.fields.additional.placement"),
                            format!("{item:?}: expected column:placement[:alias]"),
                        ));
                        continue;
                    }
                };
                let event_type_column =
                    mapping.get("field_event_type").and_then(toml::Value::as_str).unwrap_or("type").to_owned();
                if placement == "header" && column == event_type_column && (alias.is_empty() || alias == "type") {
                    type_header = true;
                    continue;
                }
                let mut f = toml::Table::new();
                f.insert("column".into(), column.into());
                f.insert("placement".into(), placement.into());
                if !alias.is_empty() {
                    f.insert("alias".into(), alias.into());
                }
                additional.push(toml::Value::Table(f));
            }
        }
        if !additional.is_empty() {
            mapping.insert("additional_fields".into(), toml::Value::Array(additional));
        }
        match self.get(&r("route.topic.regex")).as_deref() {
            None | Some("(?<routedByValue>.*)") => {}
            Some(other) => {
                mapping.insert("route_topic_regex".into(), other.into());
            }
        }
        if self.get(&r("table.expand.json.payload")).as_deref() == Some("true") {
            self.unmapped(
                &r("table.expand.json.payload"),
                "the relay does not infer a schema from each payload; value_mode = \"registered\" writes the payload \
                 as the Avro record of its event type's schema, reviewed as code (see README, Schemas)",
            );
        }
        // Behaviour the relay has anyway: a NULL payload is a tombstone in value mode payload, and the publication
        // publishes inserts only, so updates and deletes never arrive.
        for key in [
            "type",
            "route.tombstone.on.empty.payload",
            "table.op.invalid.behavior",
            "debezium.op.invalid.behavior",
            "table.json.payload.null.behavior",
        ] {
            let _ = self.get(&r(key));
        }
        if self.cfg.contains_key(&r("table.field.event.schema.version")) {
            self.unmapped(
                &r("table.field.event.schema.version"),
                "Kafka Connect schema versions do not exist here; the registry versions the schema",
            );
        }
        if tables.is_empty() {
            table.insert("tables".into(), toml::Value::Array(vec![toml::Value::Table(mapping)]));
        } else {
            let list = tables
                .iter()
                .map(|name| {
                    let mut m = mapping.clone();
                    m.insert("table".into(), name.clone().into());
                    toml::Value::Table(m)
                })
                .collect();
            table.insert("tables".into(), toml::Value::Array(list));
            if tables.iter().any(|t| t.contains(['*', '[', '(', '|', '+', '?', '\\'])) {
                self.unmapped(
                    "table.include.list",
                    "a regular expression: name each outbox table in [[outbox.tables]] (the relay takes names, not \
                     patterns)",
                );
            }
        }
        if !matches!(self.cfg.get("publication.autocreate.mode").map(String::as_str), Some("filtered" | "disabled")) {
            // Debezium's default publication covers every table: the relay skips what no mapping claims.
            table.insert("unmapped_relations".into(), "ignore".into());
        }
        (table, type_header)
    }

    fn registry(&mut self) -> toml::Table {
        let mut s = toml::Table::new();
        let listed = self.get("value.converter.schema.registry.url").unwrap_or_default();
        let parsed = crate::avro::config::SchemaRegistryConfig { url: listed, ..Default::default() };
        // Several URLs fail over in order, as in Confluent's clients; credentials in them stay out of the output.
        s.insert("url".into(), parsed.urls().join(",").into());
        if let Some((user, _)) = parsed.basic_auth() {
            s.insert("username".into(), user.into());
            self.notes.push(
                "the registry password in value.converter.schema.registry.url is not copied: set \
                 OUTBOX_RELAY_SCHEMA_REGISTRY__PASSWORD (or _FILE)"
                    .into(),
            );
        }
        if let Some(info) = self.get("value.converter.basic.auth.user.info") {
            let user = info.split(':').next().unwrap_or("");
            s.insert("username".into(), user.into());
            self.notes.push(
                "the registry password is not copied: set OUTBOX_RELAY_SCHEMA_REGISTRY__PASSWORD (or _FILE)".into(),
            );
        }
        let _ = self.get("value.converter.bearer.auth.credentials.source");
        if self.get("value.converter.bearer.auth.token").is_some() {
            self.notes.push(
                "the registry bearer token is not copied: set OUTBOX_RELAY_SCHEMA_REGISTRY__TOKEN (or _FILE)".into(),
            );
        }
        let tls: Vec<String> =
            self.cfg.keys().filter(|k| k.starts_with("value.converter.schema.registry.ssl.")).cloned().collect();
        for key in tls {
            self.unmapped(
                &key,
                "Java key and trust stores: export the CA (and a client certificate with its PKCS#8 key) as PEM \
                 files and set schema_registry.tls_ca_file (tls_cert_file, tls_key_file)",
            );
        }
        match self.get("value.converter").as_deref() {
            Some("io.confluent.connect.avro.AvroConverter") | None => {
                s.insert("value_mode".into(), value_mode_name(ValueMode::Payload).into());
            }
            Some(other) => self.unmapped(
                "value.converter",
                &format!("{other}: the relay writes Avro only (value_mode = \"payload\" is Debezium's value in Avro)"),
            ),
        }
        match self.get("key.converter").as_deref() {
            Some("org.apache.kafka.connect.storage.StringConverter") | None => {
                s.insert("key_format".into(), key_format_name(KeyFormat::String).into());
            }
            Some("io.confluent.connect.avro.AvroConverter") => {
                s.insert("key_format".into(), key_format_name(KeyFormat::Avro).into());
            }
            Some(other) => {
                self.unmapped("key.converter", &format!("{other}: keys are UTF-8 strings or Avro strings"));
            }
        }
        s
    }
}

fn value_mode_name(m: ValueMode) -> String {
    serde_json::to_value(m).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

fn key_format_name(k: KeyFormat) -> String {
    serde_json::to_value(k).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::config::Config;

    const CONNECTOR: &str = r#"{"name": "orders-outbox", "config": {
      "connector.class": "io.debezium.connector.postgresql.PostgresConnector", "tasks.max": "1",
      "plugin.name": "pgoutput", "database.hostname": "db.internal", "database.port": "5433",
      "database.user": "debezium", "database.password": "s3cr3t-pg", "database.dbname": "orders",
      "database.sslmode": "verify-full", "database.sslrootcert": "system", "topic.prefix": "orders",
      "slot.name": "orders_outbox", "publication.name": "orders_pub", "publication.autocreate.mode": "filtered",
      "table.include.list": "public.outbox,billing.outbox", "heartbeat.interval.ms": "10000",
      "transforms": "outbox,mask", "transforms.outbox.type": "io.debezium.transforms.outbox.EventRouter",
      "transforms.outbox.route.topic.replacement": "events.${routedByValue}",
      "transforms.outbox.table.field.event.key": "aggregate_id",
      "transforms.outbox.table.fields.additional.placement": "tenant:header,region:envelope:origin",
      "transforms.mask.type": "org.apache.kafka.connect.transforms.MaskField$Value",
      "key.converter": "org.apache.kafka.connect.storage.StringConverter",
      "value.converter": "io.confluent.connect.avro.AvroConverter",
      "value.converter.schema.registry.url": "https://sr1:8081",
      "value.converter.basic.auth.user.info": "relay:s3cr3t-sr", "signal.data.collection": "public.signals"}}"#;

    fn load(import: &Import) -> Config {
        Config::from_toml_str(
            &import.toml.replace("REPLACE-ME:9092", "kafka:9092").replace("\"REPLACE-ME\"", "\"connect-offsets\""),
            &[],
        )
        .unwrap()
    }

    #[test]
    fn a_connector_becomes_a_loadable_configuration_without_its_secrets() {
        let import = import(CONNECTOR).unwrap();
        assert!(!import.toml.contains("s3cr3t"), "{}", import.toml);
        let cfg = load(&import);
        assert_eq!(cfg.connector_name, "orders-outbox");
        assert_eq!((import.connector.as_str(), import.topic_prefix.as_str()), ("orders-outbox", "orders"));
        assert_eq!(cfg.postgres.slot, "orders_outbox");
        assert_eq!(cfg.postgres.publication, "orders_pub");
        assert_eq!(cfg.postgres.heartbeat_interval_ms, 10_000);
        assert!(cfg.postgres.url.starts_with("postgres://debezium@db.internal:5433/orders?sslmode=verify-full"));
        assert_eq!(cfg.outbox.tables.len(), 2);
        let t = &cfg.outbox.tables[1];
        assert_eq!(t.table.to_string(), "billing.outbox");
        assert_eq!(
            (t.field_event_key.as_str(), t.route_topic_replacement.as_str()),
            ("aggregate_id", "events.${routedByValue}")
        );
        assert_eq!(t.additional_fields.len(), 2);
        assert!(!cfg.outbox.type_header, "Debezium writes only `id` unless `type` is placed as a header");
        assert_eq!(
            cfg.outbox.unmapped_relations,
            crate::outbox::config::UnmappedRelations::Error,
            "filtered publication"
        );
        assert_eq!(cfg.schema_registry.value_mode, ValueMode::Payload);
        assert_eq!(cfg.schema_registry.username, "relay");
        assert_eq!((cfg.debezium.connector.as_str(), cfg.debezium.topic_prefix.as_str()), ("orders-outbox", "orders"));
        let unmapped: Vec<&str> = import.unmapped.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(unmapped, ["transforms.mask.type", "signal.data.collection"]);
        assert!(import.notes.iter().any(|n| n.contains("OUTBOX_RELAY_POSTGRES__URL")));
        assert!(import.notes.iter().any(|n| n.contains("SCHEMA_REGISTRY__PASSWORD")));
    }

    #[test]
    fn defaults_and_an_all_tables_publication() {
        let json = r#"{"connector.class": "io.debezium.connector.postgresql.PostgresConnector", "name": "c",
          "database.hostname": "h", "database.dbname": "d", "database.user": "u", "topic.prefix": "p",
          "transforms": "o", "transforms.o.type": "io.debezium.transforms.outbox.EventRouter",
          "transforms.o.table.fields.additional.placement": "type:header:type",
          "value.converter.schema.registry.url": "http://sr:8081"}"#;
        let import = import(json).unwrap();
        let cfg = load(&import);
        assert_eq!((cfg.postgres.slot.as_str(), cfg.postgres.publication.as_str()), ("debezium", "dbz_publication"));
        assert_eq!(cfg.outbox.tables[0].route_topic_replacement, "outbox.event.${routedByValue}");
        assert!(cfg.outbox.type_header, "`type` placed as header `type`");
        assert!(cfg.outbox.tables[0].additional_fields.is_empty());
        assert_eq!(cfg.outbox.unmapped_relations, crate::outbox::config::UnmappedRelations::Ignore);
        assert!(import.unmapped.is_empty(), "{:?}", import.unmapped);
    }

    #[test]
    fn the_offset_skips_what_debezium_delivered_and_nothing_else() {
        let o = DebeziumOffset::parse(&serde_json::json!(
            {"lsn_proc": 300, "messageType": "INSERT", "lsn_commit": 200, "lsn": 300, "txId": 7, "ts_usec": 1}
        ))
        .unwrap();
        assert_eq!(o, DebeziumOffset { lsn: Lsn(300), lsn_commit: Some(Lsn(200)), tx_id: 7 });
        assert_eq!(o.skip(6, Lsn(150)), Skip::Whole, "committed before the previous commit's end");
        assert_eq!(o.skip(7, Lsn(900)), Skip::UpTo(Lsn(300)), "the transaction Debezium was in");
        assert_eq!(o.skip(8, Lsn(1000)), Skip::Nothing, "committed after it");
        assert_eq!(o.skip(9, Lsn(250)), Skip::Nothing, "a later transaction is never judged by LSN alone");
        let first = DebeziumOffset::parse(&serde_json::json!({"lsn_proc": 5, "lsn": 5, "txId": 3})).unwrap();
        assert_eq!(first.skip(2, Lsn(1)), Skip::Nothing);
        assert!(DebeziumOffset::parse(&serde_json::json!({"lsn": 5})).is_err());
        assert!(DebeziumOffset::parse(&serde_json::json!({"lsn": 5, "txId": 5_000_000_000u64})).is_err());
    }

    #[test]
    fn what_cannot_be_imported_is_named() {
        assert!(matches!(import("[]"), Err(ImportError::NotAConfig(_))));
        assert!(matches!(import("{\"connector.class\": \"x.MySqlConnector\"}"), Err(ImportError::NotPostgres(_))));
        assert!(matches!(import("{\"name\": \"c\"}"), Err(ImportError::NoEventRouter)));
        let json = r#"{"transforms": "o", "transforms.o.type": "io.debezium.transforms.outbox.EventRouter",
          "plugin.name": "decoderbufs", "table.include.list": "public.outbox_.*",
          "transforms.o.route.topic.regex": "(?<routedByValue>[a-z]+)_.*",
          "value.converter": "org.apache.kafka.connect.json.JsonConverter"}"#;
        let import = import(json).unwrap();
        let unmapped: Vec<&str> = import.unmapped.iter().map(|(k, _)| k.as_str()).collect();
        for key in ["plugin.name", "table.include.list", "value.converter"] {
            assert!(unmapped.contains(&key), "{key} in {unmapped:?}");
        }
    }
}
