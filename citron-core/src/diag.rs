//! What a user wrote wrong in a YAML file of theirs (a job or a lab file), said the one way both
//! kinds of file say it: `file:line:col: field: message`, one problem per line, every problem at
//! once.

use std::fmt;

/// One thing wrong in a file, where it is and what to change. Job files call it
/// [`JobError`](crate::job::JobError), lab files [`LabError`](crate::lab::LabError).
///
/// ```
/// use citron_core::diag::FileError;
/// let e = FileError { file: "lab.yaml".into(), line: 3, column: 5, field: "duts[0].ip".into(), message: "not an IP address".into() };
/// assert_eq!(e.to_string(), "lab.yaml:3:5: duts[0].ip: not an IP address");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// The file's name (a job's origin).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The key path, e.g. `deployment.start.storage.http[2].url` or `limits.idle_timeout`;
    /// empty when the whole file is concerned.
    pub field: String,
    /// What is wrong, said so that the user knows what to change.
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// Writes `errors` one per line: how [`JobErrors`](crate::job::JobErrors) and
/// [`LabErrors`](crate::lab::LabErrors) display.
pub fn write_lines(f: &mut fmt::Formatter<'_>, errors: &[FileError]) -> fmt::Result {
    for (i, e) in errors.iter().enumerate() {
        if i > 0 {
            writeln!(f)?;
        }
        write!(f, "{e}")?;
    }
    Ok(())
}
