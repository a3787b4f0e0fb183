//! Prepared disk bases in the lab's shared store (issue 14 §4): a base one gateway built is
//! downloaded by the others instead of being built again (a `mkfs -d` of a tarball's tree, a
//! qcow2 conversion, a container image's layers pulled and flattened).
//!
//! # What is stored, and under which name
//! `bases/sha256/<recipe>.zst` holds the base compressed with zstd (an ext4 base is mostly
//! zeroes), and `bases/sha256/<recipe>.json` its [`Manifest`]: the compressed object's sha256
//! and length and the base's size, written once the object is complete, so a base without a
//! manifest does not exist. `<recipe>` is the sha256 of a [`Recipe`]: how the base is built
//! (kind, filesystem, size, the tools and their versions, citron's own version, which unpacks
//! the tree) and the digests of its inputs. Nothing else names a base: no job, DUT or listing
//! of the bucket.
//!
//! # Trust
//! The same as inputs: the objects are hostile input. The manifest is read with a small bound;
//! its size must fit what the recipe allows (a filesystem's size exactly; an image's the size
//! its input says); the compressed object is refused past the manifest's length and must hash to
//! the manifest's sha256; decompression stops past the base's size and must reach it exactly.
//! Any refusal builds the base locally, as without a store (and the new base replaces the
//! objects).
//!
//! **Knowing a digest grants nothing**: a base is only looked up after the job's inputs were
//! obtained through the cache (with its grants), and its recipe is computed from their digests;
//! DUTs read the local base, never the store.
//!
//! # Sparse
//! A base is written back sparse: runs of zero blocks are skipped, not written, so a 2 GiB ext4
//! holding 50 MiB of files takes 50 MiB on the second gateway as on the first.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use crate::artifact::{BlobKey, BlobStore, Sink};
use crate::digest::{Digest, Hasher};

/// A manifest is a few hundred bytes; more is not one.
const MANIFEST_MAX_BYTES: u64 = 4096;

/// The unit of sparseness: a zero block of this size is skipped.
const SPARSE_BLOCK: usize = 4096;

/// zstd's level: fast, and zero runs compress to almost nothing at any level.
const LEVEL: i32 = 3;

/// How a base is built, and from what: the name it has in the store.
#[derive(Debug, Clone)]
pub(crate) struct Recipe {
    /// Everything the base's bytes depend on, `\0`-separated.
    text: String,
    /// The base's size when the recipe fixes it; else at most this.
    size: SizeRule,
}

/// What size a downloaded base may have.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SizeRule {
    /// Exactly this many bytes.
    Exact(u64),
    /// At most this many (a filesystem sized from its contents).
    AtMost(u64),
}

impl Recipe {
    /// A filesystem base: `mkfs.<fstype>` of `size_bytes` (0: sized from its contents, at most
    /// `max_bytes`) from `contents` (`tar:<sha256>`, `oci:<manifest digest>`, `empty`).
    pub(crate) fn filesystem(fstype: &str, size_bytes: u64, contents: &str, max_bytes: u64) -> Recipe {
        let tool = tool_version(&format!("mkfs.{fstype}"), &["-V"]);
        let size = if size_bytes == 0 { SizeRule::AtMost(max_bytes) } else { SizeRule::Exact(size_bytes) };
        Recipe::new(format!("filesystem\0{fstype}\0{size_bytes}\0{contents}\0{tool}"), size)
    }

    /// An image base: the raw form (qcow2 converted by `qemu-img`) of the input `digest`,
    /// `size_bytes` long.
    pub(crate) fn image(digest: &Digest, size_bytes: u64) -> Recipe {
        let tool = tool_version("qemu-img", &["--version"]);
        Recipe::new(format!("image\0{}\0{size_bytes}\0{tool}", digest.hex()), SizeRule::Exact(size_bytes))
    }

    fn new(what: String, size: SizeRule) -> Recipe {
        // citron's own version: the unpacker (whiteouts, owners, modes) is citron's code.
        Recipe { text: format!("citron-base-v1\0{}\0{what}", env!("CARGO_PKG_VERSION")), size }
    }

    fn digest(&self) -> Digest {
        Digest::of(self.text.as_bytes())
    }

    fn keys(&self) -> (BlobKey, BlobKey) {
        let hex = self.digest().hex();
        (BlobKey::base(&format!("{hex}.zst")), BlobKey::base(&format!("{hex}.json")))
    }

    fn allows(&self, size: u64) -> bool {
        match self.size {
            SizeRule::Exact(n) => size == n,
            SizeRule::AtMost(n) => size <= n,
        }
    }
}

/// The first line a tool prints about its version (stdout or stderr), once per process; an
/// empty string when it cannot be run (then building fails anyway, with its own message).
fn tool_version(program: &str, args: &[&str]) -> String {
    static SEEN: OnceLock<parking_lot::Mutex<std::collections::HashMap<String, String>>> = OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    if let Some(v) = seen.lock().get(program) {
        return v.clone();
    }
    let v = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
            String::from_utf8_lossy(&text).lines().next().unwrap_or_default().trim().to_string()
        })
        .unwrap_or_default();
    seen.lock().insert(program.to_string(), v.clone());
    v
}

/// What the store says of a base: written after the base's object, so its presence means the
/// object is complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Manifest {
    /// sha256 of the compressed object, hex.
    sha256: String,
    /// The compressed object's length.
    compressed_bytes: u64,
    /// The base's size.
    size_bytes: u64,
}

/// Downloads the base of `recipe` into `dst` (through a temporary file beside it, renamed by
/// `publish`); `Ok(false)` when the store has none. An error is a refused or broken object.
pub(crate) async fn fetch(store: &Arc<dyn BlobStore>, recipe: &Recipe, dst: &Path) -> Result<bool, String> {
    let (data_key, manifest_key) = recipe.keys();
    let mut raw = Vec::new();
    let got = {
        let mut sink = Sink::new(&mut raw, format!("{}/{manifest_key}", store.describe())).with_limit(MANIFEST_MAX_BYTES);
        store.get(&manifest_key, &mut sink).await.map_err(|e| e.to_string())?
    };
    if !got {
        return Ok(false);
    }
    let m: Manifest = serde_json::from_slice(&raw).map_err(|e| format!("{manifest_key}: not a base's manifest: {e}"))?;
    if !recipe.allows(m.size_bytes) {
        return Err(format!("{manifest_key}: a base of {} bytes, which its recipe does not allow", m.size_bytes));
    }
    // zstd never makes data much larger than it was: anything beyond this is not a base.
    if m.compressed_bytes > m.size_bytes.saturating_add(m.size_bytes / 64).saturating_add(1 << 20) {
        return Err(format!("{manifest_key}: {} compressed bytes for a {}-byte base", m.compressed_bytes, m.size_bytes));
    }
    let zst = super::prepare::tmp_next_to(dst, "zst");
    let img = super::prepare::tmp_next_to(dst, "img");
    let result = async {
        let mut f = tokio::fs::File::create(&zst).await.map_err(|e| format!("{}: {e}", zst.display()))?;
        let mut sink = Sink::new(&mut f, format!("{}/{data_key}", store.describe())).with_limit(m.compressed_bytes);
        if !store.get(&data_key, &mut sink).await.map_err(|e| e.to_string())? {
            return Err(format!("{data_key} is missing while its manifest is there"));
        }
        let (n, digest) = sink.finish();
        tokio::io::AsyncWriteExt::flush(&mut f).await.map_err(|e| format!("{}: {e}", zst.display()))?;
        if n != m.compressed_bytes || digest.hex() != m.sha256.to_ascii_lowercase() {
            return Err(format!(
                "{data_key}: {n} bytes with sha256 {}, its manifest says {} bytes with {}",
                digest.hex(),
                m.compressed_bytes,
                m.sha256
            ));
        }
        let (from, to, size) = (zst.clone(), img.clone(), m.size_bytes);
        tokio::task::spawn_blocking(move || decompress_sparse(&from, &to, size))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("{data_key}: {e}"))?;
        super::prepare::publish(&img, dst).map_err(|e| e.to_string())
    }
    .await;
    let _ = std::fs::remove_file(&zst);
    if result.is_err() {
        let _ = std::fs::remove_file(&img);
    }
    result.map(|()| true)
}

/// Leaves the base `path` in the store as `recipe`'s: compressed beside it, then the object,
/// then its manifest. Errors are the caller's to log: the base is there locally either way.
pub(crate) async fn upload(store: Arc<dyn BlobStore>, recipe: Recipe, path: PathBuf) -> Result<(), String> {
    let (data_key, manifest_key) = recipe.keys();
    let zst = super::prepare::tmp_next_to(&path, "zst");
    let json = super::prepare::tmp_next_to(&path, "json");
    let result = async {
        let (from, to) = (path.clone(), zst.clone());
        let m = tokio::task::spawn_blocking(move || compress(&from, &to))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("{}: {e}", path.display()))?;
        store.put_file(&data_key, &zst).await.map_err(|e| e.to_string())?;
        std::fs::write(&json, serde_json::to_vec(&m).unwrap_or_default()).map_err(|e| format!("{}: {e}", json.display()))?;
        store.put_file(&manifest_key, &json).await.map_err(|e| e.to_string())
    }
    .await;
    let _ = std::fs::remove_file(&zst);
    let _ = std::fs::remove_file(&json);
    result
}

/// A writer that hashes and counts what goes through it.
struct Counting<W> {
    inner: W,
    hasher: Hasher,
    len: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn compress(src: &Path, dst: &Path) -> io::Result<Manifest> {
    let mut input = BufReader::with_capacity(1 << 20, File::open(src)?);
    let size_bytes = input.get_ref().metadata()?.len();
    let out = Counting { inner: BufWriter::new(File::create(dst)?), hasher: Hasher::new(), len: 0 };
    let mut enc = zstd::stream::write::Encoder::new(out, LEVEL)?;
    io::copy(&mut input, &mut enc)?;
    let mut out = enc.finish()?;
    out.flush()?;
    out.inner.get_ref().sync_all()?;
    Ok(Manifest { sha256: out.hasher.finish().hex(), compressed_bytes: out.len, size_bytes })
}

/// Decompresses `src` into a new file `dst` of exactly `size` bytes, skipping zero blocks (the
/// file stays sparse); more or fewer bytes than `size` is an error.
pub(crate) fn decompress_sparse(src: &Path, dst: &Path, size: u64) -> io::Result<()> {
    let mut dec = zstd::stream::read::Decoder::new(File::open(src)?)?;
    let out = File::create(dst)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        let n = read_full(&mut dec, &mut buf)?;
        if n == 0 {
            break;
        }
        if at + n as u64 > size {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("it decompresses to more than the base's {size} bytes")));
        }
        for (i, block) in buf[..n].chunks(SPARSE_BLOCK).enumerate() {
            if block.iter().any(|&b| b != 0) {
                out.write_all_at(block, at + (i * SPARSE_BLOCK) as u64)?;
            }
        }
        at += n as u64;
    }
    if at != size {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("it decompresses to {at} bytes, not the base's {size}")));
    }
    out.set_len(size)?;
    out.sync_all()
}

/// Reads until `buf` is full or the input ends.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn a_sparse_base_round_trips_and_stays_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.img");
        let size = 64u64 << 20;
        let f = File::create(&base).unwrap();
        f.set_len(size).unwrap();
        f.write_all_at(b"superblock", 1024).unwrap();
        f.write_all_at(&[7u8; 10000], 40 << 20).unwrap();
        drop(f);
        let zst = dir.path().join("base.zst");
        let m = compress(&base, &zst).unwrap();
        assert_eq!(m.size_bytes, size);
        assert!(m.compressed_bytes < 64 << 10, "zeroes compress: {}", m.compressed_bytes);
        assert_eq!(m.sha256, Digest::of(&std::fs::read(&zst).unwrap()).hex());
        let back = dir.path().join("back.img");
        decompress_sparse(&zst, &back, size).unwrap();
        assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&base).unwrap());
        // Two data blocks and a few more for the 10000 bytes, not 64 MiB.
        assert!(std::fs::metadata(&back).unwrap().blocks() * 512 < 1 << 20, "the copy is sparse");
    }

    #[test]
    fn a_base_of_another_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.img");
        File::create(&base).unwrap().set_len(1 << 20).unwrap();
        let zst = dir.path().join("base.zst");
        compress(&base, &zst).unwrap();
        let out = dir.path().join("out.img");
        let e = decompress_sparse(&zst, &out, 4096).unwrap_err();
        assert!(e.to_string().contains("more than the base's 4096 bytes"), "{e}");
        let e = decompress_sparse(&zst, &out, 2 << 20).unwrap_err();
        assert!(e.to_string().contains("not the base's"), "{e}");
    }

    /// A bucket in memory.
    #[derive(Default)]
    struct Memory(parking_lot::Mutex<std::collections::HashMap<String, Vec<u8>>>);

    #[async_trait::async_trait]
    impl BlobStore for Memory {
        fn describe(&self) -> String {
            "memory".into()
        }
        async fn get(&self, key: &BlobKey, sink: &mut Sink<'_>) -> Result<bool, crate::artifact::FetchError> {
            let Some(b) = self.0.lock().get(key.as_str()).cloned() else { return Ok(false) };
            sink.set_total(Some(b.len() as u64))?;
            sink.write(&b).await?;
            Ok(true)
        }
        async fn exists(&self, key: &BlobKey) -> Result<bool, crate::artifact::FetchError> {
            Ok(self.0.lock().contains_key(key.as_str()))
        }
        async fn put_file(&self, key: &BlobKey, file: &Path) -> Result<(), crate::artifact::FetchError> {
            self.0.lock().insert(key.to_string(), std::fs::read(file).map_err(crate::artifact::FetchError::Cache)?);
            Ok(())
        }
        async fn put_marker(&self, key: &BlobKey) -> Result<(), crate::artifact::FetchError> {
            self.0.lock().insert(key.to_string(), Vec::new());
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_base_left_in_the_store_is_taken_and_a_corrupted_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("a.img");
        let f = File::create(&base).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(b"ext4 and files", 1024).unwrap();
        drop(f);
        let memory = Arc::new(Memory::default());
        let store: Arc<dyn BlobStore> = memory.clone();
        let recipe = Recipe::filesystem("ext4", 8 << 20, "tar:aa", 1 << 30);
        let b = dir.path().join("b.img");
        assert_eq!(fetch(&store, &recipe, &b).await, Ok(false), "nothing there yet");
        upload(store.clone(), recipe.clone(), base.clone()).await.unwrap();
        assert_eq!(fetch(&store, &recipe, &b).await, Ok(true));
        assert_eq!(std::fs::read(&b).unwrap(), std::fs::read(&base).unwrap());
        // Another recipe (another size) does not find it.
        let other = Recipe::filesystem("ext4", 16 << 20, "tar:aa", 1 << 30);
        assert_eq!(fetch(&store, &other, &dir.path().join("c.img")).await, Ok(false));

        // A flipped byte in the object: refused by its manifest's sha256, nothing left behind.
        let (data, manifest) = recipe.keys();
        memory.0.lock().get_mut(data.as_str()).unwrap()[20] ^= 1;
        let c = dir.path().join("c.img");
        let e = fetch(&store, &recipe, &c).await.unwrap_err();
        assert!(e.contains("its manifest says"), "{e}");
        assert!(!c.exists());
        // A manifest claiming another size: refused before the object is read.
        memory.0.lock().insert(manifest.to_string(), br#"{"sha256":"00","compressed_bytes":10,"size_bytes":4096}"#.to_vec());
        let e = fetch(&store, &recipe, &c).await.unwrap_err();
        assert!(e.contains("which its recipe does not allow"), "{e}");
        let leftovers: Vec<_> =
            std::fs::read_dir(dir.path()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".tmp")).collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn recipes_name_their_inputs_and_sizes() {
        let a = Recipe::filesystem("ext4", 8 << 20, "tar:aa", 1 << 30);
        assert_ne!(a.digest(), Recipe::filesystem("ext4", 8 << 20, "tar:bb", 1 << 30).digest());
        assert_ne!(a.digest(), Recipe::filesystem("ext4", 16 << 20, "tar:aa", 1 << 30).digest());
        assert_ne!(a.digest(), Recipe::filesystem("ext3", 8 << 20, "tar:aa", 1 << 30).digest());
        assert!(a.allows(8 << 20) && !a.allows(8 << 20 | 1));
        let auto = Recipe::filesystem("ext4", 0, "oci:x", 1 << 30);
        assert!(auto.allows(5 << 20) && !auto.allows((1 << 30) + 1));
        let (data, manifest) = a.keys();
        assert!(data.as_str().starts_with("bases/sha256/") && data.as_str().ends_with(".zst"), "{data}");
        assert_eq!(manifest.as_str().strip_suffix(".json"), data.as_str().strip_suffix(".zst"));
    }
}
