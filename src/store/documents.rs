//! Capabilities kept in the application's own database (SQLite or Postgres): persisted GraphQL
//! documents when no Redis is configured.

use async_trait::async_trait;
use entities::persisted_queries;
use sea_orm::{DatabaseConnection, EntityTrait, Set};

use super::Store;
use crate::ports::DocumentStore;

pub struct DbDocumentStore {
    db: DatabaseConnection,
}

impl DbDocumentStore {
    pub fn new(store: &Store) -> Self {
        Self {
            db: store.db.clone(),
        }
    }
}

#[async_trait]
impl DocumentStore for DbDocumentStore {
    async fn get(&self, hash: &str) -> anyhow::Result<Option<String>> {
        Ok(persisted_queries::Entity::find_by_id(hash.to_string())
            .one(&self.db)
            .await?
            .map(|m| m.query))
    }

    async fn put(&self, hash: &str, document: &str) -> anyhow::Result<()> {
        persisted_queries::Entity::insert(persisted_queries::ActiveModel {
            hash: Set(hash.to_string()),
            query: Set(document.to_string()),
            created_at: Set(chrono::Utc::now()),
        })
        .on_conflict_do_nothing_on([persisted_queries::Column::Hash])
        .exec_without_returning(&self.db)
        .await?;
        Ok(())
    }
}
