//! The report as a table under its method and limits, and as CSV (RFC 4180,
//! units in the column names) for a spreadsheet.

use crate::accounting::{GroupBy, Row};

use super::Request;

/// What the figures mean and what they leave out; printed above the table.
pub const METHOD: &str = "\
Method: energy is the agents' counters (measured where the hardware reports it: RAPL, hwmon,
  GPUs; else Cloud Carbon Footprint's model; both x PUE), read hour by hour. Pods carry their
  CPU share of the node's dynamic power plus their GPUs; idle CPU, memory and processes outside
  pods stay with the node.
Emissions: energy x the intensity of the node's grid zone in force when it was drawn. Rows with
  signal `average` are location-based emissions (GHG Protocol scope 2). Rows with signal
  `marginal` (WattTime MOER) price what the load changed at the margin: not a scope 2 figure,
  never add them to location-based totals. Not market-based: that needs the contracts,
  certificates and PPAs behind the electricity, which the agent cannot see.
Saved: each pod-hour's energy at the mean intensity of the cluster's nodes that hour (same
  signal) less what it emitted: the overview dashboard's \"Savings vs carbon-agnostic
  placement\". An estimate: it assumes equal-size nodes and that the work would have drawn the
  same energy anywhere; only pods' dynamic power counts.
Limits: hours an agent did not run are missing (nothing counted them); scrape gaps lose nothing
  (a counter's increase lands in the hour of its next sample). An hour whose zone or signal
  changed is priced under one of them. An agent scraped twice (PodMonitor and ServiceMonitor)
  counts twice.";

fn group_name(by: GroupBy) -> &'static str {
    match by {
        GroupBy::Namespace => "namespace",
        GroupBy::Node => "node",
        GroupBy::Zone => "zone",
    }
}

/// The figures of a row as printed: kWh, measured %, kg CO2e, kg saved.
fn figures(row: &Row) -> [String; 4] {
    [
        format!("{:.3}", row.kwh),
        format!("{:.1}", row.measured_share() * 100.0),
        format!("{:.3}", row.grams / 1000.0),
        format!("{:.3}", row.saved_grams / 1000.0),
    ]
}

pub fn table(request: &Request, rows: &[Row], totals: &[Row]) -> String {
    let range = &request.range;
    let mut out = format!(
        "carbon-kube report by {} from {} to {} ({} h), Prometheus {}; CSV: {}\n{METHOD}\n\n",
        group_name(request.by),
        range.from,
        range.to,
        range.hours(),
        request.prometheus,
        request.csv.display()
    );
    let head = [
        group_name(request.by),
        "signal",
        "energy kWh",
        "measured %",
        "CO2e kg",
        "saved kg",
    ];
    let width = rows
        .iter()
        .map(|r| r.group.len())
        .chain([head[0].len(), crate::accounting::TOTAL.len()])
        .max()
        .unwrap_or(0);
    let line = |cells: [&str; 6]| {
        format!(
            "{:<width$}  {:<8}  {:>12}  {:>10}  {:>12}  {:>12}\n",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5]
        )
    };
    out.push_str(&line(head));
    for row in rows.iter().chain(totals) {
        let f = figures(row);
        out.push_str(&line([&row.group, row.signal, &f[0], &f[1], &f[2], &f[3]]));
    }
    out
}

/// One field, quoted when it holds a comma, quote or line break.
fn field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

pub fn csv(by: GroupBy, rows: &[Row], totals: &[Row]) -> String {
    let mut out = format!(
        "{},signal,energy_kWh,measured_share_percent,emissions_kgCO2e,saved_vs_carbon_agnostic_kgCO2e\r\n",
        group_name(by)
    );
    for row in rows.iter().chain(totals) {
        let f = figures(row);
        out.push_str(&format!(
            "{},{},{}\r\n",
            field(&row.group),
            field(row.signal),
            f.join(",")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_it_and_names_units() {
        let row = Row {
            group: "a,\"b\"".into(),
            signal: "average",
            kwh: 1.5,
            measured_kwh: 0.75,
            grams: 1234.0,
            saved_grams: -10.0,
        };
        let total = Row {
            group: "total".into(),
            ..row.clone()
        };
        let text = csv(GroupBy::Namespace, &[row], &[total]);
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(
            lines[0],
            "namespace,signal,energy_kWh,measured_share_percent,emissions_kgCO2e,saved_vs_carbon_agnostic_kgCO2e"
        );
        assert_eq!(lines[1], "\"a,\"\"b\"\"\",average,1.500,50.0,1.234,-0.010");
        assert_eq!(lines[2], "total,average,1.500,50.0,1.234,-0.010");
        assert_eq!(lines[3], "", "every record ends with CRLF");
    }
}
