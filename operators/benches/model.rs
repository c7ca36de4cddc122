//! CaReNet-V1 inference throughput (spectra/s), prediction alone and prediction + Grad-CAM, beside
//! the same model in PyTorch eager (`benches/python/carenet_baseline.py`: same weights, spectra,
//! batch and threads; Grad-CAM the usual way, hooks and a full backward) measured in the same run.
//!
//! `FTIRFLOW_BENCH_THREADS` (default 1) sets the intra-op threads of both; `FTIRFLOW_BENCH_BATCH`
//! (default 250) the batch; `FTIRFLOW_BENCH_ROWS` (default 4000) the number of spectra;
//! `FTIRFLOW_BENCH_DEVICE` (`cpu`, default, or `cuda`: needs `--features cuda` and a CUDA libtorch)
//! where both networks run. On CUDA both sides are timed from host spectra to host results (the
//! copies to and from the GPU included), as a pipeline uses them. The Python side runs through
//! `scripts/python-baseline`, which finds the torch that `scripts/setup-python-baseline.sh`
//! installs (or `TORCH_PYTHONPATH` / `TORCH_LD_LIBRARY_PATH`); without one it prints one `skipped`
//! line. `MODEL_BENCH_NO_PYTHON=1` skips it too.
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ftirflow_operators::model::{self, ArchConfig, Classifier};
use rand::{Rng, SeedableRng};

const POINTS: usize = 467;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `rows` seeded spectra of a realistic shape: a few bands on a baseline, vector-normalized.
fn spectra(rows: usize) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let axis: Vec<f64> = (0..POINTS).map(|i| 900.0 + 900.0 * i as f64 / (POINTS - 1) as f64).collect();
    let mut out = Vec::with_capacity(rows * POINTS);
    for _ in 0..rows {
        let bands: Vec<(f64, f64, f64)> = [1650.0, 1545.0, 1450.0, 1240.0, 1080.0, 1030.0, 1740.0]
            .iter()
            .map(|&c| (c + rng.random_range(-5.0..5.0), rng.random_range(8.0..25.0), rng.random_range(0.1..1.0)))
            .collect();
        let s: Vec<f64> = axis
            .iter()
            .map(|&w| {
                0.05 + bands
                    .iter()
                    .map(|&(c, wd, h)| if (w - c).abs() < 6.0 * wd { h * (-((w - c) / wd).powi(2)).exp() } else { 0.0 })
                    .sum::<f64>()
                    + rng.random_range(-0.01..0.01)
            })
            .collect();
        let norm = s.iter().map(|v| v * v).sum::<f64>().sqrt();
        out.extend(s.iter().map(|v| (v / norm) as f32));
    }
    out
}

fn classifier() -> Classifier {
    let grid: Vec<f64> = (0..POINTS).map(|i| 900.0 + 900.0 * i as f64 / (POINTS - 1) as f64).collect();
    let mut clf = Classifier::init(&ArchConfig::carenet_v1(2), vec!["AT".into(), "CA".into()], grid, tch::Device::Cpu, 7).unwrap();
    // Non-trivial batch-norm statistics, as after training.
    let x = tch::Tensor::from_slice(&spectra(1000)).view([1000, POINTS as i64]);
    clf.net().precise_bn((0..4).map(|b| x.narrow(0, b * 250, 250)));
    clf.freeze();
    clf
}

fn best_of(repeat: usize, mut f: impl FnMut()) -> f64 {
    (0..repeat)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn bench(c: &mut Criterion) {
    let threads = env_usize("FTIRFLOW_BENCH_THREADS", 1);
    let batch = env_usize("FTIRFLOW_BENCH_BATCH", 250);
    let rows = env_usize("FTIRFLOW_BENCH_ROWS", 4000).max(1);
    let device_name = std::env::var("FTIRFLOW_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into());
    let device = match device_name.as_str() {
        "cpu" => tch::Device::Cpu,
        "cuda" if tch::Cuda::is_available() => tch::Device::Cuda(0),
        "cuda" => panic!("FTIRFLOW_BENCH_DEVICE=cuda, but libtorch sees no GPU (build with --features cuda on a machine with one)"),
        other => panic!("FTIRFLOW_BENCH_DEVICE={other}: expected cpu or cuda"),
    };
    model::set_threads(threads);
    let mut clf = classifier();
    // PyTorch gets the same weights, saved from the CPU before the network moves.
    let dir = std::env::temp_dir().join(format!("ftirflow-model-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let weights = dir.join("weights.safetensors");
    clf.var_store().save(&weights).unwrap();
    if device != tch::Device::Cpu {
        clf.var_store_mut().set_device(device);
        clf.freeze();
    }
    let x = spectra(rows);
    let mut g = c.benchmark_group("carenet");
    g.throughput(Throughput::Elements(rows as u64));
    g.sample_size(10);
    g.bench_function(format!("predict batch {batch}, {threads} thread(s)"), |b| {
        b.iter(|| {
            for chunk in x.chunks(batch * POINTS) {
                std::hint::black_box(clf.predict_values(chunk, chunk.len() / POINTS).unwrap());
            }
        })
    });
    g.bench_function(format!("predict + Grad-CAM batch {batch}, {threads} thread(s)"), |b| {
        b.iter(|| {
            for chunk in x.chunks(batch * POINTS) {
                std::hint::black_box(clf.predict_values_with_gradcam(chunk, chunk.len() / POINTS).unwrap());
            }
        })
    });
    g.finish();

    // The comparison, measured in this run: ours (best of 3 passes), then PyTorch eager.
    let ours_predict = rows as f64
        / best_of(3, || {
            for chunk in x.chunks(batch * POINTS) {
                std::hint::black_box(clf.predict_values(chunk, chunk.len() / POINTS).unwrap());
            }
        });
    let ours_cam = rows as f64
        / best_of(3, || {
            for chunk in x.chunks(batch * POINTS) {
                std::hint::black_box(clf.predict_values_with_gradcam(chunk, chunk.len() / POINTS).unwrap());
            }
        });
    println!("\nCaReNet-V1 on {device_name}, {rows} spectra × {POINTS} points, batch {batch}, {threads} thread(s):");
    println!("ftirflow predict            : {ours_predict:>9.0} spectra/s");
    println!("ftirflow predict + Grad-CAM : {ours_cam:>9.0} spectra/s");
    if device == tch::Device::Cpu {
        bf16_against_f32(&mut clf, &x, batch, ours_predict, ours_cam);
    }
    if std::env::var_os("MODEL_BENCH_NO_PYTHON").is_some() {
        println!("PyTorch baseline           : skipped (MODEL_BENCH_NO_PYTHON)");
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let write_f32 = |name: &str, v: &[f32]| {
        let p = dir.join(name);
        std::fs::write(&p, v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
        p
    };
    let input = write_f32("spectra.f32", &x);
    let first = x[..batch.min(rows) * POINTS].to_vec();
    let (p, cams) = clf.predict_values_with_gradcam(&first, first.len() / POINTS).unwrap();
    let ours_probs = write_f32("probs.f32", &p.probs);
    let ours_cam_file = write_f32("cam.f32", &cams.maps);
    // The repository this bench was built from, or — for a binary copied to another machine —
    // the current directory when that is a checkout.
    let repo = [PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")), PathBuf::from(".")]
        .into_iter()
        .find(|r| r.join("benches/python/carenet_baseline.py").is_file())
        .unwrap_or_else(|| PathBuf::from("."));
    let script = repo.join("benches/python/carenet_baseline.py");
    // The wrapper puts the torch of scripts/setup-python-baseline.sh (or TORCH_PYTHONPATH /
    // TORCH_LD_LIBRARY_PATH) on python3's paths.
    let mut cmd = Command::new(repo.join("scripts/python-baseline"));
    cmd.arg(&script)
        .args(["--weights", &weights.display().to_string(), "--spectra", &input.display().to_string()])
        .args(["--rows", &rows.to_string(), "--points", &POINTS.to_string(), "--classes", "2"])
        .args(["--batch", &batch.to_string(), "--threads", &threads.to_string(), "--device", &device_name])
        .args(["--ours-probs", &ours_probs.display().to_string(), "--ours-cam", &ours_cam_file.display().to_string()]);
    let result = cmd.output();
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
            let value = |key: &str| text.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().parse::<f64>().ok());
            match (value("predict_spectra_per_s="), value("gradcam_spectra_per_s=")) {
                (Some(py_p), Some(py_c)) => {
                    println!("PyTorch eager predict       : {py_p:>9.0} spectra/s (ftirflow {:.2}×)", ours_predict / py_p);
                    println!("PyTorch eager + Grad-CAM    : {py_c:>9.0} spectra/s (ftirflow {:.2}×)", ours_cam / py_c);
                    let ours = "(ftirflow vs PyTorch, first batch)";
                    let torch = "(PyTorch on the GPU vs PyTorch on the CPU)";
                    for (key, what) in [
                        ("max_prob_diff", ours),
                        ("max_cam_diff", ours),
                        ("maps_within_0.01", ours),
                        ("torch_gpu_vs_cpu_max_cam_diff", torch),
                        ("torch_gpu_vs_cpu_maps_within_0.01", torch),
                    ] {
                        if let Some(v) = value(&format!("{key}=")) {
                            let v = if key.contains("within") { format!("{v:.4}") } else { format!("{v:.3e}") };
                            println!("{key:<34}: {v} {what}");
                        }
                    }
                }
                _ => println!("PyTorch baseline           : {}", text.lines().last().unwrap_or("no output")),
            }
        }
        Err(e) => println!("PyTorch baseline           : skipped (cannot run python3: {e})"),
    }
}

/// `[run] precision = "bf16"` in the same run: throughput against f32 (`f32_predict`,
/// `f32_cam`, spectra/s) and agreement with f32's classes, probabilities and Grad-CAM maps over all
/// `x`. Leaves `clf` in f32.
fn bf16_against_f32(clf: &mut Classifier, x: &[f32], batch: usize, f32_predict: f64, f32_cam: f64) {
    let rows = x.len() / POINTS;
    let run = |clf: &Classifier| {
        let mut out = Vec::new();
        for chunk in x.chunks(batch * POINTS) {
            out.push(clf.predict_values_with_gradcam(chunk, chunk.len() / POINTS).unwrap());
        }
        out
    };
    let reference = run(clf);
    clf.freeze_as(model::Precision::Bf16);
    let predict = rows as f64
        / best_of(3, || {
            for chunk in x.chunks(batch * POINTS) {
                std::hint::black_box(clf.predict_values(chunk, chunk.len() / POINTS).unwrap());
            }
        });
    let cam = rows as f64
        / best_of(3, || {
            for chunk in x.chunks(batch * POINTS) {
                std::hint::black_box(clf.predict_values_with_gradcam(chunk, chunk.len() / POINTS).unwrap());
            }
        });
    let bf16 = run(clf);
    clf.freeze();
    let (mut same, mut max_p, mut max_cam, mut within, mut values) = (0usize, 0f32, 0f32, 0usize, 0usize);
    for ((p32, c32), (p16, c16)) in reference.iter().zip(&bf16) {
        same += p32.predicted.iter().zip(&p16.predicted).filter(|(a, b)| a == b).count();
        max_p = p32.probs.iter().zip(&p16.probs).map(|(a, b)| (a - b).abs()).fold(max_p, f32::max);
        for (a, b) in c32.maps.iter().zip(&c16.maps) {
            let d = (a - b).abs();
            max_cam = max_cam.max(d);
            within += usize::from(d <= 0.01);
            values += 1;
        }
    }
    println!("ftirflow bf16 predict       : {predict:>9.0} spectra/s ({:.2}× f32)", predict / f32_predict);
    println!("ftirflow bf16 + Grad-CAM    : {cam:>9.0} spectra/s ({:.2}× f32)", cam / f32_cam);
    println!(
        "bf16 vs f32                 : {:.2} % identical classes, max |Δp| {max_p:.4}, Grad-CAM max |Δ| {max_cam:.4}, {:.2} % of map values within 0.01",
        100.0 * same as f64 / rows as f64,
        100.0 * within as f64 / values.max(1) as f64
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
