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

/// Prepares (or finds already prepared) the base of `kind` in `dir`; no disk larger than
/// `max_size` is made (sizes are checked at validation too, but an image's virtual size is only
/// known once it is fetched, and jobs built in code skip validation).
pub(crate) async fn prepare(dir: &Path, cache: &Cache, kind: &DiskKind, max_size: u64) -> Result<BaseImage, DiskError> {
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
            if !path.exists() {
                let (src, dst) = (cached.path.clone(), path.clone());
                blocking(move || build_image(&src, &dst, &what, max_size)).await?;
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
