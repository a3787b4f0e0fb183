//! The lab itself: DUTs and their jobs (`/api/v1/duts…`), events, access logs, and the
//! lab's version, health, readiness, metrics and OpenAPI document.
//!
//! The server's views of a DUT, a job and the version are built for its OpenAPI document
//! (serialize-only, private to `citron-lab`'s API); these are their mirrors for reading. The
//! Python tests compare each one's fields with the server's JSON, so a field added there and
//! not here fails a test.

use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::{Client, ClientError};

/// A DUT as the lab knows it (`GET /api/v1/duts/{id}`, the `Dut` schema).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DutInfo {
    /// Its id.
    pub id: String,
    /// The `machine_id` templates see and boot paths use (the id unless set).
    pub machine_id: String,
    /// Its MAC address.
    #[serde(default)]
    pub mac: Option<String>,
    /// Its serial.
    #[serde(default)]
    pub serial: Option<String>,
    /// The source addresses its requests come from.
    pub ip: Vec<String>,
    /// Its tags.
    pub tags: Vec<String>,
    /// The origin of its job (None: no job).
    pub job: Option<String>,
    /// The gateway that serves it.
    pub gateway: Option<String>,
    /// Whether its gateway heartbeats (an offline one's DUTs are not served).
    pub online: bool,
}

/// A DUT to add (`POST /api/v1/duts`): a lab file's `duts:` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NewDut {
    /// Its id.
    pub id: String,
    /// The `machine_id` (the id when None).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    /// Its MAC address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Its serial.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Its source addresses.
    pub ip: Vec<String>,
    /// Its tags.
    pub tags: Vec<String>,
}

/// A DUT's job as it was set (`GET /api/v1/duts/{id}/job`, the `Job` schema).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    /// The YAML as set (None for a job given as parsed code).
    pub yaml: Option<String>,
    /// Where it came from: `api:<dut>`, the job file, or a tool's name.
    pub origin: String,
    /// When it became the DUT's job, seconds since the Unix epoch.
    pub set_at: f64,
}

/// citron's version and its state store's (`GET /api/v1/version`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// citron's version.
    pub version: String,
    /// The state store (None: in memory only).
    pub state: Option<StateVersion>,
}

/// The state store's engine and schema version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateVersion {
    /// `sqlite` or `postgres`.
    pub engine: String,
    /// The newest migration applied.
    pub schema_version: i64,
}

/// One page of a DUT's access log: the records (the API's JSON objects, the same keys as the
/// in-process server's `accesses`) and where the next page starts.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessPage {
    /// Oldest first.
    pub records: Vec<serde_json::Value>,
    /// The `after` of the next page, when there may be one.
    pub next: Option<u64>,
}

impl Client {
    /// Every DUT of the lab (of every gateway).
    pub async fn duts(&self) -> Result<Vec<DutInfo>, ClientError> {
        self.json(self.req(Method::GET, self.url(["api", "v1", "duts"]))).await
    }

    /// DUT `id`.
    pub async fn dut(&self, id: &str) -> Result<DutInfo, ClientError> {
        self.json(self.req(Method::GET, self.url(["api", "v1", "duts", id]))).await
    }

    /// Adds a DUT to this gateway (409 when its id or an address is taken).
    pub async fn add_dut(&self, d: &NewDut) -> Result<DutInfo, ClientError> {
        self.json(self.req(Method::POST, self.url(["api", "v1", "duts"])).json(d)).await
    }

    /// Removes DUT `id` and its job.
    pub async fn remove_dut(&self, id: &str) -> Result<(), ClientError> {
        self.send(self.req(Method::DELETE, self.url(["api", "v1", "duts", id]))).await.map(drop)
    }

    /// DUT `id`'s job as it was set (404 when it has none).
    pub async fn job(&self, id: &str) -> Result<JobInfo, ClientError> {
        self.json(self.req(Method::GET, self.url(["api", "v1", "duts", id, "job"]))).await
    }

    /// Sets DUT `id`'s job (YAML), answered once every artifact is fetched; `revision` is
    /// what its run records (a job with `results:`). A bad job is a 422 with every error.
    pub async fn set_job(&self, id: &str, yaml: &str, revision: Option<&str>) -> Result<DutInfo, ClientError> {
        let mut r = self
            .req(Method::PUT, self.url(["api", "v1", "duts", id, "job"]))
            .header(reqwest::header::CONTENT_TYPE, "application/yaml")
            .body(yaml.to_string());
        if let Some(rev) = revision {
            r = r.query(&[("revision", rev)]);
        }
        self.json(r).await
    }

    /// Drops DUT `id`'s job (none is fine).
    pub async fn clear_job(&self, id: &str) -> Result<(), ClientError> {
        self.send(self.req(Method::DELETE, self.url(["api", "v1", "duts", id, "job"]))).await.map(drop)
    }

    /// Tells citron `event` (`boot`, `job_start`, `job_end`) happened to DUT `id`; `status`
    /// is how a `job_end` run ended (`success`, `failure`, `unknown`).
    pub async fn dut_event(&self, id: &str, event: &str, status: Option<&str>) -> Result<(), ClientError> {
        let mut body = serde_json::json!({ "event": event });
        if let Some(s) = status {
            body["status"] = s.into();
        }
        self.send(self.req(Method::POST, self.url(["api", "v1", "duts", id, "events"])).json(&body)).await.map(drop)
    }

    /// One page of DUT `id`'s access log: records with a `seq` above `after`, at most `limit`.
    pub async fn accesses(&self, id: &str, after: u64, limit: u32) -> Result<AccessPage, ClientError> {
        let q = [("after", after.to_string()), ("limit", limit.to_string())];
        let resp = self.send(self.req(Method::GET, self.url(["api", "v1", "duts", id, "accesses"])).query(&q)).await?;
        let more = resp.headers().get(reqwest::header::LINK).and_then(|v| v.to_str().ok()).is_some_and(|l| l.contains("rel=\"next\""));
        let body = resp.bytes().await.map_err(|e| ClientError::unreachable(self.server(), &e))?;
        let records: Vec<serde_json::Value> =
            serde_json::from_slice(&body).map_err(|e| ClientError::Protocol(format!("a page of accesses: {e}")))?;
        let next = if more { records.last().and_then(|r| r.get("seq")).and_then(serde_json::Value::as_u64) } else { None };
        Ok(AccessPage { records, next })
    }

    /// citron's version and its state store's.
    pub async fn version(&self) -> Result<Version, ClientError> {
        self.json(self.req(Method::GET, self.url(["api", "v1", "version"]))).await
    }

    /// Whether citron answers (`/api/v1/health`, no token needed).
    pub async fn health(&self) -> Result<bool, ClientError> {
        self.probe("health").await
    }

    /// Whether the jobs citron was started with are loaded (`/api/v1/ready`: 503 before).
    pub async fn ready(&self) -> Result<bool, ClientError> {
        self.probe("ready").await
    }

    async fn probe(&self, what: &str) -> Result<bool, ClientError> {
        match self.send(self.req(Method::GET, self.url(["api", "v1", what]))).await {
            Ok(_) => Ok(true),
            Err(ClientError::Api { status: 503, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The lab's metrics, OpenMetrics text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let resp = self.send(self.req(Method::GET, self.url(["metrics"]))).await?;
        resp.text().await.map_err(|e| ClientError::unreachable(self.server(), &e))
    }

    /// The API's OpenAPI 3.1 document.
    pub async fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        self.json(self.req(Method::GET, self.url(["api", "v1", "openapi.json"]))).await
    }
}
