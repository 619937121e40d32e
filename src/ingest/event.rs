//! From verified bytes to an event: what every body must be (UTF-8, one
//! JSON object, not nested past what consumers can decode), the routing
//! facts its scheme gives, and the envelope with its trace context. Only
//! [`verify_and_parse`] makes a [`VerifiedEvent`].

use super::*;

/// Longest accepted event id.
pub(super) const MAX_EVENT_ID: usize = 255;
/// Deepest accepted JSON nesting: serde_json's own default limit, so every
/// accepted event can be decoded by consumers using it.
pub(super) const MAX_DEPTH: usize = 128;

/// An event whose signature checked out. Constructed only by
/// [`verify_and_parse`].
#[derive(Debug)]
pub struct VerifiedEvent {
    pub(super) envelope: Envelope,
    /// The sender's span, when it sent a `traceparent`: the ingest span's parent.
    pub(super) parent_span_id: Option<String>,
}

impl VerifiedEvent {
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }
}

/// Whether JSON `body` nests deeper than `limit` (strings are skipped, so a
/// `[` inside one does not count). Linear, no recursion.
pub(super) fn nests_deeper_than(body: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in body {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Checks what every event body must be, then reads id, type and the rest
/// as the source's scheme says.
pub(super) fn facts(
    kind: SourceKind,
    headers: &HeaderMap,
    body: &[u8],
    signed: &scheme::Signed,
) -> Result<scheme::EventFacts, IngestError> {
    // JSON is UTF-8 (RFC 8259), but serde_json does not check the strings it
    // skips; plugins receive the payload as text and would see it altered.
    if std::str::from_utf8(body).is_err() {
        return Err(IngestError::BadEvent("body is not UTF-8".into()));
    }
    // serde would also read a struct from a JSON array; only objects are events.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(IngestError::BadEvent("expected a JSON object".into()));
    }
    if nests_deeper_than(body, MAX_DEPTH) {
        return Err(IngestError::BadEvent(format!(
            "JSON nested deeper than {MAX_DEPTH} levels"
        )));
    }
    scheme::event_facts(kind, headers, body, signed)
        .map_err(|err| IngestError::BadEvent(err.to_string()))
}

/// Checks the signature on the raw bytes, then reads the few fields routing
/// needs. The body is kept byte for byte.
pub fn verify_and_parse(
    source: &SourceEndpoint,
    headers: &HeaderMap,
    body: Bytes,
    now: i64,
) -> Result<VerifiedEvent, IngestError> {
    let signed = scheme::verify_request(
        source.kind,
        headers,
        &body,
        &source.keys,
        source.tolerance.as_secs() as i64,
        now,
    )?;
    let event = facts(source.kind, headers, &body, &signed)?;
    if event.id.is_empty()
        || event.id.len() > MAX_EVENT_ID
        || !event.id.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(IngestError::BadEvent(
            "`id` must be 1 to 255 printable ASCII characters".into(),
        ));
    }
    if !is_event_type(&event.event_type) {
        return Err(IngestError::BadEvent(
            "`type` must be dot-separated tokens of a-z, 0-9 and _".into(),
        ));
    }
    // Join the sender's trace when it sent one; start a trace otherwise, so
    // every event can be followed to each downstream call. The envelope
    // carries the ingest span: deliveries become its children.
    let sender = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_traceparent(v))
        .and_then(TraceContext::parse);
    let ingest_span = match &sender {
        Some(sender) => sender.child(),
        None => TraceContext {
            trace_id: otlp::new_trace_id(),
            span_id: otlp::new_span_id(),
        },
    };
    let traceparent = Some(ingest_span.traceparent());
    Ok(VerifiedEvent {
        envelope: Envelope {
            source: source.name.clone(),
            event_id: event.id,
            event_type: event.event_type,
            created: event.created,
            livemode: event.livemode,
            account: event.account,
            received_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            traceparent,
            generation: None,
            key_format: crate::bus::envelope::KeyFormat::SourceScoped,
            payload: body,
        },
        parent_span_id: sender.map(|sender| sender.span_id),
    })
}

/// W3C `traceparent`: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
pub(super) fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() == 4
        && hex(parts[0], 2)
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1] != "0".repeat(32)
}
