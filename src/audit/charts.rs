//! The audit's PNG charts, drawn with plotters into bitmaps. Text comes from DejaVu Sans,
//! embedded in the binary (assets/fonts/, licence beside it), so nothing depends on the fonts a
//! machine has installed.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::FontStyle;

use super::Finished;
use crate::error::{Error, Result};

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

const SIZE: (u32, u32) = (900, 600);
const BAR: RGBColor = RGBColor(58, 110, 165);
const FONT_NAME: &str = "sans-serif";

/// The chart files, in the order the report shows them.
pub const FILES: [&str; 3] = ["tau_histogram.png", "topk_overlap.png", "rank_scatter.png"];

fn register_font() -> Result<()> {
    plotters::style::register_font(FONT_NAME, FontStyle::Normal, FONT)
        .map_err(|_| Error::Internal("the embedded chart font does not load".into()))
}

fn failed(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::input(format!("{}: could not draw the chart: {e}", path.display()))
}

/// The last part of a model path, for chart subtitles.
fn short_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string())
}

/// Counts per bin: `bins` equal bins over [lo, hi], the last one closed.
pub fn histogram(values: &[f64], lo: f64, hi: f64, bins: usize) -> Vec<u64> {
    let mut counts = vec![0u64; bins];
    let width = (hi - lo) / bins as f64;
    for &v in values {
        if !(lo..=hi).contains(&v) {
            continue;
        }
        let i = (((v - lo) / width).floor() as usize).min(bins - 1);
        counts[i] += 1;
    }
    counts
}

/// A bar chart: `bars` are (left, right, count) over the x range.
fn bar_chart(
    path: &Path,
    title: &str,
    subtitle: &str,
    x_desc: &str,
    x_range: (f64, f64),
    x_labels: (usize, &dyn Fn(&f64) -> String),
    bars: &[(f64, f64, u64)],
) -> Result<()> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| failed(path, e))?;
    let area = root
        .titled(title, (FONT_NAME, 24))
        .map_err(|e| failed(path, e))?;
    let area = area
        .titled(subtitle, (FONT_NAME, 15))
        .map_err(|e| failed(path, e))?;
    // Whole-number counts on the y axis: an integer range gives integer ticks.
    let most = bars.iter().map(|b| b.2).max().unwrap_or(0).max(1);
    let top = most + most.div_ceil(12);
    let mut chart = ChartBuilder::on(&area)
        .margin(18)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x_range.0..x_range.1, 0u64..top)
        .map_err(|e| failed(path, e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(RGBColor(238, 238, 238))
        .x_desc(x_desc)
        .x_labels(x_labels.0)
        .x_label_formatter(x_labels.1)
        .y_desc("queries")
        .y_labels((top as usize + 1).min(11))
        .label_style((FONT_NAME, 14))
        .axis_desc_style((FONT_NAME, 16))
        .draw()
        .map_err(|e| failed(path, e))?;
    chart
        .draw_series(bars.iter().filter(|b| b.2 > 0).map(|&(l, r, c)| {
            let pad = (r - l) * 0.06;
            Rectangle::new([(l + pad, 0), (r - pad, c)], BAR.filled())
        }))
        .map_err(|e| failed(path, e))?;
    root.present().map_err(|e| failed(path, e))
}

/// The rank grid as a scatter: a dot per (rank under A, rank under B) cell, its area
/// proportional to the documents in it; the diagonal is "did not move".
fn rank_scatter(path: &Path, subtitle: &str, cap: usize, grid: &[u64], capped: bool) -> Result<()> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| failed(path, e))?;
    let area = root
        .titled("Rank under model A vs rank under model B", (FONT_NAME, 24))
        .map_err(|e| failed(path, e))?;
    let area = area
        .titled(subtitle, (FONT_NAME, 15))
        .map_err(|e| failed(path, e))?;
    let hi = cap as f64 + 0.5;
    let mut chart = ChartBuilder::on(&area)
        .margin(18)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0.5f64..hi, 0.5f64..hi)
        .map_err(|e| failed(path, e))?;
    let suffix = if capped {
        format!(" (ranks past {cap} at {cap})")
    } else {
        String::new()
    };
    chart
        .configure_mesh()
        .light_line_style(RGBColor(238, 238, 238))
        .x_desc(format!("rank under A{suffix}"))
        .y_desc("rank under B")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style((FONT_NAME, 14))
        .axis_desc_style((FONT_NAME, 16))
        .draw()
        .map_err(|e| failed(path, e))?;
    chart
        .draw_series(LineSeries::new(
            [(0.5, 0.5), (hi, hi)],
            RGBColor(200, 200, 200).stroke_width(2),
        ))
        .map_err(|e| failed(path, e))?;
    let most = grid.iter().copied().max().unwrap_or(0).max(1) as f64;
    let max_r = (420.0 / cap as f64).clamp(3.0, 14.0);
    let dots = (0..cap * cap).filter(|&i| grid[i] > 0).map(|i| {
        let (a, b) = (i / cap + 1, i % cap + 1);
        let r = (max_r * (grid[i] as f64 / most).sqrt()).max(2.0);
        let color = if a == b { RGBColor(120, 120, 120) } else { BAR };
        Circle::new((a as f64, b as f64), r as i32, color.mix(0.75).filled())
    });
    chart.draw_series(dots).map_err(|e| failed(path, e))?;
    root.present().map_err(|e| failed(path, e))
}

/// Draws every chart into `out`; returns the file names written.
pub fn draw_all(out: &Path, f: &Finished) -> Result<Vec<String>> {
    register_font()?;
    let t = &f.totals;
    let subtitle = format!(
        "A: {}   B: {}   (queries compared: {})",
        short_name(&f.models[0].path),
        short_name(&f.models[1].path),
        t.tau.len()
    );

    let bins = 20;
    let counts = histogram(&t.tau, -1.0, 1.0, bins);
    let w = 2.0 / bins as f64;
    let bars: Vec<(f64, f64, u64)> = counts
        .iter()
        .enumerate()
        .map(|(i, &c)| (-1.0 + i as f64 * w, -1.0 + (i + 1) as f64 * w, c))
        .collect();
    bar_chart(
        &out.join(FILES[0]),
        "Kendall's tau-b per query",
        &subtitle,
        "tau-b (1 = same order, -1 = reversed)",
        (-1.0, 1.0),
        (11, &|x: &f64| format!("{x:.1}")),
        &bars,
    )?;

    // One bar per possible overlap j/k, at x = j; a query shorter than k rounds to the
    // nearest.
    let k = f.options.top_k;
    let mut counts = vec![0u64; k + 1];
    for &x in &t.overlap {
        counts[((x * k as f64).round() as usize).min(k)] += 1;
    }
    let bars: Vec<(f64, f64, u64)> = counts
        .iter()
        .enumerate()
        .map(|(j, &c)| (j as f64 - 0.5, j as f64 + 0.5, c))
        .collect();
    let of_k = |x: &f64| {
        if (x - x.round()).abs() < 1e-9 && *x >= 0.0 {
            format!("{}/{k}", x.round() as usize)
        } else {
            String::new()
        }
    };
    bar_chart(
        &out.join(FILES[1]),
        &format!("Top-{k} overlap per query"),
        &subtitle,
        &format!("documents of A's top {k} also in B's top {k}"),
        (-0.5, k as f64 + 0.5),
        ((k + 1).min(11), &of_k),
        &bars,
    )?;

    let capped = f.max_docs > t.grid_cap;
    rank_scatter(&out.join(FILES[2]), &subtitle, t.grid_cap, &t.grid, capped)?;
    Ok(FILES.iter().map(|s| s.to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_bins_close_the_last() {
        let c = histogram(&[-1.0, -0.95, 0.0, 0.3, 0.99, 1.0, 2.0], -1.0, 1.0, 20);
        assert_eq!(c.iter().sum::<u64>(), 6, "2.0 is outside");
        assert_eq!(c[0], 2);
        assert_eq!(c[10], 1);
        assert_eq!(c[13], 1);
        assert_eq!(c[19], 2);
    }
}
