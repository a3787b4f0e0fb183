//! The artifacts of a rendered job, listed as a DUT sees them: the one listing `citron render`
//! prints and Python's `ResolvedJob.artifacts` returns.

use super::model::{DiskSpec, FileSpec, Step};
use crate::bootfiles;
use crate::serve::Space;

/// What a listed artifact is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Listed<'a> {
    /// The step's kernel, served at `boot/<machine_id>/kernel` in every file space.
    Kernel(&'a FileSpec),
    /// The step's initramfs, served at `boot/<machine_id>/initramfs` in every file space.
    Initramfs(&'a FileSpec),
    /// A file of `storage.<space>`.
    File(Space, &'a FileSpec),
    /// A disk of `storage.nbd`.
    Disk(&'a DiskSpec),
}

/// One artifact of a step, with the name a DUT asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Artifact<'a> {
    /// What it is.
    pub what: Listed<'a>,
    /// The normalised path (the export name for disks).
    pub path: String,
}

impl Artifact<'_> {
    /// `kernel`, `initramfs`, `file` or `disk`.
    pub fn kind(&self) -> &'static str {
        match self.what {
            Listed::Kernel(_) => "kernel",
            Listed::Initramfs(_) => "initramfs",
            Listed::File(..) => "file",
            Listed::Disk(_) => "disk",
        }
    }

    /// Where it is served: `boot` (kernel and initramfs, in every file space), the space's name,
    /// or `nbd`.
    pub fn served(&self) -> &'static str {
        match self.what {
            Listed::Kernel(_) | Listed::Initramfs(_) => "boot",
            Listed::File(space, _) => space.0,
            Listed::Disk(_) => "nbd",
        }
    }

    /// The file's spec (`None` for disks).
    pub fn file(&self) -> Option<&FileSpec> {
        match self.what {
            Listed::Kernel(f) | Listed::Initramfs(f) | Listed::File(_, f) => Some(f),
            Listed::Disk(_) => None,
        }
    }
}

/// The artifacts of `step` for a DUT with `machine_id`, in the order listings show them: kernel,
/// initramfs, the files of each space ([`Space::ALL`] order, then as written), the disks.
///
/// ```
/// use citron_core::job::{listing, JobDescription, Origin, RenderContext};
/// let job = JobDescription::parse("deployment:\n  start:\n    kernel: {data: k}\n    storage:\n      tftp:\n        - {path: /a, data: x}\n", Origin::named("j")).unwrap();
/// let r = job.render(&RenderContext::default()).unwrap();
/// let rows: Vec<(&str, String)> = listing::artifacts(&r.start, "dut1").iter().map(|a| (a.served(), a.path.clone())).collect();
/// assert_eq!(rows, [("boot", "boot/dut1/kernel".to_string()), ("tftp", "a".to_string())]);
/// ```
pub fn artifacts<'a>(step: &'a Step, machine_id: &str) -> Vec<Artifact<'a>> {
    let mut out = Vec::new();
    if let Some(k) = &step.kernel {
        out.push(Artifact { what: Listed::Kernel(k), path: bootfiles::kernel_path(machine_id) });
    }
    if let Some(i) = &step.initramfs {
        out.push(Artifact { what: Listed::Initramfs(i), path: bootfiles::initramfs_path(machine_id) });
    }
    for space in Space::ALL {
        for f in step.files_in(*space) {
            out.push(Artifact { what: Listed::File(*space, f), path: f.path.clone() });
        }
    }
    for d in &step.nbd {
        out.push(Artifact { what: Listed::Disk(d), path: d.name.clone() });
    }
    out
}
