// The root package links to libtorch exactly as the operators package does (rpath; `cuda` keeps
// libtorch_cuda.so linked): one build script, see its header.
include!("operators/build.rs");
