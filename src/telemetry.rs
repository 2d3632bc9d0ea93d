//! Logging and traces. Logs are human-readable in development (coloured only on a terminal), JSON
//! in production; `RUST_LOG` overrides the filter. Each request's lines carry its `request_id`
//! (its span), and one `voicegraph::access` line records each request (see `http::access`).
//!
//! With `VOICEGRAPH_OTLP_ENDPOINT`, the same spans are also exported over OTLP/HTTP (protobuf) to
//! `<endpoint>/v1/traces`, in batches from a thread of their own, and flushed by [`shutdown`].
//! A call's trace crosses processes in W3C `traceparent` strings: the outbox rows and events a
//! span writes carry [`current_traceparent`], and whoever handles them next starts its span with
//! [`continue_trace`]. Without the setting no exporter is installed, no context is written and
//! nothing else changes.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

static INITIALIZED: AtomicBool = AtomicBool::new(false);
/// The exporting provider, kept for [`shutdown`].
static PROVIDER: Mutex<Option<SdkTracerProvider>> = Mutex::new(None);

/// The message attribute (SQS, SNS) and JSON field that carry a W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`shutdown`] waits for the last spans to go out.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and as what this process exports its spans.
#[derive(Debug, Clone)]
pub struct TraceExport {
    /// The collector's traces URL (`<VOICEGRAPH_OTLP_ENDPOINT>/v1/traces`).
    pub url: String,
    /// `service.name` of the spans: `voicegraph-serve`, `voicegraph-worker`, …
    pub service: String,
}

/// Starts logging only (benchmarks, tools).
pub fn init(format: LogFormat) {
    let _ = init_with(format, None);
}

/// Starts logging, and with `traces` the OTLP exporter. Fails only when the exporter cannot be
/// built; a logger that is already installed (a second call) is left as it is.
pub fn init_with(format: LogFormat, traces: Option<TraceExport>) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,sqlx=warn,sea_orm=warn,sea_orm_migration=warn,tower_http=warn")
    });
    let fmt = tracing_subscriber::fmt::layer().with_ansi(std::io::stdout().is_terminal());
    let fmt = match format {
        LogFormat::Json => fmt.json().boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    let provider = traces.map(provider).transpose()?;
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("voicegraph"))
            .with_threads(false)
            .with_tracked_inactivity(false)
    });
    let done = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
    if done.is_ok() {
        INITIALIZED.store(true, Ordering::SeqCst);
        *PROVIDER.lock().unwrap_or_else(|e| e.into_inner()) = provider;
    } else if let Some(p) = provider {
        let _ = p.shutdown();
    }
    Ok(())
}

fn provider(traces: TraceExport) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(traces.url.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .with_context(|| {
            format!(
                "building the OTLP exporter for {} (VOICEGRAPH_OTLP_ENDPOINT)",
                traces.url
            )
        })?;
    let resource = Resource::builder()
        .with_service_name(traces.service)
        .with_attributes([KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))])
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Whether [`init`] installed the logger.
pub fn initialized() -> bool {
    INITIALIZED.load(Ordering::SeqCst)
}

/// Exports the spans not sent yet and stops the exporter (blocks up to ten seconds while the
/// collector is slow). Does nothing without an exporter.
pub fn shutdown() {
    let provider = PROVIDER.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(p) = provider {
        if let Err(e) = p.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(error = %e, "flushing the last spans to the OTLP collector failed");
        }
    }
}

/// The W3C `traceparent` of `span`, when spans are exported: what a message or row carries so
/// that whoever handles it next continues the trace. `None` when nothing is exported.
pub fn traceparent(span: &Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The `traceparent` of the span the caller runs in.
pub fn current_traceparent() -> Option<String> {
    traceparent(&Span::current())
}

/// The remote span a `traceparent` names; `None` when it is absent or malformed.
pub fn remote_context(traceparent: Option<&str>) -> Option<opentelemetry::Context> {
    let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent?.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// Makes a span just created (not entered yet) a child of the remote span `traceparent` names.
/// An absent or malformed one is ignored: the span keeps the parent it was created under, or is
/// the root of a new trace.
pub fn continue_trace(span: &Span, traceparent: Option<&str>) {
    if let Some(cx) = remote_context(traceparent) {
        // Fails only without the exporter's layer, or for a span already started: then there
        // is nothing to continue.
        let _ = span.set_parent(cx);
    }
}

/// Marks a span failed in the trace, with the error's cause chain.
pub fn record_error(span: &Span, error: &anyhow::Error) {
    span.set_status(opentelemetry::trace::Status::error(format!("{error:#}")));
}

/// Sets attributes that only the trace shows (not the log lines of the span).
pub fn set_attributes<const N: usize>(span: &Span, attributes: [KeyValue; N]) {
    for kv in attributes {
        span.set_attribute(kv.key, kv.value);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::{SpanId, TraceId};
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SpanData, SpanExporter};
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Keeps what it is given.
    #[derive(Debug, Clone, Default)]
    struct Collect(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Collect {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    /// Runs `f` with spans exported (synchronously) into the returned list.
    fn exported(f: impl FnOnce()) -> Vec<SpanData> {
        let spans = Collect::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, f);
        provider.force_flush().unwrap();
        let out = spans.0.lock().unwrap().clone();
        out
    }

    const REMOTE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_span_continues_the_trace_its_traceparent_names_and_passes_on_its_own() {
        let mut passed_on = None;
        let spans = exported(|| {
            let span = tracing::info_span!("send job");
            continue_trace(&span, Some(REMOTE));
            passed_on = traceparent(&span);
        });
        let span = spans.iter().find(|s| s.name == "send job").unwrap();
        let trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        assert_eq!(span.span_context.trace_id(), trace);
        assert_eq!(
            span.parent_span_id,
            SpanId::from_hex("00f067aa0ba902b7").unwrap()
        );
        assert_eq!(
            passed_on.unwrap(),
            format!("00-{trace}-{}-01", span.span_context.span_id())
        );
    }

    #[test]
    fn a_malformed_traceparent_is_ignored_and_the_span_starts_a_new_trace() {
        for bad in [
            "",
            "nonsense",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01x",
        ] {
            assert!(remote_context(Some(bad)).is_none(), "{bad:?}");
            let spans = exported(|| {
                let span = tracing::info_span!("job");
                continue_trace(&span, Some(bad));
                let _entered = span.enter();
            });
            let span = spans.iter().find(|s| s.name == "job").unwrap();
            assert_eq!(span.parent_span_id, SpanId::INVALID, "{bad:?}: a new root");
            assert_ne!(
                span.span_context.trace_id(),
                TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
            );
        }
        assert!(remote_context(None).is_none());
    }

    #[test]
    fn without_an_exporter_there_is_no_context_to_pass_on() {
        let span = tracing::info_span!("request");
        continue_trace(&span, Some(REMOTE));
        assert_eq!(traceparent(&span), None);
        assert_eq!(current_traceparent(), None);
    }
}
