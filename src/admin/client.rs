//! A typed client of the admin API, over the same types the API serves:
//! what the `switchyard` CLI (and anything scripted in Rust) calls instead
//! of writing paths and query strings by hand. Filters travel with
//! `reqwest`'s `.query()`, so a new filter field reaches the API once it is
//! in [`QueueFilter::query`].

use super::{
    BulkOutcome, BulkRequest, ConsumerStatus, HistoryOutcome, HistoryReplay, JobStatus,
    ParkedDetail, ParkedEntry, QueueFilter, ReloadReport,
};
use crate::alerts::AlertsView;
use crate::bus::ParkQueue;
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the admin API at `{url}`: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The API answered with an error status; `problems` lists what a
    /// refused reload found.
    #[error("admin API answered {status}: {message}{}", problems.iter().map(|p| format!("\n  - {p}")).collect::<String>())]
    Refused {
        status: u16,
        message: String,
        problems: Vec<String>,
    },
    #[error("unexpected answer from `{url}`: {source}")]
    Decode {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

/// What a bulk request does to the entries it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkAction {
    Replay,
    Discard,
}

impl BulkAction {
    fn segment(self) -> &'static str {
        match self {
            Self::Replay => "replay",
            Self::Discard => "discard",
        }
    }

    /// The past tense, for messages ("3 entries would be replayed").
    pub fn done(self) -> &'static str {
        match self {
            Self::Replay => "replayed",
            Self::Discard => "discarded",
        }
    }
}

/// `call`'s body argument for requests without one.
const NO_BODY: Option<&()> = None;

/// One hub's admin API: its base URL and bearer token.
#[derive(Clone)]
pub struct AdminClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("AdminClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// The path segment of a parked-entry queue.
fn queue_segment(queue: ParkQueue) -> &'static str {
    match queue {
        ParkQueue::DeadLetter => "dead_letter",
        ParkQueue::Review => "review",
    }
}

impl AdminClient {
    pub fn new(base: &str, token: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends one request and decodes a successful answer as `T`.
    async fn call<T: DeserializeOwned, B: Serialize>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .http
            .request(method, &url)
            .bearer_auth(&self.token)
            .query(query);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: url.clone(),
                source,
            })?;
        let status = response.status();
        if !status.is_success() {
            let value: serde_json::Value = response.json().await.unwrap_or_default();
            return Err(ClientError::Refused {
                status: status.as_u16(),
                message: value["message"].as_str().unwrap_or("no message").to_owned(),
                problems: value["problems"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p.as_str().map(str::to_owned))
                    .collect(),
            });
        }
        response
            .json()
            .await
            .map_err(|source| ClientError::Decode { url, source })
    }

    pub async fn consumers(&self) -> Result<Vec<ConsumerStatus>, ClientError> {
        self.call(Method::GET, "/v1/consumers", &[], NO_BODY).await
    }

    pub async fn alerts(&self) -> Result<AlertsView, ClientError> {
        self.call(Method::GET, "/v1/alerts", &[], NO_BODY).await
    }

    /// Pauses (`true`) or resumes a consumer.
    pub async fn set_paused(&self, consumer: &str, pause: bool) -> Result<(), ClientError> {
        let action = if pause { "pause" } else { "resume" };
        let path = format!("/v1/consumers/{consumer}/{action}");
        self.call::<serde_json::Value, ()>(Method::POST, &path, &[], NO_BODY)
            .await
            .map(drop)
    }

    pub async fn reload(&self) -> Result<ReloadReport, ClientError> {
        self.call(Method::POST, "/v1/reload", &[], NO_BODY).await
    }

    pub async fn replay_history(
        &self,
        consumer: &str,
        request: &HistoryReplay,
    ) -> Result<HistoryOutcome, ClientError> {
        let path = format!("/v1/consumers/{consumer}/replay");
        self.call(Method::POST, &path, &[], Some(request)).await
    }

    pub async fn parked(
        &self,
        queue: ParkQueue,
        filter: &QueueFilter,
    ) -> Result<Vec<ParkedEntry>, ClientError> {
        let path = format!("/v1/queues/{}", queue_segment(queue));
        self.call(Method::GET, &path, &filter.query(), NO_BODY)
            .await
    }

    pub async fn parked_entry(
        &self,
        queue: ParkQueue,
        consumer: &str,
        id: u64,
    ) -> Result<ParkedDetail, ClientError> {
        let path = format!("/v1/queues/{}/{consumer}/{id}", queue_segment(queue));
        self.call(Method::GET, &path, &[], NO_BODY).await
    }

    /// A bulk action on matching parked entries: a replay puts them back
    /// into their consumers' queues (a background job), a discard deletes
    /// them; with `dry_run` either only counts them.
    pub async fn bulk(
        &self,
        queue: ParkQueue,
        action: BulkAction,
        request: &BulkRequest,
    ) -> Result<BulkOutcome, ClientError> {
        let path = format!("/v1/queues/{}/{}", queue_segment(queue), action.segment());
        self.call(Method::POST, &path, &[], Some(request)).await
    }

    pub async fn jobs(&self) -> Result<Vec<JobStatus>, ClientError> {
        self.call(Method::GET, "/v1/jobs", &[], NO_BODY).await
    }

    pub async fn job(&self, id: u64) -> Result<JobStatus, ClientError> {
        self.call(Method::GET, &format!("/v1/jobs/{id}"), &[], NO_BODY)
            .await
    }

    pub async fn cancel_job(&self, id: u64) -> Result<JobStatus, ClientError> {
        self.call(Method::POST, &format!("/v1/jobs/{id}/cancel"), &[], NO_BODY)
            .await
    }
}
