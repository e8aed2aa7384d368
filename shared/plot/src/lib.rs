//! PNG line charts for aifab's tools (the load generator's `--plot`, `aifab simulate`): a
//! white canvas with a header, split into panels stacked top to bottom; each panel a
//! title and colour key in the row above a line chart.
//!
//! Drawn with plotters' bitmap backend; plotters draws the text itself (ab_glyph) from
//! DejaVu Sans embedded in the binary, so no system font (fontconfig, freetype) is needed.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

/// A canvas or one of its panels.
pub type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Line colours: grey (references: offered, targets), orange, blue, green.
pub const PALETTE: [RGBColor; 4] = [
    RGBColor(120, 120, 120),
    RGBColor(220, 80, 40),
    RGBColor(30, 110, 200),
    RGBColor(40, 160, 60),
];
const GRID: RGBColor = RGBColor(225, 225, 225);
/// The family every text style below names; registered from the embedded font.
const FONT: &str = "sans-serif";
/// Height of the canvas's header row, pixels; the panels share what is below it.
const HEADER_ROW: u32 = 34;
/// Pixel size of a panel's title; its colour key is drawn to fit beside it.
const TITLE_SIZE: u32 = 20;

/// One line of a panel.
pub struct Series<'s> {
    pub name: &'s str,
    pub color: RGBColor,
    pub points: Vec<(f64, f64)>,
}

/// How a panel is laid out and drawn.
#[derive(Debug, Clone, Copy)]
pub struct PanelStyle {
    /// Pixels above the chart, for the title and key (centred in them).
    pub title_row: u32,
    /// Pixels left of the chart, for the y tick labels.
    pub y_label_width: u32,
    /// Width of the lines, pixels.
    pub line_width: u32,
    /// A series with fewer points than this gets a dot on each, so a short one (a
    /// saturation search's few steps) shows where its points are; 0: never.
    pub dots_below: usize,
}

impl PanelStyle {
    /// For a few hundred points at most (a run's seconds, a saturation search's steps):
    /// lines two pixels wide, and dots on a series of under 20 points.
    pub const SPARSE: PanelStyle = PanelStyle {
        title_row: 36,
        y_label_width: 64,
        line_width: 2,
        dots_below: 20,
    };
    /// For thousands of points (a simulated day, one per lag reading): one-pixel lines, no
    /// dots, which would merge.
    pub const DENSE: PanelStyle = PanelStyle {
        title_row: 32,
        y_label_width: 56,
        line_width: 1,
        dots_below: 0,
    };
}

/// A panel's axes: both start at 0; the y axis ends a little above the highest point.
pub struct Axes<'f> {
    pub x_max: f64,
    pub x_label: &'f dyn Fn(&f64) -> String,
    pub y_label: &'f dyn Fn(&f64) -> String,
}

/// A white canvas with a header along the top, split into panels one above the other;
/// [`Canvas::save`] writes it.
pub struct Canvas<'a> {
    root: Area<'a>,
    path: &'a Path,
    pub panels: Vec<Area<'a>>,
}

impl<'a> Canvas<'a> {
    pub fn new(
        path: &'a Path,
        size: (u32, u32),
        header: &str,
        panels: usize,
    ) -> anyhow::Result<Self> {
        register_font()?;
        let root = BitMapBackend::new(path, size).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let header_style = TextStyle::from((FONT, 22)).color(&BLACK);
        root.draw(&Text::new(header, (10, 8), header_style))
            .map_err(plot_err)?;
        let panels = root.margin(HEADER_ROW, 0, 0, 0).split_evenly((panels, 1));
        Ok(Canvas { root, path, panels })
    }

    /// Write the PNG.
    pub fn save(self) -> anyhow::Result<()> {
        self.root
            .present()
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", self.path.display()))
    }
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

/// Top of an axis: a little above the highest value, 1 when there is none.
pub fn axis_top(values: impl Iterator<Item = f64>) -> f64 {
    let max = values.fold(0.0, f64::max);
    if max > 0.0 {
        max * 1.05
    } else {
        1.0
    }
}

/// One panel: a title and key, axes with labelled ticks and one line per series.
pub fn panel(
    area: &Area,
    title: &str,
    axes: &Axes,
    style: PanelStyle,
    series: &[Series],
) -> anyhow::Result<()> {
    let y_max = axis_top(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
    let mut chart = ChartBuilder::on(area)
        .margin(8)
        .margin_top(style.title_row)
        // Room for the last x label, centred on the right edge.
        .margin_right(28)
        .x_label_area_size(24)
        .y_label_area_size(style.y_label_width)
        .build_cartesian_2d(0f64..axes.x_max, 0f64..y_max)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .bold_line_style(GRID)
        .light_line_style(TRANSPARENT)
        .x_labels(6)
        .y_labels(6)
        .x_label_formatter(axes.x_label)
        .y_label_formatter(axes.y_label)
        .label_style((FONT, 13))
        .draw()
        .map_err(plot_err)?;
    for s in series {
        let color = s.color;
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(style.line_width),
            ))
            .map_err(plot_err)?;
        if s.points.len() < style.dots_below {
            chart
                .draw_series(s.points.iter().map(|q| Circle::new(*q, 4, color.filled())))
                .map_err(plot_err)?;
        }
    }
    let left = chart.backend_coord(&(0.0, y_max)).0;
    title_and_key(area, left, title_top(style.title_row), title, series)
}

/// Where a title of [`TITLE_SIZE`] pixels starts so that it is centred in `title_row`.
fn title_top(title_row: u32) -> i32 {
    (title_row.saturating_sub(TITLE_SIZE) / 2) as i32
}

/// The panel's title and then a colour key per series, in the row above the chart at
/// `top`, from the chart's left edge `x` (backend pixels): a legend inside the chart would
/// hide lines.
fn title_and_key(
    area: &Area,
    x: i32,
    top: i32,
    title: &str,
    series: &[Series],
) -> anyhow::Result<()> {
    let title_style = TextStyle::from((FONT, TITLE_SIZE)).color(&BLACK);
    let key_style = TextStyle::from((FONT, 14)).color(&BLACK);
    let x = x - area.get_base_pixel().0;
    area.draw(&Text::new(title, (x, top), title_style.clone()))
        .map_err(plot_err)?;
    let (w, _) = area
        .estimate_text_size(title, &title_style)
        .map_err(plot_err)?;
    let mut lx = x + w as i32 + 30;
    for s in series {
        let swatch = [(lx, top + 3), (lx + 18, top + 15)];
        area.draw(&Rectangle::new(swatch, s.color.filled()))
            .map_err(plot_err)?;
        area.draw(&Text::new(s.name, (lx + 24, top + 2), key_style.clone()))
            .map_err(plot_err)?;
        let (w, _) = area
            .estimate_text_size(s.name, &key_style)
            .map_err(plot_err)?;
        lx += 24 + w as i32 + 24;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png_without_system_fonts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chart.png");
        let canvas = Canvas::new(&path, (600, 400), "test", 2).unwrap();
        let label = |v: &f64| format!("{v:.0}");
        let axes = Axes {
            x_max: 10.0,
            x_label: &label,
            y_label: &label,
        };
        let series = [Series {
            name: "line",
            color: PALETTE[1],
            points: vec![(0.0, 1.0), (10.0, 3.0)],
        }];
        panel(
            &canvas.panels[0],
            "sparse",
            &axes,
            PanelStyle::SPARSE,
            &series,
        )
        .unwrap();
        panel(&canvas.panels[1], "dense", &axes, PanelStyle::DENSE, &[]).unwrap();
        canvas.save().unwrap();
        assert!(std::fs::read(&path).unwrap().starts_with(b"\x89PNG"));
    }

    #[test]
    fn axes_end_a_little_above_the_highest_value() {
        assert_eq!(axis_top([].into_iter()), 1.0);
        assert_eq!(axis_top([-3.0, 0.0].into_iter()), 1.0);
        assert!((axis_top([10.0, 20.0].into_iter()) - 21.0).abs() < 1e-9);
    }

    #[test]
    fn titles_are_centred_in_their_row() {
        assert_eq!([title_top(36), title_top(32), title_top(10)], [8, 6, 0]);
    }
}
