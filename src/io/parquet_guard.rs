//! Bounded walks over a Parquet file's Thrift compact structures — the footer, then every page
//! header of every column chunk — made before the `parquet` crate decodes them: the crate (60.1)
//! skips unknown fields without consuming a byte for each boolean list element, so a field of a
//! few bytes declaring a list of 2³¹ booleans keeps it busy for seconds (footer, from memory) or
//! hours (page header, a `read` per element); `cargo fuzz` (target `parquet_spectra`) found both.
//! In the compact protocol every list, set or map element takes at least one byte, so a container
//! declaring more elements than bytes remain is malformed; these walks reject it in time linear
//! in the bytes walked.
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
    let bytes = footer_bytes(file, MAX_FOOTER_BYTES)?;
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    bytes.map_or(Ok(()), |b| check_struct_bytes(&b))
}

/// The raw (Thrift-encoded) footer of the Parquet file `file`, read with positioned reads: `None`
/// when the file is too short, lacks the trailing magic or declares a footer longer than itself;
/// an error when the footer declares more than `max` bytes.
pub fn footer_bytes(file: &File, max: u64) -> Result<Option<Vec<u8>>, String> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len < 12 {
        return Ok(None);
    }
    let mut tail = [0u8; 8];
    file.read_exact_at(&mut tail, len - 8).map_err(|e| e.to_string())?;
    if &tail[4..] != b"PAR1" {
        return Ok(None);
    }
    let footer = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if footer + 8 > len {
        return Ok(None);
    }
    if footer > max {
        return Err(format!("its footer declares {footer} bytes, more than the {max} accepted"));
    }
    let mut bytes = vec![0u8; footer as usize];
    file.read_exact_at(&mut bytes, len - 8 - footer).map_err(|e| e.to_string())?;
    Ok(Some(bytes))
}

/// Bytes read for a page header at first; a longer header (large statistics) is read again with
/// a window 16× larger, up to the rest of its column chunk.
const HEADER_WINDOW: u64 = 4096;

/// Checks every page header of the column chunks at `chunks` (byte offset and length in `file`,
/// from the decoded footer): each header must be well formed and its page must end inside its
/// chunk. Reads the headers only (a window of a few kilobytes each), not the pages. Leaves `file`
/// at its start.
pub fn check_pages(file: &mut File, chunks: impl IntoIterator<Item = (u64, u64)>) -> Result<(), String> {
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut window = Vec::new();
    for (start, size) in chunks {
        let end = start
            .checked_add(size)
            .filter(|&end| end <= len)
            .ok_or_else(|| format!("a column chunk ({size} bytes at {start}) runs past the file's end ({len} bytes)"))?;
        let mut at = start;
        while at < end {
            let (header, page) = header_at(file, at, end, &mut window)?;
            at = at
                .checked_add(header)
                .and_then(|a| a.checked_add(page))
                .filter(|&a| a <= end)
                .ok_or_else(|| format!("the page at byte {at} runs past its column chunk"))?;
        }
    }
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    Ok(())
}

/// The length of the page header at byte `at` of `file` and the size of its page, reading no
/// further than `end` (the chunk's end) and only as far as the header needs.
fn header_at(file: &mut File, at: u64, end: u64, window: &mut Vec<u8>) -> Result<(u64, u64), String> {
    let mut want = HEADER_WINDOW;
    loop {
        let n = want.min(end - at);
        window.resize(n as usize, 0);
        file.seek(SeekFrom::Start(at)).map_err(|e| e.to_string())?;
        file.read_exact(window).map_err(|e| e.to_string())?;
        match page_header(window) {
            Ok((header, page)) => {
                let page = u64::try_from(page).map_err(|_| format!("the page at byte {at} declares a negative size"))?;
                return Ok((header as u64, page));
            }
            // The window may have cut the header short: read more, as long as the chunk has more.
            Err(_) if n < end - at => want = want.saturating_mul(16),
            Err(e) => return Err(format!("page header at byte {at}: {e}")),
        }
    }
}

/// Walks one Thrift compact struct at the start of `bytes` (what a footer holds).
pub fn check_struct_bytes(bytes: &[u8]) -> Result<(), String> {
    Walker { bytes, at: 0, page_size: None }.value(12, 0)
}

/// Walks the page header at the start of `bytes`: its length in bytes and its
/// `compressed_page_size` (field 3, i32; a header without it is an error).
pub fn page_header(bytes: &[u8]) -> Result<(usize, i64), String> {
    let mut w = Walker { bytes, at: 0, page_size: Some(None) };
    w.value(12, 0)?;
    let size = w.page_size.flatten().ok_or("the page header has no compressed page size")?;
    Ok((w.at, size))
}

/// A zigzag-encoded integer's value.
fn zigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

struct Walker<'a> {
    bytes: &'a [u8],
    at: usize,
    /// `Some` when walking a page header: its top-level field 3, once seen.
    page_size: Option<Option<i64>>,
}

impl Walker<'_> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn byte(&mut self) -> Result<u8, String> {
        let b = *self.bytes.get(self.at).ok_or("the structure ends inside a value")?;
        self.at += 1;
        Ok(b)
    }

    fn skip(&mut self, n: u64) -> Result<(), String> {
        if n > self.remaining() as u64 {
            return Err(format!("a value of {n} bytes runs past the end of the structure"));
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
            12 => {
                let mut id = 0i64;
                loop {
                    let head = self.byte()?;
                    if head == 0 {
                        return Ok(());
                    }
                    id = match head >> 4 {
                        0 => zigzag(self.varint()?), // the field id, when not given as a delta
                        delta => id + i64::from(delta),
                    };
                    let t = head & 0x0f;
                    if depth == 0 && id == 3 && t == 5 && self.page_size.is_some() {
                        self.page_size = Some(Some(zigzag(self.varint()?)));
                        continue;
                    }
                    self.value(t, depth + 1)?;
                }
            }
            13 => self.skip(16),
            other => Err(format!("unknown Thrift type {other}")),
        }
    }

    /// `n` container elements of the given types (one for lists and sets, key and value for
    /// maps). Every element takes at least one byte: a boolean element is a byte of its own.
    fn elements(&mut self, n: u64, types: &[u8], depth: u32) -> Result<(), String> {
        if n.saturating_mul(types.len() as u64) > self.remaining() as u64 {
            return Err(format!("a container declares {n} elements with {} bytes left", self.remaining()));
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
        assert!(check_struct_bytes(&[0x18, 5, b'a']).unwrap_err().contains("past the end"));
        assert!(check_struct_bytes(&[0x15, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
        let deep: Vec<u8> = std::iter::repeat_n(0x1c, 70).chain(std::iter::repeat_n(0, 71)).collect();
        assert!(check_struct_bytes(&deep).unwrap_err().contains("deeper"));
    }

    #[test]
    fn page_headers_give_their_length_and_page_size() {
        // field 1: i32 0 (type); field 2: i32 100; field 3: i32 60 (compressed size); stop; page bytes.
        let h = [0x15, 0x00, 0x15, 0xc8, 0x01, 0x15, 0x78, 0x00, 9, 9, 9];
        assert_eq!(page_header(&h), Ok((8, 60)));
        assert!(page_header(&[0x15, 0x00, 0]).unwrap_err().contains("no compressed page size"));
        let bools = [0x15, 0x00, 0x19, 0xf1, 0xff, 0xff, 0xff, 0xff, 0x07, 0];
        assert!(page_header(&bools).unwrap_err().contains("elements"));
    }

    #[test]
    fn page_headers_longer_than_the_first_window_are_read_whole() {
        // Two pages in one chunk: a header with a 10,000-byte binary field 100, then a plain one.
        let mut header = vec![0x15, 0x00, 0x15, 0x08, 0x15, 0x08]; // fields 1-3: type 0, sizes 4 and 4
        header.extend_from_slice(&[0x08, 0xc8, 0x01, 0x90, 0x4e]); // field 100 (binary), 10,000 bytes
        header.extend(std::iter::repeat_n(7u8, 10_000));
        header.push(0);
        let mut chunk = header.clone();
        chunk.extend_from_slice(&[1, 2, 3, 4]);
        chunk.extend_from_slice(&[0x15, 0x00, 0x15, 0x08, 0x15, 0x08, 0x00, 5, 6, 7, 8]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pages.bin");
        let mut bytes = b"PAR1".to_vec();
        bytes.extend_from_slice(&chunk);
        std::fs::write(&path, &bytes).unwrap();
        let mut file = File::open(&path).unwrap();
        assert_eq!(check_pages(&mut file, [(4, chunk.len() as u64)]), Ok(()));
        // The same chunk recorded one byte short: its last page runs past it.
        let err = check_pages(&mut file, [(4, chunk.len() as u64 - 1)]).unwrap_err();
        assert!(err.contains("runs past its column chunk"), "{err}");
        // Cut inside the long header: the header itself is malformed.
        let err = check_pages(&mut file, [(4, 5000)]).unwrap_err();
        assert!(err.contains("page header at byte 4"), "{err}");
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
            std::sync::Arc::clone(&schema),
            vec![std::sync::Arc::new(arrow::array::Float32Array::from(vec![Some(1.0), None, Some(3.0)]))],
        )
        .unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(File::create(&path).unwrap(), schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        assert_eq!(check(&mut File::open(&path).unwrap()), Ok(()));
        let meta = parquet::file::serialized_reader::SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        let chunks: Vec<(u64, u64)> = parquet::file::reader::FileReader::metadata(&meta)
            .row_groups()
            .iter()
            .flat_map(|rg| rg.columns().iter().map(|c| c.byte_range()))
            .collect();
        assert!(!chunks.is_empty());
        assert_eq!(check_pages(&mut File::open(&path).unwrap(), chunks), Ok(()));
    }
}
