//! `ftirflow report OUT_DIR`: writes `OUT_DIR/report/` (PNG/SVG figures and `index.html`) for a
//! run directory or a model bundle; `run` and `train` call it at the end when `[report] enabled`.
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use super::Outcome;
use crate::report::{write_report, ReportKind};

/// The long `--help` text.
pub(super) const LONG_ABOUT: &str = "Writes OUT_DIR/report/: PNG and SVG figures drawn with plotters and an index.html that \
                        shows them with the numbers (no network resources; open it in any browser).\n\n\
                        For a run directory (`ftirflow run --out OUT_DIR`): the run summary (inputs, rejects \
                        with reasons, throughput, worker layout, model bundles and their cross-validated \
                        metrics), a class map per core beside its amide I image, the Grad-CAM profile of each \
                        class over its mean spectrum with the top bands, and — when the run had truth labels — \
                        confusion matrices per spectrum and per core with the per-class accuracy next to the \
                        paper's published figures.\n\n\
                        For a model bundle (`ftirflow train --out MODEL_DIR`): cross-validation metrics, \
                        out-of-fold confusion matrices, per-class accuracy next to the paper's, and out-of-fold \
                        Grad-CAM profiles.\n\n\
                        The report is replaced as a whole (written as report.partial/, then renamed). Exit code 2 \
                        when OUT_DIR is missing, is neither a run nor a bundle, or holds corrupt files.";

#[derive(Debug, Args)]
pub(super) struct ReportArgs {
    /// A run's output directory (with run.json) or a model bundle (with metrics.json).
    out_dir: PathBuf,
}

pub(super) fn run(args: ReportArgs) -> anyhow::Result<Outcome> {
    let s = write_report(&args.out_dir).with_context(|| format!("no report for {}", args.out_dir.display()))?;
    print_summary(&s);
    Ok(Outcome::Complete)
}

fn print_summary(s: &crate::report::ReportSummary) {
    let what = match s.kind {
        ReportKind::Run => "run",
        ReportKind::Train => "training",
    };
    println!("report: {what} report with {} figure(s) in {:.1} s: {}", s.figures.len(), s.seconds, s.dir.join("index.html").display());
}

/// The report at the end of `run`/`train`/`demo`: a failure is printed as a warning and does not
/// change the command's exit code (its outputs are complete without it).
pub(super) fn after_command(out_dir: &Path) {
    match write_report(out_dir) {
        Ok(s) => print_summary(&s),
        Err(e) => eprintln!("warning: the report of {} was not written: {e}", out_dir.display()),
    }
}
