//! Telemetry: logs, Prometheus metrics and optional OTLP trace export. (The
//! anomaly watch is a feature of its own: `crate::alerts`.)
//!
//! Owns the process-wide tracing subscriber. Span fields are `source`,
//! `event_id`, `consumer`; payloads and secrets never appear in logs.

pub mod metrics;
pub mod otlp;

use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log shippers.
    Json,
    /// Human-readable lines.
    Text,
}

/// Installs the global subscriber; `RUST_LOG` overrides the default `info`.
/// Text lines are coloured only on a terminal: a file or a log collector
/// gets them plain.
pub fn init(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,wasmtime=warn,cranelift=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
