//! A tenant's webhook endpoints and their delivery log.

use async_graphql::{Context, ErrorExtensions, InputObject, Object, Result, ID};

use crate::domain::webhooks::DeliveryStatus;
use crate::domain::CallEventKind;
use crate::graphql::types::{Webhook, WebhookDelivery, WebhookDeliveryPage};
use crate::graphql::{caller, parse_id, state};
use crate::services::webhooks;
use crate::store::DeliveryFilter;

/// Which deliveries to list; every condition given must hold.
#[derive(InputObject, Default)]
pub struct WebhookDeliveryFilter {
    /// Deliveries in any of these states.
    pub status: Option<Vec<DeliveryStatus>>,
    /// Deliveries of this call's events.
    pub call_id: Option<ID>,
    /// Deliveries of events of these kinds.
    pub event_kind: Option<Vec<CallEventKind>>,
}

#[derive(Default)]
pub struct WebhooksQuery;

#[Object]
impl WebhooksQuery {
    /// The tenant's webhook endpoints, oldest first. ADMIN.
    async fn webhooks(&self, ctx: &Context<'_>) -> Result<Vec<Webhook>> {
        Ok(webhooks::list(state(ctx), caller(ctx)?)
            .await
            .map_err(|e| e.extend())?
            .into_iter()
            .map(Webhook)
            .collect())
    }

    /// One endpoint of the tenant; null when there is none with this id. ADMIN.
    async fn webhook(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The endpoint's id.")] id: ID,
    ) -> Result<Option<Webhook>> {
        let id = parse_id(&id)?;
        Ok(webhooks::get(state(ctx), caller(ctx)?, id)
            .await
            .map_err(|e| e.extend())?
            .map(Webhook))
    }

    /// An endpoint's deliveries, newest first, each with every attempt (status, response code,
    /// latency, next retry). ADMIN. NOT_FOUND when the tenant has no such endpoint.
    async fn webhook_deliveries(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The endpoint's id.")] webhook_id: ID,
        #[graphql(desc = "Which deliveries.")] filter: Option<WebhookDeliveryFilter>,
        #[graphql(desc = "Deliveries in the page: 1 to 100 (default 20).")] first: Option<i32>,
        #[graphql(desc = "The `endCursor` of the previous page.")] after: Option<String>,
    ) -> Result<WebhookDeliveryPage> {
        let webhook = parse_id(&webhook_id)?;
        let filter = filter.unwrap_or_default();
        let filter = DeliveryFilter {
            statuses: filter.status.unwrap_or_default(),
            call_id: filter.call_id.as_ref().map(parse_id).transpose()?,
            kinds: filter.event_kind.unwrap_or_default(),
        };
        let page = webhooks::deliveries(state(ctx), caller(ctx)?, webhook, filter, first, after)
            .await
            .map_err(|e| e.extend())?;
        let end_cursor = page
            .deliveries
            .last()
            .filter(|_| page.has_next_page)
            .map(|(d, _)| webhooks::delivery_cursor(d));
        Ok(WebhookDeliveryPage {
            nodes: page
                .deliveries
                .into_iter()
                .map(|(delivery, attempts)| WebhookDelivery { delivery, attempts })
                .collect(),
            end_cursor,
            has_next_page: page.has_next_page,
        })
    }
}
