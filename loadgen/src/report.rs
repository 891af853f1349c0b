//! `loadgen report`: the comparison table (markdown) and the hand-over-vs-R plot (SVG) from
//! several `loadgen run` results.

use plotters::prelude::*;

use crate::{Args, Report};

pub fn main(mut a: Args) -> Result<(), String> {
    let md = a.take("--md");
    let svg = a.take("--svg");
    let baseline = a.take("--baseline").unwrap_or_else(|| "article".into());
    let reports: Vec<Report> =
        a.0.iter()
            .map(|p| {
                let s = std::fs::read_to_string(p).map_err(|e| format!("{p}: {e}"))?;
                serde_json::from_str(&s).map_err(|e| format!("{p}: {e}"))
            })
            .collect::<Result<_, String>>()?;
    if reports.is_empty() {
        return Err("report: no result files".into());
    }
    let table = table(&reports, &baseline);
    match md {
        Some(p) => std::fs::write(&p, &table).map_err(|e| format!("{p}: {e}"))?,
        None => print!("{table}"),
    }
    if let Some(p) = svg {
        plot(&reports, &p)?;
    }
    Ok(())
}

fn fmt_us(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn fmt_ratio(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.0}×")
    } else {
        format!("{x:.2}×")
    }
}

fn rooms_label(r: usize) -> String {
    if r >= 1000 && r.is_multiple_of(1000) {
        format!("{}k", r / 1000)
    } else {
        r.to_string()
    }
}

/// The markdown table: one column per server (medians over its repetitions), then each server's
/// ratio to the baseline.
pub fn table(reports: &[Report], baseline: &str) -> String {
    let base = reports.iter().find(|r| r.name == baseline);
    let others: Vec<&Report> = reports.iter().filter(|r| r.name != baseline).collect();
    let mut s = String::new();
    s.push_str("| metric (median of repetitions) |");
    for r in reports {
        s.push_str(&format!(" {} |", r.name));
    }
    if base.is_some() {
        for r in &others {
            s.push_str(&format!(" {} vs {baseline} |", r.name));
        }
    }
    s.push('\n');
    s.push_str("|---|");
    for _ in reports {
        s.push_str("---:|");
    }
    if base.is_some() {
        for _ in &others {
            s.push_str("---:|");
        }
    }
    s.push('\n');

    // A row: values per report, and the ratio (value / baseline, or baseline / value).
    let mut row = |label: String,
                   f: &dyn Fn(&Report) -> Option<f64>,
                   show: &dyn Fn(f64) -> String,
                   invert: bool| {
        s.push_str(&format!("| {label} |"));
        for r in reports {
            s.push_str(&format!(" {} |", f(r).map_or("–".into(), show)));
        }
        if let Some(b) = base {
            for r in &others {
                let v = match (f(r), f(b)) {
                    (Some(x), Some(y)) if x > 0.0 && y > 0.0 => {
                        fmt_ratio(if invert { y / x } else { x / y })
                    }
                    _ => "–".into(),
                };
                s.push_str(&format!(" {v} |"));
            }
        }
        s.push('\n');
    };

    let all_r: Vec<usize> = {
        let mut v: Vec<usize> = reports
            .iter()
            .flat_map(|r| r.median.handover.iter().map(|(r, _)| *r))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let at = |r: &Report, rooms: usize| {
        r.median
            .handover
            .iter()
            .find(|(x, _)| *x == rooms)
            .map(|(_, s)| *s)
    };
    for &rooms in &all_r {
        row(
            format!("hand-over p50, R = {} (faster ×)", rooms_label(rooms)),
            &|r| at(r, rooms).map(|s| s.p50_us),
            &fmt_us,
            true,
        );
        row(
            format!("hand-over p99, R = {} (faster ×)", rooms_label(rooms)),
            &|r| at(r, rooms).map(|s| s.p99_us),
            &fmt_us,
            true,
        );
    }
    if let (Some(&lo), Some(&hi)) = (all_r.first(), all_r.last())
        && lo != hi
    {
        let growth = |r: &Report, p99: bool| {
            let (a, b) = (at(r, lo)?, at(r, hi)?);
            let (a, b) = if p99 {
                (a.p99_us, b.p99_us)
            } else {
                (a.p50_us, b.p50_us)
            };
            (a > 0.0).then(|| b / a)
        };
        row(
            format!(
                "hand-over p50 at R = {} ÷ at R = {}",
                rooms_label(hi),
                rooms_label(lo)
            ),
            &|r| growth(r, false),
            &|x| format!("{x:.2}"),
            true,
        );
        row(
            format!(
                "hand-over p99 at R = {} ÷ at R = {}",
                rooms_label(hi),
                rooms_label(lo)
            ),
            &|r| growth(r, true),
            &|x| format!("{x:.2}"),
            true,
        );
    }
    let clients = reports.iter().find_map(|r| {
        r.runs
            .iter()
            .find_map(|x| x.crowd.as_ref().map(|c| c.clients))
    });
    if let Some(c) = clients {
        row(
            format!("join throughput, {c} clients into one room (joins/s; ×)"),
            &|r| r.median.joins_per_sec,
            &|x| format!("{x:.0}"),
            false,
        );
        row(
            format!("ceiling: no-op `ping` round trips, same {c} clients at once (per s; v1 only)"),
            &|r| r.median.pings_per_sec,
            &|x| format!("{x:.0}"),
            false,
        );
        row(
            format!(
                "hot room ({} waiting): holder leaves → `released` (faster ×)",
                c - 1
            ),
            &|r| r.median.hot_released_us,
            &fmt_us,
            true,
        );
        row(
            "hot room: holder leaves → last `presence` (v1 only)".into(),
            &|r| r.median.hot_last_presence_us,
            &fmt_us,
            true,
        );
    }
    let storm = reports.iter().find_map(|r| {
        r.runs
            .iter()
            .find_map(|x| x.storm.as_ref().map(|s| s.clients))
    });
    if let Some(n) = storm {
        row(
            format!(
                "storm: {n} connections of one room reset at once → server CPU until quiet (less ×)"
            ),
            &|r| r.median.storm_cpu_ms,
            &|ms| fmt_us(ms * 1000.0),
            true,
        );
        row(
            "storm: bystander in another room, p99 reply wait meanwhile (faster ×)".into(),
            &|r| r.median.storm_bystander_p99_us,
            &fmt_us,
            true,
        );
        row(
            "storm: bystander in another room, longest reply wait (faster ×)".into(),
            &|r| r.median.storm_bystander_max_us,
            &fmt_us,
            true,
        );
        row(
            "storm: drop → survivor told it holds (includes the server's grace; faster ×)".into(),
            &|r| r.median.storm_survivor_ms,
            &|ms| fmt_us(ms * 1000.0),
            true,
        );
    }
    if reports.iter().any(|r| r.median.idle_conn_bytes.is_some()) {
        row(
            "server memory per idle connection (RSS; ratio = share of baseline)".into(),
            &|r| r.median.idle_conn_bytes,
            &|b| format!("{:.1} KiB", b / 1024.0),
            false,
        );
    }
    s
}

const COLORS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x8c, 0x56, 0x4b),
];

/// Hand-over latency (p50 and p99, log scale) against R, one colour per server.
pub fn plot(reports: &[Report], path: &str) -> Result<(), String> {
    let max_r = reports
        .iter()
        .flat_map(|r| r.median.handover.iter().map(|(r, _)| *r))
        .max()
        .unwrap_or(1)
        .max(1);
    let vals: Vec<f64> = reports
        .iter()
        .flat_map(|r| {
            r.median
                .handover
                .iter()
                .flat_map(|(_, s)| [s.p50_us, s.p99_us])
        })
        .filter(|v| *v > 0.0)
        .collect();
    let lo = vals.iter().copied().fold(f64::INFINITY, f64::min).max(1.0);
    let hi = vals.iter().copied().fold(1.0, f64::max);
    let (lo, hi) = (
        10f64.powf(lo.log10().floor()),
        10f64.powf(hi.log10().ceil()),
    );

    let root = SVGBackend::new(path, (820, 500)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| format!("{path}: {e}");
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Hand-over latency vs rooms held by idle clients (R)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..max_r as f64 * 1.03, (lo..hi).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("R (rooms held by idle clients)")
        .y_desc("hand-over latency (µs, log)")
        .x_label_formatter(&|x| rooms_label(*x as usize))
        .y_label_formatter(&|y| {
            if *y >= 1000.0 {
                format!("{} ms", y / 1000.0)
            } else {
                format!("{y} µs")
            }
        })
        .draw()
        .map_err(|e| err(&e))?;
    for (i, r) in reports.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let p50: Vec<(f64, f64)> = r
            .median
            .handover
            .iter()
            .map(|(x, s)| (*x as f64, s.p50_us.max(lo)))
            .collect();
        let p99: Vec<(f64, f64)> = r
            .median
            .handover
            .iter()
            .map(|(x, s)| (*x as f64, s.p99_us.max(lo)))
            .collect();
        chart
            .draw_series(LineSeries::new(p50.clone(), c.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(format!("{} p50", r.name))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(p50.iter().map(|&p| Circle::new(p, 4, c.filled())))
            .map_err(|e| err(&e))?;
        let light = c.mix(0.5);
        chart
            .draw_series(LineSeries::new(p99.clone(), light.stroke_width(1)))
            .map_err(|e| err(&e))?
            .label(format!("{} p99", r.name))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], light.stroke_width(1))
            });
        chart
            .draw_series(
                p99.iter()
                    .map(|&p| TriangleMarker::new(p, 5, light.filled())),
            )
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Storm;
    use crate::stats::Summary;

    fn load(json: &str) -> Report {
        serde_json::from_str(json).expect("a result file loads")
    }

    /// Results written before the storm phase still load, and the table has no storm rows for
    /// them; a result with a storm gets the rows, with the ratio against the baseline.
    #[test]
    fn old_results_load_and_storm_rows_appear_with_a_storm() {
        let old = load(include_str!("../../docs/loadgen/article.json"));
        assert!(old.runs.iter().all(|r| r.storm.is_none()));
        assert_eq!(old.median.storm_cpu_ms, None);
        assert!(!table(std::slice::from_ref(&old), "article").contains("storm"));

        let mut base = old.clone();
        let mut new = load(include_str!("../../docs/loadgen/axum.json"));
        for (r, cpu, p99, max, surv) in [
            (&mut base, 800.0, 20_000.0, 400_000.0, 300.0),
            (&mut new, 200.0, 500.0, 2_000.0, 5_010.0),
        ] {
            let storm = Storm {
                clients: 10_000,
                cpu_ms: Some(cpu),
                bystander: Summary {
                    n: 100,
                    p99_us: p99,
                    max_us: max,
                    ..Summary::default()
                },
                survivor_holds_ms: Some(surv),
                ..Storm::default()
            };
            r.runs = vec![crate::Run {
                storm: Some(storm),
                ..crate::Run::default()
            }];
            r.median = crate::medians(&r.runs);
        }
        // A round trip through JSON keeps the storm.
        let new = load(&serde_json::to_string(&new).unwrap());
        let t = table(&[new, base], "article");
        let line = |key: &str| {
            t.lines()
                .find(|l| l.contains(key))
                .unwrap_or_else(|| panic!("no row {key} in\n{t}"))
                .to_string()
        };
        assert!(
            line("server CPU until quiet").contains("| 200.0 ms | 800.0 ms | 4.00× |"),
            "{t}"
        );
        assert!(
            line("p99 reply wait").contains("| 500 µs | 20.0 ms | 40× |"),
            "{t}"
        );
        assert!(
            line("longest reply wait").contains("| 2.00 ms | 400.0 ms | 200× |"),
            "{t}"
        );
        assert!(
            line("survivor told").contains("| 5.01 s | 300.0 ms | 0.06× |"),
            "{t}"
        );
    }
}
