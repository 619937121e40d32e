//! Dispatch: from the bus to each consumer's plugin, one consumer at a time.
//!
//! Owns the pull loop of every consumer, its bounded concurrency, its policy
//! stack (tower layers, assembled in [`consumer_stack`]) and the decision the
//! bus carries out: ack, retry later, dead-letter, or park for review.
//!
//! Isolation: each consumer has its own loop, semaphore and stack; a slow or
//! failing consumer holds only its own permits and its own queue grows.
//!
//! Nothing is dropped: every verdict ends in an ack (done, or known done), a
//! delayed redelivery, or a durable dead-letter/review entry. If settling
//! fails, the lease simply expires and the event comes back.
//!
//! Leases are short and renewed: while a call runs, its worker extends the
//! bus lease and the idempotency key's lease every third of their length
//! ([`LeaseRenewal`]). A dead worker stops renewing, so its events move to a
//! live one within a lease; a live worker whose renewal fails no longer
//! trusts its call's outcome and retries the event under the same key.
//!
//! This page holds the verdicts, the stack and the lease renewal;
//! [`ConsumerLoop`] (in `consumer_loop.rs`) is the loop, [`start`] starts one
//! consumer's loops from its config.

pub mod breaker;
mod consumer_loop;
pub mod idempotency;
pub mod layers;
pub mod quarantine;
pub mod retry;
pub mod start;

pub use consumer_loop::ConsumerLoop;

use crate::bus::{Bus, BusError, Delivery, Lane, ParkQueue};
use crate::config::RetryConfig;
use crate::limiter::RateLimiter;
use crate::plugin::{CallOutcome, CallReport, ConsumerPlugin};
use crate::telemetry::metrics::{ConsumerLabel, Metrics};
use crate::telemetry::otlp::{SpanKind, SpanRecord, TraceContext, Tracer};
use futures::FutureExt;
use idempotency::{IdempotencyError, IdempotencyStore};
use layers::{BreakerHandle, CircuitBreakerLayer, IdempotencyLayer, PluginCall, RateLimitLayer};
use retry::{NextStep, RetrySchedule};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder, ServiceExt};

/// How a delivery ended, as the policy stack reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Delivered {
        /// The plugin made at least one outbound call.
        called_downstream: bool,
    },
    /// The idempotency key says the effect already happened.
    AlreadyDone,
    /// Another worker holds the lease; look again later. Not a failure.
    Busy {
        retry_in: Duration,
    },
    Retry {
        reason: String,
        after: Option<Duration>,
        /// Counts against the circuit breaker.
        downstream_unwell: bool,
    },
    Reject(String),
    Review(String),
}

/// A plugin call's outcome is the verdict, except that a delivery also says
/// whether a downstream was called: only an answer from one tells the
/// circuit breaker the downstream is healthy.
impl From<CallReport> for Verdict {
    fn from(report: CallReport) -> Verdict {
        match report.outcome {
            CallOutcome::Done => Verdict::Delivered {
                called_downstream: !report.calls.is_empty(),
            },
            CallOutcome::Retry {
                reason,
                after,
                downstream_unwell,
            } => Verdict::Retry {
                reason,
                after,
                downstream_unwell,
            },
            CallOutcome::Reject(reason) => Verdict::Reject(reason),
            CallOutcome::Review(reason) => Verdict::Review(reason),
        }
    }
}

/// Infrastructure failures (not the plugin's): the event stays in the bus
/// and comes back; these never dead-letter an event.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Idempotency(#[from] IdempotencyError),
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A renewal failed while the call ran: another worker may hold the
    /// event now, so this call's outcome is not trusted.
    #[error("lease lost during the call: {0}")]
    LeaseLost(String),
}

/// How often a held lease is renewed: a third of its length, so two
/// renewals can fail (or be late) before it expires.
pub fn renewal_interval(lease: Duration) -> Duration {
    (lease / 3).max(Duration::from_millis(50))
}

/// Runs `work` to completion while `renew` extends a lease (held in
/// `lease`) every `renewal_interval(length)`. Returns the work's output and,
/// if a renewal failed or found the lease gone, why (renewing stops then).
pub async fn while_renewing<T, L>(
    work: impl std::future::Future<Output = T>,
    length: Duration,
    lease: &mut L,
    mut renew: impl for<'a> FnMut(
        &'a mut L,
    ) -> futures::future::BoxFuture<'a, Result<bool, DispatchError>>,
) -> (T, Option<String>) {
    let every = renewal_interval(length);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(work);
    let mut lost = None;
    loop {
        tokio::select! {
            output = &mut work => return (output, lost),
            _ = ticks.tick(), if lost.is_none() => match renew(lease).await {
                Ok(true) => {}
                Ok(false) => lost = Some("the lease expired and was taken over".to_owned()),
                Err(err) => lost = Some(err.to_string()),
            },
        }
    }
}

/// The assembled policy stack of one consumer.
pub type ConsumerService = BoxCloneSyncService<Delivery, Verdict, DispatchError>;

/// The policies of a consumer's stack.
pub struct StackParts {
    pub idempotency: Arc<dyn IdempotencyStore>,
    pub key_prefix: String,
    pub lease: Duration,
    pub ttl: Duration,
    pub breaker: Option<Arc<BreakerHandle>>,
    pub rate_limit: Option<Arc<RateLimiter>>,
    /// Counts the rate limiter's waits (`switchyard_rate_limit_waits_total`).
    pub rate_limit_waits: prometheus_client::metrics::counter::Counter,
    /// Lease renewals and takeovers are counted here.
    pub metrics: Arc<Metrics>,
}

/// Builds one consumer's stack, outermost layer first.
///
/// `poll_ready` runs down the stack before the pull loop takes an event from
/// the bus, so the breaker and the limiter hold work back in the bus rather
/// than holding a leased event in memory.
pub fn consumer_stack<S>(parts: StackParts, call: S) -> ConsumerService
where
    S: tower::Service<Delivery, Response = Verdict, Error = DispatchError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let service = ServiceBuilder::new()
        // Outermost on the call path: a delivery whose effect is known done
        // is acked without touching the downstream, and a call that fails
        // releases its lease so the retry can claim it.
        .layer(IdempotencyLayer::new(
            parts.idempotency,
            &parts.key_prefix,
            parts.lease,
            parts.ttl,
            parts.metrics,
        ))
        // Before the limiter: while open, the consumer pulls nothing and
        // spends no rate permits; it records each call's effect on health.
        .option_layer(parts.breaker.map(CircuitBreakerLayer::new))
        // Waits for a permit before work is pulled: a throttled consumer's
        // backlog stays in the bus and no attempt is spent waiting.
        .option_layer(
            parts
                .rate_limit
                .map(|limiter| RateLimitLayer::new(limiter, parts.rate_limit_waits)),
        )
        // Innermost: the call itself — the plugin, under its CPU, wall-clock
        // and memory budgets (see `plugin_call`).
        .service(call);
    BoxCloneSyncService::new(service)
}

/// The innermost service of a consumer: its plugin.
pub fn plugin_call(
    plugin: Arc<ConsumerPlugin>,
    metrics: Arc<Metrics>,
    stats: Arc<ConsumerStats>,
    health: Arc<quarantine::PluginHealth>,
) -> PluginCall {
    PluginCall::new(plugin, metrics, stats, health)
}

/// Counters of one consumer, for status and tests.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    pub delivered: AtomicU64,
    pub skipped_done: AtomicU64,
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub reviewed: AtomicU64,
    pub infra_errors: AtomicU64,
    pub in_flight: AtomicU64,
    /// The latest failure reason (never a payload).
    pub last_error: std::sync::Mutex<Option<String>>,
    /// When it happened, and when an event was last delivered (ms since
    /// the epoch, 0 for never): tell an operator whether the error is
    /// current or the consumer has recovered since.
    pub last_error_at_ms: AtomicU64,
    pub last_delivered_at_ms: AtomicU64,
    /// Plugin calls made, and their summed wall time (the anomaly watch's
    /// latency signal: a histogram's sum is not readable here).
    pub plugin_calls: AtomicU64,
    pub plugin_micros: AtomicU64,
    /// Answers of the plugin's outbound calls by [`CallRecord::answer`]
    /// label: what tells a 5xx storm from timeouts or a dead host.
    ///
    /// [`CallRecord::answer`]: crate::plugin::host::CallRecord::answer
    pub downstream: std::sync::Mutex<BTreeMap<String, u64>>,
}

/// A point-in-time copy of [`ConsumerStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatsSnapshot {
    pub delivered: u64,
    pub skipped_done: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub reviewed: u64,
    pub infra_errors: u64,
    pub in_flight: u64,
    pub last_error: Option<String>,
    #[serde(default)]
    pub last_error_at_ms: Option<u64>,
    #[serde(default)]
    pub last_delivered_at_ms: Option<u64>,
    pub plugin_calls: u64,
    pub plugin_micros: u64,
    pub downstream: BTreeMap<String, u64>,
}

impl ConsumerStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StatsSnapshot {
            delivered: get(&self.delivered),
            skipped_done: get(&self.skipped_done),
            retried: get(&self.retried),
            dead_lettered: get(&self.dead_lettered),
            reviewed: get(&self.reviewed),
            infra_errors: get(&self.infra_errors),
            in_flight: get(&self.in_flight),
            last_error: self.last_error.lock().expect("stats lock").clone(),
            last_error_at_ms: Some(get(&self.last_error_at_ms)).filter(|&ms| ms > 0),
            last_delivered_at_ms: Some(get(&self.last_delivered_at_ms)).filter(|&ms| ms > 0),
            plugin_calls: get(&self.plugin_calls),
            plugin_micros: get(&self.plugin_micros),
            downstream: self.downstream.lock().expect("stats lock").clone(),
        }
    }

    /// Counts one finished plugin call and its outbound answers.
    pub fn record_call(&self, report: &crate::plugin::CallReport) {
        self.plugin_calls.fetch_add(1, Ordering::Relaxed);
        self.plugin_micros
            .fetch_add(report.wall.as_micros() as u64, Ordering::Relaxed);
        if !report.calls.is_empty() {
            let mut downstream = self.downstream.lock().expect("stats lock");
            for call in &report.calls {
                *downstream.entry(call.answer()).or_default() += 1;
            }
        }
    }
}

fn verdict_name(verdict: &Result<Verdict, DispatchError>) -> &'static str {
    match verdict {
        Ok(Verdict::Delivered { .. }) => "delivered",
        Ok(Verdict::AlreadyDone) => "already_done",
        Ok(Verdict::Busy { .. }) => "busy",
        Ok(Verdict::Retry { .. }) => "retry",
        Ok(Verdict::Reject(_)) => "reject",
        Ok(Verdict::Review(_)) => "review",
        Err(_) => "infra_error",
    }
}
