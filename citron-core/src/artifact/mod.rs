//! Artifact sources and the content-addressed cache they fill.
//!
//! A job names its artifacts by source (`data:`, `file:`, `url:` with http, https or s3). When a
//! job is loaded every source is fetched into the [`Cache`], keyed by sha256, so that serving
//! never touches the network and a hundred DUTs asking for one kernel cause one download.

mod cache;
mod source;

pub use cache::{Cache, CacheConfig, CachedArtifact};
pub use source::{ArtifactSource, FetchError, S3Config};
