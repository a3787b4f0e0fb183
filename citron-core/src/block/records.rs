//! What the lab records of each job disk: its lifetime (`reset_on`, `expiration`), when a job
//! last asked for it, whether a job holds it now, and which DUTs have writes on it.
//!
//! The [`DiskStore`](super::DiskStore) decides and writes the record whenever one of these
//! changes (a job attaches or releases the disk, a DUT opens its overlay, an event resets it);
//! the sweeper reads them back to remove disks whose `expiration` passed. Because the times are
//! the stored ones, a restart neither forgets a disk nor gives it a fresh lease: a disk released
//! an hour before a restart with `expiration: 1h` is removed at the restart.
//!
//! The in-memory store ([`MemoryDiskRecords`]) forgets everything with the process; a durable
//! lab stores them (`citron_lab::state`). Writes are synchronous like every store's (see
//! [`crate::store`]) but never on the path of a read or write of a disk.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::job::ResetOn;
use crate::lifetime::DiskLease;
use crate::namespace::DutId;
use crate::store::StoreError;

/// One job disk of one DUT, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskRecord {
    /// The DUT whose job names the disk.
    pub owner: DutId,
    /// The disk's name in the job (`storage.nbd[].name`).
    pub disk: String,
    /// The key of the base image its overlays are over.
    pub base_key: String,
    /// When DUTs' writes are dropped.
    pub reset_on: ResetOn,
    /// How long after `last_use` a disk no job holds is removed; `None`: kept.
    pub expiration: Option<Duration>,
    /// When a job last asked for the disk or released it.
    pub last_use: SystemTime,
    /// Whether a job holds it (then it never expires).
    pub held: bool,
    /// The DUTs with an overlay (their writes) on it.
    pub overlays: BTreeSet<DutId>,
}

impl DiskRecord {
    /// The lease its lifetime gives it from `last_use`.
    pub fn lease(&self) -> DiskLease {
        let since_unix = self.last_use.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        DiskLease { since_unix, expiration: self.expiration }
    }
}

/// Where disk records are kept. See [`crate::store`] for why it is synchronous.
pub trait DiskRecordStore: Send + Sync + 'static {
    /// Sets (or replaces) the record of `record.owner`'s disk `record.disk`.
    fn put(&self, record: &DiskRecord) -> Result<(), StoreError>;
    /// The record of `owner`'s disk `disk`.
    fn get(&self, owner: &DutId, disk: &str) -> Option<DiskRecord>;
    /// Removes the record (the disk was removed).
    fn remove(&self, owner: &DutId, disk: &str) -> Result<(), StoreError>;
    /// Every record (answered from memory: the sweeper asks often).
    fn list(&self) -> Vec<DiskRecord>;
}

/// Disk records in memory: lost when citron stops (disks left on disk then wait for a job to
/// name them again).
#[derive(Debug, Default)]
pub struct MemoryDiskRecords(Mutex<HashMap<(DutId, String), DiskRecord>>);

impl DiskRecordStore for MemoryDiskRecords {
    fn put(&self, record: &DiskRecord) -> Result<(), StoreError> {
        self.0.lock().insert((record.owner.clone(), record.disk.clone()), record.clone());
        Ok(())
    }
    fn get(&self, owner: &DutId, disk: &str) -> Option<DiskRecord> {
        self.0.lock().get(&(owner.clone(), disk.to_string())).cloned()
    }
    fn remove(&self, owner: &DutId, disk: &str) -> Result<(), StoreError> {
        self.0.lock().remove(&(owner.clone(), disk.to_string()));
        Ok(())
    }
    fn list(&self) -> Vec<DiskRecord> {
        self.0.lock().values().cloned().collect()
    }
}

/// A shared store (a lab keeps a handle to read records back).
impl<T: DiskRecordStore + ?Sized> DiskRecordStore for std::sync::Arc<T> {
    fn put(&self, record: &DiskRecord) -> Result<(), StoreError> {
        (**self).put(record)
    }
    fn get(&self, owner: &DutId, disk: &str) -> Option<DiskRecord> {
        (**self).get(owner, disk)
    }
    fn remove(&self, owner: &DutId, disk: &str) -> Result<(), StoreError> {
        (**self).remove(owner, disk)
    }
    fn list(&self) -> Vec<DiskRecord> {
        (**self).list()
    }
}
