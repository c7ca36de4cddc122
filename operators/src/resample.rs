//! Truncation and resampling by linear interpolation onto a target grid (preprocessing step 5,
//! docs/configuration.md): by default the model's 467-point grid over 900–1800 cm⁻¹ (the
//! biofingerprint).
//!
//! The input axis may run in either direction; so may the target grid. Each target point is
//! interpolated between the two input points that bracket it. A target point outside the input
//! axis by at most half an input step takes the edge value (instrument axes rarely start exactly
//! at a round wavenumber, e.g. 900.6 cm⁻¹); farther out is an error naming both ranges — never a
//! silent extrapolation. Non-finite inputs propagate to the target points that use them.
//!
//! ```
//! use ftirflow_operators::resample::{Resampler, ResampleParams};
//! let r = Resampler::new(&[1000.0, 1002.0, 1004.0], &[1001.0, 1003.0]).unwrap();
//! let mut out = [0.0f32; 2];
//! r.apply(&[1.0, 3.0, 5.0], &mut out);
//! assert_eq!(out, [2.0, 4.0]);
//! assert_eq!(ResampleParams::default().grid().unwrap().len(), 467);
//! ```
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{Schema, SchemaRef};

use crate::axis::min_max;
use crate::error::OpError;
use crate::kernel::{emit, Kernel};
use crate::schema::{self, spectrum_array, spectrum_field, SpectraLayout, WAVENUMBERS_KEY};

const OP: &str = "resample";

/// The target grid: `points` evenly spaced wavenumbers from `start` to `end` (either order).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResampleParams {
    /// First grid point, cm⁻¹ (default 900).
    pub start: f64,
    /// Last grid point, cm⁻¹ (default 1800).
    pub end: f64,
    /// Number of grid points (default 467, CaReNet-V1's input length).
    pub points: usize,
}

/// The most points a resampling grid may have (far beyond any instrument): a configuration asking
/// for more is refused before anything is allocated (found by fuzzing the config parser).
pub const MAX_GRID_POINTS: usize = 1 << 20;

impl Default for ResampleParams {
    fn default() -> Self {
        Self { start: 900.0, end: 1800.0, points: 467 }
    }
}

impl ResampleParams {
    /// The grid, after checking the parameters.
    pub fn grid(&self) -> Result<Vec<f64>, OpError> {
        if !(self.start.is_finite() && self.end.is_finite()) || self.start == self.end {
            return Err(OpError::config(OP, format!("grid {}–{} cm⁻¹ must have two different finite ends", self.start, self.end)));
        }
        if self.points < 2 {
            return Err(OpError::config(OP, format!("grid needs at least 2 points, got {}", self.points)));
        }
        if self.points > MAX_GRID_POINTS {
            return Err(OpError::config(OP, format!("grid of {} points is too fine (at most {MAX_GRID_POINTS})", self.points)));
        }
        let step = (self.end - self.start) / (self.points - 1) as f64;
        Ok((0..self.points).map(|i| if i + 1 == self.points { self.end } else { self.start + step * i as f64 }).collect())
    }
}

/// Precomputed interpolation from one input axis onto one target grid.
///
/// Each target point `j` is `a + w (b − a)` with `a = s[left[j]]`, `b = s[left[j] + 1]`. The
/// target points go in blocks of eight; when a block's left indices are consecutive (the usual
/// case: the model grid and instrument axes have nearly the same step) it reads two contiguous
/// slices and the loop vectorizes, otherwise it reads point by point. Target points that fall
/// exactly on an input point (`w` = 0 or 1, including the clamped edges) are then copied exactly,
/// so a non-finite neighbour never leaks into them.
#[derive(Debug, Clone, PartialEq)]
pub struct Resampler {
    /// For each target point: the left input index (`left + 1 < n` whenever `n ≥ 2`).
    left: Vec<u32>,
    /// For each target point: the weight of the right neighbour.
    weight: Vec<f32>,
    /// Target points copied exactly from one input point: (target index, input index).
    exact: Vec<(u32, u32)>,
    /// For each whole block of eight target points: its first left index when the block's left
    /// indices are consecutive.
    runs: Vec<Option<u32>>,
    input: Vec<f64>,
    target: Vec<f64>,
}

impl Resampler {
    /// Interpolation from `input` (monotonic) onto `target`; an error when the target leaves the
    /// input's range by more than half an input step.
    pub fn new(input: &[f64], target: &[f64]) -> Result<Self, OpError> {
        schema::check_axis(input).map_err(|e| OpError::schema(OP, e))?;
        schema::check_axis(target).map_err(|e| OpError::config(OP, format!("target grid: {e}")))?;
        if input.len() > i32::MAX as usize / 2 {
            return Err(OpError::data(OP, format!("an axis of {} points is too long", input.len())));
        }
        let (lo, hi) = min_max(input).expect("checked non-empty");
        let (tlo, thi) = min_max(target).expect("checked non-empty");
        let half_step = if input.len() > 1 { (hi - lo) / (input.len() - 1) as f64 / 2.0 } else { 0.0 };
        if tlo < lo - half_step || thi > hi + half_step {
            return Err(OpError::data(OP, format!("target grid {tlo:.2}–{thi:.2} cm⁻¹ is outside the data's axis {lo:.2}–{hi:.2} cm⁻¹")));
        }
        // Work on an ascending view of the input.
        let ascending = input.len() < 2 || input[1] > input[0];
        let n = input.len();
        let asc = |i: usize| if ascending { i } else { n - 1 - i };
        let value = |i: usize| input[asc(i)];
        let (mut left, mut weight, mut exact) = (Vec::with_capacity(target.len()), Vec::with_capacity(target.len()), Vec::new());
        for (j, &t) in target.iter().enumerate() {
            if n == 1 {
                left.push(0);
                weight.push(0.0);
                exact.push((j as u32, 0));
                continue;
            }
            // Largest ascending index a with value(a) <= t, clamped to [0, n-2].
            let (mut a, mut b) = (0usize, n - 1);
            while b - a > 1 {
                let mid = (a + b) / 2;
                if value(mid) <= t {
                    a = mid
                } else {
                    b = mid
                }
            }
            let (x0, x1) = (value(a), value(a + 1));
            let w = ((t - x0) / (x1 - x0)).clamp(0.0, 1.0) as f32;
            // In input order: the left index and the weight of its right neighbour.
            let (i0, i1) = (asc(a), asc(a + 1));
            let (l, w) = if i0 < i1 { (i0, w) } else { (i1, 1.0 - w) };
            left.push(l as u32);
            weight.push(w);
            if w == 0.0 {
                exact.push((j as u32, l as u32));
            } else if w == 1.0 {
                exact.push((j as u32, l as u32 + 1));
            }
        }
        let runs = left.chunks_exact(BLOCK).map(|b| b.iter().enumerate().all(|(k, &l)| l == b[0] + k as u32).then_some(b[0])).collect();
        Ok(Self { left, weight, exact, runs, input: input.to_vec(), target: target.to_vec() })
    }

    /// The target grid.
    pub fn target(&self) -> &[f64] {
        &self.target
    }

    /// The input axis this resampler was built for.
    pub fn input(&self) -> &[f64] {
        &self.input
    }

    /// Resamples one spectrum.
    ///
    /// # Panics
    /// When `spectrum.len()` is not the input length or `out.len()` not the target length.
    pub fn apply(&self, spectrum: &[f32], out: &mut [f32]) {
        assert_eq!(spectrum.len(), self.input.len(), "spectrum length must match the input axis");
        assert_eq!(out.len(), self.target.len(), "output length must match the target grid");
        if spectrum.len() >= 2 {
            let blocks = out.chunks_exact_mut(BLOCK).zip(self.weight.chunks_exact(BLOCK)).zip(&self.runs);
            for (j, ((o, w), run)) in blocks.enumerate() {
                match *run {
                    Some(l0) => {
                        let l0 = l0 as usize;
                        let (a, b) = (&spectrum[l0..l0 + BLOCK], &spectrum[l0 + 1..l0 + BLOCK + 1]);
                        for k in 0..BLOCK {
                            o[k] = a[k] + w[k] * (b[k] - a[k]);
                        }
                    }
                    None => self.interpolate(spectrum, j * BLOCK..(j + 1) * BLOCK, o),
                }
            }
            let tail = self.runs.len() * BLOCK..out.len();
            self.interpolate(spectrum, tail.clone(), &mut out[tail]);
        }
        self.copy_exact(spectrum, out);
    }

    /// Target points `targets` one by one into `out` (`targets.len()` values).
    fn interpolate(&self, spectrum: &[f32], targets: std::ops::Range<usize>, out: &mut [f32]) {
        for ((o, &l), &w) in out.iter_mut().zip(&self.left[targets.clone()]).zip(&self.weight[targets]) {
            let (a, b) = (spectrum[l as usize], spectrum[l as usize + 1]);
            *o = a + w * (b - a);
        }
    }

    fn copy_exact(&self, spectrum: &[f32], out: &mut [f32]) {
        for &(j, i) in &self.exact {
            out[j as usize] = spectrum[i as usize];
        }
    }

    /// Resamples `rows` spectra.
    pub fn apply_batch(&self, values: &[f32], out: &mut [f32]) {
        let (n, m) = (self.input.len(), self.target.len());
        for (s, o) in values.chunks_exact(n).zip(out.chunks_exact_mut(m)) {
            self.apply(s, o);
        }
    }
}

/// Target points per block of the interpolation loop.
const BLOCK: usize = 8;

/// The resampling kernel: replaces `spectrum` by its values on the target grid and rewrites the
/// axis metadata. Per spectrum; `finish` emits nothing.
#[derive(Debug)]
pub struct ResampleKernel {
    target: Vec<f64>,
    cached: Option<Resampler>,
}

impl ResampleKernel {
    /// A kernel onto `target`.
    pub fn new(target: Vec<f64>) -> Result<Self, OpError> {
        schema::check_axis(&target).map_err(|e| OpError::config(OP, format!("target grid: {e}")))?;
        Ok(Self { target, cached: None })
    }

    fn resampler(&mut self, input: &[f64]) -> Result<&Resampler, OpError> {
        if self.cached.as_ref().map(|r| r.input() != input).unwrap_or(true) {
            self.cached = Some(Resampler::new(input, &self.target)?);
        }
        Ok(self.cached.as_ref().expect("set above"))
    }
}

/// `input` with the spectrum column resized to `axis` and the axis metadata replaced.
pub fn with_axis(input: &Schema, axis: &[f64]) -> Result<SchemaRef, OpError> {
    let layout = SpectraLayout::of(input).map_err(|e| OpError::schema(OP, e))?;
    let mut fields: Vec<_> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields[layout.spectrum] = spectrum_field(axis.len());
    let mut md = input.metadata().clone();
    md.insert(WAVENUMBERS_KEY.to_string(), serde_json::to_string(axis).expect("f64 serializes"));
    Ok(Arc::new(Schema::new_with_metadata(fields, md)))
}

impl Kernel for ResampleKernel {
    fn name(&self) -> &'static str {
        OP
    }

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef, OpError> {
        with_axis(input, &self.target)
    }

    fn push_batch(&mut self, batch: &RecordBatch, out: &mut Vec<RecordBatch>) -> Result<(), OpError> {
        let layout = SpectraLayout::of(&batch.schema()).map_err(|e| OpError::schema(OP, e))?;
        let values = SpectraLayout::values(batch).map_err(|e| OpError::schema(OP, e))?;
        let schema = self.output_schema(&batch.schema())?;
        let r = self.resampler(&layout.wavenumbers)?;
        let mut resampled = vec![0f32; batch.num_rows() * r.target().len()];
        r.apply_batch(values, &mut resampled);
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns[layout.spectrum] = Arc::new(spectrum_array(resampled, self.target.len()).map_err(|e| OpError::schema(OP, e))?);
        emit(out, OP, schema, columns)
    }

    fn finish(&mut self, _out: &mut Vec<RecordBatch>) -> Result<(), OpError> {
        Ok(())
    }
}

/// Truncation to a band: keeps the axis points inside `band` (preprocessing step 5,
/// docs/configuration.md, and the EMSC fit range). Per spectrum; `finish` emits nothing.
#[derive(Debug)]
pub struct TruncateKernel {
    band: crate::axis::Band,
}

impl TruncateKernel {
    /// A kernel keeping `band`.
    pub fn new(band: crate::axis::Band) -> Result<Self, OpError> {
        if !(band.lo.is_finite() && band.hi.is_finite()) || band.lo >= band.hi {
            return Err(OpError::config("truncate", format!("band {band} is empty")));
        }
        Ok(Self { band })
    }

    /// The indices of `axis` inside the band; an error when the axis does not cover it.
    pub fn range(&self, axis: &[f64]) -> Result<std::ops::Range<usize>, OpError> {
        self.band.covered_indices(axis).filter(|r| r.len() >= 2).ok_or_else(|| {
            let (lo, hi) = min_max(axis).unwrap_or((f64::NAN, f64::NAN));
            OpError::data("truncate", format!("the data's axis {lo:.2}–{hi:.2} cm⁻¹ does not cover {}", self.band))
        })
    }
}

/// `batch` (spectra schema) with every spectrum cut to the points `range` of its axis, and the
/// schema's axis cut alike (what [`TruncateKernel`] does for its band; the table readers use it for
/// a band range). An error when `range` reaches past the axis.
pub fn cut_points(batch: &RecordBatch, range: std::ops::Range<usize>) -> Result<RecordBatch, OpError> {
    let layout = SpectraLayout::of(&batch.schema()).map_err(|e| OpError::schema(OP, e))?;
    let axis = layout
        .wavenumbers
        .get(range.clone())
        .ok_or_else(|| OpError::internal(OP, format!("points {range:?} of an axis of {} points", layout.n_points())))?;
    let schema = with_axis(&batch.schema(), axis)?;
    let values = SpectraLayout::values(batch).map_err(|e| OpError::schema(OP, e))?;
    let mut kept = Vec::with_capacity(batch.num_rows() * range.len());
    for s in values.chunks_exact(layout.n_points()) {
        kept.extend_from_slice(&s[range.clone()]);
    }
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    columns[layout.spectrum] = Arc::new(spectrum_array(kept, range.len()).map_err(|e| OpError::schema(OP, e))?);
    let mut out = Vec::with_capacity(1);
    emit(&mut out, OP, schema, columns)?;
    Ok(out.remove(0))
}

impl Kernel for TruncateKernel {
    fn name(&self) -> &'static str {
        "truncate"
    }

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef, OpError> {
        let layout = SpectraLayout::of(input).map_err(|e| OpError::schema(OP, e))?;
        let r = self.range(&layout.wavenumbers)?;
        with_axis(input, &layout.wavenumbers[r])
    }

    fn push_batch(&mut self, batch: &RecordBatch, out: &mut Vec<RecordBatch>) -> Result<(), OpError> {
        let layout = SpectraLayout::of(&batch.schema()).map_err(|e| OpError::schema(OP, e))?;
        out.push(cut_points(batch, self.range(&layout.wavenumbers)?)?);
        Ok(())
    }

    fn finish(&mut self, _out: &mut Vec<RecordBatch>) -> Result<(), OpError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Naive reference: scan for the bracketing pair in a sorted copy.
    fn naive(input: &[f64], values: &[f32], t: f64) -> f64 {
        let mut pts: Vec<(f64, f64)> = input.iter().zip(values).map(|(&w, &v)| (w, v as f64)).collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        if t <= pts[0].0 {
            return pts[0].1;
        }
        if t >= pts[pts.len() - 1].0 {
            return pts[pts.len() - 1].1;
        }
        for w in pts.windows(2) {
            if t >= w[0].0 && t <= w[1].0 {
                return w[0].1 + (t - w[0].0) / (w[1].0 - w[0].0) * (w[1].1 - w[0].1);
            }
        }
        unreachable!()
    }

    proptest! {
        #[test]
        fn matches_naive_interpolation(
            steps in prop::collection::vec(0.1f64..5.0, 2..60),
            values_seed in prop::collection::vec(-3.0f32..3.0, 60),
            descending in any::<bool>(),
            target_desc in any::<bool>(),
            m in 2usize..40,
        ) {
            let mut axis = vec![1000.0];
            for s in &steps { let l = *axis.last().unwrap(); axis.push(l + s); }
            if descending { axis.reverse(); }
            let values: Vec<f32> = values_seed[..axis.len()].to_vec();
            let (lo, hi) = min_max(&axis).unwrap();
            let mut grid: Vec<f64> = (0..m).map(|i| lo + (hi - lo) * i as f64 / (m - 1) as f64).collect();
            if target_desc { grid.reverse(); }
            let r = Resampler::new(&axis, &grid).unwrap();
            let mut out = vec![0f32; m];
            r.apply(&values, &mut out);
            for (o, &t) in out.iter().zip(&grid) {
                let e = naive(&axis, &values, t);
                prop_assert!((*o as f64 - e).abs() <= 1e-5 * (1.0 + e.abs()), "{} vs {} at {}", o, e, t);
            }
        }
    }

    proptest! {
        #[test]
        fn blocked_and_point_by_point_loops_give_the_same_bytes(
            values in prop::collection::vec(-3.0f32..3.0, 2..200),
            m in 1usize..120,
            descending in any::<bool>(),
            step in 0.5f64..3.0,
        ) {
            let n = values.len();
            let mut axis: Vec<f64> = (0..n).map(|i| 900.0 + 1.93 * i as f64).collect();
            if descending { axis.reverse(); }
            let span = (1.93 * (n - 1) as f64).min(step * m as f64);
            let grid: Vec<f64> = (0..m).map(|i| 900.0 + span * i as f64 / (m.max(2) - 1) as f64).collect();
            let r = Resampler::new(&axis, &grid).unwrap();
            let mut a = vec![0f32; m];
            r.apply(&values, &mut a);
            let mut b = vec![0f32; m];
            r.interpolate(&values, 0..m, &mut b);
            r.copy_exact(&values, &mut b);
            prop_assert_eq!(a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), b.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_nan_reaches_only_the_target_points_next_to_it() {
        let axis: Vec<f64> = (0..10).map(|i| 1000.0 + i as f64).collect();
        // Target points on input points 2 and 3 (exact), and halfway between 5 and 6.
        let r = Resampler::new(&axis, &[1002.0, 1003.0, 1005.5]).unwrap();
        let mut s = [1.0f32; 10];
        s[3] = f32::NAN;
        let mut out = [0f32; 3];
        r.apply(&s, &mut out);
        assert_eq!(out[0], 1.0);
        assert!(out[1].is_nan());
        assert_eq!(out[2], 1.0);
        s[3] = 1.0;
        s[6] = f32::INFINITY;
        r.apply(&s, &mut out);
        assert_eq!(&out[..2], &[1.0, 1.0]);
        assert!(!out[2].is_finite());
    }

    #[test]
    fn refuses_a_grid_outside_the_data() {
        let e = Resampler::new(&[1000.0, 1100.0, 1200.0], &[900.0, 1200.0]).unwrap_err();
        assert!(e.to_string().contains("outside the data's axis 1000.00–1200.00"), "{e}");
        // Within half a step: edge value.
        let r = Resampler::new(&[1000.0, 1100.0, 1200.0], &[960.0, 1200.0]).unwrap();
        let mut out = [0.0; 2];
        r.apply(&[1.0, 2.0, 3.0], &mut out);
        assert_eq!(out, [1.0, 3.0]);
    }

    #[test]
    fn bad_params_are_config_errors() {
        assert!(ResampleParams { start: 900.0, end: 900.0, points: 10 }.grid().unwrap_err().is_config());
        assert!(ResampleParams { points: 1, ..Default::default() }.grid().unwrap_err().is_config());
        assert!(ResampleParams { start: f64::NAN, ..Default::default() }.grid().unwrap_err().is_config());
    }

    #[test]
    fn truncate_keeps_the_band_and_refuses_an_uncovered_one() {
        let schema = schema::spectra_schema(&[1003.0, 1002.0, 1001.0, 1000.0]).unwrap();
        let mut b = schema::SpectraBatchBuilder::new(schema, 1);
        b.push("s", 0, 0, &[3.0, 2.0, 1.0, 0.0]);
        let batch = b.finish().unwrap();
        let mut k = TruncateKernel::new(crate::axis::Band::new(1000.5, 1002.5)).unwrap();
        let out = crate::kernel::run_image(&mut k, std::slice::from_ref(&batch)).unwrap();
        assert_eq!(SpectraLayout::values(&out[0]).unwrap(), &[2.0, 1.0]);
        assert_eq!(SpectraLayout::of(&out[0].schema()).unwrap().wavenumbers, vec![1002.0, 1001.0]);
        let mut far = TruncateKernel::new(crate::axis::Band::new(900.0, 1002.0)).unwrap();
        let e = crate::kernel::run_image(&mut far, &[batch]).unwrap_err();
        assert!(e.to_string().contains("does not cover"), "{e}");
        assert!(TruncateKernel::new(crate::axis::Band { lo: 5.0, hi: 5.0 }).unwrap_err().is_config());
    }

    #[test]
    fn kernel_rewrites_axis_and_values() {
        let schema = schema::spectra_schema(&[1000.0, 1001.0, 1002.0]).unwrap();
        let mut b = schema::SpectraBatchBuilder::new(schema, 1);
        b.push("s", 0, 0, &[0.0, 1.0, 2.0]);
        let batch = b.finish().unwrap();
        let mut k = ResampleKernel::new(vec![1000.5, 1001.5]).unwrap();
        let out = crate::kernel::run_image(&mut k, &[batch]).unwrap();
        let layout = SpectraLayout::validate_batch(&out[0]).unwrap();
        assert_eq!(layout.wavenumbers, vec![1000.5, 1001.5]);
        assert_eq!(SpectraLayout::values(&out[0]).unwrap(), &[0.5, 1.5]);
    }
}
