//! Step one of config loading: the TOML shape, exactly as written.
//!
//! Unknown keys are rejected here (`deny_unknown_fields`); values that need
//! interpretation (durations, sizes, secret references, patterns) stay strings
//! so that validation can report every bad value at once.

use super::defaults;
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;

/// `routes.toml`: which webhooks switchyard takes, where it keeps them, and
/// which consumers get them with what policy.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The public webhook listener.
    #[serde(default)]
    pub server: RawServer,
    /// Where events are made durable before 2xx: the embedded log or NATS JetStream.
    #[serde(default)]
    pub bus: RawBus,
    /// The admin API (status, pause/resume, queues, replay, metrics) on its own listener. Off when absent.
    pub admin: Option<RawAdmin>,
    /// Where per-consumer idempotency keys live.
    #[serde(default)]
    pub idempotency: RawIdempotency,
    /// Trace export over OTLP/HTTP.
    #[serde(default)]
    pub telemetry: RawTelemetry,
    /// The anomaly watch: baselines of the normal flow and the rules that raise and clear alerts. On by default; reloads without a restart.
    #[serde(default)]
    pub alerts: RawAlerts,
    /// Webhook senders, by name: `[sources.<name>]`.
    #[serde(default)]
    pub sources: BTreeMap<String, RawSource>,
    /// The only places plugins can reach, by name: `[connections.<name>]`. The host owns base URL, timeout and credentials.
    #[serde(default)]
    pub connections: BTreeMap<String, RawConnection>,
    /// Consumers, by name: `[consumers.<name>]`, each a WebAssembly plugin with its own policies.
    #[serde(default)]
    pub consumers: BTreeMap<String, RawConsumer>,
    /// Which events of which source go to which consumers: `[[routes]]`, one table per rule.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Address of the webhook listener, `ip:port`. Env override: `SWITCHYARD_LISTEN`. Restart to change.
    #[schemars(extend("default" = defaults::SERVER_LISTEN))]
    pub listen: Option<String>,
    /// Largest webhook body; larger ones are answered 413. Size, e.g. `"1MiB"`. Restart to change.
    #[schemars(extend("default" = defaults::SERVER_MAX_BODY))]
    pub max_body: Option<String>,
    /// On SIGTERM, how long in-flight deliveries may take to finish; the rest stay in the bus. Duration.
    #[schemars(extend("default" = defaults::SERVER_SHUTDOWN_GRACE))]
    pub shutdown_grace: Option<String>,
    /// Reload when routes.toml changes on disk (SIGHUP and `switchyard reload` work either way).
    #[schemars(extend("default" = defaults::SERVER_WATCH_CONFIG))]
    pub watch_config: Option<bool>,
    /// Longest time a client may take to send the request line and headers of a
    /// request on the public listener (and the admin listener); the connection
    /// is closed when it runs out. A duration like `"10s"`. Takes a restart to
    /// change.
    #[schemars(extend("default" = defaults::SERVER_HEADER_READ_TIMEOUT))]
    pub header_read_timeout: Option<String>,
    /// Longest time a client may take to send a webhook body once its headers
    /// are in; the answer is 408 and the connection is closed when it runs out.
    /// A duration like `"30s"`.
    #[schemars(extend("default" = defaults::SERVER_BODY_READ_TIMEOUT))]
    pub body_read_timeout: Option<String>,
    /// Slowest a webhook body may arrive, on average, after a 2 s grace: a
    /// client sending slower is cut off with 408 instead of holding a request
    /// slot until `body_read_timeout`. Size per second, e.g. `"1KiB"`.
    #[schemars(extend("default" = defaults::SERVER_MIN_BODY_RATE))]
    pub min_body_rate: Option<String>,
    /// Most webhook bodies one client address may be sending at once (bodies
    /// are read before their signature can be checked); more are shed with 503
    /// and `Retry-After: 1`. An integer from 1 to 1000000. Takes a restart to
    /// change.
    #[schemars(extend("default" = defaults::SERVER_MAX_BODIES_PER_CLIENT))]
    pub max_bodies_per_client: Option<i64>,
    /// Proxies whose `X-Forwarded-For` is believed: a list of CIDRs or bare
    /// addresses, e.g. `["10.0.0.0/8", "127.0.0.1"]`. The client address of a
    /// request is the peer address unless the peer is in this list; then it is
    /// the right-most `X-Forwarded-For` entry that is not; with an empty list
    /// the header is ignored. Takes a restart to change.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Most webhook requests handled at once over all sources; more are shed
    /// with 503 and `Retry-After: 1` before their body is read. An integer from
    /// 1 to 1000000. Takes a restart to change.
    #[schemars(extend("default" = defaults::SERVER_MAX_CONCURRENCY))]
    pub max_concurrency: Option<i64>,
    /// Rate of webhook requests over all sources, e.g.
    /// `{ per_second = 500, burst = 1000 }` (or `per_minute`; `burst`
    /// defaults to the rate rounded up); above it requests are shed with
    /// 429 and `Retry-After`. Default: no global rate limit. Takes a
    /// restart to change.
    pub rate_limit: Option<RawRateLimit>,
    /// Threads that run plugin code, apart from the threads that answer
    /// webhooks and drive the bus (and at a lower OS priority). Consumers
    /// share them by `cpu_weight`. An integer from 1 to 256. Default: one
    /// less than the cores, at least one (a core stays free for the edge).
    /// Takes a restart to change.
    pub plugin_threads: Option<i64>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Address of the admin listener, `ip:port`. Required, e.g. `"127.0.0.1:8081"`. Env override: `SWITCHYARD_ADMIN_LISTEN`.
    pub listen: Option<String>,
    /// Bearer token callers must present: a secret reference (`env:NAME` or `file:PATH`). Required.
    pub token: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBus {
    /// `"embedded"` (a redb log under `path`, one process) or `"nats"` (JetStream, several processes). Env override: `SWITCHYARD_BUS_KIND`.
    #[schemars(extend("default" = defaults::BUS_KIND))]
    pub kind: Option<String>,
    /// Embedded only: directory of the log, relative to routes.toml. Env override: `SWITCHYARD_BUS_PATH`.
    #[schemars(extend("default" = defaults::BUS_PATH))]
    pub path: Option<String>,
    /// How long a delivery stays leased if its worker dies: a live worker renews the lease every third of it while the call runs, so this is the failover time, not a bound on calls. At least 1s. Duration.
    #[schemars(extend("default" = defaults::BUS_VISIBILITY_TIMEOUT))]
    pub visibility_timeout: Option<String>,
    /// How long an event id is remembered for ingest dedup. Duration.
    #[schemars(extend("default" = defaults::BUS_DEDUP_WINDOW))]
    pub dedup_window: Option<String>,
    /// How long events stay in the log for replay. Duration.
    #[schemars(extend("default" = defaults::BUS_RETENTION))]
    pub retention: Option<String>,
    /// NATS only: comma-separated seed URLs; a URL with credentials in it is refused. Env override: `SWITCHYARD_BUS_URL`.
    #[schemars(extend("default" = defaults::BUS_URL))]
    pub url: Option<String>,
    /// NATS only: stream name, created or updated at start; `<stream>_DEAD` holds dead letters.
    #[schemars(extend("default" = defaults::BUS_STREAM))]
    pub stream: Option<String>,
    /// NATS only: first subject token, e.g. `switchyard.events.<source>.<type>`.
    #[schemars(extend("default" = defaults::BUS_SUBJECT_PREFIX))]
    pub subject_prefix: Option<String>,
    /// NATS only: stream replicas, 1 to 5 (3 in a cluster).
    #[schemars(extend("default" = defaults::BUS_REPLICAS))]
    pub replicas: Option<i64>,
    /// NATS only: the contents of a `.creds` file, as a secret reference. Default: none.
    pub credentials: Option<String>,
    /// NATS only: a server authorization token, as a secret reference. Not with `credentials`. Default: none.
    pub token: Option<String>,
    /// NATS only: how long ingest waits for JetStream's publish ack before answering 503. Duration.
    #[schemars(extend("default" = defaults::BUS_ACK_TIMEOUT))]
    pub ack_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    /// OTLP/HTTP base URL, e.g. `"http://127.0.0.1:4318"`; no export when unset. `OTEL_EXPORTER_OTLP_ENDPOINT` takes precedence.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of exported spans. `OTEL_SERVICE_NAME` takes precedence.
    #[schemars(extend("default" = defaults::TELEMETRY_SERVICE_NAME))]
    pub service_name: Option<String>,
}

/// `[alerts]`: every key is optional; the defaults suit a production hub.
/// Durations are strings like `"10s"`, `"15m"`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    /// Run the anomaly watch.
    #[schemars(extend("default" = defaults::ALERTS_ENABLED))]
    pub enabled: Option<bool>,
    /// How often the hub is sampled. Duration from `"100ms"` to `"5m"`.
    #[schemars(extend("default" = defaults::ALERTS_INTERVAL))]
    pub interval: Option<String>,
    /// Time constant of the rolling baselines (EWMA): how far back "normal" reaches. Duration.
    #[schemars(extend("default" = defaults::ALERTS_LEARN_FOR))]
    pub learn_for: Option<String>,
    /// How long a baseline must have learned before band rules use it. Duration.
    #[schemars(extend("default" = defaults::ALERTS_WARMUP))]
    pub warmup: Option<String>,
    /// Width of the normal band, in standard deviations. A number from 1 to 100.
    #[schemars(extend("default" = defaults::ALERTS_BAND))]
    pub band: Option<f64>,
    /// How long a value must stay out of its band before an alert is raised. Duration.
    #[schemars(extend("default" = defaults::ALERTS_SUSTAIN))]
    pub sustain: Option<String>,
    /// How long a condition must stay normal before its alert clears. Duration.
    #[schemars(extend("default" = defaults::ALERTS_CLEAR_AFTER))]
    pub clear_after: Option<String>,
    /// Fewest delivery attempts in one sample for the failure ratio to count. Integer from 1.
    #[schemars(extend("default" = defaults::ALERTS_MIN_ATTEMPTS))]
    pub min_attempts: Option<i64>,
    /// Delivery failure ratio that is always an error, baseline or not. Above 0, at most 1.
    #[schemars(extend("default" = defaults::ALERTS_FAILURE_RATIO))]
    pub failure_ratio: Option<f64>,
    /// Refused signatures per minute (per source) that are always an error. Above 0.
    #[schemars(extend("default" = defaults::ALERTS_SIGNATURE_FAILURES_PER_MIN))]
    pub signature_failures_per_min: Option<f64>,
    /// An ingest rate above the baseline mean times this (and above the band) is a spike. Above 1.
    #[schemars(extend("default" = defaults::ALERTS_SPIKE_FACTOR))]
    pub spike_factor: Option<f64>,
    /// A source that had traffic is silent after no events for this long at least. Duration.
    #[schemars(extend("default" = defaults::ALERTS_SILENT_AFTER))]
    pub silent_after: Option<String>,
    /// ... or after this many times its usual gap between events, when that is longer. At least 1.
    #[schemars(extend("default" = defaults::ALERTS_SILENT_FACTOR))]
    pub silent_factor: Option<f64>,
    /// Mean plugin call time under which `slow_plugin` never fires. Duration.
    #[schemars(extend("default" = defaults::ALERTS_SLOW_PLUGIN_FLOOR))]
    pub slow_plugin_floor: Option<String>,
    /// Backlog under which `backlog_high` never fires. Integer from 1.
    #[schemars(extend("default" = defaults::ALERTS_BACKLOG_FLOOR))]
    pub backlog_floor: Option<i64>,
    /// Oldest pending age under which `pending_age_high` never fires. Duration.
    #[schemars(extend("default" = defaults::ALERTS_PENDING_AGE_FLOOR))]
    pub pending_age_floor: Option<String>,
    /// `backlog_growing` fires when a backlog has grown, never shrinking, for this long. Duration.
    #[schemars(extend("default" = defaults::ALERTS_BACKLOG_GROWING_FOR))]
    pub backlog_growing_for: Option<String>,
    /// `backlog_stuck` fires when a backlog waits with no delivery at all for this long. Duration.
    #[schemars(extend("default" = defaults::ALERTS_STUCK_FOR))]
    pub stuck_for: Option<String>,
    /// `breaker_open` fires when a consumer's breaker stays open this long. Duration.
    #[schemars(extend("default" = defaults::ALERTS_BREAKER_OPEN_FOR))]
    pub breaker_open_for: Option<String>,
    /// `dead_letter_growth` / `review_growth` fire when a queue grows by at least this many entries within `queue_growth_window`. Integer from 1.
    #[schemars(extend("default" = defaults::ALERTS_QUEUE_GROWTH))]
    pub queue_growth: Option<i64>,
    /// The window of `queue_growth`. Duration.
    #[schemars(extend("default" = defaults::ALERTS_QUEUE_GROWTH_WINDOW))]
    pub queue_growth_window: Option<String>,
    /// A connection (`[connections.<name>]`) to POST alerts to, e.g. an on-call tool's webhook. Its base URL, credentials, timeout and address policy apply. Default: none.
    pub webhook: Option<String>,
    /// Path of the POST on that connection; starts with `/`.
    #[schemars(extend("default" = defaults::ALERTS_WEBHOOK_PATH))]
    pub webhook_path: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawIdempotency {
    /// `"embedded"` (a redb file, one process) or `"redis"` (shared by several processes).
    #[schemars(extend("default" = defaults::IDEMPOTENCY_KIND))]
    pub kind: Option<String>,
    /// Embedded only: directory of the key store, relative to routes.toml.
    #[schemars(extend("default" = defaults::IDEMPOTENCY_PATH))]
    pub path: Option<String>,
    /// Redis only (required): `redis://` or `rediss://` URL. Env override: `SWITCHYARD_REDIS_URL`.
    pub url: Option<String>,
    /// Redis only: prefix of every key.
    #[schemars(extend("default" = defaults::IDEMPOTENCY_KEY_PREFIX))]
    pub key_prefix: Option<String>,
    /// How long a `done` key is remembered; longer than the provider's retry window. Duration.
    #[schemars(extend("default" = defaults::IDEMPOTENCY_TTL))]
    pub ttl: Option<String>,
    /// How long a `processing` key holds if its worker dies; renewed every third of it while the call runs. At least 1s. Duration.
    #[schemars(extend("default" = defaults::IDEMPOTENCY_LEASE))]
    pub lease: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    /// The signature scheme of the provider: `"stripe"` (`Stripe-Signature`),
    /// `"standard-webhooks"` (Standard Webhooks / Svix: `webhook-id`,
    /// `webhook-timestamp`, `webhook-signature`), `"github"`
    /// (`X-Hub-Signature-256`) or `"shopify"` (`X-Shopify-Hmac-Sha256`). It
    /// also says where the event id and type come from.
    #[schemars(extend("default" = defaults::SOURCE_KIND))]
    pub kind: Option<String>,
    /// URL path the sender posts to. Default `"/webhooks/<name>"`.
    pub path: Option<String>,
    /// Signing secrets as references (`env:NAME`, `file:PATH`); any may match, so list the new one first during a rotation. Required, at least one.
    #[serde(default)]
    #[schemars(transform = required)]
    pub secrets: Vec<String>,
    /// Largest age (and future skew) of a signed timestamp, for the schemes
    /// that sign one (`stripe`, `standard-webhooks`). A duration like `"5m"`.
    #[schemars(extend("default" = defaults::SOURCE_TOLERANCE))]
    pub tolerance: Option<String>,
    /// Client addresses allowed to post to this source: CIDRs or bare
    /// addresses, e.g. `["54.187.174.169/32", "2001:db8::/32"]`. Combined with
    /// `allow_ips_file`; when both are absent every address may post. Refused
    /// addresses get 403. The signature stays the real check.
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

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawConnection {
    /// `http://` or `https://` base URL; plugins append a path to it. Required.
    pub base_url: Option<String>,
    /// Credentials the host adds to every call; the plugin never sees them. Default: none.
    pub auth: Option<RawAuth>,
    /// Timeout of one call, connect to last byte. Duration.
    #[schemars(extend("default" = defaults::CONNECTION_TIMEOUT))]
    pub timeout: Option<String>,
    /// A limit shared by every consumer calling through this connection. Default: none.
    pub rate_limit: Option<RawRateLimit>,
    /// Whether the connection may reach loopback, private (RFC 1918,
    /// `100.64.0.0/10`, `fc00::/7`) and link-local (`169.254.0.0/16`,
    /// `fe80::/10`) addresses, e.g. `allow_private = true` for a downstream on
    /// the internal network. Checked on every address the base URL's host
    /// resolves to, at connect time. Cloud metadata addresses stay refused
    /// either way. A base URL that is itself a literal loopback address
    /// (`http://127.0.0.1:9101`) may reach that address without it.
    #[schemars(extend("default" = defaults::CONNECTION_ALLOW_PRIVATE))]
    pub allow_private: Option<bool>,
}

/// Exactly one of: `bearer`; `basic_user` + `basic_password`; `header` + `value`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// `Authorization: Bearer <secret>`: a secret reference.
    pub bearer: Option<String>,
    /// HTTP basic auth user name (with `basic_password`).
    pub basic_user: Option<String>,
    /// HTTP basic auth password: a secret reference.
    pub basic_password: Option<String>,
    /// Name of a custom credential header (with `value`).
    pub header: Option<String>,
    /// Value of the custom credential header: a secret reference.
    pub value: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawConsumer {
    /// Path of the plugin (`.wasm` component or core module with a component-type section), relative to routes.toml. Required.
    pub plugin: Option<String>,
    /// Connections this plugin may call.
    #[serde(default)]
    pub connections: Vec<String>,
    /// Live events delivered at once, 1 to 1024.
    #[schemars(extend("default" = defaults::CONSUMER_CONCURRENCY))]
    pub concurrency: Option<i64>,
    /// Replayed events delivered at once, on the replay lane apart from live traffic, 1 to 1024.
    #[schemars(extend("default" = defaults::CONSUMER_REPLAY_CONCURRENCY))]
    pub replay_concurrency: Option<i64>,
    /// Retry schedule of transient failures (exponential with jitter).
    pub retry: Option<RawRetry>,
    /// Sandbox budgets of one plugin call.
    pub limits: Option<RawLimits>,
    /// Deliveries per second or minute; waiting for a permit is not a failed attempt. Default: none.
    pub rate_limit: Option<RawRateLimit>,
    /// Stops calling a failing downstream for a while. On by default with the defaults below.
    pub circuit_breaker: Option<RawBreaker>,
    /// This consumer's share of the plugin threads when consumers compete for
    /// them, relative to the others' weights (`3` gets three times the guest
    /// CPU of `1`); an idle consumer's share goes to the others. A number above
    /// 0, at most 1000.
    #[schemars(extend("default" = defaults::CONSUMER_CPU_WEIGHT))]
    pub cpu_weight: Option<f64>,
    /// Most guest CPU this consumer may use per second, in cores (`0.5` is
    /// half a core), even while the threads are otherwise idle: a quota for
    /// a team that must be held to one. A number above 0, at most 256.
    /// Default: none.
    pub cpu_per_second: Option<f64>,
    /// Consecutive calls stopped by the sandbox (CPU or wall-clock budget,
    /// memory cap, stack overflow, trap) after which the consumer is
    /// quarantined: paused with the reason and an alert, its events kept in its
    /// queue, until an operator resumes it or a reload brings a new plugin
    /// version. `0` never quarantines. An integer from 0 to 1000000.
    #[schemars(extend("default" = defaults::CONSUMER_QUARANTINE_AFTER))]
    pub quarantine_after: Option<i64>,
    /// Non-secret strings the plugin reads with `config(key)`.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
}

/// A rate limit: exactly one of `per_second` or `per_minute`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// Permits per second (give this or `per_minute`).
    pub per_second: Option<f64>,
    /// Permits per minute (give this or `per_second`).
    pub per_minute: Option<f64>,
    /// Permits that may be taken at once. Default: the per-period count rounded up.
    pub burst: Option<i64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    /// `false` turns the breaker off.
    #[schemars(extend("default" = defaults::BREAKER_ENABLED))]
    pub enabled: Option<bool>,
    /// Opens when this share of calls in `window` failed, 0 to 1.
    #[schemars(extend("default" = defaults::BREAKER_FAILURE_RATIO))]
    pub failure_ratio: Option<f64>,
    /// Calls in `window` before `failure_ratio` applies.
    #[schemars(extend("default" = defaults::BREAKER_MIN_CALLS))]
    pub min_calls: Option<i64>,
    /// Sliding window of the failure ratio. Duration.
    #[schemars(extend("default" = defaults::BREAKER_WINDOW))]
    pub window: Option<String>,
    /// Opens after this many failures in a row.
    #[schemars(extend("default" = defaults::BREAKER_CONSECUTIVE_FAILURES))]
    pub consecutive_failures: Option<i64>,
    /// How long it stays open before probing. Duration.
    #[schemars(extend("default" = defaults::BREAKER_OPEN_FOR))]
    pub open_for: Option<String>,
    /// Calls let through to probe when half-open.
    #[schemars(extend("default" = defaults::BREAKER_HALF_OPEN_PROBES))]
    pub half_open_probes: Option<i64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Delay before the first retry; doubles each time, with jitter. Duration.
    #[schemars(extend("default" = defaults::RETRY_FIRST))]
    pub first: Option<String>,
    /// Longest delay between retries. Duration.
    #[schemars(extend("default" = defaults::RETRY_MAX))]
    pub max: Option<String>,
    /// Attempts before the event is dead-lettered, first delivery included.
    #[schemars(extend("default" = defaults::RETRY_ATTEMPTS))]
    pub attempts: Option<i64>,
    /// Longest downstream `Retry-After` honoured. Duration.
    #[schemars(extend("default" = defaults::RETRY_MAX_RETRY_AFTER))]
    pub max_retry_after: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// CPU time of one call (guest code only). Duration.
    #[schemars(extend("default" = defaults::LIMITS_CPU))]
    pub cpu: Option<String>,
    /// Wall-clock time of one call, outbound calls included (its leases are renewed meanwhile, so it may exceed them). Duration.
    #[schemars(extend("default" = defaults::LIMITS_WALL))]
    pub wall: Option<String>,
    /// Linear memory of one instance. Size.
    #[schemars(extend("default" = defaults::LIMITS_MEMORY))]
    pub memory: Option<String>,
    /// Outbound calls per event.
    #[schemars(extend("default" = defaults::LIMITS_HTTP_CALLS))]
    pub http_calls: Option<i64>,
    /// Largest downstream response body a plugin may read. Size.
    #[schemars(extend("default" = defaults::LIMITS_RESPONSE_BODY))]
    pub response_body: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Name of a source. Required.
    pub source: Option<String>,
    /// Event type patterns: `*`, `prefix.*` (any depth) or an exact type. Required.
    #[serde(default)]
    #[schemars(transform = required)]
    pub events: Vec<String>,
    /// Consumers that get these events. Required.
    #[serde(default)]
    #[schemars(transform = required)]
    pub consumers: Vec<String>,
}

/// Drops the `default` that `#[serde(default)]` puts in the schema of a
/// key that is required: serde fills in an empty list only so that
/// validation can name the missing key.
fn required(schema: &mut schemars::Schema) {
    schema.remove("default");
}

/// Environment variables that override routes.toml keys, so one file serves
/// every container of a deployment: `(variable, table.key)`.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("SWITCHYARD_LISTEN", "server.listen"),
    ("SWITCHYARD_ADMIN_LISTEN", "admin.listen"),
    ("SWITCHYARD_BUS_KIND", "bus.kind"),
    ("SWITCHYARD_BUS_PATH", "bus.path"),
    ("SWITCHYARD_BUS_URL", "bus.url"),
    ("SWITCHYARD_REDIS_URL", "idempotency.url"),
];

impl RawConfig {
    /// Applies [`ENV_OVERRIDES`] found by `lookup` (the process environment
    /// in `Config::load`). Values are validated like the file's own.
    pub fn override_from(&mut self, lookup: impl Fn(&str) -> Option<String>) {
        for (variable, key) in ENV_OVERRIDES {
            let Some(value) = lookup(variable) else {
                continue;
            };
            let slot = match *key {
                "server.listen" => &mut self.server.listen,
                "admin.listen" => &mut self.admin.get_or_insert_with(Default::default).listen,
                "bus.kind" => &mut self.bus.kind,
                "bus.path" => &mut self.bus.path,
                "bus.url" => &mut self.bus.url,
                "idempotency.url" => &mut self.idempotency.url,
                other => unreachable!("no slot for `{other}`"),
            };
            *slot = Some(value);
        }
        for (name, connection) in &mut self.connections {
            if let Some(url) = lookup(&connection_url_variable(name)) {
                connection.base_url = Some(url);
            }
        }
    }
}

/// The variable that overrides `connections.<name>.base_url`:
/// `SWITCHYARD_CONNECTION_<NAME>_URL`, the name upper-cased with `-` as `_`
/// (a container's one config file, pointed at each deployment's APIs).
pub fn connection_url_variable(name: &str) -> String {
    format!(
        "SWITCHYARD_CONNECTION_{}_URL",
        name.to_ascii_uppercase().replace('-', "_")
    )
}
