//! The pool in the state store: each operation one transaction, each that changes anything
//! first taking the pool's lock (`queue::lock`, why: see `queue.rs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row as _};

use super::queue::{self, lock, plan, Context};
use super::request::{Checked, DutAttrs};
use super::{secs, AllocatedDut, PoolDut, Reservation};
use crate::auth::{new_id, Claims, Pattern, Scope, TokenStore};

/// Enters the lab file's DUTs: new ones free, known ones with their attributes updated.
pub(super) async fn enter(pool: AnyPool, duts: Vec<DutAttrs>) -> Result<(), sqlx::Error> {
    let now = super::now_micros();
    let mut tx = pool.begin().await?;
    lock(&mut tx).await?;
    for d in duts {
        let attrs = serde_json::to_string(&d).unwrap_or_default();
        sqlx::query(
            "INSERT INTO pool_duts (id, gateway, attrs, state, uses, last_used, changed_at) VALUES ($1, $2, $3, 'free', 0, 0, $4)
             ON CONFLICT (id) DO UPDATE SET attrs = excluded.attrs, gateway = excluded.gateway",
        )
        .bind(d.id.clone())
        .bind(d.gateway.clone())
        .bind(attrs)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Every DUT with its pool state.
pub(super) async fn duts(pool: AnyPool) -> Result<Vec<PoolDut>, sqlx::Error> {
    let rows = sqlx::query("SELECT attrs, state, reservation, uses, reason, output FROM pool_duts ORDER BY id").fetch_all(&pool).await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            Some(PoolDut {
                dut: serde_json::from_str(&r.try_get::<String, _>(0).ok()?).ok()?,
                state: r.try_get(1).ok()?,
                reservation: r.try_get(2).ok()?,
                uses: r.try_get(3).ok()?,
                reason: r.try_get(4).ok()?,
                output: r.try_get(5).ok()?,
            })
        })
        .collect())
}

/// Queues a checked request; answers its id.
pub(super) async fn insert(pool: AnyPool, tenant: String, req: Checked, now: i64) -> Result<i64, sqlx::Error> {
    let text = serde_json::to_string(&req).unwrap_or_default();
    let life = i64::try_from(req.lifetime.as_secs()).unwrap_or(i64::MAX);
    sqlx::query_scalar(
        "INSERT INTO reservations (tenant, state, request, priority, lifetime_secs, created_at) VALUES ($1, 'waiting', $2, $3, $4, $5) RETURNING id",
    )
    .bind(tenant)
    .bind(text)
    .bind(req.priority)
    .bind(life)
    .bind(now)
    .fetch_one(&pool)
    .await
}

const COLUMNS: &str =
    "id, tenant, state, request, priority, lifetime_secs, created_at, allocated_at, expires_at, ended_at, keep_until, duts, token, reason";

fn reservation(r: &AnyRow) -> Option<Reservation> {
    let req: Checked = serde_json::from_str(&r.try_get::<String, _>(3).ok()?).ok()?;
    let tenant: String = r.try_get(1).ok()?;
    let duts: Option<String> = r.try_get(11).ok()?;
    let duts: Vec<DutAttrs> = duts.and_then(|d| serde_json::from_str(&d).ok()).unwrap_or_default();
    let state: String = r.try_get(2).ok()?;
    let t = |i: usize| r.try_get::<Option<i64>, _>(i).ok().flatten().map(secs);
    Some(Reservation {
        id: r.try_get(0).ok()?,
        tenant: (!tenant.is_empty()).then_some(tenant),
        tags: req.tags,
        kind: req.kind.map(|k| k.name().to_string()),
        arch: req.arch,
        model: req.model,
        count: req.count,
        priority: r.try_get(4).ok()?,
        lifetime: u64::try_from(r.try_get::<i64, _>(5).ok()?).unwrap_or(0),
        created_at: secs(r.try_get(6).ok()?),
        allocated_at: t(7),
        expires_at: t(8),
        ended_at: t(9),
        keep_until: t(10),
        duts: duts.into_iter().map(AllocatedDut::of).collect(),
        // The token drives the DUTs only while they are held.
        token: if state == "allocated" || (state == "failed" && t(10).is_some()) { r.try_get(12).ok()? } else { None },
        reason: r.try_get(13).ok()?,
        state,
    })
}

/// The reservation `id`.
pub(super) async fn get(pool: AnyPool, id: i64) -> Result<Option<Reservation>, sqlx::Error> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM reservations WHERE id = $1")).bind(id).fetch_optional(&pool).await?;
    Ok(row.as_ref().and_then(reservation))
}

/// One page of reservations (of `tenant` if given, in `state` if given), by id.
pub(super) async fn list(
    pool: AnyPool,
    tenant: Option<String>,
    state: Option<String>,
    after: i64,
    limit: i64,
) -> Result<Vec<Reservation>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM reservations WHERE id > $1 AND ($2 IS NULL OR tenant = $2) AND ($3 IS NULL OR state = $3) ORDER BY id LIMIT $4"
    ))
    .bind(after)
    .bind(tenant)
    .bind(state)
    .bind(limit)
    .fetch_all(&pool)
    .await?;
    Ok(rows.iter().filter_map(reservation).collect())
}

/// Ends the reservation `id` as `state` (`released`, or `failed` keeping its DUTs until
/// `keep_until`). `None`: nothing changed (already over); else the token to revoke, if any.
pub(super) async fn end(
    pool: AnyPool,
    id: i64,
    state: &'static str,
    keep_until: Option<i64>,
    now: i64,
) -> Result<Option<Option<String>>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    lock(&mut tx).await?;
    let Some(row) =
        sqlx::query("SELECT state, token_id, keep_until FROM reservations WHERE id = $1").bind(id).fetch_optional(&mut *tx).await?
    else {
        return Ok(None);
    };
    let (was, token): (String, Option<String>) = (row.try_get(0)?, row.try_get(1)?);
    let kept: Option<i64> = row.try_get(2)?;
    let dut_state = if keep_until.is_some() { "kept" } else { "recycling" };
    let changed = match (was.as_str(), state) {
        ("waiting", "released") => {
            sqlx::query("UPDATE reservations SET state = 'released', ended_at = $1 WHERE id = $2")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            Some(None)
        }
        ("allocated", _) => {
            sqlx::query("UPDATE reservations SET state = $1, ended_at = $2, keep_until = $3 WHERE id = $4")
                .bind(state)
                .bind(now)
                .bind(keep_until)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE pool_duts SET state = $1, changed_at = $2 WHERE reservation = $3 AND state IN ('allocated', 'starting')")
                .bind(dut_state)
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            Some(token)
        }
        // Released while kept: the DUTs go back now.
        ("failed", "released") if kept.is_some() => {
            sqlx::query("UPDATE reservations SET keep_until = NULL WHERE id = $1").bind(id).execute(&mut *tx).await?;
            sqlx::query("UPDATE pool_duts SET state = 'recycling', changed_at = $1 WHERE reservation = $2 AND state = 'kept'")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            Some(token)
        }
        _ => None,
    };
    tx.commit().await?;
    Ok(changed)
}

/// The claims of the token of reservation `id`: the `dut` scope on exactly `duts`, until `exp_us`.
fn claims(id: i64, tenant: &str, duts: Vec<String>, exp_us: i64) -> Claims {
    Claims {
        sub: format!("reservation:{id}"),
        tenant: (!tenant.is_empty()).then(|| tenant.to_string()),
        scope: vec![Scope::Dut],
        job: Pattern::any(),
        run: None,
        dut: None,
        duts,
        exp: u64::try_from(exp_us / 1_000_000).unwrap_or(0),
        iat: super::Pool::now_secs(),
        jti: new_id(),
    }
}

/// Signs `c` and records it as [`TokenStore::mint`] does, inside the transaction.
async fn mint(tx: &mut sqlx::Transaction<'static, sqlx::Any>, tokens: &TokenStore, c: &Claims) -> Result<String, sqlx::Error> {
    let token = tokens.keys().sign(c).map_err(|e| sqlx::Error::Protocol(format!("cannot sign a reservation's token: {e}")))?;
    sqlx::query("INSERT INTO tokens (id, subject, tenant, claims, issued_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(c.jti.clone())
        .bind(c.sub.clone())
        .bind(c.tenant.clone())
        .bind(serde_json::to_string(c).unwrap_or_default())
        .bind(super::now_micros())
        .bind(i64::try_from(c.exp.saturating_mul(1_000_000)).unwrap_or(i64::MAX))
        .execute(&mut **tx)
        .await?;
    Ok(token)
}

/// A new lifetime for `id`; for an allocated one, a new token. Answers the old token to revoke.
pub(super) async fn extend(pool: AnyPool, tokens: Arc<TokenStore>, id: i64, life: Duration) -> Result<Option<String>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    lock(&mut tx).await?;
    let row = sqlx::query("SELECT state, allocated_at, tenant, duts, token_id FROM reservations WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    let life_s = i64::try_from(life.as_secs()).unwrap_or(i64::MAX);
    let state: String = row.try_get(0)?;
    let mut old = None;
    if state == "allocated" {
        let at: i64 = row.try_get(1)?;
        let tenant: String = row.try_get(2)?;
        let duts: Vec<DutAttrs> = serde_json::from_str(&row.try_get::<String, _>(3)?).unwrap_or_default();
        let expires = at.saturating_add(life_s.saturating_mul(1_000_000));
        let c = claims(id, &tenant, duts.into_iter().map(|d| d.id).collect(), expires);
        let token = mint(&mut tx, &tokens, &c).await?;
        old = row.try_get(4)?;
        sqlx::query("UPDATE reservations SET lifetime_secs = $1, expires_at = $2, token = $3, token_id = $4 WHERE id = $5")
            .bind(life_s)
            .bind(expires)
            .bind(token)
            .bind(c.jti)
            .bind(id)
            .execute(&mut *tx)
            .await?;
    } else {
        sqlx::query("UPDATE reservations SET lifetime_secs = $1 WHERE id = $2").bind(life_s).bind(id).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(old)
}

/// Puts the DUT `id` back in the pool (from `disabled` or `quarantined`), or takes a free or
/// quarantined one out. Answers its state after (`None`: no such DUT).
pub(super) async fn set_enabled(pool: AnyPool, id: String, enable: bool, now: i64) -> Result<Option<String>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    lock(&mut tx).await?;
    if enable {
        sqlx::query("UPDATE pool_duts SET state = 'free', reservation = NULL, reason = NULL, output = NULL, changed_at = $1 WHERE id = $2 AND state IN ('disabled', 'quarantined')")
            .bind(now)
            .bind(id.clone())
            .execute(&mut *tx)
            .await?;
    } else {
        sqlx::query("UPDATE pool_duts SET state = 'disabled', reason = 'disabled by hand', changed_at = $1 WHERE id = $2 AND state IN ('free', 'quarantined')")
            .bind(now)
            .bind(id.clone())
            .execute(&mut *tx)
            .await?;
    }
    let state = sqlx::query_scalar("SELECT state FROM pool_duts WHERE id = $1").bind(id).fetch_optional(&mut *tx).await?;
    tx.commit().await?;
    Ok(state)
}

/// What one pass changed.
#[derive(Debug, Default)]
pub(super) struct Passed {
    /// Reservations that expired, with the token to revoke.
    pub expired: Vec<(i64, String)>,
    /// Failed reservations whose kept DUTs went back, with the token to revoke.
    pub unkept: Vec<(i64, String)>,
    /// Reservations allocated: id, tenant, DUT ids.
    pub allocated: Vec<(i64, String, Vec<String>)>,
    /// Every DUT's use count.
    pub uses: Vec<(String, i64)>,
}

/// One allocation pass in one transaction (see `queue.rs`).
pub(super) async fn pass(pool: AnyPool, tokens: Arc<TokenStore>, max_duts: HashMap<String, u32>, now: i64) -> Result<Passed, sqlx::Error> {
    let mut out = Passed::default();
    let mut tx = pool.begin().await?;
    lock(&mut tx).await?;
    let rows = sqlx::query(
        "UPDATE reservations SET state = 'expired', ended_at = $1 WHERE state = 'allocated' AND expires_at <= $1 RETURNING id, token_id",
    )
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    for r in rows {
        let id: i64 = r.try_get(0)?;
        sqlx::query(
            "UPDATE pool_duts SET state = 'recycling', changed_at = $1 WHERE reservation = $2 AND state IN ('allocated', 'starting')",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        out.expired.push((id, r.try_get::<Option<String>, _>(1)?.unwrap_or_default()));
    }
    let rows = sqlx::query("UPDATE reservations SET keep_until = NULL WHERE state = 'failed' AND keep_until <= $1 RETURNING id, token_id")
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
    for r in rows {
        let id: i64 = r.try_get(0)?;
        sqlx::query("UPDATE pool_duts SET state = 'recycling', changed_at = $1 WHERE reservation = $2 AND state = 'kept'")
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        out.unkept.push((id, r.try_get::<Option<String>, _>(1)?.unwrap_or_default()));
    }
    let waiting = queue::waiting(&mut tx).await?;
    let free = queue::free(&mut tx).await?;
    let mut ctx: Context = queue::context(&mut tx, &waiting).await?;
    ctx.max_duts = max_duts;
    for (id, duts) in plan(&waiting, &free, &ctx) {
        let Some(w) = waiting.iter().find(|w| w.id == id) else { continue };
        let dut_state = if w.req.job.is_some() { "starting" } else { "allocated" };
        for d in &duts {
            let n = sqlx::query(
                "UPDATE pool_duts SET state = $1, reservation = $2, uses = uses + 1, last_used = $3, changed_at = $3, reason = NULL, output = NULL WHERE id = $4 AND state = 'free'",
            )
            .bind(dut_state)
            .bind(id)
            .bind(now)
            .bind(d.id.clone())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n != 1 {
                // Rolled back as the transaction is dropped.
                return Err(sqlx::Error::Protocol(format!("DUT {} was not free any more", d.id)));
            }
        }
        let expires = now.saturating_add(i64::try_from(w.req.lifetime.as_micros()).unwrap_or(i64::MAX));
        let ids: Vec<String> = duts.iter().map(|d| d.id.clone()).collect();
        let c = claims(id, &w.tenant, ids.clone(), expires);
        let token = mint(&mut tx, &tokens, &c).await?;
        let model = duts.first().and_then(|d| d.model.clone());
        sqlx::query(
            "UPDATE reservations SET state = 'allocated', allocated_at = $1, expires_at = $2, duts = $3, model = $4, token = $5, token_id = $6, reason = NULL WHERE id = $7 AND state = 'waiting'",
        )
        .bind(now)
        .bind(expires)
        .bind(serde_json::to_string(&duts).unwrap_or_default())
        .bind(model)
        .bind(token)
        .bind(c.jti)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        out.allocated.push((id, w.tenant.clone(), ids));
    }
    let rows = sqlx::query("SELECT id, uses FROM pool_duts").fetch_all(&mut *tx).await?;
    out.uses = rows.iter().filter_map(|r| Some((r.try_get(0).ok()?, r.try_get(1).ok()?))).collect();
    tx.commit().await?;
    Ok(out)
}

/// The DUTs in `state` (`starting`, `recycling`) with their reservation and its job.
pub(super) async fn in_state(pool: AnyPool, state: &'static str) -> Result<Vec<(DutAttrs, Option<i64>, Option<String>)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT d.attrs, d.reservation, r.request FROM pool_duts d LEFT JOIN reservations r ON d.reservation = r.id WHERE d.state = $1",
    )
    .bind(state)
    .fetch_all(&pool)
    .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let attrs: DutAttrs = serde_json::from_str(&r.try_get::<String, _>(0).ok()?).ok()?;
            let req: Option<String> = r.try_get(2).ok()?;
            let job = req.and_then(|q| serde_json::from_str::<Checked>(&q).ok()).and_then(|c| c.job);
            Some((attrs, r.try_get(1).ok()?, job))
        })
        .collect())
}

/// The DUT `id` moves from `from` to `to` (`free`, `allocated`, `quarantined`), with a reason and
/// output; a DUT that leaves its reservation (`free`, `quarantined`) is no longer its.
pub(super) async fn move_dut(
    pool: AnyPool,
    id: String,
    from: &'static str,
    to: &'static str,
    reason: Option<String>,
    output: Option<String>,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    lock(&mut tx).await?;
    let keep_res = to == "allocated";
    let n = sqlx::query(
        "UPDATE pool_duts SET state = $1, reason = $2, output = $3, changed_at = $4, reservation = CASE WHEN $5 = 1 THEN reservation ELSE NULL END WHERE id = $6 AND state = $7",
    )
    .bind(to)
    .bind(reason)
    .bind(output)
    .bind(super::now_micros())
    .bind(i64::from(keep_res))
    .bind(id)
    .bind(from)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(n == 1)
}

/// A DUT of reservation `id` could not start: the DUT is quarantined, the reservation's other
/// DUTs recycled and the reservation back in the queue at its place (its age is kept).
/// Answers the token to revoke.
pub(super) async fn requeue(pool: AnyPool, id: i64, dut: String, reason: String, output: String) -> Result<Option<String>, sqlx::Error> {
    let now = super::now_micros();
    let mut tx = pool.begin().await?;
    lock(&mut tx).await?;
    sqlx::query("UPDATE pool_duts SET state = 'quarantined', reservation = NULL, reason = $1, output = $2, changed_at = $3 WHERE id = $4")
        .bind(reason.clone())
        .bind(output)
        .bind(now)
        .bind(dut)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE pool_duts SET state = 'recycling', changed_at = $1 WHERE reservation = $2 AND state IN ('allocated', 'starting')")
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let token: Option<Option<String>> = sqlx::query_scalar("SELECT token_id FROM reservations WHERE id = $1 AND state = 'allocated'")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE reservations SET state = 'waiting', allocated_at = NULL, expires_at = NULL, duts = NULL, model = NULL, token = NULL, token_id = NULL, reason = $1 WHERE id = $2 AND state = 'allocated'",
    )
    .bind(reason)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(token.flatten())
}
