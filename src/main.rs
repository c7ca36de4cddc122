//! The `ftirflow` command line (README.md, Commands).

// mimalloc keeps freed pages for reuse: batches of ~2 MB allocated per step then do not
// page-fault afresh (the preprocessing chain runs about a third faster than on glibc malloc).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    ftirflow::cli::main()
}
