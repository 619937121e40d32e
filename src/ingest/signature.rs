//! Webhook signatures, one function per scheme, each verified exactly as the
//! provider's own libraries do. The scheme of a source is config
//! ([`SourceKind`]); a provider that uses a known scheme needs no code.
//!
//! - **Stripe**: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…][,v0=<hex>]`.
//!   The signed payload is `"{t}.{raw body}"`, HMAC-SHA256 keyed by the whole
//!   secret string (`whsec_…` as UTF-8 bytes); any `v1` may match, `v0` is
//!   ignored.
//! - **Standard Webhooks / Svix**: `webhook-id`, `webhook-timestamp` and
//!   `webhook-signature: v1,<base64> [v1,<base64> …]` (or the `svix-`
//!   prefixed names). The signed payload is `"{id}.{timestamp}.{raw body}"`,
//!   HMAC-SHA256 keyed by the base64-decoded secret (its `whsec_` prefix
//!   removed); entries of other versions (`v1a`) are ignored.
//! - **GitHub**: `X-Hub-Signature-256: sha256=<hex>`, HMAC-SHA256 of the raw
//!   body keyed by the secret string.
//! - **Shopify**: `X-Shopify-Hmac-Sha256: <base64>`, HMAC-SHA256 of the raw
//!   body keyed by the app's secret string.
//!
//! Every configured secret is tried against every signature (a rotation sends
//! several), without an early exit and with constant-time comparisons. A
//! signature header sent twice is refused rather than guessed at.
//!
//! One deliberate difference from the official libraries: they only reject
//! timestamps older than the tolerance; we also reject timestamps more than the
//! tolerance in the future, which no honest sender with a sane clock produces.
//! GitHub and Shopify sign no timestamp and not their id headers: a captured
//! request can be replayed, and is then deduplicated by its delivery id.

use crate::config::{Secret, SourceKind};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
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

const STRIPE_HEADER: &str = "Stripe-Signature";
const GITHUB_HEADER: &str = "X-Hub-Signature-256";
const SHOPIFY_HEADER: &str = "X-Shopify-Hmac-Sha256";

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
    /// bytes; Standard Webhooks with the base64 after `whsec_`. The error
    /// never contains the secret.
    pub fn new(kind: SourceKind, secret: &Secret) -> Result<SigningKey, String> {
        match kind {
            SourceKind::Stripe | SourceKind::GitHub | SourceKind::Shopify => {
                Ok(SigningKey(secret.expose().as_bytes().to_vec()))
            }
            SourceKind::StandardWebhooks => {
                let text = secret.expose();
                let encoded = text.strip_prefix("whsec_").unwrap_or(text);
                match BASE64.decode(encoded) {
                    Ok(key) if !key.is_empty() => Ok(SigningKey(key)),
                    _ => Err(
                        "secret is not a Standard Webhooks key (`whsec_` followed by base64)"
                            .to_owned(),
                    ),
                }
            }
        }
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
    let keys = || keys.iter().map(|key| key.0.as_slice());
    match kind {
        SourceKind::Stripe => {
            let header = required(headers, STRIPE_HEADER)?;
            let timestamp = verify_stripe(header, payload, keys(), tolerance_secs, now)?;
            Ok(Signed {
                id: None,
                timestamp: Some(timestamp),
            })
        }
        SourceKind::StandardWebhooks => {
            standard_webhooks(headers, payload, keys(), tolerance_secs, now)
        }
        SourceKind::GitHub => {
            let header = required(headers, GITHUB_HEADER)?;
            let hex = header
                .strip_prefix("sha256=")
                .ok_or(SignatureError::Malformed {
                    header: GITHUB_HEADER,
                    reason: "expected `sha256=<hex>`",
                })?;
            let expected: Vec<String> = keys()
                .map(|key| hex::encode(hmac(key, &[payload])))
                .collect();
            any_match(&expected, &[hex])
                .then_some(Signed::default())
                .ok_or(SignatureError::NoMatch)
        }
        SourceKind::Shopify => {
            let header = required(headers, SHOPIFY_HEADER)?;
            let expected: Vec<String> = keys()
                .map(|key| BASE64.encode(hmac(key, &[payload])))
                .collect();
            any_match(&expected, &[header.trim()])
                .then_some(Signed::default())
                .ok_or(SignatureError::NoMatch)
        }
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

/// Whether any candidate equals any expected value. Every pair is compared,
/// in constant time, without an early exit: timing reveals neither which
/// secret or entry matched nor how many were tried.
fn any_match(expected: &[impl AsRef<[u8]>], candidates: &[&str]) -> bool {
    let mut matched = subtle::Choice::from(0u8);
    for expected in expected {
        let expected = expected.as_ref();
        for candidate in candidates {
            if expected.len() == candidate.len() {
                matched |= expected.ct_eq(candidate.as_bytes());
            }
        }
    }
    bool::from(matched)
}

fn check_timestamp(timestamp: i64, tolerance_secs: i64, now: i64) -> Result<(), SignatureError> {
    if timestamp < now.saturating_sub(tolerance_secs) {
        return Err(SignatureError::StaleTimestamp);
    }
    if timestamp > now.saturating_add(tolerance_secs) {
        return Err(SignatureError::FutureTimestamp);
    }
    Ok(())
}

/// The parts of a `Stripe-Signature` header that matter: the timestamp and
/// every `v1` entry. Items of other schemes (`v0`), unknown keys and items
/// without `=` are dropped; when `t` repeats, the last one counts.
///
/// Its `Display` writes the canonical header (`t=…,v1=…`), which parses back
/// to an equal value (the fuzz target `signature` checks that).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeader<'a> {
    pub timestamp: i64,
    pub v1: Vec<&'a str>,
}

impl<'a> SignatureHeader<'a> {
    pub fn parse(header: &'a str) -> Result<Self, SignatureError> {
        parse_header(header)
    }
}

fn malformed(reason: &'static str) -> SignatureError {
    SignatureError::Malformed {
        header: STRIPE_HEADER,
        reason,
    }
}

fn parse_header(header: &str) -> Result<SignatureHeader<'_>, SignatureError> {
    let mut timestamp = None;
    let mut v1 = Vec::new();
    for item in header.split(',') {
        let Some((key, value)) = item.trim().split_once('=') else {
            continue;
        };
        match key {
            "t" => {
                let parsed = value
                    .parse::<i64>()
                    .map_err(|_| malformed("timestamp is not a number"))?;
                timestamp = Some(parsed);
            }
            "v1" => v1.push(value),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(malformed("no timestamp"))?;
    if v1.is_empty() {
        return Err(malformed("no signatures found with expected scheme v1"));
    }
    Ok(SignatureHeader { timestamp, v1 })
}

impl fmt::Display for SignatureHeader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t={}", self.timestamp)?;
        for signature in &self.v1 {
            write!(f, ",v1={signature}")?;
        }
        Ok(())
    }
}

/// Hex HMAC-SHA256 of `"{timestamp}.{payload}"`: the value of a `v1` entry.
pub fn compute_signature(secret: &str, timestamp: i64, payload: &[u8]) -> String {
    hex::encode(hmac(
        secret.as_bytes(),
        &[timestamp.to_string().as_bytes(), b".", payload],
    ))
}

/// A complete `Stripe-Signature` header value, as Stripe's test helpers make it.
pub fn signature_header(secret: &str, timestamp: i64, payload: &[u8]) -> String {
    let signature = compute_signature(secret, timestamp, payload);
    SignatureHeader {
        timestamp,
        v1: vec![&signature],
    }
    .to_string()
}

/// Checks a `Stripe-Signature` header against `payload` with every secret
/// of the source.
///
/// `now` is unix seconds, passed in so tests can pin the clock.
pub fn verify(
    header: Option<&str>,
    payload: &[u8],
    secrets: &[Secret],
    tolerance_secs: i64,
    now: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::MissingHeader(STRIPE_HEADER))?;
    let keys = secrets.iter().map(|secret| secret.expose().as_bytes());
    verify_stripe(header, payload, keys, tolerance_secs, now).map(drop)
}

/// Returns the signed timestamp.
fn verify_stripe<'k>(
    header: &str,
    payload: &[u8],
    keys: impl Iterator<Item = &'k [u8]>,
    tolerance_secs: i64,
    now: i64,
) -> Result<i64, SignatureError> {
    let header = parse_header(header)?;
    check_timestamp(header.timestamp, tolerance_secs, now)?;
    let timestamp = header.timestamp.to_string();
    let expected: Vec<String> = keys
        .map(|key| hex::encode(hmac(key, &[timestamp.as_bytes(), b".", payload])))
        .collect();
    if any_match(&expected, &header.v1) {
        Ok(header.timestamp)
    } else {
        Err(SignatureError::NoMatch)
    }
}

/// The header names of Standard Webhooks; Svix sends the same under `svix-`.
struct StandardNames {
    id: &'static str,
    timestamp: &'static str,
    signature: &'static str,
}

const WEBHOOK_NAMES: StandardNames = StandardNames {
    id: "webhook-id",
    timestamp: "webhook-timestamp",
    signature: "webhook-signature",
};
const SVIX_NAMES: StandardNames = StandardNames {
    id: "svix-id",
    timestamp: "svix-timestamp",
    signature: "svix-signature",
};

fn standard_webhooks<'k>(
    headers: &HeaderMap,
    payload: &[u8],
    keys: impl Iterator<Item = &'k [u8]>,
    tolerance_secs: i64,
    now: i64,
) -> Result<Signed, SignatureError> {
    let names = if headers.contains_key(WEBHOOK_NAMES.signature)
        || !headers.contains_key(SVIX_NAMES.signature)
    {
        WEBHOOK_NAMES
    } else {
        SVIX_NAMES
    };
    let id = required(headers, names.id)?;
    let timestamp_text = required(headers, names.timestamp)?;
    let signature = required(headers, names.signature)?;
    let timestamp = timestamp_text
        .parse::<i64>()
        .map_err(|_| SignatureError::Malformed {
            header: names.timestamp,
            reason: "not a number of seconds",
        })?;
    let candidates: Vec<&str> = signature
        .split(' ')
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .collect();
    if candidates.is_empty() {
        return Err(SignatureError::Malformed {
            header: names.signature,
            reason: "no `v1,<base64>` signature",
        });
    }
    check_timestamp(timestamp, tolerance_secs, now)?;
    let expected: Vec<String> = keys
        .map(|key| {
            BASE64.encode(hmac(
                key,
                &[
                    id.as_bytes(),
                    b".",
                    timestamp_text.as_bytes(),
                    b".",
                    payload,
                ],
            ))
        })
        .collect();
    if any_match(&expected, &candidates) {
        Ok(Signed {
            id: Some(id.to_owned()),
            timestamp: Some(timestamp),
        })
    } else {
        Err(SignatureError::NoMatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_listed() {
        let all = [
            SignatureError::MissingHeader(STRIPE_HEADER),
            SignatureError::DuplicateHeader(STRIPE_HEADER),
            SignatureError::Malformed {
                header: STRIPE_HEADER,
                reason: "x",
            },
            SignatureError::StaleTimestamp,
            SignatureError::FutureTimestamp,
            SignatureError::NoMatch,
        ];
        let reasons: Vec<&str> = all.iter().map(SignatureError::reason).collect();
        assert_eq!(reasons, SignatureError::REASONS);
    }

    const SECRET: &str = "whsec_test_secret";
    const NOW: i64 = 1_700_000_000;
    const BODY: &[u8] = br#"{"id":"evt_1","object":"event","type":"invoice.paid"}"#;

    fn secrets(values: &[&str]) -> Vec<Secret> {
        values.iter().map(|v| secret(v)).collect()
    }

    fn secret(value: &str) -> Secret {
        // Secrets are normally only built by resolving a reference; tests go
        // through a file to use the same path.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, value).unwrap();
        crate::config::SecretRef::File(path).resolve().unwrap()
    }

    fn check(header: Option<&str>, body: &[u8], keys: &[&str]) -> Result<(), SignatureError> {
        verify(header, body, &secrets(keys), 300, NOW)
    }

    /// A known-answer vector computed independently with
    /// `printf '1700000000.payload' | openssl dgst -sha256 -hmac whsec_test_secret`.
    #[test]
    fn matches_openssl_known_answer() {
        assert_eq!(
            compute_signature(SECRET, NOW, b"payload"),
            "8253bb1f67c565d6573f0e7599c41988f0663ad1b9e619735dcdb9936610333f"
        );
    }

    #[test]
    fn accepts_a_valid_signature() {
        let header = signature_header(SECRET, NOW, BODY);
        assert_eq!(check(Some(&header), BODY, &[SECRET]), Ok(()));
    }

    #[test]
    fn any_v1_may_match_and_v0_is_ignored() {
        let good = compute_signature(SECRET, NOW, BODY);
        let header = format!("t={NOW},v1={},v1={good},v0=deadbeef", "0".repeat(64));
        assert_eq!(check(Some(&header), BODY, &[SECRET]), Ok(()));
        let only_v0 = format!("t={NOW},v0={good}");
        assert!(matches!(
            check(Some(&only_v0), BODY, &[SECRET]),
            Err(SignatureError::Malformed { .. })
        ));
    }

    #[test]
    fn any_configured_secret_may_match_during_rotation() {
        let header = signature_header("whsec_previous", NOW, BODY);
        assert_eq!(
            check(Some(&header), BODY, &[SECRET, "whsec_previous"]),
            Ok(())
        );
        assert_eq!(
            check(Some(&header), BODY, &[SECRET]),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn wrong_secret_is_refused() {
        let header = signature_header("whsec_other", NOW, BODY);
        assert_eq!(
            check(Some(&header), BODY, &[SECRET]),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn tampered_body_is_refused() {
        let header = signature_header(SECRET, NOW, BODY);
        let tampered = br#"{"id":"evt_1","object":"event","type":"invoice.paid" }"#;
        assert_eq!(
            check(Some(&header), tampered, &[SECRET]),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn stale_and_future_timestamps_are_refused() {
        let stale = signature_header(SECRET, NOW - 301, BODY);
        assert_eq!(
            check(Some(&stale), BODY, &[SECRET]),
            Err(SignatureError::StaleTimestamp)
        );
        let edge = signature_header(SECRET, NOW - 300, BODY);
        assert_eq!(check(Some(&edge), BODY, &[SECRET]), Ok(()));
        let future = signature_header(SECRET, NOW + 301, BODY);
        assert_eq!(
            check(Some(&future), BODY, &[SECRET]),
            Err(SignatureError::FutureTimestamp)
        );
        let skewed = signature_header(SECRET, NOW + 30, BODY);
        assert_eq!(check(Some(&skewed), BODY, &[SECRET]), Ok(()));
    }

    #[test]
    fn missing_and_malformed_headers_are_refused() {
        assert_eq!(
            check(None, BODY, &[SECRET]),
            Err(SignatureError::MissingHeader("Stripe-Signature"))
        );
        for header in [
            "",
            "garbage",
            "t=abc,v1=00",
            "v1=00",
            "t=1700000000",
            "t=,v1=",
        ] {
            assert!(
                matches!(
                    check(Some(header), BODY, &[SECRET]),
                    Err(SignatureError::Malformed { .. })
                ),
                "{header:?}"
            );
        }
        let truncated = format!("t={NOW},v1={}", &compute_signature(SECRET, NOW, BODY)[..63]);
        assert_eq!(
            check(Some(&truncated), BODY, &[SECRET]),
            Err(SignatureError::NoMatch)
        );
        let upper = format!(
            "t={NOW},v1={}",
            compute_signature(SECRET, NOW, BODY).to_uppercase()
        );
        assert_eq!(
            check(Some(&upper), BODY, &[SECRET]),
            Err(SignatureError::NoMatch),
            "stripe libraries compare the lowercase hex text"
        );
    }

    #[test]
    fn a_parsed_header_writes_back_to_an_equal_one() {
        let text = " t=17 , v0=ab,junk,v1=aa=b, t=1700000000,v1=,x=1";
        let parsed = SignatureHeader::parse(text).unwrap();
        assert_eq!(
            parsed,
            SignatureHeader {
                timestamp: NOW,
                v1: vec!["aa=b", ""]
            }
        );
        assert_eq!(parsed.to_string(), "t=1700000000,v1=aa=b,v1=");
        assert_eq!(SignatureHeader::parse(&parsed.to_string()), Ok(parsed));
    }

    #[test]
    fn errors_never_mention_the_expected_signature() {
        let expected = compute_signature(SECRET, NOW, BODY);
        let header = format!("t={NOW},v1={}", "a".repeat(64));
        let err = check(Some(&header), BODY, &[SECRET]).unwrap_err();
        assert!(!err.to_string().contains(&expected));
        assert!(!err.to_string().contains(SECRET));
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                warp::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn keys(kind: SourceKind, values: &[&str]) -> Vec<SigningKey> {
        values
            .iter()
            .map(|v| SigningKey::new(kind, &secret(v)).unwrap())
            .collect()
    }

    const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SW_TS: i64 = 1_614_265_330;
    const SW_BODY: &[u8] = br#"{"test": 2432232314}"#;
    /// The example of the Standard Webhooks specification (and Svix's docs).
    const SW_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn standard(
        signature: &str,
        ts: i64,
        keys_: &[&str],
        now: i64,
    ) -> Result<Signed, SignatureError> {
        let ts = ts.to_string();
        let map = headers(&[
            ("webhook-id", SW_ID),
            ("webhook-timestamp", &ts),
            ("webhook-signature", signature),
        ]);
        verify_request(
            SourceKind::StandardWebhooks,
            &map,
            SW_BODY,
            &keys(SourceKind::StandardWebhooks, keys_),
            300,
            now,
        )
    }

    #[test]
    fn standard_webhooks_matches_the_specification_example() {
        let signed = standard(SW_SIGNATURE, SW_TS, &[SW_SECRET], SW_TS).unwrap();
        assert_eq!(signed.id.as_deref(), Some(SW_ID));
        assert_eq!(signed.timestamp, Some(SW_TS));
        // Several space-separated entries, other versions ignored, rotation.
        let many = format!("v1a,abcd v1,{} {SW_SIGNATURE}", BASE64.encode([0u8; 32]));
        assert!(standard(&many, SW_TS, &["whsec_AAAA", SW_SECRET], SW_TS).is_ok());
        // The same key without the prefix is the same key.
        assert!(
            standard(
                SW_SIGNATURE,
                SW_TS,
                &["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
                SW_TS
            )
            .is_ok()
        );
    }

    #[test]
    fn standard_webhooks_refusals() {
        assert_eq!(
            standard(SW_SIGNATURE, SW_TS, &["whsec_AAAA"], SW_TS),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            standard(SW_SIGNATURE, SW_TS, &[SW_SECRET], SW_TS + 301),
            Err(SignatureError::StaleTimestamp)
        );
        assert_eq!(
            standard(SW_SIGNATURE, SW_TS, &[SW_SECRET], SW_TS - 301),
            Err(SignatureError::FutureTimestamp)
        );
        // A signature over another timestamp does not carry over.
        assert_eq!(
            standard(SW_SIGNATURE, SW_TS + 1, &[SW_SECRET], SW_TS),
            Err(SignatureError::NoMatch)
        );
        assert!(matches!(
            standard("v2,abc", SW_TS, &[SW_SECRET], SW_TS),
            Err(SignatureError::Malformed { .. })
        ));
        let map = headers(&[("webhook-id", SW_ID), ("webhook-signature", SW_SIGNATURE)]);
        assert_eq!(
            verify_request(
                SourceKind::StandardWebhooks,
                &map,
                SW_BODY,
                &keys(SourceKind::StandardWebhooks, &[SW_SECRET]),
                300,
                SW_TS
            ),
            Err(SignatureError::MissingHeader("webhook-timestamp"))
        );
        assert!(
            SigningKey::new(SourceKind::StandardWebhooks, &secret("whsec_not*base64")).is_err()
        );
        let err =
            SigningKey::new(SourceKind::StandardWebhooks, &secret("whsec_not*base64")).unwrap_err();
        assert!(!err.contains("not*base64"), "{err}");
    }

    #[test]
    fn svix_prefixed_headers_are_read_too() {
        let map = headers(&[
            ("svix-id", SW_ID),
            ("svix-timestamp", "1614265330"),
            ("svix-signature", SW_SIGNATURE),
        ]);
        let signed = verify_request(
            SourceKind::StandardWebhooks,
            &map,
            SW_BODY,
            &keys(SourceKind::StandardWebhooks, &[SW_SECRET]),
            300,
            SW_TS,
        )
        .unwrap();
        assert_eq!(signed.id.as_deref(), Some(SW_ID));
    }

    /// GitHub's documented example: secret `It's a Secret to Everybody`,
    /// payload `Hello, World!`.
    #[test]
    fn github_matches_its_documented_example() {
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let github = |value: &str, body: &[u8], key: &str| {
            verify_request(
                SourceKind::GitHub,
                &headers(&[("x-hub-signature-256", value)]),
                body,
                &keys(SourceKind::GitHub, &["old", key]),
                0,
                0,
            )
        };
        assert!(github(good, b"Hello, World!", "It's a Secret to Everybody").is_ok());
        assert_eq!(
            github(good, b"Hello, World?", "It's a Secret to Everybody"),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            github(good, b"Hello, World!", "other"),
            Err(SignatureError::NoMatch)
        );
        assert!(matches!(
            github(&good[7..], b"Hello, World!", "It's a Secret to Everybody"),
            Err(SignatureError::Malformed { .. })
        ));
    }

    /// Computed with Python's `hmac` and `base64` modules.
    #[test]
    fn shopify_matches_an_independent_vector() {
        let body = br#"{"id":820982911946154508}"#;
        let shopify = |value: &str, key: &str| {
            verify_request(
                SourceKind::Shopify,
                &headers(&[("x-shopify-hmac-sha256", value)]),
                body,
                &keys(SourceKind::Shopify, &[key]),
                0,
                0,
            )
        };
        let good = "AU5n5C4JV1EbE8g4yEzV+ZHbqkXpM29HXkzNAa5zicA=";
        assert!(shopify(good, "shpss_test_secret").is_ok());
        assert_eq!(shopify(good, "shpss_other"), Err(SignatureError::NoMatch));
        assert_eq!(
            shopify(&good[1..], "shpss_test_secret"),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn a_signature_header_sent_twice_is_refused() {
        let value = signature_header(SECRET, NOW, BODY);
        let map = headers(&[("stripe-signature", &value), ("stripe-signature", &value)]);
        assert_eq!(
            verify_request(
                SourceKind::Stripe,
                &map,
                BODY,
                &keys(SourceKind::Stripe, &[SECRET]),
                300,
                NOW
            ),
            Err(SignatureError::DuplicateHeader("Stripe-Signature"))
        );
        let map = headers(&[("stripe-signature", &value)]);
        assert_eq!(
            verify_request(
                SourceKind::Stripe,
                &map,
                BODY,
                &keys(SourceKind::Stripe, &[SECRET]),
                300,
                NOW
            )
            .unwrap()
            .timestamp,
            Some(NOW)
        );
    }
}
