//! `check` against the real services of `tests/infra/up.sh`: ok when everything is set up, and a named,
//! actionable problem for each way a service can be missing or misconfigured.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "common/services.rs"]
mod services;

use std::process::Command;
use std::time::{Duration, Instant};

use outbox_relay::check::{self, CheckError, CheckOptions, CheckReport, Service, ServiceReport};
use outbox_relay::config::Config;
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
[schema_registry]
url = "{registry}"
"#
    )
}

fn config(pg_url: &str, kafka: &str, registry: &str) -> Config {
    let connector = services::unique_name("check");
    Config::from_toml_str(&config_toml(pg_url, kafka, registry, &connector), |_| None).expect("test config is valid")
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
    for fact in ["wal_level=logical", "role outbox may replicate", "outbox table public.outbox ok"] {
        assert!(pg.facts.iter().any(|f| f == fact), "{fact} missing: {pg:#?}");
    }
    assert!(pg.facts[0].starts_with("PostgreSQL 1"), "{pg:#?}");
    let kafka = service(&report, Service::Kafka);
    assert!(kafka.facts.iter().any(|f| f == "transactions usable"), "{kafka:#?}");
    let registry = service(&report, Service::SchemaRegistry);
    assert!(registry.facts.iter().any(|f| f.contains("subject(s)")), "{registry:#?}");
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
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[0].starts_with("postgres  ok  (PostgreSQL 1"), "{stdout}");
    assert!(
        lines[0].contains("wal_level=logical, role outbox may replicate, outbox table public.outbox ok"),
        "{stdout}"
    );
    assert!(lines[1].starts_with("kafka  ok  ("), "{stdout}");
    assert!(lines[2].starts_with("schema-registry  ok  ("), "{stdout}");

    let port = closed_port();
    let (code, stdout, stderr) = run(&format!("127.0.0.1:{port}"));
    assert_eq!(code, Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("postgres  ok  ("), "{stdout}");
    assert!(stdout.contains("schema-registry  ok  ("), "{stdout}");
    assert!(
        stdout.contains(&format!("kafka  FAILED  could not reach the Kafka bootstrap servers 127.0.0.1:{port}")),
        "{stdout}"
    );
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
    assert!(matches!(problem, CheckError::WalLevel { actual } if actual == "replica"), "{problem:?}");
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
    assert!(matches!(problem, CheckError::OutboxTableMissing { index: 0, .. }), "{problem:?}");
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
        Config::from_toml_str(&text, |_| None).unwrap()
    };
    let folded = with_table("public.Outbox");
    assert_eq!(folded.outbox.tables[0].table.name, "outbox", "unquoted names fold to lower case");
    let report = check::check_postgres(&folded, &options()).await;
    assert!(
        matches!(only_problem(&report), CheckError::OutboxTableMissing { table, .. } if table == "public.outbox"),
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
    match problem {
        CheckError::OutboxColumnsMissing { table, missing, .. } => {
            assert_eq!(table, "public.outbox");
            assert_eq!(missing, &["aggregateid", "aggregatetype", "tenant"]);
        }
        other => panic!("expected missing columns, got {other:?}"),
    }
    let message = problem.to_string();
    assert!(
        message.contains("outbox table public.outbox has no column aggregateid, aggregatetype, tenant"),
        "{message}"
    );
}

/// A role without REPLICATION, `create_slot = false` without a slot, `create_publication = false` without a
/// publication: all three reported at once.
#[tokio::test]
async fn role_slot_and_publication_problems() {
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
        .replace("[postgres]\n", "[postgres]\ncreate_slot = false\ncreate_publication = false\n");
    let config = Config::from_toml_str(&text, |_| None).unwrap();
    let report = check::check_postgres(&config, &options()).await;
    db.execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}")).await;

    let messages: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    assert_eq!(report.problems.len(), 3, "{messages:#?}");
    assert!(matches!(&report.problems[0], CheckError::NoReplication { role: r } if *r == role), "{messages:#?}");
    assert!(messages[0].contains(&format!("ALTER ROLE {role} WITH REPLICATION")), "{messages:#?}");
    assert!(matches!(&report.problems[1], CheckError::Slot { .. }), "{messages:#?}");
    assert!(messages[1].contains("create_slot = false") && messages[1].contains("pg_create_logical_replication_slot"));
    assert!(matches!(&report.problems[2], CheckError::PublicationMissing { .. }), "{messages:#?}");
    assert!(messages[2].contains("CREATE PUBLICATION"), "{messages:#?}");
}

#[tokio::test]
async fn kafka_down() {
    let s = services();
    let port = closed_port();
    let config = config(&s.pg_url, &format!("127.0.0.1:{port}"), &s.schema_registry_url);
    let started = Instant::now();
    let report = check::check_kafka(&config.kafka, &[], &CheckOptions { timeout: Duration::from_secs(2) }).await;
    let elapsed = started.elapsed();
    let problem = only_problem(&report);
    assert!(matches!(problem, CheckError::KafkaUnreachable { .. }), "{problem:?}");
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
    let mut config = Config::from_toml_str(&text, |_| None).unwrap();
    assert_eq!(check::fixed_topics(&config), vec![format!("{connector}.all"), format!("{connector}.dead-letter")]);
    let topics = check::fixed_topics(&config);
    // Creation on: nothing to report.
    let report = check::check_kafka(&config.kafka, &topics, &options()).await;
    assert!(report.problems.is_empty(), "{report:#?}");
    config.kafka.topic_creation.enabled = false;
    let report = check::check_kafka(&config.kafka, &topics, &options()).await;
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
    let report = check::check_schema_registry(&config.schema_registry, &options()).await;
    let problem = only_problem(&report);
    assert!(matches!(problem, CheckError::RegistryUnreachable { .. }), "{problem:?}");
    let message = problem.to_string();
    assert!(message.contains(&format!("cannot reach the schema registry at {url}/subjects")), "{message}");
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
    let report = check::check_schema_registry(&config.schema_registry, &options()).await;
    let problem = only_problem(&report);
    assert!(matches!(problem, CheckError::RegistryStatus { status: 404, .. }), "{problem:?}");
    assert!(problem.to_string().contains("base URL"), "{problem}");
}
