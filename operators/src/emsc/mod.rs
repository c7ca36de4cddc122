//! Extended multiplicative signal correction (EMSC; preprocessing step 4, docs/configuration.md).
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
use crate::error::OpError;

// The parameters and their check (`params`), the factored model and its f64 and f32 paths
// (`corrector`, with the batch kernels in `batch` and the dense algebra in `linalg`), the engine
// kernel and its output columns (`kernel`), and the spectra a model is built from (`spectra`).
mod batch;
mod corrector;
mod kernel;
mod linalg;
mod params;
mod spectra;
#[cfg(test)]
mod tests;

pub use corrector::{EmscCorrector, EmscFit, MAX_CONDITION};
pub use kernel::{coefficient_columns, EmscKernel, B, COEFFICIENTS, RESIDUAL_RMS, TERMS_KEY};
pub use params::{EmscParams, ParaffinMode, MAX_ORDER};
pub use spectra::{mean_reference, pure_paraffin_components, AMIDE_I_WINDOW, CH2_WINDOW, MAX_PCA_SPECTRA};

const OP: &str = "emsc";

fn config(reason: impl Into<String>) -> OpError {
    OpError::config(OP, reason)
}
