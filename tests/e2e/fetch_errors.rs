//! A job whose artifacts cannot be fetched: every failed fetch is reported, once each, at the
//! `file:line:col` of its `url:`, by `citron serve --job` (stderr, exit 1) and by the API (the
//! `errors` array of a 502).

use citron_tests::{require_tool, Citron};

/// A port nothing listens on: connection refused, at once.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Two unreachable URLs (lines 6 and 11, column 16), a good file, and a `continue` step that
/// takes both bad files from `start` again (they must still be reported once each).
fn job() -> (String, [String; 2]) {
    let urls = [format!("http://127.0.0.1:{}/a", closed_port()), format!("http://127.0.0.1:{}/b", closed_port())];
    let text = format!(
        "deployment:\n  start:\n    storage:\n      http:\n        - path: /a\n          url: {}\n        - path: /ok\n          data: fine\n      tftp:\n        - path: /b\n          url: {}\n  continue:\n    cmdline: rescue\n",
        urls[0], urls[1]
    );
    (text, urls)
}

/// The two failures, each on its own line at its `url:`, and nothing else.
fn assert_two_positioned(lines: &[String], file: &str, urls: &[String; 2]) {
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let want = [(6, "deployment.start.storage.http[0].url", &urls[0]), (11, "deployment.start.storage.tftp[0].url", &urls[1])];
    for (line, (n, field, url)) in lines.iter().zip(want) {
        let head = format!("{file}:{n}:16: {field}: cannot fetch it: ");
        assert!(line.starts_with(&head), "{line:?} does not start with {head:?}");
        assert!(line.contains(url.as_str()), "{line:?} does not name {url}");
    }
}

#[test]
fn serve_job_reports_every_failed_fetch_at_its_url() {
    let dir = tempfile::tempdir().unwrap();
    let (text, urls) = job();
    let path = dir.path().join("job.yaml");
    std::fs::write(&path, text).unwrap();
    let f =
        Citron::try_start(&["--tftp", "off", "--nbd", "off", "--job", &format!("dut1={}", path.display())]).err().expect("must not start");
    assert_eq!(f.status.and_then(|s| s.code()), Some(1), "{}", f.stderr);
    let file = path.display().to_string();
    let lines: Vec<String> = f.stderr.lines().filter(|l| l.contains("cannot fetch")).map(str::to_string).collect();
    assert_two_positioned(&lines, &file, &urls);
    // Each once: not repeated in a summary line.
    for url in &urls {
        assert_eq!(f.stderr.matches(url.as_str()).count(), 1, "{}", f.stderr);
    }
}

#[test]
fn the_api_answers_every_failed_fetch_with_its_position() {
    if !require_tool("curl") {
        return;
    }
    let c = Citron::start(&["--tftp", "off", "--nbd", "off"]);
    let (text, urls) = job();
    let (code, body) = c.put_job("dut1", &text);
    assert_eq!(code, 502, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let errors = v["errors"].as_array().unwrap_or_else(|| panic!("no errors array: {body}"));
    let lines: Vec<String> = errors
        .iter()
        .map(|e| {
            format!(
                "{}:{}:{}: {}: {}",
                e["file"].as_str().unwrap(),
                e["line"],
                e["column"],
                e["field"].as_str().unwrap(),
                e["message"].as_str().unwrap()
            )
        })
        .collect();
    let file = errors[0]["file"].as_str().unwrap().to_string();
    assert_two_positioned(&lines, &file, &urls);
    assert_eq!(v["error"].as_str().unwrap(), lines.join("\n"), "`error` is the same lines");
}
