//! The error clients see: a stable `code`, a message safe to show, and for internal failures an
//! error id that also appears in the log next to the real cause.

use async_graphql::ErrorExtensions;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    RateLimited(String),
    /// A backend (the database) could not be reached: nothing was done, and the same request
    /// may succeed when retried shortly (HTTP 503 with `Retry-After` when nothing was answered).
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Internal(anyhow::Error),
}

/// A failure with a cause: `UNAVAILABLE` when the cause is an unreachable database (however
/// deep in the chain), else `INTERNAL`.
impl From<anyhow::Error> for AppError {
    fn from(e: anyhow::Error) -> Self {
        if crate::store::unreachable_database_in(&e) {
            tracing::warn!(error = %format!("{e:#}"), "the database is unreachable");
            return Self::Unavailable(UNAVAILABLE_MESSAGE.into());
        }
        Self::Internal(e)
    }
}

/// What a client is told when the database cannot be reached.
pub const UNAVAILABLE_MESSAGE: &str =
    "the database is unavailable right now; nothing was changed, retry shortly";

/// How long a client is asked to wait before retrying after `UNAVAILABLE`.
pub const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 2;

pub type AppResult<T> = Result<T, AppError>;

impl AppError {
    pub fn bad_input(msg: impl Into<String>) -> Self {
        Self::BadInput(msg.into())
    }
    pub fn not_found(what: &str) -> Self {
        Self::NotFound(format!("{what} not found"))
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::BadInput(_) => "BAD_USER_INPUT",
            Self::Unauthenticated(_) => "UNAUTHENTICATED",
            Self::Forbidden(_) => "FORBIDDEN",
            Self::NotFound(_) => "NOT_FOUND",
            Self::Conflict(_) => "CONFLICT",
            Self::RateLimited(_) => "RATE_LIMITED",
            Self::Unavailable(_) => "UNAVAILABLE",
            Self::Internal(_) => "INTERNAL",
        }
    }
}

/// `result.extend()?` in a resolver turns an `AppError` into a GraphQL error with its code;
/// internal causes are logged with a fresh error id and hidden from the client.
impl ErrorExtensions for AppError {
    fn extend(&self) -> async_graphql::Error {
        let code = self.code();
        match self {
            Self::Internal(cause) => {
                let error_id = uuid::Uuid::new_v4().to_string();
                tracing::error!(error_id = %error_id, error = ?cause, "internal error");
                async_graphql::Error::new(format!("internal error (error id {error_id})"))
                    .extend_with(|_, e| {
                        e.set("code", code);
                        e.set("errorId", error_id.clone());
                    })
            }
            Self::Unavailable(message) => {
                tracing::warn!(error = %message, "a backend is unavailable");
                async_graphql::Error::new(message.clone()).extend_with(|_, e| {
                    e.set("code", code);
                    e.set("retryAfterSeconds", UNAVAILABLE_RETRY_AFTER_SECS);
                })
            }
            other => {
                async_graphql::Error::new(other.to_string()).extend_with(|_, e| e.set("code", code))
            }
        }
    }
}
