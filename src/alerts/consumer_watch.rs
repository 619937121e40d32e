//! What the detector keeps per consumer: failure ratio, plugin call time,
//! backlog and pending age against their baselines, the growth streak and
//! the dead-letter and review windows, and the rules they feed.

use super::*;

#[derive(Debug)]
pub(super) struct ConsumerTrack {
    previous: ConsumerSample,
    failure_ratio: Baseline,
    plugin_call_ms: Baseline,
    backlog: Baseline,
    pending_age_secs: Baseline,
    /// The backlog the current growth streak started from.
    growth_from: u64,
    dead_letters: GaugeWindow,
    reviews: GaugeWindow,
    pub(super) trackers: BTreeMap<Rule, Tracker>,
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
