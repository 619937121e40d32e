//! `plugin`, `config` and `sign`: work on files, no running hub needed
//! (except `sign --send`, which posts to one).

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use switchyard::config::{Config, SecretRef, SourceConfig};
use switchyard::plugin::devkit;

#[derive(clap::Subcommand)]
pub enum PluginAction {
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
        respond: Vec<devkit::Respond>,
        /// `<key>=<value>`: a setting the plugin reads with `config(key)`. Repeatable.
        #[arg(long, value_parser = parse_setting)]
        setting: Vec<(String, String)>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Subcommand)]
pub enum ConfigAction {
    /// Print the JSON Schema of routes.toml (for editor completion).
    Schema,
    /// Print the Markdown reference of every routes.toml key (docs/CONFIG.md).
    Reference,
}

/// `switchyard sign`.
#[derive(clap::Args)]
pub struct SignArgs {
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
}

fn parse_setting(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("`{text}`: expected <key>=<value>"))
}

pub async fn plugin_action(action: PluginAction) -> Result<ExitCode> {
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
fn find_sdk(start: &Path) -> Option<PathBuf> {
    let start = std::path::absolute(start).ok()?;
    let cwd = std::env::current_dir().ok()?;
    [start, cwd].into_iter().find_map(|from| {
        from.ancestors()
            .map(|dir| dir.join("plugins/sdk"))
            .find(|sdk| sdk.join("Cargo.toml").is_file())
    })
}

pub fn config_action(action: ConfigAction) -> Result<ExitCode> {
    match action {
        ConfigAction::Schema => println!(
            "{}",
            serde_json::to_string_pretty(&switchyard::config::reference::json_schema())?
        ),
        ConfigAction::Reference => print!("{}", switchyard::config::reference::markdown()),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn sign(config_path: &Path, args: SignArgs) -> Result<ExitCode> {
    let SignArgs {
        event,
        source,
        secret,
        timestamp,
        send,
        url,
    } = args;
    let body =
        std::fs::read(&event).with_context(|| format!("cannot read `{}`", event.display()))?;
    let config = Config::load(config_path).ok();
    let (path, listen, secret_ref) = match (&config, &secret) {
        (_, Some(text)) => {
            let reference = SecretRef::parse(text, Path::new("."))?;
            let (path, listen) = match &config {
                Some(config) => {
                    let source = pick_source(config, source.as_deref())?;
                    (source.path.clone(), config.server.listen.to_string())
                }
                None => (
                    switchyard::config::defaults::source_path("stripe"),
                    switchyard::config::defaults::SERVER_LISTEN.to_owned(),
                ),
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
    let secret = secret_ref.resolve()?;
    let timestamp = timestamp.unwrap_or_else(|| (switchyard::ingest::system_clock())());
    let header =
        switchyard::ingest::scheme::stripe::signature_header(secret.expose(), timestamp, &body);
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

fn pick_source<'a>(config: &'a Config, name: Option<&str>) -> Result<&'a SourceConfig> {
    match name {
        Some(name) => config
            .sources
            .get(name)
            .with_context(|| format!("unknown source `{name}`")),
        None if config.sources.len() == 1 => Ok(config.sources.values().next().expect("one")),
        None => bail!("several sources are configured; pick one with --source"),
    }
}
