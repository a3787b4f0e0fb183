//! Durations counted in fixed buckets: what `/metrics` turns into Prometheus histograms.
//!
//! The core only counts, as it does for requests and bytes ([`crate::access`]): it knows
//! nothing of Prometheus. A [`Timings`] is a set of atomic counters, so that observing a
//! transfer's duration on the hot path costs a few relaxed additions and no lock; the lab reads
//! a [`TimingSnapshot`] at each scrape and encodes it as a histogram.
//!
//! ```
//! use std::time::Duration;
//! use citron_core::timing::Timings;
//! let t = Timings::default();
//! t.observe(Duration::from_millis(3));
//! t.observe(Duration::from_secs(2));
//! let s = t.snapshot();
//! assert_eq!(s.count, 2);
//! // Cumulative counts: every bucket at or above 5 ms holds the first one.
//! assert_eq!(s.buckets.iter().find(|(le, _)| *le == 0.005).unwrap().1, 1);
//! assert_eq!(s.buckets.last().unwrap().1, 2);
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The upper bounds of the buckets, in seconds: from a cached 1 KiB answer (well under a
/// millisecond) to a disk image streamed for minutes.
pub const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0];

/// Durations counted by bucket (lock-free).
#[derive(Debug, Default)]
pub struct Timings {
    /// Observations per bucket (not cumulative); the last slot holds those above every bound.
    counts: [AtomicU64; BUCKETS.len() + 1],
    /// Sum of every observation, in nanoseconds (584 years fit in a u64).
    sum_nanos: AtomicU64,
}

/// A [`Timings`] read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct TimingSnapshot {
    /// `(upper bound in seconds, observations at or below it)`, cumulative, as Prometheus
    /// histograms count; the `+Inf` bucket is [`count`](Self::count).
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the observations, in seconds.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Timings {
    /// Counts one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS.iter().position(|&le| secs <= le).unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The counts so far (cumulative by bucket).
    pub fn snapshot(&self) -> TimingSnapshot {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(BUCKETS.len());
        for (i, le) in BUCKETS.iter().enumerate() {
            total += self.counts[i].load(Ordering::Relaxed);
            buckets.push((*le, total));
        }
        total += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        TimingSnapshot { buckets, sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9, count: total }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_inclusive_and_overflow_counts_in_the_total_only() {
        let t = Timings::default();
        t.observe(Duration::from_millis(1));
        t.observe(Duration::from_secs(3600));
        let s = t.snapshot();
        assert_eq!(s.buckets[0], (0.0005, 0));
        assert_eq!(s.buckets[1], (0.001, 1));
        assert_eq!(s.buckets.last().unwrap(), &(600.0, 1));
        assert_eq!(s.count, 2);
        assert!((s.sum - 3600.001).abs() < 1e-6, "{}", s.sum);
    }
}
