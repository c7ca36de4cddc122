//! Agilent mosaic: `.dmt` header + up to three `.dmd` tiles (input: dmt, SEP, tile 0000_0000,
//! SEP, tile 0001_0000, SEP, tile 0000_0001; empty parts are left out) read completely.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let p = common::split(data, 4);
    let names = ["m_0000_0000.dmd", "m_0001_0000.dmd", "m_0000_0001.dmd"];
    let mut files: Vec<(&str, &[u8])> = vec![("m.dmt", p[0])];
    for (name, bytes) in names.iter().zip(&p[1..]) {
        if !bytes.is_empty() {
            files.push((name, bytes));
        }
    }
    common::read_files(&files, "m.dmt");
});
