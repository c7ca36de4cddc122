//! Errors of the operator kernels, saying whose fault a failure is: the user's configuration, the
//! data of one image (which rejects that image and lets the run go on), or a bug of ours.
use crate::schema::SchemaError;

/// Why a kernel could not be built or could not process a batch.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OpError {
    /// A parameter is invalid or contradicts another (user's configuration).
    #[error("invalid {operator} configuration: {reason}")]
    Config {
        /// The operator (`"emsc"`, `"segment"`, …).
        operator: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The data cannot be processed (rejects the image, not the run).
    #[error("{operator}: {reason}")]
    Data {
        /// The operator.
        operator: &'static str,
        /// What is wrong with the data.
        reason: String,
    },
    /// The input batches do not follow the spectra schema.
    #[error("{operator}: {source}")]
    Schema {
        /// The operator.
        operator: &'static str,
        /// The schema problem.
        source: SchemaError,
    },
    /// An invariant of ours was broken (a bug).
    #[error("internal error in {operator}: {reason}")]
    Internal {
        /// The operator.
        operator: &'static str,
        /// What broke.
        reason: String,
    },
}

impl OpError {
    /// A configuration error.
    pub fn config(operator: &'static str, reason: impl Into<String>) -> Self {
        Self::Config { operator, reason: reason.into() }
    }

    /// A data error.
    pub fn data(operator: &'static str, reason: impl Into<String>) -> Self {
        Self::Data { operator, reason: reason.into() }
    }

    /// A schema error.
    pub fn schema(operator: &'static str, source: SchemaError) -> Self {
        Self::Schema { operator, source }
    }

    /// A bug.
    pub fn internal(operator: &'static str, reason: impl Into<String>) -> Self {
        Self::Internal { operator, reason: reason.into() }
    }

    /// True when the user's configuration is at fault (exit code 2 before any data is read).
    pub fn is_config(&self) -> bool {
        matches!(self, Self::Config { .. })
    }
}
