//! ENVI header + data file (input: header, SEP, data) read completely.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let p = common::split(data, 2);
    common::read_files(&[("image.hdr", p[0]), ("image.img", p[1])], "image.hdr");
});
