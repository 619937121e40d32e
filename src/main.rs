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
    Serve,
    /// Validate routes.toml, resolve secrets and load every plugin; print every problem.
    Check,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Command::Serve => serve(&cli.config).await,
        Command::Check => check(&cli.config).await,
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

async fn serve(path: &std::path::Path) -> Result<ExitCode> {
    let config = Config::load(path)?;
    let hub = match switchyard::hub::start(config, Default::default()).await {
        Ok(hub) => hub,
        Err(errors) => {
            for err in &errors {
                eprintln!("error: {err}");
            }
            bail!("switchyard did not start ({} problem(s))", errors.len());
        }
    };
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
