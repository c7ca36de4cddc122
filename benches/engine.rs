//! End-to-end scaling of `ftirflow run` (the real binary): one synthetic archive, briefly trained
//! models, then the nightly pipeline with Grad-CAM on 1 worker, 2 workers and 2 processes × 1
//! worker (TCP on localhost), measured in the same run. Prints spectra/s and the ratio to one
//! worker. Not criterion: each measurement is a whole run of several seconds.
//!
//! `cargo bench --bench engine [-- --size PX --patients N]` (defaults: 64 px, 8 patients).
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

mod support;
use support::{arg, bin, ok};

fn spectra(out: &Path) -> f64 {
    let run: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("run.json")).unwrap()).unwrap();
    run["counts"]["spectra"].as_f64().unwrap()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists benches; nothing to list here
    }
    let (size, patients) = (arg("--size", "64"), arg("--patients", "8"));
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cores = (patients.parse::<u32>().unwrap() * 2).to_string();
    ok(bin().args(["synth", "--out", "arch", "--cores", &cores, "--size", &size]).current_dir(root));
    for (task, out) in [("type", "type_model"), ("subtype", "sub_model")] {
        ok(bin()
            .args(["train", "--task", task, "--labels", "arch/labels.csv", "--epochs", "1", "--folds", "0"])
            .args(["--spectra-per-epoch", "250", "arch/images", "--out", out])
            .current_dir(root));
    }
    // Timed: process start to tables written, so the report (written after them) is switched off.
    std::fs::write(root.join("noreport.toml"), "[report]\nenabled = false\n").unwrap();
    let run = |out: &str, extra: &[&str]| {
        bin()
            .args([
                "run",
                "--config",
                "noreport.toml",
                "--model",
                "type_model",
                "--subtype-model",
                "sub_model",
                "arch/images",
                "--out",
                out,
            ])
            .args(extra)
            .current_dir(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut rows = Vec::new();
    for (label, workers) in [("1 worker", "1"), ("2 workers", "2")] {
        let out = format!("out_{workers}");
        let t = Instant::now();
        let status = run(&out, &["--workers", workers]).wait().unwrap();
        assert!(status.success());
        rows.push((label.to_string(), t.elapsed().as_secs_f64(), spectra(&root.join(&out))));
    }
    let port = |_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(root.join("hosts"), format!("127.0.0.1:{}\n127.0.0.1:{}\n", port(0), port(1))).unwrap();
    let t = Instant::now();
    let p: Vec<_> =
        ["0", "1"].iter().map(|i| run("out_p2", &["--workers", "1", "--processes", "2", "--process", i, "--hostfile", "hosts"])).collect();
    for mut c in p {
        assert!(c.wait().unwrap().success());
    }
    rows.push(("2 processes × 1 worker".to_string(), t.elapsed().as_secs_f64(), spectra(&root.join("out_p2"))));
    let base = rows[0].2 / rows[0].1;
    println!("ftirflow run, {cores} cores of {size}×{size} px, Grad-CAM on, end to end (process start to tables written):");
    println!("| layout | seconds | spectra/s | vs 1 worker |");
    println!("|---|---|---|---|");
    for (label, secs, n) in rows {
        println!("| {label} | {secs:.1} | {:.0} | {:.2}× |", n / secs, n / secs / base);
    }
}
