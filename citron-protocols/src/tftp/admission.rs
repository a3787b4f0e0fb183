//! Who may start a transfer and who gets an answer: transfer slots (global and per DUT), the
//! answer budget for sources that are no DUT, log lines once per source, and ERROR sizes.
//!
//! TFTP runs over UDP, so anyone can send a request from any source address. Without these
//! bounds one DUT (or anyone spoofing a silent DUT's address) could hold every transfer slot and
//! block every other DUT's boot, and a stream of small malformed requests with spoofed sources
//! would turn the server into an amplifier toward a victim.
//!
//! Pure apart from one mutex for the slots (taken once when a transfer starts and once when it
//! ends, never per block); time is passed in.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use citron_core::namespace::DutId;
use parking_lot::Mutex;

use super::packet::Packet;

/// Transfers running now: over every DUT, per DUT, and per client transfer ID (a retransmitted
/// RRQ must not start a second transfer).
#[derive(Debug)]
pub(super) struct Slots {
    max: usize,
    per_dut: usize,
    state: Mutex<SlotState>,
}

#[derive(Debug, Default)]
struct SlotState {
    total: usize,
    per_dut: HashMap<DutId, usize>,
    active: HashSet<SocketAddr>,
}

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NoSlot {
    /// This client transfer ID already has a transfer (its RRQ was retransmitted).
    Running,
    /// Every slot of the server is taken.
    Full,
    /// Every slot of this DUT is taken.
    DutFull,
}

impl Slots {
    /// At most `max` transfers in all and `per_dut` per DUT (each at least 1).
    pub(super) fn new(max: usize, per_dut: usize) -> Arc<Slots> {
        Arc::new(Slots { max: max.max(1), per_dut: per_dut.max(1), state: Mutex::default() })
    }

    /// A slot for a transfer to `peer`, which is `dut`; freed when the [`Slot`] is dropped.
    pub(super) fn take(self: &Arc<Self>, peer: SocketAddr, dut: DutId) -> Result<Slot, NoSlot> {
        let mut s = self.state.lock();
        if s.active.contains(&peer) {
            return Err(NoSlot::Running);
        }
        if s.total >= self.max {
            return Err(NoSlot::Full);
        }
        let n = s.per_dut.entry(dut.clone()).or_insert(0);
        if *n >= self.per_dut {
            return Err(NoSlot::DutFull);
        }
        *n += 1;
        s.total += 1;
        s.active.insert(peer);
        Ok(Slot { slots: self.clone(), peer, dut })
    }

    #[cfg(test)]
    fn running(&self) -> (usize, usize) {
        let s = self.state.lock();
        (s.total, s.per_dut.len())
    }
}

/// One transfer's slot, held by its task however the task ends.
#[derive(Debug)]
pub(super) struct Slot {
    slots: Arc<Slots>,
    peer: SocketAddr,
    dut: DutId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.state.lock();
        s.total -= 1;
        s.active.remove(&self.peer);
        if let Some(n) = s.per_dut.get_mut(&self.dut) {
            *n -= 1;
            if *n == 0 {
                s.per_dut.remove(&self.dut);
            }
        }
    }
}

/// At most `per_sec` answers per one-second window (to sources that are no DUT); the rest are
/// dropped without a word.
#[derive(Debug)]
pub(super) struct Budget {
    per_sec: u32,
    window: Instant,
    used: u32,
}

impl Budget {
    pub(super) fn new(per_sec: u32, now: Instant) -> Budget {
        Budget { per_sec, window: now, used: 0 }
    }

    /// May one more answer go out now?
    pub(super) fn allow(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.used = 0;
        }
        if self.used >= self.per_sec {
            return false;
        }
        self.used += 1;
        true
    }
}

/// How long a source (or DUT) logged once stays quiet.
pub(super) const LOG_PERIOD: Duration = Duration::from_secs(60);
/// Sources remembered per period; past that, requests are only counted in the period's summary,
/// so a flood of spoofed addresses costs bounded memory and log.
pub(super) const LOG_KEYS_MAX: usize = 1024;

/// Logs a kind of event once per key per [`LOG_PERIOD`], not once per packet.
#[derive(Debug)]
pub(super) struct LogOnce<K> {
    period: Instant,
    seen: HashSet<K>,
    quiet: u64,
}

/// What [`LogOnce::note`] says to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Note {
    /// Log this event.
    pub log: bool,
    /// A period ended in which this many events were not logged: say so once.
    pub quiet_before: u64,
}

impl<K: Hash + Eq> LogOnce<K> {
    pub(super) fn new(now: Instant) -> LogOnce<K> {
        LogOnce { period: now, seen: HashSet::new(), quiet: 0 }
    }

    /// An event for `key` happened now.
    pub(super) fn note(&mut self, key: K, now: Instant) -> Note {
        let mut quiet_before = 0;
        if now.saturating_duration_since(self.period) >= LOG_PERIOD {
            quiet_before = std::mem::take(&mut self.quiet);
            self.seen.clear();
            self.period = now;
        }
        let log = self.seen.len() < LOG_KEYS_MAX && self.seen.insert(key);
        if !log {
            self.quiet += 1;
        }
        Note { log, quiet_before }
    }
}

/// `p` cut so that its wire form is no larger than the `request` bytes it answers (an ERROR's
/// message is shortened; `None` when not even an empty ERROR fits): a source address cannot be
/// made to receive more than was sent in its name.
pub(super) fn no_larger(p: Packet, request: usize) -> Option<Packet> {
    match p {
        // Opcode, code, message, NUL.
        Packet::Error { code, mut message } => {
            let room = request.checked_sub(5)?;
            if message.len() > room {
                let mut end = room;
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                message.truncate(end);
            }
            Some(Packet::Error { code, message })
        }
        other => Some(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tftp::packet::{encode, ErrorCode};

    fn peer(i: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, i], port))
    }

    #[test]
    fn slots_are_per_dut_and_global_and_freed_on_drop() {
        let s = Slots::new(3, 2);
        let a1 = s.take(peer(2, 1), "a".into()).unwrap();
        assert_eq!(s.take(peer(2, 1), "a".into()).unwrap_err(), NoSlot::Running);
        let a2 = s.take(peer(2, 2), "a".into()).unwrap();
        assert_eq!(s.take(peer(2, 3), "a".into()).unwrap_err(), NoSlot::DutFull);
        let b1 = s.take(peer(3, 1), "b".into()).unwrap();
        assert_eq!(s.take(peer(4, 1), "c".into()).unwrap_err(), NoSlot::Full);
        drop(a1);
        let a3 = s.take(peer(2, 3), "a".into()).unwrap();
        drop((a2, a3, b1));
        assert_eq!(s.running(), (0, 0), "nothing is kept for DUTs with no transfer");
    }

    #[test]
    fn budget_refills_each_second() {
        let t0 = Instant::now();
        let mut b = Budget::new(2, t0);
        assert!(b.allow(t0) && b.allow(t0));
        assert!(!b.allow(t0 + Duration::from_millis(999)));
        assert!(b.allow(t0 + Duration::from_secs(1)));
        let mut none = Budget::new(0, t0);
        assert!(!none.allow(t0));
    }

    #[test]
    fn log_once_per_key_per_period() {
        let t0 = Instant::now();
        let mut l = LogOnce::new(t0);
        assert_eq!(l.note(1, t0), Note { log: true, quiet_before: 0 });
        assert_eq!(l.note(1, t0), Note { log: false, quiet_before: 0 });
        assert!(l.note(2, t0).log);
        assert_eq!(l.note(1, t0 + LOG_PERIOD), Note { log: true, quiet_before: 1 });
        for k in 0..(LOG_KEYS_MAX as u32 + 10) {
            l.note(k + 10, t0 + LOG_PERIOD);
        }
        assert!(l.seen.len() <= LOG_KEYS_MAX);
    }

    #[test]
    fn errors_are_no_larger_than_the_request() {
        let e = |m: &str| Packet::Error { code: ErrorCode::FILE_NOT_FOUND, message: m.into() };
        for n in 0..40 {
            match no_larger(e("ééé file not found, and a long explanation"), n) {
                None => assert!(n < 5),
                Some(p) => {
                    let mut b = bytes::BytesMut::new();
                    encode(&p, &mut b);
                    assert!(b.len() <= n, "{n}: {p:?}");
                }
            }
        }
        assert_eq!(no_larger(e("ok"), 100), Some(e("ok")));
    }
}
