//! The embedded bus engine: an append-only event log and per-consumer queues
//! in one redb file, written through a group-committing writer.
//!
//! Tables:
//! - `events`: seq → encoded envelope (the log).
//! - `dedup`: `<source>:<event id>` → received-at ms; `dedup_expiry` indexes it
//!   by time so the janitor can forget ids older than the dedup window.
//! - `schedule`: (queue, due ms, seq) → deliveries so far, where the queue is
//!   `<consumer>` (the live lane) or `<consumer>:replay`. One row per
//!   outstanding (queue, event). Due rows are pulled; pulling moves the row
//!   to `now + visibility timeout` and marks it leased (the [`LEASED`] bit
//!   of the value): that is the lease, which its holder renews while the
//!   call runs. A holder that dies simply lets it come due again; a restart
//!   makes the previous run's leases due at once (nobody holds them: the
//!   file belongs to one process).
//! - `dead`: (consumer, queue, seq) → why, attempts, and a copy of the envelope.
//!   `dead_by_event` indexes it by (consumer, `<source>:<event id>`): one entry
//!   per consumer and event, whatever its generation (a forced replay is a
//!   new log entry) or queue; a new failure replaces the old entry.
//! - `refs`: seq → how many `schedule` rows still point at the event.
//! - `settled`: the seqs no `schedule` row points at any more, oldest first.
//!   The janitor deletes the events past the retention from it, however many
//!   older events still wait for a paused consumer, so history stays
//!   replayable for the retention and the log does not grow without bound.
//!
//! Appends and dead letters are durable before they answer; leases, acks and
//! retry delays are committed lazily (a crash rolls them back, and that only
//! causes a redelivery, which idempotency keys absorb).
//!
//! [`rows`] holds the row-level steps transactions share (parking, the
//! reference counts, the one-time index builds); [`admin`] answers the
//! operator's queries and runs the housekeeping.

mod admin;
mod rows;

use super::*;
use crate::durable::{DurableError, EmptyStore, GroupCommit, Persist};
use redb::{ReadableTable, TableDefinition};
use rows::*;
use std::collections::HashMap;
use std::path::Path;
use std::sync::RwLock;
use tokio::sync::Notify;

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const DEDUP: TableDefinition<&str, u64> = TableDefinition::new("dedup");
const DEDUP_EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("dedup_expiry");
const SCHEDULE: TableDefinition<(&str, u64, u64), u32> = TableDefinition::new("schedule");
const DEAD: TableDefinition<(&str, u8, u64), &[u8]> = TableDefinition::new("dead");
const DEAD_BY_EVENT: TableDefinition<(&str, &str), (u8, u64)> =
    TableDefinition::new("dead_by_event");
const REFS: TableDefinition<u64, u32> = TableDefinition::new("refs");
const SETTLED: TableDefinition<u64, ()> = TableDefinition::new("settled");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_SEQ: &str = "next_seq";
/// Set once `settled` indexes every settled event (built at the first open
/// by a build that has it).
const SETTLED_INDEXED: &str = "settled_indexed";
/// Set once `dead_by_event` indexes every parked entry (likewise).
const DEAD_INDEXED: &str = "dead_indexed";

/// Most events one [`EmbeddedBus::compact`] call deletes (one transaction);
/// the janitor calls it again until a call deletes fewer.
pub const COMPACT_BATCH: usize = 10_000;

/// Set in a `schedule` value while the row is a lease rather than a wait.
const LEASED: u32 = 1 << 31;

/// Settings of the embedded engine (from `[bus]`).
#[derive(Debug, Clone)]
pub struct EmbeddedSettings {
    pub visibility_timeout: Duration,
    pub dedup_window: Duration,
    /// How long settled events stay in the log (for replay).
    pub retention: Duration,
    /// Whether a vanished log may be replaced by an empty one.
    pub empty_store: EmptyStore,
}

pub struct EmbeddedBus {
    store: GroupCommit,
    /// Replaced whole on a reload; appends read a snapshot.
    subscriptions: RwLock<Arc<Vec<Subscription>>>,
    /// Wakes a consumer's pull loop when something becomes due for it. A
    /// consumer removed by a reload keeps its entry (and its queue).
    wakers: RwLock<HashMap<String, Arc<Notify>>>,
    settings: EmbeddedSettings,
    /// Stored events found altered at rest (and parked instead).
    integrity_failures: std::sync::atomic::AtomicU64,
}

fn unavailable(err: DurableError) -> BusError {
    BusError::Unavailable(err.to_string())
}

fn storage(err: impl Into<redb::Error>) -> BusError {
    BusError::Unavailable(err.into().to_string())
}

/// The `schedule` key of one lane of a consumer (consumer names cannot
/// contain `:`).
fn lane_queue(consumer: &str, lane: Lane) -> String {
    match lane {
        Lane::Live => consumer.to_owned(),
        Lane::Replay => format!("{consumer}:replay"),
    }
}

fn queue_code(queue: ParkQueue) -> u8 {
    match queue {
        ParkQueue::DeadLetter => 0,
        ParkQueue::Review => 1,
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct DeadMeta {
    attempts: u32,
    reason: String,
    at_ms: u64,
}

impl EmbeddedBus {
    /// Opens `<dir>/bus.redb`, creating it if needed. `subscriptions` decide
    /// which consumer queues an appended event enters.
    pub fn open(
        dir: &Path,
        subscriptions: Vec<Subscription>,
        settings: EmbeddedSettings,
    ) -> Result<EmbeddedBus, BusError> {
        let store =
            GroupCommit::open(&dir.join("bus.redb"), settings.empty_store).map_err(unavailable)?;
        let txn = store.begin_setup().map_err(unavailable)?;
        {
            // Create every table up front so readers never meet a missing one.
            txn.open_table(EVENTS).map_err(storage)?;
            txn.open_table(DEDUP).map_err(storage)?;
            txn.open_table(DEDUP_EXPIRY).map_err(storage)?;
            txn.open_table(SCHEDULE).map_err(storage)?;
            txn.open_table(DEAD).map_err(storage)?;
            txn.open_table(DEAD_BY_EVENT).map_err(storage)?;
            txn.open_table(REFS).map_err(storage)?;
            txn.open_table(SETTLED).map_err(storage)?;
            txn.open_table(META).map_err(storage)?;
        }
        index_settled_events(&txn).map_err(storage)?;
        index_dead_entries(&txn).map_err(storage)?;
        let released = release_abandoned_leases(&txn).map_err(storage)?;
        txn.commit().map_err(storage)?;
        if released > 0 {
            tracing::info!(
                released,
                "deliveries leased by the previous run are due again"
            );
        }
        let bus = EmbeddedBus {
            store,
            subscriptions: RwLock::default(),
            wakers: RwLock::default(),
            settings,
            integrity_failures: Default::default(),
        };
        bus.subscribe(subscriptions);
        Ok(bus)
    }

    /// See [`GroupCommit::inject_commit_failures`] (`testing` feature).
    #[cfg(feature = "testing")]
    pub fn inject_commit_failures(&self, on: bool) {
        self.store.inject_commit_failures(on);
    }

    fn subscribe(&self, subscriptions: Vec<Subscription>) {
        let mut wakers = self.wakers.write().expect("wakers lock");
        for subscription in &subscriptions {
            for lane in Lane::ALL {
                wakers
                    .entry(lane_queue(&subscription.consumer, lane))
                    .or_default();
            }
        }
        *self.subscriptions.write().expect("subscriptions lock") = Arc::new(subscriptions);
    }

    /// The waker of one lane's queue; unknown consumers are an error.
    fn waker(&self, consumer: &str, lane: Lane) -> Result<Arc<Notify>, BusError> {
        self.wakers
            .read()
            .expect("wakers lock")
            .get(&lane_queue(consumer, lane))
            .cloned()
            .ok_or_else(|| BusError::UnknownConsumer(consumer.to_owned()))
    }

    /// Leases due rows of one lane now; answers what it leased. A row whose
    /// stored bytes fail their checksum is not handed out: it is parked in
    /// the consumer's dead-letter queue with the reason (and counted), so
    /// altered bytes never reach a plugin.
    async fn lease_due(
        &self,
        consumer: &str,
        lane: Lane,
        max: usize,
    ) -> Result<Vec<(u64, u64, u32, Vec<u8>)>, BusError> {
        let consumer_name = consumer.to_owned();
        let queue_key = lane_queue(consumer, lane);
        let visibility = self.settings.visibility_timeout.as_millis() as u64;
        let (leased, damaged) = self
            .store
            .write(Persist::Lazy, move |txn| {
                let now = now_ms();
                let lease_until = now + visibility;
                let mut schedule = txn.open_table(SCHEDULE)?;
                let due: Vec<(u64, u64, u32)> = schedule
                    .range((queue_key.as_str(), 0, 0)..=(queue_key.as_str(), now, u64::MAX))?
                    .take(max)
                    .map(|row| {
                        let (key, deliveries) = row?;
                        let (_, due, seq) = key.value();
                        Ok::<_, redb::StorageError>((due, seq, deliveries.value() & !LEASED))
                    })
                    .collect::<Result<_, _>>()?;
                let events = txn.open_table(EVENTS)?;
                let mut leased = Vec::with_capacity(due.len());
                let mut damaged = Vec::new();
                for (due, seq, deliveries) in due {
                    schedule.remove((queue_key.as_str(), due, seq))?;
                    let Some(bytes) = events.get(seq)? else {
                        // The log lost the event (cannot happen short of
                        // manual edits); the row would otherwise spin forever.
                        continue;
                    };
                    let bytes = bytes.value().to_vec();
                    if let Err(damage) = Envelope::verify(&bytes) {
                        let reason = format!("not delivered: {damage}");
                        let event = Envelope::decode_unverified(&bytes)
                            .map(|(envelope, _)| event_key(&envelope))
                            .unwrap_or_else(|_| format!("damaged:{seq}"));
                        park(
                            txn,
                            &consumer_name,
                            ParkQueue::DeadLetter,
                            seq,
                            &event,
                            deliveries,
                            reason.clone(),
                            &bytes,
                        )?;
                        release_ref(txn, seq)?;
                        damaged.push((seq, reason));
                        continue;
                    }
                    schedule.insert(
                        (queue_key.as_str(), lease_until, seq),
                        (deliveries + 1) | LEASED,
                    )?;
                    leased.push((lease_until, seq, deliveries + 1, bytes));
                }
                Ok((leased, damaged))
            })
            .await
            .map_err(unavailable)?;
        for (seq, reason) in &damaged {
            self.integrity_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(
                consumer,
                seq,
                reason,
                "stored event failed its integrity check; parked in the dead-letter queue"
            );
        }
        Ok(leased)
    }

    /// When the next row of `consumer` comes due, if it has any.
    fn next_due(&self, consumer: &str) -> Result<Option<u64>, BusError> {
        let txn = self.store.read().map_err(unavailable)?;
        let schedule = txn.open_table(SCHEDULE).map_err(storage)?;
        let first = schedule
            .range((consumer, 0, 0)..=(consumer, u64::MAX, u64::MAX))
            .map_err(storage)?
            .next();
        match first {
            Some(row) => Ok(Some(row.map_err(storage)?.0.value().1)),
            None => Ok(None),
        }
    }

    /// Moves a leased row's expiry to `now + visibility timeout`. `false`
    /// if the lease had already expired and the row moved on.
    async fn extend_lease(&self, delivery: &mut Delivery) -> Result<bool, BusError> {
        let DeliveryHandle::Embedded { due_ms, seq } = delivery.handle else {
            panic!("a delivery of another engine was renewed on the embedded engine");
        };
        let queue_key = lane_queue(&delivery.consumer, delivery.lane);
        let visibility = self.settings.visibility_timeout.as_millis() as u64;
        let renewed = self
            .store
            .write(Persist::Lazy, move |txn| {
                let mut schedule = txn.open_table(SCHEDULE)?;
                let removed = schedule
                    .remove((queue_key.as_str(), due_ms, seq))?
                    .map(|v| v.value());
                let Some(value) = removed else {
                    return Ok(None);
                };
                let lease_until = (now_ms() + visibility).max(due_ms);
                schedule.insert((queue_key.as_str(), lease_until, seq), value)?;
                Ok(Some(lease_until))
            })
            .await
            .map_err(unavailable)?;
        Ok(match renewed {
            Some(lease_until) => {
                delivery.handle = DeliveryHandle::Embedded {
                    due_ms: lease_until,
                    seq,
                };
                true
            }
            None => false,
        })
    }

    /// Moves a leased row: to a new due time, or out of the queue.
    async fn settle(
        &self,
        delivery: &Delivery,
        sync: Persist,
        next: Settle,
    ) -> Result<bool, BusError> {
        let DeliveryHandle::Embedded { due_ms, seq } = delivery.handle else {
            panic!("a delivery of another engine was settled on the embedded engine");
        };
        let queue_key = lane_queue(&delivery.consumer, delivery.lane);
        let consumer = delivery.consumer.to_string();
        // Only a parked entry keeps a copy of the envelope: an ack, a
        // release or a retry need not pay for encoding it.
        let envelope = match next {
            Settle::Park(..) => delivery.envelope.encode(),
            _ => Vec::new(),
        };
        let attempts = delivery.attempt;
        let event = event_key(&delivery.envelope);
        let settled = self
            .store
            .write(sync, move |txn| {
                let mut schedule = txn.open_table(SCHEDULE)?;
                let removed = schedule
                    .remove((queue_key.as_str(), due_ms, seq))?
                    .map(|v| v.value() & !LEASED);
                let Some(deliveries) = removed else {
                    // The lease expired and the row moved on: someone else
                    // owns this event now, so this holder must not touch it.
                    return Ok(false);
                };
                if matches!(next, Settle::Ack | Settle::Park(..)) {
                    release_ref(txn, seq)?;
                }
                match next {
                    Settle::Ack => {}
                    Settle::RetryAt(at_ms) => {
                        schedule.insert((queue_key.as_str(), at_ms, seq), deliveries)?;
                    }
                    Settle::Release => {
                        let undo = deliveries.saturating_sub(1);
                        schedule.insert((queue_key.as_str(), now_ms(), seq), undo)?;
                    }
                    Settle::Park(queue, reason) => {
                        park(
                            txn, &consumer, queue, seq, &event, attempts, reason, &envelope,
                        )?;
                    }
                }
                Ok(true)
            })
            .await
            .map_err(unavailable)?;
        if !settled {
            tracing::warn!(
                consumer = %delivery.consumer,
                event_id = %delivery.envelope.event_id,
                "delivery settled after its lease expired; left to the new holder"
            );
        }
        Ok(settled)
    }

    /// Deletes settled events older than the retention, at most `limit`,
    /// oldest first. Events still waiting for a consumer are kept whatever
    /// their age, and do not hold back the deletion of younger settled
    /// ones. Returns how many were deleted.
    pub async fn compact(&self, limit: usize) -> Result<usize, BusError> {
        let cutoff = now_ms().saturating_sub(self.settings.retention.as_millis() as u64);
        self.store
            .write(Persist::Lazy, move |txn| {
                let mut events = txn.open_table(EVENTS)?;
                let mut settled = txn.open_table(SETTLED)?;
                let refs = txn.open_table(REFS)?;
                let candidates: Vec<u64> = settled
                    .iter()?
                    .take(limit)
                    .map(|row| row.map(|(seq, _)| seq.value()))
                    .collect::<Result<_, _>>()?;
                let mut deleted = 0;
                for seq in candidates {
                    // Queued again by a replay since it settled: not settled.
                    if refs.get(seq)?.is_some() {
                        settled.remove(seq)?;
                        continue;
                    }
                    let received_at = match events.get(seq)? {
                        Some(bytes) => Envelope::decode(bytes.value())
                            .map(|e| e.received_at_ms)
                            .unwrap_or(0),
                        None => {
                            settled.remove(seq)?;
                            continue;
                        }
                    };
                    // Seqs follow arrival: the first young event ends the scan.
                    if received_at >= cutoff {
                        break;
                    }
                    events.remove(seq)?;
                    settled.remove(seq)?;
                    deleted += 1;
                }
                Ok(deleted)
            })
            .await
            .map_err(unavailable)
    }

    /// Forgets dedup entries older than the window, at most `limit`.
    /// Returns how many.
    pub async fn expire_dedup(&self, limit: usize) -> Result<usize, BusError> {
        let cutoff = now_ms().saturating_sub(self.settings.dedup_window.as_millis() as u64);
        self.store
            .write(Persist::Lazy, move |txn| {
                let mut expiry = txn.open_table(DEDUP_EXPIRY)?;
                let mut dedup = txn.open_table(DEDUP)?;
                let old: Vec<(u64, String)> = expiry
                    .range((0, "")..(cutoff, ""))?
                    .take(limit)
                    .map(|row| row.map(|(key, _)| (key.value().0, key.value().1.to_owned())))
                    .collect::<Result<_, _>>()?;
                for (at, key) in &old {
                    expiry.remove((*at, key.as_str()))?;
                    dedup.remove(key.as_str())?;
                }
                Ok(old.len())
            })
            .await
            .map_err(unavailable)
    }
}

#[async_trait]
impl Bus for EmbeddedBus {
    async fn append(&self, envelope: &Envelope) -> Result<Appended, BusError> {
        let subscriptions = Arc::clone(&self.subscriptions.read().expect("subscriptions lock"));
        let consumers: Vec<String> = subscriptions
            .iter()
            .filter(|s| s.matches(envelope))
            .map(|s| s.consumer.clone())
            .collect();
        let key = envelope.dedup_key();
        let bytes = envelope.encode();
        let received_at = envelope.received_at_ms;
        let woken = consumers.clone();
        let appended = self
            .store
            .write(Persist::Durable, move |txn| {
                let mut dedup = txn.open_table(DEDUP)?;
                if dedup.get(key.as_str())?.is_some() {
                    return Ok(Appended::Duplicate);
                }
                dedup.insert(key.as_str(), received_at)?;
                txn.open_table(DEDUP_EXPIRY)?
                    .insert((received_at, key.as_str()), ())?;
                let seq = append_log(txn, &bytes)?;
                let mut schedule = txn.open_table(SCHEDULE)?;
                let now = now_ms();
                for consumer in &consumers {
                    schedule.insert((consumer.as_str(), now, seq), 0)?;
                }
                if consumers.is_empty() {
                    txn.open_table(SETTLED)?.insert(seq, ())?;
                } else {
                    txn.open_table(REFS)?.insert(seq, consumers.len() as u32)?;
                }
                Ok(Appended::Stored)
            })
            .await
            .map_err(unavailable)?;
        if appended == Appended::Stored {
            for consumer in woken {
                if let Ok(waker) = self.waker(&consumer, Lane::Live) {
                    waker.notify_one();
                }
            }
        }
        Ok(appended)
    }

    async fn pull(
        &self,
        consumer: &str,
        lane: Lane,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BusError> {
        let waker = self.waker(consumer, lane)?;
        let queue = lane_queue(consumer, lane);
        let deadline = tokio::time::Instant::now() + wait;
        let consumer_name: Arc<str> = Arc::from(consumer);
        loop {
            let leased = self.lease_due(consumer, lane, max.max(1)).await?;
            if !leased.is_empty() {
                return leased
                    .into_iter()
                    .map(|(due_ms, seq, attempt, bytes)| {
                        Ok(Delivery {
                            consumer: Arc::clone(&consumer_name),
                            lane,
                            envelope: Arc::new(Envelope::decode(&bytes)?),
                            attempt,
                            handle: DeliveryHandle::Embedded { due_ms, seq },
                        })
                    })
                    .collect();
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let mut sleep_until = deadline;
            if let Some(due) = self.next_due(&queue)? {
                let in_ms = due.saturating_sub(now_ms());
                sleep_until = sleep_until.min(now + Duration::from_millis(in_ms));
            }
            tokio::select! {
                _ = waker.notified() => {}
                _ = tokio::time::sleep_until(sleep_until) => {}
            }
        }
    }

    async fn extend(&self, delivery: &mut Delivery) -> Result<bool, BusError> {
        self.extend_lease(delivery).await
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), BusError> {
        self.settle(delivery, Persist::Lazy, Settle::Ack)
            .await
            .map(drop)
    }

    async fn release(&self, delivery: &Delivery) -> Result<(), BusError> {
        self.settle(delivery, Persist::Lazy, Settle::Release)
            .await?;
        self.waker(&delivery.consumer, delivery.lane)?.notify_one();
        Ok(())
    }

    async fn retry(&self, delivery: &Delivery, delay: Duration) -> Result<(), BusError> {
        let at = now_ms() + delay.as_millis() as u64;
        self.settle(delivery, Persist::Lazy, Settle::RetryAt(at))
            .await?;
        self.waker(&delivery.consumer, delivery.lane)?.notify_one();
        Ok(())
    }

    async fn park(
        &self,
        delivery: &Delivery,
        queue: ParkQueue,
        reason: &str,
    ) -> Result<(), BusError> {
        self.settle(
            delivery,
            Persist::Durable,
            Settle::Park(queue, reason.to_owned()),
        )
        .await
        .map(drop)
    }

    async fn resubscribe(&self, subscribers: &[Subscriber]) -> Result<(), BusError> {
        self.subscribe(
            subscribers
                .iter()
                .map(|subscriber| subscriber.subscription.clone())
                .collect(),
        );
        Ok(())
    }

    async fn ping(&self) -> Result<(), BusError> {
        let txn = self.store.read().map_err(unavailable)?;
        txn.open_table(META).map_err(storage)?;
        Ok(())
    }
}
