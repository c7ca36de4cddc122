//! The configuration file (one TOML file, DESIGN.md §7): parsed with unknown keys rejected, every
//! field defaulted and documented, validated as a whole before any spectrum is read.
//! `examples/ftirflow.toml` is the documented example; a test parses it.
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::operators::axis::Band;
use crate::operators::emsc::EmscParams;
use crate::operators::normalize::NormalizeParams;
use crate::operators::outliers::OutlierParams;
use crate::operators::resample::ResampleParams;
use crate::operators::segment::SegmentParams;
use crate::operators::OpError;

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[preprocess]`: the preprocessing chain.
    pub preprocess: PreprocessConfig,
}

/// A preprocessing step, in chain order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    /// Dual K-means tissue/paraffin masks.
    Segment,
    /// Amide I range, non-finite and EMSC-residual outlier flags.
    Outliers,
    /// EMSC on the `emsc_range` band.
    Emsc,
    /// Truncation and resampling onto the model grid.
    Resample,
    /// Normalization.
    Normalize,
}

impl Step {
    /// All steps in chain order.
    pub const ALL: [Step; 5] = [Step::Segment, Step::Outliers, Step::Emsc, Step::Resample, Step::Normalize];
}

/// Which spectra the `preprocess` output keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Keep {
    /// Every spectrum, with its mask and outlier columns (default).
    #[default]
    All,
    /// Tissue spectra only (all spectra when `segment` is not run).
    Tissue,
}

/// `[preprocess]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreprocessConfig {
    /// Steps to run, always applied in chain order (default all:
    /// `["segment", "outliers", "emsc", "resample", "normalize"]`).
    pub steps: Vec<Step>,
    /// The band EMSC fits and corrects; spectra are truncated to it first (default 900–1800 cm⁻¹,
    /// the biofingerprint).
    pub emsc_range: Band,
    /// Which spectra to write: `all` (default) or `tissue`.
    pub keep: Keep,
    /// Spectra per record batch (default 4096).
    pub batch_rows: usize,
    /// `[preprocess.segment]`.
    pub segment: SegmentParams,
    /// `[preprocess.outliers]`.
    pub outliers: OutlierParams,
    /// `[preprocess.emsc]`.
    pub emsc: EmscParams,
    /// `[preprocess.resample]`.
    pub resample: ResampleParams,
    /// `[preprocess.normalize]`.
    pub normalize: NormalizeParams,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self {
            steps: Step::ALL.to_vec(),
            emsc_range: Band::new(900.0, 1800.0),
            keep: Keep::All,
            batch_rows: crate::io::DEFAULT_BATCH_ROWS,
            segment: SegmentParams::default(),
            outliers: OutlierParams::default(),
            emsc: EmscParams::default(),
            resample: ResampleParams::default(),
            normalize: NormalizeParams::default(),
        }
    }
}

/// Why a configuration cannot be used (the user's fault; exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key or a wrong type.
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message (names the key and line).
        message: String,
    },
    /// A value is out of range or contradicts another.
    #[error(transparent)]
    Invalid(#[from] OpError),
    /// Steps that cannot run together.
    #[error("invalid [preprocess] steps: {0}")]
    Steps(String),
}

impl Config {
    /// Parses TOML text (`origin` names it in errors) and validates it.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse { path: origin.to_string(), message: e.to_string() })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.display().to_string(), source })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Validates everything that needs no data.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.preprocess.validate()
    }
}

impl PreprocessConfig {
    /// True when `step` is configured to run.
    pub fn runs(&self, step: Step) -> bool {
        self.steps.contains(&step)
    }

    /// Validates the section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut sorted = self.steps.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != self.steps.len() {
            return Err(ConfigError::Steps("a step is listed twice".into()));
        }
        if self.steps.is_empty() {
            return Err(ConfigError::Steps("no step to run".into()));
        }
        if self.batch_rows == 0 {
            return Err(ConfigError::Steps("batch_rows must be at least 1".into()));
        }
        let band = self.emsc_range;
        if !(band.lo.is_finite() && band.hi.is_finite()) || band.lo >= band.hi {
            return Err(OpError::config("emsc", format!("emsc_range {band} is empty")).into());
        }
        self.segment.check()?;
        self.outliers.check()?;
        self.emsc.validate()?;
        let grid = self.resample.grid()?;
        if self.runs(Step::Emsc) && self.runs(Step::Resample) {
            let (lo, hi) = crate::operators::axis::min_max(&grid).expect("grid has points");
            if lo < band.lo - 1e-9 || hi > band.hi + 1e-9 {
                return Err(OpError::config(
                    "resample",
                    format!("the grid {lo}–{hi} cm⁻¹ reaches outside emsc_range {band}, which EMSC truncated to"),
                )
                .into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_equals_the_defaults_it_documents() {
        let text = include_str!("../examples/ftirflow.toml");
        let cfg = Config::parse(text, "examples/ftirflow.toml").unwrap();
        assert_eq!(cfg, Config::default(), "the example documents the defaults");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let e = Config::parse("[preprocess]\nstepz = []\n", "t").unwrap_err();
        assert!(e.to_string().contains("unknown field `stepz`"), "{e}");
        let e = Config::parse("[preprocess.emsc]\norder = -1\n", "t").unwrap_err();
        assert!(e.to_string().contains("order must be ≥ 0"), "{e}");
        let e = Config::parse("[preprocess.outliers]\nmin = 3.0\nmax = 1.0\n", "t").unwrap_err();
        assert!(e.to_string().contains("min < max"), "{e}");
        let e = Config::parse("[preprocess]\nsteps = [\"emsc\", \"emsc\"]\n", "t").unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        let e = Config::parse("[preprocess]\nemsc_range = { lo = 1000.0, hi = 1800.0 }\n", "t").unwrap_err();
        assert!(e.to_string().contains("reaches outside emsc_range"), "{e}");
        let e = Config::parse("[preprocess.emsc]\nparaffin = \"interferents\"\ninterferent_components = 0\n", "t").unwrap_err();
        assert!(e.to_string().contains("interferent_components"), "{e}");
    }
}
