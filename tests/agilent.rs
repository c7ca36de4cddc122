//! Agilent tile and mosaic readers against the reference reader's output, writer round trips, and
//! hostile files.
use std::path::Path;

use ftirflow::io::agilent::{self, AgilentReader};
use ftirflow::io::{self, Format, ImageCube, ReadError, ReadOptions, SpectraReader};
use ftirflow::operators::schema::SpectraLayout;

use crate::common::shared_data;

/// (rows, cols, points, wavenumbers, row-major values) of one image.
type Image = (u32, u32, usize, Vec<f64>, Vec<f32>);

/// Reads everything `reader` yields into a row-major image, checking every pixel appears once.
pub fn collect_image(reader: Box<dyn SpectraReader>) -> Image {
    let info = reader.info().clone();
    let (w, h) = (info.width.unwrap(), info.height.unwrap());
    let n = info.wavenumbers.len();
    let mut values = vec![f32::NAN; (w * h) as usize * n];
    let mut seen = vec![false; (w * h) as usize];
    for batch in reader {
        let batch = batch.unwrap();
        let layout = SpectraLayout::validate_batch(&batch).unwrap();
        let vals = SpectraLayout::values(&batch).unwrap();
        let xs = batch.column(layout.x).as_any().downcast_ref::<arrow::array::UInt32Array>().unwrap();
        let ys = batch.column(layout.y).as_any().downcast_ref::<arrow::array::UInt32Array>().unwrap();
        for r in 0..batch.num_rows() {
            let p = (ys.value(r) * w + xs.value(r)) as usize;
            assert!(!seen[p], "pixel ({}, {}) yielded twice", xs.value(r), ys.value(r));
            seen[p] = true;
            values[p * n..(p + 1) * n].copy_from_slice(&vals[r * n..(r + 1) * n]);
        }
    }
    assert!(seen.iter().all(|s| *s), "some pixels were never yielded");
    (h, w, n, info.wavenumbers, values)
}

fn expected(key: &str) -> Option<(Vec<u64>, Vec<f64>, Vec<f32>)> {
    let dir = shared_data("agilent")?;
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected_agilent_format_0.4.7.json")).unwrap()).unwrap();
    let e = &json[key];
    let shape = e["shape_rows_cols_points"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    let wn = e["wavenumbers"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let data = e["data_row_major"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    Some((shape, wn, data))
}

fn check_against_reference(path: &Path, key: &str, batch_rows: usize) {
    let Some((shape, wn, data)) = expected(key) else { return };
    let reader = io::open(path, &ReadOptions { batch_rows, sample: "s".into(), window: None, bands: None }).unwrap();
    let (rows, cols, points, wavenumbers, values) = collect_image(reader);
    assert_eq!(vec![rows as u64, cols as u64, points as u64], shape);
    for (a, b) in wavenumbers.iter().zip(&wn) {
        assert!((a - b).abs() <= 1e-9 * b.abs(), "wavenumber {a} vs reference {b}");
    }
    assert_eq!(values.len(), data.len());
    for (i, (a, b)) in values.iter().zip(&data).enumerate() {
        assert_eq!(a.to_bits(), b.to_bits(), "value {i}: {a} vs reference {b}");
    }
}

#[test]
fn tile_matches_reference_reader_exactly() {
    let Some(dir) = shared_data("agilent") else { return };
    let dat = dir.join("4_noimage_agg256.dat");
    assert_eq!(Format::detect(&dat), Some(Format::AgilentTile));
    for batch_rows in [1, 5, 8, 64, 4096] {
        check_against_reference(&dat, "tile", batch_rows);
    }
}

#[test]
fn mosaic_matches_reference_reader_exactly() {
    let Some(dir) = shared_data("agilent") else { return };
    for batch_rows in [1, 3, 4, 16, 4096] {
        check_against_reference(&dir.join("5_mosaic_agg1024.dmt"), "mosaic", batch_rows);
    }
}

fn ramp_cube(width: u32, height: u32, points: usize) -> ImageCube {
    let wavenumbers: Vec<f64> = (0..points).map(|i| 1.9285 * (467 + i) as f64).collect();
    let values = (0..width * height).flat_map(|p| (0..points).map(move |b| p as f32 * 10.0 + b as f32 * 0.25)).collect();
    ImageCube { width, height, wavenumbers, values }
}

fn read_cube(path: &Path, batch_rows: usize) -> ImageCube {
    let (h, w, _, wavenumbers, values) =
        collect_image(io::open(path, &ReadOptions { batch_rows, sample: "x".into(), window: None, bands: None }).unwrap());
    ImageCube { width: w, height: h, wavenumbers, values }
}

#[test]
fn mosaic_round_trip_places_tiles_like_the_instrument() {
    let dir = tempfile::tempdir().unwrap();
    let cube = ramp_cube(12, 8, 5); // 3 × 2 tiles of 4 × 4
    let dmt = dir.path().join("core.dmt");
    agilent::write_mosaic(&dmt, &cube, 4).unwrap();
    // Tile YYYY counts from the bottom: tile (0, 0) holds the bottom-left block.
    let bottom_left = std::fs::read(dir.path().join("core_0000_0000.dmd")).unwrap();
    let first = f32::from_le_bytes(bottom_left[1020..1024].try_into().unwrap());
    assert_eq!(first, cube.spectrum(0, 4)[0]);
    for batch_rows in [1, 4, 7, 1000] {
        let back = read_cube(&dmt, batch_rows);
        assert_eq!(back.width, 12);
        assert_eq!(back.height, 8);
        assert_eq!(back.values, cube.values);
        for (a, b) in back.wavenumbers.iter().zip(&cube.wavenumbers) {
            assert!((a - b).abs() < 1e-9 * b);
        }
    }
}

#[test]
fn tile_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let cube = ramp_cube(6, 6, 3);
    let dat = dir.path().join("t.dat");
    agilent::write_tile(&dat, &cube).unwrap();
    assert_eq!(read_cube(&dat, 5).values, cube.values);
}

#[test]
fn writer_refuses_axes_it_cannot_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut cube = ramp_cube(4, 4, 3);
    cube.wavenumbers = vec![1000.0, 1001.0, 1005.0];
    assert!(agilent::write_mosaic(&dir.path().join("a.dmt"), &cube, 4).is_err());
    let cube = ramp_cube(6, 4, 3);
    assert!(agilent::write_mosaic(&dir.path().join("b.dmt"), &cube, 4).is_err(), "6 px is not a multiple of 4");
}

fn open_err(path: &Path) -> ReadError {
    match io::open(path, &ReadOptions::new("s")) {
        Ok(mut r) => r.find_map(|b| b.err()).expect("an error while reading"),
        Err(e) => e,
    }
}

#[test]
fn hostile_tiles_give_specific_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cube = ramp_cube(4, 4, 3);
    let dat = dir.path().join("t.dat");
    agilent::write_tile(&dat, &cube).unwrap();
    let bsp = dir.path().join("t.bsp");
    let good_header = std::fs::read(&bsp).unwrap();

    // Truncated data: 4×4×3 + 255 floats minus the last value is no square FPA.
    let full = std::fs::read(&dat).unwrap();
    std::fs::write(&dat, &full[..full.len() - 4]).unwrap();
    let e = open_err(&dat);
    assert!(e.to_string().contains("divide") || e.to_string().contains("square"), "{e}");
    // Only the preamble.
    std::fs::write(&dat, &full[..1000]).unwrap();
    assert!(matches!(open_err(&dat), ReadError::Truncated { .. }));
    std::fs::write(&dat, &full).unwrap();

    // A header claiming a huge number of points.
    let mut h = good_header.clone();
    h[2236..2240].copy_from_slice(&i32::MAX.to_le_bytes());
    std::fs::write(&bsp, &h).unwrap();
    assert!(matches!(open_err(&dat), ReadError::Header { ref field, .. } if field == "number of points"));
    // NaN spacing.
    let mut h = good_header.clone();
    h[2216..2224].copy_from_slice(&f64::NAN.to_le_bytes());
    std::fs::write(&bsp, &h).unwrap();
    assert!(matches!(open_err(&dat), ReadError::Header { ref field, .. } if field == "point spacing"));
    // A header too short to hold the fields: the header is named, not the data file.
    std::fs::write(&bsp, &good_header[..100]).unwrap();
    let e = open_err(&dat).to_string();
    assert!(e.contains("t.bsp") && e.contains("header file is truncated") && !e.contains("data file"), "{e}");
}

#[test]
fn mosaic_with_a_missing_or_short_tile_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let cube = ramp_cube(8, 8, 3);
    let dmt = dir.path().join("m.dmt");
    agilent::write_mosaic(&dmt, &cube, 4).unwrap();
    let t = dir.path().join("m_0001_0001.dmd");
    let bytes = std::fs::read(&t).unwrap();
    std::fs::remove_file(&t).unwrap();
    let e = open_err(&dmt);
    assert!(e.to_string().contains("missing tile(s) 0001_0001"), "{e}");
    std::fs::write(&t, &bytes[..bytes.len() - 8]).unwrap();
    assert!(matches!(open_err(&dmt), ReadError::Truncated { .. }));
}

/// A tile cut while the mosaic is being read (tiles are read through a mapping, where the cut
/// raises a bus error): the reader ends with a `Truncated` item naming the tile.
#[test]
fn tile_cut_while_reading_is_truncated_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let cube = ramp_cube(64, 64, 40);
    let dmt = dir.path().join("m.dmt");
    agilent::write_mosaic(&dmt, &cube, 32).unwrap();
    let mut reader =
        AgilentReader::open_mosaic(&dmt, &ReadOptions { batch_rows: 64, sample: "m".into(), window: None, bands: None }).unwrap();
    assert!(reader.next().unwrap().is_ok());
    // The next tile in reading order after the top-left one: top row (y counted from the bottom).
    let tile = dir.path().join("m_0001_0001.dmd");
    let full = std::fs::metadata(&tile).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&tile).unwrap().set_len(8192).unwrap();
    let items: Vec<_> = reader.by_ref().collect();
    let err = items.last().expect("an error item").as_ref().unwrap_err();
    assert!(matches!(err, ReadError::Truncated { expected, actual: 8192, path } if *expected == full && *path == tile), "{err:?}");
    assert!(reader.next().is_none(), "the stream ends after the error");
}

#[test]
fn reader_is_bounded_by_batch_rows() {
    let dir = tempfile::tempdir().unwrap();
    let cube = ramp_cube(16, 16, 4);
    let dmt = dir.path().join("m.dmt");
    agilent::write_mosaic(&dmt, &cube, 8).unwrap();
    let reader = AgilentReader::open_mosaic(&dmt, &ReadOptions { batch_rows: 20, sample: "m".into(), window: None, bands: None }).unwrap();
    assert_eq!(reader.info().n_spectra, 256);
    for b in reader {
        assert!(b.unwrap().num_rows() <= 20);
    }
}
