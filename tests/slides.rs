//! `ftirflow run` on whole TMA slides (ARCHITECTURE.md, Whole slides), with the real binary and
//! the briefly trained models of `tests/run.rs`: a slide's cores come out as the units of work,
//! named by position, with their labels however the position is written; a core gives the same
//! masks and classes inside a slide as cut out into its own file; and the documented outcomes of
//! images that are not slides (random objects, a single core, bare slide, one row).
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::UInt32Type;
use ftirflow::io::envi::{write_cube, EnviWriteOptions};
use ftirflow::io::{ImageCube, ReadOptions, Window};
use ftirflow::operators::SpectraLayout;

use crate::run::{bin, fixture, text};

use crate::common::read_parquet as read;

fn strings(b: &RecordBatch, name: &str) -> Vec<Option<String>> {
    let c = b.column_by_name(name).unwrap_or_else(|| panic!("column {name}"));
    let s = c.as_string::<i32>();
    (0..s.len()).map(|i| s.is_valid(i).then(|| s.value(i).to_string())).collect()
}

fn u32s(b: &RecordBatch, name: &str) -> Vec<Option<u32>> {
    let c = b.column_by_name(name).unwrap_or_else(|| panic!("column {name}")).as_primitive::<UInt32Type>();
    (0..c.len()).map(|i| c.is_valid(i).then(|| c.value(i))).collect()
}

/// `ftirflow synth --slide` into `dir` (cores of 20 px like the fixture's models were trained on).
fn synth_slide(dir: &Path, grid: &str, seed: u64, extra: &[&str]) {
    let o = bin()
        .args(["synth", "--out"])
        .arg(dir)
        .args(["--slide", grid, "--size", "20", "--seed", &seed.to_string(), "--missing", "0.15", "--torn", "0.2", "--pitch", "1.5"])
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

/// Runs the fixture's models on `archive` into `out`; returns the exit code and the output.
fn run(archive: &Path, out: &Path, extra: &[&str]) -> (i32, String) {
    let root = &fixture().root;
    let o = bin()
        .args(["run", "--model"])
        .arg(root.join("type_model"))
        .arg("--subtype-model")
        .arg(root.join("sub_model"))
        .arg(archive)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    (o.status.code().unwrap_or(-1), text(&o))
}

/// The present positions of a synthetic slide's truth: position → true box.
fn truth_positions(dir: &Path) -> BTreeMap<String, [u32; 4]> {
    let truth: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("truth/slide_S1.json")).unwrap()).unwrap();
    truth["positions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["present"].as_bool().unwrap())
        .map(|p| {
            let b: Vec<u32> = p["bbox"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            (p["position"].as_str().unwrap().to_string(), [b[0], b[1], b[2], b[3]])
        })
        .collect()
}

#[test]
fn a_slide_runs_as_its_cores_named_by_position_with_their_labels() {
    for (format, seed) in [("envi", 21), ("agilent", 22)] {
        let dir = tempfile::tempdir().unwrap();
        synth_slide(dir.path(), "3x4", seed, &["--format", format]);
        let truth = truth_positions(dir.path());
        // Labels as people write them: padded and lower-case positions match the same cores.
        let labels = std::fs::read_to_string(dir.path().join("labels.csv")).unwrap();
        let mut lines = labels.lines();
        let mut rewritten = vec![lines.next().unwrap().to_string()];
        for (i, l) in lines.enumerate() {
            let (sample, rest) = l.split_once(',').unwrap();
            let (slide, pos) = sample.split_once('/').unwrap();
            let (letters, digits) = pos.split_at(1);
            let pos = if i % 2 == 0 { format!("{}0{digits}", letters.to_lowercase()) } else { pos.to_string() };
            rewritten.push(format!("{slide}/{pos},{rest}"));
        }
        std::fs::write(dir.path().join("labels.csv"), rewritten.join("\n") + "\n").unwrap();

        let out = dir.path().join("out");
        let (code, log) = run(&dir.path().join("images"), &out, &["--workers", "2"]);
        assert_eq!(code, 0, "{format}: {log}");
        assert!(log.contains("1 slide(s) de-arrayed"), "{format}: {log}");
        let cores = read(&out.join("cores.parquet"));
        let b = &cores[0];
        let samples: Vec<String> = strings(b, "sample").into_iter().map(Option::unwrap).collect();
        let want: Vec<String> = truth.keys().map(|p| format!("S1/{p}")).collect();
        let mut got = samples.clone();
        got.sort();
        let mut want_sorted = want.clone();
        want_sorted.sort();
        assert_eq!(got, want_sorted, "{format}: every present core, no other");
        let positions = strings(b, "position");
        let images = strings(b, "image");
        let truth_types = strings(b, "truth_type");
        let (x0, y0, x1, y1) = (u32s(b, "bbox_x0"), u32s(b, "bbox_y0"), u32s(b, "bbox_x1"), u32s(b, "bbox_y1"));
        for i in 0..samples.len() {
            let p = positions[i].clone().unwrap();
            assert_eq!(samples[i], format!("S1/{p}"));
            assert_eq!(images[i].as_deref(), Some("S1"));
            assert!(truth_types[i].is_some(), "{format} {p}: the label keyed however the position is written matches");
            let t = truth[&p];
            let f = [x0[i].unwrap(), y0[i].unwrap(), x1[i].unwrap(), y1[i].unwrap()];
            let iw = t[2].min(f[2]).saturating_sub(t[0].max(f[0])) as f64;
            let ih = t[3].min(f[3]).saturating_sub(t[1].max(f[1])) as f64;
            let area = |r: [u32; 4]| f64::from((r[2] - r[0]) * (r[3] - r[1]));
            assert!(iw * ih / area(t).min(area(f)) > 0.8, "{format} {p}: box {f:?} against the true {t:?}");
            // Predictions keep the slide's pixel coordinates, inside the core's window.
            let part = ftirflow::outputs::part_name(&samples[i]);
            for pb in read(&out.join("predictions").join(format!("{part}.parquet"))) {
                for (x, y) in pb
                    .column_by_name("x")
                    .unwrap()
                    .as_primitive::<UInt32Type>()
                    .values()
                    .iter()
                    .zip(pb.column_by_name("y").unwrap().as_primitive::<UInt32Type>().values().iter())
                {
                    assert!(*x + 4 >= f[0] && *x < f[2] + 4 && *y + 4 >= f[1] && *y < f[3] + 4, "{format} {p}: ({x}, {y}) outside");
                }
            }
        }
        // The grid is cached: a rerun reads nothing and reuses every core.
        let (code, log) = run(&dir.path().join("images"), &out, &[]);
        assert_eq!(code, 0, "{log}");
        assert!(log.contains(&format!("(0 processed, {} reused", truth.len())), "{format}: {log}");
        assert!(!log.contains("de-arraying: mapping"), "{format}: an unchanged slide is not mapped again: {log}");
    }
}

/// `window` of `image` (the whole image when `None`) as a cube whose pixel (0, 0) is the window's
/// top-left pixel.
fn cube(image: &Path, window: Option<Window>) -> ImageCube {
    let opts = ReadOptions::new("cube");
    let reader = ftirflow::io::open(
        image,
        &match window {
            Some(w) => opts.with_window(w),
            None => opts,
        },
    )
    .unwrap();
    let info = reader.info().clone();
    let w = window.unwrap_or_else(|| Window::new(0, 0, info.width.unwrap(), info.height.unwrap()));
    let n = info.wavenumbers.len();
    let mut values = vec![0f32; w.width as usize * w.height as usize * n];
    for b in reader {
        let b = b.unwrap();
        let v = SpectraLayout::values(&b).unwrap();
        let xs = b.column_by_name("x").unwrap().as_primitive::<UInt32Type>().clone();
        let ys = b.column_by_name("y").unwrap().as_primitive::<UInt32Type>().clone();
        for r in 0..b.num_rows() {
            let at = ((ys.value(r) - w.y) as usize * w.width as usize + (xs.value(r) - w.x) as usize) * n;
            values[at..at + n].copy_from_slice(&v[r * n..(r + 1) * n]);
        }
    }
    ImageCube { width: w.width, height: w.height, wavenumbers: info.wavenumbers, values }
}

/// Reads `window` of `image` into an image of its own (pixel (x, y) of the slide becomes
/// (x − window.x, y − window.y)).
fn cut(image: &Path, window: Window, hdr: &Path) {
    write_cube(hdr, &cube(image, Some(window)), &EnviWriteOptions::default()).unwrap();
}

/// (x, y) → (tissue, predicted class) of a run's prediction part, shifted by `offset`.
fn pixels(part: &Path, offset: (u32, u32)) -> HashMap<(u32, u32), (bool, Option<String>)> {
    let mut m = HashMap::new();
    for b in read(part) {
        let xs = b.column_by_name("x").unwrap().as_primitive::<UInt32Type>().clone();
        let ys = b.column_by_name("y").unwrap().as_primitive::<UInt32Type>().clone();
        let tissue = b.column_by_name("tissue").unwrap().as_boolean().clone();
        let class = strings(&b, "pred_class");
        for (r, class) in class.into_iter().enumerate() {
            m.insert((xs.value(r) + offset.0, ys.value(r) + offset.1), (tissue.value(r), class));
        }
    }
    m
}

/// Cuts every core of `slide` out at `windows` into `dir`, runs it, and compares with the slide's
/// run in `slide_out`: (pixels in common, share of identical tissue masks, share of identical
/// classes), after checking that the core majorities are identical.
fn compare_precut(slide: &Path, slide_out: &Path, dir: &Path, windows: &BTreeMap<String, Window>) -> (usize, f64, f64) {
    let precut = dir.join("images");
    std::fs::create_dir_all(&precut).unwrap();
    for (p, w) in windows {
        cut(slide, *w, &precut.join(format!("{p}.hdr")));
    }
    let (code, log) = run(&precut, &dir.join("out"), &[]);
    assert_eq!(code, 0, "{log}");
    let majorities = |out: &Path| -> BTreeMap<String, (Option<String>, Option<String>)> {
        let b = &read(&out.join("cores.parquet"))[0];
        let s = strings(b, "sample");
        let (m, sm) = (strings(b, "majority"), strings(b, "subtype_majority"));
        (0..b.num_rows()).map(|i| (s[i].clone().unwrap().rsplit('/').next().unwrap().to_string(), (m[i].clone(), sm[i].clone()))).collect()
    };
    assert_eq!(majorities(slide_out), majorities(&dir.join("out")), "identical majorities ({})", dir.display());
    let (mut common, mut same_tissue, mut same_class) = (0usize, 0usize, 0usize);
    for (p, w) in windows {
        let a = pixels(&slide_out.join("predictions").join(ftirflow::outputs::part_name(&format!("S1/{p}")) + ".parquet"), (0, 0));
        let b = pixels(&dir.join("out/predictions").join(format!("{p}.parquet")), (w.x, w.y));
        for (xy, (t, c)) in &b {
            if let Some((t2, c2)) = a.get(xy) {
                common += 1;
                same_tissue += usize::from(t == t2);
                same_class += usize::from(c == c2);
            }
        }
    }
    (common, same_tissue as f64 / common as f64, same_class as f64 / common as f64)
}

#[test]
fn a_core_gives_the_same_results_inside_a_slide_and_cut_out() {
    let dir = tempfile::tempdir().unwrap();
    synth_slide(dir.path(), "3x3", 31, &[]);
    let slide = dir.path().join("images/S1.hdr");
    let slide_out = dir.path().join("slide_out");
    let (code, log) = run(&dir.path().join("images"), &slide_out, &[]);
    assert_eq!(code, 0, "{log}");
    let truth = truth_positions(dir.path());

    // Cut out where the run read each core (its window, from the recorded layout): the same
    // pixels in their own file, at other coordinates and under another sample id.
    let layout: serde_json::Value = serde_json::from_slice(&std::fs::read(slide_out.join("layouts/S1.json")).unwrap()).unwrap();
    let windows: BTreeMap<String, Window> = layout["layout"]["Slide"]["cores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let w: Vec<u32> = c["window"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            (c["grid"]["position"].as_str().unwrap().to_string(), Window::new(w[0], w[1], w[2], w[3]))
        })
        .collect();
    assert_eq!(windows.keys().collect::<Vec<_>>(), truth.keys().collect::<Vec<_>>(), "every core, torn ones included");
    let (common, tissue, class) = compare_precut(&slide, &slide_out, &dir.path().join("same"), &windows);
    eprintln!("pre-cut at the run's windows: {common} pixels, tissue masks {tissue:.4}, classes {class:.4} identical");
    assert!(common > truth.len() * 200, "the runs share the cores' pixels ({common})");
    assert!(tissue >= 0.999 && class >= 0.999, "tissue {tissue:.4}, classes {class:.4} identical");

    // Cut out by the true box and 3 px of slide: other pixels around the same core, so the
    // per-core K-means sees another population; the majorities still agree and few thin-edge
    // pixels change sides.
    let windows: BTreeMap<String, Window> = truth
        .iter()
        .map(|(p, b)| (p.clone(), Window::new(b[0].saturating_sub(3), b[1].saturating_sub(3), b[2] - b[0] + 6, b[3] - b[1] + 6)))
        .collect();
    let (common, tissue, class) = compare_precut(&slide, &slide_out, &dir.path().join("other"), &windows);
    eprintln!("pre-cut at the true boxes + 3 px: {common} pixels, tissue masks {tissue:.4}, classes {class:.4} identical");
    assert!(tissue >= 0.98 && class >= 0.98, "tissue {tissue:.4}, classes {class:.4} identical");
}

/// An ENVI image of `width × height` pixels of bare slide (the corner pixel of a synthetic core)
/// with the given core images pasted at the given top-left corners.
fn compose(core: &Path, width: u32, height: u32, at: &[(u32, u32)], hdr: &Path) {
    let c = cube(core, None);
    let (cw, ch, n, src, wavenumbers) = (c.width, c.height, c.wavenumbers.len(), c.values, c.wavenumbers);
    let glass = src[..n].to_vec();
    let mut values: Vec<f32> = glass.iter().copied().cycle().take((width * height) as usize * n).collect();
    for &(ox, oy) in at {
        for y in 0..ch {
            for x in 0..cw {
                let s = (y * cw + x) as usize * n;
                let d = ((oy + y) * width + ox + x) as usize * n;
                values[d..d + n].copy_from_slice(&src[s..s + n]);
            }
        }
    }
    write_cube(hdr, &ImageCube { width, height, wavenumbers, values }, &EnviWriteOptions::default()).unwrap();
}

fn rejects(out: &Path) -> Vec<String> {
    read(&out.join("rejects.parquet")).iter().flat_map(|b| strings(b, "reason")).map(Option::unwrap).collect()
}

#[test]
fn images_that_are_not_slides_have_documented_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // One pre-cut core of the fixture's kind: its corner is bare slide.
    let o = bin().args(["synth", "--out"]).arg(d.join("cores")).args(["--cores", "2", "--size", "20", "--seed", "4"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let core = std::fs::read_dir(d.join("cores/images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "hdr"))
        .unwrap_or_else(|| panic!("a synthetic core in {}", d.join("cores/images").display()));
    let arch = d.join("arch");
    std::fs::create_dir_all(&arch).unwrap();
    // Random objects: five cores at places no lattice fits.
    compose(&core, 160, 120, &[(3, 5), (61, 9), (29, 47), (118, 33), (84, 93)], &arch.join("random.hdr"));
    // One core on a large slide.
    compose(&core, 90, 70, &[(37, 22)], &arch.join("single.hdr"));
    // Bare slide only.
    compose(&core, 40, 40, &[], &arch.join("bare.hdr"));
    // One row of four cores.
    compose(&core, 130, 30, &[(2, 5), (34, 4), (66, 6), (98, 5)], &arch.join("row.hdr"));

    // auto: the row is a slide of A1–A4; the others run whole (random objects with a warning,
    // bare slide rejected by the classifier for having no tissue).
    let out = d.join("auto");
    let (code, log) = run(&arch, &out, &[]);
    assert_eq!(code, 1, "a reject gives exit code 1: {log}");
    assert!(log.contains("random.hdr") && log.contains("objects are not on a grid") && log.contains("processed as one core"), "{log}");
    let b = &read(&out.join("cores.parquet"))[0];
    let mut samples: Vec<String> = strings(b, "sample").into_iter().map(Option::unwrap).collect();
    samples.sort();
    assert_eq!(samples, ["random", "row/A1", "row/A2", "row/A3", "row/A4", "single"]);
    let r = rejects(&out);
    assert!(r.len() == 1 && r[0].contains("no tissue found"), "{r:?}");

    // on: what is neither a slide nor one core is rejected with the de-arrayer's reason.
    let cfg = d.join("on.toml");
    std::fs::write(&cfg, "[tma]\ndearray = \"on\"\n").unwrap();
    let out = d.join("on");
    let (code, log) = run(&arch, &out, &["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{log}");
    let b = &read(&out.join("cores.parquet"))[0];
    let mut samples: Vec<String> = strings(b, "sample").into_iter().map(Option::unwrap).collect();
    samples.sort();
    assert_eq!(samples, ["row/A1", "row/A2", "row/A3", "row/A4", "single"]);
    let mut r = rejects(&out);
    r.sort();
    assert_eq!(r.len(), 2, "{r:?}");
    assert!(r[0].starts_with("not a slide: dearray: no objects found"), "bare slide: {r:?}");
    assert!(r[1].starts_with("not a slide: dearray: objects are not on a grid"), "random objects: {r:?}");

    // off: every image is one core, as before slides.
    std::fs::write(&cfg, "[tma]\ndearray = \"off\"\n").unwrap();
    let out = d.join("off");
    let (_, log) = run(&arch, &out, &["--config", cfg.to_str().unwrap()]);
    let b = &read(&out.join("cores.parquet"))[0];
    let mut samples: Vec<String> = strings(b, "sample").into_iter().map(Option::unwrap).collect();
    samples.sort();
    assert_eq!(samples, ["random", "row", "single"], "{log}");
    assert!(strings(b, "position").iter().all(Option::is_none), "whole images have no position");
}

#[test]
fn an_image_over_the_memory_budget_is_rejected_naming_it_and_its_cores_fit() {
    let dir = tempfile::tempdir().unwrap();
    synth_slide(dir.path(), "3x4", 41, &[]);
    // 40 MiB for one worker: 20 MiB per unit. The slide's spectra take about 80 MB, a core's 4.
    let cfg = dir.path().join("budget.toml");
    std::fs::write(&cfg, "[run]\nmemory_budget = 40\n[tma]\ndearray = \"off\"\n").unwrap();
    let (code, log) = run(&dir.path().join("images"), &dir.path().join("whole"), &["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{log}");
    let r = rejects(&dir.path().join("whole"));
    assert!(r.len() == 1 && r[0].contains("memory_budget") && r[0].contains("GiB"), "{r:?}");
    std::fs::write(&cfg, "[run]\nmemory_budget = 40\n").unwrap();
    let (code, log) = run(&dir.path().join("images"), &dir.path().join("cores"), &["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "de-arrayed, every core fits: {log}");
    assert_eq!(read(&dir.path().join("cores/cores.parquet"))[0].num_rows(), truth_positions(dir.path()).len());
}

#[test]
fn a_slide_gives_the_same_outputs_for_any_worker_layout_and_a_changed_slide_is_mapped_again() {
    let dir = tempfile::tempdir().unwrap();
    synth_slide(dir.path(), "3x3", 51, &["--format", "agilent"]);
    let images = dir.path().join("images");
    let mut runs = Vec::new();
    for workers in ["1", "3"] {
        let out = dir.path().join(format!("w{workers}"));
        let (code, log) = run(&images, &out, &["--workers", workers]);
        assert_eq!(code, 0, "{log}");
        runs.push(crate::run::outputs(&out));
    }
    crate::run::assert_same(&runs[0], &runs[1], "1 and 3 workers on one slide");

    // A changed slide (a tile rewritten with the same bytes, so only its time changes) is mapped
    // and processed again; an unchanged rerun is not.
    let out = dir.path().join("w1");
    let tile = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "dmd"))
        .expect("a mosaic tile");
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&tile, std::fs::read(&tile).unwrap()).unwrap();
    let (code, log) = run(&images, &out, &[]);
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("de-arraying: mapping 1 image(s)") && log.contains("0 reused"), "{log}");
    crate::run::assert_same(&runs[0], &crate::run::outputs(&out), "the rerun of a touched slide");
}
