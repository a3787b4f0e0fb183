//! Duffy's legacy API on the pool (issue 16 §5), driven by the real python-cicoclient from PyPI
//! (`cico`, installed by scripts/setup-python.sh) against the real binary over loopback:
//! `cico node get`, `cico inventory`, `cico node done`, Duffy's answer to a request that cannot
//! be met (cico gives up, no queue), and with curl the calls cico has no command for
//! (`Node/fail`), a wrong key and another tenant's session.

use std::path::Path;
use std::time::Duration;

use citron_tests::{require_tool, Citron, Out};
use serde_json::{json, Value};

const ADMIN: &str = "admin-s3cret";

const LAB: &str = "duts:
  - {id: n1, mac: \"52:54:00:00:02:01\", ip: [\"127.0.2.1\"], arch: x86_64, model: r640, tags: [centos-8]}
  - {id: n2, mac: \"52:54:00:00:02:02\", ip: [\"127.0.2.2\"], arch: x86_64, model: r640, tags: [centos-8]}
  - {id: n3, mac: \"52:54:00:00:02:03\", ip: [\"127.0.2.3\"], arch: aarch64, model: rpi, tags: [centos-9-stream]}
pool: {duffy: true}
";

fn start(dir: &Path) -> Citron {
    let lab = dir.join("lab.yaml");
    std::fs::write(&lab, LAB).unwrap();
    Citron::start_with(&["--lab", lab.to_str().unwrap(), "--tftp", "off", "--nbd", "off"], |c| {
        c.env("CITRON_API_TOKEN", ADMIN);
    })
    .unwrap_or_else(|f| panic!("citron did not start: {}", f.stderr))
}

fn tenant(c: &Citron, name: &str) -> String {
    let body = json!({"name": name}).to_string();
    let auth = format!("Authorization: Bearer {ADMIN}");
    let r = c.api("POST", "/api/v1/tenants", &["-H", &auth, "-H", "Content-Type: application/json", "--data-binary", &body]);
    assert_eq!(r.status, 201, "{r:?}");
    r.json()["token"].as_str().unwrap().to_string()
}

fn reservation(c: &Citron, id: &str) -> Value {
    let auth = format!("Authorization: Bearer {ADMIN}");
    let r = c.api("GET", &format!("/api/v1/reservations/{id}"), &["-H", &auth]);
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

/// `cico ARGS -f json` against the citron's Duffy prefix with `key`.
fn cico(c: &Citron, key: &str, args: &[&str]) -> Out {
    let endpoint = format!("http://{}/duffy/", c.api.unwrap());
    let mut a = vec!["--endpoint", endpoint.as_str(), "--api-key", key];
    a.extend_from_slice(args);
    citron_tests::run("cico", &a, None, Duration::from_secs(60))
}

/// cico's JSON table: `hostname -> comment (the ssid)`.
fn hosts(o: &Out) -> Vec<(String, String)> {
    assert_eq!(o.code, 0, "{o:?}");
    let rows: Vec<Value> = serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("{e}: {o:?}"));
    let mut out: Vec<(String, String)> =
        rows.iter().map(|r| (r["hostname"].as_str().unwrap().to_string(), r["comment"].as_str().unwrap_or("").to_string())).collect();
    out.sort();
    out
}

/// `GET /duffy/PATH` with curl: `(status, body)`.
fn duffy(c: &Citron, path: &str) -> (u16, String) {
    let url = format!("http://{}/duffy/{path}", c.api.unwrap());
    let o = citron_tests::curl(&["-s", "-w", "\n%{http_code}", &url]);
    let (body, code) = o.stdout.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

#[test]
fn cico_gets_lists_and_returns_nodes_and_is_told_no_as_duffy_says_it() {
    if !require_tool("curl") || !require_tool("cico") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path());
    let (a, b) = (tenant(&c, "ci-a"), tenant(&c, "ci-b"));

    // Two x86_64 CentOS 8 nodes: the pool's n1 and n2, one session.
    let got = hosts(&cico(&c, &a, &["node", "get", "--arch", "x86_64", "--release", "8", "--count", "2", "-f", "json"]));
    assert_eq!(got.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>(), ["n1", "n2"], "{got:?}");
    let ssid = got[0].1.clone();
    assert!(!ssid.is_empty() && got[1].1 == ssid, "{got:?}");
    let r = reservation(&c, &ssid);
    assert_eq!((r["state"].as_str(), r["tenant"].as_str(), r["arch"].as_str()), (Some("allocated"), Some("ci-a"), Some("x86_64")), "{r}");
    assert_eq!(r["tags"], json!(["centos-8"]), "{r}");

    // Nothing left that fits: Duffy's "no", and cico gives up (no queue, nothing left waiting).
    let o = cico(&c, &b, &["node", "get", "--arch", "x86_64", "--release", "8", "--retry-count", "0", "-f", "json"]);
    assert_ne!(o.code, 0, "{o:?}");
    assert!(o.stderr.contains("no inventory is available"), "{o:?}");
    let (code, body) = duffy(&c, &format!("Node/get?key={b}&arch=x86_64&ver=8"));
    assert_eq!((code, body.as_str()), (200, "Insufficient Nodes in READY State"));
    let auth = format!("Authorization: Bearer {ADMIN}");
    let waiting = c.api("GET", "/api/v1/reservations?state=waiting", &["-H", &auth]);
    assert_eq!(waiting.json(), json!([]), "a Duffy request never stays queued");
    // One that can never be met: Duffy's JSON string with the pool's reason; cico stops on it.
    let o = cico(&c, &a, &["node", "get", "--arch", "x86_64", "--release", "7", "-f", "json"]);
    assert_ne!(o.code, 0, "{o:?}");
    assert!(o.stderr.contains("Failed to allocate nodes: unknown tag \"centos-7\""), "{o:?}");

    // The key's inventory is its session; the full one every node, Duffy's 14 columns.
    assert_eq!(hosts(&cico(&c, &a, &["inventory", "-f", "json"])), got);
    assert_eq!(hosts(&cico(&c, &b, &["inventory", "-f", "json"])), []);
    let (code, body) = duffy(&c, "Inventory");
    assert_eq!(code, 200);
    let all: Vec<Vec<Value>> = serde_json::from_str(&body).unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|r| r.len() == 14), "{body}");
    assert_eq!(all[2][1..7], [json!("n3"), json!("127.0.2.3"), json!("rpi"), json!(0), json!("Ready"), Value::Null], "{body}");
    assert_eq!((&all[2][9], &all[2][10]), (&json!("9-stream"), &json!("aarch64")));

    // Another tenant's session, a wrong key, no key: Duffy's 403s.
    let (code, body) = duffy(&c, &format!("Node/done?key={b}&ssid={ssid}"));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("Invalid duffy key"), "{body}");
    for key in ["", "key=not.a.token&", "key=nonsense&"] {
        let (code, body) = duffy(&c, &format!("Node/done?{key}ssid={ssid}"));
        assert_eq!(code, 403, "{key}: {body}");
        assert!(body.contains("Invalid duffy key"), "{body}");
    }
    assert_eq!(reservation(&c, &ssid)["state"], "allocated");

    // Done: cico lists what it gave back; the reservation is released.
    assert_eq!(hosts(&cico(&c, &a, &["node", "done", &ssid, "-f", "json"])), got);
    assert_eq!(reservation(&c, &ssid)["state"], "released");
    let (code, body) = duffy(&c, &format!("Node/done?key={a}&ssid={ssid}"));
    assert_eq!((code, body.contains("Session not in Prod")), (200, true), "{body}");

    // Node/fail (cico has no command for it): the session fails, its node kept aside.
    let (code, body) = duffy(&c, &format!("Node/get?key={b}&arch=aarch64&ver=9-stream"));
    assert_eq!(code, 200, "{body}");
    let s: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["hosts"], json!(["n3"]), "{body}");
    let ssid = s["ssid"].as_str().unwrap();
    let (code, body) = duffy(&c, &format!("Node/fail?key={b}&ssid={ssid}"));
    assert_eq!((code, body.trim()), (200, "\"Done\""));
    let r = reservation(&c, ssid);
    assert_eq!(r["state"], "failed", "{r}");
    assert!(r["keep_until"].as_f64().is_some(), "{r}");
}

#[test]
fn the_legacy_api_is_off_unless_the_lab_file_turns_it_on() {
    if !require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lab = dir.path().join("lab.yaml");
    std::fs::write(&lab, LAB.replace("pool: {duffy: true}\n", "")).unwrap();
    let c = Citron::start_with(&["--lab", lab.to_str().unwrap(), "--tftp", "off", "--nbd", "off"], |c| {
        c.env("CITRON_API_TOKEN", ADMIN);
    })
    .unwrap_or_else(|f| panic!("citron did not start: {}", f.stderr));
    for path in ["Inventory", "Node/get?key=x"] {
        let (code, body) = duffy(&c, path);
        assert_eq!(code, 404, "{body}");
        assert!(body.contains("pool: {duffy: true}"), "{body}");
    }
}
