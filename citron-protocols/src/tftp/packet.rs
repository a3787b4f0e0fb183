//! TFTP packets: pure decoding and encoding, no I/O.
//!
//! Covers RFC 1350 (the protocol: RRQ, WRQ, DATA, ACK, ERROR), RFC 2347 (option extension: options
//! after the mode, and OACK) and the netascii transfer encoding of RFC 1350 §1 / RFC 764. Decoding
//! never panics: any byte string is either a [`Packet`] or a [`DecodeError`] that says what was
//! wrong, so the server can log it and answer or drop it.

use bytes::{BufMut, Bytes, BytesMut};

/// Operation codes, RFC 1350 §5 ("TFTP Packets") and RFC 2347 (OACK).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Opcode {
    /// Read request.
    Rrq = 1,
    /// Write request.
    Wrq = 2,
    /// Data.
    Data = 3,
    /// Acknowledgment.
    Ack = 4,
    /// Error.
    Error = 5,
    /// Option acknowledgment (RFC 2347).
    Oack = 6,
}

/// Error codes, RFC 1350 Appendix ("Error Codes") and RFC 2347 (code 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// 0: not defined, see error message.
    pub const NOT_DEFINED: ErrorCode = ErrorCode(0);
    /// 1: file not found.
    pub const FILE_NOT_FOUND: ErrorCode = ErrorCode(1);
    /// 2: access violation.
    pub const ACCESS_VIOLATION: ErrorCode = ErrorCode(2);
    /// 3: disk full or allocation exceeded.
    pub const DISK_FULL: ErrorCode = ErrorCode(3);
    /// 4: illegal TFTP operation.
    pub const ILLEGAL_OPERATION: ErrorCode = ErrorCode(4);
    /// 5: unknown transfer ID.
    pub const UNKNOWN_TID: ErrorCode = ErrorCode(5);
    /// 6: file already exists.
    pub const FILE_EXISTS: ErrorCode = ErrorCode(6);
    /// 7: no such user.
    pub const NO_SUCH_USER: ErrorCode = ErrorCode(7);
    /// 8: option negotiation refused (RFC 2347).
    pub const OPTION_REFUSED: ErrorCode = ErrorCode(8);
}

/// Transfer modes, RFC 1350 §1. Compared case-insensitively on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 8-bit ASCII with CR LF line ends and CR NUL for a bare CR.
    Netascii,
    /// Raw bytes.
    Octet,
    /// Obsolete (RFC 1350 says it "should not be implemented"); parsed so it can be refused.
    Mail,
}

impl Mode {
    /// The name as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Netascii => "netascii",
            Mode::Octet => "octet",
            Mode::Mail => "mail",
        }
    }
}

/// A read or write request: RFC 1350 §5 figure 5-1, with RFC 2347 options after the mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The file name, as sent.
    pub filename: String,
    /// The transfer mode.
    pub mode: Mode,
    /// Options in the order sent; names as sent (RFC 2347 says they are case-insensitive).
    pub options: Vec<(String, String)>,
}

/// One TFTP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// RRQ.
    Rrq(Request),
    /// WRQ.
    Wrq(Request),
    /// DATA: block number (wrapping) and up to blksize bytes.
    Data {
        /// Block number on the wire (the transfer's block index modulo 65536).
        block: u16,
        /// The payload.
        data: Bytes,
    },
    /// ACK of a block number.
    Ack {
        /// Block number on the wire.
        block: u16,
    },
    /// ERROR: code and human-readable message.
    Error {
        /// The code.
        code: ErrorCode,
        /// The message.
        message: String,
    },
    /// OACK (RFC 2347): the options the server accepted, with their final values.
    Oack {
        /// Name/value pairs.
        options: Vec<(String, String)>,
    },
}

/// Why a datagram is not a TFTP packet.
///
/// Fields taken from the datagram are cut to [`ERROR_FIELD_MAX`] characters (see [`Clip`]): the
/// message goes into a log line, and [`DecodeError::wire_message`] is what a client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the packet's fixed part.
    #[error("packet too short ({0} bytes)")]
    TooShort(usize),
    /// An opcode RFC 1350 / RFC 2347 does not define.
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    /// A string field with no terminating NUL.
    #[error("{0} is not NUL-terminated")]
    Unterminated(&'static str),
    /// A string field that is not UTF-8 (file names are paths in citron's namespace).
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
    /// A mode other than netascii, octet or mail.
    #[error("unknown transfer mode `{0}`; use octet or netascii")]
    UnknownMode(String),
    /// An option name with no value after it (RFC 2347 §"Option Format").
    #[error("option `{0}` has no value")]
    OptionWithoutValue(String),
    /// An empty file name.
    #[error("empty file name")]
    EmptyFilename,
}

impl DecodeError {
    /// The message for the ERROR answering a malformed request: fixed text, no field of the
    /// request, so the answer never grows with what was sent (and carries nothing back to a
    /// spoofed source).
    pub fn wire_message(&self) -> &'static str {
        match self {
            DecodeError::TooShort(_) => "packet too short",
            DecodeError::UnknownOpcode(_) => "unknown opcode",
            DecodeError::Unterminated(_) => "field not NUL-terminated",
            DecodeError::NotUtf8(_) => "field is not UTF-8",
            DecodeError::UnknownMode(_) => "unknown mode; use octet",
            DecodeError::OptionWithoutValue(_) => "option without a value",
            DecodeError::EmptyFilename => "empty file name",
        }
    }
}

/// Decodes one datagram.
///
/// ```
/// use citron_protocols::tftp::packet::{decode, Packet};
/// assert_eq!(decode(&[0, 4, 0, 7]).unwrap(), Packet::Ack { block: 7 });
/// assert!(decode(&[0, 9]).is_err());
/// ```
pub fn decode(buf: &[u8]) -> Result<Packet, DecodeError> {
    if buf.len() < 2 {
        return Err(DecodeError::TooShort(buf.len()));
    }
    let op = u16::from_be_bytes([buf[0], buf[1]]);
    let rest = &buf[2..];
    match op {
        1 => decode_request(rest).map(Packet::Rrq),
        2 => decode_request(rest).map(Packet::Wrq),
        3 => {
            let block = read_u16(rest, buf.len())?;
            Ok(Packet::Data { block, data: Bytes::copy_from_slice(&rest[2..]) })
        }
        4 => Ok(Packet::Ack { block: read_u16(rest, buf.len())? }),
        5 => {
            let code = ErrorCode(read_u16(rest, buf.len())?);
            // Some clients omit the final NUL of the message; accept it, the message is only logged.
            let msg = &rest[2..];
            let msg = match msg.iter().position(|&b| b == 0) {
                Some(i) => &msg[..i],
                None => msg,
            };
            Ok(Packet::Error { code, message: String::from_utf8_lossy(msg).into_owned() })
        }
        6 => {
            let mut fields = Fields(rest);
            let mut options = Vec::new();
            while !fields.0.is_empty() {
                let name = fields.next("option name")?;
                let value =
                    fields.next("option value").map_err(|_| DecodeError::OptionWithoutValue(Clip(&name, ERROR_FIELD_MAX).to_string()))?;
                options.push((name, value));
            }
            Ok(Packet::Oack { options })
        }
        other => Err(DecodeError::UnknownOpcode(other)),
    }
}

fn read_u16(rest: &[u8], total: usize) -> Result<u16, DecodeError> {
    if rest.len() < 2 {
        return Err(DecodeError::TooShort(total));
    }
    Ok(u16::from_be_bytes([rest[0], rest[1]]))
}

/// NUL-terminated strings, one after another.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn next(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let end = self.0.iter().position(|&b| b == 0).ok_or(DecodeError::Unterminated(what))?;
        let s = std::str::from_utf8(&self.0[..end]).map_err(|_| DecodeError::NotUtf8(what))?.to_string();
        self.0 = &self.0[end + 1..];
        Ok(s)
    }
}

/// RFC 1350 §5 figure 5-1 and RFC 2347 "Packet Formats": filename, mode, then name/value pairs.
fn decode_request(rest: &[u8]) -> Result<Request, DecodeError> {
    let mut fields = Fields(rest);
    let filename = fields.next("file name")?;
    if filename.is_empty() {
        return Err(DecodeError::EmptyFilename);
    }
    let mode_s = fields.next("mode")?;
    let mode = match mode_s.to_ascii_lowercase().as_str() {
        "netascii" => Mode::Netascii,
        "octet" => Mode::Octet,
        "mail" => Mode::Mail,
        _ => return Err(DecodeError::UnknownMode(Clip(&mode_s, ERROR_FIELD_MAX).to_string())),
    };
    let mut options = Vec::new();
    // Some old clients pad requests with NULs after the last field; trailing NULs are not options.
    while fields.0.iter().any(|&b| b != 0) {
        let name = fields.next("option name")?;
        let value = fields.next("option value").map_err(|_| DecodeError::OptionWithoutValue(name.clone()))?;
        // An option with no name means nothing (RFC 2347 names are non-empty); skip it.
        if !name.is_empty() {
            options.push((name, value));
        }
    }
    Ok(Request { filename, mode, options })
}

/// Appends the wire form of `pkt` to `out`.
///
/// ```
/// use bytes::BytesMut;
/// use citron_protocols::tftp::packet::{encode, Packet};
/// let mut b = BytesMut::new();
/// encode(&Packet::Ack { block: 258 }, &mut b);
/// assert_eq!(&b[..], &[0, 4, 1, 2]);
/// ```
pub fn encode(pkt: &Packet, out: &mut BytesMut) {
    fn cstr(out: &mut BytesMut, s: &str) {
        // A NUL inside a field would change the packet's meaning; it cannot be sent.
        out.extend(s.bytes().filter(|&b| b != 0));
        out.put_u8(0);
    }
    fn request(out: &mut BytesMut, op: Opcode, r: &Request) {
        out.put_u16(op as u16);
        cstr(out, &r.filename);
        cstr(out, r.mode.as_str());
        for (k, v) in &r.options {
            cstr(out, k);
            cstr(out, v);
        }
    }
    match pkt {
        Packet::Rrq(r) => request(out, Opcode::Rrq, r),
        Packet::Wrq(r) => request(out, Opcode::Wrq, r),
        Packet::Data { block, data } => encode_data(*block, data, out),
        Packet::Ack { block } => {
            out.put_u16(Opcode::Ack as u16);
            out.put_u16(*block);
        }
        Packet::Error { code, message } => {
            out.put_u16(Opcode::Error as u16);
            out.put_u16(code.0);
            cstr(out, message);
        }
        Packet::Oack { options } => {
            out.put_u16(Opcode::Oack as u16);
            for (k, v) in options {
                cstr(out, k);
                cstr(out, v);
            }
        }
    }
}

/// Appends a DATA packet without building a [`Packet`] (the hot path: RFC 1350 §5 figure 5-2).
pub fn encode_data(block: u16, data: &[u8], out: &mut BytesMut) {
    out.reserve(4 + data.len());
    out.put_u16(Opcode::Data as u16);
    out.put_u16(block);
    out.extend_from_slice(data);
}

pub use super::netascii::to_netascii;

/// The longest request field a [`DecodeError`] keeps (for the log line; never sent back).
pub const ERROR_FIELD_MAX: usize = 32;

/// Displays at most `.1` characters of `.0`, control characters as `?`, and `…` if cut: how a
/// field from the network goes into a log line (bounded, one line, no terminal escapes).
///
/// ```
/// use citron_protocols::tftp::packet::Clip;
/// assert_eq!(Clip("abcdef", 3).to_string(), "abc…");
/// assert_eq!(Clip("a\nb", 10).to_string(), "a?b");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Clip<'a>(pub &'a str, pub usize);

impl std::fmt::Display for Clip<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        let mut chars = self.0.chars();
        for c in chars.by_ref().take(self.1) {
            f.write_char(if c.is_control() { '?' } else { c })?;
        }
        if chars.next().is_some() {
            f.write_char('…')?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(p: Packet) {
        let mut b = BytesMut::new();
        encode(&p, &mut b);
        assert_eq!(decode(&b).unwrap(), p);
    }

    #[test]
    fn round_trips() {
        roundtrip(Packet::Rrq(Request { filename: "boot/pxelinux.0".into(), mode: Mode::Octet, options: vec![] }));
        roundtrip(Packet::Rrq(Request {
            filename: "a".into(),
            mode: Mode::Netascii,
            options: vec![("blksize".into(), "1468".into()), ("tsize".into(), "0".into())],
        }));
        roundtrip(Packet::Wrq(Request { filename: "x".into(), mode: Mode::Octet, options: vec![] }));
        roundtrip(Packet::Data { block: 65535, data: Bytes::from_static(b"hello") });
        roundtrip(Packet::Data { block: 0, data: Bytes::new() });
        roundtrip(Packet::Ack { block: 0 });
        roundtrip(Packet::Error { code: ErrorCode::ACCESS_VIOLATION, message: "no".into() });
        roundtrip(Packet::Oack { options: vec![("windowsize".into(), "16".into())] });
        roundtrip(Packet::Oack { options: vec![] });
    }

    #[test]
    fn wire_layout_matches_rfc1350() {
        let mut b = BytesMut::new();
        encode(&Packet::Rrq(Request { filename: "f".into(), mode: Mode::Octet, options: vec![("tsize".into(), "0".into())] }), &mut b);
        assert_eq!(&b[..], b"\0\x01f\0octet\0tsize\x000\0");
        let mut b = BytesMut::new();
        encode(&Packet::Error { code: ErrorCode::FILE_NOT_FOUND, message: "nope".into() }, &mut b);
        assert_eq!(&b[..], b"\0\x05\0\x01nope\0");
    }

    #[test]
    fn mode_is_case_insensitive() {
        let Packet::Rrq(r) = decode(b"\0\x01f\0OcTeT\0").unwrap() else { panic!() };
        assert_eq!(r.mode, Mode::Octet);
    }

    #[test]
    fn trailing_nul_padding_is_not_an_option() {
        let Packet::Rrq(r) = decode(b"\0\x01f\0octet\0\0\0").unwrap() else { panic!() };
        assert!(r.options.is_empty());
    }

    #[test]
    fn nameless_options_are_skipped() {
        let Packet::Rrq(r) = decode(b"\0\x01f\0octet\0\0x\0tsize\x000\0").unwrap() else { panic!() };
        assert_eq!(r.options, vec![("tsize".to_string(), "0".to_string())]);
    }

    #[test]
    fn malformed_packets_are_errors() {
        assert_eq!(decode(b""), Err(DecodeError::TooShort(0)));
        assert_eq!(decode(b"\0"), Err(DecodeError::TooShort(1)));
        assert_eq!(decode(b"\0\x04\0"), Err(DecodeError::TooShort(3)));
        assert_eq!(decode(b"\0\x03"), Err(DecodeError::TooShort(2)));
        assert_eq!(decode(b"\0\x07"), Err(DecodeError::UnknownOpcode(7)));
        assert_eq!(decode(b"\xff\xff\0\0"), Err(DecodeError::UnknownOpcode(65535)));
        assert_eq!(decode(b"\0\x01file"), Err(DecodeError::Unterminated("file name")));
        assert_eq!(decode(b"\0\x01file\0octet"), Err(DecodeError::Unterminated("mode")));
        assert_eq!(decode(b"\0\x01\0octet\0"), Err(DecodeError::EmptyFilename));
        assert_eq!(decode(b"\0\x01f\0binary\0"), Err(DecodeError::UnknownMode("binary".into())));
        assert_eq!(decode(b"\0\x01f\0octet\0blksize\0"), Err(DecodeError::OptionWithoutValue("blksize".into())));
        assert_eq!(decode(b"\0\x01f\0octet\0blksize\x001468"), Err(DecodeError::OptionWithoutValue("blksize".into())));
        assert_eq!(decode(b"\0\x01\xff\xfe\0octet\0"), Err(DecodeError::NotUtf8("file name")));
        assert_eq!(decode(b"\0\x06tsize\0"), Err(DecodeError::OptionWithoutValue("tsize".into())));
    }

    #[test]
    fn error_without_final_nul_is_accepted() {
        assert_eq!(decode(b"\0\x05\0\x08bad").unwrap(), Packet::Error { code: ErrorCode::OPTION_REFUSED, message: "bad".into() });
    }

    #[test]
    fn nul_inside_a_field_is_not_sent() {
        let mut b = BytesMut::new();
        encode(&Packet::Error { code: ErrorCode(0), message: "a\0b".into() }, &mut b);
        assert_eq!(&b[..], b"\0\x05\0\0ab\0");
    }

    #[test]
    fn fields_in_errors_are_cut() {
        let mut req = b"\0\x01f\0".to_vec();
        req.extend(std::iter::repeat_n(b'\x01', 5000));
        req.push(0);
        let e = decode(&req).unwrap_err();
        assert!(e.to_string().len() < 100, "{e}");
        assert!(e.wire_message().len() < 30);
    }

    #[test]
    fn decode_never_panics_on_short_prefixes() {
        let mut b = BytesMut::new();
        encode(&Packet::Rrq(Request { filename: "f".into(), mode: Mode::Octet, options: vec![("blksize".into(), "8".into())] }), &mut b);
        for n in 0..b.len() {
            let _ = decode(&b[..n]);
        }
    }
}
