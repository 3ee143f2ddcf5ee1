//! Line charts as standalone SVG for the docs: a few series of (x, y) points over linear x
//! and linear or logarithmic y, with axes, ticks, a legend and an optional threshold line.
//! Written for the benchmark pages, where a curve reads better than a table of steps; the
//! SVG needs no fonts or libraries to render (GitHub shows it inline).

use std::fmt::Write as _;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

/// One line of the chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// CSS colour of the line and its points.
    pub color: &'static str,
    /// Points in x order; `true` draws a filled point, `false` a hollow one.
    pub points: Vec<(f64, f64, bool)>,
}

/// A chart; [`LineChart::svg`] renders it.
#[derive(Clone, Debug)]
pub struct LineChart {
    /// Title above the plot.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Logarithmic y axis (all y must be > 0).
    pub log_y: bool,
    /// A dashed horizontal line at this y, with its label.
    pub threshold: Option<(f64, String)>,
    /// What a filled and a hollow point mean, shown under the legend.
    pub point_note: Option<String>,
    /// The lines.
    pub series: Vec<Series>,
}

/// "Nice" tick values covering `lo..=hi`, about `n` of them (1, 2 or 5 times a power of ten).
fn linear_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = (hi - lo).max(f64::EPSILON);
    let raw = span / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    // From the tick at or below `lo` to the first at or above `hi`, so the axis covers both.
    let mut ticks = vec![(lo / step).floor() * step];
    while ticks.last().is_some_and(|t| *t < hi - step * 1e-9) && ticks.len() < 50 {
        let next = ticks[ticks.len() - 1] + step;
        ticks.push(next);
    }
    ticks
}

fn label(v: f64) -> String {
    if v.abs() >= 1_000_000.0 {
        format!("{}M", trim(v / 1_000_000.0))
    } else if v.abs() >= 1_000.0 {
        format!("{}k", trim(v / 1_000.0))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl LineChart {
    /// The chart as an SVG document.
    pub fn svg(&self) -> String {
        let points = self.series.iter().flat_map(|s| s.points.iter());
        let (mut x_max, mut y_min, mut y_max) = (0f64, f64::INFINITY, 0f64);
        for &(x, y, _) in points {
            x_max = x_max.max(x);
            y_min = y_min.min(y);
            y_max = y_max.max(y);
        }
        if let Some((t, _)) = &self.threshold {
            y_min = y_min.min(*t);
            y_max = y_max.max(*t);
        }
        if !y_min.is_finite() {
            y_min = 0.0;
        }
        let x_ticks = linear_ticks(0.0, x_max.max(1.0) * 1.05, 6);
        let x_hi = *x_ticks.last().unwrap_or(&1.0);
        let (y_lo, y_hi, y_ticks) = if self.log_y {
            let lo = 10f64.powf(y_min.max(1e-3).log10().floor());
            let hi = 10f64.powf(y_max.max(lo * 10.0).log10().ceil());
            let mut ticks = Vec::new();
            let mut t = lo;
            while t <= hi * 1.0001 {
                ticks.push(t);
                t *= 10.0;
            }
            (lo, hi, ticks)
        } else {
            let ticks = linear_ticks(0.0, y_max.max(1.0) * 1.05, 5);
            (0.0, *ticks.last().unwrap_or(&1.0), ticks)
        };
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        let px = |x: f64| LEFT + x / x_hi * plot_w;
        let py = |y: f64| {
            let f = if self.log_y {
                (y.max(y_lo).log10() - y_lo.log10()) / (y_hi.log10() - y_lo.log10())
            } else {
                y / y_hi
            };
            TOP + plot_h * (1.0 - f)
        };

        let mut o = String::new();
        let _ = writeln!(
            o,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(
            o,
            r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
        );
        let _ = writeln!(
            o,
            r#"<text x="{}" y="24" font-size="15" text-anchor="middle">{}</text>"#,
            WIDTH / 2.0,
            escape(&self.title)
        );
        for &t in &x_ticks {
            let x = px(t);
            let _ = writeln!(
                o,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#e5e5e5"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                TOP + plot_h,
                TOP + plot_h + 16.0,
                label(t)
            );
        }
        for &t in &y_ticks {
            let y = py(t);
            let _ = writeln!(
                o,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + plot_w,
                LEFT - 6.0,
                y + 4.0,
                label(t)
            );
        }
        let _ = writeln!(
            o,
            r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#888"/>"##
        );
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + plot_w / 2.0,
            HEIGHT - 18.0,
            escape(&self.x_label)
        );
        let _ = writeln!(
            o,
            r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            TOP + plot_h / 2.0,
            escape(&self.y_label)
        );
        if let Some((t, text)) = &self.threshold {
            let y = py(*t);
            let _ = writeln!(
                o,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#c00" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}" fill="#c00">{}</text>"##,
                LEFT + plot_w,
                LEFT + 6.0,
                y - 5.0,
                escape(text)
            );
        }
        for s in &self.series {
            let path: Vec<String> = s
                .points
                .iter()
                .map(|&(x, y, _)| format!("{:.1},{:.1}", px(x), py(y)))
                .collect();
            let _ = writeln!(
                o,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
                path.join(" "),
                s.color
            );
            for &(x, y, filled) in &s.points {
                let fill = if filled { s.color } else { "white" };
                let _ = writeln!(
                    o,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{fill}" stroke="{}" stroke-width="2"/>"#,
                    px(x),
                    py(y),
                    s.color
                );
            }
        }
        let mut ly = TOP + 16.0;
        for s in &self.series {
            let _ = writeln!(
                o,
                r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                LEFT + 12.0,
                LEFT + 36.0,
                s.color,
                LEFT + 42.0,
                ly + 4.0,
                escape(&s.name)
            );
            ly += 18.0;
        }
        if let Some(note) = &self.point_note {
            let _ = writeln!(
                o,
                r##"<text x="{:.1}" y="{:.1}" fill="#555">{}</text>"##,
                LEFT + 12.0,
                ly + 4.0,
                escape(note)
            );
        }
        o.push_str("</svg>\n");
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(log_y: bool) -> LineChart {
        LineChart {
            title: "p99 <by> rate".into(),
            x_label: "deliveries/s".into(),
            y_label: "p99, ms".into(),
            log_y,
            threshold: Some((100.0, "limit 100 ms".into())),
            point_note: Some("filled: sustained".into()),
            series: vec![
                Series {
                    name: "Herald".into(),
                    color: "#1f77b4",
                    points: vec![(20_000.0, 19.0, true), (700_000.0, 52.0, true)],
                },
                Series {
                    name: "other".into(),
                    color: "#ff7f0e",
                    points: vec![(20_000.0, 17.0, true), (70_000.0, 104.0, false)],
                },
            ],
        }
    }

    #[test]
    fn renders_every_point_series_and_label() {
        for log_y in [false, true] {
            let svg = chart(log_y).svg();
            assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
            assert_eq!(svg.matches("<circle").count(), 4);
            assert_eq!(svg.matches("<polyline").count(), 2);
            assert!(svg.contains(">Herald<") && svg.contains(">other<"));
            assert!(svg.contains("p99 &lt;by&gt; rate"), "text is escaped");
            assert!(
                svg.contains(r##"fill="white" stroke="#ff7f0e""##),
                "hollow point"
            );
            assert!(svg.contains("limit 100 ms"));
            assert!(!svg.contains("NaN") && !svg.contains("inf"));
        }
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(
            linear_ticks(0.0, 735_000.0, 6),
            vec![0.0, 200_000.0, 400_000.0, 600_000.0, 800_000.0]
        );
        assert_eq!(label(200_000.0), "200k");
        assert_eq!(label(1_500_000.0), "1.5M");
        assert_eq!(label(0.5), "0.5");
    }

    #[test]
    fn an_empty_chart_still_renders() {
        let mut c = chart(true);
        c.series.clear();
        c.threshold = None;
        let svg = c.svg();
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }
}
