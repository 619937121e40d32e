//! The bus envelope: what ingest hands to the bus and the bus hands to
//! dispatch. Versioned, so a rolling deploy never meets a message it cannot
//! read: the header carries the version and old readers refuse newer ones
//! loudly instead of misreading them.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The version this build writes. Readers accept every version up to it.
pub const ENVELOPE_VERSION: u16 = 1;

/// One verified webhook event and the facts ingest learned about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Name of the source in routes.toml.
    pub source: String,
    /// Provider event id, unique per source.
    pub event_id: String,
    pub event_type: String,
    /// Provider creation time, unix seconds (0 if unknown).
    pub created: i64,
    pub livemode: bool,
    pub account: Option<String>,
    /// When ingest accepted it, unix milliseconds.
    pub received_at_ms: u64,
    /// W3C trace context of the ingest span.
    pub traceparent: Option<String>,
    /// Set on a forced replay: a new generation of the event, with its own
    /// idempotency keys, so effects apply again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// The raw body exactly as signed.
    #[serde(skip)]
    pub payload: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope is truncated")]
    Truncated,
    #[error("envelope version {0} is newer than this build understands ({ENVELOPE_VERSION})")]
    UnsupportedVersion(u16),
    #[error("envelope header is not valid: {0}")]
    Header(String),
}

impl Envelope {
    /// The key ingest deduplicates on: `<source>:<event id>`.
    pub fn dedup_key(&self) -> String {
        format!("{}:{}", self.source, self.event_id)
    }

    /// What idempotency keys are made of: the event id, plus the generation
    /// of a forced replay.
    pub fn effect_id(&self) -> String {
        match self.generation {
            None => self.event_id.clone(),
            Some(generation) => format!("{}~{generation}", self.event_id),
        }
    }

    /// `[version u16][header length u32][header JSON][payload]`, big endian.
    /// The payload stays raw bytes: no re-encoding of what the provider signed.
    pub fn encode(&self) -> Vec<u8> {
        let header = serde_json::to_vec(self).expect("envelope header serializes");
        let mut out = Vec::with_capacity(6 + header.len() + self.payload.len());
        out.extend_from_slice(&ENVELOPE_VERSION.to_be_bytes());
        out.extend_from_slice(&(header.len() as u32).to_be_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&self.payload);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let version = u16::from_be_bytes(
            bytes
                .get(0..2)
                .ok_or(EnvelopeError::Truncated)?
                .try_into()
                .expect("two bytes"),
        );
        if version == 0 || version > ENVELOPE_VERSION {
            return Err(EnvelopeError::UnsupportedVersion(version));
        }
        let header_len = u32::from_be_bytes(
            bytes
                .get(2..6)
                .ok_or(EnvelopeError::Truncated)?
                .try_into()
                .expect("four bytes"),
        ) as usize;
        let header_end = 6usize
            .checked_add(header_len)
            .ok_or(EnvelopeError::Truncated)?;
        let header = bytes.get(6..header_end).ok_or(EnvelopeError::Truncated)?;
        let mut envelope: Envelope =
            serde_json::from_slice(header).map_err(|err| EnvelopeError::Header(err.to_string()))?;
        envelope.payload = Bytes::copy_from_slice(&bytes[header_end..]);
        Ok(envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            source: "stripe".into(),
            event_id: "evt_1".into(),
            event_type: "invoice.paid".into(),
            created: 1_700_000_000,
            livemode: false,
            account: Some("acct_1".into()),
            received_at_ms: 1_700_000_000_123,
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            generation: None,
            payload: Bytes::from_static(br#"{"id":"evt_1","type":"invoice.paid"}"#),
        }
    }

    #[test]
    fn round_trips_with_the_payload_untouched() {
        let envelope = sample();
        assert_eq!(Envelope::decode(&envelope.encode()).unwrap(), envelope);
    }

    #[test]
    fn refuses_newer_versions_and_truncation() {
        let mut bytes = sample().encode();
        bytes[0..2].copy_from_slice(&(ENVELOPE_VERSION + 1).to_be_bytes());
        assert_eq!(
            Envelope::decode(&bytes),
            Err(EnvelopeError::UnsupportedVersion(ENVELOPE_VERSION + 1))
        );
        let bytes = sample().encode();
        assert_eq!(
            Envelope::decode(&bytes[..10]),
            Err(EnvelopeError::Truncated)
        );
        assert_eq!(Envelope::decode(&[]), Err(EnvelopeError::Truncated));
    }
}
