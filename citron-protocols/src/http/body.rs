//! Response bodies: nothing, bytes already in memory, or a range of an artifact streamed from
//! its cached file.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use citron_core::serve::Artifact;
use http_body::{Body, Frame, SizeHint};
use tokio::task::JoinHandle;

/// Bytes read per blocking call: large enough that thread hand-offs cost little next to the
/// copy, small enough that a transfer holds at most two of them.
pub(crate) const CHUNK_BYTES: usize = 1024 * 1024;

/// The first chunk of a stream: smaller, so that the first bytes leave sooner; chunks then
/// double up to [`CHUNK_BYTES`].
pub(crate) const FIRST_CHUNK_BYTES: usize = 256 * 1024;

/// Ranges up to this size are read inline on the async thread: a page-cache read this small is
/// cheaper than a hand-off to the blocking pool.
pub(crate) const INLINE_BYTES: u64 = 64 * 1024;

/// A response body.
pub(crate) enum ResponseBody {
    /// No body (HEAD, errors without text, 304).
    Empty,
    /// One buffer; the artifact, if any, is completed when it is taken.
    Full(Option<Bytes>, Option<Arc<Artifact>>),
    /// `[pos, end)` of an artifact, read in chunks one ahead of the socket.
    Stream(FileStream),
}

pub(crate) struct FileStream {
    artifact: Arc<Artifact>,
    /// Next offset to read.
    pos: u64,
    end: u64,
    /// Length of the chunk being read.
    pending_len: u64,
    /// Length of the next chunk to read.
    next_len: usize,
    pending: Option<JoinHandle<io::Result<Bytes>>>,
}

impl ResponseBody {
    /// A short text body (error messages).
    pub(crate) fn text(s: impl Into<String>) -> Self {
        ResponseBody::Full(Some(Bytes::from(s.into())), None)
    }

    /// `[start, end)` of `artifact`: read now when small, streamed otherwise.
    pub(crate) fn range(artifact: Arc<Artifact>, start: u64, end: u64) -> io::Result<Self> {
        if end - start <= INLINE_BYTES {
            let b = artifact.read_chunk(start, (end - start) as usize)?;
            return Ok(ResponseBody::Full(Some(b), Some(artifact)));
        }
        let mut s = FileStream { artifact, pos: start, end, pending_len: 0, next_len: FIRST_CHUNK_BYTES, pending: None };
        s.start_read();
        Ok(ResponseBody::Stream(s))
    }
}

impl FileStream {
    fn start_read(&mut self) {
        if self.pos >= self.end {
            return;
        }
        let len = (self.end - self.pos).min(self.next_len as u64) as usize;
        self.next_len = (self.next_len * 2).min(CHUNK_BYTES);
        let (a, off) = (self.artifact.clone(), self.pos);
        self.pos += len as u64;
        self.pending_len = len as u64;
        self.pending = Some(tokio::task::spawn_blocking(move || {
            let b = a.read_chunk(off, len)?;
            if b.len() != len {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "cached file is shorter than recorded"));
            }
            Ok(b)
        }));
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            ResponseBody::Empty => Poll::Ready(None),
            ResponseBody::Full(b, art) => match b.take() {
                Some(b) => {
                    if let Some(a) = art.take() {
                        a.sent(b.len() as u64);
                        a.complete();
                    }
                    Poll::Ready(Some(Ok(Frame::data(b))))
                }
                None => Poll::Ready(None),
            },
            ResponseBody::Stream(s) => {
                let Some(h) = s.pending.as_mut() else { return Poll::Ready(None) };
                let res = ready!(Pin::new(h).poll(cx));
                s.pending = None;
                s.pending_len = 0;
                let chunk = match res {
                    Ok(Ok(b)) => b,
                    Ok(Err(e)) => {
                        tracing::error!(artifact = %s.artifact.name, error = %e, "http: reading the cached file failed");
                        return Poll::Ready(Some(Err(e)));
                    }
                    Err(e) => return Poll::Ready(Some(Err(io::Error::other(e)))),
                };
                s.artifact.sent(chunk.len() as u64);
                if s.pos >= s.end {
                    s.artifact.complete();
                } else {
                    // Read the next chunk while hyper writes this one.
                    s.start_read();
                }
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Empty => true,
            ResponseBody::Full(b, _) => b.is_none(),
            ResponseBody::Stream(s) => s.pending.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Empty => SizeHint::with_exact(0),
            ResponseBody::Full(b, _) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            // Bytes not yet handed to hyper: the unread rest plus the chunk being read.
            ResponseBody::Stream(s) => SizeHint::with_exact(s.end - s.pos + s.pending_len),
        }
    }
}

impl Drop for FileStream {
    fn drop(&mut self) {
        if let Some(h) = self.pending.take() {
            h.abort();
        }
    }
}
