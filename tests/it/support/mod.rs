//! What every integration test shares: the harness secret, paths to the repo
//! and its built plugins, waiting, unique names, free ports and a command's
//! success. The rest is one file a concern, all re-exported here
//! (`use crate::support::*`).

mod events;
mod http;
mod hub;
mod logs;
mod mock;
mod routes;

pub use events::*;
pub use http::*;
pub use hub::*;
pub use logs::*;
pub use mock::*;
pub use routes::*;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const SECRET: &str = "whsec_harness_secret_0123456789";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A plugin built from the current source by `plugins/build.sh`. Tests never
/// use the shipped `plugins/dist` copies, so they always test today's code.
pub fn plugin_path(name: &str) -> PathBuf {
    let path = repo_root()
        .join("plugins/target/wasm32-unknown-unknown/release")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "plugin `{}` is not built: run `plugins/build.sh` (or the README's test command) first",
        path.display()
    );
    path
}

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Waits for `check` to hold, polling, up to `within`. Panics with `what`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A unique suffix for ids, prefixes and names in one test run.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{:016x}", rand::random::<u64>())
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Asserts that a finished command succeeded, showing its stderr if not.
pub fn assert_success(output: &std::process::Output) {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
