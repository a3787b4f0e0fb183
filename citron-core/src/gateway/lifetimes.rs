//! The lifetime counters of a lab: reads counted against `access_count`, and when each DUT last
//! booted, started and ended a job.
//!
//! The [`LifetimePolicy`](crate::lifetime::LifetimePolicy) objects of a loaded job decide; this
//! store keeps what they counted where it outlives the process, so that a restarted gateway can
//! restore it (issue 14). The gateway writes a counted read here after the policies admitted it
//! and before the read's [`Artifact`](crate::serve::Artifact) is returned (see
//! [`files::Entry::open`](super::files)): a crash can lose a read that was never sent, never send
//! one that was not recorded.

use std::collections::HashMap;
use std::time::SystemTime;

use parking_lot::Mutex;

use crate::lifetime::Event;
use crate::namespace::DutId;
use crate::serve::Space;
use crate::store::StoreError;

/// Which file of a DUT's job a counted read was of.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileKey {
    /// The deployment step: `start` or `continue` (each has its own counts).
    pub step: &'static str,
    /// The space the file is served in.
    pub space: Space,
    /// Its normalised path.
    pub path: String,
}

/// Whether `event` resets the counts of `access_count`: the seed's rule ("reset after every
/// reboot"), the same one [`AccessCount`](crate::lifetime::AccessCount) applies in memory.
pub fn resets_counts(event: Event) -> bool {
    matches!(event, Event::Boot | Event::JobStart)
}

/// Where the lifetime counters are kept. See [`crate::store`] for why it is synchronous.
pub trait LifetimeStore: Send + Sync + 'static {
    /// One more read of `file` by `dut`. Called on the serving path, after the policies admitted
    /// the read and before its bytes may leave: durable when it returns. An error refuses the read.
    fn count_read(&self, dut: &DutId, file: &FileKey) -> Result<(), StoreError>;
    /// Reads of `file` by `dut` counted since the last reset.
    fn reads(&self, dut: &DutId, file: &FileKey) -> u32;
    /// `event` happened to `dut` at `at`: remembered as its last one of that kind, and the counts
    /// are reset when [`resets_counts`] says so.
    fn event(&self, dut: &DutId, event: Event, at: SystemTime) -> Result<(), StoreError>;
    /// When `event` last happened to `dut`.
    fn last_event(&self, dut: &DutId, event: Event) -> Option<SystemTime>;
    /// A new job was set for `dut` (its counts start from zero), or the DUT was removed.
    fn reset(&self, dut: &DutId) -> Result<(), StoreError>;
}

/// A shared store (the lab keeps a handle to read counters back, say).
impl<T: LifetimeStore + ?Sized> LifetimeStore for std::sync::Arc<T> {
    fn count_read(&self, dut: &DutId, file: &FileKey) -> Result<(), StoreError> {
        (**self).count_read(dut, file)
    }
    fn reads(&self, dut: &DutId, file: &FileKey) -> u32 {
        (**self).reads(dut, file)
    }
    fn event(&self, dut: &DutId, event: Event, at: SystemTime) -> Result<(), StoreError> {
        (**self).event(dut, event, at)
    }
    fn last_event(&self, dut: &DutId, event: Event) -> Option<SystemTime> {
        (**self).last_event(dut, event)
    }
    fn reset(&self, dut: &DutId) -> Result<(), StoreError> {
        (**self).reset(dut)
    }
}

#[derive(Debug, Default)]
struct DutCounters {
    reads: HashMap<FileKey, u32>,
    last: HashMap<Event, SystemTime>,
}

/// Lifetime counters in memory: today's store. Bounded by the files of the DUTs' jobs.
#[derive(Debug, Default)]
pub struct MemoryLifetimes(Mutex<HashMap<DutId, DutCounters>>);

impl LifetimeStore for MemoryLifetimes {
    fn count_read(&self, dut: &DutId, file: &FileKey) -> Result<(), StoreError> {
        let mut m = self.0.lock();
        let n = m.entry(dut.clone()).or_default().reads.entry(file.clone()).or_insert(0);
        *n = n.saturating_add(1);
        Ok(())
    }
    fn reads(&self, dut: &DutId, file: &FileKey) -> u32 {
        self.0.lock().get(dut).and_then(|c| c.reads.get(file).copied()).unwrap_or(0)
    }
    fn event(&self, dut: &DutId, event: Event, at: SystemTime) -> Result<(), StoreError> {
        let mut m = self.0.lock();
        let c = m.entry(dut.clone()).or_default();
        c.last.insert(event, at);
        if resets_counts(event) {
            c.reads.clear();
        }
        Ok(())
    }
    fn last_event(&self, dut: &DutId, event: Event) -> Option<SystemTime> {
        self.0.lock().get(dut).and_then(|c| c.last.get(&event).copied())
    }
    fn reset(&self, dut: &DutId) -> Result<(), StoreError> {
        if let Some(c) = self.0.lock().get_mut(dut) {
            c.reads.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_reset_on_boot_and_job_start_not_on_job_end() {
        let s = MemoryLifetimes::default();
        let d = DutId::from("d");
        let k = FileKey { step: "start", space: Space::HTTP, path: "once".into() };
        s.count_read(&d, &k).unwrap();
        s.count_read(&d, &k).unwrap();
        assert_eq!(s.reads(&d, &k), 2);
        let t = SystemTime::now();
        s.event(&d, Event::JobEnd, t).unwrap();
        assert_eq!(s.reads(&d, &k), 2);
        assert_eq!(s.last_event(&d, Event::JobEnd), Some(t));
        s.event(&d, Event::Boot, t).unwrap();
        assert_eq!(s.reads(&d, &k), 0);
        assert_eq!(s.last_event(&d, Event::Boot), Some(t));
        assert_eq!(s.last_event(&d, Event::JobStart), None);
        s.count_read(&d, &k).unwrap();
        s.reset(&d).unwrap();
        assert_eq!(s.reads(&d, &k), 0);
    }
}
