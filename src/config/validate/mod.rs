//! Step two of config loading: from [`RawConfig`] to [`Config`], collecting
//! every problem instead of stopping at the first. No IO happens here.
//!
//! This page holds the checker, its value helpers and the checks across
//! tables; the tables themselves are checked in `services.rs` (server,
//! admin, bus, telemetry, idempotency), `flow.rs` (sources, connections,
//! consumers, routes) and `alerts.rs`.

mod alerts;
mod flow;
mod services;

use super::defaults::{self, duration, size};
use super::raw::*;
use super::units::{parse_duration, parse_size};
use super::*;

/// `; did you mean `x`?` for the known name closest to a mistyped one
/// (within two edits), or nothing.
fn did_you_mean<'a>(name: &str, known: impl Iterator<Item = &'a String>) -> String {
    known
        .map(|candidate| (edit_distance(name, candidate), candidate))
        .filter(|(distance, _)| *distance <= 2)
        .min()
        .map(|(_, candidate)| format!("; did you mean `{candidate}`?"))
        .unwrap_or_default()
}

/// Levenshtein distance, counting an adjacent swap (`epr` for `erp`) as one.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    rows[0] = (0..=b.len()).collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let substitution = rows[i - 1][j - 1] + usize::from(a[i - 1] != b[j - 1]);
            let mut best = substitution.min(rows[i - 1][j] + 1).min(rows[i][j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

/// The shortest lease (`bus.visibility_timeout`, `idempotency.lease`).
const MIN_LEASE: Duration = Duration::from_secs(1);

/// Validates a parsed file. Relative paths resolve against `base_dir`.
pub fn validate(raw: RawConfig, base_dir: &Path) -> Result<Config, Vec<ConfigIssue>> {
    let mut check = Checker {
        issues: Vec::new(),
        base_dir,
    };
    let server = check.server(&raw.server);
    let admin = raw.admin.as_ref().and_then(|admin| check.admin(admin));
    let bus = check.bus(&raw.bus);
    let idempotency = check.idempotency(&raw.idempotency);
    let telemetry = check.telemetry(&raw.telemetry);
    let alerts = check.alerts(&raw.alerts, &raw);
    let sources = raw
        .sources
        .iter()
        .map(|(name, source)| (name.clone(), check.source(name, source)))
        .collect();
    let connections = raw
        .connections
        .iter()
        .map(|(name, connection)| (name.clone(), check.connection(name, connection)))
        .collect();
    let consumers: BTreeMap<String, ConsumerConfig> = raw
        .consumers
        .iter()
        .map(|(name, consumer)| (name.clone(), check.consumer(name, consumer, &raw)))
        .collect();
    let routes = raw
        .routes
        .iter()
        .enumerate()
        .map(|(index, route)| check.route(index, route, &raw))
        .collect();
    check.cross_checks(&raw, &idempotency, &bus);
    if check.issues.is_empty() {
        Ok(Config {
            server,
            admin,
            bus,
            idempotency,
            telemetry,
            alerts,
            sources,
            connections,
            consumers,
            routes,
        })
    } else {
        Err(check.issues)
    }
}

struct Checker<'a> {
    issues: Vec<ConfigIssue>,
    base_dir: &'a Path,
}

impl Checker<'_> {
    fn issue(&mut self, at: impl Into<String>, message: impl Into<String>) {
        self.issues.push(ConfigIssue {
            at: at.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, at: String, value: Option<&String>, default: Duration) -> Duration {
        match value.map(|text| parse_duration(text)) {
            None => default,
            Some(Ok(duration)) if duration.is_zero() => {
                self.issue(at, "must be longer than zero");
                default
            }
            Some(Ok(duration)) => duration,
            Some(Err(err)) => {
                self.issue(at, err.to_string());
                default
            }
        }
    }

    fn size(&mut self, at: String, value: Option<&String>, default: u64) -> u64 {
        match value.map(|text| parse_size(text)) {
            None => default,
            Some(Ok(0)) => {
                self.issue(at, "must be larger than zero");
                default
            }
            Some(Ok(size)) => size,
            Some(Err(err)) => {
                self.issue(at, err.to_string());
                default
            }
        }
    }

    fn count(&mut self, at: String, value: Option<i64>, range: (i64, i64), default: u32) -> u32 {
        match value {
            None => default,
            Some(n) if n >= range.0 && n <= range.1 => n as u32,
            Some(n) => {
                self.issue(
                    at,
                    format!("`{n}` is out of range: use {} to {}", range.0, range.1),
                );
                default
            }
        }
    }

    fn secret(&mut self, at: String, text: &str) -> Option<SecretRef> {
        match SecretRef::parse(text, self.base_dir) {
            Ok(secret) => Some(secret),
            Err(err) => {
                self.issue(at, err.to_string());
                None
            }
        }
    }

    fn name(&mut self, table: &str, name: &str) {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !ok {
            self.issue(
                format!("{table}.{name}"),
                format!("`{name}` is not a valid name: use 1 to 64 of `a-z`, `0-9`, `_`, `-`"),
            );
        }
    }

    fn one_of(
        &mut self,
        at: String,
        value: Option<&String>,
        allowed: &[&str],
        default: &str,
    ) -> String {
        let value = value.map(String::as_str).unwrap_or(default);
        if !allowed.contains(&value) {
            let allowed = allowed.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>();
            self.issue(
                at,
                format!("unknown kind `{value}`: use {}", allowed.join(" or ")),
            );
        }
        value.to_owned()
    }

    fn cross_checks(&mut self, raw: &RawConfig, idempotency: &IdempotencyConfig, bus: &BusConfig) {
        let mut paths: BTreeMap<String, &str> = BTreeMap::new();
        for (name, source) in &raw.sources {
            let path = source
                .path
                .clone()
                .unwrap_or_else(|| defaults::source_path(name));
            if let Some(other) = paths.insert(path.clone(), name) {
                self.issue(
                    format!("sources.{name}.path"),
                    format!("`{path}` is already used by source `{other}`"),
                );
            }
        }
        // Leases are renewed every third of their length while a call runs
        // (so a call may outlast them); below a second, one slow Redis or
        // NATS round trip would lose them.
        for (key, lease) in [
            ("bus.visibility_timeout", bus.visibility_timeout),
            ("idempotency.lease", idempotency.lease),
        ] {
            if lease < MIN_LEASE {
                self.issue(
                    key,
                    "must be at least 1s: it is renewed every third of it while a call runs",
                );
            }
        }
        for name in raw.consumers.keys() {
            if !raw
                .routes
                .iter()
                .any(|route| route.consumers.contains(name))
            {
                self.issue(
                    format!("consumers.{name}"),
                    format!("consumer `{name}` is in no route, so it would never receive events"),
                );
            }
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            first: duration(defaults::RETRY_FIRST),
            max: duration(defaults::RETRY_MAX),
            attempts: defaults::RETRY_ATTEMPTS,
            max_retry_after: duration(defaults::RETRY_MAX_RETRY_AFTER),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::did_you_mean;

    #[test]
    fn a_near_miss_names_the_known_name() {
        let known = ["crm".to_owned(), "erp".to_owned(), "marketing".to_owned()];
        assert_eq!(did_you_mean("epr", known.iter()), "; did you mean `erp`?");
        assert_eq!(
            did_you_mean("marketting", known.iter()),
            "; did you mean `marketing`?"
        );
        assert_eq!(did_you_mean("salesforce", known.iter()), "");
    }
}
