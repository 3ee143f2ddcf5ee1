//! The client examples under `examples/` work against a Herald process: the Go terminal chat (`examples/go`, built
//! with `go build` into the test's temp dir) and the Node subscriber (`examples/js`) each connect, subscribe to a
//! channel of the `chat` namespace, receive one publication made with `POST /api/publish` and exit 0 on their own
//! (`--exit-after 1`).
//!
//! They fail, never skip, when a toolchain or a dependency is missing, saying what to install: Go 1.25+ and
//! `go mod download` in `examples/go`; Node.js 20+ and `npm ci --prefix examples/js` (`./scripts/test` and `.ci/run`
//! do both). The Go build runs with `GOPROXY=off`, so the test itself never touches the network.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{Herald, default_config, repo_root, run_with_timeout};
use serde_json::{Value, json};

/// `go build` of the example, from a warm module cache (a cold build cache takes most of this).
const GO_BUILD_TIMEOUT: Duration = Duration::from_secs(300);
/// From start to "subscribed", and from the publication to the example's exit.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn go_chat_example_receives_a_publication_and_exits() {
    let dir = repo_root().join("examples").join("go");
    let go_ok = Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        go_ok,
        "the Go example test needs Go 1.25+ on PATH (`go version` failed): install it from https://go.dev/dl/, then \
         run `go mod download` in examples/go (./scripts/test does that step)"
    );

    let herald = Herald::start(default_config());
    let binary = herald.dir.join("herald-chat");
    let mut build = Command::new("go");
    build
        .current_dir(&dir)
        .args(["build", "-o"])
        .arg(&binary)
        .arg(".")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-mod=readonly")
        .env("GOTOOLCHAIN", "local")
        .env("GOWORK", "off");
    let out = run_with_timeout(build, GO_BUILD_TIMEOUT);
    let hint = if out.stderr.contains("GOPROXY=off") {
        "the example's Go modules are not downloaded: run `go mod download` in examples/go (./scripts/test does it)"
    } else {
        "see the compiler's output above; the example needs Go 1.25+"
    };
    assert!(
        out.status.is_some_and(|s| s.success()),
        "go build in examples/go failed ({:?}):\n{}\n{hint}",
        out.status,
        out.stderr
    );

    let mut cmd = Command::new(&binary);
    cmd.arg("--url")
        .arg(herald.ws_url())
        .arg("--token")
        .arg(herald.token("alice"))
        .args([
            "--room",
            "examples-go",
            "--nick",
            "Alice",
            "--exit-after",
            "1",
        ]);
    let output = run_example(
        &herald,
        cmd,
        "joined chat:examples-go",
        "chat:examples-go",
        json!({"nick": "the test", "text": "hello from examples.rs"}),
    );
    assert!(
        output.contains("<the test> hello from examples.rs"),
        "the Go example did not print the publication with its author:\n{output}"
    );
}

#[test]
fn js_subscribe_example_receives_a_publication_and_exits() {
    let dir = repo_root().join("examples").join("js");
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        node_ok,
        "the JS example test needs Node.js 20+ on PATH (`node --version` failed)"
    );
    for package in ["centrifuge", "ws"] {
        let path = dir.join("node_modules").join(package);
        assert!(
            path.is_dir(),
            "the JS example's npm dependencies are not installed ({} is missing): run `npm ci --prefix examples/js` \
             from the repository root (./scripts/test does it)",
            path.display()
        );
    }

    let herald = Herald::start(default_config());
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("subscribe.js"))
        .arg("--url")
        .arg(herald.ws_url())
        .arg("--token")
        .arg(herald.token("bob"))
        .args(["--channel", "chat:examples-js", "--exit-after", "1"]);
    let output = run_example(
        &herald,
        cmd,
        "subscribed to chat:examples-js",
        "chat:examples-js",
        json!({"text": "hello from examples.rs"}),
    );
    assert!(
        output.contains(r#"chat:examples-js #1: {"text":"hello from examples.rs"}"#),
        "the JS example did not print the publication:\n{output}"
    );
}

/// Runs an example until it prints `ready` (it has subscribed), publishes `data` to `channel` through the server
/// API, and waits for the example to exit. Asserts that it exits with status 0 within [`STEP_TIMEOUT`]s; returns
/// its stdout and stderr, interleaved in arrival order.
fn run_example(
    herald: &Herald,
    mut cmd: Command,
    ready: &str,
    channel: &str,
    data: Value,
) -> String {
    let mut child = Killed(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")),
    );
    let (tx, lines) = mpsc::channel();
    forward_lines(child.0.stdout.take().unwrap(), tx.clone());
    forward_lines(child.0.stderr.take().unwrap(), tx);
    let mut output = String::new();

    let deadline = Instant::now() + STEP_TIMEOUT;
    while !output.contains(ready) {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => output.push_str(&line),
            Err(_) => panic!(
                "the example did not print {ready:?} within {STEP_TIMEOUT:?} (status {:?}); its output:\n{output}",
                child.0.try_wait()
            ),
        }
    }

    let reply = api_publish(herald, json!({"channel": channel, "data": data}));
    assert!(reply.get("result").is_some(), "publish failed: {reply}");

    let deadline = Instant::now() + STEP_TIMEOUT;
    let status = loop {
        while let Ok(line) = lines.try_recv() {
            output.push_str(&line);
        }
        if let Some(status) = child.0.try_wait().expect("wait for the example") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the example did not exit within {STEP_TIMEOUT:?} of the publication; its output:\n{output}"
        );
        thread::sleep(Duration::from_millis(20));
    };
    // The reader threads end with the pipes; collect what is left.
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(2)) {
        output.push_str(&line);
    }
    println!("--- example output ---\n{output}");
    assert!(
        status.success(),
        "the example exited with {status}; its output:\n{output}"
    );
    output
}

/// Kills the example if the test fails before it exits.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn forward_lines(pipe: impl Read + Send + 'static, tx: mpsc::Sender<String>) {
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line + "\n").is_err() {
                break;
            }
        }
    });
}

/// `POST /api/publish` with the test's API key; the JSON reply.
fn api_publish(herald: &Herald, body: Value) -> Value {
    let url = format!("{}/api/publish", herald.base_url());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        herald::http_client::install_crypto_provider();
        let reply = reqwest::Client::new()
            .post(&url)
            .header("X-API-Key", &herald.api_key)
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        reply
            .json()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: not JSON: {e}"))
    })
}
