//! The Kafka side: the transactional producer (the pipeline runs one, or two on alternating ids for pipelined
//! commits, each a [`TxnProducer`]), the topics it writes to, and the checkpoint topic.
//!
//! Invariant: a checkpoint record is only ever written inside the same Kafka transaction as the events it covers,
//! so a `read_committed` reader sees a checkpoint if and only if it sees every event up to it. [`TxnProducer::commit`]
//! returns `Ok` only after the broker committed the transaction; the pipeline acknowledges the checkpoint's LSN to
//! PostgreSQL only after that, never before.
//!
//! ```text
//!   send(event)* ─▶ commit(checkpoint) ─▶ Ok  ──▶ caller may acknowledge checkpoint.end_lsn
//!        │                      └────────▶ Err ─▶ outcome unknown: the producer is spent (is_usable() = false); a
//!        │                                        new one (init_transactions) settles the transaction, and the
//!        │                                        checkpoint is read again to learn what was committed
//!        └─ a record refused ─▶ Err(Refused) ─▶ abort() ─▶ Ok: producer reusable, replay from the last checkpoint
//!                                                   └────▶ Err: producer spent, as above
//! ```
//!
//! A producer whose commit or abort failed is never used again: librdkafka keeps such a call pending and answers
//! every later transactional call with a conflict, and whether the broker committed is unknown. Only a fresh
//! producer's `init_transactions` (which completes or aborts what the old one left) followed by a fresh checkpoint
//! read gives certainty.
//!
//! Errors are classified where they arise, from librdkafka's error code: a record Kafka will refuse however often it
//! is retried (too large, timestamp out of range, not authorized, no such partition or topic) is a
//! [`SinkError::Refused`] naming the event; fencing is definite; the rest (broker unreachable, timeouts) is
//! transient. A transaction kept open longer than `transaction.timeout.ms` is aborted by the broker, which then
//! looks like fencing: it is reported as [`SinkError::TransactionTooLong`] with what to change.
//!
//! Reading the checkpoint ([`read_checkpoint`]) waits until the checkpoint partition's last stable offset has
//! passed its high watermark as seen after fencing: a `read_committed` reader stops at the first open transaction,
//! and another connector sharing the topic may hold one, hiding this connector's newest checkpoint behind it.
//!
//! librdkafka's transactional calls block; they run on tokio's blocking pool so the runtime keeps serving the
//! replication stream (keepalives) while a commit waits for the broker.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, info, warn};

pub mod config;
pub mod lag;
pub mod topic;

use crate::pg::identity::SourceIdentity;
use crate::pg::lsn::Lsn;
use config::{KafkaConfig, TopicCreationConfig};

/// Kafka connection and transaction settings, built from the configuration.
#[derive(Clone)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// Stable `transactional.id`; fences older instances of the same connector.
    pub transactional_id: String,
    /// Commits overlap producing: a second producer, on [`KafkaSettings::pipelined`]'s transactional id, takes the
    /// next batch while the first one's commit completes (`kafka.pipelined_commits`).
    pub pipelined_commits: bool,
    /// `transaction.timeout.ms`: how long the broker keeps an open transaction before aborting it.
    pub transaction_timeout: Duration,
    /// Compacted topic holding one checkpoint per connector.
    pub checkpoint_topic: String,
    /// Replication factor for the checkpoint topic when the relay creates it; -1 = broker default.
    pub checkpoint_replication_factor: i32,
    /// Timeout of one blocking call (init, commit, abort, metadata, admin requests).
    pub operation_timeout: Duration,
    /// Creation of missing event and dead-letter topics.
    pub topic_creation: TopicCreationConfig,
    /// Raw librdkafka settings passed through (security, SASL, tuning).
    pub properties: BTreeMap<String, String>,
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // librdkafka properties may hold SASL passwords and key material: print only their names.
        f.debug_struct("KafkaSettings")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("transactional_id", &self.transactional_id)
            .field("checkpoint_topic", &self.checkpoint_topic)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl KafkaSettings {
    /// The settings of `[kafka]`.
    pub fn from_config(cfg: &KafkaConfig) -> KafkaSettings {
        KafkaSettings {
            bootstrap_servers: cfg.bootstrap_servers.clone(),
            transactional_id: cfg.transactional_id.clone(),
            pipelined_commits: cfg.pipelined_commits,
            transaction_timeout: cfg.transaction_timeout(),
            checkpoint_topic: cfg.checkpoint_topic.clone(),
            checkpoint_replication_factor: -1,
            operation_timeout: Duration::from_secs(30),
            topic_creation: cfg.topic_creation.clone(),
            properties: cfg.properties.clone(),
        }
    }

    /// The settings of the second producer of pipelined commits: the same, on the transactional id
    /// `<kafka.transactional_id>.2` (stable, so a new instance fences an older one's second producer as well).
    pub fn pipelined(&self) -> KafkaSettings {
        KafkaSettings { transactional_id: format!("{}.2", self.transactional_id), ..self.clone() }
    }

    /// How long a start waits for another producer's open transaction on the checkpoint topic: past its timeout
    /// the broker aborts it.
    pub fn checkpoint_wait(&self) -> Duration {
        self.transaction_timeout + self.operation_timeout
    }

    /// A client configuration with the bootstrap servers and the pass-through properties (security, tuning): the
    /// base of every client the relay creates.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers);
        // librdkafka lets a client connect to "any broker" at most every reconnect.backoff.ms / 2 (50 ms by default,
        // at least 11). A new client drops its bootstrap connection once metadata names the brokers; a request in
        // that gap waited the rest of that interval, about 45 ms in half of the starts (benches/README.md#start-up).
        // 20 ms (Kafka's Java clients use 50) keeps the backoff growing to reconnect.backoff.max.ms during an
        // outage. Overridable like every librdkafka setting.
        c.set("reconnect.backoff.ms", "20");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    fn admin(&self) -> Result<AdminClient<DefaultClientContext>, SinkError> {
        let mut c = self.client_config();
        // Its metadata requests must never let a broker with auto.create.topics.enable create a topic (with the
        // broker's defaults: a checkpoint topic that deletes by time).
        c.set("allow.auto.create.topics", "false");
        c.create()
            .map_err(|e| SinkError::Client { op: "admin client creation", source: config::redact_config_error(e) })
    }
}

/// Where an event sits in the WAL: the commit LSN of its PostgreSQL transaction and its index among the
/// transaction's events. Stable across replays, so a refused record is recognised when it comes again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EventPos {
    /// Commit LSN of the PostgreSQL transaction.
    pub commit_lsn: Lsn,
    /// Index of the event in that transaction (0-based, in WAL order).
    pub index: u32,
}

impl std::fmt::Display for EventPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{} of the transaction committed at {}", self.index, self.commit_lsn)
    }
}

/// A record Kafka refuses, whatever the number of retries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Destination topic.
    pub topic: String,
    /// The event's id (header `id`), empty when unknown.
    pub event_id: String,
    /// The event's WAL position, when known.
    pub pos: Option<EventPos>,
    /// librdkafka's or the broker's error code.
    pub code: RDKafkaErrorCode,
    /// The error text.
    pub reason: String,
}

impl Refusal {
    /// What to do about it.
    pub fn hint(&self) -> &'static str {
        refusal_hint(self.code).unwrap_or("see the broker's log for why it refused the record")
    }

    /// A short, stable name of the refusal kind, for the dead-letter header and metrics.
    pub fn kind(&self) -> &'static str {
        match self.code {
            RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge => "record_too_large",
            RDKafkaErrorCode::InvalidTimestamp => "invalid_timestamp",
            RDKafkaErrorCode::TopicAuthorizationFailed => "not_authorized",
            RDKafkaErrorCode::UnknownPartition => "unknown_partition",
            RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition => "unknown_topic",
            _ => "refused",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let id = if self.event_id.is_empty() { "?" } else { self.event_id.as_str() };
        write!(f, "kafka refused event {id} for topic {:?}", self.topic)?;
        if let Some(pos) = self.pos {
            write!(f, " ({pos})")?;
        }
        write!(f, ": {} ({:?}); {}", self.reason, self.code, self.hint())
    }
}

/// Why a record is refused for good, or `None` when the code is not a per-record refusal.
fn refusal_hint(code: RDKafkaErrorCode) -> Option<&'static str> {
    use RDKafkaErrorCode as C;
    Some(match code {
        C::MessageSizeTooLarge | C::MessageBatchTooLarge => {
            "the record is larger than the topic's max.message.bytes or the producer's message.max.bytes: raise \
             them (kafka.properties.\"message.max.bytes\", kafka.topic_creation.configs.\"max.message.bytes\") or \
             shrink the event"
        }
        C::InvalidTimestamp => {
            "the record timestamp is outside what the topic accepts (message.timestamp.before.max.ms / \
             after.max.ms): check the event timestamp column"
        }
        C::TopicAuthorizationFailed => "the relay's principal may not write to the topic: grant it WRITE and DESCRIBE",
        C::UnknownPartition => {
            "the partition does not exist: the topic has fewer partitions than the event's partition column asks for"
        }
        C::UnknownTopic | C::UnknownTopicOrPartition => {
            "the topic does not exist and kafka.topic_creation.enabled = false: create it, or enable topic creation"
        }
        C::InvalidRecord | C::InvalidMessage | C::InvalidMessageSize | C::PolicyViolation => {
            "the broker rejected the record (a broker-side record validation or policy)"
        }
        _ => return None,
    })
}

/// Errors of the Kafka side.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Another relay with the same `transactional.id` started: this one must stop.
    #[error(
        "fenced: another relay instance with transactional.id {transactional_id:?} has taken over; \
         this instance stops (run only one relay per connector_name)"
    )]
    Fenced {
        /// The contested id.
        transactional_id: String,
    },
    /// A single PostgreSQL transaction took longer to produce than the Kafka transaction may stay open.
    #[error(
        "a PostgreSQL transaction of {events}+ events could not be produced within kafka.transaction_timeout_ms \
         ({timeout_ms} ms; {elapsed_ms} ms elapsed): the broker aborts Kafka transactions open that long, and a \
         PostgreSQL transaction is never split. Raise kafka.transaction_timeout_ms (at most the broker's \
         transaction.max.timeout.ms, default 900000) or write smaller transactions to the outbox"
    )]
    TransactionTooLong {
        /// Events produced in the open Kafka transaction so far.
        events: u64,
        /// How long it was open.
        elapsed_ms: u64,
        /// The limit.
        timeout_ms: u64,
    },
    /// Kafka refuses a record for good.
    #[error("{0}")]
    Refused(Box<Refusal>),
    /// Records were not delivered within the transaction for a reason worth retrying (broker unreachable).
    #[error("kafka delivery failed for topic {topic:?}: {reason}")]
    Delivery {
        /// Topic of the first failed record.
        topic: String,
        /// librdkafka's reason.
        reason: String,
    },
    /// No broker answered while initialising transactions.
    #[error(
        "could not reach the Kafka bootstrap servers {bootstrap}: {source}{recent}; check kafka.bootstrap_servers, \
         the security settings in [kafka.properties] and that the brokers are running"
    )]
    Unreachable {
        /// `bootstrap.servers`.
        bootstrap: String,
        /// The client error.
        #[source]
        source: Box<KafkaError>,
        /// The client's last connection errors, ` (...)`-wrapped, or empty.
        recent: String,
    },
    /// Any other Kafka client error during `op`.
    #[error("kafka {op} failed: {source}")]
    Client {
        /// What was being done.
        op: &'static str,
        /// The client error.
        #[source]
        source: KafkaError,
    },
    /// The checkpoint record in the topic cannot be read.
    #[error("checkpoint record in topic {topic:?} at offset {offset} is unreadable: {reason}")]
    BadCheckpoint {
        /// Checkpoint topic.
        topic: String,
        /// Offset of the bad record.
        offset: i64,
        /// Why.
        reason: String,
    },
    /// The checkpoint topic is configured so that a checkpoint could be lost.
    #[error("checkpoint topic {topic:?} {problem}")]
    CheckpointTopic {
        /// Checkpoint topic.
        topic: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// Another producer's transaction kept the checkpoint partition's last stable offset from reaching its end.
    #[error(
        "checkpoint topic {topic:?}: an open transaction of another producer (another connector sharing the topic) \
         kept its last stable offset at {lso} below the end {end} for {waited_s} s; the newest checkpoint may be \
         behind it. It ends when that producer commits or its transaction times out; retrying"
    )]
    CheckpointHidden {
        /// Checkpoint topic.
        topic: String,
        /// Last stable offset.
        lso: i64,
        /// High watermark after fencing.
        end: i64,
        /// How long the relay waited.
        waited_s: u64,
    },
    /// The principal may not use the transactional id: nothing can be produced until an operator grants it.
    #[error(
        "the Kafka principal may not use transactional id `{transactional_id}` (TransactionalIdAuthorizationFailed): \
         grant it WRITE and DESCRIBE on that transactional id, e.g. kafka-acls.sh --add --allow-principal User:<name> \
         --operation Write --operation Describe --transactional-id {transactional_id} (README, \"What it needs from \
         Kafka\")"
    )]
    TransactionalIdNotAuthorized {
        /// `kafka.transactional_id`.
        transactional_id: String,
    },
    /// The blocking task running a librdkafka call died.
    #[error("kafka worker task failed: {0}")]
    Join(String),
}

impl SinkError {
    /// `true` when a restart of the Kafka session (new transaction, replay from the checkpoint) may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            SinkError::Fenced { .. }
            | SinkError::TransactionTooLong { .. }
            | SinkError::Refused(_)
            | SinkError::BadCheckpoint { .. }
            | SinkError::CheckpointTopic { .. }
            | SinkError::TransactionalIdNotAuthorized { .. } => false,
            SinkError::Client { source, .. } => !is_fatal(source) && !is_authorization(source),
            SinkError::Delivery { .. }
            | SinkError::Unreachable { .. }
            | SinkError::CheckpointHidden { .. }
            | SinkError::Join(_) => true,
        }
    }

    fn from_kafka(op: &'static str, source: KafkaError, transactional_id: &str) -> SinkError {
        if is_fenced(&source) {
            SinkError::Fenced { transactional_id: transactional_id.to_owned() }
        } else if source.rdkafka_error_code() == Some(RDKafkaErrorCode::TransactionalIdAuthorizationFailed) {
            SinkError::TransactionalIdNotAuthorized { transactional_id: transactional_id.to_owned() }
        } else {
            SinkError::Client { op, source }
        }
    }
}

fn is_fenced(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch)
    )
}

fn is_fatal(e: &KafkaError) -> bool {
    match e {
        KafkaError::Transaction(t) => t.is_fatal(),
        _ => is_fenced(e),
    }
}

fn is_authorization(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
        )
    )
}

/// The checkpoint: where the relay resumes. Stored as JSON under the connector name as key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// Connector name (also the record key).
    pub connector: String,
    /// Commit LSN of the last PostgreSQL transaction included.
    pub commit_lsn: Lsn,
    /// End LSN of that transaction's commit record: the position acknowledged to PostgreSQL, and the resume point.
    pub end_lsn: Lsn,
    /// Wall-clock time of writing, milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// Version of the relay that wrote it.
    pub relay_version: String,
    /// The server the LSNs belong to; absent in checkpoints of relays before 0.2 (then not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceIdentity>,
}

impl Checkpoint {
    /// A checkpoint for `connector` at the given transaction of `source`, stamped now.
    pub fn new(connector: &str, commit_lsn: Lsn, end_lsn: Lsn, source: Option<SourceIdentity>) -> Checkpoint {
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Checkpoint {
            connector: connector.to_owned(),
            commit_lsn,
            end_lsn,
            time_ms,
            relay_version: env!("CARGO_PKG_VERSION").to_owned(),
            source,
        }
    }
}

/// One record to produce. Borrowed from the pipeline's buffers: produce copies into librdkafka's queue.
#[derive(Debug)]
pub struct OutRecord<'a> {
    /// Destination, routed from the event.
    pub topic: &'a str,
    /// Explicit partition, or the default partitioner on the key.
    pub partition: Option<i32>,
    /// Record key.
    pub key: &'a [u8],
    /// Record value; `None` for a record without value.
    pub value: Option<&'a [u8]>,
    /// Headers in order.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// Record timestamp, ms since the Unix epoch; `None`: the producer's clock.
    pub timestamp_ms: Option<i64>,
    /// The event's WAL position (`None` for the checkpoint record).
    pub pos: Option<EventPos>,
}

/// What the delivery report of a record carries back (librdkafka's opaque, one `usize`): the transaction's
/// generation, the record's index in it, and its timestamp in seconds. Nothing per record is kept elsewhere, so
/// the producer's memory does not grow with the size of a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tag {
    /// Low bits of the transaction count: a late report of an earlier transaction is recognised.
    generation: u8,
    /// Index of the record in its transaction (saturates at `INDEX_MAX`).
    index: u32,
    /// Record timestamp in seconds since the Unix epoch; 0 when the producer's clock stamps it.
    timestamp_s: u32,
}

const INDEX_BITS: u32 = 28;
const INDEX_MAX: u32 = (1 << INDEX_BITS) - 1;

impl Tag {
    fn pack(self) -> usize {
        let v = (u64::from(self.generation & 0xf) << 60)
            | (u64::from(self.index.min(INDEX_MAX)) << 32)
            | u64::from(self.timestamp_s);
        usize::try_from(v).unwrap_or(usize::MAX)
    }

    fn unpack(v: usize) -> Tag {
        let v = v as u64;
        Tag {
            generation: u8::try_from(v >> 60).unwrap_or(0),
            index: u32::try_from((v >> 32) & u64::from(INDEX_MAX)).unwrap_or(INDEX_MAX),
            timestamp_s: u32::try_from(v & 0xffff_ffff).unwrap_or(0),
        }
    }
}

/// A failed delivery of the open transaction, as the delivery report told it.
#[derive(Debug, Clone)]
struct DeliveryFailure {
    tag: Tag,
    topic: String,
    code: Option<RDKafkaErrorCode>,
    reason: String,
    event_id: String,
    /// Key and value bytes.
    size: usize,
}

/// Failures kept per transaction: enough to find the culprit of a refused batch.
const MAX_FAILURES_KEPT: usize = 4096;

/// Keeps the delivery failures of the open transaction; librdkafka would fail the commit anyway, this keeps the
/// reasons and which records they were, so the error names the event.
struct SinkContext {
    failures: Mutex<Vec<DeliveryFailure>>,
    /// Topics the broker refused to add to the open transaction for lack of authorization. librdkafka names them
    /// only in its log (the transactional error it returns does not say which partition failed).
    unauthorized: Mutex<Vec<String>>,
    /// Records the broker acknowledged, for the relay's progress (readiness).
    delivered: Arc<AtomicU64>,
    /// The last few client errors (connection refused, TLS, SASL), to explain a call that timed out.
    recent_errors: Mutex<Vec<String>>,
}

/// How many client errors [`SinkContext::recent_errors`] keeps.
const RECENT_ERRORS_KEPT: usize = 3;

impl ClientContext for SinkContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        if fac == "ADDPARTS" && log_message.contains("Topic authorization failed") {
            if let Some(topic) = added_partition_topic(log_message) {
                if let Ok(mut topics) = self.unauthorized.lock() {
                    topics.push(topic.to_owned());
                }
            }
        }
        log_librdkafka(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        warn!(%error, %reason, "kafka client error");
        if let Ok(mut recent) = self.recent_errors.lock() {
            if !recent.iter().any(|r| r == reason) {
                recent.push(reason.to_owned());
            }
            if recent.len() > RECENT_ERRORS_KEPT {
                recent.remove(0);
            }
        }
    }
}

/// The topic of librdkafka's `Failed to add partition "<topic>" [<n>] to transaction: ...` log line.
fn added_partition_topic(line: &str) -> Option<&str> {
    let rest = line.split_once("Failed to add partition \"")?.1;
    let (topic, after) = rest.split_once("\" [")?;
    after.contains("] to transaction").then_some(topic)
}

/// librdkafka's log lines, at the levels rdkafka's default context uses.
fn log_librdkafka(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", "librdkafka: {fac} {message}");
        }
        RDKafkaLogLevel::Warning => warn!(target: "librdkafka", "librdkafka: {fac} {message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => info!(target: "librdkafka", "librdkafka: {fac} {message}"),
        RDKafkaLogLevel::Debug => debug!(target: "librdkafka", "librdkafka: {fac} {message}"),
    }
}

impl ProducerContext for SinkContext {
    /// A packed [`Tag`].
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: usize) {
        let Err((e, msg)) = result else {
            self.delivered.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let code = e.rdkafka_error_code();
        // Purged records are the consequence of an abort, not a cause.
        if matches!(code, Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight)) {
            return;
        }
        let event_id = msg
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "id").and_then(|h| h.value))
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        if let Ok(mut failures) = self.failures.lock() {
            if failures.len() < MAX_FAILURES_KEPT {
                failures.push(DeliveryFailure {
                    tag: Tag::unpack(tag),
                    topic: msg.topic().to_owned(),
                    code,
                    reason: e.to_string(),
                    event_id,
                    size: msg.key_len() + msg.payload_len(),
                });
            }
        }
    }
}

/// The open Kafka transaction: what maps a record's index back to its event, in memory that grows with the
/// number of PostgreSQL transactions and topics in it, not with its records.
#[derive(Debug)]
struct OpenTxn {
    started: Instant,
    generation: u8,
    /// Records sent so far.
    records: u32,
    /// Per PostgreSQL transaction in it: the index of its first record and its commit LSN (each event is sent
    /// exactly once, as itself or as its dead letter, in WAL order, so index - first = the event's index).
    ledger: Vec<(u32, Lsn)>,
    /// Per topic: the index of its first record.
    topics: Vec<(String, u32)>,
    /// Index of the checkpoint record, once sent.
    checkpoint: Option<u32>,
}

impl OpenTxn {
    fn note(&mut self, rec: &OutRecord<'_>) -> u32 {
        let index = self.records;
        self.records = self.records.saturating_add(1);
        match rec.pos {
            Some(pos) if self.ledger.last().is_none_or(|(_, lsn)| *lsn != pos.commit_lsn) => {
                self.ledger.push((index.saturating_sub(pos.index), pos.commit_lsn));
            }
            Some(_) => {}
            None => self.checkpoint = Some(index),
        }
        // Consecutive records mostly share a topic: look from the end.
        if !self.topics.iter().rev().any(|(t, _)| t == rec.topic) {
            self.topics.push((rec.topic.to_owned(), index));
        }
        index
    }

    /// The event a record index belongs to.
    fn pos(&self, index: u32) -> Option<EventPos> {
        if Some(index) == self.checkpoint || index >= INDEX_MAX {
            return None;
        }
        let (first, commit_lsn) = self.ledger.iter().rev().find(|(first, _)| *first <= index)?;
        Some(EventPos { commit_lsn: *commit_lsn, index: index - first })
    }
}

/// A transactional producer. At most one Kafka transaction is open at a time.
pub struct TxnProducer {
    producer: Arc<ThreadedProducer<SinkContext>>,
    settings: KafkaSettings,
    open: Option<OpenTxn>,
    /// A transactional call failed with an unknown outcome: this producer must be replaced.
    spent: bool,
    /// Transactions begun, for [`Tag::generation`].
    transactions: u64,
}

impl std::fmt::Debug for TxnProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxnProducer")
            .field("transactional_id", &self.settings.transactional_id)
            .field("open", &self.open.is_some())
            .field("spent", &self.spent)
            .finish()
    }
}

impl Drop for TxnProducer {
    fn drop(&mut self) {
        // Destroying a librdkafka handle waits for its threads, which may be blocked on an unreachable broker:
        // never on a runtime worker.
        let producer = Arc::clone(&self.producer);
        if tokio::runtime::Handle::try_current().is_ok() {
            drop(tokio::task::spawn_blocking(move || drop(producer)));
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, SinkError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| SinkError::Join(e.to_string()))
}

impl TxnProducer {
    /// Creates the producer and calls `init_transactions`, which fences every older instance with the same
    /// `transactional.id` and completes or aborts whatever transaction it left open. `delivered` counts the records
    /// the broker acknowledges.
    pub async fn connect(settings: &KafkaSettings, delivered: Arc<AtomicU64>) -> Result<TxnProducer, SinkError> {
        let mut producer = TxnProducer::create(settings, delivered).await?;
        producer.init().await?;
        Ok(producer)
    }

    /// Creates the producer and connects it to a broker, without fencing anyone: a start may do this while it
    /// still checks PostgreSQL, and fence ([`TxnProducer::init`]) only once those checks passed, so a start that
    /// fails on PostgreSQL leaves a running instance alone.
    pub async fn create(settings: &KafkaSettings, delivered: Arc<AtomicU64>) -> Result<TxnProducer, SinkError> {
        let mut c = settings.client_config();
        // Set after the pass-through map: these are what exactly-once rests on and must not be overridden.
        c.set("transactional.id", &settings.transactional_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("transaction.timeout.ms", settings.transaction_timeout.as_millis().to_string())
            // Topics are created by the relay (kafka.topic_creation) with the configured shape, or are an error.
            .set("allow.auto.create.topics", "false");
        // Defaults measured in benches/: lz4 costs a fraction of zstd's CPU per event; a 16 MiB producer queue (instead
        // of librdkafka's 1 GiB) bounds memory while a large transaction streams through. The partitioner is Kafka's
        // Java one (murmur2 of the key), not librdkafka's CRC32: a topic a Java producer filled (Debezium on Kafka
        // Connect) keeps each aggregate on its partition, and its order, when the relay takes over. All overridable.
        for (k, v) in [
            ("partitioner", "murmur2_random"),
            ("linger.ms", "5"),
            ("compression.type", "lz4"),
            ("queue.buffering.max.messages", "200000"),
            ("queue.buffering.max.kbytes", "16384"),
        ] {
            if !settings.properties.contains_key(k) {
                c.set(k, v);
            }
        }
        let producer: ThreadedProducer<SinkContext> = c
            .create_with_context(SinkContext {
                failures: Mutex::new(Vec::new()),
                unauthorized: Mutex::new(Vec::new()),
                delivered,
                recent_errors: Mutex::new(Vec::new()),
            })
            .map_err(|e| SinkError::Client { op: "producer creation", source: config::redact_config_error(e) })?;
        let producer = Arc::new(producer);
        let p = Arc::clone(&producer);
        let warm_up = settings.operation_timeout.min(WARM_UP_LIMIT);
        let topic = settings.checkpoint_topic.clone();
        // The first metadata round trip learns the brokers (librdkafka then drops the bootstrap connection and
        // connects to them); init asks once more, which returns once such a connection is up, and refreshes what
        // this one learnt about the checkpoint topic (a start may be creating it meanwhile). Bounded short: a
        // failure is left to init_transactions to report, and a start abandoned meanwhile is not held up by it.
        blocking(move || {
            let _ = p.client().fetch_metadata(Some(&topic), warm_up);
        })
        .await?;
        Ok(TxnProducer { producer, settings: settings.clone(), open: None, spent: true, transactions: 0 })
    }

    /// `init_transactions`: fences every older instance with the same `transactional.id` and completes or aborts
    /// whatever transaction it left open. Then the producer is usable.
    pub async fn init(&mut self) -> Result<(), SinkError> {
        let settings = &self.settings;
        let p = Arc::clone(&self.producer);
        let timeout = settings.operation_timeout;
        let warm_up = timeout.min(WARM_UP_LIMIT);
        let topic = settings.checkpoint_topic.clone();
        // init_transactions runs on a blocking thread, which outlives this future if the caller drops it (a
        // shutdown, a start that fails elsewhere). Left alone, such an orphan could finish after the next attempt's
        // init and fence it: the relay would fence itself. So inits run one at a time, and one whose caller is gone
        // does not run at all.
        let wanted = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let _wanted_while_alive = Wanted(Arc::clone(&wanted));
        let initialised = blocking(move || {
            let _one_at_a_time = INIT_TRANSACTIONS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if !wanted.load(Ordering::SeqCst) {
                return None;
            }
            // Returns once a broker connection is up. Without one, init_transactions finds "no brokers available"
            // and librdkafka repeats its coordinator query only after 500 ms, which was half of a start.
            let _ = p.client().fetch_metadata(Some(&topic), warm_up);
            if !wanted.load(Ordering::SeqCst) {
                return None;
            }
            Some(p.init_transactions(timeout))
        })
        .await?;
        let Some(initialised) = initialised else {
            return Err(SinkError::Join("init_transactions abandoned by its caller".to_owned()));
        };
        if let Err(e) = initialised {
            // Serve queued error events so the context has seen them.
            self.producer.poll(Duration::ZERO);
            let recent = self.producer.context().recent_errors.lock().map(|r| r.join("; ")).unwrap_or_default();
            let unreachable = matches!(
                e.rdkafka_error_code(),
                Some(
                    RDKafkaErrorCode::OperationTimedOut
                        | RDKafkaErrorCode::BrokerTransportFailure
                        | RDKafkaErrorCode::AllBrokersDown
                        | RDKafkaErrorCode::Resolve
                )
            );
            return Err(if unreachable {
                let recent = if recent.is_empty() { recent } else { format!(" ({recent})") };
                SinkError::Unreachable { bootstrap: settings.bootstrap_servers.clone(), source: Box::new(e), recent }
            } else {
                SinkError::from_kafka("init_transactions", e, &settings.transactional_id)
            });
        }
        self.spent = false;
        debug!(transactional_id = %settings.transactional_id, "init_transactions done");
        Ok(())
    }

    /// `false` once a transactional call failed with an unknown outcome: drop it and connect a new one.
    pub fn is_usable(&self) -> bool {
        !self.spent
    }

    /// `true` while a transaction is open.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    fn begin(&mut self) -> Result<(), SinkError> {
        if self.open.is_none() {
            if let Ok(mut failures) = self.producer.context().failures.lock() {
                failures.clear();
            }
            if let Ok(mut topics) = self.producer.context().unauthorized.lock() {
                topics.clear();
            }
            self.producer
                .begin_transaction()
                .map_err(|e| SinkError::from_kafka("begin_transaction", e, &self.settings.transactional_id))?;
            self.transactions += 1;
            self.open = Some(OpenTxn {
                started: Instant::now(),
                generation: (self.transactions & 0xf) as u8,
                records: 0,
                ledger: Vec::new(),
                topics: Vec::new(),
                checkpoint: None,
            });
        }
        Ok(())
    }

    /// Queues one record in the open transaction (opening one if needed), waiting while librdkafka's queue is full.
    /// A record librdkafka refuses before sending (larger than `message.max.bytes`, a partition it knows does not
    /// exist) is a [`SinkError::Refused`]; the transaction stays usable and the record is simply not in it.
    pub async fn send(&mut self, rec: &OutRecord<'_>) -> Result<(), SinkError> {
        self.begin()?;
        let Some(open) = self.open.as_ref() else { return Ok(()) };
        let timestamp_s = rec.timestamp_ms.map_or(0, |ms| u32::try_from(ms.max(0) / 1000).unwrap_or(u32::MAX));
        let tag = Tag { generation: open.generation, index: open.records, timestamp_s };
        let mut headers = OwnedHeaders::new_with_capacity(rec.headers.len());
        for (k, v) in rec.headers {
            headers = headers.insert(Header { key: k, value: Some(*v) });
        }
        let mut record = BaseRecord::with_opaque_to(rec.topic, tag.pack()).key(rec.key).headers(headers);
        if let Some(value) = rec.value {
            record = record.payload(value);
        }
        if let Some(p) = rec.partition {
            record = record.partition(p);
        }
        if let Some(ts) = rec.timestamp_ms {
            record = record.timestamp(ts);
        }
        let mut waits = 0u32;
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    waits += 1;
                    if waits % 1000 == 0 {
                        debug!(waits, "kafka producer queue full, waiting for deliveries");
                        self.check_age()?;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => {
                    let code = e.rdkafka_error_code();
                    if let Some(code) = code.filter(|c| refusal_hint(*c).is_some()) {
                        return Err(SinkError::Refused(Box::new(Refusal {
                            topic: rec.topic.to_owned(),
                            event_id: header_id(rec.headers),
                            pos: rec.pos,
                            code,
                            reason: e.to_string(),
                        })));
                    }
                    return Err(self.txn_error("produce", e));
                }
            }
        }
        if let Some(open) = self.open.as_mut() {
            open.note(rec);
        }
        Ok(())
    }

    /// Fails when the open transaction has been open for the whole transaction timeout: the broker aborts it (or
    /// already did), and it can never commit.
    pub fn check_age(&self) -> Result<(), SinkError> {
        match &self.open {
            Some(open) if open.started.elapsed() >= self.settings.transaction_timeout => Err(self.too_long(open)),
            _ => Ok(()),
        }
    }

    fn too_long(&self, open: &OpenTxn) -> SinkError {
        SinkError::TransactionTooLong {
            events: u64::from(open.records),
            elapsed_ms: u64::try_from(open.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            timeout_ms: u64::try_from(self.settings.transaction_timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// An error of a transactional call, with a broker-side abort of an over-long transaction named as such.
    fn txn_error(&self, op: &'static str, e: KafkaError) -> SinkError {
        match &self.open {
            Some(open) if is_fenced(&e) && open.started.elapsed() >= self.settings.transaction_timeout => {
                self.too_long(open)
            }
            Some(open) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::TopicAuthorizationFailed) => self
                .unauthorized_topic(open, &e)
                .unwrap_or_else(|| SinkError::from_kafka(op, e, &self.settings.transactional_id)),
            _ => SinkError::from_kafka(op, e, &self.settings.transactional_id),
        }
    }

    /// The broker would not add a topic's partition to the transaction: a refusal of that topic's first record.
    fn unauthorized_topic(&self, open: &OpenTxn, e: &KafkaError) -> Option<SinkError> {
        let topic = self.producer.context().unauthorized.lock().ok()?.first()?.clone();
        let first = open.topics.iter().find(|(t, _)| *t == topic)?.1;
        Some(SinkError::Refused(Box::new(Refusal {
            topic,
            event_id: String::new(),
            pos: Some(open.pos(first)?),
            code: RDKafkaErrorCode::TopicAuthorizationFailed,
            reason: e.to_string(),
        })))
    }

    /// The delivery failure of the open transaction that caused the others, as a refusal naming its event when
    /// Kafka will never take that record, else as a transient delivery error.
    ///
    /// The broker refuses a whole batch when one of its records breaks a topic limit, failing every record in it
    /// with the same code: the culprit is then the record that breaks the limit most — the largest one for a size
    /// refusal, the one whose timestamp is furthest from now for a timestamp refusal — not the first.
    fn delivery_failure(&self) -> Option<SinkError> {
        let open = self.open.as_ref()?;
        let failure = {
            let failures = self.producer.context().failures.lock().ok()?;
            // A late report of an earlier (aborted) transaction's record is not this transaction's problem.
            let mine = || failures.iter().filter(|f| f.tag.generation == open.generation && f.tag.index < open.records);
            let with = |code: RDKafkaErrorCode| mine().filter(move |f| f.code == Some(code));
            let now = u32::try_from(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
                .unwrap_or(u32::MAX);
            let deviation = |f: &DeliveryFailure| match f.tag.timestamp_s {
                0 => 0,
                t => t.abs_diff(now),
            };
            let first = |f: &DeliveryFailure| std::cmp::Reverse(f.tag.index);
            let too_large = with(RDKafkaErrorCode::MessageSizeTooLarge).max_by_key(|f| (f.size, first(f)));
            let bad_time = with(RDKafkaErrorCode::InvalidTimestamp).max_by_key(|f| (deviation(f), first(f)));
            too_large.or(bad_time).or_else(|| mine().min_by_key(|f| f.tag.index))?.clone()
        };
        let pos = open.pos(failure.tag.index);
        Some(match failure.code {
            Some(code) if refusal_hint(code).is_some() => SinkError::Refused(Box::new(Refusal {
                topic: failure.topic,
                event_id: failure.event_id,
                pos,
                code,
                reason: failure.reason,
            })),
            Some(RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch) => {
                if open.started.elapsed() >= self.settings.transaction_timeout {
                    self.too_long(open)
                } else {
                    SinkError::Fenced { transactional_id: self.settings.transactional_id.clone() }
                }
            }
            _ => SinkError::Delivery { topic: failure.topic, reason: failure.reason },
        })
    }

    /// Adds `checkpoint` to the open transaction and commits it. `Ok` means the broker holds everything. On a
    /// refused or undelivered record the transaction is left open for [`Self::abort`]; if `commit_transaction`
    /// itself fails the producer is spent.
    pub async fn commit(&mut self, checkpoint: &Checkpoint) -> Result<(), SinkError> {
        self.prepare_commit(checkpoint).await?;
        self.finish_commit().await
    }

    /// The first half of [`Self::commit`]: adds `checkpoint` to the open transaction and waits until the broker
    /// acknowledged every record of it. Afterwards the records sit in their partitions' logs (not yet visible to
    /// read_committed), so records another producer sends from then on come after them in every partition. On a
    /// refused or undelivered record the transaction is left open for [`Self::abort`].
    pub async fn prepare_commit(&mut self, checkpoint: &Checkpoint) -> Result<(), SinkError> {
        let value = serde_json::to_vec(checkpoint).map_err(|e| SinkError::Join(e.to_string()))?;
        let topic = self.settings.checkpoint_topic.clone();
        self.send(&OutRecord {
            topic: &topic,
            partition: Some(0),
            key: checkpoint.connector.as_bytes(),
            value: Some(&value),
            headers: &[],
            timestamp_ms: Some(checkpoint.time_ms),
            pos: None,
        })
        .await?;
        crate::failpoint::hit("after_produce_before_commit");
        // rdkafka's commit_transaction first flushes, and its flush serves delivery reports with a poll that
        // always sleeps a full 100 ms: every commit would take 100 ms. Wait for the deliveries here instead (the
        // producer's own thread serves them as they arrive); the flush inside commit then returns at once.
        let deadline = Instant::now() + self.settings.operation_timeout;
        while self.producer.in_flight_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if let Some(failure) = self.delivery_failure() {
            return Err(failure);
        }
        self.check_age()?;
        if self.producer.in_flight_count() > 0 {
            return Err(SinkError::Delivery {
                topic,
                reason: format!(
                    "records still undelivered after {} ms (broker unreachable or slow)",
                    self.settings.operation_timeout.as_millis()
                ),
            });
        }
        Ok(())
    }

    /// The second half of [`Self::commit`], after [`Self::prepare_commit`]: `commit_transaction` (EndTxn; the
    /// coordinator then writes the commit markers). If it fails, what is committed is not known: the producer is
    /// spent.
    pub async fn finish_commit(&mut self) -> Result<(), SinkError> {
        let p = Arc::clone(&self.producer);
        let timeout = self.settings.operation_timeout;
        match blocking(move || p.commit_transaction(timeout)).await {
            Ok(Ok(())) => {
                self.open = None;
                Ok(())
            }
            Ok(Err(e)) => {
                self.spent = true;
                Err(self.delivery_failure().unwrap_or_else(|| self.txn_error("commit_transaction", e)))
            }
            Err(join) => {
                self.spent = true;
                Err(join)
            }
        }
    }

    /// Aborts the open transaction, if any. On failure the producer is spent (the caller replaces it).
    pub async fn abort(&mut self) -> Result<(), SinkError> {
        if self.open.is_none() {
            return Ok(());
        }
        let p = Arc::clone(&self.producer);
        let timeout = self.settings.operation_timeout;
        let r = blocking(move || p.abort_transaction(timeout)).await;
        match r {
            Ok(Ok(())) => {
                self.open = None;
                Ok(())
            }
            Ok(Err(e)) => {
                self.spent = true;
                Err(self.txn_error("abort_transaction", e))
            }
            Err(join) => {
                self.spent = true;
                Err(join)
            }
        }
    }

    /// Records queued or in flight.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// Events in the open transaction (0 when none is open).
    pub fn open_events(&self) -> u64 {
        self.open.as_ref().map_or(0, |o| u64::from(o.records))
    }

    /// Topic metadata as this producer sees it: `Ok(partitions)` or the topic-level error code.
    async fn topic_metadata(&self, topic: &str) -> Result<Result<i32, RDKafkaErrorCode>, SinkError> {
        let p = Arc::clone(&self.producer);
        let t = topic.to_owned();
        let timeout = self.settings.operation_timeout;
        let md = blocking(move || p.client().fetch_metadata(Some(&t), timeout))
            .await?
            .map_err(|e| SinkError::Client { op: "topic metadata", source: e })?;
        let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
            return Ok(Err(RDKafkaErrorCode::UnknownTopicOrPartition));
        };
        if let Some(err) = t.error() {
            return Ok(Err(err.into()));
        }
        if t.partitions().is_empty() || t.partitions().iter().any(|p| p.leader() < 0) {
            // Just created: leaders not elected yet. Reported as retriable by the caller.
            return Ok(Err(RDKafkaErrorCode::LeaderNotAvailable));
        }
        Ok(Ok(i32::try_from(t.partitions().len()).unwrap_or(i32::MAX)))
    }
}

fn header_id(headers: &[(&str, &[u8])]) -> String {
    headers.iter().find(|(k, _)| *k == "id").map(|(_, v)| String::from_utf8_lossy(v).into_owned()).unwrap_or_default()
}

/// What the relay knows about a topic it writes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicState {
    /// It exists with this many partitions.
    Ready {
        /// Partition count.
        partitions: i32,
    },
    /// Records to it are refused (missing with creation off, not authorized).
    Refused {
        /// Why.
        code: RDKafkaErrorCode,
    },
}

/// How long a refused topic is believed refused before it is looked up again (the operator may have fixed it).
const REFUSED_TOPIC_TTL: Duration = Duration::from_secs(30);

/// The topics a session writes to: looked up once each, created when missing and creation is on.
pub struct Topics {
    settings: KafkaSettings,
    known: HashMap<String, (TopicState, Instant)>,
    admin: Option<AdminClient<DefaultClientContext>>,
}

impl std::fmt::Debug for Topics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topics").field("known", &self.known.len()).finish_non_exhaustive()
    }
}

impl Topics {
    /// No topic known yet.
    pub fn new(settings: &KafkaSettings) -> Topics {
        Topics { settings: settings.clone(), known: HashMap::new(), admin: None }
    }

    /// The state of `topic`, looking it up (and creating it) on first use. Cheap after the first call.
    pub async fn state(&mut self, producer: &TxnProducer, topic: &str) -> Result<TopicState, SinkError> {
        if let Some((state, since)) = self.known.get(topic) {
            if matches!(state, TopicState::Ready { .. }) || since.elapsed() < REFUSED_TOPIC_TTL {
                return Ok(state.clone());
            }
        }
        let state = self.look_up(producer, topic).await?;
        self.known.insert(topic.to_owned(), (state.clone(), Instant::now()));
        Ok(state)
    }

    async fn look_up(&mut self, producer: &TxnProducer, topic: &str) -> Result<TopicState, SinkError> {
        let deadline = Instant::now() + self.settings.operation_timeout;
        let mut created = false;
        loop {
            match producer.topic_metadata(topic).await? {
                Ok(partitions) => return Ok(TopicState::Ready { partitions }),
                Err(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic)
                    if self.settings.topic_creation.enabled && !created =>
                {
                    self.create(topic).await?;
                    created = true;
                }
                Err(code @ (RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic))
                    if !created =>
                {
                    return Ok(TopicState::Refused { code });
                }
                Err(code @ RDKafkaErrorCode::TopicAuthorizationFailed) => return Ok(TopicState::Refused { code }),
                Err(code) if Instant::now() < deadline => {
                    debug!(topic, ?code, "topic not ready yet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(code) => {
                    return Err(SinkError::Client { op: "topic metadata", source: KafkaError::MetadataFetch(code) });
                }
            }
        }
    }

    async fn create(&mut self, topic: &str) -> Result<(), SinkError> {
        if self.admin.is_none() {
            self.admin = Some(self.settings.admin()?);
        }
        let Some(admin) = self.admin.as_ref() else { return Ok(()) };
        let creation = &self.settings.topic_creation;
        let mut new = NewTopic::new(topic, creation.partitions, TopicReplication::Fixed(creation.replication_factor));
        for (k, v) in &creation.configs {
            new = new.set(k, v);
        }
        let opts = AdminOptions::new().operation_timeout(Some(self.settings.operation_timeout));
        let results = match admin.create_topics([&new], &opts).await {
            Ok(r) => r,
            Err(e) => {
                // A broken admin client is recreated on the next call.
                self.admin = None;
                return Err(SinkError::Client { op: "create topic", source: e });
            }
        };
        for r in results {
            match r {
                Ok(_) => info!(topic, partitions = creation.partitions, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(SinkError::Client { op: "create topic", source: KafkaError::AdminOp(code) });
                }
            }
        }
        Ok(())
    }
}

/// Creates the checkpoint topic (one partition, compacted) when it does not exist, then
/// [verifies](verify_checkpoint_topic) it.
pub async fn ensure_checkpoint_topic(settings: &KafkaSettings) -> Result<(), SinkError> {
    if verify_checkpoint_topic(settings).await? == CheckpointTopic::Verified {
        return Ok(());
    }
    let admin = settings.admin()?;
    let topic = settings.checkpoint_topic.as_str();
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(settings.checkpoint_replication_factor))
        .set("cleanup.policy", "compact");
    let opts = AdminOptions::new().operation_timeout(Some(settings.operation_timeout));
    let results = admin
        .create_topics([&new], &opts)
        .await
        .map_err(|e| SinkError::Client { op: "create checkpoint topic", source: e })?;
    for r in results {
        match r {
            Ok(_) => info!(topic, "created checkpoint topic"),
            // Created meanwhile by another instance: verified below like any existing topic.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => {
                warn!(topic = %t, ?code, "checkpoint topic creation failed");
                return Err(SinkError::Client { op: "create checkpoint topic", source: KafkaError::AdminOp(code) });
            }
        }
    }
    // Right after creation a broker may not know the topic yet: ask again, boundedly.
    for attempt in 0..20 {
        if verify_checkpoint_topic(settings).await? == CheckpointTopic::Verified {
            return Ok(());
        }
        debug!(topic, attempt, "checkpoint topic not known yet");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(SinkError::CheckpointTopic {
        topic: topic.to_owned(),
        problem: "was created but the cluster does not report it; check the brokers' logs".to_owned(),
    })
}

/// What [`verify_checkpoint_topic`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointTopic {
    /// It does not exist (the relay creates it at start).
    Absent,
    /// It exists and cannot lose a checkpoint.
    Verified,
}

/// Verifies, changing nothing, that an existing checkpoint topic cannot lose a checkpoint: compacted only (no
/// deletion by time or size), and replicated like the cluster allows (at least min(3, brokers) replicas).
pub async fn verify_checkpoint_topic(settings: &KafkaSettings) -> Result<CheckpointTopic, SinkError> {
    let admin = Arc::new(settings.admin()?);
    let verified = verify_checkpoint_topic_with(settings, &admin).await;
    close_in_background("admin client", admin);
    verified
}

async fn verify_checkpoint_topic_with(
    settings: &KafkaSettings,
    admin: &Arc<AdminClient<DefaultClientContext>>,
) -> Result<CheckpointTopic, SinkError> {
    let topic = settings.checkpoint_topic.as_str();
    let bad = |problem: String| SinkError::CheckpointTopic { topic: topic.to_owned(), problem };
    let (a, t, timeout) = (Arc::clone(admin), topic.to_owned(), settings.operation_timeout);
    let md = blocking(move || a.inner().fetch_metadata(Some(&t), timeout))
        .await?
        .map_err(|e| SinkError::Client { op: "checkpoint topic metadata", source: e })?;
    let brokers = md.brokers().len();
    let Some(found) = md.topics().iter().find(|t| t.name() == topic) else { return Ok(CheckpointTopic::Absent) };
    match found.error().map(RDKafkaErrorCode::from) {
        None => {}
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
            return Ok(CheckpointTopic::Absent);
        }
        Some(code) => {
            return Err(SinkError::Client { op: "checkpoint topic metadata", source: KafkaError::MetadataFetch(code) });
        }
    }
    let replicas = found.partitions().first().map_or(0, |p| p.replicas().len());
    let wanted = brokers.min(3);
    if replicas < wanted {
        return Err(bad(format!(
            "has {replicas} replica(s) on a cluster of {brokers} brokers: losing one broker would lose the \
             checkpoint. Recreate it with a replication factor of at least {wanted} (or set kafka.checkpoint_topic \
             to a new topic, which the relay creates with the broker's default.replication.factor)"
        )));
    }
    let opts = AdminOptions::new().operation_timeout(Some(settings.operation_timeout));
    let mut policy = None;
    for attempt in 0..20 {
        let configs = admin
            .describe_configs([&ResourceSpecifier::Topic(topic)], &opts)
            .await
            .map_err(|e| SinkError::Client { op: "describe checkpoint topic", source: e })?;
        for resource in configs {
            let resource = resource.map_err(|code| SinkError::Client {
                op: "describe checkpoint topic",
                source: KafkaError::AdminOp(code),
            })?;
            policy = resource.get("cleanup.policy").and_then(|e| e.value.clone());
        }
        if policy.is_some() {
            break;
        }
        // Right after creation a broker may answer without the value yet.
        debug!(topic, attempt, "checkpoint topic configuration not known yet");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match policy.as_deref() {
        Some("compact") => {}
        Some(policy) => {
            return Err(bad(format!(
                "has cleanup.policy={policy:?}: with deletion the broker removes a checkpoint once it is older than \
                 retention.ms or the partition exceeds retention.bytes, and the relay then cannot tell where to \
                 resume. Set cleanup.policy=compact (kafka-configs.sh --alter --entity-type topics --entity-name \
                 {topic} --add-config cleanup.policy=compact)"
            )));
        }
        None => warn!(topic, "the broker did not report the checkpoint topic's cleanup.policy; not verified"),
    }
    Ok(CheckpointTopic::Verified)
}

/// A client context that keeps librdkafka's per-partition end-of-data events out of the error log: reaching the
/// end is the normal way a checkpoint read finishes.
struct QuietContext;

impl ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_librdkafka(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // librdkafka reports it per partition or, from the consumer's error event, as a global code.
        if matches!(error, KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)) {
            debug!(%reason, "end of partition");
        } else {
            warn!(%error, %reason, "kafka client error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for QuietContext {}

/// Reads the checkpoint topic to its end with `read_committed` and returns this connector's latest checkpoint.
///
/// Call it after [`TxnProducer::connect`]: fencing settles this connector's own open transaction. Another
/// connector sharing the topic may still hold one, which stops every `read_committed` reader at its first offset
/// (the last stable offset), possibly before this connector's newest checkpoint: so the read starts only once the
/// last stable offset has reached the high watermark seen now, waiting at most `wait_limit`
/// ([`KafkaSettings::checkpoint_wait`] for a start: the broker aborts a transaction older than its timeout).
pub async fn read_checkpoint(
    settings: &KafkaSettings,
    connector: &str,
    wait_limit: Duration,
) -> Result<Option<Checkpoint>, SinkError> {
    CheckpointReader::open(settings).await?.read(connector, wait_limit).await
}

/// The clients that read the checkpoint, opened ahead of the read: opening them asks nothing of the topic, so it
/// may overlap the fencing it must follow ([`read_checkpoint`] says why the read itself comes after).
pub struct CheckpointReader {
    settings: KafkaSettings,
    /// Sees the high watermark (`read_uncommitted`).
    uncommitted: BaseConsumer<QuietContext>,
    /// Reads (`read_committed`).
    committed: BaseConsumer<QuietContext>,
}

impl std::fmt::Debug for CheckpointReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointReader").field("topic", &self.settings.checkpoint_topic).finish_non_exhaustive()
    }
}

impl CheckpointReader {
    /// Creates the two consumers (no request to the topic yet).
    pub async fn open(settings: &KafkaSettings) -> Result<CheckpointReader, SinkError> {
        let settings = settings.clone();
        blocking(move || {
            Ok(CheckpointReader {
                uncommitted: checkpoint_consumer(&settings, "read_uncommitted")?,
                committed: checkpoint_consumer(&settings, "read_committed")?,
                settings,
            })
        })
        .await?
    }

    /// [`read_checkpoint`] with these clients; they are closed afterwards, off the caller's path (librdkafka's
    /// destroy waits for its threads, about 100 ms, which a start need not wait for).
    pub async fn read(self, connector: &str, wait_limit: Duration) -> Result<Option<Checkpoint>, SinkError> {
        let connector = connector.to_owned();
        blocking(move || {
            let read = read_checkpoint_blocking(&self, &connector, wait_limit);
            close_in_background("checkpoint reader", self);
            read
        })
        .await?
    }
}

/// The longest a producer's warm-up metadata request waits (see [`TxnProducer::create`]).
const WARM_UP_LIMIT: Duration = Duration::from_secs(2);

/// Held by each `init_transactions` of this process (see [`TxnProducer::init`]).
static INIT_TRANSACTIONS: Mutex<()> = Mutex::new(());

/// Clears its flag when dropped: the caller of a blocking call is gone.
struct Wanted(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Wanted {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Drops a librdkafka client on a thread of its own: its destroy waits for the client's threads (about 100 ms),
/// which a start need not wait for.
fn close_in_background<T: Send + 'static>(what: &'static str, client: T) {
    // Without a thread the closure, and the client with it, is dropped here: slower, not wrong.
    if let Err(e) = std::thread::Builder::new().name(format!("close {what}")).spawn(move || drop(client)) {
        debug!(what, error = %e, "closing a kafka client inline");
    }
}

fn checkpoint_consumer(settings: &KafkaSettings, isolation: &str) -> Result<BaseConsumer<QuietContext>, SinkError> {
    let mut c = settings.client_config();
    c.set("group.id", format!("{}-checkpoint-reader", settings.transactional_id))
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .set("enable.partition.eof", "true")
        .set("allow.auto.create.topics", "false")
        .set("auto.offset.reset", "earliest")
        // The read ends at the partition's end, which the broker reports only when a fetch returns: with the
        // default 500 ms a fetch at the end waits that long for data that will not come. The reader lives only for
        // a start's read, so a fetch that returns at once costs nothing worth saving.
        .set("fetch.wait.max.ms", "1");
    c.create_with_context(QuietContext)
        .map_err(|e| SinkError::Client { op: "consumer creation", source: config::redact_config_error(e) })
}

fn read_checkpoint_blocking(
    reader: &CheckpointReader,
    connector: &str,
    wait_limit: Duration,
) -> Result<Option<Checkpoint>, SinkError> {
    let settings = &reader.settings;
    let topic = settings.checkpoint_topic.as_str();
    let watermarks = |consumer: &BaseConsumer<QuietContext>| {
        consumer
            .fetch_watermarks(topic, 0, settings.operation_timeout)
            .map_err(|e| SinkError::Client { op: "read checkpoint watermarks", source: e })
    };
    // librdkafka lists offsets with the client's isolation level: read_uncommitted gives the high watermark,
    // read_committed the last stable offset.
    let (low, end) = watermarks(&reader.uncommitted)?;
    if end <= low {
        return Ok(None);
    }
    let consumer = &reader.committed;
    let started = Instant::now();
    let mut logged = false;
    loop {
        let (_, lso) = watermarks(consumer)?;
        if lso >= end {
            break;
        }
        if started.elapsed() > wait_limit {
            return Err(SinkError::CheckpointHidden {
                topic: topic.to_owned(),
                lso,
                end,
                waited_s: started.elapsed().as_secs(),
            });
        }
        if !logged {
            info!(topic, lso, end, "waiting for another producer's open transaction on the checkpoint topic to end");
            logged = true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .map_err(|e| SinkError::Client { op: "assign checkpoint partition", source: e })?;
    consumer.assign(&tpl).map_err(|e| SinkError::Client { op: "assign checkpoint partition", source: e })?;
    let deadline = Instant::now() + settings.operation_timeout;
    let mut latest: Option<Checkpoint> = None;
    loop {
        if Instant::now() > deadline {
            return Err(SinkError::Client {
                op: "read checkpoint topic to its end",
                source: KafkaError::MessageConsumption(RDKafkaErrorCode::OperationTimedOut),
            });
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(_))) => {
                break;
            }
            Some(Err(e)) => return Err(SinkError::Client { op: "read checkpoint topic", source: e }),
            Some(Ok(m)) => {
                if m.key() != Some(connector.as_bytes()) {
                    continue;
                }
                let Some(payload) = m.payload() else {
                    // A tombstone deletes the checkpoint (operator reset).
                    latest = None;
                    continue;
                };
                let cp: Checkpoint = serde_json::from_slice(payload).map_err(|e| SinkError::BadCheckpoint {
                    topic: topic.to_owned(),
                    offset: m.offset(),
                    reason: e.to_string(),
                })?;
                latest = Some(cp);
            }
        }
    }
    Ok(latest)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_classified_from_the_code() {
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::InvalidTimestamp,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::UnknownPartition,
            RDKafkaErrorCode::UnknownTopic,
        ] {
            assert!(refusal_hint(code).is_some(), "{code:?}");
        }
        for code in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::RequestTimedOut,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::BrokerTransportFailure,
        ] {
            assert!(refusal_hint(code).is_none(), "{code:?} must stay transient");
        }
        let r = Refusal {
            topic: "t".into(),
            event_id: "e-1".into(),
            pos: Some(EventPos { commit_lsn: Lsn(0x10), index: 3 }),
            code: RDKafkaErrorCode::InvalidTimestamp,
            reason: "Broker: Invalid timestamp".into(),
        };
        let text = r.to_string();
        assert!(text.contains("e-1") && text.contains("\"t\"") && text.contains("timestamp column"), "{text}");
        assert!(!SinkError::Refused(Box::new(r)).is_transient());
    }

    #[test]
    fn tags_round_trip_and_positions_come_from_the_ledger() {
        for tag in [
            Tag { generation: 0, index: 0, timestamp_s: 0 },
            Tag { generation: 15, index: INDEX_MAX, timestamp_s: u32::MAX },
            Tag { generation: 7, index: 123_456, timestamp_s: 1_764_000_000 },
        ] {
            assert_eq!(Tag::unpack(tag.pack()), tag);
        }
        let mut open = OpenTxn {
            started: Instant::now(),
            generation: 1,
            records: 0,
            ledger: Vec::new(),
            topics: Vec::new(),
            checkpoint: None,
        };
        let rec = |topic, pos| OutRecord {
            topic,
            partition: None,
            key: b"",
            value: None,
            headers: &[],
            timestamp_ms: None,
            pos,
        };
        let at = |lsn, index| Some(EventPos { commit_lsn: Lsn(lsn), index });
        // Two PostgreSQL transactions (the second starting at its event #0), two topics, then the checkpoint.
        for (topic, pos) in [("a", at(0x10, 0)), ("a", at(0x10, 1)), ("b", at(0x20, 0)), ("a", at(0x20, 1))] {
            open.note(&rec(topic, pos));
        }
        assert_eq!(open.note(&rec("cp", None)), 4);
        assert_eq!(open.pos(1), at(0x10, 1));
        assert_eq!(open.pos(3), at(0x20, 1));
        assert_eq!(open.pos(4), None, "the checkpoint record is no event");
        assert_eq!(open.topics.iter().find(|(t, _)| t == "b").map(|(_, i)| *i), Some(2));
    }

    #[test]
    fn the_unauthorized_topic_is_read_from_librdkafkas_log_line() {
        let line = "TxnCoordinator/1: Failed to add partition \"app.secret\" [0] to transaction: Broker: Topic \
                    authorization failed";
        assert_eq!(added_partition_topic(line), Some("app.secret"));
        assert_eq!(added_partition_topic("Failed to add partition(s) to transaction"), None);
    }

    #[test]
    fn checkpoints_without_a_source_still_parse() {
        let old = r#"{"connector":"c","commit_lsn":"0/10","end_lsn":"0/20","time_ms":1,"relay_version":"0.1.0"}"#;
        let cp: Checkpoint = serde_json::from_str(old).unwrap();
        assert_eq!(cp.source, None);
        let new = Checkpoint::new(
            "c",
            Lsn(1),
            Lsn(2),
            Some(SourceIdentity { system_id: "7".into(), timeline: 1, database: "d".into() }),
        );
        let back: Checkpoint = serde_json::from_slice(&serde_json::to_vec(&new).unwrap()).unwrap();
        assert_eq!(back, new);
    }
}
