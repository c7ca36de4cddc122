//! Helpers shared by the bench binaries that drive the real `ftirflow` executable (`engine`,
//! `pipeline`).
use std::process::Command;

/// The `ftirflow` binary of this build.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ftirflow"))
}

/// Runs `c` and panics with its output unless it succeeds.
pub fn ok(c: &mut Command) {
    let o = c.output().expect("ftirflow runs");
    assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
}

/// The value after the command-line flag `name`, or `default`.
pub fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned()).unwrap_or_else(|| default.to_string())
}
