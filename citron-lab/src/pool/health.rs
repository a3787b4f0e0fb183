//! Health jobs: a DUT given back returns to the pool only once it passed the health job of its
//! tags (`pool.health_jobs`; none: at once).
//!
//! The verdict is the health job's run (the job must have `results:`): the job is set on the
//! DUT (a `job_start`), the DUT power-cycled (`power.cycle` when it has one, else off and on;
//! a VM's QEMU started again) and its state is `checking` until the run ends. The DUT finishes
//! it itself, with its `{{ upload_token }}` on the results API (or anyone with a `job_end`
//! event and a status): `success` passes (`job_end`, power off, `free`); anything else, or no
//! end within `pool.health_timeout`, quarantines it with the reason and the run's console
//! (the last [`OUTPUT_MAX_BYTES`]) as the output. A gateway restarted meanwhile runs the
//! health job again.

use std::path::PathBuf;
use std::time::Instant;

use citron_core::lifetime::Event;
use citron_core::namespace::DutId;
use serde_json::json;

use super::power::OUTPUT_MAX_BYTES;
use super::request::DutAttrs;
use super::{store, Pool};
use crate::results::Status;

/// A health job under way on a DUT.
#[derive(Debug, Clone)]
pub(super) struct Check {
    file: PathBuf,
    job: String,
    run: i64,
    since: Instant,
}

impl Pool {
    /// The health job file of `dut`: the first of its tags that has one.
    pub(super) fn health_job(&self, dut: &DutAttrs) -> Option<PathBuf> {
        dut.tags.iter().find_map(|t| self.settings.health_jobs.get(t).cloned())
    }

    /// Starts the health job `file` on `dut` (in `from`: `recycling`, or `checking` after a
    /// restart): set, `job_start`, power-cycled, `checking`.
    pub(super) async fn start_check(&self, dut: DutAttrs, file: PathBuf, from: &'static str) {
        let id = DutId::from(dut.id.as_str());
        let shown = file.display().to_string();
        if let Err(e) = self.gateway.set_trusted_job_file(&id, &file).await {
            return self.quarantine(&dut, from, format!("its health job {shown} cannot be set: {e}"), String::new()).await;
        }
        let run = match self.vms.runs().open_of_dut(&dut.id).await {
            Ok(Some((run, job, _, _))) => (run, job),
            Ok(None) => {
                let reason = format!("its health job {shown} has no `results:`: its run's status is the health job's verdict");
                return self.quarantine(&dut, from, reason, String::new()).await;
            }
            Err(e) => return self.quarantine(&dut, from, format!("the health job's run cannot be read: {e}"), String::new()).await,
        };
        let _ = self.gateway.event(&id, Event::JobStart);
        if let Err(f) = self.power("cycle", &dut).await {
            return self.quarantine(&dut, from, f.reason, f.output).await;
        }
        let d = dut.id.clone();
        if from != "checking" {
            let _ = crate::auth::call(&self.db, move |pool| store::move_dut(pool, d, from, "checking", None, None)).await;
        }
        self.checks.lock().await.insert(dut.id.clone(), Check { file, job: run.1.clone(), run: run.0, since: Instant::now() });
        self.emit_dut("dut_checking", &dut.id, json!({"health_job": shown, "job": run.1, "run": run.0}));
    }

    /// Decides a DUT in `checking`: its run passed (free), failed or took too long
    /// (quarantined); still running: nothing. One this gateway does not know (restarted):
    /// its health job again.
    pub(super) async fn judge(&self, dut: DutAttrs) {
        let check = self.checks.lock().await.get(&dut.id).cloned();
        let Some(c) = check else {
            if let Some(file) = self.health_job(&dut) {
                self.start_check(dut, file, "checking").await;
            } else {
                self.pass_check(&dut).await;
            }
            return;
        };
        let status = match self.vms.runs().get(&c.job, c.run).await {
            Ok(Some(r)) => r.status,
            Ok(None) => Status::Unknown,
            Err(e) => {
                tracing::warn!(dut = %dut.id, error = %e, "pool: the health job's run cannot be read; trying again");
                return;
            }
        };
        let timeout = self.settings.health_timeout.get();
        let reason = match status {
            Status::Success => {
                self.checks.lock().await.remove(&dut.id);
                return self.pass_check(&dut).await;
            }
            Status::Running if c.since.elapsed() < timeout => return,
            Status::Running => format!("its health job {} did not finish within {}s", c.file.display(), timeout.as_secs_f64()),
            other => format!("its health job {} ended with {} (run {} of {})", c.file.display(), other.name(), c.run, c.job),
        };
        self.checks.lock().await.remove(&dut.id);
        let id = DutId::from(dut.id.as_str());
        let _ = self.gateway.end_run(&id, "failure").await;
        let console = self.vms.runs().console(c.run).await.unwrap_or_default();
        let tail = console.len().saturating_sub(OUTPUT_MAX_BYTES as usize);
        let output = String::from_utf8_lossy(&console[tail..]).into_owned();
        self.quarantine(&dut, "checking", reason, output).await;
    }

    /// Passed: `job_end`, power off, free.
    async fn pass_check(&self, dut: &DutAttrs) {
        let id = DutId::from(dut.id.as_str());
        let _ = self.gateway.event(&id, Event::JobEnd);
        match self.power("off", dut).await {
            Ok(()) => {
                let d = dut.id.clone();
                let _ = crate::auth::call(&self.db, move |pool| store::move_dut(pool, d, "checking", "free", None, None)).await;
                self.emit_dut("dut_recycled", &dut.id, json!({"health": "passed"}));
                self.pass().await;
            }
            Err(f) => self.quarantine(dut, "checking", f.reason, f.output).await,
        }
    }

    /// Takes `dut` (in state `from`) out of the pool with `reason` and `output`: its job ended,
    /// powered off (as far as that goes).
    pub(super) async fn quarantine(&self, dut: &DutAttrs, from: &'static str, reason: String, output: String) {
        tracing::warn!(dut = %dut.id, %reason, "pool: the DUT is quarantined");
        let id = DutId::from(dut.id.as_str());
        if self.gateway.job_record(&id).is_some() {
            let _ = self.gateway.event(&id, Event::JobEnd);
        }
        if let Err(f) = self.power("off", dut).await {
            tracing::warn!(dut = %dut.id, reason = %f.reason, "pool: a quarantined DUT could not be powered off");
        }
        let (d, r, o) = (dut.id.clone(), reason.clone(), output.clone());
        let _ = crate::auth::call(&self.db, move |pool| store::move_dut(pool, d, from, "quarantined", Some(r), Some(o))).await;
        self.emit_dut("dut_quarantined", &dut.id, json!({"reason": reason, "output": output}));
    }
}
