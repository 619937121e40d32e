//! Ingest: the HTTP edge where webhooks arrive.
//!
//! Owns the public listener and its request handling, in this order: client
//! address allowlist → load shedding (concurrency and rate, global and per
//! source) → body-size cap → content type → body read (with a timeout) →
//! signature on the raw bytes, by the source's scheme → minimal parse (id,
//! type, created, livemode, account; from headers or body as the scheme
//! says) → bus append (dedup on `<source>:<event id>`) → answer. It never
//! runs business logic and never calls a consumer. Nothing is appended
//! before every check has passed.
//!
//! Invariant: **2xx only after the bus confirmed the event is durable.** If
//! the bus cannot persist, the answer is 503 with `Retry-After`, so the
//! provider retries and nothing acknowledged is ever lost. A duplicate is
//! answered 200: it was made durable the first time.
//!
//! Only [`verify_and_parse`] turns raw bytes into a [`VerifiedEvent`]; nothing
//! downstream can hold an unverified event by mistake.
//!
//! Files: [`source`] (the configured sources), [`scheme`] (one file per
//! webhook sender), [`event`] (bytes to envelope), [`edge`] (allowlists and
//! load shedding), [`server`] (the accept loop); this page holds the handler.

pub mod edge;
mod event;
pub mod scheme;
pub mod server;
mod source;

pub use event::{VerifiedEvent, verify_and_parse};
pub use source::{SourceEndpoint, SourceError, SourceProblem, endpoints};

use crate::bus::{Appended, Bus, Envelope};
use crate::config::{Config, ServerConfig, SourceConfig, SourceKind, is_event_type};
use crate::telemetry::otlp::{self, SpanKind, SpanRecord, TraceContext, Tracer};
use bytes::{Bytes, BytesMut};
use edge::{Admission, Allowlist, LimitSettings, Limits, PeerAddr, Shed};
use futures::{Stream, StreamExt};
use scheme::{SignatureError, SigningKey};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use warp::http::{HeaderMap, Method, StatusCode, header};
use warp::{Filter, Reply};

/// Seconds a provider is told to wait when the bus cannot persist.
const RETRY_AFTER_SECS: u64 = 5;

/// Why a request was refused. One place ([`IngestError::status`]) maps these
/// to HTTP; messages never contain secrets or echo the body.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("no webhook source at this path")]
    UnknownSource,
    #[error("only POST is accepted here")]
    MethodNotAllowed,
    #[error("body larger than {0} bytes")]
    TooLarge(u64),
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("body is not a webhook event: {0}")]
    BadEvent(String),
    #[error("could not read the request body")]
    BodyRead,
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error("this address may not post to this source")]
    AddressNotAllowed,
    #[error("too many requests; retry later")]
    Shed(Shed),
    #[error("event could not be persisted; retry later")]
    Unavailable,
}

impl IngestError {
    pub fn status(&self) -> StatusCode {
        match self {
            IngestError::UnknownSource => StatusCode::NOT_FOUND,
            IngestError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            IngestError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            IngestError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IngestError::Signature(_) | IngestError::BadEvent(_) | IngestError::BodyRead => {
                StatusCode::BAD_REQUEST
            }
            IngestError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            IngestError::AddressNotAllowed => StatusCode::FORBIDDEN,
            // A rate says "you, slow down"; a full house says "us, later".
            IngestError::Shed(shed) if shed.reason.is_rate() => StatusCode::TOO_MANY_REQUESTS,
            IngestError::Shed(_) | IngestError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Seconds to put in `Retry-After`, for the answers that ask for a retry.
    fn retry_after(&self) -> Option<u64> {
        match self {
            IngestError::Unavailable => Some(RETRY_AFTER_SECS),
            IngestError::Shed(shed) => Some(shed.retry_after.as_secs_f64().ceil().max(1.0) as u64),
            _ => None,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            IngestError::UnknownSource => "unknown_source",
            IngestError::MethodNotAllowed => "method_not_allowed",
            IngestError::TooLarge(_) => "too_large",
            IngestError::UnsupportedMediaType => "unsupported_media_type",
            IngestError::Signature(_) => "bad_signature",
            IngestError::BadEvent(_) => "bad_event",
            IngestError::BodyRead => "bad_body",
            IngestError::BodyTimeout => "body_timeout",
            IngestError::AddressNotAllowed => "address_not_allowed",
            IngestError::Shed(_) => "shed",
            IngestError::Unavailable => "unavailable",
        }
    }

    fn into_response(self) -> warp::reply::Response {
        let body = serde_json::json!({ "error": self.code(), "message": self.to_string() });
        let mut response =
            warp::reply::with_status(warp::reply::json(&body), self.status()).into_response();
        if let Some(seconds) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, seconds.into());
        }
        if matches!(self, IngestError::BodyTimeout) {
            // The rest of the body may still come; do not wait for it.
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

/// How long a webhook body may take to start arriving before the minimum
/// body rate applies (a TCP round trip or two, with room to spare).
const BODY_GRACE: Duration = Duration::from_secs(2);

/// Listener-wide settings of the edge (restart to change).
pub struct EdgeSettings {
    pub max_body: u64,
    pub body_read_timeout: Duration,
    /// The slowest a body may arrive.
    pub body_pace: edge::BodyPace,
    /// Bodies each client address may be sending at once.
    pub body_reads: Arc<edge::BodyReads>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Over all sources.
    pub limits: Limits,
}

impl EdgeSettings {
    pub fn from_config(server: &ServerConfig) -> EdgeSettings {
        EdgeSettings {
            max_body: server.max_body,
            body_read_timeout: server.body_read_timeout,
            body_pace: edge::BodyPace {
                grace: BODY_GRACE,
                bytes_per_second: server.min_body_rate,
            },
            body_reads: edge::BodyReads::new(server.max_bodies_per_client),
            trusted_proxies: server.trusted_proxies.clone(),
            limits: Limits::new(LimitSettings {
                max_concurrency: Some(server.max_concurrency),
                rate_limit: server.rate_limit,
            }),
        }
    }
}

/// Unix seconds; injectable so tests can pin signature time.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    })
}

/// Answers whether the hub can take traffic (bus and idempotency store
/// reachable; plugins are loaded before the listener opens).
pub type ReadinessCheck =
    Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), NotReady>> + Send + Sync>;

/// Which dependency keeps the hub from taking traffic (`/readyz`'s reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("bus unavailable")]
    Bus,
    #[error("idempotency store unavailable")]
    IdempotencyStore,
}

/// Everything the ingest handler needs.
pub struct Ingest {
    readiness: ReadinessCheck,
    metrics: Arc<crate::telemetry::metrics::Metrics>,
    /// By URL path; replaced whole by a reload (requests in progress keep the
    /// snapshot they started with).
    sources: std::sync::RwLock<Arc<HashMap<String, SourceEndpoint>>>,
    bus: Arc<dyn Bus>,
    edge: EdgeSettings,
    clock: Clock,
    tracer: Tracer,
}

impl Ingest {
    pub fn new(
        readiness: ReadinessCheck,
        metrics: Arc<crate::telemetry::metrics::Metrics>,
        sources: HashMap<String, SourceEndpoint>,
        bus: Arc<dyn Bus>,
        edge: EdgeSettings,
        clock: Clock,
        tracer: Tracer,
    ) -> Ingest {
        Ingest {
            readiness,
            metrics,
            sources: std::sync::RwLock::new(Arc::new(sources)),
            bus,
            edge,
            clock,
            tracer,
        }
    }

    /// Switches to reloaded sources. A source whose limits did not change
    /// keeps the running ones, so a reload neither refills its rate bucket
    /// nor forgets the requests in flight.
    pub fn set_sources(&self, mut sources: HashMap<String, SourceEndpoint>) {
        let mut current = self.sources.write().expect("sources lock");
        for source in sources.values_mut() {
            if let Some(old) = current.values().find(|old| old.name == source.name)
                && old.limits.settings == source.limits.settings
            {
                source.limits = Arc::clone(&old.limits);
            }
        }
        *current = Arc::new(sources);
    }

    /// The ingest span of an accepted (or refused-as-unavailable) event.
    fn export_span(
        &self,
        verified: &VerifiedEvent,
        started: std::time::SystemTime,
        appended: &Result<Appended, crate::bus::BusError>,
    ) {
        if !self.tracer.enabled() {
            return;
        }
        let envelope = &verified.envelope;
        let Some(span) = envelope
            .traceparent
            .as_deref()
            .and_then(TraceContext::parse)
        else {
            return;
        };
        let outcome = match appended {
            Ok(Appended::Stored) => "accepted",
            Ok(Appended::Duplicate) => "duplicate",
            Err(_) => "unavailable",
        };
        self.tracer.export(SpanRecord {
            name: format!("ingest {}", envelope.source),
            kind: SpanKind::Server,
            trace_id: span.trace_id,
            span_id: span.span_id,
            parent_span_id: verified.parent_span_id.clone(),
            start: started,
            end: std::time::SystemTime::now(),
            attributes: vec![
                ("switchyard.source", envelope.source.clone()),
                ("switchyard.event_id", envelope.event_id.clone()),
                ("switchyard.event_type", envelope.event_type.clone()),
                ("switchyard.outcome", outcome.to_owned()),
            ],
            error: appended.is_err(),
        });
    }

    fn sources(&self) -> Arc<HashMap<String, SourceEndpoint>> {
        Arc::clone(&self.sources.read().expect("sources lock"))
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// Reads the body up to `cap` bytes, no slower than `pace`.
async fn read_capped<S, B>(
    mut body: S,
    cap: u64,
    pace: edge::BodyPace,
) -> Result<Bytes, IngestError>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: bytes::Buf,
{
    let started = tokio::time::Instant::now();
    let mut collected = BytesMut::new();
    loop {
        let by = pace.next_chunk_by(started, collected.len() as u64);
        let Some(chunk) = tokio::time::timeout_at(by, body.next())
            .await
            .map_err(|_| IngestError::BodyTimeout)?
        else {
            break;
        };
        let mut chunk = chunk.map_err(|_| IngestError::BodyRead)?;
        if (collected.len() + chunk.remaining()) as u64 > cap {
            return Err(IngestError::TooLarge(cap));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            collected.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(collected.freeze())
}

impl Ingest {
    /// Logs and counts a refused webhook; hands the error back.
    fn refused(&self, source: &SourceEndpoint, err: IngestError) -> IngestError {
        tracing::warn!(source = %source.name, error = %err, "webhook refused");
        if let IngestError::Signature(reason) = &err {
            self.metrics
                .verification_failures
                .get_or_create(&crate::telemetry::metrics::SourceReason {
                    source: source.name.clone(),
                    reason: reason.reason().to_owned(),
                })
                .inc();
        }
        err
    }

    async fn handle<S, B>(
        &self,
        method: Method,
        path: &str,
        peer: Option<PeerAddr>,
        headers: HeaderMap,
        body: S,
    ) -> Result<(&'static str, warp::reply::Response), IngestError>
    where
        S: Stream<Item = Result<B, warp::Error>> + Unpin,
        B: bytes::Buf,
    {
        let sources = self.sources();
        let source = sources.get(path).ok_or_else(|| {
            // Often a provider configured with a wrong URL: worth a line.
            tracing::info!(path, "webhook refused: no source at this path (404)");
            IngestError::UnknownSource
        })?;
        if method != Method::POST {
            return Err(IngestError::MethodNotAllowed);
        }
        let client = peer
            .and_then(|peer| edge::client_ip(peer.0.ip(), &headers, &self.edge.trusted_proxies));
        if let Some(allowlist) = &source.allowlist
            && !allowlist.allows(client)
        {
            tracing::warn!(
                source = %source.name,
                client = %client.map_or("unknown".to_owned(), |ip| ip.to_string()),
                "webhook refused: address not allowed"
            );
            return Err(IngestError::AddressNotAllowed);
        }
        // What the headers alone can tell, before any slot or body read: a
        // missing or malformed signature header, a stale timestamp.
        if let Err(err) = scheme::precheck(
            source.kind,
            &headers,
            source.tolerance.as_secs() as i64,
            (self.clock)(),
        ) {
            return Err(self.refused(source, err.into()));
        }
        let shed = |shed: Shed| {
            self.metrics
                .ingest_shed
                .get_or_create(&crate::telemetry::metrics::SourceReason {
                    source: source.name.clone(),
                    reason: shed.reason.label().to_owned(),
                })
                .inc();
            IngestError::Shed(shed)
        };
        // Until the body is in and its signature checked: one address
        // cannot fill `max_concurrency` with slow bodies.
        let body_read = client
            .map(|client| self.edge.body_reads.start(client))
            .transpose()
            .map_err(shed)?;
        // Held until the answer is ready: the bus append counts as in flight.
        let _admission: Admission =
            Limits::admit(&source.limits, &self.edge.limits).map_err(shed)?;
        let max_body = self.edge.max_body;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > max_body) {
            return Err(IngestError::TooLarge(max_body));
        }
        if !is_json(&headers) {
            return Err(IngestError::UnsupportedMediaType);
        }
        let body = tokio::time::timeout(
            self.edge.body_read_timeout,
            read_capped(body, max_body, self.edge.body_pace),
        )
        .await
        .map_err(|_| IngestError::BodyTimeout)??;
        let verified = verify_and_parse(source, &headers, body, (self.clock)())
            .map_err(|err| self.refused(source, err))?;
        drop(body_read);
        let envelope = verified.envelope();
        let append_started = std::time::Instant::now();
        let span_started = std::time::SystemTime::now();
        let appended = self.bus.append(envelope).await;
        self.export_span(&verified, span_started, &appended);
        self.metrics
            .bus_append_duration
            .observe(append_started.elapsed().as_secs_f64());
        let appended = appended.map_err(|err| {
            tracing::error!(source = %source.name, event_id = %envelope.event_id, error = %err, "bus append failed; answering 503");
            IngestError::Unavailable
        })?;
        let status = match appended {
            Appended::Stored => "accepted",
            Appended::Duplicate => "duplicate",
        };
        tracing::debug!(
            source = %source.name,
            event_id = %envelope.event_id,
            event_type = %envelope.event_type,
            status,
            "webhook persisted"
        );
        let body = serde_json::json!({ "status": status, "id": envelope.event_id });
        Ok((status, warp::reply::json(&body).into_response()))
    }
}

/// The public listener's routes: `/healthz` and every source path.
pub fn routes(
    ingest: Arc<Ingest>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible> + Clone {
    let health = warp::path("healthz")
        .and(warp::path::end())
        .and(warp::get())
        .map(|| warp::reply::json(&serde_json::json!({ "status": "ok" })).into_response());
    let ready = {
        let ingest = Arc::clone(&ingest);
        warp::path("readyz")
            .and(warp::path::end())
            .and(warp::get())
            .then(move || {
                let check = (ingest.readiness)();
                async move {
                    match check.await {
                        Ok(()) => warp::reply::json(&serde_json::json!({ "status": "ready" }))
                            .into_response(),
                        Err(reason) => warp::reply::with_status(
                            warp::reply::json(
                                &serde_json::json!({ "status": "not_ready", "reason": reason.to_string() }),
                            ),
                            StatusCode::SERVICE_UNAVAILABLE,
                        )
                        .into_response(),
                    }
                }
            })
    };
    let webhooks = warp::method()
        .and(warp::path::full())
        .and(warp::ext::optional::<PeerAddr>())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(
            move |method, path: warp::path::FullPath, peer, headers, body| {
                let ingest = Arc::clone(&ingest);
                async move {
                    let started = std::time::Instant::now();
                    let body = Box::pin(body);
                    let sources = ingest.sources();
                    let source = sources
                        .get(path.as_str())
                        .map_or("unknown", |s| s.name.as_str());
                    let (outcome, response) = match ingest
                        .handle(method, path.as_str(), peer, headers, body)
                        .await
                    {
                        Ok((outcome, response)) => (outcome, response),
                        Err(err) => (err.code(), err.into_response()),
                    };
                    ingest.metrics.ingest(source, outcome, started.elapsed());
                    response
                }
            },
        );
    health
        .or(ready)
        .unify()
        .or(webhooks)
        .unify()
        .recover(|_| async {
            Ok::<_, std::convert::Infallible>(IngestError::UnknownSource.into_response())
        })
        .unify()
}
