//! The lab control API: JSON over HTTP on its own listener.
//!
//! | Route | What |
//! |---|---|
//! | `GET /api/v1/duts`, `POST /api/v1/duts` | list DUTs; add one (body: a lab-file DUT as JSON) |
//! | `GET`, `DELETE /api/v1/duts/{id}` | one DUT (with its job's origin); remove it and its job |
//! | `PUT`, `DELETE /api/v1/duts/{id}/job` | set the DUT's job (body: the YAML job); drop it |
//! | `POST /api/v1/duts/{id}/events` | `{"event": "boot" \| "job_start" \| "job_end"}` |
//! | `GET /api/v1/duts/{id}/accesses` | the DUT's access log |
//! | `GET /metrics` | Prometheus text |
//! | `GET /api/v1/openapi.json` | the OpenAPI 3 description of all this |
//!
//! Errors are `{"error": "..."}` with a 4xx/5xx status; an invalid job is 422 with every error
//! and its position in `errors`. When the lab file sets `api_token`, every request needs
//! `Authorization: Bearer <api_token>`, on whatever address the API listens (loopback included);
//! without a token the API may only listen on loopback.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use citron_core::job::{JobErrors, Origin};
use citron_core::lifetime::Event;
use citron_core::namespace::{Dut, DutId, RegistryError};
use citron_core::{Gateway, GatewayError};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The largest request body accepted (a job description).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The OpenAPI 3 document served at `/api/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Serves the lab API on `listener` until `shutdown` completes. With `token`, every request
/// must carry `Authorization: Bearer <token>`.
pub async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    token: Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let api = Arc::new(Api { gateway, token });
    let (stop_tx, stop_rx) = watch::channel(false);
    // Dropped (aborting what still runs) when this future is, or after the grace period.
    let mut conns: JoinSet<()> = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while conns.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "api: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let api = api.clone();
        let mut stop = stop_rx.clone();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let api = api.clone();
                async move { Ok::<_, Infallible>(api.handle(req, peer).await) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let r = tokio::select! {
                r = conn.as_mut() => r,
                _ = async { let _ = stop.wait_for(|s| *s).await; } => { conn.as_mut().graceful_shutdown(); conn.await }
            };
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "api: connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Requests in flight (a job being loaded) may finish, for as long as HTTP transfers may.
    crate::http::drain(&mut conns, "api").await;
    Ok(())
}

struct Api {
    gateway: Gateway,
    token: Option<String>,
}

type Resp = Response<Full<Bytes>>;

/// An API answer that is not a success: its status and JSON body.
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
        // The job is fine but an artifact could not be fetched or does not match its digest.
        GatewayError::Fetch(_) => StatusCode::BAD_GATEWAY,
        // A hostile or oversized tarball or image: the job's fault, as a bad job is.
        GatewayError::Disk(d) if d.is_content_fault() => StatusCode::UNPROCESSABLE_ENTITY,
        GatewayError::Disk(citron_core::block::DiskError::NoSpace { .. }) => StatusCode::INSUFFICIENT_STORAGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn job_errors_json(e: &JobErrors) -> Value {
    let list: Vec<Value> =
        e.0.iter()
            .map(|e| json!({"file": e.file, "line": e.line, "column": e.column, "field": e.field, "message": e.message}))
            .collect();
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

/// Compares without stopping at the first difference, so timing says nothing about the token.
fn token_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Api {
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Resp {
        let (method, path) = (req.method().clone(), req.uri().path().to_string());
        let r = match self.authorize(&req) {
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

    fn authorize(&self, req: &Request<Incoming>) -> Result<(), ApiError> {
        let Some(tok) = &self.token else { return Ok(()) };
        let given =
            req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(g) if token_eq(g.trim().as_bytes(), tok.as_bytes()) => Ok(()),
            _ => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token: send Authorization: Bearer <api_token from the lab file>",
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
                Method::GET => {
                    Ok(json_response(StatusCode::OK, &Value::Array(gw.duts().iter().map(|d| dut_json(gw, d)).collect())))
                }
                Method::POST => {
                    let body = read_body(req).await?;
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
                    let body = read_body(req).await?;
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
                    let body = read_body(req).await?;
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
                    let log = gw.accesses(&DutId::from(*id)).map_err(gwerr)?;
                    Ok(json_response(StatusCode::OK, &serde_json::to_value(log).unwrap_or(Value::Null)))
                }
                _ => Err(not_allowed()),
            },
            _ => Err(ApiError::new(StatusCode::NOT_FOUND, format!("no such route: {path}; see /api/v1/openapi.json"))),
        }
    }
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    match Limited::new(req.into_body(), MAX_BODY_BYTES).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("cannot read the body (at most {MAX_BODY_BYTES} bytes): {e}"),
        )),
    }
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
        assert!(token_eq(b"abc", b"abc"));
        assert!(!token_eq(b"abc", b"abd"));
        assert!(!token_eq(b"abc", b"abcd"));
    }
}
