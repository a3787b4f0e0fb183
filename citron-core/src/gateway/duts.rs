//! The lab's DUTs: who they are and whose source address is whose.
//!
//! Every request starts here ([`DutStore::by_addr`]): a backend knows only the peer's address.

use std::net::IpAddr;

use parking_lot::RwLock;

use crate::namespace::{Dut, DutId, DutRegistry};
use crate::store::StoreError;

/// Where the lab's DUTs are kept. See [`crate::store`] for why it is synchronous.
///
/// [`by_addr`](Self::by_addr) is called for every request of every backend: an implementation
/// answers it from memory (a durable one keeps a [`DutRegistry`] as its index and writes through).
pub trait DutStore: Send + Sync + 'static {
    /// Adds a DUT; ids and addresses must be unique ([`StoreError::Registry`] otherwise).
    /// Durable when it returns.
    fn add(&self, dut: Dut) -> Result<(), StoreError>;
    /// Removes a DUT; `Ok(None)` if there was none.
    fn remove(&self, id: &DutId) -> Result<Option<Dut>, StoreError>;
    /// The DUT with this id.
    fn get(&self, id: &DutId) -> Option<Dut>;
    /// The DUT that sends from `addr` (IPv4-mapped IPv6 addresses count as IPv4).
    fn by_addr(&self, addr: IpAddr) -> Option<Dut>;
    /// All DUTs, by id.
    fn list(&self) -> Vec<Dut>;
}

/// DUTs in memory: today's store, lost when citron stops (the lab file adds them again).
#[derive(Debug, Default)]
pub struct MemoryDuts(RwLock<DutRegistry>);

impl DutStore for MemoryDuts {
    fn add(&self, dut: Dut) -> Result<(), StoreError> {
        Ok(self.0.write().add(dut)?)
    }
    fn remove(&self, id: &DutId) -> Result<Option<Dut>, StoreError> {
        Ok(self.0.write().remove(id))
    }
    fn get(&self, id: &DutId) -> Option<Dut> {
        self.0.read().get(id).cloned()
    }
    fn by_addr(&self, addr: IpAddr) -> Option<Dut> {
        self.0.read().by_addr(addr).cloned()
    }
    fn list(&self) -> Vec<Dut> {
        self.0.read().iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duts_are_found_by_address_until_removed() {
        let s = MemoryDuts::default();
        s.add(Dut::new("a", ["127.0.0.2".parse().unwrap()])).unwrap();
        assert!(matches!(s.add(Dut::new("b", ["127.0.0.2".parse().unwrap()])), Err(StoreError::Registry(_))));
        assert_eq!(s.by_addr("::ffff:127.0.0.2".parse().unwrap()).unwrap().id, DutId::from("a"));
        assert_eq!(s.list().len(), 1);
        assert_eq!(s.remove(&"a".into()).unwrap().unwrap().id, DutId::from("a"));
        assert!(s.by_addr("127.0.0.2".parse().unwrap()).is_none());
        assert!(s.remove(&"a".into()).unwrap().is_none());
    }
}
