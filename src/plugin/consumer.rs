//! One loaded consumer plugin and its call: a fresh instance per event from
//! the pre-instantiated component, run on the guest pool under the CPU,
//! wall-clock, memory and call budgets, and what the call did, as a
//! [`CallReport`].

use super::*;

/// One consumer's compiled plugin, ready to run an event.
pub struct ConsumerPlugin {
    pub(super) pre: bindings::ConsumerPre<HostState>,
    pub(super) pool: Arc<GuestPool>,
    /// The consumer's fair share of the pool.
    pub(super) share: Share,
    /// SHA-256 of the component: tells a new plugin version on reload.
    pub(super) digest: String,
    /// Without ticks there is no CPU budget: keep the ticker running.
    pub(super) _ticker_alive: Arc<AtomicU64>,
    pub(super) context: Arc<ConsumerContext>,
}

impl ConsumerPlugin {
    pub fn limits(&self) -> PluginLimits {
        self.context.limits
    }

    /// SHA-256 of the component, hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The pool this plugin runs on.
    pub fn pool(&self) -> &Arc<GuestPool> {
        &self.pool
    }

    /// Runs `handle(event)` in a fresh instance under the consumer's budgets.
    /// `traceparent` is the event's trace context; every outbound call
    /// carries it on as a child span.
    /// `effect_key` names this delivery's effects in `Idempotency-Key`s
    /// ([`Envelope::effect_key`](crate::bus::Envelope::effect_key)).
    ///
    /// The call runs on the guest pool, never on the caller's runtime.
    pub async fn call(
        self: &Arc<Self>,
        event: PluginEvent,
        effect_key: &str,
        traceparent: Option<&str>,
    ) -> CallReport {
        let this = Arc::clone(self);
        let effect_key = effect_key.to_owned();
        let traceparent = traceparent.map(str::to_owned);
        // The host's work for the guest stays on the caller's runtime.
        let host = tokio::runtime::Handle::current();
        let run = self.pool.spawn(async move {
            this.call_on_pool(event, effect_key, traceparent.as_deref(), host)
                .await
        });
        // The pool's threads may all be running guests: make one look now.
        self.share.nudge();
        match run.await {
            Ok(report) => report,
            // Only a pool shut down under a running call (the hub is
            // stopping): the delivery is retried like any cut-short call.
            Err(err) => CallReport {
                outcome: CallOutcome::Retry {
                    reason: format!("plugin call did not finish: {err}"),
                    after: None,
                    downstream_unwell: false,
                },
                calls: Vec::new(),
                wall: Duration::ZERO,
                guest_time: Duration::ZERO,
                pool_wait: Duration::ZERO,
                peak_memory: 0,
                stops: Vec::new(),
            },
        }
    }

    async fn call_on_pool(
        &self,
        event: PluginEvent,
        effect_key: String,
        traceparent: Option<&str>,
        host: tokio::runtime::Handle,
    ) -> CallReport {
        let started = Instant::now();
        let turns = CallTurns::new(&self.share, host);
        let limits = self.context.limits;
        let cpu_budget_ticks = (limits.cpu.as_micros() / TICK.as_micros()).max(1) as u64;
        let mut store = Store::new(
            self.pre.engine(),
            HostState::new(
                Arc::clone(&self.context),
                event.id.clone(),
                effect_key,
                traceparent.and_then(crate::telemetry::otlp::TraceContext::parse),
                turns.clone(),
            ),
        );
        store.limiter(|state| state);
        // Check in every tick (or sooner, when the pool preempts): count a
        // tick of CPU time if the ticker advanced since the last check-in,
        // stop a guest past its budget, else give the turn back and queue
        // for the next (see `pool`), so other consumers, the wall-clock
        // timeout and other tasks keep running even while a guest spins.
        let ticks = Arc::clone(&self._ticker_alive);
        let mut seen = ticks.load(Ordering::Relaxed);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |mut ctx| {
            let state = ctx.data_mut();
            let now = ticks.load(Ordering::Relaxed);
            if now != seen {
                seen = now;
                state.cpu_ticks += 1;
            }
            if state.cpu_ticks > cpu_budget_ticks {
                return Err(wasmtime::Error::msg("cpu budget exceeded"));
            }
            Ok(UpdateDeadline::YieldCustom(1, state.turns.next_turn()))
        });
        let run = async {
            turns.take().await;
            let instance = self.pre.instantiate_async(&mut store).await?;
            instance.call_handle(&mut store, &event).await
        };
        let result = tokio::time::timeout(limits.wall, run).await;
        turns.give_back();
        let (pool_wait, guest_time) = turns.totals();
        let state = store.data_mut();
        if state.log_lines > host::MAX_LOG_LINES {
            let detail = format!(
                "{} log lines in one event, {} dropped (at most {} are written)",
                state.log_lines,
                state.log_lines - host::MAX_LOG_LINES,
                host::MAX_LOG_LINES
            );
            state.stopped(SandboxStop::LogLines, &detail);
        }
        // Every instance slot taken (more calls at once than the pool was
        // sized for): the hub's shortage, not the plugin's fault, so no
        // sandbox stop; the delivery is retried.
        let no_slot = matches!(&result, Ok(Err(error)) if pool_exhausted(error));
        let stop = match &result {
            Ok(Err(_)) if no_slot => None,
            Err(_) => Some((
                SandboxStop::Wall,
                format!(
                    "wall-clock budget of {} exceeded",
                    humantime::format_duration(limits.wall)
                ),
            )),
            Ok(Err(trap)) => Some(trap_reason(trap, state, cpu_budget_ticks)),
            Ok(Ok(_)) => None,
        };
        if let Some((stop, reason)) = &stop {
            state.stopped(*stop, reason);
        }
        let state = store.data();
        let retry = |reason: String, downstream_unwell: bool| CallOutcome::Retry {
            reason,
            after: state.retry_after,
            downstream_unwell,
        };
        let stop_reason = || {
            stop.as_ref()
                .map(|(_, reason)| reason.clone())
                .unwrap_or_default()
        };
        let outcome = match result {
            Err(_) => retry(
                stop_reason(),
                // Cut off while waiting on a downstream: that downstream is slow.
                state.call_in_flight || state.downstream_unwell,
            ),
            Ok(Ok(Ok(()))) => CallOutcome::Done,
            // A downstream said the resource is gone for good: retrying
            // cannot help, whatever the plugin asked for.
            Ok(Ok(Err(Failure::Retry(_)))) if state.downstream_gone => {
                CallOutcome::Reject("downstream answered 410 Gone".to_owned())
            }
            Ok(Ok(Err(Failure::Retry(reason)))) => retry(reason, state.downstream_unwell),
            Ok(Ok(Err(Failure::Reject(reason)))) => CallOutcome::Reject(reason),
            Ok(Ok(Err(Failure::Review(reason)))) => CallOutcome::Review(reason),
            Ok(Err(_)) if no_slot => {
                retry("no free plugin instance slot; retrying".to_owned(), false)
            }
            Ok(Err(_)) => retry(stop_reason(), false),
        };
        CallReport {
            outcome,
            calls: state.calls.clone(),
            wall: started.elapsed(),
            guest_time,
            pool_wait,
            peak_memory: state.peak_memory as u64,
            stops: state.stops.clone(),
        }
    }
}

fn pool_exhausted(error: &wasmtime::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
            .is_some()
    })
}

/// A short, operator-facing reason for a trap: which budget, or which trap.
fn trap_reason(
    error: &wasmtime::Error,
    state: &HostState,
    cpu_budget_ticks: u64,
) -> (SandboxStop, String) {
    if state.cpu_ticks > cpu_budget_ticks {
        return (SandboxStop::Cpu, "cpu budget exceeded".to_owned());
    }
    if state.memory_refused {
        return (SandboxStop::Memory, "memory limit exceeded".to_owned());
    }
    match error.downcast_ref::<wasmtime::Trap>() {
        Some(trap @ wasmtime::Trap::StackOverflow) => {
            (SandboxStop::Stack, format!("plugin trapped: {trap}"))
        }
        Some(trap) => (SandboxStop::Trap, format!("plugin trapped: {trap}")),
        None => (
            SandboxStop::Trap,
            format!("plugin failed: {}", error.root_cause()),
        ),
    }
}
