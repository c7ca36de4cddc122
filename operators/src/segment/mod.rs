//! Tissue and paraffin masks by dual K-means (preprocessing steps 1–2, docs/configuration.md), as
//! in CaReNet-V1 (del-Valle, Bernardes & Zezell, arXiv 2310.15094): per image,
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
//! nothing. A pixel (x, y) that appears twice in one image is an
//! [`OpError::Data`](crate::OpError::Data), as is an axis that does not cover a band.
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

// The parameters and their check (`params`), the image-level segmentation (`image`: fit sample,
// the two K-means steps, assignment), the naming of the clusters (`judge`), the streaming kernel
// (`kernel`), the seeds and pixel hashes (`seed`) and the result types (`summary`).
mod image;
mod judge;
mod kernel;
mod params;
mod seed;
mod summary;
#[cfg(test)]
mod tests;

pub use image::{segment_image, ImagePart, Segmenter};
pub use kernel::SegmentKernel;
pub use params::{Boundary, SegmentParams};
pub use summary::{Clusters, Masks, PixelClass, SegmentSummary, StepSummary};

const OP: &str = "segment";

/// Column with the tissue mask (Boolean).
pub const TISSUE: &str = "tissue";
/// Column with the paraffin mask (Boolean).
pub const PARAFFIN: &str = "paraffin";
/// Column flagging spectra with non-finite values in a segmentation band (Boolean).
pub const SEGMENT_INVALID: &str = "segment_invalid";
