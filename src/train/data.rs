//! Training data: the labels file, the task's classes, and the labelled spectra of an archive (run
//! through the preprocessing plan, tissue non-outlier spectra only, a seeded selection of at most
//! `spectra_per_core` pixels per core) or of a labelled spectra table (resampled onto the model
//! grid and normalized).
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};

use super::TrainError;
use crate::config::{PreprocessConfig, Step};
use crate::io::{ImageEntry, ReadOptions};
use crate::operators::normalize::Normalizer;
use crate::operators::outliers::OUTLIER;
use crate::operators::schema::{sample_column, SpectraLayout};
use crate::operators::segment::TISSUE;
use crate::plan::{EmscFitter, EmscState, PreprocessPlan};

/// What a model learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Cancer (`CA`) vs adjacent tissue (`AT`), one sigmoid output.
    Type,
    /// Molecular subtype of the cancer cores: `LA`, `LB`, `HER2`, `TNBC`.
    Subtype,
}

impl Task {
    /// The name used on the command line and in the bundle.
    pub fn name(self) -> &'static str {
        match self {
            Task::Type => "type",
            Task::Subtype => "subtype",
        }
    }

    /// The class names in output order.
    pub fn classes(self) -> Vec<String> {
        match self {
            Task::Type => vec!["AT".into(), "CA".into()],
            Task::Subtype => ["LA", "LB", "HER2", "TNBC"].map(String::from).to_vec(),
        }
    }
}

/// One row of `labels.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    /// Patient id.
    pub patient: String,
    /// `CA` or `AT`.
    pub kind: String,
    /// Subtype (empty for AT).
    pub subtype: String,
}

/// Reads `labels.csv` (`sample,patient,type,subtype`; column order free, extra columns ignored).
pub fn read_labels(path: &Path) -> Result<BTreeMap<String, Label>, TrainError> {
    let err = |reason: String| TrainError::Labels { path: path.to_path_buf(), reason };
    let mut r = csv::ReaderBuilder::new().trim(csv::Trim::All).from_path(path).map_err(|e| err(e.to_string()))?;
    let headers = r.headers().map_err(|e| err(e.to_string()))?.clone();
    let col = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let (Some(s), Some(p), Some(t)) = (col("sample"), col("patient"), col("type")) else {
        return Err(err("needs the columns sample, patient, type (and subtype for the subtype task)".into()));
    };
    let st = col("subtype");
    let mut out = BTreeMap::new();
    for (i, rec) in r.records().enumerate() {
        let rec = rec.map_err(|e| err(e.to_string()))?;
        let get = |c: usize| rec.get(c).unwrap_or("").to_string();
        let sample = get(s);
        let kind = get(t).to_ascii_uppercase();
        if sample.is_empty() {
            return Err(err(format!("line {}: empty sample", i + 2)));
        }
        if kind != "CA" && kind != "AT" {
            return Err(err(format!("line {}: type must be CA or AT, got `{}`", i + 2, get(t))));
        }
        let label = Label { patient: get(p), kind, subtype: st.map(get).unwrap_or_default().to_ascii_uppercase() };
        if out.insert(sample.clone(), label).is_some() {
            return Err(err(format!("line {}: sample `{sample}` is listed twice", i + 2)));
        }
    }
    if out.is_empty() {
        return Err(err("no labelled sample".into()));
    }
    Ok(out)
}

/// One labelled group of spectra: an archive core, or (tables) one row.
#[derive(Debug, Clone, PartialEq)]
pub struct Core {
    /// The sample id.
    pub sample: String,
    /// The patient (the fold split groups by it).
    pub patient: String,
    /// Class index.
    pub class: u32,
    /// What the folds stratify by: the class name, refined by the subtype for cancer cores in the
    /// `type` task (`AT`, `CA/LA`, `CA/LB`, …), so that every fold trains on every subtype.
    pub stratum: String,
}

/// Labelled spectra on the model grid.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    /// Points per spectrum.
    pub points: usize,
    /// `rows × points` spectra.
    pub x: Vec<f32>,
    /// Class index per row.
    pub y: Vec<u32>,
    /// Core index per row (into `cores`).
    pub core: Vec<u32>,
    /// The cores.
    pub cores: Vec<Core>,
}

impl Dataset {
    /// Number of spectra.
    pub fn rows(&self) -> usize {
        self.y.len()
    }

    /// Spectrum `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.points..(i + 1) * self.points]
    }
}

/// An archive's labelled images for a task.
#[derive(Debug, Clone)]
pub struct LabelledArchive {
    /// The images with a label that counts for the task, in sample order.
    pub entries: Vec<ImageEntry>,
    /// Their cores (same order).
    pub cores: Vec<Core>,
    /// Images found without a label (ignored).
    pub unlabelled: Vec<String>,
}

/// Finds the images of `archive` and matches them with `labels`: an image matches a label whose
/// sample is its id or the last component(s) of its id (`images/P01_CA` matches `P01_CA`). For the
/// `subtype` task only cancer cores with a subtype count.
pub fn labelled_archive(archive: &Path, labels: &BTreeMap<String, Label>, task: Task) -> Result<LabelledArchive, TrainError> {
    let entries = crate::io::discover(archive).map_err(|e| TrainError::Data(e.to_string()))?;
    let classes = task.classes();
    let mut out = LabelledArchive { entries: Vec::new(), cores: Vec::new(), unlabelled: Vec::new() };
    let mut matched = BTreeSet::new();
    for e in entries {
        let label = labels.get(&e.sample).map(|l| (e.sample.clone(), l)).or_else(|| {
            e.sample
                .char_indices()
                .filter(|(_, c)| *c == '/')
                .find_map(|(i, _)| labels.get(&e.sample[i + 1..]).map(|l| (e.sample[i + 1..].to_string(), l)))
        });
        let Some((key, label)) = label else {
            out.unlabelled.push(e.sample.clone());
            continue;
        };
        if !matched.insert(key.clone()) {
            return Err(TrainError::Data(format!("label `{key}` matches two images (the second is {})", e.path.display())));
        }
        let name = match task {
            Task::Type => label.kind.clone(),
            Task::Subtype if label.kind == "CA" && !label.subtype.is_empty() => label.subtype.clone(),
            Task::Subtype => continue,
        };
        let Some(class) = classes.iter().position(|c| *c == name) else {
            return Err(TrainError::Data(format!("sample `{key}`: unknown {} `{name}` (expected one of {classes:?})", task.name())));
        };
        let stratum = match task {
            Task::Type if label.kind == "CA" && !label.subtype.is_empty() => format!("CA/{}", label.subtype),
            _ => name,
        };
        out.cores.push(Core { sample: e.sample.clone(), patient: label.patient.clone(), class: class as u32, stratum });
        out.entries.push(e);
    }
    for (c, name) in classes.iter().enumerate() {
        if !out.cores.iter().any(|k| k.class == c as u32) {
            return Err(TrainError::Data(format!("no labelled image of class {name} in {}", archive.display())));
        }
    }
    Ok(out)
}

fn read_image(entry: &ImageEntry, batch_rows: usize) -> Result<Vec<RecordBatch>, TrainError> {
    let opts = ReadOptions { batch_rows, sample: entry.sample.clone(), window: None, bands: None };
    crate::io::open_as(&entry.path, entry.format, &opts)
        .and_then(|r| r.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TrainError::Image { path: entry.path.clone(), reason: e.to_string() })
}

/// Fits the EMSC state on the images `which` of `archive` (the training images of a fold).
pub fn fit_emsc(cfg: &PreprocessConfig, archive: &LabelledArchive, which: &[usize], source: &str) -> Result<Option<EmscState>, TrainError> {
    if !cfg.runs(Step::Emsc) {
        return Ok(None);
    }
    let mut fitter = EmscFitter::new(cfg, which.len()).map_err(|e| TrainError::Data(e.to_string()))?;
    for &i in which {
        let e = &archive.entries[i];
        fitter
            .add_image(read_image(e, cfg.batch_rows)?)
            .map_err(|err| TrainError::Image { path: e.path.clone(), reason: format!("EMSC fit: {err}") })?;
    }
    fitter.finish(source).map(Some).map_err(|e| TrainError::Data(format!("cannot fit the EMSC reference: {e}")))
}

/// A 64-bit mix (SplitMix64's finalizer) for the seeded pixel selection.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn text_key(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// Preprocesses every image of `archive` with `plan` and keeps its tissue, non-outlier spectra —
/// at most `per_core` of them per core, chosen by a seeded key of the pixel position, so that the
/// same pixels are kept whatever the EMSC state of the fold. The result is on the model `grid`.
pub fn archive_dataset(
    archive: &LabelledArchive,
    plan: &PreprocessPlan,
    grid: &[f64],
    per_core: usize,
    seed: u64,
) -> Result<Dataset, TrainError> {
    let mut ds = Dataset { points: grid.len(), cores: archive.cores.clone(), ..Default::default() };
    for (ci, entry) in archive.entries.iter().enumerate() {
        let batches = read_image(entry, plan.config().batch_rows)?;
        let done = plan.run_image(batches).map_err(|e| TrainError::Image { path: entry.path.clone(), reason: e.to_string() })?;
        let mut kept: Vec<(u64, Vec<f32>)> = Vec::new();
        for b in &done {
            let layout =
                SpectraLayout::of(&b.schema()).map_err(|e| TrainError::Image { path: entry.path.clone(), reason: e.to_string() })?;
            if layout.wavenumbers.len() != grid.len() || layout.wavenumbers.iter().zip(grid).any(|(a, b)| (a - b).abs() > 1e-6) {
                return Err(TrainError::Image {
                    path: entry.path.clone(),
                    reason: "the preprocessed spectra are not on the model grid (the [preprocess] steps must include resample)".into(),
                });
            }
            let values = SpectraLayout::values(b).map_err(|e| TrainError::Image { path: entry.path.clone(), reason: e.to_string() })?;
            let xs = b.column(layout.x).as_primitive::<arrow::datatypes::UInt32Type>();
            let ys = b.column(layout.y).as_primitive::<arrow::datatypes::UInt32Type>();
            let flag = |name: &str| b.column_by_name(name).and_then(|c| c.as_boolean_opt().cloned());
            let (tissue, outlier) = (flag(TISSUE), flag(OUTLIER));
            let base = mix(seed ^ text_key(&entry.sample));
            for (i, s) in values.chunks_exact(grid.len()).enumerate() {
                let is_tissue = tissue.as_ref().is_none_or(|m| m.value(i));
                let is_outlier = outlier.as_ref().is_some_and(|m| m.value(i));
                if !is_tissue || is_outlier || !s.iter().all(|v| v.is_finite()) {
                    continue;
                }
                let key = mix(base ^ ((xs.value(i) as u64) << 32 | ys.value(i) as u64));
                kept.push((key, s.to_vec()));
            }
        }
        kept.sort_by_key(|k| k.0);
        kept.truncate(per_core);
        for (_, s) in kept {
            ds.x.extend_from_slice(&s);
            ds.y.push(archive.cores[ci].class);
            ds.core.push(ci as u32);
        }
    }
    Ok(ds)
}

/// A labelled spectra table (Parquet or Orange CSV) with a `class` column (and optionally
/// `patient`), resampled onto `grid` and normalized as `[preprocess.normalize]` says. Each row is
/// its own group unless a `patient` column is present. Returns the dataset and the class names
/// (sorted).
pub fn table_dataset(path: &Path, cfg: &PreprocessConfig, grid: &[f64]) -> Result<(Dataset, Vec<String>), TrainError> {
    let err = |reason: String| TrainError::Image { path: path.to_path_buf(), reason };
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let batches = crate::io::read_all(path, &ReadOptions::new(stem)).map_err(|e| err(e.to_string()))?;
    let mut rows: Vec<(String, String, Vec<f32>)> = Vec::new();
    let mut axis: Option<Vec<f64>> = None;
    for b in &batches {
        let layout = SpectraLayout::of(&b.schema()).map_err(|e| err(e.to_string()))?;
        axis.get_or_insert_with(|| layout.wavenumbers.clone());
        let class = b
            .column_by_name(crate::io::orange::CLASS)
            .ok_or_else(|| err("the table has no `class` column (train on a table needs one)".into()))?;
        let class = arrow::compute::cast(class, &arrow::datatypes::DataType::Utf8).map_err(|e| err(e.to_string()))?;
        let class = class.as_string::<i32>();
        let patient = match b.column_by_name("patient") {
            Some(p) => Some(arrow::compute::cast(p, &arrow::datatypes::DataType::Utf8).map_err(|e| err(e.to_string()))?),
            None => None,
        };
        let values = SpectraLayout::values(b).map_err(|e| err(e.to_string()))?;
        let samples = sample_column(b).map_err(|e| err(e.to_string()))?;
        for (i, s) in values.chunks_exact(layout.n_points()).enumerate() {
            if class.is_null(i) || class.value(i).is_empty() {
                return Err(err(format!("row {} has no class", rows.len() + 1)));
            }
            let group = match &patient {
                Some(p) if !p.is_null(i) => p.as_string::<i32>().value(i).to_string(),
                _ => format!("{}#{}", samples.value(i), rows.len()),
            };
            rows.push((class.value(i).to_string(), group, s.to_vec()));
        }
    }
    let axis = axis.ok_or_else(|| err("the table is empty".into()))?;
    let classes: Vec<String> = rows.iter().map(|r| r.0.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    if classes.len() < 2 {
        return Err(err(format!("a classifier needs at least 2 classes, the table has {classes:?}")));
    }
    let interp = EdgeResampler::new(&axis, grid).map_err(err)?;
    let normalizer =
        if cfg.runs(Step::Normalize) { Some(Normalizer::with_params(&cfg.normalize, grid).map_err(|e| err(e.to_string()))?) } else { None };
    let mut ds = Dataset { points: grid.len(), ..Default::default() };
    for (class, group, s) in rows {
        if !s.iter().all(|v| v.is_finite()) {
            continue;
        }
        let mut out = vec![0.0f32; grid.len()];
        interp.apply(&s, &mut out);
        if let Some(n) = &normalizer {
            n.apply(&mut out);
        }
        let c = classes.iter().position(|k| *k == class).unwrap_or(0) as u32;
        ds.x.extend_from_slice(&out);
        ds.y.push(c);
        ds.core.push(ds.cores.len() as u32);
        ds.cores.push(Core { sample: group.clone(), patient: group, class: c, stratum: class });
    }
    Ok((ds, classes))
}

/// Linear interpolation onto a grid whose ends may lie up to one input step outside the input
/// axis (taking the edge value there): tables such as Orange's start at 902.6 cm⁻¹ for a 900 cm⁻¹
/// grid. Farther out is an error.
struct EdgeResampler {
    taps: Vec<(usize, usize, f32)>,
}

impl EdgeResampler {
    fn new(input: &[f64], grid: &[f64]) -> Result<Self, String> {
        crate::operators::schema::check_axis(input).map_err(|e| e.to_string())?;
        let n = input.len();
        let (lo, hi) = crate::operators::axis::min_max(input).ok_or("empty axis")?;
        let step = if n > 1 { (hi - lo) / (n - 1) as f64 } else { 0.0 };
        let ascending = n > 1 && input[1] > input[0];
        let mut taps = Vec::with_capacity(grid.len());
        for &g in grid {
            if g < lo - step - 1e-9 || g > hi + step + 1e-9 {
                return Err(format!("the table's axis {lo}–{hi} cm⁻¹ does not cover the model grid point {g} cm⁻¹ (within one step)"));
            }
            // Index positions in ascending order of wavenumber.
            let pos = |i: usize| if ascending { input[i] } else { input[n - 1 - i] };
            let idx = |i: usize| if ascending { i } else { n - 1 - i };
            if g <= lo || n == 1 {
                taps.push((idx(0), idx(0), 0.0));
            } else if g >= hi {
                taps.push((idx(n - 1), idx(n - 1), 0.0));
            } else {
                let mut j = 0;
                while j + 1 < n && pos(j + 1) < g {
                    j += 1;
                }
                let w = ((g - pos(j)) / (pos(j + 1) - pos(j))) as f32;
                taps.push((idx(j), idx(j + 1), w));
            }
        }
        Ok(Self { taps })
    }

    fn apply(&self, s: &[f32], out: &mut [f32]) {
        for (o, &(a, b, w)) in out.iter_mut().zip(&self.taps) {
            *o = s[a] * (1.0 - w) + s[b] * w;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_resampler_extends_one_step_and_interpolates() {
        let input = [1004.0, 1002.0, 1000.0];
        let r = EdgeResampler::new(&input, &[999.0, 1001.0, 1004.5]).unwrap();
        let mut out = [0.0f32; 3];
        r.apply(&[3.0, 2.0, 1.0], &mut out);
        assert_eq!(out, [1.0, 1.5, 3.0]);
        assert!(EdgeResampler::new(&input, &[990.0]).is_err());
    }
}
