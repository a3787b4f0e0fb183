//! The fixed-newstyle negotiation as a pure state machine: no sockets, no clock, no tokio.
//!
//! [`Negotiation::start`] appends the greeting; the connection then feeds it whatever bytes have
//! arrived ([`Negotiation::on_input`]), which consumes every complete message, appends the
//! replies to `out` and says what next: read more, close, or start transmission with the export
//! chosen. What an option needs to know about exports comes through [`Exports`], behind which
//! the core decides (what a DUT may list, describe and open, the default export for the empty
//! name); the machine only speaks the protocol.
//!
//! Rules (NetworkBlockDevice/nbd `doc/proto.md`, "Newstyle negotiation"):
//! - Option data longer than [`MAX_OPTION_LEN`] closes the connection before any of it is
//!   buffered; so does a wrong magic, e.g. transmission requests sent before an export was chosen.
//! - Unknown options answer `NBD_REP_ERR_UNSUP` and the negotiation goes on.
//! - `NBD_OPT_EXPORT_NAME` has no error reply: a refusal closes the connection.
//! - `NBD_OPT_GO` and `NBD_OPT_INFO` answer `NBD_INFO_EXPORT` and the `NBD_INFO_*` asked for;
//!   only `GO` opens the export.

use bytes::{Buf, BytesMut};
use citron_core::serve::ExportInfo;

use super::wire::{self, info, opt, rep, tflag, WireError};
use super::MAX_PAYLOAD;

/// Longest option data citron reads: a 4096-byte name plus a few information requests.
pub(crate) const MAX_OPTION_LEN: u32 = 8192;

/// What the negotiation asks about exports; the core answers.
pub(crate) trait Exports {
    /// What opening an export gives the connection.
    type Open;
    /// The exports this client may list (`NBD_OPT_LIST`).
    fn list(&mut self) -> Vec<ExportInfo>;
    /// What `name` is, without opening it (`NBD_OPT_INFO`).
    fn describe(&mut self, name: &str) -> Result<ExportInfo, Refusal>;
    /// Opens `name` (`NBD_OPT_GO`, `NBD_OPT_EXPORT_NAME`): what it is, and the opened export.
    fn open(&mut self, name: &str) -> Result<(ExportInfo, Self::Open), Refusal>;
}

/// An export refused: the option reply (`NBD_REP_ERR_*`) and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// `NBD_REP_ERR_*`.
    pub rep: u32,
    /// For the client.
    pub message: String,
}

/// What to do after [`Negotiation::on_input`]; in every case send `out` first.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Progress<E> {
    /// Read more bytes and call again.
    More,
    /// Close the connection (the client aborted, or an `NBD_OPT_EXPORT_NAME` was refused).
    Close,
    /// Transmission starts on `export`; bytes left in the input are its first requests.
    Chosen {
        /// What [`Exports::open`] gave.
        export: E,
        /// `NBD_OPT_STRUCTURED_REPLY` was acknowledged: reads answer with structured chunks.
        structured: bool,
    },
}

/// The client broke the protocol; the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NegotiationError {
    /// Bad magic, bad client flags, oversize option.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// `NBD_OPT_EXPORT_NAME` data that is not UTF-8.
    #[error("export name is not UTF-8")]
    NameNotUtf8,
    /// Input after the negotiation ended.
    #[error("the negotiation is over")]
    Finished,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the client's 4 flag bytes.
    ClientFlags,
    /// Reading options.
    Options,
    /// Closed or chosen.
    Done,
}

/// One connection's negotiation.
#[derive(Debug)]
pub(crate) struct Negotiation {
    state: State,
    /// The 124 zero bytes after `NBD_OPT_EXPORT_NAME` are sent (the client did not decline them).
    zeroes: bool,
    structured: bool,
}

/// The transmission flags for an export: what the client is told it may do.
pub(crate) fn transmission_flags(info: &ExportInfo) -> u16 {
    let mut f = tflag::HAS_FLAGS | tflag::SEND_FLUSH | tflag::SEND_FUA | tflag::CAN_MULTI_CONN;
    if info.readonly {
        f |= tflag::READ_ONLY;
    } else {
        f |= tflag::SEND_TRIM | tflag::SEND_WRITE_ZEROES;
    }
    f
}

impl Negotiation {
    /// A new negotiation; appends the server greeting to `out`.
    pub(crate) fn start(out: &mut Vec<u8>) -> Negotiation {
        wire::encode_greeting(out);
        Negotiation { state: State::ClientFlags, zeroes: true, structured: false }
    }

    /// Consumes every complete message in `input`, appending replies to `out`. Incomplete
    /// messages stay in `input` (with room reserved for the rest, at most [`MAX_OPTION_LEN`]).
    pub(crate) fn on_input<X: Exports>(
        &mut self,
        input: &mut BytesMut,
        exports: &mut X,
        out: &mut Vec<u8>,
    ) -> Result<Progress<X::Open>, NegotiationError> {
        loop {
            match self.state {
                State::Done => return Err(NegotiationError::Finished),
                State::ClientFlags => {
                    let Some(flags) = wire::parse_client_flags(input)? else { return Ok(Progress::More) };
                    input.advance(4);
                    self.zeroes = flags & wire::CLIENT_NO_ZEROES == 0;
                    self.state = State::Options;
                }
                State::Options => {
                    let Some(h) = wire::parse_option_header(input, MAX_OPTION_LEN)? else { return Ok(Progress::More) };
                    let total = wire::OPTION_HEADER_LEN + h.len as usize;
                    if input.len() < total {
                        input.reserve(total - input.len());
                        return Ok(Progress::More);
                    }
                    let message = input.split_to(total);
                    match self.option(h.option, &message[wire::OPTION_HEADER_LEN..], exports, out)? {
                        Progress::More => {}
                        done => {
                            self.state = State::Done;
                            return Ok(done);
                        }
                    }
                }
            }
        }
    }

    /// Answers one option.
    fn option<X: Exports>(
        &mut self,
        option: u32,
        data: &[u8],
        exports: &mut X,
        out: &mut Vec<u8>,
    ) -> Result<Progress<X::Open>, NegotiationError> {
        match option {
            opt::EXPORT_NAME => {
                let name = std::str::from_utf8(data).map_err(|_| NegotiationError::NameNotUtf8)?;
                return Ok(match exports.open(name) {
                    Ok((i, export)) => {
                        wire::encode_export_name_reply(out, i.size, transmission_flags(&i), self.zeroes);
                        Progress::Chosen { export, structured: self.structured }
                    }
                    // This option has no error reply.
                    Err(_) => Progress::Close,
                });
            }
            opt::ABORT => {
                wire::encode_option_reply(out, option, rep::ACK, &[]);
                return Ok(Progress::Close);
            }
            opt::LIST if !data.is_empty() => wire::encode_option_reply(out, option, rep::ERR_INVALID, b"NBD_OPT_LIST takes no data"),
            opt::LIST => {
                for e in exports.list() {
                    wire::encode_list_entry(out, &e.name, &e.description);
                }
                wire::encode_option_reply(out, option, rep::ACK, &[]);
            }
            opt::INFO | opt::GO => {
                let Some(req) = wire::parse_info_request(data) else {
                    wire::encode_option_reply(out, option, rep::ERR_INVALID, b"malformed NBD_OPT_INFO/GO data");
                    return Ok(Progress::More);
                };
                let found = if option == opt::GO {
                    exports.open(&req.name).map(|(i, e)| (i, Some(e)))
                } else {
                    exports.describe(&req.name).map(|i| (i, None))
                };
                match found {
                    Err(r) => wire::encode_option_reply(out, option, r.rep, r.message.as_bytes()),
                    Ok((i, export)) => {
                        wire::encode_info_export(out, option, i.size, transmission_flags(&i));
                        for r in &req.requests {
                            match *r {
                                info::NAME => wire::encode_info_string(out, option, info::NAME, &i.name),
                                info::DESCRIPTION => wire::encode_info_string(out, option, info::DESCRIPTION, &i.description),
                                info::BLOCK_SIZE => wire::encode_info_block_size(out, option, 1, 4096, MAX_PAYLOAD),
                                _ => {}
                            }
                        }
                        wire::encode_option_reply(out, option, rep::ACK, &[]);
                        if let Some(export) = export {
                            return Ok(Progress::Chosen { export, structured: self.structured });
                        }
                    }
                }
            }
            opt::STRUCTURED_REPLY if !data.is_empty() => {
                wire::encode_option_reply(out, option, rep::ERR_INVALID, b"NBD_OPT_STRUCTURED_REPLY takes no data")
            }
            opt::STRUCTURED_REPLY => {
                self.structured = true;
                wire::encode_option_reply(out, option, rep::ACK, &[]);
            }
            other => {
                let msg = format!("option {other} is not supported by citron");
                wire::encode_option_reply(out, other, rep::ERR_UNSUP, msg.as_bytes());
            }
        }
        Ok(Progress::More)
    }
}

#[cfg(test)]
#[path = "negotiate_tests.rs"]
mod tests;
