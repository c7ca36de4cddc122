//! ENVI images: the text header (`.hdr`), a streaming reader of the binary data file and a writer
//! of [`ImageCube`]s ([`crate::io::ImageCube`]).
//!
//! The reader handles the three interleaves (`bsq`, `bil`, `bip`), both byte orders, a header
//! offset and the data types 1 (`u8`), 2 (`i16`), 3 (`i32`), 4 (`f32`), 5 (`f64`) and 12 (`u16`);
//! every value is converted to `f32` (`i32` and `f64` values are rounded to the nearest `f32`).
//! The `wavelength` list is the wavenumber axis; with `wavelength units = Micrometers` or
//! `Nanometers` it is converted to cm⁻¹ (`1e4/λ`, `1e7/λ`), otherwise (`Wavenumber`, absent or
//! `Unknown`) it is taken as cm⁻¹.
//!
//! # Validation
//! [`parse_header`] checks every field before anything is allocated: the `ENVI` magic line, the
//! required fields (`samples`, `lines`, `bands`, `data type`, `interleave`, `wavelength`), their
//! ranges, a finite and strictly monotonic axis with one value per band, and that
//! `header offset + samples × lines × bands × size` fits 64 bits. [`EnviReader::open`] then
//! compares that size with the data file: a smaller file is [`ReadError::Truncated`]; a larger one
//! is accepted (as ENVI tools do) and only the bytes the header describes are read.
//!
//! NaN or infinite values *in the data* are not an error: they are passed on as they are, and the
//! quality-control stages flag such spectra.
//!
//! # Streaming
//! The reader never loads the whole file: it yields batches of at most `batch_rows` spectra in
//! row-major pixel order (row `y` = line, column `x` = sample), a batch possibly spanning several
//! lines or ending mid-line. It holds one batch of values plus, for `bil`, one decoded line:
//! `bip` is one contiguous positioned read per batch, `bil` reads whole lines and transposes them,
//! and `bsq` reads one contiguous segment per band (the batch's pixels of that band plane) and
//! scatters it. A data file that shrinks while it is read ends the stream with a
//! [`ReadError::Truncated`] item.
//!
//! With a [`Window`](crate::io::Window) it reads only the window's pixels, in the same order and
//! with the same `x`, `y` as the whole read: `bip` one contiguous read per window row (of a batch),
//! `bsq` one read per band and window row, `bil` one read per band of each line's window columns
//! (the whole line in one read when the window spans the image's width). A window as wide as the
//! image reads exactly like the whole image.
//!
//! # Files
//! `header.rs` parses and validates the header and finds the data file, `reader.rs` streams the
//! data, `writer.rs` writes an image cube.
mod header;
mod reader;
mod writer;

pub use header::{
    data_file_for, header_for, parse_header, parse_header_str, ByteOrder, EnviHeader, Interleave, ValueType, WavelengthUnits,
    DATA_EXTENSIONS, MAX_HEADER_BYTES,
};
pub use reader::EnviReader;
pub use writer::{write_cube, EnviWriteOptions};
