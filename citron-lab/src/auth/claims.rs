//! What a token says: its claims, and the rules that compare them (no keys, no I/O).
//!
//! A token names one **subject** (a tenant, or a run for a job's own upload token), the
//! **scopes** it grants, a **job-name pattern** (`name` or `prefix*`; `*` is every job), an
//! optional **run**, an optional **DUT pattern** (for the `dut` scope), an **expiry** and an
//! **id** (what revocation names). Patterns are exact names or a prefix followed by one `*`
//! on purpose: whether one pattern is narrower than another is then decidable in one line
//! ([`Pattern::covers`]), which `token_subset` needs to promise "never wider".

use serde::{Deserialize, Serialize};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Everything, as the lab's `api_token` (only the administrator mints such tokens).
    Admin,
    /// Open runs, upload files and console, finish runs, of the jobs the pattern names.
    Upload,
    /// Read runs and their files.
    Read,
    /// Reserve DUTs from the pool (the pool issue).
    Reserve,
    /// Drive the DUTs the `dut` pattern names: set their job, post events, read accesses.
    Dut,
}

impl Scope {
    /// Every scope, in order.
    pub const ALL: [Scope; 5] = [Scope::Admin, Scope::Upload, Scope::Read, Scope::Reserve, Scope::Dut];

    /// Its name in JSON and errors.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Upload => "upload",
            Scope::Read => "read",
            Scope::Reserve => "reserve",
            Scope::Dut => "dut",
        }
    }
}

/// A job or DUT name pattern: an exact name, or a prefix followed by `*` (`*` alone: all).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Pattern(String);

impl Pattern {
    /// Every name.
    pub fn any() -> Pattern {
        Pattern("*".into())
    }

    /// Checks `s`: a name of `[A-Za-z0-9._-]` (1 to 128 bytes), optionally ending in `*`, or `*`.
    pub fn parse(s: &str) -> Result<Pattern, String> {
        let body = s.strip_suffix('*').unwrap_or(s);
        if s.len() > 129 || (!s.ends_with('*') && body.is_empty()) || !body.bytes().all(name_byte) {
            return Err(format!(
                "{:?} is not a name pattern: write a name of letters, digits, '.', '_' or '-' (at most 128), optionally ending in '*' (\"ci-*\"), or \"*\"",
                citron_core::access::truncate_logged(s, 64)
            ));
        }
        Ok(Pattern(s.to_string()))
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => self.0 == name,
        }
    }

    /// Whether every name `other` matches, this one matches too (`other` is no wider).
    pub fn covers(&self, other: &Pattern) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => other.0.starts_with(prefix),
            None => self.0 == other.0,
        }
    }

    /// As written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Pattern {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Pattern::parse(&s)
    }
}

impl From<Pattern> for String {
    fn from(p: Pattern) -> String {
        p.0
    }
}

/// A byte of a job, tenant or DUT name.
pub fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// Checks a job or tenant name: 1 to 128 bytes of `[A-Za-z0-9._-]`, not starting with `.`.
pub fn check_name(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 128 || s.starts_with('.') || !s.bytes().all(name_byte) {
        return Err(format!(
            "{what} {:?} is not a name: 1 to 128 letters, digits, '.', '_' or '-', not starting with '.'",
            citron_core::access::truncate_logged(s, 64)
        ));
    }
    Ok(())
}

/// The claims of a signed token (JWT, EdDSA).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The subject: `tenant:NAME`, `lab` (minted by the administrator for the lab's own jobs)
    /// or `run:ID`.
    pub sub: String,
    /// The tenant whose jobs the token reaches; `None`: the lab's own jobs (those DUT runs
    /// open, and those opened by tokens without a tenant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// What it may do.
    pub scope: Vec<Scope>,
    /// Which jobs.
    pub job: Pattern,
    /// Only this run (a job's own upload token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<i64>,
    /// Which DUTs the `dut` scope drives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dut: Option<Pattern>,
    /// These DUTs too, by id (a pool reservation's token names exactly its DUTs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub duts: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// The token's id: what `DELETE /api/v1/tokens/{id}` revokes.
    pub jti: String,
}

impl Claims {
    /// Whether it grants `scope`.
    pub fn has(&self, scope: Scope) -> bool {
        self.scope.contains(&scope)
    }

    /// Whether the `dut` scope (if granted) names the DUT `id`: its pattern or its list.
    pub fn drives(&self, id: &str) -> bool {
        self.dut.as_ref().is_some_and(|d| d.matches(id)) || self.duts.iter().any(|d| d == id)
    }

    /// Why `child` is not a narrowing of `self` (`None`: it is): every scope of the child is
    /// the parent's, its job and DUT patterns no wider, its run the parent's if the parent has
    /// one, its tenant the same, its expiry no later.
    pub fn why_not_subset(&self, child: &Claims) -> Option<String> {
        if let Some(s) = child.scope.iter().find(|s| !self.has(**s)) {
            return Some(format!("scope {} is not in the token's scopes", s.name()));
        }
        if !self.job.covers(&child.job) {
            return Some(format!("job {:?} is wider than the token's {:?}", child.job.as_str(), self.job.as_str()));
        }
        if self.run.is_some() && child.run != self.run {
            return Some("the token is for one run only".into());
        }
        match (&self.dut, &child.dut) {
            (_, None) => {}
            (Some(p), Some(c)) if p.covers(c) => {}
            (_, Some(c)) => return Some(format!("dut {:?} is wider than the token's", c.as_str())),
        }
        if let Some(d) = child.duts.iter().find(|d| !self.drives(d)) {
            return Some(format!("DUT {d:?} is not one of the token's"));
        }
        if child.tenant != self.tenant {
            return Some("a narrowed token stays with the token's tenant".into());
        }
        if child.exp > self.exp {
            return Some("a narrowed token cannot outlive the token".into());
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    #[test]
    fn patterns() {
        assert!(p("*").matches("anything"));
        assert!(p("ci-*").matches("ci-build") && !p("ci-*").matches("cd-build"));
        assert!(p("kernel").matches("kernel") && !p("kernel").matches("kernel2"));
        for bad in ["", "a*b", "**", "a/b", "../x", "a b", "\0"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
        assert!(p("*").covers(&p("ci-*")) && p("ci-*").covers(&p("ci-a*")) && p("ci-*").covers(&p("ci-x")));
        assert!(!p("ci-x").covers(&p("ci-*")) && !p("ci-*").covers(&p("*")) && !p("ci-a").covers(&p("ci-b")));
        assert!(check_name("job", "build.1_x-y").is_ok());
        for bad in ["", ".hidden", "a/b", "..", &"x".repeat(129)] {
            assert!(check_name("job", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn subsets_are_never_wider_nor_longer() {
        let parent = Claims {
            sub: "tenant:ci".into(),
            tenant: Some("ci".into()),
            scope: vec![Scope::Upload, Scope::Read],
            job: p("ci-*"),
            run: None,
            dut: None,
            duts: vec![],
            exp: 1000,
            iat: 1,
            jti: "a".into(),
        };
        let child = Claims { scope: vec![Scope::Read], job: p("ci-x"), exp: 999, jti: "b".into(), ..parent.clone() };
        assert_eq!(parent.why_not_subset(&child), None);
        assert!(parent.why_not_subset(&Claims { scope: vec![Scope::Admin], ..child.clone() }).is_some());
        assert!(parent.why_not_subset(&Claims { job: p("*"), ..child.clone() }).is_some());
        assert!(parent.why_not_subset(&Claims { exp: 1001, ..child.clone() }).is_some());
        assert!(parent.why_not_subset(&Claims { tenant: None, ..child.clone() }).is_some());
        assert!(parent.why_not_subset(&Claims { dut: Some(p("*")), ..child.clone() }).is_some());
        let run = Claims { run: Some(7), ..parent.clone() };
        assert!(run.why_not_subset(&Claims { run: None, ..child.clone() }).is_some());
        assert_eq!(run.why_not_subset(&Claims { run: Some(7), ..child }), None);
    }
}
