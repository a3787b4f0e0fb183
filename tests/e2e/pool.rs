//! The DUT pool with the real binary and curl: queue order and all-or-nothing, a large request
//! blocking only what it could use, tenants kept apart (403), the reservation's token driving
//! exactly its DUTs, 400s naming the limit, 20 concurrent requests for 5 DUTs, a restart keeping
//! the queue, expiry, fail-and-keep, extend within the maximum, quotas, and a failing and a
//! hanging power command quarantining their DUT.

use std::path::Path;
use std::time::{Duration, Instant};

use citron_tests::api::Reply;
use citron_tests::{require_tool, Citron};
use serde_json::{json, Value};

const ADMIN: &str = "admin-s3cret";
const JOB: &str = "deployment:\n  start:\n    storage:\n      http:\n        - path: /hello.txt\n          data: hello\n";

fn start(lab: &Path, data: Option<&str>) -> Citron {
    let mut args = vec!["--lab", lab.to_str().unwrap(), "--tftp", "off", "--nbd", "off"];
    if let Some(d) = data {
        args.extend(["--data", d]);
    }
    Citron::start_with(&args, |c| {
        c.env("CITRON_API_TOKEN", ADMIN);
    })
    .unwrap_or_else(|f| panic!("citron did not start: {}", f.stderr))
}

/// A lab file in `dir`: `duts` as YAML list items, then `rest`.
fn lab(dir: &Path, duts: &[String], rest: &str) -> std::path::PathBuf {
    let p = dir.join("lab.yaml");
    std::fs::write(&p, format!("duts:\n{}{rest}", duts.concat())).unwrap();
    p
}

fn dut(i: u32, tags: &str, extra: &str) -> String {
    format!("  - id: d{i}\n    mac: \"52:54:00:00:01:{i:02x}\"\n    ip: [\"127.0.1.{i}\"]\n    arch: x86_64\n    model: m{}\n    tags: [{tags}]\n{extra}", i % 2)
}

fn call(c: &Citron, token: &str, method: &str, path: &str, body: Option<Value>) -> Reply {
    let auth = format!("Authorization: Bearer {token}");
    let b = body.map(|b| b.to_string());
    let mut a = vec!["-H", &auth];
    if let Some(b) = &b {
        a.extend(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    c.api(method, path, &a)
}

fn tenant(c: &Citron, name: &str) -> String {
    let r = call(c, ADMIN, "POST", "/api/v1/tenants", Some(json!({"name": name})));
    assert_eq!(r.status, 201, "{r:?}");
    r.json()["token"].as_str().unwrap().to_string()
}

fn request(c: &Citron, token: &str, body: Value) -> Value {
    let r = call(c, token, "POST", "/api/v1/reservations", Some(body));
    assert_eq!(r.status, 201, "{r:?}");
    r.json()
}

fn get(c: &Citron, token: &str, id: i64, wait: &str) -> Value {
    let r = call(c, token, "GET", &format!("/api/v1/reservations/{id}?wait={wait}"), None);
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

fn id(v: &Value) -> i64 {
    v["id"].as_i64().unwrap()
}

fn duts_of(v: &Value) -> Vec<String> {
    v["duts"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap().to_string()).collect()
}

/// The pool's DUTs by id (the administrator's view).
fn pool_dut(c: &Citron, dut: &str) -> Value {
    let r = call(c, ADMIN, "GET", "/api/v1/pool/duts", None);
    r.json().as_array().unwrap().iter().find(|d| d["id"] == dut).cloned().unwrap()
}

/// Waits until the DUT's pool state is `state` (bounded).
fn until_dut(c: &Citron, dut: &str, state: &str) -> Value {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let d = pool_dut(c, dut);
        if d["state"] == state || Instant::now() > end {
            assert_eq!(d["state"], state, "{d}");
            return d;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn queue_order_all_or_nothing_and_tenants_kept_apart() {
    if !require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let duts = [dut(1, "x", ""), dut(2, "x", ""), dut(3, "y", "")];
    let c = start(&lab(dir.path(), &duts, "tenants:\n  a: {max_priority: 5}\n  b: {max_duts: 3}\n"), None);
    let (a, b) = (tenant(&c, "a"), tenant(&c, "b"));

    // Requests that can never be met: a 400 naming the limit.
    for (body, says) in [
        (json!({"tags": ["z"]}), "unknown tag"),
        (json!({"tags": ["x"], "count": 3}), "above the 2 DUTs"),
        (json!({"lifetime": "13h"}), "above the maximum"),
        (json!({"count": 4}), "max_duts of 3"),
    ] {
        let tok = if says.contains("max_duts") { &b } else { &a };
        let r = call(&c, tok, "POST", "/api/v1/reservations", Some(body));
        assert_eq!(r.status, 400, "{r:?}");
        assert!(r.json()["error"].as_str().unwrap().contains(says), "{r:?}");
    }

    let first = request(&c, &a, json!({"tags": ["x"], "count": 2}));
    assert_eq!(first["state"], "allocated", "{first}");
    let mut got = duts_of(&first);
    got.sort();
    assert_eq!(got, ["d1", "d2"]);
    let dut_token = first["token"].as_str().unwrap().to_string();
    assert_eq!(first["duts"][0]["mac"].as_str().unwrap().len(), 17, "{first}");

    // The holder's token drives exactly its DUTs; nobody else's token does.
    assert_eq!(call(&c, &dut_token, "GET", "/api/v1/duts/d1/accesses", None).status, 200);
    assert_eq!(call(&c, &dut_token, "GET", "/api/v1/duts/d3/accesses", None).status, 403);
    assert_eq!(call(&c, &b, "GET", "/api/v1/duts/d1/accesses", None).status, 403);
    let put = c.api(
        "PUT",
        "/api/v1/duts/d2/job",
        &["-H", &format!("Authorization: Bearer {dut_token}"), "-H", "Content-Type: application/yaml", "--data-binary", JOB],
    );
    assert_eq!(put.status, 200, "{put:?}");
    // Tenant b can neither see nor release a's reservation.
    assert_eq!(call(&c, &b, "GET", &format!("/api/v1/reservations/{}", id(&first)), None).status, 403);
    assert_eq!(call(&c, &b, "DELETE", &format!("/api/v1/reservations/{}", id(&first)), None).status, 403);
    let listed = call(&c, &b, "GET", "/api/v1/reservations", None).json();
    assert_eq!(listed.as_array().unwrap().len(), 0, "{listed}");

    // b wants both `x` DUTs: it waits, and a's request for one `x` behind it (same priority,
    // younger) waits too: the free `x` DUTs are set aside for the large one.
    let big = request(&c, &b, json!({"tags": ["x"], "count": 2}));
    assert_eq!(big["state"], "waiting", "{big}");
    let small = request(&c, &a, json!({"tags": ["x"]}));
    assert_eq!(small["state"], "waiting", "{small}");
    // One that needs other DUTs passes.
    let other = request(&c, &b, json!({"tags": ["y"]}));
    assert_eq!(other["state"], "allocated", "{other}");
    assert_eq!(duts_of(&other), ["d3"]);

    // Released (twice: idempotent): the large request is served first, all at once.
    for _ in 0..2 {
        let r = call(&c, &a, "DELETE", &format!("/api/v1/reservations/{}", id(&first)), None);
        assert_eq!((r.status, r.json()["state"].as_str()), (200, Some("released")), "{r:?}");
    }
    assert_eq!(call(&c, &dut_token, "GET", "/api/v1/duts/d1/accesses", None).status, 401, "the token is revoked");
    let big = get(&c, &b, id(&big), "20s");
    assert_eq!(big["state"], "allocated", "{big}");
    assert_eq!(duts_of(&big).len(), 2);
    assert_eq!(get(&c, &a, id(&small), "0s")["state"], "waiting");
    // The released DUT's job ended with its reservation.
    assert_eq!(call(&c, ADMIN, "GET", "/api/v1/duts/d2/job", None).status, 404);

    let mine = call(&c, &a, "GET", "/api/v1/reservations?state=waiting", None).json();
    assert_eq!(mine.as_array().unwrap().iter().map(id).collect::<Vec<_>>(), [id(&small)]);
    let page = call(&c, ADMIN, "GET", "/api/v1/reservations?limit=2", None);
    assert_eq!(page.json().as_array().unwrap().len(), 2);
    assert!(page.header("link").unwrap().contains("after="), "{page:?}");

    // Every change is on the feed.
    let feed = c.api("GET", "/api/v1/events?type=reservation_allocated", &["-H", &format!("Authorization: Bearer {ADMIN}"), "-m", "2"]);
    assert!(feed.body.matches("reservation_allocated").count() >= 3, "{feed:?}");
}

#[test]
fn twenty_concurrent_requests_for_five_duts() {
    if !require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let duts: Vec<String> = (1..=5).map(|i| dut(i, "x", "")).collect();
    let c = start(&lab(dir.path(), &duts, ""), None);
    let addr = c.api.unwrap();
    let body = json!({"tags": ["x"]}).to_string();
    let auth = format!("Authorization: Bearer {ADMIN}");
    let answers: Vec<u16> = std::thread::scope(|s| {
        let args = ["-H", auth.as_str(), "-H", "Content-Type: application/json", "--data-binary", body.as_str()];
        let hs: Vec<_> =
            (0..20).map(|_| s.spawn(move || citron_tests::api::call(addr, "POST", "/api/v1/reservations", &args).status)).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|s| *s == 201), "{answers:?}");
    assert_eq!(answers.len(), 20);
    let all = call(&c, ADMIN, "GET", "/api/v1/reservations", None).json();
    let all = all.as_array().unwrap();
    let allocated: Vec<&Value> = all.iter().filter(|r| r["state"] == "allocated").collect();
    assert_eq!(allocated.len(), 5, "{all:?}");
    assert_eq!(all.iter().filter(|r| r["state"] == "waiting").count(), 15);
    let mut given: Vec<String> = allocated.iter().flat_map(|r| duts_of(r)).collect();
    given.sort();
    given.dedup();
    assert_eq!(given.len(), 5, "no DUT given twice: {given:?}");
    let metrics = c.api("GET", "/metrics", &["-H", &format!("Authorization: Bearer {ADMIN}")]);
    assert!(metrics.body.contains("citron_pool_dut_uses{dut=\"d1\"} 1"), "{}", metrics.body);
}

#[test]
fn a_restart_keeps_allocated_and_waiting_reservations_in_order() {
    if !require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let data = data.to_str().unwrap();
    let l = lab(dir.path(), &[dut(1, "x", "")], "");
    let c = start(&l, Some(data));
    let held = request(&c, ADMIN, json!({}));
    assert_eq!(held["state"], "allocated");
    let low = request(&c, ADMIN, json!({"priority": 1}));
    let high = request(&c, ADMIN, json!({"priority": 9}));
    let low2 = request(&c, ADMIN, json!({"priority": 1}));
    c.terminate(Duration::from_secs(10));

    let c = start(&l, Some(data));
    assert_eq!(get(&c, ADMIN, id(&held), "0s")["state"], "allocated");
    for r in [&low, &high, &low2] {
        assert_eq!(get(&c, ADMIN, id(r), "0s")["state"], "waiting");
    }
    // Priority first, then age: high, low, low2.
    for (done, next) in [(&held, &high), (&high, &low), (&low, &low2)] {
        call(&c, ADMIN, "DELETE", &format!("/api/v1/reservations/{}", id(done)), None);
        assert_eq!(get(&c, ADMIN, id(next), "20s")["state"], "allocated", "{next}");
    }
}

#[test]
fn expiry_fail_and_keep_extend_and_quotas() {
    if !require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let duts = [dut(1, "x", ""), dut(2, "x", "")];
    let c = start(&l_with(dir.path(), &duts), None);
    let t = tenant(&c, "t");
    // Quota: max_duts 1, so a second request waits while the first holds its DUT.
    let r = request(&c, &t, json!({"lifetime": "2s"}));
    assert_eq!(r["state"], "allocated");
    let second = request(&c, &t, json!({}));
    assert_eq!(second["state"], "waiting", "held back by max_duts: {second}");
    // Extend within the tenant's maximum (1h), not beyond.
    let e = call(&c, &t, "PATCH", &format!("/api/v1/reservations/{}", id(&second)), Some(json!({"lifetime": "2h"})));
    assert_eq!(e.status, 400, "{e:?}");
    assert!(e.json()["error"].as_str().unwrap().contains("maximum of 3600s"), "{e:?}");
    let e = call(&c, &t, "PATCH", &format!("/api/v1/reservations/{}", id(&second)), Some(json!({"lifetime": "30m"})));
    assert_eq!((e.status, e.json()["lifetime"].as_u64()), (200, Some(1800)), "{e:?}");
    // The first expires; the second gets a DUT.
    let second = get(&c, &t, id(&second), "20s");
    assert_eq!(second["state"], "allocated", "{second}");
    assert_eq!(get(&c, &t, id(&r), "0s")["state"], "expired");
    // Failed and kept: its DUT stays aside, then comes back when released.
    let f = call(&c, &t, "POST", &format!("/api/v1/reservations/{}/fail", id(&second)), Some(json!({"keep": "24h"})));
    assert_eq!((f.status, f.json()["state"].as_str()), (200, Some("failed")), "{f:?}");
    let kept = &duts_of(&second)[0];
    until_dut(&c, kept, "kept");
    assert!(f.json()["keep_until"].as_f64().is_some());
    call(&c, &t, "DELETE", &format!("/api/v1/reservations/{}", id(&second)), None);
    until_dut(&c, kept, "free");
}

fn l_with(dir: &Path, duts: &[String]) -> std::path::PathBuf {
    lab(dir, duts, "tenants:\n  t: {max_duts: 1, max_lifetime: 1h}\n")
}

#[test]
fn failing_and_hanging_power_commands_quarantine_their_dut() {
    if !require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let duts = [
        // Powered off on release: that fails.
        dut(1, "off", "    power: {off: 'echo no power here; exit 3'}\n"),
        // Powered on with a job: that hangs; then d3 is given instead.
        dut(2, "on", "    power: {on: 'echo stuck; sleep 30', timeout: 1s}\n"),
        dut(3, "on", "    power: {on: 'true', off: 'true'}\n"),
    ];
    let c = start(&lab(dir.path(), &duts, ""), None);
    let r = request(&c, ADMIN, json!({"tags": ["off"]}));
    call(&c, ADMIN, "DELETE", &format!("/api/v1/reservations/{}", id(&r)), None);
    let d = until_dut(&c, "d1", "quarantined");
    assert!(d["reason"].as_str().unwrap().contains("power off failed"), "{d}");
    assert_eq!(d["output"], "no power here\n");
    // A quarantined DUT is not offered: the request waits.
    let waiting = request(&c, ADMIN, json!({"tags": ["off"]}));
    assert_eq!(waiting["state"], "waiting");

    // The hanging one: least recently used first, both never used, so by id: d2 (for a tenant
    // with no model of its own yet: the administrator's last was d1's, d3's model).
    let t = tenant(&c, "t");
    let r = request(&c, &t, json!({"tags": ["on"], "job": JOB}));
    let d = until_dut(&c, "d2", "quarantined");
    assert!(d["reason"].as_str().unwrap().contains("did not finish within 1s"), "{d}");
    assert_eq!(d["output"], "stuck\n");
    let end = Instant::now() + Duration::from_secs(20);
    let mut r = get(&c, &t, id(&r), "1s");
    while (r["state"] != "allocated" || duts_of(&r) != ["d3"]) && Instant::now() < end {
        r = get(&c, &t, id(&r), "1s");
    }
    assert_eq!((r["state"].as_str(), duts_of(&r)), (Some("allocated"), vec!["d3".to_string()]), "{r}");
    until_dut(&c, "d3", "allocated");
    // The job was set on the DUT it was given.
    assert_eq!(call(&c, ADMIN, "GET", "/api/v1/duts/d3/job", None).status, 200);

    // Back by hand: the request waiting for it gets it.
    let e = call(&c, ADMIN, "POST", "/api/v1/pool/duts/d1/enable", None);
    assert_eq!(e.status, 200, "{e:?}");
    assert_eq!(get(&c, ADMIN, id(&waiting), "10s")["state"], "allocated");
    assert_eq!(call(&c, &t, "POST", "/api/v1/pool/duts/d1/disable", None).status, 403);
}

#[test]
fn the_cli_requests_lists_extends_fails_and_releases() {
    if !require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let c = start(&lab(dir.path(), &[dut(1, "x", ""), dut(2, "x", "")], "tenants:\n  t: {max_lifetime: 1h}\n"), None);
    let tok = dir.path().join("t.token");
    std::fs::write(&tok, tenant(&c, "t")).unwrap();
    let admin = dir.path().join("admin.token");
    std::fs::write(&admin, ADMIN).unwrap();
    let server = format!("http://{}", c.api.unwrap());
    let cli = |token: &Path, args: &[&str]| {
        let mut a = vec!["pool"];
        a.extend_from_slice(args);
        a.extend(["--server", &server, "--token-file", token.to_str().unwrap()]);
        let o = citron_tests::run(citron_tests::citron_bin(), &a, None, Duration::from_secs(30));
        (o.code, serde_json::from_str::<Value>(&o.stdout).unwrap_or(Value::Null), o.stderr)
    };
    let (st, r, err) = cli(&tok, &["request", "--tag", "x", "--count", "2", "--wait", "10s"]);
    assert_eq!((st, r["state"].as_str()), (0, Some("allocated")), "{err}");
    let rid = r["id"].to_string();
    // Nothing left: a second request is still waiting after --wait, exit 1.
    let (st, w, _) = cli(&tok, &["request", "--tag", "x", "--wait", "1s"]);
    assert_eq!((st, w["state"].as_str()), (1, Some("waiting")));
    let (_, l, _) = cli(&tok, &["list", "--state", "allocated"]);
    assert_eq!(l.as_array().unwrap().len(), 1, "{l}");
    let (st, _, err) = cli(&tok, &["extend", &rid, "2h"]);
    assert_ne!(st, 0);
    assert!(err.contains("400") && err.contains("maximum"), "{err}");
    let (st, e, _) = cli(&tok, &["extend", &rid, "45m"]);
    assert_eq!((st, e["lifetime"].as_u64()), (0, Some(2700)));
    let (_, f, _) = cli(&tok, &["fail", &rid, "--keep", "1h"]);
    assert_eq!(f["state"], "failed");
    let (_, s, _) = cli(&admin, &["status"]);
    assert!(s.as_array().unwrap().iter().all(|d| d["state"] == "kept"), "{s}");
    let (st, _, err) = cli(&tok, &["status"]);
    assert_ne!(st, 0, "the pool's status is the administrator's: {err}");
    let (_, r, _) = cli(&tok, &["release", &rid]);
    assert_eq!(r["state"], "failed");
    // The waiting one gets one of them once recycled.
    let (_, w, _) = cli(&tok, &["status", &w["id"].to_string()]);
    let held = get(&c, ADMIN, w["id"].as_i64().unwrap(), "10s");
    assert_eq!(held["state"], "allocated", "{held}");
    let held = duts_of(&held).remove(0);
    let other = if held == "d1" { "d2" } else { "d1" };
    until_dut(&c, other, "free");
    let (st, d, err) = cli(&admin, &["dut", "disable", other]);
    assert_eq!((st, d["state"].as_str()), (0, Some("disabled")), "{err}");
    let (st, _, err) = cli(&admin, &["dut", "disable", &held]);
    assert!(st != 0 && err.contains("409"), "a held DUT is not disabled: {err}");
    let (st, d, _) = cli(&admin, &["dut", "enable", other]);
    assert_eq!((st, d["state"].as_str()), (0, Some("free")));
}

/// Two gateways on one PostgreSQL, 50 concurrent requests (half through each) for 10 DUTs
/// (half on each): exactly 10 allocated, no DUT twice; a DUT released through one gateway is
/// recycled by its own and goes to the oldest waiting request.
#[test]
fn fifty_requests_through_two_gateways_on_one_postgresql() {
    if !require_tool("curl") {
        return;
    }
    let Some(pg) = super::state_pg::Postgres::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let duts: Vec<String> = (1..=10).map(|i| dut(i, "x", if i % 2 == 0 { "    gateway: a\n" } else { "    gateway: b\n" })).collect();
    let l = lab(dir.path(), &duts, "gateways:\n  heartbeat_timeout: 2s\n");
    let gw = |name: &str| {
        let args = ["--gateway", name, "--lab", l.to_str().unwrap(), "--state", &pg.url, "--tftp", "off", "--nbd", "off"];
        Citron::start_with(&args, |c| {
            c.env("CITRON_API_TOKEN", ADMIN);
        })
        .unwrap_or_else(|f| panic!("citron did not start: {}", f.stderr))
    };
    let (a, b) = (gw("a"), gw("b"));
    let addrs = [a.api.unwrap(), b.api.unwrap()];
    let body = json!({"tags": ["x"]}).to_string();
    let auth = format!("Authorization: Bearer {ADMIN}");
    let answers: Vec<u16> = std::thread::scope(|s| {
        let args = ["-H", auth.as_str(), "-H", "Content-Type: application/json", "--data-binary", body.as_str()];
        let hs: Vec<_> =
            (0..50).map(|i| s.spawn(move || citron_tests::api::call(addrs[i % 2], "POST", "/api/v1/reservations", &args).status)).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|s| *s == 201), "{answers:?}");
    let all = call(&b, ADMIN, "GET", "/api/v1/reservations", None).json();
    let all = all.as_array().unwrap();
    let allocated: Vec<&Value> = all.iter().filter(|r| r["state"] == "allocated").collect();
    assert_eq!((allocated.len(), all.len()), (10, 50), "{all:?}");
    let mut given: Vec<String> = allocated.iter().flat_map(|r| duts_of(r)).collect();
    given.sort();
    given.dedup();
    assert_eq!(given.len(), 10, "no DUT given twice: {given:?}");

    // Released through a, the DUT of b: b recycles it, the oldest waiting request gets it.
    let on_b = allocated.iter().find(|r| duts_of(r)[0] == "d1").unwrap();
    assert_eq!(call(&a, ADMIN, "DELETE", &format!("/api/v1/reservations/{}", id(on_b)), None).status, 200);
    let oldest = all
        .iter()
        .filter(|r| r["state"] == "waiting")
        .min_by(|x, y| x["created_at"].as_f64().partial_cmp(&y["created_at"].as_f64()).unwrap())
        .unwrap();
    let got = get(&a, ADMIN, id(oldest), "20s");
    assert_eq!((got["state"].as_str(), duts_of(&got)), (Some("allocated"), vec!["d1".to_string()]), "{got}");

    // b goes away: a free DUT of b is not offered (the pass a request runs before its answer
    // leaves it free), until b is back.
    b.terminate(Duration::from_secs(10));
    let end = Instant::now() + Duration::from_secs(20);
    while pg.psql("SELECT count(*) FROM gateways WHERE name = 'b' AND offline_since IS NOT NULL").trim() != "1" && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(200));
    }
    pg.psql("UPDATE pool_duts SET state = 'free', reservation = NULL WHERE id = 'd3'");
    request(&a, ADMIN, json!({"tags": ["x"]}));
    assert_eq!(pool_dut(&a, "d3")["state"], "free");
    pg.psql("UPDATE gateways SET offline_since = NULL WHERE name = 'b'");
    request(&a, ADMIN, json!({"tags": ["x"]}));
    assert_eq!(pool_dut(&a, "d3")["state"], "allocated");
}
