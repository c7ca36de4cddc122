//! Links this crate's tests, examples and benches to libtorch with an rpath (torch-sys, with
//! `links = "tch"`, exports the library directory to direct dependents), so that no
//! `LD_LIBRARY_PATH` is needed.
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-changed=build.rs");
}
