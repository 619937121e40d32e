//! `serve`, `check` and `health`: run a hub from its config, validate the
//! config without running it, and probe a running hub's readiness.

use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::ExitCode;
use switchyard::config::Config;

pub async fn serve(path: &Path, accept_empty_store: bool) -> Result<ExitCode> {
    let config = Config::load(path)?;
    let options = switchyard::app::StartOptions {
        config_path: Some(path.to_owned()),
        empty_store: if accept_empty_store {
            switchyard::durable::EmptyStore::Accept
        } else {
            switchyard::durable::EmptyStore::Refuse
        },
        ..Default::default()
    };
    let hub = match switchyard::app::start(config, options).await {
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

pub async fn check(path: &Path) -> Result<ExitCode> {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{err}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let problems = switchyard::app::check(&config).await;
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

pub async fn health(config_path: &Path, url: Option<String>) -> Result<ExitCode> {
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
