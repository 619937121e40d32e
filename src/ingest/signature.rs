//! Stripe webhook signatures, verified exactly as Stripe's own libraries do.
//!
//! `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…][,v0=<hex>]`. The signed
//! payload is `"{t}.{raw body}"`, HMAC-SHA256 keyed by the whole secret string
//! (`whsec_…` as UTF-8 bytes). Any `v1` may match any configured secret (a
//! rotation sends several), every comparison is constant-time, `v0` is ignored.
//!
//! One deliberate difference from the official libraries: they only reject
//! timestamps older than the tolerance; we also reject timestamps more than the
//! tolerance in the future, which no honest sender with a sane clock produces.

use crate::config::Secret;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Why a signature was refused. Messages are safe to return to the caller:
/// they never contain a secret or an expected signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing `Stripe-Signature` header")]
    MissingHeader,
    #[error("malformed `Stripe-Signature` header: {0}")]
    Malformed(&'static str),
    #[error("timestamp outside the tolerance zone")]
    StaleTimestamp,
    #[error("timestamp is in the future beyond the tolerance")]
    FutureTimestamp,
    #[error("no signature matches the payload")]
    NoMatch,
}

impl SignatureError {
    /// A bounded metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            SignatureError::MissingHeader => "missing_header",
            SignatureError::Malformed(_) => "malformed_header",
            SignatureError::StaleTimestamp => "stale_timestamp",
            SignatureError::FutureTimestamp => "future_timestamp",
            SignatureError::NoMatch => "no_match",
        }
    }
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
                    .map_err(|_| SignatureError::Malformed("timestamp is not a number"))?;
                timestamp = Some(parsed);
            }
            "v1" => v1.push(value),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed("no timestamp"))?;
    if v1.is_empty() {
        return Err(SignatureError::Malformed(
            "no signatures found with expected scheme v1",
        ));
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
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("hmac takes any key size");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    hex::encode(mac.finalize().into_bytes())
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

/// Checks `header` against `payload` with every secret of the source.
///
/// `now` is unix seconds, passed in so tests can pin the clock.
pub fn verify(
    header: Option<&str>,
    payload: &[u8],
    secrets: &[Secret],
    tolerance_secs: i64,
    now: i64,
) -> Result<(), SignatureError> {
    let header = parse_header(header.ok_or(SignatureError::MissingHeader)?)?;
    if header.timestamp < now.saturating_sub(tolerance_secs) {
        return Err(SignatureError::StaleTimestamp);
    }
    if header.timestamp > now.saturating_add(tolerance_secs) {
        return Err(SignatureError::FutureTimestamp);
    }
    // Evaluate every pair without an early exit: timing does not reveal which
    // secret or which entry matched, or how many were tried.
    let mut matched = subtle::Choice::from(0u8);
    for secret in secrets {
        let expected = compute_signature(secret.expose(), header.timestamp, payload);
        for candidate in &header.v1 {
            let same_length = expected.len() == candidate.len();
            if same_length {
                matched |= expected.as_bytes().ct_eq(candidate.as_bytes());
            }
        }
    }
    if bool::from(matched) {
        Ok(())
    } else {
        Err(SignatureError::NoMatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            Err(SignatureError::Malformed(_))
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
            Err(SignatureError::MissingHeader)
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
                    Err(SignatureError::Malformed(_))
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
}
