//! A JSON payload -> Avro binary, against a registered (or local) Avro schema: value mode `registered`.
//!
//! Invariant: [`Plan::encode`] either writes exactly the Avro binary encoding of the JSON value under the schema the
//! plan was compiled from, or fails with the dotted path of the first value that does not fit and why; it never
//! guesses (no silent truncation of numbers, no dropped JSON members, no rounding of decimals) and never panics on
//! any input.
//!
//! The JSON is the payload as applications write it (plain JSON, not Avro's JSON encoding with `{"type": value}`
//! wrappers for unions): a union takes `null` in its null branch and any other value in the first branch that
//! accepts it. Logical types take their natural JSON forms as well as their underlying numbers: `timestamp-*` an
//! ISO-8601 string (PostgreSQL's `to_jsonb(now())` form) or epoch units, `date` `"YYYY-MM-DD"` or days, `time-*`
//! `"HH:MM:SS[.ffffff]"`, `decimal` a number or (exact, for money) a string, `uuid` its 36-character text. A member
//! missing from the JSON takes the field's default; a member the schema does not have is refused, because dropping
//! it would lose data the producer meant to send.
//!
//! The schema is compiled once into a [`Plan`]: named references resolved into indices, field defaults encoded in
//! advance, so encoding is one walk over the JSON with no schema lookups by name. The JSON is parsed into [`Json`],
//! a tree that borrows the payload's strings and keeps object members in a `Vec` (small objects: a scan beats a map),
//! which halves the cost of `serde_json::Value` with its owned strings and `BTreeMap`s.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use apache_avro::Schema;
use apache_avro::schema::{InnerDecimalSchema, RecordSchema, UuidSchema};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// Why a value does not fit, at which path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misfit {
    /// Dotted path from the payload's root, e.g. `customer.email` or `lines[2].qty`; empty for the root.
    pub path: String,
    /// What is wrong, naming the expected type.
    pub reason: String,
}

impl fmt::Display for Misfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() { write!(f, "{}", self.reason) } else { write!(f, "{}: {}", self.path, self.reason) }
    }
}

/// A schema compiled for encoding. Cheap to share (`Arc`); immutable.
#[derive(Debug)]
pub struct Plan {
    nodes: Vec<Node>,
    /// Full name of the top-level named type, if it is one (for RecordNameStrategy).
    name: Option<String>,
}

#[derive(Debug)]
enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Uuid { fixed: bool },
    Date,
    TimeMillis,
    TimeMicros,
    Timestamp { unit: TimeUnit, local: bool },
    Decimal { precision: usize, scale: usize, fixed_size: Option<usize> },
    Fixed { size: usize },
    Enum { name: String, symbols: Vec<String> },
    Array(usize),
    Map(usize),
    Union(Vec<usize>),
    Record(Box<RecordNode>),
}

#[derive(Debug, Clone, Copy)]
enum TimeUnit {
    Millis,
    Micros,
    Nanos,
}

#[derive(Debug)]
struct RecordNode {
    name: String,
    fields: Vec<FieldNode>,
    lookup: HashMap<String, usize>,
}

#[derive(Debug)]
struct FieldNode {
    name: String,
    node: usize,
    /// The field's default, already encoded; `None` when the field has none (it is then required).
    default: Option<Vec<u8>>,
}

impl Plan {
    /// Compiles `schema`. Fails naming what cannot be encoded from JSON (a `duration`, an unresolvable reference, a
    /// default that does not fit its field).
    pub fn compile(schema: &Schema) -> Result<Plan, String> {
        let mut names = HashMap::new();
        collect_names(schema, &mut names);
        let mut compiler = Compiler { names, nodes: Vec::new(), named: HashMap::new(), defaults: Vec::new() };
        compiler.node(schema)?;
        let Compiler { mut nodes, defaults, .. } = compiler;
        // Defaults are encoded once every node exists: a default may hold a record whose type is defined later.
        for (record, field, json) in defaults {
            let plan = Plan { nodes, name: None };
            let node = match plan.nodes.get(record) {
                Some(Node::Record(r)) => r.fields.get(field).map(|f| (f.node, f.name.clone())),
                _ => None,
            };
            let Some((field_node, field_name)) = node else {
                return Err("internal: a default without its field".to_owned());
            };
            // Avro's rule: a union field's default belongs to the union's first branch.
            let mut out = Vec::new();
            let default_node = match plan.nodes.get(field_node) {
                Some(Node::Union(branches)) => {
                    write_long(&mut out, 0);
                    branches.first().copied().unwrap_or(field_node)
                }
                _ => field_node,
            };
            let mut path = Path::default();
            let json = Json::from_value(&json);
            let raw_decimal = match (plan.nodes.get(default_node), &json) {
                // Avro writes a decimal's default as its raw bytes (a string of U+0000..U+00FF), not as digits.
                (Some(Node::Decimal { fixed_size, .. }), Json::String(text)) => Some((*fixed_size, latin1(text))),
                _ => None,
            };
            let written = match raw_decimal {
                Some((_, None)) => Err(Misfit { path: String::new(), reason: LATIN1.to_owned() }),
                Some((Some(size), Some(bytes))) if bytes.len() != size => Err(Misfit {
                    path: String::new(),
                    reason: format!("{} bytes where the fixed decimal has {size}", bytes.len()),
                }),
                Some((Some(_), Some(bytes))) => {
                    out.extend_from_slice(&bytes);
                    Ok(())
                }
                Some((None, Some(bytes))) => {
                    write_bytes(&mut out, &bytes);
                    Ok(())
                }
                None => plan.write(default_node, &json, &mut out, &mut path, 0),
            };
            written.map_err(|m| {
                format!("the default of field {field_name:?} does not fit its type: {m} (a union's default must fit its first branch)")
            })?;
            nodes = plan.nodes;
            if let Some(Node::Record(r)) = nodes.get_mut(record) {
                if let Some(f) = r.fields.get_mut(field) {
                    f.default = Some(out);
                }
            }
        }
        let name = match schema {
            Schema::Record(r) => Some(r.name.fullname(None)),
            Schema::Enum(e) => Some(e.name.fullname(None)),
            Schema::Fixed(f) => Some(f.name.fullname(None)),
            _ => None,
        };
        Ok(Plan { nodes, name })
    }

    /// The full name of the schema's top-level named type (record, enum or fixed).
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Appends the Avro binary encoding of the JSON text `text` to `out`; text that is not JSON is a misfit at the
    /// root. On a misfit, `out` holds a partial value: discard it.
    pub fn encode_json(&self, text: &str, out: &mut Vec<u8>) -> Result<(), Misfit> {
        let json: Json<'_> = serde_json::from_str(text)
            .map_err(|e| Misfit { path: String::new(), reason: format!("is not JSON ({e})") })?;
        self.encode(&json, out)
    }

    /// Appends the Avro binary encoding of `json` to `out`. On a misfit, `out` holds a partial value: discard it.
    pub fn encode(&self, json: &Json<'_>, out: &mut Vec<u8>) -> Result<(), Misfit> {
        let mut path = Path::default();
        self.write(0, json, out, &mut path, 0)
    }

    fn write<'a>(
        &'a self,
        node: usize,
        v: &'a Json<'a>,
        out: &mut Vec<u8>,
        path: &mut Path<'a>,
        depth: u32,
    ) -> Result<(), Misfit> {
        // JSON nests at most as deep as serde_json parses (128), but a recursive schema walked by a default could
        // loop; bound it.
        if depth > 256 {
            return Err(path.misfit("nested too deeply".to_owned()));
        }
        let Some(n) = self.nodes.get(node) else {
            return Err(path.misfit("internal: unknown schema node".to_owned()));
        };
        match (n, v) {
            (Node::Null, Json::Null) => {}
            (Node::Boolean, Json::Bool(b)) => out.push(u8::from(*b)),
            (Node::Int, Json::Number(_)) => {
                let i = integer(v).ok_or_else(|| path.misfit(format!("{v} is not an integer")))?;
                let i = i32::try_from(i).map_err(|_| path.misfit(format!("{i} does not fit an Avro int (32 bits)")))?;
                write_long(out, i64::from(i));
            }
            (Node::Long, Json::Number(_)) => {
                let i = integer(v).ok_or_else(|| path.misfit(format!("{v} is not an integer within 64 bits")))?;
                write_long(out, i);
            }
            (Node::Float, Json::Number(n)) => {
                let f = n.as_f64();
                #[allow(clippy::cast_possible_truncation)]
                out.extend_from_slice(&(f as f32).to_le_bytes());
            }
            (Node::Double, Json::Number(n)) => {
                let f = n.as_f64();
                out.extend_from_slice(&f.to_le_bytes());
            }
            (Node::String, Json::String(s)) => write_bytes(out, s.as_bytes()),
            (Node::Bytes, Json::String(s)) => {
                write_bytes(out, &latin1(s).ok_or_else(|| path.misfit(LATIN1.to_owned()))?);
            }
            (Node::Fixed { size }, Json::String(s)) => {
                let b = latin1(s).ok_or_else(|| path.misfit(LATIN1.to_owned()))?;
                if b.len() != *size {
                    return Err(path.misfit(format!("{} bytes where the fixed type has {size}", b.len())));
                }
                out.extend_from_slice(&b);
            }
            (Node::Uuid { fixed }, Json::String(s)) => {
                let bytes = parse_uuid(s).ok_or_else(|| path.misfit(format!("{s:?} is not a UUID")))?;
                if *fixed {
                    out.extend_from_slice(&bytes);
                } else {
                    write_bytes(out, s.as_bytes());
                }
            }
            (Node::Date, Json::String(s)) => {
                let days = parse_date(s).ok_or_else(|| path.misfit(format!("{s:?} is not a date (YYYY-MM-DD)")))?;
                write_long(out, days);
            }
            (Node::Date | Node::TimeMillis, Json::Number(_)) => {
                let i = integer(v).and_then(|i| i32::try_from(i).ok());
                write_long(out, i64::from(i.ok_or_else(|| path.misfit(format!("{v} is not an int")))?));
            }
            (Node::TimeMillis | Node::TimeMicros, Json::String(s)) => {
                let micros =
                    parse_time(s).ok_or_else(|| path.misfit(format!("{s:?} is not a time of day (HH:MM:SS)")))?;
                write_long(out, if matches!(n, Node::TimeMillis) { micros / 1000 } else { micros });
            }
            (Node::TimeMicros | Node::Timestamp { .. }, Json::Number(_)) => {
                let i = integer(v).ok_or_else(|| path.misfit(format!("{v} is not a long")))?;
                write_long(out, i);
            }
            (Node::Timestamp { unit, local }, Json::String(s)) => {
                if *local && has_offset(s) {
                    return Err(path.misfit(format!(
                        "{s:?} has a time zone offset; a local-timestamp takes the wall-clock time without one"
                    )));
                }
                if matches!(unit, TimeUnit::Nanos) && fraction_digits(s) > 6 {
                    return Err(path.misfit(format!(
                        "{s:?} has more than microsecond precision, which text is read with; give epoch \
                         nanoseconds as a number"
                    )));
                }
                let ts = crate::outbox::parse_pg_timestamp(s)
                    .map_err(|e| path.misfit(format!("{s:?} is not an ISO-8601 timestamp: {e}")))?;
                let micros = ts.unix_micros();
                let value = match unit {
                    TimeUnit::Millis => Some(micros.div_euclid(1000)),
                    TimeUnit::Micros => Some(micros),
                    TimeUnit::Nanos => micros.checked_mul(1000),
                };
                write_long(out, value.ok_or_else(|| path.misfit(format!("{s:?} is out of range")))?);
            }
            (Node::Decimal { precision, scale, fixed_size }, Json::Number(_) | Json::String(_)) => {
                let unscaled = match v {
                    Json::String(s) => parse_decimal(s, *precision, *scale),
                    // An integer needs no text: scale it (the common case of whole amounts).
                    other => match integer(other).and_then(|i| scaled(i, *precision, *scale)) {
                        Some(u) => Ok(u),
                        None => {
                            let text = other.to_string();
                            if matches!(other, Json::Number(Number::F(_))) && significant_digits(&text) > 15 {
                                // A JSON number becomes an f64, exact to 15 significant digits only: beyond, the
                                // digits written may already be lost.
                                Err(format!(
                                    "{text} has more significant digits than a JSON number keeps exactly; write \
                                     the decimal as a string (PostgreSQL: to_jsonb(amount::text))"
                                ))
                            } else {
                                parse_decimal(&text, *precision, *scale)
                            }
                        }
                    },
                }
                .map_err(|e| path.misfit(e))?;
                let text = v;
                let bytes = twos_complement(unscaled, *fixed_size)
                    .ok_or_else(|| path.misfit(format!("{text} does not fit the fixed size")))?;
                match fixed_size {
                    Some(_) => out.extend_from_slice(&bytes),
                    None => write_bytes(out, &bytes),
                }
            }
            (Node::Enum { name, symbols }, Json::String(s)) => {
                let i = symbols.iter().position(|x| x == s.as_ref()).ok_or_else(|| {
                    path.misfit(format!("{s:?} is not a symbol of enum {name} (symbols: {})", symbols.join(", ")))
                })?;
                write_long(out, i64::try_from(i).unwrap_or(i64::MAX));
            }
            (Node::Array(items), Json::Array(values)) => {
                if !values.is_empty() {
                    write_long(out, i64::try_from(values.len()).unwrap_or(i64::MAX));
                    for (i, item) in values.iter().enumerate() {
                        path.push_index(i);
                        self.write(*items, item, out, path, depth + 1)?;
                        path.pop();
                    }
                }
                out.push(0);
            }
            (Node::Map(values_node), Json::Object(members)) => {
                if !members.is_empty() {
                    write_long(out, i64::try_from(members.len()).unwrap_or(i64::MAX));
                    for (k, item) in members {
                        write_bytes(out, k.as_bytes());
                        path.push_key(k);
                        self.write(*values_node, item, out, path, depth + 1)?;
                        path.pop();
                    }
                }
                out.push(0);
            }
            (Node::Union(branches), _) => self.write_union(branches, v, out, path, depth)?,
            (Node::Record(r), Json::Object(members)) => {
                for f in &r.fields {
                    match members.iter().find(|(k, _)| *k == f.name).map(|(_, m)| m) {
                        Some(member) => {
                            path.push_field(&f.name);
                            self.write(f.node, member, out, path, depth + 1)?;
                            path.pop();
                        }
                        None => match &f.default {
                            Some(d) => out.extend_from_slice(d),
                            None => {
                                path.push_field(&f.name);
                                let m = path.misfit(format!(
                                    "is missing, and field {:?} of record {} has no default",
                                    f.name, r.name
                                ));
                                return Err(m);
                            }
                        },
                    }
                }
                // Every member was matched to a field when the counts agree and no key repeats; else name the first
                // member the record lacks, or the repeated one.
                let matched = r.fields.iter().filter(|f| members.iter().any(|(k, _)| *k == f.name)).count();
                if matched != members.len() {
                    if let Some((unknown, _)) = members.iter().find(|(k, _)| !r.lookup.contains_key(k.as_ref())) {
                        path.push_field(unknown);
                        return Err(path.misfit(format!(
                            "is not a field of record {}; add it to the schema (with a default) before producers \
                             write it",
                            r.name
                        )));
                    }
                    return Err(path.misfit("an object member appears twice".to_owned()));
                }
            }
            (n, v) => return Err(path.misfit(format!("{} where the schema has {}", json_kind(v), n.describe()))),
        }
        Ok(())
    }

    fn write_union<'a>(
        &'a self,
        branches: &[usize],
        v: &'a Json<'a>,
        out: &mut Vec<u8>,
        path: &mut Path<'a>,
        depth: u32,
    ) -> Result<(), Misfit> {
        let mut first_error = None;
        let path_len = path.0.len();
        for (i, branch) in branches.iter().enumerate() {
            let is_null = matches!(self.nodes.get(*branch), Some(Node::Null));
            if is_null != matches!(v, Json::Null) {
                continue;
            }
            let start = out.len();
            write_long(out, i64::try_from(i).unwrap_or(i64::MAX));
            match self.write(*branch, v, out, path, depth + 1) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    // A failed branch may have left its segments on the path.
                    out.truncate(start);
                    path.0.truncate(path_len);
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| {
            let kinds: Vec<String> = branches.iter().filter_map(|b| self.nodes.get(*b)).map(Node::describe).collect();
            path.misfit(format!("{} where the schema has a union of {}", json_kind(v), kinds.join(", ")))
        }))
    }
}

impl Node {
    fn describe(&self) -> String {
        match self {
            Node::Null => "null".into(),
            Node::Boolean => "boolean".into(),
            Node::Int => "int".into(),
            Node::Long => "long".into(),
            Node::Float => "float".into(),
            Node::Double => "double".into(),
            Node::Bytes => "bytes".into(),
            Node::String => "string".into(),
            Node::Uuid { .. } => "uuid".into(),
            Node::Date => "date".into(),
            Node::TimeMillis => "time-millis".into(),
            Node::TimeMicros => "time-micros".into(),
            Node::Timestamp { unit, local } => format!(
                "{}timestamp-{}",
                if *local { "local-" } else { "" },
                match unit {
                    TimeUnit::Millis => "millis",
                    TimeUnit::Micros => "micros",
                    TimeUnit::Nanos => "nanos",
                }
            ),
            Node::Decimal { precision, scale, .. } => format!("decimal({precision},{scale})"),
            Node::Fixed { size } => format!("fixed({size})"),
            Node::Enum { name, .. } => format!("enum {name}"),
            Node::Array(_) => "array".into(),
            Node::Map(_) => "map".into(),
            Node::Union(_) => "union".into(),
            Node::Record(r) => format!("record {}", r.name),
        }
    }
}

const LATIN1: &str = "bytes are written in JSON as a string of characters U+0000..U+00FF (Avro's JSON convention)";

fn json_kind(v: &Json<'_>) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// An integer JSON number, or a float with no fractional part (some serializers write `3.0`).
fn integer(v: &Json<'_>) -> Option<i64> {
    match v {
        Json::Number(Number::I(i)) => Some(*i),
        Json::Number(Number::U(u)) => i64::try_from(*u).ok(),
        // Integral floats only below 2^53, where every integer is exact: above, the digits written may be lost.
        Json::Number(Number::F(f)) =>
        {
            #[allow(clippy::cast_possible_truncation)]
            (f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0).then_some(*f as i64)
        }
        _ => None,
    }
}

/// A parsed JSON value borrowing the payload's strings (owned only where the JSON escaped something).
#[derive(Debug, Clone, PartialEq)]
pub enum Json<'a> {
    /// `null`.
    Null,
    /// `true`, `false`.
    Bool(bool),
    /// A number.
    Number(Number),
    /// A string.
    String(Cow<'a, str>),
    /// An array.
    Array(Vec<Json<'a>>),
    /// An object, members in the order written.
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

/// A JSON number as serde_json read it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    /// A non-negative integer.
    U(u64),
    /// A negative integer.
    I(i64),
    /// Any other number.
    F(f64),
}

impl Number {
    fn as_f64(self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        match self {
            Number::U(u) => u as f64,
            Number::I(i) => i as f64,
            Number::F(f) => f,
        }
    }
}

impl fmt::Display for Json<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Json::Null => f.write_str("null"),
            Json::Bool(b) => write!(f, "{b}"),
            Json::Number(Number::U(u)) => write!(f, "{u}"),
            Json::Number(Number::I(i)) => write!(f, "{i}"),
            // Rust prints the shortest text that reads back as the same f64, as JSON writers do.
            Json::Number(Number::F(x)) => write!(f, "{x}"),
            Json::String(s) => write!(f, "{s:?}"),
            Json::Array(_) => f.write_str("[...]"),
            Json::Object(_) => f.write_str("{...}"),
        }
    }
}

impl Json<'static> {
    /// From a `serde_json::Value` (schema defaults), owning its strings.
    pub fn from_value(v: &Value) -> Json<'static> {
        match v {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Number(n) => Json::Number(match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => Number::U(u),
                (None, Some(i)) => Number::I(i),
                _ => Number::F(n.as_f64().unwrap_or(f64::NAN)),
            }),
            Value::String(s) => Json::String(Cow::Owned(s.clone())),
            Value::Array(a) => Json::Array(a.iter().map(Json::from_value).collect()),
            Value::Object(o) => {
                Json::Object(o.iter().map(|(k, v)| (Cow::Owned(k.clone()), Json::from_value(v))).collect())
            }
        }
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }
    fn visit_none<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(b))
    }
    fn visit_u64<E>(self, u: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(Number::U(u)))
    }
    fn visit_i64<E>(self, i: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(if i >= 0 { Number::U(i.unsigned_abs()) } else { Number::I(i) }))
    }
    fn visit_f64<E>(self, x: f64) -> Result<Json<'de>, E> {
        Ok(Json::Number(Number::F(x)))
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(s.to_owned())))
    }
    fn visit_string<E>(self, s: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(s)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
        while let Some(key) = map.next_key::<Key<'de>>()? {
            members.push((key.0, map.next_value()?));
        }
        Ok(Json::Object(members))
    }
}

/// An object key, borrowed when the JSON did not escape it.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

fn latin1(s: &str) -> Option<Vec<u8>> {
    s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect()
}

fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|i| b.get(*i) != Some(&b'-')) {
        return None;
    }
    let nibble = |c: u8| char::from(c).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let mut digits = b.iter().copied().filter(|c| *c != b'-');
    let mut out = [0u8; 16];
    for o in &mut out {
        *o = (nibble(digits.next()?)? << 4) | nibble(digits.next()?)?;
    }
    Some(out)
}

/// Significant digits of a number's text (no sign, point, exponent or leading zeros).
fn significant_digits(text: &str) -> usize {
    let mantissa = text.split(['e', 'E']).next().unwrap_or("");
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    digits.trim_start_matches('0').trim_end_matches('0').len().max(1)
}

/// `i` at `scale` as an unscaled decimal within `precision` digits, if it fits.
fn scaled(i: i64, precision: usize, scale: usize) -> Option<i128> {
    let unscaled = i128::from(i).checked_mul(10i128.checked_pow(u32::try_from(scale).ok()?)?)?;
    let limit = 10i128.checked_pow(u32::try_from(precision).ok()?)?;
    (unscaled.abs() < limit).then_some(unscaled)
}

/// Whether an ISO-8601 date-time text ends in a zone offset (`Z`, `+hh[:mm]`, `-hh[:mm]`).
fn has_offset(s: &str) -> bool {
    let time = s.split_once(['T', ' ']).map_or("", |(_, t)| t);
    time.ends_with('Z') || time.contains('+') || time.contains('-')
}

/// Digits after the seconds' decimal point.
fn fraction_digits(s: &str) -> usize {
    s.split_once('.').map_or(0, |(_, f)| f.bytes().take_while(u8::is_ascii_digit).count())
}

fn parse_date(s: &str) -> Option<i64> {
    let ts = crate::outbox::parse_pg_timestamp(&format!("{s} 00:00:00+00")).ok()?;
    Some(ts.unix_micros().div_euclid(86_400_000_000))
}

/// Microseconds after midnight of `HH:MM:SS[.ffffff]`.
fn parse_time(s: &str) -> Option<i64> {
    let ts = crate::outbox::parse_pg_timestamp(&format!("1970-01-01 {s}+00")).ok()?;
    Some(ts.unix_micros())
}

/// The unscaled value of decimal `text` at `scale`, refusing more fractional digits than the scale (no silent
/// rounding) and more digits than the precision.
fn parse_decimal(text: &str, precision: usize, scale: usize) -> Result<i128, String> {
    let t = text.trim();
    let (negative, digits) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    // Exponent forms (serde_json writes large or small floats as 1e21): expand by shifting the point.
    let (mantissa, exponent) = match digits.split_once(['e', 'E']) {
        Some((m, e)) => {
            let e = e.parse::<i32>().map_err(|_| format!("{text:?} is not a decimal number"))?;
            // Beyond this the value has more digits than any decimal holds, or none left: refuse before
            // materializing the zeros.
            if e.unsigned_abs() > 100 {
                return Err(format!("{text} has an exponent out of range for decimal({precision},{scale})"));
            }
            (m, e)
        }
        None => (digits, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int_part.is_empty() && frac_part.is_empty()
        || !int_part.bytes().chain(frac_part.bytes()).all(|b| b.is_ascii_digit())
    {
        return Err(format!("{text:?} is not a decimal number"));
    }
    let mut all: String = format!("{int_part}{frac_part}");
    let mut frac_len = i64::try_from(frac_part.len()).unwrap_or(i64::MAX) - i64::from(exponent);
    if frac_len < 0 {
        all.extend(std::iter::repeat_n('0', usize::try_from(-frac_len).unwrap_or(0)));
        frac_len = 0;
    }
    let frac_len = usize::try_from(frac_len).unwrap_or(usize::MAX);
    if frac_len > scale {
        // Trailing zeros beyond the scale lose nothing.
        let extra = frac_len - scale;
        let (keep, dropped) = all.split_at(all.len().saturating_sub(extra));
        if dropped.bytes().any(|b| b != b'0') {
            return Err(format!(
                "{text} has more than {scale} fractional digits (the decimal's scale); round it first"
            ));
        }
        all = keep.to_owned();
    } else {
        all.extend(std::iter::repeat_n('0', scale - frac_len));
    }
    let significant = all.trim_start_matches('0');
    if significant.len() > precision {
        return Err(format!("{text} has more than {precision} digits (the decimal's precision)"));
    }
    let magnitude: i128 = if significant.is_empty() {
        0
    } else {
        significant.parse().map_err(|_| format!("{text} has more than 38 digits"))?
    };
    Ok(if negative { -magnitude } else { magnitude })
}

/// Big-endian two's complement: minimal length for `bytes`, sign-extended to `fixed` bytes for `fixed`.
fn twos_complement(v: i128, fixed: Option<usize>) -> Option<Vec<u8>> {
    let full = v.to_be_bytes();
    let sign = if v < 0 { 0xff } else { 0 };
    // Drop leading sign bytes while the next byte keeps the sign bit.
    let mut start = 0;
    while start + 1 < full.len()
        && full.get(start) == Some(&sign)
        && full.get(start + 1).is_some_and(|b| (b & 0x80) == (sign & 0x80))
    {
        start += 1;
    }
    let minimal = full.get(start..)?;
    match fixed {
        None => Some(minimal.to_vec()),
        Some(size) if minimal.len() <= size => {
            let mut out = vec![sign; size - minimal.len()];
            out.extend_from_slice(minimal);
            Some(out)
        }
        Some(_) => None,
    }
}

#[inline]
fn write_long(out: &mut Vec<u8>, v: i64) {
    super::write_long(out, v);
}

#[inline]
fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    write_long(out, i64::try_from(b.len()).unwrap_or(i64::MAX));
    out.extend_from_slice(b);
}

/// The path being encoded, kept as borrowed segments so a misfit names it without cost on the success path.
#[derive(Default)]
struct Path<'a>(Vec<Segment<'a>>);

enum Segment<'a> {
    Field(&'a str),
    Index(usize),
    Key(&'a str),
}

impl<'a> Path<'a> {
    fn push_field(&mut self, name: &'a str) {
        self.0.push(Segment::Field(name));
    }
    fn push_index(&mut self, i: usize) {
        self.0.push(Segment::Index(i));
    }
    fn push_key(&mut self, k: &'a str) {
        self.0.push(Segment::Key(k));
    }
    fn pop(&mut self) {
        self.0.pop();
    }
    fn misfit(&self, reason: String) -> Misfit {
        let mut path = String::new();
        for s in &self.0 {
            match s {
                Segment::Field(f) => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(f);
                }
                Segment::Index(i) => path.push_str(&format!("[{i}]")),
                Segment::Key(k) => path.push_str(&format!("[{k:?}]")),
            }
        }
        Misfit { path, reason }
    }
}

fn collect_names<'s>(schema: &'s Schema, names: &mut HashMap<String, &'s Schema>) {
    match schema {
        // Each record once: a recursive type refers back to itself.
        Schema::Record(r) if names.insert(r.name.fullname(None), schema).is_none() => {
            for f in &r.fields {
                collect_names(&f.schema, names);
            }
        }
        Schema::Enum(e) => {
            names.insert(e.name.fullname(None), schema);
        }
        Schema::Fixed(f) => {
            names.insert(f.name.fullname(None), schema);
        }
        Schema::Decimal(d) => {
            if let InnerDecimalSchema::Fixed(f) = &d.inner {
                names.insert(f.name.fullname(None), schema);
            }
        }
        Schema::Uuid(UuidSchema::Fixed(f)) | Schema::Duration(f) => {
            names.insert(f.name.fullname(None), schema);
        }
        Schema::Array(a) => collect_names(&a.items, names),
        Schema::Map(m) => collect_names(&m.types, names),
        Schema::Union(u) => u.variants().iter().for_each(|v| collect_names(v, names)),
        _ => {}
    }
}

struct Compiler<'s> {
    names: HashMap<String, &'s Schema>,
    nodes: Vec<Node>,
    /// Named types already compiled, by full name: what makes recursive types finite.
    named: HashMap<String, usize>,
    /// (record node, field index, default JSON), encoded once every node exists.
    defaults: Vec<(usize, usize, Value)>,
}

impl<'s> Compiler<'s> {
    fn push(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn node(&mut self, schema: &'s Schema) -> Result<usize, String> {
        let node = match schema {
            Schema::Null => Node::Null,
            Schema::Boolean => Node::Boolean,
            Schema::Int => Node::Int,
            Schema::Long => Node::Long,
            Schema::Float => Node::Float,
            Schema::Double => Node::Double,
            Schema::Bytes => Node::Bytes,
            Schema::String => Node::String,
            Schema::Uuid(UuidSchema::Fixed(_)) => Node::Uuid { fixed: true },
            Schema::Uuid(UuidSchema::String) => Node::Uuid { fixed: false },
            Schema::Uuid(UuidSchema::Bytes) => {
                return Err("uuid on bytes is not supported; use uuid on a string".into());
            }
            Schema::Date => Node::Date,
            Schema::TimeMillis => Node::TimeMillis,
            Schema::TimeMicros => Node::TimeMicros,
            Schema::TimestampMillis => Node::Timestamp { unit: TimeUnit::Millis, local: false },
            Schema::TimestampMicros => Node::Timestamp { unit: TimeUnit::Micros, local: false },
            Schema::TimestampNanos => Node::Timestamp { unit: TimeUnit::Nanos, local: false },
            Schema::LocalTimestampMillis => Node::Timestamp { unit: TimeUnit::Millis, local: true },
            Schema::LocalTimestampMicros => Node::Timestamp { unit: TimeUnit::Micros, local: true },
            Schema::LocalTimestampNanos => Node::Timestamp { unit: TimeUnit::Nanos, local: true },
            Schema::Decimal(d) => {
                if d.precision > 38 {
                    return Err(format!("decimal precision {} is above the 38 digits supported", d.precision));
                }
                let fixed_size = match &d.inner {
                    InnerDecimalSchema::Fixed(f) => Some(f.size),
                    InnerDecimalSchema::Bytes => None,
                };
                Node::Decimal { precision: d.precision, scale: d.scale, fixed_size }
            }
            Schema::BigDecimal => return Err("big-decimal has no JSON form here; use decimal(precision, scale)".into()),
            Schema::Duration(_) => return Err("duration has no JSON form here; use a long of milliseconds".into()),
            Schema::Fixed(f) => Node::Fixed { size: f.size },
            Schema::Enum(e) => Node::Enum { name: e.name.fullname(None), symbols: e.symbols.clone() },
            Schema::Array(a) => {
                let slot = self.push(Node::Null);
                let items = self.node(&a.items)?;
                return self.set(slot, Node::Array(items));
            }
            Schema::Map(m) => {
                let slot = self.push(Node::Null);
                let values = self.node(&m.types)?;
                return self.set(slot, Node::Map(values));
            }
            Schema::Union(u) => {
                let slot = self.push(Node::Null);
                let mut branches = Vec::new();
                for v in u.variants() {
                    branches.push(self.node(v)?);
                }
                return self.set(slot, Node::Union(branches));
            }
            Schema::Record(r) => return self.record(r),
            Schema::Ref { name } => {
                let full = name.fullname(None);
                if let Some(i) = self.named.get(&full) {
                    return Ok(*i);
                }
                let target = *self.names.get(&full).ok_or_else(|| format!("unknown named type {full}"))?;
                return self.node(target);
            }
        };
        Ok(self.push(node))
    }

    fn set(&mut self, slot: usize, node: Node) -> Result<usize, String> {
        match self.nodes.get_mut(slot) {
            Some(n) => *n = node,
            None => return Err("internal: lost a schema node".into()),
        }
        Ok(slot)
    }

    fn record(&mut self, r: &'s RecordSchema) -> Result<usize, String> {
        let name = r.name.fullname(None);
        if let Some(i) = self.named.get(&name) {
            return Ok(*i);
        }
        let slot = self.push(Node::Null);
        self.named.insert(name.clone(), slot);
        let mut fields = Vec::with_capacity(r.fields.len());
        let mut lookup = HashMap::with_capacity(r.fields.len());
        for (i, f) in r.fields.iter().enumerate() {
            let node = self.node(&f.schema).map_err(|e| format!("field {:?} of {name}: {e}", f.name))?;
            if let Some(d) = &f.default {
                self.defaults.push((slot, i, d.clone()));
            }
            lookup.insert(f.name.clone(), i);
            fields.push(FieldNode { name: f.name.clone(), node, default: None });
        }
        self.set(slot, Node::Record(Box::new(RecordNode { name, fields, lookup })))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use apache_avro::types::Value as AvroValue;

    fn plan(schema: &str) -> (Schema, Plan) {
        let s = Schema::parse_str(schema).unwrap();
        let p = Plan::compile(&s).unwrap();
        (s, p)
    }

    fn encode(p: &Plan, json: &str) -> Result<Vec<u8>, Misfit> {
        let mut out = Vec::new();
        p.encode_json(json, &mut out).map(|()| out)
    }

    /// Decodes with apache-avro's reader: what a consumer would see.
    fn decode(schema: &Schema, bytes: &[u8]) -> AvroValue {
        apache_avro::reader::datum::GenericDatumReader::builder(schema)
            .build()
            .unwrap()
            .read_value(&mut &bytes[..])
            .unwrap()
    }

    const ORDER: &str = r#"{"type":"record","name":"OrderCreated","namespace":"com.acme","fields":[
        {"name":"id","type":{"type":"string","logicalType":"uuid"}},
        {"name":"total","type":{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}},
        {"name":"placed_at","type":{"type":"long","logicalType":"timestamp-micros"}},
        {"name":"day","type":{"type":"int","logicalType":"date"}},
        {"name":"status","type":{"type":"enum","name":"Status","symbols":["NEW","PAID"]}},
        {"name":"lines","type":{"type":"array","items":{"type":"record","name":"Line","fields":[
            {"name":"sku","type":"string"},{"name":"qty","type":"int"}]}}},
        {"name":"tags","type":{"type":"map","values":"long"},"default":{}},
        {"name":"note","type":["null","string"],"default":null},
        {"name":"first","type":["null","Line"],"default":null},
        {"name":"score","type":"double","default":1.5}
    ]}"#;

    #[test]
    fn a_payload_round_trips_through_apache_avro() {
        let (schema, p) = plan(ORDER);
        assert_eq!(p.name(), Some("com.acme.OrderCreated"));
        // Members in jsonb's order (by length), not the schema's; `tags`, `score` missing (defaults).
        let json = r#"{"id":"6f1c2a52-0c1e-4b8e-9a57-2d1f0e4c3b2a","day":"2026-12-01","note":"ä","first":{"qty":1,"sku":"A"},
            "lines":[{"sku":"A","qty":2},{"qty":3,"sku":"B"}],"total":"12.50","status":"PAID",
            "placed_at":"2026-12-01T10:00:00.123456+00:00"}"#;
        let bytes = encode(&p, json).unwrap();
        let AvroValue::Record(fields) = decode(&schema, &bytes) else { panic!() };
        let get = |n: &str| fields.iter().find(|(k, _)| k == n).unwrap().1.clone();
        assert_eq!(get("id"), AvroValue::Uuid("6f1c2a52-0c1e-4b8e-9a57-2d1f0e4c3b2a".parse().unwrap()));
        assert_eq!(get("total"), AvroValue::Decimal(apache_avro::Decimal::from(1250i64.to_be_bytes().to_vec())));
        assert_eq!(get("placed_at"), AvroValue::TimestampMicros(1_796_119_200_123_456));
        assert_eq!(get("day"), AvroValue::Date(20_788));
        assert_eq!(get("status"), AvroValue::Enum(1, "PAID".into()));
        assert_eq!(get("note"), AvroValue::Union(1, Box::new(AvroValue::String("ä".into()))));
        assert_eq!(get("tags"), AvroValue::Map(HashMap::new()));
        assert_eq!(get("score"), AvroValue::Double(1.5));
        let AvroValue::Array(lines) = get("lines") else { panic!() };
        assert_eq!(lines.len(), 2);
    }

    #[test]
    fn misfits_name_the_path_and_the_rule() {
        let (_, p) = plan(ORDER);
        let base = r#""id":"6f1c2a52-0c1e-4b8e-9a57-2d1f0e4c3b2a","day":1,"total":1,"status":"NEW","placed_at":0"#;
        let e =
            encode(&p, &format!(r#"{{{base},"lines":[{{"sku":"A","qty":1}},{{"sku":"B","qty":"x"}}]}}"#)).unwrap_err();
        assert_eq!(e.path, "lines[1].qty");
        assert!(e.reason.contains("a string where the schema has int"), "{e}");
        let e = encode(&p, &format!(r#"{{{base},"lines":[],"extra":1}}"#)).unwrap_err();
        assert_eq!(e.path, "extra");
        assert!(e.reason.contains("not a field of record com.acme.OrderCreated"), "{e}");
        let e = encode(&p, &format!(r#"{{{base}}}"#)).unwrap_err();
        assert_eq!(e.path, "lines");
        assert!(e.reason.contains("no default"), "{e}");
        let without = |field: &str| base.replace(field, "");
        let e = encode(&p, &format!(r#"{{{},"lines":[],"total":"1.005"}}"#, without(r#""total":1,"#))).unwrap_err();
        assert!(e.reason.contains("more than 2 fractional digits"), "{e}");
        let e =
            encode(&p, &format!(r#"{{{},"lines":[],"status":"GONE"}}"#, without(r#""status":"NEW","#))).unwrap_err();
        assert!(e.reason.contains("not a symbol of enum com.acme.Status"), "{e}");
    }

    #[test]
    fn decimals_are_exact_and_signed() {
        assert_eq!(parse_decimal("12.5", 10, 2), Ok(1250));
        assert_eq!(parse_decimal("-0.01", 10, 2), Ok(-1));
        assert_eq!(parse_decimal("1e2", 10, 2), Ok(10_000));
        assert_eq!(parse_decimal("1.230", 10, 2), Ok(123));
        assert!(parse_decimal("123456789.1", 10, 2).is_err());
        assert!(parse_decimal("abc", 10, 2).is_err());
        assert!(parse_decimal(".", 10, 2).is_err());
        assert!(parse_decimal("0e2000000000", 10, 2).unwrap_err().contains("exponent"), "no 2 GB of zeros");
        assert_eq!(significant_digits("12345678901234568"), 17);
        assert_eq!(significant_digits("617.28"), 5);
        assert_eq!(twos_complement(-1, None), Some(vec![0xff]));
        assert_eq!(twos_complement(128, None), Some(vec![0, 128]));
        assert_eq!(twos_complement(-129, Some(4)), Some(vec![0xff, 0xff, 0xff, 0x7f]));
        assert_eq!(twos_complement(0, None), Some(vec![0]));
    }

    #[test]
    fn review_cases_decimal_defaults_float_digits_local_times_and_union_paths() {
        // A bytes-decimal default is its raw bytes (Avro's rule), here the single byte 0x00 = 0.00.
        let (schema, p) = plan(
            r#"{"type":"record","name":"R","fields":[{"name":"d","type":{"type":"bytes","logicalType":"decimal",
                "precision":5,"scale":2},"default":"\u0000"}]}"#,
        );
        let bytes = encode(&p, "{}").unwrap();
        assert_eq!(
            decode(&schema, &bytes),
            AvroValue::Record(vec![("d".into(), AvroValue::Decimal(vec![0u8].into()))])
        );
        // More digits than an f64 keeps: refused rather than rounded.
        let (_, p) = plan(
            r#"{"type":"record","name":"R","fields":[{"name":"d","type":{"type":"bytes",
            "logicalType":"decimal","precision":20,"scale":2}}]}"#,
        );
        let e = encode(&p, r#"{"d": 12345678901234567.89}"#).unwrap_err();
        assert!(e.reason.contains("as a string"), "{e}");
        assert!(encode(&p, r#"{"d": "12345678901234567.89"}"#).is_ok());
        // A local timestamp takes no offset.
        let (_, p) = plan(
            r#"{"type":"record","name":"R","fields":[{"name":"t","type":{"type":"long",
            "logicalType":"local-timestamp-micros"}}]}"#,
        );
        assert!(encode(&p, r#"{"t": "2026-12-01T10:00:00"}"#).is_ok());
        assert!(encode(&p, r#"{"t": "2026-12-01T10:00:00+02:00"}"#).unwrap_err().reason.contains("offset"));
        // After a union branch failed inside a record, the next misfit names its own path.
        let (_, p) = plan(
            r#"{"type":"record","name":"R","fields":[
            {"name":"u","type":[{"type":"record","name":"A","fields":[{"name":"x","type":"int"}]},"string"]},
            {"name":"y","type":"int"}]}"#,
        );
        let e = encode(&p, r#"{"u": {"x": "no"}, "y": 1}"#).unwrap_err();
        assert_eq!(e.path, "u.x", "{e}");
        let e = encode(&p, r#"{"u": "s", "y": "no"}"#).unwrap_err();
        assert_eq!(e.path, "y", "{e}");
    }

    #[test]
    fn recursive_types_compile_and_encode() {
        let (schema, p) = plan(
            r#"{"type":"record","name":"Node","fields":[{"name":"v","type":"int"},
                {"name":"next","type":["null","Node"],"default":null}]}"#,
        );
        let bytes = encode(&p, r#"{"v":1,"next":{"v":2,"next":{"v":3}}}"#).unwrap();
        assert!(matches!(decode(&schema, &bytes), AvroValue::Record(_)));
    }

    #[test]
    fn bad_defaults_and_unsupported_types_are_refused_at_compile_time() {
        let s = Schema::parse_str(
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":["null","string"],"default":null}]}"#,
        )
        .unwrap();
        assert!(Plan::compile(&s).is_ok());
        let s = Schema::parse_str(r#"{"type":"record","name":"R","fields":[{"name":"d","type":{"type":"fixed","name":"D","size":12,"logicalType":"duration"}}]}"#).unwrap();
        assert!(Plan::compile(&s).unwrap_err().contains("duration"));
    }

    proptest::proptest! {
        /// Any payload of the order schema, members in any order and strings with escapes, decodes (apache-avro's
        /// reader) to what the JSON said.
        #[test]
        fn generated_payloads_round_trip(
            qty in proptest::collection::vec(proptest::num::i32::ANY, 0..4),
            sku in "\\PC{0,12}",
            cents in -99_999_999i64..99_999_999,
            note in proptest::option::of("\\PC{0,20}"),
            micros in 0i64..4_000_000_000_000_000,
            shuffle in proptest::bool::ANY,
        ) {
            let (schema, p) = plan(ORDER);
            let lines: Vec<serde_json::Value> = qty.iter().map(|q| serde_json::json!({"qty": q, "sku": sku})).collect();
            let total = format!("{}{}.{:02}", if cents < 0 { "-" } else { "" }, cents.abs() / 100, cents.abs() % 100);
            let mut members = [
                ("\"id\"".to_owned(), "\"6f1c2a52-0c1e-4b8e-9a57-2d1f0e4c3b2a\"".to_owned()),
                ("\"total\"".to_owned(), format!("{total:?}")),
                ("\"placed_at\"".to_owned(), micros.to_string()),
                ("\"day\"".to_owned(), "\"2026-12-01\"".to_owned()),
                ("\"st\\u0061tus\"".to_owned(), "\"NEW\"".to_owned()),
                ("\"lines\"".to_owned(), serde_json::Value::Array(lines).to_string()),
                ("\"note\"".to_owned(), serde_json::to_string(&note).unwrap()),
            ];
            if shuffle {
                members.reverse();
            }
            let json = format!("{{{}}}", members.iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(","));
            let bytes = encode(&p, &json).unwrap();
            let AvroValue::Record(fields) = decode(&schema, &bytes) else { panic!() };
            let get = |n: &str| fields.iter().find(|(k, _)| k == n).unwrap().1.clone();
            let AvroValue::Decimal(d) = get("total") else { panic!() };
            let unscaled: Vec<u8> = d.try_into().unwrap();
            let mut be = [if cents < 0 { 0xff } else { 0 }; 16];
            be[16 - unscaled.len()..].copy_from_slice(&unscaled);
            proptest::prop_assert_eq!(i128::from_be_bytes(be), i128::from(cents));
            proptest::prop_assert_eq!(get("placed_at"), AvroValue::TimestampMicros(micros));
            proptest::prop_assert_eq!(get("status"), AvroValue::Enum(0, "NEW".into()));
            let AvroValue::Array(read) = get("lines") else { panic!() };
            proptest::prop_assert_eq!(read.len(), qty.len());
            for (r, q) in read.iter().zip(&qty) {
                proptest::prop_assert_eq!(r, &AvroValue::Record(vec![("sku".into(), AvroValue::String(sku.clone())), ("qty".into(), AvroValue::Int(*q))]));
            }
            let expected_note = match &note {
                None => AvroValue::Union(0, Box::new(AvroValue::Null)),
                Some(n) => AvroValue::Union(1, Box::new(AvroValue::String(n.clone()))),
            };
            proptest::prop_assert_eq!(get("note"), expected_note);
        }

        #[test]
        fn never_panics_on_any_json(json in "\\PC{0,200}") {
            let (_, p) = plan(ORDER);
            let mut out = Vec::new();
            let _ = p.encode_json(&json, &mut out);
            let _ = parse_decimal(&json, 38, 10);
        }
    }
}
