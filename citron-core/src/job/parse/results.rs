//! The job's top-level `name:` and `results:`, checked as written: a job that sends results
//! back names itself (its runs are filed under that name) and says what it builds or tests.

use crate::units::parse_size;
use crate::yaml::{Node, Pos};

use super::{child, Fields, Str, Walker};

/// `results:` as written.
#[derive(Debug, Clone)]
pub(crate) struct ResultsDesc {
    pub revision: Option<Str>,
    pub platform: Option<Str>,
    /// The largest file one upload of the run may bring, with where it was written.
    pub max_size: Option<(u64, Pos, String)>,
}

/// Whether `s` is usable as a job name: 1 to 128 letters, digits, `.`, `_` or `-`, not
/// starting with `.` (the names the results API accepts in its paths).
pub(crate) fn is_job_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && !s.starts_with('.') && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl Walker<'_> {
    /// `name:` and `results:` of the top mapping `top`.
    pub(super) fn name_and_results(&mut self, top: &Fields<'_>) -> (Option<String>, Option<ResultsDesc>) {
        let name = top.get("name").and_then(|n| {
            let s = self.scalar(n, "name", "a job name like kernel-build")?;
            if is_job_name(&s.value) {
                return Some(s.value.clone());
            }
            self.err(
                s.pos,
                "name",
                format!("{:?} is not a job name: use 1 to 128 letters, digits, '.', '_' or '-', not starting with '.'", s.value),
            );
            None
        });
        let results = top.get("results").and_then(|n| self.results(n));
        if let (Some(k), None, false) = (top.key("results"), top.get("name"), top.misspelt.iter().any(|m| m == "name")) {
            self.err(
                k.pos,
                "results",
                "a job with `results:` needs a `name:` (its runs are filed under it); add one, like `name: kernel-build`",
            );
        }
        (name, results)
    }

    fn results(&mut self, node: &Node) -> Option<ResultsDesc> {
        let field = "results";
        let f = self.mapping(node, field, crate::job::file::fields_of::<crate::job::file::ResultsFile>())?;
        let revision = f.get("revision").map(|n| self.string(n, &child(field, "revision")));
        let platform = f.get("platform").map(|n| self.string(n, &child(field, "platform")));
        let max_size = f.get("max_size").map(|n| {
            let field = child(field, "max_size");
            let s = self.scalar(n, &field, "a size like 2G")?;
            match parse_size(&s.value) {
                Ok(0) => {
                    self.err(s.pos, &field, "a max_size of 0 allows no file; give a size like 512M or 2G");
                    None
                }
                Ok(b) => Some((b, s.pos, field)),
                Err(m) => {
                    self.err(s.pos, &field, m);
                    None
                }
            }
        });
        Some(ResultsDesc {
            revision: match revision {
                Some(r) => Some(r?),
                None => None,
            },
            platform: match platform {
                Some(p) => Some(p?),
                None => None,
            },
            max_size: match max_size {
                Some(m) => Some(m?),
                None => None,
            },
        })
    }
}
