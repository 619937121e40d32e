//! Fault injection (issue #6): R1 SIGKILL, R2 Redis stopped, R4 one
//! downstream failing, R5 the bus's disk full. (R3, NATS stopped, is in
//! `nats.rs`.)
//!
//! Each scenario runs `switchyard serve` as a child process under a steady
//! stream of unique signed events ([`Load`]), injects its fault, then checks
//! the ledger ([`Ledger::verify`]): every event answered 2xx reached every
//! downstream its routes give it, and no downstream saw one effect under two
//! `Idempotency-Key`s. Events answered non-2xx are re-sent, as Stripe does.
//!
//! The short form runs in CI. `SWITCHYARD_FAULTS_LONG=1` runs the same code
//! with longer faults (and, for R1, a kill every few seconds for a minute).

use crate::support::*;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Whether the long form was asked for.
fn long_form() -> bool {
    std::env::var("SWITCHYARD_FAULTS_LONG").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `short` in CI, `long` with `SWITCHYARD_FAULTS_LONG=1`.
fn by_form<T>(short: T, long: T) -> T {
    if long_form() { long } else { short }
}

/// Events per second each sender offers: a steady stream the hub keeps up
/// with on a small CI machine, so a backlog means a fault, not overload.
const SENDER_RATE: u64 = 25;
const SENDERS: usize = 4;
/// How long the check waits for the last acknowledged event to arrive.
const DRAIN_WITHIN: Duration = Duration::from_secs(120);

/// The downstreams of the suite's three consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Downstream {
    Crm,
    Erp,
    Marketing,
}

impl Downstream {
    const ALL: [Downstream; 3] = [Downstream::Crm, Downstream::Erp, Downstream::Marketing];

    fn name(self) -> &'static str {
        match self {
            Downstream::Crm => "crm",
            Downstream::Erp => "erp",
            Downstream::Marketing => "marketing",
        }
    }

    /// The effect a request to this downstream applies.
    fn effect(self, request: &Received) -> String {
        match self {
            Downstream::Crm => crm_effect(request),
            Downstream::Erp => erp_effect(request),
            Downstream::Marketing => format!(
                "member {}",
                request.json()["customer"].as_str().unwrap_or("?")
            ),
        }
    }
}

impl Mocks {
    /// Effects applied (answered 2xx) by one downstream.
    fn applied(&self, downstream: Downstream) -> BTreeSet<String> {
        self.get(downstream.name())
            .effects()
            .iter()
            .map(|r| downstream.effect(r))
            .collect()
    }

    /// The routes: `customer.*` to crm (subscriptions are a no-op there),
    /// `invoice.paid` to erp, `customer.subscription.*` to marketing.
    /// `consumer_keys` are more keys for every consumer.
    fn routes(&self, consumer_keys: &[(&str, &str)]) -> Routes {
        let mut routes = Routes::new();
        for downstream in Downstream::ALL {
            let name = downstream.name();
            routes = routes
                .connection(name, self.get(downstream.name()))
                .timeout("1s")
                .consumer(name, name, &[name])
                .concurrency(4)
                .retry(r#"{ first = "50ms", max = "1s", attempts = 1000 }"#)
                .limits(r#"{ wall = "2s" }"#)
                .with_all(consumer_keys);
        }
        routes
            .route(&["customer.*"], &["crm"])
            .route(&["invoice.paid"], &["erp"])
            .route(&["customer.subscription.*"], &["marketing"])
    }
}

/// Event `n` of run `run`: a new customer, a paid invoice or a new
/// subscription in turn; with the downstream and the effect it must cause.
fn ledger_event(run: &str, n: usize) -> (Vec<u8>, Downstream, String) {
    match n % 3 {
        // numbered_event: even numbers are customers, odd ones invoices.
        0 => {
            let (body, effect) = numbered_event(run, 2 * n);
            (body, Downstream::Crm, effect)
        }
        1 => {
            let (body, effect) = numbered_event(run, 2 * n + 1);
            (body, Downstream::Erp, effect)
        }
        _ => {
            let customer = format!("cus_{run}_s{n}");
            let body = synthetic_event(
                &format!("evt_sub_{run}_{n}"),
                "customer.subscription.created",
                json!({"id": format!("sub_{run}_{n}"), "object": "subscription",
                       "customer": customer, "status": "active",
                       "items": {"data": [{"price": {"id": "price_1"}}]}}),
            );
            (body, Downstream::Marketing, format!("member {customer}"))
        }
    }
}

/// What the senders saw.
#[derive(Default)]
struct Ledger {
    /// Event numbers handed out (events sent at least once).
    sent: AtomicUsize,
    /// Effects of the events answered 2xx, in the order they were.
    acked: Mutex<Vec<(Downstream, String)>>,
    /// Every answer by kind: a status code, or `no answer`.
    answers: Mutex<BTreeMap<String, usize>>,
    /// 2xx answers while `fault` was set.
    acked_in_fault: AtomicUsize,
    /// Events still unanswered 2xx when the load stopped.
    unacked: AtomicUsize,
}

impl Ledger {
    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn answers(&self, kind: &str) -> usize {
        self.answers.lock().unwrap().get(kind).copied().unwrap_or(0)
    }

    fn acked_for(&self, downstream: Downstream) -> Vec<String> {
        self.acked
            .lock()
            .unwrap()
            .iter()
            .filter(|(d, _)| *d == downstream)
            .map(|(_, effect)| effect.clone())
            .collect()
    }

    /// Waits (up to [`DRAIN_WITHIN`]) until every acknowledged event reached
    /// its downstream, prints the figures, and asserts nothing was lost and
    /// no effect was applied under two keys.
    async fn verify(&self, scenario: &str, mocks: &Mocks) {
        let lost = || -> BTreeMap<Downstream, Vec<String>> {
            Downstream::ALL
                .iter()
                .map(|&d| {
                    let applied = mocks.applied(d);
                    let missing = self
                        .acked_for(d)
                        .into_iter()
                        .filter(|e| !applied.contains(e))
                        .collect();
                    (d, missing)
                })
                .collect()
        };
        let deadline = Instant::now() + DRAIN_WITHIN;
        while Instant::now() < deadline && lost().values().any(|m| !m.is_empty()) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let lost = lost();
        let mut delivered = Vec::new();
        let mut duplicates = Vec::new();
        let mut repeats = 0;
        for downstream in Downstream::ALL {
            let acked = self.acked_for(downstream).len();
            let missing = lost[&downstream].len();
            delivered.push(format!("{} {}/{acked}", downstream.name(), acked - missing));
            // An effect is duplicated if the downstream saw it under two keys;
            // the same key again (a redelivery) is absorbed by the downstream.
            let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            let received = mocks.get(downstream.name()).received();
            for request in &received {
                let key = request
                    .header("idempotency-key")
                    .expect("every call carries an Idempotency-Key");
                keys.entry(downstream.effect(request))
                    .or_default()
                    .insert(key.to_owned());
            }
            let effects = mocks.get(downstream.name()).effects();
            repeats += effects.len() - mocks.applied(downstream).len();
            duplicates.extend(
                keys.into_iter()
                    .filter(|(_, keys)| keys.len() > 1)
                    .map(|(effect, keys)| format!("{effect}: {keys:?}")),
            );
        }
        let total_lost: usize = lost.values().map(Vec::len).sum();
        let answers = self.answers.lock().unwrap().clone();
        let non_2xx: usize = answers
            .iter()
            .filter(|(kind, _)| !kind.starts_with('2'))
            .map(|(_, n)| n)
            .sum();
        eprintln!(
            "faults {scenario}: sent {sent}, acked 2xx {acked} ({in_fault} during the fault), \
             non-2xx answers {non_2xx} {answers:?}, never acked {unacked}; \
             delivered {delivered}; repeat 2xx calls under the same key {repeats}; \
             duplicates {dups}; lost {total_lost}",
            sent = self.sent.load(Ordering::SeqCst),
            acked = self.acked(),
            in_fault = self.acked_in_fault.load(Ordering::SeqCst),
            unacked = self.unacked.load(Ordering::SeqCst),
            delivered = delivered.join(", "),
            dups = duplicates.len(),
        );
        assert_eq!(
            total_lost,
            0,
            "acknowledged events never delivered: {:?}",
            lost.iter()
                .map(|(d, m)| (d.name(), m.iter().take(5).collect::<Vec<_>>()))
                .collect::<Vec<_>>()
        );
        assert!(
            duplicates.is_empty(),
            "effects under several keys: {duplicates:?}"
        );
        for kind in answers.keys() {
            assert!(
                kind.starts_with('2') || kind == "503" || kind == "no answer",
                "unexpected answers {kind}: {answers:?}"
            );
        }
    }
}

/// Senders posting unique signed events at a steady rate, re-sending what
/// was not answered 2xx (as Stripe does, with a growing delay) until it is,
/// between new ones.
struct Load {
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
    fault: Arc<AtomicBool>,
    senders: Vec<tokio::task::JoinHandle<()>>,
}

/// How long the senders keep re-sending after the load stopped.
const RESEND_AFTER_STOP: Duration = Duration::from_secs(30);

/// An event waiting to be re-sent.
struct Resend {
    due: Instant,
    n: usize,
    attempts: u32,
}

impl Load {
    fn start(base: String) -> Load {
        let ledger = Arc::new(Ledger::default());
        let stop = Arc::new(AtomicBool::new(false));
        let fault = Arc::new(AtomicBool::new(false));
        let resends: Arc<Mutex<Vec<Resend>>> = Arc::default();
        let stopped_at: Arc<Mutex<Option<Instant>>> = Arc::default();
        let run = unique("");
        let client = reqwest::Client::new();
        let senders = (0..SENDERS)
            .map(|_| {
                let (ledger, stop, fault) =
                    (Arc::clone(&ledger), Arc::clone(&stop), Arc::clone(&fault));
                let (resends, stopped_at) = (Arc::clone(&resends), Arc::clone(&stopped_at));
                let (client, base, run) = (client.clone(), base.clone(), run.clone());
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_millis(1000 / SENDER_RATE));
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tick.tick().await;
                        // A due re-send first, else a new event, unless stopped.
                        let due = {
                            let mut resends = resends.lock().unwrap();
                            let now = Instant::now();
                            resends
                                .iter()
                                .position(|r| r.due <= now)
                                .map(|i| resends.swap_remove(i))
                        };
                        let (n, attempts) = match due {
                            Some(resend) => (resend.n, resend.attempts),
                            None if stop.load(Ordering::SeqCst) => {
                                let stopped =
                                    *stopped_at.lock().unwrap().get_or_insert_with(Instant::now);
                                let left = resends.lock().unwrap().len();
                                if left == 0 || stopped.elapsed() > RESEND_AFTER_STOP {
                                    break;
                                }
                                continue;
                            }
                            None => (ledger.sent.fetch_add(1, Ordering::SeqCst), 0),
                        };
                        let (body, downstream, effect) = ledger_event(&run, n);
                        let response = post_signed(&client, &base, &body).await;
                        let kind = match &response {
                            Some(r)
                                if r.status() == 503
                                    && !r.headers().contains_key("retry-after") =>
                            {
                                "503 without Retry-After".to_owned()
                            }
                            Some(r) => r.status().as_u16().to_string(),
                            None => "no answer".to_owned(),
                        };
                        *ledger.answers.lock().unwrap().entry(kind).or_default() += 1;
                        if response.is_some_and(|r| r.status().is_success()) {
                            if fault.load(Ordering::SeqCst) {
                                ledger.acked_in_fault.fetch_add(1, Ordering::SeqCst);
                            }
                            ledger.acked.lock().unwrap().push((downstream, effect));
                        } else {
                            // Stripe waits far longer; this keeps tests short.
                            let delay = Duration::from_millis(250 << attempts.min(3));
                            resends.lock().unwrap().push(Resend {
                                due: Instant::now() + delay,
                                n,
                                attempts: attempts + 1,
                            });
                        }
                    }
                    ledger
                        .unacked
                        .store(resends.lock().unwrap().len(), Ordering::SeqCst);
                })
            })
            .collect();
        Load {
            ledger,
            stop,
            fault,
            senders,
        }
    }

    /// Marks the fault window (for the "acked during the fault" figure).
    fn fault(&self, on: bool) {
        self.fault.store(on, Ordering::SeqCst);
    }

    /// Waits until `more` further events were answered 2xx.
    async fn acked_more(&self, more: usize, within: Duration) {
        let target = self.ledger.acked() + more;
        eventually(
            within,
            &format!("{more} more events acknowledged"),
            || async { self.ledger.acked() >= target },
        )
        .await;
    }

    /// Stops sending new events; the last ones are re-sent until answered.
    async fn stop(self) -> Arc<Ledger> {
        self.stop.store(true, Ordering::SeqCst);
        for sender in self.senders {
            sender.await.unwrap();
        }
        self.ledger
    }
}

/// Where a child hub writes its stderr (warnings and errors).
struct HubLog(PathBuf);

impl HubLog {
    fn tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.0).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let from = all.len().saturating_sub(lines);
        format!(
            "--- last {lines} lines of the hub's log ---\n{}",
            all[from..].join("\n")
        )
    }
}

/// A `switchyard serve` child process on a fixed port, restartable on the
/// same data directory.
struct ChildHub {
    dir: tempfile::TempDir,
    port: u16,
    config: PathBuf,
    log: HubLog,
}

impl ChildHub {
    /// Writes the config; short leases so work cut off by a fault comes back
    /// within seconds.
    fn new(mut options: HubOptions) -> ChildHub {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        options.listen_port = Some(port);
        options.idempotency_lease = "3s";
        if options.bus.is_none() {
            options.bus_extra += "\nvisibility_timeout = \"5s\"";
        }
        let config = write_config(dir.path(), &options);
        let log = HubLog(dir.path().join("switchyard.log"));
        ChildHub {
            dir,
            port,
            config,
            log,
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn command(&self) -> tokio::process::Command {
        self.command_via(None)
    }

    /// `switchyard serve`, behind `wrapper` (a program and its arguments) if
    /// given; stderr appended to the log.
    fn command_via(&self, wrapper: Option<Vec<String>>) -> tokio::process::Command {
        let binary = env!("CARGO_BIN_EXE_switchyard").to_owned();
        let mut args = wrapper.unwrap_or_default();
        args.extend([binary, "serve".into(), "--config".into()]);
        args.push(self.config.display().to_string());
        let mut command = tokio::process::Command::new(&args[0]);
        command.args(&args[1..]);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log.0)
            .unwrap();
        command.stderr(log);
        command
    }

    async fn spawn(&self) -> tokio::process::Child {
        spawn_command(self.command(), self.port).await
    }
}

impl Drop for ChildHub {
    /// A failing scenario shows what the hub logged.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log.tail(40));
        }
    }
}

/// SIGKILL, and reap.
async fn kill(child: &mut tokio::process::Child) {
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r1_sigkill_repeatedly_loses_and_duplicates_nothing() {
    let mocks = Mocks::start().await;
    let hub = ChildHub::new(HubOptions::new(mocks.routes(&[])));
    let mut child = hub.spawn().await;
    let load = Load::start(hub.base());
    // A kill every few seconds: a minute of them in the long form.
    let kills = by_form(4, 20);
    for round in 0..kills {
        // Under load: new events are being acknowledged and delivered.
        load.acked_more(40, Duration::from_secs(60)).await;
        // Vary where in the flow the kill lands.
        tokio::time::sleep(Duration::from_millis(300 * (round % 5) as u64)).await;
        load.fault(true);
        kill(&mut child).await;
        child = hub.spawn().await;
        load.fault(false);
    }
    load.acked_more(40, Duration::from_secs(60)).await;
    let ledger = load.stop().await;
    eprintln!("faults R1: {kills} SIGKILLs");
    ledger.verify("R1 sigkill", &mocks).await;
    kill(&mut child).await;
}

/// A redis-server the test owns, on a free port, with an append-only file
/// fsynced on every write so a restart keeps the keys.
struct RedisServer {
    child: Option<std::process::Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    async fn start() -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
        };
        server.launch().await;
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn launch(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", "always", "--port"])
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server starts (it is installed where the tests run)");
        self.child = Some(child);
        let url = self.url();
        eventually(Duration::from_secs(30), "redis answers PING", || {
            let url = url.clone();
            async move {
                let Ok(client) = redis::Client::open(url) else {
                    return false;
                };
                match client.get_multiplexed_async_connection().await {
                    Ok(mut connection) => redis::cmd("PING")
                        .query_async::<String>(&mut connection)
                        .await
                        .is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await;
    }

    /// SIGKILL, by PID, and reap.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r2_redis_stopped_under_load_loses_and_duplicates_nothing() {
    let mut redis = RedisServer::start().await;
    let mocks = Mocks::start().await;
    let mut options = HubOptions::new(mocks.routes(&[]));
    options.redis_prefix = Some(unique("sy-faults-"));
    options.redis_url = redis.url();
    let hub = ChildHub::new(options);
    let mut child = hub.spawn().await;
    let load = Load::start(hub.base());
    load.acked_more(100, Duration::from_secs(60)).await;

    load.fault(true);
    let calls = || -> Vec<usize> {
        Downstream::ALL
            .iter()
            .map(|&d| mocks.get(d.name()).received().len())
            .collect()
    };
    let before = calls();
    redis.kill();
    // The outage lasts this long whatever happens meanwhile: it is the fault.
    tokio::time::sleep(by_form(Duration::from_secs(6), Duration::from_secs(30))).await;
    let during: Vec<usize> = calls().iter().zip(&before).map(|(a, b)| a - b).collect();
    redis.launch().await;
    load.fault(false);
    load.acked_more(100, Duration::from_secs(60)).await;
    let ledger = load.stop().await;
    // Everything acknowledged is on disk: it survives a SIGKILL too.
    kill(&mut child).await;
    let mut child = hub.spawn().await;
    eprintln!("faults R2: calls to crm, erp, marketing during the outage {during:?}");
    ledger.verify("R2 redis stopped", &mocks).await;
    kill(&mut child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r4_one_failing_downstream_does_not_hold_back_the_others() {
    let mocks = Mocks::start().await;
    let hub = ChildHub::new(HubOptions::new(mocks.routes(&[(
        "circuit_breaker",
        r#"{ failure_ratio = 0.5, min_calls = 10, window = "10s", open_for = "1s", half_open_probes = 1 }"#,
    )])));
    let mut child = hub.spawn().await;
    let load = Load::start(hub.base());
    let healthy = [Downstream::Erp, Downstream::Marketing];
    let delivered = |d: Downstream| mocks.get(d.name()).effects().len();
    let rate = |from: &[usize], since: Instant| -> Vec<String> {
        healthy
            .iter()
            .zip(from)
            .map(|(&d, &from)| {
                let per_second = (delivered(d) - from) as f64 / since.elapsed().as_secs_f64();
                format!("{} {per_second:.0}/s", d.name())
            })
            .collect()
    };

    // Baseline: everyone healthy.
    let phase = by_form(Duration::from_secs(4), Duration::from_secs(20));
    load.acked_more(60, Duration::from_secs(60)).await;
    let (start, at) = (healthy.map(delivered), Instant::now());
    tokio::time::sleep(phase).await;
    let baseline = rate(&start, at);

    // The fault: crm answers 500, then too slowly, then not at all.
    load.fault(true);
    let (start, at) = (healthy.map(delivered), Instant::now());
    mocks.crm.set_default(Answer::status(500));
    tokio::time::sleep(phase / 3).await;
    mocks
        .crm
        .set_default(Answer::status(200).delayed(Duration::from_secs(5)));
    tokio::time::sleep(phase / 3).await;
    mocks.crm.stop().await;
    tokio::time::sleep(phase / 3).await;
    let during = rate(&start, at);
    // Not held back: the healthy consumers catch up with everything sent to
    // them, while crm's events wait in the bus.
    let acked_in_fault: Vec<(Downstream, Vec<String>)> = healthy
        .iter()
        .map(|&d| (d, load.ledger.acked_for(d)))
        .collect();
    eventually(
        Duration::from_secs(30),
        "the healthy consumers delivered everything acknowledged so far",
        || async {
            acked_in_fault.iter().all(|(d, acked)| {
                let applied = mocks.applied(*d);
                acked.iter().all(|e| applied.contains(e))
            })
        },
    )
    .await;
    let crm_applied = mocks.applied(Downstream::Crm);
    let crm_waiting = load
        .ledger
        .acked_for(Downstream::Crm)
        .iter()
        .filter(|e| !crm_applied.contains(*e))
        .count();
    assert!(crm_waiting > 0, "the fault held crm's events back");

    // Recovery: crm drains its backlog; nothing lost, nothing twice.
    mocks.crm.set_default(Answer::status(200));
    mocks.crm.restart().await;
    load.fault(false);
    load.acked_more(60, Duration::from_secs(60)).await;
    let ledger = load.stop().await;
    eprintln!(
        "faults R4: healthy delivery rate baseline [{}], during the crm fault [{}]; \
         crm events waiting when the fault ended {crm_waiting}",
        baseline.join(", "),
        during.join(", ")
    );
    ledger.verify("R4 failing downstream", &mocks).await;
    kill(&mut child).await;
}

/// A small tmpfs mounted over one folder, in a private mount namespace held
/// by a `sleep` process: only the processes started through
/// [`Tmpfs::wrapper`] see it, and it vanishes with the holder, so a failed
/// test leaves no mount behind. `unshare -r` maps the caller to root in a
/// user namespace, so this needs no privilege where user namespaces are
/// allowed.
struct Tmpfs {
    holder: std::process::Child,
    dir: PathBuf,
}

impl Tmpfs {
    async fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let holder = std::process::Command::new("unshare")
            .args(["--map-root-user", "--mount", "--propagation", "private"])
            .args([
                "sh",
                "-c",
                "mount -t tmpfs -o size=\"$1\" tmpfs \"$0\" && exec sleep 900",
            ])
            .arg(dir)
            .arg(size)
            .spawn()
            .expect("unshare (util-linux) runs");
        let tmpfs = Tmpfs {
            holder,
            dir: dir.to_owned(),
        };
        let (inside, outside) = (tmpfs.inside(), dir.to_owned());
        eventually(Duration::from_secs(10), "the tmpfs is mounted", || {
            let (inside, outside) = (inside.clone(), outside.clone());
            async move {
                use std::os::unix::fs::MetadataExt;
                let device = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
                device(&inside).is_some_and(|d| Some(d) != device(&outside))
            }
        })
        .await;
        tmpfs
    }

    /// The mounted folder, as seen from outside the namespace.
    fn inside(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.holder.id()))
            .join(self.dir.strip_prefix("/").unwrap())
    }

    /// `nsenter` into the holder's namespaces, to put before a command.
    fn wrapper(&self) -> Vec<String> {
        ["nsenter", "--target", &self.holder.id().to_string()]
            .into_iter()
            .map(str::to_owned)
            .chain(["--user", "--mount", "--preserve-credentials", "--"].map(str::to_owned))
            .collect()
    }

    /// Fills what is left of the tmpfs; returns the filler's path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.inside().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 << 10];
        loop {
            if let Err(err) = file.write_all(&chunk).and_then(|_| file.sync_all()) {
                assert_eq!(err.raw_os_error(), Some(28), "ENOSPC expected: {err}");
                break;
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// A real full disk rather than the `inject_commit_failures` seam: the seam
/// fails commits before redb sees them, while a real ENOSPC makes redb
/// refuse every later operation until the database is reopened, which is
/// what this test found (see `durable.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r5_a_full_bus_disk_answers_503_and_recovers() {
    let mocks = Mocks::start().await;
    let hub = ChildHub::new(HubOptions::new(mocks.routes(&[])));
    let tmpfs = Tmpfs::mount(&hub.dir.path().join("data/bus"), "16m").await;
    let spawn = || spawn_command(hub.command_via(Some(tmpfs.wrapper())), hub.port);
    let mut child = spawn().await;
    let load = Load::start(hub.base());
    load.acked_more(100, Duration::from_secs(60)).await;

    load.fault(true);
    let filler = tmpfs.fill();
    eventually(
        Duration::from_secs(30),
        "ingest answers 503 on a full disk",
        || async { load.ledger.answers("503") > 0 },
    )
    .await;
    let refused_before = load.ledger.answers("503");
    // The disk stays full this long: the fault.
    tokio::time::sleep(by_form(Duration::from_secs(5), Duration::from_secs(30))).await;
    let refused = load.ledger.answers("503") - refused_before;
    assert!(refused > 0, "still refusing while the disk is full");

    std::fs::remove_file(&filler).unwrap();
    load.fault(false);
    load.acked_more(100, Duration::from_secs(60)).await;
    let ledger = load.stop().await;
    // What was acknowledged is on disk: it survives a SIGKILL.
    kill(&mut child).await;
    let mut child = spawn().await;
    ledger.verify("R5 bus disk full", &mocks).await;
    kill(&mut child).await;
}
