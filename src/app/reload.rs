//! Reloads: SIGHUP, the admin call, or a change of the file when
//! `server.watch_config` is on. One at a time; a config that fails anywhere
//! (validation, secrets, plugins, a setting that takes a restart) changes
//! nothing, and the running one stays.

use super::{HubError, Wiring, prepare};
use crate::admin::{ReloadReport, ReloadRequest};
use crate::alerts::AlertSettings;
use crate::bus::Subscriber;
use crate::config::Config;
use crate::dispatch::start::{RunningConsumer, stop_consumers};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::watch;

/// Owns the running consumer generation and performs reloads one at a time.
pub(super) struct Supervisor {
    wiring: Wiring,
    /// The anomaly watch's settings; a reload sends the new ones.
    alerts: watch::Sender<AlertSettings>,
    config: Config,
    path: Option<PathBuf>,
    running: BTreeMap<String, RunningConsumer>,
    /// Hash of the file as last seen by the file watch (applied or refused).
    seen: Option<u64>,
}

fn file_hash(path: &Path) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let bytes = std::fs::read(path).ok()?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    Some(hasher.finish())
}

/// Settings a running hub cannot change: listeners, the edge's limits, the
/// bus, the idempotency store, telemetry. Returns the keys that differ.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let (a, b) = (&old.server, &new.server);
    [
        ("server.listen", a.listen != b.listen),
        ("server.max_body", a.max_body != b.max_body),
        (
            "server.header_read_timeout",
            a.header_read_timeout != b.header_read_timeout,
        ),
        (
            "server.body_read_timeout",
            a.body_read_timeout != b.body_read_timeout,
        ),
        (
            "server.trusted_proxies",
            a.trusted_proxies != b.trusted_proxies,
        ),
        (
            "server.max_concurrency",
            a.max_concurrency != b.max_concurrency,
        ),
        ("server.rate_limit", a.rate_limit != b.rate_limit),
        ("admin", old.admin != new.admin),
        ("bus", old.bus != new.bus),
        ("idempotency", old.idempotency != new.idempotency),
        ("telemetry", old.telemetry != new.telemetry),
    ]
    .into_iter()
    .filter(|(_, changed)| *changed)
    .map(|(key, _)| key.to_owned())
    .collect()
}

impl Supervisor {
    pub(super) fn new(
        wiring: Wiring,
        alerts: watch::Sender<AlertSettings>,
        config: Config,
        path: Option<PathBuf>,
        running: BTreeMap<String, RunningConsumer>,
    ) -> Supervisor {
        Supervisor {
            wiring,
            alerts,
            config,
            seen: path.as_deref().and_then(file_hash),
            path,
            running,
        }
    }

    pub(super) async fn run(
        mut self,
        mut requests: tokio::sync::mpsc::Receiver<ReloadRequest>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut file_check = tokio::time::interval(Duration::from_secs(1));
        file_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                request = requests.recv() => {
                    let Some(reply) = request else { continue };
                    let outcome = self.reload().await;
                    let _ = reply.send(outcome);
                }
                _ = file_check.tick(), if self.config.server.watch_config && self.path.is_some() => {
                    let now = self.path.as_deref().and_then(file_hash);
                    if now.is_some() && now != self.seen {
                        let file = self.path.as_deref().map(Path::display);
                        tracing::info!(config = %file.expect("watched only with a path"), "the config file changed; reloading");
                        let _ = self.reload().await;
                    }
                }
                _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => break,
            }
        }
        stop_consumers(std::mem::take(&mut self.running)).await;
    }

    /// Reads the file again and switches to it, or changes nothing.
    async fn reload(&mut self) -> Result<ReloadReport, Vec<String>> {
        let Some(path) = self.path.clone() else {
            return Err(vec![
                "this hub was not started from a file; nothing to reload".into(),
            ]);
        };
        self.seen = file_hash(&path);
        let outcome = self.switch_to(&path).await;
        match &outcome {
            Ok(report) => tracing::info!(
                config = %path.display(),
                added = ?report.added,
                removed = ?report.removed,
                "config reloaded"
            ),
            Err(problems) => tracing::error!(
                problems = %problems.join("; "),
                "config reload refused; the running config stays"
            ),
        }
        outcome
    }

    async fn switch_to(&mut self, path: &Path) -> Result<ReloadReport, Vec<String>> {
        let config = Config::load(path).map_err(|err| err.messages())?;
        let fixed = restart_only_changes(&self.config, &config);
        if !fixed.is_empty() {
            return Err(fixed
                .into_iter()
                .map(|key| format!("{key}: changed, but takes a restart to apply"))
                .collect());
        }
        let to_strings = |errors: Vec<HubError>| -> Vec<String> {
            errors.iter().map(ToString::to_string).collect()
        };
        let alerts = AlertSettings::from_config(&config).map_err(|err| vec![err.to_string()])?;
        let mut prepared =
            prepare(config, &self.wiring.tracer, &self.wiring.pool).map_err(to_strings)?;
        self.wiring
            .consumers
            .bus
            .resubscribe(&Subscriber::from_config(&prepared.config))
            .await
            .map_err(|err| vec![format!("bus: {err}")])?;
        self.wiring
            .ingest
            .set_sources(std::mem::take(&mut prepared.sources));
        let old: Vec<String> = self.running.keys().cloned().collect();
        stop_consumers(std::mem::take(&mut self.running)).await;
        self.running = self.wiring.start_consumers(&prepared);
        let new: Vec<String> = self.running.keys().cloned().collect();
        self.alerts.send_replace(alerts);
        self.config = prepared.config;
        Ok(ReloadReport {
            added: new.iter().filter(|n| !old.contains(n)).cloned().collect(),
            removed: old.iter().filter(|n| !new.contains(n)).cloned().collect(),
            consumers: new,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Config {
        Config::parse(text, Path::new(".")).expect("a valid config")
    }

    #[test]
    fn only_settings_that_take_a_restart_are_named() {
        let base = r#"
[server]
listen = "127.0.0.1:9000"

[sources.stripe]
kind = "stripe"
path = "/stripe"
secrets = ["env:SWITCHYARD_TEST_UNSET"]

[consumers.crm]
plugin = "crm.wasm"

[[routes]]
source = "stripe"
events = ["*"]
consumers = ["crm"]
"#;
        let old = load(base);
        assert!(restart_only_changes(&old, &load(base)).is_empty());
        let moved = base.replace("9000", "9001");
        assert_eq!(restart_only_changes(&old, &load(&moved)), ["server.listen"]);
        let bigger = base.replace("[server]\n", "[server]\nmax_body = \"2MiB\"\n");
        assert_eq!(
            restart_only_changes(&old, &load(&bigger)),
            ["server.max_body"]
        );
        // A consumer's settings are what a reload is for.
        let slower = base.replace(
            "plugin = \"crm.wasm\"",
            "plugin = \"crm.wasm\"\nconcurrency = 1",
        );
        assert!(restart_only_changes(&old, &load(&slower)).is_empty());
    }
}
