//! The example chat backend (`examples/chat_backend/server.py`, Python's standard library)
//! behind a Herald process configured by its own `herald.json`, driven by the real
//! centrifuge JS SDK (`tests/js/chat_backend.cjs`): connect without a token through the
//! connect hook (headers emulation), room membership through the subscribe hook, messages
//! stored and broadcast through the publish hook, `rpc()` through the RPC hook, and the
//! backend's refusals reaching the SDK with its codes; and the backend's own unit tests.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Herald, repo_root, run_with_timeout};
use serde_json::Value;

const SECRET: &str = "example-webhook-secret";

/// The backend process, stopped when dropped.
struct Backend {
    child: Child,
    url: String,
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the backend on a free port and reads the port from its first line.
fn start_backend() -> Backend {
    let mut child = Command::new("python3")
        .current_dir(repo_root())
        .args([
            "examples/chat_backend/server.py",
            "--port",
            "0",
            "--db",
            ":memory:",
            "--webhook-secret",
            SECRET,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 examples/chat_backend/server.py");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(first)) = lines.next() {
            let _ = tx.send(first);
        }
        // Keep draining so that the backend never blocks on a full pipe.
        for _ in lines {}
    });
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the backend printed its address in time");
    let url = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .trim()
        .to_string();
    Backend { child, url }
}

/// `examples/chat_backend/herald.json` with the backend's real address.
fn example_config(backend: &Backend) -> Value {
    let text = std::fs::read_to_string(repo_root().join("examples/chat_backend/herald.json"))
        .expect("examples/chat_backend/herald.json");
    let text = text.replace("http://127.0.0.1:8001", &backend.url);
    let mut config: Value = serde_json::from_str(&text).expect("herald.json is JSON");
    config["webhooks"]["secret"] = Value::from(SECRET);
    config
}

#[test]
fn the_js_sdk_chats_through_the_example_backend() {
    let backend = start_backend();
    let herald = Herald::start(example_config(&backend));
    let mut cmd = Command::new("node");
    cmd.current_dir(repo_root())
        .arg("tests/js/chat_backend.cjs")
        .arg("--ws")
        .arg(herald.ws_url())
        .arg("--backend")
        .arg(&backend.url);
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    out.assert_all_checks_passed("node tests/js/chat_backend.cjs");
}

/// The backend's own tests (`examples/chat_backend/test_backend.py`): each hook's allow
/// and refuse cases and the webhook signature checks, against the backend alone.
#[test]
fn the_example_backends_own_tests_pass() {
    let mut cmd = Command::new("python3");
    cmd.current_dir(repo_root().join("examples/chat_backend"))
        .args(["-m", "unittest", "-q"]);
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    assert!(
        out.status.is_some_and(|s| s.success()),
        "python3 -m unittest in examples/chat_backend failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
}
