//! The transmission phase as a pure state machine: no sockets, no clock, no tokio.
//!
//! The connection feeds it the bytes that arrived and asks for the next thing to do
//! ([`Transmission::next`]): a [`Command`] to carry out on the export, a read to stream in
//! pieces, replies to write first, or nothing until more bytes come or an I/O finishes
//! ([`Transmission::finished`]). Requests the protocol itself refuses (unknown command or flags,
//! a read larger than [`MAX_PAYLOAD`]) are answered here, into `out`; everything about the disk
//! (range, read-only, a withdrawn disk) is the export's decision, made by the core.
//!
//! # Memory
//! The read and write buffers of the requests in flight, plus replies waiting to be written,
//! stay within the connection's budget (`limits.nbd_bytes_in_flight`; one request is always
//! admitted, so a write as large as [`MAX_PAYLOAD`] still works): requests wait in the socket
//! until replies leave. A read larger than the budget is answered in pieces once every request
//! before it is answered (simple replies cannot interleave). A client that never reads its
//! replies therefore holds at most the budget, whatever it asks. A write announcing more than
//! [`MAX_PAYLOAD`] closes the connection: its payload could not be buffered, and skipping it
//! would be reading unbounded data for nothing.

use bytes::{Bytes, BytesMut};
use citron_core::serve::BlockError;

use super::wire::{self, cflag, cmd, errno, WireError};
use super::MAX_PAYLOAD;

/// Requests of one connection served at once.
pub(crate) const MAX_IN_FLIGHT: usize = 16;

/// What a command does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// `NBD_CMD_READ`.
    Read,
    /// `NBD_CMD_WRITE` with its payload.
    Write(Bytes),
    /// `NBD_CMD_WRITE_ZEROES`.
    WriteZeroes,
    /// `NBD_CMD_TRIM`.
    Trim,
    /// `NBD_CMD_FLUSH`.
    Flush,
}

/// A request to carry out on the export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Command {
    /// What to do.
    pub op: Op,
    /// Echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub len: u32,
    /// `NBD_CMD_FLAG_FUA`: durable before the reply.
    pub fua: bool,
    /// Bytes it holds until [`Transmission::finished`]: its read buffer or write payload.
    pub cost: usize,
}

/// What the connection does next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Nothing can start now: wait for bytes (if [`Transmission::wants_input`]) or for an I/O
    /// to finish.
    Wait,
    /// Write the replies in `out` first, then ask again.
    Flush,
    /// Carry this out; once its reply is ready call [`Transmission::finished`] with its cost.
    Run(Command),
    /// A read larger than the budget, with nothing in flight and `out` empty: answer it in
    /// pieces of [`Transmission::piece`] bytes before asking again.
    Stream(Command),
}

/// The client broke the protocol; the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TransmissionError {
    /// Bad request magic (negotiation bytes, garbage).
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A write too large to buffer.
    #[error("write of {0} bytes exceeds the maximum of {MAX_PAYLOAD}")]
    WriteTooLarge(u32),
}

/// One connection's transmission phase.
#[derive(Debug)]
pub(crate) struct Transmission {
    structured: bool,
    budget: usize,
    /// Bytes held by commands in flight.
    held: usize,
    in_flight: usize,
    /// `NBD_CMD_DISC` or end of input: finish what is in flight, read nothing more.
    closing: bool,
    /// The budget is spent: no request is read until a command finishes.
    blocked: bool,
    /// A read to stream once everything before it is answered.
    large: Option<Command>,
}

/// Bytes a request holds while in flight: its read buffer or its write payload.
fn cost(req: &wire::Request) -> usize {
    match req.kind {
        cmd::READ | cmd::WRITE => req.len as usize,
        _ => 0,
    }
}

impl Transmission {
    /// Starts transmission; `structured` if `NBD_OPT_STRUCTURED_REPLY` was acknowledged,
    /// `budget` the bytes of buffers the connection may hold (at least 8 KiB).
    pub(crate) fn new(structured: bool, budget: usize) -> Transmission {
        Transmission { structured, budget: budget.max(8192), held: 0, in_flight: 0, closing: false, blocked: false, large: None }
    }

    /// Structured replies were negotiated.
    pub(crate) fn structured(&self) -> bool {
        self.structured
    }

    /// Reads longer than the budget are streamed in pieces this long, so that one piece is
    /// read while the one before is written.
    pub(crate) fn piece(&self) -> usize {
        self.budget / 2
    }

    /// The next thing to do with the bytes in `input` (a complete request is consumed from it;
    /// room is reserved for a write's payload). Replies to requests refused by the protocol are
    /// appended to `out`.
    pub(crate) fn next(&mut self, input: &mut BytesMut, out: &mut Vec<u8>) -> Result<Next, TransmissionError> {
        loop {
            if self.large.is_some() {
                if self.in_flight > 0 {
                    return Ok(Next::Wait);
                }
                if !out.is_empty() {
                    return Ok(Next::Flush);
                }
                return Ok(Next::Stream(self.large.take().expect("checked")));
            }
            if self.closing || self.in_flight >= MAX_IN_FLIGHT {
                return Ok(Next::Wait);
            }
            let Some(req) = wire::parse_request(input)? else { return Ok(Next::Wait) };
            if req.kind == cmd::WRITE && req.len > MAX_PAYLOAD {
                return Err(TransmissionError::WriteTooLarge(req.len));
            }
            let large = req.kind == cmd::READ && req.len as usize > self.budget;
            let c = if large { 0 } else { cost(&req) };
            let pending = self.held + out.len();
            if c > 0 && pending > 0 && pending + c > self.budget {
                if !out.is_empty() {
                    return Ok(Next::Flush);
                }
                // `held > 0`: a command in flight will finish and free it.
                self.blocked = true;
                return Ok(Next::Wait);
            }
            let need = wire::REQUEST_LEN + req.payload_len();
            if input.len() < need {
                input.reserve(need - input.len());
                return Ok(Next::Wait);
            }
            let mut frame = input.split_to(need);
            let payload = frame.split_off(wire::REQUEST_LEN).freeze();
            let known = cflag::FUA | cflag::NO_HOLE | cflag::DF;
            if req.flags & !known != 0 {
                push_error(out, self.structured, req.cookie, errno::EINVAL, "unknown command flags");
                continue;
            }
            let op = match req.kind {
                cmd::READ if req.len > MAX_PAYLOAD => {
                    push_error(out, self.structured, req.cookie, errno::EINVAL, "read larger than the maximum block size");
                    continue;
                }
                cmd::READ => Op::Read,
                cmd::WRITE => Op::Write(payload),
                cmd::WRITE_ZEROES => Op::WriteZeroes,
                cmd::TRIM => Op::Trim,
                cmd::FLUSH => Op::Flush,
                cmd::DISC => {
                    self.closing = true;
                    continue;
                }
                other => {
                    push_error(out, self.structured, req.cookie, errno::EINVAL, &format!("unknown command {other}"));
                    continue;
                }
            };
            let command = Command { op, cookie: req.cookie, offset: req.offset, len: req.len, fua: req.flags & cflag::FUA != 0, cost: c };
            if large {
                self.large = Some(command);
                continue;
            }
            self.held += c;
            self.in_flight += 1;
            return Ok(Next::Run(command));
        }
    }

    /// A command from [`Next::Run`] has its reply: its bytes are free again.
    pub(crate) fn finished(&mut self, cost: usize) {
        self.held -= cost;
        self.in_flight -= 1;
        self.blocked = false;
    }

    /// The client closed its side: finish what is in flight, then end.
    pub(crate) fn on_eof(&mut self) {
        self.closing = true;
    }

    /// Whether reading more bytes could start something.
    pub(crate) fn wants_input(&self) -> bool {
        !self.closing && !self.blocked && self.large.is_none() && self.in_flight < MAX_IN_FLIGHT
    }

    /// Commands are in flight.
    pub(crate) fn busy(&self) -> bool {
        self.in_flight > 0
    }

    /// Disconnected and everything answered: close.
    pub(crate) fn done(&self) -> bool {
        self.closing && self.in_flight == 0 && self.large.is_none()
    }
}

/// Bytes before a read's data: a simple reply header, or a structured `OFFSET_DATA` chunk header.
pub(crate) fn read_header_len(structured: bool) -> usize {
    if structured {
        wire::STRUCTURED_READ_LEN
    } else {
        wire::SIMPLE_REPLY_LEN
    }
}

/// Writes the header of a successful read of `len` bytes into the first
/// [`read_header_len`] bytes of `v`.
pub(crate) fn put_read_header(v: &mut [u8], structured: bool, cookie: u64, offset: u64, len: u32) {
    if structured {
        wire::put_structured_read(v, cookie, offset, len);
    } else {
        wire::put_simple_reply(v, 0, cookie);
    }
}

/// Appends the complete reply to a request that failed with `error` (0: succeeded).
pub(crate) fn push_error(out: &mut Vec<u8>, structured: bool, cookie: u64, error: u32, message: &str) {
    if structured {
        wire::encode_structured_done(out, cookie, error, message);
    } else {
        let at = out.len();
        out.resize(at + wire::SIMPLE_REPLY_LEN, 0);
        wire::put_simple_reply(&mut out[at..], error, cookie);
    }
}

/// The complete reply to a request with no data in its answer.
pub(crate) fn done_reply(structured: bool, cookie: u64, result: Result<(), BlockError>) -> Vec<u8> {
    let mut v = Vec::with_capacity(32);
    match result {
        Ok(()) => push_error(&mut v, structured, cookie, 0, ""),
        Err(e) => push_error(&mut v, structured, cookie, super::error::errno(&e), &e.to_string()),
    }
    v
}

#[cfg(test)]
#[path = "transmit_tests.rs"]
mod tests;
