//! Running a lab in-process: bind every enabled backend, tell the gateway how DUTs reach them,
//! and stop them together.
//!
//! The `citron serve` command, `citron boot-test` and the Python bindings all start servers this
//! way, so ports (`:0` picks a free one), endpoint variables and shutdown behave the same
//! everywhere.
//!
//! ```
//! use citron_core::{Gateway, lab::LabConfig};
//! use citron_lab::server::ServerBuilder;
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let gw = Gateway::new(LabConfig::default_lab(), dir.path()).unwrap();
//! let server = ServerBuilder::new(gw)
//!     .http(Some("127.0.0.1:0".parse().unwrap()))
//!     .tftp(None)
//!     .nbd(None)
//!     .api(Some("127.0.0.1:0".parse().unwrap()))
//!     .start()
//!     .await
//!     .unwrap();
//! assert_ne!(server.http_addr().unwrap().port(), 0);
//! println!("{}", server.listening_line());
//! server.shutdown().await;
//! # });
//! ```

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use citron_core::serve::{Catalog, Protocol};
use citron_core::{Endpoints, Gateway};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Default HTTP address: what the README's examples use.
pub const DEFAULT_HTTP: &str = "127.0.0.1:8080";
/// Default TFTP address: loopback, an unprivileged port (69 needs root).
pub const DEFAULT_TFTP: &str = "127.0.0.1:6969";
/// Default NBD address: loopback, the IANA NBD port.
pub const DEFAULT_NBD: &str = "127.0.0.1:10809";
/// Default lab API address: loopback only, so no token is needed (one set in the lab file is
/// still required).
pub const DEFAULT_API: &str = "127.0.0.1:8081";

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A listener could not be bound.
    #[error("cannot listen for {service} on {addr}: {source}; pick another address or port (port 0 picks a free one)")]
    Bind {
        /// `http`, `tftp`, `nbd` or `api`.
        service: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
    /// The API would be reachable beyond this machine without authentication.
    #[error(
        "the API listens on {0}, which is not a loopback address: set `api_token_file` (or `api_token`) in the lab file or $CITRON_API_TOKEN, or bind the API to 127.0.0.1"
    )]
    ApiTokenRequired(SocketAddr),
    /// The API token's sources conflict or cannot be read.
    #[error(transparent)]
    ApiToken(#[from] citron_core::lab::ApiTokenError),
}

/// Which backends to run, and where.
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    gateway: Gateway,
    http: Option<SocketAddr>,
    tftp: Option<SocketAddr>,
    nbd: Option<SocketAddr>,
    api: Option<SocketAddr>,
    advertise: Option<IpAddr>,
    state: Option<crate::state::StateInfo>,
    feed: Option<Arc<crate::state::Feed>>,
    membership: Option<Arc<crate::gateways::Membership>>,
    results: Option<crate::results::Results>,
}

impl ServerBuilder {
    /// Every backend on its default address ([`DEFAULT_HTTP`], ...).
    pub fn new(gateway: Gateway) -> Self {
        let p = |s: &str| Some(s.parse().expect("default addresses parse"));
        ServerBuilder {
            gateway,
            http: p(DEFAULT_HTTP),
            tftp: p(DEFAULT_TFTP),
            nbd: p(DEFAULT_NBD),
            api: p(DEFAULT_API),
            advertise: None,
            state: None,
            feed: None,
            membership: None,
            results: None,
        }
    }

    /// The HTTP address, or `None` to run no HTTP server.
    pub fn http(mut self, addr: Option<SocketAddr>) -> Self {
        self.http = addr;
        self
    }

    /// The TFTP address, or `None`.
    pub fn tftp(mut self, addr: Option<SocketAddr>) -> Self {
        self.tftp = addr;
        self
    }

    /// The NBD address, or `None`.
    pub fn nbd(mut self, addr: Option<SocketAddr>) -> Self {
        self.nbd = addr;
        self
    }

    /// The lab API address, or `None`.
    pub fn api(mut self, addr: Option<SocketAddr>) -> Self {
        self.api = addr;
        self
    }

    /// The address DUTs reach this machine at, when the servers listen on a wildcard address
    /// (`0.0.0.0`); it fills `http_artifact_base` and friends. Lab `variables` of the same name
    /// still win.
    pub fn advertise(mut self, ip: Option<IpAddr>) -> Self {
        self.advertise = ip;
        self
    }

    /// The state store the gateway was built on ([`crate::state::State::info`]), for
    /// `GET /api/v1/version` and `/metrics`; `None` (the default) says the state is in memory.
    pub fn state(mut self, state: Option<crate::state::StateInfo>) -> Self {
        self.state = state;
        self
    }

    /// The lab's event feed, which `GET /api/v1/events` serves and the API records changes
    /// in ([`crate::state::State::feed`]); `None` (the default): no feed.
    pub fn feed(mut self, feed: Option<Arc<crate::state::Feed>>) -> Self {
        self.feed = feed;
        self
    }

    /// This gateway's place in a lab of several ([`crate::gateways::Membership::join`]): its
    /// heartbeat starts with the servers, the API shows the whole lab and forwards requests
    /// about other gateways' DUTs, and requests forwarded to this gateway are carried out.
    pub fn membership(mut self, m: Option<Arc<crate::gateways::Membership>>) -> Self {
        self.membership = m;
        self
    }

    /// The lab's results and tokens ([`crate::results::Results::open`] on its state); `None`
    /// (the default): no results routes, and only the administrator's token.
    pub fn results(mut self, results: Option<crate::results::Results>) -> Self {
        self.results = results;
        self
    }

    /// Binds every enabled backend, sets the gateway's endpoints and starts serving.
    ///
    /// The API requires the lab's `api_token` as a bearer token whenever the lab file sets
    /// one, whatever the address; without one it refuses to listen beyond loopback.
    pub async fn start(self) -> Result<RunningServer, ServerError> {
        // The token comes from exactly one of `api_token`, `api_token_file` or
        // $CITRON_API_TOKEN (two at once are refused).
        let token = match self.api {
            Some(a) => {
                let env = std::env::var(citron_core::lab::API_TOKEN_ENV).ok();
                let t = self.gateway.lab().resolve_api_token(env.as_deref())?;
                if !a.ip().is_loopback() && t.is_none() {
                    return Err(ServerError::ApiTokenRequired(a));
                }
                t
            }
            None => None,
        };
        // Connection caps, not the soft descriptor limit (often 1024), should bound the sockets.
        match citron_protocols::listen::raise_nofile_limit() {
            Ok(n) => tracing::info!(nofile = n, "open file limit (RLIMIT_NOFILE) raised to its hard limit"),
            Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit (RLIMIT_NOFILE)"),
        }
        let bind_err = |service, addr| move |source| ServerError::Bind { service, addr, source };
        let http = match self.http {
            Some(a) => Some(TcpListener::bind(a).await.map_err(bind_err("http", a))?),
            None => None,
        };
        let tftp = match self.tftp {
            Some(a) => Some(UdpSocket::bind(a).await.map_err(bind_err("tftp", a))?),
            None => None,
        };
        let nbd = match self.nbd {
            Some(a) => Some(TcpListener::bind(a).await.map_err(bind_err("nbd", a))?),
            None => None,
        };
        let api = match self.api {
            Some(a) => Some(TcpListener::bind(a).await.map_err(bind_err("api", a))?),
            None => None,
        };
        let local = |r: io::Result<SocketAddr>, service, asked: SocketAddr| r.map_err(bind_err(service, asked));
        let mut addrs = Addrs::default();
        if let (Some(l), Some(a)) = (&http, self.http) {
            addrs.http = Some(local(l.local_addr(), "http", a)?);
        }
        if let (Some(l), Some(a)) = (&tftp, self.tftp) {
            addrs.tftp = Some(local(l.local_addr(), "tftp", a)?);
        }
        if let (Some(l), Some(a)) = (&nbd, self.nbd) {
            addrs.nbd = Some(local(l.local_addr(), "nbd", a)?);
        }
        if let (Some(l), Some(a)) = (&api, self.api) {
            addrs.api = Some(local(l.local_addr(), "api", a)?);
        }
        self.gateway.set_endpoints(endpoints(&addrs, self.advertise));
        // Before anything is served (and before `citron serve` says it listens): what uploads
        // cut short by a crash left is removed.
        if let Some(r) = &self.results {
            r.clean().await;
            // The runs of DUT jobs with `results:` and their uploads go to the results store.
            self.gateway.set_run_store(std::sync::Arc::new(r.clone()));
        }

        let (stop_tx, stop_rx) = watch::channel(false);
        let stop = move || {
            let mut rx = stop_rx.clone();
            // Also ends when the RunningServer is dropped (the sender goes away).
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let catalog: Arc<dyn Catalog> = Arc::new(self.gateway.clone());
        let mut tasks = Vec::new();
        if let Some(l) = http {
            tasks.push(spawn("http", citron_protocols::http::serve(l, catalog.clone(), stop())));
        }
        if let Some(s) = tftp {
            let config = citron_protocols::tftp::Config::from_limits(&self.gateway.lab().limits);
            tasks.push(spawn("tftp", citron_protocols::tftp::serve_with(s, catalog.clone(), config, stop())));
        }
        if let Some(l) = nbd {
            tasks.push(spawn("nbd", citron_protocols::nbd::serve(l, catalog.clone(), stop())));
        }
        let handlers = Arc::new(crate::api::Api::new(
            self.gateway.clone(),
            token,
            self.state,
            self.results,
            self.feed.clone(),
            self.membership.clone(),
        ));
        if let Some(m) = &self.membership {
            m.start();
            let work = m.clone().serve_forwarded(crate::api::router(handlers.clone()), stop());
            tasks.push(spawn("forwarded", async move {
                work.await;
                Ok(())
            }));
        }
        if let Some(l) = api {
            // A token, once set, is always required, loopback included: it is there because
            // the admin wants the API closed, and local users may be others.
            tasks.push(spawn("api", crate::api::serve_api(l, handlers, stop())));
        }
        Ok(RunningServer { addrs, gateway: self.gateway, stop: stop_tx, tasks })
    }
}

/// How DUTs see the bound addresses ([`Endpoints::seen`]).
fn endpoints(a: &Addrs, advertise: Option<IpAddr>) -> Endpoints {
    let bound = [(Protocol::HTTP, a.http), (Protocol::TFTP, a.tftp), (Protocol::NBD, a.nbd)];
    Endpoints::seen(bound.into_iter().filter_map(|(p, s)| Some((p, s?))), advertise)
}

/// The endpoints a lab has with every backend on its default address: what `citron validate`,
/// `citron render` and Python fill a job's variables with when no server runs.
pub fn default_endpoints() -> Endpoints {
    let p = |s: &str| s.parse::<SocketAddr>().expect("default addresses parse");
    Endpoints::seen([(Protocol::HTTP, p(DEFAULT_HTTP)), (Protocol::TFTP, p(DEFAULT_TFTP)), (Protocol::NBD, p(DEFAULT_NBD))], None)
}

fn spawn(name: &'static str, fut: impl Future<Output = io::Result<()>> + Send + 'static) -> (&'static str, JoinHandle<io::Result<()>>) {
    (
        name,
        tokio::spawn(async move {
            let r = fut.await;
            match &r {
                Ok(()) => tracing::debug!("{name}: stopped"),
                Err(e) => tracing::error!(error = %e, "{name}: the backend stopped with an error"),
            }
            r
        }),
    )
}

#[derive(Debug, Clone, Copy, Default)]
struct Addrs {
    http: Option<SocketAddr>,
    tftp: Option<SocketAddr>,
    nbd: Option<SocketAddr>,
    api: Option<SocketAddr>,
}

/// Servers started by [`ServerBuilder::start`]. Dropping it stops them too, without waiting.
#[derive(Debug)]
pub struct RunningServer {
    addrs: Addrs,
    gateway: Gateway,
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<io::Result<()>>)>,
}

impl RunningServer {
    /// Where HTTP listens (the real port when `:0` was asked for).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.addrs.http
    }
    /// Where TFTP listens.
    pub fn tftp_addr(&self) -> Option<SocketAddr> {
        self.addrs.tftp
    }
    /// Where NBD listens.
    pub fn nbd_addr(&self) -> Option<SocketAddr> {
        self.addrs.nbd
    }
    /// Where the lab API listens.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.addrs.api
    }
    /// The gateway the servers answer from.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// `citron: listening http=127.0.0.1:8080 tftp=… nbd=… api=…` (`off` for a disabled one):
    /// the line `citron serve` prints, which scripts and tests parse.
    pub fn listening_line(&self) -> String {
        let f = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_else(|| "off".into());
        format!(
            "citron: listening http={} tftp={} nbd={} api={}",
            f(self.addrs.http),
            f(self.addrs.tftp),
            f(self.addrs.nbd),
            f(self.addrs.api)
        )
    }

    /// Stops accepting, lets transfers in flight finish (bounded by each backend's grace
    /// period) and waits for every backend.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for (name, t) in self.tasks {
            match tokio::time::timeout(citron_protocols::http::SHUTDOWN_GRACE + Duration::from_secs(2), t).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "{name}: the backend task failed"),
                Err(_) => tracing::warn!("{name}: did not stop in time"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_use_bound_or_advertised_hosts() {
        let a = Addrs {
            http: Some("127.0.0.1:8080".parse().unwrap()),
            tftp: Some("0.0.0.0:69".parse().unwrap()),
            nbd: Some("[::1]:10809".parse().unwrap()),
            api: None,
        };
        let v = endpoints(&a, None).variables();
        assert_eq!(v["http_artifact_base"], "http://127.0.0.1:8080");
        assert_eq!(v["tftp_artifact_base"], "");
        assert_eq!((v["nbd_host"].as_str(), v["nbd_port"].as_str()), ("[::1]", "10809"));
        let e = endpoints(&a, Some("10.0.2.2".parse().unwrap()));
        assert_eq!(e.variables()["tftp_artifact_base"], "tftp://10.0.2.2:69");
    }
}
