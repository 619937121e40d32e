//! Optional OTLP trace export (OTLP/HTTP with JSON bodies to
//! `<endpoint>/v1/traces`), with the span ids switchyard already propagates:
//! the ingest span's context travels in the envelope across the bus, each
//! delivery is its child, and each outbound plugin call is the delivery's
//! child with the same ids the downstream receives in `traceparent`.
//!
//! Export never slows the data path: spans go through a bounded channel and
//! are dropped (and counted in a warning) when the exporter falls behind or
//! the collector is down. Spans carry names, ids, timings and a few bounded
//! attributes; never a payload field or a secret.

use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Spans buffered before new ones are dropped.
const QUEUE: usize = 8192;
/// Spans per export request.
const BATCH: usize = 512;
/// Longest a span waits to be exported.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// OTLP span kinds (the protocol's numbers).
#[derive(Debug, Clone, Copy)]
pub enum SpanKind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

/// One finished span.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub name: String,
    pub kind: SpanKind,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, String)>,
    pub error: bool,
}

/// A W3C trace context split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: String,
    pub span_id: String,
}

impl TraceContext {
    /// Reads `00-<trace id>-<span id>-<flags>`.
    pub fn parse(traceparent: &str) -> Option<TraceContext> {
        let mut parts = traceparent.split('-');
        let (_, trace_id, span_id) = (parts.next()?, parts.next()?, parts.next()?);
        (trace_id.len() == 32 && span_id.len() == 16).then(|| TraceContext {
            trace_id: trace_id.to_owned(),
            span_id: span_id.to_owned(),
        })
    }

    /// A new span in the same trace.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            trace_id: self.trace_id.clone(),
            span_id: new_span_id(),
        }
    }

    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
    }
}

pub fn new_span_id() -> String {
    format!("{:016x}", rand::random::<u64>().max(1))
}

pub fn new_trace_id() -> String {
    format!("{:032x}", rand::random::<u128>().max(1))
}

/// Where finished spans go. Cloning is cheap; the disabled tracer drops
/// everything at the cost of a branch.
#[derive(Clone, Default)]
pub struct Tracer {
    sink: Option<Arc<Sink>>,
}

struct Sink {
    queue: mpsc::Sender<SpanRecord>,
    dropped: AtomicU64,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("enabled", &self.enabled())
            .finish()
    }
}

impl Tracer {
    pub fn enabled(&self) -> bool {
        self.sink.is_some()
    }

    pub fn export(&self, span: SpanRecord) {
        if let Some(sink) = &self.sink
            && sink.queue.try_send(span).is_err()
        {
            let dropped = sink.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(dropped, "otlp exporter is behind; spans dropped");
            }
        }
    }

    /// The exporter `[telemetry]` asks for, if any; the environment's
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_SERVICE_NAME` come first.
    pub fn from_config(telemetry: &crate::config::TelemetryConfig) -> Tracer {
        let from_env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let endpoint = from_env("OTEL_EXPORTER_OTLP_ENDPOINT").or(telemetry.otlp_endpoint.clone());
        let service = from_env("OTEL_SERVICE_NAME").unwrap_or(telemetry.service_name.clone());
        match endpoint {
            Some(endpoint) => {
                tracing::info!(endpoint = %endpoint, service = %service, "exporting traces over OTLP");
                Tracer::start(&endpoint, &service)
            }
            None => Tracer::default(),
        }
    }

    /// Starts the exporter task for `endpoint` (e.g. `http://127.0.0.1:4318`).
    /// It ends, after a last flush, when every clone of the tracer is gone.
    pub fn start(endpoint: &str, service_name: &str) -> Tracer {
        let (queue, spans) = mpsc::channel(QUEUE);
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        tokio::spawn(export_loop(url, service_name.to_owned(), spans));
        Tracer {
            sink: Some(Arc::new(Sink {
                queue,
                dropped: AtomicU64::new(0),
            })),
        }
    }
}

async fn export_loop(url: String, service_name: String, mut spans: mpsc::Receiver<SpanRecord>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client builds");
    let mut batch = Vec::with_capacity(BATCH);
    let mut failures = 0u64;
    loop {
        let flush_at = tokio::time::Instant::now() + FLUSH_EVERY;
        let open = loop {
            tokio::select! {
                span = spans.recv() => match span {
                    Some(span) => {
                        batch.push(span);
                        if batch.len() >= BATCH {
                            break true;
                        }
                    }
                    None => break false,
                },
                _ = tokio::time::sleep_until(flush_at) => break true,
            }
        };
        if !batch.is_empty() {
            let body = encode(&service_name, &batch);
            batch.clear();
            let sent = client.post(&url).json(&body).send().await;
            match sent.map(|r| r.status()) {
                Ok(status) if status.is_success() => failures = 0,
                outcome => {
                    failures += 1;
                    if failures.is_power_of_two() {
                        let error = match outcome {
                            Ok(status) => format!("collector answered {status}"),
                            Err(err) => err.to_string(),
                        };
                        tracing::warn!(url = %url, failures, error, "otlp export failed; spans dropped");
                    }
                }
            }
        }
        if !open {
            return;
        }
    }
}

fn nanos(at: SystemTime) -> String {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
        .to_string()
}

fn string_attribute(key: &str, value: &str) -> Value {
    json!({ "key": key, "value": { "stringValue": value } })
}

/// An OTLP/JSON `ExportTraceServiceRequest`.
pub fn encode(service_name: &str, spans: &[SpanRecord]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|span| {
            let mut value = json!({
                "traceId": span.trace_id,
                "spanId": span.span_id,
                "name": span.name,
                "kind": span.kind as u8,
                "startTimeUnixNano": nanos(span.start),
                "endTimeUnixNano": nanos(span.end),
                "attributes": span
                    .attributes
                    .iter()
                    .map(|(key, value)| string_attribute(key, value))
                    .collect::<Vec<_>>(),
                // 1 = ok, 2 = error.
                "status": { "code": if span.error { 2 } else { 1 } },
            });
            if let Some(parent) = &span.parent_span_id {
                value["parentSpanId"] = json!(parent);
            }
            value
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": { "attributes": [string_attribute("service.name", service_name)] },
            "scopeSpans": [{ "scope": { "name": "switchyard" }, "spans": spans }],
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_contexts_round_trip_and_children_keep_the_trace() {
        let parent =
            TraceContext::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        assert_eq!(
            parent.traceparent(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        let child = parent.child();
        assert_eq!(child.trace_id, parent.trace_id);
        assert_ne!(child.span_id, parent.span_id);
        assert_eq!(child.span_id.len(), 16);
        assert!(TraceContext::parse("00-short-b7ad6b7169203331-01").is_none());
    }

    #[test]
    fn spans_encode_as_otlp_json() {
        let at = UNIX_EPOCH + Duration::from_millis(1_500);
        let body = encode(
            "switchyard",
            &[SpanRecord {
                name: "deliver crm".into(),
                kind: SpanKind::Internal,
                trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
                span_id: "b7ad6b7169203331".into(),
                parent_span_id: Some("00f067aa0ba902b7".into()),
                start: at,
                end: at + Duration::from_millis(2),
                attributes: vec![("switchyard.consumer", "crm".into())],
                error: true,
            }],
        );
        let span = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["parentSpanId"], "00f067aa0ba902b7");
        assert_eq!(span["startTimeUnixNano"], "1500000000");
        assert_eq!(span["endTimeUnixNano"], "1502000000");
        assert_eq!(span["kind"], 1);
        assert_eq!(span["status"]["code"], 2);
        assert_eq!(span["attributes"][0]["value"]["stringValue"], "crm");
        assert_eq!(
            body["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "switchyard"
        );
    }
}
