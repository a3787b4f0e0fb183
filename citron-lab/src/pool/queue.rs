//! The queue: which waiting reservation gets which free DUTs ([`plan`], pure), and the
//! allocation pass that carries a plan out in one transaction ([`pass`]).
//!
//! # Order, and whether a large request blocks smaller ones
//! Waiting reservations are served by priority (higher first), then age (older first). A
//! request for several DUTs gets all of them or none. When one cannot be met yet, the free
//! DUTs **it could use** are set aside for it: a request behind it that needs the same kind of
//! DUT waits too (so a large request is never starved by a stream of small ones), while one
//! that needs other DUTs passes. A request held back by its tenant's `max_duts` sets nothing
//! aside (it could not use the DUTs now anyway).
//!
//! # Among the free DUTs
//! Those of the model the tenant was given last come first (the "same-ish platform every
//! time"); within that, the least recently used, then the least used (so that every machine
//! of the pool gets work).
//!
//! # No DUT given twice
//! A pass, like every change of the pool, first updates the one row of `pool_lock`: on
//! PostgreSQL its row lock makes the passes of several gateways take turns; on SQLite the
//! database has one writer anyway. Each DUT is then taken with a conditional
//! `UPDATE … WHERE state = 'free'`, and the pass is rolled back if any row was not free.

use std::collections::HashMap;

use sqlx::any::AnyRow;
use sqlx::{Any, Row as _, Transaction};

use super::request::{Checked, DutAttrs};

/// A reservation in the queue.
#[derive(Debug, Clone)]
pub struct Waiting {
    /// Its id.
    pub id: i64,
    /// Its tenant (`""`: the lab's own).
    pub tenant: String,
    /// What it asks.
    pub req: Checked,
}

/// A free DUT.
#[derive(Debug, Clone)]
pub struct Free {
    /// What it is.
    pub attrs: DutAttrs,
    /// How often it was given.
    pub uses: i64,
    /// When it was last given (µs).
    pub last_used: i64,
}

/// What the queue knows besides the waiting and the free: DUTs held per tenant, quotas,
/// the model each tenant was given last.
#[derive(Debug, Default)]
pub struct Context {
    /// DUTs each tenant holds now.
    pub held: HashMap<String, u32>,
    /// Each tenant's `max_duts`.
    pub max_duts: HashMap<String, u32>,
    /// The model each tenant was given last.
    pub affinity: HashMap<String, String>,
}

/// Which reservations (`waiting`, in queue order) get which DUTs of `free` now.
pub fn plan(waiting: &[Waiting], free: &[Free], ctx: &Context) -> Vec<(i64, Vec<DutAttrs>)> {
    let mut avail: Vec<&Free> = free.iter().collect();
    avail.sort_by(|a, b| (a.last_used, a.uses, &a.attrs.id).cmp(&(b.last_used, b.uses, &b.attrs.id)));
    let mut held = ctx.held.clone();
    let mut out = Vec::new();
    for w in waiting {
        let has = held.get(&w.tenant).copied().unwrap_or(0);
        if ctx.max_duts.get(&w.tenant).is_some_and(|m| has + w.req.count > *m) {
            continue;
        }
        let fits: Vec<usize> = (0..avail.len()).filter(|&i| w.req.fits(&avail[i].attrs)).collect();
        if fits.len() < w.req.count as usize {
            // Set aside for it: nobody behind it takes what it could use.
            for i in fits.into_iter().rev() {
                avail.remove(i);
            }
            continue;
        }
        let model = ctx.affinity.get(&w.tenant);
        let (mut pick, rest): (Vec<usize>, Vec<usize>) =
            fits.into_iter().partition(|&i| model.is_some() && avail[i].attrs.model.as_ref() == model);
        pick.extend(rest);
        pick.truncate(w.req.count as usize);
        let duts = pick.iter().map(|&i| avail[i].attrs.clone()).collect();
        pick.sort_unstable();
        for i in pick.into_iter().rev() {
            avail.remove(i);
        }
        *held.entry(w.tenant.clone()).or_default() += w.req.count;
        out.push((w.id, duts));
    }
    out
}

/// Takes the pool's lock for the rest of the transaction (see the module's doc).
pub(super) async fn lock(tx: &mut Transaction<'static, Any>) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE pool_lock SET passes = passes + 1 WHERE id = 1").execute(&mut **tx).await.map(|_| ())
}

/// The waiting reservations, in queue order.
pub(super) async fn waiting(tx: &mut Transaction<'static, Any>) -> Result<Vec<Waiting>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, tenant, request, priority, lifetime_secs FROM reservations WHERE state = 'waiting' ORDER BY priority DESC, created_at, id",
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.iter().filter_map(waiting_row).collect())
}

fn waiting_row(r: &AnyRow) -> Option<Waiting> {
    let text: String = r.try_get(2).ok()?;
    let mut req: Checked = serde_json::from_str(&text).ok()?;
    req.priority = r.try_get(3).ok()?;
    req.lifetime = std::time::Duration::from_secs(u64::try_from(r.try_get::<i64, _>(4).ok()?).ok()?);
    Some(Waiting { id: r.try_get(0).ok()?, tenant: r.try_get(1).ok()?, req })
}

/// The free DUTs, but those whose gateway is offline (nobody could power or serve them).
pub(super) async fn free(tx: &mut Transaction<'static, Any>) -> Result<Vec<Free>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT d.attrs, d.uses, d.last_used FROM pool_duts d WHERE d.state = 'free'
         AND NOT EXISTS (SELECT 1 FROM gateways g WHERE g.name = d.gateway AND g.offline_since IS NOT NULL)",
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let attrs: DutAttrs = serde_json::from_str(&r.try_get::<String, _>(0).ok()?).ok()?;
            Some(Free { attrs, uses: r.try_get(1).ok()?, last_used: r.try_get(2).ok()? })
        })
        .collect())
}

/// DUTs held per tenant, and each waiting tenant's last model.
pub(super) async fn context(tx: &mut Transaction<'static, Any>, waiting: &[Waiting]) -> Result<Context, sqlx::Error> {
    let mut ctx = Context::default();
    let rows = sqlx::query(
        "SELECT r.tenant, COUNT(*) FROM pool_duts d JOIN reservations r ON d.reservation = r.id WHERE d.state IN ('allocated', 'starting', 'kept') GROUP BY r.tenant",
    )
    .fetch_all(&mut **tx)
    .await?;
    for r in rows {
        let n: i64 = r.try_get(1)?;
        ctx.held.insert(r.try_get(0)?, u32::try_from(n).unwrap_or(u32::MAX));
    }
    let mut tenants: Vec<&str> = waiting.iter().map(|w| w.tenant.as_str()).collect();
    tenants.sort_unstable();
    tenants.dedup();
    for t in tenants {
        let row = sqlx::query(
            "SELECT model FROM reservations WHERE tenant = $1 AND model IS NOT NULL ORDER BY allocated_at DESC, id DESC LIMIT 1",
        )
        .bind(t.to_string())
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(m) = row.and_then(|r| r.try_get::<String, _>(0).ok()) {
            ctx.affinity.insert(t.to_string(), m);
        }
    }
    Ok(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::request::tests::dut;

    fn w(id: i64, tenant: &str, count: u32, tags: &[&str]) -> Waiting {
        let req = Checked {
            tags: tags.iter().map(|t| t.to_string()).collect(),
            kind: None,
            arch: None,
            model: None,
            count,
            job: None,
            lifetime: std::time::Duration::from_secs(60),
            priority: 0,
        };
        Waiting { id, tenant: tenant.into(), req }
    }

    fn free(d: DutAttrs, last_used: i64) -> Free {
        Free { attrs: d, uses: 0, last_used }
    }

    fn ids(p: &[(i64, Vec<DutAttrs>)]) -> Vec<(i64, Vec<&str>)> {
        p.iter().map(|(i, d)| (*i, d.iter().map(|d| d.id.as_str()).collect())).collect()
    }

    #[test]
    fn all_or_nothing_and_a_large_request_blocks_only_what_it_could_use() {
        let f = [free(dut("a", "x86_64", "m", &["x"]), 1), free(dut("b", "aarch64", "n", &["y"]), 2)];
        let ctx = Context::default();
        // 1 wants two `x` (only one free): nothing; 2 wants one `x`: set aside for 1; 3 wants a `y`: passes.
        let q = [w(1, "t", 2, &["x"]), w(2, "t", 1, &["x"]), w(3, "t", 1, &["y"])];
        assert_eq!(ids(&plan(&q, &f, &ctx)), vec![(3, vec!["b"])]);
    }

    #[test]
    fn least_recently_used_then_the_tenant_s_model() {
        let f = [free(dut("a", "x86_64", "m1", &[]), 30), free(dut("b", "x86_64", "m2", &[]), 10), free(dut("c", "x86_64", "m1", &[]), 20)];
        assert_eq!(ids(&plan(&[w(1, "t", 1, &[])], &f, &Context::default())), vec![(1, vec!["b"])]);
        let mut ctx = Context::default();
        ctx.affinity.insert("t".into(), "m1".into());
        assert_eq!(ids(&plan(&[w(1, "t", 2, &[])], &f, &ctx)), vec![(1, vec!["c", "a"])]);
    }

    #[test]
    fn quotas_hold_back_without_setting_aside() {
        let f = [free(dut("a", "x86_64", "m", &[]), 1)];
        let mut ctx = Context::default();
        ctx.max_duts.insert("t".into(), 1);
        ctx.held.insert("t".into(), 1);
        assert_eq!(ids(&plan(&[w(1, "t", 1, &[]), w(2, "u", 1, &[])], &f, &ctx)), vec![(2, vec!["a"])]);
    }
}
