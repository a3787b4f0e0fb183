//! The NBD backend against real clients (libnbd's nbdinfo, nbdcopy, nbdsh; qemu-img; e2fsck,
//! debugfs) and raw sockets for what clients cannot do (another source address, broken input).
//!
//! Each test runs an in-process gateway and server on 127.0.0.1:0. DUT `local` (127.0.0.1) owns
//! the job's disks so that libnbd clients, which cannot pick a source address, are that DUT;
//! `dut2` (127.0.0.3, from the default lab) is reached with raw sockets bound to its address.

mod nbd_util;
#[path = "../../tests/registry.rs"]
mod registry;

use std::process::Command;
use std::time::{Duration, Instant};

use citron_core::job::{DiskKind, FsContents, ResetOn, Source};
use citron_core::lifetime::Event;
use citron_protocols::nbd::wire::{self, cmd, errno, opt, rep};
use nbd_util::*;
use registry::Registry;

#[test]
fn image_export_lists_copies_and_compares() {
    if !have("nbdinfo") || !have("nbdcopy") || !have("qemu-img") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src.img");
    std::fs::write(&src, pattern(8 << 20)).unwrap();
    let lab = Lab::start(vec![disk("disk", DiskKind::Image { source: Source::File(src.clone()), sha256: None }, ResetOn::JobStart)]);
    let list = run(Command::new("nbdinfo").args(["--list", &lab.uri("")]));
    assert!(list.contains("export=\"disk\""), "{list}");
    assert!(list.contains("export-size: 8388608"), "{list}");
    let out = t.path().join("out.img");
    run(Command::new("nbdcopy").arg(lab.uri("disk")).arg(&out));
    assert_eq!(sha256_file(&out), sha256_file(&src));
    let out1 = t.path().join("out1.img");
    run(Command::new("nbdcopy").args(["-C", "1", "--synchronous"]).arg(lab.uri("disk")).arg(&out1));
    assert_eq!(sha256_file(&out1), sha256_file(&src));
    let cmp = run(Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "raw"]).arg(&src).arg(lab.uri("disk")));
    assert!(cmp.contains("identical"), "{cmp}");
}

#[test]
fn qcow2_image_is_served_as_raw() {
    if !have("qemu-img") || !have("nbdcopy") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let raw = t.path().join("src.img");
    std::fs::write(&raw, pattern(3 << 20)).unwrap();
    let q = t.path().join("src.qcow2");
    run(Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(&q));
    let lab = Lab::start(vec![disk("q", DiskKind::Image { source: Source::File(q), sha256: None }, ResetOn::JobStart)]);
    let out = t.path().join("out.img");
    run(Command::new("nbdcopy").arg(lab.uri("q")).arg(&out));
    assert_eq!(sha256_file(&out), sha256_file(&raw));
}

#[test]
fn boot_resets_boot_disks_and_never_keeps_writes() {
    if !have_nbdsh() {
        return;
    }
    let size = 4 << 20;
    let lab = Lab::start(vec![
        disk("b", raw(size), ResetOn::Boot),
        disk("n", raw(size), ResetOn::Never),
        disk("j", raw(size), ResetOn::JobStart),
    ]);
    for name in ["b", "n", "j"] {
        nbdsh(&lab.uri(name), "h.pwrite(b'citron' * 1000, 12345); h.flush()");
    }
    let written = "assert h.pread(6000, 12345) == b'citron' * 1000, 'lost'";
    let pristine = "assert h.pread(6000, 12345) == bytes(6000), 'not reset'";
    lab.event(Event::Boot);
    nbdsh(&lab.uri("b"), pristine);
    nbdsh(&lab.uri("n"), written);
    nbdsh(&lab.uri("j"), written);
    lab.event(Event::JobStart);
    nbdsh(&lab.uri("j"), pristine);
    nbdsh(&lab.uri("n"), written);
}

#[test]
fn never_disk_survives_gateway_restart_and_job_start_disk_does_not() {
    if !have_nbdsh() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let disks = || vec![disk("n", raw(1 << 20), ResetOn::Never), disk("j", raw(1 << 20), ResetOn::JobStart)];
    {
        let lab = Lab::start_in(t.path(), disks());
        nbdsh(&lab.uri("n"), "h.pwrite(b'kept', 4096); h.flush()");
        nbdsh(&lab.uri("j"), "h.pwrite(b'gone', 4096); h.flush()");
    }
    let lab = Lab::start_in(t.path(), disks());
    nbdsh(&lab.uri("n"), "assert h.pread(4, 4096) == b'kept'");
    nbdsh(&lab.uri("j"), "assert h.pread(4, 4096) == bytes(4)");
}

#[test]
fn flushed_writes_survive_kill_9() {
    if !have_nbdsh() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let mut server = Child::spawn(&data, "crash", "raw:16777216", "never");
    let script = "import os\nfor i in range(64):\n    h.pwrite(bytes([i % 251 + 1]) * 65536, i * 65536)\nh.flush()\nh.pwrite(b'fua!', 8 << 20, nbd.CMD_FLAG_FUA)";
    nbdsh(&server.uri(), script);
    server.kill9();
    let server = Child::spawn(&data, "crash", "raw:16777216", "never");
    nbdsh(
        &server.uri(),
        "for i in range(64):\n    assert h.pread(65536, i * 65536) == bytes([i % 251 + 1]) * 65536, i\nassert h.pread(4, 8 << 20) == b'fua!'",
    );
}

#[test]
fn readonly_export_refuses_writes_with_eperm() {
    if !have_nbdsh() {
        return;
    }
    let mut d = disk("ro", raw(1 << 20), ResetOn::JobStart);
    d.readonly = true;
    let lab = Lab::start(vec![d]);
    nbdsh(
        &lab.uri("ro"),
        "import errno\nassert h.is_read_only()\nh.set_strict_mode(0)\ntry:\n    h.pwrite(b'x', 0)\n    raise SystemExit('write accepted')\nexcept nbd.Error as e:\n    assert e.errnum == errno.EPERM, e",
    );
}

#[test]
fn requests_past_the_end_get_einval_for_reads_and_enospc_for_writes() {
    if !have_nbdsh() {
        return;
    }
    let lab = Lab::start(vec![disk("d", raw(1 << 20), ResetOn::JobStart)]);
    nbdsh(
        &lab.uri("d"),
        "import errno\nh.set_strict_mode(0)\nend = 1 << 20\nfor want, f in ((errno.EINVAL, lambda: h.pread(10, end - 5)), (errno.ENOSPC, lambda: h.pwrite(b'x' * 10, end - 5)), (errno.ENOSPC, lambda: h.trim(4096, end)), (errno.ENOSPC, lambda: h.zero(2, end - 1)), (errno.ENOSPC, lambda: h.pwrite(b'y', end))):\n    try:\n        f()\n        raise SystemExit('accepted')\n    except nbd.Error as e:\n        assert e.errnum == want, (want, e)\nassert h.pread(5, end - 5) == bytes(5)\nassert h.pread(4096, end - 4096) == bytes(4096)",
    );
}

#[test]
fn trim_on_a_writable_export_reads_back_zeros() {
    if !have_nbdsh() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src.img");
    let data = pattern(1 << 20);
    std::fs::write(&src, &data).unwrap();
    let lab = Lab::start(vec![disk("img", DiskKind::Image { source: Source::File(src), sha256: None }, ResetOn::JobStart)]);
    // An aligned trim over the base image, an unaligned one over the DUT's own write, with FUA.
    nbdsh(
        &lab.uri("img"),
        "import hashlib\nassert h.can_trim()\nbase = h.pread(1 << 20, 0)\nh.trim(65536, 131072)\nh.pwrite(b'w' * 9000, 600000)\nh.trim(5000, 601000, nbd.CMD_FLAG_FUA)\nassert h.pread(65536, 131072) == bytes(65536)\nassert h.pread(1000, 600000) == b'w' * 1000\nassert h.pread(5000, 601000) == bytes(5000)\nassert h.pread(3000, 606000) == b'w' * 3000\nassert h.pread(131072, 0) == base[:131072]\nassert h.pread(4096, 196608) == base[196608:200704]\nassert h.pread(1000, 609000) == base[609000:610000]",
    );
    // A second connection sees the trimmed ranges too.
    nbdsh(&lab.uri("img"), "assert h.pread(65536, 131072) == bytes(65536)\nassert h.pread(5000, 601000) == bytes(5000)");
    assert_ne!(&data[131072..196608], &[0u8; 65536][..], "the pattern must not be zero where the trim is checked");
}

#[test]
fn export_name_opens_a_known_export_and_closes_on_an_unknown_one() {
    if !have_nbdsh() {
        return;
    }
    let mut ro = disk("ro", raw(3 << 20), ResetOn::JobStart);
    ro.readonly = true;
    let lab = Lab::start(vec![disk("d", raw(2 << 20), ResetOn::JobStart), ro]);
    // Written with a real client (NBD_OPT_GO), read back after NBD_OPT_EXPORT_NAME.
    nbdsh(&lab.uri("d"), "h.pwrite(b'by export name', 4096); h.flush()");
    lab.rt.block_on(async {
        use citron_protocols::nbd::wire::tflag;
        let mut r = Raw::connect(lab.addr, "127.0.0.1").await;
        let (size, flags) = r.export_name("d").await.expect("known export refused");
        assert_eq!(size, 2 << 20);
        assert_eq!(
            flags & (tflag::HAS_FLAGS | tflag::SEND_FLUSH | tflag::SEND_TRIM | tflag::READ_ONLY),
            tflag::HAS_FLAGS | tflag::SEND_FLUSH | tflag::SEND_TRIM
        );
        assert_eq!(r.request(cmd::READ, 0, 4096, 14, b"").await, (0, b"by export name".to_vec()));
        assert_eq!(r.request(cmd::WRITE, 0, 0, 2, b"ok").await.0, 0);
        assert_eq!(r.request(cmd::READ, 0, 0, 2, b"").await, (0, b"ok".to_vec()));

        // Without NBD_FLAG_C_NO_ZEROES the reply carries the 124 zero bytes; the read-only flag.
        let mut z = Raw::connect_with_flags(lab.addr, "127.0.0.1", wire::CLIENT_FIXED_NEWSTYLE).await;
        let (size, flags) = z.export_name("ro").await.expect("read-only export refused");
        assert_eq!(size, 3 << 20);
        assert_ne!(flags & tflag::READ_ONLY, 0);
        assert_eq!(z.request(cmd::READ, 0, 0, 4, b"").await, (0, vec![0; 4]));
        assert_eq!(z.request(cmd::WRITE, 0, 0, 1, b"x").await.0, errno::EPERM);

        // The empty name is the DUT's first export.
        let mut e = Raw::connect(lab.addr, "127.0.0.1").await;
        assert_eq!(e.export_name("").await.map(|(s, _)| s), Some(2 << 20));

        // An unknown name: the connection is closed, with nothing sent.
        let mut u = Raw::connect(lab.addr, "127.0.0.1").await;
        assert_eq!(u.export_name("nope").await, None);
    });
    // And the server goes on serving.
    nbdsh(&lab.uri("d"), "assert h.pread(2, 0) == b'ok'");
}

#[test]
fn info_describes_an_export_without_opening_it() {
    if !have_nbdsh() {
        return;
    }
    let lab = Lab::start(vec![disk("d", raw(1 << 20), ResetOn::JobStart)]);
    let overlays = lab.dir.join("disks/overlays");
    let before = count_files(&overlays);
    // libnbd in option mode: NBD_OPT_INFO only, then NBD_OPT_ABORT.
    let script = "h.set_full_info(True)\nh.opt_info()\nassert h.get_size() == 1 << 20\nassert not h.is_read_only() and h.can_trim() and h.can_flush() and h.can_multi_conn()\nassert h.get_canonical_export_name() == 'd'\nassert h.get_block_size(nbd.SIZE_MAXIMUM) == 32 << 20\nh.set_export_name('missing')\ntry:\n    h.opt_info()\n    raise SystemExit('info on a missing export')\nexcept nbd.Error:\n    pass\nh.opt_abort()";
    run(Command::new("nbdsh").args(["--opt-mode", "-u", &lab.uri("d"), "-c", script]));
    lab.rt.block_on(async {
        // Another DUT learns nothing about a private export, and the owner can still GO after INFO.
        let mut other = Raw::connect(lab.addr, "127.0.0.3").await;
        assert_eq!(other.info("d", &[]).await.last().unwrap().0, rep::ERR_UNKNOWN);
        let mut owner = Raw::connect(lab.addr, "127.0.0.1").await;
        let replies = owner.info("d", &[wire::info::NAME]).await;
        assert_eq!(replies.last().unwrap().0, rep::ACK);
        assert!(replies.iter().any(|(k, d)| *k == rep::INFO && d[..2] == wire::info::NAME.to_be_bytes() && &d[2..] == b"d"));
        assert_eq!(count_files(&overlays), before, "NBD_OPT_INFO opened the export");
        assert_eq!(owner.go("d").await, rep::ACK);
    });
    // NBD_OPT_GO does open it: the count above can tell.
    assert!(count_files(&overlays) > before);
}

/// A sparse `raw:` disk of `size_bytes`.
fn raw(size_bytes: u64) -> DiskKind {
    DiskKind::Raw { size_bytes }
}

/// A job of the first DUT (127.0.0.1) with a private disk `private` and a `shared: true` disk
/// `common`, 1 MiB each.
fn private_and_shared_lab() -> Lab {
    let raw = || raw(1 << 20);
    let mut shared = disk("common", raw(), ResetOn::JobStart);
    shared.shared = true;
    Lab::start(vec![disk("private", raw(), ResetOn::JobStart), shared])
}

#[test]
fn export_name_refuses_another_duts_private_export() {
    let lab = private_and_shared_lab();
    lab.rt.block_on(async {
        let mut owner = Raw::connect(lab.addr, "127.0.0.1").await;
        assert!(owner.export_name("private").await.is_some());
        assert_eq!(owner.request(cmd::WRITE, 0, 0, 6, b"secret").await.0, 0);
        // dut2 (127.0.0.3) may not open local's private disk by NBD_OPT_EXPORT_NAME...
        let mut other = Raw::connect(lab.addr, "127.0.0.3").await;
        assert_eq!(other.export_name("private").await, None);
        // ...nor reach it as its default export, which is the first one it may see.
        let mut other = Raw::connect(lab.addr, "127.0.0.3").await;
        let (size, _) = other.export_name("").await.expect("dut2's default export");
        assert_eq!(size, 1 << 20);
        assert_eq!(other.request(cmd::READ, 0, 0, 6, b"").await, (0, vec![0; 6]));
        // The shared disk it may open; an address no DUT has gets nothing.
        let mut other = Raw::connect(lab.addr, "127.0.0.3").await;
        assert!(other.export_name("common").await.is_some());
        let mut stranger = Raw::connect(lab.addr, "127.0.0.9").await;
        assert_eq!(stranger.export_name("common").await, None);
    });
}

#[test]
fn two_connections_share_one_overlay() {
    if !have_nbdsh() {
        return;
    }
    let lab = Lab::start(vec![disk("d", raw(1 << 20), ResetOn::JobStart)]);
    let u = lab.uri("d");
    nbdsh(
        &u,
        &format!(
            "h2 = nbd.NBD()\nh2.connect_uri('{u}')\nassert h2.can_multi_conn()\nh.pwrite(b'one', 100)\nassert h2.pread(3, 100) == b'one'\nh2.zero(4096, 0)\nh2.pwrite(b'two', 5000)\nassert h.pread(3, 5000) == b'two'\nh2.zero(3, 5000)\nassert h.pread(3, 5000) == bytes(3)"
        ),
    );
}

#[test]
fn filesystem_from_tarball_passes_e2fsck() {
    if !have("mkfs.ext4") || !have("e2fsck") || !have("debugfs") || !have("nbdcopy") || !have("tar") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("hello.txt"), "hello from citron\n").unwrap();
    std::fs::write(tree.join("etc/hostname"), "dut\n").unwrap();
    let tgz = t.path().join("rootfs.tar.gz");
    run(Command::new("tar").arg("czf").arg(&tgz).arg("-C").arg(&tree).arg("."));
    let lab = Lab::start(vec![disk(
        "rootfs",
        DiskKind::Filesystem { fstype: "ext4".into(), size_bytes: 32 << 20, contents: Some(FsContents::Tarball(Source::File(tgz), None)) },
        ResetOn::JobStart,
    )]);
    let img = t.path().join("fs.img");
    run(Command::new("nbdcopy").arg(lab.uri("rootfs")).arg(&img));
    run(Command::new("e2fsck").arg("-fn").arg(&img));
    let ls = run(Command::new("debugfs").arg("-R").arg("ls -l /").arg(&img));
    assert!(ls.contains("hello.txt") && ls.contains("etc"), "{ls}");
    let cat = run(Command::new("debugfs").arg("-R").arg("cat /etc/hostname").arg(&img));
    assert_eq!(cat, "dut\n");
}

#[test]
fn second_dut_cannot_list_or_open_a_private_export_but_sees_shared_ones() {
    let lab = private_and_shared_lab();
    let (owner, other) = lab.rt.block_on(async {
        let mut a = Raw::connect(lab.addr, "127.0.0.1").await;
        let mut b = Raw::connect(lab.addr, "127.0.0.3").await;
        (a.list().await, b.list().await)
    });
    assert_eq!(owner, vec!["private".to_string(), "common".to_string()]);
    assert_eq!(other, vec!["common".to_string()]);
    lab.rt.block_on(async {
        let mut b = Raw::connect(lab.addr, "127.0.0.3").await;
        assert_eq!(b.go("private").await, rep::ERR_UNKNOWN);
        assert_eq!(b.go("common").await, rep::ACK);
        // dut2 writes to its own overlay of the shared disk; local's view stays zero.
        let (e, _) = b.request(cmd::WRITE, 0, 0, 3, b"xyz").await;
        assert_eq!(e, 0);
        let (e, d) = b.request(cmd::READ, 0, 0, 3, b"").await;
        assert_eq!((e, d.as_slice()), (0, &b"xyz"[..]));
        let mut a = Raw::connect(lab.addr, "127.0.0.1").await;
        assert_eq!(a.go("common").await, rep::ACK);
        let (e, d) = a.request(cmd::READ, 0, 0, 3, b"").await;
        assert_eq!((e, d), (0, vec![0u8; 3]));
        // Unknown address: nothing.
        let mut c = Raw::connect(lab.addr, "127.0.0.9").await;
        assert!(c.list().await.is_empty());
        assert_eq!(c.go("common").await, rep::ERR_UNKNOWN);
    });
}

#[test]
fn malformed_input_is_refused_without_harm() {
    let lab = Lab::start(vec![disk("d", raw(1 << 20), ResetOn::JobStart)]);
    lab.rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Garbage instead of client flags and options: the server closes.
        for junk in [&b"\xff\xff\xff\xff"[..], b"\0\0\0\x01GARBAGE-GARBAGE-GARBAGE", b"\0\0\0\x01IHAVEOPT\0\0\0\x07\xff\xff\xff\xff"] {
            let mut s = Raw::connect_plain(lab.addr, "127.0.0.1").await;
            s.write_all(junk).await.unwrap();
            let mut rest = Vec::new();
            let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
            assert!(r.is_ok(), "server kept a malformed connection open");
        }
        // Truncated option then close.
        let mut s = Raw::connect_plain(lab.addr, "127.0.0.1").await;
        s.write_all(b"\0\0\0\x03IHAVEOPT\0\0\0\x07\0\0\0\x40ab").await.unwrap();
        drop(s);
        // Unknown option, malformed GO data, structured reply with data.
        let mut r = Raw::connect(lab.addr, "127.0.0.1").await;
        assert_eq!(r.option(99, b"").await.last().unwrap().0, rep::ERR_UNSUP);
        assert_eq!(r.option(opt::GO, b"\0\0\xff\xffd").await.last().unwrap().0, rep::ERR_INVALID);
        assert_eq!(r.option(opt::STRUCTURED_REPLY, b"x").await.last().unwrap().0, rep::ERR_INVALID);
        assert_eq!(r.option(opt::LIST, b"x").await.last().unwrap().0, rep::ERR_INVALID);
        assert_eq!(r.go("d").await, rep::ACK);
        // Out of range, oversize, unknown command and flags: error replies, connection stays.
        let size = 1u64 << 20;
        assert_eq!(r.request(cmd::READ, 0, size - 1, 2, b"").await.0, errno::EINVAL);
        assert_eq!(r.request(cmd::READ, 0, u64::MAX - 1, 4, b"").await.0, errno::EINVAL);
        assert_eq!(r.request(cmd::WRITE, 0, size, 1, b"x").await.0, errno::ENOSPC);
        assert_eq!(r.request(cmd::WRITE_ZEROES, 0, u64::MAX, 2, b"").await.0, errno::ENOSPC);
        assert_eq!(r.request(cmd::TRIM, 0, size - 1, 2, b"").await.0, errno::ENOSPC);
        assert_eq!(r.request(cmd::READ, 0, 0, 64 << 20, b"").await.0, errno::EINVAL);
        assert_eq!(r.request(42, 0, 0, 0, b"").await.0, errno::EINVAL);
        assert_eq!(r.request(cmd::READ, 0x8000, 0, 1, b"").await.0, errno::EINVAL);
        assert_eq!(r.request(cmd::READ, 0, size - 1, 1, b"").await, (0, vec![0]));
        // A write larger than the maximum closes the connection.
        let mut req = Vec::new();
        wire::encode_request(&mut req, &wire::Request { flags: 0, kind: cmd::WRITE, cookie: 1, offset: 0, len: u32::MAX });
        r.stream.write_all(&req).await.unwrap();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(10), r.stream.read_to_end(&mut rest)).await.expect("closed");
        assert!(n.is_err() || rest.is_empty());
        // Still serving.
        let mut ok = Raw::connect(lab.addr, "127.0.0.1").await;
        assert_eq!(ok.go("d").await, rep::ACK);
    });
}

#[test]
fn expired_disk_is_swept_after_the_job_ends() {
    if !have_nbdsh() {
        return;
    }
    let mut d = disk("tmp", raw(1 << 20), ResetOn::Never);
    d.expiration = Some(Duration::from_secs(1));
    let lab = Lab::start(vec![d.clone()]);
    nbdsh(&lab.uri("tmp"), "h.pwrite(b'old', 0); h.flush()");
    // While the job holds it, it never expires.
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(lab.gw.sweep_disks(), 0);
    lab.gw.clear_job(&"local".into()).unwrap();
    let _sweeper = {
        let _rt = lab.rt.enter();
        lab.gw.spawn_disk_sweeper(Duration::from_millis(100))
    };
    let overlays = lab.dir.join("disks/overlays");
    let deadline = Instant::now() + Duration::from_secs(20);
    while count_files(&overlays) > 0 {
        assert!(Instant::now() < deadline, "expired disk not swept");
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.set_disks(vec![d]);
    nbdsh(&lab.uri("tmp"), "assert h.pread(3, 0) == bytes(3)");
}

#[test]
fn filesystem_from_container_image_flattens_layers() {
    if !have("docker-registry") || !have("curl") || !have("tar") || !have("mkfs.ext4") || !have("debugfs") || !have("nbdcopy") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(t.path());
    let l1 = t.path().join("l1");
    std::fs::create_dir_all(l1.join("etc")).unwrap();
    std::fs::write(l1.join("etc/a"), "lower a\n").unwrap();
    std::fs::write(l1.join("etc/b"), "lower b\n").unwrap();
    let l2 = t.path().join("l2");
    std::fs::create_dir_all(l2.join("etc")).unwrap();
    std::fs::write(l2.join("etc/.wh.a"), "").unwrap();
    std::fs::write(l2.join("hello.txt"), "from the upper layer\n").unwrap();
    let mut layers = Vec::new();
    for (i, dir) in [&l1, &l2].iter().enumerate() {
        let tgz = t.path().join(format!("layer{i}.tar.gz"));
        run(Command::new("tar").arg("czf").arg(&tgz).arg("-C").arg(dir).arg("."));
        layers.push(tgz);
    }
    let layers: Vec<&std::path::Path> = layers.iter().map(|p| p.as_path()).collect();
    let reference = reg.push_image("test/img", "v1", &layers);
    let lab = Lab::start(vec![disk(
        "root",
        DiskKind::Filesystem { fstype: "ext4".into(), size_bytes: 32 << 20, contents: Some(FsContents::Container(reference)) },
        ResetOn::JobStart,
    )]);
    let img = t.path().join("fs.img");
    run(Command::new("nbdcopy").arg(lab.uri("root")).arg(&img));
    run(Command::new("e2fsck").arg("-fn").arg(&img));
    let ls = run(Command::new("debugfs").arg("-R").arg("ls /etc").arg(&img));
    assert!(ls.contains(" b ") || ls.contains(" b\n") || ls.contains("b  "), "{ls}");
    assert!(!ls.contains(".wh.") && !ls.split_whitespace().any(|w| w == "a"), "whiteout not applied: {ls}");
    let cat = |path: &str| run(Command::new("debugfs").arg("-R").arg(format!("cat {path}")).arg(&img));
    assert_eq!(cat("/etc/b"), "lower b\n");
    assert_eq!(cat("/hello.txt"), "from the upper layer\n");
}

#[test]
fn a_connection_that_outlives_its_job_shares_the_overlay_with_the_next_job() {
    let spec = || vec![disk("keep", raw(1 << 20), ResetOn::Never)];
    let lab = Lab::start(spec());
    lab.rt.block_on(async {
        let mut old = Raw::connect(lab.addr, "127.0.0.1").await;
        assert_eq!(old.go("keep").await, rep::ACK);
        lab.gw
            .set_resolved_job(
                &"local".into(),
                citron_core::job::ResolvedJob {
                    name: None,
                    results: None,
                    origin: "again".into(),
                    start: citron_core::job::Step { nbd: spec(), ..Default::default() },
                    continue_: None,
                },
            )
            .await
            .unwrap();
        let mut new = Raw::connect(lab.addr, "127.0.0.1").await;
        assert_eq!(new.go("keep").await, rep::ACK);
        assert_eq!(old.request(cmd::WRITE, 0, 8192, 4, b"both").await.0, 0);
        assert_eq!(new.request(cmd::READ, 0, 8192, 4, b"").await, (0, b"both".to_vec()));
        assert_eq!(new.request(cmd::FLUSH, 0, 0, 0, b"").await.0, 0);
    });
}

#[test]
fn a_connection_whose_disk_reset_for_a_new_job_answers_eshutdown() {
    let spec = || vec![disk("fresh", raw(1 << 20), ResetOn::JobStart)];
    let lab = Lab::start(spec());
    lab.rt.block_on(async {
        let mut old = Raw::connect(lab.addr, "127.0.0.1").await;
        assert_eq!(old.go("fresh").await, rep::ACK);
        assert_eq!(old.request(cmd::WRITE, 0, 0, 3, b"old").await.0, 0);
        lab.gw
            .set_resolved_job(
                &"local".into(),
                citron_core::job::ResolvedJob {
                    name: None,
                    results: None,
                    origin: "next".into(),
                    start: citron_core::job::Step { nbd: spec(), ..Default::default() },
                    continue_: None,
                },
            )
            .await
            .unwrap();
        // Its overlay was dropped: writes would land nowhere, so every request says so.
        assert_eq!(old.request(cmd::WRITE, 0, 0, 3, b"new").await.0, errno::ESHUTDOWN);
        assert_eq!(old.request(cmd::READ, 0, 0, 3, b"").await.0, errno::ESHUTDOWN);
        assert_eq!(old.request(cmd::FLUSH, 0, 0, 0, b"").await.0, errno::ESHUTDOWN);
        let mut new = Raw::connect(lab.addr, "127.0.0.1").await;
        assert_eq!(new.go("fresh").await, rep::ACK);
        assert_eq!(new.request(cmd::READ, 0, 0, 3, b"").await, (0, vec![0u8; 3]), "the new job's disk starts from its base");
    });
}

#[test]
fn the_empty_name_is_the_duts_first_export() {
    let lab = Lab::start(vec![disk("first", raw(1 << 20), ResetOn::JobStart), disk("second", raw(2 << 20), ResetOn::JobStart)]);
    lab.rt.block_on(async {
        let mut r = Raw::connect(lab.addr, "127.0.0.1").await;
        let info = r.info("", &[wire::info::NAME]).await;
        assert!(info.iter().any(|(t, d)| *t == rep::INFO && d[..2] == wire::info::NAME.to_be_bytes() && &d[2..] == b"first"), "{info:?}");
        assert_eq!(r.export_name("").await, Some((1 << 20, 0x16d)));
        // A source address that is no DUT has no default export.
        let mut stranger = Raw::connect(lab.addr, "127.0.0.9").await;
        assert_eq!(stranger.go("").await, rep::ERR_UNKNOWN);
    });
}

#[test]
fn a_connection_whose_disk_got_other_content_answers_eshutdown() {
    let lab = Lab::start(vec![disk("keep", raw(1 << 20), ResetOn::Never)]);
    lab.rt.block_on(async {
        let mut old = Raw::connect(lab.addr, "127.0.0.1").await;
        assert_eq!(old.go("keep").await, rep::ACK);
        lab.gw
            .set_resolved_job(
                &"local".into(),
                citron_core::job::ResolvedJob {
                    name: None,
                    results: None,
                    origin: "bigger".into(),
                    start: citron_core::job::Step { nbd: vec![disk("keep", raw(2 << 20), ResetOn::Never)], ..Default::default() },
                    continue_: None,
                },
            )
            .await
            .unwrap();
        let mut new = Raw::connect(lab.addr, "127.0.0.1").await;
        assert_eq!(new.go("keep").await, rep::ACK);
        assert_eq!(new.request(cmd::WRITE, 0, (2 << 20) - 4, 4, b"tail").await.0, 0);
        // The old connection's overlay was emptied for the new content: it may not write into it.
        assert_eq!(old.request(cmd::WRITE, 0, 0, 3, b"old").await.0, errno::ESHUTDOWN);
        assert_eq!(new.request(cmd::READ, 0, 0, 3, b"").await, (0, vec![0u8; 3]));
    });
}
