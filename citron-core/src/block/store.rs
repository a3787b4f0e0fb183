//! The lab's disks: which job offers which, who may attach them, each DUT's overlay, resets and
//! expiration.
//!
//! # On disk (`<data_dir>/disks`)
//! - `bases/<key>.img`: prepared, read-only base images, shared by content.
//! - `overlays/<owner>/<disk>/<dut>/{data,bitmap,meta}`: one DUT's writes to one job disk
//!   (components are hashes of the owner DUT id, the disk name and the attaching DUT id).
//!
//! What the lab knows of each disk (its `reset_on` and `expiration`, when a job last asked for
//! it, whether one holds it, which DUTs wrote to it) is a [`DiskRecord`] in the lab's
//! [`DiskRecordStore`] (`records.rs`), written whenever one of these changes. The sweeper
//! removes a disk's overlays (and its base, if nothing else uses it) once its `expiration`
//! passed, counted from the stored time, with no job holding it. A disk of an older citron
//! (an `overlays/<owner>/<disk>/lease` file and no record) expires as its file says.
//!
//! # Who decides
//! When writes are dropped and when a disk expires is the disk's
//! [`DiskLifetime`](crate::lifetime::DiskLifetime), beside the file policies; this store only
//! carries it out. An overlay deleted while a connection still holds it is withdrawn
//! ([`CowDisk::withdraw`]): that connection's requests answer `Gone` with the reason.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use sha2::{Digest as _, Sha256};

use super::overlay::CowDisk;
use super::prepare::{prepare, BaseImage, KeyLocks};
use super::records::{DiskRecord, DiskRecordStore};
use super::{BlockDevice, DiskError};
use crate::artifact::Cache;
use crate::job::DiskSpec;
use crate::lifetime::{DiskLease, DiskLifetime, Event};
use crate::limits::Limits;
use crate::namespace::DutId;
use crate::serve::{ExportInfo, ServeError};

/// One disk of one DUT's active job.
#[derive(Debug)]
struct JobDisk {
    owner: DutId,
    spec: DiskSpec,
    /// When the DUTs' writes go (`reset_on`, `expiration`).
    lifetime: DiskLifetime,
    base: BaseImage,
    base_file: Option<Arc<File>>,
    /// The view of each DUT that attached it, shared by all its connections.
    views: Mutex<HashMap<DutId, Arc<CowDisk>>>,
}

impl JobDisk {
    /// Its record as a job holding it from now on, with no overlays yet.
    fn record(&self) -> DiskRecord {
        DiskRecord {
            owner: self.owner.clone(),
            disk: self.spec.name.clone(),
            base_key: self.base.key.clone(),
            reset_on: self.spec.reset_on,
            expiration: self.spec.expiration,
            last_use: SystemTime::now(),
            held: true,
            overlays: Default::default(),
        }
    }

    fn info(&self) -> ExportInfo {
        ExportInfo {
            name: self.spec.name.clone(),
            description: self.base.description.clone(),
            size: self.base.size,
            readonly: self.spec.readonly,
        }
    }
}

/// Every job's disks. Owned by the [`Gateway`](crate::Gateway), which calls it when jobs are set,
/// cleared and get events.
pub struct DiskStore {
    dir: PathBuf,
    /// One lock per base being built (see [`KeyLocks`]).
    preparing: KeyLocks,
    jobs: Mutex<HashMap<DutId, Vec<Arc<JobDisk>>>>,
    /// Overlays still open somewhere (a connection that outlived its job), by directory and base
    /// key: a new job naming the same disk shares the object instead of opening the files twice.
    live: Mutex<HashMap<PathBuf, (String, Weak<CowDisk>)>>,
    /// Every disk's record (lifetime, last use, overlays).
    records: Box<dyn DiskRecordStore>,
    /// Told when a disk's lease starts running (its job released it), so that a sweeper
    /// sleeping until the next expiry wakes for an earlier one.
    released: Arc<tokio::sync::Notify>,
}

/// Why a connection's disk went, as its requests answer (`Gone`).
const NEW_JOB: &str = "a new job started on this DUT and this disk resets on job_start; reconnect for the new job's disk";
const JOB_ENDED: &str = "this DUT's job ended and this disk resets on job_start; its writes are dropped";
const RESET_UNSEEN: &str = "the disk was reset by an event (reset_on); reconnect";
const NEW_CONTENT: &str = "a new job gave this disk other content; reconnect for it";
const EXPIRED: &str = "the disk expired (no job asked for it within its expiration) and was removed";

fn h(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..16])
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl std::fmt::Debug for DiskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStore").field("dir", &self.dir).field("jobs", &self.jobs).finish_non_exhaustive()
    }
}

impl DiskStore {
    /// Opens (creating) the store under `dir`, its disks recorded in `records`; overlays left
    /// there by an earlier run are picked up when a job names the same disk again, and expire
    /// as their records say.
    pub fn open(dir: &Path, records: Box<dyn DiskRecordStore>) -> io::Result<DiskStore> {
        std::fs::create_dir_all(dir.join("bases"))?;
        std::fs::create_dir_all(dir.join("overlays"))?;
        Ok(DiskStore {
            dir: dir.to_path_buf(),
            preparing: KeyLocks::default(),
            jobs: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            records,
            released: Arc::default(),
        })
    }

    /// Writes a disk's record. A record that cannot be written is logged: the disk is then kept
    /// longer than its expiration (the sweeper removes only what it has a record of), never
    /// served differently.
    fn record(&self, r: &DiskRecord) {
        match self.records.put(r) {
            // The record replaces an older citron's lease file.
            Ok(()) => {
                let _ = std::fs::remove_file(self.disk_dir(&r.owner, &r.disk).join("lease"));
            }
            Err(e) => tracing::error!(dut = %r.owner, disk = %r.disk, error = %e, "cannot record the disk; it may outlive its expiration"),
        }
    }

    /// The record of a job's disk: the stored one, or a new one if none was stored.
    fn record_of(&self, d: &JobDisk) -> DiskRecord {
        self.records.get(&d.owner, &d.spec.name).unwrap_or_else(|| d.record())
    }

    /// Every disk's record, as stored.
    pub fn records(&self) -> Vec<DiskRecord> {
        self.records.list()
    }

    fn disk_dir(&self, owner: &DutId, name: &str) -> PathBuf {
        self.dir.join("overlays").join(h(&owner.0)).join(h(name))
    }

    fn view_dir(&self, owner: &DutId, name: &str, dut: &DutId) -> PathBuf {
        self.disk_dir(owner, name).join(h(&dut.0))
    }

    /// Prepares `disks` and makes them `owner`'s job disks, replacing its previous job's. This is
    /// a job start: `reset_on: job_start` disks start from their base, unless `resume` (the
    /// stored job loaded again after a restart: the DUT keeps its writes).
    /// Downloads run unlocked; only building one base key is serialised (two jobs asking for
    /// the same base build it once), so no job waits for another job's different disk.
    pub async fn attach(&self, cache: &Cache, limits: &Limits, owner: &DutId, disks: &[DiskSpec], resume: bool) -> Result<(), DiskError> {
        let mut prepared = Vec::with_capacity(disks.len());
        for spec in disks {
            let base = prepare(&self.dir.join("bases"), cache, &self.preparing, limits, &spec.kind).await?;
            let base_file = match &base.path {
                Some(p) => Some(Arc::new(File::open(p).map_err(|e| DiskError::io(p, e))?)),
                None => None,
            };
            prepared.push((spec.clone(), base, base_file));
        }
        self.release_because(owner, NEW_JOB);
        let mut out = Vec::with_capacity(prepared.len());
        for (spec, base, base_file) in prepared {
            let dir = self.disk_dir(owner, &spec.name);
            let lifetime = DiskLifetime::of(&spec);
            let disk = JobDisk { owner: owner.clone(), spec, lifetime, base, base_file, views: Mutex::new(HashMap::new()) };
            let stored = self.records.get(owner, &disk.spec.name);
            let mut record = disk.record();
            // The DUTs that wrote to it, while it has the same content.
            record.overlays = stored.as_ref().filter(|r| r.base_key == record.base_key).map(|r| r.overlays.clone()).unwrap_or_default();
            if resume {
                record.last_use = stored.map_or(record.last_use, |r| r.last_use);
            } else if lifetime.resets_with_job() {
                self.withdraw_live(&dir, NEW_JOB);
                remove_views(&dir);
                record.overlays.clear();
            }
            std::fs::create_dir_all(&dir).map_err(|e| DiskError::io(&dir, e))?;
            self.record(&record);
            out.push(Arc::new(disk));
        }
        if !out.is_empty() {
            self.jobs.lock().insert(owner.clone(), out);
        }
        Ok(())
    }

    /// Overlays under `dir` are being deleted: objects still open there are withdrawn (their
    /// connections answer `Gone` with `why` instead of writing to unlinked files), and the next
    /// open starts afresh instead of sharing them.
    fn withdraw_live(&self, dir: &Path, why: &str) {
        self.live.lock().retain(|p, (_, w)| {
            if !p.starts_with(dir) {
                return true;
            }
            if let Some(v) = w.upgrade() {
                v.withdraw(why);
            }
            false
        });
    }

    /// `owner`'s job ended: its disks stop being exported. Overlays of `reset_on: job_start`
    /// disks are deleted (the next job would reset them anyway); the others stay until their
    /// expiration, for a later job naming the same disk.
    pub fn release(&self, owner: &DutId) {
        self.release_because(owner, JOB_ENDED);
    }

    /// [`release`](DiskStore::release), withdrawing open overlays with `why`.
    fn release_because(&self, owner: &DutId, why: &str) {
        let Some(old) = self.jobs.lock().remove(owner) else { return };
        for d in old {
            let dir = self.disk_dir(owner, &d.spec.name);
            d.views.lock().clear();
            let mut record = self.record_of(&d);
            if d.lifetime.resets_with_job() {
                self.withdraw_live(&dir, why);
                remove_views(&dir);
                record.overlays.clear();
            }
            // The lease starts running now.
            record.held = false;
            record.last_use = SystemTime::now();
            self.record(&record);
        }
        self.released.notify_one();
    }

    /// The disks `dut` may list: its job's, then other jobs' shared ones.
    pub fn exports(&self, dut: &DutId) -> Vec<ExportInfo> {
        let jobs = self.jobs.lock();
        let mut out: Vec<ExportInfo> = jobs.get(dut).into_iter().flatten().map(|d| d.info()).collect();
        let mut others: Vec<&Arc<JobDisk>> =
            jobs.iter().filter(|(o, _)| *o != dut).flat_map(|(_, v)| v).filter(|d| d.spec.shared).collect();
        others.sort_by(|a, b| (&a.owner, &a.spec.name).cmp(&(&b.owner, &b.spec.name)));
        for d in others {
            if !out.iter().any(|e| e.name == d.spec.name) {
                out.push(d.info());
            }
        }
        out
    }

    /// The disk `dut` opens as `name`; the empty name is the default export, the first of
    /// [`exports`](DiskStore::exports).
    fn find(&self, dut: &DutId, name: &str) -> Option<Arc<JobDisk>> {
        let default;
        let name = if name.is_empty() {
            default = self.exports(dut).into_iter().next()?.name;
            default.as_str()
        } else {
            name
        };
        let jobs = self.jobs.lock();
        if let Some(d) = jobs.get(dut).into_iter().flatten().find(|d| d.spec.name == name) {
            return Some(d.clone());
        }
        let mut shared: Vec<&Arc<JobDisk>> =
            jobs.values().flatten().filter(|d| d.spec.shared && d.spec.name == name && &d.owner != dut).collect();
        shared.sort_by(|a, b| a.owner.cmp(&b.owner));
        shared.first().map(|d| (*d).clone())
    }

    /// `dut`'s view of disk `name`: its own overlay (shared by all its connections) over the base,
    /// or the base alone for a read-only disk. Disks `dut` may not attach are `NotFound`; the
    /// empty name is the default export (the first `dut` lists), and the answer names the disk.
    pub fn open_export(&self, dut: &DutId, name: &str) -> Result<(ExportInfo, Arc<dyn BlockDevice>), ServeError> {
        let d = self.find(dut, name).ok_or_else(|| ServeError::NotFound(name.to_string()))?;
        let mut views = d.views.lock();
        if let Some(v) = views.get(dut) {
            return Ok((d.info(), v.clone()));
        }
        let view = if d.spec.readonly {
            Arc::new(CowDisk::readonly(d.base_file.clone(), d.base.size)?)
        } else {
            let dir = self.view_dir(&d.owner, name, dut);
            let mut live = self.live.lock();
            live.retain(|_, (_, w)| w.strong_count() > 0);
            match live.get(&dir).filter(|(k, _)| *k == d.base.key).and_then(|(_, w)| w.upgrade()) {
                Some(v) => v,
                None => {
                    // An overlay still open over another base (a new job named other content
                    // under the same disk name) is about to be emptied under its connections.
                    if let Some(old) = live.get(&dir).and_then(|(_, w)| w.upgrade()) {
                        old.withdraw(NEW_CONTENT);
                    }
                    let v = Arc::new(CowDisk::open(&dir, d.base_file.clone(), &d.base.key, d.base.size)?);
                    live.insert(dir, (d.base.key.clone(), Arc::downgrade(&v)));
                    v
                }
            }
        };
        views.insert(dut.clone(), view.clone());
        drop(views);
        if !d.spec.readonly {
            let mut record = self.record_of(&d);
            if record.overlays.insert(dut.clone()) {
                self.record(&record);
            }
        }
        Ok((d.info(), view))
    }

    /// A DUT event: every overlay of `dut` whose disk resets on it is dropped.
    pub fn event(&self, dut: &DutId, event: Event) {
        let disks: Vec<Arc<JobDisk>> = self.jobs.lock().values().flatten().cloned().collect();
        for d in disks {
            if !d.lifetime.resets_on(event) || d.spec.readonly {
                continue;
            }
            let view = d.views.lock().get(dut).cloned();
            let r = match view {
                Some(v) => v.reset(),
                None => {
                    let dir = self.view_dir(&d.owner, &d.spec.name, dut);
                    self.withdraw_live(&dir, RESET_UNSEEN);
                    let mut record = self.record_of(&d);
                    if record.overlays.remove(dut) {
                        self.record(&record);
                    }
                    match std::fs::remove_dir_all(dir) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                        _ => Ok(()),
                    }
                }
            };
            match r {
                Ok(()) => tracing::info!(dut = %dut, disk = %d.spec.name, ?event, "disk reset"),
                Err(e) => tracing::error!(dut = %dut, disk = %d.spec.name, error = %e, "disk reset failed"),
            }
        }
    }

    /// Removes disks no job holds whose `expiration` passed since a job last asked for them
    /// (as recorded): their overlays, their record, and their base if no other disk uses it.
    /// Returns how many disks went. Records of disks not in this data directory (another
    /// gateway's, with a shared state store) are left alone.
    pub fn sweep(&self) -> usize {
        let active: HashSet<PathBuf> = self.jobs.lock().values().flatten().map(|d| self.disk_dir(&d.owner, &d.spec.name)).collect();
        let now = unix_now();
        let records = self.records.list();
        let mut removed = 0;
        let mut freed_bases = Vec::new();
        let mut recorded = HashSet::new();
        for r in &records {
            let dir = self.disk_dir(&r.owner, &r.disk);
            recorded.insert(dir.clone());
            if r.held || active.contains(&dir) || !dir.is_dir() || !r.lease().expired(now) {
                continue;
            }
            if self.remove_disk(&dir) {
                if let Err(e) = self.records.remove(&r.owner, &r.disk) {
                    tracing::warn!(dut = %r.owner, disk = %r.disk, error = %e, "cannot forget the removed disk's record");
                }
                removed += 1;
                freed_bases.push(r.base_key.clone());
            }
        }
        // An older citron's disks: a lease file and no record.
        let mut legacy = Vec::new();
        for owner in read_dir(&self.dir.join("overlays")) {
            for disk in read_dir(&owner).into_iter().filter(|d| !recorded.contains(d)) {
                if let Some(l) = read_lease(&disk) {
                    legacy.push((disk, l));
                }
            }
        }
        for (disk, (lease, key)) in &legacy {
            if !active.contains(disk) && lease.expired(now) && self.remove_disk(disk) {
                removed += 1;
                freed_bases.push(key.clone());
            }
        }
        let jobs = self.jobs.lock();
        for key in freed_bases {
            let in_use = jobs.values().flatten().any(|d| d.base.key == key)
                || records.iter().any(|r| r.base_key == key && self.disk_dir(&r.owner, &r.disk).exists())
                || legacy.iter().any(|(dir, (_, k))| *k == key && dir.exists());
            if !in_use {
                let _ = std::fs::remove_file(self.dir.join("bases").join(format!("{key}.img")));
            }
        }
        removed
    }

    /// Removes an expired disk's directory (withdrawing its open overlays); whether it went.
    fn remove_disk(&self, disk: &Path) -> bool {
        self.withdraw_live(disk, EXPIRED);
        match std::fs::remove_dir_all(disk) {
            Ok(()) => {
                tracing::info!(dir = %disk.display(), "expired disk removed");
                true
            }
            Err(e) => {
                tracing::warn!(dir = %disk.display(), error = %e, "cannot remove expired disk");
                false
            }
        }
    }

    /// When the next disk of this data directory expires, if one will (none is held by a job
    /// and has an expiration): the sweeper sleeps until then.
    pub fn next_expiry(&self) -> Option<SystemTime> {
        self.records
            .list()
            .into_iter()
            .filter(|r| !r.held && self.disk_dir(&r.owner, &r.disk).is_dir())
            .filter_map(|r| {
                let l = r.lease();
                Some(UNIX_EPOCH + Duration::from_secs(l.since_unix.saturating_add(l.expiration?.as_secs())))
            })
            .min()
    }

    /// Notified each time a disk's lease starts running (see [`next_expiry`](Self::next_expiry)).
    pub fn released(&self) -> Arc<tokio::sync::Notify> {
        self.released.clone()
    }
}

fn read_dir(p: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(p).map(|r| r.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect()).unwrap_or_default()
}

fn remove_views(disk_dir: &Path) {
    for v in read_dir(disk_dir) {
        if let Err(e) = std::fs::remove_dir_all(&v) {
            tracing::warn!(dir = %v.display(), error = %e, "cannot remove overlay");
        }
    }
}

/// A disk's lease and its base's key, as an older citron recorded them (`<since> <expiration|-> <key>`).
fn read_lease(disk_dir: &Path) -> Option<(DiskLease, String)> {
    let text = std::fs::read_to_string(disk_dir.join("lease")).ok()?;
    let mut it = text.split_whitespace();
    let since_unix = it.next()?.parse().ok()?;
    let expiration = it.next()?.parse().ok().map(Duration::from_secs);
    let key = it.next()?.to_string();
    Some((DiskLease { since_unix, expiration }, key))
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
