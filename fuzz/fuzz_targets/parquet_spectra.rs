//! Spectra Parquet table read completely.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    common::read_files(&[("spectra.parquet", data)], "spectra.parquet");
});
