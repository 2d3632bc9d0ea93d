//! How much each caller may do: requests per second per key and per tenant, requests without
//! credentials and failed authentications per client address, a GraphQL cost budget per minute
//! per key and per tenant, and caps on a key's open sockets and subscriptions. The counting is
//! the `RateLimiter` port's (Redis across instances, or this process). A limit set to 0 is off.
//! A limiter that fails lets the request through (logged and counted), so that Redis going away
//! does not take the API with it.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{IntCounter, IntCounterVec};

use crate::config::Settings;
use crate::ports::{Check, Decision, Quota, RateLimiter, Slot};
use crate::services::auth::Caller;

/// One limit: a rate of units per second with room for a burst of them (GCRA).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// What is counted, as clients see it in errors (`key`, `tenant`, `address`,
    /// `auth-failures`, `key-cost`, `tenant-cost`).
    pub name: &'static str,
    /// Units per second.
    pub rate: f64,
    /// Units available at once.
    pub burst: u64,
}

impl Policy {
    /// `None` when the rate or the burst is 0 (the limit is off).
    fn new(name: &'static str, rate: f64, burst: u64) -> Option<Self> {
        (rate > 0.0 && rate.is_finite() && burst > 0).then_some(Self { name, rate, burst })
    }

    fn quota(&self) -> Quota {
        // Absurd settings (a rate of 1e-30 or 1e30 per second) give a quota that refills never
        // or at once, not a panic.
        let period = Duration::try_from_secs_f64(self.burst as f64 / self.rate)
            .unwrap_or(Duration::MAX)
            .max(Duration::from_micros(1));
        Quota {
            limit: self.burst,
            period,
        }
    }

    /// The policy as a `RateLimit-Policy` item of draft-ietf-httpapi-ratelimit-headers-06: units
    /// per window of `w` seconds (the shortest window in which the rate is a whole number), the
    /// burst and the policy's name as extension parameters.
    pub fn header_item(&self) -> String {
        let (units, window) = whole_rate(self.rate);
        format!(
            "{units};w={window};burst={};comment=\"{}\"",
            self.burst, self.name
        )
    }

    /// The rate in words, for error messages.
    fn describe(&self) -> String {
        let (units, window) = whole_rate(self.rate);
        let per = match window {
            1 => "second".to_string(),
            60 => "minute".to_string(),
            w => format!("{w} seconds"),
        };
        format!("{units} per {per}, bursts of {}", self.burst)
    }
}

/// A rate as whole units per whole seconds: the shortest window up to an hour in which it is a
/// whole number, else units per hour rounded down (at least 1).
fn whole_rate(rate: f64) -> (u64, u64) {
    for window in 1..=3600u64 {
        let units = rate * window as f64;
        if (units - units.round()).abs() < 1e-6 && units.round() >= 1.0 {
            return (units.round() as u64, window);
        }
    }
    (((rate * 3600.0).floor() as u64).max(1), 3600)
}

/// The quota that is closest to running out among those a request was charged, with its
/// decision: what the `RateLimit-*` headers report.
#[derive(Debug, Clone, Copy, Default)]
pub struct Report {
    pub tightest: Option<(Policy, Decision)>,
}

impl Report {
    fn of(applied: &[(Policy, Decision)]) -> Self {
        let refused = applied
            .iter()
            .filter(|(_, d)| !d.allowed)
            .max_by_key(|(_, d)| d.retry_after.unwrap_or(Duration::MAX));
        let tightest = refused.or_else(|| {
            applied.iter().min_by(|(_, a), (_, b)| {
                let share = |d: &Decision| d.remaining as f64 / d.limit.max(1) as f64;
                share(a).total_cmp(&share(b))
            })
        });
        Self {
            tightest: tightest.copied(),
        }
    }
}

/// A request or operation refused by a limit.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The limit's name (see [`Policy::name`], or `sockets` / `subscriptions` for the caps).
    pub limit: &'static str,
    pub message: String,
    /// When trying again may succeed; `None` when waiting will not help by itself.
    pub retry_after: Option<Duration>,
    pub report: Report,
}

impl Refusal {
    /// Whole seconds to wait, rounded up (what `Retry-After` says).
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after
            .map(|d| d.as_secs_f64().ceil().max(1.0) as u64)
    }

    /// The GraphQL error object clients receive: code `RATE_LIMITED`, the limit's name and,
    /// when known, `retryAfter` in seconds.
    pub fn to_json(&self) -> serde_json::Value {
        let mut extensions = serde_json::json!({ "code": "RATE_LIMITED", "limit": self.limit });
        if let Some(secs) = self.retry_after_secs() {
            extensions["retryAfter"] = secs.into();
        }
        serde_json::json!({ "message": self.message, "extensions": extensions })
    }
}

/// The key a caller's own limits count under: its API key, or its JWT's tenant and subject.
pub fn identity(caller: &Caller) -> String {
    match (&caller.key_id, &caller.subject) {
        (Some(id), _) => format!("key:{id}"),
        (None, Some(sub)) => format!("jwt:{}:{sub}", caller.tenant_id),
        (None, None) => format!("tenant:{}", caller.tenant_id),
    }
}

/// An address as it is counted: IPv4 addresses one by one, IPv6 ones by /64 (what one
/// subscriber usually gets).
fn address_key(addr: Option<IpAddr>) -> String {
    match addr.map(|a| a.to_canonical()) {
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        None => "unknown".into(),
    }
}

/// Counters of what the limits did, for `/metrics`.
#[derive(Clone)]
pub struct LimitMetrics {
    /// Refusals by limit name.
    pub refused: IntCounterVec,
    /// Limiter failures that let a request through.
    pub errors: IntCounter,
}

pub struct Limits {
    limiter: Arc<dyn RateLimiter>,
    key: Option<Policy>,
    tenant: Option<Policy>,
    address: Option<Policy>,
    auth_failures: Option<Policy>,
    key_cost: Option<Policy>,
    tenant_cost: Option<Policy>,
    max_sockets: u64,
    max_subscriptions: u64,
    metrics: LimitMetrics,
    /// When a limiter failure was last logged (seconds since the epoch), to log one in ten
    /// seconds while Redis is away.
    last_error_log: AtomicU64,
}

impl Limits {
    pub fn new(limiter: Arc<dyn RateLimiter>, s: &Settings, metrics: LimitMetrics) -> Self {
        let per_minute = |name, n: u64| Policy::new(name, n as f64 / 60.0, n);
        Self {
            limiter,
            key: Policy::new("key", s.rate_limit_rps, s.rate_limit_burst),
            tenant: Policy::new("tenant", s.tenant_rate_limit_rps, s.tenant_rate_limit_burst),
            address: Policy::new(
                "address",
                s.address_rate_limit_rps,
                s.address_rate_limit_burst,
            ),
            auth_failures: per_minute("auth-failures", s.auth_failures_per_minute),
            key_cost: per_minute("key-cost", s.cost_budget_per_minute),
            tenant_cost: per_minute("tenant-cost", s.tenant_cost_budget_per_minute),
            max_sockets: s.max_sockets_per_key,
            max_subscriptions: s.max_subscriptions_per_key,
            metrics,
            last_error_log: AtomicU64::new(0),
        }
    }

    /// The limiter behind these limits.
    pub fn limiter(&self) -> &Arc<dyn RateLimiter> {
        &self.limiter
    }

    fn limiter_failed(&self, e: &anyhow::Error) {
        self.metrics.errors.inc();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let last = self.last_error_log.load(Ordering::Relaxed);
        if now >= last + 10
            && self
                .last_error_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(error = %format!("{e:#}"), "the rate limiter failed; requests go through unlimited until it answers again");
        }
    }

    fn refused(&self, limit: &'static str) {
        self.metrics.refused.with_label_values(&[limit]).inc();
    }

    /// Charges `cost` to each (policy, key) pair that is on, all or none. `what` words the
    /// refusal of a policy.
    async fn charge(
        &self,
        pairs: &[(Option<Policy>, String)],
        cost: u64,
        what: impl Fn(&Policy) -> String,
    ) -> Result<Report, Refusal> {
        let on: Vec<(Policy, Check)> = pairs
            .iter()
            .filter_map(|(p, key)| {
                p.map(|p| {
                    let check = Check {
                        key: key.clone(),
                        quota: p.quota(),
                        cost,
                    };
                    (p, check)
                })
            })
            .collect();
        if on.is_empty() {
            return Ok(Report::default());
        }
        let checks: Vec<Check> = on.iter().map(|(_, c)| c.clone()).collect();
        let decisions = match self.limiter.check(&checks).await {
            Ok(d) => d,
            Err(e) => {
                self.limiter_failed(&e);
                return Ok(Report::default());
            }
        };
        let applied: Vec<(Policy, Decision)> = on.iter().map(|(p, _)| *p).zip(decisions).collect();
        let report = Report::of(&applied);
        match report.tightest {
            Some((policy, d)) if !d.allowed => {
                self.refused(policy.name);
                let wait = match d.retry_after {
                    Some(r) => format!("; retry in {} s", r.as_secs_f64().ceil().max(1.0)),
                    None => String::new(),
                };
                Err(Refusal {
                    limit: policy.name,
                    message: format!("rate limit exceeded: {}{wait}", what(&policy)),
                    retry_after: d.retry_after,
                    report,
                })
            }
            _ => Ok(report),
        }
    }

    /// An authenticated request (or an operation sent on a socket): one unit of the caller's
    /// key's and tenant's request rates.
    pub async fn request(&self, caller: &Caller) -> Result<Report, Refusal> {
        let pairs = [
            (self.key, format!("rps:{}", identity(caller))),
            (self.tenant, format!("rps:tenant:{}", caller.tenant_id)),
        ];
        self.charge(&pairs, 1, |p| {
            let whose = if p.name == "tenant" {
                "this tenant's"
            } else {
                "this key's"
            };
            format!("{whose} requests ({})", p.describe())
        })
        .await
    }

    /// A request without credentials from `addr`.
    pub async fn anonymous(&self, addr: Option<IpAddr>) -> Result<Report, Refusal> {
        let pairs = [(self.address, format!("rps:addr:{}", address_key(addr)))];
        self.charge(&pairs, 1, |p| {
            format!(
                "requests without credentials from this address ({})",
                p.describe()
            )
        })
        .await
    }

    fn locked_out(p: &Policy) -> String {
        format!(
            "too many failed authentications from this address (at most {} per minute); credentials from it are refused for now",
            p.burst
        )
    }

    /// Before credentials from `addr` are checked: refused while the address has no failed
    /// authentication left (a lockout that lifts as the failures age).
    pub async fn before_authentication(&self, addr: Option<IpAddr>) -> Result<(), Refusal> {
        let pairs = [(
            self.auth_failures,
            format!("authfail:{}", address_key(addr)),
        )];
        self.charge(&pairs, 0, Self::locked_out).await.map(|_| ())
    }

    /// Credentials from `addr` failed: one failure counted; refused when there was none left.
    pub async fn authentication_failed(&self, addr: Option<IpAddr>) -> Result<(), Refusal> {
        let pairs = [(
            self.auth_failures,
            format!("authfail:{}", address_key(addr)),
        )];
        self.charge(&pairs, 1, Self::locked_out).await.map(|_| ())
    }

    /// An operation whose computed complexity is `cost`, charged to the caller's key's and
    /// tenant's cost budgets before it runs.
    pub async fn cost(&self, caller: &Caller, cost: usize) -> Result<Report, Refusal> {
        let pairs = [
            (self.key_cost, format!("cost:{}", identity(caller))),
            (
                self.tenant_cost,
                format!("cost:tenant:{}", caller.tenant_id),
            ),
        ];
        let cost = cost as u64;
        self.charge(&pairs, cost, |p| {
            let whose = if p.name == "tenant-cost" {
                "this tenant's"
            } else {
                "this key's"
            };
            if cost > p.burst {
                format!(
                    "this operation costs {cost}, more than {whose} whole GraphQL cost budget of {} per minute",
                    p.burst
                )
            } else {
                format!(
                    "{whose} GraphQL cost budget ({} per minute; this operation costs {cost})",
                    p.burst
                )
            }
        })
        .await
    }

    async fn slot(
        &self,
        limit: &'static str,
        key: String,
        max: u64,
        message: String,
    ) -> Result<Slot, Refusal> {
        if max == 0 {
            return Ok(Slot::free());
        }
        match self.limiter.acquire(&key, max).await {
            Ok(Some(slot)) => Ok(slot),
            Ok(None) => {
                self.refused(limit);
                Err(Refusal {
                    limit,
                    message,
                    retry_after: None,
                    report: Report::default(),
                })
            }
            Err(e) => {
                self.limiter_failed(&e);
                Ok(Slot::free())
            }
        }
    }

    /// One of the caller's open WebSocket connections or SSE streams, held while it is open.
    pub async fn socket(&self, caller: &Caller) -> Result<Slot, Refusal> {
        let max = self.max_sockets;
        self.slot(
            "sockets",
            format!("sockets:{}", identity(caller)),
            max,
            format!("too many connections: at most {max} WebSocket connections and SSE streams per key are open at once"),
        )
        .await
    }

    /// One of the caller's live subscriptions, held while it runs.
    pub async fn subscription(&self, caller: &Caller) -> Result<Slot, Refusal> {
        let max = self.max_subscriptions;
        self.slot(
            "subscriptions",
            format!("subs:{}", identity(caller)),
            max,
            format!("too many subscriptions: at most {max} per key run at once"),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_as_whole_units_per_whole_seconds() {
        assert_eq!(whole_rate(50.0), (50, 1));
        assert_eq!(whole_rate(0.05), (1, 20));
        assert_eq!(whole_rate(200_000.0 / 60.0), (10_000, 3));
        assert_eq!(whole_rate(30.0 / 60.0), (1, 2));
    }

    #[test]
    fn ipv6_addresses_count_by_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(address_key(Some(a)), address_key(Some(b)));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_key(Some(mapped)), "192.0.2.7");
    }
}
