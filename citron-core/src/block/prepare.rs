//! Turning a job's [`DiskKind`] into an immutable base image, once per content.
//!
//! Bases are keyed by what they are made of (the source's sha256, the filesystem's type and size),
//! so two jobs asking for the same disk share one file, and a prepared base is never written again:
//! DUT writes go to their overlays.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

use super::DiskError;
use crate::artifact::Cache;
use crate::job::{DiskKind, FsContents};

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

/// Prepares (or finds already prepared) the base of `kind` in `dir`.
pub(crate) async fn prepare(dir: &Path, cache: &Cache, kind: &DiskKind) -> Result<BaseImage, DiskError> {
    match kind {
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
            if !path.exists() {
                let (src, dst) = (cached.path.clone(), path.clone());
                blocking(move || build_image(&src, &dst)).await?;
            }
            let size = std::fs::metadata(&path).map_err(|e| DiskError::io(&path, e))?.len();
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
                Some(FsContents::Tarball(src)) => {
                    let c = cache.get(src, None).await?;
                    let what = format!("tar:{}", c.digest.hex());
                    (Some(c), what)
                }
                // Keyed by the manifest digest the tag points at now: a moved tag makes a new base.
                Some(FsContents::Container(r)) => (None, format!("oci:{}", super::container::resolve(r).await?)),
            };
            let oci_digest = match contents {
                Some(FsContents::Container(_)) => what.strip_prefix("oci:").map(str::to_string),
                _ => None,
            };
            let mut h = Sha256::new();
            h.update(format!("fs\0{fstype}\0{size_bytes}\0{what}").as_bytes());
            let key = format!("fs-{}", &hex::encode(h.finalize())[..32]);
            let path = dir.join(format!("{key}.img"));
            if !path.exists() {
                let (dst, fstype, size) = (path.clone(), fstype.clone(), *size_bytes);
                let layers = match (contents, &tarball) {
                    (Some(FsContents::Container(r)), _) => {
                        let pulled_dir = tmp_next_to(&path, "layers");
                        let digest = oci_digest.as_deref().unwrap_or_default();
                        let pulled = super::container::pull(r, digest, &pulled_dir).await;
                        let pulled = match pulled {
                            Ok(p) => p,
                            Err(e) => {
                                let _ = std::fs::remove_dir_all(&pulled_dir);
                                return Err(e);
                            }
                        };
                        Layers::Oci(pulled_dir, pulled.layers)
                    }
                    (_, Some(t)) => Layers::Tarball(t.path.clone()),
                    _ => Layers::None,
                };
                blocking(move || build_filesystem(&dst, &fstype, size, layers)).await?;
            }
            Ok(BaseImage { key, path: Some(path), size: *size_bytes, description: format!("{fstype} filesystem ({what})") })
        }
    }
}

async fn blocking(f: impl FnOnce() -> Result<(), DiskError> + Send + 'static) -> Result<(), DiskError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| DiskError::Io { path: PathBuf::new(), source: io::Error::other(e) })?
}

/// A temporary name next to `dst`, unique per process and call.
fn tmp_next_to(dst: &Path, what: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dst.with_extension(format!("{what}.{}.{n}.tmp", std::process::id()))
}

/// Finishes a base: read-only, durable, then renamed into place.
fn publish(tmp: &Path, dst: &Path) -> Result<(), DiskError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o444)).map_err(|e| DiskError::io(tmp, e))?;
    File::open(tmp).and_then(|f| f.sync_all()).map_err(|e| DiskError::io(tmp, e))?;
    std::fs::rename(tmp, dst).map_err(|e| DiskError::io(dst, e))
}

fn build_image(src: &Path, dst: &Path) -> Result<(), DiskError> {
    let mut magic = [0u8; 4];
    let is_qcow2 = File::open(src).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == QCOW2_MAGIC;
    let tmp = tmp_next_to(dst, "img");
    if is_qcow2 {
        run(Command::new("qemu-img").args(["convert", "-q", "-f", "qcow2", "-O", "raw"]).arg(src).arg(&tmp))?;
    } else if std::fs::hard_link(src, &tmp).is_err() {
        std::fs::copy(src, &tmp).map_err(|e| DiskError::io(&tmp, e))?;
    }
    publish(&tmp, dst)
}

/// What a filesystem is filled from.
enum Layers {
    None,
    Tarball(PathBuf),
    /// Downloaded layers (bottom first) in a temporary directory, removed when done.
    Oci(PathBuf, Vec<PathBuf>),
}

fn build_filesystem(dst: &Path, fstype: &str, size: u64, layers: Layers) -> Result<(), DiskError> {
    let tree = tmp_next_to(dst, "tree");
    let img = tmp_next_to(dst, "img");
    let result = (|| {
        std::fs::create_dir_all(&tree).map_err(|e| DiskError::io(&tree, e))?;
        match &layers {
            Layers::None => {}
            Layers::Tarball(t) => unpack_tarball(t, &tree)?,
            Layers::Oci(_, ls) => {
                for l in ls {
                    super::container::apply_layer(l, &tree)?;
                }
            }
        }
        File::create(&img).and_then(|f| f.set_len(size)).map_err(|e| DiskError::io(&img, e))?;
        let mut cmd = Command::new(format!("mkfs.{fstype}"));
        cmd.args(["-F", "-q", "-b", "4096", "-E", "root_owner=0:0", "-d"]).arg(&tree).arg(&img);
        run(&mut cmd)?;
        publish(&img, dst)
    })();
    let _ = std::fs::remove_dir_all(&tree);
    if let Layers::Oci(dir, _) = &layers {
        let _ = std::fs::remove_dir_all(dir);
    }
    if result.is_err() {
        let _ = std::fs::remove_file(&img);
    }
    result
}

/// Unpacks a (gzipped or plain) tarball into `root`. Entries that would land outside `root`
/// (absolute paths, `..`, through a symlink) are refused, device nodes skipped: citron runs
/// without root.
pub(crate) fn unpack_tarball(tarball: &Path, root: &Path) -> Result<(), DiskError> {
    let bad = |m: String| DiskError::Tarball { path: tarball.to_path_buf(), message: m };
    let mut f = File::open(tarball).map_err(|e| DiskError::io(tarball, e))?;
    let mut magic = [0u8; 2];
    let gz = f.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    let f = File::open(tarball).map_err(|e| DiskError::io(tarball, e))?;
    let reader: Box<dyn Read> = if gz { Box::new(flate2::read::GzDecoder::new(f)) } else { Box::new(f) };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    for entry in archive.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let path = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        if path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(bad(format!("entry {} leaves the archive's root", path.display())));
        }
        use tar::EntryType as T;
        match entry.header().entry_type() {
            T::Regular | T::Directory | T::Symlink | T::Link | T::GNUSparse | T::Continuous => {}
            other => {
                tracing::warn!(entry = %path.display(), kind = ?other, "skipping tar entry citron cannot create without root");
                continue;
            }
        }
        match entry.unpack_in(root) {
            Ok(true) => {}
            Ok(false) => return Err(bad(format!("entry {} leaves the archive's root", path.display()))),
            Err(e) => return Err(bad(format!("{}: {e}", path.display()))),
        }
    }
    Ok(())
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

    fn tarball(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            // set_path refuses "..", so write the raw name as a hostile archive would.
            let raw = &mut h.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn tar_entries_cannot_escape() {
        let t = tempfile::tempdir().unwrap();
        let tb = t.path().join("evil.tar");
        std::fs::write(&tb, tarball(&[("ok.txt", b"fine"), ("../escaped.txt", b"bad")])).unwrap();
        let root = t.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let err = unpack_tarball(&tb, &root).unwrap_err();
        assert!(err.to_string().contains("leaves the archive"), "{err}");
        assert!(!t.path().join("escaped.txt").exists());
        assert_eq!(std::fs::read(root.join("ok.txt")).unwrap(), b"fine");
    }
}
