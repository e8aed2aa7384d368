//! The default encoder + trainer on a slice of the real SMS spam data: a floor that
//! catches a broken encoder, pooling, trainer or metric (the full-data figures are in the
//! README: `aifab train --train services/aifab/data/sms_spam/train.jsonl --eval
//! services/aifab/data/sms_spam/test.jsonl`).

use std::path::PathBuf;

use aifab_trainer::dataset::read_jsonl;
use aifab_trainer::job::Trainer;
use aifab_trainer::train::TrainConfig;

fn model_dir() -> PathBuf {
    let dir = std::env::var("AIFAB_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap())
                .join(".cache/aifab/models/all-minilm-l6-v2")
        });
    assert!(
        dir.join("model.safetensors").exists(),
        "the real model is not in {} — run scripts/fetch-model first (or set AIFAB_MODEL_DIR)",
        dir.display()
    );
    dir
}

/// The SMS spam split kept in the repo (`services/aifab/data/sms_spam`), so the test
/// runs in a plain clone.
fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../aifab/data/sms_spam")
        .join(name)
}

#[test]
fn sms_spam_subset_reaches_a_floor() {
    let train: Vec<_> = read_jsonl(&data("train.jsonl"))
        .unwrap()
        .into_iter()
        .take(800)
        .collect();
    let eval: Vec<_> = read_jsonl(&data("test.jsonl"))
        .unwrap()
        .into_iter()
        .take(300)
        .collect();
    let mut trainer = Trainer::load(&model_dir(), 128, TrainConfig::default()).unwrap();
    let out = trainer.run(&train, &eval, |_| {}).unwrap();
    let e = &out.evaluation;
    assert!(
        e.accuracy >= 0.95,
        "accuracy {:.4} on 300 test texts after 800 training texts",
        e.accuracy
    );
    assert!(e.macro_f1 >= 0.88, "macro_f1 {:.4}", e.macro_f1);
    assert_eq!(e.labels, vec!["ham".to_string(), "spam".to_string()]);
}
