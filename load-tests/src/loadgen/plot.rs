//! `--plot`: rates and latencies over one run, or p99 and throughput against the offered
//! rate for a saturation search, drawn by `aifab-plot` (text from an embedded font).

use std::path::Path;

use aifab_plot::{axis_top, Axes, Canvas, PanelStyle, Series, PALETTE as C};

use super::step::Step;

const SIZE: (u32, u32) = (1200, 800);

/// Tick labels: whole numbers, with one decimal below 10 where the tick falls between.
fn tick(v: f64) -> String {
    if v >= 10.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// One panel over the series' own x range, `x_unit` after the x values.
fn panel(
    area: &aifab_plot::Area,
    title: &str,
    x_unit: &str,
    series: &[Series],
) -> anyhow::Result<()> {
    let x_label = |x: &f64| format!("{}{x_unit}", tick(*x));
    let axes = Axes {
        x_max: axis_top(series.iter().flat_map(|s| s.points.iter().map(|p| p.0))),
        x_label: &x_label,
        y_label: &|y| tick(*y),
    };
    aifab_plot::panel(area, title, &axes, PanelStyle::SPARSE, series)
}

/// Over time for one run: offered and completed per second; p50 and p99 of the
/// requests scheduled in each second.
pub(crate) fn run(path: &Path, header: &str, s: &Step) -> anyhow::Result<()> {
    let canvas = Canvas::new(path, SIZE, header, 2)?;
    let panels = &canvas.panels;
    let w = &s.windows;
    let offered = w.iter().map(|w| (w.t_s, w.offered as f64)).collect();
    let completed = w.iter().map(|w| (w.t_s, w.completed as f64)).collect();
    panel(
        &panels[0],
        "requests/s",
        "s",
        &[
            Series {
                name: "offered",
                color: C[0],
                points: offered,
            },
            Series {
                name: "completed",
                color: C[2],
                points: completed,
            },
        ],
    )?;
    let lat = w.iter().filter(|w| w.offered > 0);
    let p50 = lat.clone().map(|w| (w.t_s, w.p50_ms)).collect();
    let p99 = lat.map(|w| (w.t_s, w.p99_ms)).collect();
    panel(
        &panels[1],
        "latency ms (by intended send)",
        "s",
        &[
            Series {
                name: "p50",
                color: C[2],
                points: p50,
            },
            Series {
                name: "p99",
                color: C[1],
                points: p99,
            },
        ],
    )?;
    canvas.save()
}

/// Saturation: p99 (and the target) and throughput against the offered rate.
pub(crate) fn saturation(
    path: &Path,
    header: &str,
    steps: &[Step],
    target_ms: f64,
) -> anyhow::Result<()> {
    let canvas = Canvas::new(path, SIZE, header, 2)?;
    let panels = &canvas.panels;
    let mut by_rate: Vec<&Step> = steps.iter().collect();
    by_rate.sort_by(|a, b| a.offered_rate.total_cmp(&b.offered_rate));
    let x_end = by_rate.last().map_or(1.0, |s| s.offered_rate);
    let against_rate =
        |f: fn(&Step) -> f64| by_rate.iter().map(|s| (s.offered_rate, f(s))).collect();
    panel(
        &panels[0],
        "latency ms vs offered/s",
        "",
        &[
            Series {
                name: "p99",
                color: C[1],
                points: against_rate(|s| s.latency.p99_ms),
            },
            Series {
                name: "p50",
                color: C[2],
                points: against_rate(|s| s.latency.p50_ms),
            },
            Series {
                name: "target",
                color: C[0],
                points: vec![(0.0, target_ms), (x_end, target_ms)],
            },
        ],
    )?;
    panel(
        &panels[1],
        "throughput/s vs offered/s",
        "",
        &[
            Series {
                name: "throughput",
                color: C[3],
                points: against_rate(|s| s.throughput),
            },
            Series {
                name: "offered",
                color: C[0],
                points: vec![(0.0, 0.0), (x_end, x_end)],
            },
        ],
    )?;
    canvas.save()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::accounting::Accounting;
    use crate::loadgen::args::{Arrivals, Scenario};
    use crate::loadgen::schedule::schedule;
    use crate::loadgen::schedule::tests::shape;

    #[test]
    fn plots_draw_without_system_fonts() {
        let arrivals = schedule(&shape(Scenario::Steady, 50.0, 3.0), Arrivals::Uniform, 1);
        let mut acc = Accounting::new(&arrivals);
        for (i, a) in arrivals.iter().enumerate() {
            acc.record(i, a.at_s + 0.02);
        }
        let step = Step {
            scenario: Scenario::Steady,
            rate: 50.0,
            duration_s: 3.0,
            offered_rate: 50.0,
            requests: arrivals.len(),
            sent: arrivals.len(),
            send_errors: 0,
            max_send_lag_ms: 0.0,
            predicted: acc.distinct,
            lost: 0,
            duplicated: 0,
            throughput: acc.throughput(),
            latency: acc.latency(|_| true),
            stages: acc.stages(),
            tenants: acc.tenants(&["acme".into()]),
            windows: acc.windows(),
            passed: Some(true),
        };
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("run.png"), dir.path().join("sat.png"));
        run(&a, "test", &step).unwrap();
        let mut faster = step.clone();
        faster.offered_rate = 100.0;
        saturation(&b, "test", &[step, faster], 30.0).unwrap();
        for p in [a, b] {
            assert!(
                std::fs::read(&p).unwrap().starts_with(b"\x89PNG"),
                "{} is a PNG",
                p.display()
            );
        }
    }

    #[test]
    fn ticks_show_a_decimal_only_where_a_whole_number_would_repeat() {
        assert_eq!(
            [tick(0.0), tick(0.4), tick(2.0), tick(12.5), tick(1500.0)],
            ["0", "0.4", "2", "12", "1500"]
        );
    }
}
