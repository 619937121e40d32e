//! `dlq`, `review` and `jobs`: parked entries (list, show, replay, discard,
//! each narrowed by the same filter flags) and the background jobs a replay
//! runs as.

use super::target::{AdminArgs, ConfigGiven};
use anyhow::{Result, bail};
use std::io::Write as _;
use std::process::ExitCode;
use switchyard::admin::client::{AdminClient, BulkAction};
use switchyard::admin::{BulkRequest, JobState, JobStatus, QueueFilter};
use switchyard::bus::ParkQueue;

/// Which queue and which of its entries; every flag narrows.
#[derive(clap::Args, Clone)]
pub struct QueueArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// The review queue instead of the dead-letter queue.
    #[arg(long)]
    pub review: bool,
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

impl QueueArgs {
    fn queue(&self) -> ParkQueue {
        if self.review {
            ParkQueue::Review
        } else {
            ParkQueue::DeadLetter
        }
    }

    fn filter(&self) -> QueueFilter {
        QueueFilter {
            consumer: self.consumer.clone(),
            event_type: self.event_type.clone(),
            error: self.error.clone(),
            ids: self.ids.clone(),
            ..Default::default()
        }
    }
}

#[derive(clap::Subcommand)]
pub enum QueueAction {
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

impl QueueAction {
    pub fn queue_mut(&mut self) -> &mut QueueArgs {
        match self {
            Self::List { queue, .. }
            | Self::Replay { queue, .. }
            | Self::Show { queue, .. }
            | Self::Discard { queue, .. } => queue,
        }
    }
}

#[derive(clap::Subcommand)]
pub enum JobAction {
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

pub async fn queue_action(action: QueueAction, config: &ConfigGiven) -> Result<ExitCode> {
    match action {
        QueueAction::List { queue, json } => {
            let client = queue.admin.client(config)?;
            let entries = client.parked(queue.queue(), &queue.filter()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
                return Ok(ExitCode::SUCCESS);
            }
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
        } => bulk(&queue, BulkAction::Replay, yes, batch_size, config).await,
        QueueAction::Discard { queue, yes } => {
            bulk(&queue, BulkAction::Discard, yes, None, config).await
        }
        QueueAction::Show { id, queue } => {
            let Some(consumer) = &queue.consumer else {
                bail!("--consumer is required: entry ids are per consumer");
            };
            let client = queue.admin.client(config)?;
            let entry = client.parked_entry(queue.queue(), consumer, id).await?;
            println!("{}", serde_json::to_string_pretty(&entry)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn bulk(
    queue: &QueueArgs,
    action: BulkAction,
    yes: bool,
    batch_size: Option<usize>,
    config: &ConfigGiven,
) -> Result<ExitCode> {
    let client = queue.admin.client(config)?;
    let request = BulkRequest {
        filter: queue.filter(),
        dry_run: !yes,
        batch_size,
    };
    let outcome = client.bulk(queue.queue(), action, &request).await?;
    let done = action.done();
    for e in &outcome.sample {
        println!(
            "{:>6} {:<14} {:<32} {}",
            e.id, e.consumer, e.event_id, e.event_type
        );
    }
    if outcome.dry_run {
        println!(
            "dry run: {} entries would be {done}; add --yes to do it",
            outcome.matched
        );
    } else if let Some(job) = outcome.job {
        return follow_job(&client, job).await;
    } else {
        println!(
            "{done}: {} of {} matched entries",
            outcome.done, outcome.matched
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn job_action(action: JobAction, config: &ConfigGiven) -> Result<ExitCode> {
    match action {
        JobAction::List { admin } => {
            let jobs = admin.client(config)?.jobs().await?;
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
            admin.client(config)?.cancel_job(id).await?;
            println!("job {id}: cancel requested; it stops after its current batch");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Shows a replay job's progress until it ends (Ctrl-C leaves it running).
pub async fn follow_job(client: &AdminClient, mut job: JobStatus) -> Result<ExitCode> {
    eprintln!(
        "job {} started ({} entries); cancel with `switchyard jobs cancel {}`",
        job.id, job.total, job.id
    );
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
        job = client.job(job.id).await?;
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
