//! Tokens and tenants in the state store: the signing key, every minted token (for revocation
//! and last use), the tenants.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use citron_core::store::StoreError;
use parking_lot::{Mutex, RwLock};
use sqlx::Row as _;

use super::claims::Claims;
use super::keys::{hex, unhex, Keys};
use crate::state::Db;

/// Runs `f` on the database thread from async code without blocking the runtime's worker.
pub(crate) async fn call<T, F>(db: &Arc<Db>, f: impl FnOnce(sqlx::AnyPool) -> F + Send + 'static) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, sqlx::Error>> + Send + 'static,
{
    let db = db.clone();
    tokio::task::spawn_blocking(move || db.call(f)).await.map_err(StoreError::backend)?
}

/// Microseconds since the Unix epoch, now.
pub(crate) fn now_micros() -> i64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// How long used tokens wait before their last use is written (one write for many uses).
const LAST_USE_BATCH: Duration = Duration::from_secs(1);

/// The token side of the state store.
pub struct TokenStore {
    db: Arc<Db>,
    keys: Keys,
    /// Ids of revoked tokens that have not expired yet (expired ones are refused anyway).
    revoked: RwLock<HashSet<String>>,
    /// Tokens used since the last write, and when.
    used: Arc<Mutex<HashMap<String, i64>>>,
    /// Bumped whenever the revoked set may have grown: what ends the event streams of revoked
    /// tokens ([`revocations`](TokenStore::revocations)).
    revocations: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore").field("revoked", &self.revoked.read().len()).finish()
    }
}

impl TokenStore {
    /// Loads the signing key (generating it on a new state) and the revocations.
    pub fn open(db: Arc<Db>) -> Result<TokenStore, StoreError> {
        let fresh = hex(&Keys::generate().map_err(StoreError::backend)?);
        // Two gateways starting at once on one PostgreSQL: the first insert wins, both load it.
        let pkcs8: String = db.call(move |pool| async move {
            sqlx::query("INSERT INTO signing_keys (id, pkcs8, created_at) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING")
                .bind(fresh)
                .bind(now_micros())
                .execute(&pool)
                .await?;
            sqlx::query("SELECT pkcs8 FROM signing_keys WHERE id = 1").fetch_one(&pool).await?.try_get(0)
        })?;
        let der = unhex(&pkcs8).ok_or_else(|| StoreError::backend("the stored signing key is not hex"))?;
        let keys = Keys::from_pkcs8(&der).map_err(StoreError::backend)?;
        let store =
            TokenStore { db, keys, revoked: RwLock::default(), used: Arc::default(), revocations: tokio::sync::watch::channel(0).0 };
        store.refresh_revocations_blocking()?;
        Ok(store)
    }

    /// The state store it keeps tokens in.
    pub(crate) fn db(&self) -> &Arc<Db> {
        &self.db
    }

    /// The keys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Whether the token with id `jti` was revoked (as of the last refresh on this gateway, and
    /// every revocation made through it).
    pub fn is_revoked(&self, jti: &str) -> bool {
        self.revoked.read().contains(jti)
    }

    /// Reads the revocations again: what the state store's change notifications call (a token
    /// revoked through another gateway), and a timer as a fallback.
    pub fn refresh_revocations_blocking(&self) -> Result<(), StoreError> {
        let now = now_micros();
        let rows = self.db.call(move |pool| async move {
            sqlx::query("SELECT id FROM tokens WHERE revoked_at IS NOT NULL AND expires_at > $1").bind(now).fetch_all(&pool).await
        })?;
        let ids: HashSet<String> = rows.iter().filter_map(|r| r.try_get::<String, _>(0).ok()).collect();
        *self.revoked.write() = ids;
        self.revocations.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    /// A watch bumped whenever tokens may have been revoked (through this gateway, or another
    /// one as the state store's notification says): a long-lived request holding a token (the
    /// event feed) asks [`is_revoked`](Self::is_revoked) again after each change.
    pub fn revocations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revocations.subscribe()
    }

    /// [`refresh_revocations_blocking`](Self::refresh_revocations_blocking) from async code.
    pub async fn refresh_revocations(self: &Arc<Self>) -> Result<(), StoreError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.refresh_revocations_blocking()).await.map_err(StoreError::backend)?
    }

    /// Signs `claims` and records the token; answers the token.
    pub async fn mint(&self, claims: &Claims) -> Result<String, StoreError> {
        let token = self.keys.sign(claims).map_err(StoreError::backend)?;
        let json = serde_json::to_string(claims).map_err(StoreError::backend)?;
        let (id, sub, tenant) = (claims.jti.clone(), claims.sub.clone(), claims.tenant.clone());
        let exp = i64::try_from(claims.exp.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
        let iat = now_micros();
        call(&self.db, move |pool| async move {
            sqlx::query("INSERT INTO tokens (id, subject, tenant, claims, issued_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(id)
                .bind(sub)
                .bind(tenant)
                .bind(json)
                .bind(iat)
                .bind(exp)
                .execute(&pool)
                .await
        })
        .await?;
        Ok(token)
    }

    /// The tenant of the token `id` (`Some(None)`: a token of the lab's own), `None` if no such
    /// token was minted.
    pub async fn tenant_of(&self, id: &str) -> Result<Option<Option<String>>, StoreError> {
        let id = id.to_string();
        let row = call(&self.db, move |pool| async move {
            sqlx::query("SELECT tenant FROM tokens WHERE id = $1").bind(id).fetch_optional(&pool).await
        })
        .await?;
        Ok(row.map(|r| r.try_get::<Option<String>, _>(0).ok().flatten()))
    }

    /// Revokes the token `id` (again is fine); `false` if no such token was minted. On
    /// PostgreSQL, the other gateways are told in the same transaction (`NOTIFY citron,
    /// 'tokens'`), and refuse the token from then on.
    pub async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        let i = id.to_string();
        let now = now_micros();
        let engine = self.db.engine;
        let n = call(&self.db, move |pool| async move {
            let mut tx = pool.begin().await?;
            let n = sqlx::query("UPDATE tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2")
                .bind(now)
                .bind(i)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if engine == crate::state::Engine::Postgres && n > 0 {
                sqlx::query("SELECT pg_notify($1, 'tokens')").bind(crate::state::feed::CHANNEL).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(n)
        })
        .await?;
        if n > 0 {
            self.revoked.write().insert(id.to_string());
            self.revocations.send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok(n > 0)
    }

    /// Notes that the token `jti` was used; written with others within a second.
    pub fn used(&self, jti: &str) {
        let first = {
            let mut u = self.used.lock();
            let first = u.is_empty();
            u.insert(jti.to_string(), now_micros());
            first
        };
        if !first {
            return;
        }
        let (db, used) = (self.db.clone(), self.used.clone());
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        rt.spawn(async move {
            tokio::time::sleep(LAST_USE_BATCH).await;
            db.spawn("the last use of tokens", move |pool| async move {
                let batch = std::mem::take(&mut *used.lock());
                let mut tx = pool.begin().await?;
                for (id, at) in batch {
                    sqlx::query("UPDATE tokens SET last_used = $1 WHERE id = $2").bind(at).bind(id).execute(&mut *tx).await?;
                }
                tx.commit().await
            });
        });
    }

    /// Whether the tenant `name` exists.
    pub async fn has_tenant(&self, name: &str) -> Result<bool, StoreError> {
        let n = name.to_string();
        let row = call(&self.db, move |pool| async move {
            sqlx::query("SELECT name FROM tenants WHERE name = $1").bind(n).fetch_optional(&pool).await
        })
        .await?;
        Ok(row.is_some())
    }

    /// Adds the tenant `name`; `false` if it exists.
    pub async fn add_tenant(&self, name: &str) -> Result<bool, StoreError> {
        let n = name.to_string();
        let now = now_micros();
        let added = call(&self.db, move |pool| async move {
            sqlx::query("INSERT INTO tenants (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
                .bind(n)
                .bind(now)
                .execute(&pool)
                .await
        })
        .await?
        .rows_affected();
        Ok(added > 0)
    }
}
