//! Seeds and hash priorities of the segmentation: SplitMix64's mix, the seed of each random
//! stream (fit sample, tissue K-means, paraffin K-means) and the pixel key.

pub(super) const SAMPLE_STREAM: u64 = 0x5345_474d_0000_0000; // "SEGM"
pub(super) const TISSUE_STREAM: u64 = 1;
pub(super) const PARAFFIN_STREAM: u64 = 2;

/// SplitMix64's finalizer: a bijective 64-bit mix.
#[inline]
pub(super) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub(super) fn derive_seed(seed: u64, stream: u64) -> u64 {
    mix64(mix64(seed) ^ stream)
}

/// The pixel key: row-major order of (y, x).
#[inline]
pub(super) fn pixel_key(x: u32, y: u32) -> u64 {
    (u64::from(y) << 32) | u64::from(x)
}
