//! Classification metrics (docs/model.md), per spectrum and per core (majority vote): accuracy,
//! one-vs-rest accuracy per class (as the paper reports), sensitivity, specificity, ROC AUC and the
//! confusion matrix; printed as a table and saved as JSON and Parquet.
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};

/// Metrics of one class, one-vs-rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// Class name.
    pub class: String,
    /// Items of the class.
    pub support: u64,
    /// One-vs-rest accuracy: (TP + TN) / all.
    pub accuracy: f64,
    /// TP / (TP + FN); `None` without items of the class.
    pub sensitivity: Option<f64>,
    /// TN / (TN + FP); `None` without items of other classes.
    pub specificity: Option<f64>,
    /// ROC AUC of the class probability, one-vs-rest; `None` when undefined.
    pub auc: Option<f64>,
}

/// Metrics of one set of predictions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Items (spectra or cores).
    pub n: u64,
    /// Accuracy.
    pub accuracy: f64,
    /// ROC AUC: of the positive class for two classes, else the mean of the one-vs-rest AUCs.
    pub auc: Option<f64>,
    /// Per class.
    pub per_class: Vec<ClassMetrics>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u64>>,
}

/// ROC AUC (Mann–Whitney, ties counted half) of `scores` for `positive` items.
pub fn roc_auc(scores: &[f32], positive: &[bool]) -> Option<f64> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum, mut i) = (0.0f64, 0usize);
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += idx[i..=j].iter().filter(|&&k| positive[k]).count() as f64 * avg;
        i = j + 1;
    }
    let p = positive.iter().filter(|&&b| b).count() as f64;
    let n = positive.len() as f64 - p;
    if p == 0.0 || n == 0.0 {
        return None;
    }
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

/// Metrics of predictions `predicted` against `truth`, with class probabilities `probs`
/// (`rows × classes`).
pub fn metrics(truth: &[u32], predicted: &[u32], probs: &[f32], classes: &[String]) -> Metrics {
    let k = classes.len();
    let n = truth.len();
    let mut confusion = vec![vec![0u64; k]; k];
    for (&t, &p) in truth.iter().zip(predicted) {
        confusion[t as usize][p as usize] += 1;
    }
    let correct: u64 = (0..k).map(|c| confusion[c][c]).sum();
    let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
    let per_class: Vec<ClassMetrics> = (0..k)
        .map(|c| {
            let tp = confusion[c][c];
            let fn_ = confusion[c].iter().sum::<u64>() - tp;
            let fp = (0..k).map(|t| confusion[t][c]).sum::<u64>() - tp;
            let tn = n as u64 - tp - fn_ - fp;
            let scores: Vec<f32> = (0..n).map(|i| probs[i * k + c]).collect();
            let positive: Vec<bool> = truth.iter().map(|&t| t as usize == c).collect();
            ClassMetrics {
                class: classes[c].clone(),
                support: tp + fn_,
                accuracy: ratio(tp + tn, n as u64).unwrap_or(0.0),
                sensitivity: ratio(tp, tp + fn_),
                specificity: ratio(tn, tn + fp),
                auc: roc_auc(&scores, &positive),
            }
        })
        .collect();
    let auc = if k == 2 {
        per_class[1].auc
    } else {
        let aucs: Vec<f64> = per_class.iter().filter_map(|c| c.auc).collect();
        (!aucs.is_empty()).then(|| aucs.iter().sum::<f64>() / aucs.len() as f64)
    };
    Metrics { n: n as u64, accuracy: ratio(correct, n as u64).unwrap_or(0.0), auc, per_class, confusion }
}

/// Per-core predictions by majority vote of the spectra's predicted classes (ties: the class with
/// the larger mean probability), with the mean probabilities. Returns per core that has spectra:
/// `(core index, predicted, mean probs)`.
pub fn core_votes(core: &[u32], predicted: &[u32], probs: &[f32], classes: usize) -> Vec<(u32, u32, Vec<f32>)> {
    let mut by_core: std::collections::BTreeMap<u32, (Vec<u64>, Vec<f64>)> = Default::default();
    for (i, (&c, &p)) in core.iter().zip(predicted).enumerate() {
        let e = by_core.entry(c).or_insert_with(|| (vec![0; classes], vec![0.0; classes]));
        e.0[p as usize] += 1;
        for (s, &v) in e.1.iter_mut().zip(&probs[i * classes..(i + 1) * classes]) {
            *s += v as f64;
        }
    }
    by_core
        .into_iter()
        .map(|(c, (votes, sums))| {
            let n: u64 = votes.iter().sum();
            let best = (0..classes).max_by(|&a, &b| votes[a].cmp(&votes[b]).then(sums[a].total_cmp(&sums[b])).then(b.cmp(&a))).unwrap_or(0);
            (c, best as u32, sums.iter().map(|s| (s / n as f64) as f32).collect())
        })
        .collect()
}

/// Test-set predictions of one fold (or all folds pooled).
#[derive(Debug, Clone, Default)]
pub struct FoldPredictions {
    /// True class per spectrum.
    pub truth: Vec<u32>,
    /// Predicted class per spectrum.
    pub predicted: Vec<u32>,
    /// Probabilities per spectrum (`rows × classes`).
    pub probs: Vec<f32>,
    /// Core index per spectrum.
    pub core: Vec<u32>,
}

impl FoldPredictions {
    /// Appends another set.
    pub fn extend(&mut self, other: &FoldPredictions) {
        self.truth.extend_from_slice(&other.truth);
        self.predicted.extend_from_slice(&other.predicted);
        self.probs.extend_from_slice(&other.probs);
        self.core.extend_from_slice(&other.core);
    }
}

/// Metrics of one fold or of the pooled folds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FoldReport {
    /// `1`…`k`, or `pooled`.
    pub fold: String,
    /// Per spectrum.
    pub spectrum: Metrics,
    /// Per core (majority vote); `None` for tables without cores.
    pub core: Option<Metrics>,
}

impl FoldReport {
    /// Computes the report of `p`; `core_truth` gives each core's class (per-core metrics are
    /// skipped when `None`).
    pub fn new(fold: &str, p: &FoldPredictions, classes: &[String], core_truth: Option<&[u32]>) -> Self {
        let spectrum = metrics(&p.truth, &p.predicted, &p.probs, classes);
        let core = core_truth.map(|truth| {
            let votes = core_votes(&p.core, &p.predicted, &p.probs, classes.len());
            let t: Vec<u32> = votes.iter().map(|v| truth[v.0 as usize]).collect();
            let pr: Vec<u32> = votes.iter().map(|v| v.1).collect();
            let pb: Vec<f32> = votes.iter().flat_map(|v| v.2.iter().copied()).collect();
            metrics(&t, &pr, &pb, classes)
        });
        Self { fold: fold.to_string(), spectrum, core }
    }
}

/// The cross-validation report (`metrics.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CvReport {
    /// The task.
    pub task: String,
    /// Class names.
    pub classes: Vec<String>,
    /// Folds.
    pub folds: usize,
    /// Per fold.
    pub per_fold: Vec<FoldReport>,
    /// All folds' test predictions pooled.
    pub pooled: Option<FoldReport>,
}

fn pct(v: Option<f64>) -> String {
    v.map_or("   –  ".to_string(), |v| format!("{:6.3}", v))
}

impl CvReport {
    /// A compact JSON summary for the manifest (pooled accuracies and AUCs).
    pub fn summary(&self) -> serde_json::Value {
        let p = self.pooled.as_ref();
        serde_json::json!({
            "folds": self.folds,
            "spectrum_accuracy": p.map(|p| p.spectrum.accuracy),
            "spectrum_auc": p.and_then(|p| p.spectrum.auc),
            "core_accuracy": p.and_then(|p| p.core.as_ref().map(|c| c.accuracy)),
            "core_auc": p.and_then(|p| p.core.as_ref().and_then(|c| c.auc)),
        })
    }

    /// The printed table: one line per fold and level, then per class of the pooled results.
    pub fn table(&self) -> String {
        let mut s = format!("{:<8} {:<9} {:>6} {:>6} {:>6}\n", "fold", "level", "n", "acc", "auc");
        let mut rows: Vec<&FoldReport> = self.per_fold.iter().collect();
        rows.extend(self.pooled.iter());
        for r in rows {
            for (level, m) in [("spectrum", Some(&r.spectrum)), ("core", r.core.as_ref())] {
                if let Some(m) = m {
                    s.push_str(&format!("{:<8} {:<9} {:>6} {:>6.3} {}\n", r.fold, level, m.n, m.accuracy, pct(m.auc)));
                }
            }
        }
        if let Some(p) = &self.pooled {
            s.push_str(&format!(
                "\npooled per class: {:<8} {:<9} {:>6} {:>6} {:>6} {:>6} {:>6}\n",
                "class", "level", "n", "acc", "sens", "spec", "auc"
            ));
            for (level, m) in [("spectrum", Some(&p.spectrum)), ("core", p.core.as_ref())] {
                let Some(m) = m else { continue };
                for c in &m.per_class {
                    s.push_str(&format!(
                        "                  {:<8} {:<9} {:>6} {:>6.3} {} {} {}\n",
                        c.class,
                        level,
                        c.support,
                        c.accuracy,
                        pct(c.sensitivity),
                        pct(c.specificity),
                        pct(c.auc)
                    ));
                }
                s.push_str(&format!(
                    "                  confusion ({level}, rows true, columns predicted {:?}): {:?}\n",
                    self.classes, m.confusion
                ));
            }
        }
        s
    }

    /// Writes `metrics.parquet`: one row per (fold, level, metric, class, predicted class) with
    /// its value (confusion-matrix cells have both classes, per-class metrics one, overall none).
    pub fn write_parquet(&self, path: &Path) -> Result<(), crate::io::parquet::WriteError> {
        let mut cols: [Vec<Option<String>>; 5] = Default::default();
        let mut values: Vec<Option<f64>> = Vec::new();
        let mut push = |fold: &str, level: &str, metric: &str, class: Option<&str>, pred: Option<&str>, v: Option<f64>| {
            cols[0].push(Some(fold.into()));
            cols[1].push(Some(level.into()));
            cols[2].push(Some(metric.into()));
            cols[3].push(class.map(String::from));
            cols[4].push(pred.map(String::from));
            values.push(v);
        };
        let mut rows: Vec<&FoldReport> = self.per_fold.iter().collect();
        rows.extend(self.pooled.iter());
        for r in rows {
            for (level, m) in [("spectrum", Some(&r.spectrum)), ("core", r.core.as_ref())] {
                let Some(m) = m else { continue };
                push(&r.fold, level, "n", None, None, Some(m.n as f64));
                push(&r.fold, level, "accuracy", None, None, Some(m.accuracy));
                push(&r.fold, level, "auc", None, None, m.auc);
                for c in &m.per_class {
                    push(&r.fold, level, "support", Some(&c.class), None, Some(c.support as f64));
                    push(&r.fold, level, "class_accuracy", Some(&c.class), None, Some(c.accuracy));
                    push(&r.fold, level, "sensitivity", Some(&c.class), None, c.sensitivity);
                    push(&r.fold, level, "specificity", Some(&c.class), None, c.specificity);
                    push(&r.fold, level, "auc", Some(&c.class), None, c.auc);
                }
                for (t, row) in m.confusion.iter().enumerate() {
                    for (p, &n) in row.iter().enumerate() {
                        push(&r.fold, level, "confusion", Some(&self.classes[t]), Some(&self.classes[p]), Some(n as f64));
                    }
                }
            }
        }
        let names = ["fold", "level", "metric", "class", "predicted_class"];
        let mut fields: Vec<Field> = names.iter().enumerate().map(|(i, n)| Field::new(*n, DataType::Utf8, i >= 3)).collect();
        fields.push(Field::new("value", DataType::Float64, true));
        let schema = Arc::new(Schema::new(fields));
        let mut arrays: Vec<ArrayRef> = cols.into_iter().map(|c| Arc::new(StringArray::from(c)) as ArrayRef).collect();
        arrays.push(Arc::new(Float64Array::from(values)));
        let batch = RecordBatch::try_new(Arc::clone(&schema), arrays)
            .map_err(|e| crate::io::parquet::WriteError::Io { path: path.to_path_buf(), source: std::io::Error::other(e.to_string()) })?;
        let mut w = crate::io::parquet::AtomicParquetWriter::create(path, schema, vec![("ftirflow:task".into(), self.task.clone())])?;
        w.write(&batch)?;
        w.finish()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_and_metrics_against_hand_computed_values() {
        assert_eq!(roc_auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]), Some(0.75));
        assert_eq!(roc_auc(&[0.5, 0.5], &[false, true]), Some(0.5));
        assert_eq!(roc_auc(&[0.5], &[true]), None);
        let classes = vec!["AT".to_string(), "CA".to_string()];
        let m = metrics(&[0, 0, 1, 1], &[0, 1, 1, 1], &[0.9, 0.1, 0.4, 0.6, 0.2, 0.8, 0.3, 0.7], &classes);
        assert_eq!(m.accuracy, 0.75);
        assert_eq!(m.confusion, vec![vec![1, 1], vec![0, 2]]);
        assert_eq!(m.per_class[1].sensitivity, Some(1.0));
        assert_eq!(m.per_class[1].specificity, Some(0.5));
        assert_eq!(m.auc, Some(1.0));
        let votes = core_votes(&[0, 0, 0, 1], &[1, 1, 0, 0], &[0.4, 0.6, 0.3, 0.7, 0.8, 0.2, 0.9, 0.1], 2);
        assert_eq!(votes[0].1, 1);
        assert_eq!(votes[1].1, 0);
    }
}
