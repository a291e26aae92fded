//! Writing plots out: SVG from the plotted data (axes, ticks, points, front), and PNG from a
//! screenshot of the window cropped to the plot. Pure functions, run off the UI thread.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use eframe::egui;

/// What an SVG scatter plot shows.
pub struct SvgPlot<'a> {
    pub x_label: &'a str,
    pub y_label: &'a str,
    /// `[min_x, min_y, max_x, max_y]`.
    pub bounds: [f64; 4],
    pub points: &'a [(f64, f64, egui::Color32)],
    /// The front, in drawing order.
    pub front: &'a [(f64, f64)],
    pub title: &'a str,
}

const W: f64 = 800.0;
const H: f64 = 520.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn hex(c: egui::Color32) -> String {
    format!("#{:02x}{:02x}{:02x}", c.r(), c.g(), c.b())
}

/// About five round tick values covering `lo..=hi`.
pub fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    if !lo.is_finite() || !hi.is_finite() || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 && out.len() < 20 {
        out.push(t);
        t += step;
    }
    out
}

/// The plot as a standalone SVG document.
pub fn scatter_svg(p: &SvgPlot<'_>) -> String {
    let [x0, y0, x1, y1] = p.bounds;
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0).max(f64::MIN_POSITIVE) * (W - LEFT - RIGHT);
    let sy = |y: f64| H - BOTTOM - (y - y0) / (y1 - y0).max(f64::MIN_POSITIVE) * (H - TOP - BOTTOM);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r##"<rect width="{W}" height="{H}" fill="#ffffff"/>"##);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="14">{}</text>"#,
        LEFT,
        esc(p.title)
    );
    let (pl, pr, pt, pb) = (LEFT, W - RIGHT, TOP, H - BOTTOM);
    let _ = writeln!(
        s,
        r##"<rect x="{pl}" y="{pt}" width="{}" height="{}" fill="none" stroke="#444"/>"##,
        pr - pl,
        pb - pt
    );
    for t in ticks(x0, x1) {
        let x = sx(t);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{pb}" x2="{x:.1}" y2="{pt}" stroke="#e4e4e4"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            pb + 16.0,
            esc(&super::runs::format_value(t))
        );
    }
    for t in ticks(y0, y1) {
        let y = sy(t);
        let _ = writeln!(
            s,
            r##"<line x1="{pl}" y1="{y:.1}" x2="{pr}" y2="{y:.1}" stroke="#e4e4e4"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            pl - 6.0,
            y + 4.0,
            esc(&super::runs::format_value(t))
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (pl + pr) / 2.0,
        H - 16.0,
        esc(p.x_label)
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(18 {}) rotate(-90)" text-anchor="middle">{}</text>"#,
        (pt + pb) / 2.0,
        esc(p.y_label)
    );
    for (x, y, c) in p.points {
        let _ = writeln!(
            s,
            r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}" fill-opacity="0.8"/>"#,
            sx(*x),
            sy(*y),
            hex(*c)
        );
    }
    if p.front.len() > 1 {
        let pts: Vec<String> = p
            .front
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = writeln!(
            s,
            r##"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"##,
            pts.join(" "),
            hex(super::theme::FRONT)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A placeholder SVG saying why there is no plot.
pub fn empty_svg(why: &str) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="80"><text x="10" y="40">{}</text></svg>
"#,
        esc(why)
    )
}

/// Crops a window screenshot to `rect` (screen points; the whole image when `None`) and writes
/// it as PNG.
pub fn write_png_crop(
    image: &egui::ColorImage,
    rect: Option<egui::Rect>,
    pixels_per_point: f32,
    path: &Path,
) -> anyhow::Result<()> {
    let [w, h] = image.size;
    let (x0, y0, x1, y1) = match rect {
        Some(r) => (
            ((r.min.x * pixels_per_point).floor().max(0.0) as usize).min(w),
            ((r.min.y * pixels_per_point).floor().max(0.0) as usize).min(h),
            ((r.max.x * pixels_per_point).ceil().max(0.0) as usize).min(w),
            ((r.max.y * pixels_per_point).ceil().max(0.0) as usize).min(h),
        ),
        None => (0, 0, w, h),
    };
    anyhow::ensure!(x1 > x0 && y1 > y0, "the plot is not on screen");
    let mut rgba = Vec::with_capacity((x1 - x0) * (y1 - y0) * 4);
    for y in y0..y1 {
        for px in &image.pixels[y * w + x0..y * w + x1] {
            rgba.extend_from_slice(&px.to_srgba_unmultiplied());
        }
    }
    write_png(path, (x1 - x0) as u32, (y1 - y0) as u32, &rgba)
}

/// Writes 8-bit RGBA pixels as a PNG file.
pub fn write_png(path: &Path, width: u32, height: u32, rgba: &[u8]) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc
        .write_header()
        .with_context(|| format!("writing {}", path.display()))?;
    w.write_image_data(rgba)
        .with_context(|| format!("writing {}", path.display()))?;
    w.finish()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let t = ticks(0.13, 0.91);
        assert_eq!(t.first().copied(), Some(0.2));
        assert!(t.iter().all(|v| (0.13..=0.91).contains(v)));
        assert!(t.len() >= 4);
    }

    #[test]
    fn svg_has_every_point_and_the_front() {
        let pts = [
            (1.0, 2.0, egui::Color32::RED),
            (2.0, 1.0, egui::Color32::BLUE),
        ];
        let svg = scatter_svg(&SvgPlot {
            x_label: "bytes",
            y_label: "kld <mean>",
            bounds: [0.0, 0.0, 3.0, 3.0],
            points: &pts,
            front: &[(1.0, 2.0), (2.0, 1.0)],
            title: "t",
        });
        assert_eq!(svg.matches("<circle").count(), 2);
        assert!(svg.contains("<polyline"));
        assert!(svg.contains("kld &lt;mean&gt;"));
    }
}
