//! Plots as hand-written SVG: no plotting dependency for two simple charts.

use std::fmt::Write as _;

use crate::experiment::{PolicyName, Replay};

const WIDTH: f64 = 900.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
/// Room for one legend entry (swatch and the longest policy name).
const LEGEND_ENTRY_WIDTH: f64 = 205.0;
const COLOURS: [&str; 10] = [
    "#6b6b6b", "#e07b00", "#7b3fb5", "#1f77b4", "#17becf", "#2ca02c", "#98df8a", "#d62728",
    "#8c564b", "#e377c2",
];

fn colour(name: PolicyName) -> &'static str {
    let index = PolicyName::ALL.iter().position(|n| *n == name).unwrap_or(0);
    COLOURS[index % COLOURS.len()]
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn document(height: f64, body: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         viewBox=\"0 0 {WIDTH} {height}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{body}</svg>\n"
    )
}

/// A tick value with as many decimals as its step needs.
fn tick_label(value: f64, step: f64) -> String {
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    // A zero reached by adding steps can come out as -0.0 or 1e-17.
    let value = if value.abs() < step * 1e-6 {
        0.0
    } else {
        value
    };
    format!("{value:.decimals$}")
}

/// Round step for about `target` ticks over `range`.
fn tick_step(range: f64, target: f64) -> f64 {
    let raw = range / target;
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// Intensity of every zone over `days` from `first_day` and the static
/// threshold (dashed); shading marks hours the relative policy (the default)
/// kept the zone tainted, the strip under each panel the static threshold's.
pub fn intensity_and_taints(replay: &Replay, first_day: usize, days: usize) -> String {
    let steps_per_day = replay
        .series
        .first()
        .map_or(24, |s| (86_400 / s.step_seconds.max(1)) as usize);
    let panel = 120.0;
    let mut body = String::new();
    let mut top = 30.0;
    let _ = writeln!(
        body,
        "<text x=\"{LEFT}\" y=\"18\" font-size=\"13\">Intensity (gCO2/kWh), days {first_day}–{} of {}; \
         shaded: relative taint (the default); strip and dashed line: static threshold</text>",
        first_day + days,
        replay
            .series
            .first()
            .and_then(|s| s.start.to_string().get(..4).map(String::from))
            .unwrap_or_default()
    );
    let (Some(relative), Some(fixed)) = (
        replay.outcome(PolicyName::Relative),
        replay.outcome(PolicyName::Static),
    ) else {
        return document(top, &body);
    };
    for (z, series) in replay.series.iter().enumerate() {
        let from = (first_day * steps_per_day).min(series.grams_per_kwh.len());
        let to = ((first_day + days) * steps_per_day).min(series.grams_per_kwh.len());
        let values = &series.grams_per_kwh[from..to];
        let thresholds = &fixed.thresholds[z][from..to];
        let max = values
            .iter()
            .chain(thresholds.iter().filter(|v| v.is_finite()))
            .fold(1.0f64, |m, v| m.max(*v))
            * 1.05;
        let width = WIDTH - LEFT - RIGHT;
        let x = |i: usize| LEFT + width * i as f64 / values.len().max(1) as f64;
        let y = |v: f64| top + panel * (1.0 - v.min(max) / max);
        let bar = width / values.len().max(1) as f64;
        for (i, _) in values.iter().enumerate() {
            if relative.tainted[z][from + i] {
                let _ = writeln!(
                    body,
                    "<rect x=\"{:.1}\" y=\"{top:.1}\" width=\"{:.2}\" height=\"{panel}\" fill=\"{}\" fill-opacity=\"0.18\"/>",
                    x(i),
                    bar,
                    colour(PolicyName::Relative)
                );
            }
            if fixed.tainted[z][from + i] {
                let _ = writeln!(
                    body,
                    "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.2}\" height=\"5\" fill=\"{}\"/>",
                    x(i),
                    top + panel + 2.0,
                    bar,
                    colour(PolicyName::Static)
                );
            }
        }
        let step = tick_step(max, 3.0);
        let mut tick = 0.0;
        while tick <= max {
            let _ = writeln!(
                body,
                "<line x1=\"{LEFT}\" x2=\"{right:.1}\" y1=\"{at:.1}\" y2=\"{at:.1}\" stroke=\"#ddd\"/><text x=\"{label_x:.1}\" y=\"{label_y:.1}\" text-anchor=\"end\">{label}</text>",
                right = WIDTH - RIGHT,
                at = y(tick),
                label_x = LEFT - 4.0,
                label_y = y(tick) + 4.0,
                label = tick_label(tick, step),
            );
            tick += step;
        }
        let line = |points: &[f64], stroke: &str, dash: &str| {
            let path: Vec<String> = points
                .iter()
                .enumerate()
                .map(|(i, v)| format!("{:.1},{:.1}", x(i) + bar / 2.0, y(*v)))
                .collect();
            format!(
                "<polyline fill=\"none\" stroke=\"{stroke}\" stroke-width=\"1.2\" stroke-dasharray=\"{dash}\" points=\"{}\"/>\n",
                path.join(" ")
            )
        };
        body += &line(values, "#222", "none");
        if thresholds.iter().all(|v| v.is_finite()) {
            body += &line(thresholds, colour(PolicyName::Static), "6 3");
        }
        let _ = writeln!(
            body,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-weight=\"bold\">{}</text>",
            LEFT + 4.0,
            top + 12.0,
            escape(series.zone.as_str())
        );
        top += panel + 24.0;
    }
    document(top, &body)
}

/// Savings against the baseline per home zone and overall, one bar per policy.
pub fn savings_by_zone(replay: &Replay, title: &str) -> String {
    let Some(baseline) = replay.outcome(PolicyName::Baseline) else {
        return document(40.0, "");
    };
    let policies: Vec<PolicyName> = PolicyName::ALL[1..].to_vec();
    let mut groups: Vec<(String, Vec<f64>)> = replay
        .series
        .iter()
        .enumerate()
        .map(|(z, s)| {
            let base = baseline.grams_by_home[z];
            let saved = policies
                .iter()
                .map(|p| {
                    replay.outcome(*p).map_or(0.0, |o| {
                        100.0 * (base - o.grams_by_home[z]) / base.max(f64::MIN_POSITIVE)
                    })
                })
                .collect();
            (s.zone.to_string(), saved)
        })
        .collect();
    let overall = policies
        .iter()
        .map(|p| {
            replay.outcome(*p).map_or(0.0, |o| {
                100.0 * (baseline.grams - o.grams) / baseline.grams.max(f64::MIN_POSITIVE)
            })
        })
        .collect();
    groups.push(("all".into(), overall));
    let (plot_top, plot_height) = (40.0, 260.0);
    let max = groups
        .iter()
        .flat_map(|(_, v)| v.iter())
        .fold(1.0f64, |m, v| m.max(*v))
        * 1.1;
    let min = groups
        .iter()
        .flat_map(|(_, v)| v.iter())
        .fold(0.0f64, |m, v| m.min(*v))
        * 1.1;
    let y = |v: f64| plot_top + plot_height * (max - v) / (max - min);
    let mut body = format!(
        "<text x=\"{LEFT}\" y=\"20\" font-size=\"13\">{}</text>\n",
        escape(title)
    );
    let step = tick_step(max - min, 6.0);
    let mut tick = (min / step).ceil() * step;
    while tick <= max {
        let _ = writeln!(
            body,
            "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{1:.1}\" y2=\"{1:.1}\" stroke=\"{2}\"/><text x=\"{3:.1}\" y=\"{4:.1}\" text-anchor=\"end\">{5}%</text>",
            WIDTH - RIGHT,
            y(tick),
            if tick.abs() < step / 2.0 {
                "#444"
            } else {
                "#ddd"
            },
            LEFT - 4.0,
            y(tick) + 4.0,
            tick_label(tick, step),
        );
        tick += step;
    }
    let group_width = (WIDTH - LEFT - RIGHT) / groups.len() as f64;
    let bar = group_width * 0.8 / policies.len() as f64;
    for (g, (label, values)) in groups.iter().enumerate() {
        let x0 = LEFT + g as f64 * group_width + group_width * 0.1;
        for (p, value) in values.iter().enumerate() {
            let (top, bottom) = (y(value.max(0.0)), y(value.min(0.0)));
            let _ = writeln!(
                body,
                "<rect x=\"{:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{} {}: {value:.2}%</title></rect>",
                x0 + p as f64 * bar,
                bar * 0.9,
                (bottom - top).max(0.5),
                colour(policies[p]),
                escape(label),
                policies[p].as_str()
            );
        }
        let _ = writeln!(
            body,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            x0 + group_width * 0.4,
            plot_top + plot_height + 16.0,
            escape(label)
        );
    }
    let per_row = ((WIDTH - LEFT - RIGHT) / LEGEND_ENTRY_WIDTH)
        .floor()
        .max(1.0) as usize;
    for (p, policy) in policies.iter().enumerate() {
        let x = LEFT + (p % per_row) as f64 * LEGEND_ENTRY_WIDTH;
        let legend_y = plot_top + plot_height + 36.0 + (p / per_row) as f64 * 18.0;
        let _ = writeln!(
            body,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{legend_y:.1}\">{}</text>",
            legend_y - 10.0,
            colour(*policy),
            x + 16.0,
            policy.as_str()
        );
    }
    let legend_rows = policies.len().div_ceil(per_row);
    document(
        plot_top + plot_height + 32.0 + 18.0 * legend_rows as f64,
        &body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_step(600.0, 3.0), 200.0);
        assert_eq!(tick_step(23.0, 6.0), 5.0);
        assert_eq!(tick_step(0.7, 6.0), 0.2);
    }

    #[test]
    fn tick_labels_have_the_decimals_their_step_needs() {
        assert_eq!(tick_label(0.30000000000000004, 0.1), "0.3");
        assert_eq!(tick_label(200.0, 100.0), "200");
        assert_eq!(tick_label(-1e-17, 20.0), "0");
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(escape("a<b & c>"), "a&lt;b &amp; c&gt;");
    }
}
