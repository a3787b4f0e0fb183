//! `--netns`: a private network namespace for the servers (a bridge) and one per DUT joined to
//! it by a veth pair, so that each DUT has its own address; deleted at the end, and those of a
//! killed boot-test at the next start.

use std::net::Ipv4Addr;

use citron_lab::vm::netns as shared;

use super::BootTestError;

/// The server's address inside the `--netns` bridge; DUTs get .11, .12, ...
pub(super) const NETNS_SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 77, 1);

pub(super) fn dut_netns_addr(i: usize) -> Ipv4Addr {
    let o = NETNS_SERVER.octets();
    Ipv4Addr::new(o[0], o[1], o[2], 11 + i as u8)
}

/// The `--netns` topology; deleting the namespaces removes every interface in them.
pub(super) struct Netns {
    server: String,
    pub(super) duts: Vec<String>,
}

impl Netns {
    pub(super) fn create(n: usize) -> Result<Netns, BootTestError> {
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

    /// Moves the calling thread into the servers' namespace; answers the namespace it was in,
    /// to come back to (the results server is reached from there).
    pub(super) fn enter_server(&self) -> Result<HostNs, BootTestError> {
        let home = "/proc/thread-self/ns/net";
        let host = std::fs::File::open(home).map_err(|e| BootTestError::Netns(format!("{home}: {e}")))?;
        shared::enter(&self.server).map_err(netns_error)?;
        Ok(HostNs(host))
    }
}

/// The namespace `boot-test` was started in.
pub(super) struct HostNs(std::fs::File);

impl HostNs {
    /// Moves the calling thread back into it.
    pub(super) fn enter(&self) -> Result<(), BootTestError> {
        setns_fd(&self.0, "the host's namespace")
    }
}

fn setns_fd(f: &std::fs::File, what: &str) -> Result<(), BootTestError> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: setns only reads the descriptor, which `f` keeps open for the call.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(BootTestError::Netns(format!("setns {what}: {}", std::io::Error::last_os_error())));
    }
    Ok(())
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in self.duts.iter().chain(std::iter::once(&self.server)) {
            shared::delete(n);
        }
    }
}

fn ip(args: &[&str]) -> Result<(), BootTestError> {
    shared::ip(args).map_err(netns_error)
}

fn netns_error(e: citron_lab::vm::VmError) -> BootTestError {
    match e {
        citron_lab::vm::VmError::Netns(m) => BootTestError::Netns(m),
        other => BootTestError::Netns(other.to_string()),
    }
}

/// Deletes namespaces left by a boot-test that was killed (`citron-bt-<pid>-*` of a dead pid).
fn reap_stale_namespaces() {
    shared::reap_stale("citron-bt-");
}
