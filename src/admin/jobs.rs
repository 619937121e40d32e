//! Background replays: an operator's bulk replay runs as a job, in batches,
//! with progress anyone can read and a cancel honoured between batches. The
//! events themselves then go through the consumer's replay lane.

use crate::bus::{BusAdmin, BusError, ParkQueue, now_ms};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Entries moved per bus call unless the operator asks for another size.
pub const DEFAULT_BATCH: usize = 100;
/// Finished jobs kept for reading back.
const KEEP_FINISHED: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    DeadLetterReplay,
    ReviewReplay,
    HistoryReplay,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    Done,
    Cancelled,
    Failed,
}

/// What a job has done so far.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobStatus {
    pub id: u64,
    pub kind: JobKind,
    pub state: JobState,
    /// Entries the job set out to move.
    pub total: usize,
    /// Entries handled so far (moved, or skipped as gone meanwhile).
    pub processed: usize,
    /// Entries actually queued again.
    pub queued: usize,
    pub started_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    pub error: Option<String>,
}

/// How a job moves one batch.
#[derive(Debug, Clone, Copy)]
pub enum Requeue {
    Parked(ParkQueue),
    History { force: bool },
}

struct Job {
    status: Mutex<JobStatus>,
    cancel: AtomicBool,
}

impl Job {
    fn update(&self, change: impl FnOnce(&mut JobStatus)) {
        change(&mut self.status.lock().expect("job lock"));
    }

    fn finish(&self, state: JobState, error: Option<String>) {
        self.update(|status| {
            status.state = state;
            status.error = error;
            status.finished_at_ms = Some(now_ms());
        });
    }
}

/// Every job of this process.
#[derive(Default)]
pub struct Jobs {
    next: AtomicU64,
    jobs: Mutex<BTreeMap<u64, Arc<Job>>>,
}

impl Jobs {
    /// Starts moving `work` (ids per consumer) in batches of `batch`.
    pub fn start(
        &self,
        bus: Arc<dyn BusAdmin>,
        kind: JobKind,
        requeue: Requeue,
        work: Vec<(String, Vec<u64>)>,
        batch: usize,
    ) -> JobStatus {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let status = JobStatus {
            id,
            kind,
            state: JobState::Running,
            total: work.iter().map(|(_, ids)| ids.len()).sum(),
            processed: 0,
            queued: 0,
            started_at_ms: now_ms(),
            finished_at_ms: None,
            error: None,
        };
        let job = Arc::new(Job {
            status: Mutex::new(status.clone()),
            cancel: AtomicBool::new(false),
        });
        {
            let mut jobs = self.jobs.lock().expect("jobs lock");
            jobs.insert(id, Arc::clone(&job));
            let finished: Vec<u64> = jobs
                .iter()
                .filter(|(_, job)| job.status.lock().expect("job lock").state != JobState::Running)
                .map(|(id, _)| *id)
                .collect();
            for old in finished
                .iter()
                .take(finished.len().saturating_sub(KEEP_FINISHED))
            {
                jobs.remove(old);
            }
        }
        tokio::spawn(run(bus, job, requeue, work, batch.max(1)));
        status
    }

    pub fn get(&self, id: u64) -> Option<JobStatus> {
        let jobs = self.jobs.lock().expect("jobs lock");
        jobs.get(&id)
            .map(|job| job.status.lock().expect("job lock").clone())
    }

    pub fn list(&self) -> Vec<JobStatus> {
        let jobs = self.jobs.lock().expect("jobs lock");
        jobs.values()
            .map(|job| job.status.lock().expect("job lock").clone())
            .collect()
    }

    /// Asks a job to stop after its current batch; returns its status.
    pub fn cancel(&self, id: u64) -> Option<JobStatus> {
        let job = self.jobs.lock().expect("jobs lock").get(&id).cloned()?;
        job.cancel.store(true, Ordering::SeqCst);
        tracing::warn!(job = id, "replay job cancel requested");
        Some(job.status.lock().expect("job lock").clone())
    }
}

async fn run(
    bus: Arc<dyn BusAdmin>,
    job: Arc<Job>,
    requeue: Requeue,
    work: Vec<(String, Vec<u64>)>,
    batch: usize,
) {
    for (consumer, ids) in &work {
        for chunk in ids.chunks(batch) {
            if job.cancel.load(Ordering::SeqCst) {
                job.finish(JobState::Cancelled, None);
                return;
            }
            let moved: Result<usize, BusError> = match requeue {
                Requeue::Parked(queue) => bus.requeue_dead(consumer, queue, chunk).await,
                Requeue::History { force } => bus.requeue_history(consumer, chunk, force).await,
            };
            match moved {
                Ok(moved) => job.update(|status| {
                    status.processed += chunk.len();
                    status.queued += moved;
                }),
                Err(err) => {
                    tracing::error!(consumer, error = %err, "replay job failed");
                    job.finish(JobState::Failed, Some(err.to_string()));
                    return;
                }
            }
        }
    }
    let status = job.status.lock().expect("job lock").clone();
    tracing::warn!(
        job = status.id,
        kind = ?status.kind,
        queued = status.queued,
        "replay job done"
    );
    job.finish(JobState::Done, None);
}
