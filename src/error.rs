//! The error type of the jobs (`run`, `convert`, `preprocess` and the dataflow graph): what could
//! not be done, with its cause, and whether the output storage itself failed (a full disk, a
//! read-only file system), recognised from the `std::io::Error` kind anywhere in the cause chain.
//!
//! An error's `Display` is the whole one-line message (its cause included); `source()` gives the
//! chain for inspection. Every variant is fatal to the command (exit code 2); inputs that are bad
//! on their own are not errors but [`crate::reject::Reject`]s.
use std::path::Path;

use crate::bundle::BundleError;
use crate::config::ConfigError;
use crate::io::parquet::WriteError;
use crate::io::table::TableError;
use crate::io::ReadError;
use crate::operators::OpError;

/// Result of a job.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a job could not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be created, read or written.
    #[error("{message}: {source}")]
    Io {
        /// What could not be done, naming the file (`cannot write /out/run.json`).
        message: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A model bundle cannot be used.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// An operator kernel or the models refused.
    #[error(transparent)]
    Operator(#[from] OpError),
    /// An input cannot be read where no reject is possible (the archive itself, the labels).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// An output Parquet file cannot be written.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// An output table cannot be written.
    #[error(transparent)]
    Table(#[from] TableError),
    /// Building an Arrow batch failed (a schema mismatch: a bug, reported as such).
    #[error("internal error building a table: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// Arguments, models or inputs that do not fit together (the message says what to change).
    #[error("{0}")]
    Invalid(String),
    /// The outputs can no longer be written: the run stopped (a full or read-only disk).
    #[error("{0}")]
    Stopped(String),
    /// An error, with what was being done when it happened.
    #[error("{context}: {source}")]
    Context {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// An I/O error on `path` while doing `what` (`"cannot write"`, …): `what path: cause`.
    pub fn io(what: &str, path: &Path, source: std::io::Error) -> Self {
        Self::Io { message: format!("{what} {}", path.display()), source }
    }

    /// An I/O error described by `message` (which names the file): `message: cause`.
    pub fn io_message(message: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { message: message.into(), source }
    }

    /// An error the user must fix, described by `message`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }

    /// This error, with what was being done.
    pub fn context(self, context: impl Into<String>) -> Self {
        Self::Context { context: context.into(), source: Box::new(self) }
    }

    /// Whether the output storage cannot take more data (full, over quota, file size limit,
    /// read-only): not an input's fault, and every later write would fail too.
    pub fn is_storage(&self) -> bool {
        matches!(self, Error::Stopped(_)) || chain_has_storage_error(self)
    }
}

/// Whether `e` or any error in its `source()` chain is a storage [`std::io::Error`] (see
/// [`is_storage_io`]).
fn chain_has_storage_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(c) = current {
        if c.downcast_ref::<std::io::Error>().is_some_and(is_storage_io) {
            return true;
        }
        current = c.source();
    }
    false
}

/// Whether an I/O error says the storage cannot take more data: by its kind, or by its OS error
/// code where the kind is not mapped.
fn is_storage_io(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(e.kind(), ErrorKind::StorageFull | ErrorKind::ReadOnlyFilesystem | ErrorKind::FileTooLarge | ErrorKind::QuotaExceeded)
        || matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EROFS | libc::EFBIG | libc::EDQUOT))
}

/// Adds context to a fallible step: `step().context_with(|| format!("cannot …"))`.
pub trait ResultExt<T> {
    /// The error, with what was being done.
    fn context_with(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Into<Error>> ResultExt<T> for std::result::Result<T, E> {
    fn context_with(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| e.into().context(context()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_errors_are_recognised_by_kind_through_the_chain() {
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let e = Error::io("cannot write", Path::new("/x"), full).context("cannot write the outputs of a.hdr");
        assert!(e.is_storage());
        assert_eq!(
            e.to_string(),
            format!("cannot write the outputs of a.hdr: cannot write /x: {}", std::io::Error::from_raw_os_error(libc::ENOSPC))
        );
        let wrapped = WriteError::Io { path: "/y".into(), source: std::io::Error::from_raw_os_error(libc::EROFS) };
        assert!(Error::from(wrapped).is_storage());
        let missing = Error::io("cannot read", Path::new("/z"), std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(!missing.is_storage());
        assert!(!Error::invalid("--workers must be at least 1").is_storage());
        // A storage error mentioned only in text is not one (the kind decides, not the wording).
        assert!(!Error::invalid("No space left on device").is_storage());
    }
}
