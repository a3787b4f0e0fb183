//! The runs of DUT jobs on the results store: [`Results`] is the core's [`RunStore`].
//!
//! A DUT's job with `results:` opens its run when it is set, the lab's own tenant's, with a
//! token for that run only (`upload` scope, claim `run`) kept in the run's row, so that a
//! restarted lab renders the job again with the same `{{ upload_token }}`; `job_end` closes it
//! and revokes the token. Files a DUT sends by its source address (HTTP `PUT`, TFTP write
//! requests) land through [`RunStore::write`], marked untokened.

use citron_core::gateway::{DutRun, RunFuture, RunInputs, RunStart, RunStore};
use citron_core::namespace::DutId;
use citron_core::serve::{ServeError, UploadAnswer, UploadBody, Written};
use citron_core::store::StoreError;
use citron_core::Digest;

use super::{check_path, Added, NewRun, Results, ResultsError, Status};
use crate::auth::{new_id, Claims, Pattern, Scope};

/// How long a DUT run's token lives at most (it is revoked when the run closes).
pub const DUT_RUN_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 86400);

impl RunStore for Results {
    fn open(&self, start: RunStart) -> RunFuture<DutRun> {
        let me = self.clone();
        Box::pin(async move {
            let job = start.job.clone();
            let revision = start.revision.clone();
            let new = NewRun { job: job.clone(), tenant: None, revision: start.revision, platform: start.platform, dut: Some(start.dut.0) };
            let run = me.runs().open(new).await?.map_err(|owner| {
                StoreError::backend(format!(
                    "job {job:?} belongs to tenant {:?}: a DUT's job may only use a name of the lab's own jobs; rename it",
                    owner.unwrap_or_default()
                ))
            })?;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
            let claims = Claims {
                sub: format!("run:{}", run.id),
                tenant: None,
                scope: vec![Scope::Upload],
                job: Pattern::parse(&job).map_err(StoreError::backend)?,
                run: Some(run.id),
                dut: None,
                duts: vec![],
                exp: now + DUT_RUN_TOKEN_TTL.as_secs(),
                iat: now,
                jti: new_id(),
            };
            let token = me.tokens().mint(&claims).await?;
            me.runs().set_token(run.id, &token).await?;
            Ok(DutRun { id: run.id, job, token, revision })
        })
    }

    fn current(&self, dut: &DutId) -> RunFuture<Option<DutRun>> {
        let (me, dut) = (self.clone(), dut.0.clone());
        Box::pin(
            async move { Ok(me.runs().open_of_dut(&dut).await?.map(|(id, job, token, revision)| DutRun { id, job, token, revision })) },
        )
    }

    fn close(&self, run: DutRun, status: String, inputs: Option<RunInputs>) -> RunFuture<()> {
        let me = self.clone();
        Box::pin(async move {
            // Recorded before the run finishes: a `run_finished` reader finds its key there.
            if let Some(i) = inputs {
                let doc = serde_json::json!({
                    "revision": i.key.revision,
                    "tags": i.key.tags,
                    "declared": i.key.declared.iter().map(|(k, v)| (k.clone(), v.hex())).collect::<std::collections::BTreeMap<_, _>>(),
                    "served": i.served.iter().map(|(k, v)| (k.clone(), v.hex())).collect::<std::collections::BTreeMap<_, _>>(),
                });
                let dir = i.job_dir.map(|d| d.display().to_string());
                me.runs().record_inputs(run.id, &i.key.key.hex(), &doc, i.yaml, dir).await?;
            }
            let status = Status::parse(&status).filter(|s| *s != Status::Running).unwrap_or(Status::Unknown);
            if let Some((_, Some(token))) = me.runs().finish(run.id, status).await? {
                me.revoke_run_token(&token).await?;
            }
            if let Err(e) = me.sweep(&run.job).await {
                tracing::warn!(job = %run.job, error = %e, "results: the retention sweep failed");
            }
            Ok(())
        })
    }

    fn result(&self, r: &citron_core::job::ResultRef) -> citron_core::gateway::ResultFuture {
        self.resolve(r)
    }

    fn write(&self, run: &DutRun, path: String, max: u64, mut body: UploadBody, answer: UploadAnswer) {
        let (me, id, job) = (self.clone(), run.id, run.job.clone());
        tokio::spawn(async move {
            let r = me.take_in(id, &path, max, &mut body).await;
            match &r {
                Ok(w) => tracing::info!(%job, run = id, %path, sha256 = %w.digest, bytes = w.len, "results: file uploaded by its DUT"),
                Err(e) => tracing::info!(%job, run = id, %path, error = %e, "results: a DUT's upload was refused"),
            }
            answer.send(r);
        });
    }
}

impl Results {
    /// Revokes a run's own token, as kept in its row.
    pub async fn revoke_run_token(&self, token: &str) -> Result<(), StoreError> {
        // An expired token cannot be used anyway; its id is all a revocation needs.
        if let Ok(c) = self.tokens().keys().verify(token) {
            self.tokens().revoke(&c.jti).await?;
        }
        Ok(())
    }

    /// One DUT upload into run `run`: streamed into a blob, then added untokened.
    async fn take_in(&self, run: i64, path: &str, max: u64, body: &mut UploadBody) -> Result<Written, ServeError> {
        check_path(path).map_err(|e| ServeError::Forbidden(e.to_string()))?;
        let stream = futures::stream::unfold(body, |b| async move { b.next().await.map(|x| (x, b)) });
        let stored = self.blobs().put(Box::pin(stream), max, None).await.map_err(serve_error)?;
        let sha = crate::auth::hex(&stored.sha256);
        match self.runs().add_file(run, path, &sha, stored.size, false).await.map_err(|e| ServeError::Io(std::io::Error::other(e)))? {
            Added::New | Added::Same => {}
            Added::Other(_) => return Err(ServeError::Exists(path.to_string())),
            Added::Closed => return Err(ServeError::Forbidden(format!("run {run} is over"))),
        }
        Ok(Written { name: path.to_string(), len: stored.size, digest: Digest(stored.sha256) })
    }
}

/// What the DUT's protocol is told of a results store's refusal.
fn serve_error(e: ResultsError) -> ServeError {
    match e {
        ResultsError::TooLarge(max) => ServeError::TooLarge { max },
        ResultsError::Full => ServeError::NoSpace("the results store is full".into()),
        ResultsError::BodyCut(m) => ServeError::Io(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, m)),
        e => ServeError::Io(std::io::Error::other(e.to_string())),
    }
}
