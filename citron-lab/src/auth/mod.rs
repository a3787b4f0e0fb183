//! Who may do what: one model for the whole lab.
//!
//! The lab's `api_token` is the administrator. Everyone else holds signed, self-contained
//! tokens ([`Claims`]: subject, scopes, job pattern, optional run and DUT pattern, expiry, id)
//! minted by the administrator (`POST /api/v1/tokens`, `POST /api/v1/tenants`) or narrowed from
//! another token (`POST /api/v1/tokens/subset`). Any gateway on the same state verifies them
//! with the lab's key, without a call; revocations are cached ([`TokenStore::is_revoked`]) and
//! refreshed by the state store's notifications or a timer.
//!
//! Every request gets a [`Principal`] at the API's door ([`Auth::principal`]); then
//! [`route_policy`] refuses what a non-administrator may not reach at all (everything but the
//! results, token and reservation routes, and the DUT routes its `dut` scope names), and the results
//! handlers check scopes, job pattern, run and tenant themselves.
//!
//! - `claims.rs`: the claims and their rules (patterns, narrowing), pure.
//! - `keys.rs`: the signing key, signing and verifying.
//! - `store.rs`: the key, tokens and tenants in the state store.

mod claims;
mod keys;
mod store;

use std::sync::Arc;

use http::{header, HeaderMap, Method};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use claims::{check_name, Claims, Pattern, Scope};
pub(crate) use keys::{hex, unhex};
pub use keys::{new_id, Keys, VerifyError};
pub use store::TokenStore;
pub(crate) use store::{call, now_micros};

/// Who is asking. Serializable: a request forwarded to the DUT's own gateway carries it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Principal {
    /// The lab's `api_token`, or anyone when the lab sets none (the API then only listens on
    /// loopback).
    Admin,
    /// A signed token, verified and not revoked.
    Token(Claims),
}

impl Principal {
    /// Whether this is the administrator.
    pub fn is_admin(&self) -> bool {
        matches!(self, Principal::Admin) || matches!(self, Principal::Token(c) if c.has(Scope::Admin))
    }

    /// The token's claims (`None` for the administrator).
    pub fn claims(&self) -> Option<&Claims> {
        match self {
            Principal::Admin => None,
            Principal::Token(c) => Some(c),
        }
    }
}

/// Why a request is refused at the door.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token, or one that is not the lab's (401).
    #[error("missing or wrong bearer token: send Authorization: Bearer <the lab's API token or a token it minted>")]
    Missing,
    /// Expired, revoked or not signed by this lab (401).
    #[error("{0}")]
    Refused(String),
    /// A valid token that may not do this (403).
    #[error("{0}")]
    Forbidden(String),
}

/// The door: the administrator's token digest, and the token store when the lab has a state
/// store (without one, only the administrator exists).
#[derive(Debug)]
pub struct Auth {
    /// SHA-256 of the `api_token`: comparing digests takes the same time whatever the given
    /// token's length or content.
    admin: Option<[u8; 32]>,
    tokens: Option<Arc<TokenStore>>,
}

impl Auth {
    /// With the lab's `api_token` (`None`: every request is the administrator's) and its
    /// token store.
    pub fn new(admin: Option<&str>, tokens: Option<Arc<TokenStore>>) -> Auth {
        Auth { admin: admin.map(|t| Sha256::digest(t.as_bytes()).into()), tokens }
    }

    /// The token store, if the lab has a state store.
    pub fn tokens(&self) -> Option<&Arc<TokenStore>> {
        self.tokens.as_ref()
    }

    /// Who sent `headers`. Without a bearer token: the administrator when the lab has no
    /// `api_token`, else [`AuthError::Missing`].
    pub fn principal(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        let given = headers.get(header::AUTHORIZATION).and_then(|v| v.as_bytes().strip_prefix(b"Bearer ")).map(|g| g.trim_ascii());
        let Some(given) = given else {
            return match self.admin {
                None => Ok(Principal::Admin),
                Some(_) => Err(AuthError::Missing),
            };
        };
        self.principal_of(given)
    }

    /// Who holds the token `given` (a bearer token, or a key given some other way, as Duffy's
    /// legacy API takes it in `?key=`): the administrator, a signed token not revoked, or
    /// [`AuthError::Missing`] / [`AuthError::Refused`]. With no `api_token`, anything that is
    /// not a signed token is the administrator's, as at the door.
    pub fn principal_of(&self, given: &[u8]) -> Result<Principal, AuthError> {
        if let Some(want) = &self.admin {
            if token_matches(given, want) {
                return Ok(Principal::Admin);
            }
        }
        // A signed token has two dots; anything else was meant as the administrator's.
        let text = std::str::from_utf8(given).ok().filter(|t| t.bytes().filter(|b| *b == b'.').count() == 2);
        let (Some(text), Some(tokens)) = (text, &self.tokens) else {
            return match self.admin {
                None => Ok(Principal::Admin),
                Some(_) => Err(AuthError::Missing),
            };
        };
        let claims = tokens.keys().verify(text).map_err(|e| AuthError::Refused(e.to_string()))?;
        if tokens.is_revoked(&claims.jti) {
            return Err(AuthError::Refused(format!("the token {} was revoked", claims.jti)));
        }
        tokens.used(&claims.jti);
        Ok(Principal::Token(claims))
    }
}

/// Whether `given` is the token whose SHA-256 is `want`, compared in constant time.
pub fn token_matches(given: &[u8], want: &[u8; 32]) -> bool {
    let d: [u8; 32] = Sha256::digest(given).into();
    d.ct_eq(want).into()
}

/// What a non-administrator may reach at all, by route: the results, token and reservation
/// routes and the event feed (their handlers check the scopes), and a DUT's `job`, `events` and `accesses` with the `dut` scope
/// for that DUT. Everything else (adding DUTs, metrics, ...) is the administrator's.
pub fn route_policy(p: &Principal, method: &Method, path: &str) -> Result<(), AuthError> {
    let Principal::Token(c) = p else { return Ok(()) };
    if c.has(Scope::Admin) {
        return Ok(());
    }
    let rest = path.strip_prefix("/api/v1/").unwrap_or("");
    let first = rest.split('/').next().unwrap_or("");
    // The feed's handler narrows what a token reads of it (`api::events`).
    if matches!(first, "results" | "tokens" | "reservations") || (matches!(first, "openapi.json" | "events") && method == Method::GET) {
        return Ok(());
    }
    let segs: Vec<&str> = rest.split('/').collect();
    if let ["duts", id, "job" | "events" | "accesses"] = segs.as_slice() {
        let id = percent_decoded(id);
        if c.has(Scope::Dut) && c.drives(&id) {
            return Ok(());
        }
        return Err(AuthError::Forbidden(format!("the token has no `dut` scope for DUT {id:?}")));
    }
    Err(AuthError::Forbidden(format!("{method} {path} is for the lab's administrator (its api_token)")))
}

/// A path segment with its `%XX` escapes decoded (as axum decodes `{id}`).
fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(scope: Vec<Scope>, dut: Option<&str>) -> Principal {
        Principal::Token(Claims {
            sub: "tenant:t".into(),
            tenant: Some("t".into()),
            scope,
            job: Pattern::any(),
            run: None,
            dut: dut.map(|d| Pattern::parse(d).unwrap()),
            duts: vec![],
            exp: u64::MAX,
            iat: 0,
            jti: "x".into(),
        })
    }

    #[test]
    fn policy_by_route() {
        let get = Method::GET;
        let up = token(vec![Scope::Upload], None);
        assert!(route_policy(&up, &get, "/api/v1/results/j/latest").is_ok());
        assert!(route_policy(&up, &Method::POST, "/api/v1/tokens/subset").is_ok());
        assert!(route_policy(&up, &get, "/api/v1/duts").is_err());
        assert!(route_policy(&up, &get, "/api/v1/events").is_ok());
        assert!(route_policy(&up, &Method::POST, "/api/v1/events").is_err());
        assert!(route_policy(&up, &get, "/metrics").is_err());
        assert!(route_policy(&up, &Method::PUT, "/api/v1/duts/d1/job").is_err());
        let dut = token(vec![Scope::Dut], Some("rack1-*"));
        assert!(route_policy(&dut, &Method::PUT, "/api/v1/duts/rack1-a/job").is_ok());
        assert!(route_policy(&dut, &Method::POST, "/api/v1/duts/rack1%2Da/events").is_ok());
        assert!(route_policy(&dut, &Method::PUT, "/api/v1/duts/rack2-a/job").is_err());
        assert!(route_policy(&dut, &Method::DELETE, "/api/v1/duts/rack1-a").is_err());
        // A reservation's token: exactly its DUTs, by id.
        let Principal::Token(mut c) = token(vec![Scope::Dut], None) else { unreachable!() };
        c.duts = vec!["d1".into(), "d3".into()];
        let res = Principal::Token(c);
        assert!(route_policy(&res, &Method::PUT, "/api/v1/duts/d3/job").is_ok());
        assert!(route_policy(&res, &Method::PUT, "/api/v1/duts/d2/job").is_err());
        assert!(route_policy(&res, &Method::PUT, "/api/v1/duts/d1x/job").is_err());
        assert!(route_policy(&up, &Method::POST, "/api/v1/reservations").is_ok());
        assert!(route_policy(&up, &get, "/api/v1/pool/duts").is_err());
        assert!(route_policy(&Principal::Admin, &get, "/api/v1/duts").is_ok());
        assert!(route_policy(&token(vec![Scope::Admin], None), &get, "/metrics").is_ok());
    }

    #[test]
    fn the_door_without_a_token_store() {
        let mut h = HeaderMap::new();
        let open = Auth::new(None, None);
        assert_eq!(open.principal(&h), Ok(Principal::Admin));
        let closed = Auth::new(Some("s3cret"), None);
        assert_eq!(closed.principal(&h), Err(AuthError::Missing));
        h.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert_eq!(closed.principal(&h), Ok(Principal::Admin));
        h.insert(header::AUTHORIZATION, "Bearer a.b.c".parse().unwrap());
        assert_eq!(closed.principal(&h), Err(AuthError::Missing));
    }
}
