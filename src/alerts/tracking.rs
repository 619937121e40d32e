//! The bookkeeping that turns one reading per tick into raised and cleared alerts: each rule's
//! tracker (how long a condition has held or been normal), the tallies a probable cause is named
//! from, and the one-line description of an alert.

use super::*;

/// How long a rule's condition must hold to raise, and be normal to clear.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    pub(super) hold_for: Duration,
    pub(super) clear_after: Duration,
}

/// One rule's reading while its condition holds.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Reading {
    pub(super) value: f64,
    pub(super) threshold: f64,
    pub(super) baseline: Option<f64>,
    /// When the condition began, for rules that know better than their first out-of-band tick.
    pub(super) began_at_ms: Option<u64>,
}

impl Reading {
    pub(super) fn new(value: f64, threshold: f64, baseline: Option<f64>) -> Reading {
        Reading {
            value,
            threshold,
            baseline,
            began_at_ms: None,
        }
    }
}

/// One rule's verdict on one tick.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Condition {
    /// Out of band: extends (or starts) the streak towards raising, interrupts clearing.
    Out(Reading),
    /// Normal: breaks a raise streak, counts towards clearing. Carries the value when there is one.
    Normal(Option<f64>),
    /// Too little data to judge. Neither starts, extends nor breaks a raise streak (its time still
    /// passes); counts towards clearing only when `counts_as_normal`, otherwise interrupts it.
    Unclear { counts_as_normal: bool },
}

impl Condition {
    pub(super) fn judge(value: f64, limit: f64, baseline: Option<f64>) -> Condition {
        if value > limit {
            Condition::Out(Reading::new(value, limit, baseline))
        } else {
            Condition::Normal(Some(value))
        }
    }

    pub(super) fn is_out(&self) -> bool {
        matches!(self, Condition::Out(_))
    }
}

/// What was seen since a condition began, to name its probable cause.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Tally {
    pub(super) downstream: BTreeMap<String, u64>,
    pub(super) limiter_waits: u64,
    pub(super) delivered: u64,
    pub(super) failed: u64,
    pub(super) refusals: BTreeMap<String, u64>,
}

impl Tally {
    fn absorb(&mut self, tick: &Tally) {
        merge_counts(&mut self.downstream, &tick.downstream);
        merge_counts(&mut self.refusals, &tick.refusals);
        self.limiter_waits = self.limiter_waits.saturating_add(tick.limiter_waits);
        self.delivered = self.delivered.saturating_add(tick.delivered);
        self.failed = self.failed.saturating_add(tick.failed);
    }
}

fn merge_counts(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (label, count) in from {
        let total = into.entry(label.clone()).or_default();
        *total = total.saturating_add(*count);
    }
}

/// A counter's growth since the previous sample; one that went down was restarted from zero
/// (a reload recreated its owner), so everything it shows now is new.
pub(super) fn counter_delta(previous: u64, now: u64) -> u64 {
    if now >= previous { now - previous } else { now }
}

/// Whether any labelled counter went down, a label vanishing included.
pub(super) fn counts_went_down(
    previous: &BTreeMap<String, u64>,
    now: &BTreeMap<String, u64>,
) -> bool {
    previous
        .iter()
        .any(|(label, count)| now.get(label).copied().unwrap_or(0) < *count)
}

pub(super) fn counts_delta(
    previous: &BTreeMap<String, u64>,
    now: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    now.iter()
        .map(|(label, count)| {
            let before = previous.get(label).copied().unwrap_or(0);
            (label.clone(), counter_delta(before, *count))
        })
        .filter(|(_, delta)| *delta > 0)
        .collect()
}

pub(super) fn total(counts: &BTreeMap<String, u64>) -> u64 {
    counts
        .values()
        .fold(0, |sum, count| sum.saturating_add(*count))
}

enum Step {
    Idle,
    Raise { began_at_ms: u64 },
    Hold,
    Clear,
}

/// The state of one rule for one subject: the streak towards raising, the streak towards
/// clearing, and the alert while active.
#[derive(Debug, Default)]
pub(super) struct Tracker {
    out_since_ms: Option<u64>,
    normal_since_ms: Option<u64>,
    tally: Tally,
    alert: Option<Alert>,
}

impl Tracker {
    pub(super) fn alert(&self) -> Option<&Alert> {
        self.alert.as_ref()
    }

    pub(super) fn is_active(&self) -> bool {
        self.alert.is_some()
    }

    /// How long the condition has held, counting this tick as held.
    pub(super) fn held_for(&self, at_ms: u64) -> Duration {
        self.out_since_ms
            .map_or(Duration::ZERO, |since| elapsed(since, at_ms))
    }

    /// Ends the alert because its subject is gone.
    pub(super) fn retire(&mut self, at_ms: u64) -> Option<Alert> {
        let mut alert = self.alert.take()?;
        alert.cleared_at_ms = Some(at_ms);
        Some(alert)
    }

    fn advance(&mut self, condition: &Condition, at_ms: u64, timing: Timing, tick: &Tally) -> Step {
        let active = self.alert.is_some();
        match condition {
            Condition::Out(_) => {
                self.normal_since_ms = None;
                let since = match self.out_since_ms {
                    Some(since) => since,
                    None => {
                        if !active {
                            self.tally = Tally::default();
                        }
                        self.out_since_ms = Some(at_ms);
                        at_ms
                    }
                };
                self.tally.absorb(tick);
                if active {
                    Step::Hold
                } else if elapsed(since, at_ms) >= timing.hold_for {
                    Step::Raise { began_at_ms: since }
                } else {
                    Step::Idle
                }
            }
            Condition::Normal(_) => {
                self.out_since_ms = None;
                if active {
                    self.tally.absorb(tick);
                    self.count_normal(at_ms, timing.clear_after)
                } else {
                    self.tally = Tally::default();
                    Step::Idle
                }
            }
            Condition::Unclear { counts_as_normal } => {
                if !active {
                    if self.out_since_ms.is_some() {
                        self.tally.absorb(tick);
                    }
                    return Step::Idle;
                }
                self.tally.absorb(tick);
                if *counts_as_normal {
                    self.count_normal(at_ms, timing.clear_after)
                } else {
                    self.normal_since_ms = None;
                    Step::Hold
                }
            }
        }
    }

    fn count_normal(&mut self, at_ms: u64, clear_after: Duration) -> Step {
        let since = *self.normal_since_ms.get_or_insert(at_ms);
        if elapsed(since, at_ms) >= clear_after {
            Step::Clear
        } else {
            Step::Hold
        }
    }
}

fn elapsed(since_ms: u64, at_ms: u64) -> Duration {
    Duration::from_millis(at_ms.saturating_sub(since_ms))
}

/// Where raised and cleared alerts of one `observe` go, and the next alert id.
pub(super) struct Ledger {
    pub(super) next_id: u64,
    pub(super) changes: Vec<Change>,
}

/// One rule's verdict for one subject on one tick.
pub(super) struct Judgement<'a> {
    pub(super) rule: Rule,
    pub(super) subject: &'a Subject,
    pub(super) at_ms: u64,
    pub(super) condition: Condition,
    /// What this tick added to the cause evidence.
    pub(super) tick: &'a Tally,
}

/// Moves a rule's tracker on by one verdict, raising, updating or clearing its alert.
pub(super) fn settle(
    tracker: &mut Tracker,
    judgement: Judgement<'_>,
    cause_of: impl Fn(&Tally) -> Cause,
    config: &AlertThresholds,
    ledger: &mut Ledger,
) {
    let Judgement {
        rule,
        subject,
        at_ms,
        condition,
        tick,
    } = judgement;
    match tracker.advance(&condition, at_ms, rule.timing(config), tick) {
        Step::Idle => {}
        Step::Raise { began_at_ms } => {
            let Condition::Out(reading) = condition else {
                return;
            };
            let cause = cause_of(&tracker.tally);
            let message = describe(rule, subject, &reading, &cause, config);
            let alert = Alert {
                id: ledger.next_id,
                rule,
                subject: subject.clone(),
                started_at_ms: reading.began_at_ms.unwrap_or(began_at_ms),
                raised_at_ms: at_ms,
                cleared_at_ms: None,
                value: reading.value,
                peak: reading.value,
                baseline: reading.baseline,
                threshold: reading.threshold,
                unit: rule.unit().to_owned(),
                cause,
                message,
            };
            ledger.next_id = ledger.next_id.saturating_add(1);
            tracker.alert = Some(alert.clone());
            ledger.changes.push(Change::Raised(alert));
        }
        Step::Hold => {
            let cause = cause_of(&tracker.tally);
            if let Some(alert) = tracker.alert.as_mut() {
                match &condition {
                    Condition::Out(reading) => {
                        alert.value = reading.value;
                        alert.threshold = reading.threshold;
                        alert.baseline = reading.baseline;
                        alert.message = describe(rule, subject, reading, &cause, config);
                    }
                    Condition::Normal(Some(value)) => alert.value = *value,
                    Condition::Normal(None) | Condition::Unclear { .. } => {}
                }
                alert.peak = alert.peak.max(alert.value);
                alert.cause = cause;
            }
        }
        Step::Clear => {
            if let Some(mut alert) = tracker.alert.take() {
                if let Condition::Normal(Some(value)) = condition {
                    alert.value = value;
                }
                alert.cleared_at_ms = Some(at_ms);
                *tracker = Tracker::default();
                ledger.changes.push(Change::Cleared(alert));
            }
        }
    }
}

/// The reading and cause as one lowercase line.
fn describe(
    rule: Rule,
    subject: &Subject,
    reading: &Reading,
    cause: &Cause,
    config: &AlertThresholds,
) -> String {
    let value = amount(rule, reading.value);
    let threshold = amount(rule, reading.threshold);
    let baseline = reading
        .baseline
        .map(|mean| format!(" (baseline {})", amount(rule, mean)))
        .unwrap_or_default();
    let window = config.queue_growth_window.as_secs();
    let what = match rule {
        Rule::IngestSpike => format!("ingest rate {value} events/s above {threshold}{baseline}"),
        Rule::SignatureFailures => {
            format!("{value} refused signatures per minute, above {threshold}{baseline}")
        }
        Rule::SourceSilent => {
            let usual = reading
                .baseline
                .map(|gap| format!(" (usual gap {gap:.1} s)"))
                .unwrap_or_default();
            format!("no events for {value} s, limit {threshold} s{usual}")
        }
        Rule::DeliveryFailures => {
            format!("delivery failure ratio {value} above {threshold}{baseline}")
        }
        Rule::SlowPlugin => format!("mean plugin call {value} ms above {threshold} ms{baseline}"),
        Rule::BacklogHigh => format!("backlog {value} events above {threshold}{baseline}"),
        Rule::PendingAgeHigh => {
            format!("oldest pending event waited {value} s, above {threshold} s{baseline}")
        }
        Rule::BacklogGrowing => format!(
            "backlog grew from {threshold} to {value} events without shrinking for {} s",
            config.backlog_growing_for.as_secs()
        ),
        Rule::BacklogStuck => {
            format!("no successful delivery for {value} s with events waiting, limit {threshold} s")
        }
        Rule::BreakerOpen => format!("circuit breaker open for {value} s, limit {threshold} s"),
        Rule::CpuSaturated => {
            format!("guest cpu {value} cores, at or above {threshold} of what it may use")
        }
        Rule::PluginQuarantined => format!("quarantined for {value} s"),
        Rule::DeadLetterGrowth => {
            format!("dead-letter queue grew by {value} events within {window} s, limit {threshold}")
        }
        Rule::ReviewGrowth => {
            format!("review queue grew by {value} events within {window} s, limit {threshold}")
        }
    };
    format!(
        "{} `{}`: {what}; {}",
        subject.kind(),
        subject.name(),
        cause.summary()
    )
}

fn amount(rule: Rule, value: f64) -> String {
    match rule.unit() {
        "ratio" => format!("{value:.2}"),
        "events/s" | "refusals/min" => format!("{value:.1}"),
        "cores" => format!("{value:.2}"),
        _ => format!("{value:.0}"),
    }
}

const TIMEOUT_LABEL: &str = "timeout";
const UNREACHABLE_LABEL: &str = "unreachable";
const TOO_MANY_REQUESTS: &str = "429";

fn is_success(label: &str) -> bool {
    label
        .parse::<u16>()
        .is_ok_and(|status| (200..300).contains(&status))
}

/// Names the probable cause of a consumer rule from what was seen since its condition began and
/// from the consumer's state now.
pub(super) fn consumer_cause(rule: Rule, tally: &Tally, now: &ConsumerSample) -> Cause {
    if now.quarantined {
        return Cause::Quarantined;
    }
    if rule == Rule::CpuSaturated {
        return Cause::PluginCpu;
    }
    if now.paused {
        return Cause::Paused;
    }
    if rule.is_about_backlog() && now.breaker_open {
        return Cause::BreakerOpen;
    }

    let mut timeouts = 0u64;
    let mut unreachable = 0u64;
    let mut answers_429 = 0u64;
    let mut other_errors = 0u64;
    let mut statuses = BTreeMap::new();
    for (label, count) in &tally.downstream {
        match label.as_str() {
            TIMEOUT_LABEL => timeouts = timeouts.saturating_add(*count),
            UNREACHABLE_LABEL => unreachable = unreachable.saturating_add(*count),
            label if is_success(label) => {}
            label => {
                if label == TOO_MANY_REQUESTS {
                    answers_429 = answers_429.saturating_add(*count);
                } else {
                    other_errors = other_errors.saturating_add(*count);
                }
                statuses.insert(label.to_owned(), *count);
            }
        }
    }

    // the kind of trouble seen most often wins; on a tie the earlier, more specific kind
    let candidates = [timeouts, unreachable, answers_429, other_errors];
    let most = candidates.iter().copied().max().unwrap_or(0);
    if most > 0 {
        if timeouts == most {
            return Cause::Timeouts { count: timeouts };
        }
        if unreachable == most {
            return Cause::Unreachable { count: unreachable };
        }
        if answers_429 == most {
            return Cause::RateLimited {
                answers_429,
                limiter_waits: tally.limiter_waits,
            };
        }
        return Cause::DownstreamErrors { statuses };
    }

    // our own limiter slows deliveries down but never fails them
    let attempts = tally.delivered.saturating_add(tally.failed);
    if rule != Rule::DeliveryFailures
        && tally.limiter_waits > 0
        && tally.limiter_waits.saturating_mul(2) >= attempts
    {
        return Cause::RateLimited {
            answers_429: 0,
            limiter_waits: tally.limiter_waits,
        };
    }
    // dead letters and reviews come from failed deliveries, whatever else was seen
    let about_failures = matches!(
        rule,
        Rule::DeliveryFailures | Rule::DeadLetterGrowth | Rule::ReviewGrowth
    );
    if about_failures || (tally.failed > 0 && tally.failed >= tally.delivered) {
        return Cause::PluginFailures;
    }
    if rule == Rule::BreakerOpen {
        return Cause::BreakerOpen;
    }
    Cause::SlowConsumer
}

/// Names the probable cause of a source rule from what was seen since its condition began.
pub(super) fn source_cause(rule: Rule, tally: &Tally) -> Cause {
    match rule {
        Rule::SourceSilent => Cause::NoTraffic,
        Rule::IngestSpike => Cause::TrafficSpike,
        _ => Cause::SignatureFailures {
            reasons: tally.refusals.clone(),
            hint: signature_hint(&tally.refusals),
        },
    }
}

fn signature_hint(reasons: &BTreeMap<String, u64>) -> Option<String> {
    let refused = total(reasons);
    let count = |labels: &[&str]| {
        labels.iter().fold(0u64, |sum, label| {
            sum.saturating_add(reasons.get(*label).copied().unwrap_or(0))
        })
    };
    let dominates = |share: u64| refused > 0 && share.saturating_mul(2) >= refused;
    let hint = if dominates(count(&["no_match"])) {
        "was the signing secret rotated without adding the new one?"
    } else if dominates(count(&["stale_timestamp", "future_timestamp"])) {
        "is the sender's clock or a queue delaying requests?"
    } else if dominates(count(&[
        "missing_header",
        "duplicate_header",
        "malformed_header",
    ])) {
        "is a proxy rewriting the stripe-signature header, or something else posting here?"
    } else {
        return None;
    };
    Some(hint.to_owned())
}
