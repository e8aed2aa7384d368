//! A service's loops (consumers, listeners, pollers, job runners, its HTTP server) must
//! never die unseen: a loop that ends while the service is running stops the whole
//! process with a log line naming it, so the supervisor (local, Docker or Kubernetes)
//! restarts it, and `/readyz` says which loop stopped meanwhile. A loop that is alive but
//! makes no progress — its batches keep failing, or it is stuck in a call — goes stale
//! through its [`Heartbeat`], and readiness names it too.
//!
//! [`Service::supervise`](crate::service::Service::supervise) runs a loop under these
//! rules; this module holds the parts with no I/O: the heartbeat and how a loop's health
//! reads as a readiness check.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::health::CheckState;

/// How long a loop with a heartbeat may go without progress before readiness names it:
/// longer than any batch or retry backoff (10 s at most) takes when things work.
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// How long a loop in trouble must find nothing waiting (and meet no new trouble) before
/// idling counts as progress again: longer than a failed batch takes to be fetched again.
pub const QUIET_AFTER_TROUBLE: Duration = Duration::from_secs(30);

/// The environment variable that makes the named loop fail on start, as a crash would:
/// how tests (and operators rehearsing an incident) prove a failing loop stops the service.
pub const FAILPOINT_ENV: &str = "AIFAB_FAILPOINT_LOOP";

/// A loop's proof of progress: it calls [`Heartbeat::progress`] after each unit of work
/// and whenever it looked and found nothing waiting. A loop that retries the same failing
/// batch does not, so it goes stale after its `stale_after`. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    inner: Arc<Beats>,
}

/// `last_progress_ms` of a loop that has not made progress yet.
const NEVER: i64 = i64::MIN;

#[derive(Debug)]
struct Beats {
    last_progress_ms: AtomicI64,
    /// Why the loop is not progressing, as it last said (cleared by progress).
    trouble: Mutex<Option<Trouble>>,
}

#[derive(Debug)]
struct Trouble {
    why: String,
    /// Since when the loop has found nothing waiting, with no new trouble.
    quiet_since_ms: Option<i64>,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self::new()
    }
}

impl Heartbeat {
    /// A heartbeat of a loop that has not made progress yet: a watched loop is not ready
    /// until its first beat. Not watched until a readiness registers it (benches and
    /// tests use it unwatched).
    pub fn new() -> Self {
        Heartbeat {
            inner: Arc::new(Beats {
                last_progress_ms: AtomicI64::new(NEVER),
                trouble: Mutex::new(None),
            }),
        }
    }

    /// The loop did a unit of work (a batch committed, a message handled).
    pub fn progress(&self) {
        self.inner
            .last_progress_ms
            .store(crate::now_ms(), Ordering::Relaxed);
        let mut t = self.inner.trouble.lock().expect("heartbeat lock");
        if t.is_some() {
            *t = None;
        }
    }

    /// The loop looked and found nothing waiting. That is progress — unless it is in
    /// trouble: a failed batch it will consume again can look like an empty poll while
    /// it is fetched anew. Only after [`QUIET_AFTER_TROUBLE`] of looking with no new
    /// trouble does idling count again.
    pub fn idle(&self) {
        let now = crate::now_ms();
        let quiet = {
            let mut t = self.inner.trouble.lock().expect("heartbeat lock");
            match t.as_mut() {
                None => true,
                Some(trouble) => {
                    *trouble.quiet_since_ms.get_or_insert(now)
                        + QUIET_AFTER_TROUBLE.as_millis() as i64
                        <= now
                }
            }
        };
        if quiet {
            self.progress();
        }
    }

    /// Why the loop is not progressing (shown by readiness once the loop is stale).
    pub fn trouble(&self, why: impl std::fmt::Display) {
        *self.inner.trouble.lock().expect("heartbeat lock") = Some(Trouble {
            why: why.to_string(),
            quiet_since_ms: None,
        });
    }

    /// When the loop last made progress; `None` before its first beat.
    pub fn last_progress_ms(&self) -> Option<i64> {
        Some(self.inner.last_progress_ms.load(Ordering::Relaxed)).filter(|&ms| ms != NEVER)
    }

    fn trouble_now(&self) -> Option<String> {
        self.inner
            .trouble
            .lock()
            .expect("heartbeat lock")
            .as_ref()
            .map(|t| t.why.clone())
    }
}

/// What is known of one loop: whether it stopped, and its heartbeat if it has one.
#[derive(Debug, Clone)]
pub struct LoopHealth {
    pub started_ms: i64,
    /// Set when the loop ended while the service was running: why.
    pub stopped: Option<(i64, String)>,
    /// The heartbeat and how long without progress makes the loop stale.
    pub heartbeat: Option<(Heartbeat, Duration)>,
}

impl LoopHealth {
    pub fn new(started_ms: i64, heartbeat: Option<(Heartbeat, Duration)>) -> Self {
        LoopHealth {
            started_ms,
            stopped: None,
            heartbeat,
        }
    }

    /// The readiness check this loop reads as at `now_ms`.
    pub fn check(&self, now_ms: i64) -> CheckState {
        if let Some((at, why)) = &self.stopped {
            return CheckState {
                ok: false,
                detail: format!("stopped: {why}"),
                since_ms: *at,
            };
        }
        let Some((hb, stale_after)) = &self.heartbeat else {
            return CheckState {
                ok: true,
                detail: "running".into(),
                since_ms: self.started_ms,
            };
        };
        let Some(last) = hb.last_progress_ms() else {
            // Not working yet (waiting for its topic, its coordinator, its producer's
            // transactions): not ready, and why if it said.
            let detail = hb
                .trouble_now()
                .map_or_else(|| "starting".to_string(), |t| format!("starting: {t}"));
            return CheckState {
                ok: false,
                detail,
                since_ms: self.started_ms,
            };
        };
        let quiet_ms = now_ms.saturating_sub(last);
        if quiet_ms <= stale_after.as_millis() as i64 {
            return CheckState {
                ok: true,
                detail: "running".into(),
                since_ms: last,
            };
        }
        let mut detail = format!("no progress for {} s", quiet_ms / 1000);
        if let Some(t) = hb.trouble_now() {
            detail.push_str(": ");
            detail.push_str(&t);
        }
        CheckState {
            ok: false,
            detail,
            since_ms: last + stale_after.as_millis() as i64,
        }
    }
}

/// Why a loop's end stops the service, or `None` when it ended because the service is
/// stopping anyway, or it is a task that may finish (`may_finish`) and did so cleanly.
pub fn loop_end_failure(
    result: &Result<anyhow::Result<()>, String>,
    stopping: bool,
    may_finish: bool,
) -> Option<String> {
    match result {
        _ if stopping => None,
        Ok(Ok(())) if may_finish => None,
        Ok(Ok(())) => Some("ended while the service was running".into()),
        Ok(Err(e)) => Some(format!("{e:#}")),
        Err(panic) => Some(format!("panicked: {panic}")),
    }
}

/// The message of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
    }
}

/// Whether [`FAILPOINT_ENV`] names `loop_name`.
pub fn failpoint_set(value: Option<&str>, loop_name: &str) -> bool {
    value.is_some_and(|v| v.split(',').any(|n| n.trim() == loop_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_without_heartbeat_is_ok_until_it_stops() {
        let mut h = LoopHealth::new(1_000, None);
        assert!(h.check(1_000_000).ok);
        h.stopped = Some((2_000, "consumer error: broker down".into()));
        let c = h.check(3_000);
        assert!(!c.ok);
        assert_eq!(c.detail, "stopped: consumer error: broker down");
        assert_eq!(c.since_ms, 2_000);
    }

    #[test]
    fn a_loop_is_not_ready_until_its_first_progress() {
        let hb = Heartbeat::new();
        let h = LoopHealth::new(1_000, Some((hb.clone(), Duration::from_secs(30))));
        let c = h.check(1_500);
        assert_eq!(
            (c.ok, c.detail.as_str(), c.since_ms),
            (false, "starting", 1_000)
        );
        hb.trouble("topic aifab.training.examples does not exist yet");
        assert_eq!(
            h.check(2_000).detail,
            "starting: topic aifab.training.examples does not exist yet"
        );
        hb.progress();
        assert!(h.check(hb.last_progress_ms().unwrap()).ok);
    }

    #[test]
    fn a_heartbeat_goes_stale_without_progress_and_says_why() {
        let hb = Heartbeat::new();
        hb.progress();
        let h = LoopHealth::new(0, Some((hb.clone(), Duration::from_secs(30))));
        let last = hb.last_progress_ms().unwrap();
        assert!(
            h.check(last + 30_000).ok,
            "exactly at the limit is still fine"
        );
        hb.trouble("batch failed: redis down");
        let c = h.check(last + 45_000);
        assert!(!c.ok);
        assert_eq!(c.detail, "no progress for 45 s: batch failed: redis down");
        hb.progress();
        let last = hb.last_progress_ms().unwrap();
        let c = h.check(last + 1_000);
        assert!(c.ok, "progress clears it: {c:?}");
        let c = h.check(last + 31_000);
        assert_eq!(
            c.detail, "no progress for 31 s",
            "progress also cleared the trouble"
        );
    }

    #[test]
    fn idling_is_progress_unless_in_trouble_until_quiet_for_a_while() {
        let hb = Heartbeat::new();
        hb.idle();
        assert!(
            hb.last_progress_ms().is_some(),
            "an empty poll with no trouble is progress"
        );
        let hb = Heartbeat::new();
        hb.trouble("transaction failed: coordinator not available");
        hb.idle();
        assert_eq!(
            hb.last_progress_ms(),
            None,
            "an empty poll right after a failed batch is not progress"
        );
        assert_eq!(
            hb.trouble_now().as_deref(),
            Some("transaction failed: coordinator not available")
        );
        // Quiet since long enough ago: idling counts again.
        hb.inner
            .trouble
            .lock()
            .unwrap()
            .as_mut()
            .unwrap()
            .quiet_since_ms = Some(crate::now_ms() - QUIET_AFTER_TROUBLE.as_millis() as i64);
        hb.idle();
        assert!(hb.last_progress_ms().is_some());
        assert_eq!(hb.trouble_now(), None);
        // New trouble starts the quiet time again.
        hb.trouble("consumer error: unknown topic");
        hb.inner
            .trouble
            .lock()
            .unwrap()
            .as_mut()
            .unwrap()
            .quiet_since_ms = Some(0);
        hb.trouble("consumer error: unknown topic");
        let before = hb.last_progress_ms();
        hb.idle();
        assert_eq!(hb.last_progress_ms(), before);
        hb.progress();
        assert_eq!(hb.trouble_now(), None, "work done clears trouble at once");
    }

    #[test]
    fn a_stopped_loop_fails_readiness_even_with_a_fresh_heartbeat() {
        let hb = Heartbeat::new();
        hb.progress();
        let at = hb.last_progress_ms().unwrap();
        let mut h = LoopHealth::new(0, Some((hb.clone(), Duration::from_secs(30))));
        h.stopped = Some((at, "ended while the service was running".into()));
        assert!(!h.check(at).ok);
    }

    #[test]
    fn a_loop_end_is_a_failure_only_while_the_service_runs() {
        let ok: Result<anyhow::Result<()>, String> = Ok(Ok(()));
        assert_eq!(loop_end_failure(&ok, true, false), None);
        assert_eq!(
            loop_end_failure(&ok, false, false).as_deref(),
            Some("ended while the service was running")
        );
        assert_eq!(
            loop_end_failure(&ok, false, true),
            None,
            "a task that may finish did"
        );
        let err: Result<anyhow::Result<()>, String> =
            Ok(Err(anyhow::anyhow!("inner").context("outer")));
        assert_eq!(
            loop_end_failure(&err, false, false).as_deref(),
            Some("outer: inner")
        );
        assert_eq!(
            loop_end_failure(&err, false, true).as_deref(),
            Some("outer: inner"),
            "failing is never finishing"
        );
        assert_eq!(
            loop_end_failure(&err, true, false),
            None,
            "an error while stopping is logged, not fatal"
        );
        let panicked: Result<anyhow::Result<()>, String> = Err("index out of bounds".into());
        assert_eq!(
            loop_end_failure(&panicked, false, true).as_deref(),
            Some("panicked: index out of bounds")
        );
    }

    #[test]
    fn the_failpoint_names_loops_exactly() {
        assert!(failpoint_set(
            Some("examples-consumer"),
            "examples-consumer"
        ));
        assert!(failpoint_set(
            Some("http, examples-consumer"),
            "examples-consumer"
        ));
        assert!(!failpoint_set(Some("examples"), "examples-consumer"));
        assert!(!failpoint_set(None, "examples-consumer"));
    }
}
