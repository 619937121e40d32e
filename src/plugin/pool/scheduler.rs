//! Whose turn it is: each consumer's share (weight, virtual time, quota),
//! the free turns and reservations, and the hand-over of a turn to the
//! waiting call that deserves it most (see the pool's page for the rules).

use super::*;
use std::collections::VecDeque;

impl Scheduler {
    pub(super) fn new(turns: usize, handle: tokio::runtime::Handle) -> Scheduler {
        Scheduler {
            turns,
            handle,
            engines: Mutex::default(),
            state: Mutex::new(State {
                free: turns,
                ..State::default()
            }),
        }
    }

    /// Guests of `engine` run here (see [`GuestPool::preempts`]).
    pub(super) fn preempts(&self, engine: &wasmtime::Engine) {
        let mut engines = self.engines.lock().expect("pool engines lock");
        engines.retain(|known| known.upgrade().is_some());
        engines.push(engine.weak());
    }

    /// The id of `consumer`'s share, created or given its new weight and
    /// quota (see [`GuestPool::share`]).
    pub(super) fn register(
        &self,
        consumer: &str,
        weight: f64,
        cpu_per_second: Option<f64>,
    ) -> usize {
        let mut state = self.lock();
        let id = match state.names.get(consumer) {
            Some(&id) => id,
            None => {
                let id = state.shares.len();
                let clock = state.clock;
                state.shares.push(ShareState {
                    name: consumer.to_owned(),
                    vtime: clock,
                    ..ShareState::default()
                });
                state.names.insert(consumer.to_owned(), id);
                id
            }
        };
        let share = &mut state.shares[id];
        share.weight = weight.max(f64::MIN_POSITIVE);
        share.quota = cpu_per_second.map(|per_second| Quota {
            per_second,
            tokens: per_second,
            at: Instant::now(),
        });
        id
    }

    pub(super) fn usage(&self) -> PoolUsage {
        let state = self.lock();
        PoolUsage {
            threads: self.turns,
            busy: state.busy,
            consumers: state
                .shares
                .iter()
                .map(|share| {
                    let usage = ShareUsage {
                        used: share.used,
                        throttled: share.throttled,
                        cpu_per_second: share.quota.as_ref().map(|quota| quota.per_second),
                    };
                    (share.name.clone(), usage)
                })
                .collect(),
        }
    }
}

pub(super) struct Scheduler {
    pub(super) turns: usize,
    /// Runs the timer that wakes a consumer whose quota refills.
    handle: tokio::runtime::Handle,
    state: Mutex<State>,
    /// The engines whose guests run here (one per configuration loaded).
    engines: Mutex<Vec<wasmtime::EngineWeak>>,
}

#[derive(Default)]
struct State {
    free: usize,
    /// Calls waiting over all shares.
    waiting: usize,
    /// The pool's virtual clock: never behind the smallest virtual time of
    /// a busy share; where an idle share re-enters.
    clock: f64,
    shares: Vec<ShareState>,
    names: BTreeMap<String, usize>,
    busy: Duration,
    /// A quota refill timer is pending.
    wake_armed: bool,
    /// Turns held back for calls on their way to the pool, and until when.
    reserved: usize,
    reserved_until: Option<Instant>,
    /// The timer that lifts stale reservations is pending.
    expiry_armed: bool,
}

#[derive(Default)]
struct ShareState {
    name: String,
    weight: f64,
    /// Guest nanoseconds used, divided by the weight.
    vtime: f64,
    queue: VecDeque<oneshot::Sender<Turn>>,
    running: usize,
    /// Calls on their way to the pool with a turn reserved.
    arriving: usize,
    quota: Option<Quota>,
    used: Duration,
    throttled: u64,
}

impl State {
    /// Lifts the reservations once they are stale.
    fn expire_reservations(&mut self, now: Instant) {
        if self.reserved_until.is_some_and(|until| now >= until) {
            self.reserved = 0;
            self.reserved_until = None;
            for share in &mut self.shares {
                share.arriving = 0;
            }
        }
    }

    /// Share `id`'s virtual time if it asked now.
    fn asking_vtime(&self, id: usize) -> f64 {
        let share = &self.shares[id];
        if share.idle() {
            share.vtime.max(self.clock - WAKE_CREDIT)
        } else {
            share.vtime
        }
    }

    /// Whether another share with a virtual time above `vtime` runs guest
    /// code now.
    fn runs_behind(&self, id: usize, vtime: f64) -> bool {
        self.shares
            .iter()
            .enumerate()
            .any(|(other, share)| other != id && share.running > 0 && share.vtime > vtime)
    }

    /// Books `ran` of guest time to share `id`.
    fn charge(&mut self, id: usize, ran: Duration) {
        self.busy += ran;
        let share = &mut self.shares[id];
        share.used += ran;
        share.vtime += ran.as_nanos() as f64 / share.weight;
        if let Some(quota) = &mut share.quota {
            quota.tokens -= ran.as_secs_f64();
        }
        let least_busy = self
            .shares
            .iter()
            .filter(|share| !share.idle())
            .map(|share| share.vtime)
            .fold(f64::INFINITY, f64::min);
        if least_busy.is_finite() {
            self.clock = self.clock.max(least_busy);
        }
    }
}

impl ShareState {
    fn idle(&self) -> bool {
        self.running == 0 && self.queue.is_empty()
    }

    /// Refills the quota; `Err` holds how long until it allows a turn.
    fn quota_allows(&mut self, now: Instant) -> Result<(), Duration> {
        match &mut self.quota {
            None => Ok(()),
            Some(quota) => {
                quota.refill(now);
                if quota.tokens > 0.0 {
                    Ok(())
                } else {
                    Err(Duration::from_secs_f64(-quota.tokens / quota.per_second))
                }
            }
        }
    }
}

/// A token bucket of guest seconds, holding one second's worth.
struct Quota {
    per_second: f64,
    tokens: f64,
    at: Instant,
}

impl Quota {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        self.at = now;
    }
}

impl Scheduler {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("guest scheduler lock")
    }

    /// A turn now, or the channel one will be handed over on.
    pub(super) fn request(self: &Arc<Self>, id: usize) -> Result<Turn, oneshot::Receiver<Turn>> {
        let now = Instant::now();
        let mut state = self.lock();
        let state = &mut *state;
        state.expire_reservations(now);
        let share = &mut state.shares[id];
        if share.idle() {
            share.vtime = share.vtime.max(state.clock - WAKE_CREDIT);
        }
        let allowed = share.quota_allows(now).is_ok();
        if !allowed {
            share.throttled += 1;
        }
        let reserved_for_me = share.arriving > 0;
        if reserved_for_me {
            share.arriving -= 1;
            state.reserved -= 1;
            if state.reserved == 0 {
                state.reserved_until = None;
            }
        }
        let share = &mut state.shares[id];
        let unreserved = state.free > state.reserved && state.waiting == 0;
        if allowed && state.free > 0 && (reserved_for_me || unreserved) {
            state.free -= 1;
            share.running += 1;
            return Ok(self.turn(id));
        }
        let (hand_over, handed) = oneshot::channel();
        share.queue.push_back(hand_over);
        state.waiting += 1;
        self.dispatch(state, now);
        let still_waiting = !state.shares[id].queue.is_empty();
        if allowed && still_waiting && state.runs_behind(id, state.shares[id].vtime) {
            self.preempt();
        }
        Err(handed)
    }

    /// For a call of share `id` on its way to the pool: if every turn is
    /// taken and it would go before a running guest, holds the next turn a
    /// guest gives up for it (for [`RESERVATION`] at most) and preempts.
    pub(super) fn reserve(self: &Arc<Self>, id: usize) {
        let now = Instant::now();
        let mut state = self.lock();
        let state = &mut *state;
        state.expire_reservations(now);
        let every_turn_taken = state.free <= state.reserved;
        let deserves = state.runs_behind(id, state.asking_vtime(id));
        // A share that already runs or waits has asked (the call on its way
        // may have been polled before this nudge, and a waiting call
        // preempted when it asked): a reservation nobody takes would only
        // idle a turn until it lapses.
        let asked = !state.shares[id].idle();
        if !every_turn_taken || !deserves || asked || state.reserved >= self.turns {
            return;
        }
        state.reserved += 1;
        state.shares[id].arriving += 1;
        state.reserved_until = Some(now + RESERVATION);
        self.expire_later(state);
        self.preempt();
    }

    /// Lifts stale reservations even if nobody asks again (the reserved
    /// calls were dropped on their way): a turn must not stay idle.
    fn expire_later(self: &Arc<Self>, state: &mut State) {
        if state.expiry_armed {
            return;
        }
        state.expiry_armed = true;
        let this = Arc::clone(self);
        self.handle.spawn(async move {
            loop {
                let until = {
                    let mut state = this.lock();
                    let now = Instant::now();
                    state.expire_reservations(now);
                    match state.reserved_until {
                        Some(until) => until,
                        None => {
                            state.expiry_armed = false;
                            this.dispatch(&mut state, now);
                            return;
                        }
                    }
                };
                tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
            }
        });
    }

    /// Every running guest checks in now rather than at its next tick.
    fn preempt(&self) {
        let engines = self.engines.lock().expect("pool engines lock");
        for engine in engines.iter().filter_map(wasmtime::EngineWeak::upgrade) {
            engine.increment_epoch();
        }
    }

    pub(super) fn release(self: &Arc<Self>, id: usize, ran: Duration) {
        let mut state = self.lock();
        let state = &mut *state;
        state.charge(id, ran);
        state.free += 1;
        state.shares[id].running -= 1;
        self.dispatch(state, Instant::now());
    }

    /// At a tick of a running call: `None` keeps its turn; otherwise the
    /// turn is given back and the call queued, and the channel returned.
    pub(super) fn pass(
        self: &Arc<Self>,
        id: usize,
        ran: Duration,
    ) -> Option<oneshot::Receiver<Turn>> {
        let now = Instant::now();
        let mut state = self.lock();
        let state = &mut *state;
        state.expire_reservations(now);
        state.charge(id, ran);
        let mine = state.shares[id].vtime;
        let over_quota = state.shares[id].quota_allows(now).is_err();
        // A call on its way holds a reservation no free turn backs yet.
        let reserved = state.reserved > state.free;
        let someone_first = state.waiting > 0
            && state.shares.iter_mut().enumerate().any(|(other, share)| {
                !share.queue.is_empty()
                    && (other == id || share.vtime < mine)
                    && share.quota_allows(now).is_ok()
            });
        if !over_quota && !someone_first && !reserved {
            return None;
        }
        let share = &mut state.shares[id];
        if over_quota {
            share.throttled += 1;
        }
        share.running -= 1;
        let (hand_over, handed) = oneshot::channel();
        share.queue.push_back(hand_over);
        state.free += 1;
        state.waiting += 1;
        self.dispatch(state, now);
        Some(handed)
    }

    /// Hands free turns, but those reserved, to waiting calls, smallest
    /// virtual time first.
    fn dispatch(self: &Arc<Self>, state: &mut State, now: Instant) {
        state.expire_reservations(now);
        while state.free > state.reserved && state.waiting > 0 {
            let mut next: Option<(usize, f64)> = None;
            let mut refill_in: Option<Duration> = None;
            for (id, share) in state.shares.iter_mut().enumerate() {
                if share.queue.is_empty() {
                    continue;
                }
                if let Err(wait) = share.quota_allows(now) {
                    refill_in = Some(refill_in.map_or(wait, |soonest| soonest.min(wait)));
                    continue;
                }
                if next.is_none_or(|(_, vtime)| share.vtime < vtime) {
                    next = Some((id, share.vtime));
                }
            }
            let Some((id, _)) = next else {
                if let Some(wait) = refill_in {
                    self.wake_after(state, wait);
                }
                return;
            };
            let share = &mut state.shares[id];
            let hand_over = share.queue.pop_front().expect("a waiting call");
            state.waiting -= 1;
            match hand_over.send(self.turn(id)) {
                Ok(()) => {
                    state.free -= 1;
                    state.shares[id].running += 1;
                }
                // The call was cut short while it waited (wall clock).
                Err(mut unclaimed) => unclaimed.armed = false,
            }
        }
    }

    fn turn(self: &Arc<Self>, id: usize) -> Turn {
        Turn {
            scheduler: Arc::clone(self),
            id,
            since: Instant::now(),
            armed: true,
        }
    }

    /// Looks again once a quota has refilled, with turns free but every
    /// waiting consumer over its quota.
    fn wake_after(self: &Arc<Self>, state: &mut State, wait: Duration) {
        if state.wake_armed {
            return;
        }
        state.wake_armed = true;
        let this = Arc::clone(self);
        self.handle.spawn(async move {
            tokio::time::sleep(wait + Duration::from_micros(100)).await;
            let mut state = this.lock();
            state.wake_armed = false;
            this.dispatch(&mut state, Instant::now());
        });
    }
}
