//! Event -> Avro record value in the Confluent wire format, through a Confluent-compatible schema registry.
//!
//! Invariant: every value this module hands to the producer is `0x00 | schema id (u32 BE) | Avro binary`, where the
//! schema id is the one the registry returned for that very schema under the record's subject
//! (TopicNameStrategy: `<topic>-value`, `<topic>-key`). A schema the registry refuses (incompatible, invalid,
//! unauthorized) is a definite [`EncodeError`] that says what to fix; an unreachable registry is retried with
//! backoff and then reported as transient. Nothing is produced with a guessed id.
//!
//! ```text
//!  OutboxEvent ──ValueEncoder::encode──> ids[topic]? ──hit──> write Avro binary ──> Vec<u8> (wire format)
//!                                            │ miss (once per topic and process)
//!                                            ▼
//!                     SchemaRegistry::register: POST /subjects/<subject>/versions, retries, backoff, URL fail-over
//! ```
//!
//! Value mode `envelope` ([`EnvelopeEncoder`]) writes one fixed record schema for every event, see
//! [`envelope_schema`]. Its binary encoding is written here directly from the event's fields instead of through
//! `apache_avro::types::Value`: the schema is ours and flat (strings, a long, `["null","string"]` unions), and the
//! per-event cost drops to a few hundred nanoseconds. A unit test checks the bytes against `apache-avro`'s writer
//! and the integration tests decode them through the registry.
//!
//! [`ValueEncoder`] is the seam for further value modes (a registry-governed schema per event type).

pub mod compat;
pub mod config;
pub mod json;
pub mod registered;
pub mod schemas;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use schema_registry_converter::async_impl::avro::AvroDecoder;
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};

use crate::config::redact::redact_url;
use crate::outbox::OutboxEvent;
use config::{KeyFormat, SchemaRegistryConfig, SubjectNameStrategy as Strategy, ValueMode};

/// A schema id assigned by the registry.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct SchemaId(pub u32);

impl fmt::Display for SchemaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Namespace of the envelope record.
pub const ENVELOPE_NAMESPACE: &str = "io.outboxrelay";
/// Name of the envelope record.
pub const ENVELOPE_NAME: &str = "OutboxEnvelope";
/// The fixed fields of the envelope, in schema order.
pub const ENVELOPE_FIXED_FIELDS: [&str; 6] = ["id", "aggregate_type", "aggregate_id", "type", "timestamp", "payload"];

/// Magic byte of the Confluent wire format.
const MAGIC: u8 = 0;

/// Why an event could not be encoded, or its schema not registered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A value of the event does not fit the schema.
    #[error("event {event_id}: field {field:?} cannot be encoded: {reason}")]
    Value {
        /// The event's id.
        event_id: String,
        /// The field at fault.
        field: String,
        /// Why.
        reason: String,
    },
    /// The registry could not be reached (connection error, timeout, 5xx) after every attempt. Transient.
    #[error("schema registry {url} unavailable for subject {subject} after {attempts} attempts: {reason}")]
    RegistryUnavailable {
        /// The registry URL, without credentials.
        url: String,
        /// The subject being registered.
        subject: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        reason: String,
        /// The converter's error.
        #[source]
        source: Box<SRCError>,
    },
    /// The registry's compatibility rule refused the schema (HTTP 409).
    #[error(
        "schema registry {url} refused the schema for subject {subject} as incompatible with its registered versions \
         (HTTP 409: {reason}); fix: in value mode registered, `outbox-relay schemas check` names the field, the rule \
         and the safe path; in value mode envelope new fields are optional, so another writer owns the subject: \
         route to another topic or relax the subject's compatibility level"
    )]
    IncompatibleSchema {
        /// The registry URL, without credentials.
        url: String,
        /// `<topic>-value` or `<topic>-key` (TopicNameStrategy).
        subject: String,
        /// The registry's message.
        reason: String,
    },
    /// The registry rejected the schema as invalid (HTTP 422).
    #[error("schema registry {url} rejected the schema for subject {subject} as invalid (HTTP 422): {reason}")]
    InvalidSchema {
        /// The registry URL, without credentials.
        url: String,
        /// `<topic>-value` or `<topic>-key` (TopicNameStrategy).
        subject: String,
        /// The registry's message.
        reason: String,
    },
    /// The registry refused our credentials (HTTP 401) or the permission (HTTP 403).
    #[error("schema registry {url} {} (subject {subject})", unauthorized_message(*.status))]
    Unauthorized {
        /// The registry URL, without credentials.
        url: String,
        /// `<topic>-value` or `<topic>-key` (TopicNameStrategy).
        subject: String,
        /// 401 or 403.
        status: u16,
    },
    /// Any other definite registry failure.
    #[error("schema registry {url} failed for subject {subject}: {reason}")]
    Registry {
        /// The registry URL, without credentials.
        url: String,
        /// `<topic>-value` or `<topic>-key` (TopicNameStrategy).
        subject: String,
        /// What happened.
        reason: String,
        /// The converter's error.
        #[source]
        source: Box<SRCError>,
    },
    /// `auto_register = false` (or a configured subject version) and the registry does not hold the schema.
    #[error(
        "schema registry has no subject {subject} holding the schema of event type {event_type:?} ({origin}); fix: \
         register it before deploying (`outbox-relay schemas register`), or set schema_registry.auto_register = true"
    )]
    NotRegistered {
        /// The subject looked in.
        subject: String,
        /// The event type.
        event_type: String,
        /// The schema's file or subject.
        origin: String,
    },
    /// Local schemas (value mode `registered`) that their subjects would refuse, one verdict per line.
    #[error(
        "local schemas are incompatible with what the schema registry holds:\n{0}\nfix: follow each problem's safe \
         path, then run `outbox-relay schemas check` until it passes"
    )]
    SchemasIncompatible(String),
    /// The encoder's own settings are invalid.
    #[error("invalid Avro encoder settings: {0}")]
    Settings(String),
}

impl EncodeError {
    /// `true` when retrying later may succeed (the registry was unreachable).
    pub fn is_transient(&self) -> bool {
        matches!(self, EncodeError::RegistryUnavailable { .. })
    }

    /// `true` when the failure belongs to this event (its value, or the schema its topic needs), so a dead-letter
    /// record can take its place; `false` for what affects every event (registry unreachable or refusing access).
    pub fn is_event_error(&self) -> bool {
        matches!(
            self,
            EncodeError::Value { .. } | EncodeError::IncompatibleSchema { .. } | EncodeError::InvalidSchema { .. }
        )
    }
}

/// Why a wire-format value could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode Avro value: {reason}")]
pub struct DecodeError {
    /// What happened.
    pub reason: String,
    /// The converter's error.
    #[source]
    pub source: Box<SRCError>,
}

/// How registry calls are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, at least 1.
    pub attempts: u32,
    /// Wait after the first failure; doubled after each further one.
    pub initial_backoff: Duration,
    /// Upper bound of the wait.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { attempts: 5, initial_backoff: Duration::from_millis(200), max_backoff: Duration::from_secs(5) }
    }
}

/// Where the registry is and how to talk to it.
#[derive(Clone)]
pub struct RegistrySettings {
    /// Every URL, tried in order; the first is the one named in messages.
    urls: Vec<String>,
    basic_auth: Option<(String, String)>,
    token: Option<String>,
    tls_ca_file: String,
    tls_client: Option<(String, String)>,
    request_timeout: Duration,
    retry: RetryPolicy,
}

impl fmt::Debug for RegistrySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistrySettings")
            .field("urls", &self.urls)
            .field("user", &self.basic_auth.as_ref().map(|(u, _)| u))
            .field("token", &self.token.as_ref().map(|_| crate::config::redact::REDACTED))
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_client", &self.tls_client)
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .finish()
    }
}

impl RegistrySettings {
    /// Settings for `url` (comma-separated for several); `user:password@` in the URL becomes basic auth and is
    /// removed from the URL.
    pub fn new(url: &str) -> RegistrySettings {
        let config = SchemaRegistryConfig { url: url.to_owned(), ..SchemaRegistryConfig::default() };
        RegistrySettings::from_config(&config)
    }

    /// Settings from the `[schema_registry]` configuration.
    pub fn from_config(config: &SchemaRegistryConfig) -> RegistrySettings {
        RegistrySettings {
            urls: config.urls(),
            basic_auth: config.basic_auth(),
            token: (!config.token.is_empty()).then(|| config.token.clone()),
            tls_ca_file: config.tls_ca_file.clone(),
            tls_client: (!config.tls_cert_file.is_empty())
                .then(|| (config.tls_cert_file.clone(), config.tls_key_file.clone())),
            request_timeout: config.request_timeout(),
            retry: RetryPolicy::default(),
        }
    }

    /// Uses basic auth with these credentials.
    #[must_use]
    pub fn with_basic_auth(mut self, user: &str, password: &str) -> RegistrySettings {
        self.basic_auth = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// Sets the timeout of one request.
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: Duration) -> RegistrySettings {
        self.request_timeout = timeout;
        self
    }

    /// Sets the retry policy.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> RegistrySettings {
        self.retry = retry;
        self
    }

    /// The first base URL, without credentials.
    pub fn url(&self) -> &str {
        self.urls.first().map_or("", String::as_str)
    }

    /// The HTTP client every registry call goes through: the timeout, and the CA and client certificate of
    /// `https://` registries. Reading a named file that is missing or not PEM fails naming the file and setting.
    fn client_builder(&self) -> Result<reqwest::ClientBuilder, EncodeError> {
        let read = |setting: &str, file: &str| {
            std::fs::read(file)
                .map_err(|e| EncodeError::Settings(format!("schema_registry.{setting} {file:?} cannot be read: {e}")))
        };
        let mut builder = reqwest::Client::builder().timeout(self.request_timeout);
        if !self.tls_ca_file.is_empty() {
            let pem = read("tls_ca_file", &self.tls_ca_file)?;
            let ca = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                EncodeError::Settings(format!(
                    "schema_registry.tls_ca_file {:?} is not a PEM certificate: {}",
                    self.tls_ca_file,
                    crate::error_chain(&e)
                ))
            })?;
            // The private CA alone: a registry of this deployment is not trusted through a public CA.
            builder = builder.tls_certs_only([ca]);
        }
        if let Some((cert, key)) = &self.tls_client {
            let (cert_pem, key_pem) = (read("tls_cert_file", cert)?, read("tls_key_file", key)?);
            check_key_pair(cert, key, &cert_pem, &key_pem)?;
            let identity = reqwest::Identity::from_pkcs8_pem(&cert_pem, &key_pem).map_err(|e| {
                EncodeError::Settings(format!(
                    "schema_registry.tls_cert_file {cert:?} with tls_key_file {key:?}: not a PEM certificate and \
                         PKCS#8 PEM key ({}); convert the key with `openssl pkcs8 -topk8 -nocrypt`",
                    crate::error_chain(&e)
                ))
            })?;
            builder = builder.identity(identity);
        }
        Ok(builder)
    }

    fn sr_settings(&self) -> Result<SrSettings, EncodeError> {
        let mut builder = SrSettings::new_builder(self.url().to_owned());
        for other in self.urls.iter().skip(1) {
            builder.add_url(other.clone());
        }
        if let Some((user, password)) = &self.basic_auth {
            builder.set_basic_authorization(user, Some(password));
        }
        if let Some(token) = &self.token {
            builder.set_token_authorization(token);
        }
        builder
            .set_timeout(self.request_timeout)
            .build_with(self.client_builder()?)
            .map_err(|e| EncodeError::Settings(format!("schema registry client for {}: {}", self.url(), describe(&e))))
    }
}

/// Whether the key of `tls_key_file` belongs to the certificate of `tls_cert_file`. The TLS library checks it only when
/// the HTTP client is built, which happens in the background (see [`SchemaRegistry`]); checked here, a mismatch
/// refuses the start before it fences anyone, as every other settings file does.
fn check_key_pair(cert: &str, key: &str, cert_pem: &[u8], key_pem: &[u8]) -> Result<(), EncodeError> {
    let unreadable = |what: &str, e: openssl::error::ErrorStack| {
        EncodeError::Settings(format!("schema_registry.{what}: not a PEM {}: {e}", what.trim_end_matches("_file")))
    };
    let public = openssl::x509::X509::from_pem(cert_pem)
        .and_then(|c| c.public_key())
        .map_err(|e| unreadable("tls_cert_file", e))?;
    let private = openssl::pkey::PKey::private_key_from_pem(key_pem).map_err(|e| unreadable("tls_key_file", e))?;
    if public.public_eq(&private) {
        Ok(())
    } else {
        Err(EncodeError::Settings(format!(
            "schema_registry.tls_key_file {key:?} is not the key of the certificate in tls_cert_file {cert:?}; fix: \
             name the key the certificate was issued for"
        )))
    }
}

/// The registry client shared by the key and value encoders: registers schemas and asks what `check` and
/// `schemas check` need ([`SchemaRegistry::subjects`], [`SchemaRegistry::is_compatible`], [`SchemaRegistry::mode`],
/// versions, compatibility levels), every call through one HTTP path with the same retries, URL fail-over and
/// failure classification.
#[derive(Debug)]
pub struct SchemaRegistry {
    /// Built on the blocking pool from [`SchemaRegistry::new`] on (within a tokio runtime; otherwise by the first
    /// request), and awaited by the first request: the build costs tens of milliseconds of CPU (OpenSSL 3 decodes the
    /// system trust store, even for an `http://` registry), which a start would otherwise wait for before it may
    /// fence. Every settings file is read and checked in `new`, so only the build itself is deferred.
    http: Arc<tokio::sync::OnceCell<reqwest::Client>>,
    settings: RegistrySettings,
    url: String,
}

/// Builds the registry's HTTP client on the blocking pool: it parses the system trust store.
async fn build_http_client(settings: RegistrySettings) -> Result<reqwest::Client, EncodeError> {
    let url = redact_url(settings.url());
    let failed = |why: String| EncodeError::Settings(format!("schema registry client for {url}: {why}"));
    let built = tokio::task::spawn_blocking(move || settings.client_builder().map(reqwest::ClientBuilder::build))
        .await
        .map_err(|e| failed(format!("its build failed: {e}")))?;
    built?.map_err(|e| failed(crate::error_chain(&e)))
}

/// A schema as a subject holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredSchema {
    /// Its id.
    pub id: SchemaId,
    /// Its version within the subject.
    pub version: u32,
    /// Its text.
    pub schema: String,
}

fn unauthorized_message(status: u16) -> &'static str {
    if status == 401 {
        "did not accept the relay's credentials (HTTP 401); fix: check schema_registry.username and \
         schema_registry.password (or the user:password in schema_registry.url), or schema_registry.token"
    } else {
        "knows the relay's user but does not permit this (HTTP 403); fix: grant the user read and write on the \
         subject (registering needs write), or register the schema beforehand and set auto_register = false"
    }
}

/// A subject, version or query value as one URL path segment.
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether a registry accepts new schemas (`GET /mode`): anything but `READWRITE` refuses registrations.
pub const WRITABLE_MODE: &str = "READWRITE";

impl SchemaRegistry {
    /// A client; no request is made until the first registration. The settings' files are read and checked here,
    /// so a bad one is refused at once; the HTTP client's build starts here, in the background when called within
    /// a tokio runtime.
    pub fn new(settings: &RegistrySettings) -> Result<SchemaRegistry, EncodeError> {
        drop(settings.client_builder()?);
        let http = Arc::new(tokio::sync::OnceCell::new());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (cell, settings) = (Arc::clone(&http), settings.clone());
            // A failure here is met again, and reported, by the first request.
            runtime.spawn(async move { cell.get_or_try_init(|| build_http_client(settings)).await.map(drop) });
        }
        Ok(SchemaRegistry { http, settings: settings.clone(), url: redact_url(settings.url()) })
    }

    /// The HTTP client, once built.
    async fn http(&self) -> Result<&reqwest::Client, SRCError> {
        self.http
            .get_or_try_init(|| build_http_client(self.settings.clone()))
            .await
            .map_err(|e| SRCError::new(&e.to_string(), None, false))
    }

    /// Registers `schema` under `<topic>-key` or `<topic>-value` (or finds it registered) and returns its id.
    pub async fn register(&self, topic: &str, is_key: bool, schema: &SuppliedSchema) -> Result<SchemaId, EncodeError> {
        self.register_subject(&subject_name(topic, is_key), schema).await
    }

    /// Registers the value schema `schema` of `topic` under the subject `strategy` names (or finds it registered)
    /// and returns the subject and the id. `schema.name` must be set for the record strategies.
    pub async fn register_value(
        &self,
        strategy: Strategy,
        topic: &str,
        schema: &SuppliedSchema,
    ) -> Result<(String, SchemaId), EncodeError> {
        let subject = strategy.value_subject(topic, schema.name.as_deref()).ok_or_else(|| {
            EncodeError::Settings(format!(
                "subject_name_strategy {strategy:?} needs a named schema (a record), and the value schema of topic \
                 {topic} has no name"
            ))
        })?;
        let id = self.register_subject(&subject, schema).await?;
        Ok((subject, id))
    }

    /// `POST /subjects/<subject>/versions`: registers `schema` (the registry answers with the existing id when the
    /// subject holds it already).
    async fn register_subject(&self, subject: &str, schema: &SuppliedSchema) -> Result<SchemaId, EncodeError> {
        let path = format!("/subjects/{}/versions", path_segment(subject));
        let body = serde_json::json!({ "schema": schema.schema });
        let answer = self
            .call(subject, reqwest::Method::POST, &path, Some(body))
            .await?
            .ok_or_else(|| self.not_found(subject, &path))?;
        let id = self.field(subject, &answer, "id", serde_json::Value::as_u64)?;
        let id = SchemaId(u32::try_from(id).unwrap_or(u32::MAX));
        tracing::info!(subject = %subject, schema_id = id.0, "schema registered");
        Ok(id)
    }

    /// Every subject the registry holds.
    pub async fn subjects(&self) -> Result<Vec<String>, EncodeError> {
        let what = "(all subjects)";
        let answer = self
            .call(what, reqwest::Method::GET, "/subjects", None)
            .await?
            .ok_or_else(|| self.not_found(what, "/subjects"))?;
        serde_json::from_value(answer.clone()).map_err(|_| self.unexpected(what, &answer, "a list of subjects"))
    }

    /// Whether `schema` may be registered under the existing `subject` by the subject's compatibility rule, asked
    /// without registering it; `true` for a subject that does not exist yet.
    pub async fn is_compatible(&self, subject: &str, schema: &SuppliedSchema) -> Result<bool, EncodeError> {
        Ok(self.registry_verdict(subject, &schema.schema).await?.is_none_or(|(ok, _)| ok))
    }

    fn not_found(&self, subject: &str, path: &str) -> EncodeError {
        EncodeError::Registry {
            url: self.url.clone(),
            subject: subject.to_owned(),
            reason: format!(
                "{path} failed with status 404 (not found); is schema_registry.url the base of a Confluent-compatible API (for \
                 Apicurio it ends in /apis/ccompat/v7)?"
            ),
            source: Box::new(SRCError::non_retryable_without_cause("HTTP 404")),
        }
    }

    /// The registry's mode (`GET /mode`): [`WRITABLE_MODE`], or `READONLY`/`IMPORT` where registrations fail. A
    /// registry without modes (404) accepts writes.
    pub async fn mode(&self) -> Result<String, EncodeError> {
        self.mode_at("/mode".to_owned(), "(mode)").await
    }

    /// The effective mode of `subject` (its own, else the registry's); see [`SchemaRegistry::mode`].
    pub async fn mode_of(&self, subject: &str) -> Result<String, EncodeError> {
        self.mode_at(format!("/mode/{}?defaultToGlobal=true", path_segment(subject)), subject).await
    }

    async fn mode_at(&self, path: String, what: &str) -> Result<String, EncodeError> {
        let Some(answer) = self.call(what, reqwest::Method::GET, &path, None).await? else {
            // A registry without modes (older Confluent, some compatible servers) accepts writes.
            return Ok(WRITABLE_MODE.to_owned());
        };
        self.field(what, &answer, "mode", serde_json::Value::as_str).map(str::to_owned)
    }

    /// The id of `schema` if `subject` holds it (`POST /subjects/<subject>`), without registering it.
    pub async fn lookup(&self, subject: &str, schema: &str) -> Result<Option<SchemaId>, EncodeError> {
        let body = serde_json::json!({ "schema": schema });
        let path = format!("/subjects/{}", path_segment(subject));
        let Some(answer) = self.call(subject, reqwest::Method::POST, &path, Some(body)).await? else {
            return Ok(None);
        };
        let id = self.field(subject, &answer, "id", serde_json::Value::as_u64)?;
        Ok(Some(SchemaId(u32::try_from(id).unwrap_or(u32::MAX))))
    }

    /// A registered version of `subject` (`latest` or a number), if the subject and version exist.
    pub async fn version(&self, subject: &str, version: &str) -> Result<Option<RegisteredSchema>, EncodeError> {
        let path = format!("/subjects/{}/versions/{}", path_segment(subject), path_segment(version));
        let Some(answer) = self.call(subject, reqwest::Method::GET, &path, None).await? else {
            return Ok(None);
        };
        let id = self.field(subject, &answer, "id", serde_json::Value::as_u64)?;
        let number = self.field(subject, &answer, "version", serde_json::Value::as_u64)?;
        let schema = self.field(subject, &answer, "schema", serde_json::Value::as_str)?.to_owned();
        Ok(Some(RegisteredSchema {
            id: SchemaId(u32::try_from(id).unwrap_or(u32::MAX)),
            version: u32::try_from(number).unwrap_or(u32::MAX),
            schema,
        }))
    }

    /// The version numbers `subject` holds, oldest first; empty for an unknown subject.
    pub async fn versions(&self, subject: &str) -> Result<Vec<u32>, EncodeError> {
        let path = format!("/subjects/{}/versions", path_segment(subject));
        let Some(answer) = self.call(subject, reqwest::Method::GET, &path, None).await? else {
            return Ok(Vec::new());
        };
        let list = answer.as_array().ok_or_else(|| self.unexpected(subject, &answer, "a list of versions"))?;
        Ok(list.iter().filter_map(serde_json::Value::as_u64).filter_map(|v| u32::try_from(v).ok()).collect())
    }

    /// The compatibility level that applies to `subject` (its own, else the registry's), if the registry has one.
    pub async fn compatibility_level(&self, subject: &str) -> Result<Option<String>, EncodeError> {
        let path = format!("/config/{}?defaultToGlobal=true", path_segment(subject));
        let answer = match self.call(subject, reqwest::Method::GET, &path, None).await? {
            Some(a) => a,
            None => match self.call(subject, reqwest::Method::GET, "/config", None).await? {
                Some(a) => a,
                None => return Ok(None),
            },
        };
        // Confluent answers `compatibilityLevel`; some servers `compatibility`.
        Ok(["compatibilityLevel", "compatibility"]
            .iter()
            .find_map(|k| answer.get(k).and_then(serde_json::Value::as_str))
            .map(str::to_owned))
    }

    /// The registry's own verdict on registering `schema` under `subject` (against its latest version), with its
    /// messages; `None` when the subject does not exist yet.
    pub async fn registry_verdict(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<Option<(bool, Vec<String>)>, EncodeError> {
        let path = format!("/compatibility/subjects/{}/versions/latest?verbose=true", path_segment(subject));
        let body = serde_json::json!({ "schema": schema });
        let Some(answer) = self.call(subject, reqwest::Method::POST, &path, Some(body)).await? else {
            return Ok(None);
        };
        let ok = self.field(subject, &answer, "is_compatible", serde_json::Value::as_bool)?;
        let messages = answer
            .get("messages")
            .and_then(serde_json::Value::as_array)
            .map(|m| m.iter().map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned)).collect())
            .unwrap_or_default();
        Ok(Some((ok, messages)))
    }

    /// One request of the registry's REST API, with the retries and the failure classification of every other
    /// call. `Ok(None)` for 404 (no such subject, version or schema).
    async fn call(
        &self,
        subject: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Option<serde_json::Value>, EncodeError> {
        self.with_retries(subject, || {
            let what = format!("{method} {path}");
            let body = body.clone();
            let method = method.clone();
            async move {
                // Fail-over: the next URL after a connection failure or a 5xx; any other answer is the answer.
                let mut last = None;
                for base in &self.settings.urls {
                    match self.call_one(base, &method, path, body.as_ref(), &what).await {
                        Err(e) if e.retriable => last = Some(e),
                        answer => return answer,
                    }
                }
                Err(last.unwrap_or_else(|| SRCError::non_retryable_without_cause("no schema registry URL")))
            }
        })
        .await
    }

    async fn call_one(
        &self,
        base: &str,
        method: &reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
        what: &str,
    ) -> Result<Option<serde_json::Value>, SRCError> {
        let mut request = self
            .http()
            .await?
            .request(method.clone(), format!("{base}{path}"))
            .header(reqwest::header::ACCEPT, "application/vnd.schemaregistry.v1+json");
        if let Some(b) = body {
            request = request.header(reqwest::header::CONTENT_TYPE, "application/vnd.schemaregistry.v1+json").json(b);
        }
        if let Some((user, password)) = &self.settings.basic_auth {
            request = request.basic_auth(user, Some(password));
        }
        if let Some(token) = &self.settings.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| {
            SRCError::new("http call to schema registry failed", Some(crate::error_chain(&e.without_url())), true)
        })?;
        let status = response.status().as_u16();
        if status == 404 {
            return Ok(None);
        }
        let text = response.text().await.map_err(|e| {
            SRCError::new("reading the schema registry's answer failed", Some(crate::error_chain(&e)), true)
        })?;
        if !(200..300).contains(&status) {
            let retriable = status >= 500 || status == 408 || status == 429;
            let text: String = text.chars().take(500).collect();
            return Err(SRCError::new(&format!("{what} failed with status {status}: {text}"), None, retriable));
        }
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| SRCError::new(&format!("{what} answered with something other than JSON: {e}"), None, false))
    }

    fn field<'v, T>(
        &self,
        subject: &str,
        answer: &'v serde_json::Value,
        name: &str,
        get: impl Fn(&'v serde_json::Value) -> Option<T>,
    ) -> Result<T, EncodeError> {
        answer.get(name).and_then(get).ok_or_else(|| self.unexpected(subject, answer, name))
    }

    fn unexpected(&self, subject: &str, answer: &serde_json::Value, wanted: &str) -> EncodeError {
        let text: String = answer.to_string().chars().take(300).collect();
        EncodeError::Registry {
            url: self.url.clone(),
            subject: subject.to_owned(),
            reason: format!("expected {wanted} in the answer, got {text}"),
            source: Box::new(SRCError::non_retryable_without_cause("unexpected answer")),
        }
    }

    /// Runs `call` until it succeeds, a definite failure, or the retry policy's attempts are spent, classifying the
    /// failure from the registry's HTTP status (or its absence).
    async fn with_retries<T, F, Fut>(&self, subject: &str, call: F) -> Result<T, EncodeError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, SRCError>>,
    {
        let retry = self.settings.retry;
        let attempts = retry.attempts.max(1);
        let mut backoff = retry.initial_backoff;
        let mut attempt = 1;
        loop {
            let error = match call().await {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            let status = http_status(&error);
            let reason = describe(&error);
            let (url, subject) = (self.url.clone(), subject.to_owned());
            match status {
                Some(409) => return Err(EncodeError::IncompatibleSchema { url, subject, reason }),
                Some(422) => return Err(EncodeError::InvalidSchema { url, subject, reason }),
                Some(status @ (401 | 403)) => return Err(EncodeError::Unauthorized { url, subject, status }),
                _ if is_transient(&error, status) => {
                    if attempt >= attempts {
                        return Err(EncodeError::RegistryUnavailable {
                            url,
                            subject,
                            attempts,
                            reason,
                            source: Box::new(error),
                        });
                    }
                    tracing::warn!(
                        subject = %subject,
                        attempt,
                        backoff_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                        error = %reason,
                        "schema registry call failed, retrying"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(retry.max_backoff);
                    attempt += 1;
                }
                Some(404) => {
                    let reason = format!(
                        "{reason}; is schema_registry.url the base of a Confluent-compatible API (for Apicurio it \
                         ends in /apis/ccompat/v7)?"
                    );
                    return Err(EncodeError::Registry { url, subject, reason, source: Box::new(error) });
                }
                _ => return Err(EncodeError::Registry { url, subject, reason, source: Box::new(error) }),
            }
        }
    }
}

/// The subject of `topic`'s keys or values (TopicNameStrategy).
pub fn subject_name(topic: &str, is_key: bool) -> String {
    format!("{topic}-{}", if is_key { "key" } else { "value" })
}

/// The HTTP status of a registry error response, from the converter's message ("... failed with status 409 ...").
fn http_status(e: &SRCError) -> Option<u16> {
    let rest = e.error.split_once("with status ")?.1;
    rest.get(..3)?.parse().ok()
}

fn is_transient(e: &SRCError, status: Option<u16>) -> bool {
    match status {
        Some(s) => s >= 500 || s == 408 || s == 429,
        // No response at all: connection refused, DNS, timeout.
        None => e.retriable,
    }
}

/// The converter's message and the chain of causes under it ("... error sending request: ... Connection refused").
fn describe(e: &SRCError) -> String {
    let mut text = e.error.clone();
    let mut last = String::new();
    let mut cause = std::error::Error::source(e);
    if cause.is_none() {
        if let Some(c) = &e.cause {
            text.push_str(": ");
            text.push_str(c);
        }
    }
    while let Some(c) = cause {
        let piece = c.to_string();
        // reqwest repeats its inner error in its own message; skip exact repeats.
        if piece != last && !text.ends_with(&piece) {
            text.push_str(": ");
            text.push_str(&piece);
        }
        last = piece;
        cause = c.source();
    }
    text
}

/// Encodes record values. Implementations are shared by the pipeline's tasks.
pub trait ValueEncoder: Send + Sync + fmt::Debug {
    /// The record value for `event` in the Confluent wire format. Registers the schema on first use for a topic.
    fn encode<'a>(&'a self, event: &'a OutboxEvent) -> BoxFuture<'a, Result<Vec<u8>, EncodeError>>;
}

/// The Avro schema of the envelope with the given extra `["null","string"]` fields, as registry-ready JSON.
///
/// ```json
/// {"type": "record", "name": "OutboxEnvelope", "namespace": "io.outboxrelay", "fields": [
///   {"name": "id",             "type": "string"},
///   {"name": "aggregate_type", "type": "string"},
///   {"name": "aggregate_id",   "type": "string"},
///   {"name": "type",           "type": "string"},
///   {"name": "timestamp",      "type": {"type": "long", "logicalType": "timestamp-micros"}},
///   {"name": "payload",        "type": ["null", "string"], "default": null},
///   {"name": "<extra>",        "type": ["null", "string"], "default": null}, ...]}
/// ```
///
/// Adding an extra field later is a BACKWARD-compatible change (it has a default).
pub fn envelope_schema(extra_fields: &[String]) -> String {
    let field =
        |name: &str, ty: serde_json::Value, doc: &str| serde_json::json!({"name": name, "type": ty, "doc": doc});
    let optional = |name: &str, doc: &str| serde_json::json!({"name": name, "type": ["null", "string"], "default": null, "doc": doc});
    let mut fields = vec![
        field("id", "string".into(), "Event id (the outbox id column)."),
        field("aggregate_type", "string".into(), "Routing value (the aggregatetype column)."),
        field("aggregate_id", "string".into(), "Aggregate id; also the record key."),
        field("type", "string".into(), "Event type."),
        field(
            "timestamp",
            serde_json::json!({"type": "long", "logicalType": "timestamp-micros"}),
            "Event time: the configured timestamp column, or the commit time of the PostgreSQL transaction.",
        ),
        optional("payload", "The event payload as JSON text; null when the payload column is NULL."),
    ];
    fields.extend(extra_fields.iter().map(|name| optional(name, "Additional outbox column.")));
    serde_json::json!({
        "type": "record",
        "name": ENVELOPE_NAME,
        "namespace": ENVELOPE_NAMESPACE,
        "doc": "An outbox event relayed by outbox-relay.",
        "fields": fields,
    })
    .to_string()
}

fn is_avro_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Schema ids by topic, filled on first use. Read-locked on the hot path; written once per topic.
#[derive(Debug, Default)]
struct IdCache(RwLock<HashMap<String, SchemaId>>);

impl IdCache {
    #[inline]
    fn get(&self, topic: &str) -> Option<SchemaId> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).get(topic).copied()
    }

    fn insert(&self, topic: &str, id: SchemaId) {
        self.0.write().unwrap_or_else(PoisonError::into_inner).insert(topic.to_owned(), id);
    }
}

/// Value mode `envelope`: every event becomes an [`envelope_schema`] record, registered under `<topic>-value`.
#[derive(Debug)]
pub struct EnvelopeEncoder {
    registry: Arc<SchemaRegistry>,
    strategy: Strategy,
    schema: SuppliedSchema,
    extra_fields: Vec<String>,
    ids: IdCache,
}

impl EnvelopeEncoder {
    /// An encoder whose envelope has the fixed fields plus `extra_fields` (the envelope additional fields of every
    /// configured table and of the message outbox, without duplicates). Each must be an Avro name
    /// (`[A-Za-z_][A-Za-z0-9_]*`) other than the fixed fields.
    pub fn new(registry: Arc<SchemaRegistry>, extra_fields: Vec<String>) -> Result<EnvelopeEncoder, EncodeError> {
        for (i, name) in extra_fields.iter().enumerate() {
            if !is_avro_name(name) {
                return Err(EncodeError::Settings(format!(
                    "envelope field {name:?} is not an Avro name ([A-Za-z_][A-Za-z0-9_]*); give the additional field \
                     an alias"
                )));
            }
            if ENVELOPE_FIXED_FIELDS.contains(&name.as_str()) || extra_fields.get(..i).is_some_and(|p| p.contains(name))
            {
                return Err(EncodeError::Settings(format!("envelope field {name:?} is defined twice")));
            }
        }
        let schema = SuppliedSchema::new(
            Some(format!("{ENVELOPE_NAMESPACE}.{ENVELOPE_NAME}")),
            SchemaType::Avro,
            envelope_schema(&extra_fields),
        );
        Ok(EnvelopeEncoder { registry, strategy: Strategy::Topic, schema, extra_fields, ids: IdCache::default() })
    }

    /// Names subjects by `strategy` instead of `<topic>-value`.
    #[must_use]
    pub fn with_strategy(mut self, strategy: Strategy) -> EnvelopeEncoder {
        self.strategy = strategy;
        self
    }

    /// The schema registered for every topic.
    pub fn schema_json(&self) -> &str {
        &self.schema.schema
    }

    /// The schema id for `topic`, registering on first use.
    pub async fn schema_id(&self, topic: &str) -> Result<SchemaId, EncodeError> {
        if let Some(id) = self.ids.get(topic) {
            return Ok(id);
        }
        let (_, id) = self.registry.register_value(self.strategy, topic, &self.schema).await?;
        self.ids.insert(topic, id);
        Ok(id)
    }

    /// The wire-format bytes of `event` under schema `id`; no I/O.
    pub fn encode_with_id(&self, id: SchemaId, event: &OutboxEvent) -> Result<Vec<u8>, EncodeError> {
        let payload = match &event.payload {
            None => None,
            Some(p) => Some(p.text().ok_or_else(|| {
                EncodeError::Value {
                    event_id: event.id.clone(),
                    field: "payload".to_owned(),
                    reason:
                        "is bytes that are not UTF-8 text; the envelope carries the payload as a string (value_mode \
                         = \"payload\" passes bytes through)"
                            .to_owned(),
                }
            })?),
        };
        let payload_len = payload.map_or(0, str::len);
        let text_len = event.id.len() + event.aggregate_type.len() + event.aggregate_id.len() + event.event_type.len();
        let extra_len: usize = event.envelope_fields.iter().map(|(_, v)| v.as_ref().map_or(0, String::len) + 10).sum();
        let mut out = Vec::with_capacity(5 + 50 + text_len + payload_len + extra_len);
        out.push(MAGIC);
        out.extend_from_slice(&id.0.to_be_bytes());
        write_string(&mut out, &event.id);
        write_string(&mut out, &event.aggregate_type);
        write_string(&mut out, &event.aggregate_id);
        write_string(&mut out, &event.event_type);
        write_long(&mut out, event.timestamp.unix_micros());
        write_optional_string(&mut out, payload);
        for (i, name) in self.extra_fields.iter().enumerate() {
            // Events of one mapping carry their envelope fields in configuration order: try that position first.
            let value = match event.envelope_fields.get(i) {
                Some((n, v)) if n == name => Some(v),
                _ => event.envelope_fields.iter().find(|(n, _)| n == name).map(|(_, v)| v),
            };
            write_optional_string(&mut out, value.and_then(Option::as_deref));
        }
        if let Some((name, _)) = event.envelope_fields.iter().find(|(n, _)| !self.extra_fields.contains(n)) {
            return Err(EncodeError::Value {
                event_id: event.id.clone(),
                field: name.clone(),
                reason: "not a field of the envelope schema (is the relay's envelope built from every mapping?)"
                    .to_owned(),
            });
        }
        Ok(out)
    }
}

impl ValueEncoder for EnvelopeEncoder {
    fn encode<'a>(&'a self, event: &'a OutboxEvent) -> BoxFuture<'a, Result<Vec<u8>, EncodeError>> {
        Box::pin(async move {
            let id = self.schema_id(&event.topic).await?;
            self.encode_with_id(id, event)
        })
    }
}

/// The key and value encoders of a configuration, sharing one registry client: what `run` encodes with and what
/// `check` asks the registry about.
#[derive(Debug)]
pub struct Encoders {
    /// The registry client.
    pub registry: Arc<SchemaRegistry>,
    /// Record values, in the configured value mode.
    pub value: Arc<dyn ValueEncoder>,
    /// Record keys.
    pub key: Arc<KeyEncoder>,
    /// Value mode `registered`: the same encoder as `value`, for its schemas by event type.
    pub registered: Option<Arc<registered::RegisteredEncoder>>,
    /// The value schemas every topic may get (envelope, payload), with the strategy naming their subjects.
    fixed_values: Vec<SuppliedSchema>,
    strategy: Strategy,
}

impl Encoders {
    /// The encoders of `cfg`. One envelope schema serves every table and the message outbox, so a topic fed by two
    /// of them keeps one schema. Reads and compiles the schema files of value mode `registered`.
    pub fn new(cfg: &crate::config::Config, settings: &RegistrySettings) -> Result<Encoders, EncodeError> {
        let registry = Arc::new(SchemaRegistry::new(settings)?);
        let sr = &cfg.schema_registry;
        let strategy = sr.subject_name_strategy;
        let key = Arc::new(KeyEncoder::new(sr.key_format, Arc::clone(&registry)));
        let (value, registered, fixed_values): (Arc<dyn ValueEncoder>, _, _) = match sr.value_mode {
            ValueMode::Envelope => {
                let message_mapping = cfg.outbox.message_mapping();
                let extra =
                    crate::outbox::envelope_fields(cfg.outbox.tables.iter().chain(std::iter::once(&message_mapping)));
                let envelope = EnvelopeEncoder::new(Arc::clone(&registry), extra)?.with_strategy(strategy);
                let fixed = vec![envelope.schema.clone()];
                (Arc::new(envelope), None, fixed)
            }
            ValueMode::Payload => {
                let payload = registered::PayloadEncoder::new(Arc::clone(&registry));
                let fixed = payload.schemas().into_iter().cloned().collect();
                (Arc::new(payload), None, fixed)
            }
            ValueMode::Registered => {
                let schemas = registered::load_schemas(sr)?;
                let encoder = Arc::new(registered::RegisteredEncoder::new(Arc::clone(&registry), sr, schemas));
                (Arc::clone(&encoder) as Arc<dyn ValueEncoder>, Some(encoder), Vec::new())
            }
        };
        Ok(Encoders { registry, value, key, registered, fixed_values, strategy })
    }

    /// The schemas every record of `topic` is registered with, as `(subject, schema)`: the value schema of the
    /// envelope or payload mode and the Avro key's. Value mode `registered` has its own check, per event type
    /// (`schemas::check`).
    pub fn schemas_of(&self, topic: &str) -> Vec<(String, &SuppliedSchema)> {
        let mut schemas: Vec<(String, &SuppliedSchema)> = self
            .fixed_values
            .iter()
            .filter_map(|s| Some((self.strategy.value_subject(topic, s.name.as_deref())?, s)))
            .collect();
        if let KeyMode::Avro(avro) = &self.key.0 {
            schemas.push((subject_name(topic, true), &avro.schema));
        }
        schemas
    }
}

/// Encodes record keys: the aggregate id as UTF-8 bytes, or as an Avro `"string"` registered under `<topic>-key`.
#[derive(Debug)]
pub struct KeyEncoder(KeyMode);

#[derive(Debug)]
enum KeyMode {
    String,
    Avro(Box<AvroKey>),
}

#[derive(Debug)]
struct AvroKey {
    registry: Arc<SchemaRegistry>,
    schema: SuppliedSchema,
    ids: IdCache,
}

impl KeyEncoder {
    /// The encoder for a configured key format.
    pub fn new(format: KeyFormat, registry: Arc<SchemaRegistry>) -> KeyEncoder {
        match format {
            KeyFormat::String => KeyEncoder::string(),
            KeyFormat::Avro => KeyEncoder::avro(registry),
        }
    }

    /// Plain UTF-8 bytes (the default; what Kafka Connect's StringConverter writes).
    pub fn string() -> KeyEncoder {
        KeyEncoder(KeyMode::String)
    }

    /// An Avro `"string"` in the Confluent wire format, registered under `<topic>-key`.
    pub fn avro(registry: Arc<SchemaRegistry>) -> KeyEncoder {
        let schema = SuppliedSchema::new(None, SchemaType::Avro, r#""string""#.to_owned());
        KeyEncoder(KeyMode::Avro(Box::new(AvroKey { registry, schema, ids: IdCache::default() })))
    }

    /// The record key of `event`.
    pub async fn encode(&self, event: &OutboxEvent) -> Result<Vec<u8>, EncodeError> {
        match &self.0 {
            KeyMode::String => Ok(event.aggregate_id.as_bytes().to_vec()),
            KeyMode::Avro(avro) => {
                let id = match avro.ids.get(&event.topic) {
                    Some(id) => id,
                    None => {
                        let id = avro.registry.register(&event.topic, true, &avro.schema).await?;
                        avro.ids.insert(&event.topic, id);
                        id
                    }
                };
                let mut out = Vec::with_capacity(5 + 10 + event.aggregate_id.len());
                out.push(MAGIC);
                out.extend_from_slice(&id.0.to_be_bytes());
                write_string(&mut out, &event.aggregate_id);
                Ok(out)
            }
        }
    }
}

#[inline]
fn write_long(out: &mut Vec<u8>, v: i64) {
    // Zig-zag, then little-endian base-128 varint.
    let mut n = ((v << 1) ^ (v >> 63)) as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

#[inline]
fn write_string(out: &mut Vec<u8>, s: &str) {
    write_long(out, i64::try_from(s.len()).unwrap_or(i64::MAX));
    out.extend_from_slice(s.as_bytes());
}

#[inline]
fn write_optional_string(out: &mut Vec<u8>, s: Option<&str>) {
    // Union ["null", "string"]: branch index, then the value.
    match s {
        None => write_long(out, 0),
        Some(s) => {
            write_long(out, 1);
            write_string(out, s);
        }
    }
}

/// A decoded wire-format value.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedValue {
    /// The writer schema's id.
    pub schema_id: SchemaId,
    /// The writer schema's full name, for a record.
    pub name: Option<String>,
    /// The value as JSON (unions unwrapped, timestamps as numbers).
    pub json: serde_json::Value,
}

/// Reads Confluent wire-format Avro values back, fetching writer schemas by id (cached). For tests, tooling and
/// the README's "read it back decoded".
#[derive(Debug)]
pub struct RegistryDecoder {
    decoder: AvroDecoder,
}

impl RegistryDecoder {
    /// A decoder using `settings`.
    pub fn new(settings: &RegistrySettings) -> Result<RegistryDecoder, EncodeError> {
        Ok(RegistryDecoder { decoder: AvroDecoder::new(settings.sr_settings()?) })
    }

    /// Decodes `bytes` (`0x00 | id | Avro binary`).
    pub async fn decode(&self, bytes: &[u8]) -> Result<DecodedValue, DecodeError> {
        let id = match bytes {
            [MAGIC, a, b, c, d, ..] => SchemaId(u32::from_be_bytes([*a, *b, *c, *d])),
            _ => {
                let source = Box::new(SRCError::non_retryable_without_cause("not in the Confluent wire format"));
                return Err(DecodeError { reason: "expected 0x00 and a 4-byte schema id".to_owned(), source });
            }
        };
        self.decoder.remove_errors_from_cache();
        let decoded = self
            .decoder
            .decode(Some(bytes))
            .await
            .map_err(|e| DecodeError { reason: format!("schema id {id}: {}", describe(&e)), source: Box::new(e) })?;
        let json = serde_json::Value::try_from(decoded.value).map_err(|e| DecodeError {
            reason: format!("schema id {id}: {e}"),
            source: Box::new(SRCError::non_retryable_without_cause("value has no JSON form")),
        })?;
        Ok(DecodedValue { schema_id: id, name: decoded.name.map(|n| n.fullname(None)), json })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::pg::lsn::{Lsn, PgTimestamp};
    use apache_avro::Schema;
    use apache_avro::types::Value;

    fn encoder(extra: &[&str]) -> EnvelopeEncoder {
        let registry = Arc::new(SchemaRegistry::new(&RegistrySettings::new("http://127.0.0.1:1")).unwrap());
        EnvelopeEncoder::new(registry, extra.iter().map(|s| (*s).to_owned()).collect()).unwrap()
    }

    /// The TLS library checks the client certificate against its key only when the HTTP client is built, which now
    /// happens in the background; the registry client must refuse a mismatch at once, before a start fences.
    #[test]
    fn a_client_key_that_is_not_the_certificates_is_refused_when_the_registry_client_is_made() {
        use openssl::pkey::PKey;
        use openssl::rsa::Rsa;

        let key = || PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let (mine, other) = (key(), key());
        let dir = tempfile::tempdir().unwrap();
        let write = |file: &str, pem: Vec<u8>| {
            let path = dir.path().join(file);
            std::fs::write(&path, pem).unwrap();
            path.display().to_string()
        };
        let cert_file = write("relay.crt", crate::pg::conninfo::self_signed_pem_for("relay", &mine));
        let good = write("relay.key", mine.private_key_to_pem_pkcs8().unwrap());
        let bad = write("other.key", other.private_key_to_pem_pkcs8().unwrap());
        let settings = |key: &str| {
            let mut s = RegistrySettings::new("https://127.0.0.1:1");
            s.tls_client = Some((cert_file.clone(), key.to_owned()));
            s
        };
        assert!(SchemaRegistry::new(&settings(&good)).is_ok());
        let err = SchemaRegistry::new(&settings(&bad)).unwrap_err().to_string();
        assert!(err.contains("tls_key_file") && err.contains("other.key") && err.contains("fix:"), "{err}");
    }

    fn event() -> OutboxEvent {
        OutboxEvent {
            id: "e-1".into(),
            aggregate_type: "order".into(),
            aggregate_id: "o-42".into(),
            event_type: "OrderCreated".into(),
            timestamp: PgTimestamp(-5),
            payload: Some(r#"{"total":7,"note":"ünïcødé"}"#.into()),
            topic: "outbox.event.order".into(),
            partition: None,
            headers: vec![],
            envelope_fields: vec![("tenant".into(), Some("acme".into())), ("region".into(), None)],
            source: "public.outbox".into(),
            commit_lsn: Lsn(1),
        }
    }

    /// The same event through apache-avro's generic writer.
    fn reference_encoding(schema_json: &str, ev: &OutboxEvent, extra: &[&str]) -> Vec<u8> {
        let schema = Schema::parse_str(schema_json).unwrap();
        let opt = |v: Option<&str>| match v {
            None => Value::Union(0, Box::new(Value::Null)),
            Some(s) => Value::Union(1, Box::new(Value::String(s.to_owned()))),
        };
        let mut fields = vec![
            ("id".to_owned(), Value::String(ev.id.clone())),
            ("aggregate_type".to_owned(), Value::String(ev.aggregate_type.clone())),
            ("aggregate_id".to_owned(), Value::String(ev.aggregate_id.clone())),
            ("type".to_owned(), Value::String(ev.event_type.clone())),
            ("timestamp".to_owned(), Value::TimestampMicros(ev.timestamp.unix_micros())),
            ("payload".to_owned(), opt(ev.payload.as_ref().and_then(crate::outbox::Payload::text))),
        ];
        for name in extra {
            let v = ev.envelope_fields.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.as_deref());
            fields.push(((*name).to_owned(), opt(v)));
        }
        apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
            .build()
            .unwrap()
            .write_value_to_vec(Value::Record(fields))
            .unwrap()
    }

    #[test]
    fn envelope_bytes_match_apache_avro() {
        let extra = ["tenant", "region"];
        let enc = encoder(&extra);
        let ev = event();
        let bytes = enc.encode_with_id(SchemaId(0x0102_0304), &ev).unwrap();
        assert_eq!(&bytes[..5], &[0, 1, 2, 3, 4]);
        assert_eq!(&bytes[5..], reference_encoding(enc.schema_json(), &ev, &extra).as_slice());
        // Fields in another order, and a missing one, still land in schema order (missing = null).
        let mut ev2 = ev.clone();
        ev2.envelope_fields = vec![("region".into(), Some("eu".into()))];
        ev2.payload = None;
        let bytes = enc.encode_with_id(SchemaId(7), &ev2).unwrap();
        assert_eq!(&bytes[5..], reference_encoding(enc.schema_json(), &ev2, &extra).as_slice());
    }

    #[test]
    fn unknown_envelope_field_names_event_and_field() {
        let enc = encoder(&["tenant"]);
        let e = enc.encode_with_id(SchemaId(1), &event()).unwrap_err();
        assert!(
            matches!(&e, EncodeError::Value { event_id, field, .. } if event_id == "e-1" && field == "region"),
            "{e}"
        );
        assert!(!e.is_transient());
    }

    #[test]
    fn envelope_field_names_are_checked() {
        let registry = Arc::new(SchemaRegistry::new(&RegistrySettings::new("http://127.0.0.1:1")).unwrap());
        for bad in [vec!["1abc"], vec!["a-b"], vec![""], vec!["payload"], vec!["x", "x"]] {
            let names = bad.iter().map(|s| (*s).to_owned()).collect();
            assert!(matches!(EnvelopeEncoder::new(registry.clone(), names), Err(EncodeError::Settings(_))), "{bad:?}");
        }
    }

    #[test]
    fn envelope_schema_parses_with_logical_type_and_defaults() {
        let schema = Schema::parse_str(&envelope_schema(&["tenant".to_owned()])).unwrap();
        let Schema::Record(record) = schema else { panic!("not a record") };
        assert_eq!(record.name.fullname(None), "io.outboxrelay.OutboxEnvelope");
        let names: Vec<_> = record.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["id", "aggregate_type", "aggregate_id", "type", "timestamp", "payload", "tenant"]);
        assert_eq!(record.fields[4].schema, Schema::TimestampMicros);
        assert_eq!(record.fields[6].default, Some(serde_json::Value::Null));
    }

    proptest::proptest! {
        #[test]
        fn longs_and_strings_match_apache_avro(v: i64, s in "\\PC{0,300}") {
            let mut ours = Vec::new();
            write_long(&mut ours, v);
            write_string(&mut ours, &s);
            let write = |schema: &Schema, value: Value| {
                apache_avro::writer::datum::GenericDatumWriter::builder(schema).build().unwrap().write_value_to_vec(value).unwrap()
            };
            let mut theirs = write(&Schema::Long, Value::Long(v));
            theirs.extend(write(&Schema::String, Value::String(s.clone())));
            proptest::prop_assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn registry_settings_take_credentials_out_of_the_url() {
        let s = RegistrySettings::new("http://u%40x:p%3Aw@127.0.0.1:8081/apis/ccompat/v7/");
        assert_eq!(s.url(), "http://127.0.0.1:8081/apis/ccompat/v7");
        assert_eq!(s.basic_auth, Some(("u@x".to_owned(), "p:w".to_owned())));
        assert!(!format!("{s:?}").contains("p:w"));
    }

    #[test]
    fn status_is_read_from_converter_errors() {
        let e = SRCError::new("HTTP request to schema registry failed with status 409 Conflict", None, false);
        assert_eq!(http_status(&e), Some(409));
        assert_eq!(http_status(&SRCError::new("http call to schema registry failed", None, true)), None);
        assert!(is_transient(&SRCError::new("x", None, false), Some(500)));
        assert!(!is_transient(&SRCError::new("x", None, true), Some(404)));
        assert!(is_transient(&SRCError::new("x", None, true), None));
    }
}
