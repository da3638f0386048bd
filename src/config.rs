//! Configuration: a TOML file, environment overrides and connection strings.
//!
//! Invariant: a [`Config`] that loaded is complete and valid — every later module may rely on it without checking
//! again — and no secret it holds (passwords in connection strings, registry credentials, SASL passwords in the
//! librdkafka pass-through map) appears in its `Debug` output or in any log line.
//!
//! (Skeleton: the owner of this module fills in loading, validation and redaction.)

use std::collections::BTreeMap;
use std::path::PathBuf;

/// The whole configuration of one relay (one connector).
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name of this connector. Derives the Kafka `transactional.id` and the checkpoint key, so it must stay the same
    /// across restarts of the same relay and be unique among relays sharing a Kafka cluster.
    pub connector_name: String,
    /// PostgreSQL source.
    pub postgres: PostgresConfig,
    /// The outbox table(s) and the tableless (logical message) outbox.
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// Kafka sink.
    pub kafka: KafkaConfig,
    /// Confluent-compatible schema registry.
    pub schema_registry: SchemaRegistryConfig,
    /// Prometheus metrics and health endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
}

/// PostgreSQL source settings.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection string.
    pub url: String,
    /// Logical replication slot name.
    pub slot: String,
    /// Publication name.
    pub publication: String,
}

/// Outbox mapping settings.
#[derive(Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {}

/// Kafka settings.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers.
    pub bootstrap_servers: String,
    /// Raw librdkafka settings passed through.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// Schema registry settings.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRegistryConfig {
    /// Base URL of the Confluent-compatible API.
    pub url: String,
}

/// Metrics settings.
#[derive(Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Listen address of the Prometheus endpoint.
    pub listen: Option<String>,
}

#[allow(dead_code)]
fn _unused(_: PathBuf) {}
