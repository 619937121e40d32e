//! The integration harness: a real switchyard on port 0, real plugins built
//! from `plugins/`, and local mock downstreams (CRM, ERP, marketing) that
//! record what they receive and can be told to fail.

use bytes::Bytes;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchyard::app::{RunningHub, StartOptions};
use switchyard::config::Config;
use switchyard::ingest::scheme::stripe::signature_header;
use warp::Filter;

pub const SECRET: &str = "whsec_harness_secret_0123456789";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A plugin built from the current source by `plugins/build.sh`. Tests never
/// use the shipped `plugins/dist` copies, so they always test today's code.
pub fn plugin_path(name: &str) -> PathBuf {
    let path = repo_root()
        .join("plugins/target/wasm32-unknown-unknown/release")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "plugin `{}` is not built: run `plugins/build.sh` (or the README's test command) first",
        path.display()
    );
    path
}

pub fn fixture(name: &str) -> Bytes {
    let path = repo_root().join("tests/fixtures/events").join(name);
    Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Waits for `check` to hold, polling, up to `within`. Panics with `what`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Warnings and errors logged by switchyard in this test process, as JSON
/// objects. A global subscriber, installed by the first call: call it before
/// starting the hub whose lines a test wants, and pick them out by a
/// consumer name no other test uses.
pub fn captured_logs() -> Vec<Value> {
    static LINES: std::sync::OnceLock<Arc<Mutex<Vec<String>>>> = std::sync::OnceLock::new();
    let lines = LINES.get_or_init(|| {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let installed = tracing_subscriber::fmt()
            .json()
            .with_env_filter("switchyard=warn")
            .with_writer(move || LogLine {
                buffer: Vec::new(),
                sink: Arc::clone(&sink),
            })
            .try_init();
        assert!(installed.is_ok(), "another global subscriber is installed");
        lines
    });
    lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// One formatted log event on its way into [`captured_logs`].
struct LogLine {
    buffer: Vec<u8>,
    sink: Arc<Mutex<Vec<String>>>,
}

impl std::io::Write for LogLine {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        // Bounded: every test in the binary logs here once it is installed.
        let mut sink = self.sink.lock().unwrap();
        if sink.len() < 200_000 {
            sink.push(String::from_utf8_lossy(&self.buffer).into_owned());
        }
    }
}

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

/// What goes into a test's routes.toml besides the connections, consumers and
/// routes the test writes itself.
pub struct HubOptions {
    /// TOML for `[connections.*]`, `[consumers.*]` and `[[routes]]`, where
    /// `{plugin:NAME}` becomes the path of a freshly built plugin.
    pub routes: String,
    /// Use Redis (at `redis_url`) with this key prefix instead of the
    /// embedded idempotency store.
    pub redis_prefix: Option<String>,
    pub redis_url: String,
    /// How long an idempotency lease lasts (`[idempotency] lease`).
    pub idempotency_lease: &'static str,
    /// Listen on this port instead of port 0 (for child processes, which
    /// cannot hand back the port they got).
    pub listen_port: Option<u16>,
    /// The admin API (with `admin`) on this port instead of port 0, for the
    /// same reason.
    pub admin_port: Option<u16>,
    /// The `[bus]` engine keys; the embedded bus under `data/bus` if `None`.
    pub bus: Option<String>,
    /// Extra `[bus]` keys.
    pub bus_extra: String,
    /// Extra `[server]` keys.
    pub server_extra: String,
    /// More tables, appended at the end (e.g. `[telemetry]`).
    pub extra_tables: String,
    /// Reuse this data directory (to restart on the same bus).
    pub dir: Option<Arc<tempfile::TempDir>>,
    pub max_body: &'static str,
    /// Signing secrets of the `stripe` source, newest first.
    pub secrets: Vec<String>,
    /// Extra `[sources.stripe]` keys.
    pub stripe_extra: String,
    /// Enable the admin API (token [`ADMIN_TOKEN`]) on a free port.
    pub admin: bool,
}

impl HubOptions {
    pub fn new(routes: impl Into<String>) -> HubOptions {
        HubOptions {
            routes: routes.into(),
            redis_prefix: None,
            redis_url: "redis://127.0.0.1:6379".to_owned(),
            idempotency_lease: "2m",
            listen_port: None,
            admin_port: None,
            bus: None,
            bus_extra: String::new(),
            server_extra: String::new(),
            extra_tables: String::new(),
            dir: None,
            max_body: "64KiB",
            secrets: vec![SECRET.to_owned()],
            stripe_extra: String::new(),
            admin: false,
        }
    }
}

/// The three example consumers wired as in the shipped routes.toml, against
/// mock downstreams. `retry` is the inline retry table for each.
pub fn example_routes(
    crm: &MockDownstream,
    erp: &MockDownstream,
    marketing: &MockDownstream,
    retry: &str,
) -> String {
    format!(
        r#"
[connections.crm]
base_url = "{crm}"
auth = {{ bearer = "file:crm_token" }}
timeout = "5s"

[connections.erp]
base_url = "{erp}"
timeout = "5s"

[connections.marketing]
base_url = "{marketing}"
timeout = "5s"

[consumers.crm]
plugin = "{{plugin:crm}}"
connections = ["crm"]
retry = {retry}

[consumers.erp]
plugin = "{{plugin:erp}}"
connections = ["erp"]
retry = {retry}

[consumers.marketing]
plugin = "{{plugin:marketing}}"
connections = ["marketing"]
retry = {retry}

[[routes]]
source = "stripe"
events = ["customer.*"]
consumers = ["crm", "marketing"]

[[routes]]
source = "stripe"
events = ["invoice.paid", "invoice.payment_succeeded", "charge.refunded"]
consumers = ["erp"]

[[routes]]
source = "stripe"
events = ["checkout.session.completed"]
consumers = ["marketing"]
"#,
        crm = crm.url(),
        erp = erp.url(),
        marketing = marketing.url(),
    )
}

pub const CRM_TOKEN: &str = "crm-token-never-seen-by-plugins";
pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";

/// A running switchyard with its data directory and a client.
pub struct TestHub {
    pub hub: RunningHub,
    pub dir: Arc<tempfile::TempDir>,
    pub client: reqwest::Client,
    pub config_path: PathBuf,
}

/// Writes routes.toml (and the secret files it references) into `dir`.
pub fn write_config(dir: &Path, options: &HubOptions) -> PathBuf {
    let mut secret_refs = Vec::new();
    for (index, secret) in options.secrets.iter().enumerate() {
        std::fs::write(dir.join(format!("stripe_secret_{index}")), secret).unwrap();
        secret_refs.push(format!("\"file:stripe_secret_{index}\""));
    }
    let secret_refs = secret_refs.join(", ");
    std::fs::write(dir.join("crm_token"), CRM_TOKEN).unwrap();
    std::fs::write(dir.join("admin_token"), ADMIN_TOKEN).unwrap();
    let admin = if options.admin {
        format!(
            "[admin]\nlisten = \"127.0.0.1:{}\"\ntoken = \"file:admin_token\"\n",
            options.admin_port.unwrap_or(0)
        )
    } else {
        String::new()
    };
    let lease = options.idempotency_lease;
    let idempotency = match &options.redis_prefix {
        Some(prefix) => format!(
            "kind = \"redis\"\nurl = \"{url}\"\nkey_prefix = \"{prefix}\"\nlease = \"{lease}\"",
            url = options.redis_url
        ),
        None => format!("kind = \"embedded\"\npath = \"data/idempotency\"\nlease = \"{lease}\""),
    };
    let mut routes = options.routes.clone();
    while let Some(start) = routes.find("{plugin:") {
        let end = start + routes[start..].find('}').unwrap();
        let name = &routes[start + 8..end];
        let path = plugin_path(name);
        routes.replace_range(start..=end, &path.display().to_string());
    }
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
max_body = "{max_body}"
shutdown_grace = "5s"
{server_extra}

{admin}
[bus]
{bus}
{bus_extra}

[idempotency]
{idempotency}

[sources.stripe]
kind = "stripe"
secrets = [{secret_refs}]
{stripe_extra}

{routes}

{extra_tables}
"#,
        extra_tables = options.extra_tables,
        port = options.listen_port.unwrap_or(0),
        max_body = options.max_body,
        bus = options
            .bus
            .as_deref()
            .unwrap_or("kind = \"embedded\"\npath = \"data/bus\""),
        bus_extra = options.bus_extra,
        server_extra = options.server_extra,
        stripe_extra = options.stripe_extra,
    );
    let path = dir.join("routes.toml");
    std::fs::write(&path, text).unwrap();
    path
}

impl TestHub {
    pub async fn start(options: HubOptions) -> TestHub {
        let dir = options
            .dir
            .clone()
            .unwrap_or_else(|| Arc::new(tempfile::tempdir().unwrap()));
        let config_path = write_config(dir.path(), &options);
        let config = Config::load(&config_path).unwrap_or_else(|err| panic!("{err}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hub = switchyard::app::start(
            config,
            StartOptions {
                listener: Some(listener),
                config_path: Some(config_path.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|errors| {
            panic!(
                "hub did not start: {}",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        });
        TestHub {
            hub,
            dir,
            client: reqwest::Client::new(),
            config_path,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.hub.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.hub.admin_addr.expect("admin enabled")
        )
    }

    /// Calls the admin API with the right token.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, self.admin_url(path))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("admin answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The admin listener's Prometheus exposition.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(self.admin_url("/metrics"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("admin answers")
            .text()
            .await
            .expect("a text body")
    }

    /// Waits for the background job an admin answer started to finish, and
    /// returns its final status.
    pub async fn finished_job(&self, started: &Value) -> Value {
        let id = started["job"]["id"]
            .as_u64()
            .expect("the answer names a job");
        let path = format!("/v1/jobs/{id}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, job) = self.admin(reqwest::Method::GET, &path, None).await;
            assert_eq!(status, 200);
            if job["state"] != "running" {
                return job;
            }
            assert!(Instant::now() < deadline, "job {id} did not finish: {job}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// POSTs `body` signed with the harness secret at the current time.
    pub async fn send(&self, body: &[u8]) -> (u16, Value) {
        let header = signature_header(SECRET, now(), body);
        self.post("/webhooks/stripe", body, &[("stripe-signature", &header)])
            .await
    }

    /// Like [`TestHub::send`], but hands back the whole response (headers
    /// included).
    pub async fn send_response(&self, body: &[u8]) -> reqwest::Response {
        self.client
            .post(self.url("/webhooks/stripe"))
            .header("content-type", "application/json")
            .header("stripe-signature", signature_header(SECRET, now(), body))
            .body(body.to_vec())
            .send()
            .await
            .expect("hub answers")
    }

    pub async fn send_fixture(&self, name: &str) -> (u16, Value) {
        self.send(&fixture(name)).await
    }

    /// POSTs with `Content-Type: application/json` plus `headers`.
    pub async fn post(&self, path: &str, body: &[u8], headers: &[(&str, &str)]) -> (u16, Value) {
        let mut request = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_vec());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("hub answers");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Waits until no consumer has anything left in its queue.
    pub async fn drained(&self, within: Duration) {
        eventually(within, "every consumer queue drained", || async {
            let status = self.hub.status().await.unwrap();
            status.iter().all(|c| c.backlog == 0)
        })
        .await;
    }

    /// How many events of `source` the bus holds for `consumer`, whatever
    /// their state: what ingest persisted.
    pub async fn persisted(&self, consumer: &str, source: &str) -> usize {
        self.hub
            .bus()
            .history(
                consumer,
                source,
                &switchyard::config::EventPattern::Any,
                0,
                u64::MAX,
            )
            .await
            .unwrap()
            .len()
    }

    pub async fn status_of(&self, consumer: &str) -> switchyard::admin::ConsumerStatus {
        self.hub
            .status()
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.name == consumer)
            .expect("consumer exists")
    }
}

/// A unique event body, shaped like a Stripe event.
pub fn synthetic_event(id: &str, event_type: &str, object: Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": now(),
        "data": { "object": object },
        "livemode": false,
        "pending_webhooks": 1,
        "request": { "id": null, "idempotency_key": null },
        "type": event_type,
    }))
    .unwrap()
}

/// A unique suffix for ids, prefixes and names in one test run.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{:016x}", rand::random::<u64>())
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `switchyard serve` as a child process (killed when dropped); returns once
/// it answers `/healthz` on `port`.
pub async fn spawn_hub(config: &Path, port: u16) -> tokio::process::Child {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
    command
        .args(["serve", "--config"])
        .arg(config)
        .stderr(std::process::Stdio::null());
    spawn_command(command, port).await
}

/// Spawns `command` (a `switchyard serve`, perhaps behind a wrapper such as
/// `nsenter`; its stderr is the caller's choice) and returns once it answers
/// `/healthz` on `port`. Killed when dropped.
pub async fn spawn_command(
    mut command: tokio::process::Command,
    port: u16,
) -> tokio::process::Child {
    let child = command
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    eventually(Duration::from_secs(30), "the hub answers /healthz", || {
        let client = client.clone();
        async move {
            client
                .get(format!("http://127.0.0.1:{port}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;
    child
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

/// Event `n` of a run: even ones are new customers (an effect on the CRM),
/// odd ones paid invoices (an effect on the ERP). Returns the body and the
/// name of its effect.
pub fn numbered_event(run: &str, n: usize) -> (Vec<u8>, String) {
    if n.is_multiple_of(2) {
        let customer = format!("cus_{run}_{n}");
        let body = synthetic_event(
            &format!("evt_{customer}"),
            "customer.created",
            serde_json::json!({"id": customer, "object": "customer", "email": null, "name": null}),
        );
        (body, format!("contact {customer}"))
    } else {
        let invoice = format!("in_{run}_{n}");
        let body = synthetic_event(
            &format!("evt_{invoice}"),
            "invoice.paid",
            serde_json::json!({
                "id": invoice, "object": "invoice", "customer": "cus_1",
                "amount_paid": 1000, "currency": "usd",
                "metadata": {"order_id": format!("ord_{n}")},
            }),
        );
        (body, format!("payment {invoice}"))
    }
}

pub fn crm_effect(request: &Received) -> String {
    format!("contact {}", request.path.trim_start_matches("/contacts/"))
}

pub fn erp_effect(request: &Received) -> String {
    format!(
        "payment {}",
        request.json()["invoice"].as_str().unwrap_or("?")
    )
}

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

/// One consumer, `crm` (the crm plugin) on `customer.*`, calling `crm`;
/// `consumer_keys` are more lines for `[consumers.crm]`.
pub fn crm_routes(crm: &MockDownstream, consumer_keys: &str) -> String {
    format!(
        r#"
[connections.crm]
base_url = "{crm}"

[consumers.crm]
plugin = "{{plugin:crm}}"
connections = ["crm"]
{consumer_keys}

[[routes]]
source = "stripe"
events = ["customer.*"]
consumers = ["crm"]
"#,
        crm = crm.url()
    )
}

/// A signature header value made by an independent implementation:
/// Python's `hmac`, `hashlib` and `base64` modules, in a subprocess.
/// `scheme` is `standard-webhooks` (with `[id, timestamp]` in `extra`),
/// `github` or `shopify`.
pub fn python_signature(scheme: &str, secret: &str, body: &[u8], extra: &[&str]) -> String {
    const SIGNER: &str = r#"
import base64, hashlib, hmac, sys
scheme, secret = sys.argv[1], sys.argv[2]
body = sys.stdin.buffer.read()
def mac(key, message):
    return hmac.new(key, message, hashlib.sha256).digest()
if scheme == "standard-webhooks":
    msg_id, timestamp = sys.argv[3], sys.argv[4]
    key = base64.b64decode(secret[len("whsec_"):] if secret.startswith("whsec_") else secret)
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    print("v1," + base64.b64encode(mac(key, signed)).decode())
elif scheme == "github":
    print("sha256=" + mac(secret.encode(), body).hex())
elif scheme == "shopify":
    print(base64.b64encode(mac(secret.encode(), body)).decode())
else:
    sys.exit("unknown scheme " + scheme)
"#;
    use std::io::Write;
    let mut child = std::process::Command::new("python3")
        .args(["-c", SIGNER, scheme, secret])
        .args(extra)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child.stdin.take().unwrap().write_all(body).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "python signer failed");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
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
