//! Extended multiplicative signal correction (EMSC; DESIGN.md §4 step 4).
//!
//! EMSC (H. Martens & E. Stark, *J. Pharm. Biomed. Anal.* 9 (1991) 625–635; in the form of Achim
//! Kohler's EMSC for FTIR microscopy of biological tissue, A. Kohler et al., *Appl. Spectrosc.* 59
//! (2005) 707–716, whose MATLAB implementation the gold-standard test reproduces) models every
//! measured spectrum `s` as a scaled reference spectrum plus a smooth baseline plus known
//! interferents:
//!
//! ```text
//! s = b·reference + Σₚ aₚ·x̃ᵖ (p = 0..order) + Σⱼ dⱼ·interferentⱼ + residual
//! x̃ = (ν − (ν_min+ν_max)/2) / (|ν_first − ν_last|/2)      (crate::axis::scaled, in [-1, 1])
//! ```
//!
//! With the model matrix `M = [reference, x̃⁰ … x̃^order, interferents…]` (n × k) and per-wavenumber
//! weights `w`, the coefficients `c = (b, a₀…, d₁…)` solve the true weighted least-squares problem
//! `min ‖w ∘ (s − M c)‖²` (both the model and the spectrum are weighted — unlike
//! Orange-Spectroscopy, which weights only the model and so is exact only for 0/1 weights). The
//! outputs are
//!
//! ```text
//! residual  = s − M c                                   (unweighted)
//! corrected = (s − polynomial − interferents) / b = reference + residual / b
//! residual_rms = sqrt(Σ wᵢ² residualᵢ² / Σ wᵢ²)
//! ```
//!
//! `residual_rms` is the RMS of the residual *as the fit weighted it*: points with zero weight
//! (the masked paraffin band) do not count, so a pixel is not called bad just for holding a lot
//! of paraffin there; it is in the units of the raw spectrum (absorbance), and it is what the
//! outlier stage thresholds at median + 5·MAD per image.
//!
//! The model matrix is the same for every spectrum, so it is factored once, in f64, when
//! [`EmscParams::check`] builds an [`EmscCorrector`] (Householder QR of `diag(w)·M`; a
//! conditioning check of the column-scaled factor refuses a singular or nearly singular model).
//! [`EmscCorrector::correct_f64`] is the straightforward f64 reference path (`c = P s` with
//! `P = (MᵀW²M)⁻¹MᵀW²`); [`EmscCorrector::correct_batch`] corrects a whole batch of f32 spectra
//! with two fused matrix–vector passes per spectrum (AVX2/FMA when the CPU has it), without any
//! per-spectrum allocation; [`EmscKernel`] applies it to spectra batches.
//!
//! # Paraffin
//! Formalin-fixed, paraffin-embedded tissue keeps paraffin bands (CH₂ bending near 1462 and
//! 1473 cm⁻¹, CH₃ near 1373 cm⁻¹). Two modes ([`ParaffinMode`]):
//! - `mask` (default, as in CaReNet-V1): weight 0 over [`EmscParams::paraffin_band`]
//!   (1500–1350 cm⁻¹) and 1 elsewhere, no paraffin interferents;
//! - `interferents` ("digital dewaxing"): weight 1 everywhere and, as interferents, the first
//!   [`EmscParams::interferent_components`] principal components of **pure** paraffin spectra
//!   ([`pure_paraffin_components`]).
//!
//! Zero weights over the paraffin bands together with paraffin interferents is refused: the
//! interferent coefficients would be fitted where the interferents carry no signal (in
//! `interferents` mode no weight inside the paraffin band may be zero; in either mode an
//! interferent with more than half of its energy on zero-weight points is refused). And the
//! interferents must never be fitted on the raw K-means paraffin cluster: that cluster also holds
//! thin tissue, whose spectra carry protein bands, so its principal components absorb the biology
//! — on a synthetic archive built from real spectra, cancer-vs-adjacent classification fell from
//! 1.00 to chance. [`pure_paraffin_components`] therefore keeps only candidate spectra whose
//! amide I absorbance is below a fraction (default 0.1) of their 1462 cm⁻¹ band.
//!
//! # Non-finite spectra
//! A spectrum holding NaN or ±inf anywhere (also at zero-weight points), or whose fitted `b` is
//! zero, subnormal or not finite, gets a defined result and never a panic: its corrected row,
//! its coefficients and its `residual_rms` are all NaN. The NaN `emsc_residual_rms` flags it for
//! the outlier stage (which also flags non-finite spectra on its own).
//!
//! # Example
//! ```
//! use ftirflow_operators::emsc::EmscParams;
//! let axis: Vec<f64> = (0..60).map(|i| 1800.0 - 15.0 * i as f64).collect();
//! let band = |w: f64, c: f64, h: f64| h * (-((w - c) / 25.0).powi(2)).exp();
//! let reference: Vec<f64> = axis.iter().map(|&w| band(w, 1655.0, 1.0) + band(w, 1545.0, 0.6)).collect();
//! // Defaults: order 2, paraffin band masked (weights 0 over 1500–1350 cm⁻¹), no interferents.
//! let corrector = EmscParams::default().check(&axis, &reference, &[]).unwrap();
//! // A spectrum twice as thick as the reference, on a sloping baseline.
//! let x = ftirflow_operators::axis::scaled(&axis);
//! let s: Vec<f64> = reference.iter().zip(&x).map(|(r, x)| 2.0 * r + 0.1 + 0.05 * x).collect();
//! let fit = corrector.correct_f64(&s);
//! assert!((fit.coefficients[0] - 2.0).abs() < 1e-12); // b
//! assert!(fit.corrected.iter().zip(&reference).all(|(c, r)| (c - r).abs() < 1e-12));
//! // The f32 batch path agrees.
//! let s32: Vec<f32> = s.iter().map(|&v| v as f32).collect();
//! let (mut out, mut rms) = (vec![0.0f32; s32.len()], [0.0f32]);
//! corrector.correct_batch(&s32, 1, &mut out, None, &mut rms);
//! assert!(out.iter().zip(&reference).all(|(c, r)| (*c as f64 - r).abs() < 1e-5));
//! assert!(rms[0] < 1e-6);
//! ```
use std::sync::Arc;

use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use ndarray::Array2;

use crate::axis::{self, Band};
use crate::error::OpError;
use crate::kernel::Kernel;
use crate::schema::{check_axis, spectrum_array, SpectraLayout};

mod batch;
mod linalg;

const OP: &str = "emsc";

/// Column appended with the residual RMS of each spectrum (Float32; NaN for non-finite input).
pub const RESIDUAL_RMS: &str = "emsc_residual_rms";
/// Column appended with the reference coefficient `b` when coefficients are output (Float32).
pub const B: &str = "emsc_b";
/// Column appended with all coefficients `(b, a₀ … a_order, d₁ … d_m)` when coefficients are
/// output (FixedSizeList<Float32, k>); the term names are in its field metadata under
/// [`TERMS_KEY`].
pub const COEFFICIENTS: &str = "emsc_coefficients";
/// Field-metadata key of [`COEFFICIENTS`]: a JSON array of the term names, in order.
pub const TERMS_KEY: &str = "ftirflow:emsc_terms";
/// Largest accepted polynomial order (higher orders are refused before anything is allocated;
/// the conditioning check usually refuses much lower ones).
pub const MAX_ORDER: i64 = 32;
/// Largest accepted condition number of the weighted, column-scaled model matrix.
pub const MAX_CONDITION: f64 = 1e8;
/// Window whose largest absorbance measures amide I in [`pure_paraffin_components`].
pub const AMIDE_I_WINDOW: Band = Band { lo: 1640.0, hi: 1670.0 };
/// Window whose largest absorbance measures the paraffin CH₂ band near 1462 cm⁻¹.
pub const CH2_WINDOW: Band = Band { lo: 1455.0, hi: 1470.0 };
/// At most this many pure spectra (an evenly strided, deterministic subset) enter the principal
/// component fit of [`pure_paraffin_components`].
pub const MAX_PCA_SPECTRA: usize = 4096;

/// How EMSC handles the paraffin bands (DESIGN.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParaffinMode {
    /// Zero weights over [`EmscParams::paraffin_band`], no paraffin interferents (default).
    #[default]
    Mask,
    /// Full weights, the first principal components of pure paraffin spectra as interferents.
    Interferents,
}

/// Parameters of the `[preprocess.emsc]` section; [`EmscParams::check`] turns them, with an axis,
/// a reference and the interferents, into an [`EmscCorrector`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmscParams {
    /// Polynomial order in the scaled wavenumber (default 2; 0 = constant baseline). Signed so
    /// that a negative value is refused with a message instead of a parse error.
    pub order: i64,
    /// Paraffin handling (default `mask`).
    pub paraffin: ParaffinMode,
    /// The paraffin band: weights are zero here in `mask` mode, and must not be zero here in
    /// `interferents` mode (default 1350–1500 cm⁻¹).
    pub paraffin_band: Band,
    /// Number of principal components of pure paraffin used as interferents in `interferents`
    /// mode (default 3; ignored in `mask` mode).
    pub interferent_components: i64,
    /// A paraffin-cluster pixel is *pure* when its amide I absorbance (largest value in
    /// 1640–1670 cm⁻¹) is below this fraction of its CH₂ band (largest value in 1455–1470 cm⁻¹)
    /// (default 0.1).
    pub pure_paraffin_amide_ratio: f64,
    /// Explicit per-wavenumber weights (non-negative, one per axis point), overriding the mode's
    /// weights (default none).
    pub weights: Option<Vec<f64>>,
    /// Also output the columns `emsc_b` and `emsc_coefficients` (default false).
    pub output_coefficients: bool,
}

impl Default for EmscParams {
    fn default() -> Self {
        Self {
            order: 2,
            paraffin: ParaffinMode::Mask,
            paraffin_band: Band::new(1350.0, 1500.0),
            interferent_components: 3,
            pure_paraffin_amide_ratio: 0.1,
            weights: None,
            output_coefficients: false,
        }
    }
}

fn config(reason: impl Into<String>) -> OpError {
    OpError::config(OP, reason)
}

impl EmscParams {
    /// The checks that need no axis or data (run when the configuration is read).
    pub fn validate(&self) -> Result<(), OpError> {
        if self.order < 0 {
            return Err(config(format!("order must be ≥ 0 (0 = constant baseline), got {}", self.order)));
        }
        if self.order > MAX_ORDER {
            return Err(config(format!("order {} is too high (at most {MAX_ORDER}; 2 is usual)", self.order)));
        }
        if self.interferent_components < 0 {
            return Err(config(format!("interferent_components must be ≥ 0, got {}", self.interferent_components)));
        }
        if self.paraffin == ParaffinMode::Interferents && self.interferent_components == 0 {
            return Err(config(
                "paraffin = \"interferents\" needs interferent_components ≥ 1 (use paraffin = \"mask\" for none)",
            ));
        }
        if !(self.pure_paraffin_amide_ratio.is_finite() && self.pure_paraffin_amide_ratio > 0.0) {
            return Err(config(format!(
                "pure_paraffin_amide_ratio must be a positive number, got {}",
                self.pure_paraffin_amide_ratio
            )));
        }
        let band = self.paraffin_band;
        if !(band.lo.is_finite() && band.hi.is_finite()) {
            return Err(config(format!("paraffin_band {band} is not finite")));
        }
        if let Some(w) = &self.weights {
            if let Some(i) = w.iter().position(|x| !x.is_finite() || *x < 0.0) {
                return Err(config(format!("weights[{i}] = {} must be finite and ≥ 0", w[i])));
            }
            if w.iter().all(|&x| x == 0.0) {
                return Err(config("all weights are zero: nothing to fit"));
            }
        }
        Ok(())
    }

    /// The paraffin interferents this configuration needs, fitted on `rows` candidate spectra
    /// (the paraffin-cluster pixels, row-major `rows × n`): none in `mask` mode; in `interferents`
    /// mode the first `interferent_components` principal components of the pure ones
    /// ([`pure_paraffin_components`] with `pure_paraffin_amide_ratio`).
    pub fn paraffin_interferents(
        &self,
        candidates: &[f32],
        rows: usize,
        wavenumbers: &[f64],
    ) -> Result<Vec<Vec<f64>>, OpError> {
        self.validate()?;
        match self.paraffin {
            ParaffinMode::Mask => Ok(Vec::new()),
            ParaffinMode::Interferents => pure_paraffin_components(
                candidates,
                rows,
                wavenumbers,
                self.interferent_components as usize,
                self.pure_paraffin_amide_ratio,
            ),
        }
    }

    /// The weights used on `wavenumbers`: the explicit ones, or those of the paraffin mode.
    pub fn effective_weights(&self, wavenumbers: &[f64]) -> Result<Vec<f64>, OpError> {
        if let Some(w) = &self.weights {
            if w.len() != wavenumbers.len() {
                return Err(config(format!(
                    "weights have {} values but the axis has {} wavenumbers",
                    w.len(),
                    wavenumbers.len()
                )));
            }
            return Ok(w.clone());
        }
        let band = Band::new(self.paraffin_band.lo, self.paraffin_band.hi);
        Ok(wavenumbers
            .iter()
            .map(|&nu| if self.paraffin == ParaffinMode::Mask && band.contains(nu) { 0.0 } else { 1.0 })
            .collect())
    }

    /// Validates everything against the axis, the reference and the interferents, builds the
    /// model matrix `[reference, x̃⁰ … x̃^order, interferents…]` and factors it once.
    ///
    /// Refused with [`OpError::Config`]: a negative or huge order; weights, reference or an
    /// interferent whose length differs from the axis, or that hold non-finite values; negative
    /// or all-zero weights; an all-zero reference; `interferents` mode without exactly
    /// `interferent_components` interferents, or with zero weights inside the paraffin band; an
    /// interferent with most of its energy where the weights are zero (e.g. paraffin components
    /// in `mask` mode); fewer points with non-zero weight than model columns; and a singular or
    /// nearly singular model (condition number of the weighted, column-scaled model above
    /// [`MAX_CONDITION`], e.g. an interferent equal to the reference).
    pub fn check(
        &self,
        wavenumbers: &[f64],
        reference: &[f64],
        interferents: &[Vec<f64>],
    ) -> Result<EmscCorrector, OpError> {
        self.validate()?;
        check_axis(wavenumbers).map_err(|e| config(format!("wavenumber axis: {e}")))?;
        let n = wavenumbers.len();
        if reference.len() != n {
            return Err(config(format!("reference has {} values but the axis has {n} wavenumbers", reference.len())));
        }
        if let Some(i) = reference.iter().position(|x| !x.is_finite()) {
            return Err(config(format!("reference value {i} ({} cm⁻¹) is not finite", wavenumbers[i])));
        }
        if reference.iter().all(|&x| x == 0.0) {
            return Err(config("reference spectrum is all zeros"));
        }
        for (j, v) in interferents.iter().enumerate() {
            if v.len() != n {
                return Err(config(format!(
                    "interferent {} has {} values but the axis has {n} wavenumbers",
                    j + 1,
                    v.len()
                )));
            }
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(config(format!("interferent {} value {i} is not finite", j + 1)));
            }
        }
        if self.paraffin == ParaffinMode::Interferents && interferents.len() as i64 != self.interferent_components {
            return Err(config(format!(
                "paraffin = \"interferents\" expects {} paraffin interferents (principal components of pure paraffin), got {}",
                self.interferent_components,
                interferents.len()
            )));
        }
        let weights = self.effective_weights(wavenumbers)?;
        let band = Band::new(self.paraffin_band.lo, self.paraffin_band.hi);
        if self.paraffin == ParaffinMode::Interferents {
            let zeros: Vec<usize> = (0..n).filter(|&i| band.contains(wavenumbers[i]) && weights[i] == 0.0).collect();
            if let Some(&first) = zeros.first() {
                return Err(config(format!(
                    "paraffin = \"interferents\" fits paraffin components, but the weights are zero at {} point(s) of the \
                     paraffin band {band} (e.g. {} cm⁻¹): the components would be fitted where they carry no signal; \
                     use paraffin = \"mask\" or non-zero weights there",
                    zeros.len(),
                    wavenumbers[first]
                )));
            }
        }
        for (j, v) in interferents.iter().enumerate() {
            let total: f64 = v.iter().map(|x| x * x).sum();
            let masked: f64 = v.iter().zip(&weights).filter(|(_, &w)| w == 0.0).map(|(x, _)| x * x).sum();
            if total > 0.0 && masked > 0.5 * total {
                return Err(config(format!(
                    "interferent {} has {:.0} % of its energy where the weights are zero: it would be fitted where it \
                     carries no signal (paraffin interferents need paraffin = \"interferents\" with full weights; \
                     mask mode uses none)",
                    j + 1,
                    100.0 * masked / total
                )));
            }
        }
        let order = self.order as usize;
        let k = 1 + order + 1 + interferents.len();
        let nonzero = weights.iter().filter(|&&w| w > 0.0).count();
        if nonzero < k {
            return Err(config(format!(
                "the model has {k} columns (reference, {} polynomial terms, {} interferents) but only {nonzero} \
                 wavenumbers have non-zero weight",
                order + 1,
                interferents.len()
            )));
        }
        let x = axis::scaled(wavenumbers);
        let mut model = Vec::with_capacity(n * k);
        model.extend_from_slice(reference);
        for p in 0..=order {
            model.extend(x.iter().map(|&xi| xi.powi(p as i32)));
        }
        for v in interferents {
            model.extend_from_slice(v);
        }
        let mut names = vec!["b".to_string()];
        names.extend((0..=order).map(|p| format!("a{p}")));
        names.extend((1..=interferents.len()).map(|j| format!("d{j}")));
        EmscCorrector::factor(
            wavenumbers.to_vec(),
            model,
            weights,
            names,
            order,
            interferents.len(),
            self.output_coefficients,
        )
    }
}

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
    plan: batch::BatchPlan,
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
    fn factor(
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
            return Err(config(format!(
                "singular model: {} is zero wherever the weights are non-zero",
                column_label(j, order)
            )));
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
            let involved: Vec<String> =
                (0..k).filter(|&j| null[j].abs() >= 0.1 * peak).map(|j| column_label(j, order)).collect();
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
        Ok(Self {
            wavenumbers,
            model,
            weights,
            projection,
            names,
            order,
            n_interferents,
            condition,
            output_coefficients,
            plan,
        })
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
        let coefficients: Vec<f64> =
            (0..k).map(|j| self.projection[j * n..(j + 1) * n].iter().zip(s).map(|(p, x)| p * x).sum()).collect();
        let b = coefficients[0];
        if !s.iter().all(|x| x.is_finite()) || !coefficients.iter().all(|c| c.is_finite()) || !b.is_normal() {
            return EmscFit {
                corrected: vec![f64::NAN; n],
                coefficients: vec![f64::NAN; k],
                residual: vec![f64::NAN; n],
                residual_rms: f64::NAN,
            };
        }
        let residual: Vec<f64> =
            (0..n).map(|i| s[i] - (0..k).map(|j| self.model[j * n + i] * coefficients[j]).sum::<f64>()).collect();
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
    pub fn correct_batch(
        &self,
        values: &[f32],
        rows: usize,
        out: &mut [f32],
        coefficients: Option<&mut [f32]>,
        residual_rms: &mut [f32],
    ) {
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
    fn same_axis(&self, axis: &[f64]) -> bool {
        axis.len() == self.wavenumbers.len()
            && axis.iter().zip(&self.wavenumbers).all(|(a, b)| (a - b).abs() <= 1e-9 * b.abs().max(1.0))
    }
}

/// The EMSC kernel: replaces `spectrum` by the corrected spectra (same axis) and appends
/// [`RESIDUAL_RMS`], plus [`B`] and [`COEFFICIENTS`] when the corrector outputs coefficients.
/// It emits from `push_batch`; `finish` emits nothing.
#[derive(Debug, Clone)]
pub struct EmscKernel {
    corrector: Arc<EmscCorrector>,
    cached: Option<(SchemaRef, SchemaRef)>,
}

impl EmscKernel {
    /// A kernel applying `corrector` (an [`EmscCorrector`] or an `Arc` of one, shared by workers).
    pub fn new(corrector: impl Into<Arc<EmscCorrector>>) -> Self {
        Self { corrector: corrector.into(), cached: None }
    }

    /// The corrector.
    pub fn corrector(&self) -> &EmscCorrector {
        &self.corrector
    }

    fn schema_for(&mut self, input: &SchemaRef) -> Result<(SchemaRef, SpectraLayout), OpError> {
        let layout = SpectraLayout::of(input).map_err(|e| OpError::schema(OP, e))?;
        if let Some((i, o)) = &self.cached {
            if i == input {
                return Ok((o.clone(), layout));
            }
        }
        let out = self.output_schema(input)?;
        self.cached = Some((input.clone(), out.clone()));
        Ok((out, layout))
    }
}

impl Kernel for EmscKernel {
    fn name(&self) -> &'static str {
        OP
    }

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef, OpError> {
        let layout = SpectraLayout::of(input).map_err(|e| OpError::schema(OP, e))?;
        let c = &self.corrector;
        if !c.same_axis(&layout.wavenumbers) {
            return Err(OpError::data(
                OP,
                format!(
                    "spectra have a {}-point axis ({}–{} cm⁻¹) but the EMSC model was built for a {}-point axis \
                     ({}–{} cm⁻¹)",
                    layout.n_points(),
                    layout.wavenumbers[0],
                    layout.wavenumbers[layout.n_points() - 1],
                    c.n_points(),
                    c.wavenumbers[0],
                    c.wavenumbers[c.n_points() - 1]
                ),
            ));
        }
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut added = vec![Field::new(RESIDUAL_RMS, DataType::Float32, false)];
        if c.output_coefficients {
            added.push(Field::new(B, DataType::Float32, false));
            let terms = serde_json::to_string(&c.names).expect("names serialize");
            added.push(
                Field::new(
                    COEFFICIENTS,
                    DataType::FixedSizeList(
                        Arc::new(Field::new_list_field(DataType::Float32, true)),
                        c.n_coefficients() as i32,
                    ),
                    false,
                )
                .with_metadata(std::collections::HashMap::from([(TERMS_KEY.to_string(), terms)])),
            );
        }
        for f in &added {
            if input.index_of(f.name()).is_ok() {
                return Err(OpError::data(
                    OP,
                    format!("input already has a `{}` column (EMSC applied twice?)", f.name()),
                ));
            }
        }
        fields.extend(added);
        Ok(Arc::new(Schema::new_with_metadata(fields, input.metadata().clone())))
    }

    fn push_batch(&mut self, batch: &RecordBatch, out: &mut Vec<RecordBatch>) -> Result<(), OpError> {
        let (schema, layout) = self.schema_for(&batch.schema())?;
        let values = SpectraLayout::values(batch).map_err(|e| OpError::schema(OP, e))?;
        let c = &self.corrector;
        let (rows, n, k) = (batch.num_rows(), c.n_points(), c.n_coefficients());
        let mut corrected = vec![0.0f32; rows * n];
        let mut rms = vec![0.0f32; rows];
        let mut coefs = if c.output_coefficients { vec![0.0f32; rows * k] } else { Vec::new() };
        c.correct_batch(values, rows, &mut corrected, c.output_coefficients.then_some(&mut coefs[..]), &mut rms);
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns[layout.spectrum] = Arc::new(spectrum_array(corrected, n).map_err(|e| OpError::schema(OP, e))?);
        columns.push(Arc::new(Float32Array::from(rms)));
        if c.output_coefficients {
            columns.extend(coefficient_columns(coefs, k)?);
        }
        out.push(RecordBatch::try_new(schema, columns).map_err(|e| OpError::internal(OP, e.to_string()))?);
        Ok(())
    }

    fn finish(&mut self, _out: &mut Vec<RecordBatch>) -> Result<(), OpError> {
        Ok(())
    }
}

/// The [`B`] and [`COEFFICIENTS`] columns from row-major coefficients (`rows × k`).
pub fn coefficient_columns(coefs: Vec<f32>, k: usize) -> Result<[ArrayRef; 2], OpError> {
    let b: Vec<f32> = coefs.chunks_exact(k).map(|r| r[0]).collect();
    let list = FixedSizeListArray::try_new(
        Arc::new(Field::new_list_field(DataType::Float32, true)),
        k as i32,
        Arc::new(Float32Array::from(coefs)),
        None,
    )
    .map_err(|e| OpError::internal(OP, e.to_string()))?;
    Ok([Arc::new(Float32Array::from(b)), Arc::new(list)])
}

/// The mean spectrum of `rows` spectra of `n` points (`values` row-major), in f64, skipping rows
/// that hold a non-finite value. All NaN when no row is finite (which [`EmscParams::check`] then
/// refuses as a reference).
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
/// [`ParaffinMode::Interferents`].
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
        OpError::data(
            OP,
            format!("the axis has no point in the amide I window {AMIDE_I_WINDOW}: cannot tell pure paraffin"),
        )
    })?;
    let ch2 = CH2_WINDOW.indices(wavenumbers).ok_or_else(|| {
        OpError::data(
            OP,
            format!("the axis has no point in the paraffin CH₂ window {CH2_WINDOW}: cannot tell pure paraffin"),
        )
    })?;
    let window_max =
        |s: &[f32], r: &std::ops::Range<usize>| s[r.clone()].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
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
    let chosen: Vec<usize> = if pure.len() > MAX_PCA_SPECTRA {
        (0..MAX_PCA_SPECTRA).map(|i| pure[i * pure.len() / MAX_PCA_SPECTRA]).collect()
    } else {
        pure
    };
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
        let converged =
            previous.len() == b && (0..m).all(|j| (sigma[j] - previous[j]).abs() <= 1e-13 * sigma[j] + 1e-15 * top);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> (Vec<f64>, Vec<f64>, Vec<Vec<f64>>) {
        let axis: Vec<f64> = (0..131).map(|i| 1800.0 - 7.0 * i as f64).collect();
        let g = |w: f64, c: f64, s: f64| (-((w - c) / s).powi(2)).exp();
        let reference =
            axis.iter().map(|&w| g(w, 1655.0, 25.0) + 0.6 * g(w, 1545.0, 20.0) + 0.2 * g(w, 1240.0, 30.0)).collect();
        let interferents = vec![
            axis.iter().map(|&w| g(w, 1462.0, 8.0) + 0.5 * g(w, 1373.0, 6.0)).collect(),
            axis.iter().map(|&w| g(w, 1473.0, 5.0)).collect(),
        ];
        (axis, reference, interferents)
    }

    #[test]
    fn simd_and_portable_paths_agree() {
        let (axis, reference, interferents) = toy();
        let params = EmscParams {
            paraffin: ParaffinMode::Interferents,
            interferent_components: 2,
            weights: Some(axis.iter().map(|&w| if w < 1000.0 { 0.3 } else { 1.0 }).collect()),
            ..Default::default()
        };
        let c = params.check(&axis, &reference, &interferents).unwrap();
        let n = axis.len();
        let x = axis::scaled(&axis);
        let rows = 5;
        let mut values = Vec::new();
        for r in 0..rows {
            for i in 0..n {
                let v = (1.0 + 0.3 * r as f64) * reference[i]
                    + 0.1 * x[i]
                    + 0.02 * (r as f64) * interferents[0][i]
                    + 1e-3 * ((i * 7 + r) as f64).sin();
                values.push(v as f32);
            }
        }
        let run = |plan: batch::BatchPlan| {
            let mut out = vec![0.0; rows * n];
            let mut rms = vec![0.0; rows];
            let mut coef = vec![0.0; rows * c.n_coefficients()];
            plan.run(&values, rows, &mut out, Some(&mut coef), &mut rms);
            (out, rms, coef)
        };
        let simd = run(c.plan.clone());
        let portable = run(c.plan.clone().with_path(batch::Path::Portable));
        for (a, b) in simd.0.iter().zip(&portable.0) {
            assert!((a - b).abs() <= 1e-5 * 1.2, "{a} vs {b}");
        }
        for (a, b) in simd.1.iter().zip(&portable.1) {
            assert!((a - b).abs() <= 1e-3 * b.abs() + 1e-7, "{a} vs {b}");
        }
    }

    #[test]
    fn params_default_and_names() {
        let p = EmscParams::default();
        assert_eq!(p.order, 2);
        assert_eq!(p.paraffin, ParaffinMode::Mask);
        assert_eq!(p.paraffin_band, Band::new(1500.0, 1350.0));
        let (axis, reference, _) = toy();
        let c = p.check(&axis, &reference, &[]).unwrap();
        assert_eq!(c.coefficient_names(), ["b", "a0", "a1", "a2"]);
        assert!(c.condition_number() >= 1.0);
        // Mask mode: zero weights exactly over 1350–1500 cm⁻¹.
        for (w, nu) in c.weights().iter().zip(&axis) {
            assert_eq!(*w, if (1350.0..=1500.0).contains(nu) { 0.0 } else { 1.0 });
        }
    }
}
