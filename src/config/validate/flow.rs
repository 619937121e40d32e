//! The tables of the data flow: `[sources.*]`, `[connections.*]` (and their
//! auth), `[consumers.*]` (limits, retry, rate limit, breaker) and `[[routes]]`.

use super::*;

impl Checker<'_> {
    pub(super) fn source(&mut self, name: &str, raw: &RawSource) -> SourceConfig {
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

    pub(super) fn connection(&mut self, name: &str, raw: &RawConnection) -> ConnectionConfig {
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

    pub(super) fn auth(&mut self, name: &str, raw: &RawAuth) -> Option<AuthConfig> {
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

    pub(super) fn consumer(
        &mut self,
        name: &str,
        raw: &RawConsumer,
        all: &RawConfig,
    ) -> ConsumerConfig {
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
    pub(super) fn positive(&mut self, at: String, value: Option<f64>, max: f64) -> Option<f64> {
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

    pub(super) fn rate_limit(&mut self, at: String, raw: &RawRateLimit) -> Option<RateLimit> {
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

    pub(super) fn breaker(
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

    pub(super) fn route(&mut self, index: usize, raw: &RawRoute, all: &RawConfig) -> RouteConfig {
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
}
