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
//!   With `max_scale_events_per_hour` (N) set, changes are paced by a bucket of scale
//!   events that refills at N per hour and holds 2 (never below empty): every change
//!   takes one, and a scale-down waits (reason `scale_event_limit`) until the bucket is
//!   full and the last hour has room for it and a scale-up after it. Scale-ups, which
//!   protect the SLO, wait only when the last hour already saw N changes; a budget cap
//!   never waits. Pacing by a bucket rather than by the count alone: a burst of changes
//!   holds the next scale-down for a refill or two, not for the rest of the hour. Use
//!   N >= 4 (with N < 2 replicas never come down). The count is kept in memory: a
//!   restarted autoscaler starts a fresh hour.
//!   Then it is budget-aware: replicas are capped at the most useful count the remaining
//!   budget sustains to the period's end, or above it for a burst when the budget pays
//!   for an hour of the burst (`budget_burst_s`) and still for the sustained count for the
//!   rest of the period (a burst never lowers what can be sustained), with reason
//!   `budget_cap`.

mod capacity;
mod learn;
mod recommend;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use serde::Serialize;

pub use self::capacity::{budget_cap_for, effective_replicas, replicas_for, BudgetCap};

use self::learn::learn;
use self::recommend::{aifab_recommendation, keda_recommendation, Recommendation};

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
    /// aifab: replica changes per hour to pace to (each one is a consumer-group rebalance,
    /// and a scale-up a start-up); scale-downs wait for room (0: no limit).
    pub max_scale_events_per_hour: u32,
    /// aifab: time constant of the arrival-rate estimate's rise, seconds. Short (the
    /// default 4 s): every spike is met with replicas; about a start-up: a spike that is
    /// over before a new replica serves does not cost a scale event. (Falls weigh each
    /// reading 0.3: about 14 s at a 5 s interval.)
    pub arrival_rise_s: f64,
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
            // Off by default: on the traces a limit of 12 costs worker-hours (see
            // docs/scaling.md); a deployment whose rebalances hurt sets one.
            max_scale_events_per_hour: 0,
            // 0.7 of a new reading at the usual 5 s interval.
            arrival_rise_s: 4.0,
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
    /// A scale-down held: the last hour's scale events leave no room for it.
    ScaleEventLimit,
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
            Reason::ScaleEventLimit => "scale_event_limit",
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

/// The previous observation, as learning needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Prev {
    at_ms: i64,
    total_lag: i64,
    produced: Option<i64>,
    consumed: Option<i64>,
    replicas: u32,
}

/// A recommendation (before stabilization) and when it was made.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PastRecommendation {
    at_ms: i64,
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
    /// Recommendations over the stabilization window, oldest first.
    recommendations: VecDeque<PastRecommendation>,
    last_change_ms: Option<i64>,
    last_up_ms: Option<i64>,
    /// When the observed replica count last changed.
    replicas_changed_ms: Option<i64>,
    /// Scale events the pacing allows (`max_scale_events_per_hour`), as of
    /// `event_tokens_ms`; `None` until the first decision (a full bucket).
    event_tokens: Option<f64>,
    event_tokens_ms: i64,
    /// When this policy decided a change within the last hour, oldest first.
    changes: VecDeque<i64>,
    /// The count last decided while the observed count differs: an actuator still
    /// applying it (or failing to) is one change, not one per reading.
    target: Option<u32>,
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

/// Decide the desired replicas for one observation. Updates `state`.
pub fn decide(cfg: &PolicyConfig, state: &mut PolicyState, obs: &Observation) -> Decision {
    let current = obs.current_replicas;
    let lag = obs.total_lag.max(0) as f64;
    learn(cfg, state, obs);

    // 1. The recommendation.
    let mut r = match cfg.kind {
        PolicyKind::Keda => keda_recommendation(cfg, current, lag),
        PolicyKind::Aifab => aifab_recommendation(cfg, state, obs, lag),
    };
    // 2. Bounds: partitions, max, min.
    bound(cfg, obs.partitions, &mut r);
    let recommended = r.replicas;
    // 3. Stabilization and cooldowns, then the hour's scale events.
    // Holds keep a change the actuator is still applying, not the count it has reached:
    // holding at that count would reverse the change halfway and pay for it twice.
    let base = state.target.unwrap_or(current);
    stabilize(cfg, state, obs, base, &mut r);
    limit_scale_events(cfg, state, obs, base, &mut r);
    // 4. The budget (aifab only): never plan to spend more than is left.
    let budget_cap = match (cfg.kind, obs.budget) {
        (PolicyKind::Aifab, Some(b)) => cap_to_budget(cfg, &b, obs, &mut r),
        _ => None,
    };

    let desired = r.replicas;
    if desired == current {
        state.target = None;
    } else if state.target != Some(desired) {
        state.target = Some(desired);
        if let Some(t) = state.event_tokens.as_mut() {
            // No debt below empty: ups and budget caps that never wait must not hold the
            // next scale-down for longer than two refills (the hour's count is the ceiling).
            *t = (*t - 1.0).max(0.0);
            state.changes.push_back(obs.at_ms);
        }
    }
    // Cooldowns count from decisions, not from readings while an actuator is still (or
    // never) getting there: a target it cannot reach must not hold every later change.
    if desired != base {
        state.last_change_ms = Some(obs.at_ms);
        if desired > base {
            state.last_up_ms = Some(obs.at_ms);
        }
    }

    Decision {
        desired,
        reason: r.reason,
        detail: r.detail,
        recommended,
        budget_cap,
        arrival_rate_per_s: state.arrival_rate.filter(|_| cfg.kind == PolicyKind::Aifab),
        replica_rate_per_s: (cfg.kind == PolicyKind::Aifab)
            .then(|| state.replica_rate.unwrap_or(cfg.replica_rate_per_s)),
    }
}

/// Keep a recommendation within the partitions, the maximum and the minimum.
fn bound(cfg: &PolicyConfig, partitions: u32, r: &mut Recommendation) {
    let hard_max = if partitions > 0 {
        cfg.max_replicas.min(partitions)
    } else {
        cfg.max_replicas
    };
    if r.replicas > hard_max {
        if partitions > 0 && partitions <= cfg.max_replicas {
            r.reason = Reason::Partitions;
            r.detail = format!("{}; capped at the {partitions} partitions", r.detail);
        } else {
            r.reason = Reason::MaxReplicas;
            r.detail = format!("{}; capped at max {}", r.detail, cfg.max_replicas);
        }
        r.replicas = hard_max;
    }
    let floor = cfg.min_replicas.min(hard_max);
    if r.replicas < floor {
        if r.reason != Reason::Inactive {
            r.reason = Reason::MinReplicas;
            r.detail = format!("{}; raised to min {}", r.detail, cfg.min_replicas);
        }
        r.replicas = floor;
    }
}

/// Remember the recommendation, then hold a scale-up within its cooldown and a
/// scale-down at the window's highest recommendation or within its cooldown.
fn stabilize(
    cfg: &PolicyConfig,
    state: &mut PolicyState,
    obs: &Observation,
    base: u32,
    r: &mut Recommendation,
) {
    let current = base;
    let raw = r.replicas;
    let window_ms = (cfg.scale_down_stabilization_s * 1000.0) as i64;
    state.recommendations.push_back(PastRecommendation {
        at_ms: obs.at_ms,
        replicas: raw,
    });
    while state
        .recommendations
        .front()
        .is_some_and(|p| p.at_ms < obs.at_ms - window_ms)
    {
        state.recommendations.pop_front();
    }
    if raw > current {
        if let Some(up) = state.last_up_ms {
            let wait = cfg.scale_up_cooldown_s - (obs.at_ms - up) as f64 / 1000.0;
            if wait > 0.0 {
                r.replicas = current;
                r.reason = Reason::Cooldown;
                r.detail = format!("{}; scale-up cooldown, {wait:.0} s left", r.detail);
            }
        }
    } else if raw < current {
        let stabilized = state
            .recommendations
            .iter()
            .map(|p| p.replicas)
            .max()
            .unwrap_or(raw);
        if stabilized >= current {
            r.replicas = current;
            r.reason = Reason::Stabilizing;
            r.detail = format!(
                "{}; holding {current}: {stabilized} recommended within the last {:.0} s",
                r.detail, cfg.scale_down_stabilization_s
            );
        } else {
            let since_change = state
                .last_change_ms
                .map(|t| (obs.at_ms - t) as f64 / 1000.0);
            match since_change {
                Some(s) if s < cfg.scale_down_cooldown_s => {
                    r.replicas = current;
                    r.reason = Reason::Cooldown;
                    r.detail = format!(
                        "{}; scale-down cooldown, {:.0} s left",
                        r.detail,
                        cfg.scale_down_cooldown_s - s
                    );
                }
                _ => r.replicas = stabilized,
            }
        }
    }
}

/// The most scale events the pacing bucket holds: a scale-down and the scale-up after it.
const EVENT_BUCKET: f64 = 2.0;

/// Refill the bucket of scale events, then hold a scale-down until the bucket is full:
/// a down can wait, an up protects the SLO.
fn limit_scale_events(
    cfg: &PolicyConfig,
    state: &mut PolicyState,
    obs: &Observation,
    base: u32,
    r: &mut Recommendation,
) {
    let limit = cfg.max_scale_events_per_hour;
    if limit == 0 {
        state.event_tokens = None;
        state.changes.clear();
        return;
    }
    let hour_ago = obs.at_ms - 3_600_000;
    while state.changes.front().is_some_and(|t| *t <= hour_ago) {
        state.changes.pop_front();
    }
    let elapsed_h = (obs.at_ms - state.event_tokens_ms).max(0) as f64 / 3_600_000.0;
    let tokens = match state.event_tokens {
        None => EVENT_BUCKET,
        Some(t) => (t + elapsed_h * limit as f64).min(EVENT_BUCKET),
    };
    state.event_tokens = Some(tokens);
    state.event_tokens_ms = obs.at_ms;
    // A change the actuator is still applying (`base`) was paid for when it was decided.
    let current = base;
    // Going back to the count the actuator is at cancels the change in flight: no new one.
    let new_change = r.replicas != current && r.replicas != obs.current_replicas;
    let in_hour = state.changes.len() as u32;
    if r.replicas < current && new_change && tokens < EVENT_BUCKET - 1e-9 {
        let wait_s = (EVENT_BUCKET - tokens) / limit as f64 * 3600.0;
        r.replicas = current;
        r.reason = Reason::ScaleEventLimit;
        r.detail = format!(
            "{}; holding {current}: paced to {limit} scale events an hour, room in {wait_s:.0} s",
            r.detail
        );
    } else if r.replicas < current && new_change && in_hour + 2 > limit {
        // Room for the scale-down and for a scale-up after it, within the hour.
        r.replicas = current;
        r.reason = Reason::ScaleEventLimit;
        r.detail = format!(
            "{}; holding {current}: {in_hour} scale events in the last hour, limit {limit}",
            r.detail
        );
    } else if new_change && in_hour >= limit {
        // The hard limit, scale-ups included: N changes in the last hour already.
        r.replicas = current;
        r.reason = Reason::ScaleEventLimit;
        r.detail = format!(
            "{}; holding {current}: {limit} scale events in the last hour",
            r.detail
        );
    }
}

/// Cap the replicas at what the budget allows; the cap, when replicas can be priced.
fn cap_to_budget(
    cfg: &PolicyConfig,
    b: &BudgetView,
    obs: &Observation,
    r: &mut Recommendation,
) -> Option<u32> {
    let bc = budget_cap_for(cfg, b, obs.current_replicas, obs.partitions)?;
    let cap = bc.cap;
    if r.replicas > cap {
        r.replicas = cap;
        r.reason = Reason::BudgetCap;
        let burst = if cap > bc.sustained {
            format!(
                " (sustains {} to the period's end, {cap} for {:.2} h)",
                bc.sustained, bc.burst_h
            )
        } else {
            String::new()
        };
        r.detail = format!(
            "{}; capped at {cap}: {:.4} left for {:.2} h at {:.4}/h per replica{burst}",
            r.detail, b.remaining, b.hours_left, bc.per_replica
        );
    }
    Some(cap)
}
