//! Classification of one image's preprocessed spectra (docs/model.md, docs/outputs.md): the type
//! model on its tissue spectra that are not outliers, the subtype model on the same spectra when
//! the core is called cancer, Grad-CAM maps from the same pass, and the image's summary (core row
//! and exact Grad-CAM sums per class).
//!
//! Spectra go to the models in fixed-size batches built from the image's classified rows in row
//! order, so the predictions do not depend on how the reader or the preprocessing split the
//! image. The kernel holds the image until [`ClassifyKernel::finish`] (the core's majority decides
//! whether the subtype model runs), then returns the prediction batches without the spectra and
//! the image's [`ImageSummary`], which travel on down the stream to the part writer. With a
//! shared inference service, `finish` sends the spectra and returns at once
//! ([`Outcome::Waiting`]): the worker reads and preprocesses its next image while they are scored,
//! and [`ClassifyKernel::poll`] completes the image once the service woke it.
mod models;

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, BooleanArray, Float32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

pub use models::{spawn_service, Engine, Models, Scored, Service, ServiceUsage, Wake, Which, SHAPE_QUANTUM};

use models::Scoring;

use crate::operators::grad_cam::CamStats;
use crate::operators::outliers::OUTLIER;
use crate::operators::schema::{sample_column, SPECTRUM};
use crate::operators::segment::TISSUE;
use crate::operators::{OpError, SpectraLayout};
use crate::outputs::records::{ImageCams, ImageSummary, SPECTRUM_SCOPE, SPECTRUM_TRUE_SCOPE};

/// The stage name of classification (in rejects and errors).
pub const OP: &str = "classify";

/// Column with the type prediction.
pub const PRED_CLASS: &str = "pred_class";
/// Column with the subtype prediction.
pub const SUBTYPE: &str = "subtype";
/// The type class whose cores the subtype model classifies.
pub const CANCER: &str = "CA";

/// Truth labels of a sample (from the archive's `labels.csv`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Truth {
    /// CA or AT.
    pub kind: Option<String>,
    /// LA, LB, HER2 or TNBC.
    pub subtype: Option<String>,
    /// The patient the core comes from.
    pub patient: Option<String>,
}

/// Probability as an exact fixed-point integer (2⁻³² units).
pub fn prob_fixed(p: f32) -> i64 {
    (p as f64 * 4_294_967_296.0).round() as i64
}

/// The schema of prediction rows for input `schema` (spectrum dropped, predictions added).
pub fn prediction_schema(input: &Schema, types: &[String], subtypes: Option<&[String]>) -> SchemaRef {
    let mut fields: Vec<Field> = input.fields().iter().filter(|f| f.name() != SPECTRUM).map(|f| f.as_ref().clone()).collect();
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

/// One model's tally of a core: spectra per class, Σ probability per class (2⁻³² units), majority.
type ModelTally = (Vec<u64>, Vec<i64>, Option<String>);

/// The classify kernel of one image.
pub struct ClassifyKernel {
    models: Rc<Models>,
    labels: Arc<HashMap<String, Truth>>,
    held: Vec<RecordBatch>,
    /// The image being scored, after `finish`.
    scoring: Option<Box<Image>>,
}

/// Where an image's classification stands.
pub enum Outcome {
    /// The inference service is scoring it: call [`ClassifyKernel::poll`] when woken.
    Waiting,
    /// The image held no rows.
    Empty,
    /// Its prediction batches (one per input batch, in order) and its summary.
    Done(Vec<RecordBatch>, Box<ImageSummary>),
}

impl ClassifyKernel {
    /// A kernel using the worker's `models`, with truth `labels` by sample id or file stem.
    pub fn new(models: Rc<Models>, labels: Arc<HashMap<String, Truth>>) -> Self {
        Self { models, labels, held: Vec::new(), scoring: None }
    }

    /// Holds one batch of the current image.
    pub fn push_batch(&mut self, batch: &RecordBatch) {
        if batch.num_rows() > 0 {
            self.held.push(batch.clone());
        }
    }

    /// Classifies the held image. With the worker's own networks it is done on return; with a
    /// shared inference service its spectra are sent and `wake` is called when a reply came (then
    /// [`poll`](Self::poll)).
    pub fn finish(&mut self, wake: &Wake) -> Result<Outcome, OpError> {
        let held = std::mem::take(&mut self.held);
        let Some(mut image) = Image::prepare(&self.models, &self.labels, held)? else { return Ok(Outcome::Empty) };
        image.pending = Some((Which::Type, self.models.submit(Which::Type, &image.values, image.rows, wake)?));
        self.scoring = Some(Box::new(image));
        self.poll(wake)
    }

    /// Takes what the inference service replied and goes on (the subtype model after the type
    /// model, in a core called cancer), until the image is done.
    pub fn poll(&mut self, wake: &Wake) -> Result<Outcome, OpError> {
        let Some(image) = self.scoring.as_mut() else { return Err(OpError::internal(OP, "nothing is being classified")) };
        let m = &self.models;
        while let Some((which, scoring)) = image.pending.as_mut() {
            let scored = match scoring.poll() {
                None => return Ok(Outcome::Waiting),
                Some(s) => s?,
            };
            let which = *which;
            image.pending = None;
            match which {
                Which::Type => {
                    let row = &mut image.summary.row;
                    (row.type_counts, row.type_prob_sums, row.majority) =
                        record(m, &mut image.summary.cams, &image.values, image.rows, &scored, &m.types, image.truth.kind.as_ref())?;
                    image.types = Some(scored);
                    if m.subtypes.is_some() && image.summary.row.majority.as_deref() == Some(CANCER) {
                        image.pending = Some((Which::Subtype, m.submit(Which::Subtype, &image.values, image.rows, wake)?));
                    }
                }
                Which::Subtype => {
                    let classes = m.subtypes.as_deref().ok_or_else(|| OpError::internal(OP, "no subtype model"))?;
                    let row = &mut image.summary.row;
                    (row.subtype_counts, row.subtype_prob_sums, row.subtype_majority) =
                        record(m, &mut image.summary.cams, &image.values, image.rows, &scored, classes, image.truth.subtype.as_ref())?;
                    image.subtypes = Some(scored);
                }
            }
        }
        let image = self.scoring.take().expect("present above");
        let batches = image.predictions(m)?;
        Ok(Outcome::Done(batches, Box::new(image.summary)))
    }
}

/// An image on its way through the models: its batches (without their spectra, which are copied
/// once into `values`, so an image waiting for the service holds one copy of its classified
/// spectra), the rows classified, their spectra, its summary so far, and the scores that came
/// back.
struct Image {
    held: Vec<RecordBatch>,
    /// Per held batch, which rows are classified.
    selected: Vec<Vec<bool>>,
    /// The classified rows' spectra, row after row (shared with the inference service while it
    /// scores them).
    values: Arc<[f32]>,
    rows: usize,
    truth: Truth,
    summary: ImageSummary,
    types: Option<Scored>,
    subtypes: Option<Scored>,
    /// The model being waited for.
    pending: Option<(Which, Scoring)>,
}

fn majority(counts: &[u64], classes: &[String]) -> Option<String> {
    let best = counts.iter().copied().max().filter(|&m| m > 0)?;
    counts.iter().position(|&c| c == best).map(|i| classes[i].clone())
}

fn bool_col(b: &RecordBatch, name: &str) -> Option<BooleanArray> {
    b.column_by_name(name).and_then(|c| c.as_boolean_opt().cloned())
}

/// Row `i` of a flag column, `absent` where the batch has no such column.
fn flag(c: &Option<BooleanArray>, i: usize, absent: bool) -> bool {
    c.as_ref().map_or(absent, |c| c.value(i))
}

impl Image {
    /// The rows of `held` to classify (tissue, not outliers, finite), in row order, and the
    /// image's counts; `None` for an image without rows.
    fn prepare(m: &Models, labels: &HashMap<String, Truth>, held: Vec<RecordBatch>) -> Result<Option<Self>, OpError> {
        let Some(first) = held.first() else { return Ok(None) };
        let sample = sample_column(first).map_err(|e| OpError::schema(OP, e))?.value(0).to_string();
        // Labels name samples by id or by file stem (`images/P01_CA` is `P01_CA` in labels.csv).
        let stem = sample.rsplit('/').next().unwrap_or(&sample);
        let truth = labels.get(&sample).or_else(|| labels.get(stem)).cloned().unwrap_or_default();

        let n = m.grid.len();
        let mut summary = ImageSummary::default();
        let row = &mut summary.row;
        row.sample = sample.clone();
        row.truth_type = truth.kind.clone();
        row.patient = truth.patient.clone();
        row.truth_subtype = truth.subtype.clone();
        // First the flags: the image's counts, and per batch the tissue rows that are not
        // outliers (kept below unless not finite), whose number sizes `values` once, so the
        // image's spectra are not copied again as the buffer grows.
        let mut selected: Vec<Vec<bool>> = Vec::with_capacity(held.len());
        let mut candidates = 0;
        for b in &held {
            let (tissue, outlier) = (bool_col(b, TISSUE), bool_col(b, OUTLIER));
            let paraffin = bool_col(b, crate::operators::segment::PARAFFIN);
            let mut sel = Vec::with_capacity(b.num_rows());
            for i in 0..b.num_rows() {
                let (t, o) = (flag(&tissue, i, true), flag(&outlier, i, false));
                row.tissue += t as u64;
                row.outliers += o as u64;
                row.paraffin += flag(&paraffin, i, false) as u64;
                sel.push(t && !o);
            }
            candidates += sel.iter().filter(|&&c| c).count();
            row.spectra += b.num_rows() as u64;
            selected.push(sel);
        }
        let mut values = Vec::with_capacity(candidates * n);
        let mut checked: Option<arrow::datatypes::SchemaRef> = None;
        for (b, sel) in held.iter().zip(&mut selected) {
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
            for (i, keep) in sel.iter_mut().enumerate().filter(|(_, keep)| **keep) {
                let spectrum = &v[i * n..(i + 1) * n];
                *keep = crate::operators::finite::all_finite(spectrum);
                if *keep {
                    values.extend_from_slice(spectrum);
                }
            }
        }
        let rows = values.len() / n;
        // The batches' other columns go on into the prediction rows; their spectra are in
        // `values` where classified, and dropped here.
        let held = held
            .into_iter()
            .map(|mut b| {
                if let Ok(i) = b.schema().index_of(SPECTRUM) {
                    b.remove_column(i);
                }
                b
            })
            .collect();
        Ok(Some(Self { held, selected, values: values.into(), rows, truth, summary, types: None, subtypes: None, pending: None }))
    }

    /// The prediction rows: each held batch without its spectra, with the type (and subtype)
    /// prediction of its classified rows.
    fn predictions(&self, m: &Models) -> Result<Vec<RecordBatch>, OpError> {
        let t = self.types.as_ref().ok_or_else(|| OpError::internal(OP, "the type model's scores are missing"))?;
        let (types, subtypes) = (&m.types, m.subtypes.as_deref());
        let mut out = Vec::with_capacity(self.held.len());
        let mut next = 0usize;
        for (b, sel) in self.held.iter().zip(&self.selected) {
            let schema = prediction_schema(&b.schema(), types, subtypes);
            let mut cols: Vec<ArrayRef> = b
                .schema()
                .fields()
                .iter()
                .enumerate()
                .filter(|(_, f)| f.name() != SPECTRUM)
                .map(|(i, _)| Arc::clone(b.column(i)))
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
            if let Some(classes) = subtypes {
                let k = classes.len();
                let s = self.subtypes.as_ref();
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
        Ok(out)
    }
}

/// One model's predictions of a core (`rows` spectra `values`, scored `s`): counts, probability
/// sums and majority; and, in one pass over the rows, each row's spectrum and Grad-CAM map summed
/// into `cams` under its predicted class. The class's sums go to the scopes `spectrum` (the mean
/// preprocessed spectrum per predicted class, what the report draws each class's Grad-CAM profile
/// over), `predicted` and `core`; with truth labels, their total to `spectrum_true` and `true`
/// under the true class (which way a band of a true class points is read from these). Sums are
/// integers, so merging is exact and order-free.
fn record(
    m: &Models,
    cams: &mut ImageCams,
    values: &[f32],
    rows: usize,
    s: &Scored,
    classes: &[String],
    truth: Option<&String>,
) -> Result<ModelTally, OpError> {
    let points = m.grid.len();
    let merge_into = |cams: &mut ImageCams, scope: &'static str, class: &str, st: &CamStats| {
        CamStats::merge_into(&mut cams.stats, (scope, class.to_string()), st)
    };
    let mut counts = vec![0u64; classes.len()];
    let mut prob_sums = vec![0i64; classes.len()];
    for (i, &p) in s.predicted.iter().enumerate() {
        counts[p as usize] += 1;
        for (c, acc) in prob_sums.iter_mut().enumerate() {
            *acc += prob_fixed(s.probs[i * classes.len() + c]);
        }
    }
    if rows > 0 {
        let mut spectra = vec![CamStats::new(points); classes.len()];
        let mut maps = vec![CamStats::new(points); if m.gradcam { classes.len() } else { 0 }];
        for (i, &p) in s.predicted.iter().enumerate() {
            spectra[p as usize].push_values(&values[i * points..(i + 1) * points])?;
            if let Some(st) = maps.get_mut(p as usize) {
                st.push_map(m.explain, &s.maps[i * points..(i + 1) * points])?;
            }
        }
        let (mut all_spectra, mut all_maps) = (CamStats::new(points), CamStats::new(points));
        for (c, class) in classes.iter().enumerate().filter(|&(c, _)| counts[c] > 0) {
            merge_into(cams, SPECTRUM_SCOPE, class, &spectra[c])?;
            all_spectra.merge(&spectra[c])?;
            if let Some(st) = maps.get(c) {
                merge_into(cams, "predicted", class, st)?;
                merge_into(cams, "core", class, st)?;
                all_maps.merge(st)?;
            }
        }
        if let Some(k) = truth {
            merge_into(cams, SPECTRUM_TRUE_SCOPE, k, &all_spectra)?;
            if m.gradcam {
                merge_into(cams, "true", k, &all_maps)?;
            }
        }
    }
    let majority = majority(&counts, classes);
    Ok((counts, prob_sums, majority))
}
