//! `result:` sources (issue 15 §8): a job boots what an earlier job produced. Job A's DUT
//! uploads its build (by its source address, and with its run's token); job B's DUT fetches it
//! over HTTP from citron, as any other artifact; a source naming no such job, run or file, or
//! an untokened file without `untokened: true`, is refused at its place in the job.

use citron_tests::api::Reply;
use citron_tests::{curl, curl_status, require_tool, Citron};
use serde_json::{json, Value};

const ADMIN: &str = "admin-s3cret";

fn admin(c: &Citron, method: &str, path: &str, args: &[&str]) -> Reply {
    let mut a = vec!["-H", "Authorization: Bearer admin-s3cret"];
    a.extend_from_slice(args);
    c.api(method, path, &a)
}

fn put_job(c: &Citron, dut: &str, yaml: &str) -> Reply {
    admin(c, "PUT", &format!("/api/v1/duts/{dut}/job"), &["-H", "Content-Type: application/yaml", "--data-binary", yaml])
}

const BUILD: &str = "name: fw-build\nresults: {}\ndeployment:\n  start:\n    storage:\n      http:\n        - path: run.env\n          data: \"{{ upload_token }} {{ run_id }}\"\n";

fn boot(sources: &str) -> String {
    format!("deployment:\n  start:\n    storage:\n      http:\n{sources}")
}

#[test]
fn a_job_boots_what_an_earlier_job_uploaded() {
    if !require_tool("curl") {
        return;
    }
    let c = Citron::start_with(&["--nbd", "off", "--tftp", "off"], |c| {
        c.env("CITRON_API_TOKEN", ADMIN);
    })
    .unwrap_or_else(|f| panic!("citron did not start: {}", f.stderr));
    let dir = tempfile::tempdir().unwrap();

    // Job A on dut1: its DUT uploads a kernel by its address, and one with its run's token.
    assert_eq!(put_job(&c, "dut1", BUILD).status, 200);
    let env = curl(&["--interface", "127.0.0.2", "--fail", &c.http_url("/run.env")]).stdout;
    let (token, run) = env.split_once(' ').unwrap();
    let kernel: Vec<u8> = (0..70_000u32).map(|i| (i % 253) as u8).collect();
    let f = dir.path().join("bzImage");
    std::fs::write(&f, &kernel).unwrap();
    let up = curl_status(&["--interface", "127.0.0.2", "-T", f.to_str().unwrap(), &c.http_url("/_citron/results/images/by-address")]);
    assert_eq!(up, 201);
    let auth = format!("Authorization: Bearer {token}");
    let r = c.api("PUT", &format!("/api/v1/results/fw-build/runs/{run}/files/images/bzImage"), &["-H", &auth, "-T", f.to_str().unwrap()]);
    assert_eq!(r.status, 201, "{r:?}");

    // While the run is open there is no successful run to boot from.
    let src = "        - path: boot/bzImage\n          result: {job: fw-build, path: images/bzImage}\n";
    let r = put_job(&c, "dut2", &boot(src));
    assert_eq!(r.status, 502, "{r:?}");
    let end = json!({"event": "job_end", "status": "success"}).to_string();
    assert_eq!(admin(&c, "POST", "/api/v1/duts/dut1/events", &["-H", "Content-Type: application/json", "--data-binary", &end]).status, 204);

    // Job B on dut2 boots it: the newest successful run's, or a named run's; an untokened file
    // only when the job says so. Its DUT fetches them over HTTP.
    let srcs = format!(
        "{src}        - path: boot/pinned\n          result: {{job: fw-build, path: images/bzImage, run: {run}}}\n        - path: boot/by-address\n          result: {{job: fw-build, path: images/by-address, untokened: true}}\n"
    );
    let r = put_job(&c, "dut2", &boot(&srcs));
    assert_eq!(r.status, 200, "{r:?}");
    for path in ["/boot/bzImage", "/boot/pinned", "/boot/by-address"] {
        let out = dir.path().join("got");
        let o = curl(&["--interface", "127.0.0.3", "--fail", "-o", out.to_str().unwrap(), &c.http_url(path)]);
        assert_eq!(o.code, 0, "{path}: {o:?}");
        assert_eq!(std::fs::read(&out).unwrap(), kernel, "{path}");
    }
    assert_eq!(curl_status(&["--interface", "127.0.0.2", &c.http_url("/boot/bzImage")]), 404, "dut1 does not see dut2's files");

    // Refused, each at its place in the job: an untokened file without `untokened: true`, no
    // such job, run or file; a bad job name or path before anything is fetched.
    let bad = "        - path: a\n          result: {job: fw-build, path: images/by-address}\n        - path: b\n          result: {job: no-such-job, path: x}\n        - path: c\n          result: {job: fw-build, path: x, run: 99999}\n        - path: d\n          result: {job: fw-build, path: images/none}\n";
    let r = put_job(&c, "dut2", &boot(bad));
    assert_eq!(r.status, 502, "{r:?}");
    let v: Value = r.json();
    let errs: Vec<(u64, String)> =
        v["errors"].as_array().unwrap().iter().map(|e| (e["line"].as_u64().unwrap(), e["message"].as_str().unwrap().to_string())).collect();
    assert_eq!(errs.iter().map(|e| e.0).collect::<Vec<_>>(), [6, 8, 10, 12], "{errs:?}");
    assert!(errs[0].1.contains("untokened: true"), "{errs:?}");
    assert!(errs[1].1.contains("no run of job \"no-such-job\""), "{errs:?}");
    assert!(errs[2].1.contains("no run 99999"), "{errs:?}");
    assert!(errs[3].1.contains("has no file \"images/none\""), "{errs:?}");
    let r = put_job(&c, "dut2", &boot("        - path: a\n          result: {job: ../x, path: /etc/passwd}\n"));
    assert_eq!(r.status, 422, "{r:?}");
    let v: Value = r.json();
    let fields: Vec<&str> = v["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields.len(), 2, "{v}");
    // dut2's earlier job still serves: a refused job changes nothing.
    assert_eq!(curl_status(&["--interface", "127.0.0.3", &c.http_url("/boot/pinned")]), 200);
}
