//! All YAML reading lives here, so that the parser (yaml-rust2) can be swapped by changing this
//! one module: a positioned tree ([`Document`]) that job descriptions are walked over, and serde
//! over that tree ([`de::Reader`]) that lab files are read with, both reporting every problem
//! with its line and column.

pub(crate) mod de;

/// A YAML error with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// 1-based line (1 when unknown).
    pub line: usize,
    /// 1-based column (1 when unknown).
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

// ---------------------------------------------------------------------------------------------
// The positioned tree job descriptions and lab files are read into.
//
// They need every error at once, each with a position (of the value, of the key, or of
// a `{{` inside a string), which serde's first-error model cannot give. yaml-rust2's event parser
// gives a marker per event; the tree below keeps them.

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Nesting deeper than this is refused (job descriptions need about 8 levels, lab files 4).
const MAX_DEPTH: usize = 64;

/// What to do about an unquoted `{{` (a flow mapping to YAML).
const QUOTE_HINT: &str = "a value starting with `{{` must be quoted, like \"{{ name }}/file\"";

/// A position in a YAML text: 1-based line and column (the column counts characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Pos {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
}

/// How a scalar was written; plain scalars are the only ones that can be booleans, numbers or null.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    /// `value`
    Plain,
    /// `'value'` or `"value"`
    Quoted,
    /// `|` or `>`
    Block,
}

/// A scalar with where it starts and which characters of the source it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scalar {
    /// The value after unquoting, unescaping and folding.
    pub value: String,
    /// How it was written.
    pub style: Style,
    /// Where it starts (the quote or block indicator included).
    pub pos: Pos,
    /// Character range of the source it was read from (the end is where the next token starts).
    span: (usize, usize),
}

impl Scalar {
    /// A plain scalar that YAML reads as null: empty, `~` or `null`.
    pub fn is_null(&self) -> bool {
        self.style == Style::Plain && matches!(self.value.as_str(), "" | "~" | "null" | "Null" | "NULL")
    }
}

/// What a node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NodeKind {
    /// A string, number, boolean or null, as written.
    Scalar(Scalar),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping with scalar keys, in document order (duplicates kept, for the caller to report).
    Map(Vec<(Scalar, Node)>),
}

/// A YAML node with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    /// Where it starts.
    pub pos: Pos,
    /// What it is.
    pub kind: NodeKind,
}

impl Node {
    /// `"a mapping"`, `"a list"`, `"a string"`, `"nothing"`: for "expected X, found Y" messages.
    pub fn describe(&self) -> &'static str {
        match &self.kind {
            NodeKind::Map(_) => "a mapping",
            NodeKind::Seq(_) => "a list",
            NodeKind::Scalar(s) if s.is_null() => "nothing (null)",
            NodeKind::Scalar(s) if s.style == Style::Plain => "a plain value",
            NodeKind::Scalar(_) => "a quoted string",
        }
    }
}

/// A parsed YAML text: its root node and what is needed to place positions inside scalars.
#[derive(Debug, Clone)]
pub(crate) struct Document {
    chars: Vec<char>,
    /// Character index of the start of every line.
    line_starts: Vec<usize>,
    /// The root node; `None` for an empty document.
    pub root: Option<Node>,
}

impl Document {
    /// Parses `text` (one document). Errors are YAML syntax errors, anchors/aliases and complex
    /// keys, each with a position.
    pub fn parse(text: &str) -> Result<Document, YamlError> {
        let chars: Vec<char> = text.chars().collect();
        let mut line_starts = vec![0];
        line_starts.extend(chars.iter().enumerate().filter(|(_, c)| **c == '\n').map(|(i, _)| i + 1));
        let mut doc = Document { chars, line_starts, root: None };

        let mut events: Vec<(Event, Marker)> = Vec::new();
        let mut parser = Parser::new_from_str(text);
        loop {
            match parser.next_token() {
                Ok((Event::StreamEnd, m)) => {
                    events.push((Event::StreamEnd, m));
                    break;
                }
                Ok(ev) => events.push(ev),
                Err(e) => {
                    let m = e.marker();
                    let line = m.line().max(1);
                    let hint = if doc.unquoted_template_near(line) { QUOTE_HINT } else { "check the indentation and quoting here" };
                    return Err(YamlError { line, column: m.col() + 1, message: format!("YAML syntax error: {}; {hint}", e.info()) });
                }
            }
        }
        let mut i = 0;
        let mut documents = 0;
        while i < events.len() {
            match &events[i].0 {
                Event::DocumentStart => {
                    documents += 1;
                    if documents > 1 {
                        return Err(doc.error_at(
                            events[i].1.index(),
                            "a job or lab file is one YAML document; remove the second `---` and what follows",
                        ));
                    }
                    i += 1;
                    if !matches!(events.get(i).map(|e| &e.0), Some(Event::DocumentEnd) | None) {
                        doc.root = Some(doc.build(&events, &mut i, 0)?);
                    }
                }
                _ => i += 1,
            }
        }
        Ok(doc)
    }

    /// Whether `line` (1-based) or the one before has a value starting with an unquoted `{{`,
    /// which YAML reads as a flow mapping: the likeliest cause of an error there.
    fn unquoted_template_near(&self, line: usize) -> bool {
        let text = |l: usize| -> String {
            if l == 0 || l > self.line_starts.len() {
                return String::new();
            }
            let start = self.line_starts[l - 1];
            self.chars[start..].iter().take_while(|c| **c != '\n').collect()
        };
        [line.saturating_sub(1), line].iter().any(|&l| {
            let t = text(l);
            let t = t.trim_start().trim_start_matches("- ");
            t.starts_with("{{") || t.contains(": {{") || t.contains(":{{")
        })
    }

    /// The position of a character index.
    fn pos(&self, index: usize) -> Pos {
        let line = self.line_starts.partition_point(|&s| s <= index);
        Pos { line, col: index - self.line_starts[line - 1] + 1 }
    }

    fn error_at(&self, index: usize, message: &str) -> YamlError {
        let p = self.pos(index);
        YamlError { line: p.line, column: p.col, message: message.to_string() }
    }

    fn build(&self, events: &[(Event, Marker)], i: &mut usize, depth: usize) -> Result<Node, YamlError> {
        let (ev, mark) = &events[*i];
        if depth > MAX_DEPTH {
            // Bounded so that a hostile job cannot exhaust the stack.
            return Err(self.error_at(mark.index(), &format!("nested more than {MAX_DEPTH} levels deep; job and lab files need far fewer")));
        }
        let pos = self.pos(mark.index());
        *i += 1;
        match ev {
            Event::Scalar(value, style, _, _) => {
                let end = events.get(*i).map(|e| e.1.index()).unwrap_or(self.chars.len());
                let style = match style {
                    TScalarStyle::Plain => Style::Plain,
                    TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted => Style::Quoted,
                    TScalarStyle::Literal | TScalarStyle::Folded => Style::Block,
                };
                let scalar = Scalar { value: value.clone(), style, pos, span: (mark.index(), end.max(mark.index())) };
                Ok(Node { pos, kind: NodeKind::Scalar(scalar) })
            }
            Event::SequenceStart(..) => {
                let mut items = Vec::new();
                while !matches!(events.get(*i).map(|e| &e.0), Some(Event::SequenceEnd) | None) {
                    items.push(self.build(events, i, depth + 1)?);
                }
                *i += 1;
                // An indentless sequence (`key:\n- item`) is marked at its first item, not at
                // the `-` before it.
                let pos = match items.first() {
                    Some(f) if f.pos <= pos => Pos { line: f.pos.line, col: f.pos.col.saturating_sub(2).max(1) },
                    _ => pos,
                };
                Ok(Node { pos, kind: NodeKind::Seq(items) })
            }
            Event::MappingStart(..) => {
                let mut entries = Vec::new();
                while !matches!(events.get(*i).map(|e| &e.0), Some(Event::MappingEnd) | None) {
                    let key = self.build(events, i, depth + 1)?;
                    let NodeKind::Scalar(k) = key.kind else {
                        let message = if self.unquoted_template_near(key.pos.line) {
                            format!("a value starts with `{{{{` and YAML read it as a mapping; {QUOTE_HINT}")
                        } else {
                            "keys must be plain names, not lists or mappings".to_string()
                        };
                        return Err(YamlError { line: key.pos.line, column: key.pos.col, message });
                    };
                    let mut value = self.build(events, i, depth + 1)?;
                    if let NodeKind::Scalar(v) = &mut value.kind {
                        if v.style == Style::Plain && v.value.is_empty() {
                            // An absent value is marked where the next token starts; the key is
                            // where the reader must look.
                            v.pos = k.pos;
                            value.pos = k.pos;
                        }
                    }
                    entries.push((k, value));
                }
                *i += 1;
                // A block mapping's event is marked at its first `:`; the first key is where it
                // starts for the reader.
                let pos = entries.first().map_or(pos, |(k, _)| pos.min(k.pos));
                Ok(Node { pos, kind: NodeKind::Map(entries) })
            }
            Event::Alias(_) => {
                Err(self.error_at(mark.index(), "aliases (`*name`) are not supported in job and lab files; write the value out"))
            }
            other => Err(self.error_at(mark.index(), &format!("unexpected YAML event {other:?}"))),
        }
    }

    /// Where the key at the end of `path` (mapping keys from the root) is written, if it is.
    pub fn key_pos(&self, path: &[&str]) -> Option<Pos> {
        let mut node = self.root.as_ref()?;
        let mut found = None;
        for key in path {
            let NodeKind::Map(entries) = &node.kind else { return None };
            let (k, v) = entries.iter().find(|(k, _)| k.value == *key)?;
            found = Some(k.pos);
            node = v;
        }
        found
    }

    /// Where the `n`-th `{{` (0-based) of `scalar`'s value was written in the source. Counting
    /// `{{` rather than mapping every character keeps this right through quotes, escapes, folding
    /// and block indentation; when the source does not show it (an escape produced it) the
    /// scalar's own position is returned.
    pub fn nth_open_brace(&self, scalar: &Scalar, n: usize) -> Pos {
        let (mut start, end) = scalar.span;
        let end = end.min(self.chars.len());
        if scalar.style == Style::Block && matches!(self.chars.get(start), Some('|' | '>')) {
            // Marked at the indicator: skip the header line and any comment on it.
            while start < end && self.chars[start] != '\n' {
                start += 1;
            }
        }
        let mut seen = 0;
        let mut j = start;
        while j + 1 < end {
            if self.chars[j] == '{' && self.chars[j + 1] == '{' {
                if seen == n {
                    return self.pos(j);
                }
                seen += 1;
                j += 2;
            } else {
                j += 1;
            }
        }
        scalar.pos
    }
}

/// Byte offsets in `value` where a `{{` starts, counted the way [`Document::nth_open_brace`]
/// counts them (left to right, not overlapping).
pub(crate) fn open_braces(value: &str) -> Vec<usize> {
    let b = value.as_bytes();
    let mut out = Vec::new();
    let mut j = 0;
    while j + 1 < b.len() {
        if b[j] == b'{' && b[j + 1] == b'{' {
            out.push(j);
            j += 2;
        } else {
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(text: &str) -> Node {
        Document::parse(text).unwrap().root.unwrap()
    }

    #[test]
    fn positions_are_one_based_characters() {
        let n = root("a:\n  bé: x\n  c: [1, 2]\n");
        let NodeKind::Map(top) = &n.kind else { panic!() };
        assert_eq!(top[0].0.pos, Pos { line: 1, col: 1 });
        let NodeKind::Map(inner) = &top[0].1.kind else { panic!() };
        assert_eq!(inner[0].0.pos, Pos { line: 2, col: 3 });
        assert_eq!(inner[0].1.pos, Pos { line: 2, col: 7 });
        let NodeKind::Seq(items) = &inner[1].1.kind else { panic!() };
        assert_eq!(items[1].pos, Pos { line: 3, col: 10 });
    }

    #[test]
    fn syntax_error_has_the_parser_position() {
        let e = Document::parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.message.starts_with("YAML syntax error"), "{e:?}");
        assert!(e.line >= 1 && e.column >= 1);
        let e = Document::parse("a: b\n c: d\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 3), "{e:?}");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let text = format!("{}{}", "[".repeat(100), "]".repeat(100));
        let e = Document::parse(&text).unwrap_err();
        assert!(e.message.contains("nested more than"), "{e:?}");
        // The scanner has its own, higher, limit.
        let text = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(Document::parse(&text).is_err());
    }

    #[test]
    fn aliases_are_refused() {
        let e = Document::parse("a: &x 1\nb: *x\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 4));
    }

    #[test]
    fn open_brace_positions_in_every_style() {
        for (text, want) in [
            ("k: a {{ x }}\n", Pos { line: 1, col: 6 }),
            ("k: \"a\\t{{ x }}\"\n", Pos { line: 1, col: 8 }),
            ("k: 'it''s {{ x }}'\n", Pos { line: 1, col: 11 }),
            ("k: | # {{ not this }}\n  one\n  two {{ x }}\n", Pos { line: 3, col: 7 }),
            ("k: >\n  one\n   {{ x }}\n", Pos { line: 3, col: 4 }),
        ] {
            let d = Document::parse(text).unwrap();
            let NodeKind::Map(m) = &d.root.as_ref().unwrap().kind else { panic!() };
            let NodeKind::Scalar(s) = &m[0].1.kind else { panic!() };
            assert_eq!(open_braces(&s.value).len(), 1, "{text}");
            assert_eq!(d.nth_open_brace(s, 0), want, "{text:?}");
        }
    }
}
