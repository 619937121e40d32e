//! The bus envelope codec.
//!
//! Properties checked on every input:
//! - `decode(encode(x)) == x` for any envelope, payload bytes untouched.
//! - `decode` of arbitrary bytes never panics, and fails with the error the
//!   format predicts: `Truncated` without a full version and length prefix or
//!   header, `UnsupportedVersion` for version 0 or a newer one, `Header` when
//!   the header is not JSON. What it accepts has a JSON object header holding
//!   every required field, keeps the bytes after the header as the payload,
//!   and encodes to something that decodes to the same envelope.
//! - Cutting an encoded envelope anywhere inside its prefix or header gives
//!   `Truncated`; changing its version gives `UnsupportedVersion` unless the
//!   version is one this build reads.
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use switchyard::bus::envelope::{ENVELOPE_VERSION, Envelope, EnvelopeError};

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

fuzz_target!(|input: Input| {
    match input {
        Input::RoundTrip(fields) => {
            let envelope = fields.envelope();
            let encoded = envelope.encode();
            assert_eq!(Envelope::decode(&encoded), Ok(envelope.clone()));
            assert_eq!(&encoded[6 + header_len(&encoded)..], &envelope.payload[..]);
        }
        Input::Bytes(bytes) => check_bytes(&bytes),
        Input::Cut { fields, at } => {
            let envelope = fields.envelope();
            let encoded = envelope.encode();
            let header_end = 6 + header_len(&encoded);
            let at = at as usize % (encoded.len() + 1);
            let decoded = Envelope::decode(&encoded[..at]);
            if at < header_end {
                assert_eq!(decoded, Err(EnvelopeError::Truncated), "cut at {at}");
            } else {
                // The payload runs to the end of the message: a cut inside it
                // is not detectable here (the bus stores whole messages).
                let mut expected = envelope.clone();
                expected.payload = envelope.payload.slice(..at - header_end);
                assert_eq!(decoded, Ok(expected));
            }
            check_bytes(&encoded[..at]);
        }
        Input::Version { fields, version } => {
            let envelope = fields.envelope();
            let mut encoded = envelope.encode();
            encoded[0..2].copy_from_slice(&version.to_be_bytes());
            let decoded = Envelope::decode(&encoded);
            if (1..=ENVELOPE_VERSION).contains(&version) {
                assert_eq!(decoded, Ok(envelope));
            } else {
                assert_eq!(decoded, Err(EnvelopeError::UnsupportedVersion(version)));
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
    if bytes.len() < 6 || bytes.len() - 6 < header_len(bytes) {
        assert_eq!(decoded, Err(EnvelopeError::Truncated));
        return;
    }
    let header_end = 6 + header_len(bytes);
    let header = serde_json::from_slice::<serde_json::Value>(&bytes[6..header_end]);
    match decoded {
        Ok(envelope) => {
            let header = header.expect("an accepted header is JSON");
            let object = header.as_object().expect("an accepted header is an object");
            for field in REQUIRED {
                assert!(object.contains_key(field), "accepted without `{field}`");
            }
            assert_eq!(&envelope.payload[..], &bytes[header_end..]);
            assert_eq!(Envelope::decode(&envelope.encode()), Ok(envelope));
        }
        Err(EnvelopeError::Header(_)) => {}
        Err(other) => panic!("a complete message failed with {other:?}"),
    }
}
