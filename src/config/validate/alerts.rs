//! `[alerts]`: the detector's thresholds and the webhook.

use super::*;

impl Checker<'_> {
    pub(super) fn alerts(&mut self, raw: &RawAlerts, all: &RawConfig) -> AlertsConfig {
        let at = |key: &str| format!("alerts.{key}");
        let default = super::settings::AlertThresholds::default();
        let interval = self.duration(
            at("interval"),
            raw.interval.as_ref(),
            duration(defaults::ALERTS_INTERVAL),
        );
        if !(Duration::from_millis(100)..=Duration::from_secs(300)).contains(&interval) {
            self.issue(at("interval"), "must be from `100ms` to `5m`");
        }
        let mut number = |key: &str, value: Option<f64>, min: f64, max: f64, default: f64| {
            let value = value.unwrap_or(default);
            if !(value.is_finite() && value >= min && value <= max) {
                self.issue(at(key), format!("`{value}` must be from {min} to {max}"));
            }
            value
        };
        let band = number("band", raw.band, 1.0, 100.0, default.band);
        let spike_factor = number(
            "spike_factor",
            raw.spike_factor,
            1.0,
            1_000.0,
            default.spike_factor,
        );
        let silent_factor = number(
            "silent_factor",
            raw.silent_factor,
            1.0,
            1_000.0,
            default.silent_factor,
        );
        let signature_failures_per_min = number(
            "signature_failures_per_min",
            raw.signature_failures_per_min,
            0.001,
            1_000_000.0,
            default.signature_failures_per_min,
        );
        let failure_ratio = raw.failure_ratio.unwrap_or(default.failure_ratio);
        if !(failure_ratio > 0.0 && failure_ratio <= 1.0) {
            self.issue(
                at("failure_ratio"),
                format!("`{failure_ratio}` must be above 0 and at most 1"),
            );
        }
        let whole = |checker: &mut Self, key: &str, value: Option<i64>, default: u64| {
            u64::from(checker.count(
                at(key),
                value,
                (1, i64::from(u32::MAX)),
                u32::try_from(default).unwrap_or(u32::MAX),
            ))
        };
        let min_attempts = whole(self, "min_attempts", raw.min_attempts, default.min_attempts);
        let backlog_floor = whole(
            self,
            "backlog_floor",
            raw.backlog_floor,
            default.backlog_floor,
        );
        let queue_growth = whole(self, "queue_growth", raw.queue_growth, default.queue_growth);
        let mut span = |key: &str, value: &Option<String>, default: Duration| {
            self.duration(at(key), value.as_ref(), default)
        };
        let thresholds = super::settings::AlertThresholds {
            learn_for: span("learn_for", &raw.learn_for, default.learn_for),
            warmup: span("warmup", &raw.warmup, default.warmup),
            band,
            sustain: span("sustain", &raw.sustain, default.sustain),
            clear_after: span("clear_after", &raw.clear_after, default.clear_after),
            min_attempts,
            failure_ratio,
            signature_failures_per_min,
            spike_factor,
            silent_after: span("silent_after", &raw.silent_after, default.silent_after),
            silent_factor,
            slow_plugin_floor: span(
                "slow_plugin_floor",
                &raw.slow_plugin_floor,
                default.slow_plugin_floor,
            ),
            backlog_floor,
            pending_age_floor: span(
                "pending_age_floor",
                &raw.pending_age_floor,
                default.pending_age_floor,
            ),
            backlog_growing_for: span(
                "backlog_growing_for",
                &raw.backlog_growing_for,
                default.backlog_growing_for,
            ),
            stuck_for: span("stuck_for", &raw.stuck_for, default.stuck_for),
            breaker_open_for: span(
                "breaker_open_for",
                &raw.breaker_open_for,
                default.breaker_open_for,
            ),
            queue_growth,
            queue_growth_window: span(
                "queue_growth_window",
                &raw.queue_growth_window,
                default.queue_growth_window,
            ),
        };
        if thresholds.learn_for < interval {
            self.issue(
                at("learn_for"),
                "must be at least `alerts.interval`: a baseline learns from samples",
            );
        }
        if let Some(name) = &raw.webhook
            && !all.connections.contains_key(name)
        {
            self.issue(
                at("webhook"),
                format!("unknown connection `{name}`: define `[connections.{name}]`"),
            );
        }
        let webhook_path = raw
            .webhook_path
            .clone()
            .unwrap_or_else(|| defaults::ALERTS_WEBHOOK_PATH.into());
        if !webhook_path.starts_with('/') {
            self.issue(
                at("webhook_path"),
                format!("`{webhook_path}` must start with `/`"),
            );
        }
        if raw.webhook_path.is_some() && raw.webhook.is_none() {
            self.issue(at("webhook_path"), "is set but `alerts.webhook` is not");
        }
        AlertsConfig {
            enabled: raw.enabled.unwrap_or(defaults::ALERTS_ENABLED),
            interval,
            thresholds,
            webhook: raw.webhook.clone(),
            webhook_path,
        }
    }
}
