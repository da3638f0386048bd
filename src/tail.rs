//! `outbox-relay tail`: read a topic back as a downstream service would — `read_committed`, values decoded through
//! the schema registry — and print one JSON object per record.
//!
//! Invariant: it only reads; it never commits offsets (no consumer group state is left behind) and prints nothing a
//! read_committed consumer could not see.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::avro::{RegistryDecoder, RegistrySettings};
use crate::config::Config;

/// What to read.
#[derive(Debug, Clone)]
pub struct TailOptions {
    /// Topic to read.
    pub topic: String,
    /// Stop after this many records.
    pub max_records: Option<usize>,
    /// Keep waiting for new records (else stop at the end of every partition).
    pub follow: bool,
    /// Give up when nothing arrives for this long (with `follow`).
    pub idle_timeout: Duration,
}

/// Errors of `tail`.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// Kafka.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// Registry set-up.
    #[error("schema registry: {0}")]
    Registry(String),
    /// The topic does not exist.
    #[error("topic {0:?} does not exist (yet): the relay creates it with the first event routed to it")]
    NoTopic(String),
}

/// Reads `opts.topic` from the beginning and calls `out` with one JSON line per record.
pub async fn tail(cfg: &Config, opts: &TailOptions, mut out: impl FnMut(String)) -> Result<usize, TailError> {
    let mut client = crate::kafka::KafkaSettings::from_config(&cfg.kafka).client_config();
    client
        .set("group.id", "outbox-relay-tail")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("allow.auto.create.topics", "false");
    let consumer: BaseConsumer = client.create().map_err(crate::kafka::config::redact_config_error)?;
    let md = consumer.fetch_metadata(Some(&opts.topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    let mut partitions = 0usize;
    for t in md.topics() {
        if t.error().is_some() {
            continue;
        }
        for p in t.partitions() {
            tpl.add_partition_offset(&opts.topic, p.id(), Offset::Beginning)?;
            partitions += 1;
        }
    }
    if partitions == 0 {
        return Err(TailError::NoTopic(opts.topic.clone()));
    }
    consumer.assign(&tpl)?;
    let decoder = RegistryDecoder::new(&RegistrySettings::from_config(&cfg.schema_registry))
        .map_err(|e| TailError::Registry(e.to_string()))?;
    let mut eof = std::collections::HashSet::new();
    let mut count = 0usize;
    let mut last = Instant::now();
    loop {
        if opts.max_records.is_some_and(|m| count >= m) || (!opts.follow && eof.len() >= partitions) {
            return Ok(count);
        }
        if opts.follow && last.elapsed() > opts.idle_timeout {
            return Ok(count);
        }
        // Polling blocks for at most 100 ms; short enough not to matter for a CLI tool.
        let polled = consumer.poll(Duration::from_millis(100));
        match polled {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(m)) => {
                last = Instant::now();
                let headers: BTreeMap<String, String> = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|hd| {
                                (hd.key.to_owned(), String::from_utf8_lossy(hd.value.unwrap_or_default()).into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let value = match m.payload() {
                    None => serde_json::Value::Null,
                    // Not the Confluent wire format: a dead letter's row or message, shown as JSON or text.
                    Some(bytes) if bytes.first() != Some(&0) => serde_json::from_slice(bytes)
                        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned())),
                    Some(bytes) => match decoder.decode(bytes).await {
                        Ok(v) => v.json,
                        Err(e) => serde_json::json!({ "undecodable": e.to_string() }),
                    },
                };
                let line = serde_json::json!({
                    "topic": m.topic(),
                    "partition": m.partition(),
                    "offset": m.offset(),
                    "key": m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    "headers": headers,
                    "value": value,
                });
                out(line.to_string());
                count += 1;
            }
        }
    }
}
