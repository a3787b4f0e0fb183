//! citron's network sources, kept out of `citron-core` (which decides, with no sockets).
//!
//! # Overview
//! - [`Network`]: the [`Fetchers`] a running lab gives its cache: `http://` and `https://`
//!   URLs ([`HttpSource`], reqwest with rustls and ring), `s3://bucket/key` ([`S3Source`],
//!   object_store, configured by the lab file's [`S3Config`]) and container images
//!   ([`OciRegistry`], the OCI distribution API through oci-client).
//! - [`SharedStore`]: the lab's shared artifact store (`store:` in the lab file), the core's
//!   [`BlobStore`] on object_store, through which gateways find what another gateway fetched.
//! - [`gateway`]: a [`Gateway`] for a lab with [`Network`]: what `citron serve`, the Python
//!   bindings and the end-to-end tests start.
//!
//! Everything else (the cache, its policy, the download reservations and concurrency, grants,
//! redaction, extracting image layers beneath a directory) is the core's: this crate only
//! moves bytes from a server into the core's [`Sink`](citron_core::artifact::Sink) or into
//! layer files.
//!
//! ```
//! use citron_core::lab::LabConfig;
//! let dir = tempfile::tempdir().unwrap();
//! let gw = citron_fetch::gateway(LabConfig::default_lab(), dir.path()).unwrap();
//! assert!(gw.cache().fetchers().handles(&"https://example.com/kernel".parse().unwrap()));
//! assert!(gw.cache().fetchers().images().is_some());
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use citron_core::artifact::{ArtifactSource, BlobStore, FetchError, Fetchers, S3Config};
use citron_core::block::ImageRegistry;
use citron_core::lab::LabConfig;
use citron_core::{Gateway, GatewayError};
use object_store::aws::AmazonS3;
use parking_lot::Mutex;
use url::Url;

mod http;
mod oci;
mod s3;
mod shared;

pub use http::{client as http_client, install_crypto_provider, HttpSource, CONNECT_TIMEOUT, READ_TIMEOUT};
pub use oci::OciRegistry;
pub use s3::S3Source;
pub use shared::SharedStore;

/// A gateway for `lab` whose cache fetches over the network with [`Network`] (configured by the
/// lab's `s3:` and `store:` sections); state under `data_dir`.
pub fn gateway(lab: LabConfig, data_dir: &Path) -> Result<Gateway, GatewayError> {
    let network = Arc::new(Network::for_lab(&lab)?);
    Gateway::with_fetchers(lab, data_dir, network)
}

/// The network sources: http, https, s3 and OCI registries.
///
/// One HTTP client is shared by every `http(s)://` source (it pools connections) and one S3
/// client per bucket; both are made on first use, so a lab that never fetches builds none.
pub struct Network {
    s3: S3Config,
    http: Mutex<Option<reqwest::Client>>,
    stores: Mutex<HashMap<String, Arc<AmazonS3>>>,
    registry: OciRegistry,
    shared: Option<Arc<dyn BlobStore>>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network").field("s3", &self.s3).finish_non_exhaustive()
    }
}

impl Network {
    /// Network sources reaching S3 as `s3` says (fields left out: the `AWS_*` environment).
    pub fn new(s3: S3Config) -> Network {
        Network { s3, http: Mutex::new(None), stores: Mutex::new(HashMap::new()), registry: OciRegistry, shared: None }
    }

    /// The network sources a lab file asks for: its `s3:` section, and its shared artifact
    /// store (`store:`), if any. Errors are the `store:` section's.
    pub fn for_lab(lab: &LabConfig) -> Result<Network, FetchError> {
        let network = Network::new(lab.s3.clone());
        Ok(match &lab.store {
            Some(store) => network.with_shared(Arc::new(SharedStore::from_config(store)?)),
            None => network,
        })
    }

    /// Looks for network sources' content in `store` (by digest, under the core's rules) before
    /// asking their origin, and leaves it there after.
    pub fn with_shared(mut self, store: Arc<dyn BlobStore>) -> Network {
        self.shared = Some(store);
        self
    }

    fn http_client(&self, url: &Url) -> Result<reqwest::Client, FetchError> {
        let mut g = self.http.lock();
        if let Some(c) = &*g {
            return Ok(c.clone());
        }
        let c = http::client().map_err(|message| FetchError::Network { url: citron_core::artifact::redact_url(url), message })?;
        *g = Some(c.clone());
        Ok(c)
    }

    fn s3_store(&self, bucket: &str) -> Result<Arc<AmazonS3>, FetchError> {
        let mut g = self.stores.lock();
        if let Some(s) = g.get(bucket) {
            return Ok(s.clone());
        }
        let s = Arc::new(s3::store_for(&self.s3, bucket)?);
        g.insert(bucket.to_string(), s.clone());
        Ok(s)
    }
}

impl Fetchers for Network {
    fn schemes(&self) -> &[&'static str] {
        &["http", "https", "s3"]
    }

    fn source(&self, url: &Url) -> Result<Arc<dyn ArtifactSource>, FetchError> {
        Ok(match url.scheme() {
            "http" | "https" => Arc::new(HttpSource::new(url.clone(), self.http_client(url)?)),
            "s3" => {
                let (bucket, _) = s3::split_url(url)?;
                Arc::new(S3Source::new(url.clone(), self.s3_store(&bucket)?)?)
            }
            _ => {
                let handled = self.schemes().iter().map(|s| s.to_string()).collect();
                return Err(FetchError::UnsupportedScheme { url: citron_core::artifact::redact_url(url), handled });
            }
        })
    }

    fn images(&self) -> Option<&dyn ImageRegistry> {
        Some(&self.registry)
    }

    fn blobs(&self) -> Option<Arc<dyn BlobStore>> {
        self.shared.clone()
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_security;
#[cfg(test)]
mod tests_shared;
