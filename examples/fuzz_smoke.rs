//! Bounded mutation fuzzing of every reader and the config parser on the stable toolchain: the
//! same entry points as the cargo-fuzz targets in `fuzz/` (no coverage guidance, so it finds less;
//! it runs where nightly does not). It mutates the seed corpus `fuzz/corpus/<target>/` (made by
//! `fuzz/seeds.sh`) and reports runs, panics, allocations over 1 GiB and inputs slower than 10 s;
//! each failing input is saved under `fuzz/artifacts/<target>/`.
//!
//! `cargo run --release --example fuzz_smoke -- SECONDS [TARGET...]`
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

#[path = "../fuzz/fuzz_targets/common.rs"]
mod common;

/// The largest single allocation an input of a few MB may cause.
const ALLOC_LIMIT: usize = 1 << 30;

struct Capped;

static OVER_LIMIT: AtomicBool = AtomicBool::new(false);

// SAFETY: forwards to the system allocator; refuses (null) allocations over the limit, which
// Rust turns into an abort (the input is saved before it runs).
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_LIMIT {
            OVER_LIMIT.store(true, Ordering::SeqCst);
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's `layout` contract is the system allocator's; it is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` (alloc/realloc above) with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOC_LIMIT {
            OVER_LIMIT.store(true, Ordering::SeqCst);
            return std::ptr::null_mut();
        }
        // SAFETY: `ptr` came from `System` with `layout`; the caller's contract on `new_size` holds.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Capped = Capped;

/// One target: the same body as `fuzz/fuzz_targets/<name>.rs`.
fn target(name: &str, data: &[u8]) {
    match name {
        "envi_header" => {
            let text = String::from_utf8_lossy(data);
            if let Ok(h) = ftirflow::io::envi::parse_header_str(Path::new("fuzz.hdr"), &text) {
                let _ = (h.data_bytes(), h.expected_file_size(), h.to_text());
            }
        }
        "envi" => {
            let p = common::split(data, 2);
            common::read_files(&[("image.hdr", p[0]), ("image.img", p[1])], "image.hdr");
        }
        "agilent_tile" => {
            let p = common::split(data, 2);
            common::read_files(&[("tile.bsp", p[0]), ("tile.dat", p[1])], "tile.dat");
        }
        "agilent_mosaic" => common::read_mosaic(data),
        "orange_csv" => common::read_files(&[("table.csv", data)], "table.csv"),
        "parquet_spectra" => common::read_files(&[("spectra.parquet", data)], "spectra.parquet"),
        "config" => {
            if let Ok(text) = std::str::from_utf8(data) {
                if let Ok(cfg) = ftirflow::config::Config::parse(text, "fuzz.toml") {
                    let _ = cfg.validate();
                }
            }
        }
        other => panic!("unknown target {other}"),
    }
}

const INTERESTING: &[u64] =
    &[0, 1, 2, 3, 4, 7, 8, 12, 255, 256, 1023, 1024, 65535, 65536, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 1 << 32, u64::MAX / 2, u64::MAX];

fn mutate(rng: &mut impl Rng, seed: &[u8], seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut d = seed.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        match rng.random_range(0..9) {
            0 if !d.is_empty() => {
                let i = rng.random_range(0..d.len());
                d[i] ^= 1 << rng.random_range(0..8);
            }
            1 if !d.is_empty() => {
                let i = rng.random_range(0..d.len());
                d[i] = rng.random();
            }
            2 if d.len() >= 8 => {
                // An interesting integer, in either byte order, at a random (or header) offset.
                let i = if rng.random_bool(0.5) { rng.random_range(0..d.len() - 7) } else { rng.random_range(0..d.len().min(4096) - 7) };
                let v = INTERESTING[rng.random_range(0..INTERESTING.len())];
                let w = rng.random_range(0..3);
                let bytes: Vec<u8> = match w {
                    0 => (v as u32).to_le_bytes().to_vec(),
                    1 => v.to_le_bytes().to_vec(),
                    _ => (v as u32).to_be_bytes().to_vec(),
                };
                d[i..i + bytes.len()].copy_from_slice(&bytes);
            }
            3 => {
                // A number in the text replaced by an interesting one (header fields, CSV axes).
                let starts: Vec<usize> =
                    (0..d.len()).filter(|&i| d[i].is_ascii_digit() && (i == 0 || !d[i - 1].is_ascii_digit())).collect();
                if let Some(&s) = starts.get(rng.random_range(0..starts.len().max(1))) {
                    let e = (s..d.len()).find(|&i| !d[i].is_ascii_digit()).unwrap_or(d.len());
                    let v = INTERESTING[rng.random_range(0..INTERESTING.len())];
                    let text = if rng.random_bool(0.2) { format!("-{v}") } else { v.to_string() };
                    d.splice(s..e, text.into_bytes());
                }
            }
            4 if !d.is_empty() => {
                let n = rng.random_range(0..d.len());
                d.truncate(n);
            }
            5 if !d.is_empty() => {
                let a = rng.random_range(0..d.len());
                let b = (a + rng.random_range(1..=64)).min(d.len());
                let chunk = d[a..b].to_vec();
                let at = rng.random_range(0..=d.len());
                d.splice(at..at, chunk);
            }
            6 if !d.is_empty() => {
                let a = rng.random_range(0..d.len());
                let b = (a + rng.random_range(1..=256)).min(d.len());
                d.drain(a..b);
            }
            7 => {
                // Splice with another seed.
                let other = &seeds[rng.random_range(0..seeds.len())];
                let cut = rng.random_range(0..=d.len());
                let from = rng.random_range(0..=other.len());
                d.truncate(cut);
                d.extend_from_slice(&other[from..]);
            }
            _ => {
                let text: &[&[u8]] = &[b"nan", b"inf", b"-inf", b"1e308", b"\n", b"{", b"}", b",", b"=", b"\"", b"\x00", b"\xff\xfe"];
                let t = text[rng.random_range(0..text.len())];
                let at = rng.random_range(0..=d.len());
                d.splice(at..at, t.iter().copied());
            }
        }
    }
    d
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let secs: u64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(60);
    let all = ["envi_header", "envi", "agilent_tile", "agilent_mosaic", "orange_csv", "parquet_spectra", "config"];
    let targets: Vec<&str> = if args.len() > 1 { args[1..].iter().map(String::as_str).collect() } else { all.to_vec() };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    std::panic::set_hook(Box::new(|_| {}));
    println!("| target | seeds | runs | seconds | panics | allocations > 1 GiB | inputs > 10 s |");
    println!("|---|---|---|---|---|---|---|");
    for t in targets {
        let dir = root.join("corpus").join(t);
        let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .map(|rd| rd.filter_map(|e| e.ok()).filter_map(|e| std::fs::read(e.path()).ok()).collect())
            .unwrap_or_default();
        if seeds.is_empty() {
            seeds.push(Vec::new());
        }
        let artifacts = root.join("artifacts").join(t);
        std::fs::create_dir_all(&artifacts).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5eed ^ t.len() as u64);
        let (mut runs, mut panics, mut slow) = (0u64, 0u64, 0u64);
        let start = Instant::now();
        let last = artifacts.join("last-input");
        while start.elapsed() < Duration::from_secs(secs) {
            let seed = &seeds[rng.random_range(0..seeds.len())];
            let input = if runs < seeds.len() as u64 { seed.clone() } else { mutate(&mut rng, seed, &seeds) };
            // Saved before it runs: an abort (allocation over the limit) leaves it behind.
            std::fs::write(&last, &input).unwrap();
            let t0 = Instant::now();
            let ok = std::panic::catch_unwind(|| target(t, &input)).is_ok();
            runs += 1;
            if !ok {
                panics += 1;
                std::fs::write(artifacts.join(format!("panic-{runs}")), &input).unwrap();
            }
            if t0.elapsed() > Duration::from_secs(10) {
                slow += 1;
                std::fs::write(artifacts.join(format!("slow-{runs}")), &input).unwrap();
            }
        }
        let _ = std::fs::remove_file(&last);
        let over = OVER_LIMIT.load(Ordering::SeqCst);
        println!("| {t} | {} | {runs} | {secs} | {panics} | {} | {slow} |", seeds.len(), u8::from(over));
    }
}
