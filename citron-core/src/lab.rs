//! The lab file: DUTs, template variables, cache settings and the roots `file:` sources may use.
//!
//! Read like a job file (`parse.rs`): through the positioned YAML reader, every error at once,
//! each as `file:line:col: key: message`, unknown keys with the key probably meant. The keys and
//! their values are the serde types below ([`LabConfig`], [`Dut`], [`Limits`], [`S3Config`],
//! [`StoreConfig`], and the pool's in `pool.rs`):
//! adding a key to one of them is all it takes for the reader to accept and check it.
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
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::artifact::{CacheConfig, S3Config, StoreConfig};
use crate::limits::Limits;
use crate::namespace::Dut;
use crate::yaml::de::Problem;
use crate::yaml::Pos;

mod parse;
mod pool;

pub use pool::{Accel, DutKind, Firmware, PoolSettings, PowerCommands, TenantQuota, Tenants, VmSettings};

/// The embedded default lab: two DUTs on loopback addresses, so that `citron serve` works with
/// no file at all and two DUTs can be told apart from one machine.
pub const DEFAULT_LAB: &str = include_str!("default_lab.yaml");

/// A lab file.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "citron lab file")]
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
    /// The shared artifact store of a lab with several gateways (`store: {url: s3://bucket/prefix}`);
    /// none: each gateway's cache is in its `--data` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreConfig>,
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
    /// The lab's gateways (`citron serve --gateway NAME` on one state store).
    #[serde(default)]
    pub gateways: GatewaySettings,
    /// The DUT pool's settings (lifetimes, health jobs).
    #[serde(default)]
    pub pool: PoolSettings,
    /// The tenants' pool quotas, by tenant name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tenants: Tenants,
    /// The lab's results settings (the salt of the runs' input keys).
    #[serde(default)]
    pub results: ResultsSettings,
}

/// `results:` in the lab file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResultsSettings {
    /// Goes into every run's input key (`citron results find`): change it (`salt: "2"`) to
    /// disown every earlier result, e.g. after a broken DUT or a bad toolchain produced
    /// results that must not be replayed. At most 256 characters.
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub salt: String,
}

/// `gateways:` in the lab file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewaySettings {
    /// A gateway silent (no heartbeat in the state store) for longer than this has its DUTs
    /// marked offline; default `30s`. Each gateway heartbeats three times per timeout.
    #[serde(default = "default_heartbeat_timeout")]
    pub heartbeat_timeout: crate::limits::Dur,
}

fn default_heartbeat_timeout() -> crate::limits::Dur {
    crate::limits::Dur(std::time::Duration::from_secs(30))
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings { heartbeat_timeout: default_heartbeat_timeout() }
    }
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
            .field("store", &self.store)
            .field("api_token", &self.api_token.as_ref().map(|_| "<redacted>"))
            .field("limits", &self.limits)
            .field("gateways", &self.gateways)
            .field("pool", &self.pool)
            .field("tenants", &self.tenants)
            .field("results", &self.results)
            .finish_non_exhaustive()
    }
}

/// `cache:` in the lab file; `max_size` takes `20G`-style sizes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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

/// One thing wrong with a lab file: where, and what to change.
pub type LabError = crate::diag::FileError;

/// Every error found in a lab file, in document order (one per line when displayed, like
/// [`JobErrors`](crate::job::JobErrors)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabErrors(pub Vec<LabError>);

impl fmt::Display for LabErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::diag::write_lines(f, &self.0)
    }
}

impl std::error::Error for LabErrors {}

impl LabErrors {
    fn one(file: &str, pos: Pos, field: &str, message: String) -> LabErrors {
        LabErrors(vec![LabError { file: file.into(), line: pos.line, column: pos.col, field: field.into(), message }])
    }

    fn from_problems(file: &str, problems: Vec<Problem>) -> LabErrors {
        let field = |f: String| if f == "<document>" { String::new() } else { f };
        LabErrors(
            problems
                .into_iter()
                .map(|p| LabError { file: file.into(), line: p.pos.line, column: p.pos.col, field: field(p.field), message: p.message })
                .collect(),
        )
    }
}

impl LabConfig {
    /// Parses a lab file's text; `name` is used in errors. Every problem is reported, each with
    /// its line and column: unknown keys (with the key probably meant), values a key does not
    /// take, missing keys, and the lab's own rules (no `machine_id` variable, valid `api_hosts`,
    /// one DUT per id and per address).
    pub fn from_yaml(text: &str, name: &str) -> Result<LabConfig, LabErrors> {
        parse::parse(text).map_err(|problems| LabErrors::from_problems(name, problems))
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

    /// Reads a lab file; relative `artifact_roots`, `api_token_file` and `pool.health_jobs`
    /// are taken from the file's directory.
    pub fn from_file(path: &Path) -> Result<LabConfig, LabErrors> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| LabErrors::one(&name, Pos { line: 1, col: 1 }, "", format!("cannot read the lab file: {e}")))?;
        let mut lab = Self::from_yaml(&text, &name)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        for r in lab.artifact_roots.iter_mut().chain(lab.api_token_file.as_mut()).chain(lab.pool.health_jobs.values_mut()) {
            if r.is_relative() {
                *r = dir.join(&*r);
            }
        }
        // The lab file holds the API token and the S3 secret: a `file:` source must not read it.
        if let Some(root) = root_containing(&lab.artifact_roots, path) {
            let pos =
                crate::yaml::Document::parse(&text).ok().and_then(|d| d.key_pos(&["artifact_roots"])).unwrap_or(Pos { line: 1, col: 1 });
            let message = format!(
                "{} contains this lab file, whose secrets any job's `file:` source could then read; list a directory that holds only artifacts",
                root.display()
            );
            return Err(LabErrors::one(&name, pos, "artifact_roots", message));
        }
        Ok(lab)
    }

    /// The JSON Schema (draft 2020-12) of lab files, derived from [`LabConfig`] and the types of
    /// its sections (the keys the reader accepts).
    ///
    /// ```
    /// let schema = citron_core::lab::LabConfig::schema();
    /// assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
    /// assert_eq!(schema["additionalProperties"], false);
    /// ```
    pub fn schema() -> serde_json::Value {
        crate::job::file::schema_of::<LabConfig>()
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
pub(crate) fn valid_api_host(h: &str) -> bool {
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
pub(crate) mod tests;
