//! `citron render`: the artifact table of a job for one DUT, and the URLs it would use.

use std::io::Read as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use citron_core::bootfiles;
use citron_core::job::listing::{self, Listed};
use citron_core::job::{DiskKind, DiskSpec, FileSpec, JobDescription, Lifetime, Source, Step};
use citron_core::lab::LabConfig;
use citron_core::namespace::DutId;
use citron_core::{Digest, Hasher};

struct Row {
    protocol: &'static str,
    path: String,
    source: String,
    size: String,
    sha256: String,
    lifetime: String,
    url: String,
}

fn describe(src: &Source) -> String {
    match src {
        Source::Data(b) => format!("data ({} bytes inline)", b.len()),
        Source::File(p) => format!("file:{}", p.display()),
        Source::Url(u) => u.to_string(),
    }
}

/// Size and digest without downloading: inline data and local files are measured, URLs show
/// what the job declares.
fn measure(src: &Source, declared: Option<Digest>) -> (String, String) {
    let shown = |d: Option<Digest>| d.map(|d| d.to_string()).unwrap_or_else(|| "-".into());
    match src {
        Source::Data(b) => (b.len().to_string(), Digest::of(b).to_string()),
        Source::File(p) => match hash_file(p) {
            Ok((n, d)) => (n.to_string(), d.to_string()),
            Err(e) => (format!("unreadable: {e}"), shown(declared)),
        },
        Source::Url(_) => ("(fetched at load)".into(), shown(declared)),
    }
}

fn hash_file(p: &Path) -> std::io::Result<(u64, Digest)> {
    let mut f = std::fs::File::open(p)?;
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf)?;
        if r == 0 {
            break;
        }
        h.update(&buf[..r]);
        n += r as u64;
    }
    Ok((n, h.finish()))
}

fn lifetime(l: &Lifetime) -> String {
    let mut v = Vec::new();
    if let Some(n) = l.access_count {
        v.push(format!("access_count={n}"));
    }
    if let Some(d) = l.expiration {
        v.push(format!("expiration={}s", d.as_secs()));
    }
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

fn file_row(protocol: &'static str, path: String, f: &FileSpec, url: String) -> Row {
    let (size, sha256) = measure(&f.source, f.sha256);
    Row { protocol, path, source: describe(&f.source), size, sha256, lifetime: lifetime(&f.lifetime), url }
}

fn disk_row(d: &DiskSpec, url: String) -> Row {
    let (source, size, sha) = match &d.kind {
        DiskKind::Image { source, sha256 } => {
            let (sz, sh) = measure(source, *sha256);
            (format!("image {}", describe(source)), sz, sh)
        }
        DiskKind::Filesystem { fstype, size_bytes, .. } => (format!("filesystem {fstype}"), size_bytes.to_string(), "-".into()),
        DiskKind::Raw { size_bytes } => ("raw".into(), size_bytes.to_string(), "-".into()),
    };
    let mut lt = format!("reset_on={:?}", d.reset_on).to_lowercase();
    if d.readonly {
        lt.push_str(",readonly");
    }
    if d.shared {
        lt.push_str(",shared");
    }
    Row { protocol: "nbd", path: d.name.clone(), source, size, sha256: sha, lifetime: lt, url }
}

/// The rows of `step` ([`listing::artifacts`]), with the URLs DUTs would use: `base(space)` is
/// a file space's `<space>_artifact_base` (boot files are shown over HTTP), `nbd` the NBD
/// `host:port`.
fn rows(step: &Step, mid: &str, base: &dyn Fn(&str) -> String, nbd: &str) -> Vec<Row> {
    listing::artifacts(step, mid)
        .into_iter()
        .map(|a| match a.what {
            Listed::Kernel(f) | Listed::Initramfs(f) => file_row("boot", a.path.clone(), f, format!("{}/{}", base("http"), a.path)),
            Listed::File(space, f) => file_row(space.0, a.path.clone(), f, format!("{}/{}", base(space.0), a.path)),
            Listed::Disk(d) => disk_row(d, format!("nbd://{nbd}/{}", d.name)),
        })
        .collect()
}

fn print_table(title: &str, rows: &[Row], cmdline: Option<&str>) {
    println!("{title}");
    if let Some(c) = cmdline {
        println!("  cmdline: {c}");
    }
    let heads = ["PROTOCOL", "PATH", "SOURCE", "SIZE", "SHA256", "LIFETIME"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| [r.protocol.to_string(), r.path.clone(), r.source.clone(), r.size.clone(), r.sha256.clone(), r.lifetime.clone()])
        .collect();
    let mut w = heads.map(str::len);
    for c in &cells {
        for i in 0..6 {
            w[i] = w[i].max(c[i].len());
        }
    }
    let line = |c: [&str; 6]| {
        let mut s = String::from("  ");
        for i in 0..6 {
            s.push_str(&format!("{:<width$}  ", c[i], width = w[i]));
        }
        println!("{}", s.trim_end());
    };
    line(heads);
    for c in &cells {
        line([&c[0], &c[1], &c[2], &c[3], &c[4], &c[5]]);
    }
    println!("  URLs:");
    for r in rows {
        println!("    {}", r.url);
    }
}

/// Prints the job's artifacts for `dut` and the URLs it would use.
pub fn render(lab: &LabConfig, job: &Path, dut: &DutId) -> anyhow::Result<ExitCode> {
    let Some(d) = lab.duts.iter().find(|d| &d.id == dut) else {
        let ids: Vec<&str> = lab.duts.iter().map(|d| d.id.0.as_str()).collect();
        anyhow::bail!("the lab has no DUT {:?} (it has: {})", dut.0, ids.join(", "));
    };
    let ctx = crate::offline_context(lab, d, job);
    let parsed = JobDescription::from_file(job).and_then(|j| j.render(&ctx));
    let resolved = match parsed {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(1));
        }
    };
    let var = |k: &str| ctx.vars.get(k).cloned().unwrap_or_default();
    let base = |space: &str| var(&format!("{space}_artifact_base"));
    let (http, tftp) = (base("http"), base("tftp"));
    let nbd = format!("{}:{}", var("nbd_host"), var("nbd_port"));
    let mid = d.machine_id();
    println!("job {} for DUT {} (machine_id {mid}, addresses {:?})", resolved.origin, d.id, d.ip);
    let start = rows(&resolved.start, mid, &base, &nbd);
    print_table("deployment.start:", &start, resolved.start.cmdline.as_deref());
    if resolved.start.kernel.is_some() {
        let (script, top) = (bootfiles::script_path(mid), bootfiles::TOP_SCRIPT);
        println!("  boot script: {http}/{script} (also {http}/{top}, {tftp}/{top})");
    }
    if let Some(c) = &resolved.continue_ {
        let merged = c.over(&resolved.start);
        print_table("deployment.continue (from the second boot):", &rows(&merged, mid, &base, &nbd), merged.cmdline.as_deref());
    }
    std::io::Write::flush(&mut std::io::stdout()).context("cannot write to stdout")?;
    Ok(ExitCode::SUCCESS)
}
