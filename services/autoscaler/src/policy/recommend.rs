//! The two policies' recommendations before bounds, stabilization, cooldowns and the
//! budget: KEDA's lag per replica, and aifab's arrival rate plus backlog.

use super::capacity::{effective_replicas, replicas_for};
use super::{Observation, PolicyConfig, PolicyState, Reason};

/// A replica count with why, as it goes through the decision's steps.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Recommendation {
    pub replicas: u32,
    pub reason: Reason,
    /// Human-readable: the numbers it came from.
    pub detail: String,
}

/// KEDA's Kafka scaler with the HPA's tolerance: lag over lag per replica.
pub(super) fn keda_recommendation(cfg: &PolicyConfig, current: u32, lag: f64) -> Recommendation {
    if lag <= cfg.activation_lag {
        return Recommendation {
            replicas: 0,
            reason: Reason::Inactive,
            detail: format!(
                "lag {lag:.0} at or under activation {:.0}",
                cfg.activation_lag
            ),
        };
    }
    let per = cfg.lag_per_replica.max(1e-9);
    let raw = (lag / per).ceil() as u32;
    // The HPA keeps the current count when the metric is within tolerance of target.
    if current > 0 {
        let ratio = lag / (per * current as f64);
        if (ratio - 1.0).abs() <= cfg.tolerance {
            return Recommendation {
                replicas: current,
                reason: Reason::Steady,
                detail: format!(
                    "lag {lag:.0} within {:.0}% of {per:.0} per replica",
                    cfg.tolerance * 100.0
                ),
            };
        }
    }
    Recommendation {
        replicas: raw,
        reason: Reason::Lag,
        detail: format!("lag {lag:.0} / {per:.0} per replica → {raw}"),
    }
}

/// aifab's: provision for the arrival rate at the target utilisation, plus what drains
/// the backlog within the drain target.
pub(super) fn aifab_recommendation(
    cfg: &PolicyConfig,
    state: &PolicyState,
    obs: &Observation,
    lag: f64,
) -> Recommendation {
    let Some(arrivals) = state.arrival_rate else {
        // First reading: no rate yet, size for the backlog as KEDA would.
        let keda = keda_recommendation(cfg, obs.current_replicas, lag);
        return Recommendation {
            replicas: keda.replicas,
            reason: if keda.replicas == 0 {
                Reason::Inactive
            } else {
                Reason::Lag
            },
            detail: format!("{} (no rate yet)", keda.detail),
        };
    };
    if lag <= cfg.activation_lag && arrivals < 0.5 {
        return Recommendation {
            replicas: 0,
            reason: Reason::Inactive,
            detail: format!("lag {lag:.0}, arrivals {arrivals:.1}/s: idle"),
        };
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
    Recommendation {
        replicas: raw,
        reason: Reason::ArrivalRate,
        detail: format!(
            "arrivals {arrivals:.1}/s, lag {lag:.0} ({:+.1}/s), {rate:.1}/s per replica \
             {learned} → {raw} ({for_arrivals:.2} for arrivals at {:.0}%, +{for_backlog:.2} to \
             drain the backlog in {:.0} s{ahead}{held})",
            obs.lag_rate_per_s,
            util * 100.0,
            cfg.drain_s
        ),
    }
}
