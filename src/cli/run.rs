//! `ftirflow run`: the nightly pipeline over an archive (see [`crate::run`]).
use std::path::PathBuf;

use clap::Args;

use super::{print_rejects, Outcome};
use crate::config::Config;
use crate::run::{run as run_job, RunOptions};

/// Arguments of `ftirflow run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration file (TOML; `[run]` section). Defaults apply when omitted.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The type (CA vs AT) model bundle directory (from `ftirflow train --task type`).
    #[arg(long)]
    model: PathBuf,
    /// The subtype model bundle, applied to the cores the type model calls cancer.
    #[arg(long)]
    subtype_model: Option<PathBuf>,
    /// Truth labels (`sample,patient,type,subtype`); default: ARCHIVE/labels.csv when present.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// The archive: a directory of images (ENVI, Agilent, Parquet), or one image.
    archive: PathBuf,
    /// Output directory (created; reruns reuse what is already done there).
    #[arg(long)]
    out: PathBuf,
    /// Worker threads per process (overrides `[run] workers`).
    #[arg(long)]
    workers: Option<usize>,
    /// Processes in a cluster run (each started with the same arguments and its own --process).
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// This process's index in a cluster run (0-based; process 0 writes the tables).
    #[arg(long, default_value_t = 0)]
    process: usize,
    /// Host file of a cluster run: one `host:port` per process, in process order. Timely's
    /// transport is unauthenticated: use it on a private network only.
    #[arg(long)]
    hostfile: Option<PathBuf>,
}

pub(super) fn run(args: RunArgs) -> anyhow::Result<Outcome> {
    let mut config = Config::load_or_default(args.config.as_deref())?;
    if let Some(w) = args.workers {
        config.run.workers = w;
    }
    let opts = RunOptions {
        config,
        model: args.model,
        subtype_model: args.subtype_model,
        archive: args.archive,
        labels: args.labels,
        out: args.out.clone(),
        processes: args.processes,
        process: args.process,
        hostfile: args.hostfile,
    };
    let report = opts.config.report.enabled;
    let s = run_job(&opts, &super::progress::run_reporter())?;
    print_rejects(&s.rejects);
    if s.wrote_tables {
        println!(
            "run: {} image(s) ({} processed, {} reused, {} rejected), {} cores, {} spectra in {:.1} s on {} worker(s); outputs in {}",
            s.images,
            s.processed,
            s.reused,
            s.rejects.len(),
            s.cores,
            s.spectra,
            s.seconds,
            s.workers,
            args.out.display()
        );
        if report {
            super::report::after_command(&args.out);
        }
    } else {
        println!("run: process {} finished its images in {:.1} s (process 0 writes the tables)", opts.process, s.seconds);
    }
    Ok(Outcome::of(&s.rejects))
}
