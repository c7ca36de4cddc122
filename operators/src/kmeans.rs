//! A small, fast, deterministic K-means (Lloyd's algorithm with k-means++ seeding) on `f32` rows
//! with `f64` arithmetic: the clustering kernel behind the tissue and paraffin masks of
//! [`crate::segment`] (preprocessing steps 1–2, docs/configuration.md).
//!
//! Parameters follow linfa's pattern: [`KMeans::params`] gives a [`KMeansParams`] builder,
//! [`KMeansParams::check`] validates it into a [`KMeans`], and [`KMeans::fit`] returns a
//! [`KMeansModel`] (centroids, labels, inertia).
//!
//! # Algorithm (exactly; the tests replay it with a naive reference implementation)
//!
//! With `n` rows of `dim` values and a ChaCha8 generator seeded by `seed`
//! (`ChaCha8Rng::seed_from_u64`):
//!
//! 1. **k-means++ seeding** (Arthur & Vassilvitskii 2007): the first centroid is row
//!    `rng.random_range(0..n)`; each further centroid draws `u = rng.random::<f64>() × Σ D²` and
//!    takes the first row whose running sum of `D²` (squared distance to the nearest centroid so
//!    far, summed in row order) exceeds `u`. When every row coincides with a chosen centroid
//!    (`Σ D² = 0`) the draw is still made and the first centroid's row is taken again: such a
//!    duplicate centroid ends with no members.
//! 2. **Lloyd iterations**: assign every row to its nearest centroid (squared Euclidean distance;
//!    a tie goes to the lower centroid index; for k = 2 the comparison is made as
//!    `2 (x − c₀)·(c₁ − c₀) > ‖c₁ − c₀‖²`, the same test with one product instead of two
//!    distances), move each centroid to the mean of its rows (summed
//!    in `f64` in row order; a centroid without rows stays where it is), and stop when no centroid
//!    moved by more than `tolerance` (Euclidean distance, in the rows' units) or after `max_iter`
//!    iterations.
//! 3. The returned labels are the nearest centroid of each row for the final centroids (so they
//!    equal [`KMeansModel::predict`]), and the inertia is the sum of those squared distances.
//!
//! Everything depends only on the rows, their order and the parameters: the same input gives
//! bit-identical output on every machine and thread count (the kernel is single-threaded; the
//! engine parallelises across images; the AVX2 build uses [`crate::lanes`]' twins, which give the
//! portable bits).
//!
//! ```
//! use ftirflow_operators::kmeans::KMeans;
//! // Two obvious groups in 2-D.
//! let rows = [0.0f32, 0.1, 0.1, 0.0, 5.0, 5.1, 5.1, 5.0, 0.05, 0.05];
//! let model = KMeans::params(2).seed(7).check().unwrap().fit(&rows, 2).unwrap();
//! let l = model.labels();
//! assert!(l[0] == l[1] && l[1] == l[4]); // the points near (0, 0)
//! assert!(l[2] == l[3] && l[2] != l[0]); // the points near (5, 5)
//! assert_eq!(model.predict(&[4.9, 5.0]), l[2] as usize);
//! assert_eq!(model.counts()[l[0] as usize], 3);
//! ```
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::OpError;
use crate::lanes::{avx2, Lanes};

const OPERATOR: &str = "kmeans";

/// Unchecked K-means parameters (builder); [`KMeansParams::check`] validates them.
#[derive(Debug, Clone, PartialEq)]
pub struct KMeansParams {
    k: usize,
    max_iter: usize,
    tolerance: f64,
    seed: u64,
}

impl KMeansParams {
    /// Parameters for `k` clusters with the defaults: `max_iter` 100, `tolerance` 1e-6, `seed` 0.
    pub fn new(k: usize) -> Self {
        Self { k, max_iter: 100, tolerance: 1e-6, seed: 0 }
    }

    /// Most Lloyd iterations (default 100, at least 1).
    pub fn max_iter(mut self, max_iter: usize) -> Self {
        self.max_iter = max_iter;
        self
    }

    /// Convergence threshold: iterations stop when no centroid moves farther than this
    /// (Euclidean distance; default 1e-6, finite and ≥ 0; 0 runs until the labels are stable).
    pub fn tolerance(mut self, tolerance: f64) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// Seed of the k-means++ draws (default 0).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Validates the parameters: `k ≥ 1`, `max_iter ≥ 1`, `tolerance` finite and ≥ 0.
    pub fn check(&self) -> Result<KMeans, OpError> {
        if self.k == 0 {
            return Err(OpError::config(OPERATOR, "k must be at least 1"));
        }
        if self.max_iter == 0 {
            return Err(OpError::config(OPERATOR, "max_iter must be at least 1"));
        }
        if !self.tolerance.is_finite() || self.tolerance < 0.0 {
            return Err(OpError::config(OPERATOR, format!("tolerance must be finite and ≥ 0 (got {})", self.tolerance)));
        }
        Ok(KMeans { params: self.clone() })
    }
}

/// Checked K-means parameters, ready to fit.
#[derive(Debug, Clone, PartialEq)]
pub struct KMeans {
    params: KMeansParams,
}

impl KMeans {
    /// The parameter builder for `k` clusters (linfa style: `KMeans::params(2).seed(1).check()`).
    pub fn params(k: usize) -> KMeansParams {
        KMeansParams::new(k)
    }

    /// Number of clusters.
    pub fn k(&self) -> usize {
        self.params.k
    }

    /// Most Lloyd iterations.
    pub fn max_iter(&self) -> usize {
        self.params.max_iter
    }

    /// Convergence threshold (Euclidean centroid shift).
    pub fn tolerance(&self) -> f64 {
        self.params.tolerance
    }

    /// Seed of the k-means++ draws.
    pub fn seed(&self) -> u64 {
        self.params.seed
    }

    /// Fits `rows` (row-major, `dim` values per row). Errors: `dim` 0 or not dividing the length
    /// (a caller's bug, [`OpError::Internal`]), no rows or a non-finite value ([`OpError::Data`];
    /// callers exclude such rows first). Fewer distinct rows than `k` is not an error: the surplus
    /// centroids duplicate chosen ones and end with no members ([`KMeansModel::counts`] 0).
    pub fn fit(&self, rows: &[f32], dim: usize) -> Result<KMeansModel, OpError> {
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            // SAFETY: `avx2()` just detected AVX2 at run time, the only requirement of `fit_avx2`.
            return unsafe { self.fit_avx2(rows, dim) };
        }
        self.fit_inline::<false>(rows, dim)
    }

    /// [`KMeans::fit`] compiled for AVX2: the same lane-by-lane arithmetic as the portable build
    /// (no fused multiply–add), so the bytes are identical, on twice as wide vectors.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn fit_avx2(&self, rows: &[f32], dim: usize) -> Result<KMeansModel, OpError> {
        self.fit_inline::<true>(rows, dim)
    }

    #[inline(always)]
    fn fit_inline<const AVX2: bool>(&self, rows: &[f32], dim: usize) -> Result<KMeansModel, OpError> {
        if dim == 0 || !rows.len().is_multiple_of(dim) {
            return Err(OpError::internal(OPERATOR, format!("{} values do not split into rows of {dim}", rows.len())));
        }
        let n = rows.len() / dim;
        if n == 0 {
            return Err(OpError::data(OPERATOR, "no rows to cluster"));
        }
        if let Some(i) = rows.iter().position(|v| !v.is_finite()) {
            return Err(OpError::data(OPERATOR, format!("row {} has a non-finite value", i / dim)));
        }
        let k = self.params.k;
        let row = |i: usize| &rows[i * dim..(i + 1) * dim];

        // 1. k-means++ seeding.
        let mut rng = ChaCha8Rng::seed_from_u64(self.params.seed);
        let mut centroids = vec![0.0f64; k * dim];
        let first = rng.random_range(0..n);
        set_centroid(&mut centroids[..dim], row(first));
        let mut d2: Vec<f64> = (0..n).map(|i| Lanes::<AVX2>::sq_dist(row(i), &centroids[..dim])).collect();
        for j in 1..k {
            let total: f64 = d2.iter().sum();
            let u = rng.random::<f64>() * total;
            let pick = if total > 0.0 {
                let mut cum = 0.0;
                let mut pick = None;
                for (i, &d) in d2.iter().enumerate() {
                    cum += d;
                    if cum > u {
                        pick = Some(i);
                        break;
                    }
                }
                // Rounding can leave `u` at the very top: take the last row with weight.
                pick.or_else(|| d2.iter().rposition(|&d| d > 0.0)).unwrap_or(first)
            } else {
                first
            };
            let c = &mut centroids[j * dim..(j + 1) * dim];
            set_centroid(c, row(pick));
            for (i, d) in d2.iter_mut().enumerate() {
                let nd = Lanes::<AVX2>::sq_dist(row(i), c);
                if nd < *d {
                    *d = nd;
                }
            }
        }

        // 2. Lloyd iterations.
        let tol2 = self.params.tolerance * self.params.tolerance;
        let mut labels = vec![0u32; n];
        let mut sums = vec![0.0f64; k * dim];
        let mut counts = vec![0usize; k];
        let mut iterations = 0;
        let mut converged = false;
        while iterations < self.params.max_iter {
            iterations += 1;
            sums.fill(0.0);
            counts.fill(0);
            if k == 2 {
                // Nearest of two: one centred product per row, and the row is summed while it is
                // in L1.
                let (c0, c1) = centroids.split_at(dim);
                let w: Vec<f64> = c1.iter().zip(c0).map(|(a, b)| a - b).collect();
                let half = 0.5 * w.iter().map(|v| v * v).sum::<f64>();
                for (i, l) in labels.iter_mut().enumerate() {
                    let r = row(i);
                    let j = usize::from(Lanes::<AVX2>::project(r, c0, &w) > half);
                    *l = j as u32;
                    counts[j] += 1;
                    for (s, &v) in sums[j * dim..(j + 1) * dim].iter_mut().zip(r) {
                        *s += f64::from(v);
                    }
                }
            } else {
                for (i, l) in labels.iter_mut().enumerate() {
                    *l = nearest::<AVX2>(row(i), &centroids, k, dim).0 as u32;
                }
                for (i, &l) in labels.iter().enumerate() {
                    let l = l as usize;
                    counts[l] += 1;
                    for (s, &v) in sums[l * dim..(l + 1) * dim].iter_mut().zip(row(i)) {
                        *s += f64::from(v);
                    }
                }
            }
            let mut max_shift2 = 0.0f64;
            for j in 0..k {
                if counts[j] == 0 {
                    continue;
                }
                let inv = counts[j] as f64;
                let mut shift2 = 0.0;
                for (c, &s) in centroids[j * dim..(j + 1) * dim].iter_mut().zip(&sums[j * dim..(j + 1) * dim]) {
                    let new = s / inv;
                    let d = new - *c;
                    shift2 += d * d;
                    *c = new;
                }
                max_shift2 = max_shift2.max(shift2);
            }
            if max_shift2 <= tol2 {
                converged = true;
                break;
            }
        }

        // 3. Final labels, counts and inertia for the final centroids.
        counts.fill(0);
        let mut inertia = 0.0;
        for (i, l) in labels.iter_mut().enumerate() {
            let (j, d) = nearest::<AVX2>(row(i), &centroids, k, dim);
            *l = j as u32;
            counts[j] += 1;
            inertia += d;
        }
        Ok(KMeansModel { k, dim, centroids, labels, counts, inertia, iterations, converged })
    }
}

/// A fitted K-means: centroids (`k × dim`, row-major, `f64`), the label of every fitted row, the
/// cluster sizes, the inertia and how the iterations ended.
#[derive(Debug, Clone, PartialEq)]
pub struct KMeansModel {
    k: usize,
    dim: usize,
    centroids: Vec<f64>,
    labels: Vec<u32>,
    counts: Vec<usize>,
    inertia: f64,
    iterations: usize,
    converged: bool,
}

impl KMeansModel {
    /// Number of clusters.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Values per row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// All centroids, row-major (`k × dim`).
    pub fn centroids(&self) -> &[f64] {
        &self.centroids
    }

    /// Centroid `j`.
    pub fn centroid(&self, j: usize) -> &[f64] {
        &self.centroids[j * self.dim..(j + 1) * self.dim]
    }

    /// The cluster of each fitted row (in row order).
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// Number of fitted rows in each cluster.
    pub fn counts(&self) -> &[usize] {
        &self.counts
    }

    /// Sum of squared distances of the fitted rows to their centroids.
    pub fn inertia(&self) -> f64 {
        self.inertia
    }

    /// Lloyd iterations run.
    pub fn iterations(&self) -> usize {
        self.iterations
    }

    /// True when the centroids moved less than the tolerance before `max_iter` ran out.
    pub fn converged(&self) -> bool {
        self.converged
    }

    /// The nearest centroid of `row` (ties to the lower index) and its squared distance.
    ///
    /// # Panics
    /// When `row.len() != dim` (a programming error).
    pub fn nearest(&self, row: &[f32]) -> (usize, f64) {
        if avx2() {
            self.nearest_with::<true>(row)
        } else {
            self.nearest_with::<false>(row)
        }
    }

    /// [`KMeansModel::nearest`] with the reductions chosen by the caller (hot loops that were
    /// compiled for AVX2 inline it).
    #[inline(always)]
    pub(crate) fn nearest_with<const AVX2: bool>(&self, row: &[f32]) -> (usize, f64) {
        assert_eq!(row.len(), self.dim, "row length must equal the fitted dimension");
        nearest::<AVX2>(row, &self.centroids, self.k, self.dim)
    }

    /// The nearest centroid of `row` (ties to the lower index).
    ///
    /// # Panics
    /// When `row.len() != dim` (a programming error).
    pub fn predict(&self, row: &[f32]) -> usize {
        self.nearest(row).0
    }
}

fn set_centroid(c: &mut [f64], row: &[f32]) {
    for (c, &v) in c.iter_mut().zip(row) {
        *c = f64::from(v);
    }
}

/// The nearest of `k` centroids (ties to the lower index) and its squared distance.
#[inline(always)]
fn nearest<const AVX2: bool>(row: &[f32], centroids: &[f64], k: usize, dim: usize) -> (usize, f64) {
    let mut best = (0, Lanes::<AVX2>::sq_dist(row, &centroids[..dim]));
    for j in 1..k {
        let d = Lanes::<AVX2>::sq_dist(row, &centroids[j * dim..(j + 1) * dim]);
        if d < best.1 {
            best = (j, d);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{any, prop_assert, prop_assert_eq, proptest, ProptestConfig};
    use rand::Rng;

    /// The algorithm of the module docs written as plainly as possible: sequential `f64` sums, no
    /// lanes, no shared helpers.
    #[allow(clippy::needless_range_loop)]
    fn reference(rows: &[f32], dim: usize, k: usize, max_iter: usize, tol: f64, seed: u64) -> (Vec<f64>, Vec<u32>, f64, usize) {
        let n = rows.len() / dim;
        let pt = |i: usize| -> Vec<f64> { rows[i * dim..(i + 1) * dim].iter().map(|&v| v as f64).collect() };
        let dist = |a: &[f64], b: &[f64]| -> f64 { a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum() };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let first = rng.random_range(0..n);
        let mut cents: Vec<Vec<f64>> = vec![pt(first)];
        while cents.len() < k {
            let d2: Vec<f64> = (0..n).map(|i| cents.iter().map(|c| dist(&pt(i), c)).fold(f64::INFINITY, f64::min)).collect();
            let total: f64 = d2.iter().sum();
            let u = rng.random::<f64>() * total;
            let mut pick = first;
            if total > 0.0 {
                let mut cum = 0.0;
                let mut found = false;
                for i in 0..n {
                    cum += d2[i];
                    if cum > u {
                        pick = i;
                        found = true;
                        break;
                    }
                }
                if !found {
                    pick = (0..n).rev().find(|&i| d2[i] > 0.0).unwrap();
                }
            }
            cents.push(pt(pick));
        }
        let assign = |cents: &Vec<Vec<f64>>| -> Vec<u32> {
            (0..n)
                .map(|i| {
                    let p = pt(i);
                    let mut best = 0;
                    for j in 1..k {
                        if dist(&p, &cents[j]) < dist(&p, &cents[best]) {
                            best = j;
                        }
                    }
                    best as u32
                })
                .collect()
        };
        let mut it = 0;
        while it < max_iter {
            it += 1;
            let labels = assign(&cents);
            let mut moved = 0.0f64;
            for j in 0..k {
                let members: Vec<usize> = (0..n).filter(|&i| labels[i] as usize == j).collect();
                if members.is_empty() {
                    continue;
                }
                let mut mean = vec![0.0; dim];
                for &i in &members {
                    for d in 0..dim {
                        mean[d] += rows[i * dim + d] as f64;
                    }
                }
                for m in &mut mean {
                    *m /= members.len() as f64;
                }
                moved = moved.max(dist(&mean, &cents[j]));
                cents[j] = mean;
            }
            if moved <= tol * tol {
                break;
            }
        }
        let labels = assign(&cents);
        let inertia = (0..n).map(|i| dist(&pt(i), &cents[labels[i] as usize])).sum();
        (cents.concat(), labels, inertia, it)
    }

    fn blobs(n: usize, dim: usize, centers: &[f32], spread: f32, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut out = Vec::with_capacity(n * dim);
        for i in 0..n {
            let c = centers[i % centers.len()];
            for _ in 0..dim {
                out.push(c + spread * (rng.random::<f32>() - 0.5));
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        /// Fast kernel == naive reference on random input (labels and iterations exactly,
        /// centroids and inertia to rounding).
        #[test]
        fn matches_naive_reference(
            dim in 1usize..20,
            n in 1usize..80,
            k in 1usize..5,
            seed in any::<u64>(),
            data_seed in any::<u64>(),
            clustered in any::<bool>(),
            max_iter in 1usize..30,
        ) {
            let rows = if clustered {
                blobs(n, dim, &[-3.0, 0.5, 4.0], 1.5, data_seed)
            } else {
                blobs(n, dim, &[0.0], 2.0, data_seed)
            };
            let model = KMeans::params(k).seed(seed).max_iter(max_iter).tolerance(1e-9).check().unwrap().fit(&rows, dim).unwrap();
            let (cents, labels, inertia, it) = reference(&rows, dim, k, max_iter, 1e-9, seed);
            prop_assert_eq!(model.labels(), &labels[..]);
            prop_assert_eq!(model.iterations(), it);
            for (a, b) in model.centroids().iter().zip(&cents) {
                prop_assert!((a - b).abs() <= 1e-9 * (1.0 + b.abs()), "centroid {} vs {}", a, b);
            }
            prop_assert!((model.inertia() - inertia).abs() <= 1e-9 * (1.0 + inertia));
            let counted: usize = model.counts().iter().sum();
            prop_assert_eq!(counted, n);
            for i in 0..n {
                prop_assert_eq!(model.predict(&rows[i * dim..(i + 1) * dim]), labels[i] as usize);
            }
        }

        /// Same input and seed: bit-identical output.
        #[test]
        fn deterministic_for_a_seed(seed in any::<u64>(), data_seed in any::<u64>()) {
            let rows = blobs(200, 7, &[0.0, 1.0], 1.0, data_seed);
            let km = KMeans::params(2).seed(seed).check().unwrap();
            prop_assert_eq!(km.fit(&rows, 7).unwrap(), km.fit(&rows, 7).unwrap());
        }
    }

    #[test]
    fn finds_planted_clusters() {
        let rows = blobs(3000, 50, &[0.0, 1.0, 3.0], 0.2, 11);
        let model = KMeans::params(3).seed(5).check().unwrap().fit(&rows, 50).unwrap();
        assert!(model.converged());
        let mut counts = model.counts().to_vec();
        counts.sort();
        assert_eq!(counts, vec![1000, 1000, 1000]);
        for i in 0..3000 {
            assert_eq!(model.labels()[i], model.labels()[i % 3]);
        }
    }

    #[test]
    fn identical_rows_leave_surplus_clusters_empty() {
        let rows = vec![1.5f32; 4 * 10];
        let model = KMeans::params(3).check().unwrap().fit(&rows, 4).unwrap();
        assert_eq!(model.counts(), &[10, 0, 0]);
        assert_eq!(model.inertia(), 0.0);
        assert!(model.labels().iter().all(|&l| l == 0));
        assert_eq!(model.centroid(2), &[1.5; 4]);
    }

    #[test]
    fn bad_parameters_and_input_are_rejected() {
        assert!(KMeans::params(0).check().unwrap_err().is_config());
        assert!(KMeans::params(2).max_iter(0).check().unwrap_err().is_config());
        assert!(KMeans::params(2).tolerance(f64::NAN).check().unwrap_err().is_config());
        assert!(KMeans::params(2).tolerance(-1.0).check().unwrap_err().is_config());
        let km = KMeans::params(2).check().unwrap();
        assert!(matches!(km.fit(&[], 3), Err(OpError::Data { .. })));
        assert!(matches!(km.fit(&[1.0, 2.0, 3.0], 2), Err(OpError::Internal { .. })));
        assert!(matches!(km.fit(&[1.0, 2.0], 0), Err(OpError::Internal { .. })));
        let err = km.fit(&[1.0, 2.0, f32::NAN, 0.0], 2).unwrap_err();
        assert!(err.to_string().contains("row 1"), "{err}");
    }
}
