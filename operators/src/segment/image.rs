//! The image-level segmentation: [`Segmenter`] picks the fit sample, fits and judges the tissue
//! and paraffin K-means, and assigns every spectrum of the image.
use super::judge::{judge, Rule};
use super::kernel::SegmentKernel;
use super::params::SegmentParams;
use super::seed::{derive_seed, mix64, pixel_key, SAMPLE_STREAM};
use super::summary::{Masks, PixelClass, SegmentSummary, StepSummary};
use super::OP;
use crate::axis::{min_max, Band};
use crate::error::OpError;
use crate::finite::all_finite;
use crate::kmeans::KMeans;
use crate::lanes::avx2;
use crate::prefetch::{prefetch, AHEAD};
use crate::schema::check_axis;

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
    pub(super) params: SegmentParams,
    pub(super) tissue: KMeans,
    pub(super) paraffin: KMeans,
}

/// [`SegmentParams::check`] then [`Segmenter::segment`]: the masks of one image given as one
/// row-major slice of spectra (`xs.len() × wavenumbers.len()` values) and pixel coordinates.
pub fn segment_image(params: &SegmentParams, wavenumbers: &[f64], values: &[f32], xs: &[u32], ys: &[u32]) -> Result<Masks, OpError> {
    params.check()?.segment(wavenumbers, values, xs, ys)
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
            // SAFETY: `avx2()` just detected AVX2 at run time, the only requirement of
            // `segment_parts_avx2`.
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
                    format!("part {i}: {} x, {} y and {} values do not make spectra of {n} points", p.xs.len(), p.ys.len(), p.values.len()),
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
            paraffin_rule = judge::<AVX2>(model, &feats, &eligible, self.params.min_paraffin_absorbance, &self.params, &mut paraffin_step);
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
