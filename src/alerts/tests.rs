//! The detector against a simulated hub sampled every ten seconds on a fake clock.

use std::collections::BTreeMap;
use std::f64::consts::TAU;
use std::time::Duration;

use super::*;

const STEP_MS: u64 = 10_000;
const MINUTE: u64 = 60_000;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// How the consumer gets through its backlog during a tick.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Delivery {
    /// Attempts everything that was waiting; what arrived waits for the next tick.
    KeepsUp,
    /// One attempt per tick, which times out.
    Hangs,
    /// No attempts at all.
    Stopped,
    /// Attempts up to this many waiting events per second.
    Drains { per_second: f64 },
}

#[derive(Debug, Clone)]
struct Plan {
    arrivals_per_second: f64,
    failure_share: f64,
    failure_answer: &'static str,
    delivery: Delivery,
    plugin_ms: u64,
    refused_per_tick: u64,
    refusal_reason: &'static str,
    paused: bool,
    breaker_open: bool,
    dead_letters_per_tick: u64,
    reviews_per_tick: u64,
}

impl Plan {
    fn normal(arrivals_per_second: f64) -> Plan {
        Plan {
            arrivals_per_second,
            failure_share: 0.01,
            failure_answer: "500",
            delivery: Delivery::KeepsUp,
            plugin_ms: 20,
            refused_per_tick: 0,
            refusal_reason: "no_match",
            paused: false,
            breaker_open: false,
            dead_letters_per_tick: 0,
            reviews_per_tick: 0,
        }
    }
}

/// 2/s at 08:00, 8/s at 20:00, 5/s at 02:00 and 14:00 (utc).
fn daily_rhythm(at_ms: u64) -> f64 {
    let hour = (at_ms % DAY) as f64 / HOUR as f64;
    5.0 + 3.0 * (TAU * (hour - 14.0) / 24.0).sin()
}

/// One source (`stripe`) feeding one consumer (`crm`), with cumulative counters.
struct Hub {
    at_ms: u64,
    random_state: u64,
    arrivals_carry: f64,
    source: SourceSample,
    consumer: ConsumerSample,
    consumer_present: bool,
    stalled_since_ms: Option<u64>,
}

impl Hub {
    /// Starts at midnight utc of day 0.
    fn new() -> Hub {
        Hub {
            at_ms: 0,
            random_state: 0x9e37_79b9_7f4a_7c15,
            arrivals_carry: 0.0,
            source: SourceSample {
                name: "stripe".to_owned(),
                ..SourceSample::default()
            },
            consumer: ConsumerSample {
                name: "crm".to_owned(),
                ..ConsumerSample::default()
            },
            consumer_present: true,
            stalled_since_ms: None,
        }
    }

    /// Uniform in [0, 1); xorshift keeps runs reproducible.
    fn random(&mut self) -> f64 {
        let mut x = self.random_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.random_state = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    fn sample(&self) -> Sample {
        Sample {
            at_ms: self.at_ms,
            sources: vec![self.source.clone()],
            consumers: if self.consumer_present {
                vec![self.consumer.clone()]
            } else {
                Vec::new()
            },
        }
    }

    fn advance(&mut self, plan: &Plan) -> Sample {
        self.at_ms += STEP_MS;
        let seconds = STEP_MS as f64 / 1000.0;
        let jitter = 1.0 + 0.2 * (self.random() - 0.5);
        let expected = plan.arrivals_per_second * seconds * jitter + self.arrivals_carry;
        let arrivals = expected.floor();
        self.arrivals_carry = expected - arrivals;
        let arrivals = arrivals as u64;

        self.source.received += arrivals;
        if plan.refused_per_tick > 0 {
            *self
                .source
                .signature_failures
                .entry(plan.refusal_reason.to_owned())
                .or_default() += plan.refused_per_tick;
        }

        let attempts = match plan.delivery {
            Delivery::KeepsUp => self.consumer.backlog,
            Delivery::Hangs | Delivery::Stopped => 0,
            Delivery::Drains { per_second } => {
                self.consumer.backlog.min((per_second * seconds) as u64)
            }
        };
        let mut delivered = 0;
        for _ in 0..attempts {
            let answer = if self.random() < plan.failure_share {
                self.consumer.failed += 1;
                plan.failure_answer
            } else {
                delivered += 1;
                "200"
            };
            *self
                .consumer
                .downstream
                .entry(answer.to_owned())
                .or_default() += 1;
        }
        self.consumer.delivered += delivered;
        self.consumer.plugin_calls += attempts;
        self.consumer.plugin_micros += attempts * plan.plugin_ms * 1000;
        self.consumer.backlog -= attempts;
        if plan.delivery == Delivery::Hangs {
            self.consumer.failed += 1;
            *self
                .consumer
                .downstream
                .entry("timeout".to_owned())
                .or_default() += 1;
            self.consumer.plugin_calls += 1;
            self.consumer.plugin_micros += 10_000_000;
        }
        self.consumer.backlog += arrivals;

        self.stalled_since_ms = if delivered == 0 && self.consumer.backlog > 0 {
            Some(self.stalled_since_ms.unwrap_or(self.at_ms))
        } else {
            None
        };
        let stalled_ms = self.stalled_since_ms.map_or(0, |since| self.at_ms - since);
        self.consumer.oldest_pending_ms = (self.consumer.backlog > 0).then_some(2_000 + stalled_ms);
        self.consumer.paused = plan.paused;
        self.consumer.breaker_open = plan.breaker_open;
        self.consumer.dead_letters += plan.dead_letters_per_tick;
        self.consumer.reviews += plan.reviews_per_tick;
        self.sample()
    }
}

/// A detector with default thresholds that has seen the hub's first sample.
fn start() -> (Detector, Hub) {
    start_with(AlertThresholds::default())
}

fn start_with(config: AlertThresholds) -> (Detector, Hub) {
    let hub = Hub::new();
    let mut detector = Detector::new(config);
    assert!(detector.observe(&hub.sample()).is_empty());
    (detector, hub)
}

/// Runs the hub for `duration_ms`, the plan chosen per tick by the tick's time.
fn run(
    detector: &mut Detector,
    hub: &mut Hub,
    duration_ms: u64,
    plan: impl Fn(u64) -> Plan,
) -> Vec<Change> {
    let end_ms = hub.at_ms + duration_ms;
    let mut changes = Vec::new();
    while hub.at_ms < end_ms {
        let sample = hub.advance(&plan(hub.at_ms + STEP_MS));
        changes.extend(detector.observe(&sample));
    }
    changes
}

/// An hour of steady, healthy traffic, so the baselines are warm.
fn warm_up(detector: &mut Detector, hub: &mut Hub) {
    let changes = run(detector, hub, HOUR, |_| Plan::normal(5.0));
    assert!(changes.is_empty(), "warm-up raised {changes:#?}");
}

fn raised(changes: &[Change]) -> impl Iterator<Item = &Alert> {
    changes.iter().filter_map(|change| match change {
        Change::Raised(alert) => Some(alert),
        Change::Cleared(_) => None,
    })
}

fn cleared(changes: &[Change]) -> impl Iterator<Item = &Alert> {
    changes.iter().filter_map(|change| match change {
        Change::Cleared(alert) => Some(alert),
        Change::Raised(_) => None,
    })
}

fn first_raised(changes: &[Change], rule: Rule) -> Option<&Alert> {
    raised(changes).find(|alert| alert.rule == rule)
}

fn first_cleared(changes: &[Change], rule: Rule) -> Option<&Alert> {
    cleared(changes).find(|alert| alert.rule == rule)
}

fn was_cleared(changes: &[Change], rule: Rule) -> bool {
    first_cleared(changes, rule).is_some()
}

fn rules_raised(changes: &[Change]) -> Vec<Rule> {
    raised(changes).map(|alert| alert.rule).collect()
}

fn config() -> AlertThresholds {
    AlertThresholds::default()
}

#[test]
fn a_normal_day_raises_nothing() {
    let (mut detector, mut hub) = start();
    let changes = run(&mut detector, &mut hub, 2 * DAY + 12 * HOUR, |at_ms| {
        Plan::normal(daily_rhythm(at_ms))
    });
    assert!(changes.is_empty(), "raised {changes:#?}");
    assert!(detector.active().is_empty());
}

#[test]
fn a_5xx_storm_raises_delivery_failures_and_clears_after_recovery() {
    let (mut detector, mut hub) = start();
    warm_up(&mut detector, &mut hub);

    let storm_from_ms = hub.at_ms;
    let storm = run(&mut detector, &mut hub, 10 * MINUTE, |_| Plan {
        failure_share: 0.9,
        failure_answer: "503",
        ..Plan::normal(5.0)
    });
    let alert = first_raised(&storm, Rule::DeliveryFailures).expect("delivery_failures raised");
    let sustain = ms(config().sustain);
    assert!(alert.raised_at_ms >= storm_from_ms + sustain, "{alert:?}");
    assert!(
        alert.raised_at_ms <= storm_from_ms + sustain + STEP_MS,
        "{alert:?}"
    );
    assert_eq!(alert.started_at_ms, storm_from_ms + STEP_MS);
    assert_eq!(alert.subject, Subject::Consumer("crm".to_owned()));
    assert_eq!(alert.unit, "ratio");
    assert!(alert.value > 0.7 && alert.threshold >= 0.2, "{alert:?}");
    let Cause::DownstreamErrors { statuses } = &alert.cause else {
        panic!("cause {:?}", alert.cause);
    };
    assert!(statuses.get("503").is_some_and(|count| *count > 0));
    assert!(
        alert
            .message
            .starts_with("consumer `crm`: delivery failure ratio"),
        "{}",
        alert.message
    );
    assert!(alert.message.contains("downstream answered 503 ×"));
    assert_eq!(alert.message, alert.message.to_lowercase());
    assert!(!was_cleared(&storm, Rule::DeliveryFailures));

    let active = detector.active();
    let still = active
        .iter()
        .find(|alert| alert.rule == Rule::DeliveryFailures)
        .expect("still active");
    let Cause::DownstreamErrors { statuses } = &still.cause else {
        panic!("cause {:?}", still.cause);
    };
    // the cause keeps counting while the alert is active
    assert!(statuses["503"] > 300, "{statuses:?}");
    assert!(still.peak >= still.value);

    let recovered_from_ms = hub.at_ms;
    let recovery = run(&mut detector, &mut hub, 10 * MINUTE, |_| Plan::normal(5.0));
    let gone = first_cleared(&recovery, Rule::DeliveryFailures).expect("cleared");
    let clear_after = ms(config().clear_after);
    let cleared_at_ms = gone.cleared_at_ms.unwrap_or(0);
    assert!(cleared_at_ms >= recovered_from_ms + clear_after, "{gone:?}");
    assert!(
        cleared_at_ms <= recovered_from_ms + clear_after + STEP_MS,
        "{gone:?}"
    );
    assert_eq!(gone.id, alert.id);
    assert!(raised(&recovery).next().is_none(), "{recovery:#?}");
    assert!(detector.active().is_empty());
}

#[test]
fn a_silent_source_raises_after_fifteen_minutes_and_clears_on_traffic() {
    let (mut detector, mut hub) = start();
    warm_up(&mut detector, &mut hub);
    let last_event_at_ms = hub.at_ms;
    let silence = |_| Plan::normal(0.0);

    let quiet = run(&mut detector, &mut hub, 14 * MINUTE, silence);
    assert!(
        first_raised(&quiet, Rule::SourceSilent).is_none(),
        "{quiet:#?}"
    );

    let silent_after = ms(config().silent_after);
    let remaining = last_event_at_ms + silent_after + STEP_MS - hub.at_ms;
    let silent = run(&mut detector, &mut hub, remaining, silence);
    let alert = first_raised(&silent, Rule::SourceSilent).expect("source_silent raised");
    assert_eq!(alert.cause, Cause::NoTraffic);
    assert_eq!(alert.subject, Subject::Source("stripe".to_owned()));
    assert_eq!(alert.started_at_ms, last_event_at_ms);
    assert!(alert.raised_at_ms <= last_event_at_ms + silent_after + STEP_MS);

    let back = run(&mut detector, &mut hub, STEP_MS, |_| Plan::normal(5.0));
    let gone = first_cleared(&back, Rule::SourceSilent).expect("cleared on traffic");
    assert_eq!(gone.cleared_at_ms, Some(hub.at_ms));
    assert!(
        !detector
            .active()
            .iter()
            .any(|alert| alert.rule == Rule::SourceSilent)
    );
}

#[test]
fn a_hanging_downstream_leaves_the_backlog_stuck_and_growing() {
    let (mut detector, mut hub) = start();
    warm_up(&mut detector, &mut hub);
    let hang_from_ms = hub.at_ms;
    let hang = run(&mut detector, &mut hub, 15 * MINUTE, |_| Plan {
        delivery: Delivery::Hangs,
        ..Plan::normal(5.0)
    });

    let stuck = first_raised(&hang, Rule::BacklogStuck).expect("backlog_stuck raised");
    let stuck_for = ms(config().stuck_for);
    assert!(stuck.raised_at_ms >= hang_from_ms + stuck_for, "{stuck:?}");
    assert!(
        stuck.raised_at_ms <= hang_from_ms + stuck_for + STEP_MS,
        "{stuck:?}"
    );
    assert!(
        matches!(stuck.cause, Cause::Timeouts { count } if count >= 30),
        "{:?}",
        stuck.cause
    );
    assert_eq!(stuck.unit, "s");

    let growing = first_raised(&hang, Rule::BacklogGrowing).expect("backlog_growing raised");
    let growing_for = ms(config().backlog_growing_for);
    // the growth streak may have begun a tick or two before the hang, on ordinary jitter
    assert!(
        growing.raised_at_ms + 3 * STEP_MS >= hang_from_ms + growing_for,
        "{growing:?}"
    );
    assert!(
        growing.raised_at_ms <= hang_from_ms + growing_for + STEP_MS,
        "{growing:?}"
    );
    assert!(growing.value > growing.threshold);
    assert!(matches!(growing.cause, Cause::Timeouts { .. }));

    let drain = run(&mut detector, &mut hub, 20 * MINUTE, |at_ms| {
        let delivery = if at_ms < hang_from_ms + 15 * MINUTE + 10 * MINUTE {
            Delivery::Drains { per_second: 30.0 }
        } else {
            Delivery::KeepsUp
        };
        Plan {
            delivery,
            failure_share: 0.0,
            ..Plan::normal(5.0)
        }
    });
    assert!(was_cleared(&drain, Rule::BacklogStuck), "{drain:#?}");
    assert!(was_cleared(&drain, Rule::BacklogGrowing), "{drain:#?}");
    assert!(raised(&drain).next().is_none(), "{drain:#?}");
    assert!(detector.active().is_empty(), "{:#?}", detector.active());
}

#[test]
fn a_burst_of_bad_signatures_names_the_rotated_secret() {
    let bad_signatures = |_| Plan {
        refused_per_tick: 10,
        refusal_reason: "no_match",
        ..Plan::normal(5.0)
    };
    let sustain = ms(config().sustain);
    let clear_after = ms(config().clear_after);

    let (mut detector, mut hub) = start();
    warm_up(&mut detector, &mut hub);
    let burst_from_ms = hub.at_ms;
    let burst = run(&mut detector, &mut hub, 5 * MINUTE, bad_signatures);
    let alert = first_raised(&burst, Rule::SignatureFailures).expect("signature_failures raised");
    assert!(alert.raised_at_ms >= burst_from_ms + sustain);
    assert!(alert.raised_at_ms <= burst_from_ms + sustain + STEP_MS);
    assert_eq!(alert.unit, "refusals/min");
    let Cause::SignatureFailures { reasons, hint } = &alert.cause else {
        panic!("cause {:?}", alert.cause);
    };
    assert!(reasons.get("no_match").is_some_and(|count| *count > 0));
    assert!(hint.as_deref().is_some_and(|hint| hint.contains("rotated")));
    assert!(alert.message.contains("no_match ×"), "{}", alert.message);

    let calm_from_ms = hub.at_ms;
    let calm = run(&mut detector, &mut hub, 10 * MINUTE, |_| Plan::normal(5.0));
    let gone = first_cleared(&calm, Rule::SignatureFailures).expect("cleared");
    assert!(gone.cleared_at_ms.unwrap_or(0) <= calm_from_ms + clear_after + STEP_MS);

    // right after start there is no baseline, the floor alone catches it
    let (mut detector, mut hub) = start();
    let burst = run(&mut detector, &mut hub, 5 * MINUTE, bad_signatures);
    let alert = first_raised(&burst, Rule::SignatureFailures).expect("raised cold");
    assert!(alert.raised_at_ms <= sustain + STEP_MS, "{alert:?}");
    assert_eq!(alert.baseline, None);
}

#[test]
fn stale_timestamps_point_at_clocks() {
    let (mut detector, mut hub) = start();
    let burst = run(&mut detector, &mut hub, 5 * MINUTE, |_| Plan {
        refused_per_tick: 10,
        refusal_reason: "stale_timestamp",
        ..Plan::normal(5.0)
    });
    let alert = first_raised(&burst, Rule::SignatureFailures).expect("raised");
    let Cause::SignatureFailures { hint, .. } = &alert.cause else {
        panic!("cause {:?}", alert.cause);
    };
    assert!(hint.as_deref().is_some_and(|hint| hint.contains("clock")));
}

#[test]
fn a_paused_consumer_is_stuck_because_paused() {
    let (mut detector, mut hub) = start();
    warm_up(&mut detector, &mut hub);
    let paused = run(&mut detector, &mut hub, 10 * MINUTE, |_| Plan {
        paused: true,
        delivery: Delivery::Stopped,
        ..Plan::normal(5.0)
    });
    let stuck = first_raised(&paused, Rule::BacklogStuck).expect("backlog_stuck raised");
    assert_eq!(stuck.cause, Cause::Paused);
    assert!(stuck.message.contains("paused"), "{}", stuck.message);
}

#[test]
fn breaker_and_queue_growth_raise_their_rules() {
    let (mut detector, mut hub) = start();
    warm_up(&mut detector, &mut hub);
    let open_from_ms = hub.at_ms;
    let open = run(&mut detector, &mut hub, 7 * MINUTE, |_| Plan {
        breaker_open: true,
        delivery: Delivery::Stopped,
        ..Plan::normal(5.0)
    });
    let breaker = first_raised(&open, Rule::BreakerOpen).expect("breaker_open raised");
    let breaker_open_for = ms(config().breaker_open_for);
    assert!(breaker.raised_at_ms >= open_from_ms + breaker_open_for);
    assert!(breaker.raised_at_ms <= open_from_ms + breaker_open_for + STEP_MS);
    assert_eq!(breaker.cause, Cause::BreakerOpen);
    let stuck = first_raised(&open, Rule::BacklogStuck).expect("backlog_stuck raised");
    assert_eq!(stuck.cause, Cause::BreakerOpen);

    let closed = run(&mut detector, &mut hub, 15 * MINUTE, |at_ms| Plan {
        delivery: if at_ms < open_from_ms + 12 * MINUTE {
            Delivery::Drains { per_second: 30.0 }
        } else {
            Delivery::KeepsUp
        },
        ..Plan::normal(5.0)
    });
    assert!(was_cleared(&closed, Rule::BreakerOpen));

    // two a tick: the tenth arrives on the fifth tick
    let filling_from_ms = hub.at_ms;
    let filling = run(&mut detector, &mut hub, 3 * MINUTE, |_| Plan {
        dead_letters_per_tick: 2,
        reviews_per_tick: 2,
        ..Plan::normal(5.0)
    });
    for rule in [Rule::DeadLetterGrowth, Rule::ReviewGrowth] {
        let alert = first_raised(&filling, rule).expect("growth raised");
        assert_eq!(
            alert.raised_at_ms,
            filling_from_ms + 5 * STEP_MS,
            "{alert:?}"
        );
        assert_eq!(alert.unit, "events");
        assert!(alert.value >= 10.0);
    }
    let stopped_from_ms = hub.at_ms;
    let settled = run(&mut detector, &mut hub, 10 * MINUTE, |_| Plan::normal(5.0));
    for rule in [Rule::DeadLetterGrowth, Rule::ReviewGrowth] {
        let gone = first_cleared(&settled, rule).expect("growth cleared");
        let cleared_at_ms = gone.cleared_at_ms.unwrap_or(0);
        assert!(cleared_at_ms <= stopped_from_ms + ms(config().clear_after) + STEP_MS);
    }
    assert!(raised(&settled).next().is_none(), "{settled:#?}");
}

#[test]
fn a_small_queue_growth_raises_nothing() {
    let (mut detector, mut hub) = start();
    let changes = run(&mut detector, &mut hub, 30 * MINUTE, |at_ms| Plan {
        // one every two minutes: 7 or 8 within any fifteen minutes
        dead_letters_per_tick: u64::from(at_ms % (2 * MINUTE) == 0),
        ..Plan::normal(5.0)
    });
    assert!(changes.is_empty(), "{changes:#?}");
}

#[test]
fn a_removed_consumer_has_its_alerts_cleared() {
    let (mut detector, mut hub) = start();
    warm_up(&mut detector, &mut hub);
    let hang = run(&mut detector, &mut hub, 8 * MINUTE, |_| Plan {
        delivery: Delivery::Hangs,
        ..Plan::normal(5.0)
    });
    assert!(first_raised(&hang, Rule::BacklogStuck).is_some());
    let consumer_alerts = detector
        .active()
        .iter()
        .filter(|alert| alert.subject == Subject::Consumer("crm".to_owned()))
        .count();
    assert!(consumer_alerts > 0);

    hub.consumer_present = false;
    let removed = run(&mut detector, &mut hub, STEP_MS, |_| Plan::normal(5.0));
    assert_eq!(cleared(&removed).count(), consumer_alerts, "{removed:#?}");
    for alert in cleared(&removed) {
        assert_eq!(alert.cleared_at_ms, Some(hub.at_ms));
        assert_eq!(alert.subject.name(), "crm");
    }
    assert!(detector.active().is_empty(), "{:#?}", detector.active());

    // back after a reload, counting from zero: no stale state, no panic
    hub.consumer_present = true;
    hub.consumer = ConsumerSample {
        name: "crm".to_owned(),
        ..ConsumerSample::default()
    };
    let back = run(&mut detector, &mut hub, 10 * MINUTE, |_| Plan::normal(5.0));
    assert!(back.is_empty(), "{back:#?}");
}

#[test]
fn a_removed_source_has_its_alerts_cleared() {
    let (mut detector, mut hub) = start();
    run(&mut detector, &mut hub, 5 * MINUTE, |_| Plan {
        refused_per_tick: 10,
        ..Plan::normal(5.0)
    });
    assert!(
        detector
            .active()
            .iter()
            .any(|alert| alert.rule == Rule::SignatureFailures)
    );
    let sample = Sample {
        at_ms: hub.at_ms + STEP_MS,
        sources: Vec::new(),
        consumers: vec![hub.consumer.clone()],
    };
    let changes = detector.observe(&sample);
    assert!(first_cleared(&changes, Rule::SignatureFailures).is_some());
    assert!(detector.active().is_empty());
}

#[test]
fn a_nightly_batch_becomes_normal_for_its_hour_only() {
    let (mut detector, mut hub) = start();
    let batch_hours = |at_ms: u64| {
        let hour = (at_ms - STEP_MS) % DAY / HOUR;
        let day = at_ms / DAY;
        hour == 2 || (day == 4 && hour == 14)
    };
    let changes = run(&mut detector, &mut hub, 4 * DAY + 16 * HOUR, |at_ms| {
        let arrivals = if batch_hours(at_ms) {
            20.0
        } else {
            daily_rhythm(at_ms)
        };
        Plan {
            failure_share: 0.0,
            ..Plan::normal(arrivals)
        }
    });
    let spikes_raised_between = |from_ms: u64, to_ms: u64| {
        raised(&changes)
            .filter(|alert| alert.rule == Rule::IngestSpike)
            .filter(|alert| (from_ms..to_ms).contains(&alert.raised_at_ms))
            .count()
    };
    assert_eq!(spikes_raised_between(2 * HOUR, 3 * HOUR), 1, "night 1");
    assert_eq!(
        spikes_raised_between(4 * DAY + HOUR, 4 * DAY + 4 * HOUR),
        0,
        "night 5"
    );
    assert_eq!(
        spikes_raised_between(4 * DAY + 14 * HOUR, 4 * DAY + 15 * HOUR),
        1,
        "afternoon of day 5"
    );
    let spike = raised(&changes)
        .filter(|alert| alert.rule == Rule::IngestSpike)
        .last()
        .expect("afternoon spike");
    assert_eq!(spike.cause, Cause::TrafficSpike);
    assert_eq!(spike.unit, "events/s");
    assert!(spike.baseline.is_some_and(|mean| mean < 7.0), "{spike:?}");
    // nothing but spikes: the batch is absorbed downstream
    assert!(
        rules_raised(&changes)
            .iter()
            .all(|rule| *rule == Rule::IngestSpike),
        "{:?}",
        rules_raised(&changes)
    );
}

#[test]
fn counters_going_down_do_not_panic_or_raise() {
    // raising on the first out-of-band tick, so one bogus delta would show
    let (mut detector, mut hub) = start_with(AlertThresholds {
        sustain: Duration::ZERO,
        ..AlertThresholds::default()
    });
    warm_up(&mut detector, &mut hub);

    // a reload recreated both: every counter starts again from zero
    hub.source.received = 0;
    hub.source.signature_failures = BTreeMap::from([("no_match".to_owned(), 0)]);
    let gauges = hub.consumer.clone();
    hub.consumer = ConsumerSample {
        name: "crm".to_owned(),
        backlog: gauges.backlog,
        oldest_pending_ms: gauges.oldest_pending_ms,
        ..ConsumerSample::default()
    };
    let after = run(&mut detector, &mut hub, HOUR, |_| Plan::normal(5.0));
    assert!(after.is_empty(), "{after:#?}");

    // one counter going down on its own
    hub.consumer.plugin_micros /= 2;
    hub.consumer.failed = 0;
    let after = run(&mut detector, &mut hub, 10 * MINUTE, |_| Plan::normal(5.0));
    assert!(after.is_empty(), "{after:#?}");
}

#[test]
fn set_config_keeps_baselines_and_active_alerts() {
    let (mut detector, mut hub) = start();
    warm_up(&mut detector, &mut hub);
    let storm = |_| Plan {
        failure_share: 0.9,
        failure_answer: "503",
        ..Plan::normal(5.0)
    };
    let raised_storm = run(&mut detector, &mut hub, 5 * MINUTE, storm);
    let alert = first_raised(&raised_storm, Rule::DeliveryFailures).expect("raised");

    let reloaded = AlertThresholds {
        sustain: Duration::ZERO,
        clear_after: Duration::from_secs(10 * 60),
        ..AlertThresholds::default()
    };
    detector.set_config(reloaded.clone());
    assert_eq!(detector.config(), &reloaded);
    assert_eq!(detector.active().first().map(|a| a.id), Some(alert.id));

    let more_storm = run(&mut detector, &mut hub, 2 * MINUTE, storm);
    assert!(raised(&more_storm).next().is_none(), "{more_storm:#?}");

    // a warm ingest baseline, so the spike is caught on its first tick with no sustain
    let spike_from_ms = hub.at_ms;
    let spike = run(&mut detector, &mut hub, STEP_MS, |_| Plan {
        failure_share: 0.9,
        failure_answer: "503",
        ..Plan::normal(30.0)
    });
    let spike = first_raised(&spike, Rule::IngestSpike).expect("spike raised at once");
    assert_eq!(spike.raised_at_ms, spike_from_ms + STEP_MS);

    // and clearing follows the new clear_after
    let recovered_from_ms = hub.at_ms;
    let recovery = run(&mut detector, &mut hub, 15 * MINUTE, |_| Plan::normal(5.0));
    let gone = first_cleared(&recovery, Rule::DeliveryFailures).expect("cleared");
    let cleared_at_ms = gone.cleared_at_ms.unwrap_or(0);
    assert!(cleared_at_ms >= recovered_from_ms + 10 * MINUTE, "{gone:?}");
    assert!(
        cleared_at_ms <= recovered_from_ms + 10 * MINUTE + STEP_MS,
        "{gone:?}"
    );
}

#[test]
fn samples_not_after_the_previous_are_ignored() {
    let (mut detector, mut hub) = start();
    warm_up(&mut detector, &mut hub);
    let mut stale = hub.sample();
    stale.consumers[0].backlog = 1_000_000;
    stale.sources[0].received += 1_000_000;
    assert!(detector.observe(&stale).is_empty());
    stale.at_ms -= STEP_MS;
    assert!(detector.observe(&stale).is_empty());
    let next = run(&mut detector, &mut hub, 5 * MINUTE, |_| Plan::normal(5.0));
    assert!(next.is_empty(), "{next:#?}");
}

#[test]
fn alert_ids_increase_and_active_is_oldest_first() {
    let (mut detector, mut hub) = start();
    warm_up(&mut detector, &mut hub);
    run(&mut detector, &mut hub, 15 * MINUTE, |_| Plan {
        delivery: Delivery::Hangs,
        refused_per_tick: 10,
        ..Plan::normal(5.0)
    });
    let active = detector.active();
    assert!(active.len() >= 3, "{active:#?}");
    assert!(active.windows(2).all(|pair| pair[0].id < pair[1].id));
    assert!(
        active
            .windows(2)
            .all(|pair| pair[0].raised_at_ms <= pair[1].raised_at_ms)
    );
}

#[test]
fn causes_read_as_one_line() {
    let statuses = BTreeMap::from([("503".to_owned(), 12), ("500".to_owned(), 3)]);
    assert_eq!(
        Cause::DownstreamErrors { statuses }.summary(),
        "downstream answered 503 ×12, 500 ×3"
    );
    let reasons = BTreeMap::from([("no_match".to_owned(), 30)]);
    let cause = Cause::SignatureFailures {
        reasons,
        hint: Some("was the signing secret rotated without adding the new one?".to_owned()),
    };
    assert_eq!(
        cause.summary(),
        "signatures refused: no_match ×30 — was the signing secret rotated without adding the new one?"
    );
    assert_eq!(
        Cause::RateLimited {
            answers_429: 4,
            limiter_waits: 0
        }
        .summary(),
        "rate limited: downstream answered 429 ×4"
    );
}

#[test]
fn cause_prefers_what_was_seen_most() {
    let now = ConsumerSample::default();
    let tally = |answers: &[(&str, u64)]| Tally {
        downstream: answers
            .iter()
            .map(|(label, count)| ((*label).to_owned(), *count))
            .collect(),
        failed: answers.iter().map(|(_, count)| *count).sum(),
        ..Tally::default()
    };
    let failures = Rule::DeliveryFailures;
    assert_eq!(
        consumer_cause(failures, &tally(&[("timeout", 5), ("503", 2)]), &now),
        Cause::Timeouts { count: 5 }
    );
    assert_eq!(
        consumer_cause(failures, &tally(&[("unreachable", 5), ("503", 2)]), &now),
        Cause::Unreachable { count: 5 }
    );
    assert_eq!(
        consumer_cause(failures, &tally(&[("429", 9), ("503", 2)]), &now),
        Cause::RateLimited {
            answers_429: 9,
            limiter_waits: 0
        }
    );
    assert!(matches!(
        consumer_cause(
            failures,
            &tally(&[("429", 1), ("503", 2), ("200", 50)]),
            &now
        ),
        Cause::DownstreamErrors { .. }
    ));
    assert_eq!(
        consumer_cause(failures, &tally(&[("200", 50)]), &now),
        Cause::PluginFailures
    );
    let slow = Tally {
        delivered: 100,
        ..Tally::default()
    };
    assert_eq!(
        consumer_cause(Rule::BacklogHigh, &slow, &now),
        Cause::SlowConsumer
    );
    let limited = Tally {
        delivered: 100,
        limiter_waits: 90,
        ..Tally::default()
    };
    assert!(matches!(
        consumer_cause(Rule::BacklogGrowing, &limited, &now),
        Cause::RateLimited {
            answers_429: 0,
            limiter_waits: 90
        }
    ));
    let paused = ConsumerSample {
        paused: true,
        breaker_open: true,
        ..ConsumerSample::default()
    };
    assert_eq!(
        consumer_cause(Rule::BacklogStuck, &slow, &paused),
        Cause::Paused
    );
}

#[test]
fn alerts_serialize_in_snake_case() {
    let (mut detector, mut hub) = start();
    warm_up(&mut detector, &mut hub);
    let storm = run(&mut detector, &mut hub, 5 * MINUTE, |_| Plan {
        failure_share: 0.9,
        failure_answer: "503",
        ..Plan::normal(5.0)
    });
    let alert = first_raised(&storm, Rule::DeliveryFailures).expect("raised");
    let json = serde_json::to_value(alert).expect("serializes");
    assert_eq!(json["rule"], "delivery_failures");
    assert_eq!(json["subject"]["kind"], "consumer");
    assert_eq!(json["subject"]["name"], "crm");
    assert_eq!(json["cause"]["kind"], "downstream_errors");
    assert!(json["cause"]["statuses"]["503"].as_u64().is_some());
    let back: Alert = serde_json::from_value(json).expect("deserializes");
    assert_eq!(
        (
            back.id,
            back.rule,
            &back.subject,
            &back.cause,
            &back.message
        ),
        (
            alert.id,
            alert.rule,
            &alert.subject,
            &alert.cause,
            &alert.message
        )
    );

    assert_eq!(
        Subject::Source("stripe".to_owned()).to_string(),
        "source:stripe"
    );
    for rule in Rule::ALL {
        let json = serde_json::to_value(rule).expect("serializes");
        assert_eq!(json, rule.name());
    }
}

#[test]
fn default_config_matches_the_documented_values() {
    let config = AlertThresholds::default();
    assert_eq!(config.learn_for, Duration::from_secs(3600));
    assert_eq!(config.warmup, Duration::from_secs(1800));
    assert_eq!(config.sustain, Duration::from_secs(120));
    assert_eq!(config.clear_after, Duration::from_secs(300));
    assert_eq!(config.silent_after, Duration::from_secs(900));
    assert_eq!(config.slow_plugin_floor, Duration::from_millis(250));
    assert_eq!(config.queue_growth_window, Duration::from_secs(900));
}

#[test]
fn one_dead_letter_raises_from_a_cold_start_when_one_is_news() {
    let (mut detector, mut hub) = start_with(AlertThresholds {
        queue_growth: 1,
        ..AlertThresholds::default()
    });
    let quiet = run(&mut detector, &mut hub, 3 * STEP_MS, |_| Plan::normal(5.0));
    assert!(quiet.is_empty(), "{quiet:#?}");
    let one = run(&mut detector, &mut hub, STEP_MS, |_| Plan {
        dead_letters_per_tick: 1,
        ..Plan::normal(5.0)
    });
    let alert = first_raised(&one, Rule::DeadLetterGrowth).expect("dead_letter_growth raised");
    assert_eq!(alert.value, 1.0);
}

/// Runs `ticks` ticks of normal traffic with the plugin using `cores` of guest CPU.
fn run_with_cpu(detector: &mut Detector, hub: &mut Hub, ticks: u64, cores: f64) -> Vec<Change> {
    let mut changes = Vec::new();
    for _ in 0..ticks {
        hub.consumer.cpu_micros += (cores * STEP_MS as f64 * 1000.0) as u64;
        changes.extend(run(detector, hub, STEP_MS, |_| Plan::normal(5.0)));
    }
    changes
}

#[test]
fn a_plugin_at_its_cpu_quota_raises_cpu_saturated_until_it_eases() {
    let (mut detector, mut hub) = start();
    hub.consumer.cpu_limit = 0.5;
    warm_up(&mut detector, &mut hub);
    let below = run_with_cpu(&mut detector, &mut hub, 30, 0.4);
    assert!(below.is_empty(), "{below:#?}");
    let saturated_from_ms = hub.at_ms;
    let saturated = run_with_cpu(&mut detector, &mut hub, 30, 0.49);
    let alert = first_raised(&saturated, Rule::CpuSaturated).expect("cpu_saturated raised");
    assert_eq!(alert.cause, Cause::PluginCpu);
    assert!(alert.raised_at_ms >= saturated_from_ms + ms(config().sustain));
    assert!(alert.message.contains("0.49 cores"), "{}", alert.message);
    let eased = run_with_cpu(&mut detector, &mut hub, 60, 0.1);
    assert!(was_cleared(&eased, Rule::CpuSaturated), "{eased:#?}");
}

#[test]
fn a_quarantined_plugin_raises_at_once_and_clears_when_resumed() {
    let (mut detector, mut hub) = start();
    warm_up(&mut detector, &mut hub);
    hub.consumer.quarantined = true;
    let quarantined = run(&mut detector, &mut hub, STEP_MS, |_| Plan {
        paused: true,
        delivery: Delivery::Stopped,
        ..Plan::normal(5.0)
    });
    let alert = first_raised(&quarantined, Rule::PluginQuarantined).expect("raised at once");
    assert_eq!(alert.cause, Cause::Quarantined);
    assert!(alert.message.contains("quarantined"), "{}", alert.message);
    hub.consumer.quarantined = false;
    let resumed = run(&mut detector, &mut hub, 10 * MINUTE, |_| Plan::normal(5.0));
    assert!(
        was_cleared(&resumed, Rule::PluginQuarantined),
        "{resumed:#?}"
    );
}
