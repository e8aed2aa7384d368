//! Scoring the demo's answers: accuracy, throughput and latency from what came back.

use std::collections::HashMap;

use aifab_core::messages::Outcome;

/// What came back for one test request.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub label: Option<String>,
    pub outcome: Outcome,
    pub produced_at_ms: i64,
    pub model_version: String,
}

/// The demo's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub sent: usize,
    pub answered: usize,
    pub missing: usize,
    /// Answered with a label (computed or from the dedupe cache).
    pub labelled: usize,
    pub cached: usize,
    pub expired: usize,
    /// Correct labels over every request sent (a missing answer counts as wrong).
    pub accuracy: f64,
    /// Answers per second, from the first send to the last answer.
    pub throughput_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub versions: Vec<String>,
}

/// Score the answers: `labels[i]` is request i's true label, `sent_ms[i]` when it was
/// sent; latency runs from the send to the prediction's commit.
pub fn summarize(labels: &[String], sent_ms: &[i64], answers: &HashMap<usize, Answer>) -> Summary {
    let mut hist =
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000, 3).expect("histogram bounds");
    let (mut correct, mut labelled, mut cached, mut expired) = (0usize, 0usize, 0usize, 0usize);
    let mut last_ms = i64::MIN;
    let mut versions: Vec<String> = Vec::new();
    for (&i, a) in answers {
        last_ms = last_ms.max(a.produced_at_ms);
        let _ = hist.record((a.produced_at_ms - sent_ms[i]).max(1) as u64);
        if a.label.is_some() {
            labelled += 1;
        }
        if a.label.as_deref() == Some(labels[i].as_str()) {
            correct += 1;
        }
        match a.outcome {
            Outcome::Cached => cached += 1,
            Outcome::Expired => expired += 1,
            _ => {}
        }
        if !a.model_version.is_empty() && !versions.contains(&a.model_version) {
            versions.push(a.model_version.clone());
        }
    }
    versions.sort();
    let first_ms = sent_ms.iter().copied().min().unwrap_or(0);
    let span_s = if answers.is_empty() {
        0.0
    } else {
        ((last_ms - first_ms) as f64 / 1000.0).max(1e-3)
    };
    let quantile = |q: f64| {
        if answers.is_empty() {
            0.0
        } else {
            hist.value_at_quantile(q) as f64
        }
    };
    Summary {
        sent: labels.len(),
        answered: answers.len(),
        missing: labels.len() - answers.len(),
        labelled,
        cached,
        expired,
        accuracy: if labels.is_empty() {
            0.0
        } else {
            correct as f64 / labels.len() as f64
        },
        throughput_per_s: if answers.is_empty() {
            0.0
        } else {
            answers.len() as f64 / span_s
        },
        p50_ms: quantile(0.5),
        p99_ms: quantile(0.99),
        versions,
    }
}

/// The index of a demo request id (`<run>-<i>`) of this run.
pub fn request_index(id: &str, run: &str) -> Option<usize> {
    id.strip_prefix(run)?.strip_prefix('-')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(label: &str, outcome: Outcome, at: i64, version: &str) -> Answer {
        Answer {
            label: Some(label.into()),
            outcome,
            produced_at_ms: at,
            model_version: version.into(),
        }
    }

    #[test]
    fn summary_scores_against_the_labels_and_counts_missing_as_wrong() {
        let labels: Vec<String> = ["ham", "spam", "ham", "spam"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let sent = vec![1_000, 1_000, 1_010, 1_020];
        let mut answers = HashMap::new();
        answers.insert(0, answer("ham", Outcome::Ok, 1_100, "v2"));
        answers.insert(1, answer("ham", Outcome::Ok, 1_200, "v2"));
        answers.insert(2, answer("ham", Outcome::Cached, 1_050, "v1"));
        let s = summarize(&labels, &sent, &answers);
        assert_eq!(
            (s.sent, s.answered, s.missing, s.labelled, s.cached),
            (4, 3, 1, 3, 1)
        );
        assert_eq!(s.accuracy, 0.5, "2 right of 4 sent");
        assert_eq!(s.versions, vec!["v1".to_string(), "v2".into()]);
        // 3 answers over 1_000 → 1_200 ms.
        assert!(
            (s.throughput_per_s - 15.0).abs() < 1e-9,
            "{}",
            s.throughput_per_s
        );
        assert!(
            (s.p50_ms - 100.0).abs() <= 1.0 && (s.p99_ms - 200.0).abs() <= 1.0,
            "{s:?}"
        );
    }

    #[test]
    fn nothing_answered_is_zero_not_a_panic() {
        let s = summarize(&["ham".to_string()], &[5], &HashMap::new());
        assert_eq!(
            (s.accuracy, s.throughput_per_s, s.p99_ms, s.missing),
            (0.0, 0.0, 0.0, 1)
        );
    }

    #[test]
    fn request_ids_belong_to_their_run() {
        assert_eq!(request_index("demo-abc-17", "demo-abc"), Some(17));
        assert_eq!(request_index("demo-abc-train-3", "demo-abc"), None);
        assert_eq!(request_index("demo-abd-17", "demo-abc"), None);
    }
}
