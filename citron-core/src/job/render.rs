//! [`Desc`] + one DUT's [`RenderContext`] → [`ResolvedJob`]: templates expanded, paths normalised
//! again (a variable may expand to `..`), URLs parsed, `file:` sources confined to the allowed roots.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use url::Url;

use crate::digest::Digest;
use crate::namespace::normalize_declared;
use crate::template;
use crate::yaml::Pos;

use super::model::{DiskKind, DiskSpec, FileSpec, FsContents, ResolvedJob, ResultRef, ResultsSpec, Source, Step};
use super::parse::{
    path_message, Desc, DiskDesc, DiskKindDesc, FileDesc, FsDesc, Problem, ResultDesc, ResultsDesc, Sha, SizeDesc, SrcDesc, StepDesc, Str,
};
use super::{JobError, JobErrors, Origin, RenderContext};

/// URL schemes a job may fetch from (the cache knows how to download these).
const SCHEMES: &[&str] = &["http", "https", "s3"];

/// Renders `desc` for one DUT; also says where each `url:` and `file:` source was written.
pub(crate) fn render_with_sources(desc: &Desc, origin: &Origin, ctx: &RenderContext) -> Result<(ResolvedJob, SourceMap), Vec<Problem>> {
    // Roots are compared after resolving their own symlinks, as the files are.
    let roots: Vec<PathBuf> = ctx.file_roots.iter().filter_map(|r| std::fs::canonicalize(r).ok()).collect();
    // A job's run variables exist only for a job with `results:`; `job_name` for a named one.
    let own;
    let ctx = if desc.results.is_none() || desc.name.is_some() {
        let mut c = ctx.clone();
        if desc.results.is_none() {
            c.vars.retain(|k, _| !super::RUN_VARIABLES.contains(&k.as_str()));
        }
        if let Some(n) = &desc.name {
            c.vars.insert("job_name".into(), n.clone());
        }
        own = c;
        &own
    } else {
        ctx
    };
    let mut r = Renderer { ctx, origin, roots, problems: Vec::new(), sources: SourceMap::default() };
    let results = desc.results.as_ref().map(|d| r.results(d));
    let start = r.step(&desc.start);
    let cont = desc.cont.as_ref().map(|c| r.step(c));
    let mut problems = r.problems;
    if !problems.is_empty() {
        super::parse::sort(&mut problems);
        return Err(problems);
    }
    let job = ResolvedJob {
        origin: origin.name.clone(),
        name: desc.name.clone(),
        results: results.map(|r| r.expect("no problems")),
        start: start.expect("no problems"),
        continue_: cont.map(|c| c.expect("no problems")),
    };
    Ok((job, r.sources))
}

struct Renderer<'a> {
    ctx: &'a RenderContext,
    origin: &'a Origin,
    roots: Vec<PathBuf>,
    problems: Vec<Problem>,
    sources: SourceMap,
}

impl Renderer<'_> {
    fn err(&mut self, s: &Str, message: impl Into<String>) {
        self.problems.push(Problem { pos: s.pos, field: s.field.clone(), message: message.into() });
    }

    fn text(&mut self, s: &Str) -> Option<String> {
        match template::render_all(&s.value, &self.ctx.vars) {
            Ok(v) => Some(v),
            Err(errors) => {
                for e in errors {
                    self.problems.push(Problem { pos: s.pos_of(e.offset()), field: s.field.clone(), message: e.to_string() });
                }
                None
            }
        }
    }

    /// `results:`: its texts rendered (1 to 256 bytes, no control characters, as the results
    /// API takes them), its `max_size` within the lab's `limits.results_max`.
    fn results(&mut self, d: &ResultsDesc) -> Option<ResultsSpec> {
        let before = self.problems.len();
        let mut short = |s: &Option<Str>| {
            let s = s.as_ref()?;
            let v = self.text(s)?;
            if v.is_empty() || v.len() > 256 || v.chars().any(char::is_control) {
                self.err(s, format!("renders to {v:?}: give 1 to 256 bytes without control characters"));
                return None;
            }
            Some(v)
        };
        let (revision, platform) = (short(&d.revision), short(&d.platform));
        let max = self.ctx.limits.results_max;
        let max_size = match &d.max_size {
            None => max.bytes(),
            Some((b, pos, field)) if *b > max.bytes() => {
                let message = format!(
                    "{} is more than this lab lets one upload bring ({max}, `limits.results_max` in the lab file); ask for less",
                    crate::limits::Size(*b)
                );
                self.problems.push(Problem { pos: *pos, field: field.clone(), message });
                0
            }
            Some((b, _, _)) => *b,
        };
        (self.problems.len() == before).then_some(ResultsSpec { revision, platform, max_size })
    }

    fn step(&mut self, d: &StepDesc) -> Option<Step> {
        let before = self.problems.len();
        let kernel = d.kernel.as_ref().and_then(|f| self.file(f, "kernel"));
        let initramfs = d.initramfs.as_ref().and_then(|f| self.file(f, "initramfs"));
        let cmdline = d.cmdline.as_ref().map(|items| {
            let parts: Vec<String> = items.iter().filter_map(|s| self.text(s)).collect();
            parts.join(" ")
        });
        let files = d.files.iter().map(|(space, entries)| (*space, self.files(entries, space.0))).collect();
        let mut nbd = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        for disk in &d.nbd {
            if let Some(spec) = self.disk(disk) {
                if let Some(line) = names.get(&spec.name) {
                    let msg = format!("renders to the disk name `{}`, already used at line {line}; give each disk its own name", spec.name);
                    self.err(&disk.name, msg);
                } else {
                    names.insert(spec.name.clone(), disk.name.pos.line);
                }
                nbd.push(spec);
            }
        }
        (self.problems.len() == before).then_some(Step { kernel, initramfs, cmdline, files, nbd })
    }

    fn files(&mut self, entries: &[FileDesc], proto: &str) -> Vec<FileSpec> {
        let mut out = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for e in entries {
            let path_str = e.path.as_ref().expect("storage entries have paths");
            let Some(spec) = self.file(e, "") else { continue };
            // Paths that differ as written may render to the same one.
            if let Some(line) = seen.get(&spec.path) {
                let msg = format!("renders to `{}`, already defined at line {line}; give each {proto} file its own path", spec.path);
                self.err(path_str, msg);
            } else {
                seen.insert(spec.path.clone(), path_str.pos.line);
            }
            out.push(spec);
        }
        out
    }

    /// A file entry; `fixed_path` names `kernel`/`initramfs`, which have no `path:`.
    fn file(&mut self, e: &FileDesc, fixed_path: &str) -> Option<FileSpec> {
        let path = match &e.path {
            None => Some(fixed_path.to_string()),
            Some(p) => self.text(p).and_then(|v| match normalize_declared(&v) {
                Ok(n) => Some(n),
                Err(err) => {
                    self.err(p, format!("renders to {v:?}: {}", path_message(&err)));
                    None
                }
            }),
        };
        let source = self.source(&e.source);
        if let (Some(Source::Data(bytes)), Some(sha)) = (&source, &e.sha256) {
            self.check_data(bytes, sha)?;
        }
        Some(FileSpec { path: path?, source: source?, sha256: e.sha256.as_ref().map(|s| s.digest), lifetime: e.lifetime })
    }

    /// Inline data can be checked now rather than failing at download time.
    fn check_data(&mut self, bytes: &[u8], sha: &Sha) -> Option<()> {
        let got = Digest::of(bytes);
        if got == sha.digest {
            return Some(());
        }
        self.problems.push(Problem {
            pos: sha.pos,
            field: sha.field.clone(),
            message: format!("the `data` (after templating) has sha256 {got}, not {}; fix the digest or the data", sha.digest),
        });
        None
    }

    fn source(&mut self, s: &SrcDesc) -> Option<Source> {
        match s {
            SrcDesc::Data(d) => self.text(d).map(|v| Source::Data(Bytes::from(v))),
            SrcDesc::Url(u) => self.url(u).map(Source::Url).inspect(|src| self.sources.add(src, u)),
            SrcDesc::File(f) => self.local_file(f).map(Source::File).inspect(|src| self.sources.add(src, f)),
            SrcDesc::Result(r) => self.result(r).map(Source::Result).inspect(|src| self.sources.add(src, &r.job)),
        }
    }

    /// A `result:` source: a job name, a relative path in its run.
    fn result(&mut self, r: &ResultDesc) -> Option<ResultRef> {
        let (job, path) = (self.text(&r.job), self.text(&r.path));
        let job = job.filter(|j| {
            let ok = super::parse::is_job_name(j);
            if !ok {
                self.err(&r.job, format!("{j:?} is not a job name: 1 to 128 letters, digits, '.', '_' or '-', not starting with '.'"));
            }
            ok
        });
        let path = path.filter(|p| {
            let ok = !p.is_empty()
                && p.len() <= 1024
                && !p.starts_with('/')
                && !p.bytes().any(|b| b == 0 || b == b'\\' || b.is_ascii_control())
                && !p.split('/').any(|s| s.is_empty() || s == "." || s == "..");
            if !ok {
                self.err(&r.path, format!("{p:?} is not a path in a run: give a relative path like images/bzImage"));
            }
            ok
        });
        Some(ResultRef { job: job?, path: path?, run: r.run, untokened: r.untokened })
    }

    fn url(&mut self, s: &Str) -> Option<Url> {
        let v = self.text(s)?;
        let v = v.trim();
        let hint = "write an absolute URL: http://host/path, https://host/path or s3://bucket/key (`{{ http_artifact_base }}` and the lab's variables help)";
        match Url::parse(v) {
            Err(e) => {
                self.err(s, format!("`{}` is not a URL ({e}); {hint}", crate::artifact::redact_str(v)));
                None
            }
            Ok(u) if !SCHEMES.contains(&u.scheme()) => {
                self.err(s, format!("URL scheme `{}` is not supported; use http, https or s3", u.scheme()));
                None
            }
            Ok(u) if u.host_str().is_none_or(str::is_empty) => {
                self.err(s, format!("`{}` has no host (or bucket); {hint}", crate::artifact::redact_str(v)));
                None
            }
            Ok(u) => Some(u),
        }
    }

    /// A `file:` source, resolved and confined: the canonical path (symlinks resolved) must lie
    /// inside a canonical root, so neither `..` nor a symlink can reach `/etc/shadow`.
    fn local_file(&mut self, s: &Str) -> Option<PathBuf> {
        let v = self.text(s)?;
        if v.is_empty() || v.contains('\0') {
            self.err(s, "the file path is empty or contains NUL; give a path relative to the job file");
            return None;
        }
        let given = Path::new(&v);
        let joined = if given.is_absolute() {
            given.to_path_buf()
        } else if let Some(base) = &self.origin.base_dir {
            base.join(given)
        } else {
            self.err(
                s,
                format!(
                    "`{v}` is relative, but this job was not read from a file; give an absolute path inside the allowed artifact roots"
                ),
            );
            return None;
        };
        let outside =
            || format!("`{v}` is outside the allowed artifact roots; put the file under one of them (the lab file's `artifact_roots`)");
        // First without touching the file system, so that nothing is revealed about files
        // outside the roots (not even whether they exist).
        let lexical = lexical_absolute(&joined);
        let given_roots: Vec<PathBuf> = self.ctx.file_roots.iter().map(|r| lexical_absolute(r)).collect();
        let inside = |p: &Path, roots: &[PathBuf]| roots.iter().any(|r| p.starts_with(r));
        if !inside(&lexical, &self.roots) && !inside(&lexical, &given_roots) {
            self.err(s, outside());
            return None;
        }
        let canonical = match std::fs::canonicalize(&joined) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.err(s, format!("`{v}` does not exist (relative paths start at the job file's directory); check the path"));
                return None;
            }
            Err(e) => {
                self.err(s, format!("cannot resolve `{v}`: {e}"));
                return None;
            }
        };
        if !inside(&canonical, &self.roots) {
            self.err(s, outside());
            return None;
        }
        if !canonical.is_file() {
            self.err(s, format!("`{v}` is not a regular file; give a file, not a directory"));
            return None;
        }
        Some(canonical)
    }

    /// A disk size within the lab's `limits.max_disk_size`: a larger one would be refused when
    /// the disk is served, or worse, so it is refused here, where its position is known.
    fn disk_size(&mut self, s: &SizeDesc) -> Option<u64> {
        let max = self.ctx.limits.max_disk_size;
        if s.bytes > max.bytes() {
            let message = format!(
                "a disk of {} is larger than this lab allows ({max}, `limits.max_disk_size` in the lab file); ask for a smaller disk",
                crate::limits::Size(s.bytes)
            );
            self.problems.push(Problem { pos: s.pos, field: s.field.clone(), message });
            return None;
        }
        Some(s.bytes)
    }

    fn disk(&mut self, d: &DiskDesc) -> Option<DiskSpec> {
        let name = self.text(&d.name).and_then(|n| {
            let bad = n.is_empty() || n.len() > 255 || n == "." || n == ".." || n.chars().any(|c| c.is_control() || c == '/' || c == '\\');
            if bad {
                self.err(&d.name, format!("disk name {n:?} is not usable; use 1-255 characters without '/', '\\' or control characters"));
                return None;
            }
            Some(n)
        });
        let kind = match &d.kind {
            DiskKindDesc::Image { source, sha256 } => {
                self.source(source).map(|source| DiskKind::Image { source, sha256: sha256.as_ref().map(|s| s.digest) })
            }
            DiskKindDesc::Raw { size } => self.disk_size(size).map(|size_bytes| DiskKind::Raw { size_bytes }),
            DiskKindDesc::Filesystem { fstype, size, contents } => {
                let size_bytes = self.disk_size(size);
                let fstype = match fstype {
                    None => Some("ext4".to_string()),
                    Some(t) => self.text(t).and_then(|v| {
                        if !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric()) {
                            Some(v)
                        } else {
                            self.err(t, format!("{v:?} is not a filesystem type; write one like ext4, vfat or xfs"));
                            None
                        }
                    }),
                };
                let contents = match contents {
                    None => Some(None),
                    Some(FsDesc::Tarball(src, sha)) => {
                        self.source(src).map(|s| Some(FsContents::Tarball(s, sha.as_ref().map(|h| h.digest))))
                    }
                    Some(FsDesc::Container(c)) => self.text(c).and_then(|v| match v.strip_prefix("docker://") {
                        Some(rest) if !rest.is_empty() && !rest.chars().any(char::is_whitespace) => Some(Some(FsContents::Container(v))),
                        _ => {
                            self.err(c, format!("`{v}` is not a container reference; write one like docker://registry.example/image:tag"));
                            None
                        }
                    }),
                };
                match (fstype, contents, size_bytes) {
                    (Some(fstype), Some(contents), Some(size_bytes)) => Some(DiskKind::Filesystem { fstype, size_bytes, contents }),
                    _ => None,
                }
            }
        };
        Some(DiskSpec { name: name?, readonly: d.readonly, kind: kind?, reset_on: d.reset_on, shared: d.shared, expiration: d.expiration })
    }
}

/// `path` made absolute (from the current directory) with `.` and `..` resolved without looking
/// at the file system.
fn lexical_absolute(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map(|d| d.join(path)).unwrap_or_else(|_| path.to_path_buf())
    };
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Where each fetched source (`url:`, `file:`) of a rendered job was written, so that a failed
/// fetch is reported at its place in the job file like any other problem of the job.
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    /// (source, position, field), in document order within each step.
    at: Vec<(Source, Pos, String)>,
}

impl SourceMap {
    fn add(&mut self, source: &Source, s: &Str) {
        self.at.push((source.clone(), s.pos, s.field.clone()));
    }

    /// Each failure at every place its source was written (a URL written twice is reported
    /// twice, each place once), in document order; `file` names the job. A source that was not
    /// written in the job (none, normally) is reported at its first line.
    pub fn errors<E: std::fmt::Display>(&self, file: &str, failures: &[(Source, E)]) -> JobErrors {
        let mut out: Vec<(Pos, JobError)> = Vec::new();
        for (source, error) in failures {
            let at: Vec<&(Source, Pos, String)> = self.at.iter().filter(|(s, ..)| s == source).collect();
            let here = |pos: Pos, field: &str| JobError {
                file: file.to_string(),
                line: pos.line,
                column: pos.col,
                field: field.to_string(),
                message: format!("cannot fetch it: {error}"),
            };
            if at.is_empty() {
                out.push((Pos { line: 1, col: 1 }, here(Pos { line: 1, col: 1 }, "<document>")));
            }
            for (_, pos, field) in at {
                // `continue` repeats what it takes from `start`: one place, one error.
                if !out.iter().any(|(p, e)| p == pos && e.field == *field) {
                    out.push((*pos, here(*pos, field)));
                }
            }
        }
        out.sort_by_key(|(p, _)| *p);
        JobErrors(out.into_iter().map(|(_, e)| e).collect())
    }
}
