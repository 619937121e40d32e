//! Integration tests: one binary, one harness (see `support/`).
//!
//! Real sockets, real Redis (127.0.0.1:6379), real plugins built from
//! `plugins/`; only the third-party APIs (CRM, ERP, marketing) are mocks.

mod natsd;
mod support;

mod admin;
mod alerts;
mod bad_requests;
mod bus;
mod cli;
mod config_errors;
mod crash;
mod dashboard;
mod edge_guards;
mod end_to_end;
mod failover;
mod faults;
mod idempotency;
mod ingest_edge;
mod log_hygiene;
mod nats;
mod otlp;
mod packaging;
mod plugin_devkit;
mod plugin_dist;
mod reload;
mod resilience;
mod sandbox;
mod shutdown;
mod signature_schemes;
mod stripe_sdk;
mod walkthrough;
