//! Software prefetch of the spectra a kernel reads next: consecutive spectra of a raw image lie
//! kilobytes apart and a kernel often reads only a band of each, so the hardware prefetcher
//! misses the start of every band and the loop waits on memory (measured: the first load of a
//! band held 55–58 % of the segmentation and amide I check time before these hints).

/// Distance, in spectra, at which a loop prefetches: far enough to cover a memory latency at
/// the few tens of nanoseconds a band takes to process.
pub const AHEAD: usize = 12;

/// Hints the CPU to bring every cache line of `values` into L1. A hint only: no effect on
/// results, and a no-op off x86-64.
#[inline(always)]
pub fn prefetch(values: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let range = values.as_ptr_range();
        let (mut p, end) = (range.start as *const i8, range.end as *const i8);
        while p < end {
            // SAFETY: a prefetch never faults, and `p` lies inside `values`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p) };
            p = p.wrapping_add(64);
        }
        if !values.is_empty() {
            // The last line, when the slice does not start on a line boundary.
            // SAFETY: a prefetch never faults, and `end - 1` is the last byte of the non-empty
            // `values`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(end.wrapping_sub(1)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}
