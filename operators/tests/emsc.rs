//! EMSC: the gold standard (Kohler's MATLAB EMSC via biospectools), a naive weighted
//! least-squares reference on random models, f32-vs-f64 agreement, batch-split invariance, bad
//! configurations, non-finite spectra, the kernel's columns and the pure-paraffin components.
use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Float32Type;
use ftirflow_operators::axis::{scaled, Band};
use ftirflow_operators::emsc::{
    mean_reference, pure_paraffin_components, EmscCorrector, EmscKernel, EmscParams, ParaffinMode, B, COEFFICIENTS, RESIDUAL_RMS, TERMS_KEY,
};
use ftirflow_operators::schema::{image_batch, spectra_schema, SpectraLayout};
use ftirflow_operators::{run_image, Kernel, OpError};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// helpers

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
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.next().max(1e-300), self.next());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

fn gauss(w: f64, centre: f64, width: f64) -> f64 {
    (-((w - centre) / width).powi(2)).exp()
}

/// The CaReNet-V1 grid: 467 points, 1800 → 900 cm⁻¹.
fn fingerprint_axis() -> Vec<f64> {
    (0..467).map(|i| 1800.0 - 900.0 * i as f64 / 466.0).collect()
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

/// Pure paraffin spectra: thickness, small shifts and width changes, faint noise.
fn pure_paraffin_spectra(axis: &[f64], rows: usize, rng: &mut Rng) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * axis.len());
    for _ in 0..rows {
        let (t, sh, wd) = (rng.range(0.1, 0.8), rng.range(-1.5, 1.5), rng.range(0.85, 1.2));
        out.extend(axis.iter().map(|&w| (t * paraffin(w, sh, wd) + 2e-4 * rng.normal()) as f32));
    }
    out
}

/// Thin tissue inside the paraffin cluster: paraffin plus a little protein.
fn thin_tissue_spectra(axis: &[f64], rows: usize, rng: &mut Rng) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * axis.len());
    for _ in 0..rows {
        let (t, b, sh) = (rng.range(0.2, 0.6), rng.range(0.15, 0.4), rng.range(-3.0, 3.0));
        out.extend(axis.iter().map(|&w| (t * paraffin(w, 0.0, 1.0) + b * tissue(w, sh) + 2e-4 * rng.normal()) as f32));
    }
    out
}

/// Realistic tissue spectra: thickness b, quadratic baseline, paraffin, band shifts, noise.
fn realistic_spectra(axis: &[f64], rows: usize, rng: &mut Rng) -> Vec<f32> {
    let x = scaled(axis);
    let mut out = Vec::with_capacity(rows * axis.len());
    for _ in 0..rows {
        let b = rng.range(0.3, 1.5);
        let (a0, a1, a2) = (rng.range(-0.05, 0.2), rng.range(-0.1, 0.1), rng.range(-0.05, 0.05));
        let p = rng.range(0.0, 0.6);
        let (sh, psh, pwd) = (rng.range(-2.0, 2.0), rng.range(-1.0, 1.0), rng.range(0.9, 1.1));
        for (i, &w) in axis.iter().enumerate() {
            let v = b * tissue(w, sh) + a0 + a1 * x[i] + a2 * x[i] * x[i] + p * paraffin(w, psh, pwd) + 1e-3 * rng.normal();
            out.push(v as f32);
        }
    }
    out
}

/// The benchmark's model: order 2, reference, 3 pure-paraffin components, non-uniform weights
/// (built once per test binary).
fn realistic_corrector(output_coefficients: bool) -> (Vec<f64>, EmscCorrector) {
    static CACHE: std::sync::OnceLock<[(Vec<f64>, EmscCorrector); 2]> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| [build_realistic_corrector(false), build_realistic_corrector(true)])[output_coefficients as usize].clone()
}

fn build_realistic_corrector(output_coefficients: bool) -> (Vec<f64>, EmscCorrector) {
    let axis = fingerprint_axis();
    let mut rng = Rng(42);
    let training = realistic_spectra(&axis, 400, &mut rng);
    let reference = mean_reference(&training, 400, axis.len());
    let candidates = pure_paraffin_spectra(&axis, 300, &mut rng);
    let params = EmscParams {
        paraffin: ParaffinMode::Interferents,
        weights: Some(axis.iter().map(|&w| if w < 1000.0 { 0.3 } else { 1.0 }).collect()),
        output_coefficients,
        ..Default::default()
    };
    let interferents = params.paraffin_interferents(&candidates, 300, &axis).unwrap();
    assert_eq!(interferents, pure_paraffin_components(&candidates, 300, &axis, 3, 0.1).unwrap());
    assert!(EmscParams::default().paraffin_interferents(&candidates, 300, &axis).unwrap().is_empty());
    let corrector = params.check(&axis, &reference, &interferents).unwrap();
    (axis, corrector)
}

/// max |a − b| / max |b|.
fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    let den = b.iter().map(|y| y.abs()).fold(0.0, f64::max);
    num / den
}

/// Naive reference: the weighted normal equations (MᵀW²M) c = MᵀW² s by Gaussian elimination with
/// partial pivoting, then residual and corrected spectrum, per spectrum, in f64.
fn naive_emsc(model: &[Vec<f64>], w: &[f64], s: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let k = model.len();
    let n = s.len();
    let mut a = vec![vec![0.0; k + 1]; k];
    for r in 0..k {
        for c in 0..k {
            a[r][c] = (0..n).map(|i| w[i] * w[i] * model[r][i] * model[c][i]).sum();
        }
        a[r][k] = (0..n).map(|i| w[i] * w[i] * model[r][i] * s[i]).sum();
    }
    for col in 0..k {
        let piv = (col..k).max_by(|&x, &y| a[x][col].abs().total_cmp(&a[y][col].abs())).unwrap();
        a.swap(col, piv);
        let pivot = a[col].clone();
        for (r, row) in a.iter_mut().enumerate() {
            if r != col {
                let f = row[col] / pivot[col];
                for (x, p) in row[col..].iter_mut().zip(&pivot[col..]) {
                    *x -= f * p;
                }
            }
        }
    }
    let coef: Vec<f64> = (0..k).map(|r| a[r][k] / a[r][r]).collect();
    let corrected = (0..n)
        .map(|i| {
            let resid = s[i] - (0..k).map(|j| model[j][i] * coef[j]).sum::<f64>();
            model[0][i] + resid / coef[0]
        })
        .collect();
    (coef, corrected)
}

fn batch_f32(c: &EmscCorrector, values: &[f32], rows: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = c.n_points();
    let mut out = vec![0.0; rows * n];
    let mut rms = vec![0.0; rows];
    let mut coef = vec![0.0; rows * c.n_coefficients()];
    c.correct_batch(values, rows, &mut out, Some(&mut coef), &mut rms);
    (out, rms, coef)
}

fn gold() -> Option<HashMap<String, Vec<f64>>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/emsc-gold/emsc_gold.csv");
    let Ok(text) = std::fs::read_to_string(path) else {
        println!("skipped: EMSC gold standard not found at {path}");
        return None;
    };
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(|s| s.trim().to_string()).collect();
    let mut cols: Vec<Vec<f64>> = vec![Vec::new(); header.len()];
    for line in lines.filter(|l| !l.trim().is_empty()) {
        for (c, v) in cols.iter_mut().zip(line.split(',')) {
            c.push(v.trim().parse().unwrap());
        }
    }
    Some(header.into_iter().zip(cols).collect())
}

// ---------------------------------------------------------------------------------------------
// gold standard

#[test]
fn gold_standard_quartic_and_weighted() {
    let Some(g) = gold() else { return };
    let axis = &g["wavenumbers"];
    let n = axis.len();
    assert_eq!(n, 3631);
    let raws = [&g["raw_1"], &g["raw_2"]];
    let reference: Vec<f64> = raws[0].iter().zip(raws[1]).map(|(a, b)| (a + b) / 2.0).collect();
    let cases = [
        ("quartic", EmscParams { order: 4, weights: Some(vec![1.0; n]), ..Default::default() }),
        ("weighted", EmscParams { order: 2, weights: Some(g["weights"].clone()), ..Default::default() }),
    ];
    for (name, params) in cases {
        let c = params.check(axis, &reference, &[]).unwrap();
        let mut worst: f64 = 0.0;
        for (idx, raw) in raws.iter().enumerate() {
            let fit = c.correct_f64(raw);
            let corrected = &g[&format!("{name}_corrected_{}", idx + 1)];
            let residual = &g[&format!("{name}_residual_{}", idx + 1)];
            let (ec, er) = (rel_err(&fit.corrected, corrected), rel_err(&fit.residual, residual));
            println!("gold {name} spectrum {}: corrected rel err {ec:.2e}, residual rel err {er:.2e}", idx + 1);
            assert!(ec <= 1e-6 && er <= 1e-6, "{name} {idx}: {ec:e} {er:e}");
            worst = worst.max(ec).max(er);

            // The f32 batch path agrees with the f64 path on these real spectra.
            let s32: Vec<f32> = raw.iter().map(|&v| v as f32).collect();
            let s_rounded: Vec<f64> = s32.iter().map(|&v| v as f64).collect();
            let f64_fit = c.correct_f64(&s_rounded);
            let (out, rms, coef) = batch_f32(&c, &s32, 1);
            let out64: Vec<f64> = out.iter().map(|&v| v as f64).collect();
            let e32 = rel_err(&out64, &f64_fit.corrected);
            println!("gold {name} spectrum {}: f32 batch vs f64 rel err {e32:.2e}", idx + 1);
            assert!(e32 <= 1e-5, "{name} f32: {e32:e}");
            assert!((rms[0] as f64 - f64_fit.residual_rms).abs() <= 1e-4 * f64_fit.residual_rms);
            assert!((coef[0] as f64 - f64_fit.coefficients[0]).abs() <= 1e-5 * f64_fit.coefficients[0].abs());
        }
        println!("gold {name}: worst f64 relative error {worst:.2e}");
    }
}

// ---------------------------------------------------------------------------------------------
// f32 vs f64 on realistic spectra, and the naive reference

#[test]
fn f32_batch_matches_f64_on_realistic_spectra() {
    let (axis, c) = realistic_corrector(true);
    let rows = 300;
    let values = realistic_spectra(&axis, rows, &mut Rng(7));
    let (out, rms, coef) = batch_f32(&c, &values, rows);
    let n = axis.len();
    let k = c.n_coefficients();
    let mut worst: f64 = 0.0;
    for r in 0..rows {
        let s: Vec<f64> = values[r * n..(r + 1) * n].iter().map(|&v| v as f64).collect();
        let fit = c.correct_f64(&s);
        let o: Vec<f64> = out[r * n..(r + 1) * n].iter().map(|&v| v as f64).collect();
        let e = rel_err(&o, &fit.corrected);
        worst = worst.max(e);
        assert!(e <= 1e-5, "row {r}: {e:e}");
        assert!((rms[r] as f64 - fit.residual_rms).abs() <= 1e-3 * fit.residual_rms, "rms {} vs {}", rms[r], fit.residual_rms);
        let cf: Vec<f64> = coef[r * k..(r + 1) * k].iter().map(|&v| v as f64).collect();
        assert!(rel_err(&cf, &fit.coefficients) <= 1e-5);
        // What is left is noise and the band shifts the model cannot express (absorbance ~1).
        assert!(fit.residual_rms < 0.03, "{}", fit.residual_rms);
    }
    println!("realistic spectra: f32 batch vs f64 worst relative error {worst:.2e} (SIMD: {})", c.uses_simd());
}

#[test]
fn realistic_f64_matches_naive_normal_equations() {
    let (axis, c) = realistic_corrector(false);
    let model: Vec<Vec<f64>> = (0..c.n_coefficients()).map(|j| c.model_column(j).to_vec()).collect();
    let values = realistic_spectra(&axis, 5, &mut Rng(3));
    for s in values.chunks_exact(axis.len()) {
        let s: Vec<f64> = s.iter().map(|&v| v as f64).collect();
        let fit = c.correct_f64(&s);
        let (coef, corrected) = naive_emsc(&model, c.weights(), &s);
        assert!(rel_err(&fit.coefficients, &coef) < 1e-8);
        assert!(rel_err(&fit.corrected, &corrected) < 1e-8);
    }
}

/// Axis, reference, interferents, weights, order.
type Model = (Vec<f64>, Vec<f64>, Vec<Vec<f64>>, Vec<f64>, i64);

/// A random well-posed model.
fn random_model() -> impl Strategy<Value = Model> {
    (12usize..90, 0i64..4, 0usize..4, any::<u64>(), prop::bool::ANY).prop_map(|(n, order, m, seed, descending)| {
        let mut rng = Rng(seed);
        let (lo, hi) = (rng.range(800.0, 1200.0), rng.range(1500.0, 4000.0));
        let mut axis: Vec<f64> = (0..n).map(|i| lo + (hi - lo) * i as f64 / (n - 1) as f64).collect();
        if descending {
            axis.reverse();
        }
        let band = |rng: &mut Rng| {
            let (c, wd, h) = (rng.range(lo, hi), rng.range(0.03, 0.2) * (hi - lo), rng.range(0.2, 1.0));
            move |w: f64| h * gauss(w, c, wd)
        };
        let bands: Vec<_> = (0..4).map(|_| band(&mut rng)).collect();
        let reference: Vec<f64> = axis.iter().map(|&w| 0.05 + bands.iter().map(|b| b(w)).sum::<f64>()).collect();
        let interferents: Vec<Vec<f64>> = (0..m)
            .map(|_| {
                let b = band(&mut rng);
                axis.iter().map(|&w| b(w)).collect()
            })
            .collect();
        let weights: Vec<f64> = (0..n).map(|_| if rng.next() < 0.15 { 0.0 } else { rng.range(0.1, 2.0) }).collect();
        (axis, reference, interferents, weights, order)
    })
}

fn random_spectra(c: &EmscCorrector, rows: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed);
    let n = c.n_points();
    let mut out = Vec::with_capacity(rows * n);
    for _ in 0..rows {
        let coef: Vec<f64> = (0..c.n_coefficients()).map(|j| if j == 0 { rng.range(0.3, 2.0) } else { rng.range(-0.3, 0.3) }).collect();
        for i in 0..n {
            let v: f64 = (0..coef.len()).map(|j| coef[j] * c.model_column(j)[i]).sum::<f64>() + 0.01 * rng.normal();
            out.push(v as f32);
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn f64_path_matches_naive_normal_equations((axis, reference, interferents, weights, order) in random_model(), seed in any::<u64>()) {
        let params = EmscParams { order, weights: Some(weights.clone()), ..Default::default() };
        // Random bands can make a (nearly) singular model, which check() refuses: skip those.
        let Ok(c) = params.check(&axis, &reference, &interferents) else { return Ok(()) };
        if c.condition_number() >= 1e4 { return Ok(()); }
        let model: Vec<Vec<f64>> = (0..c.n_coefficients()).map(|j| c.model_column(j).to_vec()).collect();
        let values = random_spectra(&c, 3, seed);
        for s in values.chunks_exact(axis.len()) {
            let s: Vec<f64> = s.iter().map(|&v| v as f64).collect();
            let fit = c.correct_f64(&s);
            let (coef, corrected) = naive_emsc(&model, &weights, &s);
            prop_assert!(rel_err(&fit.coefficients, &coef) < 1e-7, "{:?} vs {:?}", fit.coefficients, coef);
            prop_assert!(rel_err(&fit.corrected, &corrected) < 1e-7);
            // The residual is orthogonal to the weighted model (least-squares optimality).
            for col in &model {
                let g: f64 = (0..s.len()).map(|i| weights[i] * weights[i] * col[i] * fit.residual[i]).sum();
                let scale: f64 = (0..s.len()).map(|i| (weights[i] * weights[i] * col[i] * s[i]).abs()).sum();
                prop_assert!(g.abs() <= 1e-9 * scale.max(1e-300));
            }
        }
    }

    #[test]
    fn f32_batch_matches_f64_on_random_models((axis, reference, interferents, weights, order) in random_model(), seed in any::<u64>()) {
        let params = EmscParams { order, weights: Some(weights), output_coefficients: true, ..Default::default() };
        // Random bands can make a (nearly) singular model, which check() refuses: skip those.
        let Ok(c) = params.check(&axis, &reference, &interferents) else { return Ok(()) };
        if c.condition_number() >= 1e3 { return Ok(()); }
        let rows = 4;
        let values = random_spectra(&c, rows, seed);
        let (out, rms, _) = batch_f32(&c, &values, rows);
        let n = axis.len();
        for r in 0..rows {
            let s: Vec<f64> = values[r * n..(r + 1) * n].iter().map(|&v| v as f64).collect();
            let fit = c.correct_f64(&s);
            let o: Vec<f64> = out[r * n..(r + 1) * n].iter().map(|&v| v as f64).collect();
            prop_assert!(rel_err(&o, &fit.corrected) < 1e-4, "{}", rel_err(&o, &fit.corrected));
            prop_assert!((rms[r] as f64 - fit.residual_rms).abs() <= 1e-2 * fit.residual_rms + 1e-6);
        }
    }

    #[test]
    fn any_split_of_the_rows_gives_identical_bytes(rows in 1usize..40, cuts in prop::collection::vec(0usize..40, 0..5), nan_row in prop::option::of(0usize..40)) {
        let (axis, c) = realistic_corrector(true);
        let n = axis.len();
        let k = c.n_coefficients();
        let mut values = realistic_spectra(&axis, rows, &mut Rng(rows as u64));
        if let Some(r) = nan_row.filter(|&r| r < rows) {
            values[r * n + 5] = f32::NAN;
        }
        let whole = batch_f32(&c, &values, rows);
        let mut bounds: Vec<usize> = cuts.into_iter().filter(|&x| x < rows).collect();
        bounds.extend([0, rows]);
        bounds.sort();
        bounds.dedup();
        let (mut out, mut rms, mut coef) = (Vec::new(), Vec::new(), Vec::new());
        for w in bounds.windows(2) {
            let part = batch_f32(&c, &values[w[0] * n..w[1] * n], w[1] - w[0]);
            out.extend(part.0);
            rms.extend(part.1);
            coef.extend(part.2);
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        prop_assert_eq!(bits(&out), bits(&whole.0));
        prop_assert_eq!(bits(&rms), bits(&whole.1));
        prop_assert_eq!(bits(&coef), bits(&whole.2));
        prop_assert_eq!(coef.len(), rows * k);
    }
}

// ---------------------------------------------------------------------------------------------
// bad configurations

fn expect_config(r: Result<EmscCorrector, OpError>, needle: &str) {
    match r {
        Err(e @ OpError::Config { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(needle), "message {msg:?} lacks {needle:?}");
            assert!(msg.starts_with("invalid emsc configuration"), "{msg}");
        }
        Err(e) => panic!("expected a config error containing {needle:?}, got {e}"),
        Ok(_) => panic!("expected a config error containing {needle:?}, got a corrector"),
    }
}

#[test]
fn bad_configurations_are_config_errors() {
    let axis = fingerprint_axis();
    let n = axis.len();
    let reference: Vec<f64> = axis.iter().map(|&w| tissue(w, 0.0)).collect();
    let par: Vec<Vec<f64>> = {
        let cand = pure_paraffin_spectra(&axis, 50, &mut Rng(1));
        pure_paraffin_components(&cand, 50, &axis, 3, 0.1).unwrap()
    };
    let ok = EmscParams::default();
    assert!(ok.check(&axis, &reference, &[]).is_ok());

    expect_config(EmscParams { order: -1, ..ok.clone() }.check(&axis, &reference, &[]), "order must be ≥ 0");
    expect_config(EmscParams { order: 1000, ..ok.clone() }.check(&axis, &reference, &[]), "too high");
    expect_config(EmscParams { interferent_components: -2, ..ok.clone() }.check(&axis, &reference, &[]), "interferent_components");
    expect_config(EmscParams { pure_paraffin_amide_ratio: 0.0, ..ok.clone() }.check(&axis, &reference, &[]), "pure_paraffin_amide_ratio");
    // Lengths.
    expect_config(EmscParams { weights: Some(vec![1.0; n - 1]), ..ok.clone() }.check(&axis, &reference, &[]), "weights have 466 values");
    expect_config(ok.check(&axis, &reference[1..], &[]), "reference has 466 values");
    expect_config(ok.check(&axis, &reference, &[vec![0.1; n + 1]]), "interferent 1 has 468 values");
    // Weights.
    expect_config(EmscParams { weights: Some(vec![0.0; n]), ..ok.clone() }.check(&axis, &reference, &[]), "all weights are zero");
    let mut neg = vec![1.0; n];
    neg[3] = -1.0;
    expect_config(EmscParams { weights: Some(neg), ..ok.clone() }.check(&axis, &reference, &[]), "weights[3]");
    let mut nan = vec![1.0; n];
    nan[4] = f64::NAN;
    expect_config(EmscParams { weights: Some(nan), ..ok.clone() }.check(&axis, &reference, &[]), "weights[4]");
    let mut few = vec![0.0; n];
    few[..3].fill(1.0);
    expect_config(EmscParams { weights: Some(few), ..ok.clone() }.check(&axis, &reference, &[]), "only 3 wavenumbers have non-zero weight");
    // Reference.
    let mut bad_ref = reference.clone();
    bad_ref[10] = f64::INFINITY;
    expect_config(ok.check(&axis, &bad_ref, &[]), "reference value 10");
    expect_config(ok.check(&axis, &vec![0.0; n], &[]), "all zeros");
    expect_config(ok.check(&[1.0, 1.0, 2.0], &[1.0, 2.0, 3.0], &[]), "wavenumber axis");
    // Singular models.
    expect_config(ok.check(&axis, &reference, std::slice::from_ref(&reference)), "singular model");
    let scaled_ref: Vec<f64> = reference.iter().map(|r| 3.0 * r).collect();
    let err = ok.check(&axis, &reference, &[scaled_ref]).unwrap_err().to_string();
    assert!(err.contains("the reference") && err.contains("interferent 1"), "{err}");
    let x = scaled(&axis);
    let line: Vec<f64> = x.iter().map(|v| 2.0 * v - 0.5).collect();
    let err = ok.check(&axis, &reference, &[line]).unwrap_err().to_string();
    assert!(err.contains("singular model") && err.contains("x̃^1") && err.contains("interferent 1"), "{err}");
    expect_config(EmscParams { order: 30, weights: Some(vec![1.0; n]), ..ok.clone() }.check(&axis, &reference, &[]), "singular model");
    // Interferents mode: wrong count, and zero weights over the paraffin band.
    let interf = EmscParams { paraffin: ParaffinMode::Interferents, ..ok.clone() };
    assert!(interf.check(&axis, &reference, &par).is_ok());
    expect_config(interf.check(&axis, &reference, &par[..2]), "expects 3 paraffin interferents");
    expect_config(EmscParams { interferent_components: 0, ..interf.clone() }.check(&axis, &reference, &[]), "interferent_components ≥ 1");
    let masked: Vec<f64> = axis.iter().map(|&w| if (1350.0..=1500.0).contains(&w) { 0.0 } else { 1.0 }).collect();
    expect_config(EmscParams { weights: Some(masked.clone()), ..interf.clone() }.check(&axis, &reference, &par), "weights are zero at");
    // Mask mode with paraffin components: they would be fitted where their weights are zero.
    expect_config(ok.check(&axis, &reference, &par), "where the weights are zero");
    expect_config(EmscParams { weights: Some(masked), ..ok.clone() }.check(&axis, &reference, &par), "where the weights are zero");
    // A non-paraffin interferent (e.g. a broad water-vapour-like band) is fine in mask mode.
    let broad: Vec<f64> = axis.iter().map(|&w| gauss(w, 1600.0, 60.0)).collect();
    assert!(ok.check(&axis, &reference, &[broad]).is_ok());
}

#[test]
fn toml_section_parses_and_rejects() {
    let p: EmscParams = toml::from_str(
        "order = 3\nparaffin = \"interferents\"\nparaffin_band = { lo = 1340.0, hi = 1490.0 }\noutput_coefficients = true\n",
    )
    .unwrap();
    assert_eq!(p.order, 3);
    assert_eq!(p.paraffin, ParaffinMode::Interferents);
    assert_eq!(p.paraffin_band, Band::new(1340.0, 1490.0));
    assert_eq!(p.interferent_components, 3);
    assert!(p.output_coefficients);
    let empty: EmscParams = toml::from_str("").unwrap();
    assert_eq!(empty, EmscParams::default());
    let neg: EmscParams = toml::from_str("order = -1").unwrap();
    let msg = neg.validate().unwrap_err().to_string();
    assert!(msg.contains("order must be ≥ 0") && msg.contains("got -1"), "{msg}");
    assert!(toml::from_str::<EmscParams>("ordre = 2").is_err());
    assert!(toml::from_str::<EmscParams>("paraffin = \"dewax\"").is_err());
    let back: EmscParams = toml::from_str(&toml::to_string(&p).unwrap()).unwrap();
    assert_eq!(back, p);
}

// ---------------------------------------------------------------------------------------------
// non-finite spectra

#[test]
fn non_finite_spectra_give_nan_rows_not_panics() {
    let (axis, c) = realistic_corrector(true);
    let n = axis.len();
    let k = c.n_coefficients();
    let rows = 6;
    let mut values = realistic_spectra(&axis, rows, &mut Rng(9));
    values[n + 17] = f32::NAN; // row 1
    values[2 * n + 200] = f32::INFINITY; // row 2
    let band = c.weights().iter().position(|&w| w < 1.0).unwrap();
    values[3 * n + band] = f32::NEG_INFINITY; // row 3, at a down-weighted point
    values[4 * n..5 * n].fill(0.0); // row 4: b = 0
    let clean = batch_f32(&c, &values[..n], 1);
    let (out, rms, coef) = batch_f32(&c, &values, rows);
    for r in [1, 2, 3, 4] {
        assert!(out[r * n..(r + 1) * n].iter().all(|v| v.is_nan()), "row {r}");
        assert!(rms[r].is_nan() && coef[r * k..(r + 1) * k].iter().all(|v| v.is_nan()), "row {r}");
        let s: Vec<f64> = values[r * n..(r + 1) * n].iter().map(|&v| v as f64).collect();
        let fit = c.correct_f64(&s);
        assert!(fit.corrected.iter().chain(&fit.coefficients).chain(&fit.residual).all(|v| v.is_nan()));
        assert!(fit.residual_rms.is_nan());
    }
    for r in [0, 5] {
        assert!(out[r * n..(r + 1) * n].iter().all(|v| v.is_finite()) && rms[r].is_finite());
    }
    assert_eq!(&out[..n], &clean.0[..]);
    // Also with a zero-weight mask (mask mode): NaN at a masked point still gives a NaN row.
    let reference = mean_reference(&values, rows, n);
    let mask = EmscParams::default().check(&axis, &reference, &[]).unwrap();
    let masked_point = mask.weights().iter().position(|&w| w == 0.0).unwrap();
    let mut one = values[..n].to_vec();
    one[masked_point] = f32::NAN;
    let (o, r, _) = batch_f32(&mask, &one, 1);
    assert!(o.iter().all(|v| v.is_nan()) && r[0].is_nan());
}

#[test]
fn mean_reference_skips_non_finite_rows() {
    let values = [1.0f32, 2.0, f32::NAN, 4.0, 3.0, 6.0];
    assert_eq!(mean_reference(&values, 3, 2), vec![2.0, 4.0]);
    let all_bad = mean_reference(&[f32::NAN, 1.0], 1, 2);
    assert!(all_bad.iter().all(|v| v.is_nan()));
    expect_config(EmscParams::default().check(&[1000.0, 1001.0], &all_bad, &[]), "not finite");
}

// ---------------------------------------------------------------------------------------------
// kernel

fn spectra_batch(axis: &[f64], values: Vec<f32>) -> RecordBatch {
    let rows = values.len() / axis.len();
    let schema = spectra_schema(axis).unwrap();
    image_batch(schema, "core1", (0..rows as u32).collect(), vec![0; rows], values).unwrap()
}

#[test]
fn kernel_replaces_spectra_and_appends_columns() {
    let (axis, c) = realistic_corrector(true);
    let n = axis.len();
    let k = c.n_coefficients();
    let values = realistic_spectra(&axis, 10, &mut Rng(5));
    let (expect, expect_rms, expect_coef) = batch_f32(&c, &values, 10);
    let mut kernel = EmscKernel::new(c);
    assert_eq!(kernel.name(), "emsc");
    let batch = spectra_batch(&axis, values);
    let declared = kernel.output_schema(&batch.schema()).unwrap();
    let out = run_image(&mut kernel, &[batch.slice(0, 4), batch.slice(4, 6)]).unwrap();
    assert_eq!(out.len(), 2);
    let mut finish = Vec::new();
    kernel.finish(&mut finish).unwrap();
    assert!(finish.is_empty());
    let names: Vec<&str> = declared.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["sample", "x", "y", "spectrum", RESIDUAL_RMS, B, COEFFICIENTS]);
    let terms: Vec<String> = serde_json::from_str(declared.field_with_name(COEFFICIENTS).unwrap().metadata()[TERMS_KEY].as_str()).unwrap();
    assert_eq!(terms, ["b", "a0", "a1", "a2", "d1", "d2", "d3"]);
    let mut got = Vec::new();
    let (mut rms, mut b, mut coef) = (Vec::new(), Vec::new(), Vec::new());
    for o in &out {
        assert_eq!(o.schema(), declared);
        let layout = SpectraLayout::validate_batch(o).unwrap();
        assert!(layout.wavenumbers.iter().zip(&axis).all(|(a, b)| (a - b).abs() < 1e-9));
        got.extend_from_slice(SpectraLayout::values(o).unwrap());
        rms.extend(o.column_by_name(RESIDUAL_RMS).unwrap().as_primitive::<Float32Type>().values().iter().copied());
        b.extend(o.column_by_name(B).unwrap().as_primitive::<Float32Type>().values().iter().copied());
        let list = o.column_by_name(COEFFICIENTS).unwrap().as_fixed_size_list();
        assert_eq!(list.value_length() as usize, k);
        assert_eq!(list.null_count(), 0);
        coef.extend(list.values().as_primitive::<Float32Type>().values().iter().copied());
    }
    assert_eq!(got, expect);
    assert_eq!(rms, expect_rms);
    assert_eq!(coef, expect_coef);
    assert_eq!(b, expect_coef.chunks(k).map(|c| c[0]).collect::<Vec<_>>());
    assert_eq!(got.len(), 10 * n);

    // Applying EMSC twice is refused.
    let twice = kernel.output_schema(&declared).unwrap_err();
    assert!(matches!(twice, OpError::Data { .. }) && twice.to_string().contains("applied twice"), "{twice}");
}

#[test]
fn kernel_without_coefficients_and_axis_mismatch() {
    let (axis, c) = realistic_corrector(false);
    let mut kernel = EmscKernel::new(Arc::new(c));
    let batch = spectra_batch(&axis, realistic_spectra(&axis, 3, &mut Rng(2)));
    let out = run_image(&mut kernel, &[batch.slice(0, 0), batch]).unwrap();
    assert_eq!(out[0].num_rows(), 0);
    assert_eq!(out[0].schema(), out[1].schema());
    let out = &out[1..];
    assert_eq!(out[0].num_columns(), 5);
    assert!(out[0].column_by_name(RESIDUAL_RMS).is_some() && out[0].column_by_name(B).is_none());
    let other: Vec<f64> = axis.iter().map(|w| w + 1.0).collect();
    let wrong = spectra_batch(&other, realistic_spectra(&other, 2, &mut Rng(2)));
    let err = run_image(&mut kernel, &[wrong]).unwrap_err();
    assert!(matches!(err, OpError::Data { .. }) && err.to_string().contains("axis"), "{err}");
    let short: Vec<f64> = axis[..100].to_vec();
    let err = kernel.output_schema(&spectra_schema(&short).unwrap()).unwrap_err();
    assert!(matches!(err, OpError::Data { .. }), "{err}");
}

// ---------------------------------------------------------------------------------------------
// pure paraffin components

/// Naive PCA: covariance matrix, power iteration with deflation.
fn naive_pca(values: &[f32], rows: usize, n: usize, m: usize) -> Vec<Vec<f64>> {
    let mean: Vec<f64> = (0..n).map(|i| (0..rows).map(|r| values[r * n + i] as f64).sum::<f64>() / rows as f64).collect();
    let mut cov = vec![vec![0.0; n]; n];
    for r in 0..rows {
        let d: Vec<f64> = (0..n).map(|i| values[r * n + i] as f64 - mean[i]).collect();
        for i in 0..n {
            for j in 0..n {
                cov[i][j] += d[i] * d[j];
            }
        }
    }
    let mut comps: Vec<Vec<f64>> = Vec::new();
    for c in 0..m {
        let mut v: Vec<f64> = (0..n).map(|i| ((i * 31 + c * 7) % 13) as f64 - 6.0).collect();
        for _ in 0..20000 {
            let mut nv: Vec<f64> = (0..n).map(|i| (0..n).map(|j| cov[i][j] * v[j]).sum()).collect();
            for p in &comps {
                let d: f64 = nv.iter().zip(p).map(|(a, b)| a * b).sum();
                nv.iter_mut().zip(p).for_each(|(a, b)| *a -= d * b);
            }
            let nrm = nv.iter().map(|x| x * x).sum::<f64>().sqrt();
            nv.iter_mut().for_each(|x| *x /= nrm);
            let change = nv.iter().zip(&v).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            v = nv;
            if change < 1e-13 {
                break;
            }
        }
        comps.push(v);
    }
    comps
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn paraffin_components_come_from_pure_spectra_only() {
    let axis = fingerprint_axis();
    let n = axis.len();
    let mut rng = Rng(11);
    let pure = pure_paraffin_spectra(&axis, 200, &mut rng);
    let thin = thin_tissue_spectra(&axis, 120, &mut rng);
    // The paraffin cluster as K-means returns it: pure paraffin and thin tissue, interleaved.
    let mut cluster = Vec::new();
    for r in 0..200 {
        cluster.extend_from_slice(&pure[r * n..(r + 1) * n]);
        if r < 120 {
            cluster.extend_from_slice(&thin[r * n..(r + 1) * n]);
        }
    }
    let from_cluster = pure_paraffin_components(&cluster, 320, &axis, 3, 0.1).unwrap();
    let from_pure = pure_paraffin_components(&pure, 200, &axis, 3, 0.1).unwrap();
    assert!(from_cluster == from_pure, "thin tissue must not enter the fit");
    // Unit norm, orthogonal, sign rule, and no protein in them.
    let amide: Vec<f64> = axis.iter().map(|&w| gauss(w, 1655.0, 20.0) + 0.6 * gauss(w, 1545.0, 18.0)).collect();
    let amide_norm = dot(&amide, &amide).sqrt();
    for (i, c) in from_pure.iter().enumerate() {
        assert!((dot(c, c) - 1.0).abs() < 1e-12);
        for d in &from_pure[i + 1..] {
            assert!(dot(c, d).abs() < 1e-10);
        }
        let peak = c.iter().fold(0.0f64, |a, &v| if v.abs() > a.abs() { v } else { a });
        assert!(peak > 0.0);
        let loading = dot(c, &amide).abs() / amide_norm;
        assert!(loading < 0.05, "component {i} loads {loading} on the amide bands");
    }
    // What the raw cluster would give: its first component carries the protein bands.
    let raw = naive_pca(&cluster, 320, n, 1);
    let raw_loading = dot(&raw[0], &amide).abs() / amide_norm;
    assert!(raw_loading > 0.2, "raw-cluster PCA loading {raw_loading}");

    // Agreement with a naive PCA of the pure spectra.
    let naive = naive_pca(&pure, 200, n, 3);
    for (a, b) in from_pure.iter().zip(&naive) {
        assert!(dot(a, b).abs() > 1.0 - 1e-6, "{}", dot(a, b));
    }

    // Too few pure spectra, or an axis without the bands.
    let err = pure_paraffin_components(&thin, 120, &axis, 3, 0.1).unwrap_err();
    assert!(matches!(err, OpError::Data { .. }) && err.to_string().contains("only 0 of 120"), "{err}");
    let err = pure_paraffin_components(&pure[..3 * n], 3, &axis, 3, 0.1).unwrap_err();
    assert!(err.to_string().contains("need at least 4"), "{err}");
    let short: Vec<f64> = axis.iter().copied().filter(|&w| w < 1600.0).collect();
    let err = pure_paraffin_components(&vec![0.1; short.len()], 1, &short, 1, 0.1).unwrap_err();
    assert!(err.to_string().contains("amide I window"), "{err}");
    assert!(pure_paraffin_components(&pure, 200, &axis, 3, -1.0).unwrap_err().is_config());
    // Noise-free spectra of one varying thickness span one direction: 3 components are refused.
    let one_dir: Vec<f32> =
        (0..20).flat_map(|r| axis.iter().map(move |&w| ((0.1 + 0.03 * r as f64) * paraffin(w, 0.0, 1.0)) as f32)).collect();
    let Err(err) = pure_paraffin_components(&one_dir, 20, &axis, 3, 0.1) else { panic!("rank-1 data refused") };
    assert!(err.to_string().contains("only 1 independent direction"), "{err}");
    assert_eq!(pure_paraffin_components(&one_dir, 20, &axis, 1, 0.1).unwrap().len(), 1);
    assert!(pure_paraffin_components(&pure, 200, &axis, 0, 0.1).unwrap().is_empty());
}

#[test]
fn interferents_mode_removes_paraffin_and_keeps_tissue() {
    let (axis, c) = realistic_corrector(true);
    let n = axis.len();
    let reference = c.reference().to_vec();
    let x = scaled(&axis);
    // A spectrum = 0.8 × reference + baseline + a strong paraffin signal (no noise).
    let s: Vec<f64> = (0..n).map(|i| 0.8 * reference[i] + 0.1 - 0.05 * x[i] + 0.5 * paraffin(axis[i], 0.3, 1.05)).collect();
    let fit = c.correct_f64(&s);
    assert!((fit.coefficients[0] - 0.8).abs() < 0.02, "b = {}", fit.coefficients[0]);
    let err = rel_err(&fit.corrected, &reference);
    assert!(err < 0.02, "paraffin left in the corrected spectrum: {err}");
}
