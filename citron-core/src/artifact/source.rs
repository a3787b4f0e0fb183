//! Where artifact bytes come from.

use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWrite;

/// How to reach the S3-compatible store `s3://bucket/key` URLs name (lab file `s3:`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint URL (`http://127.0.0.1:9000` for MinIO); AWS when absent.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Region name.
    #[serde(default)]
    pub region: Option<String>,
    /// Access key id.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Secret access key.
    #[serde(default)]
    pub secret_access_key: Option<String>,
}

/// Why an artifact could not be fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The content's digest is not the one the job gave.
    #[error("{source_name}: sha256 mismatch: the job says {expected}, the content is {actual}; fix the job's sha256 or the artifact")]
    DigestMismatch {
        /// Which source.
        source_name: String,
        /// What the job said.
        expected: crate::Digest,
        /// What arrived.
        actual: crate::Digest,
    },
    /// The server answered with an error status.
    #[error("{url}: the server answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// Could not reach or talk to the server.
    #[error("{url}: {message}")]
    Network {
        /// The URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// A local file could not be read.
    #[error("{path}: {source}")]
    File {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The URL scheme is not one citron fetches.
    #[error("{0}: unsupported URL scheme; use http, https, s3 or file")]
    UnsupportedScheme(String),
    /// The cache could not store the artifact.
    #[error("cache: {0}")]
    Cache(std::io::Error),
    /// The artifact is larger than the whole cache.
    #[error("{source_name}: {size} bytes do not fit in the cache ({max} bytes); raise cache.max_size in the lab file")]
    TooLarge {
        /// Which source.
        source_name: String,
        /// Its size.
        size: u64,
        /// The cache's limit.
        max: u64,
    },
}

/// Something that can write an artifact's bytes into a sink.
#[async_trait]
pub trait ArtifactSource: Send + Sync {
    /// A stable identity for single-flight deduplication and messages (the URL, the path).
    fn name(&self) -> String;
    /// Streams the whole content into `out`; returns the byte count.
    async fn fetch(&self, out: &mut (dyn AsyncWrite + Unpin + Send)) -> Result<u64, FetchError>;
}
