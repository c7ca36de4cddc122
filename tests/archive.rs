//! Archive discovery: one entry per image, companions skipped, stable sample ids.
use ftirflow::io::{agilent, discover, Format, ImageCube};

use crate::common::shared_data;

#[test]
fn instrument_folder_gives_one_entry_per_image() {
    let Some(dir) = shared_data("agilent") else { return };
    let found: Vec<(String, Format)> = discover(&dir).unwrap().into_iter().map(|e| (e.sample, e.format)).collect();
    assert_eq!(
        found,
        vec![
            ("4_noimage_agg256".to_string(), Format::AgilentTile),
            ("5_mosaic_agg1024".to_string(), Format::AgilentMosaic),
            ("background_agg1024".to_string(), Format::AgilentTile),
            ("background_agg256".to_string(), Format::AgilentTile),
        ]
    );
}

#[test]
fn nested_folders_give_relative_sample_ids_and_skip_partials() {
    let dir = tempfile::tempdir().unwrap();
    let cube = ImageCube { width: 4, height: 4, wavenumbers: vec![1000.0, 1001.0], values: vec![0.5; 32] };
    std::fs::create_dir_all(dir.path().join("slide3")).unwrap();
    agilent::write_mosaic(&dir.path().join("slide3/B07.dmt"), &cube, 4).unwrap();
    agilent::write_mosaic(&dir.path().join("A01.dmt"), &cube, 4).unwrap();
    std::fs::write(dir.path().join("slide3/C01.parquet.partial"), b"half").unwrap();
    std::fs::write(dir.path().join("labels.csv"), b"sample,type\n").unwrap();
    std::fs::write(dir.path().join(".hidden.hdr"), b"ENVI").unwrap();
    let samples: Vec<String> = discover(dir.path()).unwrap().into_iter().map(|e| e.sample).collect();
    assert_eq!(samples, vec!["A01", "slide3/B07"]);
}
