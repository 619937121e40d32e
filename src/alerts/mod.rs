//! Alerts: the anomaly watch, one feature in one folder. The [`Detector`]
//! (this page, `rules.rs`, `baseline.rs`) learns the normal flow and decides
//! what is raised and cleared; the [`runner`] samples the live hub, feeds the
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
mod rules;
pub mod runner;

#[cfg(test)]
mod tests;

pub use baseline::{Baseline, Ewma, Expected};
pub use rules::*;
pub use runner::{AlertBook, AlertSettings, AlertsView, ConsumerProbe, WebhookError, run};

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

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

#[derive(Debug)]
struct SourceTrack {
    previous: SourceSample,
    ingest_rate: Baseline,
    refusals_per_min: Baseline,
    /// Usual time between two events, seconds.
    event_gap: Ewma,
    /// The last tick that brought an event; `None` until the watch has seen one.
    last_event_at_ms: Option<u64>,
    trackers: BTreeMap<Rule, Tracker>,
}

impl SubjectWatch for SourceTrack {
    type Sample = SourceSample;

    fn name(sample: &SourceSample) -> &str {
        &sample.name
    }

    fn trackers(&mut self) -> &mut BTreeMap<Rule, Tracker> {
        &mut self.trackers
    }

    fn start(now: &SourceSample, _at_ms: u64, _config: &AlertThresholds) -> SourceTrack {
        SourceTrack {
            previous: now.clone(),
            ingest_rate: Baseline::new(),
            refusals_per_min: Baseline::new(),
            event_gap: Ewma::new(),
            last_event_at_ms: None,
            trackers: BTreeMap::new(),
        }
    }

    fn observe(
        &mut self,
        now: &SourceSample,
        at_ms: u64,
        step: Duration,
        config: &AlertThresholds,
        ledger: &mut Ledger,
    ) {
        let restarted = now.received < self.previous.received
            || counts_went_down(&self.previous.signature_failures, &now.signature_failures);
        if restarted {
            // every rule of a source reads counters: nothing to judge until the next tick
            self.previous = now.clone();
            return;
        }
        let seconds = step.as_secs_f64();
        let received = counter_delta(self.previous.received, now.received);
        let refusals = counts_delta(&self.previous.signature_failures, &now.signature_failures);
        let rate = received as f64 / seconds;
        let refused_per_min = total(&refusals) as f64 / seconds * 60.0;
        let tick = Tally {
            refusals,
            ..Tally::default()
        };

        let spike = match self.ingest_rate.expected(at_ms, config.warmup) {
            None => Condition::Normal(Some(rate)),
            Some(expected) => {
                let per_second = one_count_per(step, Duration::from_secs(1));
                let limit = band_limit(expected, config.band, per_second)
                    .max(config.spike_factor * expected.mean);
                Condition::judge(rate, limit, Some(expected.mean))
            }
        };

        let refusals_expected = self.refusals_per_min.expected(at_ms, config.warmup);
        let refusal_limit = refusals_expected.map_or(config.signature_failures_per_min, |e| {
            let per_minute = one_count_per(step, Duration::from_secs(60));
            band_limit(e, config.band, per_minute).max(config.signature_failures_per_min)
        });
        let refused = Condition::judge(
            refused_per_min,
            refusal_limit,
            refusals_expected.map(|e| e.mean),
        );

        let silent = self.silence(received, at_ms, config);

        let spike_is_out = spike.is_out();
        let refused_is_out = refused.is_out();
        let subject = Subject::Source(now.name.clone());
        for (rule, condition) in [
            (Rule::IngestSpike, spike),
            (Rule::SignatureFailures, refused),
            (Rule::SourceSilent, silent),
        ] {
            let judgement = Judgement {
                rule,
                subject: &subject,
                at_ms,
                condition,
                tick: &tick,
            };
            let tracker = self.trackers.entry(rule).or_default();
            settle(
                tracker,
                judgement,
                |tally| source_cause(rule, tally),
                config,
                ledger,
            );
        }

        self.ingest_rate
            .observe(rate, at_ms, step, config.learn_for, spike_is_out);
        if !refused_is_out {
            self.refusals_per_min
                .observe(refused_per_min, at_ms, step, config.learn_for, false);
        }
        if received > 0 {
            if let Some(last) = self.last_event_at_ms {
                let since_last = Duration::from_millis(at_ms.saturating_sub(last));
                let gap = since_last.as_secs_f64() / received as f64;
                self.event_gap.observe(gap, since_last, config.learn_for);
            }
            self.last_event_at_ms = Some(at_ms);
        }
        self.previous = now.clone();
    }
}

impl SourceTrack {
    fn silence(&self, received: u64, at_ms: u64, config: &AlertThresholds) -> Condition {
        if received > 0 {
            return Condition::Normal(Some(0.0));
        }
        let Some(last_event_at_ms) = self.last_event_at_ms else {
            // a source that never had traffic is not silent, just unused
            return Condition::Normal(None);
        };
        let usual_gap = (self.event_gap.samples() > 0 && self.event_gap.seen() >= config.warmup)
            .then(|| self.event_gap.mean());
        let limit = usual_gap.map_or(config.silent_after.as_secs_f64(), |gap| {
            (config.silent_factor * gap).max(config.silent_after.as_secs_f64())
        });
        let silent_for = Duration::from_millis(at_ms.saturating_sub(last_event_at_ms));
        let silent_secs = silent_for.as_secs_f64();
        if silent_secs >= limit {
            let mut reading = Reading::new(silent_secs, limit, usual_gap);
            reading.began_at_ms = Some(last_event_at_ms);
            Condition::Out(reading)
        } else {
            Condition::Normal(Some(silent_secs))
        }
    }
}

#[derive(Debug)]
struct ConsumerTrack {
    previous: ConsumerSample,
    failure_ratio: Baseline,
    plugin_call_ms: Baseline,
    backlog: Baseline,
    pending_age_secs: Baseline,
    /// The backlog the current growth streak started from.
    growth_from: u64,
    dead_letters: GaugeWindow,
    reviews: GaugeWindow,
    trackers: BTreeMap<Rule, Tracker>,
}

impl SubjectWatch for ConsumerTrack {
    type Sample = ConsumerSample;

    fn name(sample: &ConsumerSample) -> &str {
        &sample.name
    }

    fn trackers(&mut self) -> &mut BTreeMap<Rule, Tracker> {
        &mut self.trackers
    }

    fn start(now: &ConsumerSample, at_ms: u64, config: &AlertThresholds) -> ConsumerTrack {
        let mut dead_letters = GaugeWindow::default();
        dead_letters.record(at_ms, now.dead_letters, config.queue_growth_window);
        let mut reviews = GaugeWindow::default();
        reviews.record(at_ms, now.reviews, config.queue_growth_window);
        ConsumerTrack {
            previous: now.clone(),
            failure_ratio: Baseline::new(),
            plugin_call_ms: Baseline::new(),
            backlog: Baseline::new(),
            pending_age_secs: Baseline::new(),
            growth_from: now.backlog,
            dead_letters,
            reviews,
            trackers: BTreeMap::new(),
        }
    }

    fn observe(
        &mut self,
        now: &ConsumerSample,
        at_ms: u64,
        step: Duration,
        config: &AlertThresholds,
        ledger: &mut Ledger,
    ) {
        let previous = &self.previous;
        // a partial restart would pair a fresh counter with an old one (plugin time with plugin
        // calls, failed with delivered), so one counter going down voids all deltas of the tick
        let restarted = now.delivered < previous.delivered
            || now.failed < previous.failed
            || now.plugin_calls < previous.plugin_calls
            || now.plugin_micros < previous.plugin_micros
            || now.rate_limit_waits < previous.rate_limit_waits
            || now.cpu_micros < previous.cpu_micros
            || counts_went_down(&previous.downstream, &now.downstream);
        let tick = if restarted {
            Tally::default()
        } else {
            Tally {
                downstream: counts_delta(&previous.downstream, &now.downstream),
                limiter_waits: counter_delta(previous.rate_limit_waits, now.rate_limit_waits),
                delivered: counter_delta(previous.delivered, now.delivered),
                failed: counter_delta(previous.failed, now.failed),
                refusals: BTreeMap::new(),
            }
        };
        let plugin_calls = counter_delta(previous.plugin_calls, now.plugin_calls);
        let plugin_micros = counter_delta(previous.plugin_micros, now.plugin_micros);
        let cpu_micros = counter_delta(previous.cpu_micros, now.cpu_micros);
        let dead_letters_grew = now.dead_letters > previous.dead_letters;
        let reviews_grew = now.reviews > previous.reviews;

        let attempts = tick.delivered.saturating_add(tick.failed);
        let failure_ratio =
            (attempts >= config.min_attempts.max(1)).then(|| tick.failed as f64 / attempts as f64);
        let failures = match failure_ratio {
            // a handful of attempts says little; a failure among them still holds off clearing
            None => Condition::Unclear {
                counts_as_normal: tick.failed == 0,
            },
            Some(ratio) => {
                let expected = self.failure_ratio.expected(at_ms, config.warmup);
                let limit = expected.map_or(config.failure_ratio, |e| {
                    band_limit(e, config.band, 0.01).max(config.failure_ratio)
                });
                Condition::judge(ratio, limit, expected.map(|e| e.mean))
            }
        };

        let plugin_call_ms =
            (plugin_calls > 0).then(|| plugin_micros as f64 / plugin_calls as f64 / 1000.0);
        let slow_plugin = match plugin_call_ms {
            // no calls, nothing slow; a plugin that never returns shows up as a stuck backlog
            None => Condition::Unclear {
                counts_as_normal: true,
            },
            Some(call_ms) => {
                let floor = config.slow_plugin_floor.as_secs_f64() * 1000.0;
                band_rule(&self.plugin_call_ms, call_ms, floor, 1.0, at_ms, config)
            }
        };

        let backlog = now.backlog as f64;
        let backlog_high = band_rule(
            &self.backlog,
            backlog,
            config.backlog_floor as f64,
            1.0,
            at_ms,
            config,
        );

        let pending_age_secs = now.oldest_pending_ms.unwrap_or(0) as f64 / 1000.0;
        let pending_age_high = band_rule(
            &self.pending_age_secs,
            pending_age_secs,
            config.pending_age_floor.as_secs_f64(),
            1.0,
            at_ms,
            config,
        );

        let growing = self.growth(now.backlog, at_ms, config);

        let stuck = if now.backlog > 0 && tick.delivered == 0 {
            let held = self.held_for(Rule::BacklogStuck, at_ms);
            Condition::Out(Reading::new(
                held.as_secs_f64(),
                config.stuck_for.as_secs_f64(),
                None,
            ))
        } else {
            Condition::Normal(Some(0.0))
        };

        let breaker = if now.breaker_open {
            let held = self.held_for(Rule::BreakerOpen, at_ms);
            Condition::Out(Reading::new(
                held.as_secs_f64(),
                config.breaker_open_for.as_secs_f64(),
                None,
            ))
        } else {
            Condition::Normal(Some(0.0))
        };

        // Near the whole of what it may use: a quota it keeps hitting, or a
        // plugin that would take every plugin thread.
        let cpu_saturated = if now.cpu_limit > 0.0 && !step.is_zero() {
            let cores = cpu_micros as f64 / 1e6 / step.as_secs_f64();
            let threshold = 0.9 * now.cpu_limit;
            if cores >= threshold {
                Condition::Out(Reading::new(cores, threshold, None))
            } else {
                Condition::Normal(Some(cores))
            }
        } else {
            Condition::Normal(None)
        };

        let quarantined = if now.quarantined {
            let held = self.held_for(Rule::PluginQuarantined, at_ms);
            Condition::Out(Reading::new(held.as_secs_f64(), 0.0, None))
        } else {
            Condition::Normal(Some(0.0))
        };

        self.dead_letters
            .record(at_ms, now.dead_letters, config.queue_growth_window);
        self.reviews
            .record(at_ms, now.reviews, config.queue_growth_window);
        let dead_letter_growth = queue_growth(
            &self.dead_letters,
            self.is_active(Rule::DeadLetterGrowth),
            dead_letters_grew,
            config,
        );
        let review_growth = queue_growth(
            &self.reviews,
            self.is_active(Rule::ReviewGrowth),
            reviews_grew,
            config,
        );

        let failures_are_out = failures.is_out();
        let slow_plugin_is_out = slow_plugin.is_out();
        let backlog_is_out = backlog_high.is_out();
        let pending_age_is_out = pending_age_high.is_out();

        let queues_were_growing = [
            self.is_active(Rule::DeadLetterGrowth),
            self.is_active(Rule::ReviewGrowth),
        ];
        let subject = Subject::Consumer(now.name.clone());
        for (rule, condition) in [
            (Rule::DeliveryFailures, failures),
            (Rule::SlowPlugin, slow_plugin),
            (Rule::BacklogHigh, backlog_high),
            (Rule::PendingAgeHigh, pending_age_high),
            (Rule::BacklogGrowing, growing),
            (Rule::BacklogStuck, stuck),
            (Rule::BreakerOpen, breaker),
            (Rule::DeadLetterGrowth, dead_letter_growth),
            (Rule::ReviewGrowth, review_growth),
            (Rule::CpuSaturated, cpu_saturated),
            (Rule::PluginQuarantined, quarantined),
        ] {
            if restarted && rule.reads_counters() {
                continue;
            }
            let judgement = Judgement {
                rule,
                subject: &subject,
                at_ms,
                condition,
                tick: &tick,
            };
            let tracker = self.trackers.entry(rule).or_default();
            settle(
                tracker,
                judgement,
                |tally| consumer_cause(rule, tally, now),
                config,
                ledger,
            );
        }

        // growth already reported must not raise again once its alert has cleared
        if queues_were_growing[0] && !self.is_active(Rule::DeadLetterGrowth) {
            self.dead_letters.restart(at_ms, now.dead_letters);
        }
        if queues_were_growing[1] && !self.is_active(Rule::ReviewGrowth) {
            self.reviews.restart(at_ms, now.reviews);
        }

        let learn_for = config.learn_for;
        if let Some(ratio) = failure_ratio
            && !failures_are_out
            && !restarted
        {
            self.failure_ratio
                .observe(ratio, at_ms, step, learn_for, false);
        }
        if let Some(call_ms) = plugin_call_ms
            && !restarted
        {
            self.plugin_call_ms
                .observe(call_ms, at_ms, step, learn_for, slow_plugin_is_out);
        }
        self.backlog
            .observe(backlog, at_ms, step, learn_for, backlog_is_out);
        self.pending_age_secs
            .observe(pending_age_secs, at_ms, step, learn_for, pending_age_is_out);
        self.previous = now.clone();
    }
}

impl ConsumerTrack {
    fn is_active(&self, rule: Rule) -> bool {
        self.trackers.get(&rule).is_some_and(Tracker::is_active)
    }

    fn held_for(&self, rule: Rule, at_ms: u64) -> Duration {
        self.trackers
            .get(&rule)
            .map_or(Duration::ZERO, |tracker| tracker.held_for(at_ms))
    }

    /// A backlog grows while it is above the level its streak started from and never shrinks
    /// from one tick to the next; time spent flat at that level does not count as growth.
    fn growth(&mut self, backlog: u64, at_ms: u64, config: &AlertThresholds) -> Condition {
        if backlog < self.previous.backlog || backlog <= self.growth_from {
            self.growth_from = backlog;
        }
        if backlog <= self.growth_from {
            return Condition::Normal(Some(backlog as f64));
        }
        // once raised, a fresh streak must last the full time again to keep the alert going
        let still_growing = !self.is_active(Rule::BacklogGrowing)
            || self.held_for(Rule::BacklogGrowing, at_ms) >= config.backlog_growing_for;
        if still_growing {
            Condition::Out(Reading::new(backlog as f64, self.growth_from as f64, None))
        } else {
            Condition::Normal(Some(backlog as f64))
        }
    }
}

/// A band rule's verdict: above the band and above the floor; nothing to say before warmup.
fn band_rule(
    baseline: &Baseline,
    value: f64,
    floor: f64,
    min_spread: f64,
    at_ms: u64,
    config: &AlertThresholds,
) -> Condition {
    match baseline.expected(at_ms, config.warmup) {
        None => Condition::Normal(Some(value)),
        Some(expected) => {
            let limit = band_limit(expected, config.band, min_spread).max(floor);
            Condition::judge(value, limit, Some(expected.mean))
        }
    }
}

/// Raises on a growth of `queue_growth` within the window; once raised, holds while the queue
/// keeps growing, so it clears `clear_after` after the last growth.
fn queue_growth(
    window: &GaugeWindow,
    active: bool,
    grew_this_tick: bool,
    config: &AlertThresholds,
) -> Condition {
    let growth = window.growth();
    let out = if active {
        grew_this_tick
    } else {
        growth >= config.queue_growth.max(1)
    };
    if out {
        Condition::Out(Reading::new(
            growth as f64,
            config.queue_growth as f64,
            None,
        ))
    } else {
        Condition::Normal(Some(growth as f64))
    }
}

/// Recent points of one gauge, enough to tell how much it grew within a window.
#[derive(Debug, Default)]
struct GaugeWindow {
    points: VecDeque<(u64, u64)>,
}

impl GaugeWindow {
    fn record(&mut self, at_ms: u64, value: u64, window: Duration) {
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        self.points.push_back((at_ms, value));
        while let Some(&(oldest_at_ms, _)) = self.points.front() {
            if oldest_at_ms.saturating_add(window_ms) >= at_ms {
                break;
            }
            self.points.pop_front();
        }
    }

    fn restart(&mut self, at_ms: u64, value: u64) {
        self.points.clear();
        self.points.push_back((at_ms, value));
    }

    /// How far the gauge now stands above its lowest point in the window.
    fn growth(&self) -> u64 {
        let Some(&(_, latest)) = self.points.back() else {
            return 0;
        };
        let lowest = self
            .points
            .iter()
            .map(|&(_, value)| value)
            .min()
            .unwrap_or(latest);
        latest.saturating_sub(lowest)
    }
}
