//! Loss curves as SVG line charts (plotters' SVG backend, no system fonts
//! needed): `optc run --plot` draws one rule's curve, the search's `plot`
//! command a candidate against its baselines.

use plotters::prelude::*;

/// Series colours, in order.
const COLOURS: [RGBColor; 5] = [BLUE, RED, BLACK, GREEN, MAGENTA];

/// Draws each `(label, losses)` series (loss before each step, then after
/// the last) into `path`: log-scale loss when every finite loss is
/// positive, linear otherwise. Non-finite losses are left out.
pub fn loss_curves(title: &str, series: &[(String, Vec<f64>)], path: &str) -> Result<(), String> {
    let points: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|(_, losses)| {
            losses
                .iter()
                .enumerate()
                .filter(|(_, l)| l.is_finite())
                .map(|(s, &l)| (s as f64, l))
                .collect()
        })
        .collect();
    let all = points.iter().flatten();
    let (low, high) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &(_, l)| {
        (lo.min(l), hi.max(l))
    });
    if low > high {
        return Err(format!("error: no finite loss to plot in {path}"));
    }
    let steps = series
        .iter()
        .map(|(_, losses)| losses.len().max(2) - 1)
        .max()
        .unwrap_or(1) as f64;
    let failed = |e: &dyn std::fmt::Display| format!("error: cannot write the plot {path}: {e}");
    // Drawn into memory, then written atomically: a failed write leaves an
    // earlier plot of that name intact.
    let mut svg = String::new();
    let root = SVGBackend::with_string(&mut svg, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| failed(&e))?;
    let mut chart = ChartBuilder::on(&root);
    chart
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80);
    let labelled = series.len() > 1;
    macro_rules! draw {
        ($chart:expr, $y_desc:expr) => {{
            let mut chart = $chart.map_err(|e| failed(&e))?;
            chart
                .configure_mesh()
                .x_desc("step")
                .y_desc($y_desc)
                .draw()
                .map_err(|e| failed(&e))?;
            for (index, ((label, _), points)) in series.iter().zip(&points).enumerate() {
                let colour = COLOURS[index % COLOURS.len()];
                let drawn = chart
                    .draw_series(LineSeries::new(
                        points.iter().copied(),
                        ShapeStyle::from(&colour).stroke_width(2),
                    ))
                    .map_err(|e| failed(&e))?;
                if labelled {
                    drawn
                        .label(label.as_str())
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
                }
            }
            if labelled {
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .draw()
                    .map_err(|e| failed(&e))?;
            }
        }};
    }
    if low > 0.0 {
        // Pad the range a little so a flat curve still has a height.
        draw!(
            chart.build_cartesian_2d(0.0..steps, (low / 1.5..high * 1.5).log_scale()),
            "loss (log scale)"
        );
    } else {
        let pad = ((high - low) * 0.05).max(1e-12);
        draw!(
            chart.build_cartesian_2d(0.0..steps, low - pad..high + pad),
            "loss"
        );
    }
    root.present().map_err(|e| failed(&e))?;
    drop(chart);
    drop(root);
    optc_runtime::files::write_atomically(std::path::Path::new(path), svg.as_bytes())
        .map_err(|e| failed(&e))
}
