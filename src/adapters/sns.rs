//! The production `EventPublisher`: call events go to an SNS topic as JSON, with `tenant`, `kind`
//! and `status` message attributes for subscription filter policies, and `traceparent` when the
//! event carries a trace context (raw delivery hands it on to the subscribed SQS queue).

use anyhow::Context;
use async_trait::async_trait;
use aws_sdk_sns::types::MessageAttributeValue;

use crate::domain::EventEnvelope;
use crate::ports::EventPublisher;
use crate::telemetry::TRACEPARENT;

pub struct SnsPublisher {
    client: aws_sdk_sns::Client,
    topic_arn: String,
}

impl SnsPublisher {
    pub fn new(client: aws_sdk_sns::Client, topic_arn: String) -> Self {
        Self { client, topic_arn }
    }
}

fn string_attribute(value: &str) -> anyhow::Result<MessageAttributeValue> {
    Ok(MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()?)
}

#[async_trait]
impl EventPublisher for SnsPublisher {
    async fn publish(&self, event: &EventEnvelope) -> anyhow::Result<()> {
        let message = serde_json::to_string(event).context("encoding the event")?;
        let mut publish = self
            .client
            .publish()
            .topic_arn(&self.topic_arn)
            .message(message)
            .message_attributes("tenant", string_attribute(&event.tenant_id.to_string())?)
            .message_attributes("kind", string_attribute(&event.kind)?)
            .message_attributes("status", string_attribute(event.status.as_str())?);
        if let Some(tp) = &event.traceparent {
            publish = publish.message_attributes(TRACEPARENT, string_attribute(tp)?);
        }
        publish.send().await.with_context(|| {
            format!(
                "publishing event {} to SNS topic {}",
                event.id, self.topic_arn
            )
        })?;
        Ok(())
    }
}
