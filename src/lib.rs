//! Switchyard: a router for payment webhooks.
//!
//! The data flow, one folder per stage:
//! `ingest` (verify, persist) → `bus` (durable queues) → `dispatch` (per
//! consumer policies) → `plugin` (sandboxed WebAssembly consumers). `config`
//! reads routes.toml; `admin`, `alerts` and `telemetry` serve the operator;
//! `app` wires the stages into a running hub.

pub mod admin;
pub mod alerts;
pub mod app;
pub mod bus;
pub mod config;
pub mod dispatch;
pub mod durable;
pub mod ingest;
pub mod limiter;
pub mod plugin;
pub mod telemetry;
