//! Job descriptions: the YAML a job gives, parsed with positions, validated, and rendered per DUT.
//!
//! Two stages, so that every error can name `file:line:col`:
//! 1. [`JobDescription::parse`] reads the YAML into a tree that remembers where each value stood,
//!    and checks its shape (unknown fields, two sources in one entry, duplicate paths, bad paths).
//! 2. [`JobDescription::render`] expands `{{ templates }}` for one DUT and checks what only then
//!    can be checked (URLs, `file:` roots), giving a [`ResolvedJob`] with plain values.
//!
//! Both stages report *all* errors at once ([`JobErrors`]), not only the first.

pub mod file;
pub mod listing;
mod model;
mod parse;
mod render;
#[cfg(test)]
mod tests;

pub use file::job_schema;
pub use model::{DiskKind, DiskSpec, FileSpec, FsContents, Lifetime, ResetOn, ResolvedJob, ResultRef, ResultsSpec, Source, Step};
pub use render::SourceMap;

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
            base_dir: path.parent().map(|p| if p.as_os_str().is_empty() { PathBuf::from(".") } else { p.to_path_buf() }),
        }
    }
    /// The origin of a job given as text (API, Python).
    pub fn named(name: impl Into<String>) -> Origin {
        Origin { name: name.into(), base_dir: None }
    }
}

/// What rendering a job for one DUT needs: the template variables, the roots `file:` sources
/// must stay inside and the lab's limits.
#[derive(Debug, Clone, Default)]
pub struct RenderContext {
    /// Template variables: `machine_id`, `http_artifact_base`, ..., and the lab's own.
    pub vars: BTreeMap<String, String>,
    /// Directories a `file:` source may read from (after resolving symlinks).
    pub file_roots: Vec<PathBuf>,
    /// The lab's `limits:` (disk sizes are checked against `max_disk_size`); the defaults when
    /// no lab is given.
    pub limits: crate::limits::Limits,
}

impl RenderContext {
    /// The one way a job's render context is built: by the gateway for a running lab, by
    /// `citron validate`/`render` and Python for one that is not running (with the endpoints it
    /// would have). Variables: `machine_id`, those of `endpoints`
    /// ([`Endpoints::variables`](crate::Endpoints::variables): `http_artifact_base`, ...), then
    /// the lab's own `variables:`, which win; `file:` roots: the lab's `artifact_roots`, then
    /// `job_dir` (the job file's directory, for jobs the lab admin gave); the lab's limits.
    ///
    /// ```
    /// use citron_core::{job::RenderContext, lab::LabConfig, namespace::Dut, Endpoints};
    /// let lab = LabConfig::default_lab();
    /// let ctx = RenderContext::for_dut(&lab, &lab.duts[0], &Endpoints::default(), None);
    /// assert_eq!(ctx.vars["machine_id"], "dut1");
    /// assert_eq!(ctx.vars["http_artifact_base"], "");
    /// ```
    pub fn for_dut(
        lab: &crate::lab::LabConfig,
        dut: &crate::namespace::Dut,
        endpoints: &crate::Endpoints,
        job_dir: Option<&Path>,
    ) -> RenderContext {
        let mut vars = endpoints.variables();
        vars.insert("machine_id".into(), dut.machine_id().to_string());
        // A job with `results:` sees its run's: stand-ins until the gateway opens the run.
        let http = vars.get("http_artifact_base").cloned().unwrap_or_default();
        vars.insert("results_url".into(), format!("{http}/_citron/results"));
        vars.insert("upload_token".into(), String::new());
        vars.insert("run_id".into(), String::new());
        vars.extend(lab.variables.iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut file_roots = lab.artifact_roots.clone();
        file_roots.extend(job_dir.map(Path::to_path_buf));
        RenderContext { vars, file_roots, limits: lab.limits.clone() }
    }
}

/// The template variables only a job with `results:` may use: its run's upload token and id,
/// and where the DUT uploads over HTTP (`_citron/results` on this gateway's HTTP listener).
/// Every job with a `name:` also sees it as `job_name`.
pub const RUN_VARIABLES: &[&str] = &["upload_token", "run_id", "results_url"];

/// One thing wrong with a job description: where, and what to change.
pub type JobError = crate::diag::FileError;

/// Every error found in a job description, in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobErrors(pub Vec<JobError>);

impl fmt::Display for JobErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::diag::write_lines(f, &self.0)
    }
}

impl std::error::Error for JobErrors {}

impl JobErrors {
    fn from_problems(origin: &Origin, problems: Vec<parse::Problem>) -> JobErrors {
        JobErrors(
            problems
                .into_iter()
                .map(|p| JobError { file: origin.name.clone(), line: p.pos.line, column: p.pos.col, field: p.field, message: p.message })
                .collect(),
        )
    }
}

/// A parsed job description (positions kept for later errors).
#[derive(Debug, Clone)]
pub struct JobDescription {
    origin: Origin,
    /// The text as given, for the job's record ([`crate::gateway::JobRecord`]).
    text: String,
    desc: parse::Desc,
}

impl JobDescription {
    /// Parses and shape-checks a job description: YAML syntax, unknown or missing fields, types,
    /// one source per entry, duplicate paths and disk names, declared paths (`..`, control
    /// characters, reserved prefixes), digests, sizes, durations and template syntax. Every
    /// problem is reported, in document order.
    ///
    /// ```
    /// use citron_core::job::{JobDescription, Origin};
    /// let text = "deployment:\n  start:\n    storage:\n      http:\n        - path: /a\n          data: x\n          url: https://example.com/a\n        - path: /../b\n          data: y\n";
    /// let errors = JobDescription::parse(text, Origin::named("job.yaml")).unwrap_err();
    /// assert_eq!(errors.0.len(), 2);
    /// assert!(errors.to_string().starts_with("job.yaml:7:11: deployment.start.storage.http[0]: `data` and `url` are both given"));
    /// ```
    pub fn parse(text: &str, origin: Origin) -> Result<JobDescription, JobErrors> {
        match parse::parse(text) {
            Ok(desc) => Ok(JobDescription { origin, text: text.to_string(), desc }),
            Err(problems) => Err(JobErrors::from_problems(&origin, problems)),
        }
    }

    /// Reads and parses a job file.
    pub fn from_file(path: &Path) -> Result<JobDescription, JobErrors> {
        let text = Self::read_text(path)?;
        Self::parse(&text, Origin::file(path))
    }

    /// A job file's text; a file that cannot be read is a positioned error like the others.
    pub fn read_text(path: &Path) -> Result<String, JobErrors> {
        std::fs::read_to_string(path).map_err(|e| read_error(&Origin::file(path), &e))
    }

    /// Where it came from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The text it was parsed from.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Renders the job for one DUT: expands templates (an unknown variable is reported at its
    /// `{{`), normalises paths again, parses URLs (http, https, s3), resolves `file:` sources
    /// against [`Origin::base_dir`] and refuses any that is missing or resolves (through `..` or
    /// symlinks) outside [`RenderContext::file_roots`].
    ///
    /// ```
    /// use citron_core::job::{JobDescription, Origin, RenderContext, Source};
    /// let job = JobDescription::parse(
    ///     "deployment:\n  start:\n    kernel:\n      url: '{{ minio_url }}/vmlinuz'\n",
    ///     Origin::named("job.yaml"),
    /// ).unwrap();
    /// let mut ctx = RenderContext::default();
    /// let err = job.render(&ctx).unwrap_err();
    /// assert!(err.to_string().starts_with("job.yaml:4:13: deployment.start.kernel.url: unknown template variable `minio_url`"));
    /// ctx.vars.insert("minio_url".into(), "http://minio:9000/bucket".into());
    /// let resolved = job.render(&ctx).unwrap();
    /// let Source::Url(url) = &resolved.start.kernel.unwrap().source else { panic!() };
    /// assert_eq!(url.as_str(), "http://minio:9000/bucket/vmlinuz");
    /// ```
    pub fn render(&self, ctx: &RenderContext) -> Result<ResolvedJob, JobErrors> {
        self.render_with_sources(ctx).map(|(job, _)| job)
    }

    /// [`JobDescription::render`], and where each `url:` and `file:` source was written.
    pub fn render_with_sources(&self, ctx: &RenderContext) -> Result<(ResolvedJob, SourceMap), JobErrors> {
        render::render_with_sources(&self.desc, &self.origin, ctx).map_err(|p| JobErrors::from_problems(&self.origin, p))
    }

    /// Parses and renders in one go, and reports the problems of both stages together: a job
    /// with an unknown field *and* an unknown template variable gets both errors, in document
    /// order. This is what `citron validate` and the lab API use, so that one round of fixes is
    /// enough.
    ///
    /// ```
    /// use citron_core::job::{JobDescription, Origin, RenderContext};
    /// let text = "deployment:\n  start:\n    kernel: { url: '{{ nope }}/k' }\n    storage:\n      http:\n        - path: /a\n          data: x\n          colour: red\n";
    /// let errors = JobDescription::check(text, Origin::named("job.yaml"), &RenderContext::default()).unwrap_err();
    /// let lines: Vec<String> = errors.0.iter().map(|e| e.to_string()).collect();
    /// assert!(lines[0].starts_with("job.yaml:3:21: deployment.start.kernel.url: unknown template variable `nope`"), "{lines:?}");
    /// assert!(lines[1].starts_with("job.yaml:8:11: deployment.start.storage.http[0].colour: unknown field"), "{lines:?}");
    /// ```
    pub fn check(text: &str, origin: Origin, ctx: &RenderContext) -> Result<ResolvedJob, JobErrors> {
        Self::check_with_sources(text, origin, ctx).map(|(job, _)| job)
    }

    /// [`JobDescription::check`], and where each `url:` and `file:` source was written: what
    /// the gateway reports a failed fetch with.
    pub fn check_with_sources(text: &str, origin: Origin, ctx: &RenderContext) -> Result<(ResolvedJob, SourceMap), JobErrors> {
        let (desc, mut problems) = parse::parse_partial(text);
        let Some(desc) = desc else { return Err(JobErrors::from_problems(&origin, problems)) };
        match render::render_with_sources(&desc, &origin, ctx) {
            Ok(job) if problems.is_empty() => return Ok(job),
            Ok(_) => {}
            Err(more) => {
                // A value already reported by the shape check is not reported twice.
                let seen: Vec<(crate::yaml::Pos, String)> = problems.iter().map(|p| (p.pos, p.field.clone())).collect();
                problems.extend(more.into_iter().filter(|p| !seen.contains(&(p.pos, p.field.clone()))));
            }
        }
        parse::sort(&mut problems);
        Err(JobErrors::from_problems(&origin, problems))
    }

    /// [`JobDescription::check`] on a job file.
    pub fn check_file(path: &Path, ctx: &RenderContext) -> Result<ResolvedJob, JobErrors> {
        let text = Self::read_text(path)?;
        Self::check(&text, Origin::file(path), ctx)
    }

    /// Checks everything `render` checks, without keeping the result.
    pub fn validate(&self, ctx: &RenderContext) -> Result<(), JobErrors> {
        self.render(ctx).map(|_| ())
    }
}

/// A job file that cannot be read, as a positioned error like the others.
fn read_error(origin: &Origin, e: &std::io::Error) -> JobErrors {
    JobErrors(vec![JobError {
        file: origin.name.clone(),
        line: 1,
        column: 1,
        field: "<document>".into(),
        message: format!("cannot read the job file: {e}"),
    }])
}
