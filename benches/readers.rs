//! Reader throughput: ENVI (BIP and BSQ, float32) and Agilent mosaic reads of a realistic image
//! from the page cache, beside a plain sequential read of the same bytes measured in the same run
//! (the ceiling a reader can approach). Reports GB/s of spectral data.
use std::io::Read;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ftirflow::io::envi::{self, EnviWriteOptions, Interleave};
use ftirflow::io::{agilent, open, ImageCube, ReadOptions};

const SIDE: u32 = 128;
const POINTS: usize = 1504;

fn cube() -> ImageCube {
    let wavenumbers: Vec<f64> = (0..POINTS).map(|i| 1.9285 * (467 + i) as f64).collect();
    let mut state = 0x2545F4914F6CDD1Du64;
    let values = (0..SIDE as usize * SIDE as usize * POINTS)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect();
    ImageCube { width: SIDE, height: SIDE, wavenumbers, values }
}

fn plain_read(path: &Path, buf: &mut Vec<u8>) -> usize {
    buf.clear();
    std::fs::File::open(path).unwrap().read_to_end(buf).unwrap()
}

fn read_spectra(path: &Path) -> usize {
    let reader = open(path, &ReadOptions::new("bench")).unwrap();
    reader.map(|b| b.unwrap().num_rows()).sum()
}

fn readers(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let cube = cube();
    let bytes = (cube.values.len() * 4) as u64;
    let bip = dir.path().join("bip.hdr");
    let bsq = dir.path().join("bsq.hdr");
    let data_bip = envi::write_cube(&bip, &cube, &EnviWriteOptions::default()).unwrap();
    envi::write_cube(&bsq, &cube, &EnviWriteOptions { interleave: Interleave::Bsq, ..Default::default() }).unwrap();
    let dmt = dir.path().join("mosaic.dmt");
    agilent::write_mosaic(&dmt, &cube, 64).unwrap();

    let mut g = c.benchmark_group("read_128x128x1504");
    g.throughput(Throughput::Bytes(bytes));
    g.sample_size(20);
    let mut buf = Vec::with_capacity(bytes as usize + 4096);
    g.bench_function("plain_read_same_bytes", |b| b.iter(|| plain_read(&data_bip, &mut buf)));
    g.bench_function("envi_bip_f32", |b| b.iter(|| read_spectra(&bip)));
    g.bench_function("envi_bsq_f32", |b| b.iter(|| read_spectra(&bsq)));
    g.bench_function("agilent_mosaic_64px_tiles", |b| b.iter(|| read_spectra(&dmt)));
    g.finish();
}

criterion_group!(benches, readers);
criterion_main!(benches);
