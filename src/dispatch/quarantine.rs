//! Plugin health: a breaker on the plugin itself, beside the downstream
//! breaker.
//!
//! A plugin that the sandbox keeps stopping (CPU or wall-clock budget,
//! memory cap, stack overflow, trap) is broken, not unlucky: every retry
//! costs the pool CPU that healthy consumers could use. After
//! `quarantine_after` consecutive stopped calls the consumer is quarantined:
//! paused with the reason (its events stay in its queue), logged, and shown
//! in its status, where the anomaly watch raises an alert. It stays so until
//! an operator resumes it or a reload brings a new plugin version.

use crate::plugin::CallReport;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::sync::watch;

pub struct PluginHealth {
    consumer: String,
    /// 0 never quarantines.
    threshold: AtomicU32,
    consecutive: AtomicU32,
    reason: Mutex<Option<String>>,
    /// The consumer's pause switch, which its pull loops watch.
    paused: watch::Sender<bool>,
}

impl PluginHealth {
    pub fn new(consumer: &str, threshold: u32, paused: watch::Sender<bool>) -> PluginHealth {
        PluginHealth {
            consumer: consumer.to_owned(),
            threshold: AtomicU32::new(threshold),
            consecutive: AtomicU32::new(0),
            reason: Mutex::new(None),
            paused,
        }
    }

    /// A reload keeps the health of an unchanged plugin, with the new
    /// threshold.
    pub fn set_threshold(&self, threshold: u32) {
        self.threshold.store(threshold, Ordering::Relaxed);
    }

    /// Counts one finished call: a call the sandbox stopped adds one, any
    /// other resets the count.
    pub fn record(&self, report: &CallReport) {
        let Some(stop) = report.stops.iter().find(|stop| stop.ends_call()) else {
            self.consecutive.store(0, Ordering::Relaxed);
            return;
        };
        let stopped = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        let threshold = self.threshold.load(Ordering::Relaxed);
        if threshold == 0 || stopped < threshold {
            return;
        }
        let mut reason = self.reason.lock().expect("health lock");
        if reason.is_some() {
            return;
        }
        let why = format!(
            "quarantined: {stopped} consecutive calls stopped by the sandbox (last: {})",
            stop.label()
        );
        tracing::error!(
            consumer = self.consumer.as_str(),
            reason = why.as_str(),
            "plugin quarantined; its events wait in its queue until it is resumed or reloaded with a new plugin"
        );
        *reason = Some(why);
        self.paused.send_replace(true);
    }

    /// Why the consumer is quarantined, if it is.
    pub fn quarantined(&self) -> Option<String> {
        self.reason.lock().expect("health lock").clone()
    }

    /// Lifts the quarantine (an operator resumed, or a new plugin version
    /// arrived); the caller decides whether the consumer runs again.
    pub fn clear(&self) -> bool {
        self.consecutive.store(0, Ordering::Relaxed);
        self.reason.lock().expect("health lock").take().is_some()
    }
}
