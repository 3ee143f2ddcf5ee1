//! Short runs of every scenario against a real Herald that the test starts (the `herald`
//! binary of this workspace, built by `cargo build -p herald` or `cargo test --workspace`),
//! with small numbers: nothing may be lost and the figures must be sane. Speed targets are
//! not asserted here: they live in the benchmark output (docs/benchmarks.md).

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald_bench::clients::{Target, Transport};
use herald_bench::publisher::PublishApi;
use herald_bench::scenario::{self, Common, Report, Scenario, ScenarioResult, Trigger};

const SECRET: &str = "smoke-secret-0123456789abcdef0123456789abcdef";
const API_KEY: &str = "smoke-api-key";

/// The herald binary next to this test's directory (target/<profile>/herald), or
/// `HERALD_BIN`.
fn herald_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("HERALD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/smoke-<hash> -> target/<profile>/herald
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target directory");
    let bin = dir.join(format!("herald{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} not found: build the server first with `cargo build -p herald` \
         (`cargo test --workspace` builds it), or set HERALD_BIN",
        bin.display()
    );
    bin
}

/// A Herald process on a free loopback port; killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Server {
    fn start() -> Server {
        let dir = std::env::temp_dir().join(format!(
            "herald-bench-smoke-{}-{}",
            std::process::id(),
            herald_bench::payload::now_ns()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = serde_json::json!({
            "log": {"level": "error"},
            "client": {"token": {"hmac_secret_key": SECRET}},
            "http_api": {"key": API_KEY},
            "channel": {"namespaces": [{
                "name": "bench", "history_size": 1000, "history_ttl": "300s",
                "force_recovery": true, "allow_subscribe_for_client": true
            }]}
        });
        let path = dir.join("herald.json");
        std::fs::write(&path, config.to_string()).expect("write config");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(herald_bin())
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .arg("--port")
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start herald");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "herald did not listen on {addr} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Server { child, addr, dir }
    }

    fn common(&self, transport: Transport) -> Common {
        Common {
            target: Target {
                addr: self.addr,
                uni_grpc_addr: self.addr,
                grpc_api_addr: self.addr,
                nodes: vec![self.addr],
                api_key: API_KEY.into(),
                secret: SECRET.into(),
            },
            server_pid: Some(self.child.id()),
            server_name: "herald".into(),
            server_version: String::new(),
            transport,
            sources: herald_bench::net::parse_sources("127.0.0.2-127.0.0.3").unwrap(),
            publishers: 2,
            publish_api: PublishApi::Http,
            payload_size: 100,
            namespace: "bench".into(),
            connect_concurrency: 64,
            connect_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
            progress: Duration::ZERO,
            user: "smoke".into(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn assert_clean(r: &Report) {
    assert_eq!(r.errors, 0, "errors: {:?}", r.first_errors);
    assert_eq!(r.server.name, "herald");
    assert!(!r.server.version.is_empty(), "version from the API info");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_measures_memory_per_connection() {
    let server = Server::start();
    let s = Scenario::Idle {
        connections: 60,
        hold_secs: 0.5,
    };
    let r = scenario::run(&server.common(Transport::Websocket), &s).await;
    assert_clean(&r);
    let ScenarioResult::Idle(i) = &r.result else {
        panic!("idle result expected")
    };
    assert_eq!(i.connected, 60);
    assert!(i.connect_rate > 1.0, "{i:?}");
    assert!(i.rss_after_mib > 0.0 && i.rss_before_mib > 0.0, "{i:?}");
    assert!(
        i.rss_per_conn_kib < 1024.0,
        "under 1 MiB per idle connection: {i:?}"
    );
    assert!(
        i.server_fds >= 60,
        "the server holds every connection: {i:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_delivers_every_publication_at_each_rate() {
    let server = Server::start();
    let s = Scenario::Fanout {
        subscribers: 20,
        rates: vec![20.0, 100.0],
        step_secs: 1.0,
        p99_limit_ms: 2000.0,
        keep_going: true,
    };
    let r = scenario::run(&server.common(Transport::WebsocketProtobuf), &s).await;
    assert_clean(&r);
    let ScenarioResult::Fanout(f) = &r.result else {
        panic!("fanout result expected")
    };
    assert_eq!(f.subscribers, 20);
    assert_eq!(f.steps.len(), 2);
    assert_eq!(f.lost_total, 0);
    for s in &f.steps {
        assert_eq!(s.lost, 0, "{s:?}");
        assert_eq!(s.duplicates, 0, "{s:?}");
        assert_eq!(s.delivered, s.published * 20, "{s:?}");
        assert!(s.sustained, "{s:?}");
        assert!(
            s.latency.p50_ms > 0.0 && s.latency.p50_ms <= s.latency.p99_ms,
            "{s:?}"
        );
        let ratio = s.deliveries_per_sec / (s.target_rate * 20.0);
        assert!(
            (0.7..1.3).contains(&ratio),
            "deliveries/s near rate x subscribers: {s:?}"
        );
    }
    assert!(f.max_sustained_deliveries_per_sec > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_spread_publications_without_loss() {
    let server = Server::start();
    let s = Scenario::Channels {
        channels: 10,
        subscribers_per_channel: 3,
        rate: 100.0,
        duration_secs: 1.0,
    };
    let mut common = server.common(Transport::UniSse);
    common.publish_api = PublishApi::Grpc;
    let r = scenario::run(&common, &s).await;
    assert_clean(&r);
    let ScenarioResult::Channels(c) = &r.result else {
        panic!("channels result expected")
    };
    assert!(c.published >= 90, "{c:?}");
    assert_eq!(c.expected, c.published * 3, "{c:?}");
    assert_eq!(c.delivered, c.expected, "{c:?}");
    assert_eq!(c.lost, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_recovers_everything_after_an_api_disconnect() {
    let server = Server::start();
    for transport in [Transport::Websocket, Transport::UniHttpStream] {
        let s = Scenario::Reconnect {
            clients: 30,
            channels: 3,
            rate: 60.0,
            warmup_secs: 0.7,
            duration_secs: 2.5,
            trigger: Trigger::Api,
            disconnect_code: 3011,
            reconnect_jitter_ms: 100,
            recover_timeout_secs: 20.0,
        };
        let r = scenario::run(&server.common(transport), &s).await;
        assert_clean(&r);
        let ScenarioResult::Reconnect(c) = &r.result else {
            panic!("reconnect result expected")
        };
        assert_eq!(c.connected_before, 30, "{transport}: {c:?}");
        assert_eq!(
            c.dropped, 30,
            "{transport}: every client dropped once: {c:?}"
        );
        assert!(c.all_back_ms.is_some(), "{transport}: all back: {c:?}");
        assert_eq!(c.unrecovered, 0, "{transport}: {c:?}");
        assert!(c.published > 100, "{transport}: {c:?}");
        assert_eq!(c.lost, 0, "{transport}: nothing lost: {c:?}");
        assert_eq!(c.expected, c.published * 10, "{transport}: {c:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_measures_every_transport() {
    let server = Server::start();
    let s = Scenario::Payload {
        transports: Transport::ALL.to_vec(),
        sizes: vec![32, 4096],
        subscribers: 3,
        rate: 100.0,
        duration_secs: 0.5,
    };
    let r = scenario::run(&server.common(Transport::Websocket), &s).await;
    assert_clean(&r);
    let ScenarioResult::Payload(p) = &r.result else {
        panic!("payload result expected")
    };
    assert_eq!(p.rows.len(), Transport::ALL.len() * 2);
    for row in &p.rows {
        assert!(row.error.is_none(), "{row:?}");
        assert_eq!(row.lost, 0, "{row:?}");
        assert!(row.deliveries_per_sec > 0.0, "{row:?}");
        // Framing costs something, and not more than a few hundred bytes a message.
        assert!(
            row.overhead_bytes > 0.0 && row.overhead_bytes < 400.0,
            "{row:?}"
        );
        if row.size == 4096 {
            assert_eq!(row.actual_size, 4096);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_subscribes_every_client_and_delivers_to_all() {
    let server = Server::start();
    let s = Scenario::Storm {
        clients: 300,
        workers: 2,
        client_timeout_secs: 30.0,
        worker_exe: Some(PathBuf::from(env!("CARGO_BIN_EXE_herald-bench"))),
    };
    let r = scenario::run(&server.common(Transport::Websocket), &s).await;
    assert_clean(&r);
    let ScenarioResult::Storm(st) = &r.result else {
        panic!("storm result expected")
    };
    assert_eq!(st.workers, 2);
    assert_eq!(st.failures.total(), 0, "{st:?}");
    assert_eq!(st.subscribed, 300, "{st:?}");
    assert!(st.all_subscribed_ms.is_some(), "{st:?}");
    assert!(st.connects_per_sec > 0.0, "{st:?}");
    assert!(
        st.latency.count == 300
            && st.latency.p50_ms > 0.0
            && st.latency.p50_ms <= st.latency.max_ms,
        "{st:?}"
    );
    assert!(st.published, "{st:?}");
    assert_eq!(st.delivered, 300, "{st:?}");
    assert_eq!(st.lost, 0, "{st:?}");
    assert!(st.nofile_per_worker > 300, "{st:?}");
    // Overflows may happen or not on a shared machine; only that they were read is asserted.
    #[cfg(target_os = "linux")]
    assert!(
        st.listen_overflows.is_some() && st.listen_drops.is_some(),
        "listen-queue counters read from /proc/net/netstat: {st:?}"
    );
}

#[test]
fn cli_writes_json_results_and_the_comparison() {
    let server = Server::start();
    let dir = server.dir.clone();
    let json = dir.join("fanout.json");
    let out = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .args([
            "fanout",
            "--subscribers",
            "5",
            "--rates",
            "20",
            "--step-secs",
            "0.5",
        ])
        .args([
            "--addr",
            &server.addr.to_string(),
            "--api-key",
            API_KEY,
            "--secret",
            SECRET,
        ])
        .args([
            "--progress",
            "0",
            "--server-pid",
            &server.child.id().to_string(),
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run herald-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("| target/s |"), "summary table: {stdout}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).expect("JSON results");
    assert_eq!(v["params"]["scenario"], "fanout");
    assert_eq!(v["result"]["scenario"], "fanout");
    assert_eq!(v["result"]["steps"][0]["lost"], 0);
    assert_eq!(v["transport"], "websocket");
    assert!(v["machine"]["cpus"].as_u64().unwrap() >= 1);
    assert!(
        v["result"]["steps"][0]["latency"]["p99_ms"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    // The same results as both sides of a comparison: a table with ratios of 1.
    let doc = dir.join("benchmarks.md");
    std::fs::write(&doc, "# Benchmarks\n\nhand-written\n").unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .arg("compare")
        .arg("--herald")
        .arg(&json)
        .arg("--other")
        .arg(&json)
        .arg("--doc")
        .arg(&doc)
        .status()
        .expect("run compare");
    assert!(status.success());
    let text = std::fs::read_to_string(&doc).unwrap();
    assert!(text.contains("hand-written"), "{text}");
    assert!(text.contains(herald_bench::report::BEGIN), "{text}");
    assert!(text.contains("### fanout (websocket)"), "{text}");
    assert!(text.contains("| max sustained deliveries/s"), "{text}");
    assert!(text.contains("1.00×"), "{text}");
}
