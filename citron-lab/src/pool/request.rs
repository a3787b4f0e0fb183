//! What a reservation asks for, checked against the pool before it may wait (pure: no I/O).
//!
//! A request that can never be met (an unknown tag, more DUTs than match, a lifetime above the
//! maximum) is refused at once with the limit it crosses, rather than left to wait forever.

use std::net::IpAddr;
use std::time::Duration;

use citron_core::lab::{DutKind, PoolSettings, TenantQuota};
use citron_core::namespace::Dut;
use serde::{Deserialize, Serialize};

/// The most DUTs one request may ask for.
pub const COUNT_MAX: u32 = 256;
/// The most tags one request may name.
pub const TAGS_MAX: usize = 32;
/// The longest tag, arch or model name.
pub const NAME_MAX: usize = 128;
/// The longest job (YAML) a request may carry.
pub const JOB_MAX_BYTES: usize = 256 << 10;

/// The body of `POST /api/v1/reservations`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Tags every DUT must have (a subset match).
    #[serde(default)]
    pub tags: Vec<String>,
    /// `baremetal` or `vm`, when it matters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub kind: Option<DutKind>,
    /// The architecture, when it matters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// The model, when it matters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// How many DUTs, all or none (default 1).
    #[serde(default = "one")]
    pub count: u32,
    /// How long the DUTs are held once allocated (`30m`, `2h`); default the pool's
    /// `default_lifetime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<String>,
    /// Higher is served first (lowered to the tenant's `max_priority`); default 0.
    #[serde(default)]
    pub priority: i64,
    /// A job (YAML) set on every DUT once allocated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

fn one() -> u32 {
    1
}

/// What the pool knows of a DUT to match a request and to tell its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DutAttrs {
    /// Its id.
    pub id: String,
    /// `baremetal` or `vm`.
    #[schema(value_type = String)]
    pub kind: DutKind,
    /// Its architecture.
    pub arch: Option<String>,
    /// Its model.
    pub model: Option<String>,
    /// Its tags.
    pub tags: Vec<String>,
    /// Its MAC address.
    pub mac: Option<String>,
    /// Its addresses.
    #[schema(value_type = Vec<String>)]
    pub ip: Vec<IpAddr>,
    /// The gateway that serves it.
    pub gateway: Option<String>,
}

impl DutAttrs {
    /// A lab-file DUT.
    pub fn of(d: &Dut) -> DutAttrs {
        DutAttrs {
            id: d.id.0.clone(),
            kind: d.kind,
            arch: d.arch.clone(),
            model: d.model.clone(),
            tags: d.tags.clone(),
            mac: d.mac.clone(),
            ip: d.ip.clone(),
            gateway: d.gateway.clone(),
        }
    }
}

/// A request, checked: what is stored and queued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checked {
    /// Tags every DUT must have.
    pub tags: Vec<String>,
    /// The kind, if asked.
    pub kind: Option<DutKind>,
    /// The arch, if asked.
    pub arch: Option<String>,
    /// The model, if asked.
    pub model: Option<String>,
    /// How many.
    pub count: u32,
    /// The job to set on the DUTs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The lifetime once allocated.
    #[serde(skip)]
    pub lifetime: Duration,
    /// The priority after the tenant's cap.
    #[serde(skip)]
    pub priority: i64,
}

impl Checked {
    /// Whether the DUT `d` fits.
    pub fn fits(&self, d: &DutAttrs) -> bool {
        self.kind.is_none_or(|k| k == d.kind)
            && self.arch.as_ref().is_none_or(|a| d.arch.as_ref() == Some(a))
            && self.model.as_ref().is_none_or(|m| d.model.as_ref() == Some(m))
            && self.tags.iter().all(|t| d.tags.contains(t))
    }
}

/// The longest lifetime a tenant's reservation may have: the pool's, or the tenant's if lower.
pub fn max_lifetime(settings: &PoolSettings, quota: Option<&TenantQuota>) -> Duration {
    let pool = settings.max_lifetime.get();
    quota.and_then(|q| q.max_lifetime).map_or(pool, |t| t.get().min(pool))
}

/// Parses a lifetime (`30m`) and checks it against `max`.
pub fn lifetime(text: &str, max: Duration) -> Result<Duration, String> {
    let d = citron_core::units::parse_duration(text).map_err(|e| format!("lifetime: {e}"))?;
    if d.is_zero() {
        return Err("lifetime: must be more than 0s".into());
    }
    if d > max {
        return Err(format!(
            "lifetime {text} is above the maximum of {}s for this tenant (pool.max_lifetime, tenants.NAME.max_lifetime)",
            max.as_secs()
        ));
    }
    Ok(d)
}

/// Checks `req` against the pool's DUTs (`duts`: every DUT the pool has, in any state), its
/// settings and the tenant's quota (`None`: the administrator, whose priority is not capped).
pub fn check(
    req: Request,
    duts: &[DutAttrs],
    settings: &PoolSettings,
    quota: Option<&TenantQuota>,
    admin: bool,
) -> Result<Checked, String> {
    if req.count == 0 || req.count > COUNT_MAX {
        return Err(format!("count {} is not between 1 and {COUNT_MAX}", req.count));
    }
    if req.tags.len() > TAGS_MAX {
        return Err(format!("{} tags: at most {TAGS_MAX}", req.tags.len()));
    }
    for s in req.tags.iter().chain(&req.arch).chain(&req.model) {
        if s.is_empty() || s.len() > NAME_MAX {
            return Err(format!("{:?}: tags, arch and model are 1 to {NAME_MAX} bytes", citron_core::access::truncate_logged(s, 64)));
        }
    }
    if req.job.as_ref().is_some_and(|j| j.len() > JOB_MAX_BYTES) {
        return Err(format!("the job is larger than {JOB_MAX_BYTES} bytes"));
    }
    if let Some(t) = req.tags.iter().find(|t| !duts.iter().any(|d| d.tags.contains(t))) {
        return Err(format!("unknown tag {t:?}: no DUT of the pool has it"));
    }
    if let Some(a) = req.arch.as_ref().filter(|a| !duts.iter().any(|d| d.arch.as_ref() == Some(a))) {
        return Err(format!("unknown arch {a:?}: no DUT of the pool has it"));
    }
    if let Some(m) = req.model.as_ref().filter(|m| !duts.iter().any(|d| d.model.as_ref() == Some(m))) {
        return Err(format!("unknown model {m:?}: no DUT of the pool has it"));
    }
    let max = max_lifetime(settings, quota);
    let life = match &req.lifetime {
        Some(t) => lifetime(t, max)?,
        None => settings.default_lifetime.get().min(max),
    };
    if let Some(m) = quota.and_then(|q| q.max_duts).filter(|m| req.count > *m) {
        return Err(format!("count {} is above this tenant's max_duts of {m}", req.count));
    }
    let priority = if admin { req.priority } else { req.priority.min(quota.and_then(|q| q.max_priority).unwrap_or(0)) };
    let c = Checked {
        tags: req.tags,
        kind: req.kind,
        arch: req.arch,
        model: req.model,
        count: req.count,
        job: req.job,
        lifetime: life,
        priority,
    };
    let matching = duts.iter().filter(|d| c.fits(d)).count();
    if c.count as usize > matching {
        return Err(format!("count {} is above the {matching} DUTs of the pool that match", c.count));
    }
    Ok(c)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn dut(id: &str, arch: &str, model: &str, tags: &[&str]) -> DutAttrs {
        DutAttrs {
            id: id.into(),
            kind: DutKind::Baremetal,
            arch: Some(arch.into()),
            model: Some(model.into()),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            mac: None,
            ip: vec![],
            gateway: None,
        }
    }

    #[test]
    fn requests_that_can_never_be_met_are_refused_naming_the_limit() {
        let duts = [dut("a", "x86_64", "r640", &["fast"]), dut("b", "x86_64", "r640", &[]), dut("c", "aarch64", "rpi", &[])];
        let s = PoolSettings::default();
        let q = TenantQuota {
            max_duts: Some(2),
            max_lifetime: Some(citron_core::limits::Dur(Duration::from_secs(3600))),
            max_priority: Some(3),
        };
        let req = |f: &dyn Fn(&mut Request)| {
            let mut r = Request { count: 1, ..Request::default() };
            f(&mut r);
            check(r, &duts, &s, Some(&q), false)
        };
        assert!(req(&|r| r.tags = vec!["slow".into()]).unwrap_err().contains("unknown tag \"slow\""));
        assert!(req(&|r| r.arch = Some("riscv".into())).unwrap_err().contains("unknown arch"));
        assert!(req(&|r| r.count = 3).unwrap_err().contains("max_duts of 2"));
        assert!(req(&|r| {
            r.count = 2;
            r.tags = vec!["fast".into()]
        })
        .unwrap_err()
        .contains("above the 1 DUTs"));
        assert!(req(&|r| r.lifetime = Some("2h".into())).unwrap_err().contains("above the maximum of 3600s"));
        assert!(req(&|r| r.count = 0).is_err());
        let ok = req(&|r| {
            r.priority = 10;
            r.arch = Some("x86_64".into())
        })
        .unwrap();
        assert_eq!((ok.priority, ok.lifetime), (3, Duration::from_secs(3600)));
        let admin = check(Request { count: 1, priority: 10, ..Request::default() }, &duts, &s, None, true).unwrap();
        assert_eq!((admin.priority, admin.lifetime), (10, s.default_lifetime.get()));
    }
}
