//! The lab's shared artifact store: where one gateway leaves what it fetched, so that another
//! gateway finds it by digest instead of fetching it from the origin again (issue 14 §4).
//!
//! The core decides what goes there and under which name ([`BlobKey`]); a [`BlobStore`]
//! (`citron-fetch` implements it with object_store, for S3, MinIO and Ceph) only moves bytes.
//! The store is **never served**: a DUT reads only the local cache, and only what its job names.
//!
//! # Layout (under the `store:` URL's prefix)
//! - `inputs/sha256/<hex>`: a cached source's bytes, named by their sha256.
//! - `inputs/grants/<hex>/<sha256 of the source URL>`: empty; says that this URL produced these
//!   bytes (the shared form of the local cache's grants: **knowing a digest grants nothing**,
//!   across gateways too).
//! - `bases/sha256/<recipe>.zst` and `.json`: prepared disk bases, compressed, and their
//!   manifests (`block`'s `shared_base`: named by how they are built and from which inputs).
//! - `results/`: the lab's result blobs (`citron_lab::results`: `results/sha256/<2 hex>/<hex>`,
//!   and `results/staging/…` while an upload streams in); nothing of the cache goes there.
//!
//! # Trust
//! The store is the lab's own bucket, but its objects are treated as hostile input: an object
//! is read only under a name the core computed (never one listed from the bucket), its size is
//! bounded by the cache's cap (the download reserves it like any other), and its bytes must hash
//! to the digest the job gave before they are renamed into the local cache. A corrupted object
//! is refused and the origin is fetched instead (whose bytes then replace the object).

use std::path::Path;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::source::{FetchError, Sink};
use crate::digest::Digest;

/// The prefix of cached sources in the shared store.
pub const INPUTS_PREFIX: &str = "inputs/";
/// The prefix kept for DUT uploads (results); the cache never writes there.
pub const RESULTS_PREFIX: &str = "results/";
/// The prefix of prepared disk bases (`block`'s `shared_base`: compressed, with a manifest).
pub const BASES_PREFIX: &str = "bases/";

/// The name of an object in the shared store, relative to the store's prefix. Only the core
/// makes them, from digests and fixed words: no name comes from a job, a DUT or the bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobKey(String);

impl BlobKey {
    /// The bytes of a cached source: `inputs/sha256/<hex>`.
    pub fn input(digest: &Digest) -> BlobKey {
        BlobKey(format!("{INPUTS_PREFIX}sha256/{}", digest.hex()))
    }

    /// A prepared disk base's object, `bases/sha256/<name>` (`<recipe digest>.zst` or `.json`).
    pub(crate) fn base(name: &str) -> BlobKey {
        BlobKey(format!("{BASES_PREFIX}sha256/{name}"))
    }

    /// The grant saying that the source with hashed identity `id` produced `digest`.
    pub(crate) fn grant(digest: &Digest, id: &Digest) -> BlobKey {
        BlobKey(format!("{INPUTS_PREFIX}grants/{}/{}", digest.hex(), id.hex()))
    }

    /// The name, `/`-separated, relative to the store's prefix.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for BlobKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The lab file's `store:`: the shared artifact store of a lab with several gateways.
///
/// `url` is `s3://bucket/prefix` (MinIO, Ceph and AWS alike); credentials come from the
/// environment as for any S3 client (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, …), never from the lab file. Without `store:` each gateway keeps its
/// cache in `--data` only.
///
/// ```
/// use citron_core::artifact::StoreConfig;
/// let s = StoreConfig { url: "s3://lab-cache/citron".into(), endpoint: Some("http://minio:9000".into()), region: None };
/// assert_eq!(s.bucket_and_prefix().unwrap(), ("lab-cache".to_string(), "citron".to_string()));
/// assert!(StoreConfig { url: "http://x/y".into(), ..s }.bucket_and_prefix().is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `s3://bucket/prefix`.
    pub url: String,
    /// Endpoint URL (`http://127.0.0.1:9000` for MinIO); `$AWS_ENDPOINT_URL` or AWS when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Region name; `$AWS_REGION` or `us-east-1` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

impl StoreConfig {
    /// The bucket and the prefix (without leading or trailing `/`, possibly empty) of `url`, or
    /// what is wrong with it.
    pub fn bucket_and_prefix(&self) -> Result<(String, String), String> {
        let bad = |why: &str| format!("{why}; write s3://bucket/prefix");
        let u = url::Url::parse(&self.url).map_err(|e| bad(&format!("{:?} is not a URL ({e})", self.url)))?;
        if u.scheme() != "s3" {
            return Err(bad(&format!("the scheme is {:?}, citron's shared store is S3", u.scheme())));
        }
        if !u.username().is_empty() || u.password().is_some() || u.query().is_some() || u.fragment().is_some() {
            return Err(bad("credentials, queries and fragments do not belong in the URL (credentials come from the environment)"));
        }
        let bucket = u.host_str().filter(|b| !b.is_empty()).ok_or_else(|| bad("no bucket"))?;
        let prefix = u.path().trim_matches('/');
        if prefix.split('/').any(|c| c == "." || c == "..") || prefix.contains("//") {
            return Err(bad("the prefix has an empty, `.` or `..` component"));
        }
        Ok((bucket.to_string(), prefix.to_string()))
    }
}

/// Where the shared artifact store's objects are moved; the core names them and checks them.
///
/// Called off the serving path only (while a job loads). Every error is logged by the cache and
/// costs a fetch from the origin, nothing more: the shared store makes loads cheaper, it never
/// decides whether a load succeeds.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Where the store is, for logs (no credentials).
    fn describe(&self) -> String;

    /// Streams the object into `sink` (announcing its size first, so that an oversized object is
    /// refused before its first byte); `Ok(false)` if there is no such object.
    async fn get(&self, key: &BlobKey, sink: &mut Sink<'_>) -> Result<bool, FetchError>;

    /// Whether the object exists.
    async fn exists(&self, key: &BlobKey) -> Result<bool, FetchError>;

    /// Stores the local file's bytes as the object (replacing it), visible only once complete.
    async fn put_file(&self, key: &BlobKey, file: &Path) -> Result<(), FetchError>;

    /// Stores an empty object (a marker such as a grant).
    async fn put_marker(&self, key: &BlobKey) -> Result<(), FetchError>;
}

/// The shared store's copy of what a network source produced, fetched in its place: it
/// stands for the source (same identity, so the local grant it leaves is the source's) and the
/// download checks its bytes against the digest the job gave like any other.
pub(super) struct SharedCopy {
    pub(super) store: std::sync::Arc<dyn BlobStore>,
    pub(super) digest: Digest,
    /// The source's name (redacted) and identity.
    pub(super) name: String,
    pub(super) identity: String,
}

#[async_trait]
impl super::ArtifactSource for SharedCopy {
    fn name(&self) -> String {
        format!("{} (from the shared store {})", self.name, self.store.describe())
    }

    fn identity(&self) -> String {
        self.identity.clone()
    }

    fn reusable(&self) -> bool {
        true
    }

    async fn fetch(&self, sink: &mut Sink<'_>) -> Result<(), FetchError> {
        let key = BlobKey::input(&self.digest);
        if self.store.get(&key, sink).await? {
            Ok(())
        } else {
            Err(FetchError::Network { url: format!("{}/{key}", self.store.describe()), message: "the object is not there".into() })
        }
    }
}
