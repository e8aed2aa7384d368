//! SLO rules: p99 end-to-end latency, error rate, consumer lag and dead-letter rate.
//! A rule fires after `for_evals` consecutive breaching evaluations and resolves after as
//! many clear ones; each change is one [`Alert`]. An evaluation with nothing to judge (a
//! window with fewer predictions than `min_samples`, a group no longer watched, a rule
//! turned off) is a clear one: an alert never stays firing on data that has left its
//! window. Pure.

use std::collections::BTreeMap;

use aifab_core::messages::{tag, Alert, AlertState, Severity};
use serde::Serialize;

/// Thresholds; a threshold of 0 (or less) turns its rule off.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SloConfig {
    /// p99 end-to-end latency over the window, milliseconds.
    pub p99_ms: f64,
    /// Share of predictions that failed (expired) over the window.
    pub error_rate: f64,
    /// Total lag of any watched group, records.
    pub max_lag: i64,
    /// Dead letters per second over the window.
    pub dlq_per_s: f64,
    /// Latency and error rules need this many predictions in the window.
    pub min_samples: u64,
    /// Consecutive evaluations before a rule fires or resolves.
    pub for_evals: u32,
}

/// What the rules look at, from one evaluation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Measurements {
    pub window_s: f64,
    pub predictions: u64,
    pub p99_ms: Option<f64>,
    pub error_rate: f64,
    /// Total lag per watched `group` (the worst topic of each).
    pub lag: BTreeMap<String, i64>,
    pub dlq_per_s: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RuleState {
    pub firing: bool,
    pub streak: u32,
    pub value: f64,
    pub threshold: f64,
}

/// The rules' state between evaluations.
#[derive(Debug, Default)]
pub struct SloEngine {
    rules: BTreeMap<String, RuleState>,
}

struct Check {
    rule: String,
    value: f64,
    threshold: f64,
    severity: Severity,
    what: String,
    /// False when there was nothing to judge (value 0): a clear evaluation.
    measured: bool,
}

impl Check {
    fn breached(&self) -> bool {
        self.measured && self.value > self.threshold
    }
}

impl SloEngine {
    /// Rules firing now, with their last value.
    pub fn firing(&self) -> impl Iterator<Item = (&String, &RuleState)> {
        self.rules.iter().filter(|(_, s)| s.firing)
    }

    /// Evaluate every rule; returns the alerts to publish (state changes only).
    pub fn evaluate(&mut self, cfg: &SloConfig, m: &Measurements, now_ms: i64) -> Vec<Alert> {
        let mut checks = Vec::new();
        let min_samples = cfg.min_samples.max(1);
        let enough = m.predictions >= min_samples;
        let too_few = || {
            format!(
                "{} prediction{} over the last {:.0} s, fewer than the {min_samples} the rule needs",
                m.predictions,
                if m.predictions == 1 { "" } else { "s" },
                m.window_s
            )
        };
        if cfg.p99_ms > 0.0 {
            checks.push(match (enough, m.p99_ms) {
                (true, Some(p99)) => Check {
                    rule: "p99_latency".into(),
                    value: p99,
                    threshold: cfg.p99_ms,
                    severity: Severity::Warning,
                    what: format!(
                        "p99 end-to-end latency over the last {:.0} s: {p99:.0} ms (SLO {:.0} ms)",
                        m.window_s, cfg.p99_ms
                    ),
                    measured: true,
                },
                _ => Check {
                    rule: "p99_latency".into(),
                    value: 0.0,
                    threshold: cfg.p99_ms,
                    severity: Severity::Warning,
                    what: format!(
                        "p99 end-to-end latency not measured: {} (SLO {:.0} ms)",
                        too_few(),
                        cfg.p99_ms
                    ),
                    measured: false,
                },
            });
        }
        if cfg.error_rate > 0.0 {
            checks.push(if enough {
                Check {
                    rule: "error_rate".into(),
                    value: m.error_rate,
                    threshold: cfg.error_rate,
                    severity: Severity::Critical,
                    what: format!(
                        "{:.2}% of predictions failed (expired) over the last {:.0} s (SLO {:.2}%)",
                        m.error_rate * 100.0,
                        m.window_s,
                        cfg.error_rate * 100.0
                    ),
                    measured: true,
                }
            } else {
                Check {
                    rule: "error_rate".into(),
                    value: 0.0,
                    threshold: cfg.error_rate,
                    severity: Severity::Critical,
                    what: format!(
                        "error rate not measured: {} (SLO {:.2}%)",
                        too_few(),
                        cfg.error_rate * 100.0
                    ),
                    measured: false,
                }
            });
        }
        if cfg.max_lag > 0 {
            for (group, lag) in &m.lag {
                checks.push(Check {
                    rule: format!("lag-{group}"),
                    value: *lag as f64,
                    threshold: cfg.max_lag as f64,
                    severity: Severity::Warning,
                    what: format!(
                        "consumer group {group} is {lag} records behind (SLO {})",
                        cfg.max_lag
                    ),
                    measured: true,
                });
            }
        }
        if cfg.dlq_per_s > 0.0 {
            checks.push(Check {
                rule: "dlq_rate".into(),
                value: m.dlq_per_s,
                threshold: cfg.dlq_per_s,
                severity: Severity::Warning,
                what: format!(
                    "{:.2} dead letters/s over the last {:.0} s (SLO {:.2}/s)",
                    m.dlq_per_s, m.window_s, cfg.dlq_per_s
                ),
                measured: true,
            });
        }
        // A firing rule that nothing measured this time (its group is no longer watched,
        // or the rule was turned off) clears like one back under its threshold.
        for (rule, s) in self.rules.iter_mut() {
            if checks.iter().any(|c| &c.rule == rule) {
                continue;
            }
            if !s.firing {
                s.streak = 0;
                continue;
            }
            {
                checks.push(Check {
                    rule: rule.clone(),
                    value: 0.0,
                    threshold: s.threshold,
                    severity: Severity::Info,
                    what: format!("{rule} is no longer measured"),
                    measured: false,
                });
            }
        }

        let need = cfg.for_evals.max(1);
        let mut out = Vec::new();
        for c in checks {
            let s = self.rules.entry(c.rule.clone()).or_default();
            s.value = c.value;
            s.threshold = c.threshold;
            let breached = c.breached();
            if breached != s.firing {
                s.streak += 1;
                if s.streak >= need {
                    s.firing = breached;
                    s.streak = 0;
                    out.push(Alert {
                        schema: tag(),
                        rule: c.rule,
                        state: if breached {
                            AlertState::Firing
                        } else {
                            AlertState::Resolved
                        },
                        severity: if breached { c.severity } else { Severity::Info },
                        value: c.value,
                        threshold: c.threshold,
                        message: if breached {
                            c.what
                        } else {
                            format!("resolved: {}", c.what)
                        },
                        at_ms: now_ms,
                    });
                }
            } else {
                s.streak = 0;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SloConfig {
        SloConfig {
            p99_ms: 500.0,
            error_rate: 0.01,
            max_lag: 1000,
            dlq_per_s: 1.0,
            min_samples: 10,
            for_evals: 2,
        }
    }

    fn m(p99: f64, errors: f64, lag: i64, dlq: f64, n: u64) -> Measurements {
        Measurements {
            window_s: 60.0,
            predictions: n,
            p99_ms: Some(p99),
            error_rate: errors,
            lag: [("aifab-inference-worker".to_string(), lag)].into(),
            dlq_per_s: dlq,
        }
    }

    #[test]
    fn rules_fire_after_the_streak_and_resolve_once() {
        let mut e = SloEngine::default();
        let c = cfg();
        assert!(e.evaluate(&c, &m(100.0, 0.0, 10, 0.0, 100), 1).is_empty());
        assert!(
            e.evaluate(&c, &m(900.0, 0.0, 10, 0.0, 100), 2).is_empty(),
            "one breach is not enough"
        );
        let a = e.evaluate(&c, &m(900.0, 0.0, 10, 0.0, 100), 3);
        assert_eq!(a.len(), 1);
        assert_eq!(
            (a[0].rule.as_str(), a[0].state, a[0].severity),
            ("p99_latency", AlertState::Firing, Severity::Warning)
        );
        assert_eq!((a[0].value, a[0].threshold), (900.0, 500.0));
        assert!(a[0].message.contains("900 ms"), "{}", a[0].message);
        assert!(
            e.evaluate(&c, &m(900.0, 0.0, 10, 0.0, 100), 4).is_empty(),
            "firing stays quiet"
        );
        assert_eq!(e.firing().count(), 1);
        // A blip under the threshold does not resolve it; two do.
        assert!(e.evaluate(&c, &m(100.0, 0.0, 10, 0.0, 100), 5).is_empty());
        assert!(e.evaluate(&c, &m(900.0, 0.0, 10, 0.0, 100), 6).is_empty());
        assert!(e.evaluate(&c, &m(100.0, 0.0, 10, 0.0, 100), 7).is_empty());
        let a = e.evaluate(&c, &m(100.0, 0.0, 10, 0.0, 100), 8);
        assert_eq!(
            (a[0].state, a[0].severity),
            (AlertState::Resolved, Severity::Info)
        );
        assert!(a[0].message.starts_with("resolved"));
        for alert in &a {
            aifab_core::schema::validate("alert/v1", &serde_json::to_value(alert).unwrap())
                .unwrap();
        }
    }

    #[test]
    fn each_rule_has_its_own_state() {
        let mut e = SloEngine::default();
        let c = SloConfig {
            for_evals: 1,
            ..cfg()
        };
        let a = e.evaluate(&c, &m(100.0, 0.05, 5000, 3.0, 100), 1);
        let rules: Vec<&str> = a.iter().map(|a| a.rule.as_str()).collect();
        assert_eq!(
            rules,
            vec!["error_rate", "lag-aifab-inference-worker", "dlq_rate"]
        );
        assert_eq!(a[0].severity, Severity::Critical);
    }

    #[test]
    fn a_window_with_no_predictions_resolves_latency_and_error_alerts() {
        let mut e = SloEngine::default();
        let c = cfg();
        for t in 1..=2 {
            e.evaluate(&c, &m(6431.0, 0.5, 10, 0.0, 100), t);
        }
        assert_eq!(
            e.firing().map(|(r, _)| r.as_str()).collect::<Vec<_>>(),
            vec!["error_rate", "p99_latency"]
        );
        // The window empties: the last p99 is gone with it (the monitor reports none).
        let empty = Measurements {
            p99_ms: None,
            error_rate: 0.0,
            ..m(0.0, 0.0, 10, 0.0, 0)
        };
        assert!(
            e.evaluate(&c, &empty, 3).is_empty(),
            "one clear evaluation is not enough"
        );
        let a = e.evaluate(&c, &empty, 4);
        let resolved: Vec<(&str, AlertState, f64)> = a
            .iter()
            .map(|a| (a.rule.as_str(), a.state, a.value))
            .collect();
        assert_eq!(
            resolved,
            vec![
                ("p99_latency", AlertState::Resolved, 0.0),
                ("error_rate", AlertState::Resolved, 0.0)
            ]
        );
        assert!(
            a[0].message
                .contains("0 predictions over the last 60 s, fewer than the 10"),
            "{}",
            a[0].message
        );
        for alert in &a {
            aifab_core::schema::validate("alert/v1", &serde_json::to_value(alert).unwrap())
                .unwrap();
        }
        assert_eq!(e.firing().count(), 0);
        // Too few to judge is no data either, and nothing to judge never fires.
        for t in 5..=6 {
            e.evaluate(&c, &m(6431.0, 0.0, 10, 0.0, 100), t);
        }
        assert_eq!(e.firing().count(), 1);
        assert!(e.evaluate(&c, &m(6431.0, 0.0, 10, 0.0, 3), 7).is_empty());
        let a = e.evaluate(&c, &m(6431.0, 0.0, 10, 0.0, 3), 8);
        assert_eq!(
            (a[0].rule.as_str(), a[0].state),
            ("p99_latency", AlertState::Resolved)
        );
        assert!(a[0].message.contains("3 predictions"), "{}", a[0].message);
        for t in 9..=20 {
            assert!(
                e.evaluate(&c, &empty, t).is_empty(),
                "an empty window stays quiet"
            );
        }
    }

    #[test]
    fn a_lag_alert_resolves_when_its_group_is_no_longer_watched() {
        let mut e = SloEngine::default();
        // Two evaluations in a row on either side, as by default.
        let c = SloConfig {
            for_evals: 2,
            ..cfg()
        };
        assert!(e.evaluate(&c, &m(100.0, 0.0, 5000, 0.0, 100), 0).is_empty());
        let a = e.evaluate(&c, &m(100.0, 0.0, 5000, 0.0, 100), 1);
        assert_eq!(
            (a[0].rule.as_str(), a[0].state),
            ("lag-aifab-inference-worker", AlertState::Firing)
        );
        let gone = Measurements {
            lag: BTreeMap::new(),
            ..m(100.0, 0.0, 0, 0.0, 100)
        };
        assert!(
            e.evaluate(&c, &gone, 2).is_empty(),
            "one clear evaluation is not enough"
        );
        let a = e.evaluate(&c, &gone, 2);
        assert_eq!(
            (a[0].rule.as_str(), a[0].state, a[0].threshold),
            ("lag-aifab-inference-worker", AlertState::Resolved, 1000.0)
        );
        assert!(
            a[0].message.contains("no longer measured"),
            "{}",
            a[0].message
        );
        assert!(e.evaluate(&c, &gone, 3).is_empty());
    }

    #[test]
    fn few_samples_and_disabled_rules_do_not_fire() {
        let mut e = SloEngine::default();
        let c = SloConfig {
            for_evals: 1,
            max_lag: 0,
            dlq_per_s: 0.0,
            ..cfg()
        };
        assert!(e
            .evaluate(&c, &m(9000.0, 0.5, 1_000_000, 100.0, 5), 1)
            .is_empty());
    }
}
