//! `ftirflow train --config F --labels CSV --task type|subtype ARCHIVE --out MODEL_DIR`, or
//! `ftirflow train --config F [--task NAME] TABLE.csv|.parquet --out MODEL_DIR` for a labelled
//! spectra table: cross-validates CaReNet-V1, trains the final model and writes the bundle.
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};

use super::Outcome;
use crate::config::Config;
use crate::train::{self, Input, Task};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum TaskArg {
    /// Cancer (CA) vs adjacent tissue (AT).
    Type,
    /// Molecular subtype of the cancer cores (LA, LB, HER2, TNBC).
    Subtype,
}

#[derive(Debug, Args)]
pub(super) struct TrainArgs {
    /// An archive directory (with --labels) or a labelled spectra table (.csv or .parquet with a
    /// `class` column and optionally `patient`).
    input: PathBuf,
    /// The model bundle directory to write (weights, manifest, metrics).
    #[arg(long)]
    out: PathBuf,
    /// Configuration file (TOML, see examples/ftirflow.toml); defaults apply without it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The labels CSV of an archive (sample,patient,type,subtype).
    #[arg(long)]
    labels: Option<PathBuf>,
    /// What to learn from an archive (a table's classes are its `class` column).
    #[arg(long, value_enum)]
    task: Option<TaskArg>,
    /// Override [train] epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Override [train] folds (0 = no cross-validation).
    #[arg(long)]
    folds: Option<usize>,
    /// Override [train] seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Override [train] spectra_per_epoch.
    #[arg(long)]
    spectra_per_epoch: Option<usize>,
    /// Override [train] threads.
    #[arg(long)]
    threads: Option<usize>,
}

pub(super) fn run(args: TrainArgs) -> anyhow::Result<Outcome> {
    let mut cfg = Config::load_or_default(args.config.as_deref())?;
    let t = &mut cfg.train;
    if let Some(v) = args.epochs {
        t.epochs = v;
    }
    if let Some(v) = args.folds {
        t.folds = v;
    }
    if let Some(v) = args.seed {
        t.seed = v;
    }
    if let Some(v) = args.spectra_per_epoch {
        t.spectra_per_epoch = v;
    }
    if let Some(v) = args.threads {
        t.threads = v;
    }
    cfg.validate()?;
    let input = if args.input.is_dir() {
        let labels = args.labels.clone().context("training on an archive needs --labels CSV (sample,patient,type,subtype)")?;
        let task = match args.task.context("training on an archive needs --task type|subtype")? {
            TaskArg::Type => Task::Type,
            TaskArg::Subtype => Task::Subtype,
        };
        Input::Archive { dir: args.input.clone(), labels, task }
    } else if args.input.is_file() {
        anyhow::ensure!(args.labels.is_none(), "--labels is for archives; a table carries its classes in a `class` column");
        Input::Table(args.input.clone())
    } else {
        anyhow::bail!("{}: no such archive directory or table", args.input.display());
    };
    let report = train::train(&cfg, &input, &args.out, &super::progress::epoch_reporter())
        .with_context(|| format!("training on {} failed", args.input.display()))?;
    print!("{}", report.cv.table());
    for c in report.gradcam.iter().filter(|c| c.by == "true") {
        let bands: Vec<String> = c.top_bands.iter().map(|b| format!("{:.0}–{:.0} ({})", b.lo, b.hi, b.assignment)).collect();
        println!("grad-cam top bands of {} ({} spectra): {}", c.class, c.count, bands.join(", "));
    }
    println!(
        "trained in {:.1} s; bundle written to {}{}",
        report.seconds,
        args.out.display(),
        if cfg.train.final_model { "" } else { " (metrics only: final_model = false)" }
    );
    if cfg.report.enabled {
        super::report::after_command(&args.out);
    }
    Ok(Outcome::Complete)
}
