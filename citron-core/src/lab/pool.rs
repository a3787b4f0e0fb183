//! The pool's keys in the lab file: what each DUT is (`kind`, `arch`, `model`, `power`, `vm`),
//! the pool's own settings (`pool:`) and the tenants' quotas (`tenants:`).
//!
//! The core only describes them; the pool itself (reservations, allocation, power commands)
//! lives in `citron_lab::pool`, which reads these types.
//!
//! ```
//! use citron_core::lab::{LabConfig, DutKind};
//! let lab = LabConfig::from_yaml(r#"
//! duts:
//!   - id: m1
//!     ip: ["127.0.0.2"]
//!     arch: x86_64
//!     model: r640
//!     power: {on: "ipmitool power on", off: "ipmitool power off", timeout: 30s}
//! pool: {default_lifetime: 1h, max_lifetime: 6h}
//! tenants:
//!   ci: {max_duts: 4, max_priority: 10}
//! "#, "lab.yaml").unwrap();
//! assert_eq!(lab.duts[0].kind, DutKind::Baremetal);
//! assert_eq!(lab.tenants["ci"].max_duts, Some(4));
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::limits::Dur;

/// What a DUT is: a physical machine powered by commands, or a VM citron starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DutKind {
    /// A physical machine (the default): powered by its `power` commands.
    #[default]
    Baremetal,
    /// A QEMU machine citron starts on its gateway when it is powered on.
    Vm,
}

impl DutKind {
    /// Whether this is the default (so that it is not written out).
    pub fn is_baremetal(&self) -> bool {
        *self == DutKind::Baremetal
    }

    /// Its name in the lab file and the API.
    pub fn name(self) -> &'static str {
        match self {
            DutKind::Baremetal => "baremetal",
            DutKind::Vm => "vm",
        }
    }
}

/// `power:` of a DUT: shell commands run with `CITRON_DUT_ID`, `CITRON_DUT_IP` (space-separated
/// addresses) and `CITRON_DUT_MAC` in the environment, each bounded by `timeout`. A command
/// that is not given is not needed (a DUT without `off` stays on between reservations).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PowerCommands {
    /// Powers the DUT on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<String>,
    /// Powers it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub off: Option<String>,
    /// Power-cycles it (off then on, when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycle: Option<String>,
    /// The longest a command may run before the DUT is quarantined; default `60s`.
    #[serde(default = "default_power_timeout")]
    pub timeout: Dur,
}

fn default_power_timeout() -> Dur {
    Dur(Duration::from_secs(60))
}

/// `vm:` of a `kind: vm` DUT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmSettings {
    /// Its memory (`2G`); default 1 GiB.
    #[serde(default = "default_vm_memory")]
    pub memory: crate::limits::Size,
    /// Its virtual CPUs; default 1.
    #[serde(default = "default_vm_cpus")]
    pub cpus: u32,
    /// Its firmware; default `bios`.
    #[serde(default)]
    pub firmware: Firmware,
    /// Its accelerator; default `auto`.
    #[serde(default)]
    pub accel: Accel,
}

/// A VM's accelerator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM where /dev/kvm opens read-write, TCG otherwise.
    #[default]
    Auto,
    /// Hardware virtualisation (/dev/kvm).
    Kvm,
    /// Software emulation: slow (about 15 s of one core to a shell), works everywhere, also
    /// where /dev/kvm exists but cannot run guests ("KVM internal error").
    Tcg,
}

fn default_vm_memory() -> crate::limits::Size {
    crate::limits::Size(1 << 30)
}

fn default_vm_cpus() -> u32 {
    1
}

/// A VM's firmware.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// SeaBIOS (QEMU's default).
    #[default]
    Bios,
    /// OVMF.
    Uefi,
}

/// `pool:` in the lab file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolSettings {
    /// A reservation's lifetime when the request names none; default `6h`.
    #[serde(default = "default_lifetime")]
    pub default_lifetime: Dur,
    /// The longest lifetime any reservation may have (a tenant's own maximum may be lower);
    /// default `12h`.
    #[serde(default = "default_max_lifetime")]
    pub max_lifetime: Dur,
    /// The job (a file) a DUT with this tag runs before it returns to the pool (the first of
    /// its tags that has one). It must have `results:`: its run is the verdict, passed when
    /// the DUT finishes it with `success` (its `{{ upload_token }}` on the results API, or a
    /// `job_end` event with a status); anything else, or no end within `health_timeout`,
    /// quarantines the DUT with the run's console as the output.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub health_jobs: BTreeMap<String, std::path::PathBuf>,
    /// Serve Duffy's legacy API (`/duffy/Node/get`, `…/Node/done`, `…/Node/fail`,
    /// `…/Inventory`) for CI scripts written against Duffy; default off. Off by default because,
    /// as Duffy's, its `Inventory` without a key lists the pool's DUTs to anyone who reaches the
    /// API (cico's `node get` reads it to print its table).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duffy: bool,
    /// The longest a health job may run; default `10m`.
    #[serde(default = "default_health_timeout")]
    pub health_timeout: Dur,
}

fn default_health_timeout() -> Dur {
    Dur(Duration::from_secs(600))
}

fn default_lifetime() -> Dur {
    Dur(Duration::from_secs(6 * 3600))
}

fn default_max_lifetime() -> Dur {
    Dur(Duration::from_secs(12 * 3600))
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            default_lifetime: default_lifetime(),
            max_lifetime: default_max_lifetime(),
            health_jobs: BTreeMap::new(),
            duffy: false,
            health_timeout: default_health_timeout(),
        }
    }
}

/// One tenant's quota under `tenants:`; what is not given is not bounded (besides the pool's
/// `max_lifetime`), except the priority: a tenant not listed, or without `max_priority`,
/// reserves at priority 0 at most.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantQuota {
    /// The most DUTs its reservations may hold at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duts: Option<u32>,
    /// The longest lifetime of its reservations (at most the pool's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime: Option<Dur>,
    /// The highest priority its requests get (higher ones are lowered to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_priority: Option<i64>,
}

/// The tenants' quotas by name.
pub type Tenants = BTreeMap<String, TenantQuota>;
