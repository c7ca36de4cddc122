//! ftirflow: a streaming dataflow engine that turns archives of micro-FTIR hyperspectral images of
//! breast tissue into per-spectrum and per-core predictions (CaReNet-V1, arXiv 2310.15094).
//!
//! The engine library holds the readers and writers ([`io`]), the synthetic archive generator
//! ([`synth`]) and the command line ([`cli`]); the numerical kernels live in the
//! `ftirflow-operators` crate, re-exported here as [`operators`].
#![warn(missing_docs)]

pub mod bundle;
pub mod cli;
pub mod config;
pub mod dataflow;
pub mod io;
pub mod plan;
pub mod report;
pub mod run;
pub mod synth;
pub mod torch_check;
pub mod train;

pub use ftirflow_operators as operators;
