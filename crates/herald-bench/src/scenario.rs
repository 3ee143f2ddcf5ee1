//! The scenarios: `idle`, `fanout`, `channels`, `reconnect`, `payload`, `storm`. Each
//! connects its subscribers, publishes through the server API, waits for deliveries to
//! drain, and returns a [`Report`] (printed as a table, written as JSON with `--json`).
//! `storm` runs its clients in worker processes of its own ([`crate::storm`]).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::clients::{ClientSpec, ConnReport, Shared, Target, Transport, run_client};
use crate::procstat::{self, Sample, ServerUsage};
use crate::publisher::{PublishApi, Publishers, api_call};
use crate::stats::{LatencySummary, Recorder};

/// Settings every scenario shares.
#[derive(Clone, Debug)]
pub struct Common {
    /// The server.
    pub target: Target,
    /// Server process to read CPU and memory from.
    pub server_pid: Option<u32>,
    /// Label of the server in reports (`herald`, `centrifugo`).
    pub server_name: String,
    /// Version label; asked from the server API `info` when empty.
    pub server_version: String,
    /// Subscriber transport.
    pub transport: Transport,
    /// Source addresses, used round robin.
    pub sources: Vec<IpAddr>,
    /// Publisher tasks.
    pub publishers: u32,
    /// Publishing API.
    pub publish_api: PublishApi,
    /// Payload bytes.
    pub payload_size: usize,
    /// Channel namespace (`<namespace>:<name>`).
    pub namespace: String,
    /// Handshakes at once.
    pub connect_concurrency: usize,
    /// Longest wait for every client to connect.
    pub connect_timeout: Duration,
    /// Longest wait for deliveries after publishing stops.
    pub drain_timeout: Duration,
    /// Progress line interval; zero for none.
    pub progress: Duration,
    /// User every client connects as.
    pub user: String,
}

/// Scenario parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "scenario", rename_all = "snake_case")]
pub enum Scenario {
    /// N idle connections, one channel each.
    Idle {
        /// Connections.
        connections: usize,
        /// Seconds to hold them before measuring memory.
        hold_secs: f64,
    },
    /// S subscribers on one channel, rising publish rate.
    Fanout {
        /// Subscribers.
        subscribers: usize,
        /// Publish rates (per second) of the steps.
        rates: Vec<f64>,
        /// Seconds per step.
        step_secs: f64,
        /// p99 latency limit for a step to count as sustained, milliseconds.
        p99_limit_ms: f64,
        /// Keep rising after the first step that fails.
        keep_going: bool,
    },
    /// Many channels with few subscribers each.
    Channels {
        /// Channels.
        channels: usize,
        /// Subscribers per channel.
        subscribers_per_channel: usize,
        /// Total publish rate.
        rate: f64,
        /// Seconds of publishing.
        duration_secs: f64,
    },
    /// C clients dropped at once while publications go on.
    Reconnect {
        /// Clients.
        clients: usize,
        /// Channels they spread over.
        channels: usize,
        /// Total publish rate during the run.
        rate: f64,
        /// Seconds of publishing before the drop.
        warmup_secs: f64,
        /// Seconds of publishing in all.
        duration_secs: f64,
        /// How the clients are dropped.
        trigger: Trigger,
        /// Disconnect code for the API trigger.
        disconnect_code: u32,
        /// Reconnect delay spread, milliseconds.
        reconnect_jitter_ms: u64,
        /// Longest wait for every client to be back.
        recover_timeout_secs: f64,
    },
    /// Message sizes from small to large, per transport.
    Payload {
        /// Transports to measure.
        transports: Vec<Transport>,
        /// Payload sizes, bytes.
        sizes: Vec<usize>,
        /// Subscribers per run.
        subscribers: usize,
        /// Publish rate (0: as fast as the server acknowledges).
        rate: f64,
        /// Seconds per run.
        duration_secs: f64,
    },
    /// N clients connect and subscribe to one channel at once, from worker processes.
    Storm {
        /// Clients.
        clients: usize,
        /// Worker processes they spread over.
        workers: usize,
        /// Longest connect + subscribe per client, seconds (then it counts as a timeout).
        client_timeout_secs: f64,
        /// The `herald-bench` binary the workers run (default: this executable; tests,
        /// whose executable is not herald-bench, name it).
        #[serde(skip)]
        worker_exe: Option<PathBuf>,
    },
}

impl Scenario {
    /// The preset's name.
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Idle { .. } => "idle",
            Scenario::Fanout { .. } => "fanout",
            Scenario::Channels { .. } => "channels",
            Scenario::Reconnect { .. } => "reconnect",
            Scenario::Payload { .. } => "payload",
            Scenario::Storm { .. } => "storm",
        }
    }
}

/// How the reconnect scenario drops its clients.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// `POST /api/disconnect` of the bench user with the given code.
    Api,
    /// A shell command (for example a server restart).
    Command(String),
}

/// Everything a run reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// `herald-bench <version>`.
    pub tool: String,
    /// Unix time of the start, seconds.
    pub started_unix: u64,
    /// The server measured.
    pub server: ServerInfo,
    /// The machine.
    pub machine: Machine,
    /// Subscriber transport (per-row transports in `payload`).
    pub transport: Transport,
    /// Publishing API.
    pub publish_api: PublishApi,
    /// Publisher tasks.
    pub publishers: u32,
    /// Payload bytes (fanout, channels, reconnect).
    pub payload_size: usize,
    /// Source addresses used.
    pub sources: usize,
    /// The scenario and its parameters.
    pub params: Scenario,
    /// The figures.
    pub result: ScenarioResult,
    /// Errors counted (connections, protocol, publish).
    pub errors: u64,
    /// The first errors, for diagnosis.
    pub first_errors: Vec<String>,
    /// Seconds the run took.
    pub wall_secs: f64,
}

/// The server measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Label.
    pub name: String,
    /// Version.
    pub version: String,
    /// Address; the nodes' addresses, comma-separated, when subscribers spread over several.
    pub addr: String,
    /// PID when given.
    pub pid: Option<u32>,
}

/// The machine the run was on.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    /// Logical CPUs online.
    pub cpus: usize,
    /// CPUs this process may run on.
    pub cpus_allowed: usize,
    /// CPU model.
    pub cpu_model: String,
    /// Memory, MiB.
    pub mem_mib: u64,
    /// Kernel release.
    pub kernel: String,
    /// 1-minute load average at the start (a busy machine makes figures indicative only).
    pub loadavg_1m: f64,
    /// Open-file limit of the bench process (soft, after raising it to the hard limit).
    pub nofile_limit: u64,
}

impl Machine {
    /// Reads /proc.
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpus = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).trim().to_string())
            .unwrap_or_default();
        let mem_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .unwrap_or(0)
            / 1024;
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        let loadavg_1m = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().and_then(|v| v.parse().ok()))
            .unwrap_or(0.0);
        Machine {
            cpus,
            cpus_allowed: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu_model,
            mem_mib,
            kernel,
            loadavg_1m,
            nofile_limit: rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(0),
        }
    }
}

/// The figures of one scenario.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "scenario", rename_all = "snake_case")]
pub enum ScenarioResult {
    /// `idle`.
    Idle(IdleResult),
    /// `fanout`.
    Fanout(FanoutResult),
    /// `channels`.
    Channels(Step),
    /// `reconnect`.
    Reconnect(ReconnectResult),
    /// `payload`.
    Payload(PayloadResult),
    /// `storm`.
    Storm(crate::storm::StormResult),
}

/// `idle` figures.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IdleResult {
    /// Connections asked for.
    pub connections: usize,
    /// Connections that connected and subscribed.
    pub connected: u64,
    /// Seconds from the first connect to the last subscribe.
    pub connect_secs: f64,
    /// Connections per second.
    pub connect_rate: f64,
    /// Server RSS before connecting, MiB.
    pub rss_before_mib: f64,
    /// Server RSS with every connection held, MiB.
    pub rss_after_mib: f64,
    /// (after - before) / connected, KiB.
    pub rss_per_conn_kib: f64,
    /// Server CPU while connecting, percent of one core.
    pub cpu_connect_percent: f64,
    /// Server CPU while idle, percent of one core.
    pub cpu_idle_percent: f64,
    /// Server open descriptors with every connection held.
    pub server_fds: u64,
}

/// One publishing step (fanout step, or the channels run).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Step {
    /// Target publish rate (0: unlimited).
    pub target_rate: f64,
    /// Acknowledged publish rate.
    pub publish_rate: f64,
    /// Publications acknowledged.
    pub published: u64,
    /// Deliveries expected (publications times subscribers of their channel).
    pub expected: u64,
    /// Distinct deliveries received.
    pub delivered: u64,
    /// Deliveries per second over the step.
    pub deliveries_per_sec: f64,
    /// Deliveries missing after the drain.
    pub lost: u64,
    /// Extra copies.
    pub duplicates: u64,
    /// Publish-to-receive latency.
    pub latency: LatencySummary,
    /// Publish request round trip.
    pub publish_latency: LatencySummary,
    /// Server use during the step.
    pub server: ServerUsage,
    /// Publish errors and client errors during the step.
    pub errors: u64,
    /// Whether the step is sustained: rate reached (95 %), p99 under the limit, no loss, no errors.
    pub sustained: bool,
}

/// `fanout` figures.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FanoutResult {
    /// Subscribers connected.
    pub subscribers: u64,
    /// The steps, rising.
    pub steps: Vec<Step>,
    /// Highest deliveries per second of a sustained step.
    pub max_sustained_deliveries_per_sec: f64,
    /// Its publish rate.
    pub max_sustained_publish_rate: f64,
    /// Loss over the whole run, from every subscriber's sequence tracking.
    pub lost_total: u64,
}

/// `reconnect` figures.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReconnectResult {
    /// Clients.
    pub clients: usize,
    /// Clients connected before the drop.
    pub connected_before: u64,
    /// Sessions that ended after the drop (one per client expected).
    pub dropped: u64,
    /// Milliseconds from the trigger until every client was subscribed again.
    pub all_back_ms: Option<f64>,
    /// Resubscriptions that the server reported as not recovered.
    pub unrecovered: u64,
    /// Publications acknowledged.
    pub published: u64,
    /// Deliveries expected.
    pub expected: u64,
    /// Deliveries missing at the end (must be 0).
    pub lost: u64,
    /// Extra copies.
    pub duplicates: u64,
    /// Latency over the whole run (recovered publications included).
    pub latency: LatencySummary,
    /// Server use over the run.
    pub server: ServerUsage,
}

/// One `payload` row.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PayloadRow {
    /// Transport.
    pub transport: Option<Transport>,
    /// Requested payload size.
    pub size: usize,
    /// Payload size as sent (the stamp alone when larger than `size`).
    pub actual_size: usize,
    /// Subscribers.
    pub subscribers: u64,
    /// Publish rate reached.
    pub publish_rate: f64,
    /// Deliveries per second.
    pub deliveries_per_sec: f64,
    /// Payload throughput to subscribers, MiB/s.
    pub payload_mib_per_sec: f64,
    /// Bytes read from the socket per delivered message (framing included).
    pub wire_bytes_per_msg: f64,
    /// `wire_bytes_per_msg - actual_size`.
    pub overhead_bytes: f64,
    /// Latency.
    pub latency: LatencySummary,
    /// Lost deliveries.
    pub lost: u64,
    /// Server use.
    pub server: ServerUsage,
    /// Error, when the transport could not be measured.
    pub error: Option<String>,
}

/// `payload` figures.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PayloadResult {
    /// One row per transport and size.
    pub rows: Vec<PayloadRow>,
}

/// Subscribers and publishers of one measurement.
struct Run {
    common: Common,
    shared: Arc<Shared>,
    pubs: Arc<Publishers>,
    clients: Vec<tokio::task::JoinHandle<()>>,
    /// Subscribers per channel index.
    subs_per_channel: Vec<u64>,
    progress: Option<tokio::task::JoinHandle<()>>,
}

impl Run {
    fn new(common: &Common, channels: Vec<String>, payload_size: usize) -> Run {
        let recorder = Arc::new(Recorder::new(64));
        let shared = Arc::new(Shared::new(
            common.target.clone(),
            recorder,
            common.publishers,
            common.connect_concurrency,
            &common.user,
        ));
        let n = channels.len();
        let pubs = Arc::new(Publishers::new(
            common.target.clone(),
            channels,
            common.publishers,
            payload_size,
            common.publish_api,
        ));
        let mut run = Run {
            common: common.clone(),
            shared,
            pubs,
            clients: Vec::new(),
            subs_per_channel: vec![0; n],
            progress: None,
        };
        run.start_progress();
        run
    }

    fn start_progress(&mut self) {
        if self.common.progress.is_zero() {
            return;
        }
        let every = self.common.progress;
        let shared = self.shared.clone();
        let pubs = self.pubs.clone();
        let pid = self.common.server_pid;
        let name = self.common.server_name.clone();
        self.progress = Some(tokio::spawn(async move {
            let start = Instant::now();
            let mut last_sample = pid.and_then(procstat::sample);
            let mut last_unique = 0u64;
            let mut last_at = Instant::now();
            loop {
                tokio::time::sleep(every).await;
                let r = &shared.recorder;
                let unique = r.unique();
                let now = Instant::now();
                let rate =
                    (unique - last_unique) as f64 / now.duration_since(last_at).as_secs_f64();
                last_unique = unique;
                last_at = now;
                let mut server = String::new();
                if let Some(pid) = pid
                    && let Some(s) = procstat::sample(pid)
                {
                    if let Some(prev) = &last_sample {
                        server = format!(
                            " | {name} cpu {:.0}% rss {:.1} MiB fds {}",
                            procstat::cpu_percent(prev, &s),
                            s.rss_kib as f64 / 1024.0,
                            s.fds
                        );
                    }
                    last_sample = Some(s);
                }
                eprintln!(
                    "[{:6.1}s] subscribed {} down {} | published {} | delivered {} ({:.0}/s) | errors {}{server}",
                    start.elapsed().as_secs_f64(),
                    r.subscribed.load(Ordering::Relaxed),
                    r.down.load(Ordering::Relaxed),
                    pubs.total(),
                    unique,
                    rate,
                    r.errors.load(Ordering::Relaxed) + pubs.errors.load(Ordering::Relaxed),
                );
            }
        }));
    }

    fn spawn(&mut self, transport: Transport, channel_idx: usize, reconnect: bool, jitter_ms: u64) {
        let id = self.clients.len();
        let source = if self.common.sources.is_empty() {
            None
        } else {
            Some(self.common.sources[id % self.common.sources.len()])
        };
        let spec = ClientSpec {
            id,
            transport,
            channel: self.pubs.channels[channel_idx].clone(),
            channel_idx: channel_idx as u32,
            source,
            addr: self.common.target.nodes[id % self.common.target.nodes.len()],
            reconnect,
            track_positions: reconnect,
            reconnect_jitter_ms: jitter_ms,
        };
        self.subs_per_channel[channel_idx] += 1;
        self.clients
            .push(tokio::spawn(run_client(spec, self.shared.clone())));
    }

    /// Waits until `n` clients subscribed (or every client either subscribed or failed, or
    /// the connect timeout passed); returns the time it took.
    async fn wait_subscribed(&self, n: u64) -> Duration {
        let start = Instant::now();
        let deadline = start + self.common.connect_timeout;
        let r = &self.shared.recorder;
        loop {
            let ok = r.subscribed.load(Ordering::Relaxed);
            let failed = r.errors.load(Ordering::Relaxed);
            if ok >= n || ok + failed >= n || Instant::now() >= deadline {
                return start.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Deliveries expected so far.
    fn expected(&self) -> u64 {
        self.subs_per_channel
            .iter()
            .enumerate()
            .map(|(c, subs)| subs * self.pubs.published_on(c))
            .sum()
    }

    /// Waits until everything published was delivered, or the drain timeout.
    async fn drain(&self) {
        let deadline = Instant::now() + self.common.drain_timeout;
        while self.shared.recorder.unique() < self.expected() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn errors(&self) -> u64 {
        self.shared.recorder.errors.load(Ordering::Relaxed)
            + self.pubs.errors.load(Ordering::Relaxed)
    }

    /// Stops every client; returns their reports.
    async fn stop(mut self) -> (Vec<ConnReport>, Arc<Shared>, Arc<Publishers>) {
        self.shared.cancel.cancel();
        for c in self.clients.drain(..) {
            let _ = c.await;
        }
        if let Some(p) = self.progress.take() {
            p.abort();
        }
        let reports = std::mem::take(&mut *self.shared.reports.lock());
        (reports, self.shared.clone(), self.pubs.clone())
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
        if let Some(p) = self.progress.take() {
            p.abort();
        }
    }
}

/// Deliveries missing and extra, from every client's sequence tracking.
pub fn loss(reports: &[ConnReport], pubs: &Publishers) -> (u64, u64) {
    let mut lost = 0;
    let mut dups = 0;
    for r in reports {
        for (p, unique) in r.unique.iter().enumerate() {
            lost += pubs
                .published(r.channel_idx as usize, p as u32)
                .saturating_sub(*unique);
        }
        dups += r.duplicates;
    }
    (lost, dups)
}

fn sample(common: &Common) -> Option<Sample> {
    common.server_pid.and_then(procstat::sample)
}

fn usage(a: &Option<Sample>, b: &Option<Sample>) -> ServerUsage {
    match (a, b) {
        (Some(a), Some(b)) => procstat::usage(a, b),
        _ => ServerUsage::default(),
    }
}

fn channel_names(common: &Common, prefix: &str, n: usize) -> Vec<String> {
    let run = format!("{:x}", crate::payload::now_ns() / 1_000_000 % 0xffff_ffff);
    (0..n)
        .map(|i| format!("{}:{prefix}-{run}-{i}", common.namespace))
        .collect()
}

/// Runs `scenario`; the report's errors say what went wrong, if anything.
pub async fn run(common: &Common, scenario: &Scenario) -> Report {
    let started = Instant::now();
    let started_unix = crate::payload::now_ns() / 1_000_000_000;
    let machine = Machine::detect();
    let mut version = common.server_version.clone();
    if version.is_empty() {
        let http = crate::net::http_client(None, 1);
        version = api_call(&http, &common.target, "info", serde_json::json!({}))
            .await
            .ok()
            .and_then(|r| r["nodes"][0]["version"].as_str().map(str::to_string))
            .unwrap_or_default();
    }
    let (result, errors, first_errors) = match scenario {
        Scenario::Idle {
            connections,
            hold_secs,
        } => idle(common, *connections, *hold_secs).await,
        Scenario::Fanout {
            subscribers,
            rates,
            step_secs,
            p99_limit_ms,
            keep_going,
        } => {
            fanout(
                common,
                *subscribers,
                rates,
                *step_secs,
                *p99_limit_ms,
                *keep_going,
            )
            .await
        }
        Scenario::Channels {
            channels,
            subscribers_per_channel,
            rate,
            duration_secs,
        } => {
            channels_run(
                common,
                *channels,
                *subscribers_per_channel,
                *rate,
                *duration_secs,
            )
            .await
        }
        Scenario::Reconnect { .. } => reconnect(common, scenario).await,
        Scenario::Storm {
            clients,
            workers,
            client_timeout_secs,
            worker_exe,
        } => {
            let params = crate::storm::Params {
                clients: *clients,
                workers: *workers,
                client_timeout: Duration::from_secs_f64(*client_timeout_secs),
                worker_exe: worker_exe.clone(),
            };
            let channel = channel_names(common, "storm", 1).remove(0);
            let (result, errors, firsts) = crate::storm::run(common, &params, channel).await;
            (ScenarioResult::Storm(result), errors, firsts)
        }
        Scenario::Payload {
            transports,
            sizes,
            subscribers,
            rate,
            duration_secs,
        } => {
            payload(
                common,
                transports,
                sizes,
                *subscribers,
                *rate,
                *duration_secs,
            )
            .await
        }
    };
    Report {
        tool: format!("herald-bench {}", env!("CARGO_PKG_VERSION")),
        started_unix,
        server: ServerInfo {
            name: common.server_name.clone(),
            version,
            addr: common
                .target
                .nodes
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(","),
            pid: common.server_pid,
        },
        machine,
        transport: common.transport,
        publish_api: common.publish_api,
        publishers: common.publishers,
        payload_size: common.payload_size,
        sources: common.sources.len(),
        params: scenario.clone(),
        result,
        errors,
        first_errors,
        wall_secs: started.elapsed().as_secs_f64(),
    }
}

type Outcome = (ScenarioResult, u64, Vec<String>);

fn first_errors(shared: &Shared, pubs: &Publishers) -> Vec<String> {
    let mut v = shared.recorder.first_errors();
    v.extend(pubs.first_errors());
    v.truncate(10);
    v
}

async fn idle(common: &Common, connections: usize, hold_secs: f64) -> Outcome {
    let channels = channel_names(common, "idle", connections);
    let mut run = Run::new(common, channels, common.payload_size);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = sample(common);
    for i in 0..connections {
        run.spawn(common.transport, i, false, 0);
    }
    let took = run.wait_subscribed(connections as u64).await;
    let connected = run.shared.recorder.subscribed.load(Ordering::Relaxed);
    let after_connect = sample(common);
    tokio::time::sleep(Duration::from_secs_f64(hold_secs)).await;
    let held = sample(common);
    let errors = run.errors();
    let (_, shared, pubs) = run.stop().await;
    let kib = |s: &Option<Sample>| s.map(|s| s.rss_kib as f64).unwrap_or(0.0);
    let result = IdleResult {
        connections,
        connected,
        connect_secs: took.as_secs_f64(),
        connect_rate: connected as f64 / took.as_secs_f64().max(1e-9),
        rss_before_mib: kib(&before) / 1024.0,
        rss_after_mib: kib(&held) / 1024.0,
        rss_per_conn_kib: if connected > 0 && held.is_some() {
            (kib(&held) - kib(&before)) / connected as f64
        } else {
            0.0
        },
        cpu_connect_percent: usage(&before, &after_connect).cpu_percent,
        cpu_idle_percent: usage(&after_connect, &held).cpu_percent,
        server_fds: held.map(|s| s.fds).unwrap_or(0),
    };
    (
        ScenarioResult::Idle(result),
        errors,
        first_errors(&shared, &pubs),
    )
}

/// Publishes one step and measures it.
async fn step(run: &Run, rate: f64, secs: f64, p99_limit_ms: f64) -> Step {
    let errors_before = run.errors();
    let expected_before = run.expected();
    let unique_before = run.shared.recorder.unique();
    let dups_before = run.shared.recorder.merged(false).duplicates;
    run.shared.recorder.merged(true);
    run.pubs.api_latency.lock().reset();
    let a = sample(&run.common);
    let outcome = run
        .pubs
        .run(rate, Duration::from_secs_f64(secs), &run.shared.cancel)
        .await;
    let b = sample(&run.common);
    run.drain().await;
    let merged = run.shared.recorder.merged(false);
    let expected = run.expected() - expected_before;
    let delivered = merged.unique - unique_before;
    let lost = expected.saturating_sub(delivered);
    let errors = run.errors() - errors_before;
    let latency = merged.latency.summary();
    let sustained = (rate <= 0.0 || outcome.rate >= rate * 0.95)
        && latency.p99_ms < p99_limit_ms
        && lost == 0
        && errors == 0
        && delivered > 0;
    Step {
        target_rate: rate,
        publish_rate: outcome.rate,
        published: outcome.published,
        expected,
        delivered,
        deliveries_per_sec: delivered as f64 / outcome.secs.max(1e-9),
        lost,
        duplicates: merged.duplicates - dups_before,
        latency,
        publish_latency: run.pubs.api_latency(),
        server: usage(&a, &b),
        errors,
        sustained,
    }
}

async fn fanout(
    common: &Common,
    subscribers: usize,
    rates: &[f64],
    step_secs: f64,
    p99_limit_ms: f64,
    keep_going: bool,
) -> Outcome {
    let mut run = Run::new(
        common,
        channel_names(common, "fanout", 1),
        common.payload_size,
    );
    for _ in 0..subscribers {
        run.spawn(common.transport, 0, false, 0);
    }
    run.wait_subscribed(subscribers as u64).await;
    let connected = run.shared.recorder.subscribed.load(Ordering::Relaxed);
    let mut result = FanoutResult {
        subscribers: connected,
        ..Default::default()
    };
    for &rate in rates {
        let s = step(&run, rate, step_secs, p99_limit_ms).await;
        if common.progress > Duration::ZERO {
            eprintln!(
                "  step {:.0}/s: published {:.0}/s, delivered {:.0}/s, p99 {:.2} ms, lost {}, {}",
                rate,
                s.publish_rate,
                s.deliveries_per_sec,
                s.latency.p99_ms,
                s.lost,
                if s.sustained {
                    "sustained"
                } else {
                    "NOT sustained"
                }
            );
        }
        let ok = s.sustained;
        if ok && s.deliveries_per_sec > result.max_sustained_deliveries_per_sec {
            result.max_sustained_deliveries_per_sec = s.deliveries_per_sec;
            result.max_sustained_publish_rate = s.publish_rate;
        }
        result.steps.push(s);
        if !ok && !keep_going {
            break;
        }
    }
    let errors = run.errors();
    let (reports, shared, pubs) = run.stop().await;
    result.lost_total = loss(&reports, &pubs).0;
    (
        ScenarioResult::Fanout(result),
        errors,
        first_errors(&shared, &pubs),
    )
}

async fn channels_run(
    common: &Common,
    channels: usize,
    per_channel: usize,
    rate: f64,
    secs: f64,
) -> Outcome {
    let mut run = Run::new(
        common,
        channel_names(common, "room", channels),
        common.payload_size,
    );
    for k in 0..per_channel {
        for c in 0..channels {
            let _ = k;
            run.spawn(common.transport, c, false, 0);
        }
    }
    let n = (channels * per_channel) as u64;
    run.wait_subscribed(n).await;
    let mut s = step(&run, rate, secs, 100.0).await;
    let errors = run.errors();
    let (reports, shared, pubs) = run.stop().await;
    let (lost, dups) = loss(&reports, &pubs);
    s.lost = s.lost.max(lost);
    s.duplicates = s.duplicates.max(dups);
    (
        ScenarioResult::Channels(s),
        errors,
        first_errors(&shared, &pubs),
    )
}

async fn reconnect(common: &Common, scenario: &Scenario) -> Outcome {
    let Scenario::Reconnect {
        clients,
        channels,
        rate,
        warmup_secs,
        duration_secs,
        trigger,
        disconnect_code,
        reconnect_jitter_ms,
        recover_timeout_secs,
    } = scenario.clone()
    else {
        unreachable!("reconnect parameters")
    };
    let channels = channels.max(1);
    let mut run = Run::new(
        common,
        channel_names(common, "rc", channels),
        common.payload_size,
    );
    for i in 0..clients {
        run.spawn(common.transport, i % channels, true, reconnect_jitter_ms);
    }
    run.wait_subscribed(clients as u64).await;
    let rec = run.shared.recorder.clone();
    let connected_before = rec.subscribed.load(Ordering::Relaxed);
    let a = sample(common);
    // Publish for the whole run in the background.
    let pubs = run.pubs.clone();
    let cancel = run.shared.cancel.clone();
    let publishing = tokio::spawn(async move {
        pubs.run(rate, Duration::from_secs_f64(duration_secs), &cancel)
            .await
    });
    tokio::time::sleep(Duration::from_secs_f64(warmup_secs)).await;
    let dropped_before = rec.disconnects.load(Ordering::Relaxed);
    let subscribed_before = rec.subscribed.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let trigger_result = match &trigger {
        Trigger::Api => api_call(
            &run.shared.http,
            &common.target,
            "disconnect",
            serde_json::json!({"user": common.user, "disconnect": {"code": disconnect_code, "reason": "herald-bench reconnect"}}),
        )
        .await
        .map(|_| ()),
        Trigger::Command(cmd) => tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .status()
            .await
            .map_err(|e| e.to_string())
            .and_then(|s| {
                if s.success() {
                    Ok(())
                } else {
                    Err(format!("trigger command: {s}"))
                }
            }),
    };
    if let Err(e) = trigger_result {
        rec.error(format!("trigger: {e}"));
    }
    let deadline = t0 + Duration::from_secs_f64(recover_timeout_secs);
    let n = connected_before;
    let mut all_back = None;
    while Instant::now() < deadline {
        let dropped = rec.disconnects.load(Ordering::Relaxed) - dropped_before;
        let resubscribed = rec.subscribed.load(Ordering::Relaxed) - subscribed_before;
        if dropped >= n && resubscribed >= n && rec.down.load(Ordering::Relaxed) == 0 {
            all_back = Some(t0.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let _ = publishing.await;
    let b = sample(common);
    run.drain().await;
    let expected = run.expected();
    let dropped = rec.disconnects.load(Ordering::Relaxed) - dropped_before;
    let latency = rec.merged(false).latency.summary();
    let errors = run.errors();
    let (reports, shared, pubs) = run.stop().await;
    let (lost, duplicates) = loss(&reports, &pubs);
    let result = ReconnectResult {
        clients,
        connected_before,
        dropped,
        all_back_ms: all_back.map(|d| d.as_secs_f64() * 1000.0),
        unrecovered: rec.unrecovered.load(Ordering::Relaxed),
        published: pubs.total(),
        expected,
        lost,
        duplicates,
        latency,
        server: usage(&a, &b),
    };
    (
        ScenarioResult::Reconnect(result),
        errors,
        first_errors(&shared, &pubs),
    )
}

async fn payload(
    common: &Common,
    transports: &[Transport],
    sizes: &[usize],
    subscribers: usize,
    rate: f64,
    secs: f64,
) -> Outcome {
    let mut rows = Vec::new();
    let mut errors = 0;
    let mut firsts = Vec::new();
    for &transport in transports {
        for &size in sizes {
            let mut run = Run::new(
                common,
                channel_names(common, &format!("pl-{}", transport.name()), 1),
                size,
            );
            for _ in 0..subscribers {
                run.spawn(transport, 0, false, 0);
            }
            run.wait_subscribed(subscribers as u64).await;
            let connected = run.shared.recorder.subscribed.load(Ordering::Relaxed);
            let mut row = PayloadRow {
                transport: Some(transport),
                size,
                subscribers: connected,
                ..Default::default()
            };
            if connected < subscribers as u64 {
                row.error = Some(
                    run.shared
                        .recorder
                        .first_errors()
                        .first()
                        .cloned()
                        .unwrap_or_else(|| "not every subscriber connected".into()),
                );
            } else {
                // Let pings and connect replies settle out of the byte count.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let bytes_before = run.shared.recorder.wire_bytes.load(Ordering::Relaxed);
                let s = step(&run, rate, secs, f64::INFINITY).await;
                let bytes = run.shared.recorder.wire_bytes.load(Ordering::Relaxed) - bytes_before;
                let stamp = crate::payload::Stamp {
                    channel: 0,
                    publisher: 0,
                    seq: s.published / u64::from(common.publishers.max(1)) / 2,
                    t_ns: crate::payload::now_ns(),
                };
                let mut probe = Vec::new();
                crate::payload::write(&mut probe, &stamp, size);
                row.actual_size = probe.len();
                row.publish_rate = s.publish_rate;
                row.deliveries_per_sec = s.deliveries_per_sec;
                row.payload_mib_per_sec =
                    s.deliveries_per_sec * row.actual_size as f64 / (1024.0 * 1024.0);
                row.wire_bytes_per_msg = if s.delivered > 0 {
                    bytes as f64 / s.delivered as f64
                } else {
                    0.0
                };
                row.overhead_bytes = row.wire_bytes_per_msg - row.actual_size as f64;
                row.latency = s.latency;
                row.lost = s.lost;
                row.server = s.server;
            }
            errors += run.errors();
            let (_, shared, pubs) = run.stop().await;
            if firsts.len() < 10 {
                firsts.extend(first_errors(&shared, &pubs));
            }
            if common.progress > Duration::ZERO {
                eprintln!(
                    "  payload {transport} {size} B: {:.0} deliveries/s, {:.1} wire bytes/msg{}",
                    row.deliveries_per_sec,
                    row.wire_bytes_per_msg,
                    row.error
                        .as_deref()
                        .map(|e| format!(" ERROR {e}"))
                        .unwrap_or_default()
                );
            }
            rows.push(row);
        }
    }
    firsts.truncate(10);
    (
        ScenarioResult::Payload(PayloadResult { rows }),
        errors,
        firsts,
    )
}
