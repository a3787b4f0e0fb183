//! The API's handlers, one per operation; each one's `#[utoipa::path]` is its entry in the
//! OpenAPI document (`doc.rs` lists them).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Extension;
use axum::Router;
use citron_core::artifact::FetchError;
use citron_core::job::{JobErrors, Origin};
use citron_core::lifetime::Event;
use citron_core::namespace::{Dut, DutId, RegistryError};
use citron_core::GatewayError;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use serde_json::{json, Value};

use super::doc::{AccessRecordDoc, DutView, ErrorBody, EventBody, JobErrorsBody, JobView, NewDut, StateView, VersionView};
use super::{json_response, require_type, Actor, Api, ApiError, JSON, JSON_OR_YAML};
use crate::state::feed::NewEvent;

/// Records one page of `/accesses` holds when the request gives no `limit`.
pub const ACCESSES_PAGE: usize = 1000;
/// The largest `limit` one page of `/accesses` may ask for.
pub const ACCESSES_PAGE_MAX: usize = 10_000;

type S = State<Arc<Api>>;

/// Every route, by path and method.
pub(super) fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/metrics", get(get_metrics))
        .route("/api/v1/version", get(get_version))
        .route("/api/v1/health", get(super::probe::get_health))
        .route("/api/v1/ready", get(super::probe::get_ready))
        .route("/api/v1/openapi.json", get(get_openapi))
        .route("/api/v1/duts", get(list_duts).post(add_dut))
        .route("/api/v1/duts/{id}", get(get_dut).delete(remove_dut))
        .route("/api/v1/duts/{id}/job", get(get_job).put(set_job).delete(clear_job))
        .route("/api/v1/duts/{id}/events", axum::routing::post(post_event))
        .route("/api/v1/duts/{id}/accesses", get(list_accesses))
        .route("/api/v1/events", get(super::events::stream_events))
}

/// The `{id}` of a route, as a [`DutId`]; an undecodable one is a 400 with a JSON body.
pub(super) struct Id(DutId);

impl<St: Send + Sync> FromRequestParts<St> for Id {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut http::request::Parts, state: &St) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(Id(DutId::from(id.as_str()))),
            Err(e) => Err(ApiError::new(StatusCode::BAD_REQUEST, e.body_text())),
        }
    }
}

/// Path parameters of any shape, as [`Path`] extracts them; one that does not decode (a run id
/// that is not a number) is a 400 with a JSON body, as every error of the API.
pub(super) struct P<T>(pub T);

impl<St: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<St> for P<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut http::request::Parts, state: &St) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(P(v)),
            Err(e) => Err(ApiError::new(StatusCode::BAD_REQUEST, e.body_text())),
        }
    }
}

/// The status for a gateway failure.
fn gateway_status(e: &GatewayError) -> StatusCode {
    match e {
        GatewayError::UnknownDut(_) => StatusCode::NOT_FOUND,
        GatewayError::Registry(RegistryError::BadId(_)) => StatusCode::BAD_REQUEST,
        GatewayError::Registry(_) => StatusCode::CONFLICT,
        GatewayError::Job(_) => StatusCode::UNPROCESSABLE_ENTITY,
        // A job with `results:` on a lab with no state store: this lab cannot run it.
        GatewayError::NoResults => StatusCode::UNPROCESSABLE_ENTITY,
        // citron's own storage is full: neither the job's fault nor the source's.
        GatewayError::Fetch(FetchError::DiskFull { .. } | FetchError::CacheFull { .. }) => StatusCode::INSUFFICIENT_STORAGE,
        // The job is fine but an artifact could not be fetched or does not match its digest.
        GatewayError::Fetch(_) => StatusCode::BAD_GATEWAY,
        GatewayError::Fetches(f) if f.storage_full() => StatusCode::INSUFFICIENT_STORAGE,
        GatewayError::Fetches(_) => StatusCode::BAD_GATEWAY,
        // A hostile or oversized tarball or image: the job's fault, as a bad job is.
        GatewayError::Disk(d) if d.is_content_fault() => StatusCode::UNPROCESSABLE_ENTITY,
        GatewayError::Disk(d) if d.is_no_space() => StatusCode::INSUFFICIENT_STORAGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<GatewayError> for ApiError {
    fn from(e: GatewayError) -> Self {
        match e {
            // Shape and render problems together, as `citron validate` reports them.
            GatewayError::Job(e) => ApiError::with_body(StatusCode::UNPROCESSABLE_ENTITY, job_errors_json(&e)),
            // Every failed fetch, each at the `url:` or `file:` that names it.
            GatewayError::Fetches(f) => {
                let code = if f.storage_full() { StatusCode::INSUFFICIENT_STORAGE } else { StatusCode::BAD_GATEWAY };
                ApiError::with_body(code, job_errors_json(&f.errors))
            }
            // One shape per status: every 422 has `errors` (none positioned for a bad archive).
            e if gateway_status(&e) == StatusCode::UNPROCESSABLE_ENTITY => {
                ApiError::with_body(StatusCode::UNPROCESSABLE_ENTITY, json!({"error": e.to_string(), "errors": []}))
            }
            e => ApiError::new(gateway_status(&e), e.to_string()),
        }
    }
}

fn job_errors_json(e: &JobErrors) -> Value {
    let list: Vec<Value> =
        e.0.iter().map(|e| json!({"file": e.file, "line": e.line, "column": e.column, "field": e.field, "message": e.message})).collect();
    json!({"error": e.to_string(), "errors": list})
}

fn dut(api: &Api, id: &DutId) -> Result<Dut, ApiError> {
    api.gateway.dut(id).ok_or_else(|| GatewayError::UnknownDut(id.clone()).into())
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", operation_id = "getMetrics", tag = "lab",
    responses((status = 200, description = "Every metric of the lab, OpenMetrics text", body = String, content_type = "application/openmetrics-text")))]
async fn get_metrics(State(api): S) -> Response {
    let mut r = Response::new(Body::from(api.metrics.encode()));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(crate::metrics::CONTENT_TYPE));
    r
}

/// citron's version and the state store's engine and schema version.
#[utoipa::path(get, path = "/api/v1/version", operation_id = "getVersion", tag = "lab",
    responses((status = 200, description = "The version of citron and of its state", body = VersionView)))]
async fn get_version(State(api): S) -> Response {
    let state = api.state.map(|s| StateView { engine: s.engine.to_string(), schema_version: s.schema_version });
    json_response(StatusCode::OK, &VersionView { version: env!("CARGO_PKG_VERSION").to_string(), state })
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", operation_id = "getOpenApi", tag = "lab",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = Object)))]
async fn get_openapi() -> Response {
    let mut r = Response::new(Body::from(super::doc::openapi_json()));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// List DUTs.
#[utoipa::path(get, path = "/api/v1/duts", operation_id = "listDuts", tag = "duts",
    responses((status = 200, description = "Every DUT of the lab", body = [DutView])))]
async fn list_duts(State(api): S) -> Result<Response, ApiError> {
    let mut list: Vec<DutView> = api.gateway.duts().iter().map(|d| DutView::own(&api.gateway, d, api.me())).collect();
    if let Some(m) = api.membership.clone() {
        let others = tokio::task::spawn_blocking(move || m.others())
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        list.extend(others.iter().map(DutView::remote));
        list.sort_by(|a, b| a.id.cmp(&b.id));
    }
    Ok(json_response(StatusCode::OK, &list))
}

/// Add a DUT.
#[utoipa::path(post, path = "/api/v1/duts", operation_id = "addDut", tag = "duts",
    request_body(content = NewDut, content_type = "application/json"),
    responses(
        (status = 201, description = "Added", body = DutView),
        (status = 400, description = "Not a DUT as JSON, or a bad id", body = ErrorBody),
        (status = 409, description = "The id or an address is taken", body = ErrorBody),
        (status = 413, description = "Body over `limits.api_body_max`", body = ErrorBody),
        (status = 415, description = "Body not `application/json`", body = ErrorBody),
    ))]
async fn add_dut(State(api): S, Extension(actor): Extension<Actor>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    require_type(&headers, JSON)?;
    let body = api.read_body(body).await?;
    let mut d: Dut = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, format!("the body must be a DUT as JSON ({{\"id\": ..., \"ip\": [...]}}): {e}"))
    })?;
    if let (Some(g), Some(me)) = (&d.gateway, api.me()) {
        if g != me {
            let msg = format!(
                "this is gateway {me:?}: a DUT added here is served by it; add a DUT of gateway {g:?} through its API (or its lab file)"
            );
            return Err(ApiError::new(StatusCode::BAD_REQUEST, msg));
        }
    }
    d.gateway = None;
    api.gateway.add_dut(d.clone())?;
    tracing::info!(dut = %d.id, "api: DUT added");
    api.record(NewEvent::new("dut_added").dut(d.id.0.clone()).actor(actor.0));
    Ok(json_response(StatusCode::CREATED, &DutView::own(&api.gateway, &d, api.me())))
}

/// One DUT.
#[utoipa::path(get, path = "/api/v1/duts/{id}", operation_id = "getDut", tag = "duts",
    params(("id" = String, Path, description = "The DUT id")),
    responses((status = 200, description = "The DUT", body = DutView), (status = 404, description = "No such DUT", body = ErrorBody)))]
async fn get_dut(State(api): S, Id(id): Id) -> Result<Response, ApiError> {
    Ok(json_response(StatusCode::OK, &DutView::own(&api.gateway, &dut(&api, &id)?, api.me())))
}

/// Remove a DUT and its job.
#[utoipa::path(delete, path = "/api/v1/duts/{id}", operation_id = "removeDut", tag = "duts",
    params(("id" = String, Path, description = "The DUT id")),
    responses((status = 204, description = "Removed"), (status = 404, description = "No such DUT", body = ErrorBody)))]
async fn remove_dut(State(api): S, Extension(actor): Extension<Actor>, Id(id): Id) -> Result<Response, ApiError> {
    let job = api.gateway.job_record(&id).map(|r| r.origin.name);
    api.gateway.remove_dut(&id)?;
    tracing::info!(dut = %id, "api: DUT removed");
    api.record(NewEvent::new("dut_removed").dut(id.0.clone()).job(job).actor(actor.0));
    Ok(no_content())
}

/// The DUT's job as it was set.
#[utoipa::path(get, path = "/api/v1/duts/{id}/job", operation_id = "getJob", tag = "jobs",
    params(("id" = String, Path, description = "The DUT id")),
    responses(
        (status = 200, description = "The job's YAML as set, its origin and when it was set", body = JobView),
        (status = 404, description = "No such DUT, or the DUT has no job", body = ErrorBody),
    ))]
async fn get_job(State(api): S, Id(id): Id) -> Result<Response, ApiError> {
    let d = dut(&api, &id)?;
    let rec = api.gateway.job_record(&d.id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("DUT '{}' has no job: set one with PUT /api/v1/duts/{}/job (or citron serve --job)", d.id, d.id),
        )
    })?;
    Ok(json_response(StatusCode::OK, &JobView::from(rec)))
}

/// Set the DUT's job.
#[utoipa::path(put, path = "/api/v1/duts/{id}/job", operation_id = "setJob", tag = "jobs",
    params(
        ("id" = String, Path, description = "The DUT id"),
        ("revision" = Option<String>, Query, description = "What the job's run records as built or tested, over its `results.revision` (a job with `results:`)"),
    ),
    request_body(content = String, description = "The job description, YAML", content_type = "application/yaml"),
    responses(
        (status = 200, description = "Loaded: every artifact fetched; the DUT with its job", body = DutView),
        (status = 400, description = "Not UTF-8", body = ErrorBody),
        (status = 404, description = "No such DUT", body = ErrorBody),
        (status = 413, description = "Body over `limits.api_body_max`", body = ErrorBody),
        (status = 415, description = "Body neither JSON nor YAML", body = ErrorBody),
        (status = 422, description = "An invalid job (every error, positioned), or a hostile or oversized archive", body = JobErrorsBody),
        (status = 502, description = "Artifacts could not be fetched or do not match their digests (every failure, each at its `url:` or `file:`)", body = JobErrorsBody),
        (status = 507, description = "citron's data directory or cache is full (with `errors` when downloads of the job did not fit)", body = ErrorBody),
    ))]
async fn set_job(
    State(api): S,
    Extension(actor): Extension<Actor>,
    Id(id): Id,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let d = dut(&api, &id)?;
    let revision = revision_query(q.as_deref())?;
    require_type(&headers, JSON_OR_YAML)?;
    let body = api.read_body(body).await?;
    let text = String::from_utf8(body.to_vec()).map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "the job must be UTF-8 YAML"))?;
    let origin = format!("api:{}", d.id);
    api.gateway.set_job_yaml_at(&d.id, &text, Origin::named(origin.clone()), revision).await?;
    api.record(NewEvent::new("job_set").dut(d.id.0.clone()).job(Some(origin)).actor(actor.0));
    if let Some(pool) = &api.pool {
        // A DUT its holder reserved without a job is powered on with this one.
        pool.job_set(&d.id.0).await;
    }
    Ok(json_response(StatusCode::OK, &DutView::own(&api.gateway, &d, api.me())))
}

/// Drop the DUT's job.
#[utoipa::path(delete, path = "/api/v1/duts/{id}/job", operation_id = "clearJob", tag = "jobs",
    params(("id" = String, Path, description = "The DUT id")),
    responses((status = 204, description = "Dropped (or there was none)"), (status = 404, description = "No such DUT", body = ErrorBody)))]
async fn clear_job(State(api): S, Extension(actor): Extension<Actor>, Id(id): Id) -> Result<Response, ApiError> {
    let job = api.gateway.job_record(&id).map(|r| r.origin.name);
    if api.gateway.clear_job(&id)? {
        api.record(NewEvent::new("job_dropped").dut(id.0.clone()).job(job).actor(actor.0));
    }
    Ok(no_content())
}

/// Tell citron what happened to the DUT.
#[utoipa::path(post, path = "/api/v1/duts/{id}/events", operation_id = "postEvent", tag = "duts",
    params(("id" = String, Path, description = "The DUT id")),
    request_body(content = EventBody, content_type = "application/json"),
    responses(
        (status = 204, description = "Done: lifetimes reset as the job says; `job_end` closes the job's run (with `status`) and drops the job"),
        (status = 400, description = "Not an event, or not a run status", body = ErrorBody),
        (status = 404, description = "No such DUT", body = ErrorBody),
        (status = 413, description = "Body over `limits.api_body_max`", body = ErrorBody),
        (status = 415, description = "Body not `application/json`", body = ErrorBody),
    ))]
async fn post_event(
    State(api): S,
    Extension(actor): Extension<Actor>,
    Id(id): Id,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let d = dut(&api, &id)?;
    require_type(&headers, JSON)?;
    let body = api.read_body(body).await?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("the body must be JSON like {{\"event\": \"boot\"}}: {e}")))?;
    let name = v
        .get("event")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "missing \"event\": boot, job_start or job_end"))?;
    let ev: Event = name.parse().map_err(|e: String| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let status = match v.get("status") {
        None | Some(Value::Null) => "unknown",
        Some(Value::String(s)) if ev == Event::JobEnd && ["success", "failure", "unknown"].contains(&s.as_str()) => s.as_str(),
        Some(_) => return Err(ApiError::new(StatusCode::BAD_REQUEST, "\"status\" is for job_end: success, failure or unknown")),
    };
    let job = api.gateway.job_record(&d.id).map(|r| r.origin.name);
    if ev == Event::JobEnd {
        // The run is closed (its token revoked) before the event is answered.
        api.gateway.end_run(&d.id, status).await?;
    }
    api.gateway.event(&d.id, ev)?;
    // The event itself is in the feed (the DUT's history); `job_end` also drops the job.
    if ev == Event::JobEnd && job.is_some() {
        api.record(NewEvent::new("job_dropped").dut(d.id.0.clone()).job(job).actor(actor.0).detail(json!({"by": "job_end"})));
    }
    Ok(no_content())
}

/// One page of the DUT's access log, oldest first.
#[utoipa::path(get, path = "/api/v1/duts/{id}/accesses", operation_id = "listAccesses", tag = "duts",
    params(
        ("id" = String, Path, description = "The DUT id"),
        ("after" = Option<u64>, Query, description = "Records with a `seq` above this one (default 0: from the start)"),
        ("limit" = Option<usize>, Query, description = "At most this many records (default 1000, 1 to 10000)", minimum = 1, maximum = 10000),
    ),
    responses(
        (status = 200, description = "At most `limit` records; a full page has `Link: <...>; rel=\"next\"` to the next one (which may be empty)",
            body = [AccessRecordDoc], headers(("Link" = String, description = "RFC 8288 link to the next page, when this one is full"))),
        (status = 400, description = "`after` or `limit` is not a whole number in range", body = ErrorBody),
        (status = 404, description = "No such DUT", body = ErrorBody),
    ))]
async fn list_accesses(State(api): S, Id(id): Id, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let (after, limit) = page_query(q.as_deref())?;
    let log = api.gateway.accesses_page(&id, after, limit)?;
    let next = (log.len() == limit).then(|| log.last().map(|r| r.seq)).flatten();
    let mut r = json_response(StatusCode::OK, &log);
    if let Some(last) = next {
        // RFC 8288: the page after this one (which may come out empty).
        let link = format!("</api/v1/duts/{}/accesses?after={last}&limit={limit}>; rel=\"next\"", id.0);
        if let Ok(v) = HeaderValue::from_str(&link) {
            r.headers_mut().insert(header::LINK, v);
        }
    }
    Ok(r)
}

/// `?revision=R` of `PUT …/job`: 1 to 256 bytes, no control characters.
fn revision_query(q: Option<&str>) -> Result<Option<String>, ApiError> {
    let mut revision = None;
    for (k, v) in url::form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
        if k == "revision" {
            if v.is_empty() || v.len() > 256 || v.chars().any(char::is_control) {
                return Err(ApiError::new(StatusCode::BAD_REQUEST, "?revision= must have 1 to 256 bytes and no control characters"));
            }
            revision = Some(v.into_owned());
        }
    }
    Ok(revision)
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
    fn page_queries() {
        assert_eq!(page_query(None).unwrap(), (0, ACCESSES_PAGE));
        assert_eq!(page_query(Some("after=5&limit=2")).unwrap(), (5, 2));
        assert!(page_query(Some("limit=0")).is_err());
        assert!(page_query(Some("limit=100000")).is_err());
        assert!(page_query(Some("after=-1")).is_err());
    }
}
