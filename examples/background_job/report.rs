//! The nightly report: the slow work the lock covers, and the store it
//! writes, which checks the lock's fencing token on every write.
//!
//! The store is in memory to keep the example to one command; in a real
//! service it is a table with a `fence` column (see `distlock::fencing`).
//! It also records which rounds are done: the lock stops two instances
//! from running the job *at the same time*, the record stops a second
//! instance from running it *again* after the first has finished.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use distlock::LockContext;

/// How many parts the report is written in (one write per part).
const PARTS: u32 = 4;

/// The reports written so far, by round.
#[derive(Default)]
pub(crate) struct Reports {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The highest fencing token any write has come with.
    last_fence: u64,
    rounds: BTreeMap<u32, Report>,
}

/// One round's report.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Report {
    /// The fencing token of the run that wrote it.
    pub(crate) fence: u64,
    /// Parts written by that run.
    pub(crate) parts: u32,
    /// Whether that run finished it.
    pub(crate) done: bool,
}

/// A write came with an older fencing token than one the store has seen:
/// its writer's lock ran out and another instance has taken the job over.
#[derive(Debug)]
pub(crate) struct StaleFence {
    /// The token the write came with.
    pub(crate) fence: u64,
    /// The newest token seen.
    pub(crate) last: u64,
}

impl fmt::Display for StaleFence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fencing token {} is stale: the store has seen {}",
            self.fence, self.last
        )
    }
}

/// What a run of the job did, when it kept its lock throughout.
#[derive(Debug)]
pub(crate) enum Done {
    /// Wrote and finished the round's report.
    Ran {
        /// The fencing token it wrote with.
        fence: u64,
        /// How long the work took (longer than the TTL: renewal kept the lock).
        took: Duration,
    },
    /// Another instance had finished this round's report already.
    AlreadyDone,
}

impl Reports {
    /// The report of `round`, if one was started.
    pub(crate) fn get(&self, round: u32) -> Option<Report> {
        self.lock().rounds.get(&round).copied()
    }

    /// Records one part of `round`'s report, written under `fence`.
    ///
    /// One holder writes several times with the same token, so a write
    /// passes with a token equal to the newest seen (the single-write
    /// condition in `distlock::fencing` is a strict `fence < $2`).
    fn write_part(&self, round: u32, fence: u64) -> Result<(), StaleFence> {
        let mut inner = self.lock();
        inner.admit(fence)?;
        let report = inner.rounds.entry(round).or_insert(Report {
            fence,
            parts: 0,
            done: false,
        });
        if report.fence != fence {
            // A newer holder starts the report over.
            *report = Report {
                fence,
                parts: 0,
                done: false,
            };
        }
        report.parts += 1;
        Ok(())
    }

    /// Marks `round`'s report finished by the holder of `fence`.
    fn finish(&self, round: u32, fence: u64) -> Result<(), StaleFence> {
        let mut inner = self.lock();
        inner.admit(fence)?;
        let report = inner.rounds.entry(round).or_insert(Report {
            fence,
            parts: 0,
            done: false,
        });
        report.fence = fence;
        report.done = true;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every update below is a few plain assignments: nothing is left
        // half done by a panic elsewhere.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn admit(&mut self, fence: u64) -> Result<(), StaleFence> {
        if fence < self.last_fence {
            return Err(StaleFence {
                fence,
                last: self.last_fence,
            });
        }
        self.last_fence = fence;
        Ok(())
    }
}

/// The job: builds `round`'s report in parts over `work`, each part
/// written with the lock's fencing token.
///
/// It runs inside `with_lock`, which renews the lock while it runs and
/// drops this future at its next `.await` if the lock is lost.
pub(crate) async fn nightly_report(
    reports: &Reports,
    round: u32,
    lock: LockContext,
    work: Duration,
) -> Result<Done, StaleFence> {
    if reports.get(round).is_some_and(|report| report.done) {
        return Ok(Done::AlreadyDone);
    }
    let fence = lock.fencing_token();
    let started = Instant::now();
    for _ in 0..PARTS {
        // Querying and rendering: the slow part.
        tokio::time::sleep(work / PARTS).await;
        reports.write_part(round, fence)?;
    }
    reports.finish(round, fence)?;
    Ok(Done::Ran {
        fence,
        took: started.elapsed(),
    })
}
