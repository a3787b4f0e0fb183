//! Runs of DUT jobs: a job with `results:` sends results back, into a run opened when the job
//! starts and closed when it ends.
//!
//! The gateway decides when (a job with `results:` is set: that is its start; `job_end` closes
//! it; a restart keeps the open run) and which DUT may write where (its own run, under
//! `_citron/results/`); where runs and files are kept is the lab's business, behind
//! [`RunStore`] (the results store of `citron_lab`). A gateway with no run store refuses jobs
//! with `results:`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::inputs::RunInputs;
use super::jobs::ActiveJob;
use super::{Gateway, GatewayError, JobRecord, Load};
use crate::artifact::{ArtifactSource, FetchError};
use crate::digest::Digest;
use crate::job::{JobErrors, RenderContext, ResolvedJob, ResultRef, SourceMap};
use crate::namespace::{normalize, Dut, DutId};
use crate::serve::{ServeError, Upload, UploadAnswer, UploadBody, WriteRequest};
use crate::store::StoreError;

/// What a new run of a DUT's job records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunStart {
    /// The DUT it runs on.
    pub dut: DutId,
    /// The job's `name:`.
    pub job: String,
    /// `results.revision` (or the `?revision=` of the request that set the job).
    pub revision: Option<String>,
    /// `results.platform`.
    pub platform: Option<String>,
}

/// An open run of a DUT's job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DutRun {
    /// The run's id.
    pub id: i64,
    /// The job's name.
    pub job: String,
    /// Its own upload token (`upload` scope for this run only), revoked when it closes.
    pub token: String,
    /// The revision it is of (what its input key holds).
    pub revision: Option<String>,
}

/// What a [`RunStore`] call gives, when it is done.
pub type RunFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'static>>;

/// What a `result:` source resolves to, when it is done: the file's digest and where its
/// bytes are read from.
pub type ResultFuture = Pin<Box<dyn Future<Output = Result<(Digest, Arc<dyn ArtifactSource>), FetchError>> + Send + 'static>>;

/// Where DUT runs are kept and their files go. Its calls are futures (unlike the other stores):
/// they are made where the gateway awaits anyway (a job being set, the API's `job_end`), never
/// on the serving path.
pub trait RunStore: Send + Sync + 'static {
    /// Opens a run and mints its token; durable when the future completes.
    fn open(&self, start: RunStart) -> RunFuture<DutRun>;
    /// The DUT's open run, if it has one (a lab loading its jobs again after a restart).
    fn current(&self, dut: &DutId) -> RunFuture<Option<DutRun>>;
    /// Closes the run with `status` (`success`, `failure` or `unknown`) and revokes its token;
    /// with `inputs` (its input key, what it declared and what its DUT read, its job's text),
    /// recorded with it, for `citron results find`. `None`: the job never loaded, or its key
    /// could not be computed.
    fn close(&self, run: DutRun, status: String, inputs: Option<RunInputs>) -> RunFuture<()>;
    /// Takes in the file `path` of `run`: reads `body` to its end, keeps the file only if the
    /// body ended cleanly and within `max` bytes, and answers on `answer` once it is durable
    /// and visible. Marked untokened: it came by source address.
    fn write(&self, run: &DutRun, path: String, max: u64, body: UploadBody, answer: UploadAnswer);
    /// The file a job's `result:` source names (`r.job`'s newest successful run, or `r.run`;
    /// a tokened file unless `r.untokened`), when a job is loaded: its digest and a source of
    /// its bytes, which the cache then checks. [`FetchError::Result`] says why there is none.
    fn result(&self, r: &ResultRef) -> ResultFuture;
}

/// Where a DUT's uploads go in its namespace: `_citron/results/<path in the run>`.
pub const RESULTS_PREFIX: &str = "_citron/results/";

impl Gateway {
    /// Where runs of jobs with `results:` are kept: set before jobs are loaded (a lab without
    /// one refuses such jobs).
    pub fn set_run_store(&self, store: Arc<dyn RunStore>) {
        *self.inner.runs.write() = Some(store);
    }

    pub(super) fn run_store(&self) -> Option<Arc<dyn RunStore>> {
        self.inner.runs.read().clone()
    }

    /// The DUT's open run, if its job has one.
    pub fn current_run(&self, id: &DutId) -> Option<DutRun> {
        self.inner.jobs.active(id).and_then(|j| j.run.lock().clone())
    }

    /// Renders a job with `render` in `ctx`; one with `results:` gets its run first (a new one,
    /// or with [`Load::Resume`] the DUT's open one if it has one) and renders with its
    /// variables. The run is closed again if the job then fails to render. With the run comes
    /// the job as rendered with the run variables' stand-ins, which its input key is made of.
    pub(super) async fn render_with_run(
        &self,
        dut: &Dut,
        ctx: &RenderContext,
        render: impl Fn(&RenderContext) -> Result<(ResolvedJob, SourceMap), JobErrors>,
        how: Load,
        revision: Option<String>,
    ) -> Result<(ResolvedJob, SourceMap, Option<(DutRun, ResolvedJob)>), GatewayError> {
        // With the run's stand-ins: every problem of the job, and whether it has `results:`.
        let (probe, sources) = render(ctx)?;
        let (Some(spec), Some(name)) = (&probe.results, &probe.name) else { return Ok((probe, sources, None)) };
        let store = self.run_store().ok_or(GatewayError::NoResults)?;
        let resumed = match how {
            Load::Resume => store.current(&dut.id).await?.filter(|r| &r.job == name),
            Load::New => None,
        };
        let run = match resumed {
            Some(run) => run,
            None => {
                let start = RunStart {
                    dut: dut.id.clone(),
                    job: name.clone(),
                    revision: revision.or_else(|| spec.revision.clone()),
                    platform: spec.platform.clone(),
                };
                let run = store.open(start).await?;
                tracing::info!(dut = %dut.id, job = %run.job, run = run.id, "results: run opened");
                run
            }
        };
        let mut ctx = ctx.clone();
        ctx.vars.insert("upload_token".into(), run.token.clone());
        ctx.vars.insert("run_id".into(), run.id.to_string());
        match render(&ctx) {
            Ok((job, sources)) => Ok((job, sources, Some((run, probe)))),
            Err(e) => {
                self.close_run(run, UNKNOWN, None).await;
                Err(e.into())
            }
        }
    }

    /// [`load`](Gateway::load) with the job's run, closed again if the load fails.
    pub(super) async fn load_with_run(
        &self,
        dut: &Dut,
        resolved: ResolvedJob,
        sources: Option<&SourceMap>,
        record: JobRecord,
        how: Load,
        run: Option<(DutRun, ResolvedJob)>,
    ) -> Result<(), GatewayError> {
        let closing = run.as_ref().map(|(r, _)| r.clone());
        let r = self.load(dut, resolved, sources, record, how, run).await;
        if let (Err(_), Some(run)) = (&r, closing) {
            self.close_run(run, UNKNOWN, None).await;
        }
        r
    }

    /// Closes the DUT's open run with `status` (`success`, `failure`, `unknown`) and revokes
    /// its token, before answering: the API's `job_end`. Answers the run closed, if there was
    /// one. The job itself stays until the event unloads it.
    pub async fn end_run(&self, id: &DutId, status: &str) -> Result<Option<DutRun>, GatewayError> {
        self.known(id)?;
        let Some(job) = self.inner.jobs.active(id) else { return Ok(None) };
        let Some(run) = job.run.lock().take() else { return Ok(None) };
        let Some(store) = self.run_store() else { return Ok(None) };
        store.close(run.clone(), status.to_string(), job.inputs.as_ref().map(|i| i.snapshot())).await?;
        tracing::info!(dut = %id, job = %run.job, run = run.id, status, "results: run closed");
        Ok(Some(run))
    }

    async fn close_run(&self, run: DutRun, status: &str, inputs: Option<RunInputs>) {
        let Some(store) = self.run_store() else { return };
        if let Err(e) = store.close(run.clone(), status.to_string(), inputs).await {
            tracing::error!(job = %run.job, run = run.id, error = %e, "results: a run could not be closed");
        }
    }

    /// Closes the run of a job that is going (replaced, dropped, its DUT removed) in the
    /// background, as `unknown`: the callers are synchronous.
    pub(super) fn close_run_later(&self, job: Option<Arc<ActiveJob>>) {
        let Some(job) = job else { return };
        let Some(run) = job.run.lock().take() else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let (gw, inputs) = (self.clone(), job.inputs.as_ref().map(|i| i.snapshot()));
        rt.spawn(async move { gw.close_run(run, UNKNOWN, inputs).await });
    }

    /// [`Catalog::write`]: the DUT by its address, the name under `_citron/results/` of its
    /// namespace, its job's open run, the job's `max_size`; every refusal logged.
    pub(super) fn upload(&self, req: &WriteRequest<'_>) -> Result<Upload, ServeError> {
        let log = &self.inner.log;
        let Some(dut) = self.inner.duts.by_addr(req.peer) else {
            log.refuse(req.peer, None, req.protocol, req.path, "upload from an unknown DUT");
            return Err(ServeError::UnknownDut(req.peer));
        };
        let refuse = |e: ServeError| {
            log.refuse(req.peer, Some(&dut.id), req.protocol, req.path, format!("upload refused: {e}"));
            e
        };
        let path = normalize(req.path).map_err(|e| refuse(e.into()))?;
        let Some(name) = path.strip_prefix(RESULTS_PREFIX).filter(|n| !n.is_empty()) else {
            return Err(refuse(ServeError::Forbidden(format!("{path}: uploads go under /{RESULTS_PREFIX}"))));
        };
        let job = self.inner.jobs.active(&dut.id);
        let (run, max) = match job.as_ref().map(|j| (j.run.lock().clone(), j.job.results.as_ref().map(|r| r.max_size))) {
            Some((Some(run), Some(max))) => (run, max),
            _ => {
                return Err(refuse(ServeError::Forbidden(format!(
                    "{path}: the DUT's job takes no results (no `results:`, or its run is over)"
                ))))
            }
        };
        if req.size.is_some_and(|s| s > max) {
            return Err(refuse(ServeError::TooLarge { max }));
        }
        let store = self.run_store().ok_or_else(|| refuse(ServeError::Forbidden("this lab keeps no results".into())))?;
        let ticket = log.ticket(req.peer, dut.id.clone(), req.protocol, req.path);
        let (up, body, answer) = Upload::channel(name.to_string(), max, ticket);
        store.write(&run, name.to_string(), max, body, answer);
        Ok(up)
    }
}

/// The status of a run nobody said how it ended.
const UNKNOWN: &str = "unknown";

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bytes::Bytes;
    use parking_lot::Mutex;

    use super::*;
    use crate::job::Origin;
    use crate::lab::LabConfig;
    use crate::serve::{Catalog, FileRequest, Intent, Protocol, Space, Written};

    /// Runs in memory: what a [`RunStore`] is asked, kept for the test to look at.
    #[derive(Default)]
    struct MemRuns {
        runs: Mutex<Vec<(DutRun, DutId, Option<String>)>>,
        files: Mutex<HashMap<(i64, String), Vec<u8>>>,
        inputs: Mutex<HashMap<i64, RunInputs>>,
    }

    impl RunStore for Arc<MemRuns> {
        fn open(&self, s: RunStart) -> RunFuture<DutRun> {
            let mut runs = self.runs.lock();
            let id = runs.len() as i64 + 1;
            let run = DutRun { id, job: s.job, token: format!("tok-{id}"), revision: s.revision };
            runs.push((run.clone(), s.dut, None));
            Box::pin(async move { Ok(run) })
        }
        fn current(&self, dut: &DutId) -> RunFuture<Option<DutRun>> {
            let r = self.runs.lock().iter().rev().find(|(_, d, st)| d == dut && st.is_none()).map(|(r, _, _)| r.clone());
            Box::pin(async move { Ok(r) })
        }
        fn close(&self, run: DutRun, status: String, inputs: Option<RunInputs>) -> RunFuture<()> {
            if let Some(i) = inputs {
                self.inputs.lock().insert(run.id, i);
            }
            if let Some(r) = self.runs.lock().iter_mut().find(|(r, _, _)| r.id == run.id) {
                r.2 = Some(status);
            }
            Box::pin(async { Ok(()) })
        }
        fn result(&self, r: &ResultRef) -> ResultFuture {
            let found = self.files.lock().iter().find(|((_, p), _)| *p == r.path).map(|(_, b)| b.clone());
            let what = r.to_string();
            Box::pin(async move {
                let b = found.ok_or(FetchError::Result { what, message: "no such file".into() })?;
                let src: Arc<dyn ArtifactSource> = Arc::new(crate::artifact::DataSource::new(Bytes::from(b.clone())));
                Ok((Digest::of(&b), src))
            })
        }
        fn write(&self, run: &DutRun, path: String, _max: u64, mut body: UploadBody, answer: UploadAnswer) {
            let (me, id) = (self.clone(), run.id);
            tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(piece) = body.next().await {
                    match piece {
                        Ok(b) => got.extend_from_slice(&b),
                        Err(e) => return answer.send(Err(ServeError::Io(e))),
                    }
                }
                let w = Written { name: path.clone(), len: got.len() as u64, digest: Digest::of(&got) };
                me.files.lock().insert((id, path), got);
                answer.send(Ok(w));
            });
        }
    }

    const JOB: &str = "name: j\nresults: {max_size: 10}\ndeployment:\n  start:\n    storage:\n      http:\n        - path: /env\n          data: '{{ upload_token }} {{ run_id }} {{ job_name }}'\n";

    fn wreq(peer: &str, path: &str, size: Option<u64>) -> WriteRequest<'static> {
        WriteRequest { peer: peer.parse().unwrap(), protocol: Protocol::HTTP, path: Box::leak(path.to_string().into_boxed_str()), size }
    }

    #[tokio::test]
    async fn a_job_with_results_gets_a_run_and_only_its_dut_writes_into_it() {
        let dir = tempfile::tempdir().unwrap();
        let gw = Gateway::new(LabConfig::default_lab(), dir.path()).unwrap();
        let d1 = DutId::from("dut1");
        assert!(matches!(gw.set_job_yaml(&d1, JOB, Origin::named("api")).await, Err(GatewayError::NoResults)));
        let mem = Arc::new(MemRuns::default());
        gw.set_run_store(Arc::new(mem.clone()));
        gw.set_job_yaml(&d1, JOB, Origin::named("api")).await.unwrap();
        let env = FileRequest {
            peer: "127.0.0.2".parse().unwrap(),
            protocol: Protocol::HTTP,
            space: Space::HTTP,
            path: "/env",
            base_url: None,
            intent: Intent::Read,
            range: None,
        };
        let a = gw.open(&env).unwrap();
        assert_eq!(a.read_chunk(0, 100).unwrap(), Bytes::from_static(b"tok-1 1 j"));
        assert_eq!(gw.current_run(&d1).map(|r| r.id), Some(1));

        let mut up = gw.write(&wreq("127.0.0.2", "/_citron/results/logs/a", None)).unwrap();
        up.write(Bytes::from_static(b"hello")).await.unwrap();
        assert_eq!(up.finish().await.unwrap().len, 5);
        assert_eq!(mem.files.lock()[&(1, "logs/a".to_string())], b"hello");
        // Refused: another DUT, outside _citron/results, `..`, over max_size (announced or streamed).
        assert!(matches!(gw.write(&wreq("127.0.0.3", "_citron/results/a", None)), Err(ServeError::Forbidden(_))));
        assert!(matches!(gw.write(&wreq("127.0.0.9", "_citron/results/a", None)), Err(ServeError::UnknownDut(_))));
        assert!(matches!(gw.write(&wreq("127.0.0.2", "env", None)), Err(ServeError::Forbidden(_))));
        assert!(matches!(gw.write(&wreq("127.0.0.2", "_citron/results/", None)), Err(ServeError::Forbidden(_))));
        assert!(matches!(gw.write(&wreq("127.0.0.2", "_citron/results/../x", None)), Err(ServeError::BadPath(_))));
        assert!(matches!(gw.write(&wreq("127.0.0.2", "_citron/results/b", Some(11))), Err(ServeError::TooLarge { max: 10 })));
        let mut up = gw.write(&wreq("127.0.0.2", "_citron/results/b", None)).unwrap();
        assert!(matches!(up.write(Bytes::from_static(b"0123456789x")).await, Err(ServeError::TooLarge { .. })));
        drop(up);

        // job_end closes the run with its status; the job takes no more uploads.
        assert_eq!(gw.end_run(&d1, "success").await.unwrap().map(|r| r.id), Some(1));
        assert_eq!(mem.runs.lock()[0].2.as_deref(), Some("success"));
        assert!(matches!(gw.write(&wreq("127.0.0.2", "_citron/results/c", None)), Err(ServeError::Forbidden(_))));
        // A new job is a new run; replacing it closes the old one as unknown.
        gw.set_job_yaml(&d1, JOB, Origin::named("api")).await.unwrap();
        gw.set_job_yaml(&d1, JOB, Origin::named("api")).await.unwrap();
        tokio::task::yield_now().await;
        let statuses: Vec<Option<String>> = mem.runs.lock().iter().map(|r| r.2.clone()).collect();
        assert_eq!(statuses, [Some("success".into()), Some("unknown".into()), None]);
        assert!(!mem.files.lock().contains_key(&(1, "b".to_string())), "an upload dropped midway keeps nothing");
    }

    #[tokio::test]
    async fn a_run_records_its_key_what_its_dut_read_and_find_computes_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let gw = Gateway::new(LabConfig::default_lab(), dir.path()).unwrap();
        let mem = Arc::new(MemRuns::default());
        gw.set_run_store(Arc::new(mem.clone()));
        let d1 = DutId::from("dut1");
        let job = format!("{JOB}        - path: /other\n          data: other\n");
        let read = |path: &'static str| {
            let r = FileRequest {
                peer: "127.0.0.2".parse().unwrap(),
                protocol: Protocol::HTTP,
                space: Space::HTTP,
                path,
                base_url: None,
                intent: Intent::Read,
                range: None,
            };
            gw.open(&r).unwrap();
        };
        for status in ["success", "failure"] {
            gw.set_job_yaml_at(&d1, &job, Origin::named("api"), Some("r1".into())).await.unwrap();
            read("/env");
            gw.end_run(&d1, status).await.unwrap();
        }
        let (a, b) = {
            let inputs = mem.inputs.lock();
            (inputs[&1].clone(), inputs[&2].clone())
        };
        assert_eq!(a.key, b.key, "two runs of one job, revision and DUT have one key, whatever their tokens");
        assert_eq!(a.key.revision.as_deref(), Some("r1"));
        assert_eq!(a.key.declared.keys().collect::<Vec<_>>(), ["start/http/env", "start/http/other"]);
        assert_eq!(a.served.keys().collect::<Vec<_>>(), ["start/http/env"], "only what the DUT read");
        assert_eq!(a.served["start/http/env"], Digest::of(b"tok-1 1 j"), "the digest of what was served");
        assert_eq!(a.yaml.as_deref(), Some(job.as_str()));
        let found = gw.input_key(&d1, &job, None, Some("r1".into())).await.unwrap();
        assert_eq!(found, a.key);
        assert_ne!(gw.input_key(&d1, &job, None, Some("r2".into())).await.unwrap().key, a.key.key);
        assert_ne!(gw.input_key(&d1, &job.replace("data: other", "data: changed"), None, Some("r1".into())).await.unwrap().key, a.key.key);
    }
}
