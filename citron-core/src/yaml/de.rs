//! serde over the positioned tree, reporting every problem with its position.
//!
//! Lab files (and later any settings file) are plain serde types: their fields, defaults and
//! value parsers (`20G`, `30s`, IP addresses) are declared once, on the types. [`Reader`] reads
//! them from a [`Document`](super::Document) the way job descriptions are read: every problem at
//! once, each at the line and column of the value (or key) it is about, unknown keys with a
//! "did you mean". Serde stops at a struct's first error, so [`Reader::fields`] reads each key
//! of a mapping on its own, then the whole mapping for what only the whole can say (a missing
//! required key).
//!
//! Scalars are read as serde_yaml reads them: a plain scalar is null, a boolean, a number or a
//! string by its text; quoted and block scalars are strings; any non-null scalar is accepted
//! where a string is expected (`port: 8080` into a `String` is `"8080"`).

use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Unexpected, Visitor};

use super::{Node, NodeKind, Pos, Scalar, Style};

/// One problem in a settings file, before the file name is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    /// Where.
    pub pos: Pos,
    /// The field path, e.g. `duts[1].ip`; `<document>` for the whole text.
    pub field: String,
    /// What is wrong and what to write instead.
    pub message: String,
}

/// The allowed key closest to `key`, if it is close enough to be a likely typo.
///
/// ```text
/// suggest("max_disk_sise", &["max_disk_size", "connections"]) == Some("max_disk_size")
/// ```
pub(crate) fn suggest<'a>(key: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed.iter().map(|a| (strsim::levenshtein(a, key), *a)).filter(|(d, _)| *d <= 2).min_by_key(|(d, _)| *d).map(|(_, a)| a)
}

/// The field names of the struct `T` as its `Deserialize` declares them (derived structs only:
/// empty for maps, lists and scalars).
pub(crate) fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut out = None;
    let _ = T::deserialize(Capture(&mut out));
    out.unwrap_or(&[])
}

/// Why a value could not be read; its position is the deepest node the error came from.
#[derive(Debug)]
pub(crate) struct DeError {
    pos: Option<Pos>,
    message: String,
    /// A required field is absent: expected when one key of a mapping is read on its own.
    missing: bool,
}

impl DeError {
    /// Places an error that has no position yet at `pos`.
    fn at(mut self, pos: Pos) -> DeError {
        self.pos.get_or_insert(pos);
        self
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError { pos: None, message: msg.to_string(), missing: false }
    }

    fn invalid_type(unexp: Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        let found = match unexp {
            Unexpected::Unit => "nothing (null)".to_string(),
            Unexpected::Seq => "a list".to_string(),
            Unexpected::Map => "a mapping".to_string(),
            other => other.to_string(),
        };
        Self::custom(format!("expected {exp}, found {found}"))
    }

    fn missing_field(field: &'static str) -> Self {
        DeError { pos: None, message: format!("`{field}` is missing; add it"), missing: true }
    }
}

/// Reads serde types from positioned nodes, collecting problems.
#[derive(Debug, Default)]
pub(crate) struct Reader {
    /// Every problem found so far, in the order found.
    pub problems: Vec<Problem>,
}

/// `parent.key`, or `key` at the top.
pub(crate) fn child(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl Reader {
    /// Records a problem.
    pub fn err(&mut self, pos: Pos, field: &str, message: impl Into<String>) {
        let field = if field.is_empty() { "<document>" } else { field };
        self.problems.push(Problem { pos, field: field.to_string(), message: message.into() });
    }

    fn record(&mut self, e: DeError, at: Pos, field: &str) {
        self.err(e.pos.unwrap_or(at), field, e.message);
    }

    /// `node` read as a `T` (the first problem inside it is recorded).
    pub fn value<T: DeserializeOwned>(&mut self, node: &Node, field: &str) -> Option<T> {
        T::deserialize(NodeDe(node)).map_err(|e| self.record(e, node.pos, field)).ok()
    }

    /// The entries of the mapping `node` whose keys are in `allowed`, each once; an unknown key
    /// (with the allowed key it was probably meant to be) or a repeated one is a problem.
    pub fn entries<'n>(&mut self, node: &'n Node, field: &str, allowed: &[&str]) -> Option<Vec<(&'n Scalar, &'n Node)>> {
        let NodeKind::Map(entries) = &node.kind else {
            let keys = if allowed.is_empty() { String::new() } else { format!(" with keys {}", allowed.join(", ")) };
            self.err(node.pos, field, format!("expected a mapping{keys}, found {}", node.describe()));
            return None;
        };
        let mut out: Vec<(&Scalar, &Node)> = Vec::new();
        for (k, v) in entries {
            let key = k.value.as_str();
            if !allowed.contains(&key) {
                let hint = suggest(key, allowed).map(|n| format!("did you mean `{n}`? ")).unwrap_or_default();
                self.err(k.pos, &child(field, key), format!("unknown field `{key}`; {hint}allowed here: {}", allowed.join(", ")));
            } else if let Some((first, _)) = out.iter().find(|(f, _)| f.value == key) {
                let line = first.pos.line;
                self.err(k.pos, &child(field, key), format!("`{key}` is given twice (first at line {line}); keep one"));
            } else {
                out.push((k, v));
            }
        }
        Some(out)
    }

    /// The struct `T` from the mapping `node`, every bad key reported: unknown and repeated
    /// keys, each value that is not what its field takes (read one key at a time), then what
    /// is missing. `None` if anything was wrong.
    pub fn fields<T: DeserializeOwned>(&mut self, node: &Node, field: &str) -> Option<T> {
        let entries = self.entries(node, field, fields_of::<T>())?;
        let before = self.problems.len();
        for &(k, v) in &entries {
            self.field_alone::<T>(k, v, field);
        }
        if self.problems.len() > before {
            return None;
        }
        T::deserialize(EntriesDe { pos: node.pos, entries }).map_err(|e| self.record(e, node.pos, field)).ok()
    }

    /// Reads the one entry `key: value` as a `T` (missing other fields are not this key's
    /// problem) and records what is wrong with it.
    pub fn field_alone<T: DeserializeOwned>(&mut self, key: &Scalar, value: &Node, parent: &str) {
        if let Err(e) = T::deserialize(EntriesDe { pos: key.pos, entries: vec![(key, value)] }) {
            if !e.missing {
                self.record(e, value.pos, &child(parent, &key.value));
            }
        }
    }

    /// The whole mapping `entries` (already checked one by one) read as a `T`.
    pub fn whole<T: DeserializeOwned>(&mut self, pos: Pos, entries: Vec<(&Scalar, &Node)>, field: &str) -> Option<T> {
        T::deserialize(EntriesDe { pos, entries }).map_err(|e| self.record(e, pos, field)).ok()
    }
}

/// A plain scalar's value as YAML 1.2 (core schema) resolves it.
fn plain_any<'de, V: Visitor<'de>>(s: &Scalar, v: V) -> Result<V::Value, DeError> {
    let t = s.value.as_str();
    if s.is_null() {
        return v.visit_unit();
    }
    match t {
        "true" | "True" | "TRUE" => return v.visit_bool(true),
        "false" | "False" | "FALSE" => return v.visit_bool(false),
        _ => {}
    }
    if let Ok(n) = t.parse::<u64>() {
        return v.visit_u64(n);
    }
    if let Ok(n) = t.parse::<i64>() {
        return v.visit_i64(n);
    }
    let numeric = t.bytes().any(|b| b.is_ascii_digit()) && t.bytes().all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b));
    if numeric {
        if let Ok(f) = t.parse::<f64>() {
            return v.visit_f64(f);
        }
    }
    v.visit_str(t)
}

/// Deserializes one node.
struct NodeDe<'a>(&'a Node);

impl<'de> de::Deserializer<'de> for NodeDe<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let node = self.0;
        match &node.kind {
            NodeKind::Scalar(s) if s.style == Style::Plain => plain_any(s, v),
            NodeKind::Scalar(s) => v.visit_str(&s.value),
            NodeKind::Seq(items) => v.visit_seq(Seq(items.iter())),
            NodeKind::Map(entries) => {
                v.visit_map(Entries { entries: entries.iter().map(|(k, v)| (k, v)).collect::<Vec<_>>().into_iter(), value: None })
            }
        }
        .map_err(|e| e.at(node.pos))
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match &self.0.kind {
            NodeKind::Scalar(s) if !s.is_null() => v.visit_str(&s.value).map_err(|e: DeError| e.at(self.0.pos)),
            _ => self.deserialize_any(v),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match &self.0.kind {
            NodeKind::Scalar(s) if s.is_null() => v.visit_none(),
            _ => v.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, v: V) -> Result<V::Value, DeError> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(self, _name: &'static str, _variants: &'static [&'static str], v: V) -> Result<V::Value, DeError> {
        match &self.0.kind {
            NodeKind::Scalar(s) if !s.is_null() => {
                v.visit_enum(s.value.as_str().into_deserializer()).map_err(|e: DeError| e.at(self.0.pos))
            }
            _ => self.deserialize_any(v),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf unit unit_struct seq tuple
        tuple_struct map struct
    }
}

/// A mapping made of some entries of a node (one key alone, or the keys that were accepted).
struct EntriesDe<'a> {
    pos: Pos,
    entries: Vec<(&'a Scalar, &'a Node)>,
}

impl<'de> de::Deserializer<'de> for EntriesDe<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_map(Entries { entries: self.entries.into_iter(), value: None }).map_err(|e| e.at(self.pos))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

struct Seq<'a>(std::slice::Iter<'a, Node>);

impl<'de> SeqAccess<'de> for Seq<'_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, DeError> {
        // A value's own parser may fail after reading it (`Size` from a string): still there.
        self.0.next().map(|n| seed.deserialize(NodeDe(n)).map_err(|e| e.at(n.pos))).transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct Entries<'a> {
    entries: std::vec::IntoIter<(&'a Scalar, &'a Node)>,
    value: Option<&'a Node>,
}

impl<'de> MapAccess<'de> for Entries<'_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, DeError> {
        let Some((k, v)) = self.entries.next() else { return Ok(None) };
        self.value = Some(v);
        let key = Node { pos: k.pos, kind: NodeKind::Scalar(k.clone()) };
        seed.deserialize(NodeDe(&key)).map(Some).map_err(|e| e.at(k.pos))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let v = self.value.take().ok_or_else(|| de::Error::custom("a value was asked for before its key"))?;
        seed.deserialize(NodeDe(v)).map_err(|e| e.at(v.pos))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// Gives nothing but a struct's field names.
struct Capture<'c>(&'c mut Option<&'static [&'static str]>);

impl<'de> de::Deserializer<'de> for Capture<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, _v: V) -> Result<V::Value, DeError> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(self, _name: &'static str, fields: &'static [&'static str], _v: V) -> Result<V::Value, DeError> {
        *self.0 = Some(fields);
        Err(de::Error::custom("fields captured"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;
    use crate::yaml::Document;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Board {
        name: String,
        #[serde(default)]
        ip: Vec<std::net::IpAddr>,
        #[serde(default)]
        cores: Option<u32>,
        #[serde(default)]
        vars: BTreeMap<String, String>,
    }

    fn read(text: &str) -> (Option<Board>, Vec<Problem>) {
        let doc = Document::parse(text).unwrap();
        let mut r = Reader::default();
        let b = r.fields::<Board>(doc.root.as_ref().unwrap(), "board");
        (b, r.problems)
    }

    #[test]
    fn scalars_read_as_serde_yaml_reads_them() {
        let (b, p) = read("name: 7\nip: [127.0.0.1, \"::1\"]\ncores: 4\nvars: {port: 8080, on: true, q: '5'}\n");
        assert!(p.is_empty(), "{p:?}");
        let b = b.unwrap();
        assert_eq!((b.name.as_str(), b.ip.len(), b.cores), ("7", 2, Some(4)));
        assert_eq!((b.vars["port"].as_str(), b.vars["on"].as_str(), b.vars["q"].as_str()), ("8080", "true", "5"));
        let (b, p) = read("name: x\ncores: ~\n");
        assert!(p.is_empty() && b.unwrap().cores.is_none(), "{p:?}");
    }

    #[test]
    fn every_bad_key_is_reported_where_it_is() {
        let (b, p) = read("name: x\nip: [127.0.0.1, nope]\ncores: many\nnmae: y\n");
        assert!(b.is_none());
        let got: Vec<(usize, usize, &str)> = p.iter().map(|p| (p.pos.line, p.pos.col, p.field.as_str())).collect();
        assert_eq!(got, [(4, 1, "board.nmae"), (2, 17, "board.ip"), (3, 8, "board.cores")], "{p:?}");
        assert!(p[0].message.contains("did you mean `name`?"), "{}", p[0].message);
        assert!(p[2].message.contains("expected u32"), "{}", p[2].message);
    }

    #[test]
    fn missing_and_repeated_keys() {
        let (_, p) = read("name: x\ncores: 1\ncores: 2\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].message.contains("given twice (first at line 2)"), "{p:?}");
        let (_, p) = read("ip: []\ncores: 1\n");
        assert_eq!((p[0].pos.line, p[0].pos.col), (1, 1));
        assert!(p[0].message.contains("`name` is missing"), "{p:?}");
    }

    #[test]
    fn fields_and_suggestions() {
        assert_eq!(fields_of::<Board>(), ["name", "ip", "cores", "vars"]);
        assert_eq!(fields_of::<Vec<u8>>(), [] as [&str; 0]);
        assert_eq!(suggest("variablez", &["duts", "variables"]), Some("variables"));
        assert_eq!(suggest("artefact_roots", &["artifact_roots", "api_hosts"]), Some("artifact_roots"));
        assert_eq!(suggest("colour", &["kernel", "initramfs"]), None);
    }
}
