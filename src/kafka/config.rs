//! The `[kafka]` section: brokers, checkpoint topic, transactions, batching, buffering, topic creation and the
//! librdkafka pass-through properties.
//!
//! Invariant: the settings exactly-once rests on (`transactional.id`, `enable.idempotence`, the transaction timeout,
//! `isolation.level`, topic auto-creation) cannot be overridden through `properties`: validation refuses those keys,
//! naming the setting to use instead. Secret property values never appear in `Debug` output.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::fields::default_true;
use crate::config::redact::{REDACTED, is_secret_property};

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
const fn default_pipelined_commits() -> bool {
    true
}
const fn default_max_batch_ms() -> u64 {
    100
}

/// Kafka settings.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list. Required.
    #[serde(default)]
    pub bootstrap_servers: String,
    /// Compacted topic holding the relay's checkpoint (the last committed PostgreSQL LSN).
    #[serde(default = "default_checkpoint_topic")]
    pub checkpoint_topic: String,
    /// Producer `transactional.id`; must be stable across restarts. Default: `outbox-relay-<connector_name>`.
    #[serde(default)]
    pub transactional_id: String,
    /// Overlap each Kafka commit with producing the next batch, on a second transactional id
    /// (`<transactional_id>.2`, which the Kafka principal may then also use). Off: one producer, one id.
    #[serde(default = "default_pipelined_commits")]
    pub pipelined_commits: bool,
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
            pipelined_commits: default_pipelined_commits(),
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
            .field("pipelined_commits", &self.pipelined_commits)
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

impl KafkaConfig {
    pub(crate) fn validate(&self, report: &mut impl FnMut(&str, String)) {
        if self.bootstrap_servers.trim().is_empty() {
            report(
                "kafka.bootstrap_servers",
                "is required: set bootstrap_servers in [kafka] or the environment variable \
                 OUTBOX_RELAY_KAFKA__BOOTSTRAP_SERVERS (host:port[,host:port...])"
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
        if let Err(reason) = crate::kafka::topic::validate_name(&self.checkpoint_topic) {
            report("kafka.checkpoint_topic", reason);
        }
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

/// `[kafka.properties]`: librdkafka settings written as TOML strings, integers, floats or booleans, kept as text.
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

/// A client-creation error with the value of a secret property replaced by [`crate::config::REDACTED`]:
/// librdkafka's configuration errors quote the value they refuse (`sasl.jaas.config` pasted from a Java client is
/// the classic), and these errors reach logs and messages.
pub(crate) fn redact_config_error(error: rdkafka::error::KafkaError) -> rdkafka::error::KafkaError {
    use rdkafka::error::KafkaError;
    match error {
        KafkaError::ClientConfig(result, description, key, _) if crate::config::is_secret_property(&key) => {
            KafkaError::ClientConfig(result, description, key, crate::config::REDACTED.to_owned())
        }
        other => other,
    }
}

#[cfg(test)]
mod redaction_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    #[test]
    fn a_refused_secret_property_is_not_quoted_back() {
        let mut c = rdkafka::config::ClientConfig::new();
        c.set("bootstrap.servers", "127.0.0.1:1").set(
            "sasl.jaas.config",
            "org.apache.kafka.common.security.scram.ScramLoginModule required password=\"s3cr3t\";",
        );
        let Err(e) = c.create::<rdkafka::consumer::BaseConsumer>() else { panic!("librdkafka accepted a JAAS line") };
        assert!(e.to_string().contains("s3cr3t"), "librdkafka quotes the value: {e}");
        let redacted = super::redact_config_error(e).to_string();
        assert!(!redacted.contains("s3cr3t") && redacted.contains("sasl.jaas.config"), "{redacted}");
    }
}
