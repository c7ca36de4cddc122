//! Small dense f64 linear algebra for the EMSC model matrix (a few hundred to a few thousand rows,
//! a handful of columns): Householder QR, the inverse of a triangular factor, and a one-sided
//! Jacobi SVD used for the conditioning check and for the principal components of paraffin.
//!
//! Matrices are column-major `Vec<f64>` (`a[col * rows + row]`); the sizes here are far too small
//! for a general-purpose solver to pay for its build time.

/// Dot product in plain sequential order.
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Euclidean norm, scaled so that huge or tiny entries neither overflow nor underflow.
pub(crate) fn norm(a: &[f64]) -> f64 {
    let scale = a.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    if scale == 0.0 || !scale.is_finite() {
        return scale;
    }
    scale * a.iter().map(|x| (x / scale) * (x / scale)).sum::<f64>().sqrt()
}

/// Thin QR factorization `A = Q R` of a column-major `n × k` matrix (`n ≥ k`).
#[derive(Debug, Clone)]
pub(crate) struct Qr {
    /// `n × k` with orthonormal columns (column-major).
    pub q: Vec<f64>,
    /// `k × k` upper triangular (column-major).
    pub r: Vec<f64>,
}

/// Householder QR of the column-major `n × k` matrix `a` (`n ≥ k`). Columns that are zero below
/// the diagonal leave a zero on the diagonal of `R` (the caller checks the conditioning).
pub(crate) fn householder_qr(a: &[f64], n: usize, k: usize) -> Qr {
    assert!(n >= k && a.len() == n * k, "householder_qr needs n >= k");
    let mut a = a.to_vec();
    // Householder vectors v_j (length n - j) with H_j = I - beta_j v_j v_jᵀ.
    let mut reflectors: Vec<(Vec<f64>, f64)> = Vec::with_capacity(k);
    for j in 0..k {
        let col = &a[j * n + j..(j + 1) * n];
        let nrm = norm(col);
        if nrm == 0.0 {
            reflectors.push((vec![0.0; n - j], 0.0));
            continue;
        }
        let alpha = if col[0] >= 0.0 { -nrm } else { nrm };
        let mut v = col.to_vec();
        v[0] -= alpha;
        let vv = dot(&v, &v);
        let beta = if vv > 0.0 { 2.0 / vv } else { 0.0 };
        for c in j..k {
            let target = &mut a[c * n + j..(c + 1) * n];
            let t = beta * dot(&v, target);
            for (x, vi) in target.iter_mut().zip(&v) {
                *x -= t * vi;
            }
        }
        reflectors.push((v, beta));
    }
    let mut r = vec![0.0; k * k];
    for c in 0..k {
        for row in 0..=c {
            r[c * k + row] = a[c * n + row];
        }
    }
    // Q = H_0 H_1 … H_{k-1} [I_k; 0]
    let mut q = vec![0.0; n * k];
    for c in 0..k {
        q[c * n + c] = 1.0;
    }
    for j in (0..k).rev() {
        let (v, beta) = &reflectors[j];
        if *beta == 0.0 {
            continue;
        }
        for c in 0..k {
            let target = &mut q[c * n + j..(c + 1) * n];
            let t = beta * dot(v, target);
            for (x, vi) in target.iter_mut().zip(v) {
                *x -= t * vi;
            }
        }
    }
    Qr { q, r }
}

/// Inverse of a column-major `k × k` upper triangular matrix with a non-zero diagonal.
pub(crate) fn upper_inverse(r: &[f64], k: usize) -> Vec<f64> {
    let mut inv = vec![0.0; k * k];
    for col in 0..k {
        // Solve R x = e_col by back substitution; x is column `col` of the inverse.
        for row in (0..=col).rev() {
            let mut s = if row == col { 1.0 } else { 0.0 };
            for j in row + 1..=col {
                s -= r[j * k + row] * inv[col * k + j];
            }
            inv[col * k + row] = s / r[row * k + row];
        }
    }
    inv
}

/// Singular values (descending) and right singular vectors (column-major `k × k`, same order) of
/// the column-major `m × k` matrix `b`, by one-sided (Hestenes) Jacobi rotations. Accurate to
/// f64 rounding relative to each singular value's own size, which is what a condition check needs.
pub(crate) fn jacobi_svd(b: &[f64], m: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(b.len(), m * k);
    let mut u = b.to_vec();
    let mut v = vec![0.0; k * k];
    for c in 0..k {
        v[c * k + c] = 1.0;
    }
    for _sweep in 0..80 {
        let mut rotated = false;
        for p in 0..k {
            for q in p + 1..k {
                let (up, uq) = (&u[p * m..(p + 1) * m], &u[q * m..(q + 1) * m]);
                let alpha = dot(up, up);
                let beta = dot(uq, uq);
                let gamma = dot(up, uq);
                if gamma == 0.0 || gamma.abs() <= 1e-15 * (alpha * beta).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                rotate(&mut u, m, p, q, c, s);
                rotate(&mut v, k, p, q, c, s);
            }
        }
        if !rotated {
            break;
        }
    }
    let mut order: Vec<usize> = (0..k).collect();
    let sig: Vec<f64> = (0..k).map(|c| norm(&u[c * m..(c + 1) * m])).collect();
    order.sort_by(|&a, &b| sig[b].total_cmp(&sig[a]).then(a.cmp(&b)));
    let sigma = order.iter().map(|&c| sig[c]).collect();
    let mut vs = vec![0.0; k * k];
    for (dst, &src) in order.iter().enumerate() {
        vs[dst * k..(dst + 1) * k].copy_from_slice(&v[src * k..(src + 1) * k]);
    }
    (sigma, vs)
}

/// Applies the plane rotation `(c, s)` to columns `p` and `q` of a column-major matrix with
/// `rows` rows.
fn rotate(a: &mut [f64], rows: usize, p: usize, q: usize, c: f64, s: f64) {
    let (left, right) = a.split_at_mut(q * rows);
    let ap = &mut left[p * rows..(p + 1) * rows];
    let aq = &mut right[..rows];
    for (x, y) in ap.iter_mut().zip(aq.iter_mut()) {
        let (xp, xq) = (*x, *y);
        *x = c * xp - s * xq;
        *y = s * xp + c * xq;
    }
}

/// A deterministic pseudo-random number in `[-1, 1)` (SplitMix64), so that start vectors do not
/// depend on a random-number crate or on the platform.
pub(crate) fn splitmix(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
}

/// Orthonormalizes the columns of the column-major `rows × cols` matrix in place (modified
/// Gram–Schmidt, twice for stability). A column that vanishes (the data has lower rank) is
/// replaced by a deterministic pseudo-random vector orthogonal to the others. Returns the norms
/// of the columns before their first normalization (after projecting out the previous ones).
pub(crate) fn orthonormalize(a: &mut [f64], rows: usize, cols: usize, seed: &mut u64) -> Vec<f64> {
    let mut norms = vec![0.0; cols];
    for c in 0..cols {
        let mut first_norm = None;
        for attempt in 0..4 {
            let original = norm(&a[c * rows..(c + 1) * rows]);
            for _pass in 0..2 {
                for p in 0..c {
                    let (left, right) = a.split_at_mut(c * rows);
                    let prev = &left[p * rows..(p + 1) * rows];
                    let cur = &mut right[..rows];
                    let t = dot(prev, cur);
                    for (x, y) in cur.iter_mut().zip(prev) {
                        *x -= t * y;
                    }
                }
            }
            let nrm = norm(&a[c * rows..(c + 1) * rows]);
            first_norm.get_or_insert(nrm);
            if nrm > 1e-10 * original && nrm > 0.0 && nrm.is_finite() {
                for x in &mut a[c * rows..(c + 1) * rows] {
                    *x /= nrm;
                }
                break;
            }
            // Rank deficiency: restart this column from a pseudo-random vector.
            for x in &mut a[c * rows..(c + 1) * rows] {
                *x = splitmix(seed);
            }
            debug_assert!(attempt < 3, "could not complete an orthonormal basis");
        }
        norms[c] = first_norm.unwrap_or(0.0);
    }
    norms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matmul(a: &[f64], ar: usize, ac: usize, b: &[f64], bc: usize) -> Vec<f64> {
        let mut out = vec![0.0; ar * bc];
        for j in 0..bc {
            for l in 0..ac {
                for i in 0..ar {
                    out[j * ar + i] += a[l * ar + i] * b[j * ac + l];
                }
            }
        }
        out
    }

    #[test]
    fn qr_reconstructs_and_is_orthonormal() {
        let (n, k) = (9, 4);
        let mut seed = 7;
        let a: Vec<f64> = (0..n * k).map(|_| splitmix(&mut seed)).collect();
        let Qr { q, r } = householder_qr(&a, n, k);
        let qr = matmul(&q, n, k, &r, k);
        for (x, y) in qr.iter().zip(&a) {
            assert!((x - y).abs() < 1e-14, "{x} vs {y}");
        }
        for i in 0..k {
            for j in 0..k {
                let d = dot(&q[i * n..(i + 1) * n], &q[j * n..(j + 1) * n]);
                assert!((d - if i == j { 1.0 } else { 0.0 }).abs() < 1e-14);
            }
        }
        let inv = upper_inverse(&r, k);
        let eye = matmul(&r, k, k, &inv, k);
        for i in 0..k {
            for j in 0..k {
                assert!((eye[j * k + i] - if i == j { 1.0 } else { 0.0 }).abs() < 1e-13);
            }
        }
    }

    #[test]
    fn svd_finds_singular_values_and_null_vector() {
        // Columns: a, b, a + 2b (rank 2).
        let m = 5;
        let a = [1.0, 2.0, 0.0, -1.0, 3.0];
        let b = [0.5, -1.0, 2.0, 1.0, 0.0];
        let mut mat = Vec::new();
        mat.extend_from_slice(&a);
        mat.extend_from_slice(&b);
        mat.extend(a.iter().zip(&b).map(|(x, y)| x + 2.0 * y));
        let (s, v) = jacobi_svd(&mat, m, 3);
        assert!(s[0] >= s[1] && s[1] >= s[2]);
        assert!(s[2] < 1e-12 * s[0], "{s:?}");
        // Null vector ∝ (1, 2, -1).
        let nv = &v[6..9];
        let ratio = nv[1] / nv[0];
        assert!((ratio - 2.0).abs() < 1e-10 && (nv[2] / nv[0] + 1.0).abs() < 1e-10, "{nv:?}");
        let diag = jacobi_svd(&[3.0, 0.0, 0.0, 4.0], 2, 2).0;
        assert_eq!(diag, vec![4.0, 3.0]);
    }

    #[test]
    fn orthonormalize_completes_rank_deficient_bases() {
        let rows = 6;
        let mut a = vec![1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0];
        let mut seed = 1;
        orthonormalize(&mut a, rows, 3, &mut seed);
        for i in 0..3 {
            for j in 0..3 {
                let d = dot(&a[i * rows..(i + 1) * rows], &a[j * rows..(j + 1) * rows]);
                assert!((d - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12, "{i} {j} {d}");
            }
        }
    }
}
