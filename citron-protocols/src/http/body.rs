//! Response bodies: nothing, bytes already in memory, or a range of an artifact streamed from
//! its cached file.
//!
//! Reads of the cached file are first tried without blocking (`preadv2(RWF_NOWAIT)`: the data is
//! copied only if it is in the page cache, which it usually is for artifacts read often); when the
//! kernel would have to wait for the disk, that chunk is read on the blocking pool instead. So a
//! warm file costs no thread hand-off per chunk, and a cold one never stalls the async workers.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use citron_core::serve::Artifact;
use http_body::{Body, Frame, SizeHint};
use tokio::task::JoinHandle;

/// The largest chunk read at once: large enough that per-chunk costs vanish next to the copy,
/// small enough that a transfer holds little memory.
pub(crate) const CHUNK_BYTES: usize = 1024 * 1024;

/// The first chunk of a stream: smaller, so that the first bytes leave sooner; chunks then
/// double up to [`CHUNK_BYTES`].
pub(crate) const FIRST_CHUNK_BYTES: usize = 256 * 1024;

/// Ranges up to this size are sent as one buffer.
pub(crate) const INLINE_BYTES: u64 = 64 * 1024;

/// A response body.
pub(crate) enum ResponseBody {
    /// No body (HEAD, 304).
    Empty,
    /// One buffer; the artifact, if any, is completed when it is taken.
    Full(Option<Bytes>, Option<Arc<Artifact>>),
    /// `[pos, end)` of an artifact, read chunk by chunk as hyper asks for more.
    Stream(FileStream),
}

pub(crate) struct FileStream {
    artifact: Arc<Artifact>,
    /// Next offset to read.
    pos: u64,
    end: u64,
    /// Length of the next chunk to read.
    next_len: usize,
    /// A chunk being read on the blocking pool, and its length.
    pending: Option<(JoinHandle<io::Result<Bytes>>, u64)>,
}

impl ResponseBody {
    /// A short text body (error messages).
    pub(crate) fn text(s: impl Into<String>) -> Self {
        ResponseBody::Full(Some(Bytes::from(s.into())), None)
    }

    /// `[start, end)` of `artifact`: one buffer when small and at hand, streamed otherwise.
    pub(crate) fn range(artifact: Arc<Artifact>, start: u64, end: u64) -> io::Result<Self> {
        let len = end - start;
        if len <= INLINE_BYTES {
            if let Some(b) = artifact.read_cached(start, len as usize)? {
                if b.len() as u64 == len {
                    return Ok(ResponseBody::Full(Some(b), Some(artifact)));
                }
            }
        }
        Ok(ResponseBody::Stream(FileStream { artifact, pos: start, end, next_len: FIRST_CHUNK_BYTES, pending: None }))
    }
}

impl FileStream {
    fn remaining(&self) -> u64 {
        self.end - self.pos + self.pending.as_ref().map_or(0, |p| p.1)
    }

    /// The next chunk, read now if it is cached, else on the blocking pool.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        if self.pending.is_none() {
            if self.pos >= self.end {
                return Poll::Ready(None);
            }
            let len = (self.end - self.pos).min(self.next_len as u64) as usize;
            self.next_len = (self.next_len * 2).min(CHUNK_BYTES);
            match self.artifact.read_cached(self.pos, len) {
                Ok(Some(b)) => {
                    self.pos += b.len() as u64;
                    return Poll::Ready(Some(Ok(b)));
                }
                Ok(None) => {}
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
            let (a, off) = (self.artifact.clone(), self.pos);
            self.pos += len as u64;
            let h = tokio::task::spawn_blocking(move || {
                let b = a.read_chunk(off, len)?;
                if b.len() != len {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "cached file is shorter than recorded"));
                }
                Ok(b)
            });
            self.pending = Some((h, len as u64));
        }
        let (h, _) = self.pending.as_mut().expect("set above");
        let res = ready!(Pin::new(h).poll(cx));
        self.pending = None;
        Poll::Ready(Some(res.unwrap_or_else(|e| Err(io::Error::other(e)))))
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
            ResponseBody::Stream(s) => match ready!(s.poll_chunk(cx)) {
                None => Poll::Ready(None),
                Some(Ok(chunk)) => {
                    s.artifact.sent(chunk.len() as u64);
                    if s.remaining() == 0 {
                        s.artifact.complete();
                    }
                    Poll::Ready(Some(Ok(Frame::data(chunk))))
                }
                Some(Err(e)) => {
                    tracing::error!(artifact = %s.artifact.name, error = %e, "http: reading the cached file failed");
                    Poll::Ready(Some(Err(e)))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Empty => true,
            ResponseBody::Full(b, _) => b.is_none(),
            ResponseBody::Stream(s) => s.remaining() == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Empty => SizeHint::with_exact(0),
            ResponseBody::Full(b, _) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ResponseBody::Stream(s) => SizeHint::with_exact(s.remaining()),
        }
    }
}

impl Drop for FileStream {
    fn drop(&mut self) {
        if let Some((h, _)) = self.pending.take() {
            h.abort();
        }
    }
}
