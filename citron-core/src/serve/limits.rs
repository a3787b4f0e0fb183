//! Every bound citron keeps against hostile or broken input, in one place: the lab file's
//! `limits:` section.
//!
//! Jobs come from people who do not trust each other, and anyone on the network can open a
//! socket, so nothing is sized from input without a bound and no one peer or DUT can use up
//! what the others need. Each limit has a default that a normal lab never reaches (1,000 DUTs,
//! each with an idle HTTP keep-alive and an NBD connection, fit them), and a lab-file key to
//! raise or lower it.
//!
//! ```
//! use citron_core::lab::LabConfig;
//! let lab = LabConfig::from_yaml("limits:\n  max_disk_size: 2T\n  header_timeout: 5s\n", "lab.yaml").unwrap();
//! assert_eq!(lab.limits.max_disk_size.bytes(), 2 << 40);
//! assert_eq!(lab.limits.header_timeout.get().as_secs(), 5);
//! // Unset keys keep their defaults.
//! assert_eq!(lab.limits.connections_per_peer, citron_core::limits::Limits::default().connections_per_peer);
//! ```

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `limits:` in the lab file. Sizes take `20G`-style values, durations `30s`-style values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    // --- Jobs and disks -------------------------------------------------------------------
    /// Largest NBD disk a job may declare (`raw: {size}`, a filesystem's `size`, an image's
    /// virtual size); a larger one is refused at validation.
    pub max_disk_size: Size,
    /// Most bytes one tarball or container image may unpack to (also bounded by the size of the
    /// filesystem it is unpacked into).
    pub unpack_max_bytes: Size,
    /// Most entries (files, directories, links) one tarball or image may unpack.
    pub unpack_max_entries: u64,
    /// Downloads into the cache running at once, over every job.
    pub downloads_in_flight: usize,
    /// Downloads running at once for one job.
    pub downloads_per_job: usize,
    /// How long a request of a DUT whose job is being loaded (and that has no job serving yet)
    /// waits for it before it is answered as if the DUT had no job: a DUT asking for its file
    /// while `citron serve` loads its jobs gets the file, not "not found".
    pub job_wait: Dur,
    /// Largest file a DUT's job may upload into its run (a job's `results.max_size` is at most
    /// this, and this when it gives none).
    pub results_max: Size,

    // --- Connections (HTTP, NBD, API) ----------------------------------------------------
    /// Open connections per listener, over every peer.
    pub connections: usize,
    /// Open connections per listener from one source address.
    pub connections_per_peer: usize,
    /// Time a peer has to send a whole request header (HTTP, API) or finish NBD negotiation.
    pub header_timeout: Dur,
    /// An HTTP or API connection with no request in flight for this long is closed.
    pub idle_timeout: Dur,
    /// An NBD connection with no request for this long is closed; `0s` (the default) never
    /// closes one, since a DUT's root filesystem may sit unread in its page cache for hours.
    pub nbd_idle_timeout: Dur,
    /// NBD connections one DUT may have open at once (multi-conn clients open several).
    pub nbd_connections_per_dut: usize,
    /// Reply bytes one NBD connection may have read from disk but not yet written to the socket.
    pub nbd_bytes_in_flight: Size,
    /// Largest API request body.
    pub api_body_max: Size,

    // --- TFTP -------------------------------------------------------------------------------
    /// TFTP transfers running at once, over every DUT.
    pub tftp_transfers: usize,
    /// TFTP transfers running at once for one DUT.
    pub tftp_transfers_per_dut: usize,
    /// Largest `timeout` option a TFTP client may negotiate (RFC 2349 allows up to 255 s).
    pub tftp_max_timeout: Dur,
    /// ERROR packets per second answered to sources that are no DUT (the rest are dropped).
    pub tftp_unknown_errors_per_sec: u32,

    // --- Logs -------------------------------------------------------------------------------
    /// Bytes of access records kept per DUT (the oldest go first).
    pub access_log_bytes_per_dut: Size,
    /// Longest request path kept in an access record or a log line; longer ones are cut.
    pub logged_path_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_disk_size: Size(4 << 40),
            unpack_max_bytes: Size(256 << 30),
            unpack_max_entries: 10_000_000,
            downloads_in_flight: 32,
            downloads_per_job: 8,
            job_wait: Dur(Duration::from_secs(60)),
            results_max: Size(16 << 30),
            connections: 16_384,
            connections_per_peer: 256,
            header_timeout: Dur(Duration::from_secs(10)),
            idle_timeout: Dur(Duration::from_secs(300)),
            nbd_idle_timeout: Dur(Duration::ZERO),
            nbd_connections_per_dut: 16,
            nbd_bytes_in_flight: Size(8 << 20),
            api_body_max: Size(16 << 20),
            tftp_transfers: 1024,
            tftp_transfers_per_dut: 16,
            tftp_max_timeout: Dur(Duration::from_secs(10)),
            tftp_unknown_errors_per_sec: 20,
            access_log_bytes_per_dut: Size(1 << 20),
            logged_path_max: 512,
        }
    }
}

/// A byte count written as `20G`, `512M` or a plain number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl Size {
    /// The number of bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
            if n != 0 && n & ((1u64 << shift) - 1) == 0 {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}")
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Size(n)),
            Raw::S(s) => super::units::parse_size(&s).map(Size).map_err(serde::de::Error::custom),
        }
    }
}

/// A plain number of bytes, or a number with a unit (K, M, G or T, as [`parse_size`](super::units::parse_size) reads it).
impl schemars::JsonSchema for Size {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Size".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A size: bytes, or a number with K, M, G or T (`20G`, `512M`)",
            "oneOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": "^\\s*[0-9]+\\s*([kKmMgGtT]([iI]?[bB])?|[bB])?\\s*$" }
            ]
        })
    }
}

/// A duration written as `30s`, `5m`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }

    /// `None` for `0s` (no limit), the duration otherwise.
    pub fn non_zero(self) -> Option<Duration> {
        (!self.0.is_zero()).then_some(self.0)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}s", self.0.as_secs())
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim() == "0" {
            return Ok(Dur(Duration::ZERO));
        }
        super::units::parse_duration(&s).map(Dur).map_err(serde::de::Error::custom)
    }
}

/// A string, as [`parse_duration`](super::units::parse_duration) reads it; its grammar
/// (humantime's) is not restated as a pattern, which would drift from it.
impl schemars::JsonSchema for Dur {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration: a number with a unit (`30s`, `12h`, `7 days`, `1h 30m`)",
            "type": "string",
            "minLength": 1
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::LabConfig;

    #[test]
    fn defaults_fit_a_thousand_duts() {
        let l = Limits::default();
        // An idle HTTP keep-alive and an NBD connection per DUT, on separate listeners.
        assert!(l.connections >= 1000);
        assert!(l.tftp_transfers >= l.tftp_transfers_per_dut);
        assert!(l.nbd_idle_timeout.non_zero().is_none());
    }

    #[test]
    fn bad_values_have_positions() {
        let e = crate::lab::tests::only(LabConfig::from_yaml("limits:\n  max_disk_size: 12 parsecs\n", "l.yaml").unwrap_err());
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("size unit"), "{e}");
        let e = crate::lab::tests::only(LabConfig::from_yaml("limits:\n  max_disk_sise: 1T\n", "l.yaml").unwrap_err());
        assert_eq!((e.line, e.column), (2, 3), "{e}");
        let e = crate::lab::tests::only(LabConfig::from_yaml("limits:\n  idle_timeout: soon\n", "l.yaml").unwrap_err());
        assert!(e.message.contains("not a duration"), "{e}");
    }

    #[test]
    fn values_round_trip() {
        let l = LabConfig::from_yaml("limits:\n  nbd_bytes_in_flight: 1048576\n  idle_timeout: 0\n", "l.yaml").unwrap().limits;
        assert_eq!(l.nbd_bytes_in_flight, Size(1 << 20));
        assert_eq!(l.idle_timeout.non_zero(), None);
        assert_eq!(Size(3 << 40).to_string(), "3T");
        assert_eq!(Size(1000).to_string(), "1000");
    }
}
