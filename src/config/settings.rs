//! Settings types that stages are built from, here so `config` depends on
//! no stage: the stages import these, never the other way round.
//! `Default` holds the production values.

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
            failure_ratio: 0.5,
            min_calls: 20,
            window: Duration::from_secs(30),
            consecutive_failures: 10,
            open_for: Duration::from_secs(15),
            half_open_probes: 1,
        }
    }
}

/// Thresholds of the alert rules; `Default` holds the production values.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertThresholds {
    /// Time constant of the baselines' exponential averages: roughly how far back "normal"
    /// reaches. Default 1 h.
    pub learn_for: Duration,
    /// A baseline is trusted by the band rules once it has learned from this much time.
    /// Default 30 min.
    pub warmup: Duration,
    /// Width of the normal band above the baseline mean, in standard deviations (the deviation
    /// is never taken below 10% of the mean). Default 4.0.
    pub band: f64,
    /// A band or floor rule raises once its condition has held this long without a normal tick.
    /// Default 2 min.
    pub sustain: Duration,
    /// An alert clears once its condition has been normal this long without interruption.
    /// Default 5 min.
    pub clear_after: Duration,
    /// Fewest delivery attempts in one tick for that tick's failure ratio to count. Default 5.
    /// A tick with fewer neither starts nor breaks a raise streak; it counts towards clearing
    /// only if none of its attempts failed.
    pub min_attempts: u64,
    /// Delivery failure ratio (0..1) that is always an error, whatever the baseline. Default 0.2.
    pub failure_ratio: f64,
    /// Refused signatures per minute that are always an error. Default 5.0.
    pub signature_failures_per_min: f64,
    /// An ingest rate is a spike only above this multiple of the baseline mean (and above the
    /// band). Default 3.0.
    pub spike_factor: f64,
    /// A source that has had traffic is silent after this long without an event, at least.
    /// Default 15 min.
    pub silent_after: Duration,
    /// ... or after this many times its usual gap between events, when that is longer.
    /// Default 10.0.
    pub silent_factor: f64,
    /// A mean plugin call time below this never alerts. Default 250 ms.
    pub slow_plugin_floor: Duration,
    /// A backlog below this many events never alerts as high. Default 1000.
    pub backlog_floor: u64,
    /// An oldest pending age below this never alerts. Default 5 min.
    pub pending_age_floor: Duration,
    /// The backlog grew, never shrinking from one tick to the next, for this long.
    /// Default 10 min.
    pub backlog_growing_for: Duration,
    /// Events waiting and not one successful delivery for this long. Default 5 min.
    pub stuck_for: Duration,
    /// The circuit breaker stayed open this long. Default 5 min.
    pub breaker_open_for: Duration,
    /// The dead-letter or review queue grew by at least this many events within
    /// `queue_growth_window`. Default 10.
    pub queue_growth: u64,
    /// Window over which queue growth is counted. Default 15 min.
    pub queue_growth_window: Duration,
}

impl Default for AlertThresholds {
    fn default() -> AlertThresholds {
        const MINUTE: u64 = 60;
        AlertThresholds {
            learn_for: Duration::from_secs(60 * MINUTE),
            warmup: Duration::from_secs(30 * MINUTE),
            band: 4.0,
            sustain: Duration::from_secs(2 * MINUTE),
            clear_after: Duration::from_secs(5 * MINUTE),
            min_attempts: 5,
            failure_ratio: 0.2,
            signature_failures_per_min: 5.0,
            spike_factor: 3.0,
            silent_after: Duration::from_secs(15 * MINUTE),
            silent_factor: 10.0,
            slow_plugin_floor: Duration::from_millis(250),
            backlog_floor: 1000,
            pending_age_floor: Duration::from_secs(5 * MINUTE),
            backlog_growing_for: Duration::from_secs(10 * MINUTE),
            stuck_for: Duration::from_secs(5 * MINUTE),
            breaker_open_for: Duration::from_secs(5 * MINUTE),
            queue_growth: 10,
            queue_growth_window: Duration::from_secs(15 * MINUTE),
        }
    }
}
