//! Runs of DUT jobs (issue 15 §2, §4) with the real binary, curl and tftp-hpa: a job with
//! `results:` opens its run when it starts, its `{{ upload_token }}` works against the runs
//! API, the DUT uploads by its source address over HTTP (`PUT _citron/results/…`) and TFTP
//! (write requests), other DUTs cannot write into it, a job without `results:` takes no
//! upload, and `job_end` closes the run with its status and revokes the token.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use citron_tests::api::Reply;
use citron_tests::{curl, curl_status, require_tool, run, Citron};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const ADMIN: &str = "admin-s3cret";
const DUT1: &str = "127.0.0.2";
const DUT2: &str = "127.0.0.3";

/// The job with results: a served file carries the run's variables.
const JOB: &str = "name: fw-build\nresults:\n  platform: arm64\n  max_size: 64K\ndeployment:\n  start:\n    storage:\n      http:\n        - path: /run.env\n          data: \"TOKEN={{ upload_token }}\\nRUN={{ run_id }}\\nURL={{ results_url }}\\nJOB={{ job_name }}\\n\"\n";

fn start(extra: &[&str]) -> Citron {
    let mut args = vec!["--nbd", "off"];
    args.extend_from_slice(extra);
    Citron::start_with(&args, |c| {
        c.env("CITRON_API_TOKEN", ADMIN);
    })
    .unwrap_or_else(|f| panic!("citron did not start: {}", f.stderr))
}

fn admin(c: &Citron, method: &str, path: &str, args: &[&str]) -> Reply {
    let mut a = vec!["-H", "Authorization: Bearer admin-s3cret"];
    a.extend_from_slice(args);
    c.api(method, path, &a)
}

fn put_job(c: &Citron, dut: &str, query: &str, yaml: &str) -> Reply {
    admin(c, "PUT", &format!("/api/v1/duts/{dut}/job{query}"), &["-H", "Content-Type: application/yaml", "--data-binary", yaml])
}

fn event(c: &Citron, dut: &str, body: Value) -> Reply {
    admin(c, "POST", &format!("/api/v1/duts/{dut}/events"), &["-H", "Content-Type: application/json", "--data-binary", &body.to_string()])
}

fn the_runs(c: &Citron, job: &str) -> Vec<Value> {
    let r = admin(c, "GET", &format!("/api/v1/results/{job}/runs"), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    r.json().as_array().unwrap().clone()
}

fn the_run(c: &Citron, job: &str, id: i64) -> Value {
    let r = admin(c, "GET", &format!("/api/v1/results/{job}/runs/{id}"), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

/// `curl -T file url` from the source address `ip`; the status.
fn put_from(ip: &str, url: &str, file: &Path) -> u16 {
    curl_status(&["--interface", ip, "--path-as-is", "-T", file.to_str().unwrap(), url])
}

fn hex_sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// `KEY=value` lines of the run file dut1 is served.
fn run_env(c: &Citron) -> HashMap<String, String> {
    let o = curl(&["--interface", DUT1, "--fail", &c.http_url("/run.env")]);
    assert_eq!(o.code, 0, "{o:?}");
    o.stdout.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn a_dut_job_with_results_runs_uploads_and_ends() {
    if !require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let c = start(&["--tftp", "off", "--data", data.to_str().unwrap()]);
    let file = |name: &str, content: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p
    };

    // Setting the job is its start: its run is open, with the revision of the request.
    let r = put_job(&c, "dut1", "?revision=abc123", JOB);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(event(&c, "dut1", json!({"event": "job_start"})).status, 204);
    let runs = the_runs(&c, "fw-build");
    assert_eq!(runs.len(), 1, "a job_start continues the job's run: {runs:?}");
    let run = &runs[0];
    assert_eq!(
        (run["status"].as_str(), run["revision"].as_str(), run["platform"].as_str(), run["dut"].as_str()),
        (Some("running"), Some("abc123"), Some("arm64"), Some("dut1"))
    );
    let id = run["id"].as_i64().unwrap();

    // The job's files carry the run's token, id and where to upload.
    let env = run_env(&c);
    assert_eq!(env["RUN"], id.to_string());
    assert_eq!(env["JOB"], "fw-build");
    assert_eq!(env["URL"], c.http_url("/_citron/results"));
    let token = env["TOKEN"].clone();
    assert!(token.len() > 20, "{env:?}");

    // The token uploads into its run through the API, and nowhere else.
    let log = file("log.txt", b"build ok\n");
    let auth = format!("Authorization: Bearer {token}");
    let api_put = |run: i64, path: &str| {
        c.api("PUT", &format!("/api/v1/results/fw-build/runs/{run}/files/{path}"), &["-H", &auth, "-T", log.to_str().unwrap()])
    };
    assert_eq!(api_put(id, "log.txt").status, 201);
    assert_eq!(api_put(id + 1000, "log.txt").status, 403, "another run");

    // The DUT uploads by its source address over HTTP.
    let img = file("fw.bin", &vec![7u8; 40_000]);
    let url = |p: &str| format!("{}/{p}", env["URL"]);
    assert_eq!(put_from(DUT1, &url("images/fw.bin"), &img), 201);
    assert_eq!(put_from(DUT1, &url("images/fw.bin"), &img), 201, "the same content again is fine");
    assert_eq!(put_from(DUT1, &url("images/fw.bin"), &log), 409, "other content at the same path");
    // Refused: over max_size (announced or not), outside _citron/results, traversal.
    let big = file("big.bin", &vec![1u8; 70_000]);
    assert_eq!(put_from(DUT1, &url("big.bin"), &big), 413);
    let chunked = curl_status(&["--interface", DUT1, "-H", "Transfer-Encoding: chunked", "-T", big.to_str().unwrap(), &url("big2.bin")]);
    assert_eq!(chunked, 413, "a body with no length is bounded as it streams");
    assert_eq!(put_from(DUT1, &c.http_url("/run.env"), &log), 403);
    assert_eq!(put_from(DUT1, &c.http_url("/_citron/results/../../x"), &log), 400);
    assert_eq!(put_from(DUT1, &c.http_url("/_citron/results/a%00b"), &log), 400);
    // Another DUT never writes into dut1's run: without a job, and with a job without results.
    assert_eq!(put_from(DUT2, &url("evil.bin"), &log), 403);
    assert_eq!(
        put_job(&c, "dut2", "", "deployment:\n  start:\n    storage:\n      http:\n        - path: /a\n          data: a\n").status,
        200
    );
    assert_eq!(put_from(DUT2, &url("evil.bin"), &log), 403);
    // A job without `results:` has no run variables.
    let r = put_job(
        &c,
        "dut2",
        "",
        "deployment:\n  start:\n    storage:\n      http:\n        - path: /a\n          data: '{{ upload_token }}'\n",
    );
    assert_eq!(r.status, 422, "{r:?}");

    let got = the_run(&c, "fw-build", id);
    let files: Vec<(String, bool, String)> = got["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["path"].as_str().unwrap().into(), f["tokened"].as_bool().unwrap(), f["sha256"].as_str().unwrap().into()))
        .collect();
    assert_eq!(
        files,
        vec![("images/fw.bin".into(), false, hex_sha(&vec![7u8; 40_000])), ("log.txt".into(), true, hex_sha(b"build ok\n"))],
        "only complete uploads, the DUT's marked untokened"
    );

    // job_end closes the run with its status, revokes the token, and takes no more uploads.
    assert_eq!(event(&c, "dut1", json!({"event": "job_end", "status": "bogus"})).status, 400);
    assert_eq!(event(&c, "dut1", json!({"event": "job_end", "status": "success"})).status, 204);
    let got = the_run(&c, "fw-build", id);
    assert_eq!(got["status"], "success", "{got}");
    assert_eq!(api_put(id, "late.txt").status, 401, "the run's token is revoked");
    assert_eq!(put_from(DUT1, &url("late.bin"), &log), 403);
    // A consumer can require tokened files.
    let latest = |q: &str| admin(&c, "GET", &format!("/api/v1/results/fw-build/latest/files/{q}"), &[]).status;
    assert_eq!(latest("images/fw.bin"), 307);
    assert_eq!(latest("images/fw.bin?tokened=true"), 404);
    assert_eq!(latest("log.txt?tokened=true"), 307);

    // A new job is a new run; a restart keeps it open, the DUT's current run, same token.
    assert_eq!(put_job(&c, "dut1", "", JOB).status, 200);
    let runs = the_runs(&c, "fw-build");
    assert_eq!(runs.len(), 2);
    let second = runs[1]["id"].as_i64().unwrap();
    assert_eq!(runs[1]["revision"], Value::Null);
    let before = run_env(&c);
    drop(c);
    let c = start(&["--tftp", "off", "--data", data.to_str().unwrap()]);
    let after = run_env(&c);
    assert_eq!((&after["RUN"], &after["TOKEN"]), (&before["RUN"], &before["TOKEN"]), "the open run stays the DUT's run across a restart");
    let url = format!("{}/again.txt", after["URL"]);
    assert_eq!(put_from(DUT1, &url, &log), 201);
    let got = the_run(&c, "fw-build", second);
    assert_eq!(got["status"], "running");
    assert_eq!(got["files"].as_array().unwrap().len(), 1, "{got}");
    // job_end without a status: unknown.
    assert_eq!(event(&c, "dut1", json!({"event": "job_end"})).status, 204);
    assert_eq!(the_run(&c, "fw-build", second)["status"], "unknown");
}

#[test]
fn tftp_puts_land_in_the_dut_run_and_nowhere_else() {
    if !require_tool("curl") || !require_tool("tftp") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // tftp-hpa cannot choose its source address: the board is the DUT at 127.0.0.1.
    let lab = dir.path().join("lab.yaml");
    std::fs::write(&lab, "duts:\n  - {id: board, ip: [\"127.0.0.1\"]}\n  - {id: other, ip: [\"127.0.0.3\"]}\n").unwrap();
    let c = start(&["--lab", lab.to_str().unwrap()]);
    let port = c.tftp.unwrap().port().to_string();
    let file = |name: &str, content: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p
    };
    let tftp_put = |src: &Path, remote: &str| {
        let o = run(
            "tftp",
            &["-4", "127.0.0.1", &port, "-m", "binary", "-c", "put", src.to_str().unwrap(), remote],
            None,
            Duration::from_secs(30),
        );
        o.stdout + &o.stderr
    };
    let job = JOB.replace("fw-build", "board-test");
    assert_eq!(put_job(&c, "board", "", &job).status, 200);
    let id = the_runs(&c, "board-test")[0]["id"].as_i64().unwrap();

    // tftp-hpa `put`: several blocks with a short last one, and an exact multiple of 512
    // (an empty last block).
    let log: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
    let even = vec![9u8; 1024];
    assert_eq!(tftp_put(&file("console.log", &log), "_citron/results/console.log"), "");
    assert_eq!(tftp_put(&file("even.bin", &even), "/_citron/results/logs/even.bin"), "");
    // curl negotiates blksize and tsize.
    let img = vec![5u8; 20_000];
    let o = curl(&[
        "--tftp-blksize",
        "1468",
        "-T",
        file("img.bin", &img).to_str().unwrap(),
        &format!("tftp://127.0.0.1:{port}/_citron/results/img.bin"),
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    // Refused with TFTP's own errors: over max_size, outside _citron/results, another DUT.
    let err = tftp_put(&file("big.bin", &vec![1u8; 70_000]), "_citron/results/big.bin");
    assert!(err.contains("Error code 3"), "{err}");
    assert!(tftp_put(&file("x", b"x"), "x").contains("Error code 2"));
    let o = curl(&[
        "--interface",
        DUT2,
        "-T",
        file("evil", b"evil").to_str().unwrap(),
        &format!("tftp://127.0.0.1:{port}/_citron/results/evil"),
    ]);
    assert_ne!(o.code, 0, "another DUT's address cannot write into the board's run: {o:?}");
    assert_eq!(put_job(&c, "other", "", "deployment:\n  start: {}\n").status, 200);
    let o = curl(&[
        "--interface",
        DUT2,
        "-T",
        file("evil", b"evil").to_str().unwrap(),
        &format!("tftp://127.0.0.1:{port}/_citron/results/evil"),
    ]);
    assert_ne!(o.code, 0, "a job without results: takes no upload: {o:?}");

    let got = the_run(&c, "board-test", id);
    let files: Vec<(String, String, u64, bool)> = got["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().into(),
                f["sha256"].as_str().unwrap().into(),
                f["size"].as_u64().unwrap(),
                f["tokened"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        files,
        vec![
            ("console.log".into(), hex_sha(&log), 3000, false),
            ("img.bin".into(), hex_sha(&img), 20_000, false),
            ("logs/even.bin".into(), hex_sha(&even), 1024, false),
        ]
    );
}
