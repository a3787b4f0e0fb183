//! Duffy's legacy API on the pool, for CI scripts written against Duffy (seed 002's own calls):
//! `GET /duffy/Node/get`, `/duffy/Node/done`, `/duffy/Node/fail` and `/duffy/Inventory`, with
//! Duffy's query parameters and answer shapes, so that `cico --endpoint http://CITRON:PORT/duffy/`
//! (python-cicoclient) and scripts that `curl` Duffy work unchanged. Served only when the lab
//! file says `pool: {duffy: true}`.
//!
//! Each call is one call of the pool ([`crate::pool::Pool`]); only the words change:
//!
//! | Duffy | citron |
//! |---|---|
//! | `key` | a citron token with the `reserve` scope (its tenant is Duffy's project) |
//! | `ver=V` | the DUT tag `centos-V` (`ver=8-stream`: `centos-8-stream`) |
//! | `arch=A` | the DUT's `arch` |
//! | `flavor=F` | the DUT tag `flavor-F` |
//! | `count=N` | `count`, all or none |
//! | `ssid` | the reservation's id |
//! | a host's name | the DUT's id (its addresses are in `Inventory`) |
//! | `Node/done` | release (`DELETE /api/v1/reservations/{id}`) |
//! | `Node/fail` | fail, the DUTs kept aside for [`FAIL_KEEP`] (`POST …/{id}/fail`) |
//!
//! # A request that cannot be met
//! Duffy has no queue: a `Node/get` that cannot be met now answers `200 Insufficient Nodes in
//! READY State` (not JSON: cico then waits `--retry-interval` and asks again, `--retry-count`
//! times), and scripts loop. The same here: the reservation is queued, one allocation pass
//! runs, and if it is still `waiting` it is withdrawn and that answer given. citron's own API
//! (`POST /api/v1/reservations`) keeps it in the queue instead, in order, and answers when it is
//! allocated (`?wait=`). A request that can never be met (an unknown tag or arch, more DUTs
//! than match) answers Duffy's `"Failed to allocate nodes"` as a JSON string, with the pool's
//! reason after it: cico prints it and stops instead of retrying.
//!
//! # The key
//! Duffy takes its key in the query (`?key=`), not in `Authorization`, so these paths are let
//! through the API's door without a bearer token and check the key themselves, the same way
//! ([`crate::auth::Auth::principal_of`]). A missing, wrong, expired or revoked key answers
//! Duffy's `403 {"msg": "Invalid duffy key"}`. `Inventory` without a key lists every DUT of the
//! pool, as Duffy's did (cico's `node get` reads it to print its table): the reason the API is
//! off unless the lab file turns it on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::{header, HeaderValue, StatusCode};
use serde_json::{json, Value};

use super::{json_response, Api};
use crate::auth::{Principal, Scope};
use crate::pool::{Pool, PoolDut, PoolError, Request};

/// Where the legacy API is mounted: cico's `--endpoint http://CITRON:PORT/duffy/`.
pub(super) const PREFIX: &str = "/duffy/";

/// How long `Node/fail` keeps a failed session's DUTs aside for debugging (Duffy's legacy
/// `Node/fail` extended the session by as much).
pub const FAIL_KEEP: Duration = Duration::from_secs(6 * 3600);

/// The longest `key` looked at (a citron token is a few hundred bytes).
const KEY_MAX: usize = 4096;

/// Who the pool's events name as the actor of these calls.
const ACTOR: &str = "duffy";

/// Duffy's answer to a `Node/get` that cannot be met now (not JSON, on purpose: see the module).
const INSUFFICIENT: &str = "Insufficient Nodes in READY State";

pub(super) fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/duffy/Node/get", get(node_get))
        .route("/duffy/Node/done", get(node_done))
        .route("/duffy/Node/fail", get(node_fail))
        .route("/duffy/Inventory", get(inventory))
}

/// Whether `path` is one of these routes, which check their own key (see the module).
pub(super) fn is_duffy(path: &str) -> bool {
    path.starts_with(PREFIX)
}

/// Duffy's `{"msg": ...}` with a status: how these calls refuse.
#[derive(Debug)]
struct Msg(StatusCode, String);

impl IntoResponse for Msg {
    fn into_response(self) -> Response {
        let mut r = json_response(self.0, &json!({"msg": self.1}));
        if self.0.is_client_error() || self.0.is_server_error() {
            // Logged and recorded on the feed as refused, as the API's own errors are.
            r.extensions_mut().insert(super::Refused(self.1));
        }
        r
    }
}

impl From<PoolError> for Msg {
    fn from(e: PoolError) -> Msg {
        Msg(e.status(), e.to_string())
    }
}

fn msg(code: StatusCode, text: impl Into<String>) -> Msg {
    Msg(code, text.into())
}

fn invalid_key(why: &str) -> Msg {
    msg(StatusCode::FORBIDDEN, format!("Invalid duffy key: {why}"))
}

/// `text` as a plain-text answer with status 200 (Duffy's way of saying "no").
fn text(t: &str) -> Response {
    let mut r = Response::new(Body::from(t.to_string()));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// The query's parameters (the last of each name wins).
fn params(q: Option<String>) -> HashMap<String, String> {
    url::form_urlencoded::parse(q.unwrap_or_default().as_bytes()).into_owned().collect()
}

/// The pool, if the lab serves the legacy API; else the answer that says why not.
fn pool(api: &Api) -> Result<&Arc<Pool>, Msg> {
    if !api.gateway.lab().pool.duffy {
        return Err(msg(StatusCode::NOT_FOUND, "this lab does not serve Duffy's legacy API: set `pool: {duffy: true}` in its lab file"));
    }
    api.pool.as_ref().ok_or_else(|| msg(StatusCode::SERVICE_UNAVAILABLE, "this lab keeps no state store, so it has no pool"))
}

/// Who holds `key` (required: `Invalid duffy key` without it).
fn holder(api: &Api, p: &HashMap<String, String>) -> Result<Principal, Msg> {
    let key = p.get("key").map(|k| k.trim()).filter(|k| !k.is_empty()).ok_or_else(|| invalid_key("no `key`"))?;
    if key.len() > KEY_MAX {
        return Err(invalid_key("the key is too long"));
    }
    let who = api.auth.principal_of(key.as_bytes()).map_err(|e| invalid_key(&e.to_string()))?;
    if let Principal::Token(c) = &who {
        if !c.has(Scope::Reserve) && !c.has(Scope::Admin) {
            return Err(invalid_key("the token has no `reserve` scope"));
        }
    }
    Ok(who)
}

/// The session (reservation) `ssid` of `who`: Duffy's answers for a missing or foreign one.
async fn session(pool: &Pool, who: &Principal, p: &HashMap<String, String>) -> Result<crate::pool::Reservation, Msg> {
    let id = p.get("ssid").and_then(|s| s.trim().parse::<i64>().ok()).ok_or_else(|| msg(StatusCode::FORBIDDEN, "Invalid session ID"))?;
    pool.get(who, id).await.map_err(|e| match e {
        PoolError::NotFound(_) => msg(StatusCode::FORBIDDEN, "Invalid session ID"),
        PoolError::Forbidden(why) => invalid_key(&why),
        e => e.into(),
    })
}

/// What a `Node/get` asks for, in the pool's words.
fn request_of(p: &HashMap<String, String>) -> Result<Request, String> {
    let count = match p.get("count") {
        Some(c) => c.trim().parse::<u32>().map_err(|_| format!("count {c:?} is not a whole number"))?,
        None => 1,
    };
    let mut tags = Vec::new();
    if let Some(v) = p.get("ver").filter(|v| !v.is_empty()) {
        tags.push(format!("centos-{v}"));
    }
    if let Some(f) = p.get("flavor").filter(|f| !f.is_empty()) {
        tags.push(format!("flavor-{f}"));
    }
    let arch = p.get("arch").filter(|a| !a.is_empty()).cloned();
    Ok(Request { tags, arch, count, ..Request::default() })
}

/// `Node/get?key=&ver=&arch=&flavor=&count=`: DUTs now, or Duffy's "no".
async fn node_get(State(api): State<Arc<Api>>, RawQuery(q): RawQuery) -> Result<Response, Msg> {
    let pool = pool(&api)?;
    let p = params(q);
    let who = holder(&api, &p)?;
    let never = |why: String| json_response(StatusCode::OK, &Value::from(format!("Failed to allocate nodes: {why}")));
    let req = match request_of(&p) {
        Ok(r) => r,
        Err(why) => return Ok(never(why)),
    };
    let r = match pool.request(&who, req, ACTOR).await {
        Ok(r) => r,
        Err(PoolError::Bad(why)) => return Ok(never(why)),
        Err(PoolError::Forbidden(why)) => return Err(invalid_key(&why)),
        Err(e) => return Err(e.into()),
    };
    if r.state == "allocated" {
        let hosts: Vec<&str> = r.duts.iter().map(|d| d.dut.id.as_str()).collect();
        return Ok(json_response(StatusCode::OK, &json!({"hosts": hosts, "ssid": r.id.to_string()})));
    }
    // Not now: withdrawn from the queue, as Duffy never queued (see the module). Allocated by
    // another gateway's pass in between, it is released again, so that "no" stays true.
    pool.release(&who, r.id, ACTOR).await?;
    Ok(text(INSUFFICIENT))
}

/// `Node/done?key=&ssid=`: the session's DUTs go back to the pool.
async fn node_done(State(api): State<Arc<Api>>, RawQuery(q): RawQuery) -> Result<Response, Msg> {
    end(&api, q, false).await
}

/// `Node/fail?key=&ssid=`: the session failed; its DUTs are kept aside for [`FAIL_KEEP`].
async fn node_fail(State(api): State<Arc<Api>>, RawQuery(q): RawQuery) -> Result<Response, Msg> {
    end(&api, q, true).await
}

async fn end(api: &Api, q: Option<String>, failed: bool) -> Result<Response, Msg> {
    let pool = pool(api)?;
    let p = params(q);
    let who = holder(api, &p)?;
    let r = session(pool, &who, &p).await?;
    // Duffy ends only sessions in use; a failed one may still be given back (`done`).
    let open = r.state == "allocated" || (!failed && r.state == "failed" && r.keep_until.is_some());
    if !open {
        return Err(msg(StatusCode::OK, "Session not in Prod"));
    }
    if failed {
        pool.fail(&who, r.id, Some(FAIL_KEEP), ACTOR).await?;
    } else {
        pool.release(&who, r.id, ACTOR).await?;
    }
    Ok(json_response(StatusCode::OK, &Value::from("Done")))
}

/// `Inventory?key=`: `[hostname, ssid]` of the key's sessions; without a key, every DUT of the
/// pool as Duffy's 14 columns.
async fn inventory(State(api): State<Arc<Api>>, RawQuery(q): RawQuery) -> Result<Response, Msg> {
    let pool = pool(&api)?;
    let p = params(q);
    let duts = pool.duts().await.map_err(PoolError::from)?;
    if !p.contains_key("key") {
        let rows: Vec<Value> = duts.iter().enumerate().map(|(i, d)| row(i + 1, d)).collect();
        return Ok(json_response(StatusCode::OK, &rows));
    }
    let who = holder(&api, &p)?;
    // Each reservation asked once: whether it is the key's tenant's.
    let mut mine: HashMap<i64, bool> = HashMap::new();
    let mut rows = Vec::new();
    for d in duts.iter().filter(|d| matches!(d.state.as_str(), "starting" | "allocated" | "kept")) {
        let Some(id) = d.reservation else { continue };
        let ours = match mine.get(&id) {
            Some(o) => *o,
            None => {
                let o = pool.get(&who, id).await.is_ok();
                mine.insert(id, o);
                o
            }
        };
        if ours {
            rows.push(json!([d.dut.id, id.to_string()]));
        }
    }
    Ok(json_response(StatusCode::OK, &rows))
}

/// One DUT as a row of Duffy's full inventory: `host_id, hostname, ip_address, chassis,
/// used_count, current_state, comment (the ssid), distro, rel, centos_version, architecture,
/// node_pool, console_port, flavor`.
fn row(host_id: usize, d: &PoolDut) -> Value {
    let tag = |prefix: &str| d.dut.tags.iter().find_map(|t| t.strip_prefix(prefix)).map(str::to_string);
    let held = matches!(d.state.as_str(), "starting" | "allocated" | "kept");
    let ssid = d.reservation.filter(|_| held).map(|r| r.to_string());
    json!([
        host_id,
        d.dut.id,
        d.dut.ip.first().map(|ip| ip.to_string()),
        d.dut.model,
        d.uses,
        state(&d.state),
        ssid,
        Value::Null,
        Value::Null,
        tag("centos-"),
        d.dut.arch,
        d.dut.gateway,
        Value::Null,
        tag("flavor-"),
    ])
}

/// A pool state in Duffy's words (those Duffy has no word for keep citron's).
fn state(s: &str) -> &str {
    match s {
        "free" => "Ready",
        "starting" => "Contextualizing",
        "allocated" => "Deployed",
        "recycling" => "Deprovision",
        "kept" => "Fail",
        "quarantined" => "Quarantined",
        "disabled" => "Disabled",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> HashMap<String, String> {
        params(Some(s.to_string()))
    }

    #[test]
    fn node_get_parameters_in_the_pool_s_words() {
        let r = request_of(&q("key=k&arch=x86_64&ver=8-stream&flavor=small&count=2")).unwrap();
        assert_eq!(r.tags, vec!["centos-8-stream".to_string(), "flavor-small".to_string()]);
        assert_eq!((r.arch.as_deref(), r.count), (Some("x86_64"), 2));
        let r = request_of(&q("key=k")).unwrap();
        assert_eq!((r.tags.len(), r.arch, r.count), (0, None, 1));
        assert!(request_of(&q("count=two")).unwrap_err().contains("count"));
        assert!(request_of(&q("count=-1")).is_err());
    }

    #[test]
    fn inventory_rows_have_duffy_s_fourteen_columns() {
        let d = PoolDut {
            dut: crate::pool::DutAttrs {
                id: "n1".into(),
                kind: citron_core::lab::DutKind::Baremetal,
                arch: Some("aarch64".into()),
                model: Some("r640".into()),
                tags: vec!["centos-9-stream".into(), "flavor-medium".into()],
                mac: None,
                ip: vec!["10.0.0.5".parse().unwrap()],
                gateway: None,
            },
            state: "allocated".into(),
            reservation: Some(7),
            uses: 3,
            reason: None,
            output: None,
        };
        let r = row(4, &d);
        assert_eq!(r, json!([4, "n1", "10.0.0.5", "r640", 3, "Deployed", "7", null, null, "9-stream", "aarch64", null, null, "medium"]));
        let free = PoolDut { state: "free".into(), reservation: None, ..d };
        assert_eq!(row(1, &free)[5], "Ready");
        assert_eq!(row(1, &free)[6], Value::Null);
    }
}
