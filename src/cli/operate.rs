//! `consumers`, `alerts`, `pause`, `resume`, `reload` and `replay`: a
//! running hub, through its admin API.

use super::queues::follow_job;
use super::target::{AdminArgs, ConfigGiven};
use anyhow::{Context, Result};
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};
use switchyard::admin::HistoryReplay;
use switchyard::admin::client::AdminClient;
use switchyard::dispatch::StatsSnapshot;

/// `switchyard replay`.
#[derive(clap::Args)]
pub struct HistoryArgs {
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
}

pub async fn consumers(client: &AdminClient, json: bool) -> Result<ExitCode> {
    let rows = client.consumers().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
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
            .map(|ms| humantime::format_duration(Duration::from_secs(ms / 1000)).to_string())
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
fn last_error_line(stats: &StatsSnapshot, error: &str) -> String {
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
    let age = Duration::from_secs(now.saturating_sub(ms) / 1000);
    format!("{} ago", humantime::format_duration(age))
}

pub async fn alerts(client: &AdminClient, recent: bool, json: bool) -> Result<ExitCode> {
    let view = client.alerts().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(ExitCode::SUCCESS);
    }
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

pub async fn set_paused(client: &AdminClient, consumer: &str, pause: bool) -> Result<ExitCode> {
    client.set_paused(consumer, pause).await?;
    println!("{consumer}: {}", if pause { "paused" } else { "running" });
    Ok(ExitCode::SUCCESS)
}

pub async fn reload(client: &AdminClient) -> Result<ExitCode> {
    let report = client.reload().await?;
    let list = |names: &[String]| {
        if names.is_empty() {
            "-".to_owned()
        } else {
            names.join(", ")
        }
    };
    println!(
        "reloaded: consumers {}; added {}; removed {}",
        list(&report.consumers),
        list(&report.added),
        list(&report.removed)
    );
    Ok(ExitCode::SUCCESS)
}

/// Unix milliseconds of an RFC 3339 time.
fn millis(text: &str) -> Result<u64> {
    let at = humantime::parse_rfc3339_weak(text)
        .with_context(|| format!("`{text}` is not a time like 2026-11-29T10:00:00Z"))?;
    Ok(at.duration_since(UNIX_EPOCH)?.as_millis() as u64)
}

pub async fn replay_history(args: HistoryArgs, config: &ConfigGiven) -> Result<ExitCode> {
    let consumer = &args.consumer;
    if args.all_types {
        eprintln!(
            "warning: --all-types replays events of types `{consumer}`'s routes do not send it; its plugin will see them"
        );
    }
    let request = HistoryReplay {
        source: args.source,
        event_type: Some(args.event_type),
        all_types: args.all_types,
        since_ms: millis(&args.since)?,
        until_ms: args.until.as_deref().map(millis).transpose()?,
        dry_run: !args.yes,
        force: args.force,
        batch_size: args.batch_size,
    };
    let client = args.admin.client(config)?;
    let outcome = client.replay_history(consumer, &request).await?;
    match outcome.job {
        Some(job) => follow_job(&client, job).await,
        None => {
            println!(
                "dry run: {} events would be queued for {consumer}; add --yes to do it",
                outcome.matched
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
