//! Links the binaries, tests and examples of this package to libtorch with an rpath, so that no
//! `LD_LIBRARY_PATH` is needed, and keeps `libtorch_cuda.so` linked in `cuda` builds.
fn main() {
    // torch-sys (links = "tch") exports the directory that holds libtorch's shared libraries.
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
            // The GPU machines carry torch in a different place; searched after ours.
            println!("cargo:rustc-link-arg=-Wl,-rpath,/opt/torch/.venv/lib/python3.12/site-packages/torch/lib");
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg=-ltorch_cuda");
            println!("cargo:rustc-link-arg=-ltorch");
            println!("cargo:rustc-link-arg=-Wl,--as-needed");
        }
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-changed=build.rs");
}
