//! Agilent tile: `.bsp` header + `.dat` data (input: bsp, SEP, dat) read completely.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let p = common::split(data, 2);
    common::read_files(&[("tile.bsp", p[0]), ("tile.dat", p[1])], "tile.dat");
});
