//! The preprocessing chain on synthetic archives: it keeps the biology (a simple classifier split
//! by patient separates CA from AT at least as well after preprocessing as on raw tissue spectra,
//! in both paraffin modes), subsets of steps run alone, bad configurations and images are named.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use arrow::array::{AsArray, RecordBatch};
use ftirflow::config::{Config, Keep, Step};
use ftirflow::io::{self, ReadOptions};
use ftirflow::operators::emsc::ParaffinMode;
use ftirflow::operators::SpectraLayout;
use ftirflow::preprocess::{preprocess, PreprocessSummary};
use ftirflow::synth::{generate, SynthConfig};

fn archive(dir: &Path, patients: u32, size: u32) -> PathBuf {
    let cfg = SynthConfig { patients, size, ..SynthConfig::default() };
    generate(&cfg, &dir.join("arch"), &|_, _| {}).unwrap();
    dir.join("arch")
}

/// sample → (patient, type) from labels.csv.
fn labels(arch: &Path) -> HashMap<String, (String, String)> {
    std::fs::read_to_string(arch.join("labels.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].to_string(), (f[1].to_string(), f[2].to_string()))
        })
        .collect()
}

/// (patient, is_cancer, spectrum) of every non-outlier row.
fn rows(table: &Path, labels: &HashMap<String, (String, String)>) -> Vec<(String, bool, Vec<f32>)> {
    let batches: Vec<RecordBatch> = io::read_all(table, &ReadOptions::new("x")).unwrap();
    let mut out = Vec::new();
    for b in &batches {
        let layout = SpectraLayout::validate_batch(b).unwrap();
        let n = layout.n_points();
        let values = SpectraLayout::values(b).unwrap();
        let samples = b.column(layout.sample).as_string::<i32>();
        let outlier = b.column_by_name("outlier").map(|c| c.as_boolean().clone());
        for i in 0..b.num_rows() {
            if outlier.as_ref().map(|o| o.value(i)).unwrap_or(false) {
                continue;
            }
            let (patient, kind) = &labels[samples.value(i)];
            out.push((patient.clone(), kind == "CA", values[i * n..(i + 1) * n].to_vec()));
        }
    }
    out
}

/// Per-spectrum accuracy of a nearest-class-mean classifier, two folds split by patient.
fn nearest_mean_accuracy(rows: &[(String, bool, Vec<f32>)]) -> f64 {
    let mut patients: Vec<&String> = rows.iter().map(|r| &r.0).collect();
    patients.sort();
    patients.dedup();
    let (mut right, mut total) = (0usize, 0usize);
    for fold in 0..2 {
        let test: Vec<&String> = patients.iter().enumerate().filter(|(i, _)| i % 2 == fold).map(|(_, p)| *p).collect();
        let n = rows[0].2.len();
        let mut means = [vec![0f64; n], vec![0f64; n]];
        let mut counts = [0usize; 2];
        for (p, ca, s) in rows.iter().filter(|r| !test.contains(&&r.0)) {
            let c = *ca as usize;
            counts[c] += 1;
            for (m, v) in means[c].iter_mut().zip(s) {
                *m += *v as f64;
            }
            let _ = p;
        }
        for c in 0..2 {
            means[c].iter_mut().for_each(|m| *m /= counts[c].max(1) as f64);
        }
        for (_, ca, s) in rows.iter().filter(|r| test.contains(&&r.0)) {
            let d = |m: &Vec<f64>| s.iter().zip(m).map(|(v, m)| (*v as f64 - m).powi(2)).sum::<f64>();
            let predicted_ca = d(&means[1]) < d(&means[0]);
            right += (predicted_ca == *ca) as usize;
            total += 1;
        }
    }
    right as f64 / total as f64
}

fn run(cfg: &Config, arch: &Path, out: &Path) -> PreprocessSummary {
    // Progress: the job reports each pass's end (done == total) after its last image.
    let passes = std::sync::Mutex::new(Vec::new());
    let progress = |p: ftirflow::convert::ImageProgress| {
        if p.done == p.total {
            passes.lock().unwrap().push((p.pass, p.total));
        }
    };
    let s = preprocess(cfg, &[arch.join("images")], out, None, None, &progress).unwrap();
    assert!(s.rejects.is_empty(), "{:?}", s.rejects);
    let passes = passes.into_inner().unwrap();
    assert_eq!(passes.last(), Some(&("images", s.images)), "{passes:?}");
    s
}

#[test]
fn preprocessing_keeps_the_biology_in_both_paraffin_modes() {
    let dir = tempfile::tempdir().unwrap();
    let arch = archive(dir.path(), 8, 32);
    let labels = labels(&arch);
    // Raw tissue spectra on the same grid: segment + outlier checks + resample only.
    let mut raw_cfg = Config::default();
    raw_cfg.preprocess.steps = vec![Step::Segment, Step::Outliers, Step::Resample];
    raw_cfg.preprocess.keep = Keep::Tissue;
    run(&raw_cfg, &arch, &dir.path().join("raw.parquet"));
    let raw = nearest_mean_accuracy(&rows(&dir.path().join("raw.parquet"), &labels));
    for mode in [ParaffinMode::Mask, ParaffinMode::Interferents] {
        let mut cfg = Config::default();
        cfg.preprocess.keep = Keep::Tissue;
        cfg.preprocess.emsc.paraffin = mode;
        let out = dir.path().join(format!("{mode:?}.parquet"));
        run(&cfg, &arch, &out);
        let pre = nearest_mean_accuracy(&rows(&out, &labels));
        eprintln!("CA vs AT nearest-mean accuracy: raw {raw:.3}, preprocessed ({mode:?}) {pre:.3}");
        assert!(pre >= raw, "{mode:?}: preprocessed {pre:.3} < raw {raw:.3}");
        assert!(pre > 0.7, "{mode:?}: preprocessed accuracy {pre:.3} is near chance");
    }
}

#[test]
fn steps_run_alone_and_the_state_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let arch = archive(dir.path(), 1, 16);
    let mut cfg = Config::default();
    cfg.preprocess.steps = vec![Step::Emsc];
    let state_path = dir.path().join("emsc.json");
    let s = preprocess(&cfg, &[arch.join("images")], &dir.path().join("a.parquet"), None, Some(&state_path), &|_| {}).unwrap();
    assert_eq!(s.spectra, 2 * 16 * 16);
    let batches = io::read_all(&dir.path().join("a.parquet"), &ReadOptions::new("x")).unwrap();
    let schema = batches[0].schema();
    assert!(schema.index_of("emsc_residual_rms").is_ok());
    assert!(schema.index_of("tissue").is_err(), "segment did not run");
    let layout = SpectraLayout::of(&schema).unwrap();
    assert!(layout.wavenumbers.iter().all(|w| (900.0..=1800.0).contains(w)), "truncated to the EMSC range");
    // The saved state reproduces the same output.
    let state = ftirflow::plan::EmscState::load(&state_path).unwrap();
    preprocess(&cfg, &[arch.join("images")], &dir.path().join("b.parquet"), Some(state), None, &|_| {}).unwrap();
    let again = io::read_all(&dir.path().join("b.parquet"), &ReadOptions::new("x")).unwrap();
    assert_eq!(batches, again);
}

#[test]
fn images_that_fail_a_step_are_rejected_and_the_rest_written() {
    let dir = tempfile::tempdir().unwrap();
    let arch = archive(dir.path(), 1, 16);
    // An image whose axis stops at 1400 cm⁻¹ cannot be truncated to 900–1800.
    let cube = ftirflow::io::ImageCube {
        width: 4,
        height: 4,
        wavenumbers: (0..100).map(|i| 1400.0 + 4.0 * i as f64).collect(),
        values: vec![0.3; 1600],
    };
    ftirflow::io::parquet::write_cube(&arch.join("images/short.parquet"), &cube, "short").unwrap();
    let s = preprocess(&Config::default(), &[arch.join("images")], &dir.path().join("o.parquet"), None, None, &|_| {}).unwrap();
    assert_eq!(s.images, 2);
    assert_eq!(s.rejects.len(), 1, "{:?}", s.rejects);
    assert!(s.rejects[0].reason.contains("does not cover"), "{:?}", s.rejects[0]);
}

#[test]
fn bad_configurations_exit_2_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_ftirflow");
    std::fs::write(dir.path().join("bad.toml"), "[preprocess.emsc]\norder = -2\n").unwrap();
    let o = std::process::Command::new(bin)
        .args(["preprocess", "--config", "bad.toml", "nothing-here", "--out", "o.parquet"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("order must be ≥ 0"));
}

#[test]
fn the_fused_chain_equals_the_step_by_step_chain_on_a_synthetic_core() {
    use ftirflow::operators::run_chain;
    use ftirflow::plan::{EmscFitter, PreprocessPlan};
    let dir = tempfile::tempdir().unwrap();
    let arch = archive(dir.path(), 1, 24);
    let image = arch.join("images/P01_CA.hdr");
    let mut batches = io::read_all(&image, &ReadOptions { batch_rows: 100, ..ReadOptions::new("P01_CA") }).unwrap();
    // Poison a few spectra: NaN inside and outside the EMSC range, a zero spectrum.
    {
        let b = &batches[1];
        let layout = SpectraLayout::of(&b.schema()).unwrap();
        let n = layout.n_points();
        let mut v = SpectraLayout::values(b).unwrap().to_vec();
        v[3 * n + 10] = f32::NAN;
        v[5 * n + n - 5] = f32::NAN;
        v[7 * n..8 * n].fill(0.0);
        let mut cols = b.columns().to_vec();
        cols[layout.spectrum] = std::sync::Arc::new(ftirflow::operators::schema::spectrum_array(v, n).unwrap());
        batches[1] = RecordBatch::try_new(b.schema(), cols).unwrap();
    }
    for (mode, coefficients) in [(ParaffinMode::Mask, false), (ParaffinMode::Interferents, true)] {
        let mut cfg = Config::default();
        cfg.preprocess.emsc.paraffin = mode;
        cfg.preprocess.emsc.output_coefficients = coefficients;
        let mut fitter = EmscFitter::new(&cfg.preprocess, 1).unwrap();
        fitter.add_image(batches.clone()).unwrap();
        let state = fitter.finish("test").unwrap();
        let plan = PreprocessPlan::new(&cfg.preprocess, Some(&state)).unwrap();
        let fused = run_chain(&mut plan.kernels().unwrap(), batches.clone()).unwrap();
        let sequential = run_chain(&mut plan.sequential_kernels().unwrap(), batches.clone()).unwrap();
        assert!(plan.sequential_kernels().unwrap().len() > plan.kernels().unwrap().len());
        assert_eq!(fused, sequential, "{mode:?}");
    }
}

#[test]
fn the_chain_on_spectra_read_in_the_plans_band_range_equals_the_chain_on_whole_spectra() {
    use ftirflow::operators::run_chain;
    use ftirflow::plan::{EmscFitter, PreprocessPlan};
    let dir = tempfile::tempdir().unwrap();
    let arch = archive(dir.path(), 1, 24);
    let image = arch.join("images/P01_CA.hdr");
    let whole = io::read_all(&image, &ReadOptions { batch_rows: 100, ..ReadOptions::new("P01_CA") }).unwrap();
    for mode in [ParaffinMode::Mask, ParaffinMode::Interferents] {
        let mut cfg = Config::default();
        cfg.preprocess.emsc.paraffin = mode;
        let mut fitter = EmscFitter::new(&cfg.preprocess, 1).unwrap();
        fitter.add_image(whole.clone()).unwrap();
        let state = fitter.finish("test").unwrap();
        let plan = PreprocessPlan::new(&cfg.preprocess, Some(&state)).unwrap();
        let band = plan.read_band().expect("EMSC runs: a band range");
        let cut = io::read_all(&image, &ReadOptions { batch_rows: 100, ..ReadOptions::new("P01_CA") }.with_bands(Some(band))).unwrap();
        let (n_whole, n_cut) =
            (SpectraLayout::of(&whole[0].schema()).unwrap().n_points(), SpectraLayout::of(&cut[0].schema()).unwrap().n_points());
        assert!(n_cut * 2 < n_whole, "{mode:?}: {n_cut} of {n_whole} points read");
        let a = run_chain(&mut plan.kernels().unwrap(), whole.clone()).unwrap();
        let b = run_chain(&mut plan.kernels().unwrap(), cut).unwrap();
        assert_eq!(a, b, "{mode:?}");
    }
    // Without EMSC every step may look at the whole spectrum: whole spectra are read.
    let mut cfg = Config::default();
    cfg.preprocess.steps.retain(|s| *s != ftirflow::config::Step::Emsc);
    assert_eq!(PreprocessPlan::new(&cfg.preprocess, None).unwrap().read_band(), None);
}
