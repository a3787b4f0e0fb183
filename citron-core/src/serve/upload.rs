//! Writes: a DUT sending a file back into its job's run (HTTP `PUT`, TFTP write requests).
//!
//! A backend asks [`Catalog::write`](super::Catalog::write) once per upload, as it asks `open`
//! for a read: the core decides who the DUT is, whether its job takes results, where the file
//! goes and how large it may be, and answers an [`Upload`] or a refusal. The backend then only
//! moves bytes: [`Upload::write`] for each piece as it arrives (refused past the bound, so
//! nothing is ever sized from what the client announces), [`Upload::finish`] at the end.
//! Dropping an upload that was not finished (a client gone, a timeout) keeps nothing.
//!
//! The other end, [`UploadBody`] and [`UploadAnswer`], belongs to whoever stores the bytes
//! (the lab's results store): it reads the body and answers once the file is durable and
//! visible, or not at all.

use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::{AccessTicket, Digest, Protocol, ServeError};

/// One upload asked for.
#[derive(Debug, Clone)]
pub struct WriteRequest<'a> {
    /// The source address: which DUT writes.
    pub peer: IpAddr,
    /// The protocol asking, for the log.
    pub protocol: Protocol,
    /// The name the client gave (decoded, not yet normalised).
    pub path: &'a str,
    /// The size the client announced (HTTP `Content-Length`, TFTP `tsize`), if any: an upload
    /// announced over the bound is refused before any byte moves. Never trusted beyond that.
    pub size: Option<u64>,
}

/// A file taken in: where it went, its length and digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Its path in the run.
    pub name: String,
    /// Bytes.
    pub len: u64,
    /// SHA-256 of the content.
    pub digest: Digest,
}

/// Pieces in flight between a backend and the store: enough to keep both busy, few enough that
/// a slow store slows the client down rather than filling memory.
const PIECES_IN_FLIGHT: usize = 8;

/// The backend's end of an upload. See the [module](self).
#[derive(Debug)]
pub struct Upload {
    name: String,
    max: u64,
    written: u64,
    tx: Option<mpsc::Sender<Bytes>>,
    committed: Arc<AtomicBool>,
    done: oneshot::Receiver<Result<Written, ServeError>>,
    ticket: AccessTicket,
}

/// The store's end: the bytes, in order. Ends with an error when the backend dropped the upload
/// without finishing it, so that a store that keeps only complete files keeps nothing.
#[derive(Debug)]
pub struct UploadBody {
    rx: mpsc::Receiver<Bytes>,
    committed: Arc<AtomicBool>,
    ended: bool,
}

/// Where the store answers: once, when the file is durable and visible (or refused).
#[derive(Debug)]
pub struct UploadAnswer(oneshot::Sender<Result<Written, ServeError>>);

impl Upload {
    /// A new upload of `name` (its path in the run), at most `max` bytes, logged on `ticket`:
    /// the backend's end and the store's two.
    pub fn channel(name: String, max: u64, ticket: AccessTicket) -> (Upload, UploadBody, UploadAnswer) {
        let (tx, rx) = mpsc::channel(PIECES_IN_FLIGHT);
        let (answer, done) = oneshot::channel();
        let committed = Arc::new(AtomicBool::new(false));
        let up = Upload { name, max, written: 0, tx: Some(tx), committed: committed.clone(), done, ticket };
        (up, UploadBody { rx, committed, ended: false }, UploadAnswer(answer))
    }

    /// Its path in the run.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The most bytes it may bring.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Hands the next piece to the store; waits while the store is behind. Past the bound:
    /// [`ServeError::TooLarge`] (drop the upload then: nothing is kept).
    pub async fn write(&mut self, piece: Bytes) -> Result<(), ServeError> {
        let n = piece.len() as u64;
        if self.written.saturating_add(n) > self.max {
            return Err(ServeError::TooLarge { max: self.max });
        }
        if piece.is_empty() {
            return Ok(());
        }
        let tx = self.tx.as_ref().ok_or_else(|| ServeError::Io(io::Error::other("the upload is over")))?;
        if tx.send(piece).await.is_err() {
            // The store gave up (full, failed): its answer says why.
            self.tx = None;
            return Err(match (&mut self.done).await {
                Ok(Err(e)) => e,
                _ => ServeError::Io(io::Error::other("the results store stopped taking the upload")),
            });
        }
        self.written += n;
        self.ticket.add_bytes(n);
        Ok(())
    }

    /// Ends the upload: answers once the file is durable and visible in the run.
    pub async fn finish(mut self) -> Result<Written, ServeError> {
        self.committed.store(true, Ordering::SeqCst);
        self.tx = None;
        let r = match (&mut self.done).await {
            Ok(r) => r,
            Err(_) => Err(ServeError::Io(io::Error::other("the results store dropped the upload"))),
        };
        if r.is_ok() {
            self.ticket.complete();
        }
        r
    }
}

impl UploadBody {
    /// The next piece; `None` at the end of a finished upload, an error (once) when the backend
    /// dropped it unfinished.
    pub async fn next(&mut self) -> Option<io::Result<Bytes>> {
        if self.ended {
            return None;
        }
        match self.rx.recv().await {
            Some(b) => Some(Ok(b)),
            None => {
                self.ended = true;
                (!self.committed.load(Ordering::SeqCst))
                    .then(|| Err(io::Error::new(io::ErrorKind::ConnectionAborted, "the upload was cut off before its end")))
            }
        }
    }
}

impl UploadAnswer {
    /// Answers the backend.
    pub fn send(self, r: Result<Written, ServeError>) {
        let _ = self.0.send(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Quiet;
    impl super::super::AccessReport for Quiet {
        fn add_bytes(&self, _: u64) {}
        fn complete(&self) {}
    }

    async fn drain(mut body: UploadBody) -> Result<Vec<u8>, io::Error> {
        let mut out = Vec::new();
        while let Some(p) = body.next().await {
            out.extend_from_slice(&p?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn a_finished_upload_arrives_whole_and_an_abandoned_one_ends_in_an_error() {
        let (mut up, body, answer) = Upload::channel("a".into(), 10, AccessTicket::new(Quiet));
        let store = tokio::spawn(async move {
            let got = drain(body).await.unwrap();
            answer.send(Ok(Written { name: "a".into(), len: got.len() as u64, digest: Digest::of(&got) }));
            got
        });
        up.write(Bytes::from_static(b"hello")).await.unwrap();
        assert!(matches!(up.write(Bytes::from_static(b"world!")).await, Err(ServeError::TooLarge { max: 10 })));
        up.write(Bytes::from_static(b"world")).await.unwrap();
        assert_eq!(up.finish().await.unwrap().len, 10);
        assert_eq!(store.await.unwrap(), b"helloworld");

        let (mut up, body, _answer) = Upload::channel("b".into(), 10, AccessTicket::new(Quiet));
        let store = tokio::spawn(drain(body));
        up.write(Bytes::from_static(b"part")).await.unwrap();
        drop(up);
        assert!(store.await.unwrap().is_err(), "cut off: the store sees an error, not an end");
    }
}
