//! Schema Registry compatibility of a new Avro schema with the versions already registered, explained.
//!
//! Invariant: the verdict follows Avro's schema-resolution rules (Avro 1.11 specification, "Schema Resolution") as
//! the Confluent registry applies them through Avro Java's `SchemaCompatibility`, and every refusal is a
//! [`Problem`] that names the field path, the [`Rule`] broken and the safe path to the intended change. An empty list
//! means the registry accepts the schema under that level; a non-empty one can be accepted by the registry only
//! through the stricter checks below.
//!
//! ```text
//!  check(level, new, existing) ──BACKWARD──> read_problems(reader = new, writer = old version)
//!                              └─FORWARD───> read_problems(reader = old version, writer = new)
//!  read_problems: walk both schemas together (refs resolved per side, each named pair once) ──> Vec<Problem>
//! ```
//!
//! Where this is stricter than the Java resolver (which ignores logical types): decimals resolve only with equal
//! precision and scale, as the specification requires, and two different logical types on the same primitive
//! (timestamp-millis vs timestamp-micros, date vs time-millis) are a type change, because the values would be read
//! in the wrong unit. A logical type against its bare primitive (timestamp-micros vs long) resolves, as in Java.
//!
//! Named types are compared as Java does: the unqualified names must be equal (a namespace-only change passes), or
//! the reader's aliases must contain the writer's full name. Names defined outside the schema (registry schema
//! references) cannot be followed; such a reference matches any named type with the same unqualified name.

use std::collections::{HashMap, HashSet};
use std::fmt;

use apache_avro::Schema;
use apache_avro::schema::{
    Aliases, EnumSchema, FixedSchema, InnerDecimalSchema, Name, RecordField, RecordSchema, UuidSchema,
};

/// A Schema Registry compatibility level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    None,
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

impl Level {
    const ALL: [Level; 7] = [
        Level::None,
        Level::Backward,
        Level::BackwardTransitive,
        Level::Forward,
        Level::ForwardTransitive,
        Level::Full,
        Level::FullTransitive,
    ];

    /// Parses the registry's names ("BACKWARD", "FULL_TRANSITIVE", ..., case-insensitive); None for unknown.
    pub fn parse(s: &str) -> Option<Level> {
        let s = s.trim();
        Self::ALL.into_iter().find(|level| level.as_str().eq_ignore_ascii_case(s))
    }

    /// The registry's name of the level, e.g. "BACKWARD".
    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "NONE",
            Level::Backward => "BACKWARD",
            Level::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Level::Forward => "FORWARD",
            Level::ForwardTransitive => "FORWARD_TRANSITIVE",
            Level::Full => "FULL",
            Level::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    /// Whether the new schema must read the old versions' data.
    fn backward(self) -> bool {
        matches!(self, Level::Backward | Level::BackwardTransitive | Level::Full | Level::FullTransitive)
    }

    /// Whether the old versions' schemas must read the new schema's data.
    fn forward(self) -> bool {
        matches!(self, Level::Forward | Level::ForwardTransitive | Level::Full | Level::FullTransitive)
    }

    /// Whether every existing version counts, not only the latest.
    fn transitive(self) -> bool {
        matches!(self, Level::BackwardTransitive | Level::ForwardTransitive | Level::FullTransitive)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The resolution rule a change breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    /// A field the new schema reads has no default and old data lacks it (BACKWARD).
    AddedWithoutDefault,
    /// A field old readers need, without a default in the old schema, is gone from the new schema (FORWARD).
    RemovedWithoutDefault,
    /// A field disappeared and another of the same type appeared without default: a rename.
    Renamed { from: String, to: String },
    /// The type cannot be read as the other by Avro's promotion rules (int->long->float->double, string<->bytes).
    TypeChanged { from: String, to: String },
    /// An enum symbol written by one side is unknown to the reader (and the reader enum has no default).
    EnumSymbolMissing { symbol: String },
    /// Named types (record/enum/fixed) whose full names differ and no alias bridges them.
    NameChanged { from: String, to: String },
    /// Fixed size changed, decimal precision/scale changed.
    SizeChanged { from: String, to: String },
}

/// One reason the new schema cannot be registered, with the way to make the change safely.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path from the top record's full name, e.g. "com.acme.OrderCreated.customer.email"; array items as
    /// "items[]", map values as "lines{}", union branches by type name.
    pub path: String,
    pub rule: Rule,
    /// Which check found it: "BACKWARD" (new schema reading old data) or "FORWARD" (old schema reading new data),
    /// plus the version compared against when known (set by `check`), e.g. "BACKWARD against version 3".
    pub direction: String,
    /// One sentence: what is wrong, naming the field and types.
    pub message: String,
    /// The safe path, one or two sentences.
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = if self.fix.ends_with('.') { "" } else { "." };
        write!(f, "{}: {} ({}). Safe path: {}{end}", self.path, self.message, self.direction, self.fix)
    }
}

/// Problems reading data written with `writer` using `reader`, by Avro schema resolution. `reader_is_new` says which
/// side is the new schema, so the rule is worded from the change's point of view (a reader field missing from the
/// writer with no default is AddedWithoutDefault when the reader is new, RemovedWithoutDefault when the reader is
/// old).
pub fn read_problems(reader: &Schema, writer: &Schema, reader_is_new: bool) -> Vec<Problem> {
    let direction = if reader_is_new { "BACKWARD" } else { "FORWARD" };
    problems(reader, writer, reader_is_new, direction.to_string())
}

/// Problems of registering `new` after `existing` (oldest first; each with its version number) under `level`:
/// BACKWARD: new reads the latest; FORWARD: latest reads new; FULL: both; *_TRANSITIVE: against every existing
/// version (reported newest first); NONE: nothing. Empty = compatible.
pub fn check(level: Level, new: &Schema, existing: &[(u32, Schema)]) -> Vec<Problem> {
    let against = if level.transitive() {
        existing
    } else {
        existing.split_last().map(|(latest, _)| std::slice::from_ref(latest)).unwrap_or_default()
    };
    let mut out = Vec::new();
    // Newest first: the comparison a non-transitive level would make is the one a developer looks at first.
    for (version, old) in against.iter().rev() {
        if level.backward() {
            out.extend(problems(new, old, true, format!("BACKWARD against version {version}")));
        }
        if level.forward() {
            out.extend(problems(old, new, false, format!("FORWARD against version {version}")));
        }
    }
    out
}

fn problems(reader: &Schema, writer: &Schema, reader_is_new: bool, direction: String) -> Vec<Problem> {
    let mut readers = HashMap::new();
    collect_names(reader, &mut readers);
    let mut writers = HashMap::new();
    collect_names(writer, &mut writers);
    // Paths start from the new schema's name: that is the file the developer is editing.
    let root = branch_name(if reader_is_new { reader } else { writer }, &HashMap::new(), true);
    let mut checker = Checker {
        readers,
        writers,
        reader_is_new,
        direction,
        root: root.clone(),
        visited: HashSet::new(),
        memo: HashMap::new(),
        probing: HashSet::new(),
        assumed: false,
    };
    let mut out = Vec::new();
    checker.walk(reader, writer, &root, &mut out);
    out
}

/// Full name (and alias) -> definition of every named type in one schema, to follow `Schema::Ref`.
type Names<'a> = HashMap<String, &'a Schema>;

fn collect_names<'a>(schema: &'a Schema, names: &mut Names<'a>) {
    match schema {
        Schema::Record(record) => {
            register(names, &record.name, &record.aliases, schema);
            for field in &record.fields {
                collect_names(&field.schema, names);
            }
        }
        Schema::Enum(e) => register(names, &e.name, &e.aliases, schema),
        Schema::Fixed(fixed) | Schema::Duration(fixed) | Schema::Uuid(UuidSchema::Fixed(fixed)) => {
            register(names, &fixed.name, &fixed.aliases, schema);
        }
        Schema::Decimal(decimal) => {
            if let InnerDecimalSchema::Fixed(fixed) = &decimal.inner {
                register(names, &fixed.name, &fixed.aliases, schema);
            }
        }
        Schema::Array(array) => collect_names(&array.items, names),
        Schema::Map(map) => collect_names(&map.types, names),
        Schema::Union(union) => {
            for variant in union.variants() {
                collect_names(variant, names);
            }
        }
        _ => {}
    }
}

fn register<'a>(names: &mut Names<'a>, name: &Name, aliases: &Aliases, schema: &'a Schema) {
    names.insert(name.fullname(None), schema);
    // The parser lets a reference use an alias of a named type, so the aliases must resolve too.
    for alias in aliases.iter().flatten() {
        names.entry(alias.fullname(None)).or_insert(schema);
    }
}

fn resolve<'a>(names: &Names<'a>, schema: &'a Schema) -> &'a Schema {
    match schema {
        Schema::Ref { name } => names.get(&name.fullname(None)).copied().unwrap_or(schema),
        _ => schema,
    }
}

/// A schema as resolution sees it: the encoding, with any logical type split off.
#[derive(Clone, Copy)]
enum Shape<'a> {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    Str,
    Array(&'a Schema),
    Map(&'a Schema),
    Union(&'a [Schema]),
    Record(&'a RecordSchema),
    Enum(&'a EnumSchema),
    Fixed(&'a FixedSchema),
    /// A reference to a name defined outside this schema.
    Unresolved(&'a Name),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Logical {
    Decimal { precision: usize, scale: usize },
    Other(&'static str),
}

impl Logical {
    fn name(self) -> &'static str {
        match self {
            Logical::Decimal { .. } => "decimal",
            Logical::Other(name) => name,
        }
    }
}

fn shape(schema: &Schema) -> (Option<Logical>, Shape<'_>) {
    let logical = |name| Some(Logical::Other(name));
    match schema {
        Schema::Null => (None, Shape::Null),
        Schema::Boolean => (None, Shape::Boolean),
        Schema::Int => (None, Shape::Int),
        Schema::Long => (None, Shape::Long),
        Schema::Float => (None, Shape::Float),
        Schema::Double => (None, Shape::Double),
        Schema::Bytes => (None, Shape::Bytes),
        Schema::String => (None, Shape::Str),
        Schema::Array(array) => (None, Shape::Array(&array.items)),
        Schema::Map(map) => (None, Shape::Map(&map.types)),
        Schema::Union(union) => (None, Shape::Union(union.variants())),
        Schema::Record(record) => (None, Shape::Record(record)),
        Schema::Enum(e) => (None, Shape::Enum(e)),
        Schema::Fixed(fixed) => (None, Shape::Fixed(fixed)),
        Schema::Decimal(decimal) => (
            Some(Logical::Decimal { precision: decimal.precision, scale: decimal.scale }),
            match &decimal.inner {
                InnerDecimalSchema::Bytes => Shape::Bytes,
                InnerDecimalSchema::Fixed(fixed) => Shape::Fixed(fixed),
            },
        ),
        Schema::BigDecimal => (logical("big-decimal"), Shape::Bytes),
        Schema::Uuid(uuid) => (
            logical("uuid"),
            match uuid {
                UuidSchema::Bytes => Shape::Bytes,
                UuidSchema::String => Shape::Str,
                UuidSchema::Fixed(fixed) => Shape::Fixed(fixed),
            },
        ),
        Schema::Date => (logical("date"), Shape::Int),
        Schema::TimeMillis => (logical("time-millis"), Shape::Int),
        Schema::TimeMicros => (logical("time-micros"), Shape::Long),
        Schema::TimestampMillis => (logical("timestamp-millis"), Shape::Long),
        Schema::TimestampMicros => (logical("timestamp-micros"), Shape::Long),
        Schema::TimestampNanos => (logical("timestamp-nanos"), Shape::Long),
        Schema::LocalTimestampMillis => (logical("local-timestamp-millis"), Shape::Long),
        Schema::LocalTimestampMicros => (logical("local-timestamp-micros"), Shape::Long),
        Schema::LocalTimestampNanos => (logical("local-timestamp-nanos"), Shape::Long),
        Schema::Duration(fixed) => (logical("duration"), Shape::Fixed(fixed)),
        Schema::Ref { name } => (None, Shape::Unresolved(name)),
    }
}

/// Whether a writer value of one primitive can be read as the reader's primitive (equal, or Avro's promotions).
fn promotable(reader: Shape<'_>, writer: Shape<'_>) -> bool {
    matches!(
        (reader, writer),
        (Shape::Null, Shape::Null)
            | (Shape::Boolean, Shape::Boolean)
            | (Shape::Int, Shape::Int)
            | (Shape::Long, Shape::Long | Shape::Int)
            | (Shape::Float, Shape::Float | Shape::Long | Shape::Int)
            | (Shape::Double, Shape::Double | Shape::Float | Shape::Long | Shape::Int)
            | (Shape::Bytes, Shape::Bytes | Shape::Str)
            | (Shape::Str, Shape::Str | Shape::Bytes)
    )
}

fn named(shape: Shape<'_>) -> Option<&Name> {
    match shape {
        Shape::Record(record) => Some(&record.name),
        Shape::Enum(e) => Some(&e.name),
        Shape::Fixed(fixed) => Some(&fixed.name),
        Shape::Unresolved(name) => Some(name),
        _ => None,
    }
}

fn aliases(shape: Shape<'_>) -> &Aliases {
    const NONE: &Aliases = &None;
    match shape {
        Shape::Record(record) => &record.aliases,
        Shape::Enum(e) => &e.aliases,
        Shape::Fixed(fixed) => &fixed.aliases,
        _ => NONE,
    }
}

/// Java's rule: equal unqualified names, or the reader knows the writer's full name as an alias.
fn names_match(reader: &Name, reader_aliases: &Aliases, writer: &Name) -> bool {
    let writer_full = writer.fullname(None);
    reader.name() == writer.name() || reader_aliases.iter().flatten().any(|alias| alias.fullname(None) == writer_full)
}

/// Records, enums, fixed, arrays and maps: kinds whose mismatch is best explained from inside.
fn is_structured(shape: Shape<'_>) -> bool {
    matches!(shape, Shape::Record(_) | Shape::Enum(_) | Shape::Fixed(_) | Shape::Array(_) | Shape::Map(_))
}

fn same_kind(a: Shape<'_>, b: Shape<'_>) -> bool {
    std::mem::discriminant(&a) == std::mem::discriminant(&b)
}

/// Short description of a type: "string", "record com.x.Y", "array<long>", "[null, string]", "decimal(10,2)".
fn describe(schema: &Schema, names: &Names<'_>) -> String {
    let schema = resolve(names, schema);
    let (logical, shape) = shape(schema);
    match logical {
        Some(Logical::Decimal { precision, scale }) => return format!("decimal({precision},{scale})"),
        Some(Logical::Other(name)) => return name.to_string(),
        None => {}
    }
    match shape {
        Shape::Array(items) => format!("array<{}>", describe(items, names)),
        Shape::Map(values) => format!("map<{}>", describe(values, names)),
        Shape::Union(variants) => {
            let branches: Vec<String> = variants.iter().map(|variant| describe(variant, names)).collect();
            format!("[{}]", branches.join(", "))
        }
        Shape::Record(record) => format!("record {}", record.name.fullname(None)),
        Shape::Enum(e) => format!("enum {}", e.name.fullname(None)),
        Shape::Fixed(fixed) => format!("fixed {}({})", fixed.name.fullname(None), fixed.size),
        Shape::Unresolved(name) => name.fullname(None),
        primitive => primitive_name(primitive).to_string(),
    }
}

fn primitive_name(shape: Shape<'_>) -> &'static str {
    match shape {
        Shape::Null => "null",
        Shape::Boolean => "boolean",
        Shape::Int => "int",
        Shape::Long => "long",
        Shape::Float => "float",
        Shape::Double => "double",
        Shape::Bytes => "bytes",
        Shape::Str => "string",
        Shape::Array(_) => "array",
        Shape::Map(_) => "map",
        Shape::Union(_) => "union",
        Shape::Record(_) => "record",
        Shape::Enum(_) => "enum",
        Shape::Fixed(_) => "fixed",
        Shape::Unresolved(_) => "reference",
    }
}

/// The path segment of a union branch (or the root of a path): the type's name, unqualified for named types unless
/// `full` asks for the full name.
fn branch_name(schema: &Schema, names: &Names<'_>, full: bool) -> String {
    let schema = resolve(names, schema);
    let (logical, shape) = shape(schema);
    if let Some(name) = named(shape) {
        return if full { name.fullname(None) } else { name.name().to_string() };
    }
    match logical {
        Some(logical) => logical.name().to_string(),
        None => primitive_name(shape).to_string(),
    }
}

/// The type as it would be written in a schema, for fix suggestions; named types by their full name.
fn json_type(schema: &Schema, names: &Names<'_>) -> String {
    let schema = resolve(names, schema);
    match named(shape(schema).1) {
        Some(name) => format!("\"{}\"", name.fullname(None)),
        None => serde_json::to_string(schema).unwrap_or_else(|_| describe(schema, names)),
    }
}

/// One resolution of a reader schema against a writer schema. `walk` reports every problem it meets; `readable` is
/// a probe that only asks whether one type reads another (to pick a union branch, to spot a rename).
struct Checker<'a> {
    readers: Names<'a>,
    writers: Names<'a>,
    reader_is_new: bool,
    direction: String,
    root: String,
    /// Named (reader, writer) pairs already checked or being checked: recursive types stop here, and a type used in
    /// several places is explained once, at its first path.
    visited: HashSet<(String, String)>,
    /// Probe results by (reader, writer) definition. A probe starts with its own `visited`, so its answer does not
    /// depend on where it is asked.
    memo: HashMap<(*const Schema, *const Schema), bool>,
    /// Probes in progress; asking one again (a recursive type) answers "readable" coinductively.
    probing: HashSet<(*const Schema, *const Schema)>,
    /// Whether the current probe leaned on such an answer, so its result holds only once the outer probe confirms.
    assumed: bool,
}

impl<'a> Checker<'a> {
    fn walk(&mut self, reader: &'a Schema, writer: &'a Schema, path: &str, out: &mut Vec<Problem>) {
        let reader = resolve(&self.readers, reader);
        let writer = resolve(&self.writers, writer);
        let (reader_logical, reader_shape) = shape(reader);
        let (writer_logical, writer_shape) = shape(writer);

        // Unions first: whatever the writer's union holds must be readable branch by branch, and a reader union
        // takes any branch that reads the writer's value.
        if let Shape::Union(branches) = writer_shape {
            for branch in branches {
                self.writer_branch(reader, writer, branch, path, out);
            }
            return;
        }
        if let Shape::Union(branches) = reader_shape {
            self.reader_union(reader, branches, writer, path, out);
            return;
        }

        match (reader_logical, writer_logical) {
            (Some(r), Some(w)) if r.name() != w.name() => {
                self.type_changed(path, reader, writer, None, out);
                return;
            }
            (Some(r @ Logical::Decimal { .. }), Some(w)) if r != w => self.decimal_changed(path, reader, writer, out),
            _ => {}
        }

        match (reader_shape, writer_shape) {
            (Shape::Record(r), Shape::Record(w)) => self.record(r, w, path, out),
            (Shape::Enum(r), Shape::Enum(w)) => self.enumeration(r, w, path, out),
            (Shape::Fixed(r), Shape::Fixed(w)) => self.fixed(r, w, path, out),
            (Shape::Array(r), Shape::Array(w)) => self.walk(r, w, &format!("{path}[]"), out),
            (Shape::Map(r), Shape::Map(w)) => self.walk(r, w, &format!("{path}{{}}"), out),
            (Shape::Unresolved(_), _) | (_, Shape::Unresolved(_)) => {
                // Without the definition only the name can be compared.
                match (named(reader_shape), named(writer_shape)) {
                    (Some(r), Some(w)) if r.name() == w.name() => {}
                    (Some(r), Some(w)) => self.name_changed(path, "type", r, w, out),
                    _ => self.type_changed(path, reader, writer, None, out),
                }
            }
            (r, w) if promotable(r, w) => {}
            _ => self.type_changed(path, reader, writer, None, out),
        }
    }

    /// One branch of the writer's union, read by the reader (a union or not).
    fn writer_branch(
        &mut self,
        reader: &'a Schema,
        writer: &'a Schema,
        branch: &'a Schema,
        path: &str,
        out: &mut Vec<Problem>,
    ) {
        let candidates = match shape(reader).1 {
            Shape::Union(branches) => branches,
            _ => std::slice::from_ref(reader),
        };
        if candidates.iter().any(|candidate| self.readable(candidate, branch)) {
            return;
        }
        match self.best_candidate(candidates, branch) {
            Some(candidate) => {
                let path = format!("{path}.{}", branch_name(branch, &self.writers, false));
                self.walk(candidate, branch, &path, out);
            }
            None => self.type_changed(path, reader, writer, Some(branch), out),
        }
    }

    /// A non-union writer read by a reader union: some branch must read it.
    fn reader_union(
        &mut self,
        reader: &'a Schema,
        branches: &'a [Schema],
        writer: &'a Schema,
        path: &str,
        out: &mut Vec<Problem>,
    ) {
        if branches.iter().any(|branch| self.readable(branch, writer)) {
            return;
        }
        match self.best_candidate(branches, writer) {
            Some(branch) => {
                let path = format!("{path}.{}", branch_name(branch, &self.readers, false));
                self.walk(branch, writer, &path, out);
            }
            None => self.type_changed(path, reader, writer, None, out),
        }
    }

    /// The reader branch the writer's value was evidently meant for (same type, or the only one of its kind), so a
    /// mismatch is explained from inside it rather than as "no branch fits".
    fn best_candidate(&self, candidates: &'a [Schema], writer: &'a Schema) -> Option<&'a Schema> {
        let writer = resolve(&self.writers, writer);
        let (writer_logical, writer_shape) = shape(writer);
        let resolved = || candidates.iter().map(|candidate| resolve(&self.readers, candidate));
        resolved()
            .find(|candidate| {
                let (logical, shape) = shape(candidate);
                logical.map(Logical::name) == writer_logical.map(Logical::name)
                    && same_kind(shape, writer_shape)
                    && match (named(shape), named(writer_shape)) {
                        (Some(r), Some(w)) => names_match(r, aliases(shape), w),
                        _ => true,
                    }
            })
            .or_else(|| {
                let mut same = resolved().filter(|candidate| {
                    let shape = shape(candidate).1;
                    is_structured(shape) && same_kind(shape, writer_shape)
                });
                // Only an unambiguous candidate: with two records in the union there is no telling which was meant.
                match (same.next(), same.next()) {
                    (Some(only), None) => Some(only),
                    _ => None,
                }
            })
    }

    /// Whether `reader` reads everything `writer` writes, without reporting anything.
    fn readable(&mut self, reader: &'a Schema, writer: &'a Schema) -> bool {
        let reader = resolve(&self.readers, reader);
        let writer = resolve(&self.writers, writer);
        let key: (*const Schema, *const Schema) = (reader, writer);
        if let Some(&known) = self.memo.get(&key) {
            return known;
        }
        if self.probing.contains(&key) {
            // A recursive type asked about itself: readable unless something else in it is not.
            self.assumed = true;
            return true;
        }
        self.probing.insert(key);
        let outer_visited = std::mem::take(&mut self.visited);
        let outer_assumed = std::mem::replace(&mut self.assumed, false);
        let mut scratch = Vec::new();
        self.walk(reader, writer, "", &mut scratch);
        self.visited = outer_visited;
        self.probing.remove(&key);
        let readable = scratch.is_empty();
        // "Not readable" is final; "readable" is final unless it rests on an outer probe's assumption.
        if !readable || !self.assumed || self.probing.is_empty() {
            self.memo.insert(key, readable);
        }
        self.assumed |= outer_assumed;
        readable
    }

    fn record(&mut self, reader: &'a RecordSchema, writer: &'a RecordSchema, path: &str, out: &mut Vec<Problem>) {
        if !self.visited.insert((reader.name.fullname(None), writer.name.fullname(None))) {
            return;
        }
        if !names_match(&reader.name, &reader.aliases, &writer.name) {
            self.name_changed(path, "record", &reader.name, &writer.name, out);
        }

        // Reader fields match writer fields by name, then by the reader field's aliases.
        let pairs: Vec<(&'a RecordField, Option<&'a RecordField>)> = reader
            .fields
            .iter()
            .map(|field| {
                let by_name = writer.fields.iter().find(|w| w.name == field.name);
                let by_alias =
                    || field.aliases.iter().find_map(|alias| writer.fields.iter().find(|w| &w.name == alias));
                (field, by_name.or_else(by_alias))
            })
            .collect();
        let matched: HashSet<&str> = pairs.iter().filter_map(|(_, w)| w.map(|w| w.name.as_str())).collect();
        let extra: Vec<&'a RecordField> =
            writer.fields.iter().filter(|field| !matched.contains(field.name.as_str())).collect();
        let missing: Vec<&'a RecordField> =
            pairs.iter().filter(|(field, w)| w.is_none() && field.default.is_none()).map(|(field, _)| *field).collect();

        // A rename shows as one field missing and one extra of a readable type; only a one-to-one fit is called a
        // rename, since with two candidates either side there is no telling which became which.
        let mut fits: Vec<(&'a RecordField, &'a RecordField)> = Vec::new();
        for &field in &missing {
            for &candidate in &extra {
                if self.readable(&field.schema, &candidate.schema) {
                    fits.push((field, candidate));
                }
            }
        }
        let renames: HashMap<&str, &'a RecordField> = fits
            .iter()
            .filter(|(field, candidate)| {
                fits.iter().filter(|(f, _)| f.name == field.name).count() == 1
                    && fits.iter().filter(|(_, c)| c.name == candidate.name).count() == 1
            })
            .map(|(field, candidate)| (field.name.as_str(), *candidate))
            .collect();

        for (field, writer_field) in pairs {
            match writer_field {
                Some(writer_field) => {
                    self.walk(&field.schema, &writer_field.schema, &format!("{path}.{}", field.name), out);
                }
                // A default fills the field in when the writer lacks it.
                None if field.default.is_some() => {}
                None => match renames.get(field.name.as_str()) {
                    Some(&candidate) => self.renamed(path, field, candidate, out),
                    None => self.missing_field(path, field, out),
                },
            }
        }
    }

    fn enumeration(&mut self, reader: &'a EnumSchema, writer: &'a EnumSchema, path: &str, out: &mut Vec<Problem>) {
        if !self.visited.insert((reader.name.fullname(None), writer.name.fullname(None))) {
            return;
        }
        if !names_match(&reader.name, &reader.aliases, &writer.name) {
            self.name_changed(path, "enum", &reader.name, &writer.name, out);
        }
        // A reader default absorbs every symbol it does not know.
        if reader.default.is_some() {
            return;
        }
        let name = if self.reader_is_new { &reader.name } else { &writer.name };
        let what = self.subject(path);
        for symbol in writer.symbols.iter().filter(|symbol| !reader.symbols.contains(symbol)) {
            let (message, fix) = if self.reader_is_new {
                (
                    format!(
                        "symbol `{symbol}` was removed from enum {} at {what}, but data written with the old schema may \
                         hold it and the new enum has no default",
                        name.fullname(None)
                    ),
                    format!(
                        "keep `{symbol}` in the symbols (document it as deprecated), or give the enum a default symbol \
                         so unknown symbols are read as that"
                    ),
                )
            } else {
                (
                    format!(
                        "symbol `{symbol}` is new in enum {} at {what}, and consumers on the old schema do not know it \
                         and their enum has no default",
                        name.fullname(None)
                    ),
                    format!(
                        "first register a version whose enum has a default symbol and let every consumer upgrade to it; \
                         only then add `{symbol}`"
                    ),
                )
            };
            self.push(out, path, Rule::EnumSymbolMissing { symbol: symbol.clone() }, message, fix);
        }
    }

    fn fixed(&mut self, reader: &'a FixedSchema, writer: &'a FixedSchema, path: &str, out: &mut Vec<Problem>) {
        if !self.visited.insert((reader.name.fullname(None), writer.name.fullname(None))) {
            return;
        }
        if !names_match(&reader.name, &reader.aliases, &writer.name) {
            self.name_changed(path, "fixed", &reader.name, &writer.name, out);
        }
        if reader.size != writer.size {
            let (from, to) = self.old_new(format!("fixed({})", reader.size), format!("fixed({})", writer.size));
            let message = format!(
                "fixed {} at {} changed size from {from} to {to}, and Avro reads a fixed only at its exact size",
                reader.name.fullname(None),
                self.subject(path)
            );
            let fix = "keep the size; for another size add a new field with a new fixed type and a default, migrate \
                       consumers, then drop the old one"
                .to_string();
            self.push(out, path, Rule::SizeChanged { from, to }, message, fix);
        }
    }

    fn decimal_changed(&self, path: &str, reader: &Schema, writer: &Schema, out: &mut Vec<Problem>) {
        let (from, to) = self.old_new(describe(reader, &self.readers), describe(writer, &self.writers));
        let message = format!(
            "{} changed from {from} to {to}; decimals resolve only with equal precision and scale, otherwise the \
             stored unscaled numbers are read at the wrong scale",
            self.subject(path)
        );
        let fix = "keep precision and scale; for new ones add a new field with the new decimal type and a default, \
                   migrate consumers, then drop the old one"
            .to_string();
        self.push(out, path, Rule::SizeChanged { from, to }, message, fix);
    }

    fn missing_field(&self, path: &str, field: &RecordField, out: &mut Vec<Problem>) {
        let path = format!("{path}.{}", field.name);
        let what = self.subject(&path);
        let ty = describe(&field.schema, &self.readers);
        let name = &field.name;
        if self.reader_is_new {
            let message = format!(
                "new field {what} ({ty}) has no default, so the new schema cannot read data written with the old one, \
                 which lacks it"
            );
            let fix = self.default_fix(field);
            self.push(out, &path, Rule::AddedWithoutDefault, message, fix);
        } else {
            let message = format!(
                "field {what} ({ty}) is gone from the new schema, but consumers on the old schema read it and it has \
                 no default there"
            );
            let fix = format!(
                "keep `{name}` until every consumer stopped reading it, or first give it a default in a version of \
                 its own"
            );
            self.push(out, &path, Rule::RemovedWithoutDefault, message, fix);
        }
    }

    /// How to give a new field a default, in the shape its type needs.
    fn default_fix(&self, field: &RecordField) -> String {
        let name = &field.name;
        let schema = resolve(&self.readers, &field.schema);
        match schema {
            Schema::Union(union) if matches!(union.variants().first(), Some(Schema::Null)) => {
                format!("give `{name}` the default null")
            }
            // A union's default must be a value of its first branch.
            Schema::Union(union) if union.is_nullable() => {
                format!("move \"null\" to the front of `{name}`'s union and give it the default null")
            }
            Schema::Union(_) => format!(
                "give `{name}` a default (a value of the union's first branch), or make it optional: \"null\" as \
                 the first branch with default null"
            ),
            _ => format!(
                "give `{name}` a default (for an optional field: type [\"null\", {}] with default null)",
                json_type(schema, &self.readers)
            ),
        }
    }

    fn renamed(&self, path: &str, reader: &RecordField, writer: &RecordField, out: &mut Vec<Problem>) {
        let (from, to) = self.old_new(reader.name.clone(), writer.name.clone());
        // The path names the field as the new schema has it: that is where the fix goes.
        let field_path = format!("{path}.{to}");
        let parent = self.relative(path);
        let qualified = |name: &str| if parent.is_empty() { format!("`{name}`") } else { format!("`{parent}.{name}`") };
        let (message, fix) = if self.reader_is_new {
            (
                format!(
                    "field {} was renamed to `{to}`: the new schema reads `{to}`, which data written with the old schema \
                     lacks, and `{to}` has neither a default nor the alias `{from}`",
                    qualified(&from)
                ),
                format!(
                    "keep `{from}` and add `{to}` with a default (or give `{to}` the alias `{from}`); migrate consumers \
                     to `{to}`; drop `{from}` in a later version"
                ),
            )
        } else {
            (
                format!(
                    "field {} was renamed to `{to}`: consumers on the old schema read `{from}`, which new data lacks, \
                     and it has no default there (aliases in the new schema do not help old readers)",
                    qualified(&from)
                ),
                format!(
                    "keep `{from}` and add `{to}` with a default; migrate consumers to `{to}`; drop `{from}` only after \
                     a version that gives it a default has reached every consumer"
                ),
            )
        };
        self.push(out, &field_path, Rule::Renamed { from, to }, message, fix);
    }

    /// `reader` cannot read `writer`; `branch` is the writer union's branch that no reader type reads, if that is
    /// the reason.
    fn type_changed(
        &self,
        path: &str,
        reader: &Schema,
        writer: &Schema,
        branch: Option<&Schema>,
        out: &mut Vec<Problem>,
    ) {
        let (from, to) = self.old_new(describe(reader, &self.readers), describe(writer, &self.writers));
        let what = self.subject(path);
        let null_branch = matches!(branch, Some(Schema::Null));
        let branch = branch.map(|branch| describe(branch, &self.writers));
        let message = match (self.reader_is_new, branch) {
            (true, None) => format!("{what} changed from {from} to {to}, and Avro cannot read {from} data as {to}"),
            (true, Some(branch)) => format!(
                "{what} changed from {from} to {to}, and {to} cannot read the {branch} values data written with the \
                 old schema may hold"
            ),
            (false, None) => format!(
                "{what} changed from {from} to {to}, and consumers on the old schema cannot read {to} data as {from}"
            ),
            (false, Some(branch)) => format!(
                "{what} changed from {from} to {to}, and consumers on the old schema ({from}) cannot read the {branch} \
                 values the new schema may write"
            ),
        };
        let fix = self.type_change_fix(path, null_branch);
        self.push(out, path, Rule::TypeChanged { from, to }, message, fix);
    }

    /// The safe path of a type change; making a field required or optional gets its own wording, since that is the
    /// usual reason a union appears or disappears.
    fn type_change_fix(&self, path: &str, null_branch: bool) -> String {
        let relative = self.relative(path);
        let field = relative.rsplit('.').next().filter(|name| !name.is_empty()).unwrap_or("the field");
        match (null_branch, self.reader_is_new) {
            (true, true) => format!(
                "keep `{field}` optional, since old data may hold nulls; for a required value add a new field with a \
                 default, migrate consumers, then drop `{field}`"
            ),
            (true, false) => format!(
                "old consumers cannot read null: add a new optional field (type [\"null\", ...] with default null) \
                 instead, migrate consumers to it, then drop `{field}`"
            ),
            (false, true) => "add a new field of the new type with a default, migrate consumers, then drop the old one. \
                              In place BACKWARD allows only Avro's promotions from old to new type: int→long→float→double \
                              and string↔bytes"
                .to_string(),
            (false, false) => "add a new field of the new type with a default, migrate consumers, then drop the old one. \
                               In place FORWARD allows only Avro's promotions from new to old type (int→long→float→double \
                               and string↔bytes), that is narrowing"
                .to_string(),
        }
    }

    fn name_changed(&self, path: &str, kind: &str, reader: &Name, writer: &Name, out: &mut Vec<Problem>) {
        let (from, to) = self.old_new(reader.fullname(None), writer.fullname(None));
        let what = self.subject(path);
        let (message, fix) = if self.reader_is_new {
            (
                format!("the {kind} at {what} was renamed from {from} to {to}, and {to} has no alias {from}"),
                format!("keep the name {from}, or add \"aliases\": [\"{from}\"] to {to}"),
            )
        } else {
            (
                format!(
                    "the {kind} at {what} was renamed from {from} to {to}, a name consumers on the old schema do not know"
                ),
                format!(
                    "keep the name {from}: aliases live on the reader, and consumers on the old schema carry none for \
                     {to}"
                ),
            )
        };
        self.push(out, path, Rule::NameChanged { from, to }, message, fix);
    }

    /// Orders a (reader, writer) pair of descriptions as (old, new).
    fn old_new(&self, reader: String, writer: String) -> (String, String) {
        if self.reader_is_new { (writer, reader) } else { (reader, writer) }
    }

    /// The path below the root, e.g. "customer.email" (empty at the root).
    fn relative<'p>(&self, path: &'p str) -> &'p str {
        path.strip_prefix(self.root.as_str()).unwrap_or(path).trim_start_matches('.')
    }

    /// How a message names the thing at `path`.
    fn subject(&self, path: &str) -> String {
        match self.relative(path) {
            "" => "the top-level schema".to_string(),
            relative => format!("`{relative}`"),
        }
    }

    fn push(&self, out: &mut Vec<Problem>, path: &str, rule: Rule, message: String, fix: String) {
        out.push(Problem { path: path.to_string(), rule, direction: self.direction.clone(), message, fix });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Schema {
        Schema::parse_str(json).unwrap()
    }

    /// The record `com.acme.OrderCreated` with the given fields (JSON, without the brackets).
    fn order(fields: &str) -> Schema {
        parse(&format!(r#"{{"type":"record","name":"OrderCreated","namespace":"com.acme","fields":[{fields}]}}"#))
    }

    const ID: &str = r#"{"name":"id","type":"string"}"#;

    fn rules(problems: &[Problem]) -> Vec<Rule> {
        problems.iter().map(|problem| problem.rule.clone()).collect()
    }

    #[test]
    fn level_names_round_trip() {
        for level in Level::ALL {
            assert_eq!(Level::parse(level.as_str()), Some(level));
            assert_eq!(Level::parse(&level.as_str().to_lowercase()), Some(level));
            assert_eq!(level.to_string(), level.as_str());
        }
        assert_eq!(Level::parse(" full_transitive "), Some(Level::FullTransitive));
        assert_eq!(Level::parse("SOMETIMES"), None);
    }

    #[test]
    fn optional_field_with_default_is_fully_compatible() {
        let old = order(ID);
        let new = order(&format!(r#"{ID},{{"name":"note","type":["null","string"],"default":null}}"#));
        assert_eq!(check(Level::Full, &new, &[(1, old)]), vec![]);
    }

    #[test]
    fn added_field_without_default_fails_backward_only() {
        let old = order(ID);
        let new = order(&format!(r#"{ID},{{"name":"email","type":"string"}}"#));
        let problems = check(Level::Backward, &new, &[(1, old.clone())]);
        assert_eq!(rules(&problems), vec![Rule::AddedWithoutDefault]);
        let problem = &problems[0];
        assert_eq!(problem.path, "com.acme.OrderCreated.email");
        assert_eq!(problem.direction, "BACKWARD against version 1");
        assert!(problem.fix.contains(r#"["null", "string"] with default null"#), "{}", problem.fix);
        assert_eq!(check(Level::Forward, &new, &[(1, old)]), vec![]);
    }

    #[test]
    fn removed_field_without_default_fails_forward_only() {
        let old = order(&format!(r#"{ID},{{"name":"email","type":"string"}}"#));
        let new = order(ID);
        let problems = check(Level::Forward, &new, &[(4, old.clone())]);
        assert_eq!(rules(&problems), vec![Rule::RemovedWithoutDefault]);
        assert_eq!(problems[0].path, "com.acme.OrderCreated.email");
        assert_eq!(problems[0].direction, "FORWARD against version 4");
        assert!(problems[0].fix.contains("default in a version of its own"));
        assert_eq!(check(Level::Backward, &new, &[(4, old)]), vec![]);
    }

    #[test]
    fn rename_is_reported_as_rename() {
        let old = order(&format!(r#"{ID},{{"name":"email","type":"string"}}"#));
        let new = order(&format!(r#"{ID},{{"name":"mail","type":"string"}}"#));
        let problems = check(Level::Backward, &new, &[(1, old.clone())]);
        let renamed = Rule::Renamed { from: "email".into(), to: "mail".into() };
        assert_eq!(rules(&problems), vec![renamed.clone()]);
        assert_eq!(problems[0].path, "com.acme.OrderCreated.mail");
        assert!(problems[0].fix.contains("alias `email`"), "{}", problems[0].fix);
        assert!(problems[0].fix.contains("add `mail` with a default"), "{}", problems[0].fix);
        // The old schema reading new data sees the same rename, worded from the change's point of view.
        assert_eq!(rules(&check(Level::Forward, &new, &[(1, old)])), vec![renamed]);
    }

    #[test]
    fn rename_with_alias_is_backward_compatible() {
        let old = order(&format!(r#"{ID},{{"name":"email","type":"string"}}"#));
        let new = order(&format!(r#"{ID},{{"name":"mail","type":"string","aliases":["email"]}}"#));
        assert_eq!(check(Level::Backward, &new, &[(1, old.clone())]), vec![]);
        // Aliases live on the reader: old consumers still look for `email`.
        let forward = check(Level::Forward, &new, &[(1, old)]);
        assert_eq!(rules(&forward), vec![Rule::Renamed { from: "email".into(), to: "mail".into() }]);
    }

    #[test]
    fn two_candidates_are_not_a_rename() {
        let old = order(&format!(r#"{ID},{{"name":"email","type":"string"}}"#));
        let new = order(&format!(r#"{ID},{{"name":"mail","type":"string"}},{{"name":"phone","type":"string"}}"#));
        let problems = check(Level::Backward, &new, &[(1, old)]);
        assert_eq!(rules(&problems), vec![Rule::AddedWithoutDefault, Rule::AddedWithoutDefault]);
    }

    #[test]
    fn promotion_int_to_long_only() {
        let int = order(r#"{"name":"qty","type":"int"}"#);
        let long = order(r#"{"name":"qty","type":"long"}"#);
        assert_eq!(check(Level::Backward, &long, &[(1, int.clone())]), vec![]);
        let problems = check(Level::Backward, &int, &[(1, long.clone())]);
        assert_eq!(rules(&problems), vec![Rule::TypeChanged { from: "long".into(), to: "int".into() }]);
        assert_eq!(problems[0].path, "com.acme.OrderCreated.qty");
        assert!(problems[0].fix.contains("int→long→float→double"));
        // Widening is not FORWARD compatible: old readers of int cannot read long.
        let forward = check(Level::Forward, &long, &[(1, int)]);
        assert_eq!(rules(&forward), vec![Rule::TypeChanged { from: "int".into(), to: "long".into() }]);
    }

    #[test]
    fn string_and_bytes_are_interchangeable() {
        let string = order(r#"{"name":"blob","type":"string"}"#);
        let bytes = order(r#"{"name":"blob","type":"bytes"}"#);
        assert_eq!(check(Level::Full, &bytes, &[(1, string)]), vec![]);
    }

    #[test]
    fn nested_record_field_path() {
        let customer = |extra: &str| {
            order(&format!(
                r#"{{"name":"customer","type":{{"type":"record","name":"Customer","fields":[
                    {{"name":"name","type":"string"}}{extra}]}}}}"#
            ))
        };
        let old = customer("");
        let new = customer(r#",{"name":"email","type":"string"}"#);
        let problems = check(Level::Backward, &new, &[(1, old)]);
        assert_eq!(rules(&problems), vec![Rule::AddedWithoutDefault]);
        assert_eq!(problems[0].path, "com.acme.OrderCreated.customer.email");
        assert!(problems[0].message.contains("`customer.email`"), "{}", problems[0].message);
    }

    #[test]
    fn array_of_records_path() {
        let lines = |sku: &str| {
            order(&format!(
                r#"{{"name":"lines","type":{{"type":"array","items":{{"type":"record","name":"Line","fields":[
                    {{"name":"sku","type":"{sku}"}}]}}}}}}"#
            ))
        };
        let problems = check(Level::Backward, &lines("int"), &[(1, lines("string"))]);
        assert_eq!(rules(&problems), vec![Rule::TypeChanged { from: "string".into(), to: "int".into() }]);
        assert_eq!(problems[0].path, "com.acme.OrderCreated.lines[].sku");
    }

    #[test]
    fn map_values_path() {
        let attrs = |ty: &str| order(&format!(r#"{{"name":"attrs","type":{{"type":"map","values":"{ty}"}}}}"#));
        let problems = check(Level::Backward, &attrs("int"), &[(1, attrs("long"))]);
        assert_eq!(problems[0].path, "com.acme.OrderCreated.attrs{}");
    }

    #[test]
    fn enum_symbol_removed_fails_backward() {
        let status = |symbols: &str, default: &str| {
            order(&format!(
                r#"{{"name":"status","type":{{"type":"enum","name":"Status","symbols":[{symbols}]{default}}}}}"#
            ))
        };
        let old = status(r#""NEW","PAID","SHIPPED""#, "");
        let new = status(r#""NEW","PAID""#, "");
        let problems = check(Level::Backward, &new, &[(1, old.clone())]);
        assert_eq!(rules(&problems), vec![Rule::EnumSymbolMissing { symbol: "SHIPPED".into() }]);
        assert_eq!(problems[0].path, "com.acme.OrderCreated.status");
        // Adding symbols is fine for the new reader, and a reader default absorbs unknown ones.
        assert_eq!(check(Level::Backward, &old, &[(1, new.clone())]), vec![]);
        let with_default = status(r#""NEW","PAID""#, r#","default":"NEW""#);
        assert_eq!(check(Level::Backward, &with_default, &[(1, old.clone())]), vec![]);
        // Old readers without a default do not know a new symbol.
        let forward = check(Level::Forward, &old, &[(1, new)]);
        assert_eq!(rules(&forward), vec![Rule::EnumSymbolMissing { symbol: "SHIPPED".into() }]);
    }

    #[test]
    fn optional_to_required_fails_backward() {
        let optional = order(r#"{"name":"note","type":["null","string"],"default":null}"#);
        let required = order(r#"{"name":"note","type":"string"}"#);
        let problems = check(Level::Backward, &required, &[(1, optional)]);
        assert_eq!(rules(&problems), vec![Rule::TypeChanged { from: "[null, string]".into(), to: "string".into() }]);
        assert_eq!(problems[0].path, "com.acme.OrderCreated.note");
        assert!(problems[0].message.contains("null values"), "{}", problems[0].message);
        assert!(problems[0].fix.starts_with("keep `note` optional"), "{}", problems[0].fix);
    }

    #[test]
    fn required_to_optional_passes_backward_fails_forward() {
        let required = order(r#"{"name":"note","type":"string"}"#);
        let optional = order(r#"{"name":"note","type":["null","string"],"default":null}"#);
        assert_eq!(check(Level::Backward, &optional, &[(1, required.clone())]), vec![]);
        let forward = check(Level::Forward, &optional, &[(1, required)]);
        assert_eq!(rules(&forward), vec![Rule::TypeChanged { from: "string".into(), to: "[null, string]".into() }]);
    }

    #[test]
    fn record_inside_union_is_explained_from_inside() {
        let address = |extra: &str| {
            order(&format!(
                r#"{{"name":"shipping","type":["null",{{"type":"record","name":"Address","fields":[
                    {{"name":"street","type":"string"}}{extra}]}}],"default":null}}"#
            ))
        };
        let new = address(r#",{"name":"zip","type":"string"}"#);
        let problems = check(Level::Full, &new, &[(1, address(""))]);
        assert_eq!(rules(&problems), vec![Rule::AddedWithoutDefault]);
        assert_eq!(problems[0].path, "com.acme.OrderCreated.shipping.Address.zip");
    }

    #[test]
    fn decimal_scale_change_fails() {
        let amount = |scale: u32| {
            order(&format!(
                r#"{{"name":"amount","type":{{"type":"bytes","logicalType":"decimal","precision":10,"scale":{scale}}}}}"#
            ))
        };
        let problems = check(Level::Backward, &amount(3), &[(1, amount(2))]);
        assert_eq!(
            rules(&problems),
            vec![Rule::SizeChanged { from: "decimal(10,2)".into(), to: "decimal(10,3)".into() }]
        );
        assert_eq!(check(Level::Full, &amount(2), &[(1, amount(2))]), vec![]);
    }

    #[test]
    fn fixed_size_change_fails() {
        let hash =
            |size: u32| order(&format!(r#"{{"name":"hash","type":{{"type":"fixed","name":"Md5","size":{size}}}}}"#));
        let problems = check(Level::Backward, &hash(32), &[(1, hash(16))]);
        assert_eq!(rules(&problems), vec![Rule::SizeChanged { from: "fixed(16)".into(), to: "fixed(32)".into() }]);
    }

    #[test]
    fn logical_types_against_primitives() {
        let ts = |ty: &str| order(&format!(r#"{{"name":"at","type":{ty}}}"#));
        let micros = ts(r#"{"type":"long","logicalType":"timestamp-micros"}"#);
        let millis = ts(r#"{"type":"long","logicalType":"timestamp-millis"}"#);
        let long = ts(r#""long""#);
        assert_eq!(check(Level::Full, &micros, &[(1, long)]), vec![]);
        let problems = check(Level::Backward, &micros, &[(1, millis)]);
        assert_eq!(
            rules(&problems),
            vec![Rule::TypeChanged { from: "timestamp-millis".into(), to: "timestamp-micros".into() }]
        );
    }

    #[test]
    fn record_rename_needs_alias() {
        let old = parse(r#"{"type":"record","name":"Order","namespace":"com.acme","fields":[]}"#);
        let renamed = parse(r#"{"type":"record","name":"Purchase","namespace":"com.acme","fields":[]}"#);
        let problems = check(Level::Backward, &renamed, &[(1, old.clone())]);
        assert_eq!(
            rules(&problems),
            vec![Rule::NameChanged { from: "com.acme.Order".into(), to: "com.acme.Purchase".into() }]
        );
        assert_eq!(problems[0].path, "com.acme.Purchase");
        let aliased =
            parse(r#"{"type":"record","name":"Purchase","namespace":"com.acme","aliases":["Order"],"fields":[]}"#);
        assert_eq!(check(Level::Backward, &aliased, &[(1, old.clone())]), vec![]);
        // Java compares unqualified names, so a namespace move passes.
        let moved = parse(r#"{"type":"record","name":"Order","namespace":"com.other","fields":[]}"#);
        assert_eq!(check(Level::Full, &moved, &[(1, old)]), vec![]);
    }

    #[test]
    fn transitive_checks_every_version() {
        let v1 = order(ID);
        let v2 = order(&format!(r#"{ID},{{"name":"email","type":"string","default":""}}"#));
        let new = order(r#"{"name":"email","type":"string","default":""}"#);
        let existing = [(1, v1), (2, v2)];
        // The latest version has `email` with a default, and the new schema drops `id`: fine for BACKWARD.
        assert_eq!(check(Level::Backward, &new, &existing), vec![]);
        assert_eq!(check(Level::BackwardTransitive, &new, &existing), vec![]);
        // FORWARD: version 1 needs `id`, which has no default there; version 2 too.
        let problems = check(Level::ForwardTransitive, &new, &existing);
        let directions: Vec<&str> = problems.iter().map(|p| p.direction.as_str()).collect();
        assert_eq!(directions, vec!["FORWARD against version 2", "FORWARD against version 1"]);

        // A schema compatible with the latest version only.
        let v3 = order(&format!(r#"{ID},{{"name":"email","type":"string"}}"#));
        let existing = [(1, order(ID)), (2, v3.clone())];
        let newer =
            order(&format!(r#"{ID},{{"name":"email","type":"string"}},{{"name":"n","type":"int","default":0}}"#));
        assert_eq!(check(Level::Backward, &newer, &existing), vec![]);
        let problems = check(Level::BackwardTransitive, &newer, &existing);
        assert_eq!(rules(&problems), vec![Rule::AddedWithoutDefault]);
        assert_eq!(problems[0].direction, "BACKWARD against version 1");
        assert!(problems[0].to_string().contains("(BACKWARD against version 1)"));
    }

    #[test]
    fn recursive_type_terminates() {
        let list = |extra: &str| {
            parse(&format!(
                r#"{{"type":"record","name":"Node","namespace":"com.acme","fields":[
                    {{"name":"value","type":"long"}}{extra},
                    {{"name":"next","type":["null","Node"],"default":null}}]}}"#
            ))
        };
        assert_eq!(check(Level::FullTransitive, &list(""), &[(1, list(""))]), vec![]);
        let problems = check(Level::Backward, &list(r#",{"name":"label","type":"string"}"#), &[(1, list(""))]);
        // Reported once, at its first path, not again for every `next`.
        assert_eq!(rules(&problems), vec![Rule::AddedWithoutDefault]);
        assert_eq!(problems[0].path, "com.acme.Node.label");
    }

    #[test]
    fn mutually_recursive_types_terminate() {
        let tree = |leaf: &str| {
            parse(&format!(
                r#"{{"type":"record","name":"Tree","fields":[
                    {{"name":"children","type":{{"type":"array","items":{{"type":"record","name":"Branch","fields":[
                        {{"name":"leaf","type":"{leaf}"}},
                        {{"name":"sub","type":["null","Tree"]}}]}}}}}},
                    {{"name":"alt","type":["null","Branch","Tree"]}}]}}"#
            ))
        };
        assert_eq!(check(Level::Full, &tree("long"), &[(1, tree("long"))]), vec![]);
        let problems = check(Level::Backward, &tree("int"), &[(1, tree("long"))]);
        assert_eq!(rules(&problems), vec![Rule::TypeChanged { from: "long".into(), to: "int".into() }]);
        assert_eq!(problems[0].path, "Tree.children[].leaf");
    }

    #[test]
    fn union_branch_type_change() {
        let note = |ty: &str| order(&format!(r#"{{"name":"note","type":["null","{ty}"],"default":null}}"#));
        let problems = check(Level::Backward, &note("int"), &[(1, note("string"))]);
        assert_eq!(
            rules(&problems),
            vec![Rule::TypeChanged { from: "[null, string]".into(), to: "[null, int]".into() }]
        );
        assert!(problems[0].message.contains("the string values"), "{}", problems[0].message);
    }

    #[test]
    fn reused_named_type_is_explained_once() {
        let addresses = |extra: &str| {
            order(&format!(
                r#"{{"name":"billing","type":{{"type":"record","name":"Address","fields":[
                    {{"name":"street","type":"string"}}{extra}]}}}},
                   {{"name":"shipping","type":"Address"}}"#
            ))
        };
        let new = addresses(r#",{"name":"zip","type":"string"}"#);
        let problems = check(Level::Backward, &new, &[(1, addresses(""))]);
        assert_eq!(rules(&problems), vec![Rule::AddedWithoutDefault]);
        assert_eq!(problems[0].path, "com.acme.OrderCreated.billing.zip");
        // The reference resolves to the definition: a compatible change passes through both fields.
        let optional = addresses(r#",{"name":"zip","type":["null","string"],"default":null}"#);
        assert_eq!(check(Level::Full, &optional, &[(1, addresses(""))]), vec![]);
    }

    #[test]
    fn none_accepts_anything() {
        assert_eq!(check(Level::None, &Schema::Int, &[(1, order(ID))]), vec![]);
        assert_eq!(check(Level::FullTransitive, &Schema::Int, &[]), vec![]);
    }

    #[test]
    fn display_has_path_message_direction_and_fix() {
        let problems = read_problems(&order(&format!(r#"{ID},{{"name":"email","type":"string"}}"#)), &order(ID), true);
        let text = problems[0].to_string();
        assert!(text.starts_with("com.acme.OrderCreated.email: new field `email` (string) has no default"), "{text}");
        assert!(text.contains("(BACKWARD). Safe path: give `email` a default"), "{text}");
        assert!(text.ends_with('.'), "{text}");
    }
}
