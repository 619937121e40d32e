//! The hub: assembles the stages from a validated [`Config`] and runs them.
//!
//! Owns start-up order (secrets → bus → idempotency store → plugins →
//! consumer loops → listener), the janitor, and graceful shutdown (stop
//! taking requests, let in-flight deliveries finish within the grace period,
//! leave the rest in the bus). Also the IO checks of `switchyard check`.

use crate::admin::{ConsumerControl, ConsumerStatus, HubControl};
use crate::bus::embedded::{EmbeddedBus, EmbeddedSettings};
use crate::bus::nats::{NatsBus, NatsSettings, NatsSubscriber};
use crate::bus::{Bus, BusError, Subscription};
use crate::config::{BusEngine, Config, IdempotencyBackend};
use crate::dispatch::idempotency::{EmbeddedStore, IdempotencyError, IdempotencyStore, RedisStore};
use crate::dispatch::layers::BreakerHandle;
use crate::dispatch::{ConsumerLoop, ConsumerStats, StackParts, consumer_stack, plugin_call};
use crate::ingest::{Clock, Ingest, SourceEndpoint, system_clock};
use crate::limiter::RateLimiter;
use crate::plugin::{ConsumerPlugin, PluginError, PluginHost, build_connections};
use crate::telemetry::metrics::Metrics;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{at}: {message}")]
    Secret { at: String, message: String },
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    #[error("idempotency store: {0}")]
    Idempotency(#[from] IdempotencyError),
    #[error("{0}")]
    Plugin(#[from] PluginError),
    #[error("{message}")]
    Connection { message: String },
    #[error("cannot listen on `{addr}`: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Resolves every source secret; errors name `sources.<name>.secrets[i]`.
fn resolve_sources(config: &Config) -> Result<HashMap<String, SourceEndpoint>, Vec<HubError>> {
    let mut endpoints = HashMap::new();
    let mut errors = Vec::new();
    for (name, source) in &config.sources {
        let mut secrets = Vec::new();
        for (index, secret) in source.secrets.iter().enumerate() {
            match secret.resolve() {
                Ok(value) => secrets.push(value),
                Err(message) => errors.push(HubError::Secret {
                    at: format!("sources.{name}.secrets[{index}]"),
                    message,
                }),
            }
        }
        endpoints.insert(
            source.path.clone(),
            SourceEndpoint {
                name: name.clone(),
                kind: source.kind,
                secrets,
                tolerance: source.tolerance,
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
    let instances: usize = config.consumers.values().map(|c| c.concurrency).sum();
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

async fn idempotency_store(
    config: &Config,
) -> Result<(Arc<dyn IdempotencyStore>, String), IdempotencyError> {
    Ok(match &config.idempotency.backend {
        IdempotencyBackend::Embedded { path } => {
            (Arc::new(EmbeddedStore::open(path)?), String::new())
        }
        IdempotencyBackend::Redis { url, key_prefix } => (
            Arc::new(RedisStore::connect(url).await?),
            key_prefix.clone(),
        ),
    })
}

/// The JetStream settings with their secrets resolved.
fn nats_settings(
    config: &Config,
    nats: &crate::config::NatsConfig,
) -> Result<NatsSettings, BusError> {
    let secret = |secret: &Option<crate::config::SecretRef>, at: &str| {
        secret
            .as_ref()
            .map(|secret| {
                secret
                    .resolve()
                    .map_err(|message| BusError::Unavailable(format!("{at}: {message}")))
            })
            .transpose()
    };
    Ok(NatsSettings {
        urls: nats.urls.clone(),
        stream: nats.stream.clone(),
        subject_prefix: nats.subject_prefix.clone(),
        replicas: nats.replicas,
        credentials: secret(&nats.credentials, "bus.credentials")?,
        token: secret(&nats.token, "bus.token")?,
        ack_timeout: nats.ack_timeout,
        visibility_timeout: config.bus.visibility_timeout,
        dedup_window: config.bus.dedup_window,
        retention: config.bus.retention,
    })
}

/// The bus the config asks for. The embedded engine is also handed back on
/// its own: the janitor compacts it, and tests reach its fault seam.
async fn open_bus(config: &Config) -> Result<(Arc<dyn Bus>, Option<Arc<EmbeddedBus>>), BusError> {
    let bus = &config.bus;
    let subscriptions = Subscription::from_config(config);
    match &bus.engine {
        BusEngine::Embedded { path } => {
            let embedded = Arc::new(EmbeddedBus::open(
                path,
                subscriptions,
                EmbeddedSettings {
                    visibility_timeout: bus.visibility_timeout,
                    dedup_window: bus.dedup_window,
                    retention: bus.retention,
                },
            )?);
            Ok((Arc::clone(&embedded) as Arc<dyn Bus>, Some(embedded)))
        }
        BusEngine::Nats(nats) => {
            let settings = nats_settings(config, nats)?;
            let subscribers = subscriptions
                .into_iter()
                .map(|subscription| NatsSubscriber {
                    concurrency: config.consumers[&subscription.consumer].concurrency,
                    subscription,
                })
                .collect();
            Ok((
                Arc::new(NatsBus::connect(settings, subscribers).await?) as Arc<dyn Bus>,
                None,
            ))
        }
    }
}

/// Everything `switchyard check` verifies beyond validation: secrets
/// resolvable, plugins loadable and of the right type, Redis reachable.
pub async fn check(config: &Config) -> Vec<String> {
    let mut problems: Vec<String> = Vec::new();
    if let Err(errors) = resolve_sources(config) {
        problems.extend(errors.iter().map(ToString::to_string));
    }
    if let Some(admin) = &config.admin
        && let Err(message) = admin.token.resolve()
    {
        problems.push(format!("admin.token: {message}"));
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
        let reachable = match nats_settings(config, nats) {
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
}

/// A running hub.
pub struct RunningHub {
    pub addr: SocketAddr,
    bus: Arc<dyn Bus>,
    embedded: Option<Arc<EmbeddedBus>>,
    control: Arc<HubControl>,
    /// Where the admin API listens, when enabled.
    pub admin_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// Starts every stage; returns once the listener accepts connections.
pub async fn start(config: Config, options: StartOptions) -> Result<RunningHub, Vec<HubError>> {
    let sources = resolve_sources(&config)?;
    let (bus, embedded) = open_bus(&config).await.map_err(|err| vec![err.into()])?;
    let (idempotency, key_prefix) = idempotency_store(&config)
        .await
        .map_err(|err| vec![err.into()])?;
    let host = plugin_host(&config).map_err(|err| vec![err.into()])?;
    let plugins = load_plugins(&host, &config)?;

    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut controls = BTreeMap::new();
    let metrics = Arc::new(Metrics::new());
    let grace = config.server.shutdown_grace;
    for (name, consumer) in &config.consumers {
        let consumer_stats = Arc::new(ConsumerStats::default());
        let breaker = consumer
            .circuit_breaker
            .map(|settings| BreakerHandle::new(name, settings));
        let (paused, paused_rx) = watch::channel(false);
        controls.insert(
            name.clone(),
            ConsumerControl {
                stats: Arc::clone(&consumer_stats),
                breaker: breaker.clone(),
                paused,
                concurrency: consumer.concurrency,
            },
        );
        let policies = StackParts {
            idempotency: Arc::clone(&idempotency),
            key_prefix: key_prefix.clone(),
            lease: config.idempotency.lease,
            ttl: config.idempotency.ttl,
            breaker,
            rate_limit: consumer
                .rate_limit
                .map(|limit| Arc::new(RateLimiter::new(limit))),
        };
        let service = consumer_stack(
            policies,
            plugin_call(Arc::clone(&plugins[name]), Arc::clone(&metrics)),
        );
        let consumer_loop = ConsumerLoop {
            name: name.clone(),
            bus: Arc::clone(&bus),
            service,
            retry: consumer.retry,
            concurrency: consumer.concurrency,
            stats: consumer_stats,
            paused: paused_rx,
            metrics: Arc::clone(&metrics),
        };
        tasks.spawn(consumer_loop.run(shutdown_rx.clone(), grace));
    }
    tasks.spawn(janitor(
        embedded.clone(),
        Arc::clone(&idempotency),
        shutdown_rx.clone(),
    ));

    let listener = match options.listener {
        Some(listener) => listener,
        None => TcpListener::bind(config.server.listen)
            .await
            .map_err(|source| {
                vec![HubError::Bind {
                    addr: config.server.listen,
                    source,
                }]
            })?,
    };
    let addr = listener.local_addr().map_err(|source| {
        vec![HubError::Bind {
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
            Box::pin(async move {
                bus.ping().await.map_err(|err| err.to_string())?;
                idempotency.ping().await.map_err(|err| err.to_string())
            })
        })
    };
    let ingest = Arc::new(Ingest {
        readiness,
        metrics: Arc::clone(&metrics),
        sources,
        bus: Arc::clone(&bus),
        max_body: config.server.max_body,
        clock: options.clock.unwrap_or_else(system_clock),
    });
    let mut stop_serving = shutdown_rx.clone();
    let server = warp::serve(crate::ingest::routes(ingest))
        .incoming(listener)
        .graceful(async move {
            let _ = stop_serving.wait_for(|stop| *stop).await;
        })
        .run();
    tasks.spawn(server);
    let control = Arc::new(HubControl {
        bus: Arc::clone(&bus),
        consumers: controls,
        metrics,
    });
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
                        addr: admin.listen,
                        source,
                    }]
                })?,
            };
            let admin_addr = listener.local_addr().map_err(|source| {
                vec![HubError::Bind {
                    addr: admin.listen,
                    source,
                }]
            })?;
            let mut stop_admin = shutdown_rx.clone();
            tasks.spawn(
                warp::serve(crate::admin::api::routes(Arc::clone(&control), token))
                    .incoming(listener)
                    .graceful(async move {
                        let _ = stop_admin.wait_for(|stop| *stop).await;
                    })
                    .run(),
            );
            tracing::info!(addr = %admin_addr, "admin api listening");
            Some(admin_addr)
        }
    };
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

/// Periodic housekeeping: forget ingest dedup ids older than the window and
/// delete settled events older than the retention and expired idempotency keys.
async fn janitor(
    embedded: Option<Arc<EmbeddedBus>>,
    idempotency: Arc<dyn IdempotencyStore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        // JetStream keeps its own dedup window and max age.
        if let Some(bus) = &embedded {
            match bus.expire_dedup().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(expired = n, "forgot old dedup ids"),
                Err(err) => tracing::warn!(error = %err, "dedup expiry failed"),
            }
            match bus.compact(10_000).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(deleted = n, "deleted events past retention"),
                Err(err) => tracing::warn!(error = %err, "log compaction failed"),
            }
        }
        match idempotency.expire(10_000).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(expired = n, "dropped expired idempotency keys"),
            Err(err) => tracing::warn!(error = %err, "idempotency key expiry failed"),
        }
    }
}

impl RunningHub {
    pub fn bus(&self) -> Arc<dyn Bus> {
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
