//! Mock downstreams: local stand-ins for the third-party APIs (CRM, ERP,
//! marketing) that record every request ([`Received`]), answer as scripted
//! ([`Answer`]) and can be stopped and restarted; one of each ([`Mocks`]);
//! and the check that each effect came under one idempotency key.

use super::eventually;
use bytes::Bytes;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use warp::Filter;

/// One request a mock downstream received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Bytes,
    /// The status the mock answered.
    pub status: u16,
    /// When the request arrived.
    pub at: Instant,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub delay: Duration,
    pub headers: Vec<(String, String)>,
    /// `{}` when unset.
    pub body: Option<Bytes>,
}

impl Answer {
    pub fn status(status: u16) -> Answer {
        Answer {
            status,
            delay: Duration::ZERO,
            headers: Vec::new(),
            body: None,
        }
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Answer {
        self.body = Some(body.into());
        self
    }

    pub fn delayed(mut self, delay: Duration) -> Answer {
        self.delay = delay;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.into(), value.into()));
        self
    }
}

#[derive(Default)]
struct MockState {
    received: Vec<Received>,
    /// Requests that have arrived, answered or not yet.
    arrived: usize,
    script: VecDeque<Answer>,
    default: Option<Answer>,
    /// Stops the listener (see [`MockDownstream::stop`]).
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

/// A local stand-in for a third-party API (CRM, ERP, marketing).
#[derive(Clone)]
pub struct MockDownstream {
    pub addr: SocketAddr,
    state: Arc<Mutex<MockState>>,
}

impl MockDownstream {
    pub async fn start() -> MockDownstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mock = MockDownstream {
            addr: listener.local_addr().unwrap(),
            state: Arc::default(),
        };
        mock.serve(listener);
        mock
    }

    /// Stops listening: new connections are refused and idle keep-alive
    /// ones are closed (requests in progress still get their answer).
    pub async fn stop(&self) {
        let shutdown = self.state.lock().unwrap().shutdown.take();
        if let Some(shutdown) = shutdown {
            let _ = shutdown.send(());
        }
        let addr = self.addr;
        eventually(
            Duration::from_secs(10),
            "the mock refuses connections",
            || async move { tokio::net::TcpStream::connect(addr).await.is_err() },
        )
        .await;
    }

    /// Listens again on the same port, with what it recorded so far.
    pub async fn restart(&self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let shared = Arc::clone(&self.state);
        let route = warp::method()
            .and(warp::path::full())
            .and(warp::header::headers_cloned())
            .and(warp::body::bytes())
            .then(
                move |method: warp::http::Method,
                      path: warp::path::FullPath,
                      headers: warp::http::HeaderMap,
                      body: Bytes| {
                    let state = Arc::clone(&shared);
                    async move {
                        let answer = {
                            let mut state = state.lock().unwrap();
                            state.arrived += 1;
                            state
                                .script
                                .pop_front()
                                .or_else(|| state.default.clone())
                                .unwrap_or_else(|| Answer::status(200))
                        };
                        let at = Instant::now();
                        if !answer.delay.is_zero() {
                            tokio::time::sleep(answer.delay).await;
                        }
                        state.lock().unwrap().received.push(Received {
                            method: method.to_string(),
                            path: path.as_str().to_owned(),
                            headers: headers
                                .iter()
                                .map(|(k, v)| {
                                    (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())
                                })
                                .collect(),
                            body,
                            status: answer.status,
                            at,
                        });
                        let mut response = warp::http::Response::builder().status(answer.status);
                        for (name, value) in &answer.headers {
                            response = response.header(name, value);
                        }
                        let body = answer.body.unwrap_or_else(|| Bytes::from_static(b"{}"));
                        response.body(body).unwrap()
                    }
                },
            );
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        self.state.lock().unwrap().shutdown = Some(shutdown);
        tokio::spawn(
            warp::serve(route)
                .incoming(listener)
                .graceful(async move {
                    let _ = stopped.await;
                })
                .run(),
        );
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next `n` requests get `answer`; later ones the default.
    pub fn script(&self, n: usize, answer: Answer) {
        let mut state = self.state.lock().unwrap();
        for _ in 0..n {
            state.script.push_back(answer.clone());
        }
    }

    /// Every unscripted request gets `answer` (200 when unset).
    pub fn set_default(&self, answer: Answer) {
        self.state.lock().unwrap().default = Some(answer);
    }

    /// Requests that have arrived, including those still being answered.
    pub fn arrived(&self) -> usize {
        self.state.lock().unwrap().arrived
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Requests answered 2xx: the effects that happened.
    pub fn effects(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }
}

/// One mock per example consumer: CRM, ERP and marketing.
pub struct Mocks {
    pub crm: MockDownstream,
    pub erp: MockDownstream,
    pub marketing: MockDownstream,
}

impl Mocks {
    pub async fn start() -> Mocks {
        Mocks {
            crm: MockDownstream::start().await,
            erp: MockDownstream::start().await,
            marketing: MockDownstream::start().await,
        }
    }

    /// The mock of the consumer named `consumer`.
    pub fn get(&self, consumer: &str) -> &MockDownstream {
        match consumer {
            "crm" => &self.crm,
            "erp" => &self.erp,
            "marketing" => &self.marketing,
            other => panic!("no mock for {other}"),
        }
    }
}

/// A downstream that honours `Idempotency-Key` applies each effect once: any
/// repeated call for one effect (a crash between the effect and the ack)
/// must have reused the key. `effect` names what a request does.
pub fn assert_one_key_per_effect(
    downstream: &MockDownstream,
    effect: impl Fn(&Received) -> String,
) {
    let mut keys: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for request in downstream.received() {
        keys.entry(effect(&request)).or_default().insert(
            request
                .header("idempotency-key")
                .expect("every call carries an Idempotency-Key")
                .to_owned(),
        );
    }
    for (effect, keys) in &keys {
        assert_eq!(
            keys.len(),
            1,
            "{effect} was called under several keys: {keys:?}"
        );
    }
}
