//! The lab's event feed (`GET /api/v1/events`, Server-Sent Events), read event by event and
//! resumed where it stopped.
//!
//! Every event has an `id:` (its `seq`, the same on every gateway); after a cut (the server
//! restarted, a proxy closed an idle connection, the network failed) the reader connects again
//! with `Last-Event-ID: <the last one it returned>`, so nothing is lost and nothing is returned
//! twice. Refusals (401, 403, 400) are returned, not retried: they will not go away by
//! themselves.

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

/// A reader of the feed: [`Events::next`] answers the next event, reconnecting as needed.
pub struct Events {
    client: Client,
    query: EventQuery,
    last_id: u64,
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
    /// The `seq` of the last event returned (or the `after` it started from): give it as
    /// `after` to a new reader to go on from here later.
    pub fn last_event_id(&self) -> u64 {
        self.last_id
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
        let r = c
            .req(Method::GET, c.url(["api", "v1", "events"]))
            .query(&q)
            .header("last-event-id", self.last_id.to_string())
            .header(reqwest::header::ACCEPT, "text/event-stream");
        let resp = c.send(r).await?;
        self.body = Some(resp.bytes_stream().boxed());
        self.buf.clear();
        self.id = None;
        self.data.clear();
        Ok(())
    }

    /// The next event; waits for one as long as it takes (cancel the future to stop waiting).
    /// A cut connection is opened again (with a growing pause, up to 5 s) after the first
    /// connection succeeded; a refusal, or a first connection that fails, is an error.
    pub async fn next(&mut self) -> Result<FeedEvent, ClientError> {
        loop {
            if self.body.is_none() {
                match self.connect().await {
                    Ok(()) => {
                        self.connected = true;
                        self.failures = 0;
                    }
                    Err(ClientError::Unreachable { .. }) if self.connected => {
                        let pause = Duration::from_millis(100u64 << self.failures.min(6)).min(BACKOFF_MAX);
                        self.failures += 1;
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
            match body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                // Cut (or closed): reconnect from the last event returned.
                Some(Err(_)) | None => self.body = None,
            }
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
                    continue;
                }
                let data = std::mem::take(&mut self.data);
                let ev: FeedEvent = serde_json::from_str(&data)
                    .map_err(|e| ClientError::Protocol(format!("an event of the feed is not what this client expects: {e}")))?;
                self.last_id = self.id.take().unwrap_or(ev.seq);
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
    fn an_endless_line_is_refused() {
        let mut r = reader();
        r.buf = vec![b'x'; LINE_MAX_BYTES + 1];
        assert!(matches!(r.take_event(), Err(ClientError::Protocol(_))));
    }
}
