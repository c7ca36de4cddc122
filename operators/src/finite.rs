//! Branch-free checks for NaN and infinite values in spectra, shared by every kernel that flags
//! non-finite data (the loops vectorize, so a check costs about one read of the values).

/// True when no value is NaN or infinite.
///
/// ```
/// use ftirflow_operators::finite::all_finite;
/// assert!(all_finite(&[0.0, -1.5, f32::MAX]));
/// assert!(!all_finite(&[0.0, f32::NAN]));
/// assert!(!all_finite(&[f32::NEG_INFINITY]));
/// ```
#[inline]
pub fn all_finite(values: &[f32]) -> bool {
    const EXP: u32 = 0x7f80_0000;
    values.iter().fold(0u32, |acc, v| acc | u32::from(v.to_bits() & EXP == EXP)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn matches_the_std_check(bits in proptest::collection::vec(any::<u32>(), 0..300)) {
            let v: Vec<f32> = bits.into_iter().map(f32::from_bits).collect();
            prop_assert_eq!(all_finite(&v), v.iter().all(|x| x.is_finite()));
        }
    }
}
