//! Model bundles (docs/model.md): a directory with the CaReNet-V1 weights (`weights.safetensors`)
//! and a JSON manifest (`manifest.json`: architecture, task, class names, wavenumber grid,
//! preprocessing with the EMSC reference and interferents, normalization, training metrics, seed,
//! library versions and the SHA-256 of the weights), plus the training metrics
//! (`metrics.json`, `metrics.parquet`). [`Bundle::load`] validates all of it before any
//! spectrum is read, with errors that name the file and the field.
//!
//! ```no_run
//! use ftirflow::bundle::Bundle;
//! use ftirflow::operators::model::DeviceChoice;
//! let bundle = Bundle::load(std::path::Path::new("model"), DeviceChoice::Auto).unwrap();
//! println!("{} model, classes {:?}", bundle.manifest.task, bundle.classifier.classes());
//! ```
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{PreprocessConfig, Step, TrainConfig};
use crate::operators::model::{ArchConfig, CareNet, Classifier, DeviceChoice};
use crate::plan::EmscState;

/// Name of the weights file in a bundle.
pub const WEIGHTS: &str = "weights.safetensors";
/// Name of the manifest in a bundle.
pub const MANIFEST: &str = "manifest.json";
/// Name of the probe spectra in a bundle: preprocessed training spectra that `[run] precision =
/// "auto"` classifies in f32 and bf16 to check that they agree (docs/model.md).
pub const PROBE: &str = "probe.safetensors";
/// Spectra a bundle's probe holds at most.
pub const PROBE_ROWS: usize = 1024;
/// Bundle layout version written by this build; loading refuses any other.
pub const FORMAT: u32 = 1;
/// The tch release the weights were written with (pinned in Cargo.toml).
pub const TCH_VERSION: &str = "0.24.0";
/// The libtorch release tch 0.24 binds (checked when tch is built).
pub const LIBTORCH_VERSION: &str = "2.11.0";

/// Library versions recorded in a bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Versions {
    /// ftirflow.
    pub ftirflow: String,
    /// tch.
    pub tch: String,
    /// libtorch.
    pub libtorch: String,
}

impl Versions {
    /// The versions of this build.
    pub fn current() -> Self {
        Self { ftirflow: env!("CARGO_PKG_VERSION").into(), tch: TCH_VERSION.into(), libtorch: LIBTORCH_VERSION.into() }
    }
}

/// The manifest of a bundle (`manifest.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    /// Bundle layout version ([`FORMAT`]).
    pub format: u32,
    /// `type`, `subtype`, or `table` for a model trained on a labelled spectra table.
    pub task: String,
    /// Class names in output order (for two classes the second is the positive one).
    pub classes: Vec<String>,
    /// The network.
    pub architecture: ArchConfig,
    /// Trainable parameters.
    pub parameters: usize,
    /// The model grid (cm⁻¹) spectra must be resampled onto.
    pub wavenumbers: Vec<f64>,
    /// The `[preprocess]` configuration used in training (normalization included); a run applies
    /// the same.
    pub preprocess: PreprocessConfig,
    /// EMSC reference and interferents fitted on the training data (`None` when EMSC was not run).
    pub emsc: Option<EmscState>,
    /// The `[train]` configuration.
    pub train: TrainConfig,
    /// Seed of the final model.
    pub seed: u64,
    /// Summary of the cross-validation metrics (the full set is in `metrics.json`).
    pub metrics: serde_json::Value,
    /// Library versions.
    pub versions: Versions,
    /// SHA-256 of `weights.safetensors`, hex.
    pub weights_sha256: String,
    /// What the model was trained on (free text).
    pub source: String,
    /// SHA-256 of `probe.safetensors`, hex; absent in bundles written before probes were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_sha256: Option<String>,
}

/// Why a bundle cannot be saved or loaded: the bundle's fault (missing file, tampered weights,
/// inconsistent manifest, another version) or the file system's.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A file of the bundle is missing.
    #[error("model bundle {dir}: missing {file}")]
    Missing {
        /// The bundle directory.
        dir: PathBuf,
        /// The file name.
        file: &'static str,
    },
    /// A file cannot be read or written.
    #[error("model bundle: {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The manifest is not valid JSON of the expected shape.
    #[error("model bundle {path}: invalid manifest: {reason}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong (names the field).
        reason: String,
    },
    /// The weights do not match the manifest's hash (changed or corrupted after saving).
    #[error("model bundle {path}: weights SHA-256 {found} differs from the manifest's {expected}: the weights were changed or corrupted")]
    HashMismatch {
        /// The weights file.
        path: PathBuf,
        /// Hash in the manifest.
        expected: String,
        /// Hash of the file.
        found: String,
    },
    /// The bundle was written by an incompatible version.
    #[error("model bundle {dir}: {what} {found} cannot be loaded by this build ({expected}); retrain or use a matching ftirflow")]
    Version {
        /// The bundle directory.
        dir: PathBuf,
        /// Which version (`format`, `libtorch`).
        what: &'static str,
        /// In the bundle.
        found: String,
        /// This build's.
        expected: String,
    },
    /// The weights file does not fit the architecture.
    #[error("model bundle {path}: weights do not fit the architecture: {reason}")]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// libtorch's message.
        reason: String,
    },
}

/// A loaded, validated bundle: the manifest and the network ready for inference.
#[derive(Debug)]
pub struct Bundle {
    /// The bundle directory.
    pub dir: PathBuf,
    /// The manifest.
    pub manifest: BundleManifest,
    /// The network with the bundle's weights, on the chosen device.
    pub classifier: Classifier,
}

fn sha256_file(path: &Path) -> Result<String, BundleError> {
    let bytes = std::fs::read(path).map_err(|source| BundleError::Io { path: path.to_path_buf(), source })?;
    Ok(Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect())
}

fn major_minor(v: &str) -> &str {
    match v.match_indices('.').nth(1) {
        Some((i, _)) => &v[..i],
        None => v,
    }
}

impl BundleManifest {
    /// Checks the manifest's internal consistency (everything but the weights).
    pub fn validate(&self, path: &Path) -> Result<(), BundleError> {
        let bad = |reason: String| Err(BundleError::Manifest { path: path.to_path_buf(), reason });
        if let Err(e) = self.architecture.check() {
            return bad(format!("architecture: {e}"));
        }
        if self.classes.len() != self.architecture.classes {
            return bad(format!("classes: {} names for a {}-class architecture", self.classes.len(), self.architecture.classes));
        }
        let mut names = self.classes.clone();
        names.sort();
        names.dedup();
        if names.len() != self.classes.len() || self.classes.iter().any(|c| c.is_empty()) {
            return bad("classes: names must be distinct and non-empty".into());
        }
        if self.wavenumbers.len() != self.architecture.input_points {
            return bad(format!(
                "wavenumbers: a grid of {} points for an architecture of {} input points",
                self.wavenumbers.len(),
                self.architecture.input_points
            ));
        }
        if let Err(e) = crate::operators::schema::check_axis(&self.wavenumbers) {
            return bad(format!("wavenumbers: {e}"));
        }
        if let Err(e) = self.preprocess.validate() {
            return bad(format!("preprocess: {e}"));
        }
        if self.preprocess.runs(Step::Resample) {
            match self.preprocess.resample.grid() {
                Ok(grid)
                    if grid.len() == self.wavenumbers.len() && grid.iter().zip(&self.wavenumbers).all(|(a, b)| (a - b).abs() <= 1e-6) => {}
                Ok(grid) => {
                    return bad(format!(
                        "wavenumbers: the grid ({} points, {}–{} cm⁻¹) differs from preprocess.resample ({} points, {}–{} cm⁻¹)",
                        self.wavenumbers.len(),
                        self.wavenumbers[0],
                        self.wavenumbers[self.wavenumbers.len() - 1],
                        grid.len(),
                        grid[0],
                        grid[grid.len() - 1]
                    ))
                }
                Err(e) => return bad(format!("preprocess.resample: {e}")),
            }
        }
        if self.preprocess.runs(Step::Emsc) && self.task != "table" {
            match &self.emsc {
                None => return bad("emsc: the preprocessing runs EMSC but the bundle has no EMSC reference".into()),
                Some(state) => {
                    if let Err(e) = self.preprocess.emsc.check(&state.wavenumbers, &state.reference, &state.interferents) {
                        return bad(format!("emsc: {e}"));
                    }
                }
            }
        }
        if self.weights_sha256.len() != 64 || !self.weights_sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            return bad("weights_sha256: not a hex SHA-256".into());
        }
        Ok(())
    }

    /// Writes the bundle: `weights.safetensors` from `classifier`, then the manifest with the
    /// weights' hash (each through a temporary name). `dir` is created.
    pub fn save(self, dir: &Path, classifier: &Classifier) -> Result<BundleManifest, BundleError> {
        self.save_with_probe(dir, classifier, &[])
    }

    /// [`BundleManifest::save`], with `probe` (row-major spectra on the model grid, at most
    /// [`PROBE_ROWS`] are kept) as `probe.safetensors` when it is not empty.
    pub fn save_with_probe(mut self, dir: &Path, classifier: &Classifier, probe: &[f32]) -> Result<BundleManifest, BundleError> {
        std::fs::create_dir_all(dir).map_err(|source| BundleError::Io { path: dir.to_path_buf(), source })?;
        let points = self.wavenumbers.len().max(1);
        let rows = (probe.len() / points).min(PROBE_ROWS);
        self.probe_sha256 = None;
        if rows > 0 {
            let path = dir.join(PROBE);
            let spectra = tch::Tensor::from_slice(&probe[..rows * points]).view([rows as i64, points as i64]);
            let save = |tmp: &Path| {
                tch::Tensor::write_safetensors(&[("spectra", &spectra)], tmp).map_err(|e| std::io::Error::other(e.to_string()))
            };
            crate::io::atomic::write_atomic_at(&path, save).map_err(|source| BundleError::Io { path: path.clone(), source })?;
            self.probe_sha256 = Some(sha256_file(&path)?);
        }
        let weights = dir.join(WEIGHTS);
        // Not `VarStore::save`: it picks the format from the extension, which the `.partial` name hides.
        let vars: Vec<(String, tch::Tensor)> = classifier.var_store().variables().into_iter().collect();
        let save = |tmp: &Path| tch::Tensor::write_safetensors(&vars, tmp).map_err(|e| std::io::Error::other(e.to_string()));
        crate::io::atomic::write_atomic_at(&weights, save).map_err(|source| BundleError::Io { path: weights.clone(), source })?;
        self.weights_sha256 = sha256_file(&weights)?;
        let manifest = dir.join(MANIFEST);
        let json = serde_json::to_vec_pretty(&self).map_err(|e| BundleError::Manifest { path: manifest.clone(), reason: e.to_string() })?;
        write_atomic(&manifest, &json)?;
        Ok(self)
    }
}

/// Writes `bytes` to `path` atomically ([`crate::io::atomic::write_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), BundleError> {
    crate::io::atomic::write_atomic(path, bytes).map_err(|source| BundleError::Io { path: path.to_path_buf(), source })
}

impl Bundle {
    /// The bundle's probe spectra (row-major on the model grid) and their count, checked against
    /// the manifest's hash; `None` for a bundle written without a probe.
    pub fn probe(&self) -> Result<Option<(Vec<f32>, usize)>, BundleError> {
        let Some(expected) = &self.manifest.probe_sha256 else { return Ok(None) };
        let path = self.dir.join(PROBE);
        let found = sha256_file(&path)?;
        let bad = |reason: String| BundleError::Weights { path: path.clone(), reason };
        if &found != expected {
            return Err(bad(format!("probe SHA-256 {found} differs from the manifest's {expected}: the file was changed or corrupted")));
        }
        let tensors = tch::Tensor::read_safetensors(&path).map_err(|e| bad(e.to_string()))?;
        let points = self.manifest.wavenumbers.len() as i64;
        let spectra = match tensors.iter().find(|(n, _)| n == "spectra") {
            Some((_, t)) if t.dim() == 2 && t.size()[1] == points && t.kind() == tch::Kind::Float => t,
            _ => return Err(bad(format!("no `spectra` tensor of shape [rows, {points}] (f32)"))),
        };
        let rows = spectra.size()[0] as usize;
        let values = Vec::<f32>::try_from(spectra.flatten(0, -1)).map_err(|e| bad(e.to_string()))?;
        Ok(Some((values, rows)))
    }

    /// Opens and validates the bundle in `dir` and loads its weights onto `device`: the manifest
    /// must parse and be consistent, the format and libtorch versions must match this build, the
    /// weights must hash to the manifest's SHA-256 and fit the architecture.
    pub fn load(dir: &Path, device: DeviceChoice) -> Result<Self, BundleError> {
        let manifest_path = dir.join(MANIFEST);
        let weights_path = dir.join(WEIGHTS);
        if !dir.is_dir() {
            return Err(BundleError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
            });
        }
        for (p, file) in [(&manifest_path, MANIFEST), (&weights_path, WEIGHTS)] {
            if !p.is_file() {
                return Err(BundleError::Missing { dir: dir.to_path_buf(), file });
            }
        }
        let text = std::fs::read_to_string(&manifest_path).map_err(|source| BundleError::Io { path: manifest_path.clone(), source })?;
        // Versions first, so that a bundle of another layout says so rather than failing on a field.
        let raw: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| BundleError::Manifest { path: manifest_path.clone(), reason: e.to_string() })?;
        let format = raw.get("format").and_then(|v| v.as_u64());
        if format != Some(FORMAT as u64) {
            return Err(BundleError::Version {
                dir: dir.to_path_buf(),
                what: "bundle format",
                found: format.map_or("(none)".to_string(), |f| f.to_string()),
                expected: FORMAT.to_string(),
            });
        }
        if let Some(lt) = raw.pointer("/versions/libtorch").and_then(|v| v.as_str()) {
            if major_minor(lt) != major_minor(LIBTORCH_VERSION) {
                return Err(BundleError::Version {
                    dir: dir.to_path_buf(),
                    what: "libtorch",
                    found: lt.to_string(),
                    expected: LIBTORCH_VERSION.to_string(),
                });
            }
        }
        let manifest: BundleManifest =
            serde_json::from_value(raw).map_err(|e| BundleError::Manifest { path: manifest_path.clone(), reason: e.to_string() })?;
        manifest.validate(&manifest_path)?;
        let found = sha256_file(&weights_path)?;
        if found != manifest.weights_sha256 {
            return Err(BundleError::HashMismatch { path: weights_path, expected: manifest.weights_sha256.clone(), found });
        }
        let device = device.resolve().map_err(|e| BundleError::Manifest { path: manifest_path.clone(), reason: format!("device: {e}") })?;
        crate::operators::model::flush_denormals();
        let mut vs = tch::nn::VarStore::new(device);
        let net = CareNet::new(&vs.root(), &manifest.architecture)
            .map_err(|e| BundleError::Manifest { path: manifest_path.clone(), reason: e.to_string() })?;
        vs.load(&weights_path).map_err(|e| BundleError::Weights { path: weights_path.clone(), reason: e.to_string() })?;
        let stored = tch::Tensor::read_safetensors(&weights_path)
            .map_err(|e| BundleError::Weights { path: weights_path.clone(), reason: e.to_string() })?;
        let expected = vs.variables();
        if stored.len() != expected.len() {
            return Err(BundleError::Weights {
                path: weights_path,
                reason: format!("{} tensors in the file, {} in the architecture", stored.len(), expected.len()),
            });
        }
        for (name, t) in &stored {
            match expected.get(name) {
                Some(v) if v.size() == t.size() => {}
                Some(v) => {
                    return Err(BundleError::Weights {
                        path: weights_path,
                        reason: format!("`{name}` has shape {:?}, the architecture needs {:?}", t.size(), v.size()),
                    })
                }
                None => return Err(BundleError::Weights { path: weights_path, reason: format!("unexpected tensor `{name}`") }),
            }
        }
        let mut classifier = Classifier::from_parts(vs, net, manifest.classes.clone(), manifest.wavenumbers.clone())
            .map_err(|e| BundleError::Manifest { path: manifest_path, reason: e.to_string() })?;
        classifier.freeze();
        Ok(Self { dir: dir.to_path_buf(), manifest, classifier })
    }
}
