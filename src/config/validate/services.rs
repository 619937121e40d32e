//! The service tables: `[server]`, `[admin]`, `[bus]` (NATS included),
//! `[telemetry]` and `[idempotency]`.

use super::*;

impl Checker<'_> {
    pub(super) fn server(&mut self, raw: &RawServer) -> ServerConfig {
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
    pub(super) fn nets(&mut self, at: &str, texts: &[String]) -> Vec<ipnet::IpNet> {
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

    pub(super) fn admin(&mut self, raw: &RawAdmin) -> Option<AdminConfig> {
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

    pub(super) fn bus(&mut self, raw: &RawBus) -> BusConfig {
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

    pub(super) fn nats(&mut self, raw: &RawBus) -> NatsConfig {
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

    pub(super) fn telemetry(&mut self, raw: &RawTelemetry) -> TelemetryConfig {
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

    pub(super) fn idempotency(&mut self, raw: &RawIdempotency) -> IdempotencyConfig {
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
}
