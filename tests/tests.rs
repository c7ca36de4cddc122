//! Integration tests of ftirflow: one test binary, one module per area. Fixtures are made by code;
//! tests that need `../shared/data` skip with a one-line message when it is absent.
mod common;
mod envi;
mod synth;
mod agilent;
mod tables;
mod archive;
mod cli;
mod interop;
mod preprocess;
mod segment;
mod run;
mod model;
mod baseline;
mod report;
mod robust;
mod layers;
