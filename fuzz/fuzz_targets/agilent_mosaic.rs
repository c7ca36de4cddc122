//! Agilent mosaic: `.dmt` header + up to three `.dmd` tiles (input: dmt, SEP, tile 0000_0000,
//! SEP, tile 0001_0000, SEP, tile 0000_0001; empty parts are left out) read completely.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| common::read_mosaic(data));
