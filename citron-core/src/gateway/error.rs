//! [`GatewayError`]: why a call of the lab (API, CLI, Python) on the gateway failed.

use std::path::{Path, PathBuf};

use crate::artifact::FetchError;
use crate::block::DiskError;
use crate::datadir::DataDirError;
use crate::job::JobErrors;
use crate::namespace::{DutId, RegistryError};
use crate::store::StoreError;

/// Why a gateway call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// No such DUT.
    #[error("no DUT '{0}'; list them with GET /api/v1/duts or add it to the lab file")]
    UnknownDut(DutId),
    /// The DUT could not be registered.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The job description is invalid.
    #[error("{0}")]
    Job(#[from] JobErrors),
    /// An artifact could not be fetched.
    #[error("{0}")]
    Fetch(#[from] FetchError),
    /// Artifacts of a job description could not be fetched: every failure, each at the `url:`
    /// or `file:` that names it (`file:line:col: field: cannot fetch it: ...`, one per line).
    #[error("{0}")]
    Fetches(FetchFailures),
    /// A job's disk could not be prepared.
    #[error("{0}")]
    Disk(#[from] DiskError),
    /// A job with `results:` on a lab that keeps no results (no state store).
    #[error("this lab keeps no results, so a job with `results:` cannot run here: results need `citron serve` (its state store)")]
    NoResults,
    /// The lab's state store failed; nothing was changed.
    #[error(transparent)]
    Store(StoreError),
    /// The data directory is held by another citron, or cannot be created.
    #[error(transparent)]
    DataDirLock(#[from] DataDirError),
    /// The data directory is inside an artifact root, so a job's `file:` source could read the
    /// cache and disks of every other job.
    #[error("data directory {data} and artifact root {root} overlap: a job's `file:` source could read the cache and disks of other jobs; put --data outside every `artifact_roots` entry")]
    DataDirInRoot {
        /// The data directory.
        data: PathBuf,
        /// The root that contains it.
        root: PathBuf,
    },
    /// The data directory is unusable.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Every failed fetch of a job: positioned like the job's other problems, and the fetch errors
/// themselves (for their kind: a full cache is not the job's fault).
#[derive(Debug, thiserror::Error)]
#[error("{errors}")]
pub struct FetchFailures {
    /// One per place a failed source is written, in document order.
    pub errors: JobErrors,
    /// One per failed source.
    pub causes: Vec<FetchError>,
}

impl FetchFailures {
    /// Whether citron's own storage is what failed (no space for the downloads), rather than a
    /// source.
    pub fn storage_full(&self) -> bool {
        self.causes.iter().any(|c| matches!(c, FetchError::DiskFull { .. } | FetchError::CacheFull { .. }))
    }
}

impl From<StoreError> for GatewayError {
    /// A registry refusal stays [`GatewayError::Registry`] (the API answers it 409), whichever
    /// store found it.
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Registry(r) => GatewayError::Registry(r),
            other => GatewayError::Store(other),
        }
    }
}

/// Refuses a data directory inside (or equal to, or containing) an artifact root.
pub(super) fn refuse_data_dir_in_roots(data_dir: &Path, roots: &[PathBuf]) -> Result<(), GatewayError> {
    let Ok(data) = data_dir.canonicalize() else { return Ok(()) };
    for root in roots {
        let Ok(r) = root.canonicalize() else { continue };
        if data.starts_with(&r) || r.starts_with(&data) {
            return Err(GatewayError::DataDirInRoot { data: data_dir.to_path_buf(), root: root.clone() });
        }
    }
    Ok(())
}
