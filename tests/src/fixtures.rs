//! Test data: names no other run used, inference requests, tiny random models, the SMS
//! split the benchmarks read, the current budget period.

use std::path::{Path, PathBuf};

use aifab_core::messages::{InferenceRequest, Truncation};

/// A name no earlier run used, so tests never see each other's data.
pub fn unique(prefix: &str) -> String {
    format!("test.{prefix}.{}", uuid::Uuid::new_v4().simple())
}

/// The SMS test split kept in the repo, relative to the repo root (where the
/// `load-tests/bench-*` scripts run): the benchmarks' default `--data`.
pub const SMS_TEST_SPLIT: &str = "services/aifab/data/sms_spam/test.jsonl";

/// `path` as given, except that the default [`SMS_TEST_SPLIT`], when the working
/// directory is not the repo root, is found from this checkout's root.
pub fn sms_test_split_or(path: PathBuf) -> PathBuf {
    if path == Path::new(SMS_TEST_SPLIT) && !path.exists() {
        let in_repo = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(SMS_TEST_SPLIT);
        if in_repo.exists() {
            return in_repo;
        }
    }
    path
}

/// This month, UTC, as a budget period (`YYYY-MM`).
pub fn this_month_utc() -> String {
    aifab_core::period::month_of(aifab_core::now_ms())
}

/// Inference request number `i` for `task` with id `<prefix>-<i>`: token ids valid for
/// the tiny BERT (and any real vocabulary), lengths 3..40, tenant `beta` for every third
/// and `acme` otherwise (callers may overwrite `tenant` and `received_at_ms`).
pub fn request(task: &str, prefix: &str, i: usize) -> InferenceRequest {
    let len = 3 + (i * 7919) % 38;
    let mut ids = vec![2u32];
    ids.extend((0..len - 2).map(|j| 5 + ((i * 31 + j * 17) % 100) as u32));
    ids.push(3);
    InferenceRequest {
        schema: aifab_core::messages::tag(),
        id: format!("{prefix}-{i}"),
        tenant: if i.is_multiple_of(3) {
            "beta".into()
        } else {
            "acme".into()
        },
        task: task.into(),
        text: format!("request {i}"),
        token_count: ids.len() as u32,
        input_ids: ids,
        truncation: Truncation::None,
        received_at_ms: aifab_core::now_ms(),
        deadline_ms: None,
        priority: 0,
        attributes: Default::default(),
    }
}

/// A tiny random BERT and two heads (v1: labels a/b, v2: labels x/y/z) in a temp dir,
/// so worker tests need no real model.
pub struct TinyModels {
    pub _dir: tempfile::TempDir,
    pub model_dir: PathBuf,
    pub head_v1: PathBuf,
    pub head_v2: PathBuf,
}

pub const V1_LABELS: &[&str] = &["a", "b"];
pub const V2_LABELS: &[&str] = &["x", "y", "z"];

pub fn tiny_models() -> TinyModels {
    use aifab_model::testing::{write_random_head, write_tiny_bert, TINY_HIDDEN};
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("encoder");
    let head_v1 = dir.path().join("v1");
    let head_v2 = dir.path().join("v2");
    write_tiny_bert(&model_dir, 7).unwrap();
    write_random_head(&head_v1, TINY_HIDDEN, V1_LABELS, 1).unwrap();
    write_random_head(&head_v2, TINY_HIDDEN, V2_LABELS, 2).unwrap();
    TinyModels {
        _dir: dir,
        model_dir,
        head_v1,
        head_v2,
    }
}

/// A registry record of the head in `dir` (a tiny model's), with its files' digest as the
/// trainer records it, so a worker verifies and serves it.
pub fn registry_record(
    task: &str,
    version: &str,
    dir: &std::path::Path,
    labels: &[&str],
) -> aifab_core::registry::ModelRecord {
    aifab_core::registry::ModelRecord {
        task: task.into(),
        version: version.into(),
        artifact_uri: format!("file://{}", dir.display()),
        encoder: "tiny".into(),
        encoder_sha256: "0".into(),
        artifact_sha256: Some(
            aifab_core::artifacts::dir_sha256(dir, &["head.safetensors", "labels.json"])
                .expect("the head's files"),
        ),
        labels: labels.iter().map(|s| s.to_string()).collect(),
        metrics: [("macro_f1".to_string(), 0.9)].into(),
        train_examples: 0,
        eval_examples: 0,
        created_at_ms: aifab_core::now_ms(),
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn request_ids_and_lengths() {
        let r = request("t", "p", 5);
        assert_eq!(r.id, "p-5");
        assert_eq!(r.token_count as usize, r.input_ids.len());
        assert!((3..=40).contains(&r.input_ids.len()));
        assert_eq!((r.input_ids[0], *r.input_ids.last().unwrap()), (2, 3));
    }

    #[test]
    fn this_month_is_a_budget_period() {
        let m = this_month_utc();
        assert!(aifab_core::period::period_bounds(&m).is_some(), "{m}");
        assert_eq!(m.len(), 7);
    }
}
