//! Learning from successive observations: the arrival rate (and its trend) from the
//! topic's high watermarks, and each replica's service rate from saturated intervals.

use super::capacity::effective_replicas;
use super::{Observation, PolicyConfig, PolicyState, Prev};

/// Smoothing of the arrival-rate estimate's fall (its rise: `arrival_rise_s`).
const ARRIVAL_ALPHA_DOWN: f64 = 0.3;
const SERVICE_ALPHA: f64 = 0.3;
/// Smoothing of the arrival rate's trend.
const TREND_ALPHA: f64 = 0.5;
/// Beyond a replica's start-up, how long a group takes to settle (rebalance) before its
/// throughput is measured.
const SETTLE_EXTRA_S: f64 = 5.0;

/// Update the rate estimates from the change since the previous observation.
pub(super) fn learn(cfg: &PolicyConfig, state: &mut PolicyState, obs: &Observation) {
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
                            rise_alpha(cfg.arrival_rise_s, dt)
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

/// The weight of a new, higher arrival reading `dt` seconds after the last: an exponential
/// moving average with time constant `rise_s` (0, or not a finite number: take the reading
/// as it is).
fn rise_alpha(rise_s: f64, dt: f64) -> f64 {
    if !rise_s.is_finite() || rise_s <= 0.0 {
        1.0
    } else {
        1.0 - (-dt / rise_s).exp()
    }
}
