//! The DUT pool: `/api/v1/reservations…` and `/api/v1/pool/duts…`.
//!
//! Answers are the API's JSON documents as they are (`serde_json::Value`): the reservation's
//! shape is still growing (VM DUTs, health jobs), and the CLI prints it whole. Typed answers come
//! with the Python pool client.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::tokens::duration_text;
use crate::{Client, ClientError};

impl Client {
    /// Asks for DUTs (a `reserve` token): `body` is the API's request (`tags`, `kind`, `arch`,
    /// `model`, `count`, `lifetime`, `priority`, `job`). Answers at once, `waiting` or
    /// `allocated`.
    pub async fn request_reservation(&self, body: &Value) -> Result<Value, ClientError> {
        self.json(self.req(Method::POST, self.url(["api", "v1", "reservations"])).json(body)).await
    }

    /// Reservation `id`; with `wait`, the server holds the answer until it leaves `waiting`
    /// or `wait` passes (the server bounds it).
    pub async fn reservation(&self, id: i64, wait: Option<Duration>) -> Result<Value, ClientError> {
        let mut r = self.req(Method::GET, self.url(["api", "v1", "reservations", &id.to_string()]));
        if let Some(w) = wait {
            r = r.query(&[("wait", duration_text(w))]);
        }
        self.json(r).await
    }

    /// The caller's reservations (all of them for the administrator), one page.
    pub async fn reservations(&self, state: Option<&str>) -> Result<Value, ClientError> {
        let mut r = self.req(Method::GET, self.url(["api", "v1", "reservations"]));
        if let Some(s) = state {
            r = r.query(&[("state", s)]);
        }
        self.json(r).await
    }

    /// Done with reservation `id` (idempotent).
    pub async fn release(&self, id: i64) -> Result<Value, ClientError> {
        self.json(self.req(Method::DELETE, self.url(["api", "v1", "reservations", &id.to_string()]))).await
    }

    /// Reservation `id` failed; its DUTs are kept aside for `keep` (e.g. `24h`) for debugging.
    pub async fn fail(&self, id: i64, keep: Option<&str>) -> Result<Value, ClientError> {
        let body = match keep {
            Some(k) => serde_json::json!({ "keep": k }),
            None => serde_json::json!({}),
        };
        self.json(self.req(Method::POST, self.url(["api", "v1", "reservations", &id.to_string(), "fail"])).json(&body)).await
    }

    /// Extends reservation `id` to `lifetime` (e.g. `2h`), within the tenant's maximum.
    pub async fn extend(&self, id: i64, lifetime: &str) -> Result<Value, ClientError> {
        let body = serde_json::json!({ "lifetime": lifetime });
        self.json(self.req(Method::PATCH, self.url(["api", "v1", "reservations", &id.to_string()])).json(&body)).await
    }

    /// Every pool DUT and its state (administrator only).
    pub async fn pool_duts(&self) -> Result<Value, ClientError> {
        self.json(self.req(Method::GET, self.url(["api", "v1", "pool", "duts"]))).await
    }

    /// Takes DUT `id` into the pool (`enable`) or out of it (`disable`) (administrator only).
    pub async fn set_pool_dut(&self, id: &str, enable: bool) -> Result<Value, ClientError> {
        let action = if enable { "enable" } else { "disable" };
        self.json(self.req(Method::POST, self.url(["api", "v1", "pool", "duts", id, action]))).await
    }
}
