//! The gateway's unit tests: what a DUT may read, generated files against the job's own, events.

use super::*;
use crate::job::{JobDescription, Origin};
use crate::serve::Space;

const DUT1: &str = "127.0.0.2";

async fn gateway_with(yaml: &str) -> (tempfile::TempDir, Gateway) {
    let dir = tempfile::tempdir().unwrap();
    let mut lab = LabConfig::default_lab();
    lab.duts[0].serial = Some("1234abcd".into());
    let gw = Gateway::new(lab, dir.path()).unwrap();
    let job = JobDescription::parse(yaml, Origin::named("job.yaml")).unwrap();
    gw.set_job(&"dut1".into(), &job).await.unwrap();
    (dir, gw)
}

fn read(gw: &Gateway, peer: &str, space: Space, path: &str) -> Result<String, ServeError> {
    let req = FileRequest {
        peer: peer.parse().unwrap(),
        protocol: Protocol::HTTP,
        space,
        path,
        base_url: None,
        intent: Intent::Read,
        range: None,
    };
    let a = gw.open(&req)?;
    let b = a.read_chunk(0, a.len as usize).unwrap();
    a.complete();
    Ok(String::from_utf8(b.to_vec()).unwrap())
}

/// Random request paths (traversal pieces, encodings, control characters, unicode, the
/// other DUT's names) from dut1 and from an address that is no DUT: dut1 only ever gets
/// dut1's bytes, the stranger nothing, and nothing panics.
#[test]
fn no_request_path_reaches_another_duts_files() {
    use proptest::prelude::*;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_d, gw) = rt.block_on(async {
        let (d, gw) = gateway_with(JOB).await;
        let other = "deployment:\n  start:\n    kernel: {data: DUT2ONLY-kernel}\n    cmdline: DUT2ONLY\n    storage:\n      http:\n        - {path: /once, data: DUT2ONLY-secret}\n        - {path: /job/dut2.txt, data: DUT2ONLY-file}\n      tftp:\n        - {path: /job/dut2.txt, data: DUT2ONLY-tftp}\n";
        let job = JobDescription::parse(other, Origin::named("other.yaml")).unwrap();
        gw.set_job(&"dut2".into(), &job).await.unwrap();
        (d, gw)
    });
    let piece = prop_oneof![
        Just("..".to_string()),
        Just(".".to_string()),
        Just("%2e%2e".to_string()),
        Just("%2f".to_string()),
        Just("job".to_string()),
        Just("boot".to_string()),
        Just("dut1".to_string()),
        Just("dut2".to_string()),
        Just("once".to_string()),
        Just("dut2.txt".to_string()),
        Just("boot.ipxe".to_string()),
        Just("\0".to_string()),
        Just("\\".to_string()),
        Just("".to_string()),
        Just("52-54-00-00-00-02".to_string()),
        "\\PC{0,4}",
    ];
    let path = (prop_oneof![Just(""), Just("/"), Just("//")], prop::collection::vec(piece, 0..6))
        .prop_map(|(lead, parts)| format!("{lead}{}", parts.join("/")));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 2000, ..ProptestConfig::default() });
    runner
        .run(&(path, prop_oneof![Just(Space::HTTP), Just(Space::TFTP)]), |(p, space)| {
            if let Ok(got) = read(&gw, DUT1, space, &p) {
                prop_assert!(!got.contains("DUT2ONLY"), "dut1 read dut2's bytes at {p:?}: {got:?}");
            }
            prop_assert!(read(&gw, "127.0.0.1", space, &p).is_err(), "a stranger read {p:?}");
            Ok(())
        })
        .unwrap();
    // And dut2 does get its own (the check above is not vacuous).
    assert_eq!(read(&gw, "127.0.0.3", Space::HTTP, "job/dut2.txt").unwrap(), "DUT2ONLY-file");
}

const JOB: &str = "deployment:
  start:
    kernel: {data: KERNEL}
    initramfs: {data: INITRD}
    cmdline: [console=ttyS0, 'id={{ machine_id }}']
    storage:
      http:
        - {path: /boot/dut1/boot.ipxe, data: MINE}
        - {path: /once, data: secret, lifetime: {access_count: 1}}
  continue:
    cmdline: rescue
";

#[tokio::test]
async fn the_jobs_own_file_wins_over_the_generated_one() {
    let (_d, gw) = gateway_with(JOB).await;
    assert_eq!(read(&gw, DUT1, Space::HTTP, "/boot/dut1/boot.ipxe").unwrap(), "MINE");
    // Over TFTP the job defined nothing there: citron's script, pointing at the kernel.
    let script = read(&gw, DUT1, Space::TFTP, "boot/dut1/boot.ipxe").unwrap();
    assert!(script.contains("kernel /boot/dut1/kernel console=ttyS0 id=dut1\ninitrd /boot/dut1/initramfs\nboot"), "{script}");
    assert_eq!(read(&gw, DUT1, Space::HTTP, "/boot/dut1/kernel").unwrap(), "KERNEL");
    assert!(read(&gw, DUT1, Space::TFTP, "config.txt").unwrap().contains("kernel=boot/dut1/kernel"));
    assert!(matches!(read(&gw, DUT1, Space::HTTP, "config.txt"), Err(ServeError::NotFound(_))));
}

#[tokio::test]
async fn continue_is_used_from_the_second_boot_and_counts_reset_on_boot() {
    let (_d, gw) = gateway_with(JOB).await;
    let id = DutId::from("dut1");
    assert_eq!(read(&gw, DUT1, Space::HTTP, "once").unwrap(), "secret");
    assert!(matches!(read(&gw, DUT1, Space::HTTP, "once"), Err(ServeError::Gone(_))));
    gw.event(&id, Event::Boot).unwrap();
    assert_eq!(read(&gw, DUT1, Space::HTTP, "once").unwrap(), "secret");
    assert_eq!(read(&gw, DUT1, Space::HTTP, "boot/dut1/cmdline.txt").unwrap(), "console=ttyS0 id=dut1\n");
    gw.event(&id, Event::Boot).unwrap();
    assert_eq!(read(&gw, DUT1, Space::HTTP, "boot/dut1/cmdline.txt").unwrap(), "rescue\n");
    gw.event(&id, Event::JobStart).unwrap();
    assert_eq!(read(&gw, DUT1, Space::HTTP, "boot/dut1/cmdline.txt").unwrap(), "console=ttyS0 id=dut1\n");
}

#[tokio::test]
async fn job_end_unloads_the_job() {
    let (_d, gw) = gateway_with(JOB).await;
    let id = DutId::from("dut1");
    assert_eq!(read(&gw, DUT1, Space::HTTP, "once").unwrap(), "secret");
    gw.event(&id, Event::Boot).unwrap();
    gw.event(&id, Event::JobEnd).unwrap();
    assert!(gw.job(&id).is_none());
    assert!(matches!(read(&gw, DUT1, Space::HTTP, "once"), Err(ServeError::NotFound(_))), "no secret after the job");
    assert!(matches!(read(&gw, DUT1, Space::HTTP, "boot.ipxe"), Err(ServeError::NotFound(_))));
    // A second job_end, or one without a job, is harmless.
    gw.event(&id, Event::JobEnd).unwrap();
}

#[tokio::test]
async fn firmware_prefixes_are_stripped_and_other_duts_see_nothing() {
    let (_d, gw) = gateway_with(JOB).await;
    assert_eq!(read(&gw, DUT1, Space::TFTP, "1234abcd/boot/dut1/kernel").unwrap(), "KERNEL");
    assert_eq!(read(&gw, DUT1, Space::TFTP, "52-54-00-00-00-01/boot/dut1/kernel").unwrap(), "KERNEL");
    assert!(matches!(read(&gw, DUT1, Space::TFTP, "ffffffff/boot/dut1/kernel"), Err(ServeError::NotFound(_))));
    // dut2 has no job: nothing, not even dut1's generated files.
    assert!(matches!(read(&gw, "127.0.0.3", Space::HTTP, "boot/dut1/kernel"), Err(ServeError::NotFound(_))));
    assert!(matches!(read(&gw, "127.0.0.9", Space::HTTP, "once"), Err(ServeError::UnknownDut(_))));
    assert!(matches!(read(&gw, DUT1, Space::HTTP, "a/../once"), Err(ServeError::BadPath(_))));
    let log = gw.accesses(&"dut1".into()).unwrap();
    assert!(log.iter().any(|r| r.path == "a/../once" && matches!(r.outcome, crate::access::Outcome::Refused(_))));
}

/// The job record keeps the YAML as set, its origin and when: for text from the API, for a
/// parsed description (which keeps its text), for a file, and none once the job is dropped.
#[tokio::test]
async fn job_record_keeps_what_was_set() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::new(LabConfig::default_lab(), dir.path()).unwrap();
    let id = DutId::from("dut1");
    assert_eq!(gw.job_record(&id), None);
    let yaml = "deployment:\n  start:\n    storage:\n      http:\n        - {path: /a, data: x}\n";
    let before = std::time::SystemTime::now();
    gw.set_job_yaml(&id, yaml, Origin::named("api:dut1")).await.unwrap();
    let r = gw.job_record(&id).unwrap();
    assert_eq!((r.yaml.as_deref(), r.origin.name.as_str()), (Some(yaml), "api:dut1"));
    assert!(r.set_at >= before && r.set_at <= std::time::SystemTime::now(), "{r:?}");
    // A bad job leaves the record of the good one.
    assert!(gw.set_job_yaml(&id, "deployment: 1\n", Origin::named("api:dut1")).await.is_err());
    assert_eq!(gw.job_record(&id).unwrap().yaml.as_deref(), Some(yaml));
    gw.set_job(&id, &JobDescription::parse(yaml, Origin::named("parsed.yaml")).unwrap()).await.unwrap();
    let r = gw.job_record(&id).unwrap();
    assert_eq!((r.yaml.as_deref(), r.origin.name.as_str()), (Some(yaml), "parsed.yaml"));
    let file = dir.path().join("job.yaml");
    std::fs::write(&file, yaml).unwrap();
    gw.set_trusted_job_file(&id, &file).await.unwrap();
    assert_eq!(
        gw.job_record(&id).unwrap(),
        JobRecord { yaml: Some(yaml.into()), origin: Origin::file(&file), ..gw.job_record(&id).unwrap() }
    );
    gw.clear_job(&id).unwrap();
    assert_eq!(gw.job_record(&id), None);
}

#[tokio::test]
async fn the_job_is_recorded_as_set_and_events_are_kept() {
    let (_d, gw) = gateway_with(JOB).await;
    let id = DutId::from("dut1");
    let rec = gw.job_record(&id).unwrap();
    assert_eq!((rec.yaml.as_deref(), rec.origin.name.as_str()), (Some(JOB), "job.yaml"));
    assert!(rec.set_at <= std::time::SystemTime::now());
    gw.event(&id, Event::Boot).unwrap();
    gw.event(&id, Event::JobEnd).unwrap();
    assert!(gw.job_record(&id).is_none(), "job_end clears the record with the job");
    assert_eq!(gw.events(&id, 10).unwrap().iter().map(|e| e.event).collect::<Vec<_>>(), [Event::Boot, Event::JobEnd]);
    assert!(gw.last_event(&id, Event::Boot).is_some() && gw.last_event(&id, Event::JobStart).is_none());
}

/// A lifetime store that counts what it is told and fails when asked to.
#[derive(Default)]
struct Flaky {
    inner: MemoryLifetimes,
    fail: std::sync::atomic::AtomicBool,
}

impl LifetimeStore for Flaky {
    fn count_read(&self, dut: &DutId, file: &FileKey) -> Result<(), crate::store::StoreError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(crate::store::StoreError::backend("the database is gone"));
        }
        self.inner.count_read(dut, file)
    }
    fn reads(&self, dut: &DutId, file: &FileKey) -> u32 {
        self.inner.reads(dut, file)
    }
    fn event(&self, dut: &DutId, event: Event, at: std::time::SystemTime) -> Result<(), crate::store::StoreError> {
        self.inner.event(dut, event, at)
    }
    fn last_event(&self, dut: &DutId, event: Event) -> Option<std::time::SystemTime> {
        self.inner.last_event(dut, event)
    }
    fn reset(&self, dut: &DutId) -> Result<(), crate::store::StoreError> {
        self.inner.reset(dut)
    }
}

#[tokio::test]
async fn a_counted_read_is_in_the_store_when_open_returns_and_a_failed_store_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let lab = LabConfig::default_lab();
    let flaky = Arc::new(Flaky::default());
    let stores = Stores { lifetimes: Box::new(flaky.clone()), ..Stores::memory(&lab.limits) };
    let gw = Gateway::with_stores(lab, dir.path(), Arc::new(crate::artifact::NoNetwork), stores).unwrap();
    let job = JobDescription::parse(JOB, Origin::named("job.yaml")).unwrap();
    gw.set_job(&"dut1".into(), &job).await.unwrap();
    let key = FileKey { step: "start", space: Space::HTTP, path: "once".into() };
    let id = DutId::from("dut1");
    let req = FileRequest {
        peer: DUT1.parse().unwrap(),
        protocol: Protocol::HTTP,
        space: Space::HTTP,
        path: "once",
        base_url: None,
        intent: Intent::Read,
        range: None,
    };
    let a = gw.open(&req).unwrap();
    assert_eq!(flaky.reads(&id, &key), 1, "recorded before the artifact (and its bytes) is handed out");
    drop(a);
    gw.event(&id, Event::Boot).unwrap();
    assert_eq!(flaky.reads(&id, &key), 0, "a boot resets the stored count as it resets the policy");
    flaky.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(matches!(gw.open(&req), Err(ServeError::Io(_))), "not recorded, not served");
    let log = gw.accesses(&id).unwrap();
    assert!(matches!(&log.last().unwrap().outcome, crate::access::Outcome::Refused(why) if why.contains("database is gone")), "{log:?}");
}

/// A job loaded again from its record (a restarted durable lab) resumes its counted reads from
/// the lifetime store instead of starting from zero; a `boot` still resets them.
#[tokio::test]
async fn restored_jobs_resume_counted_reads() {
    let yaml = "deployment:\n  start:\n    storage:\n      http:\n        - {path: /once, data: \"secret {{ machine_id }}\", lifetime: {access_count: 1}}\n        - {path: /free, data: free}\n";
    let dir = tempfile::tempdir().unwrap();
    let lifetimes = Arc::new(MemoryLifetimes::default());
    let stores = |jobs: MemoryJobs| Stores {
        lifetimes: Box::new(lifetimes.clone()),
        jobs: Box::new(jobs),
        ..Stores::memory(&LabConfig::default_lab().limits)
    };
    let record = {
        let gw =
            Gateway::with_stores(LabConfig::default_lab(), dir.path(), Arc::new(crate::artifact::NoNetwork), stores(MemoryJobs::default()))
                .unwrap();
        gw.set_job_yaml(&"dut1".into(), yaml, Origin::named("api:dut1")).await.unwrap();
        assert_eq!(read(&gw, DUT1, Space::HTTP, "/once").unwrap(), "secret dut1");
        gw.job_record(&"dut1".into()).unwrap()
    };
    // "Restart": the job record and the counts are all that is left.
    let jobs = MemoryJobs::default();
    jobs.put(&"dut1".into(), record.clone()).unwrap();
    let gw = Gateway::with_stores(LabConfig::default_lab(), dir.path(), Arc::new(crate::artifact::NoNetwork), stores(jobs)).unwrap();
    assert!(gw.restore_jobs(&[]).await.is_empty());
    assert_eq!(gw.job_record(&"dut1".into()), Some(record), "loading again is not a new job");
    assert_eq!(read(&gw, DUT1, Space::HTTP, "/free").unwrap(), "free");
    assert!(matches!(read(&gw, DUT1, Space::HTTP, "/once"), Err(ServeError::Gone(_))));
    gw.event(&"dut1".into(), Event::Boot).unwrap();
    assert_eq!(read(&gw, DUT1, Space::HTTP, "/once").unwrap(), "secret dut1");
    // A DUT skipped (serve --job is about to replace its job) gets nothing loaded.
    let dir2 = tempfile::tempdir().unwrap();
    let jobs = MemoryJobs::default();
    jobs.put(&"dut1".into(), gw.job_record(&"dut1".into()).unwrap()).unwrap();
    let gw2 = Gateway::with_stores(
        LabConfig::default_lab(),
        dir2.path(),
        Arc::new(crate::artifact::NoNetwork),
        Stores { jobs: Box::new(jobs), ..Stores::memory(&LabConfig::default_lab().limits) },
    )
    .unwrap();
    assert!(gw2.restore_jobs(&["dut1".into()]).await.is_empty());
    assert!(gw2.job(&"dut1".into()).is_none());
}
