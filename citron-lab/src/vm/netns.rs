//! Network namespaces through iproute2 (root): the steps `citron boot-test --netns` builds its
//! bridge from, and [`HostLink`], the pool's namespace per VM.
//!
//! A namespace's name starts with a prefix and the pid of the citron that made it
//! (`citron-vm-<pid>-…`), so that the next start deletes those of a citron that was killed
//! ([`reap_stale`]), with whatever still runs in them.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;

use super::VmError;

/// Runs `ip ARGS…`; its stderr is the error.
pub fn ip(args: &[&str]) -> Result<(), VmError> {
    let out = std::process::Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| VmError::Netns(format!("ip {}: {e} (install iproute2)", args.join(" "))))?;
    if !out.status.success() {
        return Err(VmError::Netns(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(())
}

/// Whether this process may make namespaces: root (the capabilities `ip netns` needs).
pub fn check_privileges() -> Result<(), VmError> {
    // SAFETY: geteuid has no preconditions and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        return Err(VmError::NeedsRoot);
    }
    Ok(())
}

/// Deletes the namespace `name` (and so every interface in it), after killing what runs in it
/// (but this process, whose threads may have entered it).
pub fn delete(name: &str) {
    if let Ok(out) = std::process::Command::new("ip").args(["netns", "pids", name]).stderr(Stdio::null()).output() {
        let me = std::process::id().to_string();
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace().filter(|p| *p != me).filter_map(|p| p.parse::<i32>().ok()) {
            // SAFETY: kill(2) on a pid; no memory is touched.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    let _ = std::process::Command::new("ip").args(["netns", "del", name]).stderr(Stdio::null()).status();
}

/// Deletes the namespaces `<prefix><pid>-…` whose citron (`pid`) is gone.
pub fn reap_stale(prefix: &str) {
    let Ok(entries) = std::fs::read_dir("/run/netns") else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix(prefix) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            delete(&name);
        }
    }
}

/// Moves the calling thread into the namespace `name`.
pub fn enter(name: &str) -> Result<(), VmError> {
    use std::os::fd::AsRawFd as _;
    let path = format!("/run/netns/{name}");
    let f = std::fs::File::open(&path).map_err(|e| VmError::Netns(format!("{path}: {e}")))?;
    // SAFETY: setns only reads the descriptor, which `f` keeps open for the call.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(VmError::Netns(format!("setns {path}: {}", std::io::Error::last_os_error())));
    }
    Ok(())
}

/// The prefix of the pool's VM namespaces.
pub const VM_PREFIX: &str = "citron-vm-";

/// One VM's namespace: `addr` on its `eth0`, a veth pair to the host and a host route to
/// `addr` through it. Inside, the default route goes out `eth0`; the host answers (ARP) for
/// its own addresses on the veth, so a VM reaches citron at any of the host's addresses but
/// loopback, and citron sees it at `addr`. Deleted (with the pair and the route) when dropped.
#[derive(Debug)]
pub struct HostLink {
    name: String,
}

impl HostLink {
    /// The namespace of the VM `key` (a DUT id) seen at `addr`.
    pub fn create(key: &str, addr: Ipv4Addr) -> Result<HostLink, VmError> {
        check_privileges()?;
        reap_stale(VM_PREFIX);
        // Interface names have at most 15 bytes: a hash of the key, not the key.
        let h = hash8(key);
        let link = HostLink { name: format!("{VM_PREFIX}{}-{h}", std::process::id()) };
        delete(&link.name);
        let (ns, host_end) = (link.name.as_str(), format!("cv{h}"));
        let cidr = format!("{addr}/32");
        ip(&["netns", "add", ns])?;
        // From here on, Drop deletes whatever was made.
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&["link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", ns])?;
        ip(&["-n", ns, "addr", "add", &cidr, "dev", "eth0"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", ns, "route", "add", "default", "dev", "eth0"])?;
        ip(&["link", "set", &host_end, "up"])?;
        ip(&["route", "replace", &cidr, "dev", &host_end])?;
        Ok(link)
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for HostLink {
    fn drop(&mut self) {
        delete(&self.name);
    }
}

/// Eight hex digits of FNV-1a over `s`: stable names from ids of any length.
fn hash8(s: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_fit_an_interface() {
        let h = super::hash8("a DUT id that is far longer than fifteen bytes");
        assert_eq!(h.len(), 8);
        assert_ne!(h, super::hash8("another"));
        assert!(format!("cv{h}").len() <= 15);
    }
}
