//! Counted reads and last events, stored; answered from memory.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use citron_core::gateway::{resets_counts, FileKey, LifetimeStore};
use citron_core::lifetime::Event;
use citron_core::namespace::DutId;
use citron_core::serve::Space;
use citron_core::store::StoreError;
use parking_lot::Mutex;
use sqlx::Row as _;

use super::{from_micros, to_micros, Db};

#[derive(Default)]
struct Counters {
    reads: HashMap<(DutId, FileKey), u32>,
    last: HashMap<(DutId, Event), SystemTime>,
}

/// Lifetime counters in the database. A counted read is committed before
/// [`count_read`](LifetimeStore::count_read) returns, so before its bytes leave.
pub struct SqlLifetimes {
    db: Arc<Db>,
    mem: Mutex<Counters>,
}

/// The stored name of an event (as the API spells it).
pub(super) fn event_name(e: Event) -> &'static str {
    match e {
        Event::Boot => "boot",
        Event::JobStart => "job_start",
        Event::JobEnd => "job_end",
    }
}

pub(super) fn event_named(s: &str) -> Option<Event> {
    [Event::Boot, Event::JobStart, Event::JobEnd].into_iter().find(|e| event_name(*e) == s)
}

/// The steps a [`FileKey`] names (its `step` is static).
fn step_named(s: &str) -> Option<&'static str> {
    ["start", "continue"].into_iter().find(|n| *n == s)
}

impl SqlLifetimes {
    /// Every stored count and last event.
    pub fn load(db: Arc<Db>) -> Result<SqlLifetimes, StoreError> {
        let mut mem = Counters::default();
        let e = StoreError::backend;
        for row in db.rows("SELECT dut, step, space, path, count FROM reads")? {
            let (step, space): (String, String) = (row.try_get(1).map_err(e)?, row.try_get(2).map_err(e)?);
            let (Some(step), Some(space)) = (step_named(&step), Space::named(&space)) else { continue };
            let key = FileKey { step, space, path: row.try_get(3).map_err(e)? };
            let n: i64 = row.try_get(4).map_err(e)?;
            mem.reads.insert((DutId(row.try_get(0).map_err(e)?), key), u32::try_from(n).unwrap_or(u32::MAX));
        }
        for row in db.rows("SELECT dut, event, at FROM last_events")? {
            let name: String = row.try_get(1).map_err(e)?;
            let Some(ev) = event_named(&name) else { continue };
            mem.last.insert((DutId(row.try_get(0).map_err(e)?), ev), from_micros(row.try_get(2).map_err(e)?));
        }
        Ok(SqlLifetimes { db, mem: Mutex::new(mem) })
    }
}

impl LifetimeStore for SqlLifetimes {
    fn count_read(&self, dut: &DutId, file: &FileKey) -> Result<(), StoreError> {
        let (d, step, space, path) = (dut.0.clone(), file.step, file.space.0, file.path.clone());
        self.db.call(move |pool| async move {
            sqlx::query(
                "INSERT INTO reads (dut, step, space, path, count) VALUES ($1, $2, $3, $4, 1) \
                 ON CONFLICT (dut, step, space, path) DO UPDATE SET count = reads.count + 1",
            )
            .bind(d)
            .bind(step)
            .bind(space)
            .bind(path)
            .execute(&pool)
            .await
        })?;
        let mut m = self.mem.lock();
        let n = m.reads.entry((dut.clone(), file.clone())).or_insert(0);
        *n = n.saturating_add(1);
        Ok(())
    }

    fn reads(&self, dut: &DutId, file: &FileKey) -> u32 {
        self.mem.lock().reads.get(&(dut.clone(), file.clone())).copied().unwrap_or(0)
    }

    fn event(&self, dut: &DutId, event: Event, at: SystemTime) -> Result<(), StoreError> {
        let (d, name, us, reset) = (dut.0.clone(), event_name(event), to_micros(at), resets_counts(event));
        self.db.call(move |pool| async move {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO last_events (dut, event, at) VALUES ($1, $2, $3) ON CONFLICT (dut, event) DO UPDATE SET at = excluded.at",
            )
            .bind(&d)
            .bind(name)
            .bind(us)
            .execute(&mut *tx)
            .await?;
            if reset {
                sqlx::query("DELETE FROM reads WHERE dut = $1").bind(&d).execute(&mut *tx).await?;
            }
            tx.commit().await
        })?;
        let mut m = self.mem.lock();
        m.last.insert((dut.clone(), event), at);
        if reset {
            m.reads.retain(|(d, _), _| d != dut);
        }
        Ok(())
    }

    fn last_event(&self, dut: &DutId, event: Event) -> Option<SystemTime> {
        self.mem.lock().last.get(&(dut.clone(), event)).copied()
    }

    fn reset(&self, dut: &DutId) -> Result<(), StoreError> {
        let d = dut.0.clone();
        self.db.call(move |pool| async move { sqlx::query("DELETE FROM reads WHERE dut = $1").bind(d).execute(&pool).await })?;
        self.mem.lock().reads.retain(|(d, _), _| d != dut);
        Ok(())
    }
}
