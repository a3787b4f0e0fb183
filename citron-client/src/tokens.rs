//! Tenants and tokens: `/api/v1/tenants`, `/api/v1/tokens…`.

use std::time::Duration;

use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::{Client, ClientError};

/// A tenant just added, and its first token (every scope but `admin`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    /// Its name.
    pub name: String,
    /// The bearer token.
    pub token: String,
    /// The token's id (what [`Client::revoke_token`] takes).
    pub id: String,
    /// When the token expires, seconds since the Unix epoch.
    pub expires_at: u64,
}

/// A token just minted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// The bearer token.
    pub token: String,
    /// Its id.
    pub id: String,
    /// When it expires, seconds since the Unix epoch.
    pub expires_at: u64,
}

/// A token to mint (administrator only).
#[derive(Debug, Clone, Default, Serialize)]
pub struct NewToken {
    /// `admin`, `upload`, `read`, `reserve`, `dut`.
    pub scopes: Vec<String>,
    /// Which jobs: a name, `prefix*` or `*`.
    pub job: String,
    /// How long it lives (`1h` when None).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// The tenant whose jobs it reaches (None: the lab's own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Only this run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<i64>,
    /// Which DUTs the `dut` scope drives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dut: Option<String>,
}

/// A narrowing of the client's own token: each field None keeps the token's own; none may be
/// wider or longer (the server refuses with 403).
#[derive(Debug, Clone, Default, Serialize)]
pub struct TokenSubset {
    /// Fewer scopes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// A narrower job pattern.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// A shorter life.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// One run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<i64>,
    /// Fewer DUTs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dut: Option<String>,
}

/// A duration as the REST API writes it (`30s`, `1500ms`): whole seconds when it is some.
pub fn duration_text(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis().max(1))
    }
}

impl Client {
    /// Adds tenant `name` (administrator only); its first token lives `ttl` (90 days when None).
    pub async fn add_tenant(&self, name: &str, ttl: Option<Duration>) -> Result<Tenant, ClientError> {
        let mut body = serde_json::json!({ "name": name });
        if let Some(t) = ttl {
            body["ttl"] = duration_text(t).into();
        }
        self.json(self.req(Method::POST, self.url(["api", "v1", "tenants"])).json(&body)).await
    }

    /// Mints a token (administrator only).
    pub async fn mint_token(&self, t: &NewToken) -> Result<Token, ClientError> {
        self.json(self.req(Method::POST, self.url(["api", "v1", "tokens"])).json(t)).await
    }

    /// A narrower token made from this client's own.
    pub async fn subset_token(&self, s: &TokenSubset) -> Result<Token, ClientError> {
        self.json(self.req(Method::POST, self.url(["api", "v1", "tokens", "subset"])).json(s)).await
    }

    /// Revokes token `id` (administrator only); every gateway refuses it from then on.
    pub async fn revoke_token(&self, id: &str) -> Result<(), ClientError> {
        self.send(self.req(Method::DELETE, self.url(["api", "v1", "tokens", id]))).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_the_api_writes_them() {
        assert_eq!(duration_text(Duration::from_secs(30)), "30s");
        assert_eq!(duration_text(Duration::from_millis(1500)), "1500ms");
        assert_eq!(duration_text(Duration::from_nanos(5)), "1ms");
        let nt = NewToken { scopes: vec!["read".into()], job: "k-*".into(), ttl: Some("10m".into()), ..NewToken::default() };
        assert_eq!(serde_json::to_value(&nt).unwrap(), serde_json::json!({"scopes": ["read"], "job": "k-*", "ttl": "10m"}));
    }
}
