//! Unit tests of the segmentation: synthetic cores of tissue, paraffin and slide.
use super::seed::{derive_seed, TISSUE_STREAM};
use super::*;
use crate::axis::Band;
use crate::error::OpError;
use crate::kernel::{run_image, Kernel};
use crate::kmeans::KMeans;
use crate::schema::{image_batch, spectra_schema};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::UInt32Type;
use proptest::prelude::{any, prop_assert_eq, proptest, ProptestConfig, Strategy};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

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
            image_batch(Arc::clone(&schema), "core", s.xs[a..b].to_vec(), s.ys[a..b].to_vec(), s.values[a * n..b * n].to_vec()).unwrap()
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
    let s = scene(
        30,
        30,
        7,
        |x, _, rng| {
            if x < 15 {
                Kind::Tissue(rng.random_range(0.4..1.2))
            } else {
                Kind::Paraffin(rng.random_range(0.5..1.2))
            }
        },
    );
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
    let batch = image_batch(Arc::clone(&schema), "core", vec![0], vec![0], vec![0.1; 100]).unwrap();
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
    let p: SegmentParams =
        toml::from_str("tissue_band = { lo = 1520.0, hi = 1700.0 }\nfit_sample = 5000\nseed = 9\nmin_separation = 2.0\n").unwrap();
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
