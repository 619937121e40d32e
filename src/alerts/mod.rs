//! Alerts: the anomaly watch, one feature in one folder. The [`Detector`]
//! (this page; `rules.rs` its vocabulary, `tracking.rs` the raise and clear
//! bookkeeping, `baseline.rs`, and one watch per source and per consumer in
//! `source_watch.rs` and `consumer_watch.rs`) learns the normal flow and
//! decides what is raised and cleared; the [`runner`] samples the live hub, feeds the
//! detector, and delivers its alerts (log, metrics, the admin API's book, an
//! on-call webhook). The admin stage reads the book; the hub hands the
//! runner a probe of its consumers, so nothing here depends on `admin`.
//!
//! The caller looks at the hub now and then (every ten seconds or so) and hands the detector a
//! [`Sample`]: cumulative counters and current gauges per source and consumer, stamped with the
//! time the caller read. The watch turns counters into per-tick rates, learns what normal looks
//! like for each measure ([`Baseline`]: overall and per hour of day), and answers with the
//! [`Change`]s since the previous sample: alerts raised and alerts cleared.
//!
//! It owns nothing else. It never reads a clock, does no io, spawns nothing and changes nothing
//! in the data flow; every notion of time comes from `Sample::at_ms`, so tests drive it with a
//! fake clock and a simulated hub. What to do with a change (log it, show it, page someone) is
//! the caller's business.
//!
//! Two families of rules:
//!
//! - band rules ([`Rule::IngestSpike`], [`Rule::SlowPlugin`], [`Rule::BacklogHigh`],
//!   [`Rule::PendingAgeHigh`]) compare a reading with its baseline, mean plus `band` standard
//!   deviations, and also with an absolute floor below which nothing is worth an alert. They stay
//!   quiet until the baseline has warmed up.
//! - error rules ([`Rule::DeliveryFailures`], [`Rule::SignatureFailures`]) have a floor that
//!   always counts, so they work from the second sample on, and they never learn an out-of-band
//!   value, so a lasting storm does not become normal.
//!
//! The rest measure a duration or a growth directly: a silent source, a backlog that only grows,
//! a backlog with no deliveries, a breaker left open, dead-letter and review queues filling up.
//!
//! Each alert carries a probable [`Cause`], built from what the subject showed since the
//! condition began (downstream answers, limiter waits, refusal reasons) and refreshed every tick
//! while the alert is active.

mod baseline;
mod consumer_watch;
mod rules;
pub mod runner;
mod source_watch;
mod tracking;

#[cfg(test)]
mod tests;

pub use baseline::{Baseline, Ewma, Expected};
pub use rules::*;
pub use runner::{AlertBook, AlertSettings, AlertsView, ConsumerProbe, WebhookError, run};

use consumer_watch::ConsumerTrack;
use source_watch::SourceTrack;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use tracking::*;

/// The anomaly watch over one hub. See the module page.
#[derive(Debug)]
pub struct Detector {
    config: AlertThresholds,
    next_alert_id: u64,
    last_at_ms: Option<u64>,
    sources: BTreeMap<String, SourceTrack>,
    consumers: BTreeMap<String, ConsumerTrack>,
}

impl Detector {
    pub fn new(config: AlertThresholds) -> Detector {
        Detector {
            config,
            next_alert_id: 1,
            last_at_ms: None,
            sources: BTreeMap::new(),
            consumers: BTreeMap::new(),
        }
    }

    /// Keeps baselines and active alerts; used on a config reload.
    pub fn set_config(&mut self, config: AlertThresholds) {
        self.config = config;
    }

    pub fn config(&self) -> &AlertThresholds {
        &self.config
    }

    /// Feeds one sample and returns what changed.
    ///
    /// `at_ms` must increase strictly; a sample not after the previous one is ignored. A subject
    /// seen for the first time only sets the reference its counters are measured from. A subject
    /// missing from the sample is gone: its active alerts clear and its state is dropped.
    pub fn observe(&mut self, sample: &Sample) -> Vec<Change> {
        let at_ms = sample.at_ms;
        let step = match self.last_at_ms {
            Some(last) if at_ms <= last => return Vec::new(),
            Some(last) => Some(Duration::from_millis(at_ms - last)),
            None => None,
        };
        self.last_at_ms = Some(at_ms);
        let mut ledger = Ledger {
            next_id: self.next_alert_id,
            changes: Vec::new(),
        };

        let config = &self.config;
        observe_subjects(
            &mut self.sources,
            &sample.sources,
            at_ms,
            step,
            config,
            &mut ledger,
        );
        observe_subjects(
            &mut self.consumers,
            &sample.consumers,
            at_ms,
            step,
            config,
            &mut ledger,
        );

        self.next_alert_id = ledger.next_id;
        ledger.changes
    }

    /// Active alerts, oldest first.
    pub fn active(&self) -> Vec<Alert> {
        let source_trackers = self.sources.values().flat_map(|w| w.trackers.values());
        let consumer_trackers = self.consumers.values().flat_map(|w| w.trackers.values());
        let mut active: Vec<Alert> = source_trackers
            .chain(consumer_trackers)
            .filter_map(|tracker| tracker.alert().cloned())
            .collect();
        active.sort_by_key(|alert| alert.id);
        active
    }
}

/// What the watch keeps per source and per consumer.
trait SubjectWatch: Sized {
    type Sample;
    fn name(sample: &Self::Sample) -> &str;
    /// The first sample of a subject: only a starting point for its counters.
    fn start(now: &Self::Sample, at_ms: u64, config: &AlertThresholds) -> Self;
    fn observe(
        &mut self,
        now: &Self::Sample,
        at_ms: u64,
        step: Duration,
        config: &AlertThresholds,
        ledger: &mut Ledger,
    );
    fn trackers(&mut self) -> &mut BTreeMap<Rule, Tracker>;
}

/// Feeds one kind of subject: drops the watch of every subject no longer in
/// the sample (a reload removed it), clearing its alerts, and starts or
/// advances the others.
fn observe_subjects<W: SubjectWatch>(
    watches: &mut BTreeMap<String, W>,
    samples: &[W::Sample],
    at_ms: u64,
    step: Option<Duration>,
    config: &AlertThresholds,
    ledger: &mut Ledger,
) {
    let samples: BTreeMap<&str, &W::Sample> = samples
        .iter()
        .map(|sample| (W::name(sample), sample))
        .collect();
    watches.retain(|name, watch| {
        let keep = samples.contains_key(name.as_str());
        if !keep {
            retire_all(watch.trackers().values_mut(), at_ms, ledger);
        }
        keep
    });
    for (name, now) in samples {
        match (watches.get_mut(name), step) {
            (Some(watch), Some(step)) => watch.observe(now, at_ms, step, config, ledger),
            _ => {
                watches.insert(name.to_owned(), W::start(now, at_ms, config));
            }
        }
    }
}

fn retire_all<'a>(
    trackers: impl Iterator<Item = &'a mut Tracker>,
    at_ms: u64,
    ledger: &mut Ledger,
) {
    for tracker in trackers {
        if let Some(alert) = tracker.retire(at_ms) {
            ledger.changes.push(Change::Cleared(alert));
        }
    }
}

/// Smallest spread assumed for a reading made of whole counts: one count per tick. Without it a
/// source that usually sees nothing would call its first event a spike.
fn one_count_per(step: Duration, per: Duration) -> f64 {
    per.as_secs_f64() / step.as_secs_f64()
}

/// Top of the normal band: mean plus `band` deviations, the deviation taken no lower than 10% of
/// the mean nor than `min_spread`, so a perfectly flat history does not make every wobble news.
fn band_limit(expected: Expected, band: f64, min_spread: f64) -> f64 {
    let spread = expected
        .std_dev
        .max(expected.mean.abs() * 0.1)
        .max(min_spread);
    expected.mean + band * spread
}
