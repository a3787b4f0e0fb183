//! Filling the cache: one download from temporary file to `sha256/`, its bytes reserved against
//! the cache's cap while it runs, and LRU eviction.
//!
//! A download streams into `<cache>/tmp/`, is hashed on the way, fsynced, checked against the
//! job's digest and only then renamed into `sha256/` (same file system: atomic). Until the
//! rename nothing is visible under `sha256/`; a failed, oversized, mismatched or interrupted
//! download leaves nothing (its temporary file is removed on every error path).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::io::AsyncWriteExt;

use super::cache::{CachedArtifact, Entry, Index, Inner, Known};
use super::source::{disk_error, ArtifactSource, Budget, FetchError, Sink};
use crate::digest::Digest;

/// Removes a temporary download unless it was moved into the cache.
struct TempFile(Option<std::path::PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Bytes an in-progress download holds against the cache's cap; given back when dropped or
/// when the download is committed.
pub(super) struct Reservation {
    inner: Arc<Inner>,
    name: String,
    bytes: u64,
}

impl Budget for Reservation {
    fn reserve(&mut self, total: u64) -> Result<(), FetchError> {
        if total <= self.bytes {
            return Ok(());
        }
        let max = self.inner.config.max_bytes;
        if total > max {
            return Err(FetchError::TooLarge { source_name: self.name.clone(), size: total, max });
        }
        let mut idx = self.inner.index.lock();
        let more = total - self.bytes;
        if let Err(held) = self.inner.evict(&mut idx, more) {
            return Err(FetchError::CacheFull { source_name: self.name.clone(), size: total, pinned: held, max });
        }
        idx.reserved += more;
        self.bytes = total;
        Ok(())
    }
}

impl Reservation {
    fn release(&mut self, idx: &mut Index) {
        idx.reserved -= std::mem::take(&mut self.bytes);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.inner.index.lock().reserved -= self.bytes;
        }
    }
}

impl Inner {
    /// Evicts unpinned entries, least recently used first, until `incoming` more bytes fit next
    /// to the entries and the downloads in progress. Returns the bytes that cannot be freed now
    /// (pinned entries and other downloads) if that is impossible.
    pub(super) fn evict(&self, idx: &mut Index, incoming: u64) -> Result<(), u64> {
        while idx.total + idx.reserved + incoming > self.config.max_bytes {
            let victim = idx.entries.iter().filter(|(_, e)| e.pins == 0).min_by_key(|(_, e)| e.used).map(|(d, e)| (*d, e.len));
            let Some((d, len)) = victim else {
                return Err(idx.entries.values().filter(|e| e.pins > 0).map(|e| e.len).sum::<u64>() + idx.reserved);
            };
            let path = self.path_of(&d);
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "cannot delete an evicted artifact");
                }
            }
            idx.entries.remove(&d);
            idx.total -= len;
            idx.grants.remove(&d);
            tracing::info!(digest = %d, bytes = len, "evicted from the cache");
        }
        Ok(())
    }

    /// Streams `src` into a temporary file, verifies it and moves it into the cache; waits for
    /// one of the `downloads_in_flight` slots first.
    pub(super) async fn download(
        self: &Arc<Self>,
        src: Arc<dyn ArtifactSource>,
        expected: Option<Digest>,
        stamp: Option<(u64, SystemTime)>,
    ) -> Result<CachedArtifact, FetchError> {
        let _slot = self.downloads.acquire().await.map_err(|e| FetchError::Cache(std::io::Error::other(e)))?;
        let name = src.name();
        let tmp_path = self.dir.join("tmp").join(format!("{}-{}.part", std::process::id(), self.tmp_seq.fetch_add(1, Ordering::Relaxed)));
        let mut guard = TempFile(Some(tmp_path.clone()));
        let mut reservation = Reservation { inner: self.clone(), name: name.clone(), bytes: 0 };
        let file = tokio::fs::File::create(&tmp_path).await.map_err(|e| disk_error(&name, 0, e))?;
        let mut w = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let (len, digest) = {
            let mut sink = Sink::new(&mut w, name.clone()).with_limit(self.config.max_bytes).with_budget(&mut reservation);
            src.fetch(&mut sink).await?;
            sink.finish()
        };
        w.flush().await.map_err(|e| disk_error(&name, len, e))?;
        let file = w.into_inner();
        file.sync_all().await.map_err(|e| disk_error(&name, len, e))?;
        drop(file);
        if let Some(e) = expected.filter(|e| *e != digest) {
            return Err(FetchError::DigestMismatch { source_name: name, expected: e, actual: digest });
        }
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let art = {
            let mut idx = self.index.lock();
            // The reservation (at least `len`) becomes the entry: give it back first.
            reservation.release(&mut idx);
            let dest = self.path_of(&digest);
            let art = if idx.entries.contains_key(&digest) && dest.is_file() {
                // Same bytes under another name: keep the copy we have, drop the new one.
                self.pin_locked(&mut idx, digest, dest)
            } else {
                if let Some(old) = idx.entries.remove(&digest) {
                    idx.total -= old.len;
                }
                if len > self.config.max_bytes {
                    return Err(FetchError::TooLarge { source_name: name, size: len, max: self.config.max_bytes });
                }
                if let Err(pinned) = self.evict(&mut idx, len) {
                    return Err(FetchError::CacheFull { source_name: name, size: len, pinned, max: self.config.max_bytes });
                }
                std::fs::rename(&tmp_path, &dest).map_err(FetchError::Cache)?;
                guard.0 = None;
                // Make the rename itself durable; best effort (some file systems refuse).
                if let Ok(d) = std::fs::File::open(self.dir.join("sha256")) {
                    let _ = d.sync_all();
                }
                idx.total += len;
                idx.entries.insert(digest, Entry { len, used: 0, pins: 0, verified: true });
                self.pin_locked(&mut idx, digest, dest)
            };
            if src.reusable() {
                idx.grants.add(digest, &src.identity());
            }
            art
        };
        self.known.lock().insert(src.identity(), Known { digest, stamp });
        tracing::debug!(source = %name, %digest, bytes = len, "cached");
        Ok(art)
    }
}
