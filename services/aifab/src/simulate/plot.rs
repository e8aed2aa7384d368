//! The simulator's PNG: arrivals, replicas and lag over time, one line per policy.
//! Drawn by `aifab-plot` (text from an embedded font).

use std::path::Path;

use aifab_plot::{Axes, Canvas, PanelStyle, Series, PALETTE as COLORS};

use super::engine::SimResult;

const SIZE: (u32, u32) = (1200, 900);

/// Tick labels: whole numbers, `k` for thousands, one decimal below 10.
fn short(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Write the plot for `results` (all run on the same trace) to `path`.
pub fn write(path: &Path, trace_name: &str, results: &[SimResult]) -> anyhow::Result<()> {
    let header = format!("aifab simulate: {trace_name}");
    let canvas = Canvas::new(path, SIZE, &header, 3)?;
    let panels = &canvas.panels;
    let t_max_h = results
        .iter()
        .flat_map(|r| r.samples.last().map(|s| s.t_s))
        .fold(0.0, f64::max)
        .max(60.0)
        / 3600.0;
    let axes = Axes {
        x_max: t_max_h,
        x_label: &|x| format!("{x:.1}h"),
        y_label: &|y| short(*y),
    };
    let panel = |area, title, series: &[Series]| {
        aifab_plot::panel(area, title, &axes, PanelStyle::DENSE, series)
    };
    let h = |s: f64| s / 3600.0;
    let arrivals: Vec<(f64, f64)> = results
        .first()
        .map(|r| {
            r.samples
                .iter()
                .skip(1)
                .map(|s| (h(s.t_s), s.arrivals_per_s))
                .collect()
        })
        .unwrap_or_default();
    let arrivals = [Series {
        name: "arrivals",
        color: COLORS[0],
        points: arrivals,
    }];
    panel(&panels[0], "arrivals/s", &arrivals)?;
    let per_policy = |value: fn(&super::engine::Sample) -> f64| -> Vec<Series> {
        results
            .iter()
            .enumerate()
            .map(|(i, r)| Series {
                name: r.name.as_str(),
                color: COLORS[(i + 1) % COLORS.len()],
                points: r.samples.iter().map(|s| (h(s.t_s), value(s))).collect(),
            })
            .collect()
    };
    panel(&panels[1], "replicas", &per_policy(|s| s.replicas as f64))?;
    panel(&panels[2], "lag (records)", &per_policy(|s| s.lag as f64))?;
    canvas.save()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::engine::Sample;

    fn result(name: &str, replicas: u32) -> SimResult {
        SimResult {
            name: name.into(),
            slo_violation_s: 0,
            worker_hours: 1.0,
            cost: 0.2,
            p50_ms: 10.0,
            p99_ms: 50.0,
            max_replicas: replicas,
            mean_replicas: replicas as f64,
            requests: 100,
            completed: 100,
            scale_events: 0,
            max_scale_events_in_an_hour: 0,
            duration_s: 600.0,
            learned_rate: None,
            samples: (0..=10)
                .map(|m| Sample {
                    t_s: m as f64 * 60.0,
                    arrivals_per_s: 5.0 + m as f64,
                    replicas,
                    lag: 3 * m,
                })
                .collect(),
        }
    }

    #[test]
    fn plots_draw_without_system_fonts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sim.png");
        write(
            &path,
            "synthetic",
            &[result("fixed", 4), result("aifab", 2)],
        )
        .unwrap();
        assert!(std::fs::read(&path).unwrap().starts_with(b"\x89PNG"));
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(
            [short(0.0), short(2.5), short(40.0), short(12_000.0)],
            ["0", "2.5", "40", "12k"]
        );
    }
}
