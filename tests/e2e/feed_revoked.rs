//! A token revoked while it follows the event feed loses its stream at once, not at its next
//! reconnect (issue 15 §1, §6): curl follows `GET /api/v1/events` with a `read` token, the
//! token is revoked, and the server ends the stream; reconnecting is refused.

use std::time::Duration;

use citron_tests::{require_tool, run, Citron};
use serde_json::json;

const ADMIN: &str = "admin-s3cret";

#[test]
fn a_revoked_read_token_loses_its_event_stream() {
    if !require_tool("curl") {
        return;
    }
    let c = Citron::start_with(&["--nbd", "off", "--tftp", "off"], |c| {
        c.env("CITRON_API_TOKEN", ADMIN);
    })
    .unwrap_or_else(|f| panic!("citron did not start: {}", f.stderr));
    let admin = format!("Authorization: Bearer {ADMIN}");
    let body = json!({"scopes": ["read"], "job": "*", "ttl": "10m"}).to_string();
    let r = c.api("POST", "/api/v1/tokens", &["-H", &admin, "-H", "Content-Type: application/json", "--data-binary", &body]);
    assert_eq!(r.status, 201, "{r:?}");
    let (token, id) = (r.json()["token"].as_str().unwrap().to_string(), r.json()["id"].as_str().unwrap().to_string());
    let url = format!("http://{}/api/v1/events?job=fw&after=now", c.api.unwrap());
    let auth = format!("Authorization: Bearer {token}");
    // curl follows the stream for at most 60 s (exit 28 if it is still open then).
    let mut follower = std::process::Command::new("curl")
        .args(["-sN", "--max-time", "60", "-H", &auth, &url])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(follower.stdout.take().unwrap());
    // Revoked once the stream is open: its first message (the position) arrived.
    let mut first = String::new();
    std::io::BufRead::read_line(&mut out, &mut first).unwrap();
    assert!(first.starts_with("id:"), "the stream is open: {first:?}");
    let r = c.api("DELETE", &format!("/api/v1/tokens/{id}"), &["-H", &admin]);
    assert_eq!(r.status, 204, "{r:?}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let code = follower.wait().unwrap().code();
    assert_eq!(code, Some(0), "the server ended the stream (28 would be curl's own timeout): {rest:?}");
    let again =
        run("curl", &["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "-H", &auth, &url], None, Duration::from_secs(20));
    assert_eq!(again.stdout, "401", "{again:?}");
}
