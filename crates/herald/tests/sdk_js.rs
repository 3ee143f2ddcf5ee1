//! The real centrifuge JS SDK (npm `centrifuge@5`, over WebSocket) against a Herald process: connect,
//! subscribe, publications from the API and from the client, presence, join/leave, history, recovery of the
//! publications missed across the SDK's own reconnect, and the error for an unknown namespace.
//!
//! The checks themselves live in `tests/js/sdk_core.cjs` at the repository root; this test starts Herald, mints a
//! token with `herald gentoken`, runs the script with Node and asserts that every check passed. It needs Node 20+
//! and the script's dependencies: `npm ci --prefix tests/js` (`./scripts/test` does it).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Herald, default_config, repo_root, run_with_timeout};

/// The script stops itself after 60 s; this is the outer bound.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn centrifuge_js_sdk_core_flow_against_herald() {
    let js_dir = repo_root().join("tests").join("js");
    let script = js_dir.join("sdk_core.cjs");
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
