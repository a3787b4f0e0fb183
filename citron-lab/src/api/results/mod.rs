//! The results routes (`/api/v1/results/…`): runs from outside, their files and console, and
//! reading them back ([`crate::results`] says what a run is). `read.rs` has `latest`, blobs and
//! by-hash; `replay.rs` has `find` and runs by id (replay by revision).

mod read;
mod replay;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Router};
use futures::StreamExt as _;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::doc::ErrorBody;
use super::routes::P;
use super::{json_response, require_type, Api, ApiError, JSON};
use crate::auth::{Principal, Scope};
use crate::results::{check_path, parse_sha256, Added, Appended, NewRun, ResultFile, Results, ResultsError, Retention, Run, Status};

/// The header a client sends a file's SHA-256 in (hex), and blobs answer it in.
pub const CHECKSUM_HEADER: &str = "x-checksum-sha256";
/// Runs one page holds when the request gives no `limit`.
pub const RUNS_PAGE: i64 = 100;
/// The largest `limit` of a page of runs.
pub const RUNS_PAGE_MAX: i64 = 1000;

pub(super) fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/api/v1/results/{job}/runs", post(open_run).get(list_runs))
        .route("/api/v1/results/{job}/runs/{run}", get(get_run))
        .route("/api/v1/results/{job}/runs/{run}/files/{*path}", put(upload_file).get(run_file))
        .route("/api/v1/results/{job}/runs/{run}/console", put(append_console).get(get_console))
        .route("/api/v1/results/{job}/runs/{run}/finish", post(finish_run))
        .route("/api/v1/results/{job}/latest", get(read::latest_run))
        .route("/api/v1/results/{job}/latest/files/{*path}", get(read::latest_file).head(read::head_latest_file))
        .route("/api/v1/results/{job}/retention", get(get_retention).put(set_retention))
        .route("/api/v1/results/{job}/find", get(replay::find))
        .route("/api/v1/results/by-hash", get(read::by_hash))
        .route("/api/v1/results/by-run/{run}", get(replay::by_run))
        .route("/api/v1/results/blobs/sha256/{hex}", get(read::get_blob).head(read::head_blob))
}

#[derive(OpenApi)]
#[openapi(
    paths(open_run, list_runs, get_run, upload_file, run_file, append_console, get_console, finish_run, read::latest_run, read::latest_file, read::head_latest_file, read::by_hash, read::get_blob, read::head_blob, get_retention, set_retention, replay::find, replay::by_run),
    components(schemas(NewRunBody, FinishBody, Run, Status, ResultFile, ConsoleLength, read::HashHit, Retention, RetentionBody, crate::results::Found)),
    tags((name = "results", description = "Runs of jobs, their files and console; `latest`; blobs by SHA-256"))
)]
pub(super) struct ResultsDoc;

impl From<ResultsError> for ApiError {
    fn from(e: ResultsError) -> Self {
        if e.status().is_server_error() {
            tracing::error!(error = %e, "results: request failed");
        }
        ApiError::new(e.status(), e.to_string())
    }
}

impl From<citron_core::store::StoreError> for ApiError {
    fn from(e: citron_core::store::StoreError) -> Self {
        ResultsError::from(e).into()
    }
}

/// A run to open.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewRunBody {
    /// What is built or tested (a commit, a version).
    #[serde(default)]
    revision: Option<String>,
    /// What it runs on.
    #[serde(default)]
    platform: Option<String>,
}

/// How a run ended.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct FinishBody {
    /// `success`, `failure` or `unknown`.
    status: Status,
}

/// A console's length after an append.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ConsoleLength {
    /// Bytes: the `offset` of the next append.
    length: u64,
}

fn results(api: &Api) -> Result<&Results, ApiError> {
    api.results.as_ref().ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "this lab keeps no state store, so it keeps no results: they need `citron serve`")
    })
}

/// Short text fields (revision, platform): at most 256 bytes, no control characters.
fn short(what: &str, v: Option<String>) -> Result<Option<String>, ApiError> {
    match v {
        Some(s) if s.is_empty() || s.len() > 256 || s.chars().any(char::is_control) => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, format!("{what} must have 1 to 256 bytes and no control characters")))
        }
        v => Ok(v),
    }
}

/// `?key=value` pairs, `%XX` and `+` decoded.
fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(q.unwrap_or("").as_bytes()).into_owned().collect()
}

/// The run `run` of `job`, or 404.
async fn the_run(r: &Results, job: &str, run: i64) -> Result<Run, ApiError> {
    r.runs().get(job, run).await?.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("job {job:?} has no run {run}")))
}

/// Open a run of the job.
#[utoipa::path(post, path = "/api/v1/results/{job}/runs", operation_id = "openRun", tag = "results",
    params(("job" = String, Path, description = "The job's name")),
    request_body(content = NewRunBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Opened: upload its files, then finish it", body = Run),
        (status = 400, description = "A bad job name, revision or platform", body = ErrorBody),
        (status = 403, description = "No `upload` scope for the job, a run token, or another tenant's job", body = ErrorBody),
        (status = 415, description = "Body not `application/json`", body = ErrorBody),
        (status = 503, description = "The lab keeps no state store", body = ErrorBody),
    ))]
async fn open_run(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    P(job): P<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let r = results(&api)?;
    // A run token is for its own run: no run has that id yet.
    r.allow(&p, Scope::Upload, &job, None).await?;
    let b = api.read_body(body).await?;
    let n: NewRunBody = if b.is_empty() {
        NewRunBody::default()
    } else {
        require_type(&headers, JSON)?;
        serde_json::from_slice(&b).map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, format!("the body must be {{\"revision\": ..., \"platform\": ...}}: {e}"))
        })?
    };
    let tenant = p.claims().and_then(|c| c.tenant.clone());
    let new =
        NewRun { job: job.clone(), tenant, revision: short("revision", n.revision)?, platform: short("platform", n.platform)?, dut: None };
    match r.runs().open(new).await? {
        Ok(run) => {
            tracing::info!(%job, run = run.id, "results: run opened");
            Ok(json_response(StatusCode::CREATED, &run))
        }
        Err(_) => Err(ResultsError::Forbidden(format!("job {job:?} belongs to another tenant")).into()),
    }
}

/// The job's runs, oldest first, one page at a time.
#[utoipa::path(get, path = "/api/v1/results/{job}/runs", operation_id = "listRuns", tag = "results",
    params(
        ("job" = String, Path, description = "The job's name"),
        ("revision" = Option<String>, Query, description = "Only the runs of this revision"),
        ("after" = Option<i64>, Query, description = "Runs with an id above this one (default 0)"),
        ("limit" = Option<i64>, Query, description = "At most this many (default 100, 1 to 1000)", minimum = 1, maximum = 1000),
    ),
    responses(
        (status = 200, description = "At most `limit` runs; a full page has `Link: <...>; rel=\"next\"`", body = [Run],
            headers(("Link" = String, description = "RFC 8288 link to the next page, when this one is full"))),
        (status = 400, description = "A bad job name or query", body = ErrorBody),
        (status = 403, description = "No `read` scope for the job", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 503, description = "The lab keeps no state store", body = ErrorBody),
    ))]
async fn list_runs(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    P(job): P<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let r = results(&api)?;
    r.allow(&p, Scope::Read, &job, None).await?;
    let (mut after, mut limit, mut revision) = (0i64, RUNS_PAGE, None);
    let bad = |k: &str| ApiError::new(StatusCode::BAD_REQUEST, format!("`{k}`: ?revision=R&after=ID&limit=N, N from 1 to {RUNS_PAGE_MAX}"));
    for (k, v) in query_pairs(q.as_deref()) {
        match k.as_str() {
            "after" => after = v.parse().ok().filter(|a| *a >= 0).ok_or_else(|| bad("after"))?,
            "limit" => limit = v.parse().ok().filter(|n| (1..=RUNS_PAGE_MAX).contains(n)).ok_or_else(|| bad("limit"))?,
            "revision" => revision = short("revision", Some(v))?,
            _ => {}
        }
    }
    let runs = r.runs().list(&job, revision.clone(), after, limit).await?;
    let mut resp = json_response(StatusCode::OK, &runs);
    if let Some(last) = runs.last().filter(|_| runs.len() as i64 == limit) {
        let rev = revision
            .map(|v| format!("&revision={}", url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()))
            .unwrap_or_default();
        let link = format!("</api/v1/results/{job}/runs?after={}&limit={limit}{rev}>; rel=\"next\"", last.id);
        if let Ok(v) = HeaderValue::from_str(&link) {
            resp.headers_mut().insert(header::LINK, v);
        }
    }
    Ok(resp)
}

/// One run, with its files.
#[utoipa::path(get, path = "/api/v1/results/{job}/runs/{run}", operation_id = "getRun", tag = "results",
    params(("job" = String, Path, description = "The job's name"), ("run" = i64, Path, description = "The run's id")),
    responses(
        (status = 200, description = "The run and its files", body = Run),
        (status = 403, description = "No `read` scope for the job", body = ErrorBody),
        (status = 404, description = "No such job or run", body = ErrorBody),
        (status = 503, description = "The lab keeps no state store", body = ErrorBody),
    ))]
async fn get_run(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    P((job, run)): P<(String, i64)>,
) -> Result<Response, ApiError> {
    let r = results(&api)?;
    r.allow(&p, Scope::Read, &job, Some(run)).await?;
    Ok(json_response(StatusCode::OK, &the_run(r, &job, run).await?))
}

/// Upload a file into the open run (streamed; checked against `X-Checksum-SHA256` when sent).
#[utoipa::path(put, path = "/api/v1/results/{job}/runs/{run}/files/{path}", operation_id = "uploadFile", tag = "results",
    params(
        ("job" = String, Path, description = "The job's name"),
        ("run" = i64, Path, description = "The run's id"),
        ("path" = String, Path, description = "The file's path in the run (may contain `/`)"),
        ("X-Checksum-SHA256" = Option<String>, Header, description = "The content's SHA-256, hex: checked before anything is kept"),
    ),
    request_body(content = Vec<u8>, description = "The file", content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "The run had this file with this content already", body = ResultFile),
        (status = 201, description = "Stored: durable and visible", body = ResultFile),
        (status = 400, description = "A bad path, a checksum that does not match, or a body cut off: nothing kept", body = ErrorBody),
        (status = 403, description = "No `upload` scope for the job or run", body = ErrorBody),
        (status = 404, description = "No such job or run", body = ErrorBody),
        (status = 409, description = "The run is finished, or has other content at this path", body = ErrorBody),
        (status = 413, description = "Larger than the lab allows", body = ErrorBody),
        (status = 503, description = "The lab keeps no state store", body = ErrorBody),
        (status = 507, description = "The results store is full: nothing kept", body = ErrorBody),
    ))]
async fn upload_file(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    P((job, run, path)): P<(String, i64, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let r = results(&api)?;
    r.allow(&p, Scope::Upload, &job, Some(run)).await?;
    check_path(&path)?;
    let expected = headers.get(CHECKSUM_HEADER).map(|v| parse_sha256(v.to_str().unwrap_or(""))).transpose()?;
    let the = the_run(r, &job, run).await?;
    if the.status != Status::Running {
        return Err(ResultsError::Conflict(format!("run {run} is finished ({}): open a new run", the.status.name())).into());
    }
    // The same path again: answered from what is there when the digest was sent.
    if let (Some(want), Some(have)) = (expected, r.runs().file(run, &path).await?) {
        return match have.sha256 == crate::auth::hex(&want) {
            true => Ok(json_response(StatusCode::OK, &have)),
            false => Err(conflict(&path, &have.sha256).into()),
        };
    }
    let stored = r.blobs().put(body.into_data_stream(), r.file_max_bytes(), expected).await?;
    let sha = crate::auth::hex(&stored.sha256);
    // Through the API, an upload always carries the lab's or a minted token (or the lab is
    // open to loopback only): "untokened" is for uploads by a DUT's source address.
    let code = match r.runs().add_file(run, &path, &sha, stored.size, true).await? {
        Added::New => StatusCode::CREATED,
        Added::Same => StatusCode::OK,
        Added::Other(there) => return Err(conflict(&path, &there).into()),
        Added::Closed => return Err(ResultsError::Conflict(format!("run {run} was finished during the upload: open a new run")).into()),
    };
    let file = r.runs().file(run, &path).await?.ok_or_else(|| ResultsError::Io("a stored file does not read back".into()))?;
    tracing::info!(%job, run, %path, sha256 = %sha, bytes = stored.size, "results: file stored");
    Ok(json_response(code, &file))
}

fn conflict(path: &str, there: &str) -> ResultsError {
    ResultsError::Conflict(format!(
        "{path} has other content already (sha256 {there}): a run's file is never overwritten; upload under another path or open a new run"
    ))
}

/// A file of a run: a redirect to its blob.
#[utoipa::path(get, path = "/api/v1/results/{job}/runs/{run}/files/{path}", operation_id = "getRunFile", tag = "results",
    params(("job" = String, Path, description = "The job's name"), ("run" = i64, Path, description = "The run's id"), ("path" = String, Path, description = "The file's path in the run")),
    responses(
        (status = 307, description = "To the immutable blob", headers(("Location" = String), ("X-Checksum-SHA256" = String, description = "The file's SHA-256, hex"))),
        (status = 400, description = "A bad path", body = ErrorBody),
        (status = 403, description = "No `read` scope for the job", body = ErrorBody),
        (status = 404, description = "No such job, run or file", body = ErrorBody),
        (status = 503, description = "The lab keeps no state store", body = ErrorBody),
    ))]
async fn run_file(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    P((job, run, path)): P<(String, i64, String)>,
) -> Result<Response, ApiError> {
    let r = results(&api)?;
    r.allow(&p, Scope::Read, &job, Some(run)).await?;
    check_path(&path)?;
    the_run(r, &job, run).await?;
    let f =
        r.runs().file(run, &path).await?.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("run {run} has no file {path:?}")))?;
    Ok(to_blob(&f))
}

/// 307 to the file's blob, its digest in `X-Checksum-SHA256`.
fn to_blob(f: &ResultFile) -> Response {
    let mut resp = StatusCode::TEMPORARY_REDIRECT.into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/results/blobs/sha256/{}", f.sha256)) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&f.sha256) {
        h.insert(CHECKSUM_HEADER, v);
    }
    resp
}

/// Append to the open run's console, idempotently.
#[utoipa::path(put, path = "/api/v1/results/{job}/runs/{run}/console", operation_id = "appendConsole", tag = "results",
    params(
        ("job" = String, Path, description = "The job's name"),
        ("run" = i64, Path, description = "The run's id"),
        ("offset" = u64, Query, description = "Where the body starts in the console: bytes the console has already are skipped (a retry is harmless), a gap is refused"),
    ),
    request_body(content = Vec<u8>, description = "Console bytes", content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "Appended (or had already)", body = ConsoleLength),
        (status = 400, description = "No offset", body = ErrorBody),
        (status = 403, description = "No `upload` scope for the job or run", body = ErrorBody),
        (status = 404, description = "No such job or run", body = ErrorBody),
        (status = 409, description = "The run is finished, or the offset is past the console's end", body = ErrorBody),
        (status = 413, description = "Body over `limits.api_body_max`, or the console would grow past its bound", body = ErrorBody),
        (status = 503, description = "The lab keeps no state store", body = ErrorBody),
    ))]
async fn append_console(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    P((job, run)): P<(String, i64)>,
    RawQuery(q): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    let r = results(&api)?;
    r.allow(&p, Scope::Upload, &job, Some(run)).await?;
    let offset: u64 = query_pairs(q.as_deref())
        .into_iter()
        .find(|(k, _)| k == "offset")
        .and_then(|(_, v)| v.parse().ok())
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "?offset=N is required: where this body starts in the console"))?;
    the_run(r, &job, run).await?;
    let data = api.read_body(body).await?;
    match r.runs().append_console(run, offset, data, crate::results::CONSOLE_MAX_BYTES).await? {
        Appended::Length(length) => Ok(json_response(StatusCode::OK, &ConsoleLength { length })),
        Appended::Gap(end) => {
            Err(ApiError::new(StatusCode::CONFLICT, format!("the console has {end} bytes: append at offset {end} at most")))
        }
        Appended::TooLong => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a console holds at most {} bytes", crate::results::CONSOLE_MAX_BYTES),
        )),
        Appended::Closed => Err(ApiError::new(StatusCode::CONFLICT, format!("run {run} is finished"))),
    }
}

/// The run's console.
#[utoipa::path(get, path = "/api/v1/results/{job}/runs/{run}/console", operation_id = "getConsole", tag = "results",
    params(("job" = String, Path, description = "The job's name"), ("run" = i64, Path, description = "The run's id")),
    responses(
        (status = 200, description = "The console so far", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 403, description = "No `read` scope for the job", body = ErrorBody),
        (status = 404, description = "No such job or run", body = ErrorBody),
        (status = 503, description = "The lab keeps no state store", body = ErrorBody),
    ))]
async fn get_console(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    P((job, run)): P<(String, i64)>,
) -> Result<Response, ApiError> {
    let r = results(&api)?;
    r.allow(&p, Scope::Read, &job, Some(run)).await?;
    the_run(r, &job, run).await?;
    let mut resp = Response::new(Body::from(r.runs().console(run).await?));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    Ok(resp)
}

/// Finish the run.
#[utoipa::path(post, path = "/api/v1/results/{job}/runs/{run}/finish", operation_id = "finishRun", tag = "results",
    params(("job" = String, Path, description = "The job's name"), ("run" = i64, Path, description = "The run's id")),
    request_body(content = FinishBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Finished (again with the same status is fine)", body = Run),
        (status = 400, description = "Not a status", body = ErrorBody),
        (status = 403, description = "No `upload` scope for the job or run", body = ErrorBody),
        (status = 404, description = "No such job or run", body = ErrorBody),
        (status = 409, description = "Finished already with another status", body = ErrorBody),
        (status = 415, description = "Body not `application/json`", body = ErrorBody),
        (status = 503, description = "The lab keeps no state store", body = ErrorBody),
    ))]
async fn finish_run(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    P((job, run)): P<(String, i64)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let r = results(&api)?;
    r.allow(&p, Scope::Upload, &job, Some(run)).await?;
    require_type(&headers, JSON)?;
    let b = api.read_body(body).await?;
    let f: FinishBody = serde_json::from_slice(&b).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, format!("the body must be {{\"status\": \"success\" | \"failure\" | \"unknown\"}}: {e}"))
    })?;
    if f.status == Status::Running {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "a run finishes with success, failure or unknown"));
    }
    the_run(r, &job, run).await?;
    let Some((now, token)) = r.runs().finish(run, f.status).await? else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("job {job:?} has no run {run}")));
    };
    if now != f.status {
        return Err(ApiError::new(StatusCode::CONFLICT, format!("run {run} is finished already ({})", now.name())));
    }
    if let Some(t) = token {
        r.revoke_run_token(&t).await?;
    }
    tracing::info!(%job, run, status = f.status.name(), "results: run finished");
    if let Err(e) = r.sweep(&job).await {
        tracing::warn!(%job, error = %e, "results: the retention sweep failed");
    }
    Ok(json_response(StatusCode::OK, &the_run(r, &job, run).await?))
}

/// A job's retention to set: both bounds optional (null or left out: none).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RetentionBody {
    /// Keep the files of the newest N finished runs.
    #[serde(default)]
    #[schema(minimum = 1)]
    keep_last: Option<u64>,
    /// Keep the files of runs finished less than this long ago (`30d`, `12h`).
    #[serde(default)]
    #[schema(example = "30d")]
    ttl: Option<String>,
}

/// The job's retention.
#[utoipa::path(get, path = "/api/v1/results/{job}/retention", operation_id = "getRetention", tag = "results",
    params(("job" = String, Path, description = "The job's name")),
    responses(
        (status = 200, description = "Its retention (both null: every run keeps its files)", body = Retention),
        (status = 403, description = "No `read` scope for the job", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 503, description = "The lab keeps no state store", body = ErrorBody),
    ))]
async fn get_retention(State(api): State<Arc<Api>>, Extension(p): Extension<Principal>, P(job): P<String>) -> Result<Response, ApiError> {
    let r = results(&api)?;
    r.allow(&p, Scope::Read, &job, None).await?;
    let ret = r.sweeper().get(&job).await?.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no job {job:?}")))?;
    Ok(json_response(StatusCode::OK, &ret))
}

/// Set the job's retention and apply it at once. The newest successful run of each platform
/// (what `latest` points at) always keeps its files; a run's record outlives its files.
#[utoipa::path(put, path = "/api/v1/results/{job}/retention", operation_id = "setRetention", tag = "results",
    params(("job" = String, Path, description = "The job's name")),
    request_body(content = RetentionBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Set and applied", body = Retention),
        (status = 400, description = "A bad bound", body = ErrorBody),
        (status = 403, description = "No `upload` scope for the job", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 415, description = "Body not `application/json`", body = ErrorBody),
        (status = 503, description = "The lab keeps no state store", body = ErrorBody),
    ))]
async fn set_retention(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    P(job): P<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let r = results(&api)?;
    r.allow(&p, Scope::Upload, &job, None).await?;
    require_type(&headers, JSON)?;
    let b = api.read_body(body).await?;
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let v: RetentionBody =
        serde_json::from_slice(&b).map_err(|e| bad(format!("the body must be {{\"keep_last\": N, \"ttl\": \"30d\"}}: {e}")))?;
    let ttl_secs =
        v.ttl.as_deref().map(citron_core::units::parse_duration).transpose().map_err(|e| bad(format!("ttl: {e}")))?.map(|d| d.as_secs());
    let ret = Retention { keep_last: v.keep_last, ttl_secs };
    if ret.keep_last == Some(0) || ret.ttl_secs == Some(0) {
        return Err(bad("keep_last and ttl must be above 0 (leave one out for no bound)".into()));
    }
    if p.claims().is_some_and(|c| c.run.is_some()) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "a run's token cannot change its job's retention"));
    }
    if !r.sweeper().set(&job, ret).await? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no job {job:?}")));
    }
    r.sweep(&job).await?;
    Ok(json_response(StatusCode::OK, &ret))
}
