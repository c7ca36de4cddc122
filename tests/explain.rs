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
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let mut out = Vec::new();
    for b in reader.map(|b| b.unwrap()) {
        let s = |n: &str| b.column_by_name(n).unwrap().as_string::<i32>().clone();
        let f = |n: &str| b.column_by_name(n).unwrap().as_primitive::<Float64Type>().clone();
        let (scope, class, dir, lo, hi) = (s("scope"), s("class"), s("direction"), f("lo"), f("hi"));
        for i in 0..b.num_rows() {
            let d = (!dir.is_null(i)).then(|| dir.value(i).to_string());
            out.push((scope.value(i).to_string(), class.value(i).to_string(), lo.value(i), hi.value(i), d));
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
}
