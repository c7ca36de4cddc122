//! Windowed reads ([`ReadOptions::window`]): for every ENVI interleave, Agilent mosaics and single
//! tiles, the windowed read is the whole read filtered to the window — the same values bit for
//! bit, the same `x`, `y`, the same order — for windows inside a tile, across tile boundaries, at
//! the image's edges, clipped and 1×1, at several batch sizes; windows that select nothing are
//! errors naming the window and the image; Parquet and Orange CSV tables select rows by `x`/`y`.
//! Reads of a band range ([`ReadOptions::bands`]) equal the same reads cut to the range's points
//! ([`io::band_range`]), windowed or not, in every format.
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, ListArray};
use arrow::datatypes::{Field, Float64Type, Schema, UInt32Type};
use ftirflow::io::envi::{self, ByteOrder, EnviWriteOptions, Interleave, ValueType};
use ftirflow::io::{self, agilent, ImageCube, ImageInfo, ReadError, ReadOptions, Window};
use ftirflow::operators::axis::Band;
use ftirflow::operators::schema::{axis_metadata, SpectraLayout};
use proptest::prelude::*;

use crate::envi::values_for;
use crate::tables::write_table;

const BATCH_SIZES: [usize; 5] = [1, 3, 7, 16, 4096];

/// What a reader yielded, concatenated, with its header facts.
#[derive(Debug)]
struct Read {
    xy: Vec<(u32, u32)>,
    /// One `u32` bit pattern per value (so NaN payloads and -0.0 compare exactly).
    bits: Vec<u32>,
    info: ImageInfo,
}

/// Reads `path` with `window` in batches of `batch_rows`, checking each batch's size.
fn read(path: &Path, batch_rows: usize, window: Option<Window>) -> Result<Read, ReadError> {
    read_bands(path, batch_rows, window, None)
}

/// [`read`] of the points of `bands` only.
fn read_bands(path: &Path, batch_rows: usize, window: Option<Window>, bands: Option<Band>) -> Result<Read, ReadError> {
    let opts = ReadOptions { batch_rows, sample: "s".into(), window, bands };
    let reader = io::open(path, &opts)?;
    let info = reader.info().clone();
    let mut out = Read { xy: Vec::new(), bits: Vec::new(), info };
    for batch in reader {
        let batch = batch?;
        assert!(batch.num_rows() >= 1 && batch.num_rows() <= batch_rows, "batch of {} rows (batch_rows {batch_rows})", batch.num_rows());
        let layout = SpectraLayout::validate_batch(&batch).expect("valid spectra batch");
        let xs = batch.column(layout.x).as_primitive::<UInt32Type>();
        let ys = batch.column(layout.y).as_primitive::<UInt32Type>();
        out.xy.extend(xs.values().iter().zip(ys.values().iter()).map(|(&x, &y)| (x, y)));
        out.bits.extend(SpectraLayout::values(&batch).unwrap().iter().map(|v| v.to_bits()));
    }
    Ok(out)
}

/// The whole read's pixels inside `window`, in the whole read's order.
fn filtered(whole: &Read, window: Window) -> (Vec<(u32, u32)>, Vec<u32>) {
    filtered_bands(whole, window, None)
}

/// [`filtered`], each spectrum cut to the points [`io::band_range`] gives for `bands`.
fn filtered_bands(whole: &Read, window: Window, bands: Option<Band>) -> (Vec<(u32, u32)>, Vec<u32>) {
    let n = whole.info.wavenumbers.len();
    let range = io::band_range(&whole.info.wavenumbers, bands);
    let mut xy = Vec::new();
    let mut bits = Vec::new();
    for (i, &(x, y)) in whole.xy.iter().enumerate() {
        if window.contains(x, y) {
            xy.push((x, y));
            bits.extend_from_slice(&whole.bits[i * n + range.start..i * n + range.end]);
        }
    }
    (xy, bits)
}

/// Band ranges to read of `axis` (at least 2 points): none, one inside, one from the first point,
/// and one that holds no point (read whole).
fn band_choices(axis: &[f64]) -> Vec<Option<Band>> {
    let n = axis.len();
    let mid = Band::new(axis[n / 3] - 0.01, axis[(2 * n / 3).max(n / 3)] + 0.01);
    vec![None, Some(mid), Some(Band::new(axis[0] - 5.0, axis[n / 2])), Some(Band::new(-10.0, -5.0))]
}

/// Checks reads of `path` through `window` (or none) of each of [`band_choices`] against its
/// whole read cut to the band's points.
fn check_bands(path: &Path, whole: &Read, window: Option<Window>, what: &str) {
    let all = Window::new(0, 0, u32::MAX, u32::MAX);
    for bands in band_choices(&whole.info.wavenumbers) {
        let (xy, bits) = filtered_bands(whole, window.unwrap_or(all), bands);
        let range = io::band_range(&whole.info.wavenumbers, bands);
        for batch_rows in [1, 7, 4096] {
            let got = read_bands(path, batch_rows, window, bands).unwrap();
            assert_eq!(got.info.wavenumbers, whole.info.wavenumbers[range.clone()], "{what} {bands:?}: axis");
            if whole.info.width.is_some() {
                // Images read only the range's bytes (tables cut what they read).
                assert_eq!(got.info.data_bytes % (xy.len() as u64 * range.len() as u64), 0, "{what} {bands:?}: data_bytes");
                assert!(got.info.data_bytes <= 8 * xy.len() as u64 * range.len() as u64, "{what} {bands:?}: data_bytes");
            }
            assert_eq!(got.xy, xy, "{what} {window:?} {bands:?} batch {batch_rows}: pixels and order");
            assert!(got.bits == bits, "{what} {window:?} {bands:?} batch {batch_rows}: values differ");
        }
    }
}

/// Checks the windowed reads of `path` against its whole read, at every batch size.
fn check_windows(path: &Path, windows: &[Window], what: &str) {
    let whole = read(path, 4096, None).unwrap();
    let (w, h) = (whole.info.width.unwrap(), whole.info.height.unwrap());
    assert_eq!(whole.xy.len() as u64, u64::from(w) * u64::from(h));
    let n = whole.info.wavenumbers.len() as u64;
    for &window in windows {
        let clipped = window.clip(w, h).expect("a window that selects pixels");
        let (xy, bits) = filtered(&whole, window);
        assert_eq!(xy.len() as u64, clipped.n_pixels(), "{what} {window}: pixels inside");
        for batch_rows in BATCH_SIZES {
            let got = read(path, batch_rows, Some(window)).unwrap();
            assert_eq!(got.info.n_spectra, clipped.n_pixels(), "{what} {window}: n_spectra");
            assert_eq!(got.info.data_bytes % (clipped.n_pixels() * n), 0, "{what} {window}: data_bytes");
            assert_eq!((got.info.width, got.info.height), (Some(w), Some(h)), "{what} {window}: image size");
            assert_eq!(got.xy, xy, "{what} {window} batch {batch_rows}: pixels and order");
            assert!(got.bits == bits, "{what} {window} batch {batch_rows}: values differ");
        }
        check_bands(path, &whole, Some(window), what);
    }
    check_bands(path, &whole, None, what);
}

/// An image with an evenly spaced ascending axis (storable by ENVI and Agilent alike).
fn cube(width: u32, height: u32, bands: usize, dt: ValueType, seed: u64) -> ImageCube {
    let wavenumbers = (0..bands).map(|i| 1.9285 * (467 + i) as f64).collect();
    ImageCube { width, height, wavenumbers, values: values_for(dt, width as usize * height as usize * bands, seed) }
}

fn envi_file(
    dir: &Path,
    c: &ImageCube,
    interleave: Interleave,
    data_type: ValueType,
    byte_order: ByteOrder,
    header_offset: u64,
) -> std::path::PathBuf {
    let hdr = dir.join(format!("{}_{}_{:?}_{header_offset}.hdr", interleave.name(), data_type.name(), byte_order));
    envi::write_cube(&hdr, c, &EnviWriteOptions { interleave, data_type, byte_order, header_offset }).unwrap();
    hdr
}

/// Windows of a 13 × 9 image.
fn envi_windows() -> Vec<Window> {
    vec![
        Window::new(2, 3, 4, 3),     // inside
        Window::new(0, 0, 13, 1),    // the first line, full width
        Window::new(0, 2, 13, 3),    // full width, several lines
        Window::new(0, 0, 1, 9),     // the left edge column
        Window::new(10, 5, 3, 4),    // touching the right and bottom edges
        Window::new(9, 6, 100, 100), // clipped
        Window::new(12, 8, 1, 1),    // 1 × 1 in the corner
        Window::new(5, 4, 1, 1),     // 1 × 1 inside
        Window::new(0, 0, 13, 9),    // the whole image
    ]
}

#[test]
fn envi_window_equals_whole_read_filtered_for_every_interleave() {
    let dir = tempfile::tempdir().unwrap();
    let c = cube(13, 9, 19, ValueType::F32, 1);
    for interleave in Interleave::ALL {
        let hdr = envi_file(dir.path(), &c, interleave, ValueType::F32, ByteOrder::NATIVE, 0);
        check_windows(&hdr, &envi_windows(), interleave.name());
    }
}

#[test]
fn envi_window_with_other_types_orders_and_a_header_offset() {
    let dir = tempfile::tempdir().unwrap();
    for (k, (data_type, byte_order)) in
        [(ValueType::I16, ByteOrder::Big), (ValueType::F64, ByteOrder::Little), (ValueType::F32, ByteOrder::Big)].into_iter().enumerate()
    {
        let c = cube(13, 9, 5, data_type, 10 + k as u64);
        for interleave in Interleave::ALL {
            let hdr = envi_file(dir.path(), &c, interleave, data_type, byte_order, 1020);
            check_windows(&hdr, &envi_windows(), &format!("{} {} {byte_order:?}", interleave.name(), data_type.name()));
        }
    }
}

/// A 3 × 2 mosaic of 4 × 4 tiles (12 × 8 pixels).
fn mosaic(dir: &Path) -> std::path::PathBuf {
    let dmt = dir.join("core.dmt");
    agilent::write_mosaic(&dmt, &cube(12, 8, 6, ValueType::F32, 2), 4).unwrap();
    dmt
}

#[test]
fn mosaic_window_equals_whole_read_filtered() {
    let dir = tempfile::tempdir().unwrap();
    let dmt = mosaic(dir.path());
    let windows = [
        Window::new(1, 1, 2, 2),    // inside tile (0, top)
        Window::new(4, 4, 4, 4),    // exactly one tile
        Window::new(3, 2, 6, 5),    // across four tiles
        Window::new(0, 3, 12, 2),   // full width across the tile-row boundary
        Window::new(2, 0, 1, 8),    // one column, full height
        Window::new(8, 4, 4, 4),    // the bottom-right tile, touching both edges
        Window::new(10, 6, 50, 50), // clipped
        Window::new(4, 4, 1, 1),    // 1 × 1 at a tile corner
        Window::new(11, 0, 1, 1),   // 1 × 1 at the image corner
        Window::new(0, 0, 12, 8),   // the whole image
    ];
    check_windows(&dmt, &windows, "mosaic");
}

#[test]
fn mosaic_window_opens_only_the_tiles_it_touches() {
    let dir = tempfile::tempdir().unwrap();
    let dmt = mosaic(dir.path());
    // Spoil the bottom-right tile's data (same size: the open-time check passes); a window that
    // does not touch it still reads, one that does reads the spoiled values.
    let tile = dir.path().join("core_0002_0000.dmd");
    let mut bytes = std::fs::read(&tile).unwrap();
    bytes[1020..].fill(0xFF);
    std::fs::write(&tile, &bytes).unwrap();
    let away = read(&dmt, 16, Some(Window::new(0, 0, 8, 8))).unwrap();
    assert!(away.bits.iter().all(|&b| b != u32::MAX));
    let touching = read(&dmt, 16, Some(Window::new(7, 3, 2, 2))).unwrap();
    // Tile by tile: top-middle, top-right, bottom-middle, then the spoiled bottom-right.
    assert_eq!(touching.xy, vec![(7, 3), (8, 3), (7, 4), (8, 4)]);
    assert!(touching.bits[3 * 6..].iter().all(|&b| b == u32::MAX), "the touched spoiled tile is read");
}

#[test]
fn single_tile_window_equals_whole_read_filtered() {
    let dir = tempfile::tempdir().unwrap();
    let dat = dir.path().join("tile.dat");
    agilent::write_tile(&dat, &cube(8, 8, 6, ValueType::F32, 3)).unwrap();
    let windows = [
        Window::new(2, 3, 3, 2),
        Window::new(0, 0, 8, 3),
        Window::new(5, 5, 3, 3),
        Window::new(6, 1, 9, 9),
        Window::new(7, 7, 1, 1),
        Window::new(0, 0, 8, 8),
    ];
    check_windows(&dat, &windows, "tile");
}

fn window_error(path: &Path, window: Window) -> String {
    match read(path, 16, Some(window)) {
        Err(e @ ReadError::Window { .. }) => e.to_string(),
        other => panic!("{window}: expected a window error, got {other:?}"),
    }
}

#[test]
fn windows_outside_or_empty_are_errors_naming_window_and_image() {
    let dir = tempfile::tempdir().unwrap();
    let hdr = envi_file(dir.path(), &cube(13, 9, 4, ValueType::F32, 4), Interleave::Bil, ValueType::F32, ByteOrder::NATIVE, 0);
    let dmt = mosaic(dir.path());
    let dat = dir.path().join("tile.dat");
    agilent::write_tile(&dat, &cube(8, 8, 6, ValueType::F32, 3)).unwrap();
    for (path, size, outside) in
        [(&hdr, "13×9", Window::new(13, 0, 2, 2)), (&dmt, "12×8", Window::new(0, 8, 5, 5)), (&dat, "8×8", Window::new(100, 100, 1, 1))]
    {
        let e = window_error(path, outside);
        assert!(e.contains(&outside.to_string()) && e.contains(&format!("outside the {size} image")), "{e}");
        let empty = Window::new(1, 1, 0, 3);
        let e = window_error(path, empty);
        assert!(e.contains("0×3 at (1, 1)") && e.contains("empty") && e.contains(size), "{e}");
        assert!(window_error(path, Window::new(u32::MAX, u32::MAX, u32::MAX, u32::MAX)).contains("outside"));
    }
}

#[test]
fn parquet_table_window_selects_rows_by_x_and_y() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.parquet");
    io::parquet::write_cube(&path, &cube(13, 9, 5, ValueType::F32, 5), "t").unwrap();
    let whole = read(&path, 4096, None).unwrap();
    for window in [Window::new(2, 3, 4, 3), Window::new(9, 6, 100, 100), Window::new(0, 4, 13, 1), Window::new(12, 8, 1, 1)] {
        let (xy, bits) = filtered(&whole, window);
        for batch_rows in BATCH_SIZES {
            let got = read(&path, batch_rows, Some(window)).unwrap();
            assert_eq!(got.xy, xy, "{window} batch {batch_rows}");
            assert!(got.bits == bits, "{window} batch {batch_rows}: values");
        }
        check_bands(&path, &whole, Some(window), "parquet");
    }
    check_bands(&path, &whole, None, "parquet");
    let e = window_error(&path, Window::new(13, 0, 5, 5));
    assert!(e.contains("selects no row") && e.contains("x 0..=12, y 0..=8"), "{e}");
    assert!(window_error(&path, Window::new(0, 0, 3, 0)).contains("empty"));
}

#[test]
fn parquet_table_without_coordinates_cannot_be_windowed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("noxy.parquet");
    let rows = (0..3).map(|r| Some(vec![Some(r as f64), Some(r as f64 + 0.5)]));
    let spectrum: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Float64Type, _, _>(rows));
    let schema = Arc::new(Schema::new_with_metadata(
        vec![Field::new("spectrum", spectrum.data_type().clone(), true)],
        axis_metadata(&[1000.0, 1010.0]),
    ));
    write_table(&path, schema, vec![spectrum]);
    assert_eq!(read(&path, 2, None).unwrap().xy.len(), 3);
    let e = window_error(&path, Window::new(0, 0, 2, 1));
    assert!(e.contains("no pixel coordinates"), "{e}");
}

#[test]
fn orange_table_window_selects_rows_by_map_x_and_map_y() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.csv");
    let mut text = String::from("class,map_x,map_y,1000,1002\n");
    for y in 0..4 {
        for x in 0..5 {
            text.push_str(&format!("{},{x},{y},{}.5,{}\n", if x % 2 == 0 { "CA" } else { "AT" }, x * 10 + y, y));
        }
    }
    std::fs::write(&p, &text).unwrap();
    let whole = read(&p, 4096, None).unwrap();
    for window in [Window::new(1, 1, 2, 2), Window::new(4, 3, 9, 9), Window::new(0, 2, 5, 1)] {
        let (xy, bits) = filtered(&whole, window);
        for batch_rows in BATCH_SIZES {
            let got = read(&p, batch_rows, Some(window)).unwrap();
            assert_eq!(got.xy, xy, "{window} batch {batch_rows}");
            assert!(got.bits == bits, "{window} batch {batch_rows}: values");
        }
    }
    check_bands(&p, &whole, None, "orange");
    // The class column travels with the selected rows.
    let opts = ReadOptions::new("t").with_window(Window::new(1, 0, 2, 1));
    let batches = io::read_all(&p, &opts).unwrap();
    let class = batches[0].column_by_name("class").unwrap().as_string::<i32>();
    assert_eq!((class.value(0), class.value(1)), ("AT", "CA"));
    assert!(window_error(&p, Window::new(5, 0, 1, 1)).contains("x 0..=4, y 0..=3"));
    let plain = dir.path().join("plain.csv");
    std::fs::write(&plain, "1000,1002\n0.5,1\n").unwrap();
    assert!(window_error(&plain, Window::new(0, 0, 1, 1)).contains("no pixel coordinates"));
}

#[test]
fn with_window_keeps_the_other_options() {
    let opts = ReadOptions { batch_rows: 7, ..ReadOptions::new("s") }.with_window(Window::new(1, 2, 3, 4));
    assert_eq!((opts.batch_rows, opts.sample.as_str(), opts.window), (7, "s", Some(Window::new(1, 2, 3, 4))));
    assert_eq!(ReadOptions::new("s").window, None);
    let band = Some(Band::new(1000.0, 1800.0));
    let opts = ReadOptions { batch_rows: 7, ..ReadOptions::new("s") }.with_bands(band).with_window(Window::new(1, 2, 3, 4));
    assert_eq!((opts.batch_rows, opts.bands, opts.window), (7, band, Some(Window::new(1, 2, 3, 4))));
    assert_eq!(ReadOptions::new("s").bands, None);
    assert_eq!(Window::new(1, 2, 3, 4).to_string(), "3×4 at (1, 2)");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random windows (inside, clipped, outside, empty) of random small ENVI images and mosaics.
    #[test]
    fn random_windows_equal_the_whole_read_filtered(
        width in 1u32..12, height in 1u32..10, bands in 1usize..20, layout in 0usize..4,
        (tiles_x, tiles_y, fpa) in (1u32..4, 1u32..3, 1u32..5),
        x in 0u32..14, y in 0u32..12, w in 0u32..14, h in 0u32..12, batch_rows in 1usize..40, seed in any::<u64>(),
        (b0, b1) in (0usize..20, 0usize..20),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = if layout < 3 {
            envi_file(dir.path(), &cube(width, height, bands, ValueType::F32, seed), Interleave::ALL[layout], ValueType::F32, ByteOrder::NATIVE, 0)
        } else {
            let dmt = dir.path().join("m.dmt");
            agilent::write_mosaic(&dmt, &cube(tiles_x * fpa, tiles_y * fpa, bands.max(2), ValueType::F32, seed), fpa).unwrap();
            dmt
        };
        let whole = read(&path, 4096, None).unwrap();
        let (iw, ih) = (whole.info.width.unwrap(), whole.info.height.unwrap());
        let window = Window::new(x, y, w, h);
        match window.clip(iw, ih) {
            None => {
                let refused = matches!(read(&path, batch_rows, Some(window)), Err(ReadError::Window { .. }));
                prop_assert!(refused, "window {} of a {}×{} image is refused", window, iw, ih);
            }
            Some(clipped) => {
                let got = read(&path, batch_rows, Some(window)).unwrap();
                let (xy, bits) = filtered(&whole, window);
                prop_assert_eq!(got.info.n_spectra, clipped.n_pixels());
                prop_assert_eq!(&got.xy, &xy);
                prop_assert!(got.bits == bits);
                // A random band range of the axis (its ends between points).
                let axis = &whole.info.wavenumbers;
                let (i, j) = (b0 % axis.len(), b1 % axis.len());
                let band = Some(Band::new(axis[i] + 0.3, axis[j] - 0.3));
                let got = read_bands(&path, batch_rows, Some(window), band).unwrap();
                let (xy, bits) = filtered_bands(&whole, window, band);
                prop_assert_eq!(&got.xy, &xy);
                prop_assert!(got.bits == bits);
            }
        }
    }
}
