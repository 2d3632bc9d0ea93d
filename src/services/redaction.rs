//! A tenant's redaction policy: read and set by its admins; applied to the calls submitted
//! after it is set (each call keeps the policy it was submitted under, with its override).

use crate::domain::redaction::RedactionPolicy;
use crate::error::{AppError, AppResult};
use crate::services::auth::{Caller, Permission};
use crate::state::AppState;

pub async fn policy(state: &AppState, caller: &Caller) -> AppResult<RedactionPolicy> {
    caller.require(Permission::ManageRedaction)?;
    state.store.redaction_policy(caller.tenant_id).await
}

pub async fn set_policy(
    state: &AppState,
    caller: &Caller,
    policy: RedactionPolicy,
) -> AppResult<RedactionPolicy> {
    caller.require(Permission::ManageRedaction)?;
    check(policy)?;
    let set = state
        .store
        .set_redaction_policy(caller.tenant_id, policy)
        .await?;
    tracing::info!(tenant = %caller.tenant_id, transcript = set.transcript, audio = set.audio, delete_original = set.delete_original, "redaction policy set");
    Ok(set)
}

/// `deleteOriginal` says what becomes of the original once the audio is redacted: without
/// `audio` it has no meaning, and is refused rather than ignored.
pub fn check(policy: RedactionPolicy) -> AppResult<()> {
    if policy.delete_original && !policy.audio {
        return Err(AppError::bad_input(
            "deleteOriginal needs audio: the original is deleted once its redacted copy is stored",
        ));
    }
    Ok(())
}
