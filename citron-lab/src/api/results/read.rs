//! Reading results back: the newest run (`latest`), blobs by SHA-256, and which runs produced
//! a digest. Only uploaded results are served here, and only to tokens that may read their job.

use super::*;

/// A file with the digest asked for.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct HashHit {
    job: String,
    run: i64,
    path: String,
}

/// `?platform=&status=` of `latest`: status `success` unless given (`any`: whatever it is).
fn latest_query(q: Option<&str>) -> Result<(Option<String>, Option<Status>), ApiError> {
    let (mut platform, mut status) = (None, Some(Status::Success));
    for (k, v) in query_pairs(q) {
        match k.as_str() {
            "platform" => platform = short("platform", Some(v))?,
            "status" if v == "any" => status = None,
            "status" => {
                status = Some(
                    Status::parse(&v)
                        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "status: success, failure, unknown, running or any"))?,
                )
            }
            _ => {}
        }
    }
    Ok((platform, status))
}

async fn latest(r: &Results, job: &str, q: Option<&str>) -> Result<Run, ApiError> {
    let (platform, status) = latest_query(q)?;
    r.runs().latest(job, platform, status).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("job {job:?} has no run{}", status.map(|s| format!(" with status {}", s.name())).unwrap_or_default()),
        )
    })
}

/// The newest run (successful unless `status` says otherwise): a redirect to it.
#[utoipa::path(get, path = "/api/v1/results/{job}/latest", operation_id = "latestRun", tag = "results",
    params(
        ("job" = String, Path, description = "The job's name"),
        ("platform" = Option<String>, Query, description = "Only runs on this platform"),
        ("status" = Option<String>, Query, description = "`success` (default), `failure`, `unknown`, `running` or `any`"),
    ),
    responses(
        (status = 307, description = "To the run", headers(("Location" = String))),
        (status = 400, description = "A bad query", body = ErrorBody),
        (status = 403, description = "No `read` scope for the job", body = ErrorBody),
        (status = 404, description = "No such job, or no such run", body = ErrorBody),
        (status = 503, description = "The lab keeps no state store", body = ErrorBody),
    ))]
pub(super) async fn latest_run(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    P(job): P<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let r = results(&api)?;
    r.allow(&p, Scope::Read, &job, None).await?;
    let run = latest(r, &job, q.as_deref()).await?;
    let mut resp = StatusCode::TEMPORARY_REDIRECT.into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/results/{job}/runs/{}", run.id)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

async fn latest_file_of(api: &Api, p: &Principal, job: &str, path: &str, q: Option<&str>) -> Result<Response, ApiError> {
    let r = results(api)?;
    r.allow(p, Scope::Read, job, None).await?;
    check_path(path)?;
    let run = latest(r, job, q).await?;
    let f = r
        .runs()
        .file(run.id, path)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("run {} has no file {path:?}", run.id)))?;
    if tokened_only(q) && !f.tokened {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "run {}'s {path:?} came by a DUT's source address, not with a token (?tokened=true asks for tokened files only)",
                run.id
            ),
        ));
    }
    Ok(to_blob(&f))
}

/// `?tokened=true`: only files uploaded with a token count (a DUT's source address can be
/// forged, over UDP above all).
fn tokened_only(q: Option<&str>) -> bool {
    query_pairs(q).iter().any(|(k, v)| k == "tokened" && (v == "true" || v == "1"))
}

/// A file of the newest run: a redirect to its immutable blob, the digest in a header.
#[utoipa::path(get, path = "/api/v1/results/{job}/latest/files/{path}", operation_id = "latestFile", tag = "results",
    params(
        ("job" = String, Path, description = "The job's name"),
        ("path" = String, Path, description = "The file's path in the run"),
        ("platform" = Option<String>, Query, description = "Only runs on this platform"),
        ("status" = Option<String>, Query, description = "`success` (default), `failure`, `unknown`, `running` or `any`"),
        ("tokened" = Option<bool>, Query, description = "`true`: only a file uploaded with a token (not by a DUT's source address, which can be forged)"),
    ),
    responses(
        (status = 307, description = "To the immutable blob", headers(("Location" = String), ("X-Checksum-SHA256" = String, description = "The file's SHA-256, hex"))),
        (status = 400, description = "A bad path or query", body = ErrorBody),
        (status = 403, description = "No `read` scope for the job", body = ErrorBody),
        (status = 404, description = "No such job, run or file", body = ErrorBody),
        (status = 503, description = "The lab keeps no state store", body = ErrorBody),
    ))]
pub(super) async fn latest_file(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    P((job, path)): P<(String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    latest_file_of(&api, &p, &job, &path, q.as_deref()).await
}

/// The digest of a file of the newest run, without following to the blob.
#[utoipa::path(head, path = "/api/v1/results/{job}/latest/files/{path}", operation_id = "headLatestFile", tag = "results",
    params(
        ("job" = String, Path, description = "The job's name"),
        ("path" = String, Path, description = "The file's path in the run"),
        ("platform" = Option<String>, Query, description = "Only runs on this platform"),
        ("status" = Option<String>, Query, description = "`success` (default), `failure`, `unknown`, `running` or `any`"),
        ("tokened" = Option<bool>, Query, description = "`true`: only a file uploaded with a token (not by a DUT's source address, which can be forged)"),
    ),
    responses(
        (status = 307, description = "The digest in `X-Checksum-SHA256`, the blob in `Location`", headers(("Location" = String), ("X-Checksum-SHA256" = String, description = "The file's SHA-256, hex"))),
        (status = 400, description = "A bad path or query"),
        (status = 403, description = "No `read` scope for the job"),
        (status = 404, description = "No such job, run or file"),
        (status = 503, description = "The lab keeps no state store"),
    ))]
pub(super) async fn head_latest_file(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    P((job, path)): P<(String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    latest_file_of(&api, &p, &job, &path, q.as_deref()).await
}

/// The runs that produced a file with this digest (those the token may read).
#[utoipa::path(get, path = "/api/v1/results/by-hash", operation_id = "resultsByHash", tag = "results",
    params(("sha256" = String, Query, description = "The SHA-256, hex")),
    responses(
        (status = 200, description = "Every file with this content the token may read", body = [HashHit]),
        (status = 400, description = "Not a SHA-256", body = ErrorBody),
        (status = 404, description = "No uploaded result has this digest", body = ErrorBody),
        (status = 503, description = "The lab keeps no state store", body = ErrorBody),
    ))]
pub(super) async fn by_hash(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let r = results(&api)?;
    let pairs = query_pairs(q.as_deref());
    let hex = pairs.iter().find(|(k, _)| k == "sha256").map(|(_, v)| v.as_str()).unwrap_or("");
    let sha = crate::auth::hex(&parse_sha256(hex)?);
    let hits: Vec<HashHit> = readable(r, &p, &sha).await?.into_iter().map(|(job, run, path)| HashHit { job, run, path }).collect();
    if hits.is_empty() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no uploaded result has sha256 {sha}")));
    }
    Ok(json_response(StatusCode::OK, &hits))
}

/// The files with content `sha` that `p` may read.
async fn readable(r: &Results, p: &Principal, sha: &str) -> Result<Vec<(String, i64, String)>, ApiError> {
    let mut out = Vec::new();
    for (job, run, path, tenant) in r.runs().by_hash(sha).await? {
        let ok = match p {
            Principal::Admin => true,
            Principal::Token(c) => {
                c.has(Scope::Admin)
                    || (c.has(Scope::Read) && c.job.matches(&job) && c.tenant == tenant && !matches!(c.run, Some(mine) if mine != run))
            }
        };
        if ok {
            out.push((job, run, path));
        }
    }
    Ok(out)
}

async fn blob(api: &Api, p: &Principal, hex: &str, method: &Method, headers: &HeaderMap) -> Result<Response, ApiError> {
    let r = results(api)?;
    let sha = crate::auth::hex(&parse_sha256(hex)?);
    // Only uploaded results, and only those the token may read: any other digest (a cached
    // input, a job's secret) is "no such blob", whatever else the lab holds.
    if readable(r, p, &sha).await?.is_empty() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no result blob sha256 {sha}")));
    }
    let etag = format!("\"{sha}\"");
    let mut resp = if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let got = r.blobs().get(&sha).await?;
        let size = got.meta.size;
        let mut resp = if method == Method::HEAD {
            Response::new(Body::empty())
        } else {
            Response::new(Body::from_stream(got.into_stream().map(|c| c.map_err(std::io::Error::other))))
        };
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        resp
    };
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=31536000, immutable"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&sha) {
        h.insert(CHECKSUM_HEADER, v);
    }
    Ok(resp)
}

/// A result's content, by its SHA-256: immutable.
#[utoipa::path(get, path = "/api/v1/results/blobs/sha256/{hex}", operation_id = "getBlob", tag = "results",
    params(("hex" = String, Path, description = "The SHA-256, hex")),
    responses(
        (status = 200, description = "The content", body = Vec<u8>, content_type = "application/octet-stream",
            headers(("ETag" = String, description = "The digest, quoted"), ("X-Checksum-SHA256" = String, description = "The SHA-256, hex"))),
        (status = 304, description = "`If-None-Match` names it: unchanged (it never changes)"),
        (status = 400, description = "Not a SHA-256", body = ErrorBody),
        (status = 404, description = "No uploaded result this token may read has this digest", body = ErrorBody),
        (status = 503, description = "The lab keeps no state store", body = ErrorBody),
    ))]
pub(super) async fn get_blob(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    P(hex): P<String>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    blob(&api, &p, &hex, &method, &headers).await
}

/// A result's size and digest, without its content.
#[utoipa::path(head, path = "/api/v1/results/blobs/sha256/{hex}", operation_id = "headBlob", tag = "results",
    params(("hex" = String, Path, description = "The SHA-256, hex")),
    responses(
        (status = 200, description = "It exists: `Content-Length`, `ETag`, `X-Checksum-SHA256`",
            headers(("ETag" = String, description = "The digest, quoted"), ("X-Checksum-SHA256" = String, description = "The SHA-256, hex"))),
        (status = 304, description = "`If-None-Match` names it"),
        (status = 400, description = "Not a SHA-256"),
        (status = 404, description = "No uploaded result this token may read has this digest"),
        (status = 503, description = "The lab keeps no state store"),
    ))]
pub(super) async fn head_blob(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    P(hex): P<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    blob(&api, &p, &hex, &Method::HEAD, &headers).await
}
