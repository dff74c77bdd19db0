//! The rules: no two definitely-held intervals of a name overlap, and
//! fencing tokens rise per name in acquisition order.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use distlock_api::Instant;

use super::{Interval, Note, Op, OpId, Outcome, Report, Violation};

pub(super) fn check_ops(ops: &[Op], origin: Option<Instant>) -> Report {
    let checked_at = Instant::now();
    let mut report = Report {
        origin,
        ..Report::default()
    };
    let mut clients = HashSet::new();
    let mut by_name: BTreeMap<&str, Vec<Interval>> = BTreeMap::new();
    for (index, op) in ops.iter().enumerate() {
        let id = OpId(index);
        clients.insert(op.client);
        report.counts.ops += 1;
        match op.acquire_outcome {
            Some(Outcome::Ok) => report.counts.acquired += 1,
            Some(Outcome::Failed) => report.counts.failed += 1,
            Some(Outcome::Unknown) | None => {
                report.counts.unknown += 1;
                report.notes.push(Note::UnknownAcquire {
                    op: id,
                    name: op.name.clone(),
                });
            }
        }
        if op.acquire_outcome != Some(Outcome::Ok) {
            continue;
        }
        match op.release_outcome {
            Some(Outcome::Ok) => report.counts.released_ok += 1,
            Some(Outcome::Failed) => report.counts.released_lost += 1,
            Some(Outcome::Unknown) => {
                report.counts.unknown += 1;
                report.notes.push(Note::UnknownRelease {
                    op: id,
                    name: op.name.clone(),
                });
            }
            None if op.release_invoked.is_some() => {
                report.counts.unknown += 1;
                report.notes.push(Note::UnknownRelease {
                    op: id,
                    name: op.name.clone(),
                });
            }
            None => {}
        }
        if let Some(valid_until) = op.valid_until {
            match op.release_invoked {
                Some(release) if release > valid_until => {
                    report.counts.overruns += 1;
                    report.notes.push(Note::LeaseOverrun {
                        op: id,
                        name: op.name.clone(),
                        by: release.duration_since(valid_until),
                        never_released: false,
                    });
                }
                // Never released and past its validity by now: the client
                // kept it (or vanished) past its lease.
                None if valid_until < checked_at => {
                    report.counts.overruns += 1;
                    report.notes.push(Note::LeaseOverrun {
                        op: id,
                        name: op.name.clone(),
                        by: Duration::ZERO,
                        never_released: true,
                    });
                }
                Some(_) | None => {}
            }
        }
        match (op.held_interval(), op.fencing_token) {
            (Some((start, end)), Some(fencing_token)) => {
                by_name.entry(&op.name).or_default().push(Interval {
                    op: id,
                    client: op.client,
                    fencing_token,
                    start,
                    end,
                });
            }
            _ => report.notes.push(Note::ExpiredOnArrival {
                op: id,
                name: op.name.clone(),
            }),
        }
    }
    report.counts.clients = clients.len();
    for (name, mut intervals) in by_name {
        report.counts.intervals += intervals.len();
        // Acquisition order: the order of the intervals' starts.
        intervals.sort_by_key(|i| (i.start, i.op));
        let mut latest_end: Option<Interval> = None;
        for pair in intervals.windows(2) {
            let (earlier, later) = (pair[0], pair[1]);
            if later.fencing_token <= earlier.fencing_token {
                report.violations.push(Violation::TokenNotIncreasing {
                    name: name.to_owned(),
                    earlier,
                    later,
                });
            }
        }
        for interval in intervals {
            if let Some(open) = latest_end
                && interval.start < open.end
            {
                report.violations.push(Violation::Overlap {
                    name: name.to_owned(),
                    first: open,
                    second: interval,
                });
            }
            if latest_end.is_none_or(|open| interval.end > open.end) {
                latest_end = Some(interval);
            }
        }
    }
    report.counts.violations = report.violations.len();
    report
}
