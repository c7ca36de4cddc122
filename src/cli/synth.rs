//! `ftirflow synth`: writes a synthetic TMA archive (see [`crate::synth`]).
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Context;
use clap::{Args, ValueEnum};

use super::progress::Progress;
use super::Outcome;
use crate::synth::{self, SlideConfig, SynthConfig, SynthFormat, SynthSummary};

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
    /// Number of cores: one cancer (CA) and one adjacent-tissue (AT) core per patient, so even
    /// [default: 16; with --slide, as many as the present positions need].
    #[arg(long)]
    pub cores: Option<u32>,
    /// Image side in pixels (with --slide: the side of each core's image).
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
    /// Whole TMA slides instead of one image per core: ROWSxCOLS grid positions per slide (rows
    /// lettered A, B, … from the top, columns numbered from the left; e.g. 5x4). Samples are
    /// `<slide>/<position>` (S1/B3); truth/slide_<slide>.json maps positions to boxes.
    #[arg(long, value_name = "ROWSxCOLS", value_parser = parse_grid)]
    pub slide: Option<(u32, u32)>,
    /// With --slide: number of slides, filled with cores in order.
    #[arg(long, default_value_t = 1, requires = "slide")]
    pub slides: u32,
    /// With --slide: fraction of the positions of each slide left empty (seeded choice).
    #[arg(long, default_value_t = 0.1, requires = "slide")]
    pub missing: f64,
    /// With --slide: fraction of the cores torn into 2–3 pieces with a gap.
    #[arg(long, default_value_t = 0.1, requires = "slide")]
    pub torn: f64,
    /// With --slide: largest offset of a core from its grid point, as a fraction of the pitch.
    #[arg(long, default_value_t = 0.05, requires = "slide")]
    pub jitter: f64,
    /// With --slide: grid pitch as a multiple of --size.
    #[arg(long, default_value_t = 1.4, requires = "slide")]
    pub pitch: f64,
    /// With --slide: rotation of the whole grid in degrees [default: seeded per slide, within ±3°].
    #[arg(long, value_name = "DEG", requires = "slide", allow_negative_numbers = true)]
    pub rotation: Option<f64>,
}

/// `ROWSxCOLS`, e.g. `5x4`.
fn parse_grid(s: &str) -> Result<(u32, u32), String> {
    let (r, c) = s.split_once(['x', 'X']).ok_or_else(|| format!("expected ROWSxCOLS such as 5x4, got {s:?}"))?;
    let n =
        |v: &str| v.trim().parse::<u32>().ok().filter(|&n| n > 0).ok_or_else(|| format!("{v:?} in {s:?} is not a positive whole number"));
    Ok((n(r)?, n(c)?))
}

impl SynthArgs {
    pub(super) fn config(&self) -> anyhow::Result<SynthConfig> {
        let slide = self.slide.map(|(rows, cols)| SlideConfig {
            rows,
            cols,
            slides: self.slides,
            missing: self.missing,
            torn: self.torn,
            jitter: self.jitter,
            pitch: self.pitch,
            rotation: self.rotation,
            block_rows: 0,
        });
        let cores = match (self.cores, &slide) {
            (Some(c), _) => c,
            (None, Some(sc)) => 2 * sc.patients_needed(),
            (None, None) => 16,
        };
        anyhow::ensure!(
            cores >= 2 && cores.is_multiple_of(2),
            "--cores must be an even number ≥ 2 (each patient has one CA and one AT core), got {cores}"
        );
        let mut cfg = SynthConfig {
            patients: cores / 2,
            slide,
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
    // Cores, or with slides, blocks of rows or tiles; the generator says how many.
    let what = if cfg.slide.is_some() { "slide blocks" } else { "cores" };
    let progress: OnceLock<Progress> = OnceLock::new();
    let summary = synth::generate(cfg, out, &|done, total| progress.get_or_init(|| Progress::new(what, total as u64)).set(done as u64, ""))
        .with_context(|| format!("cannot write the synthetic archive to {}", out.display()))?;
    if let Some(p) = progress.get() {
        p.finish();
    }
    let slides = cfg.slide.as_ref().map(|s| format!(" on {} slide(s)", s.slides)).unwrap_or_default();
    println!(
        "synthesized {} cores{slides} ({} spectra, {:.1} MB) into {} in {:.1} s",
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
