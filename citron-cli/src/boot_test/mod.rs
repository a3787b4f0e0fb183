//! `citron boot-test`: boots a QEMU virtual DUT from an in-process citron, the way a real DUT
//! would boot from the lab, before the job goes to real hardware.
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
//! The lab sends the DUT a `boot` event (lifetimes reset, `continue` is used from the second
//! boot), then QEMU network-boots from `boot.ipxe` over `--proto` (iPXE ROM via DHCP
//! `bootfile`). The serial console is streamed to stdout and to a log file. The boot passes when
//! `--expect` matches a console line (without `--expect`: when the guest powers off by itself);
//! it fails on a kernel panic, "No bootable device", a KVM internal error, QEMU exiting first,
//! or `--timeout`.
//!
//! # The pieces
//! - [`plan`]: what to boot: the options, the DUTs chosen for the jobs and their addresses.
//! - [`qemu`]: the accelerator and its KVM → TCG fallback, the QEMU command line, starting QEMU.
//! - [`console`]: console lines, the log files, and the verdict of a boot.
//! - [`netns`]: the network namespaces of `--netns`.
//!
//! This file is the flow: resolve the plan, set up namespaces and a runtime, start the servers,
//! load the jobs, boot every DUT `--boots` times, report.

mod console;
mod netns;
mod plan;
mod qemu;
#[cfg(test)]
mod tests;

pub use plan::BootTestArgs;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use citron_core::job::{JobDescription, JobErrors};
use citron_core::lab::LabConfig;
use citron_core::lifetime::Event;
use citron_core::namespace::DutId;
use citron_core::serve::Protocol;
use citron_core::{Endpoints, Gateway, GatewayError};
use citron_lab::server::ServerBuilder;
use regex::Regex;

use console::{log_line, open_logs, Console, Failure, Log};
use netns::{Netns, NETNS_SERVER};
use plan::{find_program, pick_targets, Plan, Proto, Target};
use qemu::{boot_once, qemu_args, Accel, QemuSpec, SLIRP_HOST};

/// Exit codes of `boot-test`, shown at the end of its `--help`.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  every boot of every DUT passed (--expect seen, or a clean power-off without --expect)
  1  a boot failed; the last line on stderr says why (timeout, kernel panic, pattern never seen,
     nothing to boot, QEMU exited)
  2  the test could not run: usage error, bad lab or job, QEMU missing, servers or network
     namespaces could not be set up";

/// Why the test could not run (exit 2) or a boot failed (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum BootTestError {
    /// Bad combination of options.
    #[error("{0}")]
    Usage(String),
    /// No QEMU.
    #[error("{0} not found; install qemu-system-x86 (scripts/setup-debian.sh --qemu) or pass --qemu PATH")]
    QemuMissing(PathBuf),
    /// `--expect` is no regular expression.
    #[error("--expect {pattern:?} is not a valid regular expression: {source}")]
    BadPattern {
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

fn run_inner(args: BootTestArgs) -> Result<String, BootTestError> {
    let expect = match &args.expect {
        Some(p) => Some(Regex::new(p).map_err(|source| BootTestError::BadPattern { pattern: p.clone(), source })?),
        None => None,
    };
    let qemu = find_program(&args.qemu).ok_or_else(|| BootTestError::QemuMissing(args.qemu.clone()))?;
    let mut lab = match &args.lab {
        Some(p) => LabConfig::from_file(p)?,
        None => LabConfig::default_lab(),
    };
    let netns = args.netns || args.jobs.len() > 1;
    let targets = pick_targets(&mut lab, &args.jobs, &args.duts, netns)?;
    let logs = open_logs(&args.log_dir, &targets)?;

    // The namespaces must exist, and this thread must be in the servers' one, before the
    // runtime starts its threads: they inherit it, so every socket the servers open (TFTP opens
    // one per transfer) is in that namespace.
    let ns = if netns {
        if find_program(Path::new("ip")).is_none() {
            return Err(BootTestError::Netns("the `ip` command is missing; install iproute2".into()));
        }
        let ns = Netns::create(targets.len())?;
        ns.enter_server()?;
        Some(ns)
    } else {
        None
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| BootTestError::Server(format!("cannot start the async runtime: {e}")))?;
    let plan = Plan { args: &args, lab, qemu, expect, netns: ns.as_ref(), targets: &targets, logs };
    let result = rt.block_on(async {
        tokio::select! {
            r = plan.execute() => r,
            _ = interrupted() => Err(BootTestError::Interrupted),
        }
    });
    // Kill leftover QEMUs (kill_on_drop) before the namespaces go away.
    rt.shutdown_timeout(Duration::from_secs(5));
    drop(ns);
    result
}

impl Plan<'_> {
    async fn execute(&self) -> Result<String, BootTestError> {
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
            let job = JobDescription::from_file(&t.job).map_err(BootTestError::Job)?;
            match gw.set_trusted_job(&t.id, &job).await {
                Ok(()) => {}
                Err(GatewayError::Job(e)) => return Err(BootTestError::Job(e)),
                Err(e) => return Err(BootTestError::Gateway(e)),
            }
            status(&format!("{}: job {} loaded; DUT address {}", t.id, t.job.display(), t.addr));
        }
        let port = match self.args.proto {
            Proto::Http => http,
            Proto::Tftp => tftp,
        };
        let scheme = match self.args.proto {
            Proto::Http => "http",
            Proto::Tftp => "tftp",
        };
        let bootfile = format!("{scheme}://{seen_as}:{port}/boot.ipxe");

        let prefix = self.targets.len() > 1;
        let runs = self.targets.iter().zip(&self.logs).enumerate().map(|(i, (t, log))| {
            let gw = gw.clone();
            let bootfile = bootfile.clone();
            let ns = self.netns.map(|n| n.duts[i].clone());
            async move { self.boot_dut(&gw, t, log, &bootfile, ns, prefix).await }
        });
        let results = futures::future::join_all(runs).await;
        server.shutdown().await;
        let mut done = Vec::new();
        for r in results {
            done.push(r?);
        }
        Ok(done.join("; "))
    }

    async fn boot_dut(
        &self,
        gw: &Gateway,
        t: &Target,
        log: &Log,
        bootfile: &str,
        ns: Option<String>,
        prefix: bool,
    ) -> Result<String, BootTestError> {
        let boots = self.args.boots;
        let mut accel = self.args.accel.resolve();
        let mut boot = 1;
        gw.event(&t.id, Event::Boot).map_err(BootTestError::Gateway)?;
        while boot <= boots {
            let spec = QemuSpec { accel, memory_mib: self.args.memory, bootfile: bootfile.to_string(), mac: t.mac.clone() };
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
            let r = boot_once(&argv, &console, self.expect.as_ref(), self.args.timeout).await;
            // What the DUT fetched, from citron's own log: proof that it booted from citron.
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
                    let path = log.lock().0.clone();
                    return Err(BootTestError::Boot { dut: t.id.clone(), boot, boots, failure, log: path });
                }
                Ok(()) => {}
            }
            status(&format!("{}: boot {boot} of {boots} passed in {:.1}s", t.id, started.elapsed().as_secs_f64()));
            boot += 1;
            if boot <= boots {
                gw.event(&t.id, Event::Boot).map_err(BootTestError::Gateway)?;
            }
        }
        let what = match &self.args.expect {
            Some(p) => format!("/{p}/ seen"),
            None => "clean power-off".into(),
        };
        Ok(format!("{}: {boots} boot(s), {what} (console log: {})", t.id, log.lock().0.display()))
    }
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
