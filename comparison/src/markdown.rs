//! `report.md`: the run's settings, then a section per part of the run
//! that ran, each with what was measured and how, its table and its chart.

use std::fmt::Write as _;

use crate::report::{
    HAND_OFF_OWN, HAND_OFF_PG_BLOCKING, HAND_OFF_SHARED, bytes, count, cycle_table,
    hand_off_against_baseline, micros, spread, topology_ratios,
};
use crate::results::Results;

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
         as separate processes would. distlock's defaults: Redis wakes waiters by pub/sub, PostgreSQL waits in the server's own lock queue (`pg_advisory_lock` under a `lock_timeout`, `WaitStrategy::Queue`) while the client can spare a connection, else by LISTEN/NOTIFY. \
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
