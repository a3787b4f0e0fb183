//! The netascii transfer encoding (RFC 1350 §1, RFC 764 "NVT") as a streaming converter: pure,
//! no I/O.
//!
//! LF becomes CR LF, a bare CR becomes CR NUL, an existing CR LF pair is kept. A file is
//! converted piece by piece as it is sent ([`Encoder`]), never whole: a netascii read used to
//! hold the converted file in memory for the transfer's life, so sixteen reads of a 16 MiB file
//! cost 257 MiB. The only state carried from one piece to the next is a CR whose fate depends on
//! the next byte; [`converted_len`] gives the size up front (the `tsize` answer and where the
//! transfer ends) with the same rules, in one pass with no buffer.

/// Converts a byte stream to netascii, piece by piece.
///
/// ```
/// use citron_protocols::tftp::netascii::{to_netascii, Encoder};
/// let mut e = Encoder::default();
/// let mut out = Vec::new();
/// e.encode(b"a\r", &mut out); // the CR waits for the next byte
/// e.encode(b"\nb\r", &mut out);
/// e.finish(&mut out);
/// assert_eq!(out, to_netascii(b"a\r\nb\r"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct Encoder {
    /// The last byte seen was a CR, not written yet: CR LF if an LF follows, CR NUL otherwise.
    pending_cr: bool,
}

impl Encoder {
    /// Appends the conversion of `src` to `out` (all of it but a final CR, which waits for the
    /// next piece or [`Encoder::finish`]).
    pub fn encode(&mut self, src: &[u8], out: &mut Vec<u8>) {
        out.reserve(src.len() + src.len() / 32 + 2);
        let mut rest = src;
        if self.pending_cr {
            if let Some((&first, tail)) = rest.split_first() {
                self.pending_cr = false;
                if first == b'\n' {
                    out.extend_from_slice(b"\r\n");
                    rest = tail;
                } else {
                    out.extend_from_slice(b"\r\0");
                }
            }
        }
        let mut i = 0;
        while i < rest.len() {
            // Copy the run of plain bytes in one go; most text has few line ends per byte.
            let run = rest[i..].iter().position(|&b| b == b'\n' || b == b'\r').unwrap_or(rest.len() - i);
            out.extend_from_slice(&rest[i..i + run]);
            i += run;
            match rest.get(i) {
                Some(b'\n') => out.extend_from_slice(b"\r\n"),
                Some(_) => match rest.get(i + 1) {
                    Some(b'\n') => {
                        out.extend_from_slice(b"\r\n");
                        i += 1;
                    }
                    Some(_) => out.extend_from_slice(b"\r\0"),
                    None => self.pending_cr = true,
                },
                None => break,
            }
            i += 1;
        }
    }

    /// Ends the stream: a CR left waiting is a bare CR.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.pending_cr) {
            out.extend_from_slice(b"\r\0");
        }
    }
}

/// Counts the netascii size of a stream given piece by piece; call [`LenCounter::finish`] for
/// the total.
#[derive(Debug, Clone, Default)]
pub struct LenCounter {
    len: u64,
    pending_cr: bool,
}

impl LenCounter {
    /// Counts `src`, the next piece of the stream.
    pub fn add(&mut self, src: &[u8]) {
        for &b in src {
            // CR LF and LF alone both make 2 bytes, so an LF always counts 2, with the CR
            // before it counted 0; a CR not followed by LF becomes CR NUL.
            self.len += match (self.pending_cr, b) {
                (true, b'\n') => 2,
                (true, b'\r') => 2,
                (true, _) => 3,
                (false, b'\n') => 2,
                (false, b'\r') => 0,
                (false, _) => 1,
            };
            self.pending_cr = b == b'\r';
        }
    }

    /// The netascii size of everything added.
    pub fn finish(&self) -> u64 {
        self.len + if self.pending_cr { 2 } else { 0 }
    }
}

/// The netascii size of `src` (see [`LenCounter`] for a stream).
pub fn converted_len(src: &[u8]) -> u64 {
    let mut c = LenCounter::default();
    c.add(src);
    c.finish()
}

/// Converts a whole buffer to netascii.
///
/// ```
/// use citron_protocols::tftp::netascii::to_netascii;
/// assert_eq!(to_netascii(b"a\nb\r\nc\rd"), b"a\r\nb\r\nc\r\0d");
/// ```
pub fn to_netascii(src: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut e = Encoder::default();
    e.encode(src, &mut out);
    e.finish(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules written out byte by byte, to check the encoder against.
    fn reference(src: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < src.len() {
            match src[i] {
                b'\n' => out.extend_from_slice(b"\r\n"),
                b'\r' if src.get(i + 1) == Some(&b'\n') => {
                    out.extend_from_slice(b"\r\n");
                    i += 1;
                }
                b'\r' => out.extend_from_slice(b"\r\0"),
                b => out.push(b),
            }
            i += 1;
        }
        out
    }

    #[test]
    fn whole_buffers() {
        assert_eq!(to_netascii(b""), b"");
        assert_eq!(to_netascii(b"\r"), b"\r\0");
        assert_eq!(to_netascii(b"\n\n"), b"\r\n\r\n");
        assert_eq!(to_netascii(b"x\r\r\n"), b"x\r\0\r\n");
        assert_eq!(to_netascii(b"\r\r\r"), b"\r\0\r\0\r\0");
    }

    /// Every split of every short string over {a, CR, LF} converts as the whole, and its length
    /// is known up front: the CR LF pairs that straddle a block boundary included.
    #[test]
    fn any_split_converts_as_the_whole() {
        let alphabet = [b'a', b'\r', b'\n'];
        for len in 0..=7u32 {
            for mut k in 0..3usize.pow(len) {
                let mut src = Vec::new();
                for _ in 0..len {
                    src.push(alphabet[k % 3]);
                    k /= 3;
                }
                let want = reference(&src);
                assert_eq!(to_netascii(&src), want, "{src:?}");
                assert_eq!(converted_len(&src), want.len() as u64, "{src:?}");
                for a in 0..=src.len() {
                    for b in a..=src.len() {
                        let (mut e, mut c, mut out) = (Encoder::default(), LenCounter::default(), Vec::new());
                        for piece in [&src[..a], &src[a..b], &src[b..]] {
                            e.encode(piece, &mut out);
                            c.add(piece);
                        }
                        e.finish(&mut out);
                        assert_eq!(out, want, "{src:?} split at {a}, {b}");
                        assert_eq!(c.finish(), want.len() as u64, "{src:?} split at {a}, {b}");
                    }
                }
            }
        }
    }
}
