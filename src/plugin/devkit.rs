//! The plugin author's loop: `switchyard plugin new | build | test`.
//!
//! `new` writes a crate from a template that depends on the SDK by path;
//! `build` compiles it for `wasm32-unknown-unknown` with whatever toolchain
//! the machine has (as `plugins/build.sh` does), turns the module into a
//! component in-process and type-checks it against the host's WIT; `test`
//! runs one event through the real host with each connection answered by a
//! local stand-in, and reports what the plugin did.
//!
//! A fifth of this file is the crate template `new` writes (manifest, code,
//! sample event, README): kept here whole, beside the code that fills it in.

use super::{CallOutcome, CallReport, PluginEvent, PluginHost};
use crate::config::Config;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WASM_TARGET: &str = "wasm32-unknown-unknown";

#[derive(Debug, thiserror::Error)]
pub enum DevkitError {
    #[error("`{path}`: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Usage(String),
    #[error("the build failed: {0}")]
    Build(String),
    #[error("the plugin does not load: {0}")]
    Load(String),
}

fn file_error(path: &Path, err: impl std::fmt::Display) -> DevkitError {
    DevkitError::File {
        path: path.to_owned(),
        message: err.to_string(),
    }
}

// ---------------------------------------------------------------- new

/// Writes a new plugin crate `<parent>/<name>` that depends on the SDK at
/// `sdk` (the `plugins/sdk` folder of a switchyard checkout). Returns its path.
pub fn scaffold(name: &str, parent: &Path, sdk: &Path) -> Result<PathBuf, DevkitError> {
    let valid = !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        return Err(DevkitError::Usage(format!(
            "`{name}` is not a crate name: use lowercase letters, digits, `-` and `_`, starting with a letter"
        )));
    }
    let sdk = std::path::absolute(sdk).map_err(|err| file_error(sdk, err))?;
    if !sdk.join("Cargo.toml").is_file() {
        return Err(DevkitError::Usage(format!(
            "no SDK at `{}`: pass --sdk <switchyard checkout>/plugins/sdk",
            sdk.display()
        )));
    }
    let dir = parent.join(name);
    if dir.exists() {
        return Err(file_error(&dir, "already exists"));
    }
    // Relative, so the crate and the checkout can move together, and the
    // manifest names no folder of the author's machine.
    let sdk_from_crate = relative_to(
        &sdk,
        &std::path::absolute(&dir).map_err(|err| file_error(&dir, err))?,
    );
    let files = [
        ("Cargo.toml", template_manifest(name, &sdk_from_crate)),
        (".cargo/config.toml", TEMPLATE_CARGO_CONFIG.to_owned()),
        ("src/lib.rs", TEMPLATE_LIB.replace("{name}", name)),
        (
            "events/customer.created.json",
            TEMPLATE_EVENT.trim_start().to_owned(),
        ),
        ("README.md", TEMPLATE_README.replace("{name}", name)),
        (".gitignore", "/target\n/Cargo.lock.bak\n".to_owned()),
    ];
    for (relative, text) in files {
        let path = dir.join(relative);
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder).map_err(|err| file_error(folder, err))?;
        }
        std::fs::write(&path, text).map_err(|err| file_error(&path, err))?;
    }
    // The SDK workspace's lock pins the versions its tests ran with (and
    // wit-bindgen must match the host); start the new crate from it.
    if let Some(lock) = sdk.parent().map(|p| p.join("Cargo.lock"))
        && lock.is_file()
    {
        let copy = dir.join("Cargo.lock");
        std::fs::copy(&lock, &copy).map_err(|err| file_error(&copy, err))?;
    }
    Ok(dir)
}

/// `path` as seen from the folder `base` (both absolute): `../../x/y`.
fn relative_to(path: &Path, base: &Path) -> PathBuf {
    let path: Vec<_> = path.components().collect();
    let base: Vec<_> = base.components().collect();
    let common = path.iter().zip(&base).take_while(|(a, b)| a == b).count();
    let mut relative = PathBuf::new();
    for _ in common..base.len() {
        relative.push("..");
    }
    for part in &path[common..] {
        relative.push(part);
    }
    relative
}

fn template_manifest(name: &str, sdk: &Path) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
# The build output is the .wasm module switchyard turns into a component.
crate-type = ["cdylib"]

[dependencies]
switchyard-plugin = {{ path = "{sdk}" }}

# Small modules instantiate faster: the router makes a fresh instance per event.
[profile.release]
opt-level = "s"
lto = true
panic = "abort"
codegen-units = 1
strip = "debuginfo"

# A crate of its own, even when it sits inside another workspace's folder.
[workspace]
"#,
        // `/` on every host: a manifest is portable.
        sdk = sdk.display().to_string().replace('\\', "/")
    )
}

const TEMPLATE_CARGO_CONFIG: &str = r#"# A 64 KiB stack instead of 1 MiB: a smaller linear memory makes the fresh
# instance the router creates per event cheaper.
[target.wasm32-unknown-unknown]
rustflags = ["-C", "link-arg=-zstack-size=65536"]
"#;

const TEMPLATE_LIB: &str = r#"//! {name}: a Switchyard consumer plugin.
//!
//! Build: `switchyard plugin build .`
//! Try:   `switchyard plugin test . --event events/customer.created.json --respond api=200`

use switchyard_plugin::prelude::*;

/// The connection this plugin calls. Grant it in routes.toml:
/// `[consumers.{name}] connections = ["api"]`; the host adds its base URL
/// and credentials, so no secret ever reaches this code.
const CONNECTION: &str = "api";

struct Plugin;

impl Consumer for Plugin {
    fn handle(event: Event) -> Result<(), Failure> {
        match event.event_type.as_str() {
            "customer.created" | "customer.updated" => upsert_customer(&event),
            // Events this plugin does not care about: acknowledge them.
            _ => Ok(()),
        }
    }
}

fn upsert_customer(event: &Event) -> Result<(), Failure> {
    let customer = event.data_object();
    // A customer without an id cannot be synced, however often we retry.
    let id = event.object_str("id")?;
    let body = json!({
        "email": customer["email"],
        "name": customer["name"],
    });
    // PUT keyed by the Stripe id: applying it twice changes nothing. A 5xx,
    // 429 or timeout comes back as Failure::Retry and the host redelivers.
    send_json(CONNECTION, "PUT", &format!("/customers/{id}"), &body)?;
    switchyard_plugin::info!("customer {id} synced");
    Ok(())
}

switchyard_plugin::export!(Plugin);
"#;

const TEMPLATE_EVENT: &str = r#"
{
  "id": "evt_test_customer_created",
  "object": "event",
  "api_version": "2024-06-20",
  "created": 1732838400,
  "livemode": false,
  "type": "customer.created",
  "data": {
    "object": {
      "id": "cus_test_1",
      "object": "customer",
      "email": "ada@example.com",
      "name": "Ada Lovelace"
    }
  }
}
"#;

const TEMPLATE_README: &str = r#"# {name}

A Switchyard consumer plugin. See the plugin guide (`plugins/README.md` in the
switchyard repository) for the contract, the limits and the SDK.

```sh
switchyard plugin build .
switchyard plugin test . --event events/customer.created.json --respond api=200
switchyard plugin test . --event events/customer.created.json --respond api=503
```

Then in routes.toml:

```toml
[connections.api]
base_url = "https://api.example.com"
auth = { bearer = "env:API_TOKEN" }

[consumers.{name}]
plugin = "path/to/{name}/{name}.wasm"
connections = ["api"]

[[routes]]
source = "stripe"
events = ["customer.*"]
consumers = ["{name}"]
```
"#;

// ---------------------------------------------------------------- build

/// The crate's package name, from its Cargo.toml.
fn package_name(dir: &Path) -> Result<String, DevkitError> {
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).map_err(|err| file_error(&manifest, err))?;
    let value: toml::Table = toml::from_str(&text).map_err(|err| file_error(&manifest, err))?;
    value
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_owned)
        .ok_or_else(|| file_error(&manifest, "has no `package.name`"))
}

/// Where `build` writes the component of the crate in `dir`.
pub fn component_path(dir: &Path) -> Result<PathBuf, DevkitError> {
    Ok(dir.join(format!("{}.wasm", package_name(dir)?)))
}

/// Builds the plugin crate in `dir` (release, `wasm32-unknown-unknown`),
/// writes `<dir>/<name>.wasm` as a component and checks that the host can
/// load it. `target_dir` defaults to `<dir>/target`.
pub fn build(dir: &Path, target_dir: Option<&Path>) -> Result<PathBuf, DevkitError> {
    let name = package_name(dir)?;
    let target_dir = match target_dir {
        Some(path) => std::path::absolute(path).map_err(|err| file_error(path, err))?,
        None => dir.join("target"),
    };
    let mut cargo = cargo_for_wasm()?;
    cargo
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", &target_dir)
        // Flags meant for a host build would override the wasm stack size.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WRAPPER");
    let status = cargo
        .status()
        .map_err(|err| DevkitError::Build(format!("cannot run cargo: {err}")))?;
    if !status.success() {
        return Err(DevkitError::Build(format!("cargo exited with {status}")));
    }
    let module = target_dir
        .join(WASM_TARGET)
        .join("release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    let bytes = std::fs::read(&module).map_err(|err| file_error(&module, err))?;
    let component =
        super::componentize(&bytes).map_err(|err| DevkitError::Load(err.to_string()))?;
    let out = dir.join(format!("{name}.wasm"));
    std::fs::write(&out, &component).map_err(|err| file_error(&out, err))?;
    // Type-check against the host's WIT now rather than at deploy time.
    let host = PluginHost::new(1, 32 << 20).map_err(|err| DevkitError::Load(err.to_string()))?;
    let config = test_config(&out, &[], &BTreeMap::new())?;
    host.load("test", &config.consumers["test"], &BTreeMap::new())
        .map_err(|err| DevkitError::Load(err.to_string()))?;
    Ok(out)
}

/// cargo for the wasm target: rustup's when it has the target installed,
/// otherwise Debian's wasm-capable toolchain building std from source.
fn cargo_for_wasm() -> Result<Command, DevkitError> {
    let rustup_has_target = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .is_ok_and(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|line| line.trim() == WASM_TARGET)
        });
    if rustup_has_target {
        let mut cargo = Command::new("cargo");
        cargo.args(["build", "--release", "--target", WASM_TARGET]);
        return Ok(cargo);
    }
    let linker = Path::new("/usr/lib/llvm-19/bin/wasm-ld");
    let debian = Path::new("/usr/bin/cargo").is_file()
        && Path::new("/usr/bin/rustc").is_file()
        && linker.is_file()
        && Path::new("/usr/lib/rustlib/src/rust/library").is_dir();
    if !debian {
        return Err(DevkitError::Build(format!(
            "no wasm toolchain: run `rustup target add {WASM_TARGET}` (or install Debian's \
             rustc-web cargo-web rust-web-src lld-19)"
        )));
    }
    let mut cargo = Command::new("/usr/bin/cargo");
    cargo
        .args(["build", "--release", "--target", WASM_TARGET])
        .arg("-Zbuild-std=std,panic_abort")
        .env("RUSTC", "/usr/bin/rustc")
        // Lets this stable compiler accept -Zbuild-std: it has no prebuilt
        // std for the wasm target.
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", linker);
    Ok(cargo)
}

// ---------------------------------------------------------------- test

/// How a stand-in connection answers: `<connection>=<status>[:<body file>]`.
#[derive(Debug, Clone)]
pub struct Respond {
    pub connection: String,
    pub status: u16,
    pub body: Vec<u8>,
}

impl std::str::FromStr for Respond {
    type Err = String;

    fn from_str(text: &str) -> Result<Respond, String> {
        let (connection, answer) = text
            .split_once('=')
            .ok_or_else(|| format!("`{text}`: expected <connection>=<status>[:<body file>]"))?;
        let (status, body_file) = match answer.split_once(':') {
            Some((status, file)) => (status, Some(file)),
            None => (answer, None),
        };
        let status: u16 = status
            .parse()
            .ok()
            .filter(|s| (100..=599).contains(s))
            .ok_or_else(|| format!("`{text}`: `{status}` is not an HTTP status"))?;
        let body = match body_file {
            None => Vec::new(),
            Some(file) => std::fs::read(file).map_err(|err| format!("`{file}`: {err}"))?,
        };
        Ok(Respond {
            connection: connection.to_owned(),
            status,
            body,
        })
    }
}

/// One request a stand-in connection received.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecordedRequest {
    pub connection: String,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub status: u16,
}

/// What `plugin test` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TestRun {
    /// `done`, `retry`, `reject` or `review`.
    pub outcome: &'static str,
    /// The guest's (or the host's) reason when not done.
    pub reason: Option<String>,
    pub requests: Vec<RecordedRequest>,
    pub wall_us: u64,
    /// CPU time of the thread that ran the call (guest code and host calls).
    pub cpu_us: u64,
    pub peak_memory_bytes: u64,
    pub memory_limit_bytes: u64,
}

impl TestRun {
    pub fn done(&self) -> bool {
        self.outcome == "done"
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        match &self.reason {
            None => {
                let _ = writeln!(out, "outcome: {}", self.outcome);
            }
            Some(reason) => {
                let _ = writeln!(out, "outcome: {}: {reason}", self.outcome);
            }
        }
        let _ = writeln!(out, "outbound requests: {}", self.requests.len());
        for (n, request) in self.requests.iter().enumerate() {
            let _ = writeln!(
                out,
                "  {}. {} {} {} -> {}",
                n + 1,
                request.method,
                request.connection,
                request.path,
                request.status
            );
            for (name, value) in &request.headers {
                let _ = writeln!(out, "     {name}: {value}");
            }
            if !request.body.is_empty() {
                let _ = writeln!(out, "     body: {}", request.body);
            }
        }
        let _ = writeln!(
            out,
            "time: wall {:.3} ms, cpu {:.3} ms",
            self.wall_us as f64 / 1000.0,
            self.cpu_us as f64 / 1000.0
        );
        let _ = writeln!(
            out,
            "memory: peak {:.1} KiB of {} KiB",
            self.peak_memory_bytes as f64 / 1024.0,
            self.memory_limit_bytes / 1024
        );
        out
    }
}

/// Headers worth showing an author: what the plugin set and what the host
/// adds (never a credential: stand-ins have none).
const SHOWN_HEADERS: &[&str] = &["content-type", "idempotency-key", "accept"];

/// Runs `event_file` through the plugin at `plugin` (a `.wasm` file, or a
/// crate folder after `plugin build`), each connection in `responds`
/// answered by a local stand-in. Other connections are not granted.
pub async fn run_test(
    plugin: &Path,
    event_file: &Path,
    responds: &[Respond],
    settings: &BTreeMap<String, String>,
) -> Result<TestRun, DevkitError> {
    let plugin = if plugin.is_dir() {
        let built = component_path(plugin)?;
        if !built.is_file() {
            return Err(DevkitError::Usage(format!(
                "`{}` is not built: run `switchyard plugin build {}` first",
                built.display(),
                plugin.display()
            )));
        }
        built
    } else {
        plugin.to_owned()
    };
    let event = read_event(event_file)?;
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let mut stand_ins = Vec::new();
    for respond in responds {
        let addr = stand_in(respond.clone(), Arc::clone(&recorded)).await?;
        stand_ins.push((respond.connection.clone(), addr));
    }
    let config = test_config(&plugin, &stand_ins, settings)?;
    let consumer = &config.consumers["test"];
    let host = PluginHost::new(1, consumer.limits.memory)
        .map_err(|err| DevkitError::Load(err.to_string()))?;
    let connections = super::build_connections(&config.connections).map_err(|errors| {
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        DevkitError::Load(messages.join("; "))
    })?;
    let loaded = host
        .load("test", consumer, &connections)
        .map_err(|err| DevkitError::Load(err.to_string()))?;
    let memory_limit = consumer.limits.memory;
    let effect_key = format!("{}:{}", event.source, event.id);
    // On the plugin threads, as in the hub: its guest time is the call's CPU.
    let report = Arc::new(loaded).call(event, &effect_key, None).await;
    let cpu = report.guest_time;
    let requests = recorded.lock().expect("recorder lock").clone();
    Ok(summarize(report, requests, cpu, memory_limit))
}

fn summarize(
    report: CallReport,
    requests: Vec<RecordedRequest>,
    cpu: Duration,
    memory_limit: u64,
) -> TestRun {
    let (outcome, reason) = match report.outcome {
        CallOutcome::Done => ("done", None),
        CallOutcome::Retry { reason, .. } => ("retry", Some(reason)),
        CallOutcome::Reject(reason) => ("reject", Some(reason)),
        CallOutcome::Review(reason) => ("review", Some(reason)),
    };
    TestRun {
        outcome,
        reason,
        requests,
        wall_us: report.wall.as_micros() as u64,
        cpu_us: cpu.as_micros() as u64,
        peak_memory_bytes: report.peak_memory,
        memory_limit_bytes: memory_limit,
    }
}

/// A one-consumer config around the plugin, through the real validator, so
/// limits and connections get exactly the defaults a deployment gets.
fn test_config(
    plugin: &Path,
    stand_ins: &[(String, SocketAddr)],
    settings: &BTreeMap<String, String>,
) -> Result<Config, DevkitError> {
    let plugin = std::path::absolute(plugin).map_err(|err| file_error(plugin, err))?;
    let quote = |text: &str| toml::Value::String(text.to_owned()).to_string();
    let mut text = String::from(
        "[bus]\npath = \"unused\"\n[idempotency]\npath = \"unused\"\n\
         [sources.stripe]\nsecrets = [\"env:UNUSED\"]\n",
    );
    for (name, addr) in stand_ins {
        let _ = writeln!(
            text,
            "[connections.{}]\nbase_url = \"http://{addr}\"\ntimeout = \"10s\"",
            quote(name)
        );
    }
    let granted: Vec<String> = stand_ins.iter().map(|(name, _)| quote(name)).collect();
    let _ = writeln!(
        text,
        "[consumers.test]\nplugin = {}\nconnections = [{}]",
        quote(&plugin.display().to_string()),
        granted.join(", ")
    );
    if !settings.is_empty() {
        let _ = writeln!(text, "[consumers.test.settings]");
        for (key, value) in settings {
            let _ = writeln!(text, "{} = {}", quote(key), quote(value));
        }
    }
    text.push_str("[[routes]]\nsource = \"stripe\"\nevents = [\"*\"]\nconsumers = [\"test\"]\n");
    Config::parse(&text, Path::new(".")).map_err(|err| DevkitError::Usage(format!("{err}")))
}

/// The plugin's view of a webhook body, as ingest would build it.
fn read_event(path: &Path) -> Result<PluginEvent, DevkitError> {
    let payload = std::fs::read_to_string(path).map_err(|err| file_error(path, err))?;
    let value: serde_json::Value =
        serde_json::from_str(&payload).map_err(|err| file_error(path, err))?;
    let text = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    Ok(PluginEvent {
        id: text("id").ok_or_else(|| file_error(path, "has no string `id`"))?,
        event_type: text("type").ok_or_else(|| file_error(path, "has no string `type`"))?,
        source: "stripe".to_owned(),
        created: value.get("created").and_then(|v| v.as_i64()).unwrap_or(0),
        livemode: value
            .get("livemode")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
        account: text("account"),
        attempt: 1,
        payload,
    })
}

/// A local HTTP server standing in for one connection: records each request
/// and gives the scripted answer.
async fn stand_in(
    respond: Respond,
    recorded: Arc<Mutex<Vec<RecordedRequest>>>,
) -> Result<SocketAddr, DevkitError> {
    use warp::Filter as _;
    let respond = Arc::new(respond);
    let route = warp::method()
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .and(warp::body::bytes())
        .map(
            move |method: warp::http::Method,
                  path: warp::path::FullPath,
                  headers: warp::http::HeaderMap,
                  body: bytes::Bytes| {
                let headers = headers
                    .iter()
                    .filter(|(name, _)| SHOWN_HEADERS.contains(&name.as_str()))
                    .map(|(name, value)| {
                        (
                            name.as_str().to_owned(),
                            value.to_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect();
                recorded
                    .lock()
                    .expect("recorder lock")
                    .push(RecordedRequest {
                        connection: respond.connection.clone(),
                        method: method.to_string(),
                        path: path.as_str().to_owned(),
                        headers,
                        body: String::from_utf8_lossy(&body).into_owned(),
                        status: respond.status,
                    });
                warp::http::Response::builder()
                    .status(respond.status)
                    .body(respond.body.clone())
                    .expect("a response from a valid status")
            },
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|err| DevkitError::Usage(format!("cannot open a stand-in listener: {err}")))?;
    let addr = listener
        .local_addr()
        .map_err(|err| DevkitError::Usage(err.to_string()))?;
    tokio::spawn(warp::serve(route).incoming(listener).run());
    Ok(addr)
}
