//! Integration tests of ftirflow: one test binary, one module per area. Fixtures are made by code;
//! tests that need `../shared/data` skip with a one-line message when it is absent.
mod agilent;
mod archive;
mod baseline;
mod cli;
mod common;
mod envi;
mod interop;
mod layers;
mod model;
mod preprocess;
mod report;
mod robust;
mod run;
mod segment;
mod synth;
mod tables;
mod window;
