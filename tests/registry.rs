//! A Docker registry (Debian `docker-registry`) on a loopback port, pushed to with curl: images
//! for `container: docker://...` disks. Shared by `citron-protocols/tests/nbd_clients.rs`
//! (included by path) and the end-to-end tests (`citron_tests::registry`), so it uses only std,
//! `sha2` and `hex`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// A running registry, killed (by its PID) when dropped.
pub struct Registry {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256_hex(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

impl Registry {
    /// Starts one storing under `dir`; waits (at most 20 s) until it answers `/v2/`.
    pub fn start(dir: &Path) -> Registry {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cfg = dir.join("registry.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.join("storage").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry").arg("serve").arg(&cfg).stdout(Stdio::null()).spawn().unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !Command::new("curl").args(["-sf", &format!("{base}/v2/")]).output().is_ok_and(|o| o.status.success()) {
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Registry { child, base }
    }

    /// Uploads a blob; returns its descriptor fields (digest, size).
    pub fn push_blob(&self, repo: &str, file: &Path) -> (String, u64) {
        let digest = format!("sha256:{}", sha256_hex(file));
        let head = sh(Command::new("curl").args(["-sfi", "-X", "POST", &format!("{}/v2/{repo}/blobs/uploads/", self.base)]));
        let loc =
            head.lines().find_map(|l| l.strip_prefix("Location: ").or_else(|| l.strip_prefix("location: "))).expect("Location").trim();
        let loc = if loc.starts_with('/') { format!("{}{loc}", self.base) } else { loc.to_string() };
        let sep = if loc.contains('?') { '&' } else { '?' };
        sh(Command::new("curl")
            .args(["-sf", "-X", "PUT", "-H", "Content-Type: application/octet-stream", "--data-binary"])
            .arg(format!("@{}", file.display()))
            .arg(format!("{loc}{sep}digest={digest}")));
        (digest, std::fs::metadata(file).unwrap().len())
    }

    /// Pushes an OCI image of `layers` (tar or tar+gzip files, bottom first) as `repo:tag`;
    /// returns its `docker://` reference.
    pub fn push_image(&self, repo: &str, tag: &str, layers: &[&Path]) -> String {
        let descs: Vec<String> = layers
            .iter()
            .map(|l| {
                let gz = std::fs::read(l).unwrap().starts_with(&[0x1f, 0x8b]);
                let (d, s) = self.push_blob(repo, l);
                let mt = if gz { "application/vnd.oci.image.layer.v1.tar+gzip" } else { "application/vnd.oci.image.layer.v1.tar" };
                format!(r#"{{"mediaType":"{mt}","digest":"{d}","size":{s}}}"#)
            })
            .collect();
        let config = layers[0].with_extension("config.json");
        std::fs::write(&config, r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#).unwrap();
        let (cd, cs) = self.push_blob(repo, &config);
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{cs}}},"layers":[{}]}}"#,
            descs.join(",")
        );
        sh(Command::new("curl")
            .args(["-sf", "-X", "PUT", "-H", "Content-Type: application/vnd.oci.image.manifest.v1+json", "--data-binary", &manifest])
            .arg(format!("{}/v2/{repo}/manifests/{tag}", self.base)));
        format!("docker://{}/{repo}:{tag}", self.base.trim_start_matches("http://"))
    }
}
