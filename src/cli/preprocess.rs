//! `ftirflow preprocess [--config F] INPUT... --out FILE.parquet`: applies the flags to the
//! configuration and prints what [`crate::preprocess::preprocess`] did.
use std::path::PathBuf;

use clap::Args;

use super::{print_rejects, Outcome};
use crate::config::{Config, Keep, Step};
use crate::plan::EmscState;
use crate::preprocess::preprocess;

#[derive(Debug, Args)]
pub(super) struct PreprocessArgs {
    /// Image files or directories (searched recursively).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// The spectra Parquet file to write (appears only when complete).
    #[arg(long)]
    out: PathBuf,
    /// Configuration file (TOML, see examples/ftirflow.toml); defaults apply without it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Steps to run, comma-separated, overriding the config (e.g. `--steps emsc`).
    #[arg(long, value_delimiter = ',', value_enum)]
    steps: Option<Vec<StepArg>>,
    /// Which spectra to write, overriding the config.
    #[arg(long, value_enum)]
    keep: Option<KeepArg>,
    /// Use this EMSC state (reference + interferents) instead of fitting one on the inputs.
    #[arg(long)]
    emsc_state: Option<PathBuf>,
    /// Save the EMSC state that was fitted (or loaded) to this JSON file.
    #[arg(long)]
    save_emsc_state: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum StepArg {
    Segment,
    Outliers,
    Emsc,
    Resample,
    Normalize,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum KeepArg {
    All,
    Tissue,
}

pub(super) fn run(args: PreprocessArgs) -> anyhow::Result<Outcome> {
    let mut cfg = Config::load_or_default(args.config.as_deref())?;
    if let Some(steps) = &args.steps {
        cfg.preprocess.steps = steps
            .iter()
            .map(|s| match s {
                StepArg::Segment => Step::Segment,
                StepArg::Outliers => Step::Outliers,
                StepArg::Emsc => Step::Emsc,
                StepArg::Resample => Step::Resample,
                StepArg::Normalize => Step::Normalize,
            })
            .collect();
        cfg.preprocess.steps.sort();
    }
    if let Some(keep) = args.keep {
        cfg.preprocess.keep = match keep {
            KeepArg::All => Keep::All,
            KeepArg::Tissue => Keep::Tissue,
        };
    }
    cfg.validate()?;
    let state = match &args.emsc_state {
        Some(p) => Some(EmscState::load(p)?),
        None => None,
    };
    let reporter = super::progress::image_reporter();
    let summary = preprocess(&cfg, &args.inputs, &args.out, state, args.save_emsc_state.as_deref(), &reporter)?;
    print_rejects(&summary.rejects);
    println!(
        "preprocessed {} image(s): {} spectra ({} tissue, {} outliers) into {} in {:.1} s ({:.0} spectra/s); {} rejected",
        summary.images,
        summary.spectra,
        summary.tissue,
        summary.outliers,
        args.out.display(),
        summary.seconds,
        summary.spectra as f64 / summary.seconds.max(1e-9),
        summary.rejects.len()
    );
    Ok(Outcome::of(&summary.rejects))
}
