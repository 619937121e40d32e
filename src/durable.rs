//! Group commit over an embedded redb database.
//!
//! Owns the single writer thread of one database file. Callers hand it small
//! write operations; the thread applies every operation that is waiting in one
//! write transaction and commits once, so many concurrent requests share one
//! fsync. Shared by the embedded bus and the embedded idempotency store; it
//! knows nothing about either.
//!
//! An operation's result is released only after its transaction committed:
//! a caller that sees `Ok` from a durable operation knows the data is on disk.

use redb::{Database, Durability, WriteTransaction};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{mpsc, oneshot};

/// Most operations applied in one transaction; bounds commit latency.
const MAX_BATCH: usize = 4096;
/// redb's page cache per database. Its default (1 GiB) lets resident memory
/// grow with the data; the hot set here (recent events, queue heads) is small.
const CACHE_BYTES: usize = 64 << 20;

#[derive(Debug, Clone, thiserror::Error)]
pub enum DurableError {
    #[error("cannot open database `{path}`: {message}")]
    Open { path: String, message: String },
    #[error("storage error: {0}")]
    Storage(String),
    #[error("commit failed: {0}")]
    Commit(String),
    #[error("writer thread stopped")]
    Closed,
    #[error("commit refused by fault injection")]
    Injected,
}

impl From<redb::Error> for DurableError {
    fn from(err: redb::Error) -> Self {
        DurableError::Storage(err.to_string())
    }
}

/// Whether an operation must be on disk before its caller hears back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// fsync before answering (appends, dead letters, idempotency marks).
    Durable,
    /// Visible at once, made durable by the next durable commit. For state a
    /// crash may roll back safely (leases, acks that redelivery covers).
    Lazy,
}

trait Job: Send {
    fn sync(&self) -> Persist;
    fn apply(&mut self, txn: &WriteTransaction);
    fn finish(self: Box<Self>, committed: Result<(), DurableError>);
}

struct TypedJob<F, R> {
    sync: Persist,
    op: Option<F>,
    result: Option<Result<R, redb::Error>>,
    reply: oneshot::Sender<Result<R, DurableError>>,
}

impl<F, R> Job for TypedJob<F, R>
where
    F: FnOnce(&WriteTransaction) -> Result<R, redb::Error> + Send,
    R: Send,
{
    fn sync(&self) -> Persist {
        self.sync
    }

    fn apply(&mut self, txn: &WriteTransaction) {
        if let Some(op) = self.op.take() {
            self.result = Some(op(txn));
        }
    }

    fn finish(self: Box<Self>, committed: Result<(), DurableError>) {
        let outcome = match (committed, self.result) {
            (Err(err), _) => Err(err),
            (Ok(()), Some(result)) => result.map_err(DurableError::from),
            (Ok(()), None) => Err(DurableError::Closed),
        };
        let _ = self.reply.send(outcome);
    }
}

/// A redb database with one group-committing writer.
#[derive(Clone)]
pub struct GroupCommit {
    db: Arc<Database>,
    writer: Arc<Writer>,
    fail_commits: Arc<AtomicBool>,
}

/// The writer thread's channel. Dropping the last handle closes the channel
/// and waits for the thread, so the file is closed when `GroupCommit` goes:
/// a restart in the same process can reopen it at once.
struct Writer {
    jobs: Option<mpsc::UnboundedSender<Box<dyn Job>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl GroupCommit {
    /// Opens (or creates) the database file, creating missing parent folders.
    pub fn open(path: &Path) -> Result<GroupCommit, DurableError> {
        let open_error = |message: String| DurableError::Open {
            path: path.display().to_string(),
            message,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|err| open_error(err.to_string()))?;
        }
        let db = Arc::new(
            Database::builder()
                .set_cache_size(CACHE_BYTES)
                .create(path)
                .map_err(|err| open_error(err.to_string()))?,
        );
        let (jobs, receiver) = mpsc::unbounded_channel();
        let fail_commits = Arc::new(AtomicBool::new(false));
        let writer_db = Arc::clone(&db);
        let writer_fail = Arc::clone(&fail_commits);
        let thread = std::thread::Builder::new()
            .name("redb-writer".into())
            .spawn(move || writer_loop(&writer_db, receiver, &writer_fail))
            .map_err(|err| open_error(err.to_string()))?;
        Ok(GroupCommit {
            db,
            writer: Arc::new(Writer {
                jobs: Some(jobs),
                thread: Some(thread),
            }),
            fail_commits,
        })
    }

    /// The database, for read transactions (which never block the writer).
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Runs `op` in the next group transaction and answers after the commit.
    pub async fn write<F, R>(&self, sync: Persist, op: F) -> Result<R, DurableError>
    where
        F: FnOnce(&WriteTransaction) -> Result<R, redb::Error> + Send + 'static,
        R: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = TypedJob {
            sync,
            op: Some(op),
            result: None,
            reply,
        };
        self.writer
            .jobs
            .as_ref()
            .ok_or(DurableError::Closed)?
            .send(Box::new(job))
            .map_err(|_| DurableError::Closed)?;
        answer.await.map_err(|_| DurableError::Closed)?
    }

    /// Fault-injection seam for tests of the "never 2xx without persistence"
    /// rule: while on, every commit fails as a full or broken disk would.
    pub fn inject_commit_failures(&self, on: bool) {
        self.fail_commits.store(on, Ordering::SeqCst);
    }
}

fn writer_loop(
    db: &Database,
    mut receiver: mpsc::UnboundedReceiver<Box<dyn Job>>,
    fail_commits: &AtomicBool,
) {
    let mut batch: Vec<Box<dyn Job>> = Vec::new();
    while let Some(first) = receiver.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // Lazy work (leases, acks) commits on its own first, so it never
        // waits behind the fsync that durable appends need.
        let (mut lazy, mut durable): (Vec<_>, Vec<_>) =
            batch.drain(..).partition(|job| job.sync() == Persist::Lazy);
        for group in [&mut lazy, &mut durable] {
            if group.is_empty() {
                continue;
            }
            let committed = commit_batch(db, group, fail_commits);
            for job in group.drain(..) {
                job.finish(committed.clone());
            }
        }
    }
}

fn commit_batch(
    db: &Database,
    batch: &mut [Box<dyn Job>],
    fail_commits: &AtomicBool,
) -> Result<(), DurableError> {
    if fail_commits.load(Ordering::SeqCst) {
        return Err(DurableError::Injected);
    }
    let mut txn = db
        .begin_write()
        .map_err(|err| DurableError::Storage(err.to_string()))?;
    let durable = batch.iter().any(|job| job.sync() == Persist::Durable);
    let durability = if durable {
        Durability::Immediate
    } else {
        Durability::None
    };
    txn.set_durability(durability)
        .map_err(|err| DurableError::Storage(err.to_string()))?;
    for job in batch.iter_mut() {
        job.apply(&txn);
    }
    txn.commit()
        .map_err(|err| DurableError::Commit(err.to_string()))
}
