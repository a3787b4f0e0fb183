//! Calling the lab API in the e2e tests: every answer is checked against the OpenAPI document.
//!
//! [`call`] (and [`Citron::api`](crate::Citron::api), [`Citron::put_job`](crate::Citron::put_job))
//! is the only way these helpers reach the API: `Citron` gives no API URL to hand to curl
//! directly, so a test cannot skip the check by accident. An answer passes when its status is
//! documented for the operation (401, 421 and 500 are, for all of them) and its body matches the
//! schema of that status and its content type; a path the document does not have must answer
//! 404, a method a path does not have 405 with `Allow`, both with an `Error` body.
//!
//! The document is `citron_lab::api::openapi_json()`, the one the binary serves (a test checks
//! that they are equal).

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};

/// One answer of the API.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status; 0 when there was no answer (connection refused or cut).
    pub status: u16,
    /// The final answer's headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub body: String,
}

impl Reply {
    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Sends `method path` to the API at `addr` with curl (`args`: headers, `--data-binary`,
/// timeouts...), checks the answer against the OpenAPI document (panics if it does not match)
/// and returns it.
pub fn call(addr: SocketAddr, method: &str, path: &str, args: &[&str]) -> Reply {
    let url = format!("http://{addr}{path}");
    // `-D -`: the headers, then the body, on stdout. A later `--max-time` in `args` wins. A
    // HEAD is `-I` (with `-X HEAD` curl would wait for a body).
    let mut a = vec!["--max-time", "20", "-sS"];
    match method {
        "HEAD" => a.push("-I"),
        m => a.extend(["-D", "-", "-X", m]),
    }
    a.extend_from_slice(args);
    a.push(&url);
    let o = crate::run("curl", &a, None, Duration::from_secs(30));
    let reply = parse(&o.stdout);
    check(method, path, &reply);
    reply
}

/// Splits curl's `-D -` output: header blocks (1xx ones skipped), then the body.
fn parse(out: &str) -> Reply {
    let mut rest = out;
    loop {
        let Some((head, body)) = rest.split_once("\r\n\r\n") else {
            return Reply { status: 0, headers: Vec::new(), body: rest.to_string() };
        };
        let mut lines = head.lines();
        let status: u16 = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
        if (100..200).contains(&status) {
            rest = body;
            continue;
        }
        let headers = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string())).collect();
        return Reply { status, headers, body: body.to_string() };
    }
}

/// The OpenAPI document the binary serves.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| serde_json::from_str(&citron_lab::api::openapi_json()).expect("the document is JSON"))
}

/// The document's path template that `path` (no query) falls under. A template ending in
/// `{path}` (a file's path in a run) takes the rest of the path, `/` included.
fn template(path: &str) -> Option<&'static str> {
    let segs: Vec<&str> = path.split('/').collect();
    let paths = document()["paths"].as_object().expect("paths");
    paths.keys().map(String::as_str).find(|t| {
        let ts: Vec<&str> = t.split('/').collect();
        let rest = ts.last() == Some(&"{path}") && segs.len() >= ts.len();
        let seg_ok = |(i, (t, s)): (usize, (&&str, &&str))| (rest && i + 1 == ts.len()) || (t.starts_with('{') && !s.is_empty()) || t == s;
        (ts.len() == segs.len() || rest) && ts.iter().zip(&segs).enumerate().all(seg_ok)
    })
}

/// Panics unless `reply` is what the document says `method path` may answer.
pub fn check(method: &str, path: &str, reply: &Reply) {
    if reply.status == 0 {
        return; // no answer: nothing to check
    }
    let what = format!("{method} {path} answered {}: {}", reply.status, reply.body);
    // The API drops a trailing `/` before routing.
    let bare = path.split('?').next().unwrap_or(path);
    let bare = if bare.len() > 1 { bare.trim_end_matches('/') } else { bare };
    let op = template(bare).and_then(|t| document()["paths"][t].get(method.to_ascii_lowercase()));
    let Some(op) = op else {
        // The guards (token, Host) come before routing.
        let expected = match template(bare) {
            None => 404,
            Some(_) => {
                if reply.status == 405 {
                    assert!(reply.header("allow").is_some_and(|a| !a.is_empty()), "405 without Allow: {what}");
                }
                405
            }
        };
        assert!([expected, 401, 421].contains(&reply.status), "undocumented path or method: {what}");
        validate(&json!({"$ref": "#/components/schemas/Error"}), reply, &what);
        return;
    };
    let Some(resp) = op["responses"].get(reply.status.to_string()) else {
        panic!("status {} is not documented for {method} {path} ({}): {what}", reply.status, op["operationId"]);
    };
    let Some(content) = resp.get("content").and_then(Value::as_object) else {
        assert!(reply.body.is_empty(), "the document has no body for this status: {what}");
        return;
    };
    let ctype = reply.header("content-type").unwrap_or_default();
    let Some((_, media)) = content.iter().find(|(t, _)| ctype.starts_with(t.as_str())) else {
        panic!("Content-Type {ctype:?} is not one of {:?}: {what}", content.keys().collect::<Vec<_>>());
    };
    if ctype.starts_with("application/json") {
        validate(&media["schema"], reply, &what);
    }
}

fn validate(schema: &Value, reply: &Reply, what: &str) {
    let body: Value = serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("not JSON ({e}): {what}"));
    let mut s = schema.clone();
    // `#/components/...` references resolve within the schema itself.
    s["components"] = document()["components"].clone();
    let v = jsonschema::validator_for(&s).unwrap_or_else(|e| panic!("bad schema {schema}: {e}"));
    let errors: Vec<String> = v.iter_errors(&body).map(|e| format!("{e} (at {})", e.instance_path)).collect();
    assert!(errors.is_empty(), "the answer does not match its schema {schema}:\n{}\n{what}", errors.join("\n"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_and_checks() {
        assert_eq!(template("/api/v1/duts/x/job"), Some("/api/v1/duts/{id}/job"));
        assert_eq!(template("/api/v1/duts"), Some("/api/v1/duts"));
        assert_eq!(template("/api/v1/duts//job"), None);
        assert_eq!(template("/api/v1/results/j/runs/1/files/a/b/c"), Some("/api/v1/results/{job}/runs/{run}/files/{path}"));
        assert_eq!(template("/api/v1/results/blobs/sha256/ab"), Some("/api/v1/results/blobs/sha256/{hex}"));
        let ok =
            |status, ctype: &str, body: &str| Reply { status, headers: vec![("content-type".into(), ctype.into())], body: body.into() };
        check("GET", "/api/v1/duts/x/job", &ok(200, "application/json", r#"{"yaml": null, "origin": "a", "set_at": 1.0}"#));
        let bad = std::panic::catch_unwind(|| check("GET", "/api/v1/duts/x/job", &ok(200, "application/json", r#"{"yaml": 1}"#)));
        assert!(bad.is_err(), "a body off its schema must fail");
        let undocumented = std::panic::catch_unwind(|| check("GET", "/api/v1/duts", &ok(418, "application/json", "{}")));
        assert!(undocumented.is_err(), "an undocumented status must fail");
        let no_allow = std::panic::catch_unwind(|| check("PATCH", "/api/v1/duts", &ok(405, "application/json", r#"{"error": "x"}"#)));
        assert!(no_allow.is_err(), "405 needs Allow");
    }
}
