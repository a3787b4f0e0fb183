//! `http://` and `https://` sources, through reqwest (rustls, ring).

use std::error::Error as _;
use std::sync::Once;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use url::Url;

use citron_core::artifact::{redact_url, ArtifactSource, FetchError, Sink};

/// How long to wait for a TCP (and TLS) connection before telling the user the host is unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a download may stall (no byte at all) before it is abandoned.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Installs ring as rustls' process-wide crypto provider. reqwest and object_store are built
/// without one so that aws-lc-rs (a long C build) stays out of the tree; code elsewhere in the
/// workspace that builds its own `reqwest::Client` must call this first or reqwest panics.
/// Harmless when a provider is already installed; every client this crate builds calls it.
///
/// ```
/// citron_fetch::install_crypto_provider();
/// ```
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A reqwest client with citron's timeouts; redirects are followed (up to 10).
pub fn client() -> Result<reqwest::Client, String> {
    install_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .user_agent(concat!("citron/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {}", chain(&e)))
}

/// An error and its causes, `: `-separated (reqwest's own message hides the cause).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

fn host_port(url: &Url) -> String {
    format!("{}:{}", url.host_str().unwrap_or("?"), url.port_or_known_default().unwrap_or(0))
}

/// Turns a reqwest error into a message saying what to check. reqwest's own message names the
/// URL (perhaps a presigned one a redirect led to): it is dropped, the redacted URL is given.
fn network_error(url: &Url, e: reqwest::Error) -> FetchError {
    let e = &e.without_url();
    let io_kind = {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = e.source();
        let mut kind = None;
        while let Some(c) = cur {
            if let Some(io) = c.downcast_ref::<std::io::Error>() {
                kind = Some(io.kind());
            }
            cur = c.source();
        }
        kind
    };
    let hp = host_port(url);
    let message = if io_kind == Some(std::io::ErrorKind::ConnectionRefused) {
        format!("cannot connect to {hp}: connection refused; check that the server is running and the URL's host and port")
    } else if e.is_connect() && e.is_timeout() {
        format!(
            "cannot connect to {hp} within {}s; check that the host is reachable from citron (routes, firewall, proxy)",
            CONNECT_TIMEOUT.as_secs()
        )
    } else if e.is_connect() {
        format!("cannot connect to {hp} ({}); check the host name and that it is reachable from citron", chain(e))
    } else if e.is_timeout() {
        format!("the transfer stalled for {}s; check the server and the network, then load the job again", READ_TIMEOUT.as_secs())
    } else if e.is_redirect() {
        format!("too many redirects ({}); check the URL", chain(e))
    } else {
        format!("download failed ({}); check the server and load the job again", chain(e))
    };
    FetchError::Network { url: redact_url(url), message }
}

/// An artifact at an `http://` or `https://` URL.
#[derive(Debug, Clone)]
pub struct HttpSource {
    url: Url,
    client: reqwest::Client,
}

impl HttpSource {
    /// A source for `url`, downloaded with `client` (share one client: it pools connections).
    pub fn new(url: Url, client: reqwest::Client) -> HttpSource {
        HttpSource { url, client }
    }
}

#[async_trait]
impl ArtifactSource for HttpSource {
    fn name(&self) -> String {
        redact_url(&self.url)
    }

    fn identity(&self) -> String {
        self.url.to_string()
    }

    fn reusable(&self) -> bool {
        true
    }

    async fn fetch(&self, sink: &mut Sink<'_>) -> Result<(), FetchError> {
        let resp = self.client.get(self.url.clone()).send().await.map_err(|e| network_error(&self.url, e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(FetchError::Status { url: redact_url(&self.url), status: status.as_u16() });
        }
        let total = resp.content_length();
        sink.set_total(total)?;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| network_error(&self.url, e))?;
            sink.write(&chunk).await?;
        }
        if let Some(t) = total {
            if sink.written() != t {
                return Err(FetchError::Network {
                    url: redact_url(&self.url),
                    message: format!("the server sent {} of {t} bytes; load the job again", sink.written()),
                });
            }
        }
        Ok(())
    }
}
