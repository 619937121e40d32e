//! The JSON shapes of the admin API: what the server answers and what
//! [`super::client::AdminClient`] reads back, one definition for both.

use super::*;

/// What runs a consumer right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsumerState {
    Running,
    Paused,
    /// Paused by its plugin-health breaker: the sandbox kept stopping it.
    Quarantined,
    /// The breaker is open: nothing is pulled until it probes again.
    BreakerOpen,
    BreakerHalfOpen,
}

/// The state of one consumer at a point in time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsumerStatus {
    pub name: String,
    pub state: ConsumerState,
    pub concurrency: usize,
    pub backlog: u64,
    /// Milliseconds the oldest waiting event has waited.
    pub oldest_pending_ms: Option<u64>,
    pub dead_letters: u64,
    pub reviews: u64,
    /// `None` when the consumer runs without a circuit breaker.
    pub breaker: Option<BreakerState>,
    /// How many times the breaker opened since start.
    pub breaker_opened: u64,
    /// Why the plugin-health breaker quarantined the consumer, if it did.
    #[serde(default)]
    pub quarantined: Option<String>,
    /// Guest time its plugin used on the plugin threads, and that as a
    /// fraction of all consumers' guest time: its CPU share used.
    #[serde(default)]
    pub cpu_seconds: f64,
    #[serde(default)]
    pub cpu_share: f64,
    /// Its guest CPU quota in cores, if any.
    #[serde(default)]
    pub cpu_per_second: Option<f64>,
    /// Threads that run plugin code, shared by every consumer.
    #[serde(default)]
    pub pool_threads: usize,
    #[serde(flatten)]
    pub stats: StatsSnapshot,
}

/// Which parked entries an operation is about. Every field narrows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueFilter {
    /// One consumer, or all.
    pub consumer: Option<String>,
    /// Event type pattern: `*`, `prefix.*` or exact.
    pub event_type: Option<String>,
    /// Parked at or after this unix-millisecond instant.
    pub since_ms: Option<u64>,
    /// Parked before this unix-millisecond instant.
    pub until_ms: Option<u64>,
    /// Substring of the failure reason.
    pub error: Option<String>,
    /// Exactly these entries (ids as listed). In a query string:
    /// `ids=3,5`.
    #[serde(default, deserialize_with = "ids_list")]
    pub ids: Option<Vec<u64>>,
}

impl QueueFilter {
    /// The filter as query-string pairs (`GET /v1/queues/…`): every field
    /// that is set.
    pub fn query(&self) -> Vec<(&'static str, String)> {
        let Self {
            consumer,
            event_type,
            since_ms,
            until_ms,
            error,
            ids,
        } = self;
        let ids = ids
            .as_ref()
            .map(|ids| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(","));
        [
            ("consumer", consumer.clone()),
            ("event_type", event_type.clone()),
            ("since_ms", since_ms.map(|ms| ms.to_string())),
            ("until_ms", until_ms.map(|ms| ms.to_string())),
            ("error", error.clone()),
            ("ids", ids),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some((key, value?)))
        .collect()
    }
}

/// Entry ids as a JSON array (request bodies) or as `3,5` (query strings,
/// which have no arrays).
fn ids_list<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<u64>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Ids {
        List(Vec<u64>),
        Text(String),
    }
    match Option::<Ids>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Ids::List(ids)) => Ok(Some(ids)),
        Some(Ids::Text(text)) => text
            .split(',')
            .map(|id| id.trim().parse::<u64>())
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "ids: `{text}` is not a comma-separated list of entry ids"
                ))
            }),
    }
}

/// One parked entry as the API shows it: envelope facts, no payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ParkedEntry {
    pub id: u64,
    pub consumer: String,
    pub queue: ParkQueue,
    pub source: String,
    pub event_id: String,
    pub event_type: String,
    pub received_at_ms: u64,
    pub parked_at_ms: u64,
    pub attempts: u32,
    pub reason: String,
}

impl From<&ParkedEvent> for ParkedEntry {
    fn from(entry: &ParkedEvent) -> Self {
        ParkedEntry {
            id: entry.id,
            consumer: entry.consumer.clone(),
            queue: entry.queue,
            source: entry.envelope.source.clone(),
            event_id: entry.envelope.event_id.clone(),
            event_type: entry.envelope.event_type.clone(),
            received_at_ms: entry.envelope.received_at_ms,
            parked_at_ms: entry.at_ms,
            attempts: entry.attempts,
            reason: entry.reason.clone(),
        }
    }
}

/// One parked entry in full: what a list shows, plus the event as received.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ParkedDetail {
    #[serde(flatten)]
    pub entry: ParkedEntry,
    pub livemode: bool,
    pub account: Option<String>,
    pub traceparent: Option<String>,
    /// The provider's JSON as signed (shown only here, never in lists or logs).
    pub payload: serde_json::Value,
}

/// A bulk action on parked entries: which, and whether only to count them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkRequest {
    #[serde(default)]
    pub filter: QueueFilter,
    /// Defaults to true: a bulk action must be asked for explicitly.
    #[serde(default = "default_true")]
    pub dry_run: bool,
    /// Entries moved per bus call by a replay job.
    pub batch_size: Option<usize>,
}

/// Which part of the bus history to deliver again.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryReplay {
    pub source: String,
    /// Event type pattern; all types when absent. Only the types the
    /// consumer's routes send it from `source` are replayed, unless
    /// `all_types`.
    pub event_type: Option<String>,
    /// Replay matching events even of types the consumer's routes do not
    /// send it (its plugin will see events it never subscribed to).
    #[serde(default)]
    pub all_types: bool,
    /// Received at or after this unix-millisecond instant.
    pub since_ms: u64,
    /// Received before this instant; now when absent.
    pub until_ms: Option<u64>,
    /// Defaults to true: replaying is asked for explicitly.
    #[serde(default = "default_true")]
    pub dry_run: bool,
    /// Deliver again even where the consumer's idempotency keys say the
    /// effect was applied (a new generation of each event, with new keys).
    #[serde(default)]
    pub force: bool,
    /// Events queued per bus call by the background job.
    pub batch_size: Option<usize>,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryOutcome {
    pub dry_run: bool,
    pub matched: usize,
    /// The background job doing it (not on a dry run).
    pub job: Option<JobStatus>,
}

/// What a bulk action did, or would do on a dry run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BulkOutcome {
    pub dry_run: bool,
    pub matched: usize,
    /// Entries deleted by a discard (0 on a dry run and for a replay, which
    /// runs as `job`).
    pub done: usize,
    /// Up to ten of the matched entries.
    pub sample: Vec<ParkedEntry>,
    /// The background job of a replay.
    pub job: Option<JobStatus>,
}

/// What a reload changed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadReport {
    /// Every consumer now running, restarted on the new config.
    pub consumers: Vec<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
}
