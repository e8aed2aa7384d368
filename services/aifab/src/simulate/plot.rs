//! The simulator's PNG: arrivals, replicas and lag over time, one line per policy.
//! Drawn with plotters' bitmap backend; text comes from font8x8's bitmap glyphs, so no
//! system font (fontconfig, freetype) is needed.

use std::path::Path;

use plotters::prelude::*;

use super::engine::SimResult;

const W: u32 = 1200;
const H: u32 = 900;
const COLORS: [RGBColor; 4] = [
    RGBColor(120, 120, 120),
    RGBColor(220, 80, 40),
    RGBColor(30, 110, 200),
    RGBColor(40, 160, 60),
];

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// Draw `text` with its top-left corner at (x, y), `scale` pixels per font pixel.
fn text(area: &Area, x: i32, y: i32, s: &str, scale: i32, color: &RGBColor) {
    let mut cx = x;
    for ch in s.chars() {
        let glyph = font8x8::legacy::BASIC_LEGACY
            .get(ch as usize)
            .copied()
            .unwrap_or([0; 8]);
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) != 0 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            let _ = area.draw_pixel(
                                (cx + col * scale + dx, y + row as i32 * scale + dy),
                                color,
                            );
                        }
                    }
                }
            }
        }
        cx += 8 * scale;
    }
}

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn short(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// One panel: a title, axes with 5 ticks, and one line per series. Text and legend go on
/// `root` (chart coordinates are the backend's, i.e. the root's).
fn panel(
    root: &Area,
    area: &Area,
    title: &str,
    t_max_h: f64,
    series: &[(&str, RGBColor, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    let y_max = nice_max(
        series
            .iter()
            .flat_map(|(_, _, p)| p.iter().map(|(_, y)| *y))
            .fold(0.0, f64::max)
            * 1.05,
    );
    let mut chart = ChartBuilder::on(area)
        .margin_top(28)
        .margin_bottom(22)
        .margin_left(60)
        .margin_right(20)
        .build_cartesian_2d(0f64..t_max_h, 0f64..y_max)
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    let black = RGBColor(0, 0, 0);
    let grey = RGBColor(225, 225, 225);
    for k in 0..=5 {
        let y = y_max * k as f64 / 5.0;
        chart
            .draw_series(LineSeries::new([(0.0, y), (t_max_h, y)], &grey))
            .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        let (px, py) = chart.backend_coord(&(0.0, y));
        let label = short(y);
        text(
            root,
            px - 8 * label.len() as i32 - 6,
            py - 4,
            &label,
            1,
            &black,
        );
        let x = t_max_h * k as f64 / 5.0;
        let (px, py) = chart.backend_coord(&(x, 0.0));
        let label = format!("{x:.1}h");
        text(root, px - 4 * label.len() as i32, py + 6, &label, 1, &black);
    }
    chart
        .draw_series(LineSeries::new([(0.0, 0.0), (0.0, y_max)], &black))
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    chart
        .draw_series(LineSeries::new([(0.0, 0.0), (t_max_h, 0.0)], &black))
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    for (_, color, points) in series {
        chart
            .draw_series(LineSeries::new(points.iter().copied(), color))
            .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    }
    // Title and legend along the top.
    let (x0, y0) = chart.backend_coord(&(0.0, y_max));
    text(root, x0, y0 - 22, title, 2, &black);
    let mut lx = x0 + 16 * title.len() as i32 + 30;
    for (name, color, _) in series {
        root.draw(&Rectangle::new(
            [(lx, y0 - 20), (lx + 18, y0 - 8)],
            color.filled(),
        ))
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        text(root, lx + 24, y0 - 18, name, 1, &black);
        lx += 24 + 8 * name.len() as i32 + 24;
    }
    Ok(())
}

/// Write the plot for `results` (all run on the same trace) to `path`.
pub fn write(path: &Path, trace_name: &str, results: &[SimResult]) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE)
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    let header = format!("aifab simulate: {trace_name}");
    text(&root, 10, 8, &header, 2, &RGBColor(0, 0, 0));
    let body = root.margin(30, 0, 0, 0);
    let panels = body.split_evenly((3, 1));
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
    panel(
        &root,
        &panels[0],
        "arrivals/s",
        t_max_h,
        &[("arrivals", COLORS[0], arrivals)],
    )?;
    let replicas: Vec<(&str, RGBColor, Vec<(f64, f64)>)> = results
        .iter()
        .enumerate()
        .map(|(i, r)| {
            (
                r.name.as_str(),
                COLORS[(i + 1) % COLORS.len()],
                r.samples
                    .iter()
                    .map(|s| (h(s.t_s), s.replicas as f64))
                    .collect(),
            )
        })
        .collect();
    panel(&root, &panels[1], "replicas", t_max_h, &replicas)?;
    let lag: Vec<(&str, RGBColor, Vec<(f64, f64)>)> = results
        .iter()
        .enumerate()
        .map(|(i, r)| {
            (
                r.name.as_str(),
                COLORS[(i + 1) % COLORS.len()],
                r.samples.iter().map(|s| (h(s.t_s), s.lag as f64)).collect(),
            )
        })
        .collect();
    panel(&root, &panels[2], "lag (records)", t_max_h, &lag)?;
    root.present()
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}
