//! The contract of the `RateLimiter` port, run against the in-process limiter and against Redis:
//! GCRA quotas charged all or nothing, costs, looks that charge nothing, refills, independent
//! keys, and capped places given back on drop. Redis alone: two limiters of one deployment count
//! together, deployments (prefixes) count apart, keys expire, and the places of an instance that
//! died free themselves once their lease runs out while a live instance keeps its own.
//!
//! Quotas that must stay refused refill slowly (minutes), so that a slow machine cannot flip an
//! outcome; the refill test waits for the refill itself.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use voicegraph::adapters::local::limiter::InProcessLimiter;
use voicegraph::adapters::redis_limiter::{RedisLimiter, SLOT_LEASE};
use voicegraph::ports::{Check, Quota, RateLimiter};

use crate::backends;
use crate::require;

const SLOW: Duration = Duration::from_secs(600);

fn check(key: &str, limit: u64, period: Duration, cost: u64) -> Check {
    Check {
        key: key.to_string(),
        quota: Quota { limit, period },
        cost,
    }
}

fn close_to(actual: Duration, expected: Duration) -> bool {
    let diff = actual.abs_diff(expected);
    diff <= Duration::from_secs(5)
}

/// Waits until `held` under `key` is `want` (a release may be asynchronous).
async fn held_becomes(limiter: &dyn RateLimiter, key: &str, want: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let held = limiter.held(key).await.expect("held");
        if held == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key}: {held} places held, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The contracts.
// ---------------------------------------------------------------------------------------------

/// A whole quota gives its limit at once, counting down, then refuses with the time to wait.
pub async fn contract_charges_up_to_the_limit_then_refuses(limiter: &dyn RateLimiter) {
    for left in (0..3).rev() {
        let d = limiter.check(&[check("a", 3, SLOW, 1)]).await.unwrap();
        assert!(d[0].allowed, "{d:?}");
        assert_eq!(d[0].remaining, left);
        assert_eq!(d[0].limit, 3);
        assert_eq!(d[0].retry_after, None);
    }
    let d = limiter.check(&[check("a", 3, SLOW, 1)]).await.unwrap();
    assert!(!d[0].allowed, "{d:?}");
    assert_eq!(d[0].remaining, 0);
    // One unit comes back every 200 s; the whole quota after 600 s.
    assert!(
        close_to(d[0].retry_after.expect("a retry"), Duration::from_secs(200)),
        "{d:?}"
    );
    assert!(close_to(d[0].reset, SLOW), "{d:?}");
}

/// Several checks are charged together or not at all.
pub async fn contract_all_or_nothing(limiter: &dyn RateLimiter) {
    let both = [check("wide", 5, SLOW, 1), check("narrow", 1, SLOW, 1)];
    let d = limiter.check(&both).await.unwrap();
    assert!(d.iter().all(|d| d.allowed), "{d:?}");
    assert_eq!((d[0].remaining, d[1].remaining), (4, 0));
    let d = limiter.check(&both).await.unwrap();
    assert!(d[0].allowed && !d[1].allowed, "{d:?}");
    assert_eq!(d[0].remaining, 4, "nothing charged to the wide quota");
    let look = limiter.check(&[check("wide", 5, SLOW, 0)]).await.unwrap();
    assert_eq!(look[0].remaining, 4);
}

/// A cost charges that many units; a cost of 0 looks without charging; a cost above the limit
/// never fits.
pub async fn contract_costs_and_looks(limiter: &dyn RateLimiter) {
    let d = limiter.check(&[check("c", 100, SLOW, 60)]).await.unwrap();
    assert!(d[0].allowed);
    assert_eq!(d[0].remaining, 40);
    let d = limiter.check(&[check("c", 100, SLOW, 50)]).await.unwrap();
    assert!(!d[0].allowed);
    assert_eq!(d[0].remaining, 40);
    // 10 more units at 6 s each.
    assert!(
        close_to(d[0].retry_after.unwrap(), Duration::from_secs(60)),
        "{d:?}"
    );
    for _ in 0..3 {
        let look = limiter.check(&[check("c", 100, SLOW, 0)]).await.unwrap();
        assert!(look[0].allowed);
        assert_eq!(look[0].remaining, 40);
    }
    let d = limiter.check(&[check("c", 100, SLOW, 101)]).await.unwrap();
    assert!(!d[0].allowed);
    assert_eq!(d[0].retry_after, None);
    assert_eq!(d[0].remaining, 40);
}

/// An exhausted quota refills at its rate.
pub async fn contract_refills(limiter: &dyn RateLimiter) {
    let fast = Duration::from_secs(1);
    for _ in 0..2 {
        assert!(limiter.check(&[check("r", 2, fast, 1)]).await.unwrap()[0].allowed);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let d = limiter.check(&[check("r", 2, fast, 1)]).await.unwrap();
        if d[0].allowed {
            break;
        }
        let wait = d[0].retry_after.expect("a retry");
        assert!(wait <= Duration::from_millis(500), "{d:?}");
        assert!(tokio::time::Instant::now() < deadline, "never refilled");
        tokio::time::sleep(wait).await;
    }
}

/// Exhausting one key leaves the others whole.
pub async fn contract_keys_are_independent(limiter: &dyn RateLimiter) {
    assert!(limiter.check(&[check("k1", 1, SLOW, 1)]).await.unwrap()[0].allowed);
    assert!(!limiter.check(&[check("k1", 1, SLOW, 1)]).await.unwrap()[0].allowed);
    let other = limiter.check(&[check("k2", 1, SLOW, 1)]).await.unwrap();
    assert!(other[0].allowed);
    assert_eq!(other[0].remaining, 0);
}

/// At most `max` places are held at once; dropping one gives it back.
pub async fn contract_places_are_capped_and_given_back(limiter: &dyn RateLimiter) {
    let first = limiter.acquire("s", 2).await.unwrap().expect("a place");
    let _second = limiter.acquire("s", 2).await.unwrap().expect("a place");
    assert!(limiter.acquire("s", 2).await.unwrap().is_none());
    assert_eq!(limiter.held("s").await.unwrap(), 2);
    let _elsewhere = limiter.acquire("t", 2).await.unwrap().expect("another key");
    drop(first);
    held_becomes(limiter, "s", 1).await;
    let _third = limiter
        .acquire("s", 2)
        .await
        .unwrap()
        .expect("the place given back");
    assert!(limiter.acquire("s", 2).await.unwrap().is_none());
    assert_eq!(limiter.held("nothing").await.unwrap(), 0);
}

async fn run_all(new: impl Fn() -> Arc<dyn RateLimiter>) {
    contract_charges_up_to_the_limit_then_refuses(&*new()).await;
    contract_all_or_nothing(&*new()).await;
    contract_costs_and_looks(&*new()).await;
    contract_refills(&*new()).await;
    contract_keys_are_independent(&*new()).await;
    contract_places_are_capped_and_given_back(&*new()).await;
}

// ---------------------------------------------------------------------------------------------
// In process.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn in_process_limiter_keeps_the_contract() {
    run_all(|| Arc::new(InProcessLimiter::new())).await;
}

// ---------------------------------------------------------------------------------------------
// Redis.
// ---------------------------------------------------------------------------------------------

fn prefix() -> String {
    format!("vg-test:{}", uuid::Uuid::new_v4())
}

async fn redis_limiter(url: &str, prefix: &str, lease: Duration) -> RedisLimiter {
    RedisLimiter::connect(url, prefix, lease, CancellationToken::new())
        .await
        .expect("redis limiter")
}

#[tokio::test]
async fn redis_limiter_keeps_the_contract() {
    let url = require!(backends::redis_url());
    // Each contract on its own deployment prefix, so that keys start whole.
    let mut limiters = Vec::new();
    for _ in 0..6 {
        limiters.push(
            Arc::new(redis_limiter(&url, &prefix(), SLOT_LEASE).await) as Arc<dyn RateLimiter>
        );
    }
    let next = std::sync::Mutex::new(limiters.into_iter());
    run_all(|| next.lock().unwrap().next().expect("a limiter")).await;
}

#[tokio::test]
async fn redis_limiters_of_one_deployment_count_together_and_deployments_apart() {
    let url = require!(backends::redis_url());
    let shared = prefix();
    let a = redis_limiter(&url, &shared, SLOT_LEASE).await;
    let b = redis_limiter(&url, &shared, SLOT_LEASE).await;
    let other = redis_limiter(&url, &prefix(), SLOT_LEASE).await;

    assert!(a.check(&[check("q", 2, SLOW, 1)]).await.unwrap()[0].allowed);
    assert!(b.check(&[check("q", 2, SLOW, 1)]).await.unwrap()[0].allowed);
    assert!(!a.check(&[check("q", 2, SLOW, 1)]).await.unwrap()[0].allowed);
    assert!(!b.check(&[check("q", 2, SLOW, 1)]).await.unwrap()[0].allowed);
    let apart = other.check(&[check("q", 2, SLOW, 1)]).await.unwrap();
    assert!(apart[0].allowed);
    assert_eq!(apart[0].remaining, 1);

    let _on_a = a.acquire("p", 2).await.unwrap().expect("a place");
    let on_b = b.acquire("p", 2).await.unwrap().expect("a place");
    assert!(a.acquire("p", 2).await.unwrap().is_none());
    assert!(b.acquire("p", 2).await.unwrap().is_none());
    assert_eq!(a.held("p").await.unwrap(), 2);
    assert!(other.acquire("p", 2).await.unwrap().is_some());
    drop(on_b);
    held_becomes(&a, "p", 1).await;
    assert!(a.acquire("p", 2).await.unwrap().is_some());
}

#[tokio::test]
async fn redis_quota_keys_expire_once_whole_again() {
    let url = require!(backends::redis_url());
    let p = prefix();
    let limiter = redis_limiter(&url, &p, SLOT_LEASE).await;
    limiter
        .check(&[check("e", 10, Duration::from_secs(60), 3)])
        .await
        .unwrap();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{p}:rl:e"))
        .query_async(&mut conn)
        .await
        .unwrap();
    // 3 of 10 units refill in 18 s; then the key is gone.
    assert!(ttl > 0 && ttl <= 18_000, "PTTL {ttl}");
    let _place = limiter.acquire("s", 1).await.unwrap().unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{p}:slots:s"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        ttl > 0 && ttl <= SLOT_LEASE.as_millis() as i64,
        "PTTL {ttl}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_places_of_a_dead_instance_free_themselves() {
    let url = require!(backends::redis_url());
    let shared = prefix();
    // Renewed every 2 s: the dead instance's place outlives it by 4 s at least.
    let lease = Duration::from_secs(6);
    let alive = redis_limiter(&url, &shared, lease).await;
    let dying = redis_limiter(&url, &shared, lease).await;
    let kept = alive.acquire("d", 2).await.unwrap().expect("a place");
    let lost = dying.acquire("d", 2).await.unwrap().expect("a place");
    // Past a lease, both places still count: each instance renewed its own.
    tokio::time::sleep(lease + Duration::from_secs(1)).await;
    assert_eq!(alive.held("d").await.unwrap(), 2);
    // The instance dies: nothing gives its place back, nothing renews it any more.
    std::mem::forget(lost);
    drop(dying);
    assert!(alive.acquire("d", 2).await.unwrap().is_none());
    let deadline = tokio::time::Instant::now() + lease * 3;
    let freed = loop {
        if let Some(place) = alive.acquire("d", 2).await.unwrap() {
            break place;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dead instance's place was never freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(alive.held("d").await.unwrap(), 2);
    drop((kept, freed));
}
