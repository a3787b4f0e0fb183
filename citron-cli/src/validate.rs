//! `citron validate`: job files (or `-`, standard input) checked as `serve` would load them,
//! for every DUT of the lab or one (`--dut`); a lab file given among them is recognised and
//! checked as a lab file; `--lab` alone checks the lab file.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use citron_core::job::{JobDescription, Origin};
use citron_core::lab::LabConfig;
use citron_core::namespace::{Dut, DutId};

/// Checks `jobs` against the lab file `lab` (default: the embedded lab), rendered for `dut`
/// (default: every DUT of the lab). Exit 1 if anything is invalid.
pub fn run(lab_path: Option<&Path>, dut: Option<&str>, jobs: &[PathBuf]) -> anyhow::Result<ExitCode> {
    if jobs.is_empty() && lab_path.is_none() {
        bail!("nothing to check: give job files (or - for standard input), or --lab LAB.yaml to check a lab file");
    }
    let stderr = std::io::stderr();
    let lab = match lab_path {
        // Checked on its own, the lab file is what is invalid (1); with jobs, an unusable lab
        // file is a usage error (2), as for every other command.
        Some(p) if jobs.is_empty() => match LabConfig::from_file(p) {
            Ok(l) => l,
            Err(e) => {
                let _ = writeln!(stderr.lock(), "{e}");
                return Ok(ExitCode::from(1));
            }
        },
        Some(p) => LabConfig::from_file(p)?,
        None => LabConfig::default_lab(),
    };
    let duts: Vec<Dut> = match dut {
        Some(id) => match lab.duts.iter().find(|d| d.id == DutId::from(id)) {
            Some(d) => vec![d.clone()],
            None => {
                let known: Vec<String> = lab.duts.iter().map(|d| d.id.to_string()).collect();
                bail!("--dut {id:?}: the lab has no such DUT (it has: {})", known.join(", "));
            }
        },
        None if lab.duts.is_empty() => vec![Dut::new("placeholder-dut", [])],
        None => lab.duts.clone(),
    };
    let mut bad = false;
    for path in jobs {
        let (text, origin, job_file) = if path.as_os_str() == "-" {
            let mut t = String::new();
            std::io::stdin().read_to_string(&mut t).context("cannot read the job from standard input")?;
            (t, Origin::named("<stdin>"), PathBuf::from("./<stdin>"))
        } else {
            match JobDescription::read_text(path) {
                Ok(t) => (t, Origin::file(path), path.clone()),
                Err(e) => {
                    bad = true;
                    let _ = writeln!(stderr.lock(), "{e}");
                    continue;
                }
            }
        };
        if is_lab_file(&text) {
            bad |= check_lab_file(&text, &origin.name);
            continue;
        }
        // Shape and render problems together, for each DUT; a problem every DUT has is said once.
        let mut said: Vec<String> = Vec::new();
        for d in &duts {
            let ctx = crate::offline_context(&lab, d, &job_file);
            if let Err(e) = JobDescription::check(&text, origin.clone(), &ctx) {
                bad = true;
                for line in e.to_string().lines() {
                    if !said.iter().any(|s| s == line) {
                        let _ = writeln!(stderr.lock(), "{line}");
                        said.push(line.to_string());
                    }
                }
            }
        }
    }
    Ok(if bad { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// Whether `text` is a lab file rather than a job: a mapping with `duts:` and no `deployment:`.
fn is_lab_file(text: &str) -> bool {
    let Ok(serde_yaml::Value::Mapping(m)) = serde_yaml::from_str::<serde_yaml::Value>(text) else { return false };
    m.contains_key("duts") && !m.contains_key("deployment")
}

/// Checks a lab file found among the jobs; `true` if it is invalid.
fn check_lab_file(text: &str, name: &str) -> bool {
    let stderr = std::io::stderr();
    let _ = writeln!(stderr.lock(), "{name}: a lab file, not a job: checked as a lab file (give it with --lab to check jobs against it)");
    match LabConfig::from_yaml(text, name) {
        Ok(_) => false,
        Err(e) => {
            let _ = writeln!(stderr.lock(), "{e}");
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_files_are_told_from_jobs() {
        assert!(is_lab_file("duts:\n  - id: a\n    ip: [10.0.0.2]\n"));
        assert!(!is_lab_file("deployment:\n  start: {}\n"));
        assert!(!is_lab_file("duts: []\ndeployment: {}\n"), "a job with a stray key stays a job (its error names the key)");
        assert!(!is_lab_file("- not a mapping\n"));
    }
}
