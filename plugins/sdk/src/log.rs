//! Logging under the consumer's span in the router's logs.
//!
//! Functions for plain messages, and `trace!`/`debug!`/`info!`/`warn!`/`error!`
//! macros (exported at the crate root) that take `format!` arguments:
//!
//! ```ignore
//! switchyard_plugin::info!("contact {id} updated");
//! switchyard_plugin::log::warn("no order id");
//! ```
//!
//! Never log payloads or personal data (emails, names, addresses): log ids.
//! The host decides which levels are kept; there is no level check here
//! because a guest-side filter would need configuration the host already has.

use crate::bindings::switchyard::plugin::host::{self, Level};

pub fn trace(message: &str) {
    host::log(Level::Trace, message);
}

pub fn debug(message: &str) {
    host::log(Level::Debug, message);
}

pub fn info(message: &str) {
    host::log(Level::Info, message);
}

pub fn warn(message: &str) {
    host::log(Level::Warn, message);
}

pub fn error(message: &str) {
    host::log(Level::Error, message);
}

/// `trace!("fmt", args...)`: log at trace level.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)*) => { $crate::log::trace(&::std::format!($($arg)*)) };
}

/// `debug!("fmt", args...)`: log at debug level.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::debug(&::std::format!($($arg)*)) };
}

/// `info!("fmt", args...)`: log at info level.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::info(&::std::format!($($arg)*)) };
}

/// `warn!("fmt", args...)`: log at warn level.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::warn(&::std::format!($($arg)*)) };
}

/// `error!("fmt", args...)`: log at error level.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::error(&::std::format!($($arg)*)) };
}
