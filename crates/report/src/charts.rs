//! Inline SVG charts drawn with `plotters` (SVG backend only, no font files:
//! text is emitted as SVG `<text>` and rendered by the browser's own sans-serif).

use crate::ReportError;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

/// Chart size in pixels.
pub const SIZE: (u32, u32) = (560, 300);

/// Colours in series order (colour-blind-safe Okabe–Ito, then greys).
pub const COLORS: [RGBColor; 10] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(213, 94, 0),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(240, 228, 66),
    RGBColor(0, 0, 0),
    RGBColor(120, 120, 120),
    RGBColor(190, 190, 190),
];

fn err<E: std::fmt::Display>(title: &str) -> impl Fn(E) -> ReportError + '_ {
    move |e| ReportError::Chart(format!("{title:?}: {e}"))
}

fn range(values: impl Iterator<Item = f64>, zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if zero {
        lo = lo.min(0.0);
        hi = hi.max(0.0);
    }
    let pad = if hi > lo { 0.05 * (hi - lo) } else { 1.0 };
    (if zero && lo == 0.0 { 0.0 } else { lo - pad }, if zero && hi == 0.0 { 0.0 } else { hi + pad })
}

/// One line series.
pub struct Series {
    /// Legend name.
    pub name: String,
    /// Points.
    pub points: Vec<(f64, f64)>,
}

/// A line chart.
pub fn lines(title: &str, x_desc: &str, y_desc: &str, series: &[Series]) -> Result<String, ReportError> {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err(title))?;
        let (x0, x1) = range(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)), false);
        let (y0, y1) = range(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)), false);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(err(title))?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_labels(6)
            .y_labels(6)
            .light_line_style(WHITE)
            .draw()
            .map_err(err(title))?;
        for (k, s) in series.iter().enumerate() {
            let c = COLORS[k % COLORS.len()];
            let pts: Vec<(f64, f64)> =
                s.points.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
            chart
                .draw_series(LineSeries::new(pts, c.stroke_width(2)))
                .map_err(err(title))?
                .label(s.name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
        }
        if series.len() > 1 {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(err(title))?;
        }
        root.present().map_err(err(title))?;
    }
    Ok(buf)
}

/// One bar: label, value and an optional interval.
pub struct Bar {
    /// Label under the bar.
    pub label: String,
    /// Height.
    pub value: f64,
    /// Whisker, if any.
    pub ci: Option<[f64; 2]>,
}

/// A bar chart with optional whiskers.
pub fn bars(title: &str, y_desc: &str, bars: &[Bar]) -> Result<String, ReportError> {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err(title))?;
        let n = bars.len().max(2) as i32 - 1;
        let (y0, y1) = range(
            bars.iter().flat_map(|b| [b.value, b.ci.map_or(b.value, |c| c[0]), b.ci.map_or(b.value, |c| c[1])]),
            true,
        );
        let labels: Vec<String> = bars.iter().map(|b| b.label.clone()).collect();
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(56)
            .build_cartesian_2d((0..n).into_segmented(), y0..y1)
            .map_err(err(title))?;
        let fmt = |v: &SegmentValue<i32>| match v {
            SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(bars.len() + 1)
            .x_label_formatter(&fmt)
            .y_desc(y_desc)
            .y_labels(6)
            .light_line_style(WHITE)
            .draw()
            .map_err(err(title))?;
        chart
            .draw_series(bars.iter().enumerate().map(|(i, b)| {
                let i = i as i32;
                let v = if b.value.is_finite() { b.value } else { 0.0 };
                let mut r = Rectangle::new(
                    [(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), v)],
                    COLORS[i as usize % COLORS.len()].filled(),
                );
                r.set_margin(0, 0, 12, 12);
                r
            }))
            .map_err(err(title))?;
        chart
            .draw_series(bars.iter().enumerate().filter_map(|(i, b)| {
                let c = b.ci?;
                (c[0].is_finite() && c[1].is_finite()).then(|| {
                    PathElement::new(
                        vec![(SegmentValue::CenterOf(i as i32), c[0]), (SegmentValue::CenterOf(i as i32), c[1])],
                        BLACK.stroke_width(2),
                    )
                })
            }))
            .map_err(err(title))?;
        root.present().map_err(err(title))?;
    }
    Ok(buf)
}

/// Stacked shares: one horizontal bar per category, one stacked segment per
/// series, in [`COLORS`] order (the page draws the legend beside it).
pub fn stacked(title: &str, categories: &[String], series: &[(String, Vec<f64>)]) -> Result<String, ReportError> {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err(title))?;
        let n = categories.len().max(2) as i32 - 1;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(130)
            .build_cartesian_2d(0.0..1.0f64, (0..n).into_segmented())
            .map_err(err(title))?;
        let fmt = |v: &SegmentValue<i32>| match v {
            SegmentValue::CenterOf(i) => categories.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(categories.len() + 1)
            .y_label_formatter(&fmt)
            .x_desc("share of decisions")
            .x_labels(6)
            .x_label_formatter(&|v| format!("{:.0}%", v * 100.0))
            .light_line_style(WHITE)
            .draw()
            .map_err(err(title))?;
        let mut base = vec![0.0f64; categories.len()];
        for (k, (_, shares)) in series.iter().enumerate() {
            let c = COLORS[k % COLORS.len()];
            let rects: Vec<Rectangle<(f64, SegmentValue<i32>)>> = shares
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let lo = base[i];
                    base[i] = (base[i] + s).min(1.0);
                    let mut r = Rectangle::new(
                        [(lo, SegmentValue::Exact(i as i32)), (base[i], SegmentValue::Exact(i as i32 + 1))],
                        c.filled(),
                    );
                    r.set_margin(3, 3, 0, 0);
                    r
                })
                .collect();
            chart.draw_series(rects).map_err(err(title))?;
        }
        root.present().map_err(err(title))?;
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_without_external_references() {
        let l = lines("t", "x", "y", &[Series { name: "a".into(), points: vec![(0.0, 1.0), (1.0, 2.0)] }]).unwrap();
        let b = bars("b", "y", &[Bar { label: "p".into(), value: 2.0, ci: Some([1.0, 3.0]) }]).unwrap();
        let s = stacked("s", &["k".into()], &[("noop".into(), vec![0.5]), ("restart".into(), vec![0.5])]).unwrap();
        for svg in [l, b, s] {
            assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
            assert!(!svg.contains("href"));
        }
    }
}
