//! The in-process event bus: the relay publishes into a tokio broadcast channel and every
//! subscription of this process reads from it. A publisher never waits on a subscriber; one that
//! lags is told so and catches up from the database.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::domain::EventEnvelope;
use crate::ports::{EventFeed, EventPublisher};

#[derive(Clone)]
pub struct InProcessBus {
    tx: broadcast::Sender<Arc<EventEnvelope>>,
}

impl InProcessBus {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(16));
        Self { tx }
    }
}

#[async_trait]
impl EventPublisher for InProcessBus {
    async fn publish(&self, event: &EventEnvelope) -> anyhow::Result<()> {
        // No receivers is fine: nobody is subscribed on this instance right now.
        let _ = self.tx.send(Arc::new(event.clone()));
        Ok(())
    }
}

impl EventFeed for InProcessBus {
    fn subscribe(&self) -> broadcast::Receiver<Arc<EventEnvelope>> {
        self.tx.subscribe()
    }
}
