//! Call statuses, directions and the events a call goes through.

use serde::{Deserialize, Serialize};

/// Where a call is in its life: `QUEUED` → `PROCESSING` → `COMPLETED` or `FAILED`; a retried
/// call goes back to `QUEUED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, async_graphql::Enum)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[graphql(name = "CallStatus")]
pub enum CallStatus {
    /// Waiting for a worker: just submitted, retried, or between two attempts.
    Queued,
    /// A worker is analysing the recording.
    Processing,
    /// Analysed: the results (transcript, summary, sentiment, metrics) can be read.
    Completed,
    /// Could not be analysed; `Call.error` says why and `retryCall` queues it again.
    Failed,
}

impl CallStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "QUEUED",
            Self::Processing => "PROCESSING",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "QUEUED" => Some(Self::Queued),
            "PROCESSING" => Some(Self::Processing),
            "COMPLETED" => Some(Self::Completed),
            "FAILED" => Some(Self::Failed),
            _ => None,
        }
    }
    /// A finished call is never processed again by a duplicate job.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Completed | Self::Failed)
    }
}

/// Who placed the call, as the integrator submitted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, async_graphql::Enum)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[graphql(name = "CallDirection")]
pub enum CallDirection {
    /// A customer called in.
    Inbound,
    /// The agent called out.
    Outbound,
    /// Both ends are inside the organisation.
    Internal,
}

impl CallDirection {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "INBOUND",
            Self::Outbound => "OUTBOUND",
            Self::Internal => "INTERNAL",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "INBOUND" => Some(Self::Inbound),
            "OUTBOUND" => Some(Self::Outbound),
            "INTERNAL" => Some(Self::Internal),
            _ => None,
        }
    }
}

// Stored in `call_events.kind`, and carried by `EventEnvelope.kind`, as the name `as_str` gives.
/// What happened to a call; every event also gives the call's status right after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, async_graphql::Enum)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[graphql(name = "CallEventKind")]
pub enum CallEventKind {
    /// The call was accepted by `submitCall` and queued for analysis (status `QUEUED`).
    Submitted,
    /// A worker started an attempt to analyse the call (status `PROCESSING`); it comes again
    /// for every attempt.
    Processing,
    /// The analysis is stored: transcript, summary, sentiment and metrics can be read now
    /// (status `COMPLETED`).
    Completed,
    /// An attempt failed for a reason that may pass; the call is queued again and retried
    /// automatically after a delay (status `QUEUED`, `error` says why).
    Retrying,
    /// The call failed for good: the recording cannot be analysed or every attempt failed
    /// (status `FAILED`, `error` says why). `retryCall` can queue it again.
    Failed,
    /// `retryCall` queued a FAILED call again (status `QUEUED`).
    Retried,
    /// `reanalyzeCall` queued a new analysis of the call (status `QUEUED`; `analysisId` names
    /// it). Its results replace the call's when it completes; until then, and if it fails, the
    /// call keeps those of its latest successful analysis.
    Reanalyzed,
    /// `tagCall` added tags (the status is unchanged).
    Tagged,
    /// `deleteCall` removed the call; its other events are gone and `CallEvent.call` is null
    /// (the status is the one the call had).
    Deleted,
}

impl CallEventKind {
    pub const ALL: [Self; 9] = [
        Self::Submitted,
        Self::Processing,
        Self::Completed,
        Self::Retrying,
        Self::Failed,
        Self::Retried,
        Self::Reanalyzed,
        Self::Tagged,
        Self::Deleted,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Submitted => "SUBMITTED",
            Self::Processing => "PROCESSING",
            Self::Completed => "COMPLETED",
            Self::Retrying => "RETRYING",
            Self::Failed => "FAILED",
            Self::Retried => "RETRIED",
            Self::Reanalyzed => "REANALYZED",
            Self::Tagged => "TAGGED",
            Self::Deleted => "DELETED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Kinds of call events, as stored in `call_events.kind`.
pub mod event_kind {
    use super::CallEventKind;

    pub const SUBMITTED: &str = CallEventKind::Submitted.as_str();
    pub const PROCESSING: &str = CallEventKind::Processing.as_str();
    pub const COMPLETED: &str = CallEventKind::Completed.as_str();
    pub const RETRYING: &str = CallEventKind::Retrying.as_str();
    pub const FAILED: &str = CallEventKind::Failed.as_str();
    pub const RETRIED: &str = CallEventKind::Retried.as_str();
    pub const REANALYZED: &str = CallEventKind::Reanalyzed.as_str();
    pub const TAGGED: &str = CallEventKind::Tagged.as_str();
    pub const DELETED: &str = CallEventKind::Deleted.as_str();
}

/// A call event as it travels from the relay to every instance's subscribers.
/// `seq` is the event's position in the global, gap-free sequence assigned by the relay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    pub seq: i64,
    pub id: i64,
    pub tenant_id: uuid::Uuid,
    pub call_id: uuid::Uuid,
    pub kind: String,
    pub status: CallStatus,
    pub at: chrono::DateTime<chrono::Utc>,
    /// The analysis the event reports on, for the events of an analysis (`REANALYZED`,
    /// `PROCESSING`, `COMPLETED`, `RETRYING`, `FAILED`; and `SUBMITTED`, `RETRIED`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis_id: Option<uuid::Uuid>,
    /// The W3C trace context of the span that last handed the event on (the writer's, as
    /// stored with the event; the relay's or the fan-out's once they sent it), when traces are
    /// exported. Not part of the GraphQL contract.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_traceparent"
    )]
    pub traceparent: Option<String>,
}

/// The message on the job queue: which call to analyse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMessage {
    pub tenant_id: uuid::Uuid,
    pub call_id: uuid::Uuid,
    /// The analysis the job runs; absent in jobs queued before analyses were kept, which run the
    /// call's current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis_id: Option<uuid::Uuid>,
    /// The W3C trace context of the span that queued the job (the submission's, or the relay's
    /// once it sent it), when traces are exported; the worker's span continues it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_traceparent"
    )]
    pub traceparent: Option<String>,
}

/// Reads a `traceparent` field leniently: anything but a string of plausible length reads as
/// absent, so that a mangled trace context never makes a job or an event unreadable. (A string
/// that is not a valid `traceparent` is ignored when a span would continue it.)
fn lenient_traceparent<'de, D>(deserializer: D) -> Result<Option<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Ok(
        match Option::<serde_json::Value>::deserialize(deserializer)? {
            Some(serde_json::Value::String(s)) if s.len() <= 256 => Some(s),
            _ => None,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds_round_trip_through_their_stored_names() {
        for kind in CallEventKind::ALL {
            assert_eq!(CallEventKind::parse(kind.as_str()), Some(kind));
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::json!(kind.as_str())
            );
        }
        assert_eq!(CallEventKind::parse("completed"), None);
        assert_eq!(event_kind::RETRYING, "RETRYING");
    }

    #[test]
    fn a_malformed_traceparent_never_makes_a_message_unreadable() {
        let (tenant, call) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        for (value, kept) in [
            (serde_json::json!(42), None),
            (serde_json::json!({"a": 1}), None),
            (serde_json::Value::Null, None),
            (serde_json::json!("x".repeat(300)), None),
            (serde_json::json!("nonsense"), Some("nonsense")),
        ] {
            let job: JobMessage = serde_json::from_value(serde_json::json!({
                "tenant_id": tenant, "call_id": call, "traceparent": value
            }))
            .unwrap();
            assert_eq!(job.traceparent.as_deref(), kept, "{value}");
            let event: EventEnvelope = serde_json::from_value(serde_json::json!({
                "seq": 1, "id": 1, "tenant_id": tenant, "call_id": call, "kind": "COMPLETED",
                "status": "COMPLETED", "at": "2026-01-01T00:00:00Z", "traceparent": value
            }))
            .unwrap();
            assert_eq!(event.traceparent.as_deref(), kept, "{value}");
        }
        // Absent, it is not written either: messages stay as they were without traces.
        let job = JobMessage {
            tenant_id: tenant,
            call_id: call,
            analysis_id: None,
            traceparent: None,
        };
        assert!(!serde_json::to_string(&job).unwrap().contains("traceparent"));
    }
}
