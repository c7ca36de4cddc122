//! Reading a file through a read-only mapping ([`MappedFile`]), with the bus error that a file
//! truncated (or failing to read) while mapped raises turned into a [`ReadError`] instead of the
//! end of the process, and the resident pages the mapping adds bounded. The band-sequential
//! readers use it: one batch of spectra is one pass over the mapped band planes, with no system
//! call per band (ARCHITECTURE.md, "Readers").
//!
//! How a bus error is caught: a `SIGBUS` handler, installed once and chained to whatever handler
//! was there before, looks at the faulting address. If it lies in the span the faulting thread is
//! reading, the handler maps zero pages over the whole span (the read then finishes on zeros, which
//! are thrown away) and flags the thread; any other bus error goes to the previous handler (or
//! ends the process as it would have without this module).
use std::cell::Cell;
use std::ffi::c_void;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{compiler_fence, Ordering};
use std::sync::OnceLock;

use super::ReadError;

thread_local! {
    /// The span this thread is reading through a mapping: (first byte's address, length).
    static ARMED: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
    /// Set by the handler when a bus error hit [`ARMED`].
    static FAULTED: Cell<bool> = const { Cell::new(false) };
}

/// The `SIGBUS` action in place before [`on_bus_error`] was installed, or `None` where installing
/// failed (then nothing is read through a mapping).
static PREVIOUS: OnceLock<Option<libc::sigaction>> = OnceLock::new();

/// Pages one fault may map: the kernel maps the cached pages of the aligned 64 KiB block around a
/// faulting page ("fault-around"; its default size, which only a debugfs knob changes).
const BLOCK_SHIFT: u32 = 16;

/// Pages a mapping may hold before it is dropped and made again, bounding the resident memory that
/// mapped file pages add to a reader (ARCHITECTURE.md, "Readers"): 32 MiB, or two fault-around
/// blocks per stream read (band plane), whichever is more — a batch touches a block in every
/// plane, and a budget below that would drop the mapping after every batch.
const MAPPED_BUDGET: usize = 32 << 20;

/// File bytes `start .. end` mapped read-only, kept across reads (one
/// mapping per image or tile: mapping per batch costs more in faults and unmapping than the
/// system calls it saves), and dropped and made again whenever the pages it may hold pass
/// [`MAPPED_BUDGET`] (or two blocks per stream, if that is more).
#[derive(Debug)]
pub(crate) struct MappedFile {
    path: PathBuf,
    /// The file's length when it was opened, reported if it shrinks.
    expected: u64,
    /// First byte mapped: `start` rounded down to a page.
    from: u64,
    end: u64,
    /// The mapping's address, null when none is held.
    base: *mut c_void,
    /// The mapping's length.
    span: usize,
    /// Per stream (a band plane), the last 64 KiB block of the mapping a read touched.
    last_block: Vec<usize>,
    /// Bytes the touched blocks may hold (at most one fault-around block each).
    held: usize,
}

// SAFETY: the mapping is this value's own and is only read, by whoever holds the value.
unsafe impl Send for MappedFile {}

impl MappedFile {
    /// `file`'s bytes `start .. end` (`file` is `path`, which held them when it was `expected`
    /// bytes long), mapped now; `None` where the file cannot be mapped (a file system without
    /// mappings, such as a FUSE mount in direct-I/O mode): the caller then reads with `pread`.
    pub(crate) fn new(file: &File, path: &Path, expected: u64, start: u64, end: u64) -> Option<Self> {
        PREVIOUS.get_or_init(install).as_ref()?;
        let page = page_size() as u64;
        let mut map = Self {
            path: path.to_path_buf(),
            expected,
            from: start - start % page,
            end,
            base: std::ptr::null_mut(),
            span: 0,
            last_block: Vec::new(),
            held: 0,
        };
        map.map(file).ok()?;
        Some(map)
    }

    fn map(&mut self, file: &File) -> std::io::Result<()> {
        let span = usize::try_from(self.end - self.from)
            .map_err(|_| std::io::Error::other("the data does not fit this platform's address space"))?
            .max(1);
        // SAFETY: a fresh shared read-only mapping of `file`; the kernel picks the address.
        let base = unsafe {
            libc::mmap(std::ptr::null_mut(), span, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), self.from as libc::off_t)
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // Page by page, never a huge page at once, so that the budget's count holds.
        // SAFETY: advice on the mapping just made.
        unsafe { libc::madvise(base, span, libc::MADV_NOHUGEPAGE) };
        (self.base, self.span) = (base, span);
        Ok(())
    }

    /// Calls `f` with the address of byte `lo` of `file` (the file this was made for), with bytes
    /// `lo .. hi` readable after it, and returns its result. A file that no longer holds
    /// `lo .. hi` after `f` ran is reported as [`ReadError::Truncated`]; a bus error otherwise (an
    /// I/O error reading the file in) as an I/O error. `f`'s result is then dropped.
    ///
    /// # Safety
    /// `start ≤ lo ≤ hi ≤ end`; `f` may read only `lo .. hi` and must not keep the address (the
    /// mapping may be dropped after the call). The bytes change if another process writes the file.
    pub(crate) unsafe fn read<R>(&mut self, file: &File, lo: u64, hi: u64, f: impl FnOnce(*const u8) -> R) -> Result<R, ReadError> {
        debug_assert!(self.from <= lo && lo <= hi && hi <= self.end);
        if self.base.is_null() {
            self.map(file).map_err(|e| ReadError::io(&self.path, e))?;
        }
        /// Disarms the guard however `f` ends.
        struct Disarm;
        impl Drop for Disarm {
            fn drop(&mut self) {
                compiler_fence(Ordering::SeqCst);
                let _ = ARMED.try_with(|a| a.set((0, 0)));
            }
        }
        let _ = FAULTED.try_with(|c| c.set(false));
        let _ = ARMED.try_with(|a| a.set((self.base as usize, self.span)));
        let disarm = Disarm;
        compiler_fence(Ordering::SeqCst);
        // SAFETY: byte `lo` of the file is `lo - from` bytes into the mapping.
        let out = f(unsafe { self.base.cast::<u8>().add((lo - self.from) as usize) });
        drop(disarm);
        let faulted = FAULTED.try_with(Cell::get).unwrap_or(false);
        if faulted {
            // The handler put zero pages in place of the file's: this mapping is spent.
            self.unmap();
        }
        // A file cut inside the span's last page raises no bus error (the page's tail reads as
        // zeros): its length after the read says whether every byte read was the file's.
        let actual = file.metadata().map_err(|e| ReadError::io(&self.path, e))?.len();
        if actual < hi {
            return Err(ReadError::Truncated { path: self.path.clone(), expected: self.expected, actual });
        }
        if faulted {
            return Err(ReadError::io(
                &self.path,
                std::io::Error::other("bus error while reading the file through a mapping (an I/O error on the device?)"),
            ));
        }
        Ok(out)
    }

    /// Records that the last [`read`](Self::read) touched `count` streams' segments of `len`
    /// bytes, stream `k`'s starting at file byte `first + k × stride`; drops the mapping when the
    /// pages its touched blocks may hold pass [`MAPPED_BUDGET`] or two blocks per stream (the
    /// next read maps it again). A block is counted once however many
    /// segments lie in it: those of one call (band rows of one ENVI bil line, or Agilent planes
    /// smaller than a block, share blocks) and a stream's consecutive segments.
    pub(crate) fn touched(&mut self, first: u64, len: u64, stride: u64, count: usize) {
        if self.base.is_null() || len == 0 {
            return;
        }
        if self.last_block.len() < count {
            self.last_block.resize(count, usize::MAX);
        }
        let base = self.base as usize;
        // Segments come in increasing address order: the last block counted in this call.
        let mut counted: Option<usize> = None;
        let mut added = 0;
        for (k, last) in self.last_block.iter_mut().enumerate().take(count) {
            let at = base + (first + k as u64 * stride - self.from) as usize;
            let (b0, b1) = (at >> BLOCK_SHIFT, (at + len as usize - 1) >> BLOCK_SHIFT);
            let mut from = if *last == b0 { b0 + 1 } else { b0 };
            if let Some(c) = counted {
                from = from.max(c + 1);
            }
            added += (b1 + 1).saturating_sub(from) << BLOCK_SHIFT;
            counted = Some(counted.map_or(b1, |c| c.max(b1)));
            *last = b1;
        }
        self.held += added;
        if self.held > MAPPED_BUDGET.max(self.last_block.len() << (BLOCK_SHIFT + 1)) {
            self.unmap();
        }
    }

    fn unmap(&mut self) {
        if !self.base.is_null() {
            // SAFETY: the mapping this value made, with its length; no read is running.
            unsafe { libc::munmap(self.base, self.span) };
        }
        self.base = std::ptr::null_mut();
        self.last_block.clear();
        self.held = 0;
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        self.unmap();
    }
}

fn page_size() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    *PAGE.get_or_init(|| usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok().filter(|&p| p > 0).unwrap_or(4096))
}

/// Installs [`on_bus_error`] for `SIGBUS`, returning the action it replaces.
fn install() -> Option<libc::sigaction> {
    page_size();
    // SAFETY: plain sigaction calls with initialised structures.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_bus_error as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        let mut previous: libc::sigaction = std::mem::zeroed();
        (libc::sigaction(libc::SIGBUS, &action, &mut previous) == 0).then_some(previous)
    }
}

/// The `SIGBUS` handler (see the module docs). Async-signal-safe: it reads constant-initialised
/// thread locals and calls `mmap` and `sigaction` only.
extern "C" fn on_bus_error(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    let (base, len) = ARMED.try_with(Cell::get).unwrap_or((0, 0));
    if len > 0 && addr >= base && addr - base < len {
        // SAFETY: replaces this thread's own mapping (which `MappedFile::read` then unmaps) with
        // zero pages, so the faulting read resumes and finishes.
        let zeros = unsafe {
            libc::mmap(base as *mut c_void, len, libc::PROT_READ, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED, -1, 0)
        };
        if zeros != libc::MAP_FAILED {
            let _ = FAULTED.try_with(|c| c.set(true));
            return;
        }
    }
    match PREVIOUS.get().copied().flatten() {
        Some(prev) if prev.sa_sigaction != libc::SIG_DFL && prev.sa_sigaction != libc::SIG_IGN => {
            // SAFETY: the previous handler, called as it was registered (with or without siginfo).
            unsafe {
                if prev.sa_flags & libc::SA_SIGINFO != 0 {
                    let h: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut c_void) = std::mem::transmute(prev.sa_sigaction);
                    h(sig, info, ctx);
                } else {
                    let h: extern "C" fn(libc::c_int) = std::mem::transmute(prev.sa_sigaction);
                    h(sig);
                }
            }
        }
        _ => {
            // Not a mapped read's fault: back to the default action, so that the faulting
            // instruction, run again, ends the process as it would have.
            // SAFETY: a plain sigaction call with an initialised structure.
            unsafe {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigemptyset(&mut default.sa_mask);
                libc::sigaction(sig, &default, std::ptr::null_mut());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_span_and_reports_a_truncation_instead_of_dying() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.bin");
        let bytes: Vec<u8> = (0..5 * 4096 + 100).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        let expected = bytes.len() as u64;
        let mut map = MappedFile::new(&file, &path, expected, 7, expected).unwrap();
        // An unaligned span crossing pages, read twice through the same mapping.
        let (lo, len) = (4093u64, 8200usize);
        for _ in 0..2 {
            // SAFETY: the closure reads only inside the span and keeps no address.
            let got = unsafe { map.read(&file, lo, lo + len as u64, |p| std::slice::from_raw_parts(p, len).to_vec()) }.unwrap();
            assert_eq!(got, &bytes[lo as usize..lo as usize + len]);
        }

        // The file shrinks under the open handle: the read through the mapping faults.
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(4096).unwrap();
        // SAFETY: as above.
        let err = unsafe { map.read(&file, lo, lo + len as u64, |p| (0..len).map(|i| u64::from(p.add(i).read_volatile())).sum::<u64>()) }
            .unwrap_err();
        match err {
            ReadError::Truncated { expected: e, actual, .. } => assert_eq!((e, actual), (expected, 4096)),
            other => panic!("expected Truncated, got {other}"),
        }
        // Cut inside the span's last page: no bus error, but the bytes past the end are not the
        // file's.
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(3000).unwrap();
        // SAFETY: as above.
        let err = unsafe { map.read(&file, 100, 4000, |p| p.add(3899).read()) }.unwrap_err();
        assert!(matches!(err, ReadError::Truncated { actual: 3000, .. }), "{err}");
        // The guard is disarmed and reads work again on what is left.
        // SAFETY: as above.
        let head = unsafe { map.read(&file, 7, 3000, |p| p.add(2992).read()) }.unwrap();
        assert_eq!(head, bytes[2999]);
    }

    #[test]
    fn a_file_that_cannot_be_mapped_gives_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.bin");
        std::fs::write(&path, [1u8; 8192]).unwrap();
        // A descriptor without read access cannot be mapped for reading (EACCES), as a file
        // system without mappings refuses (ENODEV).
        let write_only = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        assert!(MappedFile::new(&write_only, &path, 8192, 0, 8192).is_none());
        assert!(MappedFile::new(&File::open(&path).unwrap(), &path, 8192, 0, 8192).is_some());
    }

    /// A sparse file of `len` bytes in a fresh directory (kept alive by the first value), mapped
    /// whole, with one byte read.
    fn mapped_sparse_file(len: u64) -> (tempfile::TempDir, MappedFile) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.bin");
        std::fs::File::create(&path).unwrap().set_len(len).unwrap();
        let file = File::open(&path).unwrap();
        let mut map = MappedFile::new(&file, &path, len, 0, len).unwrap();
        // SAFETY: reads one byte inside the span.
        unsafe { map.read(&file, 0, 1, |p| p.read()) }.unwrap();
        (dir, map)
    }

    #[test]
    fn touched_blocks_are_counted_once_and_the_budget_drops_the_mapping() {
        let (_dir, mut map) = mapped_sparse_file(64 << 20);
        // 8 planes of 1 MiB, 4 KiB of each: 8 blocks (or 16 where the mapping's address splits a
        // segment over two blocks), then the next 4 KiB again mostly in the same blocks.
        map.touched(0, 4096, 1 << 20, 8);
        let first = map.held;
        assert!((8 << 16..=16 << 16).contains(&first), "{first}");
        map.touched(4096, 4096, 1 << 20, 8);
        assert!(map.held <= first + (8 << 16), "{}", map.held);
        // Whole planes, 8 MiB a read: past the 32 MiB budget (more than two blocks per plane) on
        // the fourth read, the mapping is dropped.
        let mut reads = 0;
        while !map.base.is_null() {
            map.touched((reads + 1) * (8 << 20), 1 << 20, 1 << 20, 8);
            reads += 1;
        }
        assert!(reads == 4 && map.held == 0, "{reads}");
    }

    #[test]
    fn segments_sharing_a_block_count_it_once() {
        let (_dir, mut map) = mapped_sparse_file(256 << 20);
        // An ENVI bil line of 1504 band rows of 512 bytes: 752 KiB, 12 or 13 blocks, not 1504.
        let line = 1504 * 512;
        map.touched(0, 512, 512, 1504);
        assert!((12 << 16..=13 << 16).contains(&map.held), "{}", map.held);
        // Further lines stay mapped up to the budget, two blocks per band row (188 MiB: about 240
        // lines; counted per band row it was passed at the third line); the call past it drops
        // the mapping.
        let mut y = 1;
        while !map.base.is_null() {
            map.touched(y * line, 512, 512, 1504);
            y += 1;
        }
        assert!((236..=246).contains(&y), "dropped after line {y}");
    }
}
