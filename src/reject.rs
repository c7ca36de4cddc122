//! An input that could not be used, and why: the one reject type of every job (`convert`,
//! `preprocess`, `run`), printed as `rejected: PATH: [stage] reason` and written to
//! `rejects.parquet` by `run`.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::io::ReadError;

/// A rejected input.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Reject {
    /// The file.
    pub path: PathBuf,
    /// Where it failed (`discover`, `open`, `read`, `combine`, a kernel's name, `classify`, `write`, …).
    pub stage: String,
    /// One-line reason.
    pub reason: String,
}

impl Reject {
    /// A reject of `path` at `stage`.
    pub fn new(path: impl Into<PathBuf>, stage: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { path: path.into(), stage: stage.into(), reason: reason.into() }
    }

    /// A reject of `path` from a reader error (the reason without the path it already names when
    /// that is `path` itself).
    pub fn from_read_error(path: &Path, stage: &str, e: &ReadError) -> Self {
        let text = e.to_string();
        let prefix = format!("{}: ", path.display());
        let reason = text.strip_prefix(&prefix).map(str::to_string).unwrap_or(text);
        Self::new(path, stage, reason)
    }
}

impl std::fmt::Display for Reject {
    /// `PATH: [stage] reason`, as the commands print rejects.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: [{}] {}", self.path.display(), self.stage, self.reason)
    }
}

/// Sorts rejects by path (as text), stage and reason: the order of `rejects.parquet` and of the
/// printed list.
pub fn sort(rejects: &mut [Reject]) {
    rejects.sort_by(|a, b| (a.path.as_os_str(), &a.stage, &a.reason).cmp(&(b.path.as_os_str(), &b.stage, &b.reason)));
}
