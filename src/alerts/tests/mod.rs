//! The detector against a simulated hub sampled every ten seconds on a fake clock: the
//! simulation here, the scenarios of a day at the hub in `scenarios.rs`, what alerts say in
//! `reporting.rs`.

mod reporting;
mod scenarios;

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
