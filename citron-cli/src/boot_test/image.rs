//! `--image`: a whole disk image booted by QEMU's own firmware with citron as its disk.
//!
//! Each image and firmware (`--image A --image B --firmware bios --firmware uefi` is four
//! runs) becomes a DUT of its own in the in-process lab, and the boot-test gives it a job like
//! any other: one NBD disk made from the image, `reset_on: boot`. The core prepares the image
//! once (qcow2 converted to raw) as a read-only base and gives the DUT a copy-on-write overlay,
//! so whatever the booted system writes is dropped and **the image file is never written**.
//! QEMU attaches that export as its virtio disk over NBD (`bootindex=0`), so the boot sector,
//! the bootloader, the kernel and userspace are all read from citron; the firmware is QEMU's:
//! SeaBIOS, or OVMF from Debian's `ovmf` package.

use std::io::Read as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use citron_core::job::{JobDescription, Origin};
use citron_core::lab::LabConfig;
use citron_core::namespace::{Dut, DutId};
use clap::ValueEnum;

use super::netns::dut_netns_addr;
use super::plan::{Boot, Target};
use super::BootTestError;

/// The NBD export the image is served as.
pub(super) const EXPORT: &str = "disk";

/// The firmware QEMU starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Firmware {
    /// SeaBIOS (QEMU's default): boots the disk's MBR.
    Bios,
    /// OVMF (UEFI, Debian's `ovmf` package): boots `EFI/BOOT/BOOTX64.EFI` from the ESP.
    Uefi,
}

impl Firmware {
    pub(super) fn name(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }
}

/// What `--image-format` says the image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImageFormat {
    /// Decided from the image's first bytes (qcow2's magic, raw otherwise).
    Auto,
    /// A raw disk image.
    Raw,
    /// A qcow2 image (converted to raw once, when the job is loaded; no backing file).
    Qcow2,
}

/// The OVMF code and variables template, or why not.
pub(super) fn ovmf() -> Result<(PathBuf, PathBuf), BootTestError> {
    citron_lab::vm::qemu::ovmf().ok_or_else(|| {
        BootTestError::Usage(
            "--firmware uefi needs OVMF (/usr/share/OVMF/OVMF_CODE_4M.fd); install the ovmf package (scripts/setup-debian.sh --qemu)"
                .into(),
        )
    })
}

/// One `--image` as given: a local file (absolute) or a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ImageSource {
    File(PathBuf),
    Url(String),
}

impl ImageSource {
    /// `http://`, `https://` and `s3://` are URLs; anything else is a path, which must exist.
    pub(super) fn parse(given: &str, format: ImageFormat) -> Result<ImageSource, BootTestError> {
        if ["http://", "https://", "s3://"].iter().any(|p| given.starts_with(p)) {
            return Ok(ImageSource::Url(given.to_string()));
        }
        let path = std::fs::canonicalize(given).map_err(|e| BootTestError::Usage(format!("--image {given}: {e}")))?;
        if !path.is_file() {
            return Err(BootTestError::Usage(format!("--image {given}: not a regular file")));
        }
        let mut magic = [0u8; 4];
        let n = std::fs::File::open(&path)
            .and_then(|mut f| f.read(&mut magic))
            .map_err(|source| BootTestError::Io { path: path.clone(), source })?;
        let is_qcow2 = n == 4 && &magic == b"QFI\xfb";
        match (format, is_qcow2) {
            (ImageFormat::Raw, true) => {
                Err(BootTestError::Usage(format!("--image {given} is a qcow2 image, not raw; use --image-format qcow2 or auto")))
            }
            (ImageFormat::Qcow2, false) => {
                Err(BootTestError::Usage(format!("--image {given} is not a qcow2 image (no qcow2 magic); use --image-format raw or auto")))
            }
            _ => Ok(ImageSource::File(path)),
        }
    }

    /// The file name, for DUT ids and tables.
    pub(super) fn short_name(&self) -> String {
        let s = match self {
            ImageSource::File(p) => p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            ImageSource::Url(u) => u.rsplit('/').find(|s| !s.is_empty()).unwrap_or(u).split('?').next().unwrap_or_default().to_string(),
        };
        if s.is_empty() {
            "image".into()
        } else {
            s
        }
    }
}

/// `--image` as given: `FIRMWARE:PATH|URL` (`uefi:disk.img`) pins the image to one firmware;
/// without a prefix it boots under every `--firmware`.
pub(super) fn split_firmware(given: &str) -> (Option<Firmware>, &str) {
    for f in [Firmware::Bios, Firmware::Uefi] {
        if let Some(rest) = given.strip_prefix(f.name()).and_then(|r| r.strip_prefix(':')) {
            if !rest.starts_with("//") {
                return (Some(f), rest);
            }
        }
    }
    (None, given)
}

/// One run of the matrix: an image under a firmware.
#[derive(Debug, Clone)]
pub(super) struct ImageRun {
    pub(super) source: ImageSource,
    pub(super) firmware: Firmware,
}

impl ImageRun {
    /// `bios.img [uefi]`.
    pub(super) fn label(&self) -> String {
        format!("{} [{}]", self.source.short_name(), self.firmware.name())
    }

    /// The job the boot-test gives the run's DUT: the image as its one NBD disk, writes
    /// dropped at every boot.
    pub(super) fn job_yaml(&self) -> String {
        let (key, value) = match &self.source {
            ImageSource::File(p) => ("file", p.display().to_string()),
            ImageSource::Url(u) => ("url", u.clone()),
        };
        format!(
            "# written by citron boot-test: {label}\ndeployment:\n  start:\n    storage:\n      nbd:\n        - name: {EXPORT}\n          {key}: {value}\n          reset_on: boot\n",
            label = self.label(),
            value = serde_json::Value::String(value),
        )
    }

    /// The job, parsed; a local image's directory is its `file:` root (the boot-test's user
    /// named the file, as `serve --job` trusts a job's own directory).
    pub(super) fn job(&self) -> Result<JobDescription, BootTestError> {
        let base_dir = match &self.source {
            ImageSource::File(p) => p.parent().map(Path::to_path_buf),
            ImageSource::Url(_) => None,
        };
        JobDescription::parse(&self.job_yaml(), Origin { name: format!("boot-test job for {}", self.label()), base_dir })
            .map_err(BootTestError::Job)
    }
}

/// Every image under every firmware, each a new DUT of the in-process lab with the address the
/// server will see it at (127.0.0.1 under slirp, its namespace's address with `--netns`).
pub(super) fn image_targets(lab: &mut LabConfig, runs: Vec<ImageRun>, netns: bool) -> Result<Vec<Target>, BootTestError> {
    let mut targets: Vec<Target> = Vec::new();
    for (i, run) in runs.into_iter().enumerate() {
        let stem = run.source.short_name();
        let stem = stem.rsplit_once('.').map(|(a, _)| a).filter(|a| !a.is_empty()).unwrap_or(&stem);
        let base: String = format!("{stem}-{}", run.firmware.name())
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
            .take(48)
            .collect();
        let mut id = base.clone();
        let mut n = 2;
        while targets.iter().any(|t| t.id.0 == id) || lab.duts.iter().any(|d| d.id.0 == id) {
            id = format!("{base}-{n}");
            n += 1;
        }
        let addr: IpAddr = if netns { IpAddr::V4(dut_netns_addr(i)) } else { IpAddr::V4(std::net::Ipv4Addr::LOCALHOST) };
        targets.push(Target { id: DutId(id), boot: Boot::Image(run), mac: None, addr });
    }
    // The runs' addresses are theirs alone in the in-process lab.
    for d in &mut lab.duts {
        d.ip.retain(|ip| !targets.iter().any(|t| t.addr == *ip));
    }
    for t in &targets {
        lab.duts.push(Dut::new(t.id.0.as_str(), [t.addr]));
    }
    Ok(targets)
}
