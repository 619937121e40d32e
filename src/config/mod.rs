//! Configuration: `routes.toml` in two steps.
//!
//! Owns the file format, its defaults and its validation. Step one
//! ([`raw`]) is the serde shape and rejects unknown keys; step two
//! ([`validate`]) turns it into [`Config`] with no IO and reports every problem
//! at once, each naming its table and key. IO checks (secrets resolvable,
//! plugins loadable, services reachable) belong to `switchyard check`, not here.
//!
//! Secrets are references (`env:NAME`, `file:PATH`), never literals: the text of
//! routes.toml can be committed and shared.

pub mod defaults;
pub mod raw;
pub mod reference;
mod secret;
pub mod settings;
pub mod units;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use secret::{Secret, SecretError, SecretRef};
pub use units::{ValueError, parse_net};
pub use validate::validate;

/// A validated configuration. Paths are absolute (resolved against the
/// directory of routes.toml).
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    /// The admin listener; off when `[admin]` is absent.
    pub admin: Option<AdminConfig>,
    pub bus: BusConfig,
    pub idempotency: IdempotencyConfig,
    pub telemetry: TelemetryConfig,
    pub alerts: AlertsConfig,
    pub sources: BTreeMap<String, SourceConfig>,
    pub connections: BTreeMap<String, ConnectionConfig>,
    pub consumers: BTreeMap<String, ConsumerConfig>,
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_body: u64,
    pub shutdown_grace: Duration,
    /// Reload when routes.toml changes on disk (SIGHUP and the admin call
    /// reload either way).
    pub watch_config: bool,
    /// Time allowed for a request's headers to arrive.
    pub header_read_timeout: Duration,
    /// Time allowed for a webhook body to arrive after its headers.
    pub body_read_timeout: Duration,
    /// Slowest average rate a body may arrive at (bytes/s), after a grace.
    pub min_body_rate: u64,
    /// Bodies one client address may be sending at once.
    pub max_bodies_per_client: usize,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Webhook requests handled at once over all sources.
    pub max_concurrency: usize,
    /// Webhook request rate over all sources.
    pub rate_limit: Option<RateLimit>,
    /// Threads that run plugin code; `None`: one less than the cores.
    pub plugin_threads: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Bearer token callers must present.
    pub token: SecretRef,
}

/// The bus: which engine, and the settings both engines share.
#[derive(Debug, Clone, PartialEq)]
pub struct BusConfig {
    pub engine: BusEngine,
    /// How long a pulled delivery stays invisible before it is redelivered.
    pub visibility_timeout: Duration,
    /// How long an event id is remembered for ingest dedup.
    pub dedup_window: Duration,
    /// How long events stay in the log for replay.
    pub retention: Duration,
}

/// The bus engines. Closed set: a new engine is code behind the `Bus` trait.
#[derive(Debug, Clone, PartialEq)]
pub enum BusEngine {
    /// redb file under `path`: one process, no extra service.
    Embedded { path: PathBuf },
    /// NATS JetStream: several processes share the work.
    Nats(NatsConfig),
}

#[derive(Debug, Clone, PartialEq)]
pub struct NatsConfig {
    /// Seed servers, e.g. `nats://127.0.0.1:4222`; the client learns the rest
    /// of a cluster from them.
    pub urls: Vec<String>,
    /// Stream name; created or updated at start.
    pub stream: String,
    /// First subject tokens of every message, e.g. `switchyard` in
    /// `switchyard.events.stripe.invoice.paid`. Two hubs on one NATS need two.
    pub subject_prefix: String,
    /// Stream replicas: 1 on a single server, 3 (or 5) in a cluster.
    pub replicas: usize,
    /// Contents of a NATS `.creds` file (JWT + nkey seed).
    pub credentials: Option<SecretRef>,
    /// A server authorization token.
    pub token: Option<SecretRef>,
    /// How long ingest waits for JetStream's publish ack before answering 503.
    pub ack_timeout: Duration,
}

/// Trace export. `OTEL_EXPORTER_OTLP_ENDPOINT` and `OTEL_SERVICE_NAME` in
/// the environment take precedence (the OpenTelemetry convention).
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// OTLP/HTTP base URL, e.g. `http://127.0.0.1:4318`; no export if unset.
    pub otlp_endpoint: Option<String>,
    pub service_name: String,
}

/// The anomaly watch (`[alerts]`).
#[derive(Debug, Clone, PartialEq)]
pub struct AlertsConfig {
    pub enabled: bool,
    /// How often the hub is sampled.
    pub interval: Duration,
    pub thresholds: settings::AlertThresholds,
    /// Connection that alerts are POSTed to, and the path of the POST.
    pub webhook: Option<String>,
    pub webhook_path: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IdempotencyConfig {
    pub backend: IdempotencyBackend,
    /// How long a `done` key lives; longer than the provider's retry window.
    pub ttl: Duration,
    /// How long a `processing` lease lives if its holder dies.
    pub lease: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum IdempotencyBackend {
    Embedded { path: PathBuf },
    Redis { url: String, key_prefix: String },
}

/// The signature schemes a source may use. Closed set: a new scheme is code
/// in `ingest::scheme`; a new provider using a known scheme is config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// `Stripe-Signature: t=…,v1=<hex>`; id and type from the body.
    Stripe,
    /// Standard Webhooks / Svix: `webhook-id`, `webhook-timestamp`,
    /// `webhook-signature: v1,<base64>`; type from the body.
    StandardWebhooks,
    /// `X-Hub-Signature-256: sha256=<hex>`; id and type from headers.
    GitHub,
    /// `X-Shopify-Hmac-Sha256: <base64>`; id and type from headers.
    Shopify,
}

impl SourceKind {
    pub const ALL: [SourceKind; 4] = [
        SourceKind::Stripe,
        SourceKind::StandardWebhooks,
        SourceKind::GitHub,
        SourceKind::Shopify,
    ];

    /// The name used for `kind` in routes.toml.
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Stripe => "stripe",
            SourceKind::StandardWebhooks => "standard-webhooks",
            SourceKind::GitHub => "github",
            SourceKind::Shopify => "shopify",
        }
    }

    /// Whether the scheme signs a timestamp (so `tolerance` applies).
    pub fn signs_timestamp(self) -> bool {
        matches!(self, SourceKind::Stripe | SourceKind::StandardWebhooks)
    }
}

#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub kind: SourceKind,
    /// URL path the source is served on, e.g. `/webhooks/stripe`.
    pub path: String,
    /// Signing secrets, newest first; several during a rotation.
    pub secrets: Vec<SecretRef>,
    /// Largest accepted age of a signature timestamp.
    pub tolerance: Duration,
    /// Allowed client networks from `allow_ips`.
    pub allow_ips: Vec<ipnet::IpNet>,
    /// More allowed networks, read from this file at start and reload.
    pub allow_ips_file: Option<PathBuf>,
    /// Requests to this source handled at once.
    pub max_concurrency: Option<usize>,
    /// Request rate of this source.
    pub rate_limit: Option<RateLimit>,
}

#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    pub base_url: String,
    pub auth: Option<AuthConfig>,
    pub timeout: Duration,
    /// Shared by every consumer calling through this connection.
    pub rate_limit: Option<RateLimit>,
    /// May reach loopback, private and link-local addresses.
    pub allow_private: bool,
}

/// A GCRA rate: one permit every `period`, at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub period: Duration,
    pub burst: u32,
}

#[derive(Debug, Clone)]
pub enum AuthConfig {
    Bearer(SecretRef),
    Basic { user: String, password: SecretRef },
    Header { name: String, value: SecretRef },
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub plugin: PathBuf,
    pub connections: Vec<String>,
    pub concurrency: usize,
    /// Workers for the replay lane (dead-letter and history replays), apart
    /// from `concurrency` so a replay cannot starve live traffic.
    pub replay_concurrency: usize,
    pub retry: RetryConfig,
    pub limits: PluginLimits,
    pub rate_limit: Option<RateLimit>,
    /// `None` when `circuit_breaker.enabled = false`.
    pub circuit_breaker: Option<settings::BreakerConfig>,
    /// Non-secret settings the plugin reads with `config(key)`.
    pub settings: BTreeMap<String, String>,
    /// Relative share of the plugin threads under contention.
    pub cpu_weight: f64,
    /// Guest CPU quota, in cores.
    pub cpu_per_second: Option<f64>,
    /// Consecutive sandbox stops before quarantine; 0 never.
    pub quarantine_after: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryConfig {
    pub first: Duration,
    pub max: Duration,
    /// Deliveries before the event is dead-lettered (the first one counts).
    pub attempts: u32,
    /// Longest downstream `Retry-After` honoured.
    pub max_retry_after: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PluginLimits {
    pub cpu: Duration,
    pub wall: Duration,
    pub memory: u64,
    pub http_calls: u32,
    pub response_body: u64,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            cpu: defaults::duration(defaults::LIMITS_CPU),
            wall: defaults::duration(defaults::LIMITS_WALL),
            memory: defaults::size(defaults::LIMITS_MEMORY),
            http_calls: defaults::LIMITS_HTTP_CALLS,
            response_body: defaults::size(defaults::LIMITS_RESPONSE_BODY),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub source: String,
    pub events: Vec<EventPattern>,
    pub consumers: Vec<String>,
}

/// An event-type pattern of a route: `*` (everything), `customer.*` (every
/// type under `customer.`, at any depth) or an exact type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventPattern {
    Any,
    Prefix(String),
    Exact(String),
}

impl EventPattern {
    pub fn parse(text: &str) -> Result<Self, ValueError> {
        if text == "*" {
            return Ok(EventPattern::Any);
        }
        let (body, prefix) = match text.strip_suffix(".*") {
            Some(body) => (body, true),
            None => (text, false),
        };
        if !is_event_type(body) {
            return Err(ValueError::EventPattern(text.to_owned()));
        }
        Ok(if prefix {
            EventPattern::Prefix(format!("{body}."))
        } else {
            EventPattern::Exact(body.to_owned())
        })
    }

    /// The types both patterns match, as a pattern; `None` if none.
    pub fn intersect(&self, other: &EventPattern) -> Option<EventPattern> {
        use EventPattern::*;
        match (self, other) {
            (Any, pattern) | (pattern, Any) => Some(pattern.clone()),
            (Exact(exact), pattern) | (pattern, Exact(exact)) => {
                pattern.matches(exact).then(|| Exact(exact.clone()))
            }
            (Prefix(a), Prefix(b)) if a.starts_with(b.as_str()) => Some(Prefix(a.clone())),
            (Prefix(a), Prefix(b)) if b.starts_with(a.as_str()) => Some(Prefix(b.clone())),
            (Prefix(_), Prefix(_)) => None,
        }
    }

    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            EventPattern::Any => true,
            EventPattern::Prefix(prefix) => event_type.starts_with(prefix.as_str()),
            EventPattern::Exact(exact) => exact == event_type,
        }
    }
}

impl fmt::Display for EventPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventPattern::Any => f.write_str("*"),
            EventPattern::Prefix(prefix) => write!(f, "{prefix}*"),
            EventPattern::Exact(exact) => f.write_str(exact),
        }
    }
}

/// Event types are dot-separated tokens of `[a-z0-9_]`, as Stripe's are. The
/// same rule is enforced at ingest, so a type is always a safe key and subject.
pub fn is_event_type(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 128
        && text.split('.').all(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

/// One problem in routes.toml, located by table and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted location, e.g. `consumers.crm.retry.first` or `routes[1].consumers`.
    pub at: String,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config `{path}` is not valid TOML for switchyard: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config `{path}` has {} problem(s):\n{}", .issues.len(), render_issues(.issues))]
    Invalid {
        path: PathBuf,
        issues: Vec<ConfigIssue>,
    },
}

impl ConfigError {
    /// One entry a problem: each issue of an invalid file, or the one error.
    pub fn messages(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid { issues, .. } => issues.iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        }
    }
}

fn render_issues(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(|issue| format!("  - {issue}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Reads, parses and validates a routes.toml file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let base_dir = if base_dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base_dir
        };
        Config::parse_with_env(&text, &base_dir, |name| std::env::var(name).ok()).map_err(|err| {
            match err {
                ParseError::Syntax(message) => ConfigError::Syntax {
                    path: path.to_owned(),
                    message,
                },
                ParseError::Invalid(issues) => ConfigError::Invalid {
                    path: path.to_owned(),
                    issues,
                },
            }
        })
    }

    /// Parses and validates TOML text; relative paths resolve against `base_dir`.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Config, ParseError> {
        Config::parse_with_env(text, base_dir, |_| None)
    }

    /// [`Config::parse`] with the `SWITCHYARD_*` overrides of
    /// [`raw::ENV_OVERRIDES`] that `lookup` finds applied on top of the file.
    pub fn parse_with_env(
        text: &str,
        base_dir: &Path,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ParseError> {
        let mut raw = parse_raw(text)?;
        raw.override_from(lookup);
        let base_dir = std::path::absolute(base_dir).unwrap_or_else(|_| base_dir.to_owned());
        validate(raw, &base_dir).map_err(ParseError::Invalid)
    }
}

/// Most unknown keys reported from one file.
const MAX_UNKNOWN_KEYS: usize = 50;

/// The serde shape of `text`, reporting every unknown key (each place it
/// occurs) rather than only the first: serde stops at the first, so each
/// one is reported, blanked out of the text (positions kept) and the parse
/// tried again. Any other error ends the list.
fn parse_raw(text: &str) -> Result<raw::RawConfig, ParseError> {
    let mut text = text.to_owned();
    let mut problems = Vec::new();
    loop {
        let err = match toml::from_str::<raw::RawConfig>(&text) {
            Ok(raw) if problems.is_empty() => return Ok(raw),
            Ok(_) => break,
            Err(err) => err,
        };
        let blanked = (err.message().starts_with("unknown field")
            && problems.len() < MAX_UNKNOWN_KEYS)
            .then(|| err.span())
            .flatten()
            .and_then(|key| without_entry(&text, key));
        problems.push(err.to_string().trim_end().to_owned());
        match blanked {
            Some(rest) => text = rest,
            None => break,
        }
    }
    Err(ParseError::Syntax(problems.join("\n\n")))
}

/// `text` with the `key = value` entry whose key spans `key` replaced by
/// spaces (line breaks kept, so every other position stays where it was);
/// `None` if that key starts no such entry (a table header, say).
fn without_entry(text: &str, key: std::ops::Range<usize>) -> Option<String> {
    use toml::de::{DeTable, DeValue};
    fn value_end(table: &DeTable<'_>, key: &std::ops::Range<usize>) -> Option<usize> {
        table.iter().find_map(|(name, value)| {
            if name.span() == *key {
                return Some(value.span().end);
            }
            nested_end(value.get_ref(), key)
        })
    }
    fn nested_end(value: &DeValue<'_>, key: &std::ops::Range<usize>) -> Option<usize> {
        match value {
            DeValue::Table(table) => value_end(table, key),
            DeValue::Array(items) => items
                .iter()
                .find_map(|item| nested_end(item.get_ref(), key)),
            _ => None,
        }
    }
    let after_key = text.get(key.end..)?.trim_start_matches([' ', '\t']);
    if !after_key.starts_with('=') {
        return None;
    }
    let document = DeTable::parse(text).ok()?;
    let end = value_end(document.get_ref(), &key)?;
    let mut bytes = text.as_bytes().to_vec();
    for byte in bytes.get_mut(key.start..end)? {
        if *byte != b'\n' {
            *byte = b' ';
        }
    }
    String::from_utf8(bytes).ok()
}

#[derive(Debug)]
pub enum ParseError {
    Syntax(String),
    Invalid(Vec<ConfigIssue>),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Syntax(message) => write!(f, "{message}"),
            ParseError::Invalid(issues) => f.write_str(&render_issues(issues)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_intersect_to_what_both_match() {
        let parse = |text: &str| EventPattern::parse(text).unwrap();
        let both = |a: &str, b: &str| parse(a).intersect(&parse(b));
        assert_eq!(both("*", "invoice.*"), Some(parse("invoice.*")));
        assert_eq!(both("invoice.paid", "*"), Some(parse("invoice.paid")));
        assert_eq!(
            both("invoice.*", "invoice.paid"),
            Some(parse("invoice.paid"))
        );
        assert_eq!(both("customer.*", "invoice.paid"), None);
        assert_eq!(
            both("customer.*", "customer.subscription.*"),
            Some(parse("customer.subscription.*"))
        );
        assert_eq!(both("customer.*", "invoice.*"), None);
        assert_eq!(
            both("invoice.paid", "invoice.paid"),
            Some(parse("invoice.paid"))
        );
    }

    #[test]
    fn patterns_match_like_routes_say() {
        let any = EventPattern::parse("*").unwrap();
        let customer = EventPattern::parse("customer.*").unwrap();
        let exact = EventPattern::parse("invoice.paid").unwrap();
        assert!(any.matches("anything.at_all"));
        assert!(customer.matches("customer.created"));
        assert!(customer.matches("customer.subscription.updated"));
        assert!(!customer.matches("customer"));
        assert!(!customer.matches("customers.created"));
        assert!(exact.matches("invoice.paid"));
        assert!(!exact.matches("invoice.paid.extra"));
        assert!(EventPattern::parse("Invoice.Paid").is_err());
        assert!(EventPattern::parse("invoice..paid").is_err());
        assert!(EventPattern::parse("*.paid").is_err());
    }
}
