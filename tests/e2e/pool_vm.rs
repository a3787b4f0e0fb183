//! A `kind: vm` DUT of the pool (issue 16 §4), with the real binary, a real QEMU guest (the
//! vdut kit) and real clients: the pool allocates it with a job, citron starts its QEMU in a
//! network namespace of its own, the guest netboots from citron and writes to its NBD disk
//! (seen by the server at the DUT's own address), its console lands in its job's run; released,
//! its QEMU stops; the next tenant's job finds the disk reset (read with nbdcopy from the
//! VM's own namespace, as the DUT, while its second VM starts). One full boot.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use citron_tests::api::Reply;
use citron_tests::{require_tool, strict, Citron};
use serde_json::{json, Value};

use crate::qemu;

const ADMIN: &str = "admin-s3cret";
const VM_IP: &str = "198.18.78.11";

/// A global IPv4 address of this host: a VM in its own namespace reaches citron there (not on
/// loopback).
fn host_address() -> Option<String> {
    let out = Command::new("ip").args(["-4", "-o", "addr", "show", "scope", "global"]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let found = text.split_whitespace().skip_while(|w| *w != "inet").nth(1).and_then(|a| a.split('/').next()).map(String::from);
    if found.is_none() {
        let msg = "this host has no global IPv4 address for a VM DUT to reach citron at";
        assert!(!strict(), "{msg}; CITRON_E2E_STRICT=1 forbids skipping");
        eprintln!("SKIPPED: {msg}");
    }
    found
}

fn call(c: &Citron, token: &str, method: &str, path: &str, body: Option<Value>) -> Reply {
    let auth = format!("Authorization: Bearer {token}");
    let b = body.map(|b| b.to_string());
    let mut a = vec!["-H", &auth];
    if let Some(b) = &b {
        a.extend(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    c.api(method, path, &a)
}

fn tenant(c: &Citron, name: &str) -> String {
    let r = call(c, ADMIN, "POST", "/api/v1/tenants", Some(json!({"name": name})));
    assert_eq!(r.status, 201, "{r:?}");
    r.json()["token"].as_str().unwrap().to_string()
}

/// Waits (bounded) until `pred` holds for the pool's view of `vm1`; answers it.
fn until_dut(c: &Citron, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let r = call(c, ADMIN, "GET", "/api/v1/pool/duts", None);
        let d = r.json().as_array().unwrap().iter().find(|d| d["id"] == "vm1").cloned().unwrap();
        if pred(&d) {
            return d;
        }
        assert!(Instant::now() < end, "vm1 never became {what}: {d}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The job: the vdut kernel and initramfs, netbooted; an ext4 disk the guest writes to
/// (`citron.fs`) when `write` is set; `results:` so that its run holds the console.
fn job(kit: &Path, write: bool) -> String {
    let fs = if write { " citron.fs=rootfs" } else { "" };
    format!(
        "name: vm-boot\nresults:\n  platform: x86_64\ndeployment:\n  start:\n    kernel:\n      file: {k}/vmlinuz\n    initramfs:\n      file: {k}/initramfs.cpio.gz\n    cmdline:\n      - console=ttyS0 panic=-1 quiet\n      - citron.mid={{{{ machine_id }}}} citron.boot=1\n      - citron.http={{{{ http_artifact_base }}}} citron.http_get=/job/hello.txt\n      - citron.nbd={{{{ nbd_host }}}}:{{{{ nbd_port }}}}{fs}\n    storage:\n      http:\n        - path: /job/hello.txt\n          data: hello from the pool\n      nbd:\n        - name: rootfs\n          filesystem:\n            type: ext4\n            size: 32M\n            data:\n              file: {k}/rootfs-a.tar.gz\n",
        k = kit.display()
    )
}

/// The run of the DUT's job that is open, with its console.
fn console_until(c: &Citron, marker: &str) -> String {
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let runs = call(c, ADMIN, "GET", "/api/v1/results/vm-boot/runs", None).json();
        let run = runs.as_array().and_then(|r| r.last()).and_then(|r| r["id"].as_i64());
        let text = match run {
            Some(id) => call(c, ADMIN, "GET", &format!("/api/v1/results/vm-boot/runs/{id}/console"), None).body,
            None => String::new(),
        };
        if text.contains(marker) {
            return text;
        }
        assert!(Instant::now() < end, "the console never showed {marker:?}:\n{text}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// This citron's VM namespaces.
fn vm_namespaces(c: &Citron) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let prefix = format!("citron-vm-{}-", c.pid());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .map(String::from)
        .collect()
}

#[test]
fn a_vm_dut_boots_from_citron_writes_its_disk_and_is_reset_for_the_next_tenant() {
    if !["qemu-system-x86_64", "busybox", "nbd-client", "cpio", "modprobe", "nbdcopy", "debugfs"].iter().all(|t| require_tool(t))
        || !qemu::can_make_namespaces()
    {
        return;
    }
    let Some(host) = host_address() else { return };
    let _one = citron_tests::qemu_lock();
    let kit = qemu::kit("tests/vdut/build.sh");
    let dir = tempfile::tempdir().unwrap();
    let lab = dir.path().join("lab.yaml");
    std::fs::write(
        &lab,
        format!(
            "duts:\n  - id: vm1\n    kind: vm\n    mac: \"52:54:00:c1:01:01\"\n    ip: [\"{VM_IP}\"]\n    tags: [vm]\n    vm: {{memory: 512M, cpus: 1, accel: tcg}}\nartifact_roots: [{}]\n",
            kit.display()
        ),
    )
    .unwrap();
    let any = format!("{host}:0");
    let c = Citron::start_with(&["--lab", lab.to_str().unwrap(), "--http", &any, "--nbd", &any, "--tftp", "off"], |c| {
        c.env("CITRON_API_TOKEN", ADMIN);
    })
    .unwrap_or_else(|f| panic!("citron did not start: {}", f.stderr));
    let (a, b) = (tenant(&c, "a"), tenant(&c, "b"));

    // Tenant a: allocated with a job, so powered on with it: QEMU starts, the guest boots.
    let r = call(&c, &a, "POST", "/api/v1/reservations", Some(json!({"kind": "vm", "job": job(&kit, true)})));
    assert_eq!(r.status, 201, "{r:?}");
    let first = r.json()["id"].as_i64().unwrap();
    until_dut(&c, "allocated", |d| d["state"] == "allocated");
    assert_eq!(vm_namespaces(&c).len(), 1, "one namespace for the running VM");
    // Its console is where the DUT's console is read: its job's run.
    let console = console_until(&c, "VDUT: done");
    assert!(console.contains("iPXE"), "the firmware's own output is captured too:\n{console}");
    assert!(console.contains("VDUT: start mid=vm1 "), "{console}");
    assert!(console.contains("VDUT: http-get /job/hello.txt OK hello from the pool"), "{console}");
    assert!(console.contains("VDUT: fs OK rootfs of job a"), "{console}");
    assert!(console.contains("VDUT: fs-boots boot 1"), "the guest wrote its disk:\n{console}");
    // The server saw the guest at the DUT's own address: its reads are in vm1's access log.
    let acc = call(&c, ADMIN, "GET", "/api/v1/duts/vm1/accesses", None).json();
    let paths: Vec<&str> = acc.as_array().unwrap().iter().filter_map(|r| r["path"].as_str()).collect();
    for p in ["/boot.ipxe", "/boot/vm1/kernel", "/job/hello.txt", "rootfs"] {
        assert!(paths.contains(&p), "{p} not in vm1's accesses: {paths:?}");
    }

    // Released: QEMU stopped, its namespace gone, the DUT back in the pool.
    assert_eq!(call(&c, &a, "DELETE", &format!("/api/v1/reservations/{first}"), None).status, 200);
    until_dut(&c, "free", |d| d["state"] == "free");
    assert!(vm_namespaces(&c).is_empty(), "the VM's namespace is deleted with it");

    // Tenant b, same disk, a job whose guest does not touch it: read as the DUT (from the
    // VM's namespace) once its job started, the disk has the tarball and not a's write.
    let r = call(&c, &b, "POST", "/api/v1/reservations", Some(json!({"kind": "vm", "job": job(&kit, false)})));
    assert_eq!(r.status, 201, "{r:?}");
    let second = r.json()["id"].as_i64().unwrap();
    until_dut(&c, "allocated to b", |d| d["state"] == "allocated" && d["reservation"] == second);
    let ns = vm_namespaces(&c);
    assert_eq!(ns.len(), 1, "{ns:?}");
    let img = dir.path().join("rootfs.img");
    let nbd = format!("nbd://{}/rootfs", c.nbd.unwrap());
    let out = Command::new("ip").args(["netns", "exec", &ns[0], "nbdcopy", &nbd, img.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "nbdcopy as the DUT: {}", String::from_utf8_lossy(&out.stderr));
    let cat = |f: &str| {
        let o = Command::new("debugfs").args(["-R", &format!("cat /{f}"), img.to_str().unwrap()]).output().unwrap();
        (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    assert_eq!(cat("marker.txt").0.trim(), "rootfs of job a");
    let (boots, err) = cat("boots.txt");
    assert!(boots.is_empty() && err.contains("not found"), "a's write survived: {boots:?} {err}");
    assert_eq!(call(&c, &b, "DELETE", &format!("/api/v1/reservations/{second}"), None).status, 200);
    until_dut(&c, "free", |d| d["state"] == "free");
    assert!(vm_namespaces(&c).is_empty());
}
