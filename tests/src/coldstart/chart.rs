//! The PNG bar chart of a run: one group per workload and mode, one bar per variant (median),
//! whiskers from min to max, and the practical floor as a black line over the cold groups.
//!
//! Drawn with plotters' bitmap backend; text is rendered with ab_glyph from DejaVu Sans
//! (Debian's fonts-dejavu-core, installed by .ci/run), so no fontconfig or system font lookup.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;

use super::report::{axes, cell};
use super::{Mode, Report, Variant};

/// Where the font is read from.
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn color(v: Variant) -> RGBColor {
    match v {
        Variant::Full => RGBColor(140, 140, 140),
        Variant::Lazy => RGBColor(120, 170, 230),
        Variant::Optimized => RGBColor(20, 80, 170),
        Variant::Soci => RGBColor(235, 140, 40),
    }
}

fn register_font() -> Result<()> {
    static ONCE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let bytes =
            std::fs::read(FONT).map_err(|e| format!("reading {FONT} (apt-get install fonts-dejavu-core): {e}"))?;
        // Registered fonts live for the whole process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{FONT} is not a usable font"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// Draws the chart of `report` as a PNG at `path`.
pub fn write_png(report: &Report, path: &Path) -> Result<()> {
    register_font()?;
    draw(report, path).map_err(|e| anyhow!("drawing {}: {e}", path.display()))?;
    std::fs::metadata(path).with_context(|| format!("{} was not written", path.display()))?;
    Ok(())
}

fn draw(report: &Report, path: &Path) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let (workloads, variants, modes) = axes(&report.samples);
    let groups: Vec<(String, Mode)> =
        workloads.iter().flat_map(|w| modes.iter().map(move |&m| (w.clone(), m))).collect();
    let ymax = report.samples.iter().map(|s| s.seconds).fold(1.0f64, f64::max) * 1.18;
    let root = BitMapBackend::new(path, (1400, 760)).into_drawing_area();
    root.fill(&WHITE)?;
    let caption = format!("Container start: pull + run to first output line or HTTP 200 ({})", report.shape);
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 26))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..(groups.len() as f64 - 0.5), 0f64..ymax)?;
    let names: Vec<String> = groups.iter().map(|(w, m)| format!("{w} {}", m.name())).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE)
        .x_labels(groups.len().max(2))
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("seconds (median; whiskers: min-max)")
        .label_style(("sans-serif", 18))
        .axis_desc_style(("sans-serif", 18))
        .draw()?;

    let width = 0.84 / variants.len() as f64;
    for (j, &v) in variants.iter().enumerate() {
        let mut bars = Vec::new();
        let mut whiskers = Vec::new();
        let mut labels = Vec::new();
        for (i, (w, m)) in groups.iter().enumerate() {
            let Some(c) = cell(&report.samples, w, v, *m) else { continue };
            let x0 = i as f64 - 0.42 + j as f64 * width;
            let (x1, xc) = (x0 + width * 0.9, x0 + width * 0.45);
            bars.push(Rectangle::new([(x0, 0.0), (x1, c.median)], color(v).filled()));
            whiskers.push(PathElement::new(vec![(xc, c.min), (xc, c.max)], BLACK.stroke_width(1)));
            let style = TextStyle::from(("sans-serif", 15).into_font()).pos(plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Center,
                plotters::style::text_anchor::VPos::Bottom,
            ));
            labels.push(Text::new(format!("{:.1}", c.median), (xc, c.max + ymax * 0.005), style));
        }
        chart
            .draw_series(bars)?
            .label(v.label())
            .legend(move |(x, y)| Rectangle::new([(x, y - 7), (x + 14, y + 7)], color(v).filled()));
        chart.draw_series(whiskers)?;
        chart.draw_series(labels.into_iter().map(|t| t.into_dyn()))?;
    }
    let mut floor_drawn = false;
    for f in &report.floors {
        let Some(i) = groups.iter().position(|(w, m)| *w == f.workload && *m == Mode::Cold) else { continue };
        let y = f.practical_seconds.unwrap_or(f.transfer_seconds);
        let series = chart.draw_series(std::iter::once(PathElement::new(
            vec![(i as f64 - 0.46, y), (i as f64 + 0.46, y)],
            BLACK.stroke_width(3),
        )))?;
        if !floor_drawn {
            let label = if f.practical_seconds.is_some() {
                "floor (bytes read / rate + RTTs + warm full start)"
            } else {
                "transfer floor (bytes read / rate + RTTs)"
            };
            series.label(label).legend(|(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], BLACK.stroke_width(3)));
            floor_drawn = true;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 17))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
