//! `container: docker://...` filesystem contents: an image pulled with the OCI distribution API
//! (Registry HTTP API v2) and its layers flattened into one directory tree.
//!
//! Only what a pull needs: manifests (OCI and Docker schema 2, indexes resolved to linux on this
//! machine's architecture), blobs verified against their sha256, and anonymous bearer tokens
//! (Docker Hub). Registries on loopback are spoken to over plain HTTP, all others over HTTPS.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use futures::StreamExt;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::DiskError;

const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// A parsed `docker://registry/repository:tag` (or `@sha256:...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageRef {
    /// `http://127.0.0.1:5000` or `https://registry-1.docker.io`.
    pub base: String,
    /// `library/alpine`.
    pub repository: String,
    /// Tag or digest.
    pub reference: String,
}

fn bad(r: &str, why: &str) -> DiskError {
    DiskError::Container { reference: r.to_string(), message: why.to_string() }
}

impl ImageRef {
    pub(crate) fn parse(r: &str) -> Result<ImageRef, DiskError> {
        let rest = r.strip_prefix("docker://").ok_or_else(|| bad(r, "expected docker://[registry/]repository[:tag]"))?;
        let (host, path) = match rest.split_once('/') {
            Some((h, p)) if h.contains('.') || h.contains(':') || h == "localhost" => (h.to_string(), p.to_string()),
            _ => ("docker.io".to_string(), rest.to_string()),
        };
        let (path, reference) = if let Some((p, d)) = path.split_once('@') {
            (p.to_string(), d.to_string())
        } else {
            match path.rsplit_once(':') {
                Some((p, t)) if !t.contains('/') => (p.to_string(), t.to_string()),
                _ => (path.clone(), "latest".to_string()),
            }
        };
        if path.is_empty() || path.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return Err(bad(r, "empty or invalid repository name"));
        }
        let repository = if host == "docker.io" && !path.contains('/') { format!("library/{path}") } else { path };
        let loopback = host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]");
        let base = match host.as_str() {
            "docker.io" => "https://registry-1.docker.io".to_string(),
            h if loopback => format!("http://{h}"),
            h => format!("https://{h}"),
        };
        Ok(ImageRef { base, repository, reference })
    }
}

struct Registry {
    http: reqwest::Client,
    image: ImageRef,
    name: String,
    token: Option<String>,
}

impl Registry {
    fn err(&self, m: impl std::fmt::Display) -> DiskError {
        bad(&self.name, &m.to_string())
    }

    async fn get(&mut self, path: &str, accept: Option<&str>) -> Result<reqwest::Response, DiskError> {
        let url = format!("{}/v2/{}/{path}", self.image.base, self.image.repository);
        for attempt in 0..2 {
            let mut req = self.http.get(&url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.map_err(|e| self.err(format!("{url}: {e}")))?;
            if resp.status() == reqwest::StatusCode::UNAUTHORIZED && attempt == 0 {
                let challenge = resp.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                self.token = Some(self.fetch_token(&challenge).await?);
                continue;
            }
            if !resp.status().is_success() {
                return Err(self.err(format!("{url}: the registry answered {}", resp.status())));
            }
            return Ok(resp);
        }
        Err(self.err(format!("{url}: not authorised (citron pulls anonymously)")))
    }

    /// Anonymous bearer token from a `WWW-Authenticate: Bearer realm=..,service=..,scope=..`.
    async fn fetch_token(&self, challenge: &str) -> Result<String, DiskError> {
        let params = challenge.strip_prefix("Bearer ").ok_or_else(|| self.err("the registry wants credentials"))?;
        let mut realm = None;
        let mut query = Vec::new();
        for part in params.split(',') {
            if let Some((k, v)) = part.trim().split_once('=') {
                let v = v.trim_matches('"').to_string();
                if k == "realm" {
                    realm = Some(v);
                } else {
                    query.push((k.to_string(), v));
                }
            }
        }
        let realm = realm.ok_or_else(|| self.err("bearer challenge without realm"))?;
        let mut url = url::Url::parse(&realm).map_err(|e| self.err(format!("token realm {realm}: {e}")))?;
        url.query_pairs_mut().extend_pairs(&query);
        let resp = self.http.get(url).send().await.map_err(|e| self.err(format!("{realm}: {e}")))?;
        if !resp.status().is_success() {
            return Err(self.err(format!("{realm}: the token service answered {}", resp.status())));
        }
        let b = resp.bytes().await.map_err(|e| self.err(e))?;
        let v: Value = serde_json::from_slice(&b).map_err(|e| self.err(format!("token: {e}")))?;
        v.get("token").or_else(|| v.get("access_token")).and_then(Value::as_str).map(str::to_string).ok_or_else(|| self.err("no token in the token service's answer"))
    }

    async fn manifest(&mut self, reference: &str) -> Result<(Value, String, String), DiskError> {
        let resp = self.get(&format!("manifests/{reference}"), Some(MANIFEST_TYPES)).await?;
        let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let body = resp.bytes().await.map_err(|e| self.err(e))?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        if reference.starts_with("sha256:") && reference != digest {
            return Err(self.err(format!("manifest digest {digest} is not the {reference} asked for")));
        }
        let v: Value = serde_json::from_slice(&body).map_err(|e| self.err(format!("manifest: {e}")))?;
        let media = v.get("mediaType").and_then(Value::as_str).unwrap_or(&ct).to_string();
        Ok((v, media, digest))
    }

    /// The image manifest and its digest, resolving an index to linux on this architecture.
    async fn image_manifest(&mut self) -> Result<(Value, String), DiskError> {
        let reference = self.image.reference.clone();
        let (v, media, digest) = self.manifest(&reference).await?;
        if !(media.contains("index") || media.contains("manifest.list")) {
            return Ok((v, digest));
        }
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        let entry = v
            .get("manifests")
            .and_then(Value::as_array)
            .and_then(|m| {
                m.iter().find(|e| {
                    let p = e.get("platform");
                    p.and_then(|p| p.get("os")).and_then(Value::as_str) == Some("linux")
                        && p.and_then(|p| p.get("architecture")).and_then(Value::as_str) == Some(arch)
                })
            })
            .and_then(|e| e.get("digest")).and_then(Value::as_str)
            .ok_or_else(|| self.err(format!("the image has no linux/{arch} variant")))?
            .to_string();
        let (m, _, _) = self.manifest(&entry).await?;
        Ok((m, entry))
    }

    /// Downloads blob `digest` into `dst`, verifying it.
    async fn blob(&mut self, digest: &str, dst: &Path) -> Result<(), DiskError> {
        let want = digest.strip_prefix("sha256:").ok_or_else(|| self.err(format!("unsupported digest {digest}")))?.to_string();
        let resp = self.get(&format!("blobs/{digest}"), None).await?;
        let mut f = File::create(dst).map_err(|e| DiskError::io(dst, e))?;
        let mut h = Sha256::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.err(format!("blob {digest}: {e}")))?;
            h.update(&chunk);
            f.write_all(&chunk).map_err(|e| DiskError::io(dst, e))?;
        }
        let got = hex::encode(h.finalize());
        if got != want {
            return Err(self.err(format!("blob {digest} arrived with sha256 {got}")));
        }
        Ok(())
    }
}

/// A pulled image: its layers, bottom first, as files in the directory given to [`pull`].
pub(crate) struct Pulled {
    pub layers: Vec<PathBuf>,
}

/// Resolves `reference` to the digest of its image manifest for this machine (one or two small
/// requests).
pub(crate) async fn resolve(reference: &str) -> Result<String, DiskError> {
    let mut reg = registry(reference)?;
    Ok(reg.image_manifest().await?.1)
}

fn registry(reference: &str) -> Result<Registry, DiskError> {
    let image = ImageRef::parse(reference)?;
    crate::artifact::install_crypto_provider();
    let http = reqwest::Client::builder()
        .connect_timeout(crate::artifact::CONNECT_TIMEOUT)
        .read_timeout(crate::artifact::READ_TIMEOUT)
        .user_agent(concat!("citron/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| bad(reference, &e.to_string()))?;
    Ok(Registry { http, image, name: reference.to_string(), token: None })
}

/// Pulls every layer of the image manifest `digest` (from [`resolve`]) of `reference`'s
/// repository into `dir`.
pub(crate) async fn pull(reference: &str, digest: &str, dir: &Path) -> Result<Pulled, DiskError> {
    let mut reg = registry(reference)?;
    reg.image.reference = digest.to_string();
    let (manifest, _) = reg.image_manifest().await?;
    let layers = manifest.get("layers").and_then(Value::as_array).cloned().ok_or_else(|| reg.err("manifest without layers"))?;
    std::fs::create_dir_all(dir).map_err(|e| DiskError::io(dir, e))?;
    let mut out = Vec::with_capacity(layers.len());
    for (i, l) in layers.iter().enumerate() {
        let digest = l.get("digest").and_then(Value::as_str).ok_or_else(|| reg.err("layer without digest"))?.to_string();
        let media = l.get("mediaType").and_then(Value::as_str).unwrap_or("");
        if media.contains("zstd") {
            return Err(reg.err(format!("layer {digest} is zstd-compressed; citron reads tar and tar+gzip layers")));
        }
        let p = dir.join(format!("layer-{i}"));
        reg.blob(&digest, &p).await?;
        out.push(p);
    }
    Ok(Pulled { layers: out })
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
    let badl = |m: String| DiskError::Tarball { path: layer.to_path_buf(), message: m };
    let mut magic = [0u8; 2];
    let gz = File::open(layer).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && magic == [0x1f, 0x8b];
    let f = File::open(layer).map_err(|e| DiskError::io(layer, e))?;
    let reader: Box<dyn Read> = if gz { Box::new(flate2::read::GzDecoder::new(f)) } else { Box::new(f) };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    for entry in archive.entries().map_err(|e| badl(e.to_string()))? {
        let mut entry = entry.map_err(|e| badl(e.to_string()))?;
        let path = entry.path().map_err(|e| badl(e.to_string()))?.into_owned();
        if path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(badl(format!("entry {} leaves the image's root", path.display())));
        }
        let rel: PathBuf = path.components().filter(|c| matches!(c, Component::Normal(_))).collect();
        let file_name = rel.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(hidden) = file_name.strip_prefix(".wh.") {
            let parent = root.join(rel.parent().unwrap_or(Path::new("")));
            if !parent.exists() {
                continue;
            }
            if !inside(root, &parent) {
                return Err(badl(format!("whiteout {} leaves the image's root", path.display())));
            }
            if hidden == ".wh..opq" {
                for e in std::fs::read_dir(&parent).map_err(|e| DiskError::io(&parent, e))?.flatten() {
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
            if meta.is_dir() != (kind == T::Directory) && inside(root, target.parent().unwrap_or(root)) {
                remove_any(&target).map_err(|e| DiskError::io(&target, e))?;
            }
        }
        match entry.unpack_in(root) {
            Ok(true) => {}
            Ok(false) => return Err(badl(format!("entry {} leaves the image's root", path.display()))),
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
        assert_eq!((r.base.as_str(), r.repository.as_str(), r.reference.as_str()), ("https://registry-1.docker.io", "library/alpine", "latest"));
        let r = ImageRef::parse("docker://127.0.0.1:5000/test/img:v1").unwrap();
        assert_eq!((r.base.as_str(), r.repository.as_str(), r.reference.as_str()), ("http://127.0.0.1:5000", "test/img", "v1"));
        let r = ImageRef::parse("docker://quay.io/a/b@sha256:00").unwrap();
        assert_eq!(r.reference, "sha256:00");
        assert!(ImageRef::parse("alpine").is_err());
        assert!(ImageRef::parse("docker://host.io/../x").is_err());
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
        std::fs::write(&l1, layer(&[("etc", None), ("etc/a", Some(b"a")), ("etc/b", Some(b"b")), ("var", None), ("var/x", Some(b"x"))])).unwrap();
        let l2 = t.path().join("l2");
        std::fs::write(&l2, layer(&[("etc/.wh.a", Some(b"")), ("var/.wh..wh..opq", Some(b"")), ("var/y", Some(b"y"))])).unwrap();
        apply_layer(&l1, &root).unwrap();
        apply_layer(&l2, &root).unwrap();
        assert!(!root.join("etc/a").exists());
        assert_eq!(std::fs::read(root.join("etc/b")).unwrap(), b"b");
        assert!(!root.join("var/x").exists());
        assert_eq!(std::fs::read(root.join("var/y")).unwrap(), b"y");
        assert!(!root.join("etc/.wh.a").exists());
    }
}
