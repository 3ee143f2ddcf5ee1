//! The real centrifuge JS SDK (npm `centrifuge@5`) over the bidirectional emulation transports, HTTP streaming and
//! SSE, against a Herald process: the same checks as `sdk_js.rs` runs over WebSocket (connect, subscribe,
//! publications from the API and from the client, presence, join/leave, history, recovery across the SDK's own
//! reconnect, the error for an unknown namespace), with `tests/js/sdk_core.cjs --transport http_stream|sse`.
//!
//! Needs Node 20+ and `npm ci --prefix tests/js` (centrifuge, ws, eventsource).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Herald, default_config, repo_root, run_with_timeout};

/// The script stops itself after 60 s; this is the outer bound.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

fn run_sdk_core(transport: &str) {
    let js_dir = repo_root().join("tests").join("js");
    let script = js_dir.join("sdk_core.cjs");
    assert!(script.is_file(), "missing {}", script.display());
    for package in ["centrifuge", "ws", "eventsource"] {
        assert!(
            js_dir.join("node_modules").join(package).is_dir(),
            "the JS SDK test needs its npm dependencies ({package} is missing): run `npm ci --prefix tests/js` \
             from the repository root"
        );
    }
    assert!(
        Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "the JS SDK test needs Node.js 20+ on PATH (`node --version` failed)"
    );

    let herald = Herald::start(default_config());
    let token = herald.token("alice");
    let mut cmd = Command::new("node");
    cmd.current_dir(repo_root())
        .arg(&script)
        .args(["--ws", &herald.ws_url()])
        .args(["--api", &herald.base_url()])
        .args(["--api-key", &herald.api_key])
        .args(["--token", &token])
        .args(["--user", "alice"])
        .args(["--transport", transport]);
    let out = run_with_timeout(cmd, SCRIPT_TIMEOUT);
    out.assert_all_checks_passed(&format!(
        "node tests/js/sdk_core.cjs --transport {transport}"
    ));
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("ok   connect with the token")),
        "the SDK did not connect over {transport}"
    );
}

#[test]
fn centrifuge_js_sdk_over_http_stream() {
    run_sdk_core("http_stream");
}

#[test]
fn centrifuge_js_sdk_over_sse() {
    run_sdk_core("sse");
}
