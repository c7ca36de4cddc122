//! Messages a newcomer can act on: an axis that misses a configured band names the keys to
//! change; a `.hdr` that is not ENVI says so; `inspect DIR` says it was given a directory; a run
//! over the folder `synth` wrote does not take its truth table for a broken image. (Wrong ENVI
//! `header offset` and truncated Agilent headers: `tests/envi.rs`, `tests/agilent.rs`.)
use std::path::Path;

use crate::run::{bin, fixture, text};

/// A copy of the ENVI image `src` (`.hdr` + `.img`) as `dst`, its axis moved by `shift` cm⁻¹.
fn shifted_copy(src: &Path, dst: &Path, shift: f64) {
    let hdr = std::fs::read_to_string(src.with_extension("hdr")).unwrap();
    let open = hdr.find("wavelength = {").expect("a wavelength list") + "wavelength = {".len();
    let close = open + hdr[open..].find('}').unwrap();
    let moved: Vec<String> = hdr[open..close].split(',').map(|v| format!("{}", v.trim().parse::<f64>().unwrap() + shift)).collect();
    std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
    std::fs::write(dst.with_extension("hdr"), format!("{}{}{}", &hdr[..open], moved.join(", "), &hdr[close..])).unwrap();
    std::fs::copy(src.with_extension("img"), dst.with_extension("img")).unwrap();
}

#[test]
fn an_axis_that_misses_a_configured_band_names_the_keys() {
    let f = fixture();
    // The synthetic axis starts at 898.7 cm⁻¹; moved by 6 it starts at 904.7, past 900.
    let img = f.root.join("late_axis/images/P01_CA.hdr");
    shifted_copy(&f.root.join("arch/images/P01_CA.hdr"), &img, 6.0);
    // preprocess (and train) cannot fit an EMSC reference on any image: exit 2, saying why.
    let o = bin().args(["preprocess", "late_axis/images", "--out", "late.parquet"]).current_dir(&f.root).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    for want in ["does not cover 900–1800", "`[preprocess] emsc_range`", "`[preprocess.resample] start`", "model grid"] {
        assert!(t.contains(want), "missing `{want}`: {t}");
    }
    // run rejects the image (the others of a night go on) with the same explanation.
    let out = f.root.join("late_out");
    let o = bin().args(["run", "--model", "type_model", "late_axis/images", "--out"]).arg(&out).current_dir(&f.root).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("does not cover 900–1800") && t.contains("`[preprocess] emsc_range`"), "{t}");
}

#[test]
fn a_hdr_that_is_not_envi_is_reported_as_such() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.hdr"), "Some other instrument's header\nfoo = 1\n").unwrap();
    let o = bin().args(["inspect", "notes.hdr"]).current_dir(dir.path()).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("not an ENVI header") && !text(&o).contains("no data file"), "{}", text(&o));
}

#[test]
fn inspect_says_it_was_given_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let o = bin().args(["inspect", "."]).current_dir(dir.path()).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("is a directory"), "{}", text(&o));
}

#[test]
fn a_run_over_the_folder_synth_wrote_skips_its_truth() {
    let f = fixture();
    assert!(f.root.join("arch/truth/masks.parquet").is_file());
    let out = f.root.join("synth_folder_out");
    let o = bin().args(["run", "--model", "type_model", "arch", "--out"]).arg(&out).current_dir(&f.root).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!text(&o).contains("rejected:"), "{}", text(&o));
    let status: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("status.json")).unwrap()).unwrap();
    assert_eq!(status["counts"]["cores"], 8, "every image of arch/images, nothing else");
    // A run over an earlier run's outputs finds no images in them either.
    let again = f.root.join("outputs_as_archive");
    let o = bin().args(["run", "--model", "type_model"]).arg(&out).arg("--out").arg(&again).current_dir(&f.root).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let status: serde_json::Value = serde_json::from_slice(&std::fs::read(again.join("status.json")).unwrap()).unwrap();
    assert_eq!(status["counts"]["images"], 0, "{status}");
}
