//! Logging: human-readable or JSON lines, filtered by `RUST_LOG` or the configured level.
//!
//! Request lines carry the request id and tenant id from the request span. Tokens, keys and
//! record contents are never logged: handlers log ids and outcomes only, and the
//! `Authorization` header is marked sensitive before any layer can print it.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::LogFormat;

pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_span_events(FmtSpan::NONE);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
