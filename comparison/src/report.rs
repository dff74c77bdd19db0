//! The report: a side-by-side table for the terminal, and Markdown with SVG
//! charts (plotters) under `target/comparison/`.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::cyclers::POSTGRES;
use crate::results::{CycleResult, HandOffResult, Results};

/// The row section 6 compares the others with.
const ONE_SERVER: &str = "RedisLock, 1 server";

/// Section 2's rows: distlock, each waiter its own client.
pub const HAND_OFF_OWN: &str = "distlock";
/// Section 2's rows: distlock, the two waiters are tasks sharing one client.
pub const HAND_OFF_SHARED: &str = "distlock, 1 shared client";
/// Section 2's PostgreSQL baseline: each waiter a session blocked in the
/// server's own `pg_advisory_lock`.
pub const HAND_OFF_PG_BLOCKING: &str = "pg_advisory_lock";

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

/// One line of a chart with a spread at each point: its legend and its
/// points as (x, median, min, max).
pub type SpreadSeries = (String, Vec<(f64, f64, f64, f64)>);

/// Panels side by side (one per title), each with logarithmic axes and
/// its series drawn as lines through the medians with a vertical bar from
/// min to max at every point; the series of a panel are moved apart a
/// little along x so that their bars do not hide each other.
pub fn spread_chart(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    panels: &[(String, Vec<SpreadSeries>)],
) -> anyhow::Result<()> {
    let width = 560 * panels.len().max(1) as u32;
    let root = SVGBackend::new(path, (width, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(plot_error)?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for ((panel_title, series), area) in panels.iter().zip(areas) {
        let plain: Vec<Series> = series
            .iter()
            .map(|(name, points)| {
                let mut all: Vec<(f64, f64)> = Vec::new();
                for &(x, _, lo, hi) in points {
                    all.push((x, lo.max(1e-9)));
                    all.push((x, hi.max(1e-9)));
                }
                (name.clone(), all)
            })
            .collect();
        let (x0, x1, y0, y1) = bounds(&plain);
        let mut chart = ChartBuilder::on(&area)
            .caption(panel_title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(75)
            .build_cartesian_2d(
                (x0 / 1.6..x1 * 1.6).log_scale(),
                (y0 / 1.5..y1 * 3.0).log_scale(),
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
        let n = series.len().max(1) as f64;
        for (i, (name, points)) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            // Dodge: up to ±12 % along the (logarithmic) x axis.
            let dodge = 1.0 + 0.24 * ((i as f64 + 0.5) / n - 0.5);
            let moved: Vec<(f64, f64, f64, f64)> = points
                .iter()
                .map(|&(x, mid, lo, hi)| (x * dodge, mid, lo, hi))
                .collect();
            chart
                .draw_series(LineSeries::new(
                    moved.iter().map(|&(x, mid, _, _)| (x, mid)),
                    color.stroke_width(2),
                ))
                .map_err(plot_error)?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(
                    moved
                        .iter()
                        .map(|&(x, mid, _, _)| Circle::new((x, mid), 3, color.filled())),
                )
                .map_err(plot_error)?;
            for &(x, _, lo, hi) in &moved {
                let (lo, hi) = (lo.max(1e-9), hi.max(1e-9));
                let cap = 1.025;
                for segment in [
                    vec![(x, lo), (x, hi)],
                    vec![(x / cap, lo), (x * cap, lo)],
                    vec![(x / cap, hi), (x * cap, hi)],
                ] {
                    chart
                        .draw_series(std::iter::once(PathElement::new(
                            segment,
                            color.stroke_width(1),
                        )))
                        .map_err(plot_error)?;
                }
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

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

    let ran = |section: &str| r.sections.iter().any(|s| s == section);
    if ran("cycles") {
        cycles_section(&mut md, r);
    }
    if ran("hand-off") {
        hand_off_section(&mut md, r);
    }
    if ran("hold") {
        hold_section(&mut md, r);
    }
    if ran("booking") {
        booking_section(&mut md, r);
    }
    if ran("topologies") {
        topology_section(&mut md, r);
    }
    md
}

fn cycles_section(md: &mut String, r: &Results) {
    let _ = writeln!(
        md,
        "## 1 and 5. Lock cycle (acquire + release), uncontended\n"
    );
    let _ = writeln!(
        md,
        "Each task acquires and releases a name of its own, back to back; every cycle is timed. \
         Measured in {rounds} round{s} of {secs} s per run (after a warm-up): in each round every implementation ran once per task count, \
         interleaved (at 1 task: every implementation one after the other, then at 16 tasks, …), so that drift on the machine hits all alike. \
         A row gives the median round's cycles/s with the min–max over the rounds, the median CPU per cycle, and that median round's p50/p99. \
         CPU per cycle is CPU time over the measured window from `/proc/<pid>/stat`, divided by the cycles counted: the client is this process \
         (all implementations run in it, one at a time); the server is redis-server for Redis rows and the postmaster with all its backends for PostgreSQL rows.\n",
        rounds = r.rounds,
        s = if r.rounds == 1 { "" } else { "s" },
        secs = r.cycle_secs,
    );
    let _ = writeln!(
        md,
        "`raw` rows do the same commands with the bare client (Redis: `SET NX PX` + compare-delete script on one multiplexed connection; \
         PostgreSQL: `pg_try_advisory_lock` + `pg_advisory_unlock` on a sqlx pool with as many connections as tasks, without sqlx's ping on checkout) \
         — the difference is the library's overhead (fencing token, server-side TTL, wake-ups). \
         `no wake-ups` / `no NOTIFY` rows are distlock with waiters woken by backoff only: its release then sends no `PUBLISH` / `pg_notify`.\n"
    );
    let _ = writeln!(
        md,
        "The peers, each in its best documented configuration for this cycle: \
         `rslock` 0.10 — `LockManager::new` with the one server's URL, as its README shows (one multiplexed connection per server, kept and reused; \
         its retry settings only matter when a lock is held, never here), `lock` + `unlock`; \
         `distributed-lock` 0.2 on Redis — `RedisLockProvider::builder().url(..).expiry(30 s)` (one fred client; its defaults otherwise: \
         minimum validity 90 % of the expiry, extension every 10 s by a background task per held lock, which the crate always starts), `try_acquire` + `release`; \
         `distributed-lock` 0.2 on PostgreSQL — session advisory locks (its default, like ours) on a sqlx 0.8 pool passed in, \
         with as many connections as ours and **without sqlx's ping on every checkout** (`test_before_acquire(false)`: \
         the raw row and distlock's own pool do not ping either, so the comparison is like for like), `try_acquire` + `release`.\n"
    );
    md.push_str(&cycle_table(&r.cycles));
    for left in &r.peers_left_out {
        let _ = writeln!(md, "\nNot in the run: {left}");
    }
    md.push_str("\n![cycle throughput](cycle_throughput.svg)\n\n");
}

fn hand_off_section(md: &mut String, r: &Results) {
    let _ = writeln!(md, "## 2. Hand-off under contention\n");
    let _ = writeln!(
        md,
        "Waiters take turns on one name, each holding it {} ms. \
         Hand-off = from one holder's `release` call to the next holder's `acquire` returning. \
         `{HAND_OFF_SHARED}`: two tasks of one process share one distlock client; `{HAND_OFF_OWN}`: each waiter has a client of its own, \
         as separate processes would. distlock's defaults: Redis wakes waiters by pub/sub, PostgreSQL by LISTEN/NOTIFY. \
         `{HAND_OFF_PG_BLOCKING}` is PostgreSQL's own hand-off, the baseline: each waiter a session of its own, blocked in `SELECT pg_advisory_lock(k)` \
         until the holder's `pg_advisory_unlock(k)` — the server wakes the next session itself, measured the same way.\n",
        r.hand_offs.first().map_or(1.0, |h| h.hold_ms)
    );
    md.push_str("| backend | implementation | waiters | hand-off p50 | p99 | hand-offs/s | longest wait |\n|---|---|---|---|---|---|---|\n");
    for h in &r.hand_offs {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {:.0} | {:.1} ms |",
            h.backend,
            h.implementation,
            h.waiters,
            micros(h.gap.p50_us),
            micros(h.gap.p99_us),
            h.hand_offs_per_sec,
            h.longest_wait_ms
        );
    }
    if let Some(line) = hand_off_against_baseline(&r.hand_offs) {
        let _ = writeln!(md, "\n{line}");
    }
    md.push_str("\n![hand-off](hand_off.svg)\n\n");
}

fn hold_section(md: &mut String, r: &Results) {
    let _ = writeln!(md, "## 3. The cost of holding locks\n");
    let _ = writeln!(
        md,
        "K locks taken and held while the server is measured. PostgreSQL: the client backends the lock client adds (`pg_stat_activity`; one per held lock — \
         its LISTEN connection opens only when a waiter waits, and nobody waits here) \
         and the growth of all backends' RSS from /proc (and of their private memory, which excludes shared pages); \
         Redis: `connected_clients` and the growth of `INFO memory used_memory` (each distlock lock is a key plus \
         its fencing-counter key), at every K listed (taken through one client, up to 256 acquires in flight) and, from the capacity run below, \
         at its K; the chart has a point at each measured K. PostgreSQL stops below its `max_connections`, so its K stay small.\n"
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
}

fn booking_section(md: &mut String, r: &Results) {
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
}

fn topology_section(md: &mut String, r: &Results) {
    let _ = writeln!(
        md,
        "## 6. Redlock and Redis Cluster against one server (lock cycle, uncontended)\n"
    );
    let _ = writeln!(
        md,
        "The cycle of section 1 (each task acquires and releases a name of its own, back to back; same tasks, same measuring code), \
         through distlock with its defaults (wake-ups on), one round, on fresh servers started for this section ({:.1} s to start 5 servers and form the cluster; \
         with several servers only the client's CPU per cycle is given): \
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
