//! The `Stripe-Signature` header parser and verifier.
//!
//! Properties checked on every input:
//! - `SignatureHeader::parse` never panics, and a parsed header written back
//!   with `Display` parses to an equal value.
//! - Verifying (through `scheme::verify_request`, the path ingest runs, with
//!   the header in a request's header map) accepts exactly when the header's timestamp (the last `t`) is
//!   within the tolerance and one of its `v1` entries is the HMAC of a
//!   configured secret over that timestamp and this body. The HMAC is computed
//!   here with the `hmac` crate, not with the library's helper, and the
//!   signatures in built headers come from that independent helper too. So
//!   verifying never accepts a pair that was not produced with a configured
//!   secret (another secret, another body, another timestamp, an altered
//!   signature) and never refuses one that was.
//! - Errors never contain a secret or an expected signature.
#![no_main]

use arbitrary::Arbitrary;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;
use std::sync::OnceLock;
use switchyard::config::{Secret, SecretRef, SourceKind};
use switchyard::ingest::scheme::stripe::SignatureHeader;
use switchyard::ingest::scheme::{SignatureError, SigningKey, verify_request};
use http::{HeaderMap, HeaderValue};

/// Verifies as ingest does: `header` as the request's `Stripe-Signature`,
/// the secrets as Stripe keys. `None` when no HTTP request can carry the
/// header as text (control characters, non-ASCII): ingest never sees it.
fn verify(
    header: Option<&str>,
    body: &[u8],
    secrets: &[Secret],
    tolerance: i64,
    now: i64,
) -> Option<Result<(), SignatureError>> {
    let mut headers = HeaderMap::new();
    if let Some(header) = header {
        let value = HeaderValue::from_str(header).ok()?;
        value.to_str().ok()?;
        headers.insert("stripe-signature", value);
    }
    let keys: Vec<SigningKey> = secrets
        .iter()
        .map(|secret| SigningKey::new(SourceKind::Stripe, secret).unwrap())
        .collect();
    Some(verify_request(SourceKind::Stripe, &headers, body, &keys, tolerance, now).map(drop))
}

/// Secrets a source may be configured with: a usual one, one with non-ASCII
/// text, one longer than the HMAC block (hashed before use).
const CONFIGURED: [&str; 3] = [
    "whsec_test_secret",
    "whsec_rotation_ü_secret",
    "whsec_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789",
];
/// Secrets nobody configured, some close to configured ones.
const OTHERS: [&str; 4] = [
    "whsec_attacker",
    "whsec_test_secreT",
    "whsec_test_secre",
    "",
];

/// The configured secrets, resolved the way the router resolves them (from
/// files), once per process.
fn configured() -> &'static [Secret] {
    static SECRETS: OnceLock<Vec<Secret>> = OnceLock::new();
    SECRETS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("switchyard-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secrets = CONFIGURED
            .iter()
            .enumerate()
            .map(|(i, value)| {
                let path = dir.join(i.to_string());
                std::fs::write(&path, value).unwrap();
                let secret = SecretRef::File(path).resolve().unwrap();
                assert_eq!(secret.expose(), *value);
                secret
            })
            .collect();
        std::fs::remove_dir_all(&dir).unwrap();
        secrets
    })
}

fn hmac_hex(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[derive(Arbitrary, Debug)]
enum Input {
    /// Any header text and body.
    Raw {
        header: String,
        body: Vec<u8>,
        now: i64,
        tolerance: u16,
    },
    /// A header assembled from items, some of them genuine signatures.
    Built {
        entries: Vec<Entry>,
        body: Vec<u8>,
        /// Which of `CONFIGURED` the source has (bit i = secret i).
        enabled: u8,
        now: i64,
        tolerance: u16,
    },
}

#[derive(Arbitrary, Debug)]
struct Entry {
    item: Item,
    /// Spaces and tabs around the item, which the parser trims.
    pad: u8,
}

#[derive(Arbitrary, Debug)]
enum Item {
    Timestamp(Time),
    /// `v1=` a signature made with `key` at `at` over the body, maybe altered.
    Signed {
        key: Key,
        at: Time,
        alter: Alter,
    },
    /// `v0=` a genuine signature: another scheme, always ignored.
    V0 {
        key: Key,
        at: Time,
    },
    /// `v1=` any text.
    V1Text(String),
    /// An item that is neither `t` nor `v1`.
    Other(String),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Key {
    Configured(u8),
    Other(u8),
}

impl Key {
    fn secret(self) -> &'static str {
        match self {
            Key::Configured(i) => CONFIGURED[usize::from(i) % CONFIGURED.len()],
            Key::Other(i) => OTHERS[usize::from(i) % OTHERS.len()],
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Time {
    /// Seconds from `now`, so the tolerance edges are reached often.
    Near(i16),
    Exact(i64),
}

impl Time {
    fn at(self, now: i64) -> i64 {
        match self {
            Time::Near(offset) => now.saturating_add(i64::from(offset)),
            Time::Exact(t) => t,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Alter {
    None,
    /// Signed over another body.
    Body(Vec<u8>),
    Uppercase,
    /// Drops the last `n % 64 + 1` hex digits.
    Truncate(u8),
    /// Flips one hex digit.
    Flip(u8),
}

fn pad(n: u8) -> (&'static str, &'static str) {
    const PADS: [&str; 4] = ["", " ", "\t", "  "];
    (PADS[usize::from(n & 3)], PADS[usize::from((n >> 2) & 3)])
}

fuzz_target!(|input: Input| {
    match input {
        Input::Raw {
            header,
            body,
            now,
            tolerance,
        } => check_raw(&header, &body, now, i64::from(tolerance)),
        Input::Built {
            entries,
            body,
            enabled,
            now,
            tolerance,
        } => check_built(&entries, &body, enabled, now, i64::from(tolerance)),
    }
});

/// Round trip, and `verify` agrees with the HMAC oracle.
fn check_parsed(header: &str, body: &[u8], secrets: &[Secret], now: i64, tolerance: i64) {
    let parsed = SignatureHeader::parse(header);
    if let Ok(parsed) = &parsed {
        let written = parsed.to_string();
        assert_eq!(
            SignatureHeader::parse(&written).as_ref(),
            Ok(parsed),
            "round trip through {written:?}"
        );
    }
    assert_eq!(
        verify(None, body, secrets, tolerance, now),
        Some(Err(SignatureError::MissingHeader("Stripe-Signature")))
    );
    let Some(result) = verify(Some(header), body, secrets, tolerance, now) else {
        return;
    };
    let expected = match parsed {
        Err(err) => Err(err),
        Ok(h) if h.timestamp < now.saturating_sub(tolerance) => Err(SignatureError::StaleTimestamp),
        Ok(h) if h.timestamp > now.saturating_add(tolerance) => {
            Err(SignatureError::FutureTimestamp)
        }
        Ok(h) => {
            let genuine = secrets.iter().any(|secret| {
                let expected = hmac_hex(secret.expose(), h.timestamp, body);
                h.v1.iter().any(|candidate| *candidate == expected)
            });
            if genuine {
                Ok(())
            } else {
                Err(SignatureError::NoMatch)
            }
        }
    };
    assert_eq!(result, expected, "header {header:?}");
    if let Err(err) = result {
        let message = err.to_string();
        for secret in CONFIGURED.iter().filter(|s| s.len() >= 8) {
            assert!(!message.contains(secret), "{message}");
        }
        if let Ok(h) = SignatureHeader::parse(header) {
            for secret in secrets {
                let expected = hmac_hex(secret.expose(), h.timestamp, body);
                assert!(!message.contains(&expected), "{message}");
            }
        }
    }
}

fn check_raw(header: &str, body: &[u8], now: i64, tolerance: i64) {
    check_parsed(header, body, configured(), now, tolerance);
}

fn check_built(entries: &[Entry], body: &[u8], enabled: u8, now: i64, tolerance: i64) {
    let secrets: Vec<Secret> = configured()
        .iter()
        .enumerate()
        .filter(|(i, _)| enabled & (1 << i) != 0)
        .map(|(_, s)| s.clone())
        .collect();
    let enabled_key = |key: Key| match key {
        Key::Configured(i) => enabled & (1 << (usize::from(i) % CONFIGURED.len())) != 0,
        Key::Other(_) => false,
    };

    let mut items = Vec::new();
    let mut timestamp = None;
    // The entries a sender holding an enabled secret produced for this body,
    // with the time they were signed at.
    let mut produced = Vec::new();
    // Free text in `v1` entries: the fuzzer may learn a real signature from
    // the comparisons above; such an entry was produced with the secret too.
    let mut texts = Vec::new();
    for entry in entries {
        let text = match &entry.item {
            Item::Timestamp(time) => {
                let t = time.at(now);
                timestamp = Some(t);
                format!("t={t}")
            }
            Item::Signed { key, at, alter } => {
                let at = at.at(now);
                let real = hmac_hex(key.secret(), at, body);
                let sent = match alter {
                    Alter::None => real.clone(),
                    Alter::Body(other) => hmac_hex(key.secret(), at, other),
                    Alter::Uppercase => real.to_uppercase(),
                    Alter::Truncate(n) => real[..real.len() - (usize::from(*n) % 64 + 1)].into(),
                    Alter::Flip(n) => {
                        let mut bytes = real.clone().into_bytes();
                        let i = usize::from(*n) % bytes.len();
                        bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
                        String::from_utf8(bytes).unwrap()
                    }
                };
                if sent == real && enabled_key(*key) {
                    produced.push(at);
                }
                format!("v1={sent}")
            }
            Item::V0 { key, at } => format!("v0={}", hmac_hex(key.secret(), at.at(now), body)),
            Item::V1Text(text) => {
                let text = text.replace(',', "");
                // Keep the value as the parser will see it (items are trimmed).
                let text = text.trim_end().to_owned();
                texts.push(text.clone());
                format!("v1={text}")
            }
            Item::Other(text) => {
                let text = text.replace(',', "");
                match text.trim().split_once('=') {
                    Some(("t" | "v1", _)) => continue,
                    _ => text,
                }
            }
        };
        let (before, after) = pad(entry.pad);
        items.push(format!("{before}{text}{after}"));
    }
    let header = items.join(",");
    check_parsed(&header, body, &secrets, now, tolerance);

    // The same verdict, stated from how the header was made.
    let Some(result) = verify(Some(&header), body, &secrets, tolerance, now) else {
        return;
    };
    let has_v1 = entries
        .iter()
        .any(|e| matches!(e.item, Item::Signed { .. } | Item::V1Text(_)));
    match timestamp {
        Some(t) if has_v1 => {
            let in_tolerance =
                t >= now.saturating_sub(tolerance) && t <= now.saturating_add(tolerance);
            let learned = texts.iter().any(|text| {
                secrets
                    .iter()
                    .any(|secret| *text == hmac_hex(secret.expose(), t, body))
            });
            let made_by_a_secret_holder = produced.contains(&t) || learned;
            assert_eq!(
                result.is_ok(),
                in_tolerance && made_by_a_secret_holder,
                "header {header:?}: {result:?}"
            );
        }
        _ => assert!(
            matches!(result, Err(SignatureError::Malformed { .. })),
            "header {header:?}: {result:?}"
        ),
    }
}
