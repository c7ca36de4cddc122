//! The `[preprocess.emsc]` parameters ([`EmscParams`], [`ParaffinMode`]) and their check, which
//! builds the model matrix and hands it to [`EmscCorrector`] to factor.
use super::config;
use super::corrector::EmscCorrector;
use super::spectra::pure_paraffin_components;
use crate::axis::{self, Band};
use crate::error::OpError;
use crate::schema::check_axis;

/// Largest accepted polynomial order (higher orders are refused before anything is allocated;
/// the conditioning check usually refuses much lower ones).
pub const MAX_ORDER: i64 = 32;

/// How EMSC handles the paraffin bands (docs/configuration.md).
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
            return Err(config("paraffin = \"interferents\" needs interferent_components ≥ 1 (use paraffin = \"mask\" for none)"));
        }
        if !(self.pure_paraffin_amide_ratio.is_finite() && self.pure_paraffin_amide_ratio > 0.0) {
            return Err(config(format!("pure_paraffin_amide_ratio must be a positive number, got {}", self.pure_paraffin_amide_ratio)));
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
    pub fn paraffin_interferents(&self, candidates: &[f32], rows: usize, wavenumbers: &[f64]) -> Result<Vec<Vec<f64>>, OpError> {
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
                return Err(config(format!("weights have {} values but the axis has {} wavenumbers", w.len(), wavenumbers.len())));
            }
            return Ok(w.clone());
        }
        let band = Band::new(self.paraffin_band.lo, self.paraffin_band.hi);
        Ok(wavenumbers.iter().map(|&nu| if self.paraffin == ParaffinMode::Mask && band.contains(nu) { 0.0 } else { 1.0 }).collect())
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
    /// [`MAX_CONDITION`](super::MAX_CONDITION), e.g. an interferent equal to the reference).
    pub fn check(&self, wavenumbers: &[f64], reference: &[f64], interferents: &[Vec<f64>]) -> Result<EmscCorrector, OpError> {
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
                return Err(config(format!("interferent {} has {} values but the axis has {n} wavenumbers", j + 1, v.len())));
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
        EmscCorrector::factor(wavenumbers.to_vec(), model, weights, names, order, interferents.len(), self.output_coefficients)
    }
}
