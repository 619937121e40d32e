//! The command line: parsing (clap) and one file per command group.
//!
//! - `hub`: `serve`, `check`, `health` — run or probe a hub from its config;
//! - `operate`: `consumers`, `alerts`, `pause`, `resume`, `reload`,
//!   `replay` — a running hub, through its admin API;
//! - `queues`: `dlq`, `review`, `jobs` — parked entries and replay jobs;
//! - `tools`: `plugin`, `config`, `sign` — work on files, no hub needed;
//! - `target`: which hub's admin API a command talks to (`-c`, flags).
//!
//! Admin commands go through the library's typed
//! [`AdminClient`](switchyard::admin::client::AdminClient); this module only
//! turns flags into its calls and its answers into tables.

mod hub;
mod operate;
mod queues;
mod target;
mod tools;

#[cfg(test)]
mod tests;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
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
        admin: target::AdminArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Active alerts of the anomaly watch (from the admin API).
    Alerts {
        #[command(flatten)]
        admin: target::AdminArgs,
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
        admin: target::AdminArgs,
    },
    /// Re-read routes.toml and the plugins in the running hub (like SIGHUP);
    /// on any problem the running config stays and every problem is printed.
    Reload {
        #[command(flatten)]
        admin: target::AdminArgs,
    },
    /// Let a paused consumer take events again.
    Resume {
        consumer: String,
        #[command(flatten)]
        admin: target::AdminArgs,
    },
    /// Deliver events from the bus history to a consumer again (e.g. one
    /// added later). Idempotency keys still apply. Dry run unless --yes.
    Replay(operate::HistoryArgs),
    /// The dead-letter queue (or, with --review, the review queue).
    Dlq {
        #[command(subcommand)]
        action: queues::QueueAction,
    },
    /// The review queue: `switchyard dlq … --review`.
    Review {
        #[command(subcommand)]
        action: queues::QueueAction,
    },
    /// Background replay jobs.
    Jobs {
        #[command(subcommand)]
        action: queues::JobAction,
    },
    /// Write, build and try consumer plugins.
    Plugin {
        #[command(subcommand)]
        action: tools::PluginAction,
    },
    /// routes.toml tooling: its JSON Schema and its reference.
    Config {
        #[command(subcommand)]
        action: tools::ConfigAction,
    },
    /// Exit 0 when the hub answers `GET /readyz` (a container healthcheck).
    Health {
        /// Base URL of the hub instead of `http://<server.listen>`.
        #[arg(long)]
        url: Option<String>,
    },
    /// Sign an event JSON file like Stripe does; print curl-ready headers, or send it.
    Sign(tools::SignArgs),
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

pub fn main() -> ExitCode {
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
    let config = target::ConfigGiven {
        path: cli.config.clone(),
        explicit,
    };
    quiet_on_broken_pipe();
    telemetry::init(cli.log_format);
    let runtime = tokio::runtime::Runtime::new().expect("start tokio runtime");
    match runtime.block_on(run(cli.command, &config)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: &target::ConfigGiven) -> Result<ExitCode> {
    let path = &config.path;
    match command {
        Command::Serve { accept_empty_store } => hub::serve(path, accept_empty_store).await,
        Command::Check => hub::check(path).await,
        Command::Health { url } => hub::health(path, url).await,
        Command::Consumers { admin, json } => {
            operate::consumers(&admin.client(config)?, json).await
        }
        Command::Alerts {
            admin,
            recent,
            json,
        } => operate::alerts(&admin.client(config)?, recent, json).await,
        Command::Pause { consumer, admin } => {
            operate::set_paused(&admin.client(config)?, &consumer, true).await
        }
        Command::Resume { consumer, admin } => {
            operate::set_paused(&admin.client(config)?, &consumer, false).await
        }
        Command::Reload { admin } => operate::reload(&admin.client(config)?).await,
        Command::Replay(args) => operate::replay_history(args, config).await,
        Command::Dlq { action } => queues::queue_action(action, config).await,
        Command::Review { mut action } => {
            action.queue_mut().review = true;
            queues::queue_action(action, config).await
        }
        Command::Jobs { action } => queues::job_action(action, config).await,
        Command::Plugin { action } => tools::plugin_action(action).await,
        Command::Config { action } => tools::config_action(action),
        Command::Sign(args) => tools::sign(path, args).await,
    }
}
