//! `ftirflow synth`: writes a synthetic TMA archive (see [`crate::synth`]).
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};

use super::progress::Progress;
use super::Outcome;
use crate::synth::{self, SynthConfig, SynthFormat, SynthSummary};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum FormatArg {
    /// ENVI `.hdr` + `.img` (BIP, float32).
    Envi,
    /// Agilent mosaic `.dmt` + `.dmd` tiles.
    Agilent,
    /// Spectra Parquet table per core.
    Parquet,
}

#[derive(Debug, Args)]
pub(super) struct SynthArgs {
    /// Output directory (created; images go to OUT/images, labels to OUT/labels.csv).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of cores: one cancer (CA) and one adjacent-tissue (AT) core per patient, so even.
    #[arg(long, default_value_t = 16)]
    pub cores: u32,
    /// Image side in pixels.
    #[arg(long, default_value_t = 64)]
    pub size: u32,
    /// Random seed (same seed, same bytes).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// File format of the images.
    #[arg(long, value_enum, default_value_t = FormatArg::Envi)]
    pub format: FormatArg,
    /// Scale of the class and subtype differences (1 = default difficulty, smaller = harder).
    #[arg(long)]
    pub effect: Option<f64>,
    /// How alike LA and LB are: 0 = as distinct as the other subtypes, 1 = identical.
    #[arg(long)]
    pub la_lb_overlap: Option<f64>,
    /// Absorbance noise standard deviation.
    #[arg(long)]
    pub noise: Option<f64>,
}

impl SynthArgs {
    pub(super) fn config(&self) -> anyhow::Result<SynthConfig> {
        anyhow::ensure!(
            self.cores >= 2 && self.cores.is_multiple_of(2),
            "--cores must be an even number ≥ 2 (each patient has one CA and one AT core), got {}",
            self.cores
        );
        let mut cfg = SynthConfig {
            patients: self.cores / 2,
            size: self.size,
            seed: self.seed,
            format: match self.format {
                FormatArg::Envi => SynthFormat::Envi,
                FormatArg::Agilent => SynthFormat::Agilent,
                FormatArg::Parquet => SynthFormat::Parquet,
            },
            ..SynthConfig::default()
        };
        if let Some(v) = self.effect {
            cfg.effect = v;
        }
        if let Some(v) = self.la_lb_overlap {
            cfg.la_lb_overlap = v;
        }
        if let Some(v) = self.noise {
            cfg.noise = v;
        }
        cfg.validate().context("invalid synthetic archive settings")?;
        Ok(cfg)
    }
}

/// Generates the archive with a progress bar and prints a one-line summary.
pub(super) fn generate(cfg: &SynthConfig, out: &Path) -> anyhow::Result<SynthSummary> {
    let total = 2 * cfg.patients as u64;
    let progress = Progress::new("cores", total);
    let summary = synth::generate(cfg, out, &|done, _| progress.set(done as u64, ""))
        .with_context(|| format!("cannot write the synthetic archive to {}", out.display()))?;
    progress.finish();
    println!(
        "synthesized {} cores ({} spectra, {:.1} MB) into {} in {:.1} s",
        summary.cores,
        summary.spectra,
        summary.bytes as f64 / 1e6,
        out.display(),
        summary.seconds
    );
    Ok(summary)
}

pub(super) fn run(args: SynthArgs) -> anyhow::Result<Outcome> {
    let cfg = args.config()?;
    generate(&cfg, &args.out)?;
    Ok(Outcome::Complete)
}
