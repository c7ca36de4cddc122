//! `ftirflow report` and `ftirflow inspect` with the real binary on the run tests' tiny archive
//! and models: the figures exist and decode (PNG) or parse (SVG) at the expected sizes, the page
//! references only files that exist, the class map's pixels are the predictions' colours, bad
//! directories exit 2, a training report shows its cross-validation, and the page opens in
//! headless Chromium (when installed) with every figure loaded.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::datatypes::UInt32Type;
use ftirflow::report::figures::class_map::layout;
use ftirflow::report::figures::gradcam_plot;
use ftirflow::report::style::{class_colour, BACKGROUND, EXCLUDED, PARAFFIN};
use plotters::style::RGBColor;

use crate::run::{bin, fixture, run, text};

/// A labelled run of the fixture (its report written at the end of the run), made once.
fn run_dir() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let f = fixture();
        let out = f.root.join("report_run");
        let o = run(&f.root, &out, &["--labels", "arch/labels.csv"]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(text(&o).contains("report: run report with"), "the run writes its report: {}", text(&o));
        out
    })
}

/// (width, height, RGB pixels) of a PNG file.
fn decode_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = dec.read_info().unwrap_or_else(|e| panic!("{}: not a PNG: {e}", path.display()));
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap_or_else(|e| panic!("{}: bad PNG data: {e}", path.display()));
    assert_eq!(info.bit_depth, png::BitDepth::Eight, "{}", path.display());
    let rgb: Vec<u8> = match info.color_type {
        png::ColorType::Rgb => buf[..info.buffer_size()].to_vec(),
        png::ColorType::Rgba => buf[..info.buffer_size()].chunks(4).flat_map(|c| [c[0], c[1], c[2]]).collect(),
        other => panic!("{}: unexpected colour type {other:?}", path.display()),
    };
    (info.width, info.height, rgb)
}

/// (width, height) of an SVG file, which must parse as XML.
fn svg_size(path: &Path) -> (u32, u32) {
    let text = std::fs::read_to_string(path).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{}: not XML: {e}", path.display()));
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg", "{}", path.display());
    let dim =
        |a: &str| root.attribute(a).unwrap_or_else(|| panic!("{}: no {a}", path.display())).trim_end_matches("px").parse::<u32>().unwrap();
    (dim("width"), dim("height"))
}

/// Every `src="…"` and `href="…"` of a page.
fn references(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attr in ["src=\"", "href=\""] {
        let mut rest = html;
        while let Some(i) = rest.find(attr) {
            rest = &rest[i + attr.len()..];
            let end = rest.find('"').unwrap();
            out.push(rest[..end].to_string());
            rest = &rest[end..];
        }
    }
    out
}

fn check_page(report: &Path) -> Vec<String> {
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(!html.contains("http://") && !html.contains("https://"), "no network resources");
    let refs = references(&html);
    assert!(!refs.is_empty());
    for r in &refs {
        if r.starts_with('#') {
            continue;
        }
        assert!(!r.contains(':') && !r.starts_with('/'), "{r}: not a relative local path");
        assert!(report.join(r).is_file(), "index.html references {r}, which does not exist");
    }
    refs
}

#[test]
fn a_run_report_has_valid_figures_and_an_index_that_references_only_existing_files() {
    let out = run_dir();
    let report = out.join("report");
    let refs = check_page(&report);
    let mut names: Vec<String> =
        std::fs::read_dir(report.join("figures")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    let pngs: Vec<&String> = names.iter().filter(|n| n.ends_with(".png")).collect();
    // Per core a class map (8 cores), per predicted class a Grad-CAM profile, and confusion
    // matrices (type per spectrum and per core at least: the run is labelled).
    assert_eq!(pngs.iter().filter(|n| n.starts_with("class_map_")).count(), 8, "{names:?}");
    assert!(pngs.iter().filter(|n| n.starts_with("gradcam_")).count() >= 2, "{names:?}");
    for n in ["confusion_type_spectrum.png", "confusion_type_core.png"] {
        assert!(names.iter().any(|m| m == n), "{n} missing: {names:?}");
    }
    let class_map_sizes = [layout(20, 20, 2, 5).size, layout(20, 20, 3, 7).size];
    for png in &pngs {
        let stem = png.trim_end_matches(".png");
        let (w, h, _) = decode_png(&report.join("figures").join(png));
        assert_eq!(svg_size(&report.join("figures").join(format!("{stem}.svg"))), (w, h), "{stem}: PNG and SVG sizes differ");
        assert!(refs.iter().any(|r| r == &format!("figures/{stem}.png")), "{stem}.png is not shown on the page");
        if stem.starts_with("class_map_") {
            assert!(class_map_sizes.contains(&(w, h)), "{stem}: {w}×{h}, expected one of {class_map_sizes:?}");
        } else if stem.starts_with("gradcam_") {
            assert_eq!((w, h), gradcam_plot::SIZE, "{stem}");
        } else {
            assert!(w >= 400 && h >= 200, "{stem}: {w}×{h}");
        }
    }
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    for needle in ["Run summary", "Rejected inputs", "paper (its own data)", "0.89", "worker(s)", "Grad-CAM per class"] {
        assert!(html.contains(needle), "index.html lacks {needle:?}");
    }
    assert!(!out.join("report.partial").exists());
}

#[test]
fn class_map_pixels_match_the_predictions() {
    let out = run_dir();
    let types: Vec<String> = ["AT", "CA"].iter().map(|s| s.to_string()).collect();
    let subtypes: Vec<String> = ["LA", "LB", "HER2", "TNBC"].iter().map(|s| s.to_string()).collect();
    let mut checked = 0;
    let mut classes_seen = BTreeMap::new();
    for e in std::fs::read_dir(out.join("predictions")).unwrap() {
        let part = e.unwrap().path();
        let stem = part.file_stem().unwrap().to_string_lossy().into_owned();
        let batches = crate::common::read_parquet(&part);
        // Expected colour per pixel, from the predictions alone.
        let mut type_px = Vec::new();
        let mut sub_px = Vec::new();
        for b in &batches {
            let x = b.column_by_name("x").unwrap().as_primitive::<UInt32Type>();
            let y = b.column_by_name("y").unwrap().as_primitive::<UInt32Type>();
            let tissue = b.column_by_name("tissue").unwrap().as_boolean();
            let paraffin = b.column_by_name("paraffin").unwrap().as_boolean();
            let pred = b.column_by_name("pred_class").unwrap().as_string::<i32>();
            let sub = b.column_by_name("subtype").unwrap().as_string::<i32>();
            for i in 0..b.num_rows() {
                let grey = if tissue.value(i) {
                    EXCLUDED
                } else if paraffin.value(i) {
                    PARAFFIN
                } else {
                    BACKGROUND
                };
                let t = if pred.is_null(i) { grey } else { class_colour(pred.value(i), &types) };
                if !pred.is_null(i) {
                    *classes_seen.entry(pred.value(i).to_string()).or_insert(0) += 1;
                }
                type_px.push((x.value(i), y.value(i), t));
                let s = if !sub.is_null(i) {
                    class_colour(sub.value(i), &subtypes)
                } else if pred.is_null(i) {
                    grey
                } else {
                    EXCLUDED
                };
                sub_px.push((x.value(i), y.value(i), s, !sub.is_null(i)));
            }
        }
        let has_sub = sub_px.iter().any(|p| p.3);
        let l = if has_sub { layout(20, 20, 3, 7) } else { layout(20, 20, 2, 5) };
        let (w, h, rgb) = decode_png(&out.join("report/figures").join(format!("class_map_{stem}.png")));
        assert_eq!((w, h), l.size);
        let at = |px: i32, py: i32| {
            let o = ((py as u32 * w + px as u32) * 3) as usize;
            RGBColor(rgb[o], rgb[o + 1], rgb[o + 2])
        };
        let half = (l.scale / 2) as i32;
        let panels: Vec<Vec<(u32, u32, RGBColor)>> =
            if has_sub { vec![type_px.clone(), sub_px.iter().map(|p| (p.0, p.1, p.2)).collect()] } else { vec![type_px.clone()] };
        for (k, pixels) in panels.iter().enumerate() {
            let (ox, oy) = l.origins[k];
            for &(x, y, c) in pixels {
                // The centre and a corner of the pixel's square.
                for (dx, dy) in [(half, half), (1, 1)] {
                    let got = at(ox + (x * l.scale) as i32 + dx, oy + (y * l.scale) as i32 + dy);
                    assert_eq!(got, c, "{stem}: panel {k}, pixel ({x}, {y})");
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 8 * 400, "every pixel of every core is checked ({checked})");
    // (The fixture's one-epoch model may call every spectrum one class; the colours are checked
    // for whichever classes it predicts.)
    assert!(!classes_seen.is_empty(), "classified pixels are on the maps");
}

#[test]
fn a_missing_or_corrupt_output_directory_exits_2_with_a_clear_message() {
    let f = fixture();
    let o = bin().args(["report", "no/such/dir"]).current_dir(&f.root).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no such directory"), "{}", text(&o));
    let empty = f.root.join("report_empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = bin().arg("report").arg(&empty).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("not a run output directory"), "{}", text(&o));
    // A copy of a run whose cores table is truncated: exit 2 naming the file, and no report left.
    let src = run_dir();
    let bad = f.root.join("report_corrupt");
    std::fs::create_dir_all(bad.join("predictions")).unwrap();
    for name in ["run.json", "gradcam.parquet", "bands.parquet", "rejects.parquet"] {
        std::fs::copy(src.join(name), bad.join(name)).unwrap();
    }
    let cores = std::fs::read(src.join("cores.parquet")).unwrap();
    std::fs::write(bad.join("cores.parquet"), &cores[..cores.len() / 2]).unwrap();
    let o = bin().arg("report").arg(&bad).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("cores.parquet"), "the message names the file: {}", text(&o));
    assert!(!text(&o).contains("panicked"), "{}", text(&o));
    assert!(!bad.join("report").exists() && !bad.join("report.partial").exists());
    // A run.json that is not JSON.
    std::fs::write(bad.join("cores.parquet"), &cores).unwrap();
    std::fs::write(bad.join("run.json"), "{ not json").unwrap();
    let o = bin().arg("report").arg(&bad).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("run.json") && text(&o).contains("not valid JSON"), "{}", text(&o));
}

#[test]
fn a_training_report_shows_the_cross_validation_next_to_the_paper() {
    let f = fixture();
    let o = bin()
        .args(["train", "--task", "type", "--labels", "arch/labels.csv", "--epochs", "1", "--folds", "2", "--threads", "1"])
        .args(["--spectra-per-epoch", "250", "arch/images", "--out", "report_model"])
        .current_dir(&f.root)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("report: training report with"), "{}", text(&o));
    let report = f.root.join("report_model/report");
    check_page(&report);
    for n in ["confusion_type_spectrum", "confusion_type_core", "gradcam_CA", "gradcam_AT"] {
        let (w, h, _) = decode_png(&report.join(format!("figures/{n}.png")));
        assert_eq!(svg_size(&report.join(format!("figures/{n}.svg"))), (w, h));
    }
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(html.contains("paper (its own data)") && html.contains("0.89"), "the paper's figure is shown");
    assert!(html.contains("pooled"), "the pooled cross-validation row is shown");
}

#[test]
fn inspect_prints_what_a_reader_sees_and_writes_a_chemical_image() {
    let f = fixture();
    let o = bin().args(["inspect", "arch/images/P01_CA.hdr", "--png", "inspect.png"]).current_dir(&f.root).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    for needle in ["format:   envi", "image:    20 × 20 px (400 spectra read)", "points", "cm⁻¹", "NaN:      0 value(s)", "values:"] {
        assert!(t.contains(needle), "{needle:?} not in:\n{t}");
    }
    let (w, h, rgb) = decode_png(&f.root.join("inspect.png"));
    assert!(w >= 400 && h >= 400, "{w}×{h}");
    assert!(rgb.chunks(3).any(|c| c != [255, 255, 255]), "the image is not blank");
    let o =
        bin().args(["inspect", "arch/images/P01_CA.hdr", "--png", "x.png", "--band", "5000-6000"]).current_dir(&f.root).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no axis point lies in the band"), "{}", text(&o));
    let o = bin().args(["inspect", "arch/no_such.hdr"]).current_dir(&f.root).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

/// The Chromium binary, if one is installed.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for name in ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Runs a command with a time limit; returns its output.
fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (mut so, mut se) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut so, &mut v).ok();
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut se, &mut v).ok();
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("chromium did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Output { status, stdout: out_t.join().unwrap(), stderr: err_t.join().unwrap() }
}

fn browse(chrome: &Path, profile: &Path, args: &[String], page: &Path) -> Output {
    let mut cmd = Command::new(chrome);
    cmd.args(["--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-extensions", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()));
    output_within(cmd, Duration::from_secs(120))
}

/// The page's `data-figures-loaded="ok/total"` after load, and Chromium's stderr.
fn dump(chrome: &Path, profile: &Path, page: &Path) -> (String, String) {
    let o = browse(
        chrome,
        profile,
        &["--dump-dom".into(), "--virtual-time-budget=10000".into(), "--enable-logging=stderr".into(), "--v=0".into()],
        page,
    );
    assert!(o.status.success(), "chromium failed: {}", text(&o));
    let dom = String::from_utf8_lossy(&o.stdout).into_owned();
    let loaded = dom
        .split("data-figures-loaded=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("the page's load handler did not run; DOM:\n{}", &dom[..dom.len().min(2000)]))
        .to_string();
    (loaded, String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn the_report_opens_in_headless_chromium_with_every_figure_loaded() {
    let Some(chrome) = chromium() else {
        eprintln!("skipped: chromium is not installed (apt-get install chromium, or set CHROMIUM); the report was not opened in a browser");
        return;
    };
    let out = run_dir();
    let report = out.join("report");
    let page = std::fs::canonicalize(report.join("index.html")).unwrap();
    let html = std::fs::read_to_string(&page).unwrap();
    let images = html.matches("<img ").count();
    assert!(images > 10);
    let profile = tempfile::tempdir().unwrap();
    let (loaded, stderr) = dump(&chrome, profile.path(), &page);
    assert_eq!(loaded, format!("{images}/{images}"), "every figure loads; chromium said:\n{stderr}");
    for bad in ["Failed to load resource", "ERR_FILE_NOT_FOUND", "Uncaught", "Not allowed to load local resource"] {
        assert!(!stderr.contains(bad), "chromium reported {bad:?}:\n{stderr}");
    }
    // The same check on a copy with one figure missing must fail: it detects broken pages.
    let broken = out.join("report_broken");
    let _ = std::fs::remove_dir_all(&broken);
    std::fs::create_dir_all(broken.join("figures")).unwrap();
    std::fs::copy(&page, broken.join("index.html")).unwrap();
    for e in std::fs::read_dir(report.join("figures")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, broken.join("figures").join(p.file_name().unwrap())).unwrap();
    }
    std::fs::remove_file(broken.join("figures/confusion_type_core.png")).unwrap();
    let (loaded, stderr) = dump(&chrome, profile.path(), &std::fs::canonicalize(broken.join("index.html")).unwrap());
    assert_eq!(loaded, format!("{}/{images}", images - 1), "a missing figure is detected:\n{stderr}");
    // The screenshot (kept beside the report for a person to look at).
    let shot = report.join("screenshot.png");
    let o = browse(&chrome, profile.path(), &[format!("--screenshot={}", shot.display()), "--window-size=1400,2400".into()], &page);
    assert!(o.status.success(), "{}", text(&o));
    let (w, h, rgb) = decode_png(&shot);
    assert_eq!((w, h), (1400, 2400));
    assert!(rgb.chunks(3).filter(|c| c != &[255, 255, 255]).count() > 10_000, "the screenshot shows the page");
    if let Some(dir) = std::env::var_os("FTIRFLOW_SCREENSHOT_DIR") {
        std::fs::copy(&shot, Path::new(&dir).join("report-screenshot.png")).unwrap();
    }
}
