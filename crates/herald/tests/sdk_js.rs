//! The real centrifuge JS SDK (npm `centrifuge@5`, over WebSocket) against a Herald process: connect,
//! subscribe, publications from the API and from the client, presence, join/leave, history, recovery of the
//! publications missed across the SDK's own reconnect, and the error for an unknown namespace.
//!
//! The checks themselves live in `tests/js/sdk_core.cjs` at the repository root; this test starts Herald, mints a
//! token with `herald gentoken`, runs the script with Node and asserts that every check passed. It needs Node 20+
//! and the script's dependencies: `npm ci --prefix tests/js` (`./scripts/test` does it).
//!
//! `tests/js/sdk_edges.cjs` holds edge cases, one per test here: a token whose `nbf` is ahead (the SDK must get
//! 109 and fetch another token, for the connection and for a subscription), and a channel with nobody in it
//! (presence stats must decode as zeros).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Herald, default_config, repo_root, run_with_timeout};
use serde_json::json;

/// The script stops itself after 60 s; this is the outer bound.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// The outer bound of `sdk_edges.cjs`, which stops itself after 30 s.
const EDGES_TIMEOUT: Duration = Duration::from_secs(60);

/// Asserts that Node and the script's npm dependencies are there; returns the script's path.
fn js_script(name: &str) -> std::path::PathBuf {
    let js_dir = repo_root().join("tests").join("js");
    let script = js_dir.join(name);
    assert!(script.is_file(), "missing {}", script.display());
    for package in ["centrifuge", "ws"] {
        assert!(
            js_dir.join("node_modules").join(package).is_dir(),
            "the JS SDK test needs its npm dependencies ({} is missing): run `npm ci --prefix tests/js` from the \
             repository root (or ./scripts/test, which does it)",
            js_dir.join("node_modules").join(package).display()
        );
    }
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        node_ok,
        "the JS SDK test needs Node.js 20+ on PATH (`node --version` failed)"
    );
    script
}

#[test]
fn centrifuge_js_sdk_core_flow_against_herald() {
    let script = js_script("sdk_core.cjs");
    let herald = Herald::start(default_config());
    let token = herald.token("alice");

    let mut cmd = Command::new("node");
    cmd.current_dir(repo_root())
        .arg(&script)
        .arg("--ws")
        .arg(herald.ws_url())
        .arg("--api")
        .arg(herald.base_url())
        .arg("--api-key")
        .arg(&herald.api_key)
        .arg("--token")
        .arg(&token)
        .arg("--user")
        .arg("alice");
    let out = run_with_timeout(cmd, SCRIPT_TIMEOUT);
    out.assert_all_checks_passed("node tests/js/sdk_core.cjs");
}

/// Runs one `--case` of `sdk_edges.cjs` against `herald` and asserts that every check passed.
fn run_edge_case(herald: &Herald, case: &str) {
    let script = js_script("sdk_edges.cjs");
    let mut cmd = Command::new("node");
    cmd.current_dir(repo_root())
        .arg(&script)
        .arg("--ws")
        .arg(herald.ws_url())
        .arg("--api")
        .arg(herald.base_url())
        .arg("--api-key")
        .arg(&herald.api_key)
        .arg("--secret")
        .arg(&herald.secret)
        .arg("--case")
        .arg(case);
    let out = run_with_timeout(cmd, EDGES_TIMEOUT);
    out.assert_all_checks_passed(&format!("node tests/js/sdk_edges.cjs --case {case}"));
}

/// A token that is not valid yet (`nbf` a minute ahead, beyond the default leeway) is answered with error 109,
/// as Centrifugo does, so the SDK fetches another from its getToken and connects; the same for a subscription
/// token of a private channel. (Answered 3500 or 103 instead, the SDK would give up for good.)
#[test]
fn centrifuge_js_sdk_refetches_a_token_whose_nbf_is_ahead() {
    let herald = Herald::start(default_config());
    run_edge_case(&herald, "nbf");
}

/// Presence stats of a channel with nobody in it decode as numClients 0 and numUsers 0 in the SDK (the JSON
/// carries the zeros, as Centrifugo's does), presence as an empty map, and the server API answers zeros.
#[test]
fn centrifuge_js_sdk_reads_zero_presence_stats_of_an_empty_channel() {
    let mut config = default_config();
    config["channel"]["namespaces"]
        .as_array_mut()
        .expect("default_config has namespaces")
        .push(json!({"name": "stats", "presence": true, "allow_presence_for_client": true}));
    let herald = Herald::start(config);
    run_edge_case(&herald, "empty-channel");
}
