//! Progress reporting: an indicatif bar on a terminal, plain periodic log lines otherwise (cron).
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

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

/// Reports a run's counters (images done, spectra/s, ETA) until `done` is set: a bar on a
/// terminal, a log line every 10 s otherwise.
pub fn spawn_reporter(
    what: &'static str,
    total: u64,
    counters: std::sync::Arc<crate::run::Counters>,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    use std::sync::atomic::Ordering;
    std::thread::spawn(move || {
        let progress = Progress::new(what, total);
        let start = Instant::now();
        loop {
            let finished = done.load(Ordering::Relaxed);
            let images = counters.images.load(Ordering::Relaxed);
            let spectra = counters.spectra.load(Ordering::Relaxed);
            let rate = spectra as f64 / start.elapsed().as_secs_f64().max(1e-3);
            progress.set(images.min(total), &format!("{spectra} spectra, {rate:.0} spectra/s"));
            if finished {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        progress.finish();
    })
}
