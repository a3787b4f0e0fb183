//! Results and tokens with the real binary and curl: tenants, minted and narrowed tokens,
//! 401/403 with nothing written, runs opened from outside, files streamed in with `curl -T`
//! (checksums, 409, path traversal), console, `latest` → blob, by-hash, tenant isolation, a
//! cut-off upload and `kill -9` mid-upload.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use citron_tests::api::Reply;
use citron_tests::{require_tool, Citron};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const ADMIN: &str = "admin-s3cret";

fn start(data: Option<&str>) -> Citron {
    start_on(data, None)
}

/// [`start`] with `--state URL` when given.
fn start_on(data: Option<&str>, state: Option<&str>) -> Citron {
    let mut args = vec!["--tftp", "off", "--nbd", "off"];
    if let Some(d) = data {
        args.extend(["--data", d]);
    }
    if let Some(s) = state {
        args.extend(["--state", s]);
    }
    Citron::start_with(&args, |c| {
        c.env("CITRON_API_TOKEN", ADMIN);
    })
    .unwrap_or_else(|f| panic!("citron did not start: {}", f.stderr))
}

/// `method path` with `token` (none: no Authorization) and curl `args`.
fn call(c: &Citron, token: Option<&str>, method: &str, path: &str, args: &[&str]) -> Reply {
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut a: Vec<&str> = Vec::new();
    if let Some(h) = &auth {
        a.extend(["-H", h]);
    }
    a.extend_from_slice(args);
    c.api(method, path, &a)
}

fn post(c: &Citron, token: Option<&str>, path: &str, body: Value) -> Reply {
    call(c, token, "POST", path, &["-H", "Content-Type: application/json", "--data-binary", &body.to_string()])
}

/// `curl -T file` to a run's file, with the digest header when `sha` is given.
fn put_file(c: &Citron, token: &str, job: &str, run: i64, path: &str, file: &Path, sha: Option<&str>) -> Reply {
    let h = sha.map(|s| format!("X-Checksum-SHA256: {s}"));
    let mut a = vec!["--path-as-is", "-T", file.to_str().unwrap()];
    if let Some(h) = &h {
        a.extend(["-H", h]);
    }
    call(c, Some(token), "PUT", &format!("/api/v1/results/{job}/runs/{run}/files/{path}"), &a)
}

fn hex_sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Deterministic bytes.
fn bytes(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32).map(|i| (i.wrapping_add(seed).wrapping_mul(2654435761) >> 13) as u8).collect()
}

fn tenant(c: &Citron, name: &str) -> String {
    let r = post(c, Some(ADMIN), "/api/v1/tenants", json!({"name": name}));
    assert_eq!(r.status, 201, "{r:?}");
    r.json()["token"].as_str().unwrap().to_string()
}

fn mint(c: &Citron, body: Value) -> (String, String) {
    let r = post(c, Some(ADMIN), "/api/v1/tokens", body);
    assert_eq!(r.status, 201, "{r:?}");
    (r.json()["token"].as_str().unwrap().to_string(), r.json()["id"].as_str().unwrap().to_string())
}

fn runs(c: &Citron, job: &str) -> Vec<Value> {
    let r = call(c, Some(ADMIN), "GET", &format!("/api/v1/results/{job}/runs"), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    r.json().as_array().unwrap().clone()
}

#[test]
fn tokens_scopes_and_refusals_write_nothing() {
    if !require_tool("curl") {
        return;
    }
    let c = start(None);
    // No token, a wrong one, a forged one: 401.
    assert_eq!(post(&c, None, "/api/v1/tenants", json!({"name": "ci"})).status, 401);
    assert_eq!(post(&c, Some("nope"), "/api/v1/tenants", json!({"name": "ci"})).status, 401);
    assert_eq!(post(&c, Some("a.b.c"), "/api/v1/results/j/runs", json!({})).status, 401);
    let ci = tenant(&c, "ci");
    assert_eq!(post(&c, Some(ADMIN), "/api/v1/tenants", json!({"name": "ci"})).status, 409);
    // A tenant's token is not the administrator.
    assert_eq!(call(&c, Some(&ci), "GET", "/api/v1/duts", &[]).status, 403);
    assert_eq!(post(&c, Some(&ci), "/api/v1/tenants", json!({"name": "x"})).status, 403);
    assert_eq!(post(&c, Some(&ci), "/api/v1/tokens", json!({"scopes": ["read"], "job": "*"})).status, 403);
    let job = "deployment:\n  start:\n    storage:\n      http:\n        - path: /a\n          data: a\n";
    let yaml = ["-H", "Content-Type: application/yaml", "--data-binary", job];
    assert_eq!(call(&c, Some(&ci), "PUT", "/api/v1/duts/dut1/job", &yaml).status, 403);
    // A `dut` token drives its DUT only.
    let (dut1, _) = mint(&c, json!({"scopes": ["dut"], "job": "*", "dut": "dut1", "ttl": "5m"}));
    assert_eq!(call(&c, Some(&dut1), "PUT", "/api/v1/duts/dut1/job", &yaml).status, 200);
    assert_eq!(call(&c, Some(&dut1), "PUT", "/api/v1/duts/dut2/job", &yaml).status, 403);
    assert_eq!(call(&c, Some(&dut1), "DELETE", "/api/v1/duts/dut1", &[]).status, 403);
    assert_eq!(call(&c, Some(ADMIN), "GET", "/api/v1/duts/dut2/job", &[]).status, 404, "nothing written for dut2");

    // Narrowing: never wider, never longer.
    let r = post(&c, Some(&ci), "/api/v1/tokens/subset", json!({"scopes": ["read"], "job": "kernel-*", "ttl": "1m"}));
    assert_eq!(r.status, 201, "{r:?}");
    let reader = r.json()["token"].as_str().unwrap().to_string();
    assert_eq!(post(&c, Some(&reader), "/api/v1/tokens/subset", json!({"scopes": ["upload"]})).status, 403);
    assert_eq!(post(&c, Some(&reader), "/api/v1/tokens/subset", json!({"job": "*"})).status, 403);
    assert_eq!(post(&c, Some(&reader), "/api/v1/tokens/subset", json!({"ttl": "1h"})).status, 403);
    assert_eq!(post(&c, Some(&ci), "/api/v1/tokens/subset", json!({"scopes": ["admin"]})).status, 403);

    // Out of scope: a reader cannot open a run or upload.
    assert_eq!(post(&c, Some(&reader), "/api/v1/results/kernel-x/runs", json!({})).status, 403);
    assert_eq!(runs(&c, "kernel-x"), Vec::<Value>::new());
    // A token for one job only.
    let r = post(&c, Some(&ci), "/api/v1/tokens/subset", json!({"scopes": ["upload"], "job": "kernel-x"}));
    let up = r.json()["token"].as_str().unwrap().to_string();
    let up_id = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(post(&c, Some(&up), "/api/v1/results/other/runs", json!({})).status, 403);
    assert_eq!(post(&c, Some(&up), "/api/v1/results/kernel-x/runs", json!({"revision": "r1"})).status, 201);

    // Revoked: refused at once, nothing written.
    assert_eq!(call(&c, Some(&reader), "DELETE", &format!("/api/v1/tokens/{up_id}"), &[]).status, 204, "same tenant");
    assert_eq!(post(&c, Some(&up), "/api/v1/results/kernel-x/runs", json!({})).status, 401);
    assert_eq!(runs(&c, "kernel-x").len(), 1);
    assert_eq!(call(&c, Some(ADMIN), "DELETE", "/api/v1/tokens/0123", &[]).status, 404);
    // A token of another tenant cannot revoke it.
    let other = tenant(&c, "other");
    let (_, lab_id) = mint(&c, json!({"scopes": ["read"], "job": "*"}));
    assert_eq!(call(&c, Some(&other), "DELETE", &format!("/api/v1/tokens/{lab_id}"), &[]).status, 403);

    // Expired: 401.
    let (short, _) = mint(&c, json!({"scopes": ["upload"], "job": "*", "ttl": "1s"}));
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(post(&c, Some(&short), "/api/v1/results/late/runs", json!({})).status, 401);
    assert_eq!(call(&c, Some(ADMIN), "GET", "/api/v1/results/late/runs", &[]).json(), json!([]));
}

#[test]
fn runs_files_console_latest_and_tenants() {
    if !require_tool("curl") {
        return;
    }
    let c = start(None);
    let dir = tempfile::tempdir().unwrap();
    let ci = tenant(&c, "ci");
    let other = tenant(&c, "other");
    let r = post(&c, Some(&ci), "/api/v1/results/kernel-build/runs", json!({"revision": "abc", "platform": "arm64"}));
    assert_eq!(r.status, 201, "{r:?}");
    let run = r.json()["id"].as_i64().unwrap();
    assert_eq!(r.json()["status"], "running");

    let img = bytes(3 << 20, 1);
    let sha = hex_sha(&img);
    let f = dir.path().join("kernel.img");
    std::fs::write(&f, &img).unwrap();
    let r = put_file(&c, &ci, "kernel-build", run, "images/kernel.img", &f, Some(&sha));
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!((r.json()["sha256"].as_str(), r.json()["size"].as_u64()), (Some(sha.as_str()), Some(3 << 20)));
    // The same content again is fine, with or without the digest; other content is 409.
    assert_eq!(put_file(&c, &ci, "kernel-build", run, "images/kernel.img", &f, Some(&sha)).status, 200);
    assert_eq!(put_file(&c, &ci, "kernel-build", run, "images/kernel.img", &f, None).status, 200);
    let g = dir.path().join("other.img");
    std::fs::write(&g, b"other").unwrap();
    assert_eq!(put_file(&c, &ci, "kernel-build", run, "images/kernel.img", &g, None).status, 409);
    assert_eq!(put_file(&c, &ci, "kernel-build", run, "images/kernel.img", &g, Some(&hex_sha(b"other"))).status, 409);
    // A wrong digest keeps nothing; hostile paths are refused.
    assert_eq!(put_file(&c, &ci, "kernel-build", run, "bad", &g, Some(&sha)).status, 400);
    for bad in ["../../etc/passwd", "a/../../b", "%2e%2e/x", "/etc/passwd", "a%00b", "a//b"] {
        let r = put_file(&c, &ci, "kernel-build", run, bad, &g, None);
        assert!([400, 404].contains(&r.status), "{bad}: {r:?}");
    }
    let files = call(&c, Some(&ci), "GET", &format!("/api/v1/results/kernel-build/runs/{run}"), &[]).json()["files"].clone();
    assert_eq!(files.as_array().unwrap().len(), 1, "{files}");
    // A run id that is not a number: 400 with a JSON error, as every error.
    let r = call(&c, Some(&ci), "GET", "/api/v1/results/kernel-build/runs/abc", &[]);
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.json()["error"].is_string(), "{r:?}");

    // Console: idempotent appends, gaps refused.
    let con = |off: u64, body: &str| {
        call(&c, Some(&ci), "PUT", &format!("/api/v1/results/kernel-build/runs/{run}/console?offset={off}"), &["--data-binary", body])
    };
    assert_eq!(con(0, "hello ").json()["length"], 6);
    assert_eq!(con(0, "hello ").json()["length"], 6, "a retry");
    assert_eq!(con(3, "lo world").json()["length"], 11, "an overlapping retry");
    assert_eq!(con(20, "x").status, 409);
    assert_eq!(call(&c, Some(&ci), "GET", &format!("/api/v1/results/kernel-build/runs/{run}/console"), &[]).body, "hello world");

    // Nothing is `latest` before it succeeded.
    assert_eq!(call(&c, Some(&ci), "GET", "/api/v1/results/kernel-build/latest", &[]).status, 404);
    let fin = |s: &str| post(&c, Some(&ci), &format!("/api/v1/results/kernel-build/runs/{run}/finish"), json!({"status": s}));
    assert_eq!(fin("success").status, 200);
    assert_eq!(fin("success").status, 200);
    assert_eq!(fin("failure").status, 409);
    assert_eq!(put_file(&c, &ci, "kernel-build", run, "late", &g, None).status, 409, "finished");

    // Reading: latest → 307 to the blob, digest in a header; HEAD the same; the blob by hash.
    let (reader, _) = {
        let r = post(&c, Some(&ci), "/api/v1/tokens/subset", json!({"scopes": ["read"], "job": "kernel-*"}));
        (r.json()["token"].as_str().unwrap().to_string(), ())
    };
    let r = call(&c, Some(&reader), "GET", "/api/v1/results/kernel-build/latest", &[]);
    assert_eq!((r.status, r.header("location")), (307, Some(format!("/api/v1/results/kernel-build/runs/{run}").as_str())));
    let r = call(&c, Some(&reader), "GET", "/api/v1/results/kernel-build/latest/files/images/kernel.img?platform=arm64", &[]);
    assert_eq!(r.status, 307, "{r:?}");
    assert_eq!(r.header("x-checksum-sha256"), Some(sha.as_str()));
    let blob = r.header("location").unwrap().to_string();
    assert_eq!(blob, format!("/api/v1/results/blobs/sha256/{sha}"));
    let h = call(&c, Some(&reader), "HEAD", "/api/v1/results/kernel-build/latest/files/images/kernel.img", &[]);
    assert_eq!((h.status, h.header("x-checksum-sha256")), (307, Some(sha.as_str())));
    assert_eq!(call(&c, Some(&reader), "GET", "/api/v1/results/kernel-build/latest/files/images/kernel.img?platform=x86", &[]).status, 404);
    let out = dir.path().join("fetched");
    let r = call(&c, Some(&reader), "GET", &blob, &["-o", out.to_str().unwrap()]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("etag"), Some(format!("\"{sha}\"").as_str()));
    assert_eq!(std::fs::read(&out).unwrap(), img);
    let h = call(&c, Some(&reader), "HEAD", &blob, &[]);
    assert_eq!((h.status, h.header("content-length")), (200, Some("3145728")));
    assert_eq!(call(&c, Some(&reader), "GET", &blob, &["-H", &format!("If-None-Match: \"{sha}\"")]).status, 304);
    let hits = call(&c, Some(&reader), "GET", &format!("/api/v1/results/by-hash?sha256={sha}"), &[]);
    assert_eq!(hits.json(), json!([{"job": "kernel-build", "run": run, "path": "images/kernel.img"}]));
    let list = call(&c, Some(&reader), "GET", "/api/v1/results/kernel-build/runs?revision=abc&limit=1", &[]);
    assert_eq!(list.json().as_array().unwrap().len(), 1);
    assert!(list.header("link").unwrap().contains(&format!("after={run}")), "{list:?}");

    // Tenant B sees nothing of tenant A's job and cannot write to it.
    assert_eq!(call(&c, Some(&other), "GET", "/api/v1/results/kernel-build/latest", &[]).status, 404);
    // Another tenant's job looks like no job at all.
    assert_eq!(call(&c, Some(&other), "GET", "/api/v1/results/kernel-build/runs", &[]).status, 404);
    assert_eq!(call(&c, Some(&other), "GET", "/api/v1/results/no-such-job/runs", &[]).status, 404);
    assert_eq!(call(&c, Some(&other), "GET", &blob, &[]).status, 404);
    assert_eq!(call(&c, Some(&other), "GET", &format!("/api/v1/results/by-hash?sha256={sha}"), &[]).status, 404);
    assert_eq!(post(&c, Some(&other), "/api/v1/results/kernel-build/runs", json!({})).status, 403);
    assert_eq!(put_file(&c, &other, "kernel-build", run, "x", &g, None).status, 403);

    // Only uploaded results are served: a job's secret and its inline file are not.
    let job = "deployment:\n  start:\n    storage:\n      http:\n        - path: /pub\n          data: public bytes\n        - path: /secret\n          data: s3cr3t-value\n          lifetime:\n            access_count: 1\n";
    let yaml = ["-H", "Content-Type: application/yaml", "--data-binary", job];
    assert_eq!(call(&c, Some(ADMIN), "PUT", "/api/v1/duts/dut1/job", &yaml).status, 200);
    for d in [hex_sha(b"s3cr3t-value"), hex_sha(b"public bytes")] {
        assert_eq!(call(&c, Some(ADMIN), "GET", &format!("/api/v1/results/blobs/sha256/{d}"), &[]).status, 404);
        assert_eq!(call(&c, Some(ADMIN), "GET", &format!("/api/v1/results/by-hash?sha256={d}"), &[]).status, 404);
    }
}

/// Files under `dir` (recursively), relative.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Starts a slow `curl -T` of `file` (about 1 MB/s) in the background.
fn slow_upload(c: &Citron, token: &str, path: &str, file: &Path) -> std::process::Child {
    let url = format!("http://{}{path}", c.api.unwrap());
    Command::new("curl")
        .args(["-sS", "--limit-rate", "1M", "-H", &format!("Authorization: Bearer {token}"), "-T", file.to_str().unwrap(), &url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits until `f` holds (at most 10 s); whether it did.
fn eventually(f: impl Fn() -> bool) -> bool {
    for _ in 0..200 {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn cut_off_and_killed_uploads_leave_nothing() {
    if !require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let results = data.join("results");
    let c = start(Some(data.to_str().unwrap()));
    let ci = tenant(&c, "ci");
    let run = post(&c, Some(&ci), "/api/v1/results/big/runs", json!({})).json()["id"].as_i64().unwrap();
    let big = dir.path().join("big");
    std::fs::write(&big, bytes(8 << 20, 7)).unwrap();
    let path = format!("/api/v1/results/big/runs/{run}/files/big.bin");

    // A client cut off mid-upload: nothing visible, nothing left behind.
    let mut curl = slow_upload(&c, &ci, &path, &big);
    assert!(eventually(|| files_under(&results).iter().any(|f| f.starts_with("staging"))), "the upload started");
    curl.kill().unwrap();
    curl.wait().unwrap();
    assert!(eventually(|| files_under(&results).is_empty()), "left: {:?}", files_under(&results));
    let files = call(&c, Some(&ci), "GET", &format!("/api/v1/results/big/runs/{run}"), &[]).json()["files"].clone();
    assert_eq!(files, json!([]));

    // kill -9 mid-upload: at restart the run is consistent and the upload can be made again.
    let mut curl = slow_upload(&c, &ci, &path, &big);
    assert!(eventually(|| files_under(&results).iter().any(|f| f.starts_with("staging"))), "the upload started");
    c.signal("KILL");
    let _ = curl.wait();
    drop(c);
    let c = start(Some(data.to_str().unwrap()));
    assert_eq!(files_under(&results), Vec::<String>::new(), "staging cleaned at start");
    let r = call(&c, Some(&ci), "GET", &format!("/api/v1/results/big/runs/{run}"), &[]);
    assert_eq!((r.json()["status"].clone(), r.json()["files"].clone()), (json!("running"), json!([])), "{r:?}");
    let r = put_file(&c, &ci, "big", run, "big.bin", &big, None);
    assert_eq!(r.status, 201, "{r:?}");
}

/// A full results store: 507, nothing kept, and a smaller upload afterwards is stored. citron
/// runs with `--data` on a 16 MiB tmpfs in a mount namespace of its own.
#[test]
fn a_full_results_store_is_507_and_keeps_nothing() {
    use std::os::unix::process::CommandExt;
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        assert!(!citron_tests::strict(), "this test mounts a tmpfs in a mount namespace of its own and needs root");
        eprintln!("skipped: not root");
        return;
    }
    if !require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mount_at = std::ffi::CString::new(data.to_str().unwrap()).unwrap();
    let c = Citron::start_with(&["--tftp", "off", "--nbd", "off", "--data", data.to_str().unwrap()], move |cmd| {
        cmd.env("CITRON_API_TOKEN", ADMIN);
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let fail = || Err(std::io::Error::last_os_error());
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return fail();
                }
                if libc::mount(c"none".as_ptr(), c"/".as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()) != 0 {
                    return fail();
                }
                let opts = c"size=16m,mode=0700";
                if libc::mount(c"tmpfs".as_ptr(), mount_at.as_ptr(), c"tmpfs".as_ptr(), 0, opts.as_ptr().cast()) != 0 {
                    return fail();
                }
                Ok(())
            });
        }
    })
    .unwrap_or_else(|f| panic!("citron on a tmpfs did not start: {}", f.stderr));
    let seen = Path::new("/proc").join(c.pid().to_string()).join("root").join(data.strip_prefix("/").unwrap()).join("results");
    let ci = tenant(&c, "ci");
    let run = post(&c, Some(&ci), "/api/v1/results/fill/runs", json!({})).json()["id"].as_i64().unwrap();
    let big = dir.path().join("big");
    std::fs::write(&big, bytes(24 << 20, 3)).unwrap();
    let r = put_file(&c, &ci, "fill", run, "big.bin", &big, None);
    assert_eq!(r.status, 507, "{r:?}");
    assert!(r.json()["error"].as_str().unwrap().contains("full"), "{r:?}");
    assert!(eventually(|| files_under(&seen).is_empty()), "left on the full disk: {:?}", files_under(&seen));
    let small = dir.path().join("small");
    std::fs::write(&small, b"fits").unwrap();
    assert_eq!(put_file(&c, &ci, "fill", run, "small.txt", &small, None).status, 201);
    let files = call(&c, Some(&ci), "GET", &format!("/api/v1/results/fill/runs/{run}"), &[]).json()["files"].clone();
    assert_eq!(files.as_array().unwrap().len(), 1, "{files}");
}

/// Two gateways on one PostgreSQL: a token minted on A works on B (one signing key), a run
/// opened and finished through A is `latest` on B, a console appended on A reads back on B, and
/// a token revoked on A is refused on B (after B reads the revocations again).
#[test]
fn two_gateways_on_one_postgresql_share_tokens_and_runs() {
    if !require_tool("curl") {
        return;
    }
    let Some(pg) = super::state_pg::Postgres::start() else { return };
    let a = start_on(None, Some(&pg.url));
    let b = start_on(None, Some(&pg.url));
    let ci = tenant(&a, "ci");
    let r = post(&b, Some(&ci), "/api/v1/results/fw/runs", json!({"revision": "v1", "platform": "arm64"}));
    assert_eq!(r.status, 201, "minted on A, accepted on B: {r:?}");
    let run = r.json()["id"].as_i64().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("fw.bin");
    std::fs::write(&f, b"firmware v1").unwrap();
    let sha = hex_sha(b"firmware v1");
    assert_eq!(put_file(&a, &ci, "fw", run, "fw.bin", &f, Some(&sha)).status, 201);
    let path = format!("/api/v1/results/fw/runs/{run}/console?offset=0");
    assert_eq!(call(&a, Some(&ci), "PUT", &path, &["--data-binary", "booted\n"]).json()["length"], 7);
    assert_eq!(post(&a, Some(&ci), &format!("/api/v1/results/fw/runs/{run}/finish"), json!({"status": "success"})).status, 200);
    let r = call(&b, Some(&ci), "GET", "/api/v1/results/fw/latest/files/fw.bin?platform=arm64", &[]);
    assert_eq!((r.status, r.header("x-checksum-sha256")), (307, Some(sha.as_str())), "{r:?}");
    assert_eq!(call(&b, Some(&ci), "GET", &format!("/api/v1/results/fw/runs/{run}/console"), &[]).body, "booted\n");
    let hits = call(&b, Some(&ci), "GET", &format!("/api/v1/results/by-hash?sha256={sha}"), &[]).json();
    assert_eq!(hits, json!([{"job": "fw", "run": run, "path": "fw.bin"}]));
    assert_eq!(runs(&b, "fw").len(), 1);
    // B keeps its `latest` answer in memory; a newer run finished through A replaces it there
    // (A's run_finished reaches B through the feed and its NOTIFY).
    let r = post(&a, Some(&ci), "/api/v1/results/fw/runs", json!({"revision": "v2", "platform": "arm64"}));
    let run2 = r.json()["id"].as_i64().unwrap();
    std::fs::write(&f, b"firmware v2").unwrap();
    let sha2 = hex_sha(b"firmware v2");
    assert_eq!(put_file(&a, &ci, "fw", run2, "fw.bin", &f, Some(&sha2)).status, 201);
    assert_eq!(post(&a, Some(&ci), &format!("/api/v1/results/fw/runs/{run2}/finish"), json!({"status": "success"})).status, 200);
    let latest_on = |c: &Citron| {
        call(c, Some(&ci), "GET", "/api/v1/results/fw/latest/files/fw.bin?platform=arm64", &[])
            .header("x-checksum-sha256")
            .map(str::to_string)
    };
    assert_eq!(latest_on(&a).as_deref(), Some(sha2.as_str()), "A's own finish drops its cache at once");
    assert!(eventually(|| latest_on(&b).as_deref() == Some(sha2.as_str())), "B still answers the older run");
    // Last use is recorded, in batches, off the request's path.
    assert!(eventually(|| pg.psql("SELECT count(*) FROM tokens WHERE last_used IS NOT NULL").trim() != "0"), "no last use recorded");

    // Revoked on A: refused on A at once, on B once it read the revocations again.
    let r = post(&a, Some(&ci), "/api/v1/tokens/subset", json!({"scopes": ["read"]}));
    let (reader, id) = (r.json()["token"].as_str().unwrap().to_string(), r.json()["id"].as_str().unwrap().to_string());
    assert_eq!(call(&b, Some(&reader), "GET", "/api/v1/results/fw/runs", &[]).status, 200);
    assert_eq!(call(&a, Some(ADMIN), "DELETE", &format!("/api/v1/tokens/{id}"), &[]).status, 204);
    assert_eq!(call(&a, Some(&reader), "GET", "/api/v1/results/fw/runs", &[]).status, 401);
    assert!(eventually(|| call(&b, Some(&reader), "GET", "/api/v1/results/fw/runs", &[]).status == 401), "B still accepts a revoked token");
}

/// Retention: keep the last run; the newest successful one (what `latest` points at) keeps its
/// files too; an expired run keeps its record, loses its files, and a blob no run refers to any
/// more leaves the disk while one still referred to stays.
#[test]
fn retention_keeps_latest_and_the_last_runs() {
    if !require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let c = start(Some(data.to_str().unwrap()));
    let ci = tenant(&c, "ci");
    let file = |name: &str, content: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p
    };
    let (shared, own1, own2, own3) = (file("shared", b"shared"), file("own1", b"own 1"), file("own2", b"own 2"), file("own3", b"own 3"));
    let mut ids = Vec::new();
    for (own, status) in [(&own1, "success"), (&own2, "success"), (&own3, "failure")] {
        let run = post(&c, Some(&ci), "/api/v1/results/nightly/runs", json!({})).json()["id"].as_i64().unwrap();
        assert_eq!(put_file(&c, &ci, "nightly", run, "shared", &shared, None).status, 201);
        assert_eq!(put_file(&c, &ci, "nightly", run, "own", own, None).status, 201);
        assert_eq!(post(&c, Some(&ci), &format!("/api/v1/results/nightly/runs/{run}/finish"), json!({"status": status})).status, 200);
        ids.push(run);
    }
    assert_eq!(call(&c, Some(&ci), "GET", "/api/v1/results/nightly/retention", &[]).json(), json!({"keep_last": null, "ttl_secs": null}));
    let r = call(
        &c,
        Some(&ci),
        "PUT",
        "/api/v1/results/nightly/retention",
        &["-H", "Content-Type: application/json", "--data-binary", r#"{"keep_last": 1}"#],
    );
    assert_eq!((r.status, r.json()), (200, json!({"keep_last": 1, "ttl_secs": null})), "{r:?}");
    let nfiles = |run: i64| {
        let r = call(&c, Some(&ci), "GET", &format!("/api/v1/results/nightly/runs/{run}"), &[]);
        assert_eq!(r.status, 200, "the run's record stays: {r:?}");
        r.json()["files"].as_array().unwrap().len()
    };
    assert_eq!((nfiles(ids[0]), nfiles(ids[1]), nfiles(ids[2])), (0, 2, 2), "run 1 expired; 2 is latest, 3 the last");
    let blob = |b: &[u8]| data.join("results/sha256").join(&hex_sha(b)[..2]).join(hex_sha(b));
    assert!(!blob(b"own 1").exists(), "a blob no run refers to is gone");
    assert!(blob(b"shared").exists() && blob(b"own 2").exists() && blob(b"own 3").exists());
    let r = call(&c, Some(&ci), "GET", "/api/v1/results/nightly/latest/files/own", &[]);
    assert_eq!(r.header("x-checksum-sha256"), Some(hex_sha(b"own 2").as_str()));
    assert_eq!(call(&c, Some(&ci), "GET", &format!("/api/v1/results/blobs/sha256/{}", hex_sha(b"own 1")), &[]).status, 404);
    assert_eq!(call(&c, Some(&ci), "GET", &format!("/api/v1/results/blobs/sha256/{}", hex_sha(b"own 2")), &[]).body, "own 2");
}

/// The CLI client against the real server: `citron results upload` with `--server` and
/// `--token-file`, `latest` with `$CITRON_SERVER`/`$CITRON_TOKEN` printing the digest and
/// downloading the file checked; a wrong token is an error (exit 2) naming the status.
#[test]
fn cli_client_uploads_and_fetches_latest() {
    if !require_tool("curl") {
        return;
    }
    let c = start(None);
    let ci = tenant(&c, "ci");
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("token");
    std::fs::write(&tok, format!("{ci}\n")).unwrap();
    let img = dir.path().join("vmlinuz");
    let content = bytes(300_000, 9);
    std::fs::write(&img, &content).unwrap();
    let server = format!("http://{}", c.api.unwrap());
    let citron = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::new(citron_tests::citron_bin());
        cmd.args(args).env_remove("CITRON_SERVER").env_remove("CITRON_TOKEN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let spec = format!("boot/vmlinuz={}", img.display());
    let o = citron(
        &["results", "upload", "kern", &spec, "--revision", "v6.1", "--server", &server, "--token-file", tok.to_str().unwrap()],
        &[],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((run["status"].as_str(), run["revision"].as_str()), (Some("success"), Some("v6.1")), "{run}");
    let env = [("CITRON_SERVER", server.as_str()), ("CITRON_TOKEN", ci.as_str())];
    let o = citron(&["results", "latest", "kern", "--file", "boot/vmlinuz"], &env);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), hex_sha(&content), "{}", String::from_utf8_lossy(&o.stderr));
    let out = dir.path().join("fetched");
    let o = citron(&["results", "latest", "kern", "--file", "boot/vmlinuz", "-o", out.to_str().unwrap()], &env);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), content);
    let o = citron(&["results", "runs", "kern", "--revision", "v6.1"], &env);
    assert_eq!(serde_json::from_slice::<Value>(&o.stdout).unwrap().as_array().unwrap().len(), 1);
    let o = citron(&["results", "latest", "kern"], &[("CITRON_SERVER", server.as_str()), ("CITRON_TOKEN", "wrong")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("401"), "{}", String::from_utf8_lossy(&o.stderr));
}
