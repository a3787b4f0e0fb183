//! Tenants and tokens: `POST /api/v1/tenants`, `POST /api/v1/tokens`,
//! `POST /api/v1/tokens/subset`, `DELETE /api/v1/tokens/{id}` ([`crate::auth`] says what a
//! token is).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Extension, Router};
use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::doc::ErrorBody;
use super::routes::P;
use super::{json_response, require_type, Api, ApiError, JSON};
use crate::auth::{check_name, new_id, Claims, Pattern, Principal, Scope, TokenStore};

/// A token's lifetime when the request gives none.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// A tenant's first token's lifetime when the request gives none.
pub const TENANT_TTL: Duration = Duration::from_secs(90 * 86400);
/// The longest lifetime a token may have.
pub const MAX_TTL: Duration = Duration::from_secs(366 * 86400);

pub(super) fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/api/v1/tenants", post(add_tenant))
        .route("/api/v1/tokens", post(mint_token))
        .route("/api/v1/tokens/subset", post(subset_token))
        .route("/api/v1/tokens/{id}", delete(revoke_token))
}

#[derive(OpenApi)]
#[openapi(
    paths(add_tenant, mint_token, subset_token, revoke_token),
    components(schemas(NewTenant, TenantView, NewToken, TokenSubset, TokenView, Scope)),
    tags((name = "tokens", description = "Tenants and the signed tokens the lab hands out"))
)]
pub(super) struct TokensDoc;

/// A tenant to add.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewTenant {
    /// Its name (`[A-Za-z0-9._-]`, 1 to 128).
    name: String,
    /// Its first token's lifetime (`90d` unless given; at most `366d`).
    #[serde(default)]
    #[schema(example = "30d")]
    ttl: Option<String>,
}

/// A tenant added, and its first token (every scope but `admin`, every job).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Tenant)]
pub(super) struct TenantView {
    name: String,
    /// The bearer token.
    token: String,
    /// Its id (what `DELETE /api/v1/tokens/{id}` takes).
    id: String,
    /// When it expires, seconds since the Unix epoch.
    expires_at: u64,
}

/// A token to mint (administrator only).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewToken {
    /// What it may do.
    scopes: Vec<Scope>,
    /// Which jobs: a name, `prefix*`, or `*`.
    #[schema(example = "kernel-*")]
    job: String,
    /// How long it lives (`1h` unless given; at most `366d`).
    #[serde(default)]
    #[schema(example = "10m")]
    ttl: Option<String>,
    /// The tenant whose jobs it reaches (none: the lab's own jobs).
    #[serde(default)]
    tenant: Option<String>,
    /// Only this run.
    #[serde(default)]
    run: Option<i64>,
    /// Which DUTs the `dut` scope drives: a DUT id, `prefix*` or `*`.
    #[serde(default)]
    dut: Option<String>,
}

/// A narrowing of the token that asks: every field defaults to the token's own, and none may
/// be wider or longer.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenSubset {
    #[serde(default)]
    scopes: Option<Vec<Scope>>,
    #[serde(default)]
    job: Option<String>,
    /// How long it lives (at most what the token has left).
    #[serde(default)]
    ttl: Option<String>,
    #[serde(default)]
    run: Option<i64>,
    #[serde(default)]
    dut: Option<String>,
}

/// A token minted.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Token)]
pub(super) struct TokenView {
    /// The bearer token.
    token: String,
    /// Its id (what `DELETE /api/v1/tokens/{id}` takes).
    id: String,
    /// When it expires, seconds since the Unix epoch.
    expires_at: u64,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, msg)
}

fn forbidden(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, msg)
}

fn ttl(given: Option<&str>, default: Duration) -> Result<Duration, ApiError> {
    let d = match given {
        Some(s) => citron_core::units::parse_duration(s).map_err(|e| bad(format!("ttl: {e}")))?,
        None => default,
    };
    if d.is_zero() || d > MAX_TTL {
        return Err(bad(format!("ttl must be above 0 and at most {} days", MAX_TTL.as_secs() / 86400)));
    }
    Ok(d)
}

fn pattern(what: &str, s: &str) -> Result<Pattern, ApiError> {
    Pattern::parse(s).map_err(|e| bad(format!("{what}: {e}")))
}

/// The token store, or 503 when the lab keeps no state (tokens need the signing key).
fn store(api: &Api) -> Result<&Arc<TokenStore>, ApiError> {
    api.auth.tokens().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this lab keeps no state store, so it has no signing key: tokens need `citron serve`",
        )
    })
}

pub(super) async fn body_json<T: serde::de::DeserializeOwned>(api: &Api, headers: &HeaderMap, body: Body) -> Result<T, ApiError> {
    require_type(headers, JSON)?;
    let body = api.read_body(body).await?;
    serde_json::from_slice(&body).map_err(|e| bad(format!("the body is not what this route takes (see /api/v1/openapi.json): {e}")))
}

async fn minted(store: &TokenStore, claims: Claims, code: StatusCode) -> Result<Response, ApiError> {
    let token = store.mint(&claims).await.map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    tracing::info!(id = %claims.jti, sub = %claims.sub, scopes = ?claims.scope, job = claims.job.as_str(), "api: token minted");
    Ok(json_response(code, &TokenView { token, id: claims.jti, expires_at: claims.exp }))
}

/// Add a tenant, and answer its first token.
#[utoipa::path(post, path = "/api/v1/tenants", operation_id = "addTenant", tag = "tokens",
    request_body(content = NewTenant, content_type = "application/json"),
    responses(
        (status = 201, description = "Added; its first token (every scope but `admin`)", body = TenantView),
        (status = 400, description = "A bad name or ttl", body = ErrorBody),
        (status = 403, description = "Not the administrator", body = ErrorBody),
        (status = 409, description = "The tenant exists", body = ErrorBody),
        (status = 413, description = "Body over `limits.api_body_max`", body = ErrorBody),
        (status = 415, description = "Body not `application/json`", body = ErrorBody),
        (status = 503, description = "The lab keeps no state store", body = ErrorBody),
    ))]
async fn add_tenant(State(api): State<Arc<Api>>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let store = store(&api)?;
    let t: NewTenant = body_json(&api, &headers, body).await?;
    check_name("tenant", &t.name).map_err(bad)?;
    let life = ttl(t.ttl.as_deref(), TENANT_TTL)?;
    if !store.add_tenant(&t.name).await.map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("tenant {:?} exists: mint it more tokens with POST /api/v1/tokens", t.name),
        ));
    }
    let now = now_secs();
    let claims = Claims {
        sub: format!("tenant:{}", t.name),
        tenant: Some(t.name.clone()),
        scope: vec![Scope::Upload, Scope::Read, Scope::Reserve, Scope::Dut],
        job: Pattern::any(),
        run: None,
        dut: None,
        duts: vec![],
        exp: now + life.as_secs(),
        iat: now,
        jti: new_id(),
    };
    let token = store.mint(&claims).await.map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    tracing::info!(tenant = %t.name, id = %claims.jti, "api: tenant added");
    Ok(json_response(StatusCode::CREATED, &TenantView { name: t.name, token, id: claims.jti, expires_at: claims.exp }))
}

/// Mint a token (administrator only).
#[utoipa::path(post, path = "/api/v1/tokens", operation_id = "mintToken", tag = "tokens",
    request_body(content = NewToken, content_type = "application/json"),
    responses(
        (status = 201, description = "Minted", body = TokenView),
        (status = 400, description = "A bad scope, pattern or ttl", body = ErrorBody),
        (status = 403, description = "Not the administrator", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 413, description = "Body over `limits.api_body_max`", body = ErrorBody),
        (status = 415, description = "Body not `application/json`", body = ErrorBody),
        (status = 503, description = "The lab keeps no state store", body = ErrorBody),
    ))]
async fn mint_token(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if !p.is_admin() {
        return Err(forbidden("only the administrator mints tokens: narrow yours with POST /api/v1/tokens/subset"));
    }
    let store = store(&api)?;
    let t: NewToken = body_json(&api, &headers, body).await?;
    if let Some(name) = &t.tenant {
        check_name("tenant", name).map_err(bad)?;
        if !store.has_tenant(name).await.map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))? {
            return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no tenant {name:?}: add it with POST /api/v1/tenants")));
        }
    }
    let now = now_secs();
    let claims = Claims {
        sub: t.tenant.as_ref().map(|n| format!("tenant:{n}")).unwrap_or_else(|| "lab".into()),
        tenant: t.tenant,
        scope: t.scopes,
        job: pattern("job", &t.job)?,
        run: t.run,
        dut: t.dut.as_deref().map(|d| pattern("dut", d)).transpose()?,
        duts: vec![],
        exp: now + ttl(t.ttl.as_deref(), DEFAULT_TTL)?.as_secs(),
        iat: now,
        jti: new_id(),
    };
    minted(store, claims, StatusCode::CREATED).await
}

/// Narrow the token that asks: never wider, never longer.
#[utoipa::path(post, path = "/api/v1/tokens/subset", operation_id = "subsetToken", tag = "tokens",
    request_body(content = TokenSubset, content_type = "application/json"),
    responses(
        (status = 201, description = "The narrower token", body = TokenView),
        (status = 400, description = "A bad scope, pattern or ttl, or the administrator's token (mint with POST /api/v1/tokens)", body = ErrorBody),
        (status = 403, description = "Wider or longer than the token", body = ErrorBody),
        (status = 413, description = "Body over `limits.api_body_max`", body = ErrorBody),
        (status = 415, description = "Body not `application/json`", body = ErrorBody),
        (status = 503, description = "The lab keeps no state store", body = ErrorBody),
    ))]
async fn subset_token(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let store = store(&api)?;
    let Principal::Token(parent) = p else {
        return Err(bad("the administrator's token has no claims to narrow: mint one with POST /api/v1/tokens"));
    };
    let s: TokenSubset = body_json(&api, &headers, body).await?;
    let now = now_secs();
    let exp = match s.ttl.as_deref() {
        Some(t) => now + ttl(Some(t), DEFAULT_TTL)?.as_secs(),
        None => parent.exp,
    };
    let child = Claims {
        sub: parent.sub.clone(),
        tenant: parent.tenant.clone(),
        scope: s.scopes.unwrap_or_else(|| parent.scope.clone()),
        job: s.job.as_deref().map(|j| pattern("job", j)).transpose()?.unwrap_or_else(|| parent.job.clone()),
        run: s.run.or(parent.run),
        dut: s.dut.as_deref().map(|d| pattern("dut", d)).transpose()?.or_else(|| parent.dut.clone()),
        duts: if s.dut.is_some() { vec![] } else { parent.duts.clone() },
        exp,
        iat: now,
        jti: new_id(),
    };
    if let Some(why) = parent.why_not_subset(&child) {
        return Err(forbidden(format!("a narrowed token is never wider nor longer than its parent: {why}")));
    }
    minted(store, child, StatusCode::CREATED).await
}

/// Revoke a token (the administrator any; a tenant's token those of its tenant).
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", operation_id = "revokeToken", tag = "tokens",
    params(("id" = String, Path, description = "The token's id")),
    responses(
        (status = 204, description = "Revoked (or it was already): every gateway refuses it"),
        (status = 403, description = "A token of another tenant", body = ErrorBody),
        (status = 404, description = "No such token", body = ErrorBody),
        (status = 503, description = "The lab keeps no state store", body = ErrorBody),
    ))]
async fn revoke_token(State(api): State<Arc<Api>>, Extension(p): Extension<Principal>, P(id): P<String>) -> Result<Response, ApiError> {
    let store = store(&api)?;
    let internal = |e: citron_core::store::StoreError| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, format!("no token {:?}", citron_core::access::truncate_logged(&id, 64)));
    let Some(tenant) = store.tenant_of(&id).await.map_err(internal)? else { return Err(not_found()) };
    if let Principal::Token(c) = &p {
        if !c.has(Scope::Admin) && (c.tenant.is_none() || c.tenant != tenant) {
            return Err(forbidden("a token revokes only tokens of its own tenant"));
        }
    }
    if !store.revoke(&id).await.map_err(internal)? {
        return Err(not_found());
    }
    tracing::info!(%id, "api: token revoked");
    Ok(StatusCode::NO_CONTENT.into_response())
}
