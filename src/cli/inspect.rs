//! `ftirflow inspect FILE [--png OUT.png] [--band LO-HI]`: what a reader sees in one file —
//! format, dimensions, axis range and step, value range, non-finite counts — and optionally a
//! quick chemical image. The first thing to run on new data.
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::Outcome;
use crate::io::inspect::inspect;
use crate::report::figures::chemical_image::{write_png, ChemicalImageFigure};

/// Default band of the chemical image: amide I.
const AMIDE_I: (f64, f64) = (1600.0, 1700.0);

/// The long `--help` text.
pub(super) const LONG_ABOUT: &str = "Reads FILE with the reader its format calls for (ENVI .hdr, Agilent .dat+.bsp tile or \
                        .dmt mosaic, spectra .parquet, Orange .csv), every spectrum, and prints what it sees: \
                        format, image dimensions, spectra, the wavenumber axis (ends, direction, step and \
                        whether it is uniform), data size, the range of finite values and the count of NaN and \
                        infinite values. With --png it also writes a chemical image: the mean value over the \
                        band (--band, default amide I 1600-1700 cm⁻¹) per pixel, on a perceptually uniform \
                        colour scale (1st-99th percentile). Exit code 2 when the file cannot be read.";

#[derive(Debug, Args)]
pub(super) struct InspectArgs {
    /// The file (for ENVI the .hdr or the data file).
    file: PathBuf,
    /// Write a chemical image PNG here.
    #[arg(long)]
    png: Option<PathBuf>,
    /// The chemical image's band, cm⁻¹, as LO-HI (default 1600-1700, amide I).
    #[arg(long, value_parser = parse_band)]
    band: Option<(f64, f64)>,
}

fn parse_band(s: &str) -> Result<(f64, f64), String> {
    let (a, b) = s.split_once('-').ok_or_else(|| format!("`{s}`: expected LO-HI, e.g. 1600-1700"))?;
    let p = |v: &str| v.trim().parse::<f64>().map_err(|_| format!("`{v}` is not a number"));
    let (a, b) = (p(a)?, p(b)?);
    if !(a.is_finite() && b.is_finite()) || a == b {
        return Err(format!("`{s}`: the band needs two different finite wavenumbers"));
    }
    Ok((a.min(b), a.max(b)))
}

pub(super) fn run(args: InspectArgs) -> anyhow::Result<Outcome> {
    let band = args.png.as_ref().map(|_| args.band.unwrap_or(AMIDE_I));
    if args.band.is_some() && args.png.is_none() {
        eprintln!("note: --band only shapes the --png image; no image is written without --png");
    }
    let r = inspect(&args.file, band).with_context(|| format!("cannot inspect {}", args.file.display()))?;
    println!("file:     {}", args.file.display());
    println!("format:   {}", r.format.name());
    match r.dims {
        Some((w, h)) => println!("image:    {w} × {h} px ({} spectra read)", r.spectra),
        None => println!("table:    {} spectra", r.spectra),
    }
    let (first, last) = r.axis_ends;
    let dir = if last >= first { "ascending" } else { "descending" };
    let (smin, smax) = r.step_range;
    let uniform = if smax - smin <= 1e-6 * smax.max(1.0) { "uniform".to_string() } else { format!("non-uniform, {smin:.4}–{smax:.4}") };
    println!(
        "axis:     {} points, {first:.2} → {last:.2} cm⁻¹ ({dir}), step {:.4} cm⁻¹ ({uniform})",
        r.points,
        (last - first).abs() / (r.points.max(2) - 1) as f64
    );
    println!("data:     {:.1} MB of spectra", r.data_bytes as f64 / 1e6);
    match r.value_range {
        Some((lo, hi)) => println!("values:   {lo:.4} … {hi:.4} (finite)"),
        None => println!("values:   no finite value"),
    }
    println!("NaN:      {} value(s); infinite: {}; spectra with a non-finite value: {}", r.nan, r.inf, r.spectra_with_nonfinite);
    println!("columns:  {}", r.columns.join(", "));
    if let (Some(png), Some(img)) = (&args.png, &r.image) {
        let name = args.file.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let fig = ChemicalImageFigure {
            title: format!("{name}: mean absorbance {:.0}–{:.0} cm⁻¹ ({} points)", img.band.0, img.band.1, img.points),
            width: img.width,
            height: img.height,
            values: &img.values,
        };
        write_png(&fig, png).with_context(|| format!("cannot write {}", png.display()))?;
        println!("png:      {} ({}×{} px, band {:.0}–{:.0} cm⁻¹)", png.display(), img.width, img.height, img.band.0, img.band.1);
    }
    Ok(Outcome::Complete)
}
