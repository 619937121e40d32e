//! GitHub: `X-Hub-Signature-256: sha256=<hex>`, HMAC-SHA256 of the raw body
//! keyed by the secret string. The event id is `X-GitHub-Delivery`, its type
//! `X-GitHub-Event`; no timestamp is signed.

use super::{IdentityHeaders, SignatureError, Signed, SigningKey};
use warp::http::HeaderMap;

const HEADER: &str = "X-Hub-Signature-256";

pub(super) const IDENTITY: IdentityHeaders = IdentityHeaders {
    id: "X-GitHub-Delivery",
    event_type: "X-GitHub-Event",
};

pub(super) fn verify(
    headers: &HeaderMap,
    payload: &[u8],
    keys: &[SigningKey],
) -> Result<Signed, SignatureError> {
    let prefix = ("sha256=", "expected `sha256=<hex>`");
    super::body_signature(headers, payload, keys, HEADER, Some(prefix), hex::encode)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{headers, keys};
    use super::super::verify_request;
    use super::*;
    use crate::config::SourceKind;

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
}
