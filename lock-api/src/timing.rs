//! How long to wait between attempts, and how much clock drift to allow for.

use std::time::Duration;

use rand::Rng;

/// Capped exponential backoff with full jitter, used between acquire attempts
/// while no wake-up arrives.
///
/// The n-th delay is drawn uniformly from `[0, min(max, initial × 2ⁿ)]`, so
/// waiters that collide spread out instead of retrying in lock-step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The upper bound of the first delay.
    pub initial: Duration,
    /// The cap on any delay.
    pub max: Duration,
}

impl Default for Backoff {
    /// 2 ms doubling to at most 100 ms.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(2),
            max: Duration::from_millis(100),
        }
    }
}

impl Backoff {
    /// The upper bound of delay number `attempt` (0-based), before jitter.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// A jittered delay for attempt number `attempt` (0-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }
}

/// The clock-drift allowance subtracted from a TTL to get a guard's
/// conservative validity: `fixed + ttl × per_mille / 1000`.
///
/// A lease is taken at the server's clock and judged at ours; the allowance
/// covers rate differences between the two and the time a reply spends in
/// flight. The default (1 % + 2 ms) is the one Redlock uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drift {
    /// The constant part of the allowance.
    pub fixed: Duration,
    /// The part proportional to the TTL, in thousandths.
    pub per_mille: u32,
}

impl Default for Drift {
    fn default() -> Self {
        Drift {
            fixed: Duration::from_millis(2),
            per_mille: 10,
        }
    }
}

impl Drift {
    /// The allowance for a lease of `ttl`.
    pub fn for_ttl(&self, ttl: Duration) -> Duration {
        self.fixed
            .saturating_add(ttl.saturating_mul(self.per_mille) / 1000)
    }

    /// How long a lease of `ttl` may be trusted: `ttl − allowance`, never negative.
    pub fn trusted(&self, ttl: Duration) -> Duration {
        ttl.saturating_sub(self.for_ttl(ttl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_never_overflows() {
        let b = Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(50),
        };
        assert_eq!(b.ceiling(0), Duration::from_millis(1));
        assert_eq!(b.ceiling(3), Duration::from_millis(8));
        assert_eq!(b.ceiling(6), Duration::from_millis(50));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_millis(50));
        for attempt in 0..100 {
            assert!(b.delay(attempt) <= b.ceiling(attempt));
        }
    }

    #[test]
    fn drift_is_one_percent_plus_two_ms_by_default() {
        let d = Drift::default();
        assert_eq!(
            d.for_ttl(Duration::from_secs(10)),
            Duration::from_millis(102)
        );
        assert_eq!(
            d.trusted(Duration::from_secs(10)),
            Duration::from_millis(9898)
        );
        assert_eq!(d.trusted(Duration::from_millis(1)), Duration::ZERO);
        assert_eq!(
            d.trusted(Duration::MAX),
            Duration::MAX.saturating_sub(d.for_ttl(Duration::MAX))
        );
    }
}
