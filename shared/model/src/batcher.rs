//! Dynamic batch planner: pure decisions over plain data, no clock and no I/O.
//!
//! The worker keeps a FIFO queue of requests (consumer order, so each Kafka partition's
//! messages stay in offset order) and asks [`plan`] what to do now:
//!
//! - requests whose deadline has passed are *expired*: answered without compute;
//! - a batch *closes* when it is full (max rows), when the next request would push the
//!   padded token count (longest row × rows) over the token budget, or when the request
//!   first in line has waited `max_wait`;
//! - otherwise the worker sleeps until the moment the head's wait runs out (or an earlier
//!   deadline falls due), or until a new request arrives.
//!
//! A batch is always a prefix of the queue. That is what makes exactly-once cheap: the
//! batch's input offsets are a contiguous range per partition, so they can be committed
//! in the same transaction as its outputs. Padding is limited inside the batch instead:
//! [`length_groups`] sorts rows by length and cuts them into compute groups.

use std::time::{Duration, Instant};

/// Budgets a batch must stay within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most rows in one batch.
    pub max_batch_size: usize,
    /// Most padded tokens (longest row × rows) in one batch.
    pub max_batch_tokens: usize,
    /// Longest the request first in line waits for the batch to fill.
    pub max_wait: Duration,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_batch_size: 32,
            max_batch_tokens: 32 * 128,
            max_wait: Duration::from_millis(10),
        }
    }
}

/// What the planner needs to know about one queued request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub tokens: usize,
    /// When the worker received it (when its wait started).
    pub enqueued_at: Instant,
    /// Answer wanted before this instant; past it the request is expired, not computed.
    pub deadline: Option<Instant>,
}

/// The planner's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing queued: wait for a request.
    Idle,
    /// Wait for more requests, at most until `until`.
    Wait { until: Instant },
    /// Take the first `take` requests off the queue now. Of those, the ones at
    /// `expired` (indices into the queue) get an `expired` outcome; the rest are computed.
    Run {
        take: usize,
        expired: Vec<usize>,
        reason: CloseReason,
    },
}

/// Why a batch closed (a metric label, and what the tests check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Full,
    TokenBudget,
    MaxWait,
    /// Only expired requests were due: answer them without compute.
    Expired,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Full => "full",
            CloseReason::TokenBudget => "token_budget",
            CloseReason::MaxWait => "max_wait",
            CloseReason::Expired => "expired",
        }
    }
}

fn is_expired(p: &Pending, now: Instant) -> bool {
    p.deadline.is_some_and(|d| d <= now)
}

/// Decide what to do with `queue` at `now`.
pub fn plan(queue: &[Pending], limits: &BatchLimits, now: Instant) -> Plan {
    let max_rows = limits.max_batch_size.max(1);
    let mut rows = 0usize;
    let mut longest = 0usize;
    let mut expired = Vec::new();
    let mut take = 0usize;
    let mut closed = None;
    for (i, p) in queue.iter().enumerate() {
        if is_expired(p, now) {
            expired.push(i);
            take = i + 1;
            continue;
        }
        let new_longest = longest.max(p.tokens);
        // A row alone over the budget still runs, alone: it cannot be split.
        if rows > 0 && new_longest * (rows + 1) > limits.max_batch_tokens {
            closed = Some(CloseReason::TokenBudget);
            break;
        }
        rows += 1;
        longest = new_longest;
        take = i + 1;
        if rows == max_rows {
            closed = Some(CloseReason::Full);
            break;
        }
    }
    if let Some(reason) = closed {
        return Plan::Run {
            take,
            expired,
            reason,
        };
    }
    // Not full: run if the first live request in line has waited long enough.
    let head = queue.iter().find(|p| !is_expired(p, now));
    match head {
        None if expired.is_empty() => Plan::Idle,
        None => Plan::Run {
            take,
            expired,
            reason: CloseReason::Expired,
        },
        Some(h) => {
            let due = h.enqueued_at + limits.max_wait;
            if now >= due {
                Plan::Run {
                    take,
                    expired,
                    reason: CloseReason::MaxWait,
                }
            } else if !expired.is_empty() && expired[0] == 0 {
                // Expired requests at the front are answered now; they need no batch.
                let front = expired
                    .iter()
                    .enumerate()
                    .take_while(|(n, i)| n == *i)
                    .count();
                Plan::Run {
                    take: front,
                    expired: (0..front).collect(),
                    reason: CloseReason::Expired,
                }
            } else {
                // Wake when the head's wait runs out, or earlier when a queued deadline falls.
                let next_deadline = queue
                    .iter()
                    .filter_map(|p| p.deadline)
                    .filter(|d| *d > now)
                    .min();
                Plan::Wait {
                    until: next_deadline.map_or(due, |d| d.min(due)),
                }
            }
        }
    }
}

/// Cut the rows of a batch (their token counts) into compute groups of similar length.
///
/// Rows are sorted by length; a new group starts when padding the next row's group to
/// its length would waste more than `max_padding_fraction` of the group's tokens. Returns
/// groups of indices into `lengths`, shortest first.
pub fn length_groups(lengths: &[usize], max_padding_fraction: f64) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut real_tokens = 0usize;
    for i in order {
        let len = lengths[i];
        // Sorted ascending: `len` would be the new group's padded length.
        let padded = len * (current.len() + 1);
        let real = real_tokens + len;
        if !current.is_empty() && (padded - real) as f64 > max_padding_fraction * padded as f64 {
            groups.push(std::mem::take(&mut current));
            real_tokens = 0;
        }
        current.push(i);
        real_tokens += len;
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(size: usize, tokens: usize, wait_ms: u64) -> BatchLimits {
        BatchLimits {
            max_batch_size: size,
            max_batch_tokens: tokens,
            max_wait: Duration::from_millis(wait_ms),
        }
    }

    fn req(t0: Instant, at_ms: u64, tokens: usize) -> Pending {
        Pending {
            tokens,
            enqueued_at: t0 + Duration::from_millis(at_ms),
            deadline: None,
        }
    }

    #[test]
    fn empty_queue_is_idle() {
        assert_eq!(
            plan(&[], &BatchLimits::default(), Instant::now()),
            Plan::Idle
        );
    }

    #[test]
    fn closes_when_full() {
        let t0 = Instant::now();
        let q: Vec<_> = (0..5).map(|i| req(t0, i, 10)).collect();
        let p = plan(&q, &limits(4, 10_000, 1000), t0 + Duration::from_millis(5));
        assert_eq!(
            p,
            Plan::Run {
                take: 4,
                expired: vec![],
                reason: CloseReason::Full
            }
        );
    }

    #[test]
    fn closes_on_padded_token_budget() {
        let t0 = Instant::now();
        // 3 rows of 10 = 30 padded tokens; a 4th row of 40 would make 4 × 40 = 160 > 100.
        let q = vec![
            req(t0, 0, 10),
            req(t0, 0, 10),
            req(t0, 0, 10),
            req(t0, 0, 40),
        ];
        let p = plan(&q, &limits(64, 100, 1000), t0);
        assert_eq!(
            p,
            Plan::Run {
                take: 3,
                expired: vec![],
                reason: CloseReason::TokenBudget
            }
        );
    }

    #[test]
    fn an_oversized_row_runs_alone() {
        let t0 = Instant::now();
        let q = vec![req(t0, 0, 500), req(t0, 0, 5)];
        let p = plan(&q, &limits(64, 100, 1000), t0);
        assert_eq!(
            p,
            Plan::Run {
                take: 1,
                expired: vec![],
                reason: CloseReason::TokenBudget
            }
        );
    }

    #[test]
    fn waits_until_the_head_has_waited_max_wait() {
        let t0 = Instant::now();
        let q = vec![req(t0, 0, 10), req(t0, 3, 10)];
        let l = limits(32, 10_000, 10);
        assert_eq!(
            plan(&q, &l, t0 + Duration::from_millis(4)),
            Plan::Wait {
                until: t0 + Duration::from_millis(10)
            }
        );
        assert_eq!(
            plan(&q, &l, t0 + Duration::from_millis(10)),
            Plan::Run {
                take: 2,
                expired: vec![],
                reason: CloseReason::MaxWait
            }
        );
    }

    #[test]
    fn expired_requests_are_answered_without_compute() {
        let t0 = Instant::now();
        let mut late = req(t0, 0, 10);
        late.deadline = Some(t0 + Duration::from_millis(2));
        let q = vec![late, req(t0, 1, 10)];
        // At 5 ms the first is past its deadline; the second has not waited 10 ms yet.
        let p = plan(&q, &limits(32, 10_000, 10), t0 + Duration::from_millis(5));
        assert_eq!(
            p,
            Plan::Run {
                take: 1,
                expired: vec![0],
                reason: CloseReason::Expired
            }
        );
        // Expired rows inside a closing batch ride along and cost no budget.
        let p = plan(&q, &limits(1, 10_000, 10), t0 + Duration::from_millis(5));
        assert_eq!(
            p,
            Plan::Run {
                take: 2,
                expired: vec![0],
                reason: CloseReason::Full
            }
        );
    }

    #[test]
    fn wakes_early_for_a_deadline() {
        let t0 = Instant::now();
        let mut r = req(t0, 0, 10);
        r.deadline = Some(t0 + Duration::from_millis(3));
        let p = plan(&[r], &limits(32, 10_000, 10), t0);
        assert_eq!(
            p,
            Plan::Wait {
                until: t0 + Duration::from_millis(3)
            }
        );
    }

    /// Simulate arrivals at random times and check that no request first in line waits
    /// longer than max_wait before its batch runs.
    #[test]
    fn no_head_waits_longer_than_max_wait() {
        let t0 = Instant::now();
        let l = limits(8, 512, 10);
        let mut arrivals: Vec<(u64, usize)> = Vec::new();
        let mut x: u64 = 7;
        let mut t = 0u64;
        for _ in 0..2000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            t += (x >> 60) % 7; // 0..6 ms gaps: bursts and lulls
            arrivals.push((t, 4 + ((x >> 40) % 120) as usize));
        }
        let mut queue: Vec<Pending> = Vec::new();
        let mut head_since: Option<Instant> = None;
        let mut next = 0;
        let mut now = t0;
        let mut served = 0;
        while served < arrivals.len() {
            while next < arrivals.len() && t0 + Duration::from_millis(arrivals[next].0) <= now {
                queue.push(req(t0, arrivals[next].0, arrivals[next].1));
                next += 1;
            }
            if head_since.is_none() && !queue.is_empty() {
                head_since = Some(now);
            }
            match plan(&queue, &l, now) {
                Plan::Run { take, .. } => {
                    let head = head_since.take().expect("a head");
                    assert!(now - head <= l.max_wait, "head waited {:?}", now - head);
                    queue.drain(..take);
                    served += take;
                    if !queue.is_empty() {
                        head_since = Some(now);
                    }
                }
                Plan::Wait { until } => {
                    let arrival = arrivals.get(next).map(|a| t0 + Duration::from_millis(a.0));
                    now = arrival.map_or(until, |a| a.min(until)).max(now);
                }
                Plan::Idle => now = t0 + Duration::from_millis(arrivals[next].0),
            }
        }
    }

    #[test]
    fn length_groups_limit_padding() {
        let lengths = [10, 100, 12, 95, 11, 98];
        let groups = length_groups(&lengths, 0.2);
        assert_eq!(groups, vec![vec![0, 4, 2], vec![3, 5, 1]]);
        for g in &groups {
            let longest = g.iter().map(|&i| lengths[i]).max().unwrap();
            let real: usize = g.iter().map(|&i| lengths[i]).sum();
            assert!((longest * g.len() - real) as f64 <= 0.2 * (longest * g.len()) as f64);
        }
        assert_eq!(length_groups(&[], 0.2), Vec::<Vec<usize>>::new());
        assert_eq!(length_groups(&[5, 5, 5], 0.0), vec![vec![0, 1, 2]]);
        // 1.0: any padding is acceptable (a ragged encoder), one group sorted by length.
        assert_eq!(length_groups(&[90, 3, 40, 7], 1.0), vec![vec![1, 3, 2, 0]]);
    }
}
