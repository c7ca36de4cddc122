//! A bounded walk over a Parquet footer's Thrift compact encoding, made before the `parquet` crate
//! decodes it: the crate (60.1) skips unknown fields without consuming a byte for each boolean
//! list element, so a footer of a few bytes declaring lists of 2³¹ booleans keeps it busy for
//! seconds per list (hours for a crafted 100 KB file; found by `cargo fuzz`, target
//! `parquet_spectra`). In the compact protocol every list, set or map element takes at least one
//! byte, so a container declaring more elements than bytes remain is malformed; this walk rejects
//! it in time linear in the footer's size.
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

/// Deepest nesting of structs and containers accepted (the `parquet` crate's own limit).
const MAX_DEPTH: u32 = 64;
/// Largest footer read (a footer past this is refused; ftirflow's and pyarrow's spectra files
/// have footers of kilobytes).
pub const MAX_FOOTER_BYTES: u64 = 64 << 20;

/// Checks the footer of the Parquet file `file`. `Ok(())` also when the file is too short or
/// lacks the magic: the `parquet` crate then reports that itself.
pub fn check(file: &mut File) -> Result<(), String> {
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len < 12 {
        return Ok(());
    }
    let mut tail = [0u8; 8];
    file.seek(SeekFrom::Start(len - 8)).map_err(|e| e.to_string())?;
    file.read_exact(&mut tail).map_err(|e| e.to_string())?;
    if &tail[4..] != b"PAR1" {
        return Ok(());
    }
    let footer = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if footer + 8 > len {
        return Ok(());
    }
    if footer > MAX_FOOTER_BYTES {
        return Err(format!("its footer declares {footer} bytes, more than the {MAX_FOOTER_BYTES} accepted"));
    }
    let mut bytes = vec![0u8; footer as usize];
    file.seek(SeekFrom::Start(len - 8 - footer)).map_err(|e| e.to_string())?;
    file.read_exact(&mut bytes).map_err(|e| e.to_string())?;
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    check_struct_bytes(&bytes)
}

/// Walks one Thrift compact struct at the start of `bytes` (what a footer holds).
pub fn check_struct_bytes(bytes: &[u8]) -> Result<(), String> {
    Walker { bytes, at: 0 }.value(12, 0)
}

struct Walker<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Walker<'_> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn byte(&mut self) -> Result<u8, String> {
        let b = *self.bytes.get(self.at).ok_or("the footer ends inside a value")?;
        self.at += 1;
        Ok(b)
    }

    fn skip(&mut self, n: u64) -> Result<(), String> {
        if n > self.remaining() as u64 {
            return Err(format!("a value of {n} bytes runs past the footer's end"));
        }
        self.at += n as usize;
        Ok(())
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift.min(63);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("a variable-length integer runs over 10 bytes".into())
    }

    /// Skips a value of compact type `t`, checking that containers fit.
    fn value(&mut self, t: u8, depth: u32) -> Result<(), String> {
        if depth >= MAX_DEPTH {
            return Err(format!("values nest deeper than {MAX_DEPTH}"));
        }
        match t {
            1 | 2 => Ok(()), // a boolean struct field carries its value in the type
            3 => self.skip(1),
            4..=6 => self.varint().map(|_| ()),
            7 => self.skip(8),
            8 => {
                let n = self.varint()?;
                self.skip(n)
            }
            9 | 10 => {
                let head = self.byte()?;
                let n = if head >> 4 == 15 { self.varint()? } else { u64::from(head >> 4) };
                self.elements(n, &[head & 0x0f], depth)
            }
            11 => {
                let n = self.varint()?;
                if n == 0 {
                    return Ok(());
                }
                let kv = self.byte()?;
                self.elements(n, &[kv >> 4, kv & 0x0f], depth)
            }
            12 => loop {
                let head = self.byte()?;
                if head == 0 {
                    return Ok(());
                }
                if head >> 4 == 0 {
                    self.varint()?; // the field id, when not given as a delta
                }
                self.value(head & 0x0f, depth + 1)?;
            },
            13 => self.skip(16),
            other => Err(format!("unknown Thrift type {other}")),
        }
    }

    /// `n` container elements of the given types (one for lists and sets, key and value for
    /// maps). Every element takes at least one byte: a boolean element is a byte of its own.
    fn elements(&mut self, n: u64, types: &[u8], depth: u32) -> Result<(), String> {
        if n.saturating_mul(types.len() as u64) > self.remaining() as u64 {
            return Err(format!("a container declares {n} elements with {} bytes left in the footer", self.remaining()));
        }
        for _ in 0..n {
            for &t in types {
                match t {
                    1 | 2 => self.skip(1)?,
                    t => self.value(t, depth + 1)?,
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_structs_pass_and_lying_containers_fail() {
        // field 1: i32 150; field 2: list of 3 bytes; field 3: binary "ab"; field 4: bool true;
        // field 5: map of 1 (i32 → i32); stop.
        let ok = [0x15, 0xac, 0x02, 0x19, 0x33, 1, 2, 3, 0x18, 2, b'a', b'b', 0x11, 0x1b, 1, 0x55, 2, 4, 0];
        assert_eq!(check_struct_bytes(&ok), Ok(()));
        // A list of 2³¹ − 1 booleans in 7 bytes: what kept the parquet crate busy.
        let bools = [0x19, 0xf1, 0xff, 0xff, 0xff, 0xff, 0x07, 0];
        let err = check_struct_bytes(&bools).unwrap_err();
        assert!(err.contains("2147483647 elements"), "{err}");
        // Truncated binary, endless varint, too deep.
        assert!(check_struct_bytes(&[0x18, 5, b'a']).unwrap_err().contains("past the footer"));
        assert!(check_struct_bytes(&[0x15, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
        let deep: Vec<u8> = std::iter::repeat_n(0x1c, 70).chain(std::iter::repeat_n(0, 71)).collect();
        assert!(check_struct_bytes(&deep).unwrap_err().contains("deeper"));
    }

    #[test]
    fn footers_that_ftirflow_writes_pass() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(
            "v",
            arrow::datatypes::DataType::Float32,
            true,
        )]));
        let batch = arrow::array::RecordBatch::try_new(
            schema.clone(),
            vec![std::sync::Arc::new(arrow::array::Float32Array::from(vec![Some(1.0), None, Some(3.0)]))],
        )
        .unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(File::create(&path).unwrap(), schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        assert_eq!(check(&mut File::open(&path).unwrap()), Ok(()));
    }
}
