//! Artifact sources and the content-addressed cache they fill.
//!
//! A job names its artifacts by source (`data:`, `file:`, `url:` with http, https or s3). When a
//! job is loaded every source is fetched into the [`Cache`], keyed by sha256, so that serving
//! never touches the network and a hundred DUTs asking for one kernel cause one download.
//!
//! The cache stores content once per digest, but a job reaches cached content only where it
//! could have fetched it itself (`grants.rs`), downloads count against the cache's cap while
//! they run and at most `limits.downloads_in_flight` run at once (`download.rs`), and URLs are
//! shown with their credentials redacted ([`redact_url`]).
//!
//! Each kind of source is an [`ArtifactSource`] writing into a [`Sink`] (which hashes, bounds
//! and reports progress). The core has the sources that need no network, [`DataSource`] and
//! [`FileSource`]; sources named by URL come from the [`Fetchers`] the cache is opened with
//! (`citron-fetch` implements http, https and s3 with reqwest and object_store, configured by
//! [`S3Config`]; [`NoNetwork`] fetches nothing). [`Cache`]'s documentation states when a load
//! needs no download and how entries are evicted.
//!
//! A lab with several gateways shares what they fetched through a [`BlobStore`] (`store:` in
//! the lab file, [`StoreConfig`]): `shared.rs` says what goes there, under which names, and
//! why a digest alone still reaches nothing.

mod cache;
mod download;
mod fetchers;
mod grants;
mod progress;
mod redact;
mod shared;
mod source;

pub use cache::{Cache, CacheConfig, CacheStats, CachedArtifact};
pub use fetchers::{Fetchers, NoNetwork};
pub use progress::{Progress, ProgressReader, PROGRESS_INTERVAL, PROGRESS_TARGET, PROGRESS_TICK};
pub use redact::{redact_str, redact_url};
pub use shared::{BlobKey, BlobStore, StoreConfig, BASES_PREFIX, INPUTS_PREFIX, RESULTS_PREFIX};
pub use source::{ArtifactSource, DataSource, FetchError, FileSource, S3Config, Sink};

#[cfg(test)]
mod tests;
