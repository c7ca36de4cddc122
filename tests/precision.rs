//! `[run] precision`: bf16 inference against f32 on the same archive and models (classes per
//! spectrum, per-core majorities, the Grad-CAM summaries), and what `auto` decides and records.
//! The fixture's models are trained for one epoch, so many of their spectra are near-ties; the
//! bars here are the ones such models meet (docs/model.md states the demo's numbers).
use std::collections::HashMap;

use crate::run::{fixture, outputs, run, text};

/// `column=value` of a row of [`outputs`].
fn cell<'a>(row: &'a str, column: &str) -> Option<&'a str> {
    row.split(',').find_map(|c| c.strip_prefix(column).and_then(|r| r.strip_prefix('=')))
}

#[test]
fn bf16_runs_agree_with_f32() {
    let f = fixture();
    let mut tables = Vec::new();
    for p in ["f32", "bf16"] {
        let cfg = f.root.join(format!("precision_{p}.toml"));
        std::fs::write(&cfg, format!("[run]\nprecision = \"{p}\"\n")).unwrap();
        let out = f.root.join(format!("precision_{p}"));
        let o = run(&f.root, &out, &["--workers", "2", "--config", cfg.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o));
        let run_json: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("run.json")).unwrap()).unwrap();
        assert_eq!(run_json["precision"]["used"], p);
        tables.push(outputs(&out));
    }
    let (a, b) = (&tables[0], &tables[1]);
    // Per spectrum: the type classes (rows of every part, keyed by sample and pixel).
    let classes = |t: &std::collections::BTreeMap<String, Vec<String>>| -> HashMap<(String, String, String), String> {
        t.iter()
            .filter(|(k, _)| k.starts_with("predictions/"))
            .flat_map(|(_, rows)| rows.iter())
            .filter_map(|r| {
                let key = (cell(r, "sample")?.to_string(), cell(r, "x")?.to_string(), cell(r, "y")?.to_string());
                Some((key, cell(r, "pred_class")?.to_string()))
            })
            .collect()
    };
    let (ca, cb) = (classes(a), classes(b));
    assert_eq!(ca.len(), cb.len());
    let classified: Vec<_> = ca.iter().filter(|(_, c)| c.as_str() != "").collect();
    let same = classified.iter().filter(|(k, c)| cb[*k] == **c).count();
    let share = same as f64 / classified.len() as f64;
    eprintln!("bf16 vs f32: {:.2} % of {} classified spectra keep their type class", 100.0 * share, classified.len());
    assert!(share >= 0.995, "only {:.2} % identical type classes", 100.0 * share);
    // Per core: the same majorities.
    let majorities = |t: &std::collections::BTreeMap<String, Vec<String>>| -> Vec<(String, String, String)> {
        t["cores"]
            .iter()
            .map(|r| {
                (cell(r, "sample").unwrap().into(), cell(r, "majority").unwrap().into(), cell(r, "subtype_majority").unwrap_or("").into())
            })
            .collect()
    };
    assert_eq!(majorities(a), majorities(b), "per-core majorities");
    // The Grad-CAM summaries (mean maps per class and per core) stay close.
    let maps = |t: &std::collections::BTreeMap<String, Vec<String>>| -> HashMap<String, f64> {
        t["gradcam"]
            .iter()
            .filter(|r| cell(r, "scope") != Some("spectrum"))
            .map(|r| {
                let key = ["scope", "core", "class", "wavenumber"].map(|c| cell(r, c).unwrap_or("")).join("|");
                (key, cell(r, "mean").unwrap().parse().unwrap())
            })
            .collect()
    };
    let (ma, mb) = (maps(a), maps(b));
    let diffs: Vec<f64> = ma.iter().filter_map(|(k, v)| mb.get(k).map(|w| (v - w).abs())).collect();
    assert!(diffs.len() > 467, "Grad-CAM summaries compared");
    let max = diffs.iter().cloned().fold(0.0, f64::max);
    let within = diffs.iter().filter(|&&d| d <= 0.01).count() as f64 / diffs.len() as f64;
    eprintln!("bf16 vs f32 Grad-CAM mean maps: max |Δ| {max:.4}, {:.2} % within 0.01", 100.0 * within);
    assert!(max <= 0.1 && within >= 0.9, "Grad-CAM mean maps: max |Δ| {max:.4}, {:.2} % within 0.01", 100.0 * within);
}

#[test]
fn auto_precision_follows_the_cpu_and_the_probe_check() {
    let f = fixture();
    let out = f.root.join("precision_auto");
    let o = run(&f.root, &out, &["--workers", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    let run_json: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("run.json")).unwrap()).unwrap();
    let p = &run_json["precision"];
    assert_eq!(p["setting"], "auto");
    if !ftirflow::operators::model::cpu_has_bf16() {
        assert_eq!(p["used"], "f32", "{p}");
        assert!(p["reason"].as_str().unwrap().contains("no bfloat16 units"), "{p}");
        return;
    }
    // With bfloat16 units both bundles were checked on their probe spectra, and the choice
    // follows the recorded numbers.
    let checks = p["agreement"].as_array().unwrap();
    let passes = |a: &serde_json::Value| a["same_class"].as_f64().unwrap() >= 0.995 || a["changed_margin"].as_f64().unwrap() < 0.05;
    let all_pass = checks.iter().all(|c| passes(&c[1]));
    assert!(!checks.is_empty() && checks.iter().all(|c| c[1]["rows"].as_u64().unwrap() > 100), "{p}");
    assert_eq!(p["used"], if all_pass { "bf16" } else { "f32" }, "{p}");
}
