//! Rate limits and caps counted in Redis, so that every instance sees the same counts. A check
//! is one Lua script (GCRA, the steps of `domain::gcra`, on Redis's clock), one round trip for
//! all the quotas of a request, all charged or none; each key expires when its quota is whole
//! again. A capped key is a sorted set of holders scored by lease expiry: this instance renews
//! the leases of what it holds, so the places of an instance that died free themselves. Keys are
//! namespaced by the deployment's channel, so deployments sharing a Redis count apart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::Script;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::redis::connection_manager;
use crate::ports::{Check, Decision, RateLimiter, Slot};

/// How long a held place counts without its instance renewing it.
pub const SLOT_LEASE: Duration = Duration::from_secs(30);
/// Leases renewed per script call.
const RENEW_BATCH: usize = 500;

/// KEYS: one per check. ARGV: for check i, `ARGV[3i-2]` the limit, `ARGV[3i-1]` the period in
/// microseconds, `ARGV[3i]` the cost. Returns per check `{allowed, remaining, reset µs, retry µs}`
/// (retry: 0 when allowed, -1 when the cost never fits).
const CHECK: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local steps = {}
local charge = true
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[3 * i - 2])
  local period = tonumber(ARGV[3 * i - 1])
  local cost = tonumber(ARGV[3 * i])
  local interval = period / limit
  local base = tonumber(redis.call('GET', key)) or now
  if base < now then base = now end
  local need = math.max(cost, 1)
  local allowed = need <= limit and base + need * interval <= now + period
  if not allowed then charge = false end
  steps[i] = { limit, period, cost, interval, base, need, allowed }
end
local out = {}
for i, key in ipairs(KEYS) do
  local limit, period, cost, interval, base, need, allowed = unpack(steps[i])
  local tat = base
  if charge then
    tat = math.ceil(base + cost * interval)
    if cost > 0 then
      local ttl = math.max(1, math.ceil((tat - now) / 1000))
      redis.call('SET', key, string.format('%.0f', tat), 'PX', string.format('%.0f', ttl))
    end
  end
  local left = math.floor((now + period - tat) * limit / period)
  left = math.min(math.max(left, 0), limit)
  local retry = 0
  if not allowed then
    if cost > limit then
      retry = -1
    else
      retry = math.max(1, math.ceil(base + need * interval - (now + period)))
    end
  end
  out[i] = { allowed and 1 or 0, left, math.max(0, math.ceil(tat - now)), retry }
end
return out
";

/// KEYS[1]: the holders. ARGV: the most allowed, the new holder, the lease in microseconds.
/// Returns 1 when the holder got a place, 0 when all are taken.
const ACQUIRE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
local lease = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], string.format('%.0f', now + lease), ARGV[2])
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', math.ceil(lease / 1000)))
return 1
";

/// KEYS: holder sets. ARGV[1]: the lease in microseconds; `ARGV[i+1]`: the holder in `KEYS[i]`.
const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local lease = tonumber(ARGV[1])
local expiry = string.format('%.0f', now + lease)
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, expiry, ARGV[i + 1])
  redis.call('PEXPIRE', key, string.format('%.0f', math.ceil(lease / 1000)))
end
return #KEYS
";

/// KEYS[1]: the holders. Returns how many leases are live.
const HELD: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
return redis.call('ZCOUNT', KEYS[1], '(' .. string.format('%.0f', now), '+inf')
";

/// The places this instance holds: holder id → its sorted set.
type Held = Arc<Mutex<HashMap<String, String>>>;

fn lock(held: &Held) -> MutexGuard<'_, HashMap<String, String>> {
    held.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct RedisLimiter {
    conn: ConnectionManager,
    prefix: String,
    lease: Duration,
    held: Held,
    check: Script,
    acquire: Script,
    held_script: Script,
    _renewal: DropGuard,
}

impl RedisLimiter {
    /// Keys are `<prefix>:rl:…` and `<prefix>:slots:…` (the prefix is the deployment's channel).
    /// Places held are renewed every third of `lease` until `shutdown` or until the limiter is
    /// dropped.
    pub async fn connect(
        url: &str,
        prefix: &str,
        lease: Duration,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let conn = connection_manager(url, "rate limits").await?;
        let held: Held = Arc::default();
        let stop = shutdown.child_token();
        tokio::spawn(renew_loop(conn.clone(), held.clone(), lease, stop.clone()));
        Ok(Self {
            conn,
            prefix: prefix.to_string(),
            lease,
            held,
            check: Script::new(CHECK),
            acquire: Script::new(ACQUIRE),
            held_script: Script::new(HELD),
            _renewal: stop.drop_guard(),
        })
    }

    fn slots_key(&self, key: &str) -> String {
        format!("{}:slots:{key}", self.prefix)
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

async fn renew_loop(conn: ConnectionManager, held: Held, lease: Duration, stop: CancellationToken) {
    let script = Script::new(RENEW);
    let every = lease / 3;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let pairs: Vec<(String, String)> = lock(&held)
            .iter()
            .map(|(holder, key)| (key.clone(), holder.clone()))
            .collect();
        for batch in pairs.chunks(RENEW_BATCH) {
            let mut call = script.prepare_invoke();
            call.arg(micros(lease));
            for (key, holder) in batch {
                call.key(key).arg(holder);
            }
            let mut conn = conn.clone();
            if let Err(e) = call.invoke_async::<i64>(&mut conn).await {
                tracing::warn!(error = %e, places = batch.len(), "renewing the leases of capped connections in Redis failed");
            }
        }
    }
}

#[async_trait]
impl RateLimiter for RedisLimiter {
    async fn check(&self, checks: &[Check]) -> anyhow::Result<Vec<Decision>> {
        if checks.is_empty() {
            return Ok(Vec::new());
        }
        let mut call = self.check.prepare_invoke();
        for c in checks {
            anyhow::ensure!(c.quota.limit > 0, "a quota of 0 units ({})", c.key);
            call.key(format!("{}:rl:{}", self.prefix, c.key))
                .arg(c.quota.limit)
                .arg(micros(c.quota.period))
                .arg(c.cost);
        }
        let mut conn = self.conn.clone();
        let rows: Vec<(i64, i64, i64, i64)> = call
            .invoke_async(&mut conn)
            .await
            .context("checking rate limits in Redis")?;
        anyhow::ensure!(
            rows.len() == checks.len(),
            "the rate limit script answered {} rows for {} checks",
            rows.len(),
            checks.len()
        );
        Ok(rows
            .into_iter()
            .zip(checks)
            .map(|((allowed, remaining, reset, retry), c)| Decision {
                allowed: allowed == 1,
                limit: c.quota.limit,
                remaining: remaining.max(0) as u64,
                reset: Duration::from_micros(reset.max(0) as u64),
                retry_after: (retry > 0).then(|| Duration::from_micros(retry as u64)),
            })
            .collect())
    }

    async fn acquire(&self, key: &str, max: u64) -> anyhow::Result<Option<Slot>> {
        let set = self.slots_key(key);
        let holder = uuid::Uuid::new_v4().to_string();
        let mut conn = self.conn.clone();
        let got: i64 = self
            .acquire
            .key(&set)
            .arg(max)
            .arg(&holder)
            .arg(micros(self.lease))
            .invoke_async(&mut conn)
            .await
            .context("taking a capped place in Redis")?;
        if got != 1 {
            return Ok(None);
        }
        lock(&self.held).insert(holder.clone(), set.clone());
        let held = self.held.clone();
        Ok(Some(Slot::new(move || {
            lock(&held).remove(&holder);
            // Without a runtime (the process is ending) the lease runs out instead.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let mut cmd = redis::cmd("ZREM");
                    cmd.arg(&set).arg(&holder);
                    if let Err(e) = cmd.query_async::<i64>(&mut conn).await {
                        tracing::warn!(error = %e, "giving a capped place back in Redis failed; its lease will expire");
                    }
                });
            }
        })))
    }

    async fn held(&self, key: &str) -> anyhow::Result<u64> {
        let mut conn = self.conn.clone();
        let n: i64 = self
            .held_script
            .key(self.slots_key(key))
            .invoke_async(&mut conn)
            .await
            .context("counting capped places in Redis")?;
        Ok(n.max(0) as u64)
    }
}
