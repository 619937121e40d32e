//! The plugin host: consumers as sandboxed WebAssembly components.
//!
//! Owns every use of wasmtime (its API moves; nothing outside this folder
//! touches it). Loads, type-checks and compiles each consumer's component at
//! start, then runs one fresh instance per event from a pre-instantiated
//! component on a pooling allocator: no state leaks between events and a trap
//! only drops that instance's store.
//!
//! Budgets per call: CPU time (epoch ticks counted while guest code runs), a
//! wall clock around the whole call including host calls, a memory cap, and
//! caps on outbound calls and response sizes (see [`host`]). Exceeding any of
//! them fails that delivery as retryable, and nothing else.
//!
//! The contract is the WIT package in `plugins/wit/`.

pub mod connection;
pub mod devkit;
pub mod egress;
pub mod host;
pub mod pool;

use crate::config::{Config, ConnectionConfig, ConsumerConfig, PluginLimits};
use host::{CallRecord, ConsumerContext, HostState};
use pool::{CallTurns, GuestPool, Share};

pub use connection::Connection;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config as EngineConfig, Engine, Store, UpdateDeadline};

mod bindings {
    wasmtime::component::bindgen!({
        path: "plugins/wit",
        world: "consumer",
        imports: { default: async },
        exports: { default: async },
    });
}

pub use bindings::switchyard::plugin::types::{Event as PluginEvent, Failure};

/// Length of one epoch tick: the granularity of the CPU budget, and the
/// longest a guest runs before the pool decides whose turn it is.
const TICK: Duration = Duration::from_millis(1);

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("consumer `{consumer}`: cannot read plugin `{path}`: {message}")]
    Read {
        consumer: String,
        path: String,
        message: String,
    },
    #[error(
        "consumer `{consumer}`: plugin `{path}` is not a valid switchyard component: {message}"
    )]
    Invalid {
        consumer: String,
        path: String,
        message: String,
    },
    #[error("consumer `{consumer}`: {message}")]
    Connection { consumer: String, message: String },
    /// A `[connections.<name>]` table that cannot be built (its credentials
    /// do not resolve, its base URL is not one).
    #[error("connections.{name}: {source}")]
    BadConnection {
        name: String,
        source: connection::ConnectionError,
    },
    #[error("cannot start the plugin engine: {0}")]
    Engine(String),
    #[error("cannot start the plugin threads: {0}")]
    Pool(String),
}

/// How a call ended, as dispatch needs to know it.
#[derive(Debug, Clone, PartialEq)]
pub enum CallOutcome {
    Done,
    /// Transient failure; `after` is the longest `Retry-After` a downstream
    /// asked for during the call, if any.
    Retry {
        reason: String,
        after: Option<Duration>,
        /// The downstream looked unwell (timeout, unreachable, 5xx, 429), as
        /// opposed to the plugin failing on its own.
        downstream_unwell: bool,
    },
    Reject(String),
    Review(String),
}

/// What one call did, for dispatch, logs and `plugin test`.
#[derive(Debug, Clone)]
pub struct CallReport {
    pub outcome: CallOutcome,
    pub calls: Vec<CallRecord>,
    pub wall: Duration,
    /// Guest time on the pool (turns held), and time spent waiting for
    /// turns.
    pub guest_time: Duration,
    pub pool_wait: Duration,
    /// Largest linear memory the instance had, in bytes.
    pub peak_memory: u64,
    /// What the sandbox stopped or refused, each kind once (already logged).
    pub stops: Vec<SandboxStop>,
}

/// Why the sandbox stopped a plugin, refused it something or cut it short:
/// the `reason` label of `switchyard_plugin_sandbox_stops_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxStop {
    /// CPU budget (epoch ticks) spent.
    Cpu,
    /// Wall-clock budget spent, host calls included.
    Wall,
    /// Memory growth past the cap.
    Memory,
    /// The guest's call stack overflowed (deep recursion).
    Stack,
    /// Any other trap: a panic, `unreachable`, a bad memory access.
    Trap,
    /// A call on a connection not granted to the consumer.
    NotGranted,
    /// More outbound calls than `limits.http_calls`.
    HttpCalls,
    /// A downstream answer larger than `limits.response_body`.
    ResponseBody,
    /// More log lines than one event may write (the rest are dropped).
    LogLines,
    /// A connection's address refused by its address policy.
    Address,
    /// A downstream redirected to another host.
    Redirect,
}

impl SandboxStop {
    /// The sandbox ended the call (as opposed to refusing it something).
    pub fn ends_call(self) -> bool {
        matches!(
            self,
            SandboxStop::Cpu
                | SandboxStop::Wall
                | SandboxStop::Memory
                | SandboxStop::Stack
                | SandboxStop::Trap
        )
    }

    pub fn label(self) -> &'static str {
        match self {
            SandboxStop::Cpu => "cpu",
            SandboxStop::Wall => "wall_clock",
            SandboxStop::Memory => "memory",
            SandboxStop::Stack => "stack",
            SandboxStop::Trap => "trap",
            SandboxStop::NotGranted => "not_granted",
            SandboxStop::HttpCalls => "http_calls",
            SandboxStop::ResponseBody => "response_body",
            SandboxStop::LogLines => "log_lines",
            SandboxStop::Address => "address",
            SandboxStop::Redirect => "redirect",
        }
    }

    /// The start of the log line that reports it.
    fn what(self) -> &'static str {
        match self {
            SandboxStop::Cpu
            | SandboxStop::Wall
            | SandboxStop::Memory
            | SandboxStop::Stack
            | SandboxStop::Trap => "plugin stopped by its sandbox",
            SandboxStop::LogLines => "plugin logs cut by its sandbox",
            SandboxStop::NotGranted
            | SandboxStop::HttpCalls
            | SandboxStop::ResponseBody
            | SandboxStop::Address
            | SandboxStop::Redirect => "outbound call refused by the sandbox",
        }
    }
}

/// The engine shared by all consumers, and its epoch ticker.
pub struct PluginHost {
    engine: Engine,
    linker: Linker<HostState>,
    /// The epoch ticker runs while this or any loaded plugin lives.
    ticker_alive: Arc<AtomicU64>,
    tracer: crate::telemetry::otlp::Tracer,
    /// Where loaded plugins run; a pool of its own unless one is given.
    pool: OnceLock<Arc<GuestPool>>,
}

impl PluginHost {
    /// Plugins loaded from now on run on `pool` (the hub's, shared by every
    /// generation of consumers so fair shares carry across reloads).
    pub fn with_pool(self, pool: Arc<GuestPool>) -> PluginHost {
        pool.preempts(&self.engine);
        let _ = self.pool.set(pool);
        self
    }

    fn pool(&self) -> Result<&Arc<GuestPool>, PluginError> {
        if let Some(pool) = self.pool.get() {
            return Ok(pool);
        }
        let pool = GuestPool::new(GuestPool::default_threads())
            .map_err(|err| PluginError::Pool(err.to_string()))?;
        pool.preempts(&self.engine);
        Ok(self.pool.get_or_init(|| Arc::new(pool)))
    }

    /// Outbound calls of plugins loaded from now on export client spans here.
    pub fn with_tracer(mut self, tracer: crate::telemetry::otlp::Tracer) -> PluginHost {
        self.tracer = tracer;
        self
    }

    /// `instances` bounds how many plugin calls can run at once (the sum of
    /// consumer concurrencies); `max_memory` is the largest per-instance cap.
    pub fn new(instances: u32, max_memory: u64) -> Result<PluginHost, PluginError> {
        let instances = instances.max(1) + 8;
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        // A component made by wit-component holds up to four core
        // instances (the module, its shim, fixups, the adapter's), each with
        // tables; one linear memory, sometimes two.
        pool.total_component_instances(instances)
            .total_core_instances(instances * 4)
            .total_memories(instances * 2)
            .total_tables(instances * 4)
            .total_stacks(instances)
            .max_memory_size(max_memory as usize)
            // Keeps the first pages of a slot's memory mapped between
            // instances: re-instantiation skips most page faults.
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(64 << 10)
            // Resets only the pages an instance dirtied (Linux 6.7+), so a
            // slot's reuse rarely needs an `madvise`, whose TLB shootdown
            // interrupts every core.
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut config = EngineConfig::new();
        config
            .epoch_interruption(true)
            .concurrency_support(false)
            .allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|err| PluginError::Engine(err.to_string()))?;
        let mut linker = Linker::new(&engine);
        bindings::Consumer::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|err| PluginError::Engine(err.to_string()))?;
        let alive = Arc::new(AtomicU64::new(0));
        spawn_ticker(engine.clone(), Arc::downgrade(&alive));
        Ok(PluginHost {
            engine,
            linker,
            ticker_alive: alive,
            tracer: Default::default(),
            pool: OnceLock::new(),
        })
    }

    /// A host sized for every consumer of `config`: as many instances as
    /// their concurrencies add up to, the largest memory cap among them.
    pub fn for_config(config: &Config) -> Result<PluginHost, PluginError> {
        let instances: usize = config
            .consumers
            .values()
            .map(|c| c.concurrency + c.replay_concurrency)
            .sum();
        let max_memory = config
            .consumers
            .values()
            .map(|c| c.limits.memory)
            .max()
            .unwrap_or(32 << 20);
        PluginHost::new(instances as u32, max_memory)
    }

    /// Builds the connections and loads every consumer's plugin, by consumer
    /// name; every failure is reported, not just the first.
    pub fn load_all(
        &self,
        config: &Config,
    ) -> Result<BTreeMap<String, Arc<ConsumerPlugin>>, Vec<PluginError>> {
        let connections = build_connections(&config.connections)?;
        let mut plugins = BTreeMap::new();
        let mut errors = Vec::new();
        for (name, consumer) in &config.consumers {
            match self.load(name, consumer, &connections) {
                Ok(plugin) => {
                    plugins.insert(name.clone(), Arc::new(plugin));
                }
                Err(err) => errors.push(err),
            }
        }
        if errors.is_empty() {
            Ok(plugins)
        } else {
            Err(errors)
        }
    }

    /// Loads, type-checks and compiles one consumer's plugin, and resolves the
    /// credentials of its connections. Every error names the consumer.
    pub fn load(
        &self,
        consumer: &str,
        config: &ConsumerConfig,
        connections: &BTreeMap<String, Arc<Connection>>,
    ) -> Result<ConsumerPlugin, PluginError> {
        let path = config.plugin.display().to_string();
        let bytes = std::fs::read(&config.plugin).map_err(|err| PluginError::Read {
            consumer: consumer.to_owned(),
            path: path.clone(),
            message: err.to_string(),
        })?;
        let invalid = |message: String| PluginError::Invalid {
            consumer: consumer.to_owned(),
            path: path.clone(),
            message,
        };
        let component_bytes = componentize(&bytes).map_err(|err| invalid(err.to_string()))?;
        let component = Component::new(&self.engine, &component_bytes)
            .map_err(|err| invalid(format!("{err:#}")))?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|err| invalid(format!("{err:#}")))?;
        let pre = bindings::ConsumerPre::new(pre).map_err(|err| invalid(format!("{err:#}")))?;
        let mut granted = BTreeMap::new();
        for name in &config.connections {
            let connection = connections
                .get(name)
                .ok_or_else(|| PluginError::Connection {
                    consumer: consumer.to_owned(),
                    message: format!("connection `{name}` is not available"),
                })?;
            granted.insert(name.clone(), Arc::clone(connection));
        }
        let pool = Arc::clone(self.pool()?);
        let share = pool.share(consumer, config.cpu_weight, config.cpu_per_second);
        Ok(ConsumerPlugin {
            pre,
            pool,
            share,
            digest: sha256_hex(&component_bytes),
            _ticker_alive: Arc::clone(&self.ticker_alive),
            context: Arc::new(ConsumerContext {
                consumer: Arc::from(consumer),
                connections: granted,
                settings: config.settings.clone(),
                limits: config.limits,
                tracer: self.tracer.clone(),
            }),
        })
    }
}

/// Builds every connection once, so consumers sharing a connection share its
/// client and rate limit. Errors name the connection.
pub fn build_connections(
    configs: &BTreeMap<String, ConnectionConfig>,
) -> Result<BTreeMap<String, Arc<Connection>>, Vec<PluginError>> {
    let mut built = BTreeMap::new();
    let mut errors = Vec::new();
    for (name, config) in configs {
        match Connection::build(name, config) {
            Ok(connection) => {
                built.insert(name.clone(), Arc::new(connection));
            }
            Err(source) => errors.push(PluginError::BadConnection {
                name: name.clone(),
                source,
            }),
        }
    }
    if errors.is_empty() {
        Ok(built)
    } else {
        Err(errors)
    }
}

/// Accepts a component, or a core module carrying a component-type section
/// (what `wit-bindgen` produces for `wasm32-unknown-unknown`) and encodes it
/// into a component in-process, so no extra tool is needed.
pub fn componentize(bytes: &[u8]) -> Result<Vec<u8>, ComponentizeError> {
    if wasmparser::Parser::is_component(bytes) {
        return Ok(bytes.to_vec());
    }
    if !wasmparser::Parser::is_core_wasm(bytes) {
        return Err(ComponentizeError::NotWasm);
    }
    wit_component::ComponentEncoder::default()
        .module(bytes)
        .and_then(|encoder| encoder.validate(true).encode())
        .map_err(|err| ComponentizeError::Encode(format!("{err:#}")))
}

/// A plugin file that is not a component and cannot be made one.
#[derive(Debug, thiserror::Error)]
pub enum ComponentizeError {
    #[error("not a WebAssembly file")]
    NotWasm,
    /// wit-component's error chain, as text (anyhow).
    #[error("cannot make a component of this module: {0}")]
    Encode(String),
}

/// Advances `engine`'s epoch every tick while `alive` lives, and counts
/// the ticks in it (the pool advances the epoch too, to preempt: those
/// check-ins are no tick of CPU time).
fn spawn_ticker(engine: Engine, alive: Weak<AtomicU64>) {
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || {
            while let Some(ticks) = alive.upgrade() {
                drop(ticks);
                std::thread::sleep(TICK);
                if let Some(ticks) = alive.upgrade() {
                    ticks.fetch_add(1, Ordering::Relaxed);
                }
                engine.increment_epoch();
            }
        })
        .expect("spawn epoch ticker thread");
}

/// One consumer's compiled plugin, ready to run an event.
pub struct ConsumerPlugin {
    pre: bindings::ConsumerPre<HostState>,
    pool: Arc<GuestPool>,
    /// The consumer's fair share of the pool.
    share: Share,
    /// SHA-256 of the component: tells a new plugin version on reload.
    digest: String,
    /// Without ticks there is no CPU budget: keep the ticker running.
    _ticker_alive: Arc<AtomicU64>,
    context: Arc<ConsumerContext>,
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

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
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
