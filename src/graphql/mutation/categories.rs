//! Managing a tenant's categories and re-analysing calls.

use async_graphql::{Context, ErrorExtensions, InputObject, Object, Result, ID};

use crate::config::AnalyzerKind;
use crate::graphql::types::{Call, Category};
use crate::graphql::{caller, parse_id, state};
use crate::services::calls;
use crate::services::categories::{self, CategoryInput};

/// A new category.
#[derive(InputObject)]
pub struct CreateCategoryInput {
    /// 1 to 100 characters, unique in the tenant whatever the case.
    pub name: String,
    /// What the category means, for a model to follow ("the customer asks to cancel their
    /// contract"): at most 1000 characters, line breaks allowed. Gemini matches on it; the local
    /// analyser does not read it.
    pub instructions: Option<String>,
    /// Words or phrases whose mention in a segment matches the category, whole words in any
    /// case: at most 50, each 1 to 100 characters. A category needs instructions or keywords.
    pub keywords: Option<Vec<String>>,
}

/// Changes to a category: the fields given replace the category's; the others stay.
#[derive(InputObject)]
pub struct UpdateCategoryInput {
    /// A new name: 1 to 100 characters, unique in the tenant whatever the case.
    pub name: Option<String>,
    /// New instructions (at most 1000 characters); an empty string removes them.
    pub instructions: Option<String>,
    /// New keywords, replacing the old (at most 50, each 1 to 100 characters).
    pub keywords: Option<Vec<String>>,
}

#[derive(Default)]
pub struct CategoriesMutation;

#[Object]
impl CategoriesMutation {
    /// Creates a category; analyses from now on report where it matches. ADMIN and ANALYST.
    /// BAD_USER_INPUT for an invalid field, a category with neither instructions nor keywords,
    /// or past 100 categories; CONFLICT when the name is taken.
    async fn create_category(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The category.")] input: CreateCategoryInput,
    ) -> Result<Category> {
        let input = CategoryInput {
            name: Some(input.name),
            instructions: input.instructions,
            keywords: input.keywords,
        };
        categories::create(state(ctx), caller(ctx)?, input)
            .await
            .map(Category)
            .map_err(|e| e.extend())
    }

    /// Changes a category. Calls analysed already keep what they matched until they are
    /// analysed again (`reanalyzeCall`). ADMIN and ANALYST. NOT_FOUND when the tenant has no
    /// such category; BAD_USER_INPUT and CONFLICT as for `createCategory`.
    async fn update_category(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The category's id (`Category.id`).")] id: ID,
        #[graphql(desc = "What changes.")] input: UpdateCategoryInput,
    ) -> Result<Category> {
        let id = parse_id(&id)?;
        let input = CategoryInput {
            name: input.name,
            instructions: input.instructions,
            keywords: input.keywords,
        };
        categories::update(state(ctx), caller(ctx)?, id, input)
            .await
            .map(Category)
            .map_err(|e| e.extend())
    }

    /// Deletes a category and returns it as it was. Calls that matched it keep the match, with
    /// its name (`CategoryMatch.category` becomes null). ADMIN and ANALYST. NOT_FOUND when the
    /// tenant has no such category.
    async fn delete_category(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The category's id (`Category.id`).")] id: ID,
    ) -> Result<Category> {
        let id = parse_id(&id)?;
        categories::delete(state(ctx), caller(ctx)?, id)
            .await
            .map(Category)
            .map_err(|e| e.extend())
    }

    /// Analyses a `COMPLETED` or `FAILED` call again, from its stored recording (after new
    /// categories, a new model, or with another analyser), and returns it `QUEUED`: a
    /// `REANALYZED` event names the new analysis, whose `PROCESSING`, `COMPLETED`, `RETRYING`
    /// and `FAILED` events follow as for a submission. Every earlier analysis is kept
    /// (`Call.analyses`); the call's results stay those of its latest successful analysis until
    /// the new one completes, and if it fails. ADMIN and INTEGRATOR. NOT_FOUND when the tenant
    /// has no such call; CONFLICT while an analysis of it is queued or running; BAD_USER_INPUT
    /// for `GEMINI` on a deployment without a Gemini key.
    async fn reanalyze_call(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The call's id (`Call.id`).")] id: ID,
        #[graphql(desc = "The analyser to use; the deployment's default unless given.")]
        analyzer: Option<AnalyzerKind>,
    ) -> Result<Call> {
        let id = parse_id(&id)?;
        calls::reanalyze_call(state(ctx), caller(ctx)?, id, analyzer)
            .await
            .map(Call::from)
            .map_err(|e| e.extend())
    }
}
