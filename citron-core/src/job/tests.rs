//! Job parsing, validation and rendering: the seed's examples, every error kind with its exact
//! position, the golden files of `tests/data/bad/`, and `file:` confinement.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;
use crate::serve::Space;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data")
}

/// The built-in variables only (what `tests/data/bad/` render-stage files are checked with).
fn builtin_vars() -> BTreeMap<String, String> {
    [
        ("machine_id", "dut1"),
        ("http_artifact_base", "http://127.0.0.1:8080"),
        ("tftp_artifact_base", "tftp://127.0.0.1:6969"),
        ("nbd_host", "127.0.0.1"),
        ("nbd_port", "10809"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Built-ins plus the lab variables the seed uses.
fn lab_ctx(root: &Path) -> RenderContext {
    let mut vars = builtin_vars();
    for (k, v) in [
        ("minio_url", "http://127.0.0.1:9000/artifacts"),
        ("pull_thru_registry", "127.0.0.1:8002"),
        ("local_tty_device", "ttyS0"),
        ("artifact_dir", root.to_str().unwrap()),
    ] {
        vars.insert(k.into(), v.into());
    }
    RenderContext { vars, file_roots: vec![root.to_path_buf()], ..Default::default() }
}

/// `(line, column, field, message)` of every parse error of `text`.
fn errors(text: &str) -> Vec<(usize, usize, String, String)> {
    match JobDescription::parse(text, Origin::named("job.yaml")) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e.0.into_iter().map(|e| (e.line, e.column, e.field, e.message)).collect(),
    }
}

/// Asserts exactly one parse error, at `line:col` on `field`, whose message contains `needle`.
#[track_caller]
fn one_error(text: &str, line: usize, col: usize, field: &str, needle: &str) {
    let e = errors(text);
    assert_eq!(e.len(), 1, "{e:#?}");
    let (l, c, f, m) = &e[0];
    assert_eq!((*l, *c, f.as_str()), (line, col, field), "{m}");
    assert!(m.contains(needle), "{m:?} does not contain {needle:?}");
}

fn render_errors(text: &str, ctx: &RenderContext, origin: Origin) -> Vec<(usize, usize, String, String)> {
    let job = JobDescription::parse(text, origin).expect("parses");
    match job.render(ctx) {
        Ok(_) => panic!("expected render errors for:\n{text}"),
        Err(e) => e.0.into_iter().map(|e| (e.line, e.column, e.field, e.message)).collect(),
    }
}

const HTTP_ENTRY: &str = "deployment:\n  start:\n    storage:\n      http:\n";

// ---------------------------------------------------------------------------------------------
// Good files

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "yaml")).collect();
    v.sort();
    v
}

#[test]
fn every_good_file_and_example_parses_and_renders() {
    let good = data_dir().join("good");
    let mut files = yaml_files(&good);
    // examples/ holds lab files (lab*.yaml) beside the jobs.
    files.extend(
        yaml_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples"))
            .into_iter()
            .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("lab"))),
    );
    assert!(files.len() >= 5, "{files:?}");
    for f in files {
        let job = JobDescription::from_file(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let root = f.parent().unwrap().canonicalize().unwrap();
        let rendered = job.render(&lab_ctx(&root));
        if f.ends_with("seed-example.yaml") {
            // The seed writes `url: "blabla"` for two files: it parses, and rendering says why it
            // cannot be fetched.
            let e = rendered.unwrap_err();
            let got: Vec<(usize, &str)> = e.0.iter().map(|e| (e.line, e.field.as_str())).collect();
            assert_eq!(got, [(27, "deployment.start.storage.tftp[1].url"), (36, "deployment.start.storage.http[1].url")], "{e}");
            assert!(e.0[0].message.contains("`blabla` is not a URL"), "{e}");
        } else {
            rendered.unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

#[test]
fn seed_example_keeps_every_value() {
    let text = include_str!("../../../tests/data/good/seed-example.yaml").replace("\"blabla\"", "\"https://example.com/blabla\"");
    let job = JobDescription::parse(&text, Origin::named("seed.yaml")).unwrap();
    let r = job.render(&lab_ctx(Path::new("/nonexistent"))).unwrap();
    let s = &r.start;
    assert_eq!(
        s.cmdline.as_deref().unwrap(),
        "b2c.container=\"docker://127.0.0.1:8002/infra/machine-registration:latest check\" \
         b2c.ntp_peer=\"ci-gateway\" b2c.pipefail b2c.cache_device=auto \
         b2c.container=\"-v /container/tmp:/storage docker://10.42.0.1:8002/tests/mesa:12345\" \
         console=ttyS0,115200 earlyprintk=vga,keep SALAD.machine_id=dut1"
    );
    let k = s.kernel.as_ref().unwrap();
    assert_eq!(k.source, Source::Url("http://127.0.0.1:9000/artifacts/test-kernel".parse().unwrap()));
    assert_eq!(s.files_in(Space::TFTP).iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["job/config.txt", "job/dtbs/blabla"]);
    assert_eq!(s.files_in(Space::TFTP)[0].source, Source::Data("blabla\nblabla\nblabla\n".into()));
    assert_eq!(
        s.files_in(Space::HTTP).iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
        ["config.txt", "job/dtbs/blabla", "job/secrets"]
    );
    assert_eq!(s.files_in(Space::HTTP)[2].lifetime, Lifetime { access_count: Some(1), expiration: None });
    assert_eq!(s.files_in(Space::HTTP)[2].source, Source::Data("MYSECRET_KEY: blabla\n".into()));
    let d = &s.nbd[0];
    assert_eq!((d.name.as_str(), d.readonly, d.reset_on, d.shared), ("block name", false, ResetOn::Boot, false));
    assert_eq!(d.expiration, Some(std::time::Duration::from_secs(7 * 86400)));
    assert!(matches!(&d.kind, DiskKind::Image { source: Source::Url(u), sha256: None } if u.as_str() == "https://path/to/my/disk.img"));
    assert!(r.continue_.is_none());
}

#[test]
fn nbd_alternatives_become_the_four_disk_kinds() {
    let job = JobDescription::parse(include_str!("../../../tests/data/good/nbd-alternatives.yaml"), Origin::named("n.yaml")).unwrap();
    let r = job.render(&lab_ctx(Path::new("/nonexistent"))).unwrap();
    let n = &r.start.nbd;
    assert_eq!(n.len(), 4);
    assert!(matches!(&n[1].kind, DiskKind::Filesystem { fstype, size_bytes, contents: Some(FsContents::Tarball(Source::Url(_), None)) }
        if fstype == "ext4" && *size_bytes == 20 << 30));
    assert!(matches!(&n[2].kind, DiskKind::Filesystem { fstype, size_bytes: 0, contents: Some(FsContents::Container(c)) }
        if fstype == "ext4" && c == "docker://alpine:latest"));
    assert_eq!((n[2].readonly, n[2].reset_on), (true, ResetOn::Never));
    assert_eq!(n[3].kind, DiskKind::Raw { size_bytes: 20 << 30 });
    assert_eq!((n[3].reset_on, n[3].shared), (ResetOn::JobStart, false));
}

#[test]
fn a_disk_image_may_be_a_local_file_inside_the_roots() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    std::fs::write(root.join("disk.img"), [0u8; 512]).unwrap();
    let yaml =
        "deployment:\n  start:\n    storage:\n      nbd:\n        - name: disk\n          file: disk.img\n          reset_on: boot\n";
    let origin = Origin { name: "j.yaml".into(), base_dir: Some(root.clone()) };
    let r = JobDescription::parse(yaml, origin).unwrap().render(&lab_ctx(&root)).unwrap();
    assert!(matches!(&r.start.nbd[0].kind, DiskKind::Image { source: Source::File(p), sha256: None } if *p == root.join("disk.img")));
    assert_eq!(r.start.nbd[0].reset_on, ResetOn::Boot);
    // Outside the roots: refused like every `file:` source.
    let outside = "deployment:\n  start:\n    storage:\n      nbd:\n        - name: disk\n          file: /etc/passwd\n";
    let e = render_errors(outside, &lab_ctx(&root), Origin::named("j.yaml"));
    assert!(e.iter().any(|(_, _, f, m)| f.ends_with("nbd[0].file") && m.contains("outside the allowed artifact roots")), "{e:?}");
}

#[test]
fn templates_everywhere_are_expanded() {
    let good = data_dir().join("good").canonicalize().unwrap();
    let job = JobDescription::from_file(&good.join("templates-everywhere.yaml")).unwrap();
    let r = job.render(&lab_ctx(&good)).unwrap();
    let s = &r.start;
    assert_eq!(s.kernel.as_ref().unwrap().source, Source::File(good.join("initrd.cpio.gz")));
    assert_eq!(s.cmdline.as_deref(), Some("console=ttyS0 root=/dev/nbd0 nbd=127.0.0.1:10809"));
    assert_eq!(s.files_in(Space::HTTP)[0].path, "boot/dut1/extra.txt");
    assert_eq!(
        s.files_in(Space::HTTP)[0].source,
        Source::Data("machine: dut1\nkernel from: http://127.0.0.1:8080/boot/dut1/kernel\n".into())
    );
    assert_eq!(s.files_in(Space::HTTP)[1].path, "job/dut1.cfg");
    assert_eq!(s.files_in(Space::HTTP)[1].lifetime.expiration, Some(std::time::Duration::from_secs(5400)));
    assert_eq!(s.files_in(Space::TFTP)[0].path, "dut1/cmdline.txt");
    assert_eq!(s.files_in(Space::TFTP)[0].source, Source::Url("http://127.0.0.1:8080/cmdline.txt".parse().unwrap()));
    assert_eq!(s.files_in(Space::TFTP)[0].sha256, Some(crate::Digest::of(b"hello")));
    assert_eq!(s.nbd[0].name, "dut1-root");
    assert!(
        matches!(&s.nbd[0].kind, DiskKind::Filesystem { contents: Some(FsContents::Container(c)), .. } if c == "docker://127.0.0.1:8002/mesa:latest")
    );
    let c = r.continue_.as_ref().unwrap();
    assert_eq!(c.cmdline.as_deref(), Some("console=ttyS0 rescue"));
    let merged = c.over(&r.start);
    assert_eq!(merged.files_in(Space::HTTP)[0].source, Source::Data("second boot".into()));
    assert_eq!(merged.files_in(Space::HTTP).len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Golden files of tests/data/bad (see tests/data/README.md)

/// What `citron validate` prints for a bad file: parse errors, or, when it parses, render errors
/// with the built-in variables and the file's own directory as the only artifact root.
fn validate_output(name: &str, path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let dir = path.parent().unwrap().to_path_buf();
    let origin = Origin { name: name.to_string(), base_dir: Some(dir.clone()) };
    let ctx = RenderContext { vars: builtin_vars(), file_roots: vec![dir], ..Default::default() };
    // What `citron validate` does: both stages, their problems together.
    let result = JobDescription::check(&text, origin, &ctx);
    match result {
        Ok(_) => panic!("{name} is valid; bad files must fail"),
        Err(e) => format!("{e}\n"),
    }
}

#[test]
fn bad_files_match_their_golden_stderr() {
    let bad = data_dir().join("bad");
    let bless = std::env::var_os("CITRON_BLESS").is_some();
    let mut failures = Vec::new();
    let files = yaml_files(&bad);
    assert!(files.len() >= 20);
    for f in &files {
        let stem = f.file_stem().unwrap().to_str().unwrap();
        let name = format!("tests/data/bad/{stem}.yaml");
        let got = validate_output(&name, f);
        let golden = bad.join(format!("{stem}.stderr"));
        if bless {
            std::fs::write(&golden, &got).unwrap();
            continue;
        }
        let want =
            std::fs::read_to_string(&golden).unwrap_or_else(|_| panic!("{} is missing (CITRON_BLESS=1 writes it)", golden.display()));
        if got != want {
            failures.push(format!("{name}:\n--- want\n{want}--- got\n{got}"));
        }
    }
    // No golden file without its job.
    for e in std::fs::read_dir(&bad).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|e| e == "stderr") {
            assert!(p.with_extension("yaml").exists(), "{} has no .yaml", p.display());
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// One test per error kind, with exact positions

#[test]
fn yaml_syntax_error_position() {
    one_error("deployment:\n  start:\n    kernel:\n      url: a\n     data: b\n", 5, 10, "<document>", "YAML syntax error");
}

#[test]
fn unquoted_template_gets_a_hint() {
    let e = errors("deployment:\n  start:\n    kernel:\n      url: {{ minio_url }}/vmlinuz\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].0, 4);
    assert!(e[0].3.contains("must be quoted"), "{e:?}");
}

#[test]
fn unknown_field_names_the_allowed_ones() {
    one_error(
        &format!("{HTTP_ENTRY}        - path: /a\n          data: x\n          urll: y\n"),
        7,
        11,
        "deployment.start.storage.http[0].urll",
        "unknown field `urll`; did you mean `url`? allowed here: path, data, url, file, result, sha256, lifetime",
    );
}

#[test]
fn unknown_top_level_field() {
    one_error("deployment:\n  start: {}\njob_timeout: 1h\n", 3, 1, "job_timeout", "allowed here: name, results, deployment");
}

#[test]
fn duplicate_key() {
    one_error("deployment:\n  start:\n    cmdline: a\n    cmdline: b\n", 4, 5, "deployment.start.cmdline", "given twice (first at line 3)");
}

#[test]
fn wrong_type() {
    one_error(&format!("{HTTP_ENTRY}        path: /a\n"), 5, 9, "deployment.start.storage.http", "expected a list of entries");
    one_error("deployment:\n  start:\n    cmdline: {a: b}\n", 3, 14, "deployment.start.cmdline", "expected a string or a list of strings");
    one_error("deployment:\n  start:\n    cmdline: [a, [b]]\n", 3, 18, "deployment.start.cmdline[1]", "expected a string");
    one_error(
        &format!("{HTTP_ENTRY}        - path:\n          data: x\n"),
        5,
        11,
        "deployment.start.storage.http[0].path",
        "expected a string, found nothing",
    );
}

#[test]
fn missing_required_key() {
    one_error(&format!("{HTTP_ENTRY}        - data: x\n"), 5, 11, "deployment.start.storage.http[0]", "`path` is missing");
    one_error("deployment:\n  continue: {}\n", 2, 3, "deployment", "`start` is missing");
    let e = errors("other: 1\n");
    let got: Vec<(usize, usize, &str)> = e.iter().map(|e| (e.0, e.1, e.2.as_str())).collect();
    assert_eq!(got, [(1, 1, "other"), (1, 1, "<document>")], "{e:?}");
    assert!(e[1].3.contains("`deployment` is missing"));
}

#[test]
fn two_sources_in_one_entry() {
    one_error(
        &format!("{HTTP_ENTRY}        - path: /a\n          data: x\n          url: https://e.com/a\n"),
        7,
        11,
        "deployment.start.storage.http[0]",
        "`data` and `url` are both given; keep exactly one of `data`, `url`, `file`, `result`",
    );
}

#[test]
fn no_source() {
    one_error(
        &format!("{HTTP_ENTRY}        - path: /a\n"),
        5,
        11,
        "deployment.start.storage.http[0]",
        "no source; give exactly one of `data`, `url`, `file`, `result`",
    );
}

#[test]
fn duplicate_paths_in_one_protocol() {
    one_error(
        &format!("{HTTP_ENTRY}        - path: /a/b\n          data: x\n        - path: a//b\n          data: y\n"),
        7,
        17,
        "deployment.start.storage.http[1].path",
        "`a/b` is already defined at line 5",
    );
}

#[test]
fn duplicate_disk_names() {
    one_error(
        "deployment:\n  start:\n    storage:\n      nbd:\n        - name: d\n          raw: {size: 1G}\n        - {name: d, raw: {size: 1G}}\n",
        7,
        18,
        "deployment.start.storage.nbd[1].name",
        "a disk named `d` is already defined at line 5",
    );
}

#[test]
fn bad_paths() {
    for (path, col, needle) in [
        ("/job/../x", 17, "'..' is not allowed"),
        ("\"a\\0b\"", 17, "control characters"),
        ("/api/x", 17, "reserved for citron"),
        ("/_citron/x", 17, "reserved for citron"),
        ("'a\\b'", 17, "'\\' is not allowed"),
        ("/", 17, "the path is empty"),
    ] {
        one_error(
            &format!("{HTTP_ENTRY}        - path: {path}\n          data: x\n"),
            5,
            col,
            "deployment.start.storage.http[0].path",
            needle,
        );
    }
}

#[test]
fn bad_sha256() {
    one_error(
        "deployment:\n  start:\n    kernel: {data: x, sha256: abc}\n",
        3,
        31,
        "deployment.start.kernel.sha256",
        "expected 64 hex digits",
    );
}

#[test]
fn bad_size_and_duration() {
    one_error(
        "deployment:\n  start:\n    storage:\n      nbd:\n        - name: d\n          raw: {size: 2X}\n",
        6,
        23,
        "deployment.start.storage.nbd[0].raw.size",
        "unknown size unit",
    );
    one_error(
        "deployment:\n  start:\n    storage:\n      nbd:\n        - name: d\n          raw: {size: 1G}\n          expiration: later\n",
        7,
        23,
        "deployment.start.storage.nbd[0].expiration",
        "is not a duration",
    );
}

#[test]
fn bad_reset_on() {
    one_error(
        "deployment:\n  start:\n    storage:\n      nbd:\n        - name: d\n          raw: {size: 1G}\n          reset_on: boot|never\n",
        7,
        21,
        "deployment.start.storage.nbd[0].reset_on",
        "write one of boot, job_start or never",
    );
}

#[test]
fn access_count_zero_means_no_limit() {
    // The seed: "stop being available after N accesses (0 by default)".
    let text = format!("{HTTP_ENTRY}        - path: /a\n          data: x\n          lifetime: {{access_count: 0}}\n");
    let job = JobDescription::parse(&text, Origin::named("j.yaml")).unwrap();
    let r = job.render(&RenderContext { vars: builtin_vars(), file_roots: vec![], ..Default::default() }).unwrap();
    assert_eq!(r.start.files_in(Space::HTTP)[0].lifetime, Lifetime { access_count: None, expiration: None });
}

#[test]
fn bad_access_count() {
    for (v, col) in [("-1", 36), ("1.5", 36), ("'2'", 36), ("[]", 36)] {
        one_error(
            &format!("{HTTP_ENTRY}        - path: /a\n          data: x\n          lifetime: {{access_count: {v}}}\n"),
            7,
            col,
            "deployment.start.storage.http[0].lifetime.access_count",
            "whole number",
        );
    }
}

#[test]
fn bad_bool() {
    one_error(
        "deployment:\n  start:\n    storage:\n      nbd:\n        - name: d\n          raw: {size: 1G}\n          shared: yes\n",
        7,
        19,
        "deployment.start.storage.nbd[0].shared",
        "expected true or false",
    );
}

#[test]
fn s3_and_nfs_are_not_supported_yet() {
    let e = errors("deployment:\n  start:\n    storage:\n      s3:\n      nfs: {}\n");
    let got: Vec<(usize, usize, &str)> = e.iter().map(|e| (e.0, e.1, e.2.as_str())).collect();
    assert_eq!(got, [(4, 7, "deployment.start.storage.s3"), (5, 7, "deployment.start.storage.nfs")]);
    assert!(e[0].3.contains("not supported yet"));
}

#[test]
fn template_syntax_errors_at_parse_time() {
    one_error("deployment:\n  start:\n    cmdline: 'a {{ b'\n", 3, 17, "deployment.start.cmdline", "is not closed");
    one_error(
        "deployment:\n  start:\n    kernel:\n      data: |\n        x\n          {{ a b }}\n",
        6,
        11,
        "deployment.start.kernel.data",
        "`a b` is not a variable name",
    );
}

#[test]
fn all_errors_are_reported_at_once_in_document_order() {
    let text = std::fs::read_to_string(data_dir().join("bad/three-errors.yaml")).unwrap();
    let e = errors(&text);
    let got: Vec<(usize, &str)> = e.iter().map(|e| (e.0, e.2.as_str())).collect();
    assert_eq!(
        got,
        [
            (6, "deployment.start.kernel.sha256"),
            (11, "deployment.start.storage.http[1].path"),
            (16, "deployment.start.storage.nbd[0].reset_on"),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Render stage

#[test]
fn unknown_variable_position_in_every_scalar_style() {
    let ctx = RenderContext { vars: builtin_vars(), file_roots: vec![], ..Default::default() };
    let text = "deployment:\n  start:\n    kernel:\n      url: \"{{ http_artifact_base }}/{{ nope }}\"\n    cmdline:\n      - a={{ machine_id }} b={{x}}\n    storage:\n      http:\n        - path: /a\n          data: |\n            one {{ machine_id }}\n              two {{ secret }}\n        - path: '/{{ machine-id }}/b'\n          data: >\n            folded\n            {{ y }}\n";
    let e = render_errors(text, &ctx, Origin::named("job.yaml"));
    let got: Vec<(usize, usize, &str)> = e.iter().map(|e| (e.0, e.1, e.2.as_str())).collect();
    assert_eq!(
        got,
        [
            (4, 38, "deployment.start.kernel.url"),
            (6, 30, "deployment.start.cmdline[0]"),
            (12, 19, "deployment.start.storage.http[0].data"),
            (13, 19, "deployment.start.storage.http[1].path"),
            (16, 13, "deployment.start.storage.http[1].data"),
        ],
        "{e:#?}"
    );
    assert!(e[0].3.starts_with("unknown template variable `nope`; defined variables: http_artifact_base, machine_id"), "{}", e[0].3);
    assert!(e[3].3.contains("did you mean `machine_id`?"), "{}", e[3].3);
}

#[test]
fn a_variable_cannot_smuggle_a_bad_path() {
    let mut ctx = RenderContext { vars: builtin_vars(), file_roots: vec![], ..Default::default() };
    ctx.vars.insert("evil".into(), "../../etc".into());
    ctx.vars.insert("api".into(), "api".into());
    let text = format!(
        "{HTTP_ENTRY}        - path: /{{{{ evil }}}}/passwd\n          data: x\n        - path: '{{{{api}}}}/x'\n          data: x\n"
    );
    let e = render_errors(&text, &ctx, Origin::named("job.yaml"));
    assert_eq!(e.len(), 2, "{e:?}");
    assert_eq!((e[0].0, e[0].1), (5, 17));
    assert!(e[0].3.contains("'..' is not allowed"), "{}", e[0].3);
    assert!(e[1].3.contains("reserved for citron"), "{}", e[1].3);
}

#[test]
fn templated_paths_that_collide_after_rendering() {
    let ctx = RenderContext { vars: builtin_vars(), file_roots: vec![], ..Default::default() };
    let text =
        format!("{HTTP_ENTRY}        - path: /dut1/a\n          data: x\n        - path: /{{{{ machine_id }}}}/a\n          data: y\n");
    let e = render_errors(&text, &ctx, Origin::named("job.yaml"));
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!((e[0].0, e[0].1), (7, 17));
    assert!(e[0].3.contains("already defined at line 5"));
}

#[test]
fn url_schemes() {
    let ctx = RenderContext { vars: builtin_vars(), file_roots: vec![], ..Default::default() };
    for (url, ok) in [
        ("https://e.com/k", true),
        ("http://127.0.0.1:8080/k", true),
        ("s3://bucket/key", true),
        ("ftp://e.com/k", false),
        ("file:///etc/shadow", false),
        ("blabla", false),
        ("http://", false),
    ] {
        let job =
            JobDescription::parse(&format!("deployment:\n  start:\n    kernel:\n      url: '{url}'\n"), Origin::named("j.yaml")).unwrap();
        match job.render(&ctx) {
            Ok(r) => assert!(ok, "{url} accepted: {r:?}"),
            Err(e) => {
                assert!(!ok, "{url} refused: {e}");
                assert_eq!((e.0[0].line, e.0[0].column), (4, 12), "{e}");
            }
        }
    }
}

#[test]
fn data_is_checked_against_its_sha256() {
    let ctx = RenderContext { vars: builtin_vars(), file_roots: vec![], ..Default::default() };
    let good = format!("deployment:\n  start:\n    kernel:\n      data: hello\n      sha256: {}\n", crate::Digest::of(b"hello"));
    assert!(JobDescription::parse(&good, Origin::named("j.yaml")).unwrap().validate(&ctx).is_ok());
    let bad = good.replace("data: hello", "data: hullo");
    let e = render_errors(&bad, &ctx, Origin::named("j.yaml"));
    assert_eq!((e[0].0, e[0].1, e[0].2.as_str()), (5, 15, "deployment.start.kernel.sha256"));
}

// ---------------------------------------------------------------------------------------------
// file: confinement

struct Roots {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

fn roots() -> Roots {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().canonicalize().unwrap();
    let root = base.join("root");
    let outside = base.join("outside");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(root.join("sub/kernel.img"), b"kernel").unwrap();
    std::fs::write(outside.join("secret"), b"secret").unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), root.join("escape")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("dirlink")).unwrap();
    std::os::unix::fs::symlink(root.join("sub/kernel.img"), root.join("inner-link")).unwrap();
    Roots { _tmp: tmp, root, outside }
}

fn file_job(path: &str) -> String {
    format!("deployment:\n  start:\n    kernel:\n      file: '{path}'\n")
}

fn render_file(r: &Roots, path: &str) -> Result<ResolvedJob, JobErrors> {
    let origin = Origin { name: "j.yaml".into(), base_dir: Some(r.root.clone()) };
    let ctx = RenderContext { vars: builtin_vars(), file_roots: vec![r.root.clone()], ..Default::default() };
    JobDescription::parse(&file_job(path), origin).unwrap().render(&ctx)
}

#[track_caller]
fn refused(r: &Roots, path: &str, needle: &str) {
    let e = render_file(r, path).unwrap_err();
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!((e.0[0].line, e.0[0].column, e.0[0].field.as_str()), (4, 13, "deployment.start.kernel.file"));
    assert!(e.0[0].message.contains(needle), "{path}: {e}");
}

#[test]
fn file_inside_the_root_is_accepted_and_canonical() {
    let r = roots();
    for p in ["sub/kernel.img", "./sub/../sub/kernel.img", "inner-link"] {
        let job = render_file(&r, p).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!(job.start.kernel.unwrap().source, Source::File(r.root.join("sub/kernel.img")), "{p}");
    }
    let abs = r.root.join("sub/kernel.img");
    assert!(render_file(&r, abs.to_str().unwrap()).is_ok());
}

#[test]
fn absolute_etc_shadow_is_refused() {
    let r = roots();
    refused(&r, "/etc/shadow", "outside the allowed artifact roots");
}

#[test]
fn dotdot_out_of_the_root_is_refused() {
    let r = roots();
    refused(&r, "../outside/secret", "outside the allowed artifact roots");
    refused(&r, "sub/../../outside/secret", "outside the allowed artifact roots");
    refused(&r, "../../../../../../../../etc/passwd", "outside the allowed artifact roots");
}

#[test]
fn symlinks_out_of_the_root_are_refused() {
    let r = roots();
    refused(&r, "escape", "outside the allowed artifact roots");
    refused(&r, "dirlink/secret", "outside the allowed artifact roots");
    assert!(r.outside.join("secret").exists());
}

#[test]
fn missing_file_and_directory_are_refused() {
    let r = roots();
    refused(&r, "nope.img", "does not exist");
    refused(&r, "sub", "is not a regular file");
}

#[test]
fn relative_file_without_base_dir_is_refused() {
    let r = roots();
    let ctx = RenderContext { vars: builtin_vars(), file_roots: vec![r.root.clone()], ..Default::default() };
    let e = JobDescription::parse(&file_job("sub/kernel.img"), Origin::named("api")).unwrap().render(&ctx).unwrap_err();
    assert!(e.0[0].message.contains("not read from a file"), "{e}");
}

#[test]
fn no_roots_means_no_files() {
    let r = roots();
    let origin = Origin { name: "j.yaml".into(), base_dir: Some(r.root.clone()) };
    let ctx = RenderContext { vars: builtin_vars(), file_roots: vec![], ..Default::default() };
    let e = JobDescription::parse(&file_job("sub/kernel.img"), origin).unwrap().render(&ctx).unwrap_err();
    assert!(e.0[0].message.contains("outside the allowed artifact roots"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Robustness: whatever the text, parse and render answer (Ok or errors with sane positions).

proptest::proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in "[a-z_:{}\\[\\], \n\"'|>#&*!.0-9-]{0,200}") {
        check_no_panic(&text);
    }

    #[test]
    fn mutated_good_files_never_panic(at in 0usize..2000, len in 0usize..20, insert in "[ \n:{}\\[\\]\"'-|a-z0-9]{0,6}") {
        let good = include_str!("../../../tests/data/good/templates-everywhere.yaml");
        let at = good.char_indices().map(|(i, _)| i).find(|i| *i >= at % good.len()).unwrap_or(0);
        let end = good.char_indices().map(|(i, _)| i).find(|i| *i >= at + len).unwrap_or(good.len());
        let text = format!("{}{}{}", &good[..at], insert, &good[end..]);
        check_no_panic(&text);
    }
}

fn check_no_panic(text: &str) {
    let lines = text.lines().count().max(1) + 1;
    match JobDescription::parse(text, Origin::named("fuzz.yaml")) {
        Ok(job) => {
            let _ = job.render(&RenderContext { vars: builtin_vars(), file_roots: vec![], ..Default::default() });
        }
        Err(e) => {
            assert!(!e.0.is_empty());
            for err in &e.0 {
                assert!(err.line >= 1 && err.line <= lines && err.column >= 1, "{err} in {text:?}");
            }
            let order: Vec<(usize, usize)> = e.0.iter().map(|e| (e.line, e.column)).collect();
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(order, sorted);
        }
    }
}

#[test]
fn disk_sizes_are_bounded_by_the_lab_limit() {
    let text = "deployment:\n  start:\n    storage:\n      nbd:\n        - name: a\n          raw: { size: 2T }\n        - name: b\n          filesystem: { size: 3G }\n";
    let mut ctx = RenderContext { vars: builtin_vars(), ..Default::default() };
    assert!(JobDescription::check(text, Origin::named("j.yaml"), &ctx).is_ok());
    ctx.limits.max_disk_size = crate::limits::Size(1 << 30);
    let e = render_errors(text, &ctx, Origin::named("j.yaml"));
    assert_eq!(e.len(), 2, "{e:#?}");
    assert_eq!((e[0].0, e[0].1, e[0].2.as_str()), (6, 24, "deployment.start.storage.nbd[0].raw.size"));
    assert!(e[0].3.contains("a disk of 2T is larger than this lab allows (1G, `limits.max_disk_size`"), "{}", e[0].3);
    assert_eq!((e[1].0, e[1].1, e[1].2.as_str()), (8, 31, "deployment.start.storage.nbd[1].filesystem.size"));
}

#[test]
fn a_job_names_itself_and_says_what_its_results_are() {
    let text =
        "name: kernel-build\nresults:\n  revision: 'v{{ machine_id }}'\n  platform: arm64\n  max_size: 1G\ndeployment:\n  start: {}\n";
    let ctx = RenderContext { vars: builtin_vars(), ..Default::default() };
    let job = JobDescription::check(text, Origin::named("j.yaml"), &ctx).unwrap();
    assert_eq!(job.name.as_deref(), Some("kernel-build"));
    let r = job.results.unwrap();
    assert_eq!((r.revision.as_deref(), r.platform.as_deref(), r.max_size), (Some("vdut1"), Some("arm64"), 1 << 30));
    // No max_size: the lab's bound.
    let job = JobDescription::check("name: a\nresults: {}\ndeployment: {start: {}}\n", Origin::named("j.yaml"), &ctx).unwrap();
    assert_eq!(job.results.unwrap().max_size, ctx.limits.results_max.bytes());
    // Every problem positioned: a bad name, results without a name, a bad size, over the bound.
    let e = JobDescription::parse("name: ../x\ndeployment: {start: {}}\n", Origin::named("j.yaml")).unwrap_err();
    assert_eq!((e.0[0].line, e.0[0].column, e.0[0].field.as_str()), (1, 7, "name"), "{e}");
    let e = JobDescription::parse("results: {platform: x}\ndeployment: {start: {}}\n", Origin::named("j.yaml")).unwrap_err();
    assert!(e.0[0].message.contains("needs a `name:`"), "{e}");
    let e = JobDescription::parse("name: a\nresults: {max_size: lots, colour: red}\ndeployment: {start: {}}\n", Origin::named("j.yaml"))
        .unwrap_err();
    assert_eq!(e.0.len(), 2, "{e}");
    let mut small = ctx.clone();
    small.limits.results_max = crate::limits::Size(1 << 20);
    let e = render_errors("name: a\nresults:\n  max_size: 2M\ndeployment: {start: {}}\n", &small, Origin::named("j.yaml"));
    assert_eq!((e[0].0, e[0].1, e[0].2.as_str()), (3, 13, "results.max_size"), "{e:?}");
    assert!(e[0].3.contains("limits.results_max"), "{}", e[0].3);
}

#[test]
fn a_tarball_carries_its_sha256_and_a_bad_one_is_positioned() {
    let hex = "ab".repeat(32);
    let job = format!(
        "deployment:\n  start:\n    storage:\n      nbd:\n        - name: root\n          filesystem: {{ size: 1G, data: {{ url: \"http://o/r.tar\", sha256: {hex} }} }}\n"
    );
    let r = JobDescription::parse(&job, Origin::named("t.yaml")).unwrap().render(&lab_ctx(Path::new("/nonexistent"))).unwrap();
    assert!(matches!(&r.start.nbd[0].kind, DiskKind::Filesystem { contents: Some(FsContents::Tarball(Source::Url(_), Some(d))), .. }
        if d.hex() == hex));
    one_error(
        "deployment:\n  start:\n    storage:\n      nbd:\n        - name: root\n          filesystem: {size: 1G, data: {url: \"http://o/r.tar\", sha256: nothex}}\n",
        6,
        72,
        "deployment.start.storage.nbd[0].filesystem.data.sha256",
        "sha256sum",
    );
    // A bad sha256 and a missing source are both reported, not only the first.
    let e = errors(
        "deployment:\n  start:\n    storage:\n      nbd:\n        - name: root\n          filesystem: {size: 1G, data: {sha256: nothex}}\n",
    );
    assert_eq!(e.len(), 2, "{e:#?}");
}
