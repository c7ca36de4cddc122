//! Isolates the segmentation compute (dual K-means fit on a 20 000-spectrum sample + assignment of
//! every pixel + appending the mask columns) on one in-memory 320×320 image of 1504-point spectra
//! (900–3800 cm⁻¹, instrument step 1.9285 cm⁻¹) with tissue, paraffin and bare-slide regions; no
//! I/O. Also the tissue K-means fit alone. Reports spectra/s.
use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ftirflow_operators::kernel::run_image;
use ftirflow_operators::kmeans::KMeans;
use ftirflow_operators::schema::{image_batch, spectra_schema};
use ftirflow_operators::segment::SegmentParams;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SIDE: u32 = 320;
const STEP: f64 = 1.928_467_273_712_158;

fn axis() -> Vec<f64> {
    let start = (900.0 / STEP).floor() as usize;
    (0..1504).map(|i| STEP * (start + i) as f64).collect()
}

fn band(w: f64, c: f64, fwhm: f64) -> f64 {
    (-4.0 * std::f64::consts::LN_2 * ((w - c) / fwhm).powi(2)).exp()
}

/// A seeded image: a tissue disk (radius 0.33), a paraffin ring (to 0.47), bare slide outside.
fn image() -> (Vec<f64>, Vec<f32>, Vec<u32>, Vec<u32>) {
    let axis = axis();
    let f = |g: &dyn Fn(f64) -> f64| axis.iter().map(|&w| g(w) as f32).collect::<Vec<f32>>();
    let tissue = f(&|w| {
        band(w, 1655.0, 40.0)
            + 0.6 * band(w, 1545.0, 40.0)
            + 0.15 * band(w, 1450.0, 25.0)
            + 0.3 * band(w, 3300.0, 250.0)
            + 0.1 * band(w, 2930.0, 30.0)
            + 0.3 * band(w, 1240.0, 40.0)
            + 0.25 * band(w, 1080.0, 30.0)
    });
    let paraffin = f(&|w| {
        band(w, 2920.0, 18.0)
            + 0.65 * band(w, 2850.0, 14.0)
            + 0.22 * band(w, 1472.0, 7.0)
            + 0.26 * band(w, 1462.0, 9.0)
            + 0.07 * band(w, 1375.0, 8.0)
    });
    let n = axis.len();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (mut values, mut xs, mut ys) = (Vec::with_capacity((SIDE * SIDE) as usize * n), Vec::new(), Vec::new());
    let c = SIDE as f64 / 2.0;
    for y in 0..SIDE {
        for x in 0..SIDE {
            let r = ((x as f64 + 0.5 - c).hypot(y as f64 + 0.5 - c)) / SIDE as f64;
            let (spec, scale): (Option<&Vec<f32>>, f32) = if r < 0.33 {
                (Some(&tissue), rng.random_range(0.35..1.2))
            } else if r < 0.47 {
                (Some(&paraffin), rng.random_range(0.5..1.2))
            } else {
                (None, 0.0)
            };
            let offset: f32 = rng.random_range(-0.005..0.005);
            let mut state: u32 = rng.random::<u32>() | 1;
            for i in 0..n {
                // xorshift32 noise, ±0.003
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let noise = (state as f32 / u32::MAX as f32 - 0.5) * 0.006;
                values.push(spec.map_or(0.0, |s| scale * s[i]) + offset + noise);
            }
            xs.push(x);
            ys.push(y);
        }
    }
    (axis, values, xs, ys)
}

fn bench(c: &mut Criterion) {
    let (axis, values, xs, ys) = image();
    let n = axis.len();
    let spectra = xs.len();
    let schema = spectra_schema(&axis).unwrap();
    let rows = 4096;
    let batches: Vec<_> = (0..spectra)
        .step_by(rows)
        .map(|s| {
            let e = (s + rows).min(spectra);
            image_batch(Arc::clone(&schema), "bench/A01", xs[s..e].to_vec(), ys[s..e].to_vec(), values[s * n..e * n].to_vec()).unwrap()
        })
        .collect();
    drop(values);
    let segmenter = SegmentParams::default().check().unwrap();
    let mut kernel = segmenter.kernel();

    let mut g = c.benchmark_group("segment");
    g.sample_size(10);
    g.throughput(Throughput::Elements(spectra as u64));
    g.bench_function("kernel_320x320_1504pts", |b| {
        b.iter(|| {
            let out = run_image(&mut kernel, black_box(&batches)).unwrap();
            assert_eq!(out.len(), batches.len());
            out
        })
    });
    let s = kernel.last_summary().unwrap();
    eprintln!(
        "summary: tissue {} paraffin {} background {} (tissue step {:?}, {} it; paraffin step {:?}, {} it)",
        s.tissue, s.paraffin, s.background, s.tissue_step.case, s.tissue_step.iterations, s.paraffin_step.case, s.paraffin_step.iterations
    );

    // The tissue K-means fit alone: 20 000 spectra × the 1500–1700 cm⁻¹ band.
    let range = ftirflow_operators::axis::Band::new(1500.0, 1700.0).indices(&axis).unwrap();
    let dim = range.len();
    let mut feats = Vec::with_capacity(20_000 * dim);
    for b in &batches {
        let v = ftirflow_operators::SpectraLayout::values(b).unwrap();
        for s in v.chunks_exact(n).step_by(5) {
            if feats.len() < 20_000 * dim {
                feats.extend_from_slice(&s[range.clone()]);
            }
        }
    }
    let km = KMeans::params(2).check().unwrap();
    g.throughput(Throughput::Elements((feats.len() / dim) as u64));
    g.bench_function(format!("kmeans_fit_20000x{dim}"), |b| b.iter(|| km.fit(black_box(&feats), dim).unwrap()));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
