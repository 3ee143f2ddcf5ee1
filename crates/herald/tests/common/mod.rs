//! Shared helpers for the end-to-end tests: start a Herald process on a free loopback port with a given config,
//! wait until it is healthy, mint tokens with `herald gentoken`, and stop it when the handle drops.
//!
//! Use from a test file with `mod common;`. Plain std only (plus `serde_json` for the config).
//!
//! `HERALD_TEST_BIN` overrides the binary under test (default: the one Cargo built for this test run); it must
//! accept the same CLI (`serve --config FILE`, `gentoken --user U --config FILE`).
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

pub mod proxy;
pub mod redis_server;

/// HMAC secret written into configs that do not set `client.token.hmac_secret_key`.
pub const DEFAULT_SECRET: &str = "herald-test-secret-0123456789abcdef0123456789";
/// API key written into configs that do not set `http_api.key`.
pub const DEFAULT_API_KEY: &str = "herald-test-api-key";

/// How long a started server may take to answer `GET /health` with 200.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `herald gentoken` may take.
const GENTOKEN_TIMEOUT: Duration = Duration::from_secs(20);
/// Start attempts: another process may take the free port between our probe and Herald's bind.
const START_ATTEMPTS: usize = 3;

/// The config most end-to-end tests want, in Centrifugo v6 key shape (the acceptance checks use the same): a
/// `chat` namespace with subscribe and publish for clients, history (100 publications, 300 s), forced recovery,
/// presence and join/leave; every transport enabled. `http_server` is filled in by [`Herald::start`].
pub fn default_config() -> Value {
    json!({
        "client": {"token": {"hmac_secret_key": DEFAULT_SECRET}, "allowed_origins": ["*"]},
        "http_api": {"key": DEFAULT_API_KEY},
        "health": {"enabled": true},
        "sse": {"enabled": true},
        "http_stream": {"enabled": true},
        "uni_sse": {"enabled": true},
        "uni_http_stream": {"enabled": true},
        "uni_websocket": {"enabled": true},
        "channel": {
            "without_namespace": {"allow_subscribe_for_client": true},
            "namespaces": [{
                "name": "chat",
                "history_size": 100, "history_ttl": "300s", "force_recovery": true,
                "presence": true, "join_leave": true, "force_push_join_leave": true,
                "allow_subscribe_for_client": true, "allow_publish_for_subscriber": true,
                "allow_history_for_subscriber": true, "allow_presence_for_subscriber": true
            }]
        }
    })
}

/// The binary under test.
pub fn herald_bin() -> PathBuf {
    match std::env::var_os("HERALD_TEST_BIN") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_herald")),
    }
}

/// The repository root (the workspace directory).
pub fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..");
    fs::canonicalize(&root).unwrap_or(root)
}

/// A running Herald process. Killed, and its temp dir removed, on drop; when dropped during a panic the tail of
/// its log is printed first.
pub struct Herald {
    pub port: u16,
    pub api_key: String,
    pub secret: String,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub dir: PathBuf,
    /// Added to the process's environment (kept for restarts).
    env: Vec<(String, String)>,
    child: Child,
}

impl Herald {
    /// Starts Herald with `config_json` (an object in Centrifugo v6 key shape) on a free port of 127.0.0.1.
    /// `http_server.address` and `http_server.port` are overwritten (its other keys are kept);
    /// `client.token.hmac_secret_key` and `http_api.key` get [`DEFAULT_SECRET`] and [`DEFAULT_API_KEY`] when unset.
    /// Panics, with the server's log, when it does not become healthy in time.
    pub fn start(config_json: Value) -> Herald {
        Self::start_with_env(config_json, &[])
    }

    /// As [`Herald::start`], with `env` added to the process's environment.
    pub fn start_with_env(config_json: Value, env: &[(&str, &str)]) -> Herald {
        let dir = make_temp_dir();
        let mut last_error = String::new();
        for attempt in 1..=START_ATTEMPTS {
            match Self::try_start(&config_json, &dir, attempt, env) {
                Ok(herald) => return herald,
                Err(e) => last_error = e,
            }
        }
        let _ = fs::remove_dir_all(&dir);
        panic!("Herald did not start after {START_ATTEMPTS} attempts: {last_error}");
    }

    fn try_start(
        config_json: &Value,
        dir: &Path,
        attempt: usize,
        env: &[(&str, &str)],
    ) -> Result<Herald, String> {
        let port = free_port();
        let mut config = config_json.clone();
        let obj = config
            .as_object_mut()
            .expect("the config must be a JSON object");
        // Other `http_server` keys of the caller (timeouts, backlog) are kept.
        let http_server = obj.entry("http_server").or_insert_with(|| json!({}));
        if !http_server.is_object() {
            *http_server = json!({});
        }
        let http_server = http_server.as_object_mut().unwrap();
        http_server.insert("address".into(), json!("127.0.0.1"));
        http_server.insert("port".into(), json!(port));
        let secret = ensure_string(
            &mut config,
            &["client", "token", "hmac_secret_key"],
            DEFAULT_SECRET,
        );
        let api_key = ensure_string(&mut config, &["http_api", "key"], DEFAULT_API_KEY);

        let config_path = dir.join("config.json");
        fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap())
            .map_err(|e| format!("write {}: {e}", config_path.display()))?;
        let log_path = dir.join(format!("server-{attempt}.log"));
        let log = fs::File::create(&log_path)
            .map_err(|e| format!("create {}: {e}", log_path.display()))?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;

        let child = Command::new(herald_bin())
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", herald_bin().display()))?;
        let mut herald = Herald {
            port,
            api_key,
            secret,
            config_path,
            log_path,
            dir: dir.to_path_buf(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child,
        };

        let deadline = Instant::now() + HEALTH_TIMEOUT;
        loop {
            if let Ok(Some(status)) = herald.child.try_wait() {
                // Leave the dir for the next attempt: drop of this handle must not remove it.
                let log = herald.log_tail(30);
                herald.dir = PathBuf::new();
                return Err(format!(
                    "herald serve exited at start ({status}) on port {port}; log:\n{log}"
                ));
            }
            if let Ok(200) = http_get_status(port, "/health") {
                return Ok(herald);
            }
            if Instant::now() >= deadline {
                let log = herald.log_tail(30);
                herald.stop();
                herald.dir = PathBuf::new();
                return Err(format!(
                    "no 200 from GET /health on port {port} within {HEALTH_TIMEOUT:?}; log:\n{log}"
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/connection/websocket", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// A connection token for `user`, made by `herald gentoken --user USER --config FILE`.
    pub fn token(&self, user: &str) -> String {
        let mut cmd = Command::new(herald_bin());
        cmd.arg("gentoken")
            .arg("--user")
            .arg(user)
            .arg("--config")
            .arg(&self.config_path);
        let out = run_with_timeout(cmd, GENTOKEN_TIMEOUT);
        assert!(
            out.status.is_some_and(|s| s.success()),
            "herald gentoken --user {user} failed ({:?}); stderr:\n{}",
            out.status,
            out.stderr
        );
        let token = out.stdout.trim().to_string();
        assert!(
            token.split('.').count() == 3 && !token.contains(char::is_whitespace),
            "herald gentoken must print only a JWT on stdout, got {:?}",
            out.stdout
        );
        token
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The server's process id (for `/proc/PID/...` and `prlimit`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the process (SIGKILL: no drain, no goodbye to its clients or to Redis).
    pub fn kill(&mut self) {
        self.stop();
    }

    /// Stops the process as an init system does (SIGTERM: it drains), SIGKILL after `within`. Returns its exit
    /// status and how long it took to exit.
    pub fn terminate(&mut self, within: Duration) -> (Option<ExitStatus>, Duration) {
        let started = Instant::now();
        let status = terminate(&mut self.child, within);
        (status, started.elapsed())
    }

    /// Starts the process again on the same port with the same config (after [`Herald::terminate`] or
    /// [`Herald::kill`]); waits until it answers `/health`.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + HEALTH_TIMEOUT;
        loop {
            let log = fs::OpenOptions::new()
                .append(true)
                .open(&self.log_path)
                .unwrap_or_else(|e| panic!("open {}: {e}", self.log_path.display()));
            let log_err = log.try_clone().expect("log clone");
            self.child = Command::new(herald_bin())
                .arg("serve")
                .arg("--config")
                .arg(&self.config_path)
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(Stdio::from(log))
                .stderr(Stdio::from(log_err))
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", herald_bin().display()));
            loop {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break; // the port is not free yet (a lingering socket): try again
                }
                if let Ok(200) = http_get_status(self.port, "/health") {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "herald did not restart on port {} within {HEALTH_TIMEOUT:?}; log:\n{}",
                    self.port,
                    self.log_tail(30)
                );
                thread::sleep(Duration::from_millis(50));
            }
            assert!(
                Instant::now() < deadline,
                "herald did not restart on port {}; log:\n{}",
                self.port,
                self.log_tail(30)
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- herald log ({}) ---\n{}\n--- end of herald log ---",
                self.log_path.display(),
                self.log_tail(60)
            );
        }
        self.stop();
        if !self.dir.as_os_str().is_empty() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Sends SIGTERM to `child` and waits up to `within` for it to exit, then SIGKILLs it. Its exit status, or
/// `None` when it had to be killed.
pub fn terminate(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap().port()
}

/// `GET path` over plain HTTP/1.1 on 127.0.0.1:port; the status code. Bounded by short timeouts.
pub fn http_get_status(port: u16, path: &str) -> std::io::Result<u16> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 8192 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {line:?}")))
}

/// What a bounded child process run produced. `status` is `None` when it was killed for taking too long.
#[derive(Debug)]
pub struct RunOutput {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl RunOutput {
    /// Prints a check script's output, then asserts that it ran to the end and that its
    /// last line is a summary `N passed, 0 failed` with N > 0. `name` names the script.
    pub fn assert_all_checks_passed(&self, name: &str) {
        println!(
            "--- {name} ({:.1} s) ---\n{}",
            self.elapsed.as_secs_f64(),
            self.stdout
        );
        if !self.stderr.trim().is_empty() {
            println!("--- stderr ---\n{}", self.stderr);
        }
        let summary = self
            .stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        let failures: Vec<&str> = self
            .stdout
            .lines()
            .filter(|l| l.starts_with("FAIL"))
            .collect();
        assert!(
            self.status.is_some(),
            "{name} was killed: it ran past its time limit"
        );
        assert!(
            self.status.is_some_and(|s| s.success())
                && summary.ends_with(" 0 failed")
                && !summary.starts_with("0 passed"),
            "{name} failed ({:?}), summary {summary:?}:\n{}\n{}",
            self.status,
            failures.join("\n"),
            self.stderr
        );
    }
}

/// Runs `cmd` with stdout and stderr captured; kills it when it outlives `timeout`.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> RunOutput {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let deadline = started + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("wait for {cmd:?}: {e}"),
        }
    };
    RunOutput {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
        elapsed: started.elapsed(),
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Sets the string at `path` in `config` to `default` unless one is there; returns the value in force.
fn ensure_string(config: &mut Value, path: &[&str], default: &str) -> String {
    let mut node = config;
    for key in path {
        if !node.is_object() {
            *node = json!({});
        }
        node = node
            .as_object_mut()
            .unwrap()
            .entry(key.to_string())
            .or_insert(Value::Null);
    }
    match node {
        Value::String(s) if !s.is_empty() => s.clone(),
        _ => {
            *node = Value::String(default.to_string());
            default.to_string()
        }
    }
}

/// A fresh directory under the system temp dir (the caller removes it).
pub fn make_temp_dir() -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "herald-test-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}
