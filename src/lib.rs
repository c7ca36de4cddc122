//! ftirflow: a streaming dataflow engine that turns archives of micro-FTIR hyperspectral images of
//! breast tissue into per-spectrum and per-core predictions (CaReNet-V1, arXiv 2310.15094).
//!
//! The library is layered (ARCHITECTURE.md): the numerical kernels live in the
//! `ftirflow-operators` crate, re-exported here as [`operators`]; above them the readers and
//! writers ([`io`]), the configuration, preprocessing plan and model bundles; then the jobs
//! ([`synth`], [`train`], [`convert`], [`preprocess`], [`run`] with its [`dataflow`] graph,
//! [`report`]); the command line ([`cli`]) sits on top and is used only by the binary.
#![warn(missing_docs)]

// The image readers map little-endian files straight into spectra (`io::mapped`).
#[cfg(not(target_endian = "little"))]
compile_error!("ftirflow builds only for little-endian targets");

pub mod bundle;
pub mod classify;
#[doc(hidden)]
pub mod cli;
pub mod config;
pub mod convert;
pub mod dataflow;
pub mod error;
pub mod io;
pub mod job;
pub mod outputs;
pub mod plan;
pub mod preprocess;
pub mod reject;
pub mod report;
pub mod run;
pub mod synth;
pub mod tma;
pub mod torch_check;
pub mod train;

pub use ftirflow_operators as operators;
