//! Step one of config loading: the TOML shape, exactly as written.
//!
//! Unknown keys are rejected here (`deny_unknown_fields`); values that need
//! interpretation (durations, sizes, secret references, patterns) stay strings
//! so that validation can report every bad value at once.

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub bus: RawBus,
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub idempotency: RawIdempotency,
    #[serde(default)]
    pub telemetry: RawTelemetry,
    #[serde(default)]
    pub sources: BTreeMap<String, RawSource>,
    #[serde(default)]
    pub connections: BTreeMap<String, RawConnection>,
    #[serde(default)]
    pub consumers: BTreeMap<String, RawConsumer>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub max_body: Option<String>,
    pub shutdown_grace: Option<String>,
    pub watch_config: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBus {
    pub kind: Option<String>,
    pub path: Option<String>,
    pub visibility_timeout: Option<String>,
    pub dedup_window: Option<String>,
    pub retention: Option<String>,
    pub url: Option<String>,
    pub stream: Option<String>,
    pub subject_prefix: Option<String>,
    pub replicas: Option<i64>,
    pub credentials: Option<String>,
    pub token: Option<String>,
    pub ack_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    pub otlp_endpoint: Option<String>,
    pub service_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdempotency {
    pub kind: Option<String>,
    pub path: Option<String>,
    pub url: Option<String>,
    pub key_prefix: Option<String>,
    pub ttl: Option<String>,
    pub lease: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub kind: Option<String>,
    pub path: Option<String>,
    #[serde(default)]
    pub secrets: Vec<String>,
    pub tolerance: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConnection {
    pub base_url: Option<String>,
    pub auth: Option<RawAuth>,
    pub timeout: Option<String>,
    pub rate_limit: Option<RawRateLimit>,
    /// Whether the connection may reach loopback, private (RFC 1918,
    /// `100.64.0.0/10`, `fc00::/7`) and link-local (`169.254.0.0/16`,
    /// `fe80::/10`) addresses, e.g. `allow_private = true` for a downstream on
    /// the internal network. Checked on every address the base URL's host
    /// resolves to, at connect time. Cloud metadata addresses stay refused
    /// either way. A base URL that is itself a literal loopback address
    /// (`http://127.0.0.1:9101`) may reach that address without it.
    /// Default: `false`.
    pub allow_private: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub bearer: Option<String>,
    pub basic_user: Option<String>,
    pub basic_password: Option<String>,
    pub header: Option<String>,
    pub value: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsumer {
    pub plugin: Option<String>,
    #[serde(default)]
    pub connections: Vec<String>,
    pub concurrency: Option<i64>,
    pub replay_concurrency: Option<i64>,
    pub retry: Option<RawRetry>,
    pub limits: Option<RawLimits>,
    pub rate_limit: Option<RawRateLimit>,
    pub circuit_breaker: Option<RawBreaker>,
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub per_second: Option<f64>,
    pub per_minute: Option<f64>,
    pub burst: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    pub enabled: Option<bool>,
    pub failure_ratio: Option<f64>,
    pub min_calls: Option<i64>,
    pub window: Option<String>,
    pub consecutive_failures: Option<i64>,
    pub open_for: Option<String>,
    pub half_open_probes: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub first: Option<String>,
    pub max: Option<String>,
    pub attempts: Option<i64>,
    pub max_retry_after: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub cpu: Option<String>,
    pub wall: Option<String>,
    pub memory: Option<String>,
    pub http_calls: Option<i64>,
    pub response_body: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub source: Option<String>,
    #[serde(default)]
    pub events: Vec<String>,
    #[serde(default)]
    pub consumers: Vec<String>,
}
