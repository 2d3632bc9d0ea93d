//! Call statuses, directions and the events a call goes through.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, async_graphql::Enum)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[graphql(name = "CallStatus")]
pub enum CallStatus {
    Queued,
    Processing,
    Completed,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, async_graphql::Enum)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[graphql(name = "CallDirection")]
pub enum CallDirection {
    Inbound,
    Outbound,
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

/// Kinds of call events, as stored in `call_events.kind`.
pub mod event_kind {
    pub const SUBMITTED: &str = "SUBMITTED";
    pub const PROCESSING: &str = "PROCESSING";
    pub const COMPLETED: &str = "COMPLETED";
    pub const RETRYING: &str = "RETRYING";
    pub const FAILED: &str = "FAILED";
    pub const RETRIED: &str = "RETRIED";
    pub const TAGGED: &str = "TAGGED";
    pub const DELETED: &str = "DELETED";
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
}

/// The message on the job queue: which call to analyse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMessage {
    pub tenant_id: uuid::Uuid,
    pub call_id: uuid::Uuid,
}
