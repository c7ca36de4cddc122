//! 1D Grad-CAM post-processing and aggregation (docs/model.md): the map of one spectrum (ReLU,
//! linear interpolation onto the input points, division by the maximum), the exact per-key
//! accumulators behind the per-class and per-core summaries (mean, standard deviation and count per
//! wavenumber), and the top bands of a class mean with their biochemical assignments.
//!
//! Aggregation is exact: every map value (in `[0, 1]`) is rounded once to a multiple of 2⁻⁴⁰ and
//! summed as an integer (with its square), so the sums — and the means and standard deviations
//! derived from them — are bit-identical for any batch size, order or split across workers.
//!
//! ```
//! use ftirflow_operators::grad_cam::{postprocess, CamAggregator};
//! let mut map = [0.0f32; 8];
//! postprocess(&[-1.0, 2.0, 4.0, 0.0], &mut map);
//! assert_eq!(map.iter().cloned().fold(0.0, f32::max), 1.0);
//! let mut by_class = CamAggregator::new(8);
//! by_class.push("CA", &map).unwrap();
//! by_class.push("CA", &map).unwrap();
//! let s = &by_class.summaries()[0];
//! assert_eq!((s.key.as_str(), s.count), ("CA", 2));
//! assert_eq!(s.std[3], 0.0);
//! ```
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::OpError;

const OP: &str = "grad_cam";

/// Map values are summed as integers in units of 2⁻⁴⁰.
const SCALE: f64 = (1u64 << 40) as f64;

/// Below this magnitude [`round_small`] holds: 2⁶², every map value and any spectrum value below
/// 4 · 10⁶ in units of 2⁻⁴⁰.
const SMALL: f64 = 4_611_686_018_427_387_904.0;

/// `x.round()` (halves away from zero) as an integer, for `|x| <` [`SMALL`]: inline arithmetic
/// instead of the library's `round` and the software conversion to `i128`, which cost more than
/// the sums themselves. Same result (a test checks it against `round`).
#[inline]
fn round_small(x: f64) -> i64 {
    // The conversion truncates towards zero in one instruction (`f64::trunc` is a library call on
    // the x86-64 baseline, which has no rounding instruction); it is exact below 2^63.
    let t = x as i64;
    // The fraction is exact: below 2^52 `t` is exact as a float, from 2^52 on `x` is an integer
    // and the fraction is 0.
    let f = x - t as f64;
    t + i64::from(f >= 0.5) - i64::from(f <= -0.5)
}

/// Turns the raw class-activation map `Σ_k α_k A_k` of one spectrum (on the feature length) into
/// its Grad-CAM map on the `out.len()` input points: ReLU, linear interpolation (cell centres
/// aligned, as `torch.nn.functional.interpolate(mode="linear", align_corners=False)`), division by
/// the maximum; an all-zero (or non-finite) map stays zero.
pub fn postprocess(raw: &[f32], out: &mut [f32]) {
    Interpolation::new(raw.len(), out.len()).postprocess(MapKind::Gradcam, raw, out, &mut Vec::new());
}

/// Which map a raw class-activation map `Σ_k α_k A_k` becomes (`[run] explain`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MapKind {
    /// Grad-CAM, as the paper: ReLU, interpolation, division by the maximum; values in `[0, 1]`:
    /// where the evidence for the class lies.
    #[default]
    Gradcam,
    /// The map without the ReLU: interpolation, division by the largest magnitude; values in
    /// `[-1, 1]`, positive where a region raises the explained score, negative where it lowers it.
    Signed,
}

impl MapKind {
    /// The range its map values lie in.
    pub fn range(self) -> std::ops::RangeInclusive<f32> {
        match self {
            MapKind::Gradcam => 0.0..=1.0,
            MapKind::Signed => -1.0..=1.0,
        }
    }

    /// Its configuration name.
    pub fn name(self) -> &'static str {
        match self {
            MapKind::Gradcam => "gradcam",
            MapKind::Signed => "signed",
        }
    }
}

/// [`postprocess`] for `rows` raw maps of `length` values each, onto `points` points (the
/// interpolation taps are computed once for the batch).
pub fn postprocess_batch(raw: &[f32], rows: usize, length: usize, points: usize) -> Vec<f32> {
    postprocess_batch_as(MapKind::Gradcam, raw, rows, length, points)
}

/// [`postprocess_batch`] into maps of either kind.
pub fn postprocess_batch_as(kind: MapKind, raw: &[f32], rows: usize, length: usize, points: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; rows * points];
    let taps = Interpolation::new(length, points);
    let mut scratch = Vec::with_capacity(length);
    for (r, o) in raw.chunks_exact(length.max(1)).zip(out.chunks_exact_mut(points.max(1))) {
        taps.postprocess(kind, r, o, &mut scratch);
    }
    out
}

/// The linear-interpolation taps from `length` feature positions onto `points` input points
/// (`align_corners=False`): for each point, its two neighbours and the right one's weight.
struct Interpolation {
    length: usize,
    taps: Vec<(u32, u32, f32)>,
}

impl Interpolation {
    fn new(length: usize, points: usize) -> Self {
        let scale = length as f64 / points as f64;
        let taps = (0..if length == 0 { 0 } else { points })
            .map(|i| {
                let src = ((i as f64 + 0.5) * scale - 0.5).max(0.0);
                let left = (src.floor() as usize).min(length - 1);
                let right = (left + 1).min(length - 1);
                (left as u32, right as u32, (src - left as f64) as f32)
            })
            .collect();
        Self { length, taps }
    }

    /// One map; `scratch` holds the raw map as interpolated (ReLU'd for Grad-CAM), reused across
    /// a batch.
    fn postprocess(&self, kind: MapKind, raw: &[f32], out: &mut [f32], scratch: &mut Vec<f32>) {
        if self.length == 0 || raw.len() != self.length || out.len() != self.taps.len() {
            out.fill(0.0);
            return;
        }
        scratch.clear();
        match kind {
            MapKind::Gradcam => scratch.extend(raw.iter().map(|&v| if v > 0.0 { v } else { 0.0 })),
            MapKind::Signed => scratch.extend_from_slice(raw),
        }
        let mut max = 0.0f32;
        for (o, &(left, right, w)) in out.iter_mut().zip(&self.taps) {
            *o = scratch[left as usize] * (1.0 - w) + scratch[right as usize] * w;
            max = max.max(o.abs());
        }
        if max > 0.0 && max.is_finite() {
            for o in out.iter_mut() {
                *o /= max;
            }
        } else {
            out.fill(0.0);
        }
    }
}

/// Exact running sums of maps: count, Σ v and Σ v² per point (integers in units of 2⁻⁴⁰).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CamStats {
    count: u64,
    sum: Vec<i128>,
    sum_sq: Vec<i128>,
}

impl CamStats {
    /// Empty sums for maps of `points` values.
    pub fn new(points: usize) -> Self {
        Self { count: 0, sum: vec![0; points], sum_sq: vec![0; points] }
    }

    /// Adds one Grad-CAM map (values in `[0, 1]`, as [`postprocess`] makes them).
    pub fn push(&mut self, map: &[f32]) -> Result<(), OpError> {
        self.push_map(MapKind::Gradcam, map)
    }

    /// Adds one map of `kind` (values in its [`MapKind::range`]).
    pub fn push_map(&mut self, kind: MapKind, map: &[f32]) -> Result<(), OpError> {
        let range = kind.range();
        if let Some(v) = map.iter().find(|v| !range.contains(*v)) {
            return Err(OpError::data(OP, format!("{} map value {v} is outside [{}, {}]", kind.name(), range.start(), range.end())));
        }
        self.push_values(map)
    }

    /// Adds one vector of any finite values (a spectrum: the mean spectra per class are kept in
    /// the same exact sums as the maps).
    pub fn push_values(&mut self, values: &[f32]) -> Result<(), OpError> {
        if values.len() != self.sum.len() {
            return Err(OpError::data(OP, format!("a map of {} values where {} are expected", values.len(), self.sum.len())));
        }
        for ((s, q), &v) in self.sum.iter_mut().zip(self.sum_sq.iter_mut()).zip(values) {
            let x = v as f64 * SCALE;
            let i = if x.abs() < SMALL { round_small(x) as i128 } else { x.round() as i128 };
            *s += i;
            *q += i * i;
        }
        self.count += 1;
        Ok(())
    }

    /// Adds `st` to the sums kept under `key` in `sums` (a copy when the key is new).
    pub fn merge_into<K: Ord>(sums: &mut BTreeMap<K, CamStats>, key: K, st: &CamStats) -> Result<(), OpError> {
        match sums.entry(key) {
            std::collections::btree_map::Entry::Occupied(mut e) => e.get_mut().merge(st),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(st.clone());
                Ok(())
            }
        }
    }

    /// Adds another accumulator's sums (order does not matter: the sums are integers).
    pub fn merge(&mut self, other: &CamStats) -> Result<(), OpError> {
        if other.sum.len() != self.sum.len() {
            return Err(OpError::internal(OP, "merging map sums of different lengths"));
        }
        self.count += other.count;
        for (a, b) in self.sum.iter_mut().zip(&other.sum) {
            *a += b;
        }
        for (a, b) in self.sum_sq.iter_mut().zip(&other.sum_sq) {
            *a += b;
        }
        Ok(())
    }

    /// Maps added.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The exact sums per point: Σ v and Σ v², in units of 2⁻⁴⁰ (what engines add up across
    /// workers).
    pub fn sums(&self) -> (&[i128], &[i128]) {
        (&self.sum, &self.sum_sq)
    }

    /// An accumulator from exact sums (as [`CamStats::sums`] gives them).
    pub fn from_sums(count: u64, sum: Vec<i128>, sum_sq: Vec<i128>) -> Result<Self, OpError> {
        if sum.len() != sum_sq.len() {
            return Err(OpError::internal(OP, "map sums of different lengths"));
        }
        Ok(Self { count, sum, sum_sq })
    }

    /// Mean per point (zeros when empty).
    pub fn mean(&self) -> Vec<f64> {
        let n = self.count.max(1) as f64;
        self.sum.iter().map(|&s| s as f64 / SCALE / n).collect()
    }

    /// Sample standard deviation per point (`n − 1` in the denominator; zeros below two maps).
    pub fn std(&self) -> Vec<f64> {
        if self.count < 2 {
            return vec![0.0; self.sum.len()];
        }
        let n = self.count as f64;
        self.sum
            .iter()
            .zip(&self.sum_sq)
            .map(|(&s, &q)| {
                // n·Σv² − (Σv)² ≥ 0 exactly; in f64 from exact integers.
                let s = s as f64;
                let var = (q as f64 - s * s / n) / (n - 1.0) / (SCALE * SCALE);
                var.max(0.0).sqrt()
            })
            .collect()
    }
}

/// The aggregated maps of one key (a class or a core).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CamSummary {
    /// The class name or core id.
    pub key: String,
    /// Maps aggregated.
    pub count: u64,
    /// Mean map per input point.
    pub mean: Vec<f64>,
    /// Standard deviation per input point.
    pub std: Vec<f64>,
}

/// Exact per-key map aggregation (per predicted class, per true class or per core): push maps
/// with their key in any batches and order, merge partial aggregators from several workers, and
/// read identical summaries.
#[derive(Debug, Clone, PartialEq)]
pub struct CamAggregator {
    points: usize,
    groups: BTreeMap<String, CamStats>,
}

impl CamAggregator {
    /// An empty aggregator for maps of `points` values.
    pub fn new(points: usize) -> Self {
        Self { points, groups: BTreeMap::new() }
    }

    /// Adds one map under `key`.
    pub fn push(&mut self, key: &str, map: &[f32]) -> Result<(), OpError> {
        if !self.groups.contains_key(key) {
            self.groups.insert(key.to_string(), CamStats::new(self.points));
        }
        self.groups.get_mut(key).expect("inserted above").push(map)
    }

    /// Adds the maps of a batch (`maps` is `keys.len() × points`, row-major).
    pub fn push_batch<S: AsRef<str>>(&mut self, keys: &[S], maps: &[f32]) -> Result<(), OpError> {
        if maps.len() != keys.len() * self.points {
            return Err(OpError::data(OP, format!("{} map values for {} keys of {} points", maps.len(), keys.len(), self.points)));
        }
        for (k, m) in keys.iter().zip(maps.chunks_exact(self.points.max(1))) {
            self.push(k.as_ref(), m)?;
        }
        Ok(())
    }

    /// Adds another aggregator's maps.
    pub fn merge(&mut self, other: &CamAggregator) -> Result<(), OpError> {
        for (k, s) in &other.groups {
            match self.groups.get_mut(k) {
                Some(mine) => mine.merge(s)?,
                None => {
                    self.groups.insert(k.clone(), s.clone());
                }
            }
        }
        Ok(())
    }

    /// The exact sums of one key.
    pub fn stats(&self, key: &str) -> Option<&CamStats> {
        self.groups.get(key)
    }

    /// Mean, standard deviation and count per key, keys in order.
    pub fn summaries(&self) -> Vec<CamSummary> {
        self.groups.iter().map(|(k, s)| CamSummary { key: k.clone(), count: s.count(), mean: s.mean(), std: s.std() }).collect()
    }
}

/// A contiguous wavenumber range where a class's mean map lies above its 90th percentile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopBand {
    /// Lower end, cm⁻¹.
    pub lo: f64,
    /// Upper end, cm⁻¹.
    pub hi: f64,
    /// Wavenumber of the largest mean map value in the range.
    pub peak: f64,
    /// Mean of the map over the range.
    pub mean_map: f64,
    /// What absorbs in the range, from the literature table ([`crate::assignments`]): every
    /// overlapping assignment, nearest to the peak first, `; `-joined, or `unassigned`.
    pub assignment: String,
    /// The reviews the assignments come from, `; `-joined (empty when unassigned; absent from
    /// bundles written before the literature table).
    #[serde(default)]
    pub sources: String,
    /// Which way the band points for its class ([`direction`]), when the caller knows the class
    /// mean spectra ([`top_bands`] leaves it `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
}

/// How a class's mean spectrum over a band compares with the other classes' ([`direction`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Direction {
    /// The class's mean over the band minus the others' (units of the preprocessed spectra).
    pub diff: f64,
    /// `diff` over the others' mean over the band (`None` when that is not positive).
    pub relative: Option<f64>,
}

impl Direction {
    /// `higher` or `lower` (in the class than in the others).
    pub fn word(&self) -> &'static str {
        if self.diff >= 0.0 {
            "higher"
        } else {
            "lower"
        }
    }
}

/// Which way the band `[lo, hi]` points for a class: the mean over the band of the class's mean
/// spectrum `own` minus that of the other classes' mean spectra `others` (each weighted by its
/// number of spectra), all on `wavenumbers`. `None` when the band holds no point or the others
/// hold no spectra.
pub fn direction(own: &[f64], others: &[(u64, &[f64])], wavenumbers: &[f64], lo: f64, hi: f64) -> Option<Direction> {
    let points: Vec<usize> = (0..wavenumbers.len()).filter(|&i| wavenumbers[i] >= lo && wavenumbers[i] <= hi).collect();
    let over_band = |m: &[f64]| points.iter().map(|&i| m.get(i).copied().unwrap_or(f64::NAN)).sum::<f64>() / points.len() as f64;
    let n: u64 = others.iter().map(|o| o.0).sum();
    if n == 0 || points.is_empty() {
        return None;
    }
    let level = others.iter().map(|(k, m)| *k as f64 * over_band(m)).sum::<f64>() / n as f64;
    let diff = over_band(own) - level;
    diff.is_finite().then(|| Direction { diff, relative: (level > 0.0).then(|| diff / level) })
}

impl TopBand {
    /// True when `center` lies in the band widened by `tolerance` cm⁻¹ on both sides.
    pub fn contains(&self, center: f64, tolerance: f64) -> bool {
        center >= self.lo - tolerance && center <= self.hi + tolerance
    }
}

/// The `q` quantile (0–1) of `values` with linear interpolation between order statistics (numpy's
/// default); `None` when empty or when a value is not finite.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    Some(v[lo] + (v[hi] - v[lo]) * (pos - lo as f64))
}

/// The top bands of a mean map over `wavenumbers`: the contiguous runs of points strictly above
/// the `q` quantile (docs/model.md: 0.9) of the map, strongest (highest mean map) first, each with
/// its assignment. An all-equal map has none.
pub fn top_bands(wavenumbers: &[f64], mean: &[f64], q: f64) -> Result<Vec<TopBand>, OpError> {
    if wavenumbers.len() != mean.len() {
        return Err(OpError::data(OP, format!("{} wavenumbers for a map of {} values", wavenumbers.len(), mean.len())));
    }
    let Some(threshold) = quantile(mean, q) else {
        return Ok(Vec::new());
    };
    let mut bands = Vec::new();
    let mut i = 0;
    while i < mean.len() {
        if mean[i] <= threshold {
            i += 1;
            continue;
        }
        let start = i;
        while i < mean.len() && mean[i] > threshold {
            i += 1;
        }
        let run = start..i;
        let (a, b) = (wavenumbers[run.start], wavenumbers[run.end - 1]);
        let (lo, hi) = (a.min(b), a.max(b));
        let peak_i = run.clone().max_by(|&x, &y| mean[x].total_cmp(&mean[y])).unwrap_or(start);
        let peak = wavenumbers[peak_i];
        let mean_map = mean[run.clone()].iter().sum::<f64>() / run.len() as f64;
        let (assignment, sources) = crate::assignments::describe(lo, hi, peak);
        bands.push(TopBand { lo, hi, peak, mean_map, assignment, sources, direction: None });
    }
    bands.sort_by(|a, b| b.mean_map.total_cmp(&a.mean_map));
    Ok(bands)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn signed_maps_keep_the_sign() {
        // Raw [−1, 2, −4, 0] onto 8 points: point i samples cell (i + 0.5)/2 − 0.5 (clamped).
        let raw = [-1.0f32, 2.0, -4.0, 0.0];
        let signed = postprocess_batch_as(MapKind::Signed, &raw, 1, 4, 8);
        let at = |x: f64| {
            let x = x.max(0.0);
            let (l, w) = (x.floor() as usize, x - x.floor());
            raw[l.min(3)] as f64 * (1.0 - w) + raw[(l + 1).min(3)] as f64 * w
        };
        let hand: Vec<f64> = (0..8).map(|i| at((i as f64 + 0.5) / 2.0 - 0.5)).collect();
        let max = hand.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (s, h) in signed.iter().zip(&hand) {
            assert!((*s as f64 - h / max).abs() < 1e-6, "{signed:?} vs {hand:?}");
        }
        assert_eq!(signed.iter().fold(0.0f32, |m, v| m.max(v.abs())), 1.0);
        assert!(signed.iter().any(|v| *v < 0.0));
        // On random maps: a map with no negative value is its own Grad-CAM map, and negating
        // the raw map negates the signed map.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let raw: Vec<f32> = (0..50 * 13).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let positive: Vec<f32> = raw.iter().map(|v| v.abs()).collect();
        let negated: Vec<f32> = raw.iter().map(|v| -v).collect();
        assert_eq!(postprocess_batch_as(MapKind::Gradcam, &raw, 50, 13, 40), postprocess_batch(&raw, 50, 13, 40));
        assert_eq!(postprocess_batch_as(MapKind::Signed, &positive, 50, 13, 40), postprocess_batch(&positive, 50, 13, 40));
        let (s, n) = (postprocess_batch_as(MapKind::Signed, &raw, 50, 13, 40), postprocess_batch_as(MapKind::Signed, &negated, 50, 13, 40));
        assert!(s.iter().zip(&n).all(|(a, b)| *a == -*b));
        // Sums of signed maps accept [−1, 1]; Grad-CAM sums refuse negative values.
        let mut st = CamStats::new(8);
        st.push_map(MapKind::Signed, &signed).unwrap();
        assert!(CamStats::new(8).push(&signed).is_err());
    }

    #[test]
    fn round_small_is_round() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut xs = vec![0.0, -0.0, 0.5, -0.5, 1.5, -1.5, 2.5, 0.49999999999999994, -0.49999999999999994, 4503599627370495.5];
        xs.extend([2f64.powi(52), 2f64.powi(52) + 1.0, 2f64.powi(53) + 2.0, SMALL - 1024.0, -(SMALL - 1024.0)]);
        for _ in 0..100_000 {
            let v: f32 = rng.random_range(-3.0f32..3.0);
            xs.push(v as f64 * SCALE);
            let tiny: f32 = rng.random_range(0.0f32..1e-9);
            xs.push(tiny as f64 * SCALE);
        }
        for x in xs {
            assert_eq!(round_small(x), x.round() as i64, "{x}");
        }
    }

    fn random_maps(rows: usize, points: usize, seed: u64) -> (Vec<String>, Vec<f32>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let keys = (0..rows).map(|_| ["LA", "LB", "HER2", "TNBC"][rng.random_range(0..4)].to_string()).collect();
        let mut maps = Vec::with_capacity(rows * points);
        for _ in 0..rows {
            let raw: Vec<f32> = (0..points / 4).map(|_| rng.random_range(-1.0..3.0)).collect();
            let mut m = vec![0.0; points];
            postprocess(&raw, &mut m);
            maps.extend(m);
        }
        (keys, maps)
    }

    #[test]
    fn postprocess_is_relu_interpolate_normalize() {
        let mut out = [0.0f32; 8];
        postprocess(&[-1.0, 2.0, 4.0, 0.0], &mut out);
        // ReLU → [0, 2, 4, 0]; point i samples cell (i + 0.5)/2 − 0.5 (clamped), e.g. point 3 is
        // cell 1.25 = 0.75·2 + 0.25·4 = 2.5; the largest value (3.5, point 4) becomes 1.
        let expected = [0.0, 0.5, 1.5, 2.5, 3.5, 3.0, 1.0, 0.0];
        for (o, e) in out.iter().zip(expected) {
            assert!((o - e / 3.5).abs() < 1e-6, "{out:?}");
        }
        let mut zero = [5.0f32; 6];
        postprocess(&[-1.0, -2.0, 0.0], &mut zero);
        assert_eq!(zero, [0.0; 6]);
        let mut nan = [5.0f32; 6];
        postprocess(&[f32::NAN, 1.0, 0.0], &mut nan);
        assert!(nan.iter().all(|v| v.is_finite()));
    }

    /// The map computed point by point, straight from docs/model.md (the reference the tap table
    /// must reproduce bit for bit).
    fn naive_postprocess(raw: &[f32], out: &mut [f32]) {
        let (l, n) = (raw.len(), out.len());
        let relu = |v: f32| if v > 0.0 { v } else { 0.0 };
        for (i, o) in out.iter_mut().enumerate() {
            let src = ((i as f64 + 0.5) * (l as f64 / n as f64) - 0.5).max(0.0);
            let left = (src.floor() as usize).min(l - 1);
            let right = (left + 1).min(l - 1);
            let w = (src - left as f64) as f32;
            *o = relu(raw[left]) * (1.0 - w) + relu(raw[right]) * w;
        }
        let max = out.iter().cloned().fold(0.0f32, f32::max);
        if max > 0.0 && max.is_finite() {
            out.iter_mut().for_each(|o| *o /= max);
        } else {
            out.fill(0.0);
        }
    }

    #[test]
    fn batch_postprocess_matches_the_point_by_point_map_bit_for_bit() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for (length, points, rows) in [(58, 467, 37), (1, 467, 3), (300, 467, 4), (467, 58, 5), (7, 7, 2)] {
            let raw: Vec<f32> = (0..rows * length).map(|_| rng.random_range(-1.0f32..2.0)).collect();
            let batch = postprocess_batch(&raw, rows, length, points);
            for r in 0..rows {
                let mut one = vec![0.0f32; points];
                naive_postprocess(&raw[r * length..(r + 1) * length], &mut one);
                let got = &batch[r * points..(r + 1) * points];
                assert!(got.iter().zip(&one).all(|(a, b)| a.to_bits() == b.to_bits()), "length {length}, points {points}, row {r}");
            }
        }
    }

    #[test]
    fn aggregation_is_identical_for_any_batching_and_order() {
        let points = 467;
        let (keys, maps) = random_maps(523, points, 3);
        let one_go = {
            let mut a = CamAggregator::new(points);
            a.push_batch(&keys, &maps).unwrap();
            a.summaries()
        };
        for batch in [1usize, 7, 64, 250, 523] {
            // Reversed order, in batches, split over three "workers" merged in a different order.
            let mut workers = vec![CamAggregator::new(points), CamAggregator::new(points), CamAggregator::new(points)];
            let order: Vec<usize> = (0..keys.len()).rev().collect();
            for (b, chunk) in order.chunks(batch).enumerate() {
                let ks: Vec<&str> = chunk.iter().map(|&i| keys[i].as_str()).collect();
                let ms: Vec<f32> = chunk.iter().flat_map(|&i| maps[i * points..(i + 1) * points].iter().copied()).collect();
                workers[b % 3].push_batch(&ks, &ms).unwrap();
            }
            let mut total = workers.pop().unwrap();
            total.merge(&workers[1]).unwrap();
            total.merge(&workers[0]).unwrap();
            assert_eq!(total.summaries(), one_go, "batch {batch}");
        }
        // Against a naive f64 reference.
        for s in &one_go {
            let rows: Vec<&[f32]> = keys.iter().zip(maps.chunks(points)).filter(|(k, _)| **k == s.key).map(|(_, m)| m).collect();
            assert_eq!(s.count as usize, rows.len());
            for p in [0, 100, 466] {
                let n = rows.len() as f64;
                let mean = rows.iter().map(|m| m[p] as f64).sum::<f64>() / n;
                let var = rows.iter().map(|m| (m[p] as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0);
                assert!((s.mean[p] - mean).abs() < 1e-9, "{} {p}", s.key);
                assert!((s.std[p] - var.sqrt()).abs() < 1e-6, "{} {p}", s.key);
            }
        }
    }

    #[test]
    fn bad_maps_are_refused() {
        let mut a = CamAggregator::new(3);
        assert!(a.push("x", &[0.0, 1.0]).is_err());
        assert!(a.push("x", &[0.0, 1.5, 0.0]).is_err());
        assert!(a.push("x", &[0.0, f32::NAN, 0.0]).is_err());
        assert!(a.push_batch(&["x"], &[0.0; 4]).is_err());
    }

    #[test]
    fn top_bands_are_runs_above_the_90th_percentile() {
        let axis: Vec<f64> = (0..467).map(|i| 900.0 + 900.0 * i as f64 / 466.0).collect();
        let bump = |c: f64, w: f64| axis.iter().map(move |&x| (-((x - c) / w).powi(2)).exp());
        let mean: Vec<f64> = bump(1740.0, 12.0).zip(bump(1240.0, 15.0)).map(|(a, b)| a + 0.8 * b).collect();
        let bands = top_bands(&axis, &mean, 0.9).unwrap();
        assert_eq!(bands.len(), 2, "{bands:#?}");
        assert!(bands[0].contains(1740.0, 0.0) && bands[0].assignment.starts_with("C=O stretching of lipid esters"), "{bands:#?}");
        assert!(bands[1].contains(1240.0, 0.0) && bands[1].assignment.contains("PO₂⁻ asymmetric"), "{bands:#?}");
        assert!(bands[0].sources.contains("Movasaghi 2008"), "{bands:#?}");
        let points_in: usize = axis.iter().filter(|&&w| bands.iter().any(|b| b.contains(w, 0.0))).count();
        assert!((40..=48).contains(&points_in), "about 10 % of the points: {points_in}");
        assert!(top_bands(&axis, &vec![0.3; 467], 0.9).unwrap().is_empty());
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.5), Some(2.5));
    }

    #[test]
    fn a_band_points_the_way_the_class_mean_differs_from_the_others() {
        let axis = [1000.0, 1010.0, 1020.0, 1030.0];
        let own = [1.0, 2.0, 2.0, 1.0];
        let a = [1.0, 1.0, 1.0, 1.0];
        let b = [1.0, 4.0, 4.0, 1.0];
        // Others over 1010–1020: (3·1 + 1·4) / 4 = 1.75; own 2 → +0.25, +14.3 %.
        let d = direction(&own, &[(3, &a), (1, &b)], &axis, 1005.0, 1025.0).unwrap();
        assert!((d.diff - 0.25).abs() < 1e-12 && (d.relative.unwrap() - 0.25 / 1.75).abs() < 1e-12, "{d:?}");
        assert_eq!(d.word(), "higher");
        assert_eq!(direction(&own, &[(1, &b)], &axis, 1005.0, 1025.0).unwrap().word(), "lower");
        assert!(direction(&own, &[], &axis, 1005.0, 1025.0).is_none());
        assert!(direction(&own, &[(1, &a)], &axis, 1040.0, 1050.0).is_none());
    }

    #[test]
    fn std_is_zero_for_identical_maps() {
        let mut s = CamStats::new(2);
        for _ in 0..5 {
            s.push(&[0.3, 1.0]).unwrap();
        }
        assert_eq!(s.std(), vec![0.0, 0.0]);
        assert!((s.mean()[0] - 0.3).abs() < 1e-7);
    }
}
