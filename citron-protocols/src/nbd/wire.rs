//! NBD messages as bytes: parsing and encoding, no I/O.
//!
//! Parsers take what has arrived so far and answer `Ok(None)` when more bytes are needed
//! (incomplete is a normal result, not an error); encoders append to a `Vec<u8>`. Values are from
//! the protocol document (NetworkBlockDevice/nbd `doc/proto.md`), all big-endian.

/// `NBDMAGIC`, the first thing a server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: newstyle negotiation, and the prefix of every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Prefix of every option reply.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Prefix of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Prefix of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Prefix of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flag: fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
/// Handshake flag: the 124 zero bytes after `NBD_OPT_EXPORT_NAME` may be left out.
pub const FLAG_NO_ZEROES: u16 = 2;
/// Client flag: fixed newstyle.
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1;
/// Client flag: no zeroes.
pub const CLIENT_NO_ZEROES: u32 = 2;

/// Option numbers.
pub mod opt {
    /// Choose an export, no reply on error.
    pub const EXPORT_NAME: u32 = 1;
    /// End the negotiation.
    pub const ABORT: u32 = 2;
    /// List exports.
    pub const LIST: u32 = 3;
    /// Describe an export.
    pub const INFO: u32 = 6;
    /// Describe and choose an export.
    pub const GO: u32 = 7;
    /// Use structured replies.
    pub const STRUCTURED_REPLY: u32 = 8;
}

/// Option reply types.
pub mod rep {
    /// Done.
    pub const ACK: u32 = 1;
    /// One export of a list.
    pub const SERVER: u32 = 2;
    /// One piece of export information.
    pub const INFO: u32 = 3;
    /// Unknown option.
    pub const ERR_UNSUP: u32 = 0x8000_0001;
    /// Not allowed.
    pub const ERR_POLICY: u32 = 0x8000_0002;
    /// Malformed.
    pub const ERR_INVALID: u32 = 0x8000_0003;
    /// No such export.
    pub const ERR_UNKNOWN: u32 = 0x8000_0006;
    /// The server is going away.
    pub const ERR_SHUTDOWN: u32 = 0x8000_0007;
    /// Too big to answer.
    pub const ERR_TOO_BIG: u32 = 0x8000_0009;
}

/// `NBD_INFO_*` types in `NBD_OPT_INFO`/`GO`.
pub mod info {
    /// Size and transmission flags (always sent).
    pub const EXPORT: u16 = 0;
    /// The export's name.
    pub const NAME: u16 = 1;
    /// Its description.
    pub const DESCRIPTION: u16 = 2;
    /// Block size constraints.
    pub const BLOCK_SIZE: u16 = 3;
}

/// Transmission flags.
pub mod tflag {
    /// Always set.
    pub const HAS_FLAGS: u16 = 1;
    /// Writes are refused.
    pub const READ_ONLY: u16 = 1 << 1;
    /// `NBD_CMD_FLUSH` is understood.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// `NBD_CMD_FLAG_FUA` is understood.
    pub const SEND_FUA: u16 = 1 << 3;
    /// `NBD_CMD_TRIM` is understood.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// `NBD_CMD_WRITE_ZEROES` is understood.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// A flush on one connection covers writes on all (one shared overlay).
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
}

/// Command types.
pub mod cmd {
    /// Read.
    pub const READ: u16 = 0;
    /// Write (payload follows).
    pub const WRITE: u16 = 1;
    /// Disconnect.
    pub const DISC: u16 = 2;
    /// Flush.
    pub const FLUSH: u16 = 3;
    /// Trim.
    pub const TRIM: u16 = 4;
    /// Write zeroes.
    pub const WRITE_ZEROES: u16 = 6;
}

/// Command flags.
pub mod cflag {
    /// Durable before the reply.
    pub const FUA: u16 = 1;
    /// Write zeroes: do not punch a hole (a hint we may ignore).
    pub const NO_HOLE: u16 = 1 << 1;
    /// Read: do not fragment (we never do).
    pub const DF: u16 = 1 << 2;
}

/// Errors in replies (`NBD_E*`).
pub mod errno {
    /// Not permitted (read-only).
    pub const EPERM: u32 = 1;
    /// I/O error.
    pub const EIO: u32 = 5;
    /// Out of memory.
    pub const ENOMEM: u32 = 12;
    /// Invalid request (out of range, bad flags).
    pub const EINVAL: u32 = 22;
    /// No space left.
    pub const ENOSPC: u32 = 28;
    /// Too large.
    pub const EOVERFLOW: u32 = 75;
    /// Not supported.
    pub const ENOTSUP: u32 = 95;
    /// The server is shutting down.
    pub const ESHUTDOWN: u32 = 108;
}

/// Structured reply chunk types.
mod chunk {
    pub const NONE: u16 = 0;
    pub const OFFSET_DATA: u16 = 1;
    pub const ERROR: u16 = (1 << 15) | 1;
    pub const FLAG_DONE: u16 = 1;
}

/// The bytes a server sends first.
pub const SERVER_GREETING_LEN: usize = 18;
/// Option header length: magic, option, data length.
pub const OPTION_HEADER_LEN: usize = 16;
/// Request header length.
pub const REQUEST_LEN: usize = 28;
/// Simple reply header length.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Structured `OFFSET_DATA` chunk header length (chunk header + offset).
pub const STRUCTURED_READ_LEN: usize = 28;

/// The client's bytes do not follow the protocol; the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A magic number is wrong.
    #[error("bad magic {0:#x}")]
    BadMagic(u64),
    /// The client set flags it may not set.
    #[error("unknown client flags {0:#x}")]
    BadClientFlags(u32),
    /// An option's data is larger than citron accepts.
    #[error("option data of {0} bytes is too large")]
    OptionTooLarge(u32),
}

fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

/// Appends the server greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
pub fn encode_greeting(out: &mut Vec<u8>) {
    out.extend_from_slice(&NBDMAGIC.to_be_bytes());
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
}

/// Parses the client flags (4 bytes).
pub fn parse_client_flags(buf: &[u8]) -> Result<Option<u32>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let f = be_u32(buf);
    if f & !(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES) != 0 {
        return Err(WireError::BadClientFlags(f));
    }
    Ok(Some(f))
}

/// An option header: which option and how many data bytes follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// `NBD_OPT_*`.
    pub option: u32,
    /// Data length.
    pub len: u32,
}

/// Parses an option header, refusing data longer than `max_len`.
pub fn parse_option_header(buf: &[u8], max_len: u32) -> Result<Option<OptionHeader>, WireError> {
    if buf.len() < OPTION_HEADER_LEN {
        return Ok(None);
    }
    let magic = be_u64(buf);
    if magic != IHAVEOPT {
        return Err(WireError::BadMagic(magic));
    }
    let h = OptionHeader { option: be_u32(&buf[8..]), len: be_u32(&buf[12..]) };
    if h.len > max_len {
        return Err(WireError::OptionTooLarge(h.len));
    }
    Ok(Some(h))
}

/// The data of `NBD_OPT_INFO` / `NBD_OPT_GO`: an export name and the information requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    /// The export.
    pub name: String,
    /// `NBD_INFO_*` the client asked for.
    pub requests: Vec<u16>,
}

/// Parses complete `NBD_OPT_INFO`/`GO` data; `None` if it is malformed (answered with
/// `NBD_REP_ERR_INVALID`).
pub fn parse_info_request(data: &[u8]) -> Option<InfoRequest> {
    if data.len() < 4 {
        return None;
    }
    let n = be_u32(data) as usize;
    let rest = &data[4..];
    if rest.len() < n + 2 {
        return None;
    }
    let name = std::str::from_utf8(&rest[..n]).ok()?.to_string();
    let rest = &rest[n..];
    let count = be_u16(rest) as usize;
    let rest = &rest[2..];
    if rest.len() != count * 2 {
        return None;
    }
    Some(InfoRequest { name, requests: rest.chunks_exact(2).map(be_u16).collect() })
}

/// Appends an option reply.
pub fn encode_option_reply(out: &mut Vec<u8>, option: u32, reply: u32, data: &[u8]) {
    out.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// Appends an `NBD_REP_SERVER` for `NBD_OPT_LIST`.
pub fn encode_list_entry(out: &mut Vec<u8>, name: &str, description: &str) {
    let mut d = Vec::with_capacity(4 + name.len() + description.len());
    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(description.as_bytes());
    encode_option_reply(out, opt::LIST, rep::SERVER, &d);
}

/// Appends `NBD_REP_INFO` / `NBD_INFO_EXPORT`.
pub fn encode_info_export(out: &mut Vec<u8>, option: u32, size: u64, flags: u16) {
    let mut d = [0u8; 12];
    d[..2].copy_from_slice(&info::EXPORT.to_be_bytes());
    d[2..10].copy_from_slice(&size.to_be_bytes());
    d[10..].copy_from_slice(&flags.to_be_bytes());
    encode_option_reply(out, option, rep::INFO, &d);
}

/// Appends `NBD_REP_INFO` with a string (`NBD_INFO_NAME`, `NBD_INFO_DESCRIPTION`).
pub fn encode_info_string(out: &mut Vec<u8>, option: u32, kind: u16, s: &str) {
    let mut d = Vec::with_capacity(2 + s.len());
    d.extend_from_slice(&kind.to_be_bytes());
    d.extend_from_slice(s.as_bytes());
    encode_option_reply(out, option, rep::INFO, &d);
}

/// Appends `NBD_REP_INFO` / `NBD_INFO_BLOCK_SIZE`.
pub fn encode_info_block_size(out: &mut Vec<u8>, option: u32, min: u32, preferred: u32, max: u32) {
    let mut d = [0u8; 14];
    d[..2].copy_from_slice(&info::BLOCK_SIZE.to_be_bytes());
    d[2..6].copy_from_slice(&min.to_be_bytes());
    d[6..10].copy_from_slice(&preferred.to_be_bytes());
    d[10..].copy_from_slice(&max.to_be_bytes());
    encode_option_reply(out, option, rep::INFO, &d);
}

/// The answer to `NBD_OPT_EXPORT_NAME`: size, flags, and the zeroes unless the client declined.
pub fn encode_export_name_reply(out: &mut Vec<u8>, size: u64, flags: u16, zeroes: bool) {
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    if zeroes {
        out.extend_from_slice(&[0u8; 124]);
    }
}

/// A transmission request header (a write's payload follows it on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// `NBD_CMD_FLAG_*`.
    pub flags: u16,
    /// `NBD_CMD_*`.
    pub kind: u16,
    /// Echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub len: u32,
}

impl Request {
    /// Bytes of payload that follow the header.
    pub fn payload_len(&self) -> usize {
        if self.kind == cmd::WRITE {
            self.len as usize
        } else {
            0
        }
    }
}

/// Parses a request header.
pub fn parse_request(buf: &[u8]) -> Result<Option<Request>, WireError> {
    if buf.len() < REQUEST_LEN {
        return Ok(None);
    }
    let magic = be_u32(buf);
    if magic != REQUEST_MAGIC {
        return Err(WireError::BadMagic(magic as u64));
    }
    Ok(Some(Request {
        flags: be_u16(&buf[4..]),
        kind: be_u16(&buf[6..]),
        cookie: be_u64(&buf[8..]),
        offset: be_u64(&buf[16..]),
        len: be_u32(&buf[24..]),
    }))
}

/// Appends a request (for tests and clients).
pub fn encode_request(out: &mut Vec<u8>, r: &Request) {
    out.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
    out.extend_from_slice(&r.flags.to_be_bytes());
    out.extend_from_slice(&r.kind.to_be_bytes());
    out.extend_from_slice(&r.cookie.to_be_bytes());
    out.extend_from_slice(&r.offset.to_be_bytes());
    out.extend_from_slice(&r.len.to_be_bytes());
}

/// Writes a simple reply header into the first [`SIMPLE_REPLY_LEN`] bytes of `out`.
pub fn put_simple_reply(out: &mut [u8], error: u32, cookie: u64) {
    out[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
}

fn put_chunk_header(out: &mut [u8], flags: u16, kind: u16, cookie: u64, len: u32) {
    out[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&flags.to_be_bytes());
    out[6..8].copy_from_slice(&kind.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out[16..20].copy_from_slice(&len.to_be_bytes());
}

/// Writes a final `NBD_REPLY_TYPE_OFFSET_DATA` header for `data_len` bytes at `offset` into the
/// first [`STRUCTURED_READ_LEN`] bytes of `out`.
pub fn put_structured_read(out: &mut [u8], cookie: u64, offset: u64, data_len: u32) {
    put_structured_read_chunk(out, cookie, offset, data_len, true);
}

/// [`put_structured_read`] for one of several chunks of a read: `done` only on the last one.
pub fn put_structured_read_chunk(out: &mut [u8], cookie: u64, offset: u64, data_len: u32, done: bool) {
    let flags = if done { chunk::FLAG_DONE } else { 0 };
    put_chunk_header(out, flags, chunk::OFFSET_DATA, cookie, data_len + 8);
    out[20..28].copy_from_slice(&offset.to_be_bytes());
}

/// Appends a final structured reply: `NBD_REPLY_TYPE_NONE` on success, else
/// `NBD_REPLY_TYPE_ERROR` with `error` and `message`.
pub fn encode_structured_done(out: &mut Vec<u8>, cookie: u64, error: u32, message: &str) {
    let start = out.len();
    if error == 0 {
        out.resize(start + 20, 0);
        put_chunk_header(&mut out[start..], chunk::FLAG_DONE, chunk::NONE, cookie, 0);
    } else {
        let msg = &message.as_bytes()[..message.len().min(4096)];
        out.resize(start + 20, 0);
        put_chunk_header(&mut out[start..], chunk::FLAG_DONE, chunk::ERROR, cookie, 6 + msg.len() as u32);
        out.extend_from_slice(&error.to_be_bytes());
        out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        out.extend_from_slice(msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_and_incomplete_is_none() {
        let r = Request { flags: cflag::FUA, kind: cmd::WRITE, cookie: 0xdead_beef, offset: 4096, len: 512 };
        let mut b = Vec::new();
        encode_request(&mut b, &r);
        assert_eq!(b.len(), REQUEST_LEN);
        for n in 0..REQUEST_LEN {
            assert_eq!(parse_request(&b[..n]), Ok(None));
        }
        assert_eq!(parse_request(&b), Ok(Some(r)));
        assert_eq!(r.payload_len(), 512);
        b[0] ^= 1;
        assert!(matches!(parse_request(&b), Err(WireError::BadMagic(_))));
    }

    #[test]
    fn info_request_parses_and_rejects_garbage() {
        let mut d = Vec::new();
        d.extend_from_slice(&4u32.to_be_bytes());
        d.extend_from_slice(b"disk");
        d.extend_from_slice(&2u16.to_be_bytes());
        d.extend_from_slice(&info::NAME.to_be_bytes());
        d.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
        assert_eq!(parse_info_request(&d), Some(InfoRequest { name: "disk".into(), requests: vec![1, 3] }));
        assert_eq!(parse_info_request(&d[..d.len() - 1]), None);
        assert_eq!(parse_info_request(&[0xff, 0xff, 0xff, 0xff, 0, 0]), None);
        assert_eq!(parse_info_request(&[]), None);
    }

    #[test]
    fn option_header_limits_length() {
        let mut b = IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&opt::GO.to_be_bytes());
        b.extend_from_slice(&100_000u32.to_be_bytes());
        assert_eq!(parse_option_header(&b[..15], 4096), Ok(None));
        assert_eq!(parse_option_header(&b, 4096), Err(WireError::OptionTooLarge(100_000)));
        assert_eq!(parse_option_header(&b, 200_000), Ok(Some(OptionHeader { option: opt::GO, len: 100_000 })));
    }

    #[test]
    fn client_flags_reject_unknown_bits() {
        assert_eq!(parse_client_flags(&[0, 0, 0]), Ok(None));
        assert_eq!(parse_client_flags(&[0, 0, 0, 3]), Ok(Some(3)));
        assert!(parse_client_flags(&[0, 0, 0, 4]).is_err());
    }
}
