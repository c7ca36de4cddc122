//! The spectra an EMSC model is built from: the mean reference ([`mean_reference`]) and the
//! principal components of pure paraffin ([`pure_paraffin_components`]).
use ndarray::Array2;

use super::{config, linalg, OP};
use crate::axis::Band;
use crate::error::OpError;

/// Window whose largest absorbance measures amide I in [`pure_paraffin_components`].
pub const AMIDE_I_WINDOW: Band = Band { lo: 1640.0, hi: 1670.0 };
/// Window whose largest absorbance measures the paraffin CH₂ band near 1462 cm⁻¹.
pub const CH2_WINDOW: Band = Band { lo: 1455.0, hi: 1470.0 };
/// At most this many pure spectra (an evenly strided, deterministic subset) enter the principal
/// component fit of [`pure_paraffin_components`].
pub const MAX_PCA_SPECTRA: usize = 4096;

/// The mean spectrum of `rows` spectra of `n` points (`values` row-major), in f64, skipping rows
/// that hold a non-finite value. All NaN when no row is finite (which
/// [`EmscParams::check`](super::EmscParams::check) then refuses as a reference).
///
/// # Panics
/// When `values.len() != rows × n`.
pub fn mean_reference(values: &[f32], rows: usize, n: usize) -> Vec<f64> {
    assert_eq!(values.len(), rows * n, "values must hold rows × n points");
    let mut sum = vec![0.0f64; n];
    let mut count = 0usize;
    if n > 0 {
        for row in values.chunks_exact(n) {
            if row.iter().all(|x| x.is_finite()) {
                for (s, &x) in sum.iter_mut().zip(row) {
                    *s += x as f64;
                }
                count += 1;
            }
        }
    }
    if count == 0 {
        return vec![f64::NAN; n];
    }
    sum.iter().map(|s| s / count as f64).collect()
}

/// The first `m` principal components of the *pure* paraffin spectra among `rows` candidates
/// (`values`, row-major `rows × n`, typically the paraffin-cluster pixels), for
/// [`ParaffinMode::Interferents`](super::ParaffinMode::Interferents).
///
/// A candidate is pure when it is finite and its amide I absorbance (largest value in
/// [`AMIDE_I_WINDOW`]) is below `amide_ratio` × its CH₂ band (largest value in [`CH2_WINDOW`],
/// which must be positive). Only pure spectra are mean-centred and decomposed (at most
/// [`MAX_PCA_SPECTRA`], an evenly strided subset): the paraffin cluster also holds thin tissue,
/// and components fitted on it would absorb the protein bands and with them the biology (see the
/// module docs). The components have unit norm, are ordered by decreasing variance, and have
/// their largest-magnitude entry positive.
///
/// Errors ([`OpError::Data`]): the axis lacks either window; fewer than `m + 1` pure spectra; pure
/// spectra that vary along fewer than `m` directions (a component with less than 1e-6 of the first
/// one's singular value is f32 rounding, not paraffin, and would be arbitrary).
/// [`OpError::Config`]: `amide_ratio` not a positive number.
pub fn pure_paraffin_components(
    values: &[f32],
    rows: usize,
    wavenumbers: &[f64],
    m: usize,
    amide_ratio: f64,
) -> Result<Vec<Vec<f64>>, OpError> {
    let n = wavenumbers.len();
    if values.len() != rows * n {
        return Err(OpError::data(OP, format!("{} values do not form {rows} spectra of {n} points", values.len())));
    }
    if !(amide_ratio.is_finite() && amide_ratio > 0.0) {
        return Err(config(format!("pure_paraffin_amide_ratio must be a positive number, got {amide_ratio}")));
    }
    let amide = AMIDE_I_WINDOW.indices(wavenumbers).ok_or_else(|| {
        OpError::data(OP, format!("the axis has no point in the amide I window {AMIDE_I_WINDOW}: cannot tell pure paraffin"))
    })?;
    let ch2 = CH2_WINDOW.indices(wavenumbers).ok_or_else(|| {
        OpError::data(OP, format!("the axis has no point in the paraffin CH₂ window {CH2_WINDOW}: cannot tell pure paraffin"))
    })?;
    let window_max = |s: &[f32], r: &std::ops::Range<usize>| s[r.clone()].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let pure: Vec<usize> = (0..rows)
        .filter(|&i| {
            let s = &values[i * n..(i + 1) * n];
            if !s.iter().all(|x| x.is_finite()) {
                return false;
            }
            let (a, c) = (window_max(s, &amide) as f64, window_max(s, &ch2) as f64);
            c > 0.0 && a < amide_ratio * c
        })
        .collect();
    if pure.len() < m + 1 {
        return Err(OpError::data(
            OP,
            format!(
                "only {} of {rows} candidate paraffin spectra are pure (amide I below {amide_ratio} × the CH₂ band near \
                 1462 cm⁻¹); {} principal components need at least {}",
                pure.len(),
                m,
                m + 1
            ),
        ));
    }
    if m == 0 {
        return Ok(Vec::new());
    }
    if m > n {
        return Err(OpError::data(OP, format!("{m} principal components cannot come from {n}-point spectra")));
    }
    let chosen: Vec<usize> =
        if pure.len() > MAX_PCA_SPECTRA { (0..MAX_PCA_SPECTRA).map(|i| pure[i * pure.len() / MAX_PCA_SPECTRA]).collect() } else { pure };
    let r = chosen.len();
    let mut x = Array2::<f64>::zeros((r, n));
    for (dst, &src) in chosen.iter().enumerate() {
        for (d, &v) in x.row_mut(dst).iter_mut().zip(&values[src * n..(src + 1) * n]) {
            *d = v as f64;
        }
    }
    let mean = x.mean_axis(ndarray::Axis(0)).expect("r > 0");
    x -= &mean;
    let (components, sigma) = top_components(&x, m);
    if sigma[m - 1] <= 1e-6 * sigma[0] || sigma[0] == 0.0 {
        let rank = sigma.iter().take_while(|&&s| s > 1e-6 * sigma[0] && s > 0.0).count();
        return Err(OpError::data(
            OP,
            format!(
                "the {r} pure paraffin spectra vary along only {rank} independent direction(s); {m} principal \
                 components would be arbitrary (use fewer interferent_components)"
            ),
        ));
    }
    Ok(components)
}

/// The top `m` right singular vectors of the centred `r × n` matrix `x` (`m ≤ min(r, n)`) and
/// the singular values of the subspace (descending), by subspace iteration from a deterministic
/// start followed by a Rayleigh–Ritz step.
fn top_components(x: &Array2<f64>, m: usize) -> (Vec<Vec<f64>>, Vec<f64>) {
    let (r, n) = x.dim();
    let b = (m + 8).min(r).min(n).max(m);
    let mut seed = 0xF71E_F100_u64;
    // vt: b × n (rows are the basis vectors), ut: b × r.
    let mut vt = Array2::from_shape_fn((b, n), |_| linalg::splitmix(&mut seed));
    linalg::orthonormalize(vt.as_slice_mut().expect("standard layout"), n, b, &mut seed);
    let mut previous: Vec<f64> = Vec::new();
    for it in 0..300 {
        let mut ut = vt.dot(&x.t());
        linalg::orthonormalize(ut.as_slice_mut().expect("standard layout"), r, b, &mut seed);
        vt = ut.dot(x);
        let sigma = linalg::orthonormalize(vt.as_slice_mut().expect("standard layout"), n, b, &mut seed);
        let top = sigma[0].max(f64::MIN_POSITIVE);
        let converged = previous.len() == b && (0..m).all(|j| (sigma[j] - previous[j]).abs() <= 1e-13 * sigma[j] + 1e-15 * top);
        previous = sigma;
        if converged && it >= 2 {
            break;
        }
    }
    // Rayleigh–Ritz: SVD of X V (r × b) rotates the basis onto the singular vectors.
    let xv_t = vt.dot(&x.t()); // b × r: column-major r × b
    let (sigma, w) = linalg::jacobi_svd(xv_t.as_slice().expect("standard layout"), r, b);
    let components = (0..m)
        .map(|j| {
            let mut comp = vec![0.0f64; n];
            for l in 0..b {
                let coef = w[j * b + l];
                for (c, v) in comp.iter_mut().zip(vt.row(l)) {
                    *c += coef * v;
                }
            }
            let nrm = linalg::norm(&comp);
            let peak = comp.iter().fold(0.0f64, |acc, &v| if v.abs() > acc.abs() { v } else { acc });
            let sign = if peak < 0.0 { -1.0 } else { 1.0 };
            comp.iter().map(|v| sign * v / nrm).collect()
        })
        .collect();
    (components, sigma)
}
