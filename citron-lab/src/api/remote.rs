//! Requests about a DUT another gateway of the lab serves: carried out there
//! ([`crate::gateways`]), answered here with that gateway's status and body.

use axum::body::Body;
use axum::response::Response;
use citron_core::namespace::DutId;
use http::{header, HeaderValue, Method, Request, StatusCode};
use serde_json::Value;

use super::doc::DutView;
use super::{json_response, Actor, Api, ApiError, Refused};
use crate::auth::Principal;
use crate::gateways::{ForwardError, ForwardRequest, Owner};

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

impl Api {
    /// The DUT `path` is about (`/api/v1/duts/{id}` and below) and its gateway, when that is
    /// another gateway of the lab.
    pub(super) async fn remote_owner(&self, path: &str) -> Option<(DutId, Owner)> {
        let m = self.membership.clone()?;
        let id = path.strip_prefix("/api/v1/duts/")?.split('/').next()?;
        // DUT ids need no escaping; anything escaped is for the local handler to refuse.
        if id.is_empty() || id.contains('%') {
            return None;
        }
        let id = DutId::from(id);
        if self.gateway.dut(&id).is_some() {
            return None;
        }
        let (m2, id2) = (m.clone(), id.clone());
        let owner = blocking(move || m2.owner(&id2)).await?.ok()??;
        (owner.gateway != m.name()).then_some((id, owner))
    }

    /// Has `owner` carry `req` out; its answer.
    pub(super) async fn forward(&self, req: Request<Body>, id: &DutId, owner: Owner, actor: &Actor) -> Result<Response, ApiError> {
        let Some(m) = self.membership.clone() else { return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no lab to forward to")) };
        let (parts, body) = req.into_parts();
        if !owner.online {
            // What the lab knows of an offline DUT is still shown.
            if parts.method == Method::GET && parts.uri.path() == format!("/api/v1/duts/{}", id.0) {
                if let Some(Ok(others)) = blocking({
                    let m = m.clone();
                    move || m.others()
                })
                .await
                {
                    if let Some(r) = others.iter().find(|r| r.dut.id == *id) {
                        return Ok(json_response(StatusCode::OK, &DutView::remote(r)));
                    }
                }
            }
            let e = ForwardError::Offline { dut: id.0.clone(), gateway: owner.gateway };
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()));
        }
        let body = self.read_body(body).await?;
        let body = String::from_utf8(body.to_vec()).map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "the body must be UTF-8"))?;
        let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
        let uri = parts.uri.path_and_query().map_or(parts.uri.path(), |p| p.as_str()).to_string();
        let principal = parts.extensions.get::<Principal>().and_then(|p| serde_json::to_string(p).ok());
        let actor = format!("{} via {}", actor.0, m.name());
        let req = ForwardRequest { method: parts.method.to_string(), uri, content_type, body, actor, principal };
        match m.forward(&owner.gateway, id, req).await {
            Ok(f) => {
                let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let why = serde_json::from_str::<Value>(&f.body).ok().and_then(|v| v["error"].as_str().map(str::to_string));
                let empty = f.body.is_empty();
                let mut r = Response::new(Body::from(f.body));
                *r.status_mut() = status;
                if !empty {
                    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                }
                if status.is_client_error() || status.is_server_error() {
                    r.extensions_mut().insert(Refused(why.unwrap_or_default()));
                }
                Ok(r)
            }
            Err(e @ ForwardError::Timeout { .. }) => Err(ApiError::new(StatusCode::GATEWAY_TIMEOUT, e.to_string())),
            Err(e @ ForwardError::Offline { .. }) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
            Err(e) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        }
    }
}
