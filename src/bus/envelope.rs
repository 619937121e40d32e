//! The bus envelope: what ingest hands to the bus and the bus hands to
//! dispatch. Versioned, so a rolling deploy never meets a message it cannot
//! read: the header carries the version and old readers refuse newer ones
//! loudly instead of misreading them.
//!
//! Version 2 ends with a CRC-32 of everything before it, verified at every
//! read: a bit flipped at rest is found before the event is delivered, never
//! after a downstream received altered bytes. Version 1 (no checksum) is
//! still read.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The version this build writes. Readers accept every version up to it.
pub const ENVELOPE_VERSION: u16 = 2;
/// The first version that ends with a checksum.
const CHECKSUMMED_SINCE: u16 = 2;

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
    /// How downstream `Idempotency-Key`s of this event are formed. Ingest
    /// writes [`KeyFormat::SourceScoped`]; events stored by a build before
    /// it read as [`KeyFormat::Legacy`] and keep the keys their earlier
    /// attempts used until they settle.
    #[serde(default)]
    pub key_format: KeyFormat,
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
    #[error(
        "stored event failed its integrity check (crc32 {computed:08x}, stored {stored:08x}): its bytes changed at rest"
    )]
    Checksum { stored: u32, computed: u32 },
}

/// The form of an event's downstream `Idempotency-Key`s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyFormat {
    /// `<consumer>:<event id>:<n>`: collides when two sources share an
    /// event id. Only for events stored before keys named their source.
    #[default]
    Legacy,
    /// `<consumer>:<source>:<event id>:<n>`.
    SourceScoped,
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

    /// What names this event's effects downstream: a consumer's n-th call
    /// carries `Idempotency-Key: <consumer>:<effect key>:<n>`. Unique
    /// across sources (`<source>:<effect id>`), stable across retries,
    /// replays and restarts.
    pub fn effect_key(&self) -> String {
        match self.key_format {
            KeyFormat::Legacy => self.effect_id(),
            KeyFormat::SourceScoped => format!("{}:{}", self.source, self.effect_id()),
        }
    }

    /// `[version u16][header length u32][header JSON][payload][crc32 u32]`,
    /// big endian; the CRC covers everything before it. The payload stays
    /// raw bytes: no re-encoding of what the provider signed.
    pub fn encode(&self) -> Vec<u8> {
        let header = serde_json::to_vec(self).expect("envelope header serializes");
        let mut out = Vec::with_capacity(10 + header.len() + self.payload.len());
        out.extend_from_slice(&ENVELOPE_VERSION.to_be_bytes());
        out.extend_from_slice(&(header.len() as u32).to_be_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&self.payload);
        let checksum = crc32fast::hash(&out);
        out.extend_from_slice(&checksum.to_be_bytes());
        out
    }

    /// Checks the checksum only (no parsing): what the bus does before it
    /// hands an event out.
    pub fn verify(bytes: &[u8]) -> Result<(), EnvelopeError> {
        match checked_body(bytes)?.1 {
            Some(damage) => Err(damage),
            None => Ok(()),
        }
    }

    /// Reads an envelope whose checksum holds.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let (envelope, damage) = Self::decode_unverified(bytes)?;
        match damage {
            Some(err) => Err(err),
            None => Ok(envelope),
        }
    }

    /// Reads an envelope even if its checksum fails, and says so: to park
    /// it with the reason, never to deliver it.
    pub fn decode_unverified(
        bytes: &[u8],
    ) -> Result<(Envelope, Option<EnvelopeError>), EnvelopeError> {
        let (body, damage) = checked_body(bytes)?;
        let header_len = u32::from_be_bytes(
            body.get(2..6)
                .ok_or(EnvelopeError::Truncated)?
                .try_into()
                .expect("four bytes"),
        ) as usize;
        let header_end = 6usize
            .checked_add(header_len)
            .ok_or(EnvelopeError::Truncated)?;
        let header = body.get(6..header_end).ok_or(EnvelopeError::Truncated)?;
        let mut envelope: Envelope = serde_json::from_slice(header).map_err(|err| {
            // A flipped bit in the header: the checksum says more than serde.
            damage
                .clone()
                .unwrap_or_else(|| EnvelopeError::Header(err.to_string()))
        })?;
        envelope.payload = Bytes::copy_from_slice(&body[header_end..]);
        Ok((envelope, damage))
    }
}

/// The bytes before the checksum, and the damage the checksum shows (none
/// for a version without one). Refuses versions this build cannot read.
fn checked_body(bytes: &[u8]) -> Result<(&[u8], Option<EnvelopeError>), EnvelopeError> {
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
    if version < CHECKSUMMED_SINCE {
        return Ok((bytes, None));
    }
    let split = bytes
        .len()
        .checked_sub(4)
        .filter(|split| *split >= 6)
        .ok_or(EnvelopeError::Truncated)?;
    let (body, tail) = bytes.split_at(split);
    let stored = u32::from_be_bytes(tail.try_into().expect("four bytes"));
    let computed = crc32fast::hash(body);
    let damage = (stored != computed).then_some(EnvelopeError::Checksum { stored, computed });
    Ok((body, damage))
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
            key_format: KeyFormat::SourceScoped,
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

    #[test]
    fn effect_keys_name_the_source_and_older_events_keep_their_keys() {
        let mut envelope = sample();
        assert_eq!(envelope.effect_key(), "stripe:evt_1");
        envelope.generation = Some(2);
        assert_eq!(envelope.effect_key(), "stripe:evt_1~2");
        // An envelope written before keys named their source has no
        // `key_format`: its retries keep the key its first attempt used.
        let mut header: serde_json::Value = serde_json::to_value(sample()).unwrap();
        header.as_object_mut().unwrap().remove("key_format");
        let header = serde_json::to_vec(&header).unwrap();
        let mut old = 1u16.to_be_bytes().to_vec();
        old.extend_from_slice(&(header.len() as u32).to_be_bytes());
        old.extend_from_slice(&header);
        let old = Envelope::decode(&old).unwrap();
        assert_eq!(old.key_format, KeyFormat::Legacy);
        assert_eq!(old.effect_key(), "evt_1");
    }

    #[test]
    fn a_flipped_bit_anywhere_fails_the_checksum() {
        let bytes = sample().encode();
        for position in [0usize, 3, 20, bytes.len() - 10, bytes.len() - 1] {
            let mut damaged = bytes.clone();
            damaged[position] ^= 0x04;
            assert!(
                Envelope::decode(&damaged).is_err(),
                "a flip at byte {position} went unnoticed"
            );
        }
        // In the payload: the header still reads, so the event can be
        // parked with its identity, but it is never handed out as intact.
        let mut damaged = bytes.clone();
        damaged[bytes.len() - 10] ^= 0x01;
        let (envelope, damage) = Envelope::decode_unverified(&damaged).unwrap();
        assert_eq!(envelope.event_id, "evt_1");
        assert!(matches!(damage, Some(EnvelopeError::Checksum { .. })));
        assert!(matches!(
            Envelope::decode(&damaged),
            Err(EnvelopeError::Checksum { .. })
        ));
    }

    #[test]
    fn version_1_envelopes_without_a_checksum_still_read() {
        let envelope = sample();
        let header = serde_json::to_vec(&envelope).unwrap();
        let mut old = 1u16.to_be_bytes().to_vec();
        old.extend_from_slice(&(header.len() as u32).to_be_bytes());
        old.extend_from_slice(&header);
        old.extend_from_slice(&envelope.payload);
        assert_eq!(Envelope::decode(&old).unwrap(), envelope);
    }
}
