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
//!
//! This page loads plugins ([`PluginHost`]); [`consumer`] runs one call,
//! [`host`] is what the guest may import, [`connection`] and [`egress`] are
//! where its outbound calls may go, [`pool`] is where guest code runs, and
//! [`devkit`] is the plugin author's `new | build | test`.

pub mod connection;
mod consumer;
pub mod devkit;
pub mod egress;
pub mod host;
pub mod pool;

use crate::config::{Config, ConnectionConfig, ConsumerConfig, PluginLimits};
use host::{CallRecord, ConsumerContext, HostState};
use pool::{CallTurns, GuestPool, Share};

pub use connection::Connection;
pub use consumer::ConsumerPlugin;
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

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
