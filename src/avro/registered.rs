//! Value modes `payload` and `registered`: the record value is the event's payload itself, as Debezium's Outbox
//! Event Router writes it, or converted to Avro against the schema governed for its event type.
//!
//! Invariant: a value is written under the schema id the registry gave for the very schema its bytes follow: in
//! `registered` mode the local `.avsc` as registered (or looked up, with `auto_register = false`), or the
//! registry's own version (`use_latest_version`, `event_types.X.subject`), whose plan is compiled from the text the
//! registry returned. Ids and plans are cached per topic and event type for the life of the process, so a registry
//! outage after the first event of each does not stop delivery. A NULL payload becomes a tombstone (an empty value
//! here, a null record value on Kafka), as in Debezium.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use apache_avro::Schema;
use futures::future::BoxFuture;
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};

use super::config::{SchemaRegistryConfig, SchemaSource, SubjectNameStrategy};
use super::json::Plan;
use super::{EncodeError, IdCache, MAGIC, SchemaId, SchemaRegistry, ValueEncoder, write_long};
use crate::outbox::{OutboxEvent, Payload};

/// Value mode `payload`: [`PAYLOAD_TEXT_SCHEMA`] for text payloads, `["null","bytes"]` for `bytea` ones,
/// registered under `<topic>-value`.
#[derive(Debug)]
pub struct PayloadEncoder {
    registry: Arc<SchemaRegistry>,
    text: SuppliedSchema,
    bytes: SuppliedSchema,
    text_ids: IdCache,
    bytes_ids: IdCache,
}

/// The schema of a text payload in value mode `payload`: exactly what Debezium's Outbox Event Router with
/// Confluent's AvroConverter registers for a nullable json/jsonb payload column, so that a subject Debezium created
/// takes the relay's values without a new version (seen from a real Debezium 3.6 run).
pub const PAYLOAD_TEXT_SCHEMA: &str =
    r#"["null",{"type":"string","connect.version":1,"connect.name":"io.debezium.data.Json"}]"#;
/// The schema of a `bytea` payload in value mode `payload`.
pub const PAYLOAD_BYTES_SCHEMA: &str = r#"["null","bytes"]"#;

impl PayloadEncoder {
    /// An encoder registering through `registry`.
    pub fn new(registry: Arc<SchemaRegistry>) -> PayloadEncoder {
        let schema = |s: &str| SuppliedSchema::new(None, SchemaType::Avro, s.to_owned());
        PayloadEncoder {
            registry,
            text: schema(PAYLOAD_TEXT_SCHEMA),
            bytes: schema(PAYLOAD_BYTES_SCHEMA),
            text_ids: IdCache::default(),
            bytes_ids: IdCache::default(),
        }
    }

    /// The schemas a topic's values may be registered with.
    pub fn schemas(&self) -> Vec<&SuppliedSchema> {
        vec![&self.text, &self.bytes]
    }

    async fn id(&self, topic: &str, bytes: bool) -> Result<SchemaId, EncodeError> {
        let (ids, schema) = if bytes { (&self.bytes_ids, &self.bytes) } else { (&self.text_ids, &self.text) };
        if let Some(id) = ids.get(topic) {
            return Ok(id);
        }
        let id = self.registry.register(topic, false, schema).await?;
        ids.insert(topic, id);
        Ok(id)
    }
}

impl ValueEncoder for PayloadEncoder {
    fn encode<'a>(&'a self, event: &'a OutboxEvent) -> BoxFuture<'a, Result<Vec<u8>, EncodeError>> {
        Box::pin(async move {
            let Some(payload) = &event.payload else { return Ok(Vec::new()) };
            let is_bytes = matches!(payload, Payload::Bytes(_));
            let id = self.id(&event.topic, is_bytes).await?;
            let mut out = Vec::with_capacity(5 + 2 + 5 + payload.len());
            out.push(MAGIC);
            out.extend_from_slice(&id.0.to_be_bytes());
            // The union's second branch: the value itself.
            write_long(&mut out, 1);
            write_long(&mut out, i64::try_from(payload.len()).unwrap_or(i64::MAX));
            out.extend_from_slice(payload.as_bytes());
            Ok(out)
        })
    }
}

/// The schema of one event type as configured.
#[derive(Debug)]
pub struct EventSchema {
    /// The event type (the outbox `type` column).
    pub event_type: String,
    /// Where it comes from.
    pub source: SchemaSource,
    /// For a local file: its parsed schema, text and plan.
    pub local: Option<LocalSchema>,
}

/// A schema read from an `.avsc` file.
#[derive(Debug)]
pub struct LocalSchema {
    /// The file.
    pub file: PathBuf,
    /// The schema as registered (the file's text, compacted).
    pub supplied: SuppliedSchema,
    /// Parsed.
    pub schema: Schema,
    /// Compiled for encoding.
    pub plan: Arc<Plan>,
}

impl EventSchema {
    /// Where the schema is, for messages: the file, or `subject@version`.
    pub fn origin(&self) -> String {
        match &self.source {
            SchemaSource::File(f) => f.display().to_string(),
            SchemaSource::Subject { subject, version } => format!("subject {subject} version {version}"),
        }
    }
}

/// Reads, parses and compiles every configured schema. Fails naming the file and what is wrong with it.
pub fn load_schemas(cfg: &SchemaRegistryConfig) -> Result<BTreeMap<String, EventSchema>, EncodeError> {
    let sources = cfg.schema_sources().map_err(EncodeError::Settings)?;
    let mut out = BTreeMap::new();
    for (event_type, source) in sources {
        let local = match &source {
            SchemaSource::File(file) => Some(load_file(file)?),
            SchemaSource::Subject { .. } => None,
        };
        out.insert(event_type.clone(), EventSchema { event_type, source, local });
    }
    Ok(out)
}

fn load_file(file: &std::path::Path) -> Result<LocalSchema, EncodeError> {
    let bad = |why: String| EncodeError::Settings(format!("schema file {}: {why}", file.display()));
    let text = std::fs::read_to_string(file).map_err(|e| bad(format!("cannot be read: {e}")))?;
    let (schema, plan) = parse_schema(&text).map_err(bad)?;
    // Compact JSON: the registry compares schemas by their parsed form, and compact text is what it stores.
    let compact = serde_json::from_str::<serde_json::Value>(&text).map(|v| v.to_string()).unwrap_or(text);
    let supplied = SuppliedSchema::new(plan.name().map(str::to_owned), SchemaType::Avro, compact);
    Ok(LocalSchema { file: file.to_owned(), supplied, schema, plan: Arc::new(plan) })
}

/// Parses and compiles a schema's text.
pub fn parse_schema(text: &str) -> Result<(Schema, Plan), String> {
    let schema = Schema::parse_str(text).map_err(|e| format!("not a valid Avro schema: {e}"))?;
    let plan = Plan::compile(&schema).map_err(|e| format!("cannot be encoded from JSON: {e}"))?;
    Ok((schema, plan))
}

/// What a topic and event type resolved to: the id to write and the plan its bytes follow.
#[derive(Debug)]
struct Resolved {
    id: SchemaId,
    plan: Arc<Plan>,
}

/// Value mode `registered`.
#[derive(Debug)]
pub struct RegisteredEncoder {
    registry: Arc<SchemaRegistry>,
    schemas: BTreeMap<String, EventSchema>,
    strategy: SubjectNameStrategy,
    auto_register: bool,
    use_latest_version: bool,
    /// By topic, then event type. Read-locked on the hot path; written once per pair.
    resolved: RwLock<HashMap<String, HashMap<String, Arc<Resolved>>>>,
}

impl RegisteredEncoder {
    /// The encoder of `cfg`'s schemas (loaded with [`load_schemas`]).
    pub fn new(
        registry: Arc<SchemaRegistry>,
        cfg: &SchemaRegistryConfig,
        schemas: BTreeMap<String, EventSchema>,
    ) -> RegisteredEncoder {
        RegisteredEncoder {
            registry,
            schemas,
            strategy: cfg.subject_name_strategy,
            auto_register: cfg.auto_register,
            use_latest_version: cfg.use_latest_version,
            resolved: RwLock::default(),
        }
    }

    /// The configured schemas, by event type.
    pub fn schemas(&self) -> &BTreeMap<String, EventSchema> {
        &self.schemas
    }

    fn cached(&self, topic: &str, event_type: &str) -> Option<Arc<Resolved>> {
        let map = self.resolved.read().unwrap_or_else(PoisonError::into_inner);
        map.get(topic).and_then(|m| m.get(event_type)).cloned()
    }

    async fn resolve(&self, event: &OutboxEvent) -> Result<Arc<Resolved>, EncodeError> {
        if let Some(r) = self.cached(&event.topic, &event.event_type) {
            return Ok(r);
        }
        let Some(schema) = self.schemas.get(&event.event_type) else {
            return Err(EncodeError::Value {
                event_id: event.id.clone(),
                field: "type".to_owned(),
                reason: format!(
                    "no schema for event type {:?}: add {0}.avsc to schema_registry.schemas_dir or map the type in \
                     [schema_registry.event_types]",
                    event.event_type
                ),
            });
        };
        let resolved = Arc::new(self.resolve_schema(schema, &event.topic).await?);
        let mut map = self.resolved.write().unwrap_or_else(PoisonError::into_inner);
        map.entry(event.topic.clone()).or_default().insert(event.event_type.clone(), Arc::clone(&resolved));
        Ok(resolved)
    }

    async fn resolve_schema(&self, schema: &EventSchema, topic: &str) -> Result<Resolved, EncodeError> {
        let local = match (&schema.source, &schema.local) {
            (SchemaSource::Subject { subject, version }, _) => return self.fetch(subject, version, schema).await,
            (SchemaSource::File(_), Some(local)) => local,
            (SchemaSource::File(f), None) => {
                return Err(EncodeError::Settings(format!("schema file {} was not loaded", f.display())));
            }
        };
        let subject = self.strategy.value_subject(topic, local.plan.name()).ok_or_else(|| {
            EncodeError::Settings(format!(
                "{}: subject_name_strategy {:?} needs a named schema (record, enum or fixed)",
                local.file.display(),
                self.strategy
            ))
        })?;
        if self.use_latest_version {
            return self.fetch(&subject, "latest", schema).await;
        }
        let id = if self.auto_register {
            self.registry.register_value(self.strategy, topic, &local.supplied).await?.1
        } else {
            self.registry.lookup(&subject, &local.supplied.schema).await?.ok_or_else(|| EncodeError::NotRegistered {
                subject: subject.clone(),
                event_type: schema.event_type.clone(),
                origin: schema.origin(),
            })?
        };
        tracing::info!(subject = %subject, schema_id = id.0, event_type = %schema.event_type, "schema in use");
        Ok(Resolved { id, plan: Arc::clone(&local.plan) })
    }

    /// A version the registry holds, compiled from its text.
    async fn fetch(&self, subject: &str, version: &str, schema: &EventSchema) -> Result<Resolved, EncodeError> {
        let registered = self.registry.version(subject, version).await?.ok_or_else(|| EncodeError::NotRegistered {
            subject: format!("{subject} (version {version})"),
            event_type: schema.event_type.clone(),
            origin: schema.origin(),
        })?;
        let (_, plan) = parse_schema(&registered.schema)
            .map_err(|why| EncodeError::Settings(format!("subject {subject} version {}: {why}", registered.version)))?;
        if let Some(local) = &schema.local {
            // Under TopicNameStrategy the subject's latest version may be another event type's record.
            if plan.name() != local.plan.name() {
                return Err(EncodeError::Settings(format!(
                    "use_latest_version: subject {subject} version {} is record {:?}, not {:?} of event type {:?} \
                     ({}); use subject_name_strategy = \"record\" or \"topic_record\" when several event types \
                     share a topic",
                    registered.version,
                    plan.name().unwrap_or("(unnamed)"),
                    local.plan.name().unwrap_or("(unnamed)"),
                    schema.event_type,
                    local.file.display()
                )));
            }
        }
        tracing::info!(
            subject = %subject,
            version = registered.version,
            schema_id = registered.id.0,
            event_type = %schema.event_type,
            "registered schema in use"
        );
        Ok(Resolved { id: registered.id, plan: Arc::new(plan) })
    }
}

/// The wire-format bytes of `event`'s JSON `payload` converted against `plan`, under schema `id`; no I/O. A payload
/// that is not JSON or does not fit is an [`EncodeError::Value`] naming the event and the field path.
pub fn encode_json_payload(
    id: SchemaId,
    plan: &Plan,
    event: &OutboxEvent,
    payload: &Payload,
) -> Result<Vec<u8>, EncodeError> {
    let misfit = |field: String, reason: String| EncodeError::Value { event_id: event.id.clone(), field, reason };
    let text = payload
        .text()
        .ok_or_else(|| misfit("payload".to_owned(), "is bytes that are not UTF-8 text, so not JSON".to_owned()))?;
    let mut out = Vec::with_capacity(5 + text.len());
    out.push(MAGIC);
    out.extend_from_slice(&id.0.to_be_bytes());
    plan.encode_json(text, &mut out).map_err(|m| {
        let field = if m.path.is_empty() { "payload".to_owned() } else { format!("payload.{}", m.path) };
        misfit(field, format!("{} (event type {:?}, schema id {id})", m.reason, event.event_type))
    })?;
    Ok(out)
}

impl ValueEncoder for RegisteredEncoder {
    fn encode<'a>(&'a self, event: &'a OutboxEvent) -> BoxFuture<'a, Result<Vec<u8>, EncodeError>> {
        Box::pin(async move {
            let Some(payload) = &event.payload else { return Ok(Vec::new()) };
            let resolved = self.resolve(event).await?;
            encode_json_payload(resolved.id, &resolved.plan, event, payload)
        })
    }
}
