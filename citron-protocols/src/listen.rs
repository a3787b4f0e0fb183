//! The one accept loop of every TCP listener (HTTP, NBD, the lab API).
//!
//! Anyone on the network can open sockets, so a listener must never let one peer use up what
//! the others need, above all file descriptors: 300 silent NBD connections from a non-DUT
//! address once made HTTP's `accept` fail with `EMFILE` for every DUT. Here each listener has
//!
//! - a global cap (`limits.connections`) and a per-source-address cap
//!   (`limits.connections_per_peer`): a connection over either is closed at once, so reaching a
//!   cap refuses that peer only (or, for the global cap, new connections only), and it is
//!   logged once per peer and episode, not once per attempt;
//! - one exponential backoff (5 ms doubling to 1 s) when `accept` itself fails (`EMFILE`,
//!   `ENFILE`, `ENOBUFS`...), so the loop waits for descriptors to come back instead of spinning;
//! - a graceful drain on shutdown: the listener closes, connections are told to stop (the
//!   `watch` they are given turns `true`) and get [`SHUTDOWN_GRACE`] to finish before they are cut.
//!
//! [`raise_nofile_limit`] lifts `RLIMIT_NOFILE` to its hard limit at start, so the caps (and not
//! the soft limit, often 1024) are what bounds the descriptors in use.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use citron_core::limits::Limits;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long connections may finish what they are doing after shutdown was asked for.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// First wait after a failed `accept`; doubled on each failure in a row up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest wait after a failed `accept`.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The caps of one listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caps {
    /// Open connections over every peer.
    pub connections: usize,
    /// Open connections from one source address.
    pub per_peer: usize,
}

impl Caps {
    pub(crate) fn from_limits(l: &Limits) -> Self {
        Caps { connections: l.connections.max(1), per_peer: l.connections_per_peer.max(1) }
    }
}

/// Serves `listener` until `shutdown` completes: each accepted connection within the caps is
/// handed to `handle` with its peer address and a stop signal, and runs as its own task. After
/// shutdown the listener is closed, the stop signal sent and the connections drained
/// ([`drain`]). Dropping the returned future aborts every connection task at once.
pub(crate) async fn serve<H, F>(
    what: &'static str,
    listener: TcpListener,
    caps: Caps,
    shutdown: impl Future<Output = ()>,
    mut handle: H,
) -> io::Result<()>
where
    H: FnMut(TcpStream, SocketAddr, watch::Receiver<bool>) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let table = Arc::new(Mutex::new(Table::default()));
    // Every connection task: dropping the set (when this future is dropped, or after the grace
    // period) aborts the ones still running.
    let mut conns: JoinSet<()> = JoinSet::new();
    let mut backoff = BACKOFF_MIN;
    let mut failures = 0u64;
    tokio::pin!(shutdown);
    loop {
        // Finished connections leave the set here, so it holds only live ones.
        while conns.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: wait for descriptors to come back rather than spin.
                    if failures == 0 {
                        tracing::warn!(error = %e, "{what}: accept failed; retrying with backoff up to {BACKOFF_MAX:?}");
                    }
                    failures += 1;
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            },
        };
        if failures > 0 {
            tracing::info!(failures, "{what}: accept works again");
            failures = 0;
            backoff = BACKOFF_MIN;
        }
        let Some(slot) = Slot::take(&table, caps, what, peer.ip().to_canonical()) else {
            // Over a cap: closed at once, before any byte is read.
            drop(stream);
            continue;
        };
        let fut = handle(stream, peer, stop_rx.clone());
        conns.spawn(async move {
            fut.await;
            drop(slot);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drain(&mut conns, what).await;
    Ok(())
}

/// After shutdown: lets the connections in `conns` finish for up to [`SHUTDOWN_GRACE`], then
/// cuts the ones still running (their transfers are logged as aborted).
pub(crate) async fn drain(conns: &mut JoinSet<()>, what: &str) {
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(connections = conns.len(), "{what}: requests still running {SHUTDOWN_GRACE:?} after shutdown; cutting them");
        conns.abort_all();
        // Aborted tasks end at their next poll.
        while conns.join_next().await.is_some() {}
    }
}

/// Open connections per peer. A peer is in `peers` only while it has a connection open, so the
/// table is bounded by the global cap.
#[derive(Debug, Default)]
struct Table {
    total: usize,
    /// Refusals by the global cap since it was last logged (`Some` while an episode lasts).
    full_refused: Option<u64>,
    peers: HashMap<IpAddr, Peer>,
}

#[derive(Debug, Default)]
struct Peer {
    open: usize,
    /// Refusals since the episode began (`Some` once one was logged).
    refused: Option<u64>,
}

/// Open connections of every listener in the process, by listener name (`http`, `nbd`,
/// `api`): the `citron_open_connections` gauge.
static OPEN: Mutex<std::collections::BTreeMap<&'static str, u64>> = parking_lot::const_mutex(std::collections::BTreeMap::new());

/// Connections open now in this process, by listener (`http`, `nbd`, `api`), summed over every
/// server started in it.
pub fn open_connections() -> Vec<(&'static str, u64)> {
    OPEN.lock().iter().map(|(w, n)| (*w, *n)).collect()
}

/// One connection's place under the caps; given back when dropped.
struct Slot {
    table: Arc<Mutex<Table>>,
    caps: Caps,
    what: &'static str,
    peer: IpAddr,
}

impl Slot {
    /// A place for a connection from `peer`, or `None` (logged on the first refusal of an
    /// episode) when a cap is reached.
    fn take(table: &Arc<Mutex<Table>>, caps: Caps, what: &'static str, peer: IpAddr) -> Option<Slot> {
        let mut t = table.lock();
        if t.total >= caps.connections {
            let n = t.full_refused.get_or_insert(0);
            if *n == 0 {
                tracing::warn!(%peer, cap = caps.connections, "{what}: connection cap reached; refusing new connections (limits.connections)");
            }
            *n += 1;
            return None;
        }
        let p = t.peers.entry(peer).or_default();
        if p.open >= caps.per_peer {
            let n = p.refused.get_or_insert(0);
            if *n == 0 {
                tracing::warn!(%peer, cap = caps.per_peer, "{what}: per-peer connection cap reached; refusing this peer's new connections (limits.connections_per_peer)");
            }
            *n += 1;
            return None;
        }
        p.open += 1;
        t.total += 1;
        *OPEN.lock().entry(what).or_default() += 1;
        Some(Slot { table: table.clone(), caps, what, peer })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(n) = OPEN.lock().get_mut(self.what) {
            *n = n.saturating_sub(1);
        }
        let mut t = self.table.lock();
        t.total -= 1;
        // An episode ends once the count is well below the cap (half), so a peer that keeps
        // knocking at the cap is logged once, not once per connection that closes.
        if t.total <= self.caps.connections / 2 {
            if let Some(n) = t.full_refused.take() {
                tracing::info!(refused = n, "{}: below the connection cap again", self.what);
            }
        }
        let Some(p) = t.peers.get_mut(&self.peer) else { return };
        p.open -= 1;
        if p.open <= self.caps.per_peer / 2 {
            if let Some(n) = p.refused.take() {
                tracing::info!(peer = %self.peer, refused = n, "{}: peer below the per-peer cap again", self.what);
            }
        }
        if p.open == 0 {
            t.peers.remove(&self.peer);
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (once per process) and returns the limit
/// now in force. Connection caps, not the soft limit (often 1024), should bound descriptors.
pub fn raise_nofile_limit() -> io::Result<u64> {
    static DONE: std::sync::OnceLock<Result<u64, i32>> = std::sync::OnceLock::new();
    let r = DONE.get_or_init(|| {
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit/setrlimit only read and write the struct given.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
                return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
            }
            if l.rlim_cur < l.rlim_max {
                let want = libc::rlimit { rlim_cur: l.rlim_max, rlim_max: l.rlim_max };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
                    return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
                }
                l.rlim_cur = l.rlim_max;
            }
        }
        // `rlim_t` is u64 on Linux but not everywhere.
        #[allow(clippy::unnecessary_cast)]
        Ok(l.rlim_cur as u64)
    });
    r.map_err(io::Error::from_raw_os_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_refuse_the_peer_over_them_only() {
        let t = Arc::new(Mutex::new(Table::default()));
        let caps = Caps { connections: 5, per_peer: 2 };
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.9".parse().unwrap(), "127.0.0.2".parse().unwrap());
        let s1 = Slot::take(&t, caps, "t", a).unwrap();
        let s2 = Slot::take(&t, caps, "t", a).unwrap();
        for _ in 0..10 {
            assert!(Slot::take(&t, caps, "t", a).is_none());
        }
        assert_eq!(t.lock().peers[&a].refused, Some(10));
        let mut others: Vec<_> = (0..3).map(|_| Slot::take(&t, caps, "t", b)).collect();
        assert!(others.iter().take(2).all(Option::is_some));
        assert!(others[2].is_none(), "per-peer cap of b");
        others.clear();
        drop(s1);
        // At 1 of 2 (half the cap): the episode ended, the next refusal is logged again.
        assert_eq!(t.lock().peers[&a].refused, None);
        drop(s2);
        let t = t.lock();
        assert!(t.peers.is_empty(), "{t:?}");
        assert_eq!(t.total, 0);
    }

    #[test]
    fn global_cap() {
        let t = Arc::new(Mutex::new(Table::default()));
        let caps = Caps { connections: 3, per_peer: 3 };
        let s: Vec<_> = (2..5).map(|i| Slot::take(&t, caps, "t", IpAddr::from([127, 0, 0, i])).unwrap()).collect();
        assert!(Slot::take(&t, caps, "t", "127.0.0.7".parse().unwrap()).is_none());
        drop(s);
        assert!(Slot::take(&t, caps, "t", "127.0.0.7".parse().unwrap()).is_some());
    }

    #[test]
    fn nofile_limit_is_raised_to_hard() {
        let n = raise_nofile_limit().unwrap();
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: reads into the struct.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) }, 0);
        assert_eq!(l.rlim_cur, l.rlim_max);
        assert_eq!(n, l.rlim_cur);
    }
}
