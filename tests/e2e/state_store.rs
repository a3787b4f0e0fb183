//! One suite for the durable state stores, run against SQLite and against a real PostgreSQL:
//! every trait method, a restart (drop and reopen), two pools writing at once, two processes
//! writing at once (counted reads and the event feed).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use citron_core::access::{AccessRecord, Outcome};
use citron_core::block::DiskRecord;
use citron_core::gateway::{EventRecord, FileKey, JobRecord, Stores};
use citron_core::job::{Origin, ResetOn};
use citron_core::lab::LabConfig;
use citron_core::lifetime::Event;
use citron_core::namespace::{Dut, DutId};
use citron_core::serve::Space;
use citron_core::store::StoreError;
use citron_lab::state::feed::{Filter, NewEvent};
use citron_lab::state::{State, StateError, StateUrl};

use super::state_pg::Postgres;

fn open(url: &StateUrl, lab: &LabConfig) -> (State, Stores) {
    let s = State::open(url).expect("the state opens");
    let stores = s.stores(lab).expect("the stores load");
    (s, stores)
}

/// A time the stores keep exactly (microseconds).
fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(secs * 1_000_000 + 123_456)
}

fn rec(path: &str, outcome: Outcome) -> AccessRecord {
    AccessRecord { seq: 0, time: 1_700_000_000.25, protocol: "http".into(), path: path.into(), bytes: 42, outcome }
}

/// A disk record of dut7: `held` by a job (no expiration) or released (expiring after a day).
fn disk(name: &str, held: bool) -> DiskRecord {
    DiskRecord {
        owner: "dut7".into(),
        disk: name.into(),
        base_key: format!("raw-{name}"),
        reset_on: if held { ResetOn::JobStart } else { ResetOn::Never },
        expiration: (!held).then_some(Duration::from_secs(86_400)),
        last_use: t(1_700_000_200),
        held,
        overlays: if held { Default::default() } else { ["dut1".into(), "dut7".into()].into_iter().collect() },
    }
}

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap()
}

fn suite(url: &StateUrl) {
    let lab = LabConfig::default_lab(); // dut1 = 127.0.0.2, dut2 = 127.0.0.3
    let (d7, d1) = (DutId::from("dut7"), DutId::from("dut1"));
    let secret = FileKey { step: "start", space: Space::HTTP, path: "/secret".into() };
    let other = FileKey { step: "continue", space: Space::TFTP, path: "/x".into() };
    let job = JobRecord { yaml: Some("deployment: {}\n".into()), origin: Origin::named("api:dut7"), set_at: t(1_700_000_000) };
    let file_job = JobRecord {
        yaml: Some("deployment:\n  start: {}\n".into()),
        origin: Origin::file(std::path::Path::new("/srv/jobs/a.yaml")),
        set_at: t(1_700_000_100),
    };
    {
        let (_s, st) = open(url, &lab);
        // DUTs: the lab file's are indexed, not stored; API ones are stored; uniqueness holds.
        for d in &lab.duts {
            st.duts.add(d.clone()).unwrap();
        }
        st.duts.add(Dut::new("dut7", [ip("127.0.0.7")])).unwrap();
        st.duts.add(Dut::new("dut8", [ip("127.0.0.8")])).unwrap();
        assert!(matches!(st.duts.add(Dut::new("dut7", [ip("127.0.0.9")])), Err(StoreError::Registry(_))));
        assert!(matches!(st.duts.add(Dut::new("dut9", [ip("127.0.0.7")])), Err(StoreError::Registry(_))));
        assert_eq!(st.duts.by_addr(ip("::ffff:127.0.0.7")).unwrap().id, d7);
        assert_eq!(st.duts.get(&d7).unwrap().ip, [ip("127.0.0.7")]);
        assert_eq!(st.duts.list().len(), 4);
        assert_eq!(st.duts.remove(&"dut8".into()).unwrap().unwrap().id, DutId::from("dut8"));
        assert!(st.duts.remove(&"dut8".into()).unwrap().is_none());
        assert!(st.duts.by_addr(ip("127.0.0.8")).is_none());
        // Jobs.
        st.jobs.put(&d7, job.clone()).unwrap();
        st.jobs.put(&d1, JobRecord { yaml: None, ..job.clone() }).unwrap();
        st.jobs.put(&d1, file_job.clone()).unwrap(); // replaces
        assert_eq!(st.jobs.get(&d7), Some(job.clone()));
        st.jobs.put(&"dut2".into(), job.clone()).unwrap();
        assert_eq!(st.jobs.remove(&"dut2".into()).unwrap(), Some(job.clone()));
        assert_eq!(st.jobs.remove(&"dut2".into()).unwrap(), None);
        // Lifetimes.
        st.lifetimes.count_read(&d7, &secret).unwrap();
        st.lifetimes.count_read(&d7, &secret).unwrap();
        st.lifetimes.count_read(&d7, &other).unwrap();
        st.lifetimes.count_read(&d1, &secret).unwrap();
        assert_eq!(st.lifetimes.reads(&d7, &secret), 2);
        st.lifetimes.event(&d7, Event::JobEnd, t(5)).unwrap();
        assert_eq!(st.lifetimes.reads(&d7, &secret), 2, "job_end resets nothing");
        st.lifetimes.event(&d1, Event::Boot, t(6)).unwrap();
        assert_eq!(st.lifetimes.reads(&d1, &secret), 0, "boot resets the counts");
        // Events.
        st.events.append(&d7, EventRecord { time: t(7), event: Event::Boot }).unwrap();
        st.events.append(&d7, EventRecord { time: t(8), event: Event::JobStart }).unwrap();
        st.events.append(&d1, EventRecord { time: t(9), event: Event::JobEnd }).unwrap();
        assert_eq!(st.events.recent(&d7, 1), [EventRecord { time: t(8), event: Event::JobStart }]);
        // Access records: a seq at once, pages in order.
        let s1 = st.access.append(&d7, rec("/a", Outcome::Served)).unwrap();
        let s2 = st.access.append(&d1, rec("/b", Outcome::Aborted)).unwrap();
        let s3 = st.access.append(&d7, rec("/c", Outcome::Refused("gone".into()))).unwrap();
        assert!(s1 < s2 && s2 < s3);
        let page = st.access.page(&d7, 0, 10);
        assert_eq!(page.iter().map(|r| (r.seq, r.path.as_str())).collect::<Vec<_>>(), [(s1, "/a"), (s3, "/c")]);
        assert_eq!(page[1], AccessRecord { seq: s3, ..rec("/c", Outcome::Refused("gone".into())) });
        assert_eq!(st.access.page(&d7, s1, 10).len(), 1);
        assert_eq!(st.access.page(&d7, 0, 1).len(), 1);
        // Disk records.
        st.disks.put(&disk("scratch", false)).unwrap();
        st.disks.put(&disk("root", true)).unwrap();
        st.disks.put(&DiskRecord { base_key: "other".into(), ..disk("root", true) }).unwrap(); // replaces
        st.disks.put(&disk("gone", true)).unwrap();
        st.disks.remove(&d7, "gone").unwrap();
        assert_eq!(st.disks.get(&d7, "scratch"), Some(disk("scratch", false)));
        assert_eq!(st.disks.get(&d7, "gone"), None);
        assert_eq!(st.disks.list().len(), 2);
    }
    // A restart: everything acknowledged is there.
    {
        let (s, st) = open(url, &lab);
        let ids: Vec<String> = st.duts.list().into_iter().map(|d| d.id.0).collect();
        assert_eq!(ids, ["dut7"], "only the API's DUTs are stored (the lab file adds its own)");
        assert_eq!(st.duts.by_addr(ip("127.0.0.7")).unwrap().id, d7);
        assert_eq!(st.jobs.get(&d7), Some(job.clone()));
        assert_eq!(st.jobs.get(&d1), Some(file_job.clone()), "origin, its directory and the time survive");
        assert_eq!(st.jobs.get(&"dut2".into()), None);
        assert_eq!(st.lifetimes.reads(&d7, &secret), 2);
        assert_eq!(st.lifetimes.reads(&d7, &other), 1);
        assert_eq!(st.lifetimes.reads(&d1, &secret), 0);
        assert_eq!(st.lifetimes.last_event(&d7, Event::JobEnd), Some(t(5)));
        assert_eq!(st.lifetimes.last_event(&d1, Event::Boot), Some(t(6)));
        assert_eq!(st.lifetimes.last_event(&d1, Event::JobEnd), None);
        let log = st.access.page(&d7, 0, 10);
        assert_eq!(log.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(), ["/a", "/c"], "the access log survives");
        let next = st.access.append(&d7, rec("/d", Outcome::Served)).unwrap();
        assert!(next > log[1].seq, "a seq is never reused after a restart");
        st.access.forget(&d7);
        assert!(st.access.page(&d7, 0, 10).is_empty());
        assert_eq!(st.access.page(&d1, 0, 10).len(), 1);
        let ev = st.events.recent(&d7, 10);
        assert_eq!(ev, [EventRecord { time: t(7), event: Event::Boot }, EventRecord { time: t(8), event: Event::JobStart }]);
        // Disk records: lifetime, last use (to the microsecond), held and overlays survive.
        assert_eq!(st.disks.get(&d7, "scratch"), Some(disk("scratch", false)));
        assert_eq!(st.disks.get(&d7, "root"), Some(DiskRecord { base_key: "other".into(), ..disk("root", true) }));
        assert_eq!(st.disks.list().len(), 2);
        st.disks.remove(&d7, "root").unwrap();
        st.disks.remove(&d7, "scratch").unwrap();
        // A job_start resets; reset() (a new job) too; forgetting and removing.
        st.lifetimes.event(&d7, Event::JobStart, t(10)).unwrap();
        assert_eq!(st.lifetimes.reads(&d7, &secret), 0);
        st.lifetimes.count_read(&d1, &other).unwrap();
        st.lifetimes.reset(&d1).unwrap();
        // The feed keeps a removed DUT's events (the audit trail); its history ends with the
        // `dut_removed` its removal records.
        st.events.forget(&d7);
        s.feed().emit(NewEvent::new("dut_removed").dut("dut7").actor("api"));
        st.duts.remove(&d7).unwrap();
        st.jobs.remove(&d7).unwrap();
        assert!(st.events.recent(&d7, 10).is_empty(), "the removal is applied before a later read");
        let feed = s.feed().page(&Filter { dut: Some("dut7".into()), ..Filter::default() }, 0, 100).unwrap();
        let kinds: Vec<&str> = feed.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["boot", "job_start", "request_refused", "dut_removed"], "{feed:?}");
        assert!(feed.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(feed[3].actor.as_deref(), Some("api"));
    }
    {
        let (_s, st) = open(url, &lab);
        assert!(st.duts.list().is_empty());
        assert_eq!(st.jobs.get(&d7), None);
        assert_eq!(st.lifetimes.reads(&d7, &secret), 0);
        assert_eq!(st.lifetimes.reads(&d1, &other), 0);
        assert!(st.events.recent(&d7, 10).is_empty());
        assert_eq!(st.events.recent(&d1, 10).len(), 1);
        assert_eq!(st.lifetimes.last_event(&d7, Event::JobEnd), None, "a removed DUT's last events go with it");
        assert!(st.disks.list().is_empty());
    }
    // A lab file that now lists an API DUT's id or address wins over the stored DUT.
    {
        let (_s, st) = open(url, &lab);
        st.duts.add(Dut::new("dut5", [ip("127.0.0.5")])).unwrap();
    }
    let yaml = "duts:\n  - id: dut5\n    ip: [127.0.0.55]\n";
    let lab2 = LabConfig::from_yaml(yaml, "lab.yaml").expect("a lab file");
    let (_s, st) = open(url, &lab2);
    assert!(st.duts.get(&"dut5".into()).is_none(), "the lab file's dut5 is added by the gateway, not from the store");
}

/// Two pools (two `State`s) counting reads of the same file at once: no count is lost.
fn concurrent(url: &StateUrl) {
    let lab = LabConfig::default_lab();
    let d = DutId::from("dut1");
    let key = FileKey { step: "start", space: Space::HTTP, path: "/c".into() };
    let (a, b) = (open(url, &lab), open(url, &lab));
    std::thread::scope(|s| {
        for (_, st) in [&a, &b] {
            let (d, key) = (&d, &key);
            s.spawn(move || {
                for _ in 0..50 {
                    st.lifetimes.count_read(d, key).unwrap();
                }
            });
        }
    });
    drop((a, b));
    let (_s, st) = open(url, &lab);
    assert_eq!(st.lifetimes.reads(&d, &key), 100);
}

/// The state a [`writer_process`] writes to.
const WRITER: &str = "CITRON_STORE_WRITER";

/// The body of the processes [`two_processes`] starts (this test binary again, filtered to
/// this test); without [`WRITER`] set it does nothing.
#[test]
fn writer_process() {
    let Ok(arg) = std::env::var(WRITER) else { return };
    let url = StateUrl::parse(Some(&arg), std::path::Path::new("x")).unwrap();
    let (s, st) = open(&url, &LabConfig::default_lab());
    let key = FileKey { step: "start", space: Space::HTTP, path: "/p".into() };
    for i in 0..50 {
        st.lifetimes.count_read(&"dut1".into(), &key).unwrap();
        s.feed().emit(NewEvent::new("test").dut("dut1").detail(serde_json::json!({"pid": std::process::id(), "i": i})));
    }
    s.feed().flush().unwrap();
}

/// Two processes counting reads and writing events at once: no count lost, every event
/// stored once, `seq` increasing in each process's order.
fn two_processes(arg: &str) {
    let url = StateUrl::parse(Some(arg), std::path::Path::new("x")).unwrap();
    drop(open(&url, &LabConfig::default_lab())); // migrated before the writers start
    let exe = std::env::current_exe().unwrap();
    let spawn = || {
        std::process::Command::new(&exe)
            .args(["--exact", "state_store::writer_process", "--test-threads", "1", "--nocapture"])
            .env(WRITER, arg)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (p1, p2) = (spawn(), spawn());
    for p in [p1, p2] {
        let o = p.wait_with_output().unwrap();
        assert!(o.status.success(), "a writer failed: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    }
    let (s, st) = open(&url, &LabConfig::default_lab());
    let key = FileKey { step: "start", space: Space::HTTP, path: "/p".into() };
    assert_eq!(st.lifetimes.reads(&"dut1".into(), &key), 100);
    let ev = s.feed().page(&Filter { kind: Some("test".into()), ..Filter::default() }, 0, 1000).unwrap();
    assert_eq!(ev.len(), 100);
    let mut by_pid: std::collections::BTreeMap<u64, Vec<u64>> = Default::default();
    for e in &ev {
        let d = e.detail.as_ref().unwrap();
        by_pid.entry(d["pid"].as_u64().unwrap()).or_default().push(d["i"].as_u64().unwrap());
    }
    assert_eq!(by_pid.len(), 2, "two writers");
    for (_, is) in by_pid {
        assert_eq!(is, (0..50).collect::<Vec<u64>>(), "each process's events in its order");
    }
}

#[test]
fn sqlite_store_suite() {
    let dir = tempfile::tempdir().unwrap();
    let url = StateUrl::default_in(dir.path());
    suite(&url);
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir.path().join("state.sqlite")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the state holds every job's secrets");
    concurrent(&StateUrl::default_in(&dir.path().join("c")));
    two_processes(&format!("sqlite://{}", dir.path().join("p.sqlite").display()));
}

#[test]
fn postgres_store_suite() {
    let Some(pg) = Postgres::start() else { return };
    let url = StateUrl::parse(Some(pg.url.as_str()), std::path::Path::new("unused")).unwrap();
    suite(&url);
    pg.psql("DROP SCHEMA public CASCADE; CREATE SCHEMA public");
    concurrent(&url);
    two_processes(&pg.url);
    // A newer schema than this citron knows: refused, never downgraded.
    pg.psql(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (9999, 'future', true, '\\x00', 0)",
    );
    match State::open(&url) {
        Err(e @ StateError::NewerSchema { found: 9999, .. }) => {
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        other => panic!("a newer schema must be refused: {other:?}"),
    }
}

/// `sslmode` is honoured: `require` connects over TLS (rustls with ring), `disable` does not.
#[test]
fn postgres_over_tls_with_sslmode() {
    if !citron_tests::require_tool("openssl") {
        return;
    }
    let Some(pg) = Postgres::start_tls() else { return };
    // The client connections other than psql's own, by whether they use TLS.
    let conns = |ssl: bool| {
        let q = format!(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE ssl = {ssl} AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        );
        pg.psql(&q).trim().parse::<u32>().unwrap()
    };
    for (mode, tls) in [("require", true), ("disable", false)] {
        let url = StateUrl::parse(Some(&format!("{}?sslmode={mode}", pg.url)), std::path::Path::new("x")).unwrap();
        let (s, st) = open(&url, &LabConfig::default_lab());
        st.jobs.put(&"dut1".into(), JobRecord { yaml: None, origin: Origin::named(mode), set_at: t(1) }).unwrap();
        assert!(conns(tls) >= 1, "sslmode={mode}: no connection with ssl = {tls}");
        if tls {
            assert_eq!(conns(false), 0, "sslmode=require: a connection without TLS");
        }
        drop((s, st));
    }
}

/// PostgreSQL lost during service: a counted read that cannot be recorded is refused (the lab
/// fails closed), what is known is still answered from memory, and once the server is back the
/// store reconnects by itself.
#[test]
fn postgres_lost_during_service_fails_closed_then_reconnects() {
    let Some(pg) = Postgres::start() else { return };
    let url = StateUrl::parse(Some(pg.url.as_str()), std::path::Path::new("x")).unwrap();
    let lab = LabConfig::default_lab();
    let (d, key) = (DutId::from("dut1"), FileKey { step: "start", space: Space::HTTP, path: "/s".into() });
    let (s, st) = open(&url, &lab);
    st.duts.add(Dut::new("dut7", [ip("127.0.0.7")])).unwrap();
    st.lifetimes.count_read(&d, &key).unwrap();
    pg.stop();
    let e = st.lifetimes.count_read(&d, &key).expect_err("a read that cannot be recorded is refused");
    assert!(e.to_string().contains("state store failed"), "{e}");
    assert_eq!(st.lifetimes.reads(&d, &key), 1, "the refused read is not counted");
    assert_eq!(st.duts.by_addr(ip("127.0.0.7")).unwrap().id, DutId::from("dut7"), "DUTs are still known");
    pg.start_again();
    st.lifetimes.count_read(&d, &key).expect("reconnected");
    drop((s, st));
    let (_s, st) = open(&url, &lab);
    assert_eq!(st.lifetimes.reads(&d, &key), 2);
}

#[test]
fn an_unreachable_postgres_is_named_without_its_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = StateUrl::parse(Some(&format!("postgres://citron:hunter2@127.0.0.1:{port}/lab")), std::path::Path::new("x")).unwrap();
    let e = State::open(&url).expect_err("nothing listens there");
    let msg = e.to_string();
    assert!(msg.contains(&format!("127.0.0.1:{port}/lab")) && !msg.contains("hunter2"), "{msg}");
}
