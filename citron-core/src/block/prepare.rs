//! Turning a job's [`DiskKind`] into an immutable base image, once per content.
//!
//! Bases are keyed by what they are made of (the source's sha256, the filesystem's type and size),
//! so two jobs asking for the same disk share one file, and a prepared base is never written again:
//! DUT writes go to their overlays. With a shared store, a base is first looked for there and one
//! built here is left there (`shared_base`), so that the lab's other gateways download it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Weak};

use sha2::{Digest as _, Sha256};

use super::extract::{open_archive, Tree, TreeStats, UnpackLimits};
use super::shared_base::{self, Recipe};
use super::DiskError;
use crate::artifact::Cache;
use crate::job::{DiskKind, FsContents, Source};
use crate::limits::Limits;

/// A prepared base image.
#[derive(Debug, Clone)]
pub struct BaseImage {
    /// What it is made of, as a file-name-safe key.
    pub key: String,
    /// The image file; `None` for a raw disk, which reads as zeroes.
    pub path: Option<PathBuf>,
    /// Size in bytes.
    pub size: u64,
    /// For `NBD_OPT_LIST` descriptions.
    pub description: String,
}

const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

/// One lock per base key: two jobs asking for the same base build it once, and a job never
/// waits for another job's different base (its download or its `mkfs`).
#[derive(Debug, Default)]
pub(crate) struct KeyLocks(parking_lot::Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>);

impl KeyLocks {
    /// Waits for, then holds, the lock of `key`.
    pub(crate) async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut map = self.0.lock();
            map.retain(|_, w| w.strong_count() > 0);
            match map.get(key).and_then(Weak::upgrade) {
                Some(m) => m,
                None => {
                    let m = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key.to_string(), Arc::downgrade(&m));
                    m
                }
            }
        };
        m.lock_owned().await
    }
}

/// How a tarball source is named in messages: URLs through the one redaction every fetch error
/// and log line uses (user info and query may hold credentials).
fn tarball_name(src: &Source) -> String {
    match src {
        Source::Data(_) => "inline tarball".into(),
        Source::File(p) => format!("tarball {}", p.display()),
        Source::Url(u) => format!("tarball {}", crate::artifact::redact_url(u)),
        Source::Result(r) => format!("tarball {r}"),
    }
}

/// Prepares (or finds already prepared) the base of `kind` in `dir`. Downloads and registry
/// look-ups run before any lock is taken; only the build of one base key is serialised.
pub(crate) async fn prepare(dir: &Path, cache: &Cache, locks: &KeyLocks, limits: &Limits, kind: &DiskKind) -> Result<BaseImage, DiskError> {
    let max_size = limits.max_disk_size.bytes();
    let too_large = |what: String, size: u64| DiskError::TooLarge { what, size, max: max_size };
    match kind {
        DiskKind::Raw { size_bytes } | DiskKind::Filesystem { size_bytes, .. } if *size_bytes > max_size => {
            Err(too_large("the disk".into(), *size_bytes))
        }
        DiskKind::Raw { size_bytes } => Ok(BaseImage {
            key: format!("raw-{size_bytes}"),
            path: None,
            size: *size_bytes,
            description: format!("raw disk, {size_bytes} bytes"),
        }),
        DiskKind::Image { source, sha256 } => {
            let cached = cache.get(source, *sha256).await?;
            let key = format!("image-{}", cached.digest.hex());
            let path = dir.join(format!("{key}.img"));
            let what = format!("sha256:{}", cached.digest.hex());
            let _g = locks.lock(&key).await;
            if !path.exists() {
                let recipe = image_size(&cached.path)?.filter(|s| *s <= max_size).map(|s| Recipe::image(&cached.digest, s));
                if !from_store(cache, recipe.as_ref(), &path, &what).await {
                    let (src, dst) = (cached.path.clone(), path.clone());
                    blocking(move || build_image(&src, &dst, &what, max_size)).await?;
                    to_store(cache, recipe, &path, format!("image sha256:{}", cached.digest.hex()));
                }
            }
            let size = std::fs::metadata(&path).map_err(|e| DiskError::io(&path, e))?.len();
            if size > max_size {
                return Err(too_large(format!("image sha256:{}", cached.digest.hex()), size));
            }
            Ok(BaseImage { key, path: Some(path), size, description: format!("image sha256:{}", cached.digest.hex()) })
        }
        DiskKind::Filesystem { fstype, size_bytes, contents } => {
            if !matches!(fstype.as_str(), "ext2" | "ext3" | "ext4") {
                return Err(DiskError::Unsupported(format!(
                    "filesystem type {fstype:?}; citron builds ext2, ext3 and ext4 (mkfs -d needs e2fsprogs)"
                )));
            }
            let (tarball, what) = match contents {
                None => (None, "empty".to_string()),
                Some(FsContents::Tarball(src, sha256)) => {
                    let c = cache.get(src, *sha256).await?;
                    let what = format!("tar:{}", c.digest.hex());
                    (Some((c, tarball_name(src))), what)
                }
                // Keyed by the manifest digest the tag points at now: a moved tag makes a new base.
                Some(FsContents::Container(r)) => (None, format!("oci:{}", super::container::registry(cache, r)?.resolve(r).await?)),
            };
            let oci_digest = match contents {
                Some(FsContents::Container(_)) => what.strip_prefix("oci:").map(str::to_string),
                _ => None,
            };
            let mut h = Sha256::new();
            h.update(format!("fs\0{fstype}\0{size_bytes}\0{what}").as_bytes());
            let key = format!("fs-{}", &hex::encode(h.finalize())[..32]);
            let path = dir.join(format!("{key}.img"));
            let _g = locks.lock(&key).await;
            let recipe = Recipe::filesystem(fstype, *size_bytes, &what, max_size);
            let description = format!("{fstype} filesystem ({what})");
            if !path.exists() && !from_store(cache, Some(&recipe), &path, &description).await {
                let (dst, fstype, size) = (path.clone(), fstype.clone(), *size_bytes);
                let layers = match (contents, &tarball) {
                    (Some(FsContents::Container(r)), _) => {
                        let pulled_dir = tmp_next_to(&path, "layers");
                        let digest = oci_digest.as_deref().unwrap_or_default();
                        let pulled = match super::container::registry(cache, r) {
                            Ok(registry) => registry.pull(r, digest, &pulled_dir).await,
                            Err(e) => Err(e),
                        };
                        let pulled = match pulled {
                            Ok(p) => p,
                            Err(e) => {
                                let _ = std::fs::remove_dir_all(&pulled_dir);
                                return Err(e);
                            }
                        };
                        Layers::Oci(r.clone(), pulled_dir, pulled)
                    }
                    (_, Some((t, name))) => Layers::Tarball(name.clone(), t.path.clone()),
                    _ => Layers::None,
                };
                let limits = UnpackLimits::new(limits, size);
                blocking(move || build_filesystem(&dst, &fstype, size, limits, layers)).await?;
                to_store(cache, Some(recipe), &path, description.clone());
            }
            let size = std::fs::metadata(&path).map_err(|e| DiskError::io(&path, e))?.len();
            Ok(BaseImage { key, path: Some(path), size, description })
        }
    }
}

/// Takes the base from the lab's shared store when it has it (`shared_base`); `false` (build
/// it here) when there is no store, no such base, or one that is refused (logged).
async fn from_store(cache: &Cache, recipe: Option<&Recipe>, path: &Path, what: &str) -> bool {
    let (Some(store), Some(recipe)) = (cache.fetchers().blobs(), recipe) else { return false };
    let started = std::time::Instant::now();
    match shared_base::fetch(&store, recipe, path).await {
        Ok(true) => {
            let ms = started.elapsed().as_millis() as u64;
            tracing::info!(base = %what, store = %store.describe(), ms, "prepared disk base taken from the shared store");
            true
        }
        Ok(false) => false,
        Err(error) => {
            tracing::warn!(base = %what, store = %store.describe(), %error, "the shared store's prepared disk base is refused; building it here");
            false
        }
    }
}

/// Leaves a base just built in the lab's shared store, in the background: the job does not
/// wait for the upload, and a failed one costs the other gateways a build, nothing more.
fn to_store(cache: &Cache, recipe: Option<Recipe>, path: &Path, what: String) {
    let (Some(store), Some(recipe)) = (cache.fetchers().blobs(), recipe) else { return };
    let path = path.to_path_buf();
    tokio::spawn(async move {
        let describe = store.describe();
        match shared_base::upload(store, recipe, path).await {
            Ok(()) => tracing::info!(base = %what, store = %describe, "prepared disk base left in the shared store"),
            Err(error) => {
                tracing::warn!(base = %what, store = %describe, %error, "cannot leave the prepared disk base in the shared store")
            }
        }
    });
}

/// The size the raw base of a qcow2 input will have (its virtual size); `None` for a raw
/// input, whose base is a link to the cached input (already in the store under `inputs/`),
/// and for an input that cannot be read (the build says why).
fn image_size(src: &Path) -> Result<Option<u64>, DiskError> {
    let mut header = [0u8; 104];
    let Ok(mut f) = File::open(src) else { return Ok(None) };
    let read = f.read(&mut header).map_err(|e| DiskError::io(src, e))?;
    Ok((read >= 32 && &header[..4] == QCOW2_MAGIC).then(|| qcow2_header(&header).size))
}

async fn blocking(f: impl FnOnce() -> Result<(), DiskError> + Send + 'static) -> Result<(), DiskError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| DiskError::Io { path: PathBuf::new(), source: io::Error::other(e) })?
}

/// A temporary name next to `dst`, unique per process and call.
pub(super) fn tmp_next_to(dst: &Path, what: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dst.with_extension(format!("{what}.{}.{n}.tmp", std::process::id()))
}

/// Finishes a base: read-only, durable, then renamed into place.
pub(super) fn publish(tmp: &Path, dst: &Path) -> Result<(), DiskError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o444)).map_err(|e| DiskError::io(tmp, e))?;
    File::open(tmp).and_then(|f| f.sync_all()).map_err(|e| DiskError::io(tmp, e))?;
    std::fs::rename(tmp, dst).map_err(|e| DiskError::io(dst, e))
}

/// The parts of a qcow2 header that decide whether citron converts it.
struct Qcow2Header {
    /// Bytes 8..16: where the backing file's name is, 0 for none.
    backing_file_offset: u64,
    /// Bytes 24..32: the virtual size.
    size: u64,
    /// Bytes 72..80 (version 3): features a reader must understand; bit 2 is an external data
    /// file, named by the image.
    incompatible_features: u64,
}

fn qcow2_header(h: &[u8; 104]) -> Qcow2Header {
    let be = |at: usize| u64::from_be_bytes(h[at..at + 8].try_into().expect("8 bytes"));
    let version = u32::from_be_bytes(h[4..8].try_into().expect("4 bytes"));
    Qcow2Header { backing_file_offset: be(8), size: be(24), incompatible_features: if version >= 3 { be(72) } else { 0 } }
}

/// Converts `src` (raw, or qcow2 turned raw) into the base `dst`. A qcow2's header is checked
/// first: its virtual size against `max_size` (the raw file would be that long), and it may not
/// name other files (a backing file or an external data file would be read from this host).
fn build_image(src: &Path, dst: &Path, what: &str, max_size: u64) -> Result<(), DiskError> {
    let mut header = [0u8; 104];
    let read = File::open(src).and_then(|mut f| f.read(&mut header)).map_err(|e| DiskError::io(src, e))?;
    let is_qcow2 = read >= 32 && &header[..4] == QCOW2_MAGIC;
    let tmp = tmp_next_to(dst, "img");
    if is_qcow2 {
        let h = qcow2_header(&header);
        let bad = |message: &str| DiskError::BadImage { what: what.to_string(), message: message.to_string() };
        if h.size > max_size {
            return Err(DiskError::TooLarge { what: format!("image {what} (qcow2 virtual size)"), size: h.size, max: max_size });
        }
        if h.backing_file_offset != 0 {
            return Err(bad("a qcow2 image with a backing file; flatten it first (`qemu-img convert -O qcow2`)"));
        }
        if h.incompatible_features & 0b100 != 0 {
            return Err(bad("a qcow2 image with an external data file; flatten it first (`qemu-img convert -O qcow2`)"));
        }
        run(Command::new("qemu-img").args(["convert", "-q", "-f", "qcow2", "-O", "raw"]).arg(src).arg(&tmp))?;
    } else if std::fs::hard_link(src, &tmp).is_err() {
        std::fs::copy(src, &tmp).map_err(|e| DiskError::io(&tmp, e))?;
    }
    publish(&tmp, dst)
}

/// What a filesystem is filled from.
enum Layers {
    None,
    /// A tarball: its name for messages, its cached file.
    Tarball(String, PathBuf),
    /// An image's reference and its downloaded layers (bottom first) in a temporary directory,
    /// removed when done.
    Oci(String, PathBuf, Vec<PathBuf>),
}

/// The size of a filesystem declared without one (`container:` and no `size:`): the unpacked
/// bytes, an inode's worth per entry, a quarter more for ext4's own metadata and 16 MiB of
/// room, rounded up to a MiB.
fn auto_size(stats: TreeStats) -> u64 {
    let need = stats.bytes.saturating_add(stats.entries.saturating_mul(4096));
    let total = need.saturating_add(need / 4).saturating_add(16 << 20);
    total.div_ceil(1 << 20).saturating_mul(1 << 20)
}

fn build_filesystem(dst: &Path, fstype: &str, size: u64, limits: UnpackLimits, layers: Layers) -> Result<(), DiskError> {
    let tree_path = tmp_next_to(dst, "tree");
    let img = tmp_next_to(dst, "img");
    let result = (|| {
        let unpack = |what: &str, e| DiskError::Unpack { what: what.to_string(), error: e };
        let mut tree = Tree::create(&tree_path, limits).map_err(|e| DiskError::io(&tree_path, e))?;
        match &layers {
            Layers::None => {}
            Layers::Tarball(name, t) => {
                let r = open_archive(t, name).map_err(|e| DiskError::io(t, e))?;
                tree.unpack(r, false).map_err(|e| unpack(name, e))?;
            }
            Layers::Oci(reference, _, ls) => {
                for (i, l) in ls.iter().enumerate() {
                    let what = format!("container {reference}, layer {} of {}", i + 1, ls.len());
                    let r = open_archive(l, &what).map_err(|e| DiskError::io(l, e))?;
                    tree.unpack(r, true).map_err(|e| unpack(&format!("container {reference}, layer {i}"), e))?;
                }
            }
        }
        let what = match &layers {
            Layers::Oci(r, ..) => format!("container {r}"),
            Layers::Tarball(n, _) => n.clone(),
            Layers::None => "filesystem".into(),
        };
        let stats = tree.finish().map_err(|e| unpack(&what, e))?;
        let size = if size == 0 { auto_size(stats) } else { size };
        File::create(&img).and_then(|f| f.set_len(size)).map_err(|e| DiskError::io(&img, e))?;
        let mut cmd = Command::new(format!("mkfs.{fstype}"));
        cmd.args(["-F", "-q", "-b", "4096", "-E", "root_owner=0:0", "-d"]).arg(&tree_path).arg(&img);
        run(&mut cmd)?;
        publish(&img, dst)
    })();
    if let Err(e) = remove_tree(&tree_path) {
        tracing::warn!(dir = %tree_path.display(), error = %e, "cannot remove an unpacked tree");
    }
    if let Layers::Oci(_, dir, _) = &layers {
        let _ = std::fs::remove_dir_all(dir);
    }
    if result.is_err() {
        let _ = std::fs::remove_file(&img);
    }
    result
}

/// Removes an unpacked tree (whose directories may have lost their write bits) without
/// following anything in it.
fn remove_tree(p: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            let mut stack = vec![p.to_path_buf()];
            while let Some(d) = stack.pop() {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700));
                for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(e.path());
                    }
                }
            }
            std::fs::remove_dir_all(p)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

fn run(cmd: &mut Command) -> Result<(), DiskError> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|e| DiskError::Tool { tool: tool.clone(), message: e.to_string() })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(DiskError::Tool { tool, message: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_size_leaves_room() {
        let s = auto_size(TreeStats { bytes: 100 << 20, entries: 1000 });
        assert!(s >= (100 << 20) + 1000 * 4096 && s & ((1 << 20) - 1) == 0, "{s}");
        assert_eq!(auto_size(TreeStats::default()), 16 << 20);
    }

    #[tokio::test]
    async fn different_keys_do_not_wait_for_each_other() {
        let locks = KeyLocks::default();
        let _a = locks.lock("a").await;
        let b = tokio::time::timeout(std::time::Duration::from_secs(10), locks.lock("b")).await;
        assert!(b.is_ok(), "key b waited for key a");
        let a2 = tokio::time::timeout(std::time::Duration::from_millis(50), locks.lock("a")).await;
        assert!(a2.is_err(), "key a is held");
    }
}

#[cfg(test)]
mod image_tests {
    use super::*;

    fn qemu_img(args: &[&str]) {
        let ok = Command::new("qemu-img").args(args).output().map(|o| o.status.success());
        assert!(matches!(ok, Ok(true)), "qemu-img {args:?} (qemu-utils installed?)");
    }

    #[test]
    fn qcow2_headers_are_checked_before_conversion() {
        let t = tempfile::tempdir().unwrap();
        let p = |n: &str| t.path().join(n);
        let s = |n: &str| p(n).to_str().unwrap().to_string();
        qemu_img(&["create", "-q", "-f", "qcow2", &s("huge.qcow2"), "8T"]);
        let e = build_image(&p("huge.qcow2"), &p("huge.img"), "sha256:x", 4 << 40).unwrap_err();
        assert!(matches!(e, DiskError::TooLarge { size, .. } if size == 8 << 40), "{e}");
        assert!(!p("huge.img").exists());
        // A backing file would be read from this host and served to the DUT.
        std::fs::write(p("secret"), b"host secret").unwrap();
        qemu_img(&["create", "-q", "-f", "qcow2", "-F", "raw", "-b", &s("secret"), &s("overlay.qcow2"), "1M"]);
        let e = build_image(&p("overlay.qcow2"), &p("overlay.img"), "sha256:y", 4 << 40).unwrap_err();
        assert!(e.to_string().contains("backing file"), "{e}");
        // A plain one converts.
        qemu_img(&["create", "-q", "-f", "qcow2", &s("ok.qcow2"), "1M"]);
        build_image(&p("ok.qcow2"), &p("ok.img"), "sha256:z", 4 << 40).unwrap();
        assert_eq!(std::fs::metadata(p("ok.img")).unwrap().len(), 1 << 20);
    }
}
