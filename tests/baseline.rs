//! The Python baseline of `benches/python/pipeline_baseline.py` (numpy, scikit-learn, PyTorch,
//! pyarrow; the pipeline a lab would otherwise write) predicts the same classes as `ftirflow run`
//! on the default synthetic archive: at least 99.5 % of the spectra both classify get the same
//! class. Skips with a one-line message when `scripts/python-baseline` cannot import torch
//! (`scripts/setup-python-baseline.sh` installs it; CI does).
use std::path::Path;
use std::process::{Command, Output};

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn the_python_baseline_predicts_the_same_classes() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let probe = Command::new(repo.join("scripts/python-baseline"))
        .args(["-c", "import torch, numpy, sklearn, pyarrow"])
        .output()
        .expect("scripts/python-baseline runs");
    if !probe.status.success() {
        eprintln!("skipped: no PyTorch baseline installed (run scripts/setup-python-baseline.sh)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let ftirflow = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_ftirflow")).args(args).current_dir(root).output().unwrap();
        assert!(o.status.success(), "ftirflow {args:?}: {}", text(&o));
    };
    // The default archive (16 cores of 64×64 px) and a briefly trained type model.
    ftirflow(&["synth", "--out", "arch"]);
    ftirflow(&[
        "train",
        "--task",
        "type",
        "--labels",
        "arch/labels.csv",
        "--epochs",
        "1",
        "--folds",
        "0",
        "--spectra-per-epoch",
        "500",
        "arch/images",
        "--out",
        "model",
    ]);
    ftirflow(&["run", "--model", "model", "arch/images", "--out", "run", "--workers", "2"]);
    let o = Command::new(repo.join("scripts/python-baseline"))
        .arg(repo.join("benches/python/pipeline_baseline.py"))
        .args(["--archive", "arch/images", "--model", "model", "--out", "py", "--no-gradcam", "--compare", "run"])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let line = String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or_default().to_string();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    let c = &v["compare"];
    let both = c["classified_by_both"].as_f64().unwrap();
    let only_ours = c["classified_only_ftirflow"].as_f64().unwrap();
    let only_py = c["classified_only_python"].as_f64().unwrap();
    eprintln!("python baseline vs ftirflow: {c}");
    assert_eq!(v["counts"]["spectra"].as_u64(), Some(16 * 64 * 64), "every spectrum read");
    // The masks differ only where the K-means boundaries do (ftirflow's spread boundary keeps
    // thin tissue the nearest-centroid rule drops), so most spectra are classified by both ...
    assert!(both >= 0.85 * (both + only_ours + only_py), "{c}");
    assert!(c["tissue_agreement"].as_f64().unwrap() >= 0.9, "{c}");
    // ... and those get the same class.
    assert!(c["identical_fraction"].as_f64().unwrap() >= 0.995, "{c}");
}
