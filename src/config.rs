//! Configuration: a TOML file, environment overrides and connection strings.
//!
//! Invariant: a [`Config`] returned by [`Config::load`], [`Config::from_file`] or [`Config::from_toml_str`] is
//! complete and valid — every derived default (slot, publication, transactional id, spill directory, table schema,
//! field aliases) is filled in and every value was checked — so later modules rely on it without checking again.
//! No secret it holds (passwords in connection strings, registry credentials, secret librdkafka properties) appears
//! in its `Debug` output, in [`Config::redacted`] or in any error this module returns.
//!
//! Loading order: defaults, then the TOML file, then the environment variables in [`ENV_OVERRIDES`] (a variable
//! that is set and not empty wins over the file), then derived defaults, then validation. Validation reports every
//! problem it finds at once, each naming its key (`kafka.max_batch_events`) and what to change.
//!
//! PostgreSQL connection strings are URLs (`postgres://user:pass@host:port/db?param=value`) with libpq's
//! `sslmode` values `disable`, `prefer`, `require`, `verify-ca` and `verify-full` and the parameters `sslrootcert`,
//! `sslcert` and `sslkey`. tokio-postgres only knows the first three modes, so those four parameters are taken out
//! of the URL before it reaches [`tokio_postgres::Config`] and TLS is configured here with OpenSSL
//! ([`PostgresConfig::tls_connector`]): `verify-ca` checks the certificate chain, `verify-full` the chain and the
//! host name; `require` verifies the chain only when `sslrootcert` is given (as libpq does).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};
use openssl::x509::X509;
use openssl::x509::store::X509StoreBuilder;
use postgres_openssl::MakeTlsConnector;
use serde::{Deserialize, Serialize};

/// Environment variable naming the configuration file (read by the CLI's `--config`).
pub const CONFIG_PATH_ENV: &str = "OUTBOX_RELAY_CONFIG";

/// Environment variables that override single configuration keys, as `(variable, key)`.
///
/// A variable overrides its key when it is set and not empty.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("OUTBOX_RELAY_CONNECTOR_NAME", "connector_name"),
    ("OUTBOX_RELAY_POSTGRES_URL", "postgres.url"),
    ("OUTBOX_RELAY_KAFKA_BOOTSTRAP_SERVERS", "kafka.bootstrap_servers"),
    ("OUTBOX_RELAY_KAFKA_TRANSACTIONAL_ID", "kafka.transactional_id"),
    ("OUTBOX_RELAY_SCHEMA_REGISTRY_URL", "schema_registry.url"),
    ("OUTBOX_RELAY_SCHEMA_REGISTRY_USERNAME", "schema_registry.username"),
    ("OUTBOX_RELAY_SCHEMA_REGISTRY_PASSWORD", "schema_registry.password"),
    ("OUTBOX_RELAY_METRICS_LISTEN", "metrics.listen"),
];

/// Placeholder in [`OutboxTableConfig::route_topic_replacement`] replaced by the routing column's value.
pub const ROUTED_BY_VALUE: &str = "${routedByValue}";

/// What secrets are replaced with in `Debug` output, redacted configurations and log lines.
pub const REDACTED: &str = "***";

/// Longest accepted [`Config::connector_name`].
pub const MAX_CONNECTOR_NAME_LEN: usize = 200;

/// Longest PostgreSQL identifier (NAMEDATALEN - 1), which bounds slot and publication names.
const MAX_PG_IDENTIFIER_LEN: usize = 63;

/// Longest Kafka topic name.
const MAX_TOPIC_LEN: usize = 249;

/// librdkafka properties the relay sets itself; setting them in `[kafka.properties]` is an error naming the key to
/// use instead.
const RESERVED_KAFKA_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "set kafka.bootstrap_servers instead"),
    ("metadata.broker.list", "set kafka.bootstrap_servers instead"),
    ("transactional.id", "set kafka.transactional_id instead"),
    ("transaction.timeout.ms", "set kafka.transaction_timeout_ms instead"),
    ("enable.idempotence", "the relay always enables idempotence (transactions require it)"),
    ("isolation.level", "the relay always reads its checkpoints with read_committed"),
    ("allow.auto.create.topics", "set kafka.topic_creation instead: the relay creates missing topics itself"),
];

// ---------------------------------------------------------------------------------------------------------------
// Defaults
// ---------------------------------------------------------------------------------------------------------------

fn default_connector_name() -> String {
    "outbox-relay".to_owned()
}
const fn default_true() -> bool {
    true
}
const fn default_protocol_version() -> u32 {
    0
}
const fn default_status_interval_ms() -> u64 {
    10_000
}
const fn default_heartbeat_interval_ms() -> u64 {
    10_000
}
fn default_heartbeat_prefix() -> String {
    "outbox-relay.heartbeat".to_owned()
}
const fn default_spill_threshold_bytes() -> u64 {
    // 16 MiB keeps the relay well inside 128 MiB of memory through a transaction of any size (bench/README.md).
    16 << 20
}
const fn default_stall_timeout_ms() -> u64 {
    30_000
}
const fn default_reconnect_backoff_initial_ms() -> u64 {
    500
}
const fn default_reconnect_backoff_max_ms() -> u64 {
    30_000
}
fn default_tables() -> Vec<OutboxTableConfig> {
    vec![OutboxTableConfig::default()]
}
fn default_table() -> String {
    "public.outbox".to_owned()
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
fn default_checkpoint_topic() -> String {
    "outbox-relay.checkpoints".to_owned()
}
const fn default_transaction_timeout_ms() -> u64 {
    // Bounds the largest PostgreSQL transaction the relay can deliver (about this many seconds of producing, see
    // README "Limits"), and how long a relay that died without a successor holds read_committed consumers.
    300_000
}
const fn default_max_buffered_bytes() -> u64 {
    8 << 20
}
const fn default_topic_partitions() -> i32 {
    -1
}
const fn default_topic_replication_factor() -> i32 {
    -1
}
const fn default_max_batch_events() -> u64 {
    10_000
}
const fn default_max_batch_ms() -> u64 {
    100
}
const fn default_request_timeout_ms() -> u64 {
    10_000
}
fn default_metrics_listen() -> String {
    "127.0.0.1:9187".to_owned()
}
const fn default_unhealthy_after_ms() -> u64 {
    300_000
}

// ---------------------------------------------------------------------------------------------------------------
// Configuration structs
// ---------------------------------------------------------------------------------------------------------------

/// The whole configuration of one relay (one connector).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name of this connector: `[a-zA-Z0-9._-]+`, at most 200 characters. Derives the default slot, publication and
    /// Kafka `transactional.id`, and keys the checkpoint record, so it must stay the same across restarts of the
    /// same relay and be unique among relays sharing a Kafka cluster. Env: `OUTBOX_RELAY_CONNECTOR_NAME`.
    #[serde(default = "default_connector_name")]
    pub connector_name: String,
    /// PostgreSQL source.
    #[serde(default)]
    pub postgres: PostgresConfig,
    /// The outbox table(s) and the tableless (logical message) outbox.
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// Kafka sink.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// Confluent-compatible schema registry.
    #[serde(default)]
    pub schema_registry: SchemaRegistryConfig,
    /// What happens to an event that cannot be mapped, encoded or produced.
    #[serde(default)]
    pub errors: ErrorsConfig,
    /// Prometheus metrics and health endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            connector_name: default_connector_name(),
            postgres: PostgresConfig::default(),
            outbox: OutboxConfig::default(),
            kafka: KafkaConfig::default(),
            schema_registry: SchemaRegistryConfig::default(),
            errors: ErrorsConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

/// PostgreSQL source settings.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection URL, `postgres://user:password@host:port/database?sslmode=verify-full&sslrootcert=/ca.pem`.
    /// Required. `sslmode` is one of disable, prefer (default), require, verify-ca, verify-full; `sslrootcert`,
    /// `sslcert` and `sslkey` name PEM files. Env: `OUTBOX_RELAY_POSTGRES_URL`.
    #[serde(default)]
    pub url: String,
    /// Logical replication slot name (`[a-z0-9_]`, at most 63 characters). Default: the connector name lowercased,
    /// with every other character replaced by `_`.
    #[serde(default)]
    pub slot: String,
    /// Publication name (`[a-z0-9_]`, at most 63 characters). Default: derived like `slot`.
    #[serde(default)]
    pub publication: String,
    /// Create the replication slot when it does not exist.
    #[serde(default = "default_true")]
    pub create_slot: bool,
    /// Create the publication (`publish = 'insert'`, on the outbox tables) when it does not exist.
    #[serde(default = "default_true")]
    pub create_publication: bool,
    /// pgoutput protocol version: 0 picks the highest the server supports, or 1 to 4.
    #[serde(default = "default_protocol_version")]
    pub protocol_version: u32,
    /// Stream large in-progress transactions instead of waiting for their commit (needs protocol version >= 2).
    #[serde(default = "default_true")]
    pub streaming: bool,
    /// Interval between standby status updates sent to the server, in milliseconds. Keep it well below the
    /// server's `wal_sender_timeout`.
    #[serde(default = "default_status_interval_ms")]
    pub status_interval_ms: u64,
    /// While idle, write a transactional `pg_logical_emit_message` this often so the checkpoint and the slot keep
    /// advancing and the server can recycle WAL, in milliseconds; 0 disables heartbeats.
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// Logical message prefix of heartbeats.
    #[serde(default = "default_heartbeat_prefix")]
    pub heartbeat_prefix: String,
    /// Memory held by one streamed in-progress transaction before it spills to disk, in bytes.
    #[serde(default = "default_spill_threshold_bytes")]
    pub spill_threshold_bytes: u64,
    /// Directory for spilled transactions. Default (empty): the system temporary directory.
    #[serde(default)]
    pub spill_dir: PathBuf,
    /// Create the slot with `FAILOVER` so it is synchronized to standbys (PostgreSQL 17 and later).
    #[serde(default)]
    pub failover_slot: bool,
    /// How long a PostgreSQL connection may stay silent while the relay waits for it, in milliseconds: the
    /// replication connection asks the server for a reply with every status update and counts as dead after this
    /// long without any message; every SQL statement (setup, heartbeats) is abandoned after it. A connection cut
    /// without a FIN is noticed within this time.
    #[serde(default = "default_stall_timeout_ms")]
    pub stall_timeout_ms: u64,
    /// First delay before reconnecting after a lost connection, in milliseconds; doubles up to the maximum.
    #[serde(default = "default_reconnect_backoff_initial_ms")]
    pub reconnect_backoff_initial_ms: u64,
    /// Longest delay between reconnection attempts, in milliseconds.
    #[serde(default = "default_reconnect_backoff_max_ms")]
    pub reconnect_backoff_max_ms: u64,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: String::new(),
            slot: String::new(),
            publication: String::new(),
            create_slot: true,
            create_publication: true,
            protocol_version: default_protocol_version(),
            streaming: true,
            status_interval_ms: default_status_interval_ms(),
            heartbeat_interval_ms: default_heartbeat_interval_ms(),
            heartbeat_prefix: default_heartbeat_prefix(),
            spill_threshold_bytes: default_spill_threshold_bytes(),
            spill_dir: PathBuf::new(),
            failover_slot: false,
            stall_timeout_ms: default_stall_timeout_ms(),
            reconnect_backoff_initial_ms: default_reconnect_backoff_initial_ms(),
            reconnect_backoff_max_ms: default_reconnect_backoff_max_ms(),
        }
    }
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redact_url(&self.url))
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .field("create_slot", &self.create_slot)
            .field("create_publication", &self.create_publication)
            .field("protocol_version", &self.protocol_version)
            .field("streaming", &self.streaming)
            .field("status_interval_ms", &self.status_interval_ms)
            .field("heartbeat_interval_ms", &self.heartbeat_interval_ms)
            .field("heartbeat_prefix", &self.heartbeat_prefix)
            .field("spill_threshold_bytes", &self.spill_threshold_bytes)
            .field("spill_dir", &self.spill_dir)
            .field("failover_slot", &self.failover_slot)
            .field("stall_timeout_ms", &self.stall_timeout_ms)
            .field("reconnect_backoff_initial_ms", &self.reconnect_backoff_initial_ms)
            .field("reconnect_backoff_max_ms", &self.reconnect_backoff_max_ms)
            .finish()
    }
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
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            tables: default_tables(),
            messages: OutboxMessagesConfig::default(),
            unmapped_relations: UnmappedRelations::default(),
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
    /// The table, `schema.table` or `table` (schema `public`); names as stored in the catalog (case-sensitive).
    #[serde(default = "default_table")]
    pub table: String,
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
    /// Further columns copied into headers, envelope fields or used as the partition
    /// (`table.fields.additional.placement`).
    #[serde(default)]
    pub additional_fields: Vec<AdditionalField>,
}

impl Default for OutboxTableConfig {
    fn default() -> Self {
        OutboxTableConfig {
            table: default_table(),
            field_event_id: default_field_event_id(),
            field_event_key: default_field_event_key(),
            field_event_type: default_field_event_type(),
            field_event_payload: default_field_event_payload(),
            field_event_timestamp: String::new(),
            route_by_field: default_route_by_field(),
            route_topic_replacement: default_route_topic_replacement(),
            additional_fields: Vec::new(),
        }
    }
}

impl OutboxTableConfig {
    /// The table's schema (after loading, `table` is always schema-qualified).
    pub fn schema(&self) -> &str {
        self.table.split_once('.').map_or("public", |(schema, _)| schema)
    }

    /// The table's name without its schema.
    pub fn name(&self) -> &str {
        self.table.split_once('.').map_or(self.table.as_str(), |(_, name)| name)
    }

    /// The timestamp column, or `None` when events carry their commit time.
    pub fn timestamp_column(&self) -> Option<&str> {
        (!self.field_event_timestamp.is_empty()).then_some(self.field_event_timestamp.as_str())
    }

    /// The topic an event whose routing column holds `routed_by_value` goes to.
    pub fn topic_for(&self, routed_by_value: &str) -> String {
        self.route_topic_replacement.replace(ROUTED_BY_VALUE, routed_by_value)
    }

    /// Every column this mapping reads: the event columns, the routing column, the timestamp column when set and
    /// the additional fields' columns, without duplicates, in that order.
    pub fn required_columns(&self) -> Vec<&str> {
        let mut columns: Vec<&str> = Vec::new();
        let fixed = [
            self.field_event_id.as_str(),
            self.field_event_key.as_str(),
            self.field_event_type.as_str(),
            self.field_event_payload.as_str(),
            self.route_by_field.as_str(),
        ];
        let extra = self.timestamp_column().into_iter().chain(self.additional_fields.iter().map(|f| f.column.as_str()));
        for column in fixed.into_iter().chain(extra) {
            if !columns.contains(&column) {
                columns.push(column);
            }
        }
        columns
    }
}

/// An additional outbox column and where it goes.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AdditionalField {
    /// The column.
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

/// Kafka settings.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list. Required. Env: `OUTBOX_RELAY_KAFKA_BOOTSTRAP_SERVERS`.
    #[serde(default)]
    pub bootstrap_servers: String,
    /// Compacted topic holding the relay's checkpoint (the last committed PostgreSQL LSN).
    #[serde(default = "default_checkpoint_topic")]
    pub checkpoint_topic: String,
    /// Producer `transactional.id`; must be stable across restarts. Default: `outbox-relay-<connector_name>`.
    /// Env: `OUTBOX_RELAY_KAFKA_TRANSACTIONAL_ID`.
    #[serde(default)]
    pub transactional_id: String,
    /// Producer `transaction.timeout.ms`: the broker aborts a transaction left open this long. 1000 to 900000
    /// (the broker's `transaction.max.timeout.ms` default).
    #[serde(default = "default_transaction_timeout_ms")]
    pub transaction_timeout_ms: u64,
    /// Most events in one Kafka transaction (a single larger PostgreSQL transaction is never split).
    #[serde(default = "default_max_batch_events")]
    pub max_batch_events: u64,
    /// Longest time a Kafka transaction collects PostgreSQL transactions before it commits, in milliseconds.
    #[serde(default = "default_max_batch_ms")]
    pub max_batch_ms: u64,
    /// Bytes of encoded events (keys, values, headers) the pipeline may hold between reading the WAL and handing
    /// them to the producer; reading pauses beyond it. With the producer's own queue
    /// (`queue.buffering.max.kbytes`) and `postgres.spill_threshold_bytes` it bounds the relay's memory.
    #[serde(default = "default_max_buffered_bytes")]
    pub max_buffered_bytes: u64,
    /// Creation of missing event and dead-letter topics.
    #[serde(default)]
    pub topic_creation: TopicCreationConfig,
    /// librdkafka settings passed through to every Kafka client, e.g. `"security.protocol" = "SASL_SSL"`. Values
    /// may be strings, numbers or booleans. Values of keys containing `password`, `secret`, `sasl.jaas`,
    /// `sasl.oauthbearer.config` or `ssl.key` are redacted in output.
    #[serde(default, deserialize_with = "deserialize_properties")]
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: String::new(),
            checkpoint_topic: default_checkpoint_topic(),
            transactional_id: String::new(),
            transaction_timeout_ms: default_transaction_timeout_ms(),
            max_batch_events: default_max_batch_events(),
            max_batch_ms: default_max_batch_ms(),
            max_buffered_bytes: default_max_buffered_bytes(),
            topic_creation: TopicCreationConfig::default(),
            properties: BTreeMap::new(),
        }
    }
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("checkpoint_topic", &self.checkpoint_topic)
            .field("transactional_id", &self.transactional_id)
            .field("transaction_timeout_ms", &self.transaction_timeout_ms)
            .field("max_batch_events", &self.max_batch_events)
            .field("max_batch_ms", &self.max_batch_ms)
            .field("max_buffered_bytes", &self.max_buffered_bytes)
            .field("topic_creation", &self.topic_creation)
            .field("properties", &self.redacted_properties())
            .finish()
    }
}

impl KafkaConfig {
    /// The pass-through properties with secret values replaced by [`REDACTED`].
    pub fn redacted_properties(&self) -> BTreeMap<String, String> {
        self.properties
            .iter()
            .map(|(k, v)| {
                let v = if is_secret_property(k) { REDACTED.to_owned() } else { v.clone() };
                (k.clone(), v)
            })
            .collect()
    }

    /// A librdkafka client configuration with `bootstrap.servers` and the pass-through properties; callers add
    /// their role's settings (`transactional.id`, `isolation.level`, ...). Never log it: it holds secrets.
    pub fn client_config(&self) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers);
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }

    /// [`Self::transaction_timeout_ms`] as a duration.
    pub const fn transaction_timeout(&self) -> Duration {
        Duration::from_millis(self.transaction_timeout_ms)
    }

    /// [`Self::max_batch_ms`] as a duration.
    pub const fn max_batch_duration(&self) -> Duration {
        Duration::from_millis(self.max_batch_ms)
    }
}

/// How the relay creates the event and dead-letter topics it writes to when they do not exist.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TopicCreationConfig {
    /// Create a missing topic before its first record. When `false`, a missing topic is a named error (or a dead
    /// letter); the producer never lets the broker auto-create topics either way.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Partitions of a created topic; -1 = the broker's `num.partitions`.
    #[serde(default = "default_topic_partitions")]
    pub partitions: i32,
    /// Replication factor of a created topic; -1 = the broker's `default.replication.factor`.
    #[serde(default = "default_topic_replication_factor")]
    pub replication_factor: i32,
    /// Topic configuration of a created topic, e.g. `"max.message.bytes" = 2097152`.
    #[serde(default, deserialize_with = "deserialize_properties")]
    pub configs: BTreeMap<String, String>,
}

impl Default for TopicCreationConfig {
    fn default() -> Self {
        TopicCreationConfig {
            enabled: true,
            partitions: default_topic_partitions(),
            replication_factor: default_topic_replication_factor(),
            configs: BTreeMap::new(),
        }
    }
}

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

/// Schema registry settings.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRegistryConfig {
    /// Base URL of the Confluent-compatible API, e.g. `http://127.0.0.1:8081` or Apicurio's
    /// `http://host:8080/apis/ccompat/v7`. Required. May carry `user:password@` for basic auth.
    /// Env: `OUTBOX_RELAY_SCHEMA_REGISTRY_URL`.
    #[serde(default)]
    pub url: String,
    /// Basic auth user (instead of credentials in the URL). Env: `OUTBOX_RELAY_SCHEMA_REGISTRY_USERNAME`.
    #[serde(default)]
    pub username: String,
    /// Basic auth password. Env: `OUTBOX_RELAY_SCHEMA_REGISTRY_PASSWORD`.
    #[serde(default)]
    pub password: String,
    /// Record key encoding: `string` (UTF-8 aggregate id) or `avro` (an Avro string registered under
    /// `<topic>-key`).
    #[serde(default)]
    pub key_format: KeyFormat,
    /// Record value layout; only `envelope` so far.
    #[serde(default)]
    pub value_mode: ValueMode,
    /// Timeout of one registry request, in milliseconds.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

impl Default for SchemaRegistryConfig {
    fn default() -> Self {
        SchemaRegistryConfig {
            url: String::new(),
            username: String::new(),
            password: String::new(),
            key_format: KeyFormat::default(),
            value_mode: ValueMode::default(),
            request_timeout_ms: default_request_timeout_ms(),
        }
    }
}

impl fmt::Debug for SchemaRegistryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchemaRegistryConfig")
            .field("url", &redact_url(&self.url))
            .field("username", &self.username)
            .field("password", &redact_secret(&self.password))
            .field("key_format", &self.key_format)
            .field("value_mode", &self.value_mode)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .finish()
    }
}

impl SchemaRegistryConfig {
    /// The URL without credentials and without a trailing `/`; append API paths such as `/subjects` to it.
    pub fn base_url(&self) -> String {
        let trimmed = self.url.trim_end_matches('/');
        match url::Url::parse(trimmed) {
            Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
                // Both setters fail only for URLs that cannot have credentials, which validation rejected.
                let _ = url.set_username("");
                let _ = url.set_password(None);
                url.as_str().trim_end_matches('/').to_owned()
            }
            _ => trimmed.to_owned(),
        }
    }

    /// Basic auth credentials `(user, password)` from `username`/`password` or from the URL, if any.
    pub fn basic_auth(&self) -> Option<(String, String)> {
        if !self.username.is_empty() {
            return Some((self.username.clone(), self.password.clone()));
        }
        let url = url::Url::parse(&self.url).ok()?;
        if url.username().is_empty() {
            return None;
        }
        let decode = |s: &str| percent_decode(s);
        Some((decode(url.username()), url.password().map(decode).unwrap_or_default()))
    }

    /// [`Self::request_timeout_ms`] as a duration.
    pub const fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// Record key encoding.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KeyFormat {
    /// The aggregate id as UTF-8 bytes.
    #[default]
    String,
    /// The aggregate id as an Avro string in the Confluent wire format.
    Avro,
}

/// Record value layout.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ValueMode {
    /// An Avro envelope record carrying the payload and the envelope fields.
    #[default]
    Envelope,
}

/// Metrics settings.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` of the HTTP endpoint serving Prometheus `/metrics` and `/health`; empty disables it.
    /// Env: `OUTBOX_RELAY_METRICS_LISTEN`.
    #[serde(default = "default_metrics_listen")]
    pub listen: String,
    /// `/health` answers 503 once the relay has been unable to deliver for this long, in milliseconds: no
    /// replication session streaming, or records waiting for a Kafka commit that does not come (a stuck producer,
    /// a restart loop, an unreachable service). `/ready` turns 503 as soon as that starts.
    #[serde(default = "default_unhealthy_after_ms")]
    pub unhealthy_after_ms: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { listen: default_metrics_listen(), unhealthy_after_ms: default_unhealthy_after_ms() }
    }
}

impl MetricsConfig {
    /// The listen address, or `None` when the endpoint is disabled.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        if self.listen.is_empty() { None } else { self.listen.parse().ok() }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------------------------

/// Why a configuration did not load.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or has an unknown key or a value of the wrong type.
    #[error("{origin}: {section}: {detail}")]
    Parse {
        /// The file (or `<string>`).
        origin: String,
        /// The enclosing section, e.g. `[postgres]`, or `top level`.
        section: String,
        /// toml's message: position, the offending line and, for unknown keys, the key and the keys allowed.
        detail: String,
    },
    /// Values are missing or out of range; every problem found is listed.
    #[error("invalid configuration ({origin}):{}", ProblemList(problems))]
    Invalid {
        /// The file (or `<string>`).
        origin: String,
        /// The problems, each naming its key.
        problems: Vec<Problem>,
    },
}

/// One invalid value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The key, `section.key` (`outbox.tables[0].table`), with the environment variable when it supplied the value.
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for problem in self.0 {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

/// Why a PostgreSQL SQL connection could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The connection URL was rejected (only when the configuration was not loaded through this module).
    #[error("invalid postgres.url: {message}")]
    Url {
        /// What is wrong.
        message: String,
    },
    /// The TLS setup failed, e.g. an unreadable certificate file.
    #[error("cannot set up TLS for PostgreSQL: {what}")]
    Tls {
        /// What was being done.
        what: String,
        /// OpenSSL's error.
        #[source]
        source: openssl::error::ErrorStack,
    },
    /// A certificate file could not be read.
    #[error("cannot read {}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The server could not be reached or refused the login.
    #[error("cannot connect to PostgreSQL at {target}")]
    Connect {
        /// `host:port` list, for the operator.
        target: String,
        /// tokio-postgres' error.
        #[source]
        source: tokio_postgres::Error,
    },
}

impl ConnectError {
    /// Whether retrying later may help (the server may come up); setup errors and refused logins are definite.
    pub fn is_transient(&self) -> bool {
        match self {
            ConnectError::Connect { source, .. } => crate::pg::is_transient_sql_error(source),
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------------------------

impl Config {
    /// Loads the configuration file at `path` (or only defaults when `None`) and applies the process environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env = |name: &str| std::env::var(name).ok();
        match path {
            Some(path) => Config::from_file(path, env),
            None => Config::parse("", "defaults and environment", env),
        }
    }

    /// Loads the configuration file at `path`, taking environment variables from `env`.
    pub fn from_file<F>(path: &Path, env: F) -> Result<Config, ConfigError>
    where
        F: Fn(&str) -> Option<String>,
    {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::parse(&text, &path.display().to_string(), env)
    }

    /// Parses TOML text, taking environment variables from `env` (pass `|_| None` for none).
    pub fn from_toml_str<F>(text: &str, env: F) -> Result<Config, ConfigError>
    where
        F: Fn(&str) -> Option<String>,
    {
        Config::parse(text, "<string>", env)
    }

    fn parse<F>(text: &str, origin: &str, env: F) -> Result<Config, ConfigError>
    where
        F: Fn(&str) -> Option<String>,
    {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            section: enclosing_section(text, e.span()),
            detail: scrub_secrets(e.to_string().trim_end()),
        })?;
        let mut from_env: BTreeMap<&'static str, &'static str> = BTreeMap::new();
        for &(var, key) in ENV_OVERRIDES {
            if let Some(value) = env(var).filter(|v| !v.is_empty()) {
                *config.env_target(key) = value;
                from_env.insert(key, var);
            }
        }
        config.fill_derived_defaults();
        let mut problems = Vec::new();
        config.validate(&mut problems);
        if problems.is_empty() {
            return Ok(config);
        }
        for problem in &mut problems {
            if let Some(var) = from_env.get(problem.key.as_str()) {
                problem.key = format!("{} (from environment variable {var})", problem.key);
            }
        }
        Err(ConfigError::Invalid { origin: origin.to_owned(), problems })
    }

    fn env_target(&mut self, key: &str) -> &mut String {
        match key {
            "postgres.url" => &mut self.postgres.url,
            "kafka.bootstrap_servers" => &mut self.kafka.bootstrap_servers,
            "kafka.transactional_id" => &mut self.kafka.transactional_id,
            "schema_registry.url" => &mut self.schema_registry.url,
            "schema_registry.username" => &mut self.schema_registry.username,
            "schema_registry.password" => &mut self.schema_registry.password,
            "metrics.listen" => &mut self.metrics.listen,
            _ => &mut self.connector_name,
        }
    }

    fn fill_derived_defaults(&mut self) {
        let derived = derive_pg_identifier(&self.connector_name);
        if self.postgres.slot.is_empty() {
            self.postgres.slot.clone_from(&derived);
        }
        if self.postgres.publication.is_empty() {
            self.postgres.publication = derived;
        }
        if self.postgres.spill_dir.as_os_str().is_empty() {
            self.postgres.spill_dir = std::env::temp_dir();
        }
        if self.kafka.transactional_id.is_empty() {
            self.kafka.transactional_id = format!("outbox-relay-{}", self.connector_name);
        }
        if self.errors.dead_letter_topic.is_empty() {
            self.errors.dead_letter_topic = format!("{}.dead-letter", self.connector_name);
        }
        for table in &mut self.outbox.tables {
            if !table.table.is_empty() && !table.table.contains('.') {
                table.table = format!("public.{}", table.table);
            }
            for field in &mut table.additional_fields {
                if field.alias.is_empty() {
                    field.alias.clone_from(&field.column);
                }
            }
        }
    }

    fn validate(&self, problems: &mut Vec<Problem>) {
        let mut report = |key: &str, message: String| problems.push(Problem { key: key.to_owned(), message });
        validate_connector_name(&self.connector_name, &mut report);
        self.postgres.validate(&mut report);
        self.validate_outbox(&mut report);
        self.kafka.validate(&mut report);
        self.schema_registry.validate(&mut report);
        validate_topic(&self.errors.dead_letter_topic, "errors.dead_letter_topic", &mut report);
        if self.errors.dead_letter_topic == self.kafka.checkpoint_topic {
            report("errors.dead_letter_topic", "must differ from kafka.checkpoint_topic".to_owned());
        }
        if self.metrics.unhealthy_after_ms == 0 {
            report("metrics.unhealthy_after_ms", "must be at least 1".to_owned());
        }
        if !self.metrics.listen.is_empty() && self.metrics.listen.parse::<SocketAddr>().is_err() {
            report(
                "metrics.listen",
                format!(
                    "`{}` is not an address like 127.0.0.1:9187 or [::]:9187 (empty disables)",
                    self.metrics.listen
                ),
            );
        }
    }

    fn validate_outbox(&self, report: &mut impl FnMut(&str, String)) {
        let outbox = &self.outbox;
        if outbox.tables.is_empty() && !outbox.messages.enabled {
            report(
                "outbox.tables",
                "no outbox table and [outbox.messages] disabled: there is nothing to relay; configure a table or set \
                 outbox.messages.enabled = true"
                    .to_owned(),
            );
        }
        let mut seen = BTreeSet::new();
        for (i, table) in outbox.tables.iter().enumerate() {
            let key = |k: &str| format!("outbox.tables[{i}].{k}");
            validate_table_name(&table.table, &key("table"), report);
            if !seen.insert(table.table.as_str()) {
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
            validate_topic_template(&table.route_topic_replacement, &key("route_topic_replacement"), report);
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
        let messages = &outbox.messages;
        if messages.enabled {
            if messages.prefix.is_empty() {
                report("outbox.messages.prefix", "must not be empty when outbox.messages.enabled = true".to_owned());
            }
            if messages.prefix == self.postgres.heartbeat_prefix {
                report(
                    "outbox.messages.prefix",
                    format!("`{}` is also postgres.heartbeat_prefix; choose a different prefix", messages.prefix),
                );
            }
        }
    }

    /// Non-fatal observations worth a warning log line: settings that are legal but probably not intended.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for (i, table) in self.outbox.tables.iter().enumerate() {
            if !table.route_topic_replacement.contains(ROUTED_BY_VALUE) {
                warnings.push(format!(
                    "outbox.tables[{i}].route_topic_replacement `{}` has no {ROUTED_BY_VALUE}: every event of {} goes to \
                     that one topic",
                    table.route_topic_replacement, table.table
                ));
            }
        }
        if self.postgres.protocol_version == 1 && self.postgres.streaming {
            warnings.push(
                "postgres.streaming is ignored with protocol_version = 1 (streaming needs 2 or higher): large \
                 transactions are decoded only after they commit"
                    .to_owned(),
            );
        }
        if self.postgres.status_interval_ms >= 60_000 {
            warnings.push(format!(
                "postgres.status_interval_ms = {} is not below PostgreSQL's default wal_sender_timeout (60 s); the \
                 server may drop the connection",
                self.postgres.status_interval_ms
            ));
        }
        if self.schema_registry.url.starts_with("http://") && self.schema_registry.basic_auth().is_some() {
            warnings.push("schema registry credentials are sent over plain http".to_owned());
        }
        warnings
    }

    /// The PostgreSQL connection URL exactly as configured (it holds the password: never log it, see
    /// [`redact_url`]).
    pub fn postgres_url(&self) -> String {
        self.postgres.url.clone()
    }

    /// See [`PostgresConfig::tokio_postgres_config`].
    pub fn tokio_postgres_config(&self) -> Result<tokio_postgres::Config, ConnectError> {
        self.postgres.tokio_postgres_config()
    }

    /// See [`PostgresConfig::connect_sql`].
    pub async fn connect_sql(&self) -> Result<tokio_postgres::Client, ConnectError> {
        self.postgres.connect_sql().await
    }

    /// A copy with every secret replaced by [`REDACTED`], for display (`print-config`).
    pub fn redacted(&self) -> Config {
        let mut copy = self.clone();
        copy.postgres.url = redact_url(&self.postgres.url);
        copy.kafka.properties = self.kafka.redacted_properties();
        copy.schema_registry.url = redact_url(&self.schema_registry.url);
        copy.schema_registry.password = redact_secret(&self.schema_registry.password);
        copy
    }

    /// The redacted configuration as TOML.
    pub fn to_redacted_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string_pretty(&self.redacted())
    }
}

/// The default slot and publication name for a connector: lowercased, every character outside `[a-z0-9_]`
/// replaced by `_`, cut to 63 characters.
pub fn derive_pg_identifier(connector_name: &str) -> String {
    connector_name
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' { c } else { '_' })
        .take(MAX_PG_IDENTIFIER_LEN)
        .collect()
}

/// The `[section]` or `[[section]]` header above byte `span.start` of `text`, for error messages.
fn enclosing_section(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let end = span.map_or(0, |s| s.start).min(text.len());
    let before = text.get(..end).unwrap_or("");
    before
        .lines()
        .rev()
        .map(str::trim)
        .find(|line| line.starts_with('['))
        .map(|line| {
            // Keep the header, drop a trailing comment.
            let close = if line.starts_with("[[") { "]]" } else { "]" };
            match line.find(close) {
                Some(i) => format!("section {}", &line[..i + close.len()]),
                None => format!("section {line}"),
            }
        })
        .unwrap_or_else(|| "top level".to_owned())
}

fn validate_connector_name(name: &str, report: &mut impl FnMut(&str, String)) {
    if name.is_empty() {
        report("connector_name", "must not be empty".to_owned());
    } else if name.len() > MAX_CONNECTOR_NAME_LEN {
        report("connector_name", format!("is {} characters long; at most {MAX_CONNECTOR_NAME_LEN}", name.len()));
    } else if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        report("connector_name", format!("`{name}` contains {c:?}; use only letters, digits, '.', '_' and '-'"));
    }
}

fn validate_pg_identifier(value: &str, key: &str, report: &mut impl FnMut(&str, String)) {
    if value.is_empty() {
        report(key, "must not be empty".to_owned());
    } else if value.len() > MAX_PG_IDENTIFIER_LEN {
        report(key, format!("`{value}` is longer than {MAX_PG_IDENTIFIER_LEN} characters"));
    } else if let Some(c) = value.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')) {
        report(key, format!("`{value}` contains {c:?}; use only lowercase letters, digits and '_'"));
    }
}

fn validate_table_name(value: &str, key: &str, report: &mut impl FnMut(&str, String)) {
    let parts: Vec<&str> = value.split('.').collect();
    let valid_part = |p: &str| {
        let mut chars = p.chars();
        chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
            && chars.all(|c| c.is_alphanumeric() || c == '_' || c == '$')
            && p.len() <= MAX_PG_IDENTIFIER_LEN
    };
    if parts.len() != 2 || !parts.iter().all(|p| valid_part(p)) {
        report(
            key,
            format!("`{value}` is not a table name like `public.outbox` or `outbox` (letters, digits, '_', '$')"),
        );
    }
}

fn is_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn validate_topic(value: &str, key: &str, report: &mut impl FnMut(&str, String)) {
    if value.is_empty() {
        report(key, "must name a topic".to_owned());
    } else if value.len() > MAX_TOPIC_LEN {
        report(key, format!("topic names are at most {MAX_TOPIC_LEN} characters"));
    } else if value == "." || value == ".." {
        report(key, format!("`{value}` is not a legal topic name"));
    } else if let Some(c) = value.chars().find(|c| !is_topic_char(*c)) {
        report(key, format!("`{value}` contains {c:?}; topic names use only letters, digits, '.', '_' and '-'"));
    }
}

fn validate_topic_template(value: &str, key: &str, report: &mut impl FnMut(&str, String)) {
    if value.is_empty() {
        report(key, format!("must be a topic name template such as `outbox.event.{ROUTED_BY_VALUE}`"));
        return;
    }
    let literal = value.replace(ROUTED_BY_VALUE, "");
    if let Some(c) = literal.chars().find(|c| !is_topic_char(*c)) {
        report(
            key,
            format!(
                "`{value}` contains {c:?}; outside {ROUTED_BY_VALUE} topic names use only letters, digits, '.', '_' \
                 and '-'"
            ),
        );
    } else if literal.len() > MAX_TOPIC_LEN {
        report(key, format!("topic names are at most {MAX_TOPIC_LEN} characters"));
    }
}

impl PostgresConfig {
    fn validate(&self, report: &mut impl FnMut(&str, String)) {
        if self.url.is_empty() {
            report(
                "postgres.url",
                "is required: set url in [postgres] or the environment variable OUTBOX_RELAY_POSTGRES_URL".to_owned(),
            );
        } else if let Err(message) = self.connection_parts() {
            report("postgres.url", message);
        }
        validate_pg_identifier(&self.slot, "postgres.slot", report);
        validate_pg_identifier(&self.publication, "postgres.publication", report);
        if self.protocol_version > 4 {
            report(
                "postgres.protocol_version",
                format!(
                    "{} is not a pgoutput protocol version; use 1 to 4, or 0 for the highest the server supports",
                    self.protocol_version
                ),
            );
        }
        if self.status_interval_ms == 0 {
            report("postgres.status_interval_ms", "must be at least 1".to_owned());
        }
        if self.heartbeat_interval_ms > 0 && self.heartbeat_prefix.is_empty() {
            report("postgres.heartbeat_prefix", "must not be empty while heartbeats are enabled".to_owned());
        }
        if self.spill_threshold_bytes == 0 {
            report("postgres.spill_threshold_bytes", "must be at least 1".to_owned());
        }
        if self.stall_timeout_ms < 2 * self.status_interval_ms {
            report(
                "postgres.stall_timeout_ms",
                format!(
                    "{} is below twice status_interval_ms ({}): the server's replies to the status updates must have \
                     time to arrive",
                    self.stall_timeout_ms, self.status_interval_ms
                ),
            );
        }
        if self.reconnect_backoff_initial_ms == 0 {
            report("postgres.reconnect_backoff_initial_ms", "must be at least 1".to_owned());
        }
        if self.reconnect_backoff_max_ms < self.reconnect_backoff_initial_ms {
            report(
                "postgres.reconnect_backoff_max_ms",
                format!(
                    "{} is below reconnect_backoff_initial_ms ({}); raise it or lower the initial backoff",
                    self.reconnect_backoff_max_ms, self.reconnect_backoff_initial_ms
                ),
            );
        }
    }

    /// The TLS settings of [`Self::url`].
    pub fn tls(&self) -> Result<PgTls, ConnectError> {
        self.connection_parts().map(|(_, tls)| tls).map_err(|message| ConnectError::Url { message })
    }

    /// The server(s) as `host:port` for messages, e.g. `127.0.0.1:5432`.
    pub fn target(&self) -> String {
        match self.connection_parts() {
            Ok((config, _)) => describe_target(&config),
            Err(_) => "<invalid postgres.url>".to_owned(),
        }
    }

    /// [`Self::url`] as a tokio-postgres configuration: `sslmode` mapped to tokio-postgres' `SslMode` (`verify-ca`
    /// and `verify-full` become `Require`; the verification itself is in [`Self::tls_connector`]), and
    /// `application_name` set to `outbox-relay` unless the URL sets it.
    pub fn tokio_postgres_config(&self) -> Result<tokio_postgres::Config, ConnectError> {
        let (mut config, _) = self.connection_parts().map_err(|message| ConnectError::Url { message })?;
        if config.get_application_name().is_none() {
            config.application_name("outbox-relay");
        }
        Ok(config)
    }

    /// An OpenSSL connector for tokio-postgres that verifies what `sslmode` asks for: nothing for `prefer` and
    /// `require` (unless `sslrootcert` is set), the chain for `verify-ca`, the chain and the host name for
    /// `verify-full`. With `sslrootcert` only that file's certificates are trusted; without it the system's.
    pub fn tls_connector(&self) -> Result<MakeTlsConnector, ConnectError> {
        self.tls()?.connector()
    }

    /// Opens an ordinary (non-replication) connection and spawns its connection task.
    pub async fn connect_sql(&self) -> Result<tokio_postgres::Client, ConnectError> {
        let config = self.tokio_postgres_config()?;
        connect_with(&config, self.tls_connector()?).await
    }

    /// Like [`Self::connect_sql`], with `connect_timeout` set to `timeout` unless the URL sets it.
    pub async fn connect_sql_timeout(&self, timeout: Duration) -> Result<tokio_postgres::Client, ConnectError> {
        let mut config = self.tokio_postgres_config()?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(timeout);
        }
        connect_with(&config, self.tls_connector()?).await
    }

    /// Splits the URL into a tokio-postgres configuration (without the TLS parameters) and the TLS settings.
    fn connection_parts(&self) -> Result<(tokio_postgres::Config, PgTls), String> {
        let url = self.url.as_str();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(format!(
                "`{}` is not a URL starting with postgres:// or postgresql://, e.g. \
                 postgres://user:password@host:5432/database?sslmode=verify-full",
                redact_url(url)
            ));
        }
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, query),
            None => (url, ""),
        };
        let mut tls = PgTls { mode: PgSslMode::Prefer, root_cert: None, client_cert: None, client_key: None };
        let mut kept = Vec::new();
        for (raw, (key, value)) in
            query.split('&').filter(|p| !p.is_empty()).zip(url::form_urlencoded::parse(query.as_bytes()))
        {
            match &*key {
                "sslmode" => {
                    tls.mode = value.parse().map_err(|()| {
                        format!("sslmode `{value}` is not one of disable, prefer, require, verify-ca, verify-full")
                    })?;
                }
                "sslrootcert" => tls.root_cert = Some(PathBuf::from(&*value)),
                "sslcert" => tls.client_cert = Some(PathBuf::from(&*value)),
                "sslkey" => tls.client_key = Some(PathBuf::from(&*value)),
                _ => kept.push(raw),
            }
        }
        let stripped = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
        let mut config = tokio_postgres::Config::from_str(&stripped)
            .map_err(|e| format!("`{}` is not a valid connection URL: {e}", redact_url(url)))?;
        if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
            return Err(format!("`{}` names no host; add one, e.g. postgres://user@host:5432/db", redact_url(url)));
        }
        if tls.client_cert.is_some() != tls.client_key.is_some() {
            return Err("sslcert and sslkey must be given together".to_owned());
        }
        for (name, path) in
            [("sslrootcert", &tls.root_cert), ("sslcert", &tls.client_cert), ("sslkey", &tls.client_key)]
        {
            if let Some(path) = path {
                if !path.is_file() {
                    return Err(format!("{name} file {} does not exist or is not a file", path.display()));
                }
            }
        }
        config.ssl_mode(match tls.mode {
            PgSslMode::Disable => tokio_postgres::config::SslMode::Disable,
            PgSslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
        Ok((config, tls))
    }

    /// [`Self::status_interval_ms`] as a duration.
    pub const fn status_interval(&self) -> Duration {
        Duration::from_millis(self.status_interval_ms)
    }

    /// [`Self::heartbeat_interval_ms`] as a duration, or `None` when heartbeats are disabled.
    pub const fn heartbeat_interval(&self) -> Option<Duration> {
        if self.heartbeat_interval_ms == 0 { None } else { Some(Duration::from_millis(self.heartbeat_interval_ms)) }
    }

    /// [`Self::reconnect_backoff_initial_ms`] as a duration.
    pub const fn reconnect_backoff_initial(&self) -> Duration {
        Duration::from_millis(self.reconnect_backoff_initial_ms)
    }

    /// [`Self::reconnect_backoff_max_ms`] as a duration.
    pub const fn reconnect_backoff_max(&self) -> Duration {
        Duration::from_millis(self.reconnect_backoff_max_ms)
    }
}

async fn connect_with(
    config: &tokio_postgres::Config,
    tls: MakeTlsConnector,
) -> Result<tokio_postgres::Client, ConnectError> {
    let (client, connection) = config
        .connect(tls)
        .await
        .map_err(|source| ConnectError::Connect { target: describe_target(config), source })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "postgres sql connection closed with an error");
        }
    });
    Ok(client)
}

/// `host:port[,host:port...]` of a tokio-postgres configuration.
fn describe_target(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let port = |i: usize| ports.get(i).or_else(|| ports.first()).copied().unwrap_or(5432);
    let hosts: Vec<String> = if config.get_hosts().is_empty() {
        config.get_hostaddrs().iter().enumerate().map(|(i, a)| format!("{a}:{}", port(i))).collect()
    } else {
        config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| match host {
                tokio_postgres::config::Host::Tcp(h) => format!("{h}:{}", port(i)),
                tokio_postgres::config::Host::Unix(p) => {
                    format!("{}/.s.PGSQL.{}", p.display(), port(i))
                }
            })
            .collect()
    };
    hosts.join(",")
}

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PgSslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, unverified.
    Prefer,
    /// TLS, unverified unless `sslrootcert` is set.
    Require,
    /// TLS, certificate chain verified.
    VerifyCa,
    /// TLS, certificate chain and host name verified.
    VerifyFull,
}

impl FromStr for PgSslMode {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "disable" => PgSslMode::Disable,
            "prefer" => PgSslMode::Prefer,
            "require" => PgSslMode::Require,
            "verify-ca" => PgSslMode::VerifyCa,
            "verify-full" => PgSslMode::VerifyFull,
            _ => return Err(()),
        })
    }
}

/// TLS settings taken from a PostgreSQL URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgTls {
    /// `sslmode`.
    pub mode: PgSslMode,
    /// `sslrootcert`: PEM file of the trusted CA certificates.
    pub root_cert: Option<PathBuf>,
    /// `sslcert`: PEM client certificate (chain).
    pub client_cert: Option<PathBuf>,
    /// `sslkey`: PEM private key of the client certificate.
    pub client_key: Option<PathBuf>,
}

impl PgTls {
    /// Whether the server's certificate chain is verified.
    pub fn verifies_chain(&self) -> bool {
        match self.mode {
            PgSslMode::Disable | PgSslMode::Prefer => false,
            PgSslMode::Require => self.root_cert.is_some(),
            PgSslMode::VerifyCa | PgSslMode::VerifyFull => true,
        }
    }

    /// An OpenSSL connector for tokio-postgres implementing these settings (see
    /// [`PostgresConfig::tls_connector`]).
    pub fn connector(&self) -> Result<MakeTlsConnector, ConnectError> {
        let tls_err = |what: &str| {
            let what = what.to_owned();
            move |source| ConnectError::Tls { what, source }
        };
        let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(tls_err("create an SSL context"))?;
        if let Some(path) = &self.root_cert {
            let pem = std::fs::read(path).map_err(|source| ConnectError::ReadFile { path: path.clone(), source })?;
            let certs =
                X509::stack_from_pem(&pem).map_err(tls_err(&format!("parse sslrootcert {} as PEM", path.display())))?;
            let mut store = X509StoreBuilder::new().map_err(tls_err("create a certificate store"))?;
            for cert in certs {
                store.add_cert(cert).map_err(tls_err(&format!("add a certificate of {}", path.display())))?;
            }
            builder.set_cert_store(store.build());
        }
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            builder.set_certificate_chain_file(cert).map_err(tls_err(&format!("load sslcert {}", cert.display())))?;
            builder
                .set_private_key_file(key, SslFiletype::PEM)
                .map_err(tls_err(&format!("load sslkey {}", key.display())))?;
        }
        let verify_chain = self.verifies_chain();
        builder.set_verify(if verify_chain { SslVerifyMode::PEER } else { SslVerifyMode::NONE });
        let verify_host = self.mode == PgSslMode::VerifyFull;
        let mut connector = MakeTlsConnector::new(builder.build());
        connector.set_callback(move |connect, _domain| {
            connect.set_verify_hostname(verify_host);
            if !verify_chain {
                connect.set_verify(SslVerifyMode::NONE);
            }
            Ok(())
        });
        Ok(connector)
    }
}

impl KafkaConfig {
    fn validate(&self, report: &mut impl FnMut(&str, String)) {
        if self.bootstrap_servers.trim().is_empty() {
            report(
                "kafka.bootstrap_servers",
                "is required: set bootstrap_servers in [kafka] or the environment variable \
                 OUTBOX_RELAY_KAFKA_BOOTSTRAP_SERVERS (host:port[,host:port...])"
                    .to_owned(),
            );
        } else {
            for server in self.bootstrap_servers.split(',').map(str::trim) {
                let port_ok = server
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
                if !port_ok {
                    report(
                        "kafka.bootstrap_servers",
                        format!("`{server}` is not host:port; write e.g. `broker1:9092,broker2:9092`"),
                    );
                }
            }
        }
        validate_topic(&self.checkpoint_topic, "kafka.checkpoint_topic", report);
        if self.transactional_id.trim().is_empty() {
            report("kafka.transactional_id", "must not be blank".to_owned());
        }
        if !(1_000..=900_000).contains(&self.transaction_timeout_ms) {
            report(
                "kafka.transaction_timeout_ms",
                format!(
                    "{} is outside 1000..=900000 (the broker's default transaction.max.timeout.ms is 900000)",
                    self.transaction_timeout_ms
                ),
            );
        }
        if self.max_batch_events == 0 {
            report("kafka.max_batch_events", "must be at least 1".to_owned());
        }
        if self.max_batch_ms >= self.transaction_timeout_ms {
            report(
                "kafka.max_batch_ms",
                format!(
                    "{} is not below kafka.transaction_timeout_ms ({}); the broker would abort the batch",
                    self.max_batch_ms, self.transaction_timeout_ms
                ),
            );
        }
        if self.max_buffered_bytes < 1 << 16 || self.max_buffered_bytes > u64::from(u32::MAX) {
            report(
                "kafka.max_buffered_bytes",
                format!("{} is outside 65536..=4294967295 bytes", self.max_buffered_bytes),
            );
        }
        let creation = &self.topic_creation;
        if creation.partitions == 0 || creation.partitions < -1 {
            report("kafka.topic_creation.partitions", "must be at least 1, or -1 for the broker's default".to_owned());
        }
        if creation.replication_factor == 0 || creation.replication_factor < -1 {
            report(
                "kafka.topic_creation.replication_factor",
                "must be at least 1, or -1 for the broker's default".to_owned(),
            );
        }
        for (key, hint) in RESERVED_KAFKA_PROPERTIES {
            if self.properties.contains_key(*key) {
                report(&format!("kafka.properties.\"{key}\""), format!("cannot be set here: {hint}"));
            }
        }
    }
}

impl SchemaRegistryConfig {
    fn validate(&self, report: &mut impl FnMut(&str, String)) {
        const KEY: &str = "schema_registry.url";
        if self.url.is_empty() {
            report(
                KEY,
                "is required: set url in [schema_registry] or the environment variable \
                 OUTBOX_RELAY_SCHEMA_REGISTRY_URL"
                    .to_owned(),
            );
        } else {
            match url::Url::parse(&self.url) {
                Err(e) => report(KEY, format!("`{}` is not a URL: {e}", redact_url(&self.url))),
                Ok(url) if !matches!(url.scheme(), "http" | "https") => {
                    report(KEY, format!("`{}` must start with http:// or https://", redact_url(&self.url)));
                }
                Ok(url) if url.host().is_none() => {
                    report(KEY, format!("`{}` names no host", redact_url(&self.url)));
                }
                Ok(url) if url.query().is_some() || url.fragment().is_some() => {
                    report(KEY, "must not have a query or fragment; give the API's base URL".to_owned());
                }
                Ok(url) if !url.username().is_empty() && !self.username.is_empty() => report(
                    KEY,
                    "carries credentials and schema_registry.username is set too; use one of them".to_owned(),
                ),
                Ok(_) => {}
            }
        }
        if self.username.is_empty() && !self.password.is_empty() {
            report("schema_registry.password", "is set but schema_registry.username is empty".to_owned());
        }
        if self.request_timeout_ms == 0 {
            report("schema_registry.request_timeout_ms", "must be at least 1".to_owned());
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// kafka.properties values
// ---------------------------------------------------------------------------------------------------------------

fn deserialize_properties<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let map: BTreeMap<String, PropertyValue> = BTreeMap::deserialize(deserializer)?;
    Ok(map.into_iter().map(|(k, v)| (k, v.0)).collect())
}

/// A librdkafka property value written as a TOML string, integer, float or boolean.
struct PropertyValue(String);

impl<'de> Deserialize<'de> for PropertyValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = PropertyValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean (librdkafka property value)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PropertyValue, E> {
                Ok(PropertyValue(v.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PropertyValue, E> {
                Ok(PropertyValue(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PropertyValue, E> {
                Ok(PropertyValue(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<PropertyValue, E> {
                Ok(PropertyValue(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<PropertyValue, E> {
                Ok(PropertyValue(v.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Redaction
// ---------------------------------------------------------------------------------------------------------------

/// Whether a librdkafka property holds a secret: its key contains `password`, `secret`, `sasl.jaas`,
/// `sasl.oauthbearer.config` or `ssl.key` (case-insensitive).
pub fn is_secret_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "sasl.jaas", "sasl.oauthbearer.config", "ssl.key"].iter().any(|s| key.contains(s))
}

/// [`REDACTED`] for a non-empty secret, the empty string for an empty one (so "not set" stays visible).
fn redact_secret(secret: &str) -> String {
    if secret.is_empty() { String::new() } else { REDACTED.to_owned() }
}

/// `url` with the password of its user info and the values of query parameters whose name contains `password`
/// replaced by `***`, for logs and messages. Works on any `scheme://user:pass@host...` string, including
/// multi-host PostgreSQL URLs that a strict URL parser rejects; a string that is not a URL comes back unchanged
/// apart from `user:pass@` prefixes.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    // The user info ends at the last '@' of the authority; a password with an unencoded '/', '?' or '#' ends the
    // authority early, so then take the last '@' anywhere when what precedes it looks like `user:...`.
    let at = rest.get(..authority_end).and_then(|authority| authority.rfind('@')).or_else(|| {
        rest.rfind('@').filter(|&at| {
            rest.get(..at)
                .and_then(|userinfo| userinfo.split_once(':'))
                .is_some_and(|(user, _)| !user.contains(['/', '?', '#']))
        })
    });
    let (userinfo, after) = match at {
        Some(at) => (rest.get(..at), rest.get(at + 1..).unwrap_or("")),
        None => (None, rest),
    };
    let userinfo = match userinfo {
        Some(userinfo) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:{REDACTED}@"),
            None => format!("{userinfo}@"),
        },
        None => String::new(),
    };
    let host_end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (host, tail) = after.split_at(host_end);
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if k.to_ascii_lowercase().contains("password") => {
                        format!("{k}={REDACTED}")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            let mut out = format!("{path}?{}", query.join("&"));
            if let Some(f) = fragment {
                out.push('#');
                out.push_str(f);
            }
            out
        }
        None => tail.to_owned(),
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{userinfo}{host}{tail}"),
        None => format!("{userinfo}{host}{tail}"),
    }
}

/// `text` (a TOML error with a quoted source line) with secrets removed: the value of a line whose key names a
/// secret (see [`is_secret_property`]), and the password of every URL.
fn scrub_secrets(text: &str) -> String {
    let scrub_line = |line: &str| {
        if let Some((key, _)) = line.split_once('=') {
            if is_secret_property(key) {
                return format!("{key}= {REDACTED}");
            }
        }
        let mut out = String::with_capacity(line.len());
        let mut token = String::new();
        let flush = |token: &mut String, out: &mut String| {
            if token.contains("://") || token.contains('@') {
                out.push_str(&redact_url(token));
            } else {
                out.push_str(token);
            }
            token.clear();
        };
        for c in line.chars() {
            if c.is_whitespace() || matches!(c, '"' | '\'' | '`') {
                flush(&mut token, &mut out);
                out.push(c);
            } else {
                token.push(c);
            }
        }
        flush(&mut token, &mut out);
        out
    };
    text.lines().map(scrub_line).collect::<Vec<_>>().join("\n")
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

    use super::*;

    const MINIMAL: &str = r#"
        [postgres]
        url = "postgres://relay:pg-secret@db.example:5432/app?sslmode=disable"
        [kafka]
        bootstrap_servers = "k1:9092,k2:9092"
        [schema_registry]
        url = "http://registry:8081"
    "#;

    fn minimal() -> Config {
        Config::from_toml_str(MINIMAL, |_| None).unwrap()
    }

    fn problems(text: &str) -> Vec<Problem> {
        match Config::from_toml_str(text, |_| None) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected an invalid configuration, got {other:?}"),
        }
    }

    fn problem_keys(text: &str) -> Vec<String> {
        problems(text).into_iter().map(|p| p.key).collect()
    }

    #[test]
    fn minimal_config_gets_every_default() {
        let c = minimal();
        assert_eq!(c.connector_name, "outbox-relay");
        assert_eq!(c.postgres.slot, "outbox_relay");
        assert_eq!(c.postgres.publication, "outbox_relay");
        assert_eq!(c.kafka.transactional_id, "outbox-relay-outbox-relay");
        assert_eq!(c.postgres.spill_dir, std::env::temp_dir());
        assert_eq!(c.outbox.tables, vec![OutboxTableConfig::default()]);
        assert_eq!(c.outbox.tables[0].schema(), "public");
        assert_eq!(c.outbox.tables[0].name(), "outbox");
        assert_eq!(c.outbox.tables[0].topic_for("Order"), "outbox.event.Order");
        assert_eq!(c.metrics.listen_addr(), Some("127.0.0.1:9187".parse().unwrap()));
        assert_eq!(c.postgres.heartbeat_interval(), Some(Duration::from_secs(10)));
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    }

    #[test]
    fn derived_names_follow_the_connector_name() {
        let c = Config::from_toml_str(&format!("connector_name = \"Billing.EU-1\"\n{MINIMAL}"), |_| None).unwrap();
        assert_eq!(c.postgres.slot, "billing_eu_1");
        assert_eq!(c.postgres.publication, "billing_eu_1");
        assert_eq!(c.kafka.transactional_id, "outbox-relay-Billing.EU-1");
        assert_eq!(derive_pg_identifier(&"x".repeat(200)).len(), 63);
    }

    #[test]
    fn unknown_key_names_key_and_section() {
        let text = format!("{MINIMAL}\n[kafka.properties]\n\"a\" = \"b\"\n[metrics]\nlisten = \"\"\nlistn = 1\n");
        let err = Config::from_toml_str(&text, |_| None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("listn"), "{msg}");
        assert!(msg.contains("section [metrics]"), "{msg}");
        let top = Config::from_toml_str("bogus = 1\n[postgres]\n", |_| None).unwrap_err().to_string();
        assert!(top.contains("top level") && top.contains("bogus"), "{top}");
    }

    #[test]
    fn env_overrides_file_and_is_named_in_errors() {
        let env = |name: &str| match name {
            "OUTBOX_RELAY_POSTGRES_URL" => Some("postgres://u@other:6432/db".to_owned()),
            "OUTBOX_RELAY_CONNECTOR_NAME" => Some("from-env".to_owned()),
            "OUTBOX_RELAY_METRICS_LISTEN" => Some(String::new()),
            _ => None,
        };
        let c = Config::from_toml_str(MINIMAL, env).unwrap();
        assert_eq!(c.postgres.url, "postgres://u@other:6432/db");
        assert_eq!(c.connector_name, "from-env");
        assert_eq!(c.postgres.slot, "from_env");
        assert_eq!(c.metrics.listen, "127.0.0.1:9187", "an empty variable does not override");

        let bad = |name: &str| (name == "OUTBOX_RELAY_KAFKA_BOOTSTRAP_SERVERS").then(|| "nope".to_owned());
        let Err(ConfigError::Invalid { problems, .. }) = Config::from_toml_str(MINIMAL, bad) else {
            panic!("expected invalid")
        };
        assert_eq!(
            problems[0].key,
            "kafka.bootstrap_servers (from environment variable OUTBOX_RELAY_KAFKA_BOOTSTRAP_SERVERS)"
        );
    }

    #[test]
    fn missing_required_values_name_key_and_env_var() {
        let problems = problems("");
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["postgres.url", "kafka.bootstrap_servers", "schema_registry.url"]);
        assert!(problems[0].message.contains("OUTBOX_RELAY_POSTGRES_URL"));
    }

    #[test]
    fn invalid_values_are_all_reported() {
        let text = r#"
            connector_name = "bad name"
            [postgres]
            url = "postgres://u:p@h/db?sslmode=verify-everything"
            protocol_version = 5
            reconnect_backoff_initial_ms = 100
            reconnect_backoff_max_ms = 10
            [[outbox.tables]]
            table = "outbox"
            route_topic_replacement = "events/${routedByValue}"
            additional_fields = [
                { column = "a", placement = "partition" },
                { column = "b", placement = "partition" },
            ]
            [[outbox.tables]]
            table = "public.outbox"
            [kafka]
            bootstrap_servers = "k1"
            max_batch_events = 0
            transaction_timeout_ms = 100
            checkpoint_topic = "bad topic"
            [kafka.properties]
            "transactional.id" = "x"
            [schema_registry]
            url = "ftp://registry"
            password = "pw"
            [metrics]
            listen = "nowhere"
        "#;
        let problems = problems(text);
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for expected in [
            "connector_name",
            "postgres.url",
            "postgres.protocol_version",
            "postgres.reconnect_backoff_max_ms",
            "outbox.tables[0].route_topic_replacement",
            "outbox.tables[0].additional_fields",
            "outbox.tables[1].table",
            "kafka.bootstrap_servers",
            "kafka.checkpoint_topic",
            "kafka.transaction_timeout_ms",
            "kafka.max_batch_events",
            "kafka.properties.\"transactional.id\"",
            "schema_registry.url",
            "schema_registry.password",
            "metrics.listen",
        ] {
            assert!(keys.contains(&expected), "{expected} missing from {problems:#?}");
        }
        let sslmode = problems.iter().find(|p| p.key == "postgres.url").unwrap();
        assert!(sslmode.message.contains("verify-everything"), "{sslmode}");
        let dup = problems.iter().find(|p| p.key == "outbox.tables[1].table").unwrap();
        assert!(dup.message.contains("twice"), "{dup}");
        let err = Config::from_toml_str(text, |_| None).unwrap_err().to_string();
        assert!(!err.contains(":p@"), "password leaked into {err}");
    }

    #[test]
    fn redacted_toml_parses_back_to_the_same_configuration() {
        let text = format!(
            "{MINIMAL}\n[[outbox.tables]]\nadditional_fields = [{{ column = \"t\", placement = \"partition\" }}]\n\
             [kafka.properties]\n\"linger.ms\" = 5\n"
        );
        let printed = Config::from_toml_str(&text, |_| None).unwrap().to_redacted_toml().unwrap();
        let reparsed = Config::from_toml_str(&printed, |_| None).unwrap();
        assert_eq!(reparsed.to_redacted_toml().unwrap(), printed);
    }

    #[test]
    fn parse_errors_do_not_quote_secrets() {
        for broken in [
            "[postgres]\nurl = \"postgres://u:pg-secret@h/db\nslot = 1\n",
            "[postgres]\nurl = 5 # postgres://u:pg-secret@h/db\n",
            "[kafka.properties]\n\"sasl.password\" = kafka-secret\n",
            "[schema_registry]\npassword = [\"sr-secret\"\n",
        ] {
            let err = Config::from_toml_str(broken, |_| None).unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(matches!(err, ConfigError::Parse { .. }), "{text}");
            assert!(!text.contains("secret"), "secret quoted in {text}");
        }
    }

    #[test]
    fn unknown_placement_is_a_parse_error_naming_the_variants() {
        let text = format!(
            "{MINIMAL}\n[[outbox.tables]]\nadditional_fields = [{{ column = \"t\", placement = \"footer\" }}]\n"
        );
        let msg = Config::from_toml_str(&text, |_| None).unwrap_err().to_string();
        assert!(msg.contains("footer") && msg.contains("header") && msg.contains("[[outbox.tables]]"), "{msg}");
    }

    #[test]
    fn explicit_empty_table_list_needs_messages() {
        let keys = problem_keys(&format!("{MINIMAL}\n[outbox]\ntables = []\n"));
        assert_eq!(keys, ["outbox.tables"]);
        let c = Config::from_toml_str(
            &format!("{MINIMAL}\n[outbox]\ntables = []\nmessages = {{ enabled = true }}\n"),
            |_| None,
        )
        .unwrap();
        assert!(c.outbox.tables.is_empty());
    }

    #[test]
    fn template_without_placeholder_is_a_warning() {
        let text = format!("{MINIMAL}\n[[outbox.tables]]\nroute_topic_replacement = \"all-events\"\n");
        let c = Config::from_toml_str(&text, |_| None).unwrap();
        assert_eq!(c.warnings().len(), 1);
        assert!(c.warnings()[0].contains("all-events"));
    }

    #[test]
    fn aliases_default_to_column_and_required_columns_are_listed() {
        let text = format!(
            "{MINIMAL}\n[[outbox.tables]]\ntable = \"app.events\"\nfield_event_timestamp = \"created_at\"\n\
             additional_fields = [{{ column = \"tenant\", placement = \"header\" }}, \
             {{ column = \"type\", placement = \"envelope\", alias = \"eventType\" }}]\n"
        );
        let c = Config::from_toml_str(&text, |_| None).unwrap();
        let t = &c.outbox.tables[0];
        assert_eq!(t.additional_fields[0].alias, "tenant");
        assert_eq!(
            t.required_columns(),
            ["id", "aggregateid", "type", "payload", "aggregatetype", "created_at", "tenant"]
        );
        assert_eq!((t.schema(), t.name()), ("app", "events"));
    }

    #[test]
    fn kafka_properties_accept_scalars() {
        let text = format!(
            "{MINIMAL}\n[kafka.properties]\n\"linger.ms\" = 5\n\"enable.ssl.certificate.verification\" = false\n"
        );
        let c = Config::from_toml_str(&text, |_| None).unwrap();
        assert_eq!(c.kafka.properties["linger.ms"], "5");
        assert_eq!(c.kafka.properties["enable.ssl.certificate.verification"], "false");
    }

    #[test]
    fn secrets_are_absent_from_debug_and_redacted_output() {
        let text = r#"
            [postgres]
            url = "postgres://relay:pg-secret-1@db:5432/app?sslmode=disable&password=pg-secret-2"
            [kafka]
            bootstrap_servers = "k:9092"
            [kafka.properties]
            "sasl.password" = "kafka-secret-1"
            "sasl.jaas.config" = "kafka-secret-2"
            "ssl.key.pem" = "kafka-secret-3"
            "sasl.oauthbearer.client.secret" = "kafka-secret-4"
            "client.id" = "visible-client-id"
            [schema_registry]
            url = "https://sr-user:sr-secret-1@registry:8081"
        "#;
        let c = Config::from_toml_str(text, |_| None).unwrap();
        let mut with_password = c.clone();
        with_password.schema_registry.url = "https://registry:8081".to_owned();
        with_password.schema_registry.username = "u".to_owned();
        with_password.schema_registry.password = "sr-secret-2".to_owned();
        for output in [
            format!("{c:?}"),
            format!("{c:#?}"),
            format!("{with_password:?}"),
            c.to_redacted_toml().unwrap(),
            with_password.to_redacted_toml().unwrap(),
        ] {
            assert!(!output.contains("secret-"), "secret in {output}");
            assert!(output.contains(REDACTED), "{output}");
            assert!(output.contains("visible-client-id"), "non-secret property hidden in {output}");
            assert!(output.contains("relay"), "user name hidden in {output}");
        }
        // The real values stay usable.
        assert!(c.postgres_url().contains("pg-secret-1"));
        assert_eq!(c.schema_registry.basic_auth(), Some(("sr-user".to_owned(), "sr-secret-1".to_owned())));
        assert_eq!(c.schema_registry.base_url(), "https://registry:8081");
    }

    #[test]
    fn redact_url_handles_urls_and_non_urls() {
        assert_eq!(redact_url("postgres://u:p@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact_url("postgres://u:p@h1:5432,h2:5433/db?x=1"), "postgres://u:***@h1:5432,h2:5433/db?x=1");
        assert_eq!(
            redact_url("postgres://u@h/db?password=p&sslmode=disable"),
            "postgres://u@h/db?password=***&sslmode=disable"
        );
        assert_eq!(redact_url("http://h:8081/apis"), "http://h:8081/apis");
        assert_eq!(redact_url("u:p@h"), "u:***@h");
        assert_eq!(redact_url("postgres://u:pa/ss@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact_url("postgres://u:p?ss#x@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact_url("http://h/path@x"), "http://h/path@x");
        assert_eq!(redact_url("http://u:p%40ss@h/path@x"), "http://u:***@h/path@x");
    }

    #[test]
    fn postgres_url_is_split_into_tokio_config_and_tls() {
        let mut pg = minimal().postgres;
        pg.url = "postgresql://u:p@h1:6432/app?sslmode=verify-full&application_name=x&connect_timeout=3".to_owned();
        let config = pg.tokio_postgres_config().unwrap();
        assert_eq!(config.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        assert_eq!(config.get_application_name(), Some("x"));
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(pg.tls().unwrap().mode, PgSslMode::VerifyFull);
        assert_eq!(pg.target(), "h1:6432");
        pg.tls_connector().unwrap();

        pg.url = "postgres://u@h/db?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem".to_owned();
        let msg = pg.tls().unwrap_err().to_string();
        assert!(msg.contains("/nonexistent/ca.pem"), "{msg}");

        pg.url = "postgres://u@h/db".to_owned();
        assert_eq!(pg.tls().unwrap().mode, PgSslMode::Prefer);
        assert_eq!(pg.tokio_postgres_config().unwrap().get_application_name(), Some("outbox-relay"));

        for bad in ["mysql://u@h/db", "postgres://u@h/db?frobnicate=1", "postgres:///db"] {
            pg.url = bad.to_owned();
            assert!(pg.tls().is_err(), "{bad} accepted");
        }
    }
}
