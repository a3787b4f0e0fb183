//! `container: docker://...` filesystem contents: an image pulled with the OCI distribution API
//! (Registry HTTP API v2) and its layers flattened into one directory tree.
//!
//! The registry protocol is the `oci-client` crate's: references normalised as Docker does
//! (`alpine` is `docker.io/library/alpine:latest`), manifests (OCI and Docker schema 2, indexes
//! resolved to this machine's OS and architecture), digest checks, and anonymous bearer tokens
//! (Docker Hub). citron adds a sha256 of its own over every blob as it is written, plain HTTP for
//! registries on loopback (HTTPS for all others). The core flattens the layers
//! (`citron_core::block::extract`, which applies whiteouts and lets no entry leave the image's
//! root): this module only speaks to the registry, as [`OciRegistry`].

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;
use citron_core::block::{DiskError, ImageRegistry};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWrite;

/// A parsed `docker://registry/repository:tag` (or `@sha256:...`).
#[derive(Debug, Clone)]
pub(crate) struct ImageRef {
    pub reference: Reference,
    /// The registry is on loopback: spoken to over plain HTTP.
    pub plain_http: bool,
}

fn bad(r: &str, why: impl std::fmt::Display) -> DiskError {
    DiskError::Container { reference: r.to_string(), message: why.to_string() }
}

impl ImageRef {
    pub(crate) fn parse(r: &str) -> Result<ImageRef, DiskError> {
        let rest = r.strip_prefix("docker://").ok_or_else(|| bad(r, "expected docker://[registry/]repository[:tag]"))?;
        let reference: Reference = rest.parse().map_err(|e| bad(r, format!("not an image reference: {e}")))?;
        let host = reference.registry();
        let name = host.split(':').next().unwrap_or("");
        let plain_http = name.starts_with("127.") || name == "localhost" || host.starts_with("[::1]");
        Ok(ImageRef { reference, plain_http })
    }

    fn client(&self, name: &str) -> Result<Client, DiskError> {
        crate::install_crypto_provider();
        let protocol = if self.plain_http {
            ClientProtocol::HttpsExcept(vec![self.reference.resolve_registry().to_string()])
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig {
            protocol,
            connect_timeout: Some(crate::CONNECT_TIMEOUT),
            read_timeout: Some(crate::READ_TIMEOUT),
            user_agent: concat!("citron/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        };
        Client::try_from(config).map_err(|e| bad(name, e))
    }
}

/// An I/O error on a layer file: a full disk named as such (this disk fails, nothing else).
fn io_error(path: &Path, source: io::Error) -> DiskError {
    if matches!(source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
        return DiskError::NoSpace { path: path.to_path_buf() };
    }
    DiskError::Io { path: path.to_path_buf(), source }
}

/// Container registries over the OCI distribution API (anonymous pulls; plain HTTP for
/// registries on loopback, HTTPS for all others).
#[derive(Debug, Clone, Copy, Default)]
pub struct OciRegistry;

#[async_trait]
impl ImageRegistry for OciRegistry {
    async fn resolve(&self, reference: &str) -> Result<String, DiskError> {
        let image = ImageRef::parse(reference)?;
        let client = image.client(reference)?;
        let (_, digest) = client.pull_image_manifest(&image.reference, &RegistryAuth::Anonymous).await.map_err(|e| bad(reference, e))?;
        Ok(digest)
    }

    async fn pull(&self, reference: &str, digest: &str, dir: &Path) -> Result<Vec<PathBuf>, DiskError> {
        let image = ImageRef::parse(reference)?;
        let client = image.client(reference)?;
        let pinned = image.reference.clone_with_digest(digest.to_string());
        let (manifest, _) = client.pull_image_manifest(&pinned, &RegistryAuth::Anonymous).await.map_err(|e| bad(reference, e))?;
        tokio::fs::create_dir_all(dir).await.map_err(|e| io_error(dir, e))?;
        let mut out = Vec::with_capacity(manifest.layers.len());
        for (i, layer) in manifest.layers.iter().enumerate() {
            if layer.media_type.contains("zstd") {
                return Err(bad(reference, format!("layer {} is zstd-compressed; citron reads tar and tar+gzip layers", layer.digest)));
            }
            let want = layer
                .digest
                .strip_prefix("sha256:")
                .ok_or_else(|| bad(reference, format!("layer digest {} is not sha256", layer.digest)))?;
            let p = dir.join(format!("layer-{i}"));
            let file = tokio::fs::File::create(&p).await.map_err(|e| io_error(&p, e))?;
            let mut w = Sha256Writer { inner: file, hash: Sha256::new() };
            client.pull_blob(&pinned, layer, &mut w).await.map_err(|e| bad(reference, format!("blob {}: {e}", layer.digest)))?;
            w.inner.sync_all().await.map_err(|e| io_error(&p, e))?;
            let got = hex::encode(w.hash.finalize());
            if got != want {
                return Err(bad(reference, format!("blob {} arrived with sha256 {got}", layer.digest)));
            }
            out.push(p);
        }
        Ok(out)
    }
}

/// Hashes what it writes to `inner`.
struct Sha256Writer {
    inner: tokio::fs::File,
    hash: Sha256,
}

impl AsyncWrite for Sha256Writer {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse() {
        let r = ImageRef::parse("docker://alpine").unwrap();
        assert_eq!((r.reference.registry(), r.reference.repository(), r.reference.tag()), ("docker.io", "library/alpine", Some("latest")));
        assert!(!r.plain_http);
        let r = ImageRef::parse("docker://127.0.0.1:5000/test/img:v1").unwrap();
        assert_eq!((r.reference.registry(), r.reference.repository(), r.reference.tag()), ("127.0.0.1:5000", "test/img", Some("v1")));
        assert!(r.plain_http);
        assert!(ImageRef::parse("docker://localhost:5000/x").unwrap().plain_http);
        assert!(!ImageRef::parse("docker://localhost.example.com/x").unwrap().plain_http);
        let d = format!("sha256:{}", "0".repeat(64));
        let r = ImageRef::parse(&format!("docker://quay.io/a/b@{d}")).unwrap();
        assert_eq!(r.reference.digest(), Some(d.as_str()));
        assert!(!r.plain_http);
        assert!(ImageRef::parse("alpine").is_err());
        assert!(ImageRef::parse("docker://host.io/../x").is_err());
        assert!(ImageRef::parse("docker://").is_err());
        assert!(ImageRef::parse("docker://quay.io/Upper/case").is_err());
    }
}
