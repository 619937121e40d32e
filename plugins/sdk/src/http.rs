//! Outbound HTTP through the connections the operator granted in routes.toml.
//!
//! A plugin never sees base URLs, TLS settings or credentials: it names a
//! connection (`crm`, `erp`, ...) and a path, and the host does the rest. The
//! host injects `Authorization` and `Idempotency-Key` and drops any
//! `Authorization`, `Cookie` or `Host` header a plugin sets.
//!
//! [`send_json`], [`send_empty`] and [`send`] classify the outcome so that a
//! handler can simply use `?`:
//!
//! | outcome                                        | result                   |
//! |------------------------------------------------|--------------------------|
//! | downstream 2xx                                 | `Ok(Response)`           |
//! | downstream 429 or 5xx                          | `Err(Failure::Retry)`    |
//! | any other status (4xx, and unexpected 1xx/3xx) | `Err(Failure::Reject)`   |
//! | timeout, connect error                         | `Err(Failure::Retry)`    |
//! | not granted, limit exceeded, invalid request   | `Err(Failure::Reject)`   |
//!
//! Retrying a 4xx or a host-side refusal cannot succeed, so those are permanent;
//! rate limiting, server errors and network trouble usually pass.
//!
//! Failure reasons look like `"<connection> <METHOD> <path>: <what>"`, where
//! `<what>` is `HTTP <status>` (followed by `: <first 200 characters of the
//! body>` when the body is not empty), `not granted: <msg>`,
//! `limit exceeded: <msg>`, `invalid request: <msg>`, `timeout` or
//! `connect error: <msg>`.
//!
//! Need different rules (say, a 404 on DELETE means "already gone")? Use
//! [`send_raw`] and inspect the status yourself.

use std::borrow::Cow;
use std::fmt;

use crate::bindings::switchyard::plugin::http as wit;
use crate::{Failure, Value};

/// How many characters of a failing response body go into a failure reason:
/// enough to see a validation message, not so much that queues fill with HTML.
const BODY_SNIPPET_CHARS: usize = 200;

/// An outbound request on a named connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Name of a connection granted to this consumer.
    pub connection: String,
    /// HTTP method, upper case.
    pub method: String,
    /// Path and query appended to the connection's base URL; starts with `/`.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

impl Request {
    /// A request without headers or body.
    pub fn new(connection: &str, method: &str, path: &str) -> Request {
        Request {
            connection: connection.to_owned(),
            method: method.to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
            body: None,
        }
    }

    /// Add a header (builder style).
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Set a JSON body and `Content-Type: application/json` (builder style).
    pub fn json(self, body: &Value) -> Request {
        // Serializing a `Value` cannot fail: its map keys are always strings.
        let bytes = serde_json::to_vec(body).expect("serializing a serde_json::Value");
        let mut req = self.header("Content-Type", "application/json");
        req.body = Some(bytes);
        req
    }

    /// Set a raw body (builder style); set the content type yourself.
    pub fn body(mut self, body: Vec<u8>) -> Request {
        self.body = Some(body);
        self
    }

    /// `"<connection> <METHOD> <path>"`, the prefix of failure reasons.
    fn describe(&self) -> String {
        format!("{} {} {}", self.connection, self.method, self.path)
    }
}

/// A downstream answer (any status: classification happens in [`send`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First header with this name, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text, with invalid UTF-8 replaced.
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }

    /// The body parsed as JSON. A downstream that answers 2xx with a body we
    /// cannot read is a contract problem, not a blip: [`Failure::Reject`].
    pub fn json(&self) -> Result<Value, Failure> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Failure::Reject(format!("HTTP {}: response body is not JSON: {e}", self.status)))
    }
}

/// What the host reports when a request could not produce a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The connection is unknown or not granted to this consumer.
    NotGranted(String),
    /// A per-event limit was hit (number of calls, response size).
    LimitExceeded(String),
    /// The request was malformed (bad method, path or header).
    InvalidRequest(String),
    /// The downstream did not answer within the connection's timeout.
    Timeout,
    /// The downstream could not be reached.
    Connect(String),
}

impl HttpError {
    /// Whether trying again later can help.
    pub fn is_transient(&self) -> bool {
        matches!(self, HttpError::Timeout | HttpError::Connect(_))
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::NotGranted(m) => write!(f, "not granted: {m}"),
            HttpError::LimitExceeded(m) => write!(f, "limit exceeded: {m}"),
            HttpError::InvalidRequest(m) => write!(f, "invalid request: {m}"),
            HttpError::Timeout => f.write_str("timeout"),
            HttpError::Connect(m) => write!(f, "connect error: {m}"),
        }
    }
}

impl std::error::Error for HttpError {}

impl From<wit::Error> for HttpError {
    fn from(e: wit::Error) -> Self {
        match e {
            wit::Error::NotGranted(m) => HttpError::NotGranted(m),
            wit::Error::LimitExceeded(m) => HttpError::LimitExceeded(m),
            wit::Error::InvalidRequest(m) => HttpError::InvalidRequest(m),
            wit::Error::Timeout => HttpError::Timeout,
            wit::Error::Connect(m) => HttpError::Connect(m),
        }
    }
}

/// Send without classifying: any status the downstream answered is `Ok`.
pub fn send_raw(request: &Request) -> Result<Response, HttpError> {
    let req = wit::Request {
        connection: request.connection.clone(),
        method: request.method.clone(),
        path: request.path.clone(),
        headers: request.headers.clone(),
        body: request.body.clone(),
    };
    let resp = wit::send(&req)?;
    Ok(Response { status: resp.status, headers: resp.headers, body: resp.body })
}

/// Send and classify the outcome (see the module docs): `Ok` only for 2xx.
pub fn send(request: &Request) -> Result<Response, Failure> {
    let what = request.describe();
    match send_raw(request) {
        Ok(resp) if (200..300).contains(&resp.status) => Ok(resp),
        Ok(resp) => {
            let mut reason = format!("{what}: HTTP {}", resp.status);
            let text = resp.text();
            let text = text.trim();
            if !text.is_empty() {
                reason.push_str(": ");
                reason.extend(text.chars().take(BODY_SNIPPET_CHARS));
            }
            if resp.status == 429 || (500..600).contains(&resp.status) {
                Err(Failure::Retry(reason))
            } else {
                Err(Failure::Reject(reason))
            }
        }
        Err(e) if e.is_transient() => Err(Failure::Retry(format!("{what}: {e}"))),
        Err(e) => Err(Failure::Reject(format!("{what}: {e}"))),
    }
}

/// Send `body` as JSON (`Content-Type: application/json`) and classify.
pub fn send_json(connection: &str, method: &str, path: &str, body: &Value) -> Result<Response, Failure> {
    send(&Request::new(connection, method, path).json(body))
}

/// Send with no body and no headers (e.g. `DELETE`) and classify.
pub fn send_empty(connection: &str, method: &str, path: &str) -> Result<Response, Failure> {
    send(&Request::new(connection, method, path))
}
