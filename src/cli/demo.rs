//! `ftirflow demo`: the built-in default job, the whole story on the embedded default — synthesize
//! the default archive, train a type and a subtype model briefly, run the nightly pipeline on two
//! workers, write its report, and print where the outputs are.
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::{print_rejects, Outcome};
use crate::config::Config;
use crate::run::{run as run_job, RunOptions};
use crate::synth::SynthConfig;
use crate::train::{self, Input, Task};

#[derive(Debug, Args)]
pub(super) struct DemoArgs {
    /// Output directory (archive in OUT/archive, models in OUT/model_type and OUT/model_subtype,
    /// run outputs in OUT/run).
    #[arg(long, default_value_os_t = super::default_demo_dir())]
    out: PathBuf,
}

pub(super) fn run(args: DemoArgs) -> anyhow::Result<Outcome> {
    let synth = SynthConfig::default();
    let archive = args.out.join("archive");
    let images = archive.join("images");
    let labels = archive.join("labels.csv");
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let torch = crate::torch_check::check();
    println!("libtorch linked: inference device {} ({} CUDA device(s) visible)", torch.device, torch.cuda_devices);

    println!(
        "1/4 synthesizing the default archive ({} patients × 2 cores of {}×{} px) into {}",
        synth.patients,
        synth.size,
        synth.size,
        archive.display()
    );
    super::synth::generate(&synth, &archive)?;

    // Brief training: enough to show the whole story in a few minutes on 2 cores (the full
    // method is `ftirflow train` with the defaults of examples/ftirflow.toml).
    let mut cfg = Config::default();
    cfg.train.epochs = 4;
    cfg.train.folds = 0;
    cfg.train.spectra_per_epoch = 2000;
    cfg.train.spectra_per_core = 500;
    let mut models = Vec::new();
    for (step, task, name) in [(2, Task::Type, "type"), (3, Task::Subtype, "subtype")] {
        let out = args.out.join(format!("model_{name}"));
        println!("{step}/4 training the {name} model briefly ({} epochs) into {}", cfg.train.epochs, out.display());
        let input = Input::Archive { dir: images.clone(), labels: labels.clone(), task };
        let report =
            train::train(&cfg, &input, &out, &super::progress::epoch_reporter()).with_context(|| format!("training the {name} model"))?;
        println!("    trained on {} spectra in {:.1} s", report.final_spectra, report.seconds);
        models.push(out);
    }

    let out = args.out.join("run");
    println!("4/4 running the nightly pipeline on 2 workers into {}", out.display());
    let mut run_cfg = Config::default();
    run_cfg.run.workers = 2;
    let opts = RunOptions {
        config: run_cfg,
        model: models[0].clone(),
        subtype_model: Some(models[1].clone()),
        archive: images.clone(),
        labels: Some(labels.clone()),
        out: out.clone(),
        processes: 1,
        process: 0,
        hostfile: None,
        run_id: None,
    };
    let s = run_job(&opts, &super::progress::run_reporter())?;
    print_rejects(&s.rejects);
    println!(
        "demo: {} cores, {} spectra classified with Grad-CAM in {:.1} s ({} processed, {} reused, {} rejected)",
        s.cores,
        s.spectra,
        s.seconds,
        s.processed,
        s.reused,
        s.rejects.len()
    );
    println!("outputs: {}/{{predictions/, cores.parquet, gradcam.parquet, bands.parquet, rejects.parquet, run.json}}", out.display());
    super::report::after_command(&out);
    println!("models:  {} and {}", models[0].display(), models[1].display());
    println!("archive: {} (labels {}, ground truth {})", images.display(), labels.display(), archive.join("truth").display());
    Ok(Outcome::of(&s.rejects))
}
