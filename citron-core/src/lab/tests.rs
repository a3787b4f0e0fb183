//! Lab file tests: every key read, every error at once with its position.

use super::*;

/// The one error of a lab file that has exactly one.
pub(crate) fn only(e: LabErrors) -> LabError {
    assert_eq!(e.0.len(), 1, "{e}");
    e.0.into_iter().next().unwrap()
}

#[test]
fn default_lab_parses() {
    let lab = LabConfig::default_lab();
    assert!(lab.duts.len() >= 2);
}

#[test]
fn machine_id_is_not_a_lab_variable() {
    let e = only(LabConfig::from_yaml("duts: []\nvariables:\n  minio_url: x\n  machine_id: same-for-all\n", "l.yaml").unwrap_err());
    assert_eq!((e.line, e.column), (4, 3));
    // A DUT's own `machine_id:` earlier in the file is not the one to point at.
    let e = only(LabConfig::from_yaml("duts:\n  - id: a\n    machine_id: m\nvariables:\n  machine_id: x\n", "l.yaml").unwrap_err());
    assert_eq!((e.line, e.column), (5, 3));
    assert!(e.message.contains("per DUT"), "{}", e.message);
    // The endpoint variables may be overridden (DUTs that see citron under another name).
    let lab = LabConfig::from_yaml("variables:\n  http_artifact_base: http://gw\n", "l.yaml").unwrap();
    assert_eq!(lab.variables["http_artifact_base"], "http://gw");
}

#[test]
fn a_root_holding_the_lab_file_is_refused() {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir(t.path().join("arts")).unwrap();
    let p = t.path().join("lab.yaml");
    std::fs::write(&p, "duts: []\nartifact_roots: [.]\n").unwrap();
    let e = only(LabConfig::from_file(&p).unwrap_err());
    assert_eq!((e.line, e.column), (2, 1), "{e}");
    assert!(e.message.contains("contains this lab file"), "{e}");
    std::fs::write(&p, "duts: []\nartifact_roots: [arts]\n").unwrap();
    assert_eq!(LabConfig::from_file(&p).unwrap().artifact_roots, vec![t.path().join("arts")]);
}

#[test]
fn debug_redacts_the_token_and_the_s3_secret() {
    let text = "api_token: tok-SECRET-1\ns3:\n  access_key_id: AKIAVISIBLE\n  secret_access_key: s3-SECRET-2\n";
    let lab = LabConfig::from_yaml(text, "l.yaml").unwrap();
    let shown = format!("{lab:?} {:#?} {:?}", lab, lab.s3);
    assert!(!shown.contains("SECRET"), "{shown}");
    assert!(shown.contains("<redacted>") && shown.contains("AKIAVISIBLE"), "{shown}");
    // serde still sees the real values.
    assert_eq!(lab.api_token.as_deref(), Some("tok-SECRET-1"));
    assert_eq!(LabConfig::from_yaml(&serde_yaml::to_string(&lab).unwrap(), "l.yaml").unwrap(), lab);
}

#[test]
fn api_token_has_one_source() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tok"), "from-file\n").unwrap();
    std::fs::write(dir.path().join("lab.yaml"), "api_token_file: tok\napi_hosts: [citron.lab, \"api.lab:8081\"]\n").unwrap();
    let lab = LabConfig::from_file(&dir.path().join("lab.yaml")).unwrap();
    assert_eq!(lab.resolve_api_token(None).unwrap().as_deref(), Some("from-file"));
    assert!(matches!(lab.resolve_api_token(Some("env")), Err(ApiTokenError::Several(_))));
    let none = LabConfig::default();
    assert_eq!(none.resolve_api_token(Some("from-env")).unwrap().as_deref(), Some("from-env"));
    assert_eq!(none.resolve_api_token(Some("")).unwrap(), None);
    let both = LabConfig::from_yaml("api_token: a\napi_token_file: /x\n", "l.yaml").unwrap();
    let e = both.resolve_api_token(None).unwrap_err().to_string();
    assert!(e.contains("api_token_file") && e.contains("exactly one"), "{e}");
    let e = LabConfig::from_yaml("api_token: \" \"\n", "l.yaml").unwrap().resolve_api_token(None).unwrap_err();
    assert!(matches!(e, ApiTokenError::Empty(_)), "{e}");
    let missing = LabConfig::from_yaml("api_token_file: /nonexistent/tok\n", "l.yaml").unwrap();
    assert!(matches!(missing.resolve_api_token(None), Err(ApiTokenError::Read { .. })));
    let e = only(LabConfig::from_yaml("duts: []\napi_hosts: [\"a b\"]\n", "l.yaml").unwrap_err());
    // At the bad entry itself.
    assert_eq!((e.line, e.column, e.field.as_str()), (2, 13, "api_hosts[0]"), "{e}");
}

#[test]
fn unknown_keys_are_errors_with_positions() {
    let e = only(LabConfig::from_yaml("duts: []\nvariablez: {}\n", "l.yaml").unwrap_err());
    assert_eq!((e.line, e.column), (2, 1));
    assert!(e.message.contains("variablez"), "{}", e.message);
}

#[test]
fn every_error_is_reported_at_once_with_its_position() {
    let text = "\
duts:
  - id: a
    ip: [127.0.0.2, not-an-ip]
    macc: \"52:54:00:00:00:01\"
  - ip: [127.0.0.3]
variables:
  port: 8080
cache:
  max_size: lots
limits:
  idle_timeout: soon
  conections: 5
  tftp_transfers: -1
s3: {endpoint: http://minio:9000, secret: x}
api_hosts: [ok.lab, \"bad host\"]
artefact_roots: [/srv]
";
    let e = LabConfig::from_yaml(text, "lab.yaml").unwrap_err();
    let got: Vec<String> = e.0.iter().map(|e| format!("{}:{} {}", e.line, e.column, e.field)).collect();
    assert_eq!(
        got,
        [
            "3:21 duts[0].ip",
            "4:5 duts[0].macc",
            "5:5 duts[1]",
            "9:13 cache.max_size",
            "11:17 limits.idle_timeout",
            "12:3 limits.conections",
            "13:19 limits.tftp_transfers",
            "14:35 s3.secret",
            "15:21 api_hosts[1]",
            "16:1 artefact_roots",
        ],
        "{e}"
    );
    let shown = e.to_string();
    // Shown like job errors: one per line, `file:line:col: field: message`.
    assert!(shown.lines().all(|l| l.starts_with("lab.yaml:")), "{shown}");
    assert!(shown.contains("lab.yaml:4:5: duts[0].macc: unknown field `macc`; did you mean `mac`?"), "{shown}");
    assert!(shown.contains("did you mean `connections`?") && shown.contains("did you mean `artifact_roots`?"), "{shown}");
    assert!(shown.contains("lab.yaml:5:5: duts[1]: `id` is missing"), "{shown}");
    assert!(shown.contains("invalid IP address") && shown.contains("not a duration"), "{shown}");
    // A number where a string is expected is that string, as before (`port: 8080`).
    assert!(!shown.contains("lab.yaml:7:"), "{shown}");
}

#[test]
fn duts_need_their_own_ids_and_addresses() {
    let text = "duts:\n  - {id: a, ip: [127.0.0.2]}\n  - {id: b, ip: [127.0.0.3, 127.0.0.2]}\n  - {id: a}\n";
    let e = LabConfig::from_yaml(text, "l.yaml").unwrap_err();
    let got: Vec<(usize, usize, &str)> = e.0.iter().map(|e| (e.line, e.column, e.field.as_str())).collect();
    assert_eq!(got, [(3, 29, "duts[1].ip[1]"), (4, 10, "duts[2].id")], "{e}");
    assert!(e.0[0].message.contains("already belongs to DUT `a` (line 2)"), "{e}");
    assert!(e.0[1].message.contains("already defined at line 2"), "{e}");
}

#[test]
fn a_dut_id_the_registry_refuses_is_refused_at_its_position() {
    let e = only(LabConfig::from_yaml("duts:\n  - id: ../escape\n    ip: [127.0.0.2]\n", "l.yaml").unwrap_err());
    assert_eq!((e.line, e.column, e.field.as_str()), (2, 9, "duts[0].id"), "{e}");
    assert!(e.message.contains("must be 1-64 characters"), "{e}");
}

#[test]
fn every_key_is_read() {
    let text = "\
duts:
  - id: rpi4
    machine_id: board-7
    mac: \"dc:a6:32:00:00:01\"
    serial: 1234abcd
    ip: [10.0.0.7, \"fd00::7\"]
    tags: [arm64, rpi]
variables: {minio_url: http://minio:9000, build: 42}
cache: {max_size: 2G}
artifact_roots: [/srv/artifacts]
s3: {endpoint: http://minio:9000, region: eu-1, access_key_id: AK, secret_access_key: SK}
store: {url: s3://lab-cache/citron, endpoint: http://minio:9000, region: eu-1}
api_token: t0ken
api_hosts: [citron.lab, \"[::1]:8081\"]
limits:
  max_disk_size: 1T
  unpack_max_bytes: 10G
  unpack_max_entries: 1000
  downloads_in_flight: 4
  downloads_per_job: 2
  job_wait: 2m
  results_max: 3G
  connections: 100
  connections_per_peer: 10
  header_timeout: 5s
  idle_timeout: 1m
  nbd_idle_timeout: 1h
  nbd_connections_per_dut: 3
  nbd_bytes_in_flight: 1M
  api_body_max: 64K
  tftp_transfers: 50
  tftp_transfers_per_dut: 5
  tftp_max_timeout: 20s
  tftp_unknown_errors_per_sec: 7
  access_log_bytes_per_dut: 2M
  logged_path_max: 100
";
    let lab = LabConfig::from_yaml(text, "l.yaml").unwrap();
    let d = &lab.duts[0];
    assert_eq!(
        (d.id.0.as_str(), d.machine_id(), d.mac.as_deref(), d.serial.as_deref()),
        ("rpi4", "board-7", Some("dc:a6:32:00:00:01"), Some("1234abcd"))
    );
    assert_eq!((d.ip.len(), d.tags.len()), (2, 2));
    assert_eq!(lab.variables["build"], "42");
    assert_eq!(lab.cache_config().unwrap().max_bytes, 2 << 30);
    assert_eq!(lab.artifact_roots, [PathBuf::from("/srv/artifacts")]);
    assert_eq!((lab.s3.region.as_deref(), lab.s3.secret_access_key.as_deref()), (Some("eu-1"), Some("SK")));
    assert_eq!((lab.api_token.as_deref(), lab.api_hosts.len()), (Some("t0ken"), 2));
    let store = lab.store.as_ref().unwrap();
    assert_eq!(store.bucket_and_prefix().unwrap(), ("lab-cache".into(), "citron".into()));
    assert_eq!((store.endpoint.as_deref(), store.region.as_deref()), (Some("http://minio:9000"), Some("eu-1")));
    let l = &lab.limits;
    use std::time::Duration;
    assert_eq!((l.max_disk_size.bytes(), l.unpack_max_bytes.bytes(), l.unpack_max_entries), (1 << 40, 10 << 30, 1000));
    assert_eq!((l.downloads_in_flight, l.downloads_per_job, l.connections, l.connections_per_peer), (4, 2, 100, 10));
    assert_eq!((l.job_wait.get(), l.results_max.bytes()), (Duration::from_secs(120), 3 << 30));
    assert_eq!(
        (l.header_timeout.get(), l.idle_timeout.get(), l.nbd_idle_timeout.get()),
        (Duration::from_secs(5), Duration::from_secs(60), Duration::from_secs(3600))
    );
    assert_eq!((l.nbd_connections_per_dut, l.nbd_bytes_in_flight.bytes(), l.api_body_max.bytes()), (3, 1 << 20, 64 << 10));
    assert_eq!((l.tftp_transfers, l.tftp_transfers_per_dut, l.tftp_max_timeout.get()), (50, 5, Duration::from_secs(20)));
    assert_eq!((l.tftp_unknown_errors_per_sec, l.access_log_bytes_per_dut.bytes(), l.logged_path_max), (7, 2 << 20, 100));
    // Every `limits` key is in the text above: a new one must be added here too.
    let keys = crate::yaml::de::fields_of::<Limits>();
    assert_eq!(keys.len(), 21);
    assert!(keys.iter().all(|k| text.contains(&format!("  {k}: "))), "{keys:?}");
    // An empty file is the empty lab.
    assert_eq!(LabConfig::from_yaml("# nothing yet\n", "l.yaml").unwrap(), LabConfig::default());
}

#[test]
fn yaml_syntax_errors_have_positions() {
    let e = only(LabConfig::from_yaml("duts:\n  - id: a\n   ip: [\n", "l.yaml").unwrap_err());
    assert!(e.message.contains("YAML syntax error") && e.line >= 2, "{e}");
    let e = only(LabConfig::from_yaml("- just\n- a list\n", "l.yaml").unwrap_err());
    assert!(e.message.contains("expected a mapping with keys duts, variables"), "{e}");
}

#[test]
fn gateways_and_a_dut_s_gateway() {
    let lab = LabConfig::from_yaml("duts:\n  - id: a\n    gateway: rack1\ngateways:\n  heartbeat_timeout: 5s\n", "l.yaml").unwrap();
    assert_eq!((lab.duts[0].gateway.as_deref(), lab.gateways.heartbeat_timeout.get().as_secs()), (Some("rack1"), 5));
    assert_eq!(LabConfig::default_lab().gateways.heartbeat_timeout.get().as_secs(), 30);
    let e = only(LabConfig::from_yaml("gateways:\n  heartbeat_timeout: 0s\n", "l.yaml").unwrap_err());
    assert_eq!((e.line, e.column, e.field.as_str()), (2, 22, "gateways.heartbeat_timeout"));
    let e = only(LabConfig::from_yaml("gateways:\n  heartbeat: 5s\n", "l.yaml").unwrap_err());
    assert!(e.message.contains("heartbeat_timeout"), "{e}");
}

#[test]
fn store_url_is_checked_with_its_position() {
    for (text, field, says) in [
        ("store:\n  url: http://minio/bucket\n", "2:8 store.url", "S3"),
        ("store:\n  url: s3://AK:SECRET@bucket/p\n", "2:8 store.url", "credentials"),
        ("store:\n  url: s3://bucket/a//b\n", "2:8 store.url", "empty"),
        ("store:\n  url: s3://bucket\n  secret_access_key: x\n", "3:3 store.secret_access_key", "unknown field"),
        ("store: {endpoint: http://minio:9000}\n", "1:8 store", "`url` is missing"),
    ] {
        let e = only(LabConfig::from_yaml(text, "l.yaml").unwrap_err());
        assert_eq!(format!("{}:{} {}", e.line, e.column, e.field), field, "{text}: {e}");
        assert!(e.message.contains(says), "{text}: {e}");
    }
    let lab = LabConfig::from_yaml("store: {url: s3://bucket}\n", "l.yaml").unwrap();
    assert_eq!(lab.store.unwrap().bucket_and_prefix().unwrap(), ("bucket".into(), String::new()));
}

#[test]
fn pool_keys_are_read_and_checked_with_positions() {
    let lab = LabConfig::from_yaml(
        "duts:\n  - id: a\n    kind: vm\n    arch: aarch64\n    model: qemu\n    vm: {memory: 2G, cpus: 2, firmware: uefi}\n  - id: b\n    tags: [x]\n    power: {on: 'true', off: 'true'}\npool: {default_lifetime: 10m, max_lifetime: 1h}\ntenants:\n  ci: {max_duts: 2, max_lifetime: 30m, max_priority: 5}\n",
        "l.yaml",
    )
    .unwrap();
    assert_eq!(lab.duts[0].kind, DutKind::Vm);
    assert_eq!(lab.duts[0].vm.as_ref().unwrap().firmware, Firmware::Uefi);
    assert_eq!(lab.duts[0].vm.as_ref().unwrap().memory.bytes(), 2 << 30);
    assert_eq!(lab.duts[1].kind, DutKind::Baremetal);
    assert_eq!(lab.duts[1].power.as_ref().unwrap().timeout.get().as_secs(), 60);
    assert_eq!(lab.pool.max_lifetime.get().as_secs(), 3600);
    assert_eq!(lab.tenants["ci"].max_priority, Some(5));

    let e = only(LabConfig::from_yaml("duts:\n  - id: a\n    kind: cloud\n", "l.yaml").unwrap_err());
    assert_eq!((e.line, e.field.as_str()), (3, "duts[0].kind"), "{e}");
    let e = only(LabConfig::from_yaml("duts:\n  - id: a\n    vm: {cpus: 2}\n", "l.yaml").unwrap_err());
    assert_eq!((e.line, e.column), (3, 5), "{e}");
    assert!(e.message.contains("kind: vm"), "{e}");
    let e = only(LabConfig::from_yaml("duts:\n  - id: a\n    power:\n      on: x\n      timeout: 0s\n", "l.yaml").unwrap_err());
    assert_eq!((e.line, e.field.as_str()), (5, "duts[0].power.timeout"), "{e}");
    let e = only(LabConfig::from_yaml("duts:\n  - id: a\n    power: {on: x, tiemout: 1s}\n", "l.yaml").unwrap_err());
    assert!(e.message.contains("timeout"), "{e}");
    let e = only(LabConfig::from_yaml("pool:\n  default_lifetime: 2h\n  max_lifetime: 1h\n", "l.yaml").unwrap_err());
    assert_eq!((e.line, e.field.as_str()), (2, "pool.default_lifetime"), "{e}");
    let e = only(LabConfig::from_yaml("tenants:\n  ci:\n    max_dut: 3\n", "l.yaml").unwrap_err());
    assert_eq!((e.line, e.column), (3, 5), "{e}");
    assert!(e.message.contains("max_duts"), "{e}");
    let e = only(LabConfig::from_yaml("tenants:\n  a/b: {}\n", "l.yaml").unwrap_err());
    assert_eq!(e.line, 2, "{e}");
}

#[test]
fn the_results_salt_is_read_and_checked_at_its_place() {
    assert_eq!(LabConfig::default_lab().results.salt, "");
    let lab = LabConfig::from_yaml("results:\n  salt: \"2\"\n", "l.yaml").unwrap();
    assert_eq!(lab.results.salt, "2");
    let e = only(LabConfig::from_yaml(&format!("duts: []\nresults:\n  salt: {}\n", "x".repeat(300)), "l.yaml").unwrap_err());
    assert_eq!((e.line, e.column, e.field.as_str()), (3, 9, "results.salt"), "{e}");
    let e = only(LabConfig::from_yaml("results:\n  sallt: x\n", "l.yaml").unwrap_err());
    assert_eq!((e.line, e.field.as_str()), (2, "results.sallt"), "{e}");
}
