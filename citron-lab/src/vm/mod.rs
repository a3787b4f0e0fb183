//! QEMU machines and the network namespaces that give each its own source address: what
//! `citron boot-test` boots its guests with, and what the pool starts `kind: vm` DUTs with.
//!
//! A VM netboots through QEMU's user-mode network (slirp): its guest connects out through
//! QEMU's own sockets, so the server sees QEMU's address. Run inside a network namespace of
//! its own, QEMU's address is the namespace's, and every VM is seen at its own address, which
//! is how the gateway tells DUTs apart.
//!
//! - [`netns`]: iproute2 steps (as root): a namespace per VM joined to the host by a veth pair
//!   ([`netns::HostLink`], the pool's), and the helpers boot-test builds its bridge from.
//! - [`qemu`]: QEMU command lines: the machine, its NIC, a network boot, UEFI firmware.
//! - [`Machine`]: a running VM, supervised: its console streamed out, its end reported.

mod machine;
pub mod netns;
pub mod qemu;

pub use machine::{Exit, Machine};

/// Why a VM could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VmError {
    /// Network namespaces need root.
    #[error(
        "VM DUTs need root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to give each VM its own network namespace and address: \
         run citron as root, or describe the machine as `kind: baremetal` with `power` commands"
    )]
    NeedsRoot,
    /// An `ip` step failed.
    #[error("network namespace: {0}")]
    Netns(String),
    /// QEMU could not be started.
    #[error("qemu: {0}")]
    Qemu(String),
    /// The DUT cannot be a VM as described.
    #[error("{0}")]
    Config(String),
}
