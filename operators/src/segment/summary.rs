//! The results of a segmentation: the class of each pixel ([`PixelClass`], [`Masks`]) and what
//! each K-means step found ([`Clusters`], [`StepSummary`], [`SegmentSummary`]).
use serde::Serialize;

use crate::axis::Band;

/// What K-means found in one step and how its clusters were named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Clusters {
    /// Nothing to fit: no valid spectrum (tissue step), or no valid non-tissue spectrum
    /// (paraffin step). No spectrum gets the class.
    NoData,
    /// Two real clusters, the brighter the class: the usual case.
    Two,
    /// Every eligible spectrum is the class: one real cluster at or above the minimum absorbance,
    /// or two real clusters both at or above it.
    AllClass,
    /// No spectrum is the class: one real cluster below the minimum absorbance, or two real
    /// clusters both below it (e.g. no tissue in a paraffin-and-slide image).
    NoClass,
}

/// One K-means step of an image, for logs: the fit, the cluster statistics the naming used, and
/// the case. Cluster arrays are ordered dim first, bright second.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepSummary {
    /// The band clustered.
    pub band: Band,
    /// Points of the axis in the band (the K-means dimension).
    pub points: usize,
    /// How the clusters were named.
    pub case: Clusters,
    /// Real clusters found: 0 (nothing fitted), 1 or 2.
    pub real_clusters: usize,
    /// Spectra fitted (the sample; for the paraffin step it includes the zeroed tissue spectra).
    pub fitted: usize,
    /// Fitted spectra the naming looked at (valid; non-tissue for the paraffin step).
    pub eligible: usize,
    /// Eligible fitted spectra in each cluster (dim, bright).
    pub sizes: [usize; 2],
    /// Mean band intensity (mean absorbance over the band) of each cluster's eligible spectra.
    pub intensity: [f64; 2],
    /// Mean position of each cluster's eligible spectra on the centroid axis (0 = dim centroid,
    /// 1 = bright centroid; for the paraffin step the dim centroid also holds the zeroed tissue).
    pub position: [f64; 2],
    /// Standard deviation of those positions in each cluster.
    pub spread: [f64; 2],
    /// `(position[1] − position[0]) / (spread[0] + spread[1])` (∞ for two distinct constant
    /// clusters, 0 when nothing was fitted or the centroids coincide).
    pub separation: f64,
    /// Where on the centroid axis the class begins when `case` is [`Clusters::Two`] (0.5 for
    /// [`Boundary::Midpoint`](super::Boundary::Midpoint)); NaN otherwise.
    pub boundary: f64,
    /// The centroids over the band (dim, bright; empty when nothing was fitted).
    pub centroids: Vec<Vec<f64>>,
    /// Lloyd iterations run.
    pub iterations: usize,
    /// K-means inertia of the fit.
    pub inertia: f64,
    /// Whether Lloyd converged within `max_iter`.
    pub converged: bool,
}

impl StepSummary {
    pub(super) fn empty(band: Band, points: usize, fitted: usize) -> Self {
        Self {
            band,
            points,
            case: Clusters::NoData,
            real_clusters: 0,
            fitted,
            eligible: 0,
            sizes: [0, 0],
            intensity: [0.0, 0.0],
            position: [0.0, 0.0],
            spread: [0.0, 0.0],
            separation: 0.0,
            boundary: f64::NAN,
            centroids: Vec::new(),
            iterations: 0,
            inertia: 0.0,
            converged: true,
        }
    }
}

/// Counts and per-step details of one segmented image, for logs and `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentSummary {
    /// Spectra in the image.
    pub spectra: usize,
    /// Spectra with non-finite values in a band ([`PixelClass::Invalid`]).
    pub invalid: usize,
    /// Spectra the K-means were fitted on (at most `fit_sample`).
    pub fitted: usize,
    /// Tissue spectra.
    pub tissue: usize,
    /// Paraffin spectra.
    pub paraffin: usize,
    /// Background (bare slide) spectra.
    pub background: usize,
    /// The tissue step.
    pub tissue_step: StepSummary,
    /// The paraffin step.
    pub paraffin_step: StepSummary,
}

/// The class of one pixel (codes match the synthetic archive's ground truth for the first three).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum PixelClass {
    /// Bare slide: neither tissue nor paraffin.
    Background = 0,
    /// Paraffin.
    Paraffin = 1,
    /// Tissue (including paraffin-infiltrated tissue).
    Tissue = 2,
    /// Non-finite values in a band: neither tissue nor paraffin, flagged `segment_invalid`.
    Invalid = 3,
}

/// The masks of one image: a class per spectrum in input order, and a summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Masks {
    /// The class of each spectrum, in the order the spectra were given.
    pub classes: Vec<PixelClass>,
    /// Counts and per-step details.
    pub summary: SegmentSummary,
}

impl Masks {
    /// The `tissue` column.
    pub fn tissue(&self) -> Vec<bool> {
        self.classes.iter().map(|&c| c == PixelClass::Tissue).collect()
    }

    /// The `paraffin` column.
    pub fn paraffin(&self) -> Vec<bool> {
        self.classes.iter().map(|&c| c == PixelClass::Paraffin).collect()
    }

    /// The `segment_invalid` column.
    pub fn invalid(&self) -> Vec<bool> {
        self.classes.iter().map(|&c| c == PixelClass::Invalid).collect()
    }
}
