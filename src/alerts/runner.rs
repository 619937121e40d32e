//! The detector run over the live hub, and the places its alerts go.
//!
//! Every `alerts.interval` the hub is sampled (the consumers through the
//! [`ConsumerProbe`] the hub hands over, ingest counters per source from the
//! metrics), the detector decides what was raised or cleared, and each
//! change goes to the log, to `switchyard_alert_active{rule,subject}`, to the
//! [`AlertBook`] behind `GET /v1/alerts`, and, when `alerts.webhook` names a
//! connection, to an on-call tool as a JSON POST sent off the sampling loop.
//! The book also keeps short per-consumer series for the dashboard
//! (`GET /v1/series`).
//!
//! This only reads: it never pauses, retries or drops anything.

use super::{Alert, Change, ConsumerSample, Detector, Sample, SourceSample};
use crate::bus::BusError;
use crate::bus::now_ms;
use crate::config::{AlertsConfig, Config};
use crate::ingest::scheme::SignatureError;
use crate::plugin::connection::{Connection, ConnectionError};
use crate::telemetry::metrics::{AlertLabel, Metrics, SourceOutcome, SourceReason};
use futures::future::BoxFuture;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Reads every consumer's totals and gauges now, in name order; an error
/// (the bus did not answer) skips one interval.
pub type ConsumerProbe =
    Arc<dyn Fn() -> BoxFuture<'static, Result<Vec<ConsumerSample>, BusError>> + Send + Sync>;

/// Cleared alerts kept for `GET /v1/alerts`.
const KEEP_RECENT: usize = 100;
/// Points per consumer kept for the dashboard's sparklines.
const KEEP_POINTS: usize = 90;
/// Alert posts waiting for the webhook; beyond this the oldest are dropped
/// (and logged) rather than slowing the detector.
const WEBHOOK_QUEUE: usize = 256;

/// What the detector runs with; replaced whole on a reload.
#[derive(Clone)]
pub struct AlertSettings {
    pub config: AlertsConfig,
    /// Source names, from routes.toml.
    pub sources: Vec<String>,
    /// The connection of `alerts.webhook`, built with its credentials.
    pub webhook: Option<Arc<Connection>>,
}

/// `alerts.webhook` names a connection that does not exist or cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("alerts.webhook: unknown connection `{0}`")]
    UnknownConnection(String),
    #[error("alerts.webhook: {0}")]
    Connection(#[from] ConnectionError),
}

impl AlertSettings {
    /// What the detector runs with under `config`: its settings, the source
    /// names, and the webhook's connection built with its credentials.
    pub fn from_config(config: &Config) -> Result<AlertSettings, WebhookError> {
        let webhook = match &config.alerts.webhook {
            None => None,
            Some(name) => {
                let connection = config
                    .connections
                    .get(name)
                    .ok_or_else(|| WebhookError::UnknownConnection(name.clone()))?;
                Some(Arc::new(Connection::build(name, connection)?))
            }
        };
        Ok(AlertSettings {
            config: config.alerts.clone(),
            sources: config.sources.keys().cloned().collect(),
            webhook,
        })
    }
}

/// Active and recently cleared alerts, newest cleared first.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct AlertsView {
    pub enabled: bool,
    pub active: Vec<Alert>,
    pub recent: Vec<Alert>,
}

/// One sampling interval of one consumer.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SeriesPoint {
    pub at_ms: u64,
    /// Successful and failed attempts within the interval.
    pub delivered: u64,
    pub failed: u64,
    pub backlog: u64,
    pub oldest_pending_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct SeriesView {
    pub interval_ms: u64,
    pub consumers: BTreeMap<String, Vec<SeriesPoint>>,
}

/// What the admin API reads of the alerts.
#[derive(Default)]
pub struct AlertBook {
    state: Mutex<Book>,
}

#[derive(Default)]
struct Book {
    enabled: bool,
    active: Vec<Alert>,
    recent: VecDeque<Alert>,
    interval_ms: u64,
    series: BTreeMap<String, VecDeque<SeriesPoint>>,
}

impl AlertBook {
    pub fn alerts(&self) -> AlertsView {
        let book = self.state.lock().expect("alert book lock");
        AlertsView {
            enabled: book.enabled,
            active: book.active.clone(),
            recent: book.recent.iter().cloned().collect(),
        }
    }

    pub fn series(&self) -> SeriesView {
        let book = self.state.lock().expect("alert book lock");
        SeriesView {
            interval_ms: book.interval_ms,
            consumers: book
                .series
                .iter()
                .map(|(name, points)| (name.clone(), points.iter().cloned().collect()))
                .collect(),
        }
    }

    fn update(&self, change: impl FnOnce(&mut Book)) {
        change(&mut self.state.lock().expect("alert book lock"));
    }
}

fn source_sample(metrics: &Metrics, name: &str) -> SourceSample {
    let requests = |outcome: &str| {
        let label = SourceOutcome {
            source: name.to_owned(),
            outcome: outcome.to_owned(),
        };
        metrics.ingest_requests.get(&label).map_or(0, |c| c.get())
    };
    let signature_failures = SignatureError::REASONS
        .iter()
        .filter_map(|reason| {
            let label = SourceReason {
                source: name.to_owned(),
                reason: (*reason).to_owned(),
            };
            let count = metrics.verification_failures.get(&label)?.get();
            Some(((*reason).to_owned(), count))
        })
        .collect();
    SourceSample {
        name: name.to_owned(),
        received: requests("accepted") + requests("duplicate"),
        signature_failures,
    }
}

/// One look at the hub.
async fn sample(
    consumers: &ConsumerProbe,
    metrics: &Metrics,
    sources: &[String],
) -> Result<Sample, BusError> {
    Ok(Sample {
        at_ms: now_ms(),
        sources: sources
            .iter()
            .map(|name| source_sample(metrics, name))
            .collect(),
        consumers: consumers().await?,
    })
}

/// The body of a webhook post: Alertmanager-like enough for on-call tools
/// that take generic JSON.
fn webhook_body(status: &str, alert: &Alert) -> serde_json::Value {
    serde_json::json!({
        "status": status,
        "summary": alert.message,
        "alert": alert,
    })
}

/// Logs, counts and books one change, and queues its webhook post.
fn announce(
    change: Change,
    metrics: &Metrics,
    book: &AlertBook,
    posts: Option<&mpsc::Sender<serde_json::Value>>,
) {
    let (alert, active, status) = match change {
        Change::Raised(alert) => {
            tracing::warn!(
                rule = alert.rule.name(),
                subject = %alert.subject,
                value = alert.value,
                baseline = alert.baseline,
                threshold = alert.threshold,
                unit = %alert.unit,
                cause = %alert.cause.summary(),
                "alert raised: {}",
                alert.message
            );
            (alert, 1, "firing")
        }
        Change::Cleared(alert) => {
            tracing::info!(
                rule = alert.rule.name(),
                subject = %alert.subject,
                peak = alert.peak,
                "alert cleared: {}",
                alert.message
            );
            book.update(|book| {
                book.recent.push_front(alert.clone());
                book.recent.truncate(KEEP_RECENT);
            });
            (alert, 0, "resolved")
        }
    };
    metrics
        .alert_active
        .get_or_create(&AlertLabel {
            rule: alert.rule.name().to_owned(),
            subject: alert.subject.to_string(),
        })
        .set(active);
    if let Some(posts) = posts
        && posts.try_send(webhook_body(status, &alert)).is_err()
    {
        tracing::warn!(
            rule = alert.rule.name(),
            subject = %alert.subject,
            "alert webhook queue full; this post is dropped"
        );
    }
}

/// Posts alerts to the webhook connection, each retried with backoff; a
/// slow or dead on-call endpoint never holds up the detector.
async fn post_alerts(
    mut posts: mpsc::Receiver<serde_json::Value>,
    settings: watch::Receiver<AlertSettings>,
) {
    use backon::{ExponentialBuilder, Retryable};
    while let Some(body) = posts.recv().await {
        let (connection, path) = {
            let settings = settings.borrow();
            (
                settings.webhook.clone(),
                settings.config.webhook_path.clone(),
            )
        };
        let Some(connection) = connection else {
            continue;
        };
        let post = || async {
            match connection.post_json(&path, &body).await {
                Ok(status) if (200..300).contains(&status) => Ok(()),
                Ok(status) => Err(format!("answered HTTP {status}")),
                Err(err) => Err(err.to_string()),
            }
        };
        let sent = post
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_delay(Duration::from_secs(10))
                    .with_max_times(4)
                    .with_jitter(),
            )
            .await;
        if let Err(err) = sent {
            tracing::error!(error = %err, "alert webhook failed after retries; the alert stays in the admin API");
        }
    }
}

fn record_series(book: &mut Book, now: &Sample, previous: &Sample) {
    book.series
        .retain(|name, _| now.consumers.iter().any(|c| &c.name == name));
    for consumer in &now.consumers {
        let before = previous
            .consumers
            .iter()
            .find(|c| c.name == consumer.name)
            .map_or((consumer.delivered, consumer.failed), |c| {
                (c.delivered, c.failed)
            });
        let points = book.series.entry(consumer.name.clone()).or_default();
        points.push_back(SeriesPoint {
            at_ms: now.at_ms,
            delivered: consumer.delivered.saturating_sub(before.0),
            failed: consumer.failed.saturating_sub(before.1),
            backlog: consumer.backlog,
            oldest_pending_ms: consumer.oldest_pending_ms,
        });
        while points.len() > KEEP_POINTS {
            points.pop_front();
        }
    }
}

/// Samples the hub every `alerts.interval` until shutdown. New settings
/// (a reload) apply at once and keep the learned baselines.
pub async fn run(
    consumers: ConsumerProbe,
    metrics: Arc<Metrics>,
    book: Arc<AlertBook>,
    mut settings: watch::Receiver<AlertSettings>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut detector = Detector::new(settings.borrow().config.thresholds.clone());
    let (post_tx, post_rx) = mpsc::channel(WEBHOOK_QUEUE);
    let poster = tokio::spawn(post_alerts(post_rx, settings.clone()));
    let mut previous = Sample::default();
    loop {
        let current = settings.borrow().clone();
        book.update(|book| {
            book.enabled = current.config.enabled;
            book.interval_ms = current.config.interval.as_millis() as u64;
        });
        tokio::select! {
            _ = tokio::time::sleep(current.config.interval) => {}
            changed = settings.changed() => {
                if changed.is_err() {
                    break;
                }
                detector.set_config(settings.borrow().config.thresholds.clone());
                continue;
            }
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
        if !current.config.enabled {
            // Switched off: what was active is no longer watched.
            for mut alert in detector.active() {
                alert.cleared_at_ms = Some(now_ms());
                announce(Change::Cleared(alert), &metrics, &book, None);
            }
            detector = Detector::new(current.config.thresholds.clone());
            book.update(|book| book.active.clear());
            continue;
        }
        let sample = match sample(&consumers, &metrics, &current.sources).await {
            Ok(sample) => sample,
            Err(err) => {
                tracing::warn!(error = %err, "anomaly watch could not sample the hub; trying again next interval");
                continue;
            }
        };
        let posts = current.webhook.is_some().then_some(&post_tx);
        for change in detector.observe(&sample) {
            announce(change, &metrics, &book, posts);
        }
        let active = detector.active();
        book.update(|book| {
            book.active = active;
            record_series(book, &sample, &previous);
        });
        previous = sample;
    }
    drop(post_tx);
    // Posts already queued get a moment to leave; the alerts stay in the log.
    let _ = tokio::time::timeout(Duration::from_secs(2), poster).await;
}
