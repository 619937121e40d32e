//! Step two of config loading: from [`RawConfig`] to [`Config`], collecting
//! every problem instead of stopping at the first. No IO happens here.

use super::defaults::{self, duration, size};
use super::raw::*;
use super::units::{parse_duration, parse_size};
use super::*;

/// `; did you mean `x`?` for the known name closest to a mistyped one
/// (within two edits), or nothing.
fn did_you_mean<'a>(name: &str, known: impl Iterator<Item = &'a String>) -> String {
    known
        .map(|candidate| (edit_distance(name, candidate), candidate))
        .filter(|(distance, _)| *distance <= 2)
        .min()
        .map(|(_, candidate)| format!("; did you mean `{candidate}`?"))
        .unwrap_or_default()
}

/// Levenshtein distance, counting an adjacent swap (`epr` for `erp`) as one.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    rows[0] = (0..=b.len()).collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let substitution = rows[i - 1][j - 1] + usize::from(a[i - 1] != b[j - 1]);
            let mut best = substitution.min(rows[i - 1][j] + 1).min(rows[i][j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

/// The shortest lease (`bus.visibility_timeout`, `idempotency.lease`).
const MIN_LEASE: Duration = Duration::from_secs(1);

/// Validates a parsed file. Relative paths resolve against `base_dir`.
pub fn validate(raw: RawConfig, base_dir: &Path) -> Result<Config, Vec<ConfigIssue>> {
    let mut check = Checker {
        issues: Vec::new(),
        base_dir,
    };
    let server = check.server(&raw.server);
    let admin = raw.admin.as_ref().and_then(|admin| check.admin(admin));
    let bus = check.bus(&raw.bus);
    let idempotency = check.idempotency(&raw.idempotency);
    let telemetry = check.telemetry(&raw.telemetry);
    let alerts = check.alerts(&raw.alerts, &raw);
    let sources = raw
        .sources
        .iter()
        .map(|(name, source)| (name.clone(), check.source(name, source)))
        .collect();
    let connections = raw
        .connections
        .iter()
        .map(|(name, connection)| (name.clone(), check.connection(name, connection)))
        .collect();
    let consumers: BTreeMap<String, ConsumerConfig> = raw
        .consumers
        .iter()
        .map(|(name, consumer)| (name.clone(), check.consumer(name, consumer, &raw)))
        .collect();
    let routes = raw
        .routes
        .iter()
        .enumerate()
        .map(|(index, route)| check.route(index, route, &raw))
        .collect();
    check.cross_checks(&raw, &idempotency, &bus);
    if check.issues.is_empty() {
        Ok(Config {
            server,
            admin,
            bus,
            idempotency,
            telemetry,
            alerts,
            sources,
            connections,
            consumers,
            routes,
        })
    } else {
        Err(check.issues)
    }
}

struct Checker<'a> {
    issues: Vec<ConfigIssue>,
    base_dir: &'a Path,
}

impl Checker<'_> {
    fn issue(&mut self, at: impl Into<String>, message: impl Into<String>) {
        self.issues.push(ConfigIssue {
            at: at.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, at: String, value: Option<&String>, default: Duration) -> Duration {
        match value.map(|text| parse_duration(text)) {
            None => default,
            Some(Ok(duration)) if duration.is_zero() => {
                self.issue(at, "must be longer than zero");
                default
            }
            Some(Ok(duration)) => duration,
            Some(Err(err)) => {
                self.issue(at, err.to_string());
                default
            }
        }
    }

    fn size(&mut self, at: String, value: Option<&String>, default: u64) -> u64 {
        match value.map(|text| parse_size(text)) {
            None => default,
            Some(Ok(0)) => {
                self.issue(at, "must be larger than zero");
                default
            }
            Some(Ok(size)) => size,
            Some(Err(err)) => {
                self.issue(at, err.to_string());
                default
            }
        }
    }

    fn count(&mut self, at: String, value: Option<i64>, range: (i64, i64), default: u32) -> u32 {
        match value {
            None => default,
            Some(n) if n >= range.0 && n <= range.1 => n as u32,
            Some(n) => {
                self.issue(
                    at,
                    format!("`{n}` is out of range: use {} to {}", range.0, range.1),
                );
                default
            }
        }
    }

    fn secret(&mut self, at: String, text: &str) -> Option<SecretRef> {
        match SecretRef::parse(text, self.base_dir) {
            Ok(secret) => Some(secret),
            Err(err) => {
                self.issue(at, err.to_string());
                None
            }
        }
    }

    fn name(&mut self, table: &str, name: &str) {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !ok {
            self.issue(
                format!("{table}.{name}"),
                format!("`{name}` is not a valid name: use 1 to 64 of `a-z`, `0-9`, `_`, `-`"),
            );
        }
    }

    fn one_of(
        &mut self,
        at: String,
        value: Option<&String>,
        allowed: &[&str],
        default: &str,
    ) -> String {
        let value = value.map(String::as_str).unwrap_or(default);
        if !allowed.contains(&value) {
            let allowed = allowed.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>();
            self.issue(
                at,
                format!("unknown kind `{value}`: use {}", allowed.join(" or ")),
            );
        }
        value.to_owned()
    }

    fn server(&mut self, raw: &RawServer) -> ServerConfig {
        let default_listen: SocketAddr = defaults::SERVER_LISTEN
            .parse()
            .expect("the default address parses");
        let listen = match raw.listen.as_deref().map(str::parse::<SocketAddr>) {
            None => default_listen,
            Some(Ok(addr)) => addr,
            Some(Err(_)) => {
                let text = raw.listen.as_deref().unwrap_or_default();
                self.issue(
                    "server.listen",
                    format!("`{text}` is not an address like `127.0.0.1:8080`"),
                );
                default_listen
            }
        };
        ServerConfig {
            listen,
            max_body: self.size(
                "server.max_body".into(),
                raw.max_body.as_ref(),
                size(defaults::SERVER_MAX_BODY),
            ),
            shutdown_grace: self.duration(
                "server.shutdown_grace".into(),
                raw.shutdown_grace.as_ref(),
                duration(defaults::SERVER_SHUTDOWN_GRACE),
            ),
            watch_config: raw.watch_config.unwrap_or(defaults::SERVER_WATCH_CONFIG),
            header_read_timeout: self.duration(
                "server.header_read_timeout".into(),
                raw.header_read_timeout.as_ref(),
                duration(defaults::SERVER_HEADER_READ_TIMEOUT),
            ),
            body_read_timeout: self.duration(
                "server.body_read_timeout".into(),
                raw.body_read_timeout.as_ref(),
                duration(defaults::SERVER_BODY_READ_TIMEOUT),
            ),
            min_body_rate: self.size(
                "server.min_body_rate".into(),
                raw.min_body_rate.as_ref(),
                size(defaults::SERVER_MIN_BODY_RATE),
            ),
            max_bodies_per_client: self.count(
                "server.max_bodies_per_client".into(),
                raw.max_bodies_per_client,
                (1, 1_000_000),
                defaults::SERVER_MAX_BODIES_PER_CLIENT,
            ) as usize,
            trusted_proxies: self.nets("server.trusted_proxies", &raw.trusted_proxies),
            max_concurrency: self.count(
                "server.max_concurrency".into(),
                raw.max_concurrency,
                (1, 1_000_000),
                defaults::SERVER_MAX_CONCURRENCY,
            ) as usize,
            rate_limit: raw
                .rate_limit
                .as_ref()
                .and_then(|limit| self.rate_limit("server.rate_limit".into(), limit)),
            plugin_threads: raw.plugin_threads.map(|_| {
                self.count(
                    "server.plugin_threads".into(),
                    raw.plugin_threads,
                    (1, 256),
                    1,
                ) as usize
            }),
        }
    }

    /// A list of CIDRs or addresses; each bad entry is reported at `at[i]`.
    fn nets(&mut self, at: &str, texts: &[String]) -> Vec<ipnet::IpNet> {
        texts
            .iter()
            .enumerate()
            .filter_map(|(index, text)| match parse_net(text) {
                Ok(net) => Some(net),
                Err(err) => {
                    self.issue(format!("{at}[{index}]"), err.to_string());
                    None
                }
            })
            .collect()
    }

    fn admin(&mut self, raw: &RawAdmin) -> Option<AdminConfig> {
        let listen = match raw.listen.as_deref().map(str::parse::<SocketAddr>) {
            Some(Ok(addr)) => Some(addr),
            Some(Err(_)) => {
                let text = raw.listen.as_deref().unwrap_or_default();
                self.issue(
                    "admin.listen",
                    format!("`{text}` is not an address like `127.0.0.1:8081`"),
                );
                None
            }
            None => {
                self.issue(
                    "admin.listen",
                    "an address is required, e.g. `127.0.0.1:8081`",
                );
                None
            }
        };
        let token = match &raw.token {
            Some(text) => self.secret("admin.token".into(), text),
            None => {
                self.issue(
                    "admin.token",
                    "a token reference is required, e.g. `env:SWITCHYARD_ADMIN_TOKEN`",
                );
                None
            }
        };
        Some(AdminConfig {
            listen: listen?,
            token: token?,
        })
    }

    fn bus(&mut self, raw: &RawBus) -> BusConfig {
        let kind = self.one_of(
            "bus.kind".into(),
            raw.kind.as_ref(),
            &["embedded", "nats"],
            defaults::BUS_KIND,
        );
        let engine = if kind == "nats" {
            if raw.path.is_some() {
                self.issue("bus.path", "applies only to `kind = \"embedded\"`");
            }
            BusEngine::Nats(self.nats(raw))
        } else {
            let nats_only = [
                ("url", raw.url.is_some()),
                ("stream", raw.stream.is_some()),
                ("subject_prefix", raw.subject_prefix.is_some()),
                ("replicas", raw.replicas.is_some()),
                ("credentials", raw.credentials.is_some()),
                ("token", raw.token.is_some()),
                ("ack_timeout", raw.ack_timeout.is_some()),
            ];
            for (key, _) in nats_only.iter().filter(|(_, set)| *set) {
                self.issue(format!("bus.{key}"), "applies only to `kind = \"nats\"`");
            }
            BusEngine::Embedded {
                path: self
                    .base_dir
                    .join(raw.path.as_deref().unwrap_or(defaults::BUS_PATH)),
            }
        };
        let bus = BusConfig {
            engine,
            visibility_timeout: self.duration(
                "bus.visibility_timeout".into(),
                raw.visibility_timeout.as_ref(),
                duration(defaults::BUS_VISIBILITY_TIMEOUT),
            ),
            dedup_window: self.duration(
                "bus.dedup_window".into(),
                raw.dedup_window.as_ref(),
                duration(defaults::BUS_DEDUP_WINDOW),
            ),
            retention: self.duration(
                "bus.retention".into(),
                raw.retention.as_ref(),
                duration(defaults::BUS_RETENTION),
            ),
        };
        // JetStream refuses a duplicate window longer than the stream's max age.
        if matches!(bus.engine, BusEngine::Nats(_)) && bus.dedup_window > bus.retention {
            self.issue(
                "bus.dedup_window",
                format!(
                    "must not be longer than `bus.retention` ({}) with `kind = \"nats\"`",
                    humantime::format_duration(bus.retention)
                ),
            );
        }
        bus
    }

    fn nats(&mut self, raw: &RawBus) -> NatsConfig {
        let text = raw.url.as_deref().unwrap_or(defaults::BUS_URL);
        let urls: Vec<String> = text
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_owned)
            .collect();
        if urls.is_empty() {
            self.issue(
                "bus.url",
                "at least one server is required, e.g. `nats://127.0.0.1:4222`",
            );
        }
        for url in &urls {
            let Some((scheme, rest)) = url.split_once("://") else {
                self.issue(
                    "bus.url",
                    format!("`{url}` is not a server address like `nats://127.0.0.1:4222`"),
                );
                continue;
            };
            if !matches!(scheme, "nats" | "tls") {
                self.issue(
                    "bus.url",
                    format!("`{url}`: use the `nats://` or `tls://` scheme"),
                );
            }
            // Passwords in URLs end up in logs and shell history.
            if rest.contains('@') {
                self.issue(
                    "bus.url",
                    "must not carry credentials: use `bus.credentials` or `bus.token` (an `env:`/`file:` reference)",
                );
            }
        }
        let stream = raw
            .stream
            .clone()
            .unwrap_or_else(|| defaults::BUS_STREAM.into());
        let valid_stream = !stream.is_empty()
            && stream.len() <= 64
            && stream
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_stream {
            self.issue(
                "bus.stream",
                format!("`{stream}` is not a valid stream name: use 1 to 64 of `A-Z`, `a-z`, `0-9`, `_`, `-`"),
            );
        }
        let subject_prefix = raw
            .subject_prefix
            .clone()
            .unwrap_or_else(|| defaults::BUS_SUBJECT_PREFIX.into());
        let valid_prefix = subject_prefix.split('.').all(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
        if !valid_prefix {
            self.issue(
                "bus.subject_prefix",
                format!("`{subject_prefix}` is not a subject prefix: use dot-separated tokens of `A-Z`, `a-z`, `0-9`, `_`, `-`"),
            );
        }
        let replicas = self.count(
            "bus.replicas".into(),
            raw.replicas,
            (1, 5),
            defaults::BUS_REPLICAS,
        ) as usize;
        let credentials = raw
            .credentials
            .as_ref()
            .and_then(|text| self.secret("bus.credentials".into(), text));
        let token = raw
            .token
            .as_ref()
            .and_then(|text| self.secret("bus.token".into(), text));
        if credentials.is_some() && token.is_some() {
            self.issue(
                "bus.token",
                "set either `bus.credentials` or `bus.token`, not both",
            );
        }
        NatsConfig {
            urls,
            stream,
            subject_prefix,
            replicas,
            credentials,
            token,
            ack_timeout: self.duration(
                "bus.ack_timeout".into(),
                raw.ack_timeout.as_ref(),
                duration(defaults::BUS_ACK_TIMEOUT),
            ),
        }
    }

    fn telemetry(&mut self, raw: &RawTelemetry) -> TelemetryConfig {
        if let Some(endpoint) = &raw.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            self.issue(
                "telemetry.otlp_endpoint",
                format!("`{endpoint}` is not an OTLP/HTTP base URL like `http://127.0.0.1:4318`"),
            );
        }
        TelemetryConfig {
            otlp_endpoint: raw.otlp_endpoint.clone(),
            service_name: raw
                .service_name
                .clone()
                .unwrap_or_else(|| defaults::TELEMETRY_SERVICE_NAME.into()),
        }
    }

    fn alerts(&mut self, raw: &RawAlerts, all: &RawConfig) -> AlertsConfig {
        let at = |key: &str| format!("alerts.{key}");
        let default = super::settings::AlertThresholds::default();
        let interval = self.duration(
            at("interval"),
            raw.interval.as_ref(),
            duration(defaults::ALERTS_INTERVAL),
        );
        if !(Duration::from_millis(100)..=Duration::from_secs(300)).contains(&interval) {
            self.issue(at("interval"), "must be from `100ms` to `5m`");
        }
        let mut number = |key: &str, value: Option<f64>, min: f64, max: f64, default: f64| {
            let value = value.unwrap_or(default);
            if !(value.is_finite() && value >= min && value <= max) {
                self.issue(at(key), format!("`{value}` must be from {min} to {max}"));
            }
            value
        };
        let band = number("band", raw.band, 1.0, 100.0, default.band);
        let spike_factor = number(
            "spike_factor",
            raw.spike_factor,
            1.0,
            1_000.0,
            default.spike_factor,
        );
        let silent_factor = number(
            "silent_factor",
            raw.silent_factor,
            1.0,
            1_000.0,
            default.silent_factor,
        );
        let signature_failures_per_min = number(
            "signature_failures_per_min",
            raw.signature_failures_per_min,
            0.001,
            1_000_000.0,
            default.signature_failures_per_min,
        );
        let failure_ratio = raw.failure_ratio.unwrap_or(default.failure_ratio);
        if !(failure_ratio > 0.0 && failure_ratio <= 1.0) {
            self.issue(
                at("failure_ratio"),
                format!("`{failure_ratio}` must be above 0 and at most 1"),
            );
        }
        let whole = |checker: &mut Self, key: &str, value: Option<i64>, default: u64| {
            u64::from(checker.count(
                at(key),
                value,
                (1, i64::from(u32::MAX)),
                u32::try_from(default).unwrap_or(u32::MAX),
            ))
        };
        let min_attempts = whole(self, "min_attempts", raw.min_attempts, default.min_attempts);
        let backlog_floor = whole(
            self,
            "backlog_floor",
            raw.backlog_floor,
            default.backlog_floor,
        );
        let queue_growth = whole(self, "queue_growth", raw.queue_growth, default.queue_growth);
        let mut span = |key: &str, value: &Option<String>, default: Duration| {
            self.duration(at(key), value.as_ref(), default)
        };
        let thresholds = super::settings::AlertThresholds {
            learn_for: span("learn_for", &raw.learn_for, default.learn_for),
            warmup: span("warmup", &raw.warmup, default.warmup),
            band,
            sustain: span("sustain", &raw.sustain, default.sustain),
            clear_after: span("clear_after", &raw.clear_after, default.clear_after),
            min_attempts,
            failure_ratio,
            signature_failures_per_min,
            spike_factor,
            silent_after: span("silent_after", &raw.silent_after, default.silent_after),
            silent_factor,
            slow_plugin_floor: span(
                "slow_plugin_floor",
                &raw.slow_plugin_floor,
                default.slow_plugin_floor,
            ),
            backlog_floor,
            pending_age_floor: span(
                "pending_age_floor",
                &raw.pending_age_floor,
                default.pending_age_floor,
            ),
            backlog_growing_for: span(
                "backlog_growing_for",
                &raw.backlog_growing_for,
                default.backlog_growing_for,
            ),
            stuck_for: span("stuck_for", &raw.stuck_for, default.stuck_for),
            breaker_open_for: span(
                "breaker_open_for",
                &raw.breaker_open_for,
                default.breaker_open_for,
            ),
            queue_growth,
            queue_growth_window: span(
                "queue_growth_window",
                &raw.queue_growth_window,
                default.queue_growth_window,
            ),
        };
        if thresholds.learn_for < interval {
            self.issue(
                at("learn_for"),
                "must be at least `alerts.interval`: a baseline learns from samples",
            );
        }
        if let Some(name) = &raw.webhook
            && !all.connections.contains_key(name)
        {
            self.issue(
                at("webhook"),
                format!("unknown connection `{name}`: define `[connections.{name}]`"),
            );
        }
        let webhook_path = raw
            .webhook_path
            .clone()
            .unwrap_or_else(|| defaults::ALERTS_WEBHOOK_PATH.into());
        if !webhook_path.starts_with('/') {
            self.issue(
                at("webhook_path"),
                format!("`{webhook_path}` must start with `/`"),
            );
        }
        if raw.webhook_path.is_some() && raw.webhook.is_none() {
            self.issue(at("webhook_path"), "is set but `alerts.webhook` is not");
        }
        AlertsConfig {
            enabled: raw.enabled.unwrap_or(defaults::ALERTS_ENABLED),
            interval,
            thresholds,
            webhook: raw.webhook.clone(),
            webhook_path,
        }
    }

    fn idempotency(&mut self, raw: &RawIdempotency) -> IdempotencyConfig {
        let kind = self.one_of(
            "idempotency.kind".into(),
            raw.kind.as_ref(),
            &["embedded", "redis"],
            defaults::IDEMPOTENCY_KIND,
        );
        let backend = if kind == "redis" {
            let url = raw.url.clone().unwrap_or_default();
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                self.issue(
                    "idempotency.url",
                    "a `redis://` or `rediss://` url is required when kind is `redis`",
                );
            }
            IdempotencyBackend::Redis {
                url,
                key_prefix: raw
                    .key_prefix
                    .clone()
                    .unwrap_or_else(|| defaults::IDEMPOTENCY_KEY_PREFIX.into()),
            }
        } else {
            for (key, set) in [
                ("url", raw.url.is_some()),
                ("key_prefix", raw.key_prefix.is_some()),
            ] {
                if set {
                    self.issue(
                        format!("idempotency.{key}"),
                        "only used when kind is `redis`",
                    );
                }
            }
            IdempotencyBackend::Embedded {
                path: self
                    .base_dir
                    .join(raw.path.as_deref().unwrap_or(defaults::IDEMPOTENCY_PATH)),
            }
        };
        IdempotencyConfig {
            backend,
            ttl: self.duration(
                "idempotency.ttl".into(),
                raw.ttl.as_ref(),
                duration(defaults::IDEMPOTENCY_TTL),
            ),
            lease: self.duration(
                "idempotency.lease".into(),
                raw.lease.as_ref(),
                duration(defaults::IDEMPOTENCY_LEASE),
            ),
        }
    }

    fn source(&mut self, name: &str, raw: &RawSource) -> SourceConfig {
        self.name("sources", name);
        let at = |key: &str| format!("sources.{name}.{key}");
        let names = SourceKind::ALL.map(SourceKind::name);
        let kind_name = self.one_of(at("kind"), raw.kind.as_ref(), &names, defaults::SOURCE_KIND);
        let kind = SourceKind::ALL
            .into_iter()
            .find(|kind| kind.name() == kind_name)
            .unwrap_or(SourceKind::Stripe);
        if raw.tolerance.is_some() && !kind.signs_timestamp() {
            self.issue(
                at("tolerance"),
                format!("`kind = \"{kind_name}\"` signs no timestamp: remove `tolerance`"),
            );
        }
        let path = raw
            .path
            .clone()
            .unwrap_or_else(|| defaults::source_path(name));
        if !path.starts_with('/') || path.contains(char::is_whitespace) {
            self.issue(
                at("path"),
                format!("`{path}` must be a URL path starting with `/`"),
            );
        }
        if raw.secrets.is_empty() {
            self.issue(
                at("secrets"),
                "at least one signing secret reference is required, e.g. `env:STRIPE_WEBHOOK_SECRET`",
            );
        }
        let secrets = raw
            .secrets
            .iter()
            .enumerate()
            .filter_map(|(index, text)| self.secret(format!("{}[{index}]", at("secrets")), text))
            .collect();
        SourceConfig {
            kind,
            path,
            secrets,
            tolerance: self.duration(
                at("tolerance"),
                raw.tolerance.as_ref(),
                duration(defaults::SOURCE_TOLERANCE),
            ),
            allow_ips: self.nets(&at("allow_ips"), &raw.allow_ips),
            allow_ips_file: match raw.allow_ips_file.as_deref() {
                Some("") => {
                    self.issue(at("allow_ips_file"), "needs a path");
                    None
                }
                Some(path) => Some(self.base_dir.join(path)),
                None => None,
            },
            max_concurrency: raw.max_concurrency.map(|_| {
                self.count(
                    at("max_concurrency"),
                    raw.max_concurrency,
                    (1, 1_000_000),
                    1,
                ) as usize
            }),
            rate_limit: raw
                .rate_limit
                .as_ref()
                .and_then(|limit| self.rate_limit(at("rate_limit"), limit)),
        }
    }

    fn connection(&mut self, name: &str, raw: &RawConnection) -> ConnectionConfig {
        self.name("connections", name);
        let at = |key: &str| format!("connections.{name}.{key}");
        let base_url = raw.base_url.clone().unwrap_or_default();
        match reqwest::Url::parse(&base_url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
                    self.issue(
                        at("base_url"),
                        format!("`{base_url}` must not carry credentials, a query or a fragment"),
                    );
                }
            }
            _ => self.issue(
                at("base_url"),
                format!("`{base_url}` is not an http(s) URL like `https://api.example.com`"),
            ),
        }
        let auth = raw.auth.as_ref().and_then(|auth| self.auth(name, auth));
        ConnectionConfig {
            base_url: base_url.trim_end_matches('/').to_owned(),
            auth,
            timeout: self.duration(
                at("timeout"),
                raw.timeout.as_ref(),
                duration(defaults::CONNECTION_TIMEOUT),
            ),
            rate_limit: raw
                .rate_limit
                .as_ref()
                .and_then(|limit| self.rate_limit(at("rate_limit"), limit)),
            allow_private: raw
                .allow_private
                .unwrap_or(defaults::CONNECTION_ALLOW_PRIVATE),
        }
    }

    fn auth(&mut self, name: &str, raw: &RawAuth) -> Option<AuthConfig> {
        let at = |key: &str| format!("connections.{name}.auth.{key}");
        match (
            &raw.bearer,
            &raw.basic_user,
            &raw.basic_password,
            &raw.header,
            &raw.value,
        ) {
            (Some(token), None, None, None, None) => {
                self.secret(at("bearer"), token).map(AuthConfig::Bearer)
            }
            (None, Some(user), Some(password), None, None) => self
                .secret(at("basic_password"), password)
                .map(|password| AuthConfig::Basic {
                    user: user.clone(),
                    password,
                }),
            (None, None, None, Some(header), Some(value)) => {
                self.secret(at("value"), value)
                    .map(|value| AuthConfig::Header {
                        name: header.clone(),
                        value,
                    })
            }
            _ => {
                self.issue(
                    format!("connections.{name}.auth"),
                    "use exactly one of `bearer`, `basic_user` + `basic_password`, or `header` + `value`",
                );
                None
            }
        }
    }

    fn consumer(&mut self, name: &str, raw: &RawConsumer, all: &RawConfig) -> ConsumerConfig {
        self.name("consumers", name);
        let at = |key: &str| format!("consumers.{name}.{key}");
        let plugin = match &raw.plugin {
            Some(path) if !path.is_empty() => self.base_dir.join(path),
            _ => {
                self.issue(
                    at("plugin"),
                    "a plugin path is required, e.g. `plugins/dist/crm.wasm`",
                );
                PathBuf::new()
            }
        };
        for (index, connection) in raw.connections.iter().enumerate() {
            if !all.connections.contains_key(connection) {
                self.issue(
                    format!("{}[{index}]", at("connections")),
                    format!(
                        "unknown connection `{connection}`{}",
                        did_you_mean(connection, all.connections.keys())
                    ),
                );
            }
        }
        let default = PluginLimits::default();
        let limits = match &raw.limits {
            None => default,
            Some(limits) => PluginLimits {
                cpu: self.duration(at("limits.cpu"), limits.cpu.as_ref(), default.cpu),
                wall: self.duration(at("limits.wall"), limits.wall.as_ref(), default.wall),
                memory: self.size(at("limits.memory"), limits.memory.as_ref(), default.memory),
                http_calls: self.count(
                    at("limits.http_calls"),
                    limits.http_calls,
                    (0, 1000),
                    default.http_calls,
                ),
                response_body: self.size(
                    at("limits.response_body"),
                    limits.response_body.as_ref(),
                    default.response_body,
                ),
            },
        };
        if limits.memory > 4 << 30 {
            self.issue(at("limits.memory"), "must be at most `4GiB` (32-bit wasm)");
        }
        let retry = match &raw.retry {
            None => RetryConfig::default(),
            Some(retry) => {
                let default = RetryConfig::default();
                let parsed = RetryConfig {
                    first: self.duration(at("retry.first"), retry.first.as_ref(), default.first),
                    max: self.duration(at("retry.max"), retry.max.as_ref(), default.max),
                    attempts: self.count(
                        at("retry.attempts"),
                        retry.attempts,
                        (1, 1000),
                        default.attempts,
                    ),
                    max_retry_after: self.duration(
                        at("retry.max_retry_after"),
                        retry.max_retry_after.as_ref(),
                        default.max_retry_after,
                    ),
                };
                if parsed.first > parsed.max {
                    self.issue(at("retry.max"), "must not be shorter than `retry.first`");
                }
                parsed
            }
        };
        let rate_limit = raw
            .rate_limit
            .as_ref()
            .and_then(|limit| self.rate_limit(at("rate_limit"), limit));
        let circuit_breaker = self.breaker(name, raw.circuit_breaker.as_ref());
        ConsumerConfig {
            plugin,
            connections: raw.connections.clone(),
            concurrency: self.count(
                at("concurrency"),
                raw.concurrency,
                (1, 1024),
                defaults::CONSUMER_CONCURRENCY,
            ) as usize,
            replay_concurrency: self.count(
                at("replay_concurrency"),
                raw.replay_concurrency,
                (1, 1024),
                defaults::CONSUMER_REPLAY_CONCURRENCY,
            ) as usize,
            retry,
            limits,
            rate_limit,
            circuit_breaker,
            settings: raw.settings.clone(),
            cpu_weight: self
                .positive(at("cpu_weight"), raw.cpu_weight, 1000.0)
                .unwrap_or(defaults::CONSUMER_CPU_WEIGHT),
            cpu_per_second: self.positive(at("cpu_per_second"), raw.cpu_per_second, 256.0),
            quarantine_after: self.count(
                at("quarantine_after"),
                raw.quarantine_after,
                (0, 1_000_000),
                defaults::CONSUMER_QUARANTINE_AFTER,
            ),
        }
    }

    /// A number above 0 and at most `max`, if given.
    fn positive(&mut self, at: String, value: Option<f64>, max: f64) -> Option<f64> {
        let value = value?;
        if value > 0.0 && value <= max {
            Some(value)
        } else {
            self.issue(
                at,
                format!("`{value}` is out of range: use a number above 0, at most {max}"),
            );
            None
        }
    }

    fn rate_limit(&mut self, at: String, raw: &RawRateLimit) -> Option<RateLimit> {
        let (count, unit) = match (raw.per_second, raw.per_minute) {
            (Some(n), None) => (n, Duration::from_secs(1)),
            (None, Some(n)) => (n, Duration::from_secs(60)),
            _ => {
                self.issue(at, "give exactly one of `per_second` or `per_minute`");
                return None;
            }
        };
        if !(count.is_finite() && count > 0.0 && count <= 1_000_000.0) {
            self.issue(
                at,
                format!("rate `{count}` must be above 0 and at most 1000000"),
            );
            return None;
        }
        let default_burst = count.ceil().max(1.0) as i64;
        let burst = self.count(
            format!("{at}.burst"),
            raw.burst.or(Some(default_burst)),
            (1, 1_000_000),
            1,
        );
        Some(RateLimit {
            period: unit.div_f64(count),
            burst,
        })
    }

    fn breaker(
        &mut self,
        consumer: &str,
        raw: Option<&RawBreaker>,
    ) -> Option<super::settings::BreakerConfig> {
        let default = super::settings::BreakerConfig::default();
        let Some(raw) = raw else {
            return Some(default);
        };
        let at = |key: &str| format!("consumers.{consumer}.circuit_breaker.{key}");
        let failure_ratio = raw.failure_ratio.unwrap_or(default.failure_ratio);
        if !(failure_ratio > 0.0 && failure_ratio <= 1.0) {
            self.issue(
                at("failure_ratio"),
                format!("`{failure_ratio}` must be above 0 and at most 1"),
            );
        }
        let config = super::settings::BreakerConfig {
            failure_ratio,
            min_calls: self.count(
                at("min_calls"),
                raw.min_calls,
                (1, 1_000_000),
                default.min_calls,
            ),
            window: self.duration(at("window"), raw.window.as_ref(), default.window),
            consecutive_failures: self.count(
                at("consecutive_failures"),
                raw.consecutive_failures,
                (0, 1_000_000),
                default.consecutive_failures,
            ),
            open_for: self.duration(at("open_for"), raw.open_for.as_ref(), default.open_for),
            half_open_probes: self.count(
                at("half_open_probes"),
                raw.half_open_probes,
                (1, 1000),
                default.half_open_probes,
            ),
        };
        raw.enabled
            .unwrap_or(defaults::BREAKER_ENABLED)
            .then_some(config)
    }

    fn route(&mut self, index: usize, raw: &RawRoute, all: &RawConfig) -> RouteConfig {
        let at = |key: &str| format!("routes[{index}].{key}");
        let source = raw.source.clone().unwrap_or_default();
        if raw.source.is_none() {
            self.issue(at("source"), "a source name is required");
        } else if !all.sources.contains_key(&source) {
            self.issue(
                at("source"),
                format!(
                    "unknown source `{source}`{}",
                    did_you_mean(&source, all.sources.keys())
                ),
            );
        }
        if raw.events.is_empty() {
            self.issue(at("events"), "list at least one event pattern, or `*`");
        }
        let events = raw
            .events
            .iter()
            .enumerate()
            .filter_map(|(i, text)| match EventPattern::parse(text) {
                Ok(pattern) => Some(pattern),
                Err(err) => {
                    self.issue(format!("{}[{i}]", at("events")), err.to_string());
                    None
                }
            })
            .collect();
        if raw.consumers.is_empty() {
            self.issue(at("consumers"), "list at least one consumer");
        }
        for (i, consumer) in raw.consumers.iter().enumerate() {
            if !all.consumers.contains_key(consumer) {
                self.issue(
                    format!("{}[{i}]", at("consumers")),
                    format!(
                        "unknown consumer `{consumer}`{}",
                        did_you_mean(consumer, all.consumers.keys())
                    ),
                );
            }
        }
        RouteConfig {
            source,
            events,
            consumers: raw.consumers.clone(),
        }
    }

    fn cross_checks(&mut self, raw: &RawConfig, idempotency: &IdempotencyConfig, bus: &BusConfig) {
        let mut paths: BTreeMap<String, &str> = BTreeMap::new();
        for (name, source) in &raw.sources {
            let path = source
                .path
                .clone()
                .unwrap_or_else(|| defaults::source_path(name));
            if let Some(other) = paths.insert(path.clone(), name) {
                self.issue(
                    format!("sources.{name}.path"),
                    format!("`{path}` is already used by source `{other}`"),
                );
            }
        }
        // Leases are renewed every third of their length while a call runs
        // (so a call may outlast them); below a second, one slow Redis or
        // NATS round trip would lose them.
        for (key, lease) in [
            ("bus.visibility_timeout", bus.visibility_timeout),
            ("idempotency.lease", idempotency.lease),
        ] {
            if lease < MIN_LEASE {
                self.issue(
                    key,
                    "must be at least 1s: it is renewed every third of it while a call runs",
                );
            }
        }
        for name in raw.consumers.keys() {
            if !raw
                .routes
                .iter()
                .any(|route| route.consumers.contains(name))
            {
                self.issue(
                    format!("consumers.{name}"),
                    format!("consumer `{name}` is in no route, so it would never receive events"),
                );
            }
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            first: duration(defaults::RETRY_FIRST),
            max: duration(defaults::RETRY_MAX),
            attempts: defaults::RETRY_ATTEMPTS,
            max_retry_after: duration(defaults::RETRY_MAX_RETRY_AFTER),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::did_you_mean;

    #[test]
    fn a_near_miss_names_the_known_name() {
        let known = ["crm".to_owned(), "erp".to_owned(), "marketing".to_owned()];
        assert_eq!(did_you_mean("epr", known.iter()), "; did you mean `erp`?");
        assert_eq!(
            did_you_mean("marketting", known.iter()),
            "; did you mean `marketing`?"
        );
        assert_eq!(did_you_mean("salesforce", known.iter()), "");
    }
}
