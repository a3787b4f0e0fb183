//! `container: docker://...` filesystem contents: the seam to a container registry.
//!
//! The core decides what a container disk is (keyed by the manifest digest its reference points
//! at now, so a moved tag makes a new base) and flattens the layers itself
//! ([`extract`](super::extract): whiteouts applied, no entry leaving the image's root). Speaking
//! the registry protocol is an [`ImageRegistry`]'s job, given to the cache with its
//! [`Fetchers`](crate::artifact::Fetchers) (`citron-fetch` implements it over the OCI
//! distribution API).

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::DiskError;

/// Resolves image references and pulls their layers.
///
/// Errors are [`DiskError::Container`] (naming the reference and what to check), or I/O errors
/// of the files written into the directory given to [`pull`](Self::pull).
#[async_trait]
pub trait ImageRegistry: Send + Sync {
    /// The digest (`sha256:...`) of the image manifest `reference` (`docker://...`) points at
    /// for this machine's OS and architecture: one or two small requests.
    async fn resolve(&self, reference: &str) -> Result<String, DiskError>;

    /// Pulls every layer of the manifest `digest` (from [`resolve`](Self::resolve)) of
    /// `reference`'s repository into `dir` (created if missing), each checked against its
    /// digest; returns the layer files, bottom first. Layers must be tar or tar+gzip.
    async fn pull(&self, reference: &str, digest: &str, dir: &Path) -> Result<Vec<PathBuf>, DiskError>;
}

/// The registry of `cache`'s fetchers, or an error saying container disks are unavailable.
pub(crate) fn registry<'c>(cache: &'c crate::artifact::Cache, reference: &str) -> Result<&'c dyn ImageRegistry, DiskError> {
    cache.fetchers().images().ok_or_else(|| DiskError::Container {
        reference: reference.to_string(),
        message: "this citron was started without a container registry client; use a tarball or an image instead".into(),
    })
}
