//! The per-consumer policies, each a small tower layer, and the plugin call
//! they wrap. Assembled in [`super::consumer_stack`].

use super::idempotency::{self, Claim, IdempotencyStore};
use super::{DispatchError, Verdict};
use crate::bus::Delivery;
use crate::plugin::{CallOutcome, ConsumerPlugin, PluginEvent};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service};

/// How long a worker that meets someone else's live lease waits before it
/// looks again. Short: the other holder usually finishes within a call.
const HELD_ELSEWHERE_DELAY: Duration = Duration::from_secs(5);

/// Claims the (consumer, event) key before the call and settles it after.
#[derive(Clone)]
pub struct IdempotencyLayer {
    store: Arc<dyn IdempotencyStore>,
    key_prefix: Arc<str>,
    lease: Duration,
    ttl: Duration,
}

impl IdempotencyLayer {
    pub fn new(
        store: Arc<dyn IdempotencyStore>,
        key_prefix: &str,
        lease: Duration,
        ttl: Duration,
    ) -> Self {
        IdempotencyLayer {
            store,
            key_prefix: Arc::from(key_prefix),
            lease,
            ttl,
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
                &envelope.event_id,
            );
            let lease = match policy.store.claim(&key, policy.lease).await? {
                Claim::AlreadyDone => return Ok(Verdict::AlreadyDone),
                Claim::HeldElsewhere => {
                    return Ok(Verdict::Busy {
                        retry_in: HELD_ELSEWHERE_DELAY,
                    });
                }
                Claim::Acquired(lease) => lease,
            };
            let verdict = inner.call(delivery).await;
            match &verdict {
                Ok(Verdict::Delivered) => policy.store.complete(&key, policy.ttl).await?,
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
}

impl PluginCall {
    pub fn new(plugin: Arc<ConsumerPlugin>) -> Self {
        PluginCall { plugin }
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
            let report = plugin.call(event).await;
            Ok(match report.outcome {
                CallOutcome::Done => Verdict::Delivered,
                CallOutcome::Retry { reason, after } => Verdict::Retry { reason, after },
                CallOutcome::Reject(reason) => Verdict::Reject(reason),
                CallOutcome::Review(reason) => Verdict::Review(reason),
            })
        })
    }
}
