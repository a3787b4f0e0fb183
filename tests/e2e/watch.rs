//! Watching results (issue 15 §6) with the real binary, curl and `citron results watch`:
//! seed 004's deploy-on-change without polling (a build uploaded with `curl -T`, a watcher that
//! runs a deploy script which compares the digest with `HEAD` on `latest` and fetches the blob),
//! an SSE reader that reconnects with `Last-Event-ID` and misses nothing, what a `read` token
//! may see of the feed, and two gateways on one PostgreSQL and one S3 bucket sharing results.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use citron_tests::api::Reply;
use citron_tests::{require_tool, Citron};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const ADMIN: &str = "admin-s3cret";

fn start(args: &[&str]) -> Citron {
    let mut a = vec!["--tftp", "off", "--nbd", "off"];
    a.extend_from_slice(args);
    Citron::start_with(&a, |c| {
        c.env("CITRON_API_TOKEN", ADMIN)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env_remove("AWS_ENDPOINT_URL");
    })
    .unwrap_or_else(|f| panic!("citron did not start: {}", f.stderr))
}

fn call(c: &Citron, token: &str, method: &str, path: &str, args: &[&str]) -> Reply {
    let auth = format!("Authorization: Bearer {token}");
    let mut a = vec!["-H", auth.as_str()];
    a.extend_from_slice(args);
    c.api(method, path, &a)
}

fn post(c: &Citron, token: &str, path: &str, body: Value) -> Reply {
    call(c, token, "POST", path, &["-H", "Content-Type: application/json", "--data-binary", &body.to_string()])
}

fn tenant(c: &Citron, name: &str) -> String {
    let r = post(c, ADMIN, "/api/v1/tenants", json!({"name": name}));
    assert_eq!(r.status, 201, "{r:?}");
    r.json()["token"].as_str().unwrap().to_string()
}

/// A narrowing of `token`: `(token, id)`.
fn subset(c: &Citron, token: &str, body: Value) -> (String, String) {
    let r = post(c, token, "/api/v1/tokens/subset", body);
    assert_eq!(r.status, 201, "{r:?}");
    (r.json()["token"].as_str().unwrap().to_string(), r.json()["id"].as_str().unwrap().to_string())
}

/// A CI builder's run: opened, `file` uploaded with `curl -T` and its digest, finished.
fn build(c: &Citron, token: &str, job: &str, revision: &str, file: &Path, status: &str) -> i64 {
    let r = post(c, token, &format!("/api/v1/results/{job}/runs"), json!({"revision": revision, "platform": "hvt"}));
    assert_eq!(r.status, 201, "{r:?}");
    let run = r.json()["id"].as_i64().unwrap();
    let sha = format!("X-Checksum-SHA256: {}", hex::encode(Sha256::digest(std::fs::read(file).unwrap())));
    let path = format!("/api/v1/results/{job}/runs/{run}/files/site.hvt");
    let r = call(c, token, "PUT", &path, &["-T", file.to_str().unwrap(), "-H", &sha]);
    assert_eq!(r.status, 201, "{r:?}");
    let r = post(c, token, &format!("/api/v1/results/{job}/runs/{run}/finish"), json!({"status": status}));
    assert_eq!(r.status, 200, "{r:?}");
    run
}

/// The feed as `curl -N` reads it for a while with `headers`: `(id, type, data)` of each event.
fn sse(c: &Citron, token: &str, query: &str, headers: &[&str]) -> Vec<(u64, String, Value)> {
    let auth = format!("Authorization: Bearer {token}");
    let url = format!("http://{}/api/v1/events{query}", c.api.unwrap());
    let mut args = vec!["-sN", "--max-time", "2", "-H", &auth, "-H", "Accept: text/event-stream"];
    for h in headers {
        args.extend(["-H", h]);
    }
    args.push(&url);
    let o = citron_tests::curl(&args);
    assert_eq!(o.code, 28, "curl reads until its --max-time: {o:?}");
    let mut out = Vec::new();
    for block in o.stdout.split("\n\n") {
        let field = |f: &str| block.lines().find_map(|l| l.strip_prefix(f)).map(str::to_string);
        if let (Some(id), Some(ev), Some(data)) = (field("id: "), field("event: "), field("data: ")) {
            out.push((id.parse().unwrap(), ev, serde_json::from_str(&data).unwrap()));
        }
    }
    out
}

/// The deploy script of seed 004: HEAD on `latest` for the digest, compared with what is
/// deployed and with what the watcher said; the blob fetched with curl and checked; a line in
/// `deploys.log` per deploy.
const DEPLOY: &str = r#"#!/bin/sh
set -eu
auth="Authorization: Bearer $CITRON_TOKEN"
latest=$(curl -sfI -H "$auth" "$CITRON_LATEST_URL" | tr -d '\r' | sed -n 's/^x-checksum-sha256: //ip')
[ "$latest" = "$CITRON_SHA256" ] || { echo "latest is $latest, the event said $CITRON_SHA256" >&2; exit 3; }
if [ -f deployed.hvt ] && [ "$(sha256sum deployed.hvt | cut -d' ' -f1)" = "$latest" ]; then
  echo "unchanged $CITRON_REVISION" >> deploys.log; exit 0
fi
curl -sf -H "$auth" -o incoming.hvt "$CITRON_BLOB_URL"
[ "$(sha256sum incoming.hvt | cut -d' ' -f1)" = "$latest" ] || exit 4
mv incoming.hvt deployed.hvt
echo "deployed $CITRON_REVISION run $CITRON_RUN $CITRON_STATUS $CITRON_FILE" >> deploys.log
"#;

/// `citron results watch ARGS` with `server` and `token` in its environment, in `dir`; its
/// stderr lines collected.
struct Watcher {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    said: Vec<String>,
}

impl Watcher {
    fn spawn(args: &[&str], server: &str, token: &str, dir: &Path) -> Watcher {
        let mut child = Command::new(citron_tests::citron_bin())
            .args(["results", "watch"])
            .args(args)
            .env("CITRON_SERVER", server)
            .env("CITRON_TOKEN", token)
            .current_dir(dir)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for l in stderr.lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Watcher { child, lines, said: Vec::new() }
    }

    /// Waits until it said something containing `what` (since the last wait).
    fn wait_said(&mut self, what: &str) {
        loop {
            let l = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("the watcher never said {what:?}: {:?}", self.said));
            self.said.push(l.clone());
            if l.contains(what) {
                return;
            }
        }
    }

    fn said(&mut self) -> Vec<String> {
        self.said.extend(self.lines.try_iter());
        self.said.clone()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Seed 004 end to end: a build uploaded with `curl -T` under an upload token, a watcher with a
/// `read` token running the deploy script for the new successful run only (not the failed one
/// before it), which compares the digest by HEAD and fetches the blob; and an SSE reader
/// resuming with `Last-Event-ID` gets exactly the events after it.
#[test]
fn a_watcher_deploys_each_new_successful_build_and_sse_resumes_without_loss() {
    if !require_tool("curl") || !require_tool("sha256sum") {
        return;
    }
    let c = start(&[]);
    let ci = tenant(&c, "ci");
    let (uploader, _) = subset(&c, &ci, json!({"scopes": ["upload"], "job": "mirage-www", "ttl": "10m"}));
    let (reader, _) = subset(&c, &ci, json!({"scopes": ["read"], "job": "mirage-*", "ttl": "10m"}));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("deploy.sh"), DEPLOY).unwrap();
    let server = format!("http://{}", c.api.unwrap());

    // What a read token may see of the feed: one job it may read, and only its run events.
    let r = call(&c, &reader, "GET", "/api/v1/events", &["--max-time", "1"]);
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(call(&c, &reader, "GET", "/api/v1/events?job=other", &["--max-time", "1"]).status, 403);
    assert_eq!(call(&c, &uploader, "GET", "/api/v1/events?job=mirage-www", &["--max-time", "1"]).status, 403, "no read scope");

    let host = dir.path().join("host");
    std::fs::create_dir(&host).unwrap();
    let mut w = Watcher::spawn(&["mirage-www", "--file", "site.hvt", "--once", "--exec", "sh ../deploy.sh"], &server, &reader, &host);
    w.wait_said("following");

    // A failed build, then a good one: only the good one is deployed.
    let (bad, good) = (dir.path().join("bad.hvt"), dir.path().join("good.hvt"));
    std::fs::write(&bad, b"unikernel v1, broken").unwrap();
    std::fs::write(&good, b"unikernel v2").unwrap();
    let run1 = build(&c, &uploader, "mirage-www", "v1", &bad, "failure");
    let run2 = build(&c, &uploader, "mirage-www", "v2", &good, "success");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = w.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the watcher did not deploy");
        std::thread::sleep(Duration::from_millis(50));
    };
    let said = w.said();
    assert!(status.success(), "{status}: {said:?}");
    assert_eq!(std::fs::read(host.join("deployed.hvt")).unwrap(), b"unikernel v2");
    let log = std::fs::read_to_string(host.join("deploys.log")).unwrap();
    assert_eq!(log, format!("deployed v2 run {run2} success site.hvt\n"), "{said:?}");

    // The feed a reader may see: this job's run events only (no DUT or gateway events).
    let all = sse(&c, &reader, "?job=mirage-www", &[]);
    let kinds: Vec<&str> = all.iter().map(|(_, k, _)| k.as_str()).collect();
    let each = ["run_opened", "file_uploaded", "run_finished"];
    assert_eq!(kinds, [each, each].concat(), "{all:?}");
    assert_eq!(all[2].2["detail"]["run"], run1);
    assert_eq!(all[5].2["detail"]["files_count"], 1);
    assert_eq!(all[5].2["detail"]["files"][0]["path"], "site.hvt");
    // Another tenant's reader, whatever its pattern, sees nothing of this tenant's job.
    let evil = tenant(&c, "evil");
    let (evil_reader, _) = subset(&c, &evil, json!({"scopes": ["read"], "job": "mirage-*"}));
    assert_eq!(sse(&c, &evil_reader, "?job=mirage-www", &[]), vec![]);
    // Cut after the second event: resuming with Last-Event-ID gives exactly the rest.
    let resumed = sse(&c, &reader, "?job=mirage-www", &[&format!("Last-Event-ID: {}", all[1].0)]);
    assert_eq!(resumed, all[2..].to_vec());
    // `after=now`: the position first (an id without data), then only what comes.
    let auth = format!("Authorization: Bearer {reader}");
    let url = format!("{server}/api/v1/events?job=mirage-www&after=now");
    let o = citron_tests::curl(&["-sN", "--max-time", "1", "-H", &auth, &url]);
    let pos: u64 = o.stdout.trim().strip_prefix("id: ").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{o:?}"));
    assert!(pos >= all[5].0, "{o:?}");
}

/// Two gateways on one PostgreSQL and one S3 bucket (moto): a build uploaded through A lands in
/// the bucket under `results/` (not in A's data directory) and is `latest` on B, whose blob
/// route streams it from the bucket; B's feed carries A's run events; a token revoked on A is
/// refused on B.
#[test]
fn two_gateways_share_results_through_one_bucket_and_one_feed() {
    if !require_tool("curl") {
        return;
    }
    let Some(pg) = super::state_pg::Postgres::start() else { return };
    let Some(moto) = super::shared_store::Moto::start() else { return };
    assert_eq!(moto.curl(&["-X", "PUT", &moto.url("lab-bucket")]).code, 0, "create the bucket");
    let dir = tempfile::tempdir().unwrap();
    let lab = dir.path().join("lab.yaml");
    let text = format!(
        "duts:\n  - id: dut1\n    ip: [\"127.0.0.2\"]\n    gateway: a\n  - id: dut2\n    ip: [\"127.0.0.3\"]\n    gateway: b\nstore:\n  url: s3://lab-bucket/rack\n  endpoint: {}\n  region: us-east-1\n",
        moto.endpoint
    );
    std::fs::write(&lab, text).unwrap();
    let gw = |name: &str| {
        let data = dir.path().join(name);
        start(&["--gateway", name, "--lab", lab.to_str().unwrap(), "--state", &pg.url, "--data", data.to_str().unwrap()])
    };
    let (a, b) = (gw("a"), gw("b"));
    let ci = tenant(&a, "ci");
    let (uploader, _) = subset(&a, &ci, json!({"scopes": ["upload"], "job": "fw"}));
    let (reader, reader_id) = subset(&a, &ci, json!({"scopes": ["read"], "job": "fw"}));
    let image = dir.path().join("fw.bin");
    std::fs::write(&image, b"firmware through gateway a").unwrap();
    let sha = hex::encode(Sha256::digest(b"firmware through gateway a"));
    let run = build(&a, &uploader, "fw", "v1", &image, "success");

    let object = moto.url(&format!("lab-bucket/rack/results/sha256/{}/{sha}", &sha[..2]));
    assert_eq!(moto.curl(&[&object]).stdout, "firmware through gateway a", "the blob is in the bucket under results/");
    assert!(!dir.path().join("a/results/sha256").exists(), "not in A's data directory");
    let r = call(&b, &reader, "HEAD", "/api/v1/results/fw/latest/files/site.hvt", &["-I"]);
    assert_eq!((r.status, r.header("x-checksum-sha256")), (307, Some(sha.as_str())), "{r:?}");
    let r = call(&b, &reader, "GET", &format!("/api/v1/results/blobs/sha256/{sha}"), &[]);
    assert_eq!((r.status, r.body.as_str()), (200, "firmware through gateway a"), "{r:?}");
    let events = sse(&b, &reader, "?job=fw", &[]);
    let last = events.last().unwrap_or_else(|| panic!("B's feed has no event of fw"));
    assert_eq!((last.1.as_str(), &last.2["detail"]["run"], last.2["gateway"].as_str()), ("run_finished", &json!(run), Some("a")));

    assert_eq!(call(&a, ADMIN, "DELETE", &format!("/api/v1/tokens/{reader_id}"), &[]).status, 204);
    let deadline = Instant::now() + Duration::from_secs(20);
    while call(&b, &reader, "GET", "/api/v1/results/fw/runs", &[]).status != 401 {
        assert!(Instant::now() < deadline, "B still accepts the token revoked on A");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The watcher outlives a restart of citron: it connects again with `Last-Event-ID` and runs
/// the deploy command for the run finished after the restart, and not again for the one before.
#[test]
fn a_watcher_resumes_after_a_restart_and_runs_each_run_once() {
    if !require_tool("curl") || !require_tool("sha256sum") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let api = format!("127.0.0.1:{port}");
    let args = ["--data", data.to_str().unwrap(), "--api", api.as_str()];
    let c = start(&args);
    let ci = tenant(&c, "ci");
    let server = format!("http://{api}");
    let (f1, f2) = (dir.path().join("1.hvt"), dir.path().join("2.hvt"));
    std::fs::write(&f1, b"build 1").unwrap();
    std::fs::write(&f2, b"build 2").unwrap();
    let mut w = Watcher::spawn(&["site", "--exec", "echo \"$CITRON_RUN $CITRON_SHA256\" >> runs.log"], &server, &ci, dir.path());
    w.wait_said("following");
    let run1 = build(&c, &ci, "site", "r1", &f1, "success");
    w.wait_said(&format!("run {run1} of site"));
    // Killed, as by a crash (dropping it kills it): the stream is cut without an end.
    drop(c);
    w.wait_said("connecting again");
    let c = start(&args);
    w.wait_said("following site");
    let run2 = build(&c, &ci, "site", "r2", &f2, "success");
    w.wait_said(&format!("run {run2} of site"));
    let sha = |b: &[u8]| hex::encode(Sha256::digest(b));
    let want = format!("{run1} {}\n{run2} {}\n", sha(b"build 1"), sha(b"build 2"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(dir.path().join("runs.log")).unwrap_or_default() != want {
        assert!(Instant::now() < deadline, "runs.log: {:?}, {:?}", std::fs::read_to_string(dir.path().join("runs.log")), w.said());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(w.child.try_wait().unwrap().is_none(), "without --once it keeps watching");
}

/// Started before its server, the watcher tries the first connection again until the server
/// is up; a token the server refuses (here revoked) ends it with the refusal, not a retry loop.
#[test]
fn a_watcher_waits_for_its_server_and_stops_on_a_refused_token() {
    if !require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let api = format!("127.0.0.1:{port}");
    let server = format!("http://{api}");
    // The token is checked only once the server answers: any text will do until then.
    let mut early = Watcher::spawn(&["site", "--exec", "true"], &server, ADMIN, dir.path());
    early.wait_said("connecting again in");
    let c = start(&["--api", api.as_str()]);
    early.wait_said("following site");
    let ci = tenant(&c, "ci");
    let (reader, reader_id) = subset(&c, &ci, json!({"scopes": ["read"], "job": "site"}));
    assert_eq!(call(&c, ADMIN, "DELETE", &format!("/api/v1/tokens/{reader_id}"), &[]).status, 204);
    let mut refused = Watcher::spawn(&["site", "--exec", "true"], &server, &reader, dir.path());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = refused.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the watcher with a revoked token kept going: {:?}", refused.said());
        std::thread::sleep(Duration::from_millis(50));
    };
    let said = refused.said();
    assert!(!status.success(), "{said:?}");
    assert!(said.iter().any(|l| l.contains("401") && l.contains("revoked")), "{said:?}");
    assert!(!said.iter().any(|l| l.contains("connecting again")), "a refusal is not retried: {said:?}");
}
