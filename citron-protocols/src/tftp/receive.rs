//! One write transfer (a WRQ: the DUT sends a file) as a pure state machine: no sockets, no
//! clock (the caller passes the time in).
//!
//! RFC 1350 lockstep: the server answers the request with ACK 0 (or, with options, an OACK,
//! RFC 2347), then each DATA block in order with its ACK; a block shorter than `blksize` is the
//! last. A repeated block (the client missed our ACK) is acknowledged again and not taken
//! twice; other block numbers are ignored; the block number rolls over past 65535 as for reads.
//! `windowsize` is not offered for writes (the server strips it before negotiating), so a
//! client always waits for each ACK.
//!
//! The final ACK is the caller's to send ([`Receiver::ack`]) once the file is durable: a
//! client that saw it may forget the file.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::negotiate::Negotiated;
use super::packet::{ErrorCode, Packet};

/// What the caller does next.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RStep {
    /// A packet to send now (ACK, OACK or ERROR).
    pub send: Option<Packet>,
    /// The next piece of the file, in order, to take in.
    pub take: Option<Bytes>,
    /// The piece taken is the last: finish the file, then send [`Receiver::ack`].
    pub last: bool,
    /// The transfer is over without a file: why.
    pub failed: Option<Failed>,
    /// When to call [`Receiver::on_timeout`] if nothing arrives.
    pub wake_at: Option<Instant>,
}

/// Why a write transfer ended without a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failed {
    /// The client sent an ERROR.
    ClientError {
        /// Its code.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// `retries` timeouts in a row.
    TimedOut,
    /// A DATA block larger than the negotiated `blksize` (answered with an ERROR).
    Oversized,
}

/// One write transfer.
#[derive(Debug)]
pub struct Receiver {
    blksize: usize,
    timeout: Duration,
    retries: u32,
    /// The index of the next block wanted (1 for the first), counting rollovers.
    next: u64,
    /// What was sent last (ACK or OACK), resent on a timeout or a repeated block.
    last_sent: Packet,
    tries: u32,
    deadline: Instant,
    over: bool,
}

impl Receiver {
    /// Starts the transfer agreed in `neg`: the first packet to send is the OACK (options
    /// were agreed) or ACK 0.
    pub fn start(neg: &Negotiated, retries: u32, now: Instant) -> (Receiver, RStep) {
        let first = if neg.oack.is_empty() { Packet::Ack { block: 0 } } else { Packet::Oack { options: neg.oack.clone() } };
        let r = Receiver {
            blksize: neg.blksize as usize,
            timeout: neg.timeout,
            retries,
            next: 1,
            last_sent: first.clone(),
            tries: 0,
            deadline: now + neg.timeout,
            over: false,
        };
        let step = RStep { send: Some(first), wake_at: Some(r.deadline), ..RStep::default() };
        (r, step)
    }

    fn wire(index: u64) -> u16 {
        (index & 0xffff) as u16
    }

    /// Bytes per block.
    pub fn blksize(&self) -> usize {
        self.blksize
    }

    /// A packet from the client.
    pub fn on_packet(&mut self, p: &Packet, now: Instant) -> RStep {
        if self.over {
            return RStep::default();
        }
        match p {
            Packet::Data { data, .. } if data.len() > self.blksize => {
                self.over = true;
                let send = Packet::Error { code: ErrorCode::ILLEGAL_OPERATION, message: "block larger than the negotiated blksize".into() };
                RStep { send: Some(send), failed: Some(Failed::Oversized), ..RStep::default() }
            }
            Packet::Data { block, data } if *block == Self::wire(self.next) => {
                let last = data.len() < self.blksize;
                self.tries = 0;
                self.deadline = now + self.timeout;
                let ack = Packet::Ack { block: *block };
                self.last_sent = ack.clone();
                self.next += 1;
                if last {
                    // The caller acknowledges once the file is kept; repeats get it then.
                    self.over = true;
                    return RStep { take: Some(data.clone()), last: true, ..RStep::default() };
                }
                RStep { send: Some(ack), take: Some(data.clone()), wake_at: Some(self.deadline), ..RStep::default() }
            }
            // The client missed our ACK of the block before: it again, nothing taken.
            Packet::Data { block, .. } if self.next > 1 && *block == Self::wire(self.next - 1) => {
                RStep { send: Some(self.last_sent.clone()), wake_at: Some(self.deadline), ..RStep::default() }
            }
            Packet::Error { code, message } => {
                self.over = true;
                RStep { failed: Some(Failed::ClientError { code: *code, message: message.clone() }), ..RStep::default() }
            }
            _ => RStep { wake_at: Some(self.deadline), ..RStep::default() },
        }
    }

    /// The timer fired: resend what was sent last, or give up after `retries` in a row.
    pub fn on_timeout(&mut self, now: Instant) -> RStep {
        if self.over {
            return RStep::default();
        }
        if now < self.deadline {
            return RStep { wake_at: Some(self.deadline), ..RStep::default() };
        }
        self.tries += 1;
        if self.tries > self.retries {
            self.over = true;
            return RStep { failed: Some(Failed::TimedOut), ..RStep::default() };
        }
        self.deadline = now + self.timeout;
        RStep { send: Some(self.last_sent.clone()), wake_at: Some(self.deadline), ..RStep::default() }
    }

    /// The ACK of the last block taken (after the file is kept).
    pub fn ack(&self) -> Packet {
        self.last_sent.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neg(blksize: u16, oack: bool) -> Negotiated {
        Negotiated {
            blksize,
            windowsize: 1,
            timeout: Duration::from_secs(1),
            oack: if oack { vec![("blksize".into(), blksize.to_string())] } else { vec![] },
        }
    }

    fn data(block: u16, n: usize) -> Packet {
        Packet::Data { block, data: Bytes::from(vec![b'x'; n]) }
    }

    #[test]
    fn blocks_are_taken_in_order_once_and_the_last_is_acknowledged_by_the_caller() {
        let t = Instant::now();
        let (mut r, s) = Receiver::start(&neg(4, false), 3, t);
        assert_eq!(s.send, Some(Packet::Ack { block: 0 }));
        let s = r.on_packet(&data(1, 4), t);
        assert_eq!((s.send, s.take.map(|b| b.len()), s.last), (Some(Packet::Ack { block: 1 }), Some(4), false));
        // Our ACK 1 was lost: block 1 again is acknowledged again, not taken.
        let s = r.on_packet(&data(1, 4), t);
        assert_eq!((s.send, s.take), (Some(Packet::Ack { block: 1 }), None));
        // Out of order: ignored.
        assert_eq!(r.on_packet(&data(5, 4), t).take, None);
        let s = r.on_packet(&data(2, 1), t);
        assert_eq!((s.send, s.take.map(|b| b.len()), s.last), (None, Some(1), true));
        assert_eq!(r.ack(), Packet::Ack { block: 2 });
        assert_eq!(r.on_packet(&data(3, 1), t), RStep::default(), "over");
    }

    #[test]
    fn options_are_answered_with_an_oack_and_oversized_blocks_refused() {
        let t = Instant::now();
        let (mut r, s) = Receiver::start(&neg(8, true), 3, t);
        assert!(matches!(s.send, Some(Packet::Oack { .. })));
        let s = r.on_packet(&data(1, 9), t);
        assert_eq!(s.failed, Some(Failed::Oversized));
        assert!(matches!(s.send, Some(Packet::Error { code: ErrorCode::ILLEGAL_OPERATION, .. })));
    }

    #[test]
    fn silence_resends_then_gives_up_and_block_numbers_roll_over() {
        let t = Instant::now();
        let (mut r, _) = Receiver::start(&neg(1, false), 2, t);
        let later = |s: u64| t + Duration::from_secs(s);
        assert_eq!(r.on_timeout(later(1)).send, Some(Packet::Ack { block: 0 }));
        assert_eq!(r.on_timeout(later(2)).send, Some(Packet::Ack { block: 0 }));
        assert_eq!(r.on_timeout(later(3)).failed, Some(Failed::TimedOut));

        let (mut r, _) = Receiver::start(&neg(1, false), 2, t);
        for i in 1..=65536u64 {
            let s = r.on_packet(&data((i & 0xffff) as u16, 1), t);
            assert!(s.take.is_some(), "block {i}");
        }
        let s = r.on_packet(&data(1, 0), t);
        assert!(s.last && s.take.is_some(), "block 65537 is wire block 1 after the rollover");
        assert_eq!(r.ack(), Packet::Ack { block: 1 });
    }
}
