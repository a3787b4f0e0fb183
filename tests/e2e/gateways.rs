//! Several gateways, one lab: two `citron serve --gateway` processes on one real PostgreSQL.
//! A job set through one is loaded and served by the DUT's own gateway (over HTTP and TFTP,
//! from that gateway's address); a gateway killed is marked offline after its heartbeat
//! timeout; a DUT claimed by two gateways is refused; the event feed (SSE) resumes with
//! `Last-Event-ID` after a restart and on the other gateway with exactly the missed events.
//! And on SQLite: one live gateway per file.

use std::path::Path;
use std::time::{Duration, Instant};

use citron_tests::{curl, require_tool, run, Citron};
use serde_json::Value;

use super::state_pg::Postgres;

/// dut1 is gateway a's, dut2 gateway b's; a short heartbeat timeout for the offline test.
const LAB: &str = "duts:\n  - id: dut1\n    ip: [\"127.0.0.2\"]\n    gateway: a\n  - id: dut2\n    ip: [\"127.0.0.3\"]\n    gateway: b\ngateways:\n  heartbeat_timeout: 2s\n";

fn write_lab(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

/// `citron serve --gateway NAME` on HTTP, TFTP and the API.
fn gateway(name: &str, lab: &str, state: &str) -> Result<Citron, citron_tests::StartFailure> {
    Citron::try_start(&["--gateway", name, "--lab", lab, "--state", state, "--nbd", "off"])
}

/// `(status, body)` of a GET from the DUT address `ip`.
fn get_as(ip: &str, url: &str) -> (u16, String) {
    let o = curl(&["--interface", ip, "-w", "\n%{http_code}", url]);
    let (b, code) = o.stdout.rsplit_once('\n').unwrap_or(("", &o.stdout));
    (code.trim().parse().unwrap_or(0), b.to_string())
}

/// The SSE events `GET /api/v1/events?{query}` sends within `secs` seconds (from `last`, the
/// `Last-Event-ID`), as `(id, type, data)`.
fn sse(c: &Citron, query: &str, last: Option<u64>, secs: u32) -> Vec<(u64, String, Value)> {
    sse_at(c.api.unwrap(), query, last, secs)
}

/// [`sse`] from the API at `api`.
fn sse_at(api: std::net::SocketAddr, query: &str, last: Option<u64>, secs: u32) -> Vec<(u64, String, Value)> {
    let url = format!("http://{api}/api/v1/events?{query}");
    let max = secs.to_string();
    let mut args = vec!["-sN", "--max-time", &max];
    let h;
    if let Some(l) = last {
        h = format!("Last-Event-ID: {l}");
        args.extend(["-H", &h]);
    }
    args.push(&url);
    let o = run("curl", &args, None, Duration::from_secs(u64::from(secs) + 10));
    let mut out = Vec::new();
    for block in o.stdout.split("\n\n") {
        let (mut id, mut kind, mut data) = (None, String::new(), Value::Null);
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().parse().ok();
            } else if let Some(v) = line.strip_prefix("event:") {
                kind = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data = serde_json::from_str(v.trim()).unwrap_or(Value::Null);
            }
        }
        if let Some(id) = id {
            out.push((id, kind, data));
        }
    }
    out
}

fn dut(c: &Citron, id: &str) -> Value {
    let list = c.api("GET", "/api/v1/duts", &[]).json();
    list.as_array().unwrap().iter().find(|d| d["id"] == id).cloned().unwrap_or(Value::Null)
}

/// A job set through gateway a for gateway b's DUT is rendered by b (its address in the
/// template), loaded by b before a answers, and served by b over HTTP and TFTP; a bad one
/// gets b's positioned errors through a. A third gateway claiming dut1 is refused with both
/// names. The feed resumes after a restart and on the other gateway.
#[test]
fn a_job_set_through_one_gateway_is_served_by_the_dut_s_own() {
    if !require_tool("curl") {
        return;
    }
    let Some(pg) = Postgres::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let lab = write_lab(dir.path(), "lab.yaml", LAB);
    let a = gateway("a", &lab, &pg.url).expect("gateway a starts");
    let b = gateway("b", &lab, &pg.url).expect("gateway b starts");

    // Every gateway shows the whole lab.
    for c in [&a, &b] {
        assert_eq!((dut(c, "dut1")["gateway"].as_str(), dut(c, "dut1")["online"].as_bool()), (Some("a"), Some(true)));
        assert_eq!((dut(c, "dut2")["gateway"].as_str(), dut(c, "dut2")["online"].as_bool()), (Some("b"), Some(true)));
    }
    let feed_start = sse(&a, "", None, 2).last().map(|e| e.0).unwrap_or(0);

    // Set through a, for b's dut2: rendered with b's endpoints.
    let job = "deployment:\n  start:\n    storage:\n      http:\n        - path: /where\n          data: \"{{ http_artifact_base }} {{ machine_id }}\"\n      tftp:\n        - path: /boot.txt\n          data: \"tftp for {{ machine_id }}\"\n";
    let t0 = Instant::now();
    let (code, body) = a.put_job("dut2", job);
    let answered = t0.elapsed();
    assert_eq!(code, 200, "{body}");
    let want = format!("http://{} dut2", b.http.unwrap());
    let mut served = None;
    while t0.elapsed() < Duration::from_secs(30) {
        if get_as("127.0.0.3", &b.http_url("/where")) == (200, want.clone()) {
            served = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let served = served.expect("gateway b serves the job set through gateway a within 30 s");
    println!("multi-gateway job set -> served latency: PUT answered in {answered:?}, served by the other gateway after {served:?}");
    let tftp = curl(&["--interface", "127.0.0.3", &format!("tftp://{}/boot.txt", b.tftp.unwrap())]);
    assert_eq!((tftp.code, tftp.stdout.as_str()), (0, "tftp for dut2"), "{}", tftp.stderr);
    assert_eq!(get_as("127.0.0.3", &a.http_url("/where")).0, 404, "gateway a does not serve b's DUT");
    // The job record and the DUT, through a.
    let rec = a.api("GET", "/api/v1/duts/dut2/job", &[]).json();
    assert_eq!((rec["yaml"].as_str(), rec["origin"].as_str()), (Some(job), Some("api:dut2")), "{rec}");
    assert_eq!(dut(&a, "dut2")["job"], "api:dut2");

    // A bad job: b's errors, positioned, through a.
    let (code, body) = a.put_job("dut2", "deployment:\n  start:\n    storage:\n      http:\n        - path: /x\n          nonsense: 1\n");
    assert_eq!(code, 422, "{body}");
    let e: Value = serde_json::from_str(&body).unwrap();
    let nonsense = e["errors"].as_array().unwrap().iter().find(|x| x["field"].as_str().is_some_and(|f| f.ends_with(".nonsense")));
    let nonsense = nonsense.unwrap_or_else(|| panic!("{e}"));
    assert_eq!(
        (nonsense["line"].as_u64(), nonsense["column"].as_u64(), nonsense["file"].as_str()),
        (Some(6), Some(11), Some("api:dut2")),
        "{e}"
    );

    // An event through a reaches b's DUT (its job still served: boot does not drop it).
    assert_eq!(a.api_json("POST", "/api/v1/duts/dut2/events", Some(r#"{"event": "boot"}"#)).status, 204);

    // A third gateway claiming dut1 (unlabelled in its lab file) is refused: both names.
    let lab2 = write_lab(dir.path(), "lab2.yaml", "duts:\n  - id: dut1\n    ip: [\"127.0.0.2\"]\n");
    let f = gateway("c", &lab2, &pg.url).err().expect("a DUT claimed by two gateways is refused");
    assert!(f.stderr.contains("\"dut1\"") && f.stderr.contains("\"a\"") && f.stderr.contains("\"c\""), "{}", f.stderr);
    assert_eq!(f.status.and_then(|s| s.code()), Some(2), "{}", f.stderr);

    // Through the API too: b cannot add a DUT with a's dut1's id; a DUT added through b is
    // b's, and a lists it.
    let r = b.api_json("POST", "/api/v1/duts", Some(r#"{"id": "dut1", "ip": ["127.0.0.9"]}"#));
    let msg = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(msg.contains("\"a\"") && msg.contains("\"b\""), "{msg}");
    assert_eq!(b.api_json("POST", "/api/v1/duts", Some(r#"{"id": "dut9", "ip": ["127.0.0.9"]}"#)).status, 201);
    assert_eq!(dut(&a, "dut9")["gateway"], "b");

    // The feed: the job set by a's API, recorded by b, with its actor.
    let events = sse(&a, "dut=dut2", Some(feed_start), 2);
    let set = events.iter().find(|e| e.1 == "job_set").unwrap_or_else(|| panic!("no job_set in {events:?}"));
    assert_eq!(
        (set.2["actor"].as_str(), set.2["gateway"].as_str(), set.2["job"].as_str()),
        (Some("api via a"), Some("b"), Some("api:dut2"))
    );
    assert!(events.iter().any(|e| e.1 == "boot"), "{events:?}");
    let last = events.last().unwrap().0;

    // a killed; events meanwhile (through b); a started again: a reader resumes with
    // Last-Event-ID on a, and on b, and gets exactly the missed events.
    let data_a = a.state.clone();
    drop(a);
    for ev in ["job_end", "boot", "job_start"] {
        assert_eq!(b.api_json("POST", "/api/v1/duts/dut2/events", Some(&format!("{{\"event\": \"{ev}\"}}"))).status, 204);
    }
    let a = Citron::start(&["--gateway", "a", "--lab", &lab, "--state", &pg.url, "--nbd", "off", "--data", data_a.to_str().unwrap()]);
    let on_a = sse(&a, "dut=dut2", Some(last), 3);
    let on_b = sse(&b, "dut=dut2", Some(last), 3);
    let types = |v: &[(u64, String, Value)]| v.iter().map(|e| e.1.clone()).collect::<Vec<_>>();
    assert_eq!(types(&on_a), ["job_end", "job_dropped", "boot", "job_start"], "{on_a:?}");
    assert_eq!(on_a, on_b, "every gateway serves the same feed");
    assert!(on_a.windows(2).all(|w| w[0].0 < w[1].0) && on_a[0].0 > last);
    // A type filter, from the start.
    let sets = sse(&b, "type=job_set&dut=dut2", None, 2);
    assert_eq!(sets.len(), 1, "{sets:?}");

    // Live across gateways: a reader on a sees an event b records while it reads.
    let from = on_a.last().unwrap().0;
    let live = std::thread::scope(|s| {
        let api = a.api.unwrap();
        let reader = s.spawn(move || sse_at(api, "dut=dut2", Some(from), 6));
        std::thread::sleep(Duration::from_millis(1000));
        assert_eq!(b.api_json("POST", "/api/v1/duts/dut2/events", Some(r#"{"event": "boot"}"#)).status, 204);
        reader.join().unwrap()
    });
    assert_eq!(types(&live), ["boot"], "{live:?}");
    assert_eq!(live[0].2["gateway"], "b");
}

/// A gateway killed with -9 stops heartbeating: after `gateways.heartbeat_timeout` the other
/// marks it and its DUTs offline (an event each), and keeps them in the lab.
#[test]
fn a_gateway_killed_is_marked_offline_after_its_timeout() {
    if !require_tool("curl") {
        return;
    }
    let Some(pg) = Postgres::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let lab = write_lab(dir.path(), "lab.yaml", LAB);
    let a = gateway("a", &lab, &pg.url).expect("gateway a starts");
    let b = gateway("b", &lab, &pg.url).expect("gateway b starts");
    assert_eq!(dut(&a, "dut2")["online"], true);
    drop(b); // kill -9
    let t0 = Instant::now();
    while dut(&a, "dut2")["online"] != false && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(dut(&a, "dut2")["online"], false, "dut2 offline within 30 s (timeout 2 s)");
    println!("gateway killed -> its DUT offline after {:?} (heartbeat_timeout 2 s)", t0.elapsed());
    assert_eq!(dut(&a, "dut1")["online"], true);
    let d = a.api("GET", "/api/v1/duts/dut2", &[]);
    assert_eq!((d.status, d.json()["online"].as_bool()), (200, Some(false)), "an offline DUT is still in the lab: {}", d.body);
    let r = a.api("PUT", "/api/v1/duts/dut2/job", &["-H", "Content-Type: application/yaml", "--data-binary", "deployment: {}\n"]);
    assert_eq!(r.status, 503, "{}", r.body);
    let msg = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(msg.contains("\"b\"") && msg.contains("offline"), "{msg}");
    let ev = sse(&a, "type=dut_offline", None, 2);
    assert_eq!(ev.iter().map(|e| e.2["dut"].as_str().unwrap_or("")).collect::<Vec<_>>(), ["dut2"], "{ev:?}");
}

/// SQLite holds one gateway: a second live one on the same file is refused, saying why.
#[test]
fn a_second_gateway_on_one_sqlite_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let state = format!("sqlite://{}", dir.path().join("lab.sqlite").display());
    let _a = Citron::start(&["--gateway", "a", "--state", &state, "--tftp", "off", "--nbd", "off"]);
    let f = Citron::try_start(&["--gateway", "b", "--state", &state, "--tftp", "off", "--nbd", "off"]).err().expect("refused");
    assert!(f.stderr.contains("gateway \"a\"") && f.stderr.contains("PostgreSQL"), "{}", f.stderr);
    assert_eq!(f.status.and_then(|s| s.code()), Some(2));
}
