//! Every interval: the window's report, the SLO rules over it, and the alerts they raise
//! or resolve (on NATS `aifab.alerts.<rule>` and `/metrics`).

use std::collections::BTreeMap;
use std::sync::Mutex;

use aifab_core::messages::{encode, Alert, AlertState};
use aifab_core::topics::subjects;

use crate::config::Config;
use crate::metric_names;
use crate::slo::{Measurements, SloConfig, SloEngine};
use crate::state::Shared;
use crate::stats::{build_report, export_window_metrics};
use crate::window::{Key, WindowStats, Windows};

/// The SLO rules and their state between evaluations.
pub(crate) struct Evaluator {
    slo: SloConfig,
    engine: SloEngine,
    window_s: f64,
}

impl Evaluator {
    pub fn new(config: &Config) -> Self {
        Evaluator {
            slo: config.slo(),
            engine: SloEngine::default(),
            window_s: config.window_s as f64,
        }
    }

    /// One evaluation at `now_ms`: the shared report and firing alerts are brought up to
    /// date and the window's gauges exported. Returns the alerts raised or resolved.
    pub fn tick(
        &mut self,
        windows: &Mutex<Windows>,
        shared: &Mutex<Shared>,
        now_ms: i64,
    ) -> Vec<Alert> {
        let (stats, dlq) = {
            let mut w = windows.lock().expect("windows lock");
            (w.stats(now_ms), w.dead_letters_per_s(now_ms))
        };
        // The stats lock is held only in this block; the caller publishes after it.
        let alerts = {
            let mut sh = shared.lock().expect("stats lock");
            let m = measurements(self.window_s, &stats, dlq, sh.lag_by_group());
            let alerts = self.engine.evaluate(&self.slo, &m, now_ms);
            for a in &alerts {
                let firing = a.state == AlertState::Firing;
                if firing {
                    sh.firing.insert(a.rule.clone(), a.clone());
                } else {
                    sh.firing.remove(&a.rule);
                }
                metrics::gauge!(metric_names::ALERT_FIRING, "rule" => a.rule.clone())
                    .set(if firing { 1.0 } else { 0.0 });
            }
            let report = build_report(self.window_s, &stats, dlq, &sh.latest_lag, &sh.firing);
            sh.report = report.clone();
            sh.dash.on_report(report, now_ms);
            alerts
        };
        export_window_metrics(&stats, dlq);
        alerts
    }
}

/// The SLO rules' inputs: the whole window's numbers and the worst lag of each group.
fn measurements(
    window_s: f64,
    stats: &BTreeMap<Key, WindowStats>,
    dlq_per_s: f64,
    lag_by_group: BTreeMap<String, i64>,
) -> Measurements {
    let all = stats.get(&Key::All);
    Measurements {
        window_s,
        predictions: all.map(|s| s.count).unwrap_or(0),
        p99_ms: all.and_then(|s| s.p99_ms),
        error_rate: all.map(|s| s.error_rate).unwrap_or(0.0),
        lag: lag_by_group,
        dlq_per_s,
    }
}

/// Log and publish each alert on `aifab.alerts.<rule>`.
pub(crate) async fn publish_alerts(nats: &async_nats::Client, alerts: Vec<Alert>) {
    for a in alerts {
        tracing::warn!(rule = %a.rule, state = ?a.state, value = a.value,
            threshold = a.threshold, message = %a.message, "alert");
        if let Err(e) = nats
            .publish(subjects::alert(&a.rule), encode(&a).into())
            .await
        {
            tracing::warn!(error = %e, "publishing an alert failed");
        }
    }
}
