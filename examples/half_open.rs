//! The half-open connection attack at full scale, against the real binary: 20,082 connections
//! that send half a request and then nothing, more than the server's file-descriptor limit,
//! while `/healthz`, `/readyz` and a GraphQL query are timed on fresh connections.
//!
//! ```sh
//! cargo build --bin voicegraph && cargo run --example half_open [-- CONNECTIONS]
//! ```
//!
//! Three rounds: from many addresses (the total cap and eviction hold), from one address (the
//! per-address cap holds), and with the caps lifted above the descriptor limit (as before they
//! existed). The attack runs in two child processes, since each process may hold only as many
//! descriptors as the server. Linux only (it binds client sockets to addresses of 127/8).

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const ADMIN_KEY: &str = "vg_half_open_example_admin_key";
const ATTACKERS: usize = 2;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Runtime::new()?;
    if args.get(1).map(String::as_str) == Some("attack") {
        // attack <server> <first address as a.b.c.d> <connections> <per address>
        let server: SocketAddr = args[2].parse()?;
        let first: Ipv4Addr = args[3].parse()?;
        let n: usize = args[4].parse()?;
        let per_address: usize = args[5].parse()?;
        return rt.block_on(attack(server, first, n, per_address));
    }
    let total: usize = args
        .get(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(20_082);
    rt.block_on(run(total))
}

/// Opens `n` half-open connections and holds them until standard input closes.
async fn attack(
    server: SocketAddr,
    first: Ipv4Addr,
    n: usize,
    per_address: usize,
) -> anyhow::Result<()> {
    let first = u32::from(first);
    let mut held = Vec::with_capacity(n);
    let mut failed = 0;
    // In waves, so that the server's backlog is not the bottleneck being measured.
    for wave in (0..n).collect::<Vec<_>>().chunks(500) {
        let mut tasks = Vec::new();
        for &i in wave {
            let source = Ipv4Addr::from(first + (i / per_address) as u32);
            tasks.push(tokio::spawn(async move {
                let socket = TcpSocket::new_v4()?;
                socket.bind(SocketAddr::from((source, 0)))?;
                let mut s = tokio::time::timeout(Duration::from_secs(30), socket.connect(server))
                    .await
                    .map_err(std::io::Error::other)??;
                let _ = s
                    .write_all(b"GET /graphql HTTP/1.1\r\nHost: voicegraph\r\n")
                    .await;
                Ok::<_, std::io::Error>(s)
            }));
        }
        for t in tasks {
            match t.await? {
                Ok(s) => held.push(s),
                Err(_) => failed += 1,
            }
        }
    }
    println!("opened {} failed {failed}", held.len());
    std::io::stdout().flush()?;
    // Hold until the parent says so.
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    })
    .await?;
    drop(held);
    Ok(())
}

struct Server {
    addr: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_server(vars: &[(&str, &str)]) -> anyhow::Result<Server> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("voicegraph"))
        .filter(|p| p.exists())
        .ok_or_else(|| anyhow::anyhow!("build the server first: cargo build --bin voicegraph"))?;
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(bin);
    cmd.arg("dev")
        .env("VOICEGRAPH_DATA_DIR", dir.path())
        .env("VOICEGRAPH_LISTEN", &addr)
        .env("VOICEGRAPH_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in vars {
        cmd.env(format!("VOICEGRAPH_{}", k.to_uppercase()), v);
    }
    let server = Server {
        addr,
        child: cmd.spawn()?,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(&server.addr, "/healthz", Duration::from_secs(2))
        .await
        .0
        != Some(200)
    {
        anyhow::ensure!(Instant::now() < deadline, "the server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(server)
}

/// One request on a fresh connection: its status (`None`: no answer in time) and body.
async fn request(addr: &str, raw: String, within: Duration) -> (Option<u16>, String) {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(raw.as_bytes()).await.ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text.get(9..12)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((status, body))
    };
    match tokio::time::timeout(within, attempt).await {
        Ok(Some((status, body))) => (Some(status), body),
        _ => (None, String::new()),
    }
}

async fn get(addr: &str, path: &str, within: Duration) -> (Option<u16>, String) {
    request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: voicegraph\r\nConnection: close\r\n\r\n"),
        within,
    )
    .await
}

async fn graphql(addr: &str, within: Duration) -> (Option<u16>, String) {
    let body = r#"{"query":"{ viewer { role } calls(first: 5) { totalCount } }"}"#;
    request(
        addr,
        format!(
            "POST /graphql HTTP/1.1\r\nHost: voicegraph\r\nConnection: close\r\nAuthorization: Bearer {ADMIN_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
        within,
    )
    .await
}

/// Every series of a metric, as `labels value`.
async fn metric(addr: &str, name: &str) -> String {
    let (_, text) = get(addr, "/metrics", Duration::from_secs(5)).await;
    let values: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| series.split('{').next() == Some(name))
        .map(|(series, value)| format!("{}{value}", series.trim_start_matches(name)))
        .collect();
    if values.is_empty() {
        "(no answer)".into()
    } else {
        values.join(", ")
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn round(
    name: &str,
    total: usize,
    per_address: usize,
    vars: &[(&str, &str)],
) -> anyhow::Result<()> {
    println!("\n== {name}");
    let server = start_server(vars).await?;
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    let share = total.div_ceil(ATTACKERS);
    let started = Instant::now();
    for a in 0..ATTACKERS {
        // Each attacker from its own block of addresses: 127.1.<a>.1 and up (or one address).
        let first = if per_address >= total {
            Ipv4Addr::new(127, 2, 0, 1)
        } else {
            Ipv4Addr::new(127, 1, a as u8, 1)
        };
        let child = Command::new(&exe)
            .args([
                "attack",
                &server.addr,
                &first.to_string(),
                &share.to_string(),
                &per_address.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        children.push(child);
    }
    let mut opened = 0;
    for c in &mut children {
        let mut line = String::new();
        BufReader::new(c.stdout.as_mut().unwrap()).read_line(&mut line)?;
        let n: usize = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        opened += n;
    }
    println!(
        "attack: {opened} connections opened in {:.1?}, held while probing",
        started.elapsed()
    );

    let mut healthz = Vec::new();
    let mut failures = 0;
    let probe_until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < probe_until {
        let t = Instant::now();
        let (status, _) = get(&server.addr, "/healthz", Duration::from_secs(5)).await;
        if status == Some(200) {
            healthz.push(t.elapsed());
        } else {
            failures += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    healthz.sort();
    let t = Instant::now();
    let (ready, _) = get(&server.addr, "/readyz", Duration::from_secs(5)).await;
    let ready_took = t.elapsed();
    let t = Instant::now();
    let (gql, body) = graphql(&server.addr, Duration::from_secs(5)).await;
    let gql_took = t.elapsed();
    println!(
        "/healthz: {} answered, {failures} failed or timed out (5 s); p50 {:.1?}, p99 {:.1?}, max {:.1?}",
        healthz.len(),
        percentile(&healthz, 0.5),
        percentile(&healthz, 0.99),
        healthz.last().copied().unwrap_or_default(),
    );
    println!(
        "/readyz: {ready:?} in {ready_took:.1?}; GraphQL: {gql:?} in {gql_took:.1?} {}",
        body.chars().take(80).collect::<String>()
    );
    for m in [
        "voicegraph_http_connections",
        "voicegraph_http_connections_evicted_total",
        "voicegraph_http_connections_refused_total",
        "voicegraph_http_accept_errors_total",
        "voicegraph_http_timeouts_total",
    ] {
        println!("{m}: {}", metric(&server.addr, m).await);
    }
    for mut c in children {
        drop(c.stdin.take());
        let _ = c.wait();
    }
    Ok(())
}

async fn run(total: usize) -> anyhow::Result<()> {
    let limit = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    println!("descriptor limit (soft, hard): {limit:?}; {total} half-open connections per round");
    // The header timeout is raised in every round, so that the attack holds its connections for
    // the whole measurement and only the caps (and the descriptor reserve) are at work.
    let hold = ("header_read_timeout_secs", "600");
    round(
        "from many addresses (250 each): total cap and eviction",
        total,
        250,
        &[hold],
    )
    .await?;
    round("from one address: per-address cap", total, total, &[hold]).await?;
    round(
        "caps lifted above the descriptor limit (as before they existed)",
        total,
        250,
        &[
            hold,
            ("max_connections", "1000000"),
            ("max_connections_per_ip", "0"),
        ],
    )
    .await?;
    Ok(())
}
