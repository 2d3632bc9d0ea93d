//! The GraphQL cost budget: each operation a client sends is charged its computed complexity
//! (async-graphql's validation result) to its caller's key and tenant before it executes. The
//! transport asks for the charge by putting a [`CostCharge`] in the request's data and reads the
//! outcome from it (for the status code and headers); executions without one — a subscription
//! group's shared execution, replays — are not charged again.

use std::sync::{Arc, Mutex};

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextValidation};
use async_graphql::{ServerError, ValidationResult};
use tokio::sync::watch;

use crate::services::auth::Caller;
use crate::services::limits::{Refusal, Report};
use crate::state::AppState;

/// The outcome of one operation's charge, shared between the transport and the extension.
#[derive(Clone)]
pub struct CostCharge(Arc<Inner>);

struct Inner {
    outcome: Mutex<Option<Result<Report, Refusal>>>,
    /// The operation's computed complexity, once validated.
    complexity: std::sync::atomic::AtomicUsize,
    charged: watch::Sender<bool>,
}

impl Default for CostCharge {
    fn default() -> Self {
        Self::new()
    }
}

impl CostCharge {
    pub fn new() -> Self {
        Self(Arc::new(Inner {
            outcome: Mutex::new(None),
            complexity: Default::default(),
            charged: watch::channel(false).0,
        }))
    }

    /// Records the outcome of a charge (the extension's, or the transport's for an answer
    /// served from the response cache).
    pub fn record(&self, outcome: Result<Report, Refusal>) {
        *self.0.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
        self.0.charged.send_replace(true);
    }

    /// The complexity the operation was charged (0 before validation).
    pub fn complexity(&self) -> usize {
        self.0.complexity.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The refusal, when the budget refused the operation.
    pub fn refusal(&self) -> Option<Refusal> {
        match &*self.0.outcome.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(Err(r)) => Some(r.clone()),
            _ => None,
        }
    }

    /// Waits until the operation was charged (or refused). It never is when the document
    /// failed to parse or validate, so wait for this beside the execution itself.
    pub async fn charged(&self) {
        let mut rx = self.0.charged.subscribe();
        let _ = rx.wait_for(|charged| *charged).await;
    }
}

/// The extension that charges operations; registered on the schema.
pub struct CostBudget;

impl ExtensionFactory for CostBudget {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(CostBudget)
    }
}

/// A refusal as the error of a request that did not run.
pub fn refusal_error(r: &Refusal) -> ServerError {
    let mut e = ServerError::new(r.message.clone(), None);
    let mut x = async_graphql::ErrorExtensionValues::default();
    x.set("code", "RATE_LIMITED");
    x.set("limit", r.limit);
    if let Some(secs) = r.retry_after_secs() {
        x.set("retryAfter", secs);
    }
    e.extensions = Some(x);
    e
}

#[async_trait::async_trait]
impl Extension for CostBudget {
    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let result = next.run(ctx).await?;
        if let Some(charge) = ctx.data_opt::<CostCharge>() {
            charge
                .0
                .complexity
                .store(result.complexity, std::sync::atomic::Ordering::Relaxed);
        }
        let (Some(charge), Some(caller), Some(state)) = (
            ctx.data_opt::<CostCharge>(),
            ctx.data_opt::<Caller>(),
            ctx.data_opt::<AppState>(),
        ) else {
            return Ok(result);
        };
        match state.limits.cost(caller, result.complexity).await {
            Ok(report) => {
                charge.record(Ok(report));
                Ok(result)
            }
            Err(refusal) => {
                let error = refusal_error(&refusal);
                charge.record(Err(refusal));
                Err(vec![error])
            }
        }
    }
}
