//! Prometheus metrics: `switchyard_<stage>_<what>_<unit>`, bounded labels
//! (source and consumer names from routes.toml, outcomes from closed sets).
//! Served by the admin listener at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::durable::WriterCounts;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceReason {
    pub source: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceOutcome {
    pub source: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

/// `durable` (fsynced) or `lazy`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurabilityLabel {
    pub durability: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerOutcome {
    pub consumer: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerReason {
    pub consumer: String,
    pub reason: String,
}

/// An outbound call's answer: a status code or `timeout`, `unreachable`,
/// `refused` (a bounded set).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerAnswer {
    pub consumer: String,
    pub status: String,
}

/// An alert rule and what it is about (`source:<name>`, `consumer:<name>`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabel {
    pub rule: String,
    pub subject: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabel {
    pub consumer: String,
}

/// A lease renewal: which lease (`bus` or `key`) and whether it held
/// (`renewed`) or was lost (`lost`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LeaseRenewal {
    pub consumer: String,
    pub lease: &'static str,
    pub outcome: &'static str,
}

fn failover_histogram() -> Histogram {
    // 0.5 s .. ~17 min
    Histogram::new(exponential_buckets(0.5, 2.0, 12))
}

fn latency_histogram() -> Histogram {
    // 0.25 ms .. ~8 s
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// Every metric of the hub. Cheap to share (`Arc`); updates are lock-free.
pub struct Metrics {
    registry: Mutex<Registry>,
    pub ingest_requests: Family<SourceOutcome, Counter>,
    pub verification_failures: Family<SourceReason, Counter>,
    /// Webhook requests shed by a concurrency or rate limit, by source and
    /// which limit.
    pub ingest_shed: Family<SourceReason, Counter>,
    pub ingest_duration: Family<SourceLabel, Histogram, fn() -> Histogram>,
    pub bus_append_duration: Histogram,
    /// The embedded bus writer's running totals, mirrored at each scrape.
    pub bus_writer_commits: Family<DurabilityLabel, Counter>,
    pub bus_writer_operations: Counter,
    pub bus_writer_busy: Counter<f64, AtomicU64>,
    /// Stored events found altered at rest since start (mirrored at scrape).
    pub bus_integrity_failures: Gauge,
    pub deliveries: Family<ConsumerOutcome, Counter>,
    pub plugin_duration: Family<ConsumerLabel, Histogram, fn() -> Histogram>,
    /// Guest time per consumer on the plugin threads (mirrored at scrape).
    pub plugin_cpu: Family<ConsumerLabel, Counter<f64, AtomicU64>>,
    /// Time plugin calls waited for a turn on the plugin threads.
    pub plugin_pool_wait: Family<ConsumerLabel, Histogram, fn() -> Histogram>,
    /// Turn requests held back by a consumer's `cpu_per_second` quota.
    pub plugin_cpu_throttled: Family<ConsumerLabel, Counter>,
    /// Guest time over all consumers, and the threads it ran on: their
    /// ratio of rates is the pool's utilisation.
    pub plugin_pool_busy: Counter<f64, AtomicU64>,
    pub plugin_pool_threads: Gauge,
    pub backlog: Family<ConsumerLabel, Gauge>,
    pub oldest_pending: Family<ConsumerLabel, Gauge>,
    pub breaker_state: Family<ConsumerLabel, Gauge>,
    pub dead_letters: Family<ConsumerLabel, Gauge>,
    pub reviews: Family<ConsumerLabel, Gauge>,
    /// Every delivery attempt (a plugin call, or a skip by idempotency).
    pub attempts: Family<ConsumerLabel, Counter>,
    /// Times a consumer waited for its rate limiter before pulling.
    pub rate_limit_waits: Family<ConsumerLabel, Counter>,
    /// Plugin calls the sandbox stopped, cut short or refused something, by
    /// reason (`plugin::SandboxStop` labels).
    pub sandbox_stops: Family<ConsumerReason, Counter>,
    /// Answers of plugins' outbound calls, by consumer and status.
    pub downstream_answers: Family<ConsumerAnswer, Counter>,
    /// Renewals of the leases a running call holds.
    pub lease_renewals: Family<LeaseRenewal, Counter>,
    /// Idempotency leases taken over from a holder that stopped renewing.
    pub leases_taken_over: Family<ConsumerLabel, Counter>,
    /// At each takeover, how long the previous holder had been silent: the
    /// time from a worker's death to its event's redelivery.
    pub failover: Family<ConsumerLabel, Histogram, fn() -> Histogram>,
    /// 1 while an alert of the anomaly watch is active, then 0.
    pub alert_active: Family<AlertLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let metrics = Metrics {
            registry: Mutex::new(Registry::with_prefix("switchyard")),
            ingest_requests: Family::default(),
            verification_failures: Family::default(),
            ingest_shed: Family::default(),
            ingest_duration: Family::new_with_constructor(latency_histogram),
            bus_append_duration: latency_histogram(),
            bus_writer_commits: Family::default(),
            bus_writer_operations: Counter::default(),
            bus_writer_busy: Counter::default(),
            bus_integrity_failures: Gauge::default(),
            deliveries: Family::default(),
            plugin_duration: Family::new_with_constructor(latency_histogram),
            plugin_cpu: Family::default(),
            plugin_pool_wait: Family::new_with_constructor(latency_histogram),
            plugin_cpu_throttled: Family::default(),
            plugin_pool_busy: Counter::default(),
            plugin_pool_threads: Gauge::default(),
            backlog: Family::default(),
            oldest_pending: Family::default(),
            breaker_state: Family::default(),
            dead_letters: Family::default(),
            reviews: Family::default(),
            attempts: Family::default(),
            rate_limit_waits: Family::default(),
            sandbox_stops: Family::default(),
            downstream_answers: Family::default(),
            lease_renewals: Family::default(),
            leases_taken_over: Family::default(),
            failover: Family::new_with_constructor(failover_histogram),
            alert_active: Family::default(),
        };
        {
            let mut r = metrics.registry.lock().expect("registry lock");
            r.register(
                "ingest_requests",
                "Webhook requests by source and outcome",
                metrics.ingest_requests.clone(),
            );
            r.register(
                "ingest_verification_failures",
                "Refused signatures by source and reason",
                metrics.verification_failures.clone(),
            );
            r.register(
                "ingest_shed_requests",
                "Webhook requests shed by a concurrency or rate limit, by source and limit",
                metrics.ingest_shed.clone(),
            );
            r.register(
                "ingest_duration_seconds",
                "Time from request to answer",
                metrics.ingest_duration.clone(),
            );
            r.register(
                "bus_append_duration_seconds",
                "Time for a durable bus append",
                metrics.bus_append_duration.clone(),
            );
            r.register(
                "bus_writer_commits",
                "Commits of the embedded bus's single writer, by durability; operations per durable commit is how many writes share an fsync",
                metrics.bus_writer_commits.clone(),
            );
            r.register(
                "bus_writer_operations",
                "Writes applied by the embedded bus's single writer",
                metrics.bus_writer_operations.clone(),
            );
            r.register(
                "bus_writer_busy_seconds",
                "Time the embedded bus's single writer spent applying and committing; a rate near 1 means it is saturated and caps ingest",
                metrics.bus_writer_busy.clone(),
            );
            r.register(
                "bus_integrity_failures",
                "Stored events whose checksum failed since start: parked in the dead-letter queue, never delivered",
                metrics.bus_integrity_failures.clone(),
            );
            r.register(
                "dispatch_deliveries",
                "Deliveries by consumer and outcome",
                metrics.deliveries.clone(),
            );
            r.register(
                "plugin_duration_seconds",
                "Plugin call time, host calls included",
                metrics.plugin_duration.clone(),
            );
            r.register(
                "plugin_cpu_seconds",
                "Guest time per consumer on the plugin threads",
                metrics.plugin_cpu.clone(),
            );
            r.register(
                "plugin_pool_wait_seconds",
                "Time plugin calls waited for a turn on the plugin threads, by consumer",
                metrics.plugin_pool_wait.clone(),
            );
            r.register(
                "plugin_cpu_throttled",
                "Turns a consumer's cpu_per_second quota held back",
                metrics.plugin_cpu_throttled.clone(),
            );
            r.register(
                "plugin_pool_busy_seconds",
                "Guest time over all consumers; its rate divided by switchyard_plugin_pool_threads is the pool's utilisation",
                metrics.plugin_pool_busy.clone(),
            );
            r.register(
                "plugin_pool_threads",
                "Threads that run plugin code",
                metrics.plugin_pool_threads.clone(),
            );
            r.register(
                "consumer_backlog_events",
                "Events waiting for a consumer",
                metrics.backlog.clone(),
            );
            r.register(
                "consumer_oldest_pending_seconds",
                "Age of the oldest waiting event",
                metrics.oldest_pending.clone(),
            );
            r.register(
                "consumer_breaker_state",
                "Circuit breaker: 0 closed, 1 half-open, 2 open",
                metrics.breaker_state.clone(),
            );
            r.register(
                "consumer_dead_letters_events",
                "Events in the dead-letter queue",
                metrics.dead_letters.clone(),
            );
            r.register(
                "consumer_reviews_events",
                "Events in the review queue",
                metrics.reviews.clone(),
            );
            r.register(
                "dispatch_attempts",
                "Delivery attempts by consumer",
                metrics.attempts.clone(),
            );
            r.register(
                "rate_limit_waits",
                "Times a consumer waited for its rate limit before pulling",
                metrics.rate_limit_waits.clone(),
            );
            r.register(
                "plugin_sandbox_stops",
                "Plugin calls the sandbox stopped or refused something, by consumer and reason",
                metrics.sandbox_stops.clone(),
            );
            r.register(
                "plugin_downstream_answers",
                "Answers of plugins' outbound calls by consumer and status (code, timeout, unreachable, refused)",
                metrics.downstream_answers.clone(),
            );
            r.register(
                "dispatch_lease_renewals",
                "Renewals of the leases running calls hold, by consumer, lease (bus, key) and outcome (renewed, lost)",
                metrics.lease_renewals.clone(),
            );
            r.register(
                "dispatch_leases_taken_over",
                "Idempotency leases taken over from a worker that stopped renewing them (it died or hung)",
                metrics.leases_taken_over.clone(),
            );
            r.register(
                "dispatch_failover_seconds",
                "Time from a worker's last lease renewal to another worker taking its event over",
                metrics.failover.clone(),
            );
            r.register(
                "alert_active",
                "1 while an anomaly-watch alert is active, by rule and subject",
                metrics.alert_active.clone(),
            );
        }
        metrics
    }

    pub fn lease_renewal(&self, consumer: &str, lease: &'static str, renewed: bool) {
        self.lease_renewals
            .get_or_create(&LeaseRenewal {
                consumer: consumer.to_owned(),
                lease,
                outcome: if renewed { "renewed" } else { "lost" },
            })
            .inc();
    }

    pub fn lease_taken_over(&self, consumer: &str, silent: Duration) {
        let label = ConsumerLabel {
            consumer: consumer.to_owned(),
        };
        self.leases_taken_over.get_or_create(&label).inc();
        self.failover
            .get_or_create(&label)
            .observe(silent.as_secs_f64());
    }

    pub fn ingest(&self, source: &str, outcome: &str, took: Duration) {
        self.ingest_requests
            .get_or_create(&SourceOutcome {
                source: source.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        self.ingest_duration
            .get_or_create(&SourceLabel {
                source: source.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn delivery(&self, consumer: &str, outcome: &str) {
        self.deliveries
            .get_or_create(&ConsumerOutcome {
                consumer: consumer.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Raises the bus writer counters to the writer's own totals. `fetch_max`
    /// keeps them monotonic under concurrent scrapes; for the seconds it
    /// compares f64 bit patterns, which order like the values when positive.
    pub fn bus_writer(&self, counts: WriterCounts) {
        let raise = |counter: &Counter, total: u64| {
            counter.inner().fetch_max(total, Ordering::Relaxed);
        };
        for (durability, total) in [
            ("durable", counts.durable_commits),
            ("lazy", counts.lazy_commits),
        ] {
            raise(
                &self
                    .bus_writer_commits
                    .get_or_create(&DurabilityLabel { durability }),
                total,
            );
        }
        raise(&self.bus_writer_operations, counts.operations);
        self.bus_writer_busy
            .inner()
            .fetch_max(counts.busy.as_secs_f64().to_bits(), Ordering::Relaxed);
    }

    /// Raises the guest pool counters to the pool's own totals, as
    /// [`Metrics::bus_writer`] does: its threads, their guest time, and per
    /// consumer (name, guest time, times held back by its quota).
    pub fn guest_pool<'a>(
        &self,
        threads: usize,
        busy: Duration,
        consumers: impl IntoIterator<Item = (&'a str, Duration, u64)>,
    ) {
        let raise_seconds = |counter: &Counter<f64, AtomicU64>, total: Duration| {
            counter
                .inner()
                .fetch_max(total.as_secs_f64().to_bits(), Ordering::Relaxed);
        };
        self.plugin_pool_threads.set(threads as i64);
        raise_seconds(&self.plugin_pool_busy, busy);
        for (consumer, used, throttled) in consumers {
            let label = ConsumerLabel {
                consumer: consumer.to_owned(),
            };
            raise_seconds(&self.plugin_cpu.get_or_create(&label), used);
            self.plugin_cpu_throttled
                .get_or_create(&label)
                .inner()
                .fetch_max(throttled, Ordering::Relaxed);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().expect("registry lock");
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}
