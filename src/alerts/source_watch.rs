//! What the detector keeps per source: its ingest rate and refusals against
//! their baselines, the usual gap between events, and the rules they feed
//! (spike, signature failures, silence).

use super::*;

#[derive(Debug)]
pub(super) struct SourceTrack {
    previous: SourceSample,
    ingest_rate: Baseline,
    refusals_per_min: Baseline,
    /// Usual time between two events, seconds.
    event_gap: Ewma,
    /// The last tick that brought an event; `None` until the watch has seen one.
    last_event_at_ms: Option<u64>,
    pub(super) trackers: BTreeMap<Rule, Tracker>,
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
