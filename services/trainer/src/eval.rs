//! Evaluation metrics over predicted vs true class ids. Pure.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassMetrics {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

/// What `metrics.json` holds and the registry records.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    pub examples: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub per_class: Vec<ClassMetrics>,
    /// `confusion[true][predicted]` counts, rows and columns in label order.
    pub confusion: Vec<Vec<usize>>,
    pub labels: Vec<String>,
}

pub fn evaluate(labels: &[String], truth: &[usize], predicted: &[usize]) -> Evaluation {
    assert_eq!(truth.len(), predicted.len(), "one prediction per example");
    let n = labels.len();
    let mut confusion = vec![vec![0usize; n]; n];
    for (&t, &p) in truth.iter().zip(predicted) {
        confusion[t][p] += 1;
    }
    let correct: usize = (0..n).map(|i| confusion[i][i]).sum();
    let per_class: Vec<ClassMetrics> = (0..n)
        .map(|c| {
            let tp = confusion[c][c] as f64;
            let predicted_c: usize = (0..n).map(|t| confusion[t][c]).sum();
            let support: usize = confusion[c].iter().sum();
            let precision = if predicted_c == 0 {
                0.0
            } else {
                tp / predicted_c as f64
            };
            let recall = if support == 0 {
                0.0
            } else {
                tp / support as f64
            };
            let f1 = if precision + recall == 0.0 {
                0.0
            } else {
                2.0 * precision * recall / (precision + recall)
            };
            ClassMetrics {
                label: labels[c].clone(),
                precision,
                recall,
                f1,
                support,
            }
        })
        .collect();
    // Macro-F1 over the classes present in the evaluation set (as scikit-learn does
    // when given only the labels seen).
    let present: Vec<&ClassMetrics> = per_class.iter().filter(|m| m.support > 0).collect();
    let macro_f1 = if present.is_empty() {
        0.0
    } else {
        present.iter().map(|m| m.f1).sum::<f64>() / present.len() as f64
    };
    Evaluation {
        examples: truth.len(),
        accuracy: if truth.is_empty() {
            0.0
        } else {
            correct as f64 / truth.len() as f64
        },
        macro_f1,
        per_class,
        confusion,
        labels: labels.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_hand_computed_figures() {
        let labels = vec!["ham".to_string(), "spam".to_string()];
        // truth:     h h h h s s
        // predicted: h h h s s h
        let e = evaluate(&labels, &[0, 0, 0, 0, 1, 1], &[0, 0, 0, 1, 1, 0]);
        assert_eq!(e.confusion, vec![vec![3, 1], vec![1, 1]]);
        assert!((e.accuracy - 4.0 / 6.0).abs() < 1e-12);
        assert!((e.per_class[0].precision - 0.75).abs() < 1e-12);
        assert!((e.per_class[0].recall - 0.75).abs() < 1e-12);
        assert!((e.per_class[1].precision - 0.5).abs() < 1e-12);
        assert!((e.macro_f1 - (0.75 + 0.5) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn perfect_and_absent_classes() {
        let labels = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let e = evaluate(&labels, &[0, 1, 1], &[0, 1, 1]);
        assert_eq!(e.accuracy, 1.0);
        assert_eq!(e.macro_f1, 1.0, "class c has no support and does not count");
    }
}
