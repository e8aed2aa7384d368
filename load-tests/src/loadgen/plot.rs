//! `--plot`: rates and latencies over one run, or p99 and throughput against the offered
//! rate for a saturation search. Drawn with plotters' bitmap backend; plotters draws the
//! text itself (ab_glyph) from DejaVu Sans embedded in the binary, so no system font
//! (fontconfig, freetype) is needed.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

use super::step::Step;

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

const SIZE: (u32, u32) = (1200, 800);
const C: [RGBColor; 4] = [
    RGBColor(120, 120, 120),
    RGBColor(220, 80, 40),
    RGBColor(30, 110, 200),
    RGBColor(40, 160, 60),
];
const GRID: RGBColor = RGBColor(225, 225, 225);
/// The family every text style below names; registered from the embedded font.
const FONT: &str = "sans-serif";

/// One line of a panel.
struct Series<'s> {
    name: &'s str,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

/// Give plotters the embedded font: with the `ab_glyph` feature it draws text only in
/// fonts registered here, never from the system.
fn register_font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    anyhow::ensure!(*ok, "plot: the embedded DejaVu Sans does not parse");
    Ok(())
}

fn header_style() -> TextStyle<'static> {
    TextStyle::from((FONT, 22)).color(&BLACK)
}

fn e<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plot: {e:?}")
}

/// Top of an axis: a little above the highest value, 1 when there is none.
fn top(values: impl Iterator<Item = f64>) -> f64 {
    let max = values.fold(0.0, f64::max);
    if max > 0.0 {
        max * 1.05
    } else {
        1.0
    }
}

/// Tick labels: whole numbers, with one decimal below 10 where the tick falls between.
fn tick(v: f64) -> String {
    if v >= 10.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The panel's title and then a colour key per series, in the row above the plot, whose
/// left edge is at `x` (backend pixels): a legend inside the plot would hide lines.
fn title_and_legend(area: &Area, x: i32, title: &str, series: &[Series]) -> anyhow::Result<()> {
    let title_style = TextStyle::from((FONT, 20)).color(&BLACK);
    let key_style = TextStyle::from((FONT, 14)).color(&BLACK);
    let x = x - area.get_base_pixel().0;
    area.draw(&Text::new(title, (x, 8), title_style.clone()))
        .map_err(e)?;
    let (w, _) = area.estimate_text_size(title, &title_style).map_err(e)?;
    let mut lx = x + w as i32 + 30;
    for s in series {
        area.draw(&Rectangle::new([(lx, 11), (lx + 18, 23)], s.color.filled()))
            .map_err(e)?;
        area.draw(&Text::new(s.name, (lx + 24, 10), key_style.clone()))
            .map_err(e)?;
        let (w, _) = area.estimate_text_size(s.name, &key_style).map_err(e)?;
        lx += 24 + w as i32 + 24;
    }
    Ok(())
}

/// One panel: a title and legend, axes with labelled ticks (`x_unit` after the x values)
/// and one line per series, its points marked when there are few.
fn panel(area: &Area, title: &str, x_unit: &str, series: &[Series]) -> anyhow::Result<()> {
    let pts = || series.iter().flat_map(|s| s.points.iter());
    let x_max = top(pts().map(|p| p.0));
    let y_max = top(pts().map(|p| p.1));
    let mut chart = ChartBuilder::on(area)
        .margin(8)
        .margin_top(36)
        // Room for the last x label, centred on the right edge.
        .margin_right(28)
        .x_label_area_size(24)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(e)?;
    let x_label = |x: &f64| format!("{}{x_unit}", tick(*x));
    chart
        .configure_mesh()
        .disable_x_mesh()
        .bold_line_style(GRID)
        .light_line_style(TRANSPARENT)
        .x_labels(6)
        .y_labels(6)
        .x_label_formatter(&x_label)
        .y_label_formatter(&|y| tick(*y))
        .label_style((FONT, 13))
        .draw()
        .map_err(e)?;
    for s in series {
        let color = s.color;
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(e)?;
        if s.points.len() < 20 {
            chart
                .draw_series(s.points.iter().map(|q| Circle::new(*q, 4, color.filled())))
                .map_err(e)?;
        }
    }
    title_and_legend(area, chart.backend_coord(&(0.0, y_max)).0, title, series)
}

/// A white canvas at `path` with `header` along the top, split into two panels.
fn canvas<'a>(path: &'a Path, header: &str) -> anyhow::Result<(Area<'a>, Vec<Area<'a>>)> {
    register_font()?;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    root.draw(&Text::new(header, (10, 8), header_style()))
        .map_err(e)?;
    let panels = root.margin(34, 0, 0, 0).split_evenly((2, 1));
    Ok((root, panels))
}

fn save(root: Area, path: &Path) -> anyhow::Result<()> {
    root.present()
        .map_err(|err| anyhow::anyhow!("writing {}: {err}", path.display()))
}

/// Over time for one run: offered and completed per second; p50 and p99 of the
/// requests scheduled in each second.
pub(crate) fn run(path: &Path, header: &str, s: &Step) -> anyhow::Result<()> {
    let (root, panels) = canvas(path, header)?;
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
    save(root, path)
}

/// Saturation: p99 (and the target) and throughput against the offered rate.
pub(crate) fn saturation(
    path: &Path,
    header: &str,
    steps: &[Step],
    target_ms: f64,
) -> anyhow::Result<()> {
    let (root, panels) = canvas(path, header)?;
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
    save(root, path)
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
