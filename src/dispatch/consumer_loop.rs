//! One consumer's pull loop: it waits for its breaker, limiter and a free
//! worker, leases deliveries from its lanes, runs each through the stack while
//! renewing the bus lease, and settles the verdict on the bus (ack, retry,
//! dead letter, review).

use super::*;

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
                            .park(delivery, ParkQueue::DeadLetter, &reason)
                            .await
                    }
                }
            }
            Ok(Verdict::Reject(reason)) => {
                stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                self.metrics.delivery(consumer, "dead_lettered");
                tracing::error!(consumer, event_id, reason, "rejected; dead-lettered");
                self.bus
                    .park(delivery, ParkQueue::DeadLetter, &reason)
                    .await
            }
            Ok(Verdict::Review(reason)) => {
                stats.reviewed.fetch_add(1, Ordering::Relaxed);
                self.metrics.delivery(consumer, "reviewed");
                tracing::warn!(consumer, event_id, reason, "parked for review");
                self.bus.park(delivery, ParkQueue::Review, &reason).await
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
