//! YAML text → [`Desc`]: the job's shape checked, every value kept with where it was written.
//!
//! Nothing here depends on the DUT: templates are only checked for syntax (their variables are
//! known at render time), paths are checked as written (and again after rendering, since a
//! variable could expand to `..`).
//!
//! The walker's general readers (mappings, scalars, strings, sources, lifetimes) and the job's
//! outline are here; `disk.rs` reads `storage.nbd[]` entries with the same readers.

use std::collections::HashMap;
use std::time::Duration;

use crate::digest::Digest;
use crate::namespace::{normalize_declared, PathError};
use crate::serve::Space;
use crate::template;
use crate::units::parse_duration;
use crate::yaml::{open_braces, Document, Node, NodeKind, Pos, Scalar, Style};

use super::model::Lifetime;

mod disk;
mod results;
pub(crate) use disk::{DiskDesc, DiskKindDesc, FsDesc, SizeDesc};
pub(crate) use results::{is_job_name, ResultsDesc};

/// One error, before the file name is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub pos: Pos,
    pub field: String,
    pub message: String,
}

/// A string from the job, with where it was written and where each `{{` in it was, so that a
/// template error found at render time points inside the string.
#[derive(Debug, Clone)]
pub(crate) struct Str {
    pub value: String,
    pub pos: Pos,
    pub field: String,
    /// (byte offset of a `{{` in `value`, its position in the file)
    opens: Vec<(usize, Pos)>,
}

impl Str {
    /// Where the byte `offset` of the value (a `{{`) was written.
    pub fn pos_of(&self, offset: usize) -> Pos {
        self.opens.iter().find(|(o, _)| *o == offset).map(|(_, p)| *p).unwrap_or(self.pos)
    }
}

/// Where an artifact comes from, as written.
#[derive(Debug, Clone)]
pub(crate) enum SrcDesc {
    Data(Str),
    Url(Str),
    File(Str),
    Result(ResultDesc),
}

/// `result: {job, path, run, untokened}` as written.
#[derive(Debug, Clone)]
pub(crate) struct ResultDesc {
    pub job: Str,
    pub path: Str,
    pub run: Option<i64>,
    pub untokened: bool,
}

/// A `sha256:` with its position (a `data:` source is checked against it at render time).
#[derive(Debug, Clone)]
pub(crate) struct Sha {
    pub digest: Digest,
    pub pos: Pos,
    pub field: String,
}

/// A file entry (`kernel`, `initramfs`, `storage.<space>[]`).
#[derive(Debug, Clone)]
pub(crate) struct FileDesc {
    /// `None` for `kernel` and `initramfs`, whose paths citron generates.
    pub path: Option<Str>,
    pub source: SrcDesc,
    pub sha256: Option<Sha>,
    pub lifetime: Lifetime,
}

/// A deployment step as written.
#[derive(Debug, Clone, Default)]
pub(crate) struct StepDesc {
    pub kernel: Option<FileDesc>,
    pub initramfs: Option<FileDesc>,
    pub cmdline: Option<Vec<Str>>,
    /// `storage.<space>` lists, in the order written.
    pub files: Vec<(Space, Vec<FileDesc>)>,
    pub nbd: Vec<DiskDesc>,
}

/// A whole job as written.
#[derive(Debug, Clone)]
pub(crate) struct Desc {
    /// `name:`, checked.
    pub name: Option<String>,
    /// `results:`.
    pub results: Option<ResultsDesc>,
    pub start: StepDesc,
    pub cont: Option<StepDesc>,
}

/// Parses `text`; on failure, every problem found, in document order.
pub(crate) fn parse(text: &str) -> Result<Desc, Vec<Problem>> {
    match parse_partial(text) {
        (Some(d), problems) if problems.is_empty() => Ok(d),
        (_, problems) => Err(problems),
    }
}

/// Parses `text` as far as it goes: the job without the entries that had problems (`None` when
/// not even its outline could be read), and every problem found, in document order.
pub(crate) fn parse_partial(text: &str) -> (Option<Desc>, Vec<Problem>) {
    let doc = match Document::parse(text) {
        Ok(d) => d,
        Err(e) => {
            // A syntax error names no field; `<document>` says the whole text could not be read.
            let field = "<document>".to_string();
            return (None, vec![Problem { pos: Pos { line: e.line, col: e.column }, field, message: e.message }]);
        }
    };
    let mut w = Walker { doc: &doc, problems: Vec::new() };
    let desc = w.job();
    let mut problems = w.problems;
    if desc.is_none() && problems.is_empty() {
        problems.push(Problem { pos: Pos { line: 1, col: 1 }, field: "deployment".into(), message: "the job could not be read".into() });
    }
    sort(&mut problems);
    (desc, problems)
}

/// Document order; stable, so problems at one position keep the order they were found in.
pub(crate) fn sort(problems: &mut [Problem]) {
    problems.sort_by_key(|p| p.pos);
}

/// `parent.key`
fn child(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// What to write instead of a rejected path.
pub(crate) fn path_message(e: &PathError) -> String {
    match e {
        PathError::ParentDir => "'..' is not allowed in paths; write the path from the namespace root, like /job/file".into(),
        PathError::ControlChar => "control characters (NUL, newline, tab, ...) are not allowed in paths; remove them".into(),
        PathError::Backslash => "'\\' is not allowed in paths; separate directories with '/'".into(),
        PathError::Empty => "the path is empty; give the name the DUT asks for, like /job/config.txt".into(),
        PathError::TooLong => format!("{e}; use a shorter path"),
        PathError::Reserved(p) => format!("paths under '{p}' are reserved for citron; pick another directory, like /job/"),
        #[allow(unreachable_patterns)]
        _ => e.to_string(),
    }
}

/// The accepted keys of a mapping, each with its key scalar and value.
struct Fields<'n> {
    pos: Pos,
    entries: Vec<(&'n Scalar, &'n Node)>,
    /// Allowed keys that an unknown key was probably meant to be: not reported again as missing.
    misspelt: Vec<String>,
}

impl<'n> Fields<'n> {
    fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries.iter().find(|(k, _)| k.value == key).map(|(_, v)| *v)
    }
    fn key(&self, key: &str) -> Option<&'n Scalar> {
        self.entries.iter().find(|(k, _)| k.value == key).map(|(k, _)| *k)
    }
}

// The keys each mapping accepts are those of the types of `file.rs`, which the JSON Schema is
// derived from.
use super::file::{fields_of, Deployment, JobFile, LifetimeFile, StepFile, BOOT_FILE_KEYS, FILE_ENTRY_KEYS, SOURCE_KEYS};

struct Walker<'d> {
    doc: &'d Document,
    problems: Vec<Problem>,
}

impl Walker<'_> {
    fn err(&mut self, pos: Pos, field: &str, message: impl Into<String>) {
        // The document itself (empty, not a mapping) has no key to name.
        let field = if field.is_empty() { "<document>" } else { field };
        self.problems.push(Problem { pos, field: field.to_string(), message: message.into() });
    }

    /// `node` as a mapping whose keys are all in `allowed` (each at most once).
    fn mapping<'n>(&mut self, node: &'n Node, field: &str, allowed: &[&str]) -> Option<Fields<'n>> {
        let NodeKind::Map(entries) = &node.kind else {
            self.err(node.pos, field, format!("expected a mapping with keys {}, found {}", allowed.join(", "), node.describe()));
            return None;
        };
        let mut out = Fields { pos: node.pos, entries: Vec::new(), misspelt: Vec::new() };
        for (k, v) in entries {
            let key = k.value.as_str();
            if !allowed.contains(&key) {
                let near = crate::yaml::de::suggest(key, allowed);
                let hint = near.map(|n| format!("did you mean `{n}`? ")).unwrap_or_default();
                out.misspelt.extend(near.map(|n| n.to_string()));
                self.err(k.pos, &child(field, key), format!("unknown field `{key}`; {hint}allowed here: {}", allowed.join(", ")));
            } else if let Some(first) = out.key(key) {
                let line = first.pos.line;
                self.err(k.pos, &child(field, key), format!("`{key}` is given twice (first at line {line}); keep one"));
            } else {
                out.entries.push((k, v));
            }
        }
        Some(out)
    }

    /// A required key's value, or an error at the mapping.
    fn required<'n>(&mut self, f: &Fields<'n>, key: &str, field: &str, example: &str) -> Option<&'n Node> {
        let v = f.get(key);
        if v.is_none() && !f.misspelt.iter().any(|m| m == key) {
            self.err(f.pos, field, format!("`{key}` is missing; add it, like `{key}: {example}`"));
        }
        v
    }

    /// A non-null scalar.
    fn scalar<'n>(&mut self, node: &'n Node, field: &str, what: &str) -> Option<&'n Scalar> {
        match &node.kind {
            NodeKind::Scalar(s) if !s.is_null() => Some(s),
            _ => {
                self.err(node.pos, field, format!("expected {what}, found {}", node.describe()));
                None
            }
        }
    }

    /// A string value (templates allowed; their syntax is checked here).
    fn string(&mut self, node: &Node, field: &str) -> Option<Str> {
        let s = self.scalar(node, field, "a string")?;
        self.str_from(s, field)
    }

    fn str_from(&mut self, s: &Scalar, field: &str) -> Option<Str> {
        let opens: Vec<(usize, Pos)> =
            open_braces(&s.value).into_iter().enumerate().map(|(n, o)| (o, self.doc.nth_open_brace(s, n))).collect();
        let out = Str { value: s.value.clone(), pos: s.pos, field: field.to_string(), opens };
        if let Err(errors) = template::check(&out.value) {
            for e in errors {
                let pos = out.pos_of(e.offset());
                self.err(pos, field, e.to_string());
            }
            return None;
        }
        Some(out)
    }

    /// A `path:`: a string whose written form must already be a valid declared path.
    fn path(&mut self, node: &Node, field: &str) -> Option<Str> {
        let s = self.string(node, field)?;
        match normalize_declared(&s.value) {
            Ok(_) => Some(s),
            Err(e) => {
                self.err(s.pos, field, path_message(&e));
                None
            }
        }
    }

    fn bool(&mut self, node: &Node, field: &str) -> Option<bool> {
        let s = self.scalar(node, field, "true or false")?;
        match (s.style, s.value.as_str()) {
            (Style::Plain, "true" | "True" | "TRUE") => Some(true),
            (Style::Plain, "false" | "False" | "FALSE") => Some(false),
            (_, v) => {
                self.err(s.pos, field, format!("expected true or false (unquoted), found `{v}`"));
                None
            }
        }
    }

    fn sha256(&mut self, node: &Node, field: &str) -> Option<Sha> {
        let s = self.scalar(node, field, "a sha256 (64 hex digits)")?;
        match s.value.trim().parse::<Digest>() {
            Ok(digest) => Some(Sha { digest, pos: s.pos, field: field.to_string() }),
            Err(e) => {
                self.err(s.pos, field, format!("{e}; compute it with `sha256sum FILE`"));
                None
            }
        }
    }

    fn duration(&mut self, node: &Node, field: &str) -> Option<Duration> {
        let s = self.scalar(node, field, "a duration like 12h or 7 days")?;
        match parse_duration(&s.value) {
            Ok(d) => Some(d),
            Err(m) => {
                self.err(s.pos, field, m);
                None
            }
        }
    }

    fn job(&mut self) -> Option<Desc> {
        let doc = self.doc;
        let Some(root) = doc.root.as_ref() else {
            self.err(Pos { line: 1, col: 1 }, "", "the job description is empty; it needs at least `deployment:` with `start:`");
            return None;
        };
        let top = self.mapping(root, "", fields_of::<JobFile>())?;
        let (name, results) = self.name_and_results(&top);
        let dep = self.required(&top, "deployment", "", "{start: {...}}")?;
        let dep = self.mapping(dep, "deployment", fields_of::<Deployment>())?;
        let start = self.required(&dep, "start", "deployment", "{kernel: ..., storage: ...}");
        let start = start.and_then(|n| self.step(n, "deployment.start"));
        let cont = dep.get("continue").map(|n| self.step(n, "deployment.continue"));
        Some(Desc {
            name,
            results,
            start: start?,
            cont: match cont {
                None => None,
                Some(c) => Some(c?),
            },
        })
    }

    fn step(&mut self, node: &Node, field: &str) -> Option<StepDesc> {
        let f = self.mapping(node, field, fields_of::<StepFile>())?;
        let mut ok = true;
        let mut step = StepDesc::default();
        for (name, slot) in [("kernel", &mut step.kernel), ("initramfs", &mut step.initramfs)] {
            if let Some(n) = f.get(name) {
                *slot = self.file(n, &child(field, name), false);
                ok &= slot.is_some();
            }
        }
        if let Some(n) = f.get("cmdline") {
            step.cmdline = self.cmdline(n, &child(field, "cmdline"));
            ok &= step.cmdline.is_some();
        }
        if let Some(n) = f.get("storage") {
            ok &= self.storage(n, &child(field, "storage"), &mut step);
        }
        // A step with errors is still returned, without the entries that failed (each has its
        // problem recorded), so that `check` can render the rest and report both stages at once.
        let _ = ok;
        Some(step)
    }

    fn cmdline(&mut self, node: &Node, field: &str) -> Option<Vec<Str>> {
        match &node.kind {
            NodeKind::Scalar(s) if !s.is_null() => Some(vec![self.str_from(s, field)?]),
            NodeKind::Seq(items) => {
                let mut out = Vec::new();
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    let f = format!("{field}[{i}]");
                    match &item.kind {
                        NodeKind::Scalar(s) if !s.is_null() => match self.str_from(s, &f) {
                            Some(v) => out.push(v),
                            None => ok = false,
                        },
                        _ => {
                            self.err(item.pos, &f, format!("expected a string (one or more kernel arguments), found {}", item.describe()));
                            ok = false;
                        }
                    }
                }
                ok.then_some(out)
            }
            _ => {
                self.err(
                    node.pos,
                    field,
                    format!("expected a string or a list of strings (joined with spaces), found {}", node.describe()),
                );
                None
            }
        }
    }

    /// `storage:`: a list of files per file space ([`Space::ALL`]), `nbd` disks; the keys
    /// accepted (and suggested for a misspelt one) follow that list.
    fn storage(&mut self, node: &Node, field: &str, step: &mut StepDesc) -> bool {
        let mut keys: Vec<&str> = Space::ALL.iter().map(|s| s.0).collect();
        keys.extend(["nbd", "s3", "nfs"]);
        let Some(f) = self.mapping(node, field, &keys) else { return false };
        let mut ok = true;
        let spaces = Space::ALL.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(" or ");
        for key in ["s3", "nfs"] {
            if let Some(k) = f.key(key) {
                self.err(
                    k.pos,
                    &child(field, key),
                    format!("`{key}` storage is not supported yet; serve the files over {spaces}, or disks over `nbd`"),
                );
                ok = false;
            }
        }
        // In the order written, so that problems come in document order.
        for (k, n) in &f.entries {
            let Some(space) = Space::named(&k.value) else { continue };
            let field = child(field, space.0);
            let Some(items) = self.list(n, &field) else {
                ok = false;
                continue;
            };
            let mut list = Vec::new();
            let mut seen: HashMap<String, Pos> = HashMap::new();
            for (i, item) in items.iter().enumerate() {
                let entry_field = format!("{field}[{i}]");
                let Some(entry) = self.file(item, &entry_field, true) else {
                    ok = false;
                    continue;
                };
                let path = entry.path.as_ref().expect("storage entries have paths");
                let norm = normalize_declared(&path.value).expect("checked by path()");
                if let Some(first) = seen.get(&norm) {
                    let msg = format!("`{norm}` is already defined at line {} (paths are compared without leading '/'); give each {space} file its own path", first.line);
                    self.err(path.pos, &path.field, msg);
                    ok = false;
                } else {
                    seen.insert(norm, path.pos);
                }
                list.push(entry);
            }
            step.files.push((space, list));
        }
        if let Some(n) = f.get("nbd") {
            let field = child(field, "nbd");
            if let Some(items) = self.list(n, &field) {
                let mut seen: HashMap<String, Pos> = HashMap::new();
                for (i, item) in items.iter().enumerate() {
                    let Some(disk) = self.disk(item, &format!("{field}[{i}]")) else {
                        ok = false;
                        continue;
                    };
                    if let Some(first) = seen.get(&disk.name.value) {
                        let msg = format!(
                            "a disk named `{}` is already defined at line {}; give each disk its own name",
                            disk.name.value, first.line
                        );
                        self.err(disk.name.pos, &disk.name.field, msg);
                        ok = false;
                    } else {
                        seen.insert(disk.name.value.clone(), disk.name.pos);
                    }
                    step.nbd.push(disk);
                }
            } else {
                ok = false;
            }
        }
        ok
    }

    fn list<'n>(&mut self, node: &'n Node, field: &str) -> Option<&'n [Node]> {
        match &node.kind {
            NodeKind::Seq(items) => Some(items),
            _ => {
                self.err(node.pos, field, format!("expected a list of entries (each starting with `- `), found {}", node.describe()));
                None
            }
        }
    }

    /// Exactly one of `keys` present in `f`; errors name the entry.
    fn one_of<'n>(&mut self, f: &Fields<'n>, keys: &[&str], field: &str, what: &str) -> Option<(&'n Scalar, &'n Node)> {
        let present: Vec<&(&Scalar, &Node)> = f.entries.iter().filter(|(k, _)| keys.contains(&k.value.as_str())).collect();
        let list = keys.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
        match present.as_slice() {
            [] => {
                if !f.misspelt.iter().any(|m| keys.contains(&m.as_str())) {
                    self.err(f.pos, field, format!("no {what}; give exactly one of {list}"));
                }
                None
            }
            [one] => Some(**one),
            [first, rest @ ..] => {
                for (k, _) in rest {
                    self.err(k.pos, field, format!("`{}` and `{}` are both given; keep exactly one of {list}", first.0.value, k.value));
                }
                None
            }
        }
    }

    fn source(&mut self, key: &Scalar, node: &Node, field: &str) -> Option<SrcDesc> {
        let f = child(field, &key.value);
        if key.value == "result" {
            return self.result_source(node, &f).map(SrcDesc::Result);
        }
        let s = self.string(node, &f)?;
        Some(match key.value.as_str() {
            "data" => SrcDesc::Data(s),
            "url" => SrcDesc::Url(s),
            _ => SrcDesc::File(s),
        })
    }

    /// `result:`: `job` and `path` (templates allowed, checked when rendered), `run` a run's
    /// id, `untokened` a boolean.
    fn result_source(&mut self, node: &Node, field: &str) -> Option<ResultDesc> {
        let f = self.mapping(node, field, fields_of::<super::file::ResultSource>())?;
        let job = self.required(&f, "job", field, "kernel-build").and_then(|n| self.string(n, &child(field, "job")));
        let path = self.required(&f, "path", field, "images/bzImage").and_then(|n| self.string(n, &child(field, "path")));
        let run = match f.get("run") {
            Some(n) => {
                let rf = child(field, "run");
                let s = self.scalar(n, &rf, "a run's id like 42")?;
                match s.value.parse::<i64>() {
                    Ok(v) if v > 0 => Some(v),
                    _ => {
                        self.err(s.pos, &rf, format!("`{}` is not a run's id; write a whole number like 42", s.value));
                        return None;
                    }
                }
            }
            None => None,
        };
        let untokened = match f.get("untokened") {
            Some(n) => self.bool(n, &child(field, "untokened"))?,
            None => false,
        };
        Some(ResultDesc { job: job?, path: path?, run, untokened })
    }

    fn file(&mut self, node: &Node, field: &str, with_path: bool) -> Option<FileDesc> {
        let f = self.mapping(node, field, if with_path { FILE_ENTRY_KEYS } else { BOOT_FILE_KEYS })?;
        let path = if with_path {
            let n = self.required(&f, "path", field, "/job/config.txt");
            Some(n.and_then(|n| self.path(n, &child(field, "path"))))
        } else {
            None
        };
        let source = self.one_of(&f, SOURCE_KEYS, field, "source").and_then(|(k, v)| self.source(k, v, field));
        let sha256 = f.get("sha256").map(|n| self.sha256(n, &child(field, "sha256")));
        let lifetime = f.get("lifetime").map(|n| self.lifetime(n, &child(field, "lifetime")));
        Some(FileDesc {
            path: match path {
                Some(p) => Some(p?),
                None => None,
            },
            source: source?,
            sha256: match sha256 {
                Some(s) => Some(s?),
                None => None,
            },
            lifetime: lifetime.unwrap_or(Some(Lifetime::default()))?,
        })
    }

    fn lifetime(&mut self, node: &Node, field: &str) -> Option<Lifetime> {
        let f = self.mapping(node, field, fields_of::<LifetimeFile>())?;
        let mut ok = true;
        let mut out = Lifetime::default();
        if let Some(n) = f.get("access_count") {
            let field = child(field, "access_count");
            match &n.kind {
                NodeKind::Scalar(s) if s.style == Style::Plain && !s.is_null() => match s.value.parse::<u32>() {
                    // 0 is the seed's "no limit" default, written out.
                    Ok(0) => out.access_count = None,
                    Ok(v) => out.access_count = Some(v),
                    Err(_) if s.value.bytes().all(|b| b.is_ascii_digit()) => {
                        self.err(s.pos, &field, format!("`{}` is too large; at most {} reads can be counted", s.value, u32::MAX));
                        ok = false;
                    }
                    Err(_) => {
                        self.err(
                            s.pos,
                            &field,
                            format!("`{}` is not a count; write a whole number of reads allowed per boot, like 1 (0: no limit)", s.value),
                        );
                        ok = false;
                    }
                },
                _ => {
                    let unquote =
                        if matches!(&n.kind, NodeKind::Scalar(s) if s.style != Style::Plain) { " (remove the quotes)" } else { "" };
                    self.err(
                        n.pos,
                        &field,
                        format!("expected a whole number of reads allowed per boot (like 1; 0: no limit){unquote}, found {}", n.describe()),
                    );
                    ok = false;
                }
            }
        }
        if let Some(n) = f.get("expiration") {
            out.expiration = self.duration(n, &child(field, "expiration"));
            ok &= out.expiration.is_some();
        }
        ok.then_some(out)
    }
}
