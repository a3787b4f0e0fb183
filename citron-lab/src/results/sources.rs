//! `result:` sources (issue 15 §8, closing the loop): a job boots what an earlier job produced.
//! The core asks the lab's results ([`RunStore::result`]) for the file a source names when the
//! job is loaded; the answer is the file's digest and a source of its blob, which the cache
//! reads and checks like any other artifact.
//!
//! Rules: the job must be one of the lab's own (a DUT's job, or runs the administrator's token
//! opened), never a tenant's: a job reaches DUTs through the lab, and a tenant's results are
//! that tenant's. The run is the newest successful one unless the source names `run:`. Only a
//! file uploaded with a token will do unless the source says `untokened: true` (a DUT's
//! source address can be forged).

use std::sync::Arc;

use citron_core::artifact::{ArtifactSource, FetchError, Sink};
use citron_core::gateway::ResultFuture;
use citron_core::job::ResultRef;
use citron_core::Digest;
use futures::StreamExt as _;

use super::{parse_sha256, BlobStore, Results, Status};

impl Results {
    /// What [`RunStore::result`](citron_core::gateway::RunStore::result) answers.
    pub(super) fn resolve(&self, r: &ResultRef) -> ResultFuture {
        let (me, r) = (self.clone(), r.clone());
        Box::pin(async move {
            let what = r.to_string();
            let fail = |message: String| FetchError::Result { what: what.clone(), message };
            let store = |e: citron_core::store::StoreError| fail(format!("the results store failed: {e}"));
            match me.runs().owner(&r.job).await.map_err(store)? {
                None => return Err(fail(format!("no run of job {:?} was ever opened; check the name", r.job))),
                Some(Some(_)) => {
                    return Err(fail(format!("job {:?} belongs to a tenant: a DUT's job reads the lab's own jobs' results only", r.job)))
                }
                Some(None) => {}
            }
            let run = match r.run {
                Some(id) => {
                    me.runs().get(&r.job, id).await.map_err(store)?.ok_or_else(|| fail(format!("job {:?} has no run {id}", r.job)))?
                }
                None => me
                    .runs()
                    .latest(&r.job, None, Some(Status::Success))
                    .await
                    .map_err(store)?
                    .ok_or_else(|| fail(format!("job {:?} has no successful run yet", r.job)))?,
            };
            if run.status == Status::Running {
                return Err(fail(format!("run {} is still running: its files may still change", run.id)));
            }
            let f = me
                .runs()
                .file(run.id, &r.path)
                .await
                .map_err(store)?
                .ok_or_else(|| fail(format!("run {} has no file {:?}", run.id, r.path)))?;
            if !f.tokened && !r.untokened {
                return Err(fail(format!(
                    "run {}'s {:?} came by a DUT's source address, not with a token; add `untokened: true` to the source to accept it",
                    run.id, r.path
                )));
            }
            let digest = Digest(parse_sha256(&f.sha256).map_err(|e| fail(e.to_string()))?);
            let src: Arc<dyn ArtifactSource> = Arc::new(ResultBlob { blobs: me.blobs().clone(), sha256: f.sha256, name: what.clone() });
            tracing::info!(source = %what, run = run.id, sha256 = %digest, "results: a job's result: source resolved");
            Ok((digest, src))
        })
    }
}

/// The bytes of a result blob, for the cache.
struct ResultBlob {
    blobs: BlobStore,
    sha256: String,
    name: String,
}

#[async_trait::async_trait]
impl ArtifactSource for ResultBlob {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn identity(&self) -> String {
        format!("result-blob:{}", self.sha256)
    }

    async fn fetch(&self, sink: &mut Sink<'_>) -> Result<(), FetchError> {
        let fail = |e: String| FetchError::Result { what: self.name.clone(), message: format!("its blob cannot be read: {e}") };
        let got = self.blobs.get(&self.sha256).await.map_err(|e| fail(e.to_string()))?;
        sink.set_total(Some(got.meta.size))?;
        let mut stream = got.into_stream();
        while let Some(chunk) = stream.next().await {
            sink.write(&chunk.map_err(|e| fail(e.to_string()))?).await?;
        }
        Ok(())
    }
}
