//! Recycling in the pool (issue 16 §4) with the real binary and curl: a DUT given back runs the
//! health job of its tags before it returns; the test plays the DUT (curl from its source
//! address reads the job's `{{ upload_token }}` and finishes the run, as a DUT's own script
//! would). A passing health job returns the DUT, a failing one quarantines it with the reason
//! and the run's console, one that never ends quarantines it at `health_timeout`; `power.cycle`
//! is used where a DUT is power-cycled, off and on without it; a DUT reserved without a job
//! stays off until its holder sets one through the DUT route.

use std::path::Path;
use std::time::{Duration, Instant};

use citron_tests::api::Reply;
use citron_tests::{curl, curl_status, require_tool, Citron};
use serde_json::{json, Value};

const ADMIN: &str = "admin-s3cret";

/// The health job: its run's status is the verdict; it serves the DUT its run's token.
const HEALTH: &str = "name: health\nresults:\n  platform: x86_64\ndeployment:\n  start:\n    storage:\n      http:\n        - path: /health.env\n          data: \"{{ upload_token }} {{ run_id }}\"\n";

/// DUT `i` at 127.0.2.i with `tags`, whose power commands append to `log`; `cycle` or not.
fn dut(i: u32, tags: &str, log: &Path, cycle: bool) -> String {
    let l = log.display();
    let cycle = if cycle { format!(", cycle: \"echo cycle $CITRON_DUT_ID >> {l}\"") } else { String::new() };
    format!(
        "  - id: d{i}\n    ip: [\"127.0.2.{i}\"]\n    tags: [{tags}]\n    power: {{on: \"echo on $CITRON_DUT_ID >> {l}\", off: \"echo off $CITRON_DUT_ID >> {l}\"{cycle}}}\n"
    )
}

fn start(dir: &Path, duts: &[String], pool: &str) -> Citron {
    std::fs::write(dir.join("health.yaml"), HEALTH).unwrap();
    let lab = dir.join("lab.yaml");
    std::fs::write(&lab, format!("duts:\n{}pool:\n{pool}", duts.concat())).unwrap();
    Citron::start_with(&["--lab", lab.to_str().unwrap(), "--tftp", "off", "--nbd", "off"], |c| {
        c.env("CITRON_API_TOKEN", ADMIN);
    })
    .unwrap_or_else(|f| panic!("citron did not start: {}", f.stderr))
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

/// Reserves one DUT with `tag` as the administrator; the reservation.
fn reserve(c: &Citron, tag: &str) -> Value {
    let r = call(c, ADMIN, "POST", "/api/v1/reservations", Some(json!({"tags": [tag]})));
    assert_eq!(r.status, 201, "{r:?}");
    let v = r.json();
    assert_eq!(v["state"], "allocated", "{v}");
    v
}

fn release(c: &Citron, res: &Value) {
    let r = call(c, ADMIN, "DELETE", &format!("/api/v1/reservations/{}", res["id"]), None);
    assert_eq!(r.status, 200, "{r:?}");
}

/// Waits (bounded) until the DUT's pool state is `state`; answers the DUT.
fn until_dut(c: &Citron, dut: &str, state: &str) -> Value {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let r = call(c, ADMIN, "GET", "/api/v1/pool/duts", None);
        let d = r.json().as_array().unwrap().iter().find(|d| d["id"] == dut).cloned().unwrap();
        if d["state"] == state {
            return d;
        }
        assert!(Instant::now() < end, "{dut} never became {state}: {d}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The power log's lines for `dut`.
fn power_log(log: &Path, dut: &str) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines().filter(|l| l.ends_with(&format!(" {dut}"))).map(|l| l.split(' ').next().unwrap().to_string()).collect()
}

/// As the DUT at `ip`: reads its health job's token and run, appends `console` to the run's
/// console and finishes it with `status`.
fn finish_as_dut(c: &Citron, ip: &str, console: &str, status: &str) {
    let env = curl(&["-sf", "--interface", ip, &c.http_url("/health.env")]);
    assert_eq!(env.code, 0, "the DUT reads its health job: {}", env.stderr);
    let text = env.stdout.clone();
    let (token, run) = text.trim().split_once(' ').expect("token and run");
    let base = format!("/api/v1/results/health/runs/{run}");
    let auth = format!("Authorization: Bearer {token}");
    let r = c.api(
        "PUT",
        &format!("{base}/console?offset=0"),
        &["-H", &auth, "-H", "Content-Type: application/octet-stream", "--data-binary", console],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let r = call(c, token, "POST", &format!("{base}/finish"), Some(json!({"status": status})));
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn a_passing_health_job_returns_the_dut_a_failing_one_quarantines_it() {
    if !require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("power.log");
    let duts = [dut(1, "good", &log, true), dut(2, "bad", &log, false), dut(3, "plain", &log, false)];
    let c = start(dir.path(), &duts, "  health_jobs: {good: health.yaml, bad: health.yaml}\n");

    // Reserved without a job: the DUT stays off.
    let (r1, r2, r3) = (reserve(&c, "good"), reserve(&c, "bad"), reserve(&c, "plain"));
    assert!(power_log(&log, "d1").is_empty() && power_log(&log, "d2").is_empty(), "{:?}", std::fs::read_to_string(&log));

    // No health job: back at once, powered off.
    release(&c, &r3);
    until_dut(&c, "d3", "free");
    assert_eq!(power_log(&log, "d3"), ["off"]);

    // d1 power-cycles with its `cycle` command, d2 (none) is powered off and on; both check.
    release(&c, &r1);
    release(&c, &r2);
    until_dut(&c, "d1", "checking");
    until_dut(&c, "d2", "checking");
    assert_eq!(power_log(&log, "d1"), ["cycle"]);
    assert_eq!(power_log(&log, "d2"), ["off", "on"]);

    // The DUT says how it went: d1 passed, back in the pool (and off); d2 failed, quarantined
    // with the reason and its console.
    finish_as_dut(&c, "127.0.2.1", "selftest: all good\n", "success");
    until_dut(&c, "d1", "free");
    assert_eq!(power_log(&log, "d1"), ["cycle", "off"]);
    finish_as_dut(&c, "127.0.2.2", "selftest: memory FAILED\n", "failure");
    let d2 = until_dut(&c, "d2", "quarantined");
    assert!(d2["reason"].as_str().unwrap().contains("health job") && d2["reason"].as_str().unwrap().contains("failure"), "{d2}");
    assert!(d2["output"].as_str().unwrap().contains("selftest: memory FAILED"), "{d2}");
    assert_eq!(power_log(&log, "d2"), ["off", "on", "off"]);
    // The health job is gone from the DUTs: d1's files are not served any more.
    assert_eq!(curl_status(&["--interface", "127.0.2.1", &c.http_url("/health.env")]), 404);
    // d1 is given again, d2 is not.
    let again = reserve(&c, "good");
    assert_eq!(again["duts"][0]["id"], "d1");
    let r = call(&c, ADMIN, "POST", "/api/v1/reservations", Some(json!({"tags": ["bad"]})));
    assert_eq!(r.json()["state"], "waiting", "{r:?}");
}

#[test]
fn a_job_set_later_powers_the_held_dut_on_and_a_silent_health_job_times_out() {
    if !require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("power.log");
    let duts = [dut(1, "later", &log, true), dut(2, "silent", &log, false)];
    let c = start(dir.path(), &duts, "  health_jobs: {silent: health.yaml}\n  health_timeout: 1s\n");

    // Held without a job: off. Its holder sets a job through the DUT route, with the
    // reservation's token: powered on with it; a second job power-cycles it.
    let r = reserve(&c, "later");
    let token = r["token"].as_str().unwrap().to_string();
    assert!(power_log(&log, "d1").is_empty());
    let job = "deployment:\n  start:\n    storage:\n      http:\n        - path: /hello.txt\n          data: hello\n";
    let auth = format!("Authorization: Bearer {token}");
    let put = |j: &str| c.api("PUT", "/api/v1/duts/d1/job", &["-H", &auth, "-H", "Content-Type: application/yaml", "--data-binary", j]);
    assert_eq!(put(job).status, 200);
    assert_eq!(power_log(&log, "d1"), ["on"]);
    assert_eq!(put(&job.replace("hello\n", "again\n")).status, 200);
    assert_eq!(power_log(&log, "d1"), ["on", "cycle"]);
    let served = curl(&["-s", "--interface", "127.0.2.1", &c.http_url("/hello.txt")]);
    assert_eq!(served.stdout, "again");

    // A health job nobody finishes: quarantined at the timeout, its run closed.
    let s = reserve(&c, "silent");
    release(&c, &s);
    let d2 = until_dut(&c, "d2", "quarantined");
    assert!(d2["reason"].as_str().unwrap().contains("did not finish within 1s"), "{d2}");
    assert_eq!(power_log(&log, "d2"), ["off", "on", "off"]);
    let runs = call(&c, ADMIN, "GET", "/api/v1/results/health/runs", None).json();
    assert_eq!(runs[0]["status"], "failure", "{runs}");
}
