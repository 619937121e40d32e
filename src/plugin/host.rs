//! What a running plugin may touch: the host side of the WIT imports.
//!
//! Outbound HTTP goes only to connections granted to the consumer. The host
//! builds the URL from the connection's base URL (the guest supplies only a
//! path), injects credentials and the `Idempotency-Key`, and drops headers a
//! guest must not set. The guest never sees a secret.

use super::SandboxStop;
use super::bindings::switchyard::plugin::{host, http, types};
use super::connection::{Connection, join_path};
use super::egress::AddressRefused;
use crate::config::PluginLimits;
use crate::telemetry::otlp::{SpanKind, SpanRecord, TraceContext};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::{ResourceLimiter, StoreLimits};

/// Most log lines one event may write; the rest are counted, not written,
/// so a chatty plugin cannot flood the operator's logs. The plugin is not
/// stopped for it: chattiness harms nobody once it is cut off.
pub(super) const MAX_LOG_LINES: u32 = 100;
/// Longest log line kept, in bytes.
const MAX_LOG_LINE: usize = 2048;

/// Headers the host owns: a guest value is dropped without error.
const HOST_OWNED_HEADERS: &[&str] = &[
    "authorization",
    "traceparent",
    "proxy-authorization",
    "cookie",
    "host",
    "idempotency-key",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
];

/// Per-consumer facts shared by every instance of its plugin.
pub struct ConsumerContext {
    pub consumer: Arc<str>,
    pub connections: BTreeMap<String, Arc<Connection>>,
    pub settings: BTreeMap<String, String>,
    pub limits: PluginLimits,
    pub tracer: crate::telemetry::otlp::Tracer,
}

/// One outbound call, as recorded for `plugin test` and for diagnostics.
#[derive(Debug, Clone)]
pub struct CallRecord {
    pub connection: String,
    pub method: String,
    pub path: String,
    pub status: Option<u16>,
    /// Why no status came back, when none did.
    pub failure: Option<CallFailure>,
}

/// Why an outbound call got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallFailure {
    Timeout,
    Unreachable,
    /// Refused by the sandbox (address policy, redirect, not granted).
    Refused,
}

impl CallRecord {
    /// The call's outcome as a bounded label: the status code, or
    /// `timeout`, `unreachable`, `refused`.
    pub fn answer(&self) -> String {
        match (self.status, self.failure) {
            (Some(status), _) => status.to_string(),
            (None, Some(CallFailure::Timeout)) => "timeout".to_owned(),
            (None, Some(CallFailure::Unreachable)) => "unreachable".to_owned(),
            (None, _) => "refused".to_owned(),
        }
    }
}

/// The store data of one plugin instance: lives for one event.
pub struct HostState {
    pub context: Arc<ConsumerContext>,
    pub event_id: String,
    /// Names this delivery's effects in `Idempotency-Key`s
    /// ([`Envelope::effect_key`](crate::bus::Envelope::effect_key)).
    pub effect_key: String,
    /// The delivery's trace context: each outbound call is a child span of
    /// it, and the downstream gets that span in `traceparent`.
    pub trace: Option<TraceContext>,
    pub calls: Vec<CallRecord>,
    /// Longest `Retry-After` a downstream asked for during this event.
    pub retry_after: Option<Duration>,
    /// A downstream timed out, was unreachable, or answered 5xx or 429:
    /// what the circuit breaker counts.
    pub downstream_unwell: bool,
    /// A downstream answered 410 Gone: the event must not be retried.
    pub downstream_gone: bool,
    /// An outbound call is under way (a wall-clock timeout now is the
    /// downstream's slowness, not the plugin's).
    pub call_in_flight: bool,
    /// Epoch ticks spent running guest code.
    pub cpu_ticks: u64,
    pub log_lines: u32,
    /// What the sandbox stopped or refused during this event, each kind once.
    pub stops: Vec<SandboxStop>,
    pub limits: StoreLimits,
    /// Set when the guest tried to grow memory past its cap.
    pub memory_refused: bool,
    /// Largest linear memory granted so far, in bytes.
    pub peak_memory: usize,
    /// This call's turns on the guest pool.
    pub turns: super::pool::CallTurns,
}

impl HostState {
    pub fn new(
        context: Arc<ConsumerContext>,
        event_id: String,
        effect_key: String,
        trace: Option<TraceContext>,
        turns: super::pool::CallTurns,
    ) -> HostState {
        let limits = wasmtime::StoreLimitsBuilder::new()
            .memory_size(context.limits.memory as usize)
            .instances(16)
            .tables(16)
            .memories(4)
            .build();
        HostState {
            context,
            event_id,
            effect_key,
            trace,
            calls: Vec::new(),
            retry_after: None,
            downstream_unwell: false,
            downstream_gone: false,
            call_in_flight: false,
            cpu_ticks: 0,
            log_lines: 0,
            stops: Vec::new(),
            limits,
            memory_refused: false,
            peak_memory: 0,
            turns,
        }
    }

    fn consumer(&self) -> &str {
        &self.context.consumer
    }

    /// Notes and logs what the sandbox stopped or refused, once per kind and
    /// event: a plugin that retries a refused call in a loop costs one line.
    pub(super) fn stopped(&mut self, stop: SandboxStop, detail: &str) {
        if self.stops.contains(&stop) {
            return;
        }
        self.stops.push(stop);
        tracing::warn!(
            consumer = self.consumer(),
            event_id = self.event_id.as_str(),
            reason = stop.label(),
            "{}: {detail}",
            stop.what()
        );
    }

    async fn send_checked(
        &mut self,
        request: http::Request,
    ) -> Result<http::Response, http::Error> {
        let connection = self
            .context
            .connections
            .get(&request.connection)
            .cloned()
            .ok_or_else(|| {
                let message = format!(
                    "connection `{}` is not granted to consumer `{}`",
                    request.connection,
                    self.consumer()
                );
                self.stopped(SandboxStop::NotGranted, &message);
                http::Error::NotGranted(message)
            })?;
        if let Some(refused) = &connection.refused {
            let message = format!("connection `{}`: {refused}", request.connection);
            self.stopped(SandboxStop::Address, &message);
            return Err(http::Error::NotGranted(message));
        }
        if self.calls.len() as u32 >= self.context.limits.http_calls {
            let message = format!(
                "at most {} outbound calls per event",
                self.context.limits.http_calls
            );
            self.stopped(SandboxStop::HttpCalls, &message);
            return Err(http::Error::LimitExceeded(message));
        }
        let method = match request.method.as_str() {
            "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" => {
                reqwest::Method::from_bytes(request.method.as_bytes()).expect("known method")
            }
            other => {
                return Err(http::Error::InvalidRequest(format!(
                    "method `{other}` is not allowed"
                )));
            }
        };
        let url = join_path(&connection.base, &request.path)?;
        let mut headers = HeaderMap::new();
        for (name, value) in &request.headers {
            let lower = name.to_ascii_lowercase();
            if HOST_OWNED_HEADERS.contains(&lower.as_str()) {
                continue;
            }
            let name = HeaderName::from_bytes(lower.as_bytes()).map_err(|_| {
                http::Error::InvalidRequest(format!("`{name}` is not a header name"))
            })?;
            let value = HeaderValue::from_str(value).map_err(|_| {
                http::Error::InvalidRequest(format!("header `{name}` has an invalid value"))
            })?;
            headers.append(name, value);
        }
        let call_number = self.calls.len() + 1;
        // Stable across redeliveries of the same event: a downstream that
        // honours it applies the effect once even if our ack was lost.
        let key = format!("{}:{}:{call_number}", self.consumer(), self.effect_key);
        headers.insert(
            "idempotency-key",
            HeaderValue::from_str(&key).map_err(|_| {
                http::Error::InvalidRequest("event id is not header-safe".to_owned())
            })?,
        );
        if let Some((name, value)) = &connection.authorization {
            headers.insert(name.clone(), value.clone());
        }
        let span = self.trace.as_ref().map(TraceContext::child);
        if let Some(span) = &span
            && let Ok(value) = HeaderValue::from_str(&span.traceparent())
        {
            headers.insert("traceparent", value);
        }
        let started = std::time::SystemTime::now();
        self.calls.push(CallRecord {
            connection: request.connection.clone(),
            method: request.method.clone(),
            path: request.path.clone(),
            status: None,
            failure: None,
        });
        let mut builder = connection.client.request(method, url).headers(headers);
        if let Some(body) = request.body {
            builder = builder.body(body);
        }
        self.call_in_flight = true;
        let answer = self
            .exchange(&connection, builder, &request.connection)
            .await;
        self.call_in_flight = false;
        if let (Err(err), Some(last)) = (&answer, self.calls.last_mut()) {
            last.failure = Some(match err {
                http::Error::Timeout => CallFailure::Timeout,
                http::Error::Connect(_) => CallFailure::Unreachable,
                _ => CallFailure::Refused,
            });
        }
        if matches!(
            answer,
            Err(http::Error::Timeout) | Err(http::Error::Connect(_))
        ) || answer
            .as_ref()
            .is_ok_and(|r| r.status == 429 || r.status >= 500)
        {
            self.downstream_unwell = true;
        }
        if answer.as_ref().is_ok_and(|r| r.status == 410) {
            self.downstream_gone = true;
        }
        if let (Some(span), Some(parent)) = (span, &self.trace)
            && self.context.tracer.enabled()
        {
            let mut attributes = vec![
                ("switchyard.consumer", self.context.consumer.to_string()),
                ("switchyard.connection", request.connection.clone()),
                ("http.request.method", request.method.clone()),
            ];
            if let Ok(response) = &answer {
                attributes.push(("http.response.status_code", response.status.to_string()));
            }
            self.context.tracer.export(SpanRecord {
                name: format!("{} {}", request.method, request.connection),
                kind: SpanKind::Client,
                trace_id: span.trace_id,
                span_id: span.span_id,
                parent_span_id: Some(parent.span_id.clone()),
                start: started,
                end: std::time::SystemTime::now(),
                attributes,
                error: answer.as_ref().map_or(true, |r| r.status >= 500),
            });
        }
        answer
    }

    /// Waits for the connection's rate limit, sends, reads the answer.
    async fn exchange(
        &mut self,
        connection: &Arc<Connection>,
        builder: reqwest::RequestBuilder,
        name: &str,
    ) -> Result<http::Response, http::Error> {
        let cap = self.context.limits.response_body;
        let fetch = fetch(Arc::clone(connection), builder, cap);
        let fetched = self
            .turns
            .on_host(fetch)
            .await
            .unwrap_or_else(|| Err(FetchError::Lost));
        let response = match fetched {
            Ok(response) => response,
            Err(FetchError::Lost) => {
                return Err(http::Error::Connect(format!("`{name}`: the call was lost")));
            }
            Err(FetchError::Send(err)) => {
                return Err(if let Some(refused) = AddressRefused::find_in(&err) {
                    let message = format!("connection `{name}`: {refused}");
                    self.stopped(SandboxStop::Address, &message);
                    http::Error::NotGranted(message)
                } else if err.is_timeout() {
                    http::Error::Timeout
                } else {
                    http::Error::Connect(format!("`{name}` unreachable"))
                });
            }
        };
        let status = response.status.as_u16();
        if let Some(last) = self.calls.last_mut() {
            last.status = Some(status);
        }
        if response.status.is_redirection()
            && let Some(target) = response
                .headers
                .get(reqwest::header::LOCATION)
                .and_then(|location| location.to_str().ok())
                .and_then(|location| connection.base.join(location).ok())
            && target.origin() != connection.base.origin()
        {
            // Only the origin: a redirect URL may carry a token in its query.
            let message = format!(
                "connection `{name}` answered HTTP {status} with a redirect to another host (`{}`); redirects are not followed",
                target.origin().ascii_serialization()
            );
            self.stopped(SandboxStop::Redirect, &message);
            return Err(http::Error::NotGranted(message));
        }
        if (status == 429 || status == 503)
            && let Some(after) = retry_after(&response.headers)
        {
            self.retry_after = Some(self.retry_after.map_or(after, |seen| seen.max(after)));
        }
        let response_headers = response
            .headers
            .iter()
            .filter_map(|(name, value)| {
                Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
            })
            .collect();
        let body = match response.body {
            Ok(body) => body,
            Err(BodyProblem::TooLarge) => {
                let too_large = format!("response body larger than {cap} bytes");
                self.stopped(SandboxStop::ResponseBody, &too_large);
                return Err(http::Error::LimitExceeded(too_large));
            }
            Err(BodyProblem::Timeout) => return Err(http::Error::Timeout),
            Err(BodyProblem::Broken) => {
                return Err(http::Error::Connect(format!(
                    "`{name}` broke off the response"
                )));
            }
        };
        Ok(http::Response {
            status,
            headers: response_headers,
            body,
        })
    }
}

/// A downstream's answer, read on the host's runtime.
struct Fetched {
    status: reqwest::StatusCode,
    headers: HeaderMap,
    body: Result<Vec<u8>, BodyProblem>,
}

enum FetchError {
    Send(reqwest::Error),
    /// The host's task ended without an answer (it panicked).
    Lost,
}

enum BodyProblem {
    TooLarge,
    Timeout,
    Broken,
}

/// Sends the request through the connection's rate limit and reads the
/// answer, its body up to `cap` bytes: the network part of an outbound call,
/// which runs on the host's runtime (no guest turn held meanwhile).
async fn fetch(
    connection: Arc<Connection>,
    builder: reqwest::RequestBuilder,
    cap: u64,
) -> Result<Fetched, FetchError> {
    if let Some(limiter) = &connection.limiter {
        limiter.acquire().await;
    }
    let mut response = builder.send().await.map_err(FetchError::Send)?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = if response.content_length().is_some_and(|length| length > cap) {
        Err(BodyProblem::TooLarge)
    } else {
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(None) => break Ok(body),
                Ok(Some(chunk)) if (body.len() + chunk.len()) as u64 > cap => {
                    break Err(BodyProblem::TooLarge);
                }
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Err(err) if err.is_timeout() => break Err(BodyProblem::Timeout),
                Err(_) => break Err(BodyProblem::Broken),
            }
        }
    };
    Ok(Fetched {
        status,
        headers,
        body,
    })
}

/// `Retry-After` as seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

impl http::Host for HostState {
    async fn send(&mut self, request: http::Request) -> Result<http::Response, http::Error> {
        // The network part gives the turn up while it runs (`fetch`).
        self.send_checked(request).await
    }
}

impl host::Host for HostState {
    async fn log(&mut self, level: host::Level, message: String) {
        // Counted on past the cap: the call reports how many were dropped.
        self.log_lines = self.log_lines.saturating_add(1);
        if self.log_lines > MAX_LOG_LINES {
            return;
        }
        let mut message = message;
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let consumer = self.consumer();
        let event_id = self.event_id.as_str();
        match level {
            host::Level::Trace => tracing::trace!(consumer, event_id, plugin = true, "{message}"),
            host::Level::Debug => tracing::debug!(consumer, event_id, plugin = true, "{message}"),
            host::Level::Info => tracing::info!(consumer, event_id, plugin = true, "{message}"),
            host::Level::Warn => tracing::warn!(consumer, event_id, plugin = true, "{message}"),
            host::Level::Error => tracing::error!(consumer, event_id, plugin = true, "{message}"),
        }
    }

    async fn config(&mut self, key: String) -> Option<String> {
        self.context.settings.get(&key).cloned()
    }
}

impl types::Host for HostState {}

/// Notes a refused memory growth so the failure can be reported as such.
impl ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if allowed {
            self.peak_memory = self.peak_memory.max(desired);
        } else {
            self.memory_refused = true;
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        headers.insert(
            "retry-after",
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap(),
        );
        let parsed = retry_after(&headers).unwrap();
        assert!(parsed > Duration::from_secs(100) && parsed <= Duration::from_secs(120));
        headers.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }
}
