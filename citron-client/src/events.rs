//! The lab's event feed (`GET /api/v1/events`, Server-Sent Events), read event by event and
//! resumed where it stopped.
//!
//! Every event has an `id:` (its `seq`, the same on every gateway); after a cut (the server
//! restarted, a proxy closed an idle connection, the network failed) the reader connects again
//! with `Last-Event-ID: <the last one it returned>`, so nothing is lost and nothing is returned
//! twice. Refusals (401, 403, 400: a wrong, revoked or out-of-scope token) are returned, not
//! retried: they will not go away by themselves. A server error (5xx) or an unreachable server
//! is tried again, with a growing pause, once a connection succeeded (or from the start, with
//! [`Events::retrying`]). A connection silent for longer than the client's read timeout (60 s;
//! the server sends a comment every 15 s) is taken for dead and opened again.
//!
//! `citron results watch` and Python's `Client.events` are both this reader.

use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt as _;
use reqwest::Method;

use crate::{Client, ClientError, FeedEvent};

/// The longest line (and `data:` of one event) the reader accepts: a feed event is a few
/// hundred bytes, so anything longer is not citron's feed.
pub const LINE_MAX_BYTES: usize = 1 << 20;

/// The longest wait between two reconnection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Which events: all of them when every field is None.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// Only this job's.
    pub job: Option<String>,
    /// Only this DUT's.
    pub dut: Option<String>,
    /// Only of this type (`run_finished`, `job_set`, `boot`…).
    pub kind: Option<String>,
}

/// What a reader tells [`Events::on_progress`] about its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Progress {
    /// Connected: the events after `after` follow (`None`: those to come, `after=now`).
    Connected {
        /// The position it resumed from.
        after: Option<u64>,
    },
    /// The connection ended (the server stopped or closed it, the network cut it); the reader
    /// connects again at once.
    Dropped {
        /// What happened.
        why: String,
    },
    /// Connecting failed (unreachable, a server error); tried again after `pause`.
    Retrying {
        /// What happened.
        why: String,
        /// How long until the next attempt.
        pause: Duration,
    },
}

/// A reader of the feed: [`Events::next`] answers the next event, reconnecting as needed.
pub struct Events {
    client: Client,
    query: EventQuery,
    last_id: u64,
    /// Started from now and not told its position yet (the first connection asks `after=now`).
    from_now: bool,
    /// Whether a failed first connection is tried again too.
    retry_first: bool,
    on_progress: Option<Box<dyn FnMut(Progress) + Send>>,
    body: Option<BoxStream<'static, reqwest::Result<Bytes>>>,
    buf: Vec<u8>,
    /// The fields of the event being read.
    id: Option<u64>,
    data: String,
    /// Whether a connection succeeded once (from then on, a failed one is tried again).
    connected: bool,
    /// Consecutive failed connections (for the backoff).
    failures: u32,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").field("query", &self.query).field("last_id", &self.last_id).finish_non_exhaustive()
    }
}

impl Client {
    /// The feed's events matching `query` with a `seq` above `after` (0: every stored one).
    /// Nothing is sent until the first [`Events::next`].
    pub fn events(&self, query: EventQuery, after: u64) -> Events {
        Events {
            client: self.clone(),
            query,
            last_id: after,
            from_now: false,
            retry_first: false,
            on_progress: None,
            body: None,
            buf: Vec::new(),
            id: None,
            data: String::new(),
            connected: false,
            failures: 0,
        }
    }
}

impl Events {
    /// Starts with the events to come instead (`after=now`): the server first says where the
    /// feed is, and a reconnection resumes from there, so that nothing is missed even before
    /// the first event.
    pub fn from_now(mut self) -> Events {
        self.from_now = true;
        self
    }

    /// Tries a failed first connection again too (an unreachable server, a 5xx), as it does
    /// once connected: for a watcher started before its server.
    pub fn retrying(mut self) -> Events {
        self.retry_first = true;
        self
    }

    /// Calls `f` when a connection opens, drops, or is tried again (a watcher says so).
    pub fn on_progress(mut self, f: impl FnMut(Progress) + Send + 'static) -> Events {
        self.on_progress = Some(Box::new(f));
        self
    }

    fn tell(&mut self, p: Progress) {
        if let Some(f) = &mut self.on_progress {
            f(p);
        }
    }

    /// The `seq` of the last event returned (or the `after` it started from): give it as
    /// `after` to a new reader to go on from here later. 0 for a reader
    /// [`from_now`](Self::from_now) whose server has not said its position yet.
    pub fn last_event_id(&self) -> u64 {
        self.last_id
    }

    /// Where the reader is: [`last_event_id`](Self::last_event_id), or `None` while a reader
    /// [`from_now`](Self::from_now) does not know it yet.
    pub fn position(&self) -> Option<u64> {
        (!self.from_now).then_some(self.last_id)
    }

    async fn connect(&mut self) -> Result<(), ClientError> {
        let c = &self.client;
        let mut q = Vec::new();
        if let Some(j) = &self.query.job {
            q.push(("job", j.clone()));
        }
        if let Some(d) = &self.query.dut {
            q.push(("dut", d.clone()));
        }
        if let Some(k) = &self.query.kind {
            q.push(("type", k.clone()));
        }
        let mut r = c.req(Method::GET, c.url(["api", "v1", "events"])).header(reqwest::header::ACCEPT, "text/event-stream");
        if self.from_now {
            q.push(("after", "now".into()));
        } else {
            r = r.header("last-event-id", self.last_id.to_string());
        }
        let r = r.query(&q);
        let resp = c.send(r).await?;
        self.body = Some(resp.bytes_stream().boxed());
        self.buf.clear();
        self.id = None;
        self.data.clear();
        Ok(())
    }

    /// The next event; waits for one as long as it takes (cancel the future to stop waiting:
    /// the next call goes on from the last event returned).
    /// A cut connection is opened again (with a growing pause, up to 5 s) after the first
    /// connection succeeded; a refusal, or a first connection that fails (unless
    /// [`retrying`](Self::retrying)), is an error.
    pub async fn next(&mut self) -> Result<FeedEvent, ClientError> {
        loop {
            if self.body.is_none() {
                match self.connect().await {
                    Ok(()) => {
                        self.connected = true;
                        self.failures = 0;
                        let after = self.position();
                        self.tell(Progress::Connected { after });
                    }
                    Err(e) if (self.connected || self.retry_first) && retried(&e) => {
                        let pause = Duration::from_millis(100u64 << self.failures.min(6)).min(BACKOFF_MAX);
                        self.failures += 1;
                        self.tell(Progress::Retrying { why: e.to_string(), pause });
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            if let Some(ev) = self.take_event()? {
                return Ok(ev);
            }
            let Some(body) = self.body.as_mut() else { continue };
            let why = match body.next().await {
                Some(Ok(chunk)) => {
                    self.buf.extend_from_slice(&chunk);
                    continue;
                }
                Some(Err(e)) => format!("the connection failed: {}", ClientError::unreachable(self.client.server(), &e)),
                None => "the server closed the connection".to_string(),
            };
            // Cut (or closed): reconnect from the last event returned.
            self.body = None;
            self.tell(Progress::Dropped { why });
        }
    }

    /// Parses the complete lines in the buffer; answers an event once a blank line ends one.
    fn take_event(&mut self) -> Result<Option<FeedEvent>, ClientError> {
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if self.data.is_empty() {
                    // A message with an `id:` and no data (`after=now`'s position): the id is
                    // where a reconnection resumes from, though nothing is returned.
                    if let Some(id) = self.id.take() {
                        self.last_id = id;
                        self.from_now = false;
                    }
                    continue;
                }
                let data = std::mem::take(&mut self.data);
                let ev: FeedEvent = serde_json::from_str(&data)
                    .map_err(|e| ClientError::Protocol(format!("an event of the feed is not what this client expects: {e}")))?;
                self.last_id = self.id.take().unwrap_or(ev.seq);
                self.from_now = false;
                return Ok(Some(ev));
            }
            let (field, value) = line.split_once(':').map(|(f, v)| (f, v.strip_prefix(' ').unwrap_or(v))).unwrap_or((line, ""));
            match field {
                "id" => self.id = value.trim().parse().ok(),
                "data" => {
                    if !self.data.is_empty() {
                        self.data.push('\n');
                    }
                    self.data.push_str(value);
                    if self.data.len() > LINE_MAX_BYTES {
                        return Err(ClientError::Protocol(format!("an event of the feed is longer than {LINE_MAX_BYTES} bytes")));
                    }
                }
                // `event:` repeats the JSON's `type`; `:` lines are keep-alive comments.
                _ => {}
            }
        }
        if self.buf.len() > LINE_MAX_BYTES {
            return Err(ClientError::Protocol(format!("a line of the feed is longer than {LINE_MAX_BYTES} bytes")));
        }
        Ok(None)
    }
}

/// Whether a failed connection may succeed later by itself: the server is unreachable or has
/// a problem of its own (5xx), unlike a refusal (4xx).
fn retried(e: &ClientError) -> bool {
    matches!(e, ClientError::Unreachable { .. }) || e.status().is_some_and(|s| s >= 500)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader() -> Events {
        Client::new("http://127.0.0.1:1", None).unwrap().events(EventQuery::default(), 0)
    }

    #[test]
    fn events_split_across_chunks_and_comments() {
        let mut r = reader();
        let ev = r#"{"seq":7,"time":1.5,"type":"run_finished","dut":null,"job":"k","actor":"api","gateway":null,"detail":{"run":3}}"#;
        r.buf.extend_from_slice(b": keep-alive\n\nid: 7\nevent: run_fin");
        assert!(r.take_event().unwrap().is_none());
        r.buf.extend_from_slice(format!("ished\r\ndata: {ev}\r\n\r\nid: 8\n").as_bytes());
        let got = r.take_event().unwrap().unwrap();
        assert_eq!((got.seq, got.kind.as_str(), got.job.as_deref()), (7, "run_finished", Some("k")));
        assert_eq!(r.last_event_id(), 7);
        assert!(r.take_event().unwrap().is_none(), "the next event is not complete yet");
    }

    #[test]
    fn a_position_without_data_sets_where_to_resume() {
        let mut r = reader().from_now();
        assert_eq!(r.position(), None);
        r.buf.extend_from_slice(b"id: 41\n\n: keep-alive\n\n");
        assert!(r.take_event().unwrap().is_none(), "nothing is returned");
        assert_eq!((r.position(), r.last_event_id()), (Some(41), 41));
        // A comment alone changes nothing.
        r.buf.extend_from_slice(b": keep-alive\r\n\r\n");
        assert!(r.take_event().unwrap().is_none());
        assert_eq!(r.last_event_id(), 41);
    }

    #[test]
    fn refusals_end_the_reader_and_the_rest_is_tried_again() {
        let api = |status| ClientError::Api { status, message: String::new() };
        assert!(!retried(&api(401)) && !retried(&api(403)) && !retried(&api(404)));
        assert!(retried(&api(503)) && retried(&ClientError::Unreachable { server: "s".into(), reason: "r".into() }));
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut r = reader();
        r.buf = vec![b'x'; LINE_MAX_BYTES + 1];
        assert!(matches!(r.take_event(), Err(ClientError::Protocol(_))));
    }
}
