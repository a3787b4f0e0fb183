//! DUTs and their namespaces: who is asking, and which names they may use.
//!
//! A backend identifies a DUT by what it sees (its source address); the [`DutRegistry`] turns that
//! into a [`Dut`]. Request paths go through [`normalize`] before anything is looked up, so that no
//! spelling of a path (`/../`, `//etc/passwd`, `a/./b`) can name something outside the namespace:
//! namespaces are maps from normalised names to artifacts, never directories on disk.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::lab::{DutKind, PowerCommands, VmSettings};
pub use crate::serve::DutId;

/// A device under test as the lab knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Dut {
    /// Unique id.
    pub id: DutId,
    /// The `machine_id` templates see and boot paths use; defaults to `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    /// MAC address (`52:54:00:00:00:01`); some firmware prefixes TFTP paths with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Board serial number; Raspberry Pi firmware prefixes TFTP paths with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// The source addresses requests from this DUT come from.
    #[serde(default)]
    pub ip: Vec<IpAddr>,
    /// Free-form tags (`x86_64`, `vm`), for pools and affinity.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The gateway that serves it (`citron serve --gateway NAME`), in a lab of several; `None`:
    /// the gateway that reads the lab file (or registered it through the API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// What it is (`baremetal`, the default, or `vm`), for the pool.
    #[serde(default, skip_serializing_if = "DutKind::is_baremetal")]
    pub kind: DutKind,
    /// Its CPU architecture (`x86_64`, `aarch64`), for the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// Its model: the "same-ish platform" a tenant gets again when it can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// How the pool powers it (a `baremetal` DUT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<PowerCommands>,
    /// Its machine (a `vm` DUT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmSettings>,
}

impl Dut {
    /// A DUT with only an id and addresses.
    pub fn new(id: &str, ips: impl IntoIterator<Item = IpAddr>) -> Dut {
        Dut {
            id: DutId(id.into()),
            machine_id: None,
            mac: None,
            serial: None,
            ip: ips.into_iter().collect(),
            tags: vec![],
            gateway: None,
            kind: DutKind::Baremetal,
            arch: None,
            model: None,
            power: None,
            vm: None,
        }
    }

    /// `machine_id`, or the id.
    pub fn machine_id(&self) -> &str {
        self.machine_id.as_deref().unwrap_or(&self.id.0)
    }

    /// The first path component firmware may put before a name (serial, MAC in either spelling).
    pub fn path_prefixes(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(s) = &self.serial {
            out.push(s.to_ascii_lowercase());
        }
        if let Some(m) = &self.mac {
            let m = m.to_ascii_lowercase();
            out.push(m.replace(':', "-"));
            out.push(m.replace(':', ""));
            out.push(m);
        }
        out
    }
}

/// Why a DUT cannot be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// Two DUTs with one id.
    #[error("a DUT with id \"{0}\" already exists; remove it first or pick another id")]
    DuplicateId(DutId),
    /// Two DUTs with one address: requests could not be told apart.
    #[error("address {addr} already belongs to DUT \"{owner}\"; every DUT needs its own source address")]
    DuplicateAddress {
        /// The address.
        addr: IpAddr,
        /// Who has it.
        owner: DutId,
    },
    /// An id that cannot be used in paths.
    #[error("DUT id {0:?} must be 1-64 characters of letters, digits, '-', '_' or '.'")]
    BadId(String),
    /// Another gateway of the lab already serves a DUT with this id.
    #[error("DUT {dut:?} is claimed by two gateways, {owner:?} and {claimant:?}: a DUT belongs to one gateway; set `gateway: NAME` on it in the lab file, or remove it from {owner:?} first")]
    ClaimedElsewhere {
        /// The DUT.
        dut: DutId,
        /// The gateway that serves it.
        owner: String,
        /// The gateway that claimed it too.
        claimant: String,
    },
}

/// The lab's DUTs, found by id or by source address.
#[derive(Debug, Clone, Default)]
pub struct DutRegistry {
    by_id: BTreeMap<DutId, Dut>,
    by_ip: BTreeMap<IpAddr, DutId>,
}

impl DutRegistry {
    /// Adds a DUT; ids and addresses must be unique.
    pub fn add(&mut self, dut: Dut) -> Result<(), RegistryError> {
        let id = &dut.id.0;
        let ok = !id.is_empty()
            && id.len() <= 64
            && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && id != "."
            && id != "..";
        if !ok {
            return Err(RegistryError::BadId(id.clone()));
        }
        if self.by_id.contains_key(&dut.id) {
            return Err(RegistryError::DuplicateId(dut.id));
        }
        for ip in &dut.ip {
            if let Some(owner) = self.by_ip.get(&canonical(*ip)) {
                return Err(RegistryError::DuplicateAddress { addr: *ip, owner: owner.clone() });
            }
        }
        for ip in &dut.ip {
            self.by_ip.insert(canonical(*ip), dut.id.clone());
        }
        self.by_id.insert(dut.id.clone(), dut);
        Ok(())
    }

    /// Removes a DUT; returns it if it existed.
    pub fn remove(&mut self, id: &DutId) -> Option<Dut> {
        let dut = self.by_id.remove(id)?;
        self.by_ip.retain(|_, v| v != id);
        Some(dut)
    }

    /// The DUT with this id.
    pub fn get(&self, id: &DutId) -> Option<&Dut> {
        self.by_id.get(id)
    }

    /// The DUT that sends from `addr` (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn by_addr(&self, addr: IpAddr) -> Option<&Dut> {
        self.by_ip.get(&canonical(addr)).and_then(|id| self.by_id.get(id))
    }

    /// All DUTs, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Dut> {
        self.by_id.values()
    }
}

/// `::ffff:127.0.0.2` and `127.0.0.2` are the same sender.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Paths that belong to citron: a job may not define files under them.
pub const RESERVED_PREFIXES: &[&str] = &["api/", "_citron/"];

pub use crate::serve::{PathError, MAX_PATH_BYTES};

/// Normalises a requested or declared path: leading and repeated `/` and `.` components are
/// dropped; `..`, control characters and backslashes are refused (never resolved, so that a
/// request cannot walk anywhere).
///
/// ```
/// use citron_core::namespace::{normalize, PathError};
/// assert_eq!(normalize("//job/./dtbs//a.dtb").unwrap(), "job/dtbs/a.dtb");
/// assert_eq!(normalize("/a/../../etc/passwd"), Err(PathError::ParentDir));
/// assert_eq!(normalize("a\0b"), Err(PathError::ControlChar));
/// ```
pub fn normalize(path: &str) -> Result<String, PathError> {
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    if path.chars().any(|c| c.is_control()) {
        return Err(PathError::ControlChar);
    }
    if path.contains('\\') {
        return Err(PathError::Backslash);
    }
    let mut parts = Vec::new();
    for comp in path.split('/') {
        match comp {
            "" | "." => {}
            ".." => return Err(PathError::ParentDir),
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err(PathError::Empty);
    }
    Ok(parts.join("/"))
}

/// [`normalize`], and refuse reserved prefixes: for paths a job declares.
pub fn normalize_declared(path: &str) -> Result<String, PathError> {
    let p = normalize(path)?;
    for prefix in RESERVED_PREFIXES {
        if p.starts_with(prefix) || p == prefix.trim_end_matches('/') {
            return Err(PathError::Reserved(prefix));
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn registry_rejects_duplicates() {
        let mut r = DutRegistry::default();
        r.add(Dut::new("a", ["127.0.0.2".parse().unwrap()])).unwrap();
        assert!(matches!(r.add(Dut::new("a", [])), Err(RegistryError::DuplicateId(_))));
        assert!(matches!(r.add(Dut::new("b", ["127.0.0.2".parse().unwrap()])), Err(RegistryError::DuplicateAddress { .. })));
        assert!(matches!(r.add(Dut::new("../x", [])), Err(RegistryError::BadId(_))));
        assert_eq!(r.by_addr("::ffff:127.0.0.2".parse().unwrap()).unwrap().id.0, "a");
        assert!(r.by_addr("127.0.0.3".parse().unwrap()).is_none());
    }

    #[test]
    fn reserved_prefixes_are_refused_for_jobs() {
        assert_eq!(normalize_declared("/api/v1/duts"), Err(PathError::Reserved("api/")));
        assert_eq!(normalize_declared("api"), Err(PathError::Reserved("api/")));
        assert_eq!(normalize_declared("apis/x").unwrap(), "apis/x");
    }

    proptest! {
        /// Whatever the input, an accepted path is relative, has no empty, `.` or `..` component,
        /// and has no control character: it can only name an entry of the namespace map.
        #[test]
        fn nothing_escapes(s in "[a-z./\\\\\\x00%]{0,40}") {
            if let Ok(p) = normalize(&s) {
                prop_assert!(!p.starts_with('/'));
                prop_assert!(p.split('/').all(|c| !c.is_empty() && c != "." && c != ".."));
                prop_assert!(!p.contains('\0') && !p.contains('\\'));
                prop_assert_eq!(normalize(&p).unwrap(), p.clone());
            }
        }
    }
}
