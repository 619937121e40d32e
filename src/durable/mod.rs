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
//!
//! A failed commit (disk full, I/O error) makes redb refuse every later
//! operation until the database is closed and opened again. So after one the
//! writer closes the database and reopens it before its next batch (at most
//! once per [`REOPEN_EVERY`]); until that succeeds every read and write fails
//! and callers answer "unavailable". Space coming back is thus enough to
//! recover, without a restart.
//!
//! A store that held data is never silently replaced by an empty one: at
//! first start the file gets an id, kept in the file and in a marker beside
//! it (`bus.redb.id`). If the marker is there but the file is missing, empty
//! or another store, opening refuses (changing nothing) unless the operator
//! accepts starting empty ([`EmptyStore::Accept`], `serve
//! --accept-empty-store`): acknowledged events would otherwise vanish while
//! the hub reports ready.
//!
//! (The store's identity lives in [`identity`].)
//!
//! Lazy commits ride on the next durable one. When none comes (queues
//! draining with no ingest), the writer makes them durable itself within
//! [`LAZY_PERSIST_WITHIN`]: a crash then rolls back at most that much
//! bookkeeping, and redb, which frees the pages a lazy commit releases only
//! at a durable commit, does not grow the file for as long as the streak lasts.

mod identity;

pub use identity::EmptyStore;
use redb::{Database, Durability, ReadTransaction, ReadableDatabase, WriteTransaction};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Most operations applied in one transaction; bounds commit latency.
const MAX_BATCH: usize = 4096;
/// redb's page cache per database. Its default (1 GiB) lets resident memory
/// grow with the data; the hot set here (recent events, queue heads) is small.
const CACHE_BYTES: usize = 64 << 20;
/// Least time between two attempts to reopen a failed database: opening may
/// repair the file, which reads all of it.
const REOPEN_EVERY: Duration = Duration::from_secs(1);
/// Longest a lazy commit stays in memory only, when no durable commit follows.
const LAZY_PERSIST_WITHIN: Duration = Duration::from_secs(1);

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
    #[error("database closed after an i/o error and not reopened yet: {0}")]
    Reopening(String),
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

/// What the writer has done since the database was opened. The writer is
/// the one serial step of every durable write: `busy` growing nearly as fast
/// as the clock means it is saturated, and `operations ÷ durable_commits`
/// says how many writes share each fsync.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterCounts {
    /// Commits made with an fsync.
    pub durable_commits: u64,
    /// Commits left in memory until a durable one carries them.
    pub lazy_commits: u64,
    /// Operations applied in committed transactions.
    pub operations: u64,
    /// Time spent applying and committing (CPU and waiting for the disk).
    pub busy: Duration,
}

#[derive(Default)]
struct WriterCounters {
    durable_commits: AtomicU64,
    lazy_commits: AtomicU64,
    operations: AtomicU64,
    busy_nanos: AtomicU64,
}

impl WriterCounters {
    fn record(
        &self,
        committed: &Result<(), DurableError>,
        persist: bool,
        operations: usize,
        took: Duration,
    ) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.busy_nanos.fetch_add(nanos, Ordering::Relaxed);
        if committed.is_err() {
            return;
        }
        let commits = if persist {
            &self.durable_commits
        } else {
            &self.lazy_commits
        };
        commits.fetch_add(1, Ordering::Relaxed);
        self.operations
            .fetch_add(operations as u64, Ordering::Relaxed);
    }
}

/// A redb database with one group-committing writer.
#[derive(Clone)]
pub struct GroupCommit {
    shared: Arc<Shared>,
    writer: Arc<Writer>,
}

/// What the writer thread and the readers share.
struct Shared {
    path: PathBuf,
    /// `None` between an I/O failure and a successful reopen. Readers hold
    /// the inner `Arc` only while they begin a read transaction, so the
    /// writer can close the file right after taking it out.
    db: RwLock<Option<Arc<Database>>>,
    #[cfg(feature = "testing")]
    fail_commits: AtomicBool,
    /// A lazy commit is not on disk yet.
    unpersisted: AtomicBool,
    counters: WriterCounters,
}

impl Shared {
    fn current(&self) -> Result<Arc<Database>, DurableError> {
        self.db
            .read()
            .expect("database lock")
            .clone()
            .ok_or_else(|| DurableError::Reopening("the last reopen failed".into()))
    }

    /// Takes the database out and closes it, once no reader holds it.
    fn close(&self) {
        let Some(mut db) = self.db.write().expect("database lock").take() else {
            return;
        };
        let db = loop {
            match Arc::try_unwrap(db) {
                Ok(db) => break db,
                Err(shared) => {
                    db = shared;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        };
        if let Err(err) = db.close() {
            tracing::warn!(path = %self.path.display(), error = %err, "closing the failed database");
        }
    }

    fn reopen(&self) -> Result<(), DurableError> {
        let db = open_database(&self.path)?;
        *self.db.write().expect("database lock") = Some(Arc::new(db));
        Ok(())
    }
}

fn open_database(path: &Path) -> Result<Database, DurableError> {
    Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|err| {
            let hint = match err {
                redb::DatabaseError::DatabaseAlreadyOpen => {
                    " (another switchyard is probably using this data directory)"
                }
                _ => "",
            };
            DurableError::Open {
                path: path.display().to_string(),
                message: format!("{err}{hint}"),
            }
        })
}

/// The writer thread's channel. Dropping the last handle closes the channel
/// and waits for the thread, so the file is closed when `GroupCommit` goes:
/// a restart in the same process can reopen it at once.
struct Writer {
    jobs: Option<mpsc::Sender<Box<dyn Job>>>,
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
    /// Opens (or creates) the database file, creating missing parent
    /// folders. A store its marker says held data is never replaced by an
    /// empty one unless `empty` accepts it (see the module page).
    pub fn open(path: &Path, empty: EmptyStore) -> Result<GroupCommit, DurableError> {
        let open_error = |message: String| DurableError::Open {
            path: path.display().to_string(),
            message,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|err| open_error(err.to_string()))?;
        }
        let marker = identity::read_marker(path);
        if empty == EmptyStore::Refuse {
            identity::refuse_vanished_store(path, &marker)
                .map_err(|err| open_error(err.to_string()))?;
        }
        let db = open_database(path)?;
        identity::claim_store_id(&db, path, marker, empty)
            .map_err(|err| open_error(err.to_string()))?;
        let shared = Arc::new(Shared {
            path: path.to_owned(),
            db: RwLock::new(Some(Arc::new(db))),
            #[cfg(feature = "testing")]
            fail_commits: AtomicBool::new(false),
            unpersisted: AtomicBool::new(false),
            counters: WriterCounters::default(),
        });
        // Unbounded, so `send` never blocks an async caller.
        let (jobs, receiver) = mpsc::channel();
        let writer_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("redb-writer".into())
            .spawn(move || writer_loop(&writer_shared, receiver))
            .map_err(|err| open_error(err.to_string()))?;
        Ok(GroupCommit {
            shared,
            writer: Arc::new(Writer {
                jobs: Some(jobs),
                thread: Some(thread),
            }),
        })
    }

    /// A read transaction (which never blocks the writer).
    pub fn read(&self) -> Result<ReadTransaction, DurableError> {
        self.shared
            .current()?
            .begin_read()
            .map_err(|err| DurableError::Storage(err.to_string()))
    }

    /// A write transaction outside the group commit, for set-up before any
    /// other write (creating tables at open).
    pub fn begin_setup(&self) -> Result<WriteTransaction, DurableError> {
        self.shared
            .current()?
            .begin_write()
            .map_err(|err| DurableError::Storage(err.to_string()))
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
    /// Only in builds with the `testing` feature (the tests'), never in a
    /// release.
    #[cfg(feature = "testing")]
    pub fn inject_commit_failures(&self, on: bool) {
        self.shared.fail_commits.store(on, Ordering::SeqCst);
    }

    /// Whether a lazy commit is still only in memory (a crash now would roll
    /// it back).
    pub fn has_unpersisted(&self) -> bool {
        self.shared.unpersisted.load(Ordering::SeqCst)
    }

    /// The writer's work so far (for metrics).
    pub fn counts(&self) -> WriterCounts {
        let counters = &self.shared.counters;
        WriterCounts {
            durable_commits: counters.durable_commits.load(Ordering::Relaxed),
            lazy_commits: counters.lazy_commits.load(Ordering::Relaxed),
            operations: counters.operations.load(Ordering::Relaxed),
            busy: Duration::from_nanos(counters.busy_nanos.load(Ordering::Relaxed)),
        }
    }
}

fn writer_loop(shared: &Shared, receiver: mpsc::Receiver<Box<dyn Job>>) {
    let mut writer = WriterState {
        shared,
        last_reopen: None,
        unpersisted_since: None,
    };
    let mut batch: Vec<Box<dyn Job>> = Vec::new();
    loop {
        let first = match writer.unpersisted_since {
            None => receiver.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(since) => {
                receiver.recv_timeout(LAZY_PERSIST_WITHIN.saturating_sub(since.elapsed()))
            }
        };
        match first {
            Ok(job) => batch.push(job),
            // Nothing durable came in time: an empty durable commit
            // persists the lazy ones before it.
            Err(RecvTimeoutError::Timeout) => {
                writer.commit(&mut batch, true);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // Lazy work (leases, acks) commits on its own first, so it never
        // waits behind the fsync that durable appends need; unless lazy
        // commits are overdue and no durable one is about to carry them.
        let (mut lazy, mut durable): (Vec<_>, Vec<_>) =
            batch.drain(..).partition(|job| job.sync() == Persist::Lazy);
        let overdue = writer
            .unpersisted_since
            .is_some_and(|since| since.elapsed() >= LAZY_PERSIST_WITHIN);
        if !lazy.is_empty() {
            writer.commit(&mut lazy, overdue && durable.is_empty());
        }
        if !durable.is_empty() {
            writer.commit(&mut durable, true);
        }
    }
}

/// What the writer thread keeps between batches.
struct WriterState<'a> {
    shared: &'a Shared,
    last_reopen: Option<Instant>,
    /// When the oldest lazy commit not yet on disk was made.
    unpersisted_since: Option<Instant>,
}

impl WriterState<'_> {
    /// Commits `group` in one transaction (fsynced if `persist`) and
    /// answers each of its jobs.
    fn commit(&mut self, group: &mut Vec<Box<dyn Job>>, persist: bool) {
        let shared = self.shared;
        let started = Instant::now();
        let committed = match ensure_open(shared, &mut self.last_reopen) {
            Ok(db) => injected_failure(shared).and_then(|()| commit_batch(&db, group, persist)),
            Err(err) => Err(err),
        };
        shared
            .counters
            .record(&committed, persist, group.len(), started.elapsed());
        match &committed {
            Ok(()) if persist => self.unpersisted_since = None,
            Ok(()) => {
                self.unpersisted_since.get_or_insert_with(Instant::now);
            }
            Err(err) => {
                if matches!(err, DurableError::Storage(_) | DurableError::Commit(_)) {
                    tracing::error!(path = %shared.path.display(), error = %err, "commit failed; closing the database to reopen it");
                    shared.close();
                }
                // A closed database kept nothing of its lazy commits; an open
                // one still holds them, so try again an interval later
                // rather than at once.
                self.unpersisted_since = match shared.current() {
                    Ok(_) => Some(Instant::now()),
                    Err(_) => None,
                };
            }
        }
        shared
            .unpersisted
            .store(self.unpersisted_since.is_some(), Ordering::SeqCst);
        for job in group.drain(..) {
            job.finish(committed.clone());
        }
    }
}

/// The open database, reopening it first if a failure closed it (at most
/// once per [`REOPEN_EVERY`]).
fn ensure_open(
    shared: &Shared,
    last_reopen: &mut Option<Instant>,
) -> Result<Arc<Database>, DurableError> {
    if let Ok(db) = shared.current() {
        return Ok(db);
    }
    if last_reopen.is_some_and(|at| at.elapsed() < REOPEN_EVERY) {
        return Err(DurableError::Reopening("waiting to try again".into()));
    }
    *last_reopen = Some(Instant::now());
    match shared.reopen() {
        Ok(()) => {
            tracing::warn!(path = %shared.path.display(), "database reopened after an i/o error");
            shared.current()
        }
        Err(err) => Err(DurableError::Reopening(err.to_string())),
    }
}

/// A commit refused by the fault-injection seam (the `testing` feature).
#[cfg(feature = "testing")]
fn injected_failure(shared: &Shared) -> Result<(), DurableError> {
    if shared.fail_commits.load(Ordering::SeqCst) {
        Err(DurableError::Injected)
    } else {
        Ok(())
    }
}

#[cfg(not(feature = "testing"))]
fn injected_failure(_: &Shared) -> Result<(), DurableError> {
    Ok(())
}

fn commit_batch(
    db: &Database,
    batch: &mut [Box<dyn Job>],
    persist: bool,
) -> Result<(), DurableError> {
    let mut txn = db
        .begin_write()
        .map_err(|err| DurableError::Storage(err.to_string()))?;
    let durability = if persist {
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

/// Runs `batch` (which does at most `limit` items in one short
/// transaction) until a run does fewer: the janitor keeps up with any
/// ingest rate instead of a fixed number of items a minute.
pub async fn in_batches<F, Fut, E>(limit: usize, mut batch: F) -> Result<usize, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<usize, E>>,
{
    let mut total = 0;
    loop {
        let done = batch().await?;
        total += done;
        if done < limit {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::TableDefinition;

    const ROWS: TableDefinition<u64, u64> = TableDefinition::new("rows");
    /// Set only in a child copy of this test binary: `wait:PATH` or `now:PATH`.
    const CHILD_ENV: &str = "SWITCHYARD_DURABLE_CRASH_CHILD";
    /// The exit code of a child that got as far as its crash.
    const CRASHED: i32 = 3;

    /// The child's part (a no-op in a normal run): one lazy write, then,
    /// with `wait`, until the writer reports it on disk; then exit without
    /// closing anything, as a crash would.
    #[tokio::test]
    async fn crash_child() {
        let Ok(spec) = std::env::var(CHILD_ENV) else {
            return;
        };
        let (mode, path) = spec.split_once(':').expect("mode:path");
        let store = GroupCommit::open(Path::new(path), EmptyStore::Refuse).unwrap();
        store
            .write(Persist::Lazy, |txn| {
                txn.open_table(ROWS)?.insert(7, 7)?;
                Ok(())
            })
            .await
            .unwrap();
        assert!(store.has_unpersisted(), "a lazy commit is in memory only");
        if mode == "wait" {
            let deadline = Instant::now() + Duration::from_secs(20);
            while store.has_unpersisted() {
                assert!(
                    Instant::now() < deadline,
                    "the lazy write never reached disk"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        std::process::exit(CRASHED);
    }

    /// Concurrent durable writes share fsyncs, and the counts say so: every
    /// operation is counted once, lazy commits apart, and the writer's busy
    /// time is what it spent.
    #[tokio::test]
    async fn the_counts_show_how_many_writes_share_each_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = GroupCommit::open(&dir.path().join("counts.redb"), EmptyStore::Refuse).unwrap();
        assert_eq!(store.counts(), WriterCounts::default());
        let writes = (0..64u64).map(|n| {
            store.write(Persist::Durable, move |txn| {
                txn.open_table(ROWS)?.insert(n, n)?;
                Ok(())
            })
        });
        let started = Instant::now();
        for written in futures::future::join_all(writes).await {
            written.unwrap();
        }
        store
            .write(Persist::Lazy, |txn| {
                txn.open_table(ROWS)?.remove(0)?;
                Ok(())
            })
            .await
            .unwrap();
        let counts = store.counts();
        assert_eq!(counts.operations, 65);
        assert_eq!(counts.lazy_commits, 1);
        assert!(
            (1..64).contains(&counts.durable_commits),
            "64 concurrent writes took {} fsyncs",
            counts.durable_commits
        );
        assert!(counts.busy > Duration::ZERO);
        assert!(counts.busy <= started.elapsed());
    }

    /// Runs the child, then opens what it left: the row, if it survived.
    fn crash_after_a_lazy_write(mode: &str) -> Option<u64> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crash.redb");
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "durable::tests::crash_child", "--test-threads=1"])
            .env(CHILD_ENV, format!("{mode}:{}", path.display()))
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(
            status.code(),
            Some(CRASHED),
            "the child did not get to its crash"
        );
        let store = GroupCommit::open(&path, EmptyStore::Refuse).unwrap();
        let txn = store.read().unwrap();
        let table = txn.open_table(ROWS).ok()?;
        table.get(7).unwrap().map(|value| value.value())
    }

    #[test]
    fn lazy_writes_reach_disk_with_no_durable_write_to_carry_them() {
        assert_eq!(crash_after_a_lazy_write("wait"), Some(7));
    }

    /// The control for the test above: a crash right after a lazy write
    /// loses it, so surviving there is the writer's doing.
    #[test]
    fn a_crash_right_after_a_lazy_write_rolls_it_back() {
        assert_eq!(crash_after_a_lazy_write("now"), None);
    }
}
