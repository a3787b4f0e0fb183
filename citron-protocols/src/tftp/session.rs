//! One read transfer as a pure state machine: no sockets, no clock, no tokio.
//!
//! The server feeds it the packets that arrive on the transfer's socket ([`Session::on_packet`])
//! and wakes it when [`Step::wake_at`] passes ([`Session::on_timeout`]); each call returns a
//! [`Step`]: what to send, when to wake it next, and whether the transfer is over. DATA payloads
//! are named by block index ([`Send::Data`]) and read by the server, so the machine stays pure
//! and every rule below is unit-tested without a socket.
//!
//! Rules, with the RFC that asks for them:
//! - Option negotiation: [`negotiate`] (in its own module, re-exported here).
//! - Transfer: RFC 1350 §6 (a block shorter than blksize ends the transfer, so a size that is a
//!   multiple of blksize ends with an empty block); with `windowsize` N, RFC 7440 §4: send N blocks,
//!   the ACK of the last one opens the next window, the ACK of an earlier one restarts the window
//!   after it.
//! - A duplicate ACK is ignored and never answered with DATA (RFC 1123 §4.2.3.1, the Sorcerer's
//!   Apprentice bug): only the retransmission timer resends.
//! - Block numbers wrap 65535 → 0 (the convention of tftpd-hpa, U-Boot and most clients), so a
//!   transfer has no size limit; internally blocks are counted with `u64` indexes from 1.
//! - A client silent for `retries` timeouts in a row is gone: the transfer ends
//!   ([`Outcome::TimedOut`]), or [`Outcome::Unconfirmed`] if only the final ACK is missing.

use std::time::{Duration, Instant};

pub use super::negotiate::{negotiate, Limits, Negotiated, DEFAULT_BLKSIZE, MAX_BLKSIZE, MIN_BLKSIZE};
use super::packet::{ErrorCode, Packet};

/// Where a transfer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// OACK sent, waiting for ACK 0 (RFC 2347).
    Negotiating,
    /// Sending DATA: blocks up to `acked` are confirmed, up to `sent` are in flight.
    Sending {
        /// Highest block index the client acknowledged (0: none).
        acked: u64,
        /// Highest block index sent.
        sent: u64,
    },
    /// Over (see [`Outcome`]).
    Done,
}

/// Something to put on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Send {
    /// A control packet (OACK).
    Packet(Packet),
    /// DATA for block `index` (from 1; on the wire `index % 65536`): the server reads bytes
    /// [`Session::block_range`] of the transfer.
    Data {
        /// The block index.
        index: u64,
    },
}

/// How a transfer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The client acknowledged the last block.
    Complete,
    /// The client stopped answering before every block was sent.
    TimedOut,
    /// Every block, the last one included, was sent (and resent `retries` times), but the final
    /// ACK never came.
    ///
    /// Servers log this as **served**: a client that lost a block keeps acknowledging the block
    /// before it and a client that gives up usually sends an ERROR, so silence after the last
    /// block almost always means the client got everything and its final ACK was lost (RFC 1350
    /// lets the receiver of the last block stop once it has sent that ACK). A lab admin reading
    /// the access log wants to see that the DUT got its kernel, not a spurious abort; the TFTP
    /// server's own log line still says that the final ACK was missing.
    Unconfirmed,
    /// The client sent an ERROR (it gave up, or refused the OACK).
    ClientError {
        /// Its code.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
}

/// The answer to an event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    /// Packets to send, in order.
    pub send: Vec<Send>,
    /// When to call [`Session::on_timeout`]; `None` once done.
    pub wake_at: Option<Instant>,
    /// Set when the transfer is over: stop, close the socket.
    pub done: Option<Outcome>,
    /// Bytes newly acknowledged by this event (for the access log); with
    /// [`Outcome::Unconfirmed`], the bytes of the final window that was never acknowledged.
    pub delivered: u64,
}

/// One read transfer.
#[derive(Debug, Clone)]
pub struct Session {
    blksize: u64,
    window: u64,
    timeout: Duration,
    retries: u32,
    len: u64,
    last: u64,
    oack: Vec<(String, String)>,
    state: State,
    tries: u32,
    deadline: Instant,
}

impl Session {
    /// Starts a transfer of `len` bytes with the parameters `neg`: the first step sends the OACK
    /// or DATA 1 (and the rest of the first window).
    pub fn start(neg: Negotiated, len: u64, retries: u32, now: Instant) -> (Session, Step) {
        let blksize = neg.blksize.max(MIN_BLKSIZE) as u64;
        let mut s = Session {
            blksize,
            window: neg.windowsize.max(1) as u64,
            timeout: neg.timeout,
            retries,
            len,
            last: len / blksize + 1,
            oack: neg.oack,
            state: State::Negotiating,
            tries: 0,
            deadline: now + neg.timeout,
        };
        let step = if s.oack.is_empty() {
            s.state = State::Sending { acked: 0, sent: 0 };
            s.send_window(0, now)
        } else {
            Step { send: vec![Send::Packet(Packet::Oack { options: s.oack.clone() })], wake_at: Some(s.deadline), ..Step::default() }
        };
        (s, step)
    }

    /// Where the transfer is.
    pub fn state(&self) -> State {
        self.state
    }

    /// The block size in use.
    pub fn blksize(&self) -> u64 {
        self.blksize
    }

    /// The index of the final (short) block.
    pub fn last_block(&self) -> u64 {
        self.last
    }

    /// `true` while the last block has been sent but not acknowledged: the transfer's data is
    /// all out, only the final ACK is awaited (see [`Outcome::Unconfirmed`]).
    pub fn final_block_sent(&self) -> bool {
        matches!(self.state, State::Sending { sent, .. } if sent == self.last)
    }

    /// Bytes of the transfer the client has not acknowledged yet.
    pub fn unacknowledged_bytes(&self) -> u64 {
        match self.state {
            State::Negotiating => self.len,
            State::Sending { acked, .. } => self.len - (acked.saturating_mul(self.blksize)).min(self.len),
            State::Done => 0,
        }
    }

    /// The byte range `(offset, len)` of the transfer that block `index` carries.
    pub fn block_range(&self, index: u64) -> (u64, usize) {
        let off = (index.saturating_sub(1)).saturating_mul(self.blksize).min(self.len);
        (off, (self.len - off).min(self.blksize) as usize)
    }

    /// The block number on the wire for `index` (RFC 1350 numbers are 16 bits; they wrap to 0).
    pub fn wire_block(index: u64) -> u16 {
        (index & 0xffff) as u16
    }

    /// A packet arrived from the client's transfer ID.
    pub fn on_packet(&mut self, pkt: &Packet, now: Instant) -> Step {
        match (self.state, pkt) {
            (State::Done, _) => Step::default(),
            (_, Packet::Error { code, message }) => {
                self.state = State::Done;
                Step { done: Some(Outcome::ClientError { code: *code, message: message.clone() }), ..Step::default() }
            }
            (State::Negotiating, Packet::Ack { block: 0 }) => {
                self.state = State::Sending { acked: 0, sent: 0 };
                self.send_window(0, now)
            }
            (State::Sending { acked, sent }, Packet::Ack { block }) => {
                let ahead = block.wrapping_sub(Self::wire_block(acked)) as u64;
                if ahead == 0 || ahead > sent - acked {
                    // A duplicate or late ACK (or one from a previous wrap): RFC 1123 §4.2.3.1.
                    return self.idle();
                }
                let now_acked = acked + ahead;
                let delivered = (now_acked * self.blksize).min(self.len) - (acked * self.blksize).min(self.len);
                if now_acked == self.last {
                    self.state = State::Done;
                    return Step { done: Some(Outcome::Complete), delivered, ..Step::default() };
                }
                let mut step = self.send_window(now_acked, now);
                step.delivered = delivered;
                step
            }
            // Anything else on a read transfer's socket (DATA, a stray OACK, ACK ≠ 0 before the
            // OACK is acknowledged) is ignored: answering with an error would end the transfer.
            _ => self.idle(),
        }
    }

    /// The timer fired. Before the deadline this does nothing (spurious wake-up).
    pub fn on_timeout(&mut self, now: Instant) -> Step {
        if self.state == State::Done || now < self.deadline {
            return self.idle();
        }
        self.tries += 1;
        if self.tries > self.retries {
            // Unconfirmed: the unacknowledged rest counts as delivered (see the variant).
            let (outcome, delivered) =
                if self.final_block_sent() { (Outcome::Unconfirmed, self.unacknowledged_bytes()) } else { (Outcome::TimedOut, 0) };
            self.state = State::Done;
            return Step { done: Some(outcome), delivered, ..Step::default() };
        }
        self.deadline = now + self.timeout;
        let send = match self.state {
            State::Negotiating => vec![Send::Packet(Packet::Oack { options: self.oack.clone() })],
            // RFC 7440 §4: on timeout the whole unacknowledged window is sent again.
            State::Sending { acked, sent } => (acked + 1..=sent).map(|index| Send::Data { index }).collect(),
            State::Done => Vec::new(),
        };
        Step { send, wake_at: Some(self.deadline), ..Step::default() }
    }

    fn idle(&self) -> Step {
        let wake_at = if self.state == State::Done { None } else { Some(self.deadline) };
        Step { wake_at, ..Step::default() }
    }

    /// Sends the window after block `acked`, resets the timer and the retry count.
    fn send_window(&mut self, acked: u64, now: Instant) -> Step {
        let sent = (acked + self.window).min(self.last);
        self.state = State::Sending { acked, sent };
        self.tries = 0;
        self.deadline = now + self.timeout;
        Step { send: (acked + 1..=sent).map(|index| Send::Data { index }).collect(), wake_at: Some(self.deadline), ..Step::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tftp::negotiate::tests::req;

    fn plain(blksize: u16, windowsize: u16) -> Negotiated {
        Negotiated { blksize, windowsize, timeout: Duration::from_secs(1), oack: vec![] }
    }

    fn data(step: &Step) -> Vec<u64> {
        step.send
            .iter()
            .filter_map(|s| match s {
                Send::Data { index } => Some(*index),
                Send::Packet(_) => None,
            })
            .collect()
    }

    fn ack(b: u64) -> Packet {
        Packet::Ack { block: Session::wire_block(b) }
    }

    #[test]
    fn lockstep_transfer_with_exact_multiple_ends_with_empty_block() {
        let t0 = Instant::now();
        let (mut s, st) = Session::start(plain(512, 1), 1024, 3, t0);
        assert_eq!(data(&st), vec![1]);
        assert_eq!(s.block_range(3), (1024, 0));
        let st = s.on_packet(&ack(1), t0);
        assert_eq!((data(&st), st.delivered), (vec![2], 512));
        let st = s.on_packet(&ack(2), t0);
        assert_eq!((data(&st), st.delivered), (vec![3], 512));
        let st = s.on_packet(&ack(3), t0);
        assert_eq!(st.done, Some(Outcome::Complete));
        assert_eq!(st.delivered, 0);
    }

    #[test]
    fn empty_file_is_one_empty_block() {
        let t0 = Instant::now();
        let (mut s, st) = Session::start(plain(512, 4), 0, 3, t0);
        assert_eq!(data(&st), vec![1]);
        assert_eq!(s.block_range(1), (0, 0));
        assert_eq!(s.on_packet(&ack(1), t0).done, Some(Outcome::Complete));
    }

    #[test]
    fn oack_then_ack0_starts_data() {
        let t0 = Instant::now();
        let n = negotiate(&req(&[("blksize", "1000"), ("tsize", "0")]), 1500, &Limits::default());
        let (mut s, st) = Session::start(n, 1500, 3, t0);
        assert!(matches!(&st.send[..], [Send::Packet(Packet::Oack { .. })]));
        assert_eq!(s.state(), State::Negotiating);
        // An ACK other than 0 before the OACK is acknowledged is ignored.
        assert!(s.on_packet(&ack(1), t0).send.is_empty());
        let st = s.on_packet(&ack(0), t0);
        assert_eq!(data(&st), vec![1]);
        assert_eq!(s.block_range(2), (1000, 500));
        // A duplicate ACK 0 is ignored.
        assert!(s.on_packet(&ack(0), t0).send.is_empty());
    }

    #[test]
    fn oack_is_retransmitted_on_timeout() {
        let t0 = Instant::now();
        let n = negotiate(&req(&[("tsize", "0")]), 5, &Limits::default());
        let (mut s, st) = Session::start(n, 5, 3, t0);
        let wake = st.wake_at.unwrap();
        assert!(s.on_timeout(wake - Duration::from_millis(1)).send.is_empty(), "early wake-up does nothing");
        let st = s.on_timeout(wake);
        assert!(matches!(&st.send[..], [Send::Packet(Packet::Oack { .. })]));
    }

    #[test]
    fn duplicate_ack_is_ignored_no_sorcerers_apprentice() {
        let t0 = Instant::now();
        let (mut s, _) = Session::start(plain(512, 1), 4096, 3, t0);
        let st = s.on_packet(&ack(1), t0);
        assert_eq!(data(&st), vec![2]);
        // The client's retransmitted ACK 1 (its DATA 2 was late) must not resend DATA 2.
        let dup = s.on_packet(&ack(1), t0);
        assert!(dup.send.is_empty());
        assert_eq!(dup.delivered, 0);
        let st = s.on_packet(&ack(2), t0);
        assert_eq!(data(&st), vec![3]);
        // A late ACK from far behind is ignored too.
        assert!(s.on_packet(&ack(1), t0).send.is_empty());
        // An ACK for a block never sent is ignored.
        assert!(s.on_packet(&ack(7), t0).send.is_empty());
    }

    #[test]
    fn retransmit_on_timeout_then_give_up() {
        let t0 = Instant::now();
        let (mut s, st) = Session::start(plain(512, 1), 2000, 2, t0);
        let mut wake = st.wake_at.unwrap();
        let st = s.on_packet(&ack(1), t0);
        assert_eq!(data(&st), vec![2]);
        wake = st.wake_at.unwrap().max(wake);
        let st = s.on_timeout(wake);
        assert_eq!(data(&st), vec![2], "the unacknowledged block is resent after wake_at");
        let st = s.on_timeout(st.wake_at.unwrap());
        assert_eq!(data(&st), vec![2]);
        let st = s.on_timeout(st.wake_at.unwrap());
        assert_eq!(st.done, Some(Outcome::TimedOut), "a vanished client ends the transfer");
        assert_eq!(st.wake_at, None);
        assert_eq!(s.state(), State::Done);
    }

    #[test]
    fn silence_after_the_last_block_is_unconfirmed_not_timed_out() {
        let t0 = Instant::now();
        // Lockstep: blocks 1 and 2 acknowledged, block 3 (the last) sent, its ACK never comes.
        let (mut s, _) = Session::start(plain(512, 1), 1100, 1, t0);
        assert!(!s.final_block_sent());
        s.on_packet(&ack(1), t0);
        let st = s.on_packet(&ack(2), t0);
        assert_eq!(data(&st), vec![3]);
        assert!(s.final_block_sent());
        assert_eq!(s.unacknowledged_bytes(), 76);
        let st = s.on_timeout(st.wake_at.unwrap());
        assert_eq!(data(&st), vec![3]);
        let st = s.on_timeout(st.wake_at.unwrap());
        assert_eq!(st.done, Some(Outcome::Unconfirmed));
        assert_eq!(st.delivered, 76, "the last block counts as delivered");
        assert_eq!(s.unacknowledged_bytes(), 0);
        // With a window: the final window (blocks 5..=7) out, the client silent.
        let (mut s, _) = Session::start(plain(512, 4), 512 * 6 + 1, 0, t0);
        let st = s.on_packet(&ack(4), t0);
        assert_eq!(data(&st), vec![5, 6, 7]);
        assert_eq!(s.unacknowledged_bytes(), 1025);
        let st = s.on_timeout(st.wake_at.unwrap());
        assert_eq!((st.done, st.delivered), (Some(Outcome::Unconfirmed), 1025));
        // The client silent before the last block was sent: timed out.
        let (mut s, st) = Session::start(plain(512, 4), 512 * 6 + 1, 0, t0);
        assert!(!s.final_block_sent());
        let st = s.on_timeout(st.wake_at.unwrap());
        assert_eq!((st.done, st.delivered), (Some(Outcome::TimedOut), 0));
        // Nothing acknowledged before an OACK is answered: timed out too.
        let n = negotiate(&req(&[("tsize", "0")]), 5, &Limits::default());
        let (mut s, st) = Session::start(n, 5, 0, t0);
        assert_eq!(s.unacknowledged_bytes(), 5);
        assert_eq!(s.on_timeout(st.wake_at.unwrap()).done, Some(Outcome::TimedOut));
    }

    #[test]
    fn an_ack_resets_the_retry_count() {
        let t0 = Instant::now();
        let (mut s, st) = Session::start(plain(512, 1), 5000, 1, t0);
        let st = s.on_timeout(st.wake_at.unwrap());
        assert_eq!(data(&st), vec![1]);
        let st = s.on_packet(&ack(1), st.wake_at.unwrap());
        let st = s.on_timeout(st.wake_at.unwrap());
        assert_eq!(data(&st), vec![2], "one retry allowed again after progress");
    }

    #[test]
    fn rollover_past_65535() {
        let t0 = Instant::now();
        // 40 MiB at 512: 81921 blocks, the wire number wraps once.
        let len = 40 * 1024 * 1024;
        let (mut s, st) = Session::start(plain(512, 1), len, 3, t0);
        assert_eq!(data(&st), vec![1]);
        assert_eq!(s.last_block(), 81921);
        let mut total = 0;
        let mut wire_seen_zero = false;
        for i in 1..=s.last_block() {
            let st = s.on_packet(&ack(i), t0);
            total += st.delivered;
            if i == s.last_block() {
                assert_eq!(st.done, Some(Outcome::Complete));
            } else {
                assert_eq!(data(&st), vec![i + 1]);
                wire_seen_zero |= Session::wire_block(i + 1) == 0;
            }
        }
        assert!(wire_seen_zero);
        assert_eq!(total, len);
        assert_eq!(Session::wire_block(65536), 0);
        assert_eq!(Session::wire_block(65537), 1);
    }

    #[test]
    fn rollover_inside_a_window() {
        let t0 = Instant::now();
        let (mut s, _) = Session::start(plain(8, 4), 8 * 70000, 3, t0);
        for i in (4..65532).step_by(4) {
            s.on_packet(&ack(i), t0);
        }
        let st = s.on_packet(&ack(65532), t0);
        assert_eq!(data(&st), vec![65533, 65534, 65535, 65536]);
        // The client acknowledges wire block 0, which is index 65536.
        let st = s.on_packet(&Packet::Ack { block: 0 }, t0);
        assert_eq!(data(&st), vec![65537, 65538, 65539, 65540]);
        assert_eq!(st.delivered, 32);
    }

    #[test]
    fn windowsize_sends_a_window_and_restarts_after_partial_ack() {
        let t0 = Instant::now();
        let n = negotiate(&req(&[("windowsize", "4")]), 512 * 10 + 1, &Limits::default());
        let (mut s, _) = Session::start(n, 512 * 10 + 1, 3, t0);
        assert_eq!(s.last_block(), 11);
        let st = s.on_packet(&ack(0), t0);
        assert_eq!(data(&st), vec![1, 2, 3, 4]);
        let st = s.on_packet(&ack(4), t0);
        assert_eq!(data(&st), vec![5, 6, 7, 8]);
        // Block 7 was lost: the client acknowledges 6, the window restarts at 7.
        let st = s.on_packet(&ack(6), t0);
        assert_eq!(data(&st), vec![7, 8, 9, 10]);
        assert_eq!(st.delivered, 1024);
        // A late ACK 5 changes nothing.
        assert!(s.on_packet(&ack(5), t0).send.is_empty());
        // Timeout resends the whole outstanding window.
        let st = s.on_timeout(t0 + Duration::from_secs(1));
        assert_eq!(data(&st), vec![7, 8, 9, 10]);
        let st = s.on_packet(&ack(10), t0);
        assert_eq!(data(&st), vec![11], "the last window is cut at the last block");
        let st = s.on_packet(&ack(11), t0);
        assert_eq!(st.done, Some(Outcome::Complete));
        assert_eq!(st.delivered, 1);
    }

    #[test]
    fn client_error_ends_the_transfer() {
        let t0 = Instant::now();
        let (mut s, _) = Session::start(negotiate(&req(&[("tsize", "0")]), 1, &Limits::default()), 1, 3, t0);
        let st = s.on_packet(&Packet::Error { code: ErrorCode::OPTION_REFUSED, message: "no".into() }, t0);
        assert!(matches!(st.done, Some(Outcome::ClientError { code: ErrorCode::OPTION_REFUSED, .. })));
        assert!(s.on_packet(&ack(0), t0).send.is_empty());
        assert!(s.on_timeout(t0 + Duration::from_secs(100)).send.is_empty());
    }

    #[test]
    fn stray_packets_are_ignored() {
        let t0 = Instant::now();
        let (mut s, _) = Session::start(plain(512, 1), 2000, 3, t0);
        assert!(s.on_packet(&Packet::Data { block: 1, data: bytes::Bytes::new() }, t0).send.is_empty());
        assert!(s.on_packet(&Packet::Oack { options: vec![] }, t0).send.is_empty());
        assert_eq!(s.state(), State::Sending { acked: 0, sent: 1 });
    }
}
