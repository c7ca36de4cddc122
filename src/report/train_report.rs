//! The report of a model bundle (`ftirflow train`'s output): what was trained on what, the
//! cross-validation metrics per fold, the pooled out-of-fold confusion matrices per spectrum and
//! per core, the per-class accuracy next to the paper's, and the out-of-fold Grad-CAM profiles
//! per true class with their top bands.
use std::path::Path;

use super::figures::confusion::ConfusionPlot;
use super::figures::gradcam_plot::GradCamPlot;
use super::figures::{render, safe_name, sig3};
use super::html::Html;
use super::load::{self, BandRecord, Profile};
use super::style::class_colour;
use super::{paper_accuracy, Page, ReportError};
use crate::train::metrics::Metrics;
use crate::train::TrainReport;

fn frac(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.3}"))
}

/// Builds the page and its figures in `dir` from the bundle in `out`.
pub(super) fn build(out: &Path, dir: &Path) -> Result<Page, ReportError> {
    let path = out.join("metrics.json");
    let text = std::fs::read(&path).map_err(|e| ReportError::bad(&path, format!("cannot read: {e}")))?;
    let report: TrainReport = serde_json::from_slice(&text).map_err(|e| ReportError::bad(&path, format!("not a training report: {e}")))?;
    let manifest = load::read_json(&out.join("manifest.json")).ok();
    let cv = &report.cv;
    let mut figures = Vec::new();
    let mut page = Html::new(&format!("ftirflow training report — {} model", cv.task));

    page.section("summary", "Training summary");
    let m = manifest.as_ref();
    let get = |k: &str| m.and_then(|m| m.get(k)).map_or("–".to_string(), |v| v.as_str().map_or(v.to_string(), String::from));
    let folds =
        if cv.folds >= 2 { format!("{} folds, grouped by patient, stratified by class", cv.folds) } else { "none (folds = 0)".into() };
    let sizes = report.fold_sizes.iter().map(|(a, b)| format!("{a} / {b}")).collect::<Vec<_>>().join(", ");
    let final_model = if report.final_spectra > 0 {
        format!("trained on {} spectra; weights SHA-256 {}", report.final_spectra, get("weights_sha256"))
    } else {
        "not trained (final_model = false)".into()
    };
    page.facts(&[
        ("task", cv.task.clone()),
        ("classes", cv.classes.join(", ")),
        ("data", get("source")),
        ("cross-validation", folds),
        ("spectra per fold (train / test)", sizes),
        ("final model", final_model),
        ("time", format!("{:.1} s", report.seconds)),
    ]);

    page.section("metrics", "Cross-validation metrics");
    let Some(pooled) = &cv.pooled else {
        page.p("No cross-validation ran (folds = 0), so there are no out-of-fold metrics, confusion matrices or Grad-CAM profiles. Train with folds ≥ 2 to see them.");
        return Ok(Page { html: page.finish(), figures });
    };
    let mut rows = Vec::new();
    for r in cv.per_fold.iter().chain(std::iter::once(pooled)) {
        for (level, m) in [("spectrum", Some(&r.spectrum)), ("core", r.core.as_ref())] {
            if let Some(m) = m {
                rows.push(vec![r.fold.clone(), level.into(), m.n.to_string(), frac(Some(m.accuracy)), frac(m.auc)]);
            }
        }
    }
    page.table(&["fold", "level", "n", "accuracy", "AUC"], &rows);

    for (level, m) in [("spectrum", Some(&pooled.spectrum)), ("core", pooled.core.as_ref())] {
        let Some(m) = m else { continue };
        let fig = ConfusionPlot {
            name: format!("confusion_{}_{level}", safe_name(&cv.task)),
            title: format!("{}, per {level}, out-of-fold: accuracy {:.1} % (n = {})", cv.task, 100.0 * m.accuracy, m.n),
            classes: cv.classes.clone(),
            counts: m.confusion.clone(),
        };
        let stem = render(&fig, dir)?;
        page.figure(&stem, &format!("Pooled out-of-fold confusion matrix per {level}"));
        figures.push(stem);
    }
    let class_row = |m: Option<&Metrics>, c: &str| m.and_then(|m| m.per_class.iter().find(|k| k.class == c)).cloned();
    let rows: Vec<Vec<String>> = cv
        .classes
        .iter()
        .map(|c| {
            let s = class_row(Some(&pooled.spectrum), c);
            let k = class_row(pooled.core.as_ref(), c);
            vec![
                c.clone(),
                s.as_ref().map_or("–".into(), |s| s.support.to_string()),
                frac(s.as_ref().map(|s| s.accuracy)),
                frac(s.as_ref().and_then(|s| s.sensitivity)),
                frac(s.as_ref().and_then(|s| s.specificity)),
                frac(s.as_ref().and_then(|s| s.auc)),
                frac(k.as_ref().map(|k| k.accuracy)),
                frac(paper_accuracy(c)),
            ]
        })
        .collect();
    page.table(
        &[
            "class",
            "spectra",
            "accuracy (one-vs-rest) / spectrum",
            "sensitivity",
            "specificity",
            "AUC",
            "accuracy / core",
            "paper (its own data)",
        ],
        &rows,
    );
    page.note("The last column is the accuracy the paper reports (del-Valle, Bernardes & Zezell, arXiv 2310.15094: cancer vs adjacent tissue 0.89; one-vs-rest HER2 0.83, TNBC 0.86, LA 0.74, LB 0.68) on the paper's own archive. It is a reference point, not a measurement on these data. This bundle's numbers are pooled out-of-fold predictions of its cross-validation.");

    // Grad-CAM, out of fold, per true class.
    page.section("gradcam", "Grad-CAM per class (out of fold)");
    let grid: Vec<f64> = m
        .and_then(|m| m.get("wavenumbers"))
        .and_then(|w| serde_json::from_value(w.clone()).ok())
        .or_else(|| crate::config::Config::default().preprocess.resample.grid().ok())
        .unwrap_or_default();
    let cams = load::read_json(&out.join("gradcam.json")).unwrap_or(serde_json::Value::Null);
    let mut any = false;
    for entry in cams.as_array().into_iter().flatten() {
        if entry.get("by").and_then(|v| v.as_str()) != Some("true") {
            continue;
        }
        let class = entry.get("class").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let vec = |k: &str| -> Vec<f64> { entry.get(k).and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default() };
        let (mean, std) = (vec("mean"), vec("std"));
        if mean.len() != grid.len() || std.len() != grid.len() || grid.len() < 2 {
            continue;
        }
        let cam = Profile { wavenumber: grid.clone(), mean, std, count: entry.get("count").and_then(|v| v.as_u64()).unwrap_or(0) };
        let bands: Vec<BandRecord> = report
            .gradcam
            .iter()
            .filter(|c| c.by == "true" && c.class == class)
            .flat_map(|c| c.top_bands.iter())
            .map(|b| BandRecord {
                scope: "true".into(),
                class: class.clone(),
                lo: b.lo,
                hi: b.hi,
                peak: b.peak,
                mean_map: b.mean_map,
                assignment: b.assignment.clone(),
                source: b.sources.clone(),
                direction: b.direction.map(|d| d.word().to_string()).unwrap_or_default(),
                relative: b.direction.and_then(|d| d.relative).unwrap_or(f64::NAN),
                ..BandRecord::default()
            })
            .collect();
        let fig = GradCamPlot {
            name: format!("gradcam_{}", safe_name(&class)),
            title: format!("Grad-CAM, true class {class}, out of fold ({} spectra)", cam.count),
            colour: class_colour(&class, &cv.classes),
            cam: &cam,
            kind: crate::operators::grad_cam::MapKind::Gradcam,
            spectrum: None,
            bands: bands.iter().collect(),
        };
        let stem = render(&fig, dir)?;
        page.figure(&stem, &format!("Grad-CAM profile of true class {class} (the bundle stores no mean spectra)"));
        figures.push(stem);
        let rows: Vec<Vec<String>> = bands
            .iter()
            .map(|b| {
                vec![
                    format!("{:.0}–{:.0}", b.lo, b.hi),
                    format!("{:.0}", b.peak),
                    sig3(b.mean_map),
                    super::figures::gradcam_plot::direction_text(b, &class),
                    b.assignment.clone(),
                    b.source.clone(),
                ]
            })
            .collect();
        page.table(&["band (cm⁻¹)", "peak", "mean map", "spectrum vs the other classes", "assignment", "source"], &rows);
        any = true;
    }
    if !any {
        page.p("No out-of-fold Grad-CAM maps in this bundle.");
    }
    Ok(Page { html: page.finish(), figures })
}
