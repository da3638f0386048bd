//! `check` against the real services of `tests/infra/up.sh`: ok when everything is set up, and a named,
//! actionable problem for each way a service can be missing or misconfigured.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "common/services.rs"]
mod services;

#[path = "common/kafka_node.rs"]
mod kafka_node;

use std::process::Command;
use std::time::{Duration, Instant};

use outbox_relay::avro::EncodeError;
use outbox_relay::check::{self, CheckError, CheckOptions, CheckReport, Service, ServiceReport};
use outbox_relay::config::Config;
use outbox_relay::kafka::SinkError;
use outbox_relay::outbox::MapErrorKind;
use outbox_relay::pg::replication::ReplicationError;
use outbox_relay::pg::slot::SlotError;
use outbox_relay::preflight::Finding;
use outbox_relay::startup::StartupError;
use services::{Services, TestDb, ThrowawayCluster, closed_port, services};

/// The Debezium outbox table, plus the `tenant` column of the additional field in [`config_toml`].
const OUTBOX_TABLE: &str = "CREATE TABLE public.outbox (
    id uuid PRIMARY KEY,
    aggregatetype text NOT NULL,
    aggregateid text NOT NULL,
    type text NOT NULL,
    payload jsonb,
    tenant text
)";

/// Short probe time limit: long enough for a healthy local service, short enough for the down-service tests.
const TIMEOUT: Duration = Duration::from_secs(5);

fn options() -> CheckOptions {
    CheckOptions { timeout: TIMEOUT }
}

fn config_toml(pg_url: &str, kafka: &str, registry: &str, connector: &str) -> String {
    format!(
        r#"
connector_name = "{connector}"
[postgres]
url = "{pg_url}"
[[outbox.tables]]
table = "outbox"
additional_fields = [{{ column = "tenant", placement = "header" }}]
[kafka]
bootstrap_servers = "{kafka}"
checkpoint_topic = "{connector}.checkpoints"
[schema_registry]
url = "{registry}"
"#
    )
}

fn config(pg_url: &str, kafka: &str, registry: &str) -> Config {
    let connector = services::unique_name("check");
    Config::from_toml_str(&config_toml(pg_url, kafka, registry, &connector), &[]).expect("test config is valid")
}

fn service(report: &CheckReport, service: Service) -> &ServiceReport {
    report.service(service).unwrap_or_else(|| panic!("no {service} report in {report:?}"))
}

fn only_problem(report: &ServiceReport) -> &CheckError {
    assert_eq!(report.problems.len(), 1, "expected exactly one problem: {report:#?}");
    &report.problems[0]
}

async fn db_with_outbox(s: &Services) -> TestDb {
    let db = TestDb::create(s, "check").await;
    db.execute(OUTBOX_TABLE).await;
    db
}

#[tokio::test]
async fn all_services_ok() {
    let s = services();
    let db = db_with_outbox(&s).await;
    let report = check::run(&config(&db.url, &s.kafka_bootstrap, &s.schema_registry_url), &options()).await;
    assert!(report.is_ok(), "{report}");
    let pg = service(&report, Service::Postgres);
    for fact in ["wal_level=logical", "outbox table public.outbox ok"] {
        assert!(pg.facts.iter().any(|f| f == fact), "{fact} missing: {pg:#?}");
    }
    assert!(pg.facts.iter().any(|f| f.starts_with("publication ") && f.ends_with(" absent (created at start)")));
    // The replication connection itself proves the role may replicate.
    assert!(pg.facts.iter().any(|f| f.starts_with("replication connection as outbox (system ")), "{pg:#?}");
    assert!(pg.facts[0].starts_with("PostgreSQL 1"), "{pg:#?}");
    let kafka = service(&report, Service::Kafka);
    assert!(kafka.facts.iter().any(|f| f.starts_with("transactions usable")), "{kafka:#?}");
    let registry = service(&report, Service::SchemaRegistry);
    assert!(registry.facts.iter().any(|f| f.contains("subject(s)")), "{registry:#?}");
    let startup = service(&report, Service::Startup);
    assert!(startup.facts.iter().any(|f| f.starts_with("first start: creates slot")), "{startup:#?}");
    let text = report.to_string();
    assert!(text.starts_with("postgres  ok  (PostgreSQL "), "{text}");
}

/// The binary: exit 0 and one `ok` line per service; then exit 1 and a `FAILED` line naming the broker address when
/// Kafka is down, while the healthy services still report ok.
#[tokio::test]
async fn binary_exit_code_and_output() {
    let s = services();
    let db = db_with_outbox(&s).await;
    let dir = tempfile::tempdir().unwrap();
    let run = |kafka: &str| {
        let path = dir.path().join("relay.toml");
        let connector = services::unique_name("check_bin");
        std::fs::write(&path, config_toml(&db.url, kafka, &s.schema_registry_url, &connector)).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_outbox-relay"));
        for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("OUTBOX_RELAY_")) {
            command.env_remove(name);
        }
        let output = command
            .args(["--config", path.to_str().unwrap(), "check", "--timeout-ms", "4000"])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };

    let (code, stdout, stderr) = run(&s.kafka_bootstrap);
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(lines[0].starts_with("postgres  ok  (PostgreSQL 1"), "{stdout}");
    assert!(lines[0].contains("wal_level=logical, replication connection as outbox"), "{stdout}");
    assert!(lines[1].starts_with("kafka  ok  ("), "{stdout}");
    assert!(lines[2].starts_with("schema-registry  ok  ("), "{stdout}");
    assert!(lines[3].starts_with("start-up  ok  (first start: creates slot"), "{stdout}");

    let port = closed_port();
    let (code, stdout, stderr) = run(&format!("127.0.0.1:{port}"));
    assert_eq!(code, Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("postgres  ok  ("), "{stdout}");
    assert!(stdout.contains("schema-registry  ok  ("), "{stdout}");
    assert!(
        stdout.contains(&format!("kafka  FAILED  could not reach the Kafka bootstrap servers 127.0.0.1:{port}")),
        "{stdout}"
    );
    assert!(stdout.contains("start-up  not checked"), "{stdout}");
    assert!(stderr.contains("check failed for kafka"), "{stderr}");
}

#[tokio::test]
async fn postgres_down() {
    let s = services();
    let port = closed_port();
    let url = format!("postgres://relay:pw-not-shown@127.0.0.1:{port}/app?sslmode=disable");
    let report = check::check_postgres(&config(&url, &s.kafka_bootstrap, &s.schema_registry_url), &options()).await;
    let problem = only_problem(&report);
    assert!(matches!(problem, CheckError::PostgresUnreachable { .. }), "{problem:?}");
    let message = problem.to_string();
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(message.to_lowercase().contains("connection refused"), "{message}");
    assert!(message.contains("check postgres.url") && message.contains("server is running"), "{message}");
    assert!(!message.contains("pw-not-shown"), "{message}");
}

#[tokio::test]
async fn postgres_rejects_login() {
    let s = services();
    let mut url = url::Url::parse(&s.pg_url).unwrap();
    url.set_password(Some("wrong-password")).unwrap();
    let report =
        check::check_postgres(&config(url.as_str(), &s.kafka_bootstrap, &s.schema_registry_url), &options()).await;
    let problem = only_problem(&report);
    assert!(matches!(problem, CheckError::PostgresRejected { .. }), "{problem:?}");
    let message = problem.to_string();
    assert!(message.contains("password authentication failed"), "{message}");
    assert!(message.contains("check the user, password and database in postgres.url"), "{message}");
}

#[tokio::test]
async fn wal_level_not_logical() {
    let s = services();
    // initdb + start take a few seconds; the cluster is stopped when `cluster` drops.
    let cluster = tokio::task::spawn_blocking({
        let s = s.clone();
        move || ThrowawayCluster::start(&s, &["wal_level=replica"])
    })
    .await
    .unwrap();
    let setup = tokio_postgres::connect(&cluster.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(setup.1);
    setup.0.batch_execute(OUTBOX_TABLE).await.unwrap();

    let report =
        check::check_postgres(&config(&cluster.url(), &s.kafka_bootstrap, &s.schema_registry_url), &options()).await;
    let problem = only_problem(&report);
    assert!(
        matches!(problem, CheckError::Preflight(Finding::WalLevel { actual }) if actual == "replica"),
        "{problem:?}"
    );
    let message = problem.to_string();
    assert!(message.contains("wal_level is replica"), "{message}");
    assert!(message.contains("set wal_level = logical in postgresql.conf") && message.contains("restart"), "{message}");
    drop(cluster);
}

#[tokio::test]
async fn outbox_table_missing() {
    let s = services();
    let db = TestDb::create(&s, "check").await;
    let report = check::check_postgres(&config(&db.url, &s.kafka_bootstrap, &s.schema_registry_url), &options()).await;
    let problem = only_problem(&report);
    assert!(matches!(problem, CheckError::Preflight(Finding::OutboxTableMissing { index: 0, .. })), "{problem:?}");
    let message = problem.to_string();
    assert!(message.contains("outbox table public.outbox does not exist"), "{message}");
    assert!(message.contains(&format!("database {}", db.name)), "{message}");
    assert!(message.contains("outbox.tables[0].table"), "{message}");
}

/// Table names are read like SQL, by `check` and `run` alike: `public.Outbox` is the table `outbox`; only
/// `public."Outbox"` is the mixed-case table. (`check` once looked `Outbox` up case-sensitively while `run` mapped
/// `outbox`, so a green check did not mean the relay would find its table.)
#[tokio::test]
async fn table_names_fold_like_sql_in_check_and_run() {
    let s = services();
    let db = TestDb::create(&s, "check").await;
    db.execute(&OUTBOX_TABLE.replace("public.outbox", "public.\"Outbox\"")).await;
    let with_table = |table: &str| {
        let connector = services::unique_name("check");
        let text = config_toml(&db.url, &s.kafka_bootstrap, &s.schema_registry_url, &connector)
            .replace("table = \"outbox\"", &format!("table = '{table}'"));
        Config::from_toml_str(&text, &[]).unwrap()
    };
    let folded = with_table("public.Outbox");
    assert_eq!(folded.outbox.tables[0].table.name, "outbox", "unquoted names fold to lower case");
    let report = check::check_postgres(&folded, &options()).await;
    assert!(
        matches!(only_problem(&report), CheckError::Preflight(Finding::OutboxTableMissing { table, .. }) if table == "public.outbox"),
        "{report:#?}"
    );
    let quoted = with_table("public.\"Outbox\"");
    assert_eq!(quoted.outbox.tables[0].table.name, "Outbox");
    let report = check::check_postgres(&quoted, &options()).await;
    assert!(report.problems.is_empty(), "{report:#?}");
    // The same name reaches the publication the relay creates.
    assert!(quoted.to_redacted_toml().unwrap().contains("table = 'public.\"Outbox\"'"));
}

#[tokio::test]
async fn outbox_columns_missing() {
    let s = services();
    let db = TestDb::create(&s, "check").await;
    // Has id, type and payload; lacks aggregateid, aggregatetype and the additional field's tenant.
    db.execute("CREATE TABLE public.outbox (id uuid, type text, payload jsonb, dropped int); ALTER TABLE public.outbox DROP COLUMN dropped")
        .await;
    let report = check::check_postgres(&config(&db.url, &s.kafka_bootstrap, &s.schema_registry_url), &options()).await;
    let problem = only_problem(&report);
    let CheckError::Preflight(Finding::OutboxMapping { index: 0, source }) = problem else {
        panic!("expected missing columns, got {problem:?}")
    };
    // The binding `run` makes when the table's first row arrives.
    let MapErrorKind::MissingColumns(missing) = &source.kind else { panic!("{source:?}") };
    let names: Vec<&str> = missing.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(names, ["aggregateid", "aggregatetype", "tenant"]);
    let message = problem.to_string();
    assert!(
        message.contains("from public.outbox")
            && message.contains("no column \"aggregateid\" (configured as field_event_key)"),
        "{message}"
    );
    assert!(message.contains("point outbox.tables[0] at existing columns"), "{message}");
}

/// A role without REPLICATION (refused by the replication connection itself, not guessed from `pg_roles`, so roles
/// that replicate through a granted role pass) and `create_publication = false` without a publication: both reported
/// at once; the start-up decision waits for them.
#[tokio::test]
async fn role_and_publication_problems() {
    let s = services();
    let db = db_with_outbox(&s).await;
    let role = services::unique_name("norepl");
    db.execute(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'pw' NOREPLICATION; GRANT SELECT ON public.outbox TO {role}"
    ))
    .await;
    let mut url = url::Url::parse(&db.url).unwrap();
    url.set_username(&role).unwrap();
    url.set_password(Some("pw")).unwrap();
    let connector = services::unique_name("check");
    let text = config_toml(url.as_str(), &s.kafka_bootstrap, &s.schema_registry_url, &connector)
        .replace("[postgres]\n", "[postgres]\ncreate_publication = false\n");
    let config = Config::from_toml_str(&text, &[]).unwrap();
    let report = check::run(&config, &options()).await;
    db.execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}")).await;

    let pg = service(&report, Service::Postgres);
    let messages: Vec<String> = pg.problems.iter().map(ToString::to_string).collect();
    assert_eq!(pg.problems.len(), 2, "{messages:#?}");
    assert!(
        matches!(&pg.problems[0], CheckError::NoReplication { role: r, source: ReplicationError::PermissionDenied(_) } if *r == role),
        "{messages:#?}"
    );
    assert!(messages[0].contains(&format!("ALTER ROLE {role} WITH REPLICATION")), "{messages:#?}");
    assert!(matches!(&pg.problems[1], CheckError::Slot(SlotError::PublicationMissing(_))), "{messages:#?}");
    assert!(messages[1].contains("CREATE PUBLICATION"), "{messages:#?}");
    let startup = service(&report, Service::Startup);
    assert!(startup.facts.is_empty() && startup.warnings[0].contains("not checked"), "{startup:#?}");
}

/// The start-up decision `run` makes, reported: a slot made by hand without a checkpoint is a gap (run would refuse
/// it); with `create_slot = false` a missing slot is named; an existing slot shows its `wal_status`.
#[tokio::test]
async fn start_up_decision_gap_and_missing_slot() {
    let s = services();
    let db = db_with_outbox(&s).await;
    let connector = services::unique_name("check");
    let slot = services::unique_name("chk_slot");
    let text = config_toml(&db.url, &s.kafka_bootstrap, &s.schema_registry_url, &connector)
        .replace("[postgres]\n", &format!("[postgres]\nslot = \"{slot}\"\ncreate_slot = false\n"));
    let config = Config::from_toml_str(&text, &[]).unwrap();
    let startup = check::check_startup(&config, &options()).await;
    assert!(
        matches!(only_problem(&startup), CheckError::Startup(StartupError::Slot(SlotError::SlotMissing(name))) if *name == slot),
        "{startup:#?}"
    );

    db.execute(&format!("SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")).await;
    let startup = check::check_startup(&config, &options()).await;
    db.execute(&format!("SELECT pg_drop_replication_slot('{slot}')")).await;
    let problem = only_problem(&startup);
    assert!(matches!(problem, CheckError::Startup(StartupError::Gap { .. })), "{startup:#?}");
    assert!(problem.to_string().contains("--accept-gap"), "{problem}");
    assert!(startup.facts.iter().any(|f| f == "slot wal_status reserved"), "{startup:#?}");
}

/// A spill directory the relay cannot write to is found before a large transaction needs it.
#[tokio::test]
async fn unwritable_spill_dir() {
    let s = services();
    let db = db_with_outbox(&s).await;
    let file = tempfile::NamedTempFile::new().unwrap();
    let spill = file.path().join("spill");
    let connector = services::unique_name("check");
    let text = config_toml(&db.url, &s.kafka_bootstrap, &s.schema_registry_url, &connector)
        .replace("[postgres]\n", &format!("[postgres]\nspill_dir = \"{}\"\n", spill.display()));
    let report = check::check_postgres(&Config::from_toml_str(&text, &[]).unwrap(), &options()).await;
    let problem = only_problem(&report);
    assert!(matches!(problem, CheckError::Preflight(Finding::SpillDir { .. })), "{problem:?}");
    assert!(problem.to_string().contains("postgres.spill_dir"), "{problem}");
}

#[tokio::test]
async fn kafka_down() {
    let s = services();
    let port = closed_port();
    let config = config(&s.pg_url, &format!("127.0.0.1:{port}"), &s.schema_registry_url);
    let started = Instant::now();
    let report = check::check_kafka(&config, &CheckOptions { timeout: Duration::from_secs(2) }).await;
    let elapsed = started.elapsed();
    let problem = only_problem(&report);
    assert!(matches!(problem, CheckError::Kafka(SinkError::Unreachable { .. })), "{problem:?}");
    let message = problem.to_string();
    assert!(message.contains(&format!("could not reach the Kafka bootstrap servers 127.0.0.1:{port}")), "{message}");
    assert!(message.contains("check kafka.bootstrap_servers"), "{message}");
    assert!(elapsed < Duration::from_secs(8), "the probe took {elapsed:?} despite a 2 s limit");
}

/// With topic creation off, the topics known before any event (fixed routes, the dead-letter topic) must exist.
#[tokio::test]
async fn missing_topics_are_found_when_the_relay_may_not_create_them() {
    let s = services();
    let connector = services::unique_name("checktopics");
    let text = config_toml(&s.pg_url, &s.kafka_bootstrap, &s.schema_registry_url, &connector)
        .replace("table = \"outbox\"", &format!("table = \"outbox\"\nroute_topic_replacement = \"{connector}.all\""))
        + "[errors]\nmode = \"dead_letter\"\n";
    let mut config = Config::from_toml_str(&text, &[]).unwrap();
    assert_eq!(check::fixed_topics(&config), vec![format!("{connector}.all"), format!("{connector}.dead-letter")]);
    // Creation on: nothing to report, and nothing created.
    let report = check::check_kafka(&config, &options()).await;
    assert!(report.problems.is_empty(), "{report:#?}");
    assert!(
        report.facts.contains(&format!("topic {connector}.all absent (created at its first event)")),
        "{report:#?}"
    );
    config.kafka.topic_creation.enabled = false;
    let report = check::check_kafka(&config, &options()).await;
    let messages: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    assert_eq!(messages.len(), 2, "{messages:#?}");
    assert!(messages[0].contains(&format!("topic {connector}.all does not exist")), "{messages:#?}");
    assert!(
        messages[1].contains("dead-letter") && messages[1].contains("topic_creation.enabled = false"),
        "{messages:#?}"
    );
}

#[tokio::test]
async fn registry_down() {
    let s = services();
    let port = closed_port();
    let url = format!("http://127.0.0.1:{port}/apis/ccompat/v7");
    let config = config(&s.pg_url, &s.kafka_bootstrap, &url);
    let report = check::check_schema_registry(&config, &options()).await;
    let problem = only_problem(&report);
    assert!(matches!(problem, CheckError::Registry(EncodeError::RegistryUnavailable { .. })), "{problem:?}");
    let message = problem.to_string();
    assert!(message.contains(&format!("schema registry {url} unavailable")), "{message}");
    assert!(message.to_lowercase().contains("connection refused"), "{message}");
}

/// A registry URL without the API base path: HTTP 404 and a hint about the base URL.
#[tokio::test]
async fn registry_wrong_path() {
    let s = services();
    let base = url::Url::parse(&s.schema_registry_url).unwrap();
    let url = format!(
        "{}://{}:{}/no-such-api",
        base.scheme(),
        base.host_str().unwrap(),
        base.port_or_known_default().unwrap()
    );
    let config = config(&s.pg_url, &s.kafka_bootstrap, &url);
    let report = check::check_schema_registry(&config, &options()).await;
    let problem = only_problem(&report);
    assert!(matches!(problem, CheckError::Registry(EncodeError::Registry { .. })), "{problem:?}");
    assert!(problem.to_string().contains("status 404"), "{problem}");
    assert!(problem.to_string().contains("Confluent-compatible API"), "{problem}");
}

/// The registry as `run` will meet it: an existing subject whose compatibility rule refuses the relay's envelope is
/// named before the first event would fail on it; a subject in read-only mode is named too.
#[tokio::test]
async fn registry_subjects_that_would_refuse_the_relay() {
    let s = services();
    let connector = services::unique_name("checkreg");
    let text = config_toml(&s.pg_url, &s.kafka_bootstrap, &s.schema_registry_url, &connector)
        .replace("table = \"outbox\"", &format!("table = \"outbox\"\nroute_topic_replacement = \"{connector}.all\""));
    let config = Config::from_toml_str(&text, &[]).unwrap();
    let report = check::check_schema_registry(&config, &options()).await;
    assert!(report.problems.is_empty(), "{report:#?}");
    let subject = format!("{connector}.all-value");
    assert!(report.facts.contains(&format!("subject {subject} absent (registered at the first event)")), "{report:#?}");

    // Another writer's schema (a plain string) under the subject, BACKWARD by the registry's default.
    let http = reqwest::Client::new();
    let base = &s.schema_registry_url;
    let registered = http
        .post(format!("{base}/subjects/{subject}/versions"))
        .header("Content-Type", "application/vnd.schemaregistry.v1+json")
        .body(r#"{"schema": "\"string\""}"#)
        .send()
        .await
        .unwrap();
    assert!(registered.status().is_success(), "{:?}", registered.text().await);
    let report = check::check_schema_registry(&config, &options()).await;
    assert!(
        matches!(only_problem(&report), CheckError::SubjectIncompatible { subject: s } if *s == subject),
        "{report:#?}"
    );

    let set_mode = http
        .put(format!("{base}/mode/{subject}"))
        .header("Content-Type", "application/json")
        .body(r#"{"mode": "READONLY"}"#)
        .send()
        .await
        .unwrap();
    assert!(set_mode.status().is_success());
    let report = check::check_schema_registry(&config, &options()).await;
    let problem = only_problem(&report);
    assert!(matches!(problem, CheckError::RegistryReadOnly { mode, .. } if mode == "READONLY"), "{report:#?}");
    assert!(problem.to_string().contains(&format!("subject {subject} is in mode READONLY")), "{problem}");
}

/// Topics and the transactional id on a broker with a real authorizer: a fixed topic the principal may not use is
/// named with the ACL to grant; the principal's own transactional id and checkpoint topic pass. (Kafka tells a client
/// which topics it may describe; whether it may also write is only known when it writes, where `run` names it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_acls_on_a_secured_broker() {
    let s = services();
    let broker = tokio::task::spawn_blocking(kafka_node::KafkaNode::start_secured).await.unwrap();
    let connector = services::unique_name("checkacl");
    let forbidden = format!("{connector}.secret");
    broker.allow_relay_all_but(&["--operation", "All", "--topic", &forbidden]);
    let text = config_toml(&s.pg_url, &broker.client_listener(), &s.schema_registry_url, &connector)
        .replace("table = \"outbox\"", &format!("table = \"outbox\"\nroute_topic_replacement = \"{forbidden}\""))
        .replace(
            "[kafka]\n",
            "[kafka]\nproperties = { \"security.protocol\" = \"SASL_PLAINTEXT\", \"sasl.mechanisms\" = \"PLAIN\", \
             \"sasl.username\" = \"relay\", \"sasl.password\" = \"relay-secret\" }\n",
        );
    let config = Config::from_toml_str(&text, &[]).unwrap();
    let report = check::check_kafka(&config, &options()).await;
    let problem = only_problem(&report);
    assert!(matches!(problem, CheckError::TopicNotAuthorized { topic, .. } if *topic == forbidden), "{report:#?}");
    assert!(problem.to_string().contains("kafka-acls.sh --add"), "{problem}");
    assert!(report.facts.iter().any(|f| f.starts_with("transactions usable")), "{report:#?}");
    drop(broker);
}
