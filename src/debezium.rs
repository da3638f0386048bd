//! Migration from Debezium: a Kafka Connect configuration of Debezium's PostgreSQL connector with the Outbox Event
//! Router becomes the relay's TOML (`outbox-relay import-debezium`), and the offset Debezium committed becomes the
//! relay's start position.
//!
//! Invariant: every key of the Debezium configuration is either mapped to a setting with the same effect, known to
//! need nothing (Connect plumbing such as `tasks.max`, or behaviour the relay has anyway), or reported in
//! [`Import::unmapped`] with why: nothing is dropped silently. Secrets are never copied into the output (the
//! database and registry passwords are left for the environment, named in the notes). The produced TOML loads as a
//! [`crate::config::Config`] once `kafka.bootstrap_servers` is known.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::avro::config::{KeyFormat, ValueMode};

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
            Some(other) => self.unmapped(
                &r("route.topic.regex"),
                &format!(
                    "{other:?}: the relay routes by the whole column value; put the part you route by in its own \
                     column (or a generated column) and name it in route_by_field"
                ),
            ),
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
        let url = self.get("value.converter.schema.registry.url").unwrap_or_default();
        let first = url.split(',').next().unwrap_or("").trim().to_owned();
        if url.contains(',') {
            self.notes.push(format!(
                "the registry URLs {url:?}: the relay takes one; {first} is used (put the others behind one address)"
            ));
        }
        s.insert("url".into(), first.into());
        if let Some(info) = self.get("value.converter.basic.auth.user.info") {
            let user = info.split(':').next().unwrap_or("");
            s.insert("username".into(), user.into());
            self.notes.push(
                "the registry password is not copied: set OUTBOX_RELAY_SCHEMA_REGISTRY__PASSWORD (or _FILE)".into(),
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
        Config::from_toml_str(&import.toml.replace("REPLACE-ME:9092", "kafka:9092"), &[]).unwrap()
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
        for key in ["plugin.name", "table.include.list", "transforms.o.route.topic.regex", "value.converter"] {
            assert!(unmapped.contains(&key), "{key} in {unmapped:?}");
        }
    }
}
