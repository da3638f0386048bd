//! The `[schema_registry]` section: where the registry is, its credentials, and the key and value formats.
//!
//! Invariant: the registry password (given on its own or as `user:password@` in the URL) never appears in `Debug`
//! output or in an error; [`SchemaRegistryConfig::base_url`] is the URL without credentials.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::redact::{percent_decode, redact_secret, redact_url};

const fn default_request_timeout_ms() -> u64 {
    10_000
}

/// Schema registry settings.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRegistryConfig {
    /// Base URL of the Confluent-compatible API, e.g. `http://127.0.0.1:8081` or Apicurio's
    /// `http://host:8080/apis/ccompat/v7`. Required. May carry `user:password@` for basic auth.
    #[serde(default)]
    pub url: String,
    /// Basic auth user (instead of credentials in the URL).
    #[serde(default)]
    pub username: String,
    /// Basic auth password.
    #[serde(default)]
    pub password: String,
    /// Record key encoding: `string` (UTF-8 aggregate id) or `avro` (an Avro string registered under
    /// `<topic>-key`).
    #[serde(default)]
    pub key_format: KeyFormat,
    /// Record value layout; only `envelope` so far.
    #[serde(default)]
    pub value_mode: ValueMode,
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
            key_format: KeyFormat::default(),
            value_mode: ValueMode::default(),
            request_timeout_ms: default_request_timeout_ms(),
        }
    }
}

impl fmt::Debug for SchemaRegistryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchemaRegistryConfig")
            .field("url", &redact_url(&self.url))
            .field("username", &self.username)
            .field("password", &redact_secret(&self.password))
            .field("key_format", &self.key_format)
            .field("value_mode", &self.value_mode)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .finish()
    }
}

impl SchemaRegistryConfig {
    /// The URL without credentials and without a trailing `/`; append API paths such as `/subjects` to it.
    pub fn base_url(&self) -> String {
        let trimmed = self.url.trim_end_matches('/');
        match url::Url::parse(trimmed) {
            Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
                // Both setters fail only for URLs that cannot have credentials, which validation rejected.
                let _ = url.set_username("");
                let _ = url.set_password(None);
                url.as_str().trim_end_matches('/').to_owned()
            }
            _ => trimmed.to_owned(),
        }
    }

    /// Basic auth credentials `(user, password)` from `username`/`password` or from the URL, if any.
    pub fn basic_auth(&self) -> Option<(String, String)> {
        if !self.username.is_empty() {
            return Some((self.username.clone(), self.password.clone()));
        }
        let url = url::Url::parse(&self.url).ok()?;
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
            match url::Url::parse(&self.url) {
                Err(e) => report(KEY, format!("`{}` is not a URL: {e}", redact_url(&self.url))),
                Ok(url) if !matches!(url.scheme(), "http" | "https") => {
                    report(KEY, format!("`{}` must start with http:// or https://", redact_url(&self.url)));
                }
                Ok(url) if url.host().is_none() => {
                    report(KEY, format!("`{}` names no host", redact_url(&self.url)));
                }
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
        if self.username.is_empty() && !self.password.is_empty() {
            report("schema_registry.password", "is set but schema_registry.username is empty".to_owned());
        }
        if self.request_timeout_ms == 0 {
            report("schema_registry.request_timeout_ms", "must be at least 1".to_owned());
        }
    }
}
