//! Result collection: a blocking thread reads this step's committed predictions
//! (read_committed) into the step's [`Accounting`] until all came back, the drain deadline
//! (set once sending is done) passes or the run is interrupted; then it reads to the end
//! of the topic so committed duplicates are counted too.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aifab_tests::PredictionReader;
use indicatif::ProgressBar;
use tokio::task::JoinHandle;

use super::accounting::{index_of, Accounting};

/// The step's start on both clocks: latencies are measured from `t0`, the workers'
/// wall-clock stamps compared against `wall0_ms`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    pub(crate) t0: Instant,
    pub(crate) wall0_ms: i64,
}

pub(crate) struct Collector {
    /// Distinct predictions read so far (for the progress bar).
    pub(crate) distinct: Arc<AtomicUsize>,
    drain_deadline: Arc<Mutex<Option<Instant>>>,
    stop_now: Arc<AtomicBool>,
    task: JoinHandle<Accounting>,
}

impl Collector {
    /// Start reading with `reader` (positioned before anything was sent) the predictions
    /// whose ids start with `prefix_dash`.
    pub(crate) fn spawn(
        mut reader: PredictionReader,
        acc: Accounting,
        prefix_dash: String,
        clock: Clock,
    ) -> Self {
        let distinct = Arc::new(AtomicUsize::new(0));
        let drain_deadline: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
        let stop_now = Arc::new(AtomicBool::new(false));
        let n = acc.counts.len();
        let task = {
            let (distinct, drain_deadline, stop_now) =
                (distinct.clone(), drain_deadline.clone(), stop_now.clone());
            tokio::task::spawn_blocking(move || {
                let mut acc = acc;
                let mut done = 0;
                loop {
                    reader.read(&prefix_dash, Duration::from_millis(100));
                    take(&reader, &mut acc, &mut done, &prefix_dash, clock);
                    distinct.store(acc.distinct, Ordering::Relaxed);
                    if acc.distinct == n || stop_now.load(Ordering::Relaxed) {
                        break;
                    }
                    if drain_deadline
                        .lock()
                        .unwrap()
                        .is_some_and(|d| Instant::now() >= d)
                    {
                        break;
                    }
                }
                reader.read_to_end(&prefix_dash, Duration::from_secs(30));
                take(&reader, &mut acc, &mut done, &prefix_dash, clock);
                acc
            })
        };
        Collector {
            distinct,
            drain_deadline,
            stop_now,
            task,
        }
    }

    /// Sending is done: what has not come back by `deadline` is lost.
    pub(crate) fn drain_until(&self, deadline: Instant) {
        *self.drain_deadline.lock().unwrap() = Some(deadline);
    }

    /// Wait for the reader, showing the count on `pb`; Ctrl-C stops it early.
    pub(crate) async fn finish(self, pb: &ProgressBar) -> anyhow::Result<Accounting> {
        let mut task = self.task;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                r = &mut task => return Ok(r?),
                _ = tick.tick() => pb.set_message(format!(
                    "predicted {} (draining)",
                    self.distinct.load(Ordering::Relaxed)
                )),
                _ = tokio::signal::ctrl_c() => { self.stop_now.store(true, Ordering::Relaxed); }
            }
        }
    }
}

/// Record what `reader` has read since `done` (predictions of this step only).
fn take(
    reader: &PredictionReader,
    acc: &mut Accounting,
    done: &mut usize,
    prefix_dash: &str,
    clock: Clock,
) {
    for k in *done..reader.seen.len() {
        let p = &reader.seen[k];
        if let Some(i) = index_of(&p.id, prefix_dash) {
            let at = reader.received[k]
                .saturating_duration_since(clock.t0)
                .as_secs_f64();
            acc.record(i, at);
            let read_wall_ms = clock.wall0_ms as f64 + at * 1000.0;
            acc.record_stages(
                i,
                p.queue_ms,
                p.compute_ms,
                read_wall_ms - p.produced_at_ms as f64,
            );
        }
    }
    *done = reader.seen.len();
}
