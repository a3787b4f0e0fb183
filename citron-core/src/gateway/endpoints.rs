//! How DUTs reach citron's servers, and the template variables that say so.
//!
//! One place for both: the server builder sets the endpoints of the servers it bound
//! ([`Endpoints::seen`]), `boot-test` the ones its guests see, `citron validate`/`render` and
//! Python the ones a lab would have with the default addresses; every job's variables come from
//! them through [`Endpoints::variables`].

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use crate::serve::{Protocol, Space};

/// Protocols that serve disks, not files: their variables are `<name>_host` and `<name>_port`
/// (NBD clients take them apart), defined (empty) even before a server is bound. The one list
/// a disk protocol extends; file protocols follow [`Space::ALL`].
pub const DISK_PROTOCOLS: &[Protocol] = &[Protocol::NBD];

/// Where DUTs reach one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The host as written in a URL (an IPv6 address in brackets).
    pub host: String,
    /// The port.
    pub port: u16,
}

impl Endpoint {
    /// The endpoint of `addr` as written in URLs.
    pub fn of(addr: SocketAddr) -> Endpoint {
        let host = match addr.ip() {
            IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        };
        Endpoint { host, port: addr.port() }
    }
}

/// How DUTs reach citron's servers, by protocol name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints(BTreeMap<Protocol, Endpoint>);

impl Endpoints {
    /// The endpoints of servers bound at `addrs`: the bound address, or `advertise` for a
    /// wildcard one (`0.0.0.0`). A wildcard without `advertise` is left out (its variables stay
    /// empty) with a warning.
    ///
    /// ```
    /// use citron_core::Endpoints;
    /// use citron_core::serve::Protocol;
    /// let e = Endpoints::seen([(Protocol::HTTP, "0.0.0.0:8080".parse().unwrap()), (Protocol::NBD, "[::1]:10809".parse().unwrap())], Some("10.0.2.2".parse().unwrap()));
    /// let v = e.variables();
    /// assert_eq!(v["http_artifact_base"], "http://10.0.2.2:8080");
    /// assert_eq!(v["tftp_artifact_base"], "");
    /// assert_eq!((v["nbd_host"].as_str(), v["nbd_port"].as_str()), ("[::1]", "10809"));
    /// ```
    pub fn seen(addrs: impl IntoIterator<Item = (Protocol, SocketAddr)>, advertise: Option<IpAddr>) -> Endpoints {
        let mut out = Endpoints::default();
        for (protocol, addr) in addrs {
            let ip = match (addr.ip().is_unspecified(), advertise) {
                (false, _) => addr.ip(),
                (true, Some(ip)) => ip,
                (true, None) => {
                    tracing::warn!(%addr, %protocol, "listening on a wildcard address: set --advertise (or the lab's *_artifact_base variables) so that jobs know how DUTs reach citron");
                    continue;
                }
            };
            out.insert(protocol, Endpoint::of(SocketAddr::new(ip, addr.port())));
        }
        out
    }

    /// Sets how DUTs reach `protocol`'s server.
    pub fn insert(&mut self, protocol: Protocol, endpoint: Endpoint) {
        self.0.insert(protocol, endpoint);
    }

    /// How DUTs reach `protocol`'s server, if known.
    pub fn get(&self, protocol: Protocol) -> Option<&Endpoint> {
        self.0.get(&protocol)
    }

    /// The template variables they fill: `<space>_artifact_base` (`<space>://host:port`) for
    /// every file space of [`Space::ALL`], `<name>_host` and `<name>_port` for every protocol of
    /// [`DISK_PROTOCOLS`]; empty when that server's endpoint is unknown.
    pub fn variables(&self) -> BTreeMap<String, String> {
        let mut v = BTreeMap::new();
        for space in Space::ALL {
            let url = self.get(Protocol(space.0)).map(|e| format!("{space}://{}:{}", e.host, e.port));
            v.insert(format!("{space}_artifact_base"), url.unwrap_or_default());
        }
        for p in DISK_PROTOCOLS {
            let e = self.get(*p);
            v.insert(format!("{p}_host"), e.map(|e| e.host.clone()).unwrap_or_default());
            v.insert(format!("{p}_port"), e.map(|e| e.port.to_string()).unwrap_or_default());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_use_bound_or_advertised_hosts() {
        let a = [
            (Protocol::HTTP, "127.0.0.1:8080".parse().unwrap()),
            (Protocol::TFTP, "0.0.0.0:69".parse().unwrap()),
            (Protocol::NBD, "[::1]:10809".parse().unwrap()),
        ];
        let e = Endpoints::seen(a, None);
        let v = e.variables();
        assert_eq!(v["http_artifact_base"], "http://127.0.0.1:8080");
        assert_eq!(e.get(Protocol::TFTP), None);
        assert_eq!(v["tftp_artifact_base"], "");
        assert_eq!((v["nbd_host"].as_str(), v["nbd_port"].as_str()), ("[::1]", "10809"));
        let e = Endpoints::seen(a, Some("10.0.2.2".parse().unwrap()));
        assert_eq!(e.variables()["tftp_artifact_base"], "tftp://10.0.2.2:69");
        assert_eq!(
            Endpoints::default().variables().keys().collect::<Vec<_>>(),
            ["http_artifact_base", "nbd_host", "nbd_port", "tftp_artifact_base"]
        );
    }
}
