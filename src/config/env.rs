//! Configuration from environment variables: one generic scheme for every key.
//!
//! `OUTBOX_RELAY_` + the key's path in upper case, sections separated by `__`: `kafka.max_batch_ms` is
//! `OUTBOX_RELAY_KAFKA__MAX_BATCH_MS`, `outbox.tables[0].table` is `OUTBOX_RELAY_OUTBOX__TABLES__0__TABLE` (an index
//! one past the end adds an element). Inside the free-form maps `kafka.properties` and
//! `kafka.topic_creation.configs` a `_` stands for the `.` of librdkafka and topic property names:
//! `OUTBOX_RELAY_KAFKA__PROPERTIES__SASL_PASSWORD` is `kafka.properties."sasl.password"`. Any variable may instead
//! end in `_FILE` and name a file holding the value (trailing newlines dropped), as Kubernetes and Docker mount
//! secrets. A set variable wins over the file's value; an empty one is ignored.
//!
//! Invariant: a variable either sets exactly the key its name spells, converted to the type that key has (the
//! type of the file's value or of the default), or loading fails naming the variable. A value read from a variable
//! is never echoed in an error, since it may be a secret.

use std::collections::BTreeMap;

use toml::{Table, Value};

use super::{Config, Problem};

/// Prefix of every configuration variable.
pub const PREFIX: &str = "OUTBOX_RELAY_";
/// Suffix of a variable naming a file that holds the value.
pub const FILE_SUFFIX: &str = "_FILE";
/// Variables with the prefix that the command line reads itself, not configuration keys.
pub const NOT_KEYS: &[&str] = &[super::CONFIG_PATH_ENV, crate::failpoint::ENV];

/// Names of the first release, before the generic scheme; still accepted, for the key they name.
pub const ALIASES: &[(&str, &str)] = &[
    ("OUTBOX_RELAY_POSTGRES_URL", "postgres.url"),
    ("OUTBOX_RELAY_KAFKA_BOOTSTRAP_SERVERS", "kafka.bootstrap_servers"),
    ("OUTBOX_RELAY_KAFKA_TRANSACTIONAL_ID", "kafka.transactional_id"),
    ("OUTBOX_RELAY_SCHEMA_REGISTRY_URL", "schema_registry.url"),
    ("OUTBOX_RELAY_SCHEMA_REGISTRY_USERNAME", "schema_registry.username"),
    ("OUTBOX_RELAY_SCHEMA_REGISTRY_PASSWORD", "schema_registry.password"),
    ("OUTBOX_RELAY_METRICS_LISTEN", "metrics.listen"),
];

/// Maps with free-form keys (`_` in a variable name stands for `.` in the key).
const MAPS: &[&str] = &["kafka.properties", "kafka.topic_creation.configs"];

/// The generic variable name of a key given as dotted path segments (`["kafka", "max_batch_ms"]`).
pub fn var_name(path: &[&str]) -> String {
    let mut name = PREFIX.to_owned();
    name.push_str(&path.iter().map(|s| s.to_ascii_uppercase().replace('.', "_")).collect::<Vec<_>>().join("__"));
    name
}

/// What the environment sets, by key (`kafka.max_batch_ms`, `outbox.tables[0].table`), with the variable.
#[derive(Debug, Default)]
pub struct Applied {
    /// Key as validation problems name it -> variable.
    pub vars: BTreeMap<String, String>,
    /// Variables with the prefix that name no key (typos, or another program's); worth a warning.
    pub ignored: Vec<String>,
}

/// Applies the variables in `env` (name, value) to `table`, the parsed file. Returns what was set, or the problems.
pub fn apply(table: &mut Table, env: &[(&str, &str)]) -> Result<Applied, Vec<Problem>> {
    let defaults = Value::try_from(Config::default()).ok().and_then(|v| v.as_table().cloned()).unwrap_or_default();
    let mut applied = Applied::default();
    let mut problems = Vec::new();
    // Aliases first, so that the generic name wins when both are set.
    let mut ordered: Vec<(&str, &str)> = env.to_vec();
    ordered.sort_by_key(|(name, _)| !is_alias(name.strip_suffix(FILE_SUFFIX).unwrap_or(name)));
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in ordered {
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        if NOT_KEYS.contains(&name) || value.is_empty() || rest.is_empty() {
            continue;
        }
        let (base, from_file) = match name.strip_suffix(FILE_SUFFIX) {
            Some(base) if resolve(base, &defaults).is_some() => (base, true),
            _ => (name, false),
        };
        let Some(path) = resolve(base, &defaults) else {
            if base.contains("__") {
                problems.push(Problem {
                    key: name.to_owned(),
                    message: "names no configuration key: OUTBOX_RELAY_ + the key's path in upper case with sections \
                              separated by __, e.g. OUTBOX_RELAY_KAFKA__MAX_BATCH_MS (see the README's configuration \
                              reference)"
                        .to_owned(),
                });
            } else {
                applied.ignored.push(name.to_owned());
            }
            continue;
        };
        let key = display_key(&path);
        if let Some(other) = seen.get(&key).filter(|other| !is_alias(other.strip_suffix(FILE_SUFFIX).unwrap_or(other)))
        {
            problems.push(Problem {
                key: format!("{key} (from environment variables {other} and {name})"),
                message: "is set twice; set one of them".to_owned(),
            });
            continue;
        }
        seen.insert(key.clone(), name.to_owned());
        let text = if from_file {
            match std::fs::read_to_string(value) {
                Ok(text) => text.trim_end_matches(['\n', '\r']).to_owned(),
                Err(e) => {
                    problems.push(Problem {
                        key: format!("{key} (from environment variable {name})"),
                        message: format!("cannot read the file `{value}`: {e}"),
                    });
                    continue;
                }
            }
        } else {
            value.to_owned()
        };
        match set(table, &defaults, &path, text) {
            Ok(()) => {
                applied.vars.insert(key, name.to_owned());
            }
            Err(message) => {
                problems.push(Problem { key: format!("{key} (from environment variable {name})"), message })
            }
        }
    }
    if problems.is_empty() { Ok(applied) } else { Err(problems) }
}

fn is_alias(name: &str) -> bool {
    ALIASES.iter().any(|(alias, _)| *alias == name)
}

/// The key path a variable name (without `_FILE`) spells, if it spells one of the shape of `defaults` (the default
/// configuration as a table).
fn resolve(name: &str, defaults: &Table) -> Option<Vec<String>> {
    if let Some((_, key)) = ALIASES.iter().find(|(alias, _)| *alias == name) {
        return Some(key.split('.').map(str::to_owned).collect());
    }
    let rest = name.strip_prefix(PREFIX)?;
    let raw: Vec<&str> = rest.split("__").collect();
    if raw.iter().any(|s| s.is_empty()) {
        return None;
    }
    let mut path: Vec<String> = Vec::with_capacity(raw.len());
    for segment in raw {
        let in_map = MAPS.iter().any(|m| *m == path.join("."));
        let segment = segment.to_ascii_lowercase();
        path.push(if in_map { segment.replace('_', ".") } else { segment });
    }
    // Only names whose first segment is a section or a top-level key; the rest is checked when setting.
    let first = path.first()?;
    let top = defaults.get(first.as_str())?;
    (top.is_table() == (path.len() > 1)).then_some(path)
}

/// `outbox.tables[0].table` for the path `outbox, tables, 0, table`.
fn display_key(path: &[String]) -> String {
    let mut key = String::new();
    for segment in path {
        if segment.parse::<usize>().is_ok() {
            key.push_str(&format!("[{segment}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(segment);
        }
    }
    key
}

/// Sets `path` in `table` to `text`, converted to the type of the value already there (file or default).
fn set(table: &mut Table, defaults: &Table, path: &[String], text: String) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut here = table;
    let mut reference_table: Option<&Table> = Some(defaults);
    let mut walked: Vec<&str> = Vec::new();
    for (i, segment) in parents.iter().enumerate() {
        let next_is_index = path.get(i + 1).is_some_and(|s| s.parse::<usize>().is_ok());
        if let Ok(index) = segment.parse::<usize>() {
            return Err(format!(
                "index {index} must follow an array of tables, e.g. OUTBOX_RELAY_OUTBOX__TABLES__0__TABLE"
            ));
        }
        let default_here = reference_table.and_then(|t| t.get(segment.as_str()));
        if next_is_index {
            // An array of tables: outbox.tables, outbox.tables[n].additional_fields.
            let Some(Value::Array(default_array)) = default_here else {
                return Err(format!("`{}` is not a list", walked_key(&walked, segment)));
            };
            let index: usize = path.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or(0);
            let entry = here.entry(segment.clone()).or_insert_with(|| Value::Array(default_array.clone()));
            let Value::Array(array) = entry else { return Err(format!("`{segment}` is not a list")) };
            if index > array.len() {
                return Err(format!("index {index} skips elements: the list has {} element(s)", array.len()));
            }
            if index == array.len() {
                array.push(Value::Table(Table::new()));
            }
            // The reference for the element's fields: the default list's first element, if it has one.
            reference_table = default_array.first().and_then(Value::as_table);
            let Some(Value::Table(element)) = array.get_mut(index) else {
                return Err(format!("`{segment}[{index}]` is not a table"));
            };
            // Skip the index segment in the loop below by descending here.
            here = element;
            walked.push(segment);
            return set_in(here, reference_table, path.get(i + 2..).unwrap_or_default(), text, &walked);
        }
        reference_table = default_here.and_then(Value::as_table);
        if reference_table.is_none() && here.get(segment.as_str()).is_none_or(|v| !v.is_table()) {
            return Err(format!("`{}` is not a section", walked_key(&walked, segment)));
        }
        let entry = here.entry(segment.clone()).or_insert_with(|| Value::Table(Table::new()));
        let Value::Table(inner) = entry else { return Err(format!("`{segment}` is not a section")) };
        here = inner;
        walked.push(segment);
    }
    let map = MAPS.contains(&walked.join(".").as_str());
    let reference = reference_table.and_then(|t| t.get(last.as_str())).or_else(|| here.get(last.as_str())).cloned();
    if !map && reference.is_none() {
        return Err(format!("`{last}` is not a key of [{}]", walked.join(".")));
    }
    let value = convert(reference.as_ref(), text)?;
    here.insert(last.clone(), value);
    Ok(())
}

/// The rest of [`set`] below an array element (which may itself hold an array of tables).
fn set_in(
    here: &mut Table,
    reference: Option<&Table>,
    path: &[String],
    text: String,
    walked: &[&str],
) -> Result<(), String> {
    let Some((first, rest)) = path.split_first() else {
        return Err("a list element needs a key after its index".to_owned());
    };
    if rest.is_empty() {
        let current = reference.and_then(|t| t.get(first.as_str())).or_else(|| here.get(first.as_str())).cloned();
        if reference.is_some() && current.is_none() {
            return Err(format!("`{first}` is not a key of {}[]", walked.join(".")));
        }
        let value = convert(current.as_ref(), text)?;
        here.insert(first.clone(), value);
        return Ok(());
    }
    // A nested array of tables, e.g. additional_fields.
    let mut sub = Table::new();
    let default_list = reference.and_then(|t| t.get(first.as_str())).cloned();
    sub.insert(first.clone(), here.get(first.as_str()).cloned().or(default_list).unwrap_or(Value::Array(Vec::new())));
    let mut defaults = Table::new();
    // No default element for nested lists: their fields are strings.
    defaults.insert(first.clone(), Value::Array(Vec::new()));
    let mut full = vec![first.clone()];
    full.extend(rest.iter().cloned());
    set(&mut sub, &defaults, &full, text)?;
    if let Some(v) = sub.remove(first.as_str()) {
        here.insert(first.clone(), v);
    }
    Ok(())
}

fn walked_key(walked: &[&str], segment: &str) -> String {
    let mut all = walked.to_vec();
    all.push(segment);
    all.join(".")
}

/// Converts a variable's text to the type of `reference` (a string when there is none).
fn convert(reference: Option<&Value>, text: String) -> Result<Value, String> {
    match reference {
        Some(Value::Integer(_)) => {
            text.trim().parse::<i64>().map(Value::Integer).map_err(|_| "expected a whole number".to_owned())
        }
        Some(Value::Float(_)) => {
            text.trim().parse::<f64>().map(Value::Float).map_err(|_| "expected a number".to_owned())
        }
        Some(Value::Boolean(_)) => match text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Value::Boolean(true)),
            "false" | "0" | "no" | "off" => Ok(Value::Boolean(false)),
            _ => Err("expected true or false".to_owned()),
        },
        Some(Value::Array(_)) => {
            // A TOML array literal, or comma-separated strings.
            if text.trim_start().starts_with('[') {
                let parsed: Table = toml::from_str(&format!("v = {text}"))
                    .map_err(|_| "expected a list: [\"a\", \"b\"] or a,b".to_owned())?;
                parsed.get("v").cloned().ok_or_else(|| "expected a list".to_owned())
            } else {
                Ok(Value::Array(
                    text.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| Value::String(s.to_owned()))
                        .collect(),
                ))
            }
        }
        Some(Value::Table(_)) => Err("is a section: set its keys one by one".to_owned()),
        _ => Ok(Value::String(text)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
    use super::*;

    fn resolve(name: &str) -> Option<Vec<String>> {
        let defaults = Value::try_from(Config::default()).unwrap();
        super::resolve(name, defaults.as_table().unwrap())
    }

    #[test]
    fn names_resolve_to_keys() {
        assert_eq!(resolve("OUTBOX_RELAY_KAFKA__MAX_BATCH_MS").unwrap(), ["kafka", "max_batch_ms"]);
        assert_eq!(resolve("OUTBOX_RELAY_CONNECTOR_NAME").unwrap(), ["connector_name"]);
        assert_eq!(resolve("OUTBOX_RELAY_POSTGRES_URL").unwrap(), ["postgres", "url"], "alias");
        assert_eq!(
            resolve("OUTBOX_RELAY_KAFKA__PROPERTIES__SASL_PASSWORD").unwrap(),
            ["kafka", "properties", "sasl.password"]
        );
        assert_eq!(resolve("OUTBOX_RELAY_OUTBOX__TABLES__0__TABLE").unwrap(), ["outbox", "tables", "0", "table"]);
        assert!(resolve("OUTBOX_RELAY_SOAK_ROUNDS").is_none(), "not a key: ignored with a warning");
        assert!(resolve("OUTBOX_RELAY_KAFKA").is_none(), "a section is not a value");
        assert!(resolve("OUTBOX_RELAY_KAFKA____X").is_none());
        assert_eq!(var_name(&["kafka", "max_batch_ms"]), "OUTBOX_RELAY_KAFKA__MAX_BATCH_MS");
        assert_eq!(
            display_key(&["outbox".into(), "tables".into(), "1".into(), "table".into()]),
            "outbox.tables[1].table"
        );
    }

    fn applied(env: &[(&str, &str)]) -> Result<Table, Vec<Problem>> {
        let mut table = Table::new();
        apply(&mut table, env).map(|_| table)
    }

    #[test]
    fn values_take_the_type_of_their_key() {
        let t = applied(&[
            ("OUTBOX_RELAY_KAFKA__MAX_BATCH_MS", "250"),
            ("OUTBOX_RELAY_POSTGRES__STREAMING", "false"),
            ("OUTBOX_RELAY_SCHEMA_REGISTRY__PASSWORD", "123456"),
        ])
        .unwrap();
        assert_eq!(t["kafka"]["max_batch_ms"], Value::Integer(250));
        assert_eq!(t["postgres"]["streaming"], Value::Boolean(false));
        assert_eq!(t["schema_registry"]["password"], Value::String("123456".into()), "a numeric secret stays text");
        let problems = applied(&[("OUTBOX_RELAY_KAFKA__MAX_BATCH_MS", "soon")]).unwrap_err();
        assert_eq!(problems[0].key, "kafka.max_batch_ms (from environment variable OUTBOX_RELAY_KAFKA__MAX_BATCH_MS)");
        assert!(problems[0].message.contains("whole number"), "{problems:?}");
        assert!(!problems[0].message.contains("soon"), "values are never echoed");
    }

    #[test]
    fn unknown_keys_are_named() {
        let problems = applied(&[("OUTBOX_RELAY_KAFKA__MAX_BATCH_MSS", "1")]).unwrap_err();
        assert!(
            problems[0].message.contains("max_batch_mss") && problems[0].message.contains("[kafka]"),
            "{problems:?}"
        );
        let problems = applied(&[("OUTBOX_RELAY_KAFKAA__X", "1")]).unwrap_err();
        assert_eq!(problems[0].key, "OUTBOX_RELAY_KAFKAA__X");
        let mut table = Table::new();
        let ok = apply(&mut table, &[("OUTBOX_RELAY_SOAK_ROUNDS", "3")]).unwrap();
        assert_eq!(ok.ignored, ["OUTBOX_RELAY_SOAK_ROUNDS"]);
    }

    #[test]
    fn lists_and_maps() {
        let t = applied(&[
            ("OUTBOX_RELAY_OUTBOX__TABLES__0__TABLE", "app.outbox"),
            ("OUTBOX_RELAY_OUTBOX__TABLES__1__TABLE", "app.outbox2"),
            ("OUTBOX_RELAY_OUTBOX__TABLES__1__ADDITIONAL_FIELDS__0__COLUMN", "tenant"),
            ("OUTBOX_RELAY_KAFKA__PROPERTIES__SASL_MECHANISM", "SCRAM-SHA-512"),
        ])
        .unwrap();
        let tables = t["outbox"]["tables"].as_array().unwrap();
        assert_eq!(tables.len(), 2);
        assert_eq!(tables[1]["table"], Value::String("app.outbox2".into()));
        assert_eq!(tables[1]["additional_fields"][0]["column"], Value::String("tenant".into()));
        assert_eq!(t["kafka"]["properties"]["sasl.mechanism"], Value::String("SCRAM-SHA-512".into()));
        let problems = applied(&[("OUTBOX_RELAY_OUTBOX__TABLES__2__TABLE", "x")]).unwrap_err();
        assert!(problems[0].message.contains("skips"), "{problems:?}");
    }

    #[test]
    fn generic_name_and_alias_the_generic_wins_and_two_generic_conflict() {
        let t = applied(&[
            ("OUTBOX_RELAY_POSTGRES__URL", "postgres://new"),
            ("OUTBOX_RELAY_POSTGRES_URL", "postgres://old"),
        ])
        .unwrap();
        assert_eq!(t["postgres"]["url"], Value::String("postgres://new".into()));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "s3cret\n").unwrap();
        let f = file.to_str().unwrap();
        let t = applied(&[("OUTBOX_RELAY_SCHEMA_REGISTRY__PASSWORD_FILE", f)]).unwrap();
        assert_eq!(t["schema_registry"]["password"], Value::String("s3cret".into()), "trailing newline dropped");
        let problems = applied(&[
            ("OUTBOX_RELAY_SCHEMA_REGISTRY__PASSWORD_FILE", f),
            ("OUTBOX_RELAY_SCHEMA_REGISTRY__PASSWORD", "x"),
        ])
        .unwrap_err();
        assert!(problems[0].message.contains("set twice"), "{problems:?}");
        let problems = applied(&[("OUTBOX_RELAY_SCHEMA_REGISTRY__PASSWORD_FILE", "/nonexistent/secret")]).unwrap_err();
        assert!(problems[0].message.contains("/nonexistent/secret"), "{problems:?}");
    }
}
