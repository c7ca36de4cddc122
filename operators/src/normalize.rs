//! Spectrum normalization (preprocessing step 6, docs/configuration.md): vector (L2, the default),
//! SNV, min-max and amide I peak.
//!
//! | method | output |
//! |---|---|
//! | `vector` | `x / ‖x‖₂` |
//! | `snv` | `(x − mean) / std` (population std) |
//! | `minmax` | `(x − min) / (max − min)` |
//! | `amide` | `x / max(x over the amide I band, default 1620–1690 cm⁻¹)` |
//!
//! Degenerate spectra have a defined result, never NaN: when the scale (norm, std, range or amide
//! peak) is zero, negative (amide) or not finite while the values are finite, the output is all
//! zeros. A spectrum that already holds NaN/inf stays non-finite (it was flagged as an outlier
//! upstream) — normalization does not hide bad data.
//!
//! ```
//! use ftirflow_operators::normalize::{Method, Normalizer};
//! let n = Normalizer::new(Method::Vector, &[1.0, 2.0]).unwrap();
//! let mut s = [3.0f32, 4.0];
//! n.apply(&mut s);
//! assert_eq!(s, [0.6, 0.8]);
//! let mut flat = [2.0f32, 2.0];
//! Normalizer::new(Method::Snv, &[1.0, 2.0]).unwrap().apply(&mut flat);
//! assert_eq!(flat, [0.0, 0.0]);
//! ```
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;

use crate::axis::Band;
use crate::error::OpError;
use crate::kernel::{emit, Kernel};
use crate::schema::{spectrum_array, SpectraLayout};

const OP: &str = "normalize";

/// Normalization method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Divide by the Euclidean norm (default).
    #[default]
    Vector,
    /// Standard normal variate: centre and divide by the standard deviation.
    Snv,
    /// Scale to `[0, 1]`.
    Minmax,
    /// Divide by the amide I peak.
    Amide,
}

/// Parameters of the `[preprocess.normalize]` section.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NormalizeParams {
    /// Method: `vector` (default), `snv`, `minmax` or `amide`.
    pub method: Method,
    /// Band searched for the amide I peak by `amide` (default 1620–1690 cm⁻¹).
    pub amide_band: Band,
}

impl Default for NormalizeParams {
    fn default() -> Self {
        Self { method: Method::Vector, amide_band: Band::new(1620.0, 1690.0) }
    }
}

/// A normalizer for one axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalizer {
    method: Method,
    amide: Range<usize>,
    axis: Vec<f64>,
}

impl Normalizer {
    /// Normalizer with the default amide band.
    pub fn new(method: Method, axis: &[f64]) -> Result<Self, OpError> {
        Self::with_params(&NormalizeParams { method, ..Default::default() }, axis)
    }

    /// Normalizer for `axis`; `amide` needs the axis to cover the amide band.
    pub fn with_params(p: &NormalizeParams, axis: &[f64]) -> Result<Self, OpError> {
        let amide = if p.method == Method::Amide {
            p.amide_band
                .indices(axis)
                .ok_or_else(|| OpError::data(OP, format!("the axis holds no point of the amide band {}", p.amide_band)))?
        } else {
            0..0
        };
        Ok(Self { method: p.method, amide, axis: axis.to_vec() })
    }

    /// The axis this normalizer was built for.
    pub fn axis(&self) -> &[f64] {
        &self.axis
    }

    /// Normalizes one spectrum in place (sums in f64 over f32 lanes; the scaling in f32).
    pub fn apply(&self, s: &mut [f32]) {
        if !crate::finite::all_finite(s) {
            return;
        }
        let n = s.len() as f64;
        let (shift, scale) = match self.method {
            Method::Vector => (0.0, lane_sum(s, |v| v * v).sqrt()),
            Method::Snv => {
                let mean = lane_sum(s, |v| v) / n;
                let m = mean as f32;
                (mean, (lane_sum(s, |v| (v - m) * (v - m)) / n).sqrt())
            }
            Method::Minmax => {
                let (lo, hi) = s.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                (lo as f64, hi as f64 - lo as f64)
            }
            Method::Amide => (0.0, s[self.amide.clone()].iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64),
        };
        if !(scale.is_finite() && scale > 0.0) {
            s.fill(0.0);
            return;
        }
        let (shift, inv) = (shift as f32, (1.0 / scale) as f32);
        for v in s.iter_mut() {
            *v = (*v - shift) * inv;
        }
    }
}

/// Σ f(v) with eight f32 lanes of 32 values each folded into an f64 total, so the loop
/// vectorizes and the rounding stays that of short f32 sums.
fn lane_sum(s: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut total = 0f64;
    for block in s.chunks(256) {
        let mut lanes = [0f32; 8];
        let (whole, rest) = block.as_chunks::<8>();
        for c in whole {
            for (l, &v) in lanes.iter_mut().zip(c) {
                *l += f(v);
            }
        }
        total += lanes.iter().map(|&l| l as f64).sum::<f64>() + rest.iter().map(|&v| f(v) as f64).sum::<f64>();
    }
    total
}

/// The normalization kernel (per spectrum; `finish` emits nothing).
#[derive(Debug)]
pub struct NormalizeKernel {
    params: NormalizeParams,
    cached: Option<Normalizer>,
}

impl NormalizeKernel {
    /// A kernel for `params`.
    pub fn new(params: NormalizeParams) -> Self {
        Self { params, cached: None }
    }
}

impl Kernel for NormalizeKernel {
    fn name(&self) -> &'static str {
        OP
    }

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef, OpError> {
        SpectraLayout::of(input).map_err(|e| OpError::schema(OP, e))?;
        Ok(Arc::clone(input))
    }

    fn push_batch(&mut self, batch: &RecordBatch, out: &mut Vec<RecordBatch>) -> Result<(), OpError> {
        let layout = SpectraLayout::of(&batch.schema()).map_err(|e| OpError::schema(OP, e))?;
        if self.cached.as_ref().map(|n| n.axis() != layout.wavenumbers.as_slice()).unwrap_or(true) {
            self.cached = Some(Normalizer::with_params(&self.params, &layout.wavenumbers)?);
        }
        let norm = self.cached.as_ref().expect("set above");
        let n = layout.n_points();
        let mut values = SpectraLayout::values(batch).map_err(|e| OpError::schema(OP, e))?.to_vec();
        for s in values.chunks_exact_mut(n) {
            norm.apply(s);
        }
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns[layout.spectrum] = Arc::new(spectrum_array(values, n).map_err(|e| OpError::schema(OP, e))?);
        emit(out, OP, batch.schema(), columns)
    }

    fn finish(&mut self, _out: &mut Vec<RecordBatch>) -> Result<(), OpError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive(method: Method, s: &[f32], amide: Range<usize>) -> Vec<f64> {
        let x: Vec<f64> = s.iter().map(|&v| v as f64).collect();
        let n = x.len() as f64;
        match method {
            Method::Vector => {
                let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
                x.iter().map(|v| v / norm).collect()
            }
            Method::Snv => {
                let m = x.iter().sum::<f64>() / n;
                let sd = (x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / n).sqrt();
                x.iter().map(|v| (v - m) / sd).collect()
            }
            Method::Minmax => {
                let lo = x.iter().cloned().fold(f64::INFINITY, f64::min);
                let hi = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                x.iter().map(|v| (v - lo) / (hi - lo)).collect()
            }
            Method::Amide => {
                let p = x[amide].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                x.iter().map(|v| v / p).collect()
            }
        }
    }

    proptest! {
        #[test]
        fn matches_naive(values in prop::collection::vec(0.01f32..2.0, 3..80), m in 0usize..4) {
            let method = [Method::Vector, Method::Snv, Method::Minmax, Method::Amide][m];
            let axis: Vec<f64> = (0..values.len()).map(|i| 1620.0 + i as f64).collect();
            let norm = Normalizer::new(method, &axis).unwrap();
            let mut s = values.clone();
            norm.apply(&mut s);
            let e = naive(method, &values, norm.amide.clone());
            for (a, b) in s.iter().zip(&e) {
                if b.is_finite() {
                    prop_assert!((*a as f64 - b).abs() <= 1e-5 * (1.0 + b.abs()), "{} vs {}", a, b);
                }
            }
        }
    }

    #[test]
    fn degenerate_spectra_are_zero_not_nan() {
        let axis = [1650.0, 1651.0, 1652.0];
        let run = |method, input: [f32; 3]| {
            let mut s = input;
            Normalizer::new(method, &axis).unwrap().apply(&mut s);
            s
        };
        for method in [Method::Vector, Method::Snv, Method::Minmax, Method::Amide] {
            assert_eq!(run(method, [0.0; 3]), [0.0; 3], "{method:?} of a zero spectrum");
            assert!(run(method, [f32::NAN, 1.0, 2.0])[0].is_nan(), "{method:?}: non-finite input stays visible");
        }
        assert_eq!(run(Method::Snv, [1.5; 3]), [0.0; 3]);
        assert_eq!(run(Method::Minmax, [1.5; 3]), [0.0; 3]);
        assert_eq!(run(Method::Amide, [1.5; 3]), [1.0; 3]);
        assert_eq!(run(Method::Amide, [-1.0, -2.0, -3.0]), [0.0; 3], "a negative amide peak is no scale");
        let v = run(Method::Vector, [1.5; 3]);
        assert!((v[0] - 1.0 / 3f32.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn amide_needs_the_band() {
        let e = Normalizer::new(Method::Amide, &[1000.0, 1001.0]).unwrap_err();
        assert!(e.to_string().contains("amide band"), "{e}");
    }
}
