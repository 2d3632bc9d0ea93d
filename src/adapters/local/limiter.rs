//! Rate limits and caps counted in this process: one GCRA time per key and one count per capped
//! key, under a lock. Right for a single instance; instances that share a Redis count there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::domain::gcra::Step;
use crate::ports::{Check, Decision, RateLimiter, Slot};

/// How often keys whose quota is whole again are forgotten, so that memory follows the keys in
/// use (a flood from many addresses leaves nothing behind).
const SWEEP_EVERY: Duration = Duration::from_secs(10);

struct Cells {
    /// Theoretical arrival times, in microseconds since `epoch`.
    tats: HashMap<String, f64>,
    last_sweep: Instant,
}

pub struct InProcessLimiter {
    epoch: Instant,
    cells: Mutex<Cells>,
    slots: Arc<Mutex<HashMap<String, u64>>>,
}

impl InProcessLimiter {
    pub fn new() -> Self {
        let now = Instant::now();
        Self {
            epoch: now,
            cells: Mutex::new(Cells {
                tats: HashMap::new(),
                last_sweep: now,
            }),
            slots: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn cells(&self) -> MutexGuard<'_, Cells> {
        self.cells.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keys counted now (for tests of the sweep).
    pub fn keys(&self) -> usize {
        self.cells().tats.len()
    }
}

impl Default for InProcessLimiter {
    fn default() -> Self {
        Self::new()
    }
}

fn lock_slots(slots: &Mutex<HashMap<String, u64>>) -> MutexGuard<'_, HashMap<String, u64>> {
    slots.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl RateLimiter for InProcessLimiter {
    async fn check(&self, checks: &[Check]) -> anyhow::Result<Vec<Decision>> {
        let now_instant = Instant::now();
        let now = now_instant.duration_since(self.epoch).as_micros() as f64;
        let mut cells = self.cells();
        if now_instant.duration_since(cells.last_sweep) >= SWEEP_EVERY {
            cells.tats.retain(|_, tat| *tat > now);
            cells.last_sweep = now_instant;
        }
        let steps: Vec<Step> = checks
            .iter()
            .map(|c| {
                anyhow::ensure!(c.quota.limit > 0, "a quota of 0 units ({})", c.key);
                Ok(Step::new(
                    cells.tats.get(&c.key).copied(),
                    now,
                    c.quota.limit,
                    c.quota.period.as_micros() as f64,
                    c.cost,
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        let charge = steps.iter().all(Step::allowed);
        if charge {
            for (c, step) in checks.iter().zip(&steps) {
                if c.cost > 0 {
                    cells.tats.insert(c.key.clone(), step.charged_tat());
                }
            }
        }
        Ok(steps
            .iter()
            .map(|s| {
                let o = s.outcome(charge);
                Decision {
                    allowed: o.allowed,
                    limit: s.limit,
                    remaining: o.remaining,
                    reset: Duration::from_micros(o.reset_us),
                    retry_after: o.retry_us.map(Duration::from_micros),
                }
            })
            .collect())
    }

    async fn acquire(&self, key: &str, max: u64) -> anyhow::Result<Option<Slot>> {
        {
            let mut slots = lock_slots(&self.slots);
            let held = slots.get(key).copied().unwrap_or(0);
            if held >= max {
                return Ok(None);
            }
            slots.insert(key.to_string(), held + 1);
        }
        let slots = self.slots.clone();
        let key = key.to_string();
        Ok(Some(Slot::new(move || {
            let mut slots = lock_slots(&slots);
            if let Some(held) = slots.get_mut(&key) {
                *held = held.saturating_sub(1);
                if *held == 0 {
                    slots.remove(&key);
                }
            }
        })))
    }

    async fn held(&self, key: &str) -> anyhow::Result<u64> {
        Ok(lock_slots(&self.slots).get(key).copied().unwrap_or(0))
    }
}
