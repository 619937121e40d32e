//! The CloudEvents codec of an envelope: every message carries `ce-id`,
//! `ce-source`, `ce-type`, `ce-time` and `ce-specversion` as headers and the
//! raw provider JSON as its body; the `switchyard-*` headers carry the rest.

use super::super::*;
use async_nats::HeaderMap;
use std::time::UNIX_EPOCH;

pub(super) const H_SPEC: &str = "ce-specversion";
pub(super) const H_ID: &str = "ce-id";
pub(super) const H_SOURCE: &str = "ce-source";
pub(super) const H_TYPE: &str = "ce-type";
pub(super) const H_TIME: &str = "ce-time";
pub(super) const H_CONTENT_TYPE: &str = "ce-datacontenttype";
pub(super) const H_SWITCHYARD_SOURCE: &str = "switchyard-source";
pub(super) const H_CREATED: &str = "switchyard-created";
pub(super) const H_LIVEMODE: &str = "switchyard-livemode";
pub(super) const H_ACCOUNT: &str = "switchyard-account";
pub(super) const H_RECEIVED: &str = "switchyard-received-at";
pub(super) const H_TRACEPARENT: &str = "traceparent";
pub(super) const H_REASON: &str = "switchyard-reason";
pub(super) const H_ATTEMPTS: &str = "switchyard-attempts";
pub(super) const H_DEAD_AT: &str = "switchyard-dead-at";
pub(super) const H_GENERATION: &str = "switchyard-generation";
/// Present on events whose `Idempotency-Key`s name their source (see
/// [`KeyFormat`]); absent on events stored by older builds.
pub(super) const H_KEYS: &str = "switchyard-key-format";

pub(super) fn header_value(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

pub(super) fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The headers that carry an envelope (everything but the payload).
pub(super) fn envelope_headers(envelope: &Envelope) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(H_SPEC, "1.0");
    headers.insert(H_ID, header_value(&envelope.event_id).as_str());
    headers.insert(
        H_SOURCE,
        format!("/switchyard/{}", envelope.source).as_str(),
    );
    headers.insert(H_TYPE, header_value(&envelope.event_type).as_str());
    let time_ms = if envelope.created > 0 {
        envelope.created as u64 * 1000
    } else {
        envelope.received_at_ms
    };
    headers.insert(H_TIME, rfc3339_ms(time_ms).as_str());
    headers.insert(H_CONTENT_TYPE, "application/json");
    headers.insert(H_SWITCHYARD_SOURCE, envelope.source.as_str());
    headers.insert(H_CREATED, envelope.created.to_string().as_str());
    headers.insert(H_LIVEMODE, if envelope.livemode { "true" } else { "false" });
    if let Some(account) = &envelope.account {
        headers.insert(H_ACCOUNT, header_value(account).as_str());
    }
    headers.insert(H_RECEIVED, envelope.received_at_ms.to_string().as_str());
    if let Some(traceparent) = &envelope.traceparent {
        headers.insert(H_TRACEPARENT, header_value(traceparent).as_str());
    }
    if let Some(generation) = envelope.generation {
        headers.insert(H_GENERATION, generation.to_string().as_str());
    }
    if envelope.key_format == KeyFormat::SourceScoped {
        headers.insert(H_KEYS, "source-scoped");
    }
    headers
}

pub(super) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|value| value.as_str())
}

pub(super) fn corrupt(message: String) -> BusError {
    BusError::Corrupt(EnvelopeError::Header(message))
}

/// Rebuilds the envelope from a message's headers and body.
pub(super) fn envelope_from(
    headers: Option<&HeaderMap>,
    payload: &bytes::Bytes,
) -> Result<Envelope, BusError> {
    let headers = headers.ok_or_else(|| corrupt("message has no headers".into()))?;
    let required = |name: &str| {
        header(headers, name)
            .map(str::to_owned)
            .ok_or_else(|| corrupt(format!("message lacks the `{name}` header")))
    };
    let number = |name: &str| -> Result<i64, BusError> {
        required(name)?
            .parse()
            .map_err(|_| corrupt(format!("header `{name}` is not a number")))
    };
    Ok(Envelope {
        source: required(H_SWITCHYARD_SOURCE)?,
        event_id: required(H_ID)?,
        event_type: required(H_TYPE)?,
        created: number(H_CREATED)?,
        livemode: header(headers, H_LIVEMODE) == Some("true"),
        account: header(headers, H_ACCOUNT).map(str::to_owned),
        received_at_ms: number(H_RECEIVED)? as u64,
        traceparent: header(headers, H_TRACEPARENT).map(str::to_owned),
        generation: header(headers, H_GENERATION).and_then(|g| g.parse().ok()),
        key_format: match header(headers, H_KEYS) {
            Some("source-scoped") => KeyFormat::SourceScoped,
            _ => KeyFormat::Legacy,
        },
        payload: payload.clone(),
    })
}
