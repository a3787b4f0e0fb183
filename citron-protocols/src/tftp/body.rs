//! The bytes of a transfer: the artifact read in chunks ahead of the blocks (octet mode), or
//! converted to netascii as it streams.
//!
//! Memory per transfer is bounded by a few chunks (`Config::prefetch_bytes`) whatever the file's
//! size, in both modes: netascii keeps only the converted bytes a restarted window can ask for
//! again, and finds the converted size (for `tsize` and for where the transfer ends) in one
//! streaming pass before the first block.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use citron_core::serve::{Artifact, Content};

use super::netascii::{Encoder, LenCounter};

/// Source bytes converted at a time in netascii mode.
const NETASCII_PIECE: u64 = 16 * 1024;

/// The bytes a transfer carries, by offset in the transfer.
pub(super) enum Body {
    /// The artifact itself (octet mode).
    Octet(Chunks),
    /// The artifact converted to netascii.
    Netascii(Netascii),
}

impl Body {
    /// Up to `len` bytes at `off` (fewer only at the end).
    pub(super) async fn get(&mut self, off: u64, len: usize) -> io::Result<Bytes> {
        match self {
            Body::Octet(c) => c.get(off, len).await,
            Body::Netascii(n) => n.get(off, len).await,
        }
    }
}

/// The netascii size of `art`, in one pass of `chunk`-byte reads on the blocking pool (no copy
/// of the file is kept).
pub(super) async fn netascii_len(art: Arc<Artifact>, chunk: usize) -> io::Result<u64> {
    tokio::task::spawn_blocking(move || {
        let mut c = LenCounter::default();
        let mut off = 0;
        while off < art.len {
            let b = art.read_chunk(off, chunk.max(1))?;
            if b.is_empty() {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "artifact is shorter than recorded"));
            }
            c.add(&b);
            off += b.len() as u64;
        }
        Ok(c.finish())
    })
    .await
    .map_err(io::Error::other)?
}

/// An artifact converted to netascii as blocks are asked for: source chunks go through an
/// [`Encoder`] into `buf`, which holds the converted bytes from offset `base`. Bytes more than
/// `keep` before the block asked are forgotten (`keep` is a window, the furthest back a
/// restarted window reaches), so the buffer stays a few windows long.
pub(super) struct Netascii {
    src: Chunks,
    src_off: u64,
    enc: Encoder,
    buf: Vec<u8>,
    base: u64,
    keep: u64,
}

impl Netascii {
    /// `keep`: windowsize × blksize.
    pub(super) fn new(art: Arc<Artifact>, prefetch: usize, keep: u64) -> Netascii {
        Netascii { src: Chunks::new(art, prefetch, 1), src_off: 0, enc: Encoder::default(), buf: Vec::new(), base: 0, keep }
    }

    async fn get(&mut self, off: u64, len: usize) -> io::Result<Bytes> {
        if off < self.base {
            return Err(io::Error::other("netascii: a block before the kept window was asked for"));
        }
        // Forget what no restarted window can ask for again; in big steps, so that the copy
        // down is amortised over many blocks.
        let drop = (off.saturating_sub(self.keep).saturating_sub(self.base) as usize).min(self.buf.len());
        if drop as u64 >= self.keep.max(NETASCII_PIECE) {
            self.buf.drain(..drop);
            self.base += drop as u64;
        }
        let total = self.src.art.len;
        while self.base + (self.buf.len() as u64) < off + len as u64 && self.src_off < total {
            let piece = self.src.get(self.src_off, (total - self.src_off).min(NETASCII_PIECE) as usize).await?;
            if piece.is_empty() {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "artifact is shorter than recorded"));
            }
            self.src_off += piece.len() as u64;
            self.enc.encode(&piece, &mut self.buf);
            if self.src_off == total {
                self.enc.finish(&mut self.buf);
            }
        }
        let s = ((off - self.base) as usize).min(self.buf.len());
        Ok(Bytes::copy_from_slice(&self.buf[s..(s + len).min(self.buf.len())]))
    }
}

/// An artifact read in aligned chunks of `size` bytes (a multiple of blksize, so a block never
/// spans two chunks). A chunk in the page cache is read inline when it is first needed (one
/// `preadv2(RWF_NOWAIT)` per chunk, no thread hand-off); once a read would have waited for the
/// disk, the transfer is `cold` and the chunk after the one being sent is read on the blocking
/// pool while the transfer waits for ACKs. The previous chunk is kept for a window restarted
/// across the boundary.
pub(super) struct Chunks {
    art: Arc<Artifact>,
    size: u64,
    cold: bool,
    prev: Option<(u64, Bytes)>,
    cur: Option<(u64, Bytes)>,
    next: Option<(u64, tokio::task::JoinHandle<io::Result<Bytes>>)>,
}

impl Chunks {
    pub(super) fn new(art: Arc<Artifact>, prefetch: usize, blksize: u16) -> Chunks {
        let bs = blksize.max(1) as u64;
        let size = (prefetch as u64).max(bs) / bs * bs;
        Chunks { art, size, cold: false, prev: None, cur: None, next: None }
    }

    fn read(&self, k: u64) -> tokio::task::JoinHandle<io::Result<Bytes>> {
        let (a, off, size) = (self.art.clone(), k * self.size, self.size as usize);
        tokio::task::spawn_blocking(move || a.read_chunk(off, size))
    }

    /// Chunk `k` if it is all in the page cache.
    fn read_inline(&self, k: u64) -> io::Result<Option<Bytes>> {
        let off = k * self.size;
        let want = self.size.min(self.art.len.saturating_sub(off)) as usize;
        Ok(self.art.read_cached(off, want)?.filter(|b| b.len() == want))
    }

    pub(super) async fn get(&mut self, off: u64, len: usize) -> io::Result<Bytes> {
        if let Content::Memory(_) = self.art.content {
            return self.art.read_chunk(off, len);
        }
        let k = off / self.size;
        let have = |c: &Option<(u64, Bytes)>| matches!(c, Some((ck, _)) if *ck == k);
        if !have(&self.cur) {
            if have(&self.prev) {
                std::mem::swap(&mut self.prev, &mut self.cur);
            } else {
                let pending = match self.next.take() {
                    Some((nk, h)) if nk == k => Err(h),
                    other => {
                        if let Some((_, h)) = other {
                            h.abort();
                        }
                        match self.read_inline(k)? {
                            Some(b) => Ok(b),
                            None => {
                                self.cold = true;
                                Err(self.read(k))
                            }
                        }
                    }
                };
                let data = match pending {
                    Ok(b) => b,
                    Err(h) => h.await.map_err(io::Error::other)??,
                };
                self.prev = self.cur.replace((k, data));
            }
        }
        let want_next = (k + 1) * self.size < self.art.len;
        if self.cold && want_next && !matches!(self.next, Some((nk, _)) if nk == k + 1) {
            if let Some((_, h)) = self.next.take() {
                h.abort();
            }
            self.next = Some((k + 1, self.read(k + 1)));
        }
        let Some((_, data)) = &self.cur else { unreachable!("cur was just filled") };
        let s = ((off - k * self.size) as usize).min(data.len());
        Ok(data.slice(s..(s + len).min(data.len())))
    }
}

impl Drop for Chunks {
    fn drop(&mut self) {
        if let Some((_, h)) = self.next.take() {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tftp::netascii::to_netascii;
    use crate::tftp::packet::Packet;
    use crate::tftp::session::{Negotiated, Send, Session};
    use citron_core::access::AccessLog;
    use citron_core::serve::Protocol;
    use std::time::{Duration, Instant};

    fn artifact(data: &[u8]) -> Arc<Artifact> {
        Arc::new(Artifact {
            name: "t".into(),
            len: data.len() as u64,
            digest: citron_core::Digest::of(data),
            content: Content::Memory(Bytes::copy_from_slice(data)),
            ticket: Arc::new(AccessLog::default()).ticket([127, 0, 0, 2].into(), "d".into(), Protocol::TFTP, "t"),
        })
    }

    /// A windowed transfer whose client acknowledges at random points (restarting windows)
    /// receives exactly the netascii of the file, with CR LF pairs across every block boundary,
    /// while the body holds only a few windows.
    #[tokio::test]
    async fn netascii_streams_through_restarted_windows() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let src: Vec<u8> = (0..200_000).map(|_| [b'a', b'\r', b'\n', b'z'][(rnd() % 4) as usize]).collect();
        let want = to_netascii(&src);
        let art = artifact(&src);
        let len = netascii_len(art.clone(), 4096).await.unwrap();
        assert_eq!(len, want.len() as u64);
        let (blksize, window) = (512u16, 4u16);
        let mut body = Body::Netascii(Netascii::new(art, 64 * 1024, window as u64 * blksize as u64));
        let neg = Negotiated { blksize, windowsize: window, timeout: Duration::from_secs(1), oack: vec![] };
        let t0 = Instant::now();
        let (mut s, mut step) = Session::start(neg, len, 3, t0);
        let mut got = vec![None; s.last_block() as usize + 1];
        loop {
            let mut sent = Vec::new();
            for out in &step.send {
                if let Send::Data { index } = out {
                    let (off, n) = s.block_range(*index);
                    let b = body.get(off, n).await.unwrap();
                    assert_eq!(&b[..], &want[off as usize..off as usize + n], "block {index}");
                    got[*index as usize] = Some(b);
                    sent.push(*index);
                }
            }
            if step.done.is_some() {
                break;
            }
            if let Body::Netascii(n) = &body {
                assert!(n.buf.len() <= 4 * 64 * 1024, "{} bytes kept", n.buf.len());
            }
            // Acknowledge a random block of the window (a lost block restarts it after that one).
            let pick = sent[(rnd() % sent.len() as u64) as usize];
            step = s.on_packet(&Packet::Ack { block: Session::wire_block(pick) }, t0);
        }
        let all: Vec<u8> = got.into_iter().flatten().flat_map(|b| b.to_vec()).collect();
        assert_eq!(all, want);
    }
}
