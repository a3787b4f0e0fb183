use std::path::Path;

use super::*;

#[test]
fn state_urls_parse_and_hide_passwords() {
    let d = Path::new("/var/lib/citron");
    assert_eq!(StateUrl::parse(None, d).unwrap(), StateUrl::Sqlite(d.join("state.sqlite")));
    assert_eq!(StateUrl::parse(Some("sqlite:///tmp/s.db"), d).unwrap(), StateUrl::Sqlite("/tmp/s.db".into()));
    let pg = StateUrl::parse(Some("postgres://lab:hunter2@db.example:5432/citron?sslmode=require"), d).unwrap();
    assert_eq!(pg.engine(), Engine::Postgres);
    assert_eq!(pg.redacted(), "postgres://lab:***@db.example:5432/citron?sslmode=require");
    let e = StateUrl::parse(Some("mysql://root:hunter2@x/y"), d).unwrap_err().to_string();
    assert!(e.contains("expected postgres://") && !e.contains("hunter2"), "{e}");
}

#[test]
fn times_are_kept_to_the_microsecond() {
    let t = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
    assert_eq!(from_micros(to_micros(t)), UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456));
    assert_eq!(from_micros(to_micros(UNIX_EPOCH)), UNIX_EPOCH);
}

#[test]
fn the_sqlite_file_is_created_0600_and_a_reopen_keeps_the_version() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let url = StateUrl::default_in(&dir.path().join("sub"));
    let s = State::open(&url).unwrap();
    assert_eq!((s.schema_version(), s.info().engine), (known_version(), "sqlite"));
    drop(s);
    let mode = std::fs::metadata(dir.path().join("sub/state.sqlite")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(State::open(&url).unwrap().schema_version(), known_version());
}
