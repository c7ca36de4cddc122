//! Outlier flags (preprocessing step 3, docs/configuration.md): tissue spectra whose amide I peak
//! absorbance is outside `[min, max]` (defaults 0.05 and 2.5), spectra that contain NaN/inf, and
//! tissue spectra whose EMSC residual RMS is above a robust per-image threshold (median + k × MAD,
//! k = 5) are flagged `outlier = true`. Flagged spectra stay in the outputs; classification skips
//! them.
//!
//! Two kernels, because the checks need different inputs:
//! - [`AmideCheckKernel`] runs before EMSC on raw absorbance: appends `amide_i` (the peak
//!   absorbance in the amide I window, Float32) and `outlier` (Boolean). Non-finite spectra are
//!   flagged whatever their mask; the amide range applies to tissue spectra (all spectra when the
//!   batch has no `tissue` column).
//! - [`ResidualOutlierKernel`] runs after EMSC on a whole image: it takes the median and the MAD
//!   (median absolute deviation, unscaled) of `emsc_residual_rms` over the tissue spectra not yet
//!   flagged and flags those above `median + k × MAD`. An image with fewer than
//!   [`MIN_ROBUST_SPECTRA`] such spectra gets no residual flags (too few for a robust threshold).
//!
//! ```
//! use ftirflow_operators::outliers::robust_threshold;
//! // Median 1.0, MAD 0.1: the threshold is 1.0 + 5 × 0.1 = 1.5, so only 9.0 lies above it.
//! let r = [0.8, 0.9, 0.9, 1.0, 1.0, 1.0, 1.0, 1.1, 1.1, 1.2, 9.0];
//! let t = robust_threshold(&r, 5.0).unwrap();
//! assert!((t - 1.5).abs() < 1e-6, "{t}");
//! ```
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float32Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::axis::Band;
use crate::error::OpError;
use crate::kernel::{emit, Kernel};
use crate::prefetch::{prefetch, AHEAD};
use crate::schema::SpectraLayout;

const OP: &str = "outliers";
/// Column with the amide I peak absorbance.
pub const AMIDE_I: &str = "amide_i";
/// Column with the outlier flag.
pub const OUTLIER: &str = "outlier";
/// Column the residual check reads (written by EMSC).
pub const RESIDUAL: &str = "emsc_residual_rms";
/// Column with the tissue mask (written by segment).
pub const TISSUE: &str = "tissue";
/// Fewest spectra for which a median/MAD threshold is computed.
pub const MIN_ROBUST_SPECTRA: usize = 10;

/// Parameters of the `[preprocess.outliers]` section.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierParams {
    /// Window searched for the amide I peak (default 1600–1700 cm⁻¹).
    pub amide_band: Band,
    /// Lowest acceptable amide I peak absorbance (default 0.05).
    pub min: f64,
    /// Highest acceptable amide I peak absorbance (default 2.5).
    pub max: f64,
    /// k of the residual threshold `median + k × MAD` (default 5).
    pub residual_mad_k: f64,
}

impl Default for OutlierParams {
    fn default() -> Self {
        Self { amide_band: Band::new(1600.0, 1700.0), min: 0.05, max: 2.5, residual_mad_k: 5.0 }
    }
}

impl OutlierParams {
    /// Checks the parameters.
    pub fn check(&self) -> Result<(), OpError> {
        if !(self.min.is_finite() && self.max.is_finite()) || self.min >= self.max {
            return Err(OpError::config(OP, format!("amide I range [{}, {}] must have min < max, both finite", self.min, self.max)));
        }
        if !(self.residual_mad_k.is_finite() && self.residual_mad_k > 0.0) {
            return Err(OpError::config(OP, format!("residual_mad_k must be positive, got {}", self.residual_mad_k)));
        }
        if !(self.amide_band.lo.is_finite() && self.amide_band.hi.is_finite()) || self.amide_band.lo >= self.amide_band.hi {
            return Err(OpError::config(OP, format!("amide band {} is empty", self.amide_band)));
        }
        Ok(())
    }
}

/// Largest value in `range` of a spectrum (NaN when any value there is not finite).
pub fn peak(spectrum: &[f32], range: std::ops::Range<usize>) -> f32 {
    let s = &spectrum[range];
    if !crate::finite::all_finite(s) {
        return f32::NAN;
    }
    s.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// `median + k × MAD` of `values` (non-finite values ignored), or `None` for fewer than
/// [`MIN_ROBUST_SPECTRA`] values.
pub fn robust_threshold(values: &[f32], k: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().filter(|x| x.is_finite()).map(|&x| x as f64).collect();
    if v.len() < MIN_ROBUST_SPECTRA {
        return None;
    }
    let med = median(&mut v);
    let mut dev: Vec<f64> = v.iter().map(|x| (x - med).abs()).collect();
    let mad = median(&mut dev);
    Some(med + k * mad)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub(crate) fn bool_column(batch: &RecordBatch, name: &str) -> Option<BooleanArray> {
    batch.column_by_name(name).and_then(|c| c.as_boolean_opt().cloned())
}

/// Appends `amide_i` and `outlier` (per spectrum).
#[derive(Debug, Clone)]
pub struct AmideCheckKernel {
    params: OutlierParams,
    checked: Option<Band>,
}

impl AmideCheckKernel {
    /// A kernel for checked `params` that looks for non-finite values over the whole spectrum.
    pub fn new(params: OutlierParams) -> Result<Self, OpError> {
        params.check()?;
        Ok(Self { params, checked: None })
    }

    /// Looks for non-finite values only inside `band` (the part of the spectrum the chain
    /// analyses, e.g. the EMSC range): a NaN at 3500 cm⁻¹ does not spoil a fingerprint spectrum.
    /// The amide I window is always checked (its peak is NaN when it holds a non-finite value).
    pub fn checking(mut self, band: Band) -> Self {
        self.checked = Some(band);
        self
    }

    /// The per-spectrum check for `axis`: where to look for non-finite values and the peak.
    pub fn check_for(&self, axis: &[f64]) -> Result<AmideCheck, OpError> {
        let amide = self
            .params
            .amide_band
            .indices(axis)
            .ok_or_else(|| OpError::data(OP, format!("the axis holds no point of the amide I window {}", self.params.amide_band)))?;
        let finite = match self.checked {
            None => 0..axis.len(),
            Some(band) => band.indices(axis).unwrap_or(0..0),
        };
        Ok(AmideCheck { amide, finite, min: self.params.min, max: self.params.max })
    }
}

/// The amide I and non-finite check of one axis (see [`AmideCheckKernel::check_for`]).
#[derive(Debug, Clone, PartialEq)]
pub struct AmideCheck {
    amide: std::ops::Range<usize>,
    finite: std::ops::Range<usize>,
    min: f64,
    max: f64,
}

impl AmideCheck {
    /// The index range of a spectrum that [`AmideCheck::apply`] reads.
    pub fn reads(&self) -> std::ops::Range<usize> {
        self.finite.start.min(self.amide.start)..self.finite.end.max(self.amide.end)
    }

    /// Prefetches what [`AmideCheck::apply`] will read of `spectrum`.
    #[inline(always)]
    pub fn prefetch(&self, spectrum: &[f32]) {
        prefetch(&spectrum[self.reads()]);
    }

    /// The amide I peak of `spectrum` and whether it is an outlier (`is_tissue`: whether the
    /// amide range applies).
    #[inline]
    pub fn apply(&self, spectrum: &[f32], is_tissue: bool) -> (f32, bool) {
        let finite = crate::finite::all_finite(&spectrum[self.finite.clone()]);
        let p = peak(spectrum, self.amide.clone());
        let out_of_range = is_tissue && !(p as f64 >= self.min && p as f64 <= self.max);
        (p, !finite || out_of_range)
    }
}

impl Kernel for AmideCheckKernel {
    fn name(&self) -> &'static str {
        OP
    }

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef, OpError> {
        SpectraLayout::of(input).map_err(|e| OpError::schema(OP, e))?;
        if input.index_of(OUTLIER).is_ok() || input.index_of(AMIDE_I).is_ok() {
            return Err(OpError::data(OP, "input already has `outlier`/`amide_i` columns"));
        }
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new(AMIDE_I, DataType::Float32, true));
        fields.push(Field::new(OUTLIER, DataType::Boolean, false));
        Ok(Arc::new(Schema::new_with_metadata(fields, input.metadata().clone())))
    }

    fn push_batch(&mut self, batch: &RecordBatch, out: &mut Vec<RecordBatch>) -> Result<(), OpError> {
        let schema = self.output_schema(&batch.schema())?;
        let layout = SpectraLayout::of(&batch.schema()).map_err(|e| OpError::schema(OP, e))?;
        let check = self.check_for(&layout.wavenumbers)?;
        let values = SpectraLayout::values(batch).map_err(|e| OpError::schema(OP, e))?;
        let tissue = bool_column(batch, TISSUE);
        let n = layout.n_points();
        let mut peaks = Vec::with_capacity(batch.num_rows());
        let mut flags = Vec::with_capacity(batch.num_rows());
        let rows = values.len() / n.max(1);
        for (i, s) in values.chunks_exact(n).enumerate() {
            if i + AHEAD < rows {
                check.prefetch(&values[(i + AHEAD) * n..(i + AHEAD + 1) * n]);
            }
            let (p, flag) = check.apply(s, tissue.as_ref().map(|t| t.value(i)).unwrap_or(true));
            peaks.push(p);
            flags.push(flag);
        }
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns.push(Arc::new(Float32Array::from(peaks)));
        columns.push(Arc::new(BooleanArray::from(flags)));
        emit(out, OP, schema, columns)
    }

    fn finish(&mut self, _out: &mut Vec<RecordBatch>) -> Result<(), OpError> {
        Ok(())
    }
}

/// Flags tissue spectra with an EMSC residual above the image's robust threshold (whole image).
#[derive(Debug)]
pub struct ResidualOutlierKernel {
    k: f64,
    held: Vec<RecordBatch>,
}

impl ResidualOutlierKernel {
    /// A kernel for checked `params`.
    pub fn new(params: &OutlierParams) -> Result<Self, OpError> {
        params.check()?;
        Ok(Self { k: params.residual_mad_k, held: Vec::new() })
    }
}

impl Kernel for ResidualOutlierKernel {
    fn name(&self) -> &'static str {
        OP
    }

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef, OpError> {
        for col in [OUTLIER, RESIDUAL] {
            if input.index_of(col).is_err() {
                return Err(OpError::data(OP, format!("residual check needs the `{col}` column (run the amide check and EMSC first)")));
            }
        }
        Ok(Arc::clone(input))
    }

    fn push_batch(&mut self, batch: &RecordBatch, _out: &mut Vec<RecordBatch>) -> Result<(), OpError> {
        self.output_schema(&batch.schema())?;
        self.held.push(batch.clone());
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<RecordBatch>) -> Result<(), OpError> {
        let held = std::mem::take(&mut self.held);
        let residual = |b: &RecordBatch| -> Result<Float32Array, OpError> {
            b.column_by_name(RESIDUAL)
                .and_then(|c| c.as_primitive_opt::<arrow::datatypes::Float32Type>().cloned())
                .ok_or_else(|| OpError::data(OP, format!("`{RESIDUAL}` must be Float32")))
        };
        let mut candidates = Vec::new();
        for b in &held {
            let r = residual(b)?;
            let o = bool_column(b, OUTLIER).ok_or_else(|| OpError::data(OP, "`outlier` must be Boolean"))?;
            let t = bool_column(b, TISSUE);
            for i in 0..b.num_rows() {
                if t.as_ref().map(|t| t.value(i)).unwrap_or(true) && !o.value(i) && r.is_valid(i) {
                    candidates.push(r.value(i));
                }
            }
        }
        let threshold = robust_threshold(&candidates, self.k);
        for b in held {
            let Some(threshold) = threshold else {
                out.push(b);
                continue;
            };
            let r = residual(&b)?;
            let o = bool_column(&b, OUTLIER).expect("checked above");
            let t = bool_column(&b, TISSUE);
            let flags: BooleanArray = (0..b.num_rows())
                .map(|i| {
                    let is_tissue = t.as_ref().map(|t| t.value(i)).unwrap_or(true);
                    Some(o.value(i) || is_tissue && r.is_valid(i) && r.value(i) as f64 > threshold)
                })
                .collect();
            let idx = b.schema().index_of(OUTLIER).expect("checked above");
            let mut columns = b.columns().to_vec();
            columns[idx] = Arc::new(flags);
            emit(out, OP, b.schema(), columns)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{spectra_schema, SpectraBatchBuilder};

    fn batch(spectra: &[[f32; 3]]) -> RecordBatch {
        let mut b = SpectraBatchBuilder::new(spectra_schema(&[1600.0, 1650.0, 1700.0]).unwrap(), spectra.len());
        for (i, s) in spectra.iter().enumerate() {
            b.push("s", i as u32, 0, s);
        }
        b.finish().unwrap()
    }

    fn flags(b: &RecordBatch) -> Vec<bool> {
        b.column_by_name(OUTLIER).unwrap().as_boolean().iter().map(|v| v.unwrap()).collect()
    }

    #[test]
    fn amide_range_and_non_finite() {
        let mut k = AmideCheckKernel::new(OutlierParams::default()).unwrap();
        let out = crate::kernel::run_image(&mut k, &[batch(&[[0.1, 0.5, 0.2], [0.0, 0.01, 0.0], [0.1, 3.0, 0.1], [f32::NAN, 0.5, 0.1]])])
            .unwrap();
        assert_eq!(flags(&out[0]), vec![false, true, true, true]);
        let peaks = out[0].column_by_name(AMIDE_I).unwrap().as_primitive::<arrow::datatypes::Float32Type>().clone();
        assert_eq!(peaks.value(0), 0.5);
        assert!(peaks.value(3).is_nan());
    }

    #[test]
    fn residual_threshold_flags_the_odd_one() {
        let mut k = AmideCheckKernel::new(OutlierParams::default()).unwrap();
        let spectra: Vec<[f32; 3]> = (0..12).map(|_| [0.1, 0.5, 0.2]).collect();
        let checked = crate::kernel::run_image(&mut k, &[batch(&spectra)]).unwrap().remove(0);
        let residuals: Vec<f32> = (0..12).map(|i| if i == 7 { 5.0 } else { 1.0 + 0.01 * i as f32 }).collect();
        let mut fields: Vec<Field> = checked.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new(RESIDUAL, DataType::Float32, true));
        let schema = Arc::new(Schema::new_with_metadata(fields, checked.schema().metadata().clone()));
        let mut cols = checked.columns().to_vec();
        cols.push(Arc::new(Float32Array::from(residuals)));
        let b = RecordBatch::try_new(schema, cols).unwrap();
        let mut r = ResidualOutlierKernel::new(&OutlierParams::default()).unwrap();
        // Split in two batches: the threshold is per image, not per batch.
        let out = crate::kernel::run_image(&mut r, &[b.slice(0, 5), b.slice(5, 7)]).unwrap();
        let all: Vec<bool> = out.iter().flat_map(flags).collect();
        assert_eq!(all.iter().filter(|f| **f).count(), 1);
        assert!(all[7]);
    }

    #[test]
    fn bad_params_are_config_errors() {
        assert!(OutlierParams { min: 3.0, ..Default::default() }.check().unwrap_err().is_config());
        assert!(OutlierParams { residual_mad_k: 0.0, ..Default::default() }.check().unwrap_err().is_config());
        assert!(OutlierParams { max: f64::NAN, ..Default::default() }.check().unwrap_err().is_config());
    }

    #[test]
    fn too_few_spectra_get_no_residual_flags() {
        assert_eq!(robust_threshold(&[1.0, 2.0, 100.0], 5.0), None);
    }
}
