//! `GET /api/v1/events`: the lab's event feed as Server-Sent Events.
//!
//! The stream first sends every stored event after the client's position (`Last-Event-ID`,
//! else `?after=`, else 0: from the start), then waits on the feed's watch (bumped by this
//! gateway's commits and by the other gateways' NOTIFYs) and sends what was added. Each event is
//! `id: SEQ`, `event: TYPE`, `data: {FeedEvent as JSON}`; a comment line every 15 s keeps
//! idle connections open through proxies. The stream ends when citron's shutdown starts.
//!
//! The administrator reads everything. A token reads one job's results events (`?job=NAME`,
//! with the `read` scope for that job: `run_opened`, `file_uploaded`, `run_finished`, nothing
//! about DUTs) or one DUT's events (`?dut=ID`, with the `dut` scope for that DUT).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use http::{HeaderMap, StatusCode};

use super::{Api, ApiError};
use crate::auth::{Principal, Scope};
use crate::state::feed::{Feed, FeedEvent, Filter, RUN_EVENTS};

/// How many events one read of the feed brings.
const BATCH: usize = 256;

/// Idle connections get a comment this often.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The lab's event feed, as Server-Sent Events.
#[utoipa::path(get, path = "/api/v1/events", operation_id = "streamEvents", tag = "lab",
    params(
        ("dut" = Option<String>, Query, description = "Only this DUT's events"),
        ("job" = Option<String>, Query, description = "Only this job's events (its origin, e.g. `api:dut1`)"),
        ("type" = Option<String>, Query, description = "Only events of this type (`job_set`, `boot`, `dut_offline`, ...)"),
        ("after" = Option<String>, Query, description = "Events after this `seq` (default 0: every stored event), or `now`: only events to come (the stream then starts with a message holding only `id:`, the position, which sets an SSE client's Last-Event-ID without an event); `Last-Event-ID` wins"),
        ("Last-Event-ID" = Option<u64>, Header, description = "The `id` of the last event received: the stream resumes after it, on any gateway, after a restart too"),
    ),
    responses(
        (status = 200, description = "`text/event-stream`: each event has `id:` (its `seq`), `event:` (its type) and `data:` (the event as JSON)",
            body = FeedEvent, content_type = "text/event-stream"),
        (status = 400, description = "`after`, `Last-Event-ID` or a filter is not valid", body = super::doc::ErrorBody),
        (status = 403, description = "A token without `read` scope for `?job=` or `dut` scope for `?dut=`", body = super::doc::ErrorBody),
        (status = 503, description = "This lab keeps no state store, hence no feed", body = super::doc::ErrorBody),
    ))]
pub(super) async fn stream_events(
    State(api): State<Arc<Api>>,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let Some(feed) = api.feed.clone() else {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "this lab keeps no state store, hence no event feed"));
    };
    let (filter, mut after) = query(q.as_deref())?;
    let filter = allowed(&api, &p, filter).await?;
    let mut announce = false;
    if let Some(v) = headers.get("last-event-id") {
        after = Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "Last-Event-ID must be the `id` of an event (a whole number)"))?,
        );
    }
    let after = match after {
        Some(a) => a,
        None => {
            announce = true;
            let f = feed.clone();
            tokio::task::spawn_blocking(move || f.last_seq())
                .await
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                .map_err(ApiError::from)?
        }
    };
    // A token's stream ends when the token is revoked (here, or on another gateway).
    let holder = match (&p, api.results.as_ref()) {
        (Principal::Token(c), Some(r)) => Some(Holder { tokens: r.tokens().clone(), jti: c.jti.clone(), rx: r.tokens().revocations() }),
        _ => None,
    };
    let reader = Reader { rx: feed.subscribe(), feed, filter, after, buf: VecDeque::new(), holder };
    // `after=now`: the position first, as a message with an `id:` and no data (an SSE client
    // takes it as its Last-Event-ID and dispatches nothing), so that a reconnect misses nothing
    // even before the first event.
    let first = announce.then(|| Ok::<_, Infallible>(Event::default().id(after.to_string())));
    let stream = futures::stream::unfold(reader, |mut r| async move {
        let ev = r.next().await?;
        Some((Ok::<_, Infallible>(ev), r))
    });
    let stream = futures::StreamExt::chain(futures::stream::iter(first), stream);
    // Ends when shutdown starts, so that the response completes and the drain is not held:
    // the client reconnects with its Last-Event-ID (to another gateway, or this one restarted).
    let stream = futures::StreamExt::take_until(stream, api.stopped());
    Ok(Sse::new(stream).into_response())
}

struct Reader {
    feed: Arc<Feed>,
    rx: tokio::sync::watch::Receiver<u64>,
    filter: Filter,
    after: u64,
    buf: VecDeque<FeedEvent>,
    /// The token the stream was opened with, if any.
    holder: Option<Holder>,
}

/// A stream's token, watched for its revocation.
struct Holder {
    tokens: Arc<crate::auth::TokenStore>,
    jti: String,
    rx: tokio::sync::watch::Receiver<u64>,
}

impl Holder {
    /// Resolves once the token is revoked.
    async fn revoked(&mut self) {
        loop {
            self.rx.borrow_and_update();
            if self.tokens.is_revoked(&self.jti) {
                return;
            }
            if self.rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

impl Reader {
    /// The next SSE event: a feed event, or a keep-alive comment; `None` ends the stream (its
    /// token was revoked: a reader holds no right its token lost).
    async fn next(&mut self) -> Option<Event> {
        loop {
            if self.holder.as_ref().is_some_and(|h| h.tokens.is_revoked(&h.jti)) {
                tracing::info!("events: the stream's token was revoked; ending it");
                return None;
            }
            if let Some(e) = self.buf.pop_front() {
                self.after = e.seq;
                let data = serde_json::to_string(&e).unwrap_or_default();
                return Some(Event::default().id(e.seq.to_string()).event(e.kind.clone()).data(data));
            }
            // Marked seen before reading: a commit after the read bumps it again.
            self.rx.borrow_and_update();
            let (feed, filter, after) = (self.feed.clone(), self.filter.clone(), self.after);
            match tokio::task::spawn_blocking(move || feed.page(&filter, after, BATCH)).await {
                Ok(Ok(page)) if !page.is_empty() => {
                    self.buf.extend(page);
                    continue;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "events: cannot read the feed; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(e) => tracing::error!(error = %e, "events: the reader failed"),
            }
            let revoked = async {
                match &mut self.holder {
                    Some(h) => h.revoked().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = tokio::time::timeout(KEEP_ALIVE, self.rx.changed()) => match changed {
                    Ok(Ok(())) => continue,
                    // The feed is gone (the lab stops): wait for the connection to be closed.
                    Ok(Err(_)) => std::future::pending::<()>().await,
                    Err(_) => return Some(Event::default().comment("keep-alive")),
                },
                () = revoked => continue,
            }
        }
    }
}

/// What `p` may read of the feed, as asked by `f`: the administrator everything, a token one
/// job's results events or one DUT's events (see the module doc).
async fn allowed(api: &Api, p: &Principal, mut f: Filter) -> Result<Filter, ApiError> {
    let Some(c) = p.claims().filter(|_| !p.is_admin()) else { return Ok(f) };
    // Not `Results::allow`: a job is watched before its first run, when it has no owner yet;
    // the tenant's rule applies to each event instead (`Filter::tenant`).
    if let (Some(job), true, Some(_)) = (&f.job, c.has(Scope::Read), &api.results) {
        crate::auth::check_name("job", job).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
        if !c.job.matches(job) {
            return Err(ApiError::new(StatusCode::FORBIDDEN, format!("the token is for jobs {:?}, not {job:?}", c.job.as_str())));
        }
        if c.run.is_some() {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "a run's token does not read the feed"));
        }
        f.kinds = RUN_EVENTS;
        f.tenant = Some(c.tenant.clone());
        return Ok(f);
    }
    if let (Some(dut), true) = (&f.dut, c.has(Scope::Dut)) {
        if c.dut.as_ref().is_some_and(|d| d.matches(dut)) {
            return Ok(f);
        }
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "a token reads the feed of one job (?job=NAME, with the `read` scope for it) or of one DUT (?dut=ID, with the `dut` scope for it)",
    ))
}

/// `?dut=&job=&type=&after=`; `after=now` is `None`.
fn query(q: Option<&str>) -> Result<(Filter, Option<u64>), ApiError> {
    let mut f = Filter::default();
    let mut after = Some(0);
    for (k, v) in url::form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
        let v = v.into_owned();
        if v.len() > 256 {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("`{k}` is longer than 256 bytes")));
        }
        match &*k {
            "dut" => f.dut = Some(v),
            "job" => f.job = Some(v),
            "type" => f.kind = Some(v),
            "after" if v == "now" => after = None,
            "after" => {
                after =
                    Some(v.parse().map_err(|_| {
                        ApiError::new(StatusCode::BAD_REQUEST, "`after` must be a whole number (an event's `seq`) or `now`")
                    })?)
            }
            _ => {}
        }
    }
    Ok((f, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_queries() {
        let (f, after) = query(Some("dut=dut1&type=job_set&after=7&job=api%3Adut1")).unwrap();
        assert_eq!(
            f,
            Filter { dut: Some("dut1".into()), job: Some("api:dut1".into()), kind: Some("job_set".into()), kinds: &[], tenant: None }
        );
        assert_eq!(after, Some(7));
        assert_eq!(query(None).unwrap(), (Filter::default(), Some(0)));
        assert_eq!(query(Some("after=now")).unwrap().1, None);
        assert!(query(Some("after=x")).is_err());
    }
}
