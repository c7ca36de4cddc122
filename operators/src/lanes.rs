//! Lane-exact reductions of an `f32` row against `f64` vectors (squared distance, centred
//! projection), shared by [`crate::kmeans`] and [`crate::segment`]: eight `f64` lanes combined in a
//! fixed order, with an AVX2 twin that gives the same bits, so results never depend on the CPU.
//!
//! Both kernels run these reductions on every spectrum of an image, several times per K-means
//! iteration; the portable loops compile to 128-bit shuffles and conversions, the AVX2 twins to
//! two 256-bit accumulators (no fused multiply–add: the portable rounding is kept).
//!
//! Lane `l` accumulates elements `l, l + 8, l + 16, …` in order; the lanes are combined as
//! `((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7))`, then the tail (the last `len % 8`
//! elements, summed in order) is added.

/// Squared Euclidean distance `Σ (row − c)²` in `f64` (portable).
#[inline(always)]
pub fn sq_dist(row: &[f32], c: &[f64]) -> f64 {
    debug_assert_eq!(row.len(), c.len());
    const L: usize = 8;
    let mut acc = [0.0f64; L];
    let rows = row.chunks_exact(L);
    let cs = c.chunks_exact(L);
    let (rr, cr) = (rows.remainder(), cs.remainder());
    for (r, c) in rows.zip(cs) {
        for l in 0..L {
            let d = f64::from(r[l]) - c[l];
            acc[l] += d * d;
        }
    }
    let mut tail = 0.0;
    for (&r, &c) in rr.iter().zip(cr) {
        let d = f64::from(r) - c;
        tail += d * d;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Centred projection `Σ (row − origin) · w` in `f64` (portable).
#[inline(always)]
pub fn project(row: &[f32], origin: &[f64], w: &[f64]) -> f64 {
    debug_assert!(row.len() == origin.len() && row.len() == w.len());
    const L: usize = 8;
    let mut acc = [0.0f64; L];
    let (rows, os, ws) = (row.chunks_exact(L), origin.chunks_exact(L), w.chunks_exact(L));
    let (rr, or, wr) = (rows.remainder(), os.remainder(), ws.remainder());
    for ((r, o), w) in rows.zip(os).zip(ws) {
        for l in 0..L {
            acc[l] += (f64::from(r[l]) - o[l]) * w[l];
        }
    }
    let mut tail = 0.0;
    for ((&r, &o), &w) in rr.iter().zip(or).zip(wr) {
        tail += (f64::from(r) - o) * w;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// [`sq_dist`] on AVX2: the same bits.
///
/// # Safety
/// The CPU must support AVX2, and `c.len() ≥ row.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
pub unsafe fn sq_dist_avx2(row: &[f32], c: &[f64]) -> f64 {
    use std::arch::x86_64::*;
    debug_assert_eq!(row.len(), c.len());
    let n8 = row.len() / 8 * 8;
    let (mut lo, mut hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
    let (rp, cp) = (row.as_ptr(), c.as_ptr());
    let mut i = 0;
    while i < n8 {
        // SAFETY: i + 8 ≤ row.len() ≤ c.len().
        let r = _mm256_loadu_ps(rp.add(i));
        let dl = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(r)), _mm256_loadu_pd(cp.add(i)));
        let dh = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps::<1>(r)), _mm256_loadu_pd(cp.add(i + 4)));
        lo = _mm256_add_pd(lo, _mm256_mul_pd(dl, dl));
        hi = _mm256_add_pd(hi, _mm256_mul_pd(dh, dh));
        i += 8;
    }
    let mut tail = 0.0;
    for j in n8..row.len() {
        let d = f64::from(row[j]) - c[j];
        tail += d * d;
    }
    combine(_mm256_add_pd(lo, hi)) + tail
}

/// [`project`] on AVX2: the same bits.
///
/// # Safety
/// The CPU must support AVX2, and `origin` and `w` must be at least as long as `row`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
pub unsafe fn project_avx2(row: &[f32], origin: &[f64], w: &[f64]) -> f64 {
    use std::arch::x86_64::*;
    debug_assert!(row.len() == origin.len() && row.len() == w.len());
    let n8 = row.len() / 8 * 8;
    let (mut lo, mut hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
    let (rp, op, wp) = (row.as_ptr(), origin.as_ptr(), w.as_ptr());
    let mut i = 0;
    while i < n8 {
        // SAFETY: i + 8 ≤ row.len() ≤ origin.len(), w.len().
        let r = _mm256_loadu_ps(rp.add(i));
        let dl = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(r)), _mm256_loadu_pd(op.add(i)));
        let dh = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps::<1>(r)), _mm256_loadu_pd(op.add(i + 4)));
        lo = _mm256_add_pd(lo, _mm256_mul_pd(dl, _mm256_loadu_pd(wp.add(i))));
        hi = _mm256_add_pd(hi, _mm256_mul_pd(dh, _mm256_loadu_pd(wp.add(i + 4))));
        i += 8;
    }
    let mut tail = 0.0;
    for j in n8..row.len() {
        tail += (f64::from(row[j]) - origin[j]) * w[j];
    }
    combine(_mm256_add_pd(lo, hi)) + tail
}

/// `((s0 + s1) + (s2 + s3))` of `s = lanes 0–3 + lanes 4–7`.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn combine(s: std::arch::x86_64::__m256d) -> f64 {
    let mut v = [0.0f64; 4];
    std::arch::x86_64::_mm256_storeu_pd(v.as_mut_ptr(), s);
    (v[0] + v[1]) + (v[2] + v[3])
}

/// Which build of the reductions a kernel was compiled for (a const generic picks it, so the
/// hot loops inline the right one).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lanes<const AVX2: bool>;

impl<const AVX2: bool> Lanes<AVX2> {
    /// [`sq_dist`] or its AVX2 twin.
    #[inline(always)]
    pub(crate) fn sq_dist(row: &[f32], c: &[f64]) -> f64 {
        assert!(c.len() >= row.len());
        #[cfg(target_arch = "x86_64")]
        if AVX2 {
            // SAFETY: `Lanes::<true>` is only instantiated behind a run-time `avx2()` check
            // (`KMeans::fit`, `KMeansModel::nearest`, `Segmenter::segment_parts_visiting`, the
            // tests), and `c[..row.len()]` is exactly as long as `row` (asserted above).
            return unsafe { sq_dist_avx2(row, &c[..row.len()]) };
        }
        sq_dist(row, &c[..row.len()])
    }

    /// [`project`] or its AVX2 twin.
    #[inline(always)]
    pub(crate) fn project(row: &[f32], origin: &[f64], w: &[f64]) -> f64 {
        assert!(origin.len() >= row.len() && w.len() >= row.len());
        #[cfg(target_arch = "x86_64")]
        if AVX2 {
            // SAFETY: AVX2 was detected, as for `sq_dist` above; `origin` and `w` are cut to
            // `row.len()` (their lengths asserted above).
            return unsafe { project_avx2(row, &origin[..row.len()], &w[..row.len()]) };
        }
        project(row, &origin[..row.len()], &w[..row.len()])
    }
}

/// Whether this CPU runs the AVX2 twins.
#[inline]
pub(crate) fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn plain_dist(row: &[f32], c: &[f64]) -> f64 {
        row.iter().zip(c).map(|(&r, &c)| (r as f64 - c).powi(2)).sum()
    }

    proptest! {
        /// The AVX2 twins give the portable bits; both equal the plain sums to rounding.
        #[test]
        fn twins_agree_bit_for_bit(len in 0usize..140, seed in any::<u64>()) {
            use rand::{Rng, SeedableRng};
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let row: Vec<f32> = (0..len).map(|_| rng.random_range(-3.0f32..3.0)).collect();
            let c: Vec<f64> = (0..len).map(|_| rng.random_range(-3.0..3.0)).collect();
            let w: Vec<f64> = (0..len).map(|_| rng.random_range(-3.0..3.0)).collect();
            let d = sq_dist(&row, &c);
            let p = project(&row, &c, &w);
            let plain_p: f64 = row.iter().zip(&c).zip(&w).map(|((&r, &c), &w)| (r as f64 - c) * w).sum();
            prop_assert!((d - plain_dist(&row, &c)).abs() <= 1e-12 * (1.0 + d));
            prop_assert!((p - plain_p).abs() <= 1e-12 * (1.0 + plain_p.abs() + d));
            if avx2() {
                prop_assert_eq!(Lanes::<true>::sq_dist(&row, &c).to_bits(), d.to_bits());
                prop_assert_eq!(Lanes::<true>::project(&row, &c, &w).to_bits(), p.to_bits());
            }
            prop_assert_eq!(Lanes::<false>::sq_dist(&row, &c).to_bits(), d.to_bits());
        }
    }

    #[test]
    fn lane_distance_equals_plain_sum_on_exact_values() {
        let row: Vec<f32> = (0..19).map(|i| i as f32 * 0.5).collect();
        let c: Vec<f64> = (0..19).map(|i| i as f64 * 0.25).collect();
        assert_eq!(sq_dist(&row, &c), plain_dist(&row, &c));
    }
}
