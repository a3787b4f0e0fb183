//! The DUT pool: `/api/v1/reservations…` and `/api/v1/pool/duts…`.
//!
//! Answers are the API's own types ([`Reservation`], [`AllocatedDut`], [`PoolDut`], from
//! `citron_lab::pool`): the server serializes them and this client parses them with the same
//! definition, so a field cannot be added on one side and missed on the other.

use std::time::Duration;

use reqwest::Method;

use crate::tokens::duration_text;
use crate::{Client, ClientError, PoolDut, Request, Reservation};

/// One page of the caller's reservations, and where the next begins.
#[derive(Debug, Clone, PartialEq)]
pub struct ReservationsPage {
    /// Oldest first.
    pub reservations: Vec<Reservation>,
    /// The `after` of the next page, when there may be one.
    pub next: Option<i64>,
}

impl Client {
    /// Asks for DUTs (a `reserve` token). Answers at once, `waiting` or `allocated`; a
    /// request the pool can never meet is a 400 naming the limit.
    pub async fn request_reservation(&self, req: &Request) -> Result<Reservation, ClientError> {
        self.json(self.req(Method::POST, self.url(["api", "v1", "reservations"])).json(req)).await
    }

    /// Reservation `id`; with `wait`, the server holds the answer until it leaves `waiting`
    /// or `wait` passes (the server bounds it to [`citron_lab::pool::WAIT_MAX`]).
    pub async fn reservation(&self, id: i64, wait: Option<Duration>) -> Result<Reservation, ClientError> {
        let mut r = self.req(Method::GET, self.url(["api", "v1", "reservations", &id.to_string()]));
        if let Some(w) = wait {
            r = r.query(&[("wait", duration_text(w))]);
        }
        self.json(r).await
    }

    /// Reservation `r` once it left `waiting`, or as it stands after `wait` (long polls of at
    /// most [`citron_lab::pool::WAIT_MAX`] each): the caller looks at its `state`.
    pub async fn wait_reservation(&self, r: Reservation, wait: Duration) -> Result<Reservation, ClientError> {
        let end = tokio::time::Instant::now() + wait;
        let mut r = r;
        while r.state == "waiting" {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            // Whole seconds at least: the API's `wait` is read in its units, and a poll of a
            // few milliseconds would spin.
            let poll = left.min(citron_lab::pool::WAIT_MAX).max(Duration::from_secs(1));
            r = self.reservation(r.id, Some(Duration::from_secs(poll.as_secs_f64().ceil() as u64))).await?;
        }
        Ok(r)
    }

    /// One page of the caller's reservations (every one for the administrator), oldest
    /// first, in `state` when given, with an id above `after` (0: from the first).
    pub async fn reservations(&self, state: Option<&str>, after: i64, limit: u32) -> Result<ReservationsPage, ClientError> {
        let mut q = vec![("after", after.to_string()), ("limit", limit.to_string())];
        if let Some(s) = state {
            q.push(("state", s.to_string()));
        }
        let resp = self.send(self.req(Method::GET, self.url(["api", "v1", "reservations"])).query(&q)).await?;
        // A full page says so with `Link: <…>; rel="next"`.
        let more = resp.headers().get(reqwest::header::LINK).and_then(|v| v.to_str().ok()).is_some_and(|l| l.contains("rel=\"next\""));
        let body = resp.bytes().await.map_err(|e| ClientError::unreachable(self.server(), &e))?;
        let reservations: Vec<Reservation> =
            serde_json::from_slice(&body).map_err(|e| ClientError::Protocol(format!("a page of reservations: {e}")))?;
        let next = if more { reservations.last().map(|r| r.id) } else { None };
        Ok(ReservationsPage { reservations, next })
    }

    /// Done with reservation `id` (idempotent: an ended one is answered as it is).
    pub async fn release(&self, id: i64) -> Result<Reservation, ClientError> {
        self.json(self.req(Method::DELETE, self.url(["api", "v1", "reservations", &id.to_string()]))).await
    }

    /// Reservation `id` failed; its DUTs are kept aside for `keep` for debugging (None: back
    /// to the pool now).
    pub async fn fail(&self, id: i64, keep: Option<Duration>) -> Result<Reservation, ClientError> {
        let body = match keep {
            Some(k) => serde_json::json!({ "keep": duration_text(k) }),
            None => serde_json::json!({}),
        };
        self.json(self.req(Method::POST, self.url(["api", "v1", "reservations", &id.to_string(), "fail"])).json(&body)).await
    }

    /// Extends reservation `id` to `lifetime` (counted from its allocation), within the
    /// tenant's maximum.
    pub async fn extend(&self, id: i64, lifetime: Duration) -> Result<Reservation, ClientError> {
        let body = serde_json::json!({ "lifetime": duration_text(lifetime) });
        self.json(self.req(Method::PATCH, self.url(["api", "v1", "reservations", &id.to_string()])).json(&body)).await
    }

    /// Every pool DUT and its state (administrator only).
    pub async fn pool_duts(&self) -> Result<Vec<PoolDut>, ClientError> {
        self.json(self.req(Method::GET, self.url(["api", "v1", "pool", "duts"]))).await
    }

    /// Takes DUT `id` into the pool (`enable`, also out of quarantine) or out of it
    /// (`disable`) (administrator only); answers its state now.
    pub async fn set_pool_dut(&self, id: &str, enable: bool) -> Result<PoolDut, ClientError> {
        let action = if enable { "enable" } else { "disable" };
        self.json(self.req(Method::POST, self.url(["api", "v1", "pool", "duts", id, action]))).await
    }
}
