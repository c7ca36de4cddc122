//! Training CaReNet-V1 (docs/model.md): patient-grouped, class-stratified k-fold cross-validation
//! and a final model on all the data, saved as a model bundle ([`crate::bundle`]).
//!
//! For an archive, every fold fits the EMSC reference (and paraffin interferents) on its training
//! images only, preprocesses all images with that state, and keeps the tissue, non-outlier spectra
//! (at most `spectra_per_core` per core, the same pixels in every fold). For a labelled spectra
//! table, the spectra are resampled onto the model grid and normalized. Each epoch draws the same
//! number of spectra from every class (balanced sampling), in batches, with Adam; after the last
//! epoch the batch-norm statistics are re-estimated on training batches with the final weights
//! ("precise BN"). Out-of-fold predictions give the metrics per fold and pooled, per spectrum and
//! per core (majority vote), and the out-of-fold Grad-CAM maps give each class's top bands.
//! Everything is seeded: on CPU the same configuration gives the same model and metrics.
pub mod data;
pub mod folds;
pub mod metrics;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tch::nn::{ModuleT, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::bundle::{self, BundleError, BundleManifest, Versions};
use crate::config::{Config, TrainConfig};
use crate::operators::grad_cam::{self, CamAggregator, TopBand};
use crate::operators::model::{self, ArchConfig, Classifier};
use crate::operators::OpError;
use crate::plan::{EmscState, PreprocessPlan};
pub use data::{Dataset, Task};
use metrics::{CvReport, FoldPredictions, FoldReport};

/// Why training failed: the user's configuration or labels, the data, or writing the bundle.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The labels file is unusable (user's input).
    #[error("labels {path}: {reason}")]
    Labels {
        /// The labels file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The training data cannot make a model (too few classes, patients, spectra).
    #[error("training data: {0}")]
    Data(String),
    /// An image or table failed to read or preprocess. Training needs every labelled image.
    #[error("{path}: {reason}")]
    Image {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A kernel or the model refused its configuration or failed.
    #[error(transparent)]
    Op(#[from] OpError),
    /// The bundle could not be written.
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

/// What to train on.
#[derive(Debug, Clone)]
pub enum Input {
    /// An archive of images with a labels CSV (`sample,patient,type,subtype`) and the task.
    Archive {
        /// The archive directory.
        dir: PathBuf,
        /// The labels file.
        labels: PathBuf,
        /// `type` or `subtype`.
        task: Task,
    },
    /// A labelled spectra table (Parquet or Orange CSV) with a `class` column.
    Table(PathBuf),
}

/// One class's Grad-CAM summary over the out-of-fold test spectra.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassCam {
    /// The class.
    pub class: String,
    /// `true` (grouped by true class) or `predicted`.
    pub by: String,
    /// Spectra aggregated.
    pub count: u64,
    /// Top bands of the class mean map (strongest first).
    pub top_bands: Vec<TopBand>,
}

/// The result of a training run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainReport {
    /// The cross-validation metrics.
    pub cv: CvReport,
    /// Grad-CAM top bands per class (out-of-fold), by true and by predicted class.
    pub gradcam: Vec<ClassCam>,
    /// Spectra used per fold for training and testing.
    pub fold_sizes: Vec<(usize, usize)>,
    /// The test fold (1-based) of each patient, in patient order (empty without folds).
    pub patient_folds: BTreeMap<String, usize>,
    /// Spectra of the final model's training set (0 without a final model).
    pub final_spectra: usize,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// The Grad-CAM maps of the out-of-fold predictions, aggregated.
struct CamSets {
    by_true: CamAggregator,
    by_predicted: CamAggregator,
    /// Sums of the out-of-fold spectra by (`true` | `predicted`, class): how many, and their sum
    /// per point (which way a top band points, [`grad_cam::direction`]).
    spectra: HashMap<(&'static str, String), (u64, Vec<f64>)>,
}

impl CamSets {
    /// Adds one spectrum under its true and its predicted class.
    fn add_spectrum(&mut self, truth: &str, predicted: &str, s: &[f32]) {
        for key in [("true", truth), ("predicted", predicted)] {
            let e = self.spectra.entry((key.0, key.1.to_string())).or_insert_with(|| (0, vec![0.0; s.len()]));
            e.0 += 1;
            for (acc, &v) in e.1.iter_mut().zip(s) {
                *acc += f64::from(v);
            }
        }
    }

    /// Which way a band of `class` (grouped `by` true or predicted class) points against the
    /// other `classes`.
    fn direction(&self, by: &str, class: &str, classes: &[String], grid: &[f64], band: &TopBand) -> Option<grad_cam::Direction> {
        let mean = |(n, sum): &(u64, Vec<f64>)| sum.iter().map(|v| v / (*n).max(1) as f64).collect::<Vec<f64>>();
        let key = |c: &str| (if by == "true" { "true" } else { "predicted" }, c.to_string());
        let own = mean(self.spectra.get(&key(class))?);
        let others: Vec<(u64, Vec<f64>)> =
            classes.iter().filter(|c| c.as_str() != class).filter_map(|c| self.spectra.get(&key(c)).map(|e| (e.0, mean(e)))).collect();
        let others: Vec<(u64, &[f64])> = others.iter().map(|(n, m)| (*n, m.as_slice())).collect();
        grad_cam::direction(&own, &others, grid, band.lo, band.hi)
    }
}

/// One finished training epoch, as reported to the caller of [`train`].
#[derive(Debug, Clone)]
pub struct EpochProgress<'a> {
    /// Which model is training (`fold 2/4`, `final model`).
    pub model: &'a str,
    /// Epochs finished.
    pub epoch: usize,
    /// Epochs in all.
    pub epochs: usize,
    /// Mean training loss of the epoch.
    pub loss: f64,
    /// Training accuracy of the epoch.
    pub accuracy: f64,
}

/// Trains (cross-validation, then the final model) and writes the bundle into `out`: weights and
/// manifest (with a final model), `metrics.json`, `metrics.parquet` and `gradcam.json`. Each
/// finished epoch is reported to `progress`.
pub fn train(cfg: &Config, input: &Input, out: &Path, progress: &dyn Fn(&EpochProgress)) -> Result<TrainReport, TrainError> {
    let start = Instant::now();
    let t = &cfg.train;
    model::set_threads(t.threads);
    model::flush_denormals();
    let grid = cfg.preprocess.resample.grid()?;
    let device = t.device.resolve()?;
    // The data, once per fold for archives (EMSC is fitted on each fold's training images).
    let (task_name, classes, source, mut source_data) = match input {
        Input::Archive { dir, labels, task } => {
            let labels_map = data::read_labels(labels)?;
            let la = data::labelled_archive(dir, &labels_map, *task)?;
            if !la.unlabelled.is_empty() {
                tracing::info!("{} image(s) without a label for this task are not used", la.unlabelled.len());
            }
            (
                task.name().to_string(),
                task.classes(),
                format!("archive {} with labels {}", dir.display(), labels.display()),
                Source::Archive(la),
            )
        }
        Input::Table(path) => {
            let (ds, classes) = data::table_dataset(path, &cfg.preprocess, &grid)?;
            ("table".to_string(), classes, format!("table {}", path.display()), Source::Table(ds))
        }
    };
    let arch = ArchConfig::carenet_v1(classes.len());
    let cores = source_data.cores();
    // Folds over patients.
    let mut patients: BTreeMap<String, usize> = BTreeMap::new();
    for c in &cores {
        let n = patients.len();
        patients.entry(c.patient.clone()).or_insert(n);
    }
    // Stratified by class and, in the type task, by subtype: without the subtype a fold can hold
    // every patient of one subtype and train on none of it.
    let strata: BTreeMap<&str, usize> = cores.iter().map(|c| c.stratum.as_str()).collect::<BTreeSet<_>>().into_iter().zip(0..).collect();
    let mut counts = vec![vec![0u64; strata.len()]; patients.len()];
    for c in &cores {
        counts[patients[&c.patient]][strata[c.stratum.as_str()]] += 1;
    }
    let k = t.folds;
    if k > patients.len() {
        return Err(TrainError::Data(format!("{k} folds need at least {k} patients (groups), there are {}", patients.len())));
    }
    let patient_fold = if k >= 2 { folds::stratified_group_folds(&counts, k, t.seed) } else { Vec::new() };
    let core_fold: Vec<usize> = cores.iter().map(|c| patient_fold.get(patients[&c.patient]).copied().unwrap_or(0)).collect();
    let core_truth: Vec<u32> = cores.iter().map(|c| c.class).collect();
    let per_core_metrics = matches!(source_data, Source::Archive(_));

    let mut per_fold = Vec::new();
    let mut pooled = FoldPredictions::default();
    let mut cams =
        CamSets { by_true: CamAggregator::new(grid.len()), by_predicted: CamAggregator::new(grid.len()), spectra: HashMap::new() };
    let mut fold_sizes = Vec::new();
    for f in 0..if k >= 2 { k } else { 0 } {
        let train_cores: Vec<usize> = (0..cores.len()).filter(|&c| core_fold[c] != f).collect();
        let (ds, _) = source_data.dataset(cfg, &train_cores, &grid, &format!("fold {} of {k}", f + 1))?;
        let train_rows: Vec<usize> = (0..ds.rows()).filter(|&i| core_fold[ds.core[i] as usize] != f).collect();
        let test_rows: Vec<usize> = (0..ds.rows()).filter(|&i| core_fold[ds.core[i] as usize] == f).collect();
        for (c, name) in classes.iter().enumerate() {
            if !train_rows.iter().any(|&i| ds.y[i] == c as u32) {
                return Err(TrainError::Data(format!(
                    "fold {} has no training spectrum of class {name}: more patients of that class are needed for {k} folds",
                    f + 1
                )));
            }
        }
        fold_sizes.push((train_rows.len(), test_rows.len()));
        let label = format!("fold {}/{k}", f + 1);
        let clf = fit(&ds, &train_rows, &classes, &arch, &grid, t, device, t.seed.wrapping_add(f as u64 + 1), &label, progress)?;
        let p = predict_rows(&clf, &ds, &test_rows, &classes, &mut cams)?;
        per_fold.push(FoldReport::new(&(f + 1).to_string(), &p, &classes, per_core_metrics.then_some(core_truth.as_slice())));
        pooled.extend(&p);
    }
    let cv = CvReport {
        task: task_name.clone(),
        classes: classes.clone(),
        folds: if k >= 2 { k } else { 0 },
        pooled: (k >= 2).then(|| FoldReport::new("pooled", &pooled, &classes, per_core_metrics.then_some(core_truth.as_slice()))),
        per_fold,
    };
    let mut gradcam = Vec::new();
    let mut cam_json = Vec::new();
    for (by, agg) in [("true", &cams.by_true), ("predicted", &cams.by_predicted)] {
        for s in agg.summaries() {
            gradcam.push(ClassCam {
                class: s.key.clone(),
                by: by.into(),
                count: s.count,
                top_bands: grad_cam::top_bands(&grid, &s.mean, 0.9)?
                    .into_iter()
                    .map(|mut b| {
                        b.direction = cams.direction(by, &s.key, &classes, &grid, &b);
                        b
                    })
                    .collect(),
            });
            cam_json.push(serde_json::json!({"class": s.key, "by": by, "count": s.count, "mean": s.mean, "std": s.std}));
        }
    }
    std::fs::create_dir_all(out).map_err(|source| BundleError::Io { path: out.to_path_buf(), source })?;
    let mut final_spectra = 0;
    if t.final_model {
        let all: Vec<usize> = (0..cores.len()).collect();
        let (ds, emsc) = source_data.dataset(cfg, &all, &grid, "all training data")?;
        let rows: Vec<usize> = (0..ds.rows()).collect();
        final_spectra = rows.len();
        let clf = fit(&ds, &rows, &classes, &arch, &grid, t, device, t.seed, "final model", progress)?;
        let manifest = BundleManifest {
            format: bundle::FORMAT,
            task: task_name.clone(),
            classes: classes.clone(),
            parameters: arch.parameters(),
            architecture: arch.clone(),
            wavenumbers: grid.clone(),
            preprocess: cfg.preprocess.clone(),
            emsc,
            train: t.clone(),
            seed: t.seed,
            metrics: cv.summary(),
            versions: Versions::current(),
            weights_sha256: String::new(),
            source: source.clone(),
            probe_sha256: None,
        };
        // The probe for `[run] precision = "auto"`: spectra spread evenly over the training set.
        let step = rows.len().div_ceil(bundle::PROBE_ROWS).max(1);
        let probe: Vec<f32> = rows.iter().step_by(step).flat_map(|&r| ds.x[r * ds.points..(r + 1) * ds.points].iter().copied()).collect();
        manifest.save_with_probe(out, &clf, &probe)?;
    }
    let patient_folds = patients.iter().filter_map(|(p, &g)| patient_fold.get(g).map(|f| (p.clone(), f + 1))).collect();
    let report = TrainReport { cv, gradcam, fold_sizes, patient_folds, final_spectra, seconds: start.elapsed().as_secs_f64() };
    let json = serde_json::to_vec_pretty(&report).map_err(|e| TrainError::Data(e.to_string()))?;
    bundle::write_atomic(&out.join("metrics.json"), &json)?;
    bundle::write_atomic(&out.join("gradcam.json"), &serde_json::to_vec(&cam_json).map_err(|e| TrainError::Data(e.to_string()))?)?;
    report
        .cv
        .write_parquet(&out.join("metrics.parquet"))
        .map_err(|e| BundleError::Io { path: out.join("metrics.parquet"), source: std::io::Error::other(e.to_string()) })?;
    Ok(report)
}

/// Where the spectra come from: an archive (preprocessed per fold) or a table (once).
enum Source {
    Archive(data::LabelledArchive),
    Table(Dataset),
}

impl Source {
    fn cores(&self) -> Vec<data::Core> {
        match self {
            Source::Archive(a) => a.cores.clone(),
            Source::Table(d) => d.cores.clone(),
        }
    }

    /// The dataset with EMSC fitted on the cores `fit_on` (archives), and the EMSC state.
    fn dataset(&mut self, cfg: &Config, fit_on: &[usize], grid: &[f64], what: &str) -> Result<(Dataset, Option<EmscState>), TrainError> {
        match self {
            Source::Table(d) => Ok((d.clone(), None)),
            Source::Archive(a) => {
                let state =
                    data::fit_emsc(&cfg.preprocess, a, fit_on, &format!("fitted by `ftirflow train` on the training images of {what}"))?;
                let plan = PreprocessPlan::new(&cfg.preprocess, state.as_ref())?;
                let ds = data::archive_dataset(a, &plan, grid, cfg.train.spectra_per_core, cfg.train.seed)?;
                Ok((ds, state))
            }
        }
    }
}

fn tensor_of(ds: &Dataset, rows: &[usize], device: Device) -> Tensor {
    let mut x = Vec::with_capacity(rows.len() * ds.points);
    for &i in rows {
        x.extend_from_slice(ds.row(i));
    }
    Tensor::from_slice(&x).view([rows.len() as i64, ds.points as i64]).to_device(device)
}

/// Trains one model on `rows` of `ds`.
#[allow(clippy::too_many_arguments)]
fn fit(
    ds: &Dataset,
    rows: &[usize],
    classes: &[String],
    arch: &ArchConfig,
    grid: &[f64],
    t: &TrainConfig,
    device: Device,
    seed: u64,
    label: &str,
    progress: &dyn Fn(&EpochProgress),
) -> Result<Classifier, TrainError> {
    let mut clf = Classifier::init(arch, classes.to_vec(), grid.to_vec(), device, seed as i64)?;
    let mut opt =
        tch::nn::Adam::default().build(clf.var_store(), t.learning_rate).map_err(|e| OpError::internal("train", e.to_string()))?;
    let k = classes.len();
    let by_class: Vec<Vec<usize>> = (0..k).map(|c| rows.iter().copied().filter(|&i| ds.y[i] == c as u32).collect()).collect();
    let per_class = t.spectra_per_epoch.div_ceil(k);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut pools: Vec<Vec<usize>> = vec![Vec::new(); k];
    for epoch in 0..t.epochs {
        // Balanced draw: per class, cycle through reshuffled copies of its spectra.
        let mut epoch_rows = Vec::with_capacity(per_class * k);
        for c in 0..k {
            for _ in 0..per_class {
                if pools[c].is_empty() {
                    pools[c] = by_class[c].clone();
                    pools[c].shuffle(&mut rng);
                }
                if let Some(i) = pools[c].pop() {
                    epoch_rows.push(i);
                }
            }
        }
        epoch_rows.shuffle(&mut rng);
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0i64, 0usize);
        for batch in epoch_rows.chunks(t.batch_size) {
            if batch.len() < 2 {
                continue; // batch norm needs two spectra
            }
            let x = tensor_of(ds, batch, device);
            let y: Vec<i64> = batch.iter().map(|&i| ds.y[i] as i64).collect();
            let y = Tensor::from_slice(&y).to_device(device);
            let logits = clf.net().forward_t(&x, true);
            let (loss, pred) = if k == 2 {
                let l = logits.squeeze_dim(1);
                let loss = l.binary_cross_entropy_with_logits::<Tensor>(&y.to_kind(Kind::Float), None, None, tch::Reduction::Mean);
                (loss, l.gt(0.0).to_kind(Kind::Int64))
            } else {
                (logits.cross_entropy_for_logits(&y), logits.argmax(1, false))
            };
            opt.backward_step(&loss);
            loss_sum += loss.double_value(&[]) * batch.len() as f64;
            correct += pred.eq_tensor(&y).sum(Kind::Int64).int64_value(&[]);
            seen += batch.len();
        }
        let (loss, accuracy) = (loss_sum / seen.max(1) as f64, correct as f64 / seen.max(1) as f64);
        tracing::debug!("{label} epoch {}: loss {loss:.4} acc {accuracy:.3}", epoch + 1);
        progress(&EpochProgress { model: label, epoch: epoch + 1, epochs: t.epochs, loss, accuracy });
    }
    // Precise BN: batch statistics of the final weights over up to 20 training batches.
    let mut order = rows.to_vec();
    order.shuffle(&mut rng);
    let batches: Vec<Tensor> = order.chunks(t.batch_size).filter(|b| b.len() >= 2).take(20).map(|b| tensor_of(ds, b, device)).collect();
    clf.net().precise_bn(batches);
    clf.freeze();
    Ok(clf)
}

/// Predicts `rows` of `ds` with Grad-CAM, adding the maps to `cams`.
fn predict_rows(
    clf: &Classifier,
    ds: &Dataset,
    rows: &[usize],
    classes: &[String],
    cams: &mut CamSets,
) -> Result<FoldPredictions, TrainError> {
    let mut p = FoldPredictions::default();
    for chunk in rows.chunks(1024) {
        let mut x = Vec::with_capacity(chunk.len() * ds.points);
        for &i in chunk {
            x.extend_from_slice(ds.row(i));
        }
        let (pred, maps) = clf.predict_values_with_gradcam(&x, chunk.len())?;
        for (j, &i) in chunk.iter().enumerate() {
            cams.by_true.push(&classes[ds.y[i] as usize], maps.map(j))?;
            cams.by_predicted.push(&classes[pred.predicted[j] as usize], maps.map(j))?;
            cams.add_spectrum(&classes[ds.y[i] as usize], &classes[pred.predicted[j] as usize], ds.row(i));
            p.truth.push(ds.y[i]);
            p.core.push(ds.core[i]);
        }
        p.predicted.extend_from_slice(&pred.predicted);
        p.probs.extend_from_slice(&pred.probs);
    }
    Ok(p)
}
