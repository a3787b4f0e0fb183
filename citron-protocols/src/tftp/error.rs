//! What a TFTP client is told when the core refuses a request.

use citron_core::serve::ServeError;

use super::packet::{ErrorCode, Packet};

/// The ERROR packet (RFC 1350 §5, codes in its appendix) for a refusal of the core.
///
/// The one place where [`ServeError`] becomes TFTP. No catch-all arm: a new variant does not compile
/// until it is given a code here. The message is short and says nothing about other DUTs (an
/// unknown source address gets the same "file not found" as a missing file); the server logs the
/// full error.
///
/// ```
/// use citron_core::serve::ServeError;
/// use citron_protocols::tftp::{error_packet, packet::{ErrorCode, Packet}};
/// let p = error_packet(&ServeError::NotFound("x".into()));
/// assert!(matches!(p, Packet::Error { code: ErrorCode::FILE_NOT_FOUND, .. }));
/// ```
pub fn error_packet(e: &ServeError) -> Packet {
    let (code, message) = match e {
        ServeError::UnknownDut(_) => (ErrorCode::FILE_NOT_FOUND, "file not found".to_string()),
        ServeError::NotFound(_) => (ErrorCode::FILE_NOT_FOUND, "file not found".to_string()),
        ServeError::BadPath(p) => (ErrorCode::ACCESS_VIOLATION, format!("access violation: {p}")),
        ServeError::Forbidden(_) => (ErrorCode::ACCESS_VIOLATION, "access violation".to_string()),
        ServeError::Gone(r) => (ErrorCode::ACCESS_VIOLATION, format!("no longer available: {r}")),
        ServeError::OutOfRange { .. } => (ErrorCode::NOT_DEFINED, "request out of range".to_string()),
        ServeError::TooLarge { max } => (ErrorCode::DISK_FULL, format!("allocation exceeded: at most {max} bytes")),
        ServeError::Exists(_) => (ErrorCode::FILE_EXISTS, "file already exists with other content".to_string()),
        ServeError::NoSpace(_) => (ErrorCode::DISK_FULL, "disk full".to_string()),
        ServeError::Io(_) => (ErrorCode::NOT_DEFINED, "server I/O error".to_string()),
    };
    Packet::Error { code, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(e: ServeError) -> u16 {
        match error_packet(&e) {
            Packet::Error { code, .. } => code.0,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn mapping() {
        assert_eq!(code(ServeError::UnknownDut("127.0.0.9".parse().unwrap())), 1);
        assert_eq!(code(ServeError::NotFound("a".into())), 1);
        assert_eq!(code(ServeError::Forbidden("a".into())), 2);
        assert_eq!(code(ServeError::OutOfRange { offset: 1, len: 1, size: 1 }), 0);
        assert_eq!(code(ServeError::Io(std::io::Error::other("x"))), 0);
        assert_eq!(code(ServeError::TooLarge { max: 1 }), 3);
        assert_eq!(code(ServeError::Exists("a".into())), 6);
    }
}
