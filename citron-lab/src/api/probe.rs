//! Liveness and readiness: what a supervisor (systemd, a container orchestrator, a load
//! balancer) asks. Both answer without the API token: they reveal nothing but whether citron
//! runs and has loaded the jobs it was started with.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::{json_response, Api};

/// The paths that need no token.
pub(super) const OPEN_PATHS: [&str; 2] = ["/api/v1/health", "/api/v1/ready"];

/// Whether citron runs, and whether it is ready.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Health)]
pub(crate) struct HealthView {
    /// `ok` once ready, `starting` while the jobs citron was started with are being loaded.
    pub status: &'static str,
    /// Whether every job citron was started with (`serve --job`, jobs restored from the state)
    /// is loaded.
    pub ready: bool,
}

fn view(api: &Api) -> HealthView {
    let ready = api.gateway.ready();
    HealthView { status: if ready { "ok" } else { "starting" }, ready }
}

/// Liveness: answers 200 from the moment the API listens, also while jobs are being loaded.
#[utoipa::path(get, path = "/api/v1/health", operation_id = "getHealth", tag = "lab", security(()),
    responses((status = 200, description = "citron runs (see `ready`)", body = HealthView)))]
pub(super) async fn get_health(State(api): State<Arc<Api>>) -> Response {
    json_response(StatusCode::OK, &view(&api))
}

/// Readiness: 200 once every job citron was started with is loaded, 503 until then.
#[utoipa::path(get, path = "/api/v1/ready", operation_id = "getReady", tag = "lab", security(()),
    responses(
        (status = 200, description = "Every start-up job is loaded", body = HealthView),
        (status = 503, description = "Start-up jobs are still being loaded", body = HealthView),
    ))]
pub(super) async fn get_ready(State(api): State<Arc<Api>>) -> Response {
    let v = view(&api);
    json_response(if v.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, &v)
}
