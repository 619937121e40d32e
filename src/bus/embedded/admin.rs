//! The operator's side of the embedded engine ([`BusAdmin`]): housekeeping
//! (retention, dedup expiry), counts, lists and takes parked events, history
//! and replays.

use super::*;

#[async_trait]
impl BusAdmin for EmbeddedBus {
    async fn housekeep(&self) -> Result<Housekeeping, BusError> {
        let dedup_expired =
            crate::durable::in_batches(COMPACT_BATCH, || self.expire_dedup(COMPACT_BATCH)).await?;
        let compacted =
            crate::durable::in_batches(COMPACT_BATCH, || self.compact(COMPACT_BATCH)).await?;
        Ok(Housekeeping {
            dedup_expired,
            compacted,
        })
    }

    async fn parked_count(&self, consumer: &str, queue: ParkQueue) -> Result<u64, BusError> {
        let txn = self.store.read().map_err(unavailable)?;
        let dead = txn.open_table(DEAD).map_err(storage)?;
        let code = queue_code(queue);
        let mut count = 0;
        for row in dead
            .range((consumer, code, 0)..=(consumer, code, u64::MAX))
            .map_err(storage)?
        {
            row.map_err(storage)?;
            count += 1;
        }
        Ok(count)
    }

    async fn dead_letters(
        &self,
        consumer: &str,
        queue: ParkQueue,
    ) -> Result<Vec<ParkedEvent>, BusError> {
        let txn = self.store.read().map_err(unavailable)?;
        let dead = txn.open_table(DEAD).map_err(storage)?;
        let code = queue_code(queue);
        let mut out = Vec::new();
        for row in dead
            .range((consumer, code, 0)..=(consumer, code, u64::MAX))
            .map_err(storage)?
        {
            let (key, value) = row.map_err(storage)?;
            let (meta, envelope) = split_dead(value.value())?;
            // A copy damaged at rest is still listed (with its identity),
            // and says so; replaying it parks it again, never delivers it.
            let (envelope, damage) = Envelope::decode_unverified(envelope)?;
            let reason = match damage {
                Some(damage) => format!("{} (and this copy: {damage})", meta.reason),
                None => meta.reason,
            };
            out.push(ParkedEvent {
                id: key.value().2,
                consumer: consumer.to_owned(),
                queue,
                envelope,
                attempts: meta.attempts,
                reason,
                at_ms: meta.at_ms,
            });
        }
        Ok(out)
    }

    async fn oldest_pending_age(&self, consumer: &str) -> Result<Option<Duration>, BusError> {
        // The live lane only: replayed events are old on purpose.
        self.waker(consumer, Lane::Live)?;
        let txn = self.store.read().map_err(unavailable)?;
        let schedule = txn.open_table(SCHEDULE).map_err(storage)?;
        let events = txn.open_table(EVENTS).map_err(storage)?;
        // The lowest seq waiting is the oldest arrival.
        let mut oldest: Option<u64> = None;
        for row in schedule
            .range((consumer, 0, 0)..=(consumer, u64::MAX, u64::MAX))
            .map_err(storage)?
        {
            let seq = row.map_err(storage)?.0.value().2;
            oldest = Some(oldest.map_or(seq, |o| o.min(seq)));
        }
        let Some(seq) = oldest else { return Ok(None) };
        let Some(bytes) = events.get(seq).map_err(storage)? else {
            return Ok(None);
        };
        let received = Envelope::decode(bytes.value())?.received_at_ms;
        Ok(Some(Duration::from_millis(
            now_ms().saturating_sub(received),
        )))
    }

    async fn requeue_dead(
        &self,
        consumer: &str,
        queue: ParkQueue,
        ids: &[u64],
    ) -> Result<usize, BusError> {
        self.waker(consumer, Lane::Live)?;
        let consumer_key = consumer.to_owned();
        let ids = ids.to_vec();
        let moved = self
            .store
            .write(Persist::Durable, move |txn| {
                let mut dead = txn.open_table(DEAD)?;
                let mut events = txn.open_table(EVENTS)?;
                let now = now_ms();
                let mut moved = 0;
                for seq in ids {
                    let removed = dead
                        .remove((consumer_key.as_str(), queue_code(queue), seq))?
                        .map(|v| v.value().to_vec());
                    let Some(value) = removed else { continue };
                    unindex_dead(txn, &consumer_key, queue_code(queue), seq, &value)?;
                    // The log may have compacted the event: restore it from
                    // the copy the dead letter kept.
                    if events.get(seq)?.is_none()
                        && let Some(envelope) = dead_envelope(&value)
                    {
                        events.insert(seq, envelope)?;
                    }
                    enqueue_again(txn, &consumer_key, seq, now)?;
                    moved += 1;
                }
                Ok(moved)
            })
            .await
            .map_err(unavailable)?;
        if moved > 0 {
            self.waker(consumer, Lane::Replay)?.notify_one();
        }
        Ok(moved)
    }

    async fn history(
        &self,
        consumer: &str,
        source: &str,
        pattern: &EventPattern,
        since_ms: u64,
        until_ms: u64,
    ) -> Result<Vec<u64>, BusError> {
        self.waker(consumer, Lane::Live)?;
        // A read transaction: the log can be large and the writer must not
        // stall behind the scan.
        let txn = self.store.read().map_err(unavailable)?;
        let events = txn.open_table(EVENTS).map_err(storage)?;
        let mut seqs = Vec::new();
        for row in events.iter().map_err(storage)? {
            let (seq, bytes) = row.map_err(storage)?;
            let envelope = Envelope::decode(bytes.value())?;
            if in_history(&envelope, source, pattern, since_ms, until_ms) {
                seqs.push(seq.value());
            }
        }
        Ok(seqs)
    }

    async fn requeue_history(
        &self,
        consumer: &str,
        ids: &[u64],
        force: bool,
    ) -> Result<usize, BusError> {
        self.waker(consumer, Lane::Live)?;
        let consumer_key = consumer.to_owned();
        let ids = ids.to_vec();
        let queued = self
            .store
            .write(Persist::Durable, move |txn| {
                let now = now_ms();
                let mut queued = 0;
                for seq in ids {
                    let stored = txn
                        .open_table(EVENTS)?
                        .get(seq)?
                        .map(|v| v.value().to_vec());
                    let Some(bytes) = stored else { continue };
                    let seq = if force {
                        // A new generation is a new log entry: the original
                        // stays as it was received.
                        let Ok(mut envelope) = Envelope::decode(&bytes) else {
                            continue;
                        };
                        envelope.generation = Some(now);
                        append_log(txn, &envelope.encode())?
                    } else {
                        seq
                    };
                    enqueue_again(txn, &consumer_key, seq, now)?;
                    queued += 1;
                }
                Ok(queued)
            })
            .await
            .map_err(unavailable)?;
        if queued > 0 {
            self.waker(consumer, Lane::Replay)?.notify_one();
        }
        Ok(queued)
    }

    async fn discard_dead(
        &self,
        consumer: &str,
        queue: ParkQueue,
        ids: &[u64],
    ) -> Result<usize, BusError> {
        self.waker(consumer, Lane::Live)?;
        let consumer_key = consumer.to_owned();
        let ids = ids.to_vec();
        self.store
            .write(Persist::Durable, move |txn| {
                let mut dead = txn.open_table(DEAD)?;
                let mut deleted = 0;
                for seq in ids {
                    let removed = dead
                        .remove((consumer_key.as_str(), queue_code(queue), seq))?
                        .map(|v| v.value().to_vec());
                    if let Some(value) = removed {
                        unindex_dead(txn, &consumer_key, queue_code(queue), seq, &value)?;
                        deleted += 1;
                    }
                }
                Ok(deleted)
            })
            .await
            .map_err(unavailable)
    }

    fn integrity_failures(&self) -> u64 {
        self.integrity_failures
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn writer_counts(&self) -> Option<crate::durable::WriterCounts> {
        Some(self.store.counts())
    }

    async fn backlog(&self, consumer: &str) -> Result<u64, BusError> {
        self.waker(consumer, Lane::Live)?;
        let txn = self.store.read().map_err(unavailable)?;
        let schedule = txn.open_table(SCHEDULE).map_err(storage)?;
        let mut count = 0;
        for lane in Lane::ALL {
            let queue = lane_queue(consumer, lane);
            let queue = queue.as_str();
            for row in schedule
                .range((queue, 0, 0)..=(queue, u64::MAX, u64::MAX))
                .map_err(storage)?
            {
                row.map_err(storage)?;
                count += 1;
            }
        }
        Ok(count)
    }
}
