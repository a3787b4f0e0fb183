//! API requests about another gateway's DUT, carried out by that gateway.
//!
//! The gateway that received the request writes it to `forwarded` with `NOTIFY citron,
//! 'forward:<owner>'` in the same transaction, then waits for `answered` notifications and
//! reads its row back. The owner takes its pending rows (one `UPDATE … RETURNING`, so a row is
//! taken once), runs each through its own API router (as the request's actor, without the
//! `Host` and token checks the receiving gateway made) and writes the status and body back.
//! A row left taken by an owner that crashed is answered 503 when the owner starts again.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use citron_core::namespace::DutId;
use citron_core::store::StoreError;
use http_body_util::{BodyExt as _, Limited};
use sqlx::Row as _;
use tower::ServiceExt as _;

use super::Membership;
use crate::state::feed::CHANNEL;
use crate::state::to_micros;

/// How long the receiving gateway waits for the owner's answer (a job with large artifacts to
/// fetch takes a while).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(600);

/// The most bytes of an answer kept.
const ANSWER_MAX: usize = 4 << 20;

/// Answered rows are deleted after this long.
const KEEP_ANSWERED: Duration = Duration::from_secs(3600);

/// The owner's answer to a forwarded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    /// Its HTTP status.
    pub status: u16,
    /// Its body (JSON, or empty).
    pub body: String,
}

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// The owner is offline.
    #[error("DUT {dut:?} belongs to gateway {gateway:?}, which is offline (no heartbeat): try again once it runs")]
    Offline {
        /// The DUT.
        dut: String,
        /// Its gateway.
        gateway: String,
    },
    /// The owner did not answer in time.
    #[error("gateway {gateway:?} (DUT {dut:?}'s) did not answer within {after:?}; it may still carry the request out: check the DUT's job and the event feed")]
    Timeout {
        /// The DUT.
        dut: String,
        /// Its gateway.
        gateway: String,
        /// How long it was waited for.
        after: Duration,
    },
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A request to forward.
#[derive(Debug, Clone)]
pub struct Request {
    /// `PUT`, `GET`, ...
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Its `Content-Type`.
    pub content_type: Option<String>,
    /// Its body, UTF-8.
    pub body: String,
    /// Who asks.
    pub actor: String,
    /// Who the gateway it came through found the asker to be (its door checked the route
    /// against it): the owner's handlers see the same principal, as JSON. `None`: nobody
    /// (a route open to all).
    pub principal: Option<String>,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("a state call does not panic")
}

impl Membership {
    /// Forwards `req` about `dut` to its gateway `owner` and waits for the answer.
    pub async fn forward(self: &Arc<Self>, owner: &str, dut: &DutId, req: Request) -> Result<Forwarded, ForwardError> {
        let mut answers = self.answers.subscribe();
        let (m, g, d) = (self.clone(), owner.to_string(), dut.0.clone());
        let id = blocking(move || {
            m.db.call(move |pool| async move {
                let mut tx = pool.begin().await?;
                let row = sqlx::query(
                    "INSERT INTO forwarded (gateway, dut, method, uri, content_type, body, actor, principal, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
                )
                .bind(&g)
                .bind(&d)
                .bind(req.method)
                .bind(req.uri)
                .bind(req.content_type)
                .bind(req.body)
                .bind(req.actor)
                .bind(req.principal)
                .bind(to_micros(SystemTime::now()))
                .fetch_one(&mut *tx)
                .await?;
                let id: i64 = row.try_get(0)?;
                sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(format!("forward:{g}")).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(id)
            })
        })
        .await?;
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + FORWARD_TIMEOUT;
        loop {
            answers.borrow_and_update();
            let m = self.clone();
            let answer = blocking(move || {
                m.db.call(move |pool| async move {
                    sqlx::query("SELECT status, answer FROM forwarded WHERE id = $1 AND status > 0").bind(id).fetch_optional(&pool).await
                })
            })
            .await?;
            if let Some(r) = answer {
                let status: i64 = r.try_get(0).map_err(StoreError::backend)?;
                let body: Option<String> = r.try_get(1).map_err(StoreError::backend)?;
                tracing::info!(dut = %dut, gateway = owner, status, took = ?started.elapsed(), "api: request carried out by the DUT's gateway");
                return Ok(Forwarded { status: u16::try_from(status).unwrap_or(500), body: body.unwrap_or_default() });
            }
            if tokio::time::timeout_at(deadline, answers.changed()).await.is_err() {
                return Err(ForwardError::Timeout { dut: dut.0.clone(), gateway: owner.into(), after: FORWARD_TIMEOUT });
            }
        }
    }

    /// Carries out the requests forwarded to this gateway through `router` until `shutdown`.
    pub async fn serve_forwarded(self: Arc<Self>, router: axum::Router, shutdown: impl std::future::Future<Output = ()>) {
        let mut work = self.work.subscribe();
        let m = self.clone();
        let answered = blocking(move || m.abandon_taken()).await;
        if let Err(e) = answered {
            tracing::warn!(error = %e, "cannot answer the forwarded requests left by the last run");
        }
        tokio::pin!(shutdown);
        loop {
            work.borrow_and_update();
            let m = self.clone();
            match blocking(move || m.take_pending()).await {
                Ok(rows) => {
                    for (id, req) in rows {
                        let (m, router) = (self.clone(), router.clone());
                        tokio::spawn(async move {
                            let (status, body) = run(router, req).await;
                            let r = blocking(move || m.answer(id, status, body)).await;
                            if let Err(e) = r {
                                tracing::error!(id, error = %e, "cannot store the answer to a forwarded request");
                            }
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the requests forwarded to this gateway"),
            }
            tokio::select! {
                r = work.changed() => if r.is_err() { return },
                _ = &mut shutdown => return,
            }
        }
    }

    fn take_pending(&self) -> Result<Vec<(i64, Request)>, StoreError> {
        let me = self.name.clone();
        let old = to_micros(SystemTime::now() - KEEP_ANSWERED);
        let rows = self.db.call(move |pool| async move {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM forwarded WHERE done_at < $1").bind(old).execute(&mut *tx).await?;
            let rows = sqlx::query(
                "UPDATE forwarded SET status = 0 WHERE gateway = $1 AND status IS NULL \
                 RETURNING id, method, uri, content_type, body, actor, principal",
            )
            .bind(me)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(rows)
        })?;
        let get = |r: &sqlx::any::AnyRow| -> Result<(i64, Request), sqlx::Error> {
            Ok((
                r.try_get(0)?,
                Request {
                    method: r.try_get(1)?,
                    uri: r.try_get(2)?,
                    content_type: r.try_get(3)?,
                    body: r.try_get(4)?,
                    actor: r.try_get(5)?,
                    principal: r.try_get(6)?,
                },
            ))
        };
        rows.iter().map(get).collect::<Result<_, _>>().map_err(StoreError::backend)
    }

    fn answer(&self, id: i64, status: u16, body: String) -> Result<(), StoreError> {
        self.write_answer(Answering::One(id), status, body)
    }

    /// Rows this gateway took and never answered (it stopped meanwhile): 503.
    fn abandon_taken(&self) -> Result<(), StoreError> {
        let body = serde_json::json!({"error": format!("gateway {:?} stopped while carrying the request out: check the DUT's job and send it again", self.name)}).to_string();
        self.write_answer(Answering::TakenBy(self.name.clone()), 503, body)
    }

    /// Writes `status` and `body` as the answer to the `which` rows and, if there were any,
    /// wakes the gateways waiting for answers (`NOTIFY … 'answered'`), in one transaction.
    fn write_answer(&self, which: Answering, status: u16, body: String) -> Result<(), StoreError> {
        let now = to_micros(SystemTime::now());
        self.db.call(move |pool| async move {
            let mut tx = pool.begin().await?;
            let set = "UPDATE forwarded SET status = $1, answer = $2, done_at = $3";
            let q = match &which {
                Answering::One(_) => format!("{set} WHERE id = $4"),
                Answering::TakenBy(_) => format!("{set} WHERE gateway = $4 AND status = 0"),
            };
            let q = sqlx::query(&q).bind(i64::from(status)).bind(body).bind(now);
            let q = match which {
                Answering::One(id) => q.bind(id),
                Answering::TakenBy(gateway) => q.bind(gateway),
            };
            if q.execute(&mut *tx).await?.rows_affected() > 0 {
                sqlx::query("SELECT pg_notify($1, 'answered')").bind(CHANNEL).execute(&mut *tx).await?;
            }
            tx.commit().await
        })
    }
}

/// The forwarded rows an answer is written to.
enum Answering {
    /// The row of one request.
    One(i64),
    /// Every row this gateway took and has not answered.
    TakenBy(String),
}

/// Runs one forwarded request through the router: its status and body.
async fn run(router: axum::Router, req: Request) -> (u16, String) {
    let mut b = http::Request::builder().method(req.method.as_str()).uri(req.uri.as_str());
    if let Some(ct) = &req.content_type {
        b = b.header(http::header::CONTENT_TYPE, ct);
    }
    let Ok(mut r) = b.body(Body::from(req.body)) else {
        return (400, serde_json::json!({"error": "the forwarded request cannot be rebuilt"}).to_string());
    };
    r.extensions_mut().insert(crate::api::Actor(req.actor));
    if let Some(p) = req.principal.as_deref() {
        match serde_json::from_str::<crate::auth::Principal>(p) {
            Ok(p) => {
                r.extensions_mut().insert(p);
            }
            Err(_) => return (403, serde_json::json!({"error": "the forwarded request's principal cannot be read"}).to_string()),
        }
    }
    let resp = match router.oneshot(r).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = resp.status().as_u16();
    let body = match Limited::new(resp.into_body(), ANSWER_MAX).collect().await {
        Ok(c) => String::from_utf8_lossy(&c.to_bytes()).into_owned(),
        Err(e) => serde_json::json!({"error": format!("the answer could not be read: {e}")}).to_string(),
    };
    (status, body)
}
