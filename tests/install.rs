//! What a facility installs besides the binary: the systemd units in `examples/systemd/` pass
//! `systemd-analyze verify` with no warning (skipped, with a message, where it is not
//! installed), and the command line they start is one `ftirflow run` accepts. (The release
//! tarball itself is checked by `scripts/test-package.sh`, which CI runs.)
use std::path::Path;
use std::process::Command;

use crate::run::{bin, text};

const UNITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/systemd");
const INSTALLED: &str = "/opt/ftirflow/bin/ftirflow";

/// The service's `ExecStart=` with its continuation lines joined, split into words.
fn exec_start(service: &str) -> Vec<String> {
    let joined = service.replace("\\\n", " ");
    let line = joined.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("an ExecStart= line");
    line.split_whitespace().map(str::to_string).collect()
}

#[test]
fn the_systemd_units_verify() {
    let service = std::fs::read_to_string(Path::new(UNITS).join("ftirflow-nightly.service")).unwrap();
    assert_eq!(exec_start(&service)[0], INSTALLED);
    assert!(service.contains("\nSuccessExitStatus=1\n"), "exit code 1 (rejects) is documented as success");
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("skipped: systemd-analyze is not installed; the units are not verified here");
        return;
    }
    // Verified as installed, with the binary path pointing at this build (verify checks that the
    // command exists and is executable).
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ftirflow-nightly.service"), service.replace(INSTALLED, env!("CARGO_BIN_EXE_ftirflow"))).unwrap();
    std::fs::copy(Path::new(UNITS).join("ftirflow-nightly.timer"), dir.path().join("ftirflow-nightly.timer")).unwrap();
    let o = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "ftirflow-nightly.service", "ftirflow-nightly.timer"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success() && o.stderr.is_empty() && o.stdout.is_empty(), "systemd-analyze verify: {}", text(&o));
}

#[test]
fn the_service_starts_a_command_line_that_run_accepts() {
    let service = std::fs::read_to_string(Path::new(UNITS).join("ftirflow-nightly.service")).unwrap();
    let args = exec_start(&service);
    // Its absolute paths moved under a temporary directory (the run records its failure in the
    // output directory), where they do not exist: the run fails on the configuration file, after
    // clap accepted every flag (an unknown flag would be a usage error naming it).
    let dir = tempfile::tempdir().unwrap();
    let moved = args[1..].iter().map(|a| match a.strip_prefix('/') {
        Some(rest) => dir.path().join(rest).into_os_string(),
        None => a.into(),
    });
    let o = bin().args(moved).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(!text(&o).contains("unexpected argument") && text(&o).contains("/etc/ftirflow/ftirflow.toml"), "{}", text(&o));
}
