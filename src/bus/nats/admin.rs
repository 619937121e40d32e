//! The operator's side of the JetStream engine ([`BusAdmin`]): counts,
//! lists and takes parked events, reads history, queues replays.

use super::*;

#[async_trait]
impl BusAdmin for NatsBus {
    async fn parked_count(&self, consumer: &str, queue: ParkQueue) -> Result<u64, BusError> {
        self.consumer(consumer)?;
        let mut info = self
            .dead
            .info_with_subjects(self.dead_filter(consumer))
            .await
            .map_err(unavailable)?;
        let mut count = 0;
        while let Some(entry) = futures::StreamExt::next(&mut info).await {
            let (name, n) = entry.map_err(unavailable)?;
            if self.in_dead_queue(&name, consumer, queue) {
                count += n as u64;
            }
        }
        Ok(count)
    }

    async fn dead_letters(
        &self,
        consumer: &str,
        queue: ParkQueue,
    ) -> Result<Vec<ParkedEvent>, BusError> {
        self.consumer(consumer)?;
        let filter = self.dead_filter(consumer);
        let mut out = Vec::new();
        let mut from = 1;
        while let Some(message) = Self::next_message(&self.dead, &filter, from).await? {
            from = message.sequence + 1;
            if !self.in_dead_queue(message.subject.as_str(), consumer, queue) {
                continue;
            }
            let headers = Some(&message.headers);
            let number = |name: &str| {
                headers
                    .and_then(|h| header(h, name))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            out.push(ParkedEvent {
                id: message.sequence,
                consumer: consumer.to_owned(),
                queue,
                envelope: envelope_from(headers, &message.payload)?,
                attempts: number(H_ATTEMPTS) as u32,
                reason: headers
                    .and_then(|h| header(h, H_REASON))
                    .unwrap_or_default()
                    .to_owned(),
                at_ms: number(H_DEAD_AT),
            });
        }
        Ok(out)
    }

    async fn backlog(&self, consumer: &str) -> Result<u64, BusError> {
        self.consumer(consumer)?;
        let mut waiting = 0;
        for lane in Lane::ALL {
            let info = self
                .events
                .consumer_info(durable_name(consumer, lane))
                .await
                .map_err(unavailable)?;
            waiting += info.num_pending + info.num_ack_pending as u64;
        }
        Ok(waiting)
    }

    async fn oldest_pending_age(&self, consumer: &str) -> Result<Option<Duration>, BusError> {
        // The live lane only: replayed events are old on purpose.
        let entry = self.consumer(consumer)?;
        let info = self
            .events
            .consumer_info(consumer)
            .await
            .map_err(unavailable)?;
        if info.num_pending + info.num_ack_pending as u64 == 0 {
            return Ok(None);
        }
        // Everything below the ack floor is settled: the oldest waiting
        // event is the first one of ours above it.
        let from = info.ack_floor.stream_sequence + 1;
        let mut oldest: Option<StreamMessage> = None;
        for filter in &entry.filters {
            if let Some(message) = Self::next_message(&self.events, filter, from).await?
                && oldest
                    .as_ref()
                    .is_none_or(|o| message.sequence < o.sequence)
            {
                oldest = Some(message);
            }
        }
        let Some(message) = oldest else {
            return Ok(None);
        };
        let envelope = envelope_from(Some(&message.headers), &message.payload)?;
        Ok(Some(Duration::from_millis(
            now_ms().saturating_sub(envelope.received_at_ms),
        )))
    }

    async fn requeue_dead(
        &self,
        consumer: &str,
        queue: ParkQueue,
        ids: &[u64],
    ) -> Result<usize, BusError> {
        self.consumer(consumer)?;
        let mut moved = 0;
        for &id in ids {
            let Some(message) = self.parked(consumer, queue, id).await? else {
                continue;
            };
            let envelope = envelope_from(Some(&message.headers), &message.payload)?;
            // Publish first, then delete: a crash in between replays twice,
            // which idempotency keys absorb; the other order could lose it.
            self.publish_replay(consumer, &envelope, &format!("requeue:{consumer}:{id}"))
                .await?;
            self.dead.delete_message(id).await.map_err(unavailable)?;
            moved += 1;
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
        self.consumer(consumer)?;
        let probe = Subscription {
            consumer: consumer.to_owned(),
            filters: vec![(source.to_owned(), pattern.clone())],
        };
        let subject = filter_subjects(&self.prefix, &probe).remove(0);
        let mut seqs = Vec::new();
        let mut from = 1;
        while let Some(message) = Self::next_message(&self.events, &subject, from).await? {
            from = message.sequence + 1;
            let envelope = envelope_from(Some(&message.headers), &message.payload)?;
            if in_history(&envelope, source, pattern, since_ms, until_ms) {
                seqs.push(message.sequence);
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
        self.consumer(consumer)?;
        let events = format!("{}.events.", self.prefix);
        // One run's message ids differ from the next run's, so an operator
        // can replay the same window twice on purpose.
        let run = now_ms();
        let mut queued = 0;
        for &seq in ids {
            let Some(message) = Self::message_at(&self.events, seq).await? else {
                continue;
            };
            if !message.subject.starts_with(&events) {
                continue;
            }
            let mut envelope = envelope_from(Some(&message.headers), &message.payload)?;
            if force {
                envelope.generation = Some(run);
            }
            let id = format!("history:{consumer}:{seq}:{run}");
            self.publish_replay(consumer, &envelope, &id).await?;
            queued += 1;
        }
        Ok(queued)
    }

    async fn discard_dead(
        &self,
        consumer: &str,
        queue: ParkQueue,
        ids: &[u64],
    ) -> Result<usize, BusError> {
        self.consumer(consumer)?;
        let mut deleted = 0;
        for &id in ids {
            if self.parked(consumer, queue, id).await?.is_some()
                && self.dead.delete_message(id).await.map_err(unavailable)?
            {
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}
