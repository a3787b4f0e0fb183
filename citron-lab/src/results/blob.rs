//! Result blobs: every uploaded file's content, stored once by its SHA-256, behind
//! `object_store` (a local directory by default, `<data>/results`; the lab's shared `store:`
//! when there is one), so that every gateway on the same store serves what any of them took in.
//!
//! An upload streams into `staging/<random>` while it is hashed, then is renamed to
//! `sha256/<2 hex>/<hex>` unless that blob exists (same digest, same content). Nothing under
//! `sha256/` is ever partial: a client cut off or a crash leaves at most a staging object,
//! removed at start ([`BlobStore::clean_staging`]) — for the local store also the staging
//! files its own multipart uploads keep beside their destination.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt as _;
use object_store::local::LocalFileSystem;
use object_store::path::Path as Key;
use object_store::{GetResult, ObjectStore, ObjectStoreExt as _, WriteMultipart};
use sha2::{Digest as _, Sha256};

use super::ResultsError;
use crate::auth::new_id;

/// The bytes handed to the store at once (S3 wants parts of at least 5 MiB).
const PART_BYTES: usize = 8 << 20;
/// Parts in flight at once.
const PARTS_IN_FLIGHT: usize = 2;
/// Staging objects older than this are leftovers (other gateways on a shared store may be
/// uploading the younger ones).
const STAGING_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// A stored blob: its digest and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// SHA-256 of the content.
    pub sha256: [u8; 32],
    /// Bytes.
    pub size: u64,
}

/// Where result blobs live.
#[derive(Debug, Clone)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    /// The directory of the default local store (its staging files are cleaned directly).
    local: Option<PathBuf>,
}

/// The key of the blob with digest `hex`.
pub fn blob_key(hex: &str) -> Key {
    Key::from(format!("sha256/{}/{hex}", &hex[..2.min(hex.len())]))
}

impl BlobStore {
    /// The default: files under `dir`, written with `fsync` (a blob is on disk before its
    /// upload is answered).
    pub fn local(dir: PathBuf) -> Result<BlobStore, ResultsError> {
        std::fs::create_dir_all(&dir).map_err(|e| ResultsError::Io(format!("cannot create {}: {e}", dir.display())))?;
        let fs = LocalFileSystem::new_with_prefix(&dir)
            .map_err(|e| ResultsError::Io(format!("cannot use {}: {e}", dir.display())))?
            .with_fsync(true)
            .with_automatic_cleanup(true);
        Ok(BlobStore { store: Arc::new(fs), local: Some(dir) })
    }

    /// Any object store (the lab's shared `store:`).
    pub fn new(store: Arc<dyn ObjectStore>) -> BlobStore {
        BlobStore { store, local: None }
    }

    /// Streams `body` in, at most `max_bytes`; checks the digest against `expected` when given.
    /// Durable and visible under `sha256/` when it returns `Ok`; on any error nothing is.
    pub async fn put<S, E>(&self, mut body: S, max_bytes: u64, expected: Option<[u8; 32]>) -> Result<Stored, ResultsError>
    where
        S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let staging = Key::from(format!("staging/{}", new_id()));
        let upload = self.store.put_multipart(&staging).await.map_err(store_error)?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let r: Result<(), ResultsError> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| ResultsError::BodyCut(e.to_string()))?;
                size += chunk.len() as u64;
                if size > max_bytes {
                    return Err(ResultsError::TooLarge(max_bytes));
                }
                hasher.update(&chunk);
                w.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(store_error)?;
                w.put(chunk);
            }
            Ok(())
        }
        .await;
        if let Err(e) = r {
            let _ = w.abort().await;
            return Err(e);
        }
        w.finish().await.map_err(store_error)?;
        let sha256: [u8; 32] = hasher.finalize().into();
        if let Some(want) = expected.filter(|w| *w != sha256) {
            let _ = self.store.delete(&staging).await;
            return Err(ResultsError::ChecksumMismatch { sent: hex(&want), got: hex(&sha256) });
        }
        let key = blob_key(&hex(&sha256));
        match self.store.head(&key).await {
            // Content-addressed: the blob there is this content.
            Ok(_) => {
                let _ = self.store.delete(&staging).await;
            }
            Err(object_store::Error::NotFound { .. }) => {
                if let Err(e) = self.store.rename(&staging, &key).await {
                    let _ = self.store.delete(&staging).await;
                    return Err(store_error(e));
                }
            }
            Err(e) => {
                let _ = self.store.delete(&staging).await;
                return Err(store_error(e));
            }
        }
        Ok(Stored { sha256, size })
    }

    /// Stores `data` (small: a finished console).
    pub async fn put_bytes(&self, data: Bytes) -> Result<Stored, ResultsError> {
        let len = data.len() as u64;
        self.put(futures::stream::iter([Ok::<_, std::convert::Infallible>(data)]), len, None).await
    }

    /// The blob `hex`, to stream.
    pub async fn get(&self, hex: &str) -> Result<GetResult, ResultsError> {
        self.store.get(&blob_key(hex)).await.map_err(store_error)
    }

    /// Deletes the blob `hex` (retention).
    pub async fn delete(&self, hex: &str) -> Result<(), ResultsError> {
        match self.store.delete(&blob_key(hex)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_error(e)),
        }
    }

    /// Removes what interrupted uploads left (a crash, `kill -9`): staging objects older than
    /// a day, and every staging file of the local store (only this process writes there).
    pub async fn clean_staging(&self) {
        if let Some(dir) = &self.local {
            let staging = dir.join("staging");
            if let Ok(rd) = std::fs::read_dir(&staging) {
                let n = rd.flatten().filter(|e| std::fs::remove_file(e.path()).is_ok()).count();
                if n > 0 {
                    tracing::info!(files = n, "results: removed what interrupted uploads left");
                }
            }
            return;
        }
        let old = SystemTime::now() - STAGING_MAX_AGE;
        let mut list = self.store.list(Some(&Key::from("staging")));
        while let Some(Ok(meta)) = list.next().await {
            if SystemTime::from(meta.last_modified) < old {
                let _ = self.store.delete(&meta.location).await;
            }
        }
    }
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    crate::auth::hex(b)
}

/// A store failure: a full disk is 507, a missing blob 404, anything else 500.
fn store_error(e: object_store::Error) -> ResultsError {
    if let object_store::Error::NotFound { .. } = e {
        return ResultsError::NotFound("no such blob".into());
    }
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.raw_os_error() == Some(libc::ENOSPC) || io.kind() == std::io::ErrorKind::StorageFull {
                return ResultsError::Full;
            }
        }
        src = s.source();
    }
    ResultsError::Io(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(parts: &[&'static [u8]]) -> impl futures::Stream<Item = Result<Bytes, String>> + Unpin {
        futures::stream::iter(parts.iter().map(|p| Ok(Bytes::from_static(p))).collect::<Vec<_>>())
    }

    #[tokio::test]
    async fn stored_once_checked_and_nothing_partial() {
        let dir = tempfile::tempdir().unwrap();
        let b = BlobStore::local(dir.path().join("results")).unwrap();
        let s = b.put(stream(&[b"hello ", b"world"]), 100, None).await.unwrap();
        assert_eq!(hex(&s.sha256), hex(&Sha256::digest(b"hello world")));
        assert_eq!(s.size, 11);
        let again = b.put(stream(&[b"hello world"]), 100, Some(s.sha256)).await.unwrap();
        assert_eq!(again, s);
        let got = b.get(&hex(&s.sha256)).await.unwrap().bytes().await.unwrap();
        assert_eq!(&got[..], b"hello world");
        assert!(matches!(b.put(stream(&[b"x"]), 100, Some([0; 32])).await, Err(ResultsError::ChecksumMismatch { .. })));
        assert!(matches!(b.put(stream(&[b"12345", b"6"]), 5, None).await, Err(ResultsError::TooLarge(5))));
        let cut = futures::stream::iter(vec![Ok(Bytes::from_static(b"abc")), Err("reset".to_string())]);
        assert!(matches!(b.put(cut, 100, None).await, Err(ResultsError::BodyCut(_))));
        // Only the one blob is stored: the failed uploads left nothing, staged or not.
        let mut files = Vec::new();
        for e in walk(dir.path()) {
            files.push(e.strip_prefix(dir.path()).unwrap().display().to_string());
        }
        assert_eq!(files, vec![format!("results/sha256/{}/{}", &hex(&s.sha256)[..2], hex(&s.sha256))], "{files:?}");
    }

    fn walk(d: &std::path::Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
        out.sort();
        out
    }
}
