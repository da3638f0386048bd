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
//! advance, so encoding is one walk over the JSON with no schema lookups by name.

use std::collections::HashMap;
use std::fmt;

use apache_avro::Schema;
use apache_avro::schema::{InnerDecimalSchema, RecordSchema, UuidSchema};
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
    Timestamp { unit: TimeUnit },
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
            plan.write(default_node, &json, &mut out, &mut path, 0).map_err(|m| {
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

    /// Appends the Avro binary encoding of `json` to `out`. On a misfit, `out` holds a partial value: discard it.
    pub fn encode(&self, json: &Value, out: &mut Vec<u8>) -> Result<(), Misfit> {
        let mut path = Path::default();
        self.write(0, json, out, &mut path, 0)
    }

    fn write<'a>(
        &'a self,
        node: usize,
        v: &'a Value,
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
            (Node::Null, Value::Null) => {}
            (Node::Boolean, Value::Bool(b)) => out.push(u8::from(*b)),
            (Node::Int, Value::Number(_)) => {
                let i = integer(v).ok_or_else(|| path.misfit(format!("{v} is not an integer")))?;
                let i = i32::try_from(i).map_err(|_| path.misfit(format!("{i} does not fit an Avro int (32 bits)")))?;
                write_long(out, i64::from(i));
            }
            (Node::Long, Value::Number(_)) => {
                let i = integer(v).ok_or_else(|| path.misfit(format!("{v} is not an integer within 64 bits")))?;
                write_long(out, i);
            }
            (Node::Float, Value::Number(n)) => {
                let f = n.as_f64().ok_or_else(|| path.misfit(format!("{v} is not a number")))?;
                #[allow(clippy::cast_possible_truncation)]
                out.extend_from_slice(&(f as f32).to_le_bytes());
            }
            (Node::Double, Value::Number(n)) => {
                let f = n.as_f64().ok_or_else(|| path.misfit(format!("{v} is not a number")))?;
                out.extend_from_slice(&f.to_le_bytes());
            }
            (Node::String, Value::String(s)) => write_bytes(out, s.as_bytes()),
            (Node::Bytes, Value::String(s)) => {
                write_bytes(out, &latin1(s).ok_or_else(|| path.misfit(LATIN1.to_owned()))?);
            }
            (Node::Fixed { size }, Value::String(s)) => {
                let b = latin1(s).ok_or_else(|| path.misfit(LATIN1.to_owned()))?;
                if b.len() != *size {
                    return Err(path.misfit(format!("{} bytes where the fixed type has {size}", b.len())));
                }
                out.extend_from_slice(&b);
            }
            (Node::Uuid { fixed }, Value::String(s)) => {
                let bytes = parse_uuid(s).ok_or_else(|| path.misfit(format!("{s:?} is not a UUID")))?;
                if *fixed {
                    out.extend_from_slice(&bytes);
                } else {
                    write_bytes(out, s.as_bytes());
                }
            }
            (Node::Date, Value::String(s)) => {
                let days = parse_date(s).ok_or_else(|| path.misfit(format!("{s:?} is not a date (YYYY-MM-DD)")))?;
                write_long(out, days);
            }
            (Node::Date | Node::TimeMillis, Value::Number(_)) => {
                let i = integer(v).and_then(|i| i32::try_from(i).ok());
                write_long(out, i64::from(i.ok_or_else(|| path.misfit(format!("{v} is not an int")))?));
            }
            (Node::TimeMillis | Node::TimeMicros, Value::String(s)) => {
                let micros =
                    parse_time(s).ok_or_else(|| path.misfit(format!("{s:?} is not a time of day (HH:MM:SS)")))?;
                write_long(out, if matches!(n, Node::TimeMillis) { micros / 1000 } else { micros });
            }
            (Node::TimeMicros | Node::Timestamp { .. }, Value::Number(_)) => {
                let i = integer(v).ok_or_else(|| path.misfit(format!("{v} is not a long")))?;
                write_long(out, i);
            }
            (Node::Timestamp { unit }, Value::String(s)) => {
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
            (Node::Decimal { precision, scale, fixed_size }, Value::Number(_) | Value::String(_)) => {
                let unscaled = match v {
                    Value::String(s) => parse_decimal(s, *precision, *scale),
                    // An integer needs no text: scale it (the common case of whole amounts).
                    other => match other.as_i64().and_then(|i| scaled(i, *precision, *scale)) {
                        Some(u) => Ok(u),
                        None => parse_decimal(&other.to_string(), *precision, *scale),
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
            (Node::Enum { name, symbols }, Value::String(s)) => {
                let i = symbols.iter().position(|x| x == s).ok_or_else(|| {
                    path.misfit(format!("{s:?} is not a symbol of enum {name} (symbols: {})", symbols.join(", ")))
                })?;
                write_long(out, i64::try_from(i).unwrap_or(i64::MAX));
            }
            (Node::Array(items), Value::Array(values)) => {
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
            (Node::Map(values_node), Value::Object(members)) => {
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
            (Node::Record(r), Value::Object(members)) => {
                for f in &r.fields {
                    match members.get(&f.name) {
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
                // Every member was matched to a field when the counts agree (members are unique); else find the
                // first one the record lacks.
                let matched = r.fields.iter().filter(|f| members.contains_key(&f.name)).count();
                if matched != members.len() {
                    let unknown = members.keys().find(|k| !r.lookup.contains_key(*k)).map_or("", String::as_str);
                    path.push_field(unknown);
                    return Err(path.misfit(format!(
                        "is not a field of record {}; add it to the schema (with a default) before producers write it",
                        r.name
                    )));
                }
            }
            (n, v) => return Err(path.misfit(format!("{} where the schema has {}", json_kind(v), n.describe()))),
        }
        Ok(())
    }

    fn write_union<'a>(
        &'a self,
        branches: &[usize],
        v: &'a Value,
        out: &mut Vec<u8>,
        path: &mut Path<'a>,
        depth: u32,
    ) -> Result<(), Misfit> {
        let mut first_error = None;
        for (i, branch) in branches.iter().enumerate() {
            let is_null = matches!(self.nodes.get(*branch), Some(Node::Null));
            if is_null != v.is_null() {
                continue;
            }
            let start = out.len();
            write_long(out, i64::try_from(i).unwrap_or(i64::MAX));
            match self.write(*branch, v, out, path, depth + 1) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    out.truncate(start);
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
            Node::Timestamp { unit: TimeUnit::Millis } => "timestamp-millis".into(),
            Node::Timestamp { unit: TimeUnit::Micros } => "timestamp-micros".into(),
            Node::Timestamp { unit: TimeUnit::Nanos } => "timestamp-nanos".into(),
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

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An integer JSON number, or a float with no fractional part (some serializers write `3.0`).
fn integer(v: &Value) -> Option<i64> {
    let n = v.as_number()?;
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    let f = n.as_f64()?;
    #[allow(clippy::cast_possible_truncation)]
    (f.fract() == 0.0 && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&f)).then_some(f as i64)
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

/// `i` at `scale` as an unscaled decimal within `precision` digits, if it fits.
fn scaled(i: i64, precision: usize, scale: usize) -> Option<i128> {
    let unscaled = i128::from(i).checked_mul(10i128.checked_pow(u32::try_from(scale).ok()?)?)?;
    let limit = 10i128.checked_pow(u32::try_from(precision).ok()?)?;
    (unscaled.abs() < limit).then_some(unscaled)
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
        Some((m, e)) => (m, e.parse::<i32>().map_err(|_| format!("{text:?} is not a decimal number"))?),
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
            Schema::TimestampMillis | Schema::LocalTimestampMillis => Node::Timestamp { unit: TimeUnit::Millis },
            Schema::TimestampMicros | Schema::LocalTimestampMicros => Node::Timestamp { unit: TimeUnit::Micros },
            Schema::TimestampNanos | Schema::LocalTimestampNanos => Node::Timestamp { unit: TimeUnit::Nanos },
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
        p.encode(&serde_json::from_str(json).unwrap(), &mut out).map(|()| out)
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
        assert_eq!(twos_complement(-1, None), Some(vec![0xff]));
        assert_eq!(twos_complement(128, None), Some(vec![0, 128]));
        assert_eq!(twos_complement(-129, Some(4)), Some(vec![0xff, 0xff, 0xff, 0x7f]));
        assert_eq!(twos_complement(0, None), Some(vec![0]));
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
        #[test]
        fn never_panics_on_any_json(json in "\\PC{0,200}") {
            let (_, p) = plan(ORDER);
            if let Ok(v) = serde_json::from_str::<Value>(&json) {
                let mut out = Vec::new();
                let _ = p.encode(&v, &mut out);
            }
            let _ = parse_decimal(&json, 38, 10);
        }
    }
}
