//! The bus: where an event becomes durable and waits for its consumers.
//!
//! Owns persistence of envelopes, ingest dedup by `<source>:<event id>`, one
//! queue per consumer with leases (visibility timeouts), delayed redelivery for
//! retries, and the dead-letter and review queues. It does not decide *whether*
//! to retry: dispatch does, and tells the bus.
//!
//! Invariants:
//! - `append` returns `Ok` only once the event is durable; ingest answers 2xx
//!   only after that.
//! - An event leaves a consumer's queue only by `ack` or `park`. A
//!   delivery whose holder dies comes back after the visibility timeout;
//!   a live holder renews its lease (`extend`) while its call runs, so the
//!   timeout stays short however long the call.
//!
//! Two seams, one per kind of caller: [`Bus`] is the data path (ingest
//! appends, dispatch pulls and settles), [`BusAdmin`] the operator's queries
//! and moves (backlogs, parked entries, history replay) and the engine's own
//! housekeeping. An [`Engine`] is both: `embedded` (redb, one machine) and
//! `nats` (JetStream, several processes). Both pass one behavioural suite
//! (tests/it/bus.rs).

pub mod embedded;
pub mod envelope;
pub mod nats;

use crate::config::EventPattern;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The JetStream settings with their secrets resolved.
pub fn nats_settings(
    config: &crate::config::Config,
    nats: &crate::config::NatsConfig,
) -> Result<nats::NatsSettings, BusError> {
    let secret = |secret: &Option<crate::config::SecretRef>, at: &str| {
        secret
            .as_ref()
            .map(|secret| {
                secret
                    .resolve()
                    .map_err(|err| BusError::Unavailable(format!("{at}: {err}")))
            })
            .transpose()
    };
    Ok(nats::NatsSettings {
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
/// its own, for tests to reach its fault seam.
pub async fn open(
    config: &crate::config::Config,
    empty_store: crate::durable::EmptyStore,
) -> Result<(Arc<dyn Engine>, Option<Arc<embedded::EmbeddedBus>>), BusError> {
    let bus = &config.bus;
    let subscriptions = Subscription::from_config(config);
    match &bus.engine {
        crate::config::BusEngine::Embedded { path } => {
            let embedded = Arc::new(embedded::EmbeddedBus::open(
                path,
                subscriptions,
                embedded::EmbeddedSettings {
                    visibility_timeout: bus.visibility_timeout,
                    dedup_window: bus.dedup_window,
                    retention: bus.retention,
                    empty_store,
                },
            )?);
            Ok((Arc::clone(&embedded) as Arc<dyn Engine>, Some(embedded)))
        }
        crate::config::BusEngine::Nats(nats) => {
            let settings = nats_settings(config, nats)?;
            let subscribers = Subscriber::from_config(config);
            Ok((
                Arc::new(nats::NatsBus::connect(settings, &subscribers).await?) as Arc<dyn Engine>,
                None,
            ))
        }
    }
}

/// Wall-clock unix milliseconds: what envelopes, parked entries and alerts
/// carry as timestamps.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub use envelope::{Envelope, EnvelopeError, KeyFormat};

/// What one consumer receives: events of `source` whose type matches a pattern.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub consumer: String,
    pub filters: Vec<(String, EventPattern)>,
}

impl Subscription {
    pub fn matches(&self, envelope: &Envelope) -> bool {
        self.wants(&envelope.source, &envelope.event_type)
    }

    /// Whether events of `source` and `event_type` reach this consumer.
    pub fn wants(&self, source: &str, event_type: &str) -> bool {
        self.filters
            .iter()
            .any(|(from, pattern)| from == source && pattern.matches(event_type))
    }

    /// One subscription per consumer, gathered from every route naming it.
    pub fn from_config(config: &crate::config::Config) -> Vec<Subscription> {
        config
            .consumers
            .keys()
            .map(|consumer| Subscription::of(config, consumer))
            .collect()
    }

    /// What the routes of `config` send `consumer`.
    pub fn of(config: &crate::config::Config, consumer: &str) -> Subscription {
        Subscription {
            consumer: consumer.to_owned(),
            filters: config
                .routes
                .iter()
                .filter(|route| route.consumers.iter().any(|name| name == consumer))
                .flat_map(|route| {
                    route
                        .events
                        .iter()
                        .map(|pattern| (route.source.clone(), pattern.clone()))
                })
                .collect(),
        }
    }
}

/// A consumer as the bus needs to know it.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub subscription: Subscription,
    /// Worker slots per process (JetStream sizes `max_ack_pending` by it).
    pub concurrency: usize,
}

impl Subscriber {
    /// Every consumer of `config` with what it receives.
    pub fn from_config(config: &crate::config::Config) -> Vec<Subscriber> {
        Subscription::from_config(config)
            .into_iter()
            .map(|subscription| Subscriber {
                concurrency: config.consumers[&subscription.consumer].concurrency,
                subscription,
            })
            .collect()
    }
}

/// Whether `envelope` is part of a history replay of `source` events whose
/// type matches `pattern`, received in `[since_ms, until_ms)`. Copies made by
/// forced replays are not history: their original is.
pub(crate) fn in_history(
    envelope: &Envelope,
    source: &str,
    pattern: &EventPattern,
    since_ms: u64,
    until_ms: u64,
) -> bool {
    envelope.generation.is_none()
        && envelope.source == source
        && pattern.matches(&envelope.event_type)
        && (since_ms..until_ms).contains(&envelope.received_at_ms)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// First time this `<source>:<event id>` was seen: now durable.
    Stored,
    /// Seen before within the dedup window: already durable, nothing written.
    Duplicate,
}

/// The two parking places for events that will not be retried. An event in
/// either is *parked* ([`ParkedEvent`], [`Bus::park`]); the dead-letter queue
/// is one of the two, not a name for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParkQueue {
    /// Gave up: rejected by the plugin or out of attempts.
    DeadLetter,
    /// Needs a human decision (e.g. a payment matching no order).
    Review,
}

/// Each consumer has two queues. Events arriving from ingest wait in the live
/// lane; events queued again by an operator (dead-letter and history
/// replays) wait in the replay lane, which dispatch drains with its own
/// small concurrency so a big replay cannot starve live traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    Live,
    Replay,
}

impl Lane {
    pub const ALL: [Lane; 2] = [Lane::Live, Lane::Replay];
}

/// An event leased to a consumer. Settle it with exactly one of `ack`,
/// `retry` or `park`; if the process dies first, it comes back.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub consumer: Arc<str>,
    /// The queue it came from; a retry goes back to the same one.
    pub lane: Lane,
    pub envelope: Arc<Envelope>,
    /// 1 on the first delivery, 2 on the second, ...
    pub attempt: u32,
    pub handle: DeliveryHandle,
}

/// Engine-specific identity of a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryHandle {
    Embedded { due_ms: u64, seq: u64 },
    Nats(nats::NatsLease),
}

/// An event parked in a dead-letter or review queue.
#[derive(Debug, Clone)]
pub struct ParkedEvent {
    /// Identifies the entry within its consumer's queue (for replay/discard).
    pub id: u64,
    pub consumer: String,
    pub queue: ParkQueue,
    pub envelope: Envelope,
    pub attempts: u32,
    pub reason: String,
    pub at_ms: u64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error("bus storage is unavailable: {0}")]
    Unavailable(String),
    #[error("bus holds a message this build cannot read: {0}")]
    Corrupt(#[from] EnvelopeError),
    #[error("unknown consumer `{0}`")]
    UnknownConsumer(String),
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Persists an event for every consumer subscribed to it. Returns only
    /// after the event is durable (or known from before).
    async fn append(&self, envelope: &Envelope) -> Result<Appended, BusError>;

    /// Leases up to `max` due deliveries from one lane of `consumer`,
    /// waiting up to `wait` for the first one. May return fewer, or none
    /// after `wait`.
    async fn pull(
        &self,
        consumer: &str,
        lane: Lane,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BusError>;

    /// Renews the lease: the delivery stays ours for another visibility
    /// timeout from now. `Ok(false)` when the lease is known lost (it
    /// expired and the event moved on); the handle may change.
    async fn extend(&self, delivery: &mut Delivery) -> Result<bool, BusError>;

    /// Done: the delivery leaves the consumer's queue.
    async fn ack(&self, delivery: &Delivery) -> Result<(), BusError>;

    /// Gives a delivery back untouched: due now, and this delivery does not
    /// count as an attempt (the consumer was paused after pulling it).
    async fn release(&self, delivery: &Delivery) -> Result<(), BusError>;

    /// Redeliver no earlier than `delay` from now.
    async fn retry(&self, delivery: &Delivery, delay: Duration) -> Result<(), BusError>;

    /// Moves the delivery to a dead-letter or review queue, durably.
    async fn park(
        &self,
        delivery: &Delivery,
        queue: ParkQueue,
        reason: &str,
    ) -> Result<(), BusError>;

    /// Replaces which consumers exist and what they receive (a reload).
    /// Appends from now on follow the new routes; events already queued stay
    /// queued, also for a consumer that was removed.
    async fn resubscribe(&self, subscribers: &[Subscriber]) -> Result<(), BusError>;

    /// Checks the engine can serve (for `/readyz`).
    async fn ping(&self) -> Result<(), BusError>;
}

/// What an engine did in one round of housekeeping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Housekeeping {
    /// Ingest dedup ids older than the window, forgotten.
    pub dedup_expired: usize,
    /// Settled events older than the retention, deleted.
    pub compacted: usize,
}

/// The operator's side of an engine: counts, parked entries, history and
/// replays (the admin API), and the engine's periodic housekeeping.
#[async_trait]
pub trait BusAdmin: Send + Sync + 'static {
    /// How many entries one queue of a consumer holds (without reading them).
    async fn parked_count(&self, consumer: &str, queue: ParkQueue) -> Result<u64, BusError>;

    /// Everything parked in one queue of a consumer, oldest first.
    async fn dead_letters(
        &self,
        consumer: &str,
        queue: ParkQueue,
    ) -> Result<Vec<ParkedEvent>, BusError>;

    /// Stored events found altered at rest since start (each parked in its
    /// consumer's dead-letter queue instead of delivered). JetStream checks
    /// its own file store, so only the embedded engine counts here.
    fn integrity_failures(&self) -> u64 {
        0
    }

    /// What the engine's single writer has done, where it has one (the
    /// embedded engine; JetStream's server does its own writing).
    fn writer_counts(&self) -> Option<crate::durable::WriterCounts> {
        None
    }

    /// Events still waiting for `consumer` (due, delayed or leased), both lanes.
    async fn backlog(&self, consumer: &str) -> Result<u64, BusError>;

    /// How long the oldest event waiting for `consumer` has waited.
    async fn oldest_pending_age(&self, consumer: &str) -> Result<Option<Duration>, BusError>;

    /// Moves parked entries into the consumer's replay lane as new deliveries
    /// (attempts start again). Unknown ids are skipped. Returns how many moved.
    async fn requeue_dead(
        &self,
        consumer: &str,
        queue: ParkQueue,
        ids: &[u64],
    ) -> Result<usize, BusError>;

    /// Events in the log's history for `consumer` to receive again: events
    /// of `source` whose type matches `pattern`, received in `[since_ms,
    /// until_ms)`, oldest first, as ids for [`BusAdmin::requeue_history`].
    async fn history(
        &self,
        consumer: &str,
        source: &str,
        pattern: &EventPattern,
        since_ms: u64,
        until_ms: u64,
    ) -> Result<Vec<u64>, BusError>;

    /// Queues history events (ids from [`BusAdmin::history`]) in `consumer`'s
    /// replay lane. They go through the consumer's idempotency keys like any
    /// delivery, so effects already applied are skipped; with `force` they
    /// go as a new generation of the event (its own keys), so they apply
    /// again. Unknown ids are skipped. Returns how many were queued.
    async fn requeue_history(
        &self,
        consumer: &str,
        ids: &[u64],
        force: bool,
    ) -> Result<usize, BusError>;

    /// Deletes parked entries for good. Returns how many were deleted.
    async fn discard_dead(
        &self,
        consumer: &str,
        queue: ParkQueue,
        ids: &[u64],
    ) -> Result<usize, BusError>;

    /// Periodic housekeeping the engine needs from its host (the hub's
    /// janitor calls it every minute): dedup ids past the window, events
    /// past the retention. JetStream keeps its own dedup window and max
    /// age, so the default does nothing.
    async fn housekeep(&self) -> Result<Housekeeping, BusError> {
        Ok(Housekeeping::default())
    }
}

/// An engine: the data path and the operator's side of one bus. The hub
/// holds it and hands each stage the part it needs.
pub trait Engine: Bus + BusAdmin {}

impl<T: Bus + BusAdmin> Engine for T {}
