//! Runs, their files and `latest`: `/api/v1/results/…`.
//!
//! Uploads stream (a file is read twice: once for its SHA-256, sent as `X-Checksum-SHA256` so
//! that the server keeps nothing that differs, once to send it); downloads are written beside
//! their target and renamed only once their digest is checked, so a cut or a wrong byte never
//! leaves a file behind.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt as _;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{Client, ClientError, Found, ResultFile, Retention, Run, Status};

/// The header a file's SHA-256 travels in, both ways.
pub const CHECKSUM_HEADER: &str = "x-checksum-sha256";

/// How much of a file one read brings.
const CHUNK: usize = 1 << 20;

/// What to upload.
pub enum Upload {
    /// Bytes in memory.
    Bytes(Bytes),
    /// A local file, streamed from disk.
    File(PathBuf),
    /// A stream of `len` bytes whose SHA-256 (hex) the caller computed.
    Stream {
        /// SHA-256, hex.
        sha256: String,
        /// Bytes the stream brings.
        len: u64,
        /// The content.
        stream: BoxStream<'static, std::io::Result<Bytes>>,
    },
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upload::Bytes(b) => write!(f, "Upload::Bytes({} bytes)", b.len()),
            Upload::File(p) => write!(f, "Upload::File({})", p.display()),
            Upload::Stream { sha256, len, .. } => write!(f, "Upload::Stream({len} bytes, sha256 {sha256})"),
        }
    }
}

/// Which run `latest` means: successful unless `status` says otherwise (`failure`,
/// `unknown`, `running`, or `any`), on any platform unless `platform` is given.
#[derive(Debug, Clone, Default)]
pub struct Select {
    /// Only runs on this platform.
    pub platform: Option<String>,
    /// `success` when None.
    pub status: Option<String>,
}

impl Select {
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        if let Some(p) = &self.platform {
            q.push(("platform", p.clone()));
        }
        if let Some(s) = &self.status {
            q.push(("status", s.clone()));
        }
        q
    }
}

/// A file of the newest run: its digest and where its immutable blob is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latest {
    /// SHA-256 of the content, hex (what a deploy step compares before it fetches).
    pub sha256: String,
    /// The blob's absolute URL (`…/api/v1/results/blobs/sha256/{hex}`).
    pub url: String,
}

/// A file with the digest asked for (`by-hash`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashHit {
    /// The job.
    pub job: String,
    /// The run.
    pub run: i64,
    /// The file's path in the run.
    pub path: String,
}

/// One page of a job's runs, and where the next begins.
#[derive(Debug, Clone, PartialEq)]
pub struct RunsPage {
    /// Oldest first.
    pub runs: Vec<Run>,
    /// The `after` of the next page, when there may be one.
    pub next: Option<i64>,
}

async fn sha256_of(path: &Path) -> Result<(String, u64), ClientError> {
    let io = |e| ClientError::Io { path: path.to_path_buf(), source: e };
    let mut f = tokio::fs::File::open(path).await.map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            return Ok((hex::encode(h.finalize()), len));
        }
        len += n as u64;
        h.update(&buf[..n]);
    }
}

fn file_stream(f: tokio::fs::File) -> BoxStream<'static, std::io::Result<Bytes>> {
    futures::stream::unfold(f, |mut f| async move {
        let mut buf = vec![0u8; CHUNK];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    })
    .boxed()
}

impl Client {
    /// Opens a run of `job` (an `upload` token for the job).
    pub async fn open_run(&self, job: &str, revision: Option<&str>, platform: Option<&str>) -> Result<Run, ClientError> {
        let u = self.url(["api", "v1", "results", job, "runs"]);
        self.json(self.req(Method::POST, u).json(&serde_json::json!({"revision": revision, "platform": platform}))).await
    }

    /// Uploads `what` as `path` (`/`-separated) into run `run` of `job`. The same content at
    /// the same path again is fine; other content is a 409.
    pub async fn upload(&self, job: &str, run: i64, path: &str, what: Upload) -> Result<ResultFile, ClientError> {
        let (sha, len, body) = match what {
            Upload::Bytes(b) => {
                let sha = hex::encode(Sha256::digest(&b));
                (sha, b.len() as u64, reqwest::Body::from(b))
            }
            Upload::File(p) => {
                let (sha, len) = sha256_of(&p).await?;
                let f = tokio::fs::File::open(&p).await.map_err(|e| ClientError::Io { path: p.clone(), source: e })?;
                (sha, len, reqwest::Body::wrap_stream(file_stream(f)))
            }
            Upload::Stream { sha256, len, stream } => (sha256, len, reqwest::Body::wrap_stream(stream)),
        };
        let run_s = run.to_string();
        let u = self.url(["api", "v1", "results", job, "runs", &run_s, "files"].into_iter().chain(path.split('/')));
        let r = self
            .req(Method::PUT, u)
            .header(CHECKSUM_HEADER, &sha)
            .header(reqwest::header::CONTENT_LENGTH, len)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body);
        self.json(r).await
    }

    /// Appends `data` to the run's console at `offset` (its length so far; the same append
    /// again is a no-op); answers the new length.
    pub async fn append_console(&self, job: &str, run: i64, offset: u64, data: Bytes) -> Result<u64, ClientError> {
        let run_s = run.to_string();
        let u = self.url(["api", "v1", "results", job, "runs", &run_s, "console"]);
        let v: serde_json::Value = self
            .json(self.req(Method::PUT, u).query(&[("offset", offset)]).header(reqwest::header::CONTENT_TYPE, "text/plain").body(data))
            .await?;
        v.get("length")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| ClientError::Protocol("the console's answer has no length".into()))
    }

    /// Finishes the run with `status`.
    pub async fn finish(&self, job: &str, run: i64, status: Status) -> Result<Run, ClientError> {
        let run_s = run.to_string();
        let u = self.url(["api", "v1", "results", job, "runs", &run_s, "finish"]);
        self.json(self.req(Method::POST, u).json(&serde_json::json!({"status": status.name()}))).await
    }

    /// Run `run` of `job`, with its files.
    pub async fn run(&self, job: &str, run: i64) -> Result<Run, ClientError> {
        let run_s = run.to_string();
        self.json(self.req(Method::GET, self.url(["api", "v1", "results", job, "runs", &run_s]))).await
    }

    /// The newest run `sel` picks, with its files.
    pub async fn latest_run(&self, job: &str, sel: &Select) -> Result<Run, ClientError> {
        let u = self.url(["api", "v1", "results", job, "latest"]);
        let resp = self.send(self.req(Method::GET, u).query(&sel.query())).await?;
        let to = location(&resp)?;
        self.json(self.req(Method::GET, self.resolve(&to)?)).await
    }

    /// The digest and blob of file `path` of the newest run `sel` picks (a `HEAD`: nothing
    /// is downloaded).
    pub async fn latest_file(&self, job: &str, path: &str, sel: &Select) -> Result<Latest, ClientError> {
        let u = self.url(["api", "v1", "results", job, "latest", "files"].into_iter().chain(path.split('/')));
        self.to_blob(self.send(self.req(Method::HEAD, u).query(&sel.query())).await?)
    }

    async fn blob(&self, l: &Latest) -> Result<reqwest::Response, ClientError> {
        let u = url::Url::parse(&l.url).map_err(|e| ClientError::Usage(format!("{:?} is not a URL: {e}", l.url)))?;
        self.send(self.req(Method::GET, u)).await
    }

    /// The blob's content, at most `max_bytes`, checked against its digest.
    pub async fn read_blob(&self, l: &Latest, max_bytes: u64) -> Result<Bytes, ClientError> {
        let resp = self.blob(l).await?;
        if resp.content_length().is_some_and(|n| n > max_bytes) {
            return Err(ClientError::Usage(format!("the file is larger than {max_bytes} bytes: download it to a file instead")));
        }
        let mut body = resp.bytes_stream();
        let mut out = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| ClientError::unreachable(self.server(), &e))?;
            if (out.len() + chunk.len()) as u64 > max_bytes {
                return Err(ClientError::Usage(format!("the file is larger than {max_bytes} bytes: download it to a file instead")));
            }
            out.extend_from_slice(&chunk);
        }
        let got = hex::encode(Sha256::digest(&out));
        if got != l.sha256 {
            return Err(ClientError::Checksum { expected: l.sha256.clone(), got });
        }
        Ok(out.into())
    }

    /// Downloads the blob to `to`, written beside it and renamed once its digest is checked:
    /// `to` is either the whole, right file or untouched. Answers the bytes written.
    pub async fn download_blob(&self, l: &Latest, to: &Path) -> Result<u64, ClientError> {
        let io = |e| ClientError::Io { path: to.to_path_buf(), source: e };
        let dir = to.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        let mut f = tokio::fs::File::from_std(tmp.reopen().map_err(io)?);
        let mut body = self.blob(l).await?.bytes_stream();
        let mut h = Sha256::new();
        let mut len = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| ClientError::unreachable(self.server(), &e))?;
            h.update(&chunk);
            len += chunk.len() as u64;
            f.write_all(&chunk).await.map_err(io)?;
        }
        f.sync_all().await.map_err(io)?;
        let got = hex::encode(h.finalize());
        if got != l.sha256 {
            return Err(ClientError::Checksum { expected: l.sha256.clone(), got });
        }
        tmp.persist(to).map_err(|e| io(e.error))?;
        Ok(len)
    }

    /// One page of `job`'s runs (oldest first) with an id above `after`.
    pub async fn runs(&self, job: &str, revision: Option<&str>, after: i64, limit: u32) -> Result<RunsPage, ClientError> {
        let mut q = vec![("after", after.to_string()), ("limit", limit.to_string())];
        if let Some(r) = revision {
            q.push(("revision", r.to_string()));
        }
        let resp = self.send(self.req(Method::GET, self.url(["api", "v1", "results", job, "runs"])).query(&q)).await?;
        // A full page says so with `Link: <…>; rel="next"`.
        let more = resp.headers().get(reqwest::header::LINK).and_then(|v| v.to_str().ok()).is_some_and(|l| l.contains("rel=\"next\""));
        let body = resp.bytes().await.map_err(|e| ClientError::unreachable(self.server(), &e))?;
        let runs: Vec<Run> = serde_json::from_slice(&body).map_err(|e| ClientError::Protocol(format!("a page of runs: {e}")))?;
        let next = if more { runs.last().map(|r| r.id) } else { None };
        Ok(RunsPage { runs, next })
    }

    /// The key job `job` would have on `dut` (default: the DUT of its newest recorded run)
    /// for `revision` (default: the job's own), and the newest successful run with that key
    /// ([`Found::run`]; `None`: run the test). Replay by revision.
    pub async fn find(&self, job: &str, revision: Option<&str>, dut: Option<&str>) -> Result<Found, ClientError> {
        let mut q = Vec::new();
        if let Some(r) = revision {
            q.push(("revision", r));
        }
        if let Some(d) = dut {
            q.push(("dut", d));
        }
        self.json(self.req(Method::GET, self.url(["api", "v1", "results", job, "find"])).query(&q)).await
    }

    /// Run `run` by its id alone, with its files.
    pub async fn run_by_id(&self, run: i64) -> Result<Run, ClientError> {
        let run_s = run.to_string();
        self.json(self.req(Method::GET, self.url(["api", "v1", "results", "by-run", &run_s]))).await
    }

    /// File `path` of run `run` of `job`: its digest and blob (a `GET` answered with a
    /// redirect, which is not followed: nothing is downloaded yet).
    pub async fn run_file(&self, job: &str, run: i64, path: &str) -> Result<Latest, ClientError> {
        let run_s = run.to_string();
        let u = self.url(["api", "v1", "results", job, "runs", &run_s, "files"].into_iter().chain(path.split('/')));
        self.to_blob(self.send(self.req(Method::GET, u)).await?)
    }

    /// File `path` of the newest run `sel` picks, its content (at most `max_bytes`) checked
    /// against its digest: the `GET` of `latest`, its redirect followed.
    pub async fn read_latest(&self, job: &str, path: &str, sel: &Select, max_bytes: u64) -> Result<Bytes, ClientError> {
        let u = self.url(["api", "v1", "results", job, "latest", "files"].into_iter().chain(path.split('/')));
        let l = self.to_blob(self.send(self.req(Method::GET, u).query(&sel.query())).await?)?;
        self.read_blob(&l, max_bytes).await
    }

    /// The blob with SHA-256 `sha256` (hex), if the token may read it (a `HEAD`: 404 when
    /// there is none).
    pub async fn blob_of(&self, sha256: &str) -> Result<Latest, ClientError> {
        let u = self.url(["api", "v1", "results", "blobs", "sha256", sha256]);
        self.send(self.req(Method::HEAD, u.clone())).await?;
        Ok(Latest { sha256: sha256.to_ascii_lowercase(), url: u.to_string() })
    }

    /// Run `run`'s console so far (at most `max_bytes`).
    pub async fn console(&self, job: &str, run: i64, max_bytes: u64) -> Result<Bytes, ClientError> {
        let run_s = run.to_string();
        let resp = self.send(self.req(Method::GET, self.url(["api", "v1", "results", job, "runs", &run_s, "console"]))).await?;
        let mut body = resp.bytes_stream();
        let mut out = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| ClientError::unreachable(self.server(), &e))?;
            if (out.len() + chunk.len()) as u64 > max_bytes {
                return Err(ClientError::Usage(format!("the console is larger than {max_bytes} bytes")));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out.into())
    }

    /// `job`'s retention: which finished runs keep their files.
    pub async fn retention(&self, job: &str) -> Result<Retention, ClientError> {
        self.json(self.req(Method::GET, self.url(["api", "v1", "results", job, "retention"]))).await
    }

    /// Sets `job`'s retention (the newest `keep_last` finished runs, those finished less than
    /// `ttl` ago; None: no such bound) and applies it at once.
    pub async fn set_retention(
        &self,
        job: &str,
        keep_last: Option<u64>,
        ttl: Option<std::time::Duration>,
    ) -> Result<Retention, ClientError> {
        let mut body = serde_json::json!({});
        if let Some(k) = keep_last {
            body["keep_last"] = k.into();
        }
        if let Some(t) = ttl {
            body["ttl"] = crate::tokens::duration_text(t).into();
        }
        self.json(self.req(Method::PUT, self.url(["api", "v1", "results", job, "retention"])).json(&body)).await
    }

    /// The blob a redirect answer points at, with its announced digest.
    fn to_blob(&self, resp: reqwest::Response) -> Result<Latest, ClientError> {
        let to = location(&resp)?;
        let sha = resp
            .headers()
            .get(CHECKSUM_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| ClientError::Protocol("the server sent no X-Checksum-SHA256 with the file".into()))?;
        Ok(Latest { sha256: sha.to_ascii_lowercase(), url: self.resolve(&to)?.to_string() })
    }

    /// The files with content `sha256` that the token may read (none: an empty list).
    pub async fn by_hash(&self, sha256: &str) -> Result<Vec<HashHit>, ClientError> {
        let r = self.req(Method::GET, self.url(["api", "v1", "results", "by-hash"])).query(&[("sha256", sha256)]);
        match self.json(r).await {
            Err(ClientError::Api { status: 404, .. }) => Ok(Vec::new()),
            r => r,
        }
    }
}

fn location(resp: &reqwest::Response) -> Result<String, ClientError> {
    resp.headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| ClientError::Protocol(format!("the server answered {} instead of a redirect", resp.status())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_encoded_segment_by_segment() {
        let c = Client::new("http://127.0.0.1:1/prefix", None).unwrap();
        let u = c.url(["api", "v1", "results", "j", "runs", "1", "files"].into_iter().chain("a b/c?d".split('/')));
        assert_eq!(u.as_str(), "http://127.0.0.1:1/prefix/api/v1/results/j/runs/1/files/a%20b/c%3Fd");
        assert_eq!(c.resolve("/api/v1/x").unwrap().as_str(), "http://127.0.0.1:1/api/v1/x");
    }

    #[test]
    fn bad_servers_and_tokens_are_refused() {
        assert!(matches!(Client::new("ftp://x", None), Err(ClientError::Usage(_))));
        assert!(matches!(Client::new("not a url", None), Err(ClientError::Usage(_))));
        assert!(matches!(Client::new("http://x", Some("a b".into())), Err(ClientError::Usage(_))));
    }
}
