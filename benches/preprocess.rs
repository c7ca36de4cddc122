//! The whole preprocessing chain (segment → outlier checks → truncate + EMSC → residual outliers →
//! resample → normalize) on raw instrument spectra (≈1500 points, 900–3800 cm⁻¹) held in memory,
//! one thread: isolates compute from I/O. The fused chain (what `preprocess` and `run` use) is
//! measured beside the same steps run as separate kernels. Reports spectra/s and GB/s of raw spectra beside a
//! plain memory copy of the same bytes measured in the same run.
// The allocator the `ftirflow` binary uses (see src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ftirflow::config::PreprocessConfig;
use ftirflow::io::{open, ReadOptions};
use ftirflow::plan::{EmscFitter, PreprocessPlan};
use ftirflow::synth::{generate, SynthConfig};

fn chain(c: &mut Criterion) {
    // The default archive's core size (320×320 px; the K-means fit sample of 20,000 spectra is
    // then a fifth of the image) and a small core (128×128 px: the fit sees every spectrum).
    for size in [320, 128] {
        chain_on(c, size);
    }
}

fn chain_on(c: &mut Criterion, size: u32) {
    let dir = tempfile::tempdir().unwrap();
    // One patient: a CA and an AT core; the CA core is processed.
    let cfg = SynthConfig { patients: 1, size, ..SynthConfig::default() };
    generate(&cfg, dir.path(), &|_, _| {}).unwrap();
    let image = dir.path().join("images/P01_CA.hdr");
    let batches: Vec<_> = open(&image, &ReadOptions::new("P01_CA")).unwrap().map(|b| b.unwrap()).collect();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let bytes: usize = batches.iter().map(|b| ftirflow::operators::SpectraLayout::values(b).unwrap().len() * 4).sum();
    let pcfg = PreprocessConfig::default();
    let mut fitter = EmscFitter::new(&pcfg, 1).unwrap();
    fitter.add_image(batches.clone()).unwrap();
    let state = fitter.finish("bench").unwrap();
    let plan = PreprocessPlan::new(&pcfg, Some(&state)).unwrap();
    let raw: Vec<f32> = batches.iter().flat_map(|b| ftirflow::operators::SpectraLayout::values(b).unwrap().to_vec()).collect();

    let mut g = c.benchmark_group(format!("preprocess_chain_{size}x{size}"));
    g.throughput(Throughput::Elements(rows as u64));
    g.sample_size(10);
    let mut copy = vec![0f32; raw.len()];
    g.bench_function("memcpy_same_bytes", |b| b.iter(|| copy.copy_from_slice(&raw)));
    g.bench_function("full_chain_default_config", |b| b.iter(|| plan.run_image(batches.clone()).unwrap()));
    g.bench_function("step_by_step_kernels", |b| {
        b.iter(|| ftirflow::operators::run_chain(&mut plan.sequential_kernels().unwrap(), batches.clone()).unwrap())
    });
    g.finish();
    eprintln!("chain input: {rows} spectra, {:.1} MB of raw spectra", bytes as f64 / 1e6);
}

criterion_group!(benches, chain);
criterion_main!(benches);
