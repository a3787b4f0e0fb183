//! A full data directory is a clear error to the job that filled it, never corruption for
//! another: the real binary runs with `--data` on a 24 MiB tmpfs mounted in a mount namespace of
//! its own (so nothing is left mounted on the machine), and two hostile jobs try to fill it — a
//! download larger than the free space, and a tarball that unpacks larger than the free space.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use citron_tests::{curl, require_tool, strict, Citron};

/// A python3 http.server for `dir` on 127.0.0.1 (port printed first); killed by PID on drop.
struct Files {
    child: Child,
    port: u16,
}

impl Files {
    fn serve(dir: &Path) -> Files {
        let script = "import functools, http.server, sys\n\
            h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])\n\
            h.log_message = lambda *a: None\n\
            s = http.server.ThreadingHTTPServer(('127.0.0.1', 0), h)\n\
            print(s.server_address[1], flush=True)\n\
            s.serve_forever()\n";
        let mut child = Command::new("python3")
            .args(["-c", script])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        Files { port: line.trim().parse().unwrap_or_else(|_| panic!("the file server printed {line:?}")), child }
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

/// Whatever is under `dir` whose name ends in `.tmp` (a leftover of a failed write).
fn leftovers(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_name().to_string_lossy().ends_with(".tmp") {
                out.push(p.display().to_string());
            } else if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    out
}

#[test]
fn a_full_data_directory_fails_only_the_job_that_filled_it() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        assert!(!strict(), "this test mounts a tmpfs in a mount namespace of its own and needs root");
        eprintln!("skipped: not root");
        return;
    }
    if !require_tool("curl") || !require_tool("python3") || !require_tool("mkfs.ext4") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    // 40 MiB of random bytes: more than the whole tmpfs.
    let big: Vec<u8> = (0..40u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(www.join("big.bin"), &big).unwrap();
    // A tarball of 40 MiB of zeros: a few KiB to download, 40 MiB to unpack.
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    let mut h = tar::Header::new_gnu();
    h.set_size(40 << 20);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "zeros", std::io::Read::take(std::io::repeat(0), 40 << 20)).unwrap();
    std::fs::write(www.join("zeros.tar.gz"), b.into_inner().unwrap().finish().unwrap()).unwrap();
    let files = Files::serve(&www);

    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mount_at = std::ffi::CString::new(data.to_str().unwrap()).unwrap();
    let c = Citron::start_with(&["--data", data.to_str().unwrap()], move |cmd| {
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let fail = || Err(std::io::Error::last_os_error());
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return fail();
                }
                let none = c"none";
                if libc::mount(none.as_ptr(), c"/".as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()) != 0 {
                    return fail();
                }
                let opts = c"size=24m,mode=0700";
                if libc::mount(c"tmpfs".as_ptr(), mount_at.as_ptr(), c"tmpfs".as_ptr(), 0, opts.as_ptr().cast()) != 0 {
                    return fail();
                }
                Ok(())
            });
        }
    })
    .unwrap_or_else(|f| panic!("citron on a tmpfs did not start: {}", f.stderr));
    // The tmpfs is only in citron's mount namespace: reach it through its root.
    let seen = Path::new("/proc").join(c.pid().to_string()).join("root").join(data.strip_prefix("/").unwrap());

    // A victim with a small job, loaded first.
    let victim = "deployment:\n  start:\n    storage:\n      http:\n        - path: /keep.txt\n          data: still here\n";
    assert_eq!(c.put_job("dut1", victim).0, 200);

    // A download larger than the free space: the job that asked gets the error, by name.
    let url = format!("http://127.0.0.1:{}/big.bin", files.port);
    let job = format!("deployment:\n  start:\n    storage:\n      http:\n        - path: /big.bin\n          url: {url}\n");
    let (code, body) = c.put_job("dut2", &job);
    assert_eq!(code, 507, "a download that cannot fit: {body}");
    assert!(body.contains("full") || body.contains("do not fit"), "{code} {body}");

    // A tarball that unpacks larger than the free space: 507, no space left, nothing left over.
    let url = format!("http://127.0.0.1:{}/zeros.tar.gz", files.port);
    let job = format!(
        "deployment:\n  start:\n    storage:\n      nbd:\n        - name: root\n          filesystem: {{ type: ext4, size: 64M, data: {{ url: \"{url}\" }} }}\n"
    );
    let (code, body) = c.put_job("dut2", &job);
    assert_eq!(code, 507, "{body}");
    assert!(body.contains("no space left"), "{body}");
    assert_eq!(leftovers(&seen), Vec::<String>::new(), "temporary files left on the full disk");

    // The victim is served as before, and the server is alive.
    let o = curl(&["--interface", "127.0.0.2", &c.http_url("/keep.txt")]);
    assert_eq!(o.stdout, "still here", "{}", o.stderr);
    drop(files);
    drop(c);
}
