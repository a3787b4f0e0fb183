//! The one mapping from the core's answers to NBD (nbdkit's `nbd_errno`): an option reply
//! during negotiation, an errno during transmission. Both matches are exhaustive, so a new
//! refusal in the core does not compile until NBD answers it.

use citron_core::serve::{BlockError, ServeError};

use super::wire::{errno, rep};

/// How the negotiation answers a refused export: `NBD_REP_ERR_*`. Names a DUT may not see answer
/// like names that do not exist.
pub(crate) fn option_reply(e: &ServeError) -> u32 {
    match e {
        ServeError::UnknownDut(_) => rep::ERR_UNKNOWN,
        ServeError::NotFound(_) => rep::ERR_UNKNOWN,
        ServeError::BadPath(_) => rep::ERR_INVALID,
        ServeError::Forbidden(_) => rep::ERR_UNKNOWN,
        ServeError::Gone(_) => rep::ERR_UNKNOWN,
        ServeError::OutOfRange { .. } => rep::ERR_INVALID,
        // Upload refusals: NBD never uploads a file, but the match stays exhaustive.
        ServeError::TooLarge { .. } | ServeError::Exists(_) | ServeError::NoSpace(_) => rep::ERR_INVALID,
        ServeError::Io(_) => rep::ERR_INVALID,
    }
}

/// How transmission answers a refused or failed request: `NBD_E*`. The protocol document asks
/// for `NBD_EINVAL` on a read past the end and `NBD_ENOSPC` on a write past it.
pub(crate) fn errno(e: &BlockError) -> u32 {
    match e {
        BlockError::OutOfRange { .. } => errno::EINVAL,
        BlockError::NoSpace(_) => errno::ENOSPC,
        BlockError::ReadOnly(_) => errno::EPERM,
        BlockError::Gone(_) => errno::ESHUTDOWN,
        BlockError::Io(_) => errno::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_as_the_protocol_document_asks() {
        assert_eq!(errno(&BlockError::OutOfRange { offset: 1, len: 1, size: 1 }), errno::EINVAL);
        assert_eq!(errno(&BlockError::NoSpace("x".into())), errno::ENOSPC);
        assert_eq!(errno(&BlockError::ReadOnly("d".into())), errno::EPERM);
        assert_eq!(errno(&BlockError::Gone("reset".into())), errno::ESHUTDOWN);
        assert_eq!(errno(&BlockError::from(std::io::Error::from_raw_os_error(28))), errno::ENOSPC);
        assert_eq!(errno(&BlockError::from(std::io::Error::other("x"))), errno::EIO);
        assert_eq!(option_reply(&ServeError::NotFound("d".into())), rep::ERR_UNKNOWN);
        assert_eq!(option_reply(&ServeError::Forbidden("d".into())), rep::ERR_UNKNOWN, "another DUT's disk looks absent");
    }
}
