//! The `check` command: a dry run of start-up that reports instead of failing.
//!
//! [`run`] asks every question `run` asks before it changes anything, through the same code: the SQL and the
//! replication connection (which proves the role may replicate, however the server grants it), the server's settings
//! and the outbox tables ([`crate::preflight`]), the publication ([`slot::inspect_publication`]), the Kafka producer
//! with transactions ([`TxnProducer::connect`]), the checkpoint topic ([`crate::kafka::verify_checkpoint_topic`]),
//! the topics known before any event ([`Topics`]), the slot against the checkpoint ([`crate::startup::plan`]), and
//! the registry's mode and the compatibility of existing subjects with the relay's schemas ([`SchemaRegistry`]).
//! It returns a [`CheckReport`] with one [`ServiceReport`] per service: facts, warnings, and the problems that would
//! stop the relay, each a [`CheckError`] carrying the typed finding `run` would fail with.
//!
//! Invariant: `check` changes nothing on the services. It uses its own `transactional.id`
//! (`<kafka.transactional_id>-check`, so it fences no running relay), creates no topic, slot or publication,
//! registers no schema, and every step is bounded by [`CheckOptions::timeout`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::RDKafkaErrorCode;

use crate::avro::{EncodeError, Encoders, RegistrySettings, RetryPolicy, SchemaRegistry, WRITABLE_MODE};
use crate::config::{Config, ConnectError};
use crate::error_chain;
use crate::kafka::{CheckpointTopic, KafkaSettings, SinkError, TopicState, Topics, TxnProducer};
use crate::pg::replication::ReplicationError;
use crate::pg::slot::{self, PublicationState, SlotError, TableName};
use crate::preflight::{self, Finding};
use crate::startup::{self, Facts, Plan, RunOptions, StartupError};

/// How the probes run.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Time limit of each step of each probe (connect, query, metadata, `init_transactions`, HTTP request).
    pub timeout: Duration,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions { timeout: Duration::from_secs(10) }
    }
}

/// A checked service, or the start-up decision that needs several of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// The PostgreSQL source.
    Postgres,
    /// The Kafka cluster.
    Kafka,
    /// The schema registry.
    SchemaRegistry,
    /// Where `run` would start: the slot against the checkpoint.
    Startup,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Service::Postgres => "postgres",
            Service::Kafka => "kafka",
            Service::SchemaRegistry => "schema-registry",
            Service::Startup => "start-up",
        })
    }
}

/// What a problem found by `check` is; each message names the setting or server action that fixes it. Where `run`
/// would fail with a typed error, the problem carries that very error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// No SQL connection could be opened.
    #[error(
        "cannot connect to PostgreSQL at {target}: {detail}; check postgres.url (host, port, sslmode) and that the \
         server is running and accepts TCP connections"
    )]
    PostgresUnreachable {
        /// `host:port`.
        target: String,
        /// The error chain.
        detail: String,
    },
    /// `target_session_attrs=read-write` and no host of the URL is a primary.
    #[error(transparent)]
    PostgresNotPrimary(ConnectError),
    /// The server answered but refused the login (bad password, unknown database, pg_hba.conf).
    #[error(
        "PostgreSQL at {target} refused the connection: {detail}; check the user, password and database in postgres.url and pg_hba.conf"
    )]
    PostgresRejected {
        /// `host:port`.
        target: String,
        /// The server's message.
        detail: String,
    },
    /// A catalog query failed.
    #[error("PostgreSQL query failed ({what}): {detail}")]
    PostgresQuery {
        /// What was queried.
        what: &'static str,
        /// The error chain.
        detail: String,
    },
    /// A precondition of start-up does not hold.
    #[error(transparent)]
    Preflight(#[from] Finding),
    /// The server refused the role a replication connection.
    #[error(
        "role {role} may not replicate ({source}): run ALTER ROLE {role} WITH REPLICATION, or connect as a role that has it"
    )]
    NoReplication {
        /// The role of postgres.url.
        role: String,
        /// The server's refusal.
        #[source]
        source: ReplicationError,
    },
    /// The replication connection failed otherwise.
    #[error("the replication connection failed: {0}")]
    Replication(#[source] ReplicationError),
    /// The publication or the slot cannot serve.
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// Start-up would refuse: a gap, a lost or unusable slot, a checkpoint of another server.
    #[error(transparent)]
    Startup(#[from] StartupError),
    /// The Kafka side: unreachable brokers, the checkpoint topic.
    #[error(transparent)]
    Kafka(#[from] SinkError),
    /// The brokers are reachable but transactions do not work.
    #[error(
        "Kafka transactions are not usable (init_transactions with transactional.id {transactional_id}): {source}; \
         check that the cluster supports transactions (transaction.state.log.replication.factor and \
         transaction.state.log.min.isr not above the number of brokers) and that the principal may write \
         transactional id {transactional_id}"
    )]
    KafkaTransactions {
        /// The probe's transactional id.
        transactional_id: String,
        /// The client's error.
        #[source]
        source: SinkError,
    },
    /// A topic the relay will write to does not exist and the relay may not create it.
    #[error(
        "topic {topic} does not exist and kafka.topic_creation.enabled = false: create it (with the partitions and \
         configuration it needs) or enable topic creation; the relay would stop (or dead-letter) at its first event"
    )]
    TopicMissing {
        /// A fixed route or the dead-letter topic.
        topic: String,
    },
    /// The principal may not use a topic the relay will write to.
    #[error(
        "topic {topic}: the principal of [kafka.properties] is not authorized for it ({code:?}): grant it DESCRIBE \
         and WRITE on the topic (kafka-acls.sh --add --operation Describe --operation Write --topic {topic} ...)"
    )]
    TopicNotAuthorized {
        /// A fixed route or the dead-letter topic.
        topic: String,
        /// The broker's code.
        code: RDKafkaErrorCode,
    },
    /// The registry: unreachable, refused credentials, wrong URL.
    #[error(transparent)]
    Registry(#[from] EncodeError),
    /// The registry (or a subject the relay writes) refuses new schemas.
    #[error(
        "schema registry {url}{} is in mode {mode}: it refuses new schemas, and the relay registers its schemas at \
         the first event of each topic; point schema_registry.url at a writable registry or set the mode to \
         READWRITE", subject.as_ref().map(|s| format!(" subject {s}")).unwrap_or_default()
    )]
    RegistryReadOnly {
        /// The subject, or `None` for the whole registry.
        subject: Option<String>,
        /// The registry URL, without credentials.
        url: String,
        /// `GET /mode`.
        mode: String,
    },
    /// An existing subject would refuse the relay's schema.
    #[error(
        "subject {subject} exists and its compatibility rule refuses the relay's schema: the first event to its \
         topic would fail. Another writer owns the topic, or a field was renamed: route to a new topic, or change \
         the subject's compatibility level deliberately"
    )]
    SubjectIncompatible {
        /// `<topic>-value` or `<topic>-key`.
        subject: String,
    },
    /// Value mode `registered`: local schemas their subjects would refuse (what `run` refuses to start with).
    #[error("{0}")]
    SchemasIncompatible(String),
    /// Debezium's offset for a hand-over could not be read.
    #[error("hand-over from Debezium: {0}")]
    Handover(String),
    /// The probe did not finish in time.
    #[error("{service} check did not finish within {after:?}; the service may be overloaded or unreachable")]
    Timeout {
        /// Whose probe ran out of time.
        service: Service,
        /// The limit.
        after: Duration,
    },
}

/// The result of probing one service.
#[derive(Debug)]
pub struct ServiceReport {
    /// What was probed.
    pub service: Service,
    /// What was established, e.g. `wal_level=logical`.
    pub facts: Vec<String>,
    /// Observations that do not stop the relay.
    pub warnings: Vec<String>,
    /// What would stop the relay; empty when the service is usable.
    pub problems: Vec<CheckError>,
}

impl ServiceReport {
    fn new(service: Service) -> Self {
        ServiceReport { service, facts: Vec::new(), warnings: Vec::new(), problems: Vec::new() }
    }

    /// Whether the service is usable.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for ServiceReport {
    /// `postgres  ok  (fact, fact)`, or one `postgres  FAILED  message` line per problem; then warning lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_ok() && self.facts.is_empty() {
            write!(f, "{}  not checked", self.service)?;
        } else if self.is_ok() {
            write!(f, "{}  ok  ({})", self.service, self.facts.join(", "))?;
        } else {
            for (i, problem) in self.problems.iter().enumerate() {
                if i > 0 {
                    writeln!(f)?;
                }
                write!(f, "{}  FAILED  {problem}", self.service)?;
            }
        }
        for warning in &self.warnings {
            write!(f, "\n{}  warning  {warning}", self.service)?;
        }
        Ok(())
    }
}

/// The result of `check`: one report per service, in the order postgres, kafka, schema-registry, start-up.
#[derive(Debug)]
pub struct CheckReport {
    /// The per-service reports.
    pub services: Vec<ServiceReport>,
}

impl CheckReport {
    /// Whether every service is usable.
    pub fn is_ok(&self) -> bool {
        self.services.iter().all(ServiceReport::is_ok)
    }

    /// The report of one service.
    pub fn service(&self, service: Service) -> Option<&ServiceReport> {
        self.services.iter().find(|r| r.service == service)
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for report in &self.services {
            writeln!(f, "{report}")?;
        }
        Ok(())
    }
}

/// Probes the services concurrently, then the start-up decision (which needs PostgreSQL and Kafka usable).
pub async fn run(config: &Config, options: &CheckOptions) -> CheckReport {
    let (postgres, kafka, registry) = tokio::join!(
        check_postgres(config, options),
        check_kafka(config, options),
        check_schema_registry(config, options),
    );
    let startup = if postgres.is_ok() && kafka.is_ok() {
        check_startup(config, options).await
    } else {
        let mut report = ServiceReport::new(Service::Startup);
        report.warnings.push("not checked: PostgreSQL and Kafka must be usable first".to_owned());
        report
    };
    CheckReport { services: vec![postgres, kafka, registry, startup] }
}

/// Runs `probe` into a fresh report, bounded by `limit`.
async fn bounded<F>(service: Service, limit: Duration, probe: F) -> ServiceReport
where
    F: AsyncFnOnce(&mut ServiceReport) -> Result<(), CheckError>,
{
    let mut report = ServiceReport::new(service);
    match tokio::time::timeout(limit, probe(&mut report)).await {
        Ok(Ok(())) => {}
        Ok(Err(problem)) => report.problems.push(problem),
        Err(_) => report.problems.push(CheckError::Timeout { service, after: limit }),
    }
    report
}

// ---------------------------------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------------------------------

/// Probes PostgreSQL: the SQL connection, the server's settings, the replication connection, the outbox tables,
/// the publication and the spill directory.
pub async fn check_postgres(config: &Config, options: &CheckOptions) -> ServiceReport {
    // Two connections plus a handful of catalog queries, each bounded by the driver or this outer limit.
    bounded(Service::Postgres, options.timeout * 3, async |report| probe_postgres(config, options, report).await).await
}

/// Opens the SQL connection as `run` does, naming a refusal apart from an unreachable server.
async fn sql_connection(config: &Config, options: &CheckOptions) -> Result<tokio_postgres::Client, CheckError> {
    let pg = &config.postgres;
    let target = pg.target();
    match tokio::time::timeout(options.timeout, pg.connect_sql_timeout(options.timeout)).await {
        Err(_) => {
            Err(CheckError::PostgresUnreachable { target, detail: format!("no answer within {:?}", options.timeout) })
        }
        Ok(Err(ConnectError::Connect { target, source })) => Err(match source.as_db_error() {
            Some(db) => CheckError::PostgresRejected {
                target,
                detail: format!("{} (SQLSTATE {})", db.message(), db.code().code()),
            },
            None => CheckError::PostgresUnreachable { target, detail: error_chain(&source) },
        }),
        Ok(Err(e @ ConnectError::NotPrimary { .. })) => Err(CheckError::PostgresNotPrimary(e)),
        Ok(Err(other)) => Err(CheckError::PostgresUnreachable { target, detail: error_chain(&other) }),
        Ok(Ok(client)) => Ok(client),
    }
}

/// Opens the replication connection as `run` does.
async fn replication_connection(config: &Config, options: &CheckOptions) -> Result<preflight::Replication, CheckError> {
    let conninfo = config
        .postgres
        .connection()
        .map_err(|e| CheckError::PostgresUnreachable { target: config.postgres.target(), detail: error_chain(&e) })?;
    let opened = tokio::time::timeout(options.timeout, preflight::replication(conninfo)).await.map_err(|_| {
        CheckError::PostgresUnreachable {
            target: config.postgres.target(),
            detail: format!("the replication connection gave no answer within {:?}", options.timeout),
        }
    })?;
    opened.map_err(|source| match source {
        ReplicationError::PermissionDenied(_) => CheckError::NoReplication { role: conninfo.user.clone(), source },
        other => CheckError::Replication(other),
    })
}

fn query_error(what: &'static str) -> impl Fn(tokio_postgres::Error) -> CheckError {
    move |e| CheckError::PostgresQuery { what, detail: error_chain(&e) }
}

async fn probe_postgres(config: &Config, options: &CheckOptions, report: &mut ServiceReport) -> Result<(), CheckError> {
    let pg = &config.postgres;
    let client = sql_connection(config, options).await?;
    let settings = preflight::server_settings(&client).await.map_err(query_error("server settings"))?;
    report.facts.push(format!("PostgreSQL {}", settings.version));
    let findings = settings.findings(pg);
    if !findings.iter().any(|f| matches!(f, Finding::WalLevel { .. })) {
        report.facts.push("wal_level=logical".to_owned());
    }
    report.problems.extend(findings.into_iter().map(CheckError::from));

    match replication_connection(config, options).await {
        Ok(replication) => report.facts.push(format!(
            "replication connection as {} (system {}, timeline {})",
            pg.connection().map(|c| c.user.as_str()).unwrap_or_default(),
            replication.server.system_id,
            replication.server.timeline
        )),
        Err(problem) => report.problems.push(problem),
    }

    let tables = preflight::outbox_tables(&client, &config.outbox.tables, &settings.database)
        .await
        .map_err(query_error("outbox tables"))?;
    if tables.is_empty() {
        for table in &config.outbox.tables {
            report.facts.push(format!("outbox table {} ok", table.table));
        }
    }
    report.problems.extend(tables.into_iter().map(CheckError::from));

    let names: Vec<TableName> = config.outbox.tables.iter().map(|t| t.table.clone()).collect();
    match slot::inspect_publication(&client, &pg.publication, &names).await {
        Ok(PublicationState::Usable) => report.facts.push(format!("publication {} ok", pg.publication)),
        Ok(PublicationState::Missing) if pg.create_publication => {
            report.facts.push(format!("publication {} absent (created at start)", pg.publication));
        }
        Ok(PublicationState::Missing) => {
            report.problems.push(SlotError::PublicationMissing(pg.publication.clone()).into());
        }
        Err(problem) => report.problems.push(problem.into()),
    }

    match preflight::spill_dir(&pg.spill_dir) {
        Ok(()) => report.facts.push(format!("spill_dir {} writable", pg.spill_dir.display())),
        Err(problem) => report.problems.push(problem.into()),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Kafka
// ---------------------------------------------------------------------------------------------------------------

/// `run`'s Kafka settings for `check`: its own transactional id (fencing no running relay), no topic creation, and
/// the check's time limit on each call.
fn kafka_settings(config: &Config, options: &CheckOptions) -> KafkaSettings {
    let mut settings = KafkaSettings::from_config(&config.kafka);
    settings.transactional_id = format!("{}-check", settings.transactional_id);
    settings.operation_timeout = options.timeout;
    settings.topic_creation.enabled = false;
    settings
}

/// Probes Kafka: `run`'s transactional producer (with the probe's own transactional id), the checkpoint topic, and
/// the topics known before any event.
pub async fn check_kafka(config: &Config, options: &CheckOptions) -> ServiceReport {
    bounded(Service::Kafka, options.timeout * 4, async |report| probe_kafka(config, options, report).await).await
}

/// The topics known before any event arrives: routes without `${routedByValue}` and the dead-letter topic (routed
/// topics depend on the rows; the relay names a missing one at its first event).
pub fn fixed_topics(config: &Config) -> Vec<String> {
    let mut topics: Vec<String> = config
        .outbox
        .tables
        .iter()
        .map(|t| t.route_topic_replacement.clone())
        .filter(|t| !t.contains(crate::config::ROUTED_BY_VALUE))
        .collect();
    if config.errors.mode == crate::config::ErrorMode::DeadLetter {
        topics.push(config.errors.dead_letter_topic.clone());
    }
    topics.sort();
    topics.dedup();
    topics
}

async fn probe_kafka(config: &Config, options: &CheckOptions, report: &mut ServiceReport) -> Result<(), CheckError> {
    let settings = kafka_settings(config, options);
    let producer = match TxnProducer::connect(&settings, Arc::default()).await {
        Ok(producer) => producer,
        Err(source @ SinkError::Client { op: "init_transactions", .. }) => {
            return Err(CheckError::KafkaTransactions { transactional_id: settings.transactional_id, source });
        }
        Err(other) => return Err(other.into()),
    };
    report.facts.push(format!("transactions usable (transactional.id {})", settings.transactional_id));
    match crate::kafka::verify_checkpoint_topic(&settings).await {
        Ok(CheckpointTopic::Verified) => {
            report.facts.push(format!("checkpoint topic {} ok", settings.checkpoint_topic))
        }
        Ok(CheckpointTopic::Absent) => {
            report.facts.push(format!("checkpoint topic {} absent (created at start)", settings.checkpoint_topic));
        }
        Err(problem) => report.problems.push(problem.into()),
    }
    let mut topics = Topics::new(&settings);
    for topic in fixed_topics(config) {
        match topics.state(&producer, &topic).await? {
            TopicState::Ready { partitions } => report.facts.push(format!("topic {topic} ({partitions} partitions)")),
            TopicState::Refused {
                code: RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic,
            } if config.kafka.topic_creation.enabled => {
                report.facts.push(format!("topic {topic} absent (created at its first event)"));
            }
            TopicState::Refused {
                code: RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic,
            } => {
                report.problems.push(CheckError::TopicMissing { topic });
            }
            TopicState::Refused { code } => report.problems.push(CheckError::TopicNotAuthorized { topic, code }),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Schema registry
// ---------------------------------------------------------------------------------------------------------------

/// Probes the schema registry with `run`'s client and schemas: the subjects it holds, whether it accepts new
/// schemas, and whether each existing subject of a fixed topic accepts the relay's schema.
pub async fn check_schema_registry(config: &Config, options: &CheckOptions) -> ServiceReport {
    bounded(Service::SchemaRegistry, options.timeout * 4, async |report| probe_registry(config, options, report).await)
        .await
}

async fn probe_registry(config: &Config, options: &CheckOptions, report: &mut ServiceReport) -> Result<(), CheckError> {
    let settings = RegistrySettings::from_config(&config.schema_registry)
        .with_request_timeout(options.timeout)
        .with_retry(RetryPolicy { attempts: 1, ..RetryPolicy::default() });
    let encoders = Encoders::new(config, &settings)?;
    let registry: &SchemaRegistry = &encoders.registry;
    let subjects = registry.subjects().await?;
    report.facts.push(format!("{} subject(s) at {}", subjects.len(), settings.url()));
    let mode = registry.mode().await?;
    if mode != WRITABLE_MODE {
        report.problems.push(CheckError::RegistryReadOnly { subject: None, url: settings.url().to_owned(), mode });
        return Ok(());
    }
    if let Some(registered) = &encoders.registered {
        // The gate `run` passes before it starts.
        let verdicts = crate::avro::schemas::check(registry, config, registered, &[]).await?;
        if verdicts.iter().any(crate::avro::schemas::Verdict::is_refused) {
            report.problems.push(CheckError::SchemasIncompatible(crate::avro::schemas::refusal_text(&verdicts)));
        } else {
            report.facts.push(format!("{} local schema verdict(s), none refused", verdicts.len()));
        }
    }
    for topic in fixed_topics(config) {
        for (subject, schema) in encoders.schemas_of(&topic) {
            let mode = registry.mode_of(&subject).await?;
            if mode != WRITABLE_MODE {
                report.problems.push(CheckError::RegistryReadOnly {
                    subject: Some(subject),
                    url: settings.url().to_owned(),
                    mode,
                });
            } else if !subjects.contains(&subject) {
                report.facts.push(format!("subject {subject} absent (registered at the first event)"));
            } else if registry.is_compatible(&subject, schema).await? {
                report.facts.push(format!("subject {subject} accepts the relay's schema"));
            } else {
                report.problems.push(CheckError::SubjectIncompatible { subject });
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Start-up
// ---------------------------------------------------------------------------------------------------------------

/// Where `run` would start: the slot, the checkpoint and the server decided by [`startup::plan`], plus what the
/// slot says about retained WAL.
pub async fn check_startup(config: &Config, options: &CheckOptions) -> ServiceReport {
    bounded(Service::Startup, options.timeout * 4, async |report| probe_startup(config, options, report).await).await
}

async fn probe_startup(config: &Config, options: &CheckOptions, report: &mut ServiceReport) -> Result<(), CheckError> {
    let pg = &config.postgres;
    let client = sql_connection(config, options).await?;
    let mut replication = replication_connection(config, options).await?;
    // The slot before the checkpoint: a running relay commits a checkpoint before it confirms the slot, so the
    // checkpoint read afterwards is never behind the slot read here (run fences the running relay instead).
    let slot = slot::slot_info(&client, &pg.slot).await?;
    let settings = kafka_settings(config, options);
    let checkpoint = match crate::kafka::verify_checkpoint_topic(&settings).await? {
        CheckpointTopic::Absent => None,
        CheckpointTopic::Verified => {
            match crate::kafka::read_checkpoint(&settings, &config.connector_name, options.timeout).await {
                Ok(checkpoint) => checkpoint,
                Err(hidden @ SinkError::CheckpointHidden { .. }) => {
                    report.warnings.push(format!("{hidden}; the start position was not checked"));
                    return Ok(());
                }
                Err(other) => return Err(other.into()),
            }
        }
    };
    let history = tokio::time::timeout(options.timeout, replication.history_for(checkpoint.as_ref()))
        .await
        .map_err(|_| CheckError::Timeout { service: Service::Startup, after: options.timeout })?
        .map_err(CheckError::Replication)?;
    let facts = Facts {
        slot_name: &pg.slot,
        slot: slot.as_ref(),
        create_slot: pg.create_slot,
        checkpoint: checkpoint.as_ref(),
        server: &replication.server,
        server_wal: replication.wal,
        history: &history,
    };
    if let Some(slot) = &slot {
        if slot.active {
            report.warnings.push(format!(
                "slot {} is in use (pid {}): another relay (or consumer) is streaming from it",
                slot.name,
                slot.active_pid.map_or_else(|| "?".to_owned(), |p| p.to_string())
            ));
        }
        match slot.wal_status.as_deref() {
            Some("unreserved") => report.warnings.push(format!(
                "slot {} has wal_status unreserved: its WAL is past max_wal_size and will be removed at the next \
                 checkpoint unless the relay catches up (safe_wal_size {} bytes); raise max_slot_wal_keep_size or \
                 start the relay now",
                slot.name,
                slot.safe_wal_size.unwrap_or(0)
            )),
            Some(status) => report.facts.push(format!("slot wal_status {status}")),
            None => {}
        }
    }
    let mut run_options = RunOptions::default();
    if checkpoint.is_none() && config.debezium.enabled() {
        // As `run` decides on its first start: from Debezium's offset, on Debezium's slot.
        let offset = crate::debezium::read_offset(&settings, &config.debezium, options.timeout)
            .await
            .map_err(|e| CheckError::Handover(e.to_string()))?;
        report.facts.push(format!(
            "continues from Debezium's offset (lsn {}, txId {}{})",
            offset.lsn,
            offset.tx_id,
            offset.lsn_commit.map(|c| format!(", lsn_commit {c}")).unwrap_or_default()
        ));
        run_options.debezium_handover = true;
    }
    match startup::plan(&facts, &run_options)? {
        (Plan::Resume { from }, _) => report.facts.push(format!("resumes from {from} on slot {}", pg.slot)),
        (Plan::CreateSlot, _) => report.facts.push(format!("first start: creates slot {}", pg.slot)),
    }
    Ok(())
}
