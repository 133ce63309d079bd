//! Tables: one per cluster size (medians over the runs), the chorus/baseline ratios, and the
//! real-process numbers. Markdown, so the output pastes into docs/benchmarks.md.

use std::fmt::Write;

use crate::measure::{median, Spread};
use crate::real::RealResult;
use crate::scenario::RunResult;

const KIB: f64 = 1024.0;

/// Every run's results for one system at one size.
struct Cell<'a> {
    runs: Vec<&'a RunResult>,
}

impl Cell<'_> {
    fn ok(&self) -> impl Iterator<Item = &&RunResult> {
        self.runs.iter().filter(|r| r.error.is_none())
    }

    fn med(&self, f: impl Fn(&RunResult) -> Option<f64>) -> Option<f64> {
        median(&self.ok().filter_map(|r| f(r)).collect::<Vec<_>>())
    }

    fn converge(&self) -> Option<f64> {
        self.med(|r| r.converge_s)
    }

    fn detect(&self) -> Option<Spread> {
        let d: Vec<Spread> = self.ok().filter_map(|r| r.detect).collect();
        Some(Spread {
            min: median(&d.iter().map(|s| s.min).collect::<Vec<_>>())?,
            median: median(&d.iter().map(|s| s.median).collect::<Vec<_>>())?,
            max: median(&d.iter().map(|s| s.max).collect::<Vec<_>>())?,
        })
    }

    fn bytes_out(&self) -> Option<f64> {
        self.med(|r| (r.steady_s > 0.0).then_some(r.bytes_out_per_node))
    }

    fn msgs_out(&self) -> Option<f64> {
        self.med(|r| (r.steady_s > 0.0).then_some(r.msgs_out_per_node))
    }

    fn cpu(&self) -> Option<f64> {
        self.med(|r| (r.steady_s > 0.0).then_some(r.cpu_pct_per_node))
    }

    fn rss_per_node(&self) -> Option<f64> {
        self.med(|r| (r.rss_kib_total > 0).then_some(r.rss_kib_total as f64 / r.n as f64))
    }

    fn value(&self) -> Option<f64> {
        self.med(|r| r.value_s)
    }

    fn connections(&self) -> Option<f64> {
        self.med(|r| r.connections_per_node)
    }
}

fn num(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) => format!("{v:.decimals$}"),
        None => "—".into(),
    }
}

/// A quantity with as many decimals as it needs to show two or three digits.
fn amount(v: Option<f64>) -> String {
    match v {
        Some(v) if v.abs() < 10.0 => format!("{v:.2}"),
        Some(v) if v.abs() < 100.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.0}"),
        None => "—".into(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "—".into(),
    }
}

/// The tables for every size, in the order given.
pub fn tables(results: &[RunResult], sizes: &[usize], systems: &[String]) -> String {
    let mut out = String::new();
    for &n in sizes {
        let cells: Vec<(&String, Cell)> = systems
            .iter()
            .map(|s| {
                let runs = results
                    .iter()
                    .filter(|r| r.n == n && &r.system == s)
                    .collect();
                (s, Cell { runs })
            })
            .collect();
        let _ = writeln!(out, "\n### N = {n}\n");
        let _ = writeln!(
            out,
            "| system | runs | converge s | connections/node at convergence | detect min / median / max s | value s | out KiB/s/node | in KiB/s/node | msgs out/s/node | loopback KiB/s/node | CPU %/node | RSS MiB/node (shared) | false failures |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        let mut notes = Vec::new();
        for (system, cell) in &cells {
            let ok = cell.ok().count();
            let detect = match cell.detect() {
                Some(d) => format!("{:.2} / {:.2} / {:.2}", d.min, d.median, d.max),
                None => "—".into(),
            };
            let missed: usize = cell.ok().map(|r| r.detect_missed).max().unwrap_or(0);
            let detect = if missed > 0 {
                format!("{detect} ({missed} never saw it)")
            } else {
                detect
            };
            let false_failures: Vec<String> =
                cell.ok().map(|r| r.false_failures.to_string()).collect();
            let _ =
                writeln!(
                out,
                "| {system} | {ok}/{} | {} | {} | {detect} | {} | {} | {} | {} | {} | {} | {} | {} |",
                cell.runs.len(),
                num(cell.converge(), 2),
                amount(cell.connections()),
                num(cell.value(), 2),
                amount(cell.bytes_out().map(|b| b / KIB)),
                amount(cell.med(|r| (r.steady_s > 0.0).then_some(r.bytes_in_per_node / KIB))),
                amount(cell.msgs_out()),
                amount(cell.med(|r| (r.steady_s > 0.0 && r.loopback_isolated)
                    .then_some(r.loopback_per_node / KIB))),
                amount(cell.cpu()),
                num(cell.rss_per_node().map(|k| k / KIB), 2),
                if false_failures.is_empty() { "—".into() } else { false_failures.join(", ") },
            );
            for r in &cell.runs {
                if let Some(e) = &r.error {
                    notes.push(format!("{system}: {e}"));
                }
                for note in &r.notes {
                    notes.push(format!("{system}: {note}"));
                }
                if r.error.is_none() && !r.loopback_isolated {
                    notes.push(format!(
                        "{system}: no network namespace of its own (needs root or user \
                         namespaces), so no loopback figure"
                    ));
                }
                if r.error.is_none() && r.raft_msgs_per_node > 0.0 {
                    notes.push(format!(
                        "{system}: Raft, idle, on top of gossip: {:.0} B/s and {:.1} messages/s out per node",
                        r.raft_out_per_node, r.raft_msgs_per_node
                    ));
                }
                if r.steady_dips > 0 {
                    notes.push(format!(
                        "{system}: {} observer-polls in the steady window missed a member",
                        r.steady_dips
                    ));
                }
            }
        }
        let loads: Vec<f64> = cells
            .iter()
            .flat_map(|(_, c)| c.ok())
            .flat_map(|r| [r.loadavg.0, r.loadavg.1])
            .filter(|l| l.is_finite())
            .collect();
        if let (Some(lo), Some(hi)) = (
            loads.iter().copied().reduce(f64::min),
            loads.iter().copied().reduce(f64::max),
        ) {
            notes.push(format!(
                "host 1-minute load average during the steady windows: {lo:.1} to {hi:.1} \
                 (the benchmark itself included)"
            ));
        }
        if let Some(base) = cells
            .iter()
            .flat_map(|(_, c)| c.ok())
            .map(|r| r.rss_kib_base)
            .min()
        {
            notes.push(format!(
                "RSS is the whole process divided by N (all nodes share one process and its \
                 allocator); the process held {:.1} MiB before the first node started",
                base as f64 / KIB
            ));
        }
        notes.sort();
        notes.dedup();
        for note in notes {
            let _ = writeln!(out, "\n- {note}");
        }
        ratios(&mut out, &cells);
    }
    out
}

fn ratios(out: &mut String, cells: &[(&String, Cell)]) {
    let find = |name: &str| {
        cells
            .iter()
            .find(|(s, _)| s.as_str() == name)
            .map(|(_, c)| c)
    };
    let pairs: Vec<(&str, &str)> = [
        ("chorus-quic", "chitchat"),
        ("chorus-quic", "foca"),
        ("chorus-udp", "chitchat"),
        ("chorus-udp", "foca"),
    ]
    .into_iter()
    .filter(|(a, b)| find(a).is_some() && find(b).is_some())
    .collect();
    if pairs.is_empty() {
        return;
    }
    type Metric = fn(&Cell) -> Option<f64>;
    let metrics: [(&str, Metric); 9] = [
        ("convergence time", |c| c.converge()),
        ("detection, median observer", |c| {
            c.detect().map(|d| d.median)
        }),
        ("detection, last observer", |c| c.detect().map(|d| d.max)),
        ("value propagation", |c| c.value()),
        ("bytes out/s per node", |c| c.bytes_out()),
        ("messages out/s per node", |c| c.msgs_out()),
        ("CPU per node", |c| c.cpu()),
        ("RSS per node", |c| c.rss_per_node()),
        ("detection (median) x bytes/s", |c| {
            Some(c.detect()?.median * c.bytes_out()?)
        }),
    ];
    let _ = writeln!(out, "\nRatios (below 1: chorus needs less):\n");
    let header: Vec<String> = pairs.iter().map(|(a, b)| format!("{a} / {b}")).collect();
    let _ = writeln!(out, "| metric | {} |", header.join(" | "));
    let _ = writeln!(out, "|---|{}", "---|".repeat(pairs.len()));
    for (name, metric) in metrics {
        let row: Vec<String> = pairs
            .iter()
            .map(|(a, b)| {
                let (a, b) = (find(a).expect("present"), find(b).expect("present"));
                ratio(metric(a), metric(b))
            })
            .collect();
        let _ = writeln!(out, "| {name} | {} |", row.join(" | "));
    }
}

/// The real-process table.
pub fn real_table(results: &[RealResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### One real `chorus agent` process in a cluster of N\n\n| N | joined (saw N alive) s | RSS MiB | `status` queries/s (1 client) | p50 µs | p99 µs | queries/s (4 clients) |\n|---|---|---|---|---|---|---|"
    );
    for r in results {
        match &r.error {
            Some(e) => {
                let _ = writeln!(out, "| {} | {e} | | | | | |", r.n);
            }
            None => {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} |",
                    r.n,
                    num(r.joined_s, 2),
                    r.rss_kib as f64 / KIB,
                    r.qps_one,
                    r.p50_us,
                    r.p99_us,
                    r.qps_four
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(system: &str, detect: f64, bytes: f64) -> RunResult {
        RunResult {
            system: system.into(),
            n: 10,
            converge_s: Some(2.0),
            converged: 10,
            detect: Some(Spread {
                min: detect - 1.0,
                median: detect,
                max: detect + 1.0,
            }),
            steady_s: 60.0,
            bytes_out_per_node: bytes,
            rss_kib_total: 10 * 1024,
            ..RunResult::default()
        }
    }

    #[test]
    fn tables_show_medians_ratios_and_failures() {
        let mut broken = run("foca", 1.0, 1.0);
        broken.error = Some("did not finish within 5s: stopped".into());
        let with_connections = |mut r: RunResult, per_node: f64| {
            r.connections_per_node = Some(per_node);
            r
        };
        let results = [
            with_connections(run("chorus-quic", 3.0, 2048.0), 10.0),
            with_connections(run("chorus-quic", 5.0, 4096.0), 30.0),
            with_connections(run("chorus-quic", 4.0, 3072.0), 20.0),
            run("chitchat", 8.0, 3072.0),
            broken,
        ];
        let systems: Vec<String> = ["chorus-quic", "chitchat", "foca"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let text = tables(&results, &[10], &systems);
        assert!(
            text.contains("| chorus-quic | 3/3 | 2.00 | 20.0 | 3.00 / 4.00 / 5.00 |"),
            "{text}"
        );
        assert!(text.contains("| 3.00 |"), "KiB/s median: {text}");
        assert!(text.contains("| chitchat | 1/1 | 2.00 | — |"), "{text}");
        assert!(text.contains("| foca | 0/1 | — |"), "{text}");
        assert!(
            text.contains("foca: did not finish within 5s: stopped"),
            "{text}"
        );
        assert!(
            text.contains("| detection, median observer | 0.50 | — |"),
            "{text}"
        );
    }
}
