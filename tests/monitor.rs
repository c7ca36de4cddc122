//! What a nightly scheduler and its monitor see of `ftirflow run`: `status.json` and the
//! Prometheus metrics file after a successful run, a run with rejects, runs that failed (bad
//! model, a configuration file that cannot be used, an output that cannot be written after the
//! run started), and a cluster run whose peer never starts, which must end, not hang.
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::run::{bin, fixture, free_port, run, text};

fn status(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("status.json")).expect("status.json is written")).unwrap()
}

/// The metrics file's samples as `name{labels} value` through Python's `prometheus_client`
/// parser; `None` (with a message) when it is not installed.
fn parse_metrics(path: &Path) -> Option<Vec<(String, String, f64)>> {
    let probe = Command::new("python3").args(["-c", "import prometheus_client"]).output().ok()?;
    if !probe.status.success() {
        eprintln!("skipped: python3 has no prometheus_client to parse the metrics with (CI installs it)");
        return None;
    }
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(open(sys.argv[1]).read()):
    assert family.type == "gauge", family
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        print(f"{s.name}\t{labels}\t{s.value!r}")
"#;
    let o = Command::new("python3").args(["-c", script]).arg(path).output().unwrap();
    assert!(o.status.success(), "the metrics do not parse: {}", String::from_utf8_lossy(&o.stderr));
    Some(
        String::from_utf8(o.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                (f[0].to_string(), f[1].to_string(), f[2].parse().unwrap())
            })
            .collect(),
    )
}

fn value(samples: &[(String, String, f64)], name: &str) -> Option<f64> {
    samples.iter().find(|(n, _, _)| n == name).map(|s| s.2)
}

/// The `ftirflow:run_id` key-value entry of a Parquet file.
fn run_id_of(path: &Path) -> String {
    let reader = parquet::file::reader::SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    use parquet::file::reader::FileReader;
    let kv = reader.metadata().file_metadata().key_value_metadata().cloned().unwrap_or_default();
    kv.into_iter().find(|e| e.key == "ftirflow:run_id").and_then(|e| e.value).expect("ftirflow:run_id in the metadata")
}

#[test]
fn status_and_metrics_record_successful_rejected_and_failed_runs() {
    let f = fixture();
    let out = f.root.join("status_ok");
    let prom = f.root.join("status_ok.prom");
    let prom_arg = prom.to_str().unwrap();

    // A successful run.
    let o = run(&f.root, &out, &["--metrics-file", prom_arg]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let ok = status(&out);
    assert_eq!(ok["state"], "ok");
    assert_eq!(ok["exit_code"], 0);
    assert!(ok["error"].is_null());
    assert_eq!(ok["counts"]["cores"], 8);
    assert_eq!(ok["counts"]["processed"], 8);
    assert!(ok["model_hash"].as_str().unwrap().contains('+'), "both models' hashes");
    let (started, ended) = (ok["started"].as_str().unwrap(), ok["ended"].as_str().unwrap());
    assert!(started.ends_with('Z') && started.len() == 24 && started <= ended, "{started} .. {ended}");
    assert_eq!(ok["last_success"], ok["ended"]);
    let run_id = ok["run_id"].as_str().unwrap().to_string();
    assert_eq!(run_id_of(&out.join("cores.parquet")), run_id, "the tables carry the run's id");
    let run_json: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(run_json["run_id"], run_id.as_str());
    if let Some(m) = parse_metrics(&prom) {
        assert_eq!(value(&m, "ftirflow_last_run_exit_code"), Some(0.0));
        assert_eq!(value(&m, "ftirflow_last_run_spectra"), ok["counts"]["spectra"].as_f64());
        assert_eq!(value(&m, "ftirflow_last_success_timestamp_seconds"), value(&m, "ftirflow_last_run_timestamp_seconds"));
        let units: Vec<_> = m.iter().filter(|s| s.0 == "ftirflow_last_run_units").map(|s| (s.1.as_str(), s.2)).collect();
        assert_eq!(units, [("outcome=processed", 8.0), ("outcome=reused", 0.0)]);
        let info = m.iter().find(|s| s.0 == "ftirflow_last_run_info").unwrap();
        assert!(info.1.contains(&format!("run_id={run_id}")) && info.1.contains("state=ok"), "{info:?}");
    }

    // A rerun with the same models reuses everything, under a new id that sorts after.
    let o = run(&f.root, &out, &["--metrics-file", prom_arg]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let again = status(&out);
    assert_eq!(again["counts"]["reused"], 8);
    assert!(again["run_id"].as_str().unwrap() > run_id.as_str(), "run ids sort by start");

    // A failed run (the model does not exist) in the same directory keeps the last success.
    let o = bin()
        .args(["run", "--model", "no_such_model", "arch/images", "--metrics-file", prom_arg, "--out"])
        .arg(&out)
        .current_dir(&f.root)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let failed = status(&out);
    assert_eq!(failed["state"], "failed");
    assert_eq!(failed["exit_code"], 2);
    assert!(failed["error"].as_str().unwrap().contains("no_such_model"), "{failed}");
    assert!(failed["counts"].is_null());
    assert_eq!(failed["last_success"], again["ended"], "a failure keeps the last success");
    if let Some(m) = parse_metrics(&prom) {
        assert_eq!(value(&m, "ftirflow_last_run_exit_code"), Some(2.0));
        assert_eq!(value(&m, "ftirflow_last_success_timestamp_seconds"), again["ended_unix"].as_f64());
        assert!(value(&m, "ftirflow_last_run_timestamp_seconds") > value(&m, "ftirflow_last_success_timestamp_seconds"));
        assert_eq!(value(&m, "ftirflow_last_run_spectra"), None, "no counts for a failed run");
    }

    // A configuration file that cannot be used.
    let cfg = f.root.join("status_bad.toml");
    std::fs::write(&cfg, "[run]\nworkerz = 2\n").unwrap();
    let o = run(&f.root, &out, &["--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let bad_cfg = status(&out);
    assert_eq!(bad_cfg["state"], "failed");
    assert!(bad_cfg["error"].as_str().unwrap().contains("workerz"), "{bad_cfg}");

    // A run whose tables cannot be written after every image was processed.
    let out = f.root.join("status_unwritable");
    std::fs::create_dir_all(out.join("cores.parquet")).unwrap();
    let o = run(&f.root, &out, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let st = status(&out);
    assert_eq!(st["state"], "failed");
    assert!(st["error"].as_str().unwrap().contains("cannot write the tables"), "{st}");
    assert!(st["last_success"].is_null());

    // A run with a rejected image.
    let arch = f.root.join("status_rejects/images");
    std::fs::create_dir_all(&arch).unwrap();
    for s in ["P02_CA", "P02_AT"] {
        for ext in ["hdr", "img"] {
            std::fs::copy(f.root.join(format!("arch/images/{s}.{ext}")), arch.join(format!("{s}.{ext}"))).unwrap();
        }
    }
    std::fs::write(arch.join("P02_AT.img"), b"short").unwrap();
    let out = f.root.join("status_rejects_out");
    let o = bin()
        .args(["run", "--model", "type_model", "status_rejects/images", "--metrics-file", prom_arg, "--out"])
        .arg(&out)
        .current_dir(&f.root)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let st = status(&out);
    assert_eq!(st["state"], "rejects");
    assert_eq!(st["exit_code"], 1);
    assert_eq!(st["counts"]["rejected"], 1);
    assert_eq!(st["last_success"], st["ended"], "a run with rejects finished");
    if let Some(m) = parse_metrics(&prom) {
        assert_eq!(value(&m, "ftirflow_last_run_exit_code"), Some(1.0));
        assert_eq!(value(&m, "ftirflow_last_run_rejected"), Some(1.0));
    }
}

#[test]
fn a_cluster_peer_that_never_starts_ends_the_run_naming_it() {
    let f = fixture();
    let ports = [free_port(), free_port()];
    let hosts = f.root.join("hosts_lonely.txt");
    std::fs::write(&hosts, format!("127.0.0.1:{}\n127.0.0.1:{}\n", ports[0], ports[1])).unwrap();
    // Process 0 waits for process 1 to connect; process 1 (alone, another time) dials process 0.
    for (me, other) in [(0usize, 1usize), (1, 0)] {
        let out = f.root.join(format!("lonely{me}"));
        let mut child = bin()
            .args(["run", "--model", "type_model", "arch/images", "--out"])
            .arg(&out)
            .args(["--processes", "2", "--process", &me.to_string(), "--connect-timeout", "2", "--hostfile"])
            .arg(&hosts)
            .current_dir(&f.root)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > Duration::from_secs(180) {
                child.kill().unwrap();
                panic!("process {me} still waits for its peer after 180 s with --connect-timeout 2");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        let peer = format!("process {other} (127.0.0.1:{})", ports[other]);
        assert!(text(&o).contains(&peer) && text(&o).contains("--connect-timeout"), "names {peer}: {}", text(&o));
        if me == 0 {
            assert_eq!(status(&out)["state"], "failed", "process 0 records the failure");
        }
    }
}
