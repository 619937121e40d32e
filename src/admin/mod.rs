//! Admin: what the operator sees of a running hub and what they may do to it.
//!
//! Owns [`HubControl`] (status of every consumer, pause/resume, the
//! dead-letter and review queues: list, replay, discard, each with a dry run)
//! and the admin HTTP API that exposes it on its own listener behind a bearer
//! token compared in constant time, with the operations dashboard page. It
//! serves the alerts' book and feeds their detector its consumer samples
//! ([`HubControl::consumer_samples`]).
//! It never shows payload contents in lists or logs, and never a secret.

pub mod api;
pub mod client;
pub mod jobs;
mod wire;

use crate::alerts::{AlertBook, ConsumerSample};
use crate::bus::{BusAdmin, BusError, ParkQueue, ParkedEvent};
use crate::config::EventPattern;
use crate::dispatch::breaker::BreakerState;
use crate::dispatch::layers::BreakerHandle;
use crate::dispatch::quarantine::PluginHealth;
use crate::dispatch::{ConsumerStats, StatsSnapshot};
use crate::plugin::pool::GuestPool;
use crate::telemetry::metrics::{ConsumerLabel, Metrics};
pub use jobs::{JobKind, JobState, JobStatus};
use jobs::{Jobs, Requeue};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::watch;
pub use wire::*;

/// The handles of one consumer.
pub struct ConsumerControl {
    pub stats: Arc<ConsumerStats>,
    pub breaker: Option<Arc<BreakerHandle>>,
    pub paused: watch::Sender<bool>,
    pub concurrency: usize,
    /// The plugin-health breaker.
    pub health: Arc<PluginHealth>,
    /// SHA-256 of the running plugin: a reload with another lifts a
    /// quarantine.
    pub plugin_digest: String,
    /// What its routes send it: (source, event pattern).
    pub routes: Vec<(String, EventPattern)>,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("unknown consumer `{0}`")]
    UnknownConsumer(String),
    #[error("bad filter: {0}")]
    BadFilter(String),
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// A reload asked of the hub's supervisor; the answer comes back on the
/// channel: the report, or every problem that kept the old config running.
pub type ReloadRequest = tokio::sync::oneshot::Sender<Result<ReloadReport, Vec<String>>>;

/// Control over a running hub, shared by the admin API and tests.
pub struct HubControl {
    bus: Arc<dyn BusAdmin>,
    /// Replaced whole by a reload.
    consumers: std::sync::RwLock<BTreeMap<String, Arc<ConsumerControl>>>,
    metrics: Arc<Metrics>,
    reloads: tokio::sync::mpsc::Sender<ReloadRequest>,
    jobs: Jobs,
    alerts: Arc<AlertBook>,
    /// The plugin threads: CPU used per consumer.
    pool: Arc<GuestPool>,
}

impl HubControl {
    pub fn new(
        bus: Arc<dyn BusAdmin>,
        metrics: Arc<Metrics>,
        reloads: tokio::sync::mpsc::Sender<ReloadRequest>,
        pool: Arc<GuestPool>,
    ) -> HubControl {
        HubControl {
            pool,
            bus,
            consumers: Default::default(),
            metrics,
            reloads,
            jobs: Jobs::default(),
            alerts: Arc::default(),
        }
    }

    /// What the anomaly watch has raised, and the dashboard's series.
    pub fn alert_book(&self) -> Arc<AlertBook> {
        Arc::clone(&self.alerts)
    }

    /// The consumers as they are now.
    pub fn consumers(&self) -> BTreeMap<String, Arc<ConsumerControl>> {
        self.consumers.read().expect("consumers lock").clone()
    }

    pub fn set_consumers(&self, consumers: BTreeMap<String, Arc<ConsumerControl>>) {
        *self.consumers.write().expect("consumers lock") = consumers;
    }

    /// Reloads routes.toml and plugins; on any problem the running config
    /// stays and every problem is returned.
    pub async fn reload(&self) -> Result<ReloadReport, Vec<String>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let gone = || vec!["the hub is shutting down".to_owned()];
        self.reloads.send(reply).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    fn consumer(&self, name: &str) -> Result<Arc<ConsumerControl>, AdminError> {
        self.consumers
            .read()
            .expect("consumers lock")
            .get(name)
            .cloned()
            .ok_or_else(|| AdminError::UnknownConsumer(name.to_owned()))
    }

    /// Status of every consumer, in name order.
    /// Every consumer's totals and gauges, as the alerts' detector reads
    /// them: what an attempt counts as, and which states count as paused.
    pub async fn consumer_samples(&self) -> Result<Vec<ConsumerSample>, BusError> {
        let statuses = self.status().await?;
        Ok(statuses
            .iter()
            .map(|status| {
                let label = ConsumerLabel {
                    consumer: status.name.clone(),
                };
                let waits = self
                    .metrics
                    .rate_limit_waits
                    .get(&label)
                    .map_or(0, |c| c.get());
                consumer_sample(status, waits)
            })
            .collect())
    }

    pub async fn status(&self) -> Result<Vec<ConsumerStatus>, BusError> {
        let mut out = Vec::new();
        let pool = self.pool.usage();
        for (name, control) in &self.consumers() {
            let breaker = control.breaker.as_ref().map(|b| b.state());
            let quarantined = control.health.quarantined();
            let cpu = pool.consumers.get(name).copied().unwrap_or_default();
            let state = match (*control.paused.borrow(), breaker) {
                (true, _) if quarantined.is_some() => ConsumerState::Quarantined,
                (true, _) => ConsumerState::Paused,
                (false, Some(BreakerState::Open)) => ConsumerState::BreakerOpen,
                (false, Some(BreakerState::HalfOpen)) => ConsumerState::BreakerHalfOpen,
                _ => ConsumerState::Running,
            };
            out.push(ConsumerStatus {
                name: name.clone(),
                state,
                concurrency: control.concurrency,
                backlog: self.bus.backlog(name).await?,
                oldest_pending_ms: self
                    .bus
                    .oldest_pending_age(name)
                    .await?
                    .map(|age| age.as_millis() as u64),
                dead_letters: self.bus.parked_count(name, ParkQueue::DeadLetter).await?,
                reviews: self.bus.parked_count(name, ParkQueue::Review).await?,
                breaker,
                breaker_opened: control.breaker.as_ref().map_or(0, |b| b.times_opened()),
                quarantined,
                cpu_seconds: cpu.used.as_secs_f64(),
                cpu_share: if pool.busy.is_zero() {
                    0.0
                } else {
                    cpu.used.as_secs_f64() / pool.busy.as_secs_f64()
                },
                cpu_per_second: cpu.cpu_per_second,
                pool_threads: pool.threads,
                stats: control.stats.snapshot(),
            });
        }
        Ok(out)
    }

    /// The Prometheus exposition, with per-consumer gauges read now.
    pub async fn metrics_text(&self) -> Result<String, BusError> {
        for status in self.status().await? {
            let label = ConsumerLabel {
                consumer: status.name.clone(),
            };
            let m = &self.metrics;
            m.backlog.get_or_create(&label).set(status.backlog as i64);
            m.oldest_pending
                .get_or_create(&label)
                .set(status.oldest_pending_ms.map_or(0, |ms| (ms / 1000) as i64));
            m.dead_letters
                .get_or_create(&label)
                .set(status.dead_letters as i64);
            m.reviews.get_or_create(&label).set(status.reviews as i64);
            let breaker = match status.breaker {
                Some(BreakerState::Open) => 2,
                Some(BreakerState::HalfOpen) => 1,
                _ => 0,
            };
            m.breaker_state.get_or_create(&label).set(breaker);
        }
        if let Some(counts) = self.bus.writer_counts() {
            self.metrics.bus_writer(counts);
        }
        self.metrics
            .bus_integrity_failures
            .set(self.bus.integrity_failures() as i64);
        let usage = self.pool.usage();
        self.metrics.guest_pool(
            usage.threads,
            usage.busy,
            usage
                .consumers
                .iter()
                .map(|(name, share)| (name.as_str(), share.used, share.throttled)),
        );
        Ok(self.metrics.render())
    }

    /// Stops the consumer taking new work; in-flight deliveries finish.
    pub fn pause(&self, name: &str) -> Result<(), AdminError> {
        self.consumer(name)?.paused.send_replace(true);
        tracing::info!(consumer = name, "consumer paused by operator");
        Ok(())
    }

    /// Runs the consumer again; lifts a quarantine too.
    pub fn resume(&self, name: &str) -> Result<(), AdminError> {
        let control = self.consumer(name)?;
        let was_quarantined = control.health.clear();
        control.paused.send_replace(false);
        tracing::info!(
            consumer = name,
            was_quarantined,
            "consumer resumed by operator"
        );
        Ok(())
    }

    /// Parked entries of `queue` matching `filter`, oldest first per consumer.
    pub async fn parked(
        &self,
        queue: ParkQueue,
        filter: &QueueFilter,
    ) -> Result<Vec<ParkedEvent>, AdminError> {
        let pattern = filter
            .event_type
            .as_deref()
            .map(EventPattern::parse)
            .transpose()
            .map_err(|err| AdminError::BadFilter(err.to_string()))?;
        let names: Vec<String> = match &filter.consumer {
            Some(name) => {
                self.consumer(name)?;
                vec![name.clone()]
            }
            None => self.consumers().into_keys().collect(),
        };
        let mut out = Vec::new();
        for name in names {
            for entry in self.bus.dead_letters(&name, queue).await? {
                let keep = pattern
                    .as_ref()
                    .is_none_or(|p| p.matches(&entry.envelope.event_type))
                    && filter.since_ms.is_none_or(|since| entry.at_ms >= since)
                    && filter.until_ms.is_none_or(|until| entry.at_ms < until)
                    && filter
                        .error
                        .as_ref()
                        .is_none_or(|e| entry.reason.contains(e.as_str()))
                    && filter
                        .ids
                        .as_ref()
                        .is_none_or(|ids| ids.contains(&entry.id));
                if keep {
                    out.push(entry);
                }
            }
        }
        Ok(out)
    }

    /// One entry of a consumer's queue, payload included.
    pub async fn parked_entry(
        &self,
        queue: ParkQueue,
        consumer: &str,
        id: u64,
    ) -> Result<Option<ParkedDetail>, AdminError> {
        self.consumer(consumer)?;
        let entries = self.bus.dead_letters(consumer, queue).await?;
        Ok(entries
            .iter()
            .find(|entry| entry.id == id)
            .map(|entry| ParkedDetail {
                entry: ParkedEntry::from(entry),
                livemode: entry.envelope.livemode,
                account: entry.envelope.account.clone(),
                traceparent: entry.envelope.traceparent.clone(),
                payload: serde_json::from_slice(&entry.envelope.payload).unwrap_or_else(|_| {
                    serde_json::Value::String(
                        String::from_utf8_lossy(&entry.envelope.payload).into(),
                    )
                }),
            }))
    }

    /// Queues events from the bus history for one consumer again (a consumer
    /// added later, or a route that changed), as a background job.
    /// Idempotency keys still apply unless the request forces.
    pub async fn replay_history(
        &self,
        consumer: &str,
        request: &HistoryReplay,
    ) -> Result<HistoryOutcome, AdminError> {
        let control = self.consumer(consumer)?;
        let pattern = EventPattern::parse(request.event_type.as_deref().unwrap_or("*"))
            .map_err(|err| AdminError::BadFilter(err.to_string()))?;
        let until = request.until_ms.unwrap_or(u64::MAX);
        if request.since_ms >= until {
            return Err(AdminError::BadFilter(
                "`since_ms` must be before `until_ms`".into(),
            ));
        }
        // The types the consumer's routes send it from this source, within
        // what was asked for; everything asked for only on request.
        let patterns: Vec<EventPattern> = if request.all_types {
            vec![pattern]
        } else {
            control
                .routes
                .iter()
                .filter(|(source, _)| *source == request.source)
                .filter_map(|(_, routed)| routed.intersect(&pattern))
                .collect()
        };
        let mut ids = std::collections::BTreeSet::new();
        for pattern in &patterns {
            ids.extend(
                self.bus
                    .history(consumer, &request.source, pattern, request.since_ms, until)
                    .await?,
            );
        }
        let ids: Vec<u64> = ids.into_iter().collect();
        let matched = ids.len();
        let job = (!request.dry_run).then(|| {
            tracing::info!(
                consumer,
                matched,
                force = request.force,
                all_types = request.all_types,
                "history replay started"
            );
            self.jobs.start(
                Arc::clone(&self.bus),
                JobKind::HistoryReplay,
                Requeue::History {
                    force: request.force,
                },
                vec![(consumer.to_owned(), ids)],
                request.batch_size.unwrap_or(jobs::DEFAULT_BATCH),
            )
        });
        Ok(HistoryOutcome {
            dry_run: request.dry_run,
            matched,
            job,
        })
    }

    /// A background job, by id.
    pub fn job(&self, id: u64) -> Option<JobStatus> {
        self.jobs.get(id)
    }

    /// Every job this process still remembers.
    pub fn jobs(&self) -> Vec<JobStatus> {
        self.jobs.list()
    }

    /// Asks a job to stop after its current batch.
    pub fn cancel_job(&self, id: u64) -> Option<JobStatus> {
        self.jobs.cancel(id)
    }

    /// Puts matching entries back into their consumers' replay lanes, as a
    /// background job of batches of `batch`.
    pub async fn replay(
        &self,
        queue: ParkQueue,
        filter: &QueueFilter,
        dry_run: bool,
        batch: Option<usize>,
    ) -> Result<BulkOutcome, AdminError> {
        self.bulk(queue, filter, dry_run, Bulk::Replay(batch)).await
    }

    /// Deletes matching entries for good.
    pub async fn discard(
        &self,
        queue: ParkQueue,
        filter: &QueueFilter,
        dry_run: bool,
    ) -> Result<BulkOutcome, AdminError> {
        self.bulk(queue, filter, dry_run, Bulk::Discard).await
    }

    async fn bulk(
        &self,
        queue: ParkQueue,
        filter: &QueueFilter,
        dry_run: bool,
        action: Bulk,
    ) -> Result<BulkOutcome, AdminError> {
        let matched = self.parked(queue, filter).await?;
        let mut outcome = BulkOutcome {
            dry_run,
            matched: matched.len(),
            done: 0,
            sample: matched.iter().take(10).map(ParkedEntry::from).collect(),
            job: None,
        };
        if dry_run {
            return Ok(outcome);
        }
        let mut by_consumer: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for entry in matched {
            by_consumer
                .entry(entry.consumer)
                .or_default()
                .push(entry.id);
        }
        tracing::info!(
            queue = ?queue,
            action = ?action,
            matched = outcome.matched,
            "bulk action on parked events"
        );
        match action {
            Bulk::Replay(batch) => {
                let kind = match queue {
                    ParkQueue::DeadLetter => JobKind::DeadLetterReplay,
                    ParkQueue::Review => JobKind::ReviewReplay,
                };
                outcome.job = Some(self.jobs.start(
                    Arc::clone(&self.bus),
                    kind,
                    Requeue::Parked(queue),
                    by_consumer.into_iter().collect(),
                    batch.unwrap_or(jobs::DEFAULT_BATCH),
                ));
            }
            Bulk::Discard => {
                for (consumer, ids) in by_consumer {
                    outcome.done += self.bus.discard_dead(&consumer, queue, &ids).await?;
                }
            }
        }
        Ok(outcome)
    }
}

#[derive(Debug, Clone, Copy)]
enum Bulk {
    /// In the background, in batches of this size.
    Replay(Option<usize>),
    Discard,
}

/// One consumer's totals, as the detector counts them.
fn consumer_sample(status: &ConsumerStatus, limiter_waits: u64) -> ConsumerSample {
    let stats = &status.stats;
    ConsumerSample {
        name: status.name.clone(),
        delivered: stats.delivered + stats.skipped_done,
        failed: stats.retried + stats.dead_lettered + stats.reviewed + stats.infra_errors,
        downstream: stats.downstream.clone(),
        plugin_calls: stats.plugin_calls,
        plugin_micros: stats.plugin_micros,
        rate_limit_waits: limiter_waits,
        backlog: status.backlog,
        oldest_pending_ms: status.oldest_pending_ms,
        breaker_open: status.breaker == Some(BreakerState::Open),
        paused: matches!(
            status.state,
            ConsumerState::Paused | ConsumerState::Quarantined
        ),
        quarantined: status.quarantined.is_some(),
        cpu_micros: (status.cpu_seconds * 1e6) as u64,
        cpu_limit: status.cpu_per_second.unwrap_or(status.pool_threads as f64),
        dead_letters: status.dead_letters,
        reviews: status.reviews,
    }
}
