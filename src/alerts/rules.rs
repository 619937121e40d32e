//! What the detector reads (samples) and what it says (rules, subjects, causes, alerts); the
//! bookkeeping that turns readings into alerts is in `tracking.rs`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::tracking::Timing;

/// One look at the hub. Counters are cumulative since process start; the watch takes deltas
/// between consecutive samples itself. A counter that goes down (a reload recreated the consumer)
/// marks a restart: the subject's counter-based rules skip that tick and later deltas are taken
/// from the new values.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// When the sample was taken, milliseconds since the unix epoch; supplied by the caller so
    /// tests can use a fake clock.
    pub at_ms: u64,
    pub sources: Vec<SourceSample>,
    pub consumers: Vec<ConsumerSample>,
}

#[derive(Debug, Clone, Default)]
pub struct SourceSample {
    pub name: String,
    /// cumulative webhooks verified and persisted (accepted + duplicates)
    pub received: u64,
    /// cumulative refused signatures by reason label: "no_match", "stale_timestamp",
    /// "future_timestamp", "missing_header", "duplicate_header", "malformed_header"
    pub signature_failures: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default)]
pub struct ConsumerSample {
    pub name: String,
    /// cumulative successful attempts (delivered + skipped as already done)
    pub delivered: u64,
    /// cumulative failed attempts (retried + dead-lettered + reviewed + infrastructure errors)
    pub failed: u64,
    /// cumulative answers of the plugin's outbound calls: "200", "503", "429", ..., "timeout",
    /// "unreachable"
    pub downstream: BTreeMap<String, u64>,
    /// cumulative plugin calls and their summed wall time
    pub plugin_calls: u64,
    pub plugin_micros: u64,
    /// cumulative times the consumer waited for its rate limiter
    pub rate_limit_waits: u64,
    /// gauges, read now
    pub backlog: u64,
    pub oldest_pending_ms: Option<u64>,
    pub breaker_open: bool,
    pub paused: bool,
    pub dead_letters: u64,
    pub reviews: u64,
    /// quarantined by its plugin-health breaker (paused too)
    pub quarantined: bool,
    /// cumulative guest time on the plugin threads
    pub cpu_micros: u64,
    /// cores of guest time it may use: its `cpu_per_second` quota, else every plugin thread
    pub cpu_limit: f64,
}

pub use crate::config::settings::AlertThresholds;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    IngestSpike,
    SignatureFailures,
    SourceSilent,
    DeliveryFailures,
    SlowPlugin,
    BacklogHigh,
    PendingAgeHigh,
    BacklogGrowing,
    BacklogStuck,
    BreakerOpen,
    DeadLetterGrowth,
    ReviewGrowth,
    /// The plugin used nearly all the CPU it may (its quota, or the whole pool).
    CpuSaturated,
    /// The plugin-health breaker quarantined the consumer.
    PluginQuarantined,
}

impl Rule {
    pub const ALL: [Rule; 14] = [
        Rule::IngestSpike,
        Rule::SignatureFailures,
        Rule::SourceSilent,
        Rule::DeliveryFailures,
        Rule::SlowPlugin,
        Rule::BacklogHigh,
        Rule::PendingAgeHigh,
        Rule::BacklogGrowing,
        Rule::BacklogStuck,
        Rule::BreakerOpen,
        Rule::DeadLetterGrowth,
        Rule::ReviewGrowth,
        Rule::CpuSaturated,
        Rule::PluginQuarantined,
    ];

    /// The snake_case name, as serialized.
    pub fn name(self) -> &'static str {
        match self {
            Rule::IngestSpike => "ingest_spike",
            Rule::SignatureFailures => "signature_failures",
            Rule::SourceSilent => "source_silent",
            Rule::DeliveryFailures => "delivery_failures",
            Rule::SlowPlugin => "slow_plugin",
            Rule::BacklogHigh => "backlog_high",
            Rule::PendingAgeHigh => "pending_age_high",
            Rule::BacklogGrowing => "backlog_growing",
            Rule::BacklogStuck => "backlog_stuck",
            Rule::BreakerOpen => "breaker_open",
            Rule::DeadLetterGrowth => "dead_letter_growth",
            Rule::ReviewGrowth => "review_growth",
            Rule::CpuSaturated => "cpu_saturated",
            Rule::PluginQuarantined => "plugin_quarantined",
        }
    }

    pub(super) fn unit(self) -> &'static str {
        match self {
            Rule::IngestSpike => "events/s",
            Rule::SignatureFailures => "refusals/min",
            Rule::DeliveryFailures => "ratio",
            Rule::SlowPlugin => "ms",
            Rule::SourceSilent
            | Rule::PendingAgeHigh
            | Rule::BacklogStuck
            | Rule::BreakerOpen
            | Rule::PluginQuarantined => "s",
            Rule::CpuSaturated => "cores",
            Rule::BacklogHigh
            | Rule::BacklogGrowing
            | Rule::DeadLetterGrowth
            | Rule::ReviewGrowth => "events",
        }
    }

    /// Rules that measure a duration themselves hold for that duration instead of `sustain`.
    pub(super) fn timing(self, config: &AlertThresholds) -> Timing {
        let hold_for = match self {
            Rule::IngestSpike
            | Rule::SignatureFailures
            | Rule::DeliveryFailures
            | Rule::SlowPlugin
            | Rule::BacklogHigh
            | Rule::PendingAgeHigh
            | Rule::CpuSaturated => config.sustain,
            Rule::BacklogGrowing => config.backlog_growing_for,
            Rule::BacklogStuck => config.stuck_for,
            Rule::BreakerOpen => config.breaker_open_for,
            Rule::SourceSilent
            | Rule::DeadLetterGrowth
            | Rule::ReviewGrowth
            | Rule::PluginQuarantined => Duration::ZERO,
        };
        // a silent source is over with its first event
        let clear_after = match self {
            Rule::SourceSilent => Duration::ZERO,
            _ => config.clear_after,
        };
        Timing {
            hold_for,
            clear_after,
        }
    }

    /// Rules judged on counter deltas, which a restart tick cannot provide.
    pub(super) fn reads_counters(self) -> bool {
        matches!(
            self,
            Rule::IngestSpike
                | Rule::SignatureFailures
                | Rule::SourceSilent
                | Rule::DeliveryFailures
                | Rule::SlowPlugin
                | Rule::BacklogStuck
                | Rule::CpuSaturated
        )
    }

    pub(super) fn is_about_backlog(self) -> bool {
        matches!(
            self,
            Rule::BacklogHigh | Rule::PendingAgeHigh | Rule::BacklogGrowing | Rule::BacklogStuck
        )
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// What an alert is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum Subject {
    Source(String),
    Consumer(String),
}

impl Subject {
    pub fn name(&self) -> &str {
        match self {
            Subject::Source(name) | Subject::Consumer(name) => name,
        }
    }

    pub(super) fn kind(&self) -> &'static str {
        match self {
            Subject::Source(_) => "source",
            Subject::Consumer(_) => "consumer",
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}:{}", self.kind(), self.name())
    }
}

/// The probable cause, taken from what was seen since the condition began.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Cause {
    /// Non-2xx status answers seen, e.g. {"503": 12}.
    DownstreamErrors {
        statuses: BTreeMap<String, u64>,
    },
    Timeouts {
        count: u64,
    },
    Unreachable {
        count: u64,
    },
    RateLimited {
        answers_429: u64,
        limiter_waits: u64,
    },
    /// Failures with no downstream error seen: the plugin itself rejects or traps.
    PluginFailures,
    BreakerOpen,
    /// An operator paused the consumer.
    Paused,
    /// The sandbox kept stopping the plugin, so it was quarantined.
    Quarantined,
    /// The plugin's own code keeps the CPU busy (a loop, or a heavy transform).
    PluginCpu,
    /// Deliveries happen, but slower than arrivals.
    SlowConsumer,
    SignatureFailures {
        reasons: BTreeMap<String, u64>,
        hint: Option<String>,
    },
    TrafficSpike,
    NoTraffic,
}

impl Cause {
    /// One human line.
    pub fn summary(&self) -> String {
        match self {
            Cause::DownstreamErrors { statuses } => {
                format!("downstream answered {}", counts_text(statuses))
            }
            Cause::Timeouts { count } => format!("downstream calls timed out ×{count}"),
            Cause::Unreachable { count } => format!("downstream unreachable ×{count}"),
            Cause::RateLimited {
                answers_429,
                limiter_waits,
            } => {
                let mut seen = Vec::new();
                if *answers_429 > 0 {
                    seen.push(format!("downstream answered 429 ×{answers_429}"));
                }
                if *limiter_waits > 0 {
                    seen.push(format!("limiter waits ×{limiter_waits}"));
                }
                format!("rate limited: {}", seen.join(", "))
            }
            Cause::PluginFailures => "the plugin failed without any downstream error".to_owned(),
            Cause::BreakerOpen => "circuit breaker open, deliveries held".to_owned(),
            Cause::Paused => "consumer paused by an operator".to_owned(),
            Cause::Quarantined => {
                "plugin quarantined after repeated sandbox stops; resume it or deploy a fixed version"
                    .to_owned()
            }
            Cause::PluginCpu => "the plugin's own code keeps the CPU busy".to_owned(),
            Cause::SlowConsumer => "deliveries slower than arrivals".to_owned(),
            Cause::SignatureFailures { reasons, hint } => {
                let mut line = format!("signatures refused: {}", counts_text(reasons));
                if let Some(hint) = hint {
                    line.push_str(" — ");
                    line.push_str(hint);
                }
                line
            }
            Cause::TrafficSpike => "traffic far above its usual level".to_owned(),
            Cause::NoTraffic => "no events arriving".to_owned(),
        }
    }
}

/// "503 ×12, 500 ×3": the most frequent first.
fn counts_text(counts: &BTreeMap<String, u64>) -> String {
    let mut ordered: Vec<(&String, &u64)> = counts.iter().filter(|(_, n)| **n > 0).collect();
    ordered.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    let parts: Vec<String> = ordered
        .iter()
        .map(|(label, count)| format!("{label} ×{count}"))
        .collect();
    parts.join(", ")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Increasing per [`super::Detector`].
    pub id: u64,
    pub rule: Rule,
    pub subject: Subject,
    /// When the condition began (its first out-of-band tick), not when the alert was raised.
    pub started_at_ms: u64,
    pub raised_at_ms: u64,
    pub cleared_at_ms: Option<u64>,
    /// Latest value, in `unit`.
    pub value: f64,
    /// Worst value while active.
    pub peak: f64,
    /// Baseline mean, when one applies.
    pub baseline: Option<f64>,
    /// The bound that was crossed.
    pub threshold: f64,
    /// "events/s", "ratio", "ms", "events", "refusals/min" or "s".
    pub unit: String,
    pub cause: Cause,
    /// Lowercase, one line, describing the latest out-of-band reading and its cause.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Raised(Alert),
    Cleared(Alert),
}
