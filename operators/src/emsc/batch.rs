//! The fast f32 batch path of EMSC.
//!
//! With the thin QR factorization `W M = Q R` (done once, in f64), a spectrum `s` is corrected in
//! two passes over its values:
//!
//! 1. `z = (W Q)ᵀ s = Gᵀ (w² ∘ s)` with `G = M R⁻¹` — k dot products of length n, fused into one
//!    pass (k vector accumulators);
//! 2. `r = s − G z`, `corrected = reference + r / b`, and the weighted sum of squares
//!    `Σ wᵢ² rᵢ²` — one more pass, writing the output.
//!
//! Both passes read the same `G` (`W Q = W² G`, also where a weight is zero), so the model, the
//! reference, the squared weights and one spectrum in and out fit together in a 32 KiB L1 cache
//! for the usual sizes (467 points, k ≤ 8): with separate `W Q` and `G` they did not, and every
//! pass streamed the model from L2.
//!
//! The coefficients `c = R⁻¹ z` (so `b = c₀`) come from a k × k triangular product in f64. `W Q`
//! and, for unit weights, `G` have orthonormal columns, so the f32 arithmetic never subtracts
//! large, nearly cancelling terms: this is what keeps the f32 path within 1e-5 of the f64 path
//! even when the model is moderately ill-conditioned. Each spectrum is computed by the same
//! instruction sequence wherever it sits in a batch, so any split of the rows gives identical
//! bytes. On x86-64 with AVX2 and FMA (detected at run time) the loops use 8-lane vectors and
//! fused multiply–adds for up to [`MAX_SIMD_COEFFICIENTS`] model columns; otherwise a portable
//! loop computes the same formulas.

/// Largest number of model columns handled by the AVX2 kernels (more use the portable loop).
pub(crate) const MAX_SIMD_COEFFICIENTS: usize = 16;

/// Eight f32 lanes, 32-byte aligned so the model can be read with aligned vector loads.
#[repr(C, align(32))]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Lanes([f32; 8]);

/// Which loop runs the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    /// Plain Rust loops (any CPU).
    Portable,
    /// AVX2 + FMA intrinsics (x86-64, detected at run time).
    Avx2Fma,
}

impl Path {
    /// The fastest path this CPU supports for `k` model columns.
    pub(crate) fn detect(k: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if k <= MAX_SIMD_COEFFICIENTS && std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Path::Avx2Fma;
            }
        }
        let _ = k;
        Path::Portable
    }
}

/// The f32 model of one corrector, laid out for the two passes.
#[derive(Debug, Clone)]
pub(crate) struct BatchPlan {
    n: usize,
    k: usize,
    /// `G = M R⁻¹`, chunk-interleaved: chunk c, column j → `g[c * k + j]` (8 wavenumbers).
    g: Vec<Lanes>,
    /// Reference spectrum, one `Lanes` per chunk (zero-padded).
    reference: Vec<Lanes>,
    /// Squared weights, one `Lanes` per chunk (zero-padded).
    w2: Vec<Lanes>,
    /// `R⁻¹`, row-major upper triangular, f64.
    rinv: Vec<f64>,
    /// `1 / Σ wᵢ²`.
    inv_sum_w2: f64,
    path: Path,
}

impl BatchPlan {
    /// Lays out the model. `g` is column-major `n × k`, `rinv` column-major `k × k`.
    pub(crate) fn new(g: &[f64], reference: &[f64], weights: &[f64], rinv: &[f64], n: usize, k: usize) -> Self {
        let chunks = n.div_ceil(8);
        let interleave = |m: &[f64]| {
            let mut out = vec![Lanes::default(); chunks * k];
            for j in 0..k {
                for i in 0..n {
                    out[(i / 8) * k + j].0[i % 8] = m[j * n + i] as f32;
                }
            }
            out
        };
        let lanes = |v: &mut dyn Iterator<Item = f32>| {
            let mut out = vec![Lanes::default(); chunks];
            for (i, x) in v.enumerate() {
                out[i / 8].0[i % 8] = x;
            }
            out
        };
        let mut rinv_rows = vec![0.0; k * k];
        for i in 0..k {
            for j in 0..k {
                rinv_rows[i * k + j] = rinv[j * k + i];
            }
        }
        let sum_w2: f64 = weights.iter().map(|w| w * w).sum();
        Self {
            n,
            k,
            g: interleave(g),
            reference: lanes(&mut reference.iter().map(|&x| x as f32)),
            w2: lanes(&mut weights.iter().map(|&w| (w * w) as f32)),
            rinv: rinv_rows,
            inv_sum_w2: 1.0 / sum_w2,
            path: Path::detect(k),
        }
    }

    /// The loop this plan uses.
    pub(crate) fn path(&self) -> Path {
        self.path
    }

    /// Forces a path (tests compare the portable and the SIMD loops).
    #[cfg(test)]
    pub(crate) fn with_path(mut self, path: Path) -> Self {
        self.path = path;
        self
    }

    /// Corrects `rows` spectra (lengths are checked by the caller).
    pub(crate) fn run(&self, values: &[f32], rows: usize, out: &mut [f32], coefficients: Option<&mut [f32]>, rms: &mut [f32]) {
        let (n, k) = (self.n, self.k);
        assert!(values.len() == rows * n && out.len() == rows * n && rms.len() == rows);
        if let Some(c) = coefficients.as_deref() {
            assert_eq!(c.len(), rows * k);
        }
        if n == 0 || rows == 0 {
            return;
        }
        match self.path {
            #[cfg(target_arch = "x86_64")]
            Path::Avx2Fma => {
                macro_rules! dispatch {
                    ($($kk:literal)*) => {
                        match k {
                            $($kk => {
                                // SAFETY: `Path::detect` picks `Avx2Fma` only when AVX2 and FMA were
                                // detected at run time (tests force only `Portable`); the lengths
                                // of `values`, `out`, `rms` and `coefficients` were asserted above
                                // for `k` columns, and this arm runs with `K = k`.
                                unsafe { avx2::run::<$kk>(self, values, rows, out, coefficients, rms) }
                            })*
                            _ => self.run_portable(values, rows, out, coefficients, rms),
                        }
                    };
                }
                dispatch!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
            }
            _ => self.run_portable(values, rows, out, coefficients, rms),
        }
    }

    /// `c = R⁻¹ z` in f64; returns `b = c₀` and writes `c` when asked.
    #[inline(always)]
    fn coefficients(&self, z: &[f32], c: &mut [f64]) -> f64 {
        let k = self.k;
        for (i, (ci, row)) in c.iter_mut().zip(self.rinv.chunks_exact(k)).enumerate() {
            *ci = row[i..].iter().zip(&z[i..]).map(|(r, zj)| r * *zj as f64).fold(0.0f64, |acc, x| acc + x);
        }
        c[0]
    }

    /// Decides whether a row can be corrected: finite projections and a usable `b`. Returns
    /// `1/b` as f32 when it can.
    #[inline(always)]
    fn inverse_b(z: &[f32], b: f64) -> Option<f32> {
        if !z.iter().all(|x| x.is_finite()) || !b.is_normal() {
            return None;
        }
        let inv = (1.0 / b) as f32;
        (inv.is_finite() && inv != 0.0 && (b as f32).is_normal()).then_some(inv)
    }

    /// Fills a row that cannot be corrected with NaN.
    #[inline(always)]
    fn nan_row(out: &mut [f32], coefficients: Option<&mut [f32]>, rms: &mut f32) {
        out.fill(f32::NAN);
        if let Some(c) = coefficients {
            c.fill(f32::NAN);
        }
        *rms = f32::NAN;
    }

    /// Writes the coefficients and the residual RMS of a corrected row.
    #[inline(always)]
    fn finish_row(&self, c: &[f64], ss: f32, coefficients: Option<&mut [f32]>, rms: &mut f32) {
        if let Some(dst) = coefficients {
            for (d, x) in dst.iter_mut().zip(c) {
                *d = *x as f32;
            }
        }
        *rms = (ss as f64 * self.inv_sum_w2).sqrt() as f32;
    }

    /// The portable loop: the same formulas with 8-lane arrays and separate multiply and add.
    fn run_portable(&self, values: &[f32], rows: usize, out: &mut [f32], mut coefficients: Option<&mut [f32]>, rms: &mut [f32]) {
        let (n, k) = (self.n, self.k);
        let chunks = n.div_ceil(8);
        let mut acc = vec![[0.0f32; 8]; k];
        let mut z = vec![0.0f32; k];
        let mut c = vec![0.0f64; k];
        for row in 0..rows {
            let s = &values[row * n..(row + 1) * n];
            let o = &mut out[row * n..(row + 1) * n];
            let coef = coefficients.as_deref_mut().map(|cc| &mut cc[row * k..(row + 1) * k]);
            for a in acc.iter_mut() {
                *a = [0.0; 8];
            }
            for ch in 0..chunks {
                let sv = load(s, ch);
                let w2 = &self.w2[ch].0;
                let mut u = [0.0f32; 8];
                for l in 0..8 {
                    u[l] = w2[l] * sv[l];
                }
                for (j, a) in acc.iter_mut().enumerate() {
                    let g = &self.g[ch * k + j].0;
                    for l in 0..8 {
                        a[l] += g[l] * u[l];
                    }
                }
            }
            for (zj, a) in z.iter_mut().zip(&acc) {
                *zj = hsum(a);
            }
            let b = self.coefficients(&z, &mut c);
            let Some(inv_b) = Self::inverse_b(&z, b) else {
                Self::nan_row(o, coef, &mut rms[row]);
                continue;
            };
            let mut ss = [0.0f32; 8];
            for ch in 0..chunks {
                let mut t = load(s, ch);
                for (j, zj) in z.iter().enumerate() {
                    let g = &self.g[ch * k + j].0;
                    for l in 0..8 {
                        t[l] -= g[l] * zj;
                    }
                }
                let (r, w2) = (&self.reference[ch].0, &self.w2[ch].0);
                let mut corrected = [0.0f32; 8];
                for l in 0..8 {
                    corrected[l] = t[l] * inv_b + r[l];
                    ss[l] += w2[l] * t[l] * t[l];
                }
                let end = ((ch + 1) * 8).min(n);
                o[ch * 8..end].copy_from_slice(&corrected[..end - ch * 8]);
            }
            self.finish_row(&c, hsum(&ss), coef, &mut rms[row]);
        }
    }
}

/// Chunk `ch` of a spectrum as 8 lanes (zero-padded past the end).
#[inline(always)]
fn load(s: &[f32], ch: usize) -> [f32; 8] {
    let start = ch * 8;
    let end = (start + 8).min(s.len());
    let mut v = [0.0f32; 8];
    v[..end - start].copy_from_slice(&s[start..end]);
    v
}

/// Sum of 8 lanes in a fixed pairwise order.
#[inline(always)]
fn hsum(a: &[f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::BatchPlan;

    /// Sum of 8 lanes in the same pairwise order as the portable `hsum`.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA (the features this function is compiled with).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s4 = _mm_add_ps(lo, hi); // (0+4, 1+5, 2+6, 3+7)
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4)); // ((0+4)+(2+6), (1+5)+(3+7), ..)
        let s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 0b01));
        _mm_cvtss_f32(s1)
    }

    /// The whole batch with K model columns.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `values` and `out` hold `rows × n` values, `rms`
    /// `rows`, and `coefficients` (when given) `rows × K`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn run<const K: usize>(
        plan: &BatchPlan,
        values: &[f32],
        rows: usize,
        out: &mut [f32],
        mut coefficients: Option<&mut [f32]>,
        rms: &mut [f32],
    ) {
        let n = plan.n;
        debug_assert_eq!(plan.k, K);
        let full = n / 8;
        let rem = n % 8;
        let mut mask_lanes = [0i32; 8];
        for (l, m) in mask_lanes.iter_mut().enumerate() {
            *m = if l < rem { -1 } else { 0 };
        }
        let mask = _mm256_loadu_si256(mask_lanes.as_ptr() as *const __m256i);
        let g = plan.g.as_ptr() as *const f32;
        let reference = plan.reference.as_ptr() as *const f32;
        let w2 = plan.w2.as_ptr() as *const f32;
        let mut z = [0.0f32; K];
        let mut c = [0.0f64; K];
        for row in 0..rows {
            let s = values.as_ptr().add(row * n);
            let o = out.as_mut_ptr().add(row * n);
            // Pass 1: z = Gᵀ (w² ∘ s).
            let mut acc = [_mm256_setzero_ps(); K];
            for ch in 0..full {
                let u = _mm256_mul_ps(_mm256_loadu_ps(s.add(ch * 8)), _mm256_load_ps(w2.add(ch * 8)));
                let gc = g.add(ch * K * 8);
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(_mm256_load_ps(gc.add(j * 8)), u, *a);
                }
            }
            if rem > 0 {
                let u = _mm256_mul_ps(_mm256_maskload_ps(s.add(full * 8), mask), _mm256_load_ps(w2.add(full * 8)));
                let gc = g.add(full * K * 8);
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(_mm256_load_ps(gc.add(j * 8)), u, *a);
                }
            }
            for (zj, a) in z.iter_mut().zip(acc.iter()) {
                *zj = hsum(*a);
            }
            let b = plan.coefficients(&z, &mut c);
            let coef = coefficients.as_deref_mut().map(|cc| &mut cc[row * K..(row + 1) * K]);
            let Some(inv_b) = BatchPlan::inverse_b(&z, b) else {
                BatchPlan::nan_row(&mut out[row * n..(row + 1) * n], coef, &mut rms[row]);
                continue;
            };
            // Pass 2: r = s − G z, corrected = reference + r / b, Σ w² r².
            let mut zb = [_mm256_setzero_ps(); K];
            for (v, zj) in zb.iter_mut().zip(z.iter()) {
                *v = _mm256_set1_ps(*zj);
            }
            let invb = _mm256_set1_ps(inv_b);
            let mut ss = _mm256_setzero_ps();
            for ch in 0..full {
                let mut t = _mm256_loadu_ps(s.add(ch * 8));
                let gc = g.add(ch * K * 8);
                for (j, zv) in zb.iter().enumerate() {
                    t = _mm256_fnmadd_ps(_mm256_load_ps(gc.add(j * 8)), *zv, t);
                }
                let corrected = _mm256_fmadd_ps(t, invb, _mm256_load_ps(reference.add(ch * 8)));
                _mm256_storeu_ps(o.add(ch * 8), corrected);
                let wt = _mm256_mul_ps(_mm256_load_ps(w2.add(ch * 8)), t);
                ss = _mm256_fmadd_ps(wt, t, ss);
            }
            if rem > 0 {
                let mut t = _mm256_maskload_ps(s.add(full * 8), mask);
                let gc = g.add(full * K * 8);
                for (j, zv) in zb.iter().enumerate() {
                    t = _mm256_fnmadd_ps(_mm256_load_ps(gc.add(j * 8)), *zv, t);
                }
                let corrected = _mm256_fmadd_ps(t, invb, _mm256_load_ps(reference.add(full * 8)));
                _mm256_maskstore_ps(o.add(full * 8), mask, corrected);
                let wt = _mm256_mul_ps(_mm256_load_ps(w2.add(full * 8)), t);
                ss = _mm256_fmadd_ps(wt, t, ss);
            }
            plan.finish_row(&c, hsum(ss), coef, &mut rms[row]);
        }
    }
}
