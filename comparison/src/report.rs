//! The numbers as people read them: units, the side-by-side tables (for the
//! terminal and `report.md`) and the sentences that set rows against each
//! other.

use std::fmt::Write as _;

use crate::cyclers::POSTGRES;
use crate::plot::Series;
use crate::results::{CycleResult, HandOffResult};

/// The row section 6 compares the others with.
const ONE_SERVER: &str = "RedisLock, 1 server";

/// Section 2's rows: distlock, each waiter its own client.
pub const HAND_OFF_OWN: &str = "distlock";
/// Section 2's rows: distlock, the two waiters are tasks sharing one client.
pub const HAND_OFF_SHARED: &str = "distlock, 1 shared client";
/// Section 2's PostgreSQL baseline: each waiter a session blocked in the
/// server's own `pg_advisory_lock`.
pub const HAND_OFF_PG_BLOCKING: &str = "pg_advisory_lock";

/// Bytes in a human unit.
pub fn bytes(n: f64) -> String {
    let abs = n.abs();
    if abs >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", n / 1024.0 / 1024.0 / 1024.0)
    } else if abs >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", n / 1024.0 / 1024.0)
    } else if abs >= 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{n:.0} B")
    }
}

/// Microseconds in a readable unit.
pub fn micros(us: f64) -> String {
    if us <= 0.0 {
        "–".to_owned()
    } else if us >= 10_000.0 {
        format!("{:.1} ms", us / 1e3)
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

/// A count with thousands separators.
pub fn count(n: f64) -> String {
    let whole = n.round() as i64;
    let digits = whole.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if whole < 0 { format!("-{out}") } else { out }
}

/// Cycles per second against tasks, one series per row of a cycle table.
pub fn throughput_series(cycles: &[CycleResult]) -> Vec<Series> {
    let mut series: Vec<Series> = Vec::new();
    for c in cycles {
        let name = format!("{} {}", c.backend, c.implementation);
        match series.iter_mut().find(|(n, _)| *n == name) {
            Some((_, points)) => points.push((c.tasks as f64, c.ops_per_sec)),
            None => series.push((name, vec![(c.tasks as f64, c.ops_per_sec)])),
        }
    }
    series
}

/// Names per cluster master, as `a / b / c`.
pub fn spread(per_master: &[usize]) -> String {
    per_master
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(" / ")
}

/// Section 6 in numbers: each row against the one-server row, at 1 task
/// (p50) and at the most tasks measured (cycles/s).
pub(crate) fn topology_ratios(cycles: &[CycleResult]) -> String {
    let Some(most) = cycles.iter().map(|c| c.tasks).max() else {
        return String::new();
    };
    let find = |implementation: &str, tasks: usize| {
        cycles
            .iter()
            .find(|c| c.implementation == implementation && c.tasks == tasks)
    };
    let (Some(base1), Some(base_most)) = (find(ONE_SERVER, 1), find(ONE_SERVER, most)) else {
        return String::new();
    };
    let mut parts = Vec::new();
    let mut seen: Vec<&str> = vec![ONE_SERVER];
    for c in cycles {
        if seen.contains(&c.implementation.as_str()) {
            continue;
        }
        seen.push(&c.implementation);
        if let (Some(one), Some(many)) = (find(&c.implementation, 1), find(&c.implementation, most))
            && base1.latency.p50_us > 0.0
            && base_most.ops_per_sec > 0.0
        {
            parts.push(format!(
                "{} {}: p50 at 1 task {:.2}× one server's, cycles/s at {most} tasks {:.2}×",
                c.backend,
                c.implementation,
                one.latency.p50_us / base1.latency.p50_us,
                many.ops_per_sec / base_most.ops_per_sec
            ));
        }
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("In this run: {}.\n", parts.join("; "))
    }
}

/// The lock-cycle table (Markdown; also readable in a terminal): a line
/// per implementation and task count, the implementations of one backend
/// side by side at each task count. Cycles/s is the median of the rounds,
/// with their min–max; CPU per cycle is the median of the rounds.
pub fn cycle_table(cycles: &[CycleResult]) -> String {
    let mut tasks: Vec<usize> = cycles.iter().map(|c| c.tasks).collect();
    tasks.sort_unstable();
    tasks.dedup();
    let mut backends: Vec<&str> = Vec::new();
    for c in cycles {
        if !backends.contains(&c.backend.as_str()) {
            backends.push(&c.backend);
        }
    }
    let mut out = String::from(
        "| backend | tasks | implementation | cycles/s | min–max | client CPU / cycle | server CPU / cycle | p50 | p99 |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for backend in backends {
        for t in &tasks {
            for c in cycles
                .iter()
                .filter(|c| c.backend == backend && c.tasks == *t)
            {
                let spread = if c.ops_per_sec_rounds.len() > 1 {
                    format!("{}–{}", count(c.ops_per_sec_min), count(c.ops_per_sec_max))
                } else {
                    "–".to_owned()
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {:.1} µs | {} | {} | {} |",
                    c.backend,
                    c.tasks,
                    c.implementation,
                    count(c.ops_per_sec),
                    spread,
                    c.client_cpu_us,
                    c.server_cpu_us
                        .map_or("–".to_owned(), |s| format!("{s:.1} µs")),
                    micros(c.latency.p50_us),
                    micros(c.latency.p99_us),
                );
            }
        }
    }
    out
}

/// The header of [`cycle_line`].
pub fn cycle_line_header() -> String {
    format!(
        "{:<5} {:<13} {:<21} {:>5} {:>10} {:>10} {:>12} {:>11} {:>11}",
        "round",
        "backend",
        "implementation",
        "tasks",
        "p50",
        "p99",
        "cycles/s",
        "client CPU",
        "server CPU"
    )
}

/// One lock-cycle run as the terminal shows it while the run goes.
pub fn cycle_line(round: &str, r: &CycleResult) -> String {
    format!(
        "{:<5} {:<13} {:<21} {:>5} {:>10} {:>10} {:>12} {:>8.1} µs {:>11}",
        round,
        r.backend,
        r.implementation,
        r.tasks,
        micros(r.latency.p50_us),
        micros(r.latency.p99_us),
        count(r.ops_per_sec),
        r.client_cpu_us,
        r.server_cpu_us
            .map_or("–".to_owned(), |s| format!("{s:.1} µs"))
    )
}

/// The header of [`hand_off_line`].
pub fn hand_off_line_header() -> String {
    format!(
        "{:<11} {:<26} {:>7} {:>10} {:>10} {:>12} {:>13}",
        "backend", "implementation", "waiters", "p50", "p99", "hand-offs/s", "longest wait"
    )
}

/// One hand-off run as the terminal shows it.
pub fn hand_off_line(r: &HandOffResult) -> String {
    format!(
        "{:<11} {:<26} {:>7} {:>10} {:>10} {:>12.0} {:>10.1} ms",
        r.backend,
        r.implementation,
        r.waiters,
        micros(r.gap.p50_us),
        micros(r.gap.p99_us),
        r.hand_offs_per_sec,
        r.longest_wait_ms
    )
}

/// distlock's PostgreSQL hand-off against the server's own
/// `pg_advisory_lock` wait, per number of waiters, as one sentence.
pub fn hand_off_against_baseline(hand_offs: &[HandOffResult]) -> Option<String> {
    let mut parts = Vec::new();
    for base in hand_offs
        .iter()
        .filter(|h| h.backend == POSTGRES && h.implementation == HAND_OFF_PG_BLOCKING)
    {
        let Some(ours) = hand_offs.iter().find(|h| {
            h.backend == POSTGRES && h.implementation == HAND_OFF_OWN && h.waiters == base.waiters
        }) else {
            continue;
        };
        if base.gap.p50_us <= 0.0 {
            continue;
        }
        let mut part = format!(
            "{} waiters: distlock {} against pg_advisory_lock's {} ({:.2}×)",
            base.waiters,
            micros(ours.gap.p50_us),
            micros(base.gap.p50_us),
            ours.gap.p50_us / base.gap.p50_us
        );
        if base.waiters == 2
            && let Some(shared) = hand_offs.iter().find(|h| {
                h.backend == POSTGRES && h.implementation == HAND_OFF_SHARED && h.waiters == 2
            })
        {
            let _ = write!(
                part,
                "; two tasks sharing one distlock client {} ({:.2}×)",
                micros(shared.gap.p50_us),
                shared.gap.p50_us / base.gap.p50_us
            );
        }
        parts.push(part);
    }
    if parts.is_empty() {
        None
    } else {
        Some(format!(
            "PostgreSQL hand-off p50 against the server's own blocking wait: {}.",
            parts.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::Latency;

    #[test]
    fn numbers_read_well() {
        assert_eq!(count(1_000_000.0), "1,000,000");
        assert_eq!(count(999.4), "999");
        assert_eq!(micros(0.0), "–");
        assert_eq!(micros(218.4), "218 µs");
        assert_eq!(micros(12_100.0), "12.1 ms");
        assert_eq!(bytes(249.1), "249 B");
        assert_eq!(bytes(1.2 * 1024.0 * 1024.0), "1.2 MiB");
    }

    #[test]
    fn the_cycle_table_puts_implementations_side_by_side_per_task_count() {
        let row = |implementation: &str, tasks, rounds: &[f64]| {
            let rounds: Vec<CycleResult> = rounds
                .iter()
                .map(|&ops| CycleResult {
                    implementation: implementation.to_owned(),
                    backend: "Redis".to_owned(),
                    tasks,
                    ops_per_sec: ops,
                    client_cpu_us: ops / 1000.0,
                    server_cpu_us: Some(2.0),
                    latency: Latency {
                        samples: 1,
                        p50_us: 200.0,
                        p99_us: 400.0,
                        max_us: 500.0,
                    },
                    ..CycleResult::default()
                })
                .collect();
            CycleResult::median_of(&rounds).expect("rounds")
        };
        let table = cycle_table(&[
            row("raw", 1, &[3000.0, 2000.0, 4000.0]),
            row("raw", 64, &[50_000.0]),
            row("distlock", 1, &[2500.0, 2600.0]),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert_eq!(
            lines[2],
            "| Redis | 1 | raw | 3,000 | 2,000–4,000 | 3.0 µs | 2.0 µs | 200 µs | 400 µs |",
            "{table}"
        );
        assert!(
            lines[3].starts_with("| Redis | 1 | distlock | 2,500 | 2,500–2,600 | 2.5 µs |"),
            "{table}"
        );
        assert!(
            lines[4].starts_with("| Redis | 64 | raw | 50,000 | – |"),
            "{table}"
        );
    }

    #[test]
    fn pg_hand_off_is_set_against_pg_advisory_lock() {
        let row = |implementation: &str, waiters, p50_us| HandOffResult {
            backend: POSTGRES.to_owned(),
            implementation: implementation.to_owned(),
            waiters,
            hold_ms: 1.0,
            hand_offs_per_sec: 1.0,
            longest_wait_ms: 1.0,
            gap: Latency {
                samples: 1,
                p50_us,
                p99_us: p50_us,
                max_us: p50_us,
            },
        };
        assert_eq!(
            hand_off_against_baseline(&[
                row(HAND_OFF_SHARED, 2, 150.0),
                row(HAND_OFF_OWN, 2, 240.0),
                row(HAND_OFF_PG_BLOCKING, 2, 120.0),
            ])
            .as_deref(),
            Some(
                "PostgreSQL hand-off p50 against the server's own blocking wait: \
                 2 waiters: distlock 240 µs against pg_advisory_lock's 120 µs (2.00×); \
                 two tasks sharing one distlock client 150 µs (1.25×)."
            )
        );
        assert_eq!(
            hand_off_against_baseline(&[row(HAND_OFF_OWN, 2, 1.0)]),
            None
        );
    }

    #[test]
    fn topology_rows_are_compared_with_one_server() {
        let row = |implementation: &str, tasks, p50_us, ops_per_sec| CycleResult {
            implementation: implementation.to_owned(),
            backend: "Redis".to_owned(),
            tasks,
            ops_per_sec,
            latency: Latency {
                samples: 1,
                p50_us,
                p99_us: p50_us,
                max_us: p50_us,
            },
            ..CycleResult::default()
        };
        let text = topology_ratios(&[
            row(ONE_SERVER, 1, 200.0, 5000.0),
            row(ONE_SERVER, 64, 1000.0, 40_000.0),
            row("Redlock, 3 servers", 1, 500.0, 2000.0),
            row("Redlock, 3 servers", 64, 4000.0, 10_000.0),
        ]);
        assert_eq!(
            text,
            "In this run: Redis Redlock, 3 servers: p50 at 1 task 2.50× one server's, \
             cycles/s at 64 tasks 0.25×.\n"
        );
        assert_eq!(
            topology_ratios(&[row("Redlock, 3 servers", 1, 1.0, 1.0)]),
            ""
        );
        assert_eq!(spread(&[22, 19, 23]), "22 / 19 / 23");
    }
}
