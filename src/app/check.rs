//! `switchyard check`: what a config needs beyond validation, found without
//! starting anything.

use crate::bus::BusError;
use crate::config::{BusEngine, Config, IdempotencyBackend};
use crate::dispatch::idempotency::RedisStore;
use crate::plugin::PluginHost;
use crate::plugin::egress::{AddressPolicy, base_url_refusal};

/// The shortest admin token `check` accepts.
const MIN_ADMIN_TOKEN_CHARS: usize = 16;

/// Secrets, plugins, reachability of Redis and NATS, an admin token too
/// short to resist guessing, connections whose base URL the address policy
/// refuses. Every problem, each naming its table and key.
pub async fn check(config: &Config) -> Vec<String> {
    let mut problems: Vec<String> = Vec::new();
    if let Err(errors) = crate::ingest::endpoints(config) {
        problems.extend(errors.iter().map(ToString::to_string));
    }
    if let Some(admin) = &config.admin {
        match admin.token.resolve() {
            Err(err) => problems.push(format!("admin.token: {err}")),
            Ok(token) if token.expose().chars().count() < MIN_ADMIN_TOKEN_CHARS => {
                problems.push(format!(
                    "admin.token: {} characters is too short to resist guessing; use at least {MIN_ADMIN_TOKEN_CHARS} (e.g. `openssl rand -hex 32`)",
                    token.expose().chars().count()
                ));
            }
            Ok(_) => {}
        }
    }
    // A base URL the address policy refuses would fail every call at run
    // time (the hub only warns, so a config can still start).
    for (name, connection) in &config.connections {
        let policy = AddressPolicy {
            allow_private: connection.allow_private,
        };
        if let Ok(base) = reqwest::Url::parse(&connection.base_url)
            && let Some(refused) = base_url_refusal(&base, policy)
        {
            problems.push(format!(
                "connections.{name}.base_url: every call would be refused: {refused}"
            ));
        }
    }
    match PluginHost::for_config(config) {
        Ok(host) => {
            if let Err(errors) = host.load_all(config) {
                problems.extend(errors.iter().map(ToString::to_string));
            }
        }
        Err(err) => problems.push(err.to_string()),
    }
    if let BusEngine::Nats(nats) = &config.bus.engine {
        let reachable: Result<(), BusError> = match crate::bus::nats_settings(config, nats) {
            Ok(settings) => crate::bus::nats::probe(&settings).await,
            Err(err) => Err(err),
        };
        if let Err(err) = reachable {
            problems.push(format!("bus: {err}"));
        }
    }
    if let IdempotencyBackend::Redis { url, .. } = &config.idempotency.backend
        && let Err(err) = RedisStore::connect(url).await
    {
        problems.push(format!("idempotency.url: {err}"));
    }
    problems
}
