//! Configuration: the example file, the README reference, error messages, environment overrides, redaction (through
//! the library and the binary), and `connect_sql`'s TLS modes against the real PostgreSQL of `tests/infra/up.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "common/services.rs"]
mod services;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use outbox_relay::config::env::{ALIASES, var_name};
use outbox_relay::config::{Config, ConfigError, ConnectError, Placement};

fn example_path() -> PathBuf {
    services::repo_root().join("config/outbox-relay.example.toml")
}

/// Every key path of a TOML document: `section.key`, `[]` for array elements; the pass-through maps
/// `kafka.properties` and `kafka.topic_creation.configs` are one key each.
fn key_paths(value: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        // Maps whose keys the user names (librdkafka settings, topic configs, event types): one key each.
        toml::Value::Table(table)
            if !matches!(
                prefix,
                "kafka.properties" | "kafka.topic_creation.configs" | "schema_registry.event_types"
            ) =>
        {
            for (key, value) in table {
                let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                key_paths(value, &path, out);
            }
        }
        toml::Value::Array(items) if items.iter().any(toml::Value::is_table) => {
            for item in items {
                key_paths(item, &format!("{prefix}[]"), out);
            }
        }
        _ => {
            out.insert(prefix.to_owned());
        }
    }
}

fn example_keys() -> BTreeSet<String> {
    let text = std::fs::read_to_string(example_path()).unwrap();
    let mut keys = BTreeSet::new();
    key_paths(&toml::from_str(&text).unwrap(), "", &mut keys);
    keys
}

/// The first column of the table under `## Configuration reference` in README.md, without backticks.
fn readme_keys() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(services::repo_root().join("README.md")).expect("README.md exists");
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Configuration reference") || s.starts_with("## Configuration reference"))
        .expect("README.md has a `## Configuration reference` section");
    section
        .lines()
        .filter(|line| line.starts_with('|'))
        .filter_map(|line| line.split('|').nth(1))
        .map(|cell| cell.trim().trim_matches('`').to_owned())
        .filter(|key| !key.is_empty() && key != "key" && !key.starts_with("---"))
        .collect()
}

fn write(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("relay.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the binary with a clean `OUTBOX_RELAY_*` environment plus `env`.
fn relay(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_outbox-relay"));
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("OUTBOX_RELAY_")) {
        command.env_remove(name);
    }
    command.args(args).envs(env.iter().copied()).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const VALID: &str = r#"
[postgres]
url = "postgres://relay:file-pg-secret@db.example:5432/app?sslmode=disable"
[kafka]
bootstrap_servers = "kafka:9092"
[kafka.properties]
"sasl.username" = "relay"
"sasl.password" = "file-kafka-secret"
"sasl.jaas.config" = "org.apache.kafka.common.security.scram.ScramLoginModule required password=\"file-jaas-secret\";"
[schema_registry]
url = "https://sr:file-sr-secret@registry.example/apis/ccompat/v7"
"#;

#[test]
fn example_file_parses_with_documented_defaults() {
    let config = Config::from_file(&example_path(), &[]).unwrap();
    assert!(config.warnings().is_empty(), "{:?}", config.warnings());
    assert_eq!(config.connector_name, "outbox-relay");
    assert_eq!(config.postgres.slot, "outbox_relay");
    assert_eq!(config.kafka.transactional_id, "outbox-relay-outbox-relay");
    assert_eq!(config.outbox.tables.len(), 1);
    assert_eq!(config.outbox.tables[0].additional_fields[0].placement, Placement::Header);
    // Apart from the example values, the file states the defaults: an empty file with the same connection
    // settings and additional field gives the same configuration.
    let minimal = format!(
        "[postgres]\nurl = \"{}\"\n[[outbox.tables]]\nadditional_fields = [{{ column = \"tenant\", placement = \"header\" }}]\n\
         [kafka]\nbootstrap_servers = \"{}\"\n[schema_registry]\nurl = \"{}\"\n",
        config.postgres.url, config.kafka.bootstrap_servers, config.schema_registry.url
    );
    let defaults = Config::from_toml_str(&minimal, &[]).unwrap();
    assert_eq!(config.to_redacted_toml().unwrap(), defaults.to_redacted_toml().unwrap());
}

/// The example file shows every configuration key (compared with the serialized effective configuration), and the
/// README's reference table lists exactly the example's keys.
#[test]
fn readme_reference_and_example_cover_every_key() {
    let example = example_keys();
    let config = Config::from_file(&example_path(), &[]).unwrap();
    let mut effective = BTreeSet::new();
    key_paths(&toml::Value::try_from(&config).unwrap(), "", &mut effective);
    assert_eq!(example, effective, "config/outbox-relay.example.toml must show every key of Config");

    let readme = readme_keys();
    let undocumented: Vec<_> = example.difference(&readme).collect();
    let stale: Vec<_> = readme.difference(&example).collect();
    assert!(undocumented.is_empty(), "keys missing from README.md's configuration reference: {undocumented:?}");
    assert!(stale.is_empty(), "README.md documents keys the example file lacks: {stale:?}");
    // The environment scheme and every older variable name are documented.
    let readme_text = std::fs::read_to_string(services::repo_root().join("README.md")).unwrap();
    for var in ALIASES.iter().map(|(var, _)| *var).chain(["OUTBOX_RELAY_KAFKA__MAX_BATCH_MS", "_FILE"]) {
        assert!(readme_text.contains(var), "README.md does not mention {var}");
    }
}

/// Every key of the example file can be set from the environment alone, by the generic name, with a value of its
/// type, and `print-config` through the real binary shows it set.
#[test]
fn every_key_is_configurable_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("password");
    std::fs::write(&secret, "from-a-file\n").unwrap();
    let example: toml::Value = toml::from_str(&std::fs::read_to_string(example_path()).unwrap()).unwrap();
    let mut vars: Vec<(String, String)> = vec![
        ("OUTBOX_RELAY_POSTGRES__URL".into(), "postgres://u@envhost/db".into()),
        ("OUTBOX_RELAY_KAFKA__BOOTSTRAP_SERVERS".into(), "envkafka:9092".into()),
        ("OUTBOX_RELAY_SCHEMA_REGISTRY__URL".into(), "http://envregistry:8081".into()),
        ("OUTBOX_RELAY_SCHEMA_REGISTRY__USERNAME".into(), "relay".into()),
        ("OUTBOX_RELAY_SCHEMA_REGISTRY__PASSWORD_FILE".into(), secret.to_str().unwrap().into()),
        ("OUTBOX_RELAY_KAFKA__PROPERTIES__LINGER_MS".into(), "7".into()),
        ("OUTBOX_RELAY_KAFKA__TOPIC_CREATION__CONFIGS__MIN_INSYNC_REPLICAS".into(), "2".into()),
        ("OUTBOX_RELAY_OUTBOX__TABLES__0__ADDITIONAL_FIELDS__0__COLUMN".into(), "tenant".into()),
        ("OUTBOX_RELAY_OUTBOX__TABLES__0__ADDITIONAL_FIELDS__0__PLACEMENT".into(), "header".into()),
        // The flipped auto_register / use_latest_version below belong to value mode registered.
        ("OUTBOX_RELAY_SCHEMA_REGISTRY__VALUE_MODE".into(), "registered".into()),
        ("OUTBOX_RELAY_SCHEMA_REGISTRY__SCHEMAS_DIR".into(), dir.path().to_str().unwrap().into()),
    ];
    // One changed value per scalar key: numbers + 1, booleans flipped, strings and enums of the example kept.
    let mut expected: Vec<(String, toml::Value)> = Vec::new();
    fn walk(v: &toml::Value, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, toml::Value)>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    if matches!(
                        k.as_str(),
                        "properties" | "configs" | "additional_fields" | "url" | "bootstrap_servers" | "value_mode"
                    ) {
                        continue;
                    }
                    path.push(k.clone());
                    walk(v, path, out);
                    path.pop();
                }
            }
            toml::Value::Array(items) if items.iter().any(toml::Value::is_table) => {
                path.push("0".into());
                walk(&items[0], path, out);
                path.pop();
            }
            other => out.push((path.clone(), other.clone())),
        }
    }
    let mut leaves = Vec::new();
    walk(&example, &mut Vec::new(), &mut leaves);
    for (path, value) in leaves {
        if value.as_str() == Some("") {
            continue; // an empty variable sets nothing; the keys with an empty example are set above
        }
        let changed = match &value {
            toml::Value::Integer(i) => toml::Value::Integer(if *i < 0 { 1 } else { i + 1 }),
            toml::Value::Boolean(b) => toml::Value::Boolean(!b),
            other => other.clone(),
        };
        let text = match &changed {
            toml::Value::String(s) => s.clone(),
            toml::Value::Array(items) => {
                items.iter().map(|i| i.as_str().unwrap().to_owned()).collect::<Vec<_>>().join(",")
            }
            other => other.to_string(),
        };
        let segments: Vec<&str> = path.iter().map(String::as_str).collect();
        vars.push((var_name(&segments), text));
        expected.push((path.join("."), changed));
    }
    assert!(expected.len() > 35, "walked only {} keys", expected.len());
    let env: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let output = relay(&["print-config"], &env);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let printed: toml::Value = toml::from_str(&stdout(&output)).unwrap();
    for (key, want) in &expected {
        let mut at = &printed;
        for segment in key.split('.') {
            at = match segment.parse::<usize>() {
                Ok(i) => &at[i],
                Err(_) => &at[segment],
            };
        }
        // Fields that are re-derived or redacted on print are compared loosely.
        if key.ends_with("password") || key.ends_with("username") {
            continue;
        }
        assert_eq!(at, want, "{key} from {}", var_name(&key.split('.').collect::<Vec<_>>()));
    }
    assert_eq!(printed["kafka"]["properties"]["linger.ms"].as_str(), Some("7"));
    assert_eq!(printed["kafka"]["topic_creation"]["configs"]["min.insync.replicas"].as_str(), Some("2"));
    assert_eq!(printed["outbox"]["tables"][0]["additional_fields"][0]["column"].as_str(), Some("tenant"));
    assert_eq!(printed["schema_registry"]["password"].as_str(), Some("***"), "set from the file, printed redacted");
    let config = Config::from_toml_str("", &env).unwrap();
    assert_eq!(config.schema_registry.password, "from-a-file");

    // A typo in a nested key fails, naming the variable; a value is never echoed.
    let output = relay(&["print-config"], &[env[0], env[1], env[2], ("OUTBOX_RELAY_KAFKA__MAX_BATCH_MSS", "9")]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("OUTBOX_RELAY_KAFKA__MAX_BATCH_MSS"), "{}", stderr(&output));
    let output = relay(&["print-config"], &[env[0], env[1], env[2], ("OUTBOX_RELAY_KAFKA__MAX_BATCH_MS", "s3cr3t")]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("kafka.max_batch_ms (from environment variable OUTBOX_RELAY_KAFKA__MAX_BATCH_MS)")
    );
    assert!(!stderr(&output).contains("s3cr3t"), "{}", stderr(&output));
}

#[test]
fn unknown_key_is_named_with_its_section() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), &VALID.replace("[kafka]\n", "[kafka]\nmax_batch_evnets = 5\n"));
    let err = Config::from_file(&path, &[]).unwrap_err();
    assert!(matches!(&err, ConfigError::Parse { section, .. } if section == "section [kafka]"), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("max_batch_evnets"), "{message}");
    assert!(message.contains("max_batch_events"), "the allowed keys are listed: {message}");
    assert!(message.contains(&path.display().to_string()), "{message}");

    let output = relay(&["--config", path.to_str().unwrap(), "print-config"], &[]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let err = stderr(&output);
    assert!(err.contains("max_batch_evnets") && err.contains("section [kafka]"), "{err}");
    assert!(stdout(&output).is_empty());
}

#[test]
fn invalid_value_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        VALID.replace("[kafka]\n", "[kafka]\nmax_batch_events = 0\n").replace("app?", "app?sslmode=verify-sometimes&");
    let path = write(dir.path(), &text);
    let output = relay(&["--config", path.to_str().unwrap(), "run"], &[]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let err = stderr(&output);
    assert!(err.contains("kafka.max_batch_events: must be at least 1"), "{err}");
    assert!(err.contains("postgres.url: invalid connection URL: sslmode=\"verify-sometimes\""), "{err}");
    assert!(!err.contains("file-pg-secret"), "{err}");
}

#[test]
fn missing_file_exits_2() {
    let output = relay(&["--config", "/nonexistent/relay.toml", "print-config"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("cannot read configuration file /nonexistent/relay.toml"), "{}", stderr(&output));
}

#[test]
fn environment_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), VALID);
    let env = [
        ("OUTBOX_RELAY_POSTGRES_URL", "postgres://envuser:env-pg-secret@envhost:6543/envdb"),
        ("OUTBOX_RELAY_CONNECTOR_NAME", "env-connector"),
        ("OUTBOX_RELAY_KAFKA_BOOTSTRAP_SERVERS", "envkafka:9092"),
        ("OUTBOX_RELAY_METRICS_LISTEN", "0.0.0.0:9999"),
    ];
    let config = Config::from_file(&path, &env).unwrap();
    assert_eq!(config.postgres.url, env[0].1);
    assert_eq!(config.connector_name, "env-connector");
    assert_eq!(config.postgres.slot, "env_connector", "derived defaults follow the overridden name");
    assert_eq!(config.kafka.bootstrap_servers, "envkafka:9092");

    // Through the binary and the real process environment, with OUTBOX_RELAY_CONFIG naming the file.
    let mut with_file = env.to_vec();
    let path_str = path.to_str().unwrap();
    with_file.push(("OUTBOX_RELAY_CONFIG", path_str));
    let output = relay(&["print-config"], &with_file);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let printed: toml::Value = toml::from_str(&stdout(&output)).unwrap();
    assert_eq!(printed["postgres"]["url"].as_str(), Some("postgres://envuser:***@envhost:6543/envdb"));
    assert_eq!(printed["connector_name"].as_str(), Some("env-connector"));
    assert_eq!(printed["metrics"]["listen"].as_str(), Some("0.0.0.0:9999"));
    assert_eq!(printed["kafka"]["transactional_id"].as_str(), Some("outbox-relay-env-connector"));
}

#[test]
fn secrets_are_redacted_in_debug_and_print_config() {
    let config = Config::from_toml_str(VALID, &[]).unwrap();
    let debug = format!("{config:?}");
    assert!(!debug.contains("secret\""), "{debug}");
    for secret in ["file-pg-secret", "file-kafka-secret", "file-jaas-secret", "file-sr-secret"] {
        assert!(!debug.contains(secret), "{secret} in Debug output: {debug}");
    }
    assert!(debug.contains("sasl.username") && debug.contains("relay"), "non-secrets stay visible: {debug}");

    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), VALID);
    let env = [
        ("OUTBOX_RELAY_SCHEMA_REGISTRY_URL", "https://registry.example"),
        ("OUTBOX_RELAY_SCHEMA_REGISTRY_USERNAME", "u"),
        ("OUTBOX_RELAY_SCHEMA_REGISTRY_PASSWORD", "env-sr-secret"),
    ];
    let output = relay(&["--config", path.to_str().unwrap(), "print-config"], &env);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let printed = stdout(&output);
    for secret in ["file-pg-secret", "file-kafka-secret", "file-jaas-secret", "env-sr-secret"] {
        assert!(!printed.contains(secret), "{secret} in print-config output:\n{printed}");
    }
    assert!(printed.contains("postgres://relay:***@db.example:5432/app"), "{printed}");
    assert!(printed.contains("\"sasl.password\" = \"***\""), "{printed}");
    assert!(printed.contains("password = \"***\""), "{printed}");
    // `run` logs the configuration: no secret in its log lines either (it then fails to reach a closed port).
    let closed = VALID.replace("db.example:5432", &format!("127.0.0.1:{}", services::closed_port()));
    let path = write(dir.path(), &closed);
    let output = relay(&["--config", path.to_str().unwrap(), "--log-format", "json", "run"], &[("RUST_LOG", "info")]);
    let log = stderr(&output);
    assert!(log.contains("\"message\":\"starting\""), "{log}");
    for secret in ["file-pg-secret", "file-kafka-secret", "file-jaas-secret", "file-sr-secret"] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
    assert_eq!(output.status.code(), Some(1), "an unreachable PostgreSQL is a runtime failure: {log}");
}

#[test]
fn help_explains_every_subcommand_and_flag() {
    let output = relay(&["--help"], &[]);
    assert_eq!(output.status.code(), Some(0));
    let help = stdout(&output);
    for word in [
        "run",
        "check",
        "print-config",
        "tail",
        "health",
        "--config",
        "--log-level",
        "--log-format",
        "OUTBOX_RELAY_CONFIG",
        "Exit codes",
    ] {
        assert!(help.contains(word), "{word} missing from --help:\n{help}");
    }
    let run_help = stdout(&relay(&["run", "--help"], &[]));
    assert!(run_help.contains("--accept-gap") && run_help.contains("--start-lsn"), "{run_help}");
    let usage = relay(&["frobnicate"], &[]);
    assert_eq!(usage.status.code(), Some(2), "usage errors exit 2");
}

async fn sql_version(pg: &outbox_relay::config::PostgresConfig) -> Result<String, ConnectError> {
    let client = pg.connect_sql().await?;
    let row = client.query_one("SELECT version()", &[]).await.unwrap();
    Ok(row.get(0))
}

/// `connect_sql` against the real server in every `sslmode`, including the two that tokio-postgres lacks:
/// verify-ca accepts a certificate whose name does not match the host, verify-full refuses it; both refuse a
/// certificate signed by another CA.
#[tokio::test]
async fn connect_sql_honours_every_sslmode() {
    let s = services::services();
    let cert = s.pg_ssl_cert.clone().unwrap_or_else(|| {
        panic!("PG_SSL_CERT is not set or missing: the test PostgreSQL must run with TLS (tests/infra/up.sh)")
    });
    let base = url::Url::parse(&s.pg_url).unwrap();
    let (user, password, port) =
        (base.username().to_owned(), base.password().unwrap_or("").to_owned(), base.port().unwrap());
    let database = base.path().trim_start_matches('/').to_owned();
    let cert = cert.display().to_string();
    // A CA that did not sign the server certificate: a fresh self-signed one.
    let dir = tempfile::tempdir().unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    let generated = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=other-ca", "-keyout"])
        .arg(dir.path().join("other-ca.key"))
        .arg("-out")
        .arg(&other_ca)
        .output()
        .unwrap();
    assert!(generated.status.success(), "{}", String::from_utf8_lossy(&generated.stderr));
    let other_ca = other_ca.display().to_string();

    let connect = |host: &str, query: &str| {
        let text = format!(
            "[postgres]\nurl = \"postgres://{user}:{password}@{host}:{port}/{database}?{query}\"\n\
             [kafka]\nbootstrap_servers = \"k:9092\"\n[schema_registry]\nurl = \"http://r\"\n"
        );
        let config = Config::from_toml_str(&text, &[]).unwrap();
        async move { sql_version(&config.postgres).await }
    };
    // The certificate names localhost and 127.0.0.1; `wrong.example` resolves nowhere, so hostaddr supplies the IP
    // and the name is only used for verification.
    for (host, query) in [
        ("127.0.0.1", "sslmode=disable".to_owned()),
        ("127.0.0.1", "sslmode=prefer".to_owned()),
        ("127.0.0.1", "sslmode=require".to_owned()),
        ("127.0.0.1", format!("sslmode=verify-ca&sslrootcert={cert}")),
        ("127.0.0.1", format!("sslmode=verify-full&sslrootcert={cert}")),
        ("localhost", format!("sslmode=verify-full&sslrootcert={cert}")),
        ("wrong.example", format!("hostaddr=127.0.0.1&sslmode=verify-ca&sslrootcert={cert}")),
    ] {
        let version = connect(host, &query).await.unwrap_or_else(|e| panic!("{host} {query}: {e:?}"));
        assert!(version.starts_with("PostgreSQL"), "{version}");
    }
    for (host, query, expected) in [
        ("wrong.example", format!("hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={cert}"), "hostname mismatch"),
        ("127.0.0.1", format!("sslmode=verify-ca&sslrootcert={other_ca}"), "certificate verify failed"),
        ("127.0.0.1", format!("sslmode=require&sslrootcert={other_ca}"), "certificate verify failed"),
    ] {
        let err = connect(host, &query).await.expect_err(&query);
        let chain = error_chain(&err);
        assert!(matches!(err, ConnectError::Connect { .. }), "{chain}");
        assert!(chain.contains(expected), "{query}: expected `{expected}` in `{chain}`");
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A refused login on the SQL connection is definite, as on the replication connection: after a first good start
/// the relay stops and says so instead of retrying a wrong password forever; an unreachable server stays transient.
#[tokio::test]
async fn a_refused_sql_login_is_definite_and_an_unreachable_server_transient() {
    let s = services::services();
    let base = url::Url::parse(&s.pg_url).unwrap();
    let load = |url: String| {
        let text = format!(
            "[postgres]\nurl = \"{url}\"\n[kafka]\nbootstrap_servers = \"k:9092\"\n[schema_registry]\nurl = \"http://r\"\n"
        );
        Config::from_toml_str(&text, &[]).unwrap()
    };
    let mut wrong = base.clone();
    wrong.set_password(Some("not-the-password")).unwrap();
    let err = load(wrong.to_string()).postgres.connect_sql().await.expect_err("wrong password");
    assert!(!err.is_transient(), "a refused login is definite: {}", error_chain(&err));
    assert!(error_chain(&err).contains("password authentication failed"), "{}", error_chain(&err));
    let down = format!("postgres://u:p@127.0.0.1:{}/db?sslmode=disable&connect_timeout=2", services::closed_port());
    let err = load(down).postgres.connect_sql().await.expect_err("nothing listens");
    assert!(err.is_transient(), "{}", error_chain(&err));
}

/// The alert rules pass their unit tests (`config/prometheus-alerts.test.yml`: a vanished target fires, an idle
/// database without heartbeats does not, a backlog that grows while replication is down does, an unreadable slot
/// does), checked by Prometheus's own `promtool` (scripts/prerequisites.sh --tests installs it).
#[test]
fn alert_rules_pass_their_promtool_unit_tests() {
    let config = services::repo_root().join("config");
    let promtool = |args: &[&str]| {
        Command::new("promtool").args(args).current_dir(&config).output().unwrap_or_else(|e| {
            panic!("promtool not runnable ({e}): install Debian's prometheus package (bash scripts/prerequisites.sh --tests)")
        })
    };
    let check = promtool(&["check", "rules", "prometheus-alerts.yml"]);
    assert!(check.status.success(), "{}{}", stdout(&check), stderr(&check));
    let test = promtool(&["test", "rules", "prometheus-alerts.test.yml"]);
    assert!(test.status.success(), "{}{}", stdout(&test), stderr(&test));
    assert!(stdout(&test).contains("SUCCESS"), "{}", stdout(&test));
}

/// The Kubernetes manifests validate against the Kubernetes schemas (`kubernetes-validate --strict`, installed by
/// scripts/prerequisites.sh --tests) and fit the relay: the configuration they give (ConfigMap + env, secrets as
/// files) loads, the probes ask the endpoints the relay serves on the port it listens on, and the grace period
/// covers the 30 s drain.
#[test]
fn kubernetes_manifests_validate_and_fit_the_relay() {
    let manifest = services::repo_root().join("deploy/kubernetes/outbox-relay.yaml");
    let manifest = manifest.to_str().unwrap();
    let validate = Command::new("python3").args(["-m", "kubernetes_validate", "--strict", manifest]).output().unwrap();
    assert!(
        validate.status.success(),
        "{}{}\n(kubernetes-validate missing? bash scripts/prerequisites.sh --tests installs it)",
        stdout(&validate),
        stderr(&validate)
    );
    assert_eq!(stdout(&validate).matches("passed").count(), 4, "{}", stdout(&validate));

    // The parts of the manifests that must agree with the relay, as JSON (PyYAML comes with kubernetes-validate).
    let script = r#"
import json, sys, yaml
docs = {d["kind"]: d for d in yaml.safe_load_all(open(sys.argv[1]))}
pod = docs["Deployment"]["spec"]["template"]["spec"]
c = pod["containers"][0]
print(json.dumps({
    "env": {**docs["ConfigMap"]["data"], **{e["name"]: e["value"] for e in c["env"]}},
    "grace": pod["terminationGracePeriodSeconds"],
    "liveness": c["livenessProbe"]["httpGet"]["path"],
    "readiness": c["readinessProbe"]["httpGet"]["path"],
    "port": c["ports"][0]["containerPort"],
    "secret_mount": [m["mountPath"] for m in c["volumeMounts"] if m["name"] == "secrets"][0],
    "replicas": docs["Deployment"]["spec"]["replicas"],
    "pdb": docs["PodDisruptionBudget"]["spec"],
}))
"#;
    let parsed = Command::new("python3").args(["-c", script, manifest]).output().unwrap();
    assert!(parsed.status.success(), "{}", stderr(&parsed));
    let m: serde_json::Value = serde_json::from_str(&stdout(&parsed)).unwrap();
    assert!(m["grace"].as_u64().unwrap() > 30, "the grace period must cover the 30 s drain");
    assert_eq!(m["liveness"], "/health");
    assert_eq!(m["readiness"], "/ready");
    assert_eq!(m["replicas"], 2, "a leader and a standby");
    assert_eq!(m["pdb"]["maxUnavailable"], 1);

    // The environment the pod gets, with its secret files, is a configuration the relay accepts.
    let dir = tempfile::tempdir().unwrap();
    let mount = m["secret_mount"].as_str().unwrap();
    let mut env: Vec<(String, String)> = Vec::new();
    for (name, value) in m["env"].as_object().unwrap() {
        let mut value = value.as_str().unwrap().to_owned();
        if name.ends_with("_FILE") {
            let file = dir.path().join(value.trim_start_matches(mount).trim_start_matches('/'));
            let content = if name.contains("POSTGRES") { "postgres://relay:pw@db:5432/orders" } else { "secret" };
            std::fs::write(&file, content).unwrap();
            value = file.to_str().unwrap().to_owned();
        } else {
            assert!(!value.starts_with(mount), "{name}: only _FILE variables point at the secrets");
        }
        env.push((name.clone(), value));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let output = relay(&["print-config"], &env);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(!stderr(&output).contains("names no configuration key"), "{}", stderr(&output));
    let printed: toml::Value = toml::from_str(&stdout(&output)).unwrap();
    assert_eq!(printed["connector_name"].as_str(), Some("orders"));
    assert_eq!(printed["kafka"]["properties"]["sasl.password"].as_str(), Some("***"), "read from the file, redacted");
    assert_eq!(printed["metrics"]["listen"].as_str(), Some(format!("0.0.0.0:{}", m["port"]).as_str()));
    assert!(printed["leader"]["enabled"].as_bool().unwrap(), "the standby needs the lease");
}

/// `docker/compose.yaml` cannot be run here (no image registry is reachable, so `postgres`, `apache/kafka` and
/// `apicurio/apicurio-registry` cannot be pulled); what can be shown without the images is shown: its image tags
/// come from `tests/infra/versions.env` (the versions the tests run), the relay starts only once the other three
/// report healthy, restarts, gets more than the 30 s drain to stop, and keeps its spill directory on a volume; and the
/// table its init script creates, with the relay's environment from the file (host names pointed at the local
/// services), passes `check`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_file_fits_the_relay_and_the_tested_versions() {
    let root = services::repo_root();
    let compose = root.join("docker/compose.yaml");
    let script = r#"
import json, sys, yaml
print(json.dumps(yaml.safe_load(open(sys.argv[1]))))
"#;
    let parsed = Command::new("python3").args(["-c", script, compose.to_str().unwrap()]).output().unwrap();
    assert!(parsed.status.success(), "{}\n(PyYAML comes with bash scripts/prerequisites.sh --tests)", stderr(&parsed));
    let c: serde_json::Value = serde_json::from_str(&stdout(&parsed)).unwrap();
    let s = &c["services"];

    // Image tags: each a variable of versions.env, required (no silent "latest").
    let versions = std::fs::read_to_string(root.join("tests/infra/versions.env")).unwrap();
    let defined: BTreeSet<&str> =
        versions.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split_once('=')).map(|(k, _)| k).collect();
    for (service, variable) in
        [("postgres", "PG_VERSION"), ("kafka", "KAFKA_VERSION"), ("registry", "APICURIO_VERSION")]
    {
        let image = s[service]["image"].as_str().unwrap();
        assert!(image.contains(&format!("${{{variable}:?")), "{service}: {image} must require {variable}");
        assert!(defined.contains(variable), "versions.env defines {variable}");
        assert!(s[service]["healthcheck"]["test"].is_array(), "{service} reports its health");
    }
    assert!(root.join("docker/.env").canonicalize().unwrap().ends_with("tests/infra/versions.env"));

    let relay_svc = &s["outbox-relay"];
    for dependency in ["postgres", "kafka", "registry"] {
        assert_eq!(relay_svc["depends_on"][dependency]["condition"], "service_healthy", "{dependency}");
    }
    assert_eq!(relay_svc["restart"], "unless-stopped");
    let grace = relay_svc["stop_grace_period"].as_str().unwrap();
    assert!(grace.trim_end_matches('s').parse::<u64>().unwrap() > 30, "stop_grace_period {grace} covers the drain");
    let volumes: Vec<&str> = relay_svc["volumes"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(volumes.iter().any(|v| v.ends_with(":/var/lib/outbox-relay")), "spill directory on a volume: {volumes:?}");

    // The init script is the table file the tests use, and the relay's environment accepts it.
    let init = s["postgres"]["volumes"].as_array().unwrap()[0].as_str().unwrap();
    let (source, target) = init.split_once(':').unwrap();
    assert!(target.starts_with("/docker-entrypoint-initdb.d/"), "{init}");
    let table_sql = std::fs::read_to_string(root.join("docker").join(source)).unwrap();
    let svc = services::services();
    let db = services::TestDb::create(&svc, "compose").await;
    db.execute(&table_sql).await;
    let connector = format!("compose_{}", std::process::id());
    let mut env: Vec<(String, String)> = Vec::new();
    for (name, value) in relay_svc["environment"].as_object().unwrap() {
        let value = value.as_str().unwrap().to_owned();
        let value = match name.as_str() {
            // Same parameters, the local server and test database.
            "OUTBOX_RELAY_POSTGRES__URL" => {
                assert!(value.ends_with("?sslmode=disable"), "{value}");
                db.url.clone()
            }
            "OUTBOX_RELAY_KAFKA__BOOTSTRAP_SERVERS" => svc.kafka_bootstrap.clone(),
            "OUTBOX_RELAY_SCHEMA_REGISTRY__URL" => svc.schema_registry_url.clone(),
            _ => value,
        };
        env.push((name.clone(), value));
    }
    env.push(("OUTBOX_RELAY_CONNECTOR_NAME".into(), connector.clone()));
    // Its own checkpoint topic on the shared broker.
    env.push(("OUTBOX_RELAY_KAFKA__CHECKPOINT_TOPIC".into(), format!("{connector}.checkpoints")));
    env.push(("OUTBOX_RELAY_METRICS__LISTEN".into(), String::new()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let check = relay(&["check"], &env);
    assert!(check.status.success(), "check with the compose environment:\n{}{}", stdout(&check), stderr(&check));
    assert!(!stderr(&check).contains("names no configuration key"), "{}", stderr(&check));
}
