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
}
