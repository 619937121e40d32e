//! Plugin invocation (issue 9, P6): one event through the real host API
//! (`PluginHost::load` → `ConsumerPlugin::call`: a fresh store and instance
//! from the pre-instantiated component on the pooling allocator, the event
//! passed in, `handle`, the store dropped), for two fixtures built from
//! `plugins/fixtures/` by `plugins/build.sh`:
//!
//! - `noop`: bare wit-bindgen, `handle` answers `Ok` (what the host costs);
//! - `parse`: the SDK parses the 2 KiB Stripe payload with serde_json and
//!   the handler reads `data.object.id` (what a typical plugin costs before
//!   it calls out);
//!
//! each beside the same logic as native Rust, measured in the same run. Each
//! call runs on the plugin threads, as in the hub; the cost of that hand-off
//! alone (an empty task there and back) is its own row.
//! Criterion reports means; the targets are percentiles, so first a loop of
//! individually timed calls prints p50/p99 per case.
//!
//! `cargo bench --bench plugin` (plugins built first: `plugins/build.sh`).
//! Under `cargo test --all-targets` it is a smoke run: a few hundred timed
//! calls, criterion's one-pass test mode, no speed verdicts, but every call
//! must come back `Done`.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard::config::Config;
use switchyard::plugin::{CallOutcome, ConsumerPlugin, PluginEvent, PluginHost, build_connections};

/// A Stripe `invoice.paid` event of about 2 KiB, as the load harness sends.
const PAYLOAD: &str = r#"{"id":"evt_1PgBenchPlugin0001","object":"event","api_version":"2024-06-20","created":1722470400,"data":{"object":{"id":"in_1PgBenchPlugin0001","object":"invoice","account_country":"US","account_name":"Acme Tools Inc.","amount_due":4900,"amount_paid":4900,"amount_remaining":0,"attempt_count":1,"attempted":true,"billing_reason":"subscription_cycle","charge":"ch_3PgBenchPlugin0001","collection_method":"charge_automatically","created":1722470396,"currency":"usd","customer":"cus_QBenchPlugin0001","customer_email":"ada.lovelace@example.com","customer_name":"Ada Lovelace","customer_tax_exempt":"none","hosted_invoice_url":"https://invoice.stripe.com/i/acct_1NxAcmeToolsTest/test_BenchPlugin0001","invoice_pdf":"https://pay.stripe.com/invoice/acct_1NxAcmeToolsTest/test_BenchPlugin0001/pdf","lines":{"object":"list","data":[{"id":"il_1PgBenchPlugin0001","object":"line_item","amount":4900,"currency":"usd","description":"Cordless drill kit","discountable":true,"livemode":false,"metadata":{},"period":{"end":1725062400,"start":1722470400},"price":{"id":"price_1PgKq2LzX8bYw3NcDrillKt","object":"price","active":true,"billing_scheme":"per_unit","currency":"usd","product":"prod_QgRkDrillKit01","type":"recurring","unit_amount":4900,"recurring":{"interval":"month","interval_count":1,"usage_type":"licensed"}},"proration":false,"quantity":1,"type":"subscription"}],"has_more":false,"total_count":1,"url":"/v1/invoices/in_1PgBenchPlugin0001/lines"},"livemode":false,"metadata":{"order_id":"SO-BenchPlugin0001"},"number":"ACME-BenchPlugin0001","paid":true,"paid_out_of_band":false,"payment_intent":"pi_3PgBenchPlugin0001","period_end":1722470400,"period_start":1719878400,"status":"paid","status_transitions":{"finalized_at":1722470397,"marked_uncollectible_at":null,"paid_at":1722470399,"voided_at":null},"subscription":"sub_1PgKq2LzX8bYw3NcSubs0001","subtotal":4900,"tax":null,"total":4900,"total_excluding_tax":4900}},"livemode":false,"pending_webhooks":3,"request":{"id":null,"idempotency_key":null},"type":"invoice.paid"}"#;

/// `cargo bench` passes `--bench`; `cargo test` does not.
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

/// Both fixtures as consumers of one host, loaded the way `serve` loads them.
fn load_fixtures() -> (PluginHost, Arc<ConsumerPlugin>, Arc<ConsumerPlugin>) {
    let text = format!(
        r#"
[sources.stripe]
kind = "stripe"
path = "/webhooks/stripe"
secrets = ["env:PLUGIN_BENCH_SECRET_NEVER_READ"]

[consumers.noop]
plugin = "{noop}"

[consumers.parse]
plugin = "{parse}"

[[routes]]
source = "stripe"
events = ["*"]
consumers = ["noop", "parse"]
"#,
        noop = fixture("noop").display(),
        parse = fixture("parse").display(),
    );
    let config = Config::parse(&text, Path::new(env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|err| panic!("bench config: {err}"));
    let connections = build_connections(&config.connections).expect("no connections");
    let instances: usize = config.consumers.values().map(|c| c.concurrency).sum();
    let host = PluginHost::new(instances as u32, 32 << 20).expect("plugin engine");
    let load = |name: &str| {
        Arc::new(
            host.load(name, &config.consumers[name], &connections)
                .unwrap_or_else(|err| panic!("{err}")),
        )
    };
    let (noop, parse) = (load("noop"), load("parse"));
    (host, noop, parse)
}

fn event() -> PluginEvent {
    PluginEvent {
        id: "evt_1PgBenchPlugin0001".into(),
        event_type: "invoice.paid".into(),
        source: "stripe".into(),
        created: 1_722_470_400,
        livemode: false,
        account: None,
        attempt: 1,
        payload: PAYLOAD.into(),
    }
}

/// The `noop` fixture's logic in native Rust: take the event, answer Ok.
fn native_noop(event: PluginEvent) -> Result<(), String> {
    black_box(&event);
    Ok(())
}

/// The `parse` fixture's logic in native Rust: what the SDK and the
/// handler do inside the guest.
fn native_parse(event: PluginEvent) -> Result<(), String> {
    let payload: serde_json::Value =
        serde_json::from_str(&event.payload).map_err(|err| err.to_string())?;
    payload["data"]["object"]["id"]
        .as_str()
        .map(|id| {
            black_box(id);
        })
        .ok_or_else(|| "data.object.id is missing".to_owned())
}

async fn call(plugin: &Arc<ConsumerPlugin>, event: PluginEvent) {
    let report = plugin.call(event, "evt_1PgBenchPlugin0001", None).await;
    assert_eq!(report.outcome, CallOutcome::Done, "the fixture failed");
}

/// p50 and p99 of `calls` individually timed runs of `f`, in µs.
async fn percentiles<F, Fut>(calls: usize, mut f: F) -> (f64, f64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..calls / 10 + 1 {
        f().await;
    }
    let mut times: Vec<Duration> = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        f().await;
        times.push(started.elapsed());
    }
    times.sort_unstable();
    let at = |q: f64| {
        let index = ((q * calls as f64).ceil() as usize).clamp(1, calls) - 1;
        times[index].as_secs_f64() * 1e6
    };
    (at(0.50), at(0.99))
}

/// The P6 table: p50/p99 of each case, and the verdicts in a full run.
fn print_percentiles(
    runtime: &tokio::runtime::Runtime,
    noop: &Arc<ConsumerPlugin>,
    parse: &Arc<ConsumerPlugin>,
) {
    let full = full_run();
    let calls = if full { 20_000 } else { 200 };
    let pool = Arc::clone(noop.pool());
    // P6 is the invocation: timed from a task on the plugin threads, where
    // the hub's calls run, so a call costs no thread wake-up.
    let on_pool = |plugin: &Arc<ConsumerPlugin>| {
        let plugin = Arc::clone(plugin);
        runtime
            .block_on(pool.spawn(async move {
                let plugin = &plugin;
                percentiles(calls, || call(plugin, event())).await
            }))
            .expect("the timing task ran")
    };
    let (wasm_noop, wasm_parse) = (on_pool(noop), on_pool(parse));
    let (native_noop_t, native_parse_t, wasm_noop_far, hand_off) = runtime.block_on(async {
        (
            percentiles(calls, || async { native_noop(event()).unwrap() }).await,
            percentiles(calls, || async { native_parse(event()).unwrap() }).await,
            // The same call from another runtime (as dispatch makes it),
            // and what that crossing alone costs an idle pool: an empty
            // task there and back, two thread wake-ups.
            percentiles(calls, || call(noop, event())).await,
            percentiles(calls, || async { pool.spawn(async {}).await.unwrap() }).await,
        )
    });
    let verdict = |ok: bool| match (full, ok) {
        (false, _) => "(smoke: not judged)",
        (true, true) => "met",
        (true, false) => "MISSED",
    };
    println!(
        "plugin: {calls} individually timed calls per case, payload {} B",
        PAYLOAD.len()
    );
    println!("| case                 | p50 µs  | p99 µs  | target             |");
    println!("|----------------------|--------:|--------:|--------------------|");
    println!(
        "| wasm noop            | {:>7.2} | {:>7.2} | ≤ 15 / ≤ 50: {} / {} |",
        wasm_noop.0,
        wasm_noop.1,
        verdict(wasm_noop.0 <= 15.0),
        verdict(wasm_noop.1 <= 50.0)
    );
    println!(
        "| native noop          | {:>7.2} | {:>7.2} |                    |",
        native_noop_t.0, native_noop_t.1
    );
    println!(
        "| wasm parse (serde)   | {:>7.2} | {:>7.2} | p50 ≤ 30: {} |",
        wasm_parse.0,
        wasm_parse.1,
        verdict(wasm_parse.0 <= 30.0)
    );
    println!(
        "| native parse (serde) | {:>7.2} | {:>7.2} |                    |",
        native_parse_t.0, native_parse_t.1
    );
    println!(
        "| wasm noop, from another runtime | {:>7.2} | {:>7.2} | (latency, idle pool) |",
        wasm_noop_far.0, wasm_noop_far.1
    );
    println!(
        "| pool hand-off (empty task)      | {:>7.2} | {:>7.2} | (latency, idle pool) |",
        hand_off.0, hand_off.1
    );
}

fn invocation(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_host, noop, parse) = load_fixtures();
    print_percentiles(&runtime, &noop, &parse);
    let mut group = c.benchmark_group("plugin_invocation");
    group.bench_function(BenchmarkId::new("wasm", "noop"), |b| {
        b.to_async(&runtime).iter(|| call(&noop, event()))
    });
    group.bench_function(BenchmarkId::new("native", "noop"), |b| {
        b.iter(|| native_noop(event()))
    });
    group.bench_function(BenchmarkId::new("wasm", "parse"), |b| {
        b.to_async(&runtime).iter(|| call(&parse, event()))
    });
    group.bench_function(BenchmarkId::new("native", "parse"), |b| {
        b.iter(|| native_parse(event()))
    });
    group.finish();
}

criterion_group!(benches, invocation);
criterion_main!(benches);
