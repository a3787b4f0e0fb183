//! `citron boot-test`: boots a QEMU virtual DUT from an in-process citron, the way a real DUT
//! would boot from the lab, before the job goes to real hardware; or boots whole disk images
//! with citron as their disk, as an image build's test.
//!
//! # How a DUT reaches the in-process server
//! - Default: QEMU's user-mode network (slirp). The servers listen on 127.0.0.1 (free ports); the
//!   guest reaches them as 10.0.2.2, so the job's `{{ http_artifact_base }}` and friends say
//!   `10.0.2.2`. Slirp connects from the host's 127.0.0.1, so **the DUT under test is given the
//!   address 127.0.0.1 in the in-process copy of the lab** (any other DUT loses that address);
//!   the lab file itself is not changed.
//! - `--netns` (root, iproute2): a private network namespace for the servers (a bridge,
//!   198.18.77.1/24) and one per DUT (198.18.77.11, .12, ... joined by veth pairs); each QEMU
//!   runs in its DUT's namespace, so the server sees every DUT at its own address and several
//!   DUTs can boot at once, each with its own job. The range is used only inside these
//!   namespaces, which are deleted at the end (also on errors and Ctrl-C).
//!
//! # One boot
//! The lab sends the DUT a `boot` event (lifetimes and `reset_on: boot` disks reset, `continue`
//! is used from the second boot), then QEMU boots:
//! - a `--job`: from the network, `boot.ipxe` over `--proto` (iPXE ROM via DHCP `bootfile`);
//! - an `--image` ([`image`]): from its disk, the image served by citron over NBD with a
//!   copy-on-write overlay, through SeaBIOS or OVMF.
//!
//! The serial console is streamed to stdout and to a log file and fed to a [`watch::Watch`].
//! A boot passes when `--expect` matches a console line; without it, an image when the real
//! system reached userspace and a job when the guest powers off by itself; with `--ready
//! phone-home`, when the system read `_citron/ready` from citron. It fails at once on a line of
//! the [`catalogue`] (kernel panic, Oops, emergency shell, an initramfs giving up, bootloader
//! errors, …), on a KVM internal error, on QEMU exiting first, or on `--timeout`.
//!
//! # The pieces
//! - [`plan`]: what to boot: the options, the DUTs chosen for the jobs and their addresses.
//! - [`image`]: `--image`: firmware, formats, the job an image becomes, one DUT per run.
//! - [`qemu`]: the accelerator and its KVM → TCG fallback, the QEMU command line, starting QEMU.
//! - [`console`]: console lines, the log files, the loop that reads QEMU until a verdict.
//! - [`watch`]: the verdict of a boot and its stage timeline (pure).
//! - [`catalogue`]: what console lines mean: failures, warnings, userspace, stage markers (pure).
//! - [`report`]: stage timings, the summary table, JUnit and `boot-test-results.json`.
//! - [`sampler`]: what citron sees of a DUT while it boots (disk reads, the phone-home).
//! - [`netns`]: the network namespaces of `--netns` and of matrices.
//! - [`upload`]: `--results-job`: each DUT's outcome as a run of a results store.
//!
//! This file is the flow: resolve the plan, set up namespaces and a runtime, start the servers,
//! load the jobs, boot every DUT `--boots` times while a [`Sampler`] watches it in citron
//! (its disk reads, the phone-home), report.

mod catalogue;
mod console;
mod image;
mod netns;
mod plan;
mod qemu;
mod report;
mod sampler;
#[cfg(test)]
mod tests;
mod upload;
mod watch;

pub use plan::BootTestArgs;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use citron_core::job::{JobDescription, JobErrors};
use citron_core::lab::LabConfig;
use citron_core::lifetime::Event;
use citron_core::namespace::DutId;
use citron_core::serve::Protocol;
use citron_core::{Endpoints, Gateway, GatewayError};
use citron_lab::server::ServerBuilder;
use regex::Regex;

use catalogue::Catalogue;
use console::{log_line, open_logs, Console, Log, POWEROFF_GRACE};
use image::{Firmware, ImageRun, ImageSource};
use netns::{Netns, NETNS_SERVER};
use plan::{find_program, pick_targets, Boot, Plan, Proto, ReadyOn, Target};
use qemu::{boot_once, qemu_args, Accel, Medium, QemuSpec, SLIRP_HOST};
use report::{hostname, timestamp, RunReport};
use sampler::Sampler;
use watch::{Failure, Ready, Watch};

/// Exit codes of `boot-test`, shown at the end of its `--help`.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  every boot of every DUT passed (--expect seen; without it: an image reached userspace, a job
     powered off cleanly; or the system phoned home with --ready phone-home)
  1  a boot failed; the last line on stderr says why (timeout, a catalogue line such as
     kernel panic or emergency shell with the line, pattern never seen, nothing to boot, QEMU
     exited)
  2  the test could not run: usage error, bad lab or job, QEMU missing, servers or network
     namespaces could not be set up, or (--results-job) the outcome could not be uploaded";

/// Why the test could not run (exit 2) or a boot failed (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum BootTestError {
    /// Bad combination of options.
    #[error("{0}")]
    Usage(String),
    /// No QEMU.
    #[error("{0} not found; install qemu-system-x86 (scripts/setup-debian.sh --qemu) or pass --qemu PATH")]
    QemuMissing(PathBuf),
    /// `--expect` or `--allow` is no regular expression.
    #[error("{flag} {pattern:?} is not a valid regular expression: {source}")]
    BadPattern {
        /// Which option.
        flag: String,
        /// What was given.
        pattern: String,
        /// Why it does not compile.
        source: regex::Error,
    },
    /// The lab file.
    #[error(transparent)]
    Lab(#[from] citron_core::lab::LabErrors),
    /// A job description is invalid.
    #[error("{0}")]
    Job(JobErrors),
    /// The gateway refused (data directory, fetching artifacts).
    #[error("{0}")]
    Gateway(GatewayError),
    /// The servers did not start.
    #[error("cannot start the servers: {0}")]
    Server(String),
    /// The network namespaces.
    #[error("network namespaces: {0} (--netns needs root and iproute2)")]
    Netns(String),
    /// A log file or the temporary data directory.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Ctrl-C or SIGTERM.
    #[error("interrupted")]
    Interrupted,
    /// `--results-job`: the results server refused or could not be reached.
    #[error("results: {0}")]
    Results(String),
    /// A boot failed.
    #[error("{dut}: boot {boot} of {boots}: {failure} (console log: {})", log.display())]
    Boot {
        /// Which DUT.
        dut: DutId,
        /// Which boot (1-based).
        boot: u32,
        /// Of how many.
        boots: u32,
        /// What went wrong.
        failure: Failure,
        /// The console log.
        log: PathBuf,
    },
}

impl BootTestError {
    /// 1 for a failed boot, 2 when the test could not run.
    pub fn exit_code(&self) -> u8 {
        match self {
            BootTestError::Boot { .. } => 1,
            _ => 2,
        }
    }
}

/// Runs `citron boot-test`: prints the console on stdout, progress and the verdict on stderr.
pub fn run(args: BootTestArgs) -> ExitCode {
    match run_inner(args) {
        Ok(summary) => {
            eprintln!("citron boot-test: PASS: {summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let msg = e.to_string();
            // Job errors are several lines (file:line:col each); everything else is one line.
            if let BootTestError::Job(_) = e {
                eprintln!("{msg}");
                eprintln!("citron boot-test: ERROR: the job description is invalid");
            } else {
                let kind = if e.exit_code() == 1 { "FAIL" } else { "ERROR" };
                eprintln!("citron boot-test: {kind}: {}", msg.replace('\n', "; "));
            }
            ExitCode::from(e.exit_code())
        }
    }
}

fn regex(flag: &str, p: &str) -> Result<Regex, BootTestError> {
    Regex::new(p).map_err(|source| BootTestError::BadPattern { flag: flag.to_string(), pattern: p.to_string(), source })
}

/// The results store of `--results-job`, checked before anything boots (a bad server URL or
/// token file is a usage error, not a lost outcome after the boots).
fn results(args: &BootTestArgs) -> Result<Option<upload::Results>, BootTestError> {
    let Some(job) = &args.results_job else { return Ok(None) };
    let client = crate::client::client(&args.remote).map_err(|e| BootTestError::Usage(format!("--results-job: {e:#}")))?;
    Ok(Some(upload::Results { client, job: job.clone(), revision: args.revision.clone(), platform: args.platform.clone() }))
}

fn run_inner(args: BootTestArgs) -> Result<String, BootTestError> {
    let expect = args.expect.as_deref().map(|p| regex("--expect", p)).transpose()?;
    let allow = args.allow.iter().map(|p| regex("--allow", p)).collect::<Result<Vec<_>, _>>()?;
    let qemu = find_program(&args.qemu).ok_or_else(|| BootTestError::QemuMissing(args.qemu.clone()))?;
    let mut lab = match &args.lab {
        Some(p) => LabConfig::from_file(p)?,
        None => LabConfig::default_lab(),
    };
    let (targets, netns) = if args.images.is_empty() {
        let netns = args.netns || args.jobs.len() > 1;
        (pick_targets(&mut lab, &args.jobs, &args.duts, netns)?, netns)
    } else {
        if !args.duts.is_empty() {
            return Err(BootTestError::Usage("--dut goes with --job; an --image boots as a DUT of its own".into()));
        }
        let firmwares = if args.firmwares.is_empty() { vec![Firmware::Bios] } else { args.firmwares.clone() };
        let mut runs = Vec::new();
        for given in &args.images {
            let (pinned, image) = image::split_firmware(given);
            let source = ImageSource::parse(image, args.image_format)?;
            let under = pinned.map(|f| vec![f]).unwrap_or_else(|| firmwares.clone());
            runs.extend(under.into_iter().map(|f| ImageRun { source: source.clone(), firmware: f }));
        }
        if runs.iter().any(|r| r.firmware == Firmware::Uefi) {
            image::ovmf()?;
        }
        let netns = args.netns || runs.len() > 1;
        (image::image_targets(&mut lab, runs, netns)?, netns)
    };
    let logs = open_logs(&args.log_dir, &targets)?;
    let results = results(&args)?;

    // The namespaces must exist, and this thread must be in the servers' one, before the
    // runtime starts its threads: they inherit it, so every socket the servers open (TFTP opens
    // one per transfer) is in that namespace.
    let ns = if netns {
        if find_program(Path::new("ip")).is_none() {
            return Err(BootTestError::Netns("the `ip` command is missing; install iproute2".into()));
        }
        let ns = Netns::create(targets.len())?;
        let host = ns.enter_server()?;
        Some((ns, host))
    } else {
        None
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| BootTestError::Server(format!("cannot start the async runtime: {e}")))?;
    let catalogue = Arc::new(Catalogue::new(allow));
    let plan = Plan { args: &args, lab, qemu, expect, catalogue, netns: ns.as_ref().map(|(n, _)| n), targets: &targets, logs, results };
    let result = rt.block_on(async {
        tokio::select! {
            r = plan.execute() => r,
            _ = interrupted() => Err(BootTestError::Interrupted),
        }
    });
    // Kill leftover QEMUs (kill_on_drop) before the namespaces go away.
    rt.shutdown_timeout(Duration::from_secs(5));
    let reports = result?;
    let uploaded = match &plan.results {
        Some(results) => upload(results, ns.as_ref().map(|(_, host)| host), &targets, &reports),
        None => Ok(()),
    };
    // The namespaces go when `ns` does, after the report. A failed boot is the verdict even
    // when its upload failed too (said on stderr); a passed one whose upload failed is not a
    // pass.
    let verdict = plan.report(&reports)?;
    uploaded.map(|()| verdict)
}

/// Uploads the outcome from where boot-test was started (not from the servers' namespace),
/// with a runtime of its own.
fn upload(results: &upload::Results, host: Option<&netns::HostNs>, targets: &[Target], reports: &[RunReport]) -> Result<(), BootTestError> {
    if let Some(host) = host {
        host.enter()?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BootTestError::Server(format!("cannot start the async runtime: {e}")))?;
    match rt.block_on(results.upload(targets, reports)) {
        Ok(done) => {
            for u in done {
                status(&format!("{}: results: run {} of {} ({})", u.dut, u.run, results.job, u.status.name()));
            }
            Ok(())
        }
        Err(e) => {
            status(&e.to_string());
            Err(e)
        }
    }
}

impl Plan<'_> {
    /// Boots every target; the reports, in the targets' order.
    async fn execute(&self) -> Result<Vec<RunReport>, BootTestError> {
        let tmp;
        let data = match &self.args.data {
            Some(d) => d.clone(),
            None => {
                tmp = tempfile::Builder::new()
                    .prefix("citron-boot-test-")
                    .tempdir()
                    .map_err(|source| BootTestError::Io { path: std::env::temp_dir(), source })?;
                tmp.path().to_path_buf()
            }
        };
        let gw = citron_fetch::gateway(self.lab.clone(), &data).map_err(BootTestError::Gateway)?;

        let (bind, seen_as) = match self.netns {
            Some(_) => (IpAddr::V4(NETNS_SERVER), IpAddr::V4(NETNS_SERVER)),
            None => (IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V4(SLIRP_HOST)),
        };
        let any = SocketAddr::new(bind, 0);
        let server = ServerBuilder::new(gw.clone())
            .http(Some(any))
            .tftp(Some(any))
            .nbd(Some(any))
            .api(None)
            .start()
            .await
            .map_err(|e| BootTestError::Server(e.to_string()))?;
        let (http, tftp, nbd) = match (server.http_addr(), server.tftp_addr(), server.nbd_addr()) {
            (Some(h), Some(t), Some(n)) => (h.port(), t.port(), n.port()),
            _ => return Err(BootTestError::Server("a backend did not report its address".into())),
        };
        // What the guest sees, not where we listen: 10.0.2.2 under slirp.
        let seen = |p, port| (p, SocketAddr::new(seen_as, port));
        gw.set_endpoints(Endpoints::seen([seen(Protocol::HTTP, http), seen(Protocol::TFTP, tftp), seen(Protocol::NBD, nbd)], None));
        status(&format!("{} (DUTs reach it as {seen_as})", server.listening_line()));

        for t in self.targets {
            let job = match &t.boot {
                Boot::Job(path) => JobDescription::from_file(path).map_err(BootTestError::Job)?,
                Boot::Image(run) => {
                    let job = run.job()?;
                    report::write(&self.args.log_dir.join(format!("boot-test-{}.job.yaml", t.id)), run.job_yaml().as_bytes())?;
                    job
                }
            };
            match gw.set_trusted_job(&t.id, &job).await {
                Ok(()) => {}
                Err(GatewayError::Job(e)) => return Err(BootTestError::Job(e)),
                Err(e) => return Err(BootTestError::Gateway(e)),
            }
            status(&format!("{}: {} loaded; DUT address {}", t.id, t.label(), t.addr));
        }
        let (port, scheme) = match self.args.proto {
            Proto::Http => (http, "http"),
            Proto::Tftp => (tftp, "tftp"),
        };
        let net = Network {
            bootfile: format!("{scheme}://{seen_as}:{port}/boot.ipxe"),
            // QEMU itself is the NBD client: it connects from the host (or the DUT's namespace).
            nbd: format!("nbd://{bind}:{nbd}/{}", image::EXPORT),
            ready_url: format!("http://{seen_as}:{http}/{}", citron_core::bootfiles::READY),
            data,
        };

        let prefix = self.targets.len() > 1;
        let runs = self.targets.iter().zip(&self.logs).enumerate().map(|(i, (t, log))| {
            let gw = gw.clone();
            let ns = self.netns.map(|n| n.duts[i].clone());
            let net = &net;
            async move { self.boot_dut(&gw, t, log, net, ns, prefix).await }
        });
        let results = futures::future::join_all(runs).await;
        server.shutdown().await;
        let mut reports = Vec::new();
        for r in results {
            reports.push(r?);
        }
        Ok(reports)
    }

    /// Prints the timings and the summary, writes the JUnit and JSON outputs, and turns the
    /// first failed run into the error.
    fn report(&self, reports: &[RunReport]) -> Result<String, BootTestError> {
        for r in reports {
            if r.timeline.ready.is_some() || r.result.is_err() {
                status(&format!("{}: stages: {}", r.id, r.stages_line()));
            }
            if let Some(d) = r.disk_line() {
                status(&format!("{}: citron: {d}", r.id));
            }
            for (what, line) in &r.warnings {
                status(&format!("{}: warning: {what}: {line}", r.id));
            }
        }
        if reports.len() > 1 || !self.args.images.is_empty() {
            eprintln!("citron boot-test: summary\n{}", report::summary_table(reports));
        }
        let results: Vec<serde_json::Value> = reports.iter().map(RunReport::json).collect();
        let json = serde_json::to_vec_pretty(&results).unwrap_or_default();
        report::write(&self.args.log_dir.join("boot-test-results.json"), &json)?;
        if let Some(path) = &self.args.junit {
            let xml =
                report::junit(reports, &timestamp(), &hostname()).map_err(|source| BootTestError::Io { path: path.clone(), source })?;
            report::write(path, &xml)?;
        }
        if let Some(r) = reports.iter().find(|r| r.result.is_err()) {
            let failure = r.result.clone().expect_err("found by is_err");
            return Err(BootTestError::Boot { dut: r.id.clone(), boot: r.boots_run, boots: self.args.boots, failure, log: r.log.clone() });
        }
        let what = match (&self.args.expect, self.args.ready, self.args.images.is_empty()) {
            (_, ReadyOn::PhoneHome, _) => "phoned home".to_string(),
            (Some(p), ..) => format!("/{p}/ seen"),
            (None, _, false) => "userspace reached".into(),
            (None, _, true) => "clean power-off".into(),
        };
        let done: Vec<String> =
            reports.iter().map(|r| format!("{}: {} boot(s), {what} (console log: {})", r.id, r.boots_run, r.log.display())).collect();
        Ok(done.join("; "))
    }

    /// What passes this target's boots.
    fn ready(&self, t: &Target) -> Ready {
        match (self.args.ready, &self.expect, &t.boot) {
            (ReadyOn::PhoneHome, ..) => Ready::PhoneHome,
            (_, Some(r), _) => Ready::Pattern(r.clone()),
            (_, None, Boot::Image(_)) => Ready::Userspace,
            (_, None, Boot::Job(_)) => Ready::PowerOff,
        }
    }

    async fn boot_dut(
        &self,
        gw: &Gateway,
        t: &Target,
        log: &Log,
        net: &Network,
        ns: Option<String>,
        prefix: bool,
    ) -> Result<RunReport, BootTestError> {
        let boots = self.args.boots;
        let mut accel = self.args.accel.resolve();
        let mut boot = 1;
        let run_started = std::time::Instant::now();
        let path = log.lock().0.clone();
        let mut report = RunReport {
            id: t.id.clone(),
            label: t.label(),
            result: Ok(()),
            boots_run: 0,
            timeline: Default::default(),
            disk: Default::default(),
            warnings: Vec::new(),
            log: path,
            elapsed: Duration::ZERO,
        };
        gw.event(&t.id, Event::Boot).map_err(BootTestError::Gateway)?;
        while boot <= boots {
            let medium = match &t.boot {
                Boot::Job(_) => Medium::Network { bootfile: net.bootfile.clone() },
                Boot::Image(run) => Medium::Disk {
                    nbd: net.nbd.clone(),
                    firmware: run.firmware,
                    ovmf: match run.firmware {
                        Firmware::Uefi => Some(self.ovmf_vars(&net.data, &t.id)?),
                        Firmware::Bios => None,
                    },
                    ready_url: Some(net.ready_url.clone()),
                },
            };
            let spec = QemuSpec { accel, memory_mib: self.args.memory, medium, mac: t.mac.clone() };
            let mut argv: Vec<String> = Vec::new();
            if let Some(ns) = &ns {
                argv.extend(["ip", "netns", "exec", ns].map(String::from));
            }
            argv.push(self.qemu.display().to_string());
            argv.extend(qemu_args(&spec));
            let header = format!("{}: boot {boot} of {boots}: {}", t.id, argv.join(" "));
            status(&header);
            log_line(log, &format!("=== {header}"));
            let console = Console { log: log.clone(), prefix: prefix.then(|| format!("[{}] ", t.id)) };
            let started = std::time::Instant::now();
            let mut watch = Watch::new(self.ready(t), self.catalogue.clone());
            let (tx, rx) = tokio::sync::oneshot::channel();
            let sampler = Sampler::start(gw.clone(), t.id.clone(), tx);
            let grace = if matches!(t.boot, Boot::Image(_)) { Duration::ZERO } else { POWEROFF_GRACE };
            let phone_home = matches!(self.args.ready, ReadyOn::PhoneHome).then_some(rx);
            let r = boot_once(&argv, &console, &mut watch, phone_home, grace, self.args.timeout).await;
            report.disk = sampler.stop();
            report.timeline = watch.timeline.clone();
            report.warnings.append(&mut watch.warnings);
            report.boots_run = boot;
            // What the DUT fetched, from citron's own log: proof that it booted from citron. Its
            // NBD session is recorded when the server sees QEMU's socket close, a moment after
            // QEMU is gone: wait for that (bounded) so the log has the whole boot.
            let settle = std::time::Instant::now() + Duration::from_secs(5);
            while !gw.in_flight(&t.id).map_err(BootTestError::Gateway)?.is_empty() && std::time::Instant::now() < settle {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            for rec in gw.accesses(&t.id).map_err(BootTestError::Gateway)? {
                log_line(log, &format!("=== citron: {} {} {} bytes {:?}", rec.protocol, rec.path, rec.bytes, rec.outcome));
            }
            match r {
                // KVM was only a guess: the same boot again under TCG.
                Err(f) if qemu::retry_with_tcg(self.args.accel, accel, &f, started.elapsed()) => {
                    status(&format!("{}: KVM cannot run the guest here; booting again with TCG", t.id));
                    accel = Accel::Tcg;
                    continue;
                }
                Err(failure) => {
                    status(&format!("{}: boot {boot} of {boots} FAILED: {failure}", t.id));
                    report.result = Err(failure);
                    break;
                }
                Ok(()) => {}
            }
            status(&format!("{}: boot {boot} of {boots} passed in {:.1}s", t.id, started.elapsed().as_secs_f64()));
            boot += 1;
            if boot <= boots {
                gw.event(&t.id, Event::Boot).map_err(BootTestError::Gateway)?;
            }
        }
        report.elapsed = run_started.elapsed();
        Ok(report)
    }

    /// A fresh copy of OVMF's variable store for one boot (the firmware writes to it).
    fn ovmf_vars(&self, data: &Path, id: &DutId) -> Result<(PathBuf, PathBuf), BootTestError> {
        let (code, template) = image::ovmf()?;
        let vars = data.join(format!("ovmf-vars-{id}.fd"));
        std::fs::copy(&template, &vars).map_err(|source| BootTestError::Io { path: vars.clone(), source })?;
        Ok((code, vars))
    }
}

/// How QEMU reaches the in-process servers.
struct Network {
    bootfile: String,
    nbd: String,
    ready_url: String,
    data: PathBuf,
}

fn status(msg: &str) {
    eprintln!("citron boot-test: {msg}");
}

async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else { return std::future::pending().await };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
