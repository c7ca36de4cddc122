//! Writers of the archive's side files: `labels.csv`, `truth/masks.parquet`, the JSON records, and
//! the images through the format writers of [`crate::io`]; every file is written atomically
//! ([`crate::io::atomic`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;

use super::core::{CoreTruth, BACKGROUND, PARAFFIN};
use super::{SampleLabel, SynthError, SynthFormat};
use crate::io::atomic::{self, AtomicFile};
use crate::io::ImageCube;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SynthError + '_ {
    move |source| SynthError::Io { path: path.to_path_buf(), source }
}

/// Writes `bytes` to `path` atomically ([`crate::io::atomic::write_atomic`]); returns the size.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<u64, SynthError> {
    atomic::write_atomic(path, bytes).map_err(io_err(path))?;
    Ok(bytes.len() as u64)
}

/// `labels.csv`: `sample,patient,type,subtype` (subtype empty for adjacent tissue).
pub(crate) fn labels_csv(labels: &[SampleLabel]) -> String {
    let mut s = String::from("sample,patient,type,subtype\n");
    for l in labels {
        s.push_str(&format!("{},{},{},{}\n", l.sample, l.patient, l.type_name(), l.subtype.map_or("", |t| t.name())));
    }
    s
}

/// Schema of `truth/masks.parquet`.
pub(crate) fn masks_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("sample", DataType::Utf8, false),
        Field::new("x", DataType::UInt32, false),
        Field::new("y", DataType::UInt32, false),
        Field::new("mask", DataType::Utf8, false),
        Field::new("paraffin_fraction", DataType::Float32, false),
        Field::new("thickness", DataType::Float32, false),
    ]))
}

pub(crate) fn mask_name(m: u8) -> &'static str {
    match m {
        BACKGROUND => "background",
        PARAFFIN => "paraffin",
        _ => "tissue",
    }
}

/// Writes `truth/masks.parquet` (zstd): one row per pixel of every core, in core order, each core
/// row-major.
pub(crate) fn write_masks(path: &Path, size: u32, cores: &[(String, CoreTruth)]) -> Result<u64, SynthError> {
    let werr = |e: parquet::errors::ParquetError| SynthError::Write { path: path.to_path_buf(), reason: e.to_string() };
    let schema = masks_schema();
    let marker = vec![(crate::io::parquet::NOT_AN_IMAGE.to_string(), "the ground-truth masks of ftirflow synth".to_string())];
    let props = crate::io::parquet::writer_properties(&schema, marker);
    let file = AtomicFile::create(path).map_err(io_err(path))?;
    let mut writer = ArrowWriter::try_new(file, Arc::clone(&schema), Some(props)).map_err(werr)?;
    let n_px = size as usize * size as usize;
    let xs: ArrayRef = Arc::new(UInt32Array::from_iter_values((0..n_px).map(|p| (p % size as usize) as u32)));
    let ys: ArrayRef = Arc::new(UInt32Array::from_iter_values((0..n_px).map(|p| (p / size as usize) as u32)));
    for (sample, t) in cores {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(sample.as_str(), n_px))),
            Arc::clone(&xs),
            Arc::clone(&ys),
            Arc::new(StringArray::from_iter_values(t.mask.iter().map(|&m| mask_name(m)))),
            Arc::new(Float32Array::from(t.paraffin_fraction.clone())),
            Arc::new(Float32Array::from(t.thickness.clone())),
        ];
        let batch = RecordBatch::try_new(Arc::clone(&schema), columns)
            .map_err(|e| SynthError::Internal(format!("masks batch for {sample}: {e}")))?;
        writer.write(&batch).map_err(werr)?;
    }
    let staged = writer.into_inner().map_err(werr)?.finish().map_err(io_err(path))?;
    let bytes = fs::metadata(staged.partial_path()).map_err(io_err(path))?.len();
    staged.commit().map_err(io_err(path))?;
    Ok(bytes)
}

/// Writes the image of `sample` into `images` in `format`: into a hidden per-core temporary
/// directory first, then each file is renamed into `images`, the file a reader opens (`.hdr`,
/// `.dmt`, `.parquet`) last. Returns the bytes written.
pub(crate) fn write_image(images: &Path, sample: &str, cube: &ImageCube, format: SynthFormat, fpa: u32) -> Result<u64, SynthError> {
    let tmp_dir = images.join(format!(".tmp-{sample}"));
    if tmp_dir.exists() {
        fs::remove_dir_all(&tmp_dir).map_err(io_err(&tmp_dir))?;
    }
    fs::create_dir_all(&tmp_dir).map_err(io_err(&tmp_dir))?;
    let r = write_image_in(images, &tmp_dir, sample, cube, format, fpa);
    if r.is_err() {
        let _ = fs::remove_dir_all(&tmp_dir);
    }
    r
}

fn write_image_in(images: &Path, tmp_dir: &Path, sample: &str, cube: &ImageCube, format: SynthFormat, fpa: u32) -> Result<u64, SynthError> {
    let primary = tmp_dir.join(format!("{sample}.{}", format.extension()));
    match format {
        SynthFormat::Envi => {
            crate::io::envi::write_cube(&primary, cube, &crate::io::envi::EnviWriteOptions::default()).map_err(io_err(&primary))?;
        }
        SynthFormat::Agilent => {
            crate::io::agilent::write_mosaic(&primary, cube, fpa).map_err(io_err(&primary))?;
        }
        SynthFormat::Parquet => {
            crate::io::parquet::write_cube(&primary, cube, sample)
                .map_err(|e| SynthError::Write { path: images.join(format!("{sample}.parquet")), reason: e.to_string() })?;
        }
    }
    let mut files: Vec<PathBuf> =
        fs::read_dir(tmp_dir).map_err(io_err(tmp_dir))?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>().map_err(io_err(tmp_dir))?;
    // Companions first (sorted, for a reproducible order), the primary file last.
    files.sort_by_key(|p| (*p == primary, p.clone()));
    let mut bytes = 0;
    for f in &files {
        bytes += fs::metadata(f).map_err(io_err(f))?.len();
        let dest = images.join(f.file_name().unwrap_or_default());
        fs::rename(f, &dest).map_err(io_err(&dest))?;
    }
    fs::remove_dir(tmp_dir).map_err(io_err(tmp_dir))?;
    atomic::sync_dir(images).map_err(io_err(images))?;
    Ok(bytes)
}
