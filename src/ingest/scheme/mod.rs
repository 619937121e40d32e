//! Webhook senders, one file per scheme: how its secret becomes an HMAC key,
//! how its signature is checked (exactly as the provider's own libraries
//! do), and where its event id and type come from. The scheme of a source is
//! config ([`SourceKind`]); a provider that uses a known scheme needs no code.
//!
//! - [`stripe`]: `Stripe-Signature: t=<unix>,v1=<hex>…` over `"{t}.{body}"`.
//! - [`standard_webhooks`]: `webhook-id` / `-timestamp` / `-signature` (or
//!   Svix's `svix-` names) over `"{id}.{timestamp}.{body}"`.
//! - [`github`]: `X-Hub-Signature-256: sha256=<hex>` over the body.
//! - [`shopify`]: `X-Shopify-Hmac-Sha256: <base64>` over the body.
//!
//! Adding a sender is a file here and an arm in each of the three matches
//! below ([`SigningKey::new`], [`verify_request`], [`event_facts`]), plus its
//! name in [`SourceKind`]. A sender that signs the raw body with one header
//! (GitHub, Shopify) is a call of [`body_signature`].
//!
//! What every scheme shares lives here: every configured secret is tried
//! against every signature (a rotation sends several), without an early exit
//! and with constant-time comparisons; a signature header sent twice is
//! refused rather than guessed at.
//!
//! One deliberate difference from the official libraries: they only reject
//! timestamps older than the tolerance; we also reject timestamps more than the
//! tolerance in the future, which no honest sender with a sane clock produces.
//! GitHub and Shopify sign no timestamp and not their id headers: a captured
//! request can be replayed, and is then deduplicated by its delivery id.

pub mod github;
pub mod shopify;
pub mod standard_webhooks;
pub mod stripe;

use crate::config::{Secret, SourceKind};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use subtle::ConstantTimeEq;
use warp::http::HeaderMap;

type HmacSha256 = Hmac<Sha256>;

/// Why a signature was refused. Messages are safe to return to the caller:
/// they never contain a secret or an expected signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing `{0}` header")]
    MissingHeader(&'static str),
    #[error("`{0}` header sent more than once")]
    DuplicateHeader(&'static str),
    #[error("malformed `{header}` header: {reason}")]
    Malformed {
        header: &'static str,
        reason: &'static str,
    },
    #[error("timestamp outside the tolerance zone")]
    StaleTimestamp,
    #[error("timestamp is in the future beyond the tolerance")]
    FutureTimestamp,
    #[error("no signature matches the payload")]
    NoMatch,
}

impl SignatureError {
    /// Every label [`SignatureError::reason`] gives.
    pub const REASONS: [&'static str; 6] = [
        "missing_header",
        "duplicate_header",
        "malformed_header",
        "stale_timestamp",
        "future_timestamp",
        "no_match",
    ];

    /// A bounded metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            SignatureError::MissingHeader(_) => "missing_header",
            SignatureError::DuplicateHeader(_) => "duplicate_header",
            SignatureError::Malformed { .. } => "malformed_header",
            SignatureError::StaleTimestamp => "stale_timestamp",
            SignatureError::FutureTimestamp => "future_timestamp",
            SignatureError::NoMatch => "no_match",
        }
    }
}

/// A secret its scheme cannot use as a key. Never contains the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("secret is not a Standard Webhooks key (`whsec_` followed by base64)")]
    NotStandardWebhooks,
}

/// The HMAC key of one secret, as its scheme reads the secret. Built once
/// at start (and reload), so a malformed key fails there, not per request.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey([redacted])")
    }
}

impl SigningKey {
    /// Stripe, GitHub and Shopify key the HMAC with the secret's UTF-8
    /// bytes; Standard Webhooks decodes it.
    pub fn new(kind: SourceKind, secret: &Secret) -> Result<SigningKey, KeyError> {
        let bytes = match kind {
            SourceKind::StandardWebhooks => standard_webhooks::key(secret)?,
            SourceKind::Stripe | SourceKind::GitHub | SourceKind::Shopify => {
                secret.expose().as_bytes().to_vec()
            }
        };
        Ok(SigningKey(bytes))
    }

    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// What a valid signature established besides the body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Signed {
    /// The event id the scheme signed (Standard Webhooks' `webhook-id`).
    pub id: Option<String>,
    /// The signed timestamp, unix seconds.
    pub timestamp: Option<i64>,
}

/// Checks the request's signature with every key of the source, by the
/// source's scheme. `now` is unix seconds, passed in so tests can pin it.
pub fn verify_request(
    kind: SourceKind,
    headers: &HeaderMap,
    payload: &[u8],
    keys: &[SigningKey],
    tolerance_secs: i64,
    now: i64,
) -> Result<Signed, SignatureError> {
    let window = Window {
        tolerance_secs,
        now,
    };
    match kind {
        SourceKind::Stripe => stripe::verify(headers, payload, keys, window),
        SourceKind::StandardWebhooks => standard_webhooks::verify(headers, payload, keys, window),
        SourceKind::GitHub => github::verify(headers, payload, keys),
        SourceKind::Shopify => shopify::verify(headers, payload, keys),
    }
}

/// What can be checked before the body arrives: the signature headers are
/// present, once, and well formed, and a signed timestamp is within the
/// tolerance. A request failing this is refused without its body being
/// read (a stale `t=1` cannot hold a connection while it dribbles a body).
pub fn precheck(
    kind: SourceKind,
    headers: &HeaderMap,
    tolerance_secs: i64,
    now: i64,
) -> Result<(), SignatureError> {
    // Verifying with no key runs every check but the HMAC, which then
    // cannot match: that "no match" is the only outcome that passes.
    match verify_request(kind, headers, b"", &[], tolerance_secs, now) {
        Ok(_) | Err(SignatureError::NoMatch) => Ok(()),
        Err(err) => Err(err),
    }
}

/// The routing facts of a verified body, before their shape is checked.
pub struct EventFacts {
    pub id: String,
    pub event_type: String,
    pub created: i64,
    pub livemode: bool,
    pub account: Option<String>,
}

/// Why a verified body is not an event of its scheme.
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("missing `{0}` header")]
    MissingHeader(&'static str),
    #[error(transparent)]
    Header(#[from] SignatureError),
}

/// Reads id, type and the rest from a verified JSON object and its headers,
/// as the scheme says.
pub fn event_facts(
    kind: SourceKind,
    headers: &HeaderMap,
    body: &[u8],
    signed: &Signed,
) -> Result<EventFacts, FactsError> {
    match kind {
        SourceKind::Stripe => stripe::facts(body),
        SourceKind::StandardWebhooks => standard_webhooks::facts(body, signed),
        SourceKind::GitHub => github::IDENTITY.facts(headers, body, signed),
        SourceKind::Shopify => shopify::IDENTITY.facts(headers, body, signed),
    }
}

/// Where a scheme's event id and type come from, when not from the body.
pub struct IdentityHeaders {
    id: &'static str,
    event_type: &'static str,
}

impl IdentityHeaders {
    fn facts(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        signed: &Signed,
    ) -> Result<EventFacts, FactsError> {
        serde_json::from_slice::<serde::de::IgnoredAny>(body)?;
        let text = |name: &'static str| -> Result<String, FactsError> {
            let value = single_header(headers, name)?.ok_or(FactsError::MissingHeader(name))?;
            Ok(value.trim().to_owned())
        };
        Ok(EventFacts {
            id: text(self.id)?,
            // Shopify topics are `orders/create`: dots make them event types
            // that route patterns like `orders.*` match.
            event_type: text(self.event_type)?.replace('/', "."),
            created: signed.timestamp.unwrap_or(0),
            livemode: false,
            account: None,
        })
    }
}

/// The check of schemes that sign only the raw body, in one header: the
/// header's value, `prefix` removed, must be the encoded HMAC of the body
/// under one of the keys. Nothing but the body is signed.
fn body_signature(
    headers: &HeaderMap,
    payload: &[u8],
    keys: &[SigningKey],
    header: &'static str,
    prefix: Option<(&'static str, &'static str)>,
    encode: impl Fn([u8; 32]) -> String,
) -> Result<Signed, SignatureError> {
    let value = required(headers, header)?.trim();
    let signature = match prefix {
        None => value,
        Some((prefix, expected)) => {
            value
                .strip_prefix(prefix)
                .ok_or(SignatureError::Malformed {
                    header,
                    reason: expected,
                })?
        }
    };
    any_match(keys, &[payload], encode, &[signature])
        .then_some(Signed::default())
        .ok_or(SignatureError::NoMatch)
}

/// The clock a signed timestamp is checked against.
#[derive(Clone, Copy)]
struct Window {
    tolerance_secs: i64,
    now: i64,
}

impl Window {
    fn check(self, timestamp: i64) -> Result<(), SignatureError> {
        if timestamp < self.now.saturating_sub(self.tolerance_secs) {
            return Err(SignatureError::StaleTimestamp);
        }
        if timestamp > self.now.saturating_add(self.tolerance_secs) {
            return Err(SignatureError::FutureTimestamp);
        }
        Ok(())
    }
}

/// The value of a header that must appear once, as text.
pub fn single_header<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
) -> Result<Option<&'a str>, SignatureError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(SignatureError::DuplicateHeader(name));
    }
    value
        .to_str()
        .map(Some)
        .map_err(|_| SignatureError::Malformed {
            header: name,
            reason: "not ASCII",
        })
}

fn required<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, SignatureError> {
    single_header(headers, name)?.ok_or(SignatureError::MissingHeader(name))
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("hmac takes any key size");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Whether any candidate equals the encoded HMAC of `parts` under any key.
/// Every pair is compared, in constant time, without an early exit: timing
/// reveals neither which secret or entry matched nor how many were tried.
fn any_match(
    keys: &[SigningKey],
    parts: &[&[u8]],
    encode: impl Fn([u8; 32]) -> String,
    candidates: &[&str],
) -> bool {
    let mut matched = subtle::Choice::from(0u8);
    for key in keys {
        let expected = encode(hmac(key.bytes(), parts));
        for candidate in candidates {
            if expected.len() == candidate.len() {
                matched |= expected.as_bytes().ct_eq(candidate.as_bytes());
            }
        }
    }
    bool::from(matched)
}

#[cfg(test)]
mod testing {
    //! What the schemes' tests share: secrets made the production way and
    //! header maps.

    use super::*;

    pub fn secret(value: &str) -> Secret {
        // Secrets are normally only built by resolving a reference; tests go
        // through a file to use the same path.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, value).unwrap();
        crate::config::SecretRef::File(path).resolve().unwrap()
    }

    pub fn keys(kind: SourceKind, values: &[&str]) -> Vec<SigningKey> {
        values
            .iter()
            .map(|v| SigningKey::new(kind, &secret(v)).unwrap())
            .collect()
    }

    pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                warp::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_listed() {
        let header = "Stripe-Signature";
        let all = [
            SignatureError::MissingHeader(header),
            SignatureError::DuplicateHeader(header),
            SignatureError::Malformed {
                header,
                reason: "x",
            },
            SignatureError::StaleTimestamp,
            SignatureError::FutureTimestamp,
            SignatureError::NoMatch,
        ];
        let reasons: Vec<&str> = all.iter().map(SignatureError::reason).collect();
        assert_eq!(reasons, SignatureError::REASONS);
    }

    #[test]
    fn the_window_takes_its_edges_and_refuses_past_them() {
        let window = Window {
            tolerance_secs: 300,
            now: 1_000,
        };
        assert_eq!(window.check(700), Ok(()));
        assert_eq!(window.check(1_300), Ok(()));
        assert_eq!(window.check(699), Err(SignatureError::StaleTimestamp));
        assert_eq!(window.check(1_301), Err(SignatureError::FutureTimestamp));
    }
}
