//! Shopify: `X-Shopify-Hmac-Sha256: <base64>`, HMAC-SHA256 of the raw body
//! keyed by the app's secret string. The event id is
//! `X-Shopify-Webhook-Id`, its type `X-Shopify-Topic` (`orders/create` is
//! routed as `orders.create`); no timestamp is signed.

use super::{IdentityHeaders, SignatureError, Signed, SigningKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use warp::http::HeaderMap;

const HEADER: &str = "X-Shopify-Hmac-Sha256";

pub(super) const IDENTITY: IdentityHeaders = IdentityHeaders {
    id: "X-Shopify-Webhook-Id",
    event_type: "X-Shopify-Topic",
};

pub(super) fn verify(
    headers: &HeaderMap,
    payload: &[u8],
    keys: &[SigningKey],
) -> Result<Signed, SignatureError> {
    let encode = |mac: [u8; 32]| BASE64.encode(mac);
    super::body_signature(headers, payload, keys, HEADER, None, encode)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{headers, keys};
    use super::super::verify_request;
    use super::*;
    use crate::config::SourceKind;

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
}
