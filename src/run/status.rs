//! What a monitor reads after every `ftirflow run` (docs/outputs.md, Monitoring): `status.json`,
//! written at the end of each run whether it succeeded or failed, and, when asked for, the same
//! facts as Prometheus text-exposition metrics for node_exporter's textfile collector.
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The status file's name in the output directory.
pub const STATUS: &str = "status.json";

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Everything was processed (exit code 0).
    Ok,
    /// The run finished, but some inputs were rejected (exit code 1).
    Rejects,
    /// Nothing useful ran, or the run stopped (exit code 2); `error` says why.
    Failed,
}

impl State {
    /// The process exit code of this state (README.md, Exit codes).
    pub fn exit_code(self) -> u8 {
        match self {
            State::Ok => 0,
            State::Rejects => 1,
            State::Failed => 2,
        }
    }
}

/// The counts of a run that got as far as its outputs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Images in the archive.
    pub images: usize,
    /// Images de-arrayed into the cores of a slide.
    pub slides: usize,
    /// Units of work processed by this run.
    pub processed: usize,
    /// Units reused from earlier runs.
    pub reused: usize,
    /// Rejected inputs.
    pub rejected: usize,
    /// Cores in the outputs.
    pub cores: usize,
    /// Spectra in the outputs.
    pub spectra: u64,
}

/// `status.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// This run's id (see [`new_run_id`]); also in every table it wrote.
    pub run_id: String,
    /// `ok`, `rejects` or `failed`.
    pub state: State,
    /// The process's exit code (0, 1, 2).
    pub exit_code: u8,
    /// Why the run failed (`failed` only).
    pub error: Option<String>,
    /// Start, RFC 3339 UTC.
    pub started: String,
    /// End, RFC 3339 UTC.
    pub ended: String,
    /// Wall time, seconds.
    pub seconds: f64,
    /// End of the last run in this output directory that finished (`ok` or `rejects`; this run
    /// when it did), RFC 3339 UTC; absent when none has.
    pub last_success: Option<String>,
    /// The same as seconds since the Unix epoch.
    pub last_success_unix: Option<f64>,
    /// Counts; absent when the run failed before its outputs.
    pub counts: Option<Counts>,
    /// ftirflow's version.
    pub ftirflow_version: String,
    /// libtorch's version.
    pub libtorch: String,
    /// The models' weight hashes (type, `+` subtype); absent when they could not be read.
    pub model_hash: Option<String>,
    /// The archive and the output directory, as given.
    pub archive: String,
    /// The output directory, as given.
    pub out: String,
    /// The start as seconds since the Unix epoch.
    pub started_unix: f64,
    /// The end as seconds since the Unix epoch.
    pub ended_unix: f64,
}

impl Status {
    /// The status of a run of `run_id` that started at `started` and ends now, in `state`;
    /// `previous` (the directory's last status) carries the last success forward.
    pub fn new(run_id: &str, started: SystemTime, state: State, previous: Option<&Status>) -> Self {
        let ended = SystemTime::now();
        let (started_unix, ended_unix) = (unix(started), unix(ended));
        let (last_success, last_success_unix) = if state == State::Failed {
            previous.map_or((None, None), |p| (p.last_success.clone(), p.last_success_unix))
        } else {
            (Some(rfc3339(ended)), Some(ended_unix))
        };
        Status {
            run_id: run_id.to_string(),
            state,
            exit_code: state.exit_code(),
            error: None,
            started: rfc3339(started),
            ended: rfc3339(ended),
            seconds: (ended_unix - started_unix).max(0.0),
            last_success,
            last_success_unix,
            counts: None,
            ftirflow_version: env!("CARGO_PKG_VERSION").to_string(),
            libtorch: crate::bundle::LIBTORCH_VERSION.to_string(),
            model_hash: None,
            archive: String::new(),
            out: String::new(),
            started_unix,
            ended_unix,
        }
    }

    /// The status recorded in `out`, if it holds a readable one.
    pub fn load(out: &Path) -> Option<Status> {
        serde_json::from_slice(&std::fs::read(out.join(STATUS)).ok()?).ok()
    }

    /// Writes `OUT_DIR/status.json` atomically.
    pub fn store(&self, out: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        crate::io::atomic::write_atomic(&out.join(STATUS), text.as_bytes())
    }

    /// The Prometheus text exposition of this status (one gauge per fact, `ftirflow_` prefix).
    pub fn metrics(&self) -> String {
        let mut m = Metrics(String::new());
        m.gauge("ftirflow_last_run_timestamp_seconds", "End of the last run, seconds since the Unix epoch.", &[], self.ended_unix);
        m.gauge(
            "ftirflow_last_run_start_timestamp_seconds",
            "Start of the last run, seconds since the Unix epoch.",
            &[],
            self.started_unix,
        );
        if let Some(t) = self.last_success_unix {
            m.gauge(
                "ftirflow_last_success_timestamp_seconds",
                "End of the last run that finished (exit code 0 or 1), seconds since the Unix epoch.",
                &[],
                t,
            );
        }
        m.gauge("ftirflow_last_run_duration_seconds", "Wall time of the last run.", &[], self.seconds);
        m.gauge(
            "ftirflow_last_run_exit_code",
            "Exit code of the last run: 0 ok, 1 finished with rejected inputs, 2 failed.",
            &[],
            f64::from(self.exit_code),
        );
        let state = match self.state {
            State::Ok => "ok",
            State::Rejects => "rejects",
            State::Failed => "failed",
        };
        m.gauge(
            "ftirflow_last_run_info",
            "The last run's id, state and versions (value 1).",
            &[("run_id", &self.run_id), ("state", state), ("version", &self.ftirflow_version), ("libtorch", &self.libtorch)],
            1.0,
        );
        if let Some(c) = &self.counts {
            let help = "Units of work (whole images or cores of slides) of the last run, by outcome.";
            let name = "ftirflow_last_run_units";
            m.header(name, help);
            for (outcome, n) in [("processed", c.processed), ("reused", c.reused)] {
                m.sample(name, &[("outcome", outcome)], n as f64);
            }
            m.gauge("ftirflow_last_run_rejected", "Inputs rejected by the last run (listed in rejects.parquet).", &[], c.rejected as f64);
            m.gauge("ftirflow_last_run_images", "Images in the archive of the last run.", &[], c.images as f64);
            m.gauge("ftirflow_last_run_cores", "Cores in the outputs of the last run.", &[], c.cores as f64);
            m.gauge("ftirflow_last_run_spectra", "Spectra in the outputs of the last run.", &[], c.spectra as f64);
        }
        m.0
    }
}

/// Writes the metrics of `status` to `path` atomically (the textfile collector reads `*.prom`;
/// the temporary `*.prom.partial` is not read).
pub fn write_metrics(path: &Path, status: &Status) -> std::io::Result<()> {
    crate::io::atomic::write_atomic(path, status.metrics().as_bytes())
}

/// Text exposition format 0.0.4, gauges only.
struct Metrics(String);

impl Metrics {
    fn header(&mut self, name: &str, help: &str) {
        self.0.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape_label(v))).collect();
        let labels = if labels.is_empty() { String::new() } else { format!("{{{}}}", labels.join(",")) };
        self.0.push_str(&format!("{name}{labels} {value}\n"));
    }

    fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.header(name, help);
        self.sample(name, labels, value);
    }
}

/// A label value with `\`, `"` and newlines escaped as the exposition format wants.
fn escape_label(v: &str) -> String {
    v.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

/// A run id: the UTC start to the millisecond, then the process id in hex — `20261204T102308.123Z-00001a2b`.
/// Ids sort by start time, and two runs started in the same millisecond on one host differ.
pub fn new_run_id(start: SystemTime) -> String {
    let text = rfc3339(start);
    // 2026-12-04T10:23:08.123Z → 20261204T102308.123Z
    format!("{}-{:08x}", text.replace(['-', ':'], ""), std::process::id())
}

/// Seconds since the Unix epoch.
fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// `t` as RFC 3339 in UTC with milliseconds: `2026-12-04T10:23:08.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem / 60 % 60, rem % 60, d.subsec_millis())
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates_match_known_calendar_days() {
        // Independent anchors: the epoch, a leap day, the 2038 boundary, and a date from `date -u -d @1796376188.5`.
        let at = |s: u64, ms: u64| rfc3339(UNIX_EPOCH + Duration::from_millis(s * 1000 + ms));
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 0), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(2_147_483_647, 999), "2038-01-19T03:14:07.999Z");
        assert_eq!(at(1_796_376_188, 500), "2026-12-04T09:23:08.500Z");
        // Every day of four years round-trips through the day count.
        let mut last = (1969, 12, 31);
        for day in 0..(3 * 365 + 366) {
            let d = civil_from_days(day);
            assert!(d > last, "{d:?} after {last:?}");
            last = d;
        }
        assert_eq!(last, (1973, 12, 31));
    }

    #[test]
    fn run_ids_sort_by_start() {
        let a = new_run_id(UNIX_EPOCH + Duration::from_secs(1_796_376_188));
        let b = new_run_id(UNIX_EPOCH + Duration::from_secs(1_796_376_188) + Duration::from_millis(1));
        assert_eq!(a, format!("20261204T092308.000Z-{:08x}", std::process::id()));
        assert!(a < b);
    }

    #[test]
    fn a_failed_run_keeps_the_last_success_and_metrics_escape_labels() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000);
        let ok = Status::new("r1", t0, State::Ok, None);
        assert_eq!(ok.last_success.as_deref(), Some(ok.ended.as_str()));
        let failed = Status::new("r2", t0, State::Failed, Some(&ok));
        assert_eq!(failed.exit_code, 2);
        assert_eq!(failed.last_success_unix, ok.last_success_unix);
        assert!(Status::new("r3", t0, State::Failed, None).last_success.is_none());
        let mut odd = failed.clone();
        odd.run_id = "a\"b\\c\nd".into();
        assert!(odd.metrics().contains(r#"run_id="a\"b\\c\nd""#), "{}", odd.metrics());
    }
}
