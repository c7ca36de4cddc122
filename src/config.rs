//! The configuration file (one TOML file, docs/configuration.md): parsed with unknown keys rejected, every
//! field defaulted and documented, validated as a whole before any spectrum is read.
//! `examples/ftirflow.toml` is the documented example; a test parses it.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::operators::axis::Band;
use crate::operators::dearray::DearrayParams;
use crate::operators::emsc::EmscParams;
use crate::operators::grad_cam::MapKind;
use crate::operators::model::DeviceChoice;
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
    /// `[train]`: model training (`ftirflow train`).
    pub train: TrainConfig,
    /// `[run]`: the nightly pipeline (`ftirflow run`).
    pub run: RunConfig,
    /// `[report]`: the HTML report written at the end of `run` and `train`.
    pub report: ReportConfig,
    /// `[tma]`: de-arraying whole TMA slides into named cores (`ftirflow run`).
    pub tma: TmaConfig,
}

/// `[tma]`: how `ftirflow run` finds the cores of a whole-slide image (ARCHITECTURE.md, Whole
/// slides). A slide's cores become the run's units of work, each read as a window of the image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TmaConfig {
    /// `auto` (default: an image whose objects lie on a grid is a slide, anything else one core),
    /// `on` (every image must be a slide or one core; an image that is neither is rejected) or
    /// `off` (every image is one core; no de-arraying pass).
    pub dearray: DearrayMode,
    /// Grid pitch in pixels, the same along rows and columns (default: estimated).
    pub pitch: Option<f64>,
    /// Core diameter in pixels (default: estimated).
    pub diameter: Option<f64>,
    /// Largest rotation of the grid, degrees (default 5, in `[0, 45)`).
    pub max_rotation_deg: f64,
    /// Pixels of slide kept around each core's box (default 4); less where two cores are closer,
    /// so that no pixel belongs to two cores.
    pub margin: u32,
    /// With `dearray = "auto"`, the fewest cores a grid must hold to be taken for a slide (default
    /// 4, at least 2): the pieces of one torn core also lie side by side, and 2–3 of them would
    /// otherwise be taken for a small grid. `"on"` takes any grid.
    pub min_cores: usize,
}

/// `[tma] dearray`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DearrayMode {
    /// Slides are de-arrayed; images that are not slides run whole.
    #[default]
    Auto,
    /// Every image must be a slide or a single core.
    On,
    /// Every image runs whole.
    Off,
}

impl Default for TmaConfig {
    fn default() -> Self {
        let p = DearrayParams::default();
        Self {
            dearray: DearrayMode::Auto,
            pitch: p.pitch,
            diameter: p.diameter,
            max_rotation_deg: p.max_rotation_deg,
            margin: 4,
            min_cores: 4,
        }
    }
}

impl TmaConfig {
    /// The de-arraying parameters.
    pub fn params(&self) -> DearrayParams {
        DearrayParams { pitch: self.pitch, diameter: self.diameter, max_rotation_deg: self.max_rotation_deg, ..DearrayParams::default() }
    }

    /// Validates the section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.min_cores < 2 {
            return Err(ConfigError::Invalid(OpError::config(
                "tma",
                format!("[tma] min_cores must be at least 2 (got {})", self.min_cores),
            )));
        }
        self.params().check().map(|_| ()).map_err(|e| ConfigError::Invalid(OpError::config("tma", format!("[tma] {e}"))))
    }
}

/// `[report]`: whether `ftirflow run` and `ftirflow train` finish by writing `OUT_DIR/report/`
/// (the same report `ftirflow report OUT_DIR` writes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportConfig {
    /// Write the report at the end of `run` and `train` (default true).
    pub enabled: bool,
}

impl Default for ReportConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// `[run]`: how `ftirflow run` classifies (the preprocessing comes from the model bundle, so a
/// run corrects spectra exactly as training did).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Worker threads per process (default 1; `--workers` overrides).
    pub workers: usize,
    /// Spectra per inference batch (default 1024). Outputs do not depend on the worker layout or
    /// the reading batch size; this value can change the last bits of the probabilities (libtorch
    /// picks its kernels by batch shape), so keep it fixed between runs you compare.
    pub batch: usize,
    /// Compute Grad-CAM maps and their summaries (default true).
    pub gradcam: bool,
    /// Which maps explain the predictions: `gradcam` (default, as the paper: where the evidence
    /// for the class lies, in `[0, 1]`) or `signed` (the same map without its ReLU, in `[-1, 1]`:
    /// negative where a region lowers the class's score). Parts computed with another kind are
    /// not reused.
    pub explain: MapKind,
    /// Inference device: `auto` (CUDA when available, default), `cpu` or `cuda`.
    pub device: DeviceChoice,
    /// libtorch intra-op threads per process (default 1: the workers are the parallelism).
    pub threads: usize,
    /// Spectra per record batch when reading images (default 1024).
    pub batch_rows: usize,
    /// Where the networks run: `auto` (default: a shared inference service per process when the
    /// device is CUDA, fed by the workers through a channel; each worker's own copy on the CPU),
    /// `local` or `shared`.
    pub inference: Inference,
    /// Threads of the shared inference service per process (default 4), each with its own copy of
    /// the networks on the device: while one waits for its batch's results, the next launches
    /// its batch. Only with `inference = "shared"` (CUDA's default); outputs do not depend on it.
    pub inference_threads: usize,
    /// Memory the run may use, MiB (default 0: 60 % of the machine's memory). A unit of work (a
    /// whole image, or one core of a slide) whose spectra would take more than its share — the
    /// budget over twice the workers per process: each worker holds one unit at a time, and a
    /// unit's spectra with the chain's copies of them take up to about twice their size — is
    /// rejected with a reason naming the budget instead of risking an out-of-memory kill.
    pub memory_budget: u64,
    /// Prometheus textfile metrics written at the end of every run, success or failure (default
    /// none; `--metrics-file` overrides): point it into node_exporter's textfile directory, with a
    /// name ending in `.prom`.
    pub metrics_file: Option<PathBuf>,
    /// Seconds a cluster run's processes wait for each other at start (default 300;
    /// `--connect-timeout` overrides): a process still missing then is named, and every process
    /// exits with code 2 instead of waiting forever.
    pub connect_timeout: u64,
    /// The number format of the networks' convolutions: `auto` (default: bf16 on a CPU with
    /// bfloat16 units when the bundles' probe spectra agree with f32, see docs/model.md), `f32`
    /// or `bf16`. Training is always f32. The choice and the check are recorded in `run.json`.
    pub precision: PrecisionChoice,
}

/// `[run] precision`: the number format of the convolutions at inference (docs/model.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrecisionChoice {
    /// bf16 on a CPU with bfloat16 units (AVX-512 BF16 or AMX) when the models' probe spectra
    /// get the same classes in bf16 as in f32 (≥ 99.5 %); f32 otherwise and on CUDA.
    #[default]
    Auto,
    /// Always f32.
    F32,
    /// Always bf16 (on a CPU without bfloat16 units it runs, slowly, in emulation).
    Bf16,
}

/// `[run] inference`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Inference {
    /// `shared` on CUDA, `local` on the CPU.
    #[default]
    Auto,
    /// Every worker runs its own copy of the networks.
    Local,
    /// An inference service per process owns the networks; workers send it batches.
    Shared,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            workers: 1,
            batch: 1024,
            gradcam: true,
            explain: MapKind::Gradcam,
            device: DeviceChoice::Auto,
            threads: 1,
            batch_rows: 1024,
            inference: Inference::Auto,
            inference_threads: 4,
            memory_budget: 0,
            metrics_file: None,
            connect_timeout: 300,
            precision: PrecisionChoice::Auto,
        }
    }
}

impl RunConfig {
    /// Validates the section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, v) in [
            ("workers", self.workers),
            ("batch", self.batch),
            ("threads", self.threads),
            ("batch_rows", self.batch_rows),
            ("inference_threads", self.inference_threads),
            ("connect_timeout", self.connect_timeout as usize),
        ] {
            if v == 0 {
                return Err(ConfigError::Invalid(OpError::config("run", format!("[run] {name} must be at least 1"))));
            }
        }
        Ok(())
    }
}

/// `[train]`: CaReNet-V1 training and cross-validation (docs/model.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Training epochs (default 50, as the paper).
    pub epochs: usize,
    /// Spectra per optimizer step (default 250, as the paper).
    pub batch_size: usize,
    /// Adam learning rate (default 1e-3, as the paper).
    pub learning_rate: f64,
    /// Cross-validation folds, split by patient and stratified by class (default 4); 0 or 1
    /// skips cross-validation and trains the final model only.
    pub folds: usize,
    /// Seed of the initialization, dropout, fold split and sampling (default 42).
    pub seed: u64,
    /// Spectra drawn per epoch, the same number from every class (default 2500; sampling with
    /// replacement from classes with fewer spectra). Caps the CPU time of an epoch.
    pub spectra_per_epoch: usize,
    /// At most this many tissue spectra are kept per core of an archive (default 1000; a seeded
    /// selection of pixels, the same in every fold).
    pub spectra_per_core: usize,
    /// Train a final model on all the data and save it (default true).
    pub final_model: bool,
    /// Where to train: `auto` (CUDA when available, default), `cpu` or `cuda`.
    pub device: DeviceChoice,
    /// libtorch intra-op threads; 0 = libtorch's default, one per core (default 0).
    pub threads: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 50,
            batch_size: 250,
            learning_rate: 1e-3,
            folds: 4,
            seed: 42,
            spectra_per_epoch: 2500,
            spectra_per_core: 1000,
            final_model: true,
            device: DeviceChoice::Auto,
            threads: 0,
        }
    }
}

impl TrainConfig {
    /// Validates the section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |r: String| Err(ConfigError::Invalid(OpError::config("train", r)));
        if self.epochs == 0 || self.batch_size == 0 || self.spectra_per_epoch == 0 || self.spectra_per_core == 0 {
            return bad("epochs, batch_size, spectra_per_epoch and spectra_per_core must be at least 1".into());
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad(format!("learning_rate must be positive, got {}", self.learning_rate));
        }
        if self.folds == 1 || self.folds > 100 {
            return bad(format!("folds must be 0 (no cross-validation) or between 2 and 100, got {}", self.folds));
        }
        if self.folds == 0 && !self.final_model {
            return bad("with folds = 0 and final_model = false there is nothing to train".into());
        }
        Ok(())
    }
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

    /// Reads and validates `path`, or the defaults when there is none.
    pub fn load_or_default(path: Option<&Path>) -> Result<Self, ConfigError> {
        path.map_or_else(|| Ok(Self::default()), Self::load)
    }

    /// Validates everything that needs no data.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.preprocess.validate()?;
        self.run.validate()?;
        self.tma.validate()?;
        self.train.validate()
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
        let e = Config::parse("[run]\nworkers = 0\n", "t").unwrap_err();
        assert!(matches!(e, ConfigError::Invalid(_)) && e.to_string().contains("[run] workers must be at least 1"), "{e}");
        let e = Config::parse("[run]\ninference_threads = 0\n", "t").unwrap_err();
        assert!(e.to_string().contains("[run] inference_threads must be at least 1"), "{e}");
        let e = Config::parse("[train]\nfolds = 1\n", "t").unwrap_err();
        assert!(matches!(e, ConfigError::Invalid(_)), "[run] and [train] faults are one kind: {e}");
        assert!(e.to_string().contains("folds"), "{e}");
        let e = Config::parse("[tma]\ndearray = \"maybe\"\n", "t").unwrap_err();
        assert!(e.to_string().contains("maybe"), "{e}");
        let e = Config::parse("[tma]\npitch = -3.0\n", "t").unwrap_err();
        assert!(matches!(e, ConfigError::Invalid(_)) && e.to_string().contains("pitch"), "{e}");
        let e = Config::parse("[train]\ndevice = \"tpu\"\n", "t").unwrap_err();
        assert!(e.to_string().contains("tpu"), "{e}");
    }
}
