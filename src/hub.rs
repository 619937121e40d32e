//! The hub: assembles the stages from a validated [`Config`] and runs them.
//!
//! Owns start-up order (secrets → bus → idempotency store → plugins →
//! consumer loops → listener), the janitor, and graceful shutdown (stop
//! taking requests, let in-flight deliveries finish within the grace period,
//! leave the rest in the bus). Also the IO checks of `switchyard check`.

use crate::admin::alerts::AlertSettings;
use crate::admin::{ConsumerControl, ConsumerStatus, HubControl, ReloadReport, ReloadRequest};
use crate::bus::embedded::EmbeddedBus;
use crate::bus::{Bus, BusAdmin, BusError, Engine, Housekeeping, Lane, Subscriber, Subscription};
use crate::config::{BusEngine, Config, IdempotencyBackend};
use crate::dispatch::idempotency::{IdempotencyError, IdempotencyStore, RedisStore};
use crate::dispatch::layers::BreakerHandle;
use crate::dispatch::quarantine::PluginHealth;
use crate::dispatch::{ConsumerLoop, ConsumerStats, StackParts, consumer_stack, plugin_call};
use crate::durable::EmptyStore;
use crate::durable::in_batches;
use crate::ingest::edge::{Allowlist, LimitSettings, Limits};
use crate::ingest::signature::SigningKey;
use crate::ingest::{Clock, EdgeSettings, Ingest, SourceEndpoint, system_clock};
use crate::limiter::RateLimiter;
use crate::plugin::pool::GuestPool;
use crate::plugin::{Connection, ConsumerPlugin, PluginError, PluginHost, build_connections};
use crate::telemetry::metrics::{ConsumerLabel, Metrics};
use crate::telemetry::otlp::Tracer;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{at}: {message}")]
    Secret { at: String, message: String },
    #[error("{at}: {message}")]
    Source { at: String, message: String },
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    #[error("idempotency store: {0}")]
    Idempotency(#[from] IdempotencyError),
    #[error("{0}")]
    Plugin(#[from] PluginError),
    #[error("{message}")]
    Connection { message: String },
    #[error("{key}: cannot listen on `{addr}`: {source}{hint}", hint = if source.kind() == std::io::ErrorKind::AddrInUse { " (another switchyard, or another program, is using it)" } else { "" })]
    Bind {
        /// `server.listen` or `admin.listen`.
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Resolves every source secret into a key of the source's scheme and reads
/// every allowlist file; errors name `sources.<name>.<key>`.
fn resolve_sources(config: &Config) -> Result<HashMap<String, SourceEndpoint>, Vec<HubError>> {
    let mut endpoints = HashMap::new();
    let mut errors = Vec::new();
    for (name, source) in &config.sources {
        let mut keys = Vec::new();
        for (index, secret) in source.secrets.iter().enumerate() {
            let key = secret
                .resolve()
                .and_then(|value| SigningKey::new(source.kind, &value));
            match key {
                Ok(key) => keys.push(key),
                Err(message) => errors.push(HubError::Secret {
                    at: format!("sources.{name}.secrets[{index}]"),
                    message,
                }),
            }
        }
        let allowlist = Allowlist::load(&source.allow_ips, source.allow_ips_file.as_deref())
            .unwrap_or_else(|message| {
                errors.push(HubError::Source {
                    at: format!("sources.{name}.allow_ips_file"),
                    message,
                });
                None
            });
        endpoints.insert(
            source.path.clone(),
            SourceEndpoint {
                name: name.clone(),
                kind: source.kind,
                keys,
                tolerance: source.tolerance,
                allowlist,
                limits: Arc::new(Limits::new(LimitSettings {
                    max_concurrency: source.max_concurrency,
                    rate_limit: source.rate_limit,
                })),
            },
        );
    }
    if errors.is_empty() {
        Ok(endpoints)
    } else {
        Err(errors)
    }
}

fn plugin_host(config: &Config) -> Result<PluginHost, PluginError> {
    // (`check` loads plugins without a tracer; `prepare` adds the hub's.)
    let instances: usize = config
        .consumers
        .values()
        .map(|c| c.concurrency + c.replay_concurrency)
        .sum();
    let max_memory = config
        .consumers
        .values()
        .map(|c| c.limits.memory)
        .max()
        .unwrap_or(32 << 20);
    PluginHost::new(instances as u32, max_memory)
}

/// Builds the connections and loads every consumer's plugin; all failures
/// are reported, not just the first.
fn load_plugins(
    host: &PluginHost,
    config: &Config,
) -> Result<BTreeMap<String, Arc<ConsumerPlugin>>, Vec<HubError>> {
    let connections = build_connections(&config.connections).map_err(|errors| {
        errors
            .into_iter()
            .map(|message| HubError::Connection { message })
            .collect::<Vec<_>>()
    })?;
    let mut plugins = BTreeMap::new();
    let mut errors = Vec::new();
    for (name, consumer) in &config.consumers {
        match host.load(name, consumer, &connections) {
            Ok(plugin) => {
                plugins.insert(name.clone(), Arc::new(plugin));
            }
            Err(err) => errors.push(HubError::Plugin(err)),
        }
    }
    if errors.is_empty() {
        Ok(plugins)
    } else {
        Err(errors)
    }
}

/// How long a webhook body may take to start arriving before the minimum
/// body rate applies (a TCP round trip or two, with room to spare).
const BODY_GRACE: Duration = Duration::from_secs(2);

/// The shortest admin token `check` accepts.
const MIN_ADMIN_TOKEN_CHARS: usize = 16;

/// What `switchyard check` verifies beyond validation, found without
/// starting anything: secrets, plugins, reachability of Redis and NATS, an
/// admin token too short to resist guessing, connections whose base URL the
/// address policy refuses.
pub async fn check(config: &Config) -> Vec<String> {
    let mut problems: Vec<String> = Vec::new();
    if let Err(errors) = resolve_sources(config) {
        problems.extend(errors.iter().map(ToString::to_string));
    }
    if let Some(admin) = &config.admin {
        match admin.token.resolve() {
            Err(message) => problems.push(format!("admin.token: {message}")),
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
        let policy = crate::plugin::egress::AddressPolicy {
            allow_private: connection.allow_private,
        };
        if let Ok(base) = reqwest::Url::parse(&connection.base_url)
            && let Some(refused) = crate::plugin::egress::base_url_refusal(&base, policy)
        {
            problems.push(format!(
                "connections.{name}.base_url: every call would be refused: {refused}"
            ));
        }
    }
    match plugin_host(config) {
        Ok(host) => {
            if let Err(errors) = load_plugins(&host, config) {
                problems.extend(errors.iter().map(ToString::to_string));
            }
        }
        Err(err) => problems.push(err.to_string()),
    }
    if let BusEngine::Nats(nats) = &config.bus.engine {
        let reachable = match crate::bus::nats_settings(config, nats) {
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

/// Options a caller may set beyond the config (tests pin the clock or hand
/// over a listener bound to port 0).
#[derive(Default)]
pub struct StartOptions {
    pub listener: Option<TcpListener>,
    pub admin_listener: Option<TcpListener>,
    pub clock: Option<Clock>,
    /// Where the config was read from: enables reloads (SIGHUP, the admin
    /// call, and a watch on the file when `server.watch_config` is on).
    pub config_path: Option<PathBuf>,
    /// Start even if an embedded store that held data is missing or empty
    /// (`serve --accept-empty-store`).
    pub empty_store: EmptyStore,
}

/// A running hub.
pub struct RunningHub {
    pub addr: SocketAddr,
    bus: Arc<dyn Engine>,
    embedded: Option<Arc<EmbeddedBus>>,
    control: Arc<HubControl>,
    /// Where the admin API listens, when enabled.
    pub admin_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// A config made ready to run: secrets resolved, plugins compiled. Building
/// one touches nothing that runs, so a bad config changes nothing.
struct Prepared {
    config: Config,
    sources: HashMap<String, SourceEndpoint>,
    plugins: BTreeMap<String, Arc<ConsumerPlugin>>,
}

fn prepare(
    config: Config,
    tracer: &Tracer,
    pool: &Arc<GuestPool>,
) -> Result<Prepared, Vec<HubError>> {
    let sources = resolve_sources(&config);
    let plugins = plugin_host(&config)
        .map(|host| host.with_tracer(tracer.clone()).with_pool(Arc::clone(pool)))
        .map_err(|err| vec![HubError::from(err)])
        .and_then(|host| load_plugins(&host, &config));
    match (sources, plugins) {
        (Ok(sources), Ok(plugins)) => Ok(Prepared {
            config,
            sources,
            plugins,
        }),
        (sources, plugins) => Err(sources
            .err()
            .into_iter()
            .chain(plugins.err())
            .flatten()
            .collect()),
    }
}

/// What every generation of consumers shares; fixed for the process's life.
struct Shared {
    bus: Arc<dyn Bus>,
    idempotency: Arc<dyn IdempotencyStore>,
    key_prefix: String,
    metrics: Arc<Metrics>,
    control: Arc<HubControl>,
    ingest: Arc<Ingest>,
    tracer: Tracer,
    /// The plugin threads, shared by every generation of consumers.
    pool: Arc<GuestPool>,
}

/// One consumer's pull loops (live and replay lane) and the switch that
/// stops them.
struct RunningConsumer {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Shared {
    /// Starts a loop per consumer of `prepared`. A consumer that existed
    /// before keeps its counters and its paused state.
    fn start_consumers(&self, prepared: &Prepared) -> BTreeMap<String, RunningConsumer> {
        let config = &prepared.config;
        let previous = self.control.consumers();
        let mut controls = BTreeMap::new();
        let mut running = BTreeMap::new();
        for (name, consumer) in &config.consumers {
            let plugin = &prepared.plugins[name];
            let (stats, paused, health) = match previous.get(name) {
                Some(old) => {
                    // A new plugin version gets a fresh chance: a quarantine
                    // of the old one is lifted.
                    if old.plugin_digest != plugin.digest() && old.health.clear() {
                        old.paused.send_replace(false);
                        tracing::info!(
                            consumer = name.as_str(),
                            "new plugin version; quarantine lifted"
                        );
                    }
                    old.health.set_threshold(consumer.quarantine_after);
                    (
                        Arc::clone(&old.stats),
                        old.paused.clone(),
                        Arc::clone(&old.health),
                    )
                }
                None => {
                    let paused = watch::channel(false).0;
                    let health = PluginHealth::new(name, consumer.quarantine_after, paused.clone());
                    (Arc::new(ConsumerStats::default()), paused, Arc::new(health))
                }
            };
            let breaker = consumer
                .circuit_breaker
                .map(|settings| BreakerHandle::new(name, settings));
            let policies = StackParts {
                idempotency: Arc::clone(&self.idempotency),
                key_prefix: self.key_prefix.clone(),
                lease: config.idempotency.lease,
                ttl: config.idempotency.ttl,
                breaker: breaker.clone(),
                rate_limit: consumer
                    .rate_limit
                    .map(|limit| Arc::new(RateLimiter::new(limit))),
                rate_limit_waits: self
                    .metrics
                    .rate_limit_waits
                    .get_or_create(&ConsumerLabel {
                        consumer: name.clone(),
                    })
                    .clone(),
                metrics: Arc::clone(&self.metrics),
            };
            let service = consumer_stack(
                policies,
                plugin_call(
                    Arc::clone(plugin),
                    Arc::clone(&self.metrics),
                    Arc::clone(&stats),
                    Arc::clone(&health),
                ),
            );
            let (stop, stop_rx) = watch::channel(false);
            let lanes = [
                (Lane::Live, consumer.concurrency),
                (Lane::Replay, consumer.replay_concurrency),
            ];
            let tasks = lanes
                .into_iter()
                .map(|(lane, concurrency)| {
                    let consumer_loop = ConsumerLoop {
                        name: name.clone(),
                        lane,
                        bus: Arc::clone(&self.bus),
                        service: service.clone(),
                        retry: consumer.retry,
                        concurrency,
                        stats: Arc::clone(&stats),
                        paused: paused.subscribe(),
                        metrics: Arc::clone(&self.metrics),
                        tracer: self.tracer.clone(),
                        visibility_timeout: config.bus.visibility_timeout,
                    };
                    tokio::spawn(consumer_loop.run(stop_rx.clone(), config.server.shutdown_grace))
                })
                .collect();
            running.insert(name.clone(), RunningConsumer { stop, tasks });
            controls.insert(
                name.clone(),
                Arc::new(ConsumerControl {
                    stats,
                    breaker,
                    paused,
                    concurrency: consumer.concurrency,
                    health,
                    plugin_digest: plugin.digest().to_owned(),
                    routes: Subscription::of(config, name).filters,
                }),
            );
        }
        self.control.set_consumers(controls);
        running
    }
}

/// Stops loops; each lets its in-flight deliveries finish (within the grace
/// period) on the plugin version it started them with.
async fn stop_consumers(running: BTreeMap<String, RunningConsumer>) {
    for consumer in running.values() {
        let _ = consumer.stop.send(true);
    }
    for (name, consumer) in running {
        for task in consumer.tasks {
            if let Err(err) = task.await {
                tracing::error!(consumer = %name, error = %err, "consumer loop ended abnormally");
            }
        }
    }
}

/// The OTLP exporter, when an endpoint is configured (the environment's
/// `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_SERVICE_NAME` first).
fn tracer(config: &Config) -> Tracer {
    let from_env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let endpoint =
        from_env("OTEL_EXPORTER_OTLP_ENDPOINT").or(config.telemetry.otlp_endpoint.clone());
    let service = from_env("OTEL_SERVICE_NAME").unwrap_or(config.telemetry.service_name.clone());
    match endpoint {
        Some(endpoint) => {
            tracing::info!(endpoint = %endpoint, service = %service, "exporting traces over OTLP");
            Tracer::start(&endpoint, &service)
        }
        None => Tracer::default(),
    }
}

/// Settings a running hub cannot change: listeners, the bus, the
/// idempotency store. Returns the tables that differ.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut changed = Vec::new();
    let differ =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    if old.server.listen != new.server.listen {
        changed.push("server.listen".to_owned());
    }
    let server = |config: &Config| {
        let s = &config.server;
        [
            ("max_body", format!("{:?}", s.max_body)),
            (
                "header_read_timeout",
                format!("{:?}", s.header_read_timeout),
            ),
            ("body_read_timeout", format!("{:?}", s.body_read_timeout)),
            ("trusted_proxies", format!("{:?}", s.trusted_proxies)),
            ("max_concurrency", format!("{:?}", s.max_concurrency)),
            ("rate_limit", format!("{:?}", s.rate_limit)),
        ]
    };
    for ((key, a), (_, b)) in server(old).into_iter().zip(server(new)) {
        if a != b {
            changed.push(format!("server.{key}"));
        }
    }
    for (table, a, b) in [
        (
            "admin",
            &old.admin as &dyn std::fmt::Debug,
            &new.admin as &dyn std::fmt::Debug,
        ),
        ("bus", &old.bus, &new.bus),
        ("idempotency", &old.idempotency, &new.idempotency),
        ("telemetry", &old.telemetry, &new.telemetry),
    ] {
        if differ(a, b) {
            changed.push(table.to_owned());
        }
    }
    changed
}

/// What the anomaly watch runs with under `config`: its settings, the
/// source names and the webhook connection, built with its credentials.
fn alert_settings(config: &Config) -> Result<AlertSettings, HubError> {
    let webhook = match &config.alerts.webhook {
        None => None,
        Some(name) => {
            let connection = config
                .connections
                .get(name)
                .ok_or_else(|| HubError::Connection {
                    message: format!("alerts.webhook: unknown connection `{name}`"),
                })?;
            let built =
                Connection::build(name, connection).map_err(|message| HubError::Connection {
                    message: format!("alerts.webhook: {message}"),
                })?;
            Some(Arc::new(built))
        }
    };
    Ok(AlertSettings {
        config: config.alerts.clone(),
        sources: config.sources.keys().cloned().collect(),
        webhook,
    })
}

/// Owns the running consumer generation and performs reloads one at a time.
struct Supervisor {
    shared: Shared,
    /// The anomaly watch's settings; a reload sends the new ones.
    alerts: watch::Sender<AlertSettings>,
    config: Config,
    path: Option<PathBuf>,
    running: BTreeMap<String, RunningConsumer>,
    /// Hash of the file as last seen by the watch (applied or refused).
    seen: Option<u64>,
}

fn file_hash(path: &Path) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let bytes = std::fs::read(path).ok()?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    Some(hasher.finish())
}

impl Supervisor {
    async fn run(
        mut self,
        mut requests: tokio::sync::mpsc::Receiver<ReloadRequest>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut watch_tick = tokio::time::interval(Duration::from_secs(1));
        watch_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                request = requests.recv() => {
                    let Some(reply) = request else { continue };
                    let outcome = self.reload().await;
                    let _ = reply.send(outcome);
                }
                _ = watch_tick.tick(), if self.config.server.watch_config && self.path.is_some() => {
                    let now = self.path.as_deref().and_then(file_hash);
                    if now.is_some() && now != self.seen {
                        let file = self.path.as_deref().map(Path::display);
                        tracing::info!(config = %file.expect("watched only with a path"), "the config file changed; reloading");
                        let _ = self.reload().await;
                    }
                }
                _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => break,
            }
        }
        stop_consumers(std::mem::take(&mut self.running)).await;
    }

    /// Reads the file again and switches to it, or changes nothing.
    async fn reload(&mut self) -> Result<ReloadReport, Vec<String>> {
        let Some(path) = self.path.clone() else {
            return Err(vec![
                "this hub was not started from a file; nothing to reload".into(),
            ]);
        };
        self.seen = file_hash(&path);
        let outcome = self.switch_to(&path).await;
        match &outcome {
            Ok(report) => tracing::info!(
                config = %path.display(),
                added = ?report.added,
                removed = ?report.removed,
                "config reloaded"
            ),
            Err(problems) => tracing::error!(
                problems = %problems.join("; "),
                "config reload refused; the running config stays"
            ),
        }
        outcome
    }

    async fn switch_to(&mut self, path: &Path) -> Result<ReloadReport, Vec<String>> {
        let config = Config::load(path).map_err(|err| {
            err.to_string()
                .lines()
                .map(|line| line.trim_start_matches("  - ").to_owned())
                .filter(|line| !line.is_empty())
                .collect::<Vec<_>>()
        })?;
        let fixed = restart_only_changes(&self.config, &config);
        if !fixed.is_empty() {
            return Err(fixed
                .into_iter()
                .map(|table| format!("{table}: changed, but takes a restart to apply"))
                .collect());
        }
        let to_strings = |errors: Vec<HubError>| -> Vec<String> {
            errors.iter().map(ToString::to_string).collect()
        };
        let alerts = alert_settings(&config).map_err(|err| vec![err.to_string()])?;
        let mut prepared =
            prepare(config, &self.shared.tracer, &self.shared.pool).map_err(to_strings)?;
        self.shared
            .bus
            .resubscribe(&Subscriber::from_config(&prepared.config))
            .await
            .map_err(|err| vec![format!("bus: {err}")])?;
        self.shared
            .ingest
            .set_sources(std::mem::take(&mut prepared.sources));
        let old: Vec<String> = self.running.keys().cloned().collect();
        stop_consumers(std::mem::take(&mut self.running)).await;
        self.running = self.shared.start_consumers(&prepared);
        let new: Vec<String> = self.running.keys().cloned().collect();
        self.alerts.send_replace(alerts);
        self.config = prepared.config;
        Ok(ReloadReport {
            added: new.iter().filter(|n| !old.contains(n)).cloned().collect(),
            removed: old.iter().filter(|n| !new.contains(n)).cloned().collect(),
            consumers: new,
        })
    }
}

/// What this hub runs, as the start-up log says it: the config file, each
/// source and consumer, the bus and the idempotency store (addresses without
/// their credentials), so an operator reading the log knows what started.
fn log_start_summary(config: &Config, config_path: Option<&Path>, plugin_threads: usize) {
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

/// Starts every stage; returns once the listener accepts connections.
pub async fn start(config: Config, options: StartOptions) -> Result<RunningHub, Vec<HubError>> {
    let config_file = options.config_path.clone();
    let tracer = tracer(&config);
    let alerts = alert_settings(&config).map_err(|err| vec![err])?;
    // Apart from the runtime that answers webhooks: plugin code runs here.
    let threads = config
        .server
        .plugin_threads
        .unwrap_or_else(GuestPool::default_threads);
    let pool = Arc::new(
        GuestPool::new(threads)
            .map_err(|err| vec![HubError::from(PluginError::Pool(err.to_string()))])?,
    );
    let mut prepared = prepare(config, &tracer, &pool)?;
    let config = &prepared.config;
    let (bus, embedded) = crate::bus::open(config, options.empty_store)
        .await
        .map_err(|err| vec![err.into()])?;
    let (idempotency, key_prefix) = crate::dispatch::idempotency::open(config, options.empty_store)
        .await
        .map_err(|err| vec![err.into()])?;

    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let metrics = Arc::new(Metrics::new());
    tasks.spawn(janitor(
        Arc::clone(&bus) as Arc<dyn BusAdmin>,
        Arc::clone(&idempotency),
        shutdown_rx.clone(),
    ));

    let listener = match options.listener {
        Some(listener) => listener,
        None => TcpListener::bind(config.server.listen)
            .await
            .map_err(|source| {
                vec![HubError::Bind {
                    key: "server.listen",
                    addr: config.server.listen,
                    source,
                }]
            })?,
    };
    let addr = listener.local_addr().map_err(|source| {
        vec![HubError::Bind {
            key: "server.listen",
            addr: config.server.listen,
            source,
        }]
    })?;
    let readiness: crate::ingest::ReadinessCheck = {
        let bus = Arc::clone(&bus);
        let idempotency = Arc::clone(&idempotency);
        Arc::new(move || {
            let bus = Arc::clone(&bus);
            let idempotency = Arc::clone(&idempotency);
            // `/readyz` is public: it names the part that is down; the
            // error itself (paths, addresses) goes to the log only.
            Box::pin(async move {
                bus.ping().await.map_err(|err| {
                    tracing::warn!(error = %err, "not ready: the bus does not answer");
                    "bus unavailable".to_owned()
                })?;
                idempotency.ping().await.map_err(|err| {
                    tracing::warn!(error = %err, "not ready: the idempotency store does not answer");
                    "idempotency store unavailable".to_owned()
                })
            })
        })
    };
    let ingest = Arc::new(Ingest::new(
        readiness,
        Arc::clone(&metrics),
        std::mem::take(&mut prepared.sources),
        Arc::clone(&bus) as Arc<dyn Bus>,
        EdgeSettings {
            max_body: config.server.max_body,
            body_read_timeout: config.server.body_read_timeout,
            body_pace: crate::ingest::edge::BodyPace {
                grace: BODY_GRACE,
                bytes_per_second: config.server.min_body_rate,
            },
            body_reads: crate::ingest::edge::BodyReads::new(config.server.max_bodies_per_client),
            trusted_proxies: config.server.trusted_proxies.clone(),
            limits: Limits::new(LimitSettings {
                max_concurrency: Some(config.server.max_concurrency),
                rate_limit: config.server.rate_limit,
            }),
        },
        options.clock.unwrap_or_else(system_clock),
        tracer.clone(),
    ));
    let (reloads, reload_requests) = tokio::sync::mpsc::channel(4);
    let control = Arc::new(HubControl::new(
        Arc::clone(&bus) as Arc<dyn BusAdmin>,
        Arc::clone(&metrics),
        reloads,
        Arc::clone(&pool),
    ));
    let (alerts, alerts_rx) = watch::channel(alerts);
    tasks.spawn(crate::admin::alerts::run(
        Arc::clone(&control),
        Arc::clone(&metrics),
        alerts_rx,
        shutdown_rx.clone(),
    ));
    let shared = Shared {
        bus: Arc::clone(&bus) as Arc<dyn Bus>,
        idempotency,
        key_prefix,
        metrics,
        control: Arc::clone(&control),
        ingest: Arc::clone(&ingest),
        tracer,
        pool,
    };
    let running = shared.start_consumers(&prepared);
    let supervisor = Supervisor {
        shared,
        alerts,
        config: prepared.config.clone(),
        seen: options.config_path.as_deref().and_then(file_hash),
        path: options.config_path,
        running,
    };
    tasks.spawn(supervisor.run(reload_requests, shutdown_rx.clone()));

    let mut stop_serving = shutdown_rx.clone();
    let header_read_timeout = prepared.config.server.header_read_timeout;
    tasks.spawn(crate::ingest::server::serve(
        listener,
        warp::service(crate::ingest::routes(ingest)),
        header_read_timeout,
        async move {
            let _ = stop_serving.wait_for(|stop| *stop).await;
        },
    ));
    let config = &prepared.config;
    let admin_addr = match &config.admin {
        None => None,
        Some(admin) => {
            let token = admin.token.resolve().map_err(|message| {
                vec![HubError::Secret {
                    at: "admin.token".into(),
                    message,
                }]
            })?;
            let listener = match options.admin_listener {
                Some(listener) => listener,
                None => TcpListener::bind(admin.listen).await.map_err(|source| {
                    vec![HubError::Bind {
                        key: "admin.listen",
                        addr: admin.listen,
                        source,
                    }]
                })?,
            };
            let admin_addr = listener.local_addr().map_err(|source| {
                vec![HubError::Bind {
                    key: "admin.listen",
                    addr: admin.listen,
                    source,
                }]
            })?;
            let mut stop_admin = shutdown_rx.clone();
            tasks.spawn(crate::ingest::server::serve(
                listener,
                warp::service(crate::admin::api::routes(Arc::clone(&control), token)),
                header_read_timeout,
                async move {
                    let _ = stop_admin.wait_for(|stop| *stop).await;
                },
            ));
            tracing::info!(addr = %admin_addr, "admin api listening");
            Some(admin_addr)
        }
    };
    log_start_summary(config, config_file.as_deref(), threads);
    tracing::info!(%addr, consumers = config.consumers.len(), "switchyard listening");
    Ok(RunningHub {
        addr,
        bus,
        embedded,
        control,
        admin_addr,
        shutdown,
        tasks,
    })
}

/// Most expired idempotency keys one janitor transaction drops.
const JANITOR_BATCH: usize = 10_000;

/// Periodic housekeeping: the bus engine's own (dedup ids past the window,
/// events past the retention) and expired idempotency keys.
async fn janitor(
    bus: Arc<dyn BusAdmin>,
    idempotency: Arc<dyn IdempotencyStore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        match bus.housekeep().await {
            Ok(done) if done == Housekeeping::default() => {}
            Ok(done) => tracing::debug!(
                dedup_expired = done.dedup_expired,
                compacted = done.compacted,
                "bus housekeeping"
            ),
            Err(err) => tracing::warn!(error = %err, "bus housekeeping failed"),
        }
        match in_batches(JANITOR_BATCH, || idempotency.expire(JANITOR_BATCH)).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(expired = n, "dropped expired idempotency keys"),
            Err(err) => tracing::warn!(error = %err, "idempotency key expiry failed"),
        }
    }
}

impl RunningHub {
    pub fn bus(&self) -> Arc<dyn Engine> {
        Arc::clone(&self.bus)
    }

    /// The embedded engine, if that is the one running (for its
    /// fault-injection seam in tests).
    pub fn embedded_bus(&self) -> Option<&EmbeddedBus> {
        self.embedded.as_deref()
    }

    /// Status of every consumer, in name order.
    pub async fn status(&self) -> Result<Vec<ConsumerStatus>, BusError> {
        self.control.status().await
    }

    /// Pause/resume, queues and status: what the admin API serves.
    pub fn control(&self) -> Arc<HubControl> {
        Arc::clone(&self.control)
    }

    /// Stops taking requests, lets in-flight deliveries finish within the
    /// grace period, and returns when everything has stopped.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
    }

    /// Resolves when the hub is asked to stop (SIGINT/SIGTERM in `serve`).
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) {
        signal.await;
        tracing::info!("shutting down");
        self.shutdown().await;
    }
}
