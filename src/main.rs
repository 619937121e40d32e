//! The `switchyard` command: a thin CLI over the library.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use switchyard::config::Config;
use switchyard::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(name = "switchyard", version, about = "A router for payment webhooks")]
struct Cli {
    /// Path of routes.toml.
    #[arg(
        long,
        short,
        global = true,
        env = "SWITCHYARD_CONFIG",
        default_value = "routes.toml"
    )]
    config: PathBuf,
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub: ingest, bus and every consumer.
    Serve {
        /// Start even though an embedded store that held data is missing or
        /// empty (its marker says so): begins a new, empty store. Without it
        /// such a start is refused, so acknowledged events never vanish
        /// silently.
        #[arg(long)]
        accept_empty_store: bool,
    },
    /// Validate routes.toml, resolve secrets and load every plugin; print every problem.
    Check,
    /// Status of every consumer (from the admin API).
    Consumers {
        #[command(flatten)]
        admin: AdminArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Active alerts of the anomaly watch (from the admin API).
    Alerts {
        #[command(flatten)]
        admin: AdminArgs,
        /// Also list recently cleared alerts.
        #[arg(long)]
        recent: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop a consumer taking new events; they wait in the bus.
    Pause {
        consumer: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Re-read routes.toml and the plugins in the running hub (like SIGHUP);
    /// on any problem the running config stays and every problem is printed.
    Reload {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Let a paused consumer take events again.
    Resume {
        consumer: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Deliver events from the bus history to a consumer again (e.g. one
    /// added later). Idempotency keys still apply. Dry run unless --yes.
    Replay {
        consumer: String,
        #[command(flatten)]
        admin: AdminArgs,
        /// Source in routes.toml.
        #[arg(long, default_value = "stripe")]
        source: String,
        /// Event types (`*`, `prefix.*` or exact).
        #[arg(long = "type", default_value = "*")]
        event_type: String,
        /// Received at or after this time (RFC 3339, e.g. 2026-11-29T10:00:00Z).
        #[arg(long)]
        since: String,
        /// Received before this time (RFC 3339); now when absent.
        #[arg(long)]
        until: Option<String>,
        /// Deliver again even where the consumer already applied the event
        /// (new idempotency keys): for a downstream that lost data.
        #[arg(long)]
        force: bool,
        /// Also event types the consumer's routes do not send it (by
        /// default only those are replayed).
        #[arg(long)]
        all_types: bool,
        /// Events queued per batch by the background job.
        #[arg(long)]
        batch_size: Option<usize>,
        #[arg(long)]
        yes: bool,
    },
    /// The dead-letter queue (or, with --review, the review queue).
    Dlq {
        #[command(subcommand)]
        action: QueueAction,
    },
    /// The review queue: `switchyard dlq … --review`.
    Review {
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Background replay jobs.
    Jobs {
        #[command(subcommand)]
        action: JobAction,
    },
    /// Write, build and try consumer plugins.
    Plugin {
        #[command(subcommand)]
        action: PluginAction,
    },
    /// routes.toml tooling: its JSON Schema and its reference.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Exit 0 when the hub answers `GET /readyz` (a container healthcheck).
    Health {
        /// Base URL of the hub instead of `http://<server.listen>`.
        #[arg(long)]
        url: Option<String>,
    },
    /// Sign an event JSON file like Stripe does; print curl-ready headers, or send it.
    Sign {
        /// The event JSON file (the exact bytes are signed).
        event: PathBuf,
        /// Source in routes.toml whose first secret signs (default: the only source).
        #[arg(long)]
        source: Option<String>,
        /// Secret reference to sign with instead (`env:NAME` or `file:PATH`).
        #[arg(long)]
        secret: Option<String>,
        /// Unix timestamp to sign at (default: now).
        #[arg(long)]
        timestamp: Option<i64>,
        /// Send the signed request to the hub (its `server.listen`) and print the answer.
        #[arg(long)]
        send: bool,
        /// Base URL to send to instead of `http://<server.listen>`.
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Subcommand)]
enum PluginAction {
    /// Write a new plugin crate from the template.
    New {
        /// Crate name (lowercase, digits, `-`, `_`).
        name: String,
        /// Folder to create the crate in.
        #[arg(long, default_value = ".")]
        path: PathBuf,
        /// The SDK (`plugins/sdk` of a switchyard checkout); found in this
        /// folder or its parents when not given.
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Build a plugin crate for the wasm target and write `<dir>/<name>.wasm`,
    /// a component checked against the host's contract.
    Build {
        dir: PathBuf,
        /// Cargo target dir (default `<dir>/target`).
        #[arg(long)]
        target_dir: Option<PathBuf>,
    },
    /// Run one event through a plugin with stand-in connections; print the
    /// outcome, every outbound request, time and memory. Exit 1 unless done.
    Test {
        /// A `.wasm` plugin, or a crate folder after `plugin build`.
        plugin: PathBuf,
        /// The event JSON file (a webhook body).
        #[arg(long)]
        event: PathBuf,
        /// `<connection>=<status>[:<body file>]`: grant the connection and
        /// answer every call on it so. Repeatable.
        #[arg(long)]
        respond: Vec<switchyard::plugin::devkit::Respond>,
        /// `<key>=<value>`: a setting the plugin reads with `config(key)`. Repeatable.
        #[arg(long, value_parser = parse_setting)]
        setting: Vec<(String, String)>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Print the JSON Schema of routes.toml (for editor completion).
    Schema,
    /// Print the Markdown reference of every routes.toml key (docs/CONFIG.md).
    Reference,
}

fn parse_setting(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("`{text}`: expected <key>=<value>"))
}

/// Where the admin API is and how to authenticate.
#[derive(clap::Args, Clone)]
struct AdminArgs {
    /// Base URL of the admin listener. Default: the `[admin] listen` of the
    /// config (`-c`), else `http://127.0.0.1:8081`.
    #[arg(long, env = "SWITCHYARD_ADMIN_URL")]
    admin_url: Option<String>,
    /// Bearer token of the admin API. Default: the `[admin] token` of the
    /// config (`-c`).
    #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

/// The config the command was given, and whether it was given on purpose
/// (`-c` or `SWITCHYARD_CONFIG`) rather than the default `routes.toml`.
static CONFIG_GIVEN: std::sync::OnceLock<(PathBuf, bool)> = std::sync::OnceLock::new();

/// The address a client reaches a listener bound to `listen` at.
fn reachable(listen: std::net::SocketAddr) -> std::net::SocketAddr {
    let ip = match listen.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    std::net::SocketAddr::new(ip, listen.port())
}

impl AdminArgs {
    /// The admin API this command talks to, and its token: the flags (or
    /// their variables) first, then the config's `[admin]`, so `-c
    /// other/routes.toml` reaches the hub that config runs. A URL and an
    /// explicit config that name different hubs are an error.
    fn target(&self) -> Result<(String, String)> {
        let (path, explicit) = CONFIG_GIVEN
            .get()
            .cloned()
            .unwrap_or_else(|| (PathBuf::from("routes.toml"), false));
        let config = Config::load(&path).ok().and_then(|config| config.admin);
        if explicit && config.is_none() && self.admin_url.is_none() {
            bail!(
                "`{}` has no usable [admin] table (or does not load): pass --admin-url",
                path.display()
            );
        }
        let url = match (&self.admin_url, &config) {
            (Some(url), Some(admin)) if explicit => {
                let named = reqwest::Url::parse(url)
                    .ok()
                    .and_then(|url| url.socket_addrs(|| None).ok())
                    .unwrap_or_default();
                let listen = reachable(admin.listen);
                if !named.iter().any(|addr| {
                    *addr == listen
                        || (addr.port() == listen.port() && admin.listen.ip().is_unspecified())
                }) {
                    bail!(
                        "--admin-url `{url}` and `{}` ([admin] listen = {}) name different hubs; drop one",
                        path.display(),
                        admin.listen
                    );
                }
                url.clone()
            }
            (Some(url), _) => url.clone(),
            (None, Some(admin)) => format!("http://{}", reachable(admin.listen)),
            (None, None) => "http://127.0.0.1:8081".to_owned(),
        };
        let token = match (&self.admin_token, &config) {
            (Some(token), _) => token.clone(),
            (None, Some(admin)) => admin
                .token
                .resolve()
                .map_err(|err| anyhow::anyhow!("admin token of `{}`: {err}", path.display()))?
                .expose()
                .to_owned(),
            (None, None) => {
                bail!("no admin token: pass --admin-token or set SWITCHYARD_ADMIN_TOKEN")
            }
        };
        Ok((url, token))
    }
}

#[derive(clap::Args, Clone)]
struct QueueArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// The review queue instead of the dead-letter queue.
    #[arg(long)]
    review: bool,
    /// Only this consumer.
    #[arg(long)]
    consumer: Option<String>,
    /// Only these event types (`*`, `prefix.*` or exact).
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Only entries whose failure reason contains this text.
    #[arg(long)]
    error: Option<String>,
    /// Only these entry ids (comma-separated).
    #[arg(long, value_delimiter = ',')]
    ids: Option<Vec<u64>>,
}

#[derive(Subcommand)]
enum QueueAction {
    /// List parked events (no payloads).
    List {
        #[command(flatten)]
        queue: QueueArgs,
        #[arg(long)]
        json: bool,
    },
    /// Put matching events back into their consumers' queues, in the
    /// background with a progress bar. Dry run unless --yes.
    Replay {
        #[command(flatten)]
        queue: QueueArgs,
        /// Entries moved per batch.
        #[arg(long)]
        batch_size: Option<usize>,
        #[arg(long)]
        yes: bool,
    },
    /// One parked event: envelope, attempts, last error, and the payload.
    Show {
        /// The entry id (as listed).
        id: u64,
        #[command(flatten)]
        queue: QueueArgs,
    },
    /// Delete matching events for good. Dry run unless --yes.
    Discard {
        #[command(flatten)]
        queue: QueueArgs,
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum JobAction {
    /// Every job the hub remembers, with its progress.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Stop a job after its current batch.
    Cancel {
        id: u64,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Like any Unix tool, a command whose output is cut short (`| head`) just
/// stops (exit 141, as if by SIGPIPE) instead of reporting a panic: Rust
/// ignores SIGPIPE, so `println!` meets the broken pipe as an error.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    use clap::parser::ValueSource;
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    let explicit = matches!(
        matches.value_source("config"),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    );
    let _ = CONFIG_GIVEN.set((cli.config.clone(), explicit));
    quiet_on_broken_pipe();
    telemetry::init(cli.log_format);
    let runtime = tokio::runtime::Runtime::new().expect("start tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve { accept_empty_store } => serve(&cli.config, accept_empty_store).await,
        Command::Check => check(&cli.config).await,
        Command::Consumers { admin, json } => consumers(&admin, json).await,
        Command::Alerts {
            admin,
            recent,
            json,
        } => alerts(&admin, recent, json).await,
        Command::Pause { consumer, admin } => set_paused(&admin, &consumer, true).await,
        Command::Resume { consumer, admin } => set_paused(&admin, &consumer, false).await,
        Command::Dlq { action } => queue_action(action).await,
        Command::Review { mut action } => {
            match &mut action {
                QueueAction::List { queue, .. }
                | QueueAction::Replay { queue, .. }
                | QueueAction::Show { queue, .. }
                | QueueAction::Discard { queue, .. } => queue.review = true,
            }
            queue_action(action).await
        }
        Command::Jobs { action } => match action {
            JobAction::List { admin } => {
                let jobs: Vec<switchyard::admin::JobStatus> = serde_json::from_value(
                    admin_call(&admin, reqwest::Method::GET, "/v1/jobs", None).await?,
                )?;
                println!(
                    "{:>4} {:<20} {:<10} {:>9} {:>9} {:>9}",
                    "ID", "KIND", "STATE", "TOTAL", "PROCESSED", "QUEUED"
                );
                for job in jobs {
                    println!(
                        "{:>4} {:<20} {:<10} {:>9} {:>9} {:>9}",
                        job.id,
                        format!("{:?}", job.kind),
                        format!("{:?}", job.state),
                        job.total,
                        job.processed,
                        job.queued
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            JobAction::Cancel { id, admin } => {
                let path = format!("/v1/jobs/{id}/cancel");
                admin_call(&admin, reqwest::Method::POST, &path, None).await?;
                println!("job {id}: cancel requested; it stops after its current batch");
                Ok(ExitCode::SUCCESS)
            }
        },
        Command::Reload { admin } => {
            let report = admin_call(&admin, reqwest::Method::POST, "/v1/reload", None).await?;
            let list = |key: &str| {
                let names: Vec<&str> = report[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n.as_str())
                    .collect();
                if names.is_empty() {
                    "-".to_owned()
                } else {
                    names.join(", ")
                }
            };
            println!(
                "reloaded: consumers {}; added {}; removed {}",
                list("consumers"),
                list("added"),
                list("removed")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay {
            consumer,
            admin,
            source,
            event_type,
            since,
            until,
            force,
            all_types,
            batch_size,
            yes,
        } => {
            if all_types {
                eprintln!(
                    "warning: --all-types replays events of types `{consumer}`'s routes do not send it; its plugin will see them"
                );
            }
            let millis = |text: &str| -> Result<u64> {
                let at = humantime::parse_rfc3339_weak(text)
                    .with_context(|| format!("`{text}` is not a time like 2026-11-29T10:00:00Z"))?;
                Ok(at.duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64)
            };
            let body = serde_json::json!({
                "source": source,
                "event_type": event_type,
                "since_ms": millis(&since)?,
                "until_ms": until.as_deref().map(millis).transpose()?,
                "dry_run": !yes,
                "force": force,
                "all_types": all_types,
                "batch_size": batch_size,
            });
            let path = format!("/v1/consumers/{consumer}/replay");
            let outcome: switchyard::admin::HistoryOutcome = serde_json::from_value(
                admin_call(&admin, reqwest::Method::POST, &path, Some(body)).await?,
            )?;
            match outcome.job {
                Some(job) => follow_job(&admin, job).await,
                None => {
                    println!(
                        "dry run: {} events would be queued for {consumer}; add --yes to do it",
                        outcome.matched
                    );
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        Command::Plugin { action } => plugin_action(action).await,
        Command::Config { action } => {
            match action {
                ConfigAction::Schema => println!(
                    "{}",
                    serde_json::to_string_pretty(&switchyard::config::reference::json_schema())?
                ),
                ConfigAction::Reference => print!("{}", switchyard::config::reference::markdown()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Health { url } => health(&cli.config, url).await,
        Command::Sign {
            event,
            source,
            secret,
            timestamp,
            send,
            url,
        } => sign(&cli.config, &event, source, secret, timestamp, send, url).await,
    }
}

async fn serve(path: &std::path::Path, accept_empty_store: bool) -> Result<ExitCode> {
    let config = Config::load(path)?;
    let options = switchyard::hub::StartOptions {
        config_path: Some(path.to_owned()),
        empty_store: if accept_empty_store {
            switchyard::durable::EmptyStore::Accept
        } else {
            switchyard::durable::EmptyStore::Refuse
        },
        ..Default::default()
    };
    let hub = match switchyard::hub::start(config, options).await {
        Ok(hub) => hub,
        Err(errors) => {
            for err in &errors {
                eprintln!("error: {err}");
            }
            bail!("switchyard did not start ({} problem(s))", errors.len());
        }
    };
    // SIGHUP reloads routes.toml and the plugins; the outcome is logged.
    let control = hub.control();
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("install SIGHUP handler")?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading");
            let _ = control.reload().await;
        }
    });
    hub.run_until(shutdown_signal()).await;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn plugin_action(action: PluginAction) -> Result<ExitCode> {
    use switchyard::plugin::devkit;
    match action {
        PluginAction::New { name, path, sdk } => {
            let sdk = match sdk {
                Some(sdk) => sdk,
                None => find_sdk(&path).context(
                    "no switchyard SDK (`plugins/sdk`) in this folder or its parents: pass --sdk",
                )?,
            };
            let dir = devkit::scaffold(&name, &path, &sdk)?;
            println!("created {}", dir.display());
            println!("next: switchyard plugin build {}", dir.display());
            println!(
                "      switchyard plugin test {0} --event {0}/events/customer.created.json --respond api=200",
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        PluginAction::Build { dir, target_dir } => {
            let out = devkit::build(&dir, target_dir.as_deref())?;
            let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
            println!(
                "built {} ({} KiB), loads in this host",
                out.display(),
                size / 1024
            );
            Ok(ExitCode::SUCCESS)
        }
        PluginAction::Test {
            plugin,
            event,
            respond,
            setting,
            json,
        } => {
            let settings = setting.into_iter().collect();
            let run = devkit::run_test(&plugin, &event, &respond, &settings).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&run)?);
            } else {
                print!("{}", run.render());
            }
            Ok(if run.done() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// `plugins/sdk` in `start` or one of its parents (or the current folder's).
fn find_sdk(start: &std::path::Path) -> Option<PathBuf> {
    let start = std::path::absolute(start).ok()?;
    let cwd = std::env::current_dir().ok()?;
    [start, cwd].into_iter().find_map(|from| {
        from.ancestors()
            .map(|dir| dir.join("plugins/sdk"))
            .find(|sdk| sdk.join("Cargo.toml").is_file())
    })
}

async fn health(config_path: &std::path::Path, url: Option<String>) -> Result<ExitCode> {
    let base = match url {
        Some(url) => url,
        None => {
            let config = Config::load(config_path)?;
            let mut listen = config.server.listen;
            if listen.ip().is_unspecified() {
                listen.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{listen}")
        }
    };
    let answer = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(3))
        .build()?
        .get(format!("{}/readyz", base.trim_end_matches('/')))
        .send()
        .await;
    match answer {
        Ok(response) if response.status().is_success() => {
            println!("ready");
            Ok(ExitCode::SUCCESS)
        }
        Ok(response) => {
            println!("not ready: {}", response.status());
            Ok(ExitCode::FAILURE)
        }
        Err(err) => {
            println!("not ready: {err}");
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn check(path: &std::path::Path) -> Result<ExitCode> {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{err}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let problems = switchyard::hub::check(&config).await;
    if problems.is_empty() {
        println!(
            "{}: ok ({} source(s), {} consumer(s), {} route(s))",
            path.display(),
            config.sources.len(),
            config.consumers.len(),
            config.routes.len()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{} has {} problem(s):", path.display(), problems.len());
        for problem in &problems {
            eprintln!("  - {problem}");
        }
        Ok(ExitCode::FAILURE)
    }
}

async fn sign(
    config_path: &std::path::Path,
    event: &std::path::Path,
    source: Option<String>,
    secret: Option<String>,
    timestamp: Option<i64>,
    send: bool,
    url: Option<String>,
) -> Result<ExitCode> {
    let body =
        std::fs::read(event).with_context(|| format!("cannot read `{}`", event.display()))?;
    let config = Config::load(config_path).ok();
    let (path, listen, secret_ref) = match (&config, &secret) {
        (_, Some(text)) => {
            let reference = switchyard::config::SecretRef::parse(text, std::path::Path::new("."))
                .map_err(anyhow::Error::msg)?;
            let (path, listen) = match &config {
                Some(config) => {
                    let source = pick_source(config, source.as_deref())?;
                    (source.path.clone(), config.server.listen.to_string())
                }
                None => ("/webhooks/stripe".to_owned(), "127.0.0.1:8080".to_owned()),
            };
            (path, listen, reference)
        }
        (Some(config), None) => {
            let source = pick_source(config, source.as_deref())?;
            let reference = source
                .secrets
                .first()
                .cloned()
                .context("the source has no secret")?;
            (
                source.path.clone(),
                config.server.listen.to_string(),
                reference,
            )
        }
        (None, None) => bail!(
            "cannot read `{}`; pass --secret env:NAME to sign without a config",
            config_path.display()
        ),
    };
    let secret = secret_ref.resolve().map_err(anyhow::Error::msg)?;
    let timestamp = timestamp.unwrap_or_else(|| (switchyard::ingest::system_clock())());
    let header = switchyard::ingest::signature::signature_header(secret.expose(), timestamp, &body);
    let target = format!(
        "{}{path}",
        url.unwrap_or_else(|| format!("http://{listen}"))
            .trim_end_matches('/')
    );
    if !send {
        println!("Stripe-Signature: {header}");
        println!();
        println!(
            "curl -sS -X POST '{target}' -H 'Content-Type: application/json' -H 'Stripe-Signature: {header}' --data-binary @'{}'",
            event.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let response = reqwest::Client::new()
        .post(&target)
        .header("content-type", "application/json")
        .header("stripe-signature", header)
        .body(body)
        .send()
        .await
        .with_context(|| format!("cannot reach `{target}`"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    println!("{} {text}", status.as_u16());
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn pick_source<'a>(
    config: &'a Config,
    name: Option<&str>,
) -> Result<&'a switchyard::config::SourceConfig> {
    match name {
        Some(name) => config
            .sources
            .get(name)
            .with_context(|| format!("unknown source `{name}`")),
        None if config.sources.len() == 1 => Ok(config.sources.values().next().expect("one")),
        None => bail!("several sources are configured; pick one with --source"),
    }
}

async fn admin_call(
    admin: &AdminArgs,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value> {
    let (base, token) = admin.target()?;
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let mut request = reqwest::Client::new()
        .request(method, &url)
        .bearer_auth(&token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach the admin API at `{url}`"))?;
    let status = response.status();
    let value: serde_json::Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        let problems: String = value["problems"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p.as_str())
            .map(|p| format!("\n  - {p}"))
            .collect();
        bail!(
            "admin API answered {}: {}{problems}",
            status.as_u16(),
            value["message"].as_str().unwrap_or("no message")
        );
    }
    Ok(value)
}

async fn consumers(admin: &AdminArgs, json: bool) -> Result<ExitCode> {
    let value = admin_call(admin, reqwest::Method::GET, "/v1/consumers", None).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<switchyard::admin::ConsumerStatus> = serde_json::from_value(value)?;
    // CPU: the consumer's share of all guest time on the plugin threads.
    println!(
        "{:<16} {:<18} {:<9} {:>8} {:>10} {:>10} {:>8} {:>6} {:>6} {:>5}  LAST ERROR",
        "CONSUMER",
        "STATE",
        "BREAKER",
        "BACKLOG",
        "OLDEST",
        "DELIVERED",
        "RETRIED",
        "DLQ",
        "REVIEW",
        "CPU"
    );
    for row in rows {
        let oldest = row
            .oldest_pending_ms
            .map(|ms| {
                humantime::format_duration(std::time::Duration::from_secs(ms / 1000)).to_string()
            })
            .unwrap_or_else(|| "-".into());
        let last_error = match (&row.quarantined, &row.stats.last_error) {
            (Some(quarantined), _) => Some(quarantined.clone()),
            (None, Some(error)) => Some(last_error_line(&row.stats, error)),
            (None, None) => None,
        };
        // `-`: the consumer runs without a circuit breaker.
        let breaker = match row.breaker {
            Some(state) => serde_json::to_value(state)?
                .as_str()
                .unwrap_or("?")
                .to_owned(),
            None => "-".to_owned(),
        };
        println!(
            "{:<16} {:<18} {:<9} {:>8} {:>10} {:>10} {:>8} {:>6} {:>6} {:>4.0}%  {}",
            row.name,
            serde_json::to_value(row.state)?.as_str().unwrap_or("?"),
            breaker,
            row.backlog,
            oldest,
            row.stats.delivered,
            row.stats.retried,
            row.dead_letters,
            row.reviews,
            row.cpu_share * 100.0,
            last_error.as_deref().unwrap_or("-"),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `12s ago: <reason>`, and `recovered` when an event was delivered since.
fn last_error_line(stats: &switchyard::dispatch::StatsSnapshot, error: &str) -> String {
    let Some(at) = stats.last_error_at_ms else {
        return error.to_owned();
    };
    let recovered = stats
        .last_delivered_at_ms
        .is_some_and(|delivered| delivered > at);
    format!(
        "{}{}: {error}",
        ago(at),
        if recovered { ", recovered since" } else { "" }
    )
}

/// How long ago `ms` (since the epoch) was, in whole seconds.
fn ago(ms: u64) -> String {
    let now = switchyard::bus::now_ms();
    let age = std::time::Duration::from_secs(now.saturating_sub(ms) / 1000);
    format!("{} ago", humantime::format_duration(age))
}

async fn alerts(admin: &AdminArgs, recent: bool, json: bool) -> Result<ExitCode> {
    let value = admin_call(admin, reqwest::Method::GET, "/v1/alerts", None).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    let view: switchyard::admin::alerts::AlertsView = serde_json::from_value(value)?;
    if !view.enabled {
        println!("the anomaly watch is off (alerts.enabled = false)");
    }
    let mut rows = view
        .active
        .iter()
        .map(|alert| (alert, "active"))
        .collect::<Vec<_>>();
    if recent {
        rows.extend(view.recent.iter().map(|alert| (alert, "cleared")));
    }
    if rows.is_empty() {
        println!("no active alerts");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<8} {:<20} {:<24} {:<16}  MESSAGE",
        "STATE", "RULE", "SUBJECT", "SINCE"
    );
    for (alert, state) in rows {
        println!(
            "{:<8} {:<20} {:<24} {:<16}  {}",
            state,
            alert.rule.name(),
            alert.subject.to_string(),
            ago(alert.started_at_ms),
            alert.message,
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn set_paused(admin: &AdminArgs, consumer: &str, pause: bool) -> Result<ExitCode> {
    let action = if pause { "pause" } else { "resume" };
    admin_call(
        admin,
        reqwest::Method::POST,
        &format!("/v1/consumers/{consumer}/{action}"),
        None,
    )
    .await?;
    println!("{consumer}: {}", if pause { "paused" } else { "running" });
    Ok(ExitCode::SUCCESS)
}

fn filter_of(queue: &QueueArgs) -> switchyard::admin::QueueFilter {
    switchyard::admin::QueueFilter {
        consumer: queue.consumer.clone(),
        event_type: queue.event_type.clone(),
        error: queue.error.clone(),
        ids: queue.ids.clone(),
        ..Default::default()
    }
}

fn queue_path(queue: &QueueArgs) -> &'static str {
    if queue.review {
        "review"
    } else {
        "dead_letter"
    }
}

async fn queue_action(action: QueueAction) -> Result<ExitCode> {
    match action {
        QueueAction::List { queue, json } => {
            let filter = filter_of(&queue);
            let query = query_string(&filter);
            let path = format!("/v1/queues/{}{query}", queue_path(&queue));
            let value = admin_call(&queue.admin, reqwest::Method::GET, &path, None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&value)?);
                return Ok(ExitCode::SUCCESS);
            }
            let entries: Vec<switchyard::admin::ParkedEntry> = serde_json::from_value(value)?;
            println!(
                "{:>6} {:<14} {:<32} {:<34} {:>4}  REASON",
                "ID", "CONSUMER", "EVENT", "TYPE", "TRY"
            );
            for e in &entries {
                println!(
                    "{:>6} {:<14} {:<32} {:<34} {:>4}  {}",
                    e.id, e.consumer, e.event_id, e.event_type, e.attempts, e.reason
                );
            }
            println!(
                "{} entr{}",
                entries.len(),
                if entries.len() == 1 { "y" } else { "ies" }
            );
            Ok(ExitCode::SUCCESS)
        }
        QueueAction::Replay {
            queue,
            batch_size,
            yes,
        } => bulk(&queue, "replay", yes, batch_size).await,
        QueueAction::Discard { queue, yes } => bulk(&queue, "discard", yes, None).await,
        QueueAction::Show { id, queue } => {
            let Some(consumer) = &queue.consumer else {
                bail!("--consumer is required: entry ids are per consumer");
            };
            let path = format!("/v1/queues/{}/{consumer}/{id}", queue_path(&queue));
            let entry = admin_call(&queue.admin, reqwest::Method::GET, &path, None).await?;
            println!("{}", serde_json::to_string_pretty(&entry)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn bulk(
    queue: &QueueArgs,
    action: &str,
    yes: bool,
    batch_size: Option<usize>,
) -> Result<ExitCode> {
    let mut body = serde_json::json!({ "filter": filter_of(queue), "dry_run": !yes });
    if let Some(batch_size) = batch_size {
        body["batch_size"] = batch_size.into();
    }
    let path = format!("/v1/queues/{}/{action}", queue_path(queue));
    let outcome: switchyard::admin::BulkOutcome = serde_json::from_value(
        admin_call(&queue.admin, reqwest::Method::POST, &path, Some(body)).await?,
    )?;
    for e in &outcome.sample {
        println!(
            "{:>6} {:<14} {:<32} {}",
            e.id, e.consumer, e.event_id, e.event_type
        );
    }
    if outcome.dry_run {
        println!(
            "dry run: {} entries would be {action}ed; add --yes to do it",
            outcome.matched
        );
    } else if let Some(job) = outcome.job {
        return follow_job(&queue.admin, job).await;
    } else {
        println!(
            "{action}: {} of {} matched entries",
            outcome.done, outcome.matched
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Shows a replay job's progress until it ends (Ctrl-C leaves it running).
async fn follow_job(admin: &AdminArgs, mut job: switchyard::admin::JobStatus) -> Result<ExitCode> {
    use std::io::Write as _;
    use switchyard::admin::JobState;
    eprintln!(
        "job {} started ({} entries); cancel with `switchyard jobs cancel {}`",
        job.id, job.total, job.id
    );
    let path = format!("/v1/jobs/{}", job.id);
    loop {
        let width = 30;
        let filled = (job.processed * width)
            .checked_div(job.total)
            .unwrap_or(width);
        eprint!(
            "\r[{}{}] {}/{} queued {}",
            "#".repeat(filled),
            ".".repeat(width - filled),
            job.processed,
            job.total,
            job.queued
        );
        let _ = std::io::stderr().flush();
        if job.state != JobState::Running {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        job = serde_json::from_value(admin_call(admin, reqwest::Method::GET, &path, None).await?)?;
    }
    eprintln!();
    println!(
        "job {}: {:?}, {} of {} entries queued again{}",
        job.id,
        job.state,
        job.queued,
        job.total,
        job.error.map(|e| format!(" ({e})")).unwrap_or_default()
    );
    Ok(if job.state == JobState::Done {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `?key=value&...` for the filter's set fields.
fn query_string(filter: &switchyard::admin::QueueFilter) -> String {
    let mut pairs = Vec::new();
    let mut push = |key: &str, value: Option<String>| {
        if let Some(value) = value {
            pairs.push(format!("{key}={}", urlencode(&value)));
        }
    };
    push("consumer", filter.consumer.clone());
    push("event_type", filter.event_type.clone());
    push("error", filter.error.clone());
    if pairs.is_empty() {
        String::new()
    } else {
        format!("?{}", pairs.join("&"))
    }
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
