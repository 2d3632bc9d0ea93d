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
    /// A signed URL to upload a recording to, before `submitCall(input: {recordingKey})`.
    async fn create_recording_upload(
        &self,
        ctx: &Context<'_>,
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
            expires_at: put.expires_at,
        })
    }

    /// Submits a call for analysis: a `recording` upload or a `recordingKey`, plus metadata.
    async fn submit_call(
        &self,
        ctx: &Context<'_>,
        input: SubmitCallInput,
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
            started_at: input.started_at,
            tags: input.tags,
            metadata: input.metadata.map(|j| j.0),
            channels: input.channels,
            transcript: input.transcript.map(Into::into),
            language: input.language,
            idempotency_key: input.idempotency_key,
        };
        let (call, deduplicated) = calls::submit_call(st, who, submit, recording)
            .await
            .map_err(|e| e.extend())?;
        Ok(SubmitCallPayload {
            call: Call(call),
            deduplicated,
        })
    }

    /// Queues a FAILED call again.
    async fn retry_call(&self, ctx: &Context<'_>, id: ID) -> Result<Call> {
        let id = parse_id(&id)?;
        Ok(Call(
            calls::retry_call(state(ctx), caller(ctx)?, id)
                .await
                .map_err(|e| e.extend())?,
        ))
    }

    /// Adds tags to a call.
    async fn tag_call(&self, ctx: &Context<'_>, id: ID, tags: Vec<String>) -> Result<Call> {
        let id = parse_id(&id)?;
        Ok(Call(
            calls::tag_call(state(ctx), caller(ctx)?, id, tags)
                .await
                .map_err(|e| e.extend())?,
        ))
    }

    /// Deletes a call: its rows, recording and results.
    async fn delete_call(&self, ctx: &Context<'_>, id: ID) -> Result<DeleteCallPayload> {
        let uuid = parse_id(&id)?;
        calls::delete_call(state(ctx), caller(ctx)?, uuid)
            .await
            .map_err(|e| e.extend())?;
        Ok(DeleteCallPayload { deleted_id: id })
    }
}
