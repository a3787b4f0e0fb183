//! `container: docker://...` filesystem contents: an image pulled with the OCI distribution API
//! (Registry HTTP API v2) and its layers flattened into one directory tree.
//!
//! The registry protocol is the `oci-client` crate's: references normalised as Docker does
//! (`alpine` is `docker.io/library/alpine:latest`), manifests (OCI and Docker schema 2, indexes
//! resolved to this machine's OS and architecture), digest checks, and anonymous bearer tokens
//! (Docker Hub). citron adds a sha256 of its own over every blob as it is written, plain HTTP for
//! registries on loopback (HTTPS for all others), and the flattening below: whiteouts, and no
//! entry that leaves the image's root.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWrite;

use super::DiskError;

/// A parsed `docker://registry/repository:tag` (or `@sha256:...`).
#[derive(Debug, Clone)]
pub(crate) struct ImageRef {
    pub reference: Reference,
    /// The registry is on loopback: spoken to over plain HTTP.
    pub plain_http: bool,
}

fn bad(r: &str, why: impl std::fmt::Display) -> DiskError {
    DiskError::Container {
        reference: r.to_string(),
        message: why.to_string(),
    }
}

impl ImageRef {
    pub(crate) fn parse(r: &str) -> Result<ImageRef, DiskError> {
        let rest = r
            .strip_prefix("docker://")
            .ok_or_else(|| bad(r, "expected docker://[registry/]repository[:tag]"))?;
        let reference: Reference = rest
            .parse()
            .map_err(|e| bad(r, format!("not an image reference: {e}")))?;
        let host = reference.registry();
        let name = host.split(':').next().unwrap_or("");
        let plain_http =
            name.starts_with("127.") || name == "localhost" || host.starts_with("[::1]");
        Ok(ImageRef {
            reference,
            plain_http,
        })
    }

    fn client(&self, name: &str) -> Result<Client, DiskError> {
        crate::artifact::install_crypto_provider();
        let protocol = if self.plain_http {
            ClientProtocol::HttpsExcept(vec![self.reference.resolve_registry().to_string()])
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig {
            protocol,
            connect_timeout: Some(crate::artifact::CONNECT_TIMEOUT),
            read_timeout: Some(crate::artifact::READ_TIMEOUT),
            user_agent: concat!("citron/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        };
        Client::try_from(config).map_err(|e| bad(name, e))
    }
}

/// A pulled image: its layers, bottom first, as files in the directory given to [`pull`].
pub(crate) struct Pulled {
    pub layers: Vec<PathBuf>,
}

/// Resolves `reference` to the digest of its image manifest for this machine (one or two small
/// requests).
pub(crate) async fn resolve(reference: &str) -> Result<String, DiskError> {
    let image = ImageRef::parse(reference)?;
    let client = image.client(reference)?;
    let (_, digest) = client
        .pull_image_manifest(&image.reference, &RegistryAuth::Anonymous)
        .await
        .map_err(|e| bad(reference, e))?;
    Ok(digest)
}

/// Pulls every layer of the image manifest `digest` (from [`resolve`]) of `reference`'s
/// repository into `dir`.
pub(crate) async fn pull(reference: &str, digest: &str, dir: &Path) -> Result<Pulled, DiskError> {
    let image = ImageRef::parse(reference)?;
    let client = image.client(reference)?;
    let pinned = image.reference.clone_with_digest(digest.to_string());
    let (manifest, _) = client
        .pull_image_manifest(&pinned, &RegistryAuth::Anonymous)
        .await
        .map_err(|e| bad(reference, e))?;
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| DiskError::io(dir, e))?;
    let mut out = Vec::with_capacity(manifest.layers.len());
    for (i, layer) in manifest.layers.iter().enumerate() {
        if layer.media_type.contains("zstd") {
            return Err(bad(
                reference,
                format!(
                    "layer {} is zstd-compressed; citron reads tar and tar+gzip layers",
                    layer.digest
                ),
            ));
        }
        let want = layer.digest.strip_prefix("sha256:").ok_or_else(|| {
            bad(
                reference,
                format!("layer digest {} is not sha256", layer.digest),
            )
        })?;
        let p = dir.join(format!("layer-{i}"));
        let file = tokio::fs::File::create(&p)
            .await
            .map_err(|e| DiskError::io(&p, e))?;
        let mut w = Sha256Writer {
            inner: file,
            hash: Sha256::new(),
        };
        client
            .pull_blob(&pinned, layer, &mut w)
            .await
            .map_err(|e| bad(reference, format!("blob {}: {e}", layer.digest)))?;
        w.inner.sync_all().await.map_err(|e| DiskError::io(&p, e))?;
        let got = hex::encode(w.hash.finalize());
        if got != want {
            return Err(bad(
                reference,
                format!("blob {} arrived with sha256 {got}", layer.digest),
            ));
        }
        out.push(p);
    }
    Ok(Pulled { layers: out })
}

/// Hashes what it writes to `inner`.
struct Sha256Writer {
    inner: tokio::fs::File,
    hash: Sha256,
}

impl AsyncWrite for Sha256Writer {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.hash.update(&buf[..n]);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The canonical form of `p` must lie inside `root` (no symlink leads out).
fn inside(root: &Path, p: &Path) -> bool {
    match (root.canonicalize(), p.canonicalize()) {
        (Ok(r), Ok(c)) => c.starts_with(r),
        _ => false,
    }
}

/// Applies one layer (tar or tar+gzip) on `root`: `.wh.NAME` deletes NAME from lower layers,
/// `.wh..wh..opq` empties its directory, anything else is unpacked as in a tarball.
pub(crate) fn apply_layer(layer: &Path, root: &Path) -> Result<(), DiskError> {
    let badl = |m: String| DiskError::Tarball {
        path: layer.to_path_buf(),
        message: m,
    };
    let mut magic = [0u8; 2];
    let gz = File::open(layer)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == [0x1f, 0x8b];
    let f = File::open(layer).map_err(|e| DiskError::io(layer, e))?;
    let reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(f))
    } else {
        Box::new(f)
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    for entry in archive.entries().map_err(|e| badl(e.to_string()))? {
        let mut entry = entry.map_err(|e| badl(e.to_string()))?;
        let path = entry.path().map_err(|e| badl(e.to_string()))?.into_owned();
        if path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(badl(format!(
                "entry {} leaves the image's root",
                path.display()
            )));
        }
        let rel: PathBuf = path
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        let file_name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(hidden) = file_name.strip_prefix(".wh.") {
            let parent = root.join(rel.parent().unwrap_or(Path::new("")));
            if !parent.exists() {
                continue;
            }
            if !inside(root, &parent) {
                return Err(badl(format!(
                    "whiteout {} leaves the image's root",
                    path.display()
                )));
            }
            if hidden == ".wh..opq" {
                for e in std::fs::read_dir(&parent)
                    .map_err(|e| DiskError::io(&parent, e))?
                    .flatten()
                {
                    remove_any(&e.path()).map_err(|e| DiskError::io(&parent, e))?;
                }
            } else {
                let victim = parent.join(hidden);
                remove_any(&victim).map_err(|e| DiskError::io(&victim, e))?;
            }
            continue;
        }
        use tar::EntryType as T;
        let kind = entry.header().entry_type();
        match kind {
            T::Regular | T::Directory | T::Symlink | T::Link | T::GNUSparse | T::Continuous => {}
            other => {
                tracing::warn!(entry = %path.display(), kind = ?other, "skipping layer entry citron cannot create without root");
                continue;
            }
        }
        // A directory replacing a file or the reverse: the upper layer wins.
        let target = root.join(&rel);
        if let Ok(meta) = std::fs::symlink_metadata(&target) {
            if meta.is_dir() != (kind == T::Directory)
                && inside(root, target.parent().unwrap_or(root))
            {
                remove_any(&target).map_err(|e| DiskError::io(&target, e))?;
            }
        }
        match entry.unpack_in(root) {
            Ok(true) => {}
            Ok(false) => {
                return Err(badl(format!(
                    "entry {} leaves the image's root",
                    path.display()
                )))
            }
            Err(e) => return Err(badl(format!("{}: {e}", path.display()))),
        }
    }
    Ok(())
}

fn remove_any(p: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse() {
        let r = ImageRef::parse("docker://alpine").unwrap();
        assert_eq!(
            (
                r.reference.registry(),
                r.reference.repository(),
                r.reference.tag()
            ),
            ("docker.io", "library/alpine", Some("latest"))
        );
        assert!(!r.plain_http);
        let r = ImageRef::parse("docker://127.0.0.1:5000/test/img:v1").unwrap();
        assert_eq!(
            (
                r.reference.registry(),
                r.reference.repository(),
                r.reference.tag()
            ),
            ("127.0.0.1:5000", "test/img", Some("v1"))
        );
        assert!(r.plain_http);
        assert!(
            ImageRef::parse("docker://localhost:5000/x")
                .unwrap()
                .plain_http
        );
        assert!(
            !ImageRef::parse("docker://localhost.example.com/x")
                .unwrap()
                .plain_http
        );
        let d = format!("sha256:{}", "0".repeat(64));
        let r = ImageRef::parse(&format!("docker://quay.io/a/b@{d}")).unwrap();
        assert_eq!(r.reference.digest(), Some(d.as_str()));
        assert!(!r.plain_http);
        assert!(ImageRef::parse("alpine").is_err());
        assert!(ImageRef::parse("docker://host.io/../x").is_err());
        assert!(ImageRef::parse("docker://").is_err());
        assert!(ImageRef::parse("docker://quay.io/Upper/case").is_err());
    }

    fn layer(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            match data {
                Some(d) => {
                    h.set_size(d.len() as u64);
                    h.set_mode(0o644);
                    h.set_entry_type(tar::EntryType::Regular);
                    b.append_data(&mut h, name, *d).unwrap();
                }
                None => {
                    h.set_size(0);
                    h.set_mode(0o755);
                    h.set_entry_type(tar::EntryType::Directory);
                    b.append_data(&mut h, name, &[][..]).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn whiteouts_remove_lower_files() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let l1 = t.path().join("l1");
        std::fs::write(
            &l1,
            layer(&[
                ("etc", None),
                ("etc/a", Some(b"a")),
                ("etc/b", Some(b"b")),
                ("var", None),
                ("var/x", Some(b"x")),
            ]),
        )
        .unwrap();
        let l2 = t.path().join("l2");
        std::fs::write(
            &l2,
            layer(&[
                ("etc/.wh.a", Some(b"")),
                ("var/.wh..wh..opq", Some(b"")),
                ("var/y", Some(b"y")),
            ]),
        )
        .unwrap();
        apply_layer(&l1, &root).unwrap();
        apply_layer(&l2, &root).unwrap();
        assert!(!root.join("etc/a").exists());
        assert_eq!(std::fs::read(root.join("etc/b")).unwrap(), b"b");
        assert!(!root.join("var/x").exists());
        assert_eq!(std::fs::read(root.join("var/y")).unwrap(), b"y");
        assert!(!root.join("etc/.wh.a").exists());
    }
}
