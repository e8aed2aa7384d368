//! Training a classification head on frozen encoder embeddings with candle-nn:
//! softmax regression, AdamW, cross-entropy, a validation split with early stopping,
//! deterministic in its seed.
//!
//! Features are standardised for training (it makes one learning rate fit every
//! dimension) and the standardisation is folded back into the weights afterwards, so the
//! saved head applies to raw embeddings exactly as the worker computes them.

use aifab_model::ClassificationHead;
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::seq::SliceRandom;
use rand::SeedableRng;

#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Most passes over the training split.
    pub max_epochs: usize,
    /// Stop after this many epochs without a better validation loss.
    pub patience: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub batch_size: usize,
    /// Share of the training examples held out for early stopping.
    pub validation_fraction: f64,
    pub seed: u64,
    /// After early stopping picked the epoch count, retrain on training + validation.
    pub refit: bool,
    /// Inverse L2 strength, as scikit-learn's `C`: larger fits the training set harder.
    pub c: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            max_epochs: 300,
            patience: 20,
            learning_rate: 0.05,
            weight_decay: 0.0,
            batch_size: 128,
            validation_fraction: 0.1,
            seed: 42,
            refit: false,
            c: 10.0,
        }
    }
}

/// One epoch's progress, for progress bars and NATS progress events.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochProgress {
    pub epoch: usize,
    pub max_epochs: usize,
    pub train_loss: f64,
    pub validation_loss: f64,
    pub validation_accuracy: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrainReport {
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub best_validation_loss: f64,
    pub train_examples: usize,
    pub validation_examples: usize,
}

/// A trained head and how its training went.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainedHead {
    pub head: ClassificationHead,
    pub report: TrainReport,
}

/// Train a head over `labels` on embeddings `x` with class ids `y`.
pub fn train_head(
    x: &[Vec<f32>],
    y: &[usize],
    labels: Vec<String>,
    cfg: &TrainConfig,
    mut on_epoch: impl FnMut(EpochProgress),
) -> anyhow::Result<TrainedHead> {
    anyhow::ensure!(!x.is_empty(), "no training examples");
    anyhow::ensure!(
        x.len() == y.len(),
        "{} embeddings but {} labels",
        x.len(),
        y.len()
    );
    anyhow::ensure!(
        labels.len() >= 2,
        "need at least two labels, found {}",
        labels.len()
    );
    let hidden = x[0].len();
    let n_labels = labels.len();

    // Deterministic split into training and validation.
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.shuffle(&mut rng);
    let n_val = if x.len() >= 10 {
        ((x.len() as f64) * cfg.validation_fraction).round() as usize
    } else {
        0
    };
    let (val_idx, train_idx) = order.split_at(n_val);
    let train_idx = train_idx.to_vec();
    let val_idx = if val_idx.is_empty() {
        train_idx.clone()
    } else {
        val_idx.to_vec()
    };
    let train_examples = train_idx.len();
    let validation_examples = if n_val > 0 { val_idx.len() } else { 0 };

    // Find the best epoch count on the validation split, then refit on every example
    // for that many epochs: early stopping without losing a tenth of the data.
    let data = Dataset { x, y, n_labels };
    let search = fit(
        &data,
        &train_idx,
        Some(&val_idx),
        cfg,
        cfg.max_epochs,
        &mut rng,
        &mut on_epoch,
    )?;
    let mut all_idx = train_idx.clone();
    if n_val > 0 {
        all_idx.extend_from_slice(&val_idx);
    }
    let final_fit = if n_val > 0 && cfg.refit {
        fit(
            &data,
            &all_idx,
            None,
            cfg,
            search.best_epoch,
            &mut rng,
            &mut |_| {},
        )?
    } else {
        search.clone()
    };
    let (w_std, b_std, mean, std) = (
        final_fit.weight,
        final_fit.bias,
        final_fit.mean,
        final_fit.std,
    );
    let best = (search.best_loss, search.best_epoch);
    let epochs_run = search.epochs_run;

    // Fold the standardisation in: W·((x-m)/s) + b = (W/s)·x + (b - W·(m/s)).
    let mut weight = Vec::with_capacity(n_labels * hidden);
    let mut bias = Vec::with_capacity(n_labels);
    for (row, b0) in w_std.iter().zip(&b_std) {
        let mut shift = 0f64;
        for j in 0..hidden {
            let wj = row[j] as f64 / std[j];
            weight.push(wj as f32);
            shift += wj * mean[j];
        }
        bias.push((*b0 as f64 - shift) as f32);
    }
    let head = ClassificationHead::new(labels, hidden, weight, bias)?;
    let report = TrainReport {
        epochs_run,
        best_epoch: best.1,
        best_validation_loss: best.0,
        train_examples,
        validation_examples,
    };
    Ok(TrainedHead { head, report })
}

/// What a head is fitted to: embeddings, their class ids, and how many classes there are.
struct Dataset<'a> {
    x: &'a [Vec<f32>],
    y: &'a [usize],
    n_labels: usize,
}

#[derive(Clone)]
struct Fit {
    weight: Vec<Vec<f32>>,
    bias: Vec<f32>,
    mean: Vec<f64>,
    std: Vec<f64>,
    best_epoch: usize,
    best_loss: f64,
    epochs_run: usize,
}

/// Train softmax regression on standardised `idx` rows for up to `epochs` epochs. With a
/// validation set, keep the weights of the epoch with the lowest validation loss and stop
/// after `patience` epochs without improvement; without one, keep the last epoch's.
fn fit(
    data: &Dataset,
    idx: &[usize],
    val_idx: Option<&[usize]>,
    cfg: &TrainConfig,
    epochs: usize,
    rng: &mut rand::rngs::StdRng,
    on_epoch: &mut dyn FnMut(EpochProgress),
) -> anyhow::Result<Fit> {
    let Dataset { x, y, n_labels } = *data;
    let hidden = x[0].len();
    let dev = Device::Cpu;
    let mut mean = vec![0f64; hidden];
    let mut var = vec![0f64; hidden];
    for &i in idx {
        for (m, v) in mean.iter_mut().zip(&x[i]) {
            *m += *v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= idx.len() as f64);
    for &i in idx {
        for ((s, v), m) in var.iter_mut().zip(&x[i]).zip(&mean) {
            *s += (*v as f64 - m).powi(2);
        }
    }
    // Centre only: the embeddings are already on one scale (unit norm), and keeping
    // that scale is what makes the L2 penalty mean what it does in logistic regression.
    // (Per-dimension scaling blows up near-constant directions and the head overfits
    // them on small training sets.)
    let _ = &var;
    let std: Vec<f64> = vec![1.0; hidden];
    let standardise = |rows: &[usize]| -> anyhow::Result<(Tensor, Tensor)> {
        let mut flat = Vec::with_capacity(rows.len() * hidden);
        for &i in rows {
            flat.extend(
                x[i].iter()
                    .zip(&mean)
                    .zip(&std)
                    .map(|((v, m), s)| ((*v as f64 - m) / s) as f32),
            );
        }
        let xs = Tensor::from_vec(flat, (rows.len(), hidden), &dev)?;
        let ys = Tensor::from_vec(
            rows.iter().map(|&i| y[i] as u32).collect::<Vec<_>>(),
            rows.len(),
            &dev,
        )?;
        Ok((xs, ys))
    };
    let val = match val_idx {
        Some(v) => Some((standardise(v)?, v.len())),
        None => None,
    };

    // Zero initialisation: the problem is convex, and zeros make runs reproducible.
    let w = Var::zeros((n_labels, hidden), DType::F32, &dev)?;
    let b = Var::zeros(n_labels, DType::F32, &dev)?;
    let mut opt = AdamW::new(
        vec![w.clone(), b.clone()],
        ParamsAdamW {
            lr: cfg.learning_rate,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;
    let forward = |xs: &Tensor| -> candle_core::Result<Tensor> {
        xs.matmul(&w.as_tensor().t()?)?.broadcast_add(b.as_tensor())
    };

    let mut best = (
        f64::INFINITY,
        0usize,
        w.as_tensor().copy()?,
        b.as_tensor().copy()?,
    );
    let mut epochs_run = 0;
    let mut order = idx.to_vec();
    for epoch in 1..=epochs.max(1) {
        epochs_run = epoch;
        order.shuffle(rng);
        let mut loss_sum = 0.0;
        for chunk in order.chunks(cfg.batch_size.max(1)) {
            let (xs, ys) = standardise(chunk)?;
            let ce = candle_nn::loss::cross_entropy(&forward(&xs)?, &ys)?;
            // L2 penalty as in logistic regression: ||W||² / (2·C·n) per example.
            let penalty = (w.as_tensor().sqr()?.sum_all()? * (0.5 / (cfg.c * idx.len() as f64)))?;
            let loss = (ce + penalty)?;
            opt.backward_step(&loss)?;
            loss_sum += loss.to_scalar::<f32>()? as f64 * chunk.len() as f64;
        }
        let Some(((val_x, val_y), n_val)) = &val else {
            best = (
                f64::NAN,
                epoch,
                w.as_tensor().copy()?,
                b.as_tensor().copy()?,
            );
            continue;
        };
        let logits = forward(val_x)?;
        let val_loss = candle_nn::loss::cross_entropy(&logits, val_y)?.to_scalar::<f32>()? as f64;
        let correct = logits
            .argmax(D::Minus1)?
            .eq(val_y)?
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()? as f64;
        on_epoch(EpochProgress {
            epoch,
            max_epochs: epochs,
            train_loss: loss_sum / order.len() as f64,
            validation_loss: val_loss,
            validation_accuracy: correct / *n_val as f64,
        });
        if val_loss < best.0 - 1e-6 {
            best = (
                val_loss,
                epoch,
                w.as_tensor().copy()?,
                b.as_tensor().copy()?,
            );
        } else if epoch - best.1 >= cfg.patience {
            break;
        }
    }
    Ok(Fit {
        weight: best.2.to_vec2()?,
        bias: best.3.to_vec1()?,
        mean,
        std,
        best_epoch: best.1,
        best_loss: best.0,
        epochs_run,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two separable clusters: the head must learn them, and the folded weights must
    /// classify raw inputs the same way the standardised model did.
    fn clusters(n: usize, seed: u64) -> (Vec<Vec<f32>>, Vec<usize>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..n {
            let class = i % 3;
            let v: Vec<f32> = (0..8)
                .map(|d| {
                    let centre = if d == class { 2.0 } else { 0.0 };
                    centre + rand::Rng::random_range(&mut rng, -0.8f32..0.8) + 5.0
                })
                .collect();
            x.push(v);
            y.push(class);
        }
        (x, y)
    }

    #[test]
    fn learns_separable_classes_on_raw_inputs() {
        let (x, y) = clusters(300, 1);
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let mut epochs = 0;
        let TrainedHead { head, report } =
            train_head(&x, &y, labels, &TrainConfig::default(), |_| epochs += 1).unwrap();
        assert_eq!(epochs, report.epochs_run);
        assert!(report.best_epoch >= 1);
        let (tx, ty) = clusters(90, 2);
        let correct = tx
            .iter()
            .zip(&ty)
            .filter(|(v, t)| {
                let s = head.scores(&[v.to_vec()]);
                let best = s[0]
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .unwrap()
                    .0;
                best == **t
            })
            .count();
        assert!(correct >= 88, "{correct}/90 on held-out clusters");
    }

    #[test]
    fn same_seed_same_head() {
        let (x, y) = clusters(120, 3);
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let cfg = TrainConfig {
            max_epochs: 20,
            ..Default::default()
        };
        let h1 = train_head(&x, &y, labels.clone(), &cfg, |_| {})
            .unwrap()
            .head;
        let h2 = train_head(&x, &y, labels, &cfg, |_| {}).unwrap().head;
        assert_eq!(h1.weight(), h2.weight());
        assert_eq!(h1.bias(), h2.bias());
    }

    #[test]
    fn refuses_bad_input() {
        assert!(train_head(
            &[],
            &[],
            vec!["a".into(), "b".into()],
            &TrainConfig::default(),
            |_| {}
        )
        .is_err());
        let err = train_head(
            &[vec![1.0]],
            &[0],
            vec!["a".into()],
            &TrainConfig::default(),
            |_| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("two labels"));
    }
}
