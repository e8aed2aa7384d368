//! What the monitor's loops share: the latest lag readings, the current window report,
//! the firing alerts and everything collected for the dashboard.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aifab_core::messages::{Alert, LagReading};

use crate::dashboard;
use crate::stats::StatsReport;

pub(crate) struct Shared {
    /// The latest reading per (group, topic).
    pub latest_lag: BTreeMap<(String, String), LagReading>,
    pub report: StatsReport,
    /// Firing alerts by rule.
    pub firing: BTreeMap<String, Alert>,
    pub dash: dashboard::Collected,
}

pub(crate) type SharedState = Arc<Mutex<Shared>>;

impl Shared {
    pub fn new(costs_from: String) -> Self {
        Shared {
            latest_lag: BTreeMap::new(),
            report: StatsReport::default(),
            firing: BTreeMap::new(),
            dash: dashboard::Collected::new(costs_from),
        }
    }

    /// A lag reading from the poller.
    pub fn on_lag(&mut self, reading: LagReading) {
        self.dash.on_lag(&reading);
        self.latest_lag
            .insert((reading.group.clone(), reading.topic.clone()), reading);
    }

    /// The highest lag of each group over its topics.
    pub fn lag_by_group(&self) -> BTreeMap<String, i64> {
        let mut out: BTreeMap<String, i64> = BTreeMap::new();
        for r in self.latest_lag.values() {
            let e = out.entry(r.group.clone()).or_default();
            *e = (*e).max(r.total_lag);
        }
        out
    }
}
