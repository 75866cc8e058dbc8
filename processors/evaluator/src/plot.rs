//! Figure 1 of the paper: training loss against step, one line per teacher style (per run
//! when a style has several), drawn with plotters into memory and encoded as PNG.
//!
//! Text uses the DejaVu Sans subset shipped in `assets/` (printable ASCII; see
//! `assets/LICENSE-DejaVu.txt`), so the plot needs no system fonts.

use distillery_schemas::TrainMetrics;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// Pixel size of the plot.
pub const PLOT_SIZE: (u32, u32) = (1200, 720);

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans-ascii.ttf");

fn register_font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok());
    anyhow::ensure!(ok, "the shipped plot font does not load");
    Ok(())
}

/// One line of the plot: its label and its (step, loss) points in step order.
pub fn loss_series(metrics: &[TrainMetrics]) -> Vec<(String, Vec<(i64, f64)>)> {
    // (style, run) -> step -> loss; a replayed step keeps its last record.
    let mut lines: BTreeMap<(&str, &str), BTreeMap<i64, f64>> = BTreeMap::new();
    for m in metrics.iter().filter(|m| m.loss.is_finite()) {
        lines.entry((&m.style, &m.run)).or_default().insert(m.step, m.loss);
    }
    let mut runs_per_style: BTreeMap<&str, usize> = BTreeMap::new();
    for (style, _) in lines.keys() {
        *runs_per_style.entry(style).or_default() += 1;
    }
    lines
        .into_iter()
        .map(|((style, run), points)| {
            let label = if runs_per_style[style] > 1 { format!("{style} ({run})") } else { style.to_string() };
            (label, points.into_iter().collect())
        })
        .collect()
}

/// The plot as PNG bytes, `PLOT_SIZE` pixels. With no metrics it still draws the axes and
/// says that nothing was recorded yet.
pub fn loss_plot_png(metrics: &[TrainMetrics]) -> anyhow::Result<Vec<u8>> {
    register_font()?;
    let (w, h) = PLOT_SIZE;
    let series = loss_series(metrics);
    let mut pixels = vec![0u8; (w * h * 3) as usize];
    draw(&mut pixels, &series).map_err(|e| anyhow::anyhow!("drawing the loss plot: {e}"))?;
    let mut png_bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png_bytes, w, h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&pixels)?;
    }
    Ok(png_bytes)
}

fn draw(pixels: &mut [u8], series: &[(String, Vec<(i64, f64)>)]) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Debug| format!("{e:?}");
    let root = BitMapBackend::with_buffer(pixels, PLOT_SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x_max, mut y_min, mut y_max) = (1i64, f64::INFINITY, f64::NEG_INFINITY);
    for &(step, loss) in points {
        x_max = x_max.max(step);
        y_min = y_min.min(loss);
        y_max = y_max.max(loss);
    }
    if !y_min.is_finite() {
        (y_min, y_max) = (0.0, 1.0);
    }
    let pad = ((y_max - y_min) * 0.05).max(1e-3);
    let mut chart = ChartBuilder::on(&root)
        .caption("Figure 1: training loss vs step", ("sans-serif", 30))
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(75)
        .build_cartesian_2d(0i64..x_max, (y_min - pad).max(0.0)..y_max + pad)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("training loss (completion tokens)")
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 20))
        .draw()
        .map_err(|e| err(&e))?;
    if series.is_empty() {
        let grey = BLACK.mix(0.6);
        let style = ("sans-serif", 26).into_text_style(&root).color(&grey);
        let (w, h) = PLOT_SIZE;
        root.draw(&Text::new("no training metrics recorded yet", (w as i32 / 2 - 190, h as i32 / 2), style))
            .map_err(|e| err(&e))?;
    }
    for (i, (label, line)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(line.iter().copied(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3)));
    }
    if !series.is_empty() {
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 18))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Width and height from a PNG's header (IHDR), for checks.
pub fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < 24 || &bytes[..8] != b"\x89PNG\r\n\x1a\n" || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    Some((be(16), be(20)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(run: &str, style: &str, step: i64, loss: f64) -> TrainMetrics {
        TrainMetrics {
            id: format!("{run}@{step}"),
            run: run.into(),
            style: style.into(),
            step,
            loss,
            lr: 1e-5,
            grad_norm: 1.0,
            tokens: 1000,
            completion_tokens: 800,
            tokens_per_second: 100.0,
            created_at_ms: 0,
        }
    }

    #[test]
    fn the_plot_is_a_png_of_the_expected_size_with_lines_in_it() {
        let mut metrics = Vec::new();
        for step in 1..=50 {
            metrics.push(metric("a", "gpt-oss-120b", step, 2.0 / step as f64 + 0.5));
            metrics.push(metric("b", "deepseek-r1", step, 1.5 / step as f64 + 0.7));
        }
        let png = loss_plot_png(&metrics).unwrap();
        assert_eq!(png_size(&png), Some(PLOT_SIZE));
        let decoder = png::Decoder::new(std::io::Cursor::new(&png));
        let mut reader = decoder.read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size()];
        reader.next_frame(&mut pixels).unwrap();
        // The two series colours appear, and so does dark text.
        let has = |c: RGBAColor| pixels.chunks(3).any(|p| p == [c.0, c.1, c.2]);
        assert!(has(Palette99::pick(0).to_rgba()) && has(Palette99::pick(1).to_rgba()));
        assert!(pixels.chunks(3).any(|p| p.iter().all(|&v| v < 60)), "text and axes are drawn");
    }

    #[test]
    fn an_empty_plot_still_renders_and_series_are_labelled_by_style() {
        assert_eq!(png_size(&loss_plot_png(&[]).unwrap()), Some(PLOT_SIZE));
        let series = loss_series(&[
            metric("r1", "s", 2, 1.0),
            metric("r1", "s", 1, 2.0),
            metric("r2", "s", 1, 3.0),
            metric("r3", "t", 1, f64::NAN),
        ]);
        let labels: Vec<_> = series.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(labels, ["s (r1)", "s (r2)"]);
        assert_eq!(series[0].1, vec![(1, 2.0), (2, 1.0)]);
    }
}
