//! The relay loop: WAL -> events -> Kafka transactions -> acknowledgement.
//!
//! ```text
//!  ┌──────────── source (this task) ────────────┐        bounded channel        ┌────── sink (own task) ───────┐
//!  │ ReplicationStream ─▶ Decoder ─▶ Assembler  │ ── Item::Event / TxnEnd ──▶  │ TxnProducer: begin, send,    │
//!  │   ─▶ TableMapper / MessageMapper ─▶ Avro   │                              │ commit(checkpoint) at a PG   │
//!  │ ack(lsn) ◀── watch ◀───────────────────────┼──────────────────────────────┤ commit boundary, then ack    │
//!  └────────────────────────────────────────────┘                              └──────────────────────────────┘
//! ```
//!
//! Invariants this module keeps (DESIGN.md 1–7):
//! - The flush LSN given to PostgreSQL is only ever the `end_lsn` of a checkpoint whose Kafka transaction
//!   `commit_transaction` confirmed; the replication stream ignores anything lower, so it never goes backwards.
//! - A Kafka transaction is committed only between PostgreSQL transactions (the sink tracks whether the last item
//!   was a `TxnEnd`), so it holds whole PostgreSQL transactions plus the checkpoint of the last one.
//! - On any error the open Kafka transaction is aborted (or left to be aborted by fencing), the stream is
//!   dropped, and the next session starts from the last committed checkpoint; the assembler drops every
//!   transaction ending at or before it. Hence no loss and no duplicate in a read_committed view.
//! - Events keep WAL order all the way: one source, one channel, one producer with idempotence (which preserves
//!   per-partition order across retries).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::avro::{EncodeError, EnvelopeEncoder, KeyEncoder, RegistrySettings, SchemaRegistry, ValueEncoder};
use crate::config::Config;
use crate::kafka::{Checkpoint, KafkaSettings, OutRecord, SinkError, TxnProducer};
use crate::metrics::Stats;
use crate::outbox::{EventMapping, MapError, MessageMapper, OutboxEvent, TableMapper};
use crate::pg::lsn::{Lsn, PgTimestamp};
use crate::pg::pgoutput::{DecodeError, Decoder, DecoderOptions, Oid, Relation};
use crate::pg::replication::{
    Backoff, ReplicationClient, ReplicationConfig, ReplicationError, ReplicationMessage, ReplicationOptions, Streaming,
    XLogData,
};
use crate::pg::slot::{self, SlotError, TableName};
use crate::pg::txn::{Assembler, Output, SpillSettings, TxnError, TxnEvent};

/// How long a restart waits for a slot still held by a previous (dead) connection.
const SLOT_BUSY_GRACE: Duration = Duration::from_secs(75);

/// Operator choices for `run`.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Start even though the slot is ahead of the checkpoint (data in between is not in Kafka).
    pub accept_gap: bool,
    /// Start at this LSN instead of the checkpoint (validated against the slot).
    pub start_lsn: Option<Lsn>,
}

/// Why the relay stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The slot's confirmed position is ahead of the stored checkpoint.
    #[error(
        "gap detected: slot {slot:?} has confirmed_flush_lsn {slot_lsn} but the last checkpoint in Kafka is {checkpoint}; \
         the changes in between were consumed by something else and are not in Kafka. Reconcile, then restart with \
         --accept-gap to continue from {slot_lsn}"
    )]
    Gap {
        /// Slot.
        slot: String,
        /// `confirmed_flush_lsn`.
        slot_lsn: Lsn,
        /// Checkpoint end LSN, or `none`.
        checkpoint: String,
    },
    /// The slot is gone but a checkpoint says data was relayed from it.
    #[error(
        "replication slot {slot:?} does not exist but the checkpoint in Kafka is at {checkpoint}: the slot was dropped \
         or lost, and recreating it would silently skip every change since. Reconcile, then restart with \
         --accept-gap to recreate it and continue from the current WAL position"
    )]
    SlotLost {
        /// Slot.
        slot: String,
        /// Checkpoint end LSN.
        checkpoint: Lsn,
    },
    /// Nothing arrived on the replication connection for much longer than heartbeats allow: a dead peer.
    #[error("no data from PostgreSQL for {0} s although heartbeats are due every few seconds; reconnecting")]
    Stalled(u64),
    /// `--start-lsn` cannot be honoured.
    #[error("--start-lsn {requested}: {reason}")]
    StartLsn {
        /// What was asked.
        requested: Lsn,
        /// Why not.
        reason: String,
    },
    /// Configuration that only fails at run time.
    #[error("configuration: {0}")]
    Config(String),
    /// Slot or publication management.
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// SQL connection.
    #[error("postgresql connection: {0}")]
    Sql(String),
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
    /// An event could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// Kafka.
    #[error(transparent)]
    Sink(#[from] SinkError),
}

impl PipelineError {
    /// `true` when a new session from the last checkpoint may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            PipelineError::Replication(e) => e.is_transient(),
            PipelineError::Sink(e) => e.is_transient(),
            PipelineError::Encode(e) => e.is_transient(),
            PipelineError::Slot(e) => e.is_transient(),
            PipelineError::Sql(_) | PipelineError::Stalled(_) => true,
            _ => false,
        }
    }
}

/// Per relation OID: the relation version a mapper was bound to, and the mapper, or `None`
/// for a published table that is not an outbox table.
type MapperCache = HashMap<Oid, (Arc<Relation>, Option<Arc<TableMapper>>)>;

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
    value: Vec<u8>,
    /// Header `id`.
    id: String,
    /// Header `type`.
    event_type: String,
    /// Additional headers, after `id` and `type`.
    headers: Vec<(String, bytes::Bytes)>,
    timestamp_ms: i64,
}

/// Everything that lives across sessions.
struct Relay {
    cfg: Config,
    kafka: KafkaSettings,
    tables: Vec<(TableName, EventMapping)>,
    messages: Option<MessageMapper>,
    /// Value encoder (the envelope over all tables' and the message outbox's fields).
    value_encoder: Arc<dyn ValueEncoder>,
    key_encoder: Arc<KeyEncoder>,
    stats: Arc<Stats>,
}

/// Builds the Kafka settings from the configuration.
pub fn kafka_settings(cfg: &Config) -> KafkaSettings {
    KafkaSettings {
        bootstrap_servers: cfg.kafka.bootstrap_servers.clone(),
        transactional_id: if cfg.kafka.transactional_id.is_empty() {
            format!("outbox-relay-{}", cfg.connector_name)
        } else {
            cfg.kafka.transactional_id.clone()
        },
        transaction_timeout_ms: u32::try_from(cfg.kafka.transaction_timeout_ms).unwrap_or(u32::MAX),
        checkpoint_topic: cfg.kafka.checkpoint_topic.clone(),
        checkpoint_replication_factor: -1,
        operation_timeout: Duration::from_secs(30),
        properties: cfg.kafka.properties.clone(),
    }
}

/// Runs the relay until `shutdown` turns true or a definite error happens.
pub async fn run(
    cfg: Config,
    opts: RunOptions,
    stats: Arc<Stats>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), PipelineError> {
    let mut tables = Vec::new();
    for t in &cfg.outbox.tables {
        let name = TableName::parse(&t.table)
            .ok_or_else(|| PipelineError::Config(format!("outbox.tables.table {:?} is not a table name", t.table)))?;
        tables.push((name, EventMapping::from(t)));
    }
    let messages = if cfg.outbox.messages.enabled {
        let mapping = EventMapping::for_messages(&cfg.outbox);
        Some(
            MessageMapper::new(cfg.outbox.messages.prefix.clone(), &mapping)
                .map_err(|e| PipelineError::Config(e.to_string()))?,
        )
    } else {
        None
    };
    let registry = Arc::new(
        SchemaRegistry::new(&RegistrySettings::from_config(&cfg.schema_registry))
            .map_err(|e| PipelineError::Config(e.to_string()))?,
    );
    // One envelope schema for every table and the message outbox: a topic fed by two tables keeps one schema.
    let message_mapping = EventMapping::for_messages(&cfg.outbox);
    let extra = crate::outbox::envelope_fields(tables.iter().map(|(_, m)| m).chain(std::iter::once(&message_mapping)));
    let value_encoder: Arc<dyn ValueEncoder> =
        Arc::new(EnvelopeEncoder::new(Arc::clone(&registry), extra).map_err(|e| PipelineError::Config(e.to_string()))?);
    let key_encoder = KeyEncoder::new(cfg.schema_registry.key_format, Arc::clone(&registry));
    let relay = Relay {
        kafka: kafka_settings(&cfg),
        cfg,
        tables,
        messages,
        value_encoder,
        key_encoder: Arc::new(key_encoder),
        stats,
    };
    relay.run(opts, &mut shutdown).await
}

impl Relay {
    async fn sql(&self) -> Result<tokio_postgres::Client, PipelineError> {
        self.cfg.connect_sql().await.map_err(|e| PipelineError::Sql(e.to_string()))
    }

    /// Runs until shutdown or a definite error. Once the relay has started, transient failures outside a session
    /// (a producer that cannot abort because the broker is gone, services unreachable while starting over) start
    /// everything over after a backoff: fencing, checkpoint, slot check, replication. A first start that fails
    /// returns the error at once, so a misconfigured deployment fails fast and visibly.
    async fn run(&self, mut opts: RunOptions, shutdown: &mut watch::Receiver<bool>) -> Result<(), PipelineError> {
        let pg = &self.cfg.postgres;
        let mut backoff = Backoff::new(
            Duration::from_millis(pg.reconnect_backoff_initial_ms),
            Duration::from_millis(pg.reconnect_backoff_max_ms),
        );
        let mut started = false;
        loop {
            match self.run_once(&mut opts, &mut started, shutdown).await {
                Err(e) if started && e.is_transient() && !*shutdown.borrow() => {
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
            let sql = self.sql().await?;
            let table_names: Vec<TableName> = self.tables.iter().map(|(t, _)| t.clone()).collect();
            slot::ensure_publication(&sql, &pg.publication, &table_names, pg.create_publication).await?;
            let db = self
                .cfg
                .tokio_postgres_config()
                .map_err(|e| PipelineError::Sql(e.to_string()))?
                .get_dbname()
                .unwrap_or("postgres")
                .to_owned();

            crate::kafka::ensure_checkpoint_topic(&self.kafka).await?;
            // Fence first: afterwards no older instance can commit, so the checkpoint read next is final.
            let mut producer = TxnProducer::connect(&self.kafka).await?;
            let mut checkpoint = crate::kafka::read_checkpoint(&self.kafka, &self.cfg.connector_name).await?;
            let slot_info = match slot::slot_info(&sql, &pg.slot).await? {
                Some(info) => {
                    info.validate(&db)?;
                    info
                }
                None => {
                    if let Some(cp) = checkpoint.as_ref().filter(|cp| !cp.end_lsn.is_zero()) {
                        if !opts.accept_gap {
                            // Recreating a lost slot would silently skip everything written since it was lost.
                            return Err(PipelineError::SlotLost { slot: pg.slot.clone(), checkpoint: cp.end_lsn });
                        }
                        warn!(slot = %pg.slot, checkpoint = %cp.end_lsn, "slot lost; recreating it as the operator accepted the gap");
                    }
                    if !pg.create_slot {
                        return Err(SlotError::SlotMissing(pg.slot.clone()).into());
                    }
                    // A genesis checkpoint (0/0) first: if the relay dies right after creating the slot, the next
                    // start knows the slot is its own and starts from it instead of reporting a gap.
                    let genesis = Checkpoint::new(&self.cfg.connector_name, Lsn::ZERO, Lsn::ZERO);
                    producer.begin()?;
                    producer.commit(&genesis).await?;
                    checkpoint = Some(genesis);
                    slot::create_slot(&sql, &pg.slot, pg.failover_slot).await?
                }
            };
            let resume = self.start_position(&sql, opts, &slot_info, checkpoint.as_ref()).await?;
            // An operator's start position applies once; after a restart the checkpoint rules.
            opts.start_lsn = None;
            *started = true;
            info!(resume = %resume, checkpoint = ?checkpoint.as_ref().map(|c| c.end_lsn), "starting");
            self.sessions(producer, sql, resume, shutdown).await
        }
        .instrument(span)
        .await
    }

    /// Decides where to start (invariants 3 and 4).
    async fn start_position(
        &self,
        sql: &tokio_postgres::Client,
        opts: &RunOptions,
        slot_info: &slot::SlotInfo,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<Lsn, PipelineError> {
        let slot_lsn = slot_info.confirmed_flush_lsn.unwrap_or(Lsn::ZERO);
        if let Some(requested) = opts.start_lsn {
            if requested < slot_lsn {
                return Err(PipelineError::StartLsn {
                    requested,
                    reason: format!(
                        "the slot has already confirmed up to {slot_lsn}; PostgreSQL cannot replay before it"
                    ),
                });
            }
            let row = sql
                .query_one("SELECT pg_current_wal_lsn()::text", &[])
                .await
                .map_err(|e| PipelineError::Sql(e.to_string()))?;
            let current: Lsn = row.get::<_, String>(0).parse().unwrap_or(Lsn::ZERO);
            if requested > current {
                return Err(PipelineError::StartLsn {
                    requested,
                    reason: format!("it is beyond the server's current WAL position {current}"),
                });
            }
            warn!(start_lsn = %requested, "starting at an operator-given position");
            return Ok(requested);
        }
        match checkpoint {
            // The genesis checkpoint: this relay created the slot and has committed nothing since.
            Some(cp) if cp.end_lsn.is_zero() => Ok(slot_lsn),
            Some(cp) if slot_lsn > cp.end_lsn => {
                if opts.accept_gap {
                    warn!(slot_lsn = %slot_lsn, checkpoint = %cp.end_lsn, "gap accepted by operator");
                    Ok(slot_lsn)
                } else {
                    Err(PipelineError::Gap {
                        slot: slot_info.name.clone(),
                        slot_lsn,
                        checkpoint: cp.end_lsn.to_string(),
                    })
                }
            }
            Some(cp) => Ok(cp.end_lsn),
            None if opts.accept_gap => Ok(slot_lsn),
            None => Err(PipelineError::Gap {
                slot: slot_info.name.clone(),
                slot_lsn,
                checkpoint: "none (no checkpoint for this connector in the checkpoint topic; if the slot was \
                             created by hand for a first start, --accept-gap starts from it)"
                    .into(),
            }),
        }
    }

    async fn sessions(
        &self,
        mut producer: TxnProducer,
        sql: tokio_postgres::Client,
        mut resume: Lsn,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), PipelineError> {
        let pg = &self.cfg.postgres;
        let mut backoff = Backoff::new(
            Duration::from_millis(pg.reconnect_backoff_initial_ms),
            Duration::from_millis(pg.reconnect_backoff_max_ms),
        );
        let sql = Arc::new(sql);
        let mut slot_busy_since: Option<Instant> = None;
        loop {
            let started = Instant::now();
            let (result, p, acked) = self.session(producer, &sql, resume, shutdown).await;
            resume = resume.max(acked);
            let Some(p) = p else {
                return result;
            };
            producer = p;
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
                Err(e) if e.is_transient() && !*shutdown.borrow() => {
                    if started.elapsed() > Duration::from_secs(60) {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    self.stats.restarts.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %e, resume = %resume, delay_ms = delay.as_millis() as u64, "session failed; restarting from the last checkpoint");
                    if let Err(abort) = producer.abort().await {
                        // The producer is unusable (broker gone, fatal state): start over with a new one, which
                        // fences this one's open transaction and re-reads the checkpoint.
                        warn!(error = %abort, "abort of the open kafka transaction failed; restarting the relay");
                        return Err(e);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => return Ok(()),
                    }
                }
                Err(e) => {
                    let _ = producer.abort().await;
                    return Err(e);
                }
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

    /// One replication session. Returns the producer (unless it is unusable) and the last acknowledged LSN.
    async fn session(
        &self,
        producer: TxnProducer,
        sql: &Arc<tokio_postgres::Client>,
        resume: Lsn,
        shutdown: &mut watch::Receiver<bool>,
    ) -> (Result<(), PipelineError>, Option<TxnProducer>, Lsn) {
        let (tx, rx) = mpsc::channel::<Item>(8192);
        let (ack_tx, ack_rx) = watch::channel(resume);
        let sink = Sink {
            producer,
            connector: self.cfg.connector_name.clone(),
            max_events: self.cfg.kafka.max_batch_events,
            max_wait: Duration::from_millis(self.cfg.kafka.max_batch_ms),
            stats: Arc::clone(&self.stats),
            ack: ack_tx,
        };
        let sink_task = tokio::spawn(sink.run(rx).instrument(tracing::Span::current()));
        let source_result = self.source(sql, resume, tx, ack_rx.clone(), shutdown).await;
        // The channel is closed now: the sink commits what is complete, aborts a partial transaction, and stops.
        let (sink_result, producer) = match sink_task.await {
            Ok((r, p)) => (r, Some(p)),
            Err(e) => (Err(PipelineError::Sink(SinkError::Join(e.to_string()))), None),
        };
        let acked = *ack_rx.borrow();
        let result = match (source_result, sink_result) {
            (Err(e), _) | (Ok(_), Err(e)) => Err(e),
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
    async fn source(
        &self,
        sql: &Arc<tokio_postgres::Client>,
        resume: Lsn,
        tx: mpsc::Sender<Item>,
        mut ack_rx: watch::Receiver<Lsn>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<crate::pg::replication::ReplicationStream>, PipelineError> {
        let pg = &self.cfg.postgres;
        let repl_cfg =
            ReplicationConfig::from_url(&self.cfg.postgres_url()).map_err(|e| PipelineError::Config(e.to_string()))?;
        let client = ReplicationClient::connect(&repl_cfg).await?;
        let mut stream = client.start_replication(&self.replication_options(resume)).await?;
        let options = DecoderOptions::new(stream.proto_version()).map_err(|e| PipelineError::Config(e.to_string()))?;
        info!(resume = %resume, proto_version = options.protocol_version(), "replication started");
        let mut decoder = Decoder::new(options);
        let spill_dir = if pg.spill_dir.as_os_str().is_empty() { std::env::temp_dir() } else { pg.spill_dir.clone() };
        let mut assembler = Assembler::new(
            options,
            resume,
            SpillSettings {
                threshold_bytes: usize::try_from(pg.spill_threshold_bytes).unwrap_or(usize::MAX),
                dir: spill_dir,
            },
        );
        let mut mappers: MapperCache = HashMap::new();
        let mut txn = TxnCtx::default();
        let heartbeat_every = Duration::from_millis(pg.heartbeat_interval_ms);
        let mut heartbeat =
            tokio::time::interval(if heartbeat_every.is_zero() { Duration::from_secs(3600) } else { heartbeat_every });
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        let mut txns_since_heartbeat = 0u64;
        let mut progress = tokio::time::interval(Duration::from_secs(10));
        progress.tick().await;
        let mut last_events = 0u64;
        // With heartbeats on, the server sends something at least every heartbeat interval; silence far beyond that
        // means a dead connection that TCP may take many minutes to report.
        let stall_limit = (heartbeat_every * 6).max(Duration::from_secs(60));
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
                _ = heartbeat.tick(), if !heartbeat_every.is_zero() => {
                    if txns_since_heartbeat == 0 && !assembler.in_transaction() {
                        self.emit_heartbeat(sql);
                    }
                    txns_since_heartbeat = 0;
                }
                _ = progress.tick() => {
                    if !heartbeat_every.is_zero() && last_rx.elapsed() > stall_limit {
                        return Err(PipelineError::Stalled(last_rx.elapsed().as_secs()));
                    }
                    let ev = self.stats.events_committed.load(Ordering::Relaxed);
                    info!(
                        received = %Lsn(self.stats.received_lsn.load(Ordering::Relaxed)),
                        acked = %Lsn(self.stats.acked_lsn.load(Ordering::Relaxed)),
                        events_per_sec = (ev - last_events) / 10,
                        "progress"
                    );
                    last_events = ev;
                }
                msg = stream.next() => {
                    let Some(msg) = msg? else {
                        return Err(PipelineError::Replication(ReplicationError::ConnectionClosed));
                    };
                    last_rx = Instant::now();
                    let ReplicationMessage::XLogData(XLogData { wal_start, data, .. }) = msg else { continue };
                    self.stats.received_lsn.fetch_max(wal_start.as_u64(), Ordering::Relaxed);
                    let decoded = decoder.decode(&data).map_err(|source| PipelineError::Decode { lsn: wal_start, source })?;
                    match assembler.push(decoded, &data)? {
                        Output::None => {}
                        Output::Event(ev) => {
                            if self.handle(ev, &mut txn, &mut mappers, &tx).await? {
                                txns_since_heartbeat += 1;
                            }
                        }
                        Output::Replay(mut replay) => {
                            while let Some(ev) = replay.next_event()? {
                                if self.handle(ev, &mut txn, &mut mappers, &tx).await? {
                                    txns_since_heartbeat += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn emit_heartbeat(&self, sql: &Arc<tokio_postgres::Client>) {
        let sql = Arc::clone(sql);
        let prefix = self.cfg.postgres.heartbeat_prefix.clone();
        let stats = Arc::clone(&self.stats);
        tokio::spawn(async move {
            // Transactional, so it travels inside a commit the relay checkpoints and acknowledges; a
            // non-transactional message would not move the slot.
            match sql.execute("SELECT pg_logical_emit_message(true, $1, '')", &[&prefix]).await {
                Ok(_) => {
                    stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                    debug!("heartbeat written");
                }
                Err(e) => warn!(error = %e, "heartbeat failed"),
            }
        });
    }

    /// Handles one assembled event; returns `true` at a transaction end.
    async fn handle(
        &self,
        ev: TxnEvent,
        txn: &mut TxnCtx,
        mappers: &mut MapperCache,
        tx: &mpsc::Sender<Item>,
    ) -> Result<bool, PipelineError> {
        let send = |item| async { tx.send(item).await.is_ok() };
        match ev {
            TxnEvent::Begin { final_lsn, commit_time, .. } => {
                txn.commit_lsn = final_lsn;
                txn.commit_time = commit_time;
                Ok(false)
            }
            TxnEvent::Insert { relation, tuple } => {
                let mapper = self.mapper_for(&relation, mappers)?;
                let Some(mapper) = mapper else { return Ok(false) };
                let event = mapper
                    .map_row(&tuple, txn.commit_lsn, txn.commit_time)
                    .map_err(|source| PipelineError::Map { lsn: txn.commit_lsn, source: Box::new(source) })?;
                let encoded = self.encode(event, &mut txn.topics).await?;
                send(Item::Event(encoded)).await;
                Ok(false)
            }
            TxnEvent::Message { prefix, content, .. } => {
                let Some(m) = &self.messages else { return Ok(false) };
                let Some(event) = m
                    .map_message(&prefix, true, &content, txn.commit_lsn, txn.commit_time)
                    .map_err(|source| PipelineError::Map { lsn: txn.commit_lsn, source: Box::new(source) })?
                else {
                    return Ok(false);
                };
                let encoded = self.encode(event, &mut txn.topics).await?;
                send(Item::Event(encoded)).await;
                Ok(false)
            }
            TxnEvent::Commit { commit_lsn, end_lsn, commit_time } => {
                send(Item::TxnEnd { commit_lsn, end_lsn, commit_time }).await;
                Ok(true)
            }
        }
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
            Some((_, mapping)) => Some(Arc::new(
                TableMapper::bind_relation(mapping, relation)
                    .map_err(|source| PipelineError::Map { lsn: Lsn::ZERO, source: Box::new(source) })?,
            )),
            None => None,
        };
        mappers.insert(relation.oid, (Arc::clone(relation), mapper.clone()));
        Ok(mapper)
    }

    async fn encode(
        &self,
        ev: OutboxEvent,
        topics: &mut HashMap<String, Arc<str>>,
    ) -> Result<EncodedEvent, PipelineError> {
        let value = self.value_encoder.encode(&ev).await?;
        let key = self.key_encoder.encode(&ev).await?;
        let topic = match topics.get(&ev.topic) {
            Some(t) => Arc::clone(t),
            None => {
                let t: Arc<str> = Arc::from(ev.topic.as_str());
                topics.insert(ev.topic.clone(), Arc::clone(&t));
                t
            }
        };
        Ok(EncodedEvent {
            topic,
            partition: ev.partition,
            key,
            value,
            id: ev.id,
            event_type: ev.event_type,
            headers: ev.headers,
            timestamp_ms: ev.timestamp.unix_millis(),
        })
    }
}

#[derive(Default)]
struct TxnCtx {
    commit_lsn: Lsn,
    commit_time: PgTimestamp,
    topics: HashMap<String, Arc<str>>,
}

/// The Kafka side of a session.
struct Sink {
    producer: TxnProducer,
    connector: String,
    max_events: u64,
    max_wait: Duration,
    stats: Arc<Stats>,
    ack: watch::Sender<Lsn>,
}

impl Sink {
    async fn run(mut self, mut rx: mpsc::Receiver<Item>) -> (Result<(), PipelineError>, TxnProducer) {
        let r = self.run_inner(&mut rx).await;
        if r.is_err() {
            // Whatever is open will never be committed; abort now so consumers are not held at the LSO until the
            // transaction times out.
            if let Err(e) = self.producer.abort().await {
                warn!(error = %e, "abort after failure failed");
            }
        }
        (r, self.producer)
    }

    async fn run_inner(&mut self, rx: &mut mpsc::Receiver<Item>) -> Result<(), PipelineError> {
        let mut batch_events = 0u64;
        let mut batch_started: Option<Instant> = None;
        let mut pending: Option<(Lsn, Lsn, PgTimestamp)> = None;
        let mut in_pg_txn = false;
        loop {
            let deadline = batch_started.map(|s| s + self.max_wait);
            let item = tokio::select! {
                item = rx.recv() => item,
                _ = sleep_until(deadline), if pending.is_some() && !in_pg_txn => {
                    self.commit(&mut pending, &mut batch_events, &mut batch_started).await?;
                    continue;
                }
            };
            match item {
                Some(Item::Event(e)) => {
                    in_pg_txn = true;
                    batch_started.get_or_insert_with(Instant::now);
                    let headers: Vec<(&str, &[u8])> = [("id", e.id.as_bytes()), ("type", e.event_type.as_bytes())]
                        .into_iter()
                        .chain(e.headers.iter().map(|(k, v)| (k.as_str(), v.as_ref())))
                        .collect();
                    self.producer
                        .send(&OutRecord {
                            topic: &e.topic,
                            partition: e.partition,
                            key: &e.key,
                            value: &e.value,
                            headers: &headers,
                            timestamp_ms: Some(e.timestamp_ms),
                        })
                        .await?;
                    batch_events += 1;
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
                        self.producer.abort().await?;
                    } else if pending.is_some() {
                        self.commit(&mut pending, &mut batch_events, &mut batch_started).await?;
                    }
                    return Ok(());
                }
            }
        }
    }

    async fn commit(
        &mut self,
        pending: &mut Option<(Lsn, Lsn, PgTimestamp)>,
        batch_events: &mut u64,
        batch_started: &mut Option<Instant>,
    ) -> Result<(), PipelineError> {
        let Some((commit_lsn, end_lsn, commit_time)) = pending.take() else { return Ok(()) };
        let cp = Checkpoint::new(&self.connector, commit_lsn, end_lsn);
        let span = info_span!("kafka_txn", commit_lsn = %commit_lsn, event_count = *batch_events);
        let commit_started = Instant::now();
        self.producer.commit(&cp).instrument(span).await?;
        crate::failpoint::hit("after_commit_before_ack");
        let commit_us = u64::try_from(commit_started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.stats.kafka_commit_micros_total.fetch_add(commit_us, Ordering::Relaxed);
        debug!(commit_lsn = %commit_lsn, end_lsn = %end_lsn, events = *batch_events, commit_us, "kafka transaction committed");
        self.stats.events_committed.fetch_add(*batch_events, Ordering::Relaxed);
        self.stats.kafka_commits.fetch_add(1, Ordering::Relaxed);
        self.stats.acked_lsn.store(end_lsn.as_u64(), Ordering::Relaxed);
        self.stats.last_commit_unix_ms.store(u64::try_from(cp.time_ms).unwrap_or(0), Ordering::Relaxed);
        self.stats
            .last_source_commit_unix_us
            .store(u64::try_from(commit_time.unix_micros()).unwrap_or(0), Ordering::Relaxed);
        *batch_events = 0;
        *batch_started = None;
        // Only now may PostgreSQL forget the WAL up to end_lsn.
        if self.ack.send(end_lsn).is_err() {
            error!("source gone before acknowledgement");
        }
        Ok(())
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
