//! `ftirflow convert INPUT... --out FILE.parquet`: prints what [`crate::convert::convert`] did.
use std::path::PathBuf;

use clap::Args;

use super::{print_rejects, Outcome};
use crate::convert::convert;
use crate::io;

#[derive(Debug, Args)]
pub(super) struct ConvertArgs {
    /// Image files or directories (searched recursively; see docs/formats.md).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// The spectra Parquet file to write (appears only when complete).
    #[arg(long)]
    out: PathBuf,
    /// Spectra per record batch / Parquet row-group slice.
    #[arg(long, default_value_t = io::DEFAULT_BATCH_ROWS)]
    batch_rows: usize,
}

pub(super) fn run(args: ConvertArgs) -> anyhow::Result<Outcome> {
    let summary = convert(&args.inputs, &args.out, args.batch_rows, &super::progress::image_reporter())?;
    print_rejects(&summary.rejects);
    println!(
        "converted {} image(s), {} spectra × {} points into {} in {:.1} s ({:.0} spectra/s); {} rejected",
        summary.images,
        summary.spectra,
        summary.points,
        args.out.display(),
        summary.seconds,
        summary.spectra as f64 / summary.seconds.max(1e-9),
        summary.rejects.len()
    );
    Ok(Outcome::of(&summary.rejects))
}
