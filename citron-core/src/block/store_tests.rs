//! The disk store over its records: expiration counted from the stored times across a reopen
//! (a restart), held disks kept, a resumed job keeping its DUT's writes, older lease files.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::*;
use crate::artifact::{CacheConfig, NoNetwork};
use crate::block::{DiskRecordStore, MemoryDiskRecords};
use crate::job::{DiskKind, ResetOn};

struct Lab {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    cache: Cache,
    records: Arc<MemoryDiskRecords>,
}

impl Lab {
    fn new() -> Lab {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(&tmp.path().join("cache"), CacheConfig::default(), Arc::new(NoNetwork)).unwrap();
        Lab { dir: tmp.path().join("disks"), _tmp: tmp, cache, records: Arc::default() }
    }

    /// The store as a (re)started gateway opens it: same directory, same records.
    fn open(&self) -> DiskStore {
        DiskStore::open(&self.dir, Box::new(self.records.clone())).unwrap()
    }

    /// Moves a disk's recorded last use `ago` into the past, as if citron had been stopped
    /// that long.
    fn age(&self, owner: &str, disk: &str, ago: Duration) {
        let mut r = self.records.get(&owner.into(), disk).unwrap();
        r.last_use -= ago;
        self.records.put(&r).unwrap();
    }
}

fn disk(name: &str, reset_on: ResetOn, expiration: Option<u64>) -> DiskSpec {
    DiskSpec {
        name: name.into(),
        readonly: false,
        kind: DiskKind::Raw { size_bytes: 1 << 20 },
        reset_on,
        shared: false,
        expiration: expiration.map(Duration::from_secs),
    }
}

fn write(store: &DiskStore, dut: &str, name: &str, byte: u8) {
    let (_, dev) = store.open_export(&dut.into(), name).unwrap();
    dev.write_at(&[byte; 512], 0, false).unwrap();
    dev.flush().unwrap();
}

fn first_byte(store: &DiskStore, dut: &str, name: &str) -> u8 {
    let (_, dev) = store.open_export(&dut.into(), name).unwrap();
    let mut b = [0u8; 512];
    dev.read_at(&mut b, 0).unwrap();
    b[0]
}

#[tokio::test]
async fn a_released_disk_expires_on_its_recorded_time_across_a_restart() {
    let lab = Lab::new();
    let d1 = DutId::from("d1");
    let disks = [disk("keep", ResetOn::Never, Some(3600)), disk("scratch", ResetOn::Never, Some(3600))];
    {
        let store = lab.open();
        store.attach(&lab.cache, &Limits::default(), &d1, &disks, false).await.unwrap();
        write(&store, "d1", "scratch", 7);
        let r = lab.records.get(&d1, "scratch").unwrap();
        assert!(r.held && r.overlays.contains(&d1) && r.reset_on == ResetOn::Never, "{r:?}");
        assert_eq!(store.next_expiry(), None, "a held disk does not expire");
        store.release(&d1);
        let r = lab.records.get(&d1, "scratch").unwrap();
        assert!(!r.held && r.overlays.contains(&d1), "released, its writes kept: {r:?}");
        assert!(store.next_expiry().is_some());
    }
    // Stopped for longer than "scratch" had left, not for longer than "keep" had.
    lab.age("d1", "scratch", Duration::from_secs(3601));
    lab.age("d1", "keep", Duration::from_secs(1800));
    let store = lab.open();
    assert_eq!(store.sweep(), 1, "the restart did not give it a fresh lease");
    assert!(lab.records.get(&d1, "scratch").is_none());
    assert!(!store.disk_dir(&d1, "scratch").exists());
    assert!(store.disk_dir(&d1, "keep").exists());
    let left = store.next_expiry().unwrap().duration_since(SystemTime::now()).unwrap();
    assert!(left <= Duration::from_secs(1800), "{left:?}: counted from the stored time");
    // A job naming "scratch" again starts it from its base.
    store.attach(&lab.cache, &Limits::default(), &d1, &disks, false).await.unwrap();
    assert_eq!(first_byte(&store, "d1", "scratch"), 0);
}

#[tokio::test]
async fn a_held_disk_is_kept_and_a_resumed_job_keeps_its_writes() {
    let lab = Lab::new();
    let d1 = DutId::from("d1");
    let disks = [disk("root", ResetOn::JobStart, Some(60))];
    {
        let store = lab.open();
        store.attach(&lab.cache, &Limits::default(), &d1, &disks, false).await.unwrap();
        write(&store, "d1", "root", 9);
    }
    // Killed while the job held the disk, restarted long after its expiration would have run.
    lab.age("d1", "root", Duration::from_secs(7200));
    let store = lab.open();
    assert_eq!(store.sweep(), 0, "a disk its (stored) job holds is kept");
    // The stored job loaded again: not a job start, the DUT's writes are still there.
    store.attach(&lab.cache, &Limits::default(), &d1, &disks, true).await.unwrap();
    assert_eq!(first_byte(&store, "d1", "root"), 9);
    // A new job is a job start: `reset_on: job_start` drops them.
    store.attach(&lab.cache, &Limits::default(), &d1, &disks, false).await.unwrap();
    assert_eq!(first_byte(&store, "d1", "root"), 0);
    assert!(lab.records.get(&d1, "root").unwrap().overlays.contains(&d1));
}

#[tokio::test]
async fn an_older_citrons_lease_file_still_expires_its_disk() {
    let lab = Lab::new();
    let store = lab.open();
    let (owner, name) = (DutId::from("d1"), "old");
    let dir = store.disk_dir(&owner, name);
    std::fs::create_dir_all(dir.join("x")).unwrap();
    std::fs::write(dir.join("lease"), "1000 60 raw-1\n").unwrap();
    let kept = store.disk_dir(&owner, "forever");
    std::fs::create_dir_all(&kept).unwrap();
    std::fs::write(kept.join("lease"), "1000 - raw-1\n").unwrap();
    assert_eq!(store.sweep(), 1);
    assert!(!dir.exists() && kept.exists());
}

#[tokio::test]
async fn another_gateways_disk_records_are_left_alone() {
    let lab = Lab::new();
    let other = DiskRecord {
        owner: "far".into(),
        disk: "d".into(),
        base_key: "raw-1".into(),
        reset_on: ResetOn::Never,
        expiration: Some(Duration::from_secs(1)),
        last_use: SystemTime::UNIX_EPOCH,
        held: false,
        overlays: Default::default(),
    };
    lab.records.put(&other).unwrap();
    let store = lab.open();
    assert_eq!(store.sweep(), 0);
    assert_eq!(lab.records.get(&"far".into(), "d"), Some(other), "not in this data directory: not ours to remove");
    assert_eq!(store.next_expiry(), None);
}
