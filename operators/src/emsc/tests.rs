//! Unit tests of EMSC that need the crate-private batch plan: the AVX2/FMA and portable paths
//! agree, and the defaults.
use super::*;
use crate::axis::{self, Band};

fn toy() -> (Vec<f64>, Vec<f64>, Vec<Vec<f64>>) {
    let axis: Vec<f64> = (0..131).map(|i| 1800.0 - 7.0 * i as f64).collect();
    let g = |w: f64, c: f64, s: f64| (-((w - c) / s).powi(2)).exp();
    let reference = axis.iter().map(|&w| g(w, 1655.0, 25.0) + 0.6 * g(w, 1545.0, 20.0) + 0.2 * g(w, 1240.0, 30.0)).collect();
    let interferents = vec![
        axis.iter().map(|&w| g(w, 1462.0, 8.0) + 0.5 * g(w, 1373.0, 6.0)).collect(),
        axis.iter().map(|&w| g(w, 1473.0, 5.0)).collect(),
    ];
    (axis, reference, interferents)
}

#[test]
fn simd_and_portable_paths_agree() {
    let (axis, reference, interferents) = toy();
    let params = EmscParams {
        paraffin: ParaffinMode::Interferents,
        interferent_components: 2,
        weights: Some(axis.iter().map(|&w| if w < 1000.0 { 0.3 } else { 1.0 }).collect()),
        ..Default::default()
    };
    let c = params.check(&axis, &reference, &interferents).unwrap();
    let n = axis.len();
    let x = axis::scaled(&axis);
    let rows = 5;
    let mut values = Vec::new();
    for r in 0..rows {
        for i in 0..n {
            let v = (1.0 + 0.3 * r as f64) * reference[i]
                + 0.1 * x[i]
                + 0.02 * (r as f64) * interferents[0][i]
                + 1e-3 * ((i * 7 + r) as f64).sin();
            values.push(v as f32);
        }
    }
    let run = |plan: batch::BatchPlan| {
        let mut out = vec![0.0; rows * n];
        let mut rms = vec![0.0; rows];
        let mut coef = vec![0.0; rows * c.n_coefficients()];
        plan.run(&values, rows, &mut out, Some(&mut coef), &mut rms);
        (out, rms, coef)
    };
    let simd = run(c.plan.clone());
    let portable = run(c.plan.clone().with_path(batch::Path::Portable));
    for (a, b) in simd.0.iter().zip(&portable.0) {
        assert!((a - b).abs() <= 1e-5 * 1.2, "{a} vs {b}");
    }
    for (a, b) in simd.1.iter().zip(&portable.1) {
        assert!((a - b).abs() <= 1e-3 * b.abs() + 1e-7, "{a} vs {b}");
    }
}

#[test]
fn params_default_and_names() {
    let p = EmscParams::default();
    assert_eq!(p.order, 2);
    assert_eq!(p.paraffin, ParaffinMode::Mask);
    assert_eq!(p.paraffin_band, Band::new(1500.0, 1350.0));
    let (axis, reference, _) = toy();
    let c = p.check(&axis, &reference, &[]).unwrap();
    assert_eq!(c.coefficient_names(), ["b", "a0", "a1", "a2"]);
    assert!(c.condition_number() >= 1.0);
    // Mask mode: zero weights exactly over 1350–1500 cm⁻¹.
    for (w, nu) in c.weights().iter().zip(&axis) {
        assert_eq!(*w, if (1350.0..=1500.0).contains(nu) { 0.0 } else { 1.0 });
    }
}
