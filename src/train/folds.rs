//! Cross-validation folds split by group (patient) and stratified by class (or any finer stratum,
//! such as class and subtype): every group's spectra or cores land in one fold, and each fold gets
//! about `1/k` of every stratum.
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Assigns each group to one of `k` folds. `counts[g][c]` is how many units (cores or spectra)
/// of class (or stratum) `c` group `g` holds. Greedy, as scikit-learn's `StratifiedGroupKFold`:
/// groups in a seeded shuffle, largest and most class-skewed first, each into the fold where the
/// classes' shares stay closest to `1/k` (ties: the fold with fewer units, then the lower index).
/// Deterministic for a seed.
pub fn stratified_group_folds(counts: &[Vec<u64>], k: usize, seed: u64) -> Vec<usize> {
    let classes = counts.iter().map(|c| c.len()).max().unwrap_or(0);
    let totals: Vec<f64> = (0..classes).map(|c| counts.iter().map(|g| g.get(c).copied().unwrap_or(0)).sum::<u64>() as f64).collect();
    let mut order: Vec<usize> = (0..counts.len()).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let size = |g: usize| counts[g].iter().sum::<u64>();
    let skew = |g: usize| {
        let n = size(g).max(1) as f64;
        let mean = 1.0 / classes.max(1) as f64;
        counts[g].iter().map(|&c| (c as f64 / n - mean).powi(2)).sum::<f64>()
    };
    order.sort_by(|&a, &b| size(b).cmp(&size(a)).then(skew(b).total_cmp(&skew(a))));
    let mut fold_counts = vec![vec![0u64; classes]; k];
    let mut assignment = vec![0usize; counts.len()];
    for g in order {
        let mut best = (f64::INFINITY, u64::MAX, 0usize);
        for f in 0..k {
            let cost: f64 = (0..classes)
                .filter(|&c| totals[c] > 0.0)
                .map(|c| {
                    let share = (fold_counts[f][c] + counts[g].get(c).copied().unwrap_or(0)) as f64 / totals[c];
                    (0..k)
                        .map(|o| if o == f { share } else { fold_counts[o][c] as f64 / totals[c] })
                        .map(|s| (s - 1.0 / k as f64).powi(2))
                        .sum::<f64>()
                })
                .sum();
            let units: u64 = fold_counts[f].iter().sum();
            if cost < best.0 - 1e-12 || ((cost - best.0).abs() <= 1e-12 && units < best.1) {
                best = (cost, units, f);
            }
        }
        assignment[g] = best.2;
        for (c, n) in counts[g].iter().enumerate() {
            fold_counts[best.2][c] += n;
        }
    }
    assignment
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_stay_whole_and_classes_are_spread() {
        // 16 patients of one class each (4 classes), 4 folds: each fold gets one of each class.
        let counts: Vec<Vec<u64>> = (0..16).map(|p| (0..4).map(|c| if p % 4 == c { 1 } else { 0 }).collect()).collect();
        let folds = stratified_group_folds(&counts, 4, 7);
        for f in 0..4 {
            for c in 0..4 {
                let n = (0..16).filter(|&p| folds[p] == f && p % 4 == c).count();
                assert_eq!(n, 1, "fold {f} class {c}: {folds:?}");
            }
        }
        assert_eq!(folds, stratified_group_folds(&counts, 4, 7), "deterministic");
        // Patients with one core of each of two classes: 2 patients per fold.
        let pairs: Vec<Vec<u64>> = (0..8).map(|_| vec![1, 1]).collect();
        let folds = stratified_group_folds(&pairs, 4, 1);
        for f in 0..4 {
            assert_eq!(folds.iter().filter(|&&x| x == f).count(), 2, "{folds:?}");
        }
    }
}
