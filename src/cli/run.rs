//! `ftirflow run`: the nightly pipeline over an archive (see [`crate::run`]).
use std::path::PathBuf;

use clap::Args;

use super::{print_rejects, Outcome};
use crate::config::Config;
use crate::run::{refuse, run as run_job, RunOptions};

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
    /// Seconds the processes of a cluster run wait for each other at start before exiting with
    /// code 2, naming the missing ones (overrides `[run] connect_timeout`, default 300).
    #[arg(long, value_name = "SECONDS")]
    connect_timeout: Option<u64>,
    /// Also write Prometheus textfile metrics of the run here, success or failure (overrides
    /// `[run] metrics_file`; name it `*.prom` in node_exporter's textfile directory).
    #[arg(long)]
    metrics_file: Option<PathBuf>,
    /// The run's id in status.json and the tables' metadata (default: the UTC start time and
    /// the process id). Give every process of a cluster run the same one.
    #[arg(long)]
    run_id: Option<String>,
}

pub(super) fn run(args: RunArgs) -> anyhow::Result<Outcome> {
    let (mut config, unusable) = match Config::load_or_default(args.config.as_deref()) {
        Ok(c) => (c, None),
        Err(e) => (Config::default(), Some(e)),
    };
    if let Some(w) = args.workers {
        config.run.workers = w;
    }
    if let Some(t) = args.connect_timeout {
        config.run.connect_timeout = t;
    }
    if let Some(m) = args.metrics_file {
        config.run.metrics_file = Some(m);
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
        run_id: args.run_id,
    };
    if let Some(e) = unusable {
        return Err(refuse(&opts, e.into()).into());
    }
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
