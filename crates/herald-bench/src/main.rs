//! `herald-bench`: see `herald-bench --help` and docs/benchmarks.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use herald_bench::clients::{Target, Transport};
use herald_bench::publisher::PublishApi;
use herald_bench::scenario::{self, Common, Report, Scenario, Trigger};
use herald_bench::{report, table};

#[derive(Parser)]
#[command(
    name = "herald-bench",
    version,
    about = "Load generator for Herald and Centrifugo: every client transport, latency, loss, server CPU and memory"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// N connections, one channel each, nothing published: server memory per connection and connect rate.
    Idle {
        #[command(flatten)]
        common: CommonArgs,
        /// Connections.
        #[arg(long, short = 'n', default_value_t = 1000)]
        connections: usize,
        /// Seconds to hold them before reading the server's memory.
        #[arg(long, default_value_t = 2.0)]
        hold: f64,
    },
    /// S subscribers on one channel, rising publish rate: highest sustained deliveries/s and latency per rate.
    Fanout {
        #[command(flatten)]
        common: CommonArgs,
        /// Subscribers.
        #[arg(long, short = 's', default_value_t = 1000)]
        subscribers: usize,
        /// Publish rates of the steps, comma-separated (default: 10, 20, 50, 100, ... up to --max-rate).
        #[arg(long, value_delimiter = ',')]
        rates: Vec<f64>,
        /// Highest rate of the default steps.
        #[arg(long, default_value_t = 20000.0)]
        max_rate: f64,
        /// Seconds per step.
        #[arg(long, default_value_t = 3.0)]
        step_secs: f64,
        /// p99 latency limit for a sustained step, milliseconds.
        #[arg(long, default_value_t = 100.0)]
        p99_limit_ms: f64,
        /// Keep rising after the first step that is not sustained.
        #[arg(long)]
        keep_going: bool,
    },
    /// Many channels with few subscribers each (chat rooms), publications spread across them.
    Channels {
        #[command(flatten)]
        common: CommonArgs,
        /// Channels.
        #[arg(long, default_value_t = 1000)]
        channels: usize,
        /// Subscribers per channel.
        #[arg(long, default_value_t = 5)]
        per_channel: usize,
        /// Total publications per second.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Seconds of publishing.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
    },
    /// C clients dropped at once while publications go on: time until all are back and recovered, and loss.
    Reconnect {
        #[command(flatten)]
        common: CommonArgs,
        /// Clients.
        #[arg(long, short = 'c', default_value_t = 1000)]
        clients: usize,
        /// Channels the clients spread over.
        #[arg(long, default_value_t = 10)]
        channels: usize,
        /// Total publications per second during the run.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Seconds of publishing before the drop.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// Seconds of publishing in all.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Drop with this shell command instead of the API disconnect (e.g. a server restart).
        #[arg(long)]
        trigger_cmd: Option<String>,
        /// Disconnect code sent through the API.
        #[arg(long, default_value_t = 3011)]
        disconnect_code: u32,
        /// Spread reconnects over this many milliseconds.
        #[arg(long, default_value_t = 0)]
        reconnect_jitter_ms: u64,
        /// Longest wait for every client to be back, seconds.
        #[arg(long, default_value_t = 60.0)]
        recover_timeout: f64,
    },
    /// Payload sizes 32 B .. 64 KiB: throughput and bytes on the wire per message, per transport.
    Payload {
        #[command(flatten)]
        common: CommonArgs,
        /// Transports, comma-separated (default: every transport but Herald-only `grpc`).
        #[arg(long, value_delimiter = ',')]
        transports: Vec<Transport>,
        /// Payload sizes in bytes.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "32,256,1024,4096,16384,65536"
        )]
        sizes: Vec<usize>,
        /// Subscribers per measurement.
        #[arg(long, default_value_t = 10)]
        subscribers: usize,
        /// Publications per second (0: as fast as the server acknowledges).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 2.0)]
        duration: f64,
    },
    /// N clients connect and subscribe to one channel at once (no ramp), from several worker
    /// processes: time until all are subscribed, connect + subscribe latency, failures by cause,
    /// the kernel's listen-queue overflows, then one publication that must reach every client.
    Storm {
        #[command(flatten)]
        common: CommonArgs,
        /// Clients (spread over --workers processes: one process may hold ~20,000 open files here).
        #[arg(long, short = 'n', default_value_t = 15000)]
        clients: usize,
        /// Worker processes.
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Longest connect + subscribe per client, seconds; a slower client counts as a timeout.
        #[arg(long, default_value_t = 60.0)]
        client_timeout: f64,
    },
    /// One worker process of `storm` (started by it; reads its orders on stdin).
    #[command(hide = true)]
    StormWorker(herald_bench::storm::WorkerArgs),
    /// Writes the side-by-side comparison of two servers' JSON results into a markdown file.
    Compare {
        /// JSON results of Herald (from --json).
        #[arg(long, required = true, num_args = 1..)]
        herald: Vec<PathBuf>,
        /// JSON results of the other server, same scenarios.
        #[arg(long, required = true, num_args = 1..)]
        other: Vec<PathBuf>,
        /// Markdown written before the tables (date, machine, versions, commands).
        #[arg(long)]
        preamble: Option<PathBuf>,
        /// File whose generated section is replaced (printed to stdout when absent); scenarios
        /// of the section that these results do not have are kept, marked with their run.
        #[arg(long)]
        doc: Option<PathBuf>,
        /// Name of the generated section (its markers name it and `bench/<name>.sh`).
        #[arg(long, default_value = "compare")]
        section: String,
    },
    /// Writes the measured rows of the transport table (docs/transports.md) from a directory of
    /// `<transport>-<scenario>.json` results (bench/transports.sh).
    TransportsTable {
        /// Directory of the JSON results (`websocket-idle.json`, `uni_grpc-fanout.json`, ...)
        /// and of notes on runs without one (`<transport>-<scenario>.note`).
        #[arg(long)]
        results: PathBuf,
        /// File whose generated section is replaced (printed to stdout when absent).
        #[arg(long)]
        doc: Option<PathBuf>,
        /// Markdown written before the table (date, machine, revision, pinning).
        #[arg(long)]
        preamble: Option<PathBuf>,
    },
}

#[derive(Args, Clone)]
struct CommonArgs {
    /// Server address (HTTP listener: transports, HTTP API).
    #[arg(long, default_value = "127.0.0.1:8000", env = "BENCH_ADDR")]
    addr: SocketAddr,
    /// More nodes of the same cluster (comma-separated): subscribers spread over --addr and
    /// these, round robin; publications still go to --addr's API.
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<SocketAddr>,
    /// Address of the uni gRPC server (default: --addr; Centrifugo: its uni_grpc.port).
    #[arg(long)]
    uni_grpc_addr: Option<SocketAddr>,
    /// Address of the gRPC server API (default: --addr; Centrifugo: its grpc_api.port).
    #[arg(long)]
    grpc_api_addr: Option<SocketAddr>,
    /// Server API key (http_api.key).
    #[arg(long, env = "BENCH_API_KEY", default_value = "bench-api-key")]
    api_key: String,
    /// Token secret (client.token.hmac_secret_key).
    #[arg(
        long,
        env = "BENCH_SECRET",
        default_value = "bench-secret-0123456789abcdef0123456789abcdef"
    )]
    secret: String,
    /// Server PID: CPU and memory from /proc/<pid>.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Server label in reports.
    #[arg(long, default_value = "herald")]
    server_name: String,
    /// Server version label (default: asked from the API `info`).
    #[arg(long, default_value = "")]
    server_version: String,
    /// Subscriber transport.
    #[arg(long, short = 't', default_value = "websocket")]
    transport: Transport,
    /// Source addresses: a range (127.0.0.2-127.0.0.9) or a list; empty for the default.
    #[arg(long, default_value = "127.0.0.2-127.0.0.9")]
    sources: String,
    /// Concurrent publishers.
    #[arg(long, default_value_t = 4)]
    publishers: u32,
    /// API that publishes.
    #[arg(long, default_value = "http")]
    publish_api: PublishApi,
    /// Payload bytes (fanout, channels, reconnect).
    #[arg(long, default_value_t = 128)]
    payload_size: usize,
    /// Channel namespace (must allow subscribe, with history and recovery for reconnect).
    #[arg(long, default_value = "bench")]
    namespace: String,
    /// Handshakes in flight at once (not `storm`, which is unpaced).
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Longest wait for every client to connect, seconds.
    #[arg(long, default_value_t = 120.0)]
    connect_timeout: f64,
    /// Longest wait for deliveries after publishing stops, seconds.
    #[arg(long, default_value_t = 5.0)]
    drain_timeout: f64,
    /// User the clients connect as.
    #[arg(long, default_value = "herald-bench")]
    user: String,
    /// Worker threads (default: the CPUs this process may use).
    #[arg(long)]
    threads: Option<usize>,
    /// Seconds between progress lines on stderr (0: none).
    #[arg(long, default_value_t = 1.0)]
    progress: f64,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Print the summary as JSON instead of a table.
    #[arg(long)]
    print_json: bool,
}

impl CommonArgs {
    fn to_common(&self, transport: Transport) -> Result<Common, String> {
        Ok(Common {
            target: Target {
                addr: self.addr,
                uni_grpc_addr: self.uni_grpc_addr.unwrap_or(self.addr),
                grpc_api_addr: self.grpc_api_addr.unwrap_or(self.addr),
                nodes: std::iter::once(self.addr)
                    .chain(self.nodes.iter().copied())
                    .collect(),
                api_key: self.api_key.clone(),
                secret: self.secret.clone(),
            },
            server_pid: self.server_pid,
            server_name: self.server_name.clone(),
            server_version: self.server_version.clone(),
            transport,
            sources: herald_bench::net::parse_sources(&self.sources)?,
            publishers: self.publishers.max(1),
            publish_api: self.publish_api,
            payload_size: self.payload_size,
            namespace: self.namespace.clone(),
            connect_concurrency: self.connect_concurrency.max(1),
            connect_timeout: Duration::from_secs_f64(self.connect_timeout),
            drain_timeout: Duration::from_secs_f64(self.drain_timeout),
            progress: Duration::from_secs_f64(self.progress.max(0.0)),
            user: self.user.clone(),
        })
    }
}

/// 10, 20, 50, 100, 200, 500, ... up to `max`.
fn default_rates(max: f64) -> Vec<f64> {
    let mut rates = Vec::new();
    let mut base = 10.0;
    'outer: loop {
        for m in [1.0, 2.0, 5.0] {
            let r = base * m;
            if r > max {
                break 'outer;
            }
            rates.push(r);
        }
        base *= 10.0;
    }
    rates
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (common, scenario) = match cli.command {
        Cmd::Compare {
            herald,
            other,
            preamble,
            doc,
            section,
        } => return compare(&herald, &other, preamble, doc, &section),
        Cmd::TransportsTable {
            results,
            doc,
            preamble,
        } => return transports_table(&results, preamble, doc),
        Cmd::StormWorker(args) => {
            return ExitCode::from(herald_bench::storm::worker_main(args));
        }
        Cmd::Storm {
            common,
            clients,
            workers,
            client_timeout,
        } => (
            common,
            Scenario::Storm {
                clients,
                workers,
                client_timeout_secs: client_timeout,
                worker_exe: None,
            },
        ),
        Cmd::Idle {
            common,
            connections,
            hold,
        } => (
            common,
            Scenario::Idle {
                connections,
                hold_secs: hold,
            },
        ),
        Cmd::Fanout {
            common,
            subscribers,
            rates,
            max_rate,
            step_secs,
            p99_limit_ms,
            keep_going,
        } => (
            common,
            Scenario::Fanout {
                subscribers,
                rates: if rates.is_empty() {
                    default_rates(max_rate)
                } else {
                    rates
                },
                step_secs,
                p99_limit_ms,
                keep_going,
            },
        ),
        Cmd::Channels {
            common,
            channels,
            per_channel,
            rate,
            duration,
        } => (
            common,
            Scenario::Channels {
                channels,
                subscribers_per_channel: per_channel,
                rate,
                duration_secs: duration,
            },
        ),
        Cmd::Reconnect {
            common,
            clients,
            channels,
            rate,
            warmup,
            duration,
            trigger_cmd,
            disconnect_code,
            reconnect_jitter_ms,
            recover_timeout,
        } => (
            common,
            Scenario::Reconnect {
                clients,
                channels,
                rate,
                warmup_secs: warmup,
                duration_secs: duration,
                trigger: trigger_cmd.map(Trigger::Command).unwrap_or(Trigger::Api),
                disconnect_code,
                reconnect_jitter_ms,
                recover_timeout_secs: recover_timeout,
            },
        ),
        Cmd::Payload {
            common,
            transports,
            sizes,
            subscribers,
            rate,
            duration,
        } => (
            common,
            Scenario::Payload {
                transports: if transports.is_empty() {
                    Transport::ALL
                        .into_iter()
                        .filter(|t| *t != Transport::Grpc)
                        .collect()
                } else {
                    transports
                },
                sizes,
                subscribers,
                rate,
                duration_secs: duration,
            },
        ),
    };
    // Up to the hard limit of open files (~20,000 here): one descriptor per connection.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let settings = match common.to_common(common.transport) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herald-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = common.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald-bench: runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let report: Report = rt.block_on(scenario::run(&settings, &scenario));
    rt.shutdown_timeout(Duration::from_secs(2));
    if common.print_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", report::summary(&report));
    }
    if let Some(path) = &common.json {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("herald-bench: writing {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if report.errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn read_reports(paths: &[PathBuf]) -> Result<Vec<Report>, String> {
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))
        })
        .collect()
}

fn compare(
    herald: &[PathBuf],
    other: &[PathBuf],
    preamble: Option<PathBuf>,
    doc: Option<PathBuf>,
    section: &str,
) -> ExitCode {
    let (h, o) = match (read_reports(herald), read_reports(other)) {
        (Ok(h), Ok(o)) => (h, o),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("herald-bench compare: {e}");
            return ExitCode::from(2);
        }
    };
    let mut text = match preamble {
        Some(p) => std::fs::read_to_string(&p).unwrap_or_default(),
        None => String::new(),
    };
    match doc {
        None => {
            text.push_str(&report::compare(&h, &o, None));
            print!("{text}");
        }
        Some(path) => {
            let chart = format!("img/{section}-fanout.svg");
            let chart_link = report::fanout_chart(&h, &o)
                .filter(|svg| write_chart(&path, &chart, svg, "compare"))
                .map(|_| chart.as_str());
            text.push_str(&report::compare(&h, &o, chart_link));
            let old = std::fs::read_to_string(&path).unwrap_or_default();
            let (begin, end) = report::markers(section);
            let text = report::keep_earlier_in(&old, &begin, &end, &text);
            let new = report::splice_between(&old, &begin, &end, &text);
            if let Err(e) = std::fs::write(&path, new) {
                eprintln!("herald-bench compare: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
    }
    ExitCode::SUCCESS
}

/// Writes a chart to `rel` (relative to the document's directory, `img/…`); false, with
/// the reason on stderr, when it cannot.
fn write_chart(doc: &Path, rel: &str, svg: &str, command: &str) -> bool {
    let file = doc.parent().unwrap_or(Path::new(".")).join(rel);
    let written = file
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&file, svg));
    match written {
        Ok(()) => true,
        Err(e) => {
            eprintln!("herald-bench {command}: {}: {e}", file.display());
            false
        }
    }
}

fn transports_table(results: &Path, preamble: Option<PathBuf>, doc: Option<PathBuf>) -> ExitCode {
    let found = match table::load_dir(results) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("herald-bench transports-table: {e}");
            return ExitCode::from(2);
        }
    };
    if found.reports.is_empty() {
        eprintln!(
            "herald-bench transports-table: no <transport>-<scenario>.json in {}",
            results.display()
        );
        return ExitCode::from(2);
    }
    let mut text = match preamble {
        Some(p) => match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("herald-bench transports-table: {}: {e}", p.display());
                return ExitCode::from(2);
            }
        },
        None => String::new(),
    };
    if !text.is_empty() && !text.ends_with("\n\n") {
        text.push_str(if text.ends_with('\n') { "\n" } else { "\n\n" });
    }
    match doc {
        None => {
            text.push_str(&table::render(&found));
            print!("{text}");
        }
        Some(path) => {
            let old = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("herald-bench transports-table: {}: {e}", path.display());
                    return ExitCode::from(2);
                }
            };
            const CHART: &str = "img/transports-fanout.svg";
            let chart_link = table::fanout_chart(&found)
                .filter(|svg| write_chart(&path, CHART, svg, "transports-table"))
                .map(|_| CHART);
            text.push_str(&table::render_with_chart(&found, chart_link));
            let new = report::splice_between(&old, table::BEGIN, table::END, &text);
            if let Err(e) = std::fs::write(&path, new) {
                eprintln!("herald-bench transports-table: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_rates_rise_in_1_2_5_steps() {
        assert_eq!(
            super::default_rates(1000.0),
            vec![10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0]
        );
    }
}
