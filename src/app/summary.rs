//! The start-up log: what this hub runs, so an operator reading the log
//! knows what started.

use crate::bus::Subscription;
use crate::config::{BusEngine, Config, IdempotencyBackend};
use std::path::Path;

/// The config file, each source and consumer, the bus and the idempotency
/// store (addresses without their credentials).
pub(super) fn log_start_summary(
    config: &Config,
    config_path: Option<&Path>,
    plugin_threads: usize,
) {
    let file = config_path.map_or_else(
        || "(given in-process)".to_owned(),
        |path| path.display().to_string(),
    );
    tracing::info!(
        config = %file,
        sources = config.sources.len(),
        consumers = config.consumers.len(),
        routes = config.routes.len(),
        plugin_threads,
        "configuration loaded"
    );
    for (name, source) in &config.sources {
        tracing::info!(source = %name, kind = source.kind.name(), path = %source.path, "source");
    }
    for (name, consumer) in &config.consumers {
        let events = Subscription::of(config, name)
            .filters
            .iter()
            .map(|(source, pattern)| format!("{source}:{pattern}"))
            .collect::<Vec<_>>()
            .join(" ");
        tracing::info!(
            consumer = %name,
            plugin = %consumer.plugin.display(),
            events = %if events.is_empty() { "(no route)".to_owned() } else { events },
            concurrency = consumer.concurrency,
            "consumer"
        );
    }
    match &config.bus.engine {
        BusEngine::Embedded { path } => {
            tracing::info!(engine = "embedded", path = %path.display(), "bus");
        }
        BusEngine::Nats(nats) => {
            let servers = nats
                .urls
                .iter()
                .map(|url| without_credentials(url))
                .collect::<Vec<_>>()
                .join(",");
            tracing::info!(engine = "nats", %servers, stream = %nats.stream, "bus");
        }
    }
    match &config.idempotency.backend {
        IdempotencyBackend::Embedded { path } => {
            tracing::info!(backend = "embedded", path = %path.display(), "idempotency store");
        }
        IdempotencyBackend::Redis { url, key_prefix } => {
            tracing::info!(backend = "redis", url = %without_credentials(url), %key_prefix, "idempotency store");
        }
    }
}

/// `redis://user:pass@host:6379/0` as `redis://host:6379/0`: never log a
/// password.
fn without_credentials(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.has_authority() => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        // Not a URL (a bare host:port): cut anything up to an `@`.
        Err(_) => url.rsplit('@').next().unwrap_or(url).to_owned(),
    }
}
