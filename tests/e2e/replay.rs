//! Replay by revision (issue 15 §7, seed 001) with the real binary, curl (HTTP and TFTP from a
//! DUT's address) and the `citron results find|replay` client: two runs of one job and
//! revision on a DUT that reads its kernel over TFTP and a disk image over HTTP, uploads and
//! finishes; `find` names the successful run and `replay` prints its console and exits with
//! its status; a changed kernel, another revision and a bumped salt give no match; runs with
//! one key that ended otherwise are flagged flaky.

use std::path::Path;
use std::process::Command;

use citron_tests::api::Reply;
use citron_tests::{curl, curl_status, require_tool, Citron};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const ADMIN: &str = "admin-s3cret";
const DUT1: &str = "127.0.0.2";
const JOB_NAME: &str = "kernel-smoke";

fn start(lab: &Path, data: &Path) -> Citron {
    Citron::start_with(&["--nbd", "off", "--lab", lab.to_str().unwrap(), "--data", data.to_str().unwrap()], |c| {
        c.env("CITRON_API_TOKEN", ADMIN);
    })
    .unwrap_or_else(|f| panic!("citron did not start: {}", f.stderr))
}

fn admin(c: &Citron, method: &str, path: &str, args: &[&str]) -> Reply {
    let mut a = vec!["-H", "Authorization: Bearer admin-s3cret"];
    a.extend_from_slice(args);
    c.api(method, path, &a)
}

fn lab_file(dir: &Path, salt: &str) -> std::path::PathBuf {
    let p = dir.join(format!("lab-{salt}.yaml"));
    let text = format!(
        "duts:\n  - {{id: dut1, ip: [\"{DUT1}\"], tags: [x86_64, rack1]}}\nartifact_roots: [{}]\nresults:\n  salt: \"{salt}\"\n",
        dir.join("arts").display()
    );
    std::fs::write(&p, text).unwrap();
    p
}

fn job(arts: &Path) -> String {
    format!(
        "name: {JOB_NAME}\nresults:\n  platform: x86_64\ndeployment:\n  start:\n    kernel:\n      file: {k}\n    cmdline: console=ttyS0 quiet\n    storage:\n      http:\n        - path: run.env\n          data: \"TOKEN={{{{ upload_token }}}}\\nRUN={{{{ run_id }}}}\\n\"\n        - path: rootfs.img\n          file: {r}\n        - path: unread.txt\n          data: never read\n",
        k = arts.join("vmlinuz").display(),
        r = arts.join("rootfs.img").display()
    )
}

/// One run of the job on dut1: the DUT reads its run file, kernel (TFTP) and disk (HTTP),
/// uploads a log, its console is appended with the run's token, and `job_end` says `status`.
fn one_run(c: &Citron, arts: &Path, revision: &str, status: &str, console: &str) -> i64 {
    let r = admin(
        c,
        "PUT",
        &format!("/api/v1/duts/dut1/job?revision={revision}"),
        &["-H", "Content-Type: application/yaml", "--data-binary", &job(arts)],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let env = curl(&["--interface", DUT1, "--fail", &c.http_url("/run.env")]);
    assert_eq!(env.code, 0, "{env:?}");
    let var = |k: &str| env.stdout.lines().find_map(|l| l.strip_prefix(&format!("{k}="))).unwrap().to_string();
    let (token, run) = (var("TOKEN"), var("RUN").parse::<i64>().unwrap());
    let tftp = format!("tftp://127.0.0.1:{}/boot/dut1/kernel", c.tftp.unwrap().port());
    let kernel = curl(&["--interface", DUT1, "--fail", &tftp]);
    assert_eq!(kernel.code, 0, "the DUT reads its kernel over TFTP: {kernel:?}");
    assert_eq!(curl_status(&["--interface", DUT1, &c.http_url("/rootfs.img")]), 200);
    let log = arts.parent().unwrap().join("result.log");
    std::fs::write(&log, format!("{status}\n")).unwrap();
    assert_eq!(curl_status(&["--interface", DUT1, "-T", log.to_str().unwrap(), &c.http_url("/_citron/results/result.log")]), 201);
    let auth = format!("Authorization: Bearer {token}");
    let r = c.api("PUT", &format!("/api/v1/results/{JOB_NAME}/runs/{run}/console?offset=0"), &["-H", &auth, "--data-binary", console]);
    assert_eq!(r.status, 200, "{r:?}");
    let end = json!({"event": "job_end", "status": status}).to_string();
    let r = admin(c, "POST", "/api/v1/duts/dut1/events", &["-H", "Content-Type: application/json", "--data-binary", &end]);
    assert_eq!(r.status, 204, "{r:?}");
    run
}

/// `citron results ARGS…` against `c` with the admin token: (exit code, stdout, stderr).
fn cli(c: &Citron, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(citron_tests::citron_bin());
    cmd.arg("results").args(args).env("CITRON_SERVER", format!("http://{}", c.api.unwrap())).env("CITRON_TOKEN", ADMIN);
    let o = cmd.output().unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// `citron results find --job … --revision R`: exit code and answer.
fn find(c: &Citron, revision: &str) -> (i32, Value) {
    let (code, out, err) = cli(c, &["find", "--job", JOB_NAME, "--revision", revision]);
    assert!(code == 0 || code == 1, "find failed ({code}): {err}");
    (code, serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}")))
}

fn hex_sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

#[test]
fn a_run_with_the_same_inputs_is_found_and_replayed_and_anything_else_is_not() {
    if !require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let arts = dir.path().join("arts");
    std::fs::create_dir(&arts).unwrap();
    let kernel = b"KERNEL v1 ".repeat(1000);
    std::fs::write(arts.join("vmlinuz"), &kernel).unwrap();
    std::fs::write(arts.join("rootfs.img"), vec![3u8; 50_000]).unwrap();
    let data = dir.path().join("data");
    let c = start(&lab_file(dir.path(), "1"), &data);

    // Before any run, there is no job to compute a key of: an error, not "none".
    let (code, _, err) = cli(&c, &["find", "--job", JOB_NAME, "--revision", "abc"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no run of job"), "{err}");

    // The first run succeeds: its key, the declared artifacts and what its DUT was served.
    let first = one_run(&c, &arts, "abc", "success", "booted\nPASS\n");
    let run = admin(&c, "GET", &format!("/api/v1/results/{JOB_NAME}/runs/{first}"), &[]).json();
    let key = run["input_key"].as_str().unwrap().to_string();
    assert_eq!(key.len(), 64, "{run}");
    let inputs = &run["inputs"];
    assert_eq!(inputs["declared"]["start/kernel"], hex_sha(&kernel), "{inputs}");
    assert_eq!(inputs["tags"], json!(["rack1", "x86_64"]));
    let served: Vec<&str> = inputs["served"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(served, ["start/http/rootfs.img", "start/http/run.env", "start/kernel"], "what the DUT read, not unread.txt: {inputs}");
    assert_eq!(inputs["served"]["start/kernel"], hex_sha(&kernel), "served over TFTP, recorded from the serving path");
    assert!(run.get("flaky").is_none(), "{run}");

    // The next CI step finds it, and replays it: the console, and the run's status.
    let (code, found) = find(&c, "abc");
    assert_eq!(code, 0, "{found}");
    assert_eq!(
        (found["run"]["id"].as_i64(), found["key"].as_str(), found["flaky"].as_bool()),
        (Some(first), Some(key.as_str()), Some(false))
    );
    assert_eq!(found["dut"], "dut1");
    let (code, out, err) = cli(&c, &["replay", &first.to_string()]);
    assert_eq!((code, out.as_str()), (0, "booted\nPASS\n"), "{err}");

    // Another revision has another key: none (exit 1).
    let (code, found) = find(&c, "def");
    assert_eq!((code, &found["run"]), (1, &Value::Null), "{found}");
    assert_ne!(found["key"].as_str(), Some(key.as_str()));

    // A second run of the same job and revision, same inputs, fails: one key, two outcomes.
    let second = one_run(&c, &arts, "abc", "failure", "booted\nFAIL: oops\n");
    let run2 = admin(&c, "GET", &format!("/api/v1/results/{JOB_NAME}/runs/{second}"), &[]).json();
    assert_eq!(run2["input_key"].as_str(), Some(key.as_str()), "same inputs, same key, whatever the run's token");
    assert_eq!(run2["flaky"], true, "{run2}");
    let (code, found) = find(&c, "abc");
    assert_eq!(code, 0, "{found}");
    assert_eq!((found["run"]["id"].as_i64(), found["flaky"].as_bool()), (Some(first), Some(true)), "the successful one, flagged: {found}");
    assert_eq!(found["runs"], json!([second, first]));
    let (code, out, err) = cli(&c, &["replay", &second.to_string()]);
    assert_eq!((code, out.as_str()), (1, "booted\nFAIL: oops\n"), "a failed run replays as a failure");
    assert!(err.contains("flaky"), "{err}");

    // One input artifact changed: no match; back as it was: the match is back.
    std::fs::write(arts.join("vmlinuz"), b"KERNEL v2 ".repeat(1001)).unwrap();
    let (code, found) = find(&c, "abc");
    assert_eq!(code, 1, "a changed kernel gives no match: {found}");
    std::fs::write(arts.join("vmlinuz"), &kernel).unwrap();
    assert_eq!(find(&c, "abc").0, 0);

    // The key outlives a restart with the same salt (this job uses no address of the
    // servers), and a bumped salt disowns every earlier result.
    drop(c);
    let c = start(&lab_file(dir.path(), "1"), &data);
    assert_eq!(find(&c, "abc").0, 0, "same salt, same key after a restart");
    drop(c);
    let c = start(&lab_file(dir.path(), "2"), &data);
    let (code, found) = find(&c, "abc");
    assert_eq!((code, &found["run"], &found["runs"]), (1, &Value::Null, &json!([])), "{found}");
    // A run under the new salt is found again.
    let third = one_run(&c, &arts, "abc", "success", "booted\nPASS\n");
    let (code, found) = find(&c, "abc");
    assert_eq!((code, found["run"]["id"].as_i64()), (0, Some(third)), "{found}");
}
