//! Logging: human-readable or JSON lines on stderr, filtered by `RUST_LOG` or the configured
//! level.
//!
//! Lines are formatted on the request's thread and written by a background thread, so a slow
//! stderr never stalls a request; the buffer is not lossy (a full buffer applies back-pressure
//! rather than dropping lines), and the returned guard flushes it on exit.
//!
//! Request lines carry the request id and tenant id from the request span. Tokens, keys and
//! record contents are never logged: handlers log ids and outcomes only, and the
//! `Authorization` header is marked sensitive before any layer can print it.

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Keep the guard alive until the process ends.
pub fn init(format: LogFormat, level: &str) -> WorkerGuard {
    // The PostgreSQL driver reports server notices ("relation … already exists, skipping")
    // at info; they are noise unless asked for.
    let directives = if level.contains("tokio_postgres") {
        level.to_owned()
    } else {
        format!("{level},tokio_postgres=warn")
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(directives));
    // The background writer drains every queued line into this buffer, then flushes once:
    // one write(2) per burst rather than one per line.
    let (writer, guard) =
        NonBlockingBuilder::default()
            .lossy(false)
            .finish(std::io::BufWriter::with_capacity(
                64 * 1024,
                std::io::stderr(),
            ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    guard
}
