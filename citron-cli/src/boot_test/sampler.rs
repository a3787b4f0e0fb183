//! What citron sees of a DUT while it boots, sampled from the gateway: its NBD connection's
//! progress (the in-flight view of the access log, for [`DiskTimes`]) and the phone-home, a
//! served read of `_citron/ready` in its access log.

use std::sync::Arc;
use std::time::Duration;

use citron_core::access::Outcome;
use citron_core::namespace::DutId;
use citron_core::Gateway;

use super::report::DiskTimes;

/// Watches a DUT in citron while it boots: its NBD connection's progress (for [`DiskTimes`])
/// and the phone-home, a served read of `_citron/ready`, from the access log.
pub(super) struct Sampler {
    task: tokio::task::JoinHandle<()>,
    disk: Arc<parking_lot::Mutex<DiskTimes>>,
}

/// How often the sampler looks.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

impl Sampler {
    pub(super) fn start(gw: Gateway, id: DutId, ready: tokio::sync::oneshot::Sender<()>) -> Sampler {
        let disk = Arc::new(parking_lot::Mutex::new(DiskTimes::default()));
        let started = std::time::SystemTime::now();
        let since = move |epoch: f64| {
            let at = std::time::UNIX_EPOCH + Duration::from_secs_f64(epoch.max(0.0));
            at.duration_since(started).unwrap_or(Duration::ZERO)
        };
        let mut after = gw.accesses(&id).ok().and_then(|v| v.last().map(|r| r.seq)).unwrap_or(0);
        let shared = disk.clone();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready);
            loop {
                for f in gw.in_flight(&id).unwrap_or_default().into_iter().filter(|f| f.protocol == "nbd") {
                    let mut d = shared.lock();
                    d.connected.get_or_insert(since(f.time));
                    if let Some(first) = f.first_byte {
                        d.first_read.get_or_insert(since(first));
                    }
                    d.sample(started.elapsed().unwrap_or_default(), f.bytes);
                }
                for rec in gw.accesses_page(&id, after, 100).unwrap_or_default() {
                    after = rec.seq;
                    let phoned = rec.path.trim_start_matches('/') == citron_core::bootfiles::READY && rec.outcome == Outcome::Served;
                    if phoned {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                    }
                }
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        });
        Sampler { task, disk }
    }

    pub(super) fn stop(self) -> DiskTimes {
        self.task.abort();
        let d = self.disk.lock().clone();
        d
    }
}
