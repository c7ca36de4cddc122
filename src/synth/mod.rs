//! Synthetic TMA archive generator: micro-FTIR images of breast-tissue cores in paraffin, with
//! labels and the ground truth that the later stages (K-means masks, EMSC, CNN, Grad-CAM) can be
//! checked against.
//!
//! An archive has `patients` patients, each with one cancer core (`CA`, of a molecular subtype
//! `LA`/`LB`/`HER2`/`TNBC`, balanced over patients) and one adjacent-tissue core (`AT`). Each core
//! is an irregular tissue region (with holes, thin edges and paraffin-infiltrated patches) inside a
//! ring of paraffin on a bare slide. Tissue spectra are mixtures of protein, collagen, lipid,
//! nucleic acid, glycogen, RNA and β-sheet component spectra (pseudo-Voigt bands at literature
//! positions) whose proportions depend on the class, the subtype, the patient and the pixel, times a
//! thickness, plus a polynomial baseline, a scattering baseline and Gaussian noise.
//! [`planted_bands`] says where the classes differ.
//!
//! Output layout under `out`:
//! - `images/<sample>.{hdr,img}` (ENVI BIP f32), `images/<sample>.dmt` + `.dmd` tiles (Agilent) or
//!   `images/<sample>.parquet` (spectra table); samples `P01_CA`, `P01_AT`, `P02_CA`, …
//! - `labels.csv`: `sample,patient,type,subtype` (subtype empty for AT);
//! - `truth/masks.parquet`: `sample, x, y, mask (tissue|paraffin|background), paraffin_fraction,
//!   thickness`, one row per pixel. `paraffin_fraction` is the paraffin mixed into the pixel:
//!   0.08–0.58 in infiltrated tissue, 0 in other tissue and on bare slide, 1 in paraffin except
//!   within a pixel of the tissue edge, where a smear of tissue leaves 0.65–1;
//! - `truth/planted_bands.json`: per class the bands where it was made stronger, the component band
//!   tables and the config;
//! - `synth.json`: the config and a summary (written last: its presence marks a complete archive).
//!
//! Every file is byte-identical for a given config whatever the number of threads: each core and
//! each patient draws from its own ChaCha8 stream.
//!
//! With [`SynthConfig::slide`] set, the cores are laid out on whole TMA slides instead
//! (`images/S1.{hdr,img}` or an Agilent mosaic, `truth/slide_S1.json`, samples `S1/B3`), written
//! block by block; see the `slide` module and docs/formats.md.
//!
//! ```no_run
//! use ftirflow::synth::{generate, SynthConfig};
//! let cfg = SynthConfig { patients: 2, size: 32, ..SynthConfig::default() };
//! let summary = generate(&cfg, std::path::Path::new("/tmp/archive"), &|done, total| eprintln!("{done}/{total}")).unwrap();
//! assert_eq!(summary.cores, 4);
//! ```

mod core;
mod model;
mod slide;
mod truth;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

pub use model::{planted_bands, AbsorptionBand, ClassBands, PlantedBand, Subtype, AMIDE_I};
pub use slide::{position_name, row_name, SlideConfig, MAX_SLIDE_SIDE, SLIDE_TILE};

use self::core::{CoreSpec, CoreTruth, Model};
use crate::io::ImageCube;

/// Image format of the generated archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SynthFormat {
    /// ENVI `.hdr` + `.img`, band-interleaved-by-pixel f32 little endian (default).
    #[default]
    Envi,
    /// Agilent mosaic: `.dmt` header + `<stem>_XXXX_YYYY.dmd` FPA tiles (see
    /// [`SynthConfig::agilent_fpa`]).
    Agilent,
    /// Spectra Parquet table (the layout in ARCHITECTURE.md).
    Parquet,
}

impl SynthFormat {
    /// Lowercase name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            SynthFormat::Envi => "envi",
            SynthFormat::Agilent => "agilent",
            SynthFormat::Parquet => "parquet",
        }
    }

    /// Extension of the file a reader opens (`hdr`, `dmt`, `parquet`).
    pub fn extension(self) -> &'static str {
        match self {
            SynthFormat::Envi => "hdr",
            SynthFormat::Agilent => "dmt",
            SynthFormat::Parquet => "parquet",
        }
    }
}

impl std::fmt::Display for SynthFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for SynthFormat {
    type Err = SynthError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "envi" => Ok(SynthFormat::Envi),
            "agilent" => Ok(SynthFormat::Agilent),
            "parquet" => Ok(SynthFormat::Parquet),
            _ => Err(SynthError::Config(format!("unknown format {s:?} (expected envi, agilent or parquet)"))),
        }
    }
}

/// Configuration of a synthetic archive. Unknown keys are rejected when deserializing; missing keys
/// take their defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SynthConfig {
    /// Number of patients (default 8); each has one CA and one AT core, so cores = 2 × patients.
    pub patients: u32,
    /// Image side in pixels (default 64; at least 8, at most 1024; a multiple of 8 for Agilent).
    pub size: u32,
    /// Seed of every random draw (default 42).
    pub seed: u64,
    /// Image format (default `envi`).
    pub format: SynthFormat,
    /// Lowest wavenumber to cover, cm⁻¹ (default 900).
    pub wn_min: f64,
    /// Highest wavenumber to cover, cm⁻¹ (default 3800).
    pub wn_max: f64,
    /// Point spacing, cm⁻¹ (default 1.928467273712158, an Agilent FPA spacing). The axis is
    /// instrument-like: `wavenumber[i] = wn_step × (start + i)`, ascending, with
    /// `start = floor(wn_min / wn_step)` and the last point the first at or above `wn_max`.
    pub wn_step: f64,
    /// Scale of the class and subtype composition differences (default 1.0; 0 = no signal).
    pub effect: f64,
    /// How far Luminal B moves toward Luminal A, 0–1 (default 0.0: LA and LB as distinct as the
    /// other subtypes; 1: identical).
    pub la_lb_overlap: f64,
    /// Standard deviation of the patient-to-patient log-composition offsets (default 0.2; each core
    /// adds half of it again), 0–3.
    pub patient_var: f64,
    /// Standard deviation of the pixel-to-pixel log-composition variation (default 0.5; half
    /// spatially smooth, half independent per pixel), 0–3.
    pub pixel_var: f64,
    /// Absorbance noise standard deviation (default 0.002; up to 3× louder toward the low-wavenumber
    /// detector cut-off), 0–1.
    pub noise: f64,
    /// Fraction of tissue pixels with paraffin mixed in, in patches (default 0.15), 0–1. Those
    /// pixels are still ground-truth tissue; `paraffin_fraction` says how much paraffin they hold.
    pub paraffin_infiltration: f64,
    /// Fraction of the tissue of cancer cores that is stroma, composed like adjacent tissue
    /// (default 0.2), 0–1. Makes single cancer spectra ambiguous, as in real cores.
    pub ca_stroma: f64,
    /// Whole slides instead of one image per core (default: none). With it, `size` is the side of
    /// each core's image, and the cores of `patients` fill the slides' present positions in order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slide: Option<SlideConfig>,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            patients: 8,
            size: 64,
            seed: 42,
            format: SynthFormat::Envi,
            wn_min: 900.0,
            wn_max: 3800.0,
            wn_step: 1.928467273712158,
            effect: 1.0,
            la_lb_overlap: 0.0,
            patient_var: 0.2,
            pixel_var: 0.5,
            noise: 0.002,
            paraffin_infiltration: 0.15,
            ca_stroma: 0.2,
            slide: None,
        }
    }
}

/// Most points per spectrum the generator accepts.
pub const MAX_POINTS: usize = 65_536;
/// Largest image side accepted.
pub const MAX_SIZE: u32 = 1024;
/// Most patients accepted.
pub const MAX_PATIENTS: u32 = 9_999;

impl SynthConfig {
    /// Checks every field; the error lists every problem found.
    pub fn validate(&self) -> Result<(), SynthError> {
        let mut problems = Vec::new();
        if self.patients == 0 || self.patients > MAX_PATIENTS {
            problems.push(format!("patients must be between 1 and {MAX_PATIENTS} (got {})", self.patients));
        }
        if self.size < 8 || self.size > MAX_SIZE {
            problems.push(format!("size must be between 8 and {MAX_SIZE} pixels (got {})", self.size));
        } else if self.format == SynthFormat::Agilent && self.slide.is_none() && !self.size.is_multiple_of(8) {
            problems.push(format!("size must be a multiple of 8 for the agilent format (FPA tiles; got {})", self.size));
        }
        let mut axis_ok = true;
        for (name, v) in [("wn_min", self.wn_min), ("wn_max", self.wn_max), ("wn_step", self.wn_step)] {
            if !v.is_finite() || v <= 0.0 {
                problems.push(format!("{name} must be a positive finite number of cm⁻¹ (got {v})"));
                axis_ok = false;
            }
        }
        if axis_ok {
            if self.wn_min >= self.wn_max {
                problems.push(format!("wn_min ({}) must be below wn_max ({})", self.wn_min, self.wn_max));
            } else {
                let n = (self.wn_max - self.wn_min) / self.wn_step;
                if n > MAX_POINTS as f64 {
                    problems.push(format!(
                        "the axis {}–{} cm⁻¹ at a step of {} has more than {MAX_POINTS} points",
                        self.wn_min, self.wn_max, self.wn_step
                    ));
                }
            }
        }
        let knobs = [
            ("effect", self.effect, 0.0, 10.0),
            ("la_lb_overlap", self.la_lb_overlap, 0.0, 1.0),
            ("patient_var", self.patient_var, 0.0, 3.0),
            ("pixel_var", self.pixel_var, 0.0, 3.0),
            ("noise", self.noise, 0.0, 1.0),
            ("paraffin_infiltration", self.paraffin_infiltration, 0.0, 1.0),
            ("ca_stroma", self.ca_stroma, 0.0, 1.0),
        ];
        for (name, v, lo, hi) in knobs {
            if !v.is_finite() {
                problems.push(format!("{name} must be a finite number (got {v})"));
            } else if !(lo..=hi).contains(&v) {
                problems.push(format!("{name} must be between {lo} and {hi} (got {v})"));
            }
        }
        if let Some(sc) = &self.slide {
            sc.problems(self, &mut problems);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SynthError::Config(problems.join("; ")))
        }
    }

    /// The wavenumber axis, cm⁻¹, ascending: `wn_step × (start + i)` from the point at or below
    /// `wn_min` to the first point at or above `wn_max` (1506 points by default, 898.7–3801.0).
    pub fn wavenumbers(&self) -> Vec<f64> {
        let start = (self.wn_min / self.wn_step + 1e-9).floor();
        let end = (self.wn_max / self.wn_step - 1e-9).ceil();
        let n = (end - start) as usize + 1;
        (0..n).map(|i| self.wn_step * (start + i as f64)).collect()
    }

    /// Number of cores: 2 × patients.
    pub fn n_cores(&self) -> usize {
        2 * self.patients as usize
    }

    /// The patient id of patient `p` (1-based): `P` and the number zero-padded to the width of the
    /// patient count, at least 2 digits (`P01`, …, `P120`).
    pub fn patient_name(&self, p: u32) -> String {
        let width = self.patients.to_string().len().max(2);
        format!("P{p:0width$}")
    }

    /// The sample name of patient `p`'s cancer (`P01_CA`) or adjacent (`P01_AT`) core.
    pub fn sample_name(&self, p: u32, cancer: bool) -> String {
        format!("{}_{}", self.patient_name(p), if cancer { "CA" } else { "AT" })
    }

    /// The FPA tile side used for the Agilent format: the largest of 128, 64, 32, 16, 8 that divides
    /// `size`.
    pub fn agilent_fpa(&self) -> u32 {
        [128, 64, 32, 16, 8].into_iter().find(|f| self.size.is_multiple_of(*f)).unwrap_or(8)
    }

    /// Bytes of spectra of one core image (f32).
    pub fn core_bytes(&self) -> u64 {
        u64::from(self.size) * u64::from(self.size) * self.wavenumbers().len() as u64 * 4
    }
}

/// Errors of the generator, saying whose fault they are.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// The configuration is invalid (the user's).
    #[error("invalid synth configuration: {0}")]
    Config(String),
    /// The output directory cannot be used (the user's).
    #[error("cannot use output directory {path}: {reason}")]
    Output {
        /// The directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A file could not be written (the environment's).
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A format writer failed (the environment's, or a writer bug).
    #[error("cannot write {path}: {reason}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The writer's message.
        reason: String,
    },
    /// A bug in the generator.
    #[error("internal error in the synthetic archive generator: {0}")]
    Internal(String),
}

/// The label of one core, as written to `labels.csv`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SampleLabel {
    /// Sample name, e.g. `P01_CA`.
    pub sample: String,
    /// Patient id, e.g. `P01`.
    pub patient: String,
    /// `true` for the cancer core (`CA`), `false` for adjacent tissue (`AT`).
    pub cancer: bool,
    /// The patient's subtype on its cancer core; `None` on its adjacent core.
    pub subtype: Option<Subtype>,
}

impl SampleLabel {
    /// `CA` or `AT`.
    pub fn type_name(&self) -> &'static str {
        if self.cancer {
            "CA"
        } else {
            "AT"
        }
    }
}

/// The labels of every core of `cfg`, in archive order (`P01_CA`, `P01_AT`, `P02_CA`, …). Subtypes
/// are dealt round-robin over a seeded shuffle of the patients, so every subtype has
/// `patients / 4` or one more patients.
pub fn labels(cfg: &SynthConfig) -> Result<Vec<SampleLabel>, SynthError> {
    cfg.validate()?;
    let mut order: Vec<u32> = (1..=cfg.patients).collect();
    order.shuffle(&mut core::rng_for(cfg.seed, core::ARCHIVE_STREAM));
    let mut subtype = vec![Subtype::LA; cfg.patients as usize + 1];
    for (i, &p) in order.iter().enumerate() {
        subtype[p as usize] = Subtype::ALL[i % 4];
    }
    let mut out = Vec::with_capacity(cfg.n_cores());
    for p in 1..=cfg.patients {
        for cancer in [true, false] {
            out.push(SampleLabel {
                sample: cfg.sample_name(p, cancer),
                patient: cfg.patient_name(p),
                cancer,
                subtype: cancer.then_some(subtype[p as usize]),
            });
        }
    }
    Ok(out)
}

/// What [`generate`] did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SynthSummary {
    /// Cores (images) written.
    pub cores: usize,
    /// Spectra written (cores × size²).
    pub spectra: u64,
    /// Points per spectrum.
    pub points: usize,
    /// Bytes of every file written (images, truth, labels, JSON).
    pub bytes: u64,
    /// Bytes of the image files alone.
    pub image_bytes: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Generator threads used.
    pub threads: usize,
}

/// Upper bound on the memory held by in-flight core images (one per thread).
const CUBE_MEMORY_BUDGET: u64 = 8 << 30;

/// Generates the archive of `cfg` under `out` with one thread per available CPU (at most one per
/// core, and as many as one image per thread fits in 8 GiB). `progress(done_cores, total_cores)` is
/// called once with 0 before the first core and after each core, from the generator threads.
///
/// `out` is created if needed. If it exists it must be empty or hold only what a previous run
/// wrote (`images/`, `truth/`, `labels.csv`, `synth.json`, hidden temporary files); those are
/// replaced.
pub fn generate(cfg: &SynthConfig, out: &Path, progress: &(dyn Fn(usize, usize) + Sync)) -> Result<SynthSummary, SynthError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    generate_with_threads(cfg, out, threads, progress)
}

/// [`generate`] with an explicit thread count (0 = all available CPUs). The files are byte-identical
/// for every thread count.
pub fn generate_with_threads(
    cfg: &SynthConfig,
    out: &Path,
    threads: usize,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<SynthSummary, SynthError> {
    let start = Instant::now();
    cfg.validate()?;
    let n_cores = cfg.n_cores();
    let threads = if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
    if let Some(sc) = &cfg.slide {
        prepare_output(out)?;
        return slide::generate(cfg, sc, out, threads, progress, start);
    }
    let by_memory = (CUBE_MEMORY_BUDGET / cfg.core_bytes().max(1)).max(1) as usize;
    let threads = threads.min(n_cores).min(by_memory).max(1);

    prepare_output(out)?;
    let images = out.join("images");
    let truth_dir = out.join("truth");
    for d in [&images, &truth_dir] {
        fs::create_dir_all(d).map_err(truth::io_err(d))?;
    }

    let model = Model::new(cfg);
    let labels = labels(cfg)?;
    let planted = planted_bands(cfg)?;
    let specs = core_specs(cfg, &labels);
    tracing::info!(
        cores = n_cores,
        size = cfg.size,
        points = model.n_points(),
        threads,
        format = cfg.format.name(),
        out = %out.display(),
        "generating synthetic archive"
    );

    // Cores in parallel: each thread takes the next core index, draws it into its own reused
    // image buffer, writes it, and keeps its (small) ground truth.
    progress(0, n_cores);
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let image_bytes = AtomicU64::new(0);
    let truths: Mutex<Vec<Option<CoreTruth>>> = Mutex::new(vec![None; n_cores]);
    let fpa = cfg.agilent_fpa();
    let worker = || -> Result<(), SynthError> {
        let mut cube = ImageCube { width: 0, height: 0, wavenumbers: Vec::new(), values: Vec::new() };
        loop {
            if failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n_cores {
                return Ok(());
            }
            let spec = &specs[i];
            let t0 = Instant::now();
            let truth = core::synth_core(&model, spec, &mut cube);
            let t1 = Instant::now();
            let bytes =
                truth::write_image(&images, &spec.sample, &cube, cfg.format, fpa).inspect_err(|_| failed.store(true, Ordering::Relaxed))?;
            tracing::debug!(
                sample = %spec.sample,
                synth_s = (t1 - t0).as_secs_f64(),
                write_s = t1.elapsed().as_secs_f64(),
                bytes,
                "core written"
            );
            image_bytes.fetch_add(bytes, Ordering::Relaxed);
            truths.lock().map_err(|_| SynthError::Internal("truth store poisoned".into()))?[i] = Some(truth);
            progress(done.fetch_add(1, Ordering::Relaxed) + 1, n_cores);
        }
    };
    let results: Vec<Result<(), SynthError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(worker)).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|p| {
                    failed.store(true, Ordering::Relaxed);
                    let msg = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
                    Err(SynthError::Internal(format!("a generator thread panicked: {}", msg.unwrap_or_default())))
                })
            })
            .collect()
    });
    for r in results {
        r?;
    }
    let truths = truths.into_inner().map_err(|_| SynthError::Internal("truth store poisoned".into()))?;
    let cores: Vec<(String, CoreTruth)> = specs
        .iter()
        .zip(truths)
        .map(|(s, t)| t.map(|t| (s.sample.clone(), t)).ok_or_else(|| SynthError::Internal(format!("core {} was not generated", s.sample))))
        .collect::<Result<_, _>>()?;

    // Side files; synth.json last.
    let image_bytes = image_bytes.into_inner();
    let mut bytes = image_bytes;
    bytes += truth::write_masks(&truth_dir.join("masks.parquet"), cfg.size, &cores)?;
    bytes += truth::write_atomic(&truth_dir.join("planted_bands.json"), &json_bytes(&planted_json(cfg, &planted))?)?;
    bytes += truth::write_atomic(&out.join("labels.csv"), truth::labels_csv(&labels).as_bytes())?;
    let record = synth_json(cfg, &model, &labels, &cores, bytes);
    let record = json_bytes(&record)?;
    bytes += record.len() as u64;
    truth::write_atomic(&out.join("synth.json"), &record)?;

    let summary = SynthSummary {
        cores: n_cores,
        spectra: n_cores as u64 * u64::from(cfg.size) * u64::from(cfg.size),
        points: model.n_points(),
        bytes,
        image_bytes,
        seconds: start.elapsed().as_secs_f64(),
        threads,
    };
    tracing::info!(
        cores = summary.cores,
        spectra = summary.spectra,
        bytes = summary.bytes,
        seconds = summary.seconds,
        mb_per_s = summary.image_bytes as f64 / 1e6 / summary.seconds.max(1e-9),
        "synthetic archive written"
    );
    Ok(summary)
}

/// What each core of `labels` (archive order) is: its index, name, class and its patient's
/// log-composition offsets.
fn core_specs(cfg: &SynthConfig, labels: &[SampleLabel]) -> Vec<CoreSpec> {
    let mut patient_offsets = vec![[0.0; model::N_TISSUE]; cfg.patients as usize + 1];
    for p in 1..=cfg.patients {
        let mut rng = core::rng_for(cfg.seed, core::patient_stream(p));
        for v in &mut patient_offsets[p as usize] {
            *v = cfg.patient_var * rand::Rng::sample::<f64, _>(&mut rng, rand_distr::StandardNormal);
        }
    }
    labels
        .iter()
        .enumerate()
        .map(|(index, l)| CoreSpec { index, sample: l.sample.clone(), cancer: l.subtype, patient_offset: patient_offsets[index / 2 + 1] })
        .collect()
}

/// Names a previous run may have left in the output directory.
const MANAGED: [&str; 4] = ["images", "truth", "labels.csv", "synth.json"];

/// A file a killed run may have left half-written: `*.partial` ([`crate::io::atomic`]), or the
/// `.*.tmp` name that earlier versions wrote through.
fn is_temp(name: &str) -> bool {
    crate::io::atomic::is_partial(name) || (name.starts_with('.') && name.ends_with(".tmp"))
}

/// Creates `out`, or clears what an earlier run left there; refuses a directory with other content.
fn prepare_output(out: &Path) -> Result<(), SynthError> {
    let oerr = |reason: String| SynthError::Output { path: out.to_path_buf(), reason };
    if out.exists() && !out.is_dir() {
        return Err(oerr("it exists and is not a directory".into()));
    }
    if out.is_dir() {
        let entries: Vec<_> = fs::read_dir(out)
            .map_err(truth::io_err(out))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()
            .map_err(truth::io_err(out))?;
        let foreign: Vec<&String> = entries.iter().filter(|n| !MANAGED.contains(&n.as_str()) && !is_temp(n)).collect();
        if !foreign.is_empty() {
            return Err(oerr(format!(
                "it is not empty and holds files a synthetic archive does not ({}); choose an empty or new directory",
                foreign.iter().take(5).map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        for name in entries {
            let p = out.join(&name);
            let r = if p.is_dir() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
            r.map_err(truth::io_err(&p))?;
        }
    }
    fs::create_dir_all(out).map_err(truth::io_err(out))
}

fn json_bytes(v: &serde_json::Value) -> Result<Vec<u8>, SynthError> {
    let mut b = serde_json::to_vec_pretty(v).map_err(|e| SynthError::Internal(format!("JSON: {e}")))?;
    b.push(b'\n');
    Ok(b)
}

fn planted_json(cfg: &SynthConfig, planted: &[ClassBands]) -> serde_json::Value {
    let classes: serde_json::Map<String, serde_json::Value> =
        planted.iter().map(|c| (c.class.clone(), serde_json::json!({ "versus": c.versus, "bands": c.bands }))).collect();
    let components: serde_json::Map<String, serde_json::Value> =
        model::component_table().into_iter().map(|(name, bands)| (name.to_string(), serde_json::json!(bands))).collect();
    serde_json::json!({
        "description": "Bands (cm^-1) where the generator makes each class's tissue spectra stronger than \
            the classes it is compared with: CA vs AT, AT vs CA, each subtype vs the other three (cancer cores). \
            Measured on noise-free mean spectra divided by their absorbance at 1655 cm^-1 (amide I); \
            a band is listed when the increase is at least 0.015 and 15 %.",
        "normalization_wavenumber": AMIDE_I,
        "classes": classes,
        "components": components,
        "config": cfg,
    })
}

fn synth_json(cfg: &SynthConfig, model: &Model, labels: &[SampleLabel], cores: &[(String, CoreTruth)], bytes: u64) -> serde_json::Value {
    let axis = &model.axis;
    let samples: Vec<serde_json::Value> = labels
        .iter()
        .zip(cores)
        .map(|(l, (_, t))| {
            let count = |m: u8| t.mask.iter().filter(|&&v| v == m).count();
            serde_json::json!({
                "sample": l.sample,
                "patient": l.patient,
                "type": l.type_name(),
                "subtype": l.subtype.map(|s| s.name()),
                "image": format!("images/{}.{}", l.sample, cfg.format.extension()),
                "tissue_pixels": count(core::TISSUE),
                "paraffin_pixels": count(core::PARAFFIN),
                "background_pixels": count(core::BACKGROUND),
                "infiltrated_pixels": t.mask.iter().zip(&t.paraffin_fraction).filter(|(&m, &f)| m == core::TISSUE && f > 0.0).count(),
            })
        })
        .collect();
    serde_json::json!({
        "generator": "ftirflow synth",
        "version": env!("CARGO_PKG_VERSION"),
        "config": cfg,
        "summary": {
            "cores": cfg.n_cores(),
            "spectra": cfg.n_cores() as u64 * u64::from(cfg.size) * u64::from(cfg.size),
            "points": axis.len(),
            "wavenumber_first": axis[0],
            "wavenumber_last": axis[axis.len() - 1],
            "wavenumber_step": cfg.wn_step,
            "agilent_fpa": (cfg.format == SynthFormat::Agilent).then(|| cfg.agilent_fpa()),
            "bytes_before_this_file": bytes,
        },
        "samples": samples,
        "files": {
            "labels": "labels.csv",
            "masks": "truth/masks.parquet",
            "planted_bands": "truth/planted_bands.json",
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_axis_is_instrument_like() {
        let cfg = SynthConfig::default();
        let w = cfg.wavenumbers();
        assert!(w[0] <= 900.0 && w[0] > 900.0 - cfg.wn_step);
        assert!(w[w.len() - 1] >= 3800.0 && w[w.len() - 1] < 3800.0 + cfg.wn_step);
        assert!((1500..1510).contains(&w.len()), "{}", w.len());
        let start = (w[0] / cfg.wn_step).round();
        for (i, v) in w.iter().enumerate() {
            assert_eq!(*v, cfg.wn_step * (start + i as f64));
        }
    }

    #[test]
    fn names_are_padded() {
        let cfg = SynthConfig { patients: 120, ..SynthConfig::default() };
        assert_eq!(cfg.sample_name(7, true), "P007_CA");
        let cfg = SynthConfig { patients: 3, ..SynthConfig::default() };
        assert_eq!(cfg.sample_name(3, false), "P03_AT");
    }

    #[test]
    fn format_parses() {
        assert_eq!("Agilent".parse::<SynthFormat>().unwrap(), SynthFormat::Agilent);
        assert!("tiff".parse::<SynthFormat>().unwrap_err().to_string().contains("envi, agilent or parquet"));
    }
}
