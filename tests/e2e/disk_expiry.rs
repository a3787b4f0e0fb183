//! Job disks expire on schedule, counted from the times the state store keeps: across a
//! `kill -9` and a restart (a restart gives no disk a fresh lease), and while citron runs (the
//! sweeper wakes for the next expiry, not only every ten minutes).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use citron_core::Digest;
use citron_tests::{require_tool, Citron};

/// Only NBD and the API.
fn start(data: &Path) -> Citron {
    Citron::start(&["--data", data.to_str().unwrap(), "--http", "off", "--tftp", "off"])
}

/// `<data>/disks/overlays/<owner>/<disk>`: a disk's directory, named by hashes.
fn disk_dir(data: &Path, owner: &str, disk: &str) -> PathBuf {
    let h = |s: &str| Digest::of(s.as_bytes()).hex()[..32].to_string();
    data.join("disks/overlays").join(h(owner)).join(h(disk))
}

fn job(disks: &[(&str, &str)]) -> String {
    let mut j = String::from("deployment:\n  start:\n    storage:\n      nbd:\n");
    for (name, expiration) in disks {
        j.push_str(&format!(
            "        - name: {name}\n          raw: {{size: 1M}}\n          reset_on: never\n          expiration: {expiration}\n"
        ));
    }
    j
}

fn job_end(c: &Citron) {
    let r = c.api_json("POST", "/api/v1/duts/dut1/events", Some(r#"{"event": "job_end"}"#));
    assert_eq!(r.status, 204, "{r:?}");
}

#[test]
fn a_disk_expires_on_schedule_across_a_kill_9_and_while_running() {
    if !require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (scratch, keep) = (disk_dir(&data, "dut1", "scratch"), disk_dir(&data, "dut1", "keep"));
    let c = start(&data);
    let (code, body) = c.put_job("dut1", &job(&[("scratch", "4s"), ("keep", "1h")]));
    assert_eq!(code, 200, "{body}");
    assert!(scratch.is_dir() && keep.is_dir());
    // The job ends: the disks' leases start running (their writes are kept for a later job).
    let released = Instant::now();
    job_end(&c);
    assert!(scratch.is_dir(), "not expired yet");
    drop(c); // kill -9, well before "scratch" expires
    assert!(scratch.is_dir(), "still there when citron was killed");

    // Stopped past scratch's expiration: the restart removes it before it serves anything,
    // as its stored lease says (a fresh lease at the restart would keep it 4 s more).
    std::thread::sleep(Duration::from_secs(4).saturating_sub(released.elapsed()) + Duration::from_millis(1100));
    let c = start(&data);
    assert!(!scratch.exists(), "an expired disk is removed at start");
    assert!(keep.is_dir(), "a disk with time left is kept");

    // While running: a released disk goes when its expiration falls due.
    let soon = disk_dir(&data, "dut1", "soon");
    let (code, body) = c.put_job("dut1", &job(&[("soon", "1s"), ("keep", "1h")]));
    assert_eq!(code, 200, "{body}");
    job_end(&c);
    let deadline = Instant::now() + Duration::from_secs(30);
    while soon.exists() {
        assert!(Instant::now() < deadline, "the released disk was not removed within 30 s of its 1 s expiration");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(keep.is_dir());
}
