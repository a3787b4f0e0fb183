//! The pool's routes: reservations (`reserve` scope; each tenant sees only its own) and the
//! administrator's view of the DUTs ([`crate::pool`]).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::doc::ErrorBody;
use super::routes::P;
use super::tokens::body_json;
use super::{json_response, Actor, Api, ApiError};
use crate::auth::Principal;
use crate::pool::{AllocatedDut, DutAttrs, Pool, PoolDut, PoolError, Request, Reservation, LIST_PAGE};

pub(super) fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/api/v1/reservations", post(request).get(list))
        .route("/api/v1/reservations/{id}", get(get_one).delete(release).patch(extend))
        .route("/api/v1/reservations/{id}/fail", post(fail))
        .route("/api/v1/pool/duts", get(pool_duts))
        .route("/api/v1/pool/duts/{id}/{action}", post(enable))
}

#[derive(OpenApi)]
#[openapi(
    paths(request, list, get_one, release, extend, fail, pool_duts, enable),
    components(schemas(Request, Reservation, AllocatedDut, DutAttrs, PoolDut, Extend, Fail)),
    tags((name = "pool", description = "The DUT pool: reservations, queued, and the pool's DUTs"))
)]
pub(super) struct PoolDoc;

impl From<PoolError> for ApiError {
    fn from(e: PoolError) -> Self {
        ApiError::new(e.status(), e.to_string())
    }
}

fn pool(api: &Api) -> Result<&Arc<Pool>, ApiError> {
    api.pool.as_ref().ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "this lab keeps no state store, so it has no pool"))
}

/// Ask for DUTs.
#[utoipa::path(post, path = "/api/v1/reservations", operation_id = "requestDuts", tag = "pool",
    request_body(content = Request, content_type = "application/json"),
    responses(
        (status = 201, description = "Queued (`waiting`) or already `allocated`", body = Reservation),
        (status = 400, description = "A request the pool can never meet: the message names the limit", body = ErrorBody),
        (status = 403, description = "The token has no `reserve` scope", body = ErrorBody),
    ))]
async fn request(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let pool = pool(&api)?;
    let req: Request = body_json(&api, &headers, body).await?;
    Ok(json_response(StatusCode::CREATED, &pool.request(&p, req, &actor.0).await?))
}

/// The query string as `T` (a 400 naming what is wrong).
fn query<T: serde::de::DeserializeOwned>(q: Option<String>) -> Result<T, ApiError> {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(q.unwrap_or_default().as_bytes()).into_owned().collect();
    let v: serde_json::Map<String, serde_json::Value> = pairs
        .into_iter()
        .map(|(k, v)| {
            let numeric = matches!(k.as_str(), "after" | "limit");
            let n = match v.parse::<i64>() {
                Ok(n) if numeric => serde_json::Value::from(n),
                _ => serde_json::Value::String(v),
            };
            (k, n)
        })
        .collect();
    serde_json::from_value(serde_json::Value::Object(v)).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad query: {e}")))
}

/// `?state=&after=&limit=`
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Only reservations in this state.
    state: Option<String>,
    /// Only ids above this one (the `Link: rel="next"` of the previous page).
    after: Option<i64>,
    /// At most this many (default 100, at most 1000).
    limit: Option<usize>,
}

/// The caller's reservations (every one for the administrator), oldest first.
#[utoipa::path(get, path = "/api/v1/reservations", operation_id = "listReservations", tag = "pool", params(ListQuery),
    responses((status = 200, description = "One page; `Link: rel=\"next\"` when full", body = [Reservation])))]
async fn list(State(api): State<Arc<Api>>, Extension(p): Extension<Principal>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let q: ListQuery = query(q)?;
    let limit = q.limit.unwrap_or(LIST_PAGE).clamp(1, crate::pool::LIST_PAGE_MAX);
    let page = pool(&api)?.list(&p, q.state.clone(), q.after.unwrap_or(0), limit).await?;
    let mut r = json_response(StatusCode::OK, &page);
    if let (true, Some(last)) = (page.len() == limit, page.last()) {
        let state = q.state.map(|s| format!("&state={s}")).unwrap_or_default();
        let link = format!("</api/v1/reservations?after={}&limit={limit}{state}>; rel=\"next\"", last.id);
        if let Ok(v) = link.parse() {
            r.headers_mut().insert(http::header::LINK, v);
        }
    }
    Ok(r)
}

/// `?wait=30s`
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    /// While it is `waiting`, answer only when it changes or after this long (at most 300s).
    wait: Option<String>,
}

/// One reservation; with `?wait=`, a long poll.
#[utoipa::path(get, path = "/api/v1/reservations/{id}", operation_id = "getReservation", tag = "pool",
    params(("id" = i64, Path, description = "The reservation"), WaitQuery),
    responses(
        (status = 200, description = "The reservation", body = Reservation),
        (status = 403, description = "Another tenant's", body = ErrorBody),
        (status = 404, description = "No such reservation", body = ErrorBody),
    ))]
async fn get_one(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    P(id): P<i64>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let pool = pool(&api)?;
    let q: WaitQuery = query(q)?;
    let wait = match q.wait {
        Some(w) => citron_core::units::parse_duration(&w).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("wait: {e}")))?,
        None => std::time::Duration::ZERO,
    };
    Ok(json_response(StatusCode::OK, &pool.wait(&p, id, wait).await?))
}

/// Done with it: idempotent.
#[utoipa::path(delete, path = "/api/v1/reservations/{id}", operation_id = "releaseReservation", tag = "pool",
    params(("id" = i64, Path, description = "The reservation")),
    responses(
        (status = 200, description = "Released (or already over)", body = Reservation),
        (status = 403, description = "Another tenant's", body = ErrorBody),
        (status = 404, description = "No such reservation", body = ErrorBody),
    ))]
async fn release(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    Extension(actor): Extension<Actor>,
    P(id): P<i64>,
) -> Result<Response, ApiError> {
    Ok(json_response(StatusCode::OK, &pool(&api)?.release(&p, id, &actor.0).await?))
}

/// `{"lifetime": "2h"}`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Extend {
    /// The new lifetime, counted from the allocation.
    lifetime: String,
}

/// A new lifetime, within the tenant's maximum.
#[utoipa::path(patch, path = "/api/v1/reservations/{id}", operation_id = "extendReservation", tag = "pool",
    params(("id" = i64, Path, description = "The reservation")),
    request_body(content = Extend, content_type = "application/json"),
    responses(
        (status = 200, description = "Extended (an allocated one has a new token)", body = Reservation),
        (status = 400, description = "Above the tenant's maximum", body = ErrorBody),
        (status = 409, description = "Already over", body = ErrorBody),
    ))]
async fn extend(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    Extension(actor): Extension<Actor>,
    P(id): P<i64>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let e: Extend = body_json(&api, &headers, body).await?;
    Ok(json_response(StatusCode::OK, &pool(&api)?.extend(&p, id, &e.lifetime, &actor.0).await?))
}

/// `{"keep": "24h"}`
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Fail {
    /// How long the DUTs stay aside for debugging (none: back to the pool now).
    #[serde(default)]
    keep: Option<String>,
}

/// The reservation failed; its DUTs may be kept aside.
#[utoipa::path(post, path = "/api/v1/reservations/{id}/fail", operation_id = "failReservation", tag = "pool",
    params(("id" = i64, Path, description = "The reservation")),
    request_body(content = Fail, content_type = "application/json"),
    responses(
        (status = 200, description = "Failed", body = Reservation),
        (status = 409, description = "Not allocated", body = ErrorBody),
    ))]
async fn fail(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    Extension(actor): Extension<Actor>,
    P(id): P<i64>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let f: Fail = body_json(&api, &headers, body).await?;
    let keep = match f.keep {
        Some(k) => Some(citron_core::units::parse_duration(&k).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("keep: {e}")))?),
        None => None,
    };
    Ok(json_response(StatusCode::OK, &pool(&api)?.fail(&p, id, keep, &actor.0).await?))
}

/// Every DUT of the pool with its state (the administrator's).
#[utoipa::path(get, path = "/api/v1/pool/duts", operation_id = "listPoolDuts", tag = "pool",
    responses((status = 200, description = "Every DUT", body = [PoolDut])))]
async fn pool_duts(State(api): State<Arc<Api>>) -> Result<Response, ApiError> {
    let duts = pool(&api)?.duts().await.map_err(PoolError::from)?;
    Ok(json_response(StatusCode::OK, &duts))
}

/// Take a DUT out of the pool by hand, or put it back (also out of quarantine).
#[utoipa::path(post, path = "/api/v1/pool/duts/{id}/{action}", operation_id = "enablePoolDut", tag = "pool",
    params(("id" = String, Path, description = "The DUT"), ("action" = String, Path, description = "`enable` or `disable`")),
    responses(
        (status = 200, description = "Its state now", body = PoolDut),
        (status = 404, description = "No such DUT", body = ErrorBody),
        (status = 409, description = "Held by a reservation", body = ErrorBody),
    ))]
async fn enable(
    State(api): State<Arc<Api>>,
    Extension(actor): Extension<Actor>,
    P((id, action)): P<(String, String)>,
) -> Result<Response, ApiError> {
    let on = match action.as_str() {
        "enable" => true,
        "disable" => false,
        _ => return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no such route: use …/pool/duts/{id}/enable or …/disable"))),
    };
    Ok(json_response(StatusCode::OK, &pool(&api)?.set_enabled(&id, on, &actor.0).await?))
}
