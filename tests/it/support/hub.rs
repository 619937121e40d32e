//! A running switchyard: [`HubOptions`] and the routes.toml [`write_config`]
//! makes of them, [`TestHub`] in this process (and the two hubs most tests
//! start, [`crm_hub`] and [`example_hub`]), and `switchyard serve` as a
//! child process ([`spawn_hub`], [`spawn_command`]).

use super::{MockDownstream, SECRET, eventually, example_routes, fixture, now, plugin_path};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard::app::{RunningHub, StartOptions};
use switchyard::config::Config;
use switchyard::ingest::scheme::stripe::signature_header;

/// What goes into a test's routes.toml besides the connections, consumers and
/// routes the test writes itself.
pub struct HubOptions {
    /// TOML for `[connections.*]`, `[consumers.*]` and `[[routes]]` (see
    /// [`super::Routes`]), where `{plugin:NAME}` becomes the path of a
    /// freshly built plugin.
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

    /// GETs `path` from the admin API.
    pub async fn admin_get(&self, path: &str) -> (u16, Value) {
        self.admin(reqwest::Method::GET, path, None).await
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
            let (status, job) = self.admin_get(&path).await;
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

/// A hub on [`super::crm_routes`] with the options `configure` sets; and
/// its CRM mock.
pub async fn crm_hub(configure: impl FnOnce(&mut HubOptions)) -> (TestHub, MockDownstream) {
    let mock = MockDownstream::start().await;
    let mut options = HubOptions::new(super::crm_routes(&mock));
    configure(&mut options);
    (TestHub::start(options).await, mock)
}

/// A hub on the example routes whose three connections all call one mock,
/// with 3 attempts each; and that mock.
pub async fn example_hub() -> (TestHub, MockDownstream) {
    let mock = MockDownstream::start().await;
    let routes = example_routes(&mock, &mock, &mock, r#"{ attempts = 3 }"#);
    (TestHub::start(HubOptions::new(routes)).await, mock)
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
