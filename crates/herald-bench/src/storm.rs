//! The `storm` scenario: N WebSocket clients connect and subscribe to one channel all at
//! once, with no ramp and no limit on handshakes in flight, then one publication must reach
//! every one of them.
//!
//! The clients live in several worker processes (this binary again, `herald-bench
//! storm-worker`), because one process may hold at most ~20,000 open files here and a storm
//! is meant to go past what one process holds; each worker binds its connections to the
//! loopback source addresses round robin ([`crate::net::connect_tcp`]), past the ~28,000
//! ephemeral ports of one source address. The coordinator (this module's [`run`]) talks to
//! its workers over their stdin and stdout, one JSON object a line:
//!
//! ```text
//! worker -> coordinator   {"ready":{"nofile":20000}}          connected to nothing yet
//! coordinator -> worker   go                                  every worker at once
//! worker -> coordinator   {"progress":{...}} ...              every --progress seconds
//! worker -> coordinator   {"done":{...}}                      every client subscribed or failed
//! coordinator -> worker   deliver <timeout_ms>                after the one publication
//! worker -> coordinator   {"delivered":{...}}                 how many clients received it
//! coordinator closes stdin: the worker closes its connections and exits
//! ```
//!
//! Each client measures its own connect + subscribe time (TCP connect, WebSocket upgrade,
//! connect command, subscribe command, both replies) and classifies a failure by its cause:
//! connection refused, reset, timed out (the kernel's, or the client's `--client-timeout`),
//! or anything else. The coordinator reads the kernel's listen-queue counters
//! (`TcpExt: ListenOverflows ListenDrops` of `/proc/net/netstat`, see
//! [`crate::procstat::listen_counters`]) before the start and after the last client: the
//! load generator listens on nothing, so on a machine where the server and the generator are
//! alone the delta is the server's listen queue overflowing.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use herald::protocol::Encoding;
use herald::protocol::proto::{self, Command, Reply};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_websockets::{ClientBuilder, Limits, Message, WebSocketStream};

use crate::clients::Transport;
use crate::procstat::{self, ServerUsage};
use crate::publisher::api_call;
use crate::scenario::Common;
use crate::stats::{Latency, LatencySummary};

/// Failed clients by cause; each client fails at most once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StormFailures {
    /// TCP connect refused (`ECONNREFUSED`).
    pub refused: u64,
    /// Connection reset or aborted by the peer (`ECONNRESET`, `ECONNABORTED`, `EPIPE`).
    pub reset: u64,
    /// Timed out: the kernel gave up connecting (`ETIMEDOUT`), or connect + subscribe took
    /// longer than `--client-timeout`.
    pub timeouts: u64,
    /// Anything else (an error reply, a disconnect, a bad upgrade response, no free port).
    pub other: u64,
}

impl StormFailures {
    /// Every failed client.
    pub fn total(&self) -> u64 {
        self.refused + self.reset + self.timeouts + self.other
    }

    fn add(&mut self, o: &StormFailures) {
        self.refused += o.refused;
        self.reset += o.reset;
        self.timeouts += o.timeouts;
        self.other += o.other;
    }
}

/// `storm` figures.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StormResult {
    /// Clients asked for.
    pub clients: usize,
    /// Worker processes they were spread over.
    pub workers: usize,
    /// Open-file limit of each worker process (the lowest, after raising it to the hard limit).
    pub nofile_per_worker: u64,
    /// Clients connected and subscribed.
    pub subscribed: u64,
    /// Milliseconds from the start until every client was subscribed; `None` when some failed.
    pub all_subscribed_ms: Option<f64>,
    /// Milliseconds from the start until the last client that made it was subscribed.
    pub last_subscribed_ms: f64,
    /// Subscribed clients per second from the start to the last subscribe.
    pub connects_per_sec: f64,
    /// Connect + subscribe time per client (TCP connect to subscribe reply).
    pub latency: LatencySummary,
    /// Failed clients by cause.
    pub failures: StormFailures,
    /// `TcpExt: ListenOverflows` delta over the storm (accept queue full); `None` where
    /// `/proc/net/netstat` is not readable.
    pub listen_overflows: Option<u64>,
    /// `TcpExt: ListenDrops` delta over the storm (every dropped SYN or handshake ACK,
    /// overflows included).
    pub listen_drops: Option<u64>,
    /// Whether the one publication was acknowledged by the server API.
    pub published: bool,
    /// Subscribed clients that received it.
    pub delivered: u64,
    /// Subscribed clients that did not receive it within the drain timeout (must be 0).
    pub lost: u64,
    /// Subscribed clients whose connection ended before the end of the run.
    pub closed: u64,
    /// Server CPU, memory and descriptors over the storm (start to last subscribe).
    pub server: ServerUsage,
}

/// One worker process: its share of the clients. Also the command line of
/// `herald-bench storm-worker` (the coordinator builds it with [`WorkerArgs::to_args`]).
#[derive(Clone, Debug, clap::Args)]
pub struct WorkerArgs {
    /// Server address.
    #[arg(long)]
    pub addr: SocketAddr,
    /// Token secret (client.token.hmac_secret_key).
    #[arg(long, env = "BENCH_SECRET", hide_env_values = true)]
    pub secret: String,
    /// User the clients connect as.
    #[arg(long)]
    pub user: String,
    /// Channel every client subscribes to.
    #[arg(long)]
    pub channel: String,
    /// Clients of this worker.
    #[arg(long)]
    pub clients: usize,
    /// Index of this worker's first client among all (source address choice).
    #[arg(long, default_value_t = 0)]
    pub first_id: usize,
    /// Source addresses, comma-separated (empty: the kernel's choice).
    #[arg(long, default_value = "")]
    pub sources: String,
    /// Protobuf (`centrifuge-protobuf`) instead of JSON.
    #[arg(long)]
    pub protobuf: bool,
    /// Longest connect + subscribe per client, seconds.
    #[arg(long, default_value_t = 60.0)]
    pub client_timeout: f64,
    /// Seconds between progress lines (0: none).
    #[arg(long, default_value_t = 1.0)]
    pub progress: f64,
}

impl WorkerArgs {
    /// The command-line arguments that parse back into `self` (the secret goes through the
    /// environment, `BENCH_SECRET`, not the command line).
    pub fn to_args(&self) -> Vec<String> {
        let mut v = vec![
            "--addr".to_string(),
            self.addr.to_string(),
            "--user".into(),
            self.user.clone(),
            "--channel".into(),
            self.channel.clone(),
            "--clients".into(),
            self.clients.to_string(),
            "--first-id".into(),
            self.first_id.to_string(),
            "--sources".into(),
            self.sources.clone(),
            "--client-timeout".into(),
            self.client_timeout.to_string(),
            "--progress".into(),
            self.progress.to_string(),
        ];
        if self.protobuf {
            v.push("--protobuf".into());
        }
        v
    }
}

/// A line from a worker.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Msg {
    Ready { nofile: u64 },
    Progress { subscribed: u64, failed: u64 },
    Done(WorkerDone),
    Delivered { received: u64, closed: u64 },
}

/// A worker's clients once each subscribed or failed.
#[derive(Debug, Default, Serialize, Deserialize)]
struct WorkerDone {
    subscribed: u64,
    failures: StormFailures,
    /// Connect + subscribe time of each subscribed client, microseconds.
    latencies_us: Vec<u64>,
    /// Unix time of the last subscribe, nanoseconds (0: none).
    last_ns: u64,
    first_errors: Vec<String>,
}

// --- the coordinator ---------------------------------------------------------------------------

/// What [`run`] is asked to do.
#[derive(Clone, Debug)]
pub struct Params {
    /// Clients in all.
    pub clients: usize,
    /// Worker processes.
    pub workers: usize,
    /// Longest connect + subscribe per client.
    pub client_timeout: Duration,
    /// The `herald-bench` binary to run workers from (default: this executable).
    pub worker_exe: Option<PathBuf>,
}

/// The running workers: their processes, their stdins, and every line they write.
struct Fleet {
    children: Vec<Child>,
    stdins: Vec<Option<ChildStdin>>,
    lines: mpsc::UnboundedReceiver<(usize, Option<Msg>)>,
}

impl Fleet {
    fn spawn(exe: &std::path::Path, secret: &str, args: &[WorkerArgs]) -> Result<Fleet, String> {
        let (tx, lines) = mpsc::unbounded_channel();
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        for (w, a) in args.iter().enumerate() {
            let mut child = tokio::process::Command::new(exe)
                .arg("storm-worker")
                .args(a.to_args())
                .env("BENCH_SECRET", secret)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("starting worker {}: {e}", exe.display()))?;
            stdins.push(child.stdin.take());
            let stdout = child.stdout.take().ok_or("worker stdout")?;
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    match serde_json::from_str::<Msg>(&line) {
                        Ok(m) => {
                            let _ = tx.send((w, Some(m)));
                        }
                        Err(e) => eprintln!("storm worker {w}: unreadable line ({e}): {line}"),
                    }
                }
                let _ = tx.send((w, None));
            });
            children.push(child);
        }
        Ok(Fleet {
            children,
            stdins,
            lines,
        })
    }

    async fn tell_all(&mut self, line: &str) -> Result<(), String> {
        for (w, stdin) in self.stdins.iter_mut().enumerate() {
            let Some(stdin) = stdin else {
                return Err(format!("worker {w}: stdin closed"));
            };
            stdin
                .write_all(format!("{line}\n").as_bytes())
                .await
                .map_err(|e| format!("worker {w}: {e}"))?;
            stdin
                .flush()
                .await
                .map_err(|e| format!("worker {w}: {e}"))?;
        }
        Ok(())
    }

    /// Waits for one message that `take` accepts from every worker (other messages go to
    /// `take` too and are dropped when it returns `None`).
    async fn gather<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut take: impl FnMut(usize, Msg) -> Option<T>,
    ) -> Result<Vec<T>, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut got: Vec<Option<T>> = (0..self.children.len()).map(|_| None).collect();
        while got.iter().any(Option::is_none) {
            let next = tokio::time::timeout_at(deadline, self.lines.recv()).await;
            match next {
                Err(_) => {
                    let missing = got.iter().filter(|g| g.is_none()).count();
                    return Err(format!(
                        "{missing} worker(s) sent no {what} within {} s",
                        timeout.as_secs()
                    ));
                }
                Ok(None) => return Err("every worker exited".into()),
                Ok(Some((w, None))) => {
                    if got[w].is_none() {
                        return Err(format!("worker {w} exited before {what}"));
                    }
                }
                Ok(Some((w, Some(m)))) => {
                    if let Some(t) = take(w, m) {
                        got[w] = Some(t);
                    }
                }
            }
        }
        Ok(got.into_iter().flatten().collect())
    }

    /// Closes every stdin (workers close their connections and exit) and waits for them.
    async fn stop(mut self) {
        self.stdins.clear();
        for c in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(10), c.wait())
                .await
                .is_err()
            {
                let _ = c.kill().await;
            }
        }
    }
}

/// Runs the storm against `common.target`; returns the figures, the error count (failed
/// clients and anything that went wrong around them) and the first errors.
pub async fn run(common: &Common, p: &Params, channel: String) -> (StormResult, u64, Vec<String>) {
    let mut result = StormResult {
        clients: p.clients,
        workers: p.workers.clamp(1, p.clients.max(1)),
        ..Default::default()
    };
    let (mut errors, mut count) = match storm(common, p, channel, &mut result).await {
        Ok(firsts) => (firsts, u64::from(!result.published)),
        Err(e) => (vec![format!("storm: {e}")], 1),
    };
    count += result.failures.total();
    errors.truncate(10);
    (result, count, errors)
}

async fn storm(
    common: &Common,
    p: &Params,
    channel: String,
    result: &mut StormResult,
) -> Result<Vec<String>, String> {
    let protobuf = match common.transport {
        Transport::Websocket => false,
        Transport::WebsocketProtobuf => true,
        t => {
            return Err(format!(
                "storm speaks websocket and websocket_protobuf, not {t}"
            ));
        }
    };
    let exe = match &p.worker_exe {
        Some(e) => e.clone(),
        None => std::env::current_exe().map_err(|e| format!("own executable: {e}"))?,
    };
    let workers = result.workers;
    let sources = common
        .sources
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let args: Vec<WorkerArgs> = (0..workers)
        .map(|w| {
            let first = p.clients * w / workers;
            let next = p.clients * (w + 1) / workers;
            WorkerArgs {
                addr: common.target.addr,
                secret: common.target.secret.clone(),
                user: common.user.clone(),
                channel: channel.clone(),
                clients: next - first,
                first_id: first,
                sources: sources.clone(),
                protobuf,
                client_timeout: p.client_timeout.as_secs_f64(),
                progress: common.progress.as_secs_f64(),
            }
        })
        .collect();
    let mut fleet = Fleet::spawn(&exe, &common.target.secret, &args)?;
    let nofile = fleet
        .gather("ready", Duration::from_secs(30), |_, m| match m {
            Msg::Ready { nofile } => Some(nofile),
            _ => None,
        })
        .await?;
    result.nofile_per_worker = nofile.into_iter().min().unwrap_or(0);

    // Let the server's accept loop settle after the workers' start (they connect nothing yet).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = procstat::listen_counters();
    let server_before = common.server_pid.and_then(procstat::sample);
    let t0_ns = crate::payload::now_ns();
    fleet.tell_all("go").await?;

    let mut progress = vec![(0u64, 0u64); workers];
    let mut last_print = Instant::now();
    let every = common.progress;
    let started = Instant::now();
    let done = fleet
        .gather(
            "result",
            p.client_timeout + Duration::from_secs(30),
            |w, m| match m {
                Msg::Done(d) => {
                    progress[w] = (d.subscribed, d.failures.total());
                    Some(d)
                }
                Msg::Progress { subscribed, failed } => {
                    progress[w] = (subscribed, failed);
                    if !every.is_zero() && last_print.elapsed() >= every {
                        last_print = Instant::now();
                        let (s, f) = progress
                            .iter()
                            .fold((0, 0), |(s, f), (a, b)| (s + a, f + b));
                        eprintln!(
                            "[{:6.1}s] storm: subscribed {s} of {}, failed {f}",
                            started.elapsed().as_secs_f64(),
                            p.clients
                        );
                    }
                    None
                }
                _ => None,
            },
        )
        .await?;
    let after = procstat::listen_counters();
    let server_after = common.server_pid.and_then(procstat::sample);

    let mut latency = Latency::default();
    let mut last_ns = 0;
    let mut firsts = Vec::new();
    for d in &done {
        result.subscribed += d.subscribed;
        result.failures.add(&d.failures);
        for &us in &d.latencies_us {
            latency.record_us(us);
        }
        last_ns = last_ns.max(d.last_ns);
        firsts.extend(d.first_errors.iter().take(3).cloned());
    }
    result.latency = latency.summary();
    if last_ns > t0_ns {
        result.last_subscribed_ms = (last_ns - t0_ns) as f64 / 1e6;
        result.connects_per_sec = result.subscribed as f64 / (result.last_subscribed_ms / 1e3);
    }
    if result.subscribed == p.clients as u64 {
        result.all_subscribed_ms = Some(result.last_subscribed_ms);
    }
    if let (Some(a), Some(b)) = (before, after) {
        result.listen_overflows = Some(b.overflows.saturating_sub(a.overflows));
        result.listen_drops = Some(b.drops.saturating_sub(a.drops));
    }
    if let (Some(a), Some(b)) = (server_before, server_after) {
        result.server = procstat::usage(&a, &b);
    }
    if common.progress > Duration::ZERO {
        eprintln!(
            "  storm: {} of {} subscribed in {:.0} ms, p99 {:.1} ms, failed {} (refused {}, reset {}, timed out {}, other {}), listen overflows {}",
            result.subscribed,
            p.clients,
            result.last_subscribed_ms,
            result.latency.p99_ms,
            result.failures.total(),
            result.failures.refused,
            result.failures.reset,
            result.failures.timeouts,
            result.failures.other,
            result
                .listen_overflows
                .map_or_else(|| "n/a".to_string(), |v| v.to_string()),
        );
    }

    // One publication through the server API; every subscribed client must receive it.
    let http = crate::net::http_client(None, 1);
    let published = api_call(
        &http,
        &common.target,
        "publish",
        serde_json::json!({"channel": channel, "data": {"storm": t0_ns}}),
    )
    .await;
    if let Err(e) = &published {
        firsts.insert(0, format!("publish: {e}"));
    }
    result.published = published.is_ok();
    let drain = common.drain_timeout;
    fleet
        .tell_all(&format!("deliver {}", drain.as_millis()))
        .await?;
    let delivered = fleet
        .gather(
            "delivery count",
            drain + Duration::from_secs(10),
            |_, m| match m {
                Msg::Delivered { received, closed } => Some((received, closed)),
                _ => None,
            },
        )
        .await?;
    for (received, closed) in delivered {
        result.delivered += received;
        result.closed += closed;
    }
    result.lost = result.subscribed.saturating_sub(result.delivered);
    fleet.stop().await;
    Ok(firsts)
}

// --- a worker ----------------------------------------------------------------------------------

/// Counters of one worker's clients.
#[derive(Default)]
struct State {
    subscribed: AtomicU64,
    finished: AtomicU64,
    received: AtomicU64,
    closed: AtomicU64,
    last_ns: AtomicU64,
    failures: Mutex<StormFailures>,
    latencies_us: Mutex<Vec<u64>>,
    first_errors: Mutex<Vec<String>>,
}

/// Why a client failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    Refused,
    Reset,
    Timeout,
    Other,
}

impl Cause {
    fn of_io(e: &std::io::Error) -> Cause {
        use std::io::ErrorKind::*;
        match e.kind() {
            ConnectionRefused => Cause::Refused,
            ConnectionReset | ConnectionAborted | BrokenPipe => Cause::Reset,
            TimedOut => Cause::Timeout,
            _ => Cause::Other,
        }
    }

    fn of_ws(e: &tokio_websockets::Error) -> Cause {
        match e {
            tokio_websockets::Error::Io(io) => Cause::of_io(io),
            _ => Cause::Other,
        }
    }
}

impl State {
    fn fail(&self, id: usize, cause: Cause, why: String) {
        {
            let mut f = self.failures.lock();
            match cause {
                Cause::Refused => f.refused += 1,
                Cause::Reset => f.reset += 1,
                Cause::Timeout => f.timeouts += 1,
                Cause::Other => f.other += 1,
            }
        }
        let mut firsts = self.first_errors.lock();
        if firsts.len() < 5 {
            firsts.push(format!("client {id}: {why}"));
        }
        drop(firsts);
        self.finished.fetch_add(1, Ordering::Release);
    }

    fn subscribed(&self, took: Duration) {
        self.latencies_us.lock().push(took.as_micros() as u64);
        self.last_ns
            .fetch_max(crate::payload::now_ns(), Ordering::Relaxed);
        self.subscribed.fetch_add(1, Ordering::Relaxed);
        self.finished.fetch_add(1, Ordering::Release);
    }
}

/// Everything a worker's clients share.
struct Client {
    args: WorkerArgs,
    sources: Vec<IpAddr>,
    uri: http::Uri,
    token: String,
    encoding: Encoding,
    state: State,
    cancel: CancellationToken,
}

/// One line to the coordinator.
fn emit(m: &Msg) {
    let line = serde_json::to_string(m).unwrap_or_default();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// `herald-bench storm-worker`: runs one worker until its stdin closes; the exit code.
pub fn worker_main(args: WorkerArgs) -> u8 {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald-bench storm-worker: runtime: {e}");
            return 2;
        }
    };
    let code = rt.block_on(worker(args));
    rt.shutdown_timeout(Duration::from_secs(2));
    code
}

async fn worker(args: WorkerArgs) -> u8 {
    let sources = match crate::net::parse_sources(&args.sources) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("herald-bench storm-worker: --sources: {e}");
            return 2;
        }
    };
    let uri: http::Uri = match format!("ws://{}/connection/websocket", args.addr).parse() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("herald-bench storm-worker: {e}");
            return 2;
        }
    };
    let client = Arc::new(Client {
        token: crate::token::connection_token(&args.secret, &args.user, &[]),
        encoding: if args.protobuf {
            Encoding::Protobuf
        } else {
            Encoding::Json
        },
        sources,
        uri,
        args,
        state: State::default(),
        cancel: CancellationToken::new(),
    });
    let nofile = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(0);
    emit(&Msg::Ready { nofile });
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    match stdin.next_line().await {
        Ok(Some(l)) if l.trim() == "go" => {}
        _ => return 0,
    }
    let n = client.args.clients;
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        tasks.push(tokio::spawn(run_client(client.clone(), i)));
    }
    let state = &client.state;
    let every = Duration::from_secs_f64(client.args.progress.max(0.0));
    let mut last = Instant::now();
    while (state.finished.load(Ordering::Acquire) as usize) < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if !every.is_zero() && last.elapsed() >= every {
            last = Instant::now();
            emit(&Msg::Progress {
                subscribed: state.subscribed.load(Ordering::Relaxed),
                failed: state.failures.lock().total(),
            });
        }
    }
    emit(&Msg::Done(WorkerDone {
        subscribed: state.subscribed.load(Ordering::Relaxed),
        failures: *state.failures.lock(),
        latencies_us: std::mem::take(&mut *state.latencies_us.lock()),
        last_ns: state.last_ns.load(Ordering::Relaxed),
        first_errors: state.first_errors.lock().clone(),
    }));
    while let Ok(Some(line)) = stdin.next_line().await {
        let Some(ms) = line.trim().strip_prefix("deliver ") else {
            continue;
        };
        let timeout = Duration::from_millis(ms.trim().parse().unwrap_or(5000));
        let deadline = Instant::now() + timeout;
        let subscribed = state.subscribed.load(Ordering::Relaxed);
        while state.received.load(Ordering::Relaxed) < subscribed && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        emit(&Msg::Delivered {
            received: state.received.load(Ordering::Relaxed),
            closed: state.closed.load(Ordering::Relaxed),
        });
    }
    client.cancel.cancel();
    for t in tasks {
        let _ = t.await;
    }
    0
}

type Ws = WebSocketStream<TcpStream>;

/// A failure: its cause and what happened.
type Failure = (Cause, String);

/// One client: connect and subscribe (timed), then read until stopped: answer pings,
/// count the publication.
async fn run_client(c: Arc<Client>, i: usize) {
    let start = Instant::now();
    let timeout = Duration::from_secs_f64(c.args.client_timeout);
    let id = c.args.first_id + i;
    let mut ws = match tokio::time::timeout(timeout, handshake(&c, id)).await {
        Ok(Ok(ws)) => ws,
        Ok(Err((cause, why))) => return c.state.fail(id, cause, why),
        Err(_) => {
            return c.state.fail(
                id,
                Cause::Timeout,
                format!(
                    "connect and subscribe took over {:.0} s",
                    timeout.as_secs_f64()
                ),
            );
        }
    };
    c.state.subscribed(start.elapsed());
    let mut received = false;
    loop {
        let msg = tokio::select! {
            _ = c.cancel.cancelled() => return,
            m = ws.next() => m,
        };
        let replies = match msg {
            Some(Ok(m)) if m.is_close() => break,
            Some(Ok(m)) if m.is_text() || m.is_binary() => c
                .encoding
                .decode::<Reply>(m.as_payload(), usize::MAX)
                .unwrap_or_default(),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => break,
        };
        for r in replies {
            if r == Reply::default() {
                let _ = send(&c, &mut ws, &Command::default()).await;
            } else if let Some(push) = r.push {
                if push.r#pub.is_some() && !received {
                    received = true;
                    c.state.received.fetch_add(1, Ordering::Relaxed);
                }
                if push.disconnect.is_some() {
                    c.state.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
    c.state.closed.fetch_add(1, Ordering::Relaxed);
}

async fn send(c: &Client, ws: &mut Ws, cmd: &Command) -> Result<(), tokio_websockets::Error> {
    let bytes = c.encoding.encode(cmd);
    let msg = if c.encoding.is_json() {
        Message::text(bytes)
    } else {
        Message::binary(bytes)
    };
    ws.send(msg).await
}

/// TCP connect, WebSocket upgrade, connect command, subscribe command.
async fn handshake(c: &Client, id: usize) -> Result<Ws, Failure> {
    let src = (!c.sources.is_empty()).then(|| c.sources[id % c.sources.len()]);
    let tcp = crate::net::connect_tcp(src, c.args.addr)
        .await
        .map_err(|e| (Cause::of_io(&e), format!("TCP connect: {e}")))?;
    let mut builder = ClientBuilder::from_uri(c.uri.clone()).limits(Limits::unlimited());
    if c.args.protobuf {
        builder = builder
            .add_header(
                http::header::SEC_WEBSOCKET_PROTOCOL,
                http::HeaderValue::from_static("centrifuge-protobuf"),
            )
            .map_err(|e| (Cause::Other, format!("header: {e}")))?;
    }
    let (mut ws, _) = builder
        .connect_on(tcp)
        .await
        .map_err(|e| (Cause::of_ws(&e), format!("WebSocket upgrade: {e}")))?;
    let connect = Command {
        id: 1,
        connect: Some(proto::ConnectRequest {
            token: c.token.clone(),
            name: "herald-bench".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    send(c, &mut ws, &connect)
        .await
        .map_err(|e| (Cause::of_ws(&e), format!("send connect: {e}")))?;
    await_reply(c, &mut ws, 1).await?;
    let subscribe = Command {
        id: 2,
        subscribe: Some(proto::SubscribeRequest {
            channel: c.args.channel.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    send(c, &mut ws, &subscribe)
        .await
        .map_err(|e| (Cause::of_ws(&e), format!("send subscribe: {e}")))?;
    await_reply(c, &mut ws, 2).await?;
    Ok(ws)
}

/// Reads until the reply to command `id`; pings are answered, an error reply or a
/// disconnect fails the client.
async fn await_reply(c: &Client, ws: &mut Ws, id: u32) -> Result<(), Failure> {
    let what = if id == 1 { "connect" } else { "subscribe" };
    loop {
        let m = match ws.next().await {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err((Cause::of_ws(&e), format!("awaiting {what}: {e}"))),
            None => {
                return Err((
                    Cause::Other,
                    format!("connection closed awaiting {what} reply"),
                ));
            }
        };
        if let Some((code, reason)) = m.as_close() {
            return Err((
                Cause::Other,
                format!("closed awaiting {what} reply: {} {reason}", u16::from(code)),
            ));
        }
        if !m.is_text() && !m.is_binary() {
            continue;
        }
        let replies = c
            .encoding
            .decode::<Reply>(m.as_payload(), usize::MAX)
            .map_err(|e| (Cause::Other, format!("{what} reply: {e}")))?;
        for r in replies {
            if r.id == id {
                if let Some(e) = r.error {
                    return Err((
                        Cause::Other,
                        format!("{what} error {} {}", e.code, e.message),
                    ));
                }
                return Ok(());
            }
            if let Some(d) = r.push.as_ref().and_then(|p| p.disconnect.as_ref()) {
                return Err((
                    Cause::Other,
                    format!("disconnected awaiting {what}: {} {}", d.code, d.reason),
                ));
            }
            if r.id == 0 && r == Reply::default() {
                send(c, ws, &Command::default())
                    .await
                    .map_err(|e| (Cause::of_ws(&e), format!("pong: {e}")))?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        w: WorkerArgs,
    }

    #[test]
    fn worker_args_round_trip_through_the_command_line() {
        let a = WorkerArgs {
            addr: "127.0.0.1:8000".parse().unwrap(),
            secret: "s".into(),
            user: "u".into(),
            channel: "bench:storm-1".into(),
            clients: 3750,
            first_id: 7500,
            sources: "127.0.0.2,127.0.0.3".into(),
            protobuf: true,
            client_timeout: 12.5,
            progress: 0.0,
        };
        let mut argv = vec!["w".to_string(), "--secret".into(), "s".into()];
        argv.extend(a.to_args());
        let b = Cli::try_parse_from(argv).unwrap().w;
        assert_eq!(b.to_args(), a.to_args());
        assert_eq!(b.clients, 3750);
        assert!(b.protobuf);
    }

    #[test]
    fn failures_are_classified_by_cause() {
        use std::io::{Error, ErrorKind};
        assert_eq!(
            Cause::of_io(&Error::from(ErrorKind::ConnectionRefused)),
            Cause::Refused
        );
        assert_eq!(
            Cause::of_io(&Error::from(ErrorKind::ConnectionReset)),
            Cause::Reset
        );
        assert_eq!(
            Cause::of_io(&Error::from(ErrorKind::TimedOut)),
            Cause::Timeout
        );
        assert_eq!(
            Cause::of_ws(&tokio_websockets::Error::Io(Error::from(
                ErrorKind::BrokenPipe
            ))),
            Cause::Reset
        );
        assert_eq!(
            Cause::of_io(&Error::from(ErrorKind::AddrNotAvailable)),
            Cause::Other
        );
        let f = StormFailures {
            refused: 1,
            reset: 2,
            timeouts: 3,
            other: 4,
        };
        assert_eq!(f.total(), 10);
    }

    #[test]
    fn worker_messages_are_one_json_line() {
        let line = serde_json::to_string(&Msg::Ready { nofile: 20000 }).unwrap();
        assert_eq!(line, r#"{"ready":{"nofile":20000}}"#);
        let m: Msg = serde_json::from_str(r#"{"delivered":{"received":5,"closed":0}}"#).unwrap();
        assert!(matches!(
            m,
            Msg::Delivered {
                received: 5,
                closed: 0
            }
        ));
    }
}
