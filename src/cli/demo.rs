//! `ftirflow demo`: the built-in default job. It synthesizes the default archive and converts it to
//! a spectra table, printing a summary; it grows with the engine into synth → train → run → report.
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::Outcome;
use crate::synth::SynthConfig;

#[derive(Debug, Args)]
pub(super) struct DemoArgs {
    /// Output directory (archive in OUT/archive, spectra table in OUT/spectra.parquet).
    #[arg(long, default_value_os_t = super::default_demo_dir())]
    out: PathBuf,
}

pub(super) fn run(args: DemoArgs) -> anyhow::Result<Outcome> {
    let cfg = SynthConfig::default();
    let archive = args.out.join("archive");
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    println!("1/2 synthesizing the default archive ({} patients × 2 cores of {}×{} px)", cfg.patients, cfg.size, cfg.size);
    super::synth::generate(&cfg, &archive)?;
    let table = args.out.join("spectra.parquet");
    println!("2/2 converting {} to {}", archive.join("images").display(), table.display());
    let summary = super::convert(&[archive.join("images")], &table, crate::io::DEFAULT_BATCH_ROWS)?;
    for r in &summary.rejects {
        eprintln!("rejected: {}: [{}] {}", r.path.display(), r.stage, r.reason);
    }
    println!(
        "demo: {} images, {} spectra × {} points read at {:.0} MB/s; labels in {}, ground truth in {}",
        summary.images,
        summary.spectra,
        summary.points,
        summary.bytes as f64 / 1e6 / summary.seconds.max(1e-9),
        archive.join("labels.csv").display(),
        archive.join("truth").display()
    );
    let torch = crate::torch_check::check();
    println!("libtorch linked: inference device {} ({} CUDA device(s) visible)", torch.device, torch.cuda_devices);
    println!("outputs are in {}", args.out.display());
    Ok(if summary.rejects.is_empty() { Outcome::Complete } else { Outcome::SomeRejected })
}
