//! The OpenAPI document, generated from the handlers' `#[utoipa::path]` and the types below.
//!
//! The types are what the API answers (built by the handlers, so the document describes the
//! real thing), or, for the core's own types (`Dut` as a request body, `AccessRecord`), a
//! mirror whose schema the tests check against the core type's JSON.

use citron_core::gateway::JobRecord;
use citron_core::namespace::Dut;
use citron_core::Gateway;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

use super::routes;

/// The OpenAPI 3.1 document of the lab API.
///
/// ```
/// let doc = citron_lab::api::openapi();
/// let get = doc.paths.paths["/api/v1/duts/{id}/job"].get.as_ref().unwrap();
/// assert_eq!(get.operation_id.as_deref(), Some("getJob"));
/// ```
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(super::tokens::TokensDoc::openapi());
    doc.merge(super::results::ResultsDoc::openapi());
    doc.merge(super::pool::PoolDoc::openapi());
    Common.modify(&mut doc);
    doc
}

/// [`openapi`] as pretty JSON: what `/api/v1/openapi.json` answers and `citron openapi` prints.
pub fn openapi_json() -> String {
    // Built once: it depends on nothing but the code.
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        let mut s = openapi().to_pretty_json().unwrap_or_default();
        s.push('\n');
        s
    })
    .clone()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "citron lab API",
        version = "1",
        description = "Control a citron lab: DUTs, their jobs, events that reset lifetimes, access logs and metrics. \
When the lab sets an API token (`api_token` or `api_token_file` in the lab file, or $CITRON_API_TOKEN; only one of them), \
every request needs `Authorization: Bearer <token>` (loopback included); without a token the API may only listen on loopback. \
Besides the administrator's token, the lab mints signed tokens with scopes (`admin`, `upload`, `read`, `reserve`, `dut`), a job pattern, \
an optional run and an expiry (`/api/v1/tenants`, `/api/v1/tokens`); such a token reaches the results and token routes, and the \
`job`, `events` and `accesses` of the DUTs its `dut` scope names (else 403). \
`Host` must name the API (the address it listens on, `localhost`, or a name in the lab file's `api_hosts`), else 421. \
Request bodies must be `application/json` (a job may also be `application/yaml`, `application/x-yaml` or `text/yaml`), else 415. \
Errors are `{\"error\": \"...\"}`; a method a path does not have is 405 with `Allow`. \
Lists that can grow are paginated with `?after=SEQ&limit=N`; a full page answers a `Link: <...>; rel=\"next\"` header to the next one."
    ),
    paths(
        routes::list_duts,
        routes::add_dut,
        routes::get_dut,
        routes::remove_dut,
        routes::get_job,
        routes::set_job,
        routes::clear_job,
        routes::post_event,
        routes::list_accesses,
        super::events::stream_events,
        routes::get_version,
        routes::get_metrics,
        routes::get_openapi,
        super::probe::get_health,
        super::probe::get_ready,
    ),
    components(schemas(ErrorBody, JobErrorsBody, JobErrorDoc, NewDut, DutView, JobView, EventBody, EventKind, RunEnd, AccessRecordDoc, OutcomeKind, VersionView, StateView, crate::state::feed::FeedEvent)),
    modifiers(&Common),
    tags(
        (name = "duts", description = "The lab's devices under test"),
        (name = "jobs", description = "What a DUT is served"),
        (name = "lab", description = "The lab itself"),
    )
)]
struct ApiDoc;

/// What every operation shares: the bearer token (optional: only when the lab sets one), and
/// the answers any request may get (401 without the token, 421 for a `Host` that does not
/// name the API, 500; 400 for an undecodable `{id}`).
struct Common;

impl Modify for Common {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
        doc.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new()), SecurityRequirement::default()]);
        let error = |what: &str| {
            let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("Error"))).build();
            RefOr::T(ResponseBuilder::new().description(what).content("application/json", content).build())
        };
        for item in doc.paths.paths.values_mut() {
            for op in
                [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.head, &mut item.patch].into_iter().flatten()
            {
                let r = &mut op.responses.responses;
                r.entry("401".into()).or_insert_with(|| error("No token, or one that expired, was revoked or is not the lab's"));
                r.entry("403".into()).or_insert_with(|| error("The token may not do this (its scopes, jobs, run or DUTs)"));
                r.entry("421".into()).or_insert_with(|| error("`Host` does not name the API (add it to `api_hosts`)"));
                r.entry("500".into()).or_insert_with(|| error("citron failed (its log says why)"));
                let has_id = op.parameters.iter().flatten().any(|p| p.parameter_in == utoipa::openapi::path::ParameterIn::Path);
                if has_id {
                    r.entry("400".into()).or_insert_with(|| error("The `{id}` in the path cannot be decoded"));
                    r.entry("503".into()).or_insert_with(|| error("The DUT's gateway (another one of the lab) is offline"));
                    r.entry("504".into()).or_insert_with(|| error("The DUT's gateway (another one of the lab) did not answer in time"));
                }
            }
        }
    }
}

/// citron's version and its state's.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Version)]
pub(super) struct VersionView {
    /// citron's version (`0.1.0`).
    pub version: String,
    /// The state store; `null` when the lab keeps its state in memory only.
    pub state: Option<StateView>,
}

/// The lab's state store.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = StateVersion)]
pub(super) struct StateView {
    /// `sqlite` or `postgres`.
    pub engine: String,
    /// The schema version in use (the newest migration applied).
    #[schema(minimum = 0)]
    pub schema_version: i64,
}

/// What went wrong, and what to do about it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Error)]
pub(super) struct ErrorBody {
    error: String,
}

/// An invalid job: every problem at once, each with its position.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = JobErrors)]
pub(super) struct JobErrorsBody {
    /// All errors, one `file:line:col: message` per line.
    error: String,
    /// Each error (none for a hostile or oversized archive: `error` says which).
    errors: Vec<JobErrorDoc>,
}

/// One problem of a job, positioned.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = JobError)]
pub(super) struct JobErrorDoc {
    file: String,
    #[schema(minimum = 1)]
    line: u64,
    #[schema(minimum = 1)]
    column: u64,
    /// e.g. `deployment.start.storage.http[2].url`
    field: String,
    message: String,
}

/// A DUT to add: a lab file's `duts:` entry, as JSON.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // a schema only: the handler parses the core's `Dut`
pub(super) struct NewDut {
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    id: String,
    /// The `machine_id` templates see and boot paths use; defaults to `id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    machine_id: Option<String>,
    #[schema(example = "52:54:00:00:00:01")]
    #[serde(skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    serial: Option<String>,
    /// IPv4 or IPv6 source addresses.
    #[serde(default)]
    ip: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    /// The gateway that serves it; it must be the gateway whose API is asked (the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway: Option<String>,
}

/// A DUT as the lab knows it, with its job's origin.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Dut)]
pub(super) struct DutView {
    pub(super) id: String,
    /// The `machine_id` templates see and boot paths use (the id unless set).
    machine_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    serial: Option<String>,
    /// The source addresses requests from this DUT come from.
    ip: Vec<String>,
    tags: Vec<String>,
    /// The origin of the active job (`GET .../job` has the rest), or null without one.
    #[schema(required = true)]
    job: Option<String>,
    /// The gateway that serves it (`citron serve --gateway`); null for a lab without a state
    /// store.
    #[schema(required = true)]
    gateway: Option<String>,
    /// Whether its gateway heartbeats; a DUT whose gateway went silent for longer than
    /// `gateways.heartbeat_timeout` is offline (not served, still in the lab).
    online: bool,
}

impl DutView {
    /// This gateway's DUT `d`, served by gateway `me`.
    pub(super) fn own(gw: &Gateway, d: &Dut, me: Option<&str>) -> Self {
        DutView { gateway: me.map(str::to_string).or_else(|| d.gateway.clone()), ..Self::of(gw, d) }
    }

    /// Another gateway's DUT.
    pub(super) fn remote(r: &crate::gateways::RemoteDut) -> Self {
        let d = &r.dut;
        DutView {
            id: d.id.0.clone(),
            machine_id: d.machine_id().to_string(),
            mac: d.mac.clone(),
            serial: d.serial.clone(),
            ip: d.ip.iter().map(|ip| ip.to_string()).collect(),
            tags: d.tags.clone(),
            job: r.job.clone(),
            gateway: Some(r.gateway.clone()),
            online: r.online,
        }
    }

    pub(super) fn of(gw: &Gateway, d: &Dut) -> Self {
        DutView {
            gateway: d.gateway.clone(),
            online: true,
            id: d.id.0.clone(),
            machine_id: d.machine_id().to_string(),
            mac: d.mac.clone(),
            serial: d.serial.clone(),
            ip: d.ip.iter().map(|ip| ip.to_string()).collect(),
            tags: d.tags.clone(),
            job: gw.job(&d.id).map(|j| j.origin),
        }
    }
}

/// A DUT's job as it was set.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Job)]
pub(super) struct JobView {
    /// The YAML as it was set (null for a job given to `citron serve` as parsed code, e.g. from
    /// Python).
    #[schema(required = true)]
    yaml: Option<String>,
    /// Where it came from: `api:<dut>`, the job file, or the name a tool gave it.
    origin: String,
    /// When it became the DUT's job (its artifacts fetched), as seconds since the Unix epoch.
    set_at: f64,
}

impl From<JobRecord> for JobView {
    fn from(r: JobRecord) -> Self {
        let set_at = r.set_at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        JobView { yaml: r.yaml, origin: r.origin.name, set_at }
    }
}

/// Something that happened to a DUT.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Event)]
#[allow(dead_code)] // a schema only: the handler parses it for its own error messages
pub(super) struct EventBody {
    event: EventKind,
    /// For `job_end` of a job with `results:`: how its run ended (default `unknown`).
    #[schema(nullable = false)]
    status: Option<RunEnd>,
}

/// How a DUT's run ended.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // a schema only
pub(super) enum RunEnd {
    Success,
    Failure,
    Unknown,
}

/// `boot` (the DUT booted), `job_start`, `job_end` (closes the job's run, drops the job).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // a schema only
pub(super) enum EventKind {
    Boot,
    JobStart,
    JobEnd,
}

/// One line of a DUT's access log: the JSON of `citron_core::access::AccessRecord`, the same
/// for REST and Python.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = AccessRecord)]
#[allow(dead_code)] // a schema only: the handler serialises the core's `AccessRecord`
pub(super) struct AccessRecordDoc {
    /// Position in the log; increases with every record, never reused.
    seq: u64,
    /// When the request arrived, seconds since the Unix epoch.
    time: f64,
    #[schema(example = "http")]
    protocol: String,
    /// The path as requested (the export name for NBD), cut to `limits.logged_path_max` bytes
    /// (a cut one ends with `…[N more bytes]`).
    path: String,
    /// Bytes delivered (read plus written, for NBD).
    bytes: u64,
    outcome: OutcomeKind,
    /// Why it was refused; null unless refused.
    #[schema(required = true)]
    reason: Option<String>,
}

/// How a read ended.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = Outcome)]
#[allow(dead_code)] // a schema only
pub(super) enum OutcomeKind {
    Served,
    Aborted,
    Refused,
}

#[cfg(test)]
mod tests;
