//! Server-rendered SVG charts with plotters' SVG backend: presentation attributes only
//! (no script, no `style` attribute), so they sit inline in a page under the unchanged
//! CSP. Axis labels are the page's HTML, not the chart's (no font needed).

use plotters::prelude::*;

/// Stacked bars, one per day: permitted accesses (blue) under denials (red). `None` when
/// the chart could not be drawn (the page then shows the numbers only).
pub fn per_day_by_outcome(days: &[(i64, i64)]) -> Option<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 140)).into_drawing_area();
        root.fill(&WHITE).ok()?;
        let n = i32::try_from(days.len()).ok()?.max(1);
        let max = days.iter().map(|(p, d)| p + d).max().unwrap_or(0).max(1);
        let mut chart = ChartBuilder::on(&root)
            .margin(4)
            .build_cartesian_2d(0i32..n, 0i64..max)
            .ok()?;
        let blue = RGBColor(29, 79, 145);
        let red = RGBColor(164, 14, 38);
        let bar = |i: usize, lo: i64, hi: i64, color: RGBColor| {
            let x = i32::try_from(i).unwrap_or(0);
            Rectangle::new([(x, lo), (x + 1, hi)], color.filled())
        };
        chart
            .draw_series(
                days.iter()
                    .enumerate()
                    .filter(|(_, (p, _))| *p > 0)
                    .map(|(i, (p, _))| bar(i, 0, *p, blue)),
            )
            .ok()?;
        chart
            .draw_series(
                days.iter()
                    .enumerate()
                    .filter(|(_, (_, d))| *d > 0)
                    .map(|(i, (p, d))| bar(i, *p, p + d, red)),
            )
            .ok()?;
        root.present().ok()?;
    }
    Some(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_is_plain_svg_with_one_bar_per_nonzero_count() {
        let svg = per_day_by_outcome(&[(3, 0), (0, 0), (2, 1)]).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(!svg.contains("<script") && !svg.contains("style="), "{svg}");
        // The white background plus three bars.
        assert_eq!(svg.matches("<rect").count(), 4, "{svg}");
    }
}
