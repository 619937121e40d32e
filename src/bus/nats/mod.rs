//! The NATS JetStream engine: several switchyard processes share one stream
//! and one durable pull consumer per switchyard consumer.
//!
//! Layout, under the configured subject prefix `P` (default `switchyard`):
//! - stream `<name>` holds `P.events.<source>.<event type tokens>` (what
//!   ingest publishes; Stripe's dots become subject tokens) and
//!   `P.replay.<consumer>` (events queued again for one consumer only: dead
//!   letter replays and history replays);
//! - stream `<name>_DEAD` holds `P.dead.<consumer>.<dead_letter|review>.<event>`,
//!   `<event>` a hash of the event's source and id: parking an event purges
//!   its earlier entry of either queue first, so a consumer has one entry per
//!   event, the latest failure (entries of older builds sit on the queue's
//!   subject itself, without the hash, and are listed too).
//!
//! Every message carries CloudEvents attributes as headers (`ce-id`,
//! `ce-source`, `ce-type`, `ce-time`, `ce-specversion`) and the raw provider
//! JSON as its body, so any NATS client can read the event mesh; the
//! `switchyard-*` headers carry the rest of the [`Envelope`].
//!
//! Delivery semantics map onto JetStream like this: a lease is an unacked
//! delivery (`ack_wait` = the visibility timeout, extended with `+WPI` while a
//! plugin call runs), a retry is `NAK` with a delay, dead-lettering is a
//! publish to the dead stream followed by `TERM`. Ingest dedup is JetStream's
//! `Nats-Msg-Id` window.
//!
//! [`connect`] reaches the servers and declares the streams and durable
//! consumers; [`headers`] is the CloudEvents codec of an envelope; [`admin`] answers the
//! operator's queries (dead letters, history, replays).

mod admin;
mod connect;
mod headers;

pub use connect::probe;

use super::*;
use async_nats::HeaderMap;
use async_nats::jetstream::message::{PublishMessage, StreamMessage};
use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use headers::*;
use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

/// How many unacked deliveries one worker slot may account for across all
/// processes. Deliveries waiting out a retry delay stay unacked in
/// JetStream, so a limit of exactly `concurrency` would let a few failing
/// events block the whole consumer.
const ACK_PENDING_PER_WORKER: i64 = 256;
/// Longest dead-letter reason kept in a header.
const MAX_REASON: usize = 1024;

/// Settings of the JetStream engine (from `[bus]`).
#[derive(Debug, Clone)]
pub struct NatsSettings {
    pub urls: Vec<String>,
    pub stream: String,
    pub subject_prefix: String,
    pub replicas: usize,
    /// Contents of a `.creds` file.
    pub credentials: Option<crate::config::Secret>,
    pub token: Option<crate::config::Secret>,
    pub ack_timeout: Duration,
    pub visibility_timeout: Duration,
    pub dedup_window: Duration,
    pub retention: Duration,
}

/// One switchyard consumer: a durable per lane.
struct Consumer {
    live: jetstream::consumer::Consumer<pull::Config>,
    replay: jetstream::consumer::Consumer<pull::Config>,
    subscription: Subscription,
    /// The live durable's filter subjects.
    filters: Vec<String>,
}

impl Consumer {
    fn lane(&self, lane: Lane) -> &jetstream::consumer::Consumer<pull::Config> {
        match lane {
            Lane::Live => &self.live,
            Lane::Replay => &self.replay,
        }
    }
}

/// The durable name of a lane. Config names are lowercase, so the replay
/// lane's uppercase suffix cannot collide with another consumer.
fn durable_name(consumer: &str, lane: Lane) -> String {
    match lane {
        Lane::Live => consumer.to_owned(),
        Lane::Replay => format!("{consumer}_REPLAY"),
    }
}

pub struct NatsBus {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    events: stream::Stream,
    dead: stream::Stream,
    prefix: String,
    /// Replaced on a reload; a consumer removed from the config keeps its
    /// durable (and its pending events) on the server.
    consumers: RwLock<HashMap<String, Arc<Consumer>>>,
    ack_wait: Duration,
    replicas: usize,
    /// Releases this process made, per (consumer, stream sequence): JetStream
    /// counts a `NAK` as a delivery, but a release must not cost an attempt.
    released: Mutex<HashMap<(Arc<str>, u64), u32>>,
}

/// A leased JetStream message. Cloning shares it; dispatch renews it with
/// `+WPI` ([`Bus::extend`]) while the call runs.
#[derive(Clone)]
pub struct NatsLease {
    message: Arc<jetstream::Message>,
    pub stream_sequence: u64,
}

impl std::fmt::Debug for NatsLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsLease")
            .field("stream_sequence", &self.stream_sequence)
            .finish_non_exhaustive()
    }
}

impl PartialEq for NatsLease {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.message, &other.message)
    }
}

impl Eq for NatsLease {}

/// How long past its own expiry a pull may go unanswered before it is
/// given up as lost.
const PULL_ANSWER_GRACE: Duration = Duration::from_secs(5);

fn unavailable(err: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("nats: {err}"))
}

fn queue_token(queue: ParkQueue) -> &'static str {
    match queue {
        ParkQueue::DeadLetter => "dead_letter",
        ParkQueue::Review => "review",
    }
}

/// Turns an event type into subject tokens: dots separate tokens; characters
/// NATS gives meaning to (wildcards, whitespace) and empty tokens become `_`.
pub fn type_tokens(event_type: &str) -> String {
    event_type
        .split('.')
        .map(|token| {
            let clean: String = token
                .chars()
                .map(|c| {
                    if c == '*' || c == '>' || c.is_whitespace() || c.is_control() {
                        '_'
                    } else {
                        c
                    }
                })
                .collect();
            if clean.is_empty() { "_".into() } else { clean }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The live lane's subject filters for a subscription, without overlaps (JetStream refuses
/// overlapping filters on one consumer).
fn filter_subjects(prefix: &str, subscription: &Subscription) -> Vec<String> {
    let mut subjects: Vec<String> = subscription
        .filters
        .iter()
        .map(|(source, pattern)| {
            let base = format!("{prefix}.events.{source}");
            match pattern {
                EventPattern::Any => format!("{base}.>"),
                EventPattern::Prefix(head) => {
                    format!("{base}.{}.>", type_tokens(head.trim_end_matches('.')))
                }
                EventPattern::Exact(exact) => format!("{base}.{}", type_tokens(exact)),
            }
        })
        .collect();
    subjects.sort();
    subjects.dedup();
    let covered = |subject: &String, by: &String| {
        subject != by
            && by
                .strip_suffix('>')
                .is_some_and(|stem| subject.starts_with(stem))
    };
    subjects
        .iter()
        .filter(|subject| !subjects.iter().any(|other| covered(subject, other)))
        .cloned()
        .collect()
}

impl NatsBus {
    fn consumer(&self, name: &str) -> Result<Arc<Consumer>, BusError> {
        self.consumers
            .read()
            .expect("consumers lock")
            .get(name)
            .cloned()
            .ok_or_else(|| BusError::UnknownConsumer(name.to_owned()))
    }

    fn connected(&self) -> Result<(), BusError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(unavailable(format!("not connected ({state:?})"))),
        }
    }

    fn dead_subject(&self, consumer: &str, queue: ParkQueue) -> String {
        format!("{}.dead.{consumer}.{}", self.prefix, queue_token(queue))
    }

    /// Every parked entry of `consumer`, both queues.
    fn dead_filter(&self, consumer: &str) -> String {
        format!("{}.dead.{consumer}.>", self.prefix)
    }

    /// Whether `subject` is an entry of `consumer`'s `queue`.
    fn in_dead_queue(&self, subject: &str, consumer: &str, queue: ParkQueue) -> bool {
        let queue = self.dead_subject(consumer, queue);
        subject
            .strip_prefix(queue.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    }

    /// Publishes and waits for the stream's ack.
    async fn publish(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: bytes::Bytes,
        message_id: &str,
    ) -> Result<jetstream::publish::PublishAck, BusError> {
        self.connected()?;
        self.jetstream
            .send_publish(
                subject,
                PublishMessage::build()
                    .headers(headers)
                    .payload(payload)
                    .message_id(message_id),
            )
            .await
            .map_err(unavailable)?
            .await
            .map_err(unavailable)
    }

    /// Queues an event again for one consumer only.
    async fn publish_replay(
        &self,
        consumer: &str,
        envelope: &Envelope,
        message_id: &str,
    ) -> Result<(), BusError> {
        self.publish(
            format!("{}.replay.{consumer}", self.prefix),
            envelope_headers(envelope),
            envelope.payload.clone(),
            message_id,
        )
        .await
        .map(drop)
    }

    /// Messages of `subject` in `stream`, from sequence `from` on, one request
    /// each (admin paths only; never on the delivery path).
    async fn next_message(
        stream: &stream::Stream,
        subject: &str,
        from: u64,
    ) -> Result<Option<StreamMessage>, BusError> {
        match stream.get_first_raw_message_by_subject(subject, from).await {
            Ok(message) => Ok(Some(message)),
            Err(err) if err.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(err) => Err(unavailable(err)),
        }
    }

    /// Message `seq` of `stream`, if it is still there.
    async fn message_at(
        stream: &stream::Stream,
        seq: u64,
    ) -> Result<Option<StreamMessage>, BusError> {
        match stream.get_raw_message(seq).await {
            Ok(message) => Ok(Some(message)),
            Err(err) if err.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(err) => Err(unavailable(err)),
        }
    }

    /// Entry `id` of one consumer's dead-letter or review queue, if it is
    /// there (ids of other queues are not).
    async fn parked(
        &self,
        consumer: &str,
        queue: ParkQueue,
        id: u64,
    ) -> Result<Option<StreamMessage>, BusError> {
        Ok(Self::message_at(&self.dead, id)
            .await?
            .filter(|message| self.in_dead_queue(message.subject.as_str(), consumer, queue)))
    }

    fn lease(delivery: &Delivery) -> &NatsLease {
        match &delivery.handle {
            DeliveryHandle::Nats(lease) => lease,
            DeliveryHandle::Embedded { .. } => {
                panic!("a delivery of the embedded engine was settled on the NATS engine")
            }
        }
    }

    async fn settle(&self, delivery: &Delivery, kind: AckKind) -> Result<(), BusError> {
        let lease = Self::lease(delivery);
        if !matches!(kind, AckKind::Nak(None)) {
            self.released
                .lock()
                .expect("released lock")
                .remove(&(Arc::clone(&delivery.consumer), lease.stream_sequence));
        }
        // Confirmed by the server, so `Ok` means settled (one round trip;
        // plugin calls dwarf it).
        lease
            .message
            .double_ack_with(kind)
            .await
            .map_err(unavailable)
    }
}

impl NatsBus {
    /// One pull request: a no-wait fetch when `wait` is zero, otherwise a
    /// batch the server expires after `wait`.
    async fn pull_batch(
        &self,
        consumer: &str,
        lane: Lane,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BusError> {
        let entry = self.consumer(consumer)?;
        self.connected()?;
        let consumer_name: Arc<str> = Arc::from(consumer);
        let batch = if wait.is_zero() {
            entry
                .lane(lane)
                .fetch()
                .max_messages(max.max(1))
                .messages()
                .await
        } else {
            entry
                .lane(lane)
                .batch()
                .max_messages(max.max(1))
                .expires(wait)
                .messages()
                .await
        };
        let mut batch = batch.map_err(unavailable)?;
        let mut deliveries = Vec::new();
        while let Some(message) = futures::StreamExt::next(&mut batch).await {
            let message = message.map_err(unavailable)?;
            let (stream_sequence, delivered) = {
                let info = message.info().map_err(unavailable)?;
                (info.stream_sequence, info.delivered.max(1) as u32)
            };
            let envelope = match envelope_from(message.headers.as_ref(), &message.payload) {
                Ok(envelope) => envelope,
                Err(err) => {
                    // Not ours to read (a foreign publisher on our subjects):
                    // stop it from coming back, loudly.
                    tracing::error!(consumer, stream_sequence, error = %err, "unreadable message terminated");
                    message.ack_with(AckKind::Term).await.map_err(unavailable)?;
                    continue;
                }
            };
            // A route changed while the message waited: not for us any more.
            let replayed = message
                .subject
                .starts_with(&format!("{}.replay.", self.prefix));
            if !replayed && !entry.subscription.matches(&envelope) {
                message.ack().await.map_err(unavailable)?;
                continue;
            }
            let released = self
                .released
                .lock()
                .expect("released lock")
                .get(&(Arc::clone(&consumer_name), stream_sequence))
                .copied()
                .unwrap_or(0);
            let message = Arc::new(message);
            deliveries.push(Delivery {
                consumer: Arc::clone(&consumer_name),
                lane,
                envelope: Arc::new(envelope),
                attempt: delivered.saturating_sub(released).max(1),
                handle: DeliveryHandle::Nats(NatsLease {
                    message,
                    stream_sequence,
                }),
            });
        }
        Ok(deliveries)
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn append(&self, envelope: &Envelope) -> Result<Appended, BusError> {
        let subject = format!(
            "{}.events.{}.{}",
            self.prefix,
            envelope.source,
            type_tokens(&envelope.event_type)
        );
        let ack = self
            .publish(
                subject,
                envelope_headers(envelope),
                envelope.payload.clone(),
                &envelope.dedup_key(),
            )
            .await?;
        Ok(if ack.duplicate {
            Appended::Duplicate
        } else {
            Appended::Stored
        })
    }

    async fn pull(
        &self,
        consumer: &str,
        lane: Lane,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BusError> {
        // A waiting request for several messages holds the first one back
        // until all `max` came or `wait` passed: take what is there now,
        // and only when nothing is, wait for one.
        if max > 1 && !wait.is_zero() {
            let ready = self.pull(consumer, lane, max, Duration::ZERO).await?;
            if !ready.is_empty() {
                return Ok(ready);
            }
            return self.pull(consumer, lane, 1, wait).await;
        }
        // A pull whose request reached a server that then died (a cluster
        // losing its leader) is never answered: bound it, so the consumer
        // loop sees an error and pulls again instead of waiting forever.
        // Messages already received when it gives up come back after
        // their ack wait.
        let answer_within = wait + PULL_ANSWER_GRACE;
        tokio::time::timeout(answer_within, self.pull_batch(consumer, lane, max, wait))
            .await
            .unwrap_or_else(|_| {
                Err(unavailable(format!(
                    "no answer to a pull within {}",
                    humantime::format_duration(answer_within)
                )))
            })
    }

    /// `+WPI`, confirmed by the server: it restarts the `ack_wait` clock.
    /// JetStream does not say whether the message was redelivered meanwhile,
    /// so only a failed round trip counts as a lost lease.
    async fn extend(&self, delivery: &mut Delivery) -> Result<bool, BusError> {
        Self::lease(delivery)
            .message
            .double_ack_with(AckKind::Progress)
            .await
            .map(|()| true)
            .map_err(unavailable)
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), BusError> {
        self.settle(delivery, AckKind::Ack).await
    }

    async fn release(&self, delivery: &Delivery) -> Result<(), BusError> {
        let sequence = Self::lease(delivery).stream_sequence;
        *self
            .released
            .lock()
            .expect("released lock")
            .entry((Arc::clone(&delivery.consumer), sequence))
            .or_default() += 1;
        self.settle(delivery, AckKind::Nak(None)).await
    }

    async fn retry(&self, delivery: &Delivery, delay: Duration) -> Result<(), BusError> {
        self.settle(delivery, AckKind::Nak(Some(delay))).await
    }

    async fn park(
        &self,
        delivery: &Delivery,
        queue: ParkQueue,
        reason: &str,
    ) -> Result<(), BusError> {
        let lease = Self::lease(delivery);
        let mut headers = envelope_headers(&delivery.envelope);
        let mut reason = header_value(reason);
        if reason.len() > MAX_REASON {
            let mut cut = MAX_REASON;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        headers.insert(H_REASON, reason.as_str());
        headers.insert(H_ATTEMPTS, delivery.attempt.to_string().as_str());
        headers.insert(H_DEAD_AT, now_ms().to_string().as_str());
        let delivered = lease.message.info().map_err(unavailable)?.delivered;
        // One entry per (consumer, event): the earlier one goes first (a
        // crash in between leaves the event leased, so it is parked again).
        let event = dead_event_token(&delivery.envelope);
        self.dead
            .purge()
            .filter(format!(
                "{}.dead.{}.*.{event}",
                self.prefix, delivery.consumer
            ))
            .await
            .map_err(unavailable)?;
        // Unique per delivery: a crash between publish and TERM re-publishes
        // the same id, which the dead stream drops as a duplicate.
        let message_id = format!(
            "{}:{}:{}",
            delivery.consumer, lease.stream_sequence, delivered
        );
        self.publish(
            format!("{}.{event}", self.dead_subject(&delivery.consumer, queue)),
            headers,
            delivery.envelope.payload.clone(),
            &message_id,
        )
        .await?;
        self.settle(delivery, AckKind::Term).await
    }

    async fn resubscribe(&self, subscribers: &[Subscriber]) -> Result<(), BusError> {
        let mut consumers = HashMap::new();
        for subscriber in subscribers {
            let name = subscriber.subscription.consumer.clone();
            let filters = filter_subjects(&self.prefix, &subscriber.subscription);
            let live = self
                .durable(&name, Lane::Live, filters.clone(), subscriber.concurrency)
                .await?;
            let replay = self
                .durable(
                    &name,
                    Lane::Replay,
                    vec![format!("{}.replay.{name}", self.prefix)],
                    subscriber.concurrency,
                )
                .await?;
            consumers.insert(
                name,
                Arc::new(Consumer {
                    live,
                    replay,
                    subscription: subscriber.subscription.clone(),
                    filters,
                }),
            );
        }
        *self.consumers.write().expect("consumers lock") = consumers;
        Ok(())
    }

    async fn ping(&self) -> Result<(), BusError> {
        self.connected()?;
        self.jetstream
            .get_stream_no_info(&self.events.cached_info().config.name)
            .await
            .map(drop)
            .map_err(unavailable)
    }
}

/// The last token of a parked entry's subject: the event's source and id,
/// hashed (ids may hold characters a subject cannot).
fn dead_event_token(envelope: &Envelope) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{}:{}", envelope.source, envelope.event_id));
    hex::encode(&digest[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_become_safe_subject_tokens() {
        assert_eq!(type_tokens("invoice.paid"), "invoice.paid");
        assert_eq!(
            type_tokens("customer.subscription.updated"),
            "customer.subscription.updated"
        );
        assert_eq!(type_tokens("a..b"), "a._.b");
        assert_eq!(type_tokens("x.*.>"), "x._._");
        assert_eq!(type_tokens("has space"), "has_space");
    }

    #[test]
    fn filters_do_not_overlap() {
        let subscription = Subscription {
            consumer: "crm".into(),
            filters: vec![
                (
                    "stripe".into(),
                    EventPattern::parse("invoice.paid").unwrap(),
                ),
                ("stripe".into(), EventPattern::parse("invoice.*").unwrap()),
                (
                    "stripe".into(),
                    EventPattern::parse("customer.created").unwrap(),
                ),
                ("stripe".into(), EventPattern::parse("invoice.*").unwrap()),
                ("other".into(), EventPattern::Any),
            ],
        };
        assert_eq!(
            filter_subjects("sy", &subscription),
            vec![
                "sy.events.other.>",
                "sy.events.stripe.customer.created",
                "sy.events.stripe.invoice.>",
            ]
        );
    }
}
