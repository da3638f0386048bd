//! Avro encoding through the real schema registry of `tests/infra/up.sh` (Apicurio, Confluent-compatible API,
//! global compatibility BACKWARD). Every test uses its own topic, hence its own subjects.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

#[path = "common/services.rs"]
mod services;

use std::sync::Arc;
use std::time::{Duration, Instant};

use apache_avro::Schema;
use apache_avro::types::Value;
use bytes::Bytes;
use outbox_relay::avro::{
    EncodeError, EnvelopeEncoder, KeyEncoder, RegistryDecoder, RegistrySettings, RetryPolicy, SchemaId, SchemaRegistry,
    ValueEncoder, envelope_schema,
};
use outbox_relay::outbox::{AdditionalField, Cell, OutboxEvent, OutboxTableConfig, Payload, Placement, TableMapper};
use outbox_relay::pg::lsn::{Lsn, PgTimestamp};
use schema_registry_converter::async_impl::avro::AvroEncoder;
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{SchemaType, SubjectNameStrategy, SuppliedSchema};
use serde_json::json;

fn registry_url() -> String {
    services::services().schema_registry_url
}

fn unique_topic(prefix: &str) -> String {
    services::unique_name(prefix).replace('_', "-")
}

async fn http_json(method: reqwest::Method, url: &str) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new().request(method, url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(serde_json::Value::Null))
}

async fn subjects(url: &str) -> Vec<String> {
    let (status, body) = http_json(reqwest::Method::GET, &format!("{url}/subjects")).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body).unwrap()
}

/// Deletes a subject for good (soft, then permanent, as the Confluent API requires).
async fn delete_subject(url: &str, subject: &str) {
    for suffix in ["", "?permanent=true"] {
        let (status, body) = http_json(reqwest::Method::DELETE, &format!("{url}/subjects/{subject}{suffix}")).await;
        assert_eq!(status, 200, "DELETE {subject}{suffix}: {body}");
    }
}

fn sample_event(topic: &str) -> OutboxEvent {
    OutboxEvent {
        id: "4f0c1a1e-3c55-4c5e-9d8e-0d7f6e5a4b3c".into(),
        aggregate_type: "order".into(),
        aggregate_id: "order-42".into(),
        event_type: "OrderCreated".into(),
        timestamp: PgTimestamp(849_221_631_123_456),
        payload: Some(r#"{"total": 12.5, "items": [], "note": "naïve ☕"}"#.into()),
        topic: topic.into(),
        partition: None,
        headers: vec![],
        envelope_fields: vec![],
        source: "public.outbox".into(),
        commit_lsn: Lsn(0x16_B374_D848),
    }
}

/// The converter registers a schema, the registry hands back the same schema by id, and a value encoded with it is
/// `0x00 | id | Avro` and decodes to the same value.
#[tokio::test]
async fn schema_registered_through_the_converter_round_trips_in_wire_format() {
    let url = registry_url();
    let topic = unique_topic("avro-roundtrip");
    let schema_json = r#"{"type":"record","name":"Probe","namespace":"io.outboxrelay.test","fields":[
        {"name":"n","type":"long"},{"name":"s","type":["null","string"],"default":null}]}"#;
    let supplied = SuppliedSchema::new(Some("io.outboxrelay.test.Probe".into()), SchemaType::Avro, schema_json.into());
    let converter = AvroEncoder::new(SrSettings::new(url.clone()));
    let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(topic.clone(), false, supplied);
    let value = Value::Record(vec![
        ("n".into(), Value::Long(-7)),
        ("s".into(), Value::Union(1, Box::new(Value::String("hé".into())))),
    ]);
    let bytes = converter.encode_value(value, &strategy).await.unwrap();

    let (status, latest) =
        http_json(reqwest::Method::GET, &format!("{url}/subjects/{topic}-value/versions/latest")).await;
    assert_eq!(status, 200, "{latest}");
    let id = u32::try_from(latest["id"].as_u64().unwrap()).unwrap();
    assert_eq!(bytes[0], 0, "magic byte");
    assert_eq!(u32::from_be_bytes(bytes[1..5].try_into().unwrap()), id, "schema id in the wire format");

    let (status, by_id) = http_json(reqwest::Method::GET, &format!("{url}/schemas/ids/{id}")).await;
    assert_eq!(status, 200, "{by_id}");
    let fetched = Schema::parse_str(by_id["schema"].as_str().unwrap()).unwrap();
    assert_eq!(fetched.canonical_form(), Schema::parse_str(schema_json).unwrap().canonical_form());

    let decoded = RegistryDecoder::new(&RegistrySettings::new(&url)).unwrap().decode(&bytes).await.unwrap();
    assert_eq!(decoded.schema_id, SchemaId(id));
    assert_eq!(decoded.name.as_deref(), Some("io.outboxrelay.test.Probe"));
    assert_eq!(decoded.json, json!({"n": -7, "s": "hé"}));
}

/// A row mapped by the outbox mapper, encoded as an envelope (with envelope additional fields) and an Avro key,
/// decodes back to the same fields; the schemas sit under `<topic>-value` and `<topic>-key`.
#[tokio::test]
async fn envelope_of_a_mapped_row_decodes_back_to_the_same_fields() {
    let url = registry_url();
    let prefix = unique_topic("avro-env");
    let mapping = OutboxTableConfig {
        route_topic_replacement: format!("{prefix}.${{routedByValue}}"),
        additional_fields: vec![
            AdditionalField { column: "tenant".into(), placement: Placement::Envelope, alias: "tenant_id".into() },
            AdditionalField { column: "region".into(), placement: Placement::Envelope, alias: String::new() },
        ],
        ..OutboxTableConfig::default()
    };
    let columns = [
        ("id", 2950),
        ("aggregatetype", 25),
        ("aggregateid", 25),
        ("type", 25),
        ("payload", 3802),
        ("tenant", 25),
        ("region", 25),
    ];
    let mapper = TableMapper::bind(&mapping, "public", "outbox", columns).unwrap();
    let payload = r#"{"items": [{"sku": "A-1", "qty": 2}], "total": 12.5}"#;
    let row = [
        Cell::Text(b"9d3b8f8e-1b7a-4b8e-8c77-5b9b1d1e2f3a"),
        Cell::Text(b"order"),
        Cell::Text(b"order-42"),
        Cell::Text(b"OrderCreated"),
        Cell::Text(payload.as_bytes()),
        Cell::Text(b"acme"),
        Cell::Null,
    ];
    let event = mapper.map_row(row.as_slice(), Lsn(1), PgTimestamp(849_221_631_123_456)).unwrap();
    let topic = format!("{prefix}.order");
    assert_eq!(event.topic, topic);

    let settings = RegistrySettings::new(&url);
    let registry = Arc::new(SchemaRegistry::new(&settings).unwrap());
    let names: Vec<String> = mapping.envelope_field_names().map(str::to_owned).collect();
    let values = EnvelopeEncoder::new(registry.clone(), names.clone()).unwrap();
    let keys = KeyEncoder::avro(registry);
    let value = values.encode(&event).await.unwrap();
    let key = keys.encode(&event).await.unwrap();

    let decoder = RegistryDecoder::new(&settings).unwrap();
    let decoded = decoder.decode(&value).await.unwrap();
    assert_eq!(decoded.name.as_deref(), Some("io.outboxrelay.OutboxEnvelope"));
    assert_eq!(
        decoded.json,
        json!({
            "id": "9d3b8f8e-1b7a-4b8e-8c77-5b9b1d1e2f3a",
            "aggregate_type": "order",
            "aggregate_id": "order-42",
            "type": "OrderCreated",
            "timestamp": PgTimestamp(849_221_631_123_456).unix_micros(),
            "payload": payload,
            "tenant_id": "acme",
            "region": null,
        })
    );
    // The registry holds exactly our schema under <topic>-value, with that id.
    let (_, latest) = http_json(reqwest::Method::GET, &format!("{url}/subjects/{topic}-value/versions/latest")).await;
    assert_eq!(latest["id"].as_u64(), Some(u64::from(decoded.schema_id.0)));
    let registered = Schema::parse_str(latest["schema"].as_str().unwrap()).unwrap();
    assert_eq!(registered.canonical_form(), Schema::parse_str(&envelope_schema(&names)).unwrap().canonical_form());

    let decoded_key = decoder.decode(&key).await.unwrap();
    assert_eq!(decoded_key.json, json!("order-42"));
    let (_, key_latest) = http_json(reqwest::Method::GET, &format!("{url}/subjects/{topic}-key/versions/latest")).await;
    assert_eq!(key_latest["id"].as_u64(), Some(u64::from(decoded_key.schema_id.0)));
    // The default key is the aggregate id's plain bytes.
    assert_eq!(KeyEncoder::string().encode(&event).await.unwrap(), b"order-42");
}

/// After the first encode for a topic the schema id comes from the cache: with the subject deleted from the
/// registry, a second encode still succeeds with the same id and does not register it again. A fresh encoder does,
/// which shows the check can fail.
#[tokio::test]
async fn schema_id_is_cached_per_topic() {
    let url = registry_url();
    let topic = unique_topic("avro-cache");
    let subject = format!("{topic}-value");
    let settings = RegistrySettings::new(&url);
    let encoder = EnvelopeEncoder::new(Arc::new(SchemaRegistry::new(&settings).unwrap()), vec![]).unwrap();
    let event = sample_event(&topic);
    let first = encoder.encode(&event).await.unwrap();
    assert!(subjects(&url).await.contains(&subject));

    delete_subject(&url, &subject).await;
    assert!(!subjects(&url).await.contains(&subject));
    let second = encoder.encode(&event).await.unwrap();
    assert_eq!(first, second, "same id, same bytes");
    assert!(!subjects(&url).await.contains(&subject), "the cached encoder registered the subject again");

    let fresh = EnvelopeEncoder::new(Arc::new(SchemaRegistry::new(&settings).unwrap()), vec![]).unwrap();
    fresh.encode(&event).await.unwrap();
    assert!(subjects(&url).await.contains(&subject), "a fresh encoder registers the subject");
}

/// Under BACKWARD, an envelope that cannot read what is already registered under the subject is refused: a named,
/// definite error, returned at once (no retries).
#[tokio::test]
async fn incompatible_schema_is_a_named_definite_error() {
    let url = registry_url();
    let topic = unique_topic("avro-incompatible");
    // Someone else owns the subject with a record our envelope cannot read (its required fields lack defaults).
    let other = r#"{"type":"record","name":"OutboxEnvelope","namespace":"io.outboxrelay","fields":[
        {"name":"legacy","type":"string"}]}"#;
    let converter = AvroEncoder::new(SrSettings::new(url.clone()));
    let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
        topic.clone(),
        false,
        SuppliedSchema::new(None, SchemaType::Avro, other.into()),
    );
    converter.encode_value(Value::Record(vec![("legacy".into(), Value::String("x".into()))]), &strategy).await.unwrap();

    let settings = RegistrySettings::new(&url).with_retry(RetryPolicy {
        attempts: 5,
        initial_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(1),
    });
    let encoder = EnvelopeEncoder::new(Arc::new(SchemaRegistry::new(&settings).unwrap()), vec![]).unwrap();
    let started = Instant::now();
    let err = encoder.encode(&sample_event(&topic)).await.unwrap_err();
    assert!(
        matches!(&err, EncodeError::IncompatibleSchema { subject, .. } if *subject == format!("{topic}-value")),
        "{err:?}"
    );
    assert!(!err.is_transient());
    let message = err.to_string();
    eprintln!("{message}");
    assert!(
        message.contains(&format!("{topic}-value")) && message.contains("incompatible") && message.contains("fix"),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(1), "a definite error must not be retried");
    // And it is not stuck in the converter's cache as a stale answer: the same call gives the same named error.
    assert!(matches!(encoder.encode(&sample_event(&topic)).await, Err(EncodeError::IncompatibleSchema { .. })));
}

/// With nothing listening at the registry URL, encoding retries with backoff and ends in a transient error naming
/// the URL and the subject.
#[tokio::test]
async fn registry_down_is_transient_after_retries() {
    let url = format!("http://127.0.0.1:{}/apis/ccompat/v7", services::closed_port());
    let retry =
        RetryPolicy { attempts: 4, initial_backoff: Duration::from_millis(20), max_backoff: Duration::from_millis(50) };
    let settings = RegistrySettings::new(&url).with_retry(retry).with_request_timeout(Duration::from_secs(2));
    let encoder = EnvelopeEncoder::new(Arc::new(SchemaRegistry::new(&settings).unwrap()), vec![]).unwrap();
    let started = Instant::now();
    let err = encoder.encode(&sample_event("down.topic")).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(err.is_transient(), "{err:?}");
    assert!(
        matches!(&err, EncodeError::RegistryUnavailable { attempts: 4, subject, .. } if subject == "down.topic-value"),
        "{err:?}"
    );
    let message = err.to_string();
    eprintln!("{message}");
    assert!(message.contains(&url) && message.contains("down.topic-value"), "{message}");
    // Backoff waits 20 + 40 + 50 ms between the four attempts.
    assert!(elapsed >= Duration::from_millis(110), "retried without backoff: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

/// Basic-auth credentials in the URL are used and never shown: an error message carries the URL without them.
#[tokio::test]
async fn credentials_in_the_url_stay_out_of_error_messages() {
    let port = services::closed_port();
    let settings = RegistrySettings::new(&format!("http://relay:s3cr3t@127.0.0.1:{port}"))
        .with_retry(RetryPolicy { attempts: 1, ..RetryPolicy::default() });
    assert_eq!(settings.url(), format!("http://127.0.0.1:{port}"));
    let encoder = EnvelopeEncoder::new(Arc::new(SchemaRegistry::new(&settings).unwrap()), vec![]).unwrap();
    let err = encoder.encode(&sample_event("t")).await.unwrap_err();
    assert!(!err.to_string().contains("s3cr3t") && !format!("{err:?}").contains("s3cr3t"), "{err:?}");
}

/// Per-event encode cost with the schema id cached (value + key), printed for the record; bounded generously so a
/// regression to per-event registry calls or schema parsing (tens of microseconds and more) fails.
#[tokio::test]
async fn encode_cost_per_event_with_warm_cache() {
    let url = registry_url();
    let topic = unique_topic("avro-cost");
    let settings = RegistrySettings::new(&url);
    let registry = Arc::new(SchemaRegistry::new(&settings).unwrap());
    let values = EnvelopeEncoder::new(registry.clone(), vec!["tenant".into()]).unwrap();
    let keys = KeyEncoder::avro(registry);
    let mut event = sample_event(&topic);
    event.payload = Some(
        format!(r#"{{"orderId": "order-42", "lines": [{}], "note": "{}"}}"#, "1,".repeat(30) + "1", "x".repeat(40))
            .into(),
    );
    event.envelope_fields = vec![("tenant".into(), Some("acme".into()))];
    event.headers =
        vec![("traceparent".into(), Bytes::from_static(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"))];
    values.encode(&event).await.unwrap();
    keys.encode(&event).await.unwrap();

    let n = 50_000u32;
    let started = Instant::now();
    let mut total = 0usize;
    for _ in 0..n {
        total += values.encode(&event).await.unwrap().len();
        total += keys.encode(&event).await.unwrap().len();
    }
    let per_event = started.elapsed() / n;
    println!(
        "encode cost per event (envelope value + Avro key, cache warm, {} build): {per_event:?}, {} bytes/event",
        if cfg!(debug_assertions) { "debug" } else { "release" },
        total / n as usize
    );
    assert!(per_event < Duration::from_micros(50), "{per_event:?} per event");

    // For comparison: the converter's own generic path (apache_avro Value + cached schema) for the same record.
    let supplied = SuppliedSchema::new(None, SchemaType::Avro, values.schema_json().to_owned());
    let converter = AvroEncoder::new(SrSettings::new(url.clone()));
    let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(topic.clone(), false, supplied);
    let record = || {
        Value::Record(vec![
            ("id".into(), Value::String(event.id.clone())),
            ("aggregate_type".into(), Value::String(event.aggregate_type.clone())),
            ("aggregate_id".into(), Value::String(event.aggregate_id.clone())),
            ("type".into(), Value::String(event.event_type.clone())),
            ("timestamp".into(), Value::TimestampMicros(event.timestamp.unix_micros())),
            (
                "payload".into(),
                Value::Union(
                    1,
                    Box::new(Value::String(
                        event.payload.as_ref().and_then(Payload::text).unwrap_or_default().to_owned(),
                    )),
                ),
            ),
            ("tenant".into(), Value::Union(1, Box::new(Value::String("acme".into())))),
        ])
    };
    let ours = values.encode(&event).await.unwrap();
    assert_eq!(converter.encode_value(record(), &strategy).await.unwrap(), ours, "same bytes as the converter");
    let started = Instant::now();
    for _ in 0..n / 10 {
        converter.encode_value(record(), &strategy).await.unwrap();
    }
    println!("converter generic path, value only: {:?}", started.elapsed() / (n / 10));
}
