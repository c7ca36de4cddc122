//! The report of a run directory: run summary (inputs, rejects, throughput, worker layout,
//! model bundle and its metrics), per-core class maps beside the amide I image, per-class
//! Grad-CAM profiles over the class mean spectra, and — when the run had truth labels —
//! confusion matrices per spectrum and per core with the per-class accuracy next to the paper's.
use std::collections::HashMap;
use std::path::Path;

use super::figures::class_map::ClassMap;
use super::figures::confusion::ConfusionPlot;
use super::figures::gradcam_plot::GradCamPlot;
use super::figures::slide_overview::SlideOverview;
use super::figures::{render, safe_name, sig3};
use super::html::Html;
use super::load::{self, CoreRecord, PixelClass};
use super::style::class_colour;
use super::tally::Confusion;
use super::{paper_accuracy, Page, ReportError};
use crate::operators::grad_cam::MapKind;

/// At most this many class maps are drawn (the first cores by sample id); the page says so when
/// an archive has more.
pub const MAX_CLASS_MAPS: usize = 400;

fn num(v: &serde_json::Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, k| v.get(k)).and_then(|v| v.as_f64())
}

fn string(v: &serde_json::Value, path: &[&str]) -> String {
    match path.iter().try_fold(v, |v, k| v.get(k)) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => "–".into(),
        Some(other) => other.to_string(),
    }
}

/// The first 16 hex digits of a hash (enough to tell bundles apart on a page).
fn short(hash: &str) -> String {
    if hash.chars().count() > 16 {
        format!("{}…", hash.chars().take(16).collect::<String>())
    } else {
        hash.to_string()
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{:.1} %", 100.0 * v))
}

fn frac(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.2}"))
}

/// Builds the page and its figures in `dir` from the run outputs in `out`.
pub(super) fn build(out: &Path, dir: &Path) -> Result<Page, ReportError> {
    let run = load::read_json(&out.join("run.json"))?;
    let cores_path = out.join("cores.parquet");
    let (types, subtypes) = load::class_lists(&cores_path)?;
    let cores = load::cores(&cores_path)?;
    let profiles = load::profiles(&out.join("gradcam.parquet"))?;
    let bands = load::bands(&out.join("bands.parquet"))?;
    let rejects = load::rejects(&out.join("rejects.parquet"))?;
    let by_sample: HashMap<&str, &CoreRecord> = cores.iter().map(|c| (c.sample.as_str(), c)).collect();
    let labelled = cores.iter().any(|c| c.truth_type.is_some() || c.truth_subtype.is_some());
    let mut figures = Vec::new();
    let mut page = Html::new("ftirflow run report");

    // Summary.
    page.section("summary", "Run summary");
    let spectra = num(&run, &["counts", "spectra"]).unwrap_or(0.0);
    let seconds = num(&run, &["seconds"]).unwrap_or(0.0);
    let workers = num(&run, &["layout", "workers_per_process"]).unwrap_or(1.0);
    let processes = num(&run, &["layout", "processes"]).unwrap_or(1.0);
    let images = format!(
        "{} ({} processed, {} reused from earlier runs, {} rejected)",
        string(&run, &["counts", "images"]),
        string(&run, &["counts", "processed"]),
        string(&run, &["counts", "reused"]),
        string(&run, &["counts", "rejected"])
    );
    let time = format!(
        "{seconds:.1} s; {:.0} spectra/s overall, {:.0} spectra/s of the images processed in this run",
        spectra / seconds.max(1e-9),
        num(&run, &["spectra_per_second_processed"]).unwrap_or(f64::NAN)
    );
    let layout = format!(
        "{processes:.0} process(es) × {workers:.0} worker(s); device {}, inference {}",
        string(&run, &["device"]),
        string(&run, &["inference"])
    );
    let memory = num(&run, &["peak_rss_bytes"]).map_or("–".into(), |b| format!("{:.0} MB (process 0)", b / 1e6));
    let versions = format!("ftirflow {}, libtorch {}", string(&run, &["ftirflow_version"]), string(&run, &["libtorch"]));
    page.facts(&[
        ("archive", string(&run, &["archive"])),
        ("images", images),
        ("cores written", cores.len().to_string()),
        ("spectra", format!("{spectra:.0}")),
        ("time", time),
        ("layout", layout),
        ("peak memory", memory),
        ("versions", versions),
    ]);
    page.section("models", "Model bundles");
    let mut rows = Vec::new();
    for (key, role) in [("model", "type"), ("subtype_model", "subtype")] {
        let path = string(&run, &[key]);
        if path == "–" {
            continue;
        }
        let manifest = load::read_json(&Path::new(&path).join("manifest.json")).ok();
        let m = manifest.as_ref();
        let get = |k: &[&str]| m.map_or("–".to_string(), |m| string(m, k));
        let metric = |k: &str| frac(m.and_then(|m| num(m, &["metrics", k])));
        rows.push(vec![
            role.to_string(),
            path.clone(),
            short(&get(&["weights_sha256"])),
            m.and_then(|m| m.get("classes")).map_or("–".into(), |c| {
                c.as_array().map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(", ")).unwrap_or_default()
            }),
            get(&["metrics", "folds"]),
            metric("spectrum_accuracy"),
            metric("core_accuracy"),
            metric("core_auc"),
        ]);
    }
    page.table(
        &["task", "bundle", "weights SHA-256", "classes", "CV folds", "CV accuracy / spectrum", "CV accuracy / core", "CV core AUC"],
        &rows,
    );
    page.p("Cross-validated metrics come from the bundle's manifest (out-of-fold, patient-grouped); “–” when the bundle was trained without cross-validation or is not readable from here.");

    page.section("rejects", "Rejected inputs");
    if rejects.is_empty() {
        page.p("None: every image of the archive was processed.");
    } else {
        let rows: Vec<Vec<String>> = rejects.iter().map(|(p, s, r)| vec![p.clone(), s.clone(), r.clone()]).collect();
        page.table(&["file", "stage", "reason"], &rows);
    }

    page.section("cores", "Cores");
    let mut rows = Vec::new();
    for c in &cores {
        rows.push(vec![
            c.sample.clone(),
            c.counts[0].to_string(),
            c.counts[1].to_string(),
            c.counts[2].to_string(),
            c.counts[3].to_string(),
            c.counts[4].to_string(),
            c.majority.clone().unwrap_or_else(|| "–".into()),
            c.subtype_majority.clone().unwrap_or_else(|| "–".into()),
            c.truth_type.clone().unwrap_or_else(|| "–".into()),
            c.truth_subtype.clone().unwrap_or_else(|| "–".into()),
        ]);
    }
    page.table(
        &["sample", "spectra", "tissue", "paraffin", "outliers", "classified", "majority", "subtype majority", "truth", "truth subtype"],
        &rows,
    );

    // Slides: one overview each, from the layouts the run recorded.
    let slides = crate::outputs::layouts::slides(out);
    if !slides.is_empty() {
        page.section("slides", "Slides");
        page.p("Each de-arrayed slide at reduced resolution (tissue and paraffin dark, bare slide white), every core outlined in the colour of its majority class and labelled by its grid position (rows lettered from the top, columns numbered from the left); grey ×: a grid position without a core. The cores' own class maps follow.");
        for (_, grid, slide_cores, map) in &slides {
            let Some(image) = slide_cores.first().map(|c| c.image.as_str()) else { continue };
            let majority = |pos: &str| by_sample.get(format!("{image}/{pos}").as_str()).and_then(|c| c.majority.clone());
            let fig = SlideOverview { image, grid, cores: slide_cores, map, majority: &majority, types: &types };
            let empty = fig.empty_positions().len();
            let stem = render(&fig, dir)?;
            page.figure(&stem, &format!("slide {image}: {} cores, {empty} empty position(s)", slide_cores.len()));
            figures.push(stem);
        }
    }

    // Class maps (and the per-spectrum confusion counts, from the same pass over the parts).
    let mut spec_type = Confusion::new(&types);
    let mut spec_sub = Confusion::new(&subtypes);
    page.section("maps", "Class maps");
    page.p("Per core: the predicted class of every classified tissue pixel (tissue that was flagged as an outlier or had an invalid spectrum in dark grey, paraffin in mid grey, bare slide in light grey), the predicted subtype for cores whose majority is cancer, and the amide I peak absorbance of the raw spectrum (the `amide_i` column of the predictions) on a perceptually uniform scale.");
    let parts = load::prediction_parts(out)?;
    if parts.len() > MAX_CLASS_MAPS {
        page.note(&format!("{} cores: class maps are drawn for the first {MAX_CLASS_MAPS} by sample id.", parts.len()));
    }
    for (i, part) in parts.iter().enumerate() {
        let px = load::core_pixels(part, &types, &subtypes)?;
        let core = by_sample.get(px.sample.as_str()).copied();
        if let Some(c) = core {
            for (map, classes, truth, conf) in [
                (Some(&px.types), &types, &c.truth_type, &mut spec_type),
                (px.subtypes.as_ref(), &subtypes, &c.truth_subtype, &mut spec_sub),
            ] {
                let (Some(map), Some(t)) = (map, truth) else { continue };
                let mut n = vec![0u64; classes.len()];
                for p in map.iter().flatten() {
                    if let PixelClass::Class(k) = p {
                        n[*k as usize] += 1;
                    }
                }
                for (k, &n) in n.iter().enumerate() {
                    conf.add(t, &classes[k], n);
                }
            }
        }
        if i >= MAX_CLASS_MAPS {
            continue;
        }
        let mut title = px.sample.clone();
        if let Some(c) = core {
            title.push_str(&format!(" — majority {}", c.majority.as_deref().unwrap_or("–")));
            if let Some(s) = &c.subtype_majority {
                title.push_str(&format!(" / {s}"));
            }
            if c.truth_type.is_some() || c.truth_subtype.is_some() {
                let t: Vec<&str> = [c.truth_type.as_deref(), c.truth_subtype.as_deref()].into_iter().flatten().collect();
                title.push_str(&format!(" (truth {})", t.join(" / ")));
            }
        }
        let fig = ClassMap { core: &px, types: &types, subtypes: &subtypes, title: title.clone() };
        let stem = render(&fig, dir)?;
        page.figure(&stem, &format!("{title}: {}×{} px", px.width, px.height));
        figures.push(stem);
    }

    // Grad-CAM.
    // Runs written before `[run] explain` made Grad-CAM maps.
    let kind: MapKind = run.pointer("/config/run/explain").and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default();
    page.section("gradcam", "Grad-CAM per class");
    page.p(match kind {
        MapKind::Gradcam => "Mean 1D Grad-CAM map of the spectra predicted as each class (coloured line, ±1 standard deviation band clipped to [0, 1]) over the class's mean preprocessed spectrum (black, ±1 standard deviation in grey); wavenumbers decrease to the right. Shaded: the class's top bands (contiguous ranges above the 90th percentile of the mean map), labelled with peak and assignment.",
        MapKind::Signed => "Mean signed map (`[run] explain = \"signed\"`: Grad-CAM without its ReLU, each map divided by its largest magnitude) of the spectra predicted as each class (coloured line, ±1 standard deviation band clipped to [−1, 1]): above zero a region raises the class's score, below zero it lowers it. Drawn over the class's mean preprocessed spectrum (black, ±1 standard deviation in grey); wavenumbers decrease to the right. Shaded: the class's top bands (contiguous ranges above the 90th percentile of the mean map, i.e. its strongest positive evidence), labelled with peak and assignment.",
    });
    let mut any_cam = false;
    for class in types.iter().chain(&subtypes) {
        let Some(cam) = profiles.get(&("predicted".to_string(), class.clone())) else { continue };
        any_cam = true;
        let spectrum = profiles.get(&(crate::outputs::records::SPECTRUM_SCOPE.to_string(), class.clone()));
        let class_bands: Vec<&load::BandRecord> = bands.iter().filter(|b| b.scope == "predicted" && &b.class == class).collect();
        let classes: Vec<String> = if types.contains(class) { types.clone() } else { subtypes.clone() };
        let fig = GradCamPlot {
            name: format!("gradcam_{}", safe_name(class)),
            title: match kind {
                MapKind::Gradcam => format!("Grad-CAM, predicted {class} ({} spectra)", cam.count),
                MapKind::Signed => format!("Signed map, predicted {class} ({} spectra)", cam.count),
            },
            colour: class_colour(class, &classes),
            cam,
            kind,
            spectrum,
            bands: class_bands.clone(),
        };
        let stem = render(&fig, dir)?;
        page.figure(&stem, &format!("Grad-CAM profile of class {class}"));
        figures.push(stem);
        if !class_bands.is_empty() {
            let rows: Vec<Vec<String>> = class_bands
                .iter()
                .map(|b| {
                    vec![
                        format!("{:.0}–{:.0}", b.lo, b.hi),
                        format!("{:.0}", b.peak),
                        sig3(b.mean_map),
                        super::figures::gradcam_plot::direction_text(b, class),
                        b.assignment.clone(),
                        b.source.clone(),
                    ]
                })
                .collect();
            page.table(&["band (cm⁻¹)", "peak", "mean map", "spectrum vs the other classes", "assignment", "source"], &rows);
        }
    }
    if !any_cam {
        page.p("No Grad-CAM summaries in this run ([run] gradcam = false, or nothing was classified).");
    }

    // Truth.
    page.section("accuracy", "Accuracy against the truth labels");
    if !labelled {
        page.p("This run had no truth labels (no --labels and no labels.csv beside the archive), so there are no confusion matrices.");
    } else {
        let mut core_type = Confusion::new(&types);
        let mut core_sub = Confusion::new(&subtypes);
        for c in &cores {
            if let (Some(t), Some(p)) = (&c.truth_type, &c.majority) {
                core_type.add(t, p, 1);
            }
            if let (Some(t), Some(p)) = (&c.truth_subtype, &c.subtype_majority) {
                core_sub.add(t, p, 1);
            }
        }
        page.p("Per spectrum: every classified spectrum counts with its core's label. Per core: the majority vote. Subtypes are counted over cancer-majority cores only (the subtype model runs on those).");
        for (what, spec, core) in [("type", &spec_type, &core_type), ("subtype", &spec_sub, &core_sub)] {
            for (level, conf) in [("spectrum", spec), ("core", core)] {
                if conf.total() == 0 {
                    continue;
                }
                let fig = ConfusionPlot {
                    name: format!("confusion_{what}_{level}"),
                    title: format!("{what}, per {level}: accuracy {} (n = {})", pct(conf.accuracy()), conf.total()),
                    classes: conf.classes.clone(),
                    counts: conf.counts.clone(),
                };
                let stem = render(&fig, dir)?;
                page.figure(&stem, &format!("Confusion matrix, {what} per {level}"));
                figures.push(stem);
            }
        }
        let mut rows = Vec::new();
        for (classes, spec, core) in [(&types, &spec_type, &core_type), (&subtypes, &spec_sub, &core_sub)] {
            for (k, c) in classes.iter().enumerate() {
                if spec.total() == 0 && core.total() == 0 {
                    continue;
                }
                rows.push(vec![
                    c.clone(),
                    spec.support(k).to_string(),
                    frac(spec.class_accuracy(k)),
                    core.support(k).to_string(),
                    frac(core.class_accuracy(k)),
                    frac(paper_accuracy(c)),
                ]);
            }
        }
        page.table(
            &["class", "spectra", "this run: accuracy per spectrum", "cores", "this run: accuracy per core", "paper (its own data)"],
            &rows,
        );
        page.note("The last column is the accuracy the paper reports (del-Valle, Bernardes & Zezell, arXiv 2310.15094: cancer vs adjacent tissue 0.89; one-vs-rest HER2 0.83, TNBC 0.86, LA 0.74, LB 0.68) on the paper's own archive of breast-tissue cores. It is a reference point, not a measurement on this archive: different tissue, instrument and labels. This run's accuracies are one-vs-rest ((TP + TN) / all) on this archive's labels, for a model that may have seen these cores in training.");
    }
    Ok(Page { html: page.finish(), figures })
}
