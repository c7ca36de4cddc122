//! Progress reporting: an indicatif bar on a terminal, plain periodic log lines otherwise (cron).
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::convert::ImageProgress;
use crate::run::RunProgress;
use crate::train::EpochProgress;

/// Progress over a known number of units (images, cores, files).
pub struct Progress {
    bar: Option<ProgressBar>,
    what: String,
    total: u64,
    start: Instant,
    last_log: Mutex<Instant>,
}

impl Progress {
    /// Starts reporting `total` units named `what` (e.g. "images").
    pub fn new(what: impl Into<String>, total: u64) -> Self {
        let what = what.into();
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} (eta {eta})")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(what.clone());
            bar
        });
        Self { bar, what, total, start: Instant::now(), last_log: Mutex::new(Instant::now()) }
    }

    /// Reports that `done` units are finished, with a short message (e.g. throughput).
    pub fn set(&self, done: u64, msg: &str) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            bar.set_message(msg.to_string());
            return;
        }
        let mut last = self.last_log.lock().expect("progress lock");
        if last.elapsed() >= Duration::from_secs(10) || done == self.total {
            *last = Instant::now();
            tracing::info!("{}: {done}/{} {msg} ({:.0?} elapsed)", self.what, self.total, self.start.elapsed());
        }
    }

    /// Ends the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// A reporter for `run`: one bar over this process's images, with spectra and throughput.
pub fn run_reporter() -> impl Fn(RunProgress) + Sync {
    let bar: Mutex<Option<Progress>> = Mutex::new(None);
    move |p: RunProgress| {
        let Ok(mut bar) = bar.lock() else { return };
        let progress = bar.get_or_insert_with(|| Progress::new("images", p.images));
        let rate = p.spectra as f64 / p.seconds.max(1e-3);
        progress.set(p.images_done, &format!("{} spectra, {rate:.0} spectra/s", p.spectra));
        if p.finished {
            progress.finish();
        }
    }
}

/// A reporter for jobs that walk images (`convert`, `preprocess`): one bar per pass.
pub fn image_reporter() -> impl Fn(ImageProgress) {
    let bar: Mutex<Option<(&'static str, Progress)>> = Mutex::new(None);
    move |p: ImageProgress| {
        let Ok(mut bar) = bar.lock() else { return };
        if bar.as_ref().is_none_or(|(pass, _)| *pass != p.pass) {
            if let Some((_, old)) = bar.take() {
                old.finish();
            }
            *bar = Some((p.pass, Progress::new(p.pass, p.total as u64)));
        }
        let (_, progress) = bar.as_ref().expect("set above");
        progress.set(p.done as u64, p.current);
        if p.done == p.total {
            progress.finish();
        }
    }
}

/// A reporter for `train`: one bar per model's epochs, with loss and accuracy.
pub fn epoch_reporter() -> impl Fn(&EpochProgress) {
    let bar: Mutex<Option<(String, Progress)>> = Mutex::new(None);
    move |p: &EpochProgress| {
        let Ok(mut bar) = bar.lock() else { return };
        if bar.as_ref().is_none_or(|(model, _)| model != p.model) {
            *bar = Some((p.model.to_string(), Progress::new(format!("{} epochs", p.model), p.epochs as u64)));
        }
        let (_, progress) = bar.as_ref().expect("set above");
        progress.set(p.epoch as u64, &format!("loss {:.4} acc {:.3}", p.loss, p.accuracy));
        if p.epoch == p.epochs {
            progress.finish();
        }
    }
}
