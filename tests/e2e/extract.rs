//! Hostile tarballs and container images against `citron serve` (issue 12, items 1 and 10): a job
//! whose `filesystem:` disk is filled from an archive its author controls must not create,
//! replace or remove anything outside the tree being built, above all not another job's base
//! disk under `<data>/disks/bases`; it gets a clear error naming the entry. And one job's slow
//! download does not hold up another job's disk preparation.
//!
//! Images come from a `docker-registry` started by the test ([`citron_tests::registry`]), which
//! also serves the tarballs (a blob is a plain HTTP GET).

use std::path::{Path, PathBuf};
use std::time::Duration;

use citron_tests::registry::Registry;
use citron_tests::{require_tool, Citron};

/// One member of a crafted archive, written with raw header fields (the `tar` crate's setters
/// refuse `..` and absolute names; a hostile archive does not).
enum E<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

fn raw_tar(path: &Path, entries: &[E]) -> PathBuf {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(0);
        let (name, link, data): (&str, Option<&str>, &[u8]) = match e {
            E::File(n, d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(d.len() as u64);
                (n, None, d)
            }
            E::Dir(n) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                (n, None, &[])
            }
            E::Symlink(n, t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                (n, Some(t), &[])
            }
            E::Hardlink(n, t) => {
                h.set_entry_type(tar::EntryType::Link);
                (n, Some(t), &[])
            }
        };
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            old.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    std::fs::write(path, b.into_inner().unwrap()).unwrap();
    path.to_path_buf()
}

fn fs_job(contents: &str) -> String {
    format!("deployment:\n  start:\n    storage:\n      nbd:\n        - name: root\n          filesystem: {{ type: ext4, size: 8M, {contents} }}\n")
}

/// Every file under `dir` (not following symlinks), with its content.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            // The lab's state database changes as jobs are set: it is not what a layer could hit.
            } else if t.is_file()
                && e.path().extension() != Some("tmp".as_ref())
                && !e.file_name().to_string_lossy().starts_with("state.sqlite")
            {
                out.push((e.path(), std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// A victim job's prepared base disk and sentinel files beside it, in `c`'s data directory.
struct Victim {
    bases: PathBuf,
    before: Vec<(PathBuf, Vec<u8>)>,
}

impl Victim {
    fn prepare(c: &Citron) -> Victim {
        let job = "deployment:\n  start:\n    storage:\n      nbd:\n        - name: base\n          filesystem: { type: ext4, size: 8M }\n";
        let (code, body) = c.put_job("dut1", job);
        assert_eq!(code, 200, "{body}");
        let bases = c.state.join("disks/bases");
        assert!(files(&bases).iter().any(|(p, _)| p.extension().is_some_and(|x| x == "img")), "no base disk was prepared");
        std::fs::write(bases.join("sentinel"), b"bases sentinel").unwrap();
        std::fs::write(c.state.join("disks/sentinel"), b"disks sentinel").unwrap();
        std::fs::write(c.state.join("sentinel"), b"data sentinel").unwrap();
        Victim { before: files(&c.state), bases }
    }

    /// Nothing outside the trees being built changed: the base, the sentinels, every file.
    fn check(&self, c: &Citron, after: &str) {
        assert!(self.bases.is_dir(), "{after}: {} was removed", self.bases.display());
        let now = files(&c.state);
        let extra: Vec<_> =
            now.iter().filter(|(p, _)| !self.before.iter().any(|(q, _)| q == p) && !p.starts_with(c.state.join("cache"))).collect();
        let gone: Vec<_> = self.before.iter().filter(|f| !now.contains(f)).map(|(p, _)| p).collect();
        assert!(gone.is_empty(), "{after}: changed or removed: {gone:?}");
        // New overlays and leases, and a base for a job that succeeded, may appear.
        let allowed = |p: &Path| {
            p.starts_with(c.state.join("disks/overlays")) || (p.parent() == Some(&self.bases) && p.extension().is_some_and(|x| x == "img"))
        };
        assert!(extra.iter().all(|(p, _)| allowed(p)), "{after}: created: {extra:?}");
        // The victim's job still stands and offers its disk.
        let o = c.api("GET", "/api/v1/duts/dut1", &[]);
        assert!(o.json()["job"].is_string(), "{after}: dut1 lost its job: {}", o.body);
    }
}

fn have_tools() -> bool {
    ["curl", "docker-registry", "mkfs.ext4"].iter().all(|t| require_tool(t))
}

#[test]
fn hostile_container_layers_leave_other_jobs_disks_alone() {
    if !have_tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(t.path());
    let c = Citron::start(&[]);
    let victim = Victim::prepare(&c);
    let lower = raw_tar(&t.path().join("lower.tar"), &[E::Dir("etc"), E::File("etc/a", b"a")]);
    let abs = format!("{}/evil", victim.bases.display());
    let cases: Vec<(&str, Vec<E>, &str)> = vec![
        // The reported attack: hidden name `..`, i.e. the tree's parent, `<data>/disks/bases`.
        ("wh-dotdot", vec![E::File(".wh...", b"")], "`.wh...` is a whiteout of `..`"),
        ("wh-nested", vec![E::Dir("etc"), E::File("etc/.wh...", b"")], "`etc/.wh...` is a whiteout of `..`"),
        ("wh-dot", vec![E::File(".wh..", b"")], "`.wh..` is a whiteout of `.`"),
        ("dotdot", vec![E::File("../../sentinel", b"overwritten")], "`../../sentinel` has a `..` component"),
        ("absolute", vec![E::File(&abs, b"x")], "is an absolute path"),
        (
            "symlink-out",
            vec![E::Symlink("l", ".."), E::File("l/sentinel", b"overwritten")],
            "`l/sentinel`: its directory cannot be opened beneath",
        ),
        (
            "symlink-wh",
            vec![E::Symlink("l", "../.."), E::File("l/.wh.bases", b"")],
            "`l/.wh.bases`: its directory cannot be opened beneath",
        ),
        ("hardlink-out", vec![E::Hardlink("h", "../sentinel")], "`h` is a hard link whose target has a `..` component"),
    ];
    for (tag, entries, want) in &cases {
        let upper = raw_tar(&t.path().join(format!("{tag}.tar")), entries);
        let reference = reg.push_image("evil/img", tag, &[&lower, &upper]);
        let (code, body) = c.put_job("dut2", &fs_job(&format!("container: \"{reference}\"")));
        victim.check(&c, tag);
        assert_eq!(code, 422, "{tag}: {body}");
        assert!(body.contains(want) && body.contains("layer 1"), "{tag}: {body}");
    }
    // A well-formed image with whiteouts still works after all that.
    let ok = raw_tar(&t.path().join("ok.tar"), &[E::File("etc/.wh.a", b""), E::Symlink("abs", "/etc/passwd"), E::File("hello", b"hi")]);
    let reference = reg.push_image("good/img", "v1", &[&lower, &ok]);
    let (code, body) = c.put_job("dut2", &fs_job(&format!("container: \"{reference}\"")));
    assert_eq!(code, 200, "{body}");
    victim.check(&c, "a good image");
}

#[test]
fn hostile_tarballs_are_refused_with_the_entry_named() {
    if !have_tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(t.path());
    let c = Citron::start(&["--lab", &lab_with_limits(t.path(), "unpack_max_entries: 50")]);
    let victim = Victim::prepare(&c);
    let abs = format!("{}/evil", victim.bases.display());
    let many: Vec<String> = (0..60).map(|i| format!("f{i}")).collect();
    let cases: Vec<(&str, Vec<E>, &str)> = vec![
        ("dotdot", vec![E::File("ok", b"fine"), E::File("../escaped", b"x")], "`../escaped` has a `..` component"),
        ("absolute", vec![E::File(&abs, b"x")], "is an absolute path"),
        (
            "symlink-then-write",
            vec![E::Symlink("out", "../"), E::File("out/sentinel", b"overwritten")],
            "`out/sentinel`: its directory cannot be opened beneath",
        ),
        ("many", many.iter().map(|n| E::File(n, b"")).collect(), "limits.unpack_max_entries"),
        ("big", vec![E::File("big", &[7u8; 9 << 20])], "the filesystem's `size: 8M`"),
    ];
    for (name, entries, want) in &cases {
        let tb = raw_tar(&t.path().join(format!("{name}.tar")), entries);
        let (digest, _) = reg.push_blob("tarballs/t", &tb);
        let url = format!("{}/v2/tarballs/t/blobs/{digest}", reg.base);
        let (code, body) = c.put_job("dut2", &fs_job(&format!("data: {{ url: \"{url}\" }}")));
        victim.check(&c, name);
        assert_eq!(code, 422, "{name}: {body}");
        assert!(body.contains(want) && body.contains("tarball http://127.0.0.1"), "{name}: {body}");
    }
}

/// The default lab file with `limits:` added.
fn lab_with_limits(dir: &Path, limits: &str) -> String {
    let lab = citron_tests::workspace_root().join("citron-core/src/default_lab.yaml");
    let text = std::fs::read_to_string(lab).unwrap();
    let p = dir.join("lab.yaml");
    std::fs::write(&p, format!("{text}\nlimits:\n  {limits}\n")).unwrap();
    p.display().to_string()
}

#[test]
fn a_slow_download_does_not_hold_up_another_jobs_disk() {
    if !require_tool("curl") {
        return;
    }
    // Accepts connections into its backlog and never answers: job 1's tarball download hangs.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/rootfs.tar", silent.local_addr().unwrap());
    let c = Citron::start(&[]);
    let (tx, rx) = std::sync::mpsc::channel();
    let slow = {
        let (api, job) = (c.api.unwrap(), fs_job(&format!("data: {{ url: \"{url}\" }}")));
        std::thread::spawn(move || {
            let o = citron_tests::api::call(
                api,
                "PUT",
                "/api/v1/duts/dut1/job",
                &["-H", "Content-Type: application/yaml", "--data-binary", &job],
            );
            let _ = tx.send(o.status);
        })
    };
    // Job 1 is inside disk preparation once citron has connected to the silent source.
    silent.set_nonblocking(true).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let _held = loop {
        match silent.accept() {
            Ok((s, _)) => break s,
            Err(_) => {
                assert!(std::time::Instant::now() < deadline, "citron never connected to the tarball's source");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let job2 = "deployment:\n  start:\n    storage:\n      nbd:\n        - name: scratch\n          raw: { size: 4M }\n        - name: root\n          filesystem: { type: ext4, size: 8M }\n";
    let (code, body) = c.put_job("dut2", job2);
    assert_eq!(code, 200, "job 2 waited for job 1's download: {body}");
    assert!(rx.try_recv().is_err(), "job 1 finished first: the test proved nothing");
    drop(_held);
    drop(silent);
    let _ = rx.recv_timeout(Duration::from_secs(30));
    slow.join().unwrap();
}
