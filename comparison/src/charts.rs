//! The SVG charts beside `report.md`: which numbers of a run go into which
//! chart. Only the charts of the sections that ran are written.

use std::path::Path;

use plotters::prelude::SeriesLabelPosition;

use crate::cyclers::{POSTGRES, REDIS};
use crate::plot::{self, Series, SpreadSeries};
use crate::report;
use crate::results::{CycleResult, Results};

/// The chart files, by the section they belong to.
pub const CYCLES: &str = "cycle_throughput.svg";
/// See [`CYCLES`].
pub const TOPOLOGIES: &str = "topology_throughput.svg";
/// See [`CYCLES`].
pub const HAND_OFF: &str = "hand_off.svg";
/// See [`CYCLES`].
pub const HOLD_COST: &str = "hold_cost.svg";
/// See [`CYCLES`].
pub const BOOKING: &str = "booking.svg";

/// Writes the charts of the sections `r` has numbers for into `out`.
pub fn write_all(out: &Path, r: &Results) -> anyhow::Result<()> {
    if !r.cycles.is_empty() {
        let panels: Vec<(String, Vec<SpreadSeries>)> = [REDIS, POSTGRES]
            .into_iter()
            .map(|backend| (backend.to_owned(), spread_series(&r.cycles, backend)))
            .filter(|(_, series)| !series.is_empty())
            .collect();
        plot::spread_chart(
            &out.join(CYCLES),
            &format!(
                "Lock cycles/s (acquire + release), median of {} round{}; bars: min–max",
                r.rounds,
                if r.rounds == 1 { "" } else { "s" }
            ),
            "concurrent tasks",
            "cycles / s",
            &panels,
        )?;
    }
    if !r.topologies.is_empty() {
        plot::log_log_chart(
            &out.join(TOPOLOGIES),
            "distlock cycles/s: one server, Redlock, Redis Cluster (servers on one CPU)",
            "concurrent tasks",
            "cycles / s",
            &report::throughput_series(&r.topologies),
            SeriesLabelPosition::UpperLeft,
        )?;
    }
    if !r.hand_offs.is_empty() {
        hand_off(out, r)?;
    }
    if !r.holds.is_empty() || !r.capacity.is_empty() {
        hold_cost(out, r)?;
    }
    if !r.booking.is_empty() {
        booking(out, r)?;
    }
    Ok(())
}

/// One series per implementation of `backend`: (tasks, median, min, max).
fn spread_series(cycles: &[CycleResult], backend: &str) -> Vec<SpreadSeries> {
    let mut series: Vec<SpreadSeries> = Vec::new();
    for c in cycles.iter().filter(|c| c.backend == backend) {
        let point = (
            c.tasks as f64,
            c.ops_per_sec,
            c.ops_per_sec_min,
            c.ops_per_sec_max,
        );
        match series.iter_mut().find(|(n, _)| *n == c.implementation) {
            Some((_, points)) => points.push(point),
            None => series.push((c.implementation.clone(), vec![point])),
        }
    }
    series
}

fn hand_off(out: &Path, r: &Results) -> anyhow::Result<()> {
    let mut series: Vec<Series> = Vec::new();
    let mut rows: Vec<(&str, &str)> = Vec::new();
    for h in &r.hand_offs {
        if !rows.contains(&(h.backend.as_str(), h.implementation.as_str())) {
            rows.push((&h.backend, &h.implementation));
        }
    }
    for (backend, implementation) in rows {
        for (what, p99) in [("p50", false), ("p99", true)] {
            let points = r
                .hand_offs
                .iter()
                .filter(|h| h.backend == backend && h.implementation == implementation)
                .map(|h| {
                    let y = if p99 { h.gap.p99_us } else { h.gap.p50_us };
                    (h.waiters as f64, y)
                })
                .filter(|p| p.1 > 0.0)
                .collect();
            series.push((format!("{backend} {implementation} {what}"), points));
        }
    }
    plot::log_log_chart(
        &out.join(HAND_OFF),
        "Hand-off: release → next waiter's acquire (1 ms hold)",
        "waiters on one name",
        "µs",
        &series,
        SeriesLabelPosition::UpperLeft,
    )
}

fn hold_cost(out: &Path, r: &Results) -> anyhow::Result<()> {
    let mut series: Vec<Series> = Vec::new();
    for backend in [REDIS, POSTGRES] {
        let mut points: Vec<(f64, f64)> = r
            .holds
            .iter()
            .filter(|h| h.backend == backend && h.held > 0)
            .map(|h| (h.held as f64, h.memory_bytes as f64 / 1024.0 / 1024.0))
            .collect();
        for c in r.capacity.iter().filter(|c| c.backend == backend) {
            if let Some(b) = c.bytes_per_lock {
                points.push((c.held as f64, b * c.held as f64 / 1024.0 / 1024.0));
            }
        }
        points.retain(|p| p.1 > 0.0);
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        if backend == POSTGRES {
            let private = r
                .holds
                .iter()
                .filter(|h| h.backend == backend && h.held > 0)
                .filter_map(|h| Some((h.held as f64, h.private_bytes? as f64 / 1024.0 / 1024.0)))
                .filter(|p| p.1 > 0.0)
                .collect();
            series.push(("PostgreSQL (backends' private memory)".to_owned(), private));
        }
        let label = if backend == POSTGRES {
            "PostgreSQL (backends' RSS; ends at its limit)"
        } else {
            "Redis (used_memory)"
        };
        series.push((label.to_owned(), points));
    }
    plot::log_log_chart(
        &out.join(HOLD_COST),
        "Server memory for K locks held at once (a point per measured K)",
        "locks held",
        "MiB",
        &series,
        SeriesLabelPosition::LowerRight,
    )
}

fn booking(out: &Path, r: &Results) -> anyhow::Result<()> {
    let mut series: Vec<Series> = Vec::new();
    for b in &r.booking {
        let name = format!("K locks in {}", b.locks_in);
        let point = (b.requested as f64, b.tps);
        match series.iter_mut().find(|(n, _)| *n == name) {
            Some((_, points)) => points.push(point),
            None => series.push((name, vec![point])),
        }
    }
    plot::linear_chart(
        &out.join(BOOKING),
        "Booking transactions/s on PostgreSQL while K locks are held",
        "K long-held locks",
        "bookings / s",
        &series,
        SeriesLabelPosition::LowerLeft,
    )
}
