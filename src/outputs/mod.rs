//! The contract of a run's output directory (docs/outputs.md): the summary records each image
//! contributes, the tables written from their totals, the manifest of processed images with the
//! directory's lock, and the names of the per-image parts.
//!
//! ```text
//! OUT_DIR/predictions/<part>.parquet   prediction rows of one image
//! OUT_DIR/parts/<part>.json            the image's summary records (reused by later runs)
//! OUT_DIR/layouts/<part>.json          what de-arraying made of each image (layouts)
//! OUT_DIR/manifest.jsonl               one line per finished image (manifest)
//! OUT_DIR/{cores,gradcam,bands,rejects}.parquet, run.json   written at the end (tables)
//! ```
pub mod layouts;
pub mod manifest;
pub mod records;
pub mod tables;

use std::path::{Path, PathBuf};

/// A part name from a sample id: safe as a file name, unique per sample.
pub fn part_name(sample: &str) -> String {
    let safe: String = sample.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect();
    if safe == sample {
        safe
    } else {
        // Keep names distinct when sanitizing merged two ids.
        use sha2::Digest;
        let h = sha2::Sha256::digest(sample.as_bytes());
        format!("{safe}-{:02x}{:02x}{:02x}{:02x}", h[0], h[1], h[2], h[3])
    }
}

/// `OUT_DIR/predictions/<part>.parquet`.
pub fn prediction_path(out: &Path, part: &str) -> PathBuf {
    out.join("predictions").join(format!("{part}.parquet"))
}

/// `OUT_DIR/parts/<part>.json`.
pub fn summary_path(out: &Path, part: &str) -> PathBuf {
    out.join("parts").join(format!("{part}.json"))
}
