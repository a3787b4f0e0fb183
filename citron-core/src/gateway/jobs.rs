//! Every DUT's job: the record of it as it was set ([`JobRecord`], kept by a [`JobStore`]) and the
//! loaded job that answers requests ([`ActiveJob`]: its files fetched, its policies counting).
//!
//! The record is what outlives the process (a restarted lab can load the job again from it); the
//! loaded job is rebuilt from it and holds what cannot be stored (open files, cache pins).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use parking_lot::RwLock;

use crate::job::{Origin, ResolvedJob};
use crate::lifetime::Event;
use crate::namespace::DutId;
use crate::store::StoreError;

use super::files::Files;

/// A DUT's job as it was set: what `GET /api/v1/duts/{id}/job` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    /// The job description's text as given (`None` for a job built in code,
    /// [`Gateway::set_resolved_job`](super::Gateway::set_resolved_job)).
    pub yaml: Option<String>,
    /// Where it came from (file name, `api`, ...).
    pub origin: Origin,
    /// When it was set.
    pub set_at: SystemTime,
}

/// Where job records are kept. See [`crate::store`] for why it is synchronous.
pub trait JobStore: Send + Sync + 'static {
    /// Sets (or replaces) `dut`'s job record; durable when it returns, before the job serves.
    fn put(&self, dut: &DutId, record: JobRecord) -> Result<(), StoreError>;
    /// `dut`'s job record.
    fn get(&self, dut: &DutId) -> Option<JobRecord>;
    /// Removes `dut`'s job record; `Ok(None)` if it had none.
    fn remove(&self, dut: &DutId) -> Result<Option<JobRecord>, StoreError>;
}

/// Job records in memory: today's store, one record per DUT.
#[derive(Debug, Default)]
pub struct MemoryJobs(RwLock<HashMap<DutId, JobRecord>>);

impl JobStore for MemoryJobs {
    fn put(&self, dut: &DutId, record: JobRecord) -> Result<(), StoreError> {
        self.0.write().insert(dut.clone(), record);
        Ok(())
    }
    fn get(&self, dut: &DutId) -> Option<JobRecord> {
        self.0.read().get(dut).cloned()
    }
    fn remove(&self, dut: &DutId) -> Result<Option<JobRecord>, StoreError> {
        Ok(self.0.write().remove(dut))
    }
}

/// A loaded job: its rendered description and the files of its steps.
pub(super) struct ActiveJob {
    pub job: ResolvedJob,
    /// The open run of a job with `results:`, until `job_end` (or the job's end) closes it.
    pub run: parking_lot::Mutex<Option<super::DutRun>>,
    /// The run's inputs (its key, what the DUT reads), for a job with a run.
    pub inputs: Option<super::inputs::JobInputs>,
    start: Files,
    cont: Option<Files>,
    boots: AtomicU32,
}

impl ActiveJob {
    pub(super) fn new(
        job: ResolvedJob,
        start: Files,
        cont: Option<Files>,
        run: Option<super::DutRun>,
        inputs: Option<super::inputs::JobInputs>,
    ) -> ActiveJob {
        ActiveJob { job, run: parking_lot::Mutex::new(run), inputs, start, cont, boots: AtomicU32::new(0) }
    }

    /// The files served now: `continue` from the second boot after the job started.
    pub(super) fn files(&self) -> &Files {
        match &self.cont {
            Some(c) if self.boots.load(Ordering::SeqCst) >= 2 => c,
            _ => &self.start,
        }
    }

    /// Resumes every counted file's reads from the lifetime store (a job loaded again after a
    /// restart serves a read-once secret no more than it did before).
    pub(super) fn resume_reads(&self, reads: impl Fn(&super::FileKey) -> u32) {
        for e in self.start.entries().chain(self.cont.iter().flat_map(|c| c.entries())) {
            e.resume_reads(&reads);
        }
    }

    /// A DUT event: counts boots (`job_start` starts again) and tells every file's policies.
    pub(super) fn on_event(&self, event: Event, now: Instant) {
        match event {
            Event::Boot => {
                self.boots.fetch_add(1, Ordering::SeqCst);
            }
            Event::JobStart => self.boots.store(0, Ordering::SeqCst),
            Event::JobEnd => {}
        }
        for e in self.start.entries().chain(self.cont.iter().flat_map(|c| c.entries())) {
            e.on_event(event, now);
        }
    }
}

/// The jobs of the lab: records in a [`JobStore`], loaded jobs in memory.
pub(super) struct Jobs {
    store: Box<dyn JobStore>,
    active: RwLock<HashMap<DutId, Arc<ActiveJob>>>,
}

impl Jobs {
    pub(super) fn new(store: Box<dyn JobStore>) -> Jobs {
        Jobs { store, active: RwLock::default() }
    }

    /// Makes `job` `dut`'s job: the record is stored first, so a job never serves unrecorded.
    /// Answers the job it replaced.
    pub(super) fn set(&self, dut: &DutId, record: JobRecord, job: ActiveJob) -> Result<Option<Arc<ActiveJob>>, StoreError> {
        self.store.put(dut, record)?;
        Ok(self.active.write().insert(dut.clone(), Arc::new(job)))
    }

    /// Drops `dut`'s job; whether it had one. The loaded job goes first: its files stop serving
    /// even if the store then fails.
    pub(super) fn clear(&self, dut: &DutId) -> Result<bool, StoreError> {
        let loaded = self.active.write().remove(dut).is_some();
        Ok(self.store.remove(dut)?.is_some() || loaded)
    }

    /// `dut`'s loaded job.
    pub(super) fn active(&self, dut: &DutId) -> Option<Arc<ActiveJob>> {
        self.active.read().get(dut).cloned()
    }

    /// How many DUTs have a loaded job.
    pub(super) fn active_count(&self) -> usize {
        self.active.read().len()
    }

    /// `dut`'s job record.
    pub(super) fn record(&self, dut: &DutId) -> Option<JobRecord> {
        self.store.get(dut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> ActiveJob {
        let job = ResolvedJob { name: None, results: None, origin: "t".into(), start: Default::default(), continue_: None };
        ActiveJob::new(job, Files::default(), Some(Files::default()), None, None)
    }

    #[test]
    fn a_job_is_recorded_before_it_serves_and_cleared_with_its_record() {
        let jobs = Jobs::new(Box::new(MemoryJobs::default()));
        let d = DutId::from("d");
        let rec = JobRecord { yaml: Some("deployment: {}".into()), origin: Origin::named("api"), set_at: SystemTime::now() };
        jobs.set(&d, rec.clone(), job()).unwrap();
        assert_eq!(jobs.record(&d), Some(rec));
        assert!(jobs.active(&d).is_some());
        assert!(jobs.clear(&d).unwrap());
        assert!(jobs.active(&d).is_none() && jobs.record(&d).is_none());
        assert!(!jobs.clear(&d).unwrap());
    }

    #[test]
    fn continue_serves_from_the_second_boot_until_job_start() {
        let j = job();
        let is_start = |j: &ActiveJob| std::ptr::eq(j.files(), &j.start);
        assert!(is_start(&j));
        j.on_event(Event::Boot, Instant::now());
        assert!(is_start(&j), "the first boot is the job's own");
        j.on_event(Event::Boot, Instant::now());
        assert!(!is_start(&j));
        j.on_event(Event::JobStart, Instant::now());
        assert!(is_start(&j));
    }
}
