//! Parquet and Orange CSV spectra tables: round trips, what pyarrow users build, the real
//! collagen table, and bad tables.
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, DictionaryArray, Float64Builder, Int64Array, ListBuilder, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int32Type, Schema};
use ftirflow::io::parquet::{write_cube, AtomicParquetWriter};
use ftirflow::io::{self, ImageCube, ReadError, ReadOptions};
use ftirflow::operators::schema::{axis_metadata, SpectraLayout};

use crate::common::shared_data;

fn cube() -> ImageCube {
    ImageCube { width: 3, height: 2, wavenumbers: vec![1800.0, 1700.0, 1600.0, 1500.0], values: (0..24).map(|v| v as f32 * 0.5).collect() }
}

#[test]
fn parquet_cube_round_trip_any_batch_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.parquet");
    write_cube(&path, &cube(), "slide1/A01").unwrap();
    assert!(!io::atomic::partial_path(&path).exists());
    for batch_rows in [1, 4, 100] {
        let batches = io::read_all(&path, &ReadOptions { batch_rows, sample: "ignored".into(), window: None, bands: None }).unwrap();
        assert!(batches.iter().all(|b| b.num_rows() <= batch_rows));
        let mut values = Vec::new();
        for b in &batches {
            let layout = SpectraLayout::validate_batch(b).unwrap();
            assert_eq!(layout.wavenumbers, vec![1800.0, 1700.0, 1600.0, 1500.0]);
            assert_eq!(b.column(layout.sample).as_string::<i32>().value(0), "slide1/A01");
            values.extend_from_slice(SpectraLayout::values(b).unwrap());
        }
        assert_eq!(values, cube().values);
    }
}

/// A table shaped the way pyarrow builds it by default: int64 coordinates, a dictionary sample,
/// variable-size lists of float64, the axis in the metadata.
#[test]
fn parquet_from_pyarrow_style_columns_is_normalized() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("py.parquet");
    let mut lb = ListBuilder::new(Float64Builder::new());
    for r in 0..3 {
        for b in 0..2 {
            lb.values().append_value((r * 2 + b) as f64);
        }
        lb.append(true);
    }
    let spectrum: ArrayRef = Arc::new(lb.finish());
    let sample: DictionaryArray<Int32Type> = vec!["a", "a", "b"].into_iter().collect();
    let schema = Arc::new(Schema::new_with_metadata(
        vec![
            Field::new("sample", sample.data_type().clone(), true),
            Field::new("x", DataType::Int64, true),
            Field::new("y", DataType::Int64, true),
            Field::new("spectrum", spectrum.data_type().clone(), true),
            Field::new("note", DataType::Utf8, true),
        ],
        axis_metadata(&[1000.0, 1010.0]),
    ));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(sample),
            Arc::new(Int64Array::from(vec![0, 1, 0])),
            Arc::new(Int64Array::from(vec![5, 5, 6])),
            spectrum,
            Arc::new(StringArray::from(vec!["p", "q", "r"])),
        ],
    )
    .unwrap();
    let mut w = AtomicParquetWriter::create(&path, schema, vec![]).unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();
    let out = io::read_all(&path, &ReadOptions::new("x")).unwrap();
    let b = &out[0];
    let layout = SpectraLayout::validate_batch(b).unwrap();
    assert_eq!(b.column(layout.sample).as_string::<i32>().value(2), "b");
    assert_eq!(b.column(layout.y).as_primitive::<arrow::datatypes::UInt32Type>().value(2), 6);
    assert_eq!(SpectraLayout::values(b).unwrap(), &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_eq!(b.column_by_name("note").unwrap().as_string::<i32>().value(1), "q");
}

pub fn write_table(path: &std::path::Path, schema: Arc<Schema>, cols: Vec<ArrayRef>) {
    let batch = RecordBatch::try_new(Arc::clone(&schema), cols).unwrap();
    let mut w = AtomicParquetWriter::create(path, schema, vec![]).unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();
}

#[test]
fn bad_parquet_tables_are_named() {
    let dir = tempfile::tempdir().unwrap();
    // No axis.
    let p = dir.path().join("noaxis.parquet");
    let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
    write_table(&p, schema, vec![Arc::new(Int64Array::from(vec![1]))]);
    let e = io::open(&p, &ReadOptions::new("s")).err().unwrap();
    assert!(e.to_string().contains("no `ftirflow:wavenumbers`"), "{e}");
    // Axis but no spectrum column.
    let p = dir.path().join("nospec.parquet");
    let schema = Arc::new(Schema::new_with_metadata(vec![Field::new("x", DataType::Int64, false)], axis_metadata(&[1.0])));
    write_table(&p, schema, vec![Arc::new(Int64Array::from(vec![1]))]);
    let e = io::open(&p, &ReadOptions::new("s")).err().unwrap();
    assert!(e.to_string().contains("missing column `spectrum`"), "{e}");
    // Negative coordinate.
    let p = dir.path().join("neg.parquet");
    let mut lb = ListBuilder::new(Float64Builder::new());
    lb.values().append_value(1.0);
    lb.append(true);
    let spectrum: ArrayRef = Arc::new(lb.finish());
    let schema = Arc::new(Schema::new_with_metadata(
        vec![Field::new("x", DataType::Int64, false), Field::new("spectrum", spectrum.data_type().clone(), true)],
        axis_metadata(&[1.0]),
    ));
    write_table(&p, schema, vec![Arc::new(Int64Array::from(vec![-3])), spectrum]);
    let e = io::read_all(&p, &ReadOptions::new("s")).unwrap_err();
    assert!(e.to_string().contains("column `x` is not a valid pixel coordinate"), "{e}");
    // Not Parquet at all.
    let p = dir.path().join("junk.parquet");
    std::fs::write(&p, b"this is not parquet").unwrap();
    assert!(matches!(io::open(&p, &ReadOptions::new("s")), Err(ReadError::Format { .. })));
}

#[test]
fn orange_collagen_table_reads_completely() {
    let Some(dir) = shared_data("collagen") else { return };
    let batches =
        io::read_all(&dir.join("collagen.csv"), &ReadOptions { batch_rows: 100, sample: "collagen".into(), window: None, bands: None })
            .unwrap();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 731);
    let layout = SpectraLayout::validate_batch(&batches[0]).unwrap();
    assert_eq!(layout.n_points(), 234);
    assert!((layout.wavenumbers[0] - 1801.264).abs() < 1e-9);
    assert!((layout.wavenumbers[233] - 902.5606).abs() < 1e-9);
    let mut counts = std::collections::BTreeMap::new();
    for b in &batches {
        let c = b.column_by_name("class").unwrap().as_string::<i32>().clone();
        for i in 0..c.len() {
            *counts.entry(c.value(i).to_string()).or_insert(0) += 1;
        }
        assert!(SpectraLayout::values(b).unwrap().iter().all(|v| v.is_finite()));
    }
    let expected: std::collections::BTreeMap<String, i32> =
        [("collagen", 195), ("glycogen", 212), ("lipids", 214), ("DNA", 110)].iter().map(|(k, v)| (k.to_string(), *v)).collect();
    assert_eq!(counts, expected);
    // First value of the first row, as in the file.
    assert_eq!(SpectraLayout::values(&batches[0]).unwrap()[0], 0.117);
}

#[test]
fn orange_one_row_header_metas_and_missing_values() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.csv");
    std::fs::write(&p, "class,patient,map_x,map_y,1000,1002\nCA,p1,3,4,0.5,?\nAT,p2,0,1,1e-1,0.25\n").unwrap();
    let batches = io::read_all(&p, &ReadOptions::new("tbl")).unwrap();
    let b = &batches[0];
    let layout = SpectraLayout::validate_batch(b).unwrap();
    assert_eq!(layout.wavenumbers, vec![1000.0, 1002.0]);
    let v = SpectraLayout::values(b).unwrap();
    assert_eq!(v[0], 0.5);
    assert!(v[1].is_nan());
    assert_eq!(b.column(layout.x).as_primitive::<arrow::datatypes::UInt32Type>().value(0), 3);
    assert_eq!(b.column_by_name("class").unwrap().as_string::<i32>().value(1), "AT");
    assert_eq!(b.column_by_name("patient").unwrap().as_string::<i32>().value(0), "p1");
}

#[test]
fn orange_bad_tables_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.csv");
    std::fs::write(&p, "class,1000,1002\nCA,0.5,abc\n").unwrap();
    let e = io::read_all(&p, &ReadOptions::new("t")).unwrap_err();
    assert!(e.to_string().contains("data row 1, column 3: `abc` is not a number"), "{e}");
    std::fs::write(&p, "class,name\nCA,x\n").unwrap();
    assert!(io::open(&p, &ReadOptions::new("t")).err().unwrap().to_string().contains("no spectral columns"));
    std::fs::write(&p, "1000,1000\n1,2\n").unwrap();
    assert!(io::open(&p, &ReadOptions::new("t")).err().unwrap().to_string().contains("monotonic"));
    std::fs::write(&p, "").unwrap();
    assert!(io::open(&p, &ReadOptions::new("t")).err().unwrap().to_string().contains("empty"));
}
