//! Evolution checks of the local schemas (value mode `registered`) against the registry, before they reach it:
//! `outbox-relay schemas check` (a CI gate), `outbox-relay schemas register`, and the relay's refusal to start.
//!
//! Invariant: a local schema is reported compatible only when both our reading of the subject's compatibility level
//! (BACKWARD when the registry names none) against the versions that level compares with, and the registry's own
//! verdict, say so; every refusal names the event type, the file, the subject, and for each problem the field path,
//! the rule and the safe path. `register` registers nothing unless every schema passed.
//!
//! Which subjects a local schema is checked against follows the subject name strategy: `record` has exactly one
//! (the record's full name); `topic_record` every existing `<topic>-<full name>` whose topic a configured route can
//! produce; `topic` every existing `<topic>-value` of such a topic whose latest version is the same record. Topics
//! given explicitly (`--topic`) add their subjects even when they do not exist yet.

use std::fmt;

use apache_avro::Schema;

use super::compat::{self, Level, Problem};
use super::config::{SchemaSource, SubjectNameStrategy};
use super::registered::{EventSchema, LocalSchema, RegisteredEncoder};
use super::{EncodeError, SchemaId, SchemaRegistry};
use crate::config::{Config, ROUTED_BY_VALUE};

/// What the registry would make of one local schema under one subject.
#[derive(Debug)]
pub struct Verdict {
    /// The event type.
    pub event_type: String,
    /// The schema's file.
    pub origin: String,
    /// The subject.
    pub subject: String,
    /// The topic the subject belongs to (empty for RecordNameStrategy).
    pub topic: String,
    /// What was found.
    pub outcome: Outcome,
}

/// The outcome for one subject.
#[derive(Debug)]
pub enum Outcome {
    /// The subject does not exist: the schema would be its first version.
    NewSubject,
    /// The subject holds this very schema already.
    AlreadyRegistered(SchemaId),
    /// Compatible under `level` with the versions compared.
    Compatible {
        /// The subject's effective level.
        level: Level,
        /// The versions compared with.
        versions: Vec<u32>,
    },
    /// Refused: by our reading of `level`, by the registry, or both.
    Incompatible {
        /// The subject's effective level.
        level: Level,
        /// The problems found, field by field.
        problems: Vec<Problem>,
        /// The registry's own messages when it refused (may repeat the problems in its words).
        registry: Vec<String>,
    },
    /// Registered by `schemas register`.
    Registered(SchemaId),
}

impl Verdict {
    /// Whether this subject would refuse the schema.
    pub fn is_refused(&self) -> bool {
        matches!(self.outcome, Outcome::Incompatible { .. })
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head = format!("{} ({}) -> subject {}", self.event_type, self.origin, self.subject);
        match &self.outcome {
            Outcome::NewSubject => write!(f, "ok    {head}: new subject, this schema becomes version 1"),
            Outcome::AlreadyRegistered(id) => write!(f, "ok    {head}: already registered as id {id}"),
            Outcome::Registered(id) => write!(f, "done  {head}: registered as id {id}"),
            Outcome::Compatible { level, versions } => {
                write!(f, "ok    {head}: compatible ({level} against version {})", join(versions))
            }
            Outcome::Incompatible { level, problems, registry } => {
                write!(f, "FAIL  {head}: incompatible under {level}")?;
                for p in problems {
                    write!(f, "\n      - {p}")?;
                }
                if problems.is_empty() {
                    write!(f, "\n      - the registry refused it: {}", registry.join("; "))?;
                    write!(
                        f,
                        "\n        Safe path: add new fields with defaults, keep the old ones until every consumer \
                         moved, then drop them in a later version."
                    )?;
                }
                Ok(())
            }
        }
    }
}

fn join(versions: &[u32]) -> String {
    versions.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}

/// Checks every local schema of `encoder` against the subjects it will be (or is) registered under; `topics` adds
/// subjects of topics that may not exist yet.
pub async fn check(
    registry: &SchemaRegistry,
    config: &Config,
    encoder: &RegisteredEncoder,
    topics: &[String],
) -> Result<Vec<Verdict>, EncodeError> {
    let strategy = config.schema_registry.subject_name_strategy;
    let templates = route_templates(config);
    let mut existing: Option<Vec<String>> = None;
    let mut verdicts = Vec::new();
    for schema in encoder.schemas().values() {
        let (SchemaSource::File(_), Some(local)) = (&schema.source, &schema.local) else { continue };
        let name = match local.plan.name() {
            Some(name) => name,
            // An unnamed schema (a bare array, say) has no record to follow across subjects: only the subjects of
            // topics named with --topic are checked.
            None if strategy == SubjectNameStrategy::Topic => "",
            None => {
                return Err(EncodeError::Settings(format!(
                    "{}: subject_name_strategy {strategy:?} needs a named schema (a record); this one has no name",
                    local.file.display()
                )));
            }
        };
        let mut subjects: Vec<(String, String)> = Vec::new();
        match strategy {
            SubjectNameStrategy::Record => subjects.push((name.to_owned(), String::new())),
            SubjectNameStrategy::Topic | SubjectNameStrategy::TopicRecord => {
                if existing.is_none() {
                    existing = Some(registry.subjects().await?);
                }
                let suffix = match strategy {
                    SubjectNameStrategy::Topic => "-value".to_owned(),
                    _ => format!("-{name}"),
                };
                for subject in existing.iter().flatten().filter(|_| !name.is_empty()) {
                    let Some(topic) = subject.strip_suffix(&suffix) else { continue };
                    if !templates.iter().any(|t| could_route_to(t, topic)) {
                        continue;
                    }
                    if strategy == SubjectNameStrategy::Topic && !latest_is_named(registry, subject, name).await? {
                        // Under TopicNameStrategy a subject holds whichever record its topic carries; only the
                        // lineage of this record is its to keep compatible.
                        continue;
                    }
                    subjects.push((subject.clone(), topic.to_owned()));
                }
                for topic in topics {
                    if let Some(subject) = strategy.value_subject(topic, Some(name)) {
                        if !subjects.iter().any(|(s, _)| *s == subject) {
                            subjects.push((subject, topic.clone()));
                        }
                    }
                }
            }
        }
        for (subject, topic) in subjects {
            let outcome = judge(registry, local, &subject).await?;
            verdicts.push(Verdict {
                event_type: schema.event_type.clone(),
                origin: schema.origin(),
                subject,
                topic,
                outcome,
            });
        }
    }
    Ok(verdicts)
}

/// The outcome of registering `local` under `subject`.
async fn judge(registry: &SchemaRegistry, local: &LocalSchema, subject: &str) -> Result<Outcome, EncodeError> {
    let versions = registry.versions(subject).await?;
    if versions.is_empty() {
        return Ok(Outcome::NewSubject);
    }
    if let Some(id) = registry.lookup(subject, &local.supplied.schema).await? {
        return Ok(Outcome::AlreadyRegistered(id));
    }
    let level = registry.compatibility_level(subject).await?.and_then(|l| Level::parse(&l)).unwrap_or(Level::Backward);
    let compared: Vec<u32> = match level {
        Level::BackwardTransitive | Level::ForwardTransitive | Level::FullTransitive => versions.clone(),
        _ => versions.last().copied().into_iter().collect(),
    };
    let mut existing = Vec::new();
    if level != Level::None {
        for v in &compared {
            let Some(registered) = registry.version(subject, &v.to_string()).await? else { continue };
            let schema = Schema::parse_str(&registered.schema).map_err(|e| {
                EncodeError::Settings(format!("subject {subject} version {v} is not an Avro schema we can read: {e}"))
            })?;
            existing.push((*v, schema));
        }
    }
    let problems = compat::check(level, &local.schema, &existing);
    let registry_messages = match registry.registry_verdict(subject, &local.supplied.schema).await? {
        Some((false, messages)) => Some(messages),
        _ => None,
    };
    if problems.is_empty() && registry_messages.is_none() {
        return Ok(Outcome::Compatible { level, versions: compared });
    }
    Ok(Outcome::Incompatible { level, problems, registry: registry_messages.unwrap_or_default() })
}

async fn latest_is_named(registry: &SchemaRegistry, subject: &str, name: &str) -> Result<bool, EncodeError> {
    let Some(latest) = registry.version(subject, "latest").await? else { return Ok(false) };
    Ok(Schema::parse_str(&latest.schema).is_ok_and(|s| match s {
        Schema::Record(r) => r.name.fullname(None) == name,
        _ => false,
    }))
}

/// Registers every schema the verdicts found compatible (or new), after checking that none was refused.
pub async fn register(
    registry: &SchemaRegistry,
    config: &Config,
    encoder: &RegisteredEncoder,
    verdicts: &mut [Verdict],
) -> Result<(), EncodeError> {
    if verdicts.iter().any(Verdict::is_refused) {
        return Err(EncodeError::SchemasIncompatible(refusal_text(verdicts)));
    }
    let strategy = config.schema_registry.subject_name_strategy;
    for v in verdicts.iter_mut() {
        if !matches!(v.outcome, Outcome::NewSubject | Outcome::Compatible { .. }) {
            continue;
        }
        let Some(EventSchema { local: Some(local), .. }) = encoder.schemas().get(&v.event_type) else { continue };
        let (subject, id) = registry.register_value(strategy, &v.topic, &local.supplied).await?;
        debug_assert_eq!(subject, v.subject);
        v.outcome = Outcome::Registered(id);
    }
    Ok(())
}

/// The refused verdicts as one text, for the start-up refusal.
pub fn refusal_text(verdicts: &[Verdict]) -> String {
    let lines: Vec<String> = verdicts.iter().filter(|v| v.is_refused()).map(ToString::to_string).collect();
    lines.join("\n")
}

/// The relay's start-up gate: fails with every refusal when a local schema is incompatible with its subject.
pub async fn refuse_incompatible(
    registry: &SchemaRegistry,
    config: &Config,
    encoder: &RegisteredEncoder,
) -> Result<(), EncodeError> {
    let verdicts = check(registry, config, encoder, &[]).await?;
    if verdicts.iter().any(Verdict::is_refused) {
        return Err(EncodeError::SchemasIncompatible(refusal_text(&verdicts)));
    }
    Ok(())
}

/// The route templates whose topics carry the relay's values: every table's and the message outbox's.
fn route_templates(config: &Config) -> Vec<String> {
    let mut templates: Vec<String> = config.outbox.tables.iter().map(|t| t.route_topic_replacement.clone()).collect();
    if config.outbox.messages.enabled {
        templates.push(config.outbox.message_mapping().route_topic_replacement);
    }
    templates
}

/// Whether `template` renders `topic` for some routing value.
fn could_route_to(template: &str, topic: &str) -> bool {
    let pieces: Vec<&str> = template.split(ROUTED_BY_VALUE).collect();
    match pieces.as_slice() {
        [fixed] => *fixed == topic,
        [first, .., last] => {
            topic.len() > first.len() + last.len() && topic.starts_with(first) && topic.ends_with(last)
        }
        [] => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn topics_match_route_templates() {
        assert!(could_route_to("outbox.event.${routedByValue}", "outbox.event.order"));
        assert!(!could_route_to("outbox.event.${routedByValue}", "outbox.event."));
        assert!(!could_route_to("outbox.event.${routedByValue}", "other.order"));
        assert!(could_route_to("orders", "orders"));
        assert!(could_route_to("${routedByValue}.events", "order.events"));
        assert!(!could_route_to("orders", "orders2"));
    }
}
