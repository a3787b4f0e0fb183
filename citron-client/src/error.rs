//! What a client call can fail with.

use std::path::PathBuf;

/// The most of an error answer's body that is read for its message.
const ERROR_BODY_MAX: usize = 64 << 10;

/// Why a call failed. The server's refusals keep its status and message (which says what to
/// do); the rest say whether the server was reached at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with an error status: 401/403 (the token), 404, 409 (other content
    /// at that path, a finished run), 413, 507…
    #[error("{status}: {message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The server's message (its JSON `error`), or the status's reason.
        message: String,
    },
    /// The server could not be reached, or the connection broke.
    #[error("cannot reach {server}: {reason}")]
    Unreachable {
        /// The server's address.
        server: String,
        /// Why.
        reason: String,
    },
    /// The server answered something this client does not understand (another version?).
    #[error("{0}")]
    Protocol(String),
    /// A download's content does not have the digest the server announced: nothing was kept.
    #[error("the download's SHA-256 is {got}, not {expected} as the server said: nothing was kept")]
    Checksum {
        /// What the server said.
        expected: String,
        /// What arrived.
        got: String,
    },
    /// A local file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The system's reason.
        source: std::io::Error,
    },
    /// A bad argument (a URL, a token, a duration): fix the call.
    #[error("{0}")]
    Usage(String),
}

impl ClientError {
    /// Whether the token was refused (401) or may not do this (403).
    pub fn is_auth(&self) -> bool {
        matches!(self, ClientError::Api { status: 401 | 403, .. })
    }

    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub(crate) fn unreachable(server: &str, e: &reqwest::Error) -> ClientError {
        // reqwest's Display is "error sending request"; the cause says what happened.
        let mut reason = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            reason = format!("{reason}: {s}");
            src = s.source();
        }
        ClientError::Unreachable { server: server.to_string(), reason }
    }

    /// The error an error answer is: its status and the message of its JSON body.
    pub(crate) async fn from_answer(resp: reqwest::Response) -> ClientError {
        let status = resp.status();
        let mut body = Vec::new();
        let mut stream = resp;
        // Bounded: a hostile server's endless error body is not read whole.
        while let Ok(Some(chunk)) = stream.chunk().await {
            body.extend_from_slice(&chunk);
            if body.len() > ERROR_BODY_MAX {
                break;
            }
        }
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
        ClientError::Api { status: status.as_u16(), message }
    }
}
