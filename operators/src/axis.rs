//! Wavenumber-axis helpers shared by the operators: the indices of a band (either axis direction)
//! and the scaled wavenumber used by EMSC polynomials.
use std::ops::Range;

/// A closed wavenumber interval `[lo, hi]` in cm⁻¹ (given in either order).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Band {
    /// One end, cm⁻¹.
    pub lo: f64,
    /// The other end, cm⁻¹.
    pub hi: f64,
}

impl Band {
    /// The band between `a` and `b` (order does not matter).
    pub fn new(a: f64, b: f64) -> Self {
        Self { lo: a.min(b), hi: a.max(b) }
    }

    /// True when `w` lies in the band.
    pub fn contains(&self, w: f64) -> bool {
        w >= self.lo && w <= self.hi
    }

    /// The contiguous index range of `axis` (monotonic, either direction) inside the band, or
    /// `None` when the axis does not reach the band or holds no point of it.
    pub fn indices(&self, axis: &[f64]) -> Option<Range<usize>> {
        let first = axis.iter().position(|&w| self.contains(w))?;
        let len = axis[first..].iter().take_while(|&&w| self.contains(w)).count();
        Some(first..first + len)
    }

    /// Like [`Band::indices`], but also requires the axis to cover the whole band (its ends
    /// within one axis step), so a truncated axis is not silently used.
    pub fn covered_indices(&self, axis: &[f64]) -> Option<Range<usize>> {
        let (min, max) = min_max(axis)?;
        let step = if axis.len() > 1 { (max - min) / (axis.len() - 1) as f64 } else { 0.0 };
        if self.lo < min - step || self.hi > max + step {
            return None;
        }
        self.indices(axis)
    }
}

impl std::fmt::Display for Band {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}–{} cm⁻¹", self.lo, self.hi)
    }
}

/// Smallest and largest value of an axis.
pub fn min_max(axis: &[f64]) -> Option<(f64, f64)> {
    let first = *axis.first()?;
    let last = *axis.last()?;
    Some((first.min(last), first.max(last)))
}

/// The index of the axis point nearest to `w`.
pub fn nearest(axis: &[f64], w: f64) -> Option<usize> {
    axis.iter().enumerate().min_by(|a, b| (a.1 - w).abs().total_cmp(&(b.1 - w).abs())).map(|(i, _)| i)
}

/// The scaled wavenumber `x̃ = (ν − (ν_min+ν_max)/2) / (|ν_first − ν_last|/2)` in `[-1, 1]`, as in
/// Kohler's EMSC.
pub fn scaled(axis: &[f64]) -> Vec<f64> {
    let Some((min, max)) = min_max(axis) else { return Vec::new() };
    let mid = (min + max) / 2.0;
    let half = ((axis[0] - axis[axis.len() - 1]).abs() / 2.0).max(f64::MIN_POSITIVE);
    axis.iter().map(|w| (w - mid) / half).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn band_indices_both_directions() {
        let up = [1000.0, 1001.0, 1002.0, 1003.0];
        let down = [1003.0, 1002.0, 1001.0, 1000.0];
        assert_eq!(Band::new(1002.5, 1000.5).indices(&up), Some(1..3));
        assert_eq!(Band::new(1000.5, 1002.5).indices(&down), Some(1..3));
        assert_eq!(Band::new(2000.0, 2100.0).indices(&up), None);
        assert_eq!(Band::new(999.0, 1002.0).covered_indices(&up), Some(0..3));
        assert_eq!(Band::new(990.0, 1002.0).covered_indices(&up), None);
    }

    #[test]
    fn scaled_axis_spans_minus_one_to_one() {
        let s = scaled(&[4000.0, 3000.0, 2000.0]);
        assert_eq!(s, vec![1.0, 0.0, -1.0]);
    }
}
