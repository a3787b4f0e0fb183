//! Job disks' records (lifetime, last use, overlays), stored; answered from memory.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use citron_core::block::{DiskRecord, DiskRecordStore};
use citron_core::job::ResetOn;
use citron_core::namespace::DutId;
use citron_core::store::StoreError;
use parking_lot::RwLock;
use sqlx::Row as _;

use super::{from_micros, to_micros, Db};

/// Disk records in the database, read back from a map written through. A record is committed
/// before [`put`](DiskRecordStore::put) returns.
pub struct SqlDisks {
    db: Arc<Db>,
    cache: RwLock<HashMap<(DutId, String), DiskRecord>>,
}

impl SqlDisks {
    /// Every stored disk record. A row citron cannot read (an unknown `reset_on`, overlays that
    /// are not a list of ids) is skipped with a warning: that disk is kept, not guessed at.
    pub fn load(db: Arc<Db>) -> Result<SqlDisks, StoreError> {
        let mut cache = HashMap::new();
        let e = StoreError::backend;
        for row in db.rows("SELECT owner, disk, base_key, reset_on, expiration, last_use, held, overlays FROM disks")? {
            let (owner, disk): (String, String) = (row.try_get(0).map_err(e)?, row.try_get(1).map_err(e)?);
            let reset_on: String = row.try_get(3).map_err(e)?;
            let overlays: String = row.try_get(7).map_err(e)?;
            let (Some(reset_on), Ok(overlays)) = (ResetOn::named(&reset_on), serde_json::from_str::<BTreeSet<String>>(&overlays)) else {
                tracing::warn!(dut = %owner, %disk, "a stored disk record cannot be read; the disk is kept");
                continue;
            };
            let expiration: Option<i64> = row.try_get(4).map_err(e)?;
            let held: i64 = row.try_get(6).map_err(e)?;
            let record = DiskRecord {
                owner: DutId(owner),
                disk,
                base_key: row.try_get(2).map_err(e)?,
                reset_on,
                expiration: expiration.map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0))),
                last_use: from_micros(row.try_get(5).map_err(e)?),
                held: held != 0,
                overlays: overlays.into_iter().map(DutId).collect(),
            };
            cache.insert((record.owner.clone(), record.disk.clone()), record);
        }
        Ok(SqlDisks { db, cache: RwLock::new(cache) })
    }
}

impl DiskRecordStore for SqlDisks {
    fn put(&self, record: &DiskRecord) -> Result<(), StoreError> {
        let mut record = record.clone();
        // Kept to the microsecond, as stored: the same before and after a restart.
        record.last_use = from_micros(to_micros(record.last_use));
        let overlays =
            serde_json::to_string(&record.overlays.iter().map(|d| d.0.as_str()).collect::<Vec<_>>()).map_err(StoreError::backend)?;
        let expiration = record.expiration.map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let (owner, disk, key, reset_on) = (record.owner.0.clone(), record.disk.clone(), record.base_key.clone(), record.reset_on.name());
        let (last_use, held) = (to_micros(record.last_use), i64::from(record.held));
        self.db.call(move |pool| async move {
            sqlx::query(
                "INSERT INTO disks (owner, disk, base_key, reset_on, expiration, last_use, held, overlays) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (owner, disk) DO UPDATE SET base_key = excluded.base_key, reset_on = excluded.reset_on, \
                 expiration = excluded.expiration, last_use = excluded.last_use, held = excluded.held, overlays = excluded.overlays",
            )
            .bind(owner)
            .bind(disk)
            .bind(key)
            .bind(reset_on)
            .bind(expiration)
            .bind(last_use)
            .bind(held)
            .bind(overlays)
            .execute(&pool)
            .await
        })?;
        self.cache.write().insert((record.owner.clone(), record.disk.clone()), record);
        Ok(())
    }

    fn get(&self, owner: &DutId, disk: &str) -> Option<DiskRecord> {
        self.cache.read().get(&(owner.clone(), disk.to_string())).cloned()
    }

    fn remove(&self, owner: &DutId, disk: &str) -> Result<(), StoreError> {
        let (o, d) = (owner.0.clone(), disk.to_string());
        self.db.call(move |pool| async move {
            sqlx::query("DELETE FROM disks WHERE owner = $1 AND disk = $2").bind(o).bind(d).execute(&pool).await
        })?;
        self.cache.write().remove(&(owner.clone(), disk.to_string()));
        Ok(())
    }

    fn list(&self) -> Vec<DiskRecord> {
        self.cache.read().values().cloned().collect()
    }
}
