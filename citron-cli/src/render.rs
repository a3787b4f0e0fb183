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

/// One artifact as `render` shows it; sizes and durations as a job writes them (`2G`, `12h`).
#[derive(serde::Serialize)]
struct Row {
    protocol: &'static str,
    path: String,
    source: String,
    size: String,
    sha256: String,
    /// `access_count`, `expiration`, `reset_on`, `readonly`, `shared`: what applies.
    lifetime: serde_json::Map<String, serde_json::Value>,
    url: String,
}

/// `secs` in the largest units that say it exactly, as a job would write it (`12h`, `1h 30m`,
/// `7d`), so that `render` shows what the job says (and `parse_duration` reads it back).
fn short_duration(secs: u64) -> String {
    if secs == 0 {
        return "0s".into();
    }
    let mut rest = secs;
    let mut parts = Vec::new();
    for (unit, n) in [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)] {
        if rest >= n {
            parts.push(format!("{}{unit}", rest / n));
            rest %= n;
        }
    }
    parts.join(" ")
}

/// A lifetime map as the table's column shows it: `key=value` pairs (`-` for none).
fn lifetime_text(m: &serde_json::Map<String, serde_json::Value>) -> String {
    if m.is_empty() {
        return "-".into();
    }
    let pair = |(k, v): (&String, &serde_json::Value)| match v {
        serde_json::Value::Bool(true) => k.clone(),
        serde_json::Value::String(s) => format!("{k}={s}"),
        other => format!("{k}={other}"),
    };
    m.iter().map(pair).collect::<Vec<_>>().join(",")
}

fn describe(src: &Source) -> String {
    match src {
        Source::Data(b) => format!("data ({} bytes inline)", b.len()),
        Source::File(p) => format!("file:{}", p.display()),
        Source::Url(u) => u.to_string(),
        Source::Result(r) => r.to_string(),
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
        Source::Url(_) | Source::Result(_) => ("(fetched at load)".into(), shown(declared)),
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

fn lifetime(l: &Lifetime) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    if let Some(n) = l.access_count {
        m.insert("access_count".into(), n.into());
    }
    if let Some(d) = l.expiration {
        m.insert("expiration".into(), short_duration(d.as_secs()).into());
    }
    m
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
        DiskKind::Filesystem { fstype, size_bytes, .. } => {
            (format!("filesystem {fstype}"), citron_core::limits::Size(*size_bytes).to_string(), "-".into())
        }
        DiskKind::Raw { size_bytes } => ("raw".into(), citron_core::limits::Size(*size_bytes).to_string(), "-".into()),
    };
    let mut lt = serde_json::Map::new();
    lt.insert("reset_on".into(), format!("{:?}", d.reset_on).to_lowercase().into());
    if d.readonly {
        lt.insert("readonly".into(), true.into());
    }
    if d.shared {
        lt.insert("shared".into(), true.into());
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
        .map(|r| [r.protocol.to_string(), r.path.clone(), r.source.clone(), r.size.clone(), r.sha256.clone(), lifetime_text(&r.lifetime)])
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

/// Prints the job's artifacts for `dut` and the URLs it would use: a table, or with `json` one
/// JSON document (`job`, `dut`, `machine_id`, `steps`: each with `step`, `cmdline`,
/// `boot_script` and its `artifacts`, the table's rows).
pub fn render(lab: &LabConfig, job: &Path, dut: &DutId, json: bool) -> anyhow::Result<ExitCode> {
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
    if json {
        let script = resolved.start.kernel.is_some().then(|| format!("{http}/{}", bootfiles::script_path(mid)));
        let mut steps = vec![serde_json::json!({
            "step": "start",
            "cmdline": resolved.start.cmdline,
            "boot_script": script,
            "artifacts": rows(&resolved.start, mid, &base, &nbd),
        })];
        if let Some(c) = &resolved.continue_ {
            let merged = c.over(&resolved.start);
            steps.push(serde_json::json!({
                "step": "continue",
                "cmdline": merged.cmdline,
                "boot_script": null,
                "artifacts": rows(&merged, mid, &base, &nbd),
            }));
        }
        let doc = serde_json::json!({"job": resolved.origin, "dut": d.id.0, "machine_id": mid, "steps": steps});
        println!("{}", serde_json::to_string_pretty(&doc).context("cannot encode the document")?);
        return Ok(ExitCode::SUCCESS);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_shown_as_a_job_writes_them_and_read_back() {
        for (secs, shown) in [(43200, "12h"), (5400, "1h 30m"), (7 * 86400, "7d"), (90, "1m 30s"), (0, "0s")] {
            assert_eq!(short_duration(secs), shown);
            assert_eq!(citron_core::units::parse_duration(shown).unwrap().as_secs(), secs);
        }
    }
}
