//! The TOML configuration: parse (unknown keys refused) and validate.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cfg) = ftirflow::config::Config::parse(text, "fuzz.toml") {
            let _ = cfg.validate();
        }
    }
});
