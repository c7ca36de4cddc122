//! The factored EMSC model ([`EmscCorrector`]): the conditioning check, the f64 reference path
//! ([`EmscCorrector::correct_f64`], [`EmscFit`]) and the f32 batch path.
use super::{batch, config, linalg};
use crate::error::OpError;

/// Largest accepted condition number of the weighted, column-scaled model matrix.
pub const MAX_CONDITION: f64 = 1e8;

/// The result of correcting one spectrum on the f64 path.
#[derive(Debug, Clone, PartialEq)]
pub struct EmscFit {
    /// `reference + residual / b`, one value per wavenumber.
    pub corrected: Vec<f64>,
    /// `(b, a₀ … a_order, d₁ … d_m)`.
    pub coefficients: Vec<f64>,
    /// `s − M c` (unweighted).
    pub residual: Vec<f64>,
    /// `sqrt(Σ wᵢ² residualᵢ² / Σ wᵢ²)`.
    pub residual_rms: f64,
}

/// A checked EMSC model for one exact wavenumber axis, factored once; corrects single spectra
/// (f64) or whole batches (f32).
#[derive(Debug, Clone)]
pub struct EmscCorrector {
    wavenumbers: Vec<f64>,
    /// Column-major `n × k`.
    model: Vec<f64>,
    weights: Vec<f64>,
    /// Row-major `k × n`: `c = P s`.
    projection: Vec<f64>,
    names: Vec<String>,
    order: usize,
    n_interferents: usize,
    condition: f64,
    output_coefficients: bool,
    pub(super) plan: batch::BatchPlan,
}

/// Human-readable name of model column `j`.
fn column_label(j: usize, order: usize) -> String {
    match j {
        0 => "the reference".to_string(),
        j if j <= order + 1 => format!("x̃^{}", j - 1),
        j => format!("interferent {}", j - order - 1),
    }
}

impl EmscCorrector {
    pub(super) fn factor(
        wavenumbers: Vec<f64>,
        model: Vec<f64>,
        weights: Vec<f64>,
        names: Vec<String>,
        order: usize,
        n_interferents: usize,
        output_coefficients: bool,
    ) -> Result<Self, OpError> {
        let n = wavenumbers.len();
        let k = names.len();
        // A = diag(w) M, column-major.
        let mut a = model.clone();
        for j in 0..k {
            for i in 0..n {
                a[j * n + i] *= weights[i];
            }
        }
        let col_norms: Vec<f64> = (0..k).map(|j| linalg::norm(&a[j * n..(j + 1) * n])).collect();
        if let Some(j) = col_norms.iter().position(|&c| c == 0.0) {
            return Err(config(format!("singular model: {} is zero wherever the weights are non-zero", column_label(j, order))));
        }
        let linalg::Qr { q, r } = linalg::householder_qr(&a, n, k);
        // Condition number of the column-scaled problem: singular values of R·D, D = 1/‖aⱼ‖.
        let mut rd = r.clone();
        for j in 0..k {
            for i in 0..k {
                rd[j * k + i] /= col_norms[j];
            }
        }
        let (sigma, v) = linalg::jacobi_svd(&rd, k, k);
        let condition = if sigma[k - 1] > 0.0 { sigma[0] / sigma[k - 1] } else { f64::INFINITY };
        if condition.is_nan() || condition > MAX_CONDITION {
            let null = &v[(k - 1) * k..k * k];
            let peak = null.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            let involved: Vec<String> = (0..k).filter(|&j| null[j].abs() >= 0.1 * peak).map(|j| column_label(j, order)).collect();
            return Err(config(format!(
                "singular model: condition number {condition:.3e} exceeds {MAX_CONDITION:e}; {} are (nearly) linearly \
                 dependent where the weights are non-zero (e.g. an interferent equal to the reference, or a polynomial \
                 order too high)",
                involved.join(", ")
            )));
        }
        let rinv = linalg::upper_inverse(&r, k);
        // P = R⁻¹ Qᵀ W (row-major k × n), and G = M R⁻¹ (column-major n × k) for the f32 path.
        let mut projection = vec![0.0; k * n];
        let mut g = vec![0.0; n * k];
        for i in 0..n {
            for j in 0..k {
                let mut p = 0.0;
                let mut gij = 0.0;
                for l in j..k {
                    p += rinv[l * k + j] * q[l * n + i];
                }
                for l in 0..=j {
                    gij += model[l * n + i] * rinv[j * k + l];
                }
                projection[j * n + i] = p * weights[i];
                g[j * n + i] = gij;
            }
        }
        let plan = batch::BatchPlan::new(&g, &model[..n], &weights, &rinv, n, k);
        Ok(Self { wavenumbers, model, weights, projection, names, order, n_interferents, condition, output_coefficients, plan })
    }

    /// The axis this corrector was built for (cm⁻¹).
    pub fn wavenumbers(&self) -> &[f64] {
        &self.wavenumbers
    }

    /// Number of points per spectrum.
    pub fn n_points(&self) -> usize {
        self.wavenumbers.len()
    }

    /// Number of model columns `k = 1 + (order + 1) + interferents`.
    pub fn n_coefficients(&self) -> usize {
        self.names.len()
    }

    /// The coefficient names, in order: `b`, `a0` … `a{order}`, `d1` … `d{m}`.
    pub fn coefficient_names(&self) -> &[String] {
        &self.names
    }

    /// Polynomial order.
    pub fn order(&self) -> usize {
        self.order
    }

    /// Number of interferents.
    pub fn n_interferents(&self) -> usize {
        self.n_interferents
    }

    /// The weights used (one per wavenumber).
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// The reference spectrum.
    pub fn reference(&self) -> &[f64] {
        &self.model[..self.n_points()]
    }

    /// Model column `j` (0 = reference, then the polynomial terms, then the interferents).
    pub fn model_column(&self, j: usize) -> &[f64] {
        let n = self.n_points();
        &self.model[j * n..(j + 1) * n]
    }

    /// Condition number of the weighted, column-scaled model matrix.
    pub fn condition_number(&self) -> f64 {
        self.condition
    }

    /// Whether the kernel outputs `emsc_b` and `emsc_coefficients`.
    pub fn output_coefficients(&self) -> bool {
        self.output_coefficients
    }

    /// Corrects one spectrum in f64 (the reference path): `c = P s`, `residual = s − M c`,
    /// `corrected = reference + residual / b`. A spectrum with a non-finite value, or whose `b` is
    /// zero, subnormal or not finite, gives all-NaN outputs.
    ///
    /// # Panics
    /// When `s` does not have one value per wavenumber.
    pub fn correct_f64(&self, s: &[f64]) -> EmscFit {
        let (n, k) = (self.n_points(), self.n_coefficients());
        assert_eq!(s.len(), n, "spectrum length must match the EMSC axis");
        let coefficients: Vec<f64> = (0..k).map(|j| self.projection[j * n..(j + 1) * n].iter().zip(s).map(|(p, x)| p * x).sum()).collect();
        let b = coefficients[0];
        if !s.iter().all(|x| x.is_finite()) || !coefficients.iter().all(|c| c.is_finite()) || !b.is_normal() {
            return EmscFit {
                corrected: vec![f64::NAN; n],
                coefficients: vec![f64::NAN; k],
                residual: vec![f64::NAN; n],
                residual_rms: f64::NAN,
            };
        }
        let residual: Vec<f64> = (0..n).map(|i| s[i] - (0..k).map(|j| self.model[j * n + i] * coefficients[j]).sum::<f64>()).collect();
        let corrected = residual.iter().zip(self.reference()).map(|(r, re)| re + r / b).collect();
        let sum_w2: f64 = self.weights.iter().map(|w| w * w).sum();
        let ss: f64 = residual.iter().zip(&self.weights).map(|(r, w)| (w * r) * (w * r)).sum();
        EmscFit { corrected, coefficients, residual, residual_rms: (ss / sum_w2).sqrt() }
    }

    /// Corrects `rows` f32 spectra (`values`, row-major `rows × n`) into `out` (same shape), the
    /// residual RMS into `residual_rms` (`rows`) and, when given, the coefficients into
    /// `coefficients` (row-major `rows × k`). The fast path: one factored model, two fused passes
    /// per spectrum, no allocation per spectrum; each spectrum's bytes do not depend on the rest
    /// of the batch. Non-finite spectra give NaN rows (see the module docs).
    ///
    /// # Panics
    /// When a slice length does not match `rows`, the axis length and `k`.
    pub fn correct_batch(&self, values: &[f32], rows: usize, out: &mut [f32], coefficients: Option<&mut [f32]>, residual_rms: &mut [f32]) {
        let n = self.n_points();
        assert_eq!(values.len(), rows * n, "values must hold rows × n points");
        assert_eq!(out.len(), rows * n, "out must hold rows × n points");
        assert_eq!(residual_rms.len(), rows, "residual_rms must hold one value per row");
        if let Some(c) = coefficients.as_deref() {
            assert_eq!(c.len(), rows * self.n_coefficients(), "coefficients must hold rows × k values");
        }
        self.plan.run(values, rows, out, coefficients, residual_rms);
    }

    /// Whether the batch path uses the AVX2/FMA kernels on this CPU.
    pub fn uses_simd(&self) -> bool {
        self.plan.path() != batch::Path::Portable
    }

    /// True when `axis` is this corrector's axis (to rounding of the JSON round trip).
    pub(super) fn same_axis(&self, axis: &[f64]) -> bool {
        axis.len() == self.wavenumbers.len() && axis.iter().zip(&self.wavenumbers).all(|(a, b)| (a - b).abs() <= 1e-9 * b.abs().max(1.0))
    }
}
