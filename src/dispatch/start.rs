//! Starting and stopping a consumer: its policy stack and its two pull
//! loops (live and replay lane), built from its validated config.
//!
//! What outlives one plugin version — counters, the pause switch, plugin
//! health — is the caller's [`ConsumerState`], handed to each generation, so
//! a reload keeps a consumer's history and its paused or quarantined state.

use super::idempotency::IdempotencyStore;
use super::layers::BreakerHandle;
use super::quarantine::PluginHealth;
use super::{ConsumerLoop, ConsumerStats, StackParts, consumer_stack, plugin_call};
use crate::bus::{Bus, Lane};
use crate::config::Config;
use crate::limiter::RateLimiter;
use crate::plugin::ConsumerPlugin;
use crate::telemetry::metrics::{ConsumerLabel, Metrics};
use crate::telemetry::otlp::Tracer;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::watch;

/// What every consumer of a hub shares; fixed for the process's life.
pub struct Shared {
    pub bus: Arc<dyn Bus>,
    pub idempotency: Arc<dyn IdempotencyStore>,
    pub key_prefix: String,
    pub metrics: Arc<Metrics>,
    pub tracer: Tracer,
}

/// A consumer's state across plugin versions and reloads.
#[derive(Clone)]
pub struct ConsumerState {
    pub stats: Arc<ConsumerStats>,
    pub paused: watch::Sender<bool>,
    pub health: Arc<PluginHealth>,
}

impl ConsumerState {
    /// A consumer seen for the first time: running, no history.
    pub fn new(name: &str, quarantine_after: u32) -> ConsumerState {
        let paused = watch::channel(false).0;
        let health = PluginHealth::new(name, quarantine_after, paused.clone());
        ConsumerState {
            stats: Arc::new(ConsumerStats::default()),
            paused,
            health: Arc::new(health),
        }
    }
}

/// One consumer's running loops and the switch that stops them.
pub struct RunningConsumer {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Its downstream breaker, when `circuit_breaker` is enabled.
    pub breaker: Option<Arc<BreakerHandle>>,
}

/// Builds `name`'s stack over `plugin` and spawns its live and replay loops.
pub fn start_consumer(
    shared: &Shared,
    config: &Config,
    name: &str,
    plugin: Arc<ConsumerPlugin>,
    state: &ConsumerState,
) -> RunningConsumer {
    let consumer = &config.consumers[name];
    let breaker = consumer
        .circuit_breaker
        .map(|settings| BreakerHandle::new(name, settings));
    let label = ConsumerLabel {
        consumer: name.to_owned(),
    };
    let policies = StackParts {
        idempotency: Arc::clone(&shared.idempotency),
        key_prefix: shared.key_prefix.clone(),
        lease: config.idempotency.lease,
        ttl: config.idempotency.ttl,
        breaker: breaker.clone(),
        rate_limit: consumer
            .rate_limit
            .map(|limit| Arc::new(RateLimiter::new(limit))),
        rate_limit_waits: shared
            .metrics
            .rate_limit_waits
            .get_or_create(&label)
            .clone(),
        metrics: Arc::clone(&shared.metrics),
    };
    let service = consumer_stack(
        policies,
        plugin_call(
            plugin,
            Arc::clone(&shared.metrics),
            Arc::clone(&state.stats),
            Arc::clone(&state.health),
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
                name: name.to_owned(),
                lane,
                bus: Arc::clone(&shared.bus),
                service: service.clone(),
                retry: consumer.retry,
                concurrency,
                stats: Arc::clone(&state.stats),
                paused: state.paused.subscribe(),
                metrics: Arc::clone(&shared.metrics),
                tracer: shared.tracer.clone(),
                visibility_timeout: config.bus.visibility_timeout,
            };
            tokio::spawn(consumer_loop.run(stop_rx.clone(), config.server.shutdown_grace))
        })
        .collect();
    RunningConsumer {
        stop,
        tasks,
        breaker,
    }
}

/// Stops loops; each lets its in-flight deliveries finish (within the grace
/// period) on the plugin version it started them with.
pub async fn stop_consumers(running: BTreeMap<String, RunningConsumer>) {
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
