//! The lab's state across restarts of the real binary, `kill -9` included: DUTs and jobs set
//! through the API, read-once secrets, a PUT cut short; `citron state migrate`, a newer schema,
//! PostgreSQL with `--state`.

use std::time::Duration;

use citron_tests::{citron_bin, curl, require_tool, run, Citron};

use super::state_pg::Postgres;

const T: Duration = Duration::from_secs(30);

/// Only HTTP and the API: what these tests use.
fn start(data: &str, extra: &[&str]) -> Citron {
    let mut args = vec!["--data", data, "--tftp", "off", "--nbd", "off"];
    args.extend_from_slice(extra);
    Citron::start(&args)
}

/// `(status, body)` of a GET from the DUT address `ip` (0: no complete answer).
fn get_as(ip: &str, url: &str) -> (u16, String) {
    let o = curl(&["--interface", ip, "-w", "\n%{http_code}", url]);
    if o.code != 0 {
        return (0, o.stdout);
    }
    let (b, code) = o.stdout.rsplit_once('\n').unwrap_or(("", &o.stdout));
    (code.trim().parse().unwrap_or(0), b.to_string())
}

fn secret_job(secret: &str) -> String {
    format!(
        "deployment:\n  start:\n    storage:\n      http:\n        - path: /hello\n          data: \"hello {{{{ machine_id }}}}\"\n        - path: /secret\n          data: \"{secret}\"\n          lifetime:\n            access_count: 1\n"
    )
}

/// A small random generator (xorshift) seeded from the clock; the seed is printed.
struct Rng(u64);
impl Rng {
    fn new() -> Rng {
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
        eprintln!("random seed {seed}");
        Rng(seed)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A DUT added and a job set through the API come back after `kill -9`, serving the same files;
/// a read-once secret read before is refused (410) until a `boot`.
fn dut_and_job_survive(extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let c = start(data, extra);
    let r = c.api_json("POST", "/api/v1/duts", Some(r#"{"id": "dut7", "ip": ["127.0.0.7"], "tags": ["arm64"]}"#));
    assert_eq!(r.status, 201, "{r:?}");
    let (code, body) = c.put_job("dut7", &secret_job("s3cr3t"));
    assert_eq!(code, 200, "{body}");
    assert_eq!(get_as("127.0.0.7", &c.http_url("/secret")), (200, "s3cr3t".into()));
    let before = c.api("GET", "/api/v1/duts/dut7/job", &[]).json();
    // Access records are written in batches; reading a page writes what is queued.
    assert_eq!(c.api("GET", "/api/v1/duts/dut7/accesses", &[]).json().as_array().map(Vec::len), Some(1));
    drop(c); // kill -9

    let c = start(data, extra);
    let d = c.api("GET", "/api/v1/duts/dut7", &[]).json();
    assert_eq!(d["tags"], serde_json::json!(["arm64"]), "{d}");
    assert_eq!(c.api("GET", "/api/v1/duts/dut7/job", &[]).json(), before, "the job record as it was set");
    assert_eq!(get_as("127.0.0.7", &c.http_url("/hello")), (200, "hello dut7".into()));
    let log = c.api("GET", "/api/v1/duts/dut7/accesses", &[]).json();
    let first = &log.as_array().expect("a list")[0];
    assert_eq!((&first["path"], &first["outcome"]), (&"/secret".into(), &"served".into()), "the access log survives: {log}");
    assert_eq!(get_as("127.0.0.7", &c.http_url("/secret")).0, 410, "a read-once secret read before the restart");
    assert_eq!(c.api_json("POST", "/api/v1/duts/dut7/events", Some(r#"{"event": "boot"}"#)).status, 204);
    assert_eq!(get_as("127.0.0.7", &c.http_url("/secret")), (200, "s3cr3t".into()), "a boot resets it");
    let v = c.api("GET", "/api/v1/version", &[]).json();
    assert_eq!(v["state"]["schema_version"], citron_lab::state::known_version(), "{v}");
    let m = c.api("GET", "/metrics", &[]).body;
    let engine = v["state"]["engine"].as_str().unwrap();
    let version = citron_lab::state::known_version();
    assert!(m.contains(&format!("citron_state_schema_version{{engine=\"{engine}\"}} {version}")), "{m}");
    // Deleted through the API: gone after the next restart too.
    assert_eq!(c.api("DELETE", "/api/v1/duts/dut7", &[]).status, 204);
    drop(c);
    let c = start(data, extra);
    assert_eq!(c.api("GET", "/api/v1/duts/dut7", &[]).status, 404);
}

#[test]
fn sqlite_keeps_duts_jobs_and_counted_reads_across_kill_9() {
    if !require_tool("curl") {
        return;
    }
    dut_and_job_survive(&[]);
}

#[test]
fn postgres_keeps_duts_jobs_and_counted_reads_across_kill_9() {
    if !require_tool("curl") {
        return;
    }
    let Some(pg) = Postgres::start() else { return };
    dut_and_job_survive(&["--state", &pg.url]);
    let v: i64 = pg.psql("SELECT MAX(version) FROM _sqlx_migrations").trim().parse().unwrap();
    assert_eq!(v, citron_lab::state::known_version());
}

/// `kill -9` at 20 random instants around a read of an `access_count: 1` secret (each round a
/// new job and secret): after each restart, that secret has been served completely at most
/// once in total, and is refused from then on.
#[test]
fn kill_9_around_a_read_once_read_never_serves_it_twice() {
    if !require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let mut rng = Rng::new();
    let mut pending: Option<(String, u32)> = None;
    let (mut before, mut after) = (0, 0);
    for round in 0..=20 {
        let c = start(data, &[]);
        let url = c.http_url("/secret");
        if let Some((secret, mut complete)) = pending.take() {
            let (code, body) = get_as("127.0.0.2", &url);
            if code == 200 && body == secret {
                complete += 1;
            } else {
                assert_eq!(code, 410, "{body}");
            }
            assert!(complete <= 1, "round {round}: the read-once secret was served {complete} times");
            assert_eq!(get_as("127.0.0.2", &url).0, 410);
        }
        if round == 20 {
            break;
        }
        let secret = format!("secret-{round}-{}", rng.below(1 << 40));
        let (code, body) = c.put_job("dut1", &secret_job(&secret));
        assert_eq!(code, 200, "{body}");
        let delay = Duration::from_micros(rng.below(40_000));
        let reader = std::thread::spawn(move || get_as("127.0.0.2", &url));
        std::thread::sleep(delay);
        drop(c); // kill -9, somewhere around the read
        let (code, body) = reader.join().unwrap();
        let complete = u32::from(code == 200 && body == secret);
        if complete == 1 {
            before += 1;
        } else {
            after += 1;
        }
        pending = Some((secret, complete));
    }
    eprintln!("reads completed before the kill: {before}; cut or not started: {after}");
}

/// `kill -9` while a PUT of a job is in flight: after a restart the job is there, whole, if the
/// PUT was answered 2xx; otherwise it is either whole or the previous one.
#[test]
fn kill_9_during_a_put_leaves_the_job_whole_or_absent() {
    if !require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let mut rng = Rng::new();
    let mut current: Option<String> = None;
    for round in 0..8 {
        let c = start(data, &[]);
        let job = format!(
            "deployment:\n  start:\n    storage:\n      http:\n        - path: /r\n          data: \"round {round}\"\n        - path: /big\n          data: \"{}\"\n",
            "x".repeat(20_000)
        );
        let api = c.api.unwrap();
        let body = job.clone();
        let put = std::thread::spawn(move || {
            let url = format!("http://{api}/api/v1/duts/dut1/job");
            let o = curl(&[
                "-X",
                "PUT",
                "-H",
                "Content-Type: application/yaml",
                "--data-binary",
                &body,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &url,
            ]);
            o.stdout.trim().parse::<u16>().unwrap_or(0)
        });
        std::thread::sleep(Duration::from_micros(rng.below(30_000)));
        drop(c);
        let code = put.join().unwrap();
        let c = start(data, &[]);
        let r = c.api("GET", "/api/v1/duts/dut1/job", &[]);
        let stored = if r.status == 200 { r.json()["yaml"].as_str().map(str::to_string) } else { None };
        let served = get_as("127.0.0.2", &c.http_url("/r"));
        if (200..300).contains(&code) {
            assert_eq!(stored.as_deref(), Some(job.as_str()), "round {round}: an acknowledged job was lost");
        } else {
            assert!(
                stored == current || stored.as_deref() == Some(job.as_str()),
                "round {round}: a job neither whole nor absent: {stored:?}"
            );
        }
        match &stored {
            Some(y) => {
                let n = y.split("data: \"round ").nth(1).and_then(|s| s.split('"').next()).unwrap();
                assert_eq!(served, (200, format!("round {n}")), "the stored job is the one served");
            }
            None => assert_eq!(served.0, 404),
        }
        eprintln!("round {round}: PUT answered {code}, job {}", if stored.as_deref() == Some(job.as_str()) { "stored" } else { "absent" });
        current = stored;
        drop(c);
    }
}

/// `citron state migrate` creates and migrates the state; a schema newer than the binary's is
/// refused at start with exit 2, and the file is left as it was.
#[test]
fn migrate_and_a_newer_schema_is_refused() {
    if !require_tool("sqlite3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    let o = run(citron_bin(), &["state", "migrate", "--data", d], None, T);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let known = citron_lab::state::known_version();
    assert!(o.stdout.contains(&format!("schema version {known}")), "{}", o.stdout);
    assert!(o.stderr.contains(&format!("migrated from version 0 to {known}")), "{}", o.stderr);
    let db = data.join("state.sqlite");
    let db = db.to_str().unwrap();
    let sql = "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (9999, 'future', 1, x'00', 0)";
    assert_eq!(run("sqlite3", &[db, sql], None, T).code, 0);
    let Err(f) = Citron::try_start(&["--data", d]) else { panic!("a newer schema must be refused") };
    assert_eq!(f.status.and_then(|s| s.code()), Some(2), "{}", f.stderr);
    assert!(f.stderr.contains(&format!("schema version 9999, newer than this citron knows ({known})")), "{}", f.stderr);
    let o = run("sqlite3", &[db, "SELECT MAX(version) FROM _sqlx_migrations"], None, T);
    assert_eq!(o.stdout.trim(), "9999");
}

#[test]
fn an_unreachable_postgres_exits_2_naming_it_without_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("postgres://citron:hunter2@127.0.0.1:{port}/lab?sslmode=disable");
    let Err(f) = Citron::try_start(&["--state", &url]) else { panic!("nothing listens there") };
    assert_eq!(f.status.and_then(|s| s.code()), Some(2), "{}", f.stderr);
    assert!(f.stderr.contains(&format!("127.0.0.1:{port}/lab")), "{}", f.stderr);
    assert!(!f.stderr.contains("hunter2"), "{}", f.stderr);
}

/// A job given with `serve --job` is stored like any other (its directory stays a `file:` root
/// when it is loaded again); a later `--job` for the same DUT replaces it, as a `job_start`.
#[test]
fn serve_job_is_kept_and_a_new_one_replaces_it() {
    if !require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    std::fs::write(dir.path().join("a.txt"), "from file a").unwrap();
    let job = |name: &str, file: &str| {
        let p = dir.path().join(name);
        let y = format!("deployment:\n  start:\n    storage:\n      http:\n        - path: /f\n          file: {file}\n        - path: /once\n          data: once\n          lifetime:\n            access_count: 1\n");
        std::fs::write(&p, y).unwrap();
        format!("dut1={}", p.display())
    };
    let (a, b) = (job("a.yaml", "a.txt"), job("b.yaml", "a.txt"));
    let c = start(data, &["--job", &a]);
    assert_eq!(get_as("127.0.0.2", &c.http_url("/f")), (200, "from file a".into()));
    assert_eq!(get_as("127.0.0.2", &c.http_url("/once")).0, 200);
    drop(c);
    let c = start(data, &[]);
    assert_eq!(get_as("127.0.0.2", &c.http_url("/f")), (200, "from file a".into()), "loaded again, its directory a file: root");
    assert_eq!(get_as("127.0.0.2", &c.http_url("/once")).0, 410);
    assert!(c.api("GET", "/api/v1/duts/dut1/job", &[]).json()["origin"].as_str().unwrap().ends_with("a.yaml"));
    drop(c);
    let c = start(data, &["--job", &b]);
    assert!(c.api("GET", "/api/v1/duts/dut1/job", &[]).json()["origin"].as_str().unwrap().ends_with("b.yaml"));
    assert_eq!(get_as("127.0.0.2", &c.http_url("/once")).0, 200, "a new job starts its counts from zero");
}
