//! Errors of the readers. Every variant names the file; all of them but [`ReadError::Window`] are the input's fault (bad
//! or unsupported data), so a run rejects the file and goes on; a window that selects nothing is the
//! caller's.
use std::path::{Path, PathBuf};

use super::Window;
use crate::operators::SchemaError;

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The operating system refused or failed a read.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A header field is missing, malformed or out of range.
    #[error("{}: header field `{field}`: {reason}", path.display())]
    Header {
        /// The header file.
        path: PathBuf,
        /// The field name.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The data file is smaller than the header says.
    #[error("{}: data file is truncated: the header needs {expected} bytes, the file has {actual}", path.display())]
    Truncated {
        /// The data file.
        path: PathBuf,
        /// Bytes the header implies.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// The file's content or layout is not what the format allows.
    #[error("{}: {reason}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The requested [`Window`] selects no pixel of the image (empty, or entirely outside it).
    #[error("{}: window {window} {reason}", path.display())]
    Window {
        /// The file.
        path: PathBuf,
        /// The window as requested.
        window: Window,
        /// Why it selects nothing, naming the image size.
        reason: String,
    },
    /// The table does not follow the spectra schema.
    #[error("{}: {source}", path.display())]
    Schema {
        /// The file.
        path: PathBuf,
        /// The schema problem.
        source: SchemaError,
    },
}

impl ReadError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.to_path_buf(), source }
    }

    /// A bad header field.
    pub fn header(path: &Path, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Header { path: path.to_path_buf(), field: field.into(), reason: reason.into() }
    }

    /// A content/layout problem.
    pub fn format(path: &Path, reason: impl Into<String>) -> Self {
        Self::Format { path: path.to_path_buf(), reason: reason.into() }
    }

    /// A schema problem.
    pub fn schema(path: &Path, source: SchemaError) -> Self {
        Self::Schema { path: path.to_path_buf(), source }
    }

    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::Io { path, .. }
            | Self::Header { path, .. }
            | Self::Truncated { path, .. }
            | Self::Format { path, .. }
            | Self::Window { path, .. }
            | Self::Schema { path, .. } => path,
        }
    }
}
