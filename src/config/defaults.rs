//! The defaults of routes.toml: the only place a default is written.
//!
//! Validation ([`super::validate`]), the `Default` impls of the settings
//! types and the schema behind `switchyard config schema` and docs/CONFIG.md
//! (through `#[schemars(extend("default" = …))]` on the raw fields) all read
//! these constants, so the documented default is the one that applies.
//!
//! A key whose value is text in TOML (durations, sizes, addresses, kinds)
//! has its default written as that text, and it is read with the parser of
//! user values ([`duration`], [`size`]): a default cannot mean something a
//! user writing the same text would not get.
//!
//! Some defaults are no value and stay prose in the field's doc comment:
//! "none" (an absent optional key), `server.plugin_threads` (one less than
//! the cores, worked out by the plugin pool), `sources.<name>.path`
//! (`/webhooks/<name>`, [`source_path`]), a rate limit's
//! `burst` (the rate rounded up) and `sources.<name>.max_concurrency`
//! (no per-source limit).

use super::units::{parse_duration, parse_size};
use std::time::Duration;

// [server]
pub const SERVER_LISTEN: &str = "127.0.0.1:8080";
pub const SERVER_MAX_BODY: &str = "1MiB";
pub const SERVER_SHUTDOWN_GRACE: &str = "30s";
pub const SERVER_WATCH_CONFIG: bool = true;
pub const SERVER_HEADER_READ_TIMEOUT: &str = "10s";
pub const SERVER_BODY_READ_TIMEOUT: &str = "30s";
pub const SERVER_MIN_BODY_RATE: &str = "1KiB";
pub const SERVER_MAX_BODIES_PER_CLIENT: u32 = 64;
pub const SERVER_MAX_CONCURRENCY: u32 = 1024;

// [bus], both engines
pub const BUS_KIND: &str = "embedded";
pub const BUS_VISIBILITY_TIMEOUT: &str = "10s";
pub const BUS_DEDUP_WINDOW: &str = "7d";
pub const BUS_RETENTION: &str = "7d";
// [bus], embedded; relative to routes.toml
pub const BUS_PATH: &str = "data/bus";
// [bus], NATS
pub const BUS_URL: &str = "nats://127.0.0.1:4222";
pub const BUS_STREAM: &str = "SWITCHYARD";
pub const BUS_SUBJECT_PREFIX: &str = "switchyard";
pub const BUS_REPLICAS: u32 = 1;
pub const BUS_ACK_TIMEOUT: &str = "5s";

// [idempotency]
pub const IDEMPOTENCY_KIND: &str = "embedded";
pub const IDEMPOTENCY_PATH: &str = "data/idempotency";
pub const IDEMPOTENCY_KEY_PREFIX: &str = "switchyard:";
pub const IDEMPOTENCY_TTL: &str = "7d";
pub const IDEMPOTENCY_LEASE: &str = "10s";

// [telemetry]
pub const TELEMETRY_SERVICE_NAME: &str = "switchyard";

// [alerts]: sampling and the alert webhook
pub const ALERTS_ENABLED: bool = true;
pub const ALERTS_INTERVAL: &str = "10s";
pub const ALERTS_WEBHOOK_PATH: &str = "/";
// [alerts]: baselines and rule thresholds (`AlertThresholds`)
pub const ALERTS_LEARN_FOR: &str = "1h";
pub const ALERTS_WARMUP: &str = "30m";
pub const ALERTS_BAND: f64 = 4.0;
pub const ALERTS_SUSTAIN: &str = "2m";
pub const ALERTS_CLEAR_AFTER: &str = "5m";
pub const ALERTS_MIN_ATTEMPTS: u64 = 5;
pub const ALERTS_FAILURE_RATIO: f64 = 0.2;
pub const ALERTS_SIGNATURE_FAILURES_PER_MIN: f64 = 5.0;
pub const ALERTS_SPIKE_FACTOR: f64 = 3.0;
pub const ALERTS_SILENT_AFTER: &str = "15m";
pub const ALERTS_SILENT_FACTOR: f64 = 10.0;
pub const ALERTS_SLOW_PLUGIN_FLOOR: &str = "250ms";
pub const ALERTS_BACKLOG_FLOOR: u64 = 1000;
pub const ALERTS_PENDING_AGE_FLOOR: &str = "5m";
pub const ALERTS_BACKLOG_GROWING_FOR: &str = "10m";
pub const ALERTS_STUCK_FOR: &str = "5m";
pub const ALERTS_BREAKER_OPEN_FOR: &str = "5m";
pub const ALERTS_QUEUE_GROWTH: u64 = 10;
pub const ALERTS_QUEUE_GROWTH_WINDOW: &str = "15m";

// [sources.<name>]
pub const SOURCE_KIND: &str = "stripe";
pub const SOURCE_TOLERANCE: &str = "5m";

/// `sources.<name>.path`: the default depends on the name, so the doc
/// comment of the key says it in words.
pub fn source_path(name: &str) -> String {
    format!("/webhooks/{name}")
}

// [connections.<name>]
pub const CONNECTION_TIMEOUT: &str = "10s";
pub const CONNECTION_ALLOW_PRIVATE: bool = false;

// [consumers.<name>]
pub const CONSUMER_CONCURRENCY: u32 = 4;
pub const CONSUMER_REPLAY_CONCURRENCY: u32 = 1;
pub const CONSUMER_CPU_WEIGHT: f64 = 1.0;
pub const CONSUMER_QUARANTINE_AFTER: u32 = 10;

// [consumers.<name>.retry]
pub const RETRY_FIRST: &str = "1s";
pub const RETRY_MAX: &str = "1h";
pub const RETRY_ATTEMPTS: u32 = 25;
pub const RETRY_MAX_RETRY_AFTER: &str = "1h";

// [consumers.<name>.limits]
pub const LIMITS_CPU: &str = "100ms";
pub const LIMITS_WALL: &str = "30s";
pub const LIMITS_MEMORY: &str = "32MiB";
pub const LIMITS_HTTP_CALLS: u32 = 10;
pub const LIMITS_RESPONSE_BODY: &str = "1MiB";

// [consumers.<name>.circuit_breaker]
pub const BREAKER_ENABLED: bool = true;
pub const BREAKER_FAILURE_RATIO: f64 = 0.5;
pub const BREAKER_MIN_CALLS: u32 = 20;
pub const BREAKER_WINDOW: &str = "30s";
pub const BREAKER_CONSECUTIVE_FAILURES: u32 = 10;
pub const BREAKER_OPEN_FOR: &str = "15s";
pub const BREAKER_HALF_OPEN_PROBES: u32 = 1;

/// A duration default, read like a user's. The test below proves every one
/// parses, so this cannot panic at run time.
pub fn duration(text: &str) -> Duration {
    parse_duration(text).expect("a default duration parses")
}

/// A size default, read like a user's; see [`duration`].
pub fn size(text: &str) -> u64 {
    parse_size(text).expect("a default size parses")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, reference};
    use serde_json::Value;
    use std::net::SocketAddr;
    use std::path::Path;

    /// What the reference and the schema say is the default is what an
    /// absent key gets: writing each documented default into a file loads
    /// the same config as leaving it out. Catches a field pointing at
    /// another key's constant.
    #[test]
    fn every_documented_default_is_the_one_that_applies() {
        let tables = [
            ("RawServer", "server"),
            ("RawBus", "bus"),
            ("RawIdempotency", "idempotency"),
            ("RawTelemetry", "telemetry"),
            ("RawAlerts", "alerts"),
            ("RawSource", "sources.s"),
            ("RawConnection", "connections.c"),
            ("RawConsumer", "consumers.k"),
            ("RawRetry", "consumers.k.retry"),
            ("RawLimits", "consumers.k.limits"),
            ("RawBreaker", "consumers.k.circuit_breaker"),
        ];
        let base = r#"
            [sources.s]
            secrets = ["env:S"]
            [connections.c]
            base_url = "https://example.com"
            [consumers.k]
            plugin = "k.wasm"
            [[routes]]
            source = "s"
            events = ["*"]
            consumers = ["k"]
        "#;
        // Some keys apply only next to another: NATS keys, Redis keys, the
        // alert webhook's path.
        let settings = [
            "",
            "bus = { kind = \"nats\" }",
            "idempotency = { kind = \"redis\", url = \"redis://127.0.0.1\" }",
            "alerts = { webhook = \"c\" }",
        ];
        let dir = Path::new("/etc/switchyard");
        let load = |text: &str| Config::parse(text, dir).map(|config| format!("{config:?}"));
        let schema = reference::json_schema();
        let definitions = schema["$defs"].as_object().unwrap();
        for (name, definition) in definitions {
            let properties = definition["properties"].as_object().unwrap();
            let defaulted: Vec<_> = properties
                .iter()
                .filter_map(|(key, property)| Some((key, property.get("default")?)))
                .collect();
            if defaulted.is_empty() {
                continue;
            }
            let (_, path) = tables
                .iter()
                .find(|(table, _)| table == name)
                .unwrap_or_else(|| panic!("`{name}` has defaults: add it to `tables`"));
            for (key, default) in defaulted {
                let applies = settings.iter().any(|setting| {
                    let mut file: toml::Table = toml::from_str(base).unwrap();
                    file.extend(toml::from_str::<toml::Table>(setting).unwrap());
                    let without = load(&toml::to_string(&file).unwrap());
                    let mut table = &mut file;
                    for part in path.split('.') {
                        table = table
                            .entry(part)
                            .or_insert_with(|| toml::Table::new().into())
                            .as_table_mut()
                            .unwrap();
                    }
                    table.insert(key.clone(), toml_value(default));
                    let with = load(&toml::to_string(&file).unwrap());
                    without.is_ok() && with.is_ok() && without.ok() == with.ok()
                });
                assert!(
                    applies,
                    "{path}.{key}: documented default {default} does not apply"
                );
            }
        }
    }

    fn toml_value(json: &Value) -> toml::Value {
        match json {
            Value::Bool(b) => (*b).into(),
            Value::Number(n) => match n.as_i64() {
                Some(i) => i.into(),
                None => n.as_f64().unwrap().into(),
            },
            Value::String(s) => s.clone().into(),
            Value::Array(items) => toml::Value::Array(items.iter().map(toml_value).collect()),
            Value::Object(map) => toml::Value::Table(
                map.iter()
                    .map(|(k, v)| (k.clone(), toml_value(v)))
                    .collect(),
            ),
            Value::Null => unreachable!("no default is null"),
        }
    }

    #[test]
    fn every_text_default_parses_like_a_user_value() {
        let durations = [
            SERVER_SHUTDOWN_GRACE,
            SERVER_HEADER_READ_TIMEOUT,
            SERVER_BODY_READ_TIMEOUT,
            BUS_VISIBILITY_TIMEOUT,
            BUS_DEDUP_WINDOW,
            BUS_RETENTION,
            BUS_ACK_TIMEOUT,
            IDEMPOTENCY_TTL,
            IDEMPOTENCY_LEASE,
            ALERTS_INTERVAL,
            ALERTS_LEARN_FOR,
            ALERTS_WARMUP,
            ALERTS_SUSTAIN,
            ALERTS_CLEAR_AFTER,
            ALERTS_SILENT_AFTER,
            ALERTS_SLOW_PLUGIN_FLOOR,
            ALERTS_PENDING_AGE_FLOOR,
            ALERTS_BACKLOG_GROWING_FOR,
            ALERTS_STUCK_FOR,
            ALERTS_BREAKER_OPEN_FOR,
            ALERTS_QUEUE_GROWTH_WINDOW,
            SOURCE_TOLERANCE,
            CONNECTION_TIMEOUT,
            RETRY_FIRST,
            RETRY_MAX,
            RETRY_MAX_RETRY_AFTER,
            LIMITS_CPU,
            LIMITS_WALL,
            BREAKER_WINDOW,
            BREAKER_OPEN_FOR,
        ];
        for text in durations {
            assert!(!duration(text).is_zero(), "{text}");
        }
        for text in [
            SERVER_MAX_BODY,
            SERVER_MIN_BODY_RATE,
            LIMITS_MEMORY,
            LIMITS_RESPONSE_BODY,
        ] {
            assert!(size(text) > 0, "{text}");
        }
        SERVER_LISTEN.parse::<SocketAddr>().unwrap();
        // Kinds, names, paths and URLs are checked by the validator itself:
        // files that lean on every such default must be valid.
        let base = Path::new("/etc/switchyard");
        Config::parse("", base).unwrap();
        Config::parse(
            r#"
            [bus]
            kind = "nats"
            [idempotency]
            kind = "redis"
            url = "redis://127.0.0.1:6379"
            [sources.stripe]
            secrets = ["env:STRIPE_WEBHOOK_SECRET"]
            [consumers.crm]
            plugin = "crm.wasm"
            retry = {}
            limits = {}
            circuit_breaker = {}
            [[routes]]
            source = "stripe"
            events = ["*"]
            consumers = ["crm"]
            "#,
            base,
        )
        .unwrap();
    }
}
