//! Idle-subscriber capacity of one instance: how much server memory N idle `callEvents`
//! WebSocket subscriptions cost, and how long an event takes to reach all of them.
//!
//! The bench re-executes itself as the server (`VG_BENCH_ROLE=server`: every role, embedded
//! backends in a temp dir, or a fresh Postgres database with `--postgres`), so the RSS it reads
//! is the server's alone. Per N it opens N `graphql-transport-ws` subscriptions, warms them up
//! until each has received an event, samples the server's RSS (before, idle, after close), then
//! times E `tagCall` events, sent on a fixed schedule, from their `at` to every subscriber.
//! Run on demand:
//!
//! ```text
//! cargo bench --bench subscribers -- --subscribers 1000,5000,10000 [--events 30]
//!     [--interval-ms 300] [--postgres postgres://postgres@127.0.0.1:5432] [--query <doc>]
//!     [--keep-server]
//! ```
//!
//! `VOICEGRAPH_*` variables in the environment reach the server (e.g. `VOICEGRAPH_REDIS_URL`
//! to fan out through Redis); the bench sets the data dir, listen address, admin key and, with
//! `--postgres`, the database.

use std::collections::BTreeMap;
use std::io::{Cursor, Write as _};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use clap::Parser;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use voicegraph::config::{Layers, LogFormat};
use voicegraph::startup::{Application, Roles};

/// Set to `server` in the child process.
const ROLE_ENV: &str = "VG_BENCH_ROLE";
const DATA_DIR_ENV: &str = "VG_BENCH_DATA_DIR";
const DATABASE_URL_ENV: &str = "VG_BENCH_DATABASE_URL";
/// The child's first stdout line: this prefix, then its port.
const PORT_LINE: &str = "vg-bench-port ";
const ADMIN_KEY: &str = "vg_bench_platform_admin_key";
const DEFAULT_QUERY: &str =
    "subscription { callEvents { id cursor kind status callId at call { status tags } } }";

/// Clients send their own `ping` this often (the server drops a client silent for 60 s).
const CLIENT_PING: Duration = Duration::from_secs(20);
/// Warm-up: at most this many events, each given until delivery stalls this long.
const WARM_UP_TRIES: usize = 10;
const WARM_UP_STALL: Duration = Duration::from_secs(10);
/// `/proc/<pid>/stat` counts CPU time in clock ticks; USER_HZ is 100 on Linux.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

#[derive(Parser, Debug)]
#[command(about = "Idle-subscriber capacity and fan-out latency of one voicegraph instance")]
struct Args {
    /// Subscriber counts to measure, each on a fresh server.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
    subscribers: Vec<usize>,
    /// Events timed per N.
    #[arg(long, default_value_t = 30)]
    events: usize,
    /// Spacing of the timed events.
    #[arg(long, default_value_t = 300)]
    interval_ms: u64,
    /// Postgres server URL; each N gets a fresh database on it (default: SQLite in a temp dir).
    #[arg(long)]
    postgres: Option<String>,
    /// The subscription document each client sends (its events must select `cursor`).
    #[arg(long, default_value = DEFAULT_QUERY)]
    query: String,
    /// After the timed events, print the server's URL and wait for Enter (for profiling).
    #[arg(long)]
    keep_server: bool,
    /// WebSocket handshakes in flight while opening.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// How long to wait for stragglers after the last timed event.
    #[arg(long, default_value_t = 60)]
    straggler_timeout_secs: u64,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> ExitCode {
    if std::env::var(ROLE_ENV).as_deref() == Ok("server") {
        return server::main();
    }
    let args = Args::parse();
    if !args.query.contains("cursor") {
        eprintln!("subscribers: --query must select `cursor` on its events");
        return ExitCode::FAILURE;
    }
    // One client thread: the clients must not take the server's cores.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("subscribers: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let fds = rlimit::increase_nofile_limit(u64::MAX).context("raising the fd limit")?;
    let largest = args.subscribers.iter().copied().max().unwrap_or(0);
    if largest as u64 + 256 > fds {
        bail!(
            "{largest} subscribers need about {} file descriptors in this process and as many in \
             the server, but the hard limit is {fds}: raise it (ulimit -Hn, limits.conf)",
            largest + 256
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let argv: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    println!(
        "command: cargo bench --bench subscribers -- {}",
        argv.join(" ")
    );
    let passed: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("VOICEGRAPH_"))
        .collect();
    println!(
        "server: every role, {}, {cores} worker threads; client: 1 thread; fd limit {fds}{}",
        if args.postgres.is_some() {
            "Postgres"
        } else {
            "SQLite"
        },
        if passed.is_empty() {
            String::new()
        } else {
            format!("; passed to the server: {}", passed.join(", "))
        }
    );
    println!(
        "subscription: {}\nevents per N: {} tagCall, every {} ms",
        args.query, args.events, args.interval_ms
    );
    let mut rows = Vec::new();
    for &n in &args.subscribers {
        eprintln!("--- N = {n}");
        let row = run_one(&args, n).await?;
        eprintln!("{}", Row::header());
        eprintln!("{}", row.line());
        rows.push(row);
    }
    println!();
    println!("{}", Row::header());
    for row in &rows {
        println!("{}", row.line());
    }
    println!();
    for row in &rows {
        for note in &row.notes {
            println!("N={}: {note}", row.n);
        }
    }
    Ok(())
}

/// One N on a fresh server (and database).
async fn run_one(args: &Args, n: usize) -> anyhow::Result<Row> {
    let database = match &args.postgres {
        Some(url) => Some(PgDatabase::create(url).await?),
        None => None,
    };
    let server = Server::start(database.as_ref().map(|d| d.url.as_str())).await?;
    let result = measure(args, n, &server).await;
    let log = server.stop().await;
    if let Some(db) = database {
        if let Err(e) = db.drop().await {
            eprintln!("could not drop the bench database: {e:#}");
        }
    }
    let mut row = result?;
    if let Some(log) = log {
        row.notes.push(log);
    }
    Ok(row)
}

// ---------------------------------------------------------------------------------------------
// The measurement of one N.

async fn measure(args: &Args, n: usize, server: &Server) -> anyhow::Result<Row> {
    let api = Api::new(&server.addr);
    let mut notes = Vec::new();

    // The call every event is about, processed before anything is measured.
    let call_id = api.submit_call(&short_wav()).await?;
    api.wait_completed(&call_id).await?;
    let rss_before = settle_rss(server.pid, Duration::from_secs(3)).await?;
    eprintln!(
        "warm-up call {call_id} completed; RSS {:.1} MB",
        mb(rss_before)
    );

    // Open the subscriptions.
    let shared = Arc::new(Shared::default());
    let cfg = Arc::new(ClientConfig::new(&server.addr, &args.query));
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let (opened_tx, mut opened_rx) = mpsc::unbounded_channel();
    let started = Instant::now();
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let permit = gate.clone().acquire_owned().await?;
        clients.push(tokio::spawn(client(
            cfg.clone(),
            shared.clone(),
            permit,
            opened_tx.clone(),
        )));
    }
    drop(opened_tx);
    let mut opened = 0;
    let mut open_errors: BTreeMap<String, usize> = BTreeMap::new();
    while let Some(r) = opened_rx.recv().await {
        match r {
            Ok(()) => opened += 1,
            Err(e) => *open_errors.entry(e).or_default() += 1,
        }
    }
    let open_time = started.elapsed();
    eprintln!("opened {opened}/{n} in {:.1} s", open_time.as_secs_f64());
    if !open_errors.is_empty() {
        notes.push(format!(
            "{} subscriptions failed to open: {}",
            n - opened,
            summarize(&open_errors)
        ));
    }

    // Warm up: subscriptions are not acknowledged, so send events until each has had one.
    let mut tries = 0;
    while shared.live.load(Ordering::SeqCst) < opened && tries < WARM_UP_TRIES {
        tries += 1;
        api.tag(&call_id).await?;
        let mut last = shared.live.load(Ordering::SeqCst);
        let mut progress = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let live = shared.live.load(Ordering::SeqCst);
            if live >= opened {
                break;
            }
            if live != last {
                last = live;
                progress = Instant::now();
            } else if progress.elapsed() > WARM_UP_STALL {
                break;
            }
        }
    }
    let live = shared.live.load(Ordering::SeqCst);
    eprintln!("warm-up: {live}/{opened} live after {tries} events");
    notes.push(format!(
        "warm-up: {tries} events; {} of {opened} open subscriptions never received one",
        opened - live
    ));
    wait_quiet(
        &shared.received,
        Duration::from_secs(2),
        Duration::from_secs(60),
    )
    .await;
    let rss_idle = settle_rss(server.pid, Duration::from_secs(5)).await?;
    eprintln!("idle RSS {:.1} MB", mb(rss_idle));

    // Timed events.
    let c0 = api
        .events_of(&call_id)
        .await?
        .iter()
        .map(|e| e.0)
        .max()
        .unwrap_or(0);
    shared.record_after.store(c0, Ordering::SeqCst);
    let cpu_self0 = cpu_ticks("self")?;
    let cpu_server0 = cpu_ticks(&server.pid.to_string())?;
    let t0 = Instant::now();
    let interval = Duration::from_millis(args.interval_ms);
    // Open loop: each event goes out on schedule whether or not the previous tagCall has been
    // answered, so a slow server does not lower the load it is offered.
    let mut sends = Vec::with_capacity(args.events);
    let mut emitting = Vec::with_capacity(args.events);
    for i in 0..args.events {
        tokio::time::sleep_until((t0 + interval * i as u32).into()).await;
        sends.push(unix_micros());
        let (api, call_id) = (api.clone(), call_id.clone());
        emitting.push(tokio::spawn(async move {
            let before = Instant::now();
            api.tag(&call_id)
                .await
                .map(|()| before.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let mut mutation_ms = Vec::with_capacity(args.events);
    for e in emitting {
        mutation_ms.push(e.await??);
    }
    let last_sent = Instant::now();
    let emitted = t0.elapsed();
    let events = wait_events(&api, &call_id, c0, args.events).await?;
    let timeout = Duration::from_secs(args.straggler_timeout_secs);
    let all_arrived = loop {
        let expected = shared.connected.load(Ordering::SeqCst) * args.events;
        if shared.delivered.load(Ordering::SeqCst) >= expected {
            break true;
        }
        if last_sent.elapsed() > timeout {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let fanout_wall = t0.elapsed().as_secs_f64();
    let cpu_self = (cpu_ticks("self")? - cpu_self0) as f64 / CLOCK_TICKS_PER_SEC;
    let cpu_server =
        (cpu_ticks(&server.pid.to_string())? - cpu_server0) as f64 / CLOCK_TICKS_PER_SEC;
    if !all_arrived {
        notes.push(format!(
            "stragglers: only {} of {} deliveries had arrived {} s after the last event",
            shared.delivered.load(Ordering::SeqCst),
            shared.connected.load(Ordering::SeqCst) * args.events,
            args.straggler_timeout_secs
        ));
    }
    // A moment for duplicates to show up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    eprintln!(
        "fan-out: {} deliveries in {fanout_wall:.1} s",
        shared.delivered.load(Ordering::SeqCst)
    );
    notes.push(format!(
        "events sent on schedule over {:.1} s, the last answered after {:.1} s; tagCall latency p50 {:.0} ms, max {:.0} ms",
        (interval * (args.events.saturating_sub(1)) as u32).as_secs_f64(),
        emitted.as_secs_f64(),
        percentile(&sorted(mutation_ms.clone()), 50.0).unwrap_or(0.0),
        percentile(&sorted(mutation_ms), 100.0).unwrap_or(0.0),
    ));
    let cpu_note = format!(
        "CPU during fan-out ({fanout_wall:.1} s): bench clients {:.0}% of a core, server {:.0}%",
        100.0 * cpu_self / fanout_wall,
        100.0 * cpu_server / fanout_wall
    );
    if cpu_self / fanout_wall > 0.5 {
        notes.push(format!(
            "{cpu_note} (HIGH: the clients may have slowed the server and their own receive times)"
        ));
    } else {
        notes.push(cpu_note);
    }

    if args.keep_server {
        println!(
            "server: http://{}/graphql (pid {}, admin key {ADMIN_KEY}), {} subscriptions open; \
             press Enter to close them and go on",
            server.addr,
            server.pid,
            shared.connected.load(Ordering::SeqCst)
        );
        let mut line = String::new();
        let _ = BufReader::new(tokio::io::stdin())
            .read_line(&mut line)
            .await;
    }

    // Close every client and see whether the memory comes back.
    shared.stop.cancel();
    let mut outcomes = Vec::with_capacity(n);
    for c in clients {
        outcomes.push(c.await?);
    }
    let rss_closed = settle_rss(server.pid, Duration::from_secs(5)).await?;

    // The events' origin: their `at`, when it is precise enough.
    let precision = fraction_digits(&events[0].1);
    let (origins, origin_label) = if precision >= 3 {
        let origins = events
            .iter()
            .map(|(_, at)| {
                chrono::DateTime::parse_from_rfc3339(at)
                    .map(|t| t.timestamp_micros())
                    .with_context(|| format!("event at {at:?} is not RFC 3339"))
            })
            .collect::<anyhow::Result<Vec<i64>>>()?;
        (
            origins,
            format!("event `at` ({precision} fractional digits)"),
        )
    } else {
        (
            sends.clone(),
            // Events are sequenced in send order unless the tagCalls overlapped.
            format!("tagCall SEND TIME (`at` has only {precision} fractional digits)"),
        )
    };
    notes.push(format!(
        "latency origin: {origin_label}, e.g. at = {}{}",
        events[0].1,
        shared
            .sample_at
            .lock()
            .unwrap()
            .as_ref()
            .map(|a| format!(" (a subscriber saw at = {a})"))
            .unwrap_or_default()
    ));

    let stats = Stats::compute(&outcomes, &events, &origins);
    let ended: BTreeMap<String, usize> =
        outcomes
            .iter()
            .filter_map(|o| o.ended.clone())
            .fold(BTreeMap::new(), |mut m, e| {
                *m.entry(e).or_default() += 1;
                m
            });
    if !ended.is_empty() {
        notes.push(format!(
            "connections that ended early: {}",
            summarize(&ended)
        ));
    }
    let error_payloads: usize = outcomes.iter().map(|o| o.error_payloads).sum();
    if error_payloads > 0 {
        notes.push(format!(
            "{error_payloads} event messages carried errors, e.g. {}",
            shared
                .first_error
                .lock()
                .unwrap()
                .clone()
                .unwrap_or_default()
        ));
    }
    if stats.unexpected > 0 {
        notes.push(format!(
            "{} deliveries of events that were not timed",
            stats.unexpected
        ));
    }
    Ok(Row {
        n,
        open_secs: open_time.as_secs_f64(),
        rss_before,
        rss_idle,
        rss_closed,
        per_sub_kb: if n > 0 {
            (rss_idle as f64 - rss_before as f64) / n as f64
        } else {
            0.0
        },
        last: stats.last,
        all: stats.all,
        missing: stats.missing,
        duplicated: stats.duplicated,
        notes,
    })
}

/// Polls the call's events until the `count` timed ones (after `c0`) are sequenced.
async fn wait_events(
    api: &Api,
    call_id: &str,
    c0: i64,
    count: usize,
) -> anyhow::Result<Vec<(i64, String)>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut events: Vec<(i64, String)> = api
            .events_of(call_id)
            .await?
            .into_iter()
            .filter(|e| e.0 > c0)
            .collect();
        events.sort();
        if events.len() >= count {
            if events.len() > count {
                bail!(
                    "{} events after cursor {c0}, expected {count}",
                    events.len()
                );
            }
            return Ok(events);
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {count} timed events were sequenced",
                events.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `counter` has not moved for `quiet` (or `max` passed).
async fn wait_quiet(counter: &AtomicUsize, quiet: Duration, max: Duration) {
    let start = Instant::now();
    let mut last = counter.load(Ordering::SeqCst);
    let mut since = Instant::now();
    while since.elapsed() < quiet && start.elapsed() < max {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = counter.load(Ordering::SeqCst);
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
}

fn fraction_digits(rfc3339: &str) -> usize {
    rfc3339.split_once('.').map_or(0, |(_, f)| {
        f.chars().take_while(char::is_ascii_digit).count()
    })
}

fn summarize(counts: &BTreeMap<String, usize>) -> String {
    let mut v: Vec<_> = counts.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1));
    v.iter()
        .take(5)
        .map(|(e, c)| format!("{c} × {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

// ---------------------------------------------------------------------------------------------
// Results.

#[derive(Default)]
struct Percentiles {
    p50: Option<f64>,
    p99: Option<f64>,
    max: Option<f64>,
}

impl Percentiles {
    fn of(values: Vec<f64>) -> Self {
        let v = sorted(values);
        Self {
            p50: percentile(&v, 50.0),
            p99: percentile(&v, 99.0),
            max: percentile(&v, 100.0),
        }
    }
}

struct Stats {
    /// Per event, the delay to its last subscriber.
    last: Percentiles,
    /// Every delivery's delay.
    all: Percentiles,
    missing: usize,
    duplicated: usize,
    unexpected: usize,
}

impl Stats {
    /// `events` are the timed events (cursor, at) in cursor order; `origins` their origins (µs).
    fn compute(outcomes: &[Outcome], events: &[(i64, String)], origins: &[i64]) -> Self {
        let index: BTreeMap<i64, usize> = events
            .iter()
            .enumerate()
            .map(|(i, (c, _))| (*c, i))
            .collect();
        let mut last = vec![f64::NAN; events.len()];
        let mut all = Vec::new();
        let (mut missing, mut duplicated, mut unexpected) = (0, 0, 0);
        let mut seen = vec![0u32; events.len()];
        for o in outcomes.iter().filter(|o| o.opened) {
            seen.iter_mut().for_each(|s| *s = 0);
            for &(cursor, received) in &o.deliveries {
                let Some(&i) = index.get(&cursor) else {
                    unexpected += 1;
                    continue;
                };
                seen[i] += 1;
                if seen[i] > 1 {
                    duplicated += 1;
                    continue;
                }
                let ms = (received - origins[i]) as f64 / 1000.0;
                all.push(ms);
                if last[i].is_nan() || ms > last[i] {
                    last[i] = ms;
                }
            }
            missing += seen.iter().filter(|s| **s == 0).count();
        }
        Self {
            last: Percentiles::of(last.into_iter().filter(|v| !v.is_nan()).collect()),
            all: Percentiles::of(all),
            missing,
            duplicated,
            unexpected,
        }
    }
}

struct Row {
    n: usize,
    open_secs: f64,
    rss_before: u64,
    rss_idle: u64,
    rss_closed: u64,
    per_sub_kb: f64,
    last: Percentiles,
    all: Percentiles,
    missing: usize,
    duplicated: usize,
    notes: Vec<String>,
}

impl Row {
    fn header() -> String {
        format!(
            "{:>6} | {:>6} | {:>27} | {:>8} | {:>26} | {:>17} | {:>7} | {:>4}",
            "N",
            "open s",
            "RSS before/idle/closed MB",
            "KB/sub",
            "to last sub p50/p99/max ms",
            "all p50/p99 ms",
            "missing",
            "dup"
        )
    }

    fn line(&self) -> String {
        let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.0}"));
        format!(
            "{:>6} | {:>6.1} | {:>27} | {:>8.1} | {:>26} | {:>17} | {:>7} | {:>4}",
            self.n,
            self.open_secs,
            format!(
                "{:.1} / {:.1} / {:.1}",
                mb(self.rss_before),
                mb(self.rss_idle),
                mb(self.rss_closed)
            ),
            self.per_sub_kb,
            format!(
                "{} / {} / {}",
                ms(self.last.p50),
                ms(self.last.p99),
                ms(self.last.max)
            ),
            format!("{} / {}", ms(self.all.p50), ms(self.all.p99)),
            self.missing,
            self.duplicated
        )
    }
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn unix_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

// ---------------------------------------------------------------------------------------------
// /proc readings.

/// `VmRSS` of a process, in KB.
fn rss_kb(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/<pid>/status")
}

/// Samples the RSS every second until two successive changes are within 0.5% (at least `min`,
/// at most 30 s); returns the last sample.
async fn settle_rss(pid: u32, min: Duration) -> anyhow::Result<u64> {
    let start = Instant::now();
    let mut prev = rss_kb(pid)?;
    let mut stable = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = rss_kb(pid)?;
        if now.abs_diff(prev) <= (prev / 200).max(256) {
            stable += 1;
        } else {
            stable = 0;
        }
        prev = now;
        if (stable >= 2 && start.elapsed() >= min) || start.elapsed() >= Duration::from_secs(30) {
            return Ok(now);
        }
    }
}

/// User + system CPU time of a process (`self` or a pid), in clock ticks.
fn cpu_ticks(pid: &str) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the parenthesised command name start at field 3 (state); utime and stime
    // are fields 14 and 15.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i - 3)
            .and_then(|v| v.parse().ok())
            .context("malformed stat")
    };
    Ok(field(14)? + field(15)?)
}

// ---------------------------------------------------------------------------------------------
// The subscribers.

/// What the clients share with the conductor.
#[derive(Default)]
struct Shared {
    /// Subscribers that have received at least one event.
    live: AtomicUsize,
    /// Subscriptions open and not ended.
    connected: AtomicUsize,
    /// Every event message received.
    received: AtomicUsize,
    /// Recorded deliveries of timed events.
    delivered: AtomicUsize,
    /// Deliveries with a cursor above this are timed events (0 until the warm-up is over).
    record_after: AtomicI64,
    sample_at: Mutex<Option<String>>,
    first_error: Mutex<Option<String>>,
    stop: CancellationToken,
}

struct ClientConfig {
    url: String,
    ws: WebSocketConfig,
    init: Utf8Bytes,
    subscribe: Utf8Bytes,
}

impl ClientConfig {
    fn new(addr: &str, query: &str) -> Self {
        Self {
            url: format!("ws://{addr}/graphql"),
            // Small buffers: a client reads one small message at a time.
            ws: WebSocketConfig::default()
                .read_buffer_size(4096)
                .write_buffer_size(0)
                .max_message_size(Some(1 << 20)),
            init: json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {ADMIN_KEY}") } })
                .to_string()
                .into(),
            subscribe: json!({ "id": "1", "type": "subscribe", "payload": { "query": query } })
                .to_string()
                .into(),
        }
    }
}

#[derive(Default)]
struct Outcome {
    opened: bool,
    /// (cursor, receive time in µs since the epoch) of each timed event received.
    deliveries: Vec<(i64, i64)>,
    /// Why the connection ended before the bench closed it.
    ended: Option<String>,
    error_payloads: usize,
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The message type, parsed first; the rest only for `next` messages.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize)]
struct Next<'a> {
    #[serde(borrow)]
    payload: NextPayload<'a>,
}

#[derive(Deserialize)]
struct NextPayload<'a> {
    #[serde(default, borrow)]
    data: Option<BTreeMap<std::borrow::Cow<'a, str>, Option<EventFields<'a>>>>,
    #[serde(default)]
    errors: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct EventFields<'a> {
    #[serde(default, borrow)]
    cursor: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    at: Option<std::borrow::Cow<'a, str>>,
}

/// One subscriber: opens (holding an opening permit), reports, then listens until told to stop.
async fn client(
    cfg: Arc<ClientConfig>,
    shared: Arc<Shared>,
    permit: OwnedSemaphorePermit,
    opened: mpsc::UnboundedSender<Result<(), String>>,
) -> Outcome {
    let mut out = Outcome::default();
    let ws = match tokio::time::timeout(Duration::from_secs(60), open(&cfg)).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            let _ = opened.send(Err(e));
            return out;
        }
        Err(_) => {
            let _ = opened.send(Err("no connection_ack within 60 s".into()));
            return out;
        }
    };
    drop(permit);
    out.opened = true;
    shared.connected.fetch_add(1, Ordering::SeqCst);
    let _ = opened.send(Ok(()));
    drop(opened);
    listen(ws, &shared, &mut out).await;
    if out.ended.is_some() {
        shared.connected.fetch_sub(1, Ordering::SeqCst);
    }
    out
}

async fn open(cfg: &ClientConfig) -> Result<Ws, String> {
    let mut req = cfg
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| e.to_string())?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("graphql-transport-ws"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(cfg.ws), true)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    ws.send(Message::Text(cfg.init.clone()))
        .await
        .map_err(|e| format!("send connection_init: {e}"))?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let head: Head = serde_json::from_str(&t).map_err(|e| e.to_string())?;
                match head.kind.as_ref() {
                    "connection_ack" => break,
                    "ping" => ws
                        .send(Message::text(r#"{"type":"pong"}"#))
                        .await
                        .map_err(|e| e.to_string())?,
                    _ => return Err(format!("expected connection_ack, got {t}")),
                }
            }
            Some(Ok(Message::Close(f))) => return Err(format!("closed during init: {f:?}")),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("during init: {e}")),
            None => return Err("closed during init".into()),
        }
    }
    ws.send(Message::Text(cfg.subscribe.clone()))
        .await
        .map_err(|e| format!("send subscribe: {e}"))?;
    Ok(ws)
}

async fn listen(mut ws: Ws, shared: &Shared, out: &mut Outcome) {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + CLIENT_PING, CLIENT_PING);
    let mut live = false;
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => {
                let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(None)).await;
                return;
            }
            _ = ping.tick() => {
                if let Err(e) = ws.send(Message::text(r#"{"type":"ping"}"#)).await {
                    out.ended = Some(format!("sending ping: {e}"));
                    return;
                }
            }
            msg = ws.next() => {
                let received = unix_micros();
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(f))) => {
                        out.ended = Some(format!("closed by the server: {f:?}"));
                        return;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        out.ended = Some(format!("read: {e}"));
                        return;
                    }
                    None => {
                        out.ended = Some("stream ended".into());
                        return;
                    }
                };
                let Ok(head) = serde_json::from_str::<Head>(&text) else {
                    out.ended = Some(format!("unparsable message: {text}"));
                    return;
                };
                match head.kind.as_ref() {
                    "next" => {}
                    "ping" => {
                        if let Err(e) = ws.send(Message::text(r#"{"type":"pong"}"#)).await {
                            out.ended = Some(format!("sending pong: {e}"));
                            return;
                        }
                        continue;
                    }
                    "pong" => continue,
                    other => {
                        out.ended = Some(format!("server sent `{other}`: {text}"));
                        return;
                    }
                }
                let Ok(next) = serde_json::from_str::<Next>(&text) else {
                    out.ended = Some(format!("unparsable next message: {text}"));
                    return;
                };
                if next.payload.errors.is_some() {
                    out.error_payloads += 1;
                    let mut first = shared.first_error.lock().unwrap();
                    if first.is_none() {
                        *first = Some(text.to_string());
                    }
                }
                let event = next
                    .payload
                    .data
                    .as_ref()
                    .and_then(|d| d.values().next())
                    .and_then(Option::as_ref);
                let Some(event) = event else { continue };
                shared.received.fetch_add(1, Ordering::SeqCst);
                if !live {
                    live = true;
                    shared.live.fetch_add(1, Ordering::SeqCst);
                    if let Some(at) = &event.at {
                        shared.sample_at.lock().unwrap().get_or_insert_with(|| at.to_string());
                    }
                }
                let Some(cursor) = event.cursor.as_ref().and_then(|c| c.parse::<i64>().ok()) else {
                    continue;
                };
                let after = shared.record_after.load(Ordering::SeqCst);
                if after > 0 && cursor > after {
                    out.deliveries.push((cursor, received));
                    shared.delivered.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The conductor's GraphQL client.

#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    url: String,
}

impl Api {
    fn new(addr: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            url: format!("http://{addr}/graphql"),
        }
    }

    async fn gql(&self, query: &str, variables: Value) -> anyhow::Result<Value> {
        let body: Value = self
            .http
            .post(&self.url)
            .bearer_auth(ADMIN_KEY)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await?
            .json()
            .await?;
        if let Some(errors) = body.get("errors") {
            bail!("GraphQL errors: {errors}");
        }
        Ok(body["data"].clone())
    }

    /// Submits a recording through the multipart `submitCall`; returns the call id.
    async fn submit_call(&self, wav: &[u8]) -> anyhow::Result<String> {
        let ops = json!({
            "query": "mutation($input: SubmitCallInput!) { submitCall(input: $input) { call { id } } }",
            "variables": { "input": { "recording": null, "externalId": "subscribers-bench" } },
        });
        let form = reqwest::multipart::Form::new()
            .text("operations", ops.to_string())
            .text(
                "map",
                json!({ "0": ["variables.input.recording"] }).to_string(),
            )
            .part(
                "0",
                reqwest::multipart::Part::bytes(wav.to_vec())
                    .file_name("call.wav")
                    .mime_str("audio/wav")?,
            );
        let body: Value = self
            .http
            .post(&self.url)
            .bearer_auth(ADMIN_KEY)
            .header("apollo-require-preflight", "true")
            .multipart(form)
            .send()
            .await?
            .json()
            .await?;
        body["data"]["submitCall"]["call"]["id"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("submitCall failed: {body}"))
    }

    async fn wait_completed(&self, call_id: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let d = self
                .gql(
                    "query($id: ID!) { call(id: $id) { status error } }",
                    json!({ "id": call_id }),
                )
                .await?;
            match d["call"]["status"].as_str() {
                Some("COMPLETED") => return Ok(()),
                Some("FAILED") => bail!("the warm-up call failed: {}", d["call"]["error"]),
                _ if Instant::now() > deadline => bail!("the warm-up call never completed"),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// `tagCall` with the same tag each time: each makes one `TAGGED` event and the tag list
    /// stays under its limit.
    async fn tag(&self, call_id: &str) -> anyhow::Result<()> {
        self.gql(
            "mutation($id: ID!) { tagCall(id: $id, tags: [\"bench\"]) { id } }",
            json!({ "id": call_id }),
        )
        .await?;
        Ok(())
    }

    /// The call's sequenced events as (cursor, at).
    async fn events_of(&self, call_id: &str) -> anyhow::Result<Vec<(i64, String)>> {
        // `Call.events` pages (at most 100 at a time): follow the cursor to the end.
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let d = self
                .gql(
                    "query($id: ID!, $after: String) { call(id: $id) { events(first: 100, after: $after) { cursor at } } }",
                    json!({ "id": call_id, "after": after }),
                )
                .await?;
            let page = d["call"]["events"].as_array().context("no events")?;
            for e in page {
                let cursor = e["cursor"].as_str().and_then(|c| c.parse().ok());
                let at = e["at"].as_str().map(str::to_string);
                out.push(cursor.zip(at).context("an event without cursor or at")?);
            }
            match page.last().and_then(|e| e["cursor"].as_str()) {
                Some(c) if page.len() == 100 => after = Some(c.to_string()),
                _ => return Ok(out),
            }
        }
    }
}

/// A 2-second mono call: one speaker from 0.2 to 1.6 s over quiet noise.
fn short_wav() -> Vec<u8> {
    let rate = 8000;
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = Cursor::new(Vec::new());
    let mut w = hound::WavWriter::new(&mut out, spec).expect("wav writer");
    let mut seed: u32 = 7;
    for i in 0..2 * rate {
        let t = i as f64 / rate as f64;
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let noise = ((seed >> 16) as f64 / 65536.0) * 2.0 - 1.0;
        let amplitude = if (0.2..1.6).contains(&t) {
            9000.0
        } else {
            15.0
        };
        w.write_sample((noise * amplitude) as i16).expect("sample");
    }
    w.finalize().expect("wav");
    out.into_inner()
}

// ---------------------------------------------------------------------------------------------
// The server process.

struct Server {
    child: tokio::process::Child,
    pid: u32,
    addr: String,
    log: PathBuf,
    _data_dir: tempfile::TempDir,
}

impl Server {
    async fn start(database_url: Option<&str>) -> anyhow::Result<Self> {
        let data_dir = tempfile::tempdir()?;
        let log = std::env::temp_dir().join(format!(
            "vg-bench-server-{}-{}.log",
            std::process::id(),
            unix_micros()
        ));
        let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
        cmd.env(ROLE_ENV, "server")
            .env(DATA_DIR_ENV, data_dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn");
        }
        if let Some(url) = database_url {
            cmd.env(DATABASE_URL_ENV, url);
        }
        let mut child = cmd.spawn().context("starting the server process")?;
        let pid = child.id().context("server pid")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(120),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .context("the server did not start within 120 s")??;
        let Some(port) = line.trim().strip_prefix(PORT_LINE) else {
            let _ = child.kill().await;
            bail!(
                "the server did not start; its log ({}):\n{}",
                log.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        let addr = format!("127.0.0.1:{port}");
        eprintln!("server pid {pid} on {addr}, log {}", log.display());
        Ok(Self {
            child,
            pid,
            addr,
            log,
            _data_dir: data_dir,
        })
    }

    /// Kills the server; returns a note about its log when it logged anything.
    async fn stop(mut self) -> Option<String> {
        let _ = self.child.kill().await;
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        if lines.is_empty() {
            let _ = std::fs::remove_file(&self.log);
            return None;
        }
        Some(format!(
            "the server logged {} lines ({}), first: {}",
            lines.len(),
            self.log.display(),
            lines[0]
        ))
    }
}

/// A fresh database on a Postgres server, dropped after the run.
struct PgDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl PgDatabase {
    async fn create(server_url: &str) -> anyhow::Result<Self> {
        let mut admin = reqwest::Url::parse(server_url).context("--postgres is not a URL")?;
        if admin.path().trim_matches('/').is_empty() {
            admin.set_path("/postgres");
        }
        let name = format!("vg_bench_{}", uuid::Uuid::new_v4().simple());
        let mut url = admin.clone();
        url.set_path(&format!("/{name}"));
        let db = Self {
            admin_url: admin.to_string(),
            name,
            url: url.to_string(),
        };
        db.admin(&format!("CREATE DATABASE \"{}\"", db.name))
            .await?;
        Ok(db)
    }

    async fn drop(self) -> anyhow::Result<()> {
        self.admin(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        ))
        .await
    }

    async fn admin(&self, sql: &str) -> anyhow::Result<()> {
        let conn = sea_orm::Database::connect(&self.admin_url)
            .await
            .with_context(|| format!("connecting to {}", self.admin_url))?;
        sea_orm::ConnectionTrait::execute_unprepared(&conn, sql)
            .await
            .with_context(|| sql.to_string())?;
        let _ = conn.close().await;
        Ok(())
    }
}

/// The child process: voicegraph with every role, on the machine's cores.
mod server {
    use super::*;

    pub fn main() -> ExitCode {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cores)
            .enable_all()
            .build()
            .expect("tokio runtime");
        match rt.block_on(serve()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench server: {e:#}");
                ExitCode::FAILURE
            }
        }
    }

    async fn serve() -> anyhow::Result<()> {
        voicegraph::telemetry::init(LogFormat::Text);
        let data_dir = std::env::var(DATA_DIR_ENV).context(DATA_DIR_ENV)?;
        let mut layers = Layers::default();
        // Thousands of sockets from one key and one address are the point here (the environment
        // may still set limits).
        layers
            .set("max_sockets_per_key", "0")
            .set("max_subscriptions_per_key", "0")
            .set("address_rate_limit_rps", "0")
            .set("rate_limit_rps", "0")
            .set("tenant_rate_limit_rps", "0")
            .set("max_connections_per_ip", "0");
        layers.merge_env(std::env::vars());
        layers
            .set("data_dir", data_dir)
            .set("listen", "127.0.0.1:0")
            .set("bootstrap_admin_key", ADMIN_KEY);
        if let Ok(url) = std::env::var(DATABASE_URL_ENV) {
            layers.set("database_url", url);
        }
        let app = Application::build(layers.settings()?, Roles::ALL).await?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{PORT_LINE}{}", app.port())?;
            out.flush()?;
        }
        // The parent holds our stdin: when it goes away, so do we.
        tokio::spawn(async {
            let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut tokio::io::sink()).await;
            std::process::exit(0);
        });
        app.run_until_stopped().await
    }
}
