//! The DUTs added through the API, stored; every DUT (the lab file's too) indexed in memory.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use citron_core::gateway::{DutStore, MemoryDuts};
use citron_core::namespace::{Dut, DutId, RegistryError};
use citron_core::store::StoreError;
use sqlx::Row as _;

use super::{to_micros, Db};

/// DUTs in the database, answered from a [`MemoryDuts`] index written through.
pub struct SqlDuts {
    db: Arc<Db>,
    index: MemoryDuts,
    /// The lab file's DUT ids: added to the index only, never stored.
    lab: HashSet<DutId>,
    /// The gateway whose DUTs these are, in a lab of several: the DUTs it adds are claimed
    /// for it in `lab_duts` (refused if another gateway has the id), and only its own stored
    /// DUTs are loaded.
    gateway: Option<String>,
}

impl SqlDuts {
    /// The stored DUTs, minus any that clash with the lab file's `lab` DUTs (the file wins).
    pub fn load(db: Arc<Db>, lab: &[Dut], gateway: Option<&str>) -> Result<SqlDuts, StoreError> {
        let index = MemoryDuts::default();
        let lab_ids: HashSet<DutId> = lab.iter().map(|d| d.id.clone()).collect();
        let lab_ips: HashSet<IpAddr> = lab.iter().flat_map(|d| d.ip.iter().copied()).collect();
        let rows = db.rows("SELECT d.spec, o.gateway FROM duts d LEFT JOIN lab_duts o ON o.id = d.id ORDER BY d.id")?;
        for row in rows {
            let spec: String = row.try_get(0).map_err(StoreError::backend)?;
            let owner: Option<String> = row.try_get(1).map_err(StoreError::backend)?;
            if let (Some(me), Some(owner)) = (gateway, &owner) {
                if me != owner {
                    continue; // another gateway's
                }
            }
            let dut: Dut = serde_json::from_str(&spec).map_err(StoreError::backend)?;
            if lab_ids.contains(&dut.id) || dut.ip.iter().any(|ip| lab_ips.contains(ip)) {
                tracing::warn!(dut = %dut.id, "a DUT added through the API clashes with the lab file, which wins: the stored one is ignored (delete it through the API)");
                continue;
            }
            index.add(dut)?;
        }
        Ok(SqlDuts { db, index, lab: lab_ids, gateway: gateway.map(str::to_string) })
    }
}

impl DutStore for SqlDuts {
    fn add(&self, dut: Dut) -> Result<(), StoreError> {
        // The index checks uniqueness; the row is written before this returns, and the index
        // entry is taken back if it cannot be.
        self.index.add(dut.clone())?;
        if self.lab.contains(&dut.id) {
            return Ok(());
        }
        let id = dut.id.0.clone();
        let spec = serde_json::to_string(&dut).map_err(StoreError::backend)?;
        let now = to_micros(std::time::SystemTime::now());
        let gateway = self.gateway.clone();
        let r = self.db.call(move |pool| async move {
            let mut tx = pool.begin().await?;
            if let Some(g) = &gateway {
                let owner = sqlx::query("SELECT gateway FROM lab_duts WHERE id = $1").bind(&id).fetch_optional(&mut *tx).await?;
                if let Some(owner) = owner {
                    return Ok(Some(owner.try_get::<String, _>(0)?));
                }
                sqlx::query("INSERT INTO lab_duts (id, gateway, spec, source) VALUES ($1, $2, $3, 'api')")
                    .bind(&id)
                    .bind(g)
                    .bind(&spec)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("INSERT INTO duts (id, spec, added_at) VALUES ($1, $2, $3)")
                .bind(&id)
                .bind(&spec)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(None)
        });
        match r {
            Ok(None) => Ok(()),
            Ok(Some(owner)) => {
                let _ = self.index.remove(&dut.id);
                let claimant = self.gateway.clone().unwrap_or_default();
                Err(RegistryError::ClaimedElsewhere { dut: dut.id.clone(), owner, claimant }.into())
            }
            Err(e) => {
                let _ = self.index.remove(&dut.id);
                Err(e)
            }
        }
    }

    fn remove(&self, id: &DutId) -> Result<Option<Dut>, StoreError> {
        let key = id.0.clone();
        self.db.call(move |pool| async move {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM duts WHERE id = $1").bind(&key).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM lab_duts WHERE id = $1 AND source = 'api'").bind(&key).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM last_events WHERE dut = $1").bind(&key).execute(&mut *tx).await?;
            tx.commit().await
        })?;
        self.index.remove(id)
    }

    fn get(&self, id: &DutId) -> Option<Dut> {
        self.index.get(id)
    }

    fn by_addr(&self, addr: IpAddr) -> Option<Dut> {
        self.index.by_addr(addr)
    }

    fn list(&self) -> Vec<Dut> {
        self.index.list()
    }
}
