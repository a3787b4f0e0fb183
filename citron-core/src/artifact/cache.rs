//! The content-addressed cache (minimal first version: inline data and local files).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::source::{FetchError, S3Config};
use crate::digest::Digest;
use crate::job::Source;

/// Cache settings (lab file `cache:`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// The most bytes the cache keeps; unpinned entries are evicted least recently used first.
    #[serde(default = "default_max")]
    pub max_bytes: u64,
}

fn default_max() -> u64 {
    20 << 30
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig { max_bytes: default_max() }
    }
}

/// An artifact in the cache, pinned (not evictable) while this value lives.
#[derive(Debug, Clone)]
pub struct CachedArtifact {
    /// The cached file.
    pub path: PathBuf,
    /// Its size.
    pub len: u64,
    /// Its digest.
    pub digest: Digest,
    _pin: Arc<()>,
}

/// The cache.
#[derive(Debug)]
pub struct Cache {
    dir: PathBuf,
    #[allow(dead_code)]
    config: CacheConfig,
    #[allow(dead_code)]
    s3: S3Config,
}

impl Cache {
    /// Opens (creating) a cache under `dir`.
    pub fn open(dir: &Path, config: CacheConfig, s3: S3Config) -> std::io::Result<Cache> {
        std::fs::create_dir_all(dir.join("sha256"))?;
        Ok(Cache { dir: dir.to_path_buf(), config, s3 })
    }

    /// Brings `source` into the cache, verifying `expected`.
    pub async fn get(&self, source: &Source, expected: Option<Digest>) -> Result<CachedArtifact, FetchError> {
        let data = match source {
            Source::Data(b) => b.to_vec(),
            Source::File(p) => tokio::fs::read(p).await.map_err(|e| FetchError::File { path: p.clone(), source: e })?,
            Source::Url(u) => return Err(FetchError::UnsupportedScheme(u.to_string())),
        };
        let digest = Digest::of(&data);
        if let Some(exp) = expected {
            if exp != digest {
                return Err(FetchError::DigestMismatch { source_name: "artifact".into(), expected: exp, actual: digest });
            }
        }
        let path = self.dir.join("sha256").join(digest.hex());
        if !path.exists() {
            let tmp = path.with_extension("tmp");
            tokio::fs::write(&tmp, &data).await.map_err(FetchError::Cache)?;
            tokio::fs::rename(&tmp, &path).await.map_err(FetchError::Cache)?;
        }
        Ok(CachedArtifact { path, len: data.len() as u64, digest, _pin: Arc::new(()) })
    }
}
