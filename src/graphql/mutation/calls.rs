//! Submitting and managing calls.

use std::io::Read;

use async_graphql::{Context, ErrorExtensions, Object, Result, ID};
use bytes::Bytes;

use crate::error::AppError;
use crate::graphql::types::{
    Call, CreateRecordingUploadInput, DeleteCallPayload, HttpHeader, RecordingUpload,
    SubmitCallInput, SubmitCallPayload,
};
use crate::graphql::{caller, parse_id, state};
use crate::services::calls::{self, Recording, SubmitCall};

#[derive(Default)]
pub struct CallsMutation;

/// Reads a multipart upload, refusing it past `max` bytes whatever its headers claim.
async fn read_upload(
    ctx: &Context<'_>,
    upload: &async_graphql::Upload,
    max: u64,
) -> Result<(Bytes, Option<String>)> {
    let value = upload
        .value(ctx)
        .map_err(|e| AppError::bad_input(format!("recording: {e}")).extend())?;
    let content_type = value.content_type.clone();
    let data = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        value.into_read().take(max + 1).read_to_end(&mut buf)?;
        Ok(buf)
    })
    .await
    .map_err(|e| AppError::Internal(e.into()).extend())?
    .map_err(|e| AppError::Internal(e.into()).extend())?;
    if data.len() as u64 > max {
        return Err(
            AppError::bad_input(format!("the recording is larger than {max} bytes")).extend(),
        );
    }
    Ok((Bytes::from(data), content_type))
}

#[Object]
impl CallsMutation {
    /// The first step of submitting a recording by key, for files too large to send inline: a
    /// signed URL to upload the file to, then `submitCall(input: {recordingKey})`. ADMIN and
    /// INTEGRATOR. BAD_USER_INPUT for a content type that is not accepted or a size outside 1
    /// byte to the recording limit.
    async fn create_recording_upload(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The file to upload: its content type and exact size.")]
        input: CreateRecordingUploadInput,
    ) -> Result<RecordingUpload> {
        let (key, put) = calls::create_recording_upload(
            state(ctx),
            caller(ctx)?,
            &input.content_type,
            input.byte_size,
            input.file_name,
        )
        .await
        .map_err(|e| e.extend())?;
        Ok(RecordingUpload {
            recording_key: key,
            upload_url: put.url,
            method: put.method,
            headers: put
                .headers
                .into_iter()
                .map(|(name, value)| HttpHeader { name, value })
                .collect(),
            expires_at: put.expires_at.into(),
        })
    }

    /// Submits a call for analysis: a `recording` upload or a `recordingKey`, plus metadata. The
    /// recording is checked (size, type, decodable audio) before anything is stored; the call
    /// starts `QUEUED` and moves on by itself: follow it with the `callUpdated` or `callEvents`
    /// subscription, or poll `call`. ADMIN and INTEGRATOR. BAD_USER_INPUT for invalid input or
    /// recording (including both or neither of `recording` and `recordingKey`); CONFLICT when
    /// `idempotencyKey` was used for a different recording.
    async fn submit_call(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The call and its recording.")] input: SubmitCallInput,
    ) -> Result<SubmitCallPayload> {
        let st = state(ctx);
        let who = caller(ctx)?;
        let recording = match (&input.recording, input.recording_key.clone()) {
            (Some(upload), None) => {
                let (data, content_type) =
                    read_upload(ctx, upload, st.settings.max_recording_bytes).await?;
                Recording::Bytes { data, content_type }
            }
            (None, Some(key)) => Recording::Key(key),
            _ => {
                return Err(AppError::bad_input(
                    "pass exactly one of recording (an upload) or recordingKey",
                )
                .extend())
            }
        };
        let submit = SubmitCall {
            external_id: input.external_id,
            direction: input.direction,
            from: input.from,
            to: input.to,
            agent: input.agent,
            started_at: input.started_at.map(Into::into),
            tags: input.tags,
            metadata: input.metadata.map(|j| j.0),
            channels: input.channels,
            transcript: input.transcript.map(Into::into),
            language: input.language,
            idempotency_key: input.idempotency_key,
            redaction: input.redaction.map(Into::into).unwrap_or_default(),
        };
        let (call, deduplicated) = calls::submit_call(st, who, submit, recording)
            .await
            .map_err(|e| e.extend())?;
        Ok(SubmitCallPayload {
            call: Call::from(call),
            deduplicated,
        })
    }

    /// Queues a `FAILED` call for analysis again (a `RETRIED` event; the call is `QUEUED` and its
    /// `error` cleared) and returns it. ADMIN and INTEGRATOR. NOT_FOUND when the tenant has no
    /// such call; CONFLICT when it is not `FAILED`.
    async fn retry_call(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The call's id (`Call.id`).")] id: ID,
    ) -> Result<Call> {
        let id = parse_id(&id)?;
        Ok(Call::from(
            calls::retry_call(state(ctx), caller(ctx)?, id)
                .await
                .map_err(|e| e.extend())?,
        ))
    }

    /// Adds tags to a call and returns it; its tags stay and repeats are ignored (a `TAGGED`
    /// event). ADMIN, INTEGRATOR and ANALYST. BAD_USER_INPUT for an invalid tag or more than 50
    /// in all; NOT_FOUND when the tenant has no such call.
    async fn tag_call(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The call's id (`Call.id`).")] id: ID,
        #[graphql(
            desc = "Tags to add: each 1 to 64 characters of letters, digits, spaces and `- _ . : /`."
        )]
        tags: Vec<String>,
    ) -> Result<Call> {
        let id = parse_id(&id)?;
        Ok(Call::from(
            calls::tag_call(state(ctx), caller(ctx)?, id, tags)
                .await
                .map_err(|e| e.extend())?,
        ))
    }

    /// Deletes a call for good: the call, its segments and its events at once, its recording and
    /// results shortly after. Subscribers get a `DELETED` event. ADMIN and INTEGRATOR. NOT_FOUND
    /// when the tenant has no such call.
    async fn delete_call(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The call's id (`Call.id`).")] id: ID,
    ) -> Result<DeleteCallPayload> {
        let uuid = parse_id(&id)?;
        calls::delete_call(state(ctx), caller(ctx)?, uuid)
            .await
            .map_err(|e| e.extend())?;
        Ok(DeleteCallPayload { deleted_id: id })
    }
}
