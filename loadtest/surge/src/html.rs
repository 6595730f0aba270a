//! The load-test kit's HTML report: one standalone page (no JavaScript, no external resources)
//! with a summary table across runs, then for each run its plots, drawn locally as inline SVG with
//! `plotters`.
//!
//! A run is the JSON report of one surge run (`label`, `scenario`, `summary`, `timeline`,
//! `wait_estimates`). Any field may be missing or null: what is there is drawn, a missing value
//! shows "—" in the table and a plot without data shows "no data". Every string taken from the
//! data is HTML-escaped.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

/// Plot size in pixels (the SVG scales down with the page).
const WIDTH: u32 = 900;
const HEIGHT: u32 = 260;
/// Room on the right of each plot for its legend.
const LEGEND_WIDTH: u32 = 170;
/// Digit grouping: U+202F NARROW NO-BREAK SPACE ("100 000", never broken across lines).
const GROUP_SEP: char = '\u{202F}';
/// Largest magnitude plotted (see [`finite`]).
const PLOT_LIMIT: f64 = 1e15;
/// Scatter points drawn at most (evenly sampled above that).
const MAX_SCATTER_POINTS: usize = 5_000;
const FONT: &str = "sans-serif";

// Okabe–Ito colours: distinguishable with the common colour-vision deficiencies.
const BLUE: RGBColor = RGBColor(0, 114, 178);
const ORANGE: RGBColor = RGBColor(230, 159, 0);
const GREEN: RGBColor = RGBColor(0, 158, 115);
const VERMILION: RGBColor = RGBColor(213, 94, 0);
const PURPLE: RGBColor = RGBColor(204, 121, 167);
const GREY: RGBColor = RGBColor(120, 120, 120);
/// The portal's capacity line (dashed).
const CAPACITY_RED: RGBColor = RGBColor(204, 0, 0);

/// One HTML page: a summary table across runs, then for each run its plots.
pub fn render(title: &str, runs: &[Value]) -> anyhow::Result<String> {
    let mut html = String::with_capacity(64 * 1024);
    let title = escape(title);
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n<h1>{title}</h1>\n"
    );
    summary_table(&mut html, runs);
    for (i, run) in runs.iter().enumerate() {
        run_section(&mut html, i, run)?;
    }
    html.push_str("</main>\n</body>\n</html>\n");
    Ok(html)
}

const CSS: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1a1a1a;background:#fff;margin:0;line-height:1.4}\
main{max-width:940px;margin:0 auto;padding:1rem}\
h1{font-size:1.6rem;margin:0.5rem 0 1rem}\
h2{font-size:1.3rem;margin:2rem 0 0.75rem;padding-top:0.5rem;border-top:2px solid #ddd}\
h2 .scenario{font-weight:normal;color:#555}\
table{border-collapse:collapse;font-variant-numeric:tabular-nums;margin-bottom:1rem}\
caption{text-align:left;font-weight:bold;padding:0.25rem 0}\
th,td{border:1px solid #ccc;padding:0.25rem 0.6rem}\
thead th{background:#f2f2f2;text-align:center}\
tbody th{text-align:left;font-weight:normal;background:#fafafa}\
td{text-align:right;white-space:nowrap}\
.bad{color:#b00020;font-weight:bold}\
figure{margin:0 0 1.25rem}\
figure svg{display:block;max-width:100%;height:auto}\
figcaption{font-size:0.9rem;color:#333;margin-top:0.25rem}\
.nodata{display:flex;align-items:center;justify-content:center;height:4rem;border:1px dashed #aaa;color:#555;font-style:italic}";

// ---------------------------------------------------------------------------------------------
// Summary table

#[derive(Clone, Copy)]
enum Kind {
    Text,
    Count,
    Decimal,
}

/// A value shown in red (and bold: not by colour alone) when it signals a problem.
#[derive(Clone, Copy)]
enum Flag {
    None,
    NonZero,
    AboveCapacity,
}

const ROWS: &[(&str, &[&str], Kind, Flag)] = &[
    ("Scenario", &["scenario"], Kind::Text, Flag::None),
    ("Users", &["summary", "users"], Kind::Count, Flag::None),
    (
        "Journeys done",
        &["summary", "journeys_done"],
        Kind::Count,
        Flag::None,
    ),
    (
        "Leaks (responses naming another user)",
        &["summary", "leaks"],
        Kind::Count,
        Flag::NonZero,
    ),
    (
        "Portal peak requests in flight",
        &["summary", "portal_peak_in_flight"],
        Kind::Count,
        Flag::AboveCapacity,
    ),
    (
        "Portal capacity",
        &["summary", "portal_capacity"],
        Kind::Count,
        Flag::None,
    ),
    (
        "Admission inversions",
        &["summary", "admission_inversions"],
        Kind::Count,
        Flag::NonZero,
    ),
    (
        "Queue position regressions",
        &["summary", "position_regressions"],
        Kind::Count,
        Flag::NonZero,
    ),
    (
        "Wait estimate, median absolute error (%)",
        &["summary", "wait_estimate_median_abs_error_pct"],
        Kind::Decimal,
        Flag::None,
    ),
    (
        "Latency p50 (ms)",
        &["summary", "latency_ms", "p50"],
        Kind::Decimal,
        Flag::None,
    ),
    (
        "Latency p90 (ms)",
        &["summary", "latency_ms", "p90"],
        Kind::Decimal,
        Flag::None,
    ),
    (
        "Latency p99 (ms)",
        &["summary", "latency_ms", "p99"],
        Kind::Decimal,
        Flag::None,
    ),
    (
        "Latency max (ms)",
        &["summary", "latency_ms", "max"],
        Kind::Decimal,
        Flag::None,
    ),
    (
        "anticamera nodes on one Redis",
        &["summary", "nodes"],
        Kind::Count,
        Flag::None,
    ),
    (
        "Redis round trips per admitted person",
        &["summary", "redis_round_trips_per_admitted_person"],
        Kind::Decimal,
        Flag::None,
    ),
    (
        "Redis round trips per waiting person-minute",
        &["summary", "redis_round_trips_per_waiting_person_minute"],
        Kind::Decimal,
        Flag::None,
    ),
];

fn summary_table(html: &mut String, runs: &[Value]) {
    if runs.is_empty() {
        html.push_str("<p class=\"nodata\">no data: the report holds no runs</p>\n");
        return;
    }
    html.push_str("<table>\n<caption>Summary of the runs</caption>\n<thead>\n<tr><th scope=\"col\">Measure</th>");
    for (i, run) in runs.iter().enumerate() {
        let _ = write!(
            html,
            "<th scope=\"col\">{}</th>",
            escape(&run_label(i, run))
        );
    }
    html.push_str("</tr>\n</thead>\n<tbody>\n");
    for &(name, path, kind, flag) in ROWS {
        let _ = write!(html, "<tr><th scope=\"row\">{}</th>", escape(name));
        for run in runs {
            let value = get(run, path);
            let bad = match flag {
                Flag::None => false,
                Flag::NonZero => value.and_then(Value::as_f64).is_some_and(|v| v != 0.0),
                Flag::AboveCapacity => {
                    match (
                        value.and_then(Value::as_f64),
                        get(run, &["summary", "portal_capacity"]).and_then(Value::as_f64),
                    ) {
                        (Some(peak), Some(cap)) => peak > cap,
                        _ => false,
                    }
                }
            };
            cell(html, value, kind, bad);
        }
        html.push_str("</tr>\n");
    }
    for code in status_codes(runs) {
        let name = match code.as_str() {
            "0" => "Responses with status 0 (timeout or transport error)".to_string(),
            _ => format!("Responses with status {code}"),
        };
        let _ = write!(html, "<tr><th scope=\"row\">{}</th>", escape(&name));
        for run in runs {
            let value = get(run, &["summary", "status_mix"]).and_then(|mix| mix.get(&code));
            cell(html, value.filter(|v| !v.is_null()), Kind::Count, false);
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</tbody>\n</table>\n");
}

fn cell(html: &mut String, value: Option<&Value>, kind: Kind, bad: bool) {
    let text = value.map_or_else(|| "—".to_string(), |v| format_value(v, kind));
    if bad {
        let _ = write!(
            html,
            "<td><strong class=\"bad\">{}</strong></td>",
            escape(&text)
        );
    } else {
        let _ = write!(html, "<td>{}</td>", escape(&text));
    }
}

/// The status codes named in any run's `status_mix`, numerically sorted (non-numeric keys last).
fn status_codes(runs: &[Value]) -> Vec<String> {
    let mut codes = BTreeSet::new();
    for run in runs {
        if let Some(mix) = get(run, &["summary", "status_mix"]).and_then(Value::as_object) {
            codes.extend(mix.keys().cloned());
        }
    }
    let mut codes: Vec<String> = codes.into_iter().collect();
    codes.sort_by_key(|c| (c.parse::<u64>().map_or(u64::MAX, |n| n), c.clone()));
    codes
}

fn format_value(value: &Value, kind: Kind) -> String {
    match value {
        Value::Null => "—".to_string(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                group_digits(&i.to_string())
            } else if let Some(u) = n.as_u64() {
                group_digits(&u.to_string())
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                match kind {
                    Kind::Count if f.fract() == 0.0 => format_number(f, 0),
                    _ => format_number(f, 1),
                }
            }
        }
        Value::Array(_) | Value::Object(_) => match kind {
            Kind::Text => value.to_string(),
            _ => "—".to_string(),
        },
    }
}

/// `v` with `decimals` decimals and its integer part grouped by threes.
fn format_number(v: f64, decimals: usize) -> String {
    if !v.is_finite() {
        return "—".to_string();
    }
    if v.abs() >= 1e15 {
        return scientific(v);
    }
    group_digits(&format!("{v:.decimals$}"))
}

/// `v` with at most three significant digits in scientific notation: "1.5e7", "-2e-4".
fn scientific(v: f64) -> String {
    let s = format!("{v:.2e}");
    match s.split_once('e') {
        Some((mantissa, exponent)) if mantissa.contains('.') => {
            format!(
                "{}e{exponent}",
                mantissa.trim_end_matches('0').trim_end_matches('.')
            )
        }
        _ => s,
    }
}

/// Groups the integer digits of a formatted number by threes: "-1234567.5" → "-1 234 567.5".
fn group_digits(s: &str) -> String {
    let (sign, rest) = match s.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", s),
    };
    let (int, frac) = match rest.find('.') {
        Some(dot) => rest.split_at(dot),
        None => (rest, ""),
    };
    let mut out = String::with_capacity(s.len() + int.len() / 3 * 3);
    out.push_str(sign);
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(GROUP_SEP);
        }
        out.push(c);
    }
    out.push_str(frac);
    out
}

/// Axis tick labels: integers grouped, fractions with at most two decimals.
fn tick_label(v: &f64) -> String {
    let v = *v;
    if v.abs() < 1e-12 {
        return "0".to_string();
    }
    // Longer labels would not fit the axis' label area.
    if v.abs() >= 1e7 || v.abs() < 1e-3 {
        return scientific(v);
    }
    if (v - v.round()).abs() < 1e-6 * v.abs().max(1.0) {
        return format_number(v.round(), 0);
    }
    let s = format_number(v, 3);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

// ---------------------------------------------------------------------------------------------
// One run

fn run_label(index: usize, run: &Value) -> String {
    let label = match run.get("label").and_then(Value::as_str).map(str::trim) {
        Some(label) if !label.is_empty() => label.to_string(),
        _ => format!("Run {}", index + 1),
    };
    match run.get("nodes").and_then(Value::as_u64) {
        Some(n) if n > 1 => format!("{label} ({n} nodes)"),
        _ => label,
    }
}

fn run_section(html: &mut String, index: usize, run: &Value) -> anyhow::Result<()> {
    let label = escape(&run_label(index, run));
    let id = format!("run-{}", index + 1);
    let _ = write!(
        html,
        "<section aria-labelledby=\"{id}\">\n<h2 id=\"{id}\">{label}"
    );
    if let Some(scenario) = run.get("scenario").and_then(Value::as_str) {
        let _ = write!(
            html,
            " <span class=\"scenario\">— {}</span>",
            escape(scenario)
        );
    }
    html.push_str("</h2>\n");

    let timeline = run.get("timeline").filter(|t| t.is_object());
    let series = |key: &str| timeline.map_or_else(Vec::new, |t| series(t, key));
    let capacity = timeline
        .and_then(|t| t.get("portal_capacity"))
        .and_then(Value::as_f64)
        .or_else(|| get(run, &["summary", "portal_capacity"]).and_then(Value::as_f64))
        .filter(|c| c.abs() <= PLOT_LIMIT);

    let users = TimePlot {
        title: "Users per second",
        y_desc: "users per second",
        lines: vec![
            Line::new("arrivals/s", BLUE, series("arrivals")),
            Line::new("admitted/s", ORANGE, series("admitted")),
            Line::new("journeys done/s", GREEN, series("done")),
        ],
        capacity: None,
    };
    figure(
        html,
        &users.svg()?,
        &format!("{label}: users arriving, admitted and finishing their journey, per second."),
    );

    let gauges = TimePlot {
        title: "Waiting room and active users",
        y_desc: "users",
        lines: vec![
            Line::new("waiting", PURPLE, series("waiting")),
            Line::new("active (admitted)", GREEN, series("active")),
        ],
        capacity: None,
    };
    figure(
        html,
        &gauges.svg()?,
        &format!(
            "{label}: users in the waiting room and users admitted and in their journey, at the end of each second."
        ),
    );

    // Goodput in the same unit: useful work per second, as requests in flight on average.
    let useful: Vec<(f64, Option<f64>)> = series("portal_useful_pct")
        .into_iter()
        .map(|(t, v)| (t, v.zip(capacity).map(|(p, c)| p * c / 100.0)))
        .collect();
    let portal = TimePlot {
        title: "Portal requests in flight",
        y_desc: "requests in flight",
        lines: vec![
            Line::new("peak in flight", BLUE, series("portal_in_flight")),
            Line::new("useful work (average in flight)", GREEN, useful),
        ],
        capacity,
    };
    let portal_caption = match capacity {
        Some(cap) => format!(
            "{label}: the portal's peak requests in flight in each second, and in green the useful work it did (answers without an error, as an average number in flight: the goodput); the dashed red line is its capacity ({}).",
            tick_label(&cap)
        ),
        None => format!("{label}: the portal's peak requests in flight in each second (capacity unknown)."),
    };
    figure(html, &portal.svg()?, &portal_caption);

    let latency = TimePlot {
        title: "Latency of completed requests",
        y_desc: "latency (ms)",
        lines: vec![
            Line::new("p50", BLUE, series("latency_p50_ms")),
            Line::new("p90", ORANGE, series("latency_p90_ms")),
            Line::new("p99", VERMILION, series("latency_p99_ms")),
        ],
        capacity: None,
    };
    figure(
        html,
        &latency.svg()?,
        &format!(
            "{label}: latency percentiles (ms) of the requests completed in each second; gaps are seconds without completed requests."
        ),
    );

    let errors = TimePlot {
        title: "Errors per second",
        y_desc: "errors per second",
        lines: vec![Line::new("errors/s", VERMILION, series("errors"))],
        capacity: None,
    };
    figure(
        html,
        &errors.svg()?,
        &format!("{label}: 5xx answers, timeouts and transport errors per second."),
    );

    let (points, total) = wait_points(run.get("wait_estimates"));
    let sampled = if points.len() < total {
        format!(
            " ({} of {} points shown, evenly sampled)",
            group_digits(&points.len().to_string()),
            group_digits(&total.to_string())
        )
    } else {
        String::new()
    };
    figure(
        html,
        &wait_scatter(&points)?,
        &format!(
            "{label}: estimated wait against actual wait, in seconds, one point per admitted user{sampled}; points on the dashed diagonal were estimated exactly."
        ),
    );

    html.push_str("</section>\n");
    Ok(())
}

/// `caption` is already escaped HTML.
fn figure(html: &mut String, svg: &Option<String>, caption: &str) {
    html.push_str("<figure>\n");
    match svg {
        Some(svg) => html.push_str(svg),
        None => html.push_str("<p class=\"nodata\">no data</p>\n"),
    }
    let _ = write!(html, "<figcaption>{caption}</figcaption>\n</figure>\n");
}

// ---------------------------------------------------------------------------------------------
// Data access

/// The value at `path`, if present and not null.
fn get<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter()
        .try_fold(value, |v, key| v.get(key))
        .filter(|v| !v.is_null())
}

/// A plottable number: values beyond ±1e15 (no count or duration of a load test) are dropped
/// rather than let them flatten every other point.
fn finite(value: &Value) -> Option<f64> {
    value.as_f64().filter(|v| v.abs() <= PLOT_LIMIT)
}

/// `(t, value)` per entry of `timeline[key]`; t from `t_s` (the index where missing), value `None`
/// where null or not a number.
fn series(timeline: &Value, key: &str) -> Vec<(f64, Option<f64>)> {
    let Some(values) = timeline.get(key).and_then(Value::as_array) else {
        return Vec::new();
    };
    let times = timeline.get("t_s").and_then(Value::as_array);
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let t = times
                .and_then(|t| t.get(i))
                .and_then(finite)
                .unwrap_or(i as f64);
            (t, finite(v))
        })
        .collect()
}

/// The `[estimated_s, actual_s]` pairs (at most [`MAX_SCATTER_POINTS`], evenly sampled) and how
/// many valid pairs there were.
fn wait_points(value: Option<&Value>) -> (Vec<(f64, f64)>, usize) {
    let all: Vec<(f64, f64)> = value
        .and_then(Value::as_array)
        .map(|pairs| {
            pairs
                .iter()
                .filter_map(|p| {
                    let p = p.as_array()?;
                    Some((finite(p.first()?)?, finite(p.get(1)?)?))
                })
                .collect()
        })
        .unwrap_or_default();
    let total = all.len();
    if total <= MAX_SCATTER_POINTS {
        return (all, total);
    }
    let sampled = (0..MAX_SCATTER_POINTS)
        .filter_map(|i| all.get(i * total / MAX_SCATTER_POINTS).copied())
        .collect();
    (sampled, total)
}

// ---------------------------------------------------------------------------------------------
// Plots

struct Line {
    name: &'static str,
    color: RGBColor,
    points: Vec<(f64, Option<f64>)>,
}

impl Line {
    fn new(name: &'static str, color: RGBColor, points: Vec<(f64, Option<f64>)>) -> Self {
        Self {
            name,
            color,
            points,
        }
    }

    /// The runs of consecutive points with a value (a null breaks the line).
    fn segments(&self) -> Vec<Vec<(f64, f64)>> {
        let mut segments = Vec::new();
        let mut current = Vec::new();
        for &(t, v) in &self.points {
            match v {
                Some(v) => current.push((t, v)),
                None if !current.is_empty() => segments.push(std::mem::take(&mut current)),
                None => {}
            }
        }
        if !current.is_empty() {
            segments.push(current);
        }
        segments
    }
}

/// A plot over time (seconds since the start) with an optional capacity line.
struct TimePlot {
    title: &'static str,
    y_desc: &'static str,
    lines: Vec<Line>,
    capacity: Option<f64>,
}

struct LegendEntry {
    name: String,
    color: RGBColor,
    dashed: bool,
    marker: bool,
}

impl TimePlot {
    /// The plot as an SVG element, or `None` when no line has a value.
    fn svg(&self) -> anyhow::Result<Option<String>> {
        let values = || {
            self.lines
                .iter()
                .flat_map(|l| l.points.iter().filter_map(|&(_, v)| v))
        };
        if values().next().is_none() {
            return Ok(None);
        }
        let (x0, x1) = padded(
            bounds(
                self.lines
                    .iter()
                    .flat_map(|l| l.points.iter().map(|&(t, _)| t)),
            ),
            0.0,
        );
        let (y_lo, y_hi) = bounds(values().chain(self.capacity));
        let (y0, y1) = padded((y_lo.min(0.0), y_hi), 0.08);

        let mut legend: Vec<LegendEntry> = self
            .lines
            .iter()
            .map(|l| LegendEntry {
                name: l.name.to_string(),
                color: l.color,
                dashed: false,
                marker: false,
            })
            .collect();
        if let Some(cap) = self.capacity {
            legend.push(LegendEntry {
                name: format!("capacity ({})", tick_label(&cap)),
                color: CAPACITY_RED,
                dashed: true,
                marker: false,
            });
        }

        let svg = draw_svg(self.title, &legend, |area| {
            let mut chart = ChartBuilder::on(area)
                .margin(8)
                .x_label_area_size(44)
                .y_label_area_size(78)
                .build_cartesian_2d(x0..x1, y0..y1)?;
            configure_mesh(&mut chart, "time since start (s)", self.y_desc)?;
            for line in &self.lines {
                let style = line.color.stroke_width(2);
                let segments = line.segments();
                chart.draw_series(
                    segments
                        .iter()
                        .filter(|s| s.len() > 1)
                        .map(|s| PathElement::new(s.clone(), style)),
                )?;
                // A lone value between gaps is a dot, not an invisible zero-length line.
                chart.draw_series(
                    segments
                        .iter()
                        .filter(|s| s.len() == 1)
                        .filter_map(|s| s.first())
                        .map(|&p| Circle::new(p, 2, line.color.filled())),
                )?;
            }
            if let Some(cap) = self.capacity {
                chart.draw_series(std::iter::once(DashedPathElement::new(
                    vec![(x0, cap), (x1, cap)],
                    8,
                    5,
                    CAPACITY_RED.stroke_width(2),
                )))?;
            }
            Ok(())
        })?;
        Ok(Some(svg))
    }
}

/// Estimated against actual wait, with the y = x diagonal; `None` without points.
fn wait_scatter(points: &[(f64, f64)]) -> anyhow::Result<Option<String>> {
    if points.is_empty() {
        return Ok(None);
    }
    let (lo, hi) = bounds(points.iter().flat_map(|&(e, a)| [e, a]));
    let (lo, hi) = padded((lo.min(0.0), hi), 0.05);
    let legend = [
        LegendEntry {
            name: "user (est., actual)".to_string(),
            color: BLUE,
            dashed: false,
            marker: true,
        },
        LegendEntry {
            name: "y = x (exact)".to_string(),
            color: GREY,
            dashed: true,
            marker: false,
        },
    ];
    let svg = draw_svg("Estimated vs actual wait", &legend, |area| {
        let mut chart = ChartBuilder::on(area)
            .margin(8)
            .x_label_area_size(44)
            .y_label_area_size(78)
            .build_cartesian_2d(lo..hi, lo..hi)?;
        configure_mesh(&mut chart, "estimated wait (s)", "actual wait (s)")?;
        chart.draw_series(std::iter::once(DashedPathElement::new(
            vec![(lo, lo), (hi, hi)],
            6,
            4,
            GREY.stroke_width(2),
        )))?;
        chart.draw_series(
            points
                .iter()
                .map(|&p| Circle::new(p, 2, BLUE.mix(0.45).filled())),
        )?;
        Ok(())
    })?;
    Ok(Some(svg))
}

type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

fn configure_mesh(chart: &mut Chart<'_, '_>, x_desc: &str, y_desc: &str) -> anyhow::Result<()> {
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_labels(10)
        .y_labels(6)
        .x_label_formatter(&tick_label)
        .y_label_formatter(&tick_label)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .bold_line_style(RGBColor(220, 220, 220))
        .light_line_style(RGBColor(245, 245, 245))
        .draw()?;
    Ok(())
}

/// Draws one SVG: the title on top, the legend on the right, `plot` in the rest.
fn draw_svg(
    title: &str,
    legend: &[LegendEntry],
    plot: impl FnOnce(&DrawingArea<SVGBackend<'_>, plotters::coord::Shift>) -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let body = root.titled(title, (FONT, 17).into_font().style(FontStyle::Bold))?;
        let (plot_area, legend_area) = body.split_horizontally(WIDTH - LEGEND_WIDTH);
        plot(&plot_area)?;
        let text = TextStyle::from((FONT, 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        for (i, entry) in legend.iter().enumerate() {
            let y = 24 + 22 * i as i32;
            let swatch = [(6, y), (34, y)];
            if entry.marker {
                legend_area.draw(&Circle::new((20, y), 3, entry.color.mix(0.7).filled()))?;
            } else if entry.dashed {
                legend_area.draw(&DashedPathElement::new(
                    swatch,
                    7,
                    4,
                    entry.color.stroke_width(2),
                ))?;
            } else {
                legend_area.draw(&PathElement::new(swatch, entry.color.stroke_width(2)))?;
            }
            legend_area.draw_text(&entry.name, &text, (42, y))?;
        }
        root.present()?;
    }
    // The page's figcaption describes the plot; the title names it for assistive technology.
    let labelled = format!("<svg role=\"img\" aria-label=\"{}\" ", escape(title));
    Ok(buf.replacen("<svg ", &labelled, 1))
}

/// Smallest and largest of `values` (`(0, 1)` when empty).
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo.is_finite() && hi.is_finite() {
        (lo, hi)
    } else {
        (0.0, 1.0)
    }
}

/// `(lo, hi)` with `top` of the span added above, never empty; a single value gets room around
/// it (not below zero when it is not negative).
fn padded((lo, hi): (f64, f64), top: f64) -> (f64, f64) {
    let span = hi - lo;
    if span > 0.0 {
        return (lo, hi + span * top);
    }
    let room = (lo.abs() * 0.1).max(1.0);
    let below = if lo >= 0.0 {
        (lo - room).max(0.0)
    } else {
        lo - room
    };
    (below, hi + room)
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn synthetic_run(label: &str, capacity: u64, seconds: usize) -> Value {
        let t: Vec<usize> = (0..seconds).collect();
        let wave = |scale: f64, phase: f64| -> Vec<f64> {
            t.iter()
                .map(|&s| (scale * (1.0 + ((s as f64) / 9.0 + phase).sin())).round())
                .collect()
        };
        let latency = |base: f64| -> Vec<Value> {
            t.iter()
                .map(|&s| {
                    if s % 17 == 5 {
                        Value::Null
                    } else {
                        json!(base + (s % 7) as f64)
                    }
                })
                .collect()
        };
        let in_flight: Vec<u64> = t
            .iter()
            .map(|&s| (capacity * (s as u64 % 13) / 12).min(capacity))
            .collect();
        let waits: Vec<Value> = (0..800)
            .map(|i| {
                let actual = (i % 300) as f64 / 2.0;
                json!([actual * (0.8 + (i % 5) as f64 / 10.0), actual])
            })
            .collect();
        json!({
            "label": label,
            "scenario": "claim-day",
            "summary": {
                "users": 100000, "journeys_done": 95000, "leaks": 0,
                "portal_peak_in_flight": capacity, "portal_capacity": capacity,
                "admission_inversions": 0, "position_regressions": 0,
                "wait_estimate_median_abs_error_pct": 9.5,
                "latency_ms": {"p50": 21.0, "p90": 30.0, "p99": 45.0, "max": 1234.5},
                "status_mix": {"200": 12345, "503": 40000, "0": 3}
            },
            "timeline": {
                "t_s": t,
                "arrivals": wave(800.0, 0.0),
                "waiting": wave(30000.0, 1.0),
                "active": wave(400.0, 2.0),
                "admitted": wave(90.0, 0.5),
                "done": wave(85.0, 0.7),
                "portal_in_flight": in_flight,
                "portal_capacity": capacity,
                "latency_p50_ms": latency(20.0),
                "latency_p90_ms": latency(32.0),
                "latency_p99_ms": latency(55.0),
                "errors": wave(3.0, 3.0)
            },
            "wait_estimates": waits
        })
    }

    #[test]
    fn report_html_two_runs() {
        let runs = [
            synthetic_run("anticamera", 50, 120),
            synthetic_run("<nginx & co>", 50, 90),
        ];
        let html = render("Claim day <surge>", &runs).expect("render");
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("<html lang=\"en\">"));
        assert!(html.contains("<h1>Claim day &lt;surge&gt;</h1>"));
        assert!(html.contains("anticamera"));
        assert!(html.contains("&lt;nginx &amp; co&gt;"));
        assert!(!html.contains("<nginx"), "a label is written unescaped");
        assert!(html.contains("<svg"));
        assert_eq!(html.matches("<svg").count(), 12, "six plots per run");
        assert_eq!(html.matches("<h2").count(), 2);
        assert!(html.contains("<th scope=\"col\">anticamera</th>"));
        assert!(html.contains("<th scope=\"row\">Users</th>"));
        // Grouped numbers, sorted status codes.
        assert!(html.contains("<td>100\u{202F}000</td>"));
        assert!(html.contains("<td>1\u{202F}234.5</td>"));
        let (s0, s200, s503) = (
            html.find("status 0 ").expect("status 0"),
            html.find("status 200").expect("status 200"),
            html.find("status 503").expect("status 503"),
        );
        assert!(s0 < s200 && s200 < s503);
        // The capacity line: legend entry and the dashed red stroke in the portal plot.
        assert!(html.contains("capacity (50)"));
        assert!(html.contains("stroke=\"#CC0000\""));
        assert!(!html.contains("no data"));
        assert!(!html.contains("<script"));
        assert!(
            !html.contains("http://")
                || html.matches("http://").count()
                    == html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count()
        );
        std::fs::write("/tmp/report-sample.html", &html).expect("write sample");
    }

    #[test]
    fn report_html_missing_and_null_fields() {
        let runs = [
            Value::Null,
            json!({}),
            json!({"label": null, "scenario": 7, "summary": null, "timeline": null, "wait_estimates": null}),
            json!({
                "label": "",
                "summary": {"users": "many", "latency_ms": null, "status_mix": {"200": null, "x": 1}, "leaks": 2.5},
                "timeline": {"t_s": [], "arrivals": [], "waiting": [null, null], "portal_in_flight": [3],
                             "portal_capacity": null, "latency_p50_ms": [null, 4.0, null], "errors": "none"},
                "wait_estimates": [[], [1], ["a", 2], null, [3.0, 4.0, 5.0]]
            }),
            json!({"label": "flat", "timeline": {"t_s": [5, 5, 5], "done": [0, 0, 0], "portal_capacity": 0},
                   "wait_estimates": [[0, 0]]}),
            json!({"label": "huge", "summary": {"users": u64::MAX, "journeys_done": -12345678, "portal_capacity": 1e300},
                   "timeline": {"arrivals": [1e300, -1e300, 0], "portal_in_flight": [1, 2], "portal_capacity": 1e300}}),
        ];
        let html = render("", &runs).expect("render");
        assert!(html.contains("Run 1"));
        assert!(html.contains("Run 4"));
        assert!(html.contains("no data"));
        assert!(html.contains("—"));
        assert!(
            html.contains("18\u{202F}446\u{202F}744\u{202F}073\u{202F}709\u{202F}551\u{202F}615")
        );
        assert!(html.contains("-12\u{202F}345\u{202F}678"));
        assert_eq!(html.matches("<h2").count(), runs.len());

        let empty = render("nothing", &[]).expect("render");
        assert!(empty.contains("no data"));
    }

    #[test]
    fn report_html_samples_large_scatter() {
        let waits: Vec<Value> = (0..6_000).map(|i| json!([i, i])).collect();
        let (points, total) = wait_points(Some(&Value::Array(waits.clone())));
        assert_eq!((points.len(), total), (MAX_SCATTER_POINTS, 6_000));
        let html =
            render("big", &[json!({"label": "big", "wait_estimates": waits})]).expect("render");
        assert!(html.contains("5\u{202F}000 of 6\u{202F}000 points shown"));
    }

    #[test]
    fn report_html_number_formats() {
        assert_eq!(group_digits("100000"), "100\u{202F}000");
        assert_eq!(group_digits("-1234.50"), "-1\u{202F}234.50");
        assert_eq!(group_digits("999"), "999");
        assert_eq!(tick_label(&2500.0), "2\u{202F}500");
        assert_eq!(tick_label(&0.25), "0.25");
        assert_eq!(tick_label(&-0.0), "0");
        assert_eq!(tick_label(&15_000_000.0), "1.5e7");
        assert_eq!(tick_label(&0.0005), "5e-4");
        assert_eq!(format_number(1e300, 0), "1e300");
        assert_eq!(padded((0.0, 0.0), 0.1), (0.0, 1.0));
        assert_eq!(padded((5.0, 5.0), 0.1), (4.0, 6.0));
        assert_eq!(padded((0.0, 10.0), 0.1), (0.0, 11.0));
        assert_eq!(format_value(&json!(9.5), Kind::Decimal), "9.5");
        assert_eq!(format_value(&json!(95000.0), Kind::Count), "95\u{202F}000");
        assert_eq!(
            escape("<a href='x'>&\""),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;"
        );
    }
}
