//! Model bundles (round trip and every refusal), `ftirflow train` on a small synthetic archive and
//! on the real collagen table (docs/model.md, README.md).
use std::path::Path;
use std::process::{Command, Output};

use ftirflow::bundle::{self, Bundle, BundleError, BundleManifest, Versions};
use ftirflow::config::{PreprocessConfig, Step, TrainConfig};
use ftirflow::operators::model::{self, ArchConfig, Classifier, DeviceChoice};
use ftirflow::operators::schema::{spectra_schema, SpectraBatchBuilder};

fn ftirflow(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ftirflow")).args(args).current_dir(cwd).output().expect("binary runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn grid() -> Vec<f64> {
    PreprocessConfig::default().resample.grid().unwrap()
}

/// A bundle with fresh weights and a preprocessing that needs no EMSC state.
fn save_bundle(dir: &Path) -> Classifier {
    model::set_threads(1);
    let arch = ArchConfig::carenet_v1(2);
    let clf = Classifier::init(&arch, vec!["AT".into(), "CA".into()], grid(), tch::Device::Cpu, 3).unwrap();
    let preprocess = PreprocessConfig { steps: vec![Step::Resample, Step::Normalize], ..Default::default() };
    let manifest = BundleManifest {
        format: bundle::FORMAT,
        task: "type".into(),
        classes: clf.classes().to_vec(),
        parameters: arch.parameters(),
        architecture: arch,
        wavenumbers: grid(),
        preprocess,
        emsc: None,
        train: TrainConfig::default(),
        seed: 3,
        metrics: serde_json::json!({}),
        versions: Versions::current(),
        weights_sha256: String::new(),
        source: "test".into(),
        probe_sha256: None,
    };
    let saved = manifest.save(dir, &clf).unwrap();
    assert_eq!(saved.weights_sha256.len(), 64);
    clf
}

fn spectra(rows: usize, points: usize) -> Vec<f32> {
    (0..rows * points).map(|i| ((i * 7919) % 1000) as f32 / 20000.0 + 0.01).collect()
}

fn edit_manifest(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join(bundle::MANIFEST);
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

fn copy_bundle(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in [bundle::MANIFEST, bundle::WEIGHTS] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

#[test]
fn bundle_round_trip_gives_identical_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let clf = save_bundle(dir.path());
    let loaded = Bundle::load(dir.path(), DeviceChoice::Cpu).unwrap();
    assert_eq!(loaded.manifest.classes, vec!["AT", "CA"]);
    assert_eq!(loaded.manifest.parameters, 273_745);
    let x = spectra(5, 467);
    let a = clf.predict_values_with_gradcam(&x, 5).unwrap();
    let b = loaded.classifier.predict_values_with_gradcam(&x, 5).unwrap();
    assert_eq!(a, b, "same weights, same outputs");
    // On a spectra batch, with the grid checked.
    let mut builder = SpectraBatchBuilder::new(spectra_schema(&grid()).unwrap(), 5);
    for (i, s) in x.chunks(467).enumerate() {
        builder.push("core", i as u32, 0, s);
    }
    let (p, cams) = loaded.classifier.predict_with_gradcam(&builder.finish().unwrap()).unwrap();
    assert_eq!(p, a.0);
    assert_eq!(cams, a.1);
}

#[test]
fn bundle_errors_say_what_is_wrong() {
    let root = tempfile::tempdir().unwrap();
    let good = root.path().join("good");
    save_bundle(&good);

    let missing = root.path().join("missing");
    copy_bundle(&good, &missing);
    std::fs::remove_file(missing.join(bundle::WEIGHTS)).unwrap();
    let e = Bundle::load(&missing, DeviceChoice::Cpu).unwrap_err();
    assert!(matches!(e, BundleError::Missing { file: "weights.safetensors", .. }), "{e}");
    assert!(Bundle::load(&root.path().join("nowhere"), DeviceChoice::Cpu).is_err());

    let tampered = root.path().join("tampered");
    copy_bundle(&good, &tampered);
    let mut bytes = std::fs::read(tampered.join(bundle::WEIGHTS)).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x40;
    std::fs::write(tampered.join(bundle::WEIGHTS), bytes).unwrap();
    let e = Bundle::load(&tampered, DeviceChoice::Cpu).unwrap_err();
    assert!(matches!(e, BundleError::HashMismatch { .. }), "{e}");
    assert!(e.to_string().contains("changed or corrupted"), "{e}");

    let grid_bad = root.path().join("grid");
    copy_bundle(&good, &grid_bad);
    edit_manifest(&grid_bad, |v| {
        v["wavenumbers"].as_array_mut().unwrap().pop();
    });
    let e = Bundle::load(&grid_bad, DeviceChoice::Cpu).unwrap_err();
    assert!(e.to_string().contains("wavenumbers: a grid of 466 points"), "{e}");

    let shifted = root.path().join("shifted");
    copy_bundle(&good, &shifted);
    edit_manifest(&shifted, |v| {
        for w in v["wavenumbers"].as_array_mut().unwrap() {
            *w = serde_json::json!(w.as_f64().unwrap() + 1.0);
        }
    });
    let e = Bundle::load(&shifted, DeviceChoice::Cpu).unwrap_err();
    assert!(e.to_string().contains("differs from preprocess.resample"), "{e}");

    let format = root.path().join("format");
    copy_bundle(&good, &format);
    edit_manifest(&format, |v| v["format"] = serde_json::json!(99));
    let e = Bundle::load(&format, DeviceChoice::Cpu).unwrap_err();
    assert!(matches!(e, BundleError::Version { what: "bundle format", .. }), "{e}");

    let libtorch = root.path().join("libtorch");
    copy_bundle(&good, &libtorch);
    edit_manifest(&libtorch, |v| v["versions"]["libtorch"] = serde_json::json!("1.13.1"));
    let e = Bundle::load(&libtorch, DeviceChoice::Cpu).unwrap_err();
    assert!(e.to_string().contains("libtorch 1.13.1 cannot be loaded"), "{e}");

    let classes = root.path().join("classes");
    copy_bundle(&good, &classes);
    edit_manifest(&classes, |v| v["classes"] = serde_json::json!(["AT", "CA", "X"]));
    let e = Bundle::load(&classes, DeviceChoice::Cpu).unwrap_err();
    assert!(e.to_string().contains("3 names for a 2-class architecture"), "{e}");

    let unknown = root.path().join("unknown");
    copy_bundle(&good, &unknown);
    edit_manifest(&unknown, |v| v["colour"] = serde_json::json!("blue"));
    let e = Bundle::load(&unknown, DeviceChoice::Cpu).unwrap_err();
    assert!(e.to_string().contains("unknown field `colour`"), "{e}");

    // Spectra on another grid are refused at inference.
    let loaded = Bundle::load(&good, DeviceChoice::Cpu).unwrap();
    let other: Vec<f64> = (0..234).map(|i| 1801.264 - 3.857 * i as f64).collect();
    let mut b = SpectraBatchBuilder::new(spectra_schema(&other).unwrap(), 1);
    b.push("core", 0, 0, &spectra(1, 234));
    let e = loaded.classifier.predict(&b.finish().unwrap()).unwrap_err();
    assert!(e.to_string().contains("the model expects 467 points"), "{e}");
}

fn metrics(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap()
}

#[test]
fn train_on_a_small_synthetic_archive() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = ftirflow(&["synth", "--out", "arch", "--cores", "16", "--size", "24"], d);
    assert!(o.status.success(), "{}", text(&o));
    std::fs::write(d.join("fast.toml"), "[train]\nepochs = 8\nspectra_per_epoch = 1000\nspectra_per_core = 150\nthreads = 1\n").unwrap();
    let o = ftirflow(&["train", "--config", "fast.toml", "--labels", "arch/labels.csv", "--task", "type", "arch", "--out", "model"], d);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("pooled") && t.contains("grad-cam top bands of CA"), "{t}");
    for f in ["weights.safetensors", "manifest.json", "metrics.json", "metrics.parquet", "gradcam.json"] {
        assert!(d.join("model").join(f).is_file(), "{f}");
    }
    let m = metrics(&d.join("model"));
    let core_acc = m["cv"]["pooled"]["core"]["accuracy"].as_f64().unwrap();
    assert!(core_acc >= 0.95, "cross-validated per-core accuracy {core_acc}\n{t}");
    assert_eq!(m["cv"]["per_fold"].as_array().unwrap().len(), 4);
    // Folds are stratified by subtype too: every fold trains on cancers of every subtype.
    let subtype_of: std::collections::BTreeMap<String, String> = std::fs::read_to_string(d.join("arch/labels.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[2] == "CA").then(|| (f[1].to_string(), f[3].to_string()))
        })
        .collect();
    let folds = m["patient_folds"].as_object().unwrap();
    assert_eq!(folds.len(), 8, "{folds:?}");
    for f in 1..=4u64 {
        let trained: std::collections::BTreeSet<&str> =
            folds.iter().filter(|(_, v)| v.as_u64() != Some(f)).map(|(p, _)| subtype_of[p].as_str()).collect();
        assert_eq!(trained.len(), 4, "fold {f} trains on the subtypes {trained:?} only: {folds:?}");
    }
    // The bundle opens, carries the EMSC state fitted on the archive, and its hash matches.
    let b = Bundle::load(&d.join("model"), DeviceChoice::Cpu).unwrap();
    assert_eq!(b.manifest.task, "type");
    assert!(b.manifest.emsc.as_ref().is_some_and(|s| s.reference_spectra > 0));
    assert!(b.manifest.metrics["core_accuracy"].as_f64().is_some());

    // Seeded: the same configuration gives the same metrics.
    let o = ftirflow(
        &["train", "--config", "fast.toml", "--labels", "arch/labels.csv", "--task", "type", "arch", "--out", "model2", "--folds", "0"],
        d,
    );
    assert!(o.status.success(), "{}", text(&o));
    let a = std::fs::read(d.join("model/weights.safetensors")).unwrap();
    let b2 = std::fs::read(d.join("model2/weights.safetensors")).unwrap();
    assert_eq!(a, b2, "the final model is the same with or without cross-validation before it");

    // Bad invocations exit 2 with a reason.
    let o = ftirflow(&["train", "--task", "type", "arch", "--out", "m3"], d);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("--labels"), "{}", text(&o));
    std::fs::write(d.join("bad.toml"), "[train]\nepochs = 0\n").unwrap();
    let o = ftirflow(&["train", "--config", "bad.toml", "--labels", "arch/labels.csv", "--task", "type", "arch", "--out", "m4"], d);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("epochs"), "{}", text(&o));
}

#[test]
fn train_on_the_collagen_table() {
    let Some(dir) = crate::common::shared_data("collagen") else { return };
    let out = tempfile::tempdir().unwrap();
    std::fs::write(out.path().join("fast.toml"), "[train]\nepochs = 6\nspectra_per_epoch = 1000\nthreads = 1\nfinal_model = false\n")
        .unwrap();
    let csv = dir.join("collagen.csv");
    let o = ftirflow(&["train", "--config", "fast.toml", csv.to_str().unwrap(), "--out", "model"], out.path());
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let m = metrics(&out.path().join("model"));
    assert_eq!(m["cv"]["classes"], serde_json::json!(["DNA", "collagen", "glycogen", "lipids"]));
    let acc = m["cv"]["pooled"]["spectrum"]["accuracy"].as_f64().unwrap();
    assert!(acc >= 0.9, "4-fold accuracy on few epochs {acc}\n{t}");
    // Which way the top bands point (issue: explanations a pathologist can read): the lipids'
    // ester C=O band reads `higher` for lipids, and DNA's phosphate bands (1080, 1240 cm⁻¹) read
    // `higher` for DNA where one of its top bands covers them.
    let bands = |class: &str| -> Vec<(f64, f64, String)> {
        m["gradcam"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["class"] == class && c["by"] == "true")
            .flat_map(|c| c["top_bands"].as_array().unwrap().iter())
            .map(|b| {
                let d = &b["direction"]["diff"];
                let word = if d.is_null() {
                    "unknown"
                } else if d.as_f64().unwrap() >= 0.0 {
                    "higher"
                } else {
                    "lower"
                };
                (b["lo"].as_f64().unwrap(), b["hi"].as_f64().unwrap(), word.to_string())
            })
            .collect()
    };
    let lipid_ester: Vec<_> = bands("lipids").into_iter().filter(|b| b.0 <= 1740.0 && b.1 >= 1740.0).collect();
    assert!(!lipid_ester.is_empty(), "a top band of lipids covers 1740 cm⁻¹: {:?}", bands("lipids"));
    assert!(lipid_ester.iter().all(|b| b.2 == "higher"), "{lipid_ester:?}");
    for b in bands("DNA").into_iter().filter(|b| [1080.0, 1240.0].iter().any(|w| b.0 <= *w && b.1 >= *w)) {
        assert_eq!(b.2, "higher", "DNA's phosphate band {:.0}–{:.0}", b.0, b.1);
    }
}
