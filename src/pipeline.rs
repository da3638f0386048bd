//! The relay loop: WAL -> events -> Kafka transactions -> acknowledgement.
//!
//! ```text
//!  ┌──────────── source (this task) ────────────┐   bounded channel (events and bytes)   ┌──── sink (own task) ────┐
//!  │ ReplicationStream ─▶ Decoder ─▶ Assembler  │ ── Item::Event / TxnEnd ──────────────▶ │ TxnProducer: send,      │
//!  │   ─▶ TableMapper / MessageMapper ─▶ Avro   │                                         │ commit(checkpoint) at a │
//!  │ ack(lsn) ◀── watch ◀───────────────────────┼─────────────────────────────────────────┤ PG commit, then ack     │
//!  └────────────────────────────────────────────┘                                         └─────────────────────────┘
//!   Heartbeat task: its own SQL connection, replaced after any failure
//! ```
//!
//! Invariants this module keeps (DESIGN.md 1–10):
//! - The flush LSN given to PostgreSQL is only ever the `end_lsn` of a checkpoint whose Kafka transaction
//!   `commit_transaction` confirmed; the replication stream ignores anything lower, so it never goes backwards.
//! - A Kafka transaction is committed only between PostgreSQL transactions (the sink tracks whether the last item
//!   was a `TxnEnd`), so it holds whole PostgreSQL transactions plus the checkpoint of the last one.
//! - On any error the open Kafka transaction is aborted and the next session starts from the last *known*
//!   committed checkpoint; the assembler drops every transaction ending at or before it. When the producer's
//!   commit or abort failed, what is committed is not known: the whole start-up runs again (a new producer fences
//!   and settles the old transaction, then the checkpoint is read back). Hence no loss and no duplicate in a
//!   read_committed view.
//! - Every change of a published relation becomes an event, a dead letter, or a named error; a row no mapping
//!   claims is never acknowledged silently (unless `outbox.unmapped_relations = "ignore"` says so).
//! - Every connection is replaced after it fails, and every wait on one is bounded: the replication connection by
//!   `postgres.stall_timeout_ms` (the server is asked for a reply with every status update), SQL statements by the
//!   same timeout, Kafka calls by their operation timeout, registry calls by their request timeout.
//! - Memory between source and sink is bounded by `kafka.max_buffered_bytes` (a semaphore of bytes) besides the
//!   channel's event count.
//! - Events keep WAL order all the way: one source, one channel, one producer at a time with idempotence (which
//!   preserves per-partition order across retries).
//! - Pipelined commits (`kafka.pipelined_commits`, two producers on alternating transactional ids) overlap one
//!   batch's commit with producing the next, and change none of the above: the next batch is sent only once the
//!   broker acknowledged every record of the previous one (so each partition holds them in WAL order), commits
//!   and acknowledgements follow batch order one at a time, a batch commits only after the previous commit
//!   succeeded and is aborted when it failed, and both ids are fenced before the checkpoint is read. See [`Sink`].
//!
//! Dead letters (`errors.mode = "dead_letter"`): an event that cannot be mapped or encoded is replaced by a dead
//! letter in the source; one Kafka refuses is replaced in the sink — at once when the refusal is known before
//! sending (a missing topic, a partition beyond the topic's, a record larger than the producer allows), otherwise
//! (the broker refused it inside the transaction) by aborting, remembering its [`EventPos`], and replaying from the
//! checkpoint, where the sink then sends the dead letter in its place. Either way it is committed with its
//! transaction's other events and the checkpoint.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::avro::{EncodeError, Encoders, KeyEncoder, RegistrySettings, ValueEncoder};
use crate::config::{Config, ConnectError, ErrorMode, UnmappedRelations};
use crate::dead_letter::{self, DeadLetter};
use crate::debezium::{DebeziumOffset, HandoverError, Skip};
use crate::kafka::{
    Checkpoint, EventPos, KafkaSettings, OutRecord, Refusal, SinkError, TopicState, Topics, TxnProducer,
};
use crate::metrics::Stats;
use crate::outbox::{MapError, MessageMapper, OutboxEvent, OutboxTableConfig, TableMapper};
use crate::pg::identity::SourceIdentity;
use crate::pg::lsn::{Lsn, PgTimestamp};
use crate::pg::pgoutput::{DecodeError, Decoder, DecoderOptions, Oid, Relation};
use crate::pg::replication::{
    Backoff, ReplicationClient, ReplicationError, ReplicationMessage, ReplicationOptions, Streaming, XLogData,
};
use crate::pg::slot::{self, SlotError, TableName};
use crate::pg::txn::{Assembler, Output, SpillSettings, TxnError, TxnEvent};
use crate::preflight::{self, Finding, Replication};
use crate::startup::{self, Facts, Plan, StartupError};

/// How long a restart waits for a slot still held by a previous (dead) connection.
const SLOT_BUSY_GRACE: Duration = Duration::from_secs(75);
/// A session that ran this long before failing restarts with the initial backoff again.
const STABLE_SESSION: Duration = Duration::from_secs(60);
/// A session counts as delivering once it committed, or after running this long with nothing waiting: a restart
/// loop whose sessions never commit must not look ready.
const SETTLED_SESSION: Duration = Duration::from_secs(5);
/// The sink checks the open transaction's age and notes progress every this many records.
const SINK_CHECK_EVERY: u64 = 256;

pub use crate::startup::RunOptions;

/// Why the relay stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Start-up refuses (gap, lost or unusable slot, a checkpoint of another server, a bad `--start-lsn`).
    #[error(transparent)]
    Startup(#[from] StartupError),
    /// Debezium's offset could not be read for a hand-over.
    #[error("hand-over from Debezium: {0}")]
    Handover(#[from] HandoverError),
    /// A precondition of start-up does not hold (server version or settings, outbox tables, spill directory).
    #[error(transparent)]
    Preflight(#[from] Box<Finding>),
    /// The server behind `postgres.url` changed while running (failover, DNS): start-up checks run again.
    #[error("the PostgreSQL server changed while running (was {expected}, now {found}); starting over")]
    ServerChanged {
        /// The server the run started on.
        expected: SourceIdentity,
        /// The server now.
        found: SourceIdentity,
    },
    /// A connection stayed silent longer than `postgres.stall_timeout_ms`.
    #[error("{what} silent for {secs} s (postgres.stall_timeout_ms); reconnecting")]
    Stalled {
        /// Which connection.
        what: &'static str,
        /// How long.
        secs: u64,
    },
    /// An outbox mapping that cannot be bound (a table lacking configured columns, a message mapping).
    #[error(transparent)]
    Mapping(MapError),
    /// The server speaks a pgoutput protocol version the decoder does not.
    #[error(transparent)]
    Protocol(#[from] crate::pg::pgoutput::OptionsError),
    /// Slot or publication management.
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// The SQL connection could not be opened.
    #[error(transparent)]
    SqlConnect(#[from] ConnectError),
    /// A SQL statement failed.
    #[error("postgresql query failed while {doing}: {source}")]
    Sql {
        /// What was being done.
        doing: &'static str,
        /// The error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// Replication protocol.
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    /// Undecodable bytes from the server.
    #[error("undecodable pgoutput message at WAL {lsn}: {source}")]
    Decode {
        /// WAL position of the message.
        lsn: Lsn,
        /// Decoder error.
        #[source]
        source: DecodeError,
    },
    /// Transaction structure.
    #[error(transparent)]
    Txn(#[from] TxnError),
    /// An outbox row could not be mapped.
    #[error("outbox row in transaction ending at {lsn} cannot be mapped: {source}")]
    Map {
        /// Transaction commit LSN.
        lsn: Lsn,
        /// Mapper error.
        #[source]
        source: Box<MapError>,
    },
    /// A published table that no `[[outbox.tables]]` block maps sent a row.
    #[error(
        "a row of {relation} arrived in the transaction committed at {lsn}, but no [[outbox.tables]] block maps that \
         table. The publication covers more than the outbox tables (or publishes a partitioned table's partitions \
         under their own names). Map the table, remove it from the publication, or set \
         outbox.unmapped_relations = \"ignore\""
    )]
    Unmapped {
        /// `schema.table`.
        relation: String,
        /// Transaction commit LSN.
        lsn: Lsn,
    },
    /// An event could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// Kafka.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The broker refused a record inside a transaction: replay from the checkpoint, where the refusal is known
    /// before sending (a dead letter in its place, or a stop naming the event).
    #[error("{0}; replaying from the last checkpoint to handle it before sending")]
    ReplayRefusal(Box<Refusal>),
}

impl PipelineError {
    /// `true` when a new session from the last checkpoint may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            PipelineError::Replication(e) => e.is_transient(),
            PipelineError::Sink(e) => e.is_transient(),
            PipelineError::Encode(e) => e.is_transient(),
            PipelineError::Handover(e) => e.is_transient(),
            PipelineError::Slot(e) => e.is_transient(),
            PipelineError::Startup(StartupError::Slot(e)) => e.is_transient(),
            PipelineError::Preflight(e) => e.is_transient(),
            PipelineError::SqlConnect(e) => e.is_transient(),
            PipelineError::Sql { source, .. } => crate::pg::is_transient_sql_error(source),
            PipelineError::Stalled { .. } | PipelineError::ServerChanged { .. } | PipelineError::ReplayRefusal(_) => {
                true
            }
            // A full spill directory may be freed; the transaction is decoded again from the WAL.
            PipelineError::Txn(TxnError::Spill { source, .. }) => source.kind() == std::io::ErrorKind::StorageFull,
            _ => false,
        }
    }
}

/// Per relation OID: the relation version a mapper was bound to, and the mapper, or `None`
/// for a published table that is not an outbox table.
type MapperCache = HashMap<Oid, (Arc<Relation>, Option<Arc<TableMapper>>)>;

/// Refusals learnt inside a transaction, remembered across sessions so the replay knows them before sending.
type Poison = Arc<Mutex<Refusals>>;

/// How long a topic-level refusal (not authorized, missing) is believed before the topic is tried again: the
/// operator may grant the ACL or create the topic.
const TOPIC_REFUSAL_TTL: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Default)]
struct Refusals {
    /// Records Kafka refused (too large, bad timestamp): a dead letter takes their place.
    events: HashMap<EventPos, Refusal>,
    /// Topics Kafka refused as a whole (not authorized, deleted): every record of them is refused.
    topics: HashMap<String, (Refusal, Instant)>,
}

impl Refusals {
    fn is_empty(&self) -> bool {
        self.events.is_empty() && self.topics.is_empty()
    }

    /// The known refusal of `e`, if any.
    fn of(&self, e: &EncodedEvent) -> Option<Refusal> {
        if let Some(r) = self.events.get(&e.pos) {
            return Some(r.clone());
        }
        let (r, since) = self.topics.get(&*e.topic)?;
        (since.elapsed() < TOPIC_REFUSAL_TTL).then(|| Refusal { event_id: e.id.clone(), pos: Some(e.pos), ..r.clone() })
    }
}

/// One message from source to sink.
#[derive(Debug)]
enum Item {
    Event(EncodedEvent),
    TxnEnd { commit_lsn: Lsn, end_lsn: Lsn, commit_time: PgTimestamp },
}

#[derive(Debug)]
struct EncodedEvent {
    topic: Arc<str>,
    partition: Option<i32>,
    key: Vec<u8>,
    /// Empty only for a dead letter without value.
    value: Vec<u8>,
    /// Header `id`.
    id: String,
    /// Header `type`.
    event_type: String,
    /// Additional headers, after `id` and `type` (for a dead letter: all its headers).
    headers: Vec<(String, bytes::Bytes)>,
    /// `None`: the producer's clock.
    timestamp_ms: Option<i64>,
    pos: EventPos,
    /// `schema.table` or `message:<prefix>`.
    source: String,
    /// Already a dead letter: a refusal of it stops the relay.
    dead_letter: bool,
    /// Bytes it holds of the pipeline's budget.
    cost: u32,
}

impl EncodedEvent {
    fn compute_cost(&mut self) {
        let headers: usize = self.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        let bytes = self.key.len() + self.value.len() + self.id.len() + self.event_type.len() + headers + 64;
        self.cost = u32::try_from(bytes).unwrap_or(u32::MAX);
    }
}

/// The source's side of the channel: waits for room in bytes, then in events.
struct ToSink {
    tx: mpsc::Sender<Item>,
    budget: Arc<Semaphore>,
    budget_bytes: u32,
}

impl ToSink {
    /// `false` once the sink has stopped (its error is reported by the session).
    async fn send(&self, item: Item) -> bool {
        if let Item::Event(e) = &item {
            // An event larger than the whole budget waits for an empty buffer, then goes alone.
            match self.budget.acquire_many(e.cost.min(self.budget_bytes)).await {
                Ok(permit) => permit.forget(),
                Err(_) => return false,
            }
        }
        self.tx.send(item).await.is_ok()
    }
}

/// Everything that lives across sessions.
struct Relay {
    cfg: Config,
    kafka: KafkaSettings,
    tables: Vec<(TableName, OutboxTableConfig)>,
    /// The message mapping and the encoders, built by [`Preparing`] while the first start's other steps run; set
    /// before the first fencing (see `Relay::encoding_ready`), so no event is handled without them.
    encoding: std::sync::OnceLock<Encoding>,
    /// The build of [`Self::encoding`] until the first start has waited for it.
    preparing: tokio::sync::Mutex<Option<Preparing>>,
    stats: Arc<Stats>,
    /// The dead-letter topic in `errors.mode = "dead_letter"`.
    dead_letter_topic: Option<Arc<str>>,
    poison: Poison,
    stall_timeout: Duration,
    /// Debezium's offset on a first start that continues from it (`[debezium]`); `None` once the relay has a
    /// checkpoint of its own.
    handover: std::sync::Mutex<Option<DebeziumOffset>>,
}

/// The message mapping and the encoders a start builds from the configuration alone.
struct Encoding {
    messages: Option<MessageMapper>,
    /// Value encoder (the envelope over all tables' and the message outbox's fields).
    value_encoder: Arc<dyn ValueEncoder>,
    key_encoder: Arc<KeyEncoder>,
}

/// The build of the message mapping and the encoders with their registry client, on the blocking pool. It needs no
/// server (the registry client's HTTP client, tens of milliseconds of CPU for OpenSSL 3 to decode the system trust
/// store, is built in the background and awaited by the first registry request), so it starts at once
/// ([`Preparing::start`]) and runs while the lease is sought and while the first start checks PostgreSQL and prepares
/// Kafka; that start waits for it before fencing, so a configuration it refuses (a schema file, the message mapping,
/// the registry's TLS files) fences nobody.
pub struct Preparing(tokio::task::JoinHandle<Result<(Option<MessageMapper>, Encoders), PipelineError>>);

impl std::fmt::Debug for Preparing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preparing").field("finished", &self.0.is_finished()).finish()
    }
}

impl Preparing {
    /// Starts the build.
    pub fn start(cfg: &Config) -> Preparing {
        let cfg = cfg.clone();
        Preparing(tokio::task::spawn_blocking(move || {
            let messages = if cfg.outbox.messages.enabled {
                let mapping = cfg.outbox.message_mapping();
                Some(MessageMapper::new(cfg.outbox.messages.prefix.clone(), &mapping).map_err(PipelineError::Mapping)?)
            } else {
                None
            };
            let encoders = Encoders::new(&cfg, &RegistrySettings::from_config(&cfg.schema_registry))?;
            Ok((messages, encoders))
        }))
    }

    async fn wait(&mut self) -> Result<(Option<MessageMapper>, Encoders), PipelineError> {
        (&mut self.0).await.map_err(|e| PipelineError::Sink(SinkError::Join(format!("preparing the encoders: {e}"))))?
    }
}

/// Runs the relay until `shutdown` turns true or a definite error happens.
pub async fn run(
    cfg: Config,
    preparing: Preparing,
    opts: RunOptions,
    stats: Arc<Stats>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), PipelineError> {
    let mut tables = Vec::new();
    for t in &cfg.outbox.tables {
        tables.push((t.table.clone(), t.clone()));
    }
    let relay = Relay {
        kafka: KafkaSettings::from_config(&cfg.kafka),
        dead_letter_topic: (cfg.errors.mode == ErrorMode::DeadLetter)
            .then(|| Arc::from(cfg.errors.dead_letter_topic.as_str())),
        stall_timeout: Duration::from_millis(cfg.postgres.stall_timeout_ms),
        cfg,
        tables,
        encoding: std::sync::OnceLock::new(),
        preparing: tokio::sync::Mutex::new(Some(preparing)),
        stats,
        poison: Arc::default(),
        handover: std::sync::Mutex::new(None),
    };
    relay.run(opts, &mut shutdown).await
}

/// Awaits `fut` for at most `limit`; a stalled server connection becomes [`PipelineError::Stalled`].
async fn bounded<T>(
    limit: Duration,
    what: &'static str,
    fut: impl std::future::Future<Output = Result<T, PipelineError>>,
) -> Result<T, PipelineError> {
    tokio::time::timeout(limit, fut).await.map_err(|_| PipelineError::Stalled { what, secs: limit.as_secs() })?
}

impl Relay {
    /// Waits for the encoders' build (the first start only) and checks the local schemas against the registry.
    async fn encoding_ready(&self) -> Result<(), PipelineError> {
        let mut preparing = self.preparing.lock().await;
        let Some(build) = preparing.as_mut() else { return Ok(()) };
        // Awaited through a reference: a start abandoned here (another of its steps failed) leaves the build for the
        // next attempt.
        let built = build.wait().await;
        *preparing = None;
        let (messages, encoders) = built?;
        let cfg = &self.cfg;
        if let Some(registered) = &encoders.registered.as_ref().filter(|_| !cfg.schema_registry.use_latest_version) {
            // A schema its subject would refuse fails every event of its type: refuse the start instead, naming
            // why. (With use_latest_version the registry's schemas are used, not the local files.) An unreachable
            // registry does not stop the start: each registration is still judged by the registry, and a standby
            // taking over during an outage delivers the event types whose ids it fetches once the registry answers.
            match crate::avro::schemas::refuse_incompatible(&encoders.registry, cfg, registered).await {
                Err(e) if e.is_transient() => warn!(error = %e, "local schemas not checked against the registry"),
                other => other?,
            }
        }
        let _ = self.encoding.set(Encoding { messages, value_encoder: encoders.value, key_encoder: encoders.key });
        Ok(())
    }

    /// The encoders; set before any session starts ([`Self::encoding_ready`] precedes the first fencing).
    fn encoding(&self) -> Result<&Encoding, PipelineError> {
        self.encoding
            .get()
            .ok_or_else(|| PipelineError::Sink(SinkError::Join("the encoders were not built before the start".into())))
    }

    async fn sql(&self) -> Result<tokio_postgres::Client, PipelineError> {
        bounded(self.stall_timeout, "sql connection", async {
            Ok(self.cfg.postgres.connect_sql_timeout(self.stall_timeout).await?)
        })
        .await
    }

    /// Opens a replication connection and asks the server who it is: identity and current WAL position.
    async fn replication(&self) -> Result<Replication, PipelineError> {
        let cfg = self.cfg.postgres.connection()?.clone();
        bounded(self.stall_timeout, "replication connection", async { Ok(preflight::replication(&cfg).await?) }).await
    }

    /// Runs until shutdown or a definite error. Once the relay has started, transient failures outside a session
    /// (a producer whose commit or abort failed, services unreachable while starting over) start everything over
    /// after a backoff: fencing, checkpoint, slot check, replication. A first start that fails returns the error at
    /// once, so a misconfigured deployment fails fast and visibly.
    async fn run(&self, mut opts: RunOptions, shutdown: &mut watch::Receiver<bool>) -> Result<(), PipelineError> {
        let pg = &self.cfg.postgres;
        let mut backoff = Backoff::new(
            Duration::from_millis(pg.reconnect_backoff_initial_ms),
            Duration::from_millis(pg.reconnect_backoff_max_ms),
        );
        let mut started = false;
        loop {
            let attempt = Instant::now();
            match self.run_once(&mut opts, &mut started, shutdown).await {
                Err(e) if started && e.is_transient() && !*shutdown.borrow() => {
                    if attempt.elapsed() > STABLE_SESSION {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    self.stats.restarts.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %e, delay_ms = delay.as_millis() as u64, "relay failed; starting over from the last checkpoint");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => return Ok(()),
                    }
                }
                other => return other,
            }
        }
    }

    async fn run_once(
        &self,
        opts: &mut RunOptions,
        started: &mut bool,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), PipelineError> {
        let pg = &self.cfg.postgres;
        let span =
            info_span!("relay", connector = %self.cfg.connector_name, slot = %pg.slot, publication = %pg.publication);
        async {
            let limit = self.stall_timeout;
            let t0 = Instant::now();
            // PostgreSQL's checks and Kafka's preparations (the checkpoint topic, the producer and the checkpoint
            // reader connected) do not depend on each other: they overlap, and the start takes the longer of the two
            // instead of their sum. The first error of either ends the start. Fencing waits for both: a start that
            // fails on PostgreSQL leaves a running instance alone.
            let postgres = async {
                let sql = self.sql().await?;
                // The preflight `check` reports; here the first finding stops the start.
                let findings = bounded(limit, "sql connection", async {
                    let doing = "reading the server settings";
                    let settings = preflight::server_settings(&sql)
                        .await
                        .map_err(|source| PipelineError::Sql { doing, source })?;
                    let mut findings = settings.findings(pg);
                    let doing = "reading the outbox tables";
                    findings.extend(
                        preflight::outbox_tables(&sql, &self.cfg.outbox.tables, &settings.database)
                            .await
                            .map_err(|source| PipelineError::Sql { doing, source })?,
                    );
                    Ok(findings)
                })
                .await?;
                if let Some(finding) = findings.into_iter().next() {
                    return Err(Box::new(finding).into());
                }
                preflight::spill_dir(&pg.spill_dir).map_err(Box::new)?;
                let table_names: Vec<TableName> = self.tables.iter().map(|(t, _)| t.clone()).collect();
                bounded(limit, "sql connection", async {
                    Ok(slot::ensure_publication(&sql, &pg.publication, &table_names, pg.create_publication).await?)
                })
                .await?;
                Ok::<_, PipelineError>(sql)
            };
            // When each step finished, for the debug lines below: the longest one is the start's critical path.
            let done_ms = || t0.elapsed().as_millis() as u64;
            let kafka = async {
                let (topic_ms, (producer, producer_ms), (second, second_ms), (reader, reader_ms)) = tokio::try_join!(
                    async {
                        crate::kafka::ensure_checkpoint_topic(&self.kafka).await?;
                        Ok::<_, PipelineError>(done_ms())
                    },
                    async {
                        Ok((TxnProducer::create(&self.kafka, Arc::clone(&self.stats.delivered)).await?, done_ms()))
                    },
                    async {
                        let second = self.kafka.pipelined();
                        Ok((TxnProducer::create(&second, Arc::clone(&self.stats.delivered)).await?, done_ms()))
                    },
                    async { Ok((crate::kafka::CheckpointReader::open(&self.kafka).await?, done_ms())) },
                )?;
                debug!(topic_ms, producer_ms, second_ms, reader_ms, "start: kafka prepared");
                Ok::<_, PipelineError>((producer, second, reader))
            };
            let ((sql, postgres_ms), ((mut active, mut second, reader), kafka_ms), encoders_ms) = tokio::try_join!(
                async { Ok::<_, PipelineError>((postgres.await?, done_ms())) },
                async { Ok::<_, PipelineError>((kafka.await?, done_ms())) },
                async { self.encoding_ready().await.map(|()| done_ms()) },
            )?;
            debug!(postgres_ms, kafka_ms, encoders_ms, "start: checks and preparations done");
            // Fence first (both transactional ids): afterwards no older instance can commit, so the checkpoint read
            // next is final. Not pipelined, the second id is fenced all the same: an instance that pipelines (before
            // the setting changed, a standby of another configuration) could otherwise still commit on it after this
            // one read the checkpoint. Where the principal may not use that id, no instance can.
            active.init().await?;
            match second.init().await {
                Ok(()) => {}
                Err(SinkError::TransactionalIdNotAuthorized { transactional_id }) if !self.kafka.pipelined_commits => {
                    debug!(%transactional_id, "not allowed to use the pipelined commits' id; nothing to fence");
                }
                Err(e) => return Err(e.into()),
            }
            let mut producers = Producers { active, idle: self.kafka.pipelined_commits.then_some(second) };
            info!(
                transactional_id = %self.kafka.transactional_id,
                pipelined = self.kafka.pipelined_commits,
                "kafka transactions initialised; older instances fenced"
            );
            let checkpoint = reader.read(&self.cfg.connector_name, self.kafka.checkpoint_wait()).await?;
            let handover = match (&checkpoint, self.cfg.debezium.enabled()) {
                (None, true) => {
                    let offset = crate::debezium::read_offset(&self.kafka, &self.cfg.debezium, limit).await?;
                    info!(
                        connector = %self.cfg.debezium.connector,
                        lsn = %offset.lsn,
                        tx_id = offset.tx_id,
                        lsn_commit = ?offset.lsn_commit.map(|l| l.to_string()),
                        "continuing from Debezium's offset: what it delivered is skipped"
                    );
                    Some(offset)
                }
                (Some(_), true) => {
                    debug!("the relay has a checkpoint of its own: [debezium] is not read again");
                    None
                }
                _ => None,
            };
            opts.debezium_handover = handover.is_some();
            *self.handover.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = handover;
            // The server's WAL position is read after the checkpoint, so a checkpoint is never ahead of it.
            let mut replication = self.replication().await?;
            let history = bounded(limit, "replication connection", async {
                Ok(replication.history_for(checkpoint.as_ref()).await?)
            })
            .await?;
            let Replication { client, server, wal: server_wal } = replication;
            let slot_info =
                bounded(limit, "sql connection", async { Ok(slot::slot_info(&sql, &pg.slot).await?) }).await?;
            let facts = Facts {
                slot_name: &pg.slot,
                slot: slot_info.as_ref(),
                create_slot: pg.create_slot,
                checkpoint: checkpoint.as_ref(),
                server: &server,
                server_wal,
                history: &history,
            };
            let (plan, trusted) = startup::plan(&facts, opts)?;
            let mut checkpoint = checkpoint.filter(|_| trusted);
            let resume = match plan {
                Plan::Resume { from } => from,
                Plan::CreateSlot => {
                    // A genesis checkpoint (0/0) first: if the relay dies right after creating the slot, the next
                    // start knows the slot is its own and starts from it instead of reporting a gap.
                    let genesis = Checkpoint::new(&self.cfg.connector_name, Lsn::ZERO, Lsn::ZERO, Some(server.clone()));
                    producers.active.commit(&genesis).await?;
                    checkpoint = Some(genesis);
                    let created = bounded(limit, "sql connection", async {
                        Ok(slot::create_slot(&sql, &pg.slot, pg.failover_slot).await?)
                    })
                    .await?;
                    startup::start_position(opts, &created, checkpoint.as_ref(), server_wal)?
                }
            };
            // An operator's start position applies once; after a restart the checkpoint rules.
            opts.start_lsn = None;
            *started = true;
            info!(
                resume = %resume,
                checkpoint = ?checkpoint.as_ref().map(|c| c.end_lsn),
                server = %server,
                took_ms = t0.elapsed().as_millis() as u64,
                "starting"
            );
            let heartbeat = Heartbeat::start(&self.cfg, sql, Arc::clone(&self.stats));
            self.sessions(producers, client, server, resume, &heartbeat, shutdown).await
        }
        .instrument(span)
        .await
    }

    /// Replication sessions on one set of producers. Returns when a session leaves a producer spent (the caller
    /// starts over), on shutdown, or on a definite error.
    async fn sessions(
        &self,
        producers: Producers,
        client: ReplicationClient,
        server: SourceIdentity,
        mut resume: Lsn,
        heartbeat: &Heartbeat,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), PipelineError> {
        let pg = &self.cfg.postgres;
        let mut backoff = Backoff::new(
            Duration::from_millis(pg.reconnect_backoff_initial_ms),
            Duration::from_millis(pg.reconnect_backoff_max_ms),
        );
        let mut producer = Some(producers);
        let mut client = Some(client);
        let mut slot_busy_since: Option<Instant> = None;
        loop {
            let started = Instant::now();
            let Some(p) = producer.take() else { return Ok(()) };
            let (result, p, acked) = self.session(p, client.take(), &server, resume, heartbeat, shutdown).await;
            resume = resume.max(acked);
            let Some(p) = p else {
                if result.is_err() {
                    self.stats.producer_restarts.fetch_add(1, Ordering::Relaxed);
                }
                return result;
            };
            producer = Some(p);
            // After a crash the old walsender may hold the slot until PostgreSQL notices the dead connection
            // (at most wal_sender_timeout): wait for it, boundedly, instead of failing the restart.
            let slot_busy = matches!(&result, Err(PipelineError::Replication(ReplicationError::SlotInUse(_))));
            if slot_busy {
                let since = *slot_busy_since.get_or_insert_with(Instant::now);
                if since.elapsed() < SLOT_BUSY_GRACE && !*shutdown.borrow() {
                    info!(
                        waited_ms = since.elapsed().as_millis() as u64,
                        "slot still active for a previous connection; waiting"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = shutdown.changed() => return Ok(()),
                    }
                    continue;
                }
            } else {
                slot_busy_since = None;
            }
            match result {
                Ok(()) => return Ok(()),
                Err(PipelineError::ReplayRefusal(refusal)) if !*shutdown.borrow() => {
                    warn!(error = %refusal, "record refused inside a transaction; replaying from the last checkpoint");
                }
                // A server that changed under us needs the start-up checks again.
                Err(e @ PipelineError::ServerChanged { .. }) => return Err(e),
                Err(e) if e.is_transient() && !*shutdown.borrow() => {
                    if started.elapsed() > STABLE_SESSION {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    self.stats.restarts.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %e, resume = %resume, delay_ms = delay.as_millis() as u64, "session failed; restarting from the last checkpoint");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => return Ok(()),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn replication_options(&self, resume: Lsn) -> ReplicationOptions {
        let pg = &self.cfg.postgres;
        let mut o = ReplicationOptions::new(pg.slot.clone(), [pg.publication.clone()]);
        o.start_lsn = resume;
        o.proto_version = (pg.protocol_version != 0).then_some(pg.protocol_version);
        o.streaming = if pg.streaming { Streaming::On } else { Streaming::Off };
        o.messages = true;
        o.status_interval = Duration::from_millis(pg.status_interval_ms);
        o
    }

    /// One replication session. Returns the producers (when they are clean: no transaction open, nothing failed
    /// with an unknown outcome) and the last acknowledged LSN.
    async fn session(
        &self,
        producers: Producers,
        client: Option<ReplicationClient>,
        server: &SourceIdentity,
        resume: Lsn,
        heartbeat: &Heartbeat,
        shutdown: &mut watch::Receiver<bool>,
    ) -> (Result<(), PipelineError>, Option<Producers>, Lsn) {
        let (tx, rx) = mpsc::channel::<Item>(8192);
        let budget_bytes = u32::try_from(self.cfg.kafka.max_buffered_bytes).unwrap_or(u32::MAX);
        let budget = Arc::new(Semaphore::new(budget_bytes as usize));
        let (ack_tx, ack_rx) = watch::channel(resume);
        let sink = Sink {
            topics: Topics::new(&self.kafka),
            producer: producers.active,
            idle: producers.idle,
            committing: None,
            pipelined: self.kafka.pipelined_commits,
            connector: self.cfg.connector_name.clone(),
            server: server.clone(),
            max_events: self.cfg.kafka.max_batch_events,
            max_wait: Duration::from_millis(self.cfg.kafka.max_batch_ms),
            stats: Arc::clone(&self.stats),
            ack: ack_tx,
            budget: Arc::clone(&budget),
            budget_bytes,
            dead_letter_topic: self.dead_letter_topic.clone(),
            type_header: self.cfg.outbox.type_header,
            known_refusals: self.poison.lock().map(|p| p.clone()).unwrap_or_default(),
            poison: Arc::clone(&self.poison),
            batch_dead_letters: 0,
        };
        let sink_task = tokio::spawn(sink.run(rx).instrument(tracing::Span::current()));
        let to_sink = ToSink { tx, budget, budget_bytes };
        let source_result = self.source(client, server, resume, to_sink, ack_rx.clone(), heartbeat, shutdown).await;
        self.stats.streaming.store(false, Ordering::Relaxed);
        // The channel is closed now: the sink commits what is complete, aborts a partial transaction, and stops.
        let (sink_result, producer) = match sink_task.await {
            Ok((r, p)) => (r, p),
            Err(e) => (Err(PipelineError::Sink(SinkError::Join(e.to_string()))), None),
        };
        // Its last commit may have marked the session delivering: it is over.
        self.stats.streaming.store(false, Ordering::Relaxed);
        let acked = *ack_rx.borrow();
        let result = match (source_result, sink_result) {
            // The sink's failure is the cause when both failed (the source then only saw the channel close).
            (_, Err(e)) | (Err(e), Ok(())) => Err(e),
            (Ok(mut stream), Ok(())) => {
                // Graceful stop: send the final flush position, then CopyDone.
                if let Some(s) = stream.as_mut() {
                    s.ack(acked);
                    if let Err(e) = s.send_status().await {
                        warn!(error = %e, "final status update failed");
                    }
                }
                if let Some(s) = stream {
                    match s.stop().await {
                        Ok(client) => {
                            let _ = client.close().await;
                        }
                        Err(e) => warn!(error = %e, "replication stop failed"),
                    }
                }
                info!(acked = %acked, "stopped cleanly");
                Ok(())
            }
        };
        (result, producer, acked)
    }

    /// Reads the stream until shutdown (returns the stream for a clean stop) or an error.
    #[allow(clippy::too_many_arguments)]
    async fn source(
        &self,
        client: Option<ReplicationClient>,
        server: &SourceIdentity,
        resume: Lsn,
        to_sink: ToSink,
        mut ack_rx: watch::Receiver<Lsn>,
        heartbeat: &Heartbeat,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<crate::pg::replication::ReplicationStream>, PipelineError> {
        let pg = &self.cfg.postgres;
        let client = match client {
            Some(c) => c,
            None => {
                let Replication { client, server: found, .. } = self.replication().await?;
                if found != *server {
                    return Err(PipelineError::ServerChanged { expected: server.clone(), found });
                }
                client
            }
        };
        let options = self.replication_options(resume);
        let mut stream = bounded(self.stall_timeout, "replication connection", async {
            Ok(client.start_replication(&options).await?)
        })
        .await?;
        let options = DecoderOptions::new(stream.proto_version())?;
        info!(resume = %resume, proto_version = options.protocol_version(), "replication started");
        let session_started = Instant::now();
        let mut decoder = Decoder::new(options);
        let mut assembler = Assembler::new(
            options,
            resume,
            SpillSettings {
                threshold_bytes: usize::try_from(pg.spill_threshold_bytes).unwrap_or(usize::MAX),
                dir: pg.spill_dir.clone(),
            },
        );
        let mut mappers: MapperCache = HashMap::new();
        let mut txn = TxnCtx::default();
        let heartbeat_every = Duration::from_millis(pg.heartbeat_interval_ms);
        let mut heartbeat_tick =
            tokio::time::interval(if heartbeat_every.is_zero() { Duration::from_secs(3600) } else { heartbeat_every });
        heartbeat_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat_tick.tick().await;
        let mut txns_since_heartbeat = 0u64;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut ticks = 0u64;
        let mut last_events = 0u64;
        let mut last_rx = Instant::now();

        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    info!("shutdown requested; finishing");
                    return Ok(Some(stream));
                }
                changed = ack_rx.changed() => {
                    if changed.is_err() {
                        // Sink stopped: it failed; its error is reported by the caller.
                        return Ok(None);
                    }
                    let lsn = *ack_rx.borrow_and_update();
                    stream.ack(lsn);
                    stream.send_status().await?;
                }
                _ = heartbeat_tick.tick(), if !heartbeat_every.is_zero() => {
                    if txns_since_heartbeat == 0 && !assembler.in_transaction() {
                        heartbeat.request();
                    }
                    txns_since_heartbeat = 0;
                }
                _ = tick.tick() => {
                    // The stream asks the server for a reply with every status update: silence this long means a
                    // dead connection that TCP may take many minutes to report.
                    if last_rx.elapsed() > self.stall_timeout {
                        return Err(PipelineError::Stalled {
                            what: "replication connection",
                            secs: last_rx.elapsed().as_secs(),
                        });
                    }
                    if session_started.elapsed() >= SETTLED_SESSION && !self.stats.pending.load(Ordering::Relaxed) {
                        self.stats.streaming.store(true, Ordering::Relaxed);
                    }
                    ticks += 1;
                    if ticks % 10 == 0 {
                        let ev = self.stats.events_committed.load(Ordering::Relaxed);
                        info!(
                            received = %Lsn(self.stats.received_lsn.load(Ordering::Relaxed)),
                            acked = %Lsn(self.stats.acked_lsn.load(Ordering::Relaxed)),
                            events_per_sec = (ev - last_events) / 10,
                            "progress"
                        );
                        last_events = ev;
                    }
                }
                msg = stream.next() => {
                    let Some(msg) = msg? else {
                        return Err(PipelineError::Replication(ReplicationError::ConnectionClosed));
                    };
                    last_rx = Instant::now();
                    let ReplicationMessage::XLogData(XLogData { wal_start, data, .. }) = msg else { continue };
                    self.stats.received_lsn.fetch_max(wal_start.as_u64(), Ordering::Relaxed);
                    let decoded = decoder.decode(&data).map_err(|source| PipelineError::Decode { lsn: wal_start, source })?;
                    match assembler.push(decoded, &data, wal_start)? {
                        Output::None => {}
                        Output::Event(ev) => {
                            if self.handle(ev, &mut txn, &mut mappers, &to_sink).await? {
                                txns_since_heartbeat += 1;
                            }
                        }
                        Output::Replay(mut replay) => {
                            while let Some(ev) = replay.next_event()? {
                                if self.handle(ev, &mut txn, &mut mappers, &to_sink).await? {
                                    txns_since_heartbeat += 1;
                                }
                            }
                        }
                    }
                    // Time spent waiting for room towards Kafka (a slow broker) is not silence of the server.
                    last_rx = Instant::now();
                }
            }
        }
    }

    /// Handles one assembled event; returns `true` at a transaction end.
    async fn handle(
        &self,
        ev: TxnEvent,
        txn: &mut TxnCtx,
        mappers: &mut MapperCache,
        to_sink: &ToSink,
    ) -> Result<bool, PipelineError> {
        match ev {
            TxnEvent::Begin { xid, final_lsn, commit_time } => {
                txn.skip = self
                    .handover
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .map(|h| h.skip(xid.0, final_lsn))
                    .filter(|s| *s != Skip::Nothing);
                if let Some(skip) = txn.skip {
                    info!(xid = xid.0, commit_lsn = %final_lsn, ?skip, "transaction (partly) delivered by Debezium");
                }
                txn.commit_lsn = final_lsn;
                txn.commit_time = commit_time;
                txn.next_index = 0;
                Ok(false)
            }
            TxnEvent::Insert { lsn, relation, tuple } => {
                if txn.skips(lsn) {
                    return Ok(false);
                }
                let Some(mapper) = self.mapper_for(&relation, mappers)? else {
                    return match self.cfg.outbox.unmapped_relations {
                        UnmappedRelations::Error => Err(PipelineError::Unmapped {
                            relation: format!("{}.{}", relation.schema(), relation.name),
                            lsn: txn.commit_lsn,
                        }),
                        UnmappedRelations::Ignore => {
                            self.stats.unmapped_rows.fetch_add(1, Ordering::Relaxed);
                            Ok(false)
                        }
                    };
                };
                let pos = txn.next_pos();
                let encoded = match mapper.map_row(&tuple, txn.commit_lsn, txn.commit_time) {
                    Ok(event) => self.encode(self.encoding()?, event, pos, &mut txn.topics).await,
                    Err(source) => Err(EventFailure::mapping(txn.commit_lsn, source)),
                };
                let item = match encoded {
                    Ok(e) => e,
                    Err(error) => {
                        let source = format!("{}.{}", relation.schema(), relation.name);
                        let value = || dead_letter::row_json(&relation, &tuple);
                        self.dead_letter_or_stop(error, pos, txn, &source, value)?
                    }
                };
                to_sink.send(Item::Event(item)).await;
                Ok(false)
            }
            TxnEvent::Message { lsn, prefix, content } => {
                if txn.skips(lsn) {
                    return Ok(false);
                }
                let encoding = self.encoding()?;
                let Some(m) = &encoding.messages else { return Ok(false) };
                let mapped = m.map_message(&prefix, true, &content, txn.commit_lsn, txn.commit_time);
                // Messages of other prefixes (heartbeats, other applications) are not events.
                if matches!(mapped, Ok(None)) {
                    return Ok(false);
                }
                let pos = txn.next_pos();
                let encoded = match mapped {
                    Ok(Some(event)) => self.encode(encoding, event, pos, &mut txn.topics).await,
                    Ok(None) => return Ok(false),
                    Err(source) => Err(EventFailure::mapping(txn.commit_lsn, source)),
                };
                let item = match encoded {
                    Ok(e) => e,
                    Err(error) => {
                        let source = format!("message:{prefix}");
                        self.dead_letter_or_stop(error, pos, txn, &source, || content.to_vec())?
                    }
                };
                to_sink.send(Item::Event(item)).await;
                Ok(false)
            }
            TxnEvent::Commit { commit_lsn, end_lsn, commit_time } => {
                to_sink.send(Item::TxnEnd { commit_lsn, end_lsn, commit_time }).await;
                Ok(true)
            }
        }
    }

    /// In dead-letter mode, a dead letter in place of an event that could not be mapped or encoded; otherwise (or
    /// for failures that are not the event's own) the error.
    fn dead_letter_or_stop(
        &self,
        failure: EventFailure,
        pos: EventPos,
        txn: &TxnCtx,
        source: &str,
        value: impl FnOnce() -> Vec<u8>,
    ) -> Result<EncodedEvent, PipelineError> {
        let EventFailure { error, event_id, topic: original_topic } = failure;
        let kind = match &error {
            PipelineError::Map { .. } => "mapping",
            PipelineError::Encode(e) if e.is_event_error() => "encoding",
            _ => return Err(error),
        };
        let Some(topic) = self.dead_letter_topic.as_ref() else { return Err(error) };
        let value_format = if source.starts_with("message:") { "message" } else { "row-json" };
        let letter = DeadLetter {
            source,
            event_id: &event_id,
            commit_lsn: txn.commit_lsn,
            original_topic: &original_topic,
            kind,
            message: error.to_string(),
            value_format,
        };
        let mut e = EncodedEvent {
            topic: Arc::clone(topic),
            partition: None,
            key: Vec::new(),
            value: value(),
            id: event_id.clone(),
            event_type: String::new(),
            headers: letter.headers(),
            timestamp_ms: Some(txn.commit_time.unix_millis()),
            pos,
            source: source.to_owned(),
            dead_letter: true,
            cost: 0,
        };
        e.compute_cost();
        warn!(%error, %pos, "event sent to the dead-letter topic");
        Ok(e)
    }

    fn mapper_for(
        &self,
        relation: &Arc<Relation>,
        mappers: &mut MapperCache,
    ) -> Result<Option<Arc<TableMapper>>, PipelineError> {
        if let Some((r, m)) = mappers.get(&relation.oid) {
            if Arc::ptr_eq(r, relation) {
                return Ok(m.clone());
            }
        }
        // A new or altered relation: bind the mapping to its current columns.
        let name = TableName { schema: relation.schema().to_owned(), name: relation.name.clone() };
        let mapper = match self.tables.iter().find(|(t, _)| *t == name) {
            Some((_, mapping)) => {
                Some(Arc::new(TableMapper::bind_relation(mapping, relation).map_err(PipelineError::Mapping)?))
            }
            None => None,
        };
        mappers.insert(relation.oid, (Arc::clone(relation), mapper.clone()));
        Ok(mapper)
    }

    async fn encode(
        &self,
        encoding: &Encoding,
        ev: OutboxEvent,
        pos: EventPos,
        topics: &mut HashMap<String, Arc<str>>,
    ) -> Result<EncodedEvent, EventFailure> {
        let encoded = match encoding.value_encoder.encode(&ev).await {
            Ok(value) => encoding.key_encoder.encode(&ev).await.map(|key| (key, value)),
            Err(e) => Err(e),
        };
        let (key, value) = match encoded {
            Ok(kv) => kv,
            Err(e) => return Err(EventFailure { error: e.into(), event_id: ev.id, topic: ev.topic }),
        };
        let topic = match topics.get(&ev.topic) {
            Some(t) => Arc::clone(t),
            None => {
                let t: Arc<str> = Arc::from(ev.topic.as_str());
                topics.insert(ev.topic.clone(), Arc::clone(&t));
                t
            }
        };
        let mut e = EncodedEvent {
            topic,
            partition: ev.partition,
            key,
            value,
            id: ev.id,
            event_type: ev.event_type,
            headers: ev.headers,
            timestamp_ms: Some(ev.timestamp.unix_millis()),
            pos,
            source: ev.source,
            dead_letter: false,
            cost: 0,
        };
        e.compute_cost();
        Ok(e)
    }
}

/// Why an event could not become a record, with what is known of it for a dead letter.
struct EventFailure {
    error: PipelineError,
    /// Empty when unknown.
    event_id: String,
    /// The topic it was routed to; empty when unknown.
    topic: String,
}

impl EventFailure {
    fn mapping(lsn: Lsn, source: MapError) -> EventFailure {
        let event_id = source.event_id.clone().unwrap_or_default();
        EventFailure { error: PipelineError::Map { lsn, source: Box::new(source) }, event_id, topic: String::new() }
    }
}

#[derive(Default)]
struct TxnCtx {
    /// What a hand-over from Debezium skips of this transaction.
    skip: Option<Skip>,
    commit_lsn: Lsn,
    commit_time: PgTimestamp,
    next_index: u32,
    topics: HashMap<String, Arc<str>>,
}

impl TxnCtx {
    /// Whether the change at `lsn` of this transaction was delivered by Debezium before the hand-over.
    fn skips(&self, lsn: Lsn) -> bool {
        match self.skip {
            Some(Skip::Whole) => true,
            Some(Skip::UpTo(last)) => lsn <= last,
            Some(Skip::Nothing) | None => false,
        }
    }

    fn next_pos(&mut self) -> EventPos {
        let pos = EventPos { commit_lsn: self.commit_lsn, index: self.next_index };
        self.next_index = self.next_index.saturating_add(1);
        pos
    }
}

/// Writes heartbeats on a SQL connection of its own, replaced after any failure (a terminated backend, a broken or
/// stalled TCP connection), every statement bounded by `postgres.stall_timeout_ms`. Requests while one is running
/// are merged. Stops when dropped.
struct Heartbeat {
    requests: mpsc::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Heartbeat {
    fn start(cfg: &Config, client: tokio_postgres::Client, stats: Arc<Stats>) -> Heartbeat {
        let (requests, mut rx) = mpsc::channel::<()>(1);
        let pg = cfg.postgres.clone();
        let task = tokio::spawn(async move {
            let timeout = Duration::from_millis(pg.stall_timeout_ms);
            let mut client = Some(client);
            while rx.recv().await.is_some() {
                let result = tokio::time::timeout(timeout, async {
                    let c = match client.take() {
                        Some(c) if !c.is_closed() => c,
                        _ => pg.connect_sql_timeout(timeout).await.map_err(|e| e.to_string())?,
                    };
                    // Transactional, so it travels inside a commit the relay checkpoints and acknowledges; a
                    // non-transactional message would not move the slot.
                    c.execute("SELECT pg_logical_emit_message(true, $1, '')", &[&pg.heartbeat_prefix])
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>(c)
                })
                .await;
                match result {
                    Ok(Ok(c)) => {
                        client = Some(c);
                        stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                        debug!("heartbeat written");
                    }
                    Ok(Err(error)) => {
                        stats.heartbeat_failures.fetch_add(1, Ordering::Relaxed);
                        warn!(%error, "heartbeat failed; the next one uses a new connection");
                    }
                    Err(_) => {
                        stats.heartbeat_failures.fetch_add(1, Ordering::Relaxed);
                        warn!(
                            timeout_ms = timeout.as_millis() as u64,
                            "heartbeat got no answer (postgres.stall_timeout_ms); the next one uses a new connection"
                        );
                    }
                }
            }
        });
        Heartbeat { requests, task }
    }

    fn request(&self) {
        // Full: one is running or queued, which serves this request too.
        let _ = self.requests.try_send(());
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The relay's transactional producers: one, or with `kafka.pipelined_commits` two on alternating transactional
/// ids (`kafka.transactional_id` and its `.2`), so one can take the next batch while the other's commit completes.
struct Producers {
    /// The producer the next batch goes to (either id: they alternate).
    active: TxnProducer,
    /// The other producer (pipelined commits), free for the batch after.
    idle: Option<TxnProducer>,
}

/// A Kafka transaction whose records and checkpoint the broker holds, committing on a producer of its own while
/// the next batch is produced on the other one.
struct Committing {
    producer: TxnProducer,
    result: Result<(), SinkError>,
    batch: Batch,
}

/// What a committed Kafka transaction settles: its checkpoint's positions and the counts it carried.
struct Batch {
    commit_lsn: Lsn,
    end_lsn: Lsn,
    commit_time: PgTimestamp,
    checkpoint_ms: i64,
    events: u64,
    dead_letters: u64,
    /// Time spent in its commit calls (not waiting for the previous batch's commit).
    commit_us: u64,
    /// Of that, adding the checkpoint and waiting for every record's acknowledgement (the rest is EndTxn).
    prepare_us: u64,
}

/// What the sink waits for next.
enum SinkWake {
    Item(Option<Item>),
    BatchDue,
    Committed(Box<Result<Committing, tokio::task::JoinError>>),
}

/// The Kafka side of a session.
///
/// Pipelined commits keep the single-producer invariants: a batch's records and checkpoint are all acknowledged by
/// the broker ([`TxnProducer::prepare_commit`]) before the other producer sends anything, so every partition holds
/// the batches in WAL order; a batch commits only after the previous one's commit succeeded, and a failed commit
/// aborts the batch after it, so committed batches are always a prefix; acknowledgements follow commits one by one,
/// in order. At most one commit runs at a time.
struct Sink {
    /// The producer of the batch being collected.
    producer: TxnProducer,
    /// The other producer, when pipelined and not committing.
    idle: Option<TxnProducer>,
    /// The previous batch's commit, running on the other producer.
    committing: Option<tokio::task::JoinHandle<Committing>>,
    /// `kafka.pipelined_commits`.
    pipelined: bool,
    topics: Topics,
    connector: String,
    server: SourceIdentity,
    max_events: u64,
    max_wait: Duration,
    stats: Arc<Stats>,
    ack: watch::Sender<Lsn>,
    budget: Arc<Semaphore>,
    /// What the source acquires per event at most (the whole budget).
    budget_bytes: u32,
    dead_letter_topic: Option<Arc<str>>,
    /// Header `type` besides `id` (`outbox.type_header`).
    type_header: bool,
    /// The refusals known when the session started (a new one starts after each is learnt): read per event
    /// without a lock.
    known_refusals: Refusals,
    poison: Poison,
    /// Dead letters in the open Kafka transaction (counted when it commits).
    batch_dead_letters: u64,
}

impl Sink {
    /// Runs until the source closes the channel or an error; gives the producers back only when they are clean.
    async fn run(mut self, mut rx: mpsc::Receiver<Item>) -> (Result<(), PipelineError>, Option<Producers>) {
        let mut r = self.run_inner(&mut rx).await;
        // The source may be waiting for buffer room: let it see that the sink is gone.
        self.budget.close();
        if r.is_err() {
            // Whatever is open will never be committed; abort now so consumers are not held at the LSO until the
            // transaction times out.
            if let Err(e) = self.producer.abort().await {
                warn!(error = %e, "abort after failure failed; a new producer will settle the transaction");
            }
        }
        // The previous batch's commit may still run: its outcome decides what the next session resumes from (its
        // checkpoint when it committed; when it failed, what is committed is not known and the producers are not
        // clean, so the start-up reads the checkpoint back).
        if let Err(e) = self.settle().await {
            if r.is_ok() {
                r = Err(e);
            } else {
                warn!(error = %e, "the previous Kafka transaction's commit failed as well");
            }
        }
        if let Err(PipelineError::Sink(SinkError::Refused(refusal))) = &r {
            if let Some(letter) = self.poisoned(refusal) {
                r = Err(letter);
            }
        }
        self.stats.pending.store(false, Ordering::Relaxed);
        let idle_clean = self.idle.as_ref().is_none_or(|p| p.is_usable() && !p.is_open());
        // Pipelined, both producers must be back (a commit task that failed to join lost one).
        let pipelined_whole = self.idle.is_some() || !self.pipelined;
        let clean = self.producer.is_usable() && !self.producer.is_open() && idle_clean && pipelined_whole;
        (r, clean.then_some(Producers { active: self.producer, idle: self.idle }))
    }

    /// Waits for the previous batch's commit, if one runs, and settles it (acknowledges its checkpoint).
    async fn settle(&mut self) -> Result<(), PipelineError> {
        let Some(task) = self.committing.take() else { return Ok(()) };
        let done = task.await;
        self.settled(done)
    }

    /// Takes back the producer of a finished commit; on success settles its batch.
    fn settled(&mut self, done: Result<Committing, tokio::task::JoinError>) -> Result<(), PipelineError> {
        // A commit task that panicked took its producer with it: the producers are not clean (see `run`).
        let Committing { producer, result, batch } = done.map_err(|e| SinkError::Join(e.to_string()))?;
        self.idle = Some(producer);
        result?;
        self.committed(batch);
        Ok(())
    }

    /// Remembers a refusal learnt inside a transaction so the replay knows it before sending: in dead-letter mode
    /// a record's (a dead letter then takes its place), in either mode a whole topic's (the replay then names the
    /// first event of it, or dead-letters it). Never for a dead letter itself, nor twice for the same thing.
    fn poisoned(&self, refusal: &Refusal) -> Option<PipelineError> {
        let dlq = self.dead_letter_topic.as_deref();
        let pos = refusal.pos?;
        if Some(refusal.topic.as_str()) == dlq {
            return None;
        }
        let mut poison = self.poison.lock().ok()?;
        let topic_wide = matches!(refusal.kind(), "not_authorized" | "unknown_topic");
        if topic_wide && dlq.is_none() && !refusal.event_id.is_empty() {
            // Known before sending: already named.
            return None;
        }
        if topic_wide {
            if poison.topics.get(&refusal.topic).is_some_and(|(_, since)| since.elapsed() < TOPIC_REFUSAL_TTL) {
                return None;
            }
            poison.topics.insert(refusal.topic.clone(), (refusal.clone(), Instant::now()));
        } else {
            if dlq.is_none() || poison.events.contains_key(&pos) {
                return None;
            }
            poison.events.insert(pos, refusal.clone());
        }
        Some(PipelineError::ReplayRefusal(Box::new(refusal.clone())))
    }

    async fn run_inner(&mut self, rx: &mut mpsc::Receiver<Item>) -> Result<(), PipelineError> {
        let mut batch_events = 0u64;
        let mut batch_started: Option<Instant> = None;
        let mut pending: Option<(Lsn, Lsn, PgTimestamp)> = None;
        let mut in_pg_txn = false;
        loop {
            let deadline = batch_started.map(|s| s + self.max_wait);
            let wake = tokio::select! {
                item = rx.recv() => SinkWake::Item(item),
                _ = sleep_until(deadline), if pending.is_some() && !in_pg_txn => SinkWake::BatchDue,
                done = join_commit(&mut self.committing) => SinkWake::Committed(Box::new(done)),
            };
            let item = match wake {
                SinkWake::Item(item) => item,
                SinkWake::BatchDue => {
                    self.commit(&mut pending, &mut batch_events, &mut batch_started).await?;
                    continue;
                }
                SinkWake::Committed(done) => {
                    self.committing = None;
                    self.settled(*done)?;
                    continue;
                }
            };
            match item {
                Some(Item::Event(e)) => {
                    in_pg_txn = true;
                    if batch_started.is_none() {
                        batch_started = Some(Instant::now());
                        self.stats.note_progress();
                        self.stats.pending.store(true, Ordering::Relaxed);
                    }
                    let cost = e.cost;
                    // The source's dead letters (mapping, encoding); the sink counts its own in `refused`.
                    self.batch_dead_letters += u64::from(e.dead_letter);
                    self.produce(e).await?;
                    self.budget.add_permits(cost.min(self.budget_bytes) as usize);
                    batch_events += 1;
                    if batch_events % SINK_CHECK_EVERY == 0 {
                        self.producer.check_age()?;
                    }
                }
                Some(Item::TxnEnd { commit_lsn, end_lsn, commit_time }) => {
                    in_pg_txn = false;
                    pending = Some((commit_lsn, end_lsn, commit_time));
                    self.stats.pg_transactions.fetch_add(1, Ordering::Relaxed);
                    let started = *batch_started.get_or_insert_with(Instant::now);
                    // Group commit: close the batch at its limits, or as soon as nothing more is queued. Under load
                    // the queue refills while a commit runs, so batches grow by themselves; when traffic is light
                    // an event waits for one commit instead of for max_batch_ms.
                    if batch_events >= self.max_events || started.elapsed() >= self.max_wait || rx.is_empty() {
                        self.commit(&mut pending, &mut batch_events, &mut batch_started).await?;
                    }
                }
                None => {
                    // Source stopped. Commit complete transactions; a partial one stays out (aborted).
                    if in_pg_txn {
                        info!("aborting the partial transaction at shutdown; it is replayed on restart");
                        if let Err(e) = self.producer.abort().await {
                            // Nothing of it can ever commit: the next start's init_transactions (or the broker's
                            // transaction timeout) aborts it. Not a failure of the shutdown.
                            warn!(error = %e, "abort at shutdown failed; the next start fences the open transaction");
                        }
                    } else if pending.is_some() {
                        self.commit(&mut pending, &mut batch_events, &mut batch_started).await?;
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Sends one event, or its dead letter when Kafka is known to refuse it.
    async fn produce(&mut self, e: EncodedEvent) -> Result<(), PipelineError> {
        let known = if self.known_refusals.is_empty() { None } else { self.known_refusals.of(&e) };
        let refusal = match known {
            Some(r) if !e.dead_letter => Some(r),
            _ => self.refusal_before_sending(&e).await?,
        };
        if let Some(refusal) = refusal {
            return self.refused(e, refusal).await;
        }
        let mut headers: Vec<(&str, &[u8])> = Vec::with_capacity(e.headers.len() + 2);
        if !e.dead_letter {
            headers.push(("id", e.id.as_bytes()));
            if self.type_header {
                headers.push(("type", e.event_type.as_bytes()));
            }
        }
        headers.extend(e.headers.iter().map(|(k, v)| (k.as_str(), v.as_ref())));
        let sent = self
            .producer
            .send(&OutRecord {
                topic: &e.topic,
                partition: e.partition,
                key: &e.key,
                value: (!e.value.is_empty()).then_some(e.value.as_slice()),
                headers: &headers,
                timestamp_ms: e.timestamp_ms,
                pos: Some(e.pos),
            })
            .await;
        drop(headers);
        match sent {
            Ok(()) => Ok(()),
            Err(SinkError::Refused(r)) => self.refused(e, *r).await,
            Err(other) => Err(other.into()),
        }
    }

    /// A refusal known without sending: the topic is missing (creation off) or not authorized, or the partition is
    /// beyond the topic's.
    async fn refusal_before_sending(&mut self, e: &EncodedEvent) -> Result<Option<Refusal>, PipelineError> {
        let refusal = |code, reason: String| {
            Some(Refusal { topic: e.topic.to_string(), event_id: e.id.clone(), pos: Some(e.pos), code, reason })
        };
        Ok(match self.topics.state(&self.producer, &e.topic).await? {
            TopicState::Refused { code } => refusal(code, format!("topic {:?}: {code}", e.topic)),
            TopicState::Ready { partitions } => match e.partition {
                Some(p) if p >= partitions || p < 0 => refusal(
                    rdkafka::error::RDKafkaErrorCode::UnknownPartition,
                    format!("partition {p} of a topic with {partitions} partitions"),
                ),
                _ => None,
            },
        })
    }

    /// A record Kafka refuses: its dead letter in dead-letter mode, else the named error.
    async fn refused(&mut self, e: EncodedEvent, refusal: Refusal) -> Result<(), PipelineError> {
        let Some(topic) = self.dead_letter_topic.clone().filter(|_| !e.dead_letter) else {
            return Err(SinkError::Refused(Box::new(refusal)).into());
        };
        warn!(error = %refusal, "event sent to the dead-letter topic");
        let too_large = refusal.kind() == "record_too_large";
        let letter = DeadLetter {
            source: &e.source,
            event_id: &e.id,
            commit_lsn: e.pos.commit_lsn,
            original_topic: &e.topic,
            kind: &format!("kafka:{}", refusal.kind()),
            message: refusal.to_string(),
            value_format: if too_large { "none" } else { "record" },
        };
        let mut headers = vec![
            ("id".to_owned(), bytes::Bytes::from(e.id.clone())),
            ("type".to_owned(), bytes::Bytes::from(e.event_type.clone())),
        ];
        headers.extend(e.headers.iter().cloned());
        headers.extend(letter.headers());
        let mut letter = EncodedEvent {
            topic,
            partition: None,
            key: e.key,
            value: if too_large { Vec::new() } else { e.value },
            id: e.id,
            event_type: e.event_type,
            headers,
            // A timestamp the topic refused would be refused again: the producer's clock instead.
            timestamp_ms: if refusal.code == rdkafka::error::RDKafkaErrorCode::InvalidTimestamp {
                None
            } else {
                e.timestamp_ms
            },
            pos: e.pos,
            source: e.source,
            dead_letter: true,
            cost: 0,
        };
        letter.compute_cost();
        self.batch_dead_letters += 1;
        Box::pin(self.produce(letter)).await
    }

    /// Commits the batch: its checkpoint is added and every record acknowledged; then, pipelined, its commit runs
    /// on its producer while the next batch goes to the other one (once the previous commit succeeded), else it
    /// commits here and is settled at once.
    async fn commit(
        &mut self,
        pending: &mut Option<(Lsn, Lsn, PgTimestamp)>,
        batch_events: &mut u64,
        batch_started: &mut Option<Instant>,
    ) -> Result<(), PipelineError> {
        let Some((commit_lsn, end_lsn, commit_time)) = pending.take() else { return Ok(()) };
        let cp = Checkpoint::new(&self.connector, commit_lsn, end_lsn, Some(self.server.clone()));
        let mut batch = Batch {
            commit_lsn,
            end_lsn,
            commit_time,
            checkpoint_ms: cp.time_ms,
            events: std::mem::take(batch_events),
            dead_letters: std::mem::take(&mut self.batch_dead_letters),
            commit_us: 0,
            prepare_us: 0,
        };
        *batch_started = None;
        let span = info_span!("kafka_txn", commit_lsn = %commit_lsn, event_count = batch.events);
        let prepare_started = Instant::now();
        self.producer.prepare_commit(&cp).instrument(span.clone()).await?;
        batch.prepare_us = micros_since(prepare_started);
        batch.commit_us = batch.prepare_us;
        if self.committing.as_ref().is_some_and(|task| !task.is_finished()) {
            // Both transactions in flight: the previous one's commit still running, this one's records and
            // checkpoint in the partitions' logs.
            crate::failpoint::hit(OVERLAPPING_COMMITS);
        }
        // This batch commits only after the previous one did; if that failed, this one is aborted (`run`).
        self.settle().await?;
        match self.idle.take() {
            Some(next) => {
                let mut producer = std::mem::replace(&mut self.producer, next);
                self.committing = Some(tokio::spawn(
                    async move {
                        if crate::failpoint::is_armed(OVERLAPPING_COMMITS) {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        let finish_started = Instant::now();
                        let result = producer.finish_commit().await;
                        batch.commit_us += micros_since(finish_started);
                        Committing { producer, result, batch }
                    }
                    .instrument(span),
                ));
            }
            None => {
                let finish_started = Instant::now();
                self.producer.finish_commit().instrument(span).await?;
                batch.commit_us += micros_since(finish_started);
                self.committed(batch);
            }
        }
        Ok(())
    }

    /// Settles a committed batch: counts it and only now lets PostgreSQL forget the WAL up to its end.
    fn committed(&mut self, batch: Batch) {
        crate::failpoint::hit("after_commit_before_ack");
        let Batch { commit_lsn, end_lsn, commit_time, checkpoint_ms, events, dead_letters, commit_us, prepare_us } =
            batch;
        self.stats.kafka_commit_micros_total.fetch_add(commit_us, Ordering::Relaxed);
        debug!(commit_lsn = %commit_lsn, end_lsn = %end_lsn, events, commit_us, prepare_us, "kafka transaction committed");
        self.stats.events_committed.fetch_add(events, Ordering::Relaxed);
        if dead_letters > 0 {
            self.stats.dead_letters.fetch_add(dead_letters, Ordering::Relaxed);
            // Committed: these positions are never replayed again.
            if let Ok(mut poison) = self.poison.lock() {
                poison.events.retain(|pos, _| pos.commit_lsn > commit_lsn);
            }
        }
        self.stats.kafka_commits.fetch_add(1, Ordering::Relaxed);
        self.stats.acked_lsn.store(end_lsn.as_u64(), Ordering::Relaxed);
        self.stats.last_commit_unix_ms.store(u64::try_from(checkpoint_ms).unwrap_or(0), Ordering::Relaxed);
        self.stats
            .last_source_commit_unix_us
            .store(u64::try_from(commit_time.unix_micros()).unwrap_or(0), Ordering::Relaxed);
        if self.committing.is_none() && !self.producer.is_open() {
            self.stats.pending.store(false, Ordering::Relaxed);
        }
        self.stats.note_progress();
        self.stats.streaming.store(true, Ordering::Relaxed);
        // The source is gone when it failed; its error is what the session reports.
        let _ = self.ack.send(end_lsn);
    }
}

/// The failpoint between two overlapping commits (see [`crate::failpoint`]).
const OVERLAPPING_COMMITS: &str = "between_overlapping_commits";

fn micros_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// The previous batch's commit, once it finishes (never, when none runs). Polling the handle by reference keeps
/// it when another branch of the sink's `select!` wins.
async fn join_commit(
    committing: &mut Option<tokio::task::JoinHandle<Committing>>,
) -> Result<Committing, tokio::task::JoinError> {
    match committing {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
