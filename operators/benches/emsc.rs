//! Isolates the EMSC compute (order 2, reference, 3 pure-paraffin interferents, non-uniform weights:
//! k = 7) on one in-memory 128×128 tile (16 384 spectra × 467 points, 1800–900 cm⁻¹), no I/O: the
//! f32 batch path and the Arrow kernel, beside a plain copy of the same bytes; then, in the same
//! run and on the same data, the batched numpy least-squares EMSC of
//! `benches/python/emsc_baseline.py` (one BLAS thread), printing spectra/s, GB/s and the ratio.
//!
//! `cargo bench -p ftirflow-operators --bench emsc` (Python part skipped with a message when
//! python3 or numpy is missing; `EMSC_BENCH_NO_PYTHON=1` skips it too).
use std::hint::black_box;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use ftirflow_operators::axis::scaled;
use ftirflow_operators::emsc::{mean_reference, pure_paraffin_components, EmscCorrector, EmscKernel, EmscParams, ParaffinMode};
use ftirflow_operators::kernel::Kernel;
use ftirflow_operators::schema::{image_batch, spectra_schema};

const ROWS: usize = 128 * 128;
const N: usize = 467;

/// SplitMix64 in [0, 1).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next()
    }
}

fn gauss(w: f64, c: f64, s: f64) -> f64 {
    (-((w - c) / s).powi(2)).exp()
}

fn tissue(w: f64, shift: f64) -> f64 {
    0.8 * gauss(w, 1655.0 + shift, 20.0)
        + 0.5 * gauss(w, 1545.0 + shift, 18.0)
        + 0.15 * gauss(w, 1450.0, 12.0)
        + 0.12 * gauss(w, 1400.0, 15.0)
        + 0.2 * gauss(w, 1240.0, 25.0)
        + 0.18 * gauss(w, 1080.0, 20.0)
        + 0.1 * gauss(w, 1030.0, 15.0)
        + 0.05 * gauss(w, 1740.0, 10.0)
}

fn paraffin(w: f64, shift: f64, width: f64) -> f64 {
    gauss(w, 1462.0 + shift, 6.0 * width)
        + 0.8 * gauss(w, 1473.0 + shift, 4.0 * width)
        + 0.35 * gauss(w, 1373.0 + shift, 5.0 * width)
        + 0.1 * gauss(w, 1305.0, 8.0)
}

/// Seeded tile of realistic spectra and the model fitted on it (reference = mean spectrum,
/// interferents = 3 components of separate pure-paraffin spectra).
fn setup() -> (Vec<f64>, Vec<f32>, EmscCorrector) {
    let axis: Vec<f64> = (0..N).map(|i| 1800.0 - 900.0 * i as f64 / (N - 1) as f64).collect();
    let x = scaled(&axis);
    let mut rng = Rng(1);
    let mut values = Vec::with_capacity(ROWS * N);
    for _ in 0..ROWS {
        let b = rng.range(0.3, 1.5);
        let (a0, a1, a2) = (rng.range(-0.05, 0.2), rng.range(-0.1, 0.1), rng.range(-0.05, 0.05));
        let (p, sh) = (rng.range(0.0, 0.6), rng.range(-2.0, 2.0));
        for (i, &w) in axis.iter().enumerate() {
            let v = b * tissue(w, sh) + a0 + a1 * x[i] + a2 * x[i] * x[i] + p * paraffin(w, 0.0, 1.0) + 2e-3 * (rng.next() - 0.5);
            values.push(v as f32);
        }
    }
    let reference = mean_reference(&values, ROWS, N);
    let mut pure = Vec::new();
    for _ in 0..500 {
        let (t, sh, wd) = (rng.range(0.1, 0.8), rng.range(-1.5, 1.5), rng.range(0.85, 1.2));
        pure.extend(axis.iter().map(|&w| (t * paraffin(w, sh, wd) + 2e-4 * (rng.next() - 0.5)) as f32));
    }
    let interferents = pure_paraffin_components(&pure, 500, &axis, 3, 0.1).expect("pure paraffin");
    let params = EmscParams {
        paraffin: ParaffinMode::Interferents,
        weights: Some(axis.iter().map(|&w| if w < 1000.0 { 0.3 } else { 1.0 }).collect()),
        ..Default::default()
    };
    let corrector = params.check(&axis, &reference, &interferents).expect("valid model");
    (axis, values, corrector)
}

fn bench(c: &mut Criterion) {
    let (axis, values, corrector) = setup();
    let mut out = vec![0.0f32; ROWS * N];
    let mut rms = vec![0.0f32; ROWS];
    let mut copy = vec![0.0f32; ROWS * N];

    let mut g = c.benchmark_group("emsc_spectra");
    g.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(ROWS as u64));
    g.bench_function("correct_batch_k7", |b| b.iter(|| corrector.correct_batch(black_box(&values), ROWS, &mut out, None, &mut rms)));
    // The same work on 128 spectra that stay in L2: the compute alone, without DRAM traffic.
    const HOT: usize = 128;
    g.throughput(Throughput::Elements(HOT as u64));
    g.bench_function("correct_batch_k7_cache_resident_128", |b| {
        b.iter(|| corrector.correct_batch(black_box(&values[..HOT * N]), HOT, &mut out[..HOT * N], None, &mut rms[..HOT]))
    });
    g.throughput(Throughput::Elements(ROWS as u64));
    let mut coefs = vec![0.0f32; ROWS * corrector.n_coefficients()];
    g.bench_function("correct_batch_k7_with_coefficients", |b| {
        b.iter(|| corrector.correct_batch(black_box(&values), ROWS, &mut out, Some(&mut coefs), &mut rms))
    });
    let batch = image_batch(spectra_schema(&axis).unwrap(), "core", (0..ROWS as u32).collect(), vec![0; ROWS], values.clone()).unwrap();
    let mut kernel = EmscKernel::new(corrector.clone());
    g.bench_function("kernel_push_batch", |b| {
        b.iter(|| {
            let mut o = Vec::with_capacity(1);
            kernel.push_batch(black_box(&batch), &mut o).unwrap();
            o
        })
    });
    g.finish();

    let mut g = c.benchmark_group("emsc_bytes");
    g.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::BytesDecimal((ROWS * N * 4) as u64));
    g.bench_function("memcpy", |b| b.iter(|| copy.copy_from_slice(black_box(&values))));
    g.bench_function("correct_batch_k7", |b| b.iter(|| corrector.correct_batch(black_box(&values), ROWS, &mut out, None, &mut rms)));
    g.finish();
}

criterion_group!(benches, bench);

/// Median seconds of `reps` runs of `f`.
fn median_secs(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[reps / 2]
}

/// Writes a little-endian `.npy` (version 1.0).
fn write_npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) -> std::io::Result<()> {
    let dims = match shape {
        [one] => format!("{one},"),
        _ => shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({dims}), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(b"\x93NUMPY\x01\x00")?;
    f.write_all(&(header.len() as u16).to_le_bytes())?;
    f.write_all(header.as_bytes())?;
    f.write_all(data)?;
    f.flush()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f64_bytes(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The same-run comparison: Rust and memcpy timed here, numpy in a child process on the same data.
fn comparison() {
    let (_axis, values, corrector) = setup();
    let bytes = (ROWS * N * 4) as f64;
    let mut out = vec![0.0f32; ROWS * N];
    let mut rms = vec![0.0f32; ROWS];
    let mut copy = vec![0.0f32; ROWS * N];
    let t_copy = median_secs(21, || copy.copy_from_slice(black_box(&values)));
    let t_emsc = median_secs(21, || corrector.correct_batch(black_box(&values), ROWS, &mut out, None, &mut rms));
    let rust_sps = ROWS as f64 / t_emsc;
    const HOT: usize = 128;
    let t_hot =
        median_secs(501, || corrector.correct_batch(black_box(&values[..HOT * N]), HOT, &mut out[..HOT * N], None, &mut rms[..HOT]));
    println!("\n== EMSC same-run comparison ({ROWS} spectra × {N} points, k = {}, one core) ==", corrector.n_coefficients());
    println!("memcpy of the same bytes : {:8.2} GB/s ({:.3} ms)", bytes / t_copy / 1e9, t_copy * 1e3);
    println!(
        "ftirflow EMSC f32 batch  : {:8.0} spectra/s, {:.2} GB/s of spectra read ({:.3} ms; SIMD {})",
        rust_sps,
        bytes / t_emsc / 1e9,
        t_emsc * 1e3,
        corrector.uses_simd()
    );
    println!("  same, 128-spectrum batch : {:8.0} spectra/s (cache-resident: the compute alone)", HOT as f64 / t_hot);
    if std::env::var_os("EMSC_BENCH_NO_PYTHON").is_some() {
        println!("numpy baseline           : skipped (EMSC_BENCH_NO_PYTHON is set)");
        return;
    }
    let script = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../benches/python/emsc_baseline.py"));
    if !script.exists() {
        println!("numpy baseline           : skipped ({} not found)", script.display());
        return;
    }
    let dir = std::env::temp_dir().join(format!("ftirflow-emsc-bench-{}", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        write_npy(&dir.join("spectra.npy"), "<f4", &[ROWS, N], &f32_bytes(&values))?;
        let k = corrector.n_coefficients();
        let mut model = vec![0.0f64; N * k];
        for j in 0..k {
            for (i, v) in corrector.model_column(j).iter().enumerate() {
                model[i * k + j] = *v;
            }
        }
        write_npy(&dir.join("model.npy"), "<f8", &[N, k], &f64_bytes(&model))?;
        write_npy(&dir.join("weights.npy"), "<f8", &[N], &f64_bytes(corrector.weights()))?;
        write_npy(&dir.join("expect.npy"), "<f4", &[ROWS, N], &f32_bytes(&out))
    })();
    if let Err(e) = written {
        println!("numpy baseline           : skipped (cannot write inputs: {e})");
        return;
    }
    let result = Command::new("python3")
        .arg(&script)
        .arg("--spectra")
        .arg(dir.join("spectra.npy"))
        .arg("--model")
        .arg(dir.join("model.npy"))
        .arg("--weights")
        .arg(dir.join("weights.npy"))
        .arg("--expect")
        .arg(dir.join("expect.npy"))
        .args(["--repeat", "5"])
        .env_remove("OPENBLAS_CORETYPE")
        .env_remove("OPENBLAS_L2_SIZE")
        .env("OPENBLAS_NUM_THREADS", "1")
        .env("OMP_NUM_THREADS", "1")
        .env("MKL_NUM_THREADS", "1")
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let output = match result {
        Ok(o) => o,
        Err(e) => {
            println!("numpy baseline           : skipped (cannot run python3: {e})");
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value = |key: &str| stdout.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse::<f64>().ok()));
    let Some(numpy_sps) = value("spectra_per_s=") else {
        let why = stdout.lines().chain(String::from_utf8_lossy(&output.stderr).lines()).last().unwrap_or("").to_string();
        println!("numpy baseline           : skipped ({why})");
        return;
    };
    for line in stdout.lines().filter(|l| l.starts_with("numpy ")) {
        println!("  ({line})");
    }
    println!("numpy lstsq EMSC         : {numpy_sps:8.0} spectra/s (1 BLAS thread)");
    if let Some(pinv) = value("spectra_per_s_pinv=") {
        println!("numpy pinv-once EMSC     : {pinv:8.0} spectra/s (1 BLAS thread)");
        println!("ratio ftirflow / numpy pinv-once : {:.1}×", rust_sps / pinv);
    }
    if let Some(diff) = value("max_rel_diff_vs_expect=") {
        println!("numpy vs ftirflow corrected spectra: max relative difference {diff:.2e}");
    }
    println!("ratio ftirflow / numpy lstsq     : {:.1}×", rust_sps / numpy_sps);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    benches();
    Criterion::default().configure_from_args().final_summary();
    if !args.iter().any(|a| a == "--list" || a == "--test") {
        comparison();
    }
}
