//! Every DUT's job record, stored; answered from memory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use citron_core::gateway::{JobRecord, JobStore};
use citron_core::job::Origin;
use citron_core::namespace::DutId;
use citron_core::store::StoreError;
use parking_lot::RwLock;
use sqlx::Row as _;

use super::{from_micros, to_micros, Db};

/// Job records in the database, read back from a map written through.
pub struct SqlJobs {
    db: Arc<Db>,
    cache: RwLock<HashMap<DutId, JobRecord>>,
}

impl SqlJobs {
    /// Every stored job record.
    pub fn load(db: Arc<Db>) -> Result<SqlJobs, StoreError> {
        let mut cache = HashMap::new();
        for row in db.rows("SELECT dut, yaml, origin_name, origin_dir, set_at FROM jobs")? {
            let get = |e| StoreError::backend(e);
            let dut: String = row.try_get(0).map_err(get)?;
            let origin_dir: Option<String> = row.try_get(3).map_err(get)?;
            let record = JobRecord {
                yaml: row.try_get(1).map_err(get)?,
                origin: Origin { name: row.try_get(2).map_err(get)?, base_dir: origin_dir.map(PathBuf::from) },
                set_at: from_micros(row.try_get(4).map_err(get)?),
            };
            cache.insert(DutId(dut), record);
        }
        Ok(SqlJobs { db, cache: RwLock::new(cache) })
    }
}

impl JobStore for SqlJobs {
    fn put(&self, dut: &DutId, mut record: JobRecord) -> Result<(), StoreError> {
        // Kept to the microsecond, as stored: the API answers the same before and after a restart.
        record.set_at = from_micros(to_micros(record.set_at));
        let (key, yaml, name) = (dut.0.clone(), record.yaml.clone(), record.origin.name.clone());
        let dir = match &record.origin.base_dir {
            Some(d) => Some(
                d.to_str().ok_or_else(|| StoreError::backend(format!("the job's directory {} is not UTF-8", d.display())))?.to_string(),
            ),
            None => None,
        };
        let at = to_micros(record.set_at);
        self.db.call(move |pool| async move {
            sqlx::query(
                "INSERT INTO jobs (dut, yaml, origin_name, origin_dir, set_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (dut) DO UPDATE SET yaml = excluded.yaml, origin_name = excluded.origin_name, \
                 origin_dir = excluded.origin_dir, set_at = excluded.set_at",
            )
            .bind(key)
            .bind(yaml)
            .bind(name)
            .bind(dir)
            .bind(at)
            .execute(&pool)
            .await
        })?;
        self.cache.write().insert(dut.clone(), record);
        Ok(())
    }

    fn get(&self, dut: &DutId) -> Option<JobRecord> {
        self.cache.read().get(dut).cloned()
    }

    fn remove(&self, dut: &DutId) -> Result<Option<JobRecord>, StoreError> {
        let key = dut.0.clone();
        self.db.call(move |pool| async move { sqlx::query("DELETE FROM jobs WHERE dut = $1").bind(key).execute(&pool).await })?;
        Ok(self.cache.write().remove(dut))
    }
}
