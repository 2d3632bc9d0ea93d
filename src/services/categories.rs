//! A tenant's categories (like Transcribe Call Analytics' rules): what every analysis looks for
//! in the tenant's calls. The lexicon matches their keywords; Gemini their instructions and
//! keywords. Analyses read the categories as they are when they start; re-analysing a call
//! applies new or changed ones to it.

use uuid::Uuid;

use crate::domain::CategoryRecord;
use crate::error::{AppError, AppResult};
use crate::services::auth::{Caller, Permission};
use crate::services::calls::check_text;
use crate::state::AppState;
use crate::store::CategoryFields;

/// Categories one tenant may have (each goes into every analysis's instructions).
pub const MAX_CATEGORIES: u64 = 100;
/// Characters of a category's name.
pub const MAX_NAME: usize = 100;
/// Characters of a category's instructions.
pub const MAX_INSTRUCTIONS: usize = 1000;
/// Keywords of one category.
pub const MAX_KEYWORDS: usize = 50;
/// Characters of one keyword.
pub const MAX_KEYWORD: usize = 100;

/// A category's fields as a client gives them (`None`: unchanged, on an update).
#[derive(Debug, Clone, Default)]
pub struct CategoryInput {
    pub name: Option<String>,
    pub instructions: Option<String>,
    pub keywords: Option<Vec<String>>,
}

fn check_name(name: String) -> AppResult<String> {
    check_text(Some(name), "name", MAX_NAME)?
        .ok_or_else(|| AppError::bad_input("name must not be empty"))
}

/// Instructions: trimmed, at most [`MAX_INSTRUCTIONS`] characters, line breaks and tabs allowed
/// but no other control characters; empty is none.
fn check_instructions(text: Option<String>) -> AppResult<Option<String>> {
    let Some(t) = text.map(|t| t.trim().to_string()) else {
        return Ok(None);
    };
    if t.is_empty() {
        return Ok(None);
    }
    if t.chars().count() > MAX_INSTRUCTIONS {
        return Err(AppError::bad_input(format!(
            "instructions are longer than {MAX_INSTRUCTIONS} characters"
        )));
    }
    if t.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(AppError::bad_input(
            "instructions must not contain control characters other than line breaks and tabs",
        ));
    }
    Ok(Some(t))
}

/// Keywords: each trimmed (inner runs of white space made one space), 1 to [`MAX_KEYWORD`]
/// characters, at most [`MAX_KEYWORDS`], deduplicated whatever their case, in order.
fn check_keywords(keywords: Vec<String>) -> AppResult<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for k in keywords {
        let k = k.split_whitespace().collect::<Vec<_>>().join(" ");
        if k.is_empty() || k.chars().count() > MAX_KEYWORD {
            return Err(AppError::bad_input(format!(
                "keywords must be 1 to {MAX_KEYWORD} characters"
            )));
        }
        if k.chars().any(char::is_control) {
            return Err(AppError::bad_input(
                "keywords must not contain control characters",
            ));
        }
        if !out.iter().any(|o| o.to_lowercase() == k.to_lowercase()) {
            out.push(k);
        }
    }
    if out.len() > MAX_KEYWORDS {
        return Err(AppError::bad_input(format!(
            "a category has at most {MAX_KEYWORDS} keywords"
        )));
    }
    Ok(out)
}

/// The fields a category ends with: `input` over `current`, checked. A category needs
/// instructions or keywords, or nothing could match it.
fn fields(input: CategoryInput, current: Option<&CategoryRecord>) -> AppResult<CategoryFields> {
    let name = match (input.name, current) {
        (Some(n), _) => check_name(n)?,
        (None, Some(c)) => c.name.clone(),
        (None, None) => return Err(AppError::bad_input("name is required")),
    };
    let instructions = match input.instructions {
        Some(i) => check_instructions(Some(i))?,
        None => current.and_then(|c| c.instructions.clone()),
    };
    let keywords = match input.keywords {
        Some(k) => check_keywords(k)?,
        None => current.map(|c| c.keywords.clone()).unwrap_or_default(),
    };
    if instructions.is_none() && keywords.is_empty() {
        return Err(AppError::bad_input(
            "a category needs instructions or keywords (or both)",
        ));
    }
    Ok(CategoryFields {
        name,
        instructions,
        keywords,
    })
}

fn name_taken(name: &str) -> AppError {
    AppError::Conflict(format!("a category named {name:?} exists already"))
}

/// Whether another category of the tenant than `except` has `name`, whatever its case.
async fn taken(
    state: &AppState,
    tenant: Uuid,
    name: &str,
    except: Option<Uuid>,
) -> AppResult<bool> {
    let key = name.to_lowercase();
    Ok(state
        .store
        .list_categories(tenant)
        .await?
        .iter()
        .any(|c| c.name.to_lowercase() == key && Some(c.id) != except))
}

/// The caller's tenant's categories, by name. Every role.
pub async fn list(state: &AppState, caller: &Caller) -> AppResult<Vec<CategoryRecord>> {
    caller.require(Permission::ReadCalls)?;
    state.store.list_categories(caller.tenant_id).await
}

/// Creates a category. CONFLICT when the name is taken, BAD_USER_INPUT past the limits.
pub async fn create(
    state: &AppState,
    caller: &Caller,
    input: CategoryInput,
) -> AppResult<CategoryRecord> {
    caller.require(Permission::ManageCategories)?;
    let fields = fields(input, None)?;
    if state.store.count_categories(caller.tenant_id).await? >= MAX_CATEGORIES {
        return Err(AppError::bad_input(format!(
            "a tenant has at most {MAX_CATEGORIES} categories; delete one first"
        )));
    }
    let name = fields.name.clone();
    // The unique index on the lower-cased name decides; a failed insert is a CONFLICT when the
    // name is indeed taken (by an earlier category, or by a creation that won a race).
    match state.store.create_category(caller.tenant_id, fields).await {
        Ok(c) => Ok(c),
        Err(e) if taken(state, caller.tenant_id, &name, None).await? => {
            tracing::debug!(error = %e, "a category's name is taken");
            Err(name_taken(&name))
        }
        Err(e) => Err(e),
    }
}

/// Changes a category's name, instructions or keywords (the fields given). Calls analysed
/// already keep what they matched until they are analysed again.
pub async fn update(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    input: CategoryInput,
) -> AppResult<CategoryRecord> {
    caller.require(Permission::ManageCategories)?;
    let renamed = input.name.clone();
    match state
        .store
        .update_category(caller.tenant_id, id, |current| {
            fields(input, Some(&current))
        })
        .await
    {
        Ok(Some(c)) => Ok(c),
        Ok(None) => Err(AppError::not_found("category")),
        Err(e @ (AppError::BadInput(_) | AppError::NotFound(_))) => Err(e),
        // As for `create`: the unique index decides.
        Err(e) => match renamed {
            Some(name) if taken(state, caller.tenant_id, name.trim(), Some(id)).await? => {
                tracing::debug!(error = %e, "a category's name is taken");
                Err(name_taken(name.trim()))
            }
            _ => Err(e),
        },
    }
}

/// Deletes a category. Calls that matched it keep the match, with the category's name.
pub async fn delete(state: &AppState, caller: &Caller, id: Uuid) -> AppResult<CategoryRecord> {
    caller.require(Permission::ManageCategories)?;
    state
        .store
        .delete_category(caller.tenant_id, id)
        .await?
        .ok_or_else(|| AppError::not_found("category"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_are_trimmed_deduplicated_and_bounded() {
        let k = check_keywords(vec![
            "  cancel   my  account ".into(),
            "Refund".into(),
            "refund".into(),
        ])
        .unwrap();
        assert_eq!(k, vec!["cancel my account", "Refund"]);
        assert!(check_keywords(vec!["".into()]).is_err());
        assert!(check_keywords(vec!["x".repeat(MAX_KEYWORD + 1)]).is_err());
        assert!(check_keywords((0..=MAX_KEYWORDS).map(|i| format!("k{i}")).collect()).is_err());
        assert!(check_keywords(vec!["a\u{7}b".into()]).is_err());
    }

    #[test]
    fn a_category_needs_something_to_match() {
        let none = CategoryInput {
            name: Some("Billing".into()),
            ..Default::default()
        };
        assert!(fields(none, None).is_err());
        let instructions = CategoryInput {
            name: Some(" Billing ".into()),
            instructions: Some("The caller disputes a charge.\nAny bill.".into()),
            keywords: None,
        };
        let f = fields(instructions, None).unwrap();
        assert_eq!(f.name, "Billing");
        assert!(check_instructions(Some("a\u{0}".into())).is_err());
        assert!(check_instructions(Some("x".repeat(MAX_INSTRUCTIONS + 1))).is_err());
        assert!(fields(CategoryInput::default(), None).is_err());
    }
}
