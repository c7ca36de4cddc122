//! Which way Grad-CAM's top bands point (`bands.parquet` `diff`, `relative`, `direction`): on a
//! `ftirflow synth` archive, whose planted bands are increases of one class over the others, a
//! top band of a class that covers one of its own planted bands reads `higher`, and in the binary
//! task a top band of the other class that covers it reads `lower`.
use std::collections::HashMap;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Float64Type;

use crate::run::{bin, fixture, text};

/// (scope, class, lo, hi, direction) of every row of a run's `bands.parquet`.
fn bands(path: &std::path::Path) -> Vec<(String, String, f64, f64, Option<String>)> {
    consistency(path).into_iter().map(|b| b.0).collect()
}

/// A `bands.parquet` row with its consistency: (consistent, groups, grouped_by).
type BandRow = ((String, String, f64, f64, Option<String>), Option<u32>, Option<u32>, Option<String>);

/// Every row of a run's `bands.parquet` with its consistency columns.
fn consistency(path: &std::path::Path) -> Vec<BandRow> {
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let mut out = Vec::new();
    for b in reader.map(|b| b.unwrap()) {
        let s = |n: &str| b.column_by_name(n).unwrap().as_string::<i32>().clone();
        let f = |n: &str| b.column_by_name(n).unwrap().as_primitive::<Float64Type>().clone();
        let u = |n: &str| b.column_by_name(n).unwrap().as_primitive::<arrow::datatypes::UInt32Type>().clone();
        let (scope, class, dir, lo, hi) = (s("scope"), s("class"), s("direction"), f("lo"), f("hi"));
        let (consistent, groups, by) = (u("consistent"), u("groups"), s("grouped_by"));
        for i in 0..b.num_rows() {
            let d = (!dir.is_null(i)).then(|| dir.value(i).to_string());
            let opt = |a: &arrow::array::UInt32Array| (!a.is_null(i)).then(|| a.value(i));
            out.push((
                (scope.value(i).to_string(), class.value(i).to_string(), lo.value(i), hi.value(i), d),
                opt(&consistent),
                opt(&groups),
                (!by.is_null(i)).then(|| by.value(i).to_string()),
            ));
        }
    }
    out
}

#[test]
fn top_bands_over_planted_bands_read_higher_for_their_class_and_lower_for_the_other() {
    let f = fixture();
    // A type model trained long enough for its maps to find the planted bands (the shared
    // fixture's one-epoch models predict nearly everything as one class).
    let ok = |o: std::process::Output| assert!(o.status.success(), "{}", text(&o));
    ok(bin()
        .args(["synth", "--out", "explain_arch", "--cores", "8", "--size", "20", "--seed", "11"])
        .current_dir(&f.root)
        .output()
        .unwrap());
    ok(bin()
        .args(["train", "--task", "type", "--labels", "explain_arch/labels.csv", "--epochs", "8", "--folds", "0"])
        .args(["--spectra-per-epoch", "1500", "explain_arch/images", "--out", "explain_model"])
        .current_dir(&f.root)
        .output()
        .unwrap());
    let out = f.root.join("explain_out");
    ok(bin()
        .args(["run", "--model", "explain_model", "explain_arch/images", "--workers", "2", "--out"])
        .arg(&out)
        .current_dir(&f.root)
        .output()
        .unwrap());
    let planted: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.root.join("explain_arch/truth/planted_bands.json")).unwrap()).unwrap();
    let centres: HashMap<String, Vec<f64>> = planted["classes"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(class, v)| (class.clone(), v["bands"].as_array().unwrap().iter().map(|b| b["center"].as_f64().unwrap()).collect()))
        .collect();
    let classes = ["AT", "CA"];
    let covers = |lo: f64, hi: f64, class: &str| centres.get(class).is_some_and(|c| c.iter().any(|&w| w >= lo && w <= hi));
    let rows = bands(&out.join("bands.parquet"));
    assert!(rows.iter().filter(|r| r.0 == "true").all(|r| r.4.is_some()), "every band of a true class has a direction: {rows:?}");
    let (mut own, mut other) = (0, 0);
    for (scope, class, lo, hi, direction) in &rows {
        let Some(d) = direction.as_deref() else { continue };
        let other_class = classes.iter().find(|c| *c != class).unwrap();
        let (mine, theirs) = (covers(*lo, *hi, class), covers(*lo, *hi, other_class));
        if mine && !theirs {
            own += 1;
            assert_eq!(d, "higher", "{scope} band {lo:.0}–{hi:.0} of {class} covers its own planted band");
        }
        if theirs && !mine {
            other += 1;
            assert_eq!(d, "lower", "{scope} band {lo:.0}–{hi:.0} of {class} covers {other_class}'s planted band");
        }
    }
    eprintln!("{} top bands: {own} over their class's own planted bands (higher), {other} over the other class's (lower)", rows.len());
    assert!(own + other > 0, "no top band covers a planted band, so this test showed nothing: {rows:?}");

    // Consistency across patients (labels.csv names them; synth gives each patient one CA and
    // one AT core): a band of a true class over its own planted band points the same way in
    // (nearly) every patient, and every band with a direction was compared in some patients.
    let mut checked = 0;
    for ((scope, class, lo, hi, direction), consistent, groups, by) in consistency(&out.join("bands.parquet")) {
        let Some(d) = direction else {
            assert_eq!((consistent, groups), (None, None));
            continue;
        };
        let (c, n) = (consistent.unwrap(), groups.unwrap());
        assert_eq!(by.as_deref(), Some("patient"), "{scope} {class} {lo:.0}–{hi:.0}");
        assert!(c <= n && n <= 4, "{scope} {class} {lo:.0}–{hi:.0}: {c}/{n} of 4 patients");
        if scope == "true" {
            assert_eq!(n, 4, "every patient has a core of each true class");
            if covers(lo, hi, &class) && !covers(lo, hi, classes.iter().find(|c| **c != class).unwrap()) {
                checked += 1;
                assert!(c >= 3, "{d} band {lo:.0}–{hi:.0} of {class} over its planted band holds in {c}/{n} patients");
            }
        }
    }
    eprintln!("{checked} true-class bands over their own planted band checked for consistency");

    // The same model and archive with signed maps (`[run] explain = "signed"`).
    let cfg = f.root.join("signed.toml");
    std::fs::write(&cfg, "[run]\nexplain = \"signed\"\n").unwrap();
    let signed_out = f.root.join("explain_signed");
    let o = bin()
        .args(["run", "--model", "explain_model", "explain_arch/images", "--workers", "2", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&signed_out)
        .current_dir(&f.root)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let (plain, plain_kind) = class_means(&out.join("gradcam.parquet"));
    let (signed, signed_kind) = class_means(&signed_out.join("gradcam.parquet"));
    assert_eq!((plain_kind.as_str(), signed_kind.as_str()), ("gradcam", "signed"), "ftirflow:explain in gradcam.parquet");
    let mut negative = 0usize;
    for ((scope, class), g) in &plain {
        let s = &signed[&(scope.clone(), class.clone())];
        assert_eq!(s.len(), g.len());
        assert!(g.iter().all(|v| (0.0..=1.0).contains(v)), "{scope} {class}: Grad-CAM means lie in [0, 1]");
        assert!(s.iter().all(|v| (-1.0..=1.0).contains(v)), "{scope} {class}: signed means lie in [-1, 1]");
        negative += s.iter().filter(|v| **v < 0.0).count();
        // Where Grad-CAM sees the class's strongest evidence, the signed map is positive too.
        let peak = (0..g.len()).max_by(|&a, &b| g[a].total_cmp(&g[b])).unwrap();
        assert!(s[peak] > 0.0, "{scope} {class}: signed mean {} at Grad-CAM's peak", s[peak]);
    }
    assert!(negative > 0, "signed maps show regions that lower a class's score");
    // Parts computed with signed maps are not reused by a Grad-CAM night, nor the other way.
    let o = bin()
        .args(["run", "--model", "explain_model", "explain_arch/images", "--workers", "2", "--out"])
        .arg(&signed_out)
        .current_dir(&f.root)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("(8 processed, 0 reused"), "{}", text(&o));
    assert_eq!(class_means(&signed_out.join("gradcam.parquet")), (plain, "gradcam".to_string()));
}

/// The mean map per (scope, class) of a run's `gradcam.parquet` (map scopes, not per core), in
/// wavenumber order, and the table's `ftirflow:explain`.
fn class_means(path: &std::path::Path) -> (HashMap<(String, String), Vec<f64>>, String) {
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap()).unwrap();
    let kind = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|e| e.key == "ftirflow:explain").and_then(|e| e.value.clone()))
        .unwrap_or_default();
    let mut rows: HashMap<(String, String), Vec<(f64, f64)>> = HashMap::new();
    for b in builder.build().unwrap().map(|b| b.unwrap()) {
        let s = |n: &str| b.column_by_name(n).unwrap().as_string::<i32>().clone();
        let f = |n: &str| b.column_by_name(n).unwrap().as_primitive::<Float64Type>().clone();
        let (scope, class, wn, mean) = (s("scope"), s("class"), f("wavenumber"), f("mean"));
        for i in 0..b.num_rows() {
            if ["predicted", "true"].contains(&scope.value(i)) {
                rows.entry((scope.value(i).to_string(), class.value(i).to_string())).or_default().push((wn.value(i), mean.value(i)));
            }
        }
    }
    let means = rows
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
            (k, v.into_iter().map(|(_, m)| m).collect())
        })
        .collect();
    (means, kind)
}
