//! Standard Webhooks (and Svix): `webhook-id`, `webhook-timestamp` and
//! `webhook-signature: v1,<base64> [v1,<base64> …]`, or the same under
//! `svix-` names. The signed payload is `"{id}.{timestamp}.{raw body}"`,
//! HMAC-SHA256 keyed by the base64-decoded secret (its `whsec_` prefix
//! removed); entries of other versions (`v1a`) are ignored. The id is the
//! signed `webhook-id`; the type is read from the body.

use super::{EventFacts, FactsError, KeyError, SignatureError, Signed, SigningKey, Window};
use crate::config::Secret;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use warp::http::HeaderMap;

/// The header names of Standard Webhooks; Svix sends the same under `svix-`.
struct Names {
    id: &'static str,
    timestamp: &'static str,
    signature: &'static str,
}

const WEBHOOK_NAMES: Names = Names {
    id: "webhook-id",
    timestamp: "webhook-timestamp",
    signature: "webhook-signature",
};
const SVIX_NAMES: Names = Names {
    id: "svix-id",
    timestamp: "svix-timestamp",
    signature: "svix-signature",
};

/// The base64 after `whsec_` (the prefix is optional).
pub(super) fn key(secret: &Secret) -> Result<Vec<u8>, KeyError> {
    let text = secret.expose();
    let encoded = text.strip_prefix("whsec_").unwrap_or(text);
    match BASE64.decode(encoded) {
        Ok(key) if !key.is_empty() => Ok(key),
        _ => Err(KeyError::NotStandardWebhooks),
    }
}

pub(super) fn verify(
    headers: &HeaderMap,
    payload: &[u8],
    keys: &[SigningKey],
    window: Window,
) -> Result<Signed, SignatureError> {
    let names = if headers.contains_key(WEBHOOK_NAMES.signature)
        || !headers.contains_key(SVIX_NAMES.signature)
    {
        WEBHOOK_NAMES
    } else {
        SVIX_NAMES
    };
    let id = super::required(headers, names.id)?;
    let timestamp_text = super::required(headers, names.timestamp)?;
    let signature = super::required(headers, names.signature)?;
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
    window.check(timestamp)?;
    let signed = [
        id.as_bytes(),
        b".",
        timestamp_text.as_bytes(),
        b".",
        payload,
    ];
    let encode = |mac: [u8; 32]| BASE64.encode(mac);
    if super::any_match(keys, &signed, encode, &candidates) {
        Ok(Signed {
            id: Some(id.to_owned()),
            timestamp: Some(timestamp),
        })
    } else {
        Err(SignatureError::NoMatch)
    }
}

/// Standard Webhooks payloads carry their type in the body.
#[derive(Deserialize)]
struct TypedEvent {
    #[serde(rename = "type")]
    event_type: String,
}

pub(super) fn facts(body: &[u8], signed: &Signed) -> Result<EventFacts, FactsError> {
    let event: TypedEvent = serde_json::from_slice(body)?;
    Ok(EventFacts {
        id: signed.id.clone().unwrap_or_default(),
        event_type: event.event_type,
        created: signed.timestamp.unwrap_or(0),
        livemode: false,
        account: None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{headers, keys, secret};
    use super::super::verify_request;
    use super::*;
    use crate::config::SourceKind;

    const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SW_TS: i64 = 1_614_265_330;
    const SW_BODY: &[u8] = br#"{"test": 2432232314}"#;
    /// The example of the Standard Webhooks specification (and Svix's docs).
    const SW_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn verify_map(map: &HeaderMap, secrets: &[&str], now: i64) -> Result<Signed, SignatureError> {
        verify_request(
            SourceKind::StandardWebhooks,
            map,
            SW_BODY,
            &keys(SourceKind::StandardWebhooks, secrets),
            300,
            now,
        )
    }

    fn standard(
        signature: &str,
        ts: i64,
        secrets: &[&str],
        now: i64,
    ) -> Result<Signed, SignatureError> {
        let ts = ts.to_string();
        let map = headers(&[
            ("webhook-id", SW_ID),
            ("webhook-timestamp", &ts),
            ("webhook-signature", signature),
        ]);
        verify_map(&map, secrets, now)
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
            verify_map(&map, &[SW_SECRET], SW_TS),
            Err(SignatureError::MissingHeader("webhook-timestamp"))
        );
        let err =
            SigningKey::new(SourceKind::StandardWebhooks, &secret("whsec_not*base64")).unwrap_err();
        assert!(!err.to_string().contains("not*base64"), "{err}");
    }

    #[test]
    fn svix_prefixed_headers_are_read_too() {
        let map = headers(&[
            ("svix-id", SW_ID),
            ("svix-timestamp", "1614265330"),
            ("svix-signature", SW_SIGNATURE),
        ]);
        let signed = verify_map(&map, &[SW_SECRET], SW_TS).unwrap();
        assert_eq!(signed.id.as_deref(), Some(SW_ID));
    }
}
