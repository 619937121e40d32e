//! Settings types that stages are built from, here so `config` depends on
//! no stage: the stages import these, never the other way round.
//! `Default` holds the production values, read from [`defaults`].

use super::defaults;
use std::time::Duration;

/// Settings, from `[consumers.<name>].circuit_breaker`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Open when failures / calls in the window reaches this (0 < r ≤ 1).
    pub failure_ratio: f64,
    /// ... but only once the window holds at least this many calls.
    pub min_calls: u32,
    /// Length of the rolling window.
    pub window: Duration,
    /// Also open after this many failures in a row (0 = off).
    pub consecutive_failures: u32,
    /// How long to stay open before probing.
    pub open_for: Duration,
    /// Calls allowed (and needed to succeed) while half-open.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_ratio: defaults::BREAKER_FAILURE_RATIO,
            min_calls: defaults::BREAKER_MIN_CALLS,
            window: defaults::duration(defaults::BREAKER_WINDOW),
            consecutive_failures: defaults::BREAKER_CONSECUTIVE_FAILURES,
            open_for: defaults::duration(defaults::BREAKER_OPEN_FOR),
            half_open_probes: defaults::BREAKER_HALF_OPEN_PROBES,
        }
    }
}

/// Thresholds of the alert rules, from `[alerts]`; `Default` holds the
/// production values.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertThresholds {
    /// Time constant of the baselines' exponential averages: roughly how far back "normal"
    /// reaches.
    pub learn_for: Duration,
    /// A baseline is trusted by the band rules once it has learned from this much time.
    pub warmup: Duration,
    /// Width of the normal band above the baseline mean, in standard deviations (the deviation
    /// is never taken below 10% of the mean).
    pub band: f64,
    /// A band or floor rule raises once its condition has held this long without a normal tick.
    pub sustain: Duration,
    /// An alert clears once its condition has been normal this long without interruption.
    pub clear_after: Duration,
    /// Fewest delivery attempts in one tick for that tick's failure ratio to count. A tick
    /// with fewer neither starts nor breaks a raise streak; it counts towards clearing only
    /// if none of its attempts failed.
    pub min_attempts: u64,
    /// Delivery failure ratio (0..1) that is always an error, whatever the baseline.
    pub failure_ratio: f64,
    /// Refused signatures per minute that are always an error.
    pub signature_failures_per_min: f64,
    /// An ingest rate is a spike only above this multiple of the baseline mean (and above the
    /// band).
    pub spike_factor: f64,
    /// A source that has had traffic is silent after this long without an event, at least.
    pub silent_after: Duration,
    /// ... or after this many times its usual gap between events, when that is longer.
    pub silent_factor: f64,
    /// A mean plugin call time below this never alerts.
    pub slow_plugin_floor: Duration,
    /// A backlog below this many events never alerts as high.
    pub backlog_floor: u64,
    /// An oldest pending age below this never alerts.
    pub pending_age_floor: Duration,
    /// The backlog grew, never shrinking from one tick to the next, for this long.
    pub backlog_growing_for: Duration,
    /// Events waiting and not one successful delivery for this long.
    pub stuck_for: Duration,
    /// The circuit breaker stayed open this long.
    pub breaker_open_for: Duration,
    /// The dead-letter or review queue grew by at least this many events within
    /// `queue_growth_window`.
    pub queue_growth: u64,
    /// Window over which queue growth is counted.
    pub queue_growth_window: Duration,
}

impl Default for AlertThresholds {
    fn default() -> AlertThresholds {
        use defaults::duration;
        AlertThresholds {
            learn_for: duration(defaults::ALERTS_LEARN_FOR),
            warmup: duration(defaults::ALERTS_WARMUP),
            band: defaults::ALERTS_BAND,
            sustain: duration(defaults::ALERTS_SUSTAIN),
            clear_after: duration(defaults::ALERTS_CLEAR_AFTER),
            min_attempts: defaults::ALERTS_MIN_ATTEMPTS,
            failure_ratio: defaults::ALERTS_FAILURE_RATIO,
            signature_failures_per_min: defaults::ALERTS_SIGNATURE_FAILURES_PER_MIN,
            spike_factor: defaults::ALERTS_SPIKE_FACTOR,
            silent_after: duration(defaults::ALERTS_SILENT_AFTER),
            silent_factor: defaults::ALERTS_SILENT_FACTOR,
            slow_plugin_floor: duration(defaults::ALERTS_SLOW_PLUGIN_FLOOR),
            backlog_floor: defaults::ALERTS_BACKLOG_FLOOR,
            pending_age_floor: duration(defaults::ALERTS_PENDING_AGE_FLOOR),
            backlog_growing_for: duration(defaults::ALERTS_BACKLOG_GROWING_FOR),
            stuck_for: duration(defaults::ALERTS_STUCK_FOR),
            breaker_open_for: duration(defaults::ALERTS_BREAKER_OPEN_FOR),
            queue_growth: defaults::ALERTS_QUEUE_GROWTH,
            queue_growth_window: duration(defaults::ALERTS_QUEUE_GROWTH_WINDOW),
        }
    }
}
