//! Tissue and paraffin masks by dual K-means (DESIGN.md §4 steps 1–2), as in CaReNet-V1
//! (del-Valle, Bernardes & Zezell, arXiv 2310.15094): per image,
//!
//! 1. **tissue**: K-means with k = 2 on the spectra truncated to the amide I/II band
//!    (default 1700–1500 cm⁻¹); tissue is the cluster with the larger mean absorbance there;
//! 2. **paraffin**: K-means with k = 2 on the spectra truncated to the CH₂ bending band
//!    (default 1480–1450 cm⁻¹) with the tissue spectra set to zero; of the non-tissue spectra,
//!    paraffin is the cluster with the larger mean absorbance there, the rest is background (bare
//!    slide).
//!
//! K-means ([`crate::kmeans`]) is seeded by k-means++ and fitted on a sample of at most
//! [`SegmentParams::fit_sample`] spectra of the image; then every spectrum is assigned to one of
//! the two clusters (see *Boundary*).
//!
//! # Which cluster is which, and one real cluster
//!
//! K-means with k = 2 always returns two clusters, even for an image with no tissue (paraffin and
//! slide only) or no paraffin. Each step therefore judges its two clusters on the step's
//! **eligible** fitted spectra (every valid spectrum for the tissue step; the valid non-tissue
//! spectra for the paraffin step, so the zeroed tissue spectra never count):
//!
//! - the **band intensity** of a cluster is the mean absorbance over the band of its spectra; the
//!   brighter cluster is the candidate class, as the method says;
//! - each spectrum's **position** on the axis through the two centroids is
//!   `s = (x − c_dim) · (c_bright − c_dim) / ‖c_bright − c_dim‖²` (0 at the dim centroid, 1 at the
//!   bright one; K-means' own boundary is `s = ½`); `m` and `σ` are the mean and standard
//!   deviation of `s` in each cluster, and the **separation** is
//!   `(m_bright − m_dim) / (σ_bright + σ_dim)`;
//! - the clusters are **one real cluster** when the smaller holds less than
//!   [`SegmentParams::min_cluster_fraction`] of the eligible spectra (default 0.1 %: a few stray
//!   pixels) or their separation is below [`SegmentParams::min_separation`] (default 1.5: splitting
//!   one unimodal population gives 0.9–1.7, tissue against bare slide 2.5 and more). One real
//!   cluster is all class (every eligible spectrum is tissue, resp. paraffin) when its mean band
//!   intensity reaches the step's minimum absorbance ([`SegmentParams::min_tissue_absorbance`],
//!   default 0.05; [`SegmentParams::min_paraffin_absorbance`], default 0.02), and no class
//!   otherwise;
//! - **two real clusters** are named by the same minimum: a cluster whose band intensity is below
//!   it is not the class (so a paraffin-and-slide image gets no tissue, an image without paraffin
//!   no paraffin); when both reach it (an image that is all tissue with thick and thin regions),
//!   both are the class; otherwise the bright cluster is the class and the other is not.
//!
//! The minimum absorbances assume absorbance referenced to the bare slide (background ≈ 0), as
//! FTIR imaging software writes it; an image with a large constant offset needs larger minimums.
//! The result says which case each step met ([`Clusters`], [`StepSummary`]).
//!
//! # Boundary
//!
//! Plain K-means assigns each spectrum to its nearest centroid, i.e. parts the clusters halfway
//! between the centroids ([`Boundary::Midpoint`]). Tissue against bare slide is a broad cluster
//! (thickness, paraffin infiltration, thin edges) against a tight one, so the halfway point cuts
//! off the thin end of the tissue. The default [`Boundary::Spread`] keeps the K-means clusters and
//! centroids and only moves the boundary along the centroid axis to where a spectrum is equally
//! many standard deviations from both clusters, `s* = m_dim + (m_bright − m_dim) · σ_dim /
//! (σ_dim + σ_bright)`: `separation` standard deviations from each. On the synthetic archive at its
//! default difficulty this raises the tissue IoU from about 0.90 to about 0.96.
//!
//! # Invalid spectra
//!
//! A spectrum with a NaN or infinite value inside either band is not fitted and gets
//! [`PixelClass::Invalid`]: `tissue = false`, `paraffin = false`, `segment_invalid = true`.
//! Non-finite values outside both bands do not matter here (the outlier step flags them). An
//! image whose spectra are all invalid is all `segment_invalid` (no error); an empty image emits
//! nothing. A pixel (x, y) that appears twice in one image is an [`OpError::Data`], as is an axis
//! that does not cover a band.
//!
//! # Determinism
//!
//! The masks depend only on the image's pixels (their coordinates and spectra) and the
//! parameters, not on how the spectra were split into batches, the order in which batches
//! arrived, or the number of workers: the fit sample is the `fit_sample` valid pixels with the
//! smallest hash priority `splitmix64(seed, x, y)` (a uniform random sample without replacement,
//! the same whatever the arrival order), sorted by (y, x) before k-means++; each pixel's label
//! depends only on its own spectrum and the fitted clusters. The tissue and paraffin K-means use
//! ChaCha8 seeds derived from [`SegmentParams::seed`].
//!
//! ```
//! use ftirflow_operators::segment::{segment_image, Clusters, PixelClass, SegmentParams};
//! // A 1400–1800 cm⁻¹ axis and three kinds of pixel: tissue (amide bands), paraffin (CH₂ band),
//! // bare slide; plus one spectrum with a NaN in the amide band.
//! let axis: Vec<f64> = (0..201).map(|i| 1400.0 + 2.0 * i as f64).collect();
//! let peak = |w: f64, c: f64, h: f64| h * (-((w - c) / 15.0).powi(2)).exp();
//! let tissue: Vec<f32> = axis.iter().map(|&w| (peak(w, 1655.0, 0.8) + peak(w, 1545.0, 0.5) + peak(w, 1455.0, 0.1)) as f32).collect();
//! let paraffin: Vec<f32> = axis.iter().map(|&w| peak(w, 1465.0, 0.3) as f32).collect();
//! let slide = vec![0.001f32; axis.len()];
//! let (mut values, mut xs, mut ys) = (Vec::new(), Vec::new(), Vec::new());
//! for y in 0..10u32 {
//!     for x in 0..10u32 {
//!         let s = if x < 4 { &tissue } else if x < 7 { &paraffin } else { &slide };
//!         let noise = 0.002 * ((x * 7 + y * 13) % 5) as f32;
//!         values.extend(s.iter().map(|v| v + noise));
//!         xs.push(x);
//!         ys.push(y);
//!     }
//! }
//! values[5 * axis.len() + 120] = f32::NAN; // pixel (5, 0), 1640 cm⁻¹
//! let masks = segment_image(&SegmentParams::default(), &axis, &values, &xs, &ys).unwrap();
//! assert_eq!(masks.classes[0], PixelClass::Tissue);
//! assert_eq!(masks.classes[4], PixelClass::Paraffin);
//! assert_eq!(masks.classes[5], PixelClass::Invalid);
//! assert_eq!(masks.classes[9], PixelClass::Background);
//! let s = &masks.summary;
//! assert_eq!((s.tissue, s.paraffin, s.background, s.invalid), (40, 29, 30, 1));
//! assert_eq!((s.tissue_step.case, s.paraffin_step.case), (Clusters::Two, Clusters::Two));
//! ```
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float32Array, RecordBatch};
use arrow::buffer::BooleanBuffer;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::axis::{min_max, Band};
use crate::error::OpError;
use crate::finite::all_finite;
use crate::kernel::Kernel;
use crate::kmeans::{KMeans, KMeansModel};
use crate::lanes::{avx2, Lanes};
use crate::outliers::AmideCheckKernel;
use crate::prefetch::{prefetch, AHEAD};
use crate::schema::{check_axis, SpectraLayout};

const OP: &str = "segment";

/// Column with the tissue mask (Boolean).
pub const TISSUE: &str = "tissue";
/// Column with the paraffin mask (Boolean).
pub const PARAFFIN: &str = "paraffin";
/// Column flagging spectra with non-finite values in a segmentation band (Boolean).
pub const SEGMENT_INVALID: &str = "segment_invalid";

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
            return Err(OpError::config(
                OP,
                format!("min_cluster_fraction must be in [0, 0.5) (got {})", self.min_cluster_fraction),
            ));
        }
        let reword = |e: OpError| match e {
            OpError::Config { reason, .. } => OpError::config(OP, reason),
            other => other,
        };
        let tissue = KMeans::params(2)
            .max_iter(self.max_iter)
            .tolerance(self.tolerance)
            .seed(derive_seed(self.seed, TISSUE_STREAM))
            .check()
            .map_err(reword)?;
        let paraffin = KMeans::params(2)
            .max_iter(self.max_iter)
            .tolerance(self.tolerance)
            .seed(derive_seed(self.seed, PARAFFIN_STREAM))
            .check()
            .map_err(reword)?;
        Ok(Segmenter { params: self.clone(), tissue, paraffin })
    }
}

const SAMPLE_STREAM: u64 = 0x5345_474d_0000_0000; // "SEGM"
const TISSUE_STREAM: u64 = 1;
const PARAFFIN_STREAM: u64 = 2;

/// SplitMix64's finalizer: a bijective 64-bit mix.
#[inline]
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn derive_seed(seed: u64, stream: u64) -> u64 {
    mix64(mix64(seed) ^ stream)
}

/// The pixel key: row-major order of (y, x).
#[inline]
fn pixel_key(x: u32, y: u32) -> u64 {
    (u64::from(y) << 32) | u64::from(x)
}

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
    /// [`Boundary::Midpoint`]); NaN otherwise.
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
    fn empty(band: Band, points: usize, fitted: usize) -> Self {
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

/// Part of an image: `xs.len()` spectra of `n` points each (`values` row-major).
#[derive(Debug, Clone, Copy)]
pub struct ImagePart<'a> {
    /// Spectrum values, row-major (`xs.len() × n`).
    pub values: &'a [f32],
    /// Pixel columns.
    pub xs: &'a [u32],
    /// Pixel rows.
    pub ys: &'a [u32],
}

/// Checked segmentation parameters ([`SegmentParams::check`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Segmenter {
    params: SegmentParams,
    tissue: KMeans,
    paraffin: KMeans,
}

/// [`SegmentParams::check`] then [`Segmenter::segment`]: the masks of one image given as one
/// row-major slice of spectra (`xs.len() × wavenumbers.len()` values) and pixel coordinates.
pub fn segment_image(
    params: &SegmentParams,
    wavenumbers: &[f64],
    values: &[f32],
    xs: &[u32],
    ys: &[u32],
) -> Result<Masks, OpError> {
    params.check()?.segment(wavenumbers, values, xs, ys)
}

/// How one step decides a spectrum's class (see the module docs).
enum Rule {
    /// No spectrum is the class.
    Never,
    /// Every eligible spectrum is the class.
    Always,
    /// Nearest centroid (plain K-means): the class when the nearest is `bright`.
    Nearest { model: KMeansModel, bright: usize },
    /// The class when the projection on the centroid axis, `(x − origin) · w`, exceeds
    /// `threshold` (origin = dim centroid, `w = (bright − dim) / ‖bright − dim‖²`).
    Project { origin: Vec<f64>, w: Vec<f64>, threshold: f64 },
}

impl Rule {
    /// Whether the spectrum whose band values are `row` is the class.
    #[inline(always)]
    fn is_class<const AVX2: bool>(&self, row: &[f32]) -> bool {
        match self {
            Rule::Never => false,
            Rule::Always => true,
            Rule::Nearest { model, bright } => model.nearest_with::<AVX2>(row).0 == *bright,
            Rule::Project { origin, w, threshold } => Lanes::<AVX2>::project(row, origin, w) > *threshold,
        }
    }
}

impl Segmenter {
    /// The parameters.
    pub fn params(&self) -> &SegmentParams {
        &self.params
    }

    /// A kernel for the engine.
    pub fn kernel(&self) -> SegmentKernel {
        SegmentKernel::new(self.clone())
    }

    /// The masks of one image given as one row-major slice (see [`segment_image`]).
    pub fn segment(&self, wavenumbers: &[f64], values: &[f32], xs: &[u32], ys: &[u32]) -> Result<Masks, OpError> {
        self.segment_parts(wavenumbers, &[ImagePart { values, xs, ys }])
    }

    /// The band index ranges on `axis`, or a data error naming the band the axis does not cover.
    pub fn band_ranges(&self, axis: &[f64]) -> Result<(std::ops::Range<usize>, std::ops::Range<usize>), OpError> {
        let covered = |name: &str, band: Band| {
            band.covered_indices(axis).ok_or_else(|| {
                let span = min_max(axis).map(|(a, b)| format!("{a}–{b} cm⁻¹")).unwrap_or_else(|| "empty".into());
                OpError::data(OP, format!("the wavenumber axis ({span}) does not cover the {name} band {band}"))
            })
        };
        Ok((covered("tissue", self.params.tissue_band)?, covered("paraffin", self.params.paraffin_band)?))
    }

    /// The masks of one image given in parts (e.g. the record batches as they arrived); the
    /// classes come in the order of the parts. The result is the same for any split of the image
    /// into parts and any order of the parts (up to the order of the classes).
    pub fn segment_parts(&self, wavenumbers: &[f64], parts: &[ImagePart<'_>]) -> Result<Masks, OpError> {
        self.segment_parts_visiting(wavenumbers, parts, 0..0, |_, _| {})
    }

    /// [`Segmenter::segment_parts`], calling `visit(spectrum, class)` for every spectrum, in
    /// the order of the classes, while the spectrum is in cache for its own assignment: a check
    /// that reads `reads` (index range of each spectrum) costs no second fetch from memory.
    pub fn segment_parts_visiting<F: FnMut(&[f32], PixelClass)>(
        &self,
        wavenumbers: &[f64],
        parts: &[ImagePart<'_>],
        reads: std::ops::Range<usize>,
        visit: F,
    ) -> Result<Masks, OpError> {
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            // SAFETY: AVX2 is present (checked above).
            return unsafe { self.segment_parts_avx2(wavenumbers, parts, reads, visit) };
        }
        self.segment_parts_inline::<false, F>(wavenumbers, parts, reads, visit)
    }

    /// [`Segmenter::segment_parts`] compiled for AVX2 (identical arithmetic, wider vectors).
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn segment_parts_avx2<F: FnMut(&[f32], PixelClass)>(
        &self,
        wavenumbers: &[f64],
        parts: &[ImagePart<'_>],
        reads: std::ops::Range<usize>,
        visit: F,
    ) -> Result<Masks, OpError> {
        self.segment_parts_inline::<true, F>(wavenumbers, parts, reads, visit)
    }

    #[inline(always)]
    fn segment_parts_inline<const AVX2: bool, F: FnMut(&[f32], PixelClass)>(
        &self,
        wavenumbers: &[f64],
        parts: &[ImagePart<'_>],
        reads: std::ops::Range<usize>,
        mut visit: F,
    ) -> Result<Masks, OpError> {
        check_axis(wavenumbers).map_err(|e| OpError::schema(OP, e))?;
        let (rt, rp) = self.band_ranges(wavenumbers)?;
        let n = wavenumbers.len();
        if reads.end > n {
            return Err(OpError::internal(OP, format!("a visitor reads up to point {} of {n}", reads.end)));
        }
        let mut total = 0;
        for (i, p) in parts.iter().enumerate() {
            if p.xs.len() != p.ys.len() || p.values.len() != p.xs.len() * n {
                return Err(OpError::data(
                    OP,
                    format!(
                        "part {i}: {} x, {} y and {} values do not make spectra of {n} points",
                        p.xs.len(),
                        p.ys.len(),
                        p.values.len()
                    ),
                ));
            }
            total += p.xs.len();
        }
        let (dt, dp) = (rt.len(), rp.len());
        let spectrum = |part: usize, row: usize| &parts[part].values[row * n..(row + 1) * n];

        // Unique pixels (else the sample order, hence the masks, would depend on arrival order).
        let mut keys: Vec<u64> = parts.iter().flat_map(|p| p.xs.iter().zip(p.ys).map(|(&x, &y)| pixel_key(x, y))).collect();
        keys.sort_unstable();
        if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
            return Err(OpError::data(OP, format!("pixel (x {}, y {}) appears twice in the image", w[0] as u32, w[0] >> 32)));
        }
        drop(keys);

        // The fit sample: the `fit_sample` valid spectra of smallest (priority, key), then in (y, x)
        // order. Validity is checked only for the candidates, in rounds of increasing priority,
        // and a valid candidate's two bands are copied while it is in cache (the image is far
        // larger than the caches, so each look at a spectrum is a fetch from memory; every
        // spectrum is fetched once more, below, to be assigned).
        let bands = rt.start.min(rp.start)..rt.end.max(rp.end);
        let width = dt + dp;
        let sample_seed = derive_seed(self.params.seed, SAMPLE_STREAM);
        let mut pending: Vec<(u64, u64, u32, u32)> = Vec::with_capacity(total);
        for (pi, p) in parts.iter().enumerate() {
            for (r, (&x, &y)) in p.xs.iter().zip(p.ys).enumerate() {
                let key = pixel_key(x, y);
                pending.push((mix64(sample_seed ^ key), key, pi as u32, r as u32));
            }
        }
        let target = self.params.fit_sample.min(total);
        let mut chosen: Vec<(u64, usize)> = Vec::with_capacity(target);
        let mut chosen_bands: Vec<f32> = Vec::with_capacity(target * width);
        while chosen.len() < self.params.fit_sample && !pending.is_empty() {
            let need = (self.params.fit_sample - chosen.len()).min(pending.len());
            if need < pending.len() {
                pending.select_nth_unstable_by_key(need - 1, |&(prio, key, _, _)| (prio, key));
            }
            for i in 0..need {
                if i + AHEAD < need {
                    let (_, _, p, r) = pending[i + AHEAD];
                    prefetch(&spectrum(p as usize, r as usize)[bands.clone()]);
                }
                let (_, key, p, r) = pending[i];
                let s = spectrum(p as usize, r as usize);
                let (st, sp) = (&s[rt.clone()], &s[rp.clone()]);
                if all_finite(st) && all_finite(sp) {
                    chosen.push((key, chosen_bands.len() / width));
                    chosen_bands.extend_from_slice(st);
                    chosen_bands.extend_from_slice(sp);
                }
            }
            pending.drain(..need);
        }
        drop(pending);
        let m = chosen.len();
        chosen.sort_unstable_by_key(|&(key, _)| key);
        let sample_bands = |c: usize| &chosen_bands[c * width..(c + 1) * width];

        // Step 1: tissue.
        let mut tissue_step = StepSummary::empty(self.params.tissue_band, dt, m);
        let mut paraffin_step = StepSummary::empty(self.params.paraffin_band, dp, 0);
        let mut tissue_rule = Rule::Never;
        let mut sample_tissue = vec![false; m];
        if m > 0 {
            let mut feats = Vec::with_capacity(m * dt);
            for &(_, c) in &chosen {
                feats.extend_from_slice(&sample_bands(c)[..dt]);
            }
            let model = self.tissue.fit(&feats, dt)?;
            let eligible = vec![true; m];
            tissue_rule = judge::<AVX2>(model, &feats, &eligible, self.params.min_tissue_absorbance, &self.params, &mut tissue_step);
            for (t, row) in sample_tissue.iter_mut().zip(feats.chunks_exact(dt)) {
                *t = tissue_rule.is_class::<AVX2>(row);
            }
        }

        // Step 2: paraffin, with the tissue spectra zeroed, judged on the non-tissue spectra.
        let mut paraffin_rule = Rule::Never;
        if sample_tissue.iter().any(|&t| !t) {
            let mut feats = Vec::with_capacity(m * dp);
            for (&(_, c), &t) in chosen.iter().zip(&sample_tissue) {
                if t {
                    feats.extend(std::iter::repeat_n(0.0f32, dp));
                } else {
                    feats.extend_from_slice(&sample_bands(c)[dt..]);
                }
            }
            let model = self.paraffin.fit(&feats, dp)?;
            let eligible: Vec<bool> = sample_tissue.iter().map(|&t| !t).collect();
            paraffin_rule =
                judge::<AVX2>(model, &feats, &eligible, self.params.min_paraffin_absorbance, &self.params, &mut paraffin_step);
        }

        // Assign every spectrum (one fetch each: validity and both rules while it is in L1).
        let mut classes = Vec::with_capacity(total);
        let (mut n_tissue, mut n_paraffin, mut invalid) = (0, 0, 0);
        let fetch = if reads.is_empty() { bands.clone() } else { bands.start.min(reads.start)..bands.end.max(reads.end) };
        for (pi, p) in parts.iter().enumerate() {
            for r in 0..p.xs.len() {
                if r + AHEAD < p.xs.len() {
                    prefetch(&spectrum(pi, r + AHEAD)[fetch.clone()]);
                }
                let s = spectrum(pi, r);
                let (st, sp) = (&s[rt.clone()], &s[rp.clone()]);
                let class = if !(all_finite(st) && all_finite(sp)) {
                    invalid += 1;
                    PixelClass::Invalid
                } else if tissue_rule.is_class::<AVX2>(st) {
                    n_tissue += 1;
                    PixelClass::Tissue
                } else if paraffin_rule.is_class::<AVX2>(sp) {
                    n_paraffin += 1;
                    PixelClass::Paraffin
                } else {
                    PixelClass::Background
                };
                visit(s, class);
                classes.push(class);
            }
        }
        let summary = SegmentSummary {
            spectra: total,
            invalid,
            fitted: m,
            tissue: n_tissue,
            paraffin: n_paraffin,
            background: total - invalid - n_tissue - n_paraffin,
            tissue_step,
            paraffin_step,
        };
        Ok(Masks { classes, summary })
    }
}

/// Judges the two clusters of `model` from the eligible fitted rows, fills `step` and returns
/// the step's rule (see the module docs).
fn judge<const AVX2: bool>(
    model: KMeansModel,
    feats: &[f32],
    eligible: &[bool],
    min_absorbance: f64,
    params: &SegmentParams,
    step: &mut StepSummary,
) -> Rule {
    let dim = model.dim();
    let rows = || feats.chunks_exact(dim).zip(model.labels()).zip(eligible).filter(|(_, &e)| e).map(|(rl, _)| rl);

    // Band intensity (mean absorbance over the band) per K-means cluster: names dim and bright.
    let mut count = [0usize; 2];
    let mut band_sum = [0.0f64; 2];
    for (row, &label) in rows() {
        count[label as usize] += 1;
        band_sum[label as usize] += row.iter().map(|&v| f64::from(v)).sum::<f64>() / dim as f64;
    }
    let eligible_n = count[0] + count[1];
    let band_mean = |j: usize| if count[j] > 0 { band_sum[j] / count[j] as f64 } else { 0.0 };
    // An empty cluster counts as the dim one; ties keep K-means order.
    let bright = if count[0] == 0 || (count[1] > 0 && band_mean(1) >= band_mean(0)) { 1 } else { 0 };
    let dimc = 1 - bright;

    // Projection on the centroid axis: 0 at the dim centroid, 1 at the bright one.
    let origin = model.centroid(dimc).to_vec();
    let axis: Vec<f64> = model.centroid(bright).iter().zip(&origin).map(|(b, d)| b - d).collect();
    let norm2: f64 = axis.iter().map(|a| a * a).sum();
    let w: Vec<f64> = if norm2 > 0.0 { axis.iter().map(|a| a / norm2).collect() } else { vec![0.0; dim] };
    let mut s_sum = [0.0f64; 2];
    let mut s_sum2 = [0.0f64; 2];
    for (row, &label) in rows() {
        let s = Lanes::<AVX2>::project(row, &origin, &w);
        s_sum[label as usize] += s;
        s_sum2[label as usize] += s * s;
    }
    let s_mean = |j: usize| if count[j] > 0 { s_sum[j] / count[j] as f64 } else { 0.0 };
    let s_sd = |j: usize| if count[j] > 0 { (s_sum2[j] / count[j] as f64 - s_mean(j).powi(2)).max(0.0).sqrt() } else { 0.0 };
    let (md, mb, sd_d, sd_b) = (s_mean(dimc), s_mean(bright), s_sd(dimc), s_sd(bright));
    let gap = mb - md;
    let spread = sd_d + sd_b;
    let separation = if count[dimc] == 0 || norm2 == 0.0 || gap <= 0.0 {
        0.0
    } else if spread > 0.0 {
        gap / spread
    } else {
        f64::INFINITY
    };
    let min_size = ((params.min_cluster_fraction * eligible_n as f64).ceil() as usize).max(1);
    let two = count[dimc] >= min_size && count[bright] >= min_size && separation >= params.min_separation;
    let case = if eligible_n == 0 {
        Clusters::NoData
    } else if two {
        match (band_mean(bright) >= min_absorbance, band_mean(dimc) >= min_absorbance) {
            (true, true) => Clusters::AllClass,
            (true, false) => Clusters::Two,
            _ => Clusters::NoClass,
        }
    } else if band_sum[0] + band_sum[1] >= min_absorbance * eligible_n as f64 {
        Clusters::AllClass
    } else {
        Clusters::NoClass
    };
    let threshold = match params.boundary {
        Boundary::Midpoint => 0.5,
        Boundary::Spread if spread > 0.0 => md + gap * sd_d / spread,
        Boundary::Spread => md + 0.5 * gap,
    };
    *step = StepSummary {
        band: step.band,
        points: dim,
        case,
        real_clusters: if eligible_n == 0 { 0 } else if two { 2 } else { 1 },
        fitted: feats.len() / dim,
        eligible: eligible_n,
        sizes: [count[dimc], count[bright]],
        intensity: [band_mean(dimc), band_mean(bright)],
        position: [md, mb],
        spread: [sd_d, sd_b],
        separation,
        boundary: if case == Clusters::Two { threshold } else { f64::NAN },
        centroids: vec![origin.clone(), model.centroid(bright).to_vec()],
        iterations: model.iterations(),
        inertia: model.inertia(),
        converged: model.converged(),
    };
    match case {
        Clusters::Two => match params.boundary {
            Boundary::Midpoint => Rule::Nearest { model, bright },
            Boundary::Spread => Rule::Project { origin, w, threshold },
        },
        Clusters::AllClass => Rule::Always,
        Clusters::NoClass | Clusters::NoData => Rule::Never,
    }
}

/// The segmentation kernel (`name() = "segment"`): buffers the batches of one image, and in
/// [`Kernel::finish`] fits the masks and emits the same batches with the Boolean columns
/// `tissue`, `paraffin` and `segment_invalid` appended. An image without spectra emits nothing.
/// A batch that breaks the spectra schema, lacks a band or changes the axis mid-image is an error
/// that rejects the image: the kernel drops what it held and is ready for the next image.
///
/// [`SegmentKernel::with_check`] also runs the amide I / non-finite check
/// ([`AmideCheckKernel`]) in the same pass: each spectrum is fetched from memory once for its
/// class and its check, and the output equals the two kernels run one after the other.
#[derive(Debug, Clone)]
pub struct SegmentKernel {
    segmenter: Segmenter,
    check: Option<AmideCheckKernel>,
    held: Vec<Held>,
    axis: Option<Vec<f64>>,
    last: Option<SegmentSummary>,
    /// The last input schema seen, its layout and its output schema (parsing the axis JSON of
    /// every batch again would cost more than the masks of a small batch).
    cache: Option<(SchemaRef, SpectraLayout, SchemaRef)>,
}

/// A held batch with what the kernel already knows about it.
#[derive(Debug, Clone)]
struct Held {
    batch: RecordBatch,
    x: usize,
    y: usize,
    out: SchemaRef,
}

impl SegmentKernel {
    /// A kernel for checked parameters.
    pub fn new(segmenter: Segmenter) -> Self {
        Self { segmenter, check: None, held: Vec::new(), axis: None, last: None, cache: None }
    }

    /// The kernel that also runs `check` on every spectrum (after the masks, with the tissue mask
    /// it needs), appending `amide_i` and `outlier` after the mask columns.
    pub fn with_check(mut self, check: AmideCheckKernel) -> Self {
        self.check = Some(check);
        self.cache = None;
        self
    }

    /// The summary of the last image finished (for logs).
    pub fn last_summary(&self) -> Option<&SegmentSummary> {
        self.last.as_ref()
    }

    /// The layout and output schema of `schema`, validated once per distinct schema.
    fn layout(&mut self, schema: &SchemaRef) -> Result<(SpectraLayout, SchemaRef), OpError> {
        if let Some((input, layout, out)) = &self.cache {
            if Arc::ptr_eq(input, schema) || **input == **schema {
                return Ok((layout.clone(), out.clone()));
            }
        }
        let layout = SpectraLayout::of(schema).map_err(|e| OpError::schema(OP, e))?;
        let out = self.output_schema(schema)?;
        self.cache = Some((schema.clone(), layout.clone(), out.clone()));
        Ok((layout, out))
    }

    fn hold(&mut self, batch: &RecordBatch) -> Result<(), OpError> {
        let (layout, out) = self.layout(&batch.schema())?;
        for (name, idx) in [(crate::schema::SAMPLE, layout.sample), (crate::schema::X, layout.x), (crate::schema::Y, layout.y)] {
            if batch.column(idx).null_count() > 0 {
                return Err(OpError::schema(OP, crate::schema::SchemaError::Nulls(name)));
            }
        }
        SpectraLayout::values(batch).map_err(|e| OpError::schema(OP, e))?;
        match &self.axis {
            Some(axis) if *axis != layout.wavenumbers => {
                return Err(OpError::data(OP, "the wavenumber axis changed between batches of one image"));
            }
            Some(_) => {}
            None => self.axis = Some(layout.wavenumbers),
        }
        self.held.push(Held { batch: batch.clone(), x: layout.x, y: layout.y, out });
        Ok(())
    }

    fn finish_image(&mut self, out: &mut Vec<RecordBatch>) -> Result<(), OpError> {
        let held = std::mem::take(&mut self.held);
        let Some(axis) = self.axis.take() else { return Ok(()) };
        let rows: usize = held.iter().map(|h| h.batch.num_rows()).sum();
        if rows == 0 {
            return Ok(());
        }
        let mut parts = Vec::with_capacity(held.len());
        for h in &held {
            let u32s = |i: usize| {
                h.batch
                    .column(i)
                    .as_any()
                    .downcast_ref::<arrow::array::UInt32Array>()
                    .map(|a| a.values().as_ref())
                    .ok_or_else(|| OpError::internal(OP, "x/y not UInt32 after validation"))
            };
            let values = SpectraLayout::values(&h.batch).map_err(|e| OpError::schema(OP, e))?;
            parts.push(ImagePart { values, xs: u32s(h.x)?, ys: u32s(h.y)? });
        }
        let (mut peaks, mut flags) = (Vec::new(), Vec::new());
        let masks = match &self.check {
            None => self.segmenter.segment_parts(&axis, &parts)?,
            Some(kernel) => {
                let check = kernel.check_for(&axis)?;
                peaks.reserve(rows);
                flags.reserve(rows);
                self.segmenter.segment_parts_visiting(&axis, &parts, check.reads(), |s, class| {
                    let (peak, flag) = check.apply(s, class == PixelClass::Tissue);
                    peaks.push(peak);
                    flags.push(flag);
                })?
            }
        };
        let mut start = 0;
        for h in &held {
            let b = &h.batch;
            let end = start + b.num_rows();
            let classes = &masks.classes[start..end];
            start = end;
            let schema = h.out.clone();
            let flag = |c: PixelClass| -> ArrayRef {
                Arc::new(BooleanArray::new(BooleanBuffer::collect_bool(classes.len(), |i| classes[i] == c), None))
            };
            let mut cols = b.columns().to_vec();
            cols.push(flag(PixelClass::Tissue));
            cols.push(flag(PixelClass::Paraffin));
            cols.push(flag(PixelClass::Invalid));
            if self.check.is_some() {
                cols.push(Arc::new(Float32Array::from(peaks[start - b.num_rows()..start].to_vec())));
                cols.push(Arc::new(BooleanArray::from(flags[start - b.num_rows()..start].to_vec())));
            }
            out.push(RecordBatch::try_new(schema, cols).map_err(|e| OpError::internal(OP, e.to_string()))?);
        }
        self.last = Some(masks.summary);
        Ok(())
    }
}

impl Kernel for SegmentKernel {
    fn name(&self) -> &'static str {
        OP
    }

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef, OpError> {
        let layout = SpectraLayout::of(input).map_err(|e| OpError::schema(OP, e))?;
        self.segmenter.band_ranges(&layout.wavenumbers)?;
        for col in [TISSUE, PARAFFIN, SEGMENT_INVALID] {
            if input.index_of(col).is_ok() {
                return Err(OpError::data(OP, format!("input already has a `{col}` column (segmented twice?)")));
            }
        }
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        for col in [TISSUE, PARAFFIN, SEGMENT_INVALID] {
            fields.push(Field::new(col, DataType::Boolean, false));
        }
        let segmented = Arc::new(Schema::new_with_metadata(fields, input.metadata().clone()));
        match &self.check {
            Some(check) => check.output_schema(&segmented),
            None => Ok(segmented),
        }
    }

    fn push_batch(&mut self, batch: &RecordBatch, _out: &mut Vec<RecordBatch>) -> Result<(), OpError> {
        let result = self.hold(batch);
        if result.is_err() {
            // The image is rejected: drop it so the kernel is clean for the next one.
            self.held.clear();
            self.axis = None;
        }
        result
    }

    fn finish(&mut self, out: &mut Vec<RecordBatch>) -> Result<(), OpError> {
        // Whatever happens, the kernel is ready for the next image afterwards.
        let result = self.finish_image(out);
        self.held.clear();
        self.axis = None;
        if result.is_err() {
            self.last = None;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::run_image;
    use crate::schema::{image_batch, spectra_schema};
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::UInt32Type;
    use proptest::prelude::{any, prop_assert_eq, proptest, ProptestConfig, Strategy};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Kind {
        Tissue(f32),
        Paraffin(f32),
        Slide,
    }

    fn axis() -> Vec<f64> {
        (0..221).map(|i| 1380.0 + 2.0 * i as f64).collect()
    }

    fn g(w: f64, c: f64, fwhm: f64) -> f64 {
        (-4.0 * std::f64::consts::LN_2 * ((w - c) / fwhm).powi(2)).exp()
    }

    fn spectrum(axis: &[f64], kind: Kind, rng: &mut ChaCha8Rng) -> Vec<f32> {
        let offset = rng.random_range(-0.004f32..0.004);
        axis.iter()
            .map(|&w| {
                let clean = match kind {
                    Kind::Tissue(t) => t * (g(w, 1655.0, 40.0) + 0.6 * g(w, 1545.0, 40.0) + 0.12 * g(w, 1450.0, 25.0)) as f32,
                    Kind::Paraffin(t) => t * (0.22 * g(w, 1472.0, 7.0) + 0.26 * g(w, 1462.0, 9.0) + 0.07 * g(w, 1375.0, 8.0)) as f32,
                    Kind::Slide => 0.0,
                };
                clean + offset + rng.random_range(-0.002f32..0.002)
            })
            .collect()
    }

    /// A `w × h` image whose pixel kinds come from `kind(x, y)`, row-major.
    struct Scene {
        axis: Vec<f64>,
        values: Vec<f32>,
        xs: Vec<u32>,
        ys: Vec<u32>,
        kinds: Vec<Kind>,
    }

    fn scene(w: u32, h: u32, seed: u64, kind: impl Fn(u32, u32, &mut ChaCha8Rng) -> Kind) -> Scene {
        let axis = axis();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut s = Scene { axis: axis.clone(), values: Vec::new(), xs: Vec::new(), ys: Vec::new(), kinds: Vec::new() };
        for y in 0..h {
            for x in 0..w {
                let k = kind(x, y, &mut rng);
                s.values.extend(spectrum(&axis, k, &mut rng));
                s.xs.push(x);
                s.ys.push(y);
                s.kinds.push(k);
            }
        }
        s
    }

    /// Tissue disk, paraffin ring, slide corners.
    fn core(w: u32, seed: u64) -> Scene {
        scene(w, w, seed, |x, y, rng| {
            let c = w as f32 / 2.0;
            let r = ((x as f32 + 0.5 - c).hypot(y as f32 + 0.5 - c)) / w as f32;
            if r < 0.3 {
                Kind::Tissue(rng.random_range(0.35..1.2))
            } else if r < 0.45 {
                Kind::Paraffin(rng.random_range(0.5..1.2))
            } else {
                Kind::Slide
            }
        })
    }

    fn expected(k: Kind) -> PixelClass {
        match k {
            Kind::Tissue(_) => PixelClass::Tissue,
            Kind::Paraffin(_) => PixelClass::Paraffin,
            Kind::Slide => PixelClass::Background,
        }
    }

    fn run(s: &Scene, params: &SegmentParams) -> Masks {
        segment_image(params, &s.axis, &s.values, &s.xs, &s.ys).unwrap()
    }

    fn batches(s: &Scene, rows: usize) -> Vec<RecordBatch> {
        let schema = spectra_schema(&s.axis).unwrap();
        let n = s.axis.len();
        (0..s.xs.len())
            .step_by(rows)
            .map(|a| {
                let b = (a + rows).min(s.xs.len());
                image_batch(schema.clone(), "core", s.xs[a..b].to_vec(), s.ys[a..b].to_vec(), s.values[a * n..b * n].to_vec()).unwrap()
            })
            .collect()
    }

    /// (x, y) → class from kernel output.
    fn classes_of(out: &[RecordBatch]) -> std::collections::BTreeMap<(u32, u32), (bool, bool, bool)> {
        let mut m = std::collections::BTreeMap::new();
        for b in out {
            let col = |n: &str| b.column_by_name(n).unwrap().as_boolean().clone();
            let (t, p, i) = (col(TISSUE), col(PARAFFIN), col(SEGMENT_INVALID));
            let xs = b.column_by_name("x").unwrap().as_primitive::<UInt32Type>();
            let ys = b.column_by_name("y").unwrap().as_primitive::<UInt32Type>();
            for r in 0..b.num_rows() {
                m.insert((xs.value(r), ys.value(r)), (t.value(r), p.value(r), i.value(r)));
            }
        }
        m
    }

    #[test]
    fn three_regions_are_found() {
        let s = core(40, 1);
        let masks = run(&s, &SegmentParams::default());
        for (i, &k) in s.kinds.iter().enumerate() {
            assert_eq!(masks.classes[i], expected(k), "pixel {i} {k:?}");
        }
        let sum = &masks.summary;
        assert_eq!((sum.tissue_step.case, sum.paraffin_step.case), (Clusters::Two, Clusters::Two));
        assert_eq!((sum.tissue_step.real_clusters, sum.paraffin_step.real_clusters), (2, 2));
        assert!(sum.tissue_step.separation > 2.0 && sum.paraffin_step.separation > 2.0, "{sum:?}");
        let b = sum.tissue_step.boundary;
        assert!(b > 0.0 && b < 0.5, "spread boundary toward the tight slide cluster: {b}");
        assert_eq!(sum.tissue + sum.paraffin + sum.background, 1600);
        assert_eq!(sum.fitted, 1600);
        assert_eq!(sum.tissue_step.centroids.len(), 2);
        assert_eq!(sum.tissue_step.centroids[0].len(), sum.tissue_step.points);
        assert!(sum.tissue_step.intensity[1] > sum.tissue_step.intensity[0]);
        // The paraffin step fitted every sampled spectrum but judged the non-tissue ones only.
        assert_eq!(sum.paraffin_step.fitted, 1600);
        assert_eq!(sum.paraffin_step.eligible, 1600 - sum.tissue);
    }

    #[test]
    fn midpoint_boundary_is_plain_k_means() {
        // With every pixel fitted, the sample is the image in (y, x) order = input order here.
        let s = core(30, 17);
        let params = SegmentParams { boundary: Boundary::Midpoint, ..SegmentParams::default() };
        let masks = run(&s, &params);
        let (rt, _) = params.check().unwrap().band_ranges(&s.axis).unwrap();
        let n = s.axis.len();
        let feats: Vec<f32> = s.values.chunks_exact(n).flat_map(|c| c[rt.clone()].iter().copied()).collect();
        let km = KMeans::params(2).seed(derive_seed(0, TISSUE_STREAM)).check().unwrap().fit(&feats, rt.len()).unwrap();
        let bright = if km.centroid(1).iter().sum::<f64>() > km.centroid(0).iter().sum::<f64>() { 1 } else { 0 };
        for (i, &l) in km.labels().iter().enumerate() {
            assert_eq!(masks.classes[i] == PixelClass::Tissue, l == bright, "pixel {i}");
        }
        assert_eq!(masks.summary.tissue_step.boundary, 0.5);
    }

    #[test]
    fn spread_boundary_keeps_thin_tissue_that_the_midpoint_loses() {
        // Tissue from thin to thick against a tight slide: the halfway point between the
        // centroids cuts into the thin tissue.
        let s = scene(30, 30, 18, |x, _, rng| if x < 15 { Kind::Tissue(rng.random_range(0.3..1.3)) } else { Kind::Slide });
        let wrong = |b: Boundary| {
            let m = run(&s, &SegmentParams { boundary: b, ..SegmentParams::default() });
            s.kinds.iter().zip(&m.classes).filter(|(&k, &c)| expected(k) != c).count()
        };
        let (spread, midpoint) = (wrong(Boundary::Spread), wrong(Boundary::Midpoint));
        // 450 tissue pixels: the midpoint misses 65, the spread boundary 12.
        assert!(midpoint >= 40 && spread * 4 <= midpoint, "wrong: spread {spread}, midpoint {midpoint}");
    }

    #[test]
    fn fit_on_a_sample_then_assign_all() {
        let s = core(60, 2);
        let masks = run(&s, &SegmentParams { fit_sample: 300, ..SegmentParams::default() });
        assert_eq!(masks.summary.fitted, 300);
        let wrong = s.kinds.iter().zip(&masks.classes).filter(|(&k, &c)| expected(k) != c).count();
        assert_eq!(wrong, 0);
    }

    #[test]
    fn no_tissue_is_not_invented() {
        let s = scene(30, 30, 3, |x, _, rng| if x < 12 { Kind::Paraffin(rng.random_range(0.5..1.2)) } else { Kind::Slide });
        let masks = run(&s, &SegmentParams::default());
        assert_eq!(masks.summary.tissue_step.case, Clusters::NoClass, "{:?}", masks.summary.tissue_step);
        assert_eq!(masks.summary.tissue, 0);
        assert_eq!(masks.summary.paraffin_step.case, Clusters::Two);
        for (i, &k) in s.kinds.iter().enumerate() {
            assert_eq!(masks.classes[i], expected(k));
        }
    }

    #[test]
    fn no_paraffin_is_not_invented() {
        let s = scene(30, 30, 4, |x, _, rng| if x < 12 { Kind::Tissue(rng.random_range(0.35..1.2)) } else { Kind::Slide });
        let masks = run(&s, &SegmentParams::default());
        assert_eq!(masks.summary.tissue_step.case, Clusters::Two);
        assert_eq!(masks.summary.paraffin_step.case, Clusters::NoClass, "{:?}", masks.summary.paraffin_step);
        assert_eq!(masks.summary.paraffin, 0);
        for (i, &k) in s.kinds.iter().enumerate() {
            assert_eq!(masks.classes[i], expected(k));
        }
    }

    #[test]
    fn all_background_image_has_no_tissue_and_no_paraffin() {
        let s = scene(20, 20, 5, |_, _, _| Kind::Slide);
        let masks = run(&s, &SegmentParams::default());
        let sum = &masks.summary;
        assert_eq!((sum.tissue_step.case, sum.paraffin_step.case), (Clusters::NoClass, Clusters::NoClass), "{sum:?}");
        assert_eq!((sum.tissue, sum.paraffin, sum.background), (0, 0, 400));
    }

    #[test]
    fn all_tissue_image_is_all_tissue() {
        // Thickness varies smoothly over the field of view: one population, no background.
        let s = scene(24, 24, 6, |x, y, _| Kind::Tissue(0.3 + 0.9 * ((x + y) as f32 / 46.0)));
        let masks = run(&s, &SegmentParams::default());
        let sum = &masks.summary;
        assert_eq!(sum.tissue_step.case, Clusters::AllClass, "{:?}", sum.tissue_step);
        assert_eq!(sum.tissue, 576);
        assert_eq!(sum.paraffin_step.case, Clusters::NoData);
    }

    #[test]
    fn tissue_in_paraffin_without_slide_is_all_paraffin_outside_tissue() {
        let s = scene(30, 30, 7, |x, _, rng| {
            if x < 15 { Kind::Tissue(rng.random_range(0.4..1.2)) } else { Kind::Paraffin(rng.random_range(0.5..1.2)) }
        });
        let masks = run(&s, &SegmentParams::default());
        assert_eq!(masks.summary.paraffin_step.case, Clusters::AllClass, "{:?}", masks.summary.paraffin_step);
        assert_eq!(masks.summary.paraffin_step.real_clusters, 1);
        for (i, &k) in s.kinds.iter().enumerate() {
            assert_eq!(masks.classes[i], expected(k));
        }
    }

    #[test]
    fn thresholds_are_parameters() {
        // A strict tissue minimum turns the tissue cluster away; no separation requirement and
        // no size requirement keep even a two-pixel cluster.
        let s = core(30, 8);
        let strict = run(&s, &SegmentParams { min_tissue_absorbance: 5.0, ..SegmentParams::default() });
        assert_eq!(strict.summary.tissue, 0);
        assert_eq!(strict.summary.tissue_step.case, Clusters::NoClass);
        let merged = run(&s, &SegmentParams { min_separation: 1e9, ..SegmentParams::default() });
        assert_eq!(merged.summary.tissue_step.real_clusters, 1);
        // One real cluster: the image's mean amide absorbance decides (here above 0.05: all tissue).
        assert_eq!(merged.summary.tissue_step.case, Clusters::AllClass);

        let few = scene(30, 30, 9, |x, y, _| if (x, y) == (3, 3) || (x, y) == (20, 7) { Kind::Tissue(1.0) } else { Kind::Slide });
        // 2 of 900 spectra: at least ⌈0.1 % × 900⌉ = 1 by default, so two real clusters.
        let default = run(&few, &SegmentParams::default());
        assert_eq!(default.summary.tissue_step.real_clusters, 2);
        assert_eq!(default.summary.tissue, 2);
        let strict_size = run(&few, &SegmentParams { min_cluster_fraction: 0.01, ..SegmentParams::default() });
        assert_eq!(strict_size.summary.tissue, 0);
        assert_eq!(strict_size.summary.tissue_step.real_clusters, 1);
    }

    #[test]
    fn non_finite_spectra_are_flagged_and_not_fitted() {
        let s = core(30, 10);
        let n = s.axis.len();
        let params = SegmentParams::default();
        let (rt, rp) = params.check().unwrap().band_ranges(&s.axis).unwrap();
        let mut bad = s.values.clone();
        let bad_pixels = [(0usize, rt.start + 3, f32::NAN), (17, rp.start, f32::INFINITY), (300, rt.end - 1, f32::NEG_INFINITY)];
        for &(p, i, v) in &bad_pixels {
            bad[p * n + i] = v;
        }
        // NaN outside both bands does not matter here.
        bad[40 * n] = f32::NAN;
        let masks = segment_image(&params, &s.axis, &bad, &s.xs, &s.ys).unwrap();
        assert_eq!(masks.summary.invalid, 3);
        for &(p, _, _) in &bad_pixels {
            assert_eq!(masks.classes[p], PixelClass::Invalid);
        }
        assert_eq!(masks.classes[40], expected(s.kinds[40]));
        assert_eq!(masks.invalid().iter().filter(|&&b| b).count(), 3);
        assert!(masks.tissue().iter().zip(masks.invalid()).all(|(t, i)| !(*t && i)));

        // Excluded from the fit: the rest equals segmenting the image without them.
        let keep: Vec<usize> = (0..s.xs.len()).filter(|p| !bad_pixels.iter().any(|b| b.0 == *p)).collect();
        let values: Vec<f32> = keep.iter().flat_map(|&p| bad[p * n..(p + 1) * n].iter().copied()).collect();
        let xs: Vec<u32> = keep.iter().map(|&p| s.xs[p]).collect();
        let ys: Vec<u32> = keep.iter().map(|&p| s.ys[p]).collect();
        let clean = segment_image(&params, &s.axis, &values, &xs, &ys).unwrap();
        let kept: Vec<PixelClass> = keep.iter().map(|&p| masks.classes[p]).collect();
        assert_eq!(kept, clean.classes);
        assert_eq!(clean.summary.tissue_step, masks.summary.tissue_step);
    }

    #[test]
    fn all_invalid_image_is_flagged_not_rejected() {
        let mut s = core(10, 11);
        s.values.iter_mut().for_each(|v| *v = f32::NAN);
        let masks = run(&s, &SegmentParams::default());
        assert!(masks.classes.iter().all(|&c| c == PixelClass::Invalid));
        assert_eq!((masks.summary.invalid, masks.summary.fitted), (100, 0));
        assert_eq!((masks.summary.tissue_step.case, masks.summary.paraffin_step.case), (Clusters::NoData, Clusters::NoData));
    }

    #[test]
    fn empty_image_emits_nothing() {
        let axis = axis();
        let masks = segment_image(&SegmentParams::default(), &axis, &[], &[], &[]).unwrap();
        assert!(masks.classes.is_empty());
        assert_eq!(masks.summary.tissue_step.case, Clusters::NoData);
        let mut kernel = SegmentParams::default().check().unwrap().kernel();
        assert!(run_image(&mut kernel, &[]).unwrap().is_empty());
        let schema = spectra_schema(&axis).unwrap();
        let empty = image_batch(schema, "core", vec![], vec![], vec![]).unwrap();
        assert!(run_image(&mut kernel, &[empty.clone(), empty]).unwrap().is_empty());
    }

    #[test]
    fn an_axis_without_a_band_is_a_data_error_naming_it() {
        let short: Vec<f64> = (0..100).map(|i| 1500.0 + 2.0 * i as f64).collect(); // 1500–1698: no CH₂ band
        let values = vec![0.1f32; 100 * 4];
        let err = segment_image(&SegmentParams::default(), &short, &values, &[0, 1, 2, 3], &[0; 4]).unwrap_err();
        assert!(matches!(err, OpError::Data { .. }), "{err:?}");
        assert!(err.to_string().contains("paraffin band 1450–1480 cm⁻¹"), "{err}");
        let high: Vec<f64> = (0..100).map(|i| 1300.0 + 2.0 * i as f64).collect(); // 1300–1498
        let err = segment_image(&SegmentParams::default(), &high, &values, &[0, 1, 2, 3], &[0; 4]).unwrap_err();
        assert!(err.to_string().contains("tissue band 1500–1700 cm⁻¹"), "{err}");

        let mut kernel = SegmentParams::default().check().unwrap().kernel();
        let schema = spectra_schema(&short).unwrap();
        let batch = image_batch(schema.clone(), "core", vec![0], vec![0], vec![0.1; 100]).unwrap();
        assert!(kernel.output_schema(&schema).unwrap_err().to_string().contains("paraffin band"));
        let err = run_image(&mut kernel, &[batch]).unwrap_err();
        assert!(matches!(err, OpError::Data { operator: "segment", .. }), "{err:?}");
    }

    #[test]
    fn contradictory_config_is_rejected() {
        let bad = |p: SegmentParams, needle: &str| {
            let err = p.check().unwrap_err();
            assert!(err.is_config(), "{err:?}");
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        };
        let d = SegmentParams::default;
        bad(SegmentParams { fit_sample: 0, ..d() }, "fit_sample");
        bad(SegmentParams { tissue_band: Band { lo: 1700.0, hi: 1500.0 }, ..d() }, "tissue_band");
        bad(SegmentParams { paraffin_band: Band { lo: 1465.0, hi: 1465.0 }, ..d() }, "paraffin_band");
        bad(SegmentParams { paraffin_band: Band { lo: f64::NAN, hi: 1465.0 }, ..d() }, "paraffin_band");
        bad(SegmentParams { tissue_band: Band { lo: -5.0, hi: 1465.0 }, ..d() }, "positive");
        bad(SegmentParams { max_iter: 0, ..d() }, "max_iter");
        bad(SegmentParams { tolerance: -1.0, ..d() }, "tolerance");
        bad(SegmentParams { min_separation: -1.0, ..d() }, "min_separation");
        bad(SegmentParams { min_tissue_absorbance: f64::INFINITY, ..d() }, "min_tissue_absorbance");
        bad(SegmentParams { min_cluster_fraction: 0.5, ..d() }, "min_cluster_fraction");
        assert_eq!(SegmentParams { tolerance: 0.0, min_separation: 0.0, ..d() }.check().unwrap().params().tolerance, 0.0);
    }

    #[test]
    fn toml_section_parses_and_rejects_unknown_keys_and_k() {
        let p: SegmentParams = toml::from_str(
            "tissue_band = { lo = 1520.0, hi = 1700.0 }\nfit_sample = 5000\nseed = 9\nmin_separation = 2.0\n",
        )
        .unwrap();
        assert_eq!(p.tissue_band, Band::new(1520.0, 1700.0));
        assert_eq!((p.fit_sample, p.seed, p.min_separation), (5000, 9, 2.0));
        assert_eq!(p.paraffin_band, SegmentParams::default().paraffin_band);
        let err = toml::from_str::<SegmentParams>("k = 3\n").unwrap_err().to_string();
        assert!(err.contains("unknown field `k`"), "{err}");
        assert!(toml::from_str::<SegmentParams>("fitsample = 3\n").is_err());
        let back: SegmentParams = toml::from_str(&toml::to_string(&SegmentParams::default()).unwrap()).unwrap();
        assert_eq!(back, SegmentParams::default());
    }

    #[test]
    fn descending_axis_gives_the_same_masks() {
        let s = core(30, 12);
        let n = s.axis.len();
        let axis: Vec<f64> = s.axis.iter().rev().copied().collect();
        let values: Vec<f32> = s.values.chunks_exact(n).flat_map(|c| c.iter().rev().copied()).collect();
        let up = run(&s, &SegmentParams::default());
        let down = segment_image(&SegmentParams::default(), &axis, &values, &s.xs, &s.ys).unwrap();
        assert_eq!(up.classes, down.classes);
    }

    #[test]
    fn duplicate_pixels_are_a_data_error() {
        let mut s = core(10, 13);
        s.xs[5] = s.xs[4];
        let err = segment_image(&SegmentParams::default(), &s.axis, &s.values, &s.xs, &s.ys).unwrap_err();
        assert!(matches!(err, OpError::Data { .. }));
        assert!(err.to_string().contains("(x 4, y 0) appears twice"), "{err}");
        let err = segment_image(&SegmentParams::default(), &s.axis, &s.values[1..], &s.xs, &s.ys).unwrap_err();
        assert!(err.to_string().contains("do not make spectra"), "{err}");
    }

    #[test]
    fn kernel_appends_columns_and_recovers_after_errors() {
        let s = core(20, 14);
        let mut kernel = SegmentParams::default().check().unwrap().kernel();
        assert_eq!(kernel.name(), "segment");
        let input = batches(&s, 64);
        let declared = kernel.output_schema(&input[0].schema()).unwrap();
        let names: Vec<&str> = declared.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["sample", "x", "y", "spectrum", TISSUE, PARAFFIN, SEGMENT_INVALID]);
        assert_eq!(declared.metadata(), input[0].schema().metadata());
        let mut out = Vec::new();
        for b in &input {
            kernel.push_batch(b, &mut out).unwrap();
            assert!(out.is_empty(), "nothing before finish");
        }
        kernel.finish(&mut out).unwrap();
        assert_eq!(out.len(), input.len());
        for (o, i) in out.iter().zip(&input) {
            assert_eq!(o.schema(), declared);
            assert_eq!(o.num_rows(), i.num_rows());
            assert_eq!(o.column(3).to_data(), i.column(3).to_data(), "spectra pass through");
            assert_eq!(o.column(4).null_count(), 0);
        }
        let first = classes_of(&out);
        assert_eq!(kernel.last_summary().unwrap().spectra, 400);

        // Segmenting twice is refused.
        assert!(kernel.output_schema(&declared).unwrap_err().to_string().contains("already has a `tissue` column"));

        // An axis change mid-image rejects the image; the next image is unaffected.
        let other = spectra_schema(&s.axis.iter().map(|w| w + 0.5).collect::<Vec<_>>()).unwrap();
        let odd = image_batch(other, "core", vec![99], vec![99], s.values[..s.axis.len()].to_vec()).unwrap();
        let mut out = Vec::new();
        kernel.push_batch(&input[0], &mut out).unwrap();
        assert!(kernel.push_batch(&odd, &mut out).unwrap_err().to_string().contains("axis changed"));
        let again = run_image(&mut kernel, &input).unwrap();
        assert_eq!(classes_of(&again), first);
    }

    #[test]
    fn the_check_in_the_same_pass_equals_the_check_after() {
        use crate::kernel::run_chain;
        use crate::outliers::{AmideCheckKernel, OutlierParams};
        let mut s = core(30, 17);
        let n = s.axis.len();
        s.values[3 * n + 2] = f32::NAN; // outside both bands: only the check flags it
        s.values[(15 * 30 + 15) * n..(15 * 30 + 16) * n].iter_mut().for_each(|v| *v *= 40.0); // tissue, amide I far too high
        let check = AmideCheckKernel::new(OutlierParams::default()).unwrap().checking(Band::new(1400.0, 1780.0));
        for rows in [64, 900] {
            let input = batches(&s, rows);
            let mut fused = SegmentParams::default().check().unwrap().kernel().with_check(check.clone());
            assert_eq!(fused.output_schema(&input[0].schema()).unwrap().fields().len(), 9);
            let one = run_image(&mut fused, &input).unwrap();
            let mut chain: Vec<Box<dyn Kernel>> = vec![Box::new(SegmentParams::default().check().unwrap().kernel()), Box::new(check.clone())];
            let two = run_chain(&mut chain, input).unwrap();
            assert_eq!(one, two, "batches of {rows}");
            let flagged: usize = one.iter().map(|b| b.column_by_name("outlier").unwrap().as_boolean().true_count()).sum();
            assert!(flagged >= 2, "the NaN and the bright tissue spectrum are flagged ({flagged})");
        }
    }

    fn shuffled(v: &mut [RecordBatch], seed: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for i in (1..v.len()).rev() {
            v.swap(i, rng.random_range(0..=i));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]
        /// The masks and the fit are the same for any batch size, batch order and fit sample
        /// (sampling by pixel hash), and a kernel reused across images gives the same answer.
        #[test]
        fn masks_do_not_depend_on_batching(
            rows in 1usize..300,
            order in any::<u64>(),
            fit_sample in (1usize..900).prop_map(|v| v.max(20)),
            seed in any::<u64>(),
        ) {
            let s = core(30, 15);
            let params = SegmentParams { fit_sample, seed, ..SegmentParams::default() };
            let mut kernel = params.check().unwrap().kernel();
            let reference = run_image(&mut kernel, &batches(&s, 900)).unwrap();
            let reference_summary = kernel.last_summary().unwrap().clone();
            let mut input = batches(&s, rows);
            shuffled(&mut input, order);
            let out = run_image(&mut kernel, &input).unwrap();
            prop_assert_eq!(classes_of(&out), classes_of(&reference));
            prop_assert_eq!(kernel.last_summary().unwrap(), &reference_summary);
        }
    }

    #[test]
    fn sample_is_order_independent_and_seeded() {
        let s = core(30, 16);
        let params = SegmentParams { fit_sample: 50, ..SegmentParams::default() };
        let a = run(&s, &params);
        // Reverse the pixel order entirely.
        let n = s.axis.len();
        let rev = Scene {
            axis: s.axis.clone(),
            values: s.values.chunks_exact(n).rev().flatten().copied().collect(),
            xs: s.xs.iter().rev().copied().collect(),
            ys: s.ys.iter().rev().copied().collect(),
            kinds: Vec::new(),
        };
        let b = run(&rev, &params);
        assert_eq!(a.summary, b.summary);
        assert_eq!(a.classes, b.classes.into_iter().rev().collect::<Vec<_>>());
        let other = run(&s, &SegmentParams { seed: 1, ..params });
        assert_ne!(a.summary.tissue_step.centroids, other.summary.tissue_step.centroids, "another seed, another sample");
    }
}
