//! The lab control API: JSON over HTTP on its own listener.
//!
//! | Route | What |
//! |---|---|
//! | `GET /api/v1/duts`, `POST /api/v1/duts` | list DUTs; add one (body: a lab-file DUT as JSON) |
//! | `GET`, `DELETE /api/v1/duts/{id}` | one DUT (with its job's origin); remove it and its job |
//! | `PUT`, `DELETE /api/v1/duts/{id}/job` | set the DUT's job (body: the YAML job); drop it |
//! | `POST /api/v1/duts/{id}/events` | `{"event": "boot" \| "job_start" \| "job_end"}` |
//! | `GET /api/v1/duts/{id}/accesses?after=SEQ&limit=N` | one page of the DUT's access log (`Link: rel="next"` when full) |
//! | `GET /metrics` | Prometheus text |
//! | `GET /api/v1/openapi.json` | the OpenAPI 3 description of all this |
//!
//! Errors are `{"error": "..."}` with a 4xx/5xx status; an invalid job is 422 with every error
//! and its position in `errors`. When a token is set (`api_token`, `api_token_file` or
//! `$CITRON_API_TOKEN`), every request needs `Authorization: Bearer <token>`, on whatever
//! address the API listens (loopback included); without a token the API may only listen on
//! loopback.
//!
//! A web page can make a browser send requests here, so: `Host` must name the API (else 421:
//! a page whose name an attacker points at 127.0.0.1, DNS rebinding, is refused), and bodies
//! must be `application/json` or, for a job, YAML (else 415: a browser sends a cross-site
//! `text/plain` or form POST without asking, a JSON one only after a CORS preflight that is
//! never granted). The token is compared as SHA-256 digests in constant time.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use citron_core::access::truncate_logged;
use citron_core::artifact::FetchError;
use citron_core::job::{JobErrors, Origin};
use citron_core::lifetime::Event;
use citron_core::namespace::{Dut, DutId, RegistryError};
use citron_core::{Gateway, GatewayError};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

use crate::http::service::{Activity, Tracked};

/// The OpenAPI 3 document served at `/api/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Records one page of `/accesses` holds when the request gives no `limit`.
pub const ACCESSES_PAGE: usize = 1000;
/// The largest `limit` one page of `/accesses` may ask for.
pub const ACCESSES_PAGE_MAX: usize = 10_000;

/// Serves the lab API on `listener` until `shutdown` completes. With `token`, every request
/// must carry `Authorization: Bearer <token>`.
///
/// The lab's limits apply as on the HTTP listener (connection caps per listener and per peer,
/// `header_timeout`, `idle_timeout`, `api_body_max`); `Host` must name the API (the address the
/// connection reached, `localhost`, or one of the lab's `api_hosts`), and request bodies must
/// say they are JSON (or YAML, for a job).
pub async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    token: Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let limits = gateway.lab().limits.clone();
    let hosts = gateway.lab().api_hosts.clone();
    let body_max = usize::try_from(limits.api_body_max.bytes()).unwrap_or(usize::MAX);
    let token = token.map(|t| Sha256::digest(t.as_bytes()).into());
    let api = Arc::new(Api { gateway, token, hosts, body_max });
    let builder = Arc::new(crate::http::builder(&limits));
    let idle = limits.idle_timeout.non_zero();
    let caps = crate::listen::Caps::from_limits(&limits);
    // Requests in flight (a job being loaded) may finish after shutdown, for as long as HTTP
    // transfers may.
    crate::listen::serve("api", listener, caps, shutdown, move |stream, peer, stop| {
        let local = stream.local_addr().unwrap_or(peer);
        let svc = ApiService { api: api.clone(), peer, local, activity: Arc::new(Activity::default()) };
        let builder = builder.clone();
        async move {
            let activity = svc.activity.clone();
            if let Err(e) = crate::http::connection(stream, svc, activity, &builder, idle, stop).await {
                tracing::debug!(%peer, error = %e, "api: connection ended with an error");
            }
        }
    })
    .await
}

struct Api {
    gateway: Gateway,
    /// SHA-256 of the token: comparing digests takes the same time whatever the given token's
    /// length or content.
    token: Option<[u8; 32]>,
    /// The lab's `api_hosts`.
    hosts: Vec<String>,
    /// `limits.api_body_max`.
    body_max: usize,
}

/// The hyper service of one API connection.
#[derive(Clone)]
struct ApiService {
    api: Arc<Api>,
    peer: SocketAddr,
    /// The address the connection reached: a `Host` naming it names the API.
    local: SocketAddr,
    activity: Arc<Activity>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ApiService {
    type Response = Response<Tracked<Full<Bytes>>>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.activity.begin();
        let s = self.clone();
        Box::pin(async move {
            let r = s.api.handle(req, s.peer, s.local).await;
            Ok(r.map(|b| Tracked::new(b, s.activity)))
        })
    }
}

type Resp = Response<Full<Bytes>>;

/// An API answer that is not a success: its status and JSON body.
#[derive(Debug)]
struct ApiError(StatusCode, Value);

impl ApiError {
    fn new(code: StatusCode, msg: impl Into<String>) -> Self {
        ApiError(code, json!({"error": msg.into()}))
    }
    fn job(e: &JobErrors) -> Self {
        ApiError(StatusCode::UNPROCESSABLE_ENTITY, job_errors_json(e))
    }
}

fn json_response(code: StatusCode, v: &Value) -> Resp {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn no_content() -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

/// The status for a gateway failure.
fn gateway_status(e: &GatewayError) -> StatusCode {
    match e {
        GatewayError::UnknownDut(_) => StatusCode::NOT_FOUND,
        GatewayError::Registry(RegistryError::BadId(_)) => StatusCode::BAD_REQUEST,
        GatewayError::Registry(_) => StatusCode::CONFLICT,
        GatewayError::Job(_) => StatusCode::UNPROCESSABLE_ENTITY,
        // citron's own storage is full: neither the job's fault nor the source's.
        GatewayError::Fetch(FetchError::DiskFull { .. } | FetchError::CacheFull { .. }) => StatusCode::INSUFFICIENT_STORAGE,
        // The job is fine but an artifact could not be fetched or does not match its digest.
        GatewayError::Fetch(_) => StatusCode::BAD_GATEWAY,
        // A hostile or oversized tarball or image: the job's fault, as a bad job is.
        GatewayError::Disk(d) if d.is_content_fault() => StatusCode::UNPROCESSABLE_ENTITY,
        GatewayError::Disk(d) if d.is_no_space() => StatusCode::INSUFFICIENT_STORAGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn job_errors_json(e: &JobErrors) -> Value {
    let list: Vec<Value> =
        e.0.iter().map(|e| json!({"file": e.file, "line": e.line, "column": e.column, "field": e.field, "message": e.message})).collect();
    json!({"error": e.to_string(), "errors": list})
}

fn dut_json(gw: &Gateway, d: &Dut) -> Value {
    let mut v = serde_json::to_value(d).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("machine_id".into(), Value::String(d.machine_id().to_string()));
        m.insert("job".into(), gw.job(&d.id).map(|j| Value::String(j.origin)).unwrap_or(Value::Null));
    }
    v
}

/// Whether `given` is the token whose SHA-256 is `want`: the digests are compared in constant
/// time, so neither the token's content nor its length shows in the timing.
fn token_matches(given: &[u8], want: &[u8; 32]) -> bool {
    let d: [u8; 32] = Sha256::digest(given).into();
    d.ct_eq(want).into()
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
const JSON: &[&str] = &["application/json"];
const JSON_OR_YAML: &[&str] = &["application/json", "application/yaml", "application/x-yaml", "text/yaml"];

/// Refuses a body whose `Content-Type` is not one of `types` (415). A browser sends a
/// cross-site `text/plain` or form POST without asking first; a JSON one it asks (CORS
/// preflight), and citron never allows it.
fn require_type(req: &Request<Incoming>, types: &[&str]) -> Result<(), ApiError> {
    let given = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
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
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr, local: SocketAddr) -> Response<Full<Bytes>> {
        let (method, path) =
            (req.method().clone(), truncate_logged(req.uri().path(), self.gateway.lab().limits.logged_path_max).into_owned());
        let r = match self.check_host(&req, local).and_then(|()| self.authorize(&req)) {
            Ok(()) => self.route(req).await,
            Err(e) => Err(e),
        };
        match r {
            Ok(r) => r,
            Err(ApiError(code, body)) => {
                tracing::info!(%peer, %method, %path, status = code.as_u16(), error = %body["error"], "api: request refused");
                let mut r = json_response(code, &body);
                if code == StatusCode::UNAUTHORIZED {
                    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                }
                r
            }
        }
    }

    fn check_host(&self, req: &Request<Incoming>, local: SocketAddr) -> Result<(), ApiError> {
        let host = req.uri().authority().map(|a| a.as_str()).or_else(|| req.headers().get(header::HOST).and_then(|v| v.to_str().ok()));
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

    fn authorize(&self, req: &Request<Incoming>) -> Result<(), ApiError> {
        let Some(tok) = &self.token else { return Ok(()) };
        let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        match given {
            Some(g) if token_matches(g.trim_ascii(), tok) => Ok(()),
            _ => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token: send Authorization: Bearer <the lab's API token>",
            )),
        }
    }

    async fn route(&self, req: Request<Incoming>) -> Result<Resp, ApiError> {
        let path = req.uri().path().to_string();
        let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        let m = req.method().clone();
        let gw = &self.gateway;
        let dut = |id: &str| -> Result<Dut, ApiError> {
            gw.dut(&DutId::from(id))
                .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, GatewayError::UnknownDut(DutId::from(id)).to_string()))
        };
        let gwerr = |e: GatewayError| ApiError::new(gateway_status(&e), e.to_string());
        let not_allowed = || ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{m} is not allowed on {path}"));
        match segs.as_slice() {
            ["metrics"] => match m {
                Method::GET => {
                    let mut r = Response::new(Full::new(Bytes::from(gw.access_log().prometheus())));
                    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
                    Ok(r)
                }
                _ => Err(not_allowed()),
            },
            ["api", "v1", "openapi.json"] => match m {
                Method::GET => {
                    let mut r = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
                    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    Ok(r)
                }
                _ => Err(not_allowed()),
            },
            ["api", "v1", "duts"] => match m {
                Method::GET => Ok(json_response(StatusCode::OK, &Value::Array(gw.duts().iter().map(|d| dut_json(gw, d)).collect()))),
                Method::POST => {
                    require_type(&req, JSON)?;
                    let body = self.read_body(req).await?;
                    let d: Dut = serde_json::from_slice(&body).map_err(|e| {
                        ApiError::new(
                            StatusCode::BAD_REQUEST,
                            format!("the body must be a DUT as JSON ({{\"id\": ..., \"ip\": [...]}}): {e}"),
                        )
                    })?;
                    gw.add_dut(d.clone()).map_err(gwerr)?;
                    tracing::info!(dut = %d.id, "api: DUT added");
                    Ok(json_response(StatusCode::CREATED, &dut_json(gw, &d)))
                }
                _ => Err(not_allowed()),
            },
            ["api", "v1", "duts", id] => match m {
                Method::GET => Ok(json_response(StatusCode::OK, &dut_json(gw, &dut(id)?))),
                Method::DELETE => {
                    gw.remove_dut(&DutId::from(*id)).map_err(gwerr)?;
                    tracing::info!(dut = %id, "api: DUT removed");
                    Ok(no_content())
                }
                _ => Err(not_allowed()),
            },
            ["api", "v1", "duts", id, "job"] => match m {
                Method::PUT => {
                    let d = dut(id)?;
                    require_type(&req, JSON_OR_YAML)?;
                    let body = self.read_body(req).await?;
                    let text = String::from_utf8(body.to_vec())
                        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "the job must be UTF-8 YAML"))?;
                    // Shape and render problems together, as `citron validate` reports them.
                    match gw.set_job_yaml(&d.id, &text, Origin::named(format!("api:{}", d.id))).await {
                        Ok(()) => Ok(json_response(StatusCode::OK, &dut_json(gw, &d))),
                        Err(GatewayError::Job(e)) => Err(ApiError::job(&e)),
                        Err(e) => Err(gwerr(e)),
                    }
                }
                Method::DELETE => {
                    gw.clear_job(&DutId::from(*id)).map_err(gwerr)?;
                    Ok(no_content())
                }
                _ => Err(not_allowed()),
            },
            ["api", "v1", "duts", id, "events"] => match m {
                Method::POST => {
                    let d = dut(id)?;
                    require_type(&req, JSON)?;
                    let body = self.read_body(req).await?;
                    let v: Value = serde_json::from_slice(&body).map_err(|e| {
                        ApiError::new(StatusCode::BAD_REQUEST, format!("the body must be JSON like {{\"event\": \"boot\"}}: {e}"))
                    })?;
                    let name = v
                        .get("event")
                        .and_then(Value::as_str)
                        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "missing \"event\": boot, job_start or job_end"))?;
                    let ev: Event = name.parse().map_err(|e: String| ApiError::new(StatusCode::BAD_REQUEST, e))?;
                    gw.event(&d.id, ev).map_err(gwerr)?;
                    Ok(no_content())
                }
                _ => Err(not_allowed()),
            },
            ["api", "v1", "duts", id, "accesses"] => match m {
                Method::GET => {
                    let (after, limit) = page_query(req.uri().query())?;
                    let log = gw.accesses_page(&DutId::from(*id), after, limit).map_err(gwerr)?;
                    let next = (log.len() == limit).then(|| log.last().map(|r| r.seq)).flatten();
                    let mut r = json_response(StatusCode::OK, &serde_json::to_value(log).unwrap_or(Value::Null));
                    if let Some(last) = next {
                        // RFC 8288: the page after this one (which may come out empty).
                        let link = format!("</api/v1/duts/{id}/accesses?after={last}&limit={limit}>; rel=\"next\"");
                        if let Ok(v) = HeaderValue::from_str(&link) {
                            r.headers_mut().insert(header::LINK, v);
                        }
                    }
                    Ok(r)
                }
                _ => Err(not_allowed()),
            },
            _ => Err(ApiError::new(StatusCode::NOT_FOUND, format!("no such route: {path}; see /api/v1/openapi.json"))),
        }
    }
}

impl Api {
    async fn read_body(&self, req: Request<Incoming>) -> Result<Bytes, ApiError> {
        let max = self.body_max;
        match Limited::new(req.into_body(), max).collect().await {
            Ok(c) => Ok(c.to_bytes()),
            Err(e) => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("cannot read the body (at most {max} bytes, limits.api_body_max): {e}"),
            )),
        }
    }
}

/// `?after=SEQ&limit=N` of a paginated list: records after `SEQ` (0: from the start), at most
/// `N` ([`ACCESSES_PAGE`] by default, [`ACCESSES_PAGE_MAX`] at most).
fn page_query(q: Option<&str>) -> Result<(u64, usize), ApiError> {
    let (mut after, mut limit) = (0u64, ACCESSES_PAGE);
    let bad = |k: &str| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("`{k}` must be a whole number (?after=SEQ&limit=N, N from 1 to {ACCESSES_PAGE_MAX})"),
        )
    };
    for kv in q.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        match kv.split_once('=').unwrap_or((kv, "")) {
            ("after", v) => after = v.parse().map_err(|_| bad("after"))?,
            ("limit", v) => limit = v.parse().ok().filter(|n| (1..=ACCESSES_PAGE_MAX).contains(n)).ok_or_else(|| bad("limit"))?,
            _ => {}
        }
    }
    Ok((after, limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_is_json_with_every_route() {
        let v: Value = serde_json::from_str(OPENAPI).unwrap();
        assert!(v["openapi"].as_str().unwrap().starts_with("3."));
        for p in [
            "/api/v1/duts",
            "/api/v1/duts/{id}",
            "/api/v1/duts/{id}/job",
            "/api/v1/duts/{id}/events",
            "/api/v1/duts/{id}/accesses",
            "/metrics",
            "/api/v1/openapi.json",
        ] {
            assert!(v["paths"].get(p).is_some(), "{p} missing");
        }
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

    #[test]
    fn page_queries() {
        assert_eq!(page_query(None).unwrap(), (0, ACCESSES_PAGE));
        assert_eq!(page_query(Some("after=5&limit=2")).unwrap(), (5, 2));
        assert!(page_query(Some("limit=0")).is_err());
        assert!(page_query(Some("limit=100000")).is_err());
        assert!(page_query(Some("after=-1")).is_err());
    }
}
