//! The `check` command's service probes: is every service the relay needs reachable and set up?
//!
//! [`run`] probes PostgreSQL, Kafka and the schema registry concurrently and returns a [`CheckReport`] with one
//! [`ServiceReport`] per service: the facts it established, warnings, and the problems that would stop the relay,
//! each a [`CheckError`] whose message says what to fix. Every probe is bounded by [`CheckOptions::timeout`]; a probe
//! never changes anything on the services it checks (the Kafka probe uses its own `transactional.id`,
//! `<kafka.transactional_id>-check`, so it does not fence a running relay).

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, NoCustomPartitioner, Producer, ProducerContext};

use crate::config::{Config, ConnectError, KafkaConfig, PostgresConfig, SchemaRegistryConfig};

/// The oldest PostgreSQL major version the relay supports (pgoutput `messages` and streaming need 14).
pub const MIN_POSTGRES_VERSION_NUM: i32 = 140_000;

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

/// A checked service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// The PostgreSQL source.
    Postgres,
    /// The Kafka cluster.
    Kafka,
    /// The schema registry.
    SchemaRegistry,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Service::Postgres => "postgres",
            Service::Kafka => "kafka",
            Service::SchemaRegistry => "schema-registry",
        })
    }
}

/// What a problem found by `check` is; each message names the setting or server action that fixes it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// No connection could be opened.
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
        what: String,
        /// The error chain.
        detail: String,
    },
    /// The server is older than the relay supports.
    #[error("PostgreSQL {version} is too old: the relay needs PostgreSQL 14 or later")]
    PostgresTooOld {
        /// `server_version`.
        version: String,
    },
    /// A configured feature needs a newer server.
    #[error("{setting} needs PostgreSQL {needs} or later, the server runs {version}: {fix}")]
    PostgresFeature {
        /// The configuration key.
        setting: String,
        /// The major version needed.
        needs: u32,
        /// `server_version`.
        version: String,
        /// What to change.
        fix: String,
    },
    /// `wal_level` is not `logical`.
    #[error(
        "wal_level is {actual} but logical decoding needs logical: set wal_level = logical in postgresql.conf (or \
         ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL"
    )]
    WalLevel {
        /// The server's `wal_level`.
        actual: String,
    },
    /// The role has neither `REPLICATION` nor superuser.
    #[error("role {role} may not replicate: run ALTER ROLE {role} WITH REPLICATION, or connect as a role that has it")]
    NoReplication {
        /// The connected role.
        role: String,
    },
    /// An outbox table does not exist.
    #[error(
        "outbox table {table} does not exist in database {database}: create it, or fix outbox.tables[{index}].table"
    )]
    OutboxTableMissing {
        /// Index in `outbox.tables`.
        index: usize,
        /// `schema.table`.
        table: String,
        /// The connected database.
        database: String,
    },
    /// An outbox table lacks configured columns.
    #[error(
        "outbox table {table} has no column {}: add it, or point outbox.tables[{index}] (field_event_*, \
         route_by_field, additional_fields) at existing columns", missing.join(", ")
    )]
    OutboxColumnsMissing {
        /// Index in `outbox.tables`.
        index: usize,
        /// `schema.table`.
        table: String,
        /// The missing columns.
        missing: Vec<String>,
    },
    /// `create_slot = false` and the slot does not exist, or the slot is unusable.
    #[error("replication slot {slot}: {detail}")]
    Slot {
        /// The slot.
        slot: String,
        /// What is wrong and what to do.
        detail: String,
    },
    /// `create_publication = false` and the publication does not exist.
    #[error(
        "publication {publication} does not exist and postgres.create_publication = false: create it (CREATE \
         PUBLICATION {publication} FOR TABLE ... WITH (publish = 'insert')) or set create_publication = true"
    )]
    PublicationMissing {
        /// The publication.
        publication: String,
    },
    /// The Kafka producer could not even be created (a bad `[kafka.properties]` entry).
    #[error("cannot create a Kafka producer: {detail}; check [kafka.properties]")]
    KafkaClient {
        /// librdkafka's error.
        detail: String,
    },
    /// No broker answered.
    #[error(
        "could not reach the Kafka bootstrap servers {bootstrap}: {detail}; check kafka.bootstrap_servers, the \
         security settings in [kafka.properties] and that the brokers are running"
    )]
    KafkaUnreachable {
        /// `kafka.bootstrap_servers`.
        bootstrap: String,
        /// librdkafka's error and its last logged connection errors.
        detail: String,
    },
    /// The brokers are reachable but transactions do not work.
    #[error(
        "Kafka transactions are not usable (init_transactions with transactional.id {transactional_id}): {detail}; \
         check that the cluster supports transactions (transaction.state.log.replication.factor and \
         transaction.state.log.min.isr not above the number of brokers) and that the principal may write \
         transactional id {transactional_id}"
    )]
    KafkaTransactions {
        /// The probe's transactional id.
        transactional_id: String,
        /// librdkafka's error.
        detail: String,
    },
    /// A topic the relay will write to does not exist and the relay may not create it.
    #[error(
        "topic {topic} does not exist and kafka.topic_creation.enabled = false: create it (with the partitions and \
         configuration it needs) or enable topic creation; the relay would stop (or dead-letter) at its first event"
    )]
    TopicMissing {
        /// The topic.
        topic: String,
    },
    /// No HTTP response from the registry.
    #[error(
        "cannot reach the schema registry at {url}: {detail}; check schema_registry.url and that the registry is running"
    )]
    RegistryUnreachable {
        /// The URL requested (without credentials).
        url: String,
        /// The error chain.
        detail: String,
    },
    /// The registry answered with an error status.
    #[error("schema registry at {url} answered HTTP {status}: {body}{hint}")]
    RegistryStatus {
        /// The URL requested (without credentials).
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The start of the response body.
        body: String,
        /// What to check for this status, starting with `; `.
        hint: String,
    },
    /// The probe did not finish in time.
    #[error("{service} check did not finish within {after:?}; the service may be overloaded or unreachable")]
    Timeout {
        /// The service.
        service: Service,
        /// The limit.
        after: Duration,
    },
}

/// The result of probing one service.
#[derive(Debug)]
pub struct ServiceReport {
    /// The service.
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
        if self.is_ok() {
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

/// The result of `check`: one report per service, in the order postgres, kafka, schema-registry.
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

/// Probes every service concurrently.
pub async fn run(config: &Config, options: &CheckOptions) -> CheckReport {
    let topics = fixed_topics(config);
    let (postgres, kafka, registry) = tokio::join!(
        check_postgres(config, options),
        check_kafka(&config.kafka, &topics, options),
        check_schema_registry(&config.schema_registry, options),
    );
    CheckReport { services: vec![postgres, kafka, registry] }
}

/// `error: source: source ...`, skipping a source whose text its parent already ends with.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

// ---------------------------------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------------------------------

/// Probes PostgreSQL: reachable, version, `wal_level`, replication privilege, outbox tables and columns, and the
/// slot and publication when the relay is not allowed to create them.
pub async fn check_postgres(config: &Config, options: &CheckOptions) -> ServiceReport {
    let mut report = ServiceReport::new(Service::Postgres);
    // Connect plus a handful of catalog queries, each bounded by the driver or this outer limit.
    let limit = options.timeout * 2;
    match tokio::time::timeout(limit, probe_postgres(config, options, &mut report)).await {
        Ok(Ok(())) => {}
        Ok(Err(problem)) => report.problems.push(problem),
        Err(_) => report.problems.push(CheckError::Timeout { service: Service::Postgres, after: limit }),
    }
    report
}

async fn probe_postgres(config: &Config, options: &CheckOptions, report: &mut ServiceReport) -> Result<(), CheckError> {
    let pg: &PostgresConfig = &config.postgres;
    let target = pg.target();
    let client = match tokio::time::timeout(options.timeout, pg.connect_sql_timeout(options.timeout)).await {
        Err(_) => {
            return Err(CheckError::PostgresUnreachable {
                target,
                detail: format!("no answer within {:?}", options.timeout),
            });
        }
        Ok(Err(ConnectError::Connect { target, source })) => {
            return Err(match source.as_db_error() {
                Some(db) => CheckError::PostgresRejected {
                    target,
                    detail: format!("{} (SQLSTATE {})", db.message(), db.code().code()),
                },
                None => CheckError::PostgresUnreachable { target, detail: error_chain(&source) },
            });
        }
        Ok(Err(other)) => {
            return Err(CheckError::PostgresUnreachable { target, detail: error_chain(&other) });
        }
        Ok(Ok(client)) => client,
    };
    let query_err = |what: &str| {
        let what = what.to_owned();
        move |e: tokio_postgres::Error| CheckError::PostgresQuery { what, detail: error_chain(&e) }
    };

    let row = client
        .query_one(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int, \
                    current_setting('wal_level'), current_user::text, current_database()::text, \
                    coalesce((SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user), false)",
            &[],
        )
        .await
        .map_err(query_err("server settings"))?;
    let version_full: String = row.try_get(0).map_err(query_err("server_version"))?;
    let version_num: i32 = row.try_get(1).map_err(query_err("server_version_num"))?;
    let wal_level: String = row.try_get(2).map_err(query_err("wal_level"))?;
    let role: String = row.try_get(3).map_err(query_err("current_user"))?;
    let database: String = row.try_get(4).map_err(query_err("current_database"))?;
    let may_replicate: bool = row.try_get(5).map_err(query_err("pg_roles"))?;
    let version = version_full.split_whitespace().next().unwrap_or(&version_full).to_owned();
    let major = u32::try_from(version_num / 10_000).unwrap_or(0);

    report.facts.push(format!("PostgreSQL {version}"));
    if version_num < MIN_POSTGRES_VERSION_NUM {
        report.problems.push(CheckError::PostgresTooOld { version: version.clone() });
    }
    let protocol_needs = match pg.protocol_version {
        2 => 14,
        3 => 15,
        4 => 16,
        _ => 0,
    };
    if major < protocol_needs {
        report.problems.push(CheckError::PostgresFeature {
            setting: format!("postgres.protocol_version = {}", pg.protocol_version),
            needs: protocol_needs,
            version: version.clone(),
            fix: "lower it, or set 0 to use the highest the server supports".to_owned(),
        });
    }
    if pg.failover_slot && major < 17 {
        report.problems.push(CheckError::PostgresFeature {
            setting: "postgres.failover_slot = true".to_owned(),
            needs: 17,
            version: version.clone(),
            fix: "set failover_slot = false".to_owned(),
        });
    }

    if wal_level == "logical" {
        report.facts.push("wal_level=logical".to_owned());
    } else {
        report.problems.push(CheckError::WalLevel { actual: wal_level });
    }
    if may_replicate {
        report.facts.push(format!("role {role} may replicate"));
    } else {
        report.problems.push(CheckError::NoReplication { role });
    }

    for (index, table) in config.outbox.tables.iter().enumerate() {
        let oid: Option<u32> = client
            .query_opt(
                "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&table.table.schema, &table.table.name],
            )
            .await
            .map_err(query_err("pg_class"))?
            .map(|row| row.try_get(0))
            .transpose()
            .map_err(query_err("pg_class.oid"))?;
        let Some(oid) = oid else {
            report.problems.push(CheckError::OutboxTableMissing {
                index,
                table: table.table.to_string(),
                database: database.clone(),
            });
            continue;
        };
        let present: Vec<String> = client
            .query(
                "SELECT attname::text FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
                &[&oid],
            )
            .await
            .map_err(query_err("pg_attribute"))?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(query_err("pg_attribute.attname"))?;
        let missing: Vec<String> = table
            .required_columns()
            .into_iter()
            .filter(|c| !present.iter().any(|p| p == c))
            .map(str::to_owned)
            .collect();
        if missing.is_empty() {
            report.facts.push(format!("outbox table {} ok", table.table));
        } else {
            report.problems.push(CheckError::OutboxColumnsMissing { index, table: table.table.to_string(), missing });
        }
    }

    let slot = client
        .query_opt(
            "SELECT plugin::text, coalesce(database::text, ''), slot_type::text FROM pg_replication_slots \
             WHERE slot_name = $1",
            &[&pg.slot],
        )
        .await
        .map_err(query_err("pg_replication_slots"))?;
    match slot {
        None if pg.create_slot => report.facts.push(format!("slot {} absent (will be created)", pg.slot)),
        None => report.problems.push(CheckError::Slot {
            slot: pg.slot.clone(),
            detail: "does not exist and postgres.create_slot = false: create it (SELECT \
                     pg_create_logical_replication_slot('<slot>', 'pgoutput')) or set create_slot = true"
                .replace("<slot>", &pg.slot),
        }),
        Some(row) => {
            let plugin: String = row.try_get(0).map_err(query_err("pg_replication_slots.plugin"))?;
            let slot_db: String = row.try_get(1).map_err(query_err("pg_replication_slots.database"))?;
            if plugin != "pgoutput" || slot_db != database {
                report.problems.push(CheckError::Slot {
                    slot: pg.slot.clone(),
                    detail: format!(
                        "exists with plugin {plugin:?} on database {slot_db:?}, the relay needs a pgoutput slot on \
                         {database:?}: choose another postgres.slot or drop that slot"
                    ),
                });
            } else {
                report.facts.push(format!("slot {} exists", pg.slot));
            }
        }
    }

    let publication = client
        .query_opt("SELECT pubinsert FROM pg_publication WHERE pubname = $1", &[&pg.publication])
        .await
        .map_err(query_err("pg_publication"))?;
    match publication {
        None if pg.create_publication => {
            report.facts.push(format!("publication {} absent (will be created)", pg.publication));
        }
        None => report.problems.push(CheckError::PublicationMissing { publication: pg.publication.clone() }),
        Some(row) => {
            let publishes_inserts: bool = row.try_get(0).map_err(query_err("pg_publication.pubinsert"))?;
            report.facts.push(format!("publication {} exists", pg.publication));
            if !publishes_inserts {
                report.warnings.push(format!(
                    "publication {} does not publish inserts (ALTER PUBLICATION {} SET (publish = 'insert'))",
                    pg.publication, pg.publication
                ));
            }
            let published: Vec<String> = client
                .query(
                    "SELECT schemaname::text || '.' || tablename::text FROM pg_publication_tables WHERE pubname = $1",
                    &[&pg.publication],
                )
                .await
                .map_err(query_err("pg_publication_tables"))?
                .iter()
                .map(|row| row.try_get(0))
                .collect::<Result<_, _>>()
                .map_err(query_err("pg_publication_tables.tablename"))?;
            for table in &config.outbox.tables {
                if !published.contains(&table.table.to_string()) {
                    report.warnings.push(format!(
                        "publication {} does not include {} (ALTER PUBLICATION {} ADD TABLE {})",
                        pg.publication, table.table, pg.publication, table.table
                    ));
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Kafka
// ---------------------------------------------------------------------------------------------------------------

/// A librdkafka context that keeps the last error messages (to explain a failure) and logs at debug level only,
/// so an unreachable broker does not flood the terminal while `check` waits.
#[derive(Default)]
struct ProbeContext {
    errors: Mutex<Vec<String>>,
}

impl ProbeContext {
    fn remember(&self, message: String) {
        if let Ok(mut errors) = self.errors.lock() {
            if !errors.contains(&message) {
                errors.push(message);
            }
            if errors.len() > 3 {
                errors.remove(0);
            }
        }
    }

    fn recent(&self) -> Vec<String> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl ClientContext for ProbeContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        tracing::debug!(?level, fac, message, "librdkafka");
        if (level as i32) <= (RDKafkaLogLevel::Error as i32) {
            self.remember(message.to_owned());
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(%error, reason, "librdkafka error");
        self.remember(reason.to_owned());
    }
}

impl ProducerContext<NoCustomPartitioner> for ProbeContext {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

/// Probes Kafka: a metadata request through the bootstrap servers, then `init_transactions` with the probe's own
/// transactional id. Reports whether the checkpoint topic exists (it is not created here).
pub async fn check_kafka(kafka: &KafkaConfig, topics: &[String], options: &CheckOptions) -> ServiceReport {
    let kafka = kafka.clone();
    let topics = topics.to_vec();
    let timeout = options.timeout;
    // librdkafka's calls block: run them off the async threads. Each is bounded by `timeout`.
    match tokio::task::spawn_blocking(move || probe_kafka(&kafka, &topics, timeout)).await {
        Ok(report) => report,
        Err(join_error) => {
            let mut report = ServiceReport::new(Service::Kafka);
            report.problems.push(CheckError::KafkaClient { detail: format!("probe task failed: {join_error}") });
            report
        }
    }
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

fn probe_kafka(kafka: &KafkaConfig, topics: &[String], timeout: Duration) -> ServiceReport {
    let mut report = ServiceReport::new(Service::Kafka);
    let transactional_id = format!("{}-check", kafka.transactional_id);
    let mut client_config = kafka.client_config();
    client_config
        .set("transactional.id", &transactional_id)
        .set("transaction.timeout.ms", kafka.transaction_timeout_ms.to_string())
        .set("socket.connection.setup.timeout.ms", timeout.as_millis().max(1000).to_string());
    let producer: BaseProducer<ProbeContext> = match client_config.create_with_context(ProbeContext::default()) {
        Ok(producer) => producer,
        Err(e) => {
            report.problems.push(CheckError::KafkaClient { detail: error_chain(&e) });
            return report;
        }
    };
    let with_recent = |e: &KafkaError| {
        // Serve the queued error events so the context has seen them.
        producer.poll(Duration::ZERO);
        let mut detail = error_chain(e);
        let recent = producer.context().recent();
        if !recent.is_empty() {
            detail.push_str(" (");
            detail.push_str(&recent.join("; "));
            detail.push(')');
        }
        detail
    };
    let metadata = match producer.client().fetch_metadata(None, timeout) {
        Ok(metadata) => metadata,
        Err(e) => {
            report.problems.push(CheckError::KafkaUnreachable {
                bootstrap: kafka.bootstrap_servers.clone(),
                detail: with_recent(&e),
            });
            return report;
        }
    };
    report.facts.push(format!("{} broker(s)", metadata.brokers().len()));
    if let Err(e) = producer.init_transactions(timeout) {
        report.problems.push(CheckError::KafkaTransactions { transactional_id, detail: with_recent(&e) });
        return report;
    }
    report.facts.push("transactions usable".to_owned());
    let checkpoint_exists = metadata.topics().iter().any(|t| t.name() == kafka.checkpoint_topic);
    report.facts.push(format!(
        "checkpoint topic {} {}",
        kafka.checkpoint_topic,
        if checkpoint_exists { "exists" } else { "absent" }
    ));
    let exists = |topic: &str| metadata.topics().iter().any(|t| t.name() == topic && t.error().is_none());
    for topic in topics {
        if !exists(topic) && !kafka.topic_creation.enabled {
            report.problems.push(CheckError::TopicMissing { topic: topic.clone() });
        }
    }
    report
}

// ---------------------------------------------------------------------------------------------------------------
// Schema registry
// ---------------------------------------------------------------------------------------------------------------

/// Probes the schema registry: `GET <url>/subjects`, with basic auth when configured.
pub async fn check_schema_registry(registry: &SchemaRegistryConfig, options: &CheckOptions) -> ServiceReport {
    let mut report = ServiceReport::new(Service::SchemaRegistry);
    let url = format!("{}/subjects", registry.base_url());
    let client = match reqwest::Client::builder().timeout(options.timeout).connect_timeout(options.timeout).build() {
        Ok(client) => client,
        Err(e) => {
            report.problems.push(CheckError::RegistryUnreachable { url, detail: error_chain(&e) });
            return report;
        }
    };
    let mut request =
        client.get(&url).header(reqwest::header::ACCEPT, "application/vnd.schemaregistry.v1+json, application/json");
    if let Some((user, password)) = registry.basic_auth() {
        request = request.basic_auth(user, Some(password));
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => {
            let detail = if e.is_timeout() {
                format!("no answer within {:?}", options.timeout)
            } else {
                error_chain(&e.without_url())
            };
            report.problems.push(CheckError::RegistryUnreachable { url, detail });
            return report;
        }
    };
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if !status.is_success() {
        let hint = match status.as_u16() {
            401 | 403 => "; check schema_registry.username and schema_registry.password (or the URL's user:password@)",
            404 => "; check that schema_registry.url is the API's base URL (Apicurio: .../apis/ccompat/v7)",
            _ => "",
        };
        report.problems.push(CheckError::RegistryStatus {
            url,
            status: status.as_u16(),
            body: body.chars().take(200).collect(),
            hint: hint.to_owned(),
        });
        return report;
    }
    match serde_json::from_str::<Vec<String>>(&body) {
        Ok(subjects) => report.facts.push(format!("{} subject(s) at {}", subjects.len(), registry.base_url())),
        Err(_) => report.problems.push(CheckError::RegistryStatus {
            url,
            status: status.as_u16(),
            body: body.chars().take(200).collect(),
            hint: "; expected a JSON list of subjects: check that schema_registry.url is a Confluent-compatible API"
                .to_owned(),
        }),
    }
    report
}
