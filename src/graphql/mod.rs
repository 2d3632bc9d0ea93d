//! The GraphQL schema: queries, mutations and subscriptions merged from one file per area, with
//! document limits (size, tokens, aliases, root fields, directives), depth and complexity, the
//! cost budget, execution limits, and introspection off in production.

pub mod budget;
pub mod documents;
pub mod limits;
pub mod live;
pub mod loaders;
pub mod mutation;
pub mod query;
pub mod redaction;
pub mod response_cache;
pub mod scalars;
pub mod subscription;
pub mod types;

use std::sync::Arc;
use std::time::Duration;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextValidation,
};
use async_graphql::parser::types::ExecutableDocument;
use async_graphql::{
    Context, ErrorExtensions, SDLExportOptions, Schema, ServerError, ServerResult, Upload,
    ValidationResult, Variables, ID,
};
use tracing::Instrument;

use crate::error::AppError;
use crate::services::auth::Caller;
use crate::state::AppState;
use loaders::Loaders;

pub type AppSchema =
    Schema<query::QueryRoot, mutation::MutationRoot, subscription::SubscriptionRoot>;

pub fn build_schema(state: Option<AppState>) -> AppSchema {
    let mut builder = Schema::build(
        query::QueryRoot::default(),
        mutation::MutationRoot::default(),
        subscription::SubscriptionRoot,
    )
    .override_input_type_description::<Upload>(UPLOAD_DESCRIPTION);
    if let Some(state) = state {
        let s = &state.settings;
        builder = builder
            .extension(RequestErrorCodes)
            .limit_depth(s.max_query_depth)
            .limit_complexity(s.max_query_complexity)
            .extension(limits::Limits(limits::DocumentLimits::from_settings(s)))
            .extension(budget::CostBudget)
            .data(Loaders::new(&state.store, s.loader_delay, false));
        if s.is_production() {
            builder = builder.disable_introspection().disable_suggestions();
        }
        builder = builder.data(state);
    }
    builder.finish()
}

/// async-graphql's own says only "A multipart file upload".
const UPLOAD_DESCRIPTION: &str = "A file sent with the request, as the GraphQL multipart request \
spec (see `@specifiedBy`) describes: a `multipart/form-data` POST whose `operations` part holds \
the request with `null` for this value, whose `map` part maps a file part onto it, and whose \
file part holds the bytes. Input only.";

/// The SDL clients rely on (`voicegraph print-schema`), with the scalars' `@specifiedBy` URLs.
pub fn sdl() -> String {
    build_schema(None).sdl_with_options(SDLExportOptions::new().include_specified_by())
}

/// The request's DataLoaders (per HTTP request, caching) or the schema's (subscriptions).
pub(crate) fn loaders<'a>(ctx: &Context<'a>) -> &'a Loaders {
    ctx.data_unchecked::<Arc<Loaders>>()
}

pub(crate) fn state<'a>(ctx: &Context<'a>) -> &'a AppState {
    ctx.data_unchecked::<AppState>()
}

/// The authenticated caller, or `UNAUTHENTICATED`.
pub(crate) fn caller<'a>(ctx: &Context<'a>) -> async_graphql::Result<&'a Caller> {
    ctx.data_opt::<Caller>().ok_or_else(|| {
        AppError::Unauthenticated(
            "authentication required: send Authorization: Bearer <API key>".into(),
        )
        .extend()
    })
}

pub(crate) fn parse_id(id: &ID) -> async_graphql::Result<uuid::Uuid> {
    id.parse::<uuid::Uuid>()
        .map_err(|_| AppError::bad_input(format!("{:?} is not a valid ID", id.as_str())).extend())
}

/// `expiresIn` in seconds, between 1 and 86400; default from the settings.
pub(crate) fn url_expiry(
    ctx: &Context<'_>,
    expires_in: Option<i32>,
) -> async_graphql::Result<Duration> {
    match expires_in {
        None => Ok(state(ctx).settings.url_expiry),
        Some(s) if (1..=86_400).contains(&s) => Ok(Duration::from_secs(s as u64)),
        Some(_) => {
            Err(AppError::bad_input("expiresIn must be between 1 and 86400 seconds").extend())
        }
    }
}

/// Gives the errors of a refused request their codes and one-line messages:
/// `GRAPHQL_PARSE_FAILED` (with the position, never the document) and
/// `GRAPHQL_VALIDATION_FAILED`. Registered first, so it sees what the limits refused too.
struct RequestErrorCodes;

impl ExtensionFactory for RequestErrorCodes {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(RequestErrorCodes)
    }
}

fn has_code(e: &ServerError) -> bool {
    e.extensions
        .as_ref()
        .is_some_and(|x| x.get("code").is_some())
}

fn with_code(mut e: ServerError, code: &str) -> ServerError {
    if !has_code(&e) {
        let mut x = e.extensions.take().unwrap_or_default();
        x.set("code", code);
        e.extensions = Some(x);
    }
    e
}

/// A parser message is several lines quoting the document (` --> 1:3`, the line, a caret,
/// `= expected selection`); keep only what was expected.
pub fn one_line_syntax_error(message: &str) -> String {
    let expected = message
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("= "))
        .or_else(|| message.lines().map(str::trim).find(|l| !l.is_empty()))
        .unwrap_or("invalid document");
    format!("Syntax Error: {expected}")
}

#[async_trait::async_trait]
impl Extension for RequestErrorCodes {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        next.run(ctx, query, variables).await.map_err(|mut e| {
            if has_code(&e) {
                return e;
            }
            if e.message.contains('\n') {
                e.message = one_line_syntax_error(&e.message);
                with_code(e, "GRAPHQL_PARSE_FAILED")
            } else {
                // Limits checked while parsing (recursion depth, directives per field).
                with_code(e, "GRAPHQL_VALIDATION_FAILED")
            }
        })
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        next.run(ctx).await.map_err(|errors| {
            errors
                .into_iter()
                .map(|mut e| {
                    if e.message.contains('\n') {
                        e.message = e.message.split_whitespace().collect::<Vec<_>>().join(" ");
                    }
                    with_code(e, "GRAPHQL_VALIDATION_FAILED")
                })
                .collect()
        })
    }
}

/// Executes a query or mutation under the execution limits. A query still running after
/// `VOICEGRAPH_REQUEST_TIMEOUT_MS` is dropped, its work with it (`TIMEOUT`), and so is one whose
/// client went away (the HTTP server drops the request). A mutation runs to completion once
/// started, in a task of its own, so that neither limit nor disconnection cuts it half-way. A
/// result larger than `VOICEGRAPH_MAX_RESPONSE_BYTES` is replaced by `RESPONSE_TOO_LARGE`.
pub async fn execute_bounded(
    schema: &AppSchema,
    app: &AppState,
    mut request: async_graphql::Request,
) -> async_graphql::Response {
    let settings = &app.settings;
    let metrics = &app.metrics;
    let mutation = live::operation_type(&mut request)
        == Some(async_graphql::parser::types::OperationType::Mutation);
    let response = if mutation {
        let schema = schema.clone();
        let gauge = metrics.operations_in_flight.clone();
        // In the request's span, so that its log lines name the request and the jobs and
        // events it writes carry the request's trace context.
        let task = tokio::spawn(
            async move {
                let _in_flight = InFlight::new(&gauge);
                schema.execute(request).await
            }
            .in_current_span(),
        );
        match task.await {
            Ok(r) => r,
            Err(e) => {
                let id = uuid::Uuid::new_v4();
                tracing::error!(error_id = %id, error = %e, "a mutation's task failed");
                return limit_error(format!("internal error (error id {id})"), "INTERNAL", None);
            }
        }
    } else {
        let _in_flight = InFlight::new(&metrics.operations_in_flight);
        match tokio::time::timeout(settings.request_timeout, schema.execute(request)).await {
            Ok(r) => r,
            Err(_) => {
                metrics
                    .operations_stopped
                    .with_label_values(&["timeout"])
                    .inc();
                return limit_error(
                    format!(
                        "the operation ran longer than {} ms and was stopped; ask for less",
                        settings.request_timeout.as_millis()
                    ),
                    "TIMEOUT",
                    Some("VOICEGRAPH_REQUEST_TIMEOUT_MS"),
                );
            }
        }
    };
    if json_size(&response.data, settings.max_response_bytes) > settings.max_response_bytes {
        metrics
            .operations_stopped
            .with_label_values(&["response_size"])
            .inc();
        return limit_error(
            format!(
                "the result is larger than {} bytes; ask for fewer fields or smaller pages",
                settings.max_response_bytes
            ),
            "RESPONSE_TOO_LARGE",
            Some("VOICEGRAPH_MAX_RESPONSE_BYTES"),
        );
    }
    response
}

/// Counts an execution in a gauge for as long as it lives.
struct InFlight(prometheus::IntGauge);

impl InFlight {
    fn new(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A response of one error with its code and, for a limit, the setting it names.
fn limit_error(message: String, code: &str, limit: Option<&str>) -> async_graphql::Response {
    async_graphql::Response::from_errors(vec![limits::coded_error(message, None, code, limit)])
}

/// The size of `value` as JSON, counted without keeping the text; counting stops a little past
/// `limit`.
fn json_size(value: &async_graphql::Value, limit: usize) -> usize {
    struct Count(usize, usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            if self.0 > self.1 {
                return Err(std::io::Error::other("over the limit"));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0, limit);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}
