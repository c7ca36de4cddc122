//! Classification of one image's preprocessed spectra (DESIGN.md §5, §6, §8): the type model on
//! its tissue spectra that are not outliers, the subtype model on the same spectra when the core
//! is called cancer, Grad-CAM maps from the same pass, and the image's summary (core row and exact
//! Grad-CAM sums per class).
//!
//! Spectra go to the models in fixed-size batches built from the image's classified rows in row
//! order, so the predictions do not depend on how the reader or the preprocessing split the
//! image. The kernel holds the image until `finish` (the core's majority decides whether the
//! subtype model runs), then emits the prediction batches without the spectra, and leaves the
//! image's summary in a [`SummaryBox`] for the part writer.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, AsArray, BooleanArray, Float32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::summary::CoreRow;
use crate::bundle::Bundle;
use crate::operators::grad_cam::CamStats;
use crate::operators::outliers::OUTLIER;
use crate::operators::schema::{sample_column, SPECTRUM};
use crate::operators::segment::TISSUE;
use crate::operators::{Kernel, OpError, SpectraLayout};

const OP: &str = "classify";

/// Column with the type prediction.
pub const PRED_CLASS: &str = "pred_class";
/// Column with the subtype prediction.
pub const SUBTYPE: &str = "subtype";
/// The type class whose cores the subtype model classifies.
pub const CANCER: &str = "CA";

/// Which model of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// The type (CA vs AT) model.
    Type,
    /// The subtype model.
    Subtype,
}

/// One scoring request to a shared inference service.
pub struct Request {
    which: Which,
    values: Vec<f32>,
    rows: usize,
    reply: crossbeam_channel::Sender<Result<Scored, OpError>>,
}

/// Where the networks run: in the worker itself (CPU: every worker has its own copy), or in one
/// inference service thread per process that owns the networks on the device (CUDA: the workers
/// send it batches through a channel and go on preprocessing while it computes).
pub enum Engine {
    /// The worker's own networks.
    Local {
        /// Type model.
        types: Box<Bundle>,
        /// Subtype model.
        subtypes: Option<Box<Bundle>>,
    },
    /// A channel to the process's inference service.
    Shared(crossbeam_channel::Sender<Request>),
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::Local { .. } => "Engine::Local",
            Engine::Shared(_) => "Engine::Shared",
        })
    }
}

/// The models of a run as a worker sees them: class names and grid of the type model and, when
/// given, the subtype model, and where they run.
#[derive(Debug)]
pub struct Models {
    /// Type model classes.
    pub types: Vec<String>,
    /// Subtype model classes.
    pub subtypes: Option<Vec<String>>,
    /// The model grid.
    pub grid: Vec<f64>,
    /// Where the networks run.
    pub engine: Engine,
    /// Spectra per inference batch.
    pub batch: usize,
    /// Whether to compute Grad-CAM maps.
    pub gradcam: bool,
}

// SAFETY: libtorch tensors are `Send` but not `Sync` in tch. A `Models` is created by one worker
// thread and used only by the kernels of that worker (the `Arc` just shares it between the
// kernels of successive images on that thread), so no two threads ever touch its networks at once.
unsafe impl Sync for Models {}

impl Models {
    /// Models that run in the calling worker.
    pub fn local(types: Bundle, subtypes: Option<Bundle>, batch: usize, gradcam: bool) -> Self {
        Self {
            types: types.classifier.classes().to_vec(),
            subtypes: subtypes.as_ref().map(|b| b.classifier.classes().to_vec()),
            grid: types.classifier.grid().to_vec(),
            engine: Engine::Local { types: Box::new(types), subtypes: subtypes.map(Box::new) },
            batch,
            gradcam,
        }
    }

    /// Scores `rows` spectra with one model (see [`score`]).
    fn score(&self, which: Which, values: &[f32], rows: usize) -> Result<Scored, OpError> {
        match &self.engine {
            Engine::Local { types, subtypes } => {
                let bundle: &Bundle = match which {
                    Which::Type => types,
                    Which::Subtype => subtypes.as_deref().ok_or_else(|| OpError::internal(OP, "no subtype model"))?,
                };
                score(bundle, values, rows, self.batch, self.gradcam)
            }
            Engine::Shared(tx) => {
                let (reply, rx) = crossbeam_channel::bounded(1);
                tx.send(Request { which, values: values.to_vec(), rows, reply })
                    .map_err(|_| OpError::internal(OP, "the inference service stopped"))?;
                rx.recv().map_err(|_| OpError::internal(OP, "the inference service stopped"))?
            }
        }
    }
}

/// Starts the inference service of a process: a thread that owns the networks (loaded by `load`
/// on the device) and scores the workers' requests in arrival order. It ends when every sender
/// is dropped.
pub fn spawn_service(
    load: impl FnOnce() -> anyhow::Result<(Bundle, Option<Bundle>)> + Send + 'static,
    batch: usize,
    gradcam: bool,
    threads: usize,
) -> anyhow::Result<(crossbeam_channel::Sender<Request>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = crossbeam_channel::bounded::<Request>(64);
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<(), String>>(1);
    let handle = std::thread::Builder::new().name("inference".into()).spawn(move || {
        tch::set_num_threads(threads as i32);
        let (types, subtypes) = match load() {
            Ok(m) => {
                let _ = ready_tx.send(Ok(()));
                m
            }
            Err(e) => {
                let _ = ready_tx.send(Err(format!("{e:#}")));
                return;
            }
        };
        for r in rx {
            let bundle = match r.which {
                Which::Type => Some(&types),
                Which::Subtype => subtypes.as_ref(),
            };
            let result = match bundle {
                Some(b) => score(b, &r.values, r.rows, batch, gradcam),
                None => Err(OpError::internal(OP, "no subtype model")),
            };
            let _ = r.reply.send(result);
        }
    })?;
    ready_rx.recv().map_err(|_| anyhow::anyhow!("the inference service did not start"))?.map_err(anyhow::Error::msg)?;
    Ok((tx, handle))
}

/// Truth labels of a sample (from the archive's `labels.csv`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Truth {
    /// CA or AT.
    pub kind: Option<String>,
    /// LA, LB, HER2 or TNBC.
    pub subtype: Option<String>,
}

/// The scope of the per-class mean spectra in the Grad-CAM sums (`gradcam.parquet`).
pub const SPECTRUM_SCOPE: &str = "spectrum";

/// Fixed-point unit of the spectrum sums: 2⁻⁴⁰, as the Grad-CAM maps' (`CamStats`).
const SPECTRUM_SCALE: f64 = (1u64 << 40) as f64;

/// Exact Grad-CAM sums of one image, by (scope, class).
#[derive(Debug, Clone, Default)]
pub struct ImageCams {
    /// (scope, class) → sums; scope is `predicted`, `true` or `core`, or `spectrum` (the sums of
    /// the classified spectra themselves per predicted class, not of maps).
    pub stats: HashMap<(&'static str, String), CamStats>,
}

/// What an image contributed, besides its prediction rows: its core row (counts, exact
/// probability sums, majorities and truth; `path` is filled in by the part writer) and its exact
/// Grad-CAM sums.
#[derive(Debug, Clone, Default)]
pub struct ImageSummary {
    /// The core row.
    pub row: CoreRow,
    /// Grad-CAM sums.
    pub cams: ImageCams,
}

/// Where classify kernels leave image summaries for the part writer, by sample id.
pub type SummaryBox = Arc<Mutex<HashMap<String, ImageSummary>>>;

/// Probability as an exact fixed-point integer (2⁻³² units).
pub fn prob_fixed(p: f32) -> i64 {
    (p as f64 * 4_294_967_296.0).round() as i64
}

/// The schema of prediction rows for input `schema` (spectrum dropped, predictions added).
pub fn prediction_schema(input: &Schema, types: &[String], subtypes: Option<&[String]>) -> SchemaRef {
    let mut fields: Vec<Field> =
        input.fields().iter().filter(|f| f.name() != SPECTRUM).map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(PRED_CLASS, DataType::Utf8, true));
    for c in types {
        fields.push(Field::new(format!("p_{c}"), DataType::Float32, true));
    }
    if let Some(subs) = subtypes {
        fields.push(Field::new(SUBTYPE, DataType::Utf8, true));
        for c in subs {
            fields.push(Field::new(format!("p_{c}"), DataType::Float32, true));
        }
    }
    let mut md = input.metadata().clone();
    md.remove(crate::operators::schema::WAVENUMBERS_KEY);
    Arc::new(Schema::new_with_metadata(fields, md))
}

/// The classify kernel of one image.
pub struct ClassifyKernel {
    models: Arc<Models>,
    labels: Arc<HashMap<String, Truth>>,
    summaries: SummaryBox,
    held: Vec<RecordBatch>,
}

impl ClassifyKernel {
    /// A kernel using `models`; summaries go to `summaries`.
    pub fn new(models: Arc<Models>, labels: Arc<HashMap<String, Truth>>, summaries: SummaryBox) -> Self {
        Self { models, labels, summaries, held: Vec::new() }
    }
}

/// Probabilities and maps of `rows` spectra from one model, in fixed batches.
pub struct Scored {
    probs: Vec<f32>,
    predicted: Vec<u32>,
    maps: Vec<f32>,
}

/// Inference batches are padded to a multiple of this many rows.
///
/// libtorch (oneDNN) builds and caches a kernel per input shape; with one shape per image's
/// leftover rows the cache — and the process's memory — grew with the archive. Padding the last
/// batch of an image to a multiple of 64 rows bounds the shapes to `batch / 64` (the padded rows
/// are zeros and their outputs are dropped; every row is computed independently in evaluation
/// mode).
pub const SHAPE_QUANTUM: usize = 64;

fn score(bundle: &Bundle, values: &[f32], rows: usize, batch: usize, gradcam: bool) -> Result<Scored, OpError> {
    let n = bundle.classifier.grid().len();
    let k = bundle.classifier.classes().len();
    let mut s = Scored { probs: Vec::new(), predicted: Vec::new(), maps: Vec::new() };
    let mut padded = Vec::new();
    let mut start = 0;
    while start < rows {
        let end = (start + batch).min(rows);
        let len = end - start;
        let shape = len.div_ceil(SHAPE_QUANTUM) * SHAPE_QUANTUM;
        let chunk: &[f32] = if shape == len {
            &values[start * n..end * n]
        } else {
            padded.clear();
            padded.extend_from_slice(&values[start * n..end * n]);
            padded.resize(shape * n, 0.0);
            &padded
        };
        if gradcam {
            let (p, m) = bundle.classifier.predict_values_with_gradcam(chunk, shape)?;
            s.probs.extend_from_slice(&p.probs[..len * k]);
            s.predicted.extend_from_slice(&p.predicted[..len]);
            s.maps.extend_from_slice(&m.maps[..len * m.points]);
        } else {
            let p = bundle.classifier.predict_values(chunk, shape)?;
            s.probs.extend_from_slice(&p.probs[..len * k]);
            s.predicted.extend_from_slice(&p.predicted[..len]);
        }
        start = end;
    }
    Ok(s)
}

fn majority(counts: &[u64], classes: &[String]) -> Option<String> {
    let best = counts.iter().copied().max().filter(|&m| m > 0)?;
    counts.iter().position(|&c| c == best).map(|i| classes[i].clone())
}

fn bool_col(b: &RecordBatch, name: &str) -> Option<BooleanArray> {
    b.column_by_name(name).and_then(|c| c.as_boolean_opt().cloned())
}

impl ClassifyKernel {
    fn finish_image(&mut self, out: &mut Vec<RecordBatch>) -> Result<(), OpError> {
        let held = std::mem::take(&mut self.held);
        let Some(first) = held.first() else { return Ok(()) };
        let m = &self.models;
        let types = m.types.clone();
        let subtypes = m.subtypes.clone();
        let sample = sample_column(first).map_err(|e| OpError::schema(OP, e))?.value(0).to_string();
        // Labels name samples by id or by file stem (`images/P01_CA` is `P01_CA` in labels.csv).
        let stem = sample.rsplit('/').next().unwrap_or(&sample);
        let truth = self.labels.get(&sample).or_else(|| self.labels.get(stem)).cloned().unwrap_or_default();

        // The rows to classify, in row order.
        let n = m.grid.len();
        let mut values = Vec::new();
        let mut selected: Vec<Vec<bool>> = Vec::with_capacity(held.len());
        let mut summary = ImageSummary::default();
        let row = &mut summary.row;
        row.sample = sample.clone();
        row.truth_type = truth.kind.clone();
        row.truth_subtype = truth.subtype.clone();
        let mut checked: Option<arrow::datatypes::SchemaRef> = None;
        for b in &held {
            // The grid check parses the schema's axis: once per schema (an image's batches share one).
            if !checked.as_ref().is_some_and(|c| Arc::ptr_eq(c, &b.schema())) {
                let layout = SpectraLayout::of(&b.schema()).map_err(|e| OpError::schema(OP, e))?;
                let same = layout.wavenumbers.len() == m.grid.len()
                    && layout.wavenumbers.iter().zip(&m.grid).all(|(a, b)| (a - b).abs() <= 1e-9 * b.abs().max(1.0));
                if !same {
                    return Err(OpError::data(
                        OP,
                        format!("spectra have {} points but the model grid has {}", layout.wavenumbers.len(), m.grid.len()),
                    ));
                }
                checked = Some(b.schema());
            }
            let v = SpectraLayout::values(b).map_err(|e| OpError::schema(OP, e))?;
            let (tissue, outlier) = (bool_col(b, TISSUE), bool_col(b, OUTLIER));
            let paraffin = bool_col(b, crate::operators::segment::PARAFFIN);
            let mut sel = Vec::with_capacity(b.num_rows());
            for i in 0..b.num_rows() {
                let t = tissue.as_ref().map(|c| c.value(i)).unwrap_or(true);
                let o = outlier.as_ref().map(|c| c.value(i)).unwrap_or(false);
                row.tissue += t as u64;
                row.outliers += o as u64;
                row.paraffin += paraffin.as_ref().map(|c| c.value(i) as u64).unwrap_or(0);
                let row = &v[i * n..(i + 1) * n];
                let ok = t && !o && crate::operators::finite::all_finite(row);
                if ok {
                    values.extend_from_slice(row);
                }
                sel.push(ok);
            }
            row.spectra += b.num_rows() as u64;
            selected.push(sel);
        }
        let rows = values.len() / n;
        let points = n;
        let mut cams = ImageCams::default();
        let mut add_maps = |scope: &'static str, keys: &[&str], maps: &[f32]| -> Result<(), OpError> {
            for (i, key) in keys.iter().enumerate() {
                let st = cams.stats.entry((scope, key.to_string())).or_insert_with(|| CamStats::new(points));
                st.push(&maps[i * points..(i + 1) * points])?;
            }
            Ok(())
        };
        // The mean preprocessed spectrum per predicted class (scope `spectrum`), as exact sums in
        // the maps' fixed point: what the report draws each class's Grad-CAM profile over.
        let mut spectra: HashMap<String, (u64, Vec<i128>, Vec<i128>)> = HashMap::new();
        let mut add_spectra = |keys: &[&str]| {
            for (i, key) in keys.iter().enumerate() {
                let e = spectra.entry(key.to_string()).or_insert_with(|| (0, vec![0; points], vec![0; points]));
                e.0 += 1;
                for ((s, q), &v) in e.1.iter_mut().zip(e.2.iter_mut()).zip(&values[i * points..(i + 1) * points]) {
                    let f = (v as f64 * SPECTRUM_SCALE).round() as i128;
                    *s += f;
                    *q += f * f;
                }
            }
        };

        // One model's predictions of this core: counts, probability sums and majority, and the
        // class mean spectra and Grad-CAM sums keyed by predicted (and true) class.
        let mut record = |s: &Scored, classes: &[String], truth: Option<&String>| -> Result<(Vec<u64>, Vec<i64>, Option<String>), OpError> {
            let mut counts = vec![0u64; classes.len()];
            let mut prob_sums = vec![0i64; classes.len()];
            for (i, &p) in s.predicted.iter().enumerate() {
                counts[p as usize] += 1;
                for (c, acc) in prob_sums.iter_mut().enumerate() {
                    *acc += prob_fixed(s.probs[i * classes.len() + c]);
                }
            }
            if rows > 0 {
                let pred: Vec<&str> = s.predicted.iter().map(|&p| classes[p as usize].as_str()).collect();
                add_spectra(&pred);
                if m.gradcam {
                    add_maps("predicted", &pred, &s.maps)?;
                    add_maps("core", &pred, &s.maps)?;
                    if let Some(k) = truth {
                        add_maps("true", &vec![k.as_str(); rows], &s.maps)?;
                    }
                }
            }
            let majority = majority(&counts, classes);
            Ok((counts, prob_sums, majority))
        };
        let t = m.score(Which::Type, &values, rows)?;
        (row.type_counts, row.type_prob_sums, row.majority) = record(&t, &types, truth.kind.as_ref())?;
        let sub = match &subtypes {
            Some(classes) if row.majority.as_deref() == Some(CANCER) => {
                let s = m.score(Which::Subtype, &values, rows)?;
                (row.subtype_counts, row.subtype_prob_sums, row.subtype_majority) = record(&s, classes, truth.subtype.as_ref())?;
                Some(s)
            }
            _ => None,
        };
        for (class, (n, sum, sq)) in spectra {
            cams.stats.insert((SPECTRUM_SCOPE, class), CamStats::from_sums(n, sum, sq)?);
        }
        summary.cams = cams;

        // Prediction rows.
        let mut next = 0usize;
        for (b, sel) in held.iter().zip(&selected) {
            let schema = prediction_schema(&b.schema(), &types, subtypes.as_deref());
            let mut cols: Vec<ArrayRef> = b
                .schema()
                .fields()
                .iter()
                .enumerate()
                .filter(|(_, f)| f.name() != SPECTRUM)
                .map(|(i, _)| b.column(i).clone())
                .collect();
            let idx: Vec<Option<usize>> = sel
                .iter()
                .map(|&s| {
                    s.then(|| {
                        next += 1;
                        next - 1
                    })
                })
                .collect();
            cols.push(Arc::new(idx.iter().map(|i| i.map(|r| types[t.predicted[r] as usize].as_str())).collect::<StringArray>()));
            for c in 0..types.len() {
                cols.push(Arc::new(idx.iter().map(|i| i.map(|r| t.probs[r * types.len() + c])).collect::<Float32Array>()));
            }
            if let Some(classes) = &subtypes {
                let k = classes.len();
                let s = sub.as_ref();
                cols.push(Arc::new(
                    idx.iter().map(|i| i.and_then(|r| s.map(|s| classes[s.predicted[r] as usize].as_str()))).collect::<StringArray>(),
                ));
                for c in 0..k {
                    cols.push(Arc::new(idx.iter().map(|i| i.and_then(|r| s.map(|s| s.probs[r * k + c]))).collect::<Float32Array>()));
                }
            }
            let batch = RecordBatch::try_new(schema, cols).map_err(|e| OpError::internal(OP, e.to_string()))?;
            debug_assert_eq!(batch.num_rows(), b.num_rows());
            out.push(batch);
        }
        self.summaries.lock().map_err(|_| OpError::internal(OP, "summary table poisoned"))?.insert(sample, summary);
        Ok(())
    }
}

impl Kernel for ClassifyKernel {
    fn name(&self) -> &'static str {
        OP
    }

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef, OpError> {
        Ok(prediction_schema(input, &self.models.types, self.models.subtypes.as_deref()))
    }

    fn push_batch(&mut self, batch: &RecordBatch, _out: &mut Vec<RecordBatch>) -> Result<(), OpError> {
        if batch.num_rows() > 0 {
            self.held.push(batch.clone());
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<RecordBatch>) -> Result<(), OpError> {
        let r = self.finish_image(out);
        self.held.clear();
        r
    }
}
