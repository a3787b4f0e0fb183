//! The DUTs whose job is being loaded, so that their requests wait for it instead of being
//! answered "not found".
//!
//! A U-Boot DUT that asks for its kernel over TFTP a second before `citron serve` has fetched it
//! gives up on "file not found", while a DUT whose request is simply answered a few seconds later
//! boots. So a load marks its DUT ([`Loading::mark`]) until the job serves or fails, a lab that
//! is starting marks every DUT it is about to load ([`Gateway::expect_job`](super::Gateway::expect_job)),
//! and a request of a marked DUT with no job serving waits (at most `limits.job_wait`) before it
//! is answered.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::namespace::DutId;

/// Marked DUTs, with how many marks each has (a start-up mark and a load may overlap).
#[derive(Debug)]
pub(super) struct Loading {
    marks: Mutex<HashMap<DutId, usize>>,
    /// Marks over every DUT: 0 is the common case, checked without the lock on every request.
    total: AtomicUsize,
    /// Bumped whenever a mark goes, to wake the waiters.
    changed: watch::Sender<u64>,
    /// Start-ups in progress ([`Starting`]): the lab is ready when there are none.
    starting: AtomicUsize,
}

impl Default for Loading {
    fn default() -> Self {
        Loading { marks: Mutex::default(), total: AtomicUsize::new(0), changed: watch::Sender::new(0), starting: AtomicUsize::new(0) }
    }
}

impl Loading {
    /// Marks `dut` as loading until the returned mark is dropped.
    pub(super) fn mark(self: &Arc<Self>, dut: &DutId) -> LoadMark {
        *self.marks.lock().entry(dut.clone()).or_default() += 1;
        self.total.fetch_add(1, Ordering::SeqCst);
        LoadMark { loading: self.clone(), dut: dut.clone() }
    }

    /// Whether nothing is loading at all (one atomic load: the hot path).
    pub(super) fn idle(&self) -> bool {
        self.total.load(Ordering::SeqCst) == 0
    }

    /// Whether `dut` is marked.
    pub(super) fn is_loading(&self, dut: &DutId) -> bool {
        !self.idle() && self.marks.lock().contains_key(dut)
    }

    /// The lab is starting until the returned guard is dropped.
    pub(super) fn starting(self: &Arc<Self>) -> Starting {
        self.starting.fetch_add(1, Ordering::SeqCst);
        Starting { loading: self.clone() }
    }

    /// Whether no start-up is in progress.
    pub(super) fn ready(&self) -> bool {
        self.starting.load(Ordering::SeqCst) == 0
    }

    /// Completes once `dut` is no longer marked, or after `bound`.
    pub(super) fn wait(self: &Arc<Self>, dut: DutId, bound: Duration) -> impl Future<Output = ()> + Send + 'static {
        // Subscribed before the check: a mark dropped in between still wakes it.
        let mut rx = self.changed.subscribe();
        let me = self.clone();
        async move {
            let _ = tokio::time::timeout(bound, async {
                while me.is_loading(&dut) {
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            })
            .await;
        }
    }
}

/// The lab is starting (loading the jobs it was started with) while this lives:
/// [`Gateway::ready`](super::Gateway::ready) is `false`.
#[derive(Debug)]
pub struct Starting {
    loading: Arc<Loading>,
}

impl Drop for Starting {
    fn drop(&mut self) {
        self.loading.starting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `dut` is loading while this lives.
#[derive(Debug)]
pub struct LoadMark {
    loading: Arc<Loading>,
    dut: DutId,
}

impl Drop for LoadMark {
    fn drop(&mut self) {
        {
            let mut marks = self.loading.marks.lock();
            if let Some(n) = marks.get_mut(&self.dut) {
                *n -= 1;
                if *n == 0 {
                    marks.remove(&self.dut);
                }
            }
        }
        self.loading.total.fetch_sub(1, Ordering::SeqCst);
        self.loading.changed.send_modify(|v| *v += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiter_wakes_when_the_last_mark_goes_and_not_before() {
        let l = Arc::new(Loading::default());
        let d = DutId::from("d");
        assert!(l.idle());
        let (a, b) = (l.mark(&d), l.mark(&d));
        assert!(l.is_loading(&d) && !l.is_loading(&DutId::from("other")));
        let w = tokio::spawn(l.wait(d.clone(), Duration::from_secs(600)));
        drop(a);
        tokio::task::yield_now().await;
        assert!(l.is_loading(&d), "one mark left");
        drop(b);
        w.await.unwrap();
        assert!(l.idle() && !l.is_loading(&d));
    }

    #[tokio::test]
    async fn the_wait_is_bounded() {
        let l = Arc::new(Loading::default());
        let d = DutId::from("d");
        let _m = l.mark(&d);
        l.wait(d.clone(), Duration::from_millis(20)).await;
        assert!(l.is_loading(&d), "returned on its bound, the DUT still loading");
    }
}
