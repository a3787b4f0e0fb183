//! Replay by revision (issue 15 §7): `find` computes the key a job would have on a DUT now and
//! names the newest successful run with that key; `by-run` answers a run by its id alone, so
//! that `citron results replay RUN` needs nothing else.

use std::path::PathBuf;

use citron_core::namespace::DutId;

use super::*;
use crate::results::{is_flaky, Found};

/// The key job `{job}` would have on a DUT now, and the newest successful run with that key.
#[utoipa::path(get, path = "/api/v1/results/{job}/find", operation_id = "findRun", tag = "results",
    params(
        ("job" = String, Path, description = "The job's name"),
        ("revision" = Option<String>, Query, description = "The revision to find (default: the job's `results.revision`)"),
        ("dut" = Option<String>, Query, description = "The DUT to compute the key for (default: the DUT of the job's newest recorded run)"),
    ),
    responses(
        (status = 200, description = "The key; `run` is the newest successful run with it, or null", body = Found),
        (status = 400, description = "A bad job name or query", body = ErrorBody),
        (status = 403, description = "No `read` scope for the job", body = ErrorBody),
        (status = 404, description = "No such job, no run of it recorded its job, or no such DUT on this gateway", body = ErrorBody),
        (status = 422, description = "The job no longer renders for the DUT", body = ErrorBody),
        (status = 502, description = "An artifact of the job could not be fetched", body = ErrorBody),
        (status = 503, description = "The lab keeps no state store", body = ErrorBody),
    ))]
pub(super) async fn find(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    P(job): P<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let r = results(&api)?;
    r.allow(&p, Scope::Read, &job, None).await?;
    let (mut revision, mut dut) = (None, None);
    for (k, v) in query_pairs(q.as_deref()) {
        match k.as_str() {
            "revision" => revision = short("revision", Some(v))?,
            "dut" => dut = Some(v),
            _ => {}
        }
    }
    let recorded = r.runs().recorded_job(&job).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no run of job {job:?} recorded its job yet: a DUT must run it once (a job with `results:` and `name: {job}`)"),
        )
    })?;
    let dut = dut.or(recorded.dut).ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "give ?dut=ID: the job's runs name no DUT"))?;
    let id = DutId(dut.clone());
    if api.gateway.dut(&id).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no DUT {dut:?} on this gateway: ask the gateway that serves it (its cache is the one that knows its artifacts)"),
        ));
    }
    let key = api.gateway.input_key(&id, &recorded.yaml, recorded.dir.map(PathBuf::from), revision).await?;
    let hex = key.key.hex();
    let runs = r.runs().keyed(&job, &hex).await?;
    let run = match runs.iter().find(|r| r.status == Status::Success) {
        Some(s) => r.runs().get(&job, s.id).await?,
        None => None,
    };
    let found =
        Found { job, dut, revision: key.revision, key: hex, run, flaky: is_flaky(&runs), runs: runs.iter().map(|r| r.id).collect() };
    Ok(json_response(StatusCode::OK, &found))
}

/// One run by its id alone, with its files and whether its key is flaky.
#[utoipa::path(get, path = "/api/v1/results/by-run/{run}", operation_id = "getRunById", tag = "results",
    params(("run" = i64, Path, description = "The run's id")),
    responses(
        (status = 200, description = "The run and its files", body = Run),
        (status = 403, description = "No `read` scope for the run's job", body = ErrorBody),
        (status = 404, description = "No such run, or none this token may read", body = ErrorBody),
        (status = 503, description = "The lab keeps no state store", body = ErrorBody),
    ))]
pub(super) async fn by_run(State(api): State<Arc<Api>>, Extension(p): Extension<Principal>, P(run): P<i64>) -> Result<Response, ApiError> {
    let r = results(&api)?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, format!("no run {run}"));
    let found = r.runs().by_id(run).await?.ok_or_else(not_found)?;
    // A token that may not read the run's job learns nothing of it, not even that it exists.
    r.allow(&p, Scope::Read, &found.job, Some(run)).await.map_err(|_| not_found())?;
    Ok(json_response(StatusCode::OK, &found))
}
