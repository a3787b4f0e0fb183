//! The data directory: one `citron serve` at a time, leftovers cleaned, never inside an artifact
//! root, and a lab file whose artifact roots would expose it is refused.

use std::time::Duration;

use citron_tests::{citron_bin, run, workspace_root, Citron};

const T: Duration = Duration::from_secs(30);

#[test]
fn a_second_serve_on_the_same_data_is_refused_and_leftovers_go() {
    let first = Citron::start(&[]);
    let data = first.state.to_str().unwrap().to_string();
    let Err(second) = Citron::try_start(&["--data", &data]) else { panic!("a second citron on the same --data started") };
    assert_eq!(second.status.and_then(|s| s.code()), Some(2), "{}", second.stderr);
    assert!(second.stderr.contains("already used by another citron"), "{}", second.stderr);
    assert!(second.stderr.contains(&format!("pid {}", first.pid())), "{}", second.stderr);
    // kill -9: the kernel drops the lock with the process, and the next start cleans up.
    let leftover = first.state.join("disks/bases/0123.tree.77.0.tmp");
    std::fs::create_dir_all(leftover.join("etc")).unwrap();
    std::fs::write(leftover.join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
    first.signal("KILL");
    let mut first = first;
    first.wait_exit(T);
    let third = Citron::start(&["--data", &data]);
    assert!(!leftover.exists(), "a leftover temporary tree survived the restart");
    drop(third);
}

#[test]
fn roots_that_expose_the_lab_file_or_the_data_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let lab = dir.path().join("lab.yaml");
    std::fs::write(&lab, "api_token: s3cret\nartifact_roots: [.]\n").unwrap();
    let o = run(citron_bin(), &["validate", "--lab", lab.to_str().unwrap(), "examples/job-hello.yaml"], Some(&workspace_root()), T);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("lab.yaml:2:1: artifact_roots:"), "{}", o.stderr);

    std::fs::create_dir(dir.path().join("arts")).unwrap();
    std::fs::write(&lab, "artifact_roots: [arts]\n").unwrap();
    let data = dir.path().join("arts/citron-data");
    let Err(f) = Citron::try_start(&["--lab", lab.to_str().unwrap(), "--data", data.to_str().unwrap()]) else {
        panic!("a data directory inside an artifact root was accepted")
    };
    assert!(f.stderr.contains("overlap"), "{}", f.stderr);
}
