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

pub mod breaker;
pub mod idempotency;
pub mod layers;
pub mod quarantine;
pub mod retry;
pub mod start;

use crate::bus::{Bus, BusError, DeadQueue, Delivery, Lane};
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

/// One consumer's pull loop and its settings.
pub struct ConsumerLoop {
    pub name: String,
    /// Which of the consumer's queues this loop drains.
    pub lane: Lane,
    pub bus: Arc<dyn Bus>,
    pub service: ConsumerService,
    pub retry: RetryConfig,
    pub concurrency: usize,
    pub stats: Arc<ConsumerStats>,
    /// While true the loop takes no new work; events wait in the bus.
    pub paused: watch::Receiver<bool>,
    pub metrics: Arc<Metrics>,
    pub tracer: Tracer,
    /// The bus lease (`bus.visibility_timeout`), renewed while a call runs.
    pub visibility_timeout: Duration,
}

/// How long one pull waits for work before the loop checks for shutdown.
const PULL_WAIT: Duration = Duration::from_millis(500);
/// Most deliveries one pull leases (each for a free, ready worker).
const MAX_PULL: usize = 64;
/// How often an empty replay lane looks for work again.
const REPLAY_IDLE_POLL: Duration = Duration::from_millis(500);
/// Pause after the bus itself failed, so a broken disk is not hammered.
const BUS_ERROR_PAUSE: Duration = Duration::from_secs(1);

impl ConsumerLoop {
    /// Runs until `shutdown` turns true, then waits up to `grace` for
    /// in-flight deliveries. Unfinished ones stay leased in the bus and come
    /// back after the visibility timeout.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>, grace: Duration) {
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let schedule = RetrySchedule::new(self.retry);
        let mut in_flight = JoinSet::new();
        let mut paused = self.paused.clone();
        let this = Arc::new(self);
        loop {
            while in_flight.try_join_next().is_some() {}
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                _ = paused.wait_for(|paused| !*paused) => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
            let permit = tokio::select! {
                permit = Arc::clone(&permits).acquire_owned() => permit.expect("semaphore never closes"),
                _ = shutdown.wait_for(|stop| *stop) => break,
            };
            // Breaker and rate limiter decide here, before anything is pulled.
            let mut service = this.service.clone();
            let ready = tokio::select! {
                ready = service.ready() => ready,
                _ = shutdown.wait_for(|stop| *stop) => break,
            };
            if let Err(err) = ready {
                tracing::error!(consumer = %this.name, error = %err, "consumer stack not ready");
                tokio::time::sleep(BUS_ERROR_PAUSE).await;
                continue;
            }
            // The live lane waits for work inside the pull. The replay lane
            // is usually empty: it only looks, so an idle replay lane never
            // sits on a half-open breaker's probe slot.
            let wait = match this.lane {
                Lane::Live => PULL_WAIT,
                Lane::Replay => Duration::ZERO,
            };
            // Other free workers whose stack is ready at once share this
            // pull: one bus round trip leases work for all of them. Only
            // ready services count, so the breaker and the limiter still
            // decide before anything is pulled; a slot left without work
            // gives its admission back when dropped.
            let mut slots = vec![(permit, service)];
            while slots.len() < MAX_PULL {
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    break;
                };
                let mut service = this.service.clone();
                match service.ready().now_or_never() {
                    Some(Ok(_)) => slots.push((permit, service)),
                    _ => break,
                }
            }
            // Not raced against shutdown: a pull dropped half-way could have
            // leased an event nobody then holds (it would wait out the
            // visibility timeout). The pull's wait is short anyway.
            let pulled = this
                .bus
                .pull(&this.name, this.lane, slots.len(), wait)
                .await;
            let deliveries = match pulled {
                Ok(deliveries) if !deliveries.is_empty() => deliveries,
                Ok(_) if this.lane == Lane::Replay => {
                    drop(slots);
                    tokio::select! {
                        _ = tokio::time::sleep(REPLAY_IDLE_POLL) => {}
                        _ = shutdown.wait_for(|stop| *stop) => break,
                    }
                    continue;
                }
                Ok(_) => continue,
                Err(err) => {
                    tracing::error!(consumer = %this.name, error = %err, "pull failed");
                    tokio::time::sleep(BUS_ERROR_PAUSE).await;
                    continue;
                }
            };
            // Paused or stopped while the pull waited: give the events back
            // untouched.
            if *paused.borrow() || *shutdown.borrow() {
                for delivery in &deliveries {
                    if let Err(err) = this.bus.release(delivery).await {
                        tracing::warn!(consumer = %this.name, error = %err, "could not release a delivery; it returns after the visibility timeout");
                    }
                }
                continue;
            }
            for (delivery, (permit, service)) in deliveries.into_iter().zip(slots) {
                let this = Arc::clone(&this);
                in_flight.spawn(async move {
                    this.deliver(delivery, service, schedule).await;
                    drop(permit);
                });
            }
        }
        let drained = tokio::time::timeout(grace, async {
            while in_flight.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                consumer = %this.name,
                left = in_flight.len(),
                "shutdown grace elapsed; unfinished deliveries stay in the bus"
            );
            in_flight.abort_all();
        }
    }

    async fn deliver(
        &self,
        mut delivery: Delivery,
        mut service: ConsumerService,
        schedule: RetrySchedule,
    ) {
        let stats = &self.stats;
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .attempts
            .get_or_create(&ConsumerLabel {
                consumer: self.name.clone(),
            })
            .inc();
        let span = tracing::info_span!(
            "deliver",
            consumer = %self.name,
            source = %delivery.envelope.source,
            event_id = %delivery.envelope.event_id,
            event_type = %delivery.envelope.event_type,
            attempt = delivery.attempt,
        );
        // The delivery is a child span of the ingest span in the envelope;
        // the plugin's outbound calls become its children.
        let trace = delivery
            .envelope
            .traceparent
            .as_deref()
            .and_then(TraceContext::parse);
        let deliver_span = trace.as_ref().map(TraceContext::child);
        let mut call = delivery.clone();
        if let Some(deliver_span) = &deliver_span {
            let mut envelope = (*delivery.envelope).clone();
            envelope.traceparent = Some(deliver_span.traceparent());
            call.envelope = Arc::new(envelope);
        }
        let started = std::time::SystemTime::now();
        let call = tracing::Instrument::instrument(service.call(call), span);
        let (mut verdict, lost) =
            while_renewing(call, self.visibility_timeout, &mut delivery, |lease| {
                let (bus, metrics) = (Arc::clone(&self.bus), Arc::clone(&self.metrics));
                Box::pin(async move {
                    let renewed = bus.extend(lease).await.map_err(DispatchError::from);
                    metrics.lease_renewal(&lease.consumer, "bus", matches!(renewed, Ok(true)));
                    renewed
                })
            })
            .await;
        if let Some(why) = lost {
            tracing::warn!(consumer = %self.name, event_id = %delivery.envelope.event_id, why, "bus lease lost during the call; the event is retried");
            verdict = Err(DispatchError::LeaseLost(format!("bus: {why}")));
        }
        if let (Some(parent), Some(deliver_span)) = (trace, deliver_span)
            && self.tracer.enabled()
        {
            self.tracer.export(SpanRecord {
                name: format!("deliver {}", self.name),
                kind: SpanKind::Internal,
                trace_id: deliver_span.trace_id,
                span_id: deliver_span.span_id,
                parent_span_id: Some(parent.span_id),
                start: started,
                end: std::time::SystemTime::now(),
                attributes: vec![
                    ("switchyard.consumer", self.name.clone()),
                    ("switchyard.event_id", delivery.envelope.event_id.clone()),
                    ("switchyard.attempt", delivery.attempt.to_string()),
                    (
                        "switchyard.lane",
                        format!("{:?}", delivery.lane).to_lowercase(),
                    ),
                    ("switchyard.verdict", verdict_name(&verdict).to_owned()),
                ],
                error: !matches!(
                    verdict,
                    Ok(Verdict::Delivered { .. } | Verdict::AlreadyDone | Verdict::Busy { .. })
                ),
            });
        }
        let settled = self.settle(&delivery, verdict, schedule).await;
        if let Err(err) = settled {
            stats.infra_errors.fetch_add(1, Ordering::Relaxed);
            self.metrics.delivery(&self.name, "infra_error");
            tracing::error!(
                consumer = %self.name,
                event_id = %delivery.envelope.event_id,
                error = %err,
                "could not settle delivery; it returns after the visibility timeout"
            );
        }
        stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    async fn settle(
        &self,
        delivery: &Delivery,
        verdict: Result<Verdict, DispatchError>,
        schedule: RetrySchedule,
    ) -> Result<(), BusError> {
        let stats = &self.stats;
        let event_id = &delivery.envelope.event_id;
        let consumer = &self.name;
        let failure = match &verdict {
            Ok(
                Verdict::Retry { reason, .. } | Verdict::Reject(reason) | Verdict::Review(reason),
            ) => Some(reason.clone()),
            Err(err) => Some(err.to_string()),
            _ => None,
        };
        if let Some(reason) = failure {
            *stats.last_error.lock().expect("stats lock") = Some(reason);
            stats
                .last_error_at_ms
                .store(crate::bus::now_ms(), Ordering::Relaxed);
        }
        match verdict {
            Ok(Verdict::Delivered { .. }) => {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                stats
                    .last_delivered_at_ms
                    .store(crate::bus::now_ms(), Ordering::Relaxed);
                self.metrics.delivery(consumer, "delivered");
                tracing::debug!(consumer, event_id, "delivered");
                self.bus.ack(delivery).await
            }
            Ok(Verdict::AlreadyDone) => {
                stats.skipped_done.fetch_add(1, Ordering::Relaxed);
                self.metrics.delivery(consumer, "skipped_done");
                tracing::debug!(consumer, event_id, "already delivered; skipped");
                self.bus.ack(delivery).await
            }
            Ok(Verdict::Busy { retry_in }) => self.bus.retry(delivery, retry_in).await,
            Ok(Verdict::Retry { reason, after, .. }) => {
                let step = schedule.next(delivery.attempt, after, &mut rand::rng());
                match step {
                    NextStep::RetryIn(delay) => {
                        stats.retried.fetch_add(1, Ordering::Relaxed);
                        self.metrics.delivery(consumer, "retried");
                        tracing::warn!(
                            consumer,
                            event_id,
                            reason,
                            retry_in_ms = delay.as_millis() as u64,
                            "delivery failed; will retry"
                        );
                        self.bus.retry(delivery, delay).await
                    }
                    NextStep::GiveUp => {
                        stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                        self.metrics.delivery(consumer, "dead_lettered");
                        let reason =
                            format!("gave up after {} attempts: {reason}", delivery.attempt);
                        tracing::error!(consumer, event_id, reason, "dead-lettered");
                        self.bus
                            .dead_letter(delivery, DeadQueue::DeadLetter, &reason)
                            .await
                    }
                }
            }
            Ok(Verdict::Reject(reason)) => {
                stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                self.metrics.delivery(consumer, "dead_lettered");
                tracing::error!(consumer, event_id, reason, "rejected; dead-lettered");
                self.bus
                    .dead_letter(delivery, DeadQueue::DeadLetter, &reason)
                    .await
            }
            Ok(Verdict::Review(reason)) => {
                stats.reviewed.fetch_add(1, Ordering::Relaxed);
                self.metrics.delivery(consumer, "reviewed");
                tracing::warn!(consumer, event_id, reason, "parked for review");
                self.bus
                    .dead_letter(delivery, DeadQueue::Review, &reason)
                    .await
            }
            Err(err) => {
                stats.infra_errors.fetch_add(1, Ordering::Relaxed);
                self.metrics.delivery(consumer, "infra_error");
                // Not the plugin's fault: retry without burning the schedule
                // toward the dead-letter queue.
                let delay = schedule.ceiling(1);
                tracing::warn!(consumer, event_id, error = %err, "infrastructure error; will retry");
                self.bus.retry(delivery, delay).await
            }
        }
    }
}
