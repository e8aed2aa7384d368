//! A discrete-event simulation of the inference-worker pool under a scaling policy.
//!
//! Requests arrive (Poisson per second, in 100-ms chunks) spread evenly over the topic's
//! partitions. Each worker owns a contiguous range of partitions (Kafka's range
//! assignor) and, when idle, takes up to `max_batch` of its oldest queued requests as one
//! batch, which takes the service-time model's time for that batch size (from the worker
//! benchmark, plus a per-batch overhead for the Kafka transaction). A new worker consumes
//! only after `startup_s`; every change of the consuming set pauses consumption for
//! `rebalance_s` (an eager rebalance). Every `interval_s` the policy sees what the
//! monitor would publish (lag = queued + in-flight, produced and consumed totals, the
//! rate of change) plus replicas and budget, and its decision is applied at once:
//! starting workers, or stopping starting ones first and then the highest-numbered.
//!
//! A second counts as an SLO violation when more than 1% of the requests completed in it
//! took longer than the SLO (its p99 is over), or when at its end the oldest waiting
//! request is already older than the SLO. Worker-hours count from a worker's start
//! (booting costs money) to its stop.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use aifab_autoscaler::policy::{
    decide, BudgetView, Observation, PolicyConfig, PolicyKind, PolicyState,
};
use hdrhistogram::Histogram;

use super::decision_log::DecisionLog;
use super::service_model::ServiceModel;

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub partitions: u32,
    pub service: ServiceModel,
    pub startup_s: f64,
    pub rebalance_s: f64,
    pub interval_s: f64,
    pub slo_ms: f64,
    pub price_per_worker_hour: f64,
    /// Given to budget-aware policies (the whole run is the budget period).
    pub budget: Option<f64>,
}

/// What to run.
#[derive(Debug, Clone)]
pub enum Run {
    Fixed(u32),
    Policy(PolicyConfig),
}

/// One sample for the plot (every minute).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub t_s: f64,
    pub arrivals_per_s: f64,
    pub replicas: u32,
    pub lag: u64,
}

#[derive(Debug, Clone)]
pub struct SimResult {
    pub name: String,
    pub slo_violation_s: u64,
    pub worker_hours: f64,
    pub cost: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_replicas: u32,
    pub mean_replicas: f64,
    pub requests: u64,
    pub completed: u64,
    pub scale_events: u32,
    /// The most scale events in any hour (a sliding window).
    pub max_scale_events_in_an_hour: u32,
    /// Seconds simulated.
    pub duration_s: f64,
    /// The per-replica service rate the policy learned, if it learned one.
    pub learned_rate: Option<f64>,
    pub samples: Vec<Sample>,
}

/// The most of `times` (seconds, ascending) within any hour.
pub fn most_in_any_hour(times: &[f64]) -> u32 {
    let mut most = 0;
    let mut first = 0;
    for (i, &t) in times.iter().enumerate() {
        while times[first] <= t - 3600.0 {
            first += 1;
        }
        most = most.max(i + 1 - first);
    }
    most as u32
}

impl SimResult {
    /// Replica changes per hour simulated (each one a consumer-group rebalance).
    pub fn scale_events_per_hour(&self) -> f64 {
        self.scale_events as f64 * 3600.0 / self.duration_s.max(1.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Second(usize),
    Arrive(u32),
    Done(u64),
    Ready(u64),
    Wake,
    Decide,
}

#[derive(Debug, Clone, Copy)]
struct Ev {
    t: f64,
    seq: u64,
    kind: Kind,
}

impl PartialEq for Ev {
    fn eq(&self, o: &Self) -> bool {
        self.t == o.t && self.seq == o.seq
    }
}
impl Eq for Ev {}
impl PartialOrd for Ev {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ev {
    // Reversed: BinaryHeap is a max-heap, we want the earliest first.
    fn cmp(&self, o: &Self) -> Ordering {
        o.t.total_cmp(&self.t).then(o.seq.cmp(&self.seq))
    }
}

struct Worker {
    id: u64,
    active: bool,
    busy: bool,
    parts: Vec<usize>,
}

struct Batch {
    worker: u64,
    items: Vec<(f64, u32)>,
    n: u32,
}

struct Sim<'a> {
    cfg: &'a SimConfig,
    t: f64,
    end: f64,
    seq: u64,
    heap: BinaryHeap<Ev>,
    queues: Vec<VecDeque<(f64, u32)>>,
    queued: u64,
    in_flight: u64,
    rr: usize,
    workers: Vec<Worker>,
    next_worker: u64,
    paused_until: f64,
    batches: HashMap<u64, Batch>,
    next_batch: u64,
    produced: u64,
    consumed: u64,
    completed_in: Vec<u32>,
    over_in: Vec<u32>,
    head_late: Vec<bool>,
    hist: Histogram<u64>,
    worker_seconds: f64,
    count_since: f64,
    max_replicas: u32,
    scale_events: u32,
    /// When each scale event happened (seconds).
    scale_event_times: Vec<f64>,
    samples: Vec<Sample>,
    minute_arrivals: u64,
}

impl<'a> Sim<'a> {
    fn push(&mut self, t: f64, kind: Kind) {
        self.seq += 1;
        self.heap.push(Ev {
            t,
            seq: self.seq,
            kind,
        });
    }

    fn replicas(&self) -> u32 {
        self.workers.len() as u32
    }

    /// Account worker-seconds up to now (call before any change of the worker count).
    fn account(&mut self) {
        let t = self.t.min(self.end);
        if t > self.count_since {
            self.worker_seconds += self.workers.len() as f64 * (t - self.count_since);
            self.count_since = t;
        }
    }

    fn cost_so_far(&self) -> f64 {
        let pending =
            self.workers.len() as f64 * (self.t.min(self.end) - self.count_since).max(0.0);
        (self.worker_seconds + pending) / 3600.0 * self.cfg.price_per_worker_hour
    }

    /// Range assignment over the consuming workers, and a rebalance pause.
    fn rebalance(&mut self) {
        let p = self.cfg.partitions as usize;
        let mut active: Vec<usize> = (0..self.workers.len())
            .filter(|&i| self.workers[i].active)
            .collect();
        active.sort_by_key(|&i| self.workers[i].id);
        for w in self.workers.iter_mut() {
            w.parts.clear();
        }
        if let Some(base) = p.checked_div(active.len()) {
            let extra = p % active.len();
            let mut next = 0;
            for (k, &i) in active.iter().enumerate() {
                let n = base + usize::from(k < extra);
                self.workers[i].parts = (next..next + n).collect();
                next += n;
            }
        }
        self.paused_until = self.t + self.cfg.rebalance_s;
        self.push(self.paused_until, Kind::Wake);
    }

    fn arrive(&mut self, count: u32) {
        let p = self.cfg.partitions as usize;
        let (base, rem) = (count as usize / p, count as usize % p);
        for k in 0..p {
            let part = (self.rr + k) % p;
            let n = base + usize::from(k < rem);
            if n > 0 {
                self.queues[part].push_back((self.t, n as u32));
            }
        }
        self.rr = (self.rr + rem) % p;
        self.queued += count as u64;
        self.produced += count as u64;
        self.minute_arrivals += count as u64;
    }

    fn dispatch(&mut self) {
        if self.t < self.paused_until || self.queued == 0 {
            return;
        }
        let max_batch = self.cfg.service.max_batch;
        for wi in 0..self.workers.len() {
            let w = &self.workers[wi];
            if !w.active || w.busy || w.parts.is_empty() {
                continue;
            }
            let parts = w.parts.clone();
            let mut items = Vec::new();
            let mut n = 0u32;
            while n < max_batch {
                // The oldest head among this worker's partitions.
                let Some(&pi) = parts
                    .iter()
                    .filter(|&&p| !self.queues[p].is_empty())
                    .min_by(|&&a, &&b| self.queues[a][0].0.total_cmp(&self.queues[b][0].0))
                else {
                    break;
                };
                let front = self.queues[pi].front_mut().expect("non-empty");
                let take = front.1.min(max_batch - n);
                items.push((front.0, take));
                front.1 -= take;
                if front.1 == 0 {
                    self.queues[pi].pop_front();
                }
                n += take;
            }
            if n == 0 {
                continue;
            }
            self.queued -= n as u64;
            self.in_flight += n as u64;
            let id = self.next_batch;
            self.next_batch += 1;
            self.workers[wi].busy = true;
            let worker = self.workers[wi].id;
            self.batches.insert(id, Batch { worker, items, n });
            let done = self.t + self.cfg.service.batch_time(n);
            self.push(done, Kind::Done(id));
        }
    }

    fn done(&mut self, id: u64) {
        let Some(b) = self.batches.remove(&id) else {
            return;
        };
        self.in_flight -= b.n as u64;
        self.consumed += b.n as u64;
        let s = self.t as usize;
        let slo_s = self.cfg.slo_ms / 1000.0;
        for (at, n) in b.items {
            let latency = self.t - at;
            let ms = (latency * 1000.0).round().clamp(1.0, 3_600_000.0) as u64;
            let _ = self.hist.record_n(ms, n as u64);
            if s < self.completed_in.len() {
                self.completed_in[s] += n;
                if latency > slo_s {
                    self.over_in[s] += n;
                }
            }
        }
        if let Some(w) = self.workers.iter_mut().find(|w| w.id == b.worker) {
            w.busy = false;
        }
    }

    fn oldest_waiting(&self) -> Option<f64> {
        self.queues
            .iter()
            .filter_map(|q| q.front().map(|f| f.0))
            .min_by(|a, b| a.total_cmp(b))
    }

    /// What the monitor would publish now, as the policy sees it; `prev_lag` is the lag
    /// at the previous decision (for its rate of change) and is moved to now.
    fn observe(&self, prev_lag: &mut Option<(f64, i64)>) -> Observation {
        let lag = (self.queued + self.in_flight) as i64;
        let rate = match *prev_lag {
            Some((t0, l0)) if self.t > t0 => (lag - l0) as f64 / (self.t - t0),
            _ => 0.0,
        };
        *prev_lag = Some((self.t, lag));
        let budget = self.cfg.budget.map(|b| BudgetView {
            remaining: b - self.cost_so_far(),
            burn_rate_per_hour: self.replicas() as f64 * self.cfg.price_per_worker_hour,
            hours_left: (self.end - self.t) / 3600.0,
        });
        Observation {
            at_ms: (self.t * 1000.0) as i64,
            total_lag: lag,
            lag_rate_per_s: rate,
            partitions: self.cfg.partitions,
            produced_total: Some(self.produced as i64),
            consumed_total: Some(self.consumed as i64),
            current_replicas: self.replicas(),
            budget,
        }
    }

    fn apply(&mut self, desired: u32) {
        let current = self.replicas();
        if desired == current {
            return;
        }
        self.account();
        self.scale_events += 1;
        self.scale_event_times.push(self.t);
        if desired > current {
            for _ in current..desired {
                let id = self.next_worker;
                self.next_worker += 1;
                self.workers.push(Worker {
                    id,
                    active: false,
                    busy: false,
                    parts: Vec::new(),
                });
                self.push(self.t + self.cfg.startup_s, Kind::Ready(id));
            }
        } else {
            let mut remove = (current - desired) as usize;
            let mut lost_active = false;
            // Starting ones first (newest first), then the highest-numbered consumers.
            self.workers
                .sort_by_key(|w| (w.active, std::cmp::Reverse(w.id)));
            while remove > 0 && !self.workers.is_empty() {
                let w = self.workers.remove(0);
                lost_active |= w.active;
                remove -= 1;
            }
            self.workers.sort_by_key(|w| w.id);
            if lost_active {
                self.rebalance();
            }
        }
        self.max_replicas = self.max_replicas.max(self.replicas());
    }
}

/// Run one policy over `arrivals` (counts per second).
pub fn simulate(name: &str, arrivals: &[u32], cfg: &SimConfig, run: &Run) -> SimResult {
    let d = arrivals.len();
    let mut sim = Sim {
        cfg,
        t: 0.0,
        end: d as f64,
        seq: 0,
        heap: BinaryHeap::new(),
        queues: vec![VecDeque::new(); cfg.partitions.max(1) as usize],
        queued: 0,
        in_flight: 0,
        rr: 0,
        workers: Vec::new(),
        next_worker: 0,
        paused_until: 0.0,
        batches: HashMap::new(),
        next_batch: 0,
        produced: 0,
        consumed: 0,
        completed_in: vec![0; d],
        over_in: vec![0; d],
        head_late: vec![false; d],
        hist: Histogram::new_with_bounds(1, 3_600_000, 3).expect("bounds"),
        worker_seconds: 0.0,
        count_since: 0.0,
        max_replicas: 0,
        scale_events: 0,
        scale_event_times: Vec::new(),
        samples: Vec::new(),
        minute_arrivals: 0,
    };
    let mut policy = match run {
        Run::Fixed(n) => {
            for id in 0..*n as u64 {
                sim.workers.push(Worker {
                    id,
                    active: true,
                    busy: false,
                    parts: Vec::new(),
                });
            }
            sim.next_worker = *n as u64;
            sim.max_replicas = *n;
            sim.rebalance();
            sim.paused_until = 0.0;
            None
        }
        Run::Policy(p) => {
            sim.apply(p.min_replicas.max(1).min(p.max_replicas));
            // The initial replicas are up when the trace starts.
            for w in sim.workers.iter_mut() {
                w.active = true;
            }
            sim.heap.clear();
            sim.rebalance();
            sim.paused_until = 0.0;
            sim.scale_events = 0;
            sim.scale_event_times.clear();
            sim.push(cfg.interval_s, Kind::Decide);
            Some((p.clone(), PolicyState::default()))
        }
    };
    sim.push(0.0, Kind::Second(0));
    let mut debug = DecisionLog::from_env(name);
    let mut prev_lag: Option<(f64, i64)> = None;
    let mut replica_seconds = 0.0;
    while let Some(ev) = sim.heap.pop() {
        if ev.t > sim.end {
            break;
        }
        sim.t = ev.t;
        match ev.kind {
            Kind::Second(s) => {
                if s > 0 {
                    let slo_s = cfg.slo_ms / 1000.0;
                    if sim.oldest_waiting().is_some_and(|at| sim.t - at > slo_s) {
                        sim.head_late[s - 1] = true;
                    }
                    replica_seconds += sim.replicas() as f64;
                }
                if s % 60 == 0 {
                    let secs = if s == 0 { 1.0 } else { 60.0 };
                    sim.samples.push(Sample {
                        t_s: s as f64,
                        arrivals_per_s: sim.minute_arrivals as f64 / secs,
                        replicas: sim.replicas(),
                        lag: sim.queued + sim.in_flight,
                    });
                    sim.minute_arrivals = 0;
                }
                if s < d {
                    let n = arrivals[s];
                    let chunks = 10u32;
                    for j in 0..chunks {
                        let c = n / chunks + u32::from(j < n % chunks);
                        if c > 0 {
                            sim.push(s as f64 + j as f64 / chunks as f64, Kind::Arrive(c));
                        }
                    }
                    sim.push((s + 1) as f64, Kind::Second(s + 1));
                }
            }
            Kind::Arrive(c) => sim.arrive(c),
            Kind::Done(id) => sim.done(id),
            Kind::Ready(id) => {
                if let Some(w) = sim.workers.iter_mut().find(|w| w.id == id) {
                    w.active = true;
                    sim.rebalance();
                }
            }
            Kind::Wake => {}
            Kind::Decide => {
                if let Some((p, state)) = policy.as_mut() {
                    let obs = sim.observe(&mut prev_lag);
                    let decision = decide(p, state, &obs);
                    if let Some(log) = debug.as_mut() {
                        log.write(sim.t, &obs, &decision);
                    }
                    sim.apply(decision.desired);
                    sim.push(sim.t + cfg.interval_s, Kind::Decide);
                }
            }
        }
        sim.dispatch();
    }
    sim.t = sim.end;
    sim.account();
    let violations = (0..d)
        .filter(|&s| {
            sim.head_late[s]
                || (sim.completed_in[s] > 0
                    && sim.over_in[s] as u64 * 100 > sim.completed_in[s] as u64)
        })
        .count() as u64;
    let worker_hours = sim.worker_seconds / 3600.0;
    SimResult {
        name: name.to_string(),
        slo_violation_s: violations,
        worker_hours,
        cost: worker_hours * cfg.price_per_worker_hour,
        p50_ms: sim.hist.value_at_quantile(0.5) as f64,
        p99_ms: sim.hist.value_at_quantile(0.99) as f64,
        max_replicas: sim.max_replicas,
        mean_replicas: replica_seconds / d.max(1) as f64,
        requests: sim.produced,
        completed: sim.consumed,
        scale_events: sim.scale_events,
        max_scale_events_in_an_hour: most_in_any_hour(&sim.scale_event_times),
        duration_s: d as f64,
        learned_rate: policy
            .as_ref()
            .filter(|(p, _)| p.kind == PolicyKind::Aifab)
            .and_then(|(_, s)| s.replica_rate()),
        samples: sim.samples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busiest_hour_is_counted_over_a_sliding_window() {
        assert_eq!(most_in_any_hour(&[]), 0);
        // 3 within [100, 3699]; the one at 3700 is exactly an hour after the one at 100.
        assert_eq!(most_in_any_hour(&[100.0, 200.0, 3699.0, 3700.0]), 3);
        assert_eq!(most_in_any_hour(&[0.0, 5000.0, 5001.0, 5002.0, 8500.0]), 4);
    }

    fn cfg() -> SimConfig {
        SimConfig {
            partitions: 8,
            service: ServiceModel::parse("1:44,8:84,32:106", 0.004, 32).unwrap(),
            startup_s: 10.0,
            rebalance_s: 2.0,
            interval_s: 5.0,
            slo_ms: 1000.0,
            price_per_worker_hour: 1.0,
            budget: None,
        }
    }

    #[test]
    fn enough_fixed_workers_meet_the_slo_and_too_few_do_not() {
        // 5 minutes at 300/s: 4 workers (~415/s saturated) keep up, 2 (~208/s) do not.
        let arrivals = vec![300u32; 300];
        let ok = simulate("fixed4", &arrivals, &cfg(), &Run::Fixed(4));
        assert_eq!(ok.requests, 90_000);
        assert_eq!(ok.slo_violation_s, 0, "p99 {}", ok.p99_ms);
        assert!((ok.worker_hours - 4.0 * 300.0 / 3600.0).abs() < 1e-9);
        assert!(ok.completed >= 89_000);
        let slow = simulate("fixed2", &arrivals, &cfg(), &Run::Fixed(2));
        assert!(slow.slo_violation_s > 200, "{}", slow.slo_violation_s);
        assert!(slow.completed < 70_000);
    }

    #[test]
    fn policies_scale_a_step_up_and_back_down() {
        // 2 min at 30/s, 5 min at 400/s, 10 min at 30/s.
        let mut arrivals = vec![30u32; 120];
        arrivals.extend(vec![400u32; 300]);
        arrivals.extend(vec![30u32; 600]);
        for kind in [PolicyKind::Keda, PolicyKind::Aifab] {
            let mut p = PolicyConfig::new(kind);
            p.replica_rate_per_s = 100.0;
            p.startup_s = 10.0;
            let r = simulate(kind.name(), &arrivals, &cfg(), &Run::Policy(p));
            assert!(r.max_replicas >= 4, "{}: max {}", r.name, r.max_replicas);
            let last = r.samples.last().unwrap();
            assert_eq!(last.replicas, 1, "{}: back to one at the end", r.name);
            assert!(r.completed + 100 >= r.requests, "{}: drained", r.name);
            assert!(r.worker_hours < 8.0 * arrivals.len() as f64 / 3600.0);
        }
    }

    #[test]
    fn the_budget_is_never_exceeded() {
        let arrivals = vec![500u32; 1800];
        let mut c = cfg();
        c.budget = Some(1.0); // 1 worker-hour over half an hour: at most 2 replicas on average
        let mut p = PolicyConfig::new(PolicyKind::Aifab);
        p.replica_cost_per_hour = c.price_per_worker_hour;
        let r = simulate("aifab", &arrivals, &c, &Run::Policy(p));
        assert!(r.cost <= 1.0 + 1e-9, "cost {}", r.cost);
        assert!(r.max_replicas >= 2);
        let unbounded = simulate(
            "keda",
            &arrivals,
            &c,
            &Run::Policy(PolicyConfig::new(PolicyKind::Keda)),
        );
        assert!(
            unbounded.cost > 1.0,
            "KEDA ignores the budget: {}",
            unbounded.cost
        );
    }
}
