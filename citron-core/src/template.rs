//! `{{ name }}` templates in job descriptions.
//!
//! Deliberately tiny (no filters, no logic): a job description must say the same thing on every
//! DUT except for the few values the lab fills in (`machine_id`, `http_artifact_base`, ...), and a
//! mistake must point at the exact `{{` that caused it. Errors therefore carry the byte offset of
//! that `{{` in the template, which [`crate::job`] turns into a `line:col` of the YAML file.

use std::collections::BTreeMap;

/// Why a template cannot be rendered. Every variant carries the byte offset of the `{{` at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// `{{ name }}` with a name the render context does not define.
    #[error("unknown template variable `{name}`; {hint}")]
    UnknownVariable {
        /// Byte offset of the `{{`.
        offset: usize,
        /// The variable's name as written (trimmed).
        name: String,
        /// What to write instead: the closest defined name, or the list of defined ones.
        hint: String,
    },
    /// `{{` without a matching `}}`.
    #[error("`{{{{` is not closed; end the variable with `}}}}`, like `{{{{ machine_id }}}}`")]
    Unclosed {
        /// Byte offset of the `{{`.
        offset: usize,
    },
    /// Something between the braces that is not a variable name.
    #[error("`{name}` is not a variable name; write `{{{{ name }}}}` with letters, digits, `_`, `-` or `.` only")]
    BadName {
        /// Byte offset of the `{{`.
        offset: usize,
        /// What was between the braces (trimmed).
        name: String,
    },
}

impl TemplateError {
    /// Byte offset of the `{{` at fault.
    pub fn offset(&self) -> usize {
        match self {
            TemplateError::UnknownVariable { offset, .. } | TemplateError::Unclosed { offset } | TemplateError::BadName { offset, .. } => {
                *offset
            }
        }
    }

    /// The variable's name, when the error is about one.
    pub fn variable(&self) -> Option<&str> {
        match self {
            TemplateError::UnknownVariable { name, .. } | TemplateError::BadName { name, .. } => Some(name),
            TemplateError::Unclosed { .. } => None,
        }
    }
}

/// A piece of a template: literal text or a variable reference.
enum Piece<'a> {
    Text(&'a str),
    Var { offset: usize, name: &'a str },
}

/// Splits `template` into pieces; syntax errors are collected, not fatal, so that every mistake
/// in one string is reported together.
fn scan(template: &str) -> (Vec<Piece<'_>>, Vec<TemplateError>) {
    let mut pieces = Vec::new();
    let mut errors = Vec::new();
    let mut rest = 0;
    while let Some(found) = template[rest..].find("{{") {
        let open = rest + found;
        pieces.push(Piece::Text(&template[rest..open]));
        let inner_start = open + 2;
        let Some(len) = template[inner_start..].find("}}") else {
            errors.push(TemplateError::Unclosed { offset: open });
            return (pieces, errors);
        };
        let name = template[inner_start..inner_start + len].trim_matches([' ', '\t']);
        let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if valid {
            pieces.push(Piece::Var { offset: open, name });
        } else {
            errors.push(TemplateError::BadName { offset: open, name: name.to_string() });
        }
        rest = inner_start + len + 2;
    }
    pieces.push(Piece::Text(&template[rest..]));
    (pieces, errors)
}

/// What to suggest for an unknown name: a defined name that differs only in case or `-`/`_`,
/// or by a typo (the same edit distance as the job and lab files' keys), otherwise the list of
/// defined names.
fn hint(name: &str, vars: &BTreeMap<String, String>) -> String {
    let fold = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    if let Some(k) = vars.keys().find(|k| fold(k) == fold(name)) {
        return format!("did you mean `{k}`?");
    }
    if vars.is_empty() {
        return "no variables are defined here; define it in the lab file's `variables:`".into();
    }
    let known: Vec<&str> = vars.keys().map(String::as_str).collect();
    if let Some(k) = crate::yaml::de::suggest(&fold(name), &known) {
        return format!("did you mean `{k}`?");
    }
    format!("defined variables: {} (the lab file's `variables:` can add more)", known.join(", "))
}

/// Checks a template's syntax (closed braces, valid names) without rendering it.
///
/// ```
/// use citron_core::template::check;
/// assert!(check("{{ machine_id }}/kernel").is_ok());
/// assert_eq!(check("a {{ b").unwrap_err()[0].offset(), 2);
/// ```
pub fn check(template: &str) -> Result<(), Vec<TemplateError>> {
    let (_, errors) = scan(template);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Renders `template`, reporting every error in it (in order), not only the first.
///
/// ```
/// use std::collections::BTreeMap;
/// use citron_core::template::render_all;
/// let vars = BTreeMap::from([("a".to_string(), "1".to_string())]);
/// let errs = render_all("{{ b }} {{ a }} {{ c }}", &vars).unwrap_err();
/// assert_eq!(errs.iter().map(|e| e.offset()).collect::<Vec<_>>(), [0, 16]);
/// ```
pub fn render_all(template: &str, vars: &BTreeMap<String, String>) -> Result<String, Vec<TemplateError>> {
    let (pieces, mut errors) = scan(template);
    let mut out = String::with_capacity(template.len());
    for p in pieces {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Var { offset, name } => match vars.get(name) {
                Some(v) => out.push_str(v),
                None => errors.push(TemplateError::UnknownVariable { offset, name: name.to_string(), hint: hint(name, vars) }),
            },
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        errors.sort_by_key(TemplateError::offset);
        Err(errors)
    }
}

/// Renders `template`: every `{{ name }}` (spaces inside the braces optional) is replaced by
/// `vars[name]`. Values are inserted as they are, never rendered again, so a variable cannot
/// inject another template. Text without `{{` is returned unchanged; a lone `}}` is literal text.
///
/// ```
/// use std::collections::BTreeMap;
/// use citron_core::template::{render, TemplateError};
/// let vars = BTreeMap::from([("machine_id".to_string(), "dut1".to_string())]);
/// assert_eq!(render("boot/{{machine_id}}/{{ machine_id }}.ipxe", &vars).unwrap(), "boot/dut1/dut1.ipxe");
/// let err = render("x={{ minio_url }}", &vars).unwrap_err();
/// assert_eq!(err.offset(), 2);
/// assert_eq!(err.variable(), Some("minio_url"));
/// assert!(matches!(render("{{ machine_id", &vars), Err(TemplateError::Unclosed { offset: 0 })));
/// ```
pub fn render(template: &str, vars: &BTreeMap<String, String>) -> Result<String, TemplateError> {
    render_all(template, vars).map_err(|mut e| e.swap_remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<String, String> {
        [("machine_id", "dut1"), ("http_artifact_base", "http://127.0.0.1:8080"), ("x", "{{ machine_id }}")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn known_variables_with_and_without_spaces() {
        assert_eq!(
            render("{{http_artifact_base}}/a/{{ machine_id }}/{{\tmachine_id\t}}", &vars()).unwrap(),
            "http://127.0.0.1:8080/a/dut1/dut1"
        );
    }

    #[test]
    fn text_without_templates_is_unchanged() {
        for t in ["", "plain", "a } b }} c { d", "{ {x} }", "ünïcode"] {
            assert_eq!(render(t, &BTreeMap::new()).unwrap(), t);
        }
    }

    #[test]
    fn values_are_not_rendered_again() {
        assert_eq!(render("{{ x }}", &vars()).unwrap(), "{{ machine_id }}");
    }

    #[test]
    fn unknown_variable_names_it_with_its_offset_and_a_hint() {
        let e = render("abc {{ machine_id }} é {{ http-artifact-base }}", &vars()).unwrap_err();
        assert_eq!(e.offset(), "abc {{ machine_id }} é ".len());
        assert_eq!(e.variable(), Some("http-artifact-base"));
        assert!(e.to_string().contains("did you mean `http_artifact_base`?"), "{e}");
        let typo = BTreeMap::from([("machine_id".to_string(), "d".to_string()), ("nbd_port".to_string(), "1".to_string())]);
        let e = render("{{ machine_di }}", &typo).unwrap_err();
        assert!(e.to_string().contains("did you mean `machine_id`?"), "a typo is recognised: {e}");
        let e = render("{{ nope }}", &vars()).unwrap_err();
        assert!(e.to_string().contains("defined variables: http_artifact_base, machine_id, x"), "{e}");
    }

    #[test]
    fn unclosed_and_bad_names() {
        assert_eq!(render("ok {{ machine_id }} {{ oops", &vars()), Err(TemplateError::Unclosed { offset: 20 }));
        assert_eq!(render("{{ a | upper }}", &vars()), Err(TemplateError::BadName { offset: 0, name: "a | upper".into() }));
        assert_eq!(render("{{}}", &vars()), Err(TemplateError::BadName { offset: 0, name: String::new() }));
    }

    #[test]
    fn all_errors_of_one_string() {
        let e = render_all("{{ a }}{{ machine_id }}{{ b c }}{{ d", &vars()).unwrap_err();
        let got: Vec<(usize, Option<&str>)> = e.iter().map(|e| (e.offset(), e.variable())).collect();
        assert_eq!(got, [(0, Some("a")), (23, Some("b c")), (32, None)]);
    }
}
