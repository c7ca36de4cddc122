//! The `ftirflow` command line (DESIGN.md §7).
fn main() -> std::process::ExitCode {
    ftirflow::cli::main()
}
