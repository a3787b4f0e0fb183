//! URLs as they may appear in logs and error messages.
//!
//! A job's URL may carry a credential: user info (`https://user:pass@host/…`) or a presigned
//! query (`X-Amz-Signature=…`, `X-Amz-Credential=…`, `sig=…`, `token=…`). Logs and errors are
//! read by more people than the job's author (lab admins, other users of a shared log), so every
//! place that shows a URL shows [`redact_url`]'s form: the user info becomes `***` and the whole
//! query `?***` (no list of parameter names can be complete). The scheme, host, port and path,
//! which say what to check, stay.

use url::Url;

/// `url` without credentials: user info and query replaced by `***`, fragment dropped.
///
/// ```
/// use citron_core::artifact::redact_url;
/// let u = "https://bob:hunter2@s3.example:9000/b/k?X-Amz-Signature=abc&X-Amz-Credential=AKIA#f".parse().unwrap();
/// assert_eq!(redact_url(&u), "https://***@s3.example:9000/b/k?***");
/// assert_eq!(redact_url(&"http://h/p".parse().unwrap()), "http://h/p");
/// ```
pub fn redact_url(url: &Url) -> String {
    let mut s = format!("{}:", url.scheme());
    if url.has_authority() {
        s.push_str("//");
        if !url.username().is_empty() || url.password().is_some() {
            s.push_str("***@");
        }
        s.push_str(url.host_str().unwrap_or_default());
        if let Some(p) = url.port() {
            s.push_str(&format!(":{p}"));
        }
    }
    s.push_str(url.path());
    if url.query().is_some() {
        s.push_str("?***");
    }
    s
}

/// [`redact_url`] for text that should be a URL; text that does not parse as one is cut at
/// its first `?` and loses anything before an `@` after `//`, the same way.
///
/// ```
/// use citron_core::artifact::redact_str;
/// assert_eq!(redact_str("https://u:p@h/x?token=1"), "https://***@h/x?***");
/// assert_eq!(redact_str("not a url://u:p@h x?sig=1"), "not a url://***@h x?***");
/// ```
pub fn redact_str(text: &str) -> String {
    if let Ok(u) = Url::parse(text) {
        return redact_url(&u);
    }
    let (mut head, query) = match text.split_once('?') {
        Some((h, _)) => (h.to_string(), true),
        None => (text.to_string(), false),
    };
    if let Some(i) = head.find("//") {
        let auth_end = head[i + 2..].find('/').map_or(head.len(), |j| i + 2 + j);
        if let Some(at) = head[i + 2..auth_end].rfind('@') {
            head.replace_range(i + 2..i + 2 + at + 1, "***@");
        }
    }
    if query {
        head.push_str("?***");
    }
    head
}
