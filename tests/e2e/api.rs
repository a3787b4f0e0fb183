//! The lab API of the real binary, with curl: DUTs, jobs, events, access logs, metrics, OpenAPI.

use citron_tests::api::Reply;
use citron_tests::{curl, require_tool, Citron};
use serde_json::Value;

/// `(status, body as JSON or Null)`, the answer checked against the OpenAPI document. A job is
/// YAML; every other body JSON.
fn call(c: &Citron, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let r = match body {
        Some(b) if path.ends_with("/job") => c.api(method, path, &["-H", "Content-Type: application/yaml", "--data-binary", b]),
        _ => c.api_json(method, path, body),
    };
    (r.status, r.json())
}

fn get_as(ip: &str, url: &str) -> (u16, String) {
    let o = curl(&["--interface", ip, "-w", "\n%{http_code}", url]);
    let (b, code) = o.stdout.rsplit_once('\n').unwrap_or(("", &o.stdout));
    (code.trim().parse().unwrap_or(0), b.to_string())
}

#[test]
fn openapi_metrics_and_errors_without_jobs() {
    if !require_tool("curl") {
        return;
    }
    let c = Citron::start(&[]);
    let (code, doc) = call(&c, "GET", "/api/v1/openapi.json", None);
    assert_eq!(code, 200);
    assert!(doc["openapi"].as_str().unwrap_or("").starts_with("3."), "{doc}");
    for p in ["/api/v1/duts", "/api/v1/duts/{id}/job", "/api/v1/duts/{id}/events", "/metrics"] {
        assert!(doc["paths"].get(p).is_some(), "{p}");
    }
    let (code, list) = call(&c, "GET", "/api/v1/duts", None);
    assert_eq!(code, 200);
    let ids: Vec<&str> = list.as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["dut1", "dut2"]);
    assert_eq!(call(&c, "GET", "/api/v1/duts/", None), (200, list), "a trailing / names the same route");
    // Errors: JSON with a message and the right status.
    let (code, e) = call(&c, "GET", "/api/v1/duts/nope", None);
    assert_eq!(code, 404);
    assert!(e["error"].as_str().unwrap().contains("nope"), "{e}");
    assert_eq!(call(&c, "GET", "/api/v1/nothing", None).0, 404);
    // A method the path does not have: 405 with `Allow` (checked by the helper) and a JSON error.
    let r = c.api("PATCH", "/api/v1/duts", &[]);
    assert_eq!(r.status, 405, "{r:?}");
    assert!(r.header("allow").unwrap().contains("POST"), "{r:?}");
    assert!(r.json()["error"].as_str().unwrap().contains("PATCH"), "{r:?}");
    assert_eq!(call(&c, "POST", "/api/v1/duts", Some("{not json")).0, 400);
    let (code, e) = call(&c, "POST", "/api/v1/duts", Some(r#"{"id": "x", "ip": ["127.0.0.2"]}"#));
    assert_eq!(code, 409, "{e}");
    assert!(e["error"].as_str().unwrap().contains("127.0.0.2"), "{e}");
    assert_eq!(call(&c, "POST", "/api/v1/duts/dut1/events", Some(r#"{"event": "reboot"}"#)).0, 400);
    assert_eq!(call(&c, "POST", "/api/v1/duts/dut1/events", Some(r#"{"event": "job_end"}"#)).0, 204);
    // A request from an unknown address shows up in the metrics.
    assert_eq!(get_as("127.0.0.9", &c.http_url("/x")).0, 404);
    let m = c.api("GET", "/metrics", &[]).body;
    assert!(m.contains("# TYPE citron_requests counter"), "{m}");
    assert!(m.contains("# HELP citron_requests "), "{m}");
    assert!(m.contains("citron_refusals_total{protocol=\"http\",dut=\"unknown\"} 1"), "{m}");
}

/// Add a DUT, give it a job, read its secret once, reset with a boot event, read the log.
/// Needs the YAML job parser.
#[test]
fn dut_job_event_round_trip() {
    if !require_tool("curl") {
        return;
    }
    let c = Citron::start(&[]);
    let (code, d) = call(&c, "POST", "/api/v1/duts", Some(r#"{"id": "dut7", "ip": ["127.0.0.7"], "tags": ["arm64"]}"#));
    assert_eq!(code, 201, "{d}");
    assert_eq!(d["id"], "dut7");
    let (code, d) = call(&c, "GET", "/api/v1/duts/dut7", None);
    assert_eq!((code, &d["job"]), (200, &Value::Null));

    let job = "deployment:\n  start:\n    storage:\n      http:\n        - path: /job/secret\n          data: \"s3cr3t for {{ machine_id }}\"\n          lifetime:\n            access_count: 1\n";
    let (code, d) = call(&c, "PUT", "/api/v1/duts/dut7/job", Some(job));
    assert_eq!(code, 200, "{d}");
    assert!(d["job"].is_string(), "{d}");
    let u = c.http_url("/job/secret");
    assert_eq!(get_as("127.0.0.7", &u), (200, "s3cr3t for dut7".into()));
    assert_eq!(get_as("127.0.0.7", &u).0, 410);
    assert_eq!(call(&c, "POST", "/api/v1/duts/dut7/events", Some(r#"{"event": "boot"}"#)).0, 204);
    assert_eq!(get_as("127.0.0.7", &u), (200, "s3cr3t for dut7".into()));

    let (code, log) = call(&c, "GET", "/api/v1/duts/dut7/accesses", None);
    assert_eq!(code, 200);
    let kinds: Vec<&str> = log.as_array().unwrap().iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["served", "refused", "served"], "{log}");
    assert_eq!(log[0]["path"], "/job/secret");
    assert_eq!(log[0]["protocol"], "http");

    // A bad job: 422 with every error's line and column; the old job stays.
    let bad = "deployment:\n  start:\n    storage:\n      http:\n        - path: /a\n          data: x\n          url: http://127.0.0.1:1/x\n        - path: /b\n          nonsense: 1\n";
    let (code, e) = call(&c, "PUT", "/api/v1/duts/dut7/job", Some(bad));
    assert_eq!(code, 422, "{e}");
    let errs = e["errors"].as_array().expect("an errors list");
    assert!(errs.len() >= 2, "{e}");
    for er in errs {
        assert!(er["line"].as_u64().unwrap() >= 5 && er["column"].as_u64().unwrap() >= 1, "{er}");
        assert!(!er["message"].as_str().unwrap().is_empty());
    }
    assert_eq!(call(&c, "POST", "/api/v1/duts/dut7/events", Some(r#"{"event": "boot"}"#)).0, 204);
    assert_eq!(get_as("127.0.0.7", &u).0, 200);

    // Dropping the job empties the namespace; removing the DUT forgets the address.
    assert_eq!(call(&c, "DELETE", "/api/v1/duts/dut7/job", None).0, 204);
    assert_eq!(get_as("127.0.0.7", &u).0, 404);
    assert_eq!(call(&c, "DELETE", "/api/v1/duts/dut7", None).0, 204);
    assert_eq!(call(&c, "GET", "/api/v1/duts/dut7", None).0, 404);
    assert_eq!(call(&c, "GET", "/api/v1/duts/dut7/accesses", None).0, 404);
}

/// `api::serve` with a token: every route needs it.
#[test]
fn bearer_token_is_required_when_configured() {
    if !require_tool("curl") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = citron_fetch::gateway(citron_core::lab::LabConfig::default_lab(), dir.path()).unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = rt.spawn(citron_lab::api::serve(listener, gw, Some("s3cr3t-t0ken".into()), None, None, async {
        let _ = stop_rx.await;
    }));
    assert_token_required(|args| citron_tests::api::call(addr, "GET", "/api/v1/duts", args), "s3cr3t-t0ken");
    let m = citron_tests::api::call(addr, "GET", "/metrics", &[]);
    assert!(m.status == 401 && m.json()["error"].is_string(), "{m:?}");
    let _ = stop_tx.send(());
    rt.block_on(task).unwrap().unwrap();
}

/// The value of the Prometheus sample `name` (with its labels, e.g.
/// `citron_bytes_total{protocol="http",dut="dut1"}`), 0 if absent.
fn sample(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{name}: {v:?} is not a number")))
        .unwrap_or(0)
}

/// The counters move as a DUT is served: requests and bytes by DUT after a read, cache misses
/// when a job's artifact is new to the cache, hits when another job has the same bytes.
#[test]
fn metrics_count_bytes_and_cache_hits_and_misses() {
    if !require_tool("curl") {
        return;
    }
    let c = Citron::start(&["--tftp", "off", "--nbd", "off"]);
    let metrics = || {
        let r = c.api("GET", "/metrics", &[]);
        assert_eq!(r.status, 200, "{r:?}");
        r.body
    };
    let (bytes1, req1) = ("citron_bytes_total{protocol=\"http\",dut=\"dut1\"}", "citron_requests_total{protocol=\"http\",dut=\"dut1\"}");
    let (hits, misses) = ("citron_cache_hits_total", "citron_cache_misses_total");
    let m0 = metrics();
    for n in [hits, misses] {
        let family = n.trim_end_matches("_total");
        assert!(m0.contains(&format!("# TYPE {family} counter")) && m0.contains(&format!("\n{n} ")), "{m0}");
    }
    let payload = "a payload of forty-two bytes for /metrics";
    let job = format!("deployment:\n  start:\n    storage:\n      http:\n        - path: /m.txt\n          data: \"{payload}\"\n");
    assert_eq!(call(&c, "PUT", "/api/v1/duts/dut1/job", Some(&job)).0, 200);
    let m1 = metrics();
    assert_eq!(sample(&m1, misses), sample(&m0, misses) + 1, "new bytes are a miss:\n{m1}");
    assert_eq!(sample(&m1, hits), sample(&m0, hits), "{m1}");
    // The same bytes for another DUT: found in the cache.
    assert_eq!(call(&c, "PUT", "/api/v1/duts/dut2/job", Some(&job)).0, 200);
    let m2 = metrics();
    assert_eq!(sample(&m2, hits), sample(&m1, hits) + 1, "the same bytes are a hit:\n{m2}");
    assert_eq!(sample(&m2, misses), sample(&m1, misses), "{m2}");

    assert_eq!(get_as("127.0.0.2", &c.http_url("/m.txt")), (200, payload.to_string()));
    assert_eq!(get_as("127.0.0.2", &c.http_url("/m.txt")), (200, payload.to_string()));
    let m3 = metrics();
    assert_eq!(sample(&m3, bytes1), sample(&m2, bytes1) + 2 * payload.len() as u64, "{m3}");
    assert_eq!(sample(&m3, req1), sample(&m2, req1) + 2, "{m3}");
    let bytes2 = "citron_bytes_total{protocol=\"http\",dut=\"dut2\"}";
    assert_eq!(sample(&m3, bytes2), sample(&m2, bytes2), "dut2 read nothing: {m3}");
}

/// A lab file with `api_token`, the API on loopback (as deployed, but only loopback in tests):
/// the token is required on every route, loopback or not.
#[test]
fn binary_requires_the_lab_files_token_on_loopback_too() {
    if !require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lab = dir.path().join("lab.yaml");
    std::fs::write(&lab, "duts:\n  - id: dut1\n    ip: [\"127.0.0.2\"]\napi_token: t0k3n-from-the-lab-file\n").unwrap();
    let c = Citron::start(&["--lab", lab.to_str().unwrap(), "--api", "127.0.0.1:0", "--tftp", "off", "--nbd", "off"]);
    assert!(c.api.unwrap().ip().is_loopback());
    for path in ["/api/v1/duts", "/metrics", "/api/v1/openapi.json", "/api/v1/duts/dut1/accesses"] {
        assert_token_required(|args| c.api("GET", path, args), "t0k3n-from-the-lab-file");
    }
    let o = c.api("GET", "/api/v1/duts", &[]);
    assert_eq!(o.header("www-authenticate"), Some("Bearer"), "{o:?}");
    let v = c.api("GET", "/api/v1/duts", &["-H", "Authorization: Bearer t0k3n-from-the-lab-file"]).json();
    assert_eq!(v[0]["id"], "dut1", "{v}");
    // HTTP for the DUTs is not the API: no token there.
    assert_eq!(get_as("127.0.0.2", &c.http_url("/nothing")).0, 404);
}

/// `get(extra curl args)` answers 401 without the bearer token, with a wrong one, with the token
/// in another scheme or none, and 200 with `Authorization: Bearer <token>`.
fn assert_token_required(get: impl Fn(&[&str]) -> Reply, token: &str) {
    let (bearer, basic, bare) =
        (format!("Authorization: Bearer {token}"), format!("Authorization: Basic {token}"), format!("Authorization: {token}"));
    for (hdr, want) in [
        (None, 401),
        (Some("Authorization: Bearer wrong"), 401),
        (Some(basic.as_str()), 401),
        (Some(bare.as_str()), 401),
        (Some(bearer.as_str()), 200),
    ] {
        let a: Vec<&str> = hdr.map(|h| vec!["-H", h]).unwrap_or_default();
        let r = get(&a);
        assert_eq!(r.status, want, "{hdr:?}: {r:?}");
    }
}

/// `GET /api/v1/duts/{id}/job`: 404 with a message before a job is set, then the YAML exactly
/// as PUT, its origin and when it was set; 404 again once the job is dropped. `GET
/// /api/v1/duts/{id}` (with `job`) matches its schema all along.
#[test]
fn the_job_as_set_can_be_read_back() {
    if !require_tool("curl") {
        return;
    }
    let c = Citron::start(&["--tftp", "off", "--nbd", "off"]);
    let (code, e) = call(&c, "GET", "/api/v1/duts/dut1/job", None);
    assert_eq!(code, 404, "{e}");
    assert!(e["error"].as_str().unwrap().contains("no job"), "{e}");
    assert_eq!(call(&c, "GET", "/api/v1/duts/ghost/job", None).0, 404);
    let yaml = "# a comment is kept\ndeployment:\n  start:\n    storage:\n      http:\n        - {path: /a.txt, data: a}\n";
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert_eq!(c.put_job("dut1", yaml).0, 200);
    let (code, job) = call(&c, "GET", "/api/v1/duts/dut1/job", None);
    assert_eq!(code, 200, "{job}");
    assert_eq!(job["yaml"], yaml);
    assert_eq!(job["origin"], "api:dut1");
    let at = job["set_at"].as_f64().unwrap();
    assert!(at >= before - 1.0 && at < before + 120.0, "{job}");
    let (_, d) = call(&c, "GET", "/api/v1/duts/dut1", None);
    assert_eq!(d["job"], "api:dut1");
    assert_eq!(call(&c, "DELETE", "/api/v1/duts/dut1/job", None).0, 204);
    assert_eq!(call(&c, "GET", "/api/v1/duts/dut1/job", None).0, 404);
}

/// The document the binary serves is the generated one, `citron openapi` prints it, and it is
/// a valid OpenAPI document (openapi-spec-validator, from PyPI: scripts/setup-python.sh).
#[test]
fn the_openapi_document_is_served_printed_and_valid() {
    if !require_tool("curl") || !require_tool("openapi-spec-validator") {
        return;
    }
    let c = Citron::start(&["--tftp", "off", "--nbd", "off", "--http", "off"]);
    let served = c.api("GET", "/api/v1/openapi.json", &[]);
    assert_eq!(&served.json(), citron_tests::api::document());
    let printed = citron_tests::run(citron_tests::citron_bin(), &["openapi"], None, std::time::Duration::from_secs(30));
    assert_eq!(printed.code, 0, "{}", printed.stderr);
    assert_eq!(printed.stdout, served.body);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("openapi.json");
    std::fs::write(&f, &printed.stdout).unwrap();
    let v = citron_tests::run("openapi-spec-validator", &[f.to_str().unwrap()], None, std::time::Duration::from_secs(60));
    assert_eq!(v.code, 0, "openapi-spec-validator refused the document:\n{}{}", v.stdout, v.stderr);
    // And an invalid one is refused (the validator is not a no-op).
    std::fs::write(&f, printed.stdout.replacen("\"responses\"", "\"answers\"", 1)).unwrap();
    let bad = citron_tests::run("openapi-spec-validator", &[f.to_str().unwrap()], None, std::time::Duration::from_secs(60));
    assert_ne!(bad.code, 0, "{}", bad.stdout);
}
