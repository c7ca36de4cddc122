//! Confusion counts of a labelled run (per spectrum and per core) and the one-vs-rest accuracy
//! per class that the paper reports, so the report can set them side by side.

/// Counts of (true class, predicted class).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confusion {
    /// Class names.
    pub classes: Vec<String>,
    /// `counts[true][predicted]`.
    pub counts: Vec<Vec<u64>>,
}

impl Confusion {
    /// Empty counts over `classes`.
    pub fn new(classes: &[String]) -> Self {
        Self { classes: classes.to_vec(), counts: vec![vec![0; classes.len()]; classes.len()] }
    }

    /// Counts `n` items of `truth` predicted as `predicted` (unknown names are ignored).
    pub fn add(&mut self, truth: &str, predicted: &str, n: u64) {
        let t = self.classes.iter().position(|c| c == truth);
        let p = self.classes.iter().position(|c| c == predicted);
        if let (Some(t), Some(p)) = (t, p) {
            self.counts[t][p] += n;
        }
    }

    /// Items counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    /// Overall accuracy (`None` when empty).
    pub fn accuracy(&self) -> Option<f64> {
        let n = self.total();
        (n > 0).then(|| (0..self.classes.len()).map(|i| self.counts[i][i]).sum::<u64>() as f64 / n as f64)
    }

    /// One-vs-rest accuracy of class `k`: (TP + TN) / all, as the paper reports per class.
    pub fn class_accuracy(&self, k: usize) -> Option<f64> {
        let n = self.total();
        if n == 0 {
            return None;
        }
        let tp = self.counts[k][k];
        let fn_: u64 = self.counts[k].iter().sum::<u64>() - tp;
        let fp: u64 = self.counts.iter().map(|r| r[k]).sum::<u64>() - tp;
        Some((n - fn_ - fp) as f64 / n as f64)
    }

    /// Items whose true class is `k`.
    pub fn support(&self, k: usize) -> u64 {
        self.counts[k].iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_vs_rest_accuracy_against_hand_counts() {
        let classes: Vec<String> = ["LA", "LB", "HER2"].iter().map(|s| s.to_string()).collect();
        let mut c = Confusion::new(&classes);
        c.add("LA", "LA", 5);
        c.add("LA", "LB", 3);
        c.add("LB", "LB", 2);
        c.add("HER2", "LA", 1);
        c.add("HER2", "HER2", 9);
        c.add("nope", "LA", 7);
        assert_eq!(c.total(), 20);
        assert_eq!(c.accuracy(), Some(16.0 / 20.0));
        // LA: TP 5, FN 3, FP 1 → (20 − 4) / 20.
        assert_eq!(c.class_accuracy(0), Some(16.0 / 20.0));
        // HER2: TP 9, FN 1, FP 0.
        assert_eq!(c.class_accuracy(2), Some(19.0 / 20.0));
        assert_eq!(c.support(1), 2);
    }
}
