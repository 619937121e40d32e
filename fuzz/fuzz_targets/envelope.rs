//! The bus envelope codec.
//!
//! Properties checked on every input:
//! - `decode(encode(x)) == x` for any envelope, payload bytes untouched.
//! - `decode` of arbitrary bytes never panics, and fails with the error the
//!   format predicts: `Truncated` without a full version and length prefix or
//!   header, `UnsupportedVersion` for version 0 or a newer one, `Checksum`
//!   when a version-2 message's CRC does not match, `Header` when the header
//!   is not JSON. What it accepts has a JSON object header holding every
//!   required field, keeps the bytes after the header (and before the CRC)
//!   as the payload, and encodes to something that decodes to the same
//!   envelope.
//! - Cutting an encoded envelope anywhere is detected (`Truncated` or
//!   `Checksum`), also inside the payload; changing its version gives
//!   `UnsupportedVersion` unless the version is one this build reads.
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use switchyard::bus::envelope::{ENVELOPE_VERSION, Envelope, EnvelopeError, KeyFormat};

#[derive(Arbitrary, Debug)]
struct Fields {
    source: String,
    event_id: String,
    event_type: String,
    created: i64,
    livemode: bool,
    account: Option<String>,
    received_at_ms: u64,
    traceparent: Option<String>,
    generation: Option<u64>,
    source_scoped_keys: bool,
    payload: Vec<u8>,
}

impl Fields {
    fn envelope(self) -> Envelope {
        Envelope {
            source: self.source,
            event_id: self.event_id,
            event_type: self.event_type,
            created: self.created,
            livemode: self.livemode,
            account: self.account,
            received_at_ms: self.received_at_ms,
            traceparent: self.traceparent,
            generation: self.generation,
            key_format: if self.source_scoped_keys {
                KeyFormat::SourceScoped
            } else {
                KeyFormat::Legacy
            },
            payload: Bytes::from(self.payload),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Input {
    RoundTrip(Fields),
    Bytes(Vec<u8>),
    Cut { fields: Fields, at: u32 },
    Version { fields: Fields, version: u16 },
}

/// Fields serde requires in the header (the `Option`s may be absent).
const REQUIRED: [&str; 6] = [
    "source",
    "event_id",
    "event_type",
    "created",
    "livemode",
    "received_at_ms",
];

fn header_len(encoded: &[u8]) -> usize {
    u32::from_be_bytes(encoded[2..6].try_into().unwrap()) as usize
}

/// The bytes a CRC covers and whether it matches, for a version-2 message.
fn checked_body(bytes: &[u8]) -> Option<(&[u8], bool)> {
    let split = bytes.len().checked_sub(4).filter(|split| *split >= 6)?;
    let (body, tail) = bytes.split_at(split);
    Some((body, crc32fast::hash(body).to_be_bytes() == tail))
}

fuzz_target!(|input: Input| {
    match input {
        Input::RoundTrip(fields) => {
            let envelope = fields.envelope();
            let encoded = envelope.encode();
            assert_eq!(Envelope::decode(&encoded), Ok(envelope.clone()));
            let payload = &encoded[6 + header_len(&encoded)..encoded.len() - 4];
            assert_eq!(payload, &envelope.payload[..]);
        }
        Input::Bytes(bytes) => check_bytes(&bytes),
        Input::Cut { fields, at } => {
            let envelope = fields.envelope();
            let encoded = envelope.encode();
            let at = at as usize % encoded.len();
            let decoded = Envelope::decode(&encoded[..at]);
            // The CRC covers the whole message: any cut is detected, inside
            // the payload too.
            assert!(
                matches!(
                    decoded,
                    Err(EnvelopeError::Truncated | EnvelopeError::Checksum { .. })
                ),
                "cut at {at}: {decoded:?}"
            );
            check_bytes(&encoded[..at]);
        }
        Input::Version { fields, version } => {
            let envelope = fields.envelope();
            let mut encoded = envelope.encode();
            encoded[0..2].copy_from_slice(&version.to_be_bytes());
            let decoded = Envelope::decode(&encoded);
            match version {
                // Version 1 has no CRC: its four bytes read as payload.
                1 => {
                    let mut expected = envelope.clone();
                    expected.payload = Bytes::copy_from_slice(&encoded[6 + header_len(&encoded)..]);
                    assert_eq!(decoded, Ok(expected));
                }
                // The CRC covers the version bytes.
                v if v == ENVELOPE_VERSION => assert_eq!(decoded, Ok(envelope)),
                _ => assert_eq!(decoded, Err(EnvelopeError::UnsupportedVersion(version))),
            }
        }
    }
});

fn check_bytes(bytes: &[u8]) {
    let decoded = Envelope::decode(bytes);
    if bytes.len() < 2 {
        assert_eq!(decoded, Err(EnvelopeError::Truncated));
        return;
    }
    let version = u16::from_be_bytes([bytes[0], bytes[1]]);
    if version == 0 || version > ENVELOPE_VERSION {
        assert_eq!(decoded, Err(EnvelopeError::UnsupportedVersion(version)));
        return;
    }
    let body = if version >= 2 {
        match checked_body(bytes) {
            None => {
                assert_eq!(decoded, Err(EnvelopeError::Truncated));
                return;
            }
            Some((_, false)) => {
                assert!(
                    matches!(
                        decoded,
                        Err(EnvelopeError::Checksum { .. } | EnvelopeError::Truncated)
                    ),
                    "a CRC mismatch went unnoticed: {decoded:?}"
                );
                return;
            }
            Some((body, true)) => body,
        }
    } else {
        bytes
    };
    if body.len() < 6 || body.len() - 6 < header_len(body) {
        assert_eq!(decoded, Err(EnvelopeError::Truncated));
        return;
    }
    let header_end = 6 + header_len(body);
    let header = serde_json::from_slice::<serde_json::Value>(&body[6..header_end]);
    match decoded {
        Ok(envelope) => {
            let header = header.expect("an accepted header is JSON");
            let object = header.as_object().expect("an accepted header is an object");
            for field in REQUIRED {
                assert!(object.contains_key(field), "accepted without `{field}`");
            }
            assert_eq!(&envelope.payload[..], &body[header_end..]);
            assert_eq!(Envelope::decode(&envelope.encode()), Ok(envelope));
        }
        Err(EnvelopeError::Header(_)) => {}
        Err(other) => panic!("a complete message failed with {other:?}"),
    }
}
