//! The lab file: DUTs, template variables, cache settings and the roots `file:` sources may use.
//!
//! ```
//! use citron_core::lab::LabConfig;
//! let lab = LabConfig::from_yaml(r#"
//! duts:
//!   - id: dut1
//!     mac: "52:54:00:00:00:01"
//!     ip: ["127.0.0.2"]
//!     tags: [x86_64, vm]
//! variables:
//!   minio_url: http://127.0.0.1:9000
//! "#, "lab.yaml").unwrap();
//! assert_eq!(lab.duts[0].machine_id(), "dut1");
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::artifact::{CacheConfig, S3Config};
use crate::limits::Limits;
use crate::namespace::Dut;

/// The embedded default lab: two DUTs on loopback addresses, so that `citron serve` works with
/// no file at all and two DUTs can be told apart from one machine.
pub const DEFAULT_LAB: &str = include_str!("default_lab.yaml");

/// A lab file.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabConfig {
    /// The DUTs.
    #[serde(default)]
    pub duts: Vec<Dut>,
    /// Template variables every job of the lab may use.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// Cache settings.
    #[serde(default)]
    pub cache: CacheSettings,
    /// Directories that `file:` sources of API-submitted jobs may read (CLI jobs may also read
    /// their own directory).
    #[serde(default)]
    pub artifact_roots: Vec<PathBuf>,
    /// The S3-compatible store for `s3://` URLs.
    #[serde(default)]
    pub s3: S3Config,
    /// Bearer token the API requires (on every address once set; a non-loopback API needs
    /// one). At most one of `api_token`, `api_token_file` and `$CITRON_API_TOKEN` may be set;
    /// see [`LabConfig::resolve_api_token`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_token: Option<String>,
    /// A file holding the API token (relative to the lab file), to keep it out of the lab file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_token_file: Option<PathBuf>,
    /// Names clients reach the API under (`host` or `host:port`), besides its listen address
    /// and `localhost`: a request whose `Host` is none of them is refused, which stops DNS
    /// rebinding (a web page whose name resolves to the API's address).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_hosts: Vec<String>,
    /// Every bound against hostile or broken input (see [`crate::limits`]).
    #[serde(default)]
    pub limits: Limits,
}

/// Shows the fields that hold no secret: `api_token` only as whether it is set, the S3 secret
/// key redacted (see [`S3Config`]'s `Debug`). Fields added later stay hidden until listed here
/// (`..`), so a new credential cannot leak through a `{:?}` by default.
impl std::fmt::Debug for LabConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabConfig")
            .field("duts", &self.duts)
            .field("variables", &self.variables)
            .field("cache", &self.cache)
            .field("artifact_roots", &self.artifact_roots)
            .field("s3", &self.s3)
            .field("api_token", &self.api_token.as_ref().map(|_| "<redacted>"))
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// `cache:` in the lab file; `max_size` takes `20G`-style sizes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// Upper bound of the cache (`20G`); default 20 GiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<String>,
}

/// The environment variable that may hold the API token instead of the lab file.
pub const API_TOKEN_ENV: &str = "CITRON_API_TOKEN";

/// Why the API token cannot be known.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiTokenError {
    /// More than one source is set, and which one wins would be a guess.
    #[error("the API token is set {0}: keep exactly one of `api_token`, `api_token_file` (lab file) and ${API_TOKEN_ENV}")]
    Several(String),
    /// `api_token_file` cannot be read.
    #[error("cannot read api_token_file {path}: {source}; the lab file's `api_token_file` is relative to the lab file")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The token is empty (or only whitespace).
    #[error("the API token from {0} is empty: put the token in it, or unset it")]
    Empty(String),
}

/// Why a lab file is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct LabError {
    /// The file name.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl LabConfig {
    /// Parses a lab file's text; `name` is used in errors.
    pub fn from_yaml(text: &str, name: &str) -> Result<LabConfig, LabError> {
        let lab: LabConfig =
            crate::yaml::from_str(text).map_err(|e| LabError { file: name.into(), line: e.line, column: e.column, message: e.message })?;
        lab.cache_config().map_err(|message| LabError { file: name.into(), line: 1, column: 1, message })?;
        // `machine_id` is each DUT's own (its `machine_id:` or id); one value for the whole lab
        // would give every DUT the same boot paths. The endpoint variables may be overridden.
        if lab.variables.contains_key("machine_id") {
            let pos = crate::yaml::Document::parse(text)
                .ok()
                .and_then(|d| d.key_pos(&["variables", "machine_id"]))
                .unwrap_or(crate::yaml::Pos { line: 1, col: 1 });
            return Err(LabError {
                file: name.into(),
                line: pos.line,
                column: pos.col,
                message: "variables.machine_id: `machine_id` is set per DUT (its `machine_id:` or `id:`), not in `variables`; remove it"
                    .into(),
            });
        }
        for (i, h) in lab.api_hosts.iter().enumerate() {
            if !valid_api_host(h) {
                let pos = crate::yaml::Document::parse(text)
                    .ok()
                    .and_then(|d| d.key_pos(&["api_hosts"]))
                    .unwrap_or(crate::yaml::Pos { line: 1, col: 1 });
                return Err(LabError {
                    file: name.into(),
                    line: pos.line,
                    column: pos.col,
                    message: format!("api_hosts[{i}]: {h:?} is not a host name or host:port"),
                });
            }
        }
        Ok(lab)
    }

    /// The API token from the one source that sets it: the lab file's `api_token` or
    /// `api_token_file` (the file's content, surrounding whitespace removed), or `env` (the
    /// value of [`API_TOKEN_ENV`], passed in so that callers decide where it comes from). Two
    /// sources at once are refused rather than ranked, so that no one believes a token is in
    /// force that is not.
    pub fn resolve_api_token(&self, env: Option<&str>) -> Result<Option<String>, ApiTokenError> {
        let env = env.filter(|v| !v.is_empty());
        let mut set = Vec::new();
        if self.api_token.is_some() {
            set.push("by `api_token`".to_string());
        }
        if let Some(p) = &self.api_token_file {
            set.push(format!("by `api_token_file` ({})", p.display()));
        }
        if env.is_some() {
            set.push(format!("by ${API_TOKEN_ENV}"));
        }
        if set.len() > 1 {
            return Err(ApiTokenError::Several(set.join(" and ")));
        }
        let (tok, from) = if let Some(t) = &self.api_token {
            (t.clone(), "`api_token`".to_string())
        } else if let Some(p) = &self.api_token_file {
            let t = std::fs::read_to_string(p).map_err(|source| ApiTokenError::Read { path: p.clone(), source })?;
            (t.trim().to_string(), p.display().to_string())
        } else if let Some(t) = env {
            (t.to_string(), format!("${API_TOKEN_ENV}"))
        } else {
            return Ok(None);
        };
        if tok.trim().is_empty() {
            return Err(ApiTokenError::Empty(from));
        }
        Ok(Some(tok))
    }

    /// Reads a lab file; relative `artifact_roots` and `api_token_file` are taken from the
    /// file's directory.
    pub fn from_file(path: &Path) -> Result<LabConfig, LabError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| LabError {
            file: name.clone(),
            line: 1,
            column: 1,
            message: format!("cannot read the lab file: {e}"),
        })?;
        let mut lab = Self::from_yaml(&text, &name)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        for r in lab.artifact_roots.iter_mut().chain(lab.api_token_file.as_mut()) {
            if r.is_relative() {
                *r = dir.join(&*r);
            }
        }
        // The lab file holds the API token and the S3 secret: a `file:` source must not read it.
        if let Some(root) = root_containing(&lab.artifact_roots, path) {
            let pos = crate::yaml::Document::parse(&text)
                .ok()
                .and_then(|d| d.key_pos(&["artifact_roots"]))
                .unwrap_or(crate::yaml::Pos { line: 1, col: 1 });
            return Err(LabError {
                file: name,
                line: pos.line,
                column: pos.col,
                message: format!(
                    "artifact_roots: {} contains this lab file, whose secrets any job's `file:` source could then read; list a directory that holds only artifacts",
                    root.display()
                ),
            });
        }
        Ok(lab)
    }

    /// The embedded default lab.
    pub fn default_lab() -> LabConfig {
        Self::from_yaml(DEFAULT_LAB, "<default lab>").expect("the embedded default lab parses")
    }

    /// The cache settings as the cache wants them.
    pub fn cache_config(&self) -> Result<CacheConfig, String> {
        let mut c = CacheConfig::default();
        if let Some(s) = &self.cache.max_size {
            c.max_bytes = crate::units::parse_size(s).map_err(|e| format!("cache.max_size: {e}"))?;
        }
        Ok(c)
    }
}

/// The first of `roots` that contains `file` (both resolved, so `.` and symlinks count).
fn root_containing<'a>(roots: &'a [PathBuf], file: &Path) -> Option<&'a PathBuf> {
    let file = file.canonicalize().ok()?;
    roots.iter().find(|r| r.canonicalize().is_ok_and(|r| file.starts_with(r)))
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`, as a `Host` header names the API.
fn valid_api_host(h: &str) -> bool {
    let (host, port) = match h.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, "")) if v6.parse::<std::net::Ipv6Addr>().is_ok() => ("v6", None),
            Some((v6, port)) if v6.parse::<std::net::Ipv6Addr>().is_ok() => match port.strip_prefix(':') {
                Some(p) => ("v6", Some(p)),
                None => return false,
            },
            _ => return false,
        },
        None => match h.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (h, None),
        },
    };
    let host_ok = !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    host_ok && port.filter(|p| p.parse::<u16>().is_err()).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_lab_parses() {
        let lab = LabConfig::default_lab();
        assert!(lab.duts.len() >= 2);
    }

    #[test]
    fn machine_id_is_not_a_lab_variable() {
        let e = LabConfig::from_yaml("duts: []\nvariables:\n  minio_url: x\n  machine_id: same-for-all\n", "l.yaml").unwrap_err();
        assert_eq!((e.line, e.column), (4, 3));
        // A DUT's own `machine_id:` earlier in the file is not the one to point at.
        let e = LabConfig::from_yaml("duts:\n  - id: a\n    machine_id: m\nvariables:\n  machine_id: x\n", "l.yaml").unwrap_err();
        assert_eq!((e.line, e.column), (5, 3));
        assert!(e.message.contains("per DUT"), "{}", e.message);
        // The endpoint variables may be overridden (DUTs that see citron under another name).
        let lab = LabConfig::from_yaml("variables:\n  http_artifact_base: http://gw\n", "l.yaml").unwrap();
        assert_eq!(lab.variables["http_artifact_base"], "http://gw");
    }

    #[test]
    fn a_root_holding_the_lab_file_is_refused() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("arts")).unwrap();
        let p = t.path().join("lab.yaml");
        std::fs::write(&p, "duts: []\nartifact_roots: [.]\n").unwrap();
        let e = LabConfig::from_file(&p).unwrap_err();
        assert_eq!((e.line, e.column), (2, 1), "{e}");
        assert!(e.message.contains("contains this lab file"), "{e}");
        std::fs::write(&p, "duts: []\nartifact_roots: [arts]\n").unwrap();
        assert_eq!(LabConfig::from_file(&p).unwrap().artifact_roots, vec![t.path().join("arts")]);
    }

    #[test]
    fn debug_redacts_the_token_and_the_s3_secret() {
        let text = "api_token: tok-SECRET-1\ns3:\n  access_key_id: AKIAVISIBLE\n  secret_access_key: s3-SECRET-2\n";
        let lab = LabConfig::from_yaml(text, "l.yaml").unwrap();
        let shown = format!("{lab:?} {:#?} {:?}", lab, lab.s3);
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("<redacted>") && shown.contains("AKIAVISIBLE"), "{shown}");
        // serde still sees the real values.
        assert_eq!(lab.api_token.as_deref(), Some("tok-SECRET-1"));
        assert_eq!(LabConfig::from_yaml(&serde_yaml::to_string(&lab).unwrap(), "l.yaml").unwrap(), lab);
    }

    #[test]
    fn api_token_has_one_source() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tok"), "from-file\n").unwrap();
        std::fs::write(dir.path().join("lab.yaml"), "api_token_file: tok\napi_hosts: [citron.lab, \"api.lab:8081\"]\n").unwrap();
        let lab = LabConfig::from_file(&dir.path().join("lab.yaml")).unwrap();
        assert_eq!(lab.resolve_api_token(None).unwrap().as_deref(), Some("from-file"));
        assert!(matches!(lab.resolve_api_token(Some("env")), Err(ApiTokenError::Several(_))));
        let none = LabConfig::default();
        assert_eq!(none.resolve_api_token(Some("from-env")).unwrap().as_deref(), Some("from-env"));
        assert_eq!(none.resolve_api_token(Some("")).unwrap(), None);
        let both = LabConfig::from_yaml("api_token: a\napi_token_file: /x\n", "l.yaml").unwrap();
        let e = both.resolve_api_token(None).unwrap_err().to_string();
        assert!(e.contains("api_token_file") && e.contains("exactly one"), "{e}");
        let e = LabConfig::from_yaml("api_token: \" \"\n", "l.yaml").unwrap().resolve_api_token(None).unwrap_err();
        assert!(matches!(e, ApiTokenError::Empty(_)), "{e}");
        let missing = LabConfig::from_yaml("api_token_file: /nonexistent/tok\n", "l.yaml").unwrap();
        assert!(matches!(missing.resolve_api_token(None), Err(ApiTokenError::Read { .. })));
        let e = LabConfig::from_yaml("duts: []\napi_hosts: [\"a b\"]\n", "l.yaml").unwrap_err();
        assert_eq!((e.line, e.column), (2, 1), "{e}");
    }

    #[test]
    fn unknown_keys_are_errors_with_positions() {
        let e = LabConfig::from_yaml("duts: []\nvariablez: {}\n", "l.yaml").unwrap_err();
        assert_eq!((e.line, e.column), (2, 1));
        assert!(e.message.contains("variablez"), "{}", e.message);
    }
}
