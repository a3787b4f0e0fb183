//! All YAML reading lives here, so that the parser (serde_yaml, archived upstream) can be swapped
//! by changing this one module.

use serde::de::DeserializeOwned;

/// A YAML error with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// 1-based line (1 when unknown).
    pub line: usize,
    /// 1-based column (1 when unknown).
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// Deserialises a whole document into `T` (used for lab files, whose first error is enough).
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    serde_yaml::from_str(text).map_err(|e| {
        let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((1, 1));
        let mut message = e.to_string();
        // serde_yaml appends " at line L column C"; the position is printed in front instead.
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        YamlError { line, column, message }
    })
}
