//! Running the model over a batch's rows: grouped by length where the encoder pads, and a
//! group that fails retried row by row.

use std::collections::BTreeMap;

use aifab_model::batcher;
use aifab_model::{Classification, Classifier};

use crate::queue::Queued;

/// Rows whose padding would waste more than this share of a compute group start a new one
/// (for encoders that pad).
const MAX_PADDING_FRACTION: f64 = 0.25;

/// What one model made of its rows, by row index.
#[derive(Debug, Default)]
pub struct Computed {
    pub results: BTreeMap<usize, Classification>,
    /// Why a row failed alone (it is dead-lettered as `model_rejected`).
    pub failures: BTreeMap<usize, String>,
}

/// Classify the `live` rows in length groups. A group the model rejects is retried row
/// by row so one poison request cannot fail its neighbours.
pub fn classify_rows(model: &Classifier, rows: &[Queued], live: &[usize]) -> Computed {
    let ids: Vec<&[u32]> = live
        .iter()
        .map(|i| rows[*i].request.as_ref().unwrap().input_ids.as_slice())
        .collect();
    let lengths: Vec<usize> = ids.iter().map(|s| s.len()).collect();
    let mut results = BTreeMap::new();
    let mut failures = BTreeMap::new();
    // Padding is waste only where the encoder pads; a ragged one takes the batch whole.
    let max_padding = if model.encoder.implementation().is_ragged() {
        1.0
    } else {
        MAX_PADDING_FRACTION
    };
    for group in batcher::length_groups(&lengths, max_padding) {
        let batch: Vec<&[u32]> = group.iter().map(|&g| ids[g]).collect();
        match model.classify(&batch) {
            Ok(out) => {
                for (&g, c) in group.iter().zip(out) {
                    results.insert(live[g], c);
                }
            }
            Err(_) => {
                for &g in &group {
                    match model.classify(&[ids[g]]) {
                        Ok(mut out) => {
                            results.insert(live[g], out.remove(0));
                        }
                        Err(e) => {
                            failures.insert(live[g], e.to_string());
                        }
                    }
                }
            }
        }
    }
    Computed { results, failures }
}
