//! Worker-kill chaos: SIGKILL an inference worker mid-stream, again and again, and count
//! per request id what a read_committed reader saw (lost, duplicated).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::fixtures::unique;
use crate::kafka::produce_requests_on;
use crate::process::sigkill;
use crate::readers::PredictionReader;
use crate::worker::WorkerRun;

/// Counts per request id of what a read_committed reader saw, against the ids expected:
/// how many were never predicted and how many more than once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    pub requests: usize,
    pub lost: usize,
    pub duplicated: usize,
}

/// [`Delivery`] of `expected` ids given the predictions per id in `counts` (ids not
/// expected are ignored).
pub fn delivery<'a>(
    expected: impl IntoIterator<Item = &'a str>,
    counts: &BTreeMap<String, usize>,
) -> Delivery {
    delivery_of_counts(
        expected
            .into_iter()
            .map(|id| counts.get(id).copied().unwrap_or(0)),
    )
}

/// [`Delivery`] from the number of committed predictions of each expected request: 0 is
/// lost, more than 1 duplicated.
pub fn delivery_of_counts(counts: impl IntoIterator<Item = usize>) -> Delivery {
    let mut d = Delivery::default();
    for c in counts {
        d.requests += 1;
        match c {
            0 => d.lost += 1,
            1 => {}
            _ => d.duplicated += 1,
        }
    }
    d
}

/// A worker-kill scenario for [`kill_chaos`].
#[derive(Debug, Clone)]
pub struct KillPlan {
    /// Requests produced to the run's input topic before the first worker starts.
    pub requests: usize,
    /// SIGKILLs, one each time another 1/(kills+1) of the requests have a committed
    /// prediction.
    pub kills: usize,
    /// The worker's max batch size.
    pub batch: usize,
    /// Instance id of the replica that is killed and restarted under the same id (so the
    /// restart fences the dead one's open transaction, as a supervisor's restart does).
    pub instance: String,
    /// After the last kill, start this (instance id, max batch) instead of restarting
    /// `instance`: another identity finishes the stream.
    pub finisher: Option<(String, usize)>,
    /// Longest wait for each phase (a kill point, the rest of the stream, the drain).
    pub timeout: Duration,
}

/// What [`kill_chaos`] saw.
#[derive(Debug)]
pub struct KillReport {
    pub kills: usize,
    /// Per request id, against a read_committed reader read to the end of the topic.
    pub delivery: Delivery,
    /// Every committed prediction of the run (duplicates included).
    pub predictions: Vec<aifab_core::messages::Prediction>,
    /// From the first worker's start to the reader reaching the end.
    pub elapsed: Duration,
    /// False if a wait ran out (then the missing ids count as lost).
    pub completed: bool,
    /// The replica still running at the end (the caller stops it).
    pub last: tokio::process::Child,
}

/// Produce `plan.requests` requests to `run`'s topic, start one worker, SIGKILL it
/// `plan.kills` times mid-stream (restarting it each time), let the last one finish, wait
/// for lag 0 and count every committed prediction per request id. `load-tests`' `chaos`
/// and `tests/tests/inference_worker.rs` run this.
pub async fn kill_chaos(run: &WorkerRun, plan: &KillPlan) -> KillReport {
    let n = plan.requests;
    let prefix = unique("chaos");
    let brokers = run.endpoints.kafka.clone();
    let mut reader = tokio::task::spawn_blocking(move || {
        PredictionReader::on_brokers(&brokers, aifab_core::topics::PREDICTIONS.name)
    })
    .await
    .unwrap();
    let t = std::time::Instant::now();
    produce_requests_on(&run.endpoints.kafka, &run.topic, &run.task, &prefix, 0..n).await;
    eprintln!(
        "produced {n} requests to {} in {:.1}s",
        run.topic,
        t.elapsed().as_secs_f64()
    );

    let started = std::time::Instant::now();
    let (mut worker, _) = run.start(&plan.instance, plan.batch, &[]);
    let mut kills = 0;
    let mut completed = true;
    for k in 1..=plan.kills {
        let at = k * n / (plan.kills + 1);
        if !reader.read_until(&prefix, at, plan.timeout) {
            eprintln!(
                "only {} distinct predictions after {:?}; no more kills",
                reader.counts().len(),
                plan.timeout
            );
            completed = false;
            break;
        }
        sigkill(&mut worker);
        worker.wait().await.expect("wait for the killed worker");
        kills += 1;
        let (name, batch) = match &plan.finisher {
            Some((name, batch)) if k == plan.kills => (name.as_str(), *batch),
            _ => (plan.instance.as_str(), plan.batch),
        };
        eprintln!(
            "kill {k}: SIGKILL at {} distinct predictions ({:.1}s), starting {name}",
            reader.counts().len(),
            started.elapsed().as_secs_f64()
        );
        worker = run.start(name, batch, &[]).0;
    }
    if completed && !reader.read_until(&prefix, n, plan.timeout) {
        eprintln!(
            "only {} of {n} requests predicted after {:?}",
            reader.counts().len(),
            plan.timeout
        );
        completed = false;
    }
    if !run.wait_drained(plan.timeout).await {
        eprintln!(
            "the worker group did not reach lag 0 within {:?}",
            plan.timeout
        );
        completed = false;
    }
    // read_committed: reading to the end waits out open transactions, so every committed
    // prediction (a duplicate too) is counted.
    if !reader.read_to_end(&prefix, Duration::from_secs(90)) {
        eprintln!("the predictions topic never settled");
        completed = false;
    }
    let elapsed = started.elapsed();
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let delivery = delivery(ids.iter().map(String::as_str), &reader.counts());
    KillReport {
        kills,
        delivery,
        predictions: reader.seen,
        elapsed,
        completed,
        last: worker,
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn delivery_counts_missing_and_repeated_ids() {
        let counts: BTreeMap<String, usize> = [("r-0", 1), ("r-1", 2), ("r-3", 1), ("other", 5)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let ids: Vec<String> = (0..4).map(|i| format!("r-{i}")).collect();
        assert_eq!(
            delivery(ids.iter().map(String::as_str), &counts),
            Delivery {
                requests: 4,
                lost: 1,
                duplicated: 1
            }
        );
    }
}
