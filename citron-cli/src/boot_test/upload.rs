//! `--results-job`: each run's outcome as a run of a remote citron's results store.
//!
//! One run per DUT (per image and firmware), opened once the boots are over so that a run is
//! never left `running` by a boot-test that could not run: its status is the verdict
//! (`success` or `failure`), its files `boot-test.json` (the stage timings, citron's view of
//! the disk, the failure and its line: the run's entry of `boot-test-results.json`) and
//! `junit.xml` (the run's own test case), and its console the DUT's console log. Everything
//! goes through `citron-client`, the client of `citron results …` and Python's
//! `citron.Client`: the server and token come from the same `--server` / `$CITRON_SERVER` and
//! `--token-file` / `$CITRON_TOKEN`.

use std::io::Read as _;

use bytes::Bytes;
use citron_client::{Client, Status, Upload};

use super::image::Firmware;
use super::plan::{Boot, Target};
use super::report::{self, RunReport};
use super::BootTestError;

/// One console append carries at most this much (the API's body limit is larger).
const CONSOLE_CHUNK: usize = 1 << 20;

/// A console log longer than this is uploaded up to here (the results store's bound).
const CONSOLE_MAX_BYTES: u64 = citron_lab::results::CONSOLE_MAX_BYTES;

/// Where runs go: the client and what every run says.
pub(super) struct Results {
    pub(super) client: Client,
    pub(super) job: String,
    pub(super) revision: Option<String>,
    pub(super) platform: Option<String>,
}

/// What a run is called on the server: its id and where to see it.
pub(super) struct Uploaded {
    pub(super) dut: String,
    pub(super) run: i64,
    pub(super) status: Status,
}

impl Results {
    /// The platform a target's run is filed under: `--platform`, and for an image the firmware
    /// it booted under (`x86_64/uefi`, or `uefi` alone), so that `latest?platform=` picks one
    /// firmware's runs of a matrix.
    fn platform(&self, t: &Target) -> Option<String> {
        let firmware = match &t.boot {
            Boot::Image(run) => Some(match run.firmware {
                Firmware::Bios => "bios",
                Firmware::Uefi => "uefi",
            }),
            Boot::Job(_) => None,
        };
        match (&self.platform, firmware) {
            (Some(p), Some(f)) => Some(format!("{p}/{f}")),
            (Some(p), None) => Some(p.clone()),
            (None, f) => f.map(str::to_string),
        }
    }

    /// Opens, fills and finishes one run per report.
    pub(super) async fn upload(&self, targets: &[Target], reports: &[RunReport]) -> Result<Vec<Uploaded>, BootTestError> {
        let mut done = Vec::new();
        for (t, r) in targets.iter().zip(reports) {
            done.push(self.upload_one(t, r).await.map_err(|e| BootTestError::Results(format!("{}: {e}", r.id)))?);
        }
        Ok(done)
    }

    async fn upload_one(&self, t: &Target, r: &RunReport) -> Result<Uploaded, String> {
        let c = &self.client;
        let job = self.job.as_str();
        let run = c
            .open_run(job, self.revision.as_deref(), self.platform(t).as_deref())
            .await
            .map_err(|e| format!("cannot open a run of {job}: {e}"))?;
        let json = serde_json::to_vec_pretty(&r.json()).unwrap_or_default();
        let xml = report::junit(std::slice::from_ref(r), &report::timestamp(), &report::hostname()).map_err(|e| e.to_string())?;
        for (path, bytes) in [("boot-test.json", json), ("junit.xml", xml)] {
            c.upload(job, run.id, path, Upload::Bytes(Bytes::from(bytes))).await.map_err(|e| format!("cannot upload {path}: {e}"))?;
        }
        self.console(run.id, r).await?;
        let status = if r.result.is_ok() { Status::Success } else { Status::Failure };
        c.finish(job, run.id, status).await.map_err(|e| format!("cannot finish run {}: {e}", run.id))?;
        Ok(Uploaded { dut: r.id.0.clone(), run: run.id, status })
    }

    /// Appends the console log in pieces, up to the store's bound.
    async fn console(&self, run: i64, r: &RunReport) -> Result<(), String> {
        let f = std::fs::File::open(&r.log).map_err(|e| format!("{}: {e}", r.log.display()))?;
        let mut f = f.take(CONSOLE_MAX_BYTES);
        let mut offset = 0u64;
        loop {
            let mut buf = Vec::with_capacity(CONSOLE_CHUNK);
            (&mut f).take(CONSOLE_CHUNK as u64).read_to_end(&mut buf).map_err(|e| format!("{}: {e}", r.log.display()))?;
            if buf.is_empty() {
                return Ok(());
            }
            offset = self
                .client
                .append_console(&self.job, run, offset, Bytes::from(buf))
                .await
                .map_err(|e| format!("cannot append the console at {offset}: {e}"))?;
        }
    }
}
