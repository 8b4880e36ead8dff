//! Server-rendered SVG charts with plotters' SVG backend: presentation attributes only
//! (no script, no `style` attribute), so they sit inline in a page under the unchanged
//! CSP. Axis labels are the page's HTML, not the chart's (no font needed).

use plotters::prelude::*;

const BLUE: RGBColor = RGBColor(29, 79, 145);
const RED: RGBColor = RGBColor(164, 14, 38);
const GREY: RGBColor = RGBColor(110, 110, 110);

/// Stacked bars, one per slot (a day): each slot's values bottom to top in `colors`.
fn stacked(slots: &[Vec<i64>], colors: &[RGBColor], size: (u32, u32)) -> Option<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).ok()?;
        let n = i32::try_from(slots.len()).ok()?.max(1);
        let max = slots
            .iter()
            .map(|v| v.iter().sum::<i64>())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut chart = ChartBuilder::on(&root)
            .margin(4)
            .build_cartesian_2d(0i32..n, 0i64..max)
            .ok()?;
        for (layer, color) in colors.iter().enumerate() {
            let bars = slots.iter().enumerate().filter_map(|(i, v)| {
                let value = *v.get(layer)?;
                let below: i64 = v.iter().take(layer).sum();
                let x = i32::try_from(i).ok()?;
                (value > 0)
                    .then(|| Rectangle::new([(x, below), (x + 1, below + value)], color.filled()))
            });
            chart.draw_series(bars).ok()?;
        }
        root.present().ok()?;
    }
    Some(svg)
}

/// Stacked bars, one per day: permitted accesses (blue) under denials (red). `None` when
/// the chart could not be drawn (the page then shows the numbers only).
pub fn per_day_by_outcome(days: &[(i64, i64)]) -> Option<String> {
    let slots: Vec<Vec<i64>> = days.iter().map(|(p, d)| vec![*p, *d]).collect();
    stacked(&slots, &[BLUE, RED], (720, 140))
}

/// The whole trail's accesses per day: permitted (blue), denied (red), failed (grey).
pub fn trail_per_day(days: &[(i64, i64, i64)]) -> Option<String> {
    let slots: Vec<Vec<i64>> = days.iter().map(|(p, d, e)| vec![*p, *d, *e]).collect();
    stacked(&slots, &[BLUE, RED, GREY], (720, 160))
}

/// Denials per day (red).
pub fn denials_per_day(days: &[i64]) -> Option<String> {
    let slots: Vec<Vec<i64>> = days.iter().map(|d| vec![*d]).collect();
    stacked(&slots, &[RED], (720, 120))
}

/// One patient's accesses per day over the report period (blue).
pub fn timeline(days: &[i64]) -> Option<String> {
    let slots: Vec<Vec<i64>> = days.iter().map(|d| vec![*d]).collect();
    stacked(&slots, &[BLUE], (720, 100))
}

/// Horizontal bars, longest first: how many distinct patients each person (listed
/// beside the chart, in the same order) accessed.
pub fn top_people(counts: &[i64]) -> Option<String> {
    let mut svg = String::new();
    {
        let rows = i32::try_from(counts.len()).ok()?.max(1);
        let height = u32::try_from(rows)
            .ok()?
            .saturating_mul(22)
            .saturating_add(8);
        let root = SVGBackend::with_string(&mut svg, (480, height)).into_drawing_area();
        root.fill(&WHITE).ok()?;
        let max = counts.iter().copied().max().unwrap_or(0).max(1);
        let mut chart = ChartBuilder::on(&root)
            .margin(4)
            .build_cartesian_2d(0i64..max, 0i32..rows)
            .ok()?;
        let bars = counts.iter().enumerate().filter_map(|(i, n)| {
            // The first person at the top.
            let y = rows - 1 - i32::try_from(i).ok()?;
            (*n > 0).then(|| Rectangle::new([(0, y), (*n, y + 1)], BLUE.filled()))
        });
        chart.draw_series(bars).ok()?;
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

    #[test]
    fn each_chart_renders_plain_svg() {
        let charts = [
            trail_per_day(&[(3, 1, 0), (0, 0, 0), (2, 0, 1)]),
            denials_per_day(&[0, 2, 1]),
            timeline(&[1, 0, 0, 4]),
            top_people(&[5, 3, 1]),
        ];
        // The white background plus one bar per non-zero value.
        for (svg, bars) in charts.into_iter().zip([4, 2, 2, 3]) {
            let svg = svg.unwrap();
            assert!(svg.starts_with("<svg"), "{svg}");
            assert!(!svg.contains("<script") && !svg.contains("style="), "{svg}");
            assert_eq!(svg.matches("<rect").count(), 1 + bars, "{svg}");
        }
        // Nothing to show still draws (an empty frame).
        assert!(top_people(&[]).unwrap().starts_with("<svg"));
    }
}
