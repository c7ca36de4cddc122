//! Progress reporting: an indicatif bar on a terminal, plain periodic log lines otherwise (cron).
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Progress over a known number of units (images, cores, files).
pub struct Progress {
    bar: Option<ProgressBar>,
    what: &'static str,
    total: u64,
    start: Instant,
    last_log: Mutex<Instant>,
}

impl Progress {
    /// Starts reporting `total` units named `what` (e.g. "images").
    pub fn new(what: &'static str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} (eta {eta})")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(what);
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
