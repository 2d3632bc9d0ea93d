//! Webhooks as the Standard Webhooks specification has them: endpoints with a signing secret
//! (`whsec_` and base64), messages signed with HMAC-SHA256 over `{id}.{timestamp}.{body}`, the
//! signatures in `webhook-signature` as `v1,<base64>` separated by spaces (one per secret while a
//! rotated secret is still honoured), and the retry schedule of a delivery.

use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;
use uuid::Uuid;

use super::CallEventKind;

/// A tenant's endpoint.
#[derive(Clone)]
pub struct WebhookRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub url: String,
    pub description: Option<String>,
    /// The kinds it takes; empty for every kind.
    pub events: Vec<CallEventKind>,
    pub secret: String,
    /// The secret before the last rotation, signing too until it expires.
    pub previous_secret: Option<String>,
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl std::fmt::Debug for WebhookRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookRecord")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("url", &self.url)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

impl WebhookRecord {
    /// The secrets that sign a message sent at `now`: the current one, and the previous one
    /// until it expires.
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> Vec<&str> {
        let mut secrets = vec![self.secret.as_str()];
        if let (Some(previous), Some(until)) =
            (&self.previous_secret, self.previous_secret_expires_at)
        {
            if now < until {
                secrets.push(previous);
            }
        }
        secrets
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, async_graphql::Enum)]
#[graphql(name = "WebhookDeliveryStatus")]
pub enum DeliveryStatus {
    /// Not attempted yet (or queued again by `redeliverWebhook`).
    Pending,
    /// An attempt failed; the next one is due at `nextAttemptAt`.
    Retrying,
    /// The endpoint answered an attempt with a 2xx status.
    Delivered,
    /// Every attempt failed and the retries ran out (or the endpoint is refused): dead-lettered
    /// until `redeliverWebhook` sends it again.
    Dead,
}

impl DeliveryStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Retrying => "RETRYING",
            Self::Delivered => "DELIVERED",
            Self::Dead => "DEAD",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Retrying, Self::Delivered, Self::Dead]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// One event for one endpoint.
#[derive(Debug, Clone)]
pub struct DeliveryRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub webhook_id: Uuid,
    pub event_id: i64,
    pub event_seq: Option<i64>,
    pub event_kind: String,
    pub event_status: String,
    pub call_id: Uuid,
    pub event_created_at: DateTime<Utc>,
    pub message_id: String,
    pub body: Option<String>,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_response_status: Option<i32>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One attempt at a delivery.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub id: i64,
    pub delivery_id: Uuid,
    pub attempted_at: DateTime<Utc>,
    pub response_status: Option<i32>,
    pub latency_ms: i64,
    pub error: Option<String>,
    pub succeeded: bool,
    pub next_retry_at: Option<DateTime<Utc>>,
}

/// What an attempt came to, as the store records it.
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    pub attempted_at: DateTime<Utc>,
    pub response_status: Option<i32>,
    pub latency_ms: i64,
    pub error: Option<String>,
    pub succeeded: bool,
    /// When the next attempt is due; `None` after a success, or when the delivery is dead.
    pub next_retry_at: Option<DateTime<Utc>>,
}

/// The prefix of a signing secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Random bytes in a new secret.
const SECRET_BYTES: usize = 32;

/// A new signing secret: `whsec_` and 32 random bytes in base64.
pub fn new_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rng().fill(&mut bytes[..]);
    format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// The key a secret stands for: the base64 after `whsec_`.
fn key(secret: &str) -> Vec<u8> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap_or_else(|_| encoded.as_bytes().to_vec())
}

/// The `v1` signature of a message with `secret`.
pub fn sign(secret: &str, message_id: &str, timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&key(secret)).expect("HMAC takes any key length");
    mac.update(message_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// The `webhook-signature` header: a signature with each secret, separated by spaces.
pub fn signature_header(secrets: &[&str], message_id: &str, timestamp: i64, body: &str) -> String {
    secrets
        .iter()
        .map(|s| sign(s, message_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The message type of an event kind (`call.completed`).
pub fn event_type(kind: &str) -> String {
    format!("call.{}", kind.to_ascii_lowercase())
}

/// When a delivery is attempted again: after the first failure `base`, then growing (×6, ×4,
/// ×5, ×3, ×2, ×2, ×2, ×2, ×1) to about a day in all with the default base of 5 s — 5 s, 30 s,
/// 2 min, 10 min, 30 min, 1 h, 2 h, 4 h, 8 h, 8 h — each delay shortened or stretched at random
/// by up to a fifth, so that endpoints coming back are not hit by every delivery at once. After
/// `max_attempts` attempts the delivery is dead.
#[derive(Debug, Clone, Copy)]
pub struct RetrySchedule {
    pub base: Duration,
    pub max_attempts: u32,
}

/// The delays as multiples of the base.
const STEPS: [u32; 10] = [1, 6, 24, 120, 360, 720, 1440, 2880, 5760, 5760];

impl RetrySchedule {
    /// Attempts in the default schedule: the first and ten retries.
    pub const DEFAULT_ATTEMPTS: u32 = STEPS.len() as u32 + 1;

    /// The delay before attempt `attempts + 1`, after `attempts` failed ones, without jitter;
    /// `None` when none is left.
    pub fn nominal(&self, attempts: u32) -> Option<Duration> {
        if attempts == 0 || attempts >= self.max_attempts {
            return None;
        }
        let step = STEPS[(attempts as usize - 1).min(STEPS.len() - 1)];
        Some(self.base.saturating_mul(step))
    }

    /// [`RetrySchedule::nominal`] with up to ±20 % of jitter.
    pub fn delay(&self, attempts: u32) -> Option<Duration> {
        let nominal = self.nominal(attempts)?;
        let factor = rand::rng().random_range(0.8..=1.2);
        Some(nominal.mul_f64(factor))
    }

    /// The whole schedule without jitter: how long from the first attempt to the last.
    pub fn span(&self) -> Duration {
        (1..self.max_attempts).filter_map(|n| self.nominal(n)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_the_specification() {
        // The example of the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        let header = signature_header(&[secret, &new_secret()], "msg_1", 1, "{}");
        assert_eq!(header.split(' ').count(), 2);
        assert!(header.split(' ').all(|s| s.starts_with("v1,")));
    }

    #[test]
    fn secrets_are_random_and_prefixed() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert!(a.starts_with(SECRET_PREFIX));
        assert_eq!(key(&a).len(), SECRET_BYTES);
    }

    #[test]
    fn the_default_schedule_lasts_about_a_day() {
        let s = RetrySchedule {
            base: Duration::from_secs(5),
            max_attempts: RetrySchedule::DEFAULT_ATTEMPTS,
        };
        let minutes: Vec<u64> = (1..s.max_attempts)
            .map(|n| s.nominal(n).unwrap().as_secs())
            .collect();
        assert_eq!(
            minutes,
            [5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 28800]
        );
        assert!(s.nominal(s.max_attempts).is_none());
        let hours = s.span().as_secs_f64() / 3600.0;
        assert!((23.0..25.0).contains(&hours), "{hours} h");
        for n in 1..s.max_attempts {
            let d = s.delay(n).unwrap().as_secs_f64();
            let nominal = s.nominal(n).unwrap().as_secs_f64();
            assert!(d >= nominal * 0.8 - 1e-9 && d <= nominal * 1.2 + 1e-9);
        }
    }

    #[test]
    fn a_rotated_secret_signs_until_it_expires() {
        let now = Utc::now();
        let mut w = WebhookRecord {
            id: Uuid::nil(),
            tenant_id: Uuid::nil(),
            url: "https://example.com".into(),
            description: None,
            events: vec![],
            secret: "whsec_new".into(),
            previous_secret: Some("whsec_old".into()),
            previous_secret_expires_at: Some(now + chrono::Duration::hours(1)),
            created_at: now,
            updated_at: now,
        };
        assert_eq!(w.signing_secrets(now), ["whsec_new", "whsec_old"]);
        w.previous_secret_expires_at = Some(now - chrono::Duration::seconds(1));
        assert_eq!(w.signing_secrets(now), ["whsec_new"]);
    }
}
