//! The simulator's PNG: arrivals, replicas and lag over time, one line per policy.
//! Drawn with plotters' bitmap backend; plotters draws the text itself (ab_glyph) from
//! DejaVu Sans embedded in the binary, so no system font (fontconfig, freetype) is needed.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

use super::engine::SimResult;

const W: u32 = 1200;
const H: u32 = 900;
const COLORS: [RGBColor; 4] = [
    RGBColor(120, 120, 120),
    RGBColor(220, 80, 40),
    RGBColor(30, 110, 200),
    RGBColor(40, 160, 60),
];
const GRID: RGBColor = RGBColor(225, 225, 225);
/// The family every text style below names; registered from the embedded font.
const FONT: &str = "sans-serif";

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

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

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plot: {e:?}")
}

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

/// Top of a y axis: a little above the highest point, 1 when there is none.
fn y_top(points: impl Iterator<Item = f64>) -> f64 {
    let max = points.fold(0.0, f64::max);
    if max > 0.0 {
        max * 1.05
    } else {
        1.0
    }
}

/// The panel's title and then a colour key per series, in the row above the plot, whose
/// left edge is at `x` (backend pixels): a legend inside the plot would hide lines.
fn title_and_legend(area: &Area, x: i32, title: &str, series: &[Series]) -> anyhow::Result<()> {
    let title_style = TextStyle::from((FONT, 20)).color(&BLACK);
    let key_style = TextStyle::from((FONT, 14)).color(&BLACK);
    let x = x - area.get_base_pixel().0;
    area.draw(&Text::new(title, (x, 6), title_style.clone()))
        .map_err(plot_err)?;
    let (w, _) = area
        .estimate_text_size(title, &title_style)
        .map_err(plot_err)?;
    let mut lx = x + w as i32 + 30;
    for s in series {
        area.draw(&Rectangle::new([(lx, 9), (lx + 18, 21)], s.color.filled()))
            .map_err(plot_err)?;
        area.draw(&Text::new(s.name, (lx + 24, 8), key_style.clone()))
            .map_err(plot_err)?;
        let (w, _) = area
            .estimate_text_size(s.name, &key_style)
            .map_err(plot_err)?;
        lx += 24 + w as i32 + 24;
    }
    Ok(())
}

/// One panel: a title and legend, axes with labelled ticks, and one line per series.
fn panel(area: &Area, title: &str, t_max_h: f64, series: &[Series]) -> anyhow::Result<()> {
    let y_max = y_top(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
    let mut chart = ChartBuilder::on(area)
        .margin(8)
        .margin_top(32)
        // Room for the last x label, centred on the right edge.
        .margin_right(28)
        .x_label_area_size(24)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..t_max_h, 0f64..y_max)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .bold_line_style(GRID)
        .light_line_style(TRANSPARENT)
        .x_labels(6)
        .y_labels(6)
        .x_label_formatter(&|x| format!("{x:.1}h"))
        .y_label_formatter(&|y| short(*y))
        .label_style((FONT, 13))
        .draw()
        .map_err(plot_err)?;
    for s in series {
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), s.color))
            .map_err(plot_err)?;
    }
    title_and_legend(area, chart.backend_coord(&(0.0, y_max)).0, title, series)
}

/// Write the plot for `results` (all run on the same trace) to `path`.
pub fn write(path: &Path, trace_name: &str, results: &[SimResult]) -> anyhow::Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let header = format!("aifab simulate: {trace_name}");
    let header_style = TextStyle::from((FONT, 22)).color(&BLACK);
    root.draw(&Text::new(header.as_str(), (10, 8), header_style))
        .map_err(plot_err)?;
    let panels = root.margin(34, 0, 0, 0).split_evenly((3, 1));
    let t_max_h = results
        .iter()
        .flat_map(|r| r.samples.last().map(|s| s.t_s))
        .fold(0.0, f64::max)
        .max(60.0)
        / 3600.0;
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
    panel(&panels[0], "arrivals/s", t_max_h, &arrivals)?;
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
    panel(
        &panels[1],
        "replicas",
        t_max_h,
        &per_policy(|s| s.replicas as f64),
    )?;
    panel(
        &panels[2],
        "lag (records)",
        t_max_h,
        &per_policy(|s| s.lag as f64),
    )?;
    root.present()
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
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
        assert_eq!(y_top([].into_iter()), 1.0);
        assert!((y_top([10.0, 20.0].into_iter()) - 21.0).abs() < 1e-9);
    }
}
