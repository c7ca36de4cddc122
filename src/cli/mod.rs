//! The `ftirflow` command line (README.md, Commands): argument parsing with clap, logging, progress
//! bars and the exit codes (0 everything processed, 1 finished with rejected inputs, 2 nothing
//! useful ran). Each command parses its arguments, calls one job of the library, prints what it
//! did and maps its error to an exit code; only `main.rs` uses this module.
mod convert;
mod demo;
mod inspect;
mod preprocess;
mod progress;
mod report;
mod run;
mod synth;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::reject::Reject;

/// Exit status of a command that ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything was processed.
    Complete,
    /// The command finished, but some inputs were rejected.
    SomeRejected,
}

impl Outcome {
    /// `SomeRejected` when there are rejects, else `Complete`.
    fn of(rejects: &[Reject]) -> Self {
        if rejects.is_empty() {
            Outcome::Complete
        } else {
            Outcome::SomeRejected
        }
    }
}

/// Prints each reject as `rejected: PATH: [stage] reason` on stderr.
fn print_rejects(rejects: &[Reject]) {
    for r in rejects {
        eprintln!("rejected: {r}");
    }
}

/// The one-line message of an error and its causes, each cause once: library errors already
/// include their cause in their message, so a cause whose text is already there is skipped.
fn message(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// Exit code for a run that could not do anything useful (bad config, unwritable output, …).
pub const EXIT_FATAL: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "ftirflow",
    version,
    about = "Streaming engine for micro-FTIR hyperspectral breast-tissue archives (CaReNet-V1)",
    long_about = "ftirflow turns archives of micro-FTIR hyperspectral images of breast tissue (TMA cores \
                  in paraffin) into spectra tables, and — as the engine grows — into per-spectrum and \
                  per-core predictions with Grad-CAM explanations.\n\n\
                  Exit codes: 0 everything processed; 1 finished, but some inputs were rejected; \
                  2 nothing useful could run (bad arguments, unwritable output).\n\
                  Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=ftirflow=debug) for more."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The whole story on a built-in synthetic archive: synthesize, train briefly, run the nightly pipeline.
    Demo(demo::DemoArgs),
    /// Generate a synthetic TMA archive (images, labels.csv, ground-truth masks, planted bands).
    Synth(synth::SynthArgs),
    /// Convert readable images (ENVI, Agilent tile/mosaic, Parquet, Orange CSV) to one spectra Parquet file.
    Convert(convert::ConvertArgs),
    /// Run the preprocessing chain (segment, outliers, EMSC, resample, normalize) into a spectra Parquet file.
    Preprocess(preprocess::PreprocessArgs),
    /// Train CaReNet-V1 (patient-grouped cross-validation + final model) into a model bundle.
    Train(train::TrainArgs),
    /// The nightly pipeline: preprocess, classify (type, then subtype) with Grad-CAM, write
    /// predictions, per-core and per-class tables; reruns process only new or changed images.
    Run(run::RunArgs),
    /// Write OUT_DIR/report/ (figures and index.html) for a run directory or a model bundle.
    #[command(long_about = report::LONG_ABOUT)]
    Report(report::ReportArgs),
    /// Show what a reader sees in a file (format, size, axis, values) and optionally write a
    /// chemical-image PNG.
    #[command(long_about = inspect::LONG_ABOUT)]
    Inspect(inspect::InspectArgs),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    init_logging();
    // `--version` says more than clap's fixed string: libtorch, and CUDA compiled in and visible.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.len() == 2 && (args[1] == "--version" || args[1] == "-V") {
        println!("{}", crate::torch_check::version_text());
        return ExitCode::SUCCESS;
    }
    let cli = Cli::parse_from(args);
    let result = match cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Synth(a) => synth::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Preprocess(a) => preprocess::run(a),
        Command::Train(a) => train::run(a),
        Command::Run(a) => run::run(a),
        Command::Report(a) => report::run(a),
        Command::Inspect(a) => inspect::run(a),
    };
    match result {
        Ok(Outcome::Complete) => ExitCode::SUCCESS,
        Ok(Outcome::SomeRejected) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {}", message(&e));
            ExitCode::from(EXIT_FATAL)
        }
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("ftirflow=info,warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .compact()
        .try_init();
}

/// Default output directory of `ftirflow demo`.
pub fn default_demo_dir() -> PathBuf {
    PathBuf::from("ftirflow-demo")
}
