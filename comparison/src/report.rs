//! The report: a side-by-side table for the terminal, and Markdown with SVG
//! charts (plotters) under `target/comparison/`.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::results::{CycleResult, Results};

/// The row section 6 compares the others with.
const ONE_SERVER: &str = "RedisLock, 1 server";

/// Line colours that stay apart on white.
const COLORS: [RGBColor; 9] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
    RGBColor(0, 0, 0),
];

/// One line of a chart: its legend and its points.
pub type Series = (String, Vec<(f64, f64)>);

/// A chart with logarithmic axes, written to `path` as SVG.
pub fn log_log_chart(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
    legend: SeriesLabelPosition,
) -> anyhow::Result<()> {
    let (x0, x1, y0, y1) = bounds(series);
    let root = SVGBackend::new(path, (860, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(
            (x0 / 1.5..x1 * 1.5).log_scale(),
            (y0 / 2.0..y1 * 2.0).log_scale(),
        )
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|x| short(*x))
        .y_label_formatter(&|y| short(*y))
        .draw()
        .map_err(plot_error)?;
    draw_lines(&mut chart, series, legend)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

/// A chart with linear axes starting at zero, written to `path` as SVG.
pub fn linear_chart(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
    legend: SeriesLabelPosition,
) -> anyhow::Result<()> {
    let (_, x1, _, y1) = bounds(series);
    let root = SVGBackend::new(path, (860, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..x1 * 1.05, 0.0..y1 * 1.15)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|x| short(*x))
        .y_label_formatter(&|y| short(*y))
        .draw()
        .map_err(plot_error)?;
    draw_lines(&mut chart, series, legend)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

fn draw_lines<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    series: &[Series],
    legend: SeriesLabelPosition,
) -> anyhow::Result<()>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(plot_error)?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(plot_error)?;
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    Ok(())
}

fn bounds(series: &[Series]) -> (f64, f64, f64, f64) {
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return (1.0, 10.0, 1.0, 10.0);
    }
    (
        x0.max(1e-9),
        x1.max(x0 * 2.0),
        y0.max(1e-9),
        y1.max(y0 * 2.0),
    )
}

/// An axis label: no needless decimals.
fn short(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.round() {
        count(v)
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn plot_error<E: std::fmt::Display>(error: E) -> anyhow::Error {
    anyhow::anyhow!("plotting: {error}")
}

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
fn topology_ratios(cycles: &[CycleResult]) -> String {
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

/// The side-by-side lock-cycle table (Markdown; also readable in a terminal).
pub fn cycle_table(cycles: &[CycleResult]) -> String {
    let mut tasks: Vec<usize> = cycles.iter().map(|c| c.tasks).collect();
    tasks.sort_unstable();
    tasks.dedup();
    let mut rows: Vec<(String, String)> = Vec::new();
    for c in cycles {
        let key = (c.backend.clone(), c.implementation.clone());
        if !rows.contains(&key) {
            rows.push(key);
        }
    }
    let mut out = String::from("| backend | implementation |");
    for t in &tasks {
        let _ = write!(
            out,
            " {t} task{}: p50 / p99 / cycles/s |",
            if *t == 1 { "" } else { "s" }
        );
    }
    out.push_str("\n|---|---|");
    for _ in &tasks {
        out.push_str("---|");
    }
    out.push('\n');
    for (backend, implementation) in rows {
        let _ = write!(out, "| {backend} | {implementation} |");
        for t in &tasks {
            match cycles.iter().find(|c| {
                c.backend == backend && c.implementation == implementation && c.tasks == *t
            }) {
                Some(c) => {
                    let _ = write!(
                        out,
                        " {} / {} / {} |",
                        micros(c.latency.p50_us),
                        micros(c.latency.p99_us),
                        count(c.ops_per_sec)
                    );
                }
                None => out.push_str(" – |"),
            }
        }
        out.push('\n');
    }
    out
}

/// The whole Markdown report.
pub fn markdown(r: &Results) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# distlock: Redis vs PostgreSQL, measured side by side\n"
    );
    let _ = writeln!(
        md,
        "Run `{}` ({} mode) started {} UTC on {} CPU(s) ({}); servers: {}. \
         Servers {} the client (CPU 1). Load average before the run: {}. \
         All servers are throwaway instances started by the run (distlock-testkit; PostgreSQL with fsync off). \
         The custom measurements took {:.0} s.\n",
        r.command,
        r.mode,
        r.started,
        r.cpus,
        r.cpu_model,
        r.servers.join(", "),
        if r.pinned {
            "pinned to CPU 0, apart from"
        } else {
            "not pinned apart from"
        },
        r.load_before,
        r.wall_secs,
    );
    let _ = writeln!(
        md,
        "Criterion's HTML report of the same cycles is under `target/criterion/report/index.html`; the raw numbers of this report are in `results.json` beside it.\n"
    );

    let _ = writeln!(
        md,
        "## 1 and 5. Lock cycle (acquire + release), uncontended\n"
    );
    let _ = writeln!(
        md,
        "Each task acquires and releases a name of its own, back to back; every cycle is timed. \
         `raw` rows do the same commands with the bare client (Redis: `SET NX PX` + compare-delete script on one multiplexed connection; \
         PostgreSQL: `pg_try_advisory_lock` + `pg_advisory_unlock` on a pooled connection with as many connections as tasks) \
         — the difference is the library's overhead (fencing token, server-side TTL, wake-ups). \
         `no wake-ups` / `no NOTIFY` rows are distlock with waiters woken by backoff only: its release then sends no `PUBLISH` / `pg_notify`. Peers: `rslock` (Redlock, one server) and \
         the `distributed-lock` crate (Redis via fred; PostgreSQL via sqlx 0.8, given a pool as large as ours).\n"
    );
    md.push_str(&cycle_table(&r.cycles));
    for left in &r.peers_left_out {
        let _ = writeln!(md, "\nNot in the run: {left}");
    }
    md.push_str("\n![cycle throughput](cycle_throughput.svg)\n\n");

    let _ = writeln!(md, "## 2. Hand-off under contention\n");
    let _ = writeln!(
        md,
        "N waiters (each its own client, as separate processes would be) take turns on one name, each holding it {} ms. \
         Hand-off = from one holder's `release` call to the next holder's `acquire` returning. \
         distlock's defaults: Redis wakes waiters by pub/sub, PostgreSQL by LISTEN/NOTIFY.\n",
        r.hand_offs.first().map_or(1.0, |h| h.hold_ms)
    );
    md.push_str("| backend | waiters | hand-off p50 | p99 | hand-offs/s | longest wait |\n|---|---|---|---|---|---|\n");
    for h in &r.hand_offs {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.0} | {:.1} ms |",
            h.backend,
            h.waiters,
            micros(h.gap.p50_us),
            micros(h.gap.p99_us),
            h.hand_offs_per_sec,
            h.longest_wait_ms
        );
    }
    md.push_str("\n![hand-off](hand_off.svg)\n\n");

    let _ = writeln!(md, "## 3. The cost of holding locks\n");
    let _ = writeln!(
        md,
        "K locks taken and held while the server is measured. PostgreSQL: the client backends the lock client adds (`pg_stat_activity`; one per held lock — \
         its LISTEN connection opens only when a waiter waits, and nobody waits here) \
         and the growth of all backends' RSS from /proc (and of their private memory, which excludes shared pages); \
         Redis: `connected_clients` and the growth of `INFO memory used_memory` (each distlock lock is a key plus \
         its fencing-counter key).\n"
    );
    md.push_str("| backend | K held | server connections | memory growth | per lock | private (PG) per lock | time to take |\n|---|---|---|---|---|---|---|\n");
    for h in &r.holds {
        let _ = writeln!(
            md,
            "| {} | {}{} | {} | {} | {} | {} | {:.3} s |",
            h.backend,
            count(h.held as f64),
            if h.held < h.requested {
                format!(" of {}", h.requested)
            } else {
                String::new()
            },
            h.server_connections,
            bytes(h.memory_bytes as f64),
            bytes(h.bytes_per_lock),
            h.private_bytes
                .map_or("–".to_owned(), |p| bytes(p as f64 / h.held.max(1) as f64)),
            h.acquire_secs
        );
    }
    md.push_str("\n### Capacity\n\n");
    for c in &r.capacity {
        let _ = writeln!(
            md,
            "- **{}** — {}: **{} locks** held, taken in {:.2} s{}{}.",
            c.backend,
            c.how,
            count(c.held as f64),
            c.acquire_secs,
            c.release_secs
                .map_or(String::new(), |s| format!(", released in {s:.2} s")),
            c.bytes_per_lock.map_or(String::new(), |b| format!(
                ", {} of server memory per lock",
                bytes(b)
            )),
        );
        if let Some(e) = &c.error {
            let _ = writeln!(md, "  - stopped by: `{e}`");
        }
        for p in &c.probes {
            let _ = writeln!(md, "  - {}: `{}`", p.what, p.outcome);
        }
    }
    md.push_str("\n![hold cost](hold_cost.svg)\n\n");

    let _ = writeln!(md, "## 4. The database's own work while K locks are held\n");
    let _ = writeln!(md, "{}\n", r.booking_setup);
    md.push_str("| K locks asked | locks in | held | bookings/s | p50 | p99 | failed bookings | first error |\n|---|---|---|---|---|---|---|---|\n");
    for b in &r.booking {
        let error = b
            .first_error
            .clone()
            .or_else(|| b.lock_error.clone().map(|e| format!("(lock) {e}")))
            .unwrap_or_default();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} |",
            b.requested,
            b.locks_in,
            b.held,
            b.tps,
            micros(b.latency.p50_us),
            micros(b.latency.p99_us),
            b.errors,
            if error.is_empty() {
                String::new()
            } else {
                format!("`{}`", error.replace('|', "/"))
            }
        );
    }
    md.push_str("\n![booking](booking.svg)\n\n");

    let _ = writeln!(
        md,
        "## 6. Redlock and Redis Cluster against one server (lock cycle, uncontended)\n"
    );
    let _ = writeln!(
        md,
        "The cycle of section 1 (each task acquires and releases a name of its own, back to back; same tasks, same measuring code), \
         through distlock with its defaults (wake-ups on), on fresh servers started for this section ({:.1} s to start 5 servers and form the cluster): \
         `RedisLock, 1 server` is `distlock_redis::RedisLock` on one redis-server, measured here beside the others as their baseline; \
         `Redlock, N servers` is `distlock_redis::Redlock` over N independent redis-servers (an acquire sends `SET NX PX` to all N at once and, \
         once a majority granted, raises the fencing counter on that majority — a second round trip; a release deletes on every node and \
         returns once a majority did); `Redis Cluster` is `RedisLock::connect_cluster` on a cluster of 3 masters without replicas \
         (each acquire is one Lua script on the master of the name's slot; the cluster client keeps one multiplexed connection per master, \
         the one-server client one connection). \
         **All servers — the Redlock's 3 or 5 nodes and the cluster's 3 masters — share one core (CPU 0) on this VM, the client runs on CPU 1:** \
         the nodes cannot work in parallel as they would on separate machines, so the Redlock and cluster throughput here is a lower bound, \
         and their latency includes no network (loopback only; on a network every Redlock step waits for the slowest node of its majority).\n",
        r.topology_start_secs
    );
    md.push_str(&cycle_table(&r.topologies));
    md.push('\n');
    md.push_str(&topology_ratios(&r.topologies));
    if !r.cluster_spread.is_empty() {
        md.push_str("\nWhere the cluster rows' names land (the lock key's slot, then the master serving it per `CLUSTER SLOTS`; names per master):\n\n");
        for s in &r.cluster_spread {
            let _ = writeln!(
                md,
                "- {} at {} task{}: {}",
                s.implementation,
                s.tasks,
                if s.tasks == 1 { "" } else { "s" },
                spread(&s.names_per_master)
            );
        }
    }
    md.push_str("\n![one server, Redlock, cluster](topology_throughput.svg)\n");
    md
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
    fn the_cycle_table_puts_tasks_side_by_side() {
        let row = |implementation: &str, tasks, ops| CycleResult {
            implementation: implementation.to_owned(),
            backend: "Redis".to_owned(),
            tasks,
            ops_per_sec: ops,
            latency: Latency {
                samples: 1,
                p50_us: 200.0,
                p99_us: 400.0,
                max_us: 500.0,
            },
        };
        let table = cycle_table(&[
            row("raw", 1, 3000.0),
            row("raw", 64, 50_000.0),
            row("distlock", 1, 2500.0),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(
            lines[2]
                .contains("| Redis | raw | 200 µs / 400 µs / 3,000 | 200 µs / 400 µs / 50,000 |"),
            "{table}"
        );
        assert!(lines[3].ends_with("| – |"), "{table}");
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
