//! The `[schema_registry]` section: where the registry is, its credentials, and the key and value formats.
//!
//! Invariant: the registry password (given on its own or as `user:password@` in the URL) never appears in `Debug`
//! output or in an error; [`SchemaRegistryConfig::base_url`] is the URL without credentials.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::fields::default_true;
use crate::config::redact::{percent_decode, redact_secret, redact_url};

const fn default_request_timeout_ms() -> u64 {
    10_000
}

/// Schema registry settings.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRegistryConfig {
    /// Base URL of the Confluent-compatible API, e.g. `http://127.0.0.1:8081` or Apicurio's
    /// `http://host:8080/apis/ccompat/v7`. Required. Several, comma-separated, are tried in order (fail-over), as in
    /// Confluent's `schema.registry.url`. May carry `user:password@` for basic auth (the first URL's).
    #[serde(default)]
    pub url: String,
    /// Basic auth user (instead of credentials in the URL).
    #[serde(default)]
    pub username: String,
    /// Basic auth password.
    #[serde(default)]
    pub password: String,
    /// Bearer token (`Authorization: Bearer ...`), instead of basic auth.
    #[serde(default)]
    pub token: String,
    /// PEM file of the CA that signed the registry's certificate (`https://`), instead of the system's.
    #[serde(default)]
    pub tls_ca_file: String,
    /// PEM file of the client certificate for registries that require one (with `tls_key_file`).
    #[serde(default)]
    pub tls_cert_file: String,
    /// PEM file (PKCS#8) of the client certificate's private key.
    #[serde(default)]
    pub tls_key_file: String,
    /// Record key encoding: `string` (UTF-8 aggregate id) or `avro` (an Avro string registered under
    /// `<topic>-key`).
    #[serde(default)]
    pub key_format: KeyFormat,
    /// Record value layout: `envelope`, `payload` or `registered`.
    #[serde(default)]
    pub value_mode: ValueMode,
    /// How the subject of a record value's schema is named (Confluent's `value.subject.name.strategy`). Keys always
    /// use `<topic>-key`.
    #[serde(default)]
    pub subject_name_strategy: SubjectNameStrategy,
    /// Register a schema that the subject does not hold yet (Confluent's `auto.register.schemas`). Off: the schema
    /// must have been registered before (`outbox-relay schemas register`), else the event is refused.
    #[serde(default = "default_true")]
    pub auto_register: bool,
    /// Encode with the subject's latest registered version instead of the local schema (Confluent's
    /// `use.latest.version`); needs `auto_register = false`.
    #[serde(default)]
    pub use_latest_version: bool,
    /// Value mode `registered`: a directory of `.avsc` files; `NAME.avsc` is the schema of event type `NAME`.
    #[serde(default)]
    pub schemas_dir: String,
    /// Value mode `registered`: where the schema of an event type comes from when not `schemas_dir/<type>.avsc`:
    /// `{ file = "path.avsc" }` (relative to `schemas_dir`) or `{ subject = "name", version = 3 }` (or `"latest"`).
    #[serde(default)]
    pub event_types: BTreeMap<String, EventTypeSchema>,
    /// Timeout of one registry request, in milliseconds.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

impl Default for SchemaRegistryConfig {
    fn default() -> Self {
        SchemaRegistryConfig {
            url: String::new(),
            username: String::new(),
            password: String::new(),
            token: String::new(),
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            key_format: KeyFormat::default(),
            value_mode: ValueMode::default(),
            subject_name_strategy: SubjectNameStrategy::default(),
            auto_register: true,
            use_latest_version: false,
            schemas_dir: String::new(),
            event_types: BTreeMap::new(),
            request_timeout_ms: default_request_timeout_ms(),
        }
    }
}

impl fmt::Debug for SchemaRegistryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchemaRegistryConfig")
            .field("url", &redact_urls(&self.url))
            .field("username", &self.username)
            .field("password", &redact_secret(&self.password))
            .field("token", &redact_secret(&self.token))
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("key_format", &self.key_format)
            .field("value_mode", &self.value_mode)
            .field("subject_name_strategy", &self.subject_name_strategy)
            .field("auto_register", &self.auto_register)
            .field("use_latest_version", &self.use_latest_version)
            .field("schemas_dir", &self.schemas_dir)
            .field("event_types", &self.event_types)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .finish()
    }
}

impl SchemaRegistryConfig {
    /// The first URL without credentials and without a trailing `/`; append API paths such as `/subjects` to it.
    pub fn base_url(&self) -> String {
        self.urls().into_iter().next().unwrap_or_default()
    }

    /// Every configured URL (comma-separated in `url`), without credentials and without a trailing `/`.
    pub fn urls(&self) -> Vec<String> {
        split_urls(&self.url)
            .into_iter()
            .map(|u| {
                let trimmed = u.trim_end_matches('/');
                match url::Url::parse(trimmed) {
                    Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
                        // Both setters fail only for URLs that cannot have credentials, which validation rejected.
                        let _ = url.set_username("");
                        let _ = url.set_password(None);
                        url.as_str().trim_end_matches('/').to_owned()
                    }
                    _ => trimmed.to_owned(),
                }
            })
            .collect()
    }

    /// Basic auth credentials `(user, password)` from `username`/`password` or from the URL, if any.
    pub fn basic_auth(&self) -> Option<(String, String)> {
        if !self.username.is_empty() {
            return Some((self.username.clone(), self.password.clone()));
        }
        let first = split_urls(&self.url).into_iter().next().unwrap_or("");
        let url = url::Url::parse(first).ok()?;
        if url.username().is_empty() {
            return None;
        }
        let decode = |s: &str| percent_decode(s);
        Some((decode(url.username()), url.password().map(decode).unwrap_or_default()))
    }

    /// [`Self::request_timeout_ms`] as a duration.
    pub const fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// The URLs of a comma-separated list. A comma splits only where the next URL begins (`http://`, `https://`): a
/// comma is legal inside a password, which must neither be cut in two nor escape redaction.
pub fn split_urls(list: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, _) in list.match_indices(',') {
        let rest = list.get(i + 1..).unwrap_or("").trim_start();
        if rest.starts_with("http://") || rest.starts_with("https://") {
            out.push(list.get(start..i).unwrap_or("").trim());
            start = i + 1;
        }
    }
    out.push(list.get(start..).unwrap_or("").trim());
    out.retain(|u| !u.is_empty());
    out
}

/// A URL list with every URL's credentials redacted.
pub fn redact_urls(list: &str) -> String {
    split_urls(list).into_iter().map(redact_url).collect::<Vec<_>>().join(",")
}

/// Record key encoding.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KeyFormat {
    /// The aggregate id as UTF-8 bytes.
    #[default]
    String,
    /// The aggregate id as an Avro string in the Confluent wire format.
    Avro,
}

/// Record value layout.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ValueMode {
    /// An Avro envelope record carrying the payload and the envelope fields.
    #[default]
    Envelope,
    /// The payload alone, as Debezium's Outbox Event Router writes it: an Avro `["null","string"]` (the JSON text)
    /// or, for a `bytea` payload column, `["null","bytes"]` passed through unchanged. A NULL payload is a tombstone.
    Payload,
    /// The JSON payload converted to Avro against the schema of its event type (`schemas_dir`, `event_types`). A
    /// NULL payload is a tombstone.
    Registered,
}

/// How the subject of a value schema is named.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SubjectNameStrategy {
    /// `<topic>-value` (Confluent's TopicNameStrategy): one schema lineage per topic.
    #[default]
    Topic,
    /// The record's full name (RecordNameStrategy): one lineage per event type, across topics.
    Record,
    /// `<topic>-<record full name>` (TopicRecordNameStrategy): one lineage per event type and topic.
    TopicRecord,
}

impl SubjectNameStrategy {
    /// The subject of a value schema named `record` (its full name, if it has one) on `topic`; `None` when the
    /// strategy needs a name and the schema has none.
    pub fn value_subject(self, topic: &str, record: Option<&str>) -> Option<String> {
        match self {
            SubjectNameStrategy::Topic => Some(format!("{topic}-value")),
            SubjectNameStrategy::Record => record.map(str::to_owned),
            SubjectNameStrategy::TopicRecord => record.map(|r| format!("{topic}-{r}")),
        }
    }
}

/// Where an event type's schema comes from, besides `schemas_dir/<type>.avsc`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EventTypeSchema {
    /// An `.avsc` file, relative to `schemas_dir` (or absolute).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub file: String,
    /// A subject of the registry whose schema is used as registered.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subject: String,
    /// The subject's version: a number or `"latest"` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<SchemaVersion>,
}

/// A subject version.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum SchemaVersion {
    /// A version number.
    Number(u32),
    /// `"latest"` (or a number as text, from an environment variable).
    Text(String),
}

impl SchemaVersion {
    /// The version as the registry's API path segment (`latest` or the number), if valid.
    pub fn path_segment(&self) -> Option<String> {
        match self {
            SchemaVersion::Number(n) if *n > 0 => Some(n.to_string()),
            SchemaVersion::Text(t) if t == "latest" => Some("latest".to_owned()),
            SchemaVersion::Text(t) => t.parse::<u32>().ok().filter(|n| *n > 0).map(|n| n.to_string()),
            SchemaVersion::Number(_) => None,
        }
    }
}

/// Where the schema of one event type comes from, resolved from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SchemaSource {
    /// A local `.avsc` file.
    File(PathBuf),
    /// A registered subject version (`latest` or a number).
    Subject {
        /// The subject.
        subject: String,
        /// `latest` or the version number.
        version: String,
    },
}

impl SchemaRegistryConfig {
    /// The schema source of every configured event type: `schemas_dir/*.avsc` by file stem, then `event_types`
    /// (which wins). Reads the directory listing only.
    pub fn schema_sources(&self) -> Result<BTreeMap<String, SchemaSource>, String> {
        let mut out = BTreeMap::new();
        let dir = Path::new(&self.schemas_dir);
        if !self.schemas_dir.is_empty() {
            let entries = std::fs::read_dir(dir)
                .map_err(|e| format!("schema_registry.schemas_dir {:?} cannot be read: {e}", self.schemas_dir))?;
            for entry in entries {
                let path =
                    entry.map_err(|e| format!("schema_registry.schemas_dir {:?}: {e}", self.schemas_dir))?.path();
                if path.extension().is_some_and(|x| x == "avsc") {
                    if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                        out.insert(stem.to_owned(), SchemaSource::File(path.clone()));
                    }
                }
            }
        }
        for (event_type, source) in &self.event_types {
            let resolved = if source.file.is_empty() {
                let version = source
                    .version
                    .as_ref()
                    .map_or(Some("latest".to_owned()), SchemaVersion::path_segment)
                    .unwrap_or_default();
                SchemaSource::Subject { subject: source.subject.clone(), version }
            } else {
                SchemaSource::File(dir.join(&source.file))
            };
            out.insert(event_type.clone(), resolved);
        }
        Ok(out)
    }
}

impl SchemaRegistryConfig {
    pub(crate) fn validate(&self, report: &mut impl FnMut(&str, String)) {
        const KEY: &str = "schema_registry.url";
        if self.url.is_empty() {
            report(
                KEY,
                "is required: set url in [schema_registry] or the environment variable \
                 OUTBOX_RELAY_SCHEMA_REGISTRY__URL"
                    .to_owned(),
            );
        } else {
            for one in split_urls(&self.url) {
                match url::Url::parse(one) {
                    Err(e) => report(KEY, format!("`{}` is not a URL: {e}", redact_url(one))),
                    Ok(url) if !matches!(url.scheme(), "http" | "https") => {
                        report(KEY, format!("`{}` must start with http:// or https://", redact_url(one)));
                    }
                    Ok(url) if url.host().is_none() => report(KEY, format!("`{}` names no host", redact_url(one))),
                    Ok(url) if url.query().is_some() || url.fragment().is_some() => {
                        report(KEY, "must not have a query or fragment; give the API's base URL".to_owned());
                    }
                    Ok(url) if !url.username().is_empty() && !self.username.is_empty() => report(
                        KEY,
                        "carries credentials and schema_registry.username is set too; use one of them".to_owned(),
                    ),
                    Ok(_) => {}
                }
            }
        }
        if !self.token.is_empty() && self.basic_auth().is_some() {
            report("schema_registry.token", "and basic auth credentials are both set; use one of them".to_owned());
        }
        if self.tls_cert_file.is_empty() != self.tls_key_file.is_empty() {
            report(
                "schema_registry.tls_cert_file",
                "and schema_registry.tls_key_file go together (the client certificate and its key)".to_owned(),
            );
        }
        if self.username.is_empty() && !self.password.is_empty() {
            report("schema_registry.password", "is set but schema_registry.username is empty".to_owned());
        }
        if self.use_latest_version && self.auto_register {
            report(
                "schema_registry.use_latest_version",
                "needs auto_register = false (the relay then encodes with what the registry holds and registers \
                 nothing)"
                    .to_owned(),
            );
        }
        if self.value_mode != ValueMode::Registered && (!self.auto_register || self.use_latest_version) {
            report(
                "schema_registry.auto_register",
                "= false and use_latest_version apply to value_mode = \"registered\"; the envelope and payload \
                 schemas are the relay's own and always registered"
                    .to_owned(),
            );
        }
        match self.value_mode {
            ValueMode::Registered if self.schemas_dir.is_empty() && self.event_types.is_empty() => report(
                "schema_registry.value_mode",
                "registered needs schemas: set schema_registry.schemas_dir (a directory of <event type>.avsc files) \
                 or schema_registry.event_types"
                    .to_owned(),
            ),
            ValueMode::Payload if self.subject_name_strategy != SubjectNameStrategy::Topic => report(
                "schema_registry.subject_name_strategy",
                "must be topic with value_mode = payload: the payload's schema is a string or bytes, which has no \
                 record name"
                    .to_owned(),
            ),
            _ => {}
        }
        for (event_type, source) in &self.event_types {
            let key = format!("schema_registry.event_types.{event_type}");
            match (source.file.is_empty(), source.subject.is_empty()) {
                (true, true) => report(&key, "needs file = \"...avsc\" or subject = \"...\"".to_owned()),
                (false, false) => report(&key, "has both file and subject; give one".to_owned()),
                (false, true) if source.version.is_some() => {
                    report(&key, "version belongs to subject, not to file".to_owned());
                }
                _ => {}
            }
            if source.version.as_ref().is_some_and(|v| v.path_segment().is_none()) {
                report(&format!("{key}.version"), "must be a version number from 1, or \"latest\"".to_owned());
            }
            if self.value_mode != ValueMode::Registered {
                report(&key, "is used only with value_mode = \"registered\"".to_owned());
            }
        }
        if self.request_timeout_ms == 0 {
            report("schema_registry.request_timeout_ms", "must be at least 1".to_owned());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn url_lists_split_only_where_a_url_begins() {
        assert_eq!(split_urls("http://a:1, https://b:2/x"), ["http://a:1", "https://b:2/x"]);
        // A comma inside a password neither splits the URL nor escapes redaction.
        let list = "https://u:pa,ss@reg:8081,http://other:8081";
        assert_eq!(split_urls(list), ["https://u:pa,ss@reg:8081", "http://other:8081"]);
        assert!(!redact_urls(list).contains("pa,ss"), "{}", redact_urls(list));
        let c = SchemaRegistryConfig { url: list.to_owned(), ..SchemaRegistryConfig::default() };
        assert_eq!(c.basic_auth(), Some(("u".to_owned(), "pa,ss".to_owned())));
        assert_eq!(c.urls(), ["https://reg:8081", "http://other:8081"]);
    }
}
