//! The job loop. `process_one` is the whole of one job, public and deterministic; the loop around
//! it only leases, bounds concurrency, backs off and drains on shutdown.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use std::sync::Arc;

use crate::config::AnalyzerKind;
use crate::domain::redaction::{self, RedactionPolicy, RedactionSpan};
use crate::domain::{
    Analysis, AnalysisRecord, AnalysisRequest, CallRecord, CategoryRule, TranscriptInput,
};
use crate::ports::{AnalyzeError, Analyzer, Audio, Lease};
use crate::state::AppState;
use crate::store::{RedactedRecording, ResultKeys};

/// What became of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    /// A duplicate or stale job: the call is finished or gone.
    Skipped,
    /// Failed this time; the job will be delivered again after a delay.
    WillRetry(String),
    /// Failed for good; the call is `FAILED`.
    Failed(String),
    /// A newer attempt owns the call; this one wrote nothing.
    Fenced,
}

/// Marks the call `PROCESSING` and claims a new attempt number. `None` when there is nothing to
/// do (the call is finished or deleted).
pub async fn start_attempt(
    state: &AppState,
    lease: &Lease,
) -> anyhow::Result<Option<(CallRecord, AnalysisRecord, i32)>> {
    let Some((call, analysis)) = state.store.start_attempt(&lease.message).await? else {
        return Ok(None);
    };
    state.relay_wakeup.notify_one();
    let attempt = call.attempts;
    Ok(Some((call, analysis, attempt)))
}

/// The analyser an analysis asked for: the deployment's default when it named none (or named
/// the default), else the local one or Gemini.
fn analyzer_for(
    state: &AppState,
    analysis: &AnalysisRecord,
) -> Result<Arc<dyn Analyzer>, AnalyzeError> {
    let asked = analysis.analyzer.as_deref();
    match asked.and_then(AnalyzerKind::parse) {
        None if asked.is_none() => Ok(state.analyzer.clone()),
        None => Err(AnalyzeError::Permanent(format!(
            "the analysis asks for an analyser this worker does not know ({asked:?})"
        ))),
        Some(kind) if kind == state.settings.analyzer => Ok(state.analyzer.clone()),
        Some(AnalyzerKind::Local) => Ok(state.local_analyzer.clone()),
        Some(AnalyzerKind::Gemini) => state.gemini_analyzer.clone().ok_or_else(|| {
            AnalyzeError::Permanent(
                "Gemini is not configured on this deployment (no VOICEGRAPH_GEMINI_API_KEY)".into(),
            )
        }),
    }
}

fn analysis_request(call: &CallRecord, categories: Vec<CategoryRule>) -> AnalysisRequest {
    AnalysisRequest {
        channels: call
            .channels
            .clone()
            .and_then(|c| serde_json::from_value(c).ok()),
        transcript: call
            .transcript_input
            .clone()
            .and_then(|t| serde_json::from_value::<TranscriptInput>(t).ok()),
        language: call.language.clone(),
        categories,
    }
}

/// Analyses the call and stores the results. Errors are classified by the caller.
async fn analyse(
    state: &AppState,
    call: &CallRecord,
    record: &AnalysisRecord,
) -> Result<(Analysis, ResultKeys), AnalyzeError> {
    let analyzer = analyzer_for(state, record)?;
    // The tenant's categories as they are when the analysis starts.
    let categories = state
        .store
        .list_categories(call.tenant_id)
        .await
        .map_err(|e| AnalyzeError::Transient(anyhow::anyhow!("reading the categories: {e}")))?
        .iter()
        .map(|c| c.rule())
        .collect();
    let key = call
        .recording_key
        .as_deref()
        .ok_or_else(|| AnalyzeError::Permanent("the call has no recording".into()))?;
    // The recording is streamed to a temporary file (removed when `file` drops), so that a large
    // one never has to fit in memory.
    let file = tempfile::NamedTempFile::new().map_err(anyhow::Error::from)?;
    state
        .blobs
        .download(key, file.path())
        .await?
        .ok_or_else(|| {
            AnalyzeError::Permanent("the recording is missing from the blob store".into())
        })?;
    // What is analysed is what was checked at submission: the stored copy is beyond every
    // signed URL's reach, and its hash is verified here all the same.
    if let Some(expected) = call.recording_sha256.clone() {
        let path = file.path().to_path_buf();
        let actual = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            let mut hasher = Sha256::new();
            std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
            Ok(hex::encode(hasher.finalize()))
        })
        .await
        .map_err(anyhow::Error::from)?
        .map_err(anyhow::Error::from)?;
        if actual != expected {
            return Err(AnalyzeError::Permanent(
                "the stored recording is not the one checked at submission (its SHA-256 differs)"
                    .into(),
            ));
        }
    }
    let started = Instant::now();
    let mut analysis = analyzer
        .analyze(
            Audio::File(file.path().to_path_buf()),
            analysis_request(call, categories),
        )
        .await?;
    let analyser = record
        .analyzer
        .as_deref()
        .unwrap_or(state.settings.analyzer.as_str());
    state
        .metrics
        .analysis_seconds
        .with_label_values(&[analyser])
        .observe(started.elapsed().as_secs_f64());
    let redactions = match call.redaction.filter(|p| p.any()) {
        Some(policy) => redact(state, call, policy, &mut analysis, file.path()).await?,
        None => Vec::new(),
    };
    let mut keys = ResultKeys {
        results: crate::domain::result_key(call.tenant_id, call.id, record.id),
        model_responses: None,
    };
    if !analysis.model_responses.is_empty() {
        // What the model answered, as it answered it, beside the results parsed from it.
        let raw =
            serde_json::to_vec_pretty(&analysis.model_responses).map_err(anyhow::Error::from)?;
        let key = crate::domain::model_responses_key(call.tenant_id, call.id, record.id);
        state
            .blobs
            .put(&key, raw.into(), "application/json")
            .await?;
        keys.model_responses = Some(key);
    }
    let mut document = crate::domain::results::ResultsDocument::of(call.id, record.id, &analysis);
    document.redactions = redactions;
    let json = serde_json::to_vec_pretty(&document).map_err(anyhow::Error::from)?;
    state
        .blobs
        .put(&keys.results, json.into(), "application/json")
        .await?;
    Ok((analysis, keys))
}

/// Redacts the analysis as the call's policy says, and the recording: a copy with a tone over
/// every stretch where personal data is said replaces it, and the original (with the upload it
/// came from) is deleted through the outbox when the policy says so, once the call points at
/// the copy. Returns what was found.
async fn redact(
    state: &AppState,
    call: &CallRecord,
    policy: RedactionPolicy,
    analysis: &mut Analysis,
    recording: &std::path::Path,
) -> Result<Vec<RedactionSpan>, AnalyzeError> {
    let started = Instant::now();
    let spans = redaction::redact_analysis(analysis, policy.transcript);
    let transcript_input = match (policy.transcript, call.transcript_input.clone()) {
        (true, Some(mut t)) => {
            redaction::redact_json(&mut t);
            Some(t)
        }
        _ => None,
    };
    let ranges = redaction::audio_spans(&spans);
    let mut replaced = None;
    let mut delete = Vec::new();
    if policy.audio && !ranges.is_empty() {
        let current = call.recording_key.clone().unwrap_or_default();
        let key = redaction::redacted_recording_key(call.tenant_id, call.id);
        let wav = state
            .acoustics
            .redact(Audio::File(recording.to_path_buf()), ranges)
            .await?;
        let sha256 = hex::encode(Sha256::digest(&wav));
        let bytes = wav.len() as i64;
        state.blobs.put(&key, wav.into(), "audio/wav").await?;
        // A re-analysis redacts the copy again: the original stays where the first one left it.
        let original_key = if current == key {
            call.original_recording_key.clone()
        } else if policy.delete_original {
            delete.push(current);
            delete.extend(call.upload_key.clone());
            None
        } else {
            Some(current)
        };
        replaced = Some(RedactedRecording {
            key,
            content_type: "audio/wav".into(),
            bytes,
            sha256,
            original_key,
        });
    }
    state
        .store
        .record_redaction(
            call.tenant_id,
            call.id,
            replaced.as_ref(),
            transcript_input,
            serde_json::json!(spans),
            delete,
        )
        .await
        .map_err(|e| AnalyzeError::Transient(anyhow::anyhow!("recording the redaction: {e}")))?;
    state.relay_wakeup.notify_one();
    state
        .metrics
        .analysis_seconds
        .with_label_values(&["redaction"])
        .observe(started.elapsed().as_secs_f64());
    tracing::info!(call = %call.id, found = spans.len(), audio = replaced.is_some(), "call redacted");
    Ok(spans)
}

/// Stores the results, the segments and the `COMPLETED` event in one transaction, only if this
/// attempt still owns the call.
async fn complete(
    state: &AppState,
    call: &CallRecord,
    record: &AnalysisRecord,
    attempt: i32,
    analysis: &Analysis,
    keys: ResultKeys,
) -> anyhow::Result<bool> {
    let done = state
        .store
        .complete_attempt(call, record.id, attempt, analysis, keys)
        .await?;
    if done {
        state.relay_wakeup.notify_one();
    }
    Ok(done)
}

/// Records a failed attempt: `FAILED` for good, or back to `QUEUED` to be retried.
async fn fail(
    state: &AppState,
    call: &CallRecord,
    record: &AnalysisRecord,
    attempt: i32,
    reason: &str,
    permanent: bool,
) -> anyhow::Result<bool> {
    let done = state
        .store
        .fail_attempt(call, record.id, attempt, reason, permanent)
        .await?;
    if done {
        state.relay_wakeup.notify_one();
    }
    Ok(done)
}

fn backoff(receive_count: u32, base: Duration) -> Duration {
    let factor = 1u32 << std::cmp::min(receive_count.saturating_sub(1), 8);
    (base * factor).min(Duration::from_secs(300))
}

/// Runs one leased job to its end, keeping the lease alive while it works.
pub async fn process_one(state: &AppState, lease: &Lease) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let Some((call, record, attempt)) = start_attempt(state, lease).await? else {
        // A duplicate of a finished job; if our lease already lapsed, the newer delivery is acked later.
        if let Err(e) = state.queue.ack(lease).await {
            tracing::debug!(error = %e, "acknowledging a skipped job failed");
        }
        return Ok(Outcome::Skipped);
    };
    let visibility = state.settings.job_visibility;
    let heartbeat = async {
        let mut tick = tokio::time::interval((visibility / 3).max(Duration::from_millis(100)));
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = state.queue.extend(lease, visibility).await {
                tracing::warn!(error = %e, "lease heartbeat failed");
            }
        }
    };
    let result = tokio::select! {
        r = analyse(state, &call, &record) => r,
        _ = heartbeat => unreachable!("the heartbeat never ends"),
    };
    let outcome = match result {
        Ok((analysis, keys)) => {
            if complete(state, &call, &record, attempt, &analysis, keys).await? {
                state.queue.ack(lease).await?;
                Outcome::Completed
            } else {
                Outcome::Fenced
            }
        }
        Err(e) => {
            let (reason, permanent) = match &e {
                AnalyzeError::Permanent(r) => (r.clone(), true),
                AnalyzeError::Transient(err) => (format!("{err:#}"), false),
            };
            let last = lease.receive_count >= state.queue.max_receives();
            if fail(state, &call, &record, attempt, &reason, permanent || last).await? {
                if permanent {
                    state.queue.ack(lease).await?;
                    Outcome::Failed(reason)
                } else if last {
                    // The call says it failed, and why (`retryCall` brings it back): the job
                    // is done. Only jobs whose outcome could not be recorded reach the
                    // dead-letter queue, where the dead-letter reader marks their calls.
                    state.queue.ack(lease).await?;
                    Outcome::Failed(reason)
                } else {
                    let delay = backoff(lease.receive_count, state.settings.job_retry_base);
                    state.queue.nack(lease, delay).await?;
                    Outcome::WillRetry(reason)
                }
            } else {
                Outcome::Fenced
            }
        }
    };
    state.metrics.job_finished(&outcome, started.elapsed());
    Ok(outcome)
}

/// Leases and processes jobs until `shutdown`; then stops leasing and lets in-flight jobs finish
/// (up to `grace`), releasing the ones that do not.
pub async fn run(state: AppState, shutdown: CancellationToken, grace: Duration) {
    let concurrency = state.settings.worker_concurrency.max(1);
    let mut running: JoinSet<()> = JoinSet::new();
    let leases_in_flight = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Lease>::new()));
    tracing::info!(concurrency, "worker started");
    let dead_letters = tokio::spawn(read_dead_letters(state.clone(), shutdown.clone()));
    let mut failures = 0u32;
    loop {
        while running.try_join_next().is_some() {}
        if shutdown.is_cancelled() {
            break;
        }
        let free = concurrency - running.len();
        if free == 0 {
            tokio::select! {
                _ = running.join_next() => {}
                _ = shutdown.cancelled() => {}
            }
            continue;
        }
        // A long wait: the queue returns as soon as a job comes (SQS caps the wait at 20 s).
        let received = tokio::select! {
            r = state.queue.receive(free, state.settings.job_visibility, state.settings.notify_fallback) => r,
            _ = shutdown.cancelled() => break,
        };
        let leases = match received {
            Ok(l) => {
                failures = 0;
                l
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "receiving jobs failed");
                tokio::time::sleep(Duration::from_millis(200) * std::cmp::min(failures, 25)).await;
                continue;
            }
        };
        for lease in leases {
            let state = state.clone();
            let in_flight = leases_in_flight.clone();
            in_flight.lock().expect("lease list").push(lease.clone());
            let span = tracing::info_span!("job", call = %lease.message.call_id, tenant = %lease.message.tenant_id, receive = lease.receive_count);
            // The analysis continues the trace of whoever queued the job; the events it writes
            // carry this span's context on.
            crate::telemetry::continue_trace(&span, lease.message.traceparent.as_deref());
            running.spawn(
                async move {
                    match process_one(&state, &lease).await {
                        Ok(outcome) => tracing::info!(?outcome, "job done"),
                        Err(e) => {
                            crate::telemetry::record_error(&tracing::Span::current(), &e);
                            // Nothing could be recorded (the database, say, is unreachable):
                            // released after a backoff, not held until its lease runs out. A
                            // job that runs out of deliveries this way is dead-lettered, and
                            // the dead-letter reader marks its call.
                            let delay = backoff(lease.receive_count, state.settings.job_retry_base);
                            tracing::error!(error = ?e, retry_in = ?delay, "job errored; it will be delivered again");
                            if let Err(e) = state.queue.nack(&lease, delay).await {
                                tracing::warn!(error = %e, "releasing the job failed; its lease runs out instead");
                            }
                        }
                    }
                    in_flight
                        .lock()
                        .expect("lease list")
                        .retain(|l| l.receipt != lease.receipt);
                }
                .instrument(span),
            );
        }
    }
    tracing::info!(in_flight = running.len(), "worker draining");
    let drained = tokio::time::timeout(grace, async {
        while running.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        running.abort_all();
        let left = std::mem::take(&mut *leases_in_flight.lock().expect("lease list"));
        for lease in left {
            if let Err(e) = state.queue.nack(&lease, Duration::ZERO).await {
                tracing::warn!(error = %e, "releasing a lease failed");
            }
        }
    }
    let _ = dead_letters.await;
    tracing::info!("worker stopped");
}

/// What a dead-lettered job's call says, as its error.
pub fn dead_letter_reason(max_receives: u32) -> String {
    format!(
        "the analysis job went to the dead-letter queue after {max_receives} deliveries that \
         recorded no outcome (the worker could not reach the database, or died, each time); \
         retryCall runs it again"
    )
}

/// Marks the calls of dead-lettered jobs `FAILED` and forgets the jobs, until `shutdown`. A
/// job dead-letters without its call being marked when no delivery could record anything (a
/// database outage longer than the deliveries last); without this, the call would stay
/// `QUEUED` for good. One that cannot be marked yet (the database still away) is left for the
/// next round.
pub async fn read_dead_letters(state: AppState, shutdown: CancellationToken) {
    let reason = dead_letter_reason(state.queue.max_receives());
    let poll = state.settings.dead_letter_poll;
    loop {
        let received = tokio::select! {
            r = state.queue.receive_dead(10, poll) => r,
            _ = shutdown.cancelled() => return,
        };
        let dead = match received {
            Ok(dead) => dead,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "reading dead letters failed");
                Vec::new()
            }
        };
        let full = dead.len() == 10;
        for letter in &dead {
            // The `FAILED` event joins the trace of the job that died.
            let span = tracing::info_span!("dead letter", call = %letter.message.call_id, tenant = %letter.message.tenant_id);
            crate::telemetry::continue_trace(&span, letter.message.traceparent.as_deref());
            match state
                .store
                .fail_dead_lettered(&letter.message, &reason)
                .instrument(span)
                .await
            {
                Ok(marked) => {
                    if marked {
                        state.relay_wakeup.notify_one();
                        tracing::warn!(call = %letter.message.call_id, tenant = %letter.message.tenant_id, "a dead-lettered job's call is FAILED");
                    }
                    if let Err(e) = state.queue.forget_dead(letter).await {
                        tracing::warn!(error = %format!("{e:#}"), "forgetting a dead letter failed; it is handled again");
                    }
                }
                Err(e) => {
                    tracing::warn!(call = %letter.message.call_id, error = %format!("{e:#}"), "marking a dead-lettered job's call failed; next round");
                }
            }
        }
        if !full {
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}
