//! The generic cell rate algorithm (GCRA) behind every rate limit and cost budget: a quota of
//! `limit` units that refills evenly, `limit` units per `period`, kept as one number per key —
//! its theoretical arrival time (TAT), in microseconds. A key at or before `now` is whole; each
//! unit charged moves its TAT one interval (`period / limit`) further; a charge is allowed while
//! the TAT stays within one period of `now`. The Redis limiter runs the same steps in Lua.

/// A key's state when a charge of `cost` is asked of it at `now` (all times in microseconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub limit: u64,
    pub period_us: f64,
    pub now: f64,
    /// The key's TAT, or `now` when that is later (an idle key does not bank units).
    pub base: f64,
    pub cost: u64,
}

/// What a step decided, for the caller to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Whether the cost fits now (a cost of 0 asks whether one unit is left).
    pub allowed: bool,
    /// Units left, after the charge when it was made.
    pub remaining: u64,
    /// Microseconds until the quota is whole again.
    pub reset_us: u64,
    /// When refused: microseconds until the cost fits; `None` when it never will (the cost is
    /// larger than the whole quota).
    pub retry_us: Option<u64>,
}

impl Step {
    /// `tat` is the key's stored TAT, `None` when it has none (a whole quota).
    pub fn new(tat: Option<f64>, now: f64, limit: u64, period_us: f64, cost: u64) -> Self {
        Self {
            limit,
            period_us,
            now,
            base: tat.map_or(now, |t| t.max(now)),
            cost,
        }
    }

    fn interval(&self) -> f64 {
        self.period_us / self.limit as f64
    }

    /// The latest TAT a charge may leave.
    fn horizon(&self) -> f64 {
        self.now + self.period_us
    }

    pub fn allowed(&self) -> bool {
        self.cost.max(1) <= self.limit
            && self.base + self.cost.max(1) as f64 * self.interval() <= self.horizon()
    }

    /// The TAT to store once the charge is made (whole microseconds, rounded up).
    pub fn charged_tat(&self) -> f64 {
        (self.base + self.cost as f64 * self.interval()).ceil()
    }

    /// The outcome, with the charge made (`charged`) or not.
    pub fn outcome(&self, charged: bool) -> Outcome {
        let tat = if charged {
            self.charged_tat()
        } else {
            self.base
        };
        let left = ((self.horizon() - tat) * self.limit as f64 / self.period_us).floor();
        // Nothing to wait for when the cost fits, or when it never will.
        let retry_us = if self.allowed() || self.cost > self.limit {
            None
        } else {
            let fits_at = self.base + self.cost.max(1) as f64 * self.interval();
            Some((fits_at - self.horizon()).ceil().max(1.0) as u64)
        };
        Outcome {
            allowed: self.allowed(),
            remaining: left.clamp(0.0, self.limit as f64) as u64,
            reset_us: (tat - self.now).ceil().max(0.0) as u64,
            retry_us,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: f64 = 1_000_000.0;

    /// Charges `cost` to a key at `now`, storing its TAT when allowed.
    fn charge(tat: &mut Option<f64>, now: f64, limit: u64, period: f64, cost: u64) -> Outcome {
        let step = Step::new(*tat, now, limit, period, cost);
        let allowed = step.allowed();
        if allowed && cost > 0 {
            *tat = Some(step.charged_tat());
        }
        step.outcome(allowed)
    }

    #[test]
    fn a_whole_quota_takes_its_limit_at_once_and_refills_evenly() {
        let mut tat = None;
        let now = 1_000.0 * SEC;
        for left in (0..5).rev() {
            let o = charge(&mut tat, now, 5, 10.0 * SEC, 1);
            assert!(o.allowed);
            assert_eq!(o.remaining, left);
        }
        let refused = charge(&mut tat, now, 5, 10.0 * SEC, 1);
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        // One unit comes back every 2 s; the whole quota after 10 s.
        assert_eq!(refused.retry_us, Some(2_000_000));
        assert_eq!(refused.reset_us, 10_000_000);
        let later = charge(&mut tat, now + 2.0 * SEC, 5, 10.0 * SEC, 1);
        assert!(later.allowed);
        assert_eq!(later.remaining, 0);
        assert!(!charge(&mut tat, now + 2.0 * SEC, 5, 10.0 * SEC, 1).allowed);
    }

    #[test]
    fn costs_charge_several_units_and_idle_time_does_not_bank_more_than_the_limit() {
        let mut tat = None;
        let now = 50.0 * SEC;
        assert!(charge(&mut tat, now, 100, 60.0 * SEC, 70).allowed);
        let refused = charge(&mut tat, now, 100, 60.0 * SEC, 40);
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 30);
        // 10 more units take 6 s.
        assert_eq!(refused.retry_us, Some(6_000_000));
        // An hour later the key is whole, not 60 times whole.
        let o = charge(&mut tat, now + 3600.0 * SEC, 100, 60.0 * SEC, 100);
        assert!(o.allowed);
        assert_eq!(o.remaining, 0);
    }

    #[test]
    fn a_cost_above_the_limit_never_fits_and_a_zero_cost_only_looks() {
        let mut tat = None;
        let o = charge(&mut tat, 0.0, 10, SEC, 11);
        assert!(!o.allowed);
        assert_eq!(o.retry_us, None);
        assert_eq!(tat, None);
        for _ in 0..10 {
            assert!(charge(&mut tat, 0.0, 10, SEC, 1).allowed);
        }
        let before = tat;
        let peek = charge(&mut tat, 0.0, 10, SEC, 0);
        assert!(!peek.allowed, "no unit is left");
        assert_eq!(peek.retry_us, Some(100_000));
        assert_eq!(tat, before, "a look charges nothing");
    }
}
