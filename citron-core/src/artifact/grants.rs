//! Which sources may reuse a cached digest without fetching it again.
//!
//! The cache stores content once per sha256, but **knowing a digest grants nothing**: a job
//! naming `sha256: X` with some URL gets the cached bytes only if that very URL (its whole
//! text, query included) once produced them. Otherwise its own source is fetched, and a
//! closed port or a wrong URL fails the job instead of handing it another job's secret.
//!
//! Only network sources (http, https, s3) are recorded: anyone naming the same URL could have
//! fetched the same bytes through citron anyway. Inline data needs no grant (the job holds the
//! bytes, their digest is computed from them) and local files are read again unless their size
//! and mtime are those this process saw (their root access is checked when the job is rendered).
//!
//! Grants survive restarts as empty files `<cache>/grants/<digest>/<sha256 of the URL>`: the
//! URL itself (which may carry a presigned signature) is never written to disk.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::digest::Digest;

/// Digest → the identities (hashed) allowed to reuse it.
pub(crate) struct Grants {
    dir: PathBuf,
    map: HashMap<Digest, HashSet<Digest>>,
}

fn parse(name: &std::ffi::OsStr) -> Option<Digest> {
    name.to_str().filter(|n| super::cache::is_digest_name(n)).and_then(|n| n.parse().ok())
}

impl Grants {
    /// Reads `dir` (creating it), keeping only grants of digests `keep` accepts; the rest are
    /// deleted.
    pub(crate) fn open(dir: &Path, keep: impl Fn(&Digest) -> bool) -> std::io::Result<Grants> {
        std::fs::create_dir_all(dir)?;
        let mut map: HashMap<Digest, HashSet<Digest>> = HashMap::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            match parse(&e.file_name()).filter(|d| keep(d) && e.path().is_dir()) {
                Some(d) => {
                    let ids = map.entry(d).or_default();
                    for f in std::fs::read_dir(e.path())? {
                        if let Some(id) = parse(&f?.file_name()) {
                            ids.insert(id);
                        }
                    }
                }
                None => {
                    let p = e.path();
                    let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
                }
            }
        }
        Ok(Grants { dir: dir.to_path_buf(), map })
    }

    /// The hashed form of a source identity.
    pub(crate) fn id(identity: &str) -> Digest {
        Digest::of(identity.as_bytes())
    }

    /// Whether `identity` produced `digest` before.
    pub(crate) fn allows(&self, digest: &Digest, identity: &str) -> bool {
        self.map.get(digest).is_some_and(|s| s.contains(&Self::id(identity)))
    }

    /// Records that `identity` produced `digest` (on disk best effort: a lost grant costs a
    /// download after a restart, nothing more).
    pub(crate) fn add(&mut self, digest: Digest, identity: &str) {
        let id = Self::id(identity);
        if !self.map.entry(digest).or_default().insert(id) {
            return;
        }
        let d = self.dir.join(digest.hex());
        if let Err(e) = std::fs::create_dir_all(&d).and_then(|_| std::fs::File::create(d.join(id.hex())).map(drop)) {
            tracing::warn!(error = %e, "cannot record a cache grant; the artifact will be fetched again after a restart");
        }
    }

    /// Forgets every grant of an evicted or removed digest.
    pub(crate) fn remove(&mut self, digest: &Digest) {
        if self.map.remove(digest).is_some() {
            let _ = std::fs::remove_dir_all(self.dir.join(digest.hex()));
        }
    }
}
