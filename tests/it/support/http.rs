//! HTTP from the sender's side: signed POSTs to a hub by URL, and raw
//! sockets for clients that stall, send junk or read byte by byte.

use super::{SECRET, now};
use std::net::SocketAddr;
use std::time::Duration;
use switchyard::ingest::scheme::stripe::signature_header;

/// POSTs a signed event; the status, or `None` if the hub did not answer.
pub async fn post_signed(
    client: &reqwest::Client,
    base: &str,
    body: &[u8],
) -> Option<reqwest::Response> {
    client
        .post(format!("{base}/webhooks/stripe"))
        .header("content-type", "application/json")
        .header("stripe-signature", signature_header(SECRET, now(), body))
        .body(body.to_vec())
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .ok()
}

/// The head of a signed `POST /webhooks/stripe` for `body`, as raw HTTP/1.1.
pub fn signed_head(body: &[u8]) -> String {
    format!(
        "POST /webhooks/stripe HTTP/1.1\r\nHost: switchyard\r\nContent-Type: application/json\r\n\
         Stripe-Signature: {}\r\nContent-Length: {}\r\n\r\n",
        signature_header(SECRET, now(), body),
        body.len()
    )
}

/// Opens a raw connection to the hub and writes `bytes`, leaving it open
/// (a client that stalls).
pub async fn raw_connection(addr: SocketAddr, bytes: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream
}

/// Reads what the server sends until it closes the connection; panics if it
/// is still open after `within`.
pub async fn read_until_closed(stream: &mut tokio::net::TcpStream, within: Duration) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server kept the connection open for {within:?}; received {:?}",
        String::from_utf8_lossy(&received)
    );
    received
}

/// Reads one HTTP/1.1 response (with a `Content-Length` body) from a raw
/// connection: its status and body.
pub async fn read_response(stream: &mut tokio::net::TcpStream, within: Duration) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let parsed = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&received).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if received.len() >= end + 4 + length {
                    let status = text[9..12].parse().unwrap();
                    return (status, text[end + 4..end + 4 + length].to_owned());
                }
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => panic!("connection closed before a full response: {text:?}"),
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    parsed.unwrap_or_else(|_| panic!("no response within {within:?}"))
}
