//! Option negotiation (RFC 2347) as a pure function: which options the OACK carries and the
//! transfer parameters that follow.
//!
//! Rules, with the RFC that asks for them: RFC 2347 (OACK only for options the client sent and
//! the server accepts, unknown ones ignored), RFC 2348 `blksize` 8–65464, RFC 2349 `timeout`
//! 1–255 s and `tsize`, RFC 7440 `windowsize` 1–65535. A value out of range is ignored (the
//! option is left out of the OACK and the default used) rather than refused, because refusing
//! costs a client like U-Boot one of its few allowed errors; a value larger than this server
//! allows is lowered, which RFC 2348 and RFC 7440 permit. `windowsize` is also lowered so that a
//! window carries at most [`Limits::max_window_bytes`].
//!
//! `timeout` is the exception: RFC 2349 says the OACK must carry the client's value unchanged, so
//! a value above [`Limits::max_timeout`] is not lowered but ignored (left out of the OACK, the
//! server's default used; every client handles an OACK without it, RFC 2347). Without the cap a
//! client asking `timeout 255` would hold a transfer slot for `retries` × 255 s after going
//! silent.

use std::time::Duration;

use super::packet::Request;

/// RFC 1350's block size, used when the client does not negotiate one.
pub const DEFAULT_BLKSIZE: u16 = 512;
/// RFC 2348's smallest `blksize`.
pub const MIN_BLKSIZE: u16 = 8;
/// RFC 2348's largest `blksize` (so that a DATA packet fits in one UDP datagram).
pub const MAX_BLKSIZE: u16 = 65464;

/// What the server allows; the client's options are clamped to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest `blksize` accepted (≤ [`MAX_BLKSIZE`]).
    pub max_blksize: u16,
    /// Largest `windowsize` accepted (≥ 1).
    pub max_windowsize: u16,
    /// Largest window in payload bytes: `windowsize` is lowered to `max_window_bytes / blksize`
    /// (at least 1). A window leaves as one burst, and a receiver drops what does not fit in its
    /// socket buffer: Linux's default 208 KiB holds only 12 datagrams of 8 KiB (each costs
    /// 16 KiB of buffer), so `blksize 8192` with `windowsize 16` would lose the tail of every
    /// window and wait a retransmission timeout each time (atftpd stalls exactly so). Firmware
    /// stacks have fewer receive buffers still (U-Boot: `PKTBUFSRX`).
    pub max_window_bytes: u32,
    /// Retransmission timeout when the client does not send `timeout`.
    pub default_timeout: Duration,
    /// Largest `timeout` accepted (the lab's `limits.tftp_max_timeout`); a larger one is left
    /// out of the OACK and `default_timeout` used (RFC 2349 forbids answering another value).
    pub max_timeout: Duration,
    /// Consecutive timeouts after which the client is considered gone.
    pub retries: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_blksize: MAX_BLKSIZE,
            max_windowsize: 64,
            max_window_bytes: 64 * 1024,
            default_timeout: Duration::from_secs(1),
            max_timeout: Duration::from_secs(10),
            retries: 6,
        }
    }
}

/// The transfer parameters agreed with the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Bytes per DATA block.
    pub blksize: u16,
    /// Blocks sent before waiting for an ACK.
    pub windowsize: u16,
    /// Retransmission timeout.
    pub timeout: Duration,
    /// The OACK's options, in the client's order; empty means no OACK (RFC 2347: then DATA 1
    /// starts the transfer as in RFC 1350).
    pub oack: Vec<(String, String)>,
}

/// Chooses the transfer parameters for `req`; `size` is the number of bytes the transfer will
/// carry (the `tsize` answer).
///
/// ```
/// use citron_protocols::tftp::packet::{Mode, Request};
/// use citron_protocols::tftp::session::{negotiate, Limits};
/// let req = Request { filename: "f".into(), mode: Mode::Octet,
///     options: vec![("BLKSIZE".into(), "100000".into()), ("tsize".into(), "0".into()), ("x".into(), "1".into())] };
/// let n = negotiate(&req, 1234, &Limits::default());
/// assert_eq!(n.blksize, 65464);
/// assert_eq!(n.oack, vec![("BLKSIZE".to_string(), "65464".to_string()), ("tsize".to_string(), "1234".to_string())]);
/// ```
pub fn negotiate(req: &Request, size: u64, limits: &Limits) -> Negotiated {
    let mut window = None;
    let mut n = Negotiated { blksize: DEFAULT_BLKSIZE, windowsize: 1, timeout: limits.default_timeout, oack: Vec::new() };
    let mut seen: Vec<String> = Vec::new();
    for (name, value) in &req.options {
        let key = name.to_ascii_lowercase();
        // RFC 2347 does not define repeated options; the first one counts.
        if seen.contains(&key) {
            continue;
        }
        seen.push(key.clone());
        let num: Option<u64> = value.trim().parse().ok();
        let accepted = match (key.as_str(), num) {
            ("blksize", Some(v)) if v >= MIN_BLKSIZE as u64 => {
                n.blksize = v.min(limits.max_blksize.clamp(MIN_BLKSIZE, MAX_BLKSIZE) as u64) as u16;
                Some(n.blksize.to_string())
            }
            // The value depends on blksize, which may come later: filled in below.
            ("windowsize", Some(v)) if (1..=65535).contains(&v) => {
                window = Some((n.oack.len(), v));
                Some(String::new())
            }
            ("timeout", Some(v)) if (1..=255).contains(&v) && Duration::from_secs(v) <= limits.max_timeout => {
                n.timeout = Duration::from_secs(v);
                Some(v.to_string())
            }
            ("tsize", Some(_)) => Some(size.to_string()),
            _ => None,
        };
        if let Some(v) = accepted {
            n.oack.push((name.clone(), v));
        }
    }
    if let Some((i, v)) = window {
        let by_bytes = (limits.max_window_bytes as u64 / n.blksize as u64).max(1);
        n.windowsize = v.min(limits.max_windowsize.max(1) as u64).min(by_bytes) as u16;
        n.oack[i].1 = n.windowsize.to_string();
    }
    n
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tftp::packet::Mode;

    /// An octet-mode RRQ of `f` with these options (the session tests use it too).
    pub(crate) fn req(opts: &[(&str, &str)]) -> Request {
        Request { filename: "f".into(), mode: Mode::Octet, options: opts.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect() }
    }

    #[test]
    fn negotiation_answers_only_what_was_asked() {
        let l = Limits::default();
        assert!(negotiate(&req(&[]), 10, &l).oack.is_empty());
        let n = negotiate(&req(&[("tsize", "0")]), 10, &l);
        assert_eq!(n.oack, vec![("tsize".to_string(), "10".to_string())]);
        assert_eq!((n.blksize, n.windowsize), (512, 1));
        let n = negotiate(&req(&[("unknown", "1"), ("multicast", ""), ("blksize", "1468")]), 10, &l);
        assert_eq!(n.oack, vec![("blksize".to_string(), "1468".to_string())]);
        assert_eq!(n.blksize, 1468);
    }

    #[test]
    fn absurd_values_are_ignored_or_clamped() {
        let l = Limits { max_windowsize: 32, max_window_bytes: u32::MAX, ..Limits::default() };
        let n = negotiate(&req(&[("blksize", "7"), ("timeout", "0"), ("windowsize", "0"), ("tsize", "x")]), 10, &l);
        assert!(n.oack.is_empty());
        assert_eq!((n.blksize, n.windowsize, n.timeout), (512, 1, Duration::from_secs(1)));
        let n = negotiate(&req(&[("blksize", "99999999999999999999999"), ("timeout", "256"), ("windowsize", "65536")]), 10, &l);
        assert!(n.oack.is_empty());
        let n = negotiate(&req(&[("blksize", "70000"), ("windowsize", "1000"), ("timeout", "3")]), 10, &l);
        assert_eq!(n.blksize, 65464);
        assert_eq!(n.windowsize, 32);
        assert_eq!(n.timeout, Duration::from_secs(3));
        assert_eq!(n.oack.len(), 3);
        let n = negotiate(&req(&[("timeout", "255"), ("tsize", "0")]), 10, &l);
        assert_eq!(n.timeout, Duration::from_secs(1), "over max_timeout: the default");
        assert_eq!(n.oack, vec![("tsize".to_string(), "10".to_string())], "and not acknowledged");
        let n = negotiate(&req(&[("timeout", "10")]), 10, &l);
        assert_eq!((n.timeout, n.oack.len()), (Duration::from_secs(10), 1), "max_timeout itself is fine");
        let n = negotiate(&req(&[("blksize", "8"), ("BlkSize", "1024")]), 10, &l);
        assert_eq!(n.blksize, 8, "first of a repeated option counts");
        assert_eq!(n.oack.len(), 1);
    }

    #[test]
    fn windowsize_is_lowered_to_fit_the_window_bytes() {
        let l = Limits::default();
        // Whatever the order of the options.
        for opts in [[("windowsize", "16"), ("blksize", "8192")], [("blksize", "8192"), ("windowsize", "16")]] {
            let n = negotiate(&req(&opts), 10, &l);
            assert_eq!((n.blksize, n.windowsize), (8192, 8));
            assert!(n.oack.contains(&("windowsize".to_string(), "8".to_string())));
        }
        let n = negotiate(&req(&[("blksize", "1468"), ("windowsize", "16")]), 10, &l);
        assert_eq!(n.windowsize, 16, "16 x 1468 fits");
        let n = negotiate(&req(&[("blksize", "65464"), ("windowsize", "4")]), 10, &l);
        assert_eq!(n.windowsize, 1, "never below 1");
        let n = negotiate(&req(&[("windowsize", "200")]), 10, &l);
        assert_eq!(n.windowsize, 64, "max_windowsize at blksize 512");
    }
}
