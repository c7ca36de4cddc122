//! Grad-CAM correctness: the head-only gradient equals finite differences and the usual full
//! backward; a network trained on classes that differ at one band explains itself there.
use rand::{Rng, SeedableRng};
use tch::nn::{ModuleT, OptimizerConfig};

use super::*;

fn tiny(classes: usize) -> ArchConfig {
    ArchConfig {
        input_points: 24,
        stem_channels: 3,
        stem_kernel: 3,
        stages: vec![4, 5],
        pooled_stages: 1,
        kernel: 3,
        dense: vec![6],
        dropout: 0.5,
        classes,
    }
}

fn grid(n: usize) -> Vec<f64> {
    (0..n).map(|i| 900.0 + 900.0 * i as f64 / (n - 1) as f64).collect()
}

/// A tiny double-precision classifier with every variable random (batch-norm statistics too).
fn random_tiny(classes: usize, seed: i64) -> Classifier {
    let names = (0..classes).map(|c| format!("c{c}")).collect();
    let mut clf = Classifier::init(&tiny(classes), names, grid(24), Device::Cpu, seed).unwrap();
    clf.var_store_mut().double();
    tch::no_grad(|| {
        for (name, mut v) in clf.var_store().variables() {
            let r = if name.ends_with("running_var") { v.rand_like() + 0.5 } else { v.randn_like() * 0.7 };
            v.copy_(&r);
        }
    });
    clf
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

#[test]
fn grad_cam_equals_finite_differences_and_the_full_backward() {
    for classes in [2usize, 3] {
        let clf = random_tiny(classes, 11 + classes as i64);
        let x = Tensor::randn([5, 24], (Kind::Double, Device::Cpu));
        let (_, predicted, _, raw) = clf.forward_with_raw_cam(&x).unwrap();
        let raw = to_vec(&raw);
        let a = tch::no_grad(|| clf.net().features_t(&x, false));
        let (b, k, l) = (a.size()[0], a.size()[1], a.size()[2]);
        assert_eq!(l as usize, tiny(classes).feature_length());
        let pred: Vec<i64> = Vec::<i64>::try_from(&predicted).unwrap();

        // The score of row `row`'s predicted class as a function of its feature maps `a` (a
        // batch of one).
        let score = |a: &Tensor, row: usize| -> f64 {
            tch::no_grad(|| {
                let logits = to_vec(&clf.net().head_t(&CareNet::pool(a), false));
                if classes == 2 {
                    if pred[row] == 1 {
                        logits[0]
                    } else {
                        -logits[0]
                    }
                } else {
                    logits[pred[row] as usize]
                }
            })
        };
        let eps = 1e-6;
        let av = to_vec(&a);
        for row in 0..b {
            let a_row = a.get(row).unsqueeze(0);
            let mut alpha = vec![0.0; k as usize];
            for (kk, al) in alpha.iter_mut().enumerate() {
                for ll in 0..l {
                    let bump = Tensor::zeros([1, k, l], (Kind::Double, Device::Cpu));
                    let _ = bump.get(0).get(kk as i64).get(ll).fill_(eps);
                    let d = (score(&(&a_row + &bump), row as usize) - score(&(&a_row - &bump), row as usize)) / (2.0 * eps);
                    *al += d / l as f64;
                }
            }
            for ll in 0..l as usize {
                let expected: f64 = (0..k as usize).map(|kk| alpha[kk] * av[((row * k) as usize + kk) * l as usize + ll]).sum();
                let got = raw[row as usize * l as usize + ll];
                assert!(
                    (got - expected).abs() <= 1e-6 * (1.0 + expected.abs()),
                    "classes {classes} row {row} pos {ll}: {got} vs {expected}"
                );
            }
        }

        // The usual way: forward with autograd through the whole network, gradient of the score
        // with respect to A, α = mean over positions.
        let a_full = clf.net().features_t(&x, false);
        let logits = clf.net().head_t(&CareNet::pool(&a_full), false);
        let (_, _, scores) = clf.heads(&logits);
        let g = Tensor::run_backward(&[scores.sum(Kind::Double)], &[&a_full], false, false);
        let alpha = g[0].mean_dim(2, false, Kind::Double);
        let full = tch::no_grad(|| alpha.unsqueeze(1).bmm(&a_full).squeeze_dim(1));
        for (x, y) in to_vec(&full).iter().zip(&raw) {
            assert!((x - y).abs() <= 1e-12 * (1.0 + x.abs()), "{x} vs {y}");
        }
    }
}

#[test]
fn predictions_agree_with_and_without_grad_cam() {
    let clf =
        Classifier::init(&ArchConfig::carenet_v1(4), ["LA", "LB", "HER2", "TNBC"].map(String::from).to_vec(), grid(467), Device::Cpu, 3)
            .unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let values: Vec<f32> = (0..6 * 467).map(|_| rng.random_range(0.0..0.1)).collect();
    let p = clf.predict_values(&values, 6).unwrap();
    let (q, cams) = clf.predict_values_with_gradcam(&values, 6).unwrap();
    assert_eq!(p.predicted, q.predicted);
    for (a, b) in p.probs.iter().zip(&q.probs) {
        assert!((a - b).abs() < 1e-6);
    }
    for i in 0..6 {
        let m = cams.map(i);
        let max = m.iter().cloned().fold(0.0f32, f32::max);
        assert!(max == 1.0 || max == 0.0, "{max}");
        assert!((p.probs(i).iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
    // Bad input is an error, not a panic.
    assert!(clf.predict_values(&values[..10], 6).is_err());
    let mut nan = values.clone();
    nan[5] = f32::NAN;
    assert!(clf.predict_values(&nan, 6).unwrap_err().to_string().contains("non-finite"));
    assert!(clf.check_grid(&grid(466)).unwrap_err().to_string().contains("466 points"));
}

#[test]
fn a_network_that_can_only_use_one_band_explains_itself_there() {
    // Two classes that differ only by a band at 1240 cm⁻¹: everything else (baselines, noise,
    // distractor bands elsewhere) has the same distribution in both, so the only evidence a
    // trained network can use is that band.
    flush_denormals();
    // One intra-op thread: on a loaded 2-core machine OpenMP's spinning workers slow small
    // batches tenfold.
    set_threads(1);
    tch::manual_seed(5);
    let axis = grid(467);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let mut make = |n: usize| -> (Vec<f32>, Vec<i64>) {
        let mut x = Vec::with_capacity(n * 467);
        let mut y = Vec::with_capacity(n);
        for i in 0..n {
            let class = (i % 2) as i64;
            let (a, b) = (rng.random_range(0.0..0.3), rng.random_range(-0.2..0.2));
            // Distractor bands anywhere but on the class band.
            let dc = if rng.random_bool(0.5) { rng.random_range(950.0..1180.0) } else { rng.random_range(1300.0..1750.0) };
            let dw = rng.random_range(8.0..30.0);
            let dh = rng.random_range(0.0..0.8);
            let amp = if class == 1 { rng.random_range(0.4..1.0) } else { 0.0 };
            // Gaussian bands cut off at 5 widths (no denormal floats, which slow convolutions 50×).
            let gauss = |w: f64, c: f64, width: f64| if (w - c).abs() < 5.0 * width { (-((w - c) / width).powi(2)).exp() } else { 0.0 };
            for &w in &axis {
                let t = (w - 1350.0) / 450.0;
                let v = a + b * t + dh * gauss(w, dc, dw) + amp * gauss(w, 1240.0, 10.0);
                x.push((v + rng.random_range(-0.02..0.02)) as f32);
            }
            y.push(class);
        }
        (x, y)
    };
    let (xtr, ytr) = make(512);
    let (xte, yte) = make(200);
    let arch = ArchConfig::carenet_v1(2);
    let clf = Classifier::init(&arch, vec!["absent".into(), "band".into()], axis.clone(), Device::Cpu, 5).unwrap();
    let mut opt = nn::Adam::default().build(clf.var_store(), 1e-3).unwrap();
    let xt = Tensor::from_slice(&xtr).view([512, 467]);
    let yt = Tensor::from_slice(&ytr).to_kind(Kind::Float);
    for step in 0..150 {
        let idx = Tensor::from_slice(&(0..64).map(|j| ((step * 64 + j * 7) % 512) as i64).collect::<Vec<_>>());
        let logits = clf.net().forward_t(&xt.index_select(0, &idx), true).squeeze_dim(1);
        let loss = logits.binary_cross_entropy_with_logits::<Tensor>(&yt.index_select(0, &idx), None, None, tch::Reduction::Mean);
        opt.backward_step(&loss);
    }
    clf.net().precise_bn((0..8).map(|b| xt.narrow(0, b * 64, 64)));
    let (pred, cams) = clf.predict_values_with_gradcam(&xte, 200).unwrap();
    let correct = pred.predicted.iter().zip(&yte).filter(|(p, y)| **p as i64 == **y).count();
    assert!(correct >= 185, "the band is easy to see: {correct}/200");
    let mut agg = crate::grad_cam::CamAggregator::new(467);
    for i in 0..200 {
        if pred.predicted[i] == 1 {
            agg.push("band", cams.map(i)).unwrap();
        }
    }
    let mean = &agg.summaries()[0].mean;
    let peak = axis[(0..467).max_by(|&a, &b| mean[a].total_cmp(&mean[b])).unwrap()];
    assert!((peak - 1240.0).abs() <= 15.0, "the mean map peaks at {peak} cm⁻¹");
    let bands = crate::grad_cam::top_bands(&axis, mean, 0.9).unwrap();
    assert!(bands[0].contains(1240.0, 10.0), "{bands:#?}");
}

#[test]
fn a_classifier_can_move_to_a_worker_thread() {
    fn send<T: Send>() {}
    send::<Classifier>();
    send::<crate::grad_cam::CamAggregator>();
}

#[test]
fn bf16_convolutions_follow_f32_within_bfloat16_rounding() {
    // CaReNet-V1 with random weights and batch-norm statistics, on smooth random spectra.
    let mut clf = Classifier::init(&ArchConfig::carenet_v1(2), vec!["AT".into(), "CA".into()], grid(467), Device::Cpu, 11).unwrap();
    tch::no_grad(|| {
        for (name, mut v) in clf.var_store().variables() {
            if name.ends_with("running_var") {
                v.copy_(&(v.rand_like() + 0.5));
            } else if name.ends_with("running_mean") {
                v.copy_(&(v.randn_like() * 0.1));
            }
        }
    });
    clf.freeze();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let rows = 64;
    let values: Vec<f32> = (0..rows)
        .flat_map(|_| {
            let (a, f, p) = (rng.random_range(0.5..1.5f32), rng.random_range(1.0..6.0f32), rng.random_range(0.0..6.0f32));
            (0..467).map(move |i| 0.05 * a * (1.0 + (f * i as f32 / 467.0 * std::f32::consts::TAU + p).sin()))
        })
        .collect();
    let x = Tensor::from_slice(&values).view([rows as i64, 467]);
    let f32_features = clf.net().fuse_as(Precision::F32).features(&x);
    // The oneDNN path in f32 against batch norm applied the plain way (no folding, no oneDNN
    // layout): the same up to f32 rounding.
    let plain = clf.net().inference_features(&x);
    let f32_err = (&f32_features - &plain).abs().max().double_value(&[]) / plain.abs().max().double_value(&[]);
    assert!(f32_err < 1e-5, "oneDNN f32 features differ from the plain ones by {f32_err:e} of the largest");
    let bf16_net = clf.net().fuse_as(Precision::Bf16);
    assert_eq!(bf16_net.precision(), Precision::Bf16);
    let bf16_features = bf16_net.features(&x);
    assert_eq!(bf16_features.kind(), Kind::Float, "features come back as f32");
    let scale = f32_features.abs().max().double_value(&[]);
    let err = (&bf16_features - &f32_features).abs().max().double_value(&[]) / scale;
    // bfloat16 keeps 8 bits of mantissa (relative rounding 2^-9 ≈ 0.2 % per value); seven
    // convolutions deep, the activations stay within a few percent of their largest value.
    assert!(err < 0.05, "largest bf16 − f32 difference {err:.4} of the largest activation");
    assert!(err > 0.0, "bf16 actually computed in bf16");
    // The agreement check: f32 against itself agrees exactly; bf16 reports what it measures.
    let same = clf.agreement(&values, rows, Precision::F32).unwrap();
    assert_eq!((same.same_class, same.max_prob_diff), (1.0, 0.0));
    let bf16 = clf.agreement(&values, rows, Precision::Bf16).unwrap();
    assert!(bf16.max_prob_diff > 0.0 && bf16.max_prob_diff < 0.1, "{bf16:?}");
    clf.freeze_as(Precision::Bf16);
    assert_eq!(clf.precision(), Precision::Bf16);
}
