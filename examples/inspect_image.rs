//! Opens one image with ftirflow's readers and prints what they see: format, size, axis and value
//! range. `cargo run --release --example inspect_image -- PATH`
use std::path::PathBuf;

use ftirflow::io::{open, ReadOptions};
use ftirflow::operators::SpectraLayout;

fn main() -> anyhow::Result<()> {
    let path: PathBuf = std::env::args_os().nth(1).map(PathBuf::from).ok_or_else(|| anyhow::anyhow!("usage: inspect_image PATH"))?;
    let reader = open(&path, &ReadOptions::new("inspect"))?;
    let info = reader.info().clone();
    let (mut lo, mut hi, mut non_finite, mut spectra) = (f32::INFINITY, f32::NEG_INFINITY, 0u64, 0u64);
    for batch in reader {
        let batch = batch?;
        for &v in SpectraLayout::values(&batch)? {
            if v.is_finite() {
                lo = lo.min(v);
                hi = hi.max(v);
            } else {
                non_finite += 1;
            }
        }
        spectra += batch.num_rows() as u64;
    }
    let w = &info.wavenumbers;
    println!("{}: {}", path.display(), info.format.name());
    println!("  pixels: {:?} × {:?} ({spectra} spectra)", info.width, info.height);
    println!("  axis: {} points, {:.2} → {:.2} cm⁻¹", w.len(), w[0], w[w.len() - 1]);
    println!("  values: {lo} … {hi}, {non_finite} non-finite");
    Ok(())
}
