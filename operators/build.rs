// Links the binaries, tests, examples and benches of a package to libtorch with an rpath
// (torch-sys, with `links = "tch"`, exports the library directory to direct dependents), so that no
// `LD_LIBRARY_PATH` is needed, and keeps `libtorch_cuda.so` linked in `cuda` builds
// (ARCHITECTURE.md, Dependencies: `--as-needed` drops it otherwise, and
// `Device::cuda_if_available()` then sees no GPU). The root package's `build.rs` includes this
// file, so both packages link alike.
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
            // The GPU machines carry torch (with all its CUDA libraries) here; searched after the
            // libtorch this build linked against, which needs only its CPU half present.
            println!("cargo:rustc-link-arg=-Wl,-rpath,/opt/torch/.venv/lib/python3.12/site-packages/torch/lib");
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg=-ltorch_cuda");
            println!("cargo:rustc-link-arg=-ltorch");
            println!("cargo:rustc-link-arg=-Wl,--as-needed");
        }
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    // `file!()` names this file relative to whichever package compiles it.
    println!("cargo:rerun-if-changed={}", file!());
    println!("cargo:rerun-if-changed=build.rs");
}
