//! Consumer-group lag of the relay's own topics: how far the services downstream are behind what the relay
//! committed, the main operational signal once events leave the relay.
//!
//! Every `consumer_lag.interval_ms` a task reads, for each consumer group (the configured ones, or every group with
//! committed offsets on the relay's topics), the committed offset of every partition of every topic the outbox
//! routes to (the topics matching `route_topic_replacement`), and the partition's *last stable offset*: a
//! read_committed consumer cannot pass it, so lag against the high watermark would count records of open or
//! aborted transactions no consumer will ever get. Lag per group and topic = sum over partitions of
//! LSO - committed (a partition without a committed offset is not counted: the group does not read it).
//!
//! Invariant: measuring never slows or stops the relay: it runs in its own blocking task with bounded calls, on
//! clients that never join a group or commit (offsets are only fetched), and a failed round only leaves
//! `outbox_relay_consumer_lag_checked_timestamp_seconds` behind.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::kafka::config::redact_config_error;
use crate::kafka::topic::ROUTED_BY_VALUE;
use crate::metrics::Stats;

const fn default_enabled() -> bool {
    true
}
const fn default_interval_ms() -> u64 {
    30_000
}

/// Settings of the consumer-group lag measurement (`[consumer_lag]`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConsumerLagConfig {
    /// Measure the lag of consumer groups on the relay's topics and export it as
    /// `outbox_relay_consumer_lag_records{group,topic}`.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// The consumer groups to measure; empty: every group with committed offsets on the relay's topics
    /// (discovered each round).
    #[serde(default)]
    pub groups: Vec<String>,
    /// How often, in milliseconds.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
}

impl Default for ConsumerLagConfig {
    fn default() -> Self {
        ConsumerLagConfig { enabled: default_enabled(), groups: Vec::new(), interval_ms: default_interval_ms() }
    }
}

impl ConsumerLagConfig {
    pub(crate) fn validate(&self, report: &mut impl FnMut(&str, String)) {
        if self.interval_ms < 1_000 {
            report("consumer_lag.interval_ms", "must be at least 1000 (1 s)".to_owned());
        }
        for group in &self.groups {
            if group.is_empty() {
                report("consumer_lag.groups", "an empty group id".to_owned());
            }
        }
    }
}

/// Which topics belong to the relay: those a `route_topic_replacement` template can produce.
#[derive(Clone, Debug)]
pub struct TopicPattern {
    prefix: String,
    suffix: Option<String>,
}

impl TopicPattern {
    /// The pattern of one template: `outbox.event.${routedByValue}` matches `outbox.event.order`.
    pub fn new(template: &str) -> TopicPattern {
        match template.split_once(ROUTED_BY_VALUE) {
            Some((prefix, suffix)) => TopicPattern { prefix: prefix.to_owned(), suffix: Some(suffix.to_owned()) },
            None => TopicPattern { prefix: template.to_owned(), suffix: None },
        }
    }

    /// Whether `topic` is one the template produces.
    pub fn matches(&self, topic: &str) -> bool {
        match &self.suffix {
            None => topic == self.prefix,
            Some(suffix) => {
                topic.len() > self.prefix.len() + suffix.len()
                    && topic.starts_with(&self.prefix)
                    && topic.ends_with(suffix.as_str())
            }
        }
    }
}

/// One measurement: lag per (group, topic), in records.
pub type Lags = BTreeMap<(String, String), i64>;

/// Starts measuring; runs until the process ends.
pub fn spawn(
    base: ClientConfig,
    patterns: Vec<TopicPattern>,
    settings: ConsumerLagConfig,
    timeout: Duration,
    stats: Arc<Stats>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            let (base, patterns, groups) = (base.clone(), patterns.clone(), settings.groups.clone());
            let round = tokio::task::spawn_blocking(move || measure(&base, &patterns, &groups, timeout)).await;
            match round {
                Ok(Ok(lags)) => {
                    stats.set_consumer_lag(lags);
                    failing = false;
                }
                Ok(Err(e)) if failing => debug!(error = %e, "consumer lag still not measurable"),
                Ok(Err(e)) => {
                    warn!(error = %e, "cannot measure consumer-group lag; outbox_relay_consumer_lag_checked_timestamp_seconds stops");
                    failing = true;
                }
                Err(e) => warn!(error = %e, "consumer lag task failed"),
            }
            tokio::time::sleep(Duration::from_millis(settings.interval_ms)).await;
        }
    })
}

/// One round: blocking Kafka calls, each bounded by `timeout`.
pub fn measure(
    base: &ClientConfig,
    patterns: &[TopicPattern],
    groups: &[String],
    timeout: Duration,
) -> Result<Lags, rdkafka::error::KafkaError> {
    let mut probe = base.clone();
    // Never joins: only metadata, the group list and ListOffsets with read_committed (the last stable offset). No
    // group.id either: librdkafka would look up that group's coordinator, which needs an ACL the relay has no use for.
    probe
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("allow.auto.create.topics", "false");
    let consumer: BaseConsumer = probe.create().map_err(redact_config_error)?;
    let metadata = consumer.fetch_metadata(None, timeout)?;
    let mut partitions: Vec<(String, i32)> = Vec::new();
    for topic in metadata.topics() {
        if patterns.iter().any(|p| p.matches(topic.name())) {
            partitions.extend(topic.partitions().iter().map(|p| (topic.name().to_owned(), p.id())));
        }
    }
    let mut lags = Lags::new();
    if partitions.is_empty() {
        return Ok(lags);
    }
    let mut stable: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for (topic, partition) in &partitions {
        let (_, high) = consumer.fetch_watermarks(topic, *partition, timeout)?;
        stable.insert((topic.clone(), *partition), high);
    }
    let groups: Vec<String> = if groups.is_empty() {
        let list = consumer.fetch_group_list(None, timeout)?;
        list.groups()
            .iter()
            .filter(|g| g.protocol_type() == "consumer" || g.protocol_type().is_empty())
            .map(|g| g.name().to_owned())
            .collect()
    } else {
        groups.to_vec()
    };
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in &partitions {
        tpl.add_partition(topic, *partition);
    }
    for group in groups {
        let mut config = base.clone();
        config.set("group.id", &group).set("enable.auto.commit", "false");
        let reader: BaseConsumer = config.create().map_err(redact_config_error)?;
        let committed = reader.committed_offsets(tpl.clone(), timeout)?;
        for element in committed.elements() {
            let Offset::Offset(at) = element.offset() else { continue };
            let Some(&end) = stable.get(&(element.topic().to_owned(), element.partition())) else { continue };
            *lags.entry((group.clone(), element.topic().to_owned())).or_insert(0) += (end - at).max(0);
        }
    }
    Ok(lags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_the_topics_they_route_to() {
        let p = TopicPattern::new("outbox.event.${routedByValue}");
        assert!(p.matches("outbox.event.order"));
        assert!(!p.matches("outbox.event."), "the routed value is never empty");
        assert!(!p.matches("other.event.order"));
        let s = TopicPattern::new("${routedByValue}-events");
        assert!(s.matches("order-events") && !s.matches("order-event"));
        let fixed = TopicPattern::new("all-events");
        assert!(fixed.matches("all-events") && !fixed.matches("all-events2"));
    }
}
