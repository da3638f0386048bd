//! The Kafka side: one transactional producer and the checkpoint topic.
//!
//! Invariant: a checkpoint record is only ever written inside the same Kafka transaction as the events it covers,
//! so a `read_committed` reader sees a checkpoint if and only if it sees every event up to it. [`TxnProducer::commit`]
//! returns `Ok` only after the broker committed the transaction; the pipeline acknowledges the checkpoint's LSN to
//! PostgreSQL only after that, never before.
//!
//! ```text
//!   begin ─▶ send(event)* ─▶ commit(checkpoint) ─▶ Ok  ──▶ caller may acknowledge checkpoint.end_lsn
//!                                           └────▶ Err ──▶ abort (when still possible); caller replays from the
//!                                                          last committed checkpoint
//! ```
//!
//! librdkafka's transactional calls block; they run on tokio's blocking pool so the runtime keeps serving the
//! replication stream (keepalives) while a commit waits for the broker.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use crate::pg::lsn::Lsn;

/// Kafka connection and transaction settings, built from the configuration.
#[derive(Clone)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// Stable `transactional.id`; fences older instances of the same connector.
    pub transactional_id: String,
    /// `transaction.timeout.ms`: how long the broker keeps an open transaction of a dead relay before aborting it.
    pub transaction_timeout_ms: u32,
    /// Compacted topic holding one checkpoint per connector.
    pub checkpoint_topic: String,
    /// Replication factor for the checkpoint topic when the relay creates it; -1 = broker default.
    pub checkpoint_replication_factor: i32,
    /// Timeout of one blocking transactional call (init, commit, abort).
    pub operation_timeout: Duration,
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
    fn base_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
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
    /// A record could not be delivered within the transaction.
    #[error("kafka delivery failed for topic {topic:?}: {reason}")]
    Delivery {
        /// Topic of the first failed record.
        topic: String,
        /// librdkafka's reason.
        reason: String,
    },
    /// A record exceeds the broker's or producer's size limit.
    #[error(
        "record for topic {topic:?} is {size} bytes, larger than the producer allows; raise \
         kafka.properties.\"message.max.bytes\" (and the topic's max.message.bytes) or shrink the event"
    )]
    TooLarge {
        /// Destination topic.
        topic: String,
        /// Encoded size (key + value).
        size: usize,
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
    /// The blocking task running a librdkafka call died.
    #[error("kafka worker task failed: {0}")]
    Join(String),
}

impl SinkError {
    /// `true` when a restart of the Kafka session (new transaction, replay from the checkpoint) may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            SinkError::Fenced { .. } | SinkError::TooLarge { .. } | SinkError::BadCheckpoint { .. } => false,
            SinkError::Client { source, .. } => !is_fatal(source),
            SinkError::Delivery { .. } | SinkError::Join(_) => true,
        }
    }

    fn from_kafka(op: &'static str, source: KafkaError, transactional_id: &str) -> SinkError {
        if is_fenced(&source) {
            SinkError::Fenced { transactional_id: transactional_id.to_owned() }
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
}

impl Checkpoint {
    /// A checkpoint for `connector` at the given transaction, stamped now.
    pub fn new(connector: &str, commit_lsn: Lsn, end_lsn: Lsn) -> Checkpoint {
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Checkpoint {
            connector: connector.to_owned(),
            commit_lsn,
            end_lsn,
            time_ms,
            relay_version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

/// One record to produce. Borrowed from the pipeline's buffers: produce copies into librdkafka's queue.
#[derive(Debug)]
pub struct OutRecord<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Explicit partition, or the default partitioner on the key.
    pub partition: Option<i32>,
    /// Record key.
    pub key: &'a [u8],
    /// Record value.
    pub value: &'a [u8],
    /// Headers in order.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// Record timestamp, ms since the Unix epoch.
    pub timestamp_ms: Option<i64>,
}

/// Remembers the first delivery failure of the open transaction; librdkafka would fail the commit anyway, this
/// keeps the reason so the error names the topic.
#[derive(Default)]
struct SinkContext {
    first_error: Mutex<Option<(String, String)>>,
}

impl ClientContext for SinkContext {}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, msg)) = result {
            if let Ok(mut slot) = self.first_error.lock() {
                if slot.is_none() {
                    *slot = Some((msg.topic().to_owned(), e.to_string()));
                }
            }
        }
    }
}

/// A transactional producer. At most one Kafka transaction is open at a time.
pub struct TxnProducer {
    producer: Arc<ThreadedProducer<SinkContext>>,
    settings: KafkaSettings,
    open: bool,
}

impl std::fmt::Debug for TxnProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxnProducer")
            .field("transactional_id", &self.settings.transactional_id)
            .field("open", &self.open)
            .finish()
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, SinkError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| SinkError::Join(e.to_string()))
}

impl TxnProducer {
    /// Creates the producer and calls `init_transactions`, which fences every older instance with the same
    /// `transactional.id` and aborts whatever transaction it left open.
    pub async fn connect(settings: &KafkaSettings) -> Result<TxnProducer, SinkError> {
        let mut c = settings.base_config();
        // Set after the pass-through map: these are what exactly-once rests on and must not be overridden.
        c.set("transactional.id", &settings.transactional_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("transaction.timeout.ms", settings.transaction_timeout_ms.to_string());
        // Defaults measured in bench/: lz4 costs a fraction of zstd's CPU per event; a 16 MiB producer queue (instead
        // of librdkafka's 1 GiB) bounds memory while a large transaction streams through. All overridable.
        for (k, v) in [
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
            .create_with_context(SinkContext::default())
            .map_err(|e| SinkError::Client { op: "producer creation", source: e })?;
        let producer = Arc::new(producer);
        let p = Arc::clone(&producer);
        let timeout = settings.operation_timeout;
        blocking(move || p.init_transactions(timeout))
            .await?
            .map_err(|e| SinkError::from_kafka("init_transactions", e, &settings.transactional_id))?;
        info!(transactional_id = %settings.transactional_id, "kafka transactions initialised; older instances fenced");
        Ok(TxnProducer { producer, settings: settings.clone(), open: false })
    }

    /// `true` while a transaction is open.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Opens a transaction if none is open.
    pub fn begin(&mut self) -> Result<(), SinkError> {
        if self.open {
            return Ok(());
        }
        if let Ok(mut slot) = self.producer.context().first_error.lock() {
            *slot = None;
        }
        self.producer
            .begin_transaction()
            .map_err(|e| SinkError::from_kafka("begin_transaction", e, &self.settings.transactional_id))?;
        self.open = true;
        Ok(())
    }

    /// Queues one record in the open transaction, waiting while librdkafka's queue is full.
    pub async fn send(&mut self, rec: &OutRecord<'_>) -> Result<(), SinkError> {
        self.begin()?;
        let mut headers = OwnedHeaders::new_with_capacity(rec.headers.len());
        for (k, v) in rec.headers {
            headers = headers.insert(Header { key: k, value: Some(*v) });
        }
        let mut record = BaseRecord::to(rec.topic).key(rec.key).payload(rec.value).headers(headers);
        if let Some(p) = rec.partition {
            record = record.partition(p);
        }
        if let Some(ts) = rec.timestamp_ms {
            record = record.timestamp(ts);
        }
        let mut waits = 0u32;
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    waits += 1;
                    if waits % 1000 == 0 {
                        debug!(waits, "kafka producer queue full, waiting for deliveries");
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _)) => {
                    return Err(SinkError::TooLarge {
                        topic: rec.topic.to_owned(),
                        size: rec.key.len() + rec.value.len(),
                    });
                }
                Err((e, _)) => return Err(SinkError::from_kafka("produce", e, &self.settings.transactional_id)),
            }
        }
    }

    /// Adds `checkpoint` to the open transaction and commits it. `Ok` means the broker holds everything.
    pub async fn commit(&mut self, checkpoint: &Checkpoint) -> Result<(), SinkError> {
        let value = serde_json::to_vec(checkpoint).map_err(|e| SinkError::Join(e.to_string()))?;
        let topic = self.settings.checkpoint_topic.clone();
        self.send(&OutRecord {
            topic: &topic,
            partition: Some(0),
            key: checkpoint.connector.as_bytes(),
            value: &value,
            headers: &[],
            timestamp_ms: Some(checkpoint.time_ms),
        })
        .await?;
        crate::failpoint::hit("after_produce_before_commit");
        // rdkafka's commit_transaction first flushes, and its flush serves delivery reports with a poll that
        // always sleeps a full 100 ms: every commit would take 100 ms. Wait for the deliveries here instead (the
        // producer's own thread serves them as they arrive); the flush inside commit then returns at once.
        let deadline = std::time::Instant::now() + self.settings.operation_timeout;
        while self.producer.in_flight_count() > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let p = Arc::clone(&self.producer);
        let timeout = self.settings.operation_timeout;
        let result = blocking(move || p.commit_transaction(timeout)).await?;
        match result {
            Ok(()) => {
                self.open = false;
                Ok(())
            }
            Err(e) => {
                let delivery = self.producer.context().first_error.lock().ok().and_then(|mut s| s.take());
                let err = match delivery {
                    Some((topic, reason)) if !is_fenced(&e) => SinkError::Delivery { topic, reason },
                    _ => SinkError::from_kafka("commit_transaction", e, &self.settings.transactional_id),
                };
                Err(err)
            }
        }
    }

    /// Aborts the open transaction, if any. Errors are logged: the caller is already recovering from something.
    pub async fn abort(&mut self) -> Result<(), SinkError> {
        if !self.open {
            return Ok(());
        }
        let p = Arc::clone(&self.producer);
        let timeout = self.settings.operation_timeout;
        let r = blocking(move || p.abort_transaction(timeout)).await?;
        self.open = false;
        r.map_err(|e| SinkError::from_kafka("abort_transaction", e, &self.settings.transactional_id))
    }

    /// Records queued or in flight.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }
}

/// Creates the checkpoint topic (one partition, compacted) when it does not exist.
pub async fn ensure_checkpoint_topic(settings: &KafkaSettings) -> Result<(), SinkError> {
    let admin: AdminClient<DefaultClientContext> =
        settings.base_config().create().map_err(|e| SinkError::Client { op: "admin client creation", source: e })?;
    let topic =
        NewTopic::new(&settings.checkpoint_topic, 1, TopicReplication::Fixed(settings.checkpoint_replication_factor))
            .set("cleanup.policy", "compact");
    let opts = AdminOptions::new().operation_timeout(Some(settings.operation_timeout));
    let results = admin
        .create_topics([&topic], &opts)
        .await
        .map_err(|e| SinkError::Client { op: "create checkpoint topic", source: e })?;
    for r in results {
        match r {
            Ok(_) => info!(topic = %settings.checkpoint_topic, "created checkpoint topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => {
                return Err(SinkError::Client { op: "create checkpoint topic", source: KafkaError::AdminOp(code) })
                    .inspect_err(|_| warn!(topic = %t, ?code, "checkpoint topic creation failed"));
            }
        }
    }
    Ok(())
}

/// Reads the checkpoint topic to its end with `read_committed` and returns this connector's latest checkpoint.
///
/// Call it after [`TxnProducer::connect`]: fencing aborts a dead instance's open transaction, so the last stable
/// offset is the end of the partition and nothing committed can still be hidden behind it.
pub async fn read_checkpoint(settings: &KafkaSettings, connector: &str) -> Result<Option<Checkpoint>, SinkError> {
    let settings = settings.clone();
    let connector = connector.to_owned();
    blocking(move || read_checkpoint_blocking(&settings, &connector)).await?
}

fn read_checkpoint_blocking(settings: &KafkaSettings, connector: &str) -> Result<Option<Checkpoint>, SinkError> {
    let mut c = settings.base_config();
    c.set("group.id", format!("{}-checkpoint-reader", settings.transactional_id))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    let consumer: BaseConsumer = c.create().map_err(|e| SinkError::Client { op: "consumer creation", source: e })?;
    let topic = settings.checkpoint_topic.as_str();
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, settings.operation_timeout)
        .map_err(|e| SinkError::Client { op: "read checkpoint watermarks", source: e })?;
    if high <= low {
        return Ok(None);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .map_err(|e| SinkError::Client { op: "assign checkpoint partition", source: e })?;
    consumer.assign(&tpl).map_err(|e| SinkError::Client { op: "assign checkpoint partition", source: e })?;
    let deadline = std::time::Instant::now() + settings.operation_timeout;
    let mut latest: Option<Checkpoint> = None;
    loop {
        if std::time::Instant::now() > deadline {
            return Err(SinkError::Client {
                op: "read checkpoint topic to its end",
                source: KafkaError::MessageConsumption(RDKafkaErrorCode::OperationTimedOut),
            });
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(_))) => break,
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
