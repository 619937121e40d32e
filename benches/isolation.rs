//! CPU isolation (issue 16), beside the load harness: a healthy consumer's
//! delivery latency and the edge's ack latency with no, one and eight
//! looping neighbours, measured in the same run, as ratios to the first.
//!
//! One hub in this process (the library's `app::start`, as `serve` runs it),
//! embedded bus and idempotency in a temp dir, `good` = the crm plugin
//! (`plugins/target/…/crm.wasm`) calling an in-process downstream that
//! records when each effect arrived, and eight `burn<n>` consumers running
//! the `hostile` fixture in `loop` mode (concurrency 4, the default 100 ms
//! CPU budget, retried without end, never quarantined) on an invoice backlog
//! of their own. A scenario resumes the first 0, 1 or 8 burners, sends
//! `customer.updated` events at 20/s, and takes from each its ack latency
//! and the time until the downstream had its effect.
//!
//! `cargo bench --bench isolation` (plugins built first: `plugins/build.sh`):
//! 200 events per scenario. Under `cargo test --all-targets` it is a smoke
//! run of 10 events per scenario with no verdicts, but every event must be
//! delivered.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use switchyard::app::{RunningHub, StartOptions};
use switchyard::config::Config;

const SECRET: &str = "whsec_isolation_bench_0123456789abcdef";
const BURNERS: usize = 8;
const GAP: Duration = Duration::from_millis(50);

fn full_run() -> bool {
    std::env::args().any(|arg| arg == "--bench")
}

fn fixture(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("plugins/target/wasm32-unknown-unknown/release")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the plugins first (`plugins/build.sh`)",
        path.display()
    );
    path
}

/// When each path first arrived at the downstream.
type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

/// A downstream that answers 200 to everything and notes arrivals.
async fn downstream() -> (String, Arrivals) {
    let arrivals: Arrivals = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let noted = Arc::clone(&arrivals);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let noted = Arc::clone(&noted);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
                    let noted = Arc::clone(&noted);
                    async move {
                        noted
                            .lock()
                            .unwrap()
                            .entry(request.uri().path().to_owned())
                            .or_insert_with(Instant::now);
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"{}")),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, arrivals)
}

fn routes(dir: &Path, downstream: &str) -> String {
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    let mut text = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[bus]
kind = "embedded"
path = "bus"

[idempotency]
kind = "embedded"
path = "idempotency"

[sources.stripe]
kind = "stripe"
secrets = ["file:secret"]

[connections.crm]
base_url = "{downstream}"

[consumers.good]
plugin = "{crm}"
connections = ["crm"]

[[routes]]
source = "stripe"
events = ["customer.*"]
consumers = ["good"]
"#,
        crm = fixture("crm").display()
    );
    let mut names = Vec::new();
    for n in 0..BURNERS {
        text.push_str(&format!(
            r#"
[consumers.burn{n}]
plugin = "{hostile}"
concurrency = 4
quarantine_after = 0
retry = {{ first = "1s", max = "2s", attempts = 1000 }}
circuit_breaker = {{ enabled = false }}
settings = {{ mode = "loop" }}
"#,
            hostile = fixture("hostile").display()
        ));
        names.push(format!("\"burn{n}\""));
    }
    text.push_str(&format!(
        "\n[[routes]]\nsource = \"stripe\"\nevents = [\"invoice.created\"]\nconsumers = [{}]\n",
        names.join(", ")
    ));
    text
}

fn signed(id: &str, event_type: &str, object: serde_json::Value) -> (Vec<u8>, String) {
    let body = serde_json::to_vec(&serde_json::json!({
        "id": id, "object": "event", "type": event_type, "created": 1_722_470_400,
        "livemode": false, "data": {"object": object},
    }))
    .unwrap();
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&body);
    let signature = format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()));
    (body, signature)
}

struct Bench {
    hub: RunningHub,
    client: reqwest::Client,
    arrivals: Arrivals,
}

impl Bench {
    async fn send(&self, id: &str, event_type: &str, object: serde_json::Value) -> Duration {
        let (body, signature) = signed(id, event_type, object);
        let started = Instant::now();
        let status = self
            .client
            .post(format!("http://{}/webhooks/stripe", self.hub.addr))
            .header("content-type", "application/json")
            .header("stripe-signature", signature)
            .body(body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "the edge took the event");
        started.elapsed()
    }

    /// Waits until the paused burners (`burn<running>` on) have no call in
    /// flight.
    async fn paused_burners_idle(&self, running: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.hub.control().status().await.unwrap();
            let busy = (running..BURNERS).any(|n| {
                let name = format!("burn{n}");
                status
                    .iter()
                    .any(|s| s.name == name && s.stats.in_flight > 0)
            });
            if !busy {
                return;
            }
            assert!(Instant::now() < deadline, "paused burners never went idle");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs `events` customer events beside `burners` running burners;
    /// returns ack and delivery latencies.
    async fn scenario(&self, run: &str, burners: usize, events: usize) -> Figures {
        let control = self.hub.control();
        for n in 0..BURNERS {
            let name = format!("burn{n}");
            if n < burners {
                control.resume(&name).unwrap();
            } else {
                control.pause(&name).unwrap();
            }
        }
        self.paused_burners_idle(burners).await;
        let mut figures = Figures::default();
        let mut sent = Vec::new();
        for n in 0..events {
            let customer = format!("cus_{run}_{burners}_{n}");
            let object = serde_json::json!({"id": customer, "object": "customer"});
            let started = Instant::now();
            figures.ack.push(
                self.send(&format!("evt_{customer}"), "customer.updated", object)
                    .await,
            );
            sent.push((format!("/contacts/{customer}"), started));
            tokio::time::sleep(GAP).await;
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        for (path, started) in sent {
            let arrived = loop {
                if let Some(at) = self.arrivals.lock().unwrap().get(&path) {
                    break *at;
                }
                assert!(Instant::now() < deadline, "{path} never arrived");
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            figures.delivery.push(arrived.duration_since(started));
        }
        figures
    }
}

#[derive(Default)]
struct Figures {
    ack: Vec<Duration>,
    delivery: Vec<Duration>,
}

fn percentile(samples: &[Duration], q: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let index = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn main() {
    let full = full_run();
    let events = if full { 200 } else { 10 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (url, arrivals) = downstream().await;
        std::fs::write(dir.path().join("routes.toml"), routes(dir.path(), &url)).unwrap();
        let config = Config::load(&dir.path().join("routes.toml")).unwrap();
        let hub = switchyard::app::start(config, StartOptions::default())
            .await
            .unwrap_or_else(|errors| panic!("{}", errors[0]));
        let bench = Bench {
            hub,
            client: reqwest::Client::new(),
            arrivals,
        };
        let run = format!("{}", SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis());
        // The burners' own backlog: they loop on it for the whole run.
        for n in 0..16 {
            let object = serde_json::json!({"id": format!("in_{run}_{n}"), "object": "invoice"});
            bench
                .send(&format!("evt_{run}_inv{n}"), "invoice.created", object)
                .await;
        }
        // Unmeasured: the first events pay for connections, the first
        // instances and the first Redis keys, which would inflate the
        // baseline and flatter every ratio against it.
        bench.scenario(&format!("{run}_warm"), 0, events / 10).await;
        let alone = bench.scenario(&run, 0, events).await;
        let beside_one = bench.scenario(&run, 1, events).await;
        let beside_eight = bench.scenario(&run, BURNERS, events).await;
        let pool = bench.hub.control().status().await.unwrap();
        let burned: f64 = pool
            .iter()
            .filter(|s| s.name.starts_with("burn"))
            .map(|s| s.cpu_seconds)
            .sum();
        println!(
            "isolation: {events} customer.updated events per scenario at 20/s; plugin threads: {}; burners used {burned:.1} s of guest CPU",
            pool[0].pool_threads
        );
        println!("| neighbours        | delivery p50 ms | p99 ms | p99 ÷ alone | ack p99 ms | ÷ alone |");
        println!("|-------------------|----------------:|-------:|------------:|-----------:|--------:|");
        let base_delivery = percentile(&alone.delivery, 0.99);
        let base_ack = percentile(&alone.ack, 0.99);
        for (name, figures) in [
            ("none (baseline)", &alone),
            ("1 looping plugin", &beside_one),
            ("8 looping plugins", &beside_eight),
        ] {
            let delivery = percentile(&figures.delivery, 0.99);
            let ack = percentile(&figures.ack, 0.99);
            let verdict = |ratio: f64| match (full, ratio <= 2.0) {
                (false, _) => "",
                (true, true) => " met",
                (true, false) => " MISSED",
            };
            let delivery_ratio = delivery.as_secs_f64() / base_delivery.as_secs_f64();
            let ack_ratio = ack.as_secs_f64() / base_ack.as_secs_f64();
            println!(
                "| {name:<17} | {:>15.2} | {:>6.2} | {:>10.2}{} | {:>10.2} | {:>6.2}{} |",
                ms(percentile(&figures.delivery, 0.5)),
                ms(delivery),
                delivery_ratio,
                verdict(delivery_ratio),
                ms(ack),
                ack_ratio,
                verdict(ack_ratio),
            );
        }
        bench.hub.shutdown().await;
    });
}
