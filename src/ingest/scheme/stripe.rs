//! Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…][,v0=<hex>]`.
//! The signed payload is `"{t}.{raw body}"`, HMAC-SHA256 keyed by the whole
//! secret string (`whsec_…` as UTF-8 bytes); any `v1` may match, `v0` is
//! ignored. The event's id, type, `created`, `livemode` and `account` are
//! read from the body.

use super::{EventFacts, FactsError, SignatureError, Signed, SigningKey, Window};
use serde::Deserialize;
use std::fmt;
use warp::http::HeaderMap;

pub const HEADER: &str = "Stripe-Signature";

pub(super) fn verify(
    headers: &HeaderMap,
    payload: &[u8],
    keys: &[SigningKey],
    window: Window,
) -> Result<Signed, SignatureError> {
    let header = SignatureHeader::parse(super::required(headers, HEADER)?)?;
    window.check(header.timestamp)?;
    let timestamp = header.timestamp.to_string();
    let signed = [timestamp.as_bytes(), b".", payload];
    if super::any_match(keys, &signed, hex::encode, &header.v1) {
        Ok(Signed {
            id: None,
            timestamp: Some(header.timestamp),
        })
    } else {
        Err(SignatureError::NoMatch)
    }
}

/// The fields of a Stripe event routing needs.
#[derive(Deserialize)]
struct StripeEvent {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    created: Option<i64>,
    #[serde(default)]
    livemode: Option<bool>,
    #[serde(default)]
    account: Option<String>,
}

pub(super) fn facts(body: &[u8]) -> Result<EventFacts, FactsError> {
    let event: StripeEvent = serde_json::from_slice(body)?;
    Ok(EventFacts {
        id: event.id,
        event_type: event.event_type,
        created: event.created.unwrap_or(0),
        livemode: event.livemode.unwrap_or(false),
        account: event.account,
    })
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

fn malformed(reason: &'static str) -> SignatureError {
    SignatureError::Malformed {
        header: HEADER,
        reason,
    }
}

impl<'a> SignatureHeader<'a> {
    pub fn parse(header: &'a str) -> Result<Self, SignatureError> {
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
    hex::encode(super::hmac(
        secret.as_bytes(),
        &[timestamp.to_string().as_bytes(), b".", payload],
    ))
}

/// A complete `Stripe-Signature` header value, as Stripe's test helpers make
/// it (and `switchyard sign`).
pub fn signature_header(secret: &str, timestamp: i64, payload: &[u8]) -> String {
    let signature = compute_signature(secret, timestamp, payload);
    SignatureHeader {
        timestamp,
        v1: vec![&signature],
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::super::testing::{headers, keys};
    use super::super::verify_request;
    use super::*;
    use crate::config::SourceKind;

    const SECRET: &str = "whsec_test_secret";
    const NOW: i64 = 1_700_000_000;
    const BODY: &[u8] = br#"{"id":"evt_1","object":"event","type":"invoice.paid"}"#;

    /// Verifies through the production entry point, as ingest does.
    fn check(header: Option<&str>, body: &[u8], secrets: &[&str]) -> Result<(), SignatureError> {
        let map = headers(
            &header
                .map(|value| (HEADER, value))
                .into_iter()
                .collect::<Vec<_>>(),
        );
        verify_request(
            SourceKind::Stripe,
            &map,
            body,
            &keys(SourceKind::Stripe, secrets),
            300,
            NOW,
        )
        .map(drop)
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

    #[test]
    fn a_signature_header_sent_twice_is_refused() {
        let value = signature_header(SECRET, NOW, BODY);
        let verify = |map: &HeaderMap| {
            verify_request(
                SourceKind::Stripe,
                map,
                BODY,
                &keys(SourceKind::Stripe, &[SECRET]),
                300,
                NOW,
            )
        };
        let twice = headers(&[("stripe-signature", &value), ("stripe-signature", &value)]);
        assert_eq!(
            verify(&twice),
            Err(SignatureError::DuplicateHeader("Stripe-Signature"))
        );
        let once = headers(&[("stripe-signature", &value)]);
        assert_eq!(verify(&once).unwrap().timestamp, Some(NOW));
    }
}
