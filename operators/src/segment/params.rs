//! The `[preprocess.segment]` parameters ([`SegmentParams`], [`Boundary`]) and their check, which
//! builds the [`Segmenter`].
use serde::{Deserialize, Serialize};

use super::image::Segmenter;
use super::seed::{derive_seed, PARAFFIN_STREAM, TISSUE_STREAM};
use super::OP;
use crate::axis::Band;
use crate::error::OpError;
use crate::kmeans::KMeans;

/// Parameters of the `[preprocess.segment]` section. Unknown keys are rejected (so is `k`: the
/// method uses k = 2 for both steps); missing keys take their defaults.
///
/// ```
/// use ftirflow_operators::segment::SegmentParams;
/// let p: SegmentParams = serde_json::from_str(r#"{"fit_sample": 5000, "seed": 3}"#).unwrap();
/// assert_eq!((p.fit_sample, p.seed, p.max_iter), (5000, 3, 100));
/// assert!(p.check().is_ok());
/// assert!(serde_json::from_str::<SegmentParams>(r#"{"k": 3}"#).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SegmentParams {
    /// Band of the tissue K-means (amide I/II; default 1500–1700 cm⁻¹). `lo < hi` required.
    pub tissue_band: Band,
    /// Band of the paraffin K-means (CH₂ bending; default 1450–1480 cm⁻¹). `lo < hi` required.
    pub paraffin_band: Band,
    /// Most spectra per image the K-means are fitted on (default 20 000, at least 1); every
    /// spectrum is then assigned to the nearest centroid.
    pub fit_sample: usize,
    /// Seed of the fit sample and of the k-means++ draws (default 0).
    pub seed: u64,
    /// Most Lloyd iterations per K-means (default 100, at least 1).
    pub max_iter: usize,
    /// Lloyd iterations stop when no centroid moves farther than this, in absorbance units
    /// (Euclidean distance over the band; default 1e-6, finite and ≥ 0).
    pub tolerance: f64,
    /// Least mean band absorbance (over the tissue band) of a cluster called tissue (default 0.05,
    /// finite).
    pub min_tissue_absorbance: f64,
    /// Least mean band absorbance (over the paraffin band) of a cluster called paraffin (default
    /// 0.02, finite).
    pub min_paraffin_absorbance: f64,
    /// Least separation of the two clusters on their centroid axis, `(m_bright − m_dim) /
    /// (σ_bright + σ_dim)`, for two real clusters (default 1.5, finite and ≥ 0; 0 never merges).
    pub min_separation: f64,
    /// Least fraction of the eligible fitted spectra in the smaller cluster for two real clusters
    /// (default 0.001, in `[0, 0.5)`; at least one spectrum in any case).
    pub min_cluster_fraction: f64,
    /// Where two real clusters part (default `spread`; `midpoint` is plain nearest-centroid
    /// K-means).
    pub boundary: Boundary,
}

/// Where two real clusters part on the axis through their centroids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Boundary {
    /// At equal standardized distance from both clusters: `m_dim + (m_bright − m_dim) · σ_dim /
    /// (σ_dim + σ_bright)`, so a tight cluster (bare slide) keeps only what is close to it and a
    /// broad one (tissue of varying thickness) reaches down to its thin end (default).
    #[default]
    Spread,
    /// Halfway between the centroids: each spectrum goes to its nearest centroid, as plain
    /// K-means (and CaReNet-V1) assigns.
    Midpoint,
}

impl Default for SegmentParams {
    fn default() -> Self {
        Self {
            tissue_band: Band::new(1500.0, 1700.0),
            paraffin_band: Band::new(1450.0, 1480.0),
            fit_sample: 20_000,
            seed: 0,
            max_iter: 100,
            tolerance: 1e-6,
            min_tissue_absorbance: 0.05,
            min_paraffin_absorbance: 0.02,
            min_separation: 1.5,
            min_cluster_fraction: 0.001,
            boundary: Boundary::Spread,
        }
    }
}

impl SegmentParams {
    /// Validates every field (the error names the first problem) and returns the segmenter.
    pub fn check(&self) -> Result<Segmenter, OpError> {
        for (name, band) in [("tissue_band", self.tissue_band), ("paraffin_band", self.paraffin_band)] {
            if !(band.lo.is_finite() && band.hi.is_finite()) || band.lo >= band.hi {
                return Err(OpError::config(
                    OP,
                    format!("{name} {band} is empty: lo ({}) must be below hi ({}), both finite", band.lo, band.hi),
                ));
            }
            if band.lo <= 0.0 {
                return Err(OpError::config(OP, format!("{name} {band} must lie at positive wavenumbers")));
            }
        }
        if self.fit_sample == 0 {
            return Err(OpError::config(OP, "fit_sample must be at least 1 (spectra per image to fit the K-means on)"));
        }
        let finite = |name: &str, v: f64| {
            if v.is_finite() {
                Ok(())
            } else {
                Err(OpError::config(OP, format!("{name} must be finite (got {v})")))
            }
        };
        finite("min_tissue_absorbance", self.min_tissue_absorbance)?;
        finite("min_paraffin_absorbance", self.min_paraffin_absorbance)?;
        finite("min_separation", self.min_separation)?;
        if self.min_separation < 0.0 {
            return Err(OpError::config(OP, format!("min_separation must be ≥ 0 (got {})", self.min_separation)));
        }
        if !(0.0..0.5).contains(&self.min_cluster_fraction) {
            return Err(OpError::config(OP, format!("min_cluster_fraction must be in [0, 0.5) (got {})", self.min_cluster_fraction)));
        }
        let reword = |e: OpError| match e {
            OpError::Config { reason, .. } => OpError::config(OP, reason),
            other => other,
        };
        // Both steps run k = 2 with the same iteration limits; only their seed streams differ.
        let kmeans = |stream: u64| {
            KMeans::params(2).max_iter(self.max_iter).tolerance(self.tolerance).seed(derive_seed(self.seed, stream)).check().map_err(reword)
        };
        Ok(Segmenter { params: self.clone(), tissue: kmeans(TISSUE_STREAM)?, paraffin: kmeans(PARAFFIN_STREAM)? })
    }
}
