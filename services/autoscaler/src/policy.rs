//! The scaling policy: a pure function from what was observed (lag readings, replicas,
//! partitions, budget) and the policy's own small state to a desired replica count and a
//! reason. No clocks, no I/O: the live autoscaler and `aifab simulate` run this same code.
//!
//! Two policies share the plumbing (clamping, stabilization, cooldowns):
//!
//! - [`PolicyKind::Keda`]: what KEDA's Kafka scaler and the HPA do. Desired replicas =
//!   ceil(total lag / lag per replica) (`lagThreshold`), zero while the lag is at or under
//!   the activation threshold, no change within the HPA's 10% tolerance, capped at the
//!   partition count and min/max; up at once, down only to the highest recommendation of
//!   the stabilization window.
//! - [`PolicyKind::Aifab`]: provisions for the measured arrival rate rather than for the
//!   backlog alone. It learns each replica's service rate while replicas are saturated
//!   (a backlog at both ends of an interval: batches are full, so this is the batched
//!   throughput, which KEDA never sees), estimates the arrival rate from the topic's
//!   high watermarks, and adds what it takes to drain the backlog (projected along the
//!   lag trend over a replica's start-up time) within a drain target:
//!   `ceil(max(arrivals / (rate × target utilisation), (arrivals + projected lag / drain_s) / rate))`,
//!   rounded up to a count that adds capacity over the partitions (over 8 partitions 5 to
//!   7 replicas serve like 4). When that already means scaling up, it sizes for the
//!   arrivals expected once the new replicas are up (the arrival rate's trend over a
//!   start-up), so a ramp costs one start-up and rebalance rather than one per step.
//!   It scales down only as far as keeps utilisation under a lower mark (a dead band:
//!   every change costs a rebalance pause).
//!   Then it is budget-aware: replicas are capped at the most useful count the remaining
//!   budget sustains to the period's end, or above it for a burst when the budget pays
//!   for an hour of the burst (`budget_burst_s`) and still for the sustained count for the
//!   rest of the period (a burst never lowers what can be sustained), with reason
//!   `budget_cap`.

use std::collections::VecDeque;

use serde::Serialize;

/// Which policy decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// Rate-based, learns per-replica throughput, budget-aware.
    Aifab,
    /// KEDA Kafka scaler + HPA defaults (lag per replica, activation, stabilization).
    Keda,
}

impl PolicyKind {
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Aifab => "aifab",
            PolicyKind::Keda => "keda",
        }
    }
}

/// Policy settings. Times in seconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyConfig {
    pub kind: PolicyKind,
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// Target lag per replica (KEDA's `lagThreshold`); the aifab policy falls back to it
    /// before it has a rate estimate.
    pub lag_per_replica: f64,
    /// At or under this total lag with nothing arriving, the scaler is inactive and wants
    /// `min_replicas` (KEDA's `activationLagThreshold`).
    pub activation_lag: f64,
    /// Scale down only to the highest recommendation of this trailing window.
    pub scale_down_stabilization_s: f64,
    /// Least time between two scale-ups (0: none).
    pub scale_up_cooldown_s: f64,
    /// Least time after any change before a scale-down.
    pub scale_down_cooldown_s: f64,
    /// Relative change under which the current count is kept (the HPA's 0.1).
    pub tolerance: f64,
    /// aifab: a replica's service rate (records/s at full batches) until one is measured.
    pub replica_rate_per_s: f64,
    /// aifab: learn the service rate from saturated intervals.
    pub learn_rate: bool,
    /// aifab: the utilisation provisioned for (headroom for noise and bursts).
    pub target_utilization: f64,
    /// aifab: scale down only to a count that stays at or under this utilisation (a dead
    /// band below `target_utilization`; 0: none).
    pub scale_down_utilization: f64,
    /// aifab: drain a backlog within this long.
    pub drain_s: f64,
    /// aifab: how long a new replica takes to consume (start, model load, rebalance): the
    /// lag trend is projected this far, and service-rate samples wait this long after a
    /// change of replicas.
    pub startup_s: f64,
    /// aifab: a replica counts as saturated while the lag per replica is at least this.
    pub saturation_lag_per_replica: f64,
    /// aifab, budget: what one replica costs per hour (0: learn it from the burn rate).
    pub replica_cost_per_hour: f64,
    /// aifab, budget: the least replicas kept when the budget allows fewer (0 means the
    /// budget is a hard limit).
    pub min_replicas_over_budget: u32,
    /// aifab, budget: a burst above the count the budget sustains to the period's end is
    /// allowed when this long of it is affordable on top of that count (0: no bursts).
    pub budget_burst_s: f64,
}

impl PolicyConfig {
    /// Defaults for a policy kind (KEDA's and the HPA's for `Keda`).
    pub fn new(kind: PolicyKind) -> Self {
        PolicyConfig {
            kind,
            min_replicas: 1,
            max_replicas: 8,
            lag_per_replica: 100.0,
            activation_lag: 0.0,
            scale_down_stabilization_s: match kind {
                PolicyKind::Keda => 300.0,
                PolicyKind::Aifab => 120.0,
            },
            scale_up_cooldown_s: 0.0,
            scale_down_cooldown_s: match kind {
                PolicyKind::Keda => 0.0,
                PolicyKind::Aifab => 30.0,
            },
            tolerance: 0.1,
            replica_rate_per_s: 100.0,
            learn_rate: true,
            target_utilization: 0.85,
            scale_down_utilization: 0.7,
            drain_s: 15.0,
            startup_s: 15.0,
            saturation_lag_per_replica: 64.0,
            replica_cost_per_hour: 0.0,
            min_replicas_over_budget: 0,
            budget_burst_s: 3600.0,
        }
    }
}

/// Where a budget stands, as the cost accountant last reported it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BudgetView {
    /// Budget left in the period (negative: overspent).
    pub remaining: f64,
    /// Spend per hour over the recent window.
    pub burn_rate_per_hour: f64,
    /// Hours until the period ends.
    pub hours_left: f64,
}

/// One evaluation's inputs: a lag reading plus what the actuator and budget say.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Observation {
    pub at_ms: i64,
    pub total_lag: i64,
    pub lag_rate_per_s: f64,
    /// Partitions of the consumed topic: more replicas than this would idle.
    pub partitions: u32,
    /// Sum of the partitions' high watermarks (records ever produced), when known.
    pub produced_total: Option<i64>,
    /// Sum of the group's committed offsets (records consumed), when known.
    pub consumed_total: Option<i64>,
    pub current_replicas: u32,
    pub budget: Option<BudgetView>,
}

/// Why a decision came out as it did (machine-readable, in `ScaleDecision::reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// KEDA: from lag per replica.
    Lag,
    /// aifab: from the arrival rate and backlog.
    ArrivalRate,
    /// Lag at or under the activation threshold: down to the minimum.
    Inactive,
    /// KEDA: lag within the HPA's tolerance of the target: kept.
    Steady,
    /// A scale-down held at the highest recommendation of the window.
    Stabilizing,
    /// A change held back by a cooldown.
    Cooldown,
    /// Capped so projected spend stays within the remaining budget.
    BudgetCap,
    /// Capped at the configured maximum.
    MaxReplicas,
    /// Capped at the partition count.
    Partitions,
    /// Raised to the configured minimum.
    MinReplicas,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Lag => "lag",
            Reason::ArrivalRate => "arrival_rate",
            Reason::Inactive => "inactive",
            Reason::Steady => "steady",
            Reason::Stabilizing => "stabilizing",
            Reason::Cooldown => "cooldown",
            Reason::BudgetCap => "budget_cap",
            Reason::MaxReplicas => "max_replicas",
            Reason::Partitions => "partitions",
            Reason::MinReplicas => "min_replicas",
        }
    }
}

/// The policy's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub desired: u32,
    pub reason: Reason,
    /// Human-readable: the numbers the decision came from.
    pub detail: String,
    /// The recommendation before stabilization, cooldowns and the budget.
    pub recommended: u32,
    /// The most replicas the budget allows, when a budget is known.
    pub budget_cap: Option<u32>,
    /// aifab: arrival-rate and per-replica service-rate estimates used (records/s).
    pub arrival_rate_per_s: Option<f64>,
    pub replica_rate_per_s: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Prev {
    at_ms: i64,
    total_lag: i64,
    produced: Option<i64>,
    consumed: Option<i64>,
    replicas: u32,
}

/// What the policy remembers between evaluations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyState {
    prev: Option<Prev>,
    arrival_rate: Option<f64>,
    /// How fast the arrival rate changes (records/s per second), smoothed.
    arrival_trend: f64,
    replica_rate: Option<f64>,
    /// (at_ms, recommendation) over the stabilization window.
    recommendations: VecDeque<(i64, u32)>,
    last_change_ms: Option<i64>,
    last_up_ms: Option<i64>,
    /// When the observed replica count last changed.
    replicas_changed_ms: Option<i64>,
}

impl PolicyState {
    /// The learned per-replica service rate, if any.
    pub fn replica_rate(&self) -> Option<f64> {
        self.replica_rate
    }
    pub fn arrival_rate(&self) -> Option<f64> {
        self.arrival_rate
    }
}

/// Smoothing of the arrival-rate estimate: quick to rise, slower to fall.
const ARRIVAL_ALPHA_UP: f64 = 0.7;
const ARRIVAL_ALPHA_DOWN: f64 = 0.3;
const SERVICE_ALPHA: f64 = 0.3;
/// Smoothing of the arrival rate's trend.
const TREND_ALPHA: f64 = 0.5;
/// Beyond a replica's start-up, how long a group takes to settle (rebalance) before its
/// throughput is measured.
const SETTLE_EXTRA_S: f64 = 5.0;

/// Decide the desired replicas for one observation. Updates `state`.
pub fn decide(cfg: &PolicyConfig, state: &mut PolicyState, obs: &Observation) -> Decision {
    let current = obs.current_replicas;
    let lag = obs.total_lag.max(0) as f64;
    learn(cfg, state, obs);

    // 1. The recommendation.
    let (mut raw, mut reason, mut detail) = match cfg.kind {
        PolicyKind::Keda => keda_recommendation(cfg, current, lag),
        PolicyKind::Aifab => aifab_recommendation(cfg, state, obs, lag),
    };

    // 2. Bounds: partitions, max, min.
    let hard_max = if obs.partitions > 0 {
        cfg.max_replicas.min(obs.partitions)
    } else {
        cfg.max_replicas
    };
    if raw > hard_max {
        if obs.partitions > 0 && obs.partitions <= cfg.max_replicas {
            reason = Reason::Partitions;
            detail = format!("{detail}; capped at the {} partitions", obs.partitions);
        } else {
            reason = Reason::MaxReplicas;
            detail = format!("{detail}; capped at max {}", cfg.max_replicas);
        }
        raw = hard_max;
    }
    let floor = cfg.min_replicas.min(hard_max);
    if raw < floor {
        if reason != Reason::Inactive {
            reason = Reason::MinReplicas;
            detail = format!("{detail}; raised to min {}", cfg.min_replicas);
        }
        raw = floor;
    }
    let recommended = raw;

    // 3. Stabilization and cooldowns.
    let window_ms = (cfg.scale_down_stabilization_s * 1000.0) as i64;
    state.recommendations.push_back((obs.at_ms, raw));
    while state
        .recommendations
        .front()
        .is_some_and(|(t, _)| *t < obs.at_ms - window_ms)
    {
        state.recommendations.pop_front();
    }
    let mut desired = raw;
    if raw > current {
        if let Some(up) = state.last_up_ms {
            let wait = cfg.scale_up_cooldown_s - (obs.at_ms - up) as f64 / 1000.0;
            if wait > 0.0 {
                desired = current;
                reason = Reason::Cooldown;
                detail = format!("{detail}; scale-up cooldown, {wait:.0} s left");
            }
        }
    } else if raw < current {
        let stabilized = state
            .recommendations
            .iter()
            .map(|(_, r)| *r)
            .max()
            .unwrap_or(raw);
        if stabilized >= current {
            desired = current;
            reason = Reason::Stabilizing;
            detail = format!(
                "{detail}; holding {current}: {stabilized} recommended within the last {:.0} s",
                cfg.scale_down_stabilization_s
            );
        } else {
            let since_change = state
                .last_change_ms
                .map(|t| (obs.at_ms - t) as f64 / 1000.0);
            match since_change {
                Some(s) if s < cfg.scale_down_cooldown_s => {
                    desired = current;
                    reason = Reason::Cooldown;
                    detail = format!(
                        "{detail}; scale-down cooldown, {:.0} s left",
                        cfg.scale_down_cooldown_s - s
                    );
                }
                _ => desired = stabilized,
            }
        }
    }

    // 4. The budget (aifab only): never plan to spend more than is left.
    let mut budget_cap = None;
    if cfg.kind == PolicyKind::Aifab {
        if let Some(b) = obs.budget {
            if let Some(bc) = budget_cap_for(cfg, &b, current, obs.partitions) {
                let cap = bc.cap;
                budget_cap = Some(cap);
                if desired > cap {
                    desired = cap;
                    reason = Reason::BudgetCap;
                    let burst = if cap > bc.sustained {
                        format!(
                            " (sustains {} to the period's end, {cap} for {:.2} h)",
                            bc.sustained, bc.burst_h
                        )
                    } else {
                        String::new()
                    };
                    detail = format!(
                        "{detail}; capped at {cap}: {:.4} left for {:.2} h at {:.4}/h per replica{burst}",
                        b.remaining, b.hours_left, bc.per_replica
                    );
                }
            }
        }
    }

    if desired != current {
        state.last_change_ms = Some(obs.at_ms);
        if desired > current {
            state.last_up_ms = Some(obs.at_ms);
        }
    }

    Decision {
        desired,
        reason,
        detail,
        recommended,
        budget_cap,
        arrival_rate_per_s: state.arrival_rate.filter(|_| cfg.kind == PolicyKind::Aifab),
        replica_rate_per_s: (cfg.kind == PolicyKind::Aifab)
            .then(|| state.replica_rate.unwrap_or(cfg.replica_rate_per_s)),
    }
}

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

fn keda_recommendation(cfg: &PolicyConfig, current: u32, lag: f64) -> (u32, Reason, String) {
    if lag <= cfg.activation_lag {
        return (
            0,
            Reason::Inactive,
            format!(
                "lag {lag:.0} at or under activation {:.0}",
                cfg.activation_lag
            ),
        );
    }
    let per = cfg.lag_per_replica.max(1e-9);
    let raw = (lag / per).ceil() as u32;
    // The HPA keeps the current count when the metric is within tolerance of target.
    if current > 0 {
        let ratio = lag / (per * current as f64);
        if (ratio - 1.0).abs() <= cfg.tolerance {
            return (
                current,
                Reason::Steady,
                format!(
                    "lag {lag:.0} within {:.0}% of {per:.0} per replica",
                    cfg.tolerance * 100.0
                ),
            );
        }
    }
    (
        raw,
        Reason::Lag,
        format!("lag {lag:.0} / {per:.0} per replica → {raw}"),
    )
}

fn aifab_recommendation(
    cfg: &PolicyConfig,
    state: &PolicyState,
    obs: &Observation,
    lag: f64,
) -> (u32, Reason, String) {
    let Some(arrivals) = state.arrival_rate else {
        // First reading: no rate yet, size for the backlog as KEDA would.
        let (raw, _, d) = keda_recommendation(cfg, obs.current_replicas, lag);
        return (
            raw,
            if raw == 0 {
                Reason::Inactive
            } else {
                Reason::Lag
            },
            format!("{d} (no rate yet)"),
        );
    };
    if lag <= cfg.activation_lag && arrivals < 0.5 {
        return (
            0,
            Reason::Inactive,
            format!("lag {lag:.0}, arrivals {arrivals:.1}/s: idle"),
        );
    }
    let rate = state
        .replica_rate
        .unwrap_or(cfg.replica_rate_per_s)
        .max(1e-6);
    let util = cfg.target_utilization.clamp(0.05, 1.0);
    // The backlog a new replica would find once it is up, if the trend holds. Only growth
    // that the arrival rate explains counts (arrivals beyond what the running replicas
    // serve): a lag that jumps because the group paused to rebalance is not more load.
    // (Counted by the partitions they can use: 6 replicas over 8 partitions serve like 4.)
    let shortfall =
        (arrivals - effective_replicas(obs.current_replicas, obs.partitions) * rate).max(0.0);
    let growth = obs.lag_rate_per_s.max(0.0).min(shortfall);
    let projected = lag + growth * cfg.startup_s;
    // Draining needs the arrivals plus the backlog over the drain time served, at full
    // utilisation (draining is brief); steady state needs the arrivals at the target.
    let drain_rate = projected / cfg.drain_s.max(1.0);
    let size = |arrivals: f64| {
        let for_arrivals = arrivals / (rate * util);
        let for_drain = (arrivals + drain_rate) / rate;
        (for_arrivals, for_drain)
    };
    let (mut for_arrivals, mut for_drain) = size(arrivals);
    let p = obs.partitions;
    let mut raw = replicas_for(for_arrivals.max(for_drain), p);
    // Scaling up anyway: size for the arrivals when the new replicas will be up, if the
    // rate keeps rising as it has, rather than for now and again one start-up later
    // (every step costs a start-up and a rebalance pause).
    let mut ahead = String::new();
    let rising = state.arrival_trend.max(0.0) * cfg.startup_s;
    if raw > obs.current_replicas && rising > 0.0 {
        (for_arrivals, for_drain) = size(arrivals + rising);
        let further = replicas_for(for_arrivals.max(for_drain), p);
        if further > raw {
            ahead = format!(", {:.0}/s by the time they are up", arrivals + rising);
            raw = further;
        }
    }
    let for_backlog = (for_drain - for_arrivals).max(0.0);
    // A dead band against flapping (every change pauses the group for a rebalance): go
    // down only as far as keeps utilisation at or under the scale-down mark.
    let current = obs.current_replicas;
    let mut held = String::new();
    if raw < current && cfg.scale_down_utilization > 0.0 && cfg.scale_down_utilization < util {
        let keep = replicas_for(
            (arrivals / (rate * cfg.scale_down_utilization)).max(for_drain),
            p,
        );
        if keep > raw {
            raw = keep.min(current);
            held = format!(
                ", held at {raw} for ≤ {:.0}% after scaling down",
                cfg.scale_down_utilization * 100.0
            );
        }
    }
    let learned = if state.replica_rate.is_some() {
        "measured"
    } else {
        "assumed"
    };
    (
        raw,
        Reason::ArrivalRate,
        format!(
            "arrivals {arrivals:.1}/s, lag {lag:.0} ({:+.1}/s), {rate:.1}/s per replica {learned} → {raw} \
             ({for_arrivals:.2} for arrivals at {:.0}%, +{for_backlog:.2} to drain the backlog in {:.0} s{ahead}{held})",
            obs.lag_rate_per_s,
            util * 100.0,
            cfg.drain_s
        ),
    )
}

/// Update the rate estimates from the change since the previous observation.
fn learn(cfg: &PolicyConfig, state: &mut PolicyState, obs: &Observation) {
    let replicas_changed = state
        .prev
        .map(|p| p.replicas != obs.current_replicas)
        .unwrap_or(true);
    if replicas_changed {
        state.replicas_changed_ms = Some(obs.at_ms);
    }
    if let Some(p) = state.prev {
        let dt = (obs.at_ms - p.at_ms) as f64 / 1000.0;
        if dt > 0.0 {
            let consumed_rate = match (p.consumed, obs.consumed_total) {
                (Some(a), Some(b)) if b >= a => Some((b - a) as f64 / dt),
                _ => None,
            };
            let arrival_sample = match (p.produced, obs.produced_total) {
                (Some(a), Some(b)) if b >= a => Some((b - a) as f64 / dt),
                _ => consumed_rate.map(|c| (c + obs.lag_rate_per_s).max(0.0)),
            };
            if let Some(s) = arrival_sample {
                let next = match state.arrival_rate {
                    None => s,
                    Some(old) => {
                        let a = if s > old {
                            ARRIVAL_ALPHA_UP
                        } else {
                            ARRIVAL_ALPHA_DOWN
                        };
                        a * s + (1.0 - a) * old
                    }
                };
                if let Some(old) = state.arrival_rate {
                    let slope = (next - old) / dt;
                    state.arrival_trend =
                        TREND_ALPHA * slope + (1.0 - TREND_ALPHA) * state.arrival_trend;
                }
                state.arrival_rate = Some(next);
            }
            // Saturated all interval long with the same replicas, settled (started, and the
            // group rebalanced, with an interval to spare): a service-rate sample.
            let settled = state.replicas_changed_ms.is_some_and(|t| {
                (obs.at_ms - t) as f64 / 1000.0 >= cfg.startup_s + SETTLE_EXTRA_S + dt
            }) && !replicas_changed;
            let n = obs.current_replicas as f64;
            // A backlog at both ends of at least half an interval's work per replica (and
            // a few batches): every replica was busy all along.
            let per_replica = cfg
                .saturation_lag_per_replica
                .max(state.replica_rate.unwrap_or(cfg.replica_rate_per_s) * dt / 2.0);
            let saturated = n > 0.0 && (p.total_lag.min(obs.total_lag) as f64) >= per_replica * n;
            if cfg.learn_rate && settled && saturated {
                if let Some(c) = consumed_rate {
                    let prior = cfg.replica_rate_per_s;
                    // Per replica of useful parallelism: with 8 partitions, 3 replicas
                    // work like 2.67 (the one with 2 partitions idles part of the time).
                    let sample = (c / effective_replicas(obs.current_replicas, obs.partitions))
                        .clamp(prior / 4.0, prior * 4.0);
                    state.replica_rate = Some(match state.replica_rate {
                        None => sample,
                        Some(old) => SERVICE_ALPHA * sample + (1.0 - SERVICE_ALPHA) * old,
                    });
                }
            }
        }
    }
    state.prev = Some(Prev {
        at_ms: obs.at_ms,
        total_lag: obs.total_lag,
        produced: obs.produced_total,
        consumed: obs.consumed_total,
        replicas: obs.current_replicas,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(t_s: i64, lag: i64, current: u32) -> Observation {
        Observation {
            at_ms: t_s * 1000,
            total_lag: lag,
            lag_rate_per_s: 0.0,
            partitions: 8,
            produced_total: None,
            consumed_total: None,
            current_replicas: current,
            budget: None,
        }
    }

    /// Run a script of (t, lag) through a policy whose actuator applies every decision at
    /// once; returns the desired replicas after each step.
    fn script(cfg: &PolicyConfig, steps: &[(i64, i64)]) -> Vec<(u32, Reason)> {
        let mut state = PolicyState::default();
        let mut current = cfg.min_replicas;
        steps
            .iter()
            .map(|&(t, lag)| {
                let d = decide(cfg, &mut state, &obs(t, lag, current));
                current = d.desired;
                (d.desired, d.reason)
            })
            .collect()
    }

    #[test]
    fn keda_scales_with_lag_up_at_once_down_after_the_window() {
        let mut cfg = PolicyConfig::new(PolicyKind::Keda);
        cfg.scale_down_stabilization_s = 60.0;
        let out = script(
            &cfg,
            &[
                (0, 50),
                (15, 450),
                (30, 2000),
                (45, 100),
                (60, 0),
                (90, 0),
                (105, 0),
                (120, 0),
            ],
        );
        let desired: Vec<u32> = out.iter().map(|(d, _)| *d).collect();
        // 450/100 → 5 at once; 2000/100 → 20, capped at the 8 partitions; then held
        // until 60 s after the 8 was last recommended; then straight to the minimum.
        assert_eq!(desired, vec![1, 5, 8, 8, 8, 8, 1, 1]);
        assert_eq!(out[2].1, Reason::Partitions);
        assert_eq!(out[3].1, Reason::Stabilizing);
        assert_eq!(out[6].1, Reason::Inactive);
    }

    #[test]
    fn keda_activation_tolerance_and_bounds() {
        let mut cfg = PolicyConfig::new(PolicyKind::Keda);
        cfg.activation_lag = 20.0;
        cfg.min_replicas = 0;
        cfg.max_replicas = 3;
        let mut s = PolicyState::default();
        assert_eq!(
            decide(&cfg, &mut s, &obs(0, 15, 0)).desired,
            0,
            "under activation: stays at zero"
        );
        assert_eq!(decide(&cfg, &mut s, &obs(5, 21, 0)).desired, 1, "activated");
        // 4 replicas' worth of lag with 4 running... but max is 3.
        let d = decide(&cfg, &mut s, &obs(10, 1000, 1));
        assert_eq!((d.desired, d.reason), (3, Reason::MaxReplicas));
        // Within 10% of 100 per replica: keep.
        let d = decide(&cfg, &mut s, &obs(15, 290, 3));
        assert_eq!((d.desired, d.reason), (3, Reason::Steady));
        let mut s = PolicyState::default();
        let d = decide(&cfg, &mut s, &obs(0, 205, 2));
        assert_eq!(d.desired, 2, "205 vs 200 target is within tolerance");
    }

    #[test]
    fn partitions_cap_replicas() {
        let cfg = PolicyConfig::new(PolicyKind::Keda);
        let mut s = PolicyState::default();
        let mut o = obs(0, 10_000, 1);
        o.partitions = 4;
        let d = decide(&cfg, &mut s, &o);
        assert_eq!((d.desired, d.reason), (4, Reason::Partitions));
    }

    /// A replica-level simulation of the aifab policy's inputs: `arrivals` per second,
    /// each replica serving `rate`/s, observed every 5 s.
    struct Feed {
        produced: i64,
        consumed: i64,
        t: i64,
        lag_prev: i64,
    }

    impl Feed {
        fn step(&mut self, arrivals: i64, served_per_s: i64, current: u32) -> Observation {
            self.t += 5;
            self.produced += arrivals * 5;
            let backlog = self.produced - self.consumed;
            self.consumed += backlog.min(served_per_s * current as i64 * 5);
            let lag = self.produced - self.consumed;
            let o = Observation {
                at_ms: self.t * 1000,
                total_lag: lag,
                lag_rate_per_s: (lag - self.lag_prev) as f64 / 5.0,
                partitions: 8,
                produced_total: Some(self.produced),
                consumed_total: Some(self.consumed),
                current_replicas: current,
                budget: None,
            };
            self.lag_prev = lag;
            o
        }
    }

    #[test]
    fn aifab_learns_the_replica_rate_under_backlog_and_sizes_for_arrivals() {
        let mut cfg = PolicyConfig::new(PolicyKind::Aifab);
        cfg.replica_rate_per_s = 50.0; // a pessimistic prior; the truth is 100/s
        cfg.startup_s = 5.0;
        cfg.scale_down_cooldown_s = 0.0;
        cfg.scale_down_stabilization_s = 0.0;
        let mut state = PolicyState::default();
        let mut feed = Feed {
            produced: 0,
            consumed: 0,
            t: 0,
            lag_prev: 0,
        };
        // Hold replicas at 2 (an actuator that does not act) under 400/s arrivals:
        // saturated, so the policy measures 100/s per replica.
        for _ in 0..12 {
            let o = feed.step(400, 100, 2);
            decide(&cfg, &mut state, &o);
        }
        let learned = state.replica_rate().unwrap();
        assert!((learned - 100.0).abs() < 5.0, "learned {learned}");
        // Backlog gone, 400/s steady: 400 / (100 × 0.85) = 4.7 replicas' worth, and over 8
        // partitions 5 to 7 replicas serve no faster than 4: 8.
        let mut steady = Feed {
            produced: 0,
            consumed: 0,
            t: feed.t,
            lag_prev: 0,
        };
        let mut d = None;
        for _ in 0..6 {
            let o = steady.step(400, 100, 8);
            d = Some(decide(&cfg, &mut state, &o));
        }
        let d = d.unwrap();
        assert_eq!(d.desired, 8, "{}", d.detail);
        assert_eq!(d.reason, Reason::ArrivalRate);
        assert!(d.detail.contains("measured"), "{}", d.detail);
    }

    /// On a ramp, scaling up one start-up at a time costs a start-up and a rebalance pause
    /// per step while the backlog grows; once the policy scales up it sizes for the
    /// arrivals when the new replicas will be up. A trend alone scales nothing up.
    #[test]
    fn aifab_scaling_up_on_a_ramp_sizes_for_the_arrivals_after_start_up() {
        let mut cfg = PolicyConfig::new(PolicyKind::Aifab);
        cfg.learn_rate = false; // 100/s per replica
        cfg.startup_s = 15.0;
        let run = |ramp: &[i64]| {
            let mut state = PolicyState::default();
            let mut feed = Feed {
                produced: 0,
                consumed: 0,
                t: 0,
                lag_prev: 0,
            };
            // An actuator that does not act: 2 replicas serve 200/s all along.
            ramp.iter()
                .map(|&a| decide(&cfg, &mut state, &feed.step(a, 100, 2)))
                .collect::<Vec<_>>()
        };
        // Rising 4/s every second up to 140/s: 2 replicas are enough now, so no more than
        // 2, however steep the ramp.
        let rising = run(&[40, 60, 80, 100, 120, 140]);
        assert!(
            rising.iter().all(|d| d.desired <= 2),
            "{:?}",
            rising.iter().map(|d| &d.detail).collect::<Vec<_>>()
        );
        // At 180/s: 180 / (100 × 0.85) = 2.1 replicas' worth, 3 for now; but 60/s more are
        // coming within a start-up: 240 / 85 = 2.8, so 4.
        let rising = run(&[40, 60, 80, 100, 120, 140, 160, 180]);
        let d = rising.last().unwrap();
        assert_eq!(d.desired, 4, "{}", d.detail);
        assert!(d.detail.contains("by the time they are up"), "{}", d.detail);
        // The same arrivals, steady: 3.
        let steady = run(&[180; 8]);
        let d = steady.last().unwrap();
        assert_eq!(d.desired, 3, "{}", d.detail);
    }

    #[test]
    fn aifab_adds_replicas_to_drain_a_backlog_and_scales_down_after_the_window() {
        let mut cfg = PolicyConfig::new(PolicyKind::Aifab);
        cfg.scale_down_stabilization_s = 30.0;
        cfg.scale_down_cooldown_s = 10.0;
        cfg.learn_rate = false;
        let mut state = PolicyState::default();
        let mut feed = Feed {
            produced: 0,
            consumed: 0,
            t: 0,
            lag_prev: 0,
        };
        let mut current = 1;
        let mut history = Vec::new();
        // 30 s of 300/s (a step), then 90 s of 50/s.
        for i in 0..24 {
            let arrivals = if i < 6 { 300 } else { 50 };
            let o = feed.step(arrivals, 100, current);
            let d = decide(&cfg, &mut state, &o);
            history.push((d.desired, d.reason, o.total_lag));
            current = d.desired;
        }
        let peak = history.iter().map(|h| h.0).max().unwrap();
        assert!(
            peak >= 4,
            "scaled for 300/s at 100/s per replica: {history:?}"
        );
        assert_eq!(
            history.last().unwrap().0,
            1,
            "back down once it is quiet: {history:?}"
        );
        assert!(
            history.iter().any(|h| h.1 == Reason::Stabilizing),
            "{history:?}"
        );
        // Never down while the backlog was still there.
        for w in history.windows(2) {
            if w[1].0 < w[0].0 {
                assert!(w[0].2 < 100, "scaled down with lag {}: {history:?}", w[0].2);
            }
        }
    }

    #[test]
    fn aifab_caps_replicas_to_the_budget_and_names_the_reason() {
        let mut cfg = PolicyConfig::new(PolicyKind::Aifab);
        cfg.replica_cost_per_hour = 1.0;
        let mut state = PolicyState::default();
        let mut o = obs(0, 5_000, 1);
        // 6 left for 3 hours at 1/h per replica → 2 replicas.
        o.budget = Some(BudgetView {
            remaining: 6.0,
            burn_rate_per_hour: 1.0,
            hours_left: 3.0,
        });
        let d = decide(&cfg, &mut state, &o);
        assert_eq!(
            (d.desired, d.reason, d.budget_cap),
            (2, Reason::BudgetCap, Some(2)),
            "{}",
            d.detail
        );
        assert!(d.recommended > 2);
        assert!(d.detail.contains("capped at 2"), "{}", d.detail);
        // The observed burn is dearer than configured: it wins.
        o.at_ms += 5000;
        o.current_replicas = 2;
        o.budget = Some(BudgetView {
            remaining: 6.0,
            burn_rate_per_hour: 6.0,
            hours_left: 3.0,
        });
        let d = decide(&cfg, &mut state, &o);
        assert_eq!(
            d.desired, 0,
            "3/h per replica for 3 h is more than 6 left: {}",
            d.detail
        );
        // Overspent: a floor can keep a replica anyway.
        cfg.min_replicas_over_budget = 1;
        o.budget = Some(BudgetView {
            remaining: -1.0,
            burn_rate_per_hour: 0.0,
            hours_left: 3.0,
        });
        let d = decide(&cfg, &mut state, &o);
        assert_eq!((d.desired, d.reason), (1, Reason::BudgetCap));
        // KEDA ignores budgets.
        let keda = PolicyConfig::new(PolicyKind::Keda);
        let d = decide(&keda, &mut PolicyState::default(), &o);
        assert_eq!(d.desired, 8);
    }

    #[test]
    fn cooldowns_hold_changes() {
        let mut cfg = PolicyConfig::new(PolicyKind::Keda);
        cfg.scale_up_cooldown_s = 30.0;
        cfg.scale_down_stabilization_s = 0.0;
        cfg.scale_down_cooldown_s = 20.0;
        let out = script(
            &cfg,
            &[
                (0, 300),
                (10, 600),
                (30, 600),
                (35, 100),
                (45, 100),
                (55, 100),
            ],
        );
        assert_eq!(out[0], (3, Reason::Lag));
        assert_eq!(out[1], (3, Reason::Cooldown), "second scale-up within 30 s");
        assert_eq!(out[2], (6, Reason::Lag));
        assert_eq!(
            out[3],
            (6, Reason::Cooldown),
            "down within 20 s of the change"
        );
        assert_eq!(out[4], (6, Reason::Cooldown));
        assert_eq!(out[5], (1, Reason::Lag));
    }

    #[test]
    fn replicas_are_counted_by_the_partitions_they_can_use() {
        let e: Vec<f64> = (1..=8).map(|n| effective_replicas(n, 8)).collect();
        assert_eq!(e, vec![1.0, 2.0, 8.0 / 3.0, 4.0, 4.0, 4.0, 4.0, 8.0]);
        assert_eq!(effective_replicas(12, 8), 8.0);
        assert_eq!(effective_replicas(3, 0), 3.0);
        // Needing 4.2 replicas' worth over 8 partitions means 8: 5, 6 and 7 serve like 4.
        assert_eq!(replicas_for(4.2, 8), 8);
        assert_eq!(replicas_for(4.0, 8), 4);
        assert_eq!(replicas_for(2.5, 8), 3);
        assert_eq!(replicas_for(2.5, 0), 3);
        assert_eq!(replicas_for(0.0, 8), 0);
        assert_eq!(replicas_for(99.0, 8), 8);
    }

    #[test]
    fn budget_cap_math() {
        let cfg = PolicyConfig {
            replica_cost_per_hour: 0.5,
            ..PolicyConfig::new(PolicyKind::Aifab)
        };
        let b = |remaining, burn, hours| BudgetView {
            remaining,
            burn_rate_per_hour: burn,
            hours_left: hours,
        };
        let cap = |cfg: &PolicyConfig, v: BudgetView, current, partitions| {
            budget_cap_for(cfg, &v, current, partitions).map(|c| (c.cap, c.per_replica))
        };
        // 10 left for 4 h at 0.5/h: exactly 5 sustained, nothing left over for a burst.
        assert_eq!(cap(&cfg, b(10.0, 0.0, 4.0), 0, 0), Some((5, 0.5)));
        // Observed 2/h per replica: 1.25 on average sustains 1, and 10 - 1 × 2 × 3 h pays
        // for an hour of 2.
        let c = budget_cap_for(&cfg, &b(10.0, 4.0, 4.0), 2, 0).unwrap();
        assert_eq!(
            (c.sustained, c.cap, c.per_replica),
            (1, 2, 2.0),
            "observed 2/h per replica: {c:?}"
        );
        assert_eq!(
            cap(&cfg, b(1.5, 0.0, 4.0), 0, 0).unwrap().0,
            0,
            "not one replica to the end: no burst either"
        );
        assert_eq!(cap(&cfg, b(-3.0, 0.0, 4.0), 1, 0).unwrap().0, 0);
        let learn = PolicyConfig::new(PolicyKind::Aifab);
        assert_eq!(
            budget_cap_for(&learn, &b(10.0, 0.0, 4.0), 0, 0),
            None,
            "nothing to price replicas with"
        );
        // Over 8 partitions 5 affordable sustains 4 (5 serve like 4): the 1 replica-hour
        // per hour left over pays for bursts. 4 × 0.5 × 3 h reserved, 4 left for the 1-h burst.
        let c = budget_cap_for(&cfg, &b(10.0, 0.0, 4.0), 0, 8).unwrap();
        assert_eq!((c.sustained, c.cap, c.burst_h), (4, 8, 1.0), "{c:?}");
        // No bursts configured: the sustainable count, as useful counts go.
        let no_burst = PolicyConfig {
            budget_burst_s: 0.0,
            ..cfg.clone()
        };
        assert_eq!(cap(&no_burst, b(10.0, 0.0, 4.0), 0, 8).unwrap().0, 4);
        // In the period's last hour the burst is the rest of the period: sustained only.
        assert_eq!(
            cap(&cfg, b(3.5, 0.0, 1.0), 0, 8).unwrap().0,
            4,
            "7 affordable serve like 4"
        );
    }

    /// The rounding to useful counts used to make the budget cap a cliff: 6.75 replicas
    /// affordable on average over 8 partitions capped the policy at 4 for the whole
    /// period, so a burst that needed 8 built a backlog though most of the budget was
    /// never spent. Now the burst runs and what is sustained afterwards is no less.
    #[test]
    fn aifab_bursts_over_the_sustainable_count_when_the_budget_has_room() {
        let mut cfg = PolicyConfig::new(PolicyKind::Aifab);
        cfg.replica_cost_per_hour = 0.2;
        cfg.learn_rate = false;
        let mut state = PolicyState::default();
        // 29.7 left for 22 h at 0.2/h: 6.75 replicas on average; 8 partitions.
        let view = BudgetView {
            remaining: 29.7,
            burn_rate_per_hour: 0.8,
            hours_left: 22.0,
        };
        let mut o = obs(0, 20_000, 4);
        o.budget = Some(view);
        let d = decide(&cfg, &mut state, &o);
        assert_eq!((d.desired, d.budget_cap), (8, Some(8)), "{}", d.detail);
        assert_eq!(d.reason, Reason::Partitions);
        // After an hour at 8 the 4 are still sustainable.
        let after = BudgetView {
            remaining: 29.7 - 8.0 * 0.2,
            burn_rate_per_hour: 1.6,
            hours_left: 21.0,
        };
        let c = budget_cap_for(&cfg, &after, 8, 8).unwrap();
        assert!(c.sustained >= 4, "{c:?}");
        // A budget that sustains 4 but not an hour at 8 on top: capped at 4, and said so.
        let tight = BudgetView {
            remaining: 0.2 * 4.0 * 22.0 + 0.5,
            burn_rate_per_hour: 0.8,
            hours_left: 22.0,
        };
        o.at_ms += 5000;
        o.budget = Some(tight);
        let d = decide(&cfg, &mut state, &o);
        assert_eq!(
            (d.desired, d.reason, d.budget_cap),
            (4, Reason::BudgetCap, Some(4)),
            "{}",
            d.detail
        );
        assert!(d.detail.contains("capped at 4"), "{}", d.detail);
    }
}
