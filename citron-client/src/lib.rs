//! # citron-client
//!
//! The client of a remote citron's HTTP API, every route of it: results (runs, files, `latest`,
//! by-hash), tenants and tokens, the DUT pool, DUTs and their jobs, and the lab's event feed.
//! The `citron` CLI's client commands and the Python `citron.Client` are both this crate, so
//! that they say and check the same things.
//!
//! It speaks the API's own types ([`Run`], [`ResultFile`], [`FeedEvent`], [`Reservation`]…,
//! from `citron-lab`):
//! one definition serves the server's answers and the client's parsing, so the two cannot drift.
//!
//! # Layout
//! - [`Client`] (here): where the server is, the token, and how an answer becomes a
//!   [`ClientError`] (`error.rs`: the status and the server's message, never a raw response).
//! - `results.rs`: runs, uploads (streamed, with `X-Checksum-SHA256`), `latest`, downloads
//!   checked against their digest ([`Latest`]), pages of runs, by-hash, consoles, retention.
//! - `tokens.rs`: tenants and tokens ([`Tenant`], [`Token`], [`NewToken`], [`TokenSubset`]).
//! - `lab.rs`: DUTs, their jobs, events and access logs; version, health, readiness,
//!   metrics, the OpenAPI document ([`DutInfo`], [`JobInfo`], [`Version`]).
//! - `events.rs`: the SSE feed, resumed with `Last-Event-ID` after a cut ([`Events`]; from now,
//!   retrying its first connection, reporting its [`Progress`]: what `citron results watch` uses).
//! - `pool.rs`: the DUT pool: reservations ([`Request`], [`Reservation`], [`AllocatedDut`],
//!   pages of them) and the pool's DUTs ([`PoolDut`]).
//!
//! ```no_run
//! # async fn example() -> Result<(), citron_client::ClientError> {
//! use citron_client::{Client, Select, Upload};
//! let c = Client::new("http://127.0.0.1:8081", Some("TOKEN".into()))?;
//! let run = c.open_run("kernel-build", Some("v6.9"), None).await?;
//! c.upload("kernel-build", run.id, "bzImage", Upload::Bytes(b"kernel".to_vec().into())).await?;
//! c.finish("kernel-build", run.id, citron_client::Status::Success).await?;
//! let latest = c.latest_file("kernel-build", "bzImage", &Select::default()).await?;
//! let bytes = c.read_blob(&latest, 1 << 20).await?; // checked against latest.sha256
//! # let _ = bytes; Ok(()) }
//! ```
#![deny(missing_docs)]

mod error;
mod events;
mod lab;
mod pool;
mod results;
mod tokens;

use std::path::Path;
use std::time::Duration;

pub use citron_lab::pool::{AllocatedDut, DutAttrs, PoolDut, Request, Reservation};
pub use citron_lab::results::{Found, ResultFile, Retention, Run, Status};
pub use citron_lab::state::feed::FeedEvent;
pub use error::ClientError;
pub use events::{EventQuery, Events, Progress};
pub use lab::{AccessPage, DutInfo, JobInfo, NewDut, StateVersion, Version};
pub use pool::ReservationsPage;
pub use results::{HashHit, Latest, RunsPage, Select, Upload};
pub use tokens::{duration_text, NewToken, Tenant, Token, TokenSubset};

/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server may stay silent in an answer before the client gives up. The event
/// feed sends a comment every 15 s, so a watcher is never cut by this while the server lives.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A remote citron's API: its address, the token every request carries, and one connection
/// pool (cheap to clone: clones share the pool).
#[derive(Debug, Clone)]
pub struct Client {
    base: url::Url,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client of the citron at `server` (`http://HOST:PORT`, optionally with a path prefix),
    /// sending `token` as a bearer token (None: no token, which the API answers 401 unless the
    /// lab has no `api_token`).
    pub fn new(server: &str, token: Option<String>) -> Result<Client, ClientError> {
        Client::with_read_timeout(server, token, READ_TIMEOUT)
    }

    /// [`Client::new`], with another read timeout.
    pub fn with_read_timeout(server: &str, token: Option<String>, read_timeout: Duration) -> Result<Client, ClientError> {
        let mut base = url::Url::parse(server.trim())
            .map_err(|e| ClientError::Usage(format!("{server:?} is not a URL ({e}); write the server as http://HOST:PORT")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(ClientError::Usage(format!("{server:?} is not an http:// or https:// URL")));
        }
        // `join` keeps a path prefix only when it ends with a slash.
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        if let Some(t) = &token {
            if t.is_empty() || t.chars().any(|c| c.is_control() || c == ' ') {
                return Err(ClientError::Usage("the token is empty or has spaces or control characters".into()));
            }
        }
        citron_fetch::install_crypto_provider();
        // Redirects are followed by hand: `latest` answers one to a blob of the same server,
        // which needs the same token (reqwest drops it on redirects, as it should for others).
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(read_timeout)
            .build()
            .map_err(|e| ClientError::Usage(format!("cannot build an HTTP client: {e}")))?;
        Ok(Client { base, token, http })
    }

    /// The token of a token file: its content, without surrounding whitespace.
    pub fn token_from_file(path: &Path) -> Result<String, ClientError> {
        let t = std::fs::read_to_string(path).map_err(|e| ClientError::Io { path: path.to_path_buf(), source: e })?;
        Ok(t.trim().to_string())
    }

    /// The server's address.
    pub fn server(&self) -> &str {
        self.base.as_str()
    }

    /// The bearer token it sends (what a command it starts may be handed, as `citron results
    /// watch --exec` does).
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// A request to `path` (absolute, with its query) on the server, with the token: for the
    /// callers that read an answer their own way (an event stream followed by hand).
    pub fn request(&self, method: reqwest::Method, path: &str) -> Result<reqwest::RequestBuilder, ClientError> {
        let url = self.resolve(path)?;
        Ok(self.req(method, url))
    }

    /// The URL of `segments` under the server (each one percent-encoded: a file path's `/`
    /// is given as separate segments).
    fn url<'a>(&self, segments: impl IntoIterator<Item = &'a str>) -> url::Url {
        let mut u = self.base.clone();
        if let Ok(mut s) = u.path_segments_mut() {
            s.pop_if_empty().extend(segments);
        }
        u
    }

    /// A URL the server sent (a `Location`), resolved against the server's address.
    fn resolve(&self, location: &str) -> Result<url::Url, ClientError> {
        self.base.join(location).map_err(|e| ClientError::Protocol(format!("the server redirected to {location:?}: {e}")))
    }

    fn req(&self, method: reqwest::Method, url: url::Url) -> reqwest::RequestBuilder {
        let r = self.http.request(method, url);
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Sends `r`; an answer of 400 and above is a [`ClientError::Api`] with the server's message.
    async fn send(&self, r: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let resp = r.send().await.map_err(|e| ClientError::unreachable(self.base.as_str(), &e))?;
        let code = resp.status();
        if code.is_client_error() || code.is_server_error() {
            return Err(ClientError::from_answer(resp).await);
        }
        Ok(resp)
    }

    async fn json<T: serde::de::DeserializeOwned>(&self, r: reqwest::RequestBuilder) -> Result<T, ClientError> {
        let resp = self.send(r).await?;
        let body = resp.bytes().await.map_err(|e| ClientError::unreachable(self.base.as_str(), &e))?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Protocol(format!("the answer is not what this client expects: {e}")))
    }
}
