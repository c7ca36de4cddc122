//! Synthetic archive generator: determinism across seeds and thread counts, labels and ground-truth
//! masks, spectral sanity of the written images (tissue vs paraffin vs slide, planted class
//! differences), the three output formats reading back identically, and config validation.
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use arrow::array::AsArray;
use arrow::datatypes::{Float32Type, UInt32Type};
use ftirflow::synth::{self, generate_with_threads, SynthConfig, SynthError, SynthFormat};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

fn tiny(patients: u32, size: u32) -> SynthConfig {
    SynthConfig { patients, size, ..SynthConfig::default() }
}

fn gen(cfg: &SynthConfig, dir: &Path, threads: usize) -> synth::SynthSummary {
    generate_with_threads(cfg, dir, threads, &|_, _| {}).expect("generate")
}

/// Every file under `dir`, relative path → bytes.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// A minimal ENVI reader for the generator's own output (BIP f32 little endian, no offset).
fn read_envi(hdr: &Path) -> (usize, usize, usize, Vec<f32>) {
    let text = fs::read_to_string(hdr).unwrap();
    let field = |key: &str| -> String {
        text.lines()
            .find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim().eq_ignore_ascii_case(key)).then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("{key} missing from {}", hdr.display()))
    };
    let (w, h, n): (usize, usize, usize) =
        (field("samples").parse().unwrap(), field("lines").parse().unwrap(), field("bands").parse().unwrap());
    assert_eq!(field("interleave").to_ascii_lowercase(), "bip");
    assert_eq!(field("data type"), "4");
    assert_eq!(field("byte order"), "0");
    let bytes = fs::read(hdr.with_extension("img")).unwrap();
    assert_eq!(bytes.len(), w * h * n * 4);
    let values = bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    (w, h, n, values)
}

/// The rows of a `truth/masks.parquet`: (sample, x, y, mask, paraffin fraction).
fn mask_rows(path: &Path) -> Vec<(String, u32, u32, String, f32)> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(fs::File::open(path).unwrap()).unwrap().build().unwrap();
    let mut out = Vec::new();
    for batch in reader {
        let b = batch.unwrap();
        let sample = b.column_by_name("sample").unwrap().as_string::<i32>();
        let x = b.column_by_name("x").unwrap().as_primitive::<UInt32Type>();
        let y = b.column_by_name("y").unwrap().as_primitive::<UInt32Type>();
        let mask = b.column_by_name("mask").unwrap().as_string::<i32>();
        let frac = b.column_by_name("paraffin_fraction").unwrap().as_primitive::<Float32Type>();
        for i in 0..b.num_rows() {
            out.push((sample.value(i).to_string(), x.value(i), y.value(i), mask.value(i).to_string(), frac.value(i)));
        }
    }
    out
}

/// Ground truth: sample → (mask per pixel, paraffin fraction per pixel), row-major.
fn read_masks(path: &Path, size: u32) -> HashMap<String, (Vec<String>, Vec<f32>)> {
    let mut out: HashMap<String, (Vec<String>, Vec<f32>)> = HashMap::new();
    for (sample, x, y, mask, frac) in mask_rows(path) {
        let e = out.entry(sample).or_default();
        // Rows come in row-major order per core.
        let k = e.0.len() as u32;
        assert_eq!((x, y), (k % size, k / size), "masks row order");
        e.0.push(mask);
        e.1.push(frac);
    }
    out
}

fn index_of(axis: &[f64], nu: f64) -> usize {
    (0..axis.len()).min_by(|&a, &b| (axis[a] - nu).abs().total_cmp(&(axis[b] - nu).abs())).unwrap()
}

fn config_axis(cfg: &SynthConfig) -> Vec<f64> {
    cfg.wavenumbers()
}

#[test]
fn same_seed_same_bytes_for_any_thread_count_and_other_seed_differs() {
    let cfg = tiny(2, 16);
    let (a, b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let sa = gen(&cfg, a.path(), 1);
    let sb = gen(&cfg, b.path(), 2);
    assert_eq!((sa.cores, sa.spectra, sa.bytes), (4, 4 * 256, sb.bytes));
    let (ta, tb) = (tree(a.path()), tree(b.path()));
    let names: Vec<_> = ta.keys().map(|p| p.to_string_lossy().into_owned()).collect();
    for expected in
        ["images/P01_CA.hdr", "images/P02_AT.img", "labels.csv", "truth/masks.parquet", "truth/planted_bands.json", "synth.json"]
    {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
    assert!(!names.iter().any(|n| n.contains(".tmp") || n.ends_with(".partial")), "temporary files left: {names:?}");
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    for (k, v) in &ta {
        assert!(v == &tb[k], "{} differs between 1 and 2 threads", k.display());
    }
    let total: u64 = ta.values().map(|v| v.len() as u64).sum();
    assert_eq!(sa.bytes, total, "summary bytes = bytes on disk");

    // Rerunning into an earlier output replaces it, with the same bytes.
    gen(&cfg, a.path(), 2);
    assert_eq!(tree(a.path()), ta);

    let other = SynthConfig { seed: cfg.seed + 1, ..cfg.clone() };
    gen(&other, c.path(), 2);
    let tc = tree(c.path());
    for f in ["images/P01_CA.img", "images/P02_AT.img", "truth/masks.parquet"] {
        assert_ne!(ta[Path::new(f)], tc[Path::new(f)], "{f} identical for another seed");
    }
}

#[test]
fn labels_are_balanced_and_masks_cover_every_pixel() {
    let cfg = tiny(8, 16);
    let dir = tempfile::tempdir().unwrap();
    gen(&cfg, dir.path(), 2);
    let labels = fs::read_to_string(dir.path().join("labels.csv")).unwrap();
    let mut lines = labels.lines();
    assert_eq!(lines.next(), Some("sample,patient,type,subtype"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 16);
    let mut per_patient: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    let mut subtypes: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &rows {
        assert_eq!(r.len(), 4, "{r:?}");
        assert_eq!(r[0], format!("{}_{}", r[1], r[2]));
        per_patient.entry(r[1]).or_default().push((r[2], r[3]));
        match r[2] {
            "CA" => *subtypes.entry(r[3]).or_default() += 1,
            "AT" => assert_eq!(r[3], "", "AT has no subtype"),
            t => panic!("type {t}"),
        }
    }
    assert_eq!(per_patient.len(), 8);
    assert_eq!(per_patient.keys().next(), Some(&"P01"));
    for (p, cores) in &per_patient {
        let mut types: Vec<_> = cores.iter().map(|c| c.0).collect();
        types.sort();
        assert_eq!(types, ["AT", "CA"], "patient {p}");
    }
    assert_eq!(subtypes, BTreeMap::from([("HER2", 2), ("LA", 2), ("LB", 2), ("TNBC", 2)]));

    let masks = read_masks(&dir.path().join("truth/masks.parquet"), 16);
    assert_eq!(masks.len(), 16);
    for (sample, (mask, frac)) in &masks {
        assert_eq!(mask.len(), 256, "{sample}");
        let count = |m: &str| mask.iter().filter(|v| *v == m).count();
        let (t, p, b) = (count("tissue"), count("paraffin"), count("background"));
        assert_eq!(t + p + b, 256, "{sample}: unknown mask values");
        assert!(p > 0 && b > 0, "{sample}: paraffin {p}, background {b}");
        let tf = t as f64 / 256.0;
        assert!((0.15..0.6).contains(&tf), "{sample}: tissue fraction {tf}");
        let infiltrated = mask.iter().zip(frac).filter(|(m, &f)| *m == "tissue" && f > 0.0).count();
        let want = (0.15 * t as f64).round() as usize;
        assert_eq!(infiltrated, want, "{sample}: infiltrated tissue pixels");
        assert!(mask.iter().zip(frac).all(|(m, &f)| match m.as_str() {
            "paraffin" => (0.65..=1.0).contains(&f),
            "background" => f == 0.0,
            _ => (0.0..0.6).contains(&f),
        }));
    }

    let planted: serde_json::Value = serde_json::from_slice(&fs::read(dir.path().join("truth/planted_bands.json")).unwrap()).unwrap();
    for class in ["CA", "AT", "LA", "LB", "HER2", "TNBC"] {
        let bands = planted["classes"][class]["bands"].as_array().unwrap_or_else(|| panic!("{class} missing"));
        assert!(!bands.is_empty(), "{class} has no planted band");
        assert!(bands.iter().all(|b| b["center"].as_f64().is_some() && b["name"].as_str().is_some()));
    }
    assert_eq!(planted["config"]["patients"], 8);
    let record: serde_json::Value = serde_json::from_slice(&fs::read(dir.path().join("synth.json")).unwrap()).unwrap();
    assert_eq!(record["config"], serde_json::to_value(&cfg).unwrap());
    assert_eq!(record["summary"]["spectra"], 16 * 256);
}

/// Tissue vs paraffin vs bare slide on the written ENVI images, and the planted CA/AT differences.
#[test]
fn written_spectra_carry_the_planted_physics_and_biology() {
    let cfg = tiny(4, 32);
    let dir = tempfile::tempdir().unwrap();
    gen(&cfg, dir.path(), 2);
    let axis = config_axis(&cfg);
    let masks = read_masks(&dir.path().join("truth/masks.parquet"), 32);
    let (i_amide, i_par, i_ch2) = (index_of(&axis, 1655.0), index_of(&axis, 1462.0), index_of(&axis, 2920.0));
    let labels = synth::labels(&cfg).unwrap();
    let n = axis.len();
    // Class sums of tissue spectra without paraffin.
    let (mut ca, mut at) = ((vec![0.0f64; n], 0usize), (vec![0.0f64; n], 0usize));
    for l in &labels {
        let (w, h, bands, values) = read_envi(&dir.path().join("images").join(format!("{}.hdr", l.sample)));
        assert_eq!((w, h, bands), (32, 32, n));
        let (mask, frac) = &masks[&l.sample];
        let spectrum = |p: usize| &values[p * n..(p + 1) * n];
        let of = |m: &str| (0..w * h).filter(|&p| mask[p] == m).collect::<Vec<_>>();
        let (tissue, paraffin, background) = (of("tissue"), of("paraffin"), of("background"));
        let mean = |px: &[usize], i: usize| px.iter().map(|&p| f64::from(spectrum(p)[i])).sum::<f64>() / px.len() as f64;

        // Units: tissue amide I lands in the outlier window, mostly 0.2–1.2.
        let mut amide: Vec<f32> = tissue.iter().map(|&p| spectrum(p)[i_amide]).collect();
        amide.sort_by(f32::total_cmp);
        let median = amide[amide.len() / 2];
        assert!((0.25..1.0).contains(&median), "{}: median tissue amide I {median}", l.sample);
        let inside = amide.iter().filter(|&&a| (0.05..2.5).contains(&a)).count();
        assert!(inside as f64 >= 0.98 * amide.len() as f64, "{}: {inside}/{} tissue amide I in [0.05, 2.5]", l.sample, amide.len());
        let max_bg = background.iter().map(|&p| spectrum(p)[i_amide].abs()).fold(0.0f32, f32::max);
        assert!(max_bg < 0.08, "{}: bare slide amide I up to {max_bg}", l.sample);
        assert!(mean(&tissue, i_amide) > 10.0 * mean(&background, i_amide).abs().max(0.01), "{}", l.sample);
        // Even the thinnest tissue stands clear of the paraffin's amide I.
        let pure: Vec<usize> = paraffin.iter().copied().filter(|&p| frac[p] == 1.0).collect();
        assert!(pure.len() * 2 > paraffin.len(), "{}: most paraffin is pure", l.sample);
        let max_par_amide = pure.iter().map(|&p| spectrum(p)[i_amide]).fold(f32::MIN, f32::max);
        assert!(
            amide[amide.len() / 100] > max_par_amide,
            "{}: thin tissue {} vs paraffin {max_par_amide}",
            l.sample,
            amide[amide.len() / 100]
        );
        // Pure paraffin passes the "no protein" test of DESIGN §4 (amide I < 1462 / 10); the
        // tissue smear at the edge does not.
        let protein_free = |p: usize| spectrum(p)[i_amide] < 0.1 * spectrum(p)[i_par];
        assert!(pure.iter().all(|&p| protein_free(p)), "{}: pure paraffin with protein signal", l.sample);
        let smeared: Vec<usize> = paraffin.iter().copied().filter(|&p| frac[p] < 0.8).collect();
        assert!(!smeared.is_empty() && smeared.iter().all(|&p| !protein_free(p)), "{}: smeared paraffin", l.sample);

        // Paraffin: CH2 bend and stretch, nothing at amide I.
        assert!(mean(&paraffin, i_par) > 5.0 * mean(&paraffin, i_amide).abs().max(0.01), "{}", l.sample);
        assert!(mean(&paraffin, i_ch2) > 0.5, "{}: paraffin 2920 {}", l.sample, mean(&paraffin, i_ch2));
        assert!(mean(&background, i_ch2).abs() < 0.05, "{}", l.sample);

        // Noise: adjacent-point differences over a band-free stretch of bare slide.
        let (lo, hi) = (index_of(&axis, 2000.0), index_of(&axis, 2500.0));
        let d: Vec<f64> = background.iter().flat_map(|&p| (lo..hi).map(move |i| f64::from(spectrum(p)[i + 1] - spectrum(p)[i]))).collect();
        let sd = (d.iter().map(|v| v * v).sum::<f64>() / d.len() as f64 / 2.0).sqrt();
        assert!((sd - cfg.noise).abs() < 0.1 * cfg.noise, "{}: noise sd {sd}, configured {}", l.sample, cfg.noise);

        let acc = if l.cancer { &mut ca } else { &mut at };
        for &p in tissue.iter().filter(|&&p| frac[p] == 0.0) {
            for (s, &v) in acc.0.iter_mut().zip(spectrum(p)) {
                *s += f64::from(v);
            }
            acc.1 += 1;
        }
    }
    let norm = |(s, c): (Vec<f64>, usize)| {
        let m: Vec<f64> = s.iter().map(|v| v / c as f64).collect();
        let a = m[i_amide];
        m.into_iter().map(|v| v / a).collect::<Vec<f64>>()
    };
    let (ca, at) = (norm(ca), norm(at));
    let planted = synth::planted_bands(&cfg).unwrap();
    let bands = |class: &str| planted.iter().find(|c| c.class == class).unwrap().bands.clone();
    let (ca_bands, at_bands) = (bands("CA"), bands("AT"));
    assert!(ca_bands.len() >= 3 && at_bands.len() >= 3, "{ca_bands:?} {at_bands:?}");
    for b in &ca_bands {
        let i = index_of(&axis, b.center);
        assert!(ca[i] > at[i], "CA planted band {} ({}): CA {} ≤ AT {}", b.center, b.name, ca[i], at[i]);
    }
    for b in &at_bands {
        let i = index_of(&axis, b.center);
        assert!(at[i] > ca[i], "AT planted band {} ({}): AT {} ≤ CA {}", b.center, b.name, at[i], ca[i]);
    }
}

/// With no class effect, the planted bands disappear, and CA and AT spectra come from the same
/// distribution (the class signal in the test above is not an artefact of the pipeline).
#[test]
fn no_effect_no_planted_bands() {
    let cfg = SynthConfig { effect: 0.0, ..tiny(2, 16) };
    assert!(synth::planted_bands(&cfg).unwrap().iter().all(|c| c.bands.is_empty()));
}

/// ENVI, Agilent and Parquet archives of one config hold the same spectra, read back by the
/// project's own readers.
#[test]
fn all_formats_hold_the_same_spectra() {
    let mut per_format = Vec::new();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    for (format, dir) in [SynthFormat::Envi, SynthFormat::Agilent, SynthFormat::Parquet].into_iter().zip(&dirs) {
        let cfg = SynthConfig { format, ..tiny(1, 16) };
        let summary = gen(&cfg, dir.path(), 2);
        assert_eq!(summary.cores, 2);
        let mut spectra = BTreeMap::new();
        for sample in ["P01_CA", "P01_AT"] {
            let path = dir.path().join("images").join(format!("{sample}.{}", format.extension()));
            assert!(path.exists(), "{} missing", path.display());
            let batches = ftirflow::io::read_all(&path, &ftirflow::io::ReadOptions::new(sample))
                .unwrap_or_else(|e| panic!("{format} reader on {}: {e}", path.display()));
            let mut px = BTreeMap::new();
            for b in &batches {
                let x = b.column_by_name("x").unwrap().as_primitive::<UInt32Type>();
                let y = b.column_by_name("y").unwrap().as_primitive::<UInt32Type>();
                let s = b.column_by_name("spectrum").unwrap().as_fixed_size_list();
                for i in 0..b.num_rows() {
                    let v = s.value(i);
                    let v: Vec<u32> = v.as_primitive::<Float32Type>().values().iter().map(|f| f.to_bits()).collect();
                    px.insert((y.value(i), x.value(i)), v);
                }
            }
            assert_eq!(px.len(), 256, "{format} {sample}");
            spectra.insert(sample, px);
        }
        per_format.push((format, spectra));
    }
    for (format, spectra) in &per_format[1..] {
        for (sample, px) in spectra {
            let envi = &per_format[0].1[sample];
            let differing = px.iter().filter(|(k, v)| envi[*k] != **v).count();
            assert_eq!(differing, 0, "{format} {sample}: {differing} pixels differ from ENVI");
        }
    }
}

#[test]
fn invalid_configs_are_rejected_with_clear_messages() {
    let msg = |cfg: SynthConfig| match cfg.validate() {
        Err(e @ SynthError::Config(_)) => e.to_string(),
        other => panic!("expected a config error, got {other:?}"),
    };
    let m = msg(SynthConfig { patients: 0, ..SynthConfig::default() });
    assert!(m.contains("patients") && m.contains("got 0"), "{m}");
    let m = msg(SynthConfig { size: 3, ..SynthConfig::default() });
    assert!(m.contains("size") && m.contains("got 3"), "{m}");
    let m = msg(SynthConfig { pixel_var: f64::NAN, ..SynthConfig::default() });
    assert!(m.contains("pixel_var") && m.contains("NaN"), "{m}");
    let m = msg(SynthConfig { la_lb_overlap: 1.5, ..SynthConfig::default() });
    assert!(m.contains("la_lb_overlap") && m.contains("between 0 and 1"), "{m}");
    let m = msg(SynthConfig { format: SynthFormat::Agilent, size: 20, ..SynthConfig::default() });
    assert!(m.contains("multiple of 8"), "{m}");
    let m = msg(SynthConfig { wn_min: 4000.0, ..SynthConfig::default() });
    assert!(m.contains("wn_min") && m.contains("below wn_max"), "{m}");
    let m = msg(SynthConfig { wn_step: -1.0, ..SynthConfig::default() });
    assert!(m.contains("wn_step"), "{m}");
    // Every problem is listed at once.
    let m = msg(SynthConfig { patients: 0, size: 3, noise: f64::INFINITY, ..SynthConfig::default() });
    assert!(m.contains("patients") && m.contains("size") && m.contains("noise"), "{m}");
    assert!(SynthConfig::default().validate().is_ok());

    // generate checks before touching the disk.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never");
    let err = generate_with_threads(&SynthConfig { patients: 0, ..SynthConfig::default() }, &out, 1, &|_, _| {}).unwrap_err();
    assert!(matches!(err, SynthError::Config(_)));
    assert!(!out.exists());

    // Unknown keys are rejected, missing keys default.
    let cfg: SynthConfig = serde_json::from_str(r#"{"patients": 3, "format": "parquet"}"#).unwrap();
    assert_eq!((cfg.patients, cfg.format, cfg.size), (3, SynthFormat::Parquet, 64));
    assert!(serde_json::from_str::<SynthConfig>(r#"{"patient": 3}"#).is_err());
}

#[test]
fn refuses_a_foreign_directory_and_reports_progress() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("thesis.docx"), b"precious").unwrap();
    let err = generate_with_threads(&tiny(1, 8), dir.path(), 1, &|_, _| {}).unwrap_err();
    assert!(matches!(err, SynthError::Output { .. }), "{err}");
    assert!(err.to_string().contains("thesis.docx"), "{err}");
    assert_eq!(fs::read(dir.path().join("thesis.docx")).unwrap(), b"precious");

    let out = dir.path().join("archive");
    let calls = std::sync::Mutex::new(Vec::new());
    let s = generate_with_threads(&tiny(3, 8), &out, 2, &|done, total| calls.lock().unwrap().push((done, total))).unwrap();
    let mut calls = calls.into_inner().unwrap();
    calls.sort();
    assert_eq!(calls, (0..=6).map(|d| (d, 6)).collect::<Vec<_>>());
    assert_eq!(s.cores, 6);
}

/// Whole slides (`synth --slide`): both formats read back, the truth JSON and labels, determinism,
/// torn cores, block-wise writing.
mod slides {
    use super::*;
    use ftirflow::synth::SlideConfig;
    use serde_json::Value;

    /// A 3×4 slide of 24 px cores on a short axis, as many patients as the positions need.
    fn slide_cfg(format: SynthFormat, sc: SlideConfig) -> SynthConfig {
        SynthConfig {
            patients: sc.patients_needed(),
            size: 24,
            format,
            wn_min: 900.0,
            wn_max: 1800.0,
            wn_step: 4.0 * 1.928467273712158,
            slide: Some(sc),
            ..SynthConfig::default()
        }
    }

    fn grid_3x4() -> SlideConfig {
        SlideConfig { rows: 3, cols: 4, ..SlideConfig::default() }
    }

    fn truth(dir: &Path, slide: &str) -> Value {
        serde_json::from_slice(&fs::read(dir.join("truth").join(format!("slide_{slide}.json"))).unwrap()).unwrap()
    }

    /// (x, y) → the bits of the spectrum.
    type Pixels = BTreeMap<(u32, u32), Vec<u32>>;

    /// The pixels of `path` through `ftirflow::io::open`, and the reader's width and height.
    fn read_pixels(path: &Path) -> ((u32, u32), Pixels) {
        let reader = ftirflow::io::open(path, &ftirflow::io::ReadOptions::new("S1")).unwrap();
        let info = reader.info().clone();
        let mut px = BTreeMap::new();
        for b in reader {
            let b = b.unwrap();
            let x = b.column_by_name("x").unwrap().as_primitive::<UInt32Type>();
            let y = b.column_by_name("y").unwrap().as_primitive::<UInt32Type>();
            let s = b.column_by_name("spectrum").unwrap().as_fixed_size_list();
            for i in 0..b.num_rows() {
                let v = s.value(i);
                px.insert((x.value(i), y.value(i)), v.as_primitive::<Float32Type>().values().iter().map(|f| f.to_bits()).collect());
            }
        }
        assert_eq!(px.len() as u64, info.n_spectra);
        ((info.width.unwrap(), info.height.unwrap()), px)
    }

    #[test]
    fn slide_reads_back_in_both_formats_with_truth_and_labels() {
        let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut images = Vec::new();
        for (format, dir) in [SynthFormat::Envi, SynthFormat::Agilent].into_iter().zip(&dirs) {
            let cfg = slide_cfg(format, grid_3x4());
            let summary = gen(&cfg, dir.path(), 2);
            // 12 positions, round(0.1 × 12) = 1 missing: 11 cores (6 patients, the last AT unplaced).
            assert_eq!(summary.cores, 11, "{format}");
            let t = truth(dir.path(), "S1");
            let (w, h) = (t["width"].as_u64().unwrap() as u32, t["height"].as_u64().unwrap() as u32);
            let image = dir.path().join("images").join(format!("S1.{}", format.extension()));
            assert_eq!(t["image"], format!("images/S1.{}", format.extension()));
            let ((rw, rh), px) = read_pixels(&image);
            assert_eq!((rw, rh), (w, h), "{format}");
            assert_eq!(px.len(), w as usize * h as usize);
            assert_eq!(summary.spectra, u64::from(w) * u64::from(h));
            if format == SynthFormat::Agilent {
                assert!(w % 128 == 0 && h % 128 == 0 && w > 128, "{w}×{h}: more than one 128 px tile across");
                let tiles = fs::read_dir(dir.path().join("images"))
                    .unwrap()
                    .filter(|e| e.as_ref().unwrap().path().extension().unwrap() == "dmd")
                    .count();
                assert_eq!(tiles as u32, (w / 128) * (h / 128));
            }

            // Every position: present ones with a box inside the image, missing ones without.
            let positions = t["positions"].as_array().unwrap();
            assert_eq!(positions.len(), 12);
            let grid = &t["grid"];
            assert_eq!((grid["rows"].as_u64(), grid["cols"].as_u64()), (Some(3), Some(4)));
            assert!(grid["rotation_deg"].as_f64().unwrap().abs() <= 3.0);
            assert!((grid["pitch"].as_f64().unwrap() - 24.0 * 1.4).abs() < 1e-9);
            let mut names = Vec::new();
            let mut missing = 0;
            for p in positions {
                let name = p["position"].as_str().unwrap().to_string();
                assert_eq!(p["sample"], format!("S1/{name}"));
                if p["present"].as_bool().unwrap() {
                    let b: Vec<u64> = p["bbox"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
                    assert!(b[0] < b[2] && b[1] < b[3] && b[2] <= u64::from(w) && b[3] <= u64::from(h), "{name}: {b:?} in {w}×{h}");
                    let c: Vec<f64> = p["centre"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
                    assert!(
                        c[0] > b[0] as f64 && c[0] < b[2] as f64 && c[1] > b[1] as f64 && c[1] < b[3] as f64,
                        "{name}: centre {c:?} outside {b:?}"
                    );
                    names.push((name, p["patient"].as_str().unwrap().to_string(), p["type"].as_str().unwrap().to_string()));
                } else {
                    assert!(p.get("bbox").is_none(), "{name}");
                    missing += 1;
                }
            }
            assert_eq!(missing, 1);
            assert_eq!(["A1", "A2", "A3", "A4", "B1"].iter().filter(|n| positions.iter().any(|p| p["position"] == **n)).count(), 5);

            // labels.csv: one row per present position, keyed <slide>/<position>.
            let csv = fs::read_to_string(dir.path().join("labels.csv")).unwrap();
            let rows: Vec<&str> = csv.lines().skip(1).collect();
            assert_eq!(rows.len(), 11);
            for (name, patient, ty) in &names {
                let row = rows.iter().find(|r| r.starts_with(&format!("S1/{name},"))).unwrap_or_else(|| panic!("S1/{name} not in labels"));
                assert!(row.starts_with(&format!("S1/{name},{patient},{ty},")), "{row}");
            }
            assert_eq!(rows.iter().filter(|r| r.contains(",CA,")).count(), 6);
            images.push((format, (w, h), px, t));
        }
        // The same slide in both formats: same truth, same spectra (the Agilent mosaic pads with
        // glass to whole tiles).
        let (envi, agilent) = (&images[0], &images[1]);
        assert_eq!(envi.3["positions"], agilent.3["positions"]);
        let differing = envi.2.iter().filter(|(k, v)| agilent.2.get(k) != Some(v)).count();
        assert_eq!(differing, 0, "{differing} ENVI pixels differ in the Agilent mosaic");
    }

    #[test]
    fn same_seed_same_bytes_for_any_block_and_thread_count() {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let cfg = slide_cfg(SynthFormat::Envi, grid_3x4());
        gen(&cfg, dirs[0].path(), 1);
        // Blocks of 5 rows (many blocks, cores spanning several), two threads.
        let blocks = slide_cfg(SynthFormat::Envi, SlideConfig { block_rows: 5, ..grid_3x4() });
        gen(&blocks, dirs[1].path(), 2);
        let (a, b) = (tree(dirs[0].path()), tree(dirs[1].path()));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (k, v) in &a {
            // The two JSON records that quote the config (block_rows) aside.
            if k != Path::new("synth.json") && k != Path::new("truth/planted_bands.json") {
                assert!(v == &b[k], "{} differs", k.display());
            }
        }
        let other = SynthConfig { seed: 43, ..cfg };
        gen(&other, dirs[2].path(), 2);
        let c = tree(dirs[2].path());
        assert_ne!(a[Path::new("images/S1.img")], c[Path::new("images/S1.img")]);
        assert_ne!(a[Path::new("truth/slide_S1.json")], c[Path::new("truth/slide_S1.json")]);
    }

    #[test]
    fn torn_cores_are_split_by_glass() {
        let dir = tempfile::tempdir().unwrap();
        let sc = SlideConfig { torn: 1.0, missing: 0.0, rows: 2, cols: 3, rotation: Some(-2.0), ..SlideConfig::default() };
        let cfg = slide_cfg(SynthFormat::Envi, sc);
        gen(&cfg, dir.path(), 2);
        let t = truth(dir.path(), "S1");
        assert_eq!(t["grid"]["rotation_deg"].as_f64(), Some(-2.0));
        let (w, _, n, values) = read_envi(&dir.path().join("images/S1.hdr"));
        let axis = config_axis(&cfg);
        let i_amide = index_of(&axis, 1655.0);
        // Truth masks of every core, in slide pixels.
        let mut masks: HashMap<String, HashMap<(u32, u32), String>> = HashMap::new();
        for (sample, x, y, mask, _) in mask_rows(&dir.path().join("truth/masks.parquet")) {
            masks.entry(sample).or_default().insert((x, y), mask);
        }
        let positions = t["positions"].as_array().unwrap();
        assert_eq!(positions.len(), 6);
        for p in positions {
            let sample = p["sample"].as_str().unwrap();
            assert_eq!(p["torn"], true, "{sample}");
            let pieces = p["pieces"].as_array().unwrap().len();
            assert!((2..=3).contains(&pieces), "{sample}: {pieces} pieces");
            let b: Vec<u32> = p["bbox"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            let m = &masks[sample];
            assert_eq!(m.len(), ((b[2] - b[0]) * (b[3] - b[1])) as usize, "{sample}: one mask row per bbox pixel");
            // 8-connected components of the core (tissue or paraffin): one per piece.
            let on = |x: u32, y: u32| m.get(&(x, y)).is_some_and(|v| v != "background");
            let mut seen = std::collections::HashSet::new();
            let mut components = 0;
            for (&(x, y), _) in m.iter().filter(|(&(x, y), _)| on(x, y)) {
                if !seen.insert((x, y)) {
                    continue;
                }
                components += 1;
                let mut stack = vec![(x, y)];
                while let Some((x, y)) = stack.pop() {
                    for (dx, dy) in [(-1i64, -1i64), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1)] {
                        let (nx, ny) = ((i64::from(x) + dx) as u32, (i64::from(y) + dy) as u32);
                        if on(nx, ny) && seen.insert((nx, ny)) {
                            stack.push((nx, ny));
                        }
                    }
                }
            }
            assert!(components >= 2, "{sample}: torn core in {components} piece(s)");
            // The image agrees: tissue has amide I, the glass between the pieces does not.
            let amide = |x: u32, y: u32| values[(y as usize * w + x as usize) * n + i_amide];
            let glass: Vec<f32> = m.iter().filter(|(_, v)| *v == "background").map(|(&(x, y), _)| amide(x, y)).collect();
            let tissue: Vec<f32> = m.iter().filter(|(_, v)| *v == "tissue").map(|(&(x, y), _)| amide(x, y)).collect();
            assert!(
                !glass.is_empty() && glass.iter().all(|a| a.abs() < 0.08),
                "{sample}: glass amide I up to {:?}",
                glass.iter().fold(0.0f32, |a, b| a.max(b.abs()))
            );
            let mean = tissue.iter().sum::<f32>() / tissue.len() as f32;
            assert!(mean > 0.2, "{sample}: tissue amide I {mean}");
        }
    }

    #[test]
    fn slide_configs_are_checked() {
        let msg = |cfg: SynthConfig| cfg.validate().unwrap_err().to_string();
        let m = msg(slide_cfg(SynthFormat::Parquet, grid_3x4()));
        assert!(m.contains("parquet"), "{m}");
        let m = msg(SynthConfig { patients: 7, ..slide_cfg(SynthFormat::Envi, grid_3x4()) });
        assert!(m.contains("14 cores do not fit") && m.contains("11 present positions"), "{m}");
        let m = msg(slide_cfg(SynthFormat::Envi, SlideConfig { pitch: 0.9, rotation: Some(60.0), ..grid_3x4() }));
        assert!(m.contains("pitch") && m.contains("rotation"), "{m}");
        // Slides with fewer cores than positions leave the rest empty.
        let dir = tempfile::tempdir().unwrap();
        let s = gen(&SynthConfig { patients: 2, ..slide_cfg(SynthFormat::Envi, SlideConfig { slides: 2, ..grid_3x4() }) }, dir.path(), 2);
        assert_eq!(s.cores, 4);
        let (t1, t2) = (truth(dir.path(), "S1"), truth(dir.path(), "S2"));
        let present = |t: &Value| t["positions"].as_array().unwrap().iter().filter(|p| p["present"] == true).count();
        assert_eq!((present(&t1), present(&t2)), (4, 0));
        assert!(dir.path().join("images/S2.hdr").exists());
        let synth: Value = serde_json::from_slice(&fs::read(dir.path().join("synth.json")).unwrap()).unwrap();
        assert_eq!(synth["summary"]["slides"], 2);
        assert_eq!(synth["config"]["slide"]["rows"], 3);
    }
}
