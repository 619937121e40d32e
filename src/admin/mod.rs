//! Admin: what the operator sees of a running hub.
//!
//! Owns the status snapshot of each consumer (counters and backlog). The
//! bearer-protected admin listener, pause/resume and queue replay build on
//! this type.

use crate::dispatch::StatsSnapshot;
use crate::dispatch::breaker::BreakerState;
use serde::Serialize;

/// The state of one consumer at a point in time.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerStatus {
    pub name: String,
    pub backlog: u64,
    pub dead_letters: u64,
    pub reviews: u64,
    /// `None` when the consumer runs without a circuit breaker.
    pub breaker: Option<BreakerState>,
    /// How many times the breaker opened since start.
    pub breaker_opened: u64,
    #[serde(flatten)]
    pub stats: StatsSnapshot,
}
