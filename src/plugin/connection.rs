//! A `[connections.<name>]` table made usable: its base URL, its
//! credentials resolved into a header, one HTTP client that resolves names
//! through the egress policy, and the rate limit every consumer calling
//! through it shares. Plugins reach it through the host; the hub's own
//! alert webhook posts through it with [`Connection::post_json`].

use super::bindings::switchyard::plugin::http;
use super::egress::{self, AddressPolicy, AddressRefused, GuardedResolver, Lookup};
use crate::config::{AuthConfig, ConnectionConfig};
use crate::limiter::RateLimiter;
use reqwest::header::{HeaderName, HeaderValue};
use std::sync::Arc;

/// A connection as the host uses it: resolved secret, ready client, and the
/// rate limit every consumer calling through it shares.
pub struct Connection {
    pub(super) base: reqwest::Url,
    pub(super) client: reqwest::Client,
    pub(super) authorization: Option<(HeaderName, HeaderValue)>,
    pub(super) limiter: Option<RateLimiter>,
    /// Set when the base URL names an address the policy refuses: every call
    /// fails with it (the resolver never sees a literal IP).
    pub(super) refused: Option<AddressRefused>,
}

/// A `[connections.<name>]` table that cannot be built. Names no secret value.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// url's parse error, as text: url is not a direct dependency.
    #[error("bad base_url: {0}")]
    BaseUrl(String),
    #[error("cannot build http client: {0}")]
    Client(#[from] reqwest::Error),
    #[error(transparent)]
    Secret(#[from] crate::config::SecretError),
    #[error("`{0}` is not a header name")]
    HeaderName(String),
    #[error("credential is not a valid header value")]
    HeaderValue,
}

/// Why the hub's own POST through a connection ([`Connection::post_json`])
/// failed. Names no secret value.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error(transparent)]
    Refused(#[from] AddressRefused),
    #[error("bad path: {0}")]
    Path(String),
    #[error("timed out")]
    Timeout,
    #[error("unreachable")]
    Unreachable,
}

impl Connection {
    /// Resolves the connection's credentials. Errors name no secret value.
    pub fn build(name: &str, config: &ConnectionConfig) -> Result<Connection, ConnectionError> {
        Connection::build_with(name, config, Lookup::System)
    }

    pub(super) fn build_with(
        name: &str,
        config: &ConnectionConfig,
        lookup: Lookup,
    ) -> Result<Connection, ConnectionError> {
        let base = reqwest::Url::parse(&config.base_url)
            .map_err(|err| ConnectionError::BaseUrl(err.to_string()))?;
        let policy = AddressPolicy {
            allow_private: config.allow_private,
        };
        let refused = egress::base_url_refusal(&base, policy);
        if let Some(refused) = &refused {
            tracing::warn!(
                connection = name,
                "every call through this connection will be refused: {refused}"
            );
        }
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            // A redirect could lead anywhere: the plugin gets the 3xx answer
            // instead (see `exchange`).
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve the name itself, past the address policy.
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver { policy, lookup }))
            .build()?;
        let authorization = config.auth.as_ref().map(authorization).transpose()?;
        Ok(Connection {
            base,
            client,
            authorization,
            limiter: config.rate_limit.map(RateLimiter::new),
            refused,
        })
    }

    /// A POST of `body` made by the hub itself (not a plugin), e.g. an alert
    /// to an on-call tool: same base URL, credentials, timeout and address
    /// policy as a plugin's calls. Returns the status; errors name no secret.
    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> Result<u16, PostError> {
        if let Some(refused) = &self.refused {
            return Err(refused.clone().into());
        }
        let url = join_path(&self.base, path).map_err(|err| {
            PostError::Path(match err {
                http::Error::InvalidRequest(message) => message,
                other => format!("{other:?}"),
            })
        })?;
        if let Some(limiter) = &self.limiter {
            limiter.acquire().await;
        }
        let mut request = self.client.post(url).json(body);
        if let Some((name, value)) = &self.authorization {
            request = request.header(name.clone(), value.clone());
        }
        match request.send().await {
            Ok(response) => Ok(response.status().as_u16()),
            Err(err) if err.is_timeout() => Err(PostError::Timeout),
            Err(err) => Err(match AddressRefused::find_in(&err) {
                Some(refused) => refused.clone().into(),
                None => PostError::Unreachable,
            }),
        }
    }
}

fn authorization(auth: &AuthConfig) -> Result<(HeaderName, HeaderValue), ConnectionError> {
    use base64::Engine as _;
    let (name, value) = match auth {
        AuthConfig::Bearer(token) => (
            reqwest::header::AUTHORIZATION,
            format!("Bearer {}", token.resolve()?.expose()),
        ),
        AuthConfig::Basic { user, password } => {
            let pair = format!("{user}:{}", password.resolve()?.expose());
            (
                reqwest::header::AUTHORIZATION,
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ),
            )
        }
        AuthConfig::Header { name, value } => (
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ConnectionError::HeaderName(name.clone()))?,
            value.resolve()?.expose().to_owned(),
        ),
    };
    let mut value = HeaderValue::from_str(&value).map_err(|_| ConnectionError::HeaderValue)?;
    value.set_sensitive(true);
    Ok((name, value))
}

/// Appends a guest path to a base URL and refuses anything that would leave
/// the base URL's origin (`//host`, `@host`, absolute URLs).
pub(super) fn join_path(base: &reqwest::Url, path: &str) -> Result<reqwest::Url, http::Error> {
    let invalid = |why: &str| http::Error::InvalidRequest(format!("path `{path}` {why}"));
    if !path.starts_with('/') || path.starts_with("//") {
        return Err(invalid("must start with a single `/`"));
    }
    if path
        .chars()
        .any(|c| c.is_control() || c == '\\' || c == ' ' || c == '#')
    {
        return Err(invalid("has characters not allowed in a path"));
    }
    let joined = format!("{}{}", base.as_str().trim_end_matches('/'), path);
    let url = reqwest::Url::parse(&joined).map_err(|_| invalid("is not a valid URL path"))?;
    if url.origin() != base.origin() || !url.username().is_empty() {
        return Err(invalid("leaves the connection's base URL"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    #[test]
    fn paths_cannot_leave_the_connection() {
        let base = reqwest::Url::parse("http://127.0.0.1:9101/api").unwrap();
        assert_eq!(
            join_path(&base, "/contacts/cus_1").unwrap().as_str(),
            "http://127.0.0.1:9101/api/contacts/cus_1"
        );
        for bad in [
            "contacts",
            "//evil.example/x",
            "@evil.example/x",
            "/a b",
            "/x#frag",
            "/\\evil",
        ] {
            assert!(join_path(&base, bad).is_err(), "{bad}");
        }
    }

    /// The resolver's verdict reaches the caller through reqwest, for every
    /// name, at connect time. A fixed table stands in for DNS.
    #[tokio::test]
    async fn names_are_checked_against_the_policy_when_connecting() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buffer = [0u8; 1024];
                let _ = socket.read(&mut buffer).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        let table: BTreeMap<String, Vec<std::net::IpAddr>> = [
            ("inside.test", "10.1.2.3"),
            ("rebound.test", "169.254.169.254"),
            ("here.test", "127.0.0.1"),
        ]
        .into_iter()
        .map(|(name, ip)| (name.to_owned(), vec![ip.parse().unwrap()]))
        .collect();
        let strict = "refused unless the connection sets `allow_private = true`";
        for (host, allow_private, expected) in [
            (
                "inside.test",
                false,
                Err(format!("`inside.test` resolves to `10.1.2.3`, a private address: {strict}")),
            ),
            (
                "here.test",
                false,
                Err(format!("`here.test` resolves to `127.0.0.1`, a loopback address: {strict}")),
            ),
            ("here.test", true, Ok(200)),
            (
                "rebound.test",
                true,
                Err("`rebound.test` resolves to `169.254.169.254`, a cloud metadata address: never reachable".to_owned()),
            ),
        ] {
            let base_url = format!("http://{host}:{port}");
            let config = ConnectionConfig {
                base_url: base_url.clone(),
                auth: None,
                timeout: Duration::from_secs(5),
                rate_limit: None,
                allow_private,
            };
            let connection =
                Connection::build_with("c", &config, Lookup::Fixed(table.clone())).unwrap();
            let answer = connection.client.get(format!("{base_url}/x")).send().await;
            let got = answer.map(|r| r.status().as_u16()).map_err(|err| {
                AddressRefused::find_in(&err)
                    .map_or_else(|| format!("not refused: {err:?}"), ToString::to_string)
            });
            assert_eq!(got, expected, "{host}, allow_private = {allow_private}");
        }
    }
}
