//! A job that must run on one instance only: the nightly report.
//!
//! Every instance of a service wakes up on the same schedule and calls
//! `with_lock("job:nightly-report", ttl, wait, …)`. The one that gets the
//! lock runs the job, which takes longer than the TTL: `with_lock` renews
//! the lock in the background, and stops the work if the lock is lost
//! anyway. The others skip the round (`wait` = 0 gives them
//! `LockError::Timeout`). Each write of the report carries the lock's
//! fencing token, so a run that lost its lock cannot overwrite its
//! successor's work.
//!
//! ```sh
//! cargo run --example background_job -- --self-check                      # memory:, checks itself, exits
//! cargo run --example background_job -- --self-check --throwaway redis    # or postgres: a throwaway server
//! cargo run --example background_job -- --url redis://127.0.0.1:6379 --instances 5 --rounds 2
//! ```
//!
//! The instances are tasks of this process, each with its own connection
//! (`distlock::connect`), as separate processes would have. `--self-check`
//! asserts that exactly one instance ran each round with its lock renewed
//! throughout, then shows a run losing its lock mid-work (`Err(LockError::Lost)`):
//! its work is stopped, and the instance that took over finishes the report.
//! Against a server, every process there competes for the job's lock (that
//! is the point): run one self-check per server at a time.

mod report;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use distlock::{DistributedLock, DistributedLockExt, LockError, MemoryLock};
use tokio::sync::{Barrier, oneshot};
use tokio::task::JoinSet;

use report::{Done, Reports};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The lock every instance competes for.
const JOB: &str = "job:nightly-report";

/// Runs a job on exactly one of several instances (distlock's `with_lock`).
#[derive(Debug, Parser)]
#[command(name = "background_job")]
struct Args {
    /// Where the locks live: memory:, redis://host:port, postgres://user@host/db, …
    #[arg(long, default_value = "memory:", conflicts_with = "throwaway")]
    url: String,
    /// Start a throwaway server for the locks (stopped at exit); REDIS_URL or
    /// DATABASE_URL, when set, name an existing one instead.
    #[arg(long, value_enum)]
    throwaway: Option<Throwaway>,
    /// Instances competing for the job.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    instances: u16,
    /// Scheduled runs (all instances wake up together for each).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Lock TTL in milliseconds; renewed about every third of it.
    #[arg(long, default_value_t = 500)]
    ttl_ms: u64,
    /// How long the job works, in milliseconds (longer than the TTL, so
    /// renewal matters).
    #[arg(long, default_value_t = 1_200)]
    work_ms: u64,
    /// How long an instance waits for the job's lock, in milliseconds;
    /// 0: skip the round when another instance runs it.
    #[arg(long, default_value_t = 0)]
    wait_ms: u64,
    /// Check that exactly one instance ran each round, show a run that
    /// loses its lock, and exit non-zero on any surprise.
    #[arg(long)]
    self_check: bool,
}

/// A server to start for the run.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Throwaway {
    /// A redis-server on a free port.
    Redis,
    /// A PostgreSQL cluster in a temporary directory.
    Postgres,
}

/// What one instance did in one round.
#[derive(Debug)]
enum Outcome {
    /// Ran the job and finished the report.
    Ran(Done),
    /// Another instance held the lock: skipped.
    Busy,
    /// The lock was lost while working: the work was stopped.
    Lost,
    /// The report store refused a write: a newer holder had written.
    FencedOff(report::StaleFence),
    /// The lock server could not be reached: try at the next tick.
    Unavailable(LockError),
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Error> {
    if args.work_ms <= args.ttl_ms {
        eprintln!("note: --work-ms is not longer than --ttl-ms: renewal is not needed");
    }
    let url = match args.throwaway {
        None => args.url.clone(),
        // distlock-testkit, this repository's test helper, starts the server.
        Some(Throwaway::Redis) => distlock_testkit::redis_url()?,
        Some(Throwaway::Postgres) => distlock_testkit::database_url()?,
    };
    // Each instance connects on its own, as separate processes would.
    let mut instances = Vec::with_capacity(args.instances.into());
    for _ in 0..args.instances {
        instances.push(distlock::connect(&url).await?);
    }
    let scheme = url.split(':').next().unwrap_or_default();
    println!(
        "{} instances, {} rounds, {scheme} backend, TTL {} ms, work {} ms, wait {} ms",
        args.instances, args.rounds, args.ttl_ms, args.work_ms, args.wait_ms
    );
    let reports = Arc::new(Reports::default());
    let ttl = Duration::from_millis(args.ttl_ms);
    let work = Duration::from_millis(args.work_ms);
    let wait = Duration::from_millis(args.wait_ms);

    let mut last_fence = 0;
    for round in 1..=args.rounds {
        let outcomes = run_round(&instances, &reports, round, ttl, wait, work).await?;
        println!("round {round}:");
        let mut ran = 0;
        for (instance, outcome) in outcomes.iter().enumerate() {
            println!("  instance {instance}: {}", describe(outcome));
            match outcome {
                Outcome::Ran(Done::Ran { fence, took }) => {
                    ran += 1;
                    if args.self_check && (*fence <= last_fence || *took <= ttl) {
                        return Err(format!(
                            "round {round}: fence {fence} after {last_fence}, work {took:?} vs TTL {ttl:?}"
                        )
                        .into());
                    }
                    last_fence = *fence;
                }
                Outcome::Ran(Done::AlreadyDone) | Outcome::Busy => {}
                other if args.self_check => {
                    return Err(format!("round {round}, instance {instance}: {other:?}").into());
                }
                _ => {}
            }
        }
        let report = reports.get(round);
        if let Some(report) = report {
            println!(
                "  report: {} parts, fencing token {}, {}",
                report.parts,
                report.fence,
                if report.done { "done" } else { "unfinished" }
            );
        }
        if args.self_check && (ran != 1 || !report.is_some_and(|report| report.done)) {
            return Err(format!("round {round}: {ran} instances ran the job").into());
        }
    }
    if args.self_check {
        // The lost-lock scene needs a lock it can take away from its
        // holder: an in-process MemoryLock, whatever --url says.
        tokio::time::timeout(Duration::from_secs(30), lost_lock_scene(ttl, work))
            .await
            .map_err(|_| "the lost-lock scene did not end within 30 s")??;
        println!(
            "Self-check passed: one instance per round, renewed past the TTL; a lost lock stopped its work"
        );
    }
    Ok(())
}

/// All instances wake up for `round` at once; each tries the job.
async fn run_round(
    instances: &[Arc<dyn DistributedLock>],
    reports: &Arc<Reports>,
    round: u32,
    ttl: Duration,
    wait: Duration,
    work: Duration,
) -> Result<Vec<Outcome>, Error> {
    let start = Arc::new(Barrier::new(instances.len()));
    let mut tasks = JoinSet::new();
    for (instance, locks) in instances.iter().enumerate() {
        let (locks, reports, start) = (Arc::clone(locks), Arc::clone(reports), Arc::clone(&start));
        tasks.spawn(async move {
            start.wait().await;
            let outcome = run_job(locks.as_ref(), &reports, round, ttl, wait, work).await;
            (instance, outcome)
        });
    }
    let mut outcomes: Vec<Option<Outcome>> = instances.iter().map(|_| None).collect();
    // Bounded: a round takes about `work`; anything far beyond is a hang.
    let limit = wait + work * 4 + Duration::from_secs(10);
    while let Some(joined) = tokio::time::timeout(limit, tasks.join_next())
        .await
        .map_err(|_| format!("round {round} did not end within {limit:?}"))?
    {
        let (instance, outcome) = joined?;
        outcomes[instance] = Some(outcome?);
    }
    Ok(outcomes.into_iter().flatten().collect())
}

/// One instance's attempt at the job: this is the part to copy.
async fn run_job(
    locks: &dyn DistributedLock,
    reports: &Reports,
    round: u32,
    ttl: Duration,
    wait: Duration,
    work: Duration,
) -> Result<Outcome, LockError> {
    let result = locks
        .with_lock(JOB, ttl, wait, |lock| {
            report::nightly_report(reports, round, lock, work)
        })
        .await;
    Ok(match result {
        Ok(Ok(done)) => Outcome::Ran(done),
        // Our token was older than one the store had seen.
        Ok(Err(stale)) => Outcome::FencedOff(stale),
        // Another instance holds the lock: it is running the job.
        Err(LockError::Timeout) => Outcome::Busy,
        // The lock was taken away (expired during a stall, deleted, the
        // server lost it): `with_lock` stopped the work at its next await.
        // Whatever it wrote is fenced off once the next holder writes;
        // the next holder, or the next round, does the job.
        Err(LockError::Lost) => Outcome::Lost,
        // Try again at the next tick.
        Err(err) if err.is_retryable() => Outcome::Unavailable(err),
        // Invalid name, TTL or URL: a bug, not a condition to ride out.
        Err(err) => return Err(err),
    })
}

/// A holder's lock is taken away mid-work (as if an operator deleted the
/// key, or a stall let it expire): its renewal notices, `with_lock` stops
/// the work and says `Lost`, and a second instance finishes the report.
async fn lost_lock_scene(ttl: Duration, work: Duration) -> Result<(), Error> {
    println!("lost-lock scene (in-process MemoryLock):");
    let locks = MemoryLock::new();
    let reports = Arc::new(Reports::default());
    let round = 1;

    let (started, first_is_working) = oneshot::channel();
    let first = {
        let (locks, reports) = (locks.clone(), Arc::clone(&reports));
        tokio::spawn(async move {
            let result = locks
                .with_lock(JOB, ttl, Duration::ZERO, |lock| async move {
                    let _ = started.send(lock.fencing_token());
                    report::nightly_report(&reports, round, lock, work).await
                })
                .await;
            match result {
                Ok(Ok(done)) => Outcome::Ran(done),
                Ok(Err(stale)) => Outcome::FencedOff(stale),
                Err(LockError::Lost) => Outcome::Lost,
                Err(err) => Outcome::Unavailable(err),
            }
        })
    };
    let first_fence = first_is_working.await?;
    if !locks.expire_now(JOB) {
        return Err("the first instance should hold the job's lock".into());
    }
    let second = run_job(&locks, &reports, round, ttl, Duration::ZERO, work).await?;
    let first = first.await?;
    println!("  instance 0 (lock taken away): {}", describe(&first));
    println!("  instance 1 (took over):       {}", describe(&second));
    let Outcome::Ran(Done::Ran { fence, .. }) = second else {
        return Err(format!("the second instance should have run the job: {second:?}").into());
    };
    if !matches!(first, Outcome::Lost | Outcome::FencedOff(_)) {
        return Err(format!("the first instance should have been stopped: {first:?}").into());
    }
    match reports.get(round) {
        Some(report) if report.done && report.fence == fence && fence > first_fence => Ok(()),
        other => Err(format!("the report should be the second instance's: {other:?}").into()),
    }
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Ran(Done::Ran { fence, took }) => {
            format!("ran the job with fencing token {fence} in {took:.2?}")
        }
        Outcome::Ran(Done::AlreadyDone) => {
            "got the lock; report already done, nothing to do".into()
        }
        Outcome::Busy => "skipped: another instance holds the lock".into(),
        Outcome::Lost => "lost the lock mid-work: work stopped (Err(LockError::Lost))".into(),
        Outcome::FencedOff(stale) => format!("write refused: {stale}"),
        Outcome::Unavailable(err) => format!("lock server unavailable, retry next tick: {err}"),
    }
}
