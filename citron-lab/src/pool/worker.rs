//! What each gateway does for the DUTs it serves: start the allocated ones that carry a job
//! (set the job, `job_start`, power on), recycle the ones given back (`job_end`, power off,
//! free). A power command that fails or hangs quarantines the DUT with its reason and output;
//! a DUT that could not start sends its reservation back to its place in the queue, where the
//! next pass gives it another DUT.
//!
//! A DUT with a health job (per tag, `pool.health_jobs`) runs it between `recycling` and `free`
//! (`health.rs`). A DUT allocated without a job stays off until its holder sets one through the
//! DUT route ([`Pool::job_set`]): then it is powered on with it (power-cycled if it was on).

use citron_core::job::Origin;
use citron_core::lab::DutKind;
use citron_core::lifetime::Event;
use citron_core::namespace::DutId;
use serde_json::json;

use super::request::DutAttrs;
use super::{power, store, Pool};

impl Pool {
    /// Starts and recycles the DUTs this gateway serves.
    ///
    /// The DUTs of each state are handled at once, not one after the other: ten DUTs given
    /// back together wait for one power command's time, not ten.
    pub(super) async fn work(&self) {
        use futures::future::join_all;
        let starting = crate::auth::call(&self.db, |pool| store::in_state(pool, "starting")).await.unwrap_or_default();
        join_all(starting.into_iter().filter_map(|(dut, res, job)| match (res, self.serves(&dut)) {
            (Some(res), true) => Some(self.start(dut, res, job)),
            _ => None,
        }))
        .await;
        let recycling = crate::auth::call(&self.db, |pool| store::in_state(pool, "recycling")).await.unwrap_or_default();
        join_all(recycling.into_iter().filter(|(dut, _, _)| self.serves(dut)).map(|(dut, _, _)| self.recycle(dut))).await;
        let checking = crate::auth::call(&self.db, |pool| store::in_state(pool, "checking")).await.unwrap_or_default();
        join_all(checking.into_iter().filter(|(dut, _, _)| self.serves(dut)).map(|(dut, _, _)| self.judge(dut))).await;
    }

    /// Its holder set a job on the DUT `id` (the DUT route): a DUT of the pool held by a
    /// reservation gets its `job_start` and is powered on (power-cycled if it was on).
    pub async fn job_set(&self, id: &str) {
        let Ok(duts) = crate::auth::call(&self.db, |pool| store::in_state(pool, "allocated")).await else { return };
        let Some((dut, Some(res), _)) = duts.into_iter().find(|(d, _, _)| d.id == id) else { return };
        if !self.serves(&dut) {
            return;
        }
        let _ = self.gateway.event(&DutId::from(id), Event::JobStart);
        let what = if self.on.lock().map(|on| on.contains(id)).unwrap_or(false) { "cycle" } else { "on" };
        match self.power(what, &dut).await {
            Ok(()) => self.emit_dut("dut_powered", id, json!({"power": what, "reservation": res, "by": "job_set"})),
            Err(f) => self.start_failed(dut, res, f.reason, f.output).await,
        }
    }

    fn serves(&self, dut: &DutAttrs) -> bool {
        self.gateway.dut(&DutId::from(dut.id.as_str())).is_some()
    }

    /// Powers `dut` on, off or cycles it (`what`): a `vm` DUT's QEMU is started or stopped, a
    /// `baremetal` one's command runs (`cycle` without a command: `off`, then `on`).
    pub(super) async fn power(&self, what: &str, dut: &DutAttrs) -> Result<(), power::PowerFailure> {
        let done = self.power_of(what, dut).await;
        if let Ok(mut on) = self.on.lock() {
            match (what, &done) {
                ("off", _) => on.remove(&dut.id),
                (_, Ok(())) => on.insert(dut.id.clone()),
                _ => false,
            };
        }
        done
    }

    async fn power_of(&self, what: &str, dut: &DutAttrs) -> Result<(), power::PowerFailure> {
        let Some(d) = self.gateway.dut(&DutId::from(dut.id.as_str())) else { return Ok(()) };
        if d.kind == DutKind::Vm {
            if what != "on" {
                self.vms.off(&dut.id).await;
            }
            if what == "off" {
                return Ok(());
            }
            return self.vms.on(&d, &self.gateway.endpoints()).await;
        }
        let Some(p) = d.power else { return Ok(()) };
        let what = if what == "cycle" && p.cycle.is_none() { "cycle-on" } else { what };
        let cmd = match what {
            "on" => p.on,
            "cycle" => p.cycle,
            "cycle-on" => {
                if let Some(off) = &p.off {
                    power::run("off", off, dut, p.timeout.get()).await?;
                }
                p.on
            }
            _ => p.off,
        };
        let what = if what == "cycle-on" { "on" } else { what };
        match cmd {
            Some(cmd) => power::run(what, &cmd, dut, p.timeout.get()).await.map(|_| ()),
            None => Ok(()),
        }
    }

    async fn start(&self, dut: DutAttrs, res: i64, job: Option<String>) {
        let id = DutId::from(dut.id.as_str());
        let mut failed = None;
        if let Some(job) = job {
            let origin = format!("reservation:{res}");
            if let Err(e) = self.gateway.set_job_yaml(&id, &job, Origin::named(origin.clone())).await {
                failed = Some((format!("the reservation's job could not be set: {e}"), String::new()));
            } else {
                self.emit_dut("job_set", &dut.id, json!({"reservation": res}));
                let _ = self.gateway.event(&id, Event::JobStart);
            }
        }
        if failed.is_none() {
            if let Err(f) = self.power("on", &dut).await {
                failed = Some((f.reason, f.output));
            }
        }
        let d = dut.id.clone();
        match failed {
            None => {
                let _ = crate::auth::call(&self.db, move |pool| store::move_dut(pool, d, "starting", "allocated", None, None)).await;
            }
            Some((reason, output)) => self.start_failed(dut, res, reason, output).await,
        }
    }

    /// `dut` of reservation `res` could not start: quarantined, the reservation back in the
    /// queue at its place.
    async fn start_failed(&self, dut: DutAttrs, res: i64, reason: String, output: String) {
        tracing::warn!(dut = %dut.id, reservation = res, %reason, "pool: the DUT could not start; quarantined, the reservation waits for another");
        let id = DutId::from(dut.id.as_str());
        let _ = self.gateway.event(&id, Event::JobEnd);
        // A VM that started is stopped; a power command that just failed is not run again.
        self.vms.off(&dut.id).await;
        if let Ok(mut on) = self.on.lock() {
            on.remove(&dut.id);
        }
        let (r, o, d) = (reason.clone(), output.clone(), dut.id.clone());
        match crate::auth::call(&self.db, move |pool| store::requeue(pool, res, d, r, o)).await {
            Ok(token) => {
                if let Some(t) = token {
                    let _ = self.tokens.revoke(&t).await;
                }
            }
            Err(e) => tracing::error!(error = %e, "pool: cannot quarantine a DUT"),
        }
        self.emit_dut("dut_quarantined", &dut.id, json!({"reason": reason, "output": output, "reservation": res}));
        self.emit("reservation_requeued", "pool", json!({"reservation": res, "reason": reason}));
        self.pass().await;
    }

    async fn recycle(&self, dut: DutAttrs) {
        let id = DutId::from(dut.id.as_str());
        if self.gateway.job_record(&id).is_some() {
            let _ = self.gateway.event(&id, Event::JobEnd);
        }
        if let Some(file) = self.health_job(&dut) {
            return self.start_check(dut, file, "recycling").await;
        }
        let d = dut.id.clone();
        match self.power("off", &dut).await {
            Ok(()) => {
                let _ = crate::auth::call(&self.db, move |pool| store::move_dut(pool, d, "recycling", "free", None, None)).await;
                self.emit_dut("dut_recycled", &dut.id, json!({}));
                self.pass().await;
            }
            Err(f) => {
                tracing::warn!(dut = %dut.id, reason = %f.reason, "pool: power off failed; the DUT is quarantined");
                let (r, o) = (f.reason.clone(), f.output.clone());
                let _ =
                    crate::auth::call(&self.db, move |pool| store::move_dut(pool, d, "recycling", "quarantined", Some(r), Some(o))).await;
                self.emit_dut("dut_quarantined", &dut.id, json!({"reason": f.reason, "output": f.output}));
            }
        }
    }
}
