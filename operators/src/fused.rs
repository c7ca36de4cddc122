//! The per-spectrum steps of the preprocessing chain — amide I / non-finite check → truncation →
//! EMSC → resampling → normalization — fused into one kernel that takes each spectrum through
//! every step while it is in the L1 cache.
//!
//! Run one after another, those five kernels each allocate a new batch and stream every value
//! through memory again; fused, a raw spectrum is read once (only its analysed band), corrected
//! into a small scratch buffer and written once, straight into the output batch. The result is
//! the same, byte for byte, as the sequential kernels ([`FusedKernel::sequential`] builds them,
//! and a test compares the two on images with masks, outliers and non-finite spectra): the
//! fused kernel calls the same per-spectrum code ([`AmideCheck::apply`],
//! [`EmscCorrector::correct_batch`], [`Resampler::apply`], [`Normalizer::apply`]) and declares
//! its output schema by asking the sequential kernels for theirs.
//!
//! ```
//! use ftirflow_operators::fused::{FusedKernel, FusedSteps};
//! use ftirflow_operators::kernel::{run_chain, run_image};
//! use ftirflow_operators::normalize::NormalizeParams;
//! use ftirflow_operators::schema::{spectra_schema, SpectraBatchBuilder, SpectraLayout};
//!
//! let axis: Vec<f64> = (0..8).map(|i| 1000.0 + 100.0 * i as f64).collect();
//! let mut b = SpectraBatchBuilder::new(spectra_schema(&axis).unwrap(), 2);
//! b.push("s", 0, 0, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
//! b.push("s", 1, 0, &[0.0; 8]);
//! let batch = b.finish().unwrap();
//! let steps = FusedSteps {
//!     resample: Some(vec![1000.0, 1050.0, 1100.0]),
//!     normalize: Some(NormalizeParams::default()),
//!     ..FusedSteps::default()
//! };
//! let fused = run_image(&mut FusedKernel::new(steps.clone()).unwrap(), &[batch.clone()]).unwrap();
//! let sequential = run_chain(&mut FusedKernel::sequential(&steps).unwrap(), vec![batch]).unwrap();
//! assert_eq!(fused, sequential);
//! let v = SpectraLayout::values(&fused[0]).unwrap();
//! assert!((v[0] - 1.0 / (1.0f32 + 2.25 + 4.0).sqrt()).abs() < 1e-6);
//! assert_eq!(&v[3..], &[0.0, 0.0, 0.0]); // a zero spectrum normalizes to zeros, not NaN
//! ```
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float32Array, RecordBatch};
use arrow::datatypes::SchemaRef;

use crate::axis::Band;
use crate::emsc::{EmscCorrector, EmscKernel};
use crate::error::OpError;
use crate::kernel::{emit, Kernel};
use crate::normalize::{NormalizeKernel, NormalizeParams, Normalizer};
use crate::outliers::{bool_column, AmideCheck, AmideCheckKernel, TISSUE};
use crate::resample::{ResampleKernel, Resampler, TruncateKernel};
use crate::schema::{spectrum_array, SpectraLayout};

const OP: &str = "preprocess";

/// The steps to fuse, in chain order; each is optional (`None`: skipped).
#[derive(Debug, Clone, Default)]
pub struct FusedSteps {
    /// Amide I range and non-finite check: appends `amide_i` and `outlier`.
    pub check: Option<AmideCheckKernel>,
    /// Truncation to a band (the EMSC range).
    pub truncate: Option<Band>,
    /// EMSC: appends `emsc_residual_rms` (and the coefficients when the corrector outputs them).
    pub emsc: Option<Arc<EmscCorrector>>,
    /// Resampling onto this grid.
    pub resample: Option<Vec<f64>>,
    /// Normalization.
    pub normalize: Option<NormalizeParams>,
    /// Take only tissue spectra (rows whose `tissue` column is true) through truncation, EMSC,
    /// resampling and normalization; every other row gets a NaN spectrum and a NaN
    /// `emsc_residual_rms` (and NaN EMSC coefficients). The check still runs on every row. What
    /// `ftirflow run` does, since only tissue is classified (about a third of a core's pixels);
    /// off by default, and ignored when the batch has no `tissue` column.
    pub tissue_only: bool,
}

/// What the kernel worked out for one input schema.
#[derive(Debug)]
struct Prepared {
    input: SchemaRef,
    output: SchemaRef,
    spectrum: usize,
    n_in: usize,
    check: Option<AmideCheck>,
    truncate: Range<usize>,
    resampler: Option<Resampler>,
    normalizer: Option<Normalizer>,
    n_out: usize,
}

/// The fused per-spectrum kernel (emits from `push_batch`; `finish` emits nothing).
#[derive(Debug)]
pub struct FusedKernel {
    steps: FusedSteps,
    prepared: Option<Prepared>,
    scratch: Vec<f32>,
}

impl FusedKernel {
    /// A kernel for `steps` (their parameters are checked here).
    pub fn new(steps: FusedSteps) -> Result<Self, OpError> {
        Self::sequential(&steps)?;
        Ok(Self { steps, prepared: None, scratch: Vec::new() })
    }

    /// The same steps as separate kernels, in chain order: what the fused kernel must equal.
    pub fn sequential(steps: &FusedSteps) -> Result<Vec<Box<dyn Kernel>>, OpError> {
        let mut k: Vec<Box<dyn Kernel>> = Vec::new();
        if let Some(check) = &steps.check {
            k.push(Box::new(check.clone()));
        }
        if let Some(band) = steps.truncate {
            k.push(Box::new(TruncateKernel::new(band)?));
        }
        if let Some(c) = &steps.emsc {
            k.push(Box::new(EmscKernel::new(Arc::clone(c))));
        }
        if let Some(grid) = &steps.resample {
            k.push(Box::new(ResampleKernel::new(grid.clone())?));
        }
        if let Some(p) = &steps.normalize {
            k.push(Box::new(NormalizeKernel::new(p.clone())));
        }
        Ok(k)
    }

    /// The prepared state for `schema` (built once per distinct schema).
    fn prepare(&mut self, schema: &SchemaRef) -> Result<(), OpError> {
        if let Some(p) = &self.prepared {
            if Arc::ptr_eq(&p.input, schema) || *p.input == **schema {
                return Ok(());
            }
        }
        let output = self.output_schema(schema)?;
        let layout = SpectraLayout::of(schema).map_err(|e| OpError::schema(OP, e))?;
        let axis = &layout.wavenumbers;
        let check = self.steps.check.as_ref().map(|c| c.check_for(axis)).transpose()?;
        let truncate = match self.steps.truncate {
            Some(band) => TruncateKernel::new(band)?.range(axis)?,
            None => 0..axis.len(),
        };
        let mid_axis = &axis[truncate.clone()];
        let resampler = self.steps.resample.as_ref().map(|grid| Resampler::new(mid_axis, grid)).transpose()?;
        let out_axis = resampler.as_ref().map(|r| r.target()).unwrap_or(mid_axis);
        let normalizer = self.steps.normalize.as_ref().map(|p| Normalizer::with_params(p, out_axis)).transpose()?;
        let n_out = out_axis.len();
        self.scratch = vec![0.0; truncate.len()];
        self.prepared = Some(Prepared {
            input: Arc::clone(schema),
            output,
            spectrum: layout.spectrum,
            n_in: axis.len(),
            check,
            truncate,
            resampler,
            normalizer,
            n_out,
        });
        Ok(())
    }
}

impl Kernel for FusedKernel {
    fn name(&self) -> &'static str {
        OP
    }

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef, OpError> {
        let mut schema = Arc::clone(input);
        for k in Self::sequential(&self.steps)? {
            schema = k.output_schema(&schema)?;
        }
        Ok(schema)
    }

    fn push_batch(&mut self, batch: &RecordBatch, out: &mut Vec<RecordBatch>) -> Result<(), OpError> {
        self.prepare(&batch.schema())?;
        let p = self.prepared.as_ref().expect("prepared above");
        let scratch = &mut self.scratch;
        let values = SpectraLayout::values(batch).map_err(|e| OpError::schema(OP, e))?;
        let rows = batch.num_rows();
        let tissue = bool_column(batch, TISSUE);
        let emsc = self.steps.emsc.as_deref();
        let k = emsc.map(|c| c.n_coefficients()).unwrap_or(0);
        let with_coefficients = emsc.map(|c| c.output_coefficients()).unwrap_or(false);

        let mut spectra = vec![0f32; rows * p.n_out];
        let (mut peaks, mut flags) = (Vec::new(), Vec::new());
        if p.check.is_some() {
            peaks.reserve(rows);
            flags.reserve(rows);
        }
        let mut rms = vec![0f32; if emsc.is_some() { rows } else { 0 }];
        let mut coefs = vec![0f32; if with_coefficients { rows * k } else { 0 }];
        for (r, (raw, o)) in values.chunks_exact(p.n_in).zip(spectra.chunks_exact_mut(p.n_out)).enumerate() {
            if let Some(check) = &p.check {
                let (peak, flag) = check.apply(raw, tissue.as_ref().map(|t| t.value(r)).unwrap_or(true));
                peaks.push(peak);
                flags.push(flag);
            }
            if self.steps.tissue_only && tissue.as_ref().is_some_and(|t| !t.value(r)) {
                o.fill(f32::NAN);
                if emsc.is_some() {
                    rms[r] = f32::NAN;
                    if with_coefficients {
                        coefs[r * k..(r + 1) * k].fill(f32::NAN);
                    }
                }
                continue;
            }
            let mut mid = &raw[p.truncate.clone()];
            if let Some(c) = emsc {
                let coef = if with_coefficients { Some(&mut coefs[r * k..(r + 1) * k]) } else { None };
                c.correct_batch(mid, 1, scratch, coef, &mut rms[r..r + 1]);
                mid = scratch;
            }
            match &p.resampler {
                Some(rs) => rs.apply(mid, o),
                None => o.copy_from_slice(mid),
            }
            if let Some(n) = &p.normalizer {
                n.apply(o);
            }
        }

        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns[p.spectrum] = Arc::new(spectrum_array(spectra, p.n_out).map_err(|e| OpError::schema(OP, e))?);
        if p.check.is_some() {
            columns.push(Arc::new(Float32Array::from(peaks)));
            columns.push(Arc::new(BooleanArray::from(flags)));
        }
        if emsc.is_some() {
            columns.push(Arc::new(Float32Array::from(rms)));
            if with_coefficients {
                columns.extend(crate::emsc::coefficient_columns(coefs, k)?);
            }
        }
        emit(out, OP, Arc::clone(&p.output), columns)
    }

    fn finish(&mut self, _out: &mut Vec<RecordBatch>) -> Result<(), OpError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emsc::EmscParams;
    use crate::kernel::{run_chain, run_image};
    use crate::normalize::Method;
    use crate::outliers::OutlierParams;
    use crate::schema::{spectra_schema_with, SpectraBatchBuilder};
    use arrow::datatypes::{DataType, Field};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn axis() -> Vec<f64> {
        (0..750).map(|i| 3800.0 - 4.0 * i as f64).collect()
    }

    fn band(w: f64, c: f64, fwhm: f64) -> f64 {
        (-4.0 * std::f64::consts::LN_2 * ((w - c) / fwhm).powi(2)).exp()
    }

    /// Batches of tissue-like spectra with a `tissue` column, a few NaN/inf spectra (inside and
    /// outside the analysed band), an all-zero one and one with a huge amide I peak.
    fn batches(rows: usize, per_batch: usize, seed: u64) -> Vec<RecordBatch> {
        let axis = axis();
        let schema = spectra_schema_with(&axis, vec![Field::new(TISSUE, DataType::Boolean, false)]).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut out = Vec::new();
        let mut row = 0;
        while row < rows {
            let n = per_batch.min(rows - row);
            let mut b = SpectraBatchBuilder::new(crate::schema::spectra_schema(&axis).unwrap(), n);
            let mut tissue = Vec::new();
            for i in 0..n {
                let scale = rng.random_range(0.3..1.5);
                let slope = rng.random_range(-1e-4..1e-4);
                let mut s: Vec<f32> = axis
                    .iter()
                    .map(|&w| {
                        (scale * (band(w, 1655.0, 40.0) + 0.6 * band(w, 1545.0, 40.0) + 0.3 * band(w, 1240.0, 40.0))
                            + slope * (w - 1350.0)
                            + rng.random_range(-0.002..0.002)) as f32
                    })
                    .collect();
                match (row + i) % 17 {
                    3 => s[10] = f32::NAN,       // outside 900–1800: ignored by a checking(band) kernel
                    5 => s[600] = f32::INFINITY, // 1400 cm⁻¹: inside
                    7 => s.fill(0.0),
                    11 => s.iter_mut().for_each(|v| *v *= 40.0),
                    _ => {}
                }
                b.push("img", (row + i) as u32, 0, &s);
                tissue.push((row + i) % 5 != 0);
            }
            let base = b.finish().unwrap();
            let mut cols = base.columns().to_vec();
            cols.push(Arc::new(BooleanArray::from(tissue)));
            out.push(RecordBatch::try_new(Arc::clone(&schema), cols).unwrap());
            row += n;
        }
        out
    }

    fn corrector(output_coefficients: bool) -> Arc<EmscCorrector> {
        let axis = axis();
        let range = Band::new(900.0, 1800.0).indices(&axis).unwrap();
        let w = &axis[range];
        let reference: Vec<f64> =
            w.iter().map(|&w| band(w, 1655.0, 40.0) + 0.6 * band(w, 1545.0, 40.0) + 0.3 * band(w, 1240.0, 40.0)).collect();
        let params = EmscParams { output_coefficients, ..EmscParams::default() };
        Arc::new(params.check(w, &reference, &[]).unwrap())
    }

    fn all_steps(output_coefficients: bool, method: Method) -> FusedSteps {
        FusedSteps {
            check: Some(AmideCheckKernel::new(OutlierParams::default()).unwrap().checking(Band::new(900.0, 1800.0))),
            truncate: Some(Band::new(900.0, 1800.0)),
            emsc: Some(corrector(output_coefficients)),
            resample: Some((0..467).map(|i| 900.0 + 900.0 * i as f64 / 466.0).collect()),
            normalize: Some(NormalizeParams { method, ..NormalizeParams::default() }),
            tissue_only: false,
        }
    }

    #[test]
    fn fused_equals_the_sequential_kernels_byte_for_byte() {
        for (coefs, method) in [(false, Method::Vector), (true, Method::Snv), (false, Method::Amide)] {
            let steps = all_steps(coefs, method);
            let input = batches(300, 64, 1);
            let fused = run_image(&mut FusedKernel::new(steps.clone()).unwrap(), &input).unwrap();
            let seq = run_chain(&mut FusedKernel::sequential(&steps).unwrap(), input).unwrap();
            assert_eq!(fused, seq, "coefficients {coefs}, {method:?}");
        }
    }

    #[test]
    fn every_subset_of_steps_equals_its_sequential_kernels() {
        let full = all_steps(false, Method::Vector);
        for mask in 0u32..32 {
            let steps = FusedSteps {
                check: (mask & 1 != 0).then(|| full.check.clone().unwrap()),
                truncate: (mask & 2 != 0 || mask & 4 != 0).then_some(full.truncate.unwrap()),
                emsc: (mask & 4 != 0).then(|| full.emsc.clone().unwrap()),
                resample: (mask & 8 != 0).then(|| full.resample.clone().unwrap()),
                normalize: (mask & 16 != 0).then(|| full.normalize.clone().unwrap()),
                tissue_only: false,
            };
            let input = batches(40, 16, 2);
            let fused = run_image(&mut FusedKernel::new(steps.clone()).unwrap(), &input).unwrap();
            let seq = run_chain(&mut FusedKernel::sequential(&steps).unwrap(), input).unwrap();
            assert_eq!(fused, seq, "steps mask {mask:05b}");
        }
    }

    #[test]
    fn tissue_only_leaves_tissue_rows_unchanged_and_skips_the_rest() {
        let full = all_steps(true, Method::Vector);
        let input = batches(120, 32, 6);
        let all = run_image(&mut FusedKernel::new(full.clone()).unwrap(), &input).unwrap();
        let only = run_image(&mut FusedKernel::new(FusedSteps { tissue_only: true, ..full }).unwrap(), &input).unwrap();
        let mut checked = 0;
        for (a, o) in all.iter().zip(&only) {
            assert_eq!(a.schema(), o.schema());
            let tissue = a.column_by_name(TISSUE).unwrap().as_any().downcast_ref::<BooleanArray>().unwrap();
            let (va, vo) = (SpectraLayout::values(a).unwrap(), SpectraLayout::values(o).unwrap());
            let rms =
                |b: &RecordBatch| b.column_by_name("emsc_residual_rms").unwrap().as_any().downcast_ref::<Float32Array>().unwrap().clone();
            let (ra, ro) = (rms(a), rms(o));
            for r in 0..a.num_rows() {
                let (sa, so) = (&va[r * 467..(r + 1) * 467], &vo[r * 467..(r + 1) * 467]);
                if tissue.value(r) {
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(sa), bits(so), "tissue row {r}");
                    assert_eq!(ra.value(r).to_bits(), ro.value(r).to_bits());
                    checked += 1;
                } else {
                    assert!(so.iter().all(|v| v.is_nan()) && ro.value(r).is_nan(), "non-tissue row {r} skipped");
                }
            }
            // The check still runs on every row.
            assert_eq!(a.column_by_name("outlier").unwrap(), o.column_by_name("outlier").unwrap());
        }
        assert!(checked > 80);
    }

    #[test]
    fn batch_size_does_not_change_the_bytes() {
        let steps = all_steps(true, Method::Vector);
        let rows = |bs: Vec<RecordBatch>| -> Vec<f32> { bs.iter().flat_map(|b| SpectraLayout::values(b).unwrap().to_vec()).collect() };
        let a = run_image(&mut FusedKernel::new(steps.clone()).unwrap(), &batches(200, 7, 3)).unwrap();
        let b = run_image(&mut FusedKernel::new(steps).unwrap(), &batches(200, 200, 3)).unwrap();
        assert_eq!(rows(a).iter().map(|v| v.to_bits()).collect::<Vec<_>>(), rows(b).iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    }

    #[test]
    fn non_finite_values_outside_the_checked_band_do_not_flag() {
        let steps = all_steps(false, Method::Vector);
        let out = run_image(&mut FusedKernel::new(steps).unwrap(), &batches(18, 18, 4)).unwrap();
        let flags = out[0].column_by_name(crate::outliers::OUTLIER).unwrap().as_any().downcast_ref::<BooleanArray>().unwrap();
        // Row 3: NaN at 3760 cm⁻¹ (outside 900–1800): not an outlier; row 5: inf at 1400 cm⁻¹:
        // outlier; row 11: 40× amide I, a tissue row: outlier.
        assert!(!flags.value(3));
        assert!(flags.value(5));
        assert!(flags.value(11));
        // Row 7 (all zeros, tissue): amide I below the minimum.
        assert!(flags.value(7));
        let values = SpectraLayout::values(&out[0]).unwrap();
        assert!(values[3 * 467..4 * 467].iter().all(|v| v.is_finite()));
        assert!(values[7 * 467..8 * 467].iter().all(|v| v.is_nan()), "EMSC of a zero spectrum has b = 0: NaN, flagged");
    }

    #[test]
    fn an_axis_that_misses_the_band_is_a_clear_error() {
        let steps = FusedSteps { truncate: Some(Band::new(400.0, 800.0)), ..FusedSteps::default() };
        let err = run_image(&mut FusedKernel::new(steps).unwrap(), &batches(4, 4, 5)).unwrap_err();
        assert!(err.to_string().contains("does not cover"), "{err}");
    }
}
