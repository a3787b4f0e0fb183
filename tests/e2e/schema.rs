//! `citron schema job|lab` as an editor uses it: the published JSON Schema, checked with a real
//! validator (`check-jsonschema`, installed by scripts/setup-python.sh), accepts every example
//! and good job and rejects the jobs whose shape the reader rejects.

use std::time::Duration;

use citron_tests::{citron_bin, require_tool, run, workspace_root};

const T: Duration = Duration::from_secs(60);

/// `citron schema KIND` saved to a file in `dir`.
fn schema(dir: &std::path::Path, kind: &str) -> String {
    let o = run(citron_bin(), &["schema", kind], None, T);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let path = dir.join(format!("citron-{kind}.json"));
    std::fs::write(&path, &o.stdout).unwrap();
    path.display().to_string()
}

fn yaml_in(dir: &str, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(workspace_root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && keep(n))
        .map(|n| format!("{dir}/{n}"))
        .collect();
    v.sort();
    v
}

#[test]
fn the_schemas_accept_the_examples_and_reject_bad_jobs() {
    if !require_tool("check-jsonschema") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (job, lab) = (schema(dir.path(), "job"), schema(dir.path(), "lab"));
    let root = workspace_root();
    let check = |schema: &str, files: &[String]| {
        let mut args = vec!["--schemafile", schema];
        args.extend(files.iter().map(String::as_str));
        run("check-jsonschema", &args, Some(&root), T)
    };

    let mut jobs = yaml_in("examples", |n| !n.starts_with("lab"));
    jobs.extend(yaml_in("tests/data/good", |_| true));
    assert!(jobs.len() >= 7, "{jobs:?}");
    let o = check(&job, &jobs);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    let labs = yaml_in("examples", |n| n.starts_with("lab"));
    assert!(!labs.is_empty());
    let o = check(&lab, &labs);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);

    // Each bad job is refused on its own, the unknown key named.
    for bad in ["unknown-field", "two-sources", "no-source", "wrong-type", "bad-reset-on", "s3-nfs-tbd", "not-a-job"] {
        let o = check(&job, &[format!("tests/data/bad/{bad}.yaml")]);
        assert_eq!(o.code, 1, "{bad} passes the schema: {}{}", o.stdout, o.stderr);
    }
    let o = check(&job, &["tests/data/bad/unknown-field.yaml".to_string()]);
    assert!(o.stdout.contains("'urll' was unexpected"), "{}", o.stdout);
    // A job file is not a lab file.
    let o = check(&lab, &["examples/job-hello.yaml".to_string()]);
    assert_eq!(o.code, 1, "{}", o.stdout);
}

/// The README tells editors where the schema is, in the modeline yaml-language-server reads.
#[test]
fn the_readme_shows_the_schema_modeline() {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    assert!(readme.contains("citron schema job"), "README does not say how to get the schema");
    assert!(readme.contains("# yaml-language-server: $schema="), "README has no modeline example");
}
