//! ENVI reader and writer: round trips over every layout (interleave × data type × byte order ×
//! header offset × batch size, plus random shapes), the instrument's own ENVI headers against the
//! reference values, header parsing details, and hostile or broken input.
use std::fs;
use std::path::{Path, PathBuf};

use arrow::array::AsArray;
use arrow::datatypes::UInt32Type;
use ftirflow::io::envi::{
    data_file_for, header_for, parse_header, write_cube, ByteOrder, EnviReader, EnviWriteOptions, Interleave, ValueType, WavelengthUnits,
};
use ftirflow::io::{Format, ImageCube, ReadError, ReadOptions, SpectraReader, Window};
use ftirflow::operators::schema::{sample_column, SpectraLayout};
use proptest::prelude::*;

use crate::common::shared_data;

const SAMPLE: &str = "slide1/A01";

/// What a reader yielded, concatenated.
#[derive(Debug, Default)]
struct Read {
    xy: Vec<(u32, u32)>,
    values: Vec<f32>,
    axis: Vec<f64>,
    batch_sizes: Vec<usize>,
}

/// Reads a whole image, checking every batch against the spectra contract.
fn read(path: &Path, batch_rows: usize) -> Result<Read, ReadError> {
    let opts = ReadOptions { batch_rows, sample: SAMPLE.to_string(), window: None, bands: None };
    let reader = EnviReader::open(path, &opts)?;
    let schema = reader.schema();
    let info = reader.info().clone();
    assert_eq!(info.format, Format::Envi);
    let mut out = Read { axis: info.wavenumbers.clone(), ..Read::default() };
    for batch in reader {
        let batch = batch?;
        assert_eq!(batch.schema(), schema, "every batch has the declared schema");
        let layout = SpectraLayout::validate_batch(&batch).expect("valid spectra batch");
        // The schema carries the axis as JSON; serde_json without its `float_roundtrip` feature may
        // parse it back one ulp off, so compare closely rather than bit for bit.
        assert_eq!(layout.wavenumbers.len(), info.wavenumbers.len());
        for (a, b) in layout.wavenumbers.iter().zip(&info.wavenumbers) {
            assert!((a - b).abs() <= 1e-9 * b.abs(), "schema axis {a} vs header axis {b}");
        }
        assert!(batch.num_rows() >= 1 && batch.num_rows() <= batch_rows, "batch of {} rows", batch.num_rows());
        let samples = sample_column(&batch).expect("sample column");
        assert!(samples.iter().all(|s| s == Some(SAMPLE)));
        let xs = batch.column(layout.x).as_primitive::<UInt32Type>();
        let ys = batch.column(layout.y).as_primitive::<UInt32Type>();
        out.xy.extend(xs.values().iter().zip(ys.values().iter()).map(|(&x, &y)| (x, y)));
        out.values.extend_from_slice(SpectraLayout::values(&batch).expect("values"));
        out.batch_sizes.push(batch.num_rows());
    }
    assert_eq!(out.xy.len() as u64, info.n_spectra);
    Ok(out)
}

/// Float equality that treats all NaNs as equal and tells -0.0 from 0.0.
fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

fn assert_values(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: value count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(same(*g, *w), "{what}: value {i} is {g}, expected {w}");
    }
}

/// Row-major pixel coordinates of a `width × height` image.
fn raster(width: u32, height: u32) -> Vec<(u32, u32)> {
    (0..height).flat_map(|y| (0..width).map(move |x| (x, y))).collect()
}

/// Values representable exactly in `dt` (integer-valued and in range for integers; floats with
/// NaN, ±inf and -0.0 mixed in, which the reader passes on as they are).
pub fn values_for(dt: ValueType, n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|i| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let r = (state >> 33) as i64;
            match dt {
                ValueType::U8 => (r % 256) as f32,
                ValueType::I16 => (r % 65536 - 32768) as f32,
                ValueType::U16 => (r % 65536) as f32,
                ValueType::I32 => (r % 16_000_000 - 8_000_000) as f32,
                ValueType::F32 | ValueType::F64 => match i % 23 {
                    3 => f32::NAN,
                    5 => f32::INFINITY,
                    7 => f32::NEG_INFINITY,
                    11 => -0.0,
                    _ => (r % 200_000) as f32 * 1.37e-4 - 13.5,
                },
            }
        })
        .collect()
}

fn axis(n: usize) -> Vec<f64> {
    (0..n).map(|k| 3999.123456789 - 1.928_571_428_571_4 * k as f64).collect()
}

fn cube(width: u32, height: u32, bands: usize, dt: ValueType, seed: u64) -> ImageCube {
    ImageCube { width, height, wavenumbers: axis(bands), values: values_for(dt, width as usize * height as usize * bands, seed) }
}

#[test]
fn round_trip_every_layout_type_order_offset_and_batch_size() {
    let dir = tempfile::tempdir().unwrap();
    let (w, h, n) = (5u32, 3u32, 7usize);
    let mut files = 0;
    for interleave in Interleave::ALL {
        for data_type in ValueType::ALL {
            for byte_order in ByteOrder::ALL {
                for header_offset in [0u64, 1020] {
                    let c = cube(w, h, n, data_type, files);
                    let opts = EnviWriteOptions { interleave, data_type, byte_order, header_offset };
                    let hdr = dir.path().join(format!("img{files}.hdr"));
                    let data = write_cube(&hdr, &c, &opts).unwrap();
                    files += 1;
                    assert_eq!(data, hdr.with_extension("img"));
                    assert_eq!(
                        fs::metadata(&data).unwrap().len(),
                        header_offset + (w * h) as u64 * n as u64 * data_type.size() as u64,
                        "data file size for {opts:?}"
                    );
                    let header = parse_header(&hdr).unwrap();
                    assert_eq!((header.samples, header.lines, header.bands, header.header_offset), (w, h, n as u32, header_offset));
                    assert_eq!((header.data_type, header.interleave, header.byte_order), (data_type, interleave, byte_order));
                    assert_eq!(header.wavelength_units, WavelengthUnits::Wavenumber);
                    for batch_rows in [1usize, 7, 1000] {
                        let what = format!("{opts:?}, batch_rows {batch_rows}");
                        let got = read(&hdr, batch_rows).unwrap();
                        assert_eq!(got.axis, c.wavenumbers, "{what}: axis written and read back exactly");
                        assert_eq!(got.xy, raster(w, h), "{what}: pixel order");
                        assert_values(&got.values, &c.values, &what);
                        let expected_sizes: Vec<usize> = match batch_rows {
                            1 => vec![1; 15],
                            7 => vec![7, 7, 1],
                            _ => vec![15],
                        };
                        assert_eq!(got.batch_sizes, expected_sizes, "{what}");
                    }
                    // Opening the data file instead of the header gives the same image.
                    let via_data = read(&data, 4).unwrap();
                    assert_values(&via_data.values, &c.values, "opened through the data file");
                }
            }
        }
    }
    assert_eq!(files, 3 * 6 * 2 * 2);
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !(n.ends_with(".hdr") || n.ends_with(".img")))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind: {leftovers:?}");
}

/// The ENVI byte encoding of one value, written out independently of the library.
fn hand_encode(v: f32, dt: ValueType, big: bool) -> Vec<u8> {
    macro_rules! b {
        ($x:expr) => {
            if big {
                $x.to_be_bytes().to_vec()
            } else {
                $x.to_le_bytes().to_vec()
            }
        };
    }
    match dt {
        ValueType::U8 => vec![v as u8],
        ValueType::I16 => b!(v as i16),
        ValueType::U16 => b!(v as u16),
        ValueType::I32 => b!(v as i32),
        ValueType::F32 => b!(v),
        ValueType::F64 => b!(v as f64),
    }
}

/// The values of `c` in the file order of `il`, by the ENVI definitions.
fn hand_layout(c: &ImageCube, il: Interleave) -> Vec<f32> {
    let (w, h, n) = (c.width, c.height, c.n_points());
    let mut out = Vec::new();
    match il {
        Interleave::Bip => out.extend_from_slice(&c.values),
        Interleave::Bil => {
            for y in 0..h {
                for b in 0..n {
                    for x in 0..w {
                        out.push(c.spectrum(x, y)[b]);
                    }
                }
            }
        }
        Interleave::Bsq => {
            for b in 0..n {
                for y in 0..h {
                    for x in 0..w {
                        out.push(c.spectrum(x, y)[b]);
                    }
                }
            }
        }
    }
    out
}

#[test]
fn reader_and_writer_agree_with_hand_built_files() {
    // Guards against symmetric mistakes that a write → read round trip cannot see.
    let dir = tempfile::tempdir().unwrap();
    let (w, h, n) = (3u32, 2u32, 4usize);
    for il in Interleave::ALL {
        for dt in ValueType::ALL {
            for big in [false, true] {
                let c = cube(w, h, n, dt, 3);
                let offset = 7usize;
                let mut bytes = vec![0u8; offset];
                for v in hand_layout(&c, il) {
                    bytes.extend(hand_encode(v, dt, big));
                }
                let tag = format!("{}_{}_{}", il.name(), dt.name(), big as u8);
                // The writer produces exactly these bytes.
                let order = if big { ByteOrder::Big } else { ByteOrder::Little };
                let opts = EnviWriteOptions { interleave: il, data_type: dt, byte_order: order, header_offset: offset as u64 };
                let data = write_cube(&dir.path().join(format!("w_{tag}.hdr")), &c, &opts).unwrap();
                assert_eq!(fs::read(&data).unwrap(), bytes, "{tag}: writer bytes");
                // The reader reads them with a header written by hand.
                let list: Vec<String> = c.wavenumbers.iter().map(|v| v.to_string()).collect();
                let text = format!(
                    "ENVI\nsamples = {w}\nlines = {h}\nbands = {n}\nheader offset = {offset}\ndata type = {}\n\
                     interleave = {}\nbyte order = {}\nwavelength = {{{}}}\n",
                    dt.code(),
                    il.name(),
                    big as u8,
                    list.join(",")
                );
                fs::write(dir.path().join(format!("h_{tag}.hdr")), text).unwrap();
                fs::write(dir.path().join(format!("h_{tag}.raw")), &bytes).unwrap();
                let got = read(&dir.path().join(format!("h_{tag}.hdr")), 4).unwrap();
                assert_values(&got.values, &c.values, &tag);
            }
        }
    }
}

#[test]
fn round_trip_many_bands_and_wide_lines() {
    // More than 16 bands and lines longer than 16 pixels take the tiled transpose of bsq/bil;
    // batch sizes that are not multiples of 16 leave partial tiles.
    let dir = tempfile::tempdir().unwrap();
    let (w, h, n) = (41u32, 3u32, 37usize);
    for interleave in Interleave::ALL {
        for byte_order in ByteOrder::ALL {
            let c = cube(w, h, n, ValueType::F32, 77);
            let hdr = dir.path().join(format!("wide_{}_{}.hdr", interleave.name(), byte_order.code()));
            write_cube(&hdr, &c, &EnviWriteOptions { interleave, byte_order, ..Default::default() }).unwrap();
            for batch_rows in [1usize, 16, 17, 40, 41, 64, 100, 123] {
                let got = read(&hdr, batch_rows).unwrap();
                assert_eq!(got.xy, raster(w, h));
                assert_values(&got.values, &c.values, &format!("{interleave:?} {byte_order:?} batch_rows {batch_rows}"));
            }
        }
    }
}

#[test]
fn info_and_generic_open() {
    let dir = tempfile::tempdir().unwrap();
    let c = cube(4, 2, 3, ValueType::I16, 9);
    let hdr = dir.path().join("core.hdr");
    write_cube(&hdr, &c, &EnviWriteOptions { data_type: ValueType::I16, ..Default::default() }).unwrap();
    let reader = ftirflow::io::open(&hdr, &ReadOptions::new("x")).unwrap();
    let info = reader.info();
    assert_eq!(info.format, Format::Envi);
    assert_eq!((info.width, info.height, info.n_spectra), (Some(4), Some(2), 8));
    assert_eq!(info.data_bytes, 4 * 2 * 3 * 2);
    assert_eq!(info.wavenumbers, c.wavenumbers);
    let batches: Vec<_> = reader.collect::<Result<_, _>>().unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 8);
    let zero = ReadOptions { batch_rows: 0, sample: "x".into(), window: None, bands: None };
    assert!(matches!(EnviReader::open(&hdr, &zero), Err(ReadError::Format { .. })));
}

#[test]
fn default_write_options_are_bip_f32_little_no_offset() {
    let d = EnviWriteOptions::default();
    assert_eq!((d.interleave, d.data_type, d.byte_order, d.header_offset), (Interleave::Bip, ValueType::F32, ByteOrder::Little, 0));
    assert_eq!(ValueType::ALL.map(ValueType::code), [1, 2, 3, 4, 5, 12]);
    assert_eq!(ValueType::ALL.map(ValueType::size), [1, 2, 4, 4, 8, 2]);
}

#[test]
fn integer_types_round_and_saturate() {
    let dir = tempfile::tempdir().unwrap();
    let raw = [300.0, -5.0, 2.5, -2.5, 1.4, f32::NAN, 70000.0, -1e10];
    let cases: [(ValueType, [f32; 8]); 4] = [
        (ValueType::U8, [255.0, 0.0, 3.0, 0.0, 1.0, 0.0, 255.0, 0.0]),
        (ValueType::I16, [300.0, -5.0, 3.0, -3.0, 1.0, 0.0, 32767.0, -32768.0]),
        (ValueType::U16, [300.0, 0.0, 3.0, 0.0, 1.0, 0.0, 65535.0, 0.0]),
        (ValueType::I32, [300.0, -5.0, 3.0, -3.0, 1.0, 0.0, 70000.0, i32::MIN as f32]),
    ];
    for (dt, want) in cases {
        let c = ImageCube { width: 2, height: 1, wavenumbers: axis(4), values: raw.to_vec() };
        let hdr = dir.path().join(format!("sat_{}.hdr", dt.name()));
        write_cube(&hdr, &c, &EnviWriteOptions { data_type: dt, ..Default::default() }).unwrap();
        assert_values(&read(&hdr, 10).unwrap().values, &want, dt.name());
    }
}

#[test]
fn writer_rejects_bad_cubes() {
    let dir = tempfile::tempdir().unwrap();
    let hdr = dir.path().join("bad.hdr");
    let short = ImageCube { width: 2, height: 2, wavenumbers: axis(3), values: vec![0.0; 11] };
    assert!(write_cube(&hdr, &short, &EnviWriteOptions::default()).is_err());
    let flat = ImageCube { width: 1, height: 1, wavenumbers: vec![1000.0, 1000.0], values: vec![0.0; 2] };
    assert!(write_cube(&hdr, &flat, &EnviWriteOptions::default()).is_err());
    let empty = ImageCube { width: 0, height: 3, wavenumbers: axis(2), values: vec![] };
    assert!(write_cube(&hdr, &empty, &EnviWriteOptions::default()).is_err());
    let ok = ImageCube { width: 1, height: 1, wavenumbers: axis(2), values: vec![1.0, 2.0] };
    assert!(write_cube(&dir.path().join("x.img"), &ok, &EnviWriteOptions::default()).is_err());
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "nothing written for rejected cubes");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]
    #[test]
    fn round_trip_random_shapes(
        width in 1u32..9, height in 1u32..9, bands in 1usize..20,
        il in 0usize..3, dt in 0usize..6, big in any::<bool>(), offset in prop_oneof![Just(0u64), 1u64..300],
        batch_rows in 1usize..100, seed in any::<u64>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let data_type = ValueType::ALL[dt];
        let opts = EnviWriteOptions {
            interleave: Interleave::ALL[il],
            data_type,
            byte_order: if big { ByteOrder::Big } else { ByteOrder::Little },
            header_offset: offset,
        };
        let c = cube(width, height, bands, data_type, seed);
        let hdr = dir.path().join("p.hdr");
        write_cube(&hdr, &c, &opts).unwrap();
        let got = read(&hdr, batch_rows).unwrap();
        prop_assert_eq!(&got.axis, &c.wavenumbers);
        prop_assert_eq!(&got.xy, &raster(width, height));
        prop_assert_eq!(got.values.len(), c.values.len());
        for (i, (g, w)) in got.values.iter().zip(&c.values).enumerate() {
            prop_assert!(same(*g, *w), "value {} is {}, expected {}", i, g, w);
        }
        let n = (width * height) as usize;
        prop_assert_eq!(got.batch_sizes.len(), n.div_ceil(batch_rows));
    }
}

/// Compares an instrument-written ENVI file with the reference values.
fn check_reference(hdr_name: &str, key: &str, data_name: &str) {
    let Some(dir) = shared_data("agilent") else { return };
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("expected_agilent_format_0.4.7.json")).unwrap()).unwrap();
    let expected = &json[key];
    let shape: Vec<u64> = expected["shape_rows_cols_points"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    let (rows, cols, points) = (shape[0] as u32, shape[1] as u32, shape[2] as usize);
    let wavenumbers: Vec<f64> = expected["wavenumbers"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let values: Vec<f32> = expected["data_row_major"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();

    let hdr = dir.join(hdr_name);
    let header = parse_header(&hdr).unwrap();
    assert_eq!((header.lines, header.samples, header.bands as usize), (rows, cols, points));
    assert_eq!((header.header_offset, header.interleave, header.data_type), (1020, Interleave::Bsq, ValueType::F32));
    let data = data_file_for(&hdr).unwrap();
    assert_eq!(data.file_name().unwrap(), data_name, "data file found beside {hdr_name}");
    for batch_rows in [1, 5, 4096] {
        let got = read(&hdr, batch_rows).unwrap();
        assert_eq!(got.axis.len(), wavenumbers.len());
        for (g, w) in got.axis.iter().zip(&wavenumbers) {
            assert!((g - w).abs() < 1e-4, "wavenumber {g} vs {w}");
        }
        assert_eq!(got.xy, raster(cols, rows));
        // data_row_major index = (row * cols + col) * points + band, i.e. the reader's order.
        assert_values(&got.values, &values, &format!("{key}, batch_rows {batch_rows}"));
    }
    // The same image, opened through its data file.
    assert_values(&read(&data, 7).unwrap().values, &values, "opened through the data file");
}

#[test]
fn agilent_tile_envi_header_matches_reference() {
    check_reference("4_noimage_agg256.hdr", "tile", "4_noimage_agg256.dat");
}

#[test]
fn agilent_mosaic_envi_header_matches_reference() {
    // The header is `5_mosaic_…`, the data file `5_Mosaic_…`: found ignoring case.
    check_reference("5_mosaic_agg1024.hdr", "mosaic", "5_Mosaic_agg1024.dat");
}

// ---------------------------------------------------------------------------------------------
// Header parsing and file discovery.

/// A valid header text for `samples × lines × bands` f32 bsq data, with `extra` lines appended.
fn header_text(samples: &str, lines: &str, bands: usize, extra: &str) -> String {
    let list: Vec<String> = axis(bands).iter().map(|w| w.to_string()).collect();
    format!(
        "ENVI\nsamples = {samples}\nlines = {lines}\nbands = {bands}\ndata type = 4\ninterleave = bsq\n\
         byte order = 0\n{extra}wavelength = {{{}}}\n",
        list.join(", ")
    )
}

/// Writes `name.hdr` with `text` and `name.dat` with `data_len` bytes of f32 ramp values.
fn fixture(dir: &Path, name: &str, text: &str, data_len: usize) -> PathBuf {
    let hdr = dir.join(format!("{name}.hdr"));
    fs::write(&hdr, text).unwrap();
    let data: Vec<u8> = (0..data_len / 4).flat_map(|i| (i as f32).to_le_bytes()).chain(std::iter::repeat_n(0, data_len % 4)).collect();
    fs::write(dir.join(format!("{name}.dat")), data).unwrap();
    hdr
}

#[test]
fn header_syntax_braces_case_comments_units() {
    let dir = tempfile::tempdir().unwrap();
    let text = "ENVI\r\n; a comment line\r\nDescription = {\r\n  multi-line\r\n  text = with equals }\r\n\
                SAMPLES   =  2\r\nLines = 1\r\nbands= 3\r\nHeader  Offset = 4\r\nData Type = 2\r\nINTERLEAVE = BIL\r\n\
                byte order = 1\r\nwavelength units = Micrometers\r\nwavelength = {\r\n 2.5,\r\n 5.0 ,\r\n 10 ,\r\n}\r\n";
    let hdr = dir.path().join("syn.hdr");
    fs::write(&hdr, text).unwrap();
    let h = parse_header(&hdr).unwrap();
    assert_eq!((h.samples, h.lines, h.bands, h.header_offset), (2, 1, 3, 4));
    assert_eq!((h.data_type, h.interleave, h.byte_order), (ValueType::I16, Interleave::Bil, ByteOrder::Big));
    assert_eq!(h.wavelength_units, WavelengthUnits::Micrometers);
    assert_eq!(h.wavenumbers, vec![4000.0, 2000.0, 1000.0]);
    assert_eq!(h.description.as_deref(), Some("multi-line\ntext = with equals"));
    assert_eq!(h.fields.get("header offset").map(String::as_str), Some("4"));

    // bil, big-endian i16 after a 4-byte offset: line 0 = band0 [x0,x1], band1 [..], band2 [..].
    let stored: [i16; 6] = [1, 2, -3, -4, 500, 600];
    let mut bytes = vec![9u8; 4];
    bytes.extend(stored.iter().flat_map(|v| v.to_be_bytes()));
    bytes.extend([7u8; 5]); // extra trailing bytes are accepted and ignored
    fs::write(dir.path().join("syn"), &bytes).unwrap(); // `syn` (no extension) comes first
    fs::write(dir.path().join("syn.img"), b"decoy").unwrap();
    let got = read(&hdr, 1).unwrap();
    assert_eq!(got.values, vec![1.0, -3.0, 500.0, 2.0, -4.0, 600.0]);
    assert_eq!(got.xy, vec![(0, 0), (1, 0)]);

    let nm = header_text("1", "1", 2, "wavelength units = nanometers\n").replace(&axis(2)[0].to_string(), "2500");
    let nm = nm.replace(&axis(2)[1].to_string(), "5000");
    let nm_hdr = fixture(dir.path(), "nm", &nm, 8);
    assert_eq!(parse_header(&nm_hdr).unwrap().wavenumbers, vec![4000.0, 2000.0]);
}

#[test]
fn header_and_data_file_discovery() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let c = cube(2, 2, 3, ValueType::F32, 1);
    // foo.img.hdr describes foo.img.
    let data = write_cube(&p.join("a.hdr"), &c, &EnviWriteOptions::default()).unwrap();
    fs::rename(p.join("a.hdr"), p.join("a.img.hdr")).unwrap();
    assert_eq!(header_for(&data), Some(p.join("a.img.hdr")));
    assert_eq!(data_file_for(&p.join("a.img.hdr")).unwrap(), data);
    assert_values(&read(&p.join("a.img.hdr"), 3).unwrap().values, &c.values, "foo.img.hdr");
    // Upper-case extensions; extension order img before dat.
    let data_b = write_cube(&p.join("b.hdr"), &c, &EnviWriteOptions::default()).unwrap();
    fs::rename(&data_b, p.join("b.DAT")).unwrap();
    assert_eq!(data_file_for(&p.join("b.hdr")).unwrap(), p.join("b.DAT"));
    assert_eq!(header_for(&p.join("b.DAT")), Some(p.join("b.hdr")));
    fs::write(p.join("b.img"), b"").unwrap();
    assert_eq!(data_file_for(&p.join("b.hdr")).unwrap(), p.join("b.img"));
    // No header for a lone data file.
    fs::write(p.join("lonely.dat"), b"").unwrap();
    assert_eq!(header_for(&p.join("lonely.dat")), None);
    let err = EnviReader::open(&p.join("lonely.dat"), &ReadOptions::new("x")).unwrap_err();
    assert!(matches!(err, ReadError::Format { .. }) && err.to_string().contains("lonely.hdr"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Broken and hostile input: each gives its specific error, never a panic.

fn open_err(hdr: &Path) -> ReadError {
    match EnviReader::open(hdr, &ReadOptions::new("x")) {
        Ok(_) => panic!("{} opened but should not have", hdr.display()),
        Err(e) => e,
    }
}

fn assert_header_err(err: ReadError, want_field: &str, want_reason: &str) {
    match &err {
        ReadError::Header { field, reason, .. } => {
            assert_eq!(field, want_field, "{err}");
            assert!(reason.contains(want_reason), "`{reason}` should mention `{want_reason}`");
        }
        other => panic!("expected a header error on `{want_field}`, got {other:?}"),
    }
}

#[test]
fn truncated_data_file() {
    let dir = tempfile::tempdir().unwrap();
    let hdr = fixture(dir.path(), "t", &header_text("3", "2", 4, ""), 3 * 2 * 4 * 4 - 1);
    match open_err(&hdr) {
        ReadError::Truncated { expected, actual, path } => {
            assert_eq!((expected, actual), (96, 95));
            assert_eq!(path, dir.path().join("t.dat"));
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
    // The header offset counts too: a file shorter than the offset plus the image, but too
    // short for the image alone, is truncated …
    let hdr = fixture(dir.path(), "o", &header_text("3", "2", 4, "header offset = 10\n"), 50);
    assert!(matches!(open_err(&hdr), ReadError::Truncated { expected: 106, actual: 50, .. }));
    // … while one that holds the whole image, or ends before the offset, has a wrong offset,
    // and the error names that field (and the largest offset that would fit).
    for (name, offset, len, fits) in [("o2", 10, 96, 0), ("o3", 10, 100, 4), ("o4", 500, 300, 204)] {
        let hdr = fixture(dir.path(), name, &header_text("3", "2", 4, &format!("header offset = {offset}\n")), len);
        let e = open_err(&hdr);
        assert!(matches!(&e, ReadError::Header { field, .. } if field == "header offset"), "{e:?}");
        assert!(e.to_string().contains(&format!("at most {fits} would fit")) && !e.to_string().contains("truncated"), "{e}");
    }
}

#[test]
fn header_claiming_more_data_than_the_file_holds() {
    let dir = tempfile::tempdir().unwrap();
    let c = cube(4, 3, 5, ValueType::F32, 2);
    let hdr = dir.path().join("m.hdr");
    write_cube(&hdr, &c, &EnviWriteOptions::default()).unwrap();
    let text = fs::read_to_string(&hdr).unwrap().replace("lines = 3", "lines = 300");
    fs::write(&hdr, text).unwrap();
    assert!(matches!(open_err(&hdr), ReadError::Truncated { expected: 24000, actual: 240, .. }));
}

#[test]
fn huge_dimensions_are_rejected_without_allocating() {
    let dir = tempfile::tempdir().unwrap();
    // 10^9 × 10^9 × 9 × 4 bytes overflows 64 bits: a header error.
    let hdr = fixture(dir.path(), "huge", &header_text("1000000000", "1000000000", 9, ""), 64);
    assert_header_err(open_err(&hdr), "samples/lines/bands", "64 bits");
    assert!(parse_header(&hdr).is_err());
    // 10^9 × 10^9 × 1 byte fits 64 bits but not the file: Truncated, nothing allocated.
    let text = header_text("1000000000", "1000000000", 1, "").replace("data type = 4", "data type = 1");
    let hdr = fixture(dir.path(), "big", &text, 64);
    assert!(matches!(open_err(&hdr), ReadError::Truncated { expected: 1_000_000_000_000_000_000, actual: 64, .. }));
    // Beyond u32 and zero.
    let hdr = fixture(dir.path(), "wide", &header_text("10000000000", "1", 1, ""), 4);
    assert_header_err(open_err(&hdr), "samples", "larger than");
    let hdr = fixture(dir.path(), "zero", &header_text("4", "0", 1, ""), 4);
    assert_header_err(open_err(&hdr), "lines", "at least 1");
    // A huge header offset overflows too.
    let hdr = fixture(dir.path(), "off", &header_text("2", "2", 1, "header offset = 18446744073709551615\n"), 16);
    assert_header_err(open_err(&hdr), "samples/lines/bands", "64 bits");
}

#[test]
fn unsupported_data_type_codes() {
    let dir = tempfile::tempdir().unwrap();
    for code in ["7", "99", "6", "14", "0", "-4", "4.0"] {
        let text = header_text("2", "2", 1, "").replace("data type = 4", &format!("data type = {code}"));
        let hdr = fixture(dir.path(), "dt", &text, 64);
        let err = open_err(&hdr);
        let want = if code.parse::<u64>().is_ok() { format!("unsupported data type {code}") } else { "not a non-negative integer".into() };
        assert_header_err(err, "data type", &want);
    }
}

#[test]
fn missing_wavelength_list() {
    let dir = tempfile::tempdir().unwrap();
    let text = "ENVI\nsamples = 2\nlines = 2\nbands = 3\ndata type = 4\ninterleave = bip\n";
    let hdr = fixture(dir.path(), "nowl", text, 48);
    assert_header_err(open_err(&hdr), "wavelength", "missing");
}

#[test]
fn wavelength_count_differs_from_bands() {
    let dir = tempfile::tempdir().unwrap();
    let text = header_text("2", "2", 3, "").replace("bands = 3", "bands = 4");
    let hdr = fixture(dir.path(), "wlc", &text, 64);
    assert_header_err(open_err(&hdr), "wavelength", "lists 3 values but the header has bands = 4");
}

#[test]
fn non_numeric_fields() {
    let dir = tempfile::tempdir().unwrap();
    let hdr = fixture(dir.path(), "abc", &header_text("abc", "2", 1, ""), 64);
    assert_header_err(open_err(&hdr), "samples", "`abc` is not a non-negative integer");
    let hdr = fixture(dir.path(), "neg", &header_text("2", "-2", 1, ""), 64);
    assert_header_err(open_err(&hdr), "lines", "not a non-negative integer");
    let hdr = fixture(dir.path(), "off", &header_text("2", "2", 1, "header offset = lots\n"), 64);
    assert_header_err(open_err(&hdr), "header offset", "lots");
    let text = header_text("2", "2", 2, "").replace(&axis(2)[1].to_string(), "1.0e3x");
    let hdr = fixture(dir.path(), "wlx", &text, 64);
    assert_header_err(open_err(&hdr), "wavelength", "item 1 `1.0e3x` is not a number");
    let hdr = fixture(dir.path(), "bo", &header_text("2", "2", 1, "").replace("byte order = 0", "byte order = 2"), 64);
    assert_header_err(open_err(&hdr), "byte order", "0 (little endian) or 1");
}

#[test]
fn non_finite_or_unordered_wavelengths() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["NaN", "nan", "inf", "-inf"] {
        let text = header_text("2", "2", 3, "").replace(&axis(3)[1].to_string(), bad);
        let hdr = fixture(dir.path(), "wnan", &text, 64);
        assert_header_err(open_err(&hdr), "wavelength", "is not finite");
    }
    let text = header_text("2", "2", 3, "").replace(&axis(3)[2].to_string(), &axis(3)[0].to_string());
    let hdr = fixture(dir.path(), "wmono", &text, 64);
    assert_header_err(open_err(&hdr), "wavelength", "monotonic");
    let text = header_text("2", "2", 3, "wavelength units = Micrometers\n").replace(&axis(3)[1].to_string(), "-1");
    let hdr = fixture(dir.path(), "wneg", &text, 64);
    assert_header_err(open_err(&hdr), "wavelength", "positive");
    let hdr = fixture(dir.path(), "wunit", &header_text("2", "2", 3, "wavelength units = GHz\n"), 64);
    assert_header_err(open_err(&hdr), "wavelength units", "GHz");
}

#[test]
fn missing_envi_magic() {
    let dir = tempfile::tempdir().unwrap();
    let text = header_text("2", "2", 1, "").replacen("ENVI\n", "", 1);
    let hdr = fixture(dir.path(), "magic", &text, 64);
    let err = open_err(&hdr);
    assert!(matches!(err, ReadError::Format { .. }) && err.to_string().contains("first line must be `ENVI`"), "{err}");
    let hdr = fixture(dir.path(), "empty", "", 64);
    assert!(matches!(open_err(&hdr), ReadError::Format { .. }));
    let hdr = fixture(dir.path(), "binary", "\u{0}\u{1}\u{ff}ENVI", 64);
    assert!(matches!(open_err(&hdr), ReadError::Format { .. }));
}

#[test]
fn unknown_interleave_and_missing_fields() {
    let dir = tempfile::tempdir().unwrap();
    let hdr = fixture(dir.path(), "il", &header_text("2", "2", 1, "").replace("interleave = bsq", "interleave = bsx"), 64);
    assert_header_err(open_err(&hdr), "interleave", "unknown interleave `bsx`");
    for field in ["samples", "lines", "bands", "data type", "interleave"] {
        let text: String =
            header_text("2", "2", 1, "").lines().filter(|l| !l.starts_with(&format!("{field} ="))).map(|l| format!("{l}\n")).collect();
        let hdr = fixture(dir.path(), "miss", &text, 64);
        assert_header_err(open_err(&hdr), field, "missing");
    }
    let hdr = fixture(dir.path(), "open", "ENVI\nsamples = 1\nwavelength = { 1, 2,\n 3\n", 64);
    assert_header_err(open_err(&hdr), "wavelength", "never closed");
}

#[test]
fn missing_data_file_lists_what_was_tried() {
    let dir = tempfile::tempdir().unwrap();
    let hdr = dir.path().join("orphan.hdr");
    fs::write(&hdr, header_text("2", "2", 1, "")).unwrap();
    let err = open_err(&hdr);
    assert!(matches!(err, ReadError::Format { .. }), "{err:?}");
    let msg = err.to_string();
    for name in ["orphan,", "orphan.img", "orphan.dat", "orphan.raw", "orphan.bsq", "orphan.bil", "orphan.bip", "orphan.IMG"] {
        assert!(msg.contains(name), "`{msg}` should list {name}");
    }
    assert!(matches!(data_file_for(&hdr), Err(ReadError::Format { .. })));
    // A directory with the data file's name is not a data file.
    fs::create_dir(dir.path().join("orphan.img")).unwrap();
    assert!(matches!(data_file_for(&hdr), Err(ReadError::Format { .. })));
}

#[test]
fn file_shrinking_while_reading_ends_with_an_error_item() {
    let dir = tempfile::tempdir().unwrap();
    for interleave in Interleave::ALL {
        let c = cube(4, 4, 3, ValueType::F32, 5);
        let hdr = dir.path().join(format!("s_{}.hdr", interleave.name()));
        let data = write_cube(&hdr, &c, &EnviWriteOptions { interleave, ..Default::default() }).unwrap();
        let mut reader = EnviReader::open(&hdr, &ReadOptions { batch_rows: 3, sample: "x".into(), window: None, bands: None }).unwrap();
        assert_eq!(reader.next().unwrap().unwrap().num_rows(), 3);
        fs::OpenOptions::new().write(true).open(&data).unwrap().set_len(20).unwrap();
        let mut items = Vec::new();
        for item in reader.by_ref() {
            items.push(item);
        }
        let err = items.pop().expect("an error item").unwrap_err();
        assert!(matches!(err, ReadError::Truncated { expected: 192, actual: 20, .. }), "{interleave:?}: {err:?}");
        assert!(items.iter().all(Result::is_ok), "only the last item is an error");
        assert!(reader.next().is_none(), "the stream ends after the error");
    }
}

/// A file cut by pages while being read (the band-sequential layouts read it through a mapping,
/// where the cut raises a bus error): the reader ends with a `Truncated` item, whole image or
/// window, and the process lives on.
#[test]
fn file_cut_by_pages_while_reading_is_truncated_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let c = cube(64, 64, 24, ValueType::F32, 9);
    for interleave in Interleave::ALL {
        for window in [None, Some(Window::new(5, 3, 40, 50))] {
            let hdr = dir.path().join(format!("p_{}.hdr", interleave.name()));
            let data = write_cube(&hdr, &c, &EnviWriteOptions { interleave, ..Default::default() }).unwrap();
            let full = fs::metadata(&data).unwrap().len();
            let mut reader = EnviReader::open(&hdr, &ReadOptions { batch_rows: 100, sample: "x".into(), window, bands: None }).unwrap();
            assert!(reader.next().unwrap().is_ok());
            fs::OpenOptions::new().write(true).open(&data).unwrap().set_len(3 * 4096).unwrap();
            let items: Vec<_> = reader.by_ref().collect();
            let err = items.last().expect("an error item").as_ref().unwrap_err();
            assert!(
                matches!(err, ReadError::Truncated { expected, actual: 12288, .. } if *expected == full),
                "{interleave:?} {window:?}: {err:?}"
            );
            assert!(reader.next().is_none(), "the stream ends after the error");
        }
    }
}

#[test]
fn oversized_header_file_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = header_text("1", "1", 1, "");
    text.push_str(&"; padding\n".repeat(2 << 20));
    let hdr = fixture(dir.path(), "fat", &text, 4);
    assert!(matches!(open_err(&hdr), ReadError::Format { .. }));
}
