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
    /// Longest time a client may take to send the request line and headers
    /// of a request on the public listener (and the admin listener); the
    /// connection is closed when it runs out. A duration like `"10s"`.
    /// Default `"10s"`. Takes a restart to change.
    pub header_read_timeout: Option<String>,
    /// Longest time a client may take to send a webhook body once its
    /// headers are in; the answer is 408 and the connection is closed when
    /// it runs out. A duration like `"30s"`. Default `"30s"`.
    pub body_read_timeout: Option<String>,
    /// Proxies whose `X-Forwarded-For` is believed: a list of CIDRs or bare
    /// addresses, e.g. `["10.0.0.0/8", "127.0.0.1"]`. The client address of
    /// a request is the peer address unless the peer is in this list; then
    /// it is the right-most `X-Forwarded-For` entry that is not. Default
    /// `[]` (the header is ignored). Takes a restart to change.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Most webhook requests handled at once over all sources; more are
    /// shed with 503 and `Retry-After: 1` before their body is read. An
    /// integer from 1 to 1000000. Default `1024`. Takes a restart to change.
    pub max_concurrency: Option<i64>,
    /// Rate of webhook requests over all sources, e.g.
    /// `{ per_second = 500, burst = 1000 }` (or `per_minute`; `burst`
    /// defaults to the rate rounded up); above it requests are shed with
    /// 429 and `Retry-After`. Default: no global rate limit. Takes a
    /// restart to change.
    pub rate_limit: Option<RawRateLimit>,
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
    /// The signature scheme of the provider: `"stripe"` (`Stripe-Signature`),
    /// `"standard-webhooks"` (Standard Webhooks / Svix: `webhook-id`,
    /// `webhook-timestamp`, `webhook-signature`), `"github"`
    /// (`X-Hub-Signature-256`) or `"shopify"` (`X-Shopify-Hmac-Sha256`).
    /// It also says where the event id and type come from. Default
    /// `"stripe"`.
    pub kind: Option<String>,
    pub path: Option<String>,
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Largest age (and future skew) of a signed timestamp, for the schemes
    /// that sign one (`stripe`, `standard-webhooks`). A duration like
    /// `"5m"`. Default `"5m"`.
    pub tolerance: Option<String>,
    /// Client addresses allowed to post to this source: CIDRs or bare
    /// addresses, e.g. `["54.187.174.169/32", "2001:db8::/32"]`. Combined
    /// with `allow_ips_file`; when both are absent every address may post.
    /// Refused addresses get 403. The signature stays the real check.
    /// Default `[]`.
    #[serde(default)]
    pub allow_ips: Vec<String>,
    /// A file of allowed client addresses, one CIDR or address a line (`#`
    /// starts a comment), read at start and at every reload, e.g.
    /// `"data/stripe-webhook-ips.txt"` (shipped). Relative to routes.toml.
    /// Default: none.
    pub allow_ips_file: Option<String>,
    /// Most requests to this source handled at once; more are shed with 503
    /// and `Retry-After: 1`. An integer from 1 to 1000000. Default: no
    /// per-source limit (the global `server.max_concurrency` still holds).
    pub max_concurrency: Option<i64>,
    /// Rate of requests to this source, e.g. `{ per_second = 100, burst =
    /// 200 }` (or `per_minute`); above it requests are shed with 429 and
    /// `Retry-After`. Default: no per-source rate limit.
    pub rate_limit: Option<RawRateLimit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConnection {
    pub base_url: Option<String>,
    pub auth: Option<RawAuth>,
    pub timeout: Option<String>,
    pub rate_limit: Option<RawRateLimit>,
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
