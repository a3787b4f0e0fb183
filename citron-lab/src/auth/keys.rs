//! The lab's signing key, and signing and verifying tokens with it (JWT, EdDSA over Ed25519).
//!
//! One key for the whole lab, kept in the state store: the first citron to start on a state
//! generates it, every gateway on the same state loads it, so any of them verifies a token any
//! other minted without asking anyone. The key never leaves the state store and the process.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::rand::{SecureRandom as _, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair as _};

use super::claims::Claims;

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Past its `exp`.
    #[error("the token has expired: ask for a new one")]
    Expired,
    /// Not a token this lab signed, or damaged.
    #[error("the token is not one this lab signed ({0})")]
    Invalid(String),
}

/// The key pair tokens are signed and verified with.
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(Ed25519)")
    }
}

impl Keys {
    /// A new random PKCS#8 document (what the state store keeps).
    pub fn generate() -> Result<Vec<u8>, String> {
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map(|d| d.as_ref().to_vec()).map_err(|e| e.to_string())
    }

    /// The keys of a PKCS#8 document made by [`generate`](Self::generate).
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Keys, String> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| format!("the stored signing key is not an Ed25519 key: {e}"))?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        // No grace beyond `exp`: an expired token is expired on every gateway the same second
        // their clocks agree on.
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        Ok(Keys { encoding: EncodingKey::from_ed_der(pkcs8), decoding: DecodingKey::from_ed_der(pair.public_key().as_ref()), validation })
    }

    /// `claims`, signed.
    pub fn sign(&self, claims: &Claims) -> Result<String, String> {
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &self.encoding).map_err(|e| e.to_string())
    }

    /// The claims of `token` if this lab signed it and it has not expired (revocation is the
    /// caller's business).
    pub fn verify(&self, token: &str) -> Result<Claims, VerifyError> {
        match jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation) {
            Ok(d) => Ok(d.claims),
            Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => Err(VerifyError::Expired),
            Err(e) => Err(VerifyError::Invalid(e.to_string())),
        }
    }
}

/// A new token id: 16 random bytes, hex.
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    // The system's random source failing is not something to serve on.
    SystemRandom::new().fill(&mut b).expect("the system's random number generator works");
    hex(&b)
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    hex::encode(b)
}

/// The bytes of lower-case or upper-case hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    hex::decode(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::claims::{Pattern, Scope};

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "tenant:ci".into(),
            tenant: Some("ci".into()),
            scope: vec![Scope::Upload],
            job: Pattern::any(),
            run: None,
            dut: None,
            duts: vec![],
            exp,
            iat: 0,
            jti: new_id(),
        }
    }

    #[test]
    fn sign_verify_expire_and_foreign_keys() {
        let k = Keys::from_pkcs8(&Keys::generate().unwrap()).unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let c = claims(now + 60);
        let t = k.sign(&c).unwrap();
        assert_eq!(k.verify(&t), Ok(c));
        assert_eq!(k.verify(&k.sign(&claims(now - 1)).unwrap()), Err(VerifyError::Expired));
        let other = Keys::from_pkcs8(&Keys::generate().unwrap()).unwrap();
        assert!(matches!(other.verify(&t), Err(VerifyError::Invalid(_))));
        // A changed claim breaks the signature.
        let mut parts: Vec<String> = t.split('.').map(String::from).collect();
        parts[1].insert(3, 'A');
        assert!(matches!(k.verify(&parts.join(".")), Err(VerifyError::Invalid(_))));
        assert!(matches!(k.verify("not a token"), Err(VerifyError::Invalid(_))));
        assert_eq!(unhex(&hex(&[0, 255, 16])), Some(vec![0, 255, 16]));
        assert_eq!(unhex("0g"), None);
    }
}
