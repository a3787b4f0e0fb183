//! Setting a DUT's job: rendered for the DUT (with its run, for a job with `results:`),
//! fetched into the cache, its disks attached, then recorded and activated; and the stored
//! jobs loaded again when a durable lab starts.

use std::path::Path;
use std::time::{Instant, SystemTime};

use super::files::Loader;
use super::jobs::ActiveJob;
use super::{DutRun, FetchFailures, Gateway, GatewayError, JobRecord, Load, LoadMark};
use crate::job::{JobDescription, JobErrors, Origin, RenderContext, ResolvedJob, SourceMap};
use crate::namespace::{Dut, DutId};

impl Gateway {
    /// Renders `job` for `dut`, fetches every artifact into the cache and makes it the DUT's
    /// active job (replacing any other). Counts as a `job_start`.
    pub async fn set_job(&self, id: &DutId, job: &JobDescription) -> Result<(), GatewayError> {
        self.set_job_with_roots(id, job, false).await
    }

    /// [`set_job`](Self::set_job) for a job read from a file given by the lab admin: its own
    /// directory is an allowed `file:` root too.
    pub async fn set_trusted_job(&self, id: &DutId, job: &JobDescription) -> Result<(), GatewayError> {
        self.set_job_with_roots(id, job, true).await
    }

    async fn set_job_with_roots(&self, id: &DutId, job: &JobDescription, trusted: bool) -> Result<(), GatewayError> {
        let dir = if trusted { job.origin().base_dir.clone() } else { None };
        let record = (Some(job.text().to_string()), job.origin().clone());
        self.render_and_set(id, dir.as_deref(), record, None, |ctx| job.render_with_sources(ctx)).await
    }

    /// [`set_job`](Self::set_job) from YAML text (the lab API): shape and render problems are
    /// reported together ([`JobDescription::check`]); `file:` sources may read only the lab's
    /// `artifact_roots`.
    pub async fn set_job_yaml(&self, id: &DutId, text: &str, origin: Origin) -> Result<(), GatewayError> {
        self.set_job_yaml_at(id, text, origin, None).await
    }

    /// [`set_job_yaml`](Self::set_job_yaml) with the revision its run records, over the job's
    /// `results.revision` (`PUT /api/v1/duts/{id}/job?revision=`).
    pub async fn set_job_yaml_at(&self, id: &DutId, text: &str, origin: Origin, revision: Option<String>) -> Result<(), GatewayError> {
        let record = (Some(text.to_string()), origin.clone());
        self.render_and_set(id, None, record, revision, |ctx| JobDescription::check_with_sources(text, origin.clone(), ctx)).await
    }

    /// [`set_trusted_job`](Self::set_trusted_job) from a job file the lab admin gave (`citron
    /// serve --job`), its shape and render problems reported together as by `citron validate`.
    pub async fn set_trusted_job_file(&self, id: &DutId, path: &Path) -> Result<(), GatewayError> {
        let origin = Origin::file(path);
        let text = JobDescription::read_text(path)?;
        let dir = origin.base_dir.clone();
        let record = (Some(text.clone()), origin.clone());
        self.render_and_set(id, dir.as_deref(), record, None, |ctx| JobDescription::check_with_sources(&text, origin.clone(), ctx)).await
    }

    /// The one way a job description becomes a DUT's job: rendered by `render` in the DUT's
    /// context (`job_dir` an extra `file:` root), with a new run if it has `results:` (its
    /// start; `revision` over its own), then loaded and recorded as `(yaml, origin)`.
    async fn render_and_set(
        &self,
        id: &DutId,
        job_dir: Option<&Path>,
        (yaml, origin): (Option<String>, Origin),
        revision: Option<String>,
        render: impl Fn(&RenderContext) -> Result<(ResolvedJob, SourceMap), JobErrors>,
    ) -> Result<(), GatewayError> {
        let dut = self.known(id)?;
        let (resolved, sources, run) = self.render_with_run(&dut, &self.render_context(&dut, job_dir), render, Load::New, revision).await?;
        let record = JobRecord { yaml, origin, set_at: SystemTime::now() };
        self.load_with_run(&dut, resolved, Some(&sources), record, Load::New, run).await
    }

    /// Loads every stored job again (a durable lab at start): each DUT with a recorded job
    /// renders it in its context (a job from a file the admin gave keeps its directory as a
    /// `file:` root), fetches it (from the cache, normally) and serves it with the counted reads
    /// of the [`LifetimeStore`] resumed, not reset: not a `job_start`. Returns, per DUT whose
    /// job could not be loaded again, why (it then has no job; its record is kept). DUTs in
    /// `skip` are left alone (`serve --job` is about to give them a new job).
    pub async fn restore_jobs(&self, skip: &[DutId]) -> Vec<(DutId, GatewayError)> {
        let mut failed = Vec::new();
        // Every DUT to load is marked before the first load: they load one after the other.
        let duts: Vec<(Dut, LoadMark)> = self
            .duts()
            .into_iter()
            .filter(|d| !skip.contains(&d.id) && self.inner.jobs.record(&d.id).is_some())
            .map(|d| {
                let mark = self.expect_job(&d.id);
                (d, mark)
            })
            .collect();
        for (dut, _mark) in duts {
            let Some(record) = self.inner.jobs.record(&dut.id) else { continue };
            let Some(text) = record.yaml.clone() else {
                tracing::warn!(dut = %dut.id, "its stored job was built in code (no YAML): not loaded again");
                continue;
            };
            let ctx = self.render_context(&dut, record.origin.base_dir.as_deref());
            let render = |ctx: &RenderContext| JobDescription::check_with_sources(&text, record.origin.clone(), ctx);
            let r = match self.render_with_run(&dut, &ctx, render, Load::Resume, None).await {
                Ok((resolved, sources, run)) => self.load_with_run(&dut, resolved, Some(&sources), record.clone(), Load::Resume, run).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(()) => tracing::info!(dut = %dut.id, "stored job loaded again"),
                Err(e) => failed.push((dut.id.clone(), e)),
            }
        }
        failed
    }

    /// Makes an already rendered job the DUT's active job: fetches its artifacts, replaces any
    /// other job. For tools that build jobs in code rather than YAML (its record has no YAML).
    pub async fn set_resolved_job(&self, id: &DutId, resolved: ResolvedJob) -> Result<(), GatewayError> {
        let dut = self.known(id)?;
        let record = JobRecord { yaml: None, origin: Origin::named(resolved.origin.clone()), set_at: SystemTime::now() };
        self.load_with_run(&dut, resolved, None, record, Load::New, None).await
    }

    /// Fetches, attaches the disks, then records and activates the job (a job serves only once
    /// it is recorded), with its counts from zero. Failed fetches are reported together, at
    /// their places in the job (`sources`); a job built in code has none, and its first failure
    /// is reported alone.
    pub(super) async fn load(
        &self,
        dut: &Dut,
        resolved: ResolvedJob,
        sources: Option<&SourceMap>,
        record: JobRecord,
        how: Load,
        run: Option<(DutRun, ResolvedJob)>,
    ) -> Result<(), GatewayError> {
        let _loading = self.expect_job(&dut.id);
        let now = Instant::now();
        let log = &self.inner.log;
        let loader = Loader {
            cache: &self.inner.cache,
            hits: &log.cache_hits,
            misses: &log.cache_misses,
            per_job: self.inner.lab.limits.downloads_per_job,
            runs: self.run_store(),
        };
        // `continue` is fetched even when `start` failed, so that its own failures are reported
        // in the same round (what it takes from `start` is not fetched again).
        let start = loader.step(dut, "start", &resolved.start, now, &[]).await;
        let failed: &[_] = start.as_ref().err().map_or(&[], Vec::as_slice);
        let cont = match &resolved.continue_ {
            Some(c) => Some(loader.step(dut, "continue", &c.over(&resolved.start), now, failed).await),
            None => None,
        };
        let (start, cont) = match (start, cont.transpose()) {
            (Ok(s), Ok(c)) => (s, c),
            (s, c) => {
                let failures: Vec<_> = s.err().into_iter().chain(c.err()).flatten().collect();
                return Err(match sources {
                    Some(map) => {
                        let errors = map.errors(&resolved.origin, &failures);
                        GatewayError::Fetches(FetchFailures { errors, causes: failures.into_iter().map(|(_, e)| e).collect() })
                    }
                    None => GatewayError::Fetch(failures.into_iter().next().expect("a failed step has failures").1),
                });
            }
        };
        let disks = match &resolved.continue_ {
            Some(c) => c.over(&resolved.start).nbd,
            None => resolved.start.nbd.clone(),
        };
        self.inner.disks.attach(&self.inner.cache, &self.lab().limits, &dut.id, &disks, matches!(how, Load::Resume)).await?;
        self.inner.load_times.observe(now.elapsed());
        tracing::info!(dut = %dut.id, job = %resolved.origin, seconds = now.elapsed().as_secs_f64(), "job loaded");
        // A run's key is computed now that every artifact is in the cache (no fetch happens).
        let (run, inputs) = match run {
            Some((run, probe)) => {
                let inputs = self.job_inputs(dut, &probe, run.revision.clone(), record.yaml.clone(), record.origin.base_dir.clone()).await;
                (Some(run), inputs)
            }
            None => (None, None),
        };
        let active = ActiveJob::new(resolved, start, cont, run, inputs);
        match how {
            Load::New => self.inner.lifetimes.reset(&dut.id)?,
            Load::Resume => active.resume_reads(|key| self.inner.lifetimes.reads(&dut.id, key)),
        }
        let before = self.inner.jobs.set(&dut.id, record, active)?;
        // A job replaced without its `job_end`: its run ends too, saying nothing of how.
        self.close_run_later(before);
        Ok(())
    }
}
