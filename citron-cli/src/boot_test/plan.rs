//! What to boot: the options as typed, the DUTs chosen for the jobs (with the addresses they
//! are given in the in-process copy of the lab), and the [`Plan`] the top-level flow executes.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use citron_core::lab::LabConfig;
use citron_core::namespace::DutId;
use clap::{Args, ValueEnum};
use regex::Regex;

use super::catalogue::Catalogue;
use super::console::Log;
use super::image::{Firmware, ImageFormat, ImageRun};
use super::netns::{dut_netns_addr, Netns};
use super::qemu::Accel;
use super::{BootTestError, EXIT_CODES};

/// `citron boot-test` options (what the user typed).
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES)]
pub struct BootTestArgs {
    /// The lab file (default: the embedded default lab).
    #[arg(long, value_name = "LAB.yaml")]
    pub lab: Option<PathBuf>,
    /// The job to boot. Repeat it, with one --dut each, to boot several DUTs at once (--netns).
    #[arg(long = "job", value_name = "JOB.yaml", required_unless_present = "images", conflicts_with = "images")]
    pub jobs: Vec<PathBuf>,
    /// A whole disk image to boot with its own bootloader (a file, or an http(s):// or s3://
    /// URL). citron serves it as the DUT's NBD disk with a copy-on-write overlay (the image is
    /// never written); QEMU's firmware boots it. Repeat it (and --firmware) for a matrix: each
    /// image under each firmware is its own DUT in its own network namespace (needs root).
    /// `uefi:PATH` (or `bios:PATH`) boots that image under that firmware only.
    #[arg(long = "image", value_name = "PATH|URL")]
    pub images: Vec<String>,
    /// What the images are.
    #[arg(long, value_enum, default_value_t = ImageFormat::Auto, requires = "images")]
    pub image_format: ImageFormat,
    /// The firmware an --image boots with (repeat for a matrix; default bios).
    #[arg(long = "firmware", value_enum, requires = "images")]
    pub firmwares: Vec<Firmware>,
    /// What passes a boot. `console`: --expect, or without it, for an --image, the real system
    /// reaching userspace (systemd's multi-user or graphical target, "Startup finished", a
    /// login prompt) and for a --job a clean power-off. `phone-home`: the booted system reads
    /// `_citron/ready` over HTTP from citron (QEMU passes its URL as the SMBIOS type 11 string
    /// `io.systemd.credential:citron.ready_url=URL`).
    #[arg(long, value_enum, default_value_t = ReadyOn::Console)]
    pub ready: ReadyOn,
    /// A regular expression for known console noise: lines it matches never fail a boot nor
    /// warn (the failure catalogue: kernel panic, Oops, BUG, emergency or rescue shell, an
    /// initramfs giving up, systemd ordering cycles, bootloader errors). Repeatable.
    #[arg(long = "allow", value_name = "REGEX")]
    pub allow: Vec<String>,
    /// Writes a JUnit XML report: one test case per DUT (per image and firmware), with its
    /// stage timings and warnings.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
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
    /// Uploads each DUT's outcome (per image and firmware) as a run of NAME to the results
    /// store of the citron at --server: the verdict as its status, `boot-test.json` (stage
    /// timings, the failure), `junit.xml` and the console log.
    #[arg(long, value_name = "NAME")]
    pub results_job: Option<String>,
    /// The results server and token (as for `citron results`).
    #[command(flatten)]
    pub remote: crate::client::Remote,
    /// What was tested (the image's build), recorded with each run.
    #[arg(long, requires = "results_job")]
    pub revision: Option<String>,
    /// Where it ran, recorded with each run; an image's firmware is added (`x86_64/uefi`;
    /// `uefi` without --platform).
    #[arg(long, requires = "results_job")]
    pub platform: Option<String>,
}

/// What passes a boot (`--ready`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReadyOn {
    /// The serial console.
    Console,
    /// A read of `_citron/ready` from citron.
    PhoneHome,
}

/// The boot protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    /// `http://…/boot.ipxe`.
    Http,
    /// `tftp://…/boot.ipxe`.
    Tftp,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = citron_core::units::parse_duration(s)?;
    if d.is_zero() {
        return Err("the timeout must be longer than 0s".into());
    }
    Ok(d)
}

/// What a DUT boots.
#[derive(Debug, Clone)]
pub(super) enum Boot {
    /// A job file, network-booted through iPXE.
    Job(PathBuf),
    /// A disk image under a firmware.
    Image(ImageRun),
}

/// A DUT to boot, with what it boots.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub(super) id: DutId,
    pub(super) boot: Boot,
    pub(super) mac: Option<String>,
    pub(super) addr: IpAddr,
}

impl Target {
    /// What it boots, for tables and JUnit: the job file or `image [firmware]`.
    pub(super) fn label(&self) -> String {
        match &self.boot {
            Boot::Job(p) => p.display().to_string(),
            Boot::Image(r) => r.label(),
        }
    }
}

/// Chooses the DUTs and rewrites their addresses in the in-process lab copy.
pub(super) fn pick_targets(lab: &mut LabConfig, jobs: &[PathBuf], duts: &[String], netns: bool) -> Result<Vec<Target>, BootTestError> {
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
        targets.push(Target { id: id.clone(), boot: Boot::Job(job.clone()), mac: dut.mac.clone(), addr });
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

/// `name` as given when it has a `/`, else the first match on `PATH`.
pub(super) fn find_program(name: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let runnable = |p: &Path| p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false);
    if name.components().count() > 1 {
        return runnable(name).then(|| name.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| runnable(p))
}

/// Everything a run needs, resolved from the options before the servers start.
pub(super) struct Plan<'a> {
    pub(super) args: &'a BootTestArgs,
    /// The lab with the targets' addresses rewritten.
    pub(super) lab: LabConfig,
    pub(super) qemu: PathBuf,
    pub(super) expect: Option<Regex>,
    pub(super) catalogue: std::sync::Arc<Catalogue>,
    pub(super) netns: Option<&'a Netns>,
    pub(super) targets: &'a [Target],
    pub(super) logs: Vec<Log>,
    /// Where each run's outcome goes (`--results-job`).
    pub(super) results: Option<super::upload::Results>,
}
