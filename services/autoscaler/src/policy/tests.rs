//! The policies over scripted and simulated observations.

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

#[test]
fn scale_downs_wait_for_a_full_bucket_of_scale_events_and_ups_never_do() {
    let mut cfg = PolicyConfig::new(PolicyKind::Keda);
    cfg.scale_down_stabilization_s = 0.0;
    // One scale event every 600 s; the bucket holds 2.
    cfg.max_scale_events_per_hour = 6;
    let out = script(
        &cfg,
        &[
            (0, 0),
            (10, 450), // up: 2 -> 1
            (20, 0),   // down held: the bucket is not full
            (30, 450),
            (610, 0),    // refilled to 2: down, 2 -> 1
            (620, 450),  // up: never held, 1 -> 0
            (630, 0),    // held
            (1210, 0),   // 1: still held
            (1830, 0),   // 2: down, 2 -> 1
            (1840, 450), // up, 1 -> 0
        ],
    );
    let desired: Vec<u32> = out.iter().map(|(d, _)| *d).collect();
    assert_eq!(desired, vec![1, 5, 5, 5, 1, 5, 5, 5, 1, 5]);
    for i in [2, 6, 7] {
        assert_eq!(out[i].1, Reason::ScaleEventLimit, "step {i}");
    }
    assert_eq!(out[4].1, Reason::Inactive);
    assert_eq!(out[8].1, Reason::Inactive);
    // Without a limit every change goes through.
    cfg.max_scale_events_per_hour = 0;
    let free: Vec<u32> = script(&cfg, &[(0, 0), (10, 450), (20, 0), (30, 450), (40, 0)])
        .iter()
        .map(|(d, _)| *d)
        .collect();
    assert_eq!(free, vec![1, 5, 1, 5, 1]);
}

#[test]
fn a_scale_down_leaves_the_hour_room_for_a_scale_up_and_no_hour_has_more_than_n() {
    let mut cfg = PolicyConfig::new(PolicyKind::Keda);
    cfg.scale_down_stabilization_s = 0.0;
    // One refill every 900 s.
    cfg.max_scale_events_per_hour = 4;
    let out = script(
        &cfg,
        &[
            (0, 0),
            (10, 450),   // up (1 in the hour)
            (920, 0),    // down (2): the bucket is full, and 1 + 2 <= 4
            (930, 450),  // up (3)
            (2760, 0),   // the bucket is full, but 3 + 2 > 4: held, so an up still fits
            (3611, 0),   // t=10 is an hour old: 2 + 2 <= 4, down (3)
            (3620, 450), // up (4)
        ],
    );
    let desired: Vec<u32> = out.iter().map(|(d, _)| *d).collect();
    assert_eq!(desired, vec![1, 5, 1, 5, 5, 1, 5]);
    assert_eq!(out[4].1, Reason::ScaleEventLimit);
    // Ups wait only at the limit: three steps up, the fourth held until the first is an
    // hour old.
    cfg.max_scale_events_per_hour = 3;
    let out = script(
        &cfg,
        &[
            (0, 0),
            (10, 250),
            (20, 450),
            (30, 650),
            (40, 800),
            (3611, 800),
        ],
    );
    let desired: Vec<u32> = out.iter().map(|(d, _)| *d).collect();
    assert_eq!(desired, vec![1, 3, 5, 7, 7, 8]);
    assert_eq!(out[4].1, Reason::ScaleEventLimit);
}

#[test]
fn a_scale_down_the_actuator_is_still_applying_is_neither_reversed_nor_paid_twice() {
    // aifab's defaults: a 30 s cooldown after any change before a scale-down.
    let mut cfg = PolicyConfig::new(PolicyKind::Aifab);
    cfg.max_scale_events_per_hour = 12;
    let mut state = PolicyState::default();
    let at = |t: i64, current: u32, produced: i64| {
        let mut o = obs(t, 0, current);
        o.produced_total = Some(produced);
        o.consumed_total = Some(produced);
        o
    };
    // 5 replicas and nothing to do: down to 1.
    let t0 = 0;
    let target = decide(&cfg, &mut state, &at(t0, 5, 0)).desired;
    assert!(target < 5);
    // The actuator stops one container at a time; every reading within the cooldown keeps
    // the target rather than holding (and so reversing) at the count reached so far.
    for (i, current) in [4, 3, 2].into_iter().enumerate() {
        let d = decide(&cfg, &mut state, &at(t0 + 5 * (i as i64 + 1), current, 0));
        assert_eq!(d.desired, target, "at {current}: {}", d.detail);
    }
    // One change paid for.
    let d = decide(&cfg, &mut state, &at(t0 + 20, target, 0));
    assert_eq!(d.desired, target);
    assert_eq!(state.changes.len(), 1);
}

#[test]
fn a_spike_shorter_than_the_arrival_rise_moves_the_estimate_less() {
    let estimate = |rise_s: f64| {
        let mut cfg = PolicyConfig::new(PolicyKind::Aifab);
        cfg.arrival_rise_s = rise_s;
        let mut state = PolicyState::default();
        for (t, produced) in [(0, 0), (5, 500), (10, 1000), (15, 3000)] {
            let mut o = obs(t, 0, 1);
            o.produced_total = Some(produced);
            decide(&cfg, &mut state, &o);
        }
        state.arrival_rate().unwrap()
    };
    // 100/s, then one 5 s interval at 400/s.
    let quick = estimate(0.0);
    let default = estimate(4.0);
    let slow = estimate(15.0);
    assert_eq!(quick, 400.0);
    assert!((default - (100.0 + 300.0 * (1.0 - (-5.0f64 / 4.0).exp()))).abs() < 1e-9);
    assert!(slow < default && slow > 150.0 && slow < 200.0, "{slow}");
}

#[test]
fn a_change_the_actuator_is_still_applying_counts_once() {
    let mut cfg = PolicyConfig::new(PolicyKind::Keda);
    cfg.scale_down_stabilization_s = 0.0;
    cfg.max_scale_events_per_hour = 4;
    let mut state = PolicyState::default();
    // Up to 5 decided at t=10; the actuator reports 1, 3, 4 before it gets there.
    for (t, current) in [(10, 1), (15, 1), (20, 3), (25, 4), (30, 5)] {
        assert_eq!(decide(&cfg, &mut state, &obs(t, 450, current)).desired, 5);
    }
    // One change so far (the bucket is at 1): a scale-down waits for one refill (900 s at
    // 4 an hour), not one per reading the actuator took to get there.
    let d = decide(&cfg, &mut state, &obs(35, 0, 5));
    assert_eq!((d.desired, d.reason), (5, Reason::ScaleEventLimit));
    let d = decide(&cfg, &mut state, &obs(920, 0, 5));
    assert_eq!((d.desired, d.reason), (1, Reason::Inactive));
}

#[test]
fn a_target_the_actuator_never_reaches_does_not_hold_later_scale_downs() {
    let cfg = PolicyConfig::new(PolicyKind::Aifab);
    let mut state = PolicyState::default();
    let at = |t: i64, lag: i64| {
        let mut o = obs(t, lag, 2);
        o.produced_total = Some(1000);
        o.consumed_total = Some(1000 - lag);
        o
    };
    // A backlog: up from 2 (no rate yet, so by lag as KEDA would).
    let target = decide(&cfg, &mut state, &at(0, 450)).desired;
    assert!(target > 2);
    // The actuator stays at 2 (a failing scale call); the load goes away. After the
    // stabilization window (120 s) and cooldown (30 s), the policy comes down anyway.
    let mut came_down = None;
    for t in (5..=300).step_by(5) {
        let d = decide(&cfg, &mut state, &at(t, 0));
        if d.desired < target {
            came_down = Some((t, d.desired));
            break;
        }
    }
    let (t, desired) = came_down.expect("the target an actuator never reached held forever");
    assert!(t <= 130 && desired <= 2, "at {t}: {desired}");
}

#[test]
fn cancelling_a_change_in_flight_is_not_a_new_scale_event() {
    let mut cfg = PolicyConfig::new(PolicyKind::Keda);
    cfg.scale_down_stabilization_s = 0.0;
    cfg.max_scale_events_per_hour = 4;
    let mut state = PolicyState::default();
    // Up from 1 to 5 decided (bucket 2 -> 1); the actuator has reached 2.
    assert_eq!(decide(&cfg, &mut state, &obs(0, 450, 1)).desired, 5);
    // The backlog is gone at 2 replicas' worth: back to 2, where the actuator is, is
    // allowed although the bucket is not full, and costs nothing.
    let d = decide(&cfg, &mut state, &obs(5, 200, 2));
    assert_eq!(d.desired, 2, "{}", d.detail);
    assert_ne!(d.reason, Reason::ScaleEventLimit);
    assert_eq!(state.changes.len(), 1);
}
