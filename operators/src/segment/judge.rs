//! The naming of a step's two K-means clusters (see the module docs of [`crate::segment`]): the
//! statistics on the centroid axis, the case ([`Clusters`]) and the [`Rule`] that then classes
//! each spectrum.
use super::params::{Boundary, SegmentParams};
use super::summary::{Clusters, StepSummary};
use crate::kmeans::KMeansModel;
use crate::lanes::Lanes;

/// How one step decides a spectrum's class (see the module docs).
pub(super) enum Rule {
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
    pub(super) fn is_class<const AVX2: bool>(&self, row: &[f32]) -> bool {
        match self {
            Rule::Never => false,
            Rule::Always => true,
            Rule::Nearest { model, bright } => model.nearest_with::<AVX2>(row).0 == *bright,
            Rule::Project { origin, w, threshold } => Lanes::<AVX2>::project(row, origin, w) > *threshold,
        }
    }
}

/// Judges the two clusters of `model` from the eligible fitted rows, fills `step` and returns
/// the step's rule (see the module docs).
pub(super) fn judge<const AVX2: bool>(
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
        real_clusters: if eligible_n == 0 {
            0
        } else if two {
            2
        } else {
            1
        },
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
