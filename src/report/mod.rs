//! The report (`ftirflow report OUT_DIR`, docs/outputs.md): PNG and SVG figures drawn with
//! `plotters` and an `index.html` that shows them with the numbers, written into `OUT_DIR/report/`
//! for a run directory (class maps, Grad-CAM profiles, confusion matrices, run summary) or a
//! model bundle (cross-validation metrics, confusion matrices, Grad-CAM profiles).
//!
//! Everything the report shows is read back from the files the run or the training wrote; the
//! report needs no model, no archive and no network (the HTML references only files inside
//! `report/`). The directory appears complete or not at all: it is written as `report.partial/`
//! and renamed ([`crate::io::atomic::AtomicDir`]).
pub mod figures;
mod html;
pub mod load;
mod run_report;
pub mod style;
mod tally;
mod train_report;

use std::path::{Path, PathBuf};

use crate::io::atomic::{partial_path, AtomicDir};

/// What went wrong while writing a report, and whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The directory is neither a run's output nor a model bundle (user input).
    #[error("{path}: not a run output directory (no run.json) nor a model bundle (no metrics.json)")]
    NotAnOutput {
        /// The directory given.
        path: PathBuf,
    },
    /// A file the report needs is missing or unreadable (user input: an incomplete or foreign
    /// directory).
    #[error("{path}: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// The report could not be written (disk full, permissions).
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A figure could not be drawn (our bug, or a font problem).
    #[error("drawing {figure} failed: {reason}")]
    Draw {
        /// The figure's file name.
        figure: String,
        /// The backend's message.
        reason: String,
    },
}

impl ReportError {
    pub(crate) fn bad(path: &Path, reason: impl Into<String>) -> Self {
        ReportError::BadFile { path: path.to_path_buf(), reason: reason.into() }
    }

    pub(crate) fn write(path: &Path, source: std::io::Error) -> Self {
        ReportError::Write { path: path.to_path_buf(), source }
    }
}

/// What a report was made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    /// A run directory (`run.json`, `predictions/`, tables).
    Run,
    /// A model bundle (`metrics.json`, `gradcam.json`).
    Train,
}

/// A written report.
#[derive(Debug, Clone)]
pub struct ReportSummary {
    /// What it was made from.
    pub kind: ReportKind,
    /// `OUT_DIR/report`.
    pub dir: PathBuf,
    /// The figures, relative to `dir` (each as `.png` and `.svg`).
    pub figures: Vec<String>,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// Writes `out_dir/report/` for a run directory or a model bundle (detected from its files).
pub fn write_report(out_dir: &Path) -> Result<ReportSummary, ReportError> {
    let start = std::time::Instant::now();
    if !out_dir.is_dir() {
        return Err(ReportError::bad(out_dir, "no such directory"));
    }
    let kind = if out_dir.join("run.json").is_file() {
        ReportKind::Run
    } else if out_dir.join("metrics.json").is_file() {
        ReportKind::Train
    } else {
        return Err(ReportError::NotAnOutput { path: out_dir.to_path_buf() });
    };
    style::register_fonts();
    let dir = out_dir.join("report");
    let staged = AtomicDir::create(&dir).map_err(|e| ReportError::write(&partial_path(&dir), e))?;
    let partial = staged.partial_path();
    std::fs::create_dir(partial.join("figures")).map_err(|e| ReportError::write(partial, e))?;
    // On an error `staged` is dropped, which removes `report.partial/`.
    let page = match kind {
        ReportKind::Run => run_report::build(out_dir, partial)?,
        ReportKind::Train => train_report::build(out_dir, partial)?,
    };
    let index = partial.join("index.html");
    std::fs::write(&index, page.html).map_err(|e| ReportError::write(&index, e))?;
    staged.commit().map_err(|e| ReportError::write(&dir, e))?;
    Ok(ReportSummary { kind, dir, figures: page.figures, seconds: start.elapsed().as_secs_f64() })
}

/// A page ready to be written: its HTML and the figures it shows.
pub(crate) struct Page {
    html: String,
    figures: Vec<String>,
}

/// The per-class accuracies the paper reports (del-Valle, Bernardes & Zezell, arXiv 2310.15094)
/// on its own archive: cancer vs adjacent tissue, and each molecular subtype one-vs-rest.
pub const PAPER_ACCURACY: [(&str, f64); 6] = [("AT", 0.89), ("CA", 0.89), ("HER2", 0.83), ("TNBC", 0.86), ("LA", 0.74), ("LB", 0.68)];

/// The paper's accuracy for `class`, when it reports one.
pub fn paper_accuracy(class: &str) -> Option<f64> {
    PAPER_ACCURACY.iter().find(|(c, _)| *c == class).map(|(_, v)| *v)
}
