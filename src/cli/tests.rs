//! Every filter flag of the queue commands reaches the admin API: each
//! command runs against a local server that records what it is asked.

use super::target::ConfigGiven;
use super::{Cli, run};
use clap::Parser;
use std::sync::{Arc, Mutex};
use switchyard::admin::QueueFilter;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// One request as the recorder saw it.
#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    /// Path and query, as sent.
    target: String,
    body: Vec<u8>,
}

/// A stand-in admin API that answers every list with `[]` and every bulk
/// action with an empty dry run, and keeps each request.
async fn recorder() -> (String, Arc<Mutex<Vec<Recorded>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                let mut line = String::new();
                stream.read_line(&mut line).await.unwrap();
                let mut parts = line.split_whitespace();
                let (method, target) = (parts.next().unwrap(), parts.next().unwrap());
                let mut length = 0;
                loop {
                    let mut header = String::new();
                    stream.read_line(&mut header).await.unwrap();
                    if header.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = header.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                stream.read_exact(&mut body).await.unwrap();
                let answer = if method == "GET" {
                    "[]"
                } else {
                    r#"{"dry_run":true,"matched":0,"done":0,"sample":[],"job":null}"#
                };
                record.lock().unwrap().push(Recorded {
                    method: method.to_owned(),
                    target: target.to_owned(),
                    body,
                });
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                stream
                    .get_mut()
                    .write_all(response.as_bytes())
                    .await
                    .unwrap();
            });
        }
    });
    (base, seen)
}

/// The filter a request carried: the query of a GET, the body's `filter`
/// of a POST.
fn filter_of(request: &Recorded) -> QueueFilter {
    if request.method == "GET" {
        let url = reqwest::Url::parse(&format!("http://recorder{}", request.target)).unwrap();
        let fields: serde_json::Map<String, serde_json::Value> = url
            .query_pairs()
            .map(|(key, value)| {
                let value = match value.parse::<u64>() {
                    Ok(number) if key != "ids" => number.into(),
                    _ => value.into_owned().into(),
                };
                (key.into_owned(), value)
            })
            .collect();
        serde_json::from_value(fields.into()).unwrap()
    } else {
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        serde_json::from_value(body["filter"].clone()).unwrap()
    }
}

#[tokio::test]
async fn every_filter_flag_of_the_queue_commands_reaches_the_api() {
    let (base, seen) = recorder().await;
    let given = ConfigGiven {
        path: "/nonexistent/routes.toml".into(),
        explicit: false,
    };
    let filters = [
        "--consumer",
        "crm",
        "--type",
        "invoice.*",
        "--error",
        "HTTP 5",
        "--ids",
        "3,5",
    ];
    let expected = QueueFilter {
        consumer: Some("crm".into()),
        event_type: Some("invoice.*".into()),
        error: Some("HTTP 5".into()),
        ids: Some(vec![3, 5]),
        ..Default::default()
    };
    let cases = [
        (["dlq", "list"], "GET", "/v1/queues/dead_letter"),
        (["dlq", "replay"], "POST", "/v1/queues/dead_letter/replay"),
        (["dlq", "discard"], "POST", "/v1/queues/dead_letter/discard"),
        (["review", "list"], "GET", "/v1/queues/review"),
        (["review", "replay"], "POST", "/v1/queues/review/replay"),
        (["review", "discard"], "POST", "/v1/queues/review/discard"),
    ];
    for (command, method, path) in cases {
        let args = ["switchyard"]
            .into_iter()
            .chain(command)
            .chain(filters)
            .chain(["--admin-url", &base, "--admin-token", "a-token"]);
        let cli = Cli::try_parse_from(args).unwrap();
        run(cli.command, &given).await.unwrap();
        let request = seen.lock().unwrap().pop().expect("one request");
        assert_eq!(request.method, method, "{command:?}");
        assert!(
            request.target.split('?').next() == Some(path),
            "{command:?}: {}",
            request.target
        );
        assert_eq!(
            serde_json::to_value(filter_of(&request)).unwrap(),
            serde_json::to_value(&expected).unwrap(),
            "{command:?} sent {request:?}"
        );
    }
}
