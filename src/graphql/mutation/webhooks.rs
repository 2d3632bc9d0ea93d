//! Managing a tenant's webhook endpoints and redelivering their deliveries.

use async_graphql::{Context, ErrorExtensions, InputObject, Object, Result, ID};

use crate::domain::CallEventKind;
use crate::graphql::types::{Webhook, WebhookDelivery, WebhookWithSecret};
use crate::graphql::{caller, parse_id, state};
use crate::services::webhooks::{self, WebhookInput};

/// A new endpoint.
#[derive(InputObject)]
pub struct CreateWebhookInput {
    /// Where to POST deliveries: `https://…` (or `http://`), at most 2048 characters, with no
    /// credentials in it. In production it must resolve to public addresses only.
    pub url: String,
    /// The event kinds to deliver; omitted or empty for every kind.
    pub events: Option<Vec<CallEventKind>>,
    /// What it is for (at most 500 characters).
    pub description: Option<String>,
}

/// Changes to an endpoint: the fields given replace the endpoint's; the others stay.
#[derive(InputObject)]
pub struct UpdateWebhookInput {
    /// A new URL, checked as for `createWebhook`.
    pub url: Option<String>,
    /// New event kinds; empty for every kind.
    pub events: Option<Vec<CallEventKind>>,
    /// A new description; an empty string removes it.
    pub description: Option<String>,
}

#[derive(Default)]
pub struct WebhooksMutation;

#[Object]
impl WebhooksMutation {
    /// Registers an endpoint for the tenant's call events and returns its signing secret, shown
    /// this once. Every event of a kind it takes is delivered from now on. ADMIN.
    /// BAD_USER_INPUT for an invalid URL (not http(s), credentials in it, private addresses in
    /// production), or past 20 endpoints.
    async fn create_webhook(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The endpoint.")] input: CreateWebhookInput,
    ) -> Result<WebhookWithSecret> {
        let input = WebhookInput {
            url: Some(input.url),
            description: input.description,
            events: input.events,
        };
        let created = webhooks::create(state(ctx), caller(ctx)?, input)
            .await
            .map_err(|e| e.extend())?;
        Ok(WebhookWithSecret {
            secret: created.secret,
            webhook: Webhook(created.webhook),
        })
    }

    /// Changes an endpoint's URL, kinds or description. ADMIN. NOT_FOUND when the tenant has no
    /// such endpoint; BAD_USER_INPUT as for `createWebhook`.
    async fn update_webhook(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The endpoint's id (`Webhook.id`).")] id: ID,
        #[graphql(desc = "What changes.")] input: UpdateWebhookInput,
    ) -> Result<Webhook> {
        let id = parse_id(&id)?;
        let input = WebhookInput {
            url: input.url,
            description: input.description,
            events: input.events,
        };
        webhooks::update(state(ctx), caller(ctx)?, id, input)
            .await
            .map(Webhook)
            .map_err(|e| e.extend())
    }

    /// Deletes an endpoint and its delivery log; deliveries not made yet are dropped. ADMIN.
    /// NOT_FOUND when the tenant has no such endpoint.
    async fn delete_webhook(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The endpoint's id (`Webhook.id`).")] id: ID,
    ) -> Result<Webhook> {
        let id = parse_id(&id)?;
        webhooks::delete(state(ctx), caller(ctx)?, id)
            .await
            .map(Webhook)
            .map_err(|e| e.extend())
    }

    /// Gives an endpoint a new signing secret, returned this once. For 24 hours deliveries carry
    /// signatures with both the new and the old secret, so the receiver can switch without
    /// missing one. ADMIN. NOT_FOUND when the tenant has no such endpoint.
    async fn rotate_webhook_secret(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The endpoint's id (`Webhook.id`).")] id: ID,
    ) -> Result<WebhookWithSecret> {
        let id = parse_id(&id)?;
        let rotated = webhooks::rotate_secret(state(ctx), caller(ctx)?, id)
            .await
            .map_err(|e| e.extend())?;
        Ok(WebhookWithSecret {
            secret: rotated.secret,
            webhook: Webhook(rotated.webhook),
        })
    }

    /// Sends a delivery again now, whatever became of it (a dead one too): the same message
    /// (`webhook-id` and body) with a new timestamp and signature; its attempts stay in the
    /// log. ADMIN. NOT_FOUND when the tenant has no such delivery.
    async fn redeliver_webhook(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The delivery's id (`WebhookDelivery.id`).")] delivery_id: ID,
    ) -> Result<WebhookDelivery> {
        let id = parse_id(&delivery_id)?;
        let delivery = webhooks::redeliver(state(ctx), caller(ctx)?, id)
            .await
            .map_err(|e| e.extend())?;
        Ok(WebhookDelivery {
            delivery,
            attempts: Vec::new(),
        })
    }
}
