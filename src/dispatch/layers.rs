//! The per-consumer policies, each a small tower layer, and the plugin call
//! they wrap. Assembled in [`super::consumer_stack`].

use super::breaker::{Admission, BreakerState, CallResult, CircuitBreaker, Transition};
use super::idempotency::{self, Claim, IdempotencyStore};
use super::quarantine::PluginHealth;
use super::{ConsumerStats, DispatchError, Verdict};
use crate::bus::Delivery;
use crate::limiter::RateLimiter;
use crate::plugin::{ConsumerPlugin, PluginEvent};
use crate::telemetry::metrics::{ConsumerAnswer, ConsumerLabel, ConsumerReason, Metrics};
use futures::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service};

/// How long a worker that meets someone else's live lease waits before it
/// looks again: a quarter of the lease, so a dead holder's key is taken
/// over soon after it expires; at most 5 s, since a live holder usually
/// finishes within a call.
fn held_elsewhere_delay(lease: Duration) -> Duration {
    (lease / 4).clamp(Duration::from_millis(50), Duration::from_secs(5))
}

/// Claims the (consumer, event) key before the call and settles it after.
#[derive(Clone)]
pub struct IdempotencyLayer {
    store: Arc<dyn IdempotencyStore>,
    key_prefix: Arc<str>,
    lease: Duration,
    ttl: Duration,
    metrics: Arc<Metrics>,
}

impl IdempotencyLayer {
    pub fn new(
        store: Arc<dyn IdempotencyStore>,
        key_prefix: &str,
        lease: Duration,
        ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        IdempotencyLayer {
            store,
            key_prefix: Arc::from(key_prefix),
            lease,
            ttl,
            metrics,
        }
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotent<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotent {
            inner,
            policy: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Idempotent<S> {
    inner: S,
    policy: IdempotencyLayer,
}

impl<S> Service<Delivery> for Idempotent<S>
where
    S: Service<Delivery, Response = Verdict, Error = DispatchError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Verdict;
    type Error = DispatchError;
    type Future = BoxFuture<'static, Result<Verdict, DispatchError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, delivery: Delivery) -> Self::Future {
        // Take the service that was polled ready; leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let policy = self.policy.clone();
        Box::pin(async move {
            let envelope = &delivery.envelope;
            let key = idempotency::key(
                &policy.key_prefix,
                &delivery.consumer,
                &envelope.source,
                &envelope.effect_id(),
            );
            let lease = match policy.store.claim(&key, policy.lease).await? {
                Claim::AlreadyDone => return Ok(Verdict::AlreadyDone),
                Claim::HeldElsewhere => {
                    return Ok(Verdict::Busy {
                        retry_in: held_elsewhere_delay(policy.lease),
                    });
                }
                Claim::Acquired(lease) => lease,
            };
            let consumer = Arc::clone(&delivery.consumer);
            if let Some(silent) = lease.taken_over_after {
                policy.metrics.lease_taken_over(&consumer, silent);
                tracing::info!(
                    consumer = %consumer,
                    event_id = %envelope.event_id,
                    silent_ms = silent.as_millis() as u64,
                    "took over a lease its holder stopped renewing"
                );
            }
            let mut held = (key.clone(), lease);
            let (verdict, lost) =
                super::while_renewing(inner.call(delivery), policy.lease, &mut held, |held| {
                    let (store, metrics) = (Arc::clone(&policy.store), Arc::clone(&policy.metrics));
                    let (consumer, length) = (Arc::clone(&consumer), policy.lease);
                    Box::pin(async move {
                        let (key, lease) = &*held;
                        let renewed = store
                            .renew(key, lease, length)
                            .await
                            .map_err(DispatchError::from);
                        metrics.lease_renewal(&consumer, "key", matches!(renewed, Ok(true)));
                        renewed
                    })
                })
                .await;
            let (_, lease) = held;
            if let Some(why) = lost {
                // Not ours any more (or unknown): leave the key to its expiry
                // or its new holder, and let the event come back under the
                // same key.
                return Err(DispatchError::LeaseLost(format!("idempotency key: {why}")));
            }
            match &verdict {
                Ok(Verdict::Delivered { .. }) => policy.store.complete(&key, policy.ttl).await?,
                // A rejected or reviewed event may be replayed by an operator
                // later: leave no mark that would make the replay a no-op.
                _ => policy.store.release(&key, &lease).await?,
            }
            verdict
        })
    }
}

/// The innermost service: one plugin call under the consumer's budgets.
#[derive(Clone)]
pub struct PluginCall {
    plugin: Arc<ConsumerPlugin>,
    metrics: Arc<Metrics>,
    stats: Arc<ConsumerStats>,
    health: Arc<PluginHealth>,
}

impl PluginCall {
    pub fn new(
        plugin: Arc<ConsumerPlugin>,
        metrics: Arc<Metrics>,
        stats: Arc<ConsumerStats>,
        health: Arc<PluginHealth>,
    ) -> Self {
        PluginCall {
            plugin,
            metrics,
            stats,
            health,
        }
    }
}

impl Service<Delivery> for PluginCall {
    type Response = Verdict;
    type Error = DispatchError;
    type Future = BoxFuture<'static, Result<Verdict, DispatchError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, delivery: Delivery) -> Self::Future {
        let plugin = Arc::clone(&self.plugin);
        let metrics = Arc::clone(&self.metrics);
        let stats = Arc::clone(&self.stats);
        let health = Arc::clone(&self.health);
        Box::pin(async move {
            let envelope = &delivery.envelope;
            let event = PluginEvent {
                id: envelope.event_id.clone(),
                event_type: envelope.event_type.clone(),
                source: envelope.source.clone(),
                created: envelope.created,
                livemode: envelope.livemode,
                account: envelope.account.clone(),
                attempt: delivery.attempt,
                payload: String::from_utf8_lossy(&envelope.payload).into_owned(),
            };
            let report = plugin
                .call(
                    event,
                    &envelope.effect_key(),
                    envelope.traceparent.as_deref(),
                )
                .await;
            let label = ConsumerLabel {
                consumer: delivery.consumer.to_string(),
            };
            metrics
                .plugin_duration
                .get_or_create(&label)
                .observe(report.wall.as_secs_f64());
            metrics
                .plugin_pool_wait
                .get_or_create(&label)
                .observe(report.pool_wait.as_secs_f64());
            stats.record_call(&report);
            health.record(&report);
            for call in &report.calls {
                metrics
                    .downstream_answers
                    .get_or_create(&ConsumerAnswer {
                        consumer: delivery.consumer.to_string(),
                        status: call.answer(),
                    })
                    .inc();
            }
            for stop in &report.stops {
                metrics
                    .sandbox_stops
                    .get_or_create(&ConsumerReason {
                        consumer: delivery.consumer.to_string(),
                        reason: stop.label().to_owned(),
                    })
                    .inc();
            }
            Ok(Verdict::from(report))
        })
    }
}

type Wait = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// How long a worker waits for a half-open probe slot before asking again
/// (a slot frees when a probe ends, which also wakes waiters).
const PROBE_SLOT_POLL: Duration = Duration::from_millis(100);

/// The breaker of one consumer, shared by all its workers.
pub struct BreakerHandle {
    consumer: Arc<str>,
    machine: Mutex<CircuitBreaker>,
    probe_ended: tokio::sync::Notify,
    opened: AtomicU64,
}

impl BreakerHandle {
    pub fn new(consumer: &str, config: super::breaker::BreakerConfig) -> Arc<BreakerHandle> {
        Arc::new(BreakerHandle {
            consumer: Arc::from(consumer),
            machine: Mutex::new(CircuitBreaker::new(config)),
            probe_ended: tokio::sync::Notify::new(),
            opened: AtomicU64::new(0),
        })
    }

    pub fn state(&self) -> BreakerState {
        self.machine.lock().expect("breaker lock").state()
    }

    /// How many times it opened since start.
    pub fn times_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    fn admit(&self) -> Admission {
        let (admission, transition) = self
            .machine
            .lock()
            .expect("breaker lock")
            .admit(tokio::time::Instant::now());
        self.announce(transition);
        admission
    }

    fn record(&self, result: CallResult) {
        let transition = self
            .machine
            .lock()
            .expect("breaker lock")
            .record(tokio::time::Instant::now(), result);
        self.announce(transition);
        self.probe_ended.notify_waiters();
    }

    fn announce(&self, transition: Option<Transition>) {
        let Some(Transition { from, to }) = transition else {
            return;
        };
        let reason = match (from, to) {
            (BreakerState::Closed, BreakerState::Open) => {
                "downstream failures reached the threshold"
            }
            (BreakerState::HalfOpen, BreakerState::Open) => "a probe call failed",
            (_, BreakerState::HalfOpen) => "open period over; probing",
            (_, BreakerState::Closed) => "probe calls succeeded",
            _ => "state changed",
        };
        if to == BreakerState::Open {
            self.opened.fetch_add(1, Ordering::Relaxed);
        }
        tracing::warn!(
            consumer = %self.consumer,
            from = ?from,
            to = ?to,
            reason,
            "circuit breaker state changed"
        );
    }
}

/// While the breaker is open, `poll_ready` waits: the pull loop takes no
/// new work, so the consumer's events wait in the bus without using attempts.
#[derive(Clone)]
pub struct CircuitBreakerLayer {
    breaker: Arc<BreakerHandle>,
}

impl CircuitBreakerLayer {
    pub fn new(breaker: Arc<BreakerHandle>) -> Self {
        CircuitBreakerLayer { breaker }
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = Breaker<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Breaker {
            inner,
            breaker: Arc::clone(&self.breaker),
            admitted: None,
            wait: None,
        }
    }
}

pub struct Breaker<S> {
    inner: S,
    breaker: Arc<BreakerHandle>,
    admitted: Option<Admitted>,
    wait: Option<Wait>,
}

impl<S: Clone> Clone for Breaker<S> {
    /// A clone is not ready: it must be admitted on its own.
    fn clone(&self) -> Self {
        Breaker {
            inner: self.inner.clone(),
            breaker: Arc::clone(&self.breaker),
            admitted: None,
            wait: None,
        }
    }
}

/// An admitted call. Recorded when the call ends; dropped unused (no work
/// was pulled, or the call was cancelled) it counts as neutral, so a
/// half-open probe slot is never leaked.
struct Admitted {
    breaker: Arc<BreakerHandle>,
    recorded: bool,
}

impl Admitted {
    fn record(mut self, result: CallResult) {
        self.recorded = true;
        self.breaker.record(result);
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker.record(CallResult::Neutral);
        }
    }
}

/// What a verdict says about the downstream's health.
fn call_result(verdict: &Result<Verdict, DispatchError>) -> CallResult {
    match verdict {
        // Only an answer from the downstream says it is healthy; a plugin
        // that had nothing to send says nothing about it.
        Ok(Verdict::Delivered {
            called_downstream: true,
        }) => CallResult::Healthy,
        Ok(Verdict::Retry {
            downstream_unwell: true,
            ..
        }) => CallResult::Unwell,
        _ => CallResult::Neutral,
    }
}

impl<S> Service<Delivery> for Breaker<S>
where
    S: Service<Delivery, Response = Verdict, Error = DispatchError> + Send + 'static,
    S::Future: Send,
{
    type Response = Verdict;
    type Error = DispatchError;
    type Future = BoxFuture<'static, Result<Verdict, DispatchError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        while self.admitted.is_none() {
            if let Some(wait) = &mut self.wait {
                std::task::ready!(wait.as_mut().poll(cx));
                self.wait = None;
            }
            match self.breaker.admit() {
                Admission::Allowed => {
                    self.admitted = Some(Admitted {
                        breaker: Arc::clone(&self.breaker),
                        recorded: false,
                    });
                }
                Admission::OpenUntil(until) => {
                    self.wait = Some(Box::pin(tokio::time::sleep_until(until)));
                }
                Admission::ProbesBusy => {
                    let breaker = Arc::clone(&self.breaker);
                    self.wait = Some(Box::pin(async move {
                        tokio::select! {
                            _ = breaker.probe_ended.notified() => {}
                            _ = tokio::time::sleep(PROBE_SLOT_POLL) => {}
                        }
                    }));
                }
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, delivery: Delivery) -> Self::Future {
        let admitted = self.admitted.take().expect("poll_ready admits before call");
        let future = self.inner.call(delivery);
        Box::pin(async move {
            let verdict = future.await;
            admitted.record(call_result(&verdict));
            verdict
        })
    }
}

/// Waits in `poll_ready` for a permit of the consumer's rate: a throttled
/// consumer pulls no faster than its limit, so its backlog stays in the bus
/// and no attempt is spent on waiting.
#[derive(Clone)]
pub struct RateLimitLayer {
    limiter: Arc<RateLimiter>,
    waits: Counter,
}

impl RateLimitLayer {
    /// `waits` counts the times a permit was not there at once.
    pub fn new(limiter: Arc<RateLimiter>, waits: Counter) -> Self {
        RateLimitLayer { limiter, waits }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimited {
            inner,
            limiter: Arc::clone(&self.limiter),
            waits: self.waits.clone(),
            permit: false,
            wait: None,
        }
    }
}

pub struct RateLimited<S> {
    inner: S,
    limiter: Arc<RateLimiter>,
    waits: Counter,
    permit: bool,
    wait: Option<Wait>,
}

impl<S: Clone> Clone for RateLimited<S> {
    /// A clone holds no permit.
    fn clone(&self) -> Self {
        RateLimited {
            inner: self.inner.clone(),
            limiter: Arc::clone(&self.limiter),
            waits: self.waits.clone(),
            permit: false,
            wait: None,
        }
    }
}

impl<S> Service<Delivery> for RateLimited<S>
where
    S: Service<Delivery, Response = Verdict, Error = DispatchError>,
{
    type Response = Verdict;
    type Error = DispatchError;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        while !self.permit {
            if let Some(wait) = &mut self.wait {
                std::task::ready!(wait.as_mut().poll(cx));
                self.wait = None;
            }
            match self.limiter.try_acquire() {
                Ok(()) => self.permit = true,
                Err(wait) => {
                    self.waits.inc();
                    self.wait = Some(Box::pin(tokio::time::sleep(wait)));
                }
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, delivery: Delivery) -> Self::Future {
        assert!(self.permit, "poll_ready takes a permit before call");
        self.permit = false;
        self.inner.call(delivery)
    }
}
