//! The guest pool: where plugin code runs, and whose turn it is.
//!
//! **Apart from the edge.** Every plugin call runs on this pool: a tokio
//! runtime of its own whose worker threads run at a lower OS priority
//! (nice 10). The runtime that answers webhooks and drives the bus never
//! executes guest code, and when the cores are short the kernel prefers the
//! edge and the bus writer to any plugin.
//!
//! **Turns.** Guest code runs only while its call holds one of the pool's
//! turns (one per thread: one less than the cores unless
//! `server.plugin_threads` says otherwise). A call takes a turn before it
//! instantiates, gives it back while the host works for it and at every
//! epoch tick, then asks again. A looping plugin therefore holds a core for
//! at most one tick before the scheduler decides again. The host's work for
//! a guest (an outbound HTTP call: connecting, writing, waiting, reading)
//! runs on the runtime the call came from, never behind a guest, so a
//! request leaves as soon as the guest sends it.
//!
//! **Weighted fair share.** Each consumer has a virtual time: the guest time
//! its calls used, divided by its `cpu_weight`. A free turn goes to the
//! waiting consumer with the smallest virtual time (first come among its own
//! calls). So while several consumers want the pool, guest time splits in
//! proportion to their weights whatever their concurrency, and a consumer
//! that used more recently waits behind one that used less. A consumer that
//! was idle re-enters one tick behind the pool's virtual clock (the smallest
//! virtual time among the busy ones): idling banks no more credit than that,
//! and its share went to the others meanwhile.
//!
//! **Preemption.** A call that must wait while a consumer with a larger
//! virtual time holds a turn does not wait for that guest's next tick: it
//! advances the engines' epoch, and every running guest checks in at once
//! (within microseconds: the check sits at each loop head and function
//! entry). The same happens when a call is handed to the pool and when a
//! downstream's answer comes back, from the caller's side: the running guest
//! steps aside so the pool's thread picks the call up. So a light consumer
//! arriving among heavy ones runs almost at once, each time it asks. The
//! turn the guest gives up is *reserved* for the arriving call, not handed
//! to another waiting guest: a hand-over on a pool thread wakes the next
//! guest first on that thread (tokio's LIFO slot), ahead of a call that
//! arrived from outside, which would then wait several ticks.
//!
//! **Quotas.** `cpu_per_second` holds a consumer to that many cores' worth of
//! guest time (a token bucket holding one second of it). A consumer over its
//! quota is passed over until the bucket refills, even while turns are free.
//!
//! What the pool measures is the time a call held a turn: guest time as the
//! scheduler sees it, the clock the per-event CPU budget is counted on too
//! (an epoch advanced early must not charge a guest a whole tick).
//!
//! This page holds the pool and a call's turns; [`scheduler`] decides whose
//! turn it is.

mod scheduler;

use scheduler::Scheduler;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Nice value of the pool's threads: below the edge and the bus writer.
const GUEST_NICE: i32 = 10;

/// How far behind the pool's clock an idle consumer re-enters, in virtual
/// nanoseconds: one tick, so a consumer that comes back after a pause (or
/// after a downstream answered) goes before the busy ones.
const WAKE_CREDIT: f64 = 1_000_000.0;

/// How long a turn stays reserved for a call on its way to the pool (see
/// [`Scheduler::reserve`]); past that (the call was dropped before it
/// asked) the turn is free for all again.
const RESERVATION: Duration = Duration::from_millis(5);

/// The threads guest code runs on, and the scheduler of their turns.
pub struct GuestPool {
    /// Shut down in the background on drop: a hub may be dropped from
    /// inside another runtime.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    scheduler: Arc<Scheduler>,
}

/// A consumer's place in the pool: what its calls ask turns through.
#[derive(Clone)]
pub struct Share {
    scheduler: Arc<Scheduler>,
    id: usize,
}

/// What the pool has done so far, for metrics and status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolUsage {
    pub threads: usize,
    /// Guest time over all consumers.
    pub busy: Duration,
    /// Guest time per consumer, and how often each was held back by its
    /// `cpu_per_second` quota.
    pub consumers: BTreeMap<String, ShareUsage>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ShareUsage {
    pub used: Duration,
    pub throttled: u64,
    /// The quota in cores, if any.
    pub cpu_per_second: Option<f64>,
}

impl GuestPool {
    /// A pool where `threads` calls (at least one) run guest code at once.
    pub fn new(threads: usize) -> std::io::Result<GuestPool> {
        let threads = threads.max(1);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("switchyard-guest")
            .enable_all()
            // Guests yield at every tick: look for I/O and woken calls at
            // each, so an answer from a downstream waits one tick at most.
            .event_interval(1)
            .global_queue_interval(1)
            .on_thread_start(lower_priority)
            .build()?;
        let handle = runtime.handle().clone();
        Ok(GuestPool {
            runtime: Some(runtime),
            scheduler: Arc::new(Scheduler::new(threads, handle.clone())),
            handle,
        })
    }

    /// One less than the cores the process may use, at least one: a core
    /// stays free for the edge and the bus writer, so a waking edge thread
    /// never waits for the kernel to preempt a guest (measured on 2 cores:
    /// with both cores running guests, every wake-up of the edge queued
    /// behind a guest's time slice, and the edge's ack p99 doubled).
    pub fn default_threads() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
    }

    pub fn threads(&self) -> usize {
        self.scheduler.turns
    }

    /// Guests of `engine` run here: a waiting call that deserves a turn
    /// preempts them by advancing its epoch.
    pub fn preempts(&self, engine: &wasmtime::Engine) {
        self.scheduler.preempts(engine);
    }

    /// The share of `consumer`, created or (on a reload) given its new
    /// weight and quota; its virtual time and usage carry over.
    pub fn share(&self, consumer: &str, weight: f64, cpu_per_second: Option<f64>) -> Share {
        let id = self.scheduler.register(consumer, weight, cpu_per_second);
        Share {
            scheduler: Arc::clone(&self.scheduler),
            id,
        }
    }

    /// Runs `call` on the pool (then [`Share::nudge`] the call's share).
    pub fn spawn<F>(&self, call: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(call)
    }

    pub fn usage(&self) -> PoolUsage {
        self.scheduler.usage()
    }
}

impl Drop for GuestPool {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Lowers the calling thread's priority (nice 10). Not the idle class
/// (`SCHED_IDLE`): that lets any busy normal thread on the machine, another
/// process's included, starve every plugin (tried: deliveries stopped
/// outright while a compiler ran). A pool that cannot lower its priority is
/// still a pool, so a refusal is only logged.
fn lower_priority() {
    let thread = rustix::thread::gettid();
    if let Err(err) = rustix::process::setpriority_process(Some(thread), GUEST_NICE) {
        tracing::debug!(error = %err, "cannot lower the guest thread's priority");
    }
}

impl Share {
    /// From outside the pool, once a call of this share is runnable there:
    /// if it deserves a turn before a running guest, reserves one for it and
    /// preempts, so a pool thread polls the call now rather than at a tick.
    pub fn nudge(&self) {
        self.scheduler.reserve(self.id);
    }

    /// Waits for a turn.
    async fn turn(&self) -> Turn {
        let mut turn = match self.scheduler.request(self.id) {
            Ok(turn) => turn,
            Err(handed) => handed
                .await
                .expect("the scheduler hands every waiting call a turn"),
        };
        // Guest time counts from when the call runs, not from the hand-over.
        turn.since = Instant::now();
        turn
    }
}

/// One call's hold on the pool: its turn while it has one, and what it
/// waited and used. Shared between the store and the futures its epoch
/// callback yields on.
#[derive(Clone)]
pub struct CallTurns {
    share: Share,
    held: Arc<Mutex<Held>>,
    /// The runtime the call came from: where the host works for the guest.
    host: tokio::runtime::Handle,
}

#[derive(Default)]
struct Held {
    turn: Option<Turn>,
    waited: Duration,
    ran: Duration,
}

impl CallTurns {
    /// `host`: the runtime that does the call's host work.
    pub fn new(share: &Share, host: tokio::runtime::Handle) -> CallTurns {
        CallTurns {
            share: share.clone(),
            held: Arc::default(),
            host,
        }
    }

    /// Runs the host's `work` for the guest (an outbound call) on the host
    /// runtime, without the turn, and takes a turn again once it is done.
    /// `None` if the work panicked.
    pub async fn on_host<F>(&self, work: F) -> Option<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.give_back();
        let (done, answer) = oneshot::channel();
        let share = self.share.clone();
        let task = self.host.spawn(async move {
            let output = work.await;
            // The call is woken first, then the running guests step aside:
            // by the time one checks in, the call is queued on the pool.
            if done.send(output).is_ok() {
                share.nudge();
            }
        });
        // A call cut short (wall clock) stops its host work too.
        let _abort = AbortOnDrop(task);
        let output = answer.await.ok();
        self.take().await;
        output
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().expect("call turns lock")
    }

    /// Waits for a turn before guest code runs.
    pub async fn take(&self) {
        let asked = Instant::now();
        let turn = self.share.turn().await;
        let mut held = self.held();
        held.waited += asked.elapsed();
        held.turn = Some(turn);
    }

    /// Gives the turn back (the guest waits on the host, or is done).
    pub fn give_back(&self) {
        let mut held = self.held();
        if let Some(turn) = held.turn.take() {
            held.ran += turn.finish();
        }
    }

    /// At an epoch tick: keeps the turn if no waiting call deserves it
    /// more, else gives it back and queues for the next one, in one step (a
    /// call that let go first and queued after would leave its consumer's
    /// demand unseen for that moment). Either way the task yields, so the
    /// pool's other work and the wall-clock timeout get to run.
    pub fn next_turn(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let mut held = self.held();
        let Some(turn) = held.turn.take() else {
            drop(held);
            let this = self.clone();
            return Box::pin(async move { this.take().await });
        };
        let asked = Instant::now();
        let (ran, passed) = turn.pass();
        held.ran += ran;
        match passed {
            Ok(kept) => {
                held.turn = Some(kept);
                Box::pin(tokio::task::yield_now())
            }
            Err(handed) => {
                drop(held);
                let this = self.clone();
                Box::pin(async move {
                    let mut turn = handed
                        .await
                        .expect("the scheduler hands every waiting call a turn");
                    turn.since = Instant::now();
                    let mut held = this.held();
                    held.waited += asked.elapsed();
                    held.turn = Some(turn);
                })
            }
        }
    }

    /// Guest time used so far, the running turn's included.
    pub fn guest_time(&self) -> Duration {
        let held = self.held();
        held.ran
            + held
                .turn
                .as_ref()
                .map_or(Duration::ZERO, |turn| turn.since.elapsed())
    }

    /// Time spent waiting for turns, and guest time used.
    pub fn totals(&self) -> (Duration, Duration) {
        let held = self.held();
        (held.waited, held.ran)
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The right to run guest code on one pool thread; given back on drop.
struct Turn {
    scheduler: Arc<Scheduler>,
    id: usize,
    since: Instant,
    /// False for a turn that was never handed over.
    armed: bool,
}

impl Turn {
    fn finish(mut self) -> Duration {
        self.armed = false;
        let ran = self.since.elapsed();
        self.scheduler.release(self.id, ran);
        ran
    }

    /// Charges the time so far; keeps the turn (`Ok`) unless another call
    /// deserves it more, else queues for the next one (`Err`).
    fn pass(mut self) -> (Duration, Result<Turn, oneshot::Receiver<Turn>>) {
        let ran = self.since.elapsed();
        match self.scheduler.pass(self.id, ran) {
            None => {
                self.since = Instant::now();
                (ran, Ok(self))
            }
            Some(handed) => {
                self.armed = false;
                (ran, Err(handed))
            }
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if self.armed {
            self.scheduler.release(self.id, self.since.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `calls` CPU-bound calls per share, each spinning `ticks` slices
    /// of 1 ms and yielding its turn between them, and returns what each
    /// share used once the first share finished.
    #[test]
    fn turns_follow_weights_and_a_quota_holds() {
        let pool = GuestPool::new(2).unwrap();
        let heavy = pool.share("heavy", 3.0, None);
        let light = pool.share("light", 1.0, None);
        let capped = pool.share("capped", 100.0, Some(0.2));
        let spin = |share: Share| {
            let handle = pool.handle.clone();
            pool.spawn(async move {
                let turns = CallTurns::new(&share, handle);
                turns.take().await;
                let until = Instant::now() + Duration::from_secs(3);
                while Instant::now() < until {
                    let slice = Instant::now() + Duration::from_millis(1);
                    while Instant::now() < slice {
                        std::hint::spin_loop();
                    }
                    turns.next_turn().await;
                }
                turns.give_back();
            })
        };
        let runs: Vec<_> = [&heavy, &heavy, &light, &light, &capped, &capped]
            .into_iter()
            .map(|share| spin(share.clone()))
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            for run in runs {
                run.await.unwrap();
            }
        });
        let usage = pool.usage();
        let used = |name: &str| usage.consumers[name].used.as_secs_f64();
        let ratio = used("heavy") / used("light");
        assert!((2.7..=3.3).contains(&ratio), "heavy:light = {ratio:.2}");
        // 0.2 cores for ~3 s plus the first second's bucket.
        assert!(
            used("capped") < 0.2 * 3.5 + 0.2,
            "capped used {}",
            used("capped")
        );
        assert!(used("capped") > 0.2 * 2.0, "capped used {}", used("capped"));
        assert!(usage.consumers["capped"].throttled > 0);
    }
}
