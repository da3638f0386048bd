//! Configuration: a TOML file, environment overrides and connection strings.
//!
//! Invariant: a [`Config`] returned by [`Config::load`], [`Config::from_file`] or [`Config::from_toml_str`] is
//! complete and valid — every derived default (slot, publication, transactional id, spill directory, table schema,
//! field aliases) is filled in and every value was checked — so later modules rely on it without checking again.
//! No secret it holds (passwords in connection strings, registry credentials, secret librdkafka properties) appears
//! in its `Debug` output, in [`Config::redacted`] or in any error this module returns.
//!
//! Loading order: defaults, then the TOML file, then the environment variables ([`env`]: `OUTBOX_RELAY_` + the key's
//! path, e.g. `OUTBOX_RELAY_KAFKA__MAX_BATCH_MS`; a variable that is set and not empty wins over the file), then derived defaults, then validation. Validation reports every
//! problem it finds at once, each naming its key (`kafka.max_batch_events`) and what to change.
//!
//! Each component's settings type lives next to the component and validates itself ([`crate::pg::config`],
//! [`crate::outbox::config`], [`crate::kafka::config`], [`crate::avro::config`], [`crate::metrics`],
//! [`crate::dead_letter`]); this module holds the file's top level, loading, environment overrides, the rules that
//! span sections, and redaction (`redact`). The settings types are re-exported here: together they are the schema
//! of the file.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod env;
pub mod fields;
pub mod redact;

pub use crate::avro::config::{KeyFormat, SchemaRegistryConfig, ValueMode};
pub use crate::dead_letter::{ErrorMode, ErrorsConfig};
pub use crate::kafka::config::{KafkaConfig, TopicCreationConfig};
pub use crate::kafka::lag::ConsumerLagConfig;
pub use crate::leader::LeaderConfig;
pub use crate::metrics::MetricsConfig;
pub use crate::outbox::config::{
    AdditionalField, OutboxConfig, OutboxMessagesConfig, OutboxTableConfig, Placement, ROUTED_BY_VALUE,
    UnmappedRelations,
};
pub use crate::pg::config::{ConnectError, PostgresConfig, derive_pg_identifier};
pub(crate) use redact::scrub_secrets;
pub use redact::{REDACTED, is_secret_property, redact_secret, redact_url};

/// Environment variable naming the configuration file (read by the CLI's `--config`).
pub const CONFIG_PATH_ENV: &str = "OUTBOX_RELAY_CONFIG";

/// Longest accepted [`Config::connector_name`].
pub const MAX_CONNECTOR_NAME_LEN: usize = 200;

fn default_connector_name() -> String {
    "outbox-relay".to_owned()
}

// ---------------------------------------------------------------------------------------------------------------
// Configuration structs
// ---------------------------------------------------------------------------------------------------------------

/// The whole configuration of one relay (one connector).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name of this connector: `[a-zA-Z0-9._-]+`, at most 200 characters. Derives the default slot, publication and
    /// Kafka `transactional.id`, and keys the checkpoint record, so it must stay the same across restarts of the
    /// same relay and be unique among relays sharing a Kafka cluster.
    #[serde(default = "default_connector_name")]
    pub connector_name: String,
    /// PostgreSQL source.
    #[serde(default)]
    pub postgres: PostgresConfig,
    /// The outbox table(s) and the tableless (logical message) outbox.
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// Kafka sink.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// Confluent-compatible schema registry.
    #[serde(default)]
    pub schema_registry: SchemaRegistryConfig,
    /// What happens to an event that cannot be mapped, encoded or produced.
    #[serde(default)]
    pub errors: ErrorsConfig,
    /// Prometheus metrics and health endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Leadership among replicas with the same connector name (hot standby).
    #[serde(default)]
    pub leader: LeaderConfig,
    /// Lag of the consumer groups reading the relay's topics.
    #[serde(default)]
    pub consumer_lag: ConsumerLagConfig,
    /// Hand-over from a Debezium connector on the first start.
    #[serde(default)]
    pub debezium: crate::debezium::DebeziumConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            connector_name: default_connector_name(),
            postgres: PostgresConfig::default(),
            outbox: OutboxConfig::default(),
            kafka: KafkaConfig::default(),
            schema_registry: SchemaRegistryConfig::default(),
            errors: ErrorsConfig::default(),
            metrics: MetricsConfig::default(),
            leader: LeaderConfig::default(),
            consumer_lag: ConsumerLagConfig::default(),
            debezium: crate::debezium::DebeziumConfig::default(),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------------------------

/// Why a configuration did not load.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or has an unknown key or a value of the wrong type.
    #[error("{origin}: {section}: {detail}")]
    Parse {
        /// The file (or `<string>`).
        origin: String,
        /// The enclosing section, e.g. `[postgres]`, or `top level`.
        section: String,
        /// toml's message: position, the offending line and, for unknown keys, the key and the keys allowed.
        detail: String,
    },
    /// Values are missing or out of range; every problem found is listed.
    #[error("invalid configuration ({origin}):{}", ProblemList(problems))]
    Invalid {
        /// The file (or `<string>`).
        origin: String,
        /// The problems, each naming its key.
        problems: Vec<Problem>,
    },
}

/// One invalid value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The key, `section.key` (`outbox.tables[0].table`), with the environment variable when it supplied the value.
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for problem in self.0 {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------------------------

impl Config {
    /// Loads the configuration file at `path` (or only defaults when `None`) and applies the process environment
    /// (the variables [`env`] describes). Variables with the prefix that name no key come back as warnings.
    pub fn load(path: Option<&Path>) -> Result<(Config, Vec<String>), ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, _)| k.starts_with(env::PREFIX))
            .collect();
        let env: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (text, origin) = match path {
            Some(path) => (
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?,
                path.display().to_string(),
            ),
            None => (String::new(), "defaults and environment".to_owned()),
        };
        Config::parse(&text, &origin, &env)
    }

    /// Loads the configuration file at `path`, with the environment variables `env` (name, value).
    pub fn from_file(path: &Path, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::parse(&text, &path.display().to_string(), env).map(|(config, _)| config)
    }

    /// Parses TOML text, with the environment variables `env` (name, value; `&[]` for none).
    pub fn from_toml_str(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::parse(text, "<string>", env).map(|(config, _)| config)
    }

    fn parse(text: &str, origin: &str, env: &[(&str, &str)]) -> Result<(Config, Vec<String>), ConfigError> {
        // The file alone first: its errors then point at its lines.
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            section: enclosing_section(text, e.span()),
            detail: scrub_secrets(e.to_string().trim_end()),
        })?;
        let mut applied = env::Applied::default();
        if env.iter().any(|(name, value)| name.starts_with(env::PREFIX) && !value.is_empty()) {
            let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
                origin: origin.to_owned(),
                section: enclosing_section(text, e.span()),
                detail: scrub_secrets(e.to_string().trim_end()),
            })?;
            applied = env::apply(&mut table, env)
                .map_err(|problems| ConfigError::Invalid { origin: origin.to_owned(), problems })?;
            config = Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Parse {
                origin: format!(
                    "{origin} and the environment ({})",
                    applied.vars.values().cloned().collect::<Vec<_>>().join(", ")
                ),
                section: "environment".to_owned(),
                detail: scrub_secrets(e.to_string().trim_end()),
            })?;
        }
        let warnings = applied
            .ignored
            .iter()
            .map(|var| format!("environment variable {var} names no configuration key and is ignored"))
            .collect();
        config.fill_derived_defaults();
        let mut problems = Vec::new();
        config.validate(&mut problems);
        if problems.is_empty() {
            return Ok((config, warnings));
        }
        for problem in &mut problems {
            if let Some(var) = applied.vars.get(problem.key.as_str()) {
                problem.key = format!("{} (from environment variable {var})", problem.key);
            }
        }
        Err(ConfigError::Invalid { origin: origin.to_owned(), problems })
    }

    fn fill_derived_defaults(&mut self) {
        let derived = derive_pg_identifier(&self.connector_name);
        if self.postgres.slot.is_empty() {
            self.postgres.slot.clone_from(&derived);
        }
        if self.postgres.publication.is_empty() {
            self.postgres.publication = derived;
        }
        if self.postgres.spill_dir.as_os_str().is_empty() {
            self.postgres.spill_dir = std::env::temp_dir();
        }
        if self.kafka.transactional_id.is_empty() {
            self.kafka.transactional_id = format!("outbox-relay-{}", self.connector_name);
        }
        if self.errors.dead_letter_topic.is_empty() {
            self.errors.dead_letter_topic = format!("{}.dead-letter", self.connector_name);
        }
        for table in &mut self.outbox.tables {
            for field in &mut table.additional_fields {
                if field.alias.is_empty() {
                    field.alias.clone_from(&field.column);
                }
            }
        }
    }

    fn validate(&mut self, problems: &mut Vec<Problem>) {
        let mut report = |key: &str, message: String| problems.push(Problem { key: key.to_owned(), message });
        validate_connector_name(&self.connector_name, &mut report);
        self.postgres.validate(&mut report);
        self.outbox.validate(&mut report);
        self.kafka.validate(&mut report);
        self.schema_registry.validate(&mut report);
        self.errors.validate(&self.kafka, &mut report);
        self.metrics.validate(&mut report);
        self.leader.validate(&mut report);
        self.consumer_lag.validate(&mut report);
        self.debezium.validate(&mut report);
        // Rules that span sections.
        let messages = &self.outbox.messages;
        if messages.enabled && messages.prefix == self.postgres.heartbeat_prefix {
            report(
                "outbox.messages.prefix",
                format!("`{}` is also postgres.heartbeat_prefix; choose a different prefix", messages.prefix),
            );
        }
    }

    /// Non-fatal observations worth a warning log line: settings that are legal but probably not intended.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for (i, table) in self.outbox.tables.iter().enumerate() {
            if !table.route_topic_replacement.contains(ROUTED_BY_VALUE) {
                warnings.push(format!(
                    "outbox.tables[{i}].route_topic_replacement `{}` has no {ROUTED_BY_VALUE}: every event of {} goes to \
                     that one topic",
                    table.route_topic_replacement, table.table
                ));
            }
        }
        if self.postgres.protocol_version == 1 && self.postgres.streaming {
            warnings.push(
                "postgres.streaming is ignored with protocol_version = 1 (streaming needs 2 or higher): large \
                 transactions are decoded only after they commit"
                    .to_owned(),
            );
        }
        if self.postgres.status_interval_ms >= 60_000 {
            warnings.push(format!(
                "postgres.status_interval_ms = {} is not below PostgreSQL's default wal_sender_timeout (60 s); the \
                 server may drop the connection",
                self.postgres.status_interval_ms
            ));
        }
        let sr = &self.schema_registry;
        if sr.urls().iter().any(|u| u.starts_with("http://")) && (sr.basic_auth().is_some() || !sr.token.is_empty()) {
            warnings.push("schema registry credentials are sent over plain http".to_owned());
        }
        warnings
    }

    /// A copy with every secret replaced by [`REDACTED`], for display (`print-config`).
    pub fn redacted(&self) -> Config {
        let mut copy = self.clone();
        copy.postgres.url = redact_url(&self.postgres.url);
        copy.kafka.properties = self.kafka.redacted_properties();
        copy.schema_registry.url = crate::avro::config::redact_urls(&self.schema_registry.url);
        copy.schema_registry.password = redact_secret(&self.schema_registry.password);
        copy.schema_registry.token = redact_secret(&self.schema_registry.token);
        copy
    }

    /// The redacted configuration as TOML.
    pub fn to_redacted_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string_pretty(&self.redacted())
    }
}

/// The `[section]` or `[[section]]` header above byte `span.start` of `text`, for error messages.
fn enclosing_section(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let end = span.map_or(0, |s| s.start).min(text.len());
    let before = text.get(..end).unwrap_or("");
    before
        .lines()
        .rev()
        .map(str::trim)
        .find(|line| line.starts_with('['))
        .map(|line| {
            // Keep the header, drop a trailing comment.
            let close = if line.starts_with("[[") { "]]" } else { "]" };
            match line.find(close) {
                Some(i) => format!("section {}", &line[..i + close.len()]),
                None => format!("section {line}"),
            }
        })
        .unwrap_or_else(|| "top level".to_owned())
}

fn validate_connector_name(name: &str, report: &mut impl FnMut(&str, String)) {
    if name.is_empty() {
        report("connector_name", "must not be empty".to_owned());
    } else if name.len() > MAX_CONNECTOR_NAME_LEN {
        report("connector_name", format!("is {} characters long; at most {MAX_CONNECTOR_NAME_LEN}", name.len()));
    } else if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        report("connector_name", format!("`{name}` contains {c:?}; use only letters, digits, '.', '_' and '-'"));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

    use std::time::Duration;

    use super::*;

    const MINIMAL: &str = r#"
        [postgres]
        url = "postgres://relay:pg-secret@db.example:5432/app?sslmode=disable"
        [kafka]
        bootstrap_servers = "k1:9092,k2:9092"
        [schema_registry]
        url = "http://registry:8081"
    "#;

    fn minimal() -> Config {
        Config::from_toml_str(MINIMAL, &[]).unwrap()
    }

    fn problems(text: &str) -> Vec<Problem> {
        match Config::from_toml_str(text, &[]) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected an invalid configuration, got {other:?}"),
        }
    }

    fn problem_keys(text: &str) -> Vec<String> {
        problems(text).into_iter().map(|p| p.key).collect()
    }

    #[test]
    fn minimal_config_gets_every_default() {
        let c = minimal();
        assert_eq!(c.connector_name, "outbox-relay");
        assert_eq!(c.postgres.slot, "outbox_relay");
        assert_eq!(c.postgres.publication, "outbox_relay");
        assert_eq!(c.kafka.transactional_id, "outbox-relay-outbox-relay");
        assert_eq!(c.postgres.spill_dir, std::env::temp_dir());
        assert_eq!(c.outbox.tables, vec![OutboxTableConfig::default()]);
        assert_eq!(c.outbox.tables[0].table.schema, "public");
        assert_eq!(c.outbox.tables[0].table.name, "outbox");
        assert_eq!(c.outbox.tables[0].topic_for("Order"), "outbox.event.Order");
        assert_eq!(c.metrics.listen_addr(), Some("127.0.0.1:9187".parse().unwrap()));
        assert_eq!(c.postgres.heartbeat_interval(), Some(Duration::from_secs(10)));
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    }

    #[test]
    fn derived_names_follow_the_connector_name() {
        let c = Config::from_toml_str(&format!("connector_name = \"Billing.EU-1\"\n{MINIMAL}"), &[]).unwrap();
        assert_eq!(c.postgres.slot, "billing_eu_1");
        assert_eq!(c.postgres.publication, "billing_eu_1");
        assert_eq!(c.kafka.transactional_id, "outbox-relay-Billing.EU-1");
        assert_eq!(derive_pg_identifier(&"x".repeat(200)).len(), 63);
    }

    #[test]
    fn unknown_key_names_key_and_section() {
        let text = format!("{MINIMAL}\n[kafka.properties]\n\"a\" = \"b\"\n[metrics]\nlisten = \"\"\nlistn = 1\n");
        let err = Config::from_toml_str(&text, &[]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("listn"), "{msg}");
        assert!(msg.contains("section [metrics]"), "{msg}");
        let top = Config::from_toml_str("bogus = 1\n[postgres]\n", &[]).unwrap_err().to_string();
        assert!(top.contains("top level") && top.contains("bogus"), "{top}");
    }

    #[test]
    fn env_overrides_file_and_is_named_in_errors() {
        let env = [
            ("OUTBOX_RELAY_POSTGRES_URL", "postgres://u@other:6432/db"),
            ("OUTBOX_RELAY_CONNECTOR_NAME", "from-env"),
            ("OUTBOX_RELAY_METRICS__LISTEN", ""),
        ];
        let c = Config::from_toml_str(MINIMAL, &env).unwrap();
        assert_eq!(c.postgres.url, "postgres://u@other:6432/db");
        assert_eq!(c.connector_name, "from-env");
        assert_eq!(c.postgres.slot, "from_env");
        assert_eq!(c.metrics.listen, "127.0.0.1:9187", "an empty variable does not override");

        let bad = [("OUTBOX_RELAY_KAFKA__BOOTSTRAP_SERVERS", "nope")];
        let Err(ConfigError::Invalid { problems, .. }) = Config::from_toml_str(MINIMAL, &bad) else {
            panic!("expected invalid")
        };
        assert_eq!(
            problems[0].key,
            "kafka.bootstrap_servers (from environment variable OUTBOX_RELAY_KAFKA__BOOTSTRAP_SERVERS)"
        );
    }

    #[test]
    fn missing_required_values_name_key_and_env_var() {
        let problems = problems("");
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["postgres.url", "kafka.bootstrap_servers", "schema_registry.url"]);
        assert!(problems[0].message.contains("OUTBOX_RELAY_POSTGRES__URL"));
    }

    #[test]
    fn invalid_values_are_all_reported() {
        let text = r#"
            connector_name = "bad name"
            [postgres]
            url = "postgres://u:p@h/db?sslmode=verify-everything"
            protocol_version = 5
            reconnect_backoff_initial_ms = 100
            reconnect_backoff_max_ms = 10
            [[outbox.tables]]
            table = "outbox"
            route_topic_replacement = "events/${routedByValue}"
            additional_fields = [
                { column = "a", placement = "partition" },
                { column = "b", placement = "partition" },
            ]
            [[outbox.tables]]
            table = "public.outbox"
            [kafka]
            bootstrap_servers = "k1"
            max_batch_events = 0
            transaction_timeout_ms = 100
            checkpoint_topic = "bad topic"
            [kafka.properties]
            "transactional.id" = "x"
            [schema_registry]
            url = "ftp://registry"
            password = "pw"
            [metrics]
            listen = "nowhere"
        "#;
        let problems = problems(text);
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for expected in [
            "connector_name",
            "postgres.url",
            "postgres.protocol_version",
            "postgres.reconnect_backoff_max_ms",
            "outbox.tables[0].route_topic_replacement",
            "outbox.tables[0].additional_fields",
            "outbox.tables[1].table",
            "kafka.bootstrap_servers",
            "kafka.checkpoint_topic",
            "kafka.transaction_timeout_ms",
            "kafka.max_batch_events",
            "kafka.properties.\"transactional.id\"",
            "schema_registry.url",
            "schema_registry.password",
            "metrics.listen",
        ] {
            assert!(keys.contains(&expected), "{expected} missing from {problems:#?}");
        }
        let sslmode = problems.iter().find(|p| p.key == "postgres.url").unwrap();
        assert!(sslmode.message.contains("verify-everything"), "{sslmode}");
        let dup = problems.iter().find(|p| p.key == "outbox.tables[1].table").unwrap();
        assert!(dup.message.contains("twice"), "{dup}");
        let err = Config::from_toml_str(text, &[]).unwrap_err().to_string();
        assert!(!err.contains(":p@"), "password leaked into {err}");
    }

    #[test]
    fn redacted_toml_parses_back_to_the_same_configuration() {
        let text = format!(
            "{MINIMAL}\n[[outbox.tables]]\nadditional_fields = [{{ column = \"t\", placement = \"partition\" }}]\n\
             [kafka.properties]\n\"linger.ms\" = 5\n"
        );
        let printed = Config::from_toml_str(&text, &[]).unwrap().to_redacted_toml().unwrap();
        let reparsed = Config::from_toml_str(&printed, &[]).unwrap();
        assert_eq!(reparsed.to_redacted_toml().unwrap(), printed);
    }

    #[test]
    fn parse_errors_do_not_quote_secrets() {
        for broken in [
            "[postgres]\nurl = \"postgres://u:pg-secret@h/db\nslot = 1\n",
            "[postgres]\nurl = 5 # postgres://u:pg-secret@h/db\n",
            "[kafka.properties]\n\"sasl.password\" = kafka-secret\n",
            "[schema_registry]\npassword = [\"sr-secret\"\n",
        ] {
            let err = Config::from_toml_str(broken, &[]).unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(matches!(err, ConfigError::Parse { .. }), "{text}");
            assert!(!text.contains("secret"), "secret quoted in {text}");
        }
    }

    #[test]
    fn unknown_placement_is_a_parse_error_naming_the_variants() {
        let text = format!(
            "{MINIMAL}\n[[outbox.tables]]\nadditional_fields = [{{ column = \"t\", placement = \"footer\" }}]\n"
        );
        let msg = Config::from_toml_str(&text, &[]).unwrap_err().to_string();
        assert!(msg.contains("footer") && msg.contains("header") && msg.contains("[[outbox.tables]]"), "{msg}");
    }

    #[test]
    fn explicit_empty_table_list_needs_messages() {
        let keys = problem_keys(&format!("{MINIMAL}\n[outbox]\ntables = []\n"));
        assert_eq!(keys, ["outbox.tables"]);
        let c =
            Config::from_toml_str(&format!("{MINIMAL}\n[outbox]\ntables = []\nmessages = {{ enabled = true }}\n"), &[])
                .unwrap();
        assert!(c.outbox.tables.is_empty());
    }

    #[test]
    fn template_without_placeholder_is_a_warning() {
        let text = format!("{MINIMAL}\n[[outbox.tables]]\nroute_topic_replacement = \"all-events\"\n");
        let c = Config::from_toml_str(&text, &[]).unwrap();
        assert_eq!(c.warnings().len(), 1);
        assert!(c.warnings()[0].contains("all-events"));
    }

    #[test]
    fn aliases_default_to_the_column_and_table_names_parse() {
        let text = format!(
            "{MINIMAL}\n[[outbox.tables]]\ntable = \"app.events\"\nfield_event_timestamp = \"created_at\"\n\
             additional_fields = [{{ column = \"tenant\", placement = \"header\" }}, \
             {{ column = \"type\", placement = \"envelope\", alias = \"eventType\" }}]\n"
        );
        let c = Config::from_toml_str(&text, &[]).unwrap();
        let t = &c.outbox.tables[0];
        assert_eq!(t.additional_fields[0].alias, "tenant");
        assert_eq!(t.timestamp_column(), Some("created_at"));
        assert_eq!((t.table.schema.as_str(), t.table.name.as_str()), ("app", "events"));
    }

    #[test]
    fn kafka_properties_accept_scalars() {
        let text = format!(
            "{MINIMAL}\n[kafka.properties]\n\"linger.ms\" = 5\n\"enable.ssl.certificate.verification\" = false\n"
        );
        let c = Config::from_toml_str(&text, &[]).unwrap();
        assert_eq!(c.kafka.properties["linger.ms"], "5");
        assert_eq!(c.kafka.properties["enable.ssl.certificate.verification"], "false");
    }

    #[test]
    fn secrets_are_absent_from_debug_and_redacted_output() {
        let text = r#"
            [postgres]
            url = "postgres://relay:pg-secret-1@db:5432/app?sslmode=disable&password=pg-secret-2"
            [kafka]
            bootstrap_servers = "k:9092"
            [kafka.properties]
            "sasl.password" = "kafka-secret-1"
            "sasl.jaas.config" = "kafka-secret-2"
            "ssl.key.pem" = "kafka-secret-3"
            "sasl.oauthbearer.client.secret" = "kafka-secret-4"
            "client.id" = "visible-client-id"
            [schema_registry]
            url = "https://sr-user:sr-secret-1@registry:8081"
        "#;
        let c = Config::from_toml_str(text, &[]).unwrap();
        let mut with_password = c.clone();
        with_password.schema_registry.url = "https://registry:8081".to_owned();
        with_password.schema_registry.username = "u".to_owned();
        with_password.schema_registry.password = "sr-secret-2".to_owned();
        for output in [
            format!("{c:?}"),
            format!("{c:#?}"),
            format!("{with_password:?}"),
            c.to_redacted_toml().unwrap(),
            with_password.to_redacted_toml().unwrap(),
        ] {
            assert!(!output.contains("secret-"), "secret in {output}");
            assert!(output.contains(REDACTED), "{output}");
            assert!(output.contains("visible-client-id"), "non-secret property hidden in {output}");
            assert!(output.contains("relay"), "user name hidden in {output}");
        }
        // The real values stay usable.
        // As in libpq, a password query parameter wins over the one in the user info.
        assert_eq!(c.postgres.connection().unwrap().password.as_deref(), Some("pg-secret-2"));
        assert_eq!(c.schema_registry.basic_auth(), Some(("sr-user".to_owned(), "sr-secret-1".to_owned())));
        assert_eq!(c.schema_registry.base_url(), "https://registry:8081");
    }

    #[test]
    fn redact_url_handles_urls_and_non_urls() {
        assert_eq!(redact_url("postgres://u:p@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact_url("postgres://u:p@h1:5432,h2:5433/db?x=1"), "postgres://u:***@h1:5432,h2:5433/db?x=1");
        assert_eq!(
            redact_url("postgres://u@h/db?password=p&sslmode=disable"),
            "postgres://u@h/db?password=***&sslmode=disable"
        );
        assert_eq!(redact_url("http://h:8081/apis"), "http://h:8081/apis");
        assert_eq!(redact_url("u:p@h"), "u:***@h");
        assert_eq!(redact_url("postgres://u:pa/ss@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact_url("postgres://u:p?ss#x@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact_url("http://h/path@x"), "http://h/path@x");
        assert_eq!(redact_url("http://u:p%40ss@h/path@x"), "http://u:***@h/path@x");
    }

    #[test]
    fn the_postgres_url_is_parsed_at_load() {
        let pg = minimal().postgres;
        assert_eq!(pg.connection().unwrap().dbname, "app");
        assert_eq!(pg.target(), "db.example:5432");
        let mut unloaded = PostgresConfig::default();
        unloaded.url.clone_from(&pg.url);
        assert!(matches!(unloaded.connection(), Err(ConnectError::NotLoaded)));
    }
}
