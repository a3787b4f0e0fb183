//! The lab control API: JSON over HTTP on its own listener, routed by axum, described by the
//! OpenAPI document [`openapi`] generates from the handlers and types (served at
//! `/api/v1/openapi.json`, printed by `citron openapi`).
//!
//! | Route | operationId | What |
//! |---|---|---|
//! | `GET /api/v1/duts` | `listDuts` | every DUT, with its job's origin |
//! | `POST /api/v1/duts` | `addDut` | add one (body: a lab-file DUT as JSON) |
//! | `GET /api/v1/duts/{id}` | `getDut` | one DUT |
//! | `DELETE /api/v1/duts/{id}` | `removeDut` | remove it and its job |
//! | `GET /api/v1/duts/{id}/job` | `getJob` | the job's YAML as set, its origin and when it was set |
//! | `PUT /api/v1/duts/{id}/job` | `setJob` | set the DUT's job (body: the YAML job) |
//! | `DELETE /api/v1/duts/{id}/job` | `clearJob` | drop it |
//! | `POST /api/v1/duts/{id}/events` | `postEvent` | `{"event": "boot" \| "job_start" \| "job_end"}` |
//! | `GET /api/v1/duts/{id}/accesses?after=SEQ&limit=N` | `listAccesses` | one page of the DUT's access log (`Link: rel="next"` when full) |
//! | `GET /api/v1/events?dut=&job=&type=` | `streamEvents` | the lab's event feed, Server-Sent Events, resumable with `Last-Event-ID` |
//! | `GET /api/v1/version` | `getVersion` | citron's version, the state's engine and schema version |
//! | `GET /api/v1/health` | `getHealth` | 200 while citron runs (no token needed) |
//! | `GET /api/v1/ready` | `getReady` | 200 once the jobs it was started with are loaded, 503 before (no token needed) |
//! | `GET /metrics` | `getMetrics` | OpenMetrics text ([`crate::metrics`]) |
//! | `GET /api/v1/openapi.json` | `getOpenApi` | the OpenAPI 3.1 document |
//! | `POST /api/v1/tenants`, `/api/v1/tokens`, `/api/v1/tokens/subset`, `DELETE /api/v1/tokens/{id}` | `addTenant`, `mintToken`, `subsetToken`, `revokeToken` | tokens (`tokens.rs`) |
//! | `POST`/`GET /api/v1/reservations`, `GET`/`DELETE`/`PATCH …/{id}` (`?wait=30s`), `POST …/{id}/fail` | `requestDuts`, `listReservations`, `getReservation`, `releaseReservation`, `extendReservation`, `failReservation` | the DUT pool (`pool.rs`, [`crate::pool`]) |
//! | `GET /api/v1/pool/duts`, `POST …/{id}/enable\|disable` | `listPoolDuts`, `enablePoolDut` | the pool's DUTs (administrator) |
//! | `/api/v1/results/…` | `openRun`, `uploadFile`, `latestFile`, `getBlob`, … | runs and their files (`results.rs`) |
//! | `GET /duffy/Node/get`, `…/Node/done`, `…/Node/fail`, `…/Inventory` | (not in the OpenAPI document) | Duffy's legacy API on the pool, with its `?key=` (`duffy.rs`; lab file `pool: {duffy: true}`) |
//!
//! Errors are `{"error": "..."}` with a 4xx/5xx status (a method a route does not have: 405
//! with `Allow`); an invalid job is 422 with every error and its position in `errors`. When a
//! token is set (`api_token`, `api_token_file` or `$CITRON_API_TOKEN`), every request needs
//! `Authorization: Bearer <token>`, on whatever address the API listens (loopback included);
//! without a token the API may only listen on loopback. A token the lab minted reaches what
//! [`crate::auth::route_policy`] lets it (403 otherwise).
//!
//! A web page can make a browser send requests here, so: `Host` must name the API (else 421:
//! a page whose name an attacker points at 127.0.0.1, DNS rebinding, is refused), and bodies
//! must be `application/json` or, for a job, YAML (else 415: a browser sends a cross-site
//! `text/plain` or form POST without asking, a JSON one only after a CORS preflight that is
//! never granted). The token is compared as SHA-256 digests in constant time.
//!
//! In a lab of several gateways, a request about a DUT another gateway serves
//! (`/api/v1/duts/{id}` and below) is carried out by that gateway ([`crate::gateways`]) and
//! answered with its status and body. Every change and every refused request is an event of
//! the feed, with its actor (`api`; `api via <gateway>` when forwarded).
//!
//! Connections are accepted and bounded exactly as the DUTs' HTTP ones
//! ([`citron_protocols::http::serve_service`]): the router is a hyper service there, not a
//! server of its own.

mod doc;
mod duffy;
mod events;
mod pool;
mod probe;
mod remote;
mod results;
mod routes;
mod tokens;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use citron_core::access::truncate_logged;
use citron_core::Gateway;
use http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tower::ServiceExt as _;

pub use doc::{openapi, openapi_json};
pub use results::{CHECKSUM_HEADER, RUNS_PAGE, RUNS_PAGE_MAX};
pub use routes::{ACCESSES_PAGE, ACCESSES_PAGE_MAX};
pub use tokens::{DEFAULT_TTL, MAX_TTL, TENANT_TTL};

use crate::auth::{Auth, AuthError, Principal};
use crate::gateways::Membership;
use crate::metrics::Metrics;
use crate::results::Results;
use crate::state::feed::{Feed, NewEvent};
use crate::state::StateInfo;

/// Serves the lab API on `listener` until `shutdown` completes. With `token`, every request
/// must carry `Authorization: Bearer <token>`. `state` is what `GET /api/v1/version` and
/// `/metrics` say of the lab's state store (`None`: in memory); `results` the lab's results and
/// tokens (`None`: the lab keeps no state, only the administrator exists).
///
/// The lab's limits apply as on the HTTP listener (connection caps per listener and per peer,
/// `header_timeout`, `idle_timeout`, `api_body_max`); `Host` must name the API (the address the
/// connection reached, `localhost`, or one of the lab's `api_hosts`), and request bodies must
/// say they are JSON (or YAML, for a job). Requests in flight (a job being loaded) may finish
/// after shutdown, for as long as HTTP transfers may.
pub async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    token: Option<String>,
    state: Option<StateInfo>,
    results: Option<Results>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_api(listener, Arc::new(Api::new(gateway, token, state, results, None, None)), shutdown).await
}

/// [`serve`] with the handlers' shared state built by the caller (the feed, the lab's other
/// gateways).
pub(crate) async fn serve_api(listener: TcpListener, api: Arc<Api>, shutdown: impl Future<Output = ()> + Send + 'static) -> io::Result<()> {
    let limits = api.gateway.lab().limits.clone();
    if api.results.is_some() {
        // Revocations made through another gateway on the same state: the state store's
        // notifications refresh them at once where it has them ([`TokenStore::refresh_revocations`]);
        // this timer bounds the wait where it does not. Retention runs on a timer too (TTLs).
        // Both end with the API (they hold it weakly).
        every(&api, REVOCATION_REFRESH, |api| async move {
            if let Some(t) = api.auth.tokens() {
                if let Err(e) = t.refresh_revocations().await {
                    tracing::warn!(error = %e, "cannot read the revoked tokens again");
                }
            }
        });
        if let (Some(m), Some(tokens)) = (&api.membership, api.auth.tokens()) {
            let (mut rx, tokens, weak) = (m.revocations(), tokens.clone(), Arc::downgrade(&api));
            tokio::spawn(async move {
                while rx.changed().await.is_ok() && weak.strong_count() > 0 {
                    if let Err(e) = tokens.refresh_revocations().await {
                        tracing::warn!(error = %e, "cannot read the revoked tokens again");
                    }
                }
            });
        }
        every(&api, RETENTION_SWEEP, |api| async move {
            if let Some(r) = &api.results {
                if let Err(e) = r.sweep_all().await {
                    tracing::warn!(error = %e, "results: the retention sweep failed");
                }
            }
        });
    }
    if let Some(p) = &api.pool {
        crate::pool::Pool::spawn_ticker(p);
    }
    let router = router(api.clone());
    // Shutdown starts: the event streams end (see `Api::stopping`), then the connections drain.
    let weak = Arc::downgrade(&api);
    let shutdown = async move {
        shutdown.await;
        if let Some(api) = weak.upgrade() {
            api.stopping.send_replace(true);
        }
    };
    citron_protocols::http::serve_service("api", listener, &limits, shutdown, move |peer, local| ApiService {
        api: api.clone(),
        router: router.clone(),
        peer,
        local,
    })
    .await
}

/// Who asks: `api` for a request that came to this API, `api via <gateway>` for one another
/// gateway forwarded. Set on every request the router sees; recorded with each event.
#[derive(Debug, Clone)]
pub(crate) struct Actor(pub String);

/// Runs `f` every `period` for as long as the API lives.
fn every<F, Fut>(api: &Arc<Api>, period: std::time::Duration, f: F)
where
    F: Fn(Arc<Api>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let weak = Arc::downgrade(api);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.tick().await; // the first tick is at once
        loop {
            tick.tick().await;
            let Some(api) = weak.upgrade() else { return };
            f(api).await;
        }
    });
}

/// How often a gateway reads the revoked tokens again (a fallback for revocations made through
/// another gateway when no notification arrives).
pub const REVOCATION_REFRESH: std::time::Duration = std::time::Duration::from_secs(5);

/// How often every job's retention is applied (it is also applied when a run finishes).
pub const RETENTION_SWEEP: std::time::Duration = std::time::Duration::from_secs(60);

/// What every handler shares.
pub(crate) struct Api {
    pub(crate) gateway: Gateway,
    pub(crate) metrics: Metrics,
    /// The state store's engine and schema version (`None`: in memory).
    pub(crate) state: Option<StateInfo>,
    /// The lab's event feed (`None`: a lab without a state store).
    pub(crate) feed: Option<Arc<Feed>>,
    /// This gateway's place among the lab's gateways (`None`: a lab of one, in-process).
    pub(crate) membership: Option<Arc<Membership>>,
    /// Who is who: the administrator's token and the lab's signed tokens.
    pub(crate) auth: Auth,
    /// Runs and their files (`None`: the lab keeps no state).
    pub(crate) results: Option<Results>,
    /// The DUT pool (`None`: the lab keeps no state).
    pub(crate) pool: Option<Arc<crate::pool::Pool>>,
    /// The lab's `api_hosts`.
    hosts: Vec<String>,
    /// `limits.api_body_max`.
    body_max: usize,
    /// Set when shutdown starts. An answer that never ends by itself (an event stream) ends
    /// then: the drain waits for answers in flight, and would otherwise hold shutdown for the
    /// whole grace period and then cut the stream mid-way.
    stopping: tokio::sync::watch::Sender<bool>,
}

impl Api {
    pub(crate) fn new(
        gateway: Gateway,
        token: Option<String>,
        state: Option<StateInfo>,
        results: Option<Results>,
        feed: Option<Arc<Feed>>,
        membership: Option<Arc<Membership>>,
    ) -> Self {
        let body_max = usize::try_from(gateway.lab().limits.api_body_max.bytes()).unwrap_or(usize::MAX);
        let hosts = gateway.lab().api_hosts.clone();
        let auth = Auth::new(token.as_deref(), results.as_ref().map(|r| r.tokens().clone()));
        let mut metrics = Metrics::new(&gateway);
        if let Some(s) = state {
            crate::metrics::register_state(&mut metrics, s);
        }
        let pool = results.as_ref().and_then(|r| match crate::pool::Pool::open(gateway.clone(), r.tokens().clone(), feed.clone()) {
            Ok(p) => Some(Arc::new(p)),
            Err(e) => {
                tracing::error!(error = %e, "the DUT pool cannot start: its routes answer 503");
                None
            }
        });
        if let Some(p) = &pool {
            p.register(metrics.registry_mut());
        }
        let stopping = tokio::sync::watch::Sender::new(false);
        Api { metrics, state, gateway, auth, results, pool, hosts, body_max, feed, membership, stopping }
    }

    /// Records `ev` in the feed (if the lab has one).
    pub(crate) fn record(&self, ev: NewEvent) {
        if let Some(f) = &self.feed {
            f.emit(ev);
        }
    }

    /// Completes once shutdown has started (at once if it has).
    pub(crate) fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.stopping.subscribe();
        async move {
            // An error: the API is gone, which is a stop too.
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    /// This gateway's name, in a lab of several.
    pub(crate) fn me(&self) -> Option<&str> {
        self.membership.as_deref().map(Membership::name)
    }
}

/// The router: every route of [`routes`], JSON errors for unknown paths (404) and methods
/// (405, with the `Allow` axum fills in).
pub(crate) fn router(api: Arc<Api>) -> Router {
    routes::routes()
        .merge(tokens::routes())
        .merge(results::routes())
        .merge(pool::routes())
        .merge(duffy::routes())
        .fallback(|uri: http::Uri| async move {
            ApiError::new(StatusCode::NOT_FOUND, format!("no such route: {}; see /api/v1/openapi.json", truncate_logged(uri.path(), 256)))
        })
        .method_not_allowed_fallback(|method: http::Method, uri: http::Uri| async move {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on {}", uri.path()))
        })
        .with_state(api)
}

/// The hyper service of one API connection: the `Host` and token checks, then the router.
#[derive(Clone)]
struct ApiService {
    api: Arc<Api>,
    router: Router,
    peer: SocketAddr,
    /// The address the connection reached: a `Host` naming it names the API.
    local: SocketAddr,
}

impl hyper::service::Service<Request<Incoming>> for ApiService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let s = self.clone();
        Box::pin(async move {
            let started = std::time::Instant::now();
            let method = req.method().clone();
            let path = truncate_logged(req.uri().path(), s.api.gateway.lab().limits.logged_path_max).into_owned();
            let actor = Actor("api".into());
            // Duffy's legacy calls carry their key in the query and check it themselves.
            let open = probe::OPEN_PATHS.contains(&req.uri().path().trim_end_matches('/')) || duffy::is_duffy(req.uri().path());
            let checked =
                s.api
                    .check_host(req.headers(), req.uri(), s.local)
                    .and_then(|()| if open { Ok(None) } else { s.api.authorize(&req).map(Some) });
            let r = match checked {
                Ok(principal) => {
                    let mut req = without_trailing_slash(req);
                    req.extensions_mut().insert(actor.clone());
                    if let Some(p) = principal {
                        req.extensions_mut().insert(p);
                    }
                    match s.api.remote_owner(req.uri().path()).await {
                        Some((id, owner)) => {
                            s.api.forward(req.map(Body::new), &id, owner, &actor).await.unwrap_or_else(|e| e.into_response())
                        }
                        None => match s.router.oneshot(req.map(Body::new)).await {
                            Ok(r) => r,
                            Err(never) => match never {},
                        },
                    }
                }
                Err(e) => e.into_response(),
            };
            let elapsed = started.elapsed();
            s.api.metrics.observe_api_request(elapsed);
            // The access line of every API request, in the fields of the DUTs' ones
            // (`citron_core::access`), plus the method and status.
            let why = r.extensions().get::<Refused>().map(|Refused(why)| why.as_str());
            tracing::info!(
                target: citron_core::access::ACCESS_TARGET,
                peer = %s.peer.ip(),
                protocol = "api",
                method = method.as_str(),
                path = path.as_str(),
                status = r.status().as_u16(),
                outcome = if why.is_some() { "refused" } else { "served" },
                reason = why,
                bytes = http_body::Body::size_hint(r.body()).exact(),
                duration_ms = elapsed.as_secs_f64() * 1e3,
                "access"
            );
            if let Some(why) = why {
                let detail = json!({"method": method.as_str(), "path": path, "status": r.status().as_u16(), "error": why, "peer": s.peer.ip().to_string()});
                s.api.record(NewEvent::new("request_refused").actor(actor.0).detail(detail));
            }
            Ok(r)
        })
    }
}

/// `req` with its path's trailing `/` dropped (`/api/v1/duts/` is `/api/v1/duts`), as the
/// API has always answered.
fn without_trailing_slash<B>(mut req: Request<B>) -> Request<B> {
    let path = req.uri().path();
    if path.len() > 1 && path.ends_with('/') {
        let trimmed = path.trim_end_matches('/');
        let pq = match req.uri().query() {
            Some(q) => format!("{trimmed}?{q}"),
            None => trimmed.to_string(),
        };
        let mut parts = req.uri().clone().into_parts();
        if let Ok(p) = pq.parse() {
            parts.path_and_query = Some(p);
            if let Ok(u) = http::Uri::from_parts(parts) {
                *req.uri_mut() = u;
            }
        }
    }
    req
}

/// Set on an error response, for the request log.
#[derive(Clone)]
struct Refused(String);

/// An API answer that is not a success: its status and JSON body (`{"error": ...}`, plus
/// `errors` for a bad job).
#[derive(Debug)]
pub(crate) struct ApiError(StatusCode, Value);

impl ApiError {
    pub(crate) fn new(code: StatusCode, msg: impl Into<String>) -> Self {
        ApiError(code, json!({"error": msg.into()}))
    }
    pub(crate) fn with_body(code: StatusCode, body: Value) -> Self {
        ApiError(code, body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let ApiError(code, body) = self;
        let mut r = json_response(code, &body);
        if code == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        let why = body["error"].as_str().unwrap_or_default().to_string();
        r.extensions_mut().insert(Refused(why));
        r
    }
}

/// `v` as pretty JSON with a final newline (what curl users read).
pub(crate) fn json_response(code: StatusCode, v: &impl serde::Serialize) -> Response {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = code;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Whether `host` (a `Host` header) names the API: the address the connection reached, or
/// `localhost`, with no port or the API's; or one of `extra` (the lab's `api_hosts`: `name`
/// with any port, `name:port` with that one). Any other name may be a DNS rebinding: a web page
/// whose name the attacker made resolve to this address.
fn host_allowed(host: &str, local: SocketAddr, extra: &[String]) -> bool {
    let Ok(a) = host.parse::<http::uri::Authority>() else { return false };
    let name = a.host().trim_end_matches('.');
    let port_ok = a.port_u16().filter(|&p| p != local.port()).is_none();
    let ip = name.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().ok();
    if port_ok && (name.eq_ignore_ascii_case("localhost") || ip.is_some_and(|ip| ip.to_canonical() == local.ip().to_canonical())) {
        return true;
    }
    extra
        .iter()
        .filter_map(|e| e.parse::<http::uri::Authority>().ok())
        .any(|e| e.host().trim_end_matches('.').eq_ignore_ascii_case(name) && e.port_u16().filter(|&p| Some(p) != a.port_u16()).is_none())
}

/// The body types a route accepts.
pub(crate) const JSON: &[&str] = &["application/json"];
pub(crate) const JSON_OR_YAML: &[&str] = &["application/json", "application/yaml", "application/x-yaml", "text/yaml"];

/// Refuses a body whose `Content-Type` is not one of `types` (415). A browser sends a
/// cross-site `text/plain` or form POST without asking first; a JSON one it asks (CORS
/// preflight), and citron never allows it.
pub(crate) fn require_type(headers: &HeaderMap, types: &[&str]) -> Result<(), ApiError> {
    let given = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = given.split(';').next().unwrap_or("").trim();
    if types.iter().any(|t| t.eq_ignore_ascii_case(mime)) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!("the body's Content-Type is {given:?}: send it as {} (curl: -H 'Content-Type: {}')", types.join(" or "), types[0]),
    ))
}

impl Api {
    fn check_host(&self, headers: &HeaderMap, uri: &http::Uri, local: SocketAddr) -> Result<(), ApiError> {
        let host = uri.authority().map(|a| a.as_str()).or_else(|| headers.get(header::HOST).and_then(|v| v.to_str().ok()));
        match host {
            Some(h) if host_allowed(h, local, &self.hosts) => Ok(()),
            _ => Err(ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "Host {:?} does not name this API: use {local}, localhost, or add the name to `api_hosts` in the lab file",
                    truncate_logged(host.unwrap_or(""), 128)
                ),
            )),
        }
    }

    /// Who is asking ([`Auth::principal`]), and whether they may reach this route at all
    /// ([`crate::auth::route_policy`]); the results and token handlers check the rest.
    fn authorize<B>(&self, req: &Request<B>) -> Result<Principal, ApiError> {
        let refuse = |e: AuthError| match e {
            AuthError::Missing | AuthError::Refused(_) => ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()),
            AuthError::Forbidden(_) => ApiError::new(StatusCode::FORBIDDEN, e.to_string()),
        };
        let p = self.auth.principal(req.headers()).map_err(refuse)?;
        crate::auth::route_policy(&p, req.method(), req.uri().path()).map_err(refuse)?;
        Ok(p)
    }

    /// The request body, at most `limits.api_body_max` bytes (413 beyond).
    pub(crate) async fn read_body(&self, body: Body) -> Result<Bytes, ApiError> {
        let max = self.body_max;
        match Limited::new(body, max).collect().await {
            Ok(c) => Ok(c.to_bytes()),
            Err(e) => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("cannot read the body (at most {max} bytes, limits.api_body_max): {e}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::token_matches;
    use sha2::{Digest, Sha256};

    #[test]
    fn trailing_slashes_are_dropped() {
        let p = |u: &str| without_trailing_slash(Request::get(u).body(()).unwrap()).uri().to_string();
        assert_eq!(p("/api/v1/duts/"), "/api/v1/duts");
        assert_eq!(p("/api/v1/duts/d1/accesses/?after=3"), "/api/v1/duts/d1/accesses?after=3");
        assert_eq!(p("/"), "/");
        assert_eq!(p("/metrics"), "/metrics");
    }

    #[test]
    fn token_comparison() {
        let want: [u8; 32] = Sha256::digest(b"abc").into();
        assert!(token_matches(b"abc", &want));
        assert!(!token_matches(b"abd", &want));
        assert!(!token_matches(b"abcd", &want));
        assert!(!token_matches(b"", &want));
    }

    #[test]
    fn hosts_naming_the_api() {
        let local: SocketAddr = "127.0.0.1:8081".parse().unwrap();
        let extra = vec!["citron.lab".to_string(), "api.lab:443".to_string()];
        for ok in ["127.0.0.1:8081", "127.0.0.1", "localhost:8081", "LOCALHOST", "citron.lab:9999", "citron.lab", "api.lab:443"] {
            assert!(host_allowed(ok, local, &extra), "{ok}");
        }
        for bad in
            ["evil.example", "evil.example:8081", "127.0.0.1:80", "127.0.0.2:8081", "localhost:1", "api.lab", "api.lab:80", "", "a b"]
        {
            assert!(!host_allowed(bad, local, &extra), "{bad}");
        }
        let v6: SocketAddr = "[::1]:8081".parse().unwrap();
        assert!(host_allowed("[::1]:8081", v6, &[]));
        assert!(!host_allowed("[::2]:8081", v6, &[]));
    }
}
