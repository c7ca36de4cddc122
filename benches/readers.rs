//! Reader throughput: ENVI (BIP, BSQ, BIL, float32) and Agilent mosaic reads of a realistic image
//! from the page cache, at `run`'s batch (1024) and a larger one, beside a plain sequential read of
//! the same bytes measured in the same run (the ceiling a reader can approach). Reports GB/s of
//! spectral data. A second group reads a 256 × 256 window of a larger image (ENVI BIP and BSQ, an
//! Agilent mosaic) beside the whole read of the same file and a plain read of as many bytes as the
//! window holds. A third reads only 900–1800 cm⁻¹ (what `run` reads, `ReadOptions::bands`) of the
//! 128 × 128 × 1504 image beside its whole read, per layout, and a plain read of as many bytes: 469
//! of 1504 points, 0.31 of the bytes. A fourth reads what `run` reads of a core inside a slide: a
//! 256 × 256 window of a 384 × 384 × 1504 image, 900–1800 cm⁻¹ only, per layout.
//!
//! Every file, the plain read's too, is measured in one page-cache state: written, synced, dropped
//! from the cache and read in once in 128 KiB pieces, as `cat` or `cp` leave a file and as a file
//! read from disk sits there ([`settle_page_cache`]). How a file came into the cache decides the size
//! of its cached pieces (folios), and mapping a file, and even a plain read, cost per piece: the
//! writers' 16–64 KiB writes leave pieces that map up to 8× slower than the large ones readahead
//! makes (docs/performance.md, "Page-cache state"). `FTIRFLOW_BENCH_CACHE=as-written` measures the
//! files as the writers left them instead.
// The allocator the `ftirflow` binary uses (see src/main.rs): batches are allocated as in a run.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ftirflow::io::envi::{self, EnviWriteOptions, Interleave};
use ftirflow::io::{agilent, open, ImageCube, ReadOptions, Window};
use ftirflow::operators::axis::Band;

const SIDE: u32 = 128;
const POINTS: usize = 1504;

/// Side and points of the image the window is cut from (1024 × 1024 × 96 float32: 384 MiB).
const LARGE_SIDE: u32 = 1024;
const LARGE_POINTS: usize = 96;

fn cube() -> ImageCube {
    cube_of(SIDE, POINTS)
}

fn cube_of(side: u32, points: usize) -> ImageCube {
    let wavenumbers: Vec<f64> = (0..points).map(|i| 1.9285 * (467 + i) as f64).collect();
    let mut state = 0x2545F4914F6CDD1Du64;
    let values = (0..side as usize * side as usize * points)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect();
    ImageCube { width: side, height: side, wavenumbers, values }
}

/// Sequential 8 MiB reads into one reused buffer of the first `limit` bytes of `path`: the ceiling
/// for reading that many bytes.
fn plain_read(path: &Path, buf: &mut [u8], limit: u64) -> usize {
    let mut f = std::fs::File::open(path).unwrap().take(limit);
    let mut total = 0;
    loop {
        let n = f.read(buf).unwrap();
        if n == 0 {
            return total;
        }
        total += n;
    }
}

fn read_spectra(path: &Path, batch_rows: usize) -> usize {
    read_window(path, batch_rows, None)
}

fn read_window(path: &Path, batch_rows: usize, window: Option<Window>) -> usize {
    read_bands(path, batch_rows, window, None)
}

fn read_bands(path: &Path, batch_rows: usize, window: Option<Window>, bands: Option<Band>) -> usize {
    let reader = open(path, &ReadOptions { batch_rows, sample: "bench".into(), window, bands }).unwrap();
    reader.map(|b| b.unwrap().num_rows()).sum()
}

/// Every file in `dir` put in the page cache as a file read from disk is: synced, dropped from the
/// cache and read once in 128 KiB pieces (the kernel's readahead then caches it, after its first
/// few hundred KiB, in pieces of up to 2 MiB). Not done with `FTIRFLOW_BENCH_CACHE=as-written`.
fn settle_page_cache(dir: &Path) {
    match std::env::var("FTIRFLOW_BENCH_CACHE").as_deref() {
        Err(_) => {}
        Ok("as-written") => return,
        Ok(other) => panic!("FTIRFLOW_BENCH_CACHE={other}: the one other state is `as-written`"),
    }
    let mut buf = vec![0u8; 128 << 10];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        let file = std::fs::File::open(&path).unwrap();
        file.sync_data().unwrap();
        // SAFETY: advice on an open file descriptor; no memory is involved.
        let dropped = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(dropped, 0, "posix_fadvise on {}", path.display());
        plain_read(&path, &mut buf, u64::MAX);
    }
}

/// `cube` written in `dir` in every layout: ENVI in each interleave and an Agilent mosaic of
/// `fpa`-pixel tiles, each with its bench name.
fn write_layouts(dir: &Path, cube: &ImageCube, fpa: u32) -> Vec<(String, std::path::PathBuf)> {
    let mut files = Vec::new();
    for interleave in Interleave::ALL {
        let hdr = dir.join(format!("{}.hdr", interleave.name()));
        envi::write_cube(&hdr, cube, &EnviWriteOptions { interleave, ..Default::default() }).unwrap();
        files.push((format!("envi_{}", interleave.name()), hdr));
    }
    let dmt = dir.join("mosaic.dmt");
    agilent::write_mosaic(&dmt, cube, fpa).unwrap();
    files.push((format!("agilent_mosaic_{fpa}px_tiles"), dmt));
    settle_page_cache(dir);
    files
}

/// 900–1800 cm⁻¹ of the 128 × 128 × 1504 image beside its whole read, in each layout (batch 1024,
/// as `run` reads).
fn band_ranges(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let cube = cube();
    let files = write_layouts(dir.path(), &cube, 64);
    let band = Some(Band::new(900.0, 1800.0));
    let axis: Vec<f64> = cube.wavenumbers.clone();
    let range = ftirflow::io::band_range(&axis, band);
    let band_bytes = (cube.width * cube.height) as u64 * range.len() as u64 * 4;
    let mut g = c.benchmark_group("bands_900_1800_of_128x128x1504");
    g.sample_size(20);
    let mut buf = vec![0u8; 8 << 20];
    // Any of the ENVI data files: they hold the same bytes in different orders.
    let data = files[0].1.with_extension("img");
    g.bench_function("plain_read_as_many_bytes", |b| b.iter(|| plain_read(&data, &mut buf, band_bytes)));
    for (name, path) in &files {
        g.bench_function(format!("{name}_whole"), |b| b.iter(|| read_bands(path, 1024, None, None)));
        g.bench_function(format!("{name}_bands"), |b| b.iter(|| read_bands(path, 1024, None, band)));
    }
    g.finish();
}

/// A 256 × 256 window of a 1024 × 1024 image beside the whole read, per format. The window is
/// off the tile grid, so in the mosaic (128-pixel tiles) it touches 9 tiles, most in part.
fn windows(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let cube = cube_of(LARGE_SIDE, LARGE_POINTS);
    let bip = dir.path().join("bip.hdr");
    let bsq = dir.path().join("bsq.hdr");
    envi::write_cube(&bip, &cube, &EnviWriteOptions::default()).unwrap();
    envi::write_cube(&bsq, &cube, &EnviWriteOptions { interleave: Interleave::Bsq, ..Default::default() }).unwrap();
    let dmt = dir.path().join("mosaic.dmt");
    agilent::write_mosaic(&dmt, &cube, 128).unwrap();
    drop(cube);
    settle_page_cache(dir.path());
    let window = Window::new(300, 300, 256, 256);
    let mut g = c.benchmark_group("window_256_of_1024x1024x96");
    g.sample_size(10);
    let mut buf = vec![0u8; 8 << 20];
    let window_bytes = 256 * 256 * LARGE_POINTS as u64 * 4;
    let data = bip.with_extension("img");
    g.bench_function("plain_read_as_many_bytes", |b| b.iter(|| plain_read(&data, &mut buf, window_bytes)));
    for (name, path) in [("envi_bip", &bip), ("envi_bsq", &bsq), ("agilent_mosaic_128px_tiles", &dmt)] {
        g.bench_function(format!("{name}_whole"), |b| b.iter(|| read_window(path, 1024, None)));
        g.bench_function(format!("{name}_window"), |b| b.iter(|| read_window(path, 1024, Some(window))));
    }
    g.finish();
}

/// Side of the image that [`core_windows`] cuts a core from (384 × 384 × 1504 float32: 887 MB per
/// layout).
const SLIDE_SIDE: u32 = 384;

/// What `run` reads of a core inside a slide: a 256 × 256 window, 900–1800 cm⁻¹ only (469 of 1504
/// points), at batch 1024, per layout, beside a plain read of as many bytes. The window is off
/// the 128-pixel tile grid (it touches all 9 tiles of the mosaic, 5 in part).
fn core_windows(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let cube = cube_of(SLIDE_SIDE, POINTS);
    let files = write_layouts(dir.path(), &cube, 128);
    let band = Some(Band::new(900.0, 1800.0));
    let range = ftirflow::io::band_range(&cube.wavenumbers, band);
    drop(cube);
    let window = Window::new(70, 70, 256, 256);
    let bytes = 256 * 256 * range.len() as u64 * 4;
    let mut g = c.benchmark_group("core_256_bands_900_1800_of_384x384x1504");
    g.sample_size(10);
    let mut buf = vec![0u8; 8 << 20];
    let data = files[0].1.with_extension("img");
    g.bench_function("plain_read_as_many_bytes", |b| b.iter(|| plain_read(&data, &mut buf, bytes)));
    for (name, path) in &files {
        g.bench_function(name.as_str(), |b| b.iter(|| read_bands(path, 1024, Some(window), band)));
    }
    g.finish();
}

fn readers(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let cube = cube();
    let bytes = (cube.values.len() * 4) as u64;
    let bip = dir.path().join("bip.hdr");
    let bsq = dir.path().join("bsq.hdr");
    let bil = dir.path().join("bil.hdr");
    let data_bip = envi::write_cube(&bip, &cube, &EnviWriteOptions::default()).unwrap();
    envi::write_cube(&bsq, &cube, &EnviWriteOptions { interleave: Interleave::Bsq, ..Default::default() }).unwrap();
    envi::write_cube(&bil, &cube, &EnviWriteOptions { interleave: Interleave::Bil, ..Default::default() }).unwrap();
    let dmt = dir.path().join("mosaic.dmt");
    agilent::write_mosaic(&dmt, &cube, 64).unwrap();
    settle_page_cache(dir.path());

    let mut g = c.benchmark_group("read_128x128x1504");
    g.throughput(Throughput::Bytes(bytes));
    g.sample_size(20);
    let mut buf = vec![0u8; 8 << 20];
    g.bench_function("plain_read_same_bytes", |b| b.iter(|| plain_read(&data_bip, &mut buf, bytes)));
    for rows in [1024, 4096] {
        g.bench_function(format!("envi_bip_f32_batch{rows}"), |b| b.iter(|| read_spectra(&bip, rows)));
        g.bench_function(format!("envi_bsq_f32_batch{rows}"), |b| b.iter(|| read_spectra(&bsq, rows)));
        g.bench_function(format!("envi_bil_f32_batch{rows}"), |b| b.iter(|| read_spectra(&bil, rows)));
        g.bench_function(format!("agilent_mosaic_64px_tiles_batch{rows}"), |b| b.iter(|| read_spectra(&dmt, rows)));
    }
    g.finish();
}

criterion_group!(benches, readers, windows, band_ranges, core_windows);
criterion_main!(benches);
