//! `analyze --plot`: the energy curves of each model and a per-layer map of sign
//! conflicts, as SVG or PNG (plotters; text laid out in the embedded DejaVu Sans, so
//! no system font is needed).

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;
use reefknot_engine::Analysis;
use reefknot_ops::analysis::{PairStats, TensorStats, STEPS};

/// The picture's formats, by file extension.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Format {
    Svg,
    Png,
}

impl Format {
    /// The format `path` names by its extension, or why it names none.
    pub(crate) fn of(path: &Path) -> Result<Format, String> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("svg") => Ok(Format::Svg),
            Some("png") => Ok(Format::Png),
            _ => Err(format!(
                "--plot {}: the picture's name must end in .svg or .png",
                path.display()
            )),
        }
    }
}

const SIZE: (u32, u32) = (1280, 560);

/// A model's line colour: a qualitative palette, repeating after ten.
fn colour(i: usize) -> RGBColor {
    const PALETTE: [RGBColor; 10] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    PALETTE[i % PALETTE.len()]
}

type Failed = Box<dyn std::error::Error>;

/// Registers DejaVu Sans as the plots' font: text is laid out with it in both formats
/// (SVG measures it too), so no system font is needed.
fn embedded_font() -> Result<(), Failed> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| "the embedded font does not load".into())
}

/// Draws into `path` (an SVG or a PNG of `size`, by its extension) by calling
/// `$draw` with `$root`, the drawing area of the format's backend.
macro_rules! on_backend {
    ($path:expr, $size:expr, |$root:ident| $draw:expr) => {{
        embedded_font()?;
        match Format::of($path)? {
            Format::Svg => {
                let $root = SVGBackend::new($path, $size).into_drawing_area();
                $draw?;
                $root.present()?;
            }
            Format::Png => {
                let $root = BitMapBackend::new($path, $size).into_drawing_area();
                $draw?;
                $root.present()?;
            }
        }
        Ok(())
    }};
}

/// Draws `analysis` into `path`.
pub(crate) fn draw(path: &Path, analysis: &Analysis, keep: f64) -> Result<(), Failed> {
    on_backend!(path, SIZE, |root| figure(&root, analysis, keep))
}

fn figure<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    analysis: &Analysis,
    keep: f64,
) -> Result<(), Failed>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(SIZE.0 * 11 / 20);
    curves(&left, &analysis.whole(), keep)?;
    conflicts(&right, analysis)?;
    Ok(())
}

/// The share of each model's energy that trimming every tensor to a density keeps.
fn curves<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    whole: &TensorStats,
    keep: f64,
) -> Result<(), Failed>
where
    DB::ErrorType: 'static,
{
    let mut chart = ChartBuilder::on(area)
        .caption("Energy kept by trimming to a density", ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..1f64, 0f64..1f64)?;
    chart
        .configure_mesh()
        .x_desc("density (fraction of each tensor's entries kept)")
        .y_desc("share of ‖δ‖² kept")
        .label_style(("sans-serif", 14))
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, keep), (1.0, keep)],
            ShapeStyle::from(&BLACK.mix(0.4)).stroke_width(1),
        ))?
        .label(format!("{}% of the energy", keep * 100.0))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.4)));
    for (i, m) in whole.models.iter().enumerate() {
        if m.energy <= 0.0 {
            continue;
        }
        let points = std::iter::once((0.0, 0.0)).chain(
            m.curve
                .iter()
                .enumerate()
                .map(|(p, &e)| ((p + 1) as f64 / STEPS as f64, e / m.energy)),
        );
        let c = colour(i);
        chart
            .draw_series(LineSeries::new(
                points,
                ShapeStyle::from(&c).stroke_width(2),
            ))?
            .label(format!("model {i}"))
            .legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 20, y)], ShapeStyle::from(&c).stroke_width(2))
            });
        if !m.mixed_density {
            let share = m.kept_energy / m.energy;
            chart.draw_series(std::iter::once(Circle::new(
                (m.density, share),
                5,
                ShapeStyle::from(&c).filled(),
            )))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 14))
        .draw()?;
    Ok(())
}

/// Per layer and pair, the share of the entries both models keep whose signs differ.
fn conflicts<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    analysis: &Analysis,
) -> Result<(), Failed>
where
    DB::ErrorType: 'static,
{
    let layers = analysis.layers();
    let pairs: Vec<(usize, usize)> = analysis.whole().pairs.iter().map(|p| (p.a, p.b)).collect();
    let (map, bar) = area.split_horizontally(area.dim_in_pixel().0 - 90);
    let mut chart = ChartBuilder::on(&map)
        .caption(
            "Sign conflicts among the entries both keep",
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        // A segmented range `0..n` has the segments 0 to n: one per pair and layer.
        .build_cartesian_2d(
            (0..pairs.len().saturating_sub(1)).into_segmented(),
            (0..layers.len().saturating_sub(1)).into_segmented(),
        )?;
    let pair_names: Vec<String> = pairs.iter().map(|(a, b)| format!("{a}-{b}")).collect();
    let layer_names: Vec<String> = layers.iter().map(|(l, _)| l.to_string()).collect();
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("pair of models")
        .y_desc("layer")
        .x_labels(pairs.len().max(1))
        .y_labels(layers.len().clamp(1, 24))
        .x_label_formatter(&|x| label(x, &pair_names))
        .y_label_formatter(&|y| label(y, &layer_names))
        .label_style(("sans-serif", 14))
        .draw()?;
    // The colours span the values found, so that differences between layers show.
    let values: Vec<f64> = layers
        .iter()
        .flat_map(|(_, s)| s.pairs.iter().filter_map(PairStats::top_conflict))
        .collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if values.is_empty() {
        (0.0, 1.0)
    } else if hi - lo < 1e-3 {
        ((lo - 5e-4).max(0.0), (lo - 5e-4).max(0.0) + 1e-3)
    } else {
        (lo, hi)
    };
    let shade = move |v: f64| ViridisRGB::get_color(((v - lo) / (hi - lo)).clamp(0.0, 1.0));
    chart.draw_series(layers.iter().enumerate().flat_map(|(y, (_, s))| {
        s.pairs.iter().enumerate().map(move |(x, p)| {
            let colour = match p.top_conflict() {
                Some(v) => shade(v).filled(),
                None => WHITE.mix(0.0).filled(),
            };
            Rectangle::new(
                [
                    (SegmentValue::Exact(x), SegmentValue::Exact(y)),
                    (SegmentValue::Exact(x + 1), SegmentValue::Exact(y + 1)),
                ],
                colour,
            )
        })
    }))?;
    // The colour scale: the least conflict at the bottom, the most at the top.
    let mut scale = ChartBuilder::on(&bar)
        .margin_top(56)
        .margin_bottom(56)
        .margin_right(8)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..1f64, lo..hi)?;
    scale
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(5)
        .y_label_formatter(&|v| format!("{:.1}%", v * 100.0))
        .label_style(("sans-serif", 12))
        .draw()?;
    let steps = 64;
    scale.draw_series((0..steps).map(|k| {
        let at = |k: usize| lo + (hi - lo) * k as f64 / steps as f64;
        Rectangle::new(
            [(0.0, at(k)), (1.0, at(k + 1))],
            ViridisRGB::get_color(k as f64 / (steps - 1) as f64).filled(),
        )
    }))?;
    Ok(())
}

/// The name of the segment a tick stands in (ticks are drawn at segments' centres).
fn label(v: &SegmentValue<usize>, names: &[String]) -> String {
    match v {
        SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
        _ => String::new(),
    }
}

/// One scored point of a sweep: its values (in axis order) and score.
pub(crate) type Scored = (Vec<(String, f64)>, f64);

/// Draws a sweep's scores into `path`: the score against the first axis, one line per
/// combination of the other axes' values, the best point ringed.
pub(crate) fn draw_sweep(path: &Path, points: &[Scored], best: usize) -> Result<(), Failed> {
    on_backend!(path, (960, 600), |root| sweep_figure(&root, points, best))
}

fn sweep_figure<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    points: &[Scored],
    best: usize,
) -> Result<(), Failed>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let Some((first, _)) = points.first() else {
        return Ok(());
    };
    let axis = first
        .first()
        .map_or("value".to_string(), |(n, _)| n.clone());
    let range = |it: &mut dyn Iterator<Item = f64>| {
        let (lo, hi) = it.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
        let pad = if hi > lo {
            (hi - lo) * 0.08
        } else {
            lo.abs().max(1.0) * 0.1
        };
        (lo - pad)..(hi + pad)
    };
    let xs = range(
        &mut points
            .iter()
            .map(|(p, _)| p.first().map_or(0.0, |(_, v)| *v)),
    );
    let ys = range(&mut points.iter().map(|(_, s)| *s));
    let mut chart = ChartBuilder::on(root)
        .caption("Score over the grid", ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(xs, ys)?;
    chart
        .configure_mesh()
        .x_desc(axis)
        .y_desc("score")
        .label_style(("sans-serif", 14))
        .draw()?;
    // One line per combination of the other axes' values, in the grid's order.
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for (p, s) in points {
        let key: Vec<String> = p.iter().skip(1).map(|(n, v)| format!("{n}={v}")).collect();
        let key = key.join(", ");
        let x = p.first().map_or(0.0, |(_, v)| *v);
        match series.iter_mut().find(|(k, _)| *k == key) {
            Some((_, pts)) => pts.push((x, *s)),
            None => series.push((key, vec![(x, *s)])),
        }
    }
    for (i, (key, mut pts)) in series.into_iter().enumerate() {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let c = colour(i);
        let line = chart.draw_series(LineSeries::new(
            pts.iter().copied(),
            ShapeStyle::from(&c).stroke_width(2),
        ))?;
        if !key.is_empty() {
            line.label(key).legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 20, y)], ShapeStyle::from(&c).stroke_width(2))
            });
        }
        chart.draw_series(
            pts.iter()
                .map(|&p| Circle::new(p, 4, ShapeStyle::from(&c).filled())),
        )?;
    }
    let (p, s) = &points[best];
    let x = p.first().map_or(0.0, |(_, v)| *v);
    chart
        .draw_series(std::iter::once(Circle::new(
            (x, *s),
            9,
            ShapeStyle::from(&BLACK).stroke_width(2),
        )))?
        .label("best")
        .legend(|(x, y)| Circle::new((x + 10, y), 5, ShapeStyle::from(&BLACK).stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 14))
        .draw()?;
    Ok(())
}
