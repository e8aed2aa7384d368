//! Capacity arithmetic: how much work a number of replicas does over a topic's
//! partitions, and how many replicas a budget pays for.

use super::{BudgetView, PolicyConfig};

/// How many replicas' worth of work `n` consumers of `partitions` evenly loaded
/// partitions do: the busiest holds `ceil(partitions / n)` of them and sets the pace, so
/// the group serves `partitions / ceil(partitions / n)` replicas' worth (8 partitions: 1,
/// 2, 2.67, 4, 4, 4, 4, 8). Without a partition count, `n`.
pub fn effective_replicas(n: u32, partitions: u32) -> f64 {
    if n == 0 {
        return 0.0;
    }
    if partitions == 0 {
        return n as f64;
    }
    let n = n.min(partitions);
    partitions as f64 / partitions.div_ceil(n) as f64
}

/// The fewest replicas whose effective capacity is at least `need` replicas' worth (at
/// most the partition count, which is all that can help).
pub fn replicas_for(need: f64, partitions: u32) -> u32 {
    if need <= 1e-9 {
        return 0;
    }
    if partitions == 0 {
        return (need - 1e-9).ceil() as u32;
    }
    (1..=partitions)
        .find(|&n| effective_replicas(n, partitions) >= need - 1e-9)
        .unwrap_or(partitions)
}

/// What the budget allows now: the most replicas, and how that was worked out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetCap {
    /// The most replicas to run now (a count that adds capacity over the partitions).
    pub cap: u32,
    /// The per-replica hourly cost used.
    pub per_replica: f64,
    /// The most useful replicas affordable without a break to the period's end.
    pub sustained: u32,
    /// How long a burst above `sustained` is paid for in advance, hours.
    pub burst_h: f64,
}

/// The most useful replicas at or under `n`: over 8 partitions 7, 6 and 5 replicas serve
/// no more than 4, so a cap of 7 is a cap of 4.
fn useful_at_most(n: u32, partitions: u32) -> u32 {
    if n == u32::MAX || n == 0 {
        return n;
    }
    replicas_for(effective_replicas(n, partitions), partitions).min(n)
}

/// The most replicas the budget allows now (`None`: nothing to price replicas with).
///
/// `sustained` is the most useful replicas that could run from now to the period's end.
/// A policy that scales with load runs under that most of the time, and the rounding to
/// useful counts wastes the rest (6.75 affordable over 8 partitions sustains only 4), so
/// bursts above it are allowed when the budget can pay for the burst for
/// `budget_burst_s` *and* still for `sustained` replicas for the rest of the period:
/// `cap × cost × burst + sustained × cost × (hours_left − burst) ≤ remaining`. A burst
/// therefore never lowers what can be sustained afterwards, and as the period's end
/// nears (hours left ≤ the burst) the cap is the sustainable count. A budget that cannot
/// keep one replica to the period's end allows no bursts (only `min_replicas_over_budget`).
pub fn budget_cap_for(
    cfg: &PolicyConfig,
    b: &BudgetView,
    current: u32,
    partitions: u32,
) -> Option<BudgetCap> {
    let observed =
        (current > 0 && b.burn_rate_per_hour > 0.0).then(|| b.burn_rate_per_hour / current as f64);
    let configured = (cfg.replica_cost_per_hour > 0.0).then_some(cfg.replica_cost_per_hour);
    // The dearer of the two: a budget is a promise not to overspend.
    let per_replica = match (configured, observed) {
        (Some(c), Some(o)) => c.max(o),
        (Some(c), None) => c,
        (None, Some(o)) => o,
        (None, None) => return None,
    };
    let count = |x: f64| {
        if x >= u32::MAX as f64 {
            u32::MAX
        } else {
            x.max(0.0).floor() as u32
        }
    };
    let burst_h = (cfg.budget_burst_s / 3600.0)
        .max(0.0)
        .min(b.hours_left.max(0.0));
    let (cap, sustained) = if b.remaining <= 0.0 {
        (0, 0)
    } else if b.hours_left <= 0.0 {
        (u32::MAX, u32::MAX)
    } else {
        let sustained = useful_at_most(
            count(b.remaining / (per_replica * b.hours_left)),
            partitions,
        );
        let cap = if burst_h > 0.0 && sustained > 0 {
            let left = b.remaining - sustained as f64 * per_replica * (b.hours_left - burst_h);
            useful_at_most(count(left / (per_replica * burst_h)), partitions).max(sustained)
        } else {
            sustained
        };
        (cap, sustained)
    };
    let floor = cfg.min_replicas_over_budget;
    Some(BudgetCap {
        cap: cap.max(floor),
        per_replica,
        sustained: sustained.max(floor),
        burst_h,
    })
}
