//! Results: what runs of a job send back (files, console, status), kept so that others find
//! the newest one, compare its digest and fetch it.
//!
//! A **run** is one execution of a **job** (a name: `kernel-build`), opened by a CI builder with
//! an `upload` token (`POST /api/v1/results/{job}/runs`), filled with files
//! (`PUT …/files/{path}`, streamed, checked against `X-Checksum-SHA256`) and a console
//! (`PUT …/console?offset=N`), then finished (`POST …/finish`). Readers with a `read` token ask
//! for the newest successful run (`…/latest`), which answers a redirect to an immutable,
//! content-addressed blob (`/api/v1/results/blobs/sha256/{hex}`).
//!
//! A job belongs to the tenant whose token opened its first run (the lab's own for the
//! administrator's and the DUTs' runs): a token of another tenant never reads or writes it,
//! whatever its job pattern says.
//!
//! - `runs.rs`: runs, files, consoles in the state store ([`Run`], [`ResultFile`]).
//! - `blob.rs`: file contents by SHA-256 behind `object_store` ([`BlobStore`]).
//! - `retention.rs`: which runs lose their files, which blobs go ([`Retention`]).
//! - `latest.rs`: the `latest` cache, dropped per job when a run of it finishes (here, or on
//!   another gateway as the feed says).
//! - `replay.rs`: runs by input key, for replay by revision ([`Found`]).
//! - `sources.rs`: `result:` sources, a job booting what an earlier run uploaded.
//! - `dut_runs.rs`: the runs of DUT jobs with `results:` and what DUTs upload into them
//!   (the core's `RunStore`).

mod blob;
mod dut_runs;
mod latest;
mod replay;
mod retention;
mod runs;
mod sources;

use std::path::Path;
use std::sync::Arc;

use crate::auth::{Principal, Scope, TokenStore};
use crate::state::State;

pub use blob::{BlobStore, Stored};
pub use dut_runs::DUT_RUN_TOKEN_TTL;
pub use replay::{is_flaky, Found, RecordedJob, KEYED_RUNS_MAX};
pub use retention::{expired, Finished, Retention, Sweeper};
pub use runs::{Added, Appended, NewRun, ResultFile, Run, Runs, Status, EVENT_FILES_MAX};

/// The directory under `--data` the default blob store uses.
pub const RESULTS_DIR: &str = "results";

/// The largest file one upload may bring, unless the lab says otherwise.
pub const FILE_MAX_BYTES: u64 = 16 << 30;
/// The longest console a run may have.
pub const CONSOLE_MAX_BYTES: u64 = 64 << 20;
/// The longest path of a file in a run.
pub const PATH_MAX_BYTES: usize = 1024;

/// Why a results request failed, and so its status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResultsError {
    /// A bad name, path or query (400).
    #[error("{0}")]
    Bad(String),
    /// No such job, run, file or blob, or none this token may see (404).
    #[error("{0}")]
    NotFound(String),
    /// The token may not do this (403).
    #[error("{0}")]
    Forbidden(String),
    /// The run is finished, or the path holds other content (409).
    #[error("{0}")]
    Conflict(String),
    /// The content's SHA-256 is not the one sent in `X-Checksum-SHA256` (400): nothing kept.
    #[error("the content's SHA-256 is {got}, not {sent} as X-Checksum-SHA256 says: nothing was kept; send the file again")]
    ChecksumMismatch {
        /// What the client sent.
        sent: String,
        /// What arrived.
        got: String,
    },
    /// Over the size bound (413).
    #[error("the file is larger than {0} bytes, the most one upload may bring: nothing was kept")]
    TooLarge(u64),
    /// The client went away mid-body: nothing was kept.
    #[error("the upload was cut off ({0}): nothing was kept")]
    BodyCut(String),
    /// The results store is full (507).
    #[error("the results store is full: nothing was kept; free space or set a retention")]
    Full,
    /// The results store failed (500).
    #[error("the results store failed: {0}")]
    Io(String),
    /// The state store failed (500).
    #[error(transparent)]
    Store(#[from] citron_core::store::StoreError),
}

impl ResultsError {
    /// The HTTP status it answers.
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            ResultsError::Bad(_) | ResultsError::ChecksumMismatch { .. } | ResultsError::BodyCut(_) => S::BAD_REQUEST,
            ResultsError::NotFound(_) => S::NOT_FOUND,
            ResultsError::Forbidden(_) => S::FORBIDDEN,
            ResultsError::Conflict(_) => S::CONFLICT,
            ResultsError::TooLarge(_) => S::PAYLOAD_TOO_LARGE,
            ResultsError::Full => S::INSUFFICIENT_STORAGE,
            ResultsError::Io(_) | ResultsError::Store(_) => S::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The results of a lab: its runs (state store), blobs and the token store the run tokens
/// come from.
#[derive(Debug, Clone)]
pub struct Results {
    runs: Runs,
    blobs: BlobStore,
    tokens: Arc<TokenStore>,
    sweeper: Sweeper,
    file_max_bytes: u64,
}

impl Results {
    /// The results of the lab whose state is `state`, blobs under `<data_dir>/results`. Loads
    /// (or, on a new state, generates) the signing key.
    pub fn open(state: &State, data_dir: &Path) -> Result<Results, ResultsError> {
        let tokens = Arc::new(TokenStore::open(state.db().clone())?);
        Ok(Results {
            runs: Runs::new(state.db().clone()).with_feed(state.feed().clone()),
            blobs: BlobStore::local(data_dir.join(RESULTS_DIR))?,
            tokens,
            sweeper: Sweeper::new(state.db().clone()),
            file_max_bytes: FILE_MAX_BYTES,
        })
    }

    /// Blobs in `store` instead (the lab's shared store).
    pub fn with_blobs(mut self, blobs: BlobStore) -> Results {
        self.blobs = blobs;
        self
    }

    /// Blobs in the lab's shared store (`store:` in the lab file), under
    /// [`citron_core::artifact::RESULTS_PREFIX`] beside the cache's `inputs/`: every gateway on
    /// the same store serves what any of them took in.
    pub fn with_shared_store(self, config: &citron_core::artifact::StoreConfig) -> Result<Results, ResultsError> {
        let shared = citron_fetch::SharedStore::from_config(config).map_err(|e| ResultsError::Io(e.to_string()))?;
        let prefix = citron_core::artifact::RESULTS_PREFIX.trim_end_matches('/');
        let store: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::prefix::PrefixStore::new(shared.object_store(), prefix));
        Ok(self.with_blobs(BlobStore::new(store)))
    }

    /// At most `bytes` per uploaded file.
    pub fn with_file_max_bytes(mut self, bytes: u64) -> Results {
        self.file_max_bytes = bytes;
        self
    }

    /// The token store.
    pub fn tokens(&self) -> &Arc<TokenStore> {
        &self.tokens
    }

    /// The runs.
    pub fn runs(&self) -> &Runs {
        &self.runs
    }

    /// The blobs.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// The most one upload may bring.
    pub fn file_max_bytes(&self) -> u64 {
        self.file_max_bytes
    }

    /// Whether `p` may do `scope` on `job` (and `run`, if one is named): the scope, the job
    /// pattern, the run of a run token, and the job's tenant. A job of another tenant is "not
    /// found" to a reader (its name tells nothing), forbidden to an uploader.
    pub async fn allow(&self, p: &Principal, scope: Scope, job: &str, run: Option<i64>) -> Result<(), ResultsError> {
        crate::auth::check_name("job", job).map_err(ResultsError::Bad)?;
        let Principal::Token(c) = p else { return Ok(()) };
        if c.has(Scope::Admin) {
            return Ok(());
        }
        if !c.has(scope) {
            return Err(ResultsError::Forbidden(format!("the token has no `{}` scope", scope.name())));
        }
        if !c.job.matches(job) {
            return Err(ResultsError::Forbidden(format!("the token is for jobs {:?}, not {job:?}", c.job.as_str())));
        }
        if let Some(mine) = c.run {
            if run != Some(mine) {
                return Err(ResultsError::Forbidden(format!("the token is for run {mine} only")));
            }
        }
        // To a reader, a job of another tenant and no job at all look the same.
        match (self.runs.owner(job).await?, scope) {
            (Some(owner), _) if owner == c.tenant => Ok(()),
            (_, Scope::Read) => Err(ResultsError::NotFound(format!("no job {job:?}"))),
            (None, _) => Ok(()),
            (Some(_), _) => Err(ResultsError::Forbidden(format!("job {job:?} belongs to another tenant"))),
        }
    }

    /// The retention side.
    pub fn sweeper(&self) -> &Sweeper {
        &self.sweeper
    }

    /// Applies `job`'s retention: the files of its expired runs go, and the blobs no file
    /// refers to any more. Answers how many blobs went.
    pub async fn sweep(&self, job: &str) -> Result<usize, ResultsError> {
        let gone = self.sweeper.expire(job).await?;
        for h in &gone {
            self.blobs.delete(h).await?;
        }
        if !gone.is_empty() {
            tracing::info!(%job, blobs = gone.len(), "results: retention removed the files of expired runs");
        }
        Ok(gone.len())
    }

    /// [`sweep`](Self::sweep) of every job with a retention (a timer calls this, for TTLs).
    pub async fn sweep_all(&self) -> Result<(), ResultsError> {
        for job in self.sweeper.jobs().await? {
            self.sweep(&job).await?;
        }
        Ok(())
    }

    /// Removes what interrupted uploads left (at start).
    pub async fn clean(&self) {
        self.blobs.clean_staging().await;
    }
}

/// Checks a file's path in a run: relative, `/`-separated, no empty, `.` or `..` segment, no
/// NUL or backslash, at most [`PATH_MAX_BYTES`].
pub fn check_path(path: &str) -> Result<(), ResultsError> {
    let bad = |why: &str| {
        Err(ResultsError::Bad(format!(
            "the file path {:?} {why}: give a relative path like images/kernel",
            citron_core::access::truncate_logged(path, 128)
        )))
    };
    if path.is_empty() || path.len() > PATH_MAX_BYTES {
        return bad(&format!("must have 1 to {PATH_MAX_BYTES} bytes"));
    }
    if path.starts_with('/') {
        return bad("is absolute");
    }
    if path.bytes().any(|b| b == 0 || b == b'\\' || b.is_ascii_control()) {
        return bad("has a NUL, control character or backslash");
    }
    if path.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return bad("has an empty, '.' or '..' segment");
    }
    Ok(())
}

/// A digest given as 64 hex digits.
pub fn parse_sha256(s: &str) -> Result<[u8; 32], ResultsError> {
    crate::auth::unhex(s.trim())
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
        .ok_or_else(|| ResultsError::Bad(format!("{:?} is not a SHA-256: give 64 hex digits", citron_core::access::truncate_logged(s, 80))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        for ok in ["kernel", "images/kernel.img", "a/b/c-1_2.txt", "..a/b.."] {
            assert!(check_path(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/etc/passwd", "../x", "a/../b", "a//b", "./a", "a/", "a\0b", "a\\b", "a\nb", &"x".repeat(1025)] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
        assert!(parse_sha256(&"ab".repeat(32)).is_ok());
        assert!(parse_sha256("abc").is_err());
        assert!(parse_sha256(&"zz".repeat(32)).is_err());
    }
}
