//! ENVI header text → `parse_header_str` (never panics; every field checked).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(h) = ftirflow::io::envi::parse_header_str(std::path::Path::new("fuzz.hdr"), &text) {
        let _ = (h.data_bytes(), h.expected_file_size(), h.to_text());
    }
});
