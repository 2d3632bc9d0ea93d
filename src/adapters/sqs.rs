//! The production job queue: an SQS standard queue with a dead-letter queue — long polling,
//! visibility leases and heartbeats, batched deletes, redrive after `maxReceiveCount` receives.
//! A job's trace context also travels as its `traceparent` message attribute.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{anyhow, Context};
use async_trait::async_trait;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, Message, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName, SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;
use tokio::sync::{mpsc, oneshot};

use crate::domain::JobMessage;
use crate::ports::{DeadLetter, JobQueue, Lease};
use crate::telemetry::TRACEPARENT;

/// SQS takes at most 10 messages per receive and 10 entries per batch.
const SQS_BATCH: usize = 10;
/// The longest long poll SQS allows.
const MAX_WAIT_SECS: u64 = 20;
/// The longest visibility timeout SQS allows (12 hours).
const MAX_VISIBILITY_SECS: u64 = 43_200;
/// How long the first ack of a batch waits for others to join it: short next to a round trip,
/// long enough to gather the acks of jobs that finish together.
const ACK_LINGER: Duration = Duration::from_millis(5);

/// One ack waiting for its batch: the receipt to delete and where to report the outcome.
struct PendingAck {
    receipt: String,
    done: oneshot::Sender<anyhow::Result<()>>,
}

pub struct SqsQueue {
    client: Client,
    queue_url: String,
    max_receives: u32,
    /// The dead-letter queue's ARN, from the redrive policy, and its URL once looked up.
    dead_letter_arn: Option<String>,
    dead_letter_url: tokio::sync::OnceCell<String>,
    /// Feeds the batching task; dropping the queue closes it and ends the task.
    acks: mpsc::UnboundedSender<PendingAck>,
}

impl std::fmt::Debug for SqsQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsQueue")
            .field("queue_url", &self.queue_url)
            .field("max_receives", &self.max_receives)
            .finish_non_exhaustive()
    }
}

/// Whole seconds, rounded up so that a lease or a wait is never shorter than asked (SQS counts
/// visibility and long polls in seconds), and capped at what SQS accepts.
fn whole_secs(d: Duration, max: u64) -> i32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.min(max) as i32
}

/// The `traceparent` message attribute of a job that carries a trace context.
fn trace_attributes(
    message: &JobMessage,
) -> anyhow::Result<Option<HashMap<String, MessageAttributeValue>>> {
    let Some(tp) = &message.traceparent else {
        return Ok(None);
    };
    let value = MessageAttributeValue::builder()
        .data_type("String")
        .string_value(tp)
        .build()?;
    Ok(Some(HashMap::from([(TRACEPARENT.to_string(), value)])))
}

/// `maxReceiveCount` from a queue's `RedrivePolicy` JSON, which SQS returns as a string or a
/// number depending on how the policy was written.
fn max_receive_count(policy: &str) -> anyhow::Result<u32> {
    let policy: serde_json::Value =
        serde_json::from_str(policy).context("the RedrivePolicy is not JSON")?;
    let count = &policy["maxReceiveCount"];
    let count = match count {
        serde_json::Value::String(s) => s.parse::<u32>().ok(),
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        _ => None,
    };
    count
        .filter(|&n| n >= 1)
        .context("the RedrivePolicy has no valid maxReceiveCount")
}

impl SqsQueue {
    /// Uses the queue at `queue_url`, which must have a dead-letter queue: without one a job that
    /// keeps failing would be retried forever, and `max_receives()` would mean nothing.
    pub async fn connect(client: Client, queue_url: String) -> anyhow::Result<Self> {
        let attributes = client
            .get_queue_attributes()
            .queue_url(&queue_url)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .with_context(|| format!("reading the redrive policy of SQS queue {queue_url}"))?;
        let policy = attributes
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::RedrivePolicy))
            .with_context(|| {
                format!(
                    "SQS queue {queue_url} has no redrive policy: configure a dead-letter queue \
                     (RedrivePolicy with deadLetterTargetArn and maxReceiveCount) so that jobs \
                     that keep failing stop being retried"
                )
            })?;
        let max_receives = max_receive_count(policy)
            .with_context(|| format!("reading the redrive policy of SQS queue {queue_url}"))?;
        let dead_letter_arn = serde_json::from_str::<serde_json::Value>(policy)
            .ok()
            .and_then(|p| p["deadLetterTargetArn"].as_str().map(str::to_string));

        let (acks, pending) = mpsc::unbounded_channel();
        tokio::spawn(delete_in_batches(
            client.clone(),
            queue_url.clone(),
            pending,
        ));
        Ok(Self {
            client,
            queue_url,
            max_receives,
            dead_letter_arn,
            dead_letter_url: tokio::sync::OnceCell::new(),
            acks,
        })
    }

    async fn change_visibility(&self, lease: &Lease, timeout: Duration) -> anyhow::Result<()> {
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(&lease.receipt)
            .visibility_timeout(whole_secs(timeout, MAX_VISIBILITY_SECS))
            .send()
            .await
            .with_context(|| {
                format!(
                    "changing the visibility of a message in SQS queue {} (the lease may be lost)",
                    self.queue_url
                )
            })?;
        Ok(())
    }

    /// Turns a received message into a lease, or `None` for a body no worker can read.
    async fn lease(&self, message: Message) -> anyhow::Result<Option<Lease>> {
        let receipt = message
            .receipt_handle
            .with_context(|| format!("SQS queue {} returned no receipt handle", self.queue_url))?;
        let body = message.body.unwrap_or_default();
        let mut parsed = match serde_json::from_str::<JobMessage>(&body) {
            Ok(m) => m,
            Err(e) => {
                // It would fail on every delivery until the dead-letter queue took it; drop it now
                // and leave a trace instead.
                tracing::error!(
                    queue = %self.queue_url,
                    message_id = message.message_id.as_deref().unwrap_or(""),
                    error = %e,
                    body = %body.chars().take(200).collect::<String>(),
                    "deleting an unreadable job message"
                );
                self.client
                    .delete_message()
                    .queue_url(&self.queue_url)
                    .receipt_handle(&receipt)
                    .send()
                    .await
                    .with_context(|| {
                        format!(
                            "deleting an unreadable message from SQS queue {}",
                            self.queue_url
                        )
                    })?;
                return Ok(None);
            }
        };
        let receive_count = message
            .attributes
            .as_ref()
            .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or_else(|| {
                // SQS always returns it when asked; count the receive at least once.
                tracing::warn!(queue = %self.queue_url, "a message came without its receive count");
                1
            });
        // The message attribute is where SQS carries trace context; the body's copy serves
        // messages sent without it.
        if let Some(tp) = message
            .message_attributes
            .as_ref()
            .and_then(|a| a.get(TRACEPARENT))
            .and_then(|v| v.string_value())
        {
            parsed.traceparent = Some(tp.to_string());
        }
        Ok(Some(Lease {
            receipt,
            message: parsed,
            receive_count,
        }))
    }

    fn queue_attribute(
        &self,
        attributes: &HashMap<QueueAttributeName, String>,
        name: QueueAttributeName,
    ) -> anyhow::Result<u64> {
        attributes
            .get(&name)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("SQS queue {} did not report {name}", self.queue_url))
    }
}

#[async_trait]
impl JobQueue for SqsQueue {
    /// A standard queue cannot deduplicate, so `dedup_key` is ignored; the worker skips a job
    /// whose call is already finished.
    async fn send(&self, message: &JobMessage, _dedup_key: Option<&str>) -> anyhow::Result<()> {
        let body = serde_json::to_string(message)?;
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .set_message_attributes(trace_attributes(message)?)
            .send()
            .await
            .with_context(|| format!("sending a job to SQS queue {}", self.queue_url))?;
        Ok(())
    }

    /// A long poll of the dead-letter queue. What is received there stays invisible to other
    /// readers for three polls (at least 5 s), then comes back unless forgotten.
    async fn receive_dead(&self, max: usize, wait: Duration) -> anyhow::Result<Vec<DeadLetter>> {
        let url = self.dead_letter_url().await?;
        let received = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(max.clamp(1, SQS_BATCH) as i32)
            .visibility_timeout(whole_secs(
                (wait * 3).max(Duration::from_secs(5)),
                MAX_VISIBILITY_SECS,
            ))
            .wait_time_seconds(whole_secs(wait, MAX_WAIT_SECS))
            .send()
            .await
            .with_context(|| format!("receiving from the dead-letter queue {url}"))?;
        let mut dead = Vec::new();
        for message in received.messages.unwrap_or_default() {
            let Some(handle) = message.receipt_handle else {
                continue;
            };
            match serde_json::from_str::<JobMessage>(message.body.as_deref().unwrap_or("")) {
                Ok(message) => dead.push(DeadLetter { handle, message }),
                Err(e) => {
                    // It names no call: nothing to mark. Left for operators to look at.
                    tracing::warn!(queue = %url, error = %e, "an unreadable dead letter");
                }
            }
        }
        Ok(dead)
    }

    async fn forget_dead(&self, dead: &DeadLetter) -> anyhow::Result<()> {
        let url = self.dead_letter_url().await?;
        self.client
            .delete_message()
            .queue_url(url)
            .receipt_handle(&dead.handle)
            .send()
            .await
            .with_context(|| format!("deleting a handled dead letter from {url}"))?;
        Ok(())
    }

    /// `SendMessageBatch`, ten jobs to a call.
    async fn send_batch(&self, jobs: &[(JobMessage, String)]) -> Vec<anyhow::Result<()>> {
        let mut out = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(SQS_BATCH) {
            out.extend(self.send_chunk(chunk).await);
        }
        out
    }

    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> anyhow::Result<Vec<Lease>> {
        let received = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(max.clamp(1, SQS_BATCH) as i32)
            .visibility_timeout(whole_secs(visibility, MAX_VISIBILITY_SECS))
            .wait_time_seconds(whole_secs(wait, MAX_WAIT_SECS))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_attribute_names(TRACEPARENT)
            .send()
            .await
            .with_context(|| format!("receiving jobs from SQS queue {}", self.queue_url))?;
        let mut leases = Vec::new();
        for message in received.messages.unwrap_or_default() {
            if let Some(lease) = self.lease(message).await? {
                leases.push(lease);
            }
        }
        Ok(leases)
    }

    async fn extend(&self, lease: &Lease, visibility: Duration) -> anyhow::Result<()> {
        self.change_visibility(lease, visibility).await
    }

    async fn ack(&self, lease: &Lease) -> anyhow::Result<()> {
        let (done, result) = oneshot::channel();
        self.acks
            .send(PendingAck {
                receipt: lease.receipt.clone(),
                done,
            })
            .map_err(|_| anyhow!("the ack batcher of SQS queue {} stopped", self.queue_url))?;
        result.await.with_context(|| {
            format!(
                "the ack batcher of SQS queue {} dropped an ack",
                self.queue_url
            )
        })?
    }

    async fn nack(&self, lease: &Lease, delay: Duration) -> anyhow::Result<()> {
        self.change_visibility(lease, delay).await
    }

    fn max_receives(&self) -> u32 {
        self.max_receives
    }

    async fn depth(&self) -> anyhow::Result<u64> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .with_context(|| format!("reading the depth of SQS queue {}", self.queue_url))?;
        let attributes = out.attributes.unwrap_or_default();
        let visible =
            self.queue_attribute(&attributes, QueueAttributeName::ApproximateNumberOfMessages)?;
        let leased = self.queue_attribute(
            &attributes,
            QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
        )?;
        Ok(visible + leased)
    }
}

impl SqsQueue {
    /// The dead-letter queue's URL, looked up by the name and account in its ARN
    /// (`arn:aws:sqs:<region>:<account>:<name>`) the first time it is needed.
    async fn dead_letter_url(&self) -> anyhow::Result<&str> {
        let arn = self.dead_letter_arn.as_deref().with_context(|| {
            format!(
                "the redrive policy of SQS queue {} names no dead-letter queue",
                self.queue_url
            )
        })?;
        let url = self
            .dead_letter_url
            .get_or_try_init(|| async {
                let parts: Vec<&str> = arn.split(':').collect();
                anyhow::ensure!(parts.len() == 6, "not an SQS queue ARN: {arn}");
                let out = self
                    .client
                    .get_queue_url()
                    .queue_name(parts[5])
                    .queue_owner_aws_account_id(parts[4])
                    .send()
                    .await
                    .with_context(|| format!("looking up the dead-letter queue {arn}"))?;
                out.queue_url
                    .with_context(|| format!("no URL for the dead-letter queue {arn}"))
            })
            .await?;
        Ok(url)
    }

    /// One `SendMessageBatch` of at most ten jobs; entry ids are positions in the chunk.
    async fn send_chunk(&self, chunk: &[(JobMessage, String)]) -> Vec<anyhow::Result<()>> {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, (message, _))| {
                let body = serde_json::to_string(message)?;
                Ok(SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(body)
                    .set_message_attributes(trace_attributes(message)?)
                    .build()?)
            })
            .collect::<anyhow::Result<Vec<_>>>();
        let outcome = match entries {
            Ok(entries) => self
                .client
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(anyhow::Error::new),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(out) => {
                let failed: HashMap<String, String> = out
                    .failed()
                    .iter()
                    .map(|f| {
                        let reason = format!("{}: {}", f.code(), f.message().unwrap_or(""));
                        (f.id().to_string(), reason)
                    })
                    .collect();
                (0..chunk.len())
                    .map(|i| match failed.get(&i.to_string()) {
                        Some(reason) => Err(anyhow!(
                            "sending a job to SQS queue {}: {reason}",
                            self.queue_url
                        )),
                        None => Ok(()),
                    })
                    .collect()
            }
            Err(e) => {
                let e = format!("sending jobs to SQS queue {}: {e:#}", self.queue_url);
                chunk.iter().map(|_| Err(anyhow!("{e}"))).collect()
            }
        }
    }
}

/// Owns the deletes: gathers acks from concurrent jobs into `DeleteMessageBatch` calls of up to
/// 10 entries, and answers each ack with the outcome of its own entry. Ends when the queue is
/// dropped.
async fn delete_in_batches(
    client: Client,
    queue_url: String,
    mut pending: mpsc::UnboundedReceiver<PendingAck>,
) {
    while let Some(first) = pending.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + ACK_LINGER;
        while batch.len() < SQS_BATCH {
            match tokio::time::timeout_at(deadline, pending.recv()).await {
                Ok(Some(ack)) => batch.push(ack),
                // Time is up, or the queue is gone: send what we have.
                Ok(None) | Err(_) => break,
            }
        }
        delete_batch(&client, &queue_url, batch).await;
    }
}

async fn delete_batch(client: &Client, queue_url: &str, batch: Vec<PendingAck>) {
    // Entry ids are positions in the batch, so each result finds its ack.
    let entries = batch
        .iter()
        .enumerate()
        .map(|(i, ack)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(&ack.receipt)
                .build()
        })
        .collect::<Result<Vec<_>, _>>();
    let outcome = match entries {
        Ok(entries) => client
            .delete_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(anyhow::Error::new),
        Err(e) => Err(anyhow::Error::new(e)),
    };
    let mut failed: HashMap<String, String> = HashMap::new();
    let mut succeeded: Vec<String> = Vec::new();
    let batch_error = match outcome {
        Ok(out) => {
            for f in out.failed() {
                failed.insert(
                    f.id().to_string(),
                    format!("{}: {}", f.code(), f.message().unwrap_or("")),
                );
            }
            succeeded.extend(out.successful().iter().map(|s| s.id().to_string()));
            None
        }
        // The error is not `Clone`: every entry gets its full text.
        Err(e) => Some(format!("{e:#}")),
    };
    for (i, ack) in batch.into_iter().enumerate() {
        let id = i.to_string();
        let result = if let Some(e) = &batch_error {
            Err(anyhow!(
                "deleting a message from SQS queue {queue_url}: {e}"
            ))
        } else if let Some(reason) = failed.get(&id) {
            Err(anyhow!(
                "deleting a message from SQS queue {queue_url} failed (the lease may be lost): \
                 {reason}"
            ))
        } else if succeeded.contains(&id) {
            Ok(())
        } else {
            Err(anyhow!(
                "deleting a message from SQS queue {queue_url}: no result for the entry"
            ))
        };
        // The ack may have stopped waiting (its job was cancelled); nothing to tell then.
        let _ = ack.done.send(result);
    }
}
