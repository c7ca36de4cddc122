//! De-arraying synthetic whole slides end to end: `ftirflow synth --slide` writes a slide, the
//! reader streams it, a score map (mean absorbance over 1400–1700 cm⁻¹, where tissue's amide
//! bands and paraffin's CH₂ band lie and bare glass has none) goes to
//! `operators::dearray::dearray_slide`, and every present position of the truth must come back
//! under its own name with a box overlapping the true one; no extra cores.
use std::path::Path;

use ftirflow::operators::dearray::{dearray_slide, Dearray, DearrayParams};
use ndarray::Array2;

/// The score map of an image file (`ftirflow::tma::score_map`), read in 1 and in 3 stripes:
/// the same map either way.
fn score_map(image: &Path) -> Array2<f32> {
    let format = ftirflow::io::Format::detect(image).unwrap();
    let entry = ftirflow::io::archive::ImageEntry { path: image.to_path_buf(), format, sample: "slide".into() };
    let whole = ftirflow::tma::score_map(&entry, 1024, 1).unwrap().expect("an image with the band");
    let striped = ftirflow::tma::score_map(&entry, 1024, 3).unwrap().expect("an image with the band");
    assert!(whole.iter().zip(&striped).all(|(a, b)| a.to_bits() == b.to_bits()), "stripes change the map");
    whole
}

fn synth_slide(out: &Path, seed: u64, rotation: f64, format: &str) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ftirflow"))
        .args(["synth", "--out"])
        .arg(out)
        .args(["--slide", "4x5", "--size", "32", "--format", format, "--seed", &seed.to_string()])
        .args(["--rotation", &rotation.to_string(), "--missing", "0.1", "--torn", "0.15"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn overlap(a: [u64; 4], b: [u64; 4]) -> f64 {
    let iw = a[2].min(b[2]).saturating_sub(a[0].max(b[0])) as f64;
    let ih = a[3].min(b[3]).saturating_sub(a[1].max(b[1])) as f64;
    let area = |r: [u64; 4]| ((r[2] - r[0]) * (r[3] - r[1])) as f64;
    iw * ih / area(a).min(area(b))
}

#[test]
fn every_core_of_a_synthetic_slide_is_found_at_its_position() {
    for (seed, rotation, format) in [(1, 0.0, "envi"), (7, 2.5, "envi"), (11, -3.0, "agilent")] {
        let dir = tempfile::tempdir().unwrap();
        synth_slide(dir.path(), seed, rotation, format);
        let truth: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("truth/slide_S1.json")).unwrap()).unwrap();
        let image = dir.path().join(truth["image"].as_str().unwrap());
        let map = score_map(&image);
        let Dearray::Grid(grid) = dearray_slide(&DearrayParams::default(), map.view()).unwrap() else {
            panic!("seed {seed}: a 4×5 slide is a grid")
        };
        let present: Vec<&serde_json::Value> =
            truth["positions"].as_array().unwrap().iter().filter(|p| p["present"].as_bool().unwrap()).collect();
        let found: Vec<&str> = grid.cores.iter().map(|c| c.position.as_str()).collect();
        let expected: Vec<&str> = present.iter().map(|p| p["position"].as_str().unwrap()).collect();
        assert_eq!(found.len(), expected.len(), "seed {seed}: found {found:?}, truth {expected:?}");
        for p in present {
            let name = p["position"].as_str().unwrap();
            let core =
                grid.cores.iter().find(|c| c.position == name).unwrap_or_else(|| panic!("seed {seed}: {name} not found in {found:?}"));
            let t: Vec<u64> = p["bbox"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
            let b = core.bbox;
            let o = overlap([t[0], t[1], t[2], t[3]], [b.0 as u64, b.1 as u64, b.2 as u64, b.3 as u64]);
            assert!(o > 0.8, "seed {seed} {name}: found box {b:?} overlaps the true box {t:?} by {o:.2} only");
        }
        assert!((grid.rotation_deg - rotation).abs() < 1.0, "seed {seed}: rotation {} for {rotation}", grid.rotation_deg);
    }
}
