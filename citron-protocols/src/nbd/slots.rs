//! Connections per DUT (`limits.nbd_connections_per_dut`): a slot is taken when a connection
//! opens an export (`NBD_OPT_GO` / `NBD_OPT_EXPORT_NAME`) and given back when it closes, so one
//! DUT cannot hold the descriptors and overlays every other DUT needs. A DUT is known by its
//! source address, as everywhere in citron.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

/// The open transmission connections of each peer.
#[derive(Debug)]
pub(crate) struct DutSlots {
    max: usize,
    /// Peer → (open connections, refusal already logged). Peers with none are removed.
    open: Mutex<HashMap<IpAddr, (usize, bool)>>,
}

/// One connection's slot; dropping it gives the slot back.
#[derive(Debug)]
pub(crate) struct Slot {
    slots: Arc<DutSlots>,
    peer: IpAddr,
}

impl DutSlots {
    pub(crate) fn new(max: usize) -> Arc<DutSlots> {
        Arc::new(DutSlots { max, open: Mutex::new(HashMap::new()) })
    }

    /// A slot for `peer`, or `None` when it has `max` connections open already. The first
    /// refusal is logged; later ones are not, until the peer has closed all its connections.
    pub(crate) fn take(self: &Arc<Self>, peer: IpAddr) -> Option<Slot> {
        let mut open = self.open.lock();
        let (n, logged) = open.entry(peer).or_insert((0, false));
        if *n >= self.max {
            if !*logged {
                *logged = true;
                tracing::warn!(%peer, max = self.max, "NBD connections per DUT reached (limits.nbd_connections_per_dut); refusing more from this peer");
            }
            return None;
        }
        *n += 1;
        Some(Slot { slots: self.clone(), peer })
    }

    #[cfg(test)]
    fn open(&self, peer: IpAddr) -> usize {
        self.open.lock().get(&peer).map_or(0, |e| e.0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock();
        if let Some((n, _)) = open.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_per_peer_and_given_back() {
        let s = DutSlots::new(2);
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        let a1 = s.take(a).unwrap();
        let _a2 = s.take(a).unwrap();
        assert!(s.take(a).is_none());
        assert!(s.take(b).is_some(), "another DUT is not affected");
        drop(a1);
        assert!(s.take(a).is_some());
        assert_eq!(s.open(b), 0);
    }
}
