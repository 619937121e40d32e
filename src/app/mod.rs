//! The hub: wires the stages together from a validated [`Config`] and runs
//! them. Each stage builds itself from its config (`ingest::endpoints`,
//! `PluginHost::load_all`, `bus::open`, `idempotency::open`,
//! `dispatch::start::start_consumer`, `AlertSettings::from_config`); this
//! folder only orders them and hands one to another.
//!
//! Owns start-up order (secrets and plugins → bus → idempotency store →
//! consumer loops → listeners), the reload supervisor ([`reload`]), the
//! janitor, graceful shutdown (stop taking requests, let in-flight
//! deliveries finish within the grace period, leave the rest in the bus),
//! and the IO checks of `switchyard check` ([`check`]).

mod check;
mod reload;
mod summary;

pub use check::check;

use crate::admin::{ConsumerControl, ConsumerStatus, HubControl};
use crate::alerts::{AlertSettings, ConsumerProbe, WebhookError};
use crate::bus::embedded::EmbeddedBus;
use crate::bus::{Bus, BusAdmin, BusError, Engine, Housekeeping, Subscription};
use crate::config::Config;
use crate::dispatch::idempotency::{IdempotencyError, IdempotencyStore};
use crate::dispatch::start::{ConsumerState, RunningConsumer, Shared, start_consumer};
use crate::durable::{EmptyStore, in_batches};
use crate::ingest::{Clock, EdgeSettings, Ingest, SourceEndpoint, SourceError, system_clock};
use crate::plugin::pool::GuestPool;
use crate::plugin::{ConsumerPlugin, PluginError, PluginHost};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::otlp::Tracer;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use summary::log_start_summary;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("{at}: {source}")]
    Secret {
        at: String,
        source: crate::config::SecretError,
    },
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    #[error("idempotency store: {0}")]
    Idempotency(#[from] IdempotencyError),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(transparent)]
    Alerts(#[from] WebhookError),
    #[error("{key}: cannot listen on `{addr}`: {source}{hint}", hint = if source.kind() == std::io::ErrorKind::AddrInUse { " (another switchyard, or another program, is using it)" } else { "" })]
    Bind {
        /// `server.listen` or `admin.listen`.
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
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
    let sources = crate::ingest::endpoints(&config);
    // (`check` loads plugins without a tracer or the hub's threads.)
    let plugins = PluginHost::for_config(&config)
        .map(|host| host.with_tracer(tracer.clone()).with_pool(Arc::clone(pool)))
        .map_err(|err| vec![err])
        .and_then(|host| host.load_all(&config));
    match (sources, plugins) {
        (Ok(sources), Ok(plugins)) => Ok(Prepared {
            config,
            sources,
            plugins,
        }),
        (sources, plugins) => Err((sources.err().into_iter().flatten().map(HubError::from))
            .chain(plugins.err().into_iter().flatten().map(HubError::from))
            .collect()),
    }
}

/// What every generation of consumers is wired to; fixed for the
/// process's life.
struct Wiring {
    consumers: Shared,
    control: Arc<HubControl>,
    ingest: Arc<Ingest>,
    tracer: Tracer,
    /// The plugin threads, shared by every generation of consumers.
    pool: Arc<GuestPool>,
}

impl Wiring {
    /// Starts every consumer of `prepared` and hands the admin side their
    /// controls. A consumer that existed before keeps its counters and its
    /// paused state; a new plugin version lifts its quarantine.
    fn start_consumers(&self, prepared: &Prepared) -> BTreeMap<String, RunningConsumer> {
        let config = &prepared.config;
        let previous = self.control.consumers();
        let mut controls = BTreeMap::new();
        let mut running = BTreeMap::new();
        for (name, consumer) in &config.consumers {
            let plugin = &prepared.plugins[name];
            let state = match previous.get(name) {
                Some(old) => {
                    if old.plugin_digest != plugin.digest() && old.health.clear() {
                        old.paused.send_replace(false);
                        tracing::info!(
                            consumer = name.as_str(),
                            "new plugin version; quarantine lifted"
                        );
                    }
                    old.health.set_threshold(consumer.quarantine_after);
                    ConsumerState {
                        stats: Arc::clone(&old.stats),
                        paused: old.paused.clone(),
                        health: Arc::clone(&old.health),
                    }
                }
                None => ConsumerState::new(name, consumer.quarantine_after),
            };
            let started = start_consumer(&self.consumers, config, name, Arc::clone(plugin), &state);
            controls.insert(
                name.clone(),
                Arc::new(ConsumerControl {
                    stats: state.stats,
                    breaker: started.breaker.clone(),
                    paused: state.paused,
                    concurrency: consumer.concurrency,
                    health: state.health,
                    plugin_digest: plugin.digest().to_owned(),
                    routes: Subscription::of(config, name).filters,
                }),
            );
            running.insert(name.clone(), started);
        }
        self.control.set_consumers(controls);
        running
    }
}

/// `/readyz`: the bus and the idempotency store answer. It is public, so it
/// names the part that is down; the error itself (paths, addresses) goes to
/// the log only.
fn readiness(
    bus: Arc<dyn Engine>,
    idempotency: Arc<dyn IdempotencyStore>,
) -> crate::ingest::ReadinessCheck {
    use crate::ingest::NotReady;
    Arc::new(move || {
        let bus = Arc::clone(&bus);
        let idempotency = Arc::clone(&idempotency);
        Box::pin(async move {
            bus.ping().await.map_err(|err| {
                tracing::warn!(error = %err, "not ready: the bus does not answer");
                NotReady::Bus
            })?;
            idempotency.ping().await.map_err(|err| {
                tracing::warn!(error = %err, "not ready: the idempotency store does not answer");
                NotReady::IdempotencyStore
            })
        })
    })
}

/// Binds `addr` unless the caller handed over a listener; errors name `key`.
async fn bind(
    given: Option<TcpListener>,
    key: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), HubError> {
    let bind_error = |source| HubError::Bind { key, addr, source };
    let listener = match given {
        Some(listener) => listener,
        None => TcpListener::bind(addr).await.map_err(bind_error)?,
    };
    let local = listener.local_addr().map_err(bind_error)?;
    Ok((listener, local))
}

/// Starts every stage; returns once the listener accepts connections.
pub async fn start(config: Config, options: StartOptions) -> Result<RunningHub, Vec<HubError>> {
    let tracer = Tracer::from_config(&config.telemetry);
    let alerts = AlertSettings::from_config(&config).map_err(|err| vec![err.into()])?;
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
    let admin_token = match &config.admin {
        None => None,
        Some(admin) => Some(admin.token.resolve().map_err(|source| {
            vec![HubError::Secret {
                at: "admin.token".into(),
                source,
            }]
        })?),
    };
    let (bus, embedded) = crate::bus::open(config, options.empty_store)
        .await
        .map_err(|err| vec![err.into()])?;
    let (idempotency, key_prefix) = crate::dispatch::idempotency::open(config, options.empty_store)
        .await
        .map_err(|err| vec![err.into()])?;
    let (listener, addr) = bind(options.listener, "server.listen", config.server.listen)
        .await
        .map_err(|err| vec![err])?;
    let admin = match (&config.admin, admin_token) {
        (Some(admin), Some(token)) => {
            let (listener, addr) = bind(options.admin_listener, "admin.listen", admin.listen)
                .await
                .map_err(|err| vec![err])?;
            Some((listener, addr, token))
        }
        _ => None,
    };

    let (shutdown, shutdown_rx) = watch::channel(false);
    let stopped = |mut shutdown: watch::Receiver<bool>| async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    let mut tasks = JoinSet::new();
    let metrics = Arc::new(Metrics::new());
    tasks.spawn(janitor(
        Arc::clone(&bus) as Arc<dyn BusAdmin>,
        Arc::clone(&idempotency),
        shutdown_rx.clone(),
    ));
    let ingest = Arc::new(Ingest::new(
        readiness(Arc::clone(&bus), Arc::clone(&idempotency)),
        Arc::clone(&metrics),
        std::mem::take(&mut prepared.sources),
        Arc::clone(&bus) as Arc<dyn Bus>,
        EdgeSettings::from_config(&config.server),
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
    let probe: ConsumerProbe = {
        let control = Arc::clone(&control);
        Arc::new(move || {
            let control = Arc::clone(&control);
            Box::pin(async move { control.consumer_samples().await })
        })
    };
    tasks.spawn(crate::alerts::run(
        probe,
        Arc::clone(&metrics),
        control.alert_book(),
        alerts_rx,
        shutdown_rx.clone(),
    ));
    let wiring = Wiring {
        consumers: Shared {
            bus: Arc::clone(&bus) as Arc<dyn Bus>,
            idempotency,
            key_prefix,
            metrics,
            tracer: tracer.clone(),
        },
        control: Arc::clone(&control),
        ingest: Arc::clone(&ingest),
        tracer,
        pool,
    };
    let running = wiring.start_consumers(&prepared);
    let config = &prepared.config;
    let supervisor = reload::Supervisor::new(
        wiring,
        alerts,
        config.clone(),
        options.config_path.clone(),
        running,
    );
    tasks.spawn(supervisor.run(reload_requests, shutdown_rx.clone()));

    let header_read_timeout = config.server.header_read_timeout;
    tasks.spawn(crate::ingest::server::serve(
        listener,
        warp::service(crate::ingest::routes(ingest)),
        header_read_timeout,
        stopped(shutdown_rx.clone()),
    ));
    let admin_addr = admin.map(|(listener, admin_addr, token)| {
        tasks.spawn(crate::ingest::server::serve(
            listener,
            warp::service(crate::admin::api::routes(Arc::clone(&control), token)),
            header_read_timeout,
            stopped(shutdown_rx.clone()),
        ));
        tracing::info!(addr = %admin_addr, "admin api listening");
        admin_addr
    });
    log_start_summary(config, options.config_path.as_deref(), threads);
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
