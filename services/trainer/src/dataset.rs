//! Labelled examples: reading JSONL, splitting, and the bounded per-task training window.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::Path;

use anyhow::Context;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Example {
    pub text: String,
    pub label: String,
}

/// Read a JSONL file of `{"text": ..., "label": ...}` (other fields ignored). Errors name
/// the line.
pub fn read_jsonl(path: &Path) -> anyhow::Result<Vec<Example>> {
    let body =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_jsonl(&body, &path.display().to_string())
}

/// Parse JSONL text of `{"text": ..., "label": ...}`; `origin` names it in errors.
pub fn parse_jsonl(body: &str, origin: &str) -> anyhow::Result<Vec<Example>> {
    let mut out = Vec::new();
    for (n, line) in body.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{origin}:{}: not JSON", n + 1))?;
        let text = v.get("text").and_then(|t| t.as_str());
        let label = v.get("label").map(|l| match l {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        match (text, label) {
            (Some(t), Some(l)) if !t.trim().is_empty() => out.push(Example {
                text: t.to_string(),
                label: l,
            }),
            _ => anyhow::bail!(
                "{origin}:{}: expected {{\"text\": non-empty string, \"label\": ...}}",
                n + 1
            ),
        }
    }
    anyhow::ensure!(!out.is_empty(), "{origin}: no examples");
    Ok(out)
}

/// The sorted set of labels.
pub fn labels_of(examples: &[Example]) -> Vec<String> {
    examples
        .iter()
        .map(|e| e.label.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Deterministic split: `fraction` of the examples (seeded shuffle) held out.
pub fn split(examples: &[Example], fraction: f64, seed: u64) -> (Vec<Example>, Vec<Example>) {
    let mut idx: Vec<usize> = (0..examples.len()).collect();
    idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let n_out = ((examples.len() as f64) * fraction).round() as usize;
    let held: Vec<Example> = idx[..n_out].iter().map(|&i| examples[i].clone()).collect();
    let kept: Vec<Example> = idx[n_out..].iter().map(|&i| examples[i].clone()).collect();
    (kept, held)
}

/// The most recent `capacity` examples per task: a sliding window, so the model follows
/// the stream and memory stays bounded.
#[derive(Debug, Default)]
pub struct TrainingWindow {
    capacity: usize,
    tasks: HashMap<String, VecDeque<Example>>,
    new_since_training: HashMap<String, usize>,
}

impl TrainingWindow {
    pub fn new(capacity: usize) -> Self {
        TrainingWindow {
            capacity: capacity.max(1),
            ..Default::default()
        }
    }

    /// Add an example; `fresh` ones count towards the every-N-examples trigger (replayed
    /// history does not).
    pub fn push(&mut self, task: &str, example: Example, fresh: bool) {
        let q = self.tasks.entry(task.to_string()).or_default();
        q.push_back(example);
        while q.len() > self.capacity {
            q.pop_front();
        }
        if fresh {
            *self.new_since_training.entry(task.to_string()).or_default() += 1;
        }
    }

    pub fn examples(&self, task: &str) -> Vec<Example> {
        self.tasks
            .get(task)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Examples held per task.
    pub fn sizes(&self) -> std::collections::BTreeMap<String, usize> {
        self.tasks
            .iter()
            .map(|(t, q)| (t.clone(), q.len()))
            .collect()
    }

    pub fn len(&self, task: &str) -> usize {
        self.tasks.get(task).map_or(0, |q| q.len())
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.values().all(|q| q.is_empty())
    }

    pub fn new_examples(&self, task: &str) -> usize {
        self.new_since_training.get(task).copied().unwrap_or(0)
    }

    /// Tasks with at least `every_n` new examples since they were last trained.
    pub fn due(&self, every_n: usize) -> Vec<String> {
        let mut due: Vec<String> = self
            .new_since_training
            .iter()
            .filter(|(_, n)| **n >= every_n)
            .map(|(t, _)| t.clone())
            .collect();
        due.sort();
        due
    }

    pub fn mark_trained(&mut self, task: &str) {
        self.new_since_training.remove(task);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(t: &str, l: &str) -> Example {
        Example {
            text: t.into(),
            label: l.into(),
        }
    }

    #[test]
    fn window_is_bounded_and_counts_fresh_examples() {
        let mut w = TrainingWindow::new(3);
        for i in 0..5 {
            w.push("spam", ex(&format!("t{i}"), "a"), i >= 2);
        }
        assert_eq!(w.len("spam"), 3);
        assert_eq!(w.examples("spam")[0].text, "t2");
        assert_eq!(w.new_examples("spam"), 3);
        assert_eq!(w.due(3), vec!["spam".to_string()]);
        assert!(w.due(4).is_empty());
        w.mark_trained("spam");
        assert!(w.due(1).is_empty());
    }

    #[test]
    fn split_is_deterministic_and_complete() {
        let all: Vec<Example> = (0..100)
            .map(|i| ex(&format!("t{i}"), if i % 2 == 0 { "a" } else { "b" }))
            .collect();
        let (a1, b1) = split(&all, 0.2, 7);
        let (a2, b2) = split(&all, 0.2, 7);
        assert_eq!((a1.len(), b1.len()), (80, 20));
        assert_eq!(a1, a2);
        assert_eq!(b1, b2);
        assert_eq!(labels_of(&all), vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn jsonl_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        std::fs::write(
            &p,
            "{\"text\":\"hi\",\"label\":\"a\"}\n{\"text\":\"\",\"label\":\"b\"}\n",
        )
        .unwrap();
        let err = read_jsonl(&p).unwrap_err().to_string();
        assert!(err.contains(":2:"), "{err}");
        std::fs::write(&p, "{\"text\":\"hi\",\"label\":1}\n").unwrap();
        assert_eq!(
            read_jsonl(&p).unwrap()[0].label,
            "1",
            "numeric labels become strings"
        );
    }
}
