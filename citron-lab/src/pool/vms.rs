//! `kind: vm` DUTs: powering one on starts its QEMU on this gateway, in a network namespace of
//! its own (so that it is seen at its address), netbooting from this gateway's HTTP server
//! (`boot.ipxe`, TFTP when there is no HTTP); powering off stops it.
//!
//! Its console (QEMU's serial port) goes where a DUT's console is read: into the open run of
//! its job (a job with `results:`, `GET /api/v1/results/{job}/runs/{run}/console`), and into
//! `<data>/vm/<id>.console` (the last [`CONSOLE_FILE_MAX`] bytes or so, for the administrator).
//! A VM that ends by itself (the guest powered off, QEMU failed) is logged and is a
//! `vm_exited` event on the feed; the DUT is then off.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use citron_core::lab::{Accel, Firmware, VmSettings};
use citron_core::namespace::Dut;
use citron_core::serve::Protocol;
use citron_core::Endpoints;
use serde_json::json;
use tokio::sync::mpsc;

use super::power::PowerFailure;
use crate::results::{Appended, Runs, CONSOLE_MAX_BYTES};
use crate::state::feed::{Feed, NewEvent};
use crate::vm::{netns, qemu, Exit, Machine, VmError};

/// The console file is started again past this size.
pub const CONSOLE_FILE_MAX: u64 = 4 << 20;

/// Console bytes are appended to the run in batches of at most this long a wait.
const BATCH: Duration = Duration::from_millis(250);

/// The VMs this gateway runs.
pub(super) struct Vms {
    running: tokio::sync::Mutex<HashMap<String, Machine>>,
    dir: PathBuf,
    runs: Runs,
    feed: Option<Arc<Feed>>,
}

impl Vms {
    pub(super) fn new(data_dir: &std::path::Path, runs: Runs, feed: Option<Arc<Feed>>) -> Vms {
        Vms { running: Default::default(), dir: data_dir.join("vm"), runs, feed }
    }

    /// The runs of the lab (a VM's console goes to its job's).
    pub(super) fn runs(&self) -> &Runs {
        &self.runs
    }

    /// Starts the VM of `dut` unless it runs.
    pub(super) async fn on(&self, dut: &Dut, endpoints: &Endpoints) -> Result<(), PowerFailure> {
        let mut running = self.running.lock().await;
        if running.get(&dut.id.0).is_some_and(Machine::running) {
            return Ok(());
        }
        let failed = |e: VmError| PowerFailure { reason: format!("vm power on: {e}"), output: String::new() };
        let (argv, addr) = self.argv(dut, endpoints).map_err(failed)?;
        let key = dut.id.0.clone();
        let link = tokio::task::spawn_blocking(move || netns::HostLink::create(&key, addr))
            .await
            .map_err(|e| failed(VmError::Netns(e.to_string())))?
            .map_err(failed)?;
        let (tx, rx) = mpsc::channel(64);
        let (id, feed) = (dut.id.0.clone(), self.feed.clone());
        let machine = Machine::start(argv, Some(link), tx, move |exit| exited(&id, exit, feed.as_deref())).map_err(failed)?;
        tokio::spawn(console(dut.id.0.clone(), self.dir.join(format!("{}.console", file_name(&dut.id.0))), self.runs.clone(), rx));
        tracing::info!(dut = %dut.id, %addr, "pool: VM started");
        running.insert(dut.id.0.clone(), machine);
        Ok(())
    }

    /// Stops the VM of `dut` if it runs.
    pub(super) async fn off(&self, dut: &str) {
        let m = self.running.lock().await.remove(dut);
        if let Some(m) = m {
            m.stop().await;
        }
    }

    /// QEMU's command line for `dut`, and the address it is seen at.
    fn argv(&self, dut: &Dut, endpoints: &Endpoints) -> Result<(Vec<String>, std::net::Ipv4Addr), VmError> {
        netns::check_privileges()?;
        let addr = dut.ip.iter().find_map(|i| match i {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        });
        let addr = addr.ok_or_else(|| {
            VmError::Config(format!("DUT {}: a `kind: vm` DUT needs an IPv4 address in `ip:` (its VM is seen at it)", dut.id))
        })?;
        let bootfile = bootfile(endpoints)?;
        let vm = dut.vm.clone().unwrap_or_else(vm_defaults);
        let accel = match vm.accel {
            Accel::Auto if qemu::kvm_usable() => "kvm",
            Accel::Kvm => "kvm",
            _ => "tcg",
        };
        let mut argv = vec![qemu::QEMU.to_string()];
        argv.extend(qemu::machine_args(accel, vm.memory.bytes() >> 20, vm.cpus));
        if vm.firmware == Firmware::Uefi {
            let (code, template) = qemu::ovmf()
                .ok_or_else(|| VmError::Config(format!("DUT {}: `firmware: uefi` needs OVMF; install the ovmf package", dut.id)))?;
            std::fs::create_dir_all(&self.dir).map_err(|e| VmError::Qemu(format!("{}: {e}", self.dir.display())))?;
            let vars = self.dir.join(format!("{}.vars.fd", file_name(&dut.id.0)));
            std::fs::copy(&template, &vars).map_err(|e| VmError::Qemu(format!("{}: {e}", vars.display())))?;
            argv.extend(qemu::uefi_args(&code, &vars));
        }
        argv.extend(qemu::netboot_args(&bootfile, qemu::nic(dut.mac.as_deref())));
        Ok((argv, addr))
    }
}

/// `vm:` when a `kind: vm` DUT has none: the defaults.
fn vm_defaults() -> VmSettings {
    serde_json::from_value(json!({})).expect("every key of `vm:` has a default")
}

/// `http://HOST:PORT/boot.ipxe` of this gateway (TFTP without HTTP), if a VM can reach it: not
/// on loopback, which a VM in its own namespace cannot reach.
fn bootfile(endpoints: &Endpoints) -> Result<String, VmError> {
    let (scheme, e) = [("http", Protocol::HTTP), ("tftp", Protocol::TFTP)]
        .into_iter()
        .find_map(|(s, p)| Some((s, endpoints.get(p)?)))
        .ok_or_else(|| VmError::Config("a VM netboots from citron's HTTP or TFTP server, and neither is enabled (or known: listening on 0.0.0.0 needs --advertise)".into()))?;
    let loopback = e.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()) || e.host == "[::1]" || e.host == "localhost";
    if loopback {
        return Err(VmError::Config(format!(
            "citron's {scheme} server is on {}, which a VM in its own network namespace cannot reach: listen on a host address (--http ADDR:PORT), or on 0.0.0.0 with --advertise ADDR",
            e.host
        )));
    }
    Ok(format!("{scheme}://{}:{}/boot.ipxe", e.host, e.port))
}

/// A file name for `id` (ids may hold any character).
fn file_name(id: &str) -> String {
    id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// The VM of `dut` ended: logged, and an event.
fn exited(dut: &str, exit: &Exit, feed: Option<&Feed>) {
    let detail = match exit {
        Exit::Stopped => {
            tracing::info!(dut, "pool: VM stopped");
            return;
        }
        Exit::Exited { success: true, status } => {
            tracing::info!(dut, %status, "pool: the VM powered off by itself");
            json!({"success": true, "status": status})
        }
        Exit::Exited { success: false, status } => {
            tracing::warn!(dut, %status, "pool: the VM's QEMU failed; the DUT is off (see its console)");
            json!({"success": false, "status": status})
        }
    };
    if let Some(f) = feed {
        f.emit(NewEvent::new("vm_exited").dut(dut).actor("pool").detail(detail));
    }
}

/// Carries the console of the VM of `dut` to `file` and to its job's open run, until QEMU's
/// streams end.
async fn console(dut: String, file: PathBuf, runs: Runs, mut rx: mpsc::Receiver<Vec<u8>>) {
    if let Some(d) = file.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    let mut out = std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(&file).ok();
    let mut written = 0u64;
    // The run the console goes to, and its console's length.
    let mut run: Option<(i64, u64)> = None;
    let mut open = true;
    while open {
        let Some(first) = rx.recv().await else { break };
        let mut batch = first;
        let deadline = tokio::time::Instant::now() + BATCH;
        while batch.len() < 64 << 10 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(more)) => batch.extend(more),
                Ok(None) => {
                    open = false;
                    break;
                }
                Err(_) => break,
            }
        }
        if let Some(f) = out.as_mut() {
            if written + batch.len() as u64 > CONSOLE_FILE_MAX {
                let _ = f.set_len(0);
                let _ = std::io::Seek::rewind(f);
                written = 0;
            }
            let _ = f.write_all(&batch);
            written += batch.len() as u64;
        }
        run = append(&runs, &dut, run, batch).await;
    }
}

/// Appends `data` to the DUT's open run's console (looked up when unknown or closed); answers
/// the run and its length after.
async fn append(runs: &Runs, dut: &str, run: Option<(i64, u64)>, data: Vec<u8>) -> Option<(i64, u64)> {
    let data = bytes::Bytes::from(data);
    let (id, mut at) = match run {
        Some(r) => r,
        None => (runs.open_of_dut(dut).await.ok()??.0, u64::MAX),
    };
    for _ in 0..2 {
        match runs.append_console(id, at, data.clone(), CONSOLE_MAX_BYTES).await {
            Ok(Appended::Length(n)) => return Some((id, n)),
            // The console's end (another writer, or the first append): append there.
            Ok(Appended::Gap(end)) => at = end,
            Ok(Appended::TooLong) => return Some((id, at)),
            Ok(Appended::Closed) | Err(_) => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(p: Protocol, addr: &str) -> Endpoints {
        Endpoints::seen([(p, addr.parse().unwrap())], None)
    }

    #[test]
    fn a_vm_boots_from_a_host_address_never_from_loopback() {
        assert_eq!(bootfile(&seen(Protocol::HTTP, "192.0.2.2:8080")).unwrap(), "http://192.0.2.2:8080/boot.ipxe");
        assert_eq!(bootfile(&seen(Protocol::TFTP, "192.0.2.2:69")).unwrap(), "tftp://192.0.2.2:69/boot.ipxe");
        let e = bootfile(&seen(Protocol::HTTP, "127.0.0.1:8080")).unwrap_err().to_string();
        assert!(e.contains("cannot reach") && e.contains("--http"), "{e}");
        let e = bootfile(&Endpoints::default()).unwrap_err().to_string();
        assert!(e.contains("neither is enabled"), "{e}");
        assert_eq!(file_name("rack 1/vm:2"), "rack_1_vm_2");
    }
}
