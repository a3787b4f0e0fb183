//! How the cache reaches the network: a [`Fetchers`] value given to it at construction.
//!
//! The core decides (what is cached, who may reuse what, how many downloads run, how much they
//! may hold) but opens no socket: sources named by URL and container images come from whatever
//! [`Fetchers`] the [`Cache`](super::Cache) was opened with. `citron-fetch` provides the real one
//! (http, https, s3 and `docker://` registries); [`NoNetwork`] fetches nothing, for a gateway that
//! serves inline data and local files only.

use std::sync::Arc;

use url::Url;

use super::shared::BlobStore;
use super::source::{ArtifactSource, FetchError};
use crate::block::ImageRegistry;

/// The sources citron can fetch over the network, by URL scheme, and the container registry
/// client.
///
/// A job's URL is checked when it is rendered (an unknown scheme is a positioned job error);
/// a scheme the job language knows but no fetcher handles (a gateway built without network
/// support) fails the load with [`FetchError::UnsupportedScheme`], naming the schemes that are
/// handled.
///
/// ```
/// use std::sync::Arc;
/// use citron_core::artifact::{ArtifactSource, DataSource, FetchError, Fetchers};
///
/// /// Serves `mem://` URLs from a fixed string (a real implementation streams from the network).
/// struct Mem;
/// impl Fetchers for Mem {
///     fn schemes(&self) -> &[&'static str] {
///         &["mem"]
///     }
///     fn source(&self, _url: &url::Url) -> Result<Arc<dyn ArtifactSource>, FetchError> {
///         Ok(Arc::new(DataSource::new(bytes::Bytes::from_static(b"hello"))))
///     }
/// }
/// assert!(Mem.handles(&"mem://x".parse().unwrap()));
/// assert!(!Mem.handles(&"http://x".parse().unwrap()));
/// ```
pub trait Fetchers: Send + Sync {
    /// The URL schemes [`source`](Self::source) accepts (lower case).
    fn schemes(&self) -> &[&'static str];

    /// The source for `url`, whose scheme is one of [`schemes`](Self::schemes). Errors are
    /// about the URL itself ([`FetchError::BadUrl`]) or setting up a client; nothing is
    /// downloaded yet.
    fn source(&self, url: &Url) -> Result<Arc<dyn ArtifactSource>, FetchError>;

    /// The client `container: docker://` disk contents are pulled with; `None` (the default)
    /// refuses such disks.
    fn images(&self) -> Option<&dyn ImageRegistry> {
        None
    }

    /// The lab's shared artifact store (`store:` in the lab file), where network sources'
    /// content is looked for by digest before the origin is asked, and left after the origin
    /// gave it; `None` (the default): this gateway's cache only. It belongs with the fetchers
    /// because it is the other way bytes reach the cache from the network.
    fn blobs(&self) -> Option<Arc<dyn BlobStore>> {
        None
    }

    /// Whether `url`'s scheme is one of [`schemes`](Self::schemes).
    fn handles(&self, url: &Url) -> bool {
        self.schemes().contains(&url.scheme())
    }
}

/// Fetches nothing over the network: `data:` and `file:` sources only. What
/// [`Gateway::new`](crate::Gateway::new) uses.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoNetwork;

impl Fetchers for NoNetwork {
    fn schemes(&self) -> &[&'static str] {
        &[]
    }

    fn source(&self, url: &Url) -> Result<Arc<dyn ArtifactSource>, FetchError> {
        Err(FetchError::UnsupportedScheme { url: super::redact_url(url), handled: Vec::new() })
    }
}
