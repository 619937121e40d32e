//! SDK for Switchyard consumer plugins.
//!
//! A consumer plugin is a WebAssembly component that the router calls once per
//! webhook event. Everything a plugin may do goes through the WIT contract in
//! `plugins/wit/consumer.wit`: outbound HTTP on *granted* connections, logging,
//! and reading non-secret settings. There is no WASI, no clock, no randomness
//! and no filesystem: a plugin is a pure function from an event to calls.
//!
//! ```ignore
//! use switchyard_plugin::prelude::*;
//!
//! struct Crm;
//!
//! impl Consumer for Crm {
//!     fn handle(event: Event) -> Result<(), Failure> {
//!         if event.event_type == "customer.deleted" {
//!             let id = event.object_str("id")?;
//!             send_empty("crm", "DELETE", &format!("/contacts/{id}"))?;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! switchyard_plugin::export!(Crm);
//! ```
//!
//! Build for `wasm32-unknown-unknown` as a `cdylib` (see `plugins/build.sh`);
//! the resulting core module carries its component type and the router turns
//! it into a component.
//!
//! What the returned [`Failure`] means to the router:
//! - [`Failure::Retry`]: transient, redelivered later on the consumer's schedule;
//! - [`Failure::Reject`]: permanent, the event goes to the dead-letter queue;
//! - [`Failure::Review`]: a human must look, the event is parked for review.
//!
//! Every handler must be idempotent: the router delivers at least once, and
//! retries re-run the whole handler (the host adds an `Idempotency-Key` per
//! event and call so downstreams can deduplicate).

use std::fmt;

pub use serde_json::{self, json, Value};

pub mod http;
pub mod log;

pub use http::{send, send_empty, send_json, send_raw, HttpError, Request, Response};

/// Generated bindings for the `consumer` world. Plugin authors never touch
/// these: the SDK types below wrap them, and [`export!`] wires them up.
#[doc(hidden)]
#[allow(clippy::too_many_arguments)] // generated ABI glue: one argument per flattened field
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "consumer",
        // The export macro is expanded in the plugin crate, so it has to be
        // public and must find the bindings through this crate's path.
        pub_export_macro: true,
        default_bindings_module: "switchyard_plugin::bindings",
        export_macro_name: "export_raw",
    });
}

/// Everything a typical plugin needs: `use switchyard_plugin::prelude::*;`.
pub mod prelude {
    pub use crate::http::{send, send_empty, send_json, Request, Response};
    pub use crate::{config, json, Consumer, Event, Failure, Value};
}

/// The one trait a plugin implements.
///
/// `handle` is an associated function rather than a method because the host
/// creates a fresh instance for every event: there is no state to carry
/// between calls, so there is no `self` to keep it in.
pub trait Consumer {
    /// Process one event. `Ok(())` acknowledges it for this consumer.
    fn handle(event: Event) -> Result<(), Failure>;
}

/// Export a [`Consumer`] implementation as the plugin's `handle` function.
/// Write it exactly once per plugin crate, with the name of your type:
///
/// ```ignore
/// switchyard_plugin::export!(MyPlugin);
/// ```
#[macro_export]
macro_rules! export {
    ($ty:ident) => {
        $crate::bindings::export_raw!($ty with_types_in $crate::bindings);
    };
}

// Bridge from the generated, WIT-shaped trait to the SDK's `Consumer`: every
// `Consumer` is a `Guest`. The generated `export_raw!` requires a `Guest`
// implementation, and this blanket impl is what lets plugin authors never see it.
impl<T: Consumer> bindings::Guest for T {
    fn handle(
        event: bindings::switchyard::plugin::types::Event,
    ) -> Result<(), bindings::switchyard::plugin::types::Failure> {
        let event = Event::from_wit(event).map_err(bindings::switchyard::plugin::types::Failure::from)?;
        T::handle(event).map_err(Into::into)
    }
}

/// One verified, durable webhook event, as delivered to this consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Provider event id (`evt_…` for Stripe). Unique per source; use it as
    /// the natural deduplication key downstream.
    pub id: String,
    /// Provider event type, e.g. `invoice.paid` (`type` is a Rust keyword).
    pub event_type: String,
    /// Name of the source in routes.toml (e.g. `stripe`).
    pub source: String,
    /// Provider creation time, unix seconds (0 when the provider gives none).
    pub created: i64,
    /// Stripe `livemode`; false for sources without the notion.
    pub livemode: bool,
    /// Connected account (Stripe Connect), when present.
    pub account: Option<String>,
    /// 1 on the first delivery to this consumer, 2 on the first retry, ...
    pub attempt: u32,
    /// The whole webhook body, parsed. Parsed eagerly: every real plugin looks
    /// at it, and a body that is not JSON is rejected before your code runs.
    pub payload: Value,
}

impl Event {
    fn from_wit(raw: bindings::switchyard::plugin::types::Event) -> Result<Event, Failure> {
        let payload = serde_json::from_str(&raw.payload).map_err(|e| {
            Failure::Reject(format!("event {}: payload is not valid JSON: {e}", raw.id))
        })?;
        Ok(Event {
            id: raw.id,
            event_type: raw.event_type,
            source: raw.source,
            created: raw.created,
            livemode: raw.livemode,
            account: raw.account,
            attempt: raw.attempt,
            payload,
        })
    }

    /// `data.object` of a Stripe event: the customer, invoice, charge, ... the
    /// event is about. `Value::Null` when absent, so indexing further is safe.
    pub fn data_object(&self) -> &Value {
        &self.payload["data"]["object"]
    }

    /// `data.object.<field>` as a string, or a [`Failure::Reject`] naming the
    /// event and field. Use it for fields without which the event is useless
    /// (ids): such an event will not get better by retrying.
    pub fn object_str(&self, field: &str) -> Result<&str, Failure> {
        self.data_object()[field].as_str().ok_or_else(|| {
            Failure::Reject(format!(
                "event {} ({}): data.object.{field} is missing or not a string",
                self.id, self.event_type
            ))
        })
    }
}

/// Why `handle` did not succeed; the router decides what happens next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Transient: redelivered later on the consumer's retry schedule.
    Retry(String),
    /// Permanent: the event goes to the consumer's dead-letter queue now.
    Reject(String),
    /// Needs a human: the event is parked in the consumer's review queue.
    Review(String),
}

impl Failure {
    /// The human-readable reason, whatever the kind.
    pub fn reason(&self) -> &str {
        match self {
            Failure::Retry(r) | Failure::Reject(r) | Failure::Review(r) => r,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Retry(r) => write!(f, "retry: {r}"),
            Failure::Reject(r) => write!(f, "reject: {r}"),
            Failure::Review(r) => write!(f, "review: {r}"),
        }
    }
}

impl std::error::Error for Failure {}

impl From<Failure> for bindings::switchyard::plugin::types::Failure {
    fn from(f: Failure) -> Self {
        use bindings::switchyard::plugin::types::Failure as Wit;
        match f {
            Failure::Retry(r) => Wit::Retry(r),
            Failure::Reject(r) => Wit::Reject(r),
            Failure::Review(r) => Wit::Review(r),
        }
    }
}

/// A non-secret setting from `[consumers.<name>.settings]` in routes.toml.
/// Secrets never reach plugins: credentials live on the host's connections.
pub fn config(key: &str) -> Option<String> {
    bindings::switchyard::plugin::host::config(key)
}
