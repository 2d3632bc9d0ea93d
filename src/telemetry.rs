//! Logging: human-readable in development (coloured only on a terminal), JSON in production;
//! `RUST_LOG` overrides the filter. Each request's lines carry its `request_id` (its span), and
//! one `voicegraph::access` line records each request (see `http::access`).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

static INITIALIZED: AtomicBool = AtomicBool::new(false);

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,sqlx=warn,sea_orm=warn,sea_orm_migration=warn,tower_http=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    let done = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if done.is_ok() {
        INITIALIZED.store(true, Ordering::SeqCst);
    }
}

/// Whether [`init`] installed the logger.
pub fn initialized() -> bool {
    INITIALIZED.load(Ordering::SeqCst)
}
