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

use std::collections::BTreeSet;
use std::fmt;
use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use citron_core::job::{JobDescription, JobErrors};
use citron_core::lab::LabConfig;
use citron_core::lifetime::Event;
use citron_core::namespace::DutId;
use citron_core::{Endpoints, Gateway, GatewayError};
use citron_protocols::server::ServerBuilder;
use clap::{Args, ValueEnum};
use parking_lot::Mutex;
use regex::Regex;
use tokio::io::AsyncReadExt as _;
use tokio::sync::mpsc;

/// Exit codes of `boot-test`, shown at the end of its `--help`.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  every boot of every DUT passed (--expect seen, or a clean power-off without --expect)
  1  a boot failed; the last line on stderr says why (timeout, kernel panic, pattern never seen,
     nothing to boot, QEMU exited)
  2  the test could not run: usage error, bad lab or job, QEMU missing, servers or network
     namespaces could not be set up";

/// Where the guest finds the host's loopback under QEMU user networking.
const SLIRP_HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The server's address inside the `--netns` bridge; DUTs get .11, .12, ...
const NETNS_SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 77, 1);
/// Under `--accel auto`, a QEMU with KVM that fails this early is retried with TCG.
const KVM_PROBE: Duration = Duration::from_secs(5);
/// How long a guest may take to power off by itself once the pattern was seen.
const POWEROFF_GRACE: Duration = Duration::from_secs(10);

/// `citron boot-test` options (what the user typed).
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES)]
pub struct BootTestArgs {
    /// The lab file (default: the embedded default lab).
    #[arg(long, value_name = "LAB.yaml")]
    pub lab: Option<PathBuf>,
    /// The job to boot. Repeat it, with one --dut each, to boot several DUTs at once (--netns).
    #[arg(long = "job", value_name = "JOB.yaml", required = true)]
    pub jobs: Vec<PathBuf>,
    /// The DUT to boot as (default: the lab's first DUT); one per --job.
    #[arg(long = "dut", value_name = "ID")]
    pub duts: Vec<String>,
    /// How iPXE fetches boot.ipxe, the kernel and the initramfs.
    #[arg(long, value_enum, default_value_t = Proto::Http)]
    pub proto: Proto,
    /// A regular expression the serial console must show in every boot.
    #[arg(long, value_name = "REGEX")]
    pub expect: Option<String>,
    /// Time allowed for each boot (`120s`, `2m`).
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = parse_timeout)]
    pub timeout: Duration,
    /// How many times each DUT boots; the lab sends a `boot` event before each.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub boots: u32,
    /// QEMU accelerator. `auto` uses KVM when /dev/kvm can be opened and falls back to TCG
    /// (software emulation) when KVM cannot run the guest.
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    pub accel: Accel,
    /// Give each DUT (and the servers) its own network namespace and address (needs root).
    /// Implied by more than one --job.
    #[arg(long)]
    pub netns: bool,
    /// Where the console logs go (`boot-test-<DUT>.log`).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub log_dir: PathBuf,
    /// Where the cache and disks are kept (default: a temporary directory).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// The QEMU binary.
    #[arg(long, value_name = "PATH", env = "CITRON_QEMU", default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 512)]
    pub memory: u32,
}

/// The boot protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    /// `http://…/boot.ipxe`.
    Http,
    /// `tftp://…/boot.ipxe`.
    Tftp,
}

/// The QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Accel {
    /// KVM where /dev/kvm opens, TCG otherwise or when KVM fails ("KVM internal error").
    Auto,
    /// Software emulation: slow (about 15 s of one core to a shell) but works everywhere.
    Tcg,
    /// Hardware virtualisation through /dev/kvm.
    Kvm,
}

impl Accel {
    fn name(self) -> &'static str {
        match self {
            Accel::Tcg | Accel::Auto => "tcg",
            Accel::Kvm => "kvm",
        }
    }

    /// What `auto` means on this host: KVM when /dev/kvm can be opened read-write.
    fn resolve(self) -> Accel {
        match self {
            Accel::Auto if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok() => Accel::Kvm,
            Accel::Auto => Accel::Tcg,
            other => other,
        }
    }
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = citron_core::units::parse_duration(s)?;
    if d.is_zero() {
        return Err("the timeout must be longer than 0s".into());
    }
    Ok(d)
}

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
    Lab(#[from] citron_core::lab::LabError),
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

/// How one boot failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The time ran out.
    Timeout {
        /// The allowed time.
        after: Duration,
        /// The pattern that was not seen, if any.
        pattern: Option<String>,
    },
    /// The guest kernel panicked; the panic line.
    Panic(String),
    /// The firmware found nothing to boot; the last iPXE error seen.
    NothingToBoot(Option<String>),
    /// KVM cannot run this guest here.
    Kvm,
    /// QEMU ended before the pattern was seen (or with an error status without one).
    Exited {
        /// QEMU's exit status.
        status: String,
        /// The pattern that was not seen.
        pattern: Option<String>,
    },
    /// QEMU could not be started.
    Spawn(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Timeout { after, pattern: Some(p) } => write!(f, "timeout: /{p}/ not seen within {}s", after.as_secs()),
            Failure::Timeout { after, pattern: None } => {
                write!(f, "timeout: the guest did not power off within {}s", after.as_secs())
            }
            Failure::Panic(line) => write!(f, "kernel panic: {line}"),
            Failure::NothingToBoot(Some(e)) => write!(f, "the firmware found nothing to boot; last iPXE error: {e}"),
            Failure::NothingToBoot(None) => write!(f, "the firmware found nothing to boot (no iPXE error seen)"),
            Failure::Kvm => write!(f, "KVM internal error: KVM cannot run this guest on this host; use --accel tcg"),
            Failure::Exited { status, pattern: Some(p) } => write!(f, "pattern never seen: QEMU exited ({status}) before /{p}/ appeared"),
            Failure::Exited { status, pattern: None } => write!(f, "QEMU exited with {status}"),
            Failure::Spawn(e) => write!(f, "cannot start QEMU: {e}"),
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

/// A DUT to boot, with its job.
#[derive(Debug, Clone)]
struct Target {
    id: DutId,
    job: PathBuf,
    mac: Option<String>,
    addr: IpAddr,
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

/// Chooses the DUTs and rewrites their addresses in the in-process lab copy.
fn pick_targets(lab: &mut LabConfig, jobs: &[PathBuf], duts: &[String], netns: bool) -> Result<Vec<Target>, BootTestError> {
    let ids: Vec<DutId> = match (jobs.len(), duts.len()) {
        (_, 0) if jobs.len() == 1 => {
            let first = lab.duts.first().ok_or_else(|| BootTestError::Usage("the lab has no DUT; add one or pass --dut".into()))?;
            vec![first.id.clone()]
        }
        (j, d) if j == d => duts.iter().map(|d| DutId(d.clone())).collect(),
        (j, d) => return Err(BootTestError::Usage(format!("{j} --job but {d} --dut: give one --dut per --job"))),
    };
    let unique: BTreeSet<&DutId> = ids.iter().collect();
    if unique.len() != ids.len() {
        return Err(BootTestError::Usage("each --dut may be given once".into()));
    }
    let mut targets = Vec::new();
    for (i, (id, job)) in ids.iter().zip(jobs).enumerate() {
        let Some(dut) = lab.duts.iter().find(|d| &d.id == id) else {
            let known: Vec<&str> = lab.duts.iter().map(|d| d.id.0.as_str()).collect();
            return Err(BootTestError::Usage(format!("the lab has no DUT {:?} (it has: {})", id.0, known.join(", "))));
        };
        let addr = if netns { IpAddr::V4(dut_netns_addr(i)) } else { IpAddr::V4(Ipv4Addr::LOCALHOST) };
        targets.push(Target { id: id.clone(), job: job.clone(), mac: dut.mac.clone(), addr });
    }
    // Slirp (or the veth) is the only way in: the DUT is whoever comes from its address, and no
    // other DUT of the lab may claim that address.
    for d in &mut lab.duts {
        let own = targets.iter().find(|t| t.id == d.id).map(|t| t.addr);
        d.ip.retain(|ip| !targets.iter().any(|t| t.addr == *ip));
        if let Some(a) = own {
            d.ip = vec![a];
        }
    }
    Ok(targets)
}

fn dut_netns_addr(i: usize) -> Ipv4Addr {
    let o = NETNS_SERVER.octets();
    Ipv4Addr::new(o[0], o[1], o[2], 11 + i as u8)
}

/// `name` as given when it has a `/`, else the first match on `PATH`.
fn find_program(name: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let runnable = |p: &Path| p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false);
    if name.components().count() > 1 {
        return runnable(name).then(|| name.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| runnable(p))
}

/// One console log per DUT, shared by its boots.
type Log = Arc<Mutex<(PathBuf, std::fs::File)>>;

fn open_logs(dir: &Path, targets: &[Target]) -> Result<Vec<Log>, BootTestError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BootTestError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    targets
        .iter()
        .map(|t| {
            let path = dir.join(format!("boot-test-{}.log", t.id));
            let f = std::fs::File::create(&path).map_err(io_err(&path))?;
            Ok(Arc::new(Mutex::new((path, f))))
        })
        .collect()
}

struct Plan<'a> {
    args: &'a BootTestArgs,
    /// The lab with the targets' addresses rewritten.
    lab: LabConfig,
    qemu: PathBuf,
    expect: Option<Regex>,
    netns: Option<&'a Netns>,
    targets: &'a [Target],
    logs: Vec<Log>,
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
        let gw = Gateway::new(self.lab.clone(), &data).map_err(BootTestError::Gateway)?;

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
        gw.set_endpoints(Endpoints {
            http: Some(format!("http://{seen_as}:{http}")),
            tftp: Some(format!("tftp://{seen_as}:{tftp}")),
            nbd_host: Some(seen_as.to_string()),
            nbd_port: Some(nbd),
        });
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
                // KVM was only a guess. Where /dev/kvm exists but cannot run a guest, QEMU
                // reports "KVM internal error" or aborts at once ("failed to set MSR …"), before
                // the firmware fetched anything: the same boot again under TCG.
                Err(f @ (Failure::Kvm | Failure::Exited { .. }))
                    if self.args.accel == Accel::Auto && accel == Accel::Kvm && (f == Failure::Kvm || started.elapsed() < KVM_PROBE) =>
                {
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

fn log_line(log: &Log, line: &str) {
    let mut g = log.lock();
    let _ = writeln!(g.1, "{line}");
}

/// Where console lines go.
struct Console {
    log: Log,
    prefix: Option<String>,
}

impl Console {
    fn line(&self, line: &str, from_stderr: bool) {
        log_line(&self.log, line);
        let p = self.prefix.as_deref().unwrap_or("");
        if from_stderr {
            eprintln!("{p}{line}");
        } else {
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "{p}{line}");
            let _ = out.flush();
        }
    }
}

/// What QEMU is started with.
#[derive(Debug, Clone)]
struct QemuSpec {
    accel: Accel,
    memory_mib: u32,
    bootfile: String,
    mac: Option<String>,
}

/// The QEMU command line: a network boot through iPXE with the console on the serial port.
/// `-vga none` sends iPXE's own output to the serial port too; `-no-reboot` turns a reboot
/// (a panic with `panic=-1`) into QEMU exiting.
fn qemu_args(s: &QemuSpec) -> Vec<String> {
    let mut nic = "virtio-net-pci,netdev=n0".to_string();
    if let Some(mac) = s.mac.as_deref().filter(|m| valid_mac(m)) {
        nic.push_str(",mac=");
        nic.push_str(mac);
    }
    let mut v: Vec<String> = vec!["-accel".into(), s.accel.name().into()];
    if s.accel == Accel::Kvm {
        v.extend(["-cpu".into(), "host".into()]);
    }
    v.extend(
        [
            "-m",
            &s.memory_mib.to_string(),
            "-smp",
            "1",
            "-no-reboot",
            "-nographic",
            "-vga",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-netdev",
            &format!("user,id=n0,bootfile={}", s.bootfile),
            "-device",
            &nic,
            "-boot",
            "n",
        ]
        .map(String::from),
    );
    v
}

fn valid_mac(m: &str) -> bool {
    let parts: Vec<&str> = m.split(':').collect();
    parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Boots QEMU once and watches its console until a verdict.
async fn boot_once(argv: &[String], console: &Console, expect: Option<&Regex>, timeout: Duration) -> Result<(), Failure> {
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Failure::Spawn(format!("{}: {e}", argv[0])))?;
    let (tx, mut rx) = mpsc::channel::<(bool, Vec<u8>)>(64);
    for (is_err, stream) in [
        (false, child.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>)),
        (true, child.stderr.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>)),
    ] {
        let Some(mut stream) = stream else { continue };
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send((is_err, buf[..n].to_vec())).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
    drop(tx);

    let mut watch = Watch::new(expect.cloned());
    let mut out = LineSplitter::default();
    let mut err = LineSplitter::default();
    let deadline = tokio::time::Instant::now() + timeout;
    // Once the pattern is seen the guest gets a moment to power off by itself (and flush its
    // disks); then it is stopped.
    let mut grace: Option<tokio::time::Instant> = None;
    let verdict: Option<Result<(), Failure>> = loop {
        let until = grace.unwrap_or(deadline);
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = tokio::time::sleep_until(until) => {
                break if grace.is_some() { Some(Ok(())) } else {
                    Some(Err(Failure::Timeout { after: timeout, pattern: expect.map(|r| r.as_str().to_string()) }))
                };
            }
        };
        let Some((is_err, bytes)) = msg else { break None };
        let split = if is_err { &mut err } else { &mut out };
        let mut failed = None;
        for line in split.feed(&bytes) {
            console.line(&line, is_err);
            match watch.line(&line) {
                Seen::Nothing => {}
                Seen::Matched => {
                    grace.get_or_insert_with(|| tokio::time::Instant::now() + POWEROFF_GRACE);
                }
                Seen::Failed(f) => {
                    failed = Some(f);
                    break;
                }
            }
        }
        if let Some(f) = failed {
            break Some(Err(f));
        }
        if !is_err && grace.is_none() && watch.partial(&split.partial()) {
            grace = Some(tokio::time::Instant::now() + POWEROFF_GRACE);
        }
    };
    if let Some(v) = verdict {
        let _ = child.start_kill();
        let _ = child.wait().await;
        return v;
    }
    // Both streams ended: QEMU is exiting.
    for (split, is_err) in [(&mut out, false), (&mut err, true)] {
        if let Some(line) = split.finish() {
            console.line(&line, is_err);
            if let Seen::Failed(f) = watch.line(&line) {
                return Err(f);
            }
        }
    }
    let status = match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(Failure::Spawn(e.to_string())),
        Err(_) => {
            let _ = child.start_kill();
            return Err(Failure::Exited { status: "closed its console but did not exit".into(), pattern: None });
        }
    };
    watch.at_exit(status.success(), &status.to_string())
}

/// Splits a byte stream into console lines: `\r` dropped, terminal escape sequences removed,
/// other control characters dropped, invalid UTF-8 replaced.
#[derive(Debug, Default)]
struct LineSplitter {
    buf: Vec<u8>,
}

impl LineSplitter {
    fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(bytes);
        let mut lines = Vec::new();
        while let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = self.buf.drain(..=i).collect();
            lines.push(clean(&raw[..raw.len() - 1]));
        }
        // A console that never ends its line (a prompt) must not grow without bound.
        if self.buf.len() > 64 * 1024 {
            let raw = std::mem::take(&mut self.buf);
            lines.push(clean(&raw));
        }
        lines
    }
    fn partial(&self) -> String {
        clean(&self.buf)
    }
    fn finish(&mut self) -> Option<String> {
        if self.buf.is_empty() {
            return None;
        }
        Some(clean(&std::mem::take(&mut self.buf)))
    }
}

/// Drops `ESC [ … final`, `ESC x` and control characters (SeaBIOS clears the screen with them).
fn clean(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // Parameters and intermediates, then one final byte in @..~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out.trim_end().to_string()
}

/// What a console line means.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Nothing,
    Matched,
    Failed(Failure),
}

/// The verdict logic, fed line by line (no I/O, so it is unit-tested).
#[derive(Debug)]
struct Watch {
    expect: Option<Regex>,
    matched: bool,
    last_ipxe_error: Option<String>,
}

impl Watch {
    fn new(expect: Option<Regex>) -> Watch {
        Watch { expect, matched: false, last_ipxe_error: None }
    }

    fn line(&mut self, line: &str) -> Seen {
        if line.contains("Kernel panic - not syncing") {
            return Seen::Failed(Failure::Panic(line.trim().to_string()));
        }
        if line.contains("KVM internal error") {
            return Seen::Failed(Failure::Kvm);
        }
        // iPXE ends each error message with its explanation URL.
        if line.contains("(https://ipxe.org/") || line.contains("(http://ipxe.org/") {
            self.last_ipxe_error = Some(line.trim().to_string());
        }
        if line.contains("No bootable device") {
            return Seen::Failed(Failure::NothingToBoot(self.last_ipxe_error.clone()));
        }
        if !self.matched && self.expect.as_ref().is_some_and(|r| r.is_match(line)) {
            self.matched = true;
            return Seen::Matched;
        }
        Seen::Nothing
    }

    /// A prompt that does not end its line (`login: `) may match too.
    fn partial(&mut self, text: &str) -> bool {
        if !self.matched && !text.is_empty() && self.expect.as_ref().is_some_and(|r| r.is_match(text)) {
            self.matched = true;
            return true;
        }
        false
    }

    /// QEMU exited by itself.
    fn at_exit(&self, success: bool, status: &str) -> Result<(), Failure> {
        match (&self.expect, self.matched) {
            (Some(_), true) => Ok(()),
            (Some(r), false) => Err(Failure::Exited { status: status.into(), pattern: Some(r.as_str().into()) }),
            (None, _) if success => Ok(()),
            (None, _) => Err(Failure::Exited { status: status.into(), pattern: None }),
        }
    }
}

async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else { return std::future::pending().await };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The `--netns` topology; deleting the namespaces removes every interface in them.
struct Netns {
    server: String,
    duts: Vec<String>,
}

impl Netns {
    fn create(n: usize) -> Result<Netns, BootTestError> {
        reap_stale_namespaces();
        let base = format!("citron-bt-{}", std::process::id());
        let ns = Netns { server: format!("{base}-srv"), duts: (0..n).map(|i| format!("{base}-dut{i}")).collect() };
        // From here on, Drop deletes whatever was created.
        let srv = ns.server.clone();
        let server_cidr = format!("{NETNS_SERVER}/24");
        ip(&["netns", "add", &srv])?;
        ip(&["-n", &srv, "link", "set", "lo", "up"])?;
        ip(&["-n", &srv, "link", "add", "br0", "type", "bridge", "forward_delay", "0"])?;
        ip(&["-n", &srv, "addr", "add", &server_cidr, "dev", "br0"])?;
        ip(&["-n", &srv, "link", "set", "br0", "up"])?;
        for (i, d) in ns.duts.iter().enumerate() {
            let host_end = format!("v{i}");
            let cidr = format!("{}/24", dut_netns_addr(i));
            ip(&["netns", "add", d])?;
            ip(&["-n", d, "link", "set", "lo", "up"])?;
            ip(&["-n", &srv, "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", d])?;
            ip(&["-n", &srv, "link", "set", &host_end, "master", "br0"])?;
            ip(&["-n", &srv, "link", "set", &host_end, "up"])?;
            ip(&["-n", d, "addr", "add", &cidr, "dev", "eth0"])?;
            ip(&["-n", d, "link", "set", "eth0", "up"])?;
        }
        Ok(ns)
    }

    /// Moves the calling thread into the servers' namespace.
    fn enter_server(&self) -> Result<(), BootTestError> {
        use std::os::fd::AsRawFd as _;
        let path = format!("/run/netns/{}", self.server);
        let f = std::fs::File::open(&path).map_err(|e| BootTestError::Netns(format!("{path}: {e}")))?;
        // SAFETY: setns only reads the descriptor, which `f` keeps open for the call.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(BootTestError::Netns(format!("setns {path}: {}", io::Error::last_os_error())));
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in self.duts.iter().chain(std::iter::once(&self.server)) {
            let _ = std::process::Command::new("ip").args(["netns", "del", n]).stderr(Stdio::null()).status();
        }
    }
}

fn ip(args: &[&str]) -> Result<(), BootTestError> {
    let out = std::process::Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BootTestError::Netns(format!("ip {}: {e}", args.join(" "))))?;
    if !out.status.success() {
        return Err(BootTestError::Netns(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(())
}

/// Deletes namespaces left by a boot-test that was killed (`citron-bt-<pid>-*` of a dead pid).
fn reap_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix("citron-bt-") else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::process::Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_cleaned() {
        let mut s = LineSplitter::default();
        assert_eq!(s.feed(b"Booting from ROM..\x1bc\x1b[?7l\x1b[2JVDUT: st"), Vec::<String>::new());
        assert_eq!(s.feed(b"art\r\nnext"), vec!["Booting from ROM..VDUT: start".to_string()]);
        assert_eq!(s.partial(), "next");
        assert_eq!(s.finish().as_deref(), Some("next"));
        assert_eq!(s.finish(), None);
        assert_eq!(clean(b"a\xffb\x07\tc  "), "a\u{fffd}b\tc");
    }

    #[test]
    fn watch_reports_pattern_panic_and_nothing_to_boot() {
        let mut w = Watch::new(Some(Regex::new("VDUT: done").unwrap()));
        assert_eq!(w.line("VDUT: start"), Seen::Nothing);
        assert_eq!(w.line("xx VDUT: done mid=dut1"), Seen::Matched);
        assert_eq!(w.line("VDUT: done again"), Seen::Nothing, "a pattern counts once");
        assert_eq!(w.at_exit(true, "exit status: 0"), Ok(()));

        let mut w = Watch::new(Some(Regex::new("login:").unwrap()));
        assert!(
            matches!(w.line("[    1.2] Kernel panic - not syncing: VFS: Unable to mount root fs"), Seen::Failed(Failure::Panic(l)) if l.contains("VFS"))
        );

        let mut w = Watch::new(None);
        w.line("http://10.0.2.2:1/boot.ipxe... Connection refused (https://ipxe.org/4c0a6035)");
        match w.line("No bootable device.") {
            Seen::Failed(Failure::NothingToBoot(Some(e))) => assert!(e.contains("Connection refused")),
            other => panic!("{other:?}"),
        }
        assert_eq!(w.at_exit(true, "exit status: 0"), Ok(()), "no pattern: a clean power-off passes");
        assert!(w.at_exit(false, "exit status: 1").is_err());

        let w = Watch::new(Some(Regex::new("never").unwrap()));
        let e = w.at_exit(true, "exit status: 0").unwrap_err();
        assert_eq!(e.to_string(), "pattern never seen: QEMU exited (exit status: 0) before /never/ appeared");
    }

    #[test]
    fn prompts_without_newline_match() {
        let mut w = Watch::new(Some(Regex::new("login: $").unwrap()));
        assert!(w.partial("debian login: "));
        assert!(!w.partial("debian login: "), "only once");
    }

    #[test]
    fn qemu_command_line_boots_from_the_network() {
        let a = qemu_args(&QemuSpec {
            accel: Accel::Tcg,
            memory_mib: 512,
            bootfile: "tftp://10.0.2.2:6969/boot.ipxe".into(),
            mac: Some("52:54:00:00:00:01".into()),
        });
        let s = a.join(" ");
        assert!(s.starts_with("-accel tcg -m 512"), "{s}");
        assert!(s.contains("-netdev user,id=n0,bootfile=tftp://10.0.2.2:6969/boot.ipxe"), "{s}");
        assert!(s.contains("-device virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01"), "{s}");
        assert!(s.contains("-vga none") && s.contains("-no-reboot") && s.ends_with("-boot n"), "{s}");
        let a = qemu_args(&QemuSpec { accel: Accel::Kvm, memory_mib: 256, bootfile: "x".into(), mac: Some("bad".into()) });
        assert!(a.join(" ").contains("-device virtio-net-pci,netdev=n0 "), "an invalid MAC is left out");
    }

    #[test]
    fn targets_take_over_the_address_the_server_sees() {
        let mut lab = LabConfig::default_lab();
        lab.duts[1].ip.push("127.0.0.1".parse().unwrap());
        let t = pick_targets(&mut lab, &[PathBuf::from("j.yaml")], &[], false).unwrap();
        assert_eq!(t[0].id.0, "dut1");
        assert_eq!(lab.duts[0].ip, vec!["127.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(lab.duts[1].ip, vec!["127.0.0.3".parse::<IpAddr>().unwrap()], "nobody else keeps 127.0.0.1");

        let mut lab = LabConfig::default_lab();
        let t = pick_targets(&mut lab, &["a.yaml".into(), "b.yaml".into()], &["dut2".into(), "dut1".into()], true).unwrap();
        assert_eq!(t[0].addr.to_string(), "198.18.77.11");
        assert_eq!(lab.duts.iter().find(|d| d.id.0 == "dut1").unwrap().ip[0].to_string(), "198.18.77.12");

        let mut lab = LabConfig::default_lab();
        assert!(matches!(
            pick_targets(&mut lab, &["a.yaml".into(), "b.yaml".into()], &["dut1".into()], true),
            Err(BootTestError::Usage(_))
        ));
        assert!(
            matches!(pick_targets(&mut lab, &["a.yaml".into()], &["nope".into()], false), Err(BootTestError::Usage(m)) if m.contains("dut1"))
        );
    }

    #[test]
    fn failures_read_as_one_line() {
        let f = Failure::Timeout { after: Duration::from_secs(120), pattern: Some("VDUT: done".into()) };
        assert_eq!(f.to_string(), "timeout: /VDUT: done/ not seen within 120s");
        assert!(!Failure::NothingToBoot(None).to_string().contains('\n'));
    }
}
