//! What went into a run (issue 15 §7, replay by revision): the run's **input key**, so that a CI
//! step about to test a revision asks whether a run with the same inputs succeeded already and
//! replays it instead.
//!
//! The key is the SHA-256 of one canonical JSON document ([`InputKey::compute`]) holding:
//!
//! - the lab's salt (`results: {salt: …}` in the lab file): bumping it disowns every earlier
//!   result, as Bazel's cache salt does;
//! - the revision the run is of;
//! - the job rendered for the DUT, with the run's own variables (`upload_token`, `run_id`) as
//!   their empty stand-ins, so that two runs of one job on one DUT render alike; without its
//!   origin (a file name says nothing of what runs);
//! - the DUT's tags (sorted);
//! - the digest of every artifact the job **declares** (`start/kernel`, `start/http/<path>`,
//!   `continue/…`, each as the cache holds it when the job is loaded).
//!
//! The key is on the declared set, not on what the DUT happened to read: the served set
//! depends on what the DUT did (a boot that fails before it reads the initramfs reads less),
//! so keying on it would make a failed run's key differ from a good run's, and `find` could
//! not know it before a run. What the DUT did read is recorded too ([`RunInputs::served`],
//! from the serving path: [`Catalog::open`](crate::serve::Catalog::open) notes the digest of
//! every job file it hands out for a read), always a subset of the declared names; its
//! digests are the served bytes' own, so a file holding the run's token differs from its
//! stand-in render. NBD disks count by their description in the job (source and `sha256:`),
//! not by their content.

use std::collections::BTreeMap;
use std::path::PathBuf;

use parking_lot::Mutex;
use serde_json::json;

use super::{Gateway, GatewayError};
use crate::artifact::FetchError;
use crate::digest::Digest;
use crate::job::{DiskKind, FileSpec, FsContents, JobDescription, Origin, ResolvedJob, Source, Step};
use crate::namespace::{Dut, DutId};

/// The version of the key's document: a change to what goes in changes it, so that old keys
/// never match new ones by accident.
const KEY_VERSION: u32 = 1;

/// A run's input key and what it was computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputKey {
    /// SHA-256 of the canonical inputs document.
    pub key: Digest,
    /// The revision it is for.
    pub revision: Option<String>,
    /// The declared artifacts' digests, by name (`start/kernel`, `start/http/boot/x`).
    pub declared: BTreeMap<String, Digest>,
    /// The DUT's tags, sorted.
    pub tags: Vec<String>,
}

impl InputKey {
    /// The key of `job` (rendered with the run variables' stand-ins) for a DUT tagged `tags`,
    /// of `revision`, with `declared` the digests of its artifacts and `salt` the lab's.
    pub fn compute(
        salt: &str,
        revision: Option<String>,
        job: &ResolvedJob,
        tags: &[String],
        declared: BTreeMap<String, Digest>,
    ) -> InputKey {
        let mut tags = tags.to_vec();
        tags.sort();
        tags.dedup();
        let doc = json!({
            "version": KEY_VERSION,
            "salt": salt,
            "revision": revision,
            "job": canonical(job),
            "tags": tags,
            "artifacts": declared.iter().map(|(k, v)| (k.clone(), v.hex())).collect::<BTreeMap<_, _>>(),
        });
        // serde_json keeps object keys sorted (no `preserve_order`): the text is canonical.
        let key = Digest::of(doc.to_string().as_bytes());
        InputKey { key, revision, declared, tags }
    }
}

/// Everything a run records of its inputs when it closes ([`super::RunStore::close`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInputs {
    /// The key and what it was computed from.
    pub key: InputKey,
    /// The artifacts the DUT read during the run, by name, with the digest of what it was
    /// served: a subset of [`InputKey::declared`]'s names.
    pub served: BTreeMap<String, Digest>,
    /// The job's text, so that `find` renders it again for a DUT (`None`: built in code).
    pub yaml: Option<String>,
    /// Its `file:` root besides the lab's (a job file the admin gave).
    pub job_dir: Option<PathBuf>,
}

/// The inputs of a loaded job with a run: its key, and what its DUT reads, noted as it is
/// served (bounded: one entry per file the job declares).
#[derive(Debug)]
pub(super) struct JobInputs {
    key: InputKey,
    served: Mutex<BTreeMap<String, Digest>>,
    yaml: Option<String>,
    job_dir: Option<PathBuf>,
}

impl JobInputs {
    /// Notes that the file named `name` was read with content `digest`.
    pub(super) fn served(&self, name: &str, digest: Digest) {
        if !self.key.declared.contains_key(name) {
            return;
        }
        let mut s = self.served.lock();
        if s.get(name) != Some(&digest) {
            s.insert(name.to_string(), digest);
        }
    }

    /// What the run records.
    pub(super) fn snapshot(&self) -> RunInputs {
        RunInputs { key: self.key.clone(), served: self.served.lock().clone(), yaml: self.yaml.clone(), job_dir: self.job_dir.clone() }
    }
}

/// The name a declared file goes by in the key: `<step>/<space>/<path>`, or `<step>/kernel`
/// and `<step>/initramfs` for the boot files.
pub(super) fn artifact_name(step: &str, space: Option<crate::serve::Space>, path: &str) -> String {
    match space {
        Some(s) => format!("{step}/{s}/{path}"),
        None => format!("{step}/{path}"),
    }
}

/// Every declared file of `job`, by name: `start`, then `continue` over `start` (as loaded).
fn declared_files(job: &ResolvedJob) -> Vec<(String, FileSpec)> {
    let mut out = Vec::new();
    let mut add = |step: &str, s: &Step| {
        for (name, f) in [("kernel", &s.kernel), ("initramfs", &s.initramfs)] {
            if let Some(f) = f {
                out.push((artifact_name(step, None, name), f.clone()));
            }
        }
        for (space, files) in &s.files {
            for f in files {
                out.push((artifact_name(step, Some(*space), &f.path), f.clone()));
            }
        }
    };
    add("start", &job.start);
    if let Some(c) = &job.continue_ {
        add("continue", &c.over(&job.start));
    }
    out
}

/// A source as the key sees it: inline data by its digest.
fn source(s: &Source) -> serde_json::Value {
    match s {
        Source::Data(b) => json!({"data": Digest::of(b).hex()}),
        Source::File(p) => json!({"file": p.display().to_string()}),
        Source::Url(u) => json!({"url": u.as_str()}),
        Source::Result(r) => json!({"result": {"job": r.job, "path": r.path, "run": r.run, "untokened": r.untokened}}),
    }
}

fn file(f: &FileSpec) -> serde_json::Value {
    json!({
        "path": f.path,
        "source": source(&f.source),
        "sha256": f.sha256.map(|d| d.hex()),
        "access_count": f.lifetime.access_count,
        "expiration_ms": f.lifetime.expiration.map(|d| d.as_millis() as u64),
    })
}

fn step(s: &Step) -> serde_json::Value {
    let disks: Vec<_> = s
        .nbd
        .iter()
        .map(|d| {
            let kind = match &d.kind {
                DiskKind::Image { source: src, sha256 } => json!({"image": source(src), "sha256": sha256.map(|h| h.hex())}),
                DiskKind::Filesystem { fstype, size_bytes, contents } => json!({"filesystem": {
                    "type": fstype, "size": size_bytes,
                    "tarball": match contents { Some(FsContents::Tarball(t, _)) => source(t), _ => serde_json::Value::Null },
                    "container": match contents { Some(FsContents::Container(c)) => json!(c), _ => serde_json::Value::Null },
                }}),
                DiskKind::Raw { size_bytes } => json!({"raw": size_bytes}),
            };
            json!({"name": d.name, "readonly": d.readonly, "kind": kind, "reset_on": d.reset_on.name(), "shared": d.shared,
                "expiration_ms": d.expiration.map(|e| e.as_millis() as u64)})
        })
        .collect();
    json!({
        "kernel": s.kernel.as_ref().map(file),
        "initramfs": s.initramfs.as_ref().map(file),
        "cmdline": s.cmdline,
        "files": s.files.iter().map(|(sp, fs)| (sp.0.to_string(), fs.iter().map(file).collect::<Vec<_>>())).collect::<BTreeMap<_, _>>(),
        "nbd": disks,
    })
}

/// The job as the key sees it: every step, its name, its results' platform and bound; not its
/// origin nor its revision (the key holds the run's own).
fn canonical(job: &ResolvedJob) -> serde_json::Value {
    json!({
        "name": job.name,
        "results": job.results.as_ref().map(|r| json!({"platform": r.platform, "max_size": r.max_size})),
        "start": step(&job.start),
        "continue": job.continue_.as_ref().map(step),
    })
}

impl Gateway {
    /// The digests of every file `job` declares, as the cache holds them (fetched first if it
    /// does not): the same code computes a run's key when its job is loaded and `find`'s.
    async fn declared(&self, job: &ResolvedJob) -> Result<BTreeMap<String, Digest>, FetchError> {
        let mut out = BTreeMap::new();
        let runs = self.run_store();
        for (name, f) in declared_files(job) {
            let d = match &f.source {
                Source::Data(b) => Digest::of(b),
                src => super::files::fetch(&self.inner.cache, runs.as_ref(), src, f.sha256).await?.digest,
            };
            out.insert(name, d);
        }
        Ok(out)
    }

    /// The key of `probe` (a job rendered for `dut` with the run variables' stand-ins).
    pub(super) async fn input_key_of(&self, dut: &Dut, probe: &ResolvedJob, revision: Option<String>) -> Result<InputKey, FetchError> {
        let declared = self.declared(probe).await?;
        Ok(InputKey::compute(&self.inner.lab.results.salt, revision, probe, &dut.tags, declared))
    }

    /// The inputs a loaded job with a run keeps: its key, and room for what its DUT reads.
    /// `None` (logged) when the key cannot be computed: the run then records no key.
    pub(super) async fn job_inputs(
        &self,
        dut: &Dut,
        probe: &ResolvedJob,
        revision: Option<String>,
        yaml: Option<String>,
        job_dir: Option<PathBuf>,
    ) -> Option<JobInputs> {
        match self.input_key_of(dut, probe, revision).await {
            Ok(key) => Some(JobInputs { key, served: Mutex::default(), yaml, job_dir }),
            Err(e) => {
                tracing::warn!(dut = %dut.id, error = %e, "results: the run's input key cannot be computed; it records none");
                None
            }
        }
    }

    /// The input key job `yaml` would have on `dut` now, for `revision` (over the job's own
    /// `results.revision`): rendered for the DUT as a new run would be, its artifacts fetched
    /// into the cache if they are not there, nothing served or recorded. What `citron results
    /// find` compares with the keys of earlier runs.
    pub async fn input_key(
        &self,
        id: &DutId,
        yaml: &str,
        job_dir: Option<PathBuf>,
        revision: Option<String>,
    ) -> Result<InputKey, GatewayError> {
        let dut = self.known(id)?;
        let ctx = self.render_context(&dut, job_dir.as_deref());
        let (probe, _) = JobDescription::check_with_sources(yaml, Origin::named("the run's job"), &ctx)?;
        let revision = revision.or_else(|| probe.results.as_ref().and_then(|r| r.revision.clone()));
        self.input_key_of(&dut, &probe, revision).await.map_err(GatewayError::Fetch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Origin;
    use crate::job::RenderContext;
    use crate::lab::LabConfig;

    fn job(text: &str) -> ResolvedJob {
        let lab = LabConfig::default_lab();
        let ctx = RenderContext::for_dut(&lab, &lab.duts[0], &Default::default(), None);
        JobDescription::check_with_sources(text, Origin::named("t"), &ctx).unwrap().0
    }

    const J: &str =
        "name: j\nresults: {}\ndeployment:\n  start:\n    cmdline: quiet\n    storage:\n      http:\n        - {path: a, data: x}\n";

    #[test]
    fn every_input_changes_the_key_and_nothing_else_does() {
        let base = || {
            InputKey::compute(
                "s",
                Some("r1".into()),
                &job(J),
                &["b".into(), "a".into()],
                [("start/http/a".into(), Digest::of(b"x"))].into(),
            )
        };
        let k = base().key;
        assert_eq!(k, base().key);
        let tags_reordered = InputKey::compute("s", Some("r1".into()), &job(J), &["a".into(), "b".into()], base().declared);
        assert_eq!(tags_reordered.key, k, "tags are a set");
        let mut origin = job(J);
        origin.origin = "elsewhere".into();
        assert_eq!(InputKey::compute("s", Some("r1".into()), &origin, &["a".into(), "b".into()], base().declared).key, k);
        let others = [
            InputKey::compute("s2", Some("r1".into()), &job(J), &["a".into(), "b".into()], base().declared),
            InputKey::compute("s", Some("r2".into()), &job(J), &["a".into(), "b".into()], base().declared),
            InputKey::compute("s", Some("r1".into()), &job(&J.replace("quiet", "debug")), &["a".into(), "b".into()], base().declared),
            InputKey::compute("s", Some("r1".into()), &job(J), &["a".into()], base().declared),
            InputKey::compute(
                "s",
                Some("r1".into()),
                &job(J),
                &["a".into(), "b".into()],
                [("start/http/a".into(), Digest::of(b"y"))].into(),
            ),
        ];
        for o in others {
            assert_ne!(o.key, k, "{o:?}");
        }
    }

    #[test]
    fn declared_names_cover_both_steps_and_the_boot_files() {
        let j = job("deployment:\n  start:\n    kernel: {data: k}\n    storage:\n      tftp:\n        - {path: x/y, data: y}\n  continue:\n    initramfs: {data: i}\n");
        let names: Vec<String> = declared_files(&j).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["start/kernel", "start/tftp/x/y", "continue/kernel", "continue/initramfs", "continue/tftp/x/y"]);
    }
}
