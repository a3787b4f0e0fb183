//! The DUTs' events (`boot`, `job_start`, `job_end`) as a history, newest last.
//!
//! What an event *does* (reset counts, switch to `continue`, unload the job) is decided by the
//! gateway; this piece only keeps the record of it.

use std::collections::{HashMap, VecDeque};
use std::time::SystemTime;

use parking_lot::Mutex;

use crate::lifetime::Event;
use crate::namespace::DutId;
use crate::store::StoreError;

/// One event of one DUT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRecord {
    /// When the gateway was told.
    pub time: SystemTime,
    /// What happened.
    pub event: Event,
}

/// Where the events are kept. See [`crate::store`] for why it is synchronous.
pub trait EventLog: Send + Sync + 'static {
    /// Appends an event. The event has already been applied when this is called, so an
    /// implementation may buffer and write later; an error is logged, not returned to the lab.
    fn append(&self, dut: &DutId, record: EventRecord) -> Result<(), StoreError>;
    /// The last `limit` events of `dut`, oldest first.
    fn recent(&self, dut: &DutId, limit: usize) -> Vec<EventRecord>;
    /// Forgets `dut`'s events (the DUT was removed).
    fn forget(&self, dut: &DutId);
}

/// The most events kept per DUT in memory; older ones are dropped first.
pub const MEMORY_EVENTS_PER_DUT: usize = 1000;

/// Events in memory: today's log, the last [`MEMORY_EVENTS_PER_DUT`] of each DUT.
#[derive(Debug, Default)]
pub struct MemoryEvents(Mutex<HashMap<DutId, VecDeque<EventRecord>>>);

impl EventLog for MemoryEvents {
    fn append(&self, dut: &DutId, record: EventRecord) -> Result<(), StoreError> {
        let mut m = self.0.lock();
        let q = m.entry(dut.clone()).or_default();
        if q.len() >= MEMORY_EVENTS_PER_DUT {
            q.pop_front();
        }
        q.push_back(record);
        Ok(())
    }
    fn recent(&self, dut: &DutId, limit: usize) -> Vec<EventRecord> {
        let m = self.0.lock();
        let Some(q) = m.get(dut) else { return Vec::new() };
        q.iter().skip(q.len().saturating_sub(limit)).copied().collect()
    }
    fn forget(&self, dut: &DutId) {
        self.0.lock().remove(dut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_the_newest_events_of_each_dut() {
        let log = MemoryEvents::default();
        let (a, b) = (DutId::from("a"), DutId::from("b"));
        let t = SystemTime::now();
        for i in 0..MEMORY_EVENTS_PER_DUT + 5 {
            let event = if i % 2 == 0 { Event::Boot } else { Event::JobStart };
            log.append(&a, EventRecord { time: t, event }).unwrap();
        }
        log.append(&b, EventRecord { time: t, event: Event::JobEnd }).unwrap();
        assert_eq!(log.recent(&a, usize::MAX).len(), MEMORY_EVENTS_PER_DUT);
        let last = log.recent(&a, 2);
        assert_eq!(last.iter().map(|r| r.event).collect::<Vec<_>>(), [Event::JobStart, Event::Boot]);
        assert_eq!(log.recent(&b, 10), [EventRecord { time: t, event: Event::JobEnd }]);
        log.forget(&a);
        assert!(log.recent(&a, 10).is_empty());
    }
}
